package dev.squeezemobile.core

import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Assumptions.assumeTrue
import org.junit.jupiter.api.Test
import java.io.File

/**
 * End to end: the tiny decoder's exported .onnx (in-graph plan, squeezed attention, the tiny 2-layer GGUF, the
 * qa_pack golden's model) run from Kotlin through ONNX Runtime's C library (JNI bridge, [OrtJniDecoder]) inside the
 * core's generation loop ([DocumentQa] / [GenerationLoop]) gives Python's DecoderSession tokens on the same artifact
 * and pack (reference.json, written beside the .onnx by make_golden.py --decoder-only; the pytest wrapper does so
 * when it is missing), with Python's calls: the export's exact prompt tail (32 tokens, the whole question) runs as
 * prefill_exact, the file's second graph, selected by `branch` = 1, the answer's first 3 decode steps (the export's
 * exact_decode) as 1-token prefill_exact calls (branch 1), the later ones decode with `branch` = 0; and with a 4-token
 * tail, a selecting prefill (branch 0) before it; a selecting step whose top token is less likely than the export's
 * exact_below (0.137) runs again as a 1-token prefill_exact call, where Python's did. The export follows 2 keys (follow_min_keep 0): every decode step
 * feeds the previous call's follow_out back as follow_rows_<layer>. run_tests.sh passes -Dsqueeze.ort.decoder=DIR: with the property set, missing files FAIL;
 * only a run without the property (outside run_tests.sh) skips.
 */
class OrtJniDecoderTest {
    companion object {
        /** Max abs difference to Python onnxruntime's logits (same library and graph, 1 thread each; measured 0 here). */
        const val LOGIT_TOL = 1e-4

        private val dir: File? by lazy {
            val path = System.getProperty("squeeze.ort.decoder")
            if (path == null) null else {
                val error = System.getProperty("squeeze.ort.error").orEmpty()
                if (error.isNotEmpty()) throw AssertionError("the ONNX Runtime JNI bridge was not built: $error")
                val bridge = System.getProperty("squeeze.ort.bridge")
                    ?: throw AssertionError("no -Dsqueeze.ort.bridge; run the tests with android_demo/run_tests.sh")
                val d = File(path)
                for (name in listOf("manifest.json", "tokenizer.json", "reference.json")) {
                    if (!File(d, name).isFile) throw AssertionError("the tiny decoder export $d has no $name; write it with " +
                        ".venv/bin/python android_demo/tools/make_golden.py --decoder-only (the pytest wrapper does this)")
                }
                OrtNative.load(bridge)
                d
            }
        }
    }

    private fun export(): File {
        val d = dir
        assumeTrue(d != null, "no -Dsqueeze.ort.decoder (run android_demo/run_tests.sh or the pytest wrapper)")
        return d!!
    }

    private val pack = ContextPack.read(Golden.bytes("qa_pack.safetensors"), "qa_pack.safetensors")

    private class Setup(val manifest: DecoderManifest, val artifact: DecoderArtifact, val tokenizer: ByteLevelBpeTokenizer,
                        val ref: JsonPath)

    private fun setup(d: File): Setup {
        val manifest = DecoderManifest.parse(File(d, "manifest.json").readBytes())
        val artifact = manifest.pick("onnx", "squeezed", DecoderContract.IN_GRAPH)
        val ref = JsonPath.of(Json.parse(File(d, "reference.json").readBytes()), "reference.json")
        assertEquals(ref["artifact"].string(), artifact.file)
        assertTrue(File(d, artifact.file).isFile, "the artifact ${artifact.file} is missing in $d")
        return Setup(manifest, artifact, ByteLevelBpeTokenizer.fromFile(File(d, manifest.tokenizer.file)), ref)
    }

    /** Passes calls on, logging "method branch=k" as reference.json's "calls" do. */
    private class CallLog(val runtime: DecoderRuntime) : DecoderRuntime {
        override val name get() = runtime.name
        val calls = ArrayList<String>()

