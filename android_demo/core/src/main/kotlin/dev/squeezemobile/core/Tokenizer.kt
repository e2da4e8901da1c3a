package dev.squeezemobile.core

import java.nio.ByteBuffer
import java.nio.charset.CodingErrorAction
import java.util.regex.Pattern

/**
 * The decoder's byte-level BPE tokenizer, read from the tokenizer.json the decoder export ships beside the
 * artifact (a Hugging Face `tokenizers` file, as squeezed_attention/tokenizer.py builds it). Gives the same ids
 * as Python's `Tokenizer.from_file(path).encode(text, add_special_tokens=False).ids` and the same text as its
 * `decode(ids, skip_special_tokens=...)`.
 *
 * What it implements (and refuses anything else with a one-line [TokenizerException]): no normaliser, no post
 * processor; pre-tokenizer ByteLevel (GPT-2 split, no prefix space), optionally after Digits (one piece per
 * digit, as SmolLM's); a BPE model without dropout, unknown token, prefixes/suffixes or byte fallback; added
 * tokens matched verbatim (no lstrip/rstrip/single_word), leftmost-longest, before pre-tokenization; special ones
 * not matched in literal mode (`encode(text, literal = true)`: user text, where "<|im_end|>" stays characters).
 */
class TokenizerException(message: String) : IllegalArgumentException(message)

class AddedToken(val id: Int, val content: String, val special: Boolean)

