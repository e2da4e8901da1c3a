package dev.squeezemobile.core

import java.io.File

/** An error ONNX Runtime reported through the JNI bridge (its OrtStatus message), or a misuse of the bridge. */
class OrtException(message: String) : RuntimeException(message)

/**
 * The native side of android_demo/jni/ort_bridge.c (ONNX Runtime's C API). Nothing here runs until [load] has loaded
 * the bridge library, so the core compiles and runs without it (the Android app uses the ONNX Runtime AAR instead).
 */
object OrtNative {
    @Volatile
    private var loaded: String? = null

    /** Loads the bridge (an absolute path to libort_bridge.so); loading the same path again is a no-op. */
    @Synchronized
    fun load(bridgePath: String) {
        if (loaded == bridgePath) return
        check(loaded == null) { "another ONNX Runtime bridge is already loaded: $loaded" }
        val f = File(bridgePath)
        if (!f.isFile) throw OrtException("the ONNX Runtime JNI bridge $bridgePath does not exist; build it with android_demo/run_tests.sh")
        System.load(f.absolutePath)
        loaded = bridgePath
    }

    val isLoaded: Boolean get() = loaded != null

    /** The library's version and the C API version the bridge was compiled against. */
    @JvmStatic external fun version(): String

    @JvmStatic external fun create(modelPath: String, intraOpThreads: Int): Long

    @JvmStatic external fun inputNames(handle: Long): Array<String>

    @JvmStatic external fun outputNames(handle: Long): Array<String>

    /** [input] is a FloatArray (float32) or a ByteArray (uint8); returns arrayOf(FloatArray values, LongArray shape). */
    @JvmStatic external fun run(handle: Long, inputName: String, input: Any, shape: LongArray, outputName: String): Array<Any>

    @JvmStatic external fun release(handle: Long)
}

/** A float32 output tensor: values in row-major order and the shape ONNX Runtime returned. */
class OrtOutput(val values: FloatArray, val shape: LongArray)

/**
 * [ModelRuntime] over ONNX Runtime's C library through the JNI bridge (android_demo/jni/ort_bridge.c): one session
 * on one .onnx file, one input tensor in, one float32 output out. For the JVM tests (and any JVM host); the Android
 * app binds the ONNX Runtime AAR in app/ instead.
 *
 *     OrtNative.load("/path/libort_bridge.so")
 *     OrtJniRuntime.open(File(dir, artifact.file), artifact, intraOpThreads = 2).use { rt -> rt.run(clip.input) }
 */
class OrtJniRuntime private constructor(
    private var handle: Long,
    val inputName: String,
    val inputShape: LongArray,
    val outputName: String,
    intraOpThreads: Int,
) : ModelRuntime {
    override val name = "ONNX Runtime ${OrtNative.version().substringBefore(' ')} (CPU, JNI, $intraOpThreads threads)"

    /** The output of one run with its shape (the manifest's input shape, the named output). */
    @Synchronized
    fun runTensor(input: ModelInput, shape: LongArray = inputShape): OrtOutput {
        if (handle == 0L) throw OrtException("the ONNX Runtime session is closed")
        val data: Any = when (input) {
            is ModelInput.Uint8 -> input.data
            is ModelInput.Float32 -> input.data
        }
        val out = OrtNative.run(handle, inputName, data, shape, outputName)
        return OrtOutput(out[0] as FloatArray, out[1] as LongArray)
    }

    override fun run(input: ModelInput): FloatArray = runTensor(input).values

    @Synchronized
    override fun close() {
        if (handle != 0L) {
            OrtNative.release(handle)
            handle = 0L
        }
    }

    companion object {
        /**
         * A session on [model]; [inputName]/[outputName] default to the graph's first input/output, [inputShape] is
         * the shape every [run] feeds. [OrtNative.load] must have been called.
         */
        fun open(model: File, inputShape: LongArray, inputName: String? = null, outputName: String? = null,
                 intraOpThreads: Int = 1): OrtJniRuntime {
            if (!OrtNative.isLoaded) throw OrtException("the ONNX Runtime JNI bridge is not loaded; call OrtNative.load(path) first")
            require(intraOpThreads >= 0) { "intraOpThreads must be >= 0 (0 = ONNX Runtime's default)" }
            val handle = OrtNative.create(model.path, intraOpThreads)
            try {
                val inputs = OrtNative.inputNames(handle)
                val outputs = OrtNative.outputNames(handle)
                val inName = inputName ?: inputs.firstOrNull() ?: throw OrtException("${model.name} has no inputs")
                val outName = outputName ?: outputs.firstOrNull() ?: throw OrtException("${model.name} has no outputs")
                if (inName !in inputs) throw OrtException("${model.name} has no input '$inName' (inputs: ${inputs.joinToString()})")
                if (outName !in outputs) throw OrtException("${model.name} has no output '$outName' (outputs: ${outputs.joinToString()})")
                return OrtJniRuntime(handle, inName, inputShape.copyOf(), outName, intraOpThreads)
            } catch (e: Throwable) {
                OrtNative.release(handle)
                throw e
            }
        }

        /** A session on a manifest's artifact (its file in [dir], its first input's name and shape, first output). */
        fun open(dir: File, artifact: Artifact, intraOpThreads: Int = 1): OrtJniRuntime {
            val input = artifact.inputs.first()
            return open(File(dir, artifact.file), input.shape.map { it.toLong() }.toLongArray(), input.name,
                        artifact.outputs.first().name, intraOpThreads)
        }
    }
}
