package dev.squeezemobile.core

import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.security.MessageDigest

/**
 * Context packs read without any runtime (squeezed_attention/pack_arrays.py): the safetensors file, its format
 * and content hash, the consistency of its tensors, the model/tokenizer it was built for, and its tensors laid
 * out as the exported decoder's context inputs ([decoderContextInputs], = decoder_context_inputs).
 * Every problem with a file is a one-line [PackException] saying what to do.
 */
class PackException(message: String) : IllegalArgumentException(message)

/**
 * One tensor of a safetensors file: its dtype as safetensors names it ("F16", "I32", ...) and its raw LE bytes, which
 * are [byteCount] bytes of [buffer] from [offset] (the file's bytes: a pack's tensors are views of the file read once,
 * not copies of it). Conversions come whole ([floats], [longs]) or for a range of elements ([halvesInto],
 * [floats] and [longs] with a range): the pack layout converts one layer's rows at a time.
 */
class StoredTensor(val name: String, val dtype: String, val shape: IntArray, val buffer: ByteArray, val offset: Int, val byteCount: Int) {
    init {
        require(offset >= 0 && byteCount >= 0 && offset.toLong() + byteCount <= buffer.size) { "tensor $name lies outside its buffer" }
    }

    /** A tensor owning [data] whole. */
    constructor(name: String, dtype: String, shape: IntArray, data: ByteArray) : this(name, dtype, shape, data, 0, data.size)

    val elementCount: Int get() = shape.fold(1) { a, d -> a * d }

    /** A copy of the tensor's bytes. */
    val data: ByteArray get() = buffer.copyOfRange(offset, offset + byteCount)

    /** numpy's name for the dtype (what the content hash spells as torch.<name>). */
    val numpyDtype: String get() = NUMPY_NAMES[dtype] ?: throw PackException("tensor $name has unsupported dtype $dtype")

    private fun buffer(from: Int, count: Int, width: Int): ByteBuffer {
        require(from >= 0 && count >= 0 && from.toLong() + count <= elementCount) {
            "elements $from..${from.toLong() + count} outside tensor $name of $elementCount"
        }
        return ByteBuffer.wrap(buffer, offset + from * width, count * width).order(ByteOrder.LITTLE_ENDIAN)
    }

    private fun width() = ELEMENT_BYTES[dtype] ?: throw PackException("tensor $name has unsupported dtype $dtype")

    /** Every element as a float (exact for F16 and F32; F64 rounds). */
    fun floats(): FloatArray = floats(0, elementCount)

    /** [count] elements from element [from] as floats (exact for F16 and F32; F64 rounds). */
    fun floats(from: Int, count: Int): FloatArray {
        val b = buffer(from, count, width())
        return when (dtype) {
            "F16" -> FloatArray(count) { Half.toFloat(b.getShort()) }
            "F32" -> FloatArray(count) { b.getFloat() }
            "F64" -> FloatArray(count) { b.getDouble().toFloat() }
            else -> throw PackException("tensor $name is $dtype, expected a float tensor")
        }
    }

    /** F16 element [index] as a float (exact). */
    fun half(index: Int): Float {
        if (dtype != "F16") throw PackException("tensor $name is $dtype, expected F16")
        require(index in 0 until elementCount) { "element $index outside tensor $name of $elementCount" }
        val at = offset + 2 * index
        return Half.toFloat(((buffer[at].toInt() and 0xFF) or (buffer[at + 1].toInt() shl 8)).toShort())
    }

    /**
     * [count] F16 elements from element [from] converted to float (exact) into [dst] from [at]: no array of the
     * tensor's size is made, whatever its size.
     */
    fun halvesInto(from: Int, count: Int, dst: FloatArray, at: Int) {
        if (dtype != "F16") throw PackException("tensor $name is $dtype, expected F16")
        require(from >= 0 && count >= 0 && from.toLong() + count <= elementCount && at >= 0 && at.toLong() + count <= dst.size) {
            "elements $from..${from.toLong() + count} of tensor $name ($elementCount) into ${dst.size} floats at $at"
        }
        var src = offset + 2 * from
        for (i in at until at + count) {
            dst[i] = Half.toFloat(((buffer[src].toInt() and 0xFF) or (buffer[src + 1].toInt() shl 8)).toShort())
            src += 2
        }
    }

    fun doubles(): DoubleArray {
        if (dtype == "F64") {
            val b = buffer(0, elementCount, 8)
            return DoubleArray(elementCount) { b.getDouble() }
        }
        return floats().let { f -> DoubleArray(f.size) { f[it].toDouble() } }
    }