        override fun run(method: String, inputs: Map<String, DecoderTensor>): Map<String, DecoderTensor> {
            calls.add(GenerationTest.branchCall(method, inputs))
            return runtime.run(method, inputs)
        }
    }

    private fun JsonPath.strings() = list().map { it.string() }

    private fun maxAbs(kotlin: List<FloatArray>, python: JsonPath): Double {
        val steps = python.list()
        assertEquals(steps.size, kotlin.size, "logit steps")
        var m = 0.0
        for ((i, p) in steps.withIndex()) {
            val e = p.doubleArray()
            assertEquals(e.size, kotlin[i].size)
            for (j in e.indices) m = maxOf(m, Math.abs(kotlin[i][j] - e[j]))
            assertEquals(GenerationLoop.argmax(e.map { it.toFloat() }.toFloatArray()), GenerationLoop.argmax(kotlin[i]), "step $i argmax")
        }
        return m
    }

    @Test
    fun greedyAnswerThroughOnnxRuntimeIsPythons() {
        val d = export()
        val s = setup(d)
        OrtJniDecoder.open(d, s.artifact).use { ort ->
            assertTrue(ort.name.startsWith("ONNX Runtime 1."), ort.name)
            assertEquals(s.ref["exact_tail"].int(), s.artifact.contract.exactTail)
            // the answer's opening as the export wrote it (make_golden.QA_EXACT_DECODE) and Python's session ran it
            assertEquals(3, s.ref["exact_decode"].int())
            assertEquals(s.ref["exact_decode"].int(), s.artifact.contract.exactDecode)
            // the unsure steps' re-run as the export wrote it (make_golden.QA_EXACT_BELOW)
            assertEquals(0.137, s.ref["exact_below"].double())
            assertEquals(s.ref["exact_below"].double(), s.artifact.contract.exactBelow)
            val rt = CallLog(ort)
            val qa = DocumentQa.attach(s.manifest, s.artifact, rt, s.tokenizer, pack)
            assertEquals(s.ref["keep_keys"].int(), qa.loop.keepKeys)
            // followed keys as Python's loop follows them (the tiny pack keeps more than follow_min_keep 0)
            assertEquals(listOf(2, 0), listOf(s.artifact.contract.followKeys, s.artifact.contract.followMinKeep))
            assertEquals(s.ref["follow_keys"].int(), qa.loop.follow)
            val prompt = s.ref["prompt"].string()
            val ids = qa.promptIds(prompt)
            assertArrayEquals(s.ref["prompt_ids"].intArray(), ids)
            val maxNew = s.ref["max_new_tokens"].int()
            val greedy = s.ref["greedy"]
            val streamed = StringBuilder()
            val answer = qa.generate(prompt, maxNewTokens = maxNew, stopAtEos = false) { streamed.append(it) }
            assertArrayEquals(greedy["tokens"].intArray(), answer.tokenIds)
            assertEquals(greedy["rerun_at"].intArray().size, answer.rerunTokens)
            assertTrue(QaSession.stats(answer).contains("${answer.rerunTokens} unsure re-run exactly"), QaSession.stats(answer))
            assertEquals(greedy["text"].string(), answer.text)
            assertEquals(answer.text, streamed.toString())
            rt.calls.clear()
            val out = qa.loop.greedy(ids, maxNew)
            assertArrayEquals(greedy["tokens"].intArray(), out.tokens)
            // Python's calls: the whole question as prefill_exact (branch 1), the answer's first 3 decode steps 1-token
            // prefill_exact calls (branch 1), then decode steps (branch 0), each unsure one (Python's rerun_at) followed
            // by a 1-token prefill_exact call
            val rerun = greedy["rerun_at"].intArray()
            assertArrayEquals(rerun, out.rerunAt)
            assertTrue(rerun.isNotEmpty() && rerun.size < maxNew - 4, rerun.contentToString())
            assertEquals(greedy["calls"].strings(), rt.calls)
            assertEquals(List(4) { "prefill_exact branch=1" } + (3 until maxNew - 1).flatMap {
                if (it in rerun) listOf("decode branch=0", "prefill_exact branch=1") else listOf("decode branch=0") }, rt.calls)
            val diff = maxAbs(out.logits, greedy["logits"])
            println("OrtJniDecoder (${rt.name}): ${out.tokens.size} tokens = Python's; max |logit - Python| = $diff")
            assertTrue(diff <= LOGIT_TOL, "max abs logit difference $diff > $LOGIT_TOL")
        }
    }

