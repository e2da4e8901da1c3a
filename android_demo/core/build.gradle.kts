// The platform-free core: a plain Kotlin/JVM library (no android.jar on its classpath, so an android.*
// import fails to compile). run_tests.sh compiles exactly these sources without Gradle.
plugins {
    alias(libs.plugins.kotlin.jvm)
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    testImplementation(libs.junit.jupiter)
}

tasks.test {
    useJUnitPlatform()
}
