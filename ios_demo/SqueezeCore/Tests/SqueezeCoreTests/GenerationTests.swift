import XCTest
@testable import SqueezeCore

/// The generation loop against Python's GenerationLoop (the goldens GenerationTest.kt reads): a fake runtime replays,
/// call by call, the outputs the exported decoder graph (run by PyTorch, tiny real-format Llama, real pack) gave
/// Python, and checks that every input the Swift loop feeds is byte-identical to Python's (sha256 of tokens, lengths,
/// keep_keys, the followed rows fed back from the previous call's follow_out, and the cache written from earlier
/// steps). Tokens, call count and stop handling must be exact.
final class GenerationTests: XCTestCase {
    private var gen: JSONPath!
    private var outputs: [Float] = []
    private var pack: ContextPack!
    private var shapes: DecoderShapes!
    private var manifest: DecoderManifest!

    override func setUpWithError() throws {
        gen = try Golden.json("qa_generation.json.gz")
        outputs = try Golden.floatsLE("qa_outputs_f32le.bin.gz")
        pack = try ContextPack.read(try Golden.bytes("qa_pack.safetensors"), source: "qa_pack.safetensors")
        shapes = try DecoderShapes.parse(gen["shapes"])
        manifest = try DecoderManifest.parse(try Golden.bytes("qa_decoder_manifest.json"))
    }

    /// Replays one recorded run; fails on any input that differs from what Python fed at that call.
    final class ReplayRuntime: DecoderRuntime {
        let name = "replay (PyTorch outputs)"
        var calls = 0
        /// Per call: "method" or "method branch=k" (the graph selector fed, as reference.json writes it)
        var log: [String] = []
        private let run: JSONPath
        private let outputs: [Float]
        private let artifact: DecoderArtifact
        private let checkInputs: Bool
        private let followKeys: Int
        private let followOutAsFloat: Bool

        /// followOutAsFloat: hand follow_out back as float32, as a runtime that converts every output does (Core ML);
        /// else int64, as the graph returns it (the golden stores every output as float32).
        init(_ run: JSONPath, manifest: DecoderManifest, outputs: [Float], checkInputs: Bool = true,
             followOutAsFloat: Bool = false) throws {
            self.run = run
            self.outputs = outputs
            self.checkInputs = checkInputs
            self.followOutAsFloat = followOutAsFloat
            artifact = try manifest.pick(format: "onnx", attention: run["attention"].string())
            followKeys = try run["follow_keys"].int()
        }

        func run(method: String, inputs: [String: DecoderTensor]) throws -> [String: DecoderTensor] {
            let recorded = try run["calls"].list()
            guard calls < recorded.count else {
                XCTFail("call \(calls + 1) was not made by Python")
                throw DecoderError("call \(calls + 1) was not made by Python")
            }
            let call = recorded[calls]
            calls += 1
            XCTAssertEqual(method, try call["method"].string(), "call \(calls)")
            log.append(GenerationTests.branchCall(method, inputs))
            // exactly the inputs the exported method declares (names, shapes, dtypes), as the manifest lists them
            let declared = try XCTUnwrap(artifact.methods[method]).inputs
            XCTAssertEqual(Set(inputs.keys), Set(declared.map(\.name)), "call \(calls): input names")
            for d in declared {
                guard let t = inputs[d.name] else { continue }
                if d.name == "tokens", let range = artifact.contract.tokenRanges[method] {  // a dynamic axis
                    XCTAssertTrue(t.shape.count == 1 && range.contains(t.shape[0]), "call \(calls): tokens \(t.shape) not in \(range)")
                } else if d.name.hasPrefix("follow_rows_") {  // the manifest's graph follows 4 keys, the run's graph its own
                    XCTAssertEqual(t.shape, [d.shape[0], followKeys], "call \(calls): \(d.name)")
                } else {
                    XCTAssertEqual(t.shape, d.shape, "call \(calls): \(d.name)")
                }
                XCTAssertEqual(ContextPackTests.dtypeOf(t), d.dtype, "call \(calls): \(d.name)")
            }
            if checkInputs {
                let expected = try call["inputs"].obj()
                for name in expected.keys {
                    guard let t = inputs[name] else {
                        XCTFail("call \(calls): input \(name) missing")
                        continue
                    }
                    let e = JSONPath(expected[name]!, path: name)
                    XCTAssertEqual(t.shape, try e["shape"].intArray(), "call \(calls): \(name)")
                    XCTAssertEqual(ContextPackTests.dtypeOf(t), try e["dtype"].string(), "call \(calls): \(name)")
                    XCTAssertEqual(ContextPackTests.sha256(t), try e["sha256"].string(), "call \(calls) (\(method)): input \(name)")
                }
                XCTAssertEqual(inputs.count, expected.count + (try run["context_inputs"].obj().count), "call \(calls): inputs")
            }
            var out: [String: DecoderTensor] = [:]
            let recordedOut = try call["outputs"].obj()
            for name in recordedOut.keys {
                let o = JSONPath(recordedOut[name]!, path: name)
                let at = try o["offset"].int(), count = try o["count"].int()
                let values = Array(outputs[at..<(at + count)]), shape = try o["shape"].intArray()
                if name == "follow_out" && !followOutAsFloat {
                    out[name] = .int64(try Int64Tensor(values.map { Int64($0) }, shape: shape))
                } else {
                    out[name] = .float32(try Float32Tensor(values, shape: shape))
                }
            }
            return out
        }
    }

    /// The runtime contract of the real export's ONNX artifact for the run's attention, with the run's exact tail (the
    /// golden's "greedy-short-tail" run gave Python's loop a shorter one than the artifact's), answer's opening (the
    /// squeezed runs' exact_decode 3, "greedy-select-decode" 0; the artifact's is 14) and followed keys (the runs' graph
    /// follows 2 keys from any keep_keys; "greedy-follow-gated" gates them off: follow_min_keep 10^6).
    private func contract(_ run: JSONPath) throws -> DecoderContract {
        let c = try manifest.pick(format: "onnx", attention: run["attention"].string()).contract
        let exact = try run["exact_tail"].int(), opening = try run["exact_decode"].int()
        let follow = try run["follow_keys"].int(), minKeep = try run["follow_min_keep"].int()
        let shorter = try (exact == c.exactTail ? c : try c.withExactTail(exact)).withExactHead(try run["exact_head"].int())
        let tail = opening == c.exactDecode ? shorter : try shorter.withExactDecode(opening)
        let below = try run["exact_below"].double()   // "greedy-unsure" re-runs unsure steps; the others none
        let unsure = below == tail.exactBelow ? tail : try tail.withExactBelow(below)
        return follow == c.followKeys && minKeep == c.followMinKeep ? unsure : try unsure.withFollowKeys(follow, minKeep: minKeep)
    }

    /// "method" or "method branch=k": the call and the graph selector it fed.
    static func branchCall(_ method: String, _ inputs: [String: DecoderTensor]) -> String {
        guard case .int64(let branch)? = inputs["branch"] else { return method }
        return "\(method) branch=\(branch.data.map(String.init).joined(separator: ","))"
    }

    private func recordedRun(kind: String, attention: String) throws -> JSONPath {
        try XCTUnwrap(try gen["runs"].list().first { try $0["kind"].string() == kind && $0["attention"].string() == attention })
    }

    func testPromptChunksAreCutAsPythonCutsThem() {
        func chunks(_ n: Int, _ rows: Int, _ tail: Int) -> [[Int]] {
            GenerationLoop.prefillChunks(tokens: n, rows: rows, tail: tail).map { [$0.0, $0.1] }
        }
        // the values test_sa_lookup.py asserts for squeezed_attention.settings.prefill_chunks
        XCTAssertEqual(chunks(37, 16, 0), [[0, 5], [5, 21], [21, 37]])
        XCTAssertEqual(chunks(16, 16, 0), [[0, 16]])
        XCTAssertEqual(chunks(3, 1, 0), [[0, 1], [1, 2], [2, 3]])
        XCTAssertEqual(chunks(5, 0, 2), [[0, 3], [3, 4], [4, 5]])
        XCTAssertEqual(chunks(3, 0, 16), [[0, 1], [1, 2], [2, 3]])
        XCTAssertEqual(chunks(10, 3, 4), [[0, 3], [3, 6], [6, 7], [7, 8], [8, 9], [9, 10]])
        XCTAssertEqual(chunks(4, 0, 0), [[0, 4]])
    }

