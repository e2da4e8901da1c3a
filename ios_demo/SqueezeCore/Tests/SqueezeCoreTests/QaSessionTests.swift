import Foundation
import XCTest
@testable import SqueezeCore
@testable import SqueezeDemoKit

/// The Q&A screen's pipeline without the screen: a decoder export directory laid out as the app finds it (the real
/// tiny export's manifest.json, its tokenizer.json and a .pack beside them), a runtime replaying the exported graph's
/// outputs (GenerationTests.ReplayRuntime, which also checks every input against Python's), the pack attached and a
/// question answered on the session's queue: the streamed text and the answer are Python's.
final class QaSessionTests: XCTestCase {
    private var root: URL!
    private var gen: JSONPath!
    private var manifest: DecoderManifest!

    override func setUpWithError() throws {
        root = FileManager.default.temporaryDirectory.appendingPathComponent("squeeze-qa-\(UUID().uuidString)")
        let dir = root.appendingPathComponent("decoder")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try Data(try Golden.bytes("qa_decoder_manifest.json")).write(to: dir.appendingPathComponent("manifest.json"))
        try Data(try Golden.bytes("qa_tokenizer_tiny.json")).write(to: dir.appendingPathComponent("tokenizer.json"))
        try Data(try Golden.bytes("qa_pack.safetensors")).write(to: dir.appendingPathComponent("manual.pack"))
        try Data(try Golden.bytes("qa_pack.safetensors")).write(to: dir.appendingPathComponent("faq.pack.safetensors"))
        try Data("{}".utf8).write(to: dir.appendingPathComponent("notes.safetensors")) // not named as a pack
        gen = try Golden.json("qa_generation.json.gz")
        manifest = try DecoderManifest.parse(try Golden.bytes("qa_decoder_manifest.json"))
    }

    override func tearDown() {
        try? FileManager.default.removeItem(at: root)
    }

    func testAttachAskAndStreamAsTheScreenDoes() throws {
        let dirURL = try XCTUnwrap(ModelLocations.scan([root]).decoder.first)
        let directory = try DecoderModelDirectory.load(dirURL)
        XCTAssertEqual(directory.packs().map(\.lastPathComponent), ["faq.pack.safetensors", "manual.pack"])
        let run = try XCTUnwrap(try gen["runs"].list().first { try $0["kind"].string() == "greedy" && $0["attention"].string() == "full" })
        let artifact = try directory.manifest.pick(format: "onnx", attention: "full")
        let runtime = try GenerationTests.ReplayRuntime(run, manifest: manifest, outputs: try Golden.floatsLE("qa_outputs_f32le.bin.gz"))
        var now: Int64 = 0
        let session = try QaSession(directory: directory, artifact: artifact, runtime: runtime,
                                    clockNanos: { defer { now += 1_000_000 }; return now })

        var early: Result<Answer, Error>?
        session.ask("too early", onText: { _ in }, completion: { early = $0 })
        session.waitUntilIdle()
        XCTAssertTrue("\(try XCTUnwrap(early))".contains("attach a context pack first"))

        var attached: Result<AttachedPack, Error>?
        session.attach(pack: directory.packs()[1]) { attached = $0 }
        session.waitUntilIdle()
        let info = try XCTUnwrap(attached).get()
        XCTAssertEqual(info.name, "manual.pack")
        XCTAssertEqual(info.contextTokens, try gen["num_tokens"].int())
        XCTAssertEqual(info.attention, "full")
        XCTAssertNil(info.keepKeys)

        var streamed = ""
        var answered: Result<Answer, Error>?
        session.ask(try gen["prompt"].string(), maxNewTokens: 12, onText: { streamed += $0 }, completion: { answered = $0 })
        session.waitUntilIdle()
        let answer = try XCTUnwrap(answered).get()
        XCTAssertEqual(answer.tokenIds, try run["tokens"].intArray())
        XCTAssertEqual(answer.text, try run["text"].string())
        XCTAssertEqual(streamed, answer.text)
        XCTAssertEqual(answer.prefillMs, 1.0, accuracy: 1e-9)
        XCTAssertEqual(answer.runtime, "replay (PyTorch outputs)")
        XCTAssertEqual(runtime.calls, try run["calls"].list().count)

        // the artifact's file: missing, or truncated (another size than the manifest's bytes), refused in one line
        XCTAssertTrue(thrownMessage(AppError.self) { try directory.artifactURL(artifact) }.contains("but missing"))
        let file = dirURL.appendingPathComponent(artifact.file)
        try Data(repeating: 0, count: 7).write(to: file)
        XCTAssertEqual(thrownMessage(AppError.self) { try directory.artifactURL(artifact) },
                       "\(artifact.file) has 7 bytes, the manifest says \(try XCTUnwrap(artifact.bytes)); copy it again")
        try Data(repeating: 0, count: Int(try XCTUnwrap(artifact.bytes))).write(to: file)
        XCTAssertEqual(try directory.artifactURL(artifact), file)

        // a damaged pack is refused with the core's one-line message
        var foreign = try Golden.bytes("qa_pack.safetensors")
        foreign[foreign.count - 3] &+= 1
        let damaged = dirURL.appendingPathComponent("damaged.pack")
        try Data(foreign).write(to: damaged)
        var refused: Result<AttachedPack, Error>?
        session.attach(pack: damaged) { refused = $0 }
        session.waitUntilIdle()
        guard case .failure(let error)? = refused else { return XCTFail("a damaged pack was attached") }
        XCTAssertTrue("\(error)".contains("modified after it was built"), "\(error)")
    }

