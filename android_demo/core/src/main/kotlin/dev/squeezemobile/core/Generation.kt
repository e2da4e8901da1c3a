package dev.squeezemobile.core

/**
 * Document Q&A over an exported decoder (squeezed_attention/decoder_session.py), runtime-free: the app gives a
 * [DecoderRuntime] (ONNX Runtime, LiteRT, ExecuTorch in app/), this file runs the call sequence the decoder manifest
 * documents: `prefill` once with the question (n_tokens = its length, cache_len = 0; padded to max_prompt unless the
 * method's tokens input has a dynamic axis: then the question's ids as they are), then
 * `decode` one token at a time (cache_len = tokens so far); greedy argmax; stop at the manifest's stop tokens.
 * A contract with an exact prompt tail (exact_tail > 0: a third method `prefill_exact` over every fixed-context row)
 * runs the question's last exact_tail tokens as one `prefill_exact` call after the tokens before them ([GenerationLoop.prompt]).
 * With explicit cache I/O (state "io", ONNX) the loop keeps the cache and writes each step's new_keys/new_values
 * at cache_len; with state held in the runtime ("buffer", .pte) the runtime does. An input a method's manifest entry
 * fixes ("value": the .onnx file's graph selector `branch`, 0 for prefill/decode, 1 for prefill_exact, whose graph is
 * the file's second one) is fed exactly that value by every call of the method ([DecoderContract.fixedInputs]).
 * The answer's opening (contract exact_decode N, [DecoderContract.withExactDecode]): the decode steps of the answer's
 * first N tokens (decode call i, 0-based, feeds answer token i + 1) attend every fixed-context row too, as the
 * prompt's exact tail does: a 1-token `prefill_exact` call (in-graph: its token axis is dynamic; else padded to
 * its width), or in the split plan the one-token stages `decode_exact_0 .. decode_exact_L` where the manifest lists
 * them. Later decode steps select again, and one whose logits leave its top token less likely than the contract's
 * exact_below ([DecoderContract.withExactBelow]) is called again through that exact method, as an opening step.
 * The split lookup plan (lookup_plan "split", the .tflite export) runs each step as the stage graphs
 * `<step>_0 .. <step>_L` with the CPU lookup ([KeptRows]) between them; its exact tail is the stages
 * `prefill_exact_0 .. prefill_exact_L` with no lookup between them (and its exact decode steps `decode_exact_<s>`).
 */
class DecoderException(message: String) : IllegalArgumentException(message)

/** The exported decoder in its runtime: named inputs in, named outputs out (logits, and new_keys/new_values). */
interface DecoderRuntime : AutoCloseable {
    /** Shown on screen, e.g. "ONNX Runtime (CPU)". */
    val name: String

    fun run(method: String, inputs: Map<String, DecoderTensor>): Map<String, DecoderTensor>

    override fun close() {}
}

/**
 * The artifact's runtime contract (manifest artifacts[].decoder): attention, state handling, shapes, budget, the
 * lookup plan ("in-graph": one graph per step; "split": stage graphs with the CPU lookup between them), the decode
 * selection ("step": every decode step selects; "question", whose decode takes the rows the prefill selected as held
 * inputs, is not run by this app and is refused), the prompt's selection chunks (prefill_rows, prefill_tail) and its
 * exact tail (exact_tail: the last tokens of a question, run as one `prefill_exact` call over every fixed-context row;
 * absent or null in older manifests: 0, no such method; in the split plan the stages prefill_exact_<s>), and the
 * static shape every method declares for each of its inputs (a method may take a context input in another shape
 * than the pack's layout: prefill_exact takes the clustered tables per KV head; [GenerationLoop.methodInputs]), and
 * the inputs a method fixes (an input entry with a "value": the loop feeds exactly that tensor, of the entry's dtype
 * and shape, whatever the pack or cache holds; [fixedInputs]), and the followed keys (follow_keys F, export
 * --follow-keys: every call returns the rows its last token points the next step to, and a decode step takes them
 * back and selects F keys fewer; used where the pack's keep_keys reaches follow_min_keep, else the loop follows none
 * over the same graph; null or absent in older manifests and for full attention: 0), and the answer's opening
 * (exact_decode N: the decode steps of the answer's first N tokens run the exact method, [exactMethod], instead of
 * decode; null or absent in older manifests and for full attention: 0), and the unsure steps' re-run (exact_below p:
 * a selecting decode step whose top token's softmax probability is below p runs again through [exactMethod]; null
 * or absent in older manifests and for full attention: 0, never).
 */
