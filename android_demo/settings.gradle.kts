// Android Studio project of the sample app. Not built on the machine that wrote it (no Android SDK, Android
// Gradle plugin or Google Maven there); core/ is compiled and tested there with run_tests.sh instead.
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
rootProject.name = "squeeze-mobile-android-demo"
include(":core", ":app")
