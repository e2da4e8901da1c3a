import XCTest
@testable import SqueezeCore

/// The split lookup plan (the .tflite / Core ML export's call sequence) against Python's GenerationLoop._split_step,
/// the goldens SplitGenerationTest.kt reads: a fake runtime replays what the tiny model's stage graphs (run by PyTorch)
/// returned, call by call, and checks every input the Swift loop feeds (sha256: tokens, lengths, the pack's per-layer
/// tensors under the stage names, KeptRows' kept_keys/kept_values/kept_bias, the clustered tables the exact tail's
/// stages read whole, the cache written from earlier stages and steps). hidden/query, which the loop only hands on,
/// must be handed on unchanged (the same values the previous stage returned). The golden's decoder follows 2 keys: each
/// decode step's kept rows include the rows the previous step's follow_weights (ranked on the CPU) pointed to. Its
/// contract opens the answer exactly for one token (exact_decode 1): the first decode step runs the one-token stages
/// decode_exact_<s> (prefill_exact's, no lookup), whose pointer the next decode step follows.
final class SplitGenerationTests: XCTestCase {
    private var gen: JSONPath!
    private var outputs: [Float] = []
    private var pack: ContextPack!
    private var contract: DecoderContract!

    override func setUpWithError() throws {
        gen = try Golden.json("qa_split_generation.json.gz")
        outputs = try Golden.floatsLE("qa_split_outputs_f32le.bin.gz")
        pack = try ContextPack.read(try Golden.bytes("qa_pack.safetensors"), source: "qa_pack.safetensors")
        contract = try DecoderContract.parse(gen["contract"])
    }

    final class ReplayStages: DecoderRuntime {
        let name = "replay (PyTorch stage outputs)"
        var calls = 0
        var methods: [String] = []
        var feeds: [[String: DecoderTensor]] = []
        private let gen: JSONPath
        private let outputs: [Float]
        private let forwarded: Set<String>
        private var handedOut: [String: Float32Tensor] = [:]
        private let checkInputs: Bool
        private let dropped: Set<String>

        /// checkInputs false: the inputs are not compared with Python's (a loop run another way); dropped: outputs
        /// left out of every answer.
        init(_ gen: JSONPath, outputs: [Float], checkInputs: Bool = true, dropped: Set<String> = []) throws {
            self.gen = gen
            self.outputs = outputs
            self.checkInputs = checkInputs
            self.dropped = dropped
            forwarded = Set(try gen["forwarded"].list().map { try $0.string() })
        }

        func run(method: String, inputs: [String: DecoderTensor]) throws -> [String: DecoderTensor] {
            let recorded = try gen["calls"].list()
            guard calls < recorded.count else {
                XCTFail("call \(calls + 1) (\(method)) was not made by Python")
                throw DecoderError("call \(calls + 1) was not made by Python")
            }
            let call = recorded[calls]
            calls += 1
            methods.append(method)
            feeds.append(inputs)
            XCTAssertEqual(method, try call["method"].string(), "call \(calls)")
            let declared = Set(try call["declared"].list().map { try $0.string() })
            XCTAssertTrue(declared.isSubset(of: Set(inputs.keys)), "call \(calls) (\(method)): needs \(declared), fed \(inputs.keys)")
            let expected = try call["inputs"].obj()
            XCTAssertEqual(Set(expected.keys), Set(inputs.keys), "call \(calls) (\(method)): input names")
            for name in expected.keys where checkInputs {
                guard let t = inputs[name] else { continue }
                let e = JSONPath(expected[name]!, path: name)
                XCTAssertEqual(t.shape, try e["shape"].intArray(), "call \(calls) (\(method)): \(name)")
                XCTAssertEqual(ContextPackTests.dtypeOf(t), try e["dtype"].string(), "call \(calls) (\(method)): \(name)")
                if forwarded.contains(name), case .float32(let f) = t {
                    XCTAssertEqual(handedOut[name], f, "call \(calls) (\(method)): \(name) is not the previous stage's output")
                } else {
                    XCTAssertEqual(ContextPackTests.sha256(t), try e["sha256"].string(), "call \(calls) (\(method)): input \(name)")
                }
            }
            var out: [String: DecoderTensor] = [:]
            let recordedOut = try call["outputs"].obj()
            for name in recordedOut.keys where !dropped.contains(name) {
                let o = JSONPath(recordedOut[name]!, path: name)
                let shape = try o["shape"].intArray()
                let t: Float32Tensor
                if try o.has("offset") {
                    let at = try o["offset"].int()
                    t = try Float32Tensor(Array(outputs[at..<(at + (try o["count"].int()))]), shape: shape)
                } else {   // handed on only: any values, checked by identity of content at the next call
                    t = try Float32Tensor((0..<shape.reduce(1, *)).map { Float($0 % 97) * 0.5 + Float(calls) }, shape: shape)
                    handedOut[name] = t
                }
                out[name] = .float32(t)
            }
            return out
        }
    }

