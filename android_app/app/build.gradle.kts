// The Android app: a foreground service hosting core's RunnerServer, NSD advertising, battery and
// thermal meters, the in-process ExecuTorch runner, and a minibench-compatible activity.
// One product flavor per ExecuTorch delegate ("delegate" dimension); each links its AAR:
//   org.pytorch:executorch-android           XNNPACK (the default AAR)
//   org.pytorch:executorch-android-vulkan    Vulkan
//   org.pytorch:executorch-android-qnn       Qualcomm QNN (arm64 only)
// The artifact names are ExecuTorch's: extension/android/executorch_android/build.gradle publishes
// coordinates("org.pytorch", "executorch-android" + ("-" + flavor unless xnnpack), version), built per
// flavor by .github/workflows/android-release-artifacts.yml (pytorch/executorch cff6f4dd32e6, 2026-08-22);
// docs/source/backends/vulkan/vulkan-overview.md names executorch-android-vulkan.
import org.jetbrains.kotlin.gradle.dsl.JvmTarget

plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

val executorchVersion: String = providers.gradleProperty("executorchVersion").get()

android {
    namespace = "dev.edgeprobe.app"
    compileSdk = 35

    defaultConfig {
        applicationId = "dev.edgeprobe.app"
        minSdk = 26
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
        ndk { abiFilters += "arm64-v8a" }
        buildConfigField("String", "EXECUTORCH_VERSION", "\"$executorchVersion\"")
    }

    buildFeatures { buildConfig = true }

    flavorDimensions += "delegate"
    productFlavors {
        create("xnnpack") {
            dimension = "delegate"
            buildConfigField("String", "DELEGATE", "\"xnnpack\"")
        }
        create("vulkan") {
            dimension = "delegate"
            applicationIdSuffix = ".vulkan"
            buildConfigField("String", "DELEGATE", "\"vulkan\"")
        }
        create("qnn") {
            dimension = "delegate"
            applicationIdSuffix = ".qnn"
            buildConfigField("String", "DELEGATE", "\"qnn\"")
        }
    }

    buildTypes {
        release {
            isMinifyEnabled = false // ExecuTorch's JNI finds its classes by name
            signingConfig = signingConfigs.getByName("debug") // a bench tool: sign with your own key to publish
        }
    }

    // Legacy packaging stores jniLibs compressed and the installer extracts them into
    // nativeLibraryDir (with android:extractNativeLibs="true" in the manifest), where they are
    // executable: the only place an app may exec a file of its own on Android 10+ (W^X on app data).
    packaging {
        jniLibs { useLegacyPackaging = true }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
}

kotlin {
    compilerOptions { jvmTarget.set(JvmTarget.JVM_17) }
}

dependencies {
    implementation(project(":core"))
    "xnnpackImplementation"("org.pytorch:executorch-android:$executorchVersion")
    "vulkanImplementation"("org.pytorch:executorch-android-vulkan:$executorchVersion")
    "qnnImplementation"("org.pytorch:executorch-android-qnn:$executorchVersion")
}

// The native runner executable, renamed lib*.so so the installer extracts it (the ABI's only file
// that is not a JNI library). -Pedgeprobe.nativeRunner=PATH copies it in; without it the app is
// built with its in-process runner only, and says so.
val nativeRunnerDir = layout.projectDirectory.dir("src/main/jniLibs/arm64-v8a")
val nativeRunnerPath: String? = providers.gradleProperty("edgeprobe.nativeRunner").orNull
val copyNativeRunner by tasks.registering(Copy::class) {
    enabled = nativeRunnerPath != null
    nativeRunnerPath?.let { path ->
        val runner = file(path)
        from(runner) { rename { "libedgeprobe_runner.so" } }
        into(nativeRunnerDir)
        doFirst {
            require(runner.isFile) { "edgeprobe.nativeRunner=$runner is not a file: build device_runner/native for arm64 Android first" }
        }
    }
}
tasks.named("preBuild") {
    dependsOn(copyNativeRunner)
    doLast {
        if (!nativeRunnerDir.file("libedgeprobe_runner.so").asFile.isFile) {
            logger.warn("edgeprobe: no app/src/main/jniLibs/arm64-v8a/libedgeprobe_runner.so: this APK serves runner " +
                "\"app\" only (pass -Pedgeprobe.nativeRunner=PATH for the native runner)")
        }
    }
}
