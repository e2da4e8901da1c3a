// manifest.json of a `squeeze export decoder` directory (decoder_session.read_decoder_manifest / pick_artifact): the
// model's hashes (a pack must match them), the tokenizer section (file, chat framing, stop tokens) and the artifacts
// with their runtime contract (attention, state, shapes, KV budget) and the named inputs/outputs of each method.
// Missing or mistyped keys the app relies on throw DecoderError with one line naming the key. Port of
// DecoderManifest.kt (and of DecoderShapes, DecoderContract, DecoderTokenizerInfo, which Kotlin keeps in
// ContextPack.kt and Generation.kt).

public struct DecoderError: SqueezeError {
    public let message: String
    public init(_ message: String) { self.message = message }
}

/// The exported decoder's static shapes (the manifest's decoder.shapes).
public struct DecoderShapes: Equatable {
    public var maxContext: Int
    public var maxPrompt: Int
    public var maxNew: Int
    public var sinkTokens: Int
    public var window: Int
    public var maxClusters: Int
    public var maxKeep: Int

    public init(maxContext: Int, maxPrompt: Int, maxNew: Int, sinkTokens: Int, window: Int, maxClusters: Int, maxKeep: Int) {
        self.maxContext = maxContext
        self.maxPrompt = maxPrompt
        self.maxNew = maxNew
        self.sinkTokens = sinkTokens
        self.window = window
        self.maxClusters = maxClusters
        self.maxKeep = maxKeep
    }

    public var maxClustered: Int { maxContext - sinkTokens - window }

    public static func parse(_ j: JSONPath) throws -> DecoderShapes {
        DecoderShapes(maxContext: try j["max_context"].int(), maxPrompt: try j["max_prompt"].int(), maxNew: try j["max_new"].int(),
                      sinkTokens: try j["sink_tokens"].int(), window: try j["window"].int(),
                      maxClusters: try j["max_clusters"].int(), maxKeep: try j["max_keep"].int())
    }
}

/// The artifact's runtime contract (manifest artifacts[].decoder): attention, state handling, shapes, budget, the lookup
/// plan ("in-graph": one graph per step; "split": stage graphs with a CPU lookup between them, which GenerationLoop
/// does not run), the decode selection ("step": every decode step selects; "question", whose decode takes the rows the
/// prefill selected as held inputs, is not run by this app and is refused), the prompt's selection chunks
/// (prefill_rows, prefill_tail) and its exact tail (exact_tail: the question's last tokens, run as one `prefill_exact`
/// call over every fixed-context row, stages prefill_exact_<s> in the split plan; absent or null in older manifests: 0),
/// the answer's opening (exact_decode: the decode steps of the answer's first N tokens run the exact method instead of
/// decode, one token each: in-graph a 1-token prefill_exact call, split the one-token stages decode_exact_<s> where
/// exported, else prefill_exact_<s> padded; absent or null in older manifests and for full attention: 0),
/// the static shape every method declares for each of its inputs (a method may take a context input in another
/// shape than the pack's layout: prefill_exact takes the clustered tables per KV head; GenerationLoop.methodInputs),
/// and the inputs a method fixes (an input entry with a "value": the .onnx file's graph selector `branch`, 0 for
/// prefill/decode, 1 for prefill_exact, the file's second graph; the loop feeds exactly that tensor; fixedInputs), and
/// the followed keys (follow_keys, follow_min_keep; absent or null in older manifests and for full attention: 0), and
/// the unsure steps' re-run (exact_below p: a selecting decode step whose top token's softmax probability is below p
/// runs again through the exact method; absent or null in older manifests and for full attention: 0, never).
public struct DecoderContract: Equatable {
    public static let step = "step"
    public static let question = "question"
    public static let inGraph = "in-graph"
    public static let split = "split"

