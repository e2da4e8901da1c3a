package dev.squeezemobile.core

/**
 * The centroid lookup's CPU fallback (squeezed_attention/lookup_numpy.py, same algorithm as lookup.py): which
 * clustered context keys each head attends to, for a runtime whose graph takes the kept indices as an input.
 *
 * Cluster scores, in float64 (the Python side scores in float64 too, so both rank clusters the same way):
 *     A_qk = q . c_k / sqrt(d),  S_qk = exp(A_qk) / sum_l N_l exp(A_ql)  (empty clusters: 0),  S_k = mean_q S_qk
 * Clusters are ranked by score (descending, ties by cluster index) and keys are taken cluster by cluster in that
 * order (a cluster's keys in position order): a fixed number ("budget") or every key of a cluster whose score
 * passes a calibrated threshold ("threshold", padded to the largest head and masked). Hierarchical: level-1
 * centroids are scored first and only the children of the best ones.
 */
class LookupSpec(
    /** "budget" (fixed count) or "threshold" */
    val mode: String = "budget",
    val budgetKeys: Int = 0,
    val threshold: Double = 0.0,
    /** one selection per query head (true) or per KV group, the group's queries pooled (false) */
    val perQueryHead: Boolean = false,
    val hierarchical: Boolean = false,
    val level1Keep: Int = 0,
) {
    init {
        require(mode == "budget" || mode == "threshold") { "lookup mode must be budget or threshold, not $mode" }
    }
}

/**
 * indices: per selecting head, ascending key positions (threshold mode: valid ones first); valid: per head, a
 * prefix mask (null in budget mode); centroidsScored: centroids scored per selecting head (the lookup's work).
 */
class LookupSelection(val indices: Array<LongArray>, val valid: Array<BooleanArray>?, val centroidsScored: Double)

