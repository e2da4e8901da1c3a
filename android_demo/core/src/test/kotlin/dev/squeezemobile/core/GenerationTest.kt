package dev.squeezemobile.core

import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

/**
 * The generation loop against Python's GenerationLoop: a fake runtime replays, call by call, the outputs the
 * exported decoder graph (run by PyTorch, tiny real-format Llama, real pack) gave Python, and checks that every
 * input the Kotlin loop feeds is byte-identical to Python's (sha256 of tokens, lengths, keep_keys and the cache
 * written from earlier steps). Tokens, call count and stop handling must be exact.
 */
class GenerationTest {
    private val gen = Golden.json("qa_generation.json.gz")
    private val outputs = Golden.floatsLE("qa_outputs_f32le.bin.gz")
    private val pack = ContextPack.read(Golden.bytes("qa_pack.safetensors"), "qa_pack.safetensors")
    private val shapes = DecoderShapes.parse(gen["shapes"])
    private val manifest = DecoderManifest.parse(Golden.bytes("qa_decoder_manifest.json"))

    /** Replays one recorded run; fails on any input that differs from what Python fed at that call. */
    inner class ReplayRuntime(private val run: JsonPath, private val checkInputs: Boolean = true) : DecoderRuntime {
        override val name = "replay (PyTorch outputs)"
        var calls = 0
        private val artifact = manifest.pick("onnx", run["attention"].string())

        override fun run(method: String, inputs: Map<String, DecoderTensor>): Map<String, DecoderTensor> {
            val recorded = run["calls"].list()
            assertTrue(calls < recorded.size, "call ${calls + 1} was not made by Python")
            val call = recorded[calls++]
            assertEquals(call["method"].string(), method, "call $calls")
            // exactly the inputs the exported method declares (names, shapes, dtypes), as the manifest lists them
            val declared = artifact.methods.getValue(method).inputs
            assertEquals(declared.map { it.name }.toSet(), inputs.keys, "call $calls: input names")
            for (d in declared) {
                val range = if (d.name == "tokens") artifact.contract.tokenRanges[method] else null  // a dynamic axis
                val shape = inputs.getValue(d.name).shape
                if (range == null) assertArrayEquals(d.shape, shape, "call $calls: ${d.name}")
                else assertTrue(shape.size == 1 && shape[0] in range, "call $calls: ${d.name} ${shape.toList()} not in $range")
                assertEquals(d.dtype, ContextPackTest.dtypeOf(inputs.getValue(d.name)), "call $calls: ${d.name}")
            }
            if (checkInputs) {
                for ((name, e) in call["inputs"].obj()) {
                    val t = inputs[name] ?: throw AssertionError("call $calls: input $name missing")
                    val ej = JsonPath(e, name)
                    assertArrayEquals(ej["shape"].intArray(), t.shape, "call $calls: $name")
                    assertEquals(ej["dtype"].string(), ContextPackTest.dtypeOf(t), "call $calls: $name")
                    assertEquals(ej["sha256"].string(), ContextPackTest.sha256(t), "call $calls ($method): input $name")
                }
                assertEquals(call["inputs"].obj().size + run["context_inputs"].obj().size, inputs.size, "call $calls: inputs")
            }
            return call["outputs"].obj().mapValues { (k, v) ->
                val o = JsonPath(v, k)
                val at = o["offset"].int()
                DecoderTensor.Float32(outputs.copyOfRange(at, at + o["count"].int()), o["shape"].intArray())
            }
        }
    }

    /** The runtime contract of the real export's ONNX artifact for the run's attention. */
    private fun contract(run: JsonPath) = manifest.pick("onnx", run["attention"].string()).contract

    @Test
    fun promptChunksAreCutAsPythonCutsThem() {
        fun chunks(tokens: Int, rows: Int, tail: Int) = GenerationLoop.prefillChunks(tokens, rows, tail).map { listOf(it.first, it.second) }
        // the values test_sa_lookup.py asserts for squeezed_attention.settings.prefill_chunks
        assertEquals(listOf(listOf(0, 5), listOf(5, 21), listOf(21, 37)), chunks(37, 16, 0))
        assertEquals(listOf(listOf(0, 16)), chunks(16, 16, 0))
        assertEquals(listOf(listOf(0, 1), listOf(1, 2), listOf(2, 3)), chunks(3, 1, 0))
        assertEquals(listOf(listOf(0, 3), listOf(3, 4), listOf(4, 5)), chunks(5, 0, 2))
        assertEquals(listOf(listOf(0, 1), listOf(1, 2), listOf(2, 3)), chunks(3, 0, 16))
        assertEquals(listOf(listOf(0, 3), listOf(3, 6), listOf(6, 7), listOf(7, 8), listOf(8, 9), listOf(9, 10)), chunks(10, 3, 4))
        assertEquals(listOf(listOf(0, 4)), chunks(4, 0, 0))
    }

