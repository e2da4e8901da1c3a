import XCTest
@testable import SqueezeCore

final class FrameSamplingTests: XCTestCase {
    private func cases() throws -> [JSONPath] { try Golden.json("sampling.json")["cases"].list() }

    func testSampleIndicesMatchPythonExactly() throws {
        let cases = try cases()
        XCTAssertEqual(cases.count, 12)
        for c in cases {
            let n = try c["num_frames"].int(), t = try c["clip_len"].int(), i = try c["interval"].int(), k = try c["num_clips"].int()
            let expected = try c["indices"].list().map { try $0.intArray() }
            XCTAssertEqual(try FrameSampling.sampleIndices(numFrames: n, clipLen: t, interval: i, numClips: k), expected,
                           "n=\(n) T=\(t) interval=\(i) clips=\(k)")
        }
    }

    func testTheVideoGoldenUsesTheSameIndices() throws {
        let v = try Golden.video()
        let idx = try FrameSampling.sampleIndices(numFrames: v["video_frames"].int(), clipLen: v["frames"].int(),
                                                  interval: v["frame_interval"].int())[0]
        XCTAssertEqual(idx, try v["indices"].intArray())
    }

    /// Streaming the frames of a file through the ring buffer gives Python's offline clip when its last frame arrives.
    func testStreamingSamplerReproducesTheOfflineClip() throws {
        var checked = 0
        for c in try cases() where try c["num_clips"].int() == 1 && c["num_frames"].int() >= c["clip_len"].int() * c["interval"].int() {
            let n = try c["num_frames"].int(), t = try c["clip_len"].int(), interval = try c["interval"].int()
            let expected = try c["indices"].list()[0].intArray()
            let sampler = try FrameSampler<Int>(clipLen: t, interval: interval,
                                                phase: FrameSampling.offlinePhase(numFrames: n, clipLen: t, interval: interval))
            var matched = false
            for frame in 0..<n {
                sampler.offer { frame }
                if frame == expected.last! {
                    XCTAssertTrue(sampler.isFull)
                    XCTAssertEqual(sampler.clipIndices(), expected.map { Int64($0) }, "n=\(n) T=\(t)")
                    XCTAssertEqual(sampler.clip(), expected) // the stored frames, oldest first
                    matched = true
                }
            }
            XCTAssertTrue(matched, "n=\(n) T=\(t): the clip's last frame never arrived")
            checked += 1
        }
        XCTAssertGreaterThan(checked, 0)
    }

    func testRingBufferKeepsEveryNthFrameNewestTDeep() throws {
        let s = try FrameSampler<String>(clipLen: 3, interval: 4, phase: 1)
        var converted = 0
        for i in 0..<10 {
            let want = s.wantsNext()
            XCTAssertEqual(want, i % 4 == 1)
            XCTAssertEqual(s.offer { converted += 1; return "f\(i)" }, want)
        }
        XCTAssertEqual(converted, 3) // frames not kept are never converted
        XCTAssertEqual(s.framesSeen, 10)
        XCTAssertEqual(s.clip(), ["f1", "f5", "f9"])
        XCTAssertTrue(s.isFull)
        for i in 10..<14 { s.offer("f\(i)") }
        XCTAssertEqual(s.clip(), ["f5", "f9", "f13"])
        XCTAssertEqual(s.clipIndices(), [5, 9, 13])
        s.reset()
        XCTAssertFalse(s.isFull)
        XCTAssertEqual(s.size, 0)
        let one = try FrameSampler<String>(clipLen: 2, interval: 1)
        one.offer("a")
        XCTAssertEqual(one.clip(), ["a"])
        XCTAssertThrowsError(try FrameSampler<Int>(clipLen: 4, interval: 4, phase: 4))
        XCTAssertThrowsError(try FrameSampler<Int>(clipLen: 0, interval: 4))
    }
}
