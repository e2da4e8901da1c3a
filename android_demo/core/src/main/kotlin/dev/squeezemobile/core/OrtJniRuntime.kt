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

    /**
     * [input] is a FloatArray (float32), LongArray (int64), IntArray (int32) or ByteArray (uint8); returns
     * arrayOf(values, LongArray shape), values a FloatArray, LongArray or IntArray as the output's type.
     */
    @JvmStatic external fun run(handle: Long, inputName: String, input: Any, shape: LongArray, outputName: String): Array<Any>

    /**
     * One run with several named inputs (arrays as [run]'s, one shape each) and outputs; returns the outputs' values in
     * [outputNames]' order, then their shapes (2 x outputNames.size entries).
     */
    @JvmStatic external fun runNamed(handle: Long, inputNames: Array<String>, inputs: Array<Any>, shapes: Array<LongArray>,
                                     outputNames: Array<String>): Array<Any>

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
        val values = out[0] as? FloatArray ?: throw OrtException("the output '$outputName' is not float32")
        return OrtOutput(values, out[1] as LongArray)
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

/**
 * A tensor for [OrtJniSession]: [data] is a FloatArray (float32), LongArray (int64), IntArray (int32) or ByteArray
 * (uint8), row-major, of [shape].
 */
class OrtTensor(val data: Any, val shape: LongArray) {
    init {
        val n = when (data) {
            is FloatArray -> data.size
            is LongArray -> data.size
            is IntArray -> data.size
            is ByteArray -> data.size
            else -> throw OrtException("an ONNX Runtime tensor is a FloatArray, LongArray, IntArray or ByteArray, not ${data::class.simpleName}")
        }
        if (shape.fold(1L) { a, d -> a * d } != n.toLong()) {
            throw OrtException("the shape ${shape.contentToString()} holds ${shape.fold(1L) { a, d -> a * d }} elements, the array $n")
        }
    }
}

/**
 * One ONNX Runtime session through the JNI bridge with named inputs and outputs (several of each; float32, int64,
 * int32 and uint8 inputs, float32 / int64 / int32 outputs returned by name). JVM only, like [OrtJniRuntime].
 */
class OrtJniSession private constructor(private var handle: Long, val inputNames: List<String>, val outputNames: List<String>,
                                        val intraOpThreads: Int) : AutoCloseable {
    val runtimeName: String get() = "ONNX Runtime ${OrtNative.version().substringBefore(' ')} (CPU, JNI, $intraOpThreads threads)"

    /** Runs with [inputs] (by name) and returns [outputs] (default: every graph output) by name. */
    @Synchronized
    fun run(inputs: Map<String, OrtTensor>, outputs: List<String> = outputNames): Map<String, OrtTensor> {
        if (handle == 0L) throw OrtException("the ONNX Runtime session is closed")
        val names = inputs.keys.toTypedArray()
        val out = OrtNative.runNamed(handle, names, Array(names.size) { inputs.getValue(names[it]).data },
            Array(names.size) { inputs.getValue(names[it]).shape }, outputs.toTypedArray())
        val result = LinkedHashMap<String, OrtTensor>()
        for ((i, name) in outputs.withIndex()) result[name] = OrtTensor(out[i], out[outputs.size + i] as LongArray)
        return result
    }

    @Synchronized
    override fun close() {
        if (handle != 0L) {
            OrtNative.release(handle)
            handle = 0L
        }
    }

    companion object {
        /** A session on [model] ([OrtNative.load] must have been called). */
        fun open(model: File, intraOpThreads: Int = 1): OrtJniSession {
            if (!OrtNative.isLoaded) throw OrtException("the ONNX Runtime JNI bridge is not loaded; call OrtNative.load(path) first")
            require(intraOpThreads >= 0) { "intraOpThreads must be >= 0 (0 = ONNX Runtime's default)" }
            val handle = OrtNative.create(model.path, intraOpThreads)
            try {
                return OrtJniSession(handle, OrtNative.inputNames(handle).toList(), OrtNative.outputNames(handle).toList(), intraOpThreads)
            } catch (e: Throwable) {
                OrtNative.release(handle)
                throw e
            }
        }
    }
}

/**
 * [DecoderRuntime] over an exported decoder's .onnx through the JNI bridge (the JVM twin of app/'s OnnxRuntimeDecoder):
 * one session serves every method (prefill and decode differ in a dynamic axis; a squeezed export's prefill_exact is
 * the file's second graph, selected by the input `branch` the loop feeds as the method fixes it); each run feeds the
 * inputs the graph declares, by name, in the dtype the manifest's method declares (int64, or int32 narrowed), and
 * returns the method's outputs by name (float32 -> [DecoderTensor.Float32], int64/int32 -> [DecoderTensor.Int64]).
 */
class OrtJniDecoder(val session: OrtJniSession, val artifact: DecoderArtifact) : DecoderRuntime {
    override val name: String = session.runtimeName

    override fun run(method: String, inputs: Map<String, DecoderTensor>): Map<String, DecoderTensor> {
        val spec = artifact.methods[method] ?: throw DecoderException("the artifact has no method $method (it has: ${artifact.methods.keys.joinToString()})")
        val dtypes = spec.inputs.associate { it.name to it.dtype }
        val feed = LinkedHashMap<String, OrtTensor>()
        for (name in session.inputNames) {
            val t = inputs[name] ?: throw DecoderException("the graph needs input $name, which the loop did not feed for $method")
            val shape = LongArray(t.shape.size) { t.shape[it].toLong() }
            feed[name] = when {
                t is DecoderTensor.Float32 -> OrtTensor(t.data, shape)
                t is DecoderTensor.Int64 && dtypes[name] == "int32" -> OrtTensor(IntArray(t.data.size) {
                    val v = t.data[it]
                    if (v < Int.MIN_VALUE || v > Int.MAX_VALUE) throw DecoderException("$name holds $v, which does not fit the graph's int32 input")
                    v.toInt()
                }, shape)
                t is DecoderTensor.Int64 -> OrtTensor(t.data, shape)
                else -> throw DecoderException("input $name has an unsupported tensor type")
            }
        }
        return session.run(feed, spec.outputs).mapValues { (k, v) ->
            val shape = IntArray(v.shape.size) { v.shape[it].toInt() }
            when (val d = v.data) {
                is FloatArray -> DecoderTensor.Float32(d, shape)
                is LongArray -> DecoderTensor.Int64(d, shape)
                is IntArray -> DecoderTensor.Int64(LongArray(d.size) { d[it].toLong() }, shape)
                else -> throw DecoderException("output $k has an unsupported type")
            }
        }
    }

    override fun close() = session.close()

    companion object {
        /** The [artifact]'s file in the export directory [dir] (an ONNX artifact). */
        fun open(dir: File, artifact: DecoderArtifact, intraOpThreads: Int = 1): OrtJniDecoder {
            if (artifact.format != "onnx") throw DecoderException("OrtJniDecoder runs ONNX artifacts, not ${artifact.format}")
            val file = File(dir, artifact.file)
            if (!file.isFile) throw DecoderException("the artifact ${file.path} is missing; re-export the decoder")
            return OrtJniDecoder(OrtJniSession.open(file, intraOpThreads), artifact)
        }
    }
}