    /// "squeezed" or "full"
    public let attention: String
    /// "io" (the app keeps the KV cache: past_keys/past_values in, new_keys/new_values out) or "buffer" (the runtime does)
    public let state: String
    public let kvBudget: Double?
    public let shapes: DecoderShapes
    /// "in-graph" (null for full attention and absent in older manifests mean "in-graph") or "split"
    public let lookupPlan: String
    /// "step" (null for full attention and absent in older manifests mean "step"); "question" is refused
    public let decodeSelection: String
    /// The question's key selection (squeezed attention): prompt tokens per selection chunk before the tail
    /// (0 = one chunk) and the last tokens that select one at a time, as decode steps (absent or null: 0)
    public let prefillRows: Int
    public let prefillTail: Int
    /// method -> the token counts its `tokens` input takes as they are (a dynamic axis in the manifest)
    public let tokenRanges: [String: ClosedRange<Int>]
    /// Prompt tokens the loop runs through `prefill_exact` (the question's exact tail): the manifest's exact_tail, or a
    /// caller's shorter one (withExactTail); 0 = none (absent or null: 0)
    public let exactTail: Int
    /// The `prefill_exact` method's static token width, the manifest's exact_tail (withExactTail keeps it): 0 = the
    /// artifact has no exact method. A call of fewer tokens is padded to it unless the method's tokens are dynamic.
    public let exactWidth: Int
    /// The answer's opening: the decode steps of the answer's first exactDecode tokens (the step that feeds a token is
    /// its step) call the exact method instead of decode, with that one token (no keep_keys reduction, no followed
    /// rows fed; its pointer is the next step's). The manifest's exact_decode (absent or null: 0), or a caller's
    /// (withExactDecode, as Python's GenerationLoop(exact_decode=...)). Needs the exact method (exactWidth > 0).
    public let exactDecode: Int
    /// Unsure steps: a selecting decode step whose logits give their top token a softmax probability below exactBelow
    /// calls the exact method once more with the same token and cache_len, and that call picks the token. The
    /// manifest's exact_below (absent or null: 0, never), or a caller's (withExactBelow). Needs the exact method.
    public let exactBelow: Double
    /// The question's first exactHead tokens run `prefill_exact` too, before the rest (a question written before a long
    /// instruction keeps its words exact): the manifest's exact_head (absent or null: 0), or a caller's (withExactHead).
    /// Needs the exact method (exactWidth > 0); the loop calls it in pieces of exactWidth tokens.
    public let exactHead: Int
    /// The names of the artifact's methods (the manifest's decoder.methods keys; the split plan's stage graphs
    /// `<method>_<s>`): the split plan runs the answer's opening as decode_exact_<s> where decode_exact_0 is one.
    public let methodNames: Set<String>
    /// method -> input name -> the shape the method declares (inputs without a dynamic axis)
    public let inputShapes: [String: [String: [Int]]]
    /// method -> input name -> the tensor the method fixes for it (its manifest entry's "value": the .onnx file's graph
    /// selector `branch`), fed by every call of the method whatever the pack or cache holds
    public let fixedInputs: [String: [String: DecoderTensor]]
    /// Followed keys F of the graph (export --follow-keys; squeezed attention, both plans): every call points to the
    /// clustered rows after the F its last token weighed most (in-graph: output follow_out; split: each stage's
    /// follow_weights, ranked on the CPU), and a decode step attends them besides keep_keys - F selected ones
    /// (in-graph: input follow_rows_<layer>). 0 = none.
    public let followKeys: Int
    /// The fewest kept keys (the pack's keep_keys) at which the loop follows the graph's F keys; below it the loop
    /// follows none in the same graph (follow_rows -1, keep_keys as is): the host gates its default F the same way.
    public let followMinKeep: Int

