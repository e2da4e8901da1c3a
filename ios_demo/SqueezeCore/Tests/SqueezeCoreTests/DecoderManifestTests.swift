import Foundation
import XCTest
@testable import SqueezeCore

/// manifest.json of a real tiny decoder export (ONNX, squeezed + full; the golden GenerationTest.kt reads) against
/// read_decoder_manifest / pick_artifact, and the one-line errors for manifests that are not a decoder's.
final class DecoderManifestTests: XCTestCase {
    func testDecoderManifestOfARealExport() throws {
        let gen = try Golden.json("qa_generation.json.gz")
        let manifest = try DecoderManifest.parse(try Golden.bytes("qa_decoder_manifest.json"))
        let pack = try ContextPack.read(try Golden.bytes("qa_pack.safetensors"), source: "qa_pack.safetensors")
        let shapes = try DecoderShapes.parse(gen["shapes"])
        XCTAssertEqual(manifest.weightsSha256, try gen["model"]["weights_sha256"].string())
        XCTAssertEqual(manifest.tokenizerSha256, try gen["model"]["tokenizer_sha256"].string())
        try pack.checkModel(weightsSha256: manifest.weightsSha256, tokenizerSha256: manifest.tokenizerSha256)
        XCTAssertEqual(manifest.artifacts.map(\.contract.attention), ["squeezed", "full"])
        let squeezed = try manifest.pick(format: "onnx", attention: "squeezed")
        XCTAssertEqual(squeezed.contract.shapes, shapes)
        XCTAssertEqual(squeezed.contract.state, "io")
        XCTAssertEqual(squeezed.contract.kvBudget, 0.3)
        XCTAssertNil(try manifest.pick(attention: "full").contract.kvBudget)
        XCTAssertEqual(manifest.schema, DecoderManifest.schema)
        // the .onnx's exact prompt tail: prefill_exact, the file's second graph, selected by the input `branch`
        XCTAssertEqual(Set(squeezed.methods.keys), ["prefill", "decode", "prefill_exact"])
        XCTAssertEqual(squeezed.contract.exactTail, shapes.maxPrompt)
        XCTAssertEqual(try manifest.pick(format: "onnx", attention: "full").methodNames, ["prefill", "decode"])
        // the declared shapes of the inputs without a dynamic axis: the clustered tables flat, [Hkv * Nc, D], for every
        // method of the .onnx (one set of graph inputs; only a .pte's prefill_exact declares them per KV head)
        let declared = try XCTUnwrap(squeezed.contract.inputShapes["decode"])
        for method in squeezed.methodNames {
            for name in ["clustered_keys_0", "clustered_values_1"] {
                XCTAssertEqual(squeezed.contract.inputShapes[method]?[name], [manifest.numKvHeads * shapes.maxClustered, manifest.headDim],
                               "\(method) \(name)")
            }
        }
        XCTAssertNil(squeezed.contract.inputShapes["prefill"]?["tokens"])
        XCTAssertFalse(declared.keys.contains { $0.hasPrefix("clustered_kv") })
        XCTAssertEqual(squeezed.methodNames, ["prefill", "decode", "prefill_exact"])
        // every method lists the merged graph's inputs (same names, same static shapes) and fixes `branch` ([1], int64)
        let names = try XCTUnwrap(squeezed.methods["prefill"]).inputs.map(\.name)
        XCTAssertEqual(names.last, "branch")
        for (method, k) in [("prefill", Int64(0)), ("decode", 0), ("prefill_exact", 1)] {
            let m = try XCTUnwrap(squeezed.methods[method])
            XCTAssertEqual(m.inputs.map(\.name), names, method)
            let branch = try XCTUnwrap(m.inputs.first { $0.name == "branch" })
            XCTAssertEqual(branch.shape, [1])
            XCTAssertEqual(branch.dtype, "int64")
            XCTAssertEqual(squeezed.contract.fixedInputs[method].map { Array($0.keys) }, ["branch"], method)
            XCTAssertEqual(squeezed.contract.fixedInputs[method]?["branch"], .int64(try Int64Tensor([k], shape: [1])), method)
        }
        XCTAssertEqual(Set(try XCTUnwrap(squeezed.contract.inputShapes["prefill"]).keys),
                       Set(try XCTUnwrap(squeezed.contract.inputShapes["prefill_exact"]).keys))
        XCTAssertTrue(try manifest.pick(format: "onnx", attention: "full").contract.fixedInputs.isEmpty)
        // followed keys (the default export's: 4, followed where a pack keeps at least 32 keys): every method returns
        // follow_out and takes follow_rows_<layer> [Hkv, 4] and the pack's next_rows_<layer> [Hkv * max_clustered]
        XCTAssertEqual(manifest.artifacts.map(\.contract.followKeys), [4, 0])
        XCTAssertEqual(manifest.artifacts.map(\.contract.followMinKeep), [32, 0])
        for method in squeezed.methodNames {
            XCTAssertEqual(squeezed.methods[method]?.outputs, ["logits", "new_keys", "new_values", "follow_out"], method)
            XCTAssertEqual(squeezed.contract.inputShapes[method]?["follow_rows_1"], [manifest.numKvHeads, 4], method)
            XCTAssertEqual(squeezed.contract.inputShapes[method]?["next_rows_0"], [manifest.numKvHeads * shapes.maxClustered], method)
        }
        XCTAssertEqual(try manifest.pick(format: "onnx", attention: "full").methods["decode"]?.outputs, ["logits", "new_keys", "new_values"])
        XCTAssertEqual(squeezed.methods["prefill"]?.inputs[0].shape[0], shapes.maxPrompt)
        // the .onnx graph's token axis is dynamic: a question is fed at its own length, not padded to max_prompt
        XCTAssertEqual(squeezed.contract.tokenRanges["prefill"], 1...shapes.maxPrompt)
        XCTAssertEqual(squeezed.contract.tokenWidth(method: "prefill", n: 17, fixed: shapes.maxPrompt), 17)
        XCTAssertEqual(squeezed.contract.tokenWidth(method: "decode", n: 1, fixed: 1), 1)
        // a contract without dynamic axes (static shapes, older manifests): padded to the method's width
        XCTAssertEqual(try DecoderContract(attention: "squeezed", state: "io", kvBudget: 0.3, shapes: shapes)
            .tokenWidth(method: "prefill", n: 17, fixed: shapes.maxPrompt), shapes.maxPrompt)
        XCTAssertEqual(squeezed.verificationStatus, manifest.artifacts[0].verificationStatus)
        let info = manifest.tokenizer
        XCTAssertEqual(info.file, "tokenizer.json")
        XCTAssertEqual(info.suffix, try gen["tokenizer"]["chat"]["suffix"].string())
        XCTAssertEqual(info.stopTokenIds, Set(try gen["tokenizer"]["stop_token_ids"].intArray()))
        XCTAssertEqual(manifest.numLayers, pack.layers)
        XCTAssertEqual(manifest.numKvHeads, pack.kvHeads)
        XCTAssertEqual(manifest.headDim, pack.headDim)
        XCTAssertTrue(thrownMessage(DecoderError.self) { try manifest.pick(format: "pte") }.contains("it has: onnx"))
        let video = try Golden.text("manifest.json")
        XCTAssertTrue(thrownMessage(DecoderError.self) { try DecoderManifest.parse(video) }.contains("not describe an exported decoder"))
        let broken = try Golden.text("qa_decoder_manifest.json").replacingOccurrences(of: "\"max_keep\"", with: "\"max_kept\"")
        let m = thrownMessage(DecoderError.self) { try DecoderManifest.parse(broken) }
        XCTAssertTrue(m.contains("max_keep") && !m.contains("\n"), m)
        XCTAssertTrue(thrownMessage(DecoderError.self) { try DecoderManifest.parse("{\"model\": ") }.contains("not usable"))
    }