    /// Records "method:n_tokens@cache_len" per call; answers with one-hot logits.
    final class Recorder: DecoderRuntime {
        let name = "recorder"
        var calls: [String] = []
        func run(method: String, inputs: [String: DecoderTensor]) throws -> [String: DecoderTensor] {
            guard case .int64(let n)? = inputs["n_tokens"], case .int64(let at)? = inputs["cache_len"] else {
                throw DecoderError("no n_tokens / cache_len")
            }
            calls.append("\(method):\(n.data[0])@\(at.data[0])")
            var logits = [Float](repeating: 0, count: 8)
            logits[calls.count % 8] = 1
            return ["logits": .float32(try Float32Tensor(logits, shape: [8]))]
        }
    }

    func testAPackThatKeepsMoreKeysThanTheArtifactGathersIsRefused() throws {
        // Python's pack_arrays.artifact_keep_keys (GenerationTest.kt the same): the keep count is the pack's own (its
        // budget less its centroid bytes); an artifact that gathers fewer refuses the pack, never caps it
        let context = try PackLayout.decoderContextInputs(pack, shapes: shapes, attention: "squeezed")
        let contract = try DecoderContract(attention: "squeezed", state: "buffer", kvBudget: 0.3, shapes: shapes)
        let keep = try XCTUnwrap(try GenerationLoop(runtime: Recorder(), contract: contract, pack: pack,
                                                    contextInputs: context).keepKeys)
        XCTAssertTrue(keep >= 2 && keep <= shapes.maxKeep, "\(keep)")
        var fewer: DecoderShapes = shapes
        fewer.maxKeep = keep - 1
        let small = try DecoderContract(attention: "squeezed", state: "buffer", kvBudget: 0.3, shapes: fewer)
        let message = thrownMessage(DecoderError.self) {
            try GenerationLoop(runtime: Recorder(), contract: small, pack: pack, contextInputs: context)
        }
        XCTAssertTrue(message.contains("keeps \(keep) keys per head but the decoder gathers at most \(keep - 1)"), message)
        // a graph that follows as many keys as the pack keeps would select none (Python's GenerationLoop refuses it)
        let all = thrownMessage(DecoderError.self) {
            try GenerationLoop(runtime: Recorder(), contract: try contract.withFollowKeys(keep, minKeep: 0), pack: pack,
                               contextInputs: context)
        }
        XCTAssertTrue(all.hasPrefix("this artifact follows \(keep) keys per decode step but the pack keeps only \(keep) keys"), all)
        XCTAssertEqual(try GenerationLoop(runtime: Recorder(), contract: try contract.withFollowKeys(keep - 1, minKeep: 0),
                                          pack: pack, contextInputs: context).follow, keep - 1)
        XCTAssertEqual(try GenerationLoop(runtime: Recorder(), contract: try contract.withFollowKeys(keep, minKeep: keep + 1),
                                          pack: pack, contextInputs: context).follow, 0)  // gated: none
    }

    func testAPromptTailRunsAsDecodeStepsAfterOnePrefill() throws {
        // the manifest's prefill_tail: the head of the question is one prefill call, each tail token a decode step
        let context = try PackLayout.decoderContextInputs(pack, shapes: shapes, attention: "squeezed")
        let recorder = Recorder()
        let tail = try DecoderContract(attention: "squeezed", state: "buffer", kvBudget: 0.3, shapes: shapes, prefillTail: 4)
        _ = try GenerationLoop(runtime: recorder, contract: tail, pack: pack, contextInputs: context).prompt(Array(1...10), cache: nil)
        XCTAssertEqual(recorder.calls, ["prefill:6@0", "decode:1@6", "decode:1@7", "decode:1@8", "decode:1@9"])
        recorder.calls = []
        let one = try DecoderContract(attention: "squeezed", state: "buffer", kvBudget: 0.3, shapes: shapes)
        _ = try GenerationLoop(runtime: recorder, contract: one, pack: pack, contextInputs: context).prompt(Array(1...10), cache: nil)
        XCTAssertEqual(recorder.calls, ["prefill:10@0"])  // no tail (the export's default): one selection, one call
        XCTAssertThrowsError(try DecoderContract(attention: "squeezed", state: "buffer", kvBudget: 0.3, shapes: shapes, prefillTail: -1))
    }

    /// Records each call as "method:ids@cache_len/width" (the ids fed before the padding; the tests' ids are 1..n, never
    /// 0) and answers with logits whose argmax is the call's number (mod 8): the prompt returns the last call's logits.
    final class CallRecorder: DecoderRuntime {
        let name = "recorder"
        var calls: [String] = []
        var feeds: [[String: DecoderTensor]] = []
        func run(method: String, inputs: [String: DecoderTensor]) throws -> [String: DecoderTensor] {
            guard case .int64(let tokens)? = inputs["tokens"], case .int64(let n)? = inputs["n_tokens"],
                  case .int64(let at)? = inputs["cache_len"] else {
                throw DecoderError("no tokens / n_tokens / cache_len")
            }
            let count = Int(n.data[0])
            XCTAssertEqual(tokens.shape, [tokens.data.count])
            XCTAssertTrue(tokens.data.dropFirst(count).allSatisfy { $0 == 0 }, "\(method): padded with 0")
            calls.append("\(method):\(tokens.data.prefix(count).map(String.init).joined(separator: ","))@\(at.data[0])/\(tokens.data.count)")
            feeds.append(inputs)
            var logits = [Float](repeating: 0, count: 8)
            logits[calls.count % 8] = 1
            return ["logits": .float32(try Float32Tensor(logits, shape: [8]))]
        }
    }

    /// The calls GenerationLoop.prompt makes for a question of ids 1...n under a squeezed "buffer" contract.
    private func promptCalls(_ n: Int, rows: Int = 0, tail: Int = 0, exact: Int = 0,
                             ranges: [String: ClosedRange<Int>] = [:], head: Int = 0) throws -> [String] {
        let recorder = CallRecorder()
        let contract = try DecoderContract(attention: "squeezed", state: "buffer", kvBudget: 0.3, shapes: shapes, prefillRows: rows,
                                           prefillTail: tail, tokenRanges: ranges, exactTail: exact, exactHead: head)
        let logits = try GenerationLoop(runtime: recorder, contract: contract, pack: pack,
                                        contextInputs: try PackLayout.decoderContextInputs(pack, shapes: shapes, attention: "squeezed"))
            .prompt(Array(1...n), cache: nil)
        XCTAssertEqual(GenerationLoop.argmax(logits), recorder.calls.count % 8, "the last call's logits")
        return recorder.calls
    }

    func testAnExactTailRunsLastAsOnePrefillExactCall() throws {
        // the sequences Python's GenerationLoop.prompt makes (exact_start, prefill_chunks, token_width)
        let p = shapes.maxPrompt
        // exact_tail 0 (manifests before it): as before, selection chunks over the whole question
        XCTAssertEqual(try promptCalls(10, rows: 4, tail: 2), ["prefill:1,2,3,4@0/\(p)", "prefill:5,6,7,8@4/\(p)", "decode:9@8/1", "decode:10@9/1"])
        XCTAssertEqual(try promptCalls(10), ["prefill:1,2,3,4,5,6,7,8,9,10@0/\(p)"])
        // E < the question: its tokens before the tail in selection chunks, then the tail (padded to exact_tail)
        XCTAssertEqual(try promptCalls(10, exact: 3), ["prefill:1,2,3,4,5,6,7@0/\(p)", "prefill_exact:8,9,10@7/3"])
        XCTAssertEqual(try promptCalls(10, rows: 4, tail: 2, exact: 3),
                       ["decode:1@0/1", "prefill:2,3,4,5@1/\(p)", "decode:6@5/1", "decode:7@6/1", "prefill_exact:8,9,10@7/3"])
        XCTAssertEqual(try promptCalls(10, rows: 3, exact: 4), ["prefill:1,2,3@0/\(p)", "prefill:4,5,6@3/\(p)", "prefill_exact:7,8,9,10@6/4"])
        XCTAssertEqual(try promptCalls(5, tail: 2, exact: 3), ["decode:1@0/1", "decode:2@1/1", "prefill_exact:3,4,5@2/3"])
        // one 1-token chunk before the tail is a prefill call (a decode step only among several chunks)
        XCTAssertEqual(try promptCalls(4, exact: 3), ["prefill:1@0/\(p)", "prefill_exact:2,3,4@1/3"])
        XCTAssertEqual(try promptCalls(4, tail: 1, exact: 3), ["prefill:1@0/\(p)", "prefill_exact:2,3,4@1/3"])
        XCTAssertEqual(try promptCalls(4, rows: 1, exact: 3), ["prefill:1@0/\(p)", "prefill_exact:2,3,4@1/3"])
        XCTAssertEqual(try promptCalls(10, rows: 4, tail: 2, exact: 9), ["prefill:1@0/\(p)", "prefill_exact:2,3,4,5,6,7,8,9,10@1/9"])
        // E >= the question: the whole question is one prefill_exact call at cache_len 0
        XCTAssertEqual(try promptCalls(10, rows: 4, tail: 2, exact: 16), ["prefill_exact:1,2,3,4,5,6,7,8,9,10@0/16"])
        XCTAssertEqual(try promptCalls(10, rows: 4, tail: 2, exact: 10), ["prefill_exact:1,2,3,4,5,6,7,8,9,10@0/10"])
        // dynamic token axes in the manifest: the ids at their own length (raised to the range's minimum)
        let dynamic = ["prefill": 1...p, "prefill_exact": 1...8]
        XCTAssertEqual(try promptCalls(10, exact: 8, ranges: dynamic), ["prefill:1,2@0/2", "prefill_exact:3,4,5,6,7,8,9,10@2/8"])
        XCTAssertEqual(try promptCalls(5, exact: 8, ranges: dynamic), ["prefill_exact:1,2,3,4,5@0/5"])
        XCTAssertEqual(try promptCalls(7, exact: 1, ranges: ["prefill_exact": 2...4]), ["prefill:1,2,3,4,5,6@0/\(p)", "prefill_exact:7@6/2"])
    }

