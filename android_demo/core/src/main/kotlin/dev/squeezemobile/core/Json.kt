package dev.squeezemobile.core

/**
 * A small, strict JSON reader (RFC 8259) for manifest.json and golden files: no dependency, nothing the
 * Android framework or a desktop JVM has to provide.
 *
 * Values map to Kotlin types: object -> Map<String, Any?> (key order kept; a repeated key keeps the last
 * value, as Python's json does), array -> List<Any?>, string -> String, integer literal -> Long (Double when
 * it does not fit), other number -> Double, true/false -> Boolean, null -> null.
 * Malformed input raises [JsonException] with the offset; nesting deeper than [maxDepth] is refused rather
 * than overflowing the stack.
 */
class JsonException(message: String) : IllegalArgumentException(message)

object Json {
    const val DEFAULT_MAX_DEPTH = 256

    fun parse(text: String, maxDepth: Int = DEFAULT_MAX_DEPTH): Any? {
        val p = Parser(text, maxDepth)
        p.skipWhitespace()
        val value = p.readValue(0)
        p.skipWhitespace()
        if (!p.atEnd()) p.fail("unexpected ${p.describeHere()} after the JSON value")
        return value
    }

    /**
     * Parse UTF-8 bytes. A leading byte-order mark is skipped, as Python's json.loads of bytes and the Python manifest
     * readers skip it (a Windows editor writes one); in a String ([parse] of text) it is refused, as json.loads of str does.
     */
    fun parse(bytes: ByteArray, maxDepth: Int = DEFAULT_MAX_DEPTH): Any? {
        val decoder = Charsets.UTF_8.newDecoder()
            .onMalformedInput(java.nio.charset.CodingErrorAction.REPORT)
            .onUnmappableCharacter(java.nio.charset.CodingErrorAction.REPORT)
        val bom = bytes.size >= 3 && bytes[0] == 0xEF.toByte() && bytes[1] == 0xBB.toByte() && bytes[2] == 0xBF.toByte()
        val text = try {
            decoder.decode(java.nio.ByteBuffer.wrap(bytes, if (bom) 3 else 0, bytes.size - if (bom) 3 else 0)).toString()
        } catch (e: java.nio.charset.CharacterCodingException) {
            throw JsonException("JSON text is not valid UTF-8")
        }
        return parse(text, maxDepth)
    }

    private class Parser(val s: String, val maxDepth: Int) {
        var pos = 0

        fun atEnd() = pos >= s.length

        fun fail(what: String): Nothing = throw JsonException("invalid JSON at offset $pos: $what")

        fun describeHere(): String = if (atEnd()) "end of text" else "character '${s[pos]}'"

        fun skipWhitespace() {
            while (pos < s.length) {
                val c = s[pos]
                if (c == ' ' || c == '\t' || c == '\n' || c == '\r') pos++ else break
            }
        }

        fun readValue(depth: Int): Any? {
            if (atEnd()) fail("unexpected end of text, expected a value")
            return when (val c = s[pos]) {
                '{' -> readObject(depth + 1)
                '[' -> readArray(depth + 1)
                '"' -> readString()
                't' -> readWord("true", true)
                'f' -> readWord("false", false)
                'n' -> readWord("null", null)
                else -> if (c == '-' || c in '0'..'9') readNumber() else fail("unexpected ${describeHere()}, expected a value")
            }
        }

        private fun checkDepth(depth: Int) {
            if (depth > maxDepth) fail("nesting deeper than $maxDepth levels")
        }

        private fun readObject(depth: Int): Map<String, Any?> {
            checkDepth(depth)
            pos++ // '{'
            val out = LinkedHashMap<String, Any?>()
            skipWhitespace()
            if (!atEnd() && s[pos] == '}') {
                pos++
                return out
            }
            while (true) {
                skipWhitespace()
                if (atEnd() || s[pos] != '"') fail("expected a string key, found ${describeHere()}")
                val key = readString()
                skipWhitespace()
                if (atEnd() || s[pos] != ':') fail("expected ':' after key \"$key\", found ${describeHere()}")
                pos++
                skipWhitespace()
                out.remove(key) // a repeated key: the last value wins and takes the last position
                out[key] = readValue(depth)
                skipWhitespace()
                if (atEnd()) fail("unexpected end of text inside an object")
                when (s[pos]) {
                    ',' -> pos++
                    '}' -> { pos++; return out }
                    else -> fail("expected ',' or '}' in an object, found ${describeHere()}")
                }
            }
        }

        private fun readArray(depth: Int): List<Any?> {
            checkDepth(depth)
            pos++ // '['
            val out = ArrayList<Any?>()
            skipWhitespace()
            if (!atEnd() && s[pos] == ']') {
                pos++
                return out
            }
            while (true) {
                skipWhitespace()
                out.add(readValue(depth))
                skipWhitespace()
                if (atEnd()) fail("unexpected end of text inside an array")
                when (s[pos]) {
                    ',' -> pos++
                    ']' -> { pos++; return out }
                    else -> fail("expected ',' or ']' in an array, found ${describeHere()}")
                }
            }
        }