    /** Every element as a Long (integer dtypes). */
    fun longs(): LongArray = longs(0, elementCount)

    /** [count] elements from element [from] as Longs (integer dtypes). */
    fun longs(from: Int, count: Int): LongArray {
        val b = buffer(from, count, width())
        return when (dtype) {
            "I8" -> LongArray(count) { b.get().toLong() }
            "U8" -> LongArray(count) { (b.get().toInt() and 0xFF).toLong() }
            "I16" -> LongArray(count) { b.getShort().toLong() }
            "U16" -> LongArray(count) { (b.getShort().toInt() and 0xFFFF).toLong() }
            "I32" -> LongArray(count) { b.getInt().toLong() }
            "U32" -> LongArray(count) { b.getInt().toLong() and 0xFFFFFFFFL }
            "I64" -> LongArray(count) { b.getLong() }
            else -> throw PackException("tensor $name is $dtype, expected an integer tensor")
        }
    }

    /** I8 element [index] (the centroid codes, read without widening the whole table). */
    fun int8(index: Int): Int {
        if (dtype != "I8") throw PackException("tensor $name is $dtype, expected I8")
        require(index in 0 until elementCount) { "element $index outside tensor $name of $elementCount" }
        return buffer[offset + index].toInt()
    }

    companion object {
        private val NUMPY_NAMES = mapOf(
            "F16" to "float16", "F32" to "float32", "F64" to "float64", "I8" to "int8", "U8" to "uint8",
            "I16" to "int16", "U16" to "uint16", "I32" to "int32", "U32" to "uint32", "I64" to "int64",
            "U64" to "uint64", "BOOL" to "bool",
        )
        val ELEMENT_BYTES = mapOf(
            "F16" to 2, "F32" to 4, "F64" to 8, "I8" to 1, "U8" to 1, "I16" to 2, "U16" to 2, "I32" to 4,
            "U32" to 4, "I64" to 8, "U64" to 8, "BOOL" to 1, "BF16" to 2,
        )
    }
}

/** The safetensors container: an 8-byte LE header length, a JSON header, then the tensors' bytes. */
object SafeTensors {
    class File(val metadata: Map<String, String>, val tensors: Map<String, StoredTensor>)

    fun read(bytes: ByteArray, source: String): File {
        fun bad(why: String): Nothing = throw PackException("$source is not a readable context pack ($why); " +
            "rebuild it with `squeeze context build`")
        if (bytes.size < 8) bad("too short")
        val headerLen = ByteBuffer.wrap(bytes, 0, 8).order(ByteOrder.LITTLE_ENDIAN).getLong()
        if (headerLen < 2 || headerLen > bytes.size - 8L) bad("bad header length")
        val header = try {
            JsonPath.of(Json.parse(bytes.copyOfRange(8, 8 + headerLen.toInt())), "header")
        } catch (e: JsonException) {
            bad("header is not JSON")
        }
        val dataStart = 8 + headerLen.toInt()
        val metadata = LinkedHashMap<String, String>()
        val tensors = LinkedHashMap<String, StoredTensor>()
        val spans = ArrayList<Pair<Long, Long>>()
        try {
            for ((name, value) in header.obj()) {
                val entry = JsonPath(value, name)
                if (name == "__metadata__") {
                    for ((k, v) in entry.obj()) metadata[k] = JsonPath(v, k).string()
                    continue
                }
                val dtype = entry["dtype"].string()
                val shape = entry["shape"].intArray()
                val offsets = entry["data_offsets"].list().map { it.long() }
                val size = StoredTensor.ELEMENT_BYTES[dtype] ?: bad("tensor $name has unknown dtype $dtype")
                val count = shape.fold(1L) { a, d -> if (d < 0) bad("negative shape") else a * d }
                if (offsets.size != 2 || offsets[0] < 0 || offsets[1] - offsets[0] != count * size ||
                    dataStart + offsets[1] > bytes.size) bad("tensor $name lies outside the file")
                // a view of the file's bytes: reading a pack copies none of them
                tensors[name] = StoredTensor(name, dtype, shape, bytes, dataStart + offsets[0].toInt(),
                    (offsets[1] - offsets[0]).toInt())
                spans.add(offsets[0] to offsets[1])
            }
        } catch (e: JsonException) {
            bad("malformed header")
        }
        // the tensors' bytes follow one another and end the file, as the safetensors library requires (Python's pack
        // reader refuses anything else: bytes appended to a pack, or tensors sharing or skipping bytes)
        var end = 0L
        for ((start, stop) in spans.sortedBy { it.first }) {
            if (start != end) bad("its tensors' bytes overlap or leave a gap at byte ${dataStart + end}")
            end = stop
        }
        if (dataStart + end != bytes.size.toLong()) bad("${bytes.size - dataStart - end} bytes after its last tensor")
        return File(metadata, tensors)
    }
}

