package dev.squeezemobile.core

/**
 * manifest.json of a `squeeze export` directory (export/pipeline.py), the part the app needs: the model
 * input (format, shape, dtype, layout), the preprocessing, the label file and the artifacts with their
 * tensor names. Unknown keys are ignored; missing or mistyped keys the app relies on raise
 * [ManifestException] with one line naming the key.
 */
class ManifestException(message: String) : IllegalArgumentException(message)

data class TensorInfo(val name: String, val shape: IntArray, val dtype: String, val layout: String?) {
    val elementCount: Long get() = shape.fold(1L) { a, d -> a * d }

    override fun equals(other: Any?) = other is TensorInfo && name == other.name && shape.contentEquals(other.shape) &&
        dtype == other.dtype && layout == other.layout

    override fun hashCode() = name.hashCode() * 31 + shape.contentHashCode()
}

data class ManifestInput(val format: String, val shape: IntArray, val batch: Int, val dtype: String, val layout: String?) {
    override fun equals(other: Any?) = other is ManifestInput && format == other.format && shape.contentEquals(other.shape) &&
        batch == other.batch && dtype == other.dtype && layout == other.layout

    override fun hashCode() = format.hashCode() * 31 + shape.contentHashCode()
}

data class ManifestPreprocessing(
    val frames: Int,
    val frameInterval: Int,
    val resizeShortSide: Int,
    val size: Int,
    val mean: FloatArray,
    val std: FloatArray,
    val channelOrder: String,
    /** true when the graph normalises (frames_uint8): the app feeds raw 0..255 bytes */
    val normalisationInGraph: Boolean,
)

data class Artifact(
    val format: String,
    val container: String,
    val file: String,
    val sha256: String?,
    val bytes: Long?,
    val precision: String?,
    val runtime: String?,
    val inputs: List<TensorInfo>,
    val outputs: List<TensorInfo>,
    /** "pass", "fail", "not run (needs macOS)", ... as verification.status says; null if absent */
    val verificationStatus: String?,
    /** A .pte's delegate ("xnnpack", "coreml": export --pte-backend); null for other formats and older manifests */
    val pteBackend: String? = null,
) {
    /** A .pte delegated to Core ML (export --pte-backend coreml): ExecuTorch runs it on Apple devices only. */
    val appleOnly: Boolean get() = isAppleOnly(container, pteBackend)

    companion object {
        /** Whether an artifact of [container] with .pte delegate [pteBackend] runs on Apple devices only. */
        fun isAppleOnly(container: String, pteBackend: String?): Boolean = container == "pte" && pteBackend == "coreml"
    }
}