        private fun readWord(word: String, value: Any?): Any? {
            if (!s.startsWith(word, pos)) fail("unexpected ${describeHere()}, expected a value")
            pos += word.length
            return value
        }

        private fun readString(): String {
            pos++ // opening quote
            val sb = StringBuilder()
            while (true) {
                if (atEnd()) fail("unterminated string")
                val c = s[pos++]
                when {
                    c == '"' -> return sb.toString()
                    c == '\\' -> {
                        if (atEnd()) fail("unterminated escape")
                        when (val e = s[pos++]) {
                            '"' -> sb.append('"')
                            '\\' -> sb.append('\\')
                            '/' -> sb.append('/')
                            'b' -> sb.append('\b')
                            'f' -> sb.append('\u000C')
                            'n' -> sb.append('\n')
                            'r' -> sb.append('\r')
                            't' -> sb.append('\t')
                            'u' -> sb.append(readHex4())
                            else -> { pos--; fail("invalid escape '\\$e'") }
                        }
                    }
                    c < ' ' -> { pos--; fail("control character U+%04X inside a string".format(c.code)) }
                    else -> sb.append(c)
                }
            }
        }

        // \uXXXX as a UTF-16 unit: surrogate pairs arrive as two escapes and join in the StringBuilder
        private fun readHex4(): Char {
            if (pos + 4 > s.length) fail("truncated \\u escape")
            var v = 0
            for (i in 0 until 4) {
                val d = Character.digit(s[pos + i], 16)
                if (d < 0) fail("invalid \\u escape")
                v = v * 16 + d
            }
            pos += 4
            return v.toChar()
        }

        private fun readNumber(): Any {
            val start = pos
            if (s[pos] == '-') pos++
            if (atEnd()) fail("truncated number")
            if (s[pos] == '0') {
                pos++
            } else if (s[pos] in '1'..'9') {
                while (!atEnd() && s[pos] in '0'..'9') pos++
            } else {
                fail("invalid number")
            }
            var integral = true
            if (!atEnd() && s[pos] == '.') {
                integral = false
                pos++
                if (atEnd() || s[pos] !in '0'..'9') fail("digits expected after the decimal point")
                while (!atEnd() && s[pos] in '0'..'9') pos++
            }
            if (!atEnd() && (s[pos] == 'e' || s[pos] == 'E')) {
                integral = false
                pos++
                if (!atEnd() && (s[pos] == '+' || s[pos] == '-')) pos++
                if (atEnd() || s[pos] !in '0'..'9') fail("digits expected in the exponent")
                while (!atEnd() && s[pos] in '0'..'9') pos++
            }
            val literal = s.substring(start, pos)
            if (integral) literal.toLongOrNull()?.let { return it }
            return literal.toDouble() // correctly rounded, as Python's float()
        }
    }
}

/** Typed access to parsed JSON with one-line errors naming the path ("input.shape[2]"). */
class JsonPath(val value: Any?, val path: String) {
    private fun fail(expected: String): Nothing =
        throw JsonException("$path: expected $expected, found ${describe(value)}")

    val isNull get() = value == null

    fun obj(): Map<String, Any?> {
        @Suppress("UNCHECKED_CAST")
        return value as? Map<String, Any?> ?: fail("an object")
    }

    fun has(key: String): Boolean = obj().containsKey(key)

    operator fun get(key: String): JsonPath {
        val o = obj()
        if (!o.containsKey(key)) throw JsonException("$path: missing key \"$key\"")
        return JsonPath(o[key], child(key))
    }

    fun opt(key: String): JsonPath? = obj().let { if (it.containsKey(key)) JsonPath(it[key], child(key)) else null }

    fun list(): List<JsonPath> {
        val l = value as? List<*> ?: fail("an array")
        return l.mapIndexed { i, v -> JsonPath(v, "$path[$i]") }
    }

    fun string(): String = value as? String ?: fail("a string")

    fun stringOrNull(): String? = if (value == null) null else string()

    fun bool(): Boolean = value as? Boolean ?: fail("true or false")

    fun long(): Long = when (value) {
        is Long -> value
        is Double -> if (value == Math.floor(value) && Math.abs(value) < 9.0e15) value.toLong() else fail("an integer")
        else -> fail("an integer")
    }

    fun int(): Int {
        val v = long()
        if (v < Int.MIN_VALUE || v > Int.MAX_VALUE) fail("an integer in 32-bit range")
        return v.toInt()
    }

    fun double(): Double = when (value) {
        is Long -> value.toDouble()
        is Double -> value
        else -> fail("a number")
    }

    fun intArray(): IntArray = list().map { it.int() }.toIntArray()

    fun doubleArray(): DoubleArray = list().map { it.double() }.toDoubleArray()

    private fun child(key: String) = if (path.isEmpty()) key else "$path.$key"

    companion object {
        fun of(value: Any?, path: String = "") = JsonPath(value, path)

        fun describe(v: Any?): String = when (v) {
            null -> "null"
            is Map<*, *> -> "an object"
            is List<*> -> "an array"
            is String -> "a string"
            is Boolean -> "$v"
            is Long -> "the integer $v"
            is Double -> "the number $v"
            else -> v.javaClass.simpleName
        }
    }
}