    public init(attention: String, state: String, kvBudget: Double?, shapes: DecoderShapes,
                lookupPlan: String = DecoderContract.inGraph,
                decodeSelection: String = DecoderContract.step, prefillRows: Int = 0, prefillTail: Int = 0,
                tokenRanges: [String: ClosedRange<Int>] = [:], exactTail: Int = 0,
                inputShapes: [String: [String: [Int]]] = [:], fixedInputs: [String: [String: DecoderTensor]] = [:],
                followKeys: Int = 0, followMinKeep: Int = 0, exactDecode: Int = 0, exactWidth: Int? = nil,
                methodNames: Set<String> = [], exactBelow: Double = 0, exactHead: Int = 0) throws {
        let exactWidth = exactWidth ?? exactTail
        if prefillRows < 0 || prefillTail < 0 {
            throw DecoderError("decoder.prefill_rows / prefill_tail: expected whole numbers >= 0, found \(prefillRows) / \(prefillTail)")
        }
        if exactTail < 0 { throw DecoderError("decoder.exact_tail: expected a whole number of tokens >= 0, found \(exactTail)") }
        if exactWidth < 0 || exactTail > exactWidth {
            throw DecoderError("decoder.exact_tail: the loop's exact tail \(exactTail) exceeds the prefill_exact method's width \(exactWidth)")
        }
        if exactDecode < 0 { throw DecoderError("decoder.exact_decode: expected a whole number of tokens >= 0, found \(exactDecode)") }
        if exactDecode > 0 && exactWidth == 0 {
            throw DecoderError("decoder.exact_decode: \(exactDecode) exact decode steps need the exact method, which this artifact " +
                               "lacks (exact_tail 0); re-export the decoder")
        }
        if !(exactBelow >= 0 && exactBelow < 1) {
            throw DecoderError("decoder.exact_below: expected a probability from 0 to below 1, found \(exactBelow)")
        }
        if exactBelow > 0 && exactWidth == 0 {
            throw DecoderError("decoder.exact_below: re-running unsure decode steps needs the artifact's exact method, which it " +
                               "lacks (exact_tail 0); re-export the decoder")
        }
        if exactHead < 0 { throw DecoderError("decoder.exact_head: expected a whole number of tokens >= 0, found \(exactHead)") }
        if exactHead > 0 && attention == "squeezed" && exactWidth == 0 {
            throw DecoderError("decoder.exact_head: \(exactHead) exact prompt tokens need the exact method, which this artifact " +
                               "lacks (exact_tail 0); re-export the decoder")
        }
        if followKeys < 0 { throw DecoderError("decoder.follow_keys: expected an integer >= 0, found \(followKeys)") }
        if followMinKeep < 0 { throw DecoderError("decoder.follow_min_keep: expected an integer >= 0, found \(followMinKeep)") }
        if attention != "squeezed" && attention != "full" { throw DecoderError("decoder.attention: expected squeezed or full, found \(attention)") }
        if state != "io" && state != "buffer" { throw DecoderError("decoder.state: expected io or buffer, found \(state)") }
        if attention == "squeezed" && kvBudget == nil { throw DecoderError("decoder.kv_budget: missing for squeezed attention") }
        if lookupPlan != DecoderContract.inGraph && lookupPlan != DecoderContract.split {
            throw DecoderError("decoder.lookup_plan: expected in-graph or split, found \(lookupPlan)")
        }
        if lookupPlan == DecoderContract.split && (attention != "squeezed" || state != "io") {
            throw DecoderError("decoder.lookup_plan: the split plan is squeezed attention with state io, found \(attention) / \(state)")
        }
        if decodeSelection == DecoderContract.question {
            throw DecoderError("decoder.decode_selection: this app runs per-step selection only, found question; " +
                               "export the decoder with --decode-selection step")
        }
        if decodeSelection != DecoderContract.step {
            throw DecoderError("decoder.decode_selection: expected step or question, found \(decodeSelection)")
        }
        self.attention = attention
        self.state = state
        self.kvBudget = kvBudget
        self.shapes = shapes
        self.lookupPlan = lookupPlan
        self.decodeSelection = decodeSelection
        self.prefillRows = prefillRows
        self.prefillTail = prefillTail
        self.tokenRanges = tokenRanges
        self.exactTail = exactTail
        self.exactWidth = exactWidth
        self.exactDecode = exactDecode
        self.exactBelow = exactBelow
        self.exactHead = exactHead
        self.methodNames = methodNames.union(inputShapes.keys).union(tokenRanges.keys).union(fixedInputs.keys)
        self.inputShapes = inputShapes
        self.fixedInputs = fixedInputs
        self.followKeys = followKeys
        self.followMinKeep = followMinKeep
    }

