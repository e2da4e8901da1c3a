package dev.squeezemobile.core

/**
 * The split lookup plan's CPU lookup (squeezed_attention/lookup_numpy.py `kept_rows`): the app's side of the
 * decoder manifest's `call_sequence` for lookup_plan "split". Between stage graphs `<step>_{s-1}` and `<step>_s`
 * it turns the scores of layer l = s - 1 into that stage's `kept_keys`, `kept_values` and `kept_bias` inputs, for
 * every KV head.
 *
 * Per head: clusters are ranked by score, best first, stable on ties (lower cluster index first; -0.0 ties 0.0,
 * NaN ranks last, as numpy's argsort); their rows fill the [maxKeep] slots cluster by cluster (a cluster's rows in
 * table order) until min(keepKeys, keys of the head) are taken.
 *
 * [keys] / [values]: [Hkv, maxKeep, D] the kept keys and values; unused slots hold the head's row 0 (masked).
 * [bias]: [Hkv, maxKeep + K]: per slot 0 (used) / -inf (unused), then per cluster 0 when it is summarised (ranked
 * after the last cluster that filled a used slot) / -inf; the next stage graph adds log N to the second part.
 */
class KeptRows(
    val keys: FloatArray,
    val values: FloatArray,
    val bias: FloatArray,
    val kvHeads: Int,
    val maxKeep: Int,
    val numClusters: Int,
    /** the head dim D: one key (or value) row */
    val headDim: Int,
) {
    /** The stage graph's inputs "kept_keys", "kept_values" and "kept_bias". */
    fun inputs(): Map<String, DecoderTensor> = linkedMapOf(
        "kept_keys" to DecoderTensor.Float32(keys, intArrayOf(kvHeads, maxKeep, headDim)),
        "kept_values" to DecoderTensor.Float32(values, intArrayOf(kvHeads, maxKeep, headDim)),
        "kept_bias" to DecoderTensor.Float32(bias, intArrayOf(kvHeads, maxKeep + numClusters)),
    )

    companion object {
        /**
         * scores [Hkv, K] (the previous stage's output), counts / clusterStart [Hkv, K] (the pack's context inputs
         * counts_l / cluster_start_l, padded with empty clusters), clusteredKeys / clusteredValues [Hkv * Nc, D]
         * (clustered_keys_l / clustered_values_l: rows cluster by cluster, head by head), all flat; [numClustered] =
         * Nc, the rows per head.
         */
        fun compute(
            scores: FloatArray, counts: LongArray, clusterStart: LongArray, clusteredKeys: FloatArray,
            clusteredValues: FloatArray, kvHeads: Int, numClustered: Int, keepKeys: Int, maxKeep: Int,
        ): KeptRows {
            require(kvHeads > 0 && numClustered > 0 && maxKeep >= 0) {
                "kvHeads ($kvHeads) and numClustered ($numClustered) must be positive, maxKeep ($maxKeep) not negative"
            }
            val k = scores.size / kvHeads
            require(k > 0 && scores.size == kvHeads * k) { "${scores.size} scores for $kvHeads KV heads" }
            require(counts.size == kvHeads * k && clusterStart.size == kvHeads * k) {
                "counts (${counts.size}) and clusterStart (${clusterStart.size}) must be [$kvHeads, $k] like the scores"
            }
            val w = clusteredKeys.size / (kvHeads * numClustered)
            require(w > 0 && clusteredKeys.size == kvHeads * numClustered * w && clusteredValues.size == clusteredKeys.size) {
                "${clusteredKeys.size} / ${clusteredValues.size} floats are not [$kvHeads * $numClustered, D] " +
                    "clustered_keys / clustered_values tables"
            }
            val keptKeys = FloatArray(kvHeads * maxKeep * w)
            val keptValues = FloatArray(kvHeads * maxKeep * w)
            val bias = FloatArray(kvHeads * (maxKeep + k))
            val rank = IntArray(k)
            val keys = LongArray(k)
            for (h in 0 until kvHeads) {
                rankClusters(scores, h * k, k, rank, keys)
                var total = 0L
                for (c in 0 until k) {
                    require(counts[h * k + c] >= 0) { "negative count at head $h, cluster $c" }
                    total += counts[h * k + c]
                }
                val used = minOf(keepKeys.toLong(), total, maxKeep.toLong()).coerceAtLeast(0L).toInt()
                val table = h * numClustered * w
                val out = h * maxKeep * w
                var slot = 0
                var lastUsed = -1 // ranked position of the last cluster that filled a used slot
                for (p in 0 until k) {
                    if (slot == used) break
                    val c = rank[p]
                    val take = minOf(counts[h * k + c], (used - slot).toLong()).toInt()
                    if (take == 0) continue
                    val first = clusterStart[h * k + c]
                    require(first >= 0 && first + take <= numClustered) {
                        "cluster $c of head $h starts at row $first with ${counts[h * k + c]} keys, outside its $numClustered rows"
                    }
                    System.arraycopy(clusteredKeys, table + first.toInt() * w, keptKeys, out + slot * w, take * w)
                    System.arraycopy(clusteredValues, table + first.toInt() * w, keptValues, out + slot * w, take * w)
                    slot += take
                    lastUsed = p
                }
                for (s in used until maxKeep) { // row 0, masked
                    System.arraycopy(clusteredKeys, table, keptKeys, out + s * w, w)
                    System.arraycopy(clusteredValues, table, keptValues, out + s * w, w)
                }
                val b = h * (maxKeep + k)
                for (s in used until maxKeep) bias[b + s] = Float.NEGATIVE_INFINITY
                for (p in 0 until k) bias[b + maxKeep + rank[p]] = if (p > lastUsed) 0f else Float.NEGATIVE_INFINITY
            }
            return KeptRows(keptKeys, keptValues, bias, kvHeads, maxKeep, k, w)
        }

        /**
         * The same on the loop's tensors: scores [Hkv, K], counts_l, cluster_start_l, and clustered_keys_l /
         * clustered_values_l as the pack's context inputs lay them out, flat [Hkv * Nc, D] (head by head, Nc rows per
         * head; [Hkv, Nc, D] views of the same rows are taken too).
         */
        fun compute(
            scores: DecoderTensor.Float32, counts: DecoderTensor.Int64, clusterStart: DecoderTensor.Int64,
            clusteredKeys: DecoderTensor.Float32, clusteredValues: DecoderTensor.Float32, keepKeys: Int, maxKeep: Int,
        ): KeptRows {
            require(scores.shape.size == 2 && scores.shape[0] > 0) {
                "scores ${scores.shape.contentToString()} must be [Hkv, K]"
            }
            val kvHeads = scores.shape[0]
            val cs = clusteredKeys.shape
            val fits = clusteredValues.shape.contentEquals(cs) && when (cs.size) {
                2 -> cs[0] > 0 && cs[0] % kvHeads == 0
                3 -> cs[0] == kvHeads && cs[1] > 0
                else -> false
            }
            require(fits) {
                "clustered_keys ${cs.contentToString()} / clustered_values ${clusteredValues.shape.contentToString()} must " +
                    "both be [Hkv * Nc, D] with rows for the scores' $kvHeads KV heads"
            }
            val numClustered = if (cs.size == 3) cs[1] else cs[0] / kvHeads
            require(counts.shape.contentEquals(scores.shape) && clusterStart.shape.contentEquals(scores.shape)) {
                "counts ${counts.shape.contentToString()} and cluster_start ${clusterStart.shape.contentToString()} " +
                    "must have the scores' shape ${scores.shape.contentToString()}"
            }
            return compute(scores.data, counts.data, clusterStart.data, clusteredKeys.data, clusteredValues.data, kvHeads,
                numClustered, keepKeys, maxKeep)
        }

        /**
         * Fills [rank] with the [k] clusters of scores[at..] best first (np.argsort(-scores, kind="stable")): one
         * primitive sort of (descending-order key << 31 | index), so ties keep index order without boxing.
         */
        internal fun rankClusters(scores: FloatArray, at: Int, k: Int, rank: IntArray, keys: LongArray) {
            for (c in 0 until k) keys[c] = (descendingKey(scores[at + c]) shl 31) or c.toLong()
            keys.sort(0, k)
            for (p in 0 until k) rank[p] = (keys[p] and 0x7FFF_FFFFL).toInt()
        }

        /** An unsigned 32-bit key, ascending for descending scores; -0.0 and 0.0 alike; every NaN last. */
        private fun descendingKey(score: Float): Long {
            if (score.isNaN()) return 0xFFFF_FFFFL
            val bits = java.lang.Float.floatToIntBits(if (score == 0f) 0f else score)
            val ascending = if (bits < 0) bits.inv() else bits or Int.MIN_VALUE // unsigned order == float order
            return ascending.inv().toLong() and 0xFFFF_FFFFL // below 0xFFFF_FFFF for every number (-inf: 0xFF80_0000)
        }
    }
}
