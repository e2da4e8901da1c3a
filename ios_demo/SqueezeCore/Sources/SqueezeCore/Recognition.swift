// Camera frames -> model input -> top-k: ClipBuilder, the ModelRuntime protocol the app implements (Core ML,
// ExecuTorch, ONNX Runtime, ...), Classifier. Port of Recognition.kt.
import Foundation

/// One model input, in the dtype the manifest names: raw bytes for frames_uint8, floats for clip/squeezed.
public enum ModelInput {
    case uint8([UInt8])
    case float32([Float])
}

/// A model runtime the app provides: one input tensor of the manifest's shape, the logits out (N x classes,
/// row-major). Implementations own their native resources.
public protocol ModelRuntime: AnyObject {
    /// Shown on screen, e.g. "Core ML (ANE)" or "ExecuTorch (XNNPACK)".
    var name: String { get }
    func run(_ input: ModelInput) throws -> [Float]
}

/// Keeps every frame_interval-th camera frame (only those are resized and cropped), the newest `frames` of them,
/// and packs a clip in the manifest's input format once the ring is full. Owned by the camera queue.
public final class ClipBuilder {
    public struct Clip {
        public let input: ModelInput
        public let frameIndices: [Int64]
    }

    public let manifest: Manifest
    public let preprocessor: FramePreprocessor
    public let sampler: FrameSampler<[UInt8]>

    public init(manifest: Manifest, phase: Int = 0, kernel: BilinearKernel = .torchGeneric) throws {
        let p = manifest.preprocessing
        try require(manifest.input.batch == 1, "the camera app feeds one clip at a time; export with --batch 1")
        self.manifest = manifest
        preprocessor = try FramePreprocessor(p, kernel: kernel)
        sampler = try FrameSampler(clipLen: p.frames, interval: p.frameInterval, phase: phase)
    }

    /// Whether the next camera frame will be kept (the app may skip converting it otherwise).
    public func wantsNextFrame() -> Bool { sampler.wantsNext() }

    /// Offer the next camera frame (`frame` is only called for kept frames). Returns a new clip when this frame
    /// was kept and the ring is full, else nil.
    public func offer(_ frame: () throws -> RgbFrame) throws -> Clip? {
        let kept = try sampler.offer { try preprocessor.process(try frame()) }
        if !kept || !sampler.isFull { return nil }
        return Clip(input: try pack(sampler.clip()), frameIndices: sampler.clipIndices())
    }

    /// The clip in the manifest's input format (frames oldest first).
    public func pack(_ frames: [[UInt8]]) throws -> ModelInput {
        let p = manifest.preprocessing
        if manifest.input.format == "frames_uint8" { return .uint8(try Preprocessing.packFramesUint8(frames, size: p.size)) }
        // clip and squeezed: the same memory order
        return .float32(try Preprocessing.normalizeClip(frames, size: p.size, mean: p.mean, std: p.std))
    }
}

/// What the screen shows for one inference.
public struct RecognitionResult {
    public let top: [Prediction]
    public let inferenceMs: Double
    public let runtime: String
    public let frameIndices: [Int64]
}

/// Runs the runtime on clips, turns logits into top-k with labels, and keeps the latency window. One thread.
public final class Classifier {
    public let runtime: ModelRuntime
    public let labels: [String]?
    public let topK: Int
    public let latency: LatencyWindow
    private let clockNanos: () -> Int64

    public init(runtime: ModelRuntime, labels: [String]?, topK: Int = 5, latency: LatencyWindow? = nil,
                clockNanos: @escaping () -> Int64 = { Int64(DispatchTime.now().uptimeNanoseconds) }) {
        self.runtime = runtime
        self.labels = labels
        self.topK = topK
        self.latency = latency ?? (try! LatencyWindow(capacity: 100))
        self.clockNanos = clockNanos
    }

    public func classify(_ clip: ClipBuilder.Clip) throws -> RecognitionResult {
        let t0 = clockNanos()
        let logits = try runtime.run(clip.input)
        let dt = clockNanos() - t0
        latency.add(nanos: dt)
        return RecognitionResult(top: try Classification.topK(logits, k: topK, labels: labels), inferenceMs: Double(dt) / 1e6,
                                 runtime: runtime.name, frameIndices: clip.frameIndices)
    }
}