    @Test
    fun forcedRunGivesPythonsLogitsAndStopsAtTheEndOfTurn() {
        val d = export()
        val s = setup(d)
        OrtJniDecoder.open(d, s.artifact, intraOpThreads = 2).use { ort ->
            val rt = CallLog(ort)
            val qa = DocumentQa.attach(s.manifest, s.artifact, rt, s.tokenizer, pack)
            val forced = s.ref["forced"]
            val out = qa.loop.greedy(s.ref["prompt_ids"].intArray(), s.ref["max_new_tokens"].int(), forced = forced["forced"].intArray(),
                stopIds = forced["stop_ids"].intArray().toSet())
            assertArrayEquals(forced["tokens"].intArray(), out.tokens)
            assertEquals(forced["calls"].strings(), rt.calls)
            assertArrayEquals(forced["rerun_at"].intArray(), out.rerunAt)
            assertTrue(out.tokens.size < forced["forced"].intArray().size, "the forced run must stop at the end-of-turn token")
            val diff = maxAbs(out.logits, forced["logits"])
            println("OrtJniDecoder forced run (2 threads): max |logit - Python| = $diff")
            assertTrue(diff <= LOGIT_TOL, "max abs logit difference $diff > $LOGIT_TOL")
        }
    }

    /**
     * Replays the reference's run [key] (a Python loop given another exact tail and head than the export's) through the
     * JNI bridge: Python's tokens, calls, re-runs and logits; returns the calls.
     */
    private fun replayShapedRun(key: String): List<String> {
        val d = export()
        val s = setup(d)
        val run = s.ref[key]
        val contract = s.artifact.contract.withExactTail(run["exact_tail"].int()).withExactHead(run["exact_head"].int())
        OrtJniDecoder.open(d, s.artifact).use { ort ->
            val rt = CallLog(ort)
            val loop = GenerationLoop(rt, contract, pack, PackLayout.decoderContextInputs(pack, contract.shapes, contract.attention))
            val out = loop.greedy(s.ref["prompt_ids"].intArray(), s.ref["max_new_tokens"].int())
            assertArrayEquals(run["tokens"].intArray(), out.tokens)
            assertEquals(run["calls"].strings(), rt.calls)
            assertArrayEquals(run["rerun_at"].intArray(), out.rerunAt)
            val diff = maxAbs(out.logits, run["logits"])
            println("OrtJniDecoder, $key (exact tail ${run["exact_tail"].int()}, head ${run["exact_head"].int()}): " +
                "max |logit - Python| = $diff")
            assertTrue(diff <= LOGIT_TOL, "max abs logit difference $diff > $LOGIT_TOL")
            return rt.calls
        }
    }

    @Test
    fun anExactHeadRunsBeforeTheSelectingPrefillAsPythonDoes() {
        // the question's first 2 tokens through prefill_exact (branch 1) at cache_len 0, the tokens up to the 4-token
        // tail in one selecting prefill (branch 0), then the tail's prefill_exact (Python: GenerationLoop.exact_head = 2)
        assertEquals(listOf("prefill_exact branch=1", "prefill branch=0", "prefill_exact branch=1"),
            replayShapedRun("head_tail").take(3))
    }