class DecoderContract(val attention: String, val state: String, val kvBudget: Double?, val shapes: DecoderShapes,
                      val lookupPlan: String = IN_GRAPH, val decodeSelection: String = STEP,
                      val prefillRows: Int = 0, val prefillTail: Int = 0,
                      /** method -> the token counts its `tokens` input takes as is (a dynamic axis in the manifest). */
                      val tokenRanges: Map<String, IntRange> = emptyMap(),
                      /** prompt tokens of the `prefill_exact` method (its static token width); 0 = no such method */
                      val exactTail: Int = 0,
                      /** method -> input name -> the shape the method declares (inputs without a dynamic axis). */
                      val inputShapes: Map<String, Map<String, IntArray>> = emptyMap(),
                      /**
                       * method -> input name -> the tensor the method fixes for it (its manifest entry's "value": the
                       * .onnx file's graph selector `branch`); made once, the same objects at every call.
                       */
                      val fixedInputs: Map<String, Map<String, DecoderTensor>> = emptyMap(),
                      /** F: the graph's followed keys per KV head (its follow_rows_<layer> inputs are [Hkv, F]); 0 = none */
                      val followKeys: Int = 0,
                      /** the fewest kept keys per head at which the loop follows [followKeys] (below: none, same graph) */
                      val followMinKeep: Int = 0,
                      /**
                       * N: the answer's first N decode steps run [exactMethod] (every fixed-context row) instead of
                       * decode; 0 = every decode step selects. A caller may choose another N: [withExactDecode].
                       */
                      val exactDecode: Int = 0,
                      /**
                       * The static token width of the `prefill_exact` method (the manifest's exact_tail): [exactTail]
                       * is the prompt tokens a loop runs through it, which a caller may shorten ([withExactTail]);
                       * this stays the method's (Python: static_width reads the contract's exact_tail). 0 = no such method.
                       */
                      val exactWidth: Int = exactTail,
                      /** the methods the manifest lists (in the split plan: stage names, e.g. decode_exact_0) */
                      val methods: Set<String> = inputShapes.keys,
                      /**
                       * p: a selecting decode step whose top token's softmax probability is below p is called again
                       * through [exactMethod]; 0 = never. A caller may choose another p: [withExactBelow].
                       */
                      val exactBelow: Double = 0.0,
                      /**
                       * H: the question's first H tokens run [GenerationLoop.PREFILL_EXACT] too, before the rest
                       * (a question written before a long instruction); 0 = only the tail. A caller may choose another
                       * H: [withExactHead].
                       */
                      val exactHead: Int = 0) {
    init {
        if (prefillRows < 0 || prefillTail < 0) {
            throw DecoderException("decoder.prefill_rows / prefill_tail: expected whole numbers >= 0, found $prefillRows / $prefillTail")
        }
        if (exactTail < 0) throw DecoderException("decoder.exact_tail: expected a whole number of tokens >= 0, found $exactTail")
        if (followKeys < 0) throw DecoderException("decoder.follow_keys: expected an integer >= 0, found $followKeys")
        if (followMinKeep < 0) throw DecoderException("decoder.follow_min_keep: expected an integer >= 0, found $followMinKeep")
        if (exactDecode < 0) throw DecoderException("decoder.exact_decode: expected a whole number of tokens >= 0, found $exactDecode")
        if (exactHead < 0) throw DecoderException("decoder.exact_head: expected a whole number of tokens >= 0, found $exactHead")
        if (exactHead > 0 && attention == "squeezed" && exactWidth == 0) {
            throw DecoderException("decoder.exact_head: $exactHead exact prompt tokens need the artifact's exact method, which it " +
                "lacks (exact_tail 0); re-export the decoder")
        }
        if (exactDecode > 0 && attention == "squeezed" && exactWidth == 0) {
            throw DecoderException("decoder.exact_decode: $exactDecode exact decode steps need the artifact's exact method, which it " +
                "lacks (exact_tail 0); re-export the decoder")
        }
        if (!(exactBelow >= 0.0 && exactBelow < 1.0)) {
            throw DecoderException("decoder.exact_below: expected a probability from 0 to below 1, found $exactBelow")
        }
        if (exactBelow > 0.0 && attention == "squeezed" && exactWidth == 0) {
            throw DecoderException("decoder.exact_below: re-running unsure decode steps needs the artifact's exact method, " +
                "which it lacks (exact_tail 0); re-export the decoder")
        }
        if (attention != "squeezed" && attention != "full") throw DecoderException("decoder.attention: expected squeezed or full, found $attention")
        if (state != "io" && state != "buffer") throw DecoderException("decoder.state: expected io or buffer, found $state")
        if (attention == "squeezed" && kvBudget == null) throw DecoderException("decoder.kv_budget: missing for squeezed attention")
        if (lookupPlan != IN_GRAPH && lookupPlan != SPLIT) throw DecoderException("decoder.lookup_plan: expected in-graph or split, found $lookupPlan")
        if (lookupPlan == SPLIT && (attention != "squeezed" || state != "io")) {
            throw DecoderException("decoder.lookup_plan: the split plan is squeezed attention with state io, found $attention / $state")
        }
        if (decodeSelection == QUESTION) {
            throw DecoderException("decoder.decode_selection: this app runs per-step selection only, found question; " +
                "export the decoder with --decode-selection step")
        }
        if (decodeSelection != STEP) throw DecoderException("decoder.decode_selection: expected step or question, found $decodeSelection")
    }

    val split: Boolean get() = lookupPlan == SPLIT

    /**
     * This contract with another exact tail (a caller's shorter one, as Python's GenerationLoop(exact_tail=...)); the
     * prefill_exact method keeps its width ([exactWidth]).
     */
    fun withExactTail(exact: Int) = copy(exactTail = exact)

    /**
     * The method the answer's opening steps call (Python: GenerationLoop.exact_method): the split plan's one-token
     * stages `decode_exact_<s>` where the manifest lists them, else `prefill_exact` with one token (in-graph: its
     * token axis is dynamic; a split plan without them: padded to [exactWidth]).
     */
    val exactMethod: String get() = if (split && "${DECODE_EXACT}_0" in methods) DECODE_EXACT else GenerationLoop.PREFILL_EXACT

    /**
     * This contract with another answer's opening: the first [steps] decode steps run [exactMethod] (Python's
     * GenerationLoop(exact_decode=...), exact_decode_of, with its checks and messages): a whole number >= 0; more
     * than 0 is refused for full attention (it selects nothing) and for a squeezed artifact without an exact method
     * (exported with exact_tail 0).
     */
    fun withExactDecode(steps: Int): DecoderContract {
        if (attention == "full" && steps != 0) {
            throw refusedForFull("--exact-decode")
        }
        if (steps < 0) throw DecoderException("--exact-decode must be a whole number of tokens >= 0; got $steps")
        if (steps > 0 && exactWidth == 0) {
            throw needsExactMethod("--exact-decode", "$steps", "runs the answer's first tokens")
        }
        return copy(exactDecode = steps)
    }

    /**
     * This contract with another exact head: the question's first [tokens] tokens run `prefill_exact` before the rest
     * (Python's GenerationLoop(exact_head=...), exact_head_of, with its checks and messages): a whole number >= 0; more
     * than 0 is refused for full attention (it selects nothing) and for a squeezed artifact without an exact method
     * (exported with exact_tail 0).
     */
    fun withExactHead(tokens: Int): DecoderContract {
        if (attention == "full" && tokens != 0) {
            throw refusedForFull("--exact-head")
        }
        if (tokens < 0) throw DecoderException("--exact-head must be a whole number of tokens >= 0; got $tokens")
        if (tokens > 0 && exactWidth == 0) {
            throw needsExactMethod("--exact-head", "$tokens", "runs the prompt's first tokens")
        }
        return copy(exactHead = tokens)
    }

    /**
     * This contract with another re-run rule for unsure steps: a selecting decode step whose top token's probability
     * is below [p] runs again through [exactMethod] (Python's GenerationLoop(exact_below=...), exact_below_of, with its
     * checks and messages): a probability in [0, 1); more than 0 is refused for full attention (it selects nothing)
     * and for a squeezed artifact without an exact method (exported with exact_tail 0).
     */
    fun withExactBelow(p: Double): DecoderContract {
        if (attention == "full" && p != 0.0) {
            throw refusedForFull("--exact-below")
        }
        if (!(p >= 0.0 && p < 1.0)) throw DecoderException("--exact-below must be a probability from 0 (off) to below 1; got $p")
        if (p > 0.0 && exactWidth == 0) {
            throw needsExactMethod("--exact-below", "$p", "runs unsure decode steps again")
        }
        return copy(exactBelow = p)
    }

    /**
     * This contract with other followed keys and gate (Python: a loop given the contract dict with follow_keys /
     * follow_min_keep edited). [follow] must be the graph's: its follow_rows_<layer> inputs are [Hkv, follow]; a
     * replay of a graph exported with other followed keys than a manifest's, or a loop gated otherwise.
     */
    /** A caller's option for a full-attention artifact, which selects nothing (Python: decoder_session._refuse_for_full). */
    private fun refusedForFull(flag: String) = DecoderException("$flag shapes Squeezed Attention's key selection and does " +
        "nothing with a full-attention artifact (every key is attended); drop it or pick the squeezed artifact (--artifact-attention squeezed)")

    /** An option that [does] something through the exact method this artifact lacks (Python: _needs_exact_method). */
    private fun needsExactMethod(flag: String, value: String, does: String) = DecoderException("$flag $value $does through " +
        "the artifact's exact method, which this artifact lacks (exported with --exact-tail 0); re-export it with " +
        "--exact-tail N or pass $flag 0")

    fun withFollowKeys(follow: Int, minKeep: Int) = copy(followKeys = follow, followMinKeep = minKeep)

    private fun copy(exactTail: Int = this.exactTail, followKeys: Int = this.followKeys,
                     followMinKeep: Int = this.followMinKeep, exactDecode: Int = this.exactDecode,
                     exactBelow: Double = this.exactBelow, exactHead: Int = this.exactHead) = DecoderContract(attention,
        state, kvBudget, shapes, lookupPlan, decodeSelection, prefillRows, prefillTail, tokenRanges, exactTail, inputShapes,
        fixedInputs, followKeys, followMinKeep, exactDecode, exactWidth, methods, exactBelow, exactHead)

    /**
     * Token slots a call of [method] with [n] real tokens feeds (decoder_session.token_width): n (raised to the
     * range's minimum) where the manifest gives the method's tokens a dynamic axis, else [static] (the rest padded).
     */
    fun tokenWidth(method: String, n: Int, static: Int): Int =
        tokenRanges[method]?.let { if (n <= it.last) maxOf(n, it.first) else null } ?: static

    /**
     * The most tokens one call of [method] takes (decoder_session.piece_width): its dynamic axis's max where the
     * manifest gives one (in-graph prefill_exact: max_prompt, so an exact prompt is one call), else [static].
     */
    fun pieceWidth(method: String, static: Int): Int = tokenRanges[method]?.last ?: static

    companion object {
        const val IN_GRAPH = "in-graph"
        const val SPLIT = "split"
        const val STEP = "step"
        const val QUESTION = "question"

        /** The split plan's one-token exact stages (decode_exact_<s>) for the answer's opening steps. */
        const val DECODE_EXACT = "decode_exact"

        fun parse(j: JsonPath) = try {
            DecoderContract(j["attention"].string(), j["state"].string(),
                j.opt("kv_budget")?.let { if (it.isNull) null else it.double() }, DecoderShapes.parse(j["shapes"]),
                j.opt("lookup_plan")?.stringOrNull() ?: IN_GRAPH, // null for full attention, absent in older manifests
                j.opt("decode_selection")?.stringOrNull() ?: STEP, // likewise
                optInt(j, "prefill_rows"), optInt(j, "prefill_tail"), // likewise
                tokenRanges(j),
                optInt(j, "exact_tail"), // null for full attention, absent before it
                inputShapes(j), fixedInputs(j),
                optInt(j, "follow_keys"), optInt(j, "follow_min_keep"), // likewise (and the gate absent before it)
                optInt(j, "exact_decode"), // null for full attention, absent before it: 0
                methods = j.opt("methods")?.obj()?.keys ?: emptySet(),
                exactBelow = j.opt("exact_below")?.let { if (it.isNull) 0.0 else it.double() } ?: 0.0, // likewise
                exactHead = optInt(j, "exact_head")) // likewise
        } catch (e: JsonException) {
            throw DecoderException("the decoder manifest is not usable (${e.message}); re-export the decoder")
        }

        /** An integer field that is null (full attention) or absent (manifests written before it) where it means 0. */
        private fun optInt(j: JsonPath, key: String): Int = j.opt(key)?.let { if (it.isNull) 0 else it.int() } ?: 0

        /** methods.<m>.inputs[tokens].dynamic["0"] = [min, max] (absent: static shapes, older manifests). */
        private fun tokenRanges(j: JsonPath): Map<String, IntRange> {
            val methods = j.opt("methods") ?: return emptyMap()
            return methods.obj().keys.mapNotNull { name ->
                val tokens = methods[name]["inputs"].list().firstOrNull { it["name"].string() == "tokens" }
                tokens?.opt("dynamic")?.opt("0")?.intArray()?.let { b ->
                    if (b.size != 2 || b[0] < 0 || b[0] > b[1]) {
                        throw DecoderException("decoder.methods.$name: the tokens input's dynamic axis is ${b.contentToString()}, " +
                            "expected [min, max] with 0 <= min <= max; re-export the decoder")
                    }
                    name to (b[0]..b[1])
                }
            }.toMap()
        }

        /** methods.<m>.inputs[] with a "value" (absent methods or none: empty): the tensors the methods fix. */
        private fun fixedInputs(j: JsonPath): Map<String, Map<String, DecoderTensor>> {
            val methods = j.opt("methods") ?: return emptyMap()
            return methods.obj().keys.associateWith { name ->
                methods[name]["inputs"].list().filter { it.has("value") }.associate { it["name"].string() to fixedValue(name, it) }
            }.filterValues { it.isNotEmpty() }
        }

        /**
         * An input entry's "value" (a number or nested arrays of numbers, row-major) as a tensor of the entry's shape and
         * dtype (int64 and int32 as [DecoderTensor.Int64]: runtimes narrow to the dtype they declare; float32).
         */
        fun fixedValue(method: String, entry: JsonPath): DecoderTensor {
            val name = entry["name"].string()
            val shape = entry["shape"].intArray()
            val dtype = entry["dtype"].string()
            val values = ArrayList<JsonPath>()
            fun flatten(v: JsonPath) {
                if (v.value is List<*>) v.list().forEach(::flatten) else values.add(v)
            }
            flatten(entry["value"])
            val count = shape.fold(1) { a, d -> a * d }
            if (values.size != count) {
                throw DecoderException("decoder.methods.$method: input $name fixes ${values.size} values for shape " +
                    "${shape.contentToString()}; re-export the decoder")
            }
            return when (dtype) {
                "int64", "int32" -> DecoderTensor.Int64(LongArray(count) { values[it].long() }, shape)
                "float32" -> DecoderTensor.Float32(FloatArray(count) { values[it].double().toFloat() }, shape)
                else -> throw DecoderException("decoder.methods.$method: input $name fixes a $dtype value, which the app does " +
                    "not feed (int64, int32, float32)")
            }
        }

        /** methods.<m>.inputs[].shape of the inputs without a dynamic axis (absent methods: none). */
        private fun inputShapes(j: JsonPath): Map<String, Map<String, IntArray>> {
            val methods = j.opt("methods") ?: return emptyMap()
            return methods.obj().keys.associateWith { name ->
                methods[name]["inputs"].list().filter { it.opt("dynamic") == null }
                    .associate { it["name"].string() to it["shape"].intArray() }
            }
        }
    }
}

