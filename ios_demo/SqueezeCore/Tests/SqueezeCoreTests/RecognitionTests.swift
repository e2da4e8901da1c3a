import XCTest
@testable import SqueezeCore

/// The camera path end to end without a camera: the frames of bikes.mp4 streamed through ClipBuilder (set up from
/// the real manifest) give exactly the frames_uint8 input Python builds, and a runtime returning the real export's
/// logits gives Python's top-5.
final class RecognitionTests: XCTestCase {
    private var manifest: Manifest!
    private var indices: [Int] = []
    private var frames: [RgbFrame] = []

    override func setUpWithError() throws {
        manifest = try Manifest.parse(try Golden.text("manifest.json"))
        indices = try Golden.video()["indices"].intArray()
        frames = try Golden.sourceFrames()
    }

    private func streamedClip() throws -> ClipBuilder.Clip {
        let blank = try RgbFrame.packed([UInt8](repeating: 0, count: 640 * 272 * 3), width: 640, height: 272)
        let n = try Golden.video()["video_frames"].int()
        let p = manifest.preprocessing
        let builder = try ClipBuilder(manifest: manifest,
                                      phase: FrameSampling.offlinePhase(numFrames: n, clipLen: p.frames, interval: p.frameInterval))
        var clip: ClipBuilder.Clip?
        for i in 0...indices.last! {
            let wanted = builder.wantsNextFrame()
            let out = try builder.offer {
                XCTAssertTrue(wanted, "frame \(i) converted although it is not kept")
                // earlier kept frames leave the ring before the clip completes
                return indices.firstIndex(of: i).map { frames[$0] } ?? blank
            }
            if i == indices.last! { clip = out }
        }
        return try XCTUnwrap(clip)
    }

    func testStreamedCameraFramesGiveThePythonInput() throws {
        let clip = try streamedClip()
        XCTAssertEqual(clip.frameIndices, indices.map { Int64($0) })
        guard case .uint8(let data) = clip.input else { return XCTFail("not a uint8 input") }
        XCTAssertNil(diffBytes(try Golden.bytes("frames_uint8.bin"), data))
        XCTAssertEqual(Int64(data.count), manifest.inputBytes)
    }

    private final class GoldenLogits: ModelRuntime {
        let name = "fake (golden logits)"
        let logits: [Float]
        let expectedInput: [UInt8]
        init(logits: [Float], expectedInput: [UInt8]) {
            self.logits = logits
            self.expectedInput = expectedInput
        }
        func run(_ input: ModelInput) throws -> [Float] {
            guard case .uint8(let data) = input else { throw InvalidArgument("not a uint8 input") }
            XCTAssertNil(diffBytes(expectedInput, data))
            return logits
        }
    }

    func testClassifierGivesPythonsTop5AndRecordsLatency() throws {
        let g = try Golden.json("logits.json")
        let runtime = GoldenLogits(logits: try g["logits"].doubleArray().map { Float($0) },
                                   expectedInput: try Golden.bytes("frames_uint8.bin"))
        var now: Int64 = 0
        let labels = Manifest.parseLabels(try Golden.text("labels.txt"))
        let classifier = Classifier(runtime: runtime, labels: labels, clockNanos: { defer { now += 12_500_000 }; return now })
        let result = try classifier.classify(try streamedClip())
        XCTAssertEqual(result.top.map(\.index), try g["top5"].intArray())
        XCTAssertEqual(result.top[0].label, labels[result.top[0].index])
        XCTAssertEqual(result.inferenceMs, 12.5, accuracy: 1e-9)
        XCTAssertEqual(result.runtime, "fake (golden logits)")
        XCTAssertEqual(try XCTUnwrap(classifier.latency.summary()).p50Ms, 12.5, accuracy: 1e-9)
    }

    func testFloatFormatsGetTheNormalisedClip() throws {
        // the same export described with the float clip format: the builder then normalises (as load_clip does)
        var text = try Golden.text("manifest.json")
        for (old, new) in [("\"format\": \"frames_uint8\"", "\"format\": \"clip\""),
                           ("\"shape\": [\n      1,\n      4,\n      64,\n      64,\n      3\n    ]", "\"shape\": [1, 3, 4, 64, 64]"),
                           ("\"dtype\": \"uint8\"", "\"dtype\": \"float32\"")] {
            let r = try XCTUnwrap(text.range(of: old), "test edit not applicable: \(old)")
            text.replaceSubrange(r, with: new)
        }
        let builder = try ClipBuilder(manifest: try Manifest.parse(text))
        guard case .float32(let data) = try builder.pack(frames.map { try builder.preprocessor.process($0) }) else {
            return XCTFail("not a float input")
        }
        let expected = try Golden.floatsLE("clip_f32le.bin.gz")
        XCTAssertEqual(data.count, expected.count)
        XCTAssertLessThanOrEqual(zip(expected, data).map { abs(Double($0) - Double($1)) }.max() ?? .infinity, 1e-6)
    }
}
