// The camera recognition screen (SwiftUI + AVFoundation): camera preview, backend picker, top-5 with probabilities,
// inference ms (last, p50, p90), camera FPS and the backend in use. The logic lives in RecognitionSession
// (platform-free, tested on Linux); this file only wires the camera and the screen. Apple-only (behind
// canImport(SwiftUI) / UIKit / AVFoundation); not built or run here (no Apple SDK): see ios_demo/README.md.
#if canImport(SwiftUI) && canImport(UIKit) && canImport(AVFoundation)
import AVFoundation
import SqueezeCore
import SwiftUI
import UIKit

public final class RecognitionModel: ObservableObject {
    @Published public private(set) var status = RecognitionStatus()
    /// a setup problem (no export, camera denied, model failed to load), one line
    @Published public private(set) var message: String?
    @Published public private(set) var loading = false
    @Published public var backendIndex = 0 {
        didSet { if oldValue != backendIndex { switchBackend() } }
    }
    /// the backends that can run the export found (a backend whose artifact is missing is not offered)
    public private(set) var backends: [VideoBackend] = []
    public let camera = CameraCapture()
    private var directory: VideoModelDirectory?
    private var session: RecognitionSession?
    private let setup = DispatchQueue(label: "dev.squeezemobile.recognition-setup")
    private var orientationObserver: NSObjectProtocol?

    public init(backends: [VideoBackend], modelRoots: [URL] = ModelLocations.defaultRoots()) {
        guard let dir = ModelLocations.scan(modelRoots).video.first else {
            message = "no SqueezeTime export found: add the `squeeze export squeezetime` directory to models/ (see README)"
            return
        }
        do {
            let loaded = try VideoModelDirectory.load(dir)
            directory = loaded
            self.backends = backends.filter { $0.canRun(loaded) }
            if self.backends.isEmpty {
                message = "the export in \(dir.lastPathComponent) has no artifact this app runs; export with --formats coreml,pte"
            }
        } catch {
            message = "\(error)"
        }
    }

    public func start() {
        UIDevice.current.beginGeneratingDeviceOrientationNotifications()
        orientationObserver = NotificationCenter.default.addObserver(
            forName: UIDevice.orientationDidChangeNotification, object: nil, queue: .main) { [weak self] _ in
            self?.updateOrientation()
        }
        updateOrientation()
        camera.start { [weak self] error in
            if let error = error { self?.message = "\(error)" }
        }
        switchBackend()
    }

    public func stop() {
        camera.setSink(nil)
        camera.stop()
        if let o = orientationObserver { NotificationCenter.default.removeObserver(o) }
        orientationObserver = nil
        UIDevice.current.endGeneratingDeviceOrientationNotifications()
    }

    private func updateOrientation() {
        switch UIDevice.current.orientation {
        case .portrait: camera.orientation = .portrait
        case .portraitUpsideDown: camera.orientation = .portraitUpsideDown
        case .landscapeLeft: camera.orientation = .landscapeLeft
        case .landscapeRight: camera.orientation = .landscapeRight
        default: break // face up/down, unknown: keep the last upright orientation
        }
    }

    /// Loads the chosen backend off the main thread (Core ML compiles the model the first time), then routes the
    /// camera's frames to a new session.
    private func switchBackend() {
        guard let directory = directory, backends.indices.contains(backendIndex) else { return }
        let backend = backends[backendIndex]
        camera.setSink(nil)
        loading = true
        let previous = session
        setup.async { [weak self] in
            previous?.waitUntilIdle()
            do {
                let runtime = try backend.make(directory)
                let session = try RecognitionSession(directory: directory, runtime: runtime) { status in
                    DispatchQueue.main.async { self?.status = status }
                }
                self?.camera.setSink { nanos, convert in session.cameraFrame(timestampNanos: nanos, convert: convert) }
                DispatchQueue.main.async {
                    self?.session = session
                    self?.status = RecognitionStatus()
                    self?.status.backend = runtime.name
                    self?.loading = false
                    self?.message = nil
                }
            } catch {
                DispatchQueue.main.async {
                    self?.loading = false
                    self?.message = "\(backend.name): \(error)"
                }
            }
        }
    }
}

/// The camera preview: a UIView whose layer is the session's preview layer.
struct CameraPreview: UIViewRepresentable {
    let session: AVCaptureSession

    final class PreviewView: UIView {
        override class var layerClass: AnyClass { AVCaptureVideoPreviewLayer.self }
        var previewLayer: AVCaptureVideoPreviewLayer { layer as! AVCaptureVideoPreviewLayer }
    }

    func makeUIView(context: Context) -> PreviewView {
        let view = PreviewView()
        view.previewLayer.session = session
        view.previewLayer.videoGravity = .resizeAspectFill
        return view
    }

    func updateUIView(_ uiView: PreviewView, context: Context) {}
}

public struct RecognitionScreen: View {
    @ObservedObject var model: RecognitionModel

    public init(model: RecognitionModel) {
        self.model = model
    }

    private func ms(_ v: Double?) -> String { v.map { String(format: "%.1f ms", $0) } ?? "-" }

    public var body: some View {
        VStack(spacing: 8) {
            CameraPreview(session: model.camera.session)
                .aspectRatio(3.0 / 4.0, contentMode: .fit)
                .clipped()
            if !model.backends.isEmpty {
                Picker("Backend", selection: $model.backendIndex) {
                    ForEach(model.backends.indices, id: \.self) { i in Text(model.backends[i].name).tag(i) }
                }
                .pickerStyle(.menu)
            }
            if let message = model.message {
                Text(message).font(.footnote).foregroundColor(.red).padding(.horizontal)
            }
            if model.loading { ProgressView("Loading the model...") }
            VStack(alignment: .leading, spacing: 4) {
                ForEach(Array(model.status.top.enumerated()), id: \.offset) { _, p in
                    HStack {
                        Text(p.label ?? "class \(p.index)").lineLimit(1)
                        Spacer()
                        ProgressView(value: min(max(p.probability, 0), 1)).frame(width: 80)
                        Text(String(format: "%5.1f%%", p.probability * 100)).monospacedDigit()
                    }
                }
            }
            .padding(.horizontal)
            Divider()
            VStack(alignment: .leading, spacing: 2) {
                Text("Inference \(ms(model.status.inferenceMs))  (p50 \(ms(model.status.latency?.p50Ms)), p90 \(ms(model.status.latency?.p90Ms)))")
                Text(String(format: "Camera %.1f FPS", model.status.cameraFps) +
                     (model.status.clipsDropped > 0 ? "  ·  \(model.status.clipsDropped) clips skipped while busy" : ""))
                Text("Backend: \(model.status.backend.isEmpty ? "-" : model.status.backend)")
                if let error = model.status.error { Text(error).foregroundColor(.red) }
            }
            .font(.footnote.monospacedDigit())
            .frame(maxWidth: .infinity, alignment: .leading)
            .padding(.horizontal)
            Spacer(minLength: 0)
        }
        .onAppear { model.start() }
        .onDisappear { model.stop() }
    }
}
#endif
