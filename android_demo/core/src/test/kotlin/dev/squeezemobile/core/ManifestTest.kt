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
    fun labelsAreSplitAsPythonSplitsThemAndCountedAgainstTheClasses() {
        // str.splitlines, as squeeze predict and squeeze verify read the file: "\r" alone (an old Mac editor), form
        // feed, NEL, U+2028 also end a line; no empty label after a final line break, an empty line inside is one
        assertEquals(listOf("a", "b", "c"), Manifest.parseLabels("a\rb\rc\r"))
        assertEquals(listOf("a", "", "b"), Manifest.parseLabels("a\r\n\r\nb"))
        assertEquals(listOf("a", "b", "c", "d", "e", "f"), Manifest.parseLabels("a\u000Bb\u000Cc\u0085d\u2028e\u2029f\n"))
        assertEquals(listOf("a", "b"), Manifest.parseLabels("a\u001Cb\u001E"))
        assertEquals(listOf("a", ""), Manifest.parseLabels("a\n\n"))
        assertEquals(emptyList<String>(), Manifest.parseLabels(""))
        assertEquals(listOf("x y", "z\tw"), Manifest.parseLabels("x y\nz\tw"))
        // the golden label file with \r line ends: still 51 labels
        val golden = Golden.text("labels.txt")
        val labels = manifest.labels(golden.replace("\n", "\r"))
        assertEquals(manifest.numClasses, labels.size)
        assertEquals(manifest.labels(golden), labels)
        // a label file of another model would put wrong names on the predictions: refused in one line
        val e = assertThrows(ManifestException::class.java) { manifest.labels(golden + "extra\n") }
        assertEquals("labels.txt has 52 lines but the model has 51 classes (one label per line expected); re-export, or " +
            "set the manifest's labels to null", e.message)
    }

    @Test
    fun namesOfFilesOutsideTheExportDirectoryAreRefused() {
        // export/pipeline.py _safe_file_name: no separator, no NUL, nothing hidden, at most 255 characters (code points)
        for (bad in listOf("../labels.txt", "/etc/passwd", "..", ".", ".hidden", "a\\b", "", ".\u0301x")) {
            assertTrue(!Manifest.isPlainFileName(bad), bad)
            val json = bad.replace("\\", "\\\\")
            assertTrue(refused(edited("\"labels\": \"labels.txt\"" to "\"labels\": \"$json\"")).startsWith("manifest.labels: "), bad)
            assertTrue(refused(edited("\"file\": \"squeezetime_hmdb51_4x64_frames_uint8_fp32.onnx\"" to "\"file\": \"$json\""))
                .contains("is not a plain file name inside the export directory"), bad)
        }
        assertTrue(!Manifest.isPlainFileName("a".repeat(256)) && Manifest.isPlainFileName("a".repeat(255)))
        assertTrue(Manifest.isPlainFileName("\uD83D\uDE00".repeat(200)))   // 200 code points (Python's len), 400 chars
        assertTrue(Manifest.isPlainFileName("labels..txt"))
        assertNull(Manifest.parse(edited("\"labels\": \"labels.txt\"" to "\"labels\": null")).labelsFile)
    }

    @Test
    fun aPteDelegatedToCoreMlIsNotPickedOnAndroid() {
        // `squeeze export squeezetime --formats pte --pte-backend coreml` records pte_backend "coreml": ExecuTorch runs it
        // on Apple devices only (Python: cannot_run_here off Darwin), so the ExecuTorch backend must not load it
        val pte = { file: String, delegate: String ->
            "{\"format\": \"executorch\", \"container\": \"pte\", \"file\": \"$file\", \"precision\": \"fp32\", " +
                "\"pte_backend\": \"$delegate\", \"inputs\": [], \"outputs\": []}"
        }
        val coremlOnly = Manifest.parse(edited("\"artifacts\": [" to "\"artifacts\": [${pte("c.pte", "coreml")}, "))
        assertEquals(listOf("pte", "onnx"), coremlOnly.artifacts.map { it.container })
        assertTrue(coremlOnly.artifacts[0].appleOnly)
        assertEquals("coreml", coremlOnly.artifacts[0].pteBackend)
        assertNull(coremlOnly.artifact("pte"))
        val both = Manifest.parse(edited("\"artifacts\": [" to "\"artifacts\": [${pte("c.pte", "coreml")}, ${pte("x.pte", "xnnpack")}, "))
        assertEquals("x.pte", both.artifact("pte")!!.file)
        assertTrue(!both.artifact("pte")!!.appleOnly)
        assertNull(manifest.artifact("onnx")!!.pteBackend)
    }

    @Test
    fun recordsOfArtifactsNotProducedAreSkipped() {
        val notProduced = """{"format": "coreml", "container": "mlmodel", "file": null, "status": "not produced", "reason": "x"}"""
        val m = Manifest.parse(edited("\"artifacts\": [" to "\"artifacts\": [$notProduced, "))
        assertEquals(listOf("onnx"), m.artifacts.map { it.container })
    }
}
