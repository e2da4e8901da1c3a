import XCTest
@testable import SqueezeCore

/// Latency statistics against bench/stats.py's summarize (numpy percentiles) on the same numbers.
final class LatencyStatsTests: XCTestCase {
    func testSummarizeMatchesBenchStats() throws {
        let cases = try Golden.json("latency.json")["cases"].list()
        XCTAssertEqual(cases.count, 3)
        for c in cases {
            let s = try LatencyStats.summarize(c["latencies_s"].doubleArray())
            let tol = 1e-12
            XCTAssertEqual(s.runs, try c["runs"].int())
            XCTAssertEqual(s.p50Ms, try c["p50_ms"].double(), accuracy: tol)
            XCTAssertEqual(s.p90Ms, try c["p90_ms"].double(), accuracy: tol)
            XCTAssertEqual(s.p99Ms, try c["p99_ms"].double(), accuracy: tol)
            XCTAssertEqual(s.minMs, try c["min_ms"].double(), accuracy: tol)
            XCTAssertEqual(s.maxMs, try c["max_ms"].double(), accuracy: tol)
            XCTAssertEqual(s.clipsPerS, try c["clips_per_s"].double(), accuracy: 1e-9)
        }
    }

    func testPercentilesAndWindow() throws {
        let v = [4.0, 1.0, 3.0, 2.0]
        XCTAssertEqual(try LatencyStats.median(v), 2.5)
        XCTAssertEqual(try LatencyStats.percentile(v, 0), 1.0)
        XCTAssertEqual(try LatencyStats.percentile(v, 100), 4.0)
        XCTAssertEqual(try LatencyStats.percentile(v, 90), 3.7, accuracy: 1e-12)
        let w = try LatencyWindow(capacity: 3)
        XCTAssertNil(w.summary())
        for ms: Int64 in [100, 10, 20, 30] { w.add(nanos: ms * 1_000_000) }
        XCTAssertEqual(w.valuesSeconds(), [0.01, 0.02, 0.03]) // the oldest (100 ms) left the window
        XCTAssertEqual(try XCTUnwrap(w.summary()).p50Ms, 20.0, accuracy: 1e-9)
    }
}
