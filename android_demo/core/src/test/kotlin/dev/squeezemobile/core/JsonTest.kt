package dev.squeezemobile.core

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

class JsonTest {
    @Test
    fun scalarsAndTypes() {
        assertEquals(42L, Json.parse("42"))
        assertEquals(-7L, Json.parse(" -7 "))
        assertEquals(0L, Json.parse("0"))
        assertEquals(123.675, Json.parse("123.675"))
        assertEquals(1.5e-7, Json.parse("1.5E-7"))
        assertEquals(-0.0, Json.parse("-0.0"))
        assertEquals(1e20, Json.parse("100000000000000000000")) // past Long: a double, as Python would give an exact int
        assertEquals(true, Json.parse("true"))
        assertEquals(false, Json.parse("false"))
        assertNull(Json.parse("null"))
        assertEquals("", Json.parse("\"\""))
    }

    @Test
    fun numbersRoundLikePython() {
        // shortest round-trip doubles written by Python's json must read back to the same double
        for (s in listOf("0.1", "58.395", "6.556510925292969e-07", "132.53863279389336", "1.7976931348623157e308", "5e-324")) {
            assertEquals(s.toDouble(), Json.parse(s))
        }
    }

    @Test
    fun stringsAndEscapes() {
        assertEquals("a\"b\\c/d\b\u000C\n\r\t", Json.parse("\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\""))
        assertEquals("é€", Json.parse("\"\\u00e9\\u20AC\""))
        assertEquals("😀", Json.parse("\"\\ud83d\\ude00\"")) // a surrogate pair
        assertEquals("naïve ünïcode 😀", Json.parse("\"naïve ünïcode 😀\""))
    }

    @Test
    fun containersKeepOrderAndLastDuplicateWins() {
        val v = Json.parse("""{"b": [1, 2.5, "x", null, {}], "a": {"k": []}, "b2": true, "a": 3}""") as Map<*, *>
        assertEquals(listOf("b", "b2", "a"), v.keys.toList())
        assertEquals(listOf(1L, 2.5, "x", null, emptyMap<String, Any?>()), v["b"])
        assertEquals(3L, v["a"])
    }

    @Test
    fun malformedInputIsRefusedWithAnOffset() {
        val bad = listOf("", "   ", "{", "[1,]", "[1 2]", "{\"a\" 1}", "{\"a\":1,}", "{a:1}", "'x'", "\"abc", "\"a\\x\"",
            "\"\\u12G4\"", "01", "1.", ".5", "-", "1e", "+1", "tru", "nul", "[1]x", "{\"a\":1}}", "\"tab\there\"", "NaN", "Infinity")
        for (text in bad) {
            val e = assertThrows(JsonException::class.java, { Json.parse(text) }, "accepted: $text")
            assertTrue(e.message!!.startsWith("invalid JSON at offset "), e.message)
        }
        assertThrows(JsonException::class.java) { Json.parse(byteArrayOf(0x7B, 0xC3.toByte(), 0x28, 0x7D)) } // not UTF-8
        // a byte-order mark: skipped in bytes (Python's json.loads of bytes, the manifest readers), refused in text
        assertThrows(JsonException::class.java) { Json.parse("\uFEFF{}") }
        assertEquals(emptyMap<String, Any?>(), Json.parse(byteArrayOf(0xEF.toByte(), 0xBB.toByte(), 0xBF.toByte()) + "{}".toByteArray()))
        assertThrows(JsonException::class.java) { Json.parse(byteArrayOf(0xEF.toByte(), 0xBB.toByte(), 0xBF.toByte())) }
    }

    @Test
    fun deepNestingIsRefusedNotAStackOverflow() {
        val deep = "[".repeat(100_000) + "]".repeat(100_000)
        val e = assertThrows(JsonException::class.java) { Json.parse(deep) }
        assertTrue(e.message!!.contains("nesting deeper than 256"), e.message)
        assertEquals(1, (Json.parse("[".repeat(256) + "1" + "]".repeat(256)) as List<*>).size)
    }

    @Test
    fun typedAccessNamesThePath() {
        val root = JsonPath.of(Json.parse("""{"input": {"shape": [1, 4, "64"]}, "n": 2.0, "f": 2.5}"""), "manifest")
        assertEquals(2, root["n"].int())
        val e = assertThrows(JsonException::class.java) { root["input"]["shape"].intArray() }
        assertEquals("manifest.input.shape[2]: expected an integer, found a string", e.message)
        assertEquals("manifest: missing key \"labels\"", assertThrows(JsonException::class.java) { root["labels"] }.message)
        assertThrows(JsonException::class.java) { root["f"].int() }
    }

    @Test
    fun readsEveryGoldenJsonFile() {
        for (name in listOf("manifest.json", "video.json", "sampling.json", "latency.json", "logits.json")) {
            assertTrue(Json.parse(Golden.bytes(name)) is Map<*, *>, name)
        }
        val logits = Golden.json("logits.json")["logits"].doubleArray()
        assertEquals(51, logits.size)
    }
}
