// The recognition screen's pipeline without the camera and the screen: every camera frame goes through the frame
// sampler (only every frame_interval-th is converted and preprocessed, on the camera thread), a full clip goes to one
// inference worker that always takes the newest clip, and each result comes back as a RecognitionStatus (top-5,
// inference ms, camera FPS, the backend in use). Platform-free, so it is tested here with a fake runtime.
import Dispatch
import Foundation
import SqueezeCore

/// What the recognition screen shows.
public struct RecognitionStatus {
    public var top: [Prediction] = []
    /// the last inference, and the percentiles of the recent ones
    public var inferenceMs: Double?
    public var latency: LatencySummary?
    public var cameraFps: Double = 0
    public var backend: String = ""
    /// clips replaced while the model was busy (the model is slower than the camera fills clips)
    public var clipsDropped: Int = 0
    public var error: String?

    public init() {}
}

public final class RecognitionSession {
    public let manifest: Manifest
    public let runtime: ModelRuntime
    private let builder: ClipBuilder
    private let classifier: Classifier
    private let fps = FrameRateMeter()
    private let lock = NSLock()
    private var status = RecognitionStatus()
    private var worker: LatestOnlyWorker<ClipBuilder.Clip>!
    private let onStatus: (RecognitionStatus) -> Void

    /// onStatus runs on the inference worker after every clip (and on the camera thread for errors); hop to the
    /// main thread there. phase: which camera frame (mod frame_interval) the sampler keeps first.
    public init(directory: VideoModelDirectory, runtime: ModelRuntime, topK: Int = 5, phase: Int = 0,
                clockNanos: @escaping () -> Int64 = { Int64(bitPattern: DispatchTime.now().uptimeNanoseconds) },
                onStatus: @escaping (RecognitionStatus) -> Void) throws {
        manifest = directory.manifest
        self.runtime = runtime
        builder = try ClipBuilder(manifest: directory.manifest, phase: phase)
        classifier = Classifier(runtime: runtime, labels: directory.labels, topK: topK, clockNanos: clockNanos)
        self.onStatus = onStatus
        status.backend = runtime.name
        worker = LatestOnlyWorker(label: "dev.squeezemobile.inference") { [weak self] clip in self?.classify(clip) }
    }

    /// One camera frame (camera thread). convert is called only for frames the sampler keeps: it turns the camera
    /// buffer into an upright RgbFrame while the buffer is still valid.
    public func cameraFrame(timestampNanos: Int64, convert: () throws -> RgbFrame) {
        lock.lock()
        fps.tick(timestampNanos)
        lock.unlock()
        do {
            if let clip = try builder.offer(convert) { worker.submit(clip) }
        } catch {
            report { $0.error = "\(error)" }
        }
    }

    /// Blocks until the inference worker is idle (tests; before switching the backend).
    public func waitUntilIdle() { worker.waitUntilIdle() }

    private func classify(_ clip: ClipBuilder.Clip) {
        do {
            let result = try classifier.classify(clip)
            let summary = classifier.latency.summary()
            report {
                $0.top = result.top
                $0.inferenceMs = result.inferenceMs
                $0.latency = summary
                $0.error = nil
            }
        } catch {
            report { $0.error = "\(runtime.name): \(error)" }
        }
    }

    private func report(_ change: (inout RecognitionStatus) -> Void) {
        lock.lock()
        change(&status)
        status.cameraFps = fps.fps
        status.clipsDropped = worker.dropped
        let snapshot = status
        lock.unlock()
        onStatus(snapshot)
    }
}
