package dev.squeezemobile.core

import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertSame
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

/**
 * The split lookup plan (the .tflite export's call sequence) against Python's GenerationLoop._split_step: a fake
 * runtime replays what the tiny model's stage graphs (run by PyTorch) returned, call by call, and checks every input
 * the Kotlin loop feeds (sha256: tokens, lengths, the pack's per-layer tensors under the stage names, the CPU
 * lookup's kept_keys/kept_values/kept_bias, the cache written from earlier stages and steps). hidden/query, which the
 * loop only hands on, must be handed on unchanged (the same tensor the previous stage returned). The golden's decoder
 * follows 2 keys: its decode steps' kept rows include the rows the previous call's follow_weights pointed to. Its
 * contract opens the answer with one exact decode step (exact_decode 1) through the one-token stages
 * decode_exact_<s>, which its methods list.
 */
class SplitGenerationTest {
    private val gen = Golden.json("qa_split_generation.json.gz")
    private val outputs = Golden.floatsLE("qa_split_outputs_f32le.bin.gz")
    private val pack = ContextPack.read(Golden.bytes("qa_pack.safetensors"), "qa_pack.safetensors")
    private val contract = DecoderContract.parse(gen["contract"])
    private val forwarded = gen["forwarded"].list().map { it.string() }.toSet()

    inner class ReplayStages : DecoderRuntime {
        override val name = "replay (PyTorch stage outputs)"
        var calls = 0
        private val handedOut = HashMap<String, DecoderTensor>()

        override fun run(method: String, inputs: Map<String, DecoderTensor>): Map<String, DecoderTensor> {
            val recorded = gen["calls"].list()
            assertTrue(calls < recorded.size, "call ${calls + 1} ($method) was not made by Python")
            val call = recorded[calls++]
            assertEquals(call["method"].string(), method, "call $calls")
            val declared = call["declared"].list().map { it.string() }
            assertTrue(inputs.keys.containsAll(declared), "call $calls ($method): the stage graph needs $declared, fed ${inputs.keys}")
            assertEquals(call["inputs"].obj().keys, inputs.keys, "call $calls ($method): input names")
            for ((name, e) in call["inputs"].obj()) {
                val t = inputs.getValue(name)
                val ej = JsonPath(e, name)
                assertArrayEquals(ej["shape"].intArray(), t.shape, "call $calls ($method): $name")
                assertEquals(ej["dtype"].string(), ContextPackTest.dtypeOf(t), "call $calls ($method): $name")
                if (name in forwarded) {
                    assertSame(handedOut[name], t, "call $calls ($method): $name is not the previous stage's output")
                } else {
                    assertEquals(ej["sha256"].string(), ContextPackTest.sha256(t), "call $calls ($method): input $name")
                }
            }
            return call["outputs"].obj().mapValues { (k, v) ->
                val o = JsonPath(v, k)
                val shape = o["shape"].intArray()
                if (o.has("offset")) {
                    val at = o["offset"].int()
                    DecoderTensor.Float32(outputs.copyOfRange(at, at + o["count"].int()), shape)
                } else {
                    DecoderTensor.Float32(FloatArray(shape.fold(1) { a, d -> a * d }), shape).also { handedOut[k] = it }
                }
            }
        }
    }

    private fun loop(runtime: DecoderRuntime, clock: () -> Long = System::nanoTime) =
        GenerationLoop(runtime, contract, pack, PackLayout.decoderContextInputs(pack, contract.shapes, "squeezed"), clock)

