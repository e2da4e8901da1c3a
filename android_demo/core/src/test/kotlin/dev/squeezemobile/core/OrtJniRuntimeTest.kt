package dev.squeezemobile.core

import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import java.io.File

/**
 * End to end through ONNX Runtime's C library (the onnxruntime PyPI wheel's libonnxruntime.so, via the JNI bridge
 * android_demo/jni/ort_bridge.c): the reduced SqueezeTime export (the .onnx make_golden.py exports, checked by its
 * sha256 in the golden manifest) on the golden input bytes gives Python onnxruntime's logits (logits.json) within
 * [LOGIT_TOL] and the same top-5 order; and bikes.mp4's frames streamed through the core's preprocessing into it give
 * Python's top-5. run_tests.sh builds the bridge and passes -Dsqueeze.ort.bridge / -Dsqueeze.ort.model; the pytest
 * wrapper writes the model (make_golden.py --model-only) when it is missing. Missing pieces fail, never skip.
 */
class OrtJniRuntimeTest {
    companion object {
        /** Max abs difference to Python onnxruntime's logits (same library, same graph; measured 0 here). */
        const val LOGIT_TOL = 1e-5

        private val model: File by lazy {
            val error = System.getProperty("squeeze.ort.error").orEmpty()
            if (error.isNotEmpty()) throw AssertionError("the ONNX Runtime JNI bridge was not built: $error")
            val bridge = System.getProperty("squeeze.ort.bridge")
                ?: throw AssertionError("no -Dsqueeze.ort.bridge; run the tests with android_demo/run_tests.sh")
            val path = System.getProperty("squeeze.ort.model")
                ?: throw AssertionError("no -Dsqueeze.ort.model; run the tests with android_demo/run_tests.sh")
            val f = File(path)
            if (!f.isFile) throw AssertionError("the reduced SqueezeTime export $path is missing; write it with " +
                ".venv/bin/python android_demo/tools/make_golden.py --model-only (the pytest wrapper does this)")
            OrtNative.load(bridge)
            f
        }
    }

    private val manifest = Manifest.parse(Golden.text("manifest.json"))
    private val artifact = manifest.artifact("onnx")!!
    private val python = Golden.json("logits.json")
    private val pythonLogits = python["logits"].doubleArray()
    private val pythonTop5 = python["top5"].intArray()

    private fun open(threads: Int = 1) = OrtJniRuntime.open(model.parentFile, artifact, intraOpThreads = threads)

    private fun maxAbs(logits: FloatArray): Double {
        assertEquals(pythonLogits.size, logits.size)
        var m = 0.0
        for (i in logits.indices) m = maxOf(m, Math.abs(logits[i] - pythonLogits[i]))
        return m
    }

    @Test
    fun modelIsTheGoldensExport() {
        // (no sha256 comparison: the exporter writes source paths into the graph's metadata, so the bytes depend on
        // where the checkout lives; make_golden.py --model-only checks the model's logits before installing it)
        assertEquals(model.name, artifact.file)
        assertEquals(python["artifact"].string(), artifact.file)
    }

    @Test
    fun goldenInputGivesPythonOnnxRuntimeLogits() {
        for (threads in intArrayOf(1, 2)) {
            open(threads).use { rt ->
                assertEquals("input", rt.inputName)
                assertEquals("logits", rt.outputName)
                assertTrue(rt.name.startsWith("ONNX Runtime 1."), rt.name)
                val out = rt.runTensor(ModelInput.Uint8(Golden.bytes("frames_uint8.bin")))
                assertArrayEquals(longArrayOf(1, manifest.numClasses.toLong()), out.shape)
                val diff = maxAbs(out.values)
                println("OrtJniRuntime ($threads threads, ${OrtNative.version()}): max |logit - Python onnxruntime| = $diff")
                assertTrue(diff <= LOGIT_TOL, "max abs logit difference $diff > $LOGIT_TOL")
                assertArrayEquals(pythonTop5, Classification.topK(out.values, 5, null).map { it.index }.toIntArray())
                // the session is reusable: a second run gives the same bits
                assertArrayEquals(out.values, rt.run(ModelInput.Uint8(Golden.bytes("frames_uint8.bin"))))
            }
        }
    }

