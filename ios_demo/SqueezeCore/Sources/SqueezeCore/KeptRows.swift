// The split lookup plan's CPU lookup (squeezed_attention/lookup_numpy.py `kept_rows`): the app's side of the decoder
// manifest's call_sequence for lookup_plan "split". Between stage graphs <step>_{s-1} and <step>_s it turns the
// scores of layer l = s - 1 into that stage's kept_keys, kept_values and kept_bias inputs, for every KV head. Port of
// KeptRows.kt.
//
// Per head: clusters are ranked by score, best first, stable on ties (lower cluster index first; -0.0 ties 0.0, NaN
// ranks last, as numpy's argsort); their rows fill the maxKeep slots cluster by cluster (a cluster's rows in table
// order) until min(keepKeys, keys of the head) are taken.
//
// keys / values: [Hkv, maxKeep, D] the kept keys and values; unused slots hold the head's row 0 (masked).
// bias: [Hkv, maxKeep + K]: per slot 0 (used) / -inf (unused), then per cluster 0 when it is summarised (ranked after
// the last cluster that filled a used slot) / -inf; the next stage graph adds log N to the second part.

public struct KeptRows {
    public let keys: [Float]
    public let values: [Float]
    public let bias: [Float]
    public let kvHeads: Int
    public let maxKeep: Int
    public let numClusters: Int
    /// the head dim D: one key (or value) row
    public let headDim: Int

    /// The stage graph's inputs "kept_keys", "kept_values" and "kept_bias", in that order.
    public func inputs() throws -> [(name: String, tensor: DecoderTensor)] {
        [("kept_keys", .float32(try Float32Tensor(keys, shape: [kvHeads, maxKeep, headDim]))),
         ("kept_values", .float32(try Float32Tensor(values, shape: [kvHeads, maxKeep, headDim]))),
         ("kept_bias", .float32(try Float32Tensor(bias, shape: [kvHeads, maxKeep + numClusters])))]
    }

    /// scores [Hkv, K] (the previous stage's output), counts / clusterStart [Hkv, K] (the pack's context inputs
    /// counts_l / cluster_start_l, padded with empty clusters), clusteredKeys / clusteredValues [Hkv * Nc, D]
    /// (clustered_keys_l / clustered_values_l: rows cluster by cluster, head by head), all flat; numClustered = Nc, the
    /// rows per head.
    public static func compute(scores: [Float], counts: [Int64], clusterStart: [Int64], clusteredKeys: [Float],
                               clusteredValues: [Float], kvHeads: Int, numClustered: Int, keepKeys: Int,
                               maxKeep: Int) throws -> KeptRows {
        try require(kvHeads > 0 && numClustered > 0 && maxKeep >= 0,
                    "kvHeads (\(kvHeads)) and numClustered (\(numClustered)) must be positive, maxKeep (\(maxKeep)) not negative")
        let k = scores.count / kvHeads
        try require(k > 0 && scores.count == kvHeads * k, "\(scores.count) scores for \(kvHeads) KV heads")
        try require(counts.count == kvHeads * k && clusterStart.count == kvHeads * k,
                    "counts (\(counts.count)) and clusterStart (\(clusterStart.count)) must be [\(kvHeads), \(k)] like the scores")
        let w = clusteredKeys.count / (kvHeads * numClustered)
        try require(w > 0 && clusteredKeys.count == kvHeads * numClustered * w && clusteredValues.count == clusteredKeys.count,
                    "\(clusteredKeys.count) / \(clusteredValues.count) floats are not [\(kvHeads) * \(numClustered), D] " +
                    "clustered_keys / clustered_values tables")
        var keptKeys = [Float](repeating: 0, count: kvHeads * maxKeep * w)
        var keptValues = keptKeys
        var bias = [Float](repeating: 0, count: kvHeads * (maxKeep + k))
        for h in 0..<kvHeads {
            let rank = rankClusters(scores[(h * k)..<(h * k + k)])
            var total: Int64 = 0
            for c in 0..<k {
                try require(counts[h * k + c] >= 0, "negative count at head \(h), cluster \(c)")
                total += counts[h * k + c]
            }
            let used = Int(max(0, min(Int64(keepKeys), total, Int64(maxKeep))))
            let table = h * numClustered * w
            let out = h * maxKeep * w
            var slot = 0
            var lastUsed = -1 // ranked position of the last cluster that filled a used slot
            for p in 0..<k {
                if slot == used { break }
                let c = rank[p]
                let take = Int(min(counts[h * k + c], Int64(used - slot)))
                if take == 0 { continue }
                let first = clusterStart[h * k + c]
                try require(first >= 0 && first + Int64(take) <= Int64(numClustered),
                            "cluster \(c) of head \(h) starts at row \(first) with \(counts[h * k + c]) keys, outside its \(numClustered) rows")
                let src = table + Int(first) * w
                let dst = (out + slot * w)..<(out + (slot + take) * w)
                keptKeys.replaceSubrange(dst, with: clusteredKeys[src..<(src + take * w)])
                keptValues.replaceSubrange(dst, with: clusteredValues[src..<(src + take * w)])
                slot += take
                lastUsed = p
            }
            for s in used..<max(used, maxKeep) { // row 0, masked
                keptKeys.replaceSubrange((out + s * w)..<(out + (s + 1) * w), with: clusteredKeys[table..<(table + w)])
                keptValues.replaceSubrange((out + s * w)..<(out + (s + 1) * w), with: clusteredValues[table..<(table + w)])
            }
            let b = h * (maxKeep + k)
            for s in used..<max(used, maxKeep) { bias[b + s] = -.infinity }
            for p in 0..<k { bias[b + maxKeep + rank[p]] = p > lastUsed ? 0 : -.infinity }
        }
        return KeptRows(keys: keptKeys, values: keptValues, bias: bias, kvHeads: kvHeads, maxKeep: maxKeep, numClusters: k,
                        headDim: w)
    }

