package dev.squeezemobile.core

/**
 * An RGB image in a byte array: [width] x [height] pixels, [rowStride] bytes from one row to the next,
 * [pixelStride] bytes from one pixel to the next (3 for packed RGB, 4 for RGBA/RGBX: the first three bytes of
 * each pixel are R, G, B). Bytes are unsigned 0..255. The app converts the camera's YUV to this; the core
 * never sees YUV.
 */
class RgbFrame(
    val data: ByteArray,
    val width: Int,
    val height: Int,
    val rowStride: Int = width * 3,
    val pixelStride: Int = 3,
    val offset: Int = 0,
) {
    init {
        require(width > 0 && height > 0) { "frame of ${width}x$height pixels" }
        require(pixelStride >= 3) { "pixelStride must be >= 3 (RGB), got $pixelStride" }
        require(rowStride >= width * pixelStride) { "rowStride $rowStride is shorter than a row (${width * pixelStride} bytes)" }
        val needed = offset.toLong() + (height - 1).toLong() * rowStride + width.toLong() * pixelStride
        require(offset >= 0 && needed <= data.size) { "frame needs $needed bytes, the array has ${data.size}" }
    }

    /** Channel [c] (0 = R) of pixel ([x], [y]) as 0..255. */
    fun get(x: Int, y: Int, c: Int): Int = data[offset + y * rowStride + x * pixelStride + c].toInt() and 0xFF

    companion object {
        /** A packed H x W x 3 RGB frame (numpy's rgb24 layout). */
        fun packed(data: ByteArray, width: Int, height: Int, offset: Int = 0) = RgbFrame(data, width, height, width * 3, 3, offset)
    }
}

/** Output size of a short-side resize: squeezetime.video.resize_short_side (Python: int(h * scale + 0.5)). */
data class Size(val width: Int, val height: Int)

/**
 * Which of PyTorch's CPU bilinear kernels to reproduce. PyTorch picks by thread count
 * (aten/src/ATen/native/cpu/UpSampleKernel.cpp, upsample_bilinear2d_kernel_impl_float): with more than one
 * thread (its default on any multi-core machine, and what the Python pipeline runs with) the generic separable
 * kernel; with exactly one thread and 3 channels the channels-last kernel. Their float32 sums differ in the
 * last bit, which moves a few uint8 values by 1 after rounding (3 of 150,672 bytes on the golden clip).
 */
enum class BilinearKernel {
    /** per row: t = fma(x0, wx0, x1 * wx1); then fma(t0, wy0, t1 * wy1) */
    TORCH_GENERIC,

    /** per pixel: weights wy * wx in float32, fma(x11, w11, fma(x10, w10, fma(x00, w00, x01 * w01))) */
    TORCH_CHANNELS_LAST,
}

/**
 * Preprocessing of the Python pipeline (squeezetime/video.py), bit for bit on the uint8 path:
 * short-side bilinear resize (resize_short_side), centre crop (crop_offsets 'center'), the frames_uint8
 * packing (N x T x H x W x 3), and the float normalisation (normalize) for exports that take a float clip.
 *
 * The resize reproduces PyTorch's CPU F.interpolate(mode="bilinear", align_corners=False) on float32, then
 * round-half-to-even and clamp to 0..255: per axis, scale = in / out in float32, source = fma(scale, o + 0.5,
 * -0.5) clamped at 0, index = floor(source), lambda1 = source - index, lambda0 = 1 - lambda1; the per-pixel sum
 * as [BilinearKernel] describes (x86 builds of PyTorch contract these into fused multiply-adds). The fused
 * multiply-adds are computed in double and rounded to float (the product of two floats is exact in double;
 * the sum is rounded twice, which can differ from a hardware fma by one float ulp in rare ties), which runs
 * on any JVM or Android version (Math.fma(Float) needs a newer Android). Verified on real video: 0 differing
 * float bits and 0 differing bytes for both kernels. PyTorch builds without FMA (or other CPUs) may differ.
 */
object Preprocessing {
    /** The resized size for [shortSide], as resize_short_side computes it. */
    fun resizedSize(width: Int, height: Int, shortSide: Int): Size {
        require(shortSide > 0) { "short side must be positive, got $shortSide" }
        val scale = shortSide.toDouble() / minOf(width, height).toDouble()
        return Size((width * scale + 0.5).toInt(), (height * scale + 0.5).toInt())
    }

