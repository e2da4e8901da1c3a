plugins {
    alias(libs.plugins.android.application)
    alias(libs.plugins.kotlin.android)
}

android {
    namespace = "dev.squeezemobile.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "dev.squeezemobile.demo"
        minSdk = 26
        targetSdk = 35
        versionCode = 1
        versionName = "0.1"
        ndk { abiFilters += listOf("arm64-v8a", "x86_64") }
    }
    buildTypes {
        release {
            isMinifyEnabled = false
        }
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions {
        jvmTarget = "17"
    }
    // models are copied in from `squeeze export ... --out app_models` (see README); never compress them,
    // so that runtimes can map them
    androidResources {
        noCompress += listOf("onnx", "tflite", "pte")
    }
}

dependencies {
    implementation(project(":core"))
    implementation(libs.androidx.core.ktx)
    implementation(libs.androidx.activity.ktx)
    implementation(libs.camerax.core)
    implementation(libs.camerax.camera2)
    implementation(libs.camerax.lifecycle)
    implementation(libs.camerax.view)
    // one runtime per artifact format, for the camera screen (runtime/*Model.kt) and the Q&A screen
    // (runtime/*Decoder.kt): .onnx, .tflite (the split plan's multi-signature file), .pte
    implementation(libs.onnxruntime.android)
    implementation(libs.litert)
    implementation(libs.executorch.android)
}
