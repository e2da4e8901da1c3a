// The split lookup plan's CPU lookup (squeezed_attention/lookup_numpy.py `kept_rows`): the app's side of the decoder
// manifest's call_sequence for lookup_plan "split". Between stage graphs <step>_{s-1} and <step>_s it turns the
// scores of layer l = s - 1 into that stage's kept_keys, kept_values and kept_bias inputs, for every KV head. Port of
// KeptRows.kt.
//
// Per head: clusters are ranked by score, best first, stable on ties (lower cluster index first; -0.0 ties 0.0, NaN
// ranks last, as numpy's argsort); their rows fill the maxKeep slots cluster by cluster (a cluster's rows in table
// order) until min(keepKeys, keys of the head) are taken (`slots`, lookup_numpy.kept_slots). A decoder with followed
// keys (contract follow_keys F) then writes the rows the previous call pointed to, the ones the selection did not keep,
// into the next unused slots (`withFollowed`; the loop passes keepKeys - F, so F slots are free); after the stage it
// ranks the stage's follow_weights into the next call's rows (`followPointer`).
//
// keys / values: [Hkv, maxKeep, D] the kept keys and values, gathered from the slots' flat rows; unused slots hold
// row 0 of the table (masked). bias: [Hkv, maxKeep + K]: per slot 0 (used) / -inf (unused), then per cluster 0 when it
// is summarised (ranked after the last cluster that filled a slot of the selection; followed rows do not change it)
// / -inf; the next stage graph adds log N to the second part.

public struct KeptRows {
    public let keys: [Float]
    public let values: [Float]
    public let bias: [Float]
    public let kvHeads: Int
    public let maxKeep: Int
    public let numClusters: Int
    /// the head dim D: one key (or value) row
    public let headDim: Int
    /// [Hkv, maxKeep] the slots' flat rows of the clustered tables (head h's row j = h * numClustered + j), -1 for an
    /// unused slot: what followPointer maps the stage's follow_weights through.
    public let slotRows: [Int64]

    /// The stage graph's inputs "kept_keys", "kept_values" and "kept_bias", in that order.
    public func inputs() throws -> [(name: String, tensor: DecoderTensor)] {
        [("kept_keys", .float32(try Float32Tensor(keys, shape: [kvHeads, maxKeep, headDim]))),
         ("kept_values", .float32(try Float32Tensor(values, shape: [kvHeads, maxKeep, headDim]))),
         ("kept_bias", .float32(try Float32Tensor(bias, shape: [kvHeads, maxKeep + numClusters])))]
    }

    /// scores [Hkv, K] (the previous stage's output), counts / clusterStart [Hkv, K] (the pack's context inputs
    /// counts_l / cluster_start_l, padded with empty clusters), clusteredKeys / clusteredValues [Hkv * Nc, D]
    /// (clustered_keys_l / clustered_values_l: rows cluster by cluster, head by head), all flat; numClustered = Nc, the
    /// rows per head. followRows [Hkv, F] (a decoder with followed keys: the flat rows the previous call pointed to, -1
    /// none; nil: none) go into the slots the selection left unused (withFollowed).
    public static func compute(scores: [Float], counts: [Int64], clusterStart: [Int64], clusteredKeys: [Float],
                               clusteredValues: [Float], kvHeads: Int, numClustered: Int, keepKeys: Int,
                               maxKeep: Int, followRows: [Int64]? = nil) throws -> KeptRows {
        try require(kvHeads > 0 && numClustered > 0 && maxKeep >= 0,
                    "kvHeads (\(kvHeads)) and numClustered (\(numClustered)) must be positive, maxKeep (\(maxKeep)) not negative")
        let w = clusteredKeys.count / (kvHeads * numClustered)
        try require(w > 0 && clusteredKeys.count == kvHeads * numClustered * w && clusteredValues.count == clusteredKeys.count,
                    "\(clusteredKeys.count) / \(clusteredValues.count) floats are not [\(kvHeads) * \(numClustered), D] " +
                    "clustered_keys / clustered_values tables")
        var (rows, summary) = try slots(scores: scores, counts: counts, clusterStart: clusterStart, kvHeads: kvHeads,
                                        numClustered: numClustered, keepKeys: keepKeys, maxKeep: maxKeep)
        if let follow = followRows {
            rows = try withFollowed(rows, follow, kvHeads: kvHeads)
            try require(follow.allSatisfy { $0 < Int64(kvHeads * numClustered) },
                        "followed rows \(follow) reach outside the \(kvHeads * numClustered) rows of the clustered tables")
        }
        let keptKeys = gather(clusteredKeys, rows: rows, width: w), keptValues = gather(clusteredValues, rows: rows, width: w)
        let k = summary.count / kvHeads
        var bias = [Float](repeating: 0, count: kvHeads * (maxKeep + k))
        for h in 0..<kvHeads {
            let b = h * (maxKeep + k)
            for s in 0..<maxKeep where rows[h * maxKeep + s] < 0 { bias[b + s] = -.infinity }
            bias.replaceSubrange((b + maxKeep)..<(b + maxKeep + k), with: summary[(h * k)..<(h * k + k)])
        }
        return KeptRows(keys: keptKeys, values: keptValues, bias: bias, kvHeads: kvHeads, maxKeep: maxKeep, numClusters: k,
                        headDim: w, slotRows: rows)
    }