    func testTheSplitPlanGivesPythonsCallsAndTokens() throws {
        XCTAssertEqual(contract.lookupPlan, "split")
        let promptIds = try gen["prompt_ids"].intArray()
        XCTAssertTrue(contract.exactTail > 0 && contract.exactTail < promptIds.count, "the golden's tail is shorter than its question")
        let runtime = try ReplayStages(gen, outputs: outputs)
        var now: Int64 = 0
        let loop = try GenerationLoop(runtime: runtime, contract: contract, pack: pack,
                                      contextInputs: try PackLayout.decoderContextInputs(pack, shapes: contract.shapes, attention: "squeezed"),
                                      clockNanos: { defer { now += 1_000_000 }; return now })
        XCTAssertEqual(loop.keepKeys, try gen["keep_keys"].int())
        XCTAssertEqual([contract.followKeys, contract.followMinKeep], [2, 0])
        XCTAssertEqual(loop.follow, 2)
        // the answer's opening: one decode step, on the artifact's one-token stages decode_exact_<s>
        XCTAssertEqual(contract.exactDecode, 1)
        XCTAssertTrue(contract.methodNames.contains("decode_exact_0"))
        XCTAssertEqual([loop.exactDecode, contract.exactWidth], [1, 4])
        XCTAssertEqual(loop.exactMethod, "decode_exact")
        let out = try loop.greedy(promptIds, maxNewTokens: try gen["max_new_tokens"].int())
        XCTAssertEqual(out.tokens, try gen["tokens"].intArray())
        XCTAssertEqual(runtime.calls, try gen["calls"].list().count)
        // prefill_0..L (the tokens before the exact tail), prefill_exact_0..L (the tail, no lookup), decode_exact_0..L
        // (the answer's opening: one token, no lookup), decode_0..L twice
        let stages = (0...pack.layers).map { $0 }
        let decode = stages.map { "decode_\($0)" }
        XCTAssertEqual(runtime.methods, stages.map { "prefill_\($0)" } + stages.map { "prefill_exact_\($0)" } +
                       stages.map { "decode_exact_\($0)" } + decode + decode)
        XCTAssertEqual(out.decodeSteps, 3)
        XCTAssertEqual(out.exactSteps, 1)
        // one CPU lookup per layer for the selecting prefill and each selecting decode step, and one pointer per layer
        // of every step (the exact tail's and the opening's too), each between two clock reads
        XCTAssertEqual(out.lookupNanos, Int64((3 + 5) * pack.layers) * 1_000_000)
        // the opening's step: one token at the decode position, and the clustered tables whole (no kept rows)
        let opening = try XCTUnwrap(runtime.methods.firstIndex(of: "decode_exact_0"))
        XCTAssertEqual(runtime.feeds[opening]["tokens"]?.shape, [1])
        XCTAssertEqual(runtime.feeds[opening]["cache_len"], .int64(try Int64Tensor([Int64(promptIds.count)], shape: [1])))
        let exactStage = try XCTUnwrap(runtime.methods.firstIndex(of: "decode_exact_1"))
        XCTAssertNil(runtime.feeds[exactStage]["kept_keys"])
        XCTAssertEqual(runtime.feeds[exactStage]["clustered_keys"]?.shape.count, 3)
        // the prefill selects keep_keys; a decode step keep_keys - 2, plus the followed rows the selection did not keep
        let keep = try gen["keep_keys"].int()
        XCTAssertEqual(try usedSlots(runtime, "prefill_1"), [keep, keep])
        XCTAssertTrue(try usedSlots(runtime, "decode_2").allSatisfy { (keep - 2)...keep ~= $0 })
        // the first decode step follows the rows the opening's follow_weights pointed to
        XCTAssertTrue(try usedSlots(runtime, "decode_1").contains { $0 > keep - 2 }, "a decode step attends followed rows")
    }