    @Test
    fun aShorterExactTailRunsBothGraphsOfTheFileAsPythonDoes() {
        // the loop's exact tail shorter than the question (Python: GenerationLoop.exact_tail = 4, and no head: the
        // export's 16 would cover this question): a selecting prefill (the file's first graph, branch 0) of the tokens
        // before the tail, then prefill_exact (branch 1), then the answer's opening (3 exact decode steps,
        // prefill_exact with one token), then decode
        assertEquals(listOf("prefill branch=0") + List(4) { "prefill_exact branch=1" } + listOf("decode branch=0"),
            replayShapedRun("short_tail").take(6))
    }

    @Test
    fun aSessionTakesHundredsOfInputsAndOutputs() {
        // the real 30-layer SmolLM2's squeezed export declares 366 inputs; the bridge held at most 256 per run and refused
        // every real decoder ("more than 256 inputs or outputs"). The golden graph: 400 inputs x_i, y_i = x_i + i, and total
        export()   // the bridge, loaded
        val model = File.createTempFile("many-tensors", ".onnx").apply { deleteOnExit(); writeBytes(Golden.bytes("qa_ort_many_tensors.onnx")) }
        OrtJniSession.open(model).use { session ->
            val n = session.inputNames.size
            assertEquals(400, n)
            assertEquals(n + 1, session.outputNames.size)
            val feed = LinkedHashMap<String, OrtTensor>()
            for (i in 0 until n) feed["x$i"] = OrtTensor(floatArrayOf(0.5f * i), longArrayOf(1))
            val out = session.run(feed)
            assertEquals(n + 1, out.size)
            for (i in 0 until n) assertEquals(1.5f * i, (out.getValue("y$i").data as FloatArray)[0], "y$i")
            assertEquals(0.5f * n * (n - 1) / 2, (out.getValue("total").data as FloatArray)[0])
        }
        model.delete()
    }