    @Test
    fun videoFramesThroughCorePreprocessingAndOrtGivePythonsTop5() {
        // bikes.mp4's decoded frames streamed as a camera would: FrameSampler + resize + crop + packing (the core),
        // then ONNX Runtime through the bridge, then softmax/top-5 (the core): Python's top-5 of read_video_clips + ORT
        val indices = Golden.video["indices"].intArray()
        val frames = Golden.sourceFrames
        val blank = RgbFrame.packed(ByteArray(640 * 272 * 3), 640, 272)
        val n = Golden.video["video_frames"].int()
        val p = manifest.preprocessing
        val builder = ClipBuilder(manifest, phase = FrameSampling.offlinePhase(n, p.frames, p.frameInterval))
        var clip: ClipBuilder.Clip? = null
        for (i in 0..indices.last()) {
            val out = builder.offer { indices.indexOf(i).let { k -> if (k >= 0) frames[k] else blank } }
            if (i == indices.last()) clip = out
        }
        assertNull(diffBytes(Golden.bytes("frames_uint8.bin"), (clip!!.input as ModelInput.Uint8).data))
        val labels = Manifest.parseLabels(Golden.text("labels.txt"))
        open(2).use { rt ->
            val result = Classifier(rt, labels).classify(clip)
            assertArrayEquals(pythonTop5, result.top.map { it.index }.toIntArray())
            assertEquals(labels[pythonTop5[0]], result.top[0].label)
            val softmax = python["softmax"].doubleArray()
            for (pred in result.top) assertEquals(softmax[pred.index], pred.probability, 1e-5)
            assertTrue(result.inferenceMs > 0.0)
            assertTrue(maxAbs(rt.run(clip.input)) <= LOGIT_TOL)
        }
    }

    @Test
    fun errorsBecomeKotlinExceptionsWithOrtMessages() {
        assertTrue(model.isFile) // a missing bridge or model fails here with its hint, not inside assertThrows
        val missing = assertThrows(OrtException::class.java) {
            OrtJniRuntime.open(File(model.parentFile, "no-such-model.onnx"), longArrayOf(1))
        }
        assertTrue(missing.message!!.contains("no-such-model.onnx"), missing.message)
        val notOnnx = File.createTempFile("not-a-model", ".onnx").apply { writeText("hello"); deleteOnExit() }
        val bad = assertThrows(OrtException::class.java) { OrtJniRuntime.open(notOnnx, longArrayOf(1)) }
        assertTrue(bad.message!!.startsWith("cannot load the ONNX model") && bad.message!!.contains("ORT error code"), bad.message)
        assertTrue(assertThrows(OrtException::class.java) {
            OrtJniRuntime.open(model, longArrayOf(1), inputName = "frames")
        }.message!!.contains("no input 'frames' (inputs: input)"))

        val input = Golden.bytes("frames_uint8.bin")
        open().use { rt ->
            // a float32 tensor where the graph wants uint8: ONNX Runtime's own message comes through
            val wrongType = assertThrows(OrtException::class.java) {
                rt.run(ModelInput.Float32(FloatArray(input.size)))
            }
            assertTrue(wrongType.message!!.startsWith("ONNX Runtime run failed (input 'input', output 'logits')"), wrongType.message)
            assertTrue(wrongType.message!!.contains("tensor(float)") || wrongType.message!!.contains("type"), wrongType.message)
            val wrongSize = assertThrows(OrtException::class.java) { rt.run(ModelInput.Uint8(input.copyOf(100))) }
            assertTrue(wrongSize.message!!.contains("the shape holds ${input.size} elements, the array 100"), wrongSize.message)
            val wrongShape = assertThrows(OrtException::class.java) {
                rt.runTensor(ModelInput.Uint8(input), longArrayOf(1, 4, 32, 128, 3))
            }
            assertTrue(wrongShape.message!!.contains("ORT error code"), wrongShape.message)
            for (e in listOf(missing, bad, wrongType, wrongSize, wrongShape)) println("OrtException: ${e.message}")
            // still usable after errors
            assertTrue(maxAbs(rt.run(ModelInput.Uint8(input))) <= LOGIT_TOL)
            rt.close()
            assertEquals("the ONNX Runtime session is closed",
                         assertThrows(OrtException::class.java) { rt.run(ModelInput.Uint8(input)) }.message)
        }
    }
}
