// The centroid lookup's CPU fallback (squeezed_attention/lookup_numpy.py, same algorithm as lookup.py): which clustered
// context keys each head attends to, for a runtime whose graph takes the kept indices as an input. Port of
// CentroidLookup.kt.
//
// Cluster scores, in float64 (the Python side scores in float64 too, so both rank clusters the same way):
//     A_qk = q . c_k / sqrt(d),  S_qk = exp(A_qk) / sum_l N_l exp(A_ql)  (empty clusters: 0),  S_k = mean_q S_qk
// Clusters are ranked by score (descending, ties by cluster index) and keys are taken cluster by cluster in that order
// (a cluster's keys in position order): a fixed number ("budget") or every key of a cluster whose score passes a
// calibrated threshold ("threshold", padded to the largest head and masked). Hierarchical: level-1 centroids are
// scored first and only the children of the best ones.
import Foundation

public struct LookupSpec {
    /// "budget" (fixed count) or "threshold"
    public let mode: String
    public let budgetKeys: Int
    public let threshold: Double
    /// one selection per query head (true) or per KV group, the group's queries pooled (false)
    public let perQueryHead: Bool
    public let hierarchical: Bool
    public let level1Keep: Int

    public init(mode: String = "budget", budgetKeys: Int = 0, threshold: Double = 0, perQueryHead: Bool = false,
                hierarchical: Bool = false, level1Keep: Int = 0) throws {
        try require(mode == "budget" || mode == "threshold", "lookup mode must be budget or threshold, not \(mode)")
        self.mode = mode
        self.budgetKeys = budgetKeys
        self.threshold = threshold
        self.perQueryHead = perQueryHead
        self.hierarchical = hierarchical
        self.level1Keep = level1Keep
    }
}

/// indices: per selecting head, ascending key positions (threshold mode: valid ones first); valid: per head, a prefix
/// mask (nil in budget mode); centroidsScored: centroids scored per selecting head (the lookup's work).
public struct LookupSelection {
    public let indices: [[Int64]]
    public let valid: [[Bool]]?
    public let centroidsScored: Double
}

/// The pack's lookup tables (LookupTables.build / NumpyTables), built once when a pack is attached.
public final class CentroidLookup {
    public let layers: Int
    public let kvHeads: Int
    public let headDim: Int
    public let groupSize: Int
    public let numClusters: Int
    public let numClustered: Int
    /// context position of the first clustered key (the sink tokens come before)
    public let firstPosition: Int
    /// [L, H, K, D] dequantized centroids as float64
    private let centroids: [Double]
    private let counts: [Int64]
    /// [L, H, Nc]: context positions grouped by cluster, ascending within a cluster
    private let orderByCluster: [Int64]
    private let clusterStart: [Int64]
    public let level1Clusters: Int
    private let l1Centroids: [Double]?
    private let l1Counts: [Int64]?
    /// [L, H, K1, Cmax] child cluster ids, padded with K
    private let children: [Int]?
    private let maxChildren: Int

    public var hasLevel1: Bool { l1Centroids != nil }

    init(layers: Int, kvHeads: Int, headDim: Int, groupSize: Int, numClusters: Int, numClustered: Int, firstPosition: Int,
         centroids: [Double], counts: [Int64], orderByCluster: [Int64], clusterStart: [Int64], level1Clusters: Int,
         l1Centroids: [Double]?, l1Counts: [Int64]?, children: [Int]?, maxChildren: Int) {
        self.layers = layers
        self.kvHeads = kvHeads
        self.headDim = headDim
        self.groupSize = groupSize
        self.numClusters = numClusters
        self.numClustered = numClustered
        self.firstPosition = firstPosition
        self.centroids = centroids
        self.counts = counts
        self.orderByCluster = orderByCluster
        self.clusterStart = clusterStart
        self.level1Clusters = level1Clusters
        self.l1Centroids = l1Centroids
        self.l1Counts = l1Counts
        self.children = children
        self.maxChildren = maxChildren
    }