    @Test
    fun aPromptTailRunsAsDecodeStepsAfterOnePrefill() {
        // the manifest's prefill_tail: the head of the question is one prefill call, each tail token a decode step
        val calls = ArrayList<String>()
        val recorder = object : DecoderRuntime {
            override val name = "recorder"
            override fun run(method: String, inputs: Map<String, DecoderTensor>): Map<String, DecoderTensor> {
                val n = (inputs.getValue("n_tokens") as DecoderTensor.Int64).data[0]
                val at = (inputs.getValue("cache_len") as DecoderTensor.Int64).data[0]
                calls.add("$method:$n@$at")
                return mapOf("logits" to DecoderTensor.Float32(FloatArray(8) { if (it == calls.size % 8) 1f else 0f }, intArrayOf(8)))
            }
        }
        val contract = DecoderContract("squeezed", "buffer", 0.3, shapes, prefillTail = 4)
        val loop = GenerationLoop(recorder, contract, pack, PackLayout.decoderContextInputs(pack, shapes, "squeezed"))
        loop.prompt(IntArray(10) { it + 1 }, null)
        assertEquals(listOf("prefill:6@0", "decode:1@6", "decode:1@7", "decode:1@8", "decode:1@9"), calls)
        calls.clear()
        GenerationLoop(recorder, DecoderContract("squeezed", "buffer", 0.3, shapes), pack,
            PackLayout.decoderContextInputs(pack, shapes, "squeezed")).prompt(IntArray(10) { it + 1 }, null)
        assertEquals(listOf("prefill:10@0"), calls)  // no tail (the export's default): one selection, one call
        assertThrows(DecoderException::class.java) { DecoderContract("squeezed", "buffer", 0.3, shapes, prefillTail = -1) }
    }

    @Test
    fun decoderManifestOfARealExport() {
        assertEquals(gen["model"]["weights_sha256"].string(), manifest.weightsSha256)
        assertEquals(gen["model"]["tokenizer_sha256"].string(), manifest.tokenizerSha256)
        pack.checkModel(manifest.weightsSha256, manifest.tokenizerSha256)
        assertEquals(listOf("squeezed", "full"), manifest.artifacts.map { it.contract.attention })
        val squeezed = manifest.pick("onnx", "squeezed")
        assertEquals(shapes, squeezed.contract.shapes)
        assertEquals("io", squeezed.contract.state)
        assertEquals(0.3, squeezed.contract.kvBudget!!, 0.0)
        assertEquals(null, manifest.pick(attention = "full").contract.kvBudget)
        assertEquals(setOf("prefill", "decode"), squeezed.methods.keys)
        assertEquals(listOf("logits", "new_keys", "new_values"), squeezed.methods.getValue("decode").outputs)
        assertEquals(shapes.maxPrompt, squeezed.methods.getValue("prefill").inputs[0].shape[0])
        // the .onnx graph's token axis is dynamic: a question is fed at its own length, not padded to max_prompt
        assertEquals(1..shapes.maxPrompt, squeezed.contract.tokenRanges["prefill"])
        assertEquals(17, squeezed.contract.tokenWidth("prefill", 17, shapes.maxPrompt))
        assertEquals(1, squeezed.contract.tokenWidth("decode", 1, 1))
        // a contract without dynamic axes (static shapes, older manifests): padded to the method's width
        assertEquals(shapes.maxPrompt, DecoderContract("squeezed", "io", 0.3, shapes).tokenWidth("prefill", 17, shapes.maxPrompt))
        val info = manifest.tokenizer
        assertEquals("tokenizer.json", info.file)
        assertEquals(gen["tokenizer"]["chat"]["suffix"].string(), info.suffix)
        assertEquals(gen["tokenizer"]["stop_token_ids"].intArray().toSet(), info.stopTokenIds)
        assertEquals(manifest.numLayers, pack.layers)
        val e = assertThrows(DecoderException::class.java) { manifest.pick("pte") }
        assertTrue(e.message!!.contains("it has: onnx"), e.message)
        val video = Golden.text("manifest.json")
        assertTrue(assertThrows(DecoderException::class.java) { DecoderManifest.parse(video) }.message!!.contains("not describe an exported decoder"))
        val broken = String(Golden.bytes("qa_decoder_manifest.json"), Charsets.UTF_8).replace("\"max_keep\"", "\"max_kept\"")
        assertTrue(assertThrows(DecoderException::class.java) { DecoderManifest.parse(broken) }.message!!.contains("max_keep"))
    }