    /// One row copy per slot out of a flat [rows, width] table; an unused slot (-1) reads row 0 (masked by its bias).
    private static func gather(_ table: [Float], rows: [Int64], width w: Int) -> [Float] {
        var out = [Float](repeating: 0, count: rows.count * w)
        out.withUnsafeMutableBufferPointer { o in
            table.withUnsafeBufferPointer { t in
                for (i, r) in rows.enumerated() { (o.baseAddress! + i * w).update(from: t.baseAddress! + Int(max(r, 0)) * w, count: w) }
            }
        }
        return out
    }

    /// The selection without the gather (lookup_numpy.kept_slots): the slots' flat rows [Hkv, maxKeep] (head h's rows
    /// offset by h * numClustered, -1 for an unused slot; the used ones first) and the summary bias [Hkv, K], 0 / -inf
    /// per cluster: summarised / kept.
    public static func slots(scores: [Float], counts: [Int64], clusterStart: [Int64], kvHeads: Int, numClustered: Int,
                             keepKeys: Int, maxKeep: Int) throws -> (rows: [Int64], summary: [Float]) {
        try require(kvHeads > 0 && numClustered > 0 && maxKeep >= 0,
                    "kvHeads (\(kvHeads)) and numClustered (\(numClustered)) must be positive, maxKeep (\(maxKeep)) not negative")
        let k = scores.count / kvHeads
        try require(k > 0 && scores.count == kvHeads * k, "\(scores.count) scores for \(kvHeads) KV heads")
        try require(counts.count == kvHeads * k && clusterStart.count == kvHeads * k,
                    "counts (\(counts.count)) and clusterStart (\(clusterStart.count)) must be [\(kvHeads), \(k)] like the scores")
        var rows = [Int64](repeating: -1, count: kvHeads * maxKeep)
        var summary = [Float](repeating: 0, count: kvHeads * k)
        for h in 0..<kvHeads {
            let rank = rankDescending(scores[(h * k)..<(h * k + k)])
            var total: Int64 = 0
            for c in 0..<k {
                try require(counts[h * k + c] >= 0, "negative count at head \(h), cluster \(c)")
                total += counts[h * k + c]
            }
            let used = Int(max(0, min(Int64(keepKeys), total, Int64(maxKeep))))
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
                for i in 0..<take { rows[h * maxKeep + slot + i] = Int64(h * numClustered) + first + Int64(i) }
                slot += take
                lastUsed = p
            }
            for p in 0..<k { summary[h * k + rank[p]] = p > lastUsed ? 0 : -.infinity }
        }
        return (rows, summary)
    }

    /// The kept slots `slotRows` [Hkv, B] (-1: unused; the used ones first) with the followed rows `followRows` [Hkv, F]
    /// (-1: none) the selection did not keep, each once and in order, written into the first unused slots
    /// (lookup_numpy.with_followed: as the in-graph plan attends them after the kept rows). The selection must leave F
    /// unused slots (the loop selects keepKeys - F).
    public static func withFollowed(_ slotRows: [Int64], _ followRows: [Int64], kvHeads: Int) throws -> [Int64] {
        try require(kvHeads > 0 && slotRows.count % kvHeads == 0 && followRows.count % kvHeads == 0,
                    "\(slotRows.count) slot rows and \(followRows.count) followed rows are not [\(kvHeads), n] tables")
        let b = slotRows.count / kvHeads, f = followRows.count / kvHeads
        var rows = slotRows
        for h in 0..<kvHeads {
            let selected = rows[(h * b)..<(h * b + b)].filter { $0 >= 0 }.count
            var used = selected
            var taken = Set(rows[(h * b)..<(h * b + used)])
            for r in followRows[(h * f)..<(h * f + f)] where r >= 0 && !taken.contains(r) {
                try require(used < b, "no slot left for a followed row: \(b) slots, the selection used \(selected); " +
                            "pass keep_keys - follow_keys")
                rows[h * b + used] = r
                taken.insert(r)
                used += 1
            }
        }
        return rows
    }

    /// Where the next decode step follows (lookup_numpy.follow_pointer): of the rows a stage's last token attended,
    /// `slotRows` [Hkv, n] (flat rows, -1 unused) with `weights` [Hkv, n] (the stage's follow_weights: softmax weights
    /// summed over the KV head's query heads), the rows after the `follow` largest (`nextRows`, PackLayout.nextRows),
    /// ranked best first, stable on ties (the lower slot first); -1 where the weight is not above 0 (a masked slot) or
    /// the slot is unused or no row follows. Returns [Hkv, follow].
    public static func followPointer(weights: [Float], slotRows: [Int64], nextRows: [Int64], kvHeads: Int,
                                     follow: Int) throws -> [Int64] {
        try require(kvHeads > 0 && weights.count % kvHeads == 0 && slotRows.count == weights.count,
                    "\(weights.count) follow_weights and \(slotRows.count) slot rows are not both [\(kvHeads), n]")
        let n = weights.count / kvHeads
        try require(follow >= 0 && follow <= n, "\(follow) followed keys of \(n) slots per head")
        var pointer = [Int64](repeating: -1, count: kvHeads * follow)
        for h in 0..<kvHeads {
            let order = rankDescending(weights[(h * n)..<(h * n + n)])
            for i in 0..<follow {
                let slot = h * n + order[i], row = slotRows[slot]
                guard weights[slot] > 0 && row >= 0 else { continue }
                try require(row < Int64(nextRows.count), "slot row \(row) is outside the \(nextRows.count) next_rows")
                pointer[h * follow + i] = nextRows[Int(row)]
            }
        }
        return pointer
    }

    /// The same on the loop's tensors: scores [Hkv, K], counts_l, cluster_start_l, and clustered_keys_l /
    /// clustered_values_l as the pack's context inputs lay them out, flat [Hkv * Nc, D] (head by head, Nc rows per head;
    /// [Hkv, Nc, D] views of the same rows are taken too).
    public static func compute(scores: Float32Tensor, counts: Int64Tensor, clusterStart: Int64Tensor,
                               clusteredKeys: Float32Tensor, clusteredValues: Float32Tensor, keepKeys: Int,
                               maxKeep: Int, followRows: [Int64]? = nil) throws -> KeptRows {
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
                           numClustered: numClustered, keepKeys: keepKeys, maxKeep: maxKeep, followRows: followRows)
    }

    /// The positions of one head's scores (a layer's cluster scores, a stage's follow_weights), best first
    /// (np.argsort(-scores, kind="stable")): one sort of (descending-order key << 31 | index), so ties keep index order.
    static func rankDescending(_ scores: ArraySlice<Float>) -> [Int] {
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
