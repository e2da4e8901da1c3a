package dev.squeezemobile.demo.runtime

import ai.onnxruntime.OnnxJavaType
import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtSession
import dev.squeezemobile.core.ModelInput
import dev.squeezemobile.core.ModelRuntime
import dev.squeezemobile.core.TensorInfo
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder

/** ONNX Runtime (onnxruntime-android), CPU execution provider. */
class OnnxRuntimeModel(file: File, private val input: TensorInfo, override val name: String) : ModelRuntime {
    private val env = OrtEnvironment.getEnvironment()
    private val session = env.createSession(file.absolutePath, OrtSession.SessionOptions().apply {
        setIntraOpNumThreads(4)
    })
    private val shape = input.shape.map { it.toLong() }.toLongArray()

    override fun run(input: ModelInput): FloatArray {
        val tensor = when (input) {
            is ModelInput.Uint8 -> OnnxTensor.createTensor(env, direct(input.data), shape, OnnxJavaType.UINT8)
            is ModelInput.Float32 -> OnnxTensor.createTensor(env, java.nio.FloatBuffer.wrap(input.data), shape)
        }
        tensor.use {
            session.run(mapOf(this.input.name to it)).use { result ->
                @Suppress("UNCHECKED_CAST")
                return (result[0].value as Array<FloatArray>)[0]
            }
        }
    }

    private fun direct(bytes: ByteArray): ByteBuffer =
        ByteBuffer.allocateDirect(bytes.size).order(ByteOrder.nativeOrder()).put(bytes).also { it.rewind() }

    override fun close() = session.close()
}
