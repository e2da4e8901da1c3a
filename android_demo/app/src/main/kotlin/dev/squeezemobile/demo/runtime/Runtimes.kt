package dev.squeezemobile.demo.runtime

import android.content.Context
import dev.squeezemobile.core.Artifact
import dev.squeezemobile.core.Manifest
import dev.squeezemobile.core.ModelRuntime
import java.io.File

/** The backends the app offers, each tied to the manifest container it loads. */
enum class Backend(val label: String, val container: String) {
    ONNX_RUNTIME("ONNX Runtime (CPU)", "onnx"),
    LITERT("LiteRT (CPU, XNNPACK)", "tflite"),
    EXECUTORCH("ExecuTorch (XNNPACK)", "pte"),
}

/** An export directory copied into assets/models/: the manifest, the labels and the model files. */
class ModelDirectory(private val context: Context, private val assetDir: String = "models") {
    val manifest: Manifest = context.assets.open("$assetDir/manifest.json").use { Manifest.parse(it.readBytes()) }
    val labels: List<String>? = manifest.labelsFile?.let { name ->
        context.assets.open("$assetDir/$name").use { manifest.labels(String(it.readBytes(), Charsets.UTF_8)) }
    }

    /** Backends whose artifact this export has. */
    fun available(): List<Backend> = Backend.values().filter { manifest.artifact(it.container) != null }

    /** The artifact copied out of the APK to a file (ExecuTorch needs a path; the others map or read bytes). */
    fun file(artifact: Artifact): File {
        val out = File(context.filesDir, artifact.file)
        if (!out.exists() || artifact.bytes != null && out.length() != artifact.bytes) {
            context.assets.open("$assetDir/${artifact.file}").use { input -> out.outputStream().use { input.copyTo(it) } }
        }
        return out
    }

    fun open(backend: Backend): ModelRuntime {
        val artifact = manifest.artifact(backend.container)
            ?: throw IllegalStateException("the export has no ${backend.container} artifact; export it with --formats")
        val tensor = artifact.inputs.single()
        return when (backend) {
            Backend.ONNX_RUNTIME -> OnnxRuntimeModel(file(artifact), tensor, backend.label)
            Backend.LITERT -> LiteRtModel(file(artifact), tensor, manifest.numClasses, backend.label)
            Backend.EXECUTORCH -> ExecuTorchModel(file(artifact), tensor, backend.label)
        }
    }
}
