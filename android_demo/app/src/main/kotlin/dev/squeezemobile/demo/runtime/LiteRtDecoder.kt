package dev.squeezemobile.demo.runtime

import dev.squeezemobile.core.DecoderArtifact
import dev.squeezemobile.core.DecoderException
import dev.squeezemobile.core.DecoderRuntime
import dev.squeezemobile.core.DecoderTensor
import dev.squeezemobile.core.NativeTensorCache
import dev.squeezemobile.core.TensorBytes
import org.tensorflow.lite.DataType
import org.tensorflow.lite.Interpreter
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder

/**
 * The split plan's multi-signature .tflite in LiteRT (com.google.ai.edge.litert, Interpreter API, XNNPACK on the
 * CPU): one signature per stage graph (prefill_0 .. prefill_L, decode_0 .. decode_L, the exact tail's
 * prefill_exact_0 .. prefill_exact_L, and where exported the answer's exact opening steps decode_exact_0 ..
 * decode_exact_L, one token wide; without them those steps run prefill_exact_<s> with the token padded), run by name.
 * Input buffers are kept per name, dtype and shape (NativeTensorCache), so a stage's widths do not evict each other.
 * The CPU lookup
 * between stages and the cache are the core's GenerationLoop; this class only moves tensors. Inputs go by the
 * signature's own names (the manifest's `tensor`), int64 inputs in the dtype the file declares (the converter
 * narrows them to int32); outputs output_0, output_1, ... are the manifest's outputs in order.
 */
class LiteRtDecoder(file: File, private val artifact: DecoderArtifact, threads: Int) : DecoderRuntime {
    override val name = "LiteRT (CPU, XNNPACK)"
    private val interpreter = Interpreter(file, Interpreter.Options().setNumThreads(threads))
    private val buffers = NativeTensorCache<ByteBuffer>()
    private val signatures = HashMap<String, Signature>()

    /** One signature's input keys (with the loop's names and dtypes) and output keys (with the manifest's names). */
    private class Signature(val inputs: List<Triple<String, String, String>>, val outputs: Map<String, String>)

    private fun signature(method: String): Signature = signatures.getOrPut(method) {
        if (method !in interpreter.signatureKeys) throw DecoderException("${artifact.file} has no signature $method")
        val spec = artifact.methods[method] ?: throw DecoderException("the manifest lists no method $method")
        val byKey = spec.inputs.associateBy { spec.tensorName(it.name) }
        val inputs = interpreter.getSignatureInputs(method).map { key ->
            val dtype = when (val d = interpreter.getInputTensorFromSignature(key, method).dataType()) {
                DataType.FLOAT32 -> "float32"
                DataType.INT32 -> "int32"
                DataType.INT64 -> "int64"
                else -> throw DecoderException("signature $method input $key is $d; the app feeds float32, int32 or int64")
            }
            Triple(key, byKey[key]?.name ?: key, dtype)
        }
        Signature(inputs, spec.outputsByRuntimeName(interpreter.getSignatureOutputs(method).toList()))
    }

    override fun run(method: String, inputs: Map<String, DecoderTensor>): Map<String, DecoderTensor> {
        val sig = signature(method)
        val feed = HashMap<String, Any>()
        for ((key, name, dtype) in sig.inputs) {
            val t = inputs[name] ?: throw DecoderException("signature $method needs input $name, which the loop did not feed")
            feed[key] = buffers.get("$name/$dtype", t) { TensorBytes.pack(it, dtype, name) }.also { it.rewind() }
        }
        val out = sig.outputs.keys.associateWith { key ->
            val tensor = interpreter.getOutputTensorFromSignature(key, method)
            if (tensor.dataType() != DataType.FLOAT32) throw DecoderException("signature $method output $key is ${tensor.dataType()}, not float32")
            ByteBuffer.allocateDirect(tensor.numBytes()).order(ByteOrder.nativeOrder())
        }
        interpreter.runSignature(feed, out, method)
        return out.entries.associate { (key, buffer) ->
            sig.outputs.getValue(key) to TensorBytes.floats(buffer, interpreter.getOutputTensorFromSignature(key, method).shape())
        }
    }

    override fun close() {
        buffers.close()
        interpreter.close()
    }
}