/** IEEE half precision <-> float, bit-exact (round to nearest even), as numpy's astype. */
object Half {
    fun toFloat(h: Short): Float {
        val bits = h.toInt() and 0xFFFF
        val sign = (bits and 0x8000) shl 16
        val exp = (bits ushr 10) and 0x1F
        val mant = bits and 0x3FF
        return when (exp) {
            0 -> {
                val v = mant * (1.0f / 16777216.0f) // 2^-24: subnormals (and zero) are exact in float
                if (sign != 0) -v else v
            }
            31 -> Float.fromBits(sign or 0x7F800000 or (mant shl 13))
            else -> Float.fromBits(sign or ((exp + 112) shl 23) or (mant shl 13))
        }
    }

    fun fromFloat(f: Float): Short {
        val bits = f.toRawBits()
        val sign = (bits ushr 16) and 0x8000
        val exp = (bits ushr 23) and 0xFF
        val mant = bits and 0x7FFFFF
        if (exp == 0xFF) return (sign or 0x7C00 or (if (mant != 0) 0x200 or (mant ushr 13) else 0)).toShort()
        val e = exp - 127 + 15
        if (e >= 31) return (sign or 0x7C00).toShort() // overflow -> infinity
        if (e <= 0) {
            if (e < -10) return sign.toShort() // below half the smallest subnormal: +-0
            val m = mant or 0x800000
            val shift = 14 - e
            var half = m ushr shift
            val rest = m and ((1 shl shift) - 1)
            val halfway = 1 shl (shift - 1)
            if (rest > halfway || (rest == halfway && (half and 1) == 1)) half++
            return (sign or half).toShort()
        }
        var half = (e shl 10) or (mant ushr 13)
        val rest = mant and 0x1FFF
        if (rest > 0x1000 || (rest == 0x1000 && (half and 1) == 1)) half++ // may carry into the exponent: correct
        return (sign or half).toShort()
    }
}

/** A context pack read and verified (read_pack_arrays): its metadata and tensors. */
class ContextPack private constructor(val source: String, val metadata: Map<String, String>, val tensors: Map<String, StoredTensor>) {
    val settings: JsonPath = JsonPath.of(Json.parse(metadata.getValue("build_settings")), "build_settings")
    val modelConfig: JsonPath = JsonPath.of(Json.parse(metadata.getValue("model_config")), "model_config")

    operator fun get(name: String): StoredTensor = tensors[name] ?: throw PackException("$source has no tensor $name")

    val numTokens: Int get() = get("context.token_ids").shape[0]
    val tokenIds: LongArray get() = get("context.token_ids").longs()
    val layers: Int get() = get("kv.keys").shape[0]
    val kvHeads: Int get() = get("kv.keys").shape[1]
    val headDim: Int get() = get("kv.keys").shape[3]
    val sinkTokens: Int get() = settings["sink_tokens"].int()
    val observationWindow: Int get() = settings["observation_window"].int()
    val numClustered: Int get() = get("lookup.labels").shape[2]
    val numClusters: Int get() = get("lookup.counts").shape[2]
    val centroidFraction: Double get() = settings["centroid_fraction"].double()
    /** "chat" (the context is the start of one user turn) or "raw" */
    val framing: String get() = settings.opt("framing")?.string() ?: "chat"
    val weightsSha256: String? get() = metadata["weights_sha256"]
    val tokenizerSha256: String? get() = metadata["tokenizer_sha256"]

    /** Refuse a pack built for other weights or another tokenizer than the artifact's (check_model). */
    fun checkModel(weightsSha256: String?, tokenizerSha256: String?) {
        if (!weightsSha256.isNullOrEmpty() && metadata["weights_sha256"] != weightsSha256) {
            throw PackException("$source was built for other model weights than this decoder was exported from " +
                "(weights sha256 differs); rebuild the pack with the artifact's model")
        }
        if (!tokenizerSha256.isNullOrEmpty() && metadata["tokenizer_sha256"] != tokenizerSha256) {
            throw PackException("$source was built with a different tokenizer than this decoder's; " +
                "rebuild the pack with the artifact's model")
        }
    }

