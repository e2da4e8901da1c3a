package dev.squeezemobile.demo

import androidx.camera.core.ImageAnalysis
import androidx.camera.core.ImageProxy
import dev.squeezemobile.core.Classifier
import dev.squeezemobile.core.ClipBuilder
import dev.squeezemobile.core.Preprocessing
import dev.squeezemobile.core.RecognitionResult
import dev.squeezemobile.core.RgbFrame
import java.util.concurrent.ExecutorService
import java.util.concurrent.atomic.AtomicBoolean

/**
 * CameraX analysis (RGBA_8888 output, keep-only-latest, one analysis thread): every camera frame is counted,
 * only every frame_interval-th is copied, rotated upright and resized + cropped (core's ClipBuilder); a full
 * clip goes to the single inference thread unless it is still busy with the previous clip (then this clip is
 * dropped: the screen shows the newest result, never a queue). Keeping this callback short matters: frames that
 * CameraX drops while it runs would change the spacing between sampled frames.
 */
class FrameAnalyzer(
    private val clips: ClipBuilder,
    private val classifier: Classifier,
    private val inference: ExecutorService,
    private val onResult: (RecognitionResult, cameraFps: Double) -> Unit,
) : ImageAnalysis.Analyzer {
    private val busy = AtomicBoolean(false)
    private var lastFrameNanos = 0L
    private var fps = 0.0

    override fun analyze(image: ImageProxy) {
        image.use {
            val now = System.nanoTime()
            if (lastFrameNanos != 0L) fps = 0.9 * fps + 0.1 * (1e9 / (now - lastFrameNanos))
            lastFrameNanos = now
            val clip = clips.offer { Preprocessing.rotate(rgba(image), image.imageInfo.rotationDegrees) } ?: return
            if (!busy.compareAndSet(false, true)) return
            inference.execute {
                try {
                    onResult(classifier.classify(clip), fps)
                } finally {
                    busy.set(false)
                }
            }
        }
    }

    /** The RGBA_8888 plane as an RgbFrame (row stride from the plane; pixel stride 4). */
    private fun rgba(image: ImageProxy): RgbFrame {
        val plane = image.planes[0]
        val buffer = plane.buffer
        val bytes = ByteArray(buffer.remaining())
        buffer.get(bytes)
        return RgbFrame(bytes, image.width, image.height, plane.rowStride, plane.pixelStride)
    }
}
