// swift-tools-version:5.9
// SqueezeCore: the platform-free core of the iOS sample app, a port of android_demo/core (Kotlin). Builds with
// Foundation only (no UIKit/AVFoundation/Core ML), so it is unit-tested on Linux (ios_demo/run_tests.sh) against
// the golden files the Kotlin tests use (android_demo/core/src/test/resources/golden, via SQUEEZE_GOLDEN_DIR).
import PackageDescription

let package = Package(
    name: "SqueezeCore",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [
        .library(name: "SqueezeCore", targets: ["SqueezeCore"]),
    ],
    targets: [
        .target(name: "SqueezeCore"),
        .testTarget(name: "SqueezeCoreTests", dependencies: ["SqueezeCore"]),
    ]
)
