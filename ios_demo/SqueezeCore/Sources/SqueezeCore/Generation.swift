// The generation loop over an exported decoder (squeezed_attention/decoder_session.py GenerationLoop), runtime-free:
// the app gives a DecoderRuntime (ExecuTorch, ... in the app), this file runs the call sequence the decoder manifest
// documents: `prefill` once with the question (n_tokens = its length, cache_len = 0; padded to max_prompt unless the
// method's tokens input has a dynamic axis: then the question's ids as they are), then
// `decode` one token at a time (cache_len = tokens so far); greedy argmax; stop at the manifest's stop tokens. A contract
// with an exact prompt tail (exact_tail > 0: a third method `prefill_exact` over every fixed-context row) runs the
// question's last exact_tail tokens as one `prefill_exact` call after the tokens before them (GenerationLoop.prompt).
// The answer's opening (contract exact_decode N, or a caller's: DecoderContract.withExactDecode): the decode steps of
// the answer's first N tokens attend every fixed-context row, as the prompt's exact tail does: in-graph a 1-token
// `prefill_exact` call (its token axis is dynamic), split the one-token stages `decode_exact_<s>` where the artifact
// has them, else `prefill_exact_<s>` padded to its width; later steps call `decode` (GenerationLoop.exactMethod), and
// one whose logits leave its top token less likely than the contract's exact_below (DecoderContract.withExactBelow)
// calls that exact method once more with the same token and cache_len, as an opening step, whose logits are kept.
// The split lookup plan runs each step as stage graphs with the CPU lookup (KeptRows) between them. With
// explicit cache I/O (state "io", ONNX) the loop keeps the cache and writes each step's new_keys/new_values at
// cache_len; with state held in the runtime ("buffer", .pte) the runtime does. An input a method's manifest entry fixes
// ("value": the .onnx file's graph selector `branch`, 0 for prefill/decode, 1 for prefill_exact, the file's second
// graph) is fed exactly that value by every call of the method (DecoderContract.fixedInputs). A squeezed decoder with
// followed keys (contract follow_keys F) returns with every call where its last token points the next step (in-graph:
// follow_out; split: the stages' follow_weights, ranked on the CPU); each decode step after the prompt selects F keys
// fewer and attends those rows besides (follow_rows_<layer>; split: written into the lookup's free slots), unless the
// pack keeps fewer keys than follow_min_keep (then the same graph runs without: follow_rows -1, keep_keys as is).
// Port of Generation.kt (DocumentQa, the question/answer layer on top, is DocumentQa.swift).
import Foundation

/// The exported decoder in its runtime: named inputs in, named outputs out (logits, and new_keys/new_values).
public protocol DecoderRuntime: AnyObject {
    /// Shown on screen, e.g. "ExecuTorch (XNNPACK)".
    var name: String { get }
    func run(method: String, inputs: [String: DecoderTensor]) throws -> [String: DecoderTensor]
}

/// What the lookup keeps of a pack's clustered keys for a KV budget (pack_arrays.keep_fraction_for_kv_budget).
public enum KvBudget {
    /// The key centroids and value centroids the lookup reads, as a fraction of the KV cache.
    public static func centroidCost(centroidFraction: Double, headDim: Int) -> Double {
        2 * centroidFraction * Double(headDim + 2) / (4.0 * Double(headDim))
    }

    public static func keepFraction(kvBudget: Double, centroidFraction: Double, headDim: Int) throws -> Double {
        let cost = centroidCost(centroidFraction: centroidFraction, headDim: headDim)
        let keep = kvBudget - cost
        if keep <= 0 {
            throw DecoderError("a KV budget of \(kvBudget) does not even cover the centroids (\(String(format: "%.4f", cost)) " +
                "of the KV cache); use a larger --kv-budget")
        }
        return keep
    }
}

/// Tokens of one answer, the logits they were chosen from, and how long prefill and decode took.
public struct GenerationOutput {
    public let tokens: [Int]
    public let logits: [[Float]]
    public let prefillNanos: Int64
    public let decodeNanos: Int64
    public let decodeSteps: Int
    /// Of those, the answer's opening: steps that ran the exact method (min(decodeSteps, the loop's exactDecode)).
    public var exactSteps = 0
    /// Time in the split plan's CPU lookup (KeptRows between stage graphs); 0 for the in-graph plan.
    public var lookupNanos: Int64 = 0
    /// Whether the caller stopped the answer early (greedy's cancelled: the screen's Stop).
    public var cancelled = false
    /// The decode steps (0-based) that ran again through the exact method (contract exact_below).
    public var rerunAt: [Int] = []

    public var decodeTokensPerSecond: Double { decodeNanos > 0 ? Double(decodeSteps) / (Double(decodeNanos) / 1e9) : 0 }
}