    /** Top-left corner (x, y) of the centre crop, as crop_offsets(h, w, size, "center"). */
    fun centerCropOrigin(width: Int, height: Int, size: Int): Pair<Int, Int> {
        if (width < size || height < size) {
            throw IllegalArgumentException("frames of ${width}x$height are smaller than the ${size}px crop; resize first")
        }
        return Pair((width - size) / 2, (height - size) / 2)
    }

    /** Source indices and weights along one axis (PyTorch's compute_source_index_and_lambda, float32). */
    internal class Axis(val i0: IntArray, val i1: IntArray, val l0: FloatArray, val l1: FloatArray)

    internal fun axis(inSize: Int, outSize: Int): Axis {
        val i0 = IntArray(outSize)
        val i1 = IntArray(outSize)
        val l0 = FloatArray(outSize)
        val l1 = FloatArray(outSize)
        if (inSize == outSize) { // scale factor 1: a copy
            for (o in 0 until outSize) { i0[o] = o; i1[o] = o; l0[o] = 1f; l1[o] = 0f }
            return Axis(i0, i1, l0, l1)
        }
        val scale: Float = inSize.toFloat() / outSize.toFloat()
        for (o in 0 until outSize) {
            var src = fma(scale, o.toFloat() + 0.5f, -0.5f)
            if (src < 0f) src = 0f
            val idx = minOf(Math.floor(src.toDouble()).toInt(), inSize - 1)
            val lambda1 = minOf(maxOf(src - idx.toFloat(), 0f), 1f)
            i0[o] = idx
            i1[o] = idx + if (idx < inSize - 1) 1 else 0
            l1[o] = lambda1
            l0[o] = 1f - lambda1
        }
        return Axis(i0, i1, l0, l1)
    }

    /** Fused multiply-add of floats, rounded once: exact product in double, one rounding of the sum to float. */
    @Suppress("NOTHING_TO_INLINE")
    internal inline fun fma(a: Float, b: Float, c: Float): Float = (a.toDouble() * b.toDouble() + c.toDouble()).toFloat()

    /**
     * Resize [frame] so its short side is [shortSide] and write the [cropSize] x [cropSize] centre crop of the
     * result as packed RGB into [out] at [outOffset]. Only the cropped pixels are computed (each output pixel
     * depends only on its own position), so the result equals resize-then-crop byte for byte.
     */
    fun resizeShortSideCenterCrop(frame: RgbFrame, shortSide: Int, cropSize: Int, out: ByteArray, outOffset: Int = 0,
                                  kernel: BilinearKernel = BilinearKernel.TORCH_GENERIC) {
        val size = resizedSize(frame.width, frame.height, shortSide)
        val (x0, y0) = centerCropOrigin(size.width, size.height, cropSize)
        resizeRegion(frame, size, x0, y0, cropSize, cropSize, out, outOffset, kernel)
    }

    fun resizeShortSideCenterCrop(frame: RgbFrame, shortSide: Int, cropSize: Int,
                                  kernel: BilinearKernel = BilinearKernel.TORCH_GENERIC): ByteArray =
        ByteArray(cropSize * cropSize * 3).also { resizeShortSideCenterCrop(frame, shortSide, cropSize, it, 0, kernel) }

    /** The whole short-side resize (resize_short_side) as a packed RGB frame. */
    fun resizeShortSide(frame: RgbFrame, shortSide: Int, kernel: BilinearKernel = BilinearKernel.TORCH_GENERIC): RgbFrame {
        val size = resizedSize(frame.width, frame.height, shortSide)
        val out = ByteArray(size.width * size.height * 3)
        resizeRegion(frame, size, 0, 0, size.width, size.height, out, 0, kernel)
        return RgbFrame.packed(out, size.width, size.height)
    }