    @Test
    fun namedInputsAndOutputsAndTheirErrors() {
        val d = export()
        val s = setup(d)
        val contract = s.artifact.contract
        val loop = GenerationLoop(object : DecoderRuntime {
            override val name = "unused"
            override fun run(method: String, inputs: Map<String, DecoderTensor>) = throw AssertionError("unused")
        }, contract, pack, PackLayout.decoderContextInputs(pack, contract.shapes, contract.attention))
        OrtJniSession.open(File(d, s.artifact.file)).use { session ->
            val declared = s.artifact.methods.getValue("decode").inputs
            assertEquals(declared.map { it.name }.toSet(), session.inputNames.toSet())
            // every method declares the graph's inputs (the merged graph of the .onnx's two branches)
            for (method in s.artifact.methods.values) assertEquals(session.inputNames.toSet(), method.inputs.map { it.name }.toSet(), method.name)
            val fixed = contract.fixedInputs.getValue("decode")
            assertEquals(listOf("logits", "new_keys", "new_values", "follow_out"), session.outputNames)
            // a decode step's feed as the loop builds it (cache of zeros), by name
            val cache = loop.newCache()!!
            val feed = LinkedHashMap<String, OrtTensor>()
            for (info in declared) {
                val shape = LongArray(info.shape.size) { info.shape[it].toLong() }
                val n = info.shape.fold(1) { a, b -> a * b }
                feed[info.name] = (fixed[info.name] ?: loop.contextInputs[info.name])?.let {
                    when (it) {
                        is DecoderTensor.Float32 -> OrtTensor(it.data, shape)
                        is DecoderTensor.Int64 -> OrtTensor(it.data, shape)
                    }
                } ?: when {
                    info.dtype == "float32" -> OrtTensor(FloatArray(n), shape)
                    info.name.startsWith("follow_rows_") -> OrtTensor(LongArray(n) { -1L }, shape) // nothing followed
                    else -> OrtTensor(LongArray(n) { if (info.name == "context_len") pack.numTokens.toLong() else 1L }, shape)
                }
            }
            assertEquals(2, cache.layers)
            // only the outputs asked for, by name, with ONNX Runtime's shapes
            val out = session.run(feed, listOf("new_values", "logits"))
            assertEquals(listOf("new_values", "logits"), out.keys.toList())
            assertArrayEquals(longArrayOf(2, pack.kvHeads.toLong(), 1, pack.headDim.toLong()), out.getValue("new_values").shape)
            assertEquals((out.getValue("logits").data as FloatArray).size.toLong(), out.getValue("logits").shape.fold(1L) { a, b -> a * b })
            // follow_out: int64 [L, Hkv, follow_keys], flat clustered rows of each head (-1: none)
            val follow = session.run(feed, listOf("follow_out")).getValue("follow_out")
            assertArrayEquals(longArrayOf(2, pack.kvHeads.toLong(), 2), follow.shape)
            val width = contract.shapes.maxClustered
            (follow.data as LongArray).forEachIndexed { i, r ->
                val head = (i / 2) % pack.kvHeads
                assertTrue(r == -1L || r in head * width until (head + 1) * width, "follow_out[$i] = $r")
            }

            val missing = assertThrows(OrtException::class.java) { session.run(feed - "keep_keys") }
            // tokens, n_tokens, cache_len, context_len, keep_keys, branch; per layer: past keys/values, sink, window,
            // clustered keys/values, centroids, value centroids, counts, starts, next rows, followed rows
            assertEquals(6 + 12 * cache.layers, feed.size)
            assertTrue(missing.message!!.startsWith("ONNX Runtime run failed (${feed.size - 1} inputs, 4 outputs)") &&
                missing.message!!.contains("ORT error code"), missing.message)
            val wrongType = assertThrows(OrtException::class.java) {
                session.run(feed + ("tokens" to OrtTensor(IntArray(1), longArrayOf(1))))
            }
            assertTrue(wrongType.message!!.contains("tokens") || wrongType.message!!.contains("type"), wrongType.message)
            // a size that does not match its shape (OrtTensor checks before the bridge, which checks again)
            val bad = assertThrows(OrtException::class.java) { OrtTensor(LongArray(1), longArrayOf(3)) }
            assertTrue(bad.message!!.contains("holds 3 elements, the array 1"), bad.message)
            val unknown = assertThrows(OrtException::class.java) { session.run(feed, listOf("no_such_output")) }
            assertTrue(unknown.message!!.contains("ORT error code"), unknown.message)
            for (e in listOf(missing, wrongType, bad, unknown)) {
                println("OrtException: ${e.message}")
                assertTrue('\n' !in e.message!!, "one line: ${e.message}")
            }
            // still usable after errors, same bits
            assertArrayEquals(out.getValue("logits").data as FloatArray, session.run(feed).getValue("logits").data as FloatArray)
            // branch 1: the same feed through the other graph (prefill_exact: every fixed-context row, no lookup)
            assertArrayEquals(longArrayOf(1), (contract.fixedInputs.getValue("prefill_exact").getValue("branch") as DecoderTensor.Int64).data)
            val exact = session.run(feed + ("branch" to OrtTensor(longArrayOf(1), longArrayOf(1))), listOf("logits"))
            assertTrue(!(exact.getValue("logits").data as FloatArray).contentEquals(out.getValue("logits").data as FloatArray),
                "branch 1 runs the other graph")
            session.close()
            assertEquals("the ONNX Runtime session is closed", assertThrows(OrtException::class.java) { session.run(feed) }.message)
        }
        // the decoder runtime names what the loop did not feed
        OrtJniDecoder.open(d, s.artifact).use { rt ->
            val e = assertThrows(DecoderException::class.java) { rt.run("decode", loop.contextInputs) }
            assertTrue(e.message!!.startsWith("the graph needs input tokens"), e.message)
        }
    }
}
