package dev.squeezemobile.demo.runtime

import dev.squeezemobile.core.ModelInput
import dev.squeezemobile.core.ModelRuntime
import dev.squeezemobile.core.TensorInfo
import org.tensorflow.lite.Interpreter
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder

/** LiteRT (com.google.ai.edge.litert), the Interpreter API with its default XNNPACK CPU delegate. */
class LiteRtModel(file: File, private val input: TensorInfo, numClasses: Int, override val name: String) : ModelRuntime {
    private val interpreter = Interpreter(file, Interpreter.Options().setNumThreads(4))
    private val buffer = ByteBuffer.allocateDirect(input.elementCount.toInt() * if (input.dtype == "uint8") 1 else 4)
        .order(ByteOrder.nativeOrder())
    private val logits = Array(1) { FloatArray(numClasses) }

    override fun run(input: ModelInput): FloatArray {
        buffer.rewind()
        when (input) {
            is ModelInput.Uint8 -> buffer.put(input.data)
            is ModelInput.Float32 -> buffer.asFloatBuffer().put(input.data)
        }
        buffer.rewind()
        interpreter.run(buffer, logits)
        return logits[0].copyOf()
    }

    override fun close() = interpreter.close()
}