    /** int8 codes x fp16 scales -> float32 [L, H, K, D] (dequantized_centroids: exact). */
    fun centroids(prefix: String = "lookup."): FloatArray = dequantized(prefix, 0, get("${prefix}centroid_codes").elementCount)

    /** [centroids] of one layer, [H, K, D]: what the pack layout needs per layer, without the whole table. */
    fun layerCentroids(layer: Int, prefix: String = "lookup."): FloatArray {
        val codes = get("${prefix}centroid_codes")
        val perLayer = codes.elementCount / codes.shape[0]
        return dequantized(prefix, layer * perLayer, perLayer)
    }

    /** Elements [from, from + count) of the dequantized table (whole vectors: [from] and [count] multiples of D). */
    private fun dequantized(prefix: String, from: Int, count: Int): FloatArray {
        val codes = get("${prefix}centroid_codes")
        val d = headDim
        val scales = get("${prefix}centroid_scales").floats(from / d, count / d)
        // int8 codes read one by one (no Long per element of the table); another integer dtype through longs
        if (codes.dtype == "I8") return FloatArray(count) { codes.int8(from + it).toFloat() * scales[it / d] }
        val wide = codes.longs(from, count)
        return FloatArray(count) { wide[it].toFloat() * scales[it / d] }
    }

    companion object {
        const val FORMAT = "squeeze-context-pack/2"

        fun read(file: java.io.File): ContextPack {
            if (!file.isFile) throw PackException("context pack not found: $file; build one with `squeeze context build`")
            return read(file.readBytes(), file.path)
        }

        /** The pack in [bytes]: its tensors are views of that array (no copy), which must not change afterwards. */
        fun read(bytes: ByteArray, source: String): ContextPack {
            val st = SafeTensors.read(bytes, source)
            if (st.metadata["format"] != FORMAT) {
                throw PackException("$source is not a $FORMAT file; rebuild it with `squeeze context build`")
            }
            val intact = try {
                contentSha256(st.tensors, st.metadata) == st.metadata["content_sha256"]
            } catch (e: PackException) {
                false
            }
            if (!intact) throw PackException("$source was modified after it was built (content hash mismatch); rebuild it")
            val problem = try {
                inconsistency(st.tensors, st.metadata)
            } catch (e: JsonException) {
                "its settings are not readable"
            }
            if (problem != null) {
                throw PackException("$source is an inconsistent context pack ($problem); rebuild it with `squeeze context build`")
            }
            return ContextPack(source, st.metadata, st.tensors)
        }

        /**
         * The content hash (content_sha256): sha256 over json.dumps(metadata minus the hash, sort_keys=True), then per
         * tensor in name order "name|torch.<numpy dtype>|<Python shape tuple>|" and its bytes.
         */
        fun contentSha256(tensors: Map<String, StoredTensor>, metadata: Map<String, String>): String {
            val md = MessageDigest.getInstance("SHA-256")
            val sb = StringBuilder("{")
            metadata.keys.filter { it != "content_sha256" }.sorted().forEachIndexed { i, k ->
                if (i > 0) sb.append(", ")
                pythonJsonString(k, sb)
                sb.append(": ")
                pythonJsonString(metadata.getValue(k), sb)
            }
            sb.append("}")
            md.update(sb.toString().toByteArray(Charsets.UTF_8))
            for (name in tensors.keys.sorted()) {
                val t = tensors.getValue(name)
                val shape = when (t.shape.size) {
                    0 -> "()"
                    1 -> "(${t.shape[0]},)"
                    else -> t.shape.joinToString(", ", "(", ")")
                }
                md.update("$name|torch.${t.numpyDtype}|$shape|".toByteArray(Charsets.UTF_8))
                md.update(t.buffer, t.offset, t.byteCount)
            }
            return md.digest().joinToString("") { "%02x".format(it) }
        }

        /** A string as Python's json.dumps writes it (ensure_ascii: everything outside ' '..'~' escaped). */
        fun pythonJsonString(s: String, sb: StringBuilder) {
            sb.append('"')
            for (c in s) {
                when (c) {
                    '"' -> sb.append("\\\"")
                    '\\' -> sb.append("\\\\")
                    '\n' -> sb.append("\\n")
                    '\r' -> sb.append("\\r")
                    '\t' -> sb.append("\\t")
                    '\b' -> sb.append("\\b")
                    '\u000C' -> sb.append("\\f")
                    else -> if (c in ' '..'~') sb.append(c) else sb.append("\\u%04x".format(c.code))
                }
            }
            sb.append('"')
        }

        private fun inconsistency(a: Map<String, StoredTensor>, metadata: Map<String, String>): String? {
            val needed = listOf("context.token_ids", "kv.keys", "kv.values", "lookup.centroid_codes",
                "lookup.centroid_scales", "lookup.counts", "lookup.labels")
            val missing = needed.filter { it !in a }
            if (missing.isNotEmpty()) return "missing ${missing.joinToString(", ")}"
            val settingsText = metadata["build_settings"] ?: return "its settings are not readable"
            val settings = JsonPath.of(Json.parse(settingsText), "build_settings")
            val sinks = settings["sink_tokens"].int()
            val window = settings["observation_window"].int()
            settings["centroid_fraction"].double()
            Json.parse(metadata["model_config"] ?: return "its settings are not readable")
            val keys = a.getValue("kv.keys")
            val values = a.getValue("kv.values")
            val labels = a.getValue("lookup.labels")
            val counts = a.getValue("lookup.counts")
            val codes = a.getValue("lookup.centroid_codes")
            val scales = a.getValue("lookup.centroid_scales")
            val tokens = a.getValue("context.token_ids")
            val n = if (tokens.shape.size == 1) tokens.shape[0] else -1
            if (keys.shape.size != 4 || !keys.shape.contentEquals(values.shape) || keys.shape[2] != n ||
                keys.dtype != "F16" || values.dtype != "F16") return "its key/value tensors do not match its tokens"
            val (L, H, _, D) = keys.shape.toList()
            val nc = n - sinks - window
            if (nc < 1 || !labels.shape.contentEquals(intArrayOf(L, H, nc)) || codes.shape.size != 4 ||
                codes.shape[0] != L || codes.shape[1] != H || codes.shape[3] != D) {
                return "its lookup tensors do not match its key/value tensors"
            }
            val k = codes.shape[2]
            if (!counts.shape.contentEquals(intArrayOf(L, H, k)) || !scales.shape.contentEquals(intArrayOf(L, H, k)) ||
                codes.dtype != "I8") return "its centroid tensors disagree"
            val lab = labels.longs()
            if (lab.any { it < 0 || it >= k }) return "cluster labels out of range"
            val perCluster = LongArray(L * H * k)
            for (g in 0 until L * H) for (j in 0 until nc) perCluster[g * k + lab[g * nc + j].toInt()]++
            if (!perCluster.contentEquals(counts.longs())) return "cluster counts do not match the labels"
            return null
        }
    }
}

