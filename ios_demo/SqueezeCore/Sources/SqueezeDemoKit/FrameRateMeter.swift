// Frames per second over a sliding time window (the camera's FPS on the recognition screen). Platform-free: fed the
// frames' timestamps, so it is tested with synthetic clocks.

public final class FrameRateMeter {
    public let windowNanos: Int64
    private var stamps: [Int64] = []
    private var head = 0

    /// windowSeconds: how far back frames count (1 s: the rate reacts within a second, still smooth at 30 fps)
    public init(windowSeconds: Double = 1.0) {
        windowNanos = Int64(windowSeconds * 1e9)
    }

    /// Record one frame at timestampNanos (monotonic, non-decreasing).
    public func tick(_ timestampNanos: Int64) {
        stamps.append(timestampNanos)
        while timestampNanos - stamps[head] > windowNanos { head += 1 }
        if head > 256 && head * 2 > stamps.count { // drop what left the window now and then
            stamps.removeFirst(head)
            head = 0
        }
    }

    /// Frames per second over the window: (frames - 1) / time between the first and the last; 0 before two frames.
    public var fps: Double {
        let n = stamps.count - head
        guard n >= 2, let last = stamps.last, last > stamps[head] else { return 0 }
        return Double(n - 1) / (Double(last - stamps[head]) / 1e9)
    }
}
