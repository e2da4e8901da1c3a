package dev.squeezemobile.core

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

/**
 * Real video (bikes.mp4, 640x272) through the Kotlin preprocessing, compared with the Python pipeline's output:
 * uint8 data byte for byte, the normalised float clip within 1e-6 (measured: 0, same float32 operations).
 */
class PreprocessingTest {
    private val v = Golden.video
    private val frames = Golden.sourceFrames
    private val short = v["resize_short_side"].int()
    private val crop = v["crop_size"].int()

    @Test
    fun resizedSizeAndCropOriginMatchPython() {
        val size = Preprocessing.resizedSize(v["width"].int(), v["height"].int(), short)
        assertEquals(Size(v["resized_width"].int(), v["resized_height"].int()), size)
        assertEquals(Pair(v["crop_left"].int(), v["crop_top"].int()), Preprocessing.centerCropOrigin(size.width, size.height, crop))
        val full = Preprocessing.resizedSize(640, 272, v["full_resize_short_side"].int())
        assertEquals(Size(v["full_resized_width"].int(), v["full_resized_height"].int()), full)
        assertEquals(Size(224, 224), Preprocessing.resizedSize(224, 224, 224))
        assertEquals(Size(256, 455), Preprocessing.resizedSize(720, 1280, 256)) // portrait: int(1280 * 256 / 720 + 0.5)
    }

    @Test
    fun shortSideResizeIsBitExact() {
        val expected = Golden.bytes("resized.rgb.gz")
        val out = java.io.ByteArrayOutputStream()
        for (f in frames) {
            val r = Preprocessing.resizeShortSide(f, short)
            assertEquals(v["resized_width"].int(), r.width)
            out.write(r.data)
        }
        assertNull(diffBytes(expected, out.toByteArray()))
    }

    /** The float32 values before rounding, bit for bit: pins the arithmetic (uint8 only shows .5 crossings). */
    @Test
    fun resizeFloatsAreBitExactForBothKernels() {
        val size = Size(v["resized_width"].int(), v["resized_height"].int())
        val generic = Preprocessing.resizeFloat(frames[0], size, BilinearKernel.TORCH_GENERIC)
        assertEquals(0, countBitDifferences(Golden.floatsLE("resized0_f32le.bin.gz"), generic))
        val rows = v["rows_1thread_f32"].int()
        val expected = Golden.floatsLE("resized0_1thread_rows_f32le.bin.gz")
        val single = Preprocessing.resizeFloat(frames[0], size, BilinearKernel.TORCH_CHANNELS_LAST).copyOf(rows * size.width * 3)
        assertEquals(0, countBitDifferences(expected, single))
        assertTrue(countBitDifferences(expected, generic.copyOf(expected.size)) > 0) // the kernels really differ
    }

    private fun countBitDifferences(expected: FloatArray, actual: FloatArray): Int {
        assertEquals(expected.size, actual.size)
        return expected.indices.count { expected[it].toRawBits() != actual[it].toRawBits() }
    }

    /** PyTorch with one thread takes its channels-last kernel: a few bytes differ by 1, and that kernel is matched too. */
    @Test
    fun singleThreadTorchKernelIsBitExact() {
        val expected = Golden.bytes("resized_1thread.rgb.gz")
        val out = java.io.ByteArrayOutputStream()
        for (f in frames) out.write(Preprocessing.resizeShortSide(f, short, BilinearKernel.TORCH_CHANNELS_LAST).data)
        assertNull(diffBytes(expected, out.toByteArray()))
        val generic = Golden.bytes("resized.rgb.gz")
        val differing = generic.indices.count { generic[it] != expected[it] }
        assertTrue(differing in 1..20, "the two PyTorch kernels differ in $differing bytes") // why both exist
    }

    @Test
    fun framesUint8InputIsBitExact() {
        val expected = Golden.bytes("frames_uint8.bin")
        val pre = FramePreprocessor(short, crop)
        val packed = Preprocessing.packFramesUint8(frames.map { pre.process(it) }, crop)
        assertEquals(4 * 64 * 64 * 3, packed.size)
        assertNull(diffBytes(expected, packed))
        // resize-then-crop gives the same bytes as the crop-only computation
        val viaFull = frames.map { Preprocessing.centerCrop(Preprocessing.resizeShortSide(it, short), crop) }
        assertNull(diffBytes(expected, Preprocessing.packFramesUint8(viaFull, crop)))
    }

    @Test
    fun fullSizePipelineShortSide256Crop224IsBitExact() {
        val expected = Golden.bytes("full_crop224.rgb.gz")
        val actual = Preprocessing.resizeShortSideCenterCrop(frames[0], v["full_resize_short_side"].int(), v["full_crop_size"].int())
        assertNull(diffBytes(expected, actual))
    }