/** A named input or output of the exported decoder: float32 or int64, row-major, with its shape. */
sealed class DecoderTensor {
    abstract val shape: IntArray
    val elementCount: Int get() = shape.fold(1) { a, d -> a * d }

    class Float32(val data: FloatArray, override val shape: IntArray) : DecoderTensor() {
        init { require(data.size == elementCount) { "${data.size} floats for shape ${shape.contentToString()}" } }
    }

    class Int64(val data: LongArray, override val shape: IntArray) : DecoderTensor() {
        init { require(data.size == elementCount) { "${data.size} longs for shape ${shape.contentToString()}" } }
    }

    /** Little-endian bytes (what a runtime binding copies into its tensor). */
    fun toLittleEndian(): ByteArray = when (this) {
        is Float32 -> ByteBuffer.allocate(data.size * 4).order(ByteOrder.LITTLE_ENDIAN).also { b -> data.forEach { b.putFloat(it) } }.array()
        is Int64 -> ByteBuffer.allocate(data.size * 8).order(ByteOrder.LITTLE_ENDIAN).also { b -> data.forEach { b.putLong(it) } }.array()
    }
}

/** The exported decoder's static shapes (the manifest's decoder.shapes). */
data class DecoderShapes(
    val maxContext: Int,
    val maxPrompt: Int,
    val maxNew: Int,
    val sinkTokens: Int,
    val window: Int,
    val maxClusters: Int,
    val maxKeep: Int,
) {
    val maxClustered: Int get() = maxContext - sinkTokens - window

    companion object {
        fun parse(j: JsonPath) = DecoderShapes(
            j["max_context"].int(), j["max_prompt"].int(), j["max_new"].int(), j["sink_tokens"].int(),
            j["window"].int(), j["max_clusters"].int(), j["max_keep"].int(),
        )
    }
}