    func testAnExactHeadRunsFirstInPiecesOfTheMethodsWidth() throws {
        // (head end, tail start): the values test_session50_exact_head.py asserts for settings.exact_span
        let spans = [(100, 16, 32), (40, 16, 32), (10, 16, 32), (100, 0, 32), (100, 16, 0)].map {
            GenerationLoop.exactSpan(tokens: $0.0, exactHead: $0.1, exactTail: $0.2) }
        XCTAssertEqual(spans.map { [$0.0, $0.1] }, [[16, 68], [16, 16], [10, 10], [0, 68], [16, 100]])
        let p = shapes.maxPrompt
        // the head in calls of at most the method's width (exact_tail 3), a selecting prefill, then the tail
        XCTAssertEqual(try promptCalls(12, exact: 3, head: 5),
                       ["prefill_exact:1,2,3@0/3", "prefill_exact:4,5@3/3", "prefill:6,7,8,9@5/\(p)", "prefill_exact:10,11,12@9/3"])
        XCTAssertEqual(try promptCalls(10, rows: 4, tail: 2, exact: 3, head: 2),
                       ["prefill_exact:1,2@0/3", "prefill:3,4,5@2/\(p)", "decode:6@5/1", "decode:7@6/1", "prefill_exact:8,9,10@7/3"])
        // head and tail leave no row to select: one exact run over the question, in pieces of the width
        XCTAssertEqual(try promptCalls(7, exact: 3, head: 5), ["prefill_exact:1,2,3@0/3", "prefill_exact:4,5,6@3/3", "prefill_exact:7@6/3"])
        XCTAssertEqual(try promptCalls(5, exact: 8, ranges: ["prefill": 1...p, "prefill_exact": 1...8], head: 2),
                       ["prefill_exact:1,2,3,4,5@0/5"])
        // an in-graph export's prefill_exact takes up to max_prompt tokens (its dynamic axis): a head wider than the
        // tail is one call, and head and tail that cover the question one call over all of it
        let wide: [String: ClosedRange<Int>] = ["prefill": 1...p, "prefill_exact": 1...p]
        XCTAssertEqual(try promptCalls(12, exact: 3, ranges: wide, head: 5),
                       ["prefill_exact:1,2,3,4,5@0/5", "prefill:6,7,8,9@5/4", "prefill_exact:10,11,12@9/3"])
        XCTAssertEqual(try promptCalls(7, exact: 3, ranges: wide, head: 5), ["prefill_exact:1,2,3,4,5,6,7@0/7"])
        // refused in one line where the contract cannot run it
        XCTAssertThrowsError(try DecoderContract(attention: "squeezed", state: "buffer", kvBudget: 0.3, shapes: shapes, exactHead: 2))
        XCTAssertThrowsError(try DecoderContract(attention: "squeezed", state: "buffer", kvBudget: 0.3, shapes: shapes, exactTail: 2,
                                                 exactHead: -1))
        let squeezed = try DecoderContract(attention: "squeezed", state: "buffer", kvBudget: 0.3, shapes: shapes, exactTail: 3)
        XCTAssertEqual(try squeezed.withExactHead(4).exactHead, 4)
        let full = try DecoderContract(attention: "full", state: "buffer", kvBudget: nil, shapes: shapes)
        XCTAssertTrue(thrownMessage(DecoderError.self) { try full.withExactHead(2) }.hasPrefix("--exact-head shapes Squeezed Attention's"))
        let noMethod = try DecoderContract(attention: "squeezed", state: "buffer", kvBudget: 0.3, shapes: shapes)
        XCTAssertTrue(thrownMessage(DecoderError.self) { try noMethod.withExactHead(3) }.contains("(exported with --exact-tail 0)"))
    }

    /// The calls GenerationLoop.greedy makes for a question of ids 1...10 under a squeezed "buffer" contract.
    private func greedyCalls(_ contract: DecoderContract, maxNewTokens: Int) throws -> [String] {
        let recorder = CallRecorder()
        let loop = try GenerationLoop(runtime: recorder, contract: contract, pack: pack,
                                      contextInputs: try PackLayout.decoderContextInputs(pack, shapes: shapes, attention: "squeezed"))
        let out = try loop.greedy(Array(1...10), maxNewTokens: maxNewTokens)
        XCTAssertEqual(out.exactSteps, min(out.decodeSteps, contract.exactDecode))
        return recorder.calls
    }

    func testTheAnswersOpeningRunsOneTokenPrefillExactCallsThenDecode() throws {
        // Python's GenerationLoop.greedy: decode step i (the one that feeds answer token i + 1) calls the exact method
        // while i < exact_decode, with that one token at the decode position; in-graph the exact method is prefill_exact
        // (the recorder's logits pick token k after call k: the answer is 2, 3, 4, ...)
        let p = shapes.maxPrompt
        func squeezed(exactDecode: Int, ranges: [String: ClosedRange<Int>] = [:]) throws -> DecoderContract {
            try DecoderContract(attention: "squeezed", state: "buffer", kvBudget: 0.3, shapes: shapes, tokenRanges: ranges,
                                exactTail: 3, exactDecode: exactDecode)
        }
        let prompt = ["prefill:1,2,3,4,5,6,7@0/\(p)", "prefill_exact:8,9,10@7/3"]
        // prefill_exact's token axis dynamic (the .onnx, the .pte): the opening's calls are one token wide
        let dynamic = ["prefill": 1...p, "prefill_exact": 1...3]
        XCTAssertEqual(try greedyCalls(try squeezed(exactDecode: 2, ranges: dynamic), maxNewTokens: 5),
                       ["prefill:1,2,3,4,5,6,7@0/7", "prefill_exact:8,9,10@7/3", "prefill_exact:2@10/1", "prefill_exact:3@11/1",
                        "decode:4@12/1", "decode:5@13/1"])
        // a static token axis: padded to the method's width, the manifest's exact_tail
        XCTAssertEqual(try greedyCalls(try squeezed(exactDecode: 2), maxNewTokens: 4),
                       prompt + ["prefill_exact:2@10/3", "prefill_exact:3@11/3", "decode:4@12/1"])
        // ... also where the caller runs a shorter exact tail (its width stays the artifact's)
        XCTAssertEqual(try greedyCalls(try squeezed(exactDecode: 1).withExactTail(0), maxNewTokens: 3),
                       ["prefill:1,2,3,4,5,6,7,8,9,10@0/\(p)", "prefill_exact:1@10/3", "decode:2@11/1"])
        // an opening longer than the answer: every decode step exact; none (0, older manifests): every step decodes
        XCTAssertEqual(try greedyCalls(try squeezed(exactDecode: 9), maxNewTokens: 3),
                       prompt + ["prefill_exact:2@10/3", "prefill_exact:3@11/3"])
        XCTAssertEqual(try greedyCalls(try squeezed(exactDecode: 0), maxNewTokens: 3), prompt + ["decode:2@10/1", "decode:3@11/1"])
        // a new question opens again
        let recorder = CallRecorder()
        let loop = try GenerationLoop(runtime: recorder, contract: try squeezed(exactDecode: 1), pack: pack,
                                      contextInputs: try PackLayout.decoderContextInputs(pack, shapes: shapes, attention: "squeezed"))
        XCTAssertEqual(loop.exactDecode, 1)
        XCTAssertEqual(loop.exactMethod, "prefill_exact")
        _ = try loop.greedy(Array(1...10), maxNewTokens: 3)
        _ = try loop.greedy(Array(1...10), maxNewTokens: 3)
        let methods = recorder.calls.map { String($0.prefix { $0 != ":" }) }
        XCTAssertEqual(methods, Array(repeating: ["prefill", "prefill_exact", "prefill_exact", "decode"], count: 2).flatMap { $0 })
    }