    func testTheSessionRunsTheAnswersOpeningItIsGiven() throws {
        // QaSession(exactDecode:) as Python's DecoderSession(exact_decode=...): the squeezed goldens' runs (their graph
        // follows 2 keys from any pack: the manifest says so here) with the answer's opening 3 ("greedy") and 0
        // ("greedy-select-decode"); the artifact's own is 14. A value the artifact cannot run is refused at once.
        let dirURL = root.appendingPathComponent("decoder")
        var text = try Golden.text("qa_decoder_manifest.json")
        // (and, as those runs, no unsure steps re-run: exact_below 0)
        for (exported, run) in [("\"follow_keys\": 4,", "\"follow_keys\": 2,"), ("\"follow_min_keep\": 32,", "\"follow_min_keep\": 0,"),
                                ("\"exact_below\": 0.2,", "\"exact_below\": 0,")] {
            let r = try XCTUnwrap(text.range(of: exported))
            text.replaceSubrange(r, with: run)
        }
        try Data(text.utf8).write(to: dirURL.appendingPathComponent("manifest.json"))
        let directory = try DecoderModelDirectory.load(dirURL)
        let artifact = try directory.manifest.pick(format: "onnx", attention: "squeezed")
        XCTAssertEqual(artifact.contract.exactDecode, 14)
        for (kind, opening) in [("greedy", 3), ("greedy-select-decode", 0)] {
            let run = try XCTUnwrap(try gen["runs"].list().first { try $0["kind"].string() == kind && $0["attention"].string() == "squeezed" })
            XCTAssertEqual(try run["exact_decode"].int(), opening)
            let runtime = try GenerationTests.ReplayRuntime(run, manifest: manifest, outputs: try Golden.floatsLE("qa_outputs_f32le.bin.gz"))
            let session = try QaSession(directory: directory, artifact: artifact, runtime: runtime, exactDecode: opening)
            var attached: Result<AttachedPack, Error>?
            session.attach(pack: directory.packs()[1]) { attached = $0 }
            session.waitUntilIdle()
            XCTAssertEqual(try XCTUnwrap(attached).get().keepKeys, try run["keep_keys"].int())
            var answered: Result<Answer, Error>?
            session.ask(try gen["prompt"].string(), maxNewTokens: 12, onText: { _ in }, completion: { answered = $0 })
            session.waitUntilIdle()
            let answer = try XCTUnwrap(answered).get()
            XCTAssertEqual(answer.tokenIds, try run["tokens"].intArray(), kind)
            XCTAssertEqual(answer.text, try run["text"].string(), kind)
            XCTAssertEqual(runtime.calls, try run["calls"].list().count, kind)
            XCTAssertEqual(answer.exactDecodeTokens, opening, kind)
            XCTAssertEqual(answer.rerunTokens, 0, kind)   // exact_below 0 here, as the recorded runs
            XCTAssertEqual(runtime.log.filter { $0.hasPrefix("prefill_exact") }.count, 1 + opening, kind)
        }
        // refused in one line when the session is made
        let full = try directory.manifest.pick(format: "onnx", attention: "full")
        let runtime = GenerationTests.Recorder()
        XCTAssertTrue(thrownMessage(DecoderError.self) {
            try QaSession(directory: directory, artifact: full, runtime: runtime, exactDecode: 2)
        }.hasPrefix("--exact-decode shapes Squeezed Attention's key selection and does nothing with a full-attention artifact"))
        XCTAssertEqual(thrownMessage(DecoderError.self) { try QaSession(directory: directory, artifact: artifact, runtime: runtime, exactDecode: -2) },
                       "--exact-decode must be a whole number of tokens >= 0; got -2")
        XCTAssertNoThrow(try QaSession(directory: directory, artifact: full, runtime: runtime, exactDecode: 0))
    }
}