    /// Cluster scores [Hs][K] for one layer and the number of centroids scored per head (score_layer).
    public func scoreLayer(layer: Int, queries: [Float], numQueryHeads: Int, spec: LookupSpec) throws -> (scores: [[Double]], scored: Double) {
        let d = headDim
        let t = numQueryHeads > 0 ? queries.count / (numQueryHeads * d) : 0
        try require(queries.count == numQueryHeads * t * d && t > 0, "queries must be [query heads, tokens, \(d)]")
        try require(numQueryHeads == kvHeads * groupSize, "\(numQueryHeads) query heads, the pack's model has \(kvHeads * groupSize)")
        try require(layer >= 0 && layer < layers, "layer \(layer) of a pack with \(layers) layers")
        let hs = spec.perQueryHead ? numQueryHeads : kvHeads
        let q = spec.perQueryHead ? t : groupSize * t // queries per selecting head
        let scale = Double(d).squareRoot()
        let scaled = queries.map { Double($0) / scale }
        let kvOf = { (s: Int) -> Int in spec.perQueryHead ? s / self.groupSize : s }
        let k = numClusters
        if !spec.hierarchical {
            let scores = (0..<hs).map { s -> [Double] in
                let g = layer * kvHeads + kvOf(s)
                var unused: [Double]? = nil
                return CentroidLookup.clusterScores(scaled, s * q * d, q, d, centroids, g * k * d, counts, g * k, k, &unused)
            }
            return (scores, Double(k))
        }
        guard let l1c = l1Centroids, let l1n = l1Counts, let children = children else {
            throw PackError("this context pack has no level-1 clusters; build it with --hierarchical")
        }
        let k1 = level1Clusters
        var scoredChildren = 0
        var scores: [[Double]] = []
        for s in 0..<hs {
            let g = layer * kvHeads + kvOf(s)
            var logDen: [Double]? = [Double](repeating: 0, count: q)
            let l1 = CentroidLookup.clusterScores(scaled, s * q * d, q, d, l1c, g * k1 * d, l1n, g * k1, k1, &logDen)
            let kept = CentroidLookup.stableDescending(l1).prefix(max(0, spec.level1Keep))
            var out = [Double](repeating: -1, count: k) // unscored clusters rank last
            for parent in kept {
                for slot in 0..<maxChildren {
                    let child = children[(g * k1 + parent) * maxChildren + slot]
                    if child >= k { continue } // padding: only real children are scored
                    var sum = 0.0
                    for i in 0..<q {
                        let dot = CentroidLookup.dot(scaled, (s * q + i) * d, centroids, (g * k + child) * d, d)
                        sum += exp(dot - logDen![i])
                    }
                    out[child] = sum / Double(q)
                    scoredChildren += 1
                }
            }
            scores.append(out)
        }
        return (scores, Double(k1) + Double(scoredChildren) / Double(hs))
    }

    /// select_keys: the kept key positions per selecting head for one layer; queries are post-RoPE [Hq, T, D].
    public func select(layer: Int, queries: [Float], numQueryHeads: Int, spec: LookupSpec) throws -> LookupSelection {
        let (scores, scored) = try scoreLayer(layer: layer, queries: queries, numQueryHeads: numQueryHeads, spec: spec)
        let k = numClusters
        let groupOf = { (s: Int) -> Int in layer * self.kvHeads + (spec.perQueryHead ? s / self.groupSize : s) }
        if spec.mode == "budget" {
            let indices = try scores.indices.map { s in try rankedFill(scores[s], groupOf(s), spec.budgetKeys).sorted() }
            return LookupSelection(indices: indices, valid: nil, centroidsScored: scored)
        }
        let kept = scores.indices.map { s -> Int in
            var sum: Int64 = 0
            for c in 0..<k where scores[s][c] >= spec.threshold { sum += counts[groupOf(s) * k + c] }
            return Int(sum)
        }
        let length = kept.max() ?? 0
        let end = Int64(firstPosition) + Int64(numClustered)
        let indices = try scores.indices.map { s -> [Int64] in
            let filled = try rankedFill(scores[s], groupOf(s), length)
            // ascending positions, valid keys first (so `valid` stays a prefix mask)
            let sortKey = (0..<length).map { i in filled[i] + (i < kept[s] ? 0 : end) }
            let idx = (0..<length).sorted { a, b in sortKey[a] != sortKey[b] ? sortKey[a] < sortKey[b] : a < b }
            return idx.map { filled[$0] }
        }
        let valid = scores.indices.map { s in (0..<length).map { $0 < kept[s] } }
        return LookupSelection(indices: indices, valid: valid, centroidsScored: scored)
    }

    /// ranked_fill: length key positions, cluster by cluster in descending score order.
    private func rankedFill(_ scores: [Double], _ g: Int, _ length: Int) throws -> [Int64] {
        let k = numClusters
        var out = [Int64](repeating: 0, count: max(0, length))
        var slot = 0
        for cluster in CentroidLookup.stableDescending(scores) {
            let n = Int(counts[g * k + cluster])
            let start = Int(clusterStart[g * k + cluster])
            for within in 0..<n {
                if slot == length { return out }
                out[slot] = orderByCluster[g * numClustered + start + within]
                slot += 1
            }
        }
        if slot < length { throw InvalidArgument("\(length) keys asked for, the head has only \(slot) clustered keys") }
        return out
    }