/** The manifest's "tokenizer" section: the tokenizer file, the chat framing and the stop tokens. */
class DecoderTokenizerInfo(val file: String, val prefix: String, val join: String, val suffix: String, val stopTokenIds: Set<Int>,
                           /** the file's sha256 (manifests since 2026-12-06; older ones have none and are not checked) */
                           val sha256: String? = null) {
    companion object {
        fun parse(j: JsonPath): DecoderTokenizerInfo = try {
            val chat = j["chat"]
            DecoderTokenizerInfo(j["file"].string(), chat["prefix"].string(), chat["join"].string(), chat["suffix"].string(),
                j["stop_token_ids"].intArray().toSet(), j.opt("sha256")?.stringOrNull())
        } catch (e: JsonException) {
            throw DecoderException("the decoder manifest's tokenizer section is not usable (${e.message}); re-export the decoder")
        }
    }
}

/** What the lookup keeps of a pack's clustered keys for a KV budget (pack_arrays.keep_fraction_for_kv_budget). */
object KvBudget {
    /** The key centroids and value centroids the lookup reads, as a fraction of the KV cache. */
    fun centroidCost(centroidFraction: Double, headDim: Int): Double = 2 * centroidFraction * (headDim + 2) / (4.0 * headDim)

    fun keepFraction(kvBudget: Double, centroidFraction: Double, headDim: Int): Double {
        val keep = kvBudget - centroidCost(centroidFraction, headDim)
        if (keep <= 0) {
            throw DecoderException("a KV budget of $kvBudget does not even cover the centroids " +
                "(%.4f of the KV cache); use a larger --kv-budget".format(centroidCost(centroidFraction, headDim)))
        }
        return keep
    }
}

/**
 * Tokens of one answer, the logits they were chosen from, how long prefill and decode took (the split plan's CPU
 * lookup included; [lookupNanos] is its share), and whether the caller stopped it early.
 */
class GenerationOutput(val tokens: IntArray, val logits: List<FloatArray>, val prefillNanos: Long, val decodeNanos: Long,
                       val decodeSteps: Int, val lookupNanos: Long = 0L, val cancelled: Boolean = false,
                       /** the decode steps (0-based) that ran again through the exact method (contract exact_below) */
                       val rerunAt: IntArray = IntArray(0)) {
    val decodeTokensPerSecond: Double get() = if (decodeNanos > 0) decodeSteps / (decodeNanos / 1e9) else 0.0
}

