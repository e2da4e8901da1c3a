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
 * loop only hands on, must be handed on unchanged (the same tensor the previous stage returned).
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
        val out = loop.greedy(gen["prompt_ids"].intArray(), gen["max_new_tokens"].int())
        assertArrayEquals(gen["tokens"].intArray(), out.tokens)
        assertEquals(gen["calls"].list().size, runtime.calls)
        // prefill_0..L (the tokens before the exact tail), prefill_exact_0..L (the last exact_tail tokens), decode_0..L
        assertTrue(contract.exactTail in 1 until gen["prompt_ids"].intArray().size, "the golden's tail is shorter than its question")
        assertEquals(3 * (pack.layers + 1), runtime.calls)
        assertEquals((0..pack.layers).map { "prefill_exact_$it" },
            gen["calls"].list().map { it["method"].string() }.filter { it.startsWith("prefill_exact_") })
        assertEquals(1, out.decodeSteps)
        // one CPU lookup per layer for the selecting prefill and the decode step (none between the exact stages),
        // each read between two clock reads (1 ms apart on this clock)
        assertEquals(2L * pack.layers * 1_000_000L, out.lookupNanos)
        assertTrue(!out.cancelled)
    }

    @Test
    fun documentQaRunsTheSplitPlanAndStopsWhenCancelled() {
        val tokenizer = ByteLevelBpeTokenizer.parse(Golden.bytes("qa_tokenizer_tiny.json"))
        val manifest = DecoderManifest.parse(Golden.bytes("qa_decoder_manifest.json"))
        val runtime = ReplayStages()
        val qa = DocumentQa(runtime, contract, tokenizer, manifest.tokenizer, pack)
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
        assertEquals(mapOf("output_0" to "logits", "output_1" to "new_keys", "output_2" to "new_values"),
            prefill.outputsByRuntimeName(listOf("output_2", "output_0", "output_1")))
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
        // followed keys (export --follow-keys): decode would need the previous call's follow_out, which this loop
        // does not feed; 0 (and null / absent) run
        val followed = assertThrows(DecoderException::class.java) {
            DecoderManifest.parse(text.replaceFirst(exported, "$exported \"follow_keys\": 4,"))
        }
        assertEquals("decoder.follow_keys: this app does not feed followed keys yet, found 4; " +
            "export the decoder with --follow-keys 0", followed.message)
        assertEquals("step", DecoderManifest.parse(text.replaceFirst(exported, "$exported \"follow_keys\": 0,"))
            .artifacts[0].contract.decodeSelection)
        assertTrue(assertThrows(DecoderException::class.java) { DecoderContract("squeezed", "io", 0.3, contract.shapes, "split", "question") }
            .message!!.contains("--decode-selection step"))
    }

    private fun DecoderMethod.copyWithOutputs(n: Int) = DecoderMethod(name, inputs, List(n) { "o$it" }, tensorNames)
}