    func testTheAnswersOpeningFollowsNothingAndPointsTheNextDecodeStep() throws {
        // an exact decode step is fed as prefill_exact with one token: keep_keys as is (it selects nothing), follow_rows -1;
        // its follow_out is the pointer the next step follows (Python: GenerationLoop.step, follows only for decode)
        let context = try PackLayout.decoderContextInputs(pack, shapes: shapes, attention: "squeezed")
        let contract = try DecoderContract(attention: "squeezed", state: "buffer", kvBudget: 0.3, shapes: shapes, prefillTail: 2,
                                           exactTail: 3, followKeys: 2, followMinKeep: 25, exactDecode: 2)
        let recorder = FollowRecorder(layers: pack.layers, heads: pack.kvHeads, follow: 2)
        let loop = try GenerationLoop(runtime: recorder, contract: contract, pack: pack, contextInputs: context)
        XCTAssertEqual(loop.follow, 2)
        func out(_ call: Int) -> [Int64] { (0..<Int64(8)).map { Int64(100 * call) + $0 } }
        let none = [Int64](repeating: -1, count: 8)
        let prompt = ["prefill keep=25 rows=\(none)", "decode keep=25 rows=\(none)", "decode keep=25 rows=\(none)",
                      "prefill_exact keep=25 rows=\(none)"]
        let result = try loop.greedy(Array(1...10), maxNewTokens: 5)
        XCTAssertEqual(recorder.calls, prompt + ["prefill_exact keep=25 rows=\(none)", "prefill_exact keep=25 rows=\(none)",
                                                 "decode keep=23 rows=\(out(6))", "decode keep=23 rows=\(out(7))"])
        XCTAssertEqual([result.decodeSteps, result.exactSteps], [4, 2])
        // each exact step: one token at the decode position
        for (i, feed) in recorder.feeds[4...5].enumerated() {
            XCTAssertEqual(feed["n_tokens"], .int64(try Int64Tensor([1], shape: [1])))
            XCTAssertEqual(feed["cache_len"], .int64(try Int64Tensor([Int64(10 + i)], shape: [1])))
        }
    }

    func testPrefillExactGetsEveryInputItsMethodDeclaresAndWritesTheCacheAtItsStart() throws {
        // the exported prefill_exact's inputs (exportable.ExportableDecoder, exact=True): no keep_keys; per layer the
        // fixed context's rows only (runtimes pass on the declared inputs of a method, so the rest of the feed is unused)
        let context = try PackLayout.decoderContextInputs(pack, shapes: shapes, attention: "squeezed")
        let recorder = CallRecorder()
        let contract = try DecoderContract(attention: "squeezed", state: "buffer", kvBudget: 0.3, shapes: shapes, exactTail: 3)
        _ = try GenerationLoop(runtime: recorder, contract: contract, pack: pack, contextInputs: context).prompt(Array(1...10), cache: nil)
        let declared = ["tokens", "n_tokens", "cache_len", "context_len"] +
            (0..<pack.layers).flatMap { l in ["sink_kv_\(l)", "window_kv_\(l)", "clustered_keys_\(l)", "clustered_values_\(l)", "counts_\(l)"] }
        XCTAssertEqual(recorder.calls.map { String($0.prefix { $0 != ":" }) }, ["prefill", "prefill_exact"])
        let feed = recorder.feeds[1]
        XCTAssertTrue(Set(declared).isSubset(of: Set(feed.keys)), "prefill_exact feed: \(feed.keys.sorted())")
        guard case .int64(let contextLen)? = feed["context_len"] else { return XCTFail("no context_len") }
        XCTAssertEqual(contextLen.data, [Int64(pack.numTokens)])
        // state "io": the loop writes prefill_exact's new keys/values at its cache_len (the tokens before the tail)
        final class IoRuntime: DecoderRuntime {
            let name = "io"
            var calls = 0
            let kv: (Int, Int, Int)
            init(layers: Int, heads: Int, headDim: Int) { kv = (layers, heads, headDim) }
            func run(method: String, inputs: [String: DecoderTensor]) throws -> [String: DecoderTensor] {
                calls += 1
                guard case .int64(let n)? = inputs["n_tokens"] else { throw DecoderError("no n_tokens") }
                let shape = [kv.0, kv.1, Int(n.data[0]), kv.2]
                let count = shape.reduce(1, *)
                return ["logits": .float32(try Float32Tensor([Float](repeating: 0, count: 4), shape: [4])),
                        "new_keys": .float32(try Float32Tensor([Float](repeating: Float(calls), count: count), shape: shape)),
                        "new_values": .float32(try Float32Tensor([Float](repeating: -Float(calls), count: count), shape: shape))]
            }
        }
        let io = IoRuntime(layers: pack.layers, heads: pack.kvHeads, headDim: pack.headDim)
        let loop = try GenerationLoop(runtime: io, contract: try DecoderContract(attention: "squeezed", state: "io", kvBudget: 0.3,
                                                                                 shapes: shapes, exactTail: 3),
                                      pack: pack, contextInputs: context)
        let cache = try XCTUnwrap(loop.newCache())
        _ = try loop.prompt(Array(1...10), cache: cache)
        XCTAssertEqual(io.calls, 2)
        for l in 0..<cache.layers {
            for h in 0..<cache.heads {
                for t in 0..<cache.capacity {
                    let expected: Float = t < 7 ? 1 : t < 10 ? 2 : 0
                    let at = ((l * cache.heads + h) * cache.capacity + t) * cache.headDim
                    XCTAssertEqual(cache.keys[at], expected, "keys layer \(l) head \(h) token \(t)")
                    XCTAssertEqual(cache.values[at], -expected, "values layer \(l) head \(h) token \(t)")
                }
            }
        }
    }

    func testEachMethodGetsTheContextInputsInTheShapesItDeclares() throws {
        // prefill_exact declares the clustered tables per KV head, [Hkv, Nc, D] (exportable.ExportableDecoder, exact),
        // prefill and decode the flat [Hkv * Nc, D] tables: the loop feeds views of the same rows (GenerationLoop._shaped)
        let context = try PackLayout.decoderContextInputs(pack, shapes: shapes, attention: "squeezed")
        let h = pack.kvHeads, nc = shapes.maxClustered, d = pack.headDim
        let names = (0..<pack.layers).flatMap { l in ["clustered_keys_\(l)", "clustered_values_\(l)"] }
        let perHead = Dictionary(uniqueKeysWithValues: names.map { ($0, [h, nc, d]) })
        let flat = perHead.mapValues { _ in [h * nc, d] }
        let contract = try DecoderContract(attention: "squeezed", state: "buffer", kvBudget: 0.3, shapes: shapes, exactTail: 3,
                                           inputShapes: ["prefill": flat, "decode": flat, "prefill_exact": perHead])
        let recorder = CallRecorder()
        let loop = try GenerationLoop(runtime: recorder, contract: contract, pack: pack, contextInputs: context)
        _ = try loop.greedy(Array(1...10), maxNewTokens: 2)
        let methods = recorder.calls.map { String($0.prefix { $0 != ":" }) }
        XCTAssertEqual(methods, ["prefill", "prefill_exact", "decode"])
        func storage(_ t: Float32Tensor) -> UnsafePointer<Float>? { t.data.withUnsafeBufferPointer { $0.baseAddress } }
        for (method, feed) in zip(methods, recorder.feeds) {
            for name in names {
                guard case .float32(let t)? = feed[name], case .float32(let source)? = context.first(where: { $0.name == name })?.tensor else {
                    return XCTFail("\(method): no float32 \(name)")
                }
                XCTAssertEqual(t.shape, method == "prefill_exact" ? [h, nc, d] : [h * nc, d], "\(method): \(name)")
                XCTAssertEqual(storage(t), storage(source), "\(method): \(name) is a view of the pack's rows")
            }
            XCTAssertEqual(feed["sink_kv_0"]?.shape, context.first { $0.name == "sink_kv_0" }?.tensor.shape, method)
        }
        XCTAssertEqual(try loop.methodInputs("decode").map(\.name), context.map(\.name))
        XCTAssertEqual(try loop.methodInputs("prefill_exact").map(\.name), context.map(\.name))
        // another size: the export and this version's pack layout disagree
        let bad = try DecoderContract(attention: "squeezed", state: "buffer", kvBudget: 0.3, shapes: shapes, exactTail: 3,
                                      inputShapes: ["prefill_exact": ["clustered_keys_0": [h, nc, 2 * d]]])
        XCTAssertEqual(thrownMessage(DecoderError.self) {
            try GenerationLoop(runtime: CallRecorder(), contract: bad, pack: self.pack, contextInputs: context).prompt(Array(1...10), cache: nil)
        }, "the pack's clustered_keys_0 has shape [\(h * nc), \(d)] but method prefill_exact takes [\(h), \(nc), \(2 * d)]; " +
           "re-export the decoder with this project's version")
    }

