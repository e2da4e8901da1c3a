package dev.squeezemobile.core

/**
 * The split lookup plan's CPU lookup (squeezed_attention/lookup_numpy.py `kept_rows`): the app's side of the
 * decoder manifest's `call_sequence` for lookup_plan "split". Between stage graphs `<step>_{s-1}` and `<step>_s`
 * it turns the scores of layer l = s - 1 into that stage's `kept_keys`, `kept_values` and `kept_bias` inputs, for
 * every KV head.
 *
 * Per head: clusters are ranked by score, best first, stable on ties (lower cluster index first; -0.0 ties 0.0,
 * NaN ranks last, as numpy's argsort); their rows fill the [maxKeep] slots cluster by cluster (a cluster's rows in
 * table order) until min(keepKeys, keys of the head) are taken. A decoder with followed keys (`with_followed`) then
 * writes the rows the previous call pointed to that the selection did not keep, each once and in order, into the
 * next unused slots (the loop selects keepKeys - F, so F slots are free for them).
 *
 * [keys] / [values]: [Hkv, maxKeep, D] the kept keys and values; unused slots hold the table's row 0 (head 0's first
 * row, as numpy's gather of row max(-1, 0); masked). [bias]: [Hkv, maxKeep + K]: per slot 0 (used, followed rows
 * included) / -inf (unused), then per cluster 0 when it is summarised (ranked after the last cluster that filled a
 * slot of the selection; followed rows change none) / -inf; the next stage graph adds log N to the second part.
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
    /**
     * [Hkv, maxKeep] the flat row of the clustered tables each slot holds (head h's row r: h * Nc + r; -1 unused):
     * what [followPointer] maps the next stage's follow_weights through.
     */
    val slotRows: LongArray,
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
         * Nc, the rows per head. [followRows]: [Hkv, F] flat rows to attend besides the selection (-1: none), or null.
         */
        fun compute(
            scores: FloatArray, counts: LongArray, clusterStart: LongArray, clusteredKeys: FloatArray,
            clusteredValues: FloatArray, kvHeads: Int, numClustered: Int, keepKeys: Int, maxKeep: Int,
            followRows: LongArray? = null,
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
            require(followRows == null || followRows.size % kvHeads == 0) {
                "${followRows?.size} followed rows for $kvHeads KV heads"
            }
            val follow = (followRows?.size ?: 0) / kvHeads
            val keptKeys = FloatArray(kvHeads * maxKeep * w)
            val keptValues = FloatArray(kvHeads * maxKeep * w)
            val bias = FloatArray(kvHeads * (maxKeep + k))
            val slotRows = LongArray(kvHeads * maxKeep) { -1L }
            val rank = IntArray(k)
            val keys = LongArray(k)
            for (h in 0 until kvHeads) {
                rankDescending(scores, h * k, k, rank, keys)
                var total = 0L
                for (c in 0 until k) {
                    require(counts[h * k + c] >= 0) { "negative count at head $h, cluster $c" }
                    total += counts[h * k + c]
                }
                val used = minOf(keepKeys.toLong(), total, maxKeep.toLong()).coerceAtLeast(0L).toInt()
                val out = h * maxKeep * w
                val rows = h * maxKeep // this head's slots in slotRows
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
                    val row = h * numClustered + first.toInt() // a cluster's rows are consecutive: one copy each
                    System.arraycopy(clusteredKeys, row * w, keptKeys, out + slot * w, take * w)
                    System.arraycopy(clusteredValues, row * w, keptValues, out + slot * w, take * w)
                    for (i in 0 until take) slotRows[rows + slot + i] = (row + i).toLong()
                    slot += take
                    lastUsed = p
                }
                // with_followed: each followed row the slots do not hold yet, once, in the next unused slot
                for (f in 0 until follow) {
                    val r = followRows!![h * follow + f]
                    if (r < 0 || holds(slotRows, rows, rows + slot, r)) continue
                    require(slot < maxKeep) {
                        "no slot left for a followed row: $maxKeep slots, the selection used $used; pass keep_keys - follow_keys"
                    }
                    require(r < kvHeads.toLong() * numClustered) { "followed row $r is outside the $kvHeads * $numClustered clustered rows" }
                    System.arraycopy(clusteredKeys, r.toInt() * w, keptKeys, out + slot * w, w)
                    System.arraycopy(clusteredValues, r.toInt() * w, keptValues, out + slot * w, w)
                    slotRows[rows + slot++] = r
                }
                for (s in slot until maxKeep) { // the table's row 0, masked
                    System.arraycopy(clusteredKeys, 0, keptKeys, out + s * w, w)
                    System.arraycopy(clusteredValues, 0, keptValues, out + s * w, w)
                }
                val b = h * (maxKeep + k)
                for (s in slot until maxKeep) bias[b + s] = Float.NEGATIVE_INFINITY
                for (p in 0 until k) bias[b + maxKeep + rank[p]] = if (p > lastUsed) 0f else Float.NEGATIVE_INFINITY
            }
            return KeptRows(keptKeys, keptValues, bias, kvHeads, maxKeep, k, w, slotRows)
        }

        /**
         * Where the next decode step follows (lookup_numpy.follow_pointer): of the flat rows a stage's last token
         * attended, [slotRows] [Hkv, n] (-1 unused) with [weights] [Hkv, n] (the stage's follow_weights: softmax
         * weights summed over the KV head's query heads), the rows after the [follow] largest ([nextRows]:
         * next_rows_l, [PackLayout.nextRows]), ranked best first, stable on ties (the lower slot first); -1 where the
         * weight is not above 0 (a masked slot) or the slot is unused or no row follows. Returns [Hkv, follow].
         */
        fun followPointer(weights: FloatArray, slotRows: LongArray, nextRows: LongArray, kvHeads: Int, follow: Int): LongArray {
            require(kvHeads > 0 && follow >= 0) { "kvHeads ($kvHeads) must be positive, follow ($follow) not negative" }
            val n = weights.size / kvHeads
            require(weights.size == kvHeads * n && slotRows.size == weights.size) {
                "${weights.size} weights and ${slotRows.size} slot rows are not both [$kvHeads, n]"
            }
            require(follow <= n) { "$follow followed keys of $n slots" }
            val pointer = LongArray(kvHeads * follow)
            val rank = IntArray(n)
            val keys = LongArray(n)
            for (h in 0 until kvHeads) {
                rankDescending(weights, h * n, n, rank, keys)
                for (p in 0 until follow) {
                    val s = h * n + rank[p]
                    val row = slotRows[s]
                    require(row < nextRows.size) { "slot row $row is outside the ${nextRows.size} next_rows" }
                    pointer[h * follow + p] = if (weights[s] > 0f && row >= 0) nextRows[row.toInt()] else -1L
                }
            }
            return pointer
        }

        /**
         * The same on the loop's tensors: scores [Hkv, K], counts_l, cluster_start_l, and clustered_keys_l /
         * clustered_values_l as the pack's context inputs lay them out, flat [Hkv * Nc, D] (head by head, Nc rows per
         * head; [Hkv, Nc, D] views of the same rows are taken too).
         */
        fun compute(
            scores: DecoderTensor.Float32, counts: DecoderTensor.Int64, clusterStart: DecoderTensor.Int64,
            clusteredKeys: DecoderTensor.Float32, clusteredValues: DecoderTensor.Float32, keepKeys: Int, maxKeep: Int,
            followRows: LongArray? = null,
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
                numClustered, keepKeys, maxKeep, followRows)
        }

        /** Whether rows[from until to] holds [row] (a primitive loop: no boxed Int per slot, as a range's any() would make). */
        private fun holds(rows: LongArray, from: Int, to: Int, row: Long): Boolean {
            for (i in from until to) if (rows[i] == row) return true
            return false
        }

        /**
         * Fills [rank] with the [k] indices of scores[at..] best first (np.argsort(-scores, kind="stable"): clusters
         * by score, slots by follow weight): one primitive sort of (descending-order key << 31 | index), so ties keep
         * index order without boxing.
         */
        internal fun rankDescending(scores: FloatArray, at: Int, k: Int, rank: IntArray, keys: LongArray) {
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