class Manifest(
    val schema: String,
    val modelName: String,
    val configName: String?,
    val numClasses: Int,
    val input: ManifestInput,
    val preprocessing: ManifestPreprocessing,
    /** label file name, relative to the manifest's directory; null when the export has none */
    val labelsFile: String?,
    /** the artifacts that exist as files (records of artifacts not produced are left out) */
    val artifacts: List<Artifact>,
) {
    /**
     * The artifact of a container ("onnx", "tflite", "pte", "mlpackage", "mlmodel") that runs on Android, or null: a .pte
     * delegated to Core ML ([Artifact.appleOnly]) is passed over (Python: cannot_run_here off Apple platforms).
     */
    fun artifact(container: String): Artifact? = artifacts.firstOrNull { it.container == container && !it.appleOnly }

    /**
     * The labels of [labelsFile]'s [text] ([parseLabels]), refused in one line unless there is one per class: a
     * label file of another model would put wrong names on the predictions.
     */
    fun labels(text: String): List<String> {
        val labels = parseLabels(text)
        if (labels.size != numClasses) {
            throw ManifestException("${labelsFile ?: "the label file"} has ${labels.size} lines but the model has $numClasses classes (one label " +
                "per line expected); re-export, or set the manifest's labels to null")
        }
        return labels
    }

    /** Bytes of one model input (N x T x H x W x 3 for frames_uint8; 4 bytes per element for float32). */
    val inputBytes: Long get() = input.shape.fold(1L) { a, d -> a * d } * (if (input.dtype == "uint8") 1 else 4)

    companion object {
        const val SCHEMA_PREFIX = "squeeze-mobile/manifest/"
        val INPUT_FORMATS = setOf("clip", "squeezed", "frames_uint8")

        fun parse(text: String): Manifest = wrap { fromJson(JsonPath.of(Json.parse(text), "manifest")) }

        fun parse(bytes: ByteArray): Manifest = wrap { fromJson(JsonPath.of(Json.parse(bytes), "manifest")) }

        /**
         * Label file text -> one label per line (the export writes one class name per line, index order), split as
         * Python's str.splitlines splits it (every reader of the export does: `squeeze predict`, `squeeze verify`'s
         * count): at \n, \r\n, \r, \u000B, \u000C, \u001C..\u001E, \u0085, \u2028 and \u2029; no empty label
         * after a final line break.
         */
        fun parseLabels(text: String): List<String> {
            val lines = ArrayList<String>()
            var start = 0
            var i = 0
            while (i < text.length) {
                val c = text[i]
                if (c in LINE_BREAKS) {
                    lines.add(text.substring(start, i))
                    i += if (c == '\r' && i + 1 < text.length && text[i + 1] == '\n') 2 else 1
                    start = i
                } else {
                    i++
                }
            }
            if (start < text.length) lines.add(text.substring(start))
            return lines
        }

        /** The characters Python's str.splitlines breaks lines at. */
        private const val LINE_BREAKS = "\n\r\u000B\u000C\u001C\u001D\u001E\u0085\u2028\u2029"

        /**
         * A file name inside the export directory, as `squeeze verify` requires of artifacts and labels
         * (export/pipeline.py _safe_file_name): 1..255 characters (code points), no path separator, no NUL, not hidden
         * ("." first).
         */
        fun isPlainFileName(name: String): Boolean =
            name.isNotEmpty() && name.codePointCount(0, name.length) <= 255 && '/' !in name && '\\' !in name && '\u0000' !in name && !name.startsWith(".")

        private inline fun <T> wrap(block: () -> T): T = try {
            block()
        } catch (e: JsonException) {
            throw ManifestException(e.message ?: "invalid manifest")
        }

        private fun fromJson(root: JsonPath): Manifest {
            val schema = root["schema"].string()
            if (!schema.startsWith(SCHEMA_PREFIX)) {
                throw ManifestException("manifest.schema: \"$schema\" is not a squeeze-mobile manifest; use the manifest.json `squeeze export` wrote")
            }
            val model = root["model"]
            val config = model.opt("config")
            val inp = root["input"]
            val input = ManifestInput(
                format = inp["format"].string(),
                shape = inp["shape"].intArray(),
                batch = inp["batch"].int(),
                dtype = inp["dtype"].string(),
                layout = inp.opt("layout")?.stringOrNull(),
            )
            if (input.format !in INPUT_FORMATS) {
                throw ManifestException("manifest.input.format: unknown format \"${input.format}\"; this app knows ${INPUT_FORMATS.joinToString()}")
            }
            val pre = root["preprocessing"]
            val preprocessing = ManifestPreprocessing(
                frames = pre["frames"].int(),
                frameInterval = pre["frame_interval"].int(),
                resizeShortSide = pre["resize_short_side"].int(),
                size = pre["size"].int(),
                mean = pre["mean"].doubleArray().map { it.toFloat() }.toFloatArray(),
                std = pre["std"].doubleArray().map { it.toFloat() }.toFloatArray(),
                channelOrder = pre["channel_order"].string(),
                normalisationInGraph = pre["normalisation"].string() == "inside the graph",
            )
            checkConsistent(input, preprocessing)
            val numClasses = config?.opt("num_classes")?.int()
                ?: throw ManifestException("manifest.model.config: missing key \"num_classes\"")
            // records with "file": null say an artifact was not produced (e.g. the legacy Core ML model): nothing to load
            val artifacts = root["artifacts"].list().filter { a -> a.opt("file")?.isNull == false }.map { artifact(it) }
            val labelsFile = root.opt("labels")?.stringOrNull()
            if (labelsFile != null && !isPlainFileName(labelsFile)) {
                throw ManifestException("manifest.labels: \"$labelsFile\" is not a plain file name inside the export directory; " +
                    "re-export, or set it to null")
            }
            return Manifest(
                schema = schema,
                modelName = model["name"].string(),
                configName = config.opt("name")?.stringOrNull(),
                numClasses = numClasses,
                input = input,
                preprocessing = preprocessing,
                labelsFile = labelsFile,
                artifacts = artifacts,
            )
        }

        private fun checkConsistent(input: ManifestInput, p: ManifestPreprocessing) {
            fun bad(what: String): Nothing = throw ManifestException("manifest: $what")
            if (p.frames < 1 || p.frameInterval < 1 || p.size < 1) bad("preprocessing.frames, frame_interval and size must be positive")
            if (p.resizeShortSide < p.size) bad("preprocessing.resize_short_side ${p.resizeShortSide} is smaller than the crop size ${p.size}")
            if (p.mean.size != 3 || p.std.size != 3 || p.std.any { it <= 0f }) bad("preprocessing.mean and std need 3 values, std > 0")
            if (p.channelOrder != "RGB") bad("preprocessing.channel_order \"${p.channelOrder}\" is not supported (RGB only)")
            val n = input.batch
            val t = p.frames
            val s = p.size
            val expected = when (input.format) {
                "frames_uint8" -> intArrayOf(n, t, s, s, 3)
                "clip" -> intArrayOf(n, 3, t, s, s)
                else -> intArrayOf(n, 3 * t, s, s)
            }
            if (!expected.contentEquals(input.shape)) {
                bad("input.shape ${input.shape.contentToString()} does not match format ${input.format} with frames $t and size $s " +
                    "(expected ${expected.contentToString()})")
            }
            val dtype = if (input.format == "frames_uint8") "uint8" else "float32"
            if (input.dtype != dtype) bad("input.dtype \"${input.dtype}\" for format ${input.format}; expected $dtype")
        }

        private fun tensor(t: JsonPath) = TensorInfo(t["name"].string(), t["shape"].intArray(), t["dtype"].string(),
            t.opt("layout")?.stringOrNull())

        private fun artifact(a: JsonPath): Artifact {
            val file = a["file"].string()
            if (!isPlainFileName(file)) {
                throw ManifestException("${a.path}.file: \"$file\" is not a plain file name inside the export directory; re-export")
            }
            return Artifact(
                format = a["format"].string(),
                container = a["container"].string(),
                file = file,
                sha256 = a.opt("sha256")?.stringOrNull(),
                bytes = a.opt("bytes")?.let { if (it.isNull) null else it.long() },
                precision = a.opt("precision")?.stringOrNull(),
                runtime = a.opt("runtime")?.stringOrNull(),
                inputs = a["inputs"].list().map { tensor(it) },
                outputs = a["outputs"].list().map { tensor(it) },
                verificationStatus = a.opt("verification")?.let { v -> if (v.isNull) null else v.opt("status")?.stringOrNull() },
                pteBackend = a.opt("pte_backend")?.stringOrNull(),
            )
        }
    }
}
