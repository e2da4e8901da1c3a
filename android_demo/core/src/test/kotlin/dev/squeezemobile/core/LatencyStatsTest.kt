package dev.squeezemobile.core

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Test

/** Latency statistics against bench/stats.py's summarize (numpy percentiles) on the same numbers. */
class LatencyStatsTest {
    @Test
    fun summarizeMatchesBenchStats() {
        val cases = Golden.json("latency.json")["cases"].list()
        assertEquals(3, cases.size)
        for (c in cases) {
            val s = LatencyStats.summarize(c["latencies_s"].doubleArray())
            val tol = 1e-12
            assertEquals(c["runs"].int(), s.runs)
            assertEquals(c["p50_ms"].double(), s.p50Ms, tol)
            assertEquals(c["p90_ms"].double(), s.p90Ms, tol)
            assertEquals(c["p99_ms"].double(), s.p99Ms, tol)
            assertEquals(c["min_ms"].double(), s.minMs, tol)
            assertEquals(c["max_ms"].double(), s.maxMs, tol)
            assertEquals(c["clips_per_s"].double(), s.clipsPerS, 1e-9)
        }
    }

    @Test
    fun percentilesAndWindow() {
        val v = doubleArrayOf(4.0, 1.0, 3.0, 2.0)
        assertEquals(2.5, LatencyStats.median(v), 0.0)
        assertEquals(1.0, LatencyStats.percentile(v, 0.0), 0.0)
        assertEquals(4.0, LatencyStats.percentile(v, 100.0), 0.0)
        assertEquals(3.7, LatencyStats.percentile(v, 90.0), 1e-12)
        val w = LatencyWindow(3)
        assertNull(w.summary())
        for (ms in listOf(100, 10, 20, 30)) w.addNanos(ms * 1_000_000L)
        assertEquals(listOf(0.01, 0.02, 0.03), w.valuesSeconds().toList()) // the oldest (100 ms) left the window
        assertEquals(20.0, w.summary()!!.p50Ms, 1e-9)
    }
}