    func testExactTailIsReadFromTheContract() throws {
        // without the answer's opening (exact_decode 14 needs the exact method: an artifact without one exports 0; its
        // own checks are DecoderManifestTests.testTheAnswersOpeningIsReadAndItsOverrideCheckedAsPythonChecksIt)
        let exportedText = try Golden.text("qa_decoder_manifest.json")
        XCTAssertNotNil(exportedText.range(of: "\"exact_decode\": 14,"))
        XCTAssertNotNil(exportedText.range(of: "\"exact_below\": 0.2,"))
        let text = replacingFirst(replacingFirst(replacingFirst(exportedText, "\"exact_decode\": 14,", "\"exact_decode\": 0,"),
                                                 "\"exact_below\": 0.2,", "\"exact_below\": 0,"),
                                  "\"exact_head\": 32,", "\"exact_head\": 0,")   // the head needs the method too
        // the first artifact (squeezed, exported with the .onnx's default exact tail, min(32, max_prompt)) with another
        XCTAssertEqual(shapes.maxPrompt, 32)
        let exported = "\"exact_tail\": \(shapes.maxPrompt),"
        XCTAssertNotNil(text.range(of: exported))
        func withExact(_ value: String) -> String { replacingFirst(text, exported, "\"exact_tail\": \(value),") }
        func exactTail(_ manifest: String) throws -> Int { try DecoderManifest.parse(manifest).artifacts[0].contract.exactTail }
        // null (full attention) and absent (older manifests): 0
        XCTAssertEqual(try DecoderManifest.parse(text).artifacts.map(\.contract.exactTail), [32, 0])
        XCTAssertEqual(try exactTail(replacingFirst(text, exported, "")), 0)
        XCTAssertEqual(try exactTail(withExact("null")), 0)
        XCTAssertEqual(try exactTail(withExact("0")), 0)
        XCTAssertEqual(try exactTail(withExact("16")), 16)
        XCTAssertEqual(thrownMessage(DecoderError.self) { try DecoderManifest.parse(withExact("-1")) },
                       "decoder.exact_tail: expected a whole number of tokens >= 0, found -1")
        XCTAssertThrowsError(try DecoderContract(attention: "squeezed", state: "buffer", kvBudget: 0.3, shapes: shapes, exactTail: -2))
        for bad in ["\"4\"", "2.5", "true"] {
            let m = thrownMessage(DecoderError.self) { try DecoderManifest.parse(withExact(bad)) }
            XCTAssertTrue(m.contains("exact_tail: expected an integer"), m)
        }
        // the prefill_exact method's token axis [1, E] (the .onnx's second graph): the tail at its own length
        let artifact = try DecoderManifest.parse(text).artifacts[0]
        XCTAssertNotNil(artifact.methods["prefill_exact"])
        XCTAssertEqual(artifact.contract.tokenRanges["prefill_exact"], 1...32)
        XCTAssertEqual(artifact.contract.tokenWidth(method: "prefill_exact", n: 5, fixed: artifact.contract.exactTail), 5)
        // a split contract (its exact tail runs as stages prefill_exact_<s>; SplitGenerationTests replays them)
        let split = replacingFirst(withExact("4"), "\"lookup_plan\": \"in-graph\",", "\"lookup_plan\": \"split\",")
        let splitContract = try DecoderManifest.parse(split).artifacts[0].contract
        XCTAssertEqual(splitContract.lookupPlan, "split")
        XCTAssertEqual(splitContract.exactTail, 4)
        XCTAssertEqual(try DecoderManifest.parse(text).artifacts.map(\.contract.lookupPlan), ["in-graph", "in-graph"])
        XCTAssertTrue(thrownMessage(DecoderError.self) {
            try DecoderManifest.parse(replacingFirst(text, "\"lookup_plan\": \"in-graph\",", "\"lookup_plan\": \"sideways\","))
        }.contains("lookup_plan"))
    }

    func testEachMethodIsFedTheValuesItsManifestEntryFixes() throws {
        // the .onnx's methods fix the graph selector `branch` (an input entry's "value"): prefill and decode [0],
        // prefill_exact [1]; the loop feeds exactly that (OnnxRunner.run's _fixed), even over an input of that name
        // among the context inputs
        let squeezed = try manifest.pick(format: "onnx", attention: "squeezed").contract
        let context = try PackLayout.decoderContextInputs(pack, shapes: shapes, attention: "squeezed") +
            [(name: "branch", tensor: .int64(try Int64Tensor([7], shape: [1])))]
        final class IoRuntime: DecoderRuntime {
            let name = "io"
            var calls: [String] = []
            var feeds: [[String: DecoderTensor]] = []
            let kv: (Int, Int, Int)
            init(layers: Int, heads: Int, headDim: Int) { kv = (layers, heads, headDim) }
            func run(method: String, inputs: [String: DecoderTensor]) throws -> [String: DecoderTensor] {
                calls.append(GenerationTests.branchCall(method, inputs))
                feeds.append(inputs)
                guard case .int64(let n)? = inputs["n_tokens"] else { throw DecoderError("no n_tokens") }
                let shape = [kv.0, kv.1, Int(n.data[0]), kv.2]
                let zeros = [Float](repeating: 0, count: shape.reduce(1, *))
                return ["logits": .float32(try Float32Tensor([0, 0, 0, 0], shape: [4])),
                        "new_keys": .float32(try Float32Tensor(zeros, shape: shape)),
                        "new_values": .float32(try Float32Tensor(zeros, shape: shape))]
            }
        }
        let io = IoRuntime(layers: pack.layers, heads: pack.kvHeads, headDim: pack.headDim)
        _ = try GenerationLoop(runtime: io, contract: try squeezed.withExactTail(3).withExactHead(0).withExactDecode(0), pack: pack, contextInputs: context)
            .greedy(Array(1...10), maxNewTokens: 3)
        XCTAssertEqual(io.calls, ["prefill branch=0", "prefill_exact branch=1", "decode branch=0", "decode branch=0"])
        XCTAssertEqual(io.feeds[2]["branch"], squeezed.fixedInputs["decode"]?["branch"])
        // the answer's opening (exact_decode 1): its first decode step is prefill_exact's graph (branch 1), one token
        io.calls = []
        _ = try GenerationLoop(runtime: io, contract: try squeezed.withExactTail(3).withExactHead(0).withExactDecode(1), pack: pack, contextInputs: context)
            .greedy(Array(1...10), maxNewTokens: 3)
        XCTAssertEqual(io.calls, ["prefill branch=0", "prefill_exact branch=1", "prefill_exact branch=1", "decode branch=0"])
        // without the exact tail, the whole question in one selecting prefill (branch 0); the artifact's answer opening
        // (exact_decode 14) still runs its decode steps exactly, as Python's loop with --exact-tail 0 does
        io.calls = []
        _ = try GenerationLoop(runtime: io, contract: try squeezed.withExactTail(0).withExactHead(0), pack: pack, contextInputs: context)
            .greedy(Array(1...10), maxNewTokens: 2)
        XCTAssertEqual(io.calls, ["prefill branch=0", "prefill_exact branch=1"])
        io.calls = []
        _ = try GenerationLoop(runtime: io, contract: try squeezed.withExactTail(0).withExactHead(0).withExactDecode(0), pack: pack, contextInputs: context)
            .greedy(Array(1...10), maxNewTokens: 2)
        XCTAssertEqual(io.calls, ["prefill branch=0", "decode branch=0"])

        // "value": a number or nested arrays, row-major, in the entry's dtype and shape
        func fixed(_ entry: String) throws -> DecoderTensor {
            try DecoderContract.fixedValue(method: "m", entry: JSONPath(try Json.parse(Array(entry.utf8)), path: "entry"))
        }
        XCTAssertEqual(try fixed("{\"name\": \"x\", \"shape\": [2, 2], \"dtype\": \"float32\", \"value\": [[1, 2.5], [3, -4]]}"),
                       .float32(try Float32Tensor([1, 2.5, 3, -4], shape: [2, 2])))
        XCTAssertEqual(try fixed("{\"name\": \"x\", \"shape\": [], \"dtype\": \"int32\", \"value\": 5}"),
                       .int64(try Int64Tensor([5], shape: [])))
        XCTAssertEqual(thrownMessage(DecoderError.self) { try fixed("{\"name\": \"x\", \"shape\": [1], \"dtype\": \"int64\", \"value\": [0, 1]}") },
                       "decoder.methods.m: input x fixes 2 values for shape [1]; re-export the decoder")
        XCTAssertEqual(thrownMessage(DecoderError.self) { try fixed("{\"name\": \"x\", \"shape\": [1], \"dtype\": \"uint8\", \"value\": [0]}") },
                       "decoder.methods.m: input x fixes a uint8 value, which the app does not feed (int64, int32, float32)")
        // in a manifest: a value that is not an integer is refused in one line naming it
        let text = try Golden.text("qa_decoder_manifest.json")
        let one = try XCTUnwrap(text.range(of: "\"value\": \\[\\s*1\\s*]", options: .regularExpression))  // prefill_exact's branch
        let m = thrownMessage(DecoderError.self) {
            try DecoderManifest.parse(text.replacingCharacters(in: one, with: "\"value\": [1.5]"))
        }
        XCTAssertTrue(m.hasPrefix("the decoder manifest is not usable (") && m.contains(".value[0]: expected an integer") &&
                      !m.contains("\n"), m)
    }

