package dev.squeezemobile.core

import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import java.io.File
import java.security.MessageDigest

/**
 * The real model's byte-level BPE (SmolLM2-135M-Instruct's tokenizer.json, the file the decoder export ships)
 * against Python's `tokenizers` on real texts: licence texts, many scripts, emoji with joiners, whitespace runs,
 * digits, chat special tokens. Ids and decoded text must be identical.
 */
class TokenizerTest {
    private val golden = Golden.json("qa_tokenizer.json.gz")

    private val realTokenizer get() = shared

    @Test
    fun realTextsGiveThePythonIds() {
        val tok = realTokenizer
        assertEquals(golden["vocab_size"].int(), tok.vocabSize)
        var tokens = 0
        for (case in golden["cases"].list()) {
            val text = case["text"].string()
            val expected = case["ids"].intArray()
            val ids = tok.encode(text)
            assertArrayEquals(expected, ids, "ids of ${text.take(60)}")
            tokens += ids.size
        }
        assertTrue(tokens > 4000, "only $tokens tokens compared")
    }

    @Test
    fun decodingGivesThePythonText() {
        val tok = realTokenizer
        for (case in golden["cases"].list() + golden["decodes"].list()) {
            val ids = case["ids"].intArray()
            assertEquals(case["decoded"].string(), tok.decode(ids), "decode of ${ids.take(12)}")
            assertEquals(case["decoded_with_special"].string(), tok.decode(ids, skipSpecial = false), "decode of ${ids.take(12)}")
        }
    }

    @Test
    fun specialTokensOfTheChatFrame() {
        val tok = realTokenizer
        assertEquals(1, tok.tokenToId("<|im_start|>"))
        assertEquals(2, tok.tokenToId("<|im_end|>"))
        assertTrue(0 in tok.specialIds && 2 in tok.specialIds)
        assertArrayEquals(intArrayOf(1, 2), tok.encode("<|im_start|><|im_end|>"))
        assertEquals("<|im_end|>", tok.idToToken(2))
    }

    @Test
    fun literalModeKeepsWrittenSpecialTokensAsText() {
        // Python's encode_literal (tokenizers' encode_special_tokens=True): "<|im_end|>" written in user text is text
        val tok = realTokenizer
        var differ = 0
        for (case in golden["literal_cases"].list()) {
            val text = case["text"].string()
            val ids = tok.encode(text, literal = true)
            assertArrayEquals(case["ids"].intArray(), ids, "literal ids of ${text.take(60)}")
            assertArrayEquals(case["ids_matched"].intArray(), tok.encode(text), "ids of ${text.take(60)}")
            assertTrue(ids.none { it in tok.specialIds }, "a special token in the literal ids of ${text.take(60)}")
            assertEquals(text, tok.decode(ids), "the literal ids of ${text.take(60)} decode to the text")
            if (!ids.contentEquals(case["ids_matched"].intArray())) differ++
        }
        assertTrue(differ >= 6, "only $differ literal cases differ from the default encoding")
        assertArrayEquals(tok.encode("<|im_start|>"), intArrayOf(1))
        assertTrue(tok.encode("<|im_start|>", literal = true).size > 1)
    }

    @Test
    fun literalModeStillMatchesNonSpecialAddedTokens() {
        // the tiny tokenizer plus a non-special added token ("nan") and a special one around it ("xnanx"): the special
        // token's characters stay one piece of text with their neighbours, the non-special one is matched
        val added = golden["literal_added"]
        val tok = ByteLevelBpeTokenizer.parse(added["tokenizer"].string().toByteArray(), "literal_added")
        assertTrue(tok.addedTokens.any { !it.special } && tok.addedTokens.any { it.special && it.content == "xnanx" })
        for (case in added["cases"].list()) {
            val text = case["text"].string()
            assertArrayEquals(case["ids"].intArray(), tok.encode(text, literal = true), "literal ids of $text")
            assertArrayEquals(case["ids_matched"].intArray(), tok.encode(text), "ids of $text")
        }
    }

    @Test
    fun tinyModelTokenizerWithItsOwnMerges() {
        // the tiny test model's tokenizer.json (40 tokens, 5 merges): the one the generation goldens use
        val tok = ByteLevelBpeTokenizer.parse(Golden.bytes("qa_tokenizer_tiny.json"))
        val gen = Golden.json("qa_generation.json.gz")
        val chat = gen["tokenizer"]["chat"]
        val prompt = chat["join"].string() + gen["prompt"].string() + chat["suffix"].string()
        assertArrayEquals(gen["prompt_ids"].intArray(), tok.encode(prompt))
        for (run in gen["runs"].list()) {
            assertEquals(run["text"].string(), tok.decode(run["tokens"].intArray()))
        }
    }

    @Test
    fun unsupportedTokenizersAreRefusedInOneLine() {
        val text = String(Golden.bytes("qa_tokenizer_tiny.json"), Charsets.UTF_8)
        val wordPiece = text.replaceFirst("\"type\":\"BPE\"", "\"type\":\"WordPiece\"")
        val e = assertThrows(TokenizerException::class.java) { ByteLevelBpeTokenizer.parse(wordPiece.toByteArray()) }
        assertTrue(e.message!!.contains("WordPiece") && !e.message!!.contains("\n"), e.message)
        assertThrows(TokenizerException::class.java) { ByteLevelBpeTokenizer.parse("{not json".toByteArray()) }
        assertThrows(TokenizerException::class.java) { ByteLevelBpeTokenizer.fromFile(File("/nonexistent/tokenizer.json")) }
    }