    /// Indices by descending score, ties in index order (np.argsort(-scores, kind="stable"); -0.0 == 0.0).
    public static func stableDescending(_ scores: [Double]) -> [Int] {
        scores.indices.sorted { a, b in
            if scores[a] > scores[b] { return true }
            if scores[a] < scores[b] { return false }
            return a < b
        }
    }

    @inline(__always)
    private static func dot(_ a: [Double], _ ai: Int, _ b: [Double], _ bi: Int, _ d: Int) -> Double {
        var s = 0.0
        for i in 0..<d { s += a[ai + i] * b[bi + i] }
        return s
    }

    /// cluster_scores for one selecting head: q queries of d values at qs[qAt...] against k centroids at c[cAt...] with
    /// counts n[nAt...]; one exp per (query, cluster) with the peak over non-empty clusters. Fills logDen (peak + log of
    /// the denominator, per query) when given.
    private static func clusterScores(_ qs: [Double], _ qAt: Int, _ q: Int, _ d: Int, _ c: [Double], _ cAt: Int, _ n: [Int64],
                                      _ nAt: Int, _ k: Int, _ logDen: inout [Double]?) -> [Double] {
        var scores = [Double](repeating: 0, count: k)
        var w = [Double](repeating: 0, count: k)
        for i in 0..<q {
            var peak = -Double.infinity
            for j in 0..<k {
                w[j] = n[nAt + j] == 0 ? -Double.infinity : dot(qs, qAt + i * d, c, cAt + j * d, d)
                if w[j] > peak { peak = w[j] }
            }
            var total = 0.0
            for j in 0..<k {
                w[j] = exp(w[j] - peak)
                total += w[j] * Double(n[nAt + j])
            }
            let inv = 1.0 / total
            for j in 0..<k { scores[j] += w[j] * inv }
            if logDen != nil { logDen![i] = peak + log(total) }
        }
        for j in 0..<k { scores[j] /= Double(q) }
        return scores
    }

    /// The lookup tables of a pack (LookupTables.build): dequantized centroids, stable cluster order, starts.
    public static func fromPack(_ pack: ContextPack) throws -> CentroidLookup {
        let l = pack.layers, h = pack.kvHeads, d = pack.headDim, k = pack.numClusters, nc = pack.numClustered
        let heads = try pack.modelConfig["num_heads"].int()
        let kv = try pack.modelConfig["num_kv_heads"].int()
        try require(kv > 0 && heads % kv == 0, "model_config: \(heads) query heads are not a multiple of \(kv) KV heads")
        let counts = try pack["lookup.counts"].longs()
        let order = PackLayout.clusterOrder(try pack["lookup.labels"].longs(), groups: l * h, nc: nc, offset: pack.sinkTokens)
        var start = [Int64](repeating: 0, count: counts.count)
        for g in 0..<(l * h) {
            var total: Int64 = 0
            for c in 0..<k {
                start[g * k + c] = total
                total += counts[g * k + c]
            }
        }
        var k1 = 0, cmax = 0
        var l1c: [Double]? = nil, l1n: [Int64]? = nil, children: [Int]? = nil
        if pack.tensors["lookup.level1_centroid_codes"] != nil {
            k1 = try pack["lookup.level1_counts"].shape[2]
            l1c = try pack.centroids(prefix: "lookup.level1_").map { Double($0) }
            l1n = try pack["lookup.level1_counts"].longs()
            let offsets = try pack["lookup.level1_child_offsets"].longs() // [L, H, K1 + 1]
            cmax = 1
            for g in 0..<(l * h) {
                for p in 0..<k1 { cmax = max(cmax, Int(offsets[g * (k1 + 1) + p + 1] - offsets[g * (k1 + 1) + p])) }
            }
            var ch = [Int](repeating: k, count: l * h * k1 * cmax)
            for g in 0..<(l * h) {
                for p in 0..<k1 {
                    let first = offsets[g * (k1 + 1) + p]
                    let size = offsets[g * (k1 + 1) + p + 1] - first
                    for s in 0..<cmax where Int64(s) < size { ch[(g * k1 + p) * cmax + s] = Int(first) + s }
                }
            }
            children = ch
        }
        return CentroidLookup(
            layers: l, kvHeads: h, headDim: d, groupSize: heads / kv, numClusters: k, numClustered: nc,
            firstPosition: pack.sinkTokens, centroids: try pack.centroids().map { Double($0) }, counts: counts,
            orderByCluster: order, clusterStart: start, level1Clusters: k1, l1Centroids: l1c, l1Counts: l1n,
            children: children, maxChildren: cmax)
    }
}
