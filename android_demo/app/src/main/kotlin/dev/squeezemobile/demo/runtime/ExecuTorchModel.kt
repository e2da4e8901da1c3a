package dev.squeezemobile.demo.runtime

import dev.squeezemobile.core.ModelInput
import dev.squeezemobile.core.ModelRuntime
import dev.squeezemobile.core.TensorInfo
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor
import java.io.File

/** ExecuTorch (org.pytorch:executorch-android), the .pte exported with the XNNPACK delegate; method "forward". */
class ExecuTorchModel(file: File, input: TensorInfo, override val name: String) : ModelRuntime {
    private val module = Module.load(file.absolutePath)
    private val shape = input.shape.map { it.toLong() }.toLongArray()

    override fun run(input: ModelInput): FloatArray {
        val tensor = when (input) {
            is ModelInput.Uint8 -> Tensor.fromBlobUnsigned(input.data, shape)
            is ModelInput.Float32 -> Tensor.fromBlob(input.data, shape)
        }
        return module.forward(EValue.from(tensor))[0].toTensor().dataAsFloatArray
    }

    override fun close() = module.destroy()
}
