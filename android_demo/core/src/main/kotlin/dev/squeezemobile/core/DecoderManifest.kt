package dev.squeezemobile.core

/**
 * manifest.json of a `squeeze export decoder` directory (decoder_session.read_decoder_manifest / pick_artifact):
 * the model's hashes (a pack must match them), the tokenizer section (file, chat framing, stop tokens) and the
 * artifacts with their runtime contract and the named inputs/outputs of each method. Missing or mistyped keys
 * the app relies on raise [DecoderException] with one line naming the key.
 */
class DecoderMethod(
    val name: String,
    val inputs: List<TensorInfo>,
    val outputs: List<String>,
    /** input name -> the runtime's own name for it where they differ (a .tflite signature's input key) */
    val tensorNames: Map<String, String> = emptyMap(),
) {
    /** The runtime's name of input [input] (the manifest's `tensor`, else the input name itself). */
    fun tensorName(input: String): String = tensorNames[input] ?: input

    /**
     * This method's outputs keyed by the runtime's output names (export/backends/tflite_backend.py): a .tflite
     * signature names its outputs output_0, output_1, ...; in the order of their number they are [outputs].
     */
    fun outputsByRuntimeName(runtimeNames: Collection<String>): Map<String, String> {
        if (runtimeNames.size != outputs.size) {
            throw DecoderException("method $name returns ${runtimeNames.size} outputs (${runtimeNames.joinToString()}) but the manifest " +
                "lists ${outputs.size} (${outputs.joinToString()}); re-export the decoder")
        }
        val ordered = runtimeNames.sortedBy { Regex("(\\d+)$").find(it)?.groupValues?.get(1)?.toInt() ?: 0 }
        return ordered.zip(outputs).toMap(LinkedHashMap())
    }
}

class DecoderArtifact(
    val format: String,
    val file: String,
    val sha256: String?,
    val bytes: Long?,
    val runtime: String?,
    val contract: DecoderContract,
    val methods: Map<String, DecoderMethod>,
    /** "pass", "fail", "not run", ... as verification.status says; null if absent */
    val verificationStatus: String?,
    /** A .pte's delegate ("xnnpack", "coreml": export --pte-backend); null for other formats and older manifests */
    val pteBackend: String? = null,
) {
    /** A .pte delegated to Core ML (export --pte-backend coreml): ExecuTorch runs it on Apple devices only. */
    val appleOnly: Boolean get() = Artifact.isAppleOnly(format, pteBackend)
}

class DecoderManifest(
    val schema: String,
    val modelName: String?,
    val weightsSha256: String?,
    val tokenizerSha256: String?,
    val numLayers: Int,
    val numKvHeads: Int,
    val headDim: Int,
    val tokenizer: DecoderTokenizerInfo,
    val artifacts: List<DecoderArtifact>,
) {
    /**
     * The first artifact of [format] ("onnx", "pte", "tflite"), [attention] ("squeezed", "full") and lookup [plan]
     * ("in-graph", "split"); null = any.
     */
    fun pick(format: String? = null, attention: String? = null, plan: String? = null): DecoderArtifact {
        val usable = artifacts.filter {
            (format == null || it.format == format) && (attention == null || it.contract.attention == attention) &&
                (plan == null || it.contract.lookupPlan == plan)
        }.sortedBy { it.appleOnly } // artifacts Android runs first (Python's pick_artifact off Apple platforms); stable
        if (usable.isEmpty()) {
            val have = artifacts.map { it.format }.distinct().sorted().joinToString(", ").ifEmpty { "none" }
            val what = listOfNotNull(format, attention, plan?.let { "$it-plan" }).joinToString(" ")
            throw DecoderException("the export holds no ${if (what.isEmpty()) "" else "$what "}decoder artifact (it has: $have); " +
                "pick one of those or export it")
        }
        return usable[0]
    }

    companion object {
        /**
         * The decoder manifest's schema this version reads (decoder_session.SCHEMA). 2: the clustered context rows are
         * two inputs per layer, clustered_keys_l / clustered_values_l (1: one clustered_kv_l of [key | value] rows).
         */
        const val SCHEMA = "squeeze-mobile/decoder-manifest/2"

        /** Any version's decoder manifest (telling an export directory's kind; [SCHEMA] is the one this reads). */
        const val SCHEMA_PREFIX = "squeeze-mobile/decoder-manifest/"

        fun parse(text: String): DecoderManifest = wrap { fromJson(JsonPath.of(Json.parse(text), "manifest")) }

        fun parse(bytes: ByteArray): DecoderManifest = wrap { fromJson(JsonPath.of(Json.parse(bytes), "manifest")) }

        private inline fun <T> wrap(block: () -> T): T = try {
            block()
        } catch (e: JsonException) {
            throw DecoderException("the decoder manifest is not usable (${e.message}); re-export the decoder")
        }

        /**
         * A file the manifest names must lie in the export directory (Manifest.isPlainFileName): a path would make the
         * app open any file its name reaches.
         */
        private fun plainFileName(j: JsonPath): String {
            val name = j.string()
            if (!Manifest.isPlainFileName(name)) {
                throw DecoderException("${j.path}: \"$name\" is not a plain file name inside the export directory; re-export the decoder")
            }
            return name
        }

        private fun fromJson(root: JsonPath): DecoderManifest {
            val model = root["model"]
            if (model.opt("kind")?.stringOrNull() != "decoder" || root.opt("artifacts")?.value !is List<*>) {
                throw DecoderException("the manifest does not describe an exported decoder; export one with `squeeze export decoder`")
            }
            val schema = root.opt("schema")?.value
            if (schema != SCHEMA) {
                val found = if (schema is String) "'$schema'" else schema ?: "None" // as Python's repr
                throw DecoderException("the manifest was written by another version of squeeze-mobile (schema $found, this " +
                    "version reads '$SCHEMA'); re-export the decoder into a fresh directory")
            }
            val config = model["config"]
            val artifacts = root["artifacts"].list()
                // records of formats that were not produced have no file (and no decoder section)
                .filter { it.value is Map<*, *> && it.opt("file")?.stringOrNull() != null && it.has("decoder") }
                .map { a ->
                    plainFileName(a["file"])
                    val d = a["decoder"]
                    val methods = d["methods"].obj().keys.associateWith { name ->
                        val m = d["methods"][name]
                        val inputs = m["inputs"].list()
                        DecoderMethod(name,
                            inputs.map { TensorInfo(it["name"].string(), it["shape"].intArray(), it["dtype"].string(), null) },
                            m["outputs"].list().map { it.string() },
                            inputs.mapNotNull { i -> i.opt("tensor")?.stringOrNull()?.let { i["name"].string() to it } }.toMap())
                    }
                    DecoderArtifact(a["format"].string(), a["file"].string(), a.opt("sha256")?.stringOrNull(),
                        a.opt("bytes")?.let { if (it.isNull) null else it.long() }, a.opt("runtime")?.stringOrNull(),
                        DecoderContract.parse(d), methods, a.opt("verification")?.opt("status")?.stringOrNull(),
                        a.opt("pte_backend")?.stringOrNull())
                }
            val tokenizer = DecoderTokenizerInfo.parse(root["tokenizer"])
            plainFileName(root["tokenizer"]["file"])
            return DecoderManifest(SCHEMA, model.opt("name")?.stringOrNull(), model.opt("weights_sha256")?.stringOrNull(),
                model.opt("tokenizer_sha256")?.stringOrNull(), config["num_layers"].int(), config["num_kv_heads"].int(),
                config["head_dim"].int(), tokenizer, artifacts)
        }
    }
}