/// The call sequence of the runtime contract over a DecoderRuntime (GenerationLoop). One thread.
public final class GenerationLoop {
    public let runtime: DecoderRuntime
    public let contract: DecoderContract
    public let pack: ContextPack
    public let contextInputs: NamedTensors
    public let shapes: DecoderShapes
    /// Clustered keys the in-graph lookup keeps (squeezed attention; nil for full).
    public let keepKeys: Int?
    /// Followed keys the graph takes and returns (the contract's follow_keys; 0 for full attention): with them the
    /// context inputs carry next_rows_<layer> and every in-graph call is fed follow_rows_<layer>.
    public let graphFollow: Int
    /// Followed keys the loop uses: graphFollow where the pack's keepKeys reaches the contract's follow_min_keep, else
    /// 0 (the graph's F gated off: follow_rows -1 on every call, keep_keys as is).
    public let follow: Int
    /// Where the next decode step follows: [L, Hkv, follow] flat rows of the clustered tables (-1 none), from the last
    /// call; nil before a question's first call.
    private var pointer: [Int64]?
    /// True while the prompt's calls run: they never follow (a 1-token prompt chunk runs as decode; the host's prompt
    /// is its first call per layer, with nothing to follow yet).
    private var prompting = false
    private let clockNanos: () -> Int64
    /// Per method: the context inputs as it declares them (methodInputs)
    private var methodContext: [String: NamedTensors] = [:]
    /// The context inputs by name (the split plan maps the pack's per-layer tensors onto each stage's inputs)
    private let contextByName: [String: DecoderTensor]
    /// [Hkv, Nc, D] views of the flat clustered tables, made once per table (the exact tail's stages read them whole)
    private var perHeadViews: [String: DecoderTensor] = [:]
    /// Time spent in the split plan's CPU lookup since the last greedy started.
    public private(set) var lookupNanos: Int64 = 0
    /// The answer's opening: decode steps (counted from the answer's first) that call exactMethod instead of decode
    /// (the contract's exactDecode: the manifest's exact_decode, or a caller's via withExactDecode; 0 for full attention).
    public let exactDecode: Int
    /// The method of the answer's opening steps (Python: GenerationLoop.exact_method): the split plan's one-token stages
    /// `decode_exact_<s>` where the artifact has decode_exact_0, else `prefill_exact` (in-graph: called with one token,
    /// its token axis is dynamic; split without decode_exact: padded to the method's width, exactWidth).
    public let exactMethod: String
    /// The top-token probability below which a selecting decode step runs again through exactMethod (the contract's
    /// exactBelow: the manifest's exact_below, or a caller's via withExactBelow; 0, never, for full attention).
    public let exactBelow: Double

    public init(runtime: DecoderRuntime, contract: DecoderContract, pack: ContextPack, contextInputs: NamedTensors,
                clockNanos: @escaping () -> Int64 = GenerationLoop.monotonicNanos) throws {
        self.runtime = runtime
        self.contract = contract
        self.pack = pack
        self.clockNanos = clockNanos
        shapes = contract.shapes
        exactDecode = contract.attention == "squeezed" ? contract.exactDecode : 0
        exactBelow = contract.attention == "squeezed" ? contract.exactBelow : 0
        exactMethod = contract.split && contract.methodNames.contains("\(GenerationLoop.decodeExact)_0")
            ? GenerationLoop.decodeExact : GenerationLoop.prefillExact
        if contract.attention == "squeezed", let budget = contract.kvBudget {
            let fraction = try KvBudget.keepFraction(kvBudget: budget, centroidFraction: pack.centroidFraction, headDim: pack.headDim)
            // Python's round(): half to even. Python's pack_arrays.artifact_keep_keys: a pack whose budget keeps more
            // than the artifact gathers (built with fewer centroids than the export's) is refused, never capped
            let keep = max(1, min(Int((fraction * Double(pack.numClustered)).rounded(.toNearestOrEven)), pack.numClustered))
            if keep > contract.shapes.maxKeep {
                throw DecoderError("at the decoder's KV budget \(budget) this pack (built with --centroids " +
                    "\(pack.centroidFraction)) keeps \(keep) keys per head but the decoder gathers at most " +
                    "\(contract.shapes.maxKeep); rebuild the pack with the default --centroids or re-export with a " +
                    "larger --max-context")
            }
            keepKeys = keep
            graphFollow = contract.followKeys
            follow = graphFollow > 0 && keep >= contract.followMinKeep ? graphFollow : 0
            // Python's GenerationLoop (the host's rule): following every kept key would select none
            if follow > 0 && follow >= keep {
                throw DecoderError("this artifact follows \(follow) keys per decode step but the pack keeps only \(keep) keys "
                    + "per head at its KV budget, so none would be selected; use a pack of a longer context or an artifact "
                    + "exported with fewer --follow-keys")
            }
        } else {
            keepKeys = nil
            graphFollow = 0
            follow = 0
        }
        // followed keys: the pack's next_rows_<layer> join the context inputs (in-graph: fed to every method like the
        // others; split: the CPU's, for followPointer), made here as Python's GenerationLoop makes them
        if graphFollow > 0 {
            let next = try PackLayout.nextRows(pack, shapes: shapes)
            let names = Set(next.map(\.name))
            self.contextInputs = contextInputs.filter { !names.contains($0.name) } + next
        } else {
            self.contextInputs = contextInputs
        }
        contextByName = Dictionary(self.contextInputs.map { ($0.name, $0.tensor) }, uniquingKeysWith: { first, _ in first })
    }