    @Test
    fun greedyAndForcedRunsGiveThePythonTokens() {
        val promptIds = gen["prompt_ids"].intArray()
        for (run in gen["runs"].list()) {
            val runtime = ReplayRuntime(run)
            val c = contract(run)
            val loop = GenerationLoop(runtime, c, pack, PackLayout.decoderContextInputs(pack, shapes, c.attention))
            if (!run["keep_keys"].isNull) assertEquals(run["keep_keys"].int(), loop.keepKeys)
            val forced = if (run["forced"].isNull) null else run["forced"].intArray()
            val out = loop.greedy(promptIds, gen["max_new_tokens"].int(), forced, run["stop_ids"].intArray().toSet())
            val what = "${run["attention"].string()} ${run["kind"].string()}"
            assertArrayEquals(run["tokens"].intArray(), out.tokens, what)
            assertEquals(run["calls"].list().size, runtime.calls, what)
            assertEquals(runtime.calls - 1, out.decodeSteps, what)
        }
        // the forced run met the end-of-turn token: it stopped there, without emitting it
        val forcedRun = gen["runs"].list().first { it["kind"].string() == "forced" }
        val stop = gen["tokenizer"]["stop_token_ids"].intArray().toSet()
        val forced = forcedRun["forced"].intArray()
        val tokens = forcedRun["tokens"].intArray()
        assertTrue(tokens.size < forced.size && forced[tokens.size] in stop && tokens.none { it in stop })
    }

    @Test
    fun aStopTokenFromTheFirstLogitsEndsAfterPrefill() {
        val run = gen["runs"].list().first { it["kind"].string() == "greedy" && it["attention"].string() == "squeezed" }
        val runtime = ReplayRuntime(run)
        val loop = GenerationLoop(runtime, contract(run), pack, PackLayout.decoderContextInputs(pack, shapes, "squeezed"))
        val first = run["tokens"].intArray()[0]
        val out = loop.greedy(gen["prompt_ids"].intArray(), 12, stopIds = setOf(first))
        assertEquals(0, out.tokens.size)
        assertEquals(1, runtime.calls)
        assertEquals(1, out.logits.size)
        assertEquals(first, GenerationLoop.argmax(out.logits[0]))
    }

    @Test
    fun documentQaFramesTheQuestionStreamsTextAndTimesTheSteps() {
        val run = gen["runs"].list().first { it["kind"].string() == "greedy" && it["attention"].string() == "full" }
        val tokenizer = ByteLevelBpeTokenizer.parse(Golden.bytes("qa_tokenizer_tiny.json"))
        var now = 0L
        val qa = DocumentQa.attach(manifest, manifest.pick("onnx", "full"), ReplayRuntime(run), tokenizer, pack,
            clockNanos = { now.also { now += 2_000_000L } })
        assertArrayEquals(gen["prompt_ids"].intArray(), qa.promptIds(gen["prompt"].string()))
        val streamed = StringBuilder()
        val answer = qa.generate(gen["prompt"].string(), maxNewTokens = 12) { streamed.append(it) }
        assertArrayEquals(run["tokens"].intArray(), answer.tokenIds)
        assertEquals(run["text"].string(), answer.text)
        assertEquals(answer.text, streamed.toString())
        assertEquals(pack.numTokens, answer.contextTokens)
        assertEquals(gen["prompt_ids"].intArray().size, answer.promptTokens)
        assertEquals(2.0, answer.prefillMs, 1e-9)
        assertEquals(11, answer.decodeTokens)
        assertTrue(assertThrows(DecoderException::class.java) { qa.promptIds("x", raw = true) }.message!!.contains("drop --raw"))
    }

    @Test
    fun lengthsOutsideTheArtifactAreRefused() {
        val run = gen["runs"].list()[0]
        val loop = GenerationLoop(ReplayRuntime(run), contract(run), pack, emptyMap())
        assertTrue(assertThrows(DecoderException::class.java) { loop.checkLengths(shapes.maxPrompt + 1, 1) }.message!!
            .contains("--max-prompt ${shapes.maxPrompt + 1}"))
        assertThrows(DecoderException::class.java) { loop.checkLengths(0, 1) }
        assertThrows(DecoderException::class.java) { loop.checkLengths(10, shapes.maxPrompt + shapes.maxNew - 9) }
        loop.checkLengths(10, shapes.maxPrompt + shapes.maxNew - 10)
        assertEquals(2, GenerationLoop.argmax(floatArrayOf(1f, 3f, 3f + 0f, Float.NEGATIVE_INFINITY).also { it[1] = 2f }))
        assertEquals(1, GenerationLoop.argmax(floatArrayOf(1f, Float.NaN, 5f)))
    }
}
