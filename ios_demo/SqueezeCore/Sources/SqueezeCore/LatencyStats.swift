// Latency statistics as bench/stats.py reports them: medians and percentiles (numpy's default linear
// interpolation), never means (phones throttle; one slow frame must not move the headline number).
// Port of LatencyStats.kt.

public struct LatencySummary: Equatable {
    public let runs: Int
    public let p50Ms: Double
    public let p90Ms: Double
    public let p99Ms: Double
    public let minMs: Double
    public let maxMs: Double
    /// clips per second at the median latency, times the batch
    public let clipsPerS: Double
}

public enum LatencyStats {
    /// numpy.percentile(values, q) with the default 'linear' method; q in 0..100.
    public static func percentile(_ values: [Double], _ q: Double) throws -> Double {
        try require(!values.isEmpty, "no values")
        try require(q >= 0 && q <= 100, "percentile must be in 0..100, got \(q)")
        let a = values.sorted()
        let pos = Double(a.count - 1) * (q / 100.0)
        let lo = Int(pos.rounded(.down))
        let hi = min(lo + 1, a.count - 1)
        let t = pos - Double(lo)
        let diff = a[hi] - a[lo]
        // numpy's _lerp: from the nearer end, so that t = 1 gives b exactly
        return t >= 0.5 ? a[hi] - diff * (1.0 - t) : a[lo] + diff * t
    }

    public static func median(_ values: [Double]) throws -> Double { try percentile(values, 50) }

    /// bench.stats.summarize: latencies in seconds in, milliseconds out.
    public static func summarize(_ latenciesS: [Double], batch: Int = 1) throws -> LatencySummary {
        try require(!latenciesS.isEmpty, "no latencies to summarize")
        let ms = latenciesS.map { $0 * 1e3 }
        let p50 = try percentile(ms, 50)
        return LatencySummary(runs: ms.count, p50Ms: p50, p90Ms: try percentile(ms, 90), p99Ms: try percentile(ms, 99),
                              minMs: ms.min()!, maxMs: ms.max()!, clipsPerS: Double(batch) * 1e3 / p50)
    }
}

/// The last `capacity` latencies (a sliding window for the on-screen numbers); one thread writes it.
public final class LatencyWindow {
    public let capacity: Int
    private var values: [Double]
    private var count = 0
    private var next = 0

    public init(capacity: Int = 100) throws {
        try require(capacity > 0, "capacity must be positive")
        self.capacity = capacity
        values = [Double](repeating: 0, count: capacity)
    }

    public func add(seconds: Double) {
        values[next] = seconds
        next = (next + 1) % capacity
        if count < capacity { count += 1 }
    }

    public func add(nanos: Int64) { add(seconds: Double(nanos) / 1e9) }

    public var size: Int { count }

    /// Oldest first.
    public func valuesSeconds() -> [Double] { (0..<count).map { values[(next - count + $0 + capacity) % capacity] } }

    public func summary(batch: Int = 1) -> LatencySummary? {
        count == 0 ? nil : try? LatencyStats.summarize(valuesSeconds(), batch: batch)
    }
}
