package dev.squeezemobile.core

import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

/** The manifest.json of a real reduced export (hmdb51, T=4, 64x64, frames_uint8, ONNX). */
class ManifestTest {
    private val text = Golden.text("manifest.json")
    private val manifest = Manifest.parse(text)

    @Test
    fun inputAndPreprocessing() {
        assertEquals("squeezetime", manifest.modelName)
        assertEquals("hmdb51", manifest.configName)
        assertEquals(51, manifest.numClasses)
        val input = manifest.input
        assertEquals("frames_uint8", input.format)
        assertArrayEquals(intArrayOf(1, 4, 64, 64, 3), input.shape)
        assertEquals("uint8", input.dtype)
        assertEquals(1, input.batch)
        assertEquals("NTHWC uint8 RGB 0..255 (normalisation inside the graph)", input.layout)
        assertEquals(4L * 64 * 64 * 3, manifest.inputBytes)
        val p = manifest.preprocessing
        assertEquals(4, p.frames)
        assertEquals(4, p.frameInterval)
        assertEquals(73, p.resizeShortSide)
        assertEquals(64, p.size)
        assertArrayEquals(floatArrayOf(123.675f, 116.28f, 103.53f), p.mean)
        assertArrayEquals(floatArrayOf(58.395f, 57.12f, 57.375f), p.std)
        assertEquals("RGB", p.channelOrder)
        assertTrue(p.normalisationInGraph)
        // the golden video files were made with the same parameters
        assertEquals(Golden.video["resize_short_side"].int(), p.resizeShortSide)
        assertEquals(Golden.video["crop_size"].int(), p.size)
    }

    @Test
    fun artifactsAndLabels() {
        assertEquals(1, manifest.artifacts.size)
        val onnx = manifest.artifact("onnx")!!
        assertEquals("squeezetime_hmdb51_4x64_frames_uint8_fp32.onnx", onnx.file)
        assertEquals("onnx", onnx.format)
        assertEquals("fp32", onnx.precision)
        assertEquals("pass", onnx.verificationStatus)
        assertEquals(64, onnx.sha256!!.length)
        assertEquals(TensorInfo("input", intArrayOf(1, 4, 64, 64, 3), "uint8", manifest.input.layout), onnx.inputs.single())
        assertEquals("logits", onnx.outputs.single().name)
        assertArrayEquals(intArrayOf(1, 51), onnx.outputs.single().shape)
        assertNull(manifest.artifact("tflite"))
        assertEquals("labels.txt", manifest.labelsFile)
        val labels = Manifest.parseLabels(Golden.text(manifest.labelsFile!!))
        assertEquals(manifest.numClasses, labels.size)
        assertEquals("brush_hair", labels[0])
        assertEquals(listOf("a", "b"), Manifest.parseLabels("a\r\nb\n"))
    }

    private fun edited(vararg replacements: Pair<String, String>): String {
        var t = text
        for ((old, new) in replacements) {
            check(t.contains(old)) { "test edit not applicable: $old" }
            t = t.replaceFirst(old, new)
        }
        return t
    }

    private fun refused(t: String): String = assertThrows(ManifestException::class.java) { Manifest.parse(t) }.message!!

    @Test
    fun badManifestsGiveOneLineErrors() {
        assertEquals("manifest.preprocessing: missing key \"frame_interval\"", refused(edited("\"frames\": 4,\n    \"frame_interval\": 4," to "\"frames\": 4,")))
        assertEquals("manifest.preprocessing.frames: expected an integer, found a string", refused(edited("\"frames\": 4,\n    \"frame_interval\"" to "\"frames\": \"4\",\n    \"frame_interval\"")))
        assertTrue(refused(edited("\"schema\": \"squeeze-mobile/manifest/1\"" to "\"schema\": \"other/1\"")).contains("not a squeeze-mobile manifest"))
        assertTrue(refused(edited("\"format\": \"frames_uint8\"" to "\"format\": \"nhwc\"")).contains("unknown format \"nhwc\""))
        assertTrue(refused(edited("\"resize_short_side\": 73" to "\"resize_short_side\": 60")).contains("smaller than the crop size"))
        assertTrue(refused(edited("\"size\": 64" to "\"size\": 32")).contains("does not match format frames_uint8"))
        assertTrue(refused(edited("\"file\": \"squeezetime_" to "\"file\": \"../squeezetime_")).contains("not a plain file name"))
        assertTrue(refused(text.substring(0, text.length / 2)).startsWith("invalid JSON at offset"))
        assertTrue(refused("[]").contains("expected an object"))
    }

    @Test
    fun recordsOfArtifactsNotProducedAreSkipped() {
        val notProduced = """{"format": "coreml", "container": "mlmodel", "file": null, "status": "not produced", "reason": "x"}"""
        val m = Manifest.parse(edited("\"artifacts\": [" to "\"artifacts\": [$notProduced, "))
        assertEquals(listOf("onnx"), m.artifacts.map { it.container })
    }
}
