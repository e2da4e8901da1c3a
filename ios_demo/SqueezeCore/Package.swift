// swift-tools-version:5.9
// SqueezeCore: the platform-free core of the iOS sample app, a port of android_demo/core (Kotlin). Builds with
// Foundation only (no UIKit/AVFoundation/Core ML), so it is unit-tested on Linux (ios_demo/run_tests.sh) against
// the golden files the Kotlin tests use (android_demo/core/src/test/resources/golden, via SQUEEZE_GOLDEN_DIR).
// SqueezeDemoKit: the app's screens, camera and Core ML runtime over SqueezeCore. Its Apple-only files sit behind
// `#if canImport(...)`, so on Linux the package builds (and tests) its platform-free part: model directories, the
// recognition and Q&A sessions, camera frame conversion, frame rate. The Xcode app (ios_demo/SqueezeDemo.xcodeproj)
// links SqueezeDemoKit and adds the entry point and the ExecuTorch runtime (ios_demo/SqueezeDemo/).
import PackageDescription

let package = Package(
    name: "SqueezeCore",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [
        .library(name: "SqueezeCore", targets: ["SqueezeCore"]),
        .library(name: "SqueezeDemoKit", targets: ["SqueezeDemoKit"]),
    ],
    targets: [
        .target(name: "SqueezeCore"),
        .target(name: "SqueezeDemoKit", dependencies: ["SqueezeCore"]),
        .testTarget(name: "SqueezeCoreTests", dependencies: ["SqueezeCore", "SqueezeDemoKit"]),
    ]
)
