package dev.squeezemobile.core

import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

/**
 * The camera path end to end without a camera: the frames of bikes.mp4 streamed through ClipBuilder (set up
 * from the real manifest) give exactly the frames_uint8 input Python builds, and a runtime returning the real
 * export's logits gives Python's top-5.
 */
class RecognitionTest {
    private val manifest = Manifest.parse(Golden.text("manifest.json"))
    private val indices = Golden.video["indices"].intArray()
    private val frames = Golden.sourceFrames
    private val blank = RgbFrame.packed(ByteArray(640 * 272 * 3), 640, 272)

    private fun streamedClip(): ClipBuilder.Clip {
        val n = Golden.video["video_frames"].int()
        val builder = ClipBuilder(manifest, phase = FrameSampling.offlinePhase(n, manifest.preprocessing.frames, manifest.preprocessing.frameInterval))
        var clip: ClipBuilder.Clip? = null
        for (i in 0..indices.last()) {
            val wanted = builder.wantsNextFrame()
            val out = builder.offer {
                assertTrue(wanted, "frame $i converted although it is not kept")
                val k = indices.indexOf(i)
                if (k >= 0) frames[k] else blank // earlier kept frames leave the ring before the clip completes
            }
            if (i == indices.last()) clip = out
        }
        return clip!!
    }

    @Test
    fun streamedCameraFramesGiveThePythonInput() {
        val clip = streamedClip()
        assertArrayEquals(indices.map { it.toLong() }.toLongArray(), clip.frameIndices)
        val input = clip.input as ModelInput.Uint8
        assertNull(diffBytes(Golden.bytes("frames_uint8.bin"), input.data))
        assertEquals(manifest.inputBytes, input.data.size.toLong())
    }

    @Test
    fun classifierGivesPythonsTop5AndRecordsLatency() {
        val logits = Golden.json("logits.json")
        val expectedInput = Golden.bytes("frames_uint8.bin")
        val runtime = object : ModelRuntime {
            override val name = "fake (golden logits)"
            override fun run(input: ModelInput): FloatArray {
                assertNull(diffBytes(expectedInput, (input as ModelInput.Uint8).data))
                return logits["logits"].doubleArray().map { it.toFloat() }.toFloatArray()
            }
        }
        var now = 0L
        val labels = Manifest.parseLabels(Golden.text("labels.txt"))
        val classifier = Classifier(runtime, labels, clockNanos = { now.also { now += 12_500_000L } })
        val result = classifier.classify(streamedClip())
        assertArrayEquals(logits["top5"].intArray(), result.top.map { it.index }.toIntArray())
        assertEquals(labels[result.top[0].index], result.top[0].label)
        assertEquals(12.5, result.inferenceMs, 1e-9)
        assertEquals("fake (golden logits)", result.runtime)
        assertEquals(12.5, classifier.latency.summary()!!.p50Ms, 1e-9)
    }

    @Test
    fun floatFormatsGetTheNormalisedClip() {
        // the same export described with the float clip format: the builder then normalises (as load_clip does)
        val text = Golden.text("manifest.json")
            .replaceFirst("\"format\": \"frames_uint8\"", "\"format\": \"clip\"")
            .replaceFirst("\"shape\": [\n      1,\n      4,\n      64,\n      64,\n      3\n    ]", "\"shape\": [1, 3, 4, 64, 64]")
            .replaceFirst("\"dtype\": \"uint8\"", "\"dtype\": \"float32\"")
        val m = Manifest.parse(text)
        val builder = ClipBuilder(m)
        val input = builder.pack(frames.map { builder.preprocessor.process(it) }) as ModelInput.Float32
        val expected = Golden.floatsLE("clip_f32le.bin.gz")
        var maxAbs = 0.0
        for (i in expected.indices) maxAbs = maxOf(maxAbs, Math.abs((expected[i] - input.data[i]).toDouble()))
        assertTrue(maxAbs <= 1e-6, "max abs difference $maxAbs")
    }
}