class ByteLevelBpeTokenizer private constructor(
    private val vocab: Map<String, Int>,
    private val idToToken: Array<String?>,
    /** (left id, right id) packed in a Long -> rank (high 32 bits) and merged id (low 32 bits) */
    private val merges: HashMap<Long, Long>,
    val addedTokens: List<AddedToken>,
    private val splitDigits: Boolean,
    private val useRegex: Boolean,
    private val ignoreMerges: Boolean,
) {
    private val addedById = addedTokens.associateBy { it.id }
    private val addedByFirstChar = addedTokens.groupBy { it.content[0] }
    private val byteSymbol = IntArray(256) { b ->
        vocab[BYTE_TO_CHAR[b].toString()] ?: -1
    }
    private val cache = HashMap<String, IntArray>()

    val vocabSize: Int get() = idToToken.size

    /** Ids of the special added tokens (skipped by [decode] with skipSpecial). */
    val specialIds: Set<Int> = addedTokens.filter { it.special }.map { it.id }.toSet()

    fun tokenToId(token: String): Int? = addedTokens.firstOrNull { it.content == token }?.id ?: vocab[token]

    fun idToToken(id: Int): String? = addedById[id]?.content ?: idToToken.getOrNull(id)

    /**
     * Token ids of [text] (add_special_tokens=False: no BOS/EOS added). By default special-token strings in the text
     * become their tokens (the chat framing's own markers). [literal]: user text (a document, a question), whose
     * written "<|im_end|>" or "<|endoftext|>" stays text, as Python's `encode_literal` (tokenizers'
     * `encode_special_tokens=True`): a special token's match is passed over, its characters go through
     * pre-tokenization and BPE with the text around them; non-special added tokens are still matched (the real
     * model has none). Text without special-token strings gets the same ids either way.
     */
    fun encode(text: String, literal: Boolean = false): IntArray {
        val out = IntArrayList()
        var segmentStart = 0
        var i = 0
        while (i < text.length) {
            val match = addedAt(text, i)
            if (match == null) {
                i++
                continue
            }
            if (literal && match.special) { // the Rust library's leftmost-longest scan goes on after the skipped match
                i += match.content.length
                continue
            }
            encodeSegment(text.substring(segmentStart, i), out)
            out.add(match.id)
            i += match.content.length
            segmentStart = i
        }
        encodeSegment(text.substring(segmentStart), out)
        return out.toArray()
    }

    /**
     * Text of [ids]: byte-level tokens back to bytes, then UTF-8 with U+FFFD for invalid sequences (as Rust's
     * from_utf8_lossy); special tokens dropped when [skipSpecial]; ids outside the vocabulary are skipped.
     */
    fun decode(ids: IntArray, skipSpecial: Boolean = true): String {
        val bytes = java.io.ByteArrayOutputStream()
        for (id in ids) {
            val added = addedById[id]
            if (added != null && added.special && skipSpecial) continue
            val token = added?.content ?: idToToken.getOrNull(id) ?: continue
            val mapped = ByteArray(token.length)
            var ok = true
            for (k in token.indices) {
                val b = CHAR_TO_BYTE[token[k]]
                if (b == null) { ok = false; break }
                mapped[k] = b.toByte()
            }
            // a token with a character outside the byte alphabet (an added token such as "<|im_start|>" is inside
            // it) goes out as its own UTF-8, as the Hugging Face ByteLevel decoder does
            if (ok) bytes.write(mapped) else bytes.write(token.toByteArray(Charsets.UTF_8))
        }
        return decodeUtf8Lossy(bytes.toByteArray())
    }

    private fun addedAt(text: String, i: Int): AddedToken? {
        val candidates = addedByFirstChar[text[i]] ?: return null
        var best: AddedToken? = null
        for (t in candidates) {
            if (text.startsWith(t.content, i) && (best == null || t.content.length > best.content.length)) best = t
        }
        return best
    }

    private fun encodeSegment(segment: String, out: IntArrayList) {
        if (segment.isEmpty()) return
        if (!splitDigits) {
            encodePiece(segment, out)
            return
        }
        // Digits(individual_digits=True): every numeric character (Unicode Nd, Nl, No) is a piece of its own
        var start = 0
        var i = 0
        while (i < segment.length) {
            val cp = segment.codePointAt(i)
            val n = Character.charCount(cp)
            if (isNumeric(cp)) {
                if (start < i) encodePiece(segment.substring(start, i), out)
                encodePiece(segment.substring(i, i + n), out)
                start = i + n
            }
            i += n
        }
        if (start < segment.length) encodePiece(segment.substring(start), out)
    }

    private fun encodePiece(piece: String, out: IntArrayList) {
        if (!useRegex) {
            encodeWord(piece, out)
            return
        }
        val m = GPT2_SPLIT.matcher(piece)
        var last = 0
        while (m.find()) {
            if (m.start() > last) encodeWord(piece.substring(last, m.start()), out)
            encodeWord(m.group(), out)
            last = m.end()
        }
        if (last < piece.length) encodeWord(piece.substring(last), out)
    }

    private fun encodeWord(word: String, out: IntArrayList) {
        if (word.isEmpty()) return
        val cached = cache[word]
        if (cached != null) {
            out.addAll(cached)
            return
        }
        val ids = bpe(word.toByteArray(Charsets.UTF_8))
        if (cache.size < CACHE_LIMIT) cache[word] = ids
        out.addAll(ids)
    }

    /**
     * Pairs queued by [bpe] since the tokenizer was made (a test's measure that merging stays O(n log n) in a word's
     * bytes: a word of n bytes queues at most 3n pairs).
     */
    internal var queuedPairs = 0L
        private set

    /**
     * One word's bytes -> ids. Merges the adjacent pair with the lowest rank, the leftmost one among equal ranks,
     * until no pair merges: the order of the Hugging Face BPE model's priority queue (rank, then position), which this
     * runs the same way (tokenizers' Word::merge_all): the symbols a linked list over the byte positions, every pair a
     * queue entry (rank, left position), an entry skipped when its pair changed since it was queued. O(n log n): the
     * rescan of the whole word per merge it replaces took 25 s for a run of 32,000 "a" (Python: 9 ms).
     */
    private fun bpe(bytes: ByteArray): IntArray {
        if (ignoreMerges) {
            val whole = StringBuilder()
            for (b in bytes) whole.append(BYTE_TO_CHAR[b.toInt() and 0xFF])
            vocab[whole.toString()]?.let { return intArrayOf(it) }
        }
        // a byte the vocabulary has no token for is dropped, as tokenizers' BPE does without an unk token (the real
        // SmolLM2 vocabulary has none for six control characters and the lead bytes of planes 4-11): its neighbours
        // become adjacent and may merge
        var n = 0
        val symbols = IntArray(bytes.size)
        for (b in bytes) {
            val id = byteSymbol[b.toInt() and 0xFF]
            if (id >= 0) symbols[n++] = id
        }
        if (n < 2) return symbols.copyOf(n)
        val next = IntArray(n) { if (it + 1 < n) it + 1 else -1 }
        val prev = IntArray(n) { it - 1 }
        val alive = BooleanArray(n) { true }
        val queue = LongHeap(n)
        // an entry: rank in the high 32 bits, the pair's left position in the low 32 (rank first, then position)
        fun push(left: Int) {
            val right = next[left]
            if (right < 0) return
            val m = merges[pairKey(symbols[left], symbols[right])] ?: return
            queue.add(((m ushr 32) shl 32) or left.toLong())
            queuedPairs++
        }
        for (k in 0 until n - 1) push(k)
        while (queue.isNotEmpty()) {
            val entry = queue.poll()
            val rank = (entry ushr 32).toInt()
            val left = entry.toInt()
            val right = next[left]
            if (!alive[left] || right < 0) continue
            val m = merges[pairKey(symbols[left], symbols[right])] ?: continue
            if ((m ushr 32).toInt() != rank) continue // the pair changed since it was queued
            symbols[left] = m.toInt()
            alive[right] = false
            next[left] = next[right]
            if (next[right] >= 0) prev[next[right]] = left
            if (prev[left] >= 0) push(prev[left])
            push(left)
        }
        val out = IntArrayList()
        var k = 0
        while (k >= 0) {
            out.add(symbols[k])
            k = next[k]
        }
        return out.toArray()
    }

    /** A binary min-heap of longs (the BPE queue without boxing). */
    private class LongHeap(capacity: Int) {
        private var items = LongArray(maxOf(capacity, 1))
        private var size = 0

        fun isNotEmpty() = size > 0

        fun add(v: Long) {
            if (size == items.size) items = items.copyOf(size * 2)
            var i = size++
            while (i > 0) {
                val parent = (i - 1) / 2
                if (items[parent] <= v) break
                items[i] = items[parent]
                i = parent
            }
            items[i] = v
        }

        fun poll(): Long {
            val top = items[0]
            val last = items[--size]
            var i = 0
            while (true) {
                var child = 2 * i + 1
                if (child >= size) break
                if (child + 1 < size && items[child + 1] < items[child]) child++
                if (items[child] >= last) break
                items[i] = items[child]
                i = child
            }
            if (size > 0) items[i] = last
            return top
        }
    }

    companion object {
        private const val CACHE_LIMIT = 10_000

        // GPT-2's split (the `tokenizers` ByteLevel regex); UNICODE_CHARACTER_CLASS: \s is Unicode White_Space,
        // as Oniguruma's \s in the Rust library
        private val GPT2_SPLIT: Pattern = Pattern.compile(
            "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
            Pattern.UNICODE_CHARACTER_CLASS,
        )

        /** GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the rest to U+0100 onwards. */
        val BYTE_TO_CHAR: CharArray = CharArray(256).also { table ->
            var next = 256
            for (b in 0 until 256) {
                val printable = b in 0x21..0x7E || b in 0xA1..0xAC || b in 0xAE..0xFF
                table[b] = if (printable) b.toChar() else (next++).toChar()
            }
        }
        private val CHAR_TO_BYTE: Map<Char, Int> = (0 until 256).associateBy { BYTE_TO_CHAR[it] }

        private fun pairKey(a: Int, b: Int): Long = (a.toLong() shl 32) or (b.toLong() and 0xFFFFFFFFL)

        private fun isNumeric(cp: Int): Boolean = when (Character.getType(cp)) {
            Character.DECIMAL_DIGIT_NUMBER.toInt(), Character.LETTER_NUMBER.toInt(), Character.OTHER_NUMBER.toInt() -> true
            else -> false
        }

        /**
         * The tokenizer in [path]; with [sha256] (the decoder manifest's `tokenizer.sha256`) it must be the file the export
         * wrote: an edited vocabulary (two digits' ids swapped, say) parses fine and answers other digits. Parsed first,
         * so a damaged file says it cannot be read (decoder_session.load_decoder_tokenizer's order).
         */
        fun fromFile(path: java.io.File, sha256: String? = null): ByteLevelBpeTokenizer {
            if (!path.isFile) throw TokenizerException("the tokenizer $path is missing; re-export the decoder")
            val bytes = path.readBytes()
            val tokenizer = parse(bytes, path.name)
            if (sha256 != null) {
                val digest = java.security.MessageDigest.getInstance("SHA-256").digest(bytes).joinToString("") { "%02x".format(it) }
                if (digest != sha256) {
                    throw TokenizerException("the tokenizer $path is not the one the export wrote (its sha256 differs from " +
                        "the manifest's); restore it or re-export the decoder")
                }
            }
            return tokenizer
        }

        fun parse(bytes: ByteArray, source: String = "tokenizer.json"): ByteLevelBpeTokenizer = try {
            build(JsonPath.of(Json.parse(bytes), source))
        } catch (e: JsonException) {
            throw TokenizerException("$source is not a readable tokenizer (${e.message}); re-export the decoder")
        }

        private fun unsupported(source: String, what: String): Nothing =
            throw TokenizerException("$source uses $what, which this tokenizer does not implement; " +
                "export the decoder with the project's byte-level BPE tokenizer")

        /**
         * A post-processor only adds its special tokens (and trims offsets) when encoding WITH special tokens; the pipeline
         * always encodes without them (add_special_tokens=False), where the ids are the same: the ByteLevel one and the
         * TemplateProcessing one that Hugging Face byte-level BPE tokenizer.json files carry (an export of a model
         * folder copies its tokenizer.json) change no id here. Others are refused.
         */
        private fun checkPostProcessor(source: String, v: JsonPath) {
            when (val type = v["type"].string()) {
                "ByteLevel", "TemplateProcessing" -> {}
                "Sequence" -> v["processors"].list().forEach { checkPostProcessor(source, it) }
                else -> unsupported(source, "a post_processor ($type)")
            }
        }

        private fun build(root: JsonPath): ByteLevelBpeTokenizer {
            val source = root.path
            root.opt("normalizer")?.let { v -> if (!v.isNull) unsupported(source, "a normalizer (${v["type"].string()})") }
            root.opt("post_processor")?.let { v -> if (!v.isNull) checkPostProcessor(source, v) }
            var splitDigits = false
            var useRegex = true
            val pre = root["pre_tokenizer"]
            val steps = if (pre["type"].string() == "Sequence") pre["pretokenizers"].list() else listOf(pre)
            steps.forEachIndexed { i, step ->
                when (val type = step["type"].string()) {
                    "Digits" -> {
                        if (!step["individual_digits"].bool()) unsupported(source, "Digits without individual_digits")
                        splitDigits = true
                    }
                    "ByteLevel" -> {
                        if (i != steps.size - 1) unsupported(source, "a pre-tokenizer after ByteLevel")
                        if (step.opt("add_prefix_space")?.bool() == true) unsupported(source, "ByteLevel with add_prefix_space")
                        useRegex = step.opt("use_regex")?.bool() ?: true
                    }
                    else -> unsupported(source, "the $type pre-tokenizer")
                }
            }
            if (steps.lastOrNull()?.get("type")?.string() != "ByteLevel") unsupported(source, "no ByteLevel pre-tokenizer")
            val decoder = root["decoder"]
            if (decoder["type"].string() != "ByteLevel") unsupported(source, "the ${decoder["type"].string()} decoder")

            val model = root["model"]
            if (model["type"].string() != "BPE") unsupported(source, "a ${model["type"].string()} model")
            for (key in listOf("dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix")) {
                val v = model.opt(key)
                if (v != null && !v.isNull) unsupported(source, "BPE $key")
            }
            if (model.opt("byte_fallback")?.bool() == true) unsupported(source, "BPE byte_fallback")
            val ignoreMerges = model.opt("ignore_merges")?.bool() ?: false

            val vocab = HashMap<String, Int>()
            var maxId = -1
            for ((token, id) in model["vocab"].obj()) {
                val v = JsonPath.of(id, "$source.model.vocab").int()
                vocab[token] = v
                maxId = maxOf(maxId, v)
            }
            val added = root["added_tokens"].list().map { t ->
                for (flag in listOf("single_word", "lstrip", "rstrip")) {
                    if (t.opt(flag)?.bool() == true) unsupported(source, "an added token with $flag")
                }
                val content = t["content"].string()
                if (content.isEmpty()) unsupported(source, "an empty added token")
                AddedToken(t["id"].int(), content, t["special"].bool())
            }
            for (t in added) maxId = maxOf(maxId, t.id)
            val idToToken = arrayOfNulls<String>(maxId + 1)
            for ((token, id) in vocab) if (id >= 0) idToToken[id] = token

            val merges = HashMap<Long, Long>()
            model["merges"].list().forEachIndexed { rank, m ->
                // "left right" (older files) or ["left", "right"]
                val (left, right) = if (m.value is String) {
                    val s = m.string()
                    val sp = s.indexOf(' ')
                    if (sp < 0) throw TokenizerException("${m.path}: a merge must be two tokens, found \"$s\"")
                    s.substring(0, sp) to s.substring(sp + 1)
                } else {
                    val pair = m.list()
                    if (pair.size != 2) throw TokenizerException("${m.path}: a merge must be two tokens")
                    pair[0].string() to pair[1].string()
                }
                val a = vocab[left] ?: throw TokenizerException("${m.path}: merge token \"$left\" is not in the vocabulary")
                val b = vocab[right] ?: throw TokenizerException("${m.path}: merge token \"$right\" is not in the vocabulary")
                val merged = vocab[left + right]
                    ?: throw TokenizerException("${m.path}: merged token \"$left$right\" is not in the vocabulary")
                // a repeated merge: the later rank wins, as in the Rust library's map
                merges[pairKey(a, b)] = (rank.toLong() shl 32) or (merged.toLong() and 0xFFFFFFFFL)
            }
            return ByteLevelBpeTokenizer(vocab, idToToken, merges, added, splitDigits, useRegex, ignoreMerges)
        }

        /** UTF-8 -> String with one U+FFFD per maximal invalid subsequence (Rust's String::from_utf8_lossy). */
        fun decodeUtf8Lossy(bytes: ByteArray): String {
            val decoder = Charsets.UTF_8.newDecoder()
                .onMalformedInput(CodingErrorAction.REPLACE)
                .onUnmappableCharacter(CodingErrorAction.REPLACE)
                .replaceWith("\uFFFD")
            return decoder.decode(ByteBuffer.wrap(bytes)).toString()
        }
    }
}

/** A growable int list without boxing (token ids). */
class IntArrayList(capacity: Int = 16) {
    private var data = IntArray(capacity)
    var size = 0
        private set

    fun add(v: Int) {
        if (size == data.size) data = data.copyOf(maxOf(16, data.size * 2))
        data[size++] = v
    }

    fun addAll(values: IntArray) {
        for (v in values) add(v)
    }

    operator fun get(i: Int): Int {
        if (i >= size) throw IndexOutOfBoundsException("$i of $size")
        return data[i]
    }

    fun toArray(): IntArray = data.copyOf(size)
}