    /// This contract with another exact tail (a caller's shorter one, as Python's GenerationLoop(exact_tail=...)): from 0
    /// to the prefill_exact method's width (exactWidth, which stays the method's static width).
    public func withExactTail(_ exactTail: Int) throws -> DecoderContract {
        if attention == "full" && exactTail != 0 {
            throw DecoderContract.refusedForFull("--exact-tail")
        }
        if exactTail < 0 || exactTail > exactWidth {
            throw DecoderError("--exact-tail must be a whole number of tokens from 0 to \(exactWidth) for this artifact (its " +
                               "prefill_exact method's width; re-export with --exact-tail N for more); got \(exactTail)")
        }
        return try copy(exactTail: exactTail, followKeys: followKeys, followMinKeep: followMinKeep, exactDecode: exactDecode)
    }

    /// This contract with another answer's opening (a caller's N, as Python's GenerationLoop(exact_decode=...) and
    /// decoder_session.exact_decode_of): N >= 0 decode steps run the exact method. Refused in one line: N != 0 for a
    /// full-attention artifact (it selects nothing), N < 0, N > 0 for an artifact without the exact method (exported
    /// with --exact-tail 0). The manifest's own exact_decode needs no call.
    public func withExactDecode(_ exactDecode: Int) throws -> DecoderContract {
        if attention == "full" && exactDecode != 0 {
            throw DecoderContract.refusedForFull("--exact-decode")
        }
        if exactDecode < 0 { throw DecoderError("--exact-decode must be a whole number of tokens >= 0; got \(exactDecode)") }
        if exactDecode > 0 && exactWidth == 0 {
            throw DecoderContract.needsExactMethod("--exact-decode", "\(exactDecode)", "runs the answer's first tokens")
        }
        return try copy(exactTail: exactTail, followKeys: followKeys, followMinKeep: followMinKeep, exactDecode: exactDecode)
    }

    /// This contract with another exact head (a caller's H, as Python's GenerationLoop(exact_head=...) and
    /// decoder_session.exact_head_of): the question's first H >= 0 tokens run the exact method before the rest. Refused
    /// in one line: H != 0 for a full-attention artifact (it selects nothing), H < 0, H > 0 for an artifact without the
    /// exact method (exported with --exact-tail 0). The manifest's own exact_head needs no call.
    public func withExactHead(_ exactHead: Int) throws -> DecoderContract {
        if attention == "full" && exactHead != 0 {
            throw DecoderContract.refusedForFull("--exact-head")
        }
        if exactHead < 0 { throw DecoderError("--exact-head must be a whole number of tokens >= 0; got \(exactHead)") }
        if exactHead > 0 && exactWidth == 0 {
            throw DecoderContract.needsExactMethod("--exact-head", "\(exactHead)", "runs the prompt's first tokens")
        }
        return try copy(exactTail: exactTail, followKeys: followKeys, followMinKeep: followMinKeep, exactDecode: exactDecode,
                        exactHead: exactHead)
    }

    /// This contract with another re-run rule for unsure steps (a caller's p, as Python's GenerationLoop(exact_below=...)
    /// and decoder_session.exact_below_of): a selecting decode step whose top token is less likely than p runs again
    /// through the exact method. Refused in one line: p != 0 for a full-attention artifact, p outside [0, 1), p > 0 for
    /// an artifact without the exact method. The manifest's own exact_below needs no call.
    public func withExactBelow(_ p: Double) throws -> DecoderContract {
        if attention == "full" && p != 0 {
            throw DecoderContract.refusedForFull("--exact-below")
        }
        if !(p >= 0 && p < 1) { throw DecoderError("--exact-below must be a probability from 0 (off) to below 1; got \(p)") }
        if p > 0 && exactWidth == 0 {
            throw DecoderContract.needsExactMethod("--exact-below", "\(p)", "runs unsure decode steps again")
        }
        return try copy(exactTail: exactTail, followKeys: followKeys, followMinKeep: followMinKeep, exactDecode: exactDecode,
                        exactBelow: p)
    }

    /// An option that `does` something through the exact method this artifact lacks, refused in one line (Python:
    /// decoder_session._needs_exact_method).
    static func needsExactMethod(_ flag: String, _ value: String, _ does: String) -> DecoderError {
        DecoderError("\(flag) \(value) \(does) through the artifact's exact method, which this artifact lacks (exported with " +
                     "--exact-tail 0); re-export it with --exact-tail N or pass \(flag) 0")
    }