    /// The golden manifest with its two ONNX artifacts recorded as .pte files of the given delegates (squeezed, full).
    private func pteManifest(squeezed: String, full: String) throws -> String {
        var text = try Golden.text("qa_decoder_manifest.json")
        let manifest = try DecoderManifest.parse(text)
        for (artifact, delegate) in zip(manifest.artifacts, [squeezed, full]) {
            let old = "\"format\": \"onnx\",\n      \"file\": \"\(artifact.file)\","
            guard let r = text.range(of: old) else { fatalError("test edit not applicable") }
            text.replaceSubrange(r, with: "\"format\": \"pte\",\n      \"pte_backend\": \"\(delegate)\",\n      \"file\": \"\(artifact.file)\",")
        }
        return text
    }

    func testAPteDelegatedToCoreMlIsReadAndPickedInManifestOrder() throws {
        // `squeeze export decoder --formats pte --pte-backend coreml`: ExecuTorch runs it on Apple devices only; here it
        // runs (with backend_coreml linked), so pick keeps the manifest's order (Python's pick_artifact on Darwin); the
        // Android core tries it last and refuses to load it
        let m = try DecoderManifest.parse(try pteManifest(squeezed: "coreml", full: "xnnpack"))
        XCTAssertEqual(m.artifacts.map(\.pteBackend), ["coreml", "xnnpack"])
        XCTAssertEqual(m.artifacts.map(\.appleOnly), [true, false])
        XCTAssertEqual(try m.pick(format: "pte").file, m.artifacts[0].file)
        XCTAssertEqual(try m.pick(format: "pte", attention: "full").file, m.artifacts[1].file)
        XCTAssertNil(try DecoderManifest.parse(try Golden.bytes("qa_decoder_manifest.json")).artifacts[0].pteBackend)
        // the lookup plan is a pick criterion, as in the Android core
        XCTAssertEqual(try m.pick(plan: "in-graph").file, m.artifacts[0].file)
        XCTAssertEqual(thrownMessage(DecoderError.self) { try m.pick(format: "pte", attention: "squeezed", plan: "split") },
                       "the export holds no pte squeezed split-plan decoder artifact (it has: pte); pick one of those or export it")
    }