object PackLayout {
    /**
     * The pack's tensors as the exported decoder's context inputs (decoder_context_inputs): one input per tensor
     * and layer, "<name>_<layer>", layer by layer. Full attention: context_keys / context_values zero-padded to
     * max_context. Squeezed: sink_kv and window_kv rows in position order as [key | value] rows; clustered_keys and
     * clustered_values cluster by cluster (stable within a cluster), zero padding, flat per layer ([Hkv *
     * max_clustered, D], head by head; a method that declares them [Hkv, max_clustered, D] gets a view:
     * [GenerationLoop.methodInputs]); centroids, value_centroids, counts and cluster_start padded with empty clusters.
     *
     * Built layer by layer ([layerContextInputs]): the pack's fp16 rows are converted straight into the inputs' float32
     * buffers, so besides the inputs themselves only one layer's lookup tables exist at a time (never the pack's whole
     * key/value tables in float32).
     */
    fun decoderContextInputs(pack: ContextPack, shapes: DecoderShapes, attention: String): LinkedHashMap<String, DecoderTensor> {
        checkFits(pack, shapes, attention)
        val out = LinkedHashMap<String, DecoderTensor>()
        for (l in 0 until pack.layers) out.putAll(layerInputs(pack, shapes, attention, l))
        return out
    }

    /**
     * One layer's [decoderContextInputs] ("<name>_<layer>", in their order): all this allocates is that layer's inputs
     * and that layer's lookup tables (labels, cluster order, counts, centroids, the value centroids' float64 means).
     */
    fun layerContextInputs(pack: ContextPack, shapes: DecoderShapes, attention: String, layer: Int): LinkedHashMap<String, DecoderTensor> {
        checkFits(pack, shapes, attention)
        require(layer in 0 until pack.layers) { "layer $layer of a pack of ${pack.layers}" }
        return layerInputs(pack, shapes, attention, layer)
    }

    /** The refusals of decoder_context_inputs: a pack longer than the artifact's context, other sinks/window, too many clusters. */
    private fun checkFits(pack: ContextPack, shapes: DecoderShapes, attention: String) {
        val n = pack.numTokens
        if (n > shapes.maxContext) {
            throw PackException("the context pack has $n tokens but the exported decoder takes at most ${shapes.maxContext}; " +
                "re-export with --max-context $n or more")
        }
        if (attention == "full") return
        if (attention != "squeezed") throw PackException("unknown attention \"$attention\" (expected squeezed or full)")
        val sinks = pack.sinkTokens
        val window = pack.observationWindow
        if (sinks != shapes.sinkTokens || window != shapes.window) {
            throw PackException("the context pack keeps $sinks sink and $window window tokens but the decoder was " +
                "exported for ${shapes.sinkTokens} and ${shapes.window}; rebuild the pack with those")
        }
        val K = pack.numClusters
        if (K > shapes.maxClusters) {
            throw PackException("the context pack has $K clusters per head but the decoder takes at most " +
                "${shapes.maxClusters}; rebuild it with a smaller --centroids or re-export")
        }
    }