    func testGreedyAndForcedRunsGiveThePythonTokens() throws {
        let promptIds = try gen["prompt_ids"].intArray()
        let runs = try gen["runs"].list()
        XCTAssertEqual(try runs.map { "\(try $0["attention"].string()) \(try $0["kind"].string())" },
                       ["squeezed greedy", "squeezed forced", "squeezed greedy-short-tail", "squeezed greedy-head-tail",
                        "squeezed greedy-select-decode", "squeezed greedy-follow-gated", "squeezed greedy-unsure", "full greedy",
                        "full forced"])
        // only "greedy-head-tail" runs the question's first 2 tokens exactly before a selecting prefill and the tail
        XCTAssertEqual(try runs.map { try $0["exact_head"].int() }, [0, 0, 0, 2, 0, 0, 0, 0, 0])
        for (i, run) in runs.enumerated() {
            // the forced run's follow_out comes back as float32 (Core ML's outputs), the others' as int64 (the graph's)
            let runtime = try ReplayRuntime(run, manifest: manifest, outputs: outputs, followOutAsFloat: i == 1)
            let c = try contract(run)
            let loop = try GenerationLoop(runtime: runtime, contract: c, pack: pack,
                                          contextInputs: try PackLayout.decoderContextInputs(pack, shapes: shapes, attention: c.attention))
            if try !run["keep_keys"].isNull { XCTAssertEqual(loop.keepKeys, try run["keep_keys"].int()) } else { XCTAssertNil(loop.keepKeys) }
            // the squeezed graph takes 2 followed keys; the gated run's loop follows none of them
            let gated = try run["kind"].string() == "greedy-follow-gated"
            XCTAssertEqual([loop.graphFollow, loop.follow], c.attention == "full" ? [0, 0] : [2, gated ? 0 : 2])
            let forced = try run["forced"].isNull ? nil : try run["forced"].intArray()
            let out = try loop.greedy(promptIds, maxNewTokens: try gen["max_new_tokens"].int(), forced: forced,
                                      stopIds: Set(try run["stop_ids"].intArray()))
            let what = "\(try run["attention"].string()) \(try run["kind"].string())"
            XCTAssertEqual(out.tokens, try run["tokens"].intArray(), what)
            XCTAssertEqual(runtime.calls, try run["calls"].list().count, what)
            // the prompt's calls, then decode steps; the squeezed .onnx's branch as each method fixes it
            let prompt: [String]
            if c.attention == "full" {
                prompt = ["prefill"]
            } else if c.exactTail >= promptIds.count {
                prompt = ["prefill_exact branch=1"]  // the whole question is the tail
            } else if c.exactHead > 0 {
                prompt = ["prefill_exact branch=1", "prefill branch=0", "prefill_exact branch=1"]   // head, selecting, tail
            } else {
                prompt = ["prefill branch=0", "prefill_exact branch=1"]
            }
            // the answer's opening: the decode steps of its first exact_decode tokens are 1-token prefill_exact calls
            let opening = try run["exact_decode"].int()
            XCTAssertEqual(opening, c.attention == "full" ? 0 : try run["kind"].string() == "greedy-select-decode" ? 0 : 3, what)
            XCTAssertEqual(c.exactHead, try run["exact_head"].int(), what)
            XCTAssertEqual(loop.exactDecode, opening, what)
            XCTAssertEqual(loop.exactMethod, "prefill_exact", what)
            // unsure selecting steps (exact_below): Python's re-runs, each a decode call then a 1-token prefill_exact call;
            // only "greedy-unsure" has them, on some of its selecting steps
            let rerun = try run["rerun_at"].intArray()
            XCTAssertEqual(out.rerunAt, rerun, what)
            XCTAssertEqual(loop.exactBelow, try run["exact_below"].double(), what)
            XCTAssertEqual(!rerun.isEmpty, try run["kind"].string() == "greedy-unsure", what)
            let steps = out.decodeSteps
            let exact = min(opening, steps)
            XCTAssertTrue(steps > opening, "\(what): the run decodes past its opening")
            XCTAssertTrue(rerun.count < steps - exact, "\(what): some selecting steps are sure")
            let decode = c.attention == "full" ? "decode" : "decode branch=0"
            let answer = (0..<steps).flatMap { i -> [String] in
                i < exact ? ["prefill_exact branch=1"] : rerun.contains(i) ? [decode, "prefill_exact branch=1"] : [decode] }
            XCTAssertEqual(runtime.log, prompt + answer, what)
            XCTAssertEqual(runtime.calls, prompt.count + steps + rerun.count, what)
            XCTAssertEqual(out.exactSteps, exact, what)
        }
        // the forced run met the end-of-turn token: it stopped there, without emitting it
        let forcedRun = try XCTUnwrap(try runs.first { try $0["kind"].string() == "forced" })
        let stop = Set(try gen["tokenizer"]["stop_token_ids"].intArray())
        let forced = try forcedRun["forced"].intArray()
        let tokens = try forcedRun["tokens"].intArray()
        XCTAssertTrue(tokens.count < forced.count && stop.contains(forced[tokens.count]) && !tokens.contains(where: stop.contains))
    }

    /// Records per call "method keep=K rows=[follow_rows_0 + follow_rows_1 + ...]" and answers with follow_out
    /// [L, Hkv, F] = 100 x the call's number + its index (none with returnsFollowOut false).
    final class FollowRecorder: DecoderRuntime {
        let name = "follow recorder"
        var calls: [String] = []
        var feeds: [[String: DecoderTensor]] = []
        let layers: Int, heads: Int, follow: Int
        var returnsFollowOut = true
        init(layers: Int, heads: Int, follow: Int) { (self.layers, self.heads, self.follow) = (layers, heads, follow) }
        func run(method: String, inputs: [String: DecoderTensor]) throws -> [String: DecoderTensor] {
            guard case .int64(let keep)? = inputs["keep_keys"] else { throw DecoderError("no keep_keys") }
            var rows: [Int64] = []
            for l in 0..<layers {
                guard case .int64(let t)? = inputs["follow_rows_\(l)"] else { throw DecoderError("no follow_rows_\(l)") }
                XCTAssertEqual(t.shape, [heads, follow])
                rows += t.data
            }
            feeds.append(inputs)
            calls.append("\(method) keep=\(keep.data[0]) rows=\(rows)")
            var out: [String: DecoderTensor] = ["logits": .float32(try Float32Tensor([0, 1, 0, 0], shape: [4]))]
            let n = layers * heads * follow
            if returnsFollowOut {
                out["follow_out"] = .int64(try Int64Tensor((0..<n).map { Int64(100 * calls.count + $0) }, shape: [layers, heads, follow]))
            }
            return out
        }
    }