/**
 * The call sequence of the runtime contract over a [DecoderRuntime] (GenerationLoop). One thread.
 *
 * Followed keys (contract follow_keys F > 0, squeezed attention): every call returns where its last token points the
 * next step to (in-graph: the output follow_out [L, Hkv, F]; split: each stage's follow_weights, ranked on the CPU by
 * [KeptRows.followPointer]), flat rows of the clustered tables; the next decode step selects keep_keys - F keys and
 * attends those rows besides (in-graph: the inputs follow_rows_<layer>; split: [KeptRows.compute]'s followRows). The
 * prompt's calls never follow (the host's prompt is its first call per layer), not even a 1-token chunk run as
 * decode; they feed follow_rows = -1 and keep_keys as is. A pack that keeps fewer keys than follow_min_keep follows
 * none over the same graph ([follow] 0: every call as the prompt's).
 *
 * The answer's opening ([exactDecode] N): decode calls 0 .. N-1 after the prompt (call i feeds answer token i + 1)
 * call [exactMethod] instead of decode, fed as a 1-token prefill_exact call (n_tokens 1, cache_len = the decode
 * position; keep_keys as is, follow_rows -1: it follows nothing); its pointer (follow_out, or the split stages'
 * follow_weights over every clustered row) is the one the next decode step follows.
 *
 * Unsure steps ([exactBelow] p > 0): a decode call whose logits' top token has a softmax probability below p is
 * called once more as an opening step (the same token and cache_len; with state io its new rows overwrite the decode
 * call's), and that call's logits pick the token and its pointer points the next step.
 */