    private fun layerInputs(pack: ContextPack, shapes: DecoderShapes, attention: String, l: Int): LinkedHashMap<String, DecoderTensor> {
        val n = pack.numTokens
        val keys = pack["kv.keys"]
        val values = pack["kv.values"]
        val H = pack.kvHeads
        val D = pack.headDim
        val out = LinkedHashMap<String, DecoderTensor>()
        if (attention == "full") {
            for ((name, src) in listOf("context_keys" to keys, "context_values" to values)) {
                val t = FloatArray(H * shapes.maxContext * D)
                for (h in 0 until H) src.halvesInto(((l * H + h) * n) * D, n * D, t, h * shapes.maxContext * D)
                out["${name}_$l"] = DecoderTensor.Float32(t, intArrayOf(H, shapes.maxContext, D))
            }
            return out
        }
        val sinks = pack.sinkTokens
        val window = pack.observationWindow
        val K = pack.numClusters
        val nc = pack.numClustered
        val counts = pack["lookup.counts"].longs(l * H * K, H * K)       // this layer's [H, K]
        val labels = pack["lookup.labels"].longs(l * H * nc, H * nc)     // this layer's [H, Nc]
        val order = clusterOrder(labels, H, nc, 0)
        val centroids = pack.layerCentroids(l)
        val valueCentroids = layerValueCentroids(values, l, counts, order, H, n, nc, K, D, sinks)
        val maxK = shapes.maxClusters
        val ncMax = shapes.maxClustered
        val w2 = 2 * D
        // one [key | value] row of head h at position p, written at dst[at]
        fun row(h: Int, p: Int, dst: FloatArray, at: Int) {
            val src = ((l * H + h) * n + p) * D
            keys.halvesInto(src, D, dst, at)
            values.halvesInto(src, D, dst, at + D)
        }
        val sink = FloatArray(H * sinks * w2)
        val win = FloatArray(H * window * w2)
        val clusteredKeys = FloatArray(H * ncMax * D)
        val clusteredValues = FloatArray(H * ncMax * D)
        val cent = FloatArray(H * maxK * D)
        val vcent = FloatArray(H * maxK * D)
        val cnt = LongArray(H * maxK)
        val start = LongArray(H * maxK)
        for (h in 0 until H) {
            for (p in 0 until sinks) row(h, p, sink, (h * sinks + p) * w2)
            for (p in 0 until window) row(h, sinks + nc + p, win, (h * window + p) * w2)
            for (j in 0 until nc) {
                val src = ((l * H + h) * n + sinks + order[h * nc + j].toInt()) * D
                keys.halvesInto(src, D, clusteredKeys, (h * ncMax + j) * D)
                values.halvesInto(src, D, clusteredValues, (h * ncMax + j) * D)
            }
            System.arraycopy(centroids, h * K * D, cent, h * maxK * D, K * D)
            System.arraycopy(valueCentroids, h * K * D, vcent, h * maxK * D, K * D)
            var total = 0L
            for (c in 0 until K) {
                cnt[h * maxK + c] = counts[h * K + c]
                start[h * maxK + c] = total
                total += counts[h * K + c]
            }
        }
        out["sink_kv_$l"] = DecoderTensor.Float32(sink, intArrayOf(H, sinks, w2))
        out["window_kv_$l"] = DecoderTensor.Float32(win, intArrayOf(H, window, w2))
        // flat, head by head: the lookup gathers rows of every head in one go
        out["clustered_keys_$l"] = DecoderTensor.Float32(clusteredKeys, intArrayOf(H * ncMax, D))
        out["clustered_values_$l"] = DecoderTensor.Float32(clusteredValues, intArrayOf(H * ncMax, D))
        out["centroids_$l"] = DecoderTensor.Float32(cent, intArrayOf(H, maxK, D))
        out["value_centroids_$l"] = DecoderTensor.Float32(vcent, intArrayOf(H, maxK, D))
        out["counts_$l"] = DecoderTensor.Int64(cnt, intArrayOf(H, maxK))
        out["cluster_start_$l"] = DecoderTensor.Int64(start, intArrayOf(H, maxK))
        return out
    }

    /**
     * next_rows_<layer> for a decoder with followed keys (pack_arrays.next_rows): [Hkv * max_clustered] int64, for every
     * flat row of the layer's clustered tables (the [decoderContextInputs] layout) the flat row of the next context
     * position; -1 after the last clustered key and for padding rows. The graph input of the in-graph plan; the split
     * plan's CPU reads it ([KeptRows.followPointer]). Built layer by layer from that layer's labels.
     */
    fun nextRows(pack: ContextPack, shapes: DecoderShapes): LinkedHashMap<String, DecoderTensor> {
        val L = pack.layers
        val H = pack.kvHeads
        val nc = pack.numClustered
        val width = shapes.maxClustered
        if (nc > width) {
            throw PackException("the context pack has $nc clustered keys per head but the decoder takes at most $width; " +
                "re-export with a larger --max-context")
        }
        val labels = pack["lookup.labels"]
        val out = LinkedHashMap<String, DecoderTensor>()
        for (l in 0 until L) {
            out["next_rows_$l"] = DecoderTensor.Int64(nextRowTable(labels.longs(l * H * nc, H * nc), H, H, nc, width), intArrayOf(H * width))
        }
        return out
    }