    /** Camera buffers have padded rows and 4-byte pixels; the result must not depend on the memory layout. */
    @Test
    fun rowStrideAndRgbaGiveTheSameBytes() {
        val f = frames[1]
        val expected = Preprocessing.resizeShortSideCenterCrop(f, short, crop)
        val rowStride = f.width * 4 + 64
        val rgba = ByteArray(17 + rowStride * f.height) { 0x55 }
        for (y in 0 until f.height) for (x in 0 until f.width) for (c in 0 until 3) {
            rgba[17 + y * rowStride + x * 4 + c] = f.data[f.offset + y * f.rowStride + x * 3 + c]
        }
        val padded = RgbFrame(rgba, f.width, f.height, rowStride, pixelStride = 4, offset = 17)
        assertNull(diffBytes(expected, Preprocessing.resizeShortSideCenterCrop(padded, short, crop)))
    }

    @Test
    fun normalisedClipMatchesPythonFloats() {
        val expected = Golden.floatsLE("clip_f32le.bin.gz")
        val pre = FramePreprocessor(short, crop)
        val mean = v["mean"].doubleArray().map { it.toFloat() }.toFloatArray()
        val std = v["std"].doubleArray().map { it.toFloat() }.toFloatArray()
        val clip = Preprocessing.normalizeClip(frames.map { pre.process(it) }, crop, mean, std)
        assertEquals(expected.size, clip.size)
        var maxAbs = 0.0
        for (i in clip.indices) maxAbs = maxOf(maxAbs, Math.abs((clip[i] - expected[i]).toDouble()))
        assertTrue(maxAbs <= 1e-6, "max abs difference $maxAbs")
    }

    @Test
    fun identityAndOneAxisResize() {
        // short side already at the target: returned unchanged (as resize_short_side does)
        val f = RgbFrame.packed(ByteArray(6 * 4 * 3) { (it * 7).toByte() }, 6, 4)
        assertNull(diffBytes(f.data, Preprocessing.resizeShortSide(f, 4).data))
        // constant image stays constant under any resize; values at 0 and 255 stay in range
        for (value in listOf(0, 1, 128, 254, 255)) {
            val c = RgbFrame.packed(ByteArray(37 * 23 * 3) { value.toByte() }, 37, 23)
            val r = Preprocessing.resizeShortSide(c, 11)
            assertTrue(r.data.all { (it.toInt() and 0xFF) == value }, "value $value")
        }
    }

    @Test
    fun rotationClockwise() {
        // 3 x 2 image, pixel value = its index; rotating 90 degrees clockwise puts the bottom-left pixel top-left
        val f = RgbFrame.packed(ByteArray(3 * 2 * 3) { (it / 3).toByte() }, 3, 2)
        fun pixels(r: RgbFrame) = (0 until r.width * r.height).map { r.data[it * 3].toInt() }
        val r90 = Preprocessing.rotate(f, 90)
        assertEquals(Size(2, 3), Size(r90.width, r90.height))
        assertEquals(listOf(3, 0, 4, 1, 5, 2), pixels(r90))
        assertEquals(listOf(5, 4, 3, 2, 1, 0), pixels(Preprocessing.rotate(f, 180)))
        assertEquals(listOf(2, 5, 1, 4, 0, 3), pixels(Preprocessing.rotate(f, 270)))
        assertEquals(listOf(2, 5, 1, 4, 0, 3), pixels(Preprocessing.rotate(f, -90)))
        // four quarter turns of a real frame give it back; rotating a portrait camera frame upright
        var r = frames[2]
        repeat(4) { r = Preprocessing.rotate(r, 90) }
        assertNull(diffBytes(Golden.bytes("frames_src.rgb.gz").copyOfRange(2 * 640 * 272 * 3, 3 * 640 * 272 * 3), r.data))
        assertThrows(IllegalArgumentException::class.java) { Preprocessing.rotate(f, 45) }
    }

    @Test
    fun badInputsAreRefused() {
        assertThrows(IllegalArgumentException::class.java) { RgbFrame(ByteArray(10), 4, 4) }
        assertThrows(IllegalArgumentException::class.java) { RgbFrame(ByteArray(100), 4, 4, rowStride = 8) }
        val small = RgbFrame.packed(ByteArray(10 * 10 * 3), 10, 10)
        assertThrows(IllegalArgumentException::class.java) { Preprocessing.centerCrop(small, 11) }
        assertThrows(IllegalArgumentException::class.java) { FramePreprocessor(60, 64) }
        assertThrows(IllegalArgumentException::class.java) { Preprocessing.packFramesUint8(listOf(ByteArray(5)), 2) }
    }

    @Test
    fun preprocessorFromTheManifest() {
        val m = Manifest.parse(Golden.text("manifest.json"))
        val pre = FramePreprocessor.from(m.preprocessing)
        assertEquals(m.input.shape.drop(2).fold(1) { a, d -> a * d }, pre.frameBytes) // H x W x 3 per frame
    }
}
