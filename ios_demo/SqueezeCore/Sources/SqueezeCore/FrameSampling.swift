// Frame sampling, as the Python pipeline does it (squeezetime/video.py: sample_indices) for files, and its
// streaming form for a camera. Port of FrameSampling.kt.
//
// The official test sampling (mmaction SampleFrames, test_mode) takes clips of clipLen frames spaced interval
// frames apart: frame indices offset + i * interval. A camera has no end, so the app keeps a sliding clip instead:
// every interval-th frame, the newest clipLen of them. Fed the frames of a file, with phase = offset % interval,
// that clip is exactly the offline clip at the moment its last frame arrives (tested against the Python indices).

public enum FrameSampling {
    /// mmaction SampleFrames in test mode: evenly spaced clip starts, indices looped past the end.
    /// Returns numClips arrays of clipLen frame indices, as sample_indices in squeezetime/video.py.
    public static func sampleIndices(numFrames: Int, clipLen: Int, interval: Int, numClips: Int = 1) throws -> [[Int]] {
        try require(numFrames > 0, "numFrames must be positive, got \(numFrames)")
        try require(clipLen > 0 && interval > 0 && numClips > 0, "clipLen, interval and numClips must be positive")
        let span = clipLen * interval
        // the same double arithmetic as numpy: (n - span + 1) / numClips, then offset = trunc(c * avg + avg / 2)
        let avg = Double(numFrames - span + 1) / Double(numClips)
        return (0..<numClips).map { c in
            let offset = numFrames > span - 1 ? Int((Double(c) * avg + avg / 2.0).rounded(.towardZero)) : 0
            return (0..<clipLen).map { i in floorMod(offset + i * interval, numFrames) }
        }
    }

    /// The phase (frame index modulo interval) at which a FrameSampler reproduces the single offline clip.
    public static func offlinePhase(numFrames: Int, clipLen: Int, interval: Int) throws -> Int {
        try sampleIndices(numFrames: numFrames, clipLen: clipLen, interval: interval)[0][0] % interval
    }
}

@inline(__always)
func floorMod(_ a: Int, _ n: Int) -> Int {
    let r = a % n
    return r < 0 ? r + n : r
}

/// A ring buffer of the newest clipLen frames among every interval-th frame (those whose running index is
/// congruent to phase modulo interval). Frames are whatever the app stores per kept frame: typically the
/// preprocessed crop bytes, so only kept frames are converted and resized.
///
/// Not thread-safe: the camera callback owns it (one serial queue).
public final class FrameSampler<F> {
    public let clipLen: Int
    public let interval: Int
    public let phase: Int

    private var frames: [F?]
    private var indices: [Int64]
    private var count = 0 // frames held (<= clipLen)
    private var next = 0 // ring slot the next kept frame goes to

    /// Frames offered so far (kept or not): the running index of the next frame.
    public private(set) var framesSeen: Int64 = 0

    public init(clipLen: Int, interval: Int, phase: Int = 0) throws {
        try require(clipLen > 0, "clipLen must be positive, got \(clipLen)")
        try require(interval > 0, "interval must be positive, got \(interval)")
        try require(phase >= 0 && phase < interval, "phase must be in 0..\(interval - 1), got \(phase)")
        self.clipLen = clipLen
        self.interval = interval
        self.phase = phase
        frames = Array(repeating: nil, count: clipLen)
        indices = Array(repeating: 0, count: clipLen)
    }

    /// Whether the next offered frame will be kept (lets the app skip converting the others).
    public func wantsNext() -> Bool { framesSeen % Int64(interval) == Int64(phase) }

    /// Offer the next camera frame; returns true when it was kept. `frame` is only evaluated if kept.
    @discardableResult
    public func offer(_ frame: () throws -> F) rethrows -> Bool {
        let keep = wantsNext()
        if keep {
            frames[next] = try frame()
            indices[next] = framesSeen
            next = (next + 1) % clipLen
            if count < clipLen { count += 1 }
        }
        framesSeen += 1
        return keep
    }

    @discardableResult
    public func offer(_ frame: F) -> Bool { offer { frame } }

    /// A full clip is held (clipLen kept frames).
    public var isFull: Bool { count == clipLen }

    /// Kept frames held.
    public var size: Int { count }

    /// The running indices of the held frames, oldest first.
    public func clipIndices() -> [Int64] { (0..<count).map { indices[slot($0)] } }

    /// The held frames, oldest first (the time order the model expects).
    public func clip() -> [F] { (0..<count).map { frames[slot($0)]! } }

    public func reset() {
        frames = Array(repeating: nil, count: clipLen)
        count = 0
        next = 0
        framesSeen = 0
    }

    private func slot(_ i: Int) -> Int { (next - count + i + clipLen) % clipLen }
}
