// edgeprobe's Android app: `:core` (pure JVM: the runner server, record writer, energy and thermal
// logic; also built and tested without Gradle by tools/build.sh) and `:app` (the Android adapters).
// Needs the Android SDK (ANDROID_HOME or local.properties sdk.dir) and JDK 17.
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}

rootProject.name = "edgeprobe-android"
include(":core", ":app")