    /// Forwards the split loop's calls to the replay, where an artifact without decode_exact stages runs the answer's
    /// opening as prefill_exact_<s> padded to its width: such a call (one real token) is checked to be padded and
    /// replayed as Python's decode_exact_<s> call with the padding dropped, so every other input must be Python's.
    final class PaddedOpening: DecoderRuntime {
        let name = "padded opening"
        let inner: ReplayStages
        let width: Int
        var methods: [String] = []
        init(_ inner: ReplayStages, width: Int) { (self.inner, self.width) = (inner, width) }
        func run(method: String, inputs: [String: DecoderTensor]) throws -> [String: DecoderTensor] {
            methods.append(method)
            guard method.hasPrefix("prefill_exact_"), case .int64(let n)? = inputs["n_tokens"], n.data == [1] else {
                return try inner.run(method: method, inputs: inputs)
            }
            var feed = inputs
            if case .int64(let tokens)? = inputs["tokens"] {  // stage 0
                XCTAssertEqual(tokens.shape, [width], "\(method): padded to prefill_exact's width")
                XCTAssertTrue(tokens.data.dropFirst().allSatisfy { $0 == 0 }, "\(method): padded with 0")
                feed["tokens"] = .int64(try Int64Tensor(Array(tokens.data.prefix(1)), shape: [1]))
            }
            return try inner.run(method: "decode_exact_" + method.dropFirst("prefill_exact_".count), inputs: feed)
        }
    }

    /// Answers each stage call with the outputs Python's first call of that stage graph returned, whatever it is fed
    /// (a call sequence Python's run did not make: only the methods are checked).
    final class ByName: DecoderRuntime {
        let name = "stage outputs by name"
        var methods: [String] = []
        private let calls: [JSONPath]
        private let outputs: [Float]
        init(_ gen: JSONPath, outputs: [Float]) throws { (calls, self.outputs) = (try gen["calls"].list(), outputs) }
        func run(method: String, inputs: [String: DecoderTensor]) throws -> [String: DecoderTensor] {
            methods.append(method)
            guard let call = try calls.first(where: { try $0["method"].string() == method }) else {
                throw DecoderError("Python's run made no \(method) call")
            }
            var out: [String: DecoderTensor] = [:]
            let recorded = try call["outputs"].obj()
            for name in recorded.keys {
                let o = JSONPath(recorded[name]!, path: name)
                let shape = try o["shape"].intArray()
                let at = try o.has("offset") ? try o["offset"].int() : nil
                let values = try at.map { Array(outputs[$0..<($0 + (try o["count"].int()))]) } ?? [Float](repeating: 0.5, count: shape.reduce(1, *))
                out[name] = .float32(try Float32Tensor(values, shape: shape))
            }
            return out
        }
    }