    @Test
    fun theSplitPlanGivesPythonsCallsAndTokens() {
        assertEquals("split", contract.lookupPlan)
        val runtime = ReplayStages()
        var now = 0L
        val loop = loop(runtime) { now.also { now += 1_000_000L } }
        assertEquals(gen["keep_keys"].int(), loop.keepKeys)
        assertEquals(listOf(2, 0), listOf(contract.followKeys, contract.followMinKeep))
        assertEquals(2, loop.follow)
        val out = loop.greedy(gen["prompt_ids"].intArray(), gen["max_new_tokens"].int())
        assertArrayEquals(gen["tokens"].intArray(), out.tokens)
        assertEquals(gen["calls"].list().size, runtime.calls)
        // prefill_0..L (the tokens before the exact tail), prefill_exact_0..L (the last exact_tail tokens), then the
        // answer's opening: one exact decode step decode_exact_0..L (one token, no lookup), then two decode steps
        // decode_0..L: the first follows decode_exact's pointer, the second the first's
        assertTrue(contract.exactTail in 1 until gen["prompt_ids"].intArray().size, "the golden's tail is shorter than its question")
        assertEquals(listOf(1, 1), listOf(contract.exactDecode, loop.exactDecode))
        assertEquals("decode_exact", loop.exactMethod)
        assertEquals(listOf("prefill", "prefill_exact", "decode_exact", "decode", "decode").flatMap { m -> (0..pack.layers).map { "${m}_$it" } },
            gen["calls"].list().map { it["method"].string() })
        assertEquals(5 * (pack.layers + 1), runtime.calls)
        assertEquals(3, out.decodeSteps)
        // one CPU lookup per layer for the selecting prefill and each decode step (none between the exact stages),
        // and one pointer per layer of every call (follow_weights ranked after each stage s >= 1), each read between
        // two clock reads (1 ms apart on this clock)
        assertEquals((3L + 5L) * pack.layers * 1_000_000L, out.lookupNanos)
        assertTrue(!out.cancelled)
    }

    @Test
    fun documentQaRunsTheSplitPlanAndStopsWhenCancelled() {
        val tokenizer = ByteLevelBpeTokenizer.parse(Golden.bytes("qa_tokenizer_tiny.json"))
        val manifest = DecoderManifest.parse(Golden.bytes("qa_decoder_manifest.json"))
        val runtime = ReplayStages()
        var now = 0L
        val qa = DocumentQa(runtime, contract, tokenizer, manifest.tokenizer, pack) { now.also { now += 1_000_000L } }
        val first = tokenizer.decode(gen["tokens"].intArray().copyOf(1))
        val streamed = StringBuilder()
        // cancelled after the first token: no decode step runs
        val answer = qa.generate("ab nan", maxNewTokens = 2, cancelled = { true }) { streamed.append(it) }
        assertArrayEquals(gen["prompt_ids"].intArray(), qa.promptIds("ab nan"))
        assertEquals(first, answer.text)
        assertEquals(first, streamed.toString())
        assertTrue(answer.cancelled)
        assertEquals(2 * (pack.layers + 1), runtime.calls) // the question's two prefills, no decode step
        assertEquals(0, answer.decodeTokens)
        // one CPU lookup per layer (the selecting prefill) and one pointer per layer of both prompt calls, 1 ms each
        assertEquals(((1 + 2) * pack.layers).toDouble(), answer.lookupMs, 1e-9)
        assertTrue(QaSession.stats(answer).endsWith("| stopped"), QaSession.stats(answer))
    }

    @Test
    fun aSplitContractNeedsSqueezedAttentionWithTheCacheAsIo() {
        val s = contract.shapes
        assertTrue(assertThrows(DecoderException::class.java) { DecoderContract("squeezed", "buffer", 0.3, s, "split") }
            .message!!.contains("state io"))
        assertTrue(assertThrows(DecoderException::class.java) { DecoderContract("full", "io", null, s, "split") }
            .message!!.contains("split plan"))
        assertTrue(assertThrows(DecoderException::class.java) { DecoderContract("squeezed", "io", 0.3, s, "sideways") }
            .message!!.contains("lookup_plan"))
        // a stage that returns no scores: one line naming the output and the stage
        val broken = object : DecoderRuntime {
            override val name = "broken"
            override fun run(method: String, inputs: Map<String, DecoderTensor>) =
                mapOf("logits" to DecoderTensor.Float32(FloatArray(1), intArrayOf(1)))
        }
        val e = assertThrows(DecoderException::class.java) { loop(broken).greedy(gen["prompt_ids"].intArray(), 1) }
        assertTrue(e.message!!.contains("\"scores\" output for prefill_0"), e.message)
    }