    /// The same on the loop's tensors: scores [Hkv, K], counts_l, cluster_start_l, and clustered_keys_l /
    /// clustered_values_l as the pack's context inputs lay them out, flat [Hkv * Nc, D] (head by head, Nc rows per head;
    /// [Hkv, Nc, D] views of the same rows are taken too).
    public static func compute(scores: Float32Tensor, counts: Int64Tensor, clusterStart: Int64Tensor,
                               clusteredKeys: Float32Tensor, clusteredValues: Float32Tensor, keepKeys: Int,
                               maxKeep: Int) throws -> KeptRows {
        try require(scores.shape.count == 2 && scores.shape[0] > 0, "scores \(scores.shape) must be [Hkv, K]")
        let kvHeads = scores.shape[0]
        let cs = clusteredKeys.shape
        let fits: Bool
        switch cs.count {
        case 2: fits = cs[0] > 0 && cs[0] % kvHeads == 0
        case 3: fits = cs[0] == kvHeads && cs[1] > 0
        default: fits = false
        }
        try require(fits && clusteredValues.shape == cs,
                    "clustered_keys \(cs) / clustered_values \(clusteredValues.shape) must both be [Hkv * Nc, D] with rows " +
                    "for the scores' \(kvHeads) KV heads")
        let numClustered = cs.count == 3 ? cs[1] : cs[0] / kvHeads
        try require(counts.shape == scores.shape && clusterStart.shape == scores.shape,
                    "counts \(counts.shape) and cluster_start \(clusterStart.shape) must have the scores' shape \(scores.shape)")
        return try compute(scores: scores.data, counts: counts.data, clusterStart: clusterStart.data,
                           clusteredKeys: clusteredKeys.data, clusteredValues: clusteredValues.data, kvHeads: kvHeads,
                           numClustered: numClustered, keepKeys: keepKeys, maxKeep: maxKeep)
    }

    /// The clusters of one head's scores, best first (np.argsort(-scores, kind="stable")): one sort of
    /// (descending-order key << 31 | index), so ties keep index order.
    static func rankClusters(_ scores: ArraySlice<Float>) -> [Int] {
        let keys = scores.enumerated().map { (descendingKey($0.element) << 31) | UInt64($0.offset) }.sorted()
        return keys.map { Int($0 & 0x7FFF_FFFF) }
    }

    /// An unsigned 32-bit key, ascending for descending scores; -0.0 and 0.0 alike; every NaN last.
    private static func descendingKey(_ score: Float) -> UInt64 {
        if score.isNaN { return 0xFFFF_FFFF }
        let bits = Int32(bitPattern: (score == 0 ? Float(0) : score).bitPattern)
        let ascending = bits < 0 ? UInt32(bitPattern: ~bits) : UInt32(bitPattern: bits) | 0x8000_0000 // unsigned order == float order
        return UInt64(~ascending) // below 0xFFFF_FFFF for every number (-inf: 0xFF80_0000)
    }
}
