package dev.squeezemobile.core

import java.util.zip.GZIPInputStream

/** Golden files written by android_demo/tools/make_golden.py (test resources under /golden). */
object Golden {
    fun bytes(name: String): ByteArray {
        val stream = Golden::class.java.getResourceAsStream("/golden/$name")
            ?: throw AssertionError("golden file $name not on the classpath; run android_demo/tools/make_golden.py")
        val raw = stream.use { it.readBytes() }
        return if (name.endsWith(".gz")) GZIPInputStream(raw.inputStream()).use { it.readBytes() } else raw
    }

    fun text(name: String): String = String(bytes(name), Charsets.UTF_8)

    fun json(name: String): JsonPath = JsonPath.of(Json.parse(bytes(name)), name)

    val video: JsonPath by lazy { json("video.json") }

    /** The decoded source frames at the sampled indices, one packed RGB frame each. */
    val sourceFrames: List<RgbFrame> by lazy {
        val w = video["width"].int()
        val h = video["height"].int()
        val all = bytes("frames_src.rgb.gz")
        val n = video["frames"].int()
        check(all.size == n * w * h * 3) { "frames_src.rgb.gz has ${all.size} bytes" }
        List(n) { t -> RgbFrame.packed(all, w, h, offset = t * w * h * 3) }
    }

    fun floatsLE(name: String): FloatArray {
        val b = java.nio.ByteBuffer.wrap(bytes(name)).order(java.nio.ByteOrder.LITTLE_ENDIAN)
        return FloatArray(b.remaining() / 4) { b.getFloat() }
    }
}

/** Index and count of the bytes that differ, for a readable failure message. */
fun diffBytes(expected: ByteArray, actual: ByteArray): String? {
    if (expected.size != actual.size) return "sizes differ: expected ${expected.size} bytes, got ${actual.size}"
    var first = -1
    var count = 0
    for (i in expected.indices) if (expected[i] != actual[i]) {
        if (first < 0) first = i
        count++
    }
    if (count == 0) return null
    return "$count of ${expected.size} bytes differ; first at $first: expected ${expected[first].toInt() and 0xFF}, got ${actual[first].toInt() and 0xFF}"
}
