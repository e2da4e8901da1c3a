package dev.squeezemobile.core

import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

class FrameSamplingTest {
    private val cases = Golden.json("sampling.json")["cases"].list()

    @Test
    fun sampleIndicesMatchPythonExactly() {
        assertEquals(12, cases.size)
        for (c in cases) {
            val n = c["num_frames"].int()
            val t = c["clip_len"].int()
            val i = c["interval"].int()
            val k = c["num_clips"].int()
            val expected = c["indices"].list().map { it.intArray() }
            val actual = FrameSampling.sampleIndices(n, t, i, k)
            assertEquals(expected.size, actual.size)
            for (j in expected.indices) assertArrayEquals(expected[j], actual[j], "n=$n T=$t interval=$i clips=$k clip $j")
        }
    }

    @Test
    fun theVideoGoldenUsesTheSameIndices() {
        val v = Golden.video
        val idx = FrameSampling.sampleIndices(v["video_frames"].int(), v["frames"].int(), v["frame_interval"].int())[0]
        assertArrayEquals(v["indices"].intArray(), idx)
    }

    /** Streaming the frames of a file through the ring buffer gives Python's offline clip when its last frame arrives. */
    @Test
    fun streamingSamplerReproducesTheOfflineClip() {
        for (c in cases.filter { it["num_clips"].int() == 1 && it["num_frames"].int() >= it["clip_len"].int() * it["interval"].int() }) {
            val n = c["num_frames"].int()
            val t = c["clip_len"].int()
            val interval = c["interval"].int()
            val expected = c["indices"].list()[0].intArray().map { it.toLong() }.toLongArray()
            val sampler = FrameSampler<Int>(t, interval, FrameSampling.offlinePhase(n, t, interval))
            var matched = false
            for (frame in 0 until n) {
                sampler.offer { frame }
                if (frame.toLong() == expected.last()) {
                    assertTrue(sampler.isFull)
                    assertArrayEquals(expected, sampler.clipIndices(), "n=$n T=$t")
                    assertEquals(expected.map { it.toInt() }, sampler.clip()) // the stored frames, oldest first
                    matched = true
                }
            }
            assertTrue(matched, "n=$n T=$t: the clip's last frame never arrived")
        }
    }

    @Test
    fun ringBufferKeepsEveryNthFrameNewestTDeep() {
        val s = FrameSampler<String>(clipLen = 3, interval = 4, phase = 1)
        var converted = 0
        for (i in 0 until 10) {
            val want = s.wantsNext()
            assertEquals(i % 4 == 1, want)
            assertEquals(want, s.offer { converted++; "f$i" })
        }
        assertEquals(3, converted) // frames not kept are never converted
        assertEquals(10L, s.framesSeen)
        assertEquals(listOf("f1", "f5", "f9"), s.clip())
        assertTrue(s.isFull)
        for (i in 10 until 14) s.offer("f$i")
        assertEquals(listOf("f5", "f9", "f13"), s.clip())
        assertArrayEquals(longArrayOf(5, 9, 13), s.clipIndices())
        s.reset()
        assertFalse(s.isFull)
        assertEquals(0, s.size)
        s.offer("a")
        assertEquals(listOf("a"), FrameSampler<String>(2, 1).also { it.offer("a") }.clip())
        assertThrows(IllegalArgumentException::class.java) { FrameSampler<Int>(4, 4, phase = 4) }
        assertThrows(IllegalArgumentException::class.java) { FrameSampler<Int>(0, 4) }
    }
}