    @Test
    fun manifestLookupPlanTensorNamesAndOutputOrder() {
        val text = Golden.text("qa_decoder_manifest.json")
        val manifest = DecoderManifest.parse(text)
        // an export written before lookup plans existed: in-graph
        assertEquals(listOf("in-graph", "in-graph"), manifest.artifacts.map { it.contract.lookupPlan })
        assertEquals("onnx", manifest.pick(plan = "in-graph").format)
        val e = assertThrows(DecoderException::class.java) { manifest.pick("onnx", "squeezed", "split") }
        assertTrue(e.message!!.contains("no onnx squeezed split-plan decoder artifact (it has: onnx)"), e.message)
        val bad = text.replaceFirst("\"state\": \"io\",", "\"state\": \"io\", \"lookup_plan\": \"sideways\",")
        assertTrue(assertThrows(DecoderException::class.java) { DecoderManifest.parse(bad) }.message!!.contains("lookup_plan"))
        // a .tflite signature's own input names ("tensor") and its numbered outputs
        val tflite = DecoderManifest.parse(text.replaceFirst("\"name\": \"tokens\",", "\"name\": \"tokens\", \"tensor\": \"args_0\","))
        val prefill = tflite.artifacts[0].methods.getValue("prefill")
        assertEquals("args_0", prefill.tensorName("tokens"))
        assertEquals("n_tokens", prefill.tensorName("n_tokens"))
        assertEquals(mapOf("output_0" to "logits", "output_1" to "new_keys", "output_2" to "new_values", "output_3" to "follow_out"),
            prefill.outputsByRuntimeName(listOf("output_2", "output_0", "output_3", "output_1")))
        // by number, not by text (output_10 after output_9)
        val many = prefill.copyWithOutputs(12).outputsByRuntimeName(List(12) { "output_$it" }.shuffled(java.util.Random(3)))
        assertEquals(List(12) { "output_$it" to "o$it" }.toMap(), many)
        assertEquals("o10", many["output_10"])
        assertTrue(assertThrows(DecoderException::class.java) { prefill.outputsByRuntimeName(listOf("output_0")) }
            .message!!.contains("returns 1 outputs"))
    }

    @Test
    fun aQuestionDecodeSelectionIsRefusedInOneLine() {
        val text = Golden.text("qa_decoder_manifest.json")
        // the first artifact (squeezed, exported with "decode_selection": "step") with another JSON value
        val exported = "\"decode_selection\": \"step\","
        assertTrue(text.contains(exported))
        fun withSelection(value: String) = text.replaceFirst(exported, "\"decode_selection\": $value,")
        // as exported ("step"; null for full attention), and absent (an export written before decode selections)
        assertEquals(listOf("step", "step"), DecoderManifest.parse(text).artifacts.map { it.contract.decodeSelection })
        val absent = text.replaceFirst(exported, "").replaceFirst("\"decode_selection\": null,", "")
        assertEquals(listOf("step", "step"), DecoderManifest.parse(absent).artifacts.map { it.contract.decodeSelection })
        assertEquals("step", DecoderManifest.parse(withSelection("\"step\"")).artifacts[0].contract.decodeSelection)
        assertEquals("step", DecoderManifest.parse(withSelection("null")).artifacts[0].contract.decodeSelection)
        // "question": its decode takes held inputs this app does not build
        val question = assertThrows(DecoderException::class.java) { DecoderManifest.parse(withSelection("\"question\"")) }
        assertEquals("decoder.decode_selection: this app runs per-step selection only, found question; " +
            "export the decoder with --decode-selection step", question.message)
        val other = assertThrows(DecoderException::class.java) { DecoderManifest.parse(withSelection("\"sometimes\"")) }
        assertEquals("decoder.decode_selection: expected step or question, found sometimes", other.message)
        assertTrue(assertThrows(DecoderException::class.java) { DecoderContract("squeezed", "io", 0.3, contract.shapes, "split", "question") }
            .message!!.contains("--decode-selection step"))
    }

