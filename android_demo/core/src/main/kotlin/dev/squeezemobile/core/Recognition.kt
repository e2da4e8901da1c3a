package dev.squeezemobile.core

/** One model input, in the dtype the manifest names: raw bytes for frames_uint8, floats for clip/squeezed. */
sealed class ModelInput {
    class Uint8(val data: ByteArray) : ModelInput()
    class Float32(val data: FloatArray) : ModelInput()
}

/**
 * A model runtime the app provides (ONNX Runtime, LiteRT, ExecuTorch, ... in app/): one input tensor of the
 * manifest's shape, the logits out (N x classes, row-major). Implementations own their native resources.
 */
interface ModelRuntime : AutoCloseable {
    /** Shown on screen, e.g. "ONNX Runtime (CPU)" or "LiteRT (GPU)". */
    val name: String

    fun run(input: ModelInput): FloatArray

    override fun close() {}
}

/**
 * Camera frames -> model inputs: keeps every frame_interval-th frame (only those are converted: resize + crop),
 * the newest `frames` of them, and packs a clip in the manifest's input format once the ring is full.
 * Runs on the camera analysis thread; hands immutable clip snapshots to the inference thread.
 */
class ClipBuilder(
    val manifest: Manifest,
    phase: Int = 0,
    kernel: BilinearKernel = BilinearKernel.TORCH_GENERIC,
) {
    private val p = manifest.preprocessing
    val preprocessor = FramePreprocessor(p.resizeShortSide, p.size, kernel)
    val sampler = FrameSampler<ByteArray>(p.frames, p.frameInterval, phase)

    init {
        require(manifest.input.batch == 1) { "the camera app feeds one clip at a time; export with --batch 1" }
    }

    /** Whether the next camera frame will be kept (the app may skip converting YUV to RGB otherwise). */
    fun wantsNextFrame(): Boolean = sampler.wantsNext()

    /**
     * Offer the next camera frame ([frame] is only called for kept frames). Returns a new clip when this frame
     * was kept and the ring is full, else null.
     */
    fun offer(frame: () -> RgbFrame): Clip? {
        val kept = sampler.offer { preprocessor.process(frame()) }
        if (!kept || !sampler.isFull) return null
        return Clip(pack(sampler.clip()), sampler.clipIndices())
    }

    /** The clip in the manifest's input format (frames oldest first). */
    fun pack(frames: List<ByteArray>): ModelInput = when (manifest.input.format) {
        "frames_uint8" -> ModelInput.Uint8(Preprocessing.packFramesUint8(frames, p.size))
        else -> ModelInput.Float32(Preprocessing.normalizeClip(frames, p.size, p.mean, p.std)) // clip and squeezed: same order
    }

    class Clip(val input: ModelInput, val frameIndices: LongArray)
}

/** What the screen shows for one inference. */
data class RecognitionResult(val top: List<Prediction>, val inferenceMs: Double, val runtime: String, val frameIndices: LongArray)

/** Runs the runtime on clips, turns logits into top-k with labels, and keeps the latency window. One thread. */
class Classifier(
    val runtime: ModelRuntime,
    val labels: List<String>?,
    val topK: Int = 5,
    val latency: LatencyWindow = LatencyWindow(100),
    private val clockNanos: () -> Long = System::nanoTime,
) {
    fun classify(clip: ClipBuilder.Clip): RecognitionResult {
        val t0 = clockNanos()
        val logits = runtime.run(clip.input)
        val dt = clockNanos() - t0
        latency.addNanos(dt)
        return RecognitionResult(Classification.topK(logits, topK, labels), dt / 1e6, runtime.name, clip.frameIndices)
    }
}