    /// A prompt-selection option given for a full-attention artifact (it selects nothing) is a one-line error, not silently
    /// ignored (Python: decoder_session._refuse_for_full).
    static func refusedForFull(_ flag: String) -> DecoderError {
        DecoderError("\(flag) shapes Squeezed Attention's key selection and does nothing with a full-attention artifact (every " +
                     "key is attended); drop it or pick the squeezed artifact (--artifact-attention squeezed)")
    }

    /// This contract with other followed keys (a graph exported with another F, or its F gated off for every pack by a
    /// follow_min_keep above any keep_keys: the goldens' runs give Python's loop such contracts).
    public func withFollowKeys(_ followKeys: Int, minKeep: Int) throws -> DecoderContract {
        try copy(exactTail: exactTail, followKeys: followKeys, followMinKeep: minKeep, exactDecode: exactDecode)
    }

    private func copy(exactTail: Int, followKeys: Int, followMinKeep: Int, exactDecode: Int,
                      exactBelow: Double? = nil, exactHead: Int? = nil) throws -> DecoderContract {
        try DecoderContract(attention: attention, state: state, kvBudget: kvBudget, shapes: shapes, lookupPlan: lookupPlan,
                            decodeSelection: decodeSelection, prefillRows: prefillRows, prefillTail: prefillTail,
                            tokenRanges: tokenRanges, exactTail: exactTail, inputShapes: inputShapes, fixedInputs: fixedInputs,
                            followKeys: followKeys, followMinKeep: followMinKeep, exactDecode: exactDecode, exactWidth: exactWidth,
                            methodNames: methodNames, exactBelow: exactBelow ?? self.exactBelow,
                            exactHead: exactHead ?? self.exactHead)
    }

    public var split: Bool { lookupPlan == DecoderContract.split }

    /// Token slots a call of `method` with `n` real tokens feeds (decoder_session.token_width): n (raised to the
    /// range's minimum) where the manifest gives the method's tokens a dynamic axis, else `fixed` (the rest padded).
    public func tokenWidth(method: String, n: Int, fixed: Int) -> Int {
        guard let range = tokenRanges[method], n <= range.upperBound else { return fixed }
        return max(n, range.lowerBound)
    }

    /// The most tokens one call of `method` takes (decoder_session.piece_width): its dynamic axis's max where the
    /// manifest gives one (in-graph prefill_exact: max_prompt, so an exact prompt is one call), else `fixed`.
    public func pieceWidth(method: String, fixed: Int) -> Int {
        tokenRanges[method]?.upperBound ?? fixed
    }

    /// methods.<m>.inputs[tokens].dynamic["0"] = [min, max] (absent: static shapes, older manifests)
    static func tokenRanges(_ j: JSONPath) throws -> [String: ClosedRange<Int>] {
        guard let methods = try j.opt("methods") else { return [:] }
        var ranges: [String: ClosedRange<Int>] = [:]
        for name in try methods.obj().keys {
            let tokens = try methods[name]["inputs"].list().first { (try? $0["name"].string()) == "tokens" }
            if let bounds = try tokens?.opt("dynamic")?.opt("0")?.intArray() {
                guard bounds.count == 2, bounds[0] >= 0, bounds[0] <= bounds[1] else {
                    throw DecoderError("decoder.methods.\(name): the tokens input's dynamic axis is \(bounds), expected [min, max] " +
                                       "with 0 <= min <= max; re-export the decoder")
                }
                ranges[name] = bounds[0]...bounds[1]
            }
        }
        return ranges
    }

    /// methods.<m>.inputs[].shape of the inputs without a dynamic axis (absent methods: none)
    static func inputShapes(_ j: JSONPath) throws -> [String: [String: [Int]]] {
        guard let methods = try j.opt("methods") else { return [:] }
        var shapes: [String: [String: [Int]]] = [:]
        for name in try methods.obj().keys {
            var declared: [String: [Int]] = [:]
            for input in try methods[name]["inputs"].list() where try input.opt("dynamic") == nil {
                declared[try input["name"].string()] = try input["shape"].intArray()
            }
            shapes[name] = declared
        }
        return shapes
    }