    public static func monotonicNanos() -> Int64 { Int64(bitPattern: DispatchTime.now().uptimeNanoseconds) }

    /// The explicit cache (state "io"): keys and values [L, H, max_prompt + max_new, D].
    public final class Cache {
        public var keys: [Float]
        public var values: [Float]
        public let layers: Int
        public let heads: Int
        public let capacity: Int
        public let headDim: Int

        init(layers: Int, heads: Int, capacity: Int, headDim: Int) {
            self.layers = layers
            self.heads = heads
            self.capacity = capacity
            self.headDim = headDim
            keys = [Float](repeating: 0, count: layers * heads * capacity * headDim)
            values = keys
        }
    }

    /// A new cache for state "io"; nil when the runtime holds it.
    public func newCache() -> Cache? {
        if contract.state != "io" { return nil }
        return Cache(layers: pack.layers, heads: pack.kvHeads, capacity: shapes.maxPrompt + shapes.maxNew, headDim: pack.headDim)
    }

    /// One prefill, prefill_exact, decode (or, split, decode_exact) call; returns the logits (flattened) and writes this
    /// step's keys/values into cache. The tokens are padded to the method's static width (prefill: max_prompt,
    /// prefill_exact: the manifest's exact_tail, exactWidth; decode, decode_exact: 1) unless the manifest gives its tokens
    /// a dynamic axis. An exact call (prefill_exact, decode_exact) is fed no keep_keys reduction and follows nothing;
    /// its pointer (follow_out) is the next call's, as any call's. Every method gets the same feed (as Python's
    /// GenerationLoop.step): a runtime passes on the inputs the method declares in the manifest (so a .pte's
    /// prefill_exact, which declares no keep_keys and per layer only sink_kv, window_kv, clustered_keys, clustered_values
    /// and counts, takes just those; every method of a .onnx declares all of its graph's inputs), each context input in
    /// the shape the method declares it (methodInputs: a .pte's prefill_exact takes the clustered tables as [Hkv, Nc, D]
    /// views of the same rows), plus the inputs the method fixes with their values (DecoderContract.fixedInputs: the
    /// .onnx's `branch`, [0] for prefill/decode, [1] for prefill_exact; Python: OnnxRunner.run adds them).
    public func step(method: String, tokens: [Int], cacheLen: Int, cache: Cache?) throws -> [Float] {
        if contract.split {
            guard let cache = cache else { throw DecoderError("the split plan needs the explicit cache") }
            return try splitStep(method: method, tokens: tokens, cacheLen: cacheLen, cache: cache)
        }
        let fixed: Int
        switch method {
        case "prefill": fixed = shapes.maxPrompt
        case GenerationLoop.prefillExact: fixed = contract.exactWidth
        default: fixed = 1
        }
        let width = contract.tokenWidth(method: method, n: tokens.count, fixed: fixed)
        var feed: [String: DecoderTensor] = [:]
        feed["tokens"] = .int64(try Int64Tensor((0..<width).map { $0 < tokens.count ? Int64(tokens[$0]) : 0 }, shape: [width]))
        feed["n_tokens"] = try GenerationLoop.scalar(Int64(tokens.count))
        feed["cache_len"] = try GenerationLoop.scalar(Int64(cacheLen))
        feed["context_len"] = try GenerationLoop.scalar(Int64(pack.numTokens))
        if let keep = keepKeys {
            let follows = followsIn(method)
            feed["keep_keys"] = try GenerationLoop.scalar(Int64(keep - (follows ? follow : 0)))
            if graphFollow > 0 {  // every method's inputs take them: decode the previous call's pointer, any other call none
                for l in 0..<pack.layers {
                    feed["follow_rows_\(l)"] = .int64(try Int64Tensor(followRows(layer: l, follows: follows),
                                                                      shape: [pack.kvHeads, graphFollow]))
                }
            }
        }
        if let cache = cache {
            let per = cache.heads * cache.capacity * cache.headDim
            let shape = [cache.heads, cache.capacity, cache.headDim]
            for l in 0..<cache.layers {
                feed["past_keys_\(l)"] = .float32(try Float32Tensor(Array(cache.keys[(l * per)..<((l + 1) * per)]), shape: shape))
                feed["past_values_\(l)"] = .float32(try Float32Tensor(Array(cache.values[(l * per)..<((l + 1) * per)]), shape: shape))
            }
        }
        for (name, tensor) in try methodInputs(method) { feed[name] = tensor }
        for (name, tensor) in contract.fixedInputs[method] ?? [:] { feed[name] = tensor }  // the method's value, never the pack's
        let out = try runtime.run(method: method, inputs: feed)
        if follow > 0 { pointer = try followOut(out, method) }
        if let cache = cache {
            try GenerationLoop.writeCache(cache, out, "new_keys", at: cacheLen, count: tokens.count)
            try GenerationLoop.writeCache(cache, out, "new_values", at: cacheLen, count: tokens.count)
        }
        guard case .float32(let logits)? = out["logits"] else {
            throw DecoderError("the runtime returned no float32 \"logits\" output for \(method)")
        }
        return try GenerationLoop.finite(logits.data, method)
    }