/** The pack's lookup tables (LookupTables.build / NumpyTables), built once when a pack is attached. */
class CentroidLookup(
    val layers: Int,
    val kvHeads: Int,
    val headDim: Int,
    val groupSize: Int,
    val numClusters: Int,
    val numClustered: Int,
    /** context position of the first clustered key (the sink tokens come before) */
    val firstPosition: Int,
    /** [L, H, K, D] dequantized centroids as float64 */
    private val centroids: DoubleArray,
    private val counts: LongArray,
    /** [L, H, Nc]: context positions grouped by cluster, ascending within a cluster */
    private val orderByCluster: LongArray,
    private val clusterStart: LongArray,
    val level1Clusters: Int,
    private val l1Centroids: DoubleArray?,
    private val l1Counts: LongArray?,
    /** [L, H, K1, Cmax] child cluster ids, padded with K */
    private val children: IntArray?,
    private val maxChildren: Int,
) {
    val hasLevel1: Boolean get() = l1Centroids != null

    /** Cluster scores [Hs][K] for one layer and the number of centroids scored per head (score_layer). */
    fun scoreLayer(layer: Int, queries: FloatArray, numQueryHeads: Int, spec: LookupSpec): Pair<Array<DoubleArray>, Double> {
        val d = headDim
        val t = queries.size / (numQueryHeads * d)
        require(queries.size == numQueryHeads * t * d && t > 0) { "queries must be [query heads, tokens, $d]" }
        require(numQueryHeads == kvHeads * groupSize) { "$numQueryHeads query heads, the pack's model has ${kvHeads * groupSize}" }
        val hs = if (spec.perQueryHead) numQueryHeads else kvHeads
        val q = if (spec.perQueryHead) t else groupSize * t // queries per selecting head
        val scale = Math.sqrt(d.toDouble())
        val scaled = DoubleArray(queries.size) { queries[it].toDouble() / scale }
        val kvOf = { s: Int -> if (spec.perQueryHead) s / groupSize else s }
        val k = numClusters
        if (!spec.hierarchical) {
            val scores = Array(hs) { s ->
                val g = layer * kvHeads + kvOf(s)
                clusterScores(scaled, s * q * d, q, d, centroids, g * k * d, counts, g * k, k, null)
            }
            return scores to k.toDouble()
        }
        val l1c = l1Centroids ?: throw PackException("this context pack has no level-1 clusters; build it with --hierarchical")
        val k1 = level1Clusters
        var scoredChildren = 0L
        val scores = Array(hs) { s ->
            val g = layer * kvHeads + kvOf(s)
            val logDen = DoubleArray(q)
            val l1 = clusterScores(scaled, s * q * d, q, d, l1c, g * k1 * d, l1Counts!!, g * k1, k1, logDen)
            val kept = stableDescending(l1).take(spec.level1Keep)
            val out = DoubleArray(k) { -1.0 } // unscored clusters rank last
            for (parent in kept) {
                for (slot in 0 until maxChildren) {
                    val child = children!![(g * k1 + parent) * maxChildren + slot]
                    if (child >= k) continue // padding: only real children are scored
                    var sum = 0.0
                    for (i in 0 until q) {
                        val dot = dot(scaled, (s * q + i) * d, centroids, (g * k + child) * d, d)
                        sum += Math.exp(dot - logDen[i])
                    }
                    out[child] = sum / q
                    scoredChildren++
                }
            }
            out
        }
        return scores to (k1 + scoredChildren.toDouble() / hs)
    }

    /** select_keys: the kept key positions per selecting head for one layer; queries are post-RoPE [Hq, T, D]. */
    fun select(layer: Int, queries: FloatArray, numQueryHeads: Int, spec: LookupSpec): LookupSelection {
        val (scores, scored) = scoreLayer(layer, queries, numQueryHeads, spec)
        val k = numClusters
        val groupOf = { s: Int -> layer * kvHeads + if (spec.perQueryHead) s / groupSize else s }
        if (spec.mode == "budget") {
            val indices = Array(scores.size) { s -> rankedFill(scores[s], groupOf(s), spec.budgetKeys).also { it.sort() } }
            return LookupSelection(indices, null, scored)
        }
        val kept = IntArray(scores.size) { s ->
            var sum = 0L
            for (c in 0 until k) if (scores[s][c] >= spec.threshold) sum += counts[groupOf(s) * k + c]
            sum.toInt()
        }
        val length = kept.maxOrNull() ?: 0
        val end = firstPosition.toLong() + numClustered
        val indices = Array(scores.size) { s ->
            val filled = rankedFill(scores[s], groupOf(s), length)
            // ascending positions, valid keys first (so `valid` stays a prefix mask)
            val sortKey = LongArray(length) { i -> filled[i] + if (i < kept[s]) 0L else end }
            val idx = (0 until length).sortedWith { a, b -> sortKey[a].compareTo(sortKey[b]) }
            LongArray(length) { filled[idx[it]] }
        }
        val valid = Array(scores.size) { s -> BooleanArray(length) { it < kept[s] } }
        return LookupSelection(indices, valid, scored)
    }

    /** ranked_fill: [length] key positions, cluster by cluster in descending score order. */
    private fun rankedFill(scores: DoubleArray, g: Int, length: Int): LongArray {
        val k = numClusters
        val rank = stableDescending(scores)
        val out = LongArray(length)
        var slot = 0
        for (cluster in rank) {
            val n = counts[g * k + cluster].toInt()
            val start = clusterStart[g * k + cluster].toInt()
            for (within in 0 until n) {
                if (slot == length) return out
                out[slot++] = orderByCluster[g * numClustered + start + within]
            }
        }
        if (slot < length) throw IllegalArgumentException("$length keys asked for, the head has only $slot clustered keys")
        return out
    }

    companion object {
        /** Indices by descending score, ties in index order (np.argsort(-scores, kind="stable"); -0.0 == 0.0). */
        fun stableDescending(scores: DoubleArray): List<Int> =
            scores.indices.sortedWith { a, b -> if (scores[a] > scores[b]) -1 else if (scores[a] < scores[b]) 1 else 0 }

        private fun dot(a: DoubleArray, ai: Int, b: DoubleArray, bi: Int, d: Int): Double {
            var s = 0.0
            for (i in 0 until d) s += a[ai + i] * b[bi + i]
            return s
        }

        /**
         * cluster_scores for one selecting head: [q] queries of [d] values at qs[qAt..] against [k] centroids at c[cAt..] with
         * counts n[nAt..]; one exp per (query, cluster) with the peak over non-empty clusters. Fills [logDen]
         * (peak + log of the denominator, per query) when given.
         */
        private fun clusterScores(
            qs: DoubleArray, qAt: Int, q: Int, d: Int, c: DoubleArray, cAt: Int, n: LongArray, nAt: Int, k: Int,
            logDen: DoubleArray?,
        ): DoubleArray {
            val scores = DoubleArray(k)
            val w = DoubleArray(k)
            for (i in 0 until q) {
                var peak = Double.NEGATIVE_INFINITY
                for (j in 0 until k) {
                    w[j] = if (n[nAt + j] == 0L) Double.NEGATIVE_INFINITY else dot(qs, qAt + i * d, c, cAt + j * d, d)
                    if (w[j] > peak) peak = w[j]
                }
                var total = 0.0
                for (j in 0 until k) {
                    w[j] = Math.exp(w[j] - peak)
                    total += w[j] * n[nAt + j].toDouble()
                }
                val inv = 1.0 / total
                for (j in 0 until k) scores[j] += w[j] * inv
                if (logDen != null) logDen[i] = peak + Math.log(total)
            }
            for (j in 0 until k) scores[j] /= q.toDouble()
            return scores
        }

        /** The lookup tables of a pack (LookupTables.build): dequantized centroids, stable cluster order, starts. */
        fun fromPack(pack: ContextPack): CentroidLookup {
            val l = pack.layers
            val h = pack.kvHeads
            val d = pack.headDim
            val k = pack.numClusters
            val nc = pack.numClustered
            val heads = pack.modelConfig["num_heads"].int()
            val kv = pack.modelConfig["num_kv_heads"].int()
            val counts = pack["lookup.counts"].longs()
            val order = PackLayout.clusterOrder(pack["lookup.labels"].longs(), l * h, nc, pack.sinkTokens)
            val start = LongArray(counts.size)
            for (g in 0 until l * h) {
                var total = 0L
                for (c in 0 until k) {
                    start[g * k + c] = total
                    total += counts[g * k + c]
                }
            }
            val hasL1 = "lookup.level1_centroid_codes" in pack.tensors
            var k1 = 0
            var l1c: DoubleArray? = null
            var l1n: LongArray? = null
            var children: IntArray? = null
            var cmax = 0
            if (hasL1) {
                k1 = pack["lookup.level1_counts"].shape[2]
                l1c = pack.centroids("lookup.level1_").let { f -> DoubleArray(f.size) { f[it].toDouble() } }
                l1n = pack["lookup.level1_counts"].longs()
                val offsets = pack["lookup.level1_child_offsets"].longs() // [L, H, K1 + 1]
                cmax = 1
                for (g in 0 until l * h) for (p in 0 until k1) {
                    cmax = maxOf(cmax, (offsets[g * (k1 + 1) + p + 1] - offsets[g * (k1 + 1) + p]).toInt())
                }
                children = IntArray(l * h * k1 * cmax)
                for (g in 0 until l * h) for (p in 0 until k1) {
                    val first = offsets[g * (k1 + 1) + p]
                    val size = offsets[g * (k1 + 1) + p + 1] - first
                    for (s in 0 until cmax) children[(g * k1 + p) * cmax + s] = if (s < size) (first + s).toInt() else k
                }
            }
            val c = pack.centroids()
            return CentroidLookup(
                l, h, d, heads / kv, k, nc, pack.sinkTokens, DoubleArray(c.size) { c[it].toDouble() }, counts, order, start,
                k1, l1c, l1n, children, cmax,
            )
        }
    }
}