    /// methods.<m>.inputs[] with a "value" (absent methods or none: empty): the tensors the methods fix
    static func fixedInputs(_ j: JSONPath) throws -> [String: [String: DecoderTensor]] {
        guard let methods = try j.opt("methods") else { return [:] }
        var fixed: [String: [String: DecoderTensor]] = [:]
        for name in try methods.obj().keys {
            var values: [String: DecoderTensor] = [:]
            for input in try methods[name]["inputs"].list() where try input.has("value") {
                values[try input["name"].string()] = try fixedValue(method: name, entry: input)
            }
            if !values.isEmpty { fixed[name] = values }
        }
        return fixed
    }

    /// An input entry's "value" (a number or nested arrays of numbers, row-major) as a tensor of the entry's shape and
    /// dtype (int64 and int32 as .int64: runtimes narrow to the dtype they declare; float32).
    public static func fixedValue(method: String, entry: JSONPath) throws -> DecoderTensor {
        let name = try entry["name"].string()
        let shape = try entry["shape"].intArray()
        let dtype = try entry["dtype"].string()
        var values: [JSONPath] = []
        func flatten(_ v: JSONPath) throws {
            if case .array = v.value { for item in try v.list() { try flatten(item) } } else { values.append(v) }
        }
        try flatten(try entry["value"])
        let count = shape.reduce(1, *)
        if values.count != count {
            throw DecoderError("decoder.methods.\(method): input \(name) fixes \(values.count) values for shape \(shape); " +
                               "re-export the decoder")
        }
        switch dtype {
        case "int64", "int32": return .int64(try Int64Tensor(try values.map { try $0.long() }, shape: shape))
        case "float32": return .float32(try Float32Tensor(try values.map { Float(try $0.double()) }, shape: shape))
        default:
            throw DecoderError("decoder.methods.\(method): input \(name) fixes a \(dtype) value, which the app does not feed " +
                               "(int64, int32, float32)")
        }
    }

    public static func parse(_ j: JSONPath) throws -> DecoderContract {
        do {
            // a count of tokens or keys: 0 where null or absent (as below)
            func count(_ key: String) throws -> Int { try j.opt(key).flatMap { $0.isNull ? nil : try $0.int() } ?? 0 }
            return try DecoderContract(attention: try j["attention"].string(), state: try j["state"].string(),
                                       kvBudget: try j.opt("kv_budget").flatMap { $0.isNull ? nil : try $0.double() },
                                       shapes: try DecoderShapes.parse(j["shapes"]),
                                       // null for full attention, absent in older manifests (also below)
                                       lookupPlan: try j.opt("lookup_plan")?.stringOrNull() ?? DecoderContract.inGraph,
                                       decodeSelection: try j.opt("decode_selection")?.stringOrNull() ?? DecoderContract.step,
                                       prefillRows: try count("prefill_rows"), prefillTail: try count("prefill_tail"),
                                       tokenRanges: try tokenRanges(j), exactTail: try count("exact_tail"),
                                       inputShapes: try inputShapes(j), fixedInputs: try fixedInputs(j),
                                       followKeys: try count("follow_keys"), followMinKeep: try count("follow_min_keep"),
                                       exactDecode: try count("exact_decode"),
                                       methodNames: Set(try j.opt("methods")?.obj().keys ?? []),
                                       // likewise: 0, never
                                       exactBelow: try j.opt("exact_below").flatMap { $0.isNull ? nil : try $0.double() } ?? 0,
                                       exactHead: try count("exact_head"))
        } catch let e as JSONError {
            throw DecoderError("the decoder manifest is not usable (\(e.message)); re-export the decoder")
        }
    }
}

/// The manifest's "tokenizer" section: the tokenizer file, the chat framing and the stop tokens.
public struct DecoderTokenizerInfo: Equatable {
    public let file: String
    public let prefix: String
    public let join: String
    public let suffix: String
    public let stopTokenIds: Set<Int>
    /// The file's sha256 (manifests since 2026-12-06; older ones have none and are not checked).
    public let sha256: String?

    public init(file: String, prefix: String, join: String, suffix: String, stopTokenIds: Set<Int>, sha256: String? = nil) {
        self.file = file
        self.prefix = prefix
        self.join = join
        self.suffix = suffix
        self.stopTokenIds = stopTokenIds
        self.sha256 = sha256
    }

