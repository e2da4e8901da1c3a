import Foundation
import XCTest
@testable import SqueezeCore
@testable import SqueezeDemoKit

/// The recognition screen's pipeline without a camera: bikes.mp4's frames streamed as BGRA camera buffers at 30 fps
/// through RecognitionSession (sampler, conversion of kept frames only, preprocessing, the inference worker) give the
/// frames_uint8 input Python builds, and a runtime answering with the real export's logits gives Python's top-5 on
/// the status the screen shows, with the camera FPS and the backend name.
final class RecognitionSessionTests: XCTestCase {
    private var root: URL!

    override func setUpWithError() throws {
        root = FileManager.default.temporaryDirectory.appendingPathComponent("squeeze-recognition-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        try Data(try Golden.bytes("manifest.json")).write(to: root.appendingPathComponent("manifest.json"))
        try Data(try Golden.bytes("labels.txt")).write(to: root.appendingPathComponent("labels.txt"))
    }

    override func tearDown() {
        try? FileManager.default.removeItem(at: root)
    }

    /// Golden logits for the golden clip, zeros for the clips before it (they hold frames the test leaves blank).
    private final class GoldenRuntime: ModelRuntime {
        let name = "fake (golden logits)"
        let logits: [Float]
        let expected: [UInt8]
        private(set) var sawGoldenClip = false
        var fail = false
        init(logits: [Float], expected: [UInt8]) {
            self.logits = logits
            self.expected = expected
        }
        func run(_ input: ModelInput) throws -> [Float] {
            if fail { throw InvalidArgument("the delegate refused the graph") }
            guard case .uint8(let data) = input else { throw InvalidArgument("not a uint8 input") }
            if data == expected {
                sawGoldenClip = true
                return logits
            }
            return [Float](repeating: 0, count: logits.count)
        }
    }

    func testCameraStreamGivesPythonsTop5OnTheStatus() throws {
        let g = try Golden.json("logits.json")
        let runtime = GoldenRuntime(logits: try g["logits"].doubleArray().map { Float($0) }, expected: try Golden.bytes("frames_uint8.bin"))
        let directory = try VideoModelDirectory.load(root)
        let p = directory.manifest.preprocessing
        let video = try Golden.video()
        let indices = try video["indices"].intArray()
        let phase = try FrameSampling.offlinePhase(numFrames: try video["video_frames"].int(), clipLen: p.frames, interval: p.frameInterval)
        let frames = try Golden.sourceFrames().map { CameraFramesTests.bgra($0, pad: 32) }
        let blank = CameraFramesTests.bgra(try RgbFrame.packed([UInt8](repeating: 0, count: 640 * 272 * 3), width: 640, height: 272), pad: 32)
        let lock = NSLock()
        var statuses: [RecognitionStatus] = []
        var now: Int64 = 0
        let session = try RecognitionSession(directory: directory, runtime: runtime, phase: phase,
                                             clockNanos: { defer { now += 12_500_000 }; return now }) { status in
            lock.lock(); statuses.append(status); lock.unlock()
        }
        var converted: [Int] = []
        let frameNanos: Int64 = 1_000_000_000 / 30
        for i in 0...indices.last! {
            session.cameraFrame(timestampNanos: Int64(i) * frameNanos) {
                converted.append(i)
                let (bytes, bpr) = indices.firstIndex(of: i).map { frames[$0] } ?? blank
                return try CameraFrames.rgbFromBGRA(bytes, width: 640, height: 272, bytesPerRow: bpr)
            }
        }
        session.waitUntilIdle()
        // only the kept frames were converted: every frame_interval-th, at the offline clip's phase
        XCTAssertTrue(Set(indices).isSubset(of: Set(converted)))
        XCTAssertTrue(converted.allSatisfy { $0 % p.frameInterval == phase }, "\(converted)")
        XCTAssertEqual(converted.count, (indices.last! - phase) / p.frameInterval + 1)
        XCTAssertTrue(runtime.sawGoldenClip, "the golden clip never reached the runtime")
        lock.lock()
        let lastStatus = statuses.last
        lock.unlock()
        let last = try XCTUnwrap(lastStatus)
        XCTAssertEqual(last.top.map(\.index), try g["top5"].intArray())
        XCTAssertEqual(last.top[0].label, directory.labels?[last.top[0].index])
        XCTAssertEqual(try XCTUnwrap(last.inferenceMs), 12.5, accuracy: 1e-9)
        XCTAssertEqual(try XCTUnwrap(last.latency).p50Ms, 12.5, accuracy: 1e-9)
        XCTAssertEqual(last.cameraFps, 1e9 / Double(frameNanos), accuracy: 1e-6)
        XCTAssertEqual(last.backend, "fake (golden logits)")
        XCTAssertNil(last.error)
    }

    func testRuntimeErrorsReachTheScreenInOneLine() throws {
        let runtime = GoldenRuntime(logits: [Float](repeating: 0, count: 51), expected: [])
        runtime.fail = true
        let lock = NSLock()
        var statuses: [RecognitionStatus] = []
        let session = try RecognitionSession(directory: try VideoModelDirectory.load(root), runtime: runtime) { status in
            lock.lock(); statuses.append(status); lock.unlock()
        }
        let gray = try RgbFrame.packed([UInt8](repeating: 128, count: 96 * 80 * 3), width: 96, height: 80)
        for i in 0..<16 { session.cameraFrame(timestampNanos: Int64(i) * 33_333_333) { gray } }
        session.waitUntilIdle()
        lock.lock()
        let lastStatus = statuses.last
        lock.unlock()
        let last = try XCTUnwrap(lastStatus)
        XCTAssertEqual(last.error, "fake (golden logits): the delegate refused the graph")
        XCTAssertEqual(last.top.count, 0)
    }
}
