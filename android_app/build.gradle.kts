// Plugin versions for both modules, applied in core/ and app/. AGP 8.9 is what ExecuTorch's own
// Android library builds with (extension/android/executorch_android/build.gradle).
plugins {
    id("com.android.application") version "8.9.0" apply false
    id("org.jetbrains.kotlin.android") version "2.1.20" apply false
    id("org.jetbrains.kotlin.jvm") version "2.1.20" apply false
}