    public static func parse(_ j: JSONPath) throws -> DecoderTokenizerInfo {
        do {
            let chat = try j["chat"]
            return DecoderTokenizerInfo(file: try j["file"].string(), prefix: try chat["prefix"].string(), join: try chat["join"].string(),
                                        suffix: try chat["suffix"].string(), stopTokenIds: Set(try j["stop_token_ids"].intArray()),
                                        sha256: try j.opt("sha256")?.stringOrNull())
        } catch let e as JSONError {
            throw DecoderError("the decoder manifest's tokenizer section is not usable (\(e.message)); re-export the decoder")
        }
    }
}

/// One exported method ("prefill", "decode", ...): its inputs in the order the program takes them, its outputs' names.
public struct DecoderMethod: Equatable {
    public let name: String
    public let inputs: [TensorInfo]
    public let outputs: [String]
    /// The outputs' tensor names in the file, in the order of `outputs`: the same names, except where the format
    /// renames them (a Core ML function writes `out_<name>`: an input and an output of one function cannot share one).
    public let outputTensors: [String]

    public init(name: String, inputs: [TensorInfo], outputs: [String], outputTensors: [String]? = nil) {
        self.name = name
        self.inputs = inputs
        self.outputs = outputs
        self.outputTensors = outputTensors ?? outputs
    }
}

public struct DecoderArtifact {
    public let format: String
    public let file: String
    public let sha256: String?
    public let bytes: Int64?
    public let runtime: String?
    public let contract: DecoderContract
    /// methods by name; methodNames keeps the manifest's order
    public let methods: [String: DecoderMethod]
    public let methodNames: [String]
    /// "pass", "fail", "not run", ... as verification.status says; nil if absent
    public let verificationStatus: String?
    /// A .pte's delegate ("xnnpack", "coreml": export --pte-backend); nil for other formats and older manifests
    public var pteBackend: String? = nil

    /// A .pte delegated to Core ML (export --pte-backend coreml): ExecuTorch runs it on Apple devices only (this app
    /// runs it with the backend_coreml library linked; the Android app passes it over).
    public var appleOnly: Bool { Artifact.isAppleOnly(container: format, pteBackend: pteBackend) }
}

public struct DecoderManifest {
    /// The decoder manifest's schema this version reads (decoder_session.SCHEMA). 2: the clustered context rows are two
    /// inputs per layer, clustered_keys_l / clustered_values_l (1: one clustered_kv_l of [key | value] rows).
    public static let schema = "squeeze-mobile/decoder-manifest/2"
    /// Any version's decoder manifest (telling an export directory's kind; `schema` is the one this reads).
    public static let schemaPrefix = "squeeze-mobile/decoder-manifest/"

    public let schema: String
    public let modelName: String?
    public let weightsSha256: String?
    public let tokenizerSha256: String?
    public let numLayers: Int
    public let numKvHeads: Int
    public let headDim: Int
    public let tokenizer: DecoderTokenizerInfo
    public let artifacts: [DecoderArtifact]

    /// The first artifact of format ("onnx", "pte", ...), attention ("squeezed", "full") and lookup plan ("in-graph",
    /// "split"); nil = any. (A .pte delegated to Core ML runs here: manifest order, as Python's pick_artifact on Apple
    /// platforms; the Android core tries it last.)
    public func pick(format: String? = nil, attention: String? = nil, plan: String? = nil) throws -> DecoderArtifact {
        let usable = artifacts.filter {
            (format == nil || $0.format == format) && (attention == nil || $0.contract.attention == attention) &&
                (plan == nil || $0.contract.lookupPlan == plan)
        }
        guard let first = usable.first else {
            let formats = Array(Set(artifacts.map(\.format))).sorted().joined(separator: ", ")
            let what = [format, attention, plan.map { "\($0)-plan" }].compactMap { $0 }.joined(separator: " ")
            throw DecoderError("the export holds no \(what.isEmpty ? "" : what + " ")decoder artifact (it has: " +
                "\(formats.isEmpty ? "none" : formats)); pick one of those or export it")
        }
        return first
    }

    public static func parse(_ text: String) throws -> DecoderManifest { try parse(Array(text.utf8)) }