    /**
     * [nextRows]' table for [groups] groups of [nc] cluster labels (layer by layer, [heads] per layer): per group
     * [width] slots, slot j holding the clustered index order[j] of the cluster-by-cluster layout ([clusterOrder]);
     * its value is the flat row (head h of the layer: h * width + slot) of the slot holding clustered index order[j]
     * + 1, -1 where that is past the last one and for the padding slots j >= nc.
     */
    fun nextRowTable(labels: LongArray, groups: Int, heads: Int, nc: Int, width: Int): LongArray {
        require(labels.size == groups * nc && nc <= width && groups % heads == 0) {
            "${labels.size} labels are not $groups groups of $nc (at most $width), $heads per layer"
        }
        val order = clusterOrder(labels, groups, nc, 0)
        val slotOf = IntArray(nc)
        val out = LongArray(groups * width) { -1L }
        for (g in 0 until groups) {
            for (j in 0 until nc) slotOf[order[g * nc + j].toInt()] = j
            val head = (g % heads) * width
            for (j in 0 until nc) {
                val after = order[g * nc + j].toInt() + 1
                if (after < nc) out[g * width + j] = (head + slotOf[after]).toLong()
            }
        }
        return out
    }

    /**
     * Per group of [nc] labels: the positions 0..nc-1 sorted by label, stable (np.argsort kind="stable"), + [offset].
     * A counting sort where a group's labels span a small range (cluster labels: 0..K-1), which is stable and makes
     * no boxed copy of the positions; a stable comparison sort otherwise.
     */
    fun clusterOrder(labels: LongArray, groups: Int, nc: Int, offset: Int): LongArray {
        val out = LongArray(groups * nc)
        for (g in 0 until groups) {
            var lo = Long.MAX_VALUE
            var hi = Long.MIN_VALUE
            for (j in 0 until nc) {
                lo = minOf(lo, labels[g * nc + j])
                hi = maxOf(hi, labels[g * nc + j])
            }
            val span = hi - lo // negative for nc = 0, or on overflow
            if (span >= 0 && span <= 4L * nc + 1024) {
                val first = IntArray(span.toInt() + 2) // counts of label lo + c at c + 1, then first[c] = labels below lo + c
                for (j in 0 until nc) first[(labels[g * nc + j] - lo).toInt() + 1]++
                for (c in 1 until first.size) first[c] += first[c - 1]
                for (j in 0 until nc) out[g * nc + first[(labels[g * nc + j] - lo).toInt()]++] = (j + offset).toLong()
            } else if (nc > 0) {
                val idx = (0 until nc).sortedBy { labels[g * nc + it] } // sortedBy is stable
                for (j in 0 until nc) out[g * nc + j] = (idx[j] + offset).toLong()
            }
        }
        return out
    }

    /**
     * Mean fp16 value of every cluster of one layer in float64 (empty clusters 0), int8-coded with one fp16 scale per
     * vector like the key centroids (value_centroids + quantized_like_centroids): [H, K] x D float32. [values] is the
     * pack's kv.values [L, H, N, D] fp16 (read in place), [counts] and [order] the layer's [H, K] and [H, Nc].
     */
    fun layerValueCentroids(
        values: StoredTensor, layer: Int, counts: LongArray, order: LongArray,
        H: Int, n: Int, nc: Int, K: Int, D: Int, sinks: Int,
    ): FloatArray {
        val mean = DoubleArray(H * K * D)
        for (h in 0 until H) {
            val g = layer * H + h
            var j = 0
            for (c in 0 until K) {
                val cnt = counts[h * K + c].toInt()
                val base = (h * K + c) * D
                for (r in 0 until cnt) {
                    val p = sinks + order[h * nc + j + r].toInt()
                    val src = (g * n + p) * D
                    for (d in 0 until D) mean[base + d] += values.half(src + d).toDouble()
                }
                j += cnt
                val div = maxOf(cnt, 1).toDouble()
                for (d in 0 until D) mean[base + d] /= div
            }
        }
        return quantizedLikeCentroids(mean, D)
    }

    /** quantized_like_centroids: float32, scale = fp16(max|x| / 127), codes = clip(rint(x / scale)), codes x scale. */
    fun quantizedLikeCentroids(x: DoubleArray, d: Int): FloatArray {
        val out = FloatArray(x.size)
        for (v in 0 until x.size / d) {
            var peak = 0.0f
            for (i in 0 until d) peak = maxOf(peak, Math.abs(x[v * d + i].toFloat()))
            val scale = Half.toFloat(Half.fromFloat(peak / 127.0f))
            val safe = if (scale > 0f) scale else 1.0f
            for (i in 0 until d) {
                // through an integer code, as the int8 codes: -0.0 comes back as +0.0
                val code = Math.rint((x[v * d + i].toFloat() / safe).toDouble()).coerceIn(-127.0, 127.0).toInt()
                out[v * d + i] = code.toFloat() * scale
            }
        }
        return out
    }
}