    /// `logits` when every one is finite, else one line (GenerationLoop.step's check): a damaged artifact computes NaN,
    /// and argmax over NaN picks token 0, a stop token -- an empty answer that looks like a normal one.
    static func finite(_ logits: [Float], _ method: String) throws -> [Float] {
        if logits.contains(where: { !$0.isFinite }) {
            throw DecoderError("the artifact computed logits that are not finite (NaN or infinite) in its \(method) "
                + "call: the file is probably damaged or changed since the export")
        }
        return logits
    }

    /// The context inputs as `method` declares them in the manifest (GenerationLoop._shaped): an input the method declares
    /// in another shape of the same size is given as a view of the same data in that shape (prefill_exact reads the flat
    /// [Hkv * Nc, D] clustered tables per KV head: [Hkv, Nc, D]; the arrays are shared, not copied); a different size is
    /// refused (the export and this version's pack layout disagree). Made once per method.
    public func methodInputs(_ method: String) throws -> NamedTensors {
        if let made = methodContext[method] { return made }
        let declared = contract.inputShapes[method] ?? [:]
        var out = contextInputs
        for (i, (name, tensor)) in contextInputs.enumerated() {
            guard let shape = declared[name], shape != tensor.shape else { continue }
            if shape.reduce(1, *) != tensor.elementCount {
                throw DecoderError("the pack's \(name) has shape \(tensor.shape) but method \(method) takes \(shape); " +
                                   "re-export the decoder with this project's version")
            }
            switch tensor {
            case .float32(let t): out[i] = (name, .float32(try Float32Tensor(t.data, shape: shape)))
            case .int64(let t): out[i] = (name, .int64(try Int64Tensor(t.data, shape: shape)))
            }
        }
        methodContext[method] = out
        return out
    }

    /// Whether a call of `method` follows keys: decode steps after the prompt, where the loop follows any.
    private func followsIn(_ method: String) -> Bool { follow > 0 && method == "decode" && !prompting }

    /// Layer l's followed rows for a call, [Hkv, graphFollow] flat: the previous call's pointer where the call follows,
    /// else none (-1).
    private func followRows(layer l: Int, follows: Bool) -> [Int64] {
        let n = pack.kvHeads * graphFollow
        guard follows, let pointer = pointer else { return [Int64](repeating: -1, count: n) }
        return Array(pointer[(l * n)..<((l + 1) * n)])
    }

    /// The in-graph call's follow_out [L, Hkv, F] (int64; a runtime that hands every output back as float32, as Core ML
    /// does here, gives the same whole numbers), flat.
    private func followOut(_ out: [String: DecoderTensor], _ method: String) throws -> [Int64] {
        let shape = [pack.layers, pack.kvHeads, follow]
        switch out["follow_out"] {
        case .int64(let t)? where t.shape == shape: return t.data
        case .float32(let t)? where t.shape == shape && t.data.allSatisfy({ $0 == $0.rounded() && abs($0) < 16_777_216 }):
            return t.data.map { Int64($0) }
        case let other?:
            throw DecoderError("\(method) returned follow_out of shape \(other.shape), expected whole numbers of shape \(shape)")
        case nil:
            throw DecoderError("the runtime returned no \"follow_out\" output for \(method) (the decoder follows \(follow) keys)")
        }
    }

