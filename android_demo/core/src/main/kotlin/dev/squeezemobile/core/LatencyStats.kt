package dev.squeezemobile.core

/**
 * Latency statistics as bench/stats.py reports them: medians and percentiles (numpy's default linear
 * interpolation), never means (phones throttle; one slow frame must not move the headline number).
 */
data class LatencySummary(
    val runs: Int,
    val p50Ms: Double,
    val p90Ms: Double,
    val p99Ms: Double,
    val minMs: Double,
    val maxMs: Double,
    /** clips per second at the median latency, times the batch */
    val clipsPerS: Double,
)

object LatencyStats {
    /** numpy.percentile(values, q) with the default 'linear' method; q in 0..100. */
    fun percentile(values: DoubleArray, q: Double): Double {
        require(values.isNotEmpty()) { "no values" }
        require(q in 0.0..100.0) { "percentile must be in 0..100, got $q" }
        val a = values.sortedArray()
        val pos = (a.size - 1) * (q / 100.0)
        val lo = Math.floor(pos).toInt()
        val hi = minOf(lo + 1, a.size - 1)
        val t = pos - lo
        val diff = a[hi] - a[lo]
        // numpy's _lerp: from the nearer end, so that t = 1 gives b exactly
        return if (t >= 0.5) a[hi] - diff * (1.0 - t) else a[lo] + diff * t
    }

    fun median(values: DoubleArray): Double = percentile(values, 50.0)

    /** bench.stats.summarize: latencies in seconds in, milliseconds out. */
    fun summarize(latenciesS: DoubleArray, batch: Int = 1): LatencySummary {
        require(latenciesS.isNotEmpty()) { "no latencies to summarize" }
        val ms = DoubleArray(latenciesS.size) { latenciesS[it] * 1e3 }
        val p50 = percentile(ms, 50.0)
        return LatencySummary(ms.size, p50, percentile(ms, 90.0), percentile(ms, 99.0), ms.min(), ms.max(), batch * 1e3 / p50)
    }
}

/** The last [capacity] latencies (a sliding window for the on-screen numbers); one thread writes it. */
class LatencyWindow(val capacity: Int = 100) {
    init {
        require(capacity > 0) { "capacity must be positive" }
    }

    private val values = DoubleArray(capacity)
    private var count = 0
    private var next = 0

    fun addSeconds(seconds: Double) {
        values[next] = seconds
        next = (next + 1) % capacity
        if (count < capacity) count++
    }

    fun addNanos(nanos: Long) = addSeconds(nanos / 1e9)

    val size: Int get() = count

    /** Oldest first. */
    fun valuesSeconds(): DoubleArray = DoubleArray(count) { values[(next - count + it + capacity) % capacity] }

    fun summary(batch: Int = 1): LatencySummary? = if (count == 0) null else LatencyStats.summarize(valuesSeconds(), batch)
}
