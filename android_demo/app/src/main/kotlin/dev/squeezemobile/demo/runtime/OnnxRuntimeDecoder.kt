package dev.squeezemobile.demo.runtime

import ai.onnxruntime.OnnxJavaType
import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtSession
import dev.squeezemobile.core.DecoderArtifact
import dev.squeezemobile.core.DecoderException
import dev.squeezemobile.core.DecoderRuntime
import dev.squeezemobile.core.DecoderTensor
import dev.squeezemobile.core.NativeTensorCache
import dev.squeezemobile.core.TensorBytes
import java.io.File

/**
 * The exported decoder's .onnx in ONNX Runtime (onnxruntime-android), CPU execution provider: one session serves
 * every method ("prefill" and "decode" differ in the dynamic token axis; a squeezed export's "prefill_exact" is the
 * file's second graph, picked by the graph input `branch`, which the core's loop feeds with the value each method's
 * manifest entry fixes; the answer's exact opening steps are 1-token "prefill_exact" calls, the same graph at
 * width 1); inputs and outputs by name. The cache is explicit I/O: the core's GenerationLoop keeps it and
 * writes new_keys/new_values. Native tensors are reused per input name and shape (NativeTensorCache).
 */
class OnnxRuntimeDecoder(file: File, private val artifact: DecoderArtifact, threads: Int) : DecoderRuntime {
    override val name = "ONNX Runtime (CPU)"
    private val env = OrtEnvironment.getEnvironment()
    private val session = env.createSession(file.absolutePath, OrtSession.SessionOptions().apply {
        setIntraOpNumThreads(threads)
        addConfigEntry("session.set_denormal_as_zero", "1")   // masked softmax rows end in denormals
    })
    private val graphInputs = session.inputNames.toList()
    private val tensors = NativeTensorCache<OnnxTensor> { it.close() }

    override fun run(method: String, inputs: Map<String, DecoderTensor>): Map<String, DecoderTensor> {
        val spec = artifact.methods[method] ?: throw DecoderException("${artifact.file} has no method $method")
        val feed = graphInputs.associateWith { name ->
            val t = inputs[name] ?: throw DecoderException("the graph needs input $name, which the loop did not feed for $method")
            tensors.get(name, t, ::onnxTensor)
        }
        session.run(feed, spec.outputs.toSet()).use { result ->
            return spec.outputs.associateWith { name ->
                val value = result.get(name).orElse(null) as? OnnxTensor
                    ?: throw DecoderException("ONNX Runtime returned no tensor $name for $method")
                val shape = value.info.shape.map { it.toInt() }.toIntArray()
                // float32 (logits, new keys/values) or int64 (follow_out: the followed keys' rows)
                when (value.info.type) {
                    OnnxJavaType.FLOAT -> value.floatBuffer.let { b -> DecoderTensor.Float32(FloatArray(b.remaining()).also { b.get(it) }, shape) }
                    OnnxJavaType.INT64 -> value.longBuffer.let { b -> DecoderTensor.Int64(LongArray(b.remaining()).also { b.get(it) }, shape) }
                    else -> throw DecoderException("ONNX Runtime returned $name for $method as ${value.info.type}, not float32 or int64")
                }
            }
        }
    }

    private fun onnxTensor(t: DecoderTensor): OnnxTensor {
        val shape = t.shape.map { it.toLong() }.toLongArray()
        val bytes = TensorBytes.pack(t, if (t is DecoderTensor.Int64) "int64" else "float32")
        return when (t) {
            is DecoderTensor.Float32 -> OnnxTensor.createTensor(env, bytes.asFloatBuffer(), shape)
            is DecoderTensor.Int64 -> OnnxTensor.createTensor(env, bytes.asLongBuffer(), shape)
        }
    }

    override fun close() {
        tensors.close()
        session.close()
    }
}
