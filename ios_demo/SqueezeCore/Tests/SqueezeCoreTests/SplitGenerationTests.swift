import XCTest
@testable import SqueezeCore

/// The split lookup plan (the .tflite / Core ML export's call sequence) against Python's GenerationLoop._split_step,
/// the goldens SplitGenerationTest.kt reads: a fake runtime replays what the tiny model's stage graphs (run by PyTorch)
/// returned, call by call, and checks every input the Swift loop feeds (sha256: tokens, lengths, the pack's per-layer
/// tensors under the stage names, KeptRows' kept_keys/kept_values/kept_bias, the clustered tables the exact tail's
/// stages read whole, the cache written from earlier stages and steps). hidden/query, which the loop only hands on,
/// must be handed on unchanged (the same values the previous stage returned).
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
        private let gen: JSONPath
        private let outputs: [Float]
        private let forwarded: Set<String>
        private var handedOut: [String: Float32Tensor] = [:]

        init(_ gen: JSONPath, outputs: [Float]) throws {
            self.gen = gen
            self.outputs = outputs
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
            XCTAssertEqual(method, try call["method"].string(), "call \(calls)")
            let declared = Set(try call["declared"].list().map { try $0.string() })
            XCTAssertTrue(declared.isSubset(of: Set(inputs.keys)), "call \(calls) (\(method)): needs \(declared), fed \(inputs.keys)")
            let expected = try call["inputs"].obj()
            XCTAssertEqual(Set(expected.keys), Set(inputs.keys), "call \(calls) (\(method)): input names")
            for name in expected.keys {
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
            for name in recordedOut.keys {
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
        let out = try loop.greedy(promptIds, maxNewTokens: try gen["max_new_tokens"].int())
        XCTAssertEqual(out.tokens, try gen["tokens"].intArray())
        XCTAssertEqual(runtime.calls, try gen["calls"].list().count)
        // prefill_0..L (the tokens before the exact tail), prefill_exact_0..L (the tail, no lookup), decode_0..L
        let stages = (0...pack.layers).map { $0 }
        XCTAssertEqual(runtime.methods, stages.map { "prefill_\($0)" } + stages.map { "prefill_exact_\($0)" } + stages.map { "decode_\($0)" })
        XCTAssertEqual(out.decodeSteps, 1)
        // one CPU lookup per layer for the selecting prefill and the decode step, each between two clock reads
        XCTAssertEqual(out.lookupNanos, Int64(2 * pack.layers) * 1_000_000)
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