    /// The split plan (Python: GenerationLoop._split_step; port of Generation.kt's splitStep): graphs
    /// `<method>_0 .. <method>_L`; between stage s-1 and s the CPU lookup turns stage s-1's cluster scores into layer
    /// l = s-1's kept rows (KeptRows), and stage s-1's key/value (layer l's rows of this step) go into the cache at
    /// cacheLen before stage s reads that layer's cache. `prefill_exact`'s stages (the prompt's exact tail) run no
    /// lookup: stage s takes layer l's clustered tables whole, as [Hkv, Nc, D] views, and returns no scores. Followed
    /// keys (follow F > 0): a decode step's lookup selects keepKeys - F and writes the previous call's pointer rows into
    /// free slots (KeptRows.withFollowed); every stage s >= 1 returns follow_weights over its slots (prefill_exact: over
    /// every clustered row, flat row h * Nc + j), ranked into layer l's next pointer (KeptRows.followPointer).
    /// `decode_exact`'s stages (the answer's opening) are prefill_exact's one token wide: fed and ranked as those.
    private func splitStep(method: String, tokens: [Int], cacheLen: Int, cache: Cache) throws -> [Float] {
        let exact = GenerationLoop.exactMethods.contains(method)
        let follows = followsIn(method)
        var nextPointer = [Int64]()  // [L, Hkv, F], layer by layer
        let width: Int
        switch method {
        case "prefill": width = shapes.maxPrompt
        case GenerationLoop.prefillExact: width = contract.exactWidth
        default: width = 1  // decode, decode_exact
        }
        let n = tokens.count
        let base: [String: DecoderTensor] = ["n_tokens": try GenerationLoop.scalar(Int64(n)),
                                             "cache_len": try GenerationLoop.scalar(Int64(cacheLen)),
                                             "context_len": try GenerationLoop.scalar(Int64(pack.numTokens))]
        func ctx(_ name: String) throws -> DecoderTensor {
            guard let t = contextByName[name] else { throw DecoderError("the context inputs have no \(name) (split plan)") }
            return t
        }
        var first = base
        first["tokens"] = .int64(try Int64Tensor((0..<width).map { $0 < n ? Int64(tokens[$0]) : 0 }, shape: [width]))
        if !exact {
            first["next_centroids"] = try ctx("centroids_0")
            first["next_counts"] = try ctx("counts_0")
        }
        var out = try runStage(method, 0, first)
        let per = cache.heads * cache.capacity * cache.headDim
        let cacheShape = [cache.heads, cache.capacity, cache.headDim]
        for stage in 1...cache.layers {
            let l = stage - 1
            let key = try GenerationLoop.stageOutput(out, "key", method, l)
            let value = try GenerationLoop.stageOutput(out, "value", method, l)
            try GenerationLoop.writeLayer(cache, key, keys: true, layer: l, at: cacheLen, count: n)
            try GenerationLoop.writeLayer(cache, value, keys: false, layer: l, at: cacheLen, count: n)
            var feed = base
            feed["hidden"] = .float32(try GenerationLoop.stageOutput(out, "hidden", method, l))
            feed["query"] = .float32(try GenerationLoop.stageOutput(out, "query", method, l))
            feed["key"] = .float32(key)
            feed["value"] = .float32(value)
            feed["past_keys"] = .float32(try Float32Tensor(Array(cache.keys[(l * per)..<((l + 1) * per)]), shape: cacheShape))
            feed["past_values"] = .float32(try Float32Tensor(Array(cache.values[(l * per)..<((l + 1) * per)]), shape: cacheShape))
            feed["sink_kv"] = try ctx("sink_kv_\(l)")
            feed["window_kv"] = try ctx("window_kv_\(l)")
            feed["counts"] = try ctx("counts_\(l)")
            var slotRows: [Int64] = []  // the flat rows the stage attends in the clustered part (followed keys)
            if exact {
                let keys = try perHead("clustered_keys_\(l)", try ctx("clustered_keys_\(l)"), cache)
                feed["clustered_keys"] = keys
                feed["clustered_values"] = try perHead("clustered_values_\(l)", try ctx("clustered_values_\(l)"), cache)
                if follow > 0 { slotRows = Array(0..<Int64(keys.elementCount / cache.headDim)) }
            } else {
                guard case .float32(let keys) = try ctx("clustered_keys_\(l)"), case .float32(let values) = try ctx("clustered_values_\(l)"),
                      case .int64(let counts) = try ctx("counts_\(l)"), case .int64(let starts) = try ctx("cluster_start_\(l)"),
                      let keep = keepKeys else {
                    throw DecoderError("the split plan's layer \(l) context inputs have unexpected dtypes")
                }
                let t0 = clockNanos()
                let kept = try KeptRows.compute(scores: try GenerationLoop.stageOutput(out, "scores", method, l), counts: counts,
                                                clusterStart: starts, clusteredKeys: keys, clusteredValues: values,
                                                keepKeys: keep - (follows ? follow : 0), maxKeep: shapes.maxKeep,
                                                followRows: follow > 0 ? followRows(layer: l, follows: follows) : nil)
                lookupNanos += clockNanos() - t0
                slotRows = kept.slotRows
                for (name, tensor) in try kept.inputs() { feed[name] = tensor }
                feed["centroids"] = try ctx("centroids_\(l)")
                feed["value_centroids"] = try ctx("value_centroids_\(l)")
                if stage < cache.layers {
                    feed["next_centroids"] = try ctx("centroids_\(stage)")
                    feed["next_counts"] = try ctx("counts_\(stage)")
                }
            }
            out = try runStage(method, stage, feed)
            if follow > 0 {
                guard case .int64(let next) = try ctx("next_rows_\(l)") else {
                    throw DecoderError("the split plan's next_rows_\(l) is not int64")
                }
                let weights = try GenerationLoop.stageOutput(out, "follow_weights", method, stage)
                let t0 = clockNanos()
                nextPointer += try KeptRows.followPointer(weights: weights.data, slotRows: slotRows, nextRows: next.data,
                                                          kvHeads: cache.heads, follow: follow)
                lookupNanos += clockNanos() - t0
            }
        }
        if follow > 0 { pointer = nextPointer }
        return try GenerationLoop.finite(GenerationLoop.stageOutput(out, "logits", method, cache.layers).data, method)
    }