    func testDecodeStepsAfterThePromptFollowThePreviousCallsRows() throws {
        // squeezed_attention/decoder_session.py GenerationLoop.step: a decode step after the prompt selects keep_keys - F
        // and is fed the previous call's follow_out; the prompt's calls (a 1-token tail chunk runs as decode) select
        // keep_keys and are fed -1; each question starts over
        let context = try PackLayout.decoderContextInputs(pack, shapes: shapes, attention: "squeezed")
        let contract = try DecoderContract(attention: "squeezed", state: "buffer", kvBudget: 0.3, shapes: shapes, prefillTail: 2,
                                           exactTail: 3, followKeys: 2, followMinKeep: 25)
        let recorder = FollowRecorder(layers: pack.layers, heads: pack.kvHeads, follow: 2)
        let loop = try GenerationLoop(runtime: recorder, contract: contract, pack: pack, contextInputs: context)
        XCTAssertEqual(loop.keepKeys, 25)  // follow_min_keep 25: followed
        XCTAssertEqual([loop.graphFollow, loop.follow], [2, 2])
        func out(_ call: Int) -> [Int64] { (0..<Int64(8)).map { Int64(100 * call) + $0 } }
        let none = [Int64](repeating: -1, count: 8)
        let prompt = ["prefill keep=25 rows=\(none)", "decode keep=25 rows=\(none)", "decode keep=25 rows=\(none)",
                      "prefill_exact keep=25 rows=\(none)"]
        _ = try loop.greedy(Array(1...10), maxNewTokens: 3)
        XCTAssertEqual(recorder.calls, prompt + ["decode keep=23 rows=\(out(4))", "decode keep=23 rows=\(out(5))"])
        // the pack's next_rows_<layer> go to every call, as the other context inputs
        let next = try PackLayout.nextRows(pack, shapes: shapes)
        for feed in recorder.feeds {
            for (name, tensor) in next { XCTAssertEqual(feed[name], tensor, name) }
        }
        XCTAssertEqual(loop.contextInputs.map(\.name), context.map(\.name) + next.map(\.name))
        // the next question: its prompt follows nothing, its first decode step the new prompt's last call
        recorder.calls = []
        _ = try loop.greedy(Array(1...10), maxNewTokens: 2)
        XCTAssertEqual(recorder.calls, prompt + ["decode keep=23 rows=\(out(4))"])

        // gated: the pack keeps fewer keys than follow_min_keep; the same graph is fed -1 and keep_keys on every call,
        // and its follow_out is not read
        let gated = FollowRecorder(layers: pack.layers, heads: pack.kvHeads, follow: 2)
        gated.returnsFollowOut = false
        let gatedLoop = try GenerationLoop(runtime: gated, contract: try contract.withFollowKeys(2, minKeep: 26), pack: pack,
                                           contextInputs: context)
        XCTAssertEqual([gatedLoop.graphFollow, gatedLoop.follow], [2, 0])
        _ = try gatedLoop.greedy(Array(1...10), maxNewTokens: 3)
        XCTAssertEqual(gated.calls, prompt + ["decode keep=25 rows=\(none)", "decode keep=25 rows=\(none)"])
        XCTAssertEqual(gated.feeds.last?["next_rows_1"], next[1].tensor)
        // following, a call that returns no follow_out is named in one line
        let m = thrownMessage(DecoderError.self) { try GenerationLoop(runtime: gated, contract: contract, pack: self.pack, contextInputs: context)
            .greedy(Array(1...10), maxNewTokens: 2) }
        XCTAssertEqual(m, "the runtime returned no \"follow_out\" output for prefill (the decoder follows 2 keys)")

        // the real export's graph (4 followed keys from 32 kept): this pack keeps 25, so it follows none
        let exported = try manifest.pick(format: "onnx", attention: "squeezed").contract
        let real = FollowRecorder(layers: pack.layers, heads: pack.kvHeads, follow: 4)
        real.returnsFollowOut = false
        final class Io: DecoderRuntime {  // the .onnx's state "io": new keys and values besides
            let name = "io"
            let inner: FollowRecorder, headDim: Int
            init(_ inner: FollowRecorder, headDim: Int) { (self.inner, self.headDim) = (inner, headDim) }
            func run(method: String, inputs: [String: DecoderTensor]) throws -> [String: DecoderTensor] {
                guard case .int64(let n)? = inputs["n_tokens"] else { throw DecoderError("no n_tokens") }
                let shape = [inner.layers, inner.heads, Int(n.data[0]), headDim]
                let zeros = try Float32Tensor([Float](repeating: 0, count: shape.reduce(1, *)), shape: shape)
                return try inner.run(method: method, inputs: inputs).merging(["new_keys": .float32(zeros), "new_values": .float32(zeros)]) { a, _ in a }
            }
        }
        let realLoop = try GenerationLoop(runtime: Io(real, headDim: pack.headDim), contract: exported, pack: pack,
                                          contextInputs: try PackLayout.decoderContextInputs(pack, shapes: shapes, attention: "squeezed"))
        XCTAssertEqual([realLoop.graphFollow, realLoop.follow], [4, 0])
        _ = try realLoop.greedy(Array(1...10), maxNewTokens: 2)
        let four = [Int64](repeating: -1, count: 16)
        // the question is its exact tail; the answer's opening (the artifact's exact_decode 14) a 1-token prefill_exact
        XCTAssertEqual(realLoop.exactDecode, 14)
        XCTAssertEqual(real.calls, ["prefill_exact keep=25 rows=\(four)", "prefill_exact keep=25 rows=\(four)"])
    }

    func testAStopTokenFromTheFirstLogitsEndsAfterPrefill() throws {
        let run = try recordedRun(kind: "greedy", attention: "squeezed")
        let runtime = try ReplayRuntime(run, manifest: manifest, outputs: outputs)
        let loop = try GenerationLoop(runtime: runtime, contract: contract(run), pack: pack,
                                      contextInputs: try PackLayout.decoderContextInputs(pack, shapes: shapes, attention: "squeezed"))
        let first = try run["tokens"].intArray()[0]
        let out = try loop.greedy(try gen["prompt_ids"].intArray(), maxNewTokens: 12, stopIds: [first])
        XCTAssertEqual(out.tokens, [])
        XCTAssertEqual(runtime.calls, 1)
        XCTAssertEqual(out.logits.count, 1)
        XCTAssertEqual(GenerationLoop.argmax(out.logits[0]), first)
    }

    func testDocumentQaFramesTheQuestionStreamsTextAndTimesTheSteps() throws {
        let run = try recordedRun(kind: "greedy", attention: "full")
        let tokenizer = try ByteLevelBpeTokenizer.parse(try Golden.bytes("qa_tokenizer_tiny.json"))
        var now: Int64 = 0
        let runtime = try ReplayRuntime(run, manifest: manifest, outputs: outputs)
        let qa = try DocumentQa.attach(manifest: manifest, artifact: try manifest.pick(format: "onnx", attention: "full"),
                                       runtime: runtime, tokenizer: tokenizer, pack: pack,
                                       clockNanos: { defer { now += 2_000_000 }; return now })
        let prompt = try gen["prompt"].string()
        XCTAssertEqual(try qa.promptIds(prompt), try gen["prompt_ids"].intArray())
        var streamed = ""
        var pieces = 0
        let answer = try qa.generate(prompt, maxNewTokens: 12) { streamed += $0; pieces += 1 }
        XCTAssertEqual(answer.tokenIds, try run["tokens"].intArray())
        XCTAssertEqual(answer.text, try run["text"].string())
        XCTAssertEqual(streamed, answer.text)
        XCTAssertEqual(pieces, answer.tokenIds.count)
        XCTAssertEqual(answer.contextTokens, pack.numTokens)
        XCTAssertEqual(answer.promptTokens, try gen["prompt_ids"].intArray().count)
        XCTAssertEqual(answer.prefillMs, 2.0, accuracy: 1e-9)
        XCTAssertEqual(answer.decodeTokens, 11)
        XCTAssertEqual(answer.runtime, "replay (PyTorch outputs)")
        XCTAssertGreaterThan(answer.decodeTokensPerSecond, 0)
        XCTAssertTrue(thrownMessage(DecoderError.self) { try qa.promptIds("x", raw: true) }.contains("drop --raw"))
    }

