package dev.squeezemobile.core

/** One class of a top-k list. */
data class Prediction(val index: Int, val label: String?, val probability: Double)

/** From the model's logits to what the screen shows: softmax (the manifest's output layout says so) and top-k. */
object Classification {
    /** Numerically stable softmax in double precision (as numpy on float64 logits). */
    fun softmax(logits: FloatArray): DoubleArray = softmax(DoubleArray(logits.size) { logits[it].toDouble() })

    fun softmax(logits: DoubleArray): DoubleArray {
        require(logits.isNotEmpty()) { "no logits" }
        val max = logits.max()
        val e = DoubleArray(logits.size) { Math.exp(logits[it] - max) }
        val sum = e.sum()
        for (i in e.indices) e[i] /= sum
        return e
    }

    /** Indices of the k largest values, largest first; ties keep the lower index first (numpy's stable argsort of -p). */
    fun topKIndices(values: DoubleArray, k: Int): IntArray {
        require(k >= 0) { "k must be >= 0" }
        val n = minOf(k, values.size)
        // partial selection: k is small (5) and classes are few (<= 600); no full sort needed
        val out = IntArray(n)
        val taken = BooleanArray(values.size)
        for (r in 0 until n) {
            var best = -1
            for (i in values.indices) {
                if (taken[i]) continue
                // NaN ranks last
                if (best < 0 || (values[best].isNaN() && !values[i].isNaN()) || values[i] > values[best]) best = i
            }
            taken[best] = true
            out[r] = best
        }
        return out
    }

    /** Top-k predictions with their labels (null when the manifest has no label file or the index is past it). */
    fun topK(logits: FloatArray, k: Int, labels: List<String>? = null): List<Prediction> {
        val p = softmax(logits)
        return topKIndices(p, k).map { Prediction(it, labels?.getOrNull(it), p[it]) }
    }
}