    /// runtime.run for stage `<method>_<stage>`, with the inputs that method's manifest entry fixes put over the feed.
    private func runStage(_ method: String, _ stage: Int, _ feed: [String: DecoderTensor]) throws -> [String: DecoderTensor] {
        let name = "\(method)_\(stage)"
        var feed = feed
        for (input, tensor) in contract.fixedInputs[name] ?? [:] { feed[input] = tensor }
        return try runtime.run(method: name, inputs: feed)
    }

    /// A flat [Hkv * Nc, D] clustered table as an [Hkv, Nc, D] view (made once per table).
    private func perHead(_ name: String, _ t: DecoderTensor, _ cache: Cache) throws -> DecoderTensor {
        if let made = perHeadViews[name] { return made }
        guard case .float32(let table) = t, let d = table.shape.last, d == cache.headDim,
              table.data.count % (cache.heads * d) == 0 else {
            throw DecoderError("the clustered table \(name) has shape \(t.shape), expected [\(cache.heads) * Nc, \(cache.headDim)]")
        }
        let view = DecoderTensor.float32(try Float32Tensor(table.data, shape: [cache.heads, table.data.count / (cache.heads * d), d]))
        perHeadViews[name] = view
        return view
    }

    private static func stageOutput(_ out: [String: DecoderTensor], _ name: String, _ method: String, _ stage: Int) throws -> Float32Tensor {
        guard case .float32(let t)? = out[name] else {
            throw DecoderError("the runtime returned no float32 \"\(name)\" output for \(method)_\(stage)")
        }
        return t
    }

    /// A stage's key or value [H, T, D]: its first n rows per head into layer `layer` of the cache at position at.
    private static func writeLayer(_ cache: Cache, _ t: Float32Tensor, keys: Bool, layer l: Int, at: Int, count n: Int) throws {
        let s = t.shape
        if s.count != 3 || s[0] != cache.heads || s[1] < n || s[2] != cache.headDim {
            throw DecoderError("a stage's key/value has shape \(s), expected [\(cache.heads), >= \(n), \(cache.headDim)]")
        }
        if at < 0 || at + n > cache.capacity {
            throw DecoderError("\(n) rows at \(at) do not fit the cache of \(cache.capacity) tokens")
        }
        for h in 0..<cache.heads {
            let src = h * s[1] * s[2]
            let to = ((l * cache.heads + h) * cache.capacity + at) * cache.headDim
            let rows = t.data[src..<(src + n * cache.headDim)]
            if keys {
                cache.keys.replaceSubrange(to..<(to + n * cache.headDim), with: rows)
            } else {
                cache.values.replaceSubrange(to..<(to + n * cache.headDim), with: rows)
            }
        }
    }

    /// This step's rows of output name ("new_keys" or "new_values", [L, H, >= n, D]) into the cache at position at.
    private static func writeCache(_ cache: Cache, _ out: [String: DecoderTensor], _ name: String, at: Int, count n: Int) throws {
        guard case .float32(let t)? = out[name] else { throw DecoderError("the runtime returned no float32 \"\(name)\" output") }
        let s = t.shape // [L, H, T, D]
        if s.count != 4 || s[0] != cache.layers || s[1] != cache.heads || s[2] < n || s[3] != cache.headDim {
            throw DecoderError("\(name) has shape \(s), expected [\(cache.layers), \(cache.heads), >= \(n), \(cache.headDim)]")
        }
        if at < 0 || at + n > cache.capacity {
            throw DecoderError("\(name): \(n) rows at \(at) do not fit the cache of \(cache.capacity) tokens")
        }
        for l in 0..<cache.layers {
            for h in 0..<cache.heads {
                let src = ((l * s[1] + h) * s[2]) * s[3]
                let to = ((l * cache.heads + h) * cache.capacity + at) * cache.headDim
                let rows = t.data[src..<(src + n * cache.headDim)]
                if name == "new_keys" {
                    cache.keys.replaceSubrange(to..<(to + n * cache.headDim), with: rows)
                } else {
                    cache.values.replaceSubrange(to..<(to + n * cache.headDim), with: rows)
                }
            }
        }
    }

