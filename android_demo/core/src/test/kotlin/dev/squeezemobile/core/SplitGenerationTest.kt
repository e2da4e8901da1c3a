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
 * follows 2 keys: its decode steps' kept rows include the rows the previous call's follow_weights pointed to.
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
        // prefill_0..L (the tokens before the exact tail), prefill_exact_0..L (the last exact_tail tokens), then two
        // decode steps decode_0..L: the first follows prefill_exact's pointer, the second the first's
        assertTrue(contract.exactTail in 1 until gen["prompt_ids"].intArray().size, "the golden's tail is shorter than its question")
        assertEquals(4 * (pack.layers + 1), runtime.calls)
        assertEquals((0..pack.layers).map { "prefill_exact_$it" },
            gen["calls"].list().map { it["method"].string() }.filter { it.startsWith("prefill_exact_") })
        assertEquals(2, out.decodeSteps)
        // one CPU lookup per layer for the selecting prefill and each decode step (none between the exact stages),
        // and one pointer per layer of every call (follow_weights ranked after each stage s >= 1), each read between
        // two clock reads (1 ms apart on this clock)
        assertEquals((3L + 4L) * pack.layers * 1_000_000L, out.lookupNanos)
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
     * Split-plan stages of zeros (scores 0: every cluster ties) whose follow_weights are 0 except prefill_exact's,
     * 0.6 / 0.3 on clustered rows [top] of every head; records every feed.
     */
    private inner class FollowStages(val top: IntArray) : DecoderRuntime {
        override val name = "follow stages"
        val calls = ArrayList<String>()
        val feeds = ArrayList<Map<String, DecoderTensor>>()

        override fun run(method: String, inputs: Map<String, DecoderTensor>): Map<String, DecoderTensor> {
            calls.add(method)
            feeds.add(inputs)
            val stage = method.substringAfterLast('_').toInt()
            val exact = method.startsWith("prefill_exact")
            val n = (inputs.getValue("n_tokens") as DecoderTensor.Int64).data[0].toInt()
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
                    weights.data[head * w + top[0]] = 0.6f
                    weights.data[head * w + top[1]] = 0.3f
                }
                out["follow_weights"] = weights
            }
            return out
        }
    }

    @Test
    fun theSplitPlanFollowsOnDecodeStepsAfterThePromptOnly() {
        // GenerationLoop._split_step: a 10-token question with a 2-token prompt tail (decode calls of the prompt) and
        // a 3-token exact tail, then two decode steps. The prompt's lookups keep keep_keys and follow nothing; the
        // first decode step keeps keep_keys - 2 plus the rows after prefill_exact's two heaviest clustered rows (its
        // slots are every clustered row, h * W + j); the second follows nothing (the first's weights are all 0)
        val context = PackLayout.decoderContextInputs(pack, contract.shapes, "squeezed")
        val w = contract.shapes.maxClustered
        val layers = pack.layers
        val next = PackLayout.nextRows(pack, contract.shapes).mapValues { (it.value as DecoderTensor.Int64).data }
        val keepKeys = loop(ReplayStages()).keepKeys!!
        // clustered rows whose next row the selection (scores all 0: the first clusters' rows) does not keep
        val top = (0 until pack.numClustered).filter { j ->
            (0 until layers).all { l -> (0 until pack.kvHeads).all { h -> next.getValue("next_rows_$l")[h * w + j] - h * w >= keepKeys } }
        }.take(2).toIntArray()
        assertEquals(2, top.size)
        fun lookup(l: Int, keep: Int, follow: LongArray) = KeptRows.compute(
            context.getValue("counts_$l").let { DecoderTensor.Float32(FloatArray(it.elementCount), it.shape) },
            context.getValue("counts_$l") as DecoderTensor.Int64, context.getValue("cluster_start_$l") as DecoderTensor.Int64,
            context.getValue("clustered_keys_$l") as DecoderTensor.Float32, context.getValue("clustered_values_$l") as DecoderTensor.Float32,
            keep, contract.shapes.maxKeep, follow)
        val none = LongArray(pack.kvHeads * 2) { -1 }
        fun pointed(l: Int) = LongArray(pack.kvHeads * 2) { next.getValue("next_rows_$l")[(it / 2) * w + top[it % 2]] }
        fun run(minKeep: Int): FollowStages {
            val stages = FollowStages(top)
            val c = DecoderContract("squeezed", "io", contract.kvBudget, contract.shapes, DecoderContract.SPLIT, prefillTail = 2,
                exactTail = 3, followKeys = 2, followMinKeep = minKeep)
            GenerationLoop(stages, c, pack, context).greedy(IntArray(10) { it + 1 }, 3)
            val steps = stages.calls.filter { it.endsWith("_0") }.map { it.removeSuffix("_0") }
            assertEquals(listOf("prefill", "decode", "decode", "prefill_exact", "decode", "decode"), steps)
            return stages
        }
        // per lookup (stage s >= 1 of a selecting step, layer s - 1): the expected kept rows
        fun check(stages: FollowStages, expected: List<(Int) -> KeptRows>) {
            val lookups = stages.calls.indices.filter { i ->
                !stages.calls[i].startsWith("prefill_exact") && !stages.calls[i].endsWith("_0")
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
        val prompt = { l: Int -> lookup(l, keepKeys, none) }
        val following = { l: Int -> lookup(l, keepKeys - 2, pointed(l)) }
        val unpointed = { l: Int -> lookup(l, keepKeys - 2, none) }
        // the rule is visible: following the pointer attends other rows than following none, or not following
        for (l in 0 until layers) {
            assertTrue(!following(l).bias.contentEquals(unpointed(l).bias) && !unpointed(l).bias.contentEquals(prompt(l).bias))
        }
        check(run(0), listOf(prompt, prompt, prompt, following, unpointed))
        // gated (the pack keeps fewer keys than follow_min_keep): every lookup as the prompt's
        check(run(keepKeys + 1), List(5) { prompt })
    }

    private fun DecoderMethod.copyWithOutputs(n: Int) = DecoderMethod(name, inputs, List(n) { "o$it" }, tensorNames)
}