    func testDocumentQaEncodesTheQuestionLiterally() throws {
        // Python's DecoderSession.prompt_ids on the real model's tokenizer (the tiny model's vocabulary has no "<" or
        // "|"): special-token strings written in the question stay text, the framing's suffix keeps its markers
        let cases = try Golden.json("qa_tokenizer.json.gz")["prompt_cases"]
        XCTAssertEqual(manifest.tokenizer.join, try cases["chat"]["join"].string())
        XCTAssertEqual(manifest.tokenizer.suffix, try cases["chat"]["suffix"].string())
        let run = try recordedRun(kind: "greedy", attention: "full")
        let qa = try DocumentQa(runtime: try ReplayRuntime(run, manifest: manifest, outputs: outputs), contract: try contract(run),
                                tokenizer: try TokenizerTests.sharedTokenizer(), tokenizerInfo: manifest.tokenizer, pack: pack)
        var differ = 0
        for c in try cases["cases"].list() {
            let prompt = try c["prompt"].string()
            let ids = try qa.promptIds(prompt)
            XCTAssertEqual(ids, try c["ids"].intArray(), "prompt ids of \(String(prompt.prefix(60)).debugDescription)")
            if try ids != c["ids_matched"].intArray() { differ += 1 }
        }
        XCTAssertGreaterThanOrEqual(differ, 3, "only \(differ) questions are encoded differently from join + question + suffix")
    }

    /// Answers with `script` token by token (one-hot logits over `vocab`), whatever it is fed.
    final class ScriptedRuntime: DecoderRuntime {
        let name = "scripted"
        let script: [Int]
        let vocab: Int
        var calls = 0
        init(_ script: [Int], vocab: Int) { self.script = script; self.vocab = vocab }
        func run(method: String, inputs: [String: DecoderTensor]) throws -> [String: DecoderTensor] {
            var logits = [Float](repeating: 0, count: vocab)
            logits[script[calls]] = 1
            calls += 1
            return ["logits": .float32(try Float32Tensor(logits, shape: [vocab]))]
        }
    }

    final class NaNRuntime: DecoderRuntime {
        let name = "nan"
        let vocab: Int
        init(vocab: Int) { self.vocab = vocab }
        func run(method: String, inputs: [String: DecoderTensor]) throws -> [String: DecoderTensor] {
            return ["logits": .float32(try Float32Tensor([Float](repeating: .nan, count: vocab), shape: [vocab]))]
        }
    }

    func testLogitsThatAreNotFiniteAreOneLine() throws {
        // a damaged artifact computes NaN; argmax over NaN is token 0, a stop token: an empty answer that looked normal
        let tokenizer = try TokenizerTests.sharedTokenizer()
        let contract = try DecoderContract(attention: "full", state: "buffer", kvBudget: nil, shapes: shapes)
        let qa = try DocumentQa(runtime: NaNRuntime(vocab: tokenizer.vocabSize), contract: contract,
                                tokenizer: tokenizer, tokenizerInfo: manifest.tokenizer, pack: pack)
        XCTAssertThrowsError(try qa.generate("Hi", maxNewTokens: 2)) { error in
            let message = (error as? DecoderError)?.message ?? ""
            XCTAssertTrue(message.hasPrefix("the artifact computed logits that are not finite") && !message.contains("\n"),
                          message)
        }
    }

    func testBlankQuestionsAreRefusedAsPythonRefusesThem() throws {
        // an empty chat turn was answered (its framed ids are never empty: the model answered a question of its own);
        // Python's tokenizer.check_question refuses it. Blank is Python's str.isspace.
        let tokenizer = try TokenizerTests.sharedTokenizer()
        let contract = try DecoderContract(attention: "full", state: "buffer", kvBudget: nil, shapes: shapes)
        let qa = try DocumentQa(runtime: NaNRuntime(vocab: tokenizer.vocabSize), contract: contract,
                                tokenizer: tokenizer, tokenizerInfo: manifest.tokenizer, pack: pack)
        func refused(_ prompt: String) -> String { thrownMessage(DecoderError.self) { try qa.generate(prompt, maxNewTokens: 2) } }
        XCTAssertEqual(refused(""), "the prompt is empty: the user's turn needs a question; ask one")
        for blank in [" ", "\n\t ", "\u{a0}\u{3000}\u{2028}", "\u{1c}\u{1f}\u{85}"] {
            XCTAssertEqual(refused(blank), "the prompt is empty (only whitespace): the user's turn needs a question; ask one")
        }
        // not blank for Python either: a zero-width space, a control character
        for text in ["\u{200b}", "\u{1}"] { XCTAssertFalse(try qa.promptIds(text).isEmpty, text) }
    }

    func testAnAnswerCutInsideACharacterEndsBeforeIt() throws {
        // the real tokenizer: "Yes 😀" is [10539 "Yes", 40303 " " + the emoji's first two bytes, 218 its last two]. An
        // answer cut after the second token decodes to "Yes \u{FFFD}"; Python's DecoderSession returns
        // finished_text("Yes \u{FFFD}") == "Yes " (its token ids keep both tokens); its stream holds the piece back and
        // sends the finished part at the end, so the streamed pieces add up to the answer's text
        let tokenizer = try TokenizerTests.sharedTokenizer()
        let script = try tokenizer.encode("Yes \u{1F600}")
        XCTAssertEqual(script, [10539, 40303, 218])
        XCTAssertEqual(tokenizer.decode(Array(script.prefix(2))), "Yes \u{FFFD}")
        let contract = try DecoderContract(attention: "full", state: "buffer", kvBudget: nil, shapes: shapes)
        let qa = try DocumentQa(runtime: ScriptedRuntime(script, vocab: tokenizer.vocabSize), contract: contract,
                                tokenizer: tokenizer, tokenizerInfo: manifest.tokenizer, pack: pack)
        var streamed = ""
        let cut = try qa.generate("Hi", maxNewTokens: 2) { streamed += $0 }
        XCTAssertEqual(cut.tokenIds, Array(script.prefix(2)))
        XCTAssertEqual(cut.text, "Yes ")
        XCTAssertEqual(streamed, "Yes ")
        // the whole character: nothing to drop
        let whole = try DocumentQa(runtime: ScriptedRuntime(script, vocab: tokenizer.vocabSize), contract: contract,
                                   tokenizer: tokenizer, tokenizerInfo: manifest.tokenizer, pack: pack)
            .generate("Hi", maxNewTokens: 3)
        XCTAssertEqual(whole.text, "Yes \u{1F600}")
        XCTAssertEqual(DocumentQa.finishedText("a\u{FFFD}\u{FFFD}"), "a")
        XCTAssertEqual(DocumentQa.finishedText("\u{FFFD}a"), "\u{FFFD}a")
    }

    func testLengthsOutsideTheArtifactAreRefused() throws {
        let run = try gen["runs"].list()[0]
        let loop = try GenerationLoop(runtime: ReplayRuntime(run, manifest: manifest, outputs: outputs), contract: contract(run),
                                      pack: pack, contextInputs: [])
        let s = shapes!
        XCTAssertTrue(thrownMessage(DecoderError.self) { try loop.checkLengths(promptTokens: s.maxPrompt + 1, maxNewTokens: 1) }
            .contains("--max-prompt \(s.maxPrompt + 1)"))
        XCTAssertThrowsError(try loop.checkLengths(promptTokens: 0, maxNewTokens: 1))
        XCTAssertThrowsError(try loop.checkLengths(promptTokens: 10, maxNewTokens: s.maxPrompt + s.maxNew - 9))
        XCTAssertNoThrow(try loop.checkLengths(promptTokens: 10, maxNewTokens: s.maxPrompt + s.maxNew - 10))
        XCTAssertEqual(GenerationLoop.argmax([1, 2, 3, -.infinity]), 2)
        XCTAssertEqual(GenerationLoop.argmax([1, 3, 3]), 1)
        XCTAssertEqual(GenerationLoop.argmax([1, .nan, 5]), 1)
        XCTAssertTrue(thrownMessage(DecoderError.self) {
            try KvBudget.keepFraction(kvBudget: 0.01, centroidFraction: 0.05, headDim: 8)
        }.contains("--kv-budget"))
    }
}