    func testWithoutDecodeExactStagesTheOpeningRunsPrefillExactPadded() throws {
        // Python's GenerationLoop.exact_method: the split plan's decode_exact where the artifact lists decode_exact_0,
        // else prefill_exact (static width exact_tail: the one token padded); fed and ranked the same way
        let without = try DecoderContract(
            attention: contract.attention, state: contract.state, kvBudget: contract.kvBudget, shapes: contract.shapes,
            lookupPlan: contract.lookupPlan, prefillRows: contract.prefillRows, prefillTail: contract.prefillTail,
            tokenRanges: contract.tokenRanges, exactTail: contract.exactTail,
            inputShapes: contract.inputShapes.filter { !$0.key.hasPrefix("decode_exact_") }, fixedInputs: contract.fixedInputs,
            followKeys: contract.followKeys, followMinKeep: contract.followMinKeep, exactDecode: contract.exactDecode,
            methodNames: contract.methodNames.filter { !$0.hasPrefix("decode_exact_") })
        XCTAssertFalse(without.methodNames.contains("decode_exact_0"))
        let runtime = PaddedOpening(try ReplayStages(gen, outputs: outputs), width: contract.exactTail)
        let loop = try GenerationLoop(runtime: runtime, contract: without, pack: pack,
                                      contextInputs: try PackLayout.decoderContextInputs(pack, shapes: without.shapes, attention: "squeezed"))
        XCTAssertEqual(loop.exactMethod, "prefill_exact")
        let out = try loop.greedy(try gen["prompt_ids"].intArray(), maxNewTokens: try gen["max_new_tokens"].int())
        XCTAssertEqual(out.tokens, try gen["tokens"].intArray())
        XCTAssertEqual(runtime.inner.calls, try gen["calls"].list().count)
        let stages = (0...pack.layers).map { $0 }
        let exact = stages.map { "prefill_exact_\($0)" }, decode = stages.map { "decode_\($0)" }
        XCTAssertEqual(runtime.methods, stages.map { "prefill_\($0)" } + exact + exact + decode + decode)
        // the caller's opening 0 (withExactDecode): every answer step selects, as the goldens' in-graph greedy-select-decode run
        let selecting = try ByName(gen, outputs: outputs)
        _ = try GenerationLoop(runtime: selecting, contract: try contract.withExactDecode(0), pack: pack,
                               contextInputs: try PackLayout.decoderContextInputs(pack, shapes: contract.shapes, attention: "squeezed"))
            .greedy(try gen["prompt_ids"].intArray(), maxNewTokens: 3)
        XCTAssertEqual(selecting.methods, stages.map { "prefill_\($0)" } + exact + decode + decode)
    }

    /// Used slots per KV head (0 in kept_bias) of the first call of `method`.
    private func usedSlots(_ runtime: ReplayStages, _ method: String) throws -> [Int] {
        let at = try XCTUnwrap(runtime.methods.firstIndex(of: method))
        guard case .float32(let bias)? = runtime.feeds[at]["kept_bias"] else { throw DecoderError("no kept_bias for \(method)") }
        let maxKeep = contract.shapes.maxKeep, width = bias.shape[1]
        return (0..<bias.shape[0]).map { h in bias.data[(h * width)..<(h * width + maxKeep)].filter { $0 == 0 }.count }
    }