class GenerationLoop(
    val runtime: DecoderRuntime,
    val contract: DecoderContract,
    val pack: ContextPack,
    context: Map<String, DecoderTensor>,
    private val clockNanos: () -> Long = System::nanoTime,
) {
    val shapes = contract.shapes

    /**
     * Clustered keys the in-graph lookup keeps (squeezed attention; null for full): Python's
     * pack_arrays.artifact_keep_keys. A pack whose budget keeps more than the artifact gathers (built with fewer
     * centroids than the export's) is refused: capping it attended fewer keys than the KV budget says.
     */
    val keepKeys: Int? = if (contract.attention != "squeezed") null else {
        val nc = pack.numClustered
        val fraction = KvBudget.keepFraction(contract.kvBudget!!, pack.centroidFraction, pack.headDim)
        val keep = maxOf(1, minOf(Math.rint(fraction * nc).toInt(), nc)) // Python's round(): half to even
        if (keep > shapes.maxKeep) {
            throw DecoderException("at the decoder's KV budget ${contract.kvBudget} this pack (built with --centroids " +
                "${pack.centroidFraction}) keeps $keep keys per head but the decoder gathers at most ${shapes.maxKeep}; " +
                "rebuild the pack with the default --centroids or re-export with a larger --max-context")
        }
        keep
    }

    /** The graph's followed keys per KV head (squeezed attention; else 0): its follow_rows_<layer> are [Hkv, this]. */
    val graphFollow: Int = if (keepKeys == null) 0 else contract.followKeys

    /**
     * The keys this loop follows per KV head: the graph's where the pack keeps at least follow_min_keep keys, else 0
     * (gated: the graph still takes follow_rows, all -1, and keep_keys as is, its F = 0 rule).
     */
    val follow: Int = (if (graphFollow > 0 && keepKeys!! >= contract.followMinKeep) graphFollow else 0).also { f ->
        // Python's GenerationLoop (the host's rule): following every kept key would select none; ONNX Runtime then
        // refused the first decode step's follow_rows with its own message
        if (f > 0 && f >= keepKeys!!) {
            throw DecoderException("this artifact follows $f keys per decode step but the pack keeps only $keepKeys keys " +
                "per head at its KV budget, so none would be selected; use a pack of a longer context or an artifact " +
                "exported with fewer --follow-keys")
        }
    }

    /**
     * The answer's first decode steps that run [exactMethod] (every fixed-context row) instead of decode: the
     * contract's exact_decode for squeezed attention ([DecoderContract.withExactDecode] to choose another), 0 for full.
     */
    val exactDecode: Int = if (keepKeys == null) 0 else contract.exactDecode

    /**
     * The top-token probability below which a selecting decode step runs again through [exactMethod]: the contract's
     * exact_below for squeezed attention ([DecoderContract.withExactBelow] to choose another), 0 (never) for full.
     */
    val exactBelow: Double = if (keepKeys == null) 0.0 else contract.exactBelow

    /** Whether a selecting step's [logits] leave its top token less likely than [exactBelow] (then it runs again). */
    fun unsure(logits: FloatArray): Boolean = exactBelow > 0.0 && topProbability(logits) < exactBelow

    /** prefill_exact (one token), or the split plan's decode_exact stages where the manifest lists them. */
    val exactMethod: String = contract.exactMethod

    /**
     * The pack's context inputs (the caller's, [PackLayout.decoderContextInputs]) with, where the graph has followed
     * keys, next_rows_<layer> ([PackLayout.nextRows]): a graph input in-graph, the CPU's pointer table in the split plan.
     */
    val contextInputs: Map<String, DecoderTensor> =
        if (graphFollow == 0) context else LinkedHashMap(context).apply { putAll(PackLayout.nextRows(pack, shapes)) }

    /**
     * Per layer the flat rows [Hkv * follow] the last call pointed to (-1: none); null until a call of this question
     * returned them. Only a decode step after the prompt feeds them ([follows]).
     */
    private var pointer: Array<LongArray>? = null

    /** True while the prompt's calls run ([prompt]): they never follow. */
    private var prompting = false

    /** follow_rows of a call that follows nothing, [Hkv * graphFollow] of -1: one array for every such call. */
    private val noneFollowed: LongArray by lazy { LongArray(pack.kvHeads * graphFollow) { -1L } }

    /**
     * Whether a call of [method] follows keys: decode steps after the prompt, where the loop follows any (an exact
     * decode step, prefill_exact or decode_exact, attends every row and follows nothing).
     */
    private fun follows(method: String) = follow > 0 && method == "decode" && !prompting

    /** keep_keys of a call: F fewer where it [follows], so that the followed rows fit the kept slots. */
    private fun keepFor(follows: Boolean): Int = keepKeys!! - (if (follows) follow else 0)

    /** Layer [l]'s followed rows [Hkv * graphFollow] for a call: the previous call's pointer where it [follows], else -1. */
    private fun followRows(l: Int, follows: Boolean): LongArray = pointer?.takeIf { follows }?.get(l) ?: noneFollowed

    /** The explicit cache (state "io"): keys and values [L, H, max_prompt + max_new, D]; null when the runtime holds it. */
    class Cache(val keys: FloatArray, val values: FloatArray, val layers: Int, val heads: Int, val capacity: Int, val headDim: Int)

    fun newCache(): Cache? {
        if (contract.state != "io") return null
        val cap = shapes.maxPrompt + shapes.maxNew
        val size = pack.layers * pack.kvHeads * cap * pack.headDim
        return Cache(FloatArray(size), FloatArray(size), pack.layers, pack.kvHeads, cap, pack.headDim)
    }

    /** Per method: the context inputs as it declares them ([methodInputs]). */
    private val methodContext = HashMap<String, Map<String, DecoderTensor>>()

    /**
     * The context inputs as [method] declares them in the manifest (GenerationLoop._shaped): an input the method
     * declares in another shape of the same size is given as a view of the same data in that shape (prefill_exact
     * reads the flat [Hkv * Nc, D] clustered tables per KV head: [Hkv, Nc, D]); a different size is refused (the
     * export and this version's pack layout disagree). Made once per method: a runtime binding sees the same tensor
     * objects at every step (NativeTensorCache).
     */
    fun methodInputs(method: String): Map<String, DecoderTensor> = methodContext.getOrPut(method) {
        val declared = contract.inputShapes[method].orEmpty()
        var shaped: LinkedHashMap<String, DecoderTensor>? = null
        for ((name, t) in contextInputs) {
            val shape = declared[name] ?: continue
            if (shape.contentEquals(t.shape)) continue
            if (shape.fold(1L) { a, d -> a * d } != t.elementCount.toLong()) {
                throw DecoderException("the pack's $name has shape ${t.shape.contentToString()} but method $method takes " +
                    "${shape.contentToString()}; re-export the decoder with this project's version")
            }
            val view = when (t) {
                is DecoderTensor.Float32 -> DecoderTensor.Float32(t.data, shape)
                is DecoderTensor.Int64 -> DecoderTensor.Int64(t.data, shape)
            }
            (shaped ?: LinkedHashMap(contextInputs).also { shaped = it })[name] = view
        }
        shaped ?: contextInputs
    }

    /**
     * Token slots of [method]'s static shape (Python: GenerationLoop.static_width): prefill max_prompt, prefill_exact
     * the manifest's exact_tail ([DecoderContract.exactWidth], not a caller's shorter tail), decode and decode_exact 1.
     */
    fun staticWidth(method: String): Int = when (method) {
        "prefill" -> shapes.maxPrompt
        PREFILL_EXACT -> contract.exactWidth
        else -> 1
    }

    /** Time spent in the split plan's CPU lookup since the last [greedy] started. */
    var lookupNanos = 0L
        private set

    /**
     * One prefill, prefill_exact or decode call (split plan: decode_exact too); returns the logits (flattened) and
     * writes this step's keys/values into [cache]. The tokens are padded to the method's static width (prefill:
     * max_prompt, prefill_exact: the manifest's exact_tail, [DecoderContract.exactWidth], also for an exact decode
     * step's one token; decode, decode_exact: 1) unless the manifest gives its tokens a dynamic axis. Every method gets the same feed
     * (as Python's GenerationLoop.step): the runtimes pass on the inputs the method declares in the manifest (so a
     * .pte's prefill_exact, which declares no keep_keys and per layer only sink_kv, window_kv, clustered_keys,
     * clustered_values and counts, takes just those; every method of a .onnx declares all of its graph's inputs), each
     * context input in the shape the method declares it ([methodInputs]: a .pte's prefill_exact takes the clustered
     * tables as [Hkv, Nc, D] views of the same rows), plus the inputs the method fixes with their values
     * ([DecoderContract.fixedInputs]: the .onnx's `branch`, [0] for prefill/decode, [1] for prefill_exact).
     */
    fun step(method: String, tokens: IntArray, cacheLen: Int, cache: Cache?): FloatArray {
        if (contract.split) return splitStep(method, tokens, cacheLen, cache ?: throw DecoderException("the split plan needs the explicit cache"))
        val width = contract.tokenWidth(method, tokens.size, staticWidth(method))
        val feed = LinkedHashMap<String, DecoderTensor>()
        feed["tokens"] = DecoderTensor.Int64(LongArray(width) { if (it < tokens.size) tokens[it].toLong() else 0L }, intArrayOf(width))
        feed["n_tokens"] = scalar(tokens.size.toLong())
        feed["cache_len"] = scalar(cacheLen.toLong())
        feed["context_len"] = scalar(pack.numTokens.toLong())
        if (keepKeys != null) {
            val follows = follows(method)
            feed["keep_keys"] = scalar(keepFor(follows).toLong())
            // every method of a graph with followed keys takes them (prefill and the gated loop: -1)
            if (graphFollow > 0) for (l in 0 until pack.layers) {
                feed["follow_rows_$l"] = DecoderTensor.Int64(followRows(l, follows), intArrayOf(pack.kvHeads, graphFollow))
            }
        }
        if (cache != null) {
            val per = cache.heads * cache.capacity * cache.headDim
            val shape = intArrayOf(cache.heads, cache.capacity, cache.headDim)
            for (l in 0 until cache.layers) {
                feed["past_keys_$l"] = DecoderTensor.Float32(cache.keys.copyOfRange(l * per, (l + 1) * per), shape)
                feed["past_values_$l"] = DecoderTensor.Float32(cache.values.copyOfRange(l * per, (l + 1) * per), shape)
            }
        }
        feed.putAll(methodInputs(method))
        val out = run(method, feed)
        if (follow > 0) pointer = followOut(out, method)
        if (cache != null) {
            writeCache(cache, out, "new_keys", cache.keys, cacheLen, tokens.size)
            writeCache(cache, out, "new_values", cache.values, cacheLen, tokens.size)
        }
        val logits = out["logits"] as? DecoderTensor.Float32
            ?: throw DecoderException("the runtime returned no float32 \"logits\" output for $method")
        return finite(logits.data, method)
    }

    /**
     * [logits] when every one is finite, else one line (GenerationLoop.step's check): a damaged artifact computes NaN,
     * and argmax over NaN picks token 0, a stop token -- an empty answer that looks like a normal one.
     */
    private fun finite(logits: FloatArray, method: String): FloatArray {
        if (logits.any { !it.isFinite() }) throw DecoderException("the artifact computed logits that are not finite " +
            "(NaN or infinite) in its $method call: the file is probably damaged or changed since the export")
        return logits
    }

    /** The in-graph output follow_out [L, Hkv, F] (int64: flat clustered rows, -1 none) as the next call's pointer. */
    private fun followOut(out: Map<String, DecoderTensor>, method: String): Array<LongArray> {
        val t = out["follow_out"] as? DecoderTensor.Int64
            ?: throw DecoderException("the runtime returned no int64 \"follow_out\" output for $method")
        val per = pack.kvHeads * follow
        if (!t.shape.contentEquals(intArrayOf(pack.layers, pack.kvHeads, follow))) {
            throw DecoderException("follow_out has shape ${t.shape.contentToString()}, expected [${pack.layers}, ${pack.kvHeads}, $follow]")
        }
        return Array(pack.layers) { l -> t.data.copyOfRange(l * per, (l + 1) * per) }
    }

    /**
     * The split plan (GenerationLoop._split_step): graphs `<method>_0 .. <method>_L`; between stage s-1 and s the CPU
     * lookup turns stage s-1's cluster scores into layer l = s-1's kept rows ([KeptRows]), and stage s-1's key/value
     * (layer l's rows of this step) go into the cache at cacheLen before stage s reads that layer's cache.
     * `prefill_exact`'s stages (the prompt's exact tail) and `decode_exact`'s (an exact decode step, one token) run no lookup: stage s takes layer l's clustered tables whole,
     * as [Hkv, Nc, D] views of the pack's rows (padding masked in the graph from counts_l), and returns no scores.
     * Followed keys: a following decode step's lookup keeps F fewer and puts the previous call's pointer rows into free
     * slots; every stage s >= 1 returns follow_weights [Hkv, W] on its slots (the exact stages: on every clustered row),
     * ranked on the CPU into layer l's next pointer (both counted as lookup time).
     */
    private fun splitStep(method: String, tokens: IntArray, cacheLen: Int, cache: Cache): FloatArray {
        val exact = method in EXACT_METHODS
        val width = staticWidth(method)
        val n = tokens.size
        val base = linkedMapOf<String, DecoderTensor>(
            "n_tokens" to scalar(n.toLong()), "cache_len" to scalar(cacheLen.toLong()), "context_len" to scalar(pack.numTokens.toLong()))
        fun ctx(name: String) = contextInputs[name] ?: throw DecoderException("the context inputs have no $name (split plan)")
        val first = LinkedHashMap(base)
        first["tokens"] = DecoderTensor.Int64(LongArray(width) { if (it < n) tokens[it].toLong() else 0L }, intArrayOf(width))
        if (!exact) {
            first["next_centroids"] = ctx("centroids_0")
            first["next_counts"] = ctx("counts_0")
        }
        var out = run("${method}_0", first)
        val per = cache.heads * cache.capacity * cache.headDim
        val cacheShape = intArrayOf(cache.heads, cache.capacity, cache.headDim)
        val follows = follows(method)
        val keep = keepFor(follows)
        val pointed = if (follow > 0) arrayOfNulls<LongArray>(cache.layers) else null // this call's pointer, per layer
        for (stage in 1..cache.layers) {
            val l = stage - 1
            val kept = if (exact) null else {
                val t0 = clockNanos()
                KeptRows.compute(output(out, "scores", method, stage - 1), ctx("counts_$l") as DecoderTensor.Int64,
                    ctx("cluster_start_$l") as DecoderTensor.Int64, ctx("clustered_keys_$l") as DecoderTensor.Float32,
                    ctx("clustered_values_$l") as DecoderTensor.Float32, keep, shapes.maxKeep,
                    if (follow > 0) followRows(l, follows) else null)
                    .also { lookupNanos += clockNanos() - t0 }
            }
            val key = output(out, "key", method, stage - 1)
            val value = output(out, "value", method, stage - 1)
            writeLayer(cache, key, cache.keys, l, cacheLen, n)
            writeLayer(cache, value, cache.values, l, cacheLen, n)
            val feed = LinkedHashMap(base)
            feed["hidden"] = output(out, "hidden", method, stage - 1)
            feed["query"] = output(out, "query", method, stage - 1)
            feed["key"] = key
            feed["value"] = value
            feed["past_keys"] = DecoderTensor.Float32(cache.keys.copyOfRange(l * per, (l + 1) * per), cacheShape)
            feed["past_values"] = DecoderTensor.Float32(cache.values.copyOfRange(l * per, (l + 1) * per), cacheShape)
            feed["sink_kv"] = ctx("sink_kv_$l")
            feed["window_kv"] = ctx("window_kv_$l")
            feed["counts"] = ctx("counts_$l")
            if (kept == null) {
                feed["clustered_keys"] = perHead(ctx("clustered_keys_$l") as DecoderTensor.Float32, cache)
                feed["clustered_values"] = perHead(ctx("clustered_values_$l") as DecoderTensor.Float32, cache)
            } else {
                feed.putAll(kept.inputs())
                feed["centroids"] = ctx("centroids_$l")
                feed["value_centroids"] = ctx("value_centroids_$l")
                if (stage < cache.layers) {
                    feed["next_centroids"] = ctx("centroids_$stage")
                    feed["next_counts"] = ctx("counts_$stage")
                }
            }
            out = run("${method}_$stage", feed)
            if (pointed != null) {
                val t0 = clockNanos()
                // the slots' flat rows: the lookup's, or prefill_exact's every clustered row (head h's row j: h * Nc + j)
                val rows = kept?.slotRows ?: (feed.getValue("clustered_keys") as DecoderTensor.Float32).shape
                    .let { LongArray(it[0] * it[1]) { r -> r.toLong() } }
                pointed[l] = stagePointer(out, method, stage, rows, ctx("next_rows_$l") as DecoderTensor.Int64, cache.heads)
                lookupNanos += clockNanos() - t0
            }
        }
        if (pointed != null) pointer = pointed.requireNoNulls()
        return finite(output(out, "logits", method, cache.layers).data, method)
    }

    /**
     * Layer l = [stage] - 1's next pointer from the split-plan stage's output follow_weights [Hkv, W]: the [follow]
     * heaviest of the slots' flat [rows] (W per head), each mapped through [nextRows] (next_rows_l).
     */
    private fun stagePointer(out: Map<String, DecoderTensor>, method: String, stage: Int, rows: LongArray,
                             nextRows: DecoderTensor.Int64, heads: Int): LongArray {
        val weights = output(out, "follow_weights", method, stage)
        if (!weights.shape.contentEquals(intArrayOf(heads, rows.size / heads))) {
            throw DecoderException("follow_weights of ${method}_$stage has shape ${weights.shape.contentToString()}, " +
                "expected [$heads, ${rows.size / heads}]")
        }
        return KeptRows.followPointer(weights.data, rows, nextRows.data, heads, follow)
    }

    /**
     * [runtime].run with the inputs [method] fixes (its manifest entries' "value") put over the feed: the method's
     * value, never one from the pack or the cache (Python: OnnxRunner.run adds them for the .onnx's `branch`).
     */
    private fun run(method: String, feed: LinkedHashMap<String, DecoderTensor>): Map<String, DecoderTensor> {
        contract.fixedInputs[method]?.let { feed.putAll(it) }
        return runtime.run(method, feed)
    }

    /** A flat [Hkv * Nc, D] clustered table as an [Hkv, Nc, D] view of the same rows (made once per table). */
    private val perHeadViews = HashMap<DecoderTensor.Float32, DecoderTensor.Float32>()

    private fun perHead(t: DecoderTensor.Float32, cache: Cache): DecoderTensor.Float32 = perHeadViews.getOrPut(t) {
        val rows = t.shape.dropLast(1).fold(1) { a, d -> a * d }
        if (t.shape.last() != cache.headDim || rows % cache.heads != 0) {
            throw DecoderException("a clustered table has shape ${t.shape.contentToString()}, expected [${cache.heads} * Nc, ${cache.headDim}]")
        }
        DecoderTensor.Float32(t.data, intArrayOf(cache.heads, rows / cache.heads, cache.headDim))
    }

    private fun output(out: Map<String, DecoderTensor>, name: String, method: String, stage: Int): DecoderTensor.Float32 =
        out[name] as? DecoderTensor.Float32 ?: throw DecoderException("the runtime returned no float32 \"$name\" output for ${method}_$stage")

    /** Stage key/value [H, T, D]: its first n rows per head into layer l of the cache at [at]. */
    private fun writeLayer(cache: Cache, t: DecoderTensor.Float32, dst: FloatArray, l: Int, at: Int, n: Int) {
        val s = t.shape
        if (s.size != 3 || s[0] != cache.heads || s[1] < n || s[2] != cache.headDim) {
            throw DecoderException("a stage's key/value has shape ${s.contentToString()}, expected [${cache.heads}, >= $n, ${cache.headDim}]")
        }
        for (h in 0 until cache.heads) {
            System.arraycopy(t.data, h * s[1] * s[2], dst, ((l * cache.heads + h) * cache.capacity + at) * cache.headDim, n * cache.headDim)
        }
    }

    private fun writeCache(cache: Cache, out: Map<String, DecoderTensor>, name: String, dst: FloatArray, at: Int, n: Int) {
        val t = out[name] as? DecoderTensor.Float32 ?: throw DecoderException("the runtime returned no float32 \"$name\" output")
        val s = t.shape // [L, H, T, D]
        if (s.size != 4 || s[0] != cache.layers || s[1] != cache.heads || s[2] < n || s[3] != cache.headDim) {
            throw DecoderException("$name has shape ${s.contentToString()}, expected [${cache.layers}, ${cache.heads}, >= $n, ${cache.headDim}]")
        }
        for (l in 0 until cache.layers) for (h in 0 until cache.heads) {
            val src = ((l * s[1] + h) * s[2]) * s[3]
            val to = ((l * cache.heads + h) * cache.capacity + at) * cache.headDim
            System.arraycopy(t.data, src, dst, to, n * cache.headDim)
        }
    }

    fun checkLengths(promptTokens: Int, maxNewTokens: Int) {
        if (promptTokens == 0) throw DecoderException("the prompt is empty; pass --prompt TEXT")
        if (promptTokens > shapes.maxPrompt) {
            throw DecoderException("the prompt is $promptTokens tokens but this decoder was exported for at most " +
                "${shapes.maxPrompt}; shorten it or re-export with --max-prompt $promptTokens")
        }
        val room = shapes.maxPrompt + shapes.maxNew - promptTokens
        if (maxNewTokens < 1 || maxNewTokens > room) {
            throw DecoderException("--max-new-tokens must be between 1 and $room for this prompt (the exported decoder's " +
                "cache holds ${shapes.maxPrompt + shapes.maxNew} tokens)")
        }
    }

    /**
     * Prefill [ids] then decode greedily (or along [forced] tokens: teacher forcing, for checks). A stop token ends
     * the answer without being part of it. [onToken] sees the answer so far after every token; when [cancelled]
     * turns true (checked after each token, e.g. the app's Stop button) no further step runs. The first
     * [exactDecode] decode steps call [exactMethod] (the answer's opening), the others decode.
     */
    fun greedy(ids: IntArray, maxNewTokens: Int, forced: IntArray? = null, stopIds: Set<Int> = emptySet(),
               onToken: ((IntArray) -> Unit)? = null, cancelled: () -> Boolean = { false }): GenerationOutput {
        checkLengths(ids.size, maxNewTokens)
        lookupNanos = 0L
        val cache = newCache()
        val t0 = clockNanos()
        var logits = prompt(ids, cache)
        val prefillNanos = clockNanos() - t0
        val tokens = IntArrayList()
        val allLogits = ArrayList<FloatArray>()
        val t1 = clockNanos()
        var steps = 0
        var stopped = false
        val rerun = IntArrayList()
        for (i in 0 until maxNewTokens) {
            allLogits.add(logits)
            val token = if (forced == null) argmax(logits) else forced[i]
            if (token in stopIds) break
            tokens.add(token)
            onToken?.invoke(tokens.toArray())
            if (tokens.size == maxNewTokens || (forced != null && tokens.size == forced.size)) break
            if (cancelled()) {
                stopped = true
                break
            }
            // the answer's opening (exact_decode): its first steps attend every fixed-context row, then steps select
            val method = if (steps < exactDecode) exactMethod else "decode"
            logits = step(method, intArrayOf(token), ids.size + tokens.size - 1, cache)
            if (method == "decode" && unsure(logits)) {  // exact_below: the same step again, every fixed-context row
                logits = step(exactMethod, intArrayOf(token), ids.size + tokens.size - 1, cache)
                rerun.add(steps)
            }
            steps++
        }
        return GenerationOutput(tokens.toArray(), allLogits, prefillNanos, clockNanos() - t1, steps, lookupNanos, stopped,
            rerun.toArray())
    }

    /**
     * The question's tokens with the contract's key selection (Python: squeezed_attention/decoder_session.py,
     * GenerationLoop.prompt); the last call's logits. The first exact_head tokens run FIRST as `prefill_exact` calls
     * of at most the method's width each (cache_len 0, then the tokens before each); the last exact_tail tokens after
     * them (all of a shorter question) run LAST as one `prefill_exact` call (cache_len = tokens before them; head end
     * and tail start = [exactSpan]). Where no token selects (head and tail cover the question) the whole question runs
     * as the head does. The tokens between are cut into selection chunks ([prefillChunks] of their count
     * with prefill_rows / prefill_tail, offset by the head; none for full attention) and run in between, in order: one chunk is one prefill call (whatever its length), several chunks are
     * per chunk a prefill call (several tokens, cache_len = tokens before it) or a decode step (a 1-token chunk: a
     * token that selects on its own, the tail). With exact_tail 0 (older manifests) that is the whole question.
     * None of these calls follows keys (a decode step among them neither); the previous question's pointer is dropped.
     */
    fun prompt(ids: IntArray, cache: Cache?): FloatArray {
        val rows = if (contract.attention == "squeezed") contract.prefillRows else 0
        val tail = if (contract.attention == "squeezed") contract.prefillTail else 0
        val span = exactSpan(ids.size, if (contract.attention == "squeezed") contract.exactHead else 0, contract.exactTail)
        // no row selects: the whole prompt is one exact run (as few calls as the method's width allows)
        val (head, start) = if (span.first == span.second) Pair(ids.size, ids.size) else span
        val chunks = prefillChunks(start - head, rows, tail).map { (a, b) -> Pair(head + a, head + b) }
        var logits = FloatArray(0)
        pointer = null // a new question: nothing to follow from the previous one
        prompting = true
        try {
            var a = 0
            while (a < head) {   // the exact head in pieces of the method's width (the contract refuses a head without it)
                val b = minOf(head, a + contract.pieceWidth(PREFILL_EXACT, contract.exactWidth))
                logits = step(PREFILL_EXACT, ids.copyOfRange(a, b), a, cache)
                a = b
            }
            for ((a, b) in chunks) {
                // question-level selection (whose decode needs the prefill's held selection) is refused by the contract
                val method = if (b - a == 1 && chunks.size > 1) "decode" else "prefill"
                logits = step(method, ids.copyOfRange(a, b), a, cache)
            }
            if (start < ids.size) logits = step(PREFILL_EXACT, ids.copyOfRange(start, ids.size), start, cache)
        } finally {
            prompting = false
        }
        return logits
    }

    companion object {
        /** The method that runs the prompt's exact tail (over every fixed-context row, no lookup). */
        const val PREFILL_EXACT = "prefill_exact"

        /**
         * The methods that attend every fixed-context row (no lookup, no followed rows): the prompt's exact tail, and
         * the split plan's one-token copy of it for the answer's opening (Python: decoder_session.EXACT_METHODS).
         */
        val EXACT_METHODS = setOf(PREFILL_EXACT, DecoderContract.DECODE_EXACT)

        /**
         * Where the prompt's exactly attending tail starts (Python: squeezed_attention.settings.exact_start): the tokens
         * before it select their keys.
         */
        fun exactStart(tokens: Int, exactTail: Int): Int = maxOf(0, tokens - exactTail)

        /**
         * (head end, tail start) of a prompt (Python: squeezed_attention.settings.exact_span): rows before the head's
         * end and from the tail's start attend every fixed-context row, the rows between select.
         */
        fun exactSpan(tokens: Int, exactHead: Int, exactTail: Int): Pair<Int, Int> {
            val headEnd = minOf(tokens, maxOf(0, exactHead))
            return Pair(headEnd, maxOf(headEnd, exactStart(tokens, exactTail)))
        }

        /**
         * (start, end) selection chunks of a prompt (Python: squeezed_attention.settings.prefill_chunks): the last
         * [tail] tokens one chunk each, the tokens before them in chunks of [rows] cut from the end (0 = one chunk).
         */
        fun prefillChunks(tokens: Int, rows: Int, tail: Int): List<Pair<Int, Int>> {
            val head = maxOf(0, tokens - tail)
            val chunks = ArrayList<Pair<Int, Int>>()
            if (rows <= 0) {
                if (head > 0) chunks.add(0 to head)
            } else {
                var end = head
                val ends = ArrayList<Int>()
                while (end > 0) { ends.add(end); end -= rows }
                for (e in ends.reversed()) chunks.add(maxOf(0, e - rows) to e)
            }
            for (i in head until tokens) chunks.add(i to i + 1)
            return chunks
        }

        private fun scalar(v: Long) = DecoderTensor.Int64(longArrayOf(v), intArrayOf(1))

        /** numpy's argmax: the first largest value; a NaN wins (the first NaN). */
        /**
         * The softmax probability of the most likely entry of [x], in double precision (Python:
         * squeezed_attention.settings.top_probability): 1 / sum(exp(x_i - max)).
         */
        fun topProbability(x: FloatArray): Double {
            var max = Double.NEGATIVE_INFINITY
            for (v in x) if (v > max) max = v.toDouble()
            var sum = 0.0
            for (v in x) sum += Math.exp(v - max)
            return 1.0 / sum
        }

        fun argmax(x: FloatArray): Int {
            var best = 0
            for (i in x.indices) {
                if (x[i].isNaN()) return i
                if (x[i] > x[best]) best = i
            }
            return best
        }
    }
}

