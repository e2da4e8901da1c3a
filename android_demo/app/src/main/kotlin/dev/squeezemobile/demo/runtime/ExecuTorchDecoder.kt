package dev.squeezemobile.demo.runtime

import dev.squeezemobile.core.DecoderArtifact
import dev.squeezemobile.core.DecoderException
import dev.squeezemobile.core.DecoderRuntime
import dev.squeezemobile.core.DecoderTensor
import dev.squeezemobile.core.NativeTensorCache
import org.pytorch.executorch.DType
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor
import java.io.File

/**
 * The exported decoder's .pte in ExecuTorch (org.pytorch:executorch-android, XNNPACK delegate): each method
 * ("prefill", "decode", "prefill_exact" (also the answer's exact opening steps, one token), or the split plan's stage
 * graphs, decode_exact_<s> included where exported) run with Module.execute by name, inputs in the order the
 * manifest lists them, outputs in its order. In-graph .pte exports keep the KV cache in mutable buffers inside the
 * program (state "buffer"): the core's loop then feeds no cache. Native tensors are reused per input name and shape
 * (NativeTensorCache): prefill_exact's [Hkv, Nc, D] views of the clustered tables and decode's flat ones keep one each.
 */
class ExecuTorchDecoder(file: File, private val artifact: DecoderArtifact) : DecoderRuntime {
    override val name = "ExecuTorch (XNNPACK)"
    private val module = Module.load(file.absolutePath)
    private val tensors = NativeTensorCache<Tensor>()

    init {
        // every method loaded up front (delegate init packs the weights): a lazy load would land on the first
        // prefill / decode call and be timed as the question's latency
        for (method in artifact.methods.keys) {
            val status = module.loadMethod(method)
            if (status != 0) {
                module.destroy()
                throw DecoderException("${artifact.file}: ExecuTorch could not load method $method (error $status); re-export")
            }
        }
    }

    override fun run(method: String, inputs: Map<String, DecoderTensor>): Map<String, DecoderTensor> {
        val spec = artifact.methods[method] ?: throw DecoderException("${artifact.file} has no method $method")
        val args = spec.inputs.map { info ->
            val t = inputs[info.name] ?: throw DecoderException("method $method needs input ${info.name}, which the loop did not feed")
            EValue.from(tensors.get(info.name, t, ::etTensor))
        }
        val out = module.execute(method, *args.toTypedArray())
        if (out.size != spec.outputs.size) {
            throw DecoderException("method $method returned ${out.size} outputs, the manifest lists ${spec.outputs.size}; re-export")
        }
        return spec.outputs.zip(out).associate { (name, value) ->
            val t = value.toTensor()
            val shape = t.shape().map { it.toInt() }.toIntArray()
            // float32 (logits, new keys/values, stage outputs) or int64 (follow_out: the followed keys' rows)
            name to when (t.dtype()) {
                DType.FLOAT -> DecoderTensor.Float32(t.dataAsFloatArray, shape)
                DType.INT64 -> DecoderTensor.Int64(t.dataAsLongArray, shape)
                else -> throw DecoderException("method $method output $name is ${t.dtype()}, not float32 or int64; re-export")
            }
        }
    }

    private fun etTensor(t: DecoderTensor): Tensor {
        val shape = t.shape.map { it.toLong() }.toLongArray()
        return when (t) {
            is DecoderTensor.Float32 -> Tensor.fromBlob(t.data, shape)
            is DecoderTensor.Int64 -> Tensor.fromBlob(t.data, shape)
        }
    }

    override fun close() {
        tensors.close()
        module.destroy()
    }
}