    public func checkLengths(promptTokens: Int, maxNewTokens: Int) throws {
        if promptTokens == 0 { throw DecoderError("the prompt is empty; pass --prompt TEXT") }
        if promptTokens > shapes.maxPrompt {
            throw DecoderError("the prompt is \(promptTokens) tokens but this decoder was exported for at most " +
                "\(shapes.maxPrompt); shorten it or re-export with --max-prompt \(promptTokens)")
        }
        let room = shapes.maxPrompt + shapes.maxNew - promptTokens
        if maxNewTokens < 1 || maxNewTokens > room {
            throw DecoderError("--max-new-tokens must be between 1 and \(room) for this prompt (the exported decoder's " +
                "cache holds \(shapes.maxPrompt + shapes.maxNew) tokens)")
        }
    }

    /// Prefill ids then decode greedily (or along forced tokens: teacher forcing, for checks). The decode steps of the
    /// answer's first exactDecode tokens call exactMethod (one token, cache_len as for decode), later ones decode. A stop
    /// token ends the answer without being part of it. onToken sees the answer so far after every token; when cancelled
    /// turns true (checked after each token, e.g. the app's Stop) no further step runs.
    public func greedy(_ ids: [Int], maxNewTokens: Int, forced: [Int]? = nil, stopIds: Set<Int> = [],
                       onToken: (([Int]) -> Void)? = nil, cancelled: () -> Bool = { false }) throws -> GenerationOutput {
        try checkLengths(promptTokens: ids.count, maxNewTokens: maxNewTokens)
        let cache = newCache()
        lookupNanos = 0
        let t0 = clockNanos()
        var logits = try prompt(ids, cache: cache)
        let prefillNanos = clockNanos() - t0
        var tokens: [Int] = []
        var allLogits: [[Float]] = []
        let t1 = clockNanos()
        var steps = 0
        var stopped = false
        var rerun: [Int] = []
        for i in 0..<maxNewTokens {
            allLogits.append(logits)
            let token: Int
            if let forced = forced {
                guard i < forced.count else { break }
                token = forced[i]
            } else {
                token = GenerationLoop.argmax(logits)
            }
            if stopIds.contains(token) { break }
            tokens.append(token)
            onToken?(tokens)
            if tokens.count == maxNewTokens || (forced != nil && tokens.count == forced!.count) { break }
            if cancelled() {
                stopped = true
                break
            }
            // the answer's opening (exact_decode): its first steps attend every fixed-context row, then steps select
            let method = steps < exactDecode ? exactMethod : "decode"
            logits = try step(method: method, tokens: [token], cacheLen: ids.count + tokens.count - 1, cache: cache)
            if method == "decode" && unsure(logits) {   // exact_below: the same step again, every fixed-context row
                logits = try step(method: exactMethod, tokens: [token], cacheLen: ids.count + tokens.count - 1, cache: cache)
                rerun.append(steps)
            }
            steps += 1
        }
        var output = GenerationOutput(tokens: tokens, logits: allLogits, prefillNanos: prefillNanos,
                                      decodeNanos: clockNanos() - t1, decodeSteps: steps)
        output.lookupNanos = lookupNanos
        output.exactSteps = min(steps, exactDecode)
        output.cancelled = stopped
        output.rerunAt = rerun
        return output
    }