/** One answer: its text and ids, and the numbers the Q&A screen shows (lookupMs: the split plan's CPU lookup). */
class Answer(val text: String, val tokenIds: IntArray, val promptTokens: Int, val contextTokens: Int,
             val prefillMs: Double, val decodeMs: Double, val decodeTokens: Int, val runtime: String,
             val lookupMs: Double = 0.0, val cancelled: Boolean = false,
             /** decode steps that ran again through the exact method (contract exact_below) */
             val rerunTokens: Int = 0) {
    val decodeTokensPerSecond: Double get() = if (decodeMs > 0) decodeTokens / (decodeMs / 1e3) else 0.0
}

/**
 * A decoder runtime + its tokenizer + one attached pack (DecoderSession): frames the question as the pack was
 * built (chat: join + question + suffix; raw: the question; the question encoded literally: special-token strings
 * written in it stay text), generates, and streams text without splitting a multi-byte character.
 */
/**
 * Python's tokenizer.check_question: text with no stray UTF-16 surrogate (half an emoji cut from a text field was
 * encoded as "?", a question nobody asked; Python refuses it), and in chat framing not blank (an empty user turn asks
 * nothing, and the model answered some question of its own; raw framing continues the context, whitespace is text).
 * Blank is Python's str.isspace, character for character.
 */
