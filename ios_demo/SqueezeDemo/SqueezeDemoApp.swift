// The app's entry point: two tabs (camera recognition, document Q&A) over SqueezeDemoKit, with the backends this
// build has: Core ML always (system framework); ExecuTorch when the ExecuTorch Swift package is added to the app
// target (see ios_demo/README.md; ExecuTorchRuntimes.swift). Apple-only (behind canImport(SwiftUI)); on Linux
// run_tests.sh only parses this file.
#if canImport(SwiftUI)
import SqueezeCore
import SqueezeDemoKit
import SwiftUI

@main
struct SqueezeDemoApp: App {
    @StateObject private var recognition = RecognitionModel(backends: SqueezeDemoApp.videoBackends)
    @StateObject private var qa = QaModel(backends: SqueezeDemoApp.decoderBackends)

    static var videoBackends: [VideoBackend] {
        var backends: [VideoBackend] = []
        #if canImport(CoreML)
        backends += VideoBackend.coreML
        #endif
        #if canImport(ExecuTorch)
        backends += ExecuTorchBackends.video
        #endif
        return backends
    }

    /// The decoder on Core ML (the split plan's .mlpackage, iOS 18) and, with the package linked, ExecuTorch (.pte).
    static var decoderBackends: [DecoderBackend] {
        var backends: [DecoderBackend] = []
        #if canImport(CoreML)
        if #available(iOS 18.0, *) { backends += DecoderBackend.coreML }
        #endif
        #if canImport(ExecuTorch)
        backends += ExecuTorchBackends.decoder
        #endif
        return backends
    }

    var body: some Scene {
        WindowGroup {
            TabView {
                RecognitionScreen(model: recognition)
                    .tabItem { Label("Recognize", systemImage: "video") }
                QaScreen(model: qa)
                    .tabItem { Label("Ask", systemImage: "text.bubble") }
            }
        }
    }
}
#endif
