package dev.squeezemobile.core

import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertSame
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

/**
 * The generation loop against Python's GenerationLoop: a fake runtime replays, call by call, the outputs the
 * exported decoder graph (run by PyTorch, tiny real-format Llama, real pack) gave Python, and checks that every
 * input the Kotlin loop feeds is byte-identical to Python's (sha256 of tokens, lengths, keep_keys, the followed rows
 * fed back from the previous call's follow_out, and the cache written from earlier steps). Tokens, call count and
 * stop handling must be exact.
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
        /** Per call: "method" or "method branch=k" (the graph selector fed, as reference.json writes it). */
        val log = ArrayList<String>()
        private val artifact = manifest.pick("onnx", run["attention"].string())

        override fun run(method: String, inputs: Map<String, DecoderTensor>): Map<String, DecoderTensor> {
            val recorded = run["calls"].list()
            assertTrue(calls < recorded.size, "call ${calls + 1} was not made by Python")
            val call = recorded[calls++]
            assertEquals(call["method"].string(), method, "call $calls")
            log.add(branchCall(method, inputs))
            // exactly the inputs the exported method declares (names, shapes, dtypes), as the manifest lists them
            val declared = artifact.methods.getValue(method).inputs
            assertEquals(declared.map { it.name }.toSet(), inputs.keys, "call $calls: input names")
            for (d in declared) {
                val range = if (d.name == "tokens") artifact.contract.tokenRanges[method] else null  // a dynamic axis
                val shape = inputs.getValue(d.name).shape
                // the golden's graph follows the run's follow_keys (2), the manifest's default export 4
                val expected = if (d.name.startsWith("follow_rows_")) intArrayOf(d.shape[0], run["follow_keys"].int()) else d.shape
                if (range == null) assertArrayEquals(expected, shape, "call $calls: ${d.name}")
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
                val values = outputs.copyOfRange(at, at + o["count"].int())
                // every output is float32 in the blob; follow_out (flat rows, -1 none) is the graph's int64
                if (k == "follow_out") DecoderTensor.Int64(LongArray(values.size) { values[it].toLong() }, o["shape"].intArray())
                else DecoderTensor.Float32(values, o["shape"].intArray())
            }
        }
    }

    /**
     * The runtime contract of the real export's ONNX artifact for the run's attention, with the run's exact tail (the
     * golden's "greedy-short-tail" run gave Python's loop a shorter one than the artifact's) and followed keys (the
     * golden's graph follows 2 from any pack, follow_min_keep 0, or none: "greedy-follow-gated"; the manifest's
     * default export 4 from 32 kept keys), and the run's answer's opening (exact_decode: 3 for the golden's squeezed
     * runs, 0 for "greedy-select-decode" and full attention; the manifest's default export 14).
     */
    private fun contract(run: JsonPath): DecoderContract {
        val c = manifest.pick("onnx", run["attention"].string()).contract
        val exact = run["exact_tail"].int()
        return (if (exact == c.exactTail) c else c.withExactTail(exact))
            .withExactHead(run["exact_head"].int())   // the golden's loops: 0, and 2 in "greedy-head-tail"
            .withFollowKeys(run["follow_keys"].int(), run["follow_min_keep"].int())
            .withExactDecode(run["exact_decode"].int())
            .withExactBelow(run["exact_below"].double())
    }

    companion object {
        /** "method" or "method branch=k": the call and the graph selector it fed (reference.json's "calls"). */
        fun branchCall(method: String, inputs: Map<String, DecoderTensor>): String {
            val branch = inputs["branch"] ?: return method
            return "$method branch=${(branch as DecoderTensor.Int64).data.single()}"
        }
    }

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

    /**
     * Records each call as "method:ids@cache_len/width" (the ids fed before the padding; the tests' ids are 1..n, never
     * 0) and returns logits whose argmax is the call's number (mod 8): the prompt returns the last call's logits.
     */
    private class CallRecorder : DecoderRuntime {
        override val name = "recorder"
        val calls = ArrayList<String>()
        val feeds = ArrayList<Map<String, DecoderTensor>>()

        override fun run(method: String, inputs: Map<String, DecoderTensor>): Map<String, DecoderTensor> {
            val tokens = inputs.getValue("tokens") as DecoderTensor.Int64
            val n = (inputs.getValue("n_tokens") as DecoderTensor.Int64).data[0].toInt()
            val at = (inputs.getValue("cache_len") as DecoderTensor.Int64).data[0]
            assertArrayEquals(intArrayOf(tokens.data.size), tokens.shape)
            assertTrue(tokens.data.drop(n).all { it == 0L }, "$method: padded with 0")
            calls.add("$method:${tokens.data.take(n).joinToString(",")}@$at/${tokens.data.size}")
            feeds.add(inputs)
            return mapOf("logits" to DecoderTensor.Float32(FloatArray(8) { if (it == calls.size % 8) 1f else 0f }, intArrayOf(8)))
        }
    }

    /** The calls GenerationLoop.prompt makes for a question of ids 1..[n] under a squeezed "buffer" contract. */
    private fun promptCalls(n: Int, rows: Int = 0, tail: Int = 0, exact: Int = 0,
                            ranges: Map<String, IntRange> = emptyMap(), head: Int = 0): List<String> {
        val recorder = CallRecorder()
        val contract = DecoderContract("squeezed", "buffer", 0.3, shapes, prefillRows = rows, prefillTail = tail,
            tokenRanges = ranges, exactTail = exact, exactHead = head)
        val logits = GenerationLoop(recorder, contract, pack, PackLayout.decoderContextInputs(pack, shapes, "squeezed"))
            .prompt(IntArray(n) { it + 1 }, null)
        assertEquals(recorder.calls.size % 8, GenerationLoop.argmax(logits), "the last call's logits")
        return recorder.calls
    }

    @Test
    fun anExactTailRunsLastAsOnePrefillExactCall() {
        // the sequences Python's GenerationLoop.prompt makes (exact_start, prefill_chunks, token_width)
        val p = shapes.maxPrompt
        // exact_tail 0 (manifests before it): as before, selection chunks over the whole question
        assertEquals(listOf("prefill:1,2,3,4@0/$p", "prefill:5,6,7,8@4/$p", "decode:9@8/1", "decode:10@9/1"),
            promptCalls(10, rows = 4, tail = 2))
        assertEquals(listOf("prefill:1,2,3,4,5,6,7,8,9,10@0/$p"), promptCalls(10))
        // E < the question: its tokens before the tail in selection chunks, then the tail (padded to exact_tail)
        assertEquals(listOf("prefill:1,2,3,4,5,6,7@0/$p", "prefill_exact:8,9,10@7/3"), promptCalls(10, exact = 3))
        assertEquals(listOf("decode:1@0/1", "prefill:2,3,4,5@1/$p", "decode:6@5/1", "decode:7@6/1", "prefill_exact:8,9,10@7/3"),
            promptCalls(10, rows = 4, tail = 2, exact = 3))
        assertEquals(listOf("prefill:1,2,3@0/$p", "prefill:4,5,6@3/$p", "prefill_exact:7,8,9,10@6/4"),
            promptCalls(10, rows = 3, exact = 4))
        assertEquals(listOf("decode:1@0/1", "decode:2@1/1", "prefill_exact:3,4,5@2/3"), promptCalls(5, tail = 2, exact = 3))
        // one 1-token chunk before the tail is a prefill call (a decode step only among several chunks)
        assertEquals(listOf("prefill:1@0/$p", "prefill_exact:2,3,4@1/3"), promptCalls(4, exact = 3))
        assertEquals(listOf("prefill:1@0/$p", "prefill_exact:2,3,4@1/3"), promptCalls(4, tail = 1, exact = 3))
        assertEquals(listOf("prefill:1@0/$p", "prefill_exact:2,3,4@1/3"), promptCalls(4, rows = 1, exact = 3))
        assertEquals(listOf("prefill:1@0/$p", "prefill_exact:2,3,4,5,6,7,8,9,10@1/9"), promptCalls(10, rows = 4, tail = 2, exact = 9))
        // E >= the question: the whole question is one prefill_exact call at cache_len 0
        assertEquals(listOf("prefill_exact:1,2,3,4,5,6,7,8,9,10@0/16"), promptCalls(10, rows = 4, tail = 2, exact = 16))
        assertEquals(listOf("prefill_exact:1,2,3,4,5,6,7,8,9,10@0/10"), promptCalls(10, rows = 4, tail = 2, exact = 10))
        // dynamic token axes in the manifest: the ids at their own length (raised to the range's minimum)
        val dynamic = mapOf("prefill" to 1..p, "prefill_exact" to 1..8)
        assertEquals(listOf("prefill:1,2@0/2", "prefill_exact:3,4,5,6,7,8,9,10@2/8"), promptCalls(10, exact = 8, ranges = dynamic))
        assertEquals(listOf("prefill_exact:1,2,3,4,5@0/5"), promptCalls(5, exact = 8, ranges = dynamic))
        assertEquals(listOf("prefill:1,2,3,4,5,6@0/$p", "prefill_exact:7@6/2"), promptCalls(7, exact = 1, ranges = mapOf("prefill_exact" to 2..4)))
    }

    @Test
    fun prefillExactGetsEveryInputItsMethodDeclaresAndWritesTheCacheAtItsStart() {
        // the exported prefill_exact's inputs (exportable.ExportableDecoder, exact=True): no keep_keys; per layer the
        // fixed context's rows only (runtimes pass on the declared inputs of a method, so the rest of the feed is unused)
        val recorder = CallRecorder()
        val contract = DecoderContract("squeezed", "buffer", 0.3, shapes, exactTail = 3)
        GenerationLoop(recorder, contract, pack, PackLayout.decoderContextInputs(pack, shapes, "squeezed")).prompt(IntArray(10) { it + 1 }, null)
        val declared = listOf("tokens", "n_tokens", "cache_len", "context_len") +
            (0 until pack.layers).flatMap { l ->
                listOf("sink_kv_$l", "window_kv_$l", "clustered_keys_$l", "clustered_values_$l", "counts_$l")
            }
        assertEquals(listOf("prefill", "prefill_exact"), recorder.calls.map { it.substringBefore(':') })
        val feed = recorder.feeds[1]
        assertTrue(feed.keys.containsAll(declared), "prefill_exact feed: ${feed.keys}")
        assertEquals(pack.numTokens.toLong(), (feed.getValue("context_len") as DecoderTensor.Int64).data[0])
        // state "io": the loop writes prefill_exact's new keys/values at its cache_len (the tokens before the tail)
        val io = object : DecoderRuntime {
            override val name = "io"
            var calls = 0
            override fun run(method: String, inputs: Map<String, DecoderTensor>): Map<String, DecoderTensor> {
                calls++
                val n = (inputs.getValue("n_tokens") as DecoderTensor.Int64).data[0].toInt()
                val kv = intArrayOf(pack.layers, pack.kvHeads, n, pack.headDim)
                return mapOf("logits" to DecoderTensor.Float32(FloatArray(4), intArrayOf(4)),
                    "new_keys" to DecoderTensor.Float32(FloatArray(kv.reduce(Int::times)) { calls.toFloat() }, kv),
                    "new_values" to DecoderTensor.Float32(FloatArray(kv.reduce(Int::times)) { -calls.toFloat() }, kv))
            }
        }
        val loop = GenerationLoop(io, DecoderContract("squeezed", "io", 0.3, shapes, exactTail = 3), pack,
            PackLayout.decoderContextInputs(pack, shapes, "squeezed"))
        val cache = loop.newCache()!!
        loop.prompt(IntArray(10) { it + 1 }, cache)
        assertEquals(2, io.calls)
        for (l in 0 until cache.layers) for (h in 0 until cache.heads) for (t in 0 until cache.capacity) {
            val expected = when { t < 7 -> 1f; t < 10 -> 2f; else -> 0f }
            val at = ((l * cache.heads + h) * cache.capacity + t) * cache.headDim
            assertEquals(expected, cache.keys[at], "keys layer $l head $h token $t")
            assertEquals(-expected + 0f, cache.values[at] + 0f, "values layer $l head $h token $t")
        }
    }

    @Test
    fun eachMethodGetsTheContextInputsInTheShapesItDeclares() {
        // prefill_exact declares the clustered tables per KV head, [Hkv, Nc, D] (exportable.ExportableDecoder, exact),
        // prefill and decode the flat [Hkv * Nc, D] tables: the loop feeds views of the same rows (GenerationLoop._shaped)
        val context = PackLayout.decoderContextInputs(pack, shapes, "squeezed")
        val (h, nc, d) = Triple(pack.kvHeads, shapes.maxClustered, pack.headDim)
        val perHead = (0 until pack.layers).flatMap { l -> listOf("clustered_keys_$l", "clustered_values_$l") }
            .associateWith { intArrayOf(h, nc, d) }
        val flat = perHead.mapValues { intArrayOf(h * nc, d) }
        val contract = DecoderContract("squeezed", "buffer", 0.3, shapes, exactTail = 3,
            inputShapes = mapOf("prefill" to flat, "decode" to flat, "prefill_exact" to perHead))
        val recorder = CallRecorder()
        val loop = GenerationLoop(recorder, contract, pack, context)
        loop.greedy(IntArray(10) { it + 1 }, 2)
        assertEquals(listOf("prefill", "prefill_exact", "decode"), recorder.calls.map { it.substringBefore(':') })
        for ((call, feed) in recorder.calls.zip(recorder.feeds)) {
            val method = call.substringBefore(':')
            for (name in perHead.keys) {
                val t = feed.getValue(name) as DecoderTensor.Float32
                assertSame((context.getValue(name) as DecoderTensor.Float32).data, t.data, "$method: $name is a view of the pack's rows")
                assertArrayEquals(if (method == "prefill_exact") intArrayOf(h, nc, d) else intArrayOf(h * nc, d), t.shape, "$method: $name")
            }
            assertSame(context.getValue("sink_kv_0"), feed.getValue("sink_kv_0"), "$method: sink_kv_0 as the pack lays it out")
        }
        // made once per method: a runtime binding sees the same tensor objects at every step
        assertSame(loop.methodInputs("prefill_exact"), loop.methodInputs("prefill_exact"))
        assertSame(context, loop.methodInputs("decode"))
        assertSame(context, loop.methodInputs("a method the manifest does not list"))
        // another size: the export and this version's pack layout disagree
        val bad = DecoderContract("squeezed", "buffer", 0.3, shapes, exactTail = 3,
            inputShapes = mapOf("prefill_exact" to mapOf("clustered_keys_0" to intArrayOf(h, nc, 2 * d))))
        val e = assertThrows(DecoderException::class.java) {
            GenerationLoop(CallRecorder(), bad, pack, context).prompt(IntArray(10) { it + 1 }, null)
        }
        assertEquals("the pack's clustered_keys_0 has shape [${h * nc}, $d] but method prefill_exact takes [$h, $nc, ${2 * d}]; " +
            "re-export the decoder with this project's version", e.message)
    }

    @Test
    fun exactTailIsReadFromTheContract() {
        // the answer's opening off (exact_decode 0): with exact_tail 0 (no exact method) exact steps are refused
        // (exactDecodeIsReadFromTheContract)
        val opening = "\"exact_decode\": ${shapes.maxNew},"
        val unsure = "\"exact_below\": 0.2,"
        val text = Golden.text("qa_decoder_manifest.json").also { assertTrue(it.contains(opening) && it.contains(unsure)) }
            .replaceFirst(opening, "\"exact_decode\": 0,").replaceFirst(unsure, "\"exact_below\": 0,")
            .replaceFirst("\"exact_head\": 32,", "\"exact_head\": 0,")   // the head needs the method too
        // the first artifact (squeezed, exported with the .onnx's default exact tail, min(32, max_prompt)) with another
        val exported = "\"exact_tail\": ${shapes.maxPrompt},"
        assertEquals(32, shapes.maxPrompt)
        assertTrue(text.contains(exported))
        fun withExact(value: String) = text.replaceFirst(exported, "\"exact_tail\": $value,")
        fun exactTail(manifest: String) = DecoderManifest.parse(manifest).artifacts[0].contract.exactTail
        // null (full attention) and absent (older manifests): 0
        assertEquals(listOf(32, 0), DecoderManifest.parse(text).artifacts.map { it.contract.exactTail })
        assertEquals(0, exactTail(text.replaceFirst(exported, "")))
        assertEquals(0, exactTail(withExact("null")))
        assertEquals(0, exactTail(withExact("0")))
        assertEquals(16, exactTail(withExact("16")))
        val negative = assertThrows(DecoderException::class.java) { DecoderManifest.parse(withExact("-1")) }
        assertEquals("decoder.exact_tail: expected a whole number of tokens >= 0, found -1", negative.message)
        assertThrows(DecoderException::class.java) { DecoderContract("squeezed", "buffer", 0.3, shapes, exactTail = -2) }
        for (bad in listOf("\"4\"", "2.5", "true")) {
            val e = assertThrows(DecoderException::class.java) { DecoderManifest.parse(withExact(bad)) }
            assertTrue(e.message!!.contains("exact_tail: expected an integer"), e.message)
        }
        // the prefill_exact method's token axis [1, E] (the .onnx's second graph): the tail at its own length
        val artifact = DecoderManifest.parse(text).artifacts[0]
        assertTrue("prefill_exact" in artifact.methods)
        assertEquals(1..32, artifact.contract.tokenRanges["prefill_exact"])
        assertEquals(5, artifact.contract.tokenWidth("prefill_exact", 5, artifact.contract.exactTail))
        // the split plan runs its exact tail as stages prefill_exact_<s> (SplitGenerationTest replays them)
        val split = withExact("4").replaceFirst("\"lookup_plan\": \"in-graph\",", "\"lookup_plan\": \"split\",")
        val splitContract = DecoderManifest.parse(split).artifacts[0].contract
        assertEquals("split", splitContract.lookupPlan)
        assertEquals(4, splitContract.exactTail)
    }

    @Test
    fun exactHeadIsReadFromTheContractAndSpansThePromptAsPythonDoes() {
        // (head end, tail start): the values test_session50_exact_head.py asserts for settings.exact_span
        fun span(n: Int, h: Int, t: Int) = GenerationLoop.exactSpan(n, h, t).toList()
        assertEquals(listOf(16, 68), span(100, 16, 32))
        assertEquals(listOf(16, 16), span(40, 16, 32))
        assertEquals(listOf(10, 10), span(10, 16, 32))
        assertEquals(listOf(0, 68), span(100, 0, 32))
        assertEquals(listOf(16, 100), span(100, 16, 0))
        // the export writes the host's default head (128), at most its max prompt (32: the whole prompt), for its
        // squeezed artifact, null for full attention
        val text = Golden.text("qa_decoder_manifest.json")
        val exported = "\"exact_head\": 32,"
        assertTrue(text.contains(exported))
        assertEquals(listOf(32, 0), DecoderManifest.parse(text).artifacts.map { it.contract.exactHead })
        fun head(value: String?) = DecoderManifest.parse(text.replaceFirst(exported, if (value == null) "" else "\"exact_head\": $value,"))
            .artifacts[0].contract.exactHead
        assertEquals(0, head(null))      // manifests before the field: no head
        assertEquals(0, head("null"))
        assertEquals(3, head("3"))
        val negative = assertThrows(DecoderException::class.java) { head("-1") }
        assertEquals("decoder.exact_head: expected a whole number of tokens >= 0, found -1", negative.message)
        val squeezed = DecoderManifest.parse(text).artifacts[0].contract
        val full = DecoderManifest.parse(text).artifacts[1].contract
        assertEquals(5, squeezed.withExactHead(5).exactHead)
        assertEquals(0, full.withExactHead(0).exactHead)
        assertTrue(assertThrows(DecoderException::class.java) { full.withExactHead(2) }.message!!
            .startsWith("--exact-head shapes Squeezed Attention's key selection"))
        assertThrows(DecoderException::class.java) { squeezed.withExactHead(-1) }
        val noMethod = DecoderContract("squeezed", "buffer", 0.3, shapes)
        assertTrue(assertThrows(DecoderException::class.java) { noMethod.withExactHead(4) }.message!!
            .contains("which this artifact lacks (exported with --exact-tail 0)"))
        assertThrows(DecoderException::class.java) { DecoderContract("squeezed", "buffer", 0.3, shapes, exactHead = 2) }
    }

    @Test
    fun anExactHeadLongerThanTheMethodRunsInPiecesAndMergesWithTheTail() {
        // the head in calls of at most the method's width (exact_tail 3), then one selecting prefill, then the tail; a
        // head and tail that leave no row to select make one exact run over the whole question (the sequences the
        // Swift core's test asserts)
        val p = shapes.maxPrompt
        assertEquals(listOf("prefill_exact:1,2,3@0/3", "prefill_exact:4,5@3/3", "prefill:6,7,8,9@5/$p", "prefill_exact:10,11,12@9/3"),
            promptCalls(12, exact = 3, head = 5))
        assertEquals(listOf("prefill_exact:1,2@0/3", "prefill:3,4,5@2/$p", "decode:6@5/1", "decode:7@6/1", "prefill_exact:8,9,10@7/3"),
            promptCalls(10, rows = 4, tail = 2, exact = 3, head = 2))
        assertEquals(listOf("prefill_exact:1,2,3@0/3", "prefill_exact:4,5,6@3/3", "prefill_exact:7@6/3"),
            promptCalls(7, exact = 3, head = 5))
        assertEquals(listOf("prefill_exact:1,2,3,4,5@0/5"),
            promptCalls(5, exact = 8, ranges = mapOf("prefill" to 1..p, "prefill_exact" to 1..8), head = 2))
        // an in-graph export's prefill_exact takes up to max_prompt tokens (its dynamic axis): a head wider than the
        // tail is one call, and head and tail that cover the question one call over all of it
        val wide = mapOf("prefill" to 1..p, "prefill_exact" to 1..p)
        assertEquals(listOf("prefill_exact:1,2,3,4,5@0/5", "prefill:6,7,8,9@5/4", "prefill_exact:10,11,12@9/3"),
            promptCalls(12, exact = 3, ranges = wide, head = 5))
        assertEquals(listOf("prefill_exact:1,2,3,4,5,6,7@0/7"), promptCalls(7, exact = 3, ranges = wide, head = 5))
    }

    @Test
    fun aMalformedDynamicTokenAxisIsRefusedInOneLine() {
        // methods.<m>.inputs[tokens].dynamic["0"] = [min, max]; one number (a hand-edited or damaged manifest) used to end
        // in an ArrayIndexOutOfBoundsException, a reversed range in an empty one
        val text = Golden.text("qa_decoder_manifest.json")
        val axis = Regex("\"0\": \\[\\s*1,\\s*32\\s*\\]")
        assertTrue(axis.containsMatchIn(text))
        fun refused(bounds: String) = assertThrows(DecoderException::class.java) {
            DecoderManifest.parse(axis.replaceFirst(text, "\"0\": $bounds"))
        }.message!!
        assertEquals("decoder.methods.prefill: the tokens input's dynamic axis is [32], expected [min, max] with 0 <= min <= max; " +
            "re-export the decoder", refused("[32]"))
        assertTrue(refused("[32, 1]").contains("is [32, 1], expected [min, max]"))
        assertTrue(refused("[-1, 4]").contains("is [-1, 4], expected"))
        assertEquals(2..7, DecoderManifest.parse(axis.replaceFirst(text, "\"0\": [2, 7]")).artifacts[0].contract.tokenRanges["prefill"])
    }

    @Test
    fun followedKeysAreReadFromTheContract() {
        val text = Golden.text("qa_decoder_manifest.json")
        // the default export (squeezed): 4 followed keys, used from 32 kept keys per head; full attention: null
        val exported = "\"follow_keys\": 4,"
        val gate = "\"follow_min_keep\": 32,"
        assertTrue(text.contains(exported) && text.contains(gate))
        val parsed = DecoderManifest.parse(text).artifacts.map { it.contract }
        assertEquals(listOf(4, 0), parsed.map { it.followKeys })
        assertEquals(listOf(32, 0), parsed.map { it.followMinKeep })
        fun contract(manifest: String) = DecoderManifest.parse(manifest).artifacts[0].contract
        fun refused(manifest: String) = assertThrows(DecoderException::class.java) { DecoderManifest.parse(manifest) }.message!!
        // null and absent (exports before followed keys): 0, and 0 runs (no refusal any more)
        for (value in listOf("null", "0")) {
            assertEquals(0, contract(text.replaceFirst(exported, "\"follow_keys\": $value,")).followKeys, value)
            assertEquals(0, contract(text.replaceFirst(gate, "\"follow_min_keep\": $value,")).followMinKeep, value)
        }
        assertEquals(listOf(0, 0), contract(text.replaceFirst(exported, "").replaceFirst(gate, "")).let { listOf(it.followKeys, it.followMinKeep) })
        assertEquals(listOf(2, 7), contract(text.replaceFirst(exported, "\"follow_keys\": 2,").replaceFirst(gate, "\"follow_min_keep\": 7,"))
            .let { listOf(it.followKeys, it.followMinKeep) })
        // negative: one line naming the field
        assertEquals("decoder.follow_keys: expected an integer >= 0, found -1", refused(text.replaceFirst(exported, "\"follow_keys\": -1,")))
        assertEquals("decoder.follow_min_keep: expected an integer >= 0, found -3", refused(text.replaceFirst(gate, "\"follow_min_keep\": -3,")))
        assertThrows(DecoderException::class.java) { DecoderContract("squeezed", "io", 0.3, shapes, followKeys = -2) }
        // not an integer: one line too
        for (bad in listOf("\"4\"", "2.5", "true")) {
            for ((field, old) in listOf("follow_keys" to exported, "follow_min_keep" to gate)) {
                val e = refused(text.replaceFirst(old, "\"$field\": $bad,"))
                assertTrue(e.contains("$field: expected an integer") && '\n' !in e, e)
            }
        }
    }

    /**
     * A squeezed in-graph runtime whose calls return follow_out [L, Hkv, F] of values no other call returns (call c,
     * layer l, head h, entry i: c * 1000 + l * 100 + h * 10 + i), recording every feed.
     */
    private class FollowRecorder(val layers: Int, val heads: Int, val follow: Int) : DecoderRuntime {
        override val name = "follow recorder"
        val methods = ArrayList<String>()
        val feeds = ArrayList<Map<String, DecoderTensor>>()
        val returned = ArrayList<LongArray>()

        override fun run(method: String, inputs: Map<String, DecoderTensor>): Map<String, DecoderTensor> {
            methods.add(method)
            feeds.add(inputs)
            val c = feeds.size.toLong()
            val out = LongArray(layers * heads * follow) { c * 1000 + (it / (heads * follow)) * 100 + (it / follow % heads) * 10 + it % follow }
            returned.add(out)
            return mapOf("logits" to DecoderTensor.Float32(FloatArray(8) { if (it == feeds.size % 8) 1f else 0f }, intArrayOf(8)),
                "follow_out" to DecoderTensor.Int64(out, intArrayOf(layers, heads, follow)))
        }
    }

    @Test
    fun aPackThatKeepsMoreKeysThanTheArtifactGathersIsRefused() {
        // Python's pack_arrays.artifact_keep_keys: the keep count is the pack's own (its budget less its centroid
        // bytes); an artifact that gathers fewer (max_keep sized for more centroids) refuses the pack, never caps it
        val contract = DecoderContract("squeezed", "buffer", 0.3, shapes)
        val context = PackLayout.decoderContextInputs(pack, shapes, "squeezed")
        val keep = GenerationLoop(CallRecorder(), contract, pack, context).keepKeys!!
        assertTrue(keep in 2..shapes.maxKeep)
        val fewer = DecoderContract("squeezed", "buffer", 0.3, shapes.copy(maxKeep = keep - 1))
        val e = assertThrows(DecoderException::class.java) { GenerationLoop(CallRecorder(), fewer, pack, context) }
        assertTrue("keeps $keep keys per head but the decoder gathers at most ${keep - 1}" in e.message!!, e.message)
        // a graph that follows as many keys as the pack keeps would select none (Python's GenerationLoop refuses it;
        // ONNX Runtime refused the first decode step's follow_rows in its own words)
        val all = assertThrows(DecoderException::class.java) { GenerationLoop(CallRecorder(), contract.withFollowKeys(keep, 0), pack, context) }
        assertTrue(all.message!!.startsWith("this artifact follows $keep keys per decode step but the pack keeps only $keep keys"), all.message)
        assertEquals(keep - 1, GenerationLoop(CallRecorder(), contract.withFollowKeys(keep - 1, 0), pack, context).follow)
        assertEquals(0, GenerationLoop(CallRecorder(), contract.withFollowKeys(keep, keep + 1), pack, context).follow) // gated: none
    }

    @Test
    fun followedKeysAreFedBackOnDecodeStepsAfterThePromptOnly() {
        // GenerationLoop.step: a decode step after the prompt keeps keep_keys - F and takes the previous call's
        // follow_out as follow_rows_<layer>; the prompt's calls (a 1-token chunk run as decode too) take -1 and
        // keep_keys as is; below follow_min_keep nothing is followed, over the same inputs
        val (L, H, F) = Triple(pack.layers, pack.kvHeads, 2)
        fun run(minKeep: Int): Pair<GenerationLoop, FollowRecorder> {
            val recorder = FollowRecorder(L, H, F)
            val contract = DecoderContract("squeezed", "buffer", 0.3, shapes, prefillTail = 2, followKeys = F, followMinKeep = minKeep)
            val loop = GenerationLoop(recorder, contract, pack, PackLayout.decoderContextInputs(pack, shapes, "squeezed"))
            loop.greedy(IntArray(6) { it + 1 }, 4)
            return loop to recorder
        }
        fun keep(feed: Map<String, DecoderTensor>) = (feed.getValue("keep_keys") as DecoderTensor.Int64).data.single()
        fun rows(feed: Map<String, DecoderTensor>, l: Int) = (feed.getValue("follow_rows_$l") as DecoderTensor.Int64).also {
            assertArrayEquals(intArrayOf(H, F), it.shape)
        }.data
        val nextRows = PackLayout.nextRows(pack, shapes)
        val (loop, rec) = run(0)
        val keepKeys = loop.keepKeys!!.toLong()
        assertEquals(F, loop.follow)
        // the prompt: prefill of 4 tokens, then its 2-token tail as decode steps; then 3 decode steps
        assertEquals(listOf("prefill", "decode", "decode", "decode", "decode", "decode"), rec.methods)
        for ((i, feed) in rec.feeds.withIndex()) {
            val follows = i >= 3
            assertEquals(if (follows) keepKeys - F else keepKeys, keep(feed), "call $i: keep_keys")
            for (l in 0 until L) {
                val expected = if (follows) rec.returned[i - 1].copyOfRange(l * H * F, (l + 1) * H * F) else LongArray(H * F) { -1 }
                assertArrayEquals(expected, rows(feed, l), "call $i: follow_rows_$l")
                assertSame(loop.contextInputs.getValue("next_rows_$l"), feed.getValue("next_rows_$l"), "call $i: next_rows_$l")
                assertArrayEquals((nextRows.getValue("next_rows_$l") as DecoderTensor.Int64).data,
                    (feed.getValue("next_rows_$l") as DecoderTensor.Int64).data, "call $i: next_rows_$l")
            }
        }
        // follow_min_keep: at keep_keys it follows; above, the graph still takes follow_rows (-1) and keep_keys as is
        assertEquals(F, run(keepKeys.toInt()).first.follow)
        val (gated, gatedRec) = run(keepKeys.toInt() + 1)
        assertEquals(0, gated.follow)
        assertEquals(F, gated.graphFollow)
        assertEquals(6, gatedRec.feeds.size)
        for ((i, feed) in gatedRec.feeds.withIndex()) {
            assertEquals(keepKeys, keep(feed), "gated call $i: keep_keys")
            for (l in 0 until L) assertArrayEquals(LongArray(H * F) { -1 }, rows(feed, l), "gated call $i: follow_rows_$l")
        }
        // no followed keys: neither follow_rows nor next_rows, and no follow_out needed
        val plain = CallRecorder()
        val none = GenerationLoop(plain, DecoderContract("squeezed", "buffer", 0.3, shapes), pack, PackLayout.decoderContextInputs(pack, shapes, "squeezed"))
        none.greedy(IntArray(6) { it + 1 }, 3)
        assertEquals(listOf(0, 0), listOf(none.graphFollow, none.follow))
        assertTrue(plain.feeds.all { feed -> feed.keys.none { it.startsWith("follow_rows_") || it.startsWith("next_rows_") } })
        // a following loop whose runtime returns no follow_out: one line
        val e = assertThrows(DecoderException::class.java) {
            GenerationLoop(CallRecorder(), DecoderContract("squeezed", "buffer", 0.3, shapes, followKeys = F), pack,
                PackLayout.decoderContextInputs(pack, shapes, "squeezed")).greedy(IntArray(6) { it + 1 }, 2)
        }
        assertEquals("the runtime returned no int64 \"follow_out\" output for prefill", e.message)
    }

    @Test
    fun eachMethodIsFedTheValuesItsManifestEntryFixes() {
        // the .onnx's methods fix the graph selector `branch` (an input entry's "value"): prefill and decode [0],
        // prefill_exact [1]; the loop feeds exactly that (OnnxRunner.run's _fixed), even over an input of that name
        // among the context inputs
        val squeezed = manifest.pick("onnx", "squeezed").contract
        val context = LinkedHashMap(PackLayout.decoderContextInputs(pack, shapes, "squeezed"))
        context["branch"] = DecoderTensor.Int64(longArrayOf(7), intArrayOf(1))
        val feeds = ArrayList<Map<String, DecoderTensor>>()
        val calls = ArrayList<String>()
        val io = object : DecoderRuntime {
            override val name = "io"
            override fun run(method: String, inputs: Map<String, DecoderTensor>): Map<String, DecoderTensor> {
                calls.add(branchCall(method, inputs))
                feeds.add(inputs)
                val n = (inputs.getValue("n_tokens") as DecoderTensor.Int64).data[0].toInt()
                val kv = intArrayOf(pack.layers, pack.kvHeads, n, pack.headDim)
                return mapOf("logits" to DecoderTensor.Float32(FloatArray(4), intArrayOf(4)),
                    "new_keys" to DecoderTensor.Float32(FloatArray(kv.reduce(Int::times)), kv),
                    "new_values" to DecoderTensor.Float32(FloatArray(kv.reduce(Int::times)), kv))
            }
        }
        GenerationLoop(io, squeezed.withExactTail(3).withExactHead(0).withExactDecode(0), pack, context).greedy(IntArray(10) { it + 1 }, 3)
        assertEquals(listOf("prefill branch=0", "prefill_exact branch=1", "decode branch=0", "decode branch=0"), calls)
        // the same tensor objects at every call of a method (a runtime binding copies them once: NativeTensorCache)
        assertSame(squeezed.fixedInputs.getValue("decode").getValue("branch"), feeds[2]["branch"])
        assertSame(feeds[2]["branch"], feeds[3]["branch"])
        // the manifest's answer's opening (exact_decode 14): the decode steps are 1-token prefill_exact calls (branch 1)
        calls.clear()
        GenerationLoop(io, squeezed.withExactTail(3).withExactHead(0), pack, context).greedy(IntArray(10) { it + 1 }, 3)
        assertEquals(listOf("prefill branch=0", "prefill_exact branch=1", "prefill_exact branch=1", "prefill_exact branch=1"), calls)
        // without the exact tail, the whole question in one selecting prefill (branch 0); the opening still runs
        // through prefill_exact, which the artifact keeps (Python: the loop's exact_tail 0, the contract's method)
        calls.clear()
        GenerationLoop(io, squeezed.withExactTail(0).withExactHead(0), pack, context).greedy(IntArray(10) { it + 1 }, 2)
        assertEquals(listOf("prefill branch=0", "prefill_exact branch=1"), calls)
        calls.clear()
        GenerationLoop(io, squeezed.withExactTail(0).withExactHead(0).withExactDecode(0), pack, context).greedy(IntArray(10) { it + 1 }, 2)
        assertEquals(listOf("prefill branch=0", "decode branch=0"), calls)

        // "value": a number or nested arrays, row-major, in the entry's dtype and shape
        fun fixed(entry: String) = DecoderContract.fixedValue("m", JsonPath.of(Json.parse(entry), "entry"))
        val f = fixed("""{"name": "x", "shape": [2, 2], "dtype": "float32", "value": [[1, 2.5], [3, -4]]}""") as DecoderTensor.Float32
        assertArrayEquals(floatArrayOf(1f, 2.5f, 3f, -4f), f.data)
        assertArrayEquals(intArrayOf(2, 2), f.shape)
        val scalar = fixed("""{"name": "x", "shape": [], "dtype": "int32", "value": 5}""") as DecoderTensor.Int64
        assertArrayEquals(longArrayOf(5), scalar.data)
        assertEquals(0, scalar.shape.size)
        assertEquals("decoder.methods.m: input x fixes 2 values for shape [1]; re-export the decoder",
            assertThrows(DecoderException::class.java) { fixed("""{"name": "x", "shape": [1], "dtype": "int64", "value": [0, 1]}""") }.message)
        assertEquals("decoder.methods.m: input x fixes a uint8 value, which the app does not feed (int64, int32, float32)",
            assertThrows(DecoderException::class.java) { fixed("""{"name": "x", "shape": [1], "dtype": "uint8", "value": [0]}""") }.message)
        // in a manifest: a value that is not an integer is refused in one line naming it
        val text = Golden.text("qa_decoder_manifest.json")
        val one = Regex("\"value\": \\[\\s*1\\s*]")  // prefill_exact's branch (the manifest is indented)
        assertTrue(one.containsMatchIn(text))
        val e = assertThrows(DecoderException::class.java) { DecoderManifest.parse(text.replaceFirst(one, "\"value\": [1.5]")) }
        assertTrue(e.message!!.startsWith("the decoder manifest is not usable (") && e.message!!.contains(".value[0]: expected an integer") &&
            '\n' !in e.message!!, e.message)
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
        assertEquals(DecoderManifest.SCHEMA, manifest.schema)
        // the .onnx's exact prompt tail: prefill_exact, the file's second graph, selected by the input `branch`
        assertEquals(setOf("prefill", "decode", "prefill_exact"), squeezed.methods.keys)
        assertEquals(shapes.maxPrompt, squeezed.contract.exactTail)
        assertEquals(setOf("prefill", "decode"), manifest.pick("onnx", "full").methods.keys)
        // the declared shapes of the inputs without a dynamic axis: the clustered tables flat, [Hkv * Nc, D], for every
        // method of the .onnx (one set of graph inputs; only a .pte's prefill_exact declares them per KV head)
        val declared = squeezed.contract.inputShapes.getValue("decode")
        for (method in squeezed.methods.keys) for (name in listOf("clustered_keys_0", "clustered_values_1")) {
            val shape = squeezed.contract.inputShapes.getValue(method)[name]
            assertArrayEquals(intArrayOf(manifest.numKvHeads * shapes.maxClustered, manifest.headDim), shape, "$method $name")
        }
        // every method lists the merged graph's inputs (same names, same static shapes) and fixes `branch` ([1], int64)
        val names = squeezed.methods.getValue("prefill").inputs.map { it.name }
        assertEquals("branch", names.last())
        for (method in squeezed.methods.values) {
            assertEquals(names, method.inputs.map { it.name }, method.name)
            val branch = method.inputs.single { it.name == "branch" }
            assertArrayEquals(intArrayOf(1), branch.shape)
            assertEquals("int64", branch.dtype)
            assertEquals(setOf("branch"), squeezed.contract.fixedInputs.getValue(method.name).keys, method.name)
        }
        for ((method, k) in listOf("prefill" to 0L, "decode" to 0L, "prefill_exact" to 1L)) {
            val t = squeezed.contract.fixedInputs.getValue(method).getValue("branch") as DecoderTensor.Int64
            assertArrayEquals(longArrayOf(k), t.data, method)
            assertArrayEquals(intArrayOf(1), t.shape, method)
        }
        assertEquals(squeezed.contract.inputShapes.getValue("prefill").keys, squeezed.contract.inputShapes.getValue("prefill_exact").keys)
        assertTrue(manifest.pick("onnx", "full").contract.fixedInputs.isEmpty())
        assertTrue("tokens" !in squeezed.contract.inputShapes.getValue("prefill"))
        assertTrue(declared.keys.none { it.startsWith("clustered_kv") })
        // followed keys (the export's default, 4 where a pack keeps at least 32 keys): every method returns follow_out and
        // takes next_rows_<layer> [Hkv * max_clustered] and follow_rows_<layer> [Hkv, 4]
        assertEquals(4, squeezed.contract.followKeys)
        assertEquals(32, squeezed.contract.followMinKeep)
        assertEquals(listOf(0, 0), listOf(manifest.pick("onnx", "full").contract.followKeys, manifest.pick("onnx", "full").contract.followMinKeep))
        assertEquals(listOf("logits", "new_keys", "new_values", "follow_out"), squeezed.methods.getValue("decode").outputs)
        for (method in squeezed.methods.keys) {
            assertArrayEquals(intArrayOf(manifest.numKvHeads * shapes.maxClustered), squeezed.contract.inputShapes.getValue(method)["next_rows_1"])
            assertArrayEquals(intArrayOf(manifest.numKvHeads, 4), squeezed.contract.inputShapes.getValue(method)["follow_rows_1"])
        }
        assertEquals(listOf("logits", "new_keys", "new_values"), manifest.pick("onnx", "full").methods.getValue("decode").outputs)
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
    fun aManifestOfAnotherSchemaIsRefusedInOneLine() {
        // decoder_session.read_decoder_manifest: exactly this version's schema (1: one clustered_kv_l per layer)
        val text = Golden.text("qa_decoder_manifest.json")
        val current = "\"schema\": \"${DecoderManifest.SCHEMA}\""
        assertTrue(text.contains(current))
        fun refused(manifest: String) = assertThrows(DecoderException::class.java) { DecoderManifest.parse(manifest) }.message
        assertEquals("the manifest was written by another version of squeeze-mobile (schema 'squeeze-mobile/decoder-manifest/1', " +
            "this version reads 'squeeze-mobile/decoder-manifest/2'); re-export the decoder into a fresh directory",
            refused(text.replaceFirst(current, "\"schema\": \"squeeze-mobile/decoder-manifest/1\"")))
        assertTrue(refused(text.replaceFirst(current, "\"schema\": \"squeeze-mobile/decoder-manifest/3\""))!!
            .contains("(schema 'squeeze-mobile/decoder-manifest/3', this version reads"))
        assertTrue(refused(text.replaceFirst("$current,", ""))!!.contains("(schema None, this version reads"))
        assertTrue(refused(text.replaceFirst(current, "\"schema\": 2"))!!.contains("(schema 2, this version reads"))
    }

    @Test
    fun greedyAndForcedRunsGiveThePythonTokens() {
        val promptIds = gen["prompt_ids"].intArray()
        for (run in gen["runs"].list()) {
            val runtime = ReplayRuntime(run)
            val c = contract(run)
            val loop = GenerationLoop(runtime, c, pack, PackLayout.decoderContextInputs(pack, shapes, c.attention))
            if (!run["keep_keys"].isNull) assertEquals(run["keep_keys"].int(), loop.keepKeys)
            // the gated run: its graph takes followed rows (all -1), the loop follows none (its pack keeps too few keys)
            assertEquals(run["follow_keys"].int(), loop.graphFollow)
            assertEquals(if (run["kind"].string() == "greedy-follow-gated") 0 else loop.graphFollow, loop.follow)
            val forced = if (run["forced"].isNull) null else run["forced"].intArray()
            val out = loop.greedy(promptIds, gen["max_new_tokens"].int(), forced, run["stop_ids"].intArray().toSet())
            val what = "${run["attention"].string()} ${run["kind"].string()}"
            assertArrayEquals(run["tokens"].intArray(), out.tokens, what)
            assertEquals(run["calls"].list().size, runtime.calls, what)
            // the prompt's calls, then decode steps: the answer's first exact_decode ones 1-token prefill_exact calls
            // (every fixed-context row), the others decode; the squeezed .onnx's branch as each method fixes it
            val prompt = when {
                c.attention == "full" -> listOf("prefill")
                c.exactTail >= promptIds.size -> listOf("prefill_exact branch=1")  // the whole question is the tail
                c.exactHead > 0 -> listOf("prefill_exact branch=1", "prefill branch=0", "prefill_exact branch=1")
                else -> listOf("prefill branch=0", "prefill_exact branch=1")
            }
            assertEquals(run["exact_head"].int(), loop.contract.exactHead, what)
            assertEquals(run["exact_decode"].int(), loop.exactDecode, what)
            assertEquals(run["exact_below"].double(), loop.exactBelow, what)
            // the unsure steps (exact_below): Python's re-runs, each a decode call then a 1-token prefill_exact call
            val rerun = run["rerun_at"].intArray()
            assertArrayEquals(rerun, out.rerunAt, what)
            val steps = out.decodeSteps
            val opening = minOf(loop.exactDecode, steps)
            val decode = if (c.attention == "full") "decode" else "decode branch=0"
            val exact = "prefill_exact branch=1"
            val answer = (0 until steps).flatMap { i -> if (i < opening) listOf(exact) else if (i in rerun) listOf(decode, exact) else listOf(decode) }
            assertEquals(prompt + answer, runtime.log, what)
            assertEquals(prompt.size + steps + rerun.size, runtime.calls, what)
            // an exact decode step feeds one token at the decode position, as Python's 1-token prefill_exact call
            for ((i, call) in run["calls"].list().withIndex().drop(prompt.size)) {
                assertEquals(answer[i - prompt.size].substringBefore(" "), call["method"].string(), "$what call $i")
            }
        }
        assertEquals(listOf("squeezed greedy", "squeezed forced", "squeezed greedy-short-tail", "squeezed greedy-head-tail",
            "squeezed greedy-select-decode", "squeezed greedy-follow-gated", "squeezed greedy-unsure", "full greedy", "full forced"),
            gen["runs"].list().map { "${it["attention"].string()} ${it["kind"].string()}" })
        // the squeezed runs follow 2 keys (gated: none), full attention none
        assertEquals(listOf(2, 2, 2, 2, 2, 2, 2, 0, 0), gen["runs"].list().map { it["follow_keys"].int() })
        assertEquals(listOf(0, 0, 0, 0, 0, 1_000_000, 0, 0, 0), gen["runs"].list().map { it["follow_min_keep"].int() })
        // the squeezed runs open the answer with 3 exact steps ("greedy-select-decode": none, every step selects)
        assertEquals(listOf(3, 3, 3, 3, 0, 3, 3, 0, 0), gen["runs"].list().map { it["exact_decode"].int() })
        // only "greedy-head-tail" runs the question's first 2 tokens exactly before a selecting prefill and the tail
        assertEquals(listOf(0, 0, 0, 2, 0, 0, 0, 0, 0), gen["runs"].list().map { it["exact_head"].int() })
        // only "greedy-unsure" re-runs unsure steps, and only some of its selecting steps
        assertEquals(listOf(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.137, 0.0, 0.0), gen["runs"].list().map { it["exact_below"].double() })
        val unsure = gen["runs"].list().single { it["kind"].string() == "greedy-unsure" }
        assertTrue(unsure["rerun_at"].intArray().let { it.isNotEmpty() && it.size < gen["max_new_tokens"].int() - 1 - 3 && it.all { s -> s >= 3 } })
        for (r in gen["runs"].list().filter { it["kind"].string() != "greedy-unsure" }) assertEquals(0, r["rerun_at"].intArray().size)
        // the rule changes the answer's logits: the select-decode run's second logits (its first decode step, which
        // selects) differ from the greedy run's (a 1-token prefill_exact over every row), on the same first token
        val runs = gen["runs"].list().associateBy { "${it["attention"].string()} ${it["kind"].string()}" }
        val exactRun = runs.getValue("squeezed greedy")
        val selectRun = runs.getValue("squeezed greedy-select-decode")
        assertEquals(exactRun["tokens"].intArray()[0], selectRun["tokens"].intArray()[0])
        fun logits(run: JsonPath, call: Int) = run["calls"].list()[call]["outputs"]["logits"].let {
            outputs.copyOfRange(it["offset"].int(), it["offset"].int() + it["count"].int())
        }
        assertTrue(!logits(exactRun, 1).contentEquals(logits(selectRun, 1)))
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
    fun documentQaEncodesTheQuestionLiterally() {
        // Python's DecoderSession.prompt_ids on the real model's tokenizer (the tiny model's vocabulary has no "<" or
        // "|"): special-token strings written in the question stay text, the framing's suffix keeps its markers
        val cases = Golden.json("qa_tokenizer.json.gz")["prompt_cases"]
        assertEquals(cases["chat"]["join"].string(), manifest.tokenizer.join)
        assertEquals(cases["chat"]["suffix"].string(), manifest.tokenizer.suffix)
        val run = gen["runs"].list().first { it["attention"].string() == "full" }
        val qa = DocumentQa(ReplayRuntime(run), contract(run), TokenizerTest.shared, manifest.tokenizer, pack)
        var differ = 0
        for (case in cases["cases"].list()) {
            val prompt = case["prompt"].string()
            val ids = qa.promptIds(prompt)
            assertArrayEquals(case["ids"].intArray(), ids, "prompt ids of ${prompt.take(60)}")
            if (!ids.contentEquals(case["ids_matched"].intArray())) differ++
        }
        assertTrue(differ >= 3, "only $differ questions are encoded differently from join + question + suffix")
    }

    /** Answers with [script] token by token (one-hot logits over [vocab]), whatever it is fed. */
    private class ScriptedRuntime(private val script: IntArray, private val vocab: Int) : DecoderRuntime {
        override val name = "scripted"
        var calls = 0
        override fun run(method: String, inputs: Map<String, DecoderTensor>): Map<String, DecoderTensor> {
            val next = script[calls++]
            return mapOf("logits" to DecoderTensor.Float32(FloatArray(vocab) { if (it == next) 1f else 0f }, intArrayOf(vocab)))
        }
    }

    @Test
    fun logitsThatAreNotFiniteAreOneLine() {
        // a damaged artifact computes NaN; argmax over NaN is token 0, a stop token: an empty answer that looked normal
        val tokenizer = TokenizerTest.shared
        val vocab = tokenizer.vocabSize
        val nan = object : DecoderRuntime {
            override val name = "nan"
            override fun run(method: String, inputs: Map<String, DecoderTensor>): Map<String, DecoderTensor> =
                mapOf("logits" to DecoderTensor.Float32(FloatArray(vocab) { Float.NaN }, intArrayOf(vocab)))
        }
        val contract = DecoderContract("full", "buffer", null, shapes)
        val e = assertThrows(DecoderException::class.java) {
            DocumentQa(nan, contract, tokenizer, manifest.tokenizer, pack).generate("Hi", maxNewTokens = 2)
        }
        assertTrue(e.message!!.startsWith("the artifact computed logits that are not finite") && '\n' !in e.message!!,
            e.message)
    }

    @Test
    fun blankQuestionsAndStraySurrogatesAreRefusedAsPythonRefusesThem() {
        // an empty chat turn was answered (its framed ids are never empty: the model answered a question of its own);
        // half an emoji became "?" (Python's tokenizer.check_question refuses both). Blank is Python's str.isspace.
        val tokenizer = TokenizerTest.shared
        val nothing = object : DecoderRuntime {
            override val name = "unused"
            override fun run(method: String, inputs: Map<String, DecoderTensor>): Map<String, DecoderTensor> =
                throw AssertionError("no call may run")
        }
        val qa = DocumentQa(nothing, DecoderContract("full", "buffer", null, shapes), tokenizer, manifest.tokenizer, pack)
        fun refused(prompt: String) = assertThrows(DecoderException::class.java) { qa.generate(prompt, maxNewTokens = 2) }.message!!
        assertEquals("the prompt is empty: the user's turn needs a question; ask one", refused(""))
        for (blank in listOf(" ", "\n\t ", "\u00a0\u3000\u2028", "\u001c\u001f\u0085")) {
            assertEquals("the prompt is empty (only whitespace): the user's turn needs a question; ask one", refused(blank))
        }
        assertEquals("the prompt is not valid UTF-8 text (character 2 is a stray byte or surrogate); pass the text in UTF-8",
            refused("a\uD800b"))
        assertTrue(refused("\uD83D\uDE00\uDC00").contains("character 2 is a stray"))
        // not blank for Python either: a zero-width space, a control character; a whole emoji is text
        for (text in listOf("\u200b", "\u0001", "\uD83D\uDE00")) assertTrue(qa.promptIds(text).isNotEmpty(), text)
    }

    @Test
    fun anAnswerCutInsideACharacterEndsBeforeIt() {
        // the real tokenizer: "Yes 😀" is [10539 "Yes", 40303 " " + the emoji's first two bytes, 218 its last two]. An
        // answer cut after the second token decodes to "Yes \uFFFD"; Python's DecoderSession returns
        // finished_text("Yes \uFFFD") == "Yes " (its token ids keep both tokens); its stream holds the piece back and
        // sends the finished part at the end, so the streamed pieces add up to the answer's text
        val tokenizer = TokenizerTest.shared
        val script = tokenizer.encode("Yes \uD83D\uDE00")
        assertArrayEquals(intArrayOf(10539, 40303, 218), script)
        assertEquals("Yes \uFFFD", tokenizer.decode(script.copyOf(2)))
        val contract = DecoderContract("full", "buffer", null, shapes)
        val qa = DocumentQa(ScriptedRuntime(script, tokenizer.vocabSize), contract, tokenizer, manifest.tokenizer, pack)
        val streamed = StringBuilder()
        val cut = qa.generate("Hi", maxNewTokens = 2) { streamed.append(it) }
        assertArrayEquals(script.copyOf(2), cut.tokenIds)
        assertEquals("Yes ", cut.text)
        assertEquals("Yes ", streamed.toString())
        // the whole character: nothing to drop
        val whole = DocumentQa(ScriptedRuntime(script, tokenizer.vocabSize), contract, tokenizer, manifest.tokenizer, pack)
            .generate("Hi", maxNewTokens = 3)
        assertEquals("Yes \uD83D\uDE00", whole.text)
        assertEquals("a", DocumentQa.finishedText("a\uFFFD\uFFFD"))
        assertEquals("\uFFFDa", DocumentQa.finishedText("\uFFFDa"))
    }

    @Test
    fun exactDecodeIsReadFromTheContract() {
        val text = Golden.text("qa_decoder_manifest.json")
        // the default export (squeezed, exact_tail 32): the answer's first max_new (14) steps exact; full attention null
        val exported = "\"exact_decode\": ${shapes.maxNew},"
        assertTrue(text.contains(exported))
        fun withOpening(value: String) = text.replaceFirst(exported, "\"exact_decode\": $value,")
        fun refused(manifest: String) = assertThrows(DecoderException::class.java) { DecoderManifest.parse(manifest) }.message!!
        val parsed = DecoderManifest.parse(text).artifacts
        assertEquals(listOf(14, 0), parsed.map { it.contract.exactDecode })
        assertEquals(listOf("prefill_exact", "prefill_exact"), parsed.map { it.contract.exactMethod })  // in-graph
        // null and absent (exports before the field): 0, every decode step selects
        assertEquals(0, DecoderManifest.parse(withOpening("null")).artifacts[0].contract.exactDecode)
        assertEquals(0, DecoderManifest.parse(text.replaceFirst(exported, "")).artifacts[0].contract.exactDecode)
        assertEquals(5, DecoderManifest.parse(withOpening("5")).artifacts[0].contract.exactDecode)
        // negative or not an integer: one line naming the field
        assertEquals("decoder.exact_decode: expected a whole number of tokens >= 0, found -1", refused(withOpening("-1")))
        for (bad in listOf("\"4\"", "2.5", "true")) {
            val e = refused(withOpening(bad))
            assertTrue(e.contains("exact_decode: expected an integer") && '\n' !in e, e)
        }
        // exact steps without the exact method (exact_tail 0): refused at reading, not at the first decode step
        // (the head off too: it needs the method as well, exactHeadIsReadFromTheContractAndSpansThePromptAsPythonDoes)
        val noMethod = text.replaceFirst("\"exact_tail\": ${shapes.maxPrompt},", "\"exact_tail\": 0,")
            .replaceFirst("\"exact_head\": 32,", "\"exact_head\": 0,")
        assertEquals("decoder.exact_decode: 14 exact decode steps need the artifact's exact method, which it lacks (exact_tail 0); " +
            "re-export the decoder", refused(noMethod))
        val noUnsure = noMethod.replaceFirst("\"exact_below\": 0.2,", "\"exact_below\": 0,")
        assertEquals(0, DecoderManifest.parse(noUnsure.replaceFirst(exported, "\"exact_decode\": 0,")).artifacts[0].contract.exactDecode)
    }

    @Test
    fun exactBelowIsReadFromTheContract() {
        val text = Golden.text("qa_decoder_manifest.json")
        // the default export (squeezed, exact_tail 32): unsure steps below 0.2 run again exactly; full attention null
        val exported = "\"exact_below\": 0.2,"
        assertTrue(text.contains(exported))
        fun withBelow(value: String) = text.replaceFirst(exported, "\"exact_below\": $value,")
        fun refused(manifest: String) = assertThrows(DecoderException::class.java) { DecoderManifest.parse(manifest) }.message!!
        assertEquals(listOf(0.2, 0.0), DecoderManifest.parse(text).artifacts.map { it.contract.exactBelow })
        // null and absent (exports before the field): 0, never
        assertEquals(0.0, DecoderManifest.parse(withBelow("null")).artifacts[0].contract.exactBelow)
        assertEquals(0.0, DecoderManifest.parse(text.replaceFirst(exported, "")).artifacts[0].contract.exactBelow)
        assertEquals(0.5, DecoderManifest.parse(withBelow("0.5")).artifacts[0].contract.exactBelow)
        assertEquals(0.0, DecoderManifest.parse(withBelow("0")).artifacts[0].contract.exactBelow)
        // outside [0, 1): one line naming the field
        assertEquals("decoder.exact_below: expected a probability from 0 to below 1, found -0.1", refused(withBelow("-0.1")))
        assertEquals("decoder.exact_below: expected a probability from 0 to below 1, found 1.0", refused(withBelow("1")))
        assertTrue(refused(withBelow("\"0.2\"")).let { it.contains("exact_below") && '\n' !in it })
        // re-runs without the exact method (exact_tail 0): refused at reading
        val noMethod = text.replaceFirst("\"exact_tail\": ${shapes.maxPrompt},", "\"exact_tail\": 0,")
            .replaceFirst("\"exact_decode\": ${shapes.maxNew},", "\"exact_decode\": 0,")
            .replaceFirst("\"exact_head\": 32,", "\"exact_head\": 0,")
        assertEquals("decoder.exact_below: re-running unsure decode steps needs the artifact's exact method, which it lacks " +
            "(exact_tail 0); re-export the decoder", refused(noMethod))
        // an override, checked as decoder_session.exact_below_of checks it (its messages)
        val squeezed = manifest.pick("onnx", "squeezed").contract
        val full = manifest.pick("onnx", "full").contract
        assertEquals(listOf(0.0, 0.35), listOf(0.0, 0.35).map { squeezed.withExactBelow(it).exactBelow })
        assertEquals("--exact-below must be a probability from 0 (off) to below 1; got 1.0",
            assertThrows(DecoderException::class.java) { squeezed.withExactBelow(1.0) }.message)
        assertEquals("--exact-below shapes Squeezed Attention's key selection and does nothing with a full-attention artifact " +
            "(every key is attended); drop it or pick the squeezed artifact (--artifact-attention squeezed)",
            assertThrows(DecoderException::class.java) { full.withExactBelow(0.3) }.message)
        assertEquals("--exact-below 0.3 runs unsure decode steps again through the artifact's exact method, which this " +
            "artifact lacks (exported with --exact-tail 0); re-export it with --exact-tail N or pass --exact-below 0",
            assertThrows(DecoderException::class.java) { DecoderContract("squeezed", "io", 0.3, shapes).withExactBelow(0.3) }.message)
        // a full-attention loop re-runs nothing whatever its contract says
        assertEquals(0.0, GenerationLoop(CallRecorder(), full, pack, PackLayout.decoderContextInputs(pack, shapes, "full")).exactBelow)
        // the probability the rule reads: softmax of the logits' top entry, in double precision
        assertEquals(0.5, GenerationLoop.topProbability(floatArrayOf(1f, 1f, Float.NEGATIVE_INFINITY)), 1e-15)
        assertEquals(1.0 / (1.0 + 2.0 * Math.exp(-2.0)), GenerationLoop.topProbability(floatArrayOf(0f, 2f, 0f)), 1e-15)
    }

    @Test
    fun anExactDecodeOverrideIsCheckedAsPythonChecksIt() {
        // decoder_session.exact_decode_of: a whole number >= 0; > 0 refused for full attention and for a squeezed
        // artifact without the exact method; the messages are Python's
        val squeezed = manifest.pick("onnx", "squeezed").contract
        val full = manifest.pick("onnx", "full").contract
        assertEquals(listOf(0, 3, 40), listOf(0, 3, 40).map { squeezed.withExactDecode(it).exactDecode })
        assertEquals(14, squeezed.exactDecode)  // a copy: the manifest's contract keeps its own
        assertEquals("--exact-decode must be a whole number of tokens >= 0; got -1",
            assertThrows(DecoderException::class.java) { squeezed.withExactDecode(-1) }.message)
        assertEquals("--exact-decode shapes Squeezed Attention's key selection and does nothing with a full-attention artifact " +
            "(every key is attended); drop it or pick the squeezed artifact (--artifact-attention squeezed)",
            assertThrows(DecoderException::class.java) { full.withExactDecode(2) }.message)
        assertEquals(0, full.withExactDecode(0).exactDecode)
        val noMethod = DecoderContract("squeezed", "io", 0.3, shapes)
        assertEquals("--exact-decode 2 runs the answer's first tokens through the artifact's exact method, which this artifact " +
            "lacks (exported with --exact-tail 0); re-export it with --exact-tail N or pass --exact-decode 0",
            assertThrows(DecoderException::class.java) { noMethod.withExactDecode(2) }.message)
        assertEquals(0, noMethod.withExactDecode(0).exactDecode)
        // a caller's shorter exact tail (even 0) keeps the artifact's method and its width: the opening can still run
        val noTail = squeezed.withExactTail(0)
        assertEquals(listOf(0, shapes.maxPrompt), listOf(noTail.exactTail, noTail.exactWidth))
        assertEquals(2, noTail.withExactDecode(2).exactDecode)
        assertEquals(listOf(0, shapes.maxPrompt, 2), noTail.withExactDecode(2).let { listOf(it.exactTail, it.exactWidth, it.exactDecode) })
        assertThrows(DecoderException::class.java) { DecoderContract("squeezed", "io", 0.3, shapes, exactTail = 3, exactDecode = -1) }
        // a full-attention loop runs no exact step whatever its contract says
        assertEquals(0, GenerationLoop(CallRecorder(), full, pack, PackLayout.decoderContextInputs(pack, shapes, "full")).exactDecode)
    }

    /** The calls of a greedy answer (ids 1..[n], [maxNew] tokens) under a squeezed "buffer" contract. */
    private fun greedyCalls(n: Int, maxNew: Int, exact: Int, opening: Int, ranges: Map<String, IntRange> = emptyMap(),
                            tail: Int? = null): List<String> {
        val recorder = CallRecorder()
        var contract = DecoderContract("squeezed", "buffer", 0.3, shapes, tokenRanges = ranges, exactTail = exact, exactDecode = opening)
        if (tail != null) contract = contract.withExactTail(tail)
        val loop = GenerationLoop(recorder, contract, pack, PackLayout.decoderContextInputs(pack, shapes, "squeezed"))
        assertEquals(opening, loop.exactDecode)
        assertEquals("prefill_exact", loop.exactMethod)
        val out = loop.greedy(IntArray(n) { it + 1 }, maxNew)
        assertEquals(maxNew - 1, out.decodeSteps)
        return recorder.calls
    }

    @Test
    fun theAnswersOpeningRunsOneTokenPrefillExactCallsThenDecode() {
        // GenerationLoop.greedy: decode step i (feeding answer token i + 1) calls prefill_exact with that one token at
        // the decode position while i < exact_decode, then decode. CallRecorder's logits make call c's token c % 8.
        val p = shapes.maxPrompt
        // static prefill_exact (width exact_tail 3): the one token padded to 3
        assertEquals(listOf("prefill:1,2,3,4,5,6,7@0/$p", "prefill_exact:8,9,10@7/3", "prefill_exact:2@10/3", "prefill_exact:3@11/3",
            "decode:4@12/1", "decode:5@13/1"), greedyCalls(10, 5, exact = 3, opening = 2))
        // a dynamic token axis (the .onnx's [1, E]): the one token as it is
        assertEquals(listOf("prefill:1,2,3,4,5,6,7@0/$p", "prefill_exact:8,9,10@7/3", "prefill_exact:2@10/1", "prefill_exact:3@11/1",
            "decode:4@12/1", "decode:5@13/1"), greedyCalls(10, 5, exact = 3, opening = 2, ranges = mapOf("prefill_exact" to 1..3)))
        // exact_decode 0: every decode step selects (as before the rule)
        assertEquals(listOf("prefill:1,2,3,4,5,6,7@0/$p", "prefill_exact:8,9,10@7/3", "decode:2@10/1", "decode:3@11/1",
            "decode:4@12/1", "decode:5@13/1"), greedyCalls(10, 5, exact = 3, opening = 0))
        // more exact steps than the answer has: every decode step exact
        assertEquals(listOf("prefill_exact:1,2,3@0/3", "prefill_exact:1@3/3", "prefill_exact:2@4/3"),
            greedyCalls(3, 3, exact = 3, opening = 16))
        // a caller's exact tail of 0: the prompt selects, the opening still runs prefill_exact at the method's width (3)
        assertEquals(listOf("prefill:1,2,3,4,5,6,7,8,9,10@0/$p", "prefill_exact:1@10/3", "decode:2@11/1"),
            greedyCalls(10, 3, exact = 3, opening = 1, tail = 0))
        // a stop token or one new token: no decode step at all
        assertEquals(listOf("prefill:1,2,3,4,5,6,7@0/$p", "prefill_exact:8,9,10@7/3"), greedyCalls(10, 1, exact = 3, opening = 2))
    }

    @Test
    fun anExactDecodeStepFollowsNothingAndTheNextDecodeFollowsItsPointer() {
        // decoder_session.GenerationLoop.step: an exact decode step (1-token prefill_exact) feeds keep_keys as is and
        // follow_rows -1; its follow_out is the pointer the next decode step takes (keep_keys - F)
        val (L, H, F) = Triple(pack.layers, pack.kvHeads, 2)
        val recorder = FollowRecorder(L, H, F)
        val contract = DecoderContract("squeezed", "buffer", 0.3, shapes, exactTail = 3, followKeys = F, exactDecode = 2)
        val loop = GenerationLoop(recorder, contract, pack, PackLayout.decoderContextInputs(pack, shapes, "squeezed"))
        loop.greedy(IntArray(6) { it + 1 }, 5)
        assertEquals(listOf("prefill", "prefill_exact", "prefill_exact", "prefill_exact", "decode", "decode"), recorder.methods)
        val keepKeys = loop.keepKeys!!.toLong()
        for ((i, feed) in recorder.feeds.withIndex()) {
            val follows = i >= 4  // the selecting decode steps after the two exact ones
            assertEquals(if (follows) keepKeys - F else keepKeys, (feed.getValue("keep_keys") as DecoderTensor.Int64).data.single(), "call $i")
            if (i in 2..3) assertEquals(1L, (feed.getValue("n_tokens") as DecoderTensor.Int64).data.single(), "call $i: one token")
            for (l in 0 until L) {
                // call 4 follows the second exact step's pointer (call 3), call 5 the first decode's
                val expected = if (follows) recorder.returned[i - 1].copyOfRange(l * H * F, (l + 1) * H * F) else LongArray(H * F) { -1 }
                assertArrayEquals(expected, (feed.getValue("follow_rows_$l") as DecoderTensor.Int64).data, "call $i: follow_rows_$l")
            }
        }
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