    /**
     * Split-plan stages of zeros (scores 0: every cluster ties) whose follow_weights are 0 except the exact stages':
     * prefill_exact's 0.6 / 0.3 on clustered rows [top] of every head, an exact decode step's (decode_exact, or
     * prefill_exact with one token) on rows [decodeTop]; records every feed.
     */
    private inner class FollowStages(val top: IntArray, val decodeTop: IntArray = top) : DecoderRuntime {
        override val name = "follow stages"
        val calls = ArrayList<String>()
        val feeds = ArrayList<Map<String, DecoderTensor>>()

        override fun run(method: String, inputs: Map<String, DecoderTensor>): Map<String, DecoderTensor> {
            calls.add(method)
            feeds.add(inputs)
            val stage = method.substringAfterLast('_').toInt()
            val exact = method.startsWith("prefill_exact") || method.startsWith("decode_exact")
            val n = (inputs.getValue("n_tokens") as DecoderTensor.Int64).data[0].toInt()
            // the prompt's exact tail is several tokens in these tests; an exact decode step one
            val rows = if (n == 1) decodeTop else top
            val (h, d) = pack.kvHeads to pack.headDim
            fun zeros(vararg shape: Int) = DecoderTensor.Float32(FloatArray(shape.fold(1) { a, b -> a * b }), shape)
            val out = LinkedHashMap<String, DecoderTensor>()
            if (stage < pack.layers) {
                out["hidden"] = zeros(n, 4)
                out["query"] = zeros(h, n, d)
                out["key"] = zeros(h, n, d)
                out["value"] = zeros(h, n, d)
                if (!exact) out["scores"] = zeros(h, contract.shapes.maxClusters)
            } else {
                out["logits"] = zeros(8)
            }
            if (stage >= 1) {
                val w = if (exact) contract.shapes.maxClustered else contract.shapes.maxKeep
                val weights = zeros(h, w)
                if (exact) for (head in 0 until h) {
                    weights.data[head * w + rows[0]] = 0.6f
                    weights.data[head * w + rows[1]] = 0.3f
                }
                out["follow_weights"] = weights
            }
            return out
        }
    }