    func testDocumentQaRunsTheSplitPlanReportsTheLookupAndStopsWhenCancelled() throws {
        // as DocumentQa.generate(cancelled = ...) and Answer.lookupMs in the Kotlin core (the Android Q&A screen's Stop and
        // its "CPU lookup ms"); the Swift answer had neither
        let tokenizer = try ByteLevelBpeTokenizer.parse(try Golden.bytes("qa_tokenizer_tiny.json"))
        let manifest = try DecoderManifest.parse(try Golden.bytes("qa_decoder_manifest.json"))
        let runtime = try ReplayStages(gen, outputs: outputs)
        var now: Int64 = 0
        let qa = try DocumentQa(runtime: runtime, contract: contract, tokenizer: tokenizer, tokenizerInfo: manifest.tokenizer,
                                pack: pack, clockNanos: { defer { now += 1_000_000 }; return now })
        XCTAssertEqual(try qa.promptIds("ab nan"), try gen["prompt_ids"].intArray())
        let first = tokenizer.decode(Array(try gen["tokens"].intArray().prefix(1)))
        var streamed = ""
        // cancelled after the first token: no decode step runs
        let answer = try qa.generate("ab nan", maxNewTokens: 2, onText: { streamed += $0 }, cancelled: { true })
        XCTAssertEqual(answer.text, first)
        XCTAssertEqual(streamed, first)
        XCTAssertTrue(answer.cancelled)
        XCTAssertEqual(runtime.calls, 2 * (pack.layers + 1)) // the question's two prefills, no decode step
        XCTAssertEqual(answer.decodeTokens, 0)
        // one CPU lookup per layer (the selecting prefill) and one pointer per layer of both prompt calls, 1 ms each
        XCTAssertEqual(answer.lookupMs, Double((1 + 2) * pack.layers), accuracy: 1e-9)
        let whole = try DocumentQa(runtime: try ReplayStages(gen, outputs: outputs), contract: contract, tokenizer: tokenizer,
                                   tokenizerInfo: manifest.tokenizer, pack: pack)
            .generate("ab nan", maxNewTokens: try gen["max_new_tokens"].int())
        XCTAssertFalse(whole.cancelled)
        XCTAssertEqual(whole.tokenIds, try gen["tokens"].intArray())
    }

    func testGatedFollowedKeysLeaveTheLookupAsWithout() throws {
        // follow_min_keep above the pack's keep_keys: every decode step selects keep_keys, follows nothing, and the
        // stages' follow_weights are not read
        let gated = try contract.withFollowKeys(2, minKeep: 26)
        let runtime = try ReplayStages(gen, outputs: outputs, checkInputs: false, dropped: ["follow_weights"])
        let loop = try GenerationLoop(runtime: runtime, contract: gated, pack: pack,
                                      contextInputs: try PackLayout.decoderContextInputs(pack, shapes: gated.shapes, attention: "squeezed"))
        XCTAssertEqual(loop.follow, 0)
        _ = try loop.greedy(try gen["prompt_ids"].intArray(), maxNewTokens: try gen["max_new_tokens"].int())
        let keep = try gen["keep_keys"].int()
        XCTAssertEqual(try usedSlots(runtime, "decode_1"), [keep, keep])
        XCTAssertEqual(try usedSlots(runtime, "decode_2"), [keep, keep])
        // following, a stage without follow_weights is named in one line
        let following = try GenerationLoop(runtime: try ReplayStages(gen, outputs: outputs, checkInputs: false, dropped: ["follow_weights"]),
                                           contract: contract, pack: pack,
                                           contextInputs: try PackLayout.decoderContextInputs(pack, shapes: contract.shapes, attention: "squeezed"))
        XCTAssertEqual(thrownMessage(DecoderError.self) { try following.greedy(try self.gen["prompt_ids"].intArray(), maxNewTokens: 2) },
                       "the runtime returned no float32 \"follow_weights\" output for prefill_1")
    }

    func testAStageThatReturnsNoScoresIsNamedInOneLine() throws {
        final class Broken: DecoderRuntime {
            let name = "broken"
            func run(method: String, inputs: [String: DecoderTensor]) throws -> [String: DecoderTensor] {
                ["logits": .float32(try Float32Tensor([0], shape: [1]))]
            }
        }
        let loop = try GenerationLoop(runtime: Broken(), contract: contract, pack: pack,
                                      contextInputs: try PackLayout.decoderContextInputs(pack, shapes: contract.shapes, attention: "squeezed"))
        let m = thrownMessage(DecoderError.self) { _ = try loop.greedy(try gen["prompt_ids"].intArray(), maxNewTokens: 1) }
        XCTAssertTrue(m.contains("output for prefill_0") && !m.contains("\n"), m)
    }
}