    /**
     * [frame] rotated clockwise by [degrees] (0, 90, 180, 270; CameraX's rotationDegrees) as packed RGB, so that
     * the model sees the scene upright, as it saw the upright training videos. Rotate before resizing: the resize
     * treats its two axes differently (width first), so rotating afterwards would not give the same bytes.
     */
    fun rotate(frame: RgbFrame, degrees: Int): RgbFrame {
        val d = Math.floorMod(degrees, 360)
        require(d % 90 == 0) { "rotation must be a multiple of 90 degrees, got $degrees" }
        val w = frame.width
        val h = frame.height
        val (ow, oh) = if (d == 90 || d == 270) Pair(h, w) else Pair(w, h)
        val out = ByteArray(ow * oh * 3)
        for (y in 0 until h) {
            for (x in 0 until w) {
                val (dx, dy) = when (d) {
                    0 -> Pair(x, y)
                    90 -> Pair(h - 1 - y, x)
                    180 -> Pair(w - 1 - x, h - 1 - y)
                    else -> Pair(y, w - 1 - x)
                }
                val s = frame.offset + y * frame.rowStride + x * frame.pixelStride
                val o = (dy * ow + dx) * 3
                out[o] = frame.data[s]; out[o + 1] = frame.data[s + 1]; out[o + 2] = frame.data[s + 2]
            }
        }
        return RgbFrame.packed(out, ow, oh)
    }

    /** Centre crop of a frame (no resize) as packed RGB. */
    fun centerCrop(frame: RgbFrame, cropSize: Int): ByteArray {
        val (x0, y0) = centerCropOrigin(frame.width, frame.height, cropSize)
        val out = ByteArray(cropSize * cropSize * 3)
        var o = 0
        for (y in y0 until y0 + cropSize) for (x in x0 until x0 + cropSize) for (c in 0 until 3) out[o++] = frame.data[frame.offset + y * frame.rowStride + x * frame.pixelStride + c]
        return out
    }

    /** Output pixels [x0, x0 + w) x [y0, y0 + h) of the resize of [frame] to [size], packed RGB into [out]. */
    internal fun resizeRegion(frame: RgbFrame, size: Size, x0: Int, y0: Int, w: Int, h: Int, out: ByteArray, outOffset: Int,
                              kernel: BilinearKernel) {
        require(outOffset >= 0 && outOffset + w * h * 3 <= out.size) { "output array too small" }
        if (size.width == frame.width && size.height == frame.height) { // resize_short_side returns such frames unchanged
            val src = frame.data
            var o = outOffset
            for (y in y0 until y0 + h) {
                for (x in x0 until x0 + w) {
                    val p = frame.offset + y * frame.rowStride + x * frame.pixelStride
                    out[o++] = src[p]; out[o++] = src[p + 1]; out[o++] = src[p + 2]
                }
            }
            return
        }
        var o = outOffset
        forEachResized(frame, size, x0, y0, w, h, kernel) { v -> out[o++] = roundToUint8(v) }
    }

    /**
     * The float32 values of the resize before rounding (what F.interpolate returns): H x W x 3. For tests that
     * pin the arithmetic exactly (the uint8 result only shows differences that cross a .5 boundary).
     */
    fun resizeFloat(frame: RgbFrame, size: Size, kernel: BilinearKernel = BilinearKernel.TORCH_GENERIC): FloatArray {
        val out = FloatArray(size.width * size.height * 3)
        var o = 0
        forEachResized(frame, size, 0, 0, size.width, size.height, kernel) { v -> out[o++] = v }
        return out
    }

    /** Calls [emit] with the float value of each channel of each output pixel of the region, row-major, RGB. */
    private inline fun forEachResized(frame: RgbFrame, size: Size, x0: Int, y0: Int, w: Int, h: Int, kernel: BilinearKernel,
                                      emit: (Float) -> Unit) {
        require(x0 >= 0 && y0 >= 0 && x0 + w <= size.width && y0 + h <= size.height) { "region outside the resized frame" }
        val src = frame.data
        val base = frame.offset
        val rs = frame.rowStride
        val ps = frame.pixelStride
        val ax = axis(frame.width, size.width)
        val ay = axis(frame.height, size.height)
        val generic = kernel == BilinearKernel.TORCH_GENERIC
        for (oy in y0 until y0 + h) {
            val row0 = base + ay.i0[oy] * rs
            val row1 = base + ay.i1[oy] * rs
            val wy0 = ay.l0[oy]
            val wy1 = ay.l1[oy]
            for (ox in x0 until x0 + w) {
                val c0 = ax.i0[ox] * ps
                val c1 = ax.i1[ox] * ps
                val wx0 = ax.l0[ox]
                val wx1 = ax.l1[ox]
                // channels-last kernel: the four 2-D weights, each rounded to float32
                val w00 = wy0 * wx0
                val w01 = wy0 * wx1
                val w10 = wy1 * wx0
                val w11 = wy1 * wx1
                for (c in 0 until 3) {
                    val x00 = (src[row0 + c0 + c].toInt() and 0xFF).toFloat()
                    val x01 = (src[row0 + c1 + c].toInt() and 0xFF).toFloat()
                    val x10 = (src[row1 + c0 + c].toInt() and 0xFF).toFloat()
                    val x11 = (src[row1 + c1 + c].toInt() and 0xFF).toFloat()
                    if (generic) {
                        val t0 = fma(x00, wx0, x01 * wx1)
                        val t1 = fma(x10, wx0, x11 * wx1)
                        emit(fma(t0, wy0, t1 * wy1))
                    } else {
                        emit(fma(x11, w11, fma(x10, w10, fma(x00, w00, x01 * w01))))
                    }
                }
            }
        }
    }