fun checkQuestion(text: String, raw: Boolean) {
    var i = 0
    var character = 0
    while (i < text.length) {
        val c = text[i]
        val pair = Character.isHighSurrogate(c) && i + 1 < text.length && Character.isLowSurrogate(text[i + 1])
        if (!pair && Character.isSurrogate(c)) {
            throw DecoderException("the prompt is not valid UTF-8 text (character ${character + 1} is a stray byte or " +
                "surrogate); pass the text in UTF-8")
        }
        i += if (pair) 2 else 1
        character++
    }
    if (!raw && text.all { isPythonSpace(it) }) {
        throw DecoderException("the prompt is empty${if (text.isEmpty()) "" else " (only whitespace)"}: the user's turn " +
            "needs a question; ask one")
    }
}

/** str.isspace of Python 3.11 (all in the BMP): the ASCII controls it counts, U+0085, and Unicode's Zs, Zl and Zp. */
private fun isPythonSpace(c: Char): Boolean = when (c.code) {
    in 0x09..0x0D, in 0x1C..0x20, 0x85, 0xA0, 0x1680, in 0x2000..0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000 -> true
    else -> false
}

class DocumentQa(
    val runtime: DecoderRuntime,
    val contract: DecoderContract,
    val tokenizer: ByteLevelBpeTokenizer,
    val tokenizerInfo: DecoderTokenizerInfo,
    pack: ContextPack,
    clockNanos: () -> Long = System::nanoTime,
) {
    val loop = GenerationLoop(runtime, contract, pack, PackLayout.decoderContextInputs(pack, contract.shapes, contract.attention), clockNanos)

    companion object {
        /**
         * An answer's text without the U+FFFD an unfinished multi-byte character leaves at its end (the answer stopped
         * between the bytes of one character; its token ids keep them): Python's tokenizer.finished_text. The stream
         * holds those characters back, so the streamed text and the answer's text agree.
         */
        fun finishedText(text: String): String = text.trimEnd('\uFFFD')

        /**
         * DecoderSession + attach: the [artifact] of [manifest] the [runtime] loaded, with a pack checked against the
         * manifest's model (weights and tokenizer hashes) and laid out for the artifact's shapes.
         */
        fun attach(manifest: DecoderManifest, artifact: DecoderArtifact, runtime: DecoderRuntime, tokenizer: ByteLevelBpeTokenizer,
                   pack: ContextPack, clockNanos: () -> Long = System::nanoTime): DocumentQa {
            pack.checkModel(manifest.weightsSha256, manifest.tokenizerSha256)
            return DocumentQa(runtime, artifact.contract, tokenizer, manifest.tokenizer, pack, clockNanos)
        }
    }

    fun promptIds(prompt: String, raw: Boolean? = null): IntArray {
        val framing = loop.pack.framing
        val isRaw = raw ?: (framing == "raw")
        if (isRaw != (framing == "raw")) {
            throw DecoderException("this pack was built with $framing framing; " + (if (isRaw) "drop --raw" else "pass --raw") +
                " or rebuild the pack")
        }
        checkQuestion(prompt, isRaw)
        // the question is user text: special-token strings written in it stay text (Python's DecoderSession.prompt_ids,
        // encode_literal); only the framing's suffix ("<|im_end|>\n<|im_start|>assistant\n") has real markers
        if (isRaw) return tokenizer.encode(prompt, literal = true)
        return tokenizer.encode(tokenizerInfo.join + prompt, literal = true) + tokenizer.encode(tokenizerInfo.suffix)
    }

    fun generate(prompt: String, maxNewTokens: Int = 64, raw: Boolean? = null, stopAtEos: Boolean = true,
                 cancelled: () -> Boolean = { false }, onText: ((String) -> Unit)? = null): Answer {
        val ids = promptIds(prompt, raw)
        var printed = ""
        val stream: ((IntArray) -> Unit)? = if (onText == null) null else { tokens ->
            val text = tokenizer.decode(tokens)
            if (!text.endsWith("\uFFFD")) { // wait for the rest of a multi-byte character
                onText(text.substring(printed.length))
                printed = text
            }
        }
        val out = loop.greedy(ids, maxNewTokens, stopIds = if (stopAtEos) tokenizerInfo.stopTokenIds else emptySet(), onToken = stream,
            cancelled = cancelled)
        val text = finishedText(tokenizer.decode(out.tokens))
        // text held back with a character the answer never finished (a space in the same token): the streamed pieces
        // add up to the answer's text (Python's TextStream.finish)
        if (onText != null && text.length > printed.length && text.startsWith(printed)) onText(text.substring(printed.length))
        return Answer(text, out.tokens, ids.size, loop.pack.numTokens, out.prefillNanos / 1e6,
            out.decodeNanos / 1e6, out.decodeSteps, runtime.name, out.lookupNanos / 1e6, out.cancelled, out.rerunAt.size)
    }
}
