package dev.squeezemobile.demo.runtime

import dev.squeezemobile.core.DecoderArtifact
import dev.squeezemobile.core.DecoderException
import dev.squeezemobile.core.DecoderRuntime
import dev.squeezemobile.core.DecoderRuntimeFactory
import java.io.File

/** The decoder runtimes the app links, one per artifact format (manifest artifacts[].format). */
object DecoderBackends : DecoderRuntimeFactory {
    val formats = listOf("onnx", "tflite", "pte")

    /** Big cores on most phones; more threads than that slow the decode step down. */
    private val threads = Runtime.getRuntime().availableProcessors().coerceIn(1, 4)

    override fun open(artifact: DecoderArtifact, file: File): DecoderRuntime = when (artifact.format) {
        "onnx" -> OnnxRuntimeDecoder(file, artifact, threads)
        "tflite" -> LiteRtDecoder(file, artifact, threads)
        "pte" -> ExecuTorchDecoder(file, artifact)
        else -> throw DecoderException("the app has no runtime for ${artifact.format} artifacts (it runs ${formats.joinToString()})")
    }
}