    /** What the follow tests below share: the pack's layout, the lookup a step should make, rows a pointer may name. */
    private inner class Follow {
        val context = PackLayout.decoderContextInputs(pack, contract.shapes, "squeezed")
        val w = contract.shapes.maxClustered
        val layers = pack.layers
        val next = PackLayout.nextRows(pack, contract.shapes).mapValues { (it.value as DecoderTensor.Int64).data }
        val keepKeys = loop(ReplayStages()).keepKeys!!
        // clustered rows whose next row the selection (scores all 0: the first clusters' rows) does not keep
        val candidates = (0 until pack.numClustered).filter { j ->
            (0 until layers).all { l -> (0 until pack.kvHeads).all { h -> next.getValue("next_rows_$l")[h * w + j] - h * w >= keepKeys } }
        }
        val none = LongArray(pack.kvHeads * 2) { -1 }

        fun lookup(l: Int, keep: Int, follow: LongArray) = KeptRows.compute(
            context.getValue("counts_$l").let { DecoderTensor.Float32(FloatArray(it.elementCount), it.shape) },
            context.getValue("counts_$l") as DecoderTensor.Int64, context.getValue("cluster_start_$l") as DecoderTensor.Int64,
            context.getValue("clustered_keys_$l") as DecoderTensor.Float32, context.getValue("clustered_values_$l") as DecoderTensor.Float32,
            keep, contract.shapes.maxKeep, follow)

        /** Layer l's pointer after an exact call whose weights were heaviest on clustered rows [rows] (every head). */
        fun pointed(l: Int, rows: IntArray) = LongArray(pack.kvHeads * 2) { next.getValue("next_rows_$l")[(it / 2) * w + rows[it % 2]] }

        val prompt = { l: Int -> lookup(l, keepKeys, none) }
        fun following(rows: IntArray) = { l: Int -> lookup(l, keepKeys - 2, pointed(l, rows)) }
        val unpointed = { l: Int -> lookup(l, keepKeys - 2, none) }

        /** The step of each call (its stage 0): "prefill", "decode_exact", ... */
        fun steps(stages: FollowStages) = stages.calls.filter { it.endsWith("_0") }.map { it.removeSuffix("_0") }

        /** Per lookup (stage s >= 1 of a selecting step, layer s - 1): the expected kept rows. */
        fun check(stages: FollowStages, expected: List<(Int) -> KeptRows>) {
            val lookups = stages.calls.indices.filter { i ->
                !stages.calls[i].startsWith("prefill_exact") && !stages.calls[i].startsWith("decode_exact") && !stages.calls[i].endsWith("_0")
            }
            assertEquals(expected.size * layers, lookups.size)
            for ((k, i) in lookups.withIndex()) {
                val l = k % layers
                val want = expected[k / layers](l)
                for (name in listOf("kept_bias", "kept_keys")) {
                    assertArrayEquals((want.inputs().getValue(name) as DecoderTensor.Float32).data,
                        (stages.feeds[i].getValue(name) as DecoderTensor.Float32).data, "${stages.calls[i]} (lookup $k): $name")
                }
            }
        }
    }

    @Test
    fun theSplitPlanFollowsOnDecodeStepsAfterThePromptOnly() {
        // GenerationLoop._split_step: a 10-token question with a 2-token prompt tail (decode calls of the prompt) and
        // a 3-token exact tail, then two decode steps. The prompt's lookups keep keep_keys and follow nothing; the
        // first decode step keeps keep_keys - 2 plus the rows after prefill_exact's two heaviest clustered rows (its
        // slots are every clustered row, h * W + j); the second follows nothing (the first's weights are all 0)
        val f = Follow()
        val top = f.candidates.take(2).toIntArray()
        assertEquals(2, top.size)
        fun run(minKeep: Int): FollowStages {
            val stages = FollowStages(top)
            val c = DecoderContract("squeezed", "io", contract.kvBudget, contract.shapes, DecoderContract.SPLIT, prefillTail = 2,
                exactTail = 3, followKeys = 2, followMinKeep = minKeep)
            GenerationLoop(stages, c, pack, f.context).greedy(IntArray(10) { it + 1 }, 3)
            assertEquals(listOf("prefill", "decode", "decode", "prefill_exact", "decode", "decode"), f.steps(stages))
            return stages
        }
        val following = f.following(top)
        // the rule is visible: following the pointer attends other rows than following none, or not following
        for (l in 0 until f.layers) {
            assertTrue(!following(l).bias.contentEquals(f.unpointed(l).bias) && !f.unpointed(l).bias.contentEquals(f.prompt(l).bias))
        }
        f.check(run(0), listOf(f.prompt, f.prompt, f.prompt, following, f.unpointed))
        // gated (the pack keeps fewer keys than follow_min_keep): every lookup as the prompt's
        f.check(run(f.keepKeys + 1), List(5) { f.prompt })
    }