    public static func parse(_ bytes: [UInt8]) throws -> DecoderManifest {
        do {
            return try fromJson(JSONPath(try Json.parse(bytes), path: "manifest"))
        } catch let e as JSONError {
            throw DecoderError("the decoder manifest is not usable (\(e.message)); re-export the decoder")
        }
    }

    /// A file the manifest names must lie in the export directory (Manifest.isPlainFileName): a path would make the app
    /// open any file its name reaches.
    private static func plainFileName(_ j: JSONPath) throws -> String {
        let name = try j.string()
        if !Manifest.isPlainFileName(name) {
            throw DecoderError("\(j.path): \"\(name)\" is not a plain file name inside the export directory; re-export the decoder")
        }
        return name
    }

    private static func fromJson(_ root: JSONPath) throws -> DecoderManifest {
        let model = try root["model"]
        var isList = false
        if case .array? = try root.opt("artifacts")?.value { isList = true }
        if try model.opt("kind")?.stringOrNull() != "decoder" || !isList {
            throw DecoderError("the manifest does not describe an exported decoder; export one with `squeeze export decoder`")
        }
        let schema = try root.opt("schema")?.value
        if schema != .string(DecoderManifest.schema) {
            let found: String // as Python's repr
            switch schema {
            case .string(let s)?: found = "'\(s)'"
            case .int(let v)?: found = "\(v)"
            case .double(let v)?: found = "\(v)"
            case .bool(let v)?: found = v ? "True" : "False"
            case nil, .null?: found = "None"
            default: found = "an array or object"
            }
            throw DecoderError("the manifest was written by another version of squeeze-mobile (schema \(found), this " +
                               "version reads '\(DecoderManifest.schema)'); re-export the decoder into a fresh directory")
        }
        let config = try model["config"]
        // records of artifacts that were not produced have no file (and no decoder section)
        let records = try root["artifacts"].list().filter { a in
            guard case .object = a.value, let file = try a.opt("file"), !file.isNull, case .string = file.value else { return false }
            return try a.has("decoder")
        }
        let artifacts = try records.map { a -> DecoderArtifact in
            let d = try a["decoder"]
            let methodsJson = try d["methods"]
            var methods: [String: DecoderMethod] = [:]
            let names = try methodsJson.obj().keys
            for name in names {
                let m = try methodsJson[name]
                methods[name] = DecoderMethod(
                    name: name,
                    inputs: try m["inputs"].list().map { TensorInfo(name: try $0["name"].string(), shape: try $0["shape"].intArray(),
                                                                    dtype: try $0["dtype"].string(), layout: nil) },
                    outputs: try m["outputs"].list().map { try $0.string() },
                    outputTensors: try m.opt("output_tensors").flatMap { $0.isNull ? nil : try $0.list().map { try $0.string() } })
                if methods[name]!.outputTensors.count != methods[name]!.outputs.count {
                    throw DecoderError("the decoder manifest's method \(name) lists \(methods[name]!.outputs.count) outputs and " +
                                       "\(methods[name]!.outputTensors.count) output tensors; re-export the decoder")
                }
            }
            return DecoderArtifact(
                format: try a["format"].string(), file: try plainFileName(a["file"]), sha256: try a.opt("sha256")?.stringOrNull(),
                bytes: try a.opt("bytes").flatMap { $0.isNull ? nil : try $0.long() }, runtime: try a.opt("runtime")?.stringOrNull(),
                contract: try DecoderContract.parse(d), methods: methods, methodNames: names,
                verificationStatus: try a.opt("verification").flatMap { $0.isNull ? nil : try $0.opt("status")?.stringOrNull() },
                pteBackend: try a.opt("pte_backend")?.stringOrNull())
        }
        let tokenizer = try DecoderTokenizerInfo.parse(root["tokenizer"])
        _ = try plainFileName(root["tokenizer"]["file"])
        return DecoderManifest(
            schema: DecoderManifest.schema, modelName: try model.opt("name")?.stringOrNull(), weightsSha256: try model.opt("weights_sha256")?.stringOrNull(),
            tokenizerSha256: try model.opt("tokenizer_sha256")?.stringOrNull(), numLayers: try config["num_layers"].int(),
            numKvHeads: try config["num_kv_heads"].int(), headDim: try config["head_dim"].int(),
            tokenizer: tokenizer, artifacts: artifacts)
    }
}