    /// The question's tokens with the contract's key selection (Python: squeezed_attention/decoder_session.py,
    /// GenerationLoop.prompt); the last call's logits. The first exact_head tokens run FIRST as `prefill_exact` calls of at
    /// most the method's width each (cache_len 0, then the tokens before each); the last exact_tail tokens after them (all
    /// of a shorter question) run LAST as one `prefill_exact` call (cache_len = tokens before them; head end and tail start
    /// = exactSpan). Where no token selects (head and tail cover the question) the whole question runs as the head does.
    /// The tokens between are cut into selection chunks (prefillChunks of their count with prefill_rows / prefill_tail,
    /// offset by the head; none for full attention) and run in between, in order: one chunk is one prefill call (whatever its length), several chunks are per chunk a prefill call
    /// (several tokens, cache_len = tokens before it) or a decode step (a 1-token chunk: a token that selects on its own,
    /// the tail). With exact_tail 0 (older manifests) that is the whole question. A new question follows nothing
    /// before its prompt's calls, and they follow none (the pointer they leave is the first decode step's).
    public func prompt(_ ids: [Int], cache: Cache?) throws -> [Float] {
        pointer = nil
        prompting = true
        defer { prompting = false }
        let squeezed = contract.attention == "squeezed"
        var (head, start) = GenerationLoop.exactSpan(tokens: ids.count, exactHead: squeezed ? contract.exactHead : 0,
                                                     exactTail: contract.exactTail)
        if head == start { (head, start) = (ids.count, ids.count) }   // no row selects: one exact run
        let chunks = GenerationLoop.prefillChunks(tokens: start - head, rows: squeezed ? contract.prefillRows : 0,
                                                  tail: squeezed ? contract.prefillTail : 0).map { (head + $0.0, head + $0.1) }
        var logits: [Float] = []
        var a = 0
        while a < head {   // the exact head in pieces of the method's width (the contract refuses a head without it)
            let b = min(head, a + contract.pieceWidth(method: GenerationLoop.prefillExact, fixed: contract.exactWidth))
            logits = try step(method: GenerationLoop.prefillExact, tokens: Array(ids[a..<b]), cacheLen: a, cache: cache)
            a = b
        }
        for (a, b) in chunks {
            // question-level selection (whose decode needs the prefill's held selection) is refused by the contract
            let method = b - a == 1 && chunks.count > 1 ? "decode" : "prefill"
            logits = try step(method: method, tokens: Array(ids[a..<b]), cacheLen: a, cache: cache)
        }
        if start < ids.count {
            logits = try step(method: GenerationLoop.prefillExact, tokens: Array(ids[start...]), cacheLen: start, cache: cache)
        }
        return logits
    }

    /// The method that runs the prompt's exact tail (over every fixed-context row, no lookup).
    public static let prefillExact = "prefill_exact"
    /// The split plan's one-token copy of prefill_exact's stages (`decode_exact_<s>`) for the answer's opening steps.
    public static let decodeExact = "decode_exact"
    /// The methods that attend every fixed-context row (no lookup, no followed rows fed; Python: EXACT_METHODS).
    public static let exactMethods: Set<String> = [prefillExact, decodeExact]

    /// Where the prompt's exactly attending tail starts (Python: squeezed_attention.settings.exact_start): the tokens
    /// before it select their keys.
    public static func exactStart(tokens: Int, exactTail: Int) -> Int { max(0, tokens - exactTail) }

    /// (head end, tail start) of a prompt (Python: squeezed_attention.settings.exact_span): rows before the head's end and
    /// from the tail's start attend every fixed-context row, the rows between select.
    public static func exactSpan(tokens: Int, exactHead: Int, exactTail: Int) -> (Int, Int) {
        let headEnd = min(tokens, max(0, exactHead))
        return (headEnd, max(headEnd, exactStart(tokens: tokens, exactTail: exactTail)))
    }

    /// (start, end) selection chunks of a prompt (Python: squeezed_attention.settings.prefill_chunks): the last `tail`
    /// tokens one chunk each, the tokens before them in chunks of `rows` cut from the end (0 = one chunk).
    public static func prefillChunks(tokens: Int, rows: Int, tail: Int) -> [(Int, Int)] {
        let head = max(0, tokens - tail)
        var chunks: [(Int, Int)] = []
        if rows <= 0 {
            if head > 0 { chunks.append((0, head)) }
        } else {
            var ends: [Int] = []
            var end = head
            while end > 0 { ends.append(end); end -= rows }
            for e in ends.reversed() { chunks.append((max(0, e - rows), e)) }
        }
        for i in head..<max(head, tokens) { chunks.append((i, i + 1)) }
        return chunks
    }

    private static func scalar(_ v: Int64) throws -> DecoderTensor { .int64(try Int64Tensor([v], shape: [1])) }

    /// Whether a selecting step's logits leave its top token less likely than exactBelow (then it runs again).
    public func unsure(_ logits: [Float]) -> Bool { exactBelow > 0 && GenerationLoop.topProbability(logits) < exactBelow }

    /// The softmax probability of the most likely entry, in double precision (Python: settings.top_probability):
    /// 1 / sum(exp(x_i - max)).
    public static func topProbability(_ x: [Float]) -> Double {
        var top = -Double.infinity
        for v in x where Double(v) > top { top = Double(v) }
        var sum = 0.0
        for v in x { sum += exp(Double(v) - top) }
        return 1 / sum
    }

    /// numpy's argmax: the first largest value; a NaN wins (the first NaN).
    public static func argmax(_ x: [Float]) -> Int {
        var best = 0
        for i in x.indices {
            if x[i].isNaN { return i }
            if x[i] > x[best] { best = i }
        }
        return best
    }
}