    func testAManifestNamingFilesOutsideItsDirectoryIsRefused() throws {
        // the app opens the directory's URL + name: "../x" or an absolute path would reach any file the app can read
        let text = try Golden.text("qa_decoder_manifest.json")
        let full = try DecoderManifest.parse(text).artifacts[1].file
        func refused(_ t: String) -> String { thrownMessage(DecoderError.self) { try DecoderManifest.parse(t) } }
        XCTAssertEqual(refused(text.replacingOccurrences(of: "\"file\": \"\(full)\"", with: "\"file\": \"../../databases/x.onnx\"")),
                       "manifest.artifacts[1].file: \"../../databases/x.onnx\" is not a plain file name inside the export " +
                       "directory; re-export the decoder")
        XCTAssertTrue(refused(text.replacingOccurrences(of: "\"file\": \"tokenizer.json\"", with: "\"file\": \"/sdcard/tokenizer.json\""))
            .hasPrefix("manifest.tokenizer.file: \"/sdcard/tokenizer.json\" is not a plain file name"))
        XCTAssertTrue(refused(text.replacingOccurrences(of: "\"file\": \"tokenizer.json\"", with: "\"file\": \".tokenizer.json\""))
            .contains("not a plain file name"))
    }

    func testAMalformedDynamicTokenAxisIsRefusedInOneLine() throws {
        // methods.<m>.inputs[tokens].dynamic["0"] = [min, max]; one number (a hand-edited or damaged manifest) or a
        // reversed range was passed over silently (the Kotlin core crashed on it)
        let text = try Golden.text("qa_decoder_manifest.json")
        guard let axis = text.range(of: #""0": \[\s*1,\s*32\s*\]"#, options: .regularExpression) else { return XCTFail("no axis") }
        func edited(_ bounds: String) -> String { text.replacingCharacters(in: axis, with: "\"0\": \(bounds)") }
        func refused(_ bounds: String) -> String { thrownMessage(DecoderError.self) { try DecoderManifest.parse(edited(bounds)) } }
        XCTAssertEqual(refused("[32]"), "decoder.methods.prefill: the tokens input's dynamic axis is [32], expected [min, max] with " +
                       "0 <= min <= max; re-export the decoder")
        XCTAssertTrue(refused("[32, 1]").contains("is [32, 1], expected [min, max]"))
        XCTAssertTrue(refused("[-1, 4]").contains("is [-1, 4], expected"))
        XCTAssertEqual(try DecoderManifest.parse(edited("[2, 7]")).artifacts[0].contract.tokenRanges["prefill"], 2...7)
    }

    func testAManifestOfAnotherSchemaIsRefusedInOneLine() throws {
        // decoder_session.read_decoder_manifest: exactly this version's schema (1: one clustered_kv_l per layer)
        let text = try Golden.text("qa_decoder_manifest.json")
        let current = "\"schema\": \"\(DecoderManifest.schema)\""
        XCTAssertNotNil(text.range(of: current))
        func refused(_ replacement: String) -> String {
            let r = text.range(of: current)!
            return thrownMessage(DecoderError.self) { try DecoderManifest.parse(text.replacingCharacters(in: r, with: replacement)) }
        }
        XCTAssertEqual(refused("\"schema\": \"squeeze-mobile/decoder-manifest/1\""),
                       "the manifest was written by another version of squeeze-mobile (schema 'squeeze-mobile/decoder-manifest/1', " +
                       "this version reads 'squeeze-mobile/decoder-manifest/2'); re-export the decoder into a fresh directory")
        let newer = refused("\"schema\": \"squeeze-mobile/decoder-manifest/3\"")
        XCTAssertTrue(newer.contains("(schema 'squeeze-mobile/decoder-manifest/3', this version reads"), newer)
        let absent = refused("\"no_schema\": 0")
        XCTAssertTrue(absent.contains("(schema None, this version reads"), absent)
        let number = refused("\"schema\": 2")
        XCTAssertTrue(number.contains("(schema 2, this version reads"), number)
    }

    func testAQuestionDecodeSelectionIsRefusedInOneLine() throws {
        let text = try Golden.text("qa_decoder_manifest.json")
        // the first artifact (squeezed, exported with "decode_selection": "step") with another JSON value
        let exported = "\"decode_selection\": \"step\","
        XCTAssertNotNil(text.range(of: exported))
        func withSelection(_ value: String) -> String { replacingFirst(text, exported, "\"decode_selection\": \(value),") }
        // as exported ("step"; null for full attention), and absent (an export written before decode selections)
        XCTAssertEqual(try DecoderManifest.parse(text).artifacts.map(\.contract.decodeSelection), ["step", "step"])
        let absent = replacingFirst(replacingFirst(text, exported, ""), "\"decode_selection\": null,", "")
        XCTAssertEqual(try DecoderManifest.parse(absent).artifacts.map(\.contract.decodeSelection), ["step", "step"])
        XCTAssertEqual(try DecoderManifest.parse(withSelection("\"step\"")).artifacts[0].contract.decodeSelection, "step")
        XCTAssertEqual(try DecoderManifest.parse(withSelection("null")).artifacts[0].contract.decodeSelection, "step")
        // "question": its decode takes held inputs this app does not build
        XCTAssertEqual(thrownMessage(DecoderError.self) { try DecoderManifest.parse(withSelection("\"question\"")) },
                       "decoder.decode_selection: this app runs per-step selection only, found question; " +
                       "export the decoder with --decode-selection step")
        XCTAssertEqual(thrownMessage(DecoderError.self) { try DecoderManifest.parse(withSelection("\"sometimes\"")) },
                       "decoder.decode_selection: expected step or question, found sometimes")
        let shapes = try DecoderManifest.parse(text).artifacts[0].contract.shapes
        XCTAssertTrue(thrownMessage(DecoderError.self) {
            try DecoderContract(attention: "squeezed", state: "io", kvBudget: 0.3, shapes: shapes, decodeSelection: "question")
        }.contains("--decode-selection step"))
    }

    func testFollowedKeysAreReadFromTheContract() throws {
        let text = try Golden.text("qa_decoder_manifest.json")
        // the first artifact (squeezed, the default export's 4 followed keys from 32 kept ones) with other values
        let keys = "\"follow_keys\": 4,", minKeep = "\"follow_min_keep\": 32,"
        XCTAssertNotNil(text.range(of: keys))
        XCTAssertNotNil(text.range(of: minKeep))
        func follow(_ manifest: String) throws -> [Int] {
            let c = try DecoderManifest.parse(manifest).artifacts[0].contract
            return [c.followKeys, c.followMinKeep]
        }
        XCTAssertEqual(try follow(text), [4, 32])
        XCTAssertEqual(try follow(replacingFirst(text, keys, "\"follow_keys\": 2,")), [2, 32])
        XCTAssertEqual(try follow(replacingFirst(text, minKeep, "\"follow_min_keep\": 0,")), [4, 0])
        // null (full attention) and absent (older manifests): 0
        XCTAssertEqual(try follow(replacingFirst(replacingFirst(text, keys, ""), minKeep, "")), [0, 0])
        XCTAssertEqual(try follow(replacingFirst(replacingFirst(text, keys, "\"follow_keys\": null,"), minKeep,
                                                 "\"follow_min_keep\": null,")), [0, 0])
        XCTAssertEqual(try follow(replacingFirst(text, minKeep, "")), [4, 0])
        // a negative count, in one line; a value that is not an integer, naming the key
        XCTAssertEqual(thrownMessage(DecoderError.self) { try DecoderManifest.parse(replacingFirst(text, keys, "\"follow_keys\": -1,")) },
                       "decoder.follow_keys: expected an integer >= 0, found -1")
        XCTAssertEqual(thrownMessage(DecoderError.self) {
            try DecoderManifest.parse(replacingFirst(text, minKeep, "\"follow_min_keep\": -3,"))
        }, "decoder.follow_min_keep: expected an integer >= 0, found -3")
        for bad in ["\"4\"", "2.5", "true"] {
            for (key, exported) in [("follow_keys", keys), ("follow_min_keep", minKeep)] {
                let m = thrownMessage(DecoderError.self) { try DecoderManifest.parse(replacingFirst(text, exported, "\"\(key)\": \(bad),")) }
                XCTAssertTrue(m.contains("decoder.\(key): expected an integer") && !m.contains("\n"), m)
            }
        }
        let shapes = try DecoderManifest.parse(text).artifacts[0].contract.shapes
        XCTAssertThrowsError(try DecoderContract(attention: "squeezed", state: "io", kvBudget: 0.3, shapes: shapes, followKeys: -2))
        XCTAssertThrowsError(try DecoderContract(attention: "squeezed", state: "io", kvBudget: 0.3, shapes: shapes, followMinKeep: -1))
        // another F or gate for the same graph, everything else as exported (the goldens' runs)
        let squeezed = try DecoderManifest.parse(text).artifacts[0].contract
        let other = try squeezed.withFollowKeys(2, minKeep: 0)
        XCTAssertEqual([other.followKeys, other.followMinKeep], [2, 0])
        XCTAssertEqual(try other.withFollowKeys(4, minKeep: 32), squeezed)
        XCTAssertEqual(try squeezed.withExactTail(3).followKeys, 4)
        XCTAssertThrowsError(try squeezed.withFollowKeys(-1, minKeep: 0))
    }

    func testTheUnsureStepsRuleIsReadAndItsOverrideCheckedAsPythonChecksIt() throws {
        // decoder.exact_below: a selecting decode step less sure than p runs again through the exact method (the real
        // export's squeezed artifact: settings.DEFAULT_EXACT_BELOW 0.2; full attention: null; older manifests: absent)
        let text = try Golden.text("qa_decoder_manifest.json")
        let exported = "\"exact_below\": 0.2,"
        XCTAssertNotNil(text.range(of: exported))
        func withBelow(_ value: String) -> String { replacingFirst(text, exported, "\"exact_below\": \(value),") }
        func below(_ manifest: String) throws -> Double { try DecoderManifest.parse(manifest).artifacts[0].contract.exactBelow }
        XCTAssertEqual(try DecoderManifest.parse(text).artifacts.map(\.contract.exactBelow), [0.2, 0])
        XCTAssertEqual(try below(replacingFirst(text, exported, "")), 0)
        XCTAssertEqual(try below(withBelow("null")), 0)
        XCTAssertEqual(try below(withBelow("0.5")), 0.5)
        XCTAssertEqual(thrownMessage(DecoderError.self) { try DecoderManifest.parse(withBelow("-0.1")) },
                       "decoder.exact_below: expected a probability from 0 to below 1, found -0.1")
        XCTAssertEqual(thrownMessage(DecoderError.self) { try DecoderManifest.parse(withBelow("1")) },
                       "decoder.exact_below: expected a probability from 0 to below 1, found 1.0")
        let m = thrownMessage(DecoderError.self) { try DecoderManifest.parse(withBelow("\"0.2\"")) }
        XCTAssertTrue(m.contains("exact_below") && !m.contains("\n"), m)
        // re-runs without the exact method (exact_tail 0) are a broken export
        let noExact = replacingFirst(replacingFirst(text, "\"exact_tail\": 32,", "\"exact_tail\": 0,"),
                                     "\"exact_decode\": 14,", "\"exact_decode\": 0,")
        XCTAssertEqual(thrownMessage(DecoderError.self) { try DecoderManifest.parse(noExact) },
                       "decoder.exact_below: re-running unsure decode steps needs the artifact's exact method, which it " +
                       "lacks (exact_tail 0); re-export the decoder")
        // a caller's p (Python: decoder_session.exact_below_of): everything else kept, Python's words when refused
        let manifest = try DecoderManifest.parse(text)
        let squeezed = manifest.artifacts[0].contract, full = manifest.artifacts[1].contract
        XCTAssertEqual(try squeezed.withExactBelow(0.35).exactBelow, 0.35)
        XCTAssertEqual(try squeezed.withExactBelow(0.35).withExactBelow(0.2), squeezed)
        XCTAssertEqual(try squeezed.withExactBelow(0.35).withExactDecode(3).exactBelow, 0.35)
        XCTAssertEqual(try full.withExactBelow(0), full)
        XCTAssertEqual(thrownMessage(DecoderError.self) { try squeezed.withExactBelow(1) },
                       "--exact-below must be a probability from 0 (off) to below 1; got 1.0")
        XCTAssertEqual(thrownMessage(DecoderError.self) { try full.withExactBelow(0.3) },
                       "--exact-below shapes Squeezed Attention's key selection and does nothing with a full-attention " +
                       "artifact (every key is attended); drop it or pick the squeezed artifact (--artifact-attention squeezed)")
        let withoutExact = try DecoderContract(attention: "squeezed", state: "io", kvBudget: 0.3, shapes: squeezed.shapes)
        XCTAssertEqual(thrownMessage(DecoderError.self) { try withoutExact.withExactBelow(0.3) },
                       "--exact-below 0.3 runs unsure decode steps again through the artifact's exact method, which this " +
                       "artifact lacks (exported with --exact-tail 0); re-export it with --exact-tail N or pass --exact-below 0")
        // the probability the rule reads: the softmax of the logits' top entry, in double precision
        XCTAssertEqual(GenerationLoop.topProbability([1, 1, -Float.infinity]), 0.5, accuracy: 1e-15)
        XCTAssertEqual(GenerationLoop.topProbability([0, 2, 0]), 1 / (1 + 2 * exp(-2.0)), accuracy: 1e-15)
    }

    func testTheAnswersOpeningIsReadAndItsOverrideCheckedAsPythonChecksIt() throws {
        // decoder.exact_decode: the decode steps of the answer's first N tokens run the exact method (the real export's
        // squeezed artifact: min(16, max_new) = 14; full attention: null; older manifests: absent)
        let text = try Golden.text("qa_decoder_manifest.json")
        let exported = "\"exact_decode\": 14,"
        XCTAssertNotNil(text.range(of: exported))
        func withOpening(_ value: String) -> String { replacingFirst(text, exported, "\"exact_decode\": \(value),") }
        func opening(_ manifest: String) throws -> Int { try DecoderManifest.parse(manifest).artifacts[0].contract.exactDecode }
        XCTAssertEqual(try DecoderManifest.parse(text).artifacts.map(\.contract.exactDecode), [14, 0])
        XCTAssertEqual(try opening(replacingFirst(text, exported, "")), 0)
        XCTAssertEqual(try opening(withOpening("null")), 0)
        XCTAssertEqual(try opening(withOpening("2")), 2)
        XCTAssertEqual(thrownMessage(DecoderError.self) { try DecoderManifest.parse(withOpening("-1")) },
                       "decoder.exact_decode: expected a whole number of tokens >= 0, found -1")
        for bad in ["\"4\"", "2.5", "true"] {
            let m = thrownMessage(DecoderError.self) { try DecoderManifest.parse(withOpening(bad)) }
            XCTAssertTrue(m.contains("decoder.exact_decode: expected an integer") && !m.contains("\n"), m)
        }
        // an opening without the exact method to run it (exact_tail 0) is a broken export
        let noExact = replacingFirst(text, "\"exact_tail\": 32,", "\"exact_tail\": 0,")
        XCTAssertEqual(thrownMessage(DecoderError.self) { try DecoderManifest.parse(noExact) },
                       "decoder.exact_decode: 14 exact decode steps need the exact method, which this artifact lacks " +
                       "(exact_tail 0); re-export the decoder")
        XCTAssertEqual(try opening(replacingFirst(replacingFirst(replacingFirst(noExact, exported, "\"exact_decode\": 0,"),
                                                                 "\"exact_below\": 0.2,", "\"exact_below\": 0,"),
                                                  "\"exact_head\": 32,", "\"exact_head\": 0,")), 0)

        // a caller's N (Python: decoder_session.exact_decode_of, GenerationLoop(exact_decode=...)): everything else kept
        let manifest = try DecoderManifest.parse(text)
        let squeezed = manifest.artifacts[0].contract, full = manifest.artifacts[1].contract
        XCTAssertEqual(try squeezed.withExactDecode(3).exactDecode, 3)
        XCTAssertEqual(try squeezed.withExactDecode(0).exactDecode, 0)
        XCTAssertEqual(try squeezed.withExactDecode(3).withExactDecode(14), squeezed)
        XCTAssertEqual(try squeezed.withExactDecode(3).withFollowKeys(2, minKeep: 0).exactDecode, 3)
        XCTAssertEqual(try squeezed.withExactTail(4).exactDecode, 14)
        XCTAssertEqual(try full.withExactDecode(0), full)
        // the shorter exact tail a caller runs keeps the method's width (its static shape) and the opening's method
        let short = try squeezed.withExactTail(0).withExactDecode(2)
        XCTAssertEqual([short.exactTail, short.exactWidth, short.exactDecode], [0, 32, 2])
        // one-line refusals, Python's words
        XCTAssertEqual(thrownMessage(DecoderError.self) { try squeezed.withExactDecode(-1) },
                       "--exact-decode must be a whole number of tokens >= 0; got -1")
        for n in [2, -1] {
            XCTAssertEqual(thrownMessage(DecoderError.self) { try full.withExactDecode(n) },
                           "--exact-decode shapes Squeezed Attention's key selection and does nothing with a full-attention " +
                           "artifact (every key is attended); drop it or pick the squeezed artifact (--artifact-attention squeezed)")
        }
        let withoutExact = try DecoderContract(attention: "squeezed", state: "io", kvBudget: 0.3, shapes: squeezed.shapes)
        XCTAssertEqual(thrownMessage(DecoderError.self) { try withoutExact.withExactDecode(3) },
                       "--exact-decode 3 runs the answer's first tokens through the artifact's exact method, which this " +
                       "artifact lacks (exported with --exact-tail 0); re-export it with --exact-tail N or pass --exact-decode 0")
        XCTAssertEqual(try withoutExact.withExactDecode(0).exactDecode, 0)
        XCTAssertThrowsError(try DecoderContract(attention: "squeezed", state: "io", kvBudget: 0.3, shapes: squeezed.shapes,
                                                 exactTail: 2, exactDecode: -1))
        // the exact tail a caller runs: 0 up to the method's width (Python: exact_tail_of)
        XCTAssertEqual(thrownMessage(DecoderError.self) { try squeezed.withExactTail(33) },
                       "--exact-tail must be a whole number of tokens from 0 to 32 for this artifact (its prefill_exact " +
                       "method's width; re-export with --exact-tail N for more); got 33")
        XCTAssertThrowsError(try squeezed.withExactTail(-1))
        XCTAssertTrue(thrownMessage(DecoderError.self) { try full.withExactTail(2) }.hasPrefix("--exact-tail shapes Squeezed Attention's"))
        // the method names the split plan looks for decode_exact_0 in: the manifest's methods
        XCTAssertEqual(squeezed.methodNames, ["prefill", "decode", "prefill_exact"])
        XCTAssertEqual(full.methodNames, ["prefill", "decode"])
    }

    func testTheExactHeadIsReadAndRefusedWithoutTheExactMethod() throws {
        // the export writes the host's default head (128), at most its max prompt (32: the whole prompt), for its
        // squeezed artifact, null for full attention
        let text = try Golden.text("qa_decoder_manifest.json")
        let exported = "\"exact_head\": 32,"
        XCTAssertNotNil(text.range(of: exported))
        XCTAssertEqual(try DecoderManifest.parse(text).artifacts.map(\.contract.exactHead), [32, 0])
        func head(_ value: String) throws -> Int {
            try DecoderManifest.parse(replacingFirst(text, exported, value)).artifacts[0].contract.exactHead
        }
        XCTAssertEqual(try head(""), 0)                              // manifests before the field: no head
        XCTAssertEqual(try head("\"exact_head\": null,"), 0)
        XCTAssertEqual(try head("\"exact_head\": 3,"), 3)
        XCTAssertEqual(thrownMessage(DecoderError.self) { _ = try head("\"exact_head\": -1,") },
                       "decoder.exact_head: expected a whole number of tokens >= 0, found -1")
        // a head without the exact method (exact_tail 0, opening and re-runs off) is a broken export
        let noExact = replacingFirst(replacingFirst(replacingFirst(text, "\"exact_tail\": 32,", "\"exact_tail\": 0,"),
                                                    "\"exact_decode\": 14,", "\"exact_decode\": 0,"),
                                     "\"exact_below\": 0.2,", "\"exact_below\": 0,")
        XCTAssertEqual(thrownMessage(DecoderError.self) { _ = try DecoderManifest.parse(noExact) },
                       "decoder.exact_head: 32 exact prompt tokens need the exact method, which this artifact lacks " +
                       "(exact_tail 0); re-export the decoder")
    }

    func testOutputTensorNamesAreReadWhereTheFormatRenamesOutputs() throws {
        // a Core ML function writes out_<name> (an input and an output of one function cannot share a name): the
        // manifest's output_tensors; other formats list none and keep the outputs' own names
        let text = try Golden.text("qa_decoder_manifest.json")
        let prefill = try XCTUnwrap(DecoderManifest.parse(text).artifacts[0].methods["prefill"])
        XCTAssertEqual(prefill.outputTensors, prefill.outputs)
        let outputs = "\"outputs\": ["
        let r = try XCTUnwrap(text.range(of: outputs))
        func renamed(_ tensors: String) -> String {
            text.replacingCharacters(in: r, with: "\"output_tensors\": \(tensors), " + outputs)
        }
        let coreml = try DecoderManifest.parse(renamed("[\"out_logits\", \"out_new_keys\", \"out_new_values\", \"out_follow_out\"]"))
        let method = try XCTUnwrap(coreml.artifacts[0].methods["prefill"])
        XCTAssertEqual(method.outputs, ["logits", "new_keys", "new_values", "follow_out"])
        XCTAssertEqual(method.outputTensors, ["out_logits", "out_new_keys", "out_new_values", "out_follow_out"])
        XCTAssertEqual(thrownMessage(DecoderError.self) { try DecoderManifest.parse(renamed("[\"out_logits\"]")) },
                       "the decoder manifest's method prefill lists 4 outputs and 1 output tensors; re-export the decoder")
    }
}