    @Test
    fun theSplitPlansOpeningRunsTheExactStagesAndTheNextDecodeFollowsThem() {
        // GenerationLoop.greedy / _split_step with exact_decode 1: a 10-token question (3-token exact tail), then the
        // answer's first decode step through the exact method (no lookup, every clustered row, one token at
        // cache_len 10), then two selecting decode steps. The exact step's weights point to rows [decodeTop], other
        // rows than prefill_exact's [top]: the first selecting step follows the exact decode step's pointer.
        val f = Follow()
        assertTrue(f.candidates.size >= 4, "${f.candidates}")
        val top = f.candidates.take(2).toIntArray()
        val decodeTop = f.candidates.drop(2).take(2).toIntArray()
        val stageNames = { steps: List<String> -> steps.flatMap { m -> (0..f.layers).map { "${m}_$it" } }.toSet() }
        fun run(opening: Int, methods: Set<String>): FollowStages {
            val stages = FollowStages(top, decodeTop)
            val c = DecoderContract("squeezed", "io", contract.kvBudget, contract.shapes, DecoderContract.SPLIT, exactTail = 3,
                followKeys = 2, followMinKeep = 0, exactDecode = opening, methods = methods)
            val loop = GenerationLoop(stages, c, pack, f.context)
            assertEquals(opening, loop.exactDecode)
            assertEquals(3, loop.greedy(IntArray(10) { it + 1 }, 4).decodeSteps)
            return stages
        }
        val following = f.following(decodeTop)
        fun keys(k: KeptRows) = (k.inputs().getValue("kept_keys") as DecoderTensor.Float32).data
        for (l in 0 until f.layers) assertTrue(!keys(following(l)).contentEquals(keys(f.following(top)(l))), "layer $l: distinct pointers")

        // the manifest lists decode_exact_<s>: the one-token stages
        val withStages = stageNames(listOf("prefill", "decode", "prefill_exact", "decode_exact"))
        val staged = run(1, withStages)
        assertEquals(listOf("prefill", "prefill_exact", "decode_exact", "decode", "decode"), f.steps(staged))
        for ((i, method) in staged.calls.withIndex()) {
            if (!method.startsWith("decode_exact")) continue
            val feed = staged.feeds[i]
            assertEquals(1L, (feed.getValue("n_tokens") as DecoderTensor.Int64).data.single(), method)
            assertEquals(10L, (feed.getValue("cache_len") as DecoderTensor.Int64).data.single(), method)
            if (method.endsWith("_0")) {
                assertArrayEquals(intArrayOf(1), feed.getValue("tokens").shape, method)  // static width 1
                assertTrue("next_centroids" !in feed, method)
            } else {
                // no lookup: every clustered row as [Hkv, Nc, D] views, no kept rows
                assertArrayEquals(intArrayOf(pack.kvHeads, f.w, pack.headDim), feed.getValue("clustered_keys").shape, method)
                assertTrue(feed.keys.none { it.startsWith("kept_") }, method)
            }
        }
        f.check(staged, listOf(f.prompt, following, f.unpointed))

        // no decode_exact stages listed (a split export without them): prefill_exact's stages with the one token
        // padded to the method's width (exact_tail 3)
        val padded = run(1, stageNames(listOf("prefill", "decode", "prefill_exact")))
        assertEquals(listOf("prefill", "prefill_exact", "prefill_exact", "decode", "decode"), f.steps(padded))
        val exactStep = padded.calls.withIndex().filter { it.value == "prefill_exact_0" }.map { padded.feeds[it.index] }[1]
        val tokens = exactStep.getValue("tokens") as DecoderTensor.Int64
        assertArrayEquals(intArrayOf(3), tokens.shape)
        assertEquals(listOf(0L, 0L), tokens.data.drop(1))
        assertEquals(1L, (exactStep.getValue("n_tokens") as DecoderTensor.Int64).data.single())
        assertEquals(10L, (exactStep.getValue("cache_len") as DecoderTensor.Int64).data.single())
        f.check(padded, listOf(f.prompt, following, f.unpointed))

        // exact_decode 0: every decode step selects, the first following prefill_exact's pointer
        val selecting = run(0, withStages)
        assertEquals(listOf("prefill", "prefill_exact", "decode", "decode", "decode"), f.steps(selecting))
        f.check(selecting, listOf(f.prompt, f.following(top), f.unpointed, f.unpointed))
    }

    private fun DecoderMethod.copyWithOutputs(n: Int) = DecoderMethod(name, inputs, List(n) { "o$it" }, tensorNames)
}
