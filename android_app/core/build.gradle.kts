// The pure-JVM core: no android.* import, only what Android API 26 has (see android_app/README.md).
// On a phone org.json is the platform's; on a JVM host it is AOSP's, the same classes
// (com.vaadin.external.google:android-json is the org.json of the Android SDK as a jar).
plugins {
    id("org.jetbrains.kotlin.jvm")
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    compileOnly("com.vaadin.external.google:android-json:0.0.20131108.vaadin1")
    testImplementation("com.vaadin.external.google:android-json:0.0.20131108.vaadin1")
    testImplementation(platform("org.junit:junit-bom:5.9.2"))
    testImplementation("org.junit.jupiter:junit-jupiter")
    testRuntimeOnly("org.junit.platform:junit-platform-launcher")
}

tasks.test {
    useJUnitPlatform()
}

// `java -jar core.jar serve ...` on a JVM host needs org.json and the Kotlin runtime inside the jar:
// tools/build.sh core builds that jar without Gradle; this one is the library the app links.
tasks.jar {
    manifest { attributes("Main-Class" to "dev.edgeprobe.core.MainKt") }
}