    /** torch round_() (half to even) then clamp to 0..255. */
    @Suppress("NOTHING_TO_INLINE")
    internal inline fun roundToUint8(v: Float): Byte {
        val r = Math.rint(v.toDouble())
        return (if (r < 0.0) 0 else if (r > 255.0) 255 else r.toInt()).toByte()
    }

    /**
     * Pack T frames of size x size x 3 (each packed RGB, oldest first) into the frames_uint8 input:
     * N x T x H x W x 3 with N = 1, i.e. the frames one after the other.
     */
    fun packFramesUint8(frames: List<ByteArray>, size: Int, out: ByteArray = ByteArray(frames.size * size * size * 3)): ByteArray {
        val frameBytes = size * size * 3
        require(out.size >= frames.size * frameBytes) { "output array too small" }
        frames.forEachIndexed { t, f ->
            require(f.size == frameBytes) { "frame $t has ${f.size} bytes, expected $frameBytes (${size}x${size}x3)" }
            System.arraycopy(f, 0, out, t * frameBytes, frameBytes)
        }
        return out
    }

    /**
     * squeezetime.video.normalize for one clip: T frames of size x size x 3 uint8 -> 3 x T x size x size float32
     * (NCTHW without N), (x - mean[c]) / std[c] in float32. The "squeezed" format (3T x H x W, channel
     * c * T + t) has the same memory order, so the same array serves both.
     */
    fun normalizeClip(frames: List<ByteArray>, size: Int, mean: FloatArray, std: FloatArray,
                      out: FloatArray = FloatArray(3 * frames.size * size * size)): FloatArray {
        require(mean.size == 3 && std.size == 3) { "mean and std need 3 values (RGB)" }
        val t = frames.size
        val plane = size * size
        require(out.size >= 3 * t * plane) { "output array too small" }
        for ((ti, f) in frames.withIndex()) {
            require(f.size == plane * 3) { "frame $ti has ${f.size} bytes, expected ${plane * 3}" }
            for (c in 0 until 3) {
                val m = mean[c]
                val s = std[c]
                val dst = (c * t + ti) * plane
                for (p in 0 until plane) out[dst + p] = ((f[p * 3 + c].toInt() and 0xFF).toFloat() - m) / s
            }
        }
        return out
    }
}

/**
 * One camera frame -> the model's per-frame input, with the manifest's parameters: short-side resize, centre
 * crop, packed RGB crop bytes (what the frames_uint8 input takes per frame).
 */
class FramePreprocessor(val shortSide: Int, val cropSize: Int, val kernel: BilinearKernel = BilinearKernel.TORCH_GENERIC) {
    init {
        require(shortSide >= cropSize && cropSize > 0) { "short side $shortSide must be >= crop size $cropSize > 0" }
    }

    val frameBytes: Int get() = cropSize * cropSize * 3

    fun process(frame: RgbFrame): ByteArray = Preprocessing.resizeShortSideCenterCrop(frame, shortSide, cropSize, kernel)

    /** Write the crop into [out] at [outOffset] (e.g. straight into the slot of a reused frames_uint8 buffer). */
    fun process(frame: RgbFrame, out: ByteArray, outOffset: Int) =
        Preprocessing.resizeShortSideCenterCrop(frame, shortSide, cropSize, out, outOffset, kernel)

    companion object {
        fun from(p: ManifestPreprocessing) = FramePreprocessor(p.resizeShortSide, p.size)
    }
}