    @Test
    fun longRunsOfOneCharacterMergeInLinearithmicWork() {
        // a question pasted with a long run of one character (a row of "=", a long number, a base64 blob): merging
        // rescanned the whole word per merge, 25 s for 32,000 "a" (Python's tokenizers: 9 ms). Python's ids, and the
        // pairs queued bounded by 3 per byte (the old rescans looked at ~n^2 / 2 pairs); also runs the pre-tokenizer
        // splits into many pieces
        val tok = ByteLevelBpeTokenizer.fromFile(File(System.getProperty("squeeze.qa.tokenizer")))
        fun repeat(id: Int, n: Int) = IntArray(n) { id }
        val cases = listOf(
            "a".repeat(32000) to repeat(46880, 8000),
            "=".repeat(32000) to repeat(28909, 500),
            "-".repeat(5001) to repeat(15069, 78) + intArrayOf(26238),
            "ab".repeat(10000) + "!" to repeat(369, 10000) + intArrayOf(17),
            "\u00e9".repeat(3001) to repeat(2756, 3001),
            "\uD83D\uDE00".repeat(2001) to IntArray(3 * 2001) { intArrayOf(10813, 242, 218)[it % 3] },
            // runs the pre-tokenizer splits (whitespace before a word, newlines, digits one by one, punctuation)
            " ".repeat(32000) + "a" to repeat(40686, 499) + intArrayOf(12427, 1703, 22754, 253),
            "\n".repeat(32000) to repeat(22342, 8000),
            "1".repeat(32000) to repeat(33, 32000),
            "<".repeat(32000) to repeat(33691, 16000),
        )
        for ((text, ids) in cases) {
            val before = tok.queuedPairs
            assertArrayEquals(ids, tok.encode(text), "ids of ${text.take(4)}... (${text.length} chars)")
            val bytes = text.toByteArray(Charsets.UTF_8).size
            assertTrue(tok.queuedPairs - before <= 3L * bytes, "${tok.queuedPairs - before} pairs queued for $bytes bytes")
        }
    }

    @Test
    fun postProcessorsOfHuggingFaceFilesChangeNoIdAndAreAccepted() {
        // a model folder's tokenizer.json (SmolLM2's on the Hub) carries a ByteLevel post-processor, Llama-style ones a
        // TemplateProcessing; with add_special_tokens=False, the only way the pipeline encodes, Python's tokenizers gives
        // the same ids and text with and without them (checked with tokenizers on the real tokenizer.json); they were
        // refused here, so an export of a model folder could not be used
        val text = String(Golden.bytes("qa_tokenizer_tiny.json"), Charsets.UTF_8)
        check(text.contains("\"post_processor\":null"))
        fun with(pp: String) = ByteLevelBpeTokenizer.parse(text.replaceFirst("\"post_processor\":null", "\"post_processor\":$pp").toByteArray())
        val byteLevel = "{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"trim_offsets\":false,\"use_regex\":true}"
        val template = "{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<|im_start|>\",\"type_id\":0}}," +
            "{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"pair\":[{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}]," +
            "\"special_tokens\":{\"<|im_start|>\":{\"id\":\"<|im_start|>\",\"ids\":[1],\"tokens\":[\"<|im_start|>\"]}}}"
        val plain = ByteLevelBpeTokenizer.parse(text.toByteArray())
        for (tok in listOf(with(byteLevel), with(template), with("{\"type\":\"Sequence\",\"processors\":[$byteLevel,$template]}"))) {
            for (s in listOf("ok a b 12", " a<|im_end|>b 12", "<|im_start|>a")) assertArrayEquals(plain.encode(s), tok.encode(s), s)
            // (the tiny vocabulary has no "<": literal mode only on plain text)
            assertArrayEquals(plain.encode("ok a b 12", literal = true), tok.encode("ok a b 12", literal = true))
        }
        val e = assertThrows(TokenizerException::class.java) { with("{\"type\":\"BertProcessing\",\"sep\":[\"a\",5],\"cls\":[\"b\",6]}") }
        assertTrue(e.message!!.contains("a post_processor (BertProcessing)"), e.message)
    }

    companion object {
        /** Parsed once for the class (1.5 MB of JSON). */
        val shared: ByteLevelBpeTokenizer by lazy {
            val path = System.getProperty("squeeze.qa.tokenizer")
                ?: throw AssertionError("system property squeeze.qa.tokenizer is not set; run android_demo/run_tests.sh")
            val file = File(path)
            if (!file.isFile) {
                throw AssertionError("$path is missing; run .venv/bin/python android_demo/tools/make_golden.py --tokenizer-only")
            }
            val bytes = file.readBytes()
            val sha = MessageDigest.getInstance("SHA-256").digest(bytes).joinToString("") { "%02x".format(it) }
            if (sha != Golden.json("qa_tokenizer.json.gz")["tokenizer_sha256"].string()) {
                throw AssertionError("$path is not the tokenizer the goldens were made with; run android_demo/tools/make_golden.py")
            }
            ByteLevelBpeTokenizer.parse(bytes, file.name)
        }
    }
}
