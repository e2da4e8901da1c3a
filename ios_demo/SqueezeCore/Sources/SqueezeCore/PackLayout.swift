// A context pack's tensors laid out as the exported decoder's context inputs (pack_arrays.decoder_context_inputs),
// byte-identical to Python's. Port of PackLayout in ContextPack.kt.
import Foundation

/// Named decoder inputs or outputs in a fixed order (the order Python lays them out; an ExecuTorch program takes
/// its inputs by position, in the order the decoder manifest lists them).
public typealias NamedTensors = [(name: String, tensor: DecoderTensor)]

public enum PackLayout {
    /// The pack's tensors as the exported decoder's context inputs: one input per tensor and layer, "<name>_<layer>",
    /// layer by layer. Full attention: context_keys / context_values zero-padded to max_context. Squeezed: sink_kv and
    /// window_kv rows in position order as [key | value] rows; clustered_keys and clustered_values cluster by cluster
    /// (stable within a cluster), zero padding, flat per layer ([Hkv * max_clustered, D], head by head; a method that
    /// declares them [Hkv, max_clustered, D] gets a view: GenerationLoop.methodInputs); centroids, value_centroids,
    /// counts and cluster_start padded with empty clusters.
    ///
    /// Built layer by layer (layerContextInputs): the pack's fp16 rows are converted straight into the inputs' float32
    /// buffers, so besides the inputs themselves only one layer's lookup tables exist at a time (never the pack's whole
    /// key/value tables in float32).
    public static func decoderContextInputs(_ pack: ContextPack, shapes: DecoderShapes, attention: String) throws -> NamedTensors {
        try checkFits(pack, shapes: shapes, attention: attention)
        var out: NamedTensors = []
        for layer in 0..<pack.layers { out += try layerInputs(pack, shapes: shapes, attention: attention, layer: layer) }
        return out
    }

    /// One layer's decoderContextInputs ("<name>_<layer>", in their order): all this allocates is that layer's inputs
    /// and that layer's lookup tables (labels, cluster order, counts, centroids, the value centroids' float64 means).
    public static func layerContextInputs(_ pack: ContextPack, shapes: DecoderShapes, attention: String, layer: Int) throws -> NamedTensors {
        try checkFits(pack, shapes: shapes, attention: attention)
        try require(layer >= 0 && layer < pack.layers, "layer \(layer) of a pack of \(pack.layers)")
        return try layerInputs(pack, shapes: shapes, attention: attention, layer: layer)
    }

    /// The refusals of decoder_context_inputs: a pack longer than the artifact's context, other sinks/window, too many
    /// clusters.
    private static func checkFits(_ pack: ContextPack, shapes: DecoderShapes, attention: String) throws {
        let n = pack.numTokens
        if n > shapes.maxContext {
            throw PackError("the context pack has \(n) tokens but the exported decoder takes at most \(shapes.maxContext); " +
                "re-export with --max-context \(n) or more")
        }
        if attention == "full" { return }
        if attention != "squeezed" { throw PackError("unknown attention \"\(attention)\" (expected squeezed or full)") }
        let sinks = pack.sinkTokens, window = pack.observationWindow
        if sinks != shapes.sinkTokens || window != shapes.window {
            throw PackError("the context pack keeps \(sinks) sink and \(window) window tokens but the decoder was " +
                "exported for \(shapes.sinkTokens) and \(shapes.window); rebuild the pack with those")
        }
        let k = pack.numClusters
        if k > shapes.maxClusters {
            throw PackError("the context pack has \(k) clusters per head but the decoder takes at most " +
                "\(shapes.maxClusters); rebuild it with a smaller --centroids or re-export")
        }
    }

    private static func layerInputs(_ pack: ContextPack, shapes: DecoderShapes, attention: String, layer: Int) throws -> NamedTensors {
        let n = pack.numTokens
        let keys = try pack["kv.keys"], values = try pack["kv.values"]
        let h = pack.kvHeads, d = pack.headDim
        var out: NamedTensors = []
        if attention == "full" {
            for (name, src) in [("context_keys", keys), ("context_values", values)] {
                var t = [Float](repeating: 0, count: h * shapes.maxContext * d)
                for head in 0..<h {
                    try src.halves(from: ((layer * h + head) * n) * d, count: n * d, into: &t, at: head * shapes.maxContext * d)
                }
                out.append(("\(name)_\(layer)", .float32(try Float32Tensor(t, shape: [h, shapes.maxContext, d]))))
            }
            return out
        }
        let sinks = pack.sinkTokens, window = pack.observationWindow
        let k = pack.numClusters, nc = pack.numClustered
        let counts = try pack["lookup.counts"].longs(from: layer * h * k, count: h * k)      // this layer's [H, K]
        let labels = try pack["lookup.labels"].longs(from: layer * h * nc, count: h * nc)    // this layer's [H, Nc]
        let order = clusterOrder(labels, groups: h, nc: nc, offset: 0)
        let centroids = try pack.layerCentroids(layer)
        let valueCentroids = try layerValueCentroids(values: values, layer: layer, counts: counts, order: order, heads: h,
                                                     tokens: n, clustered: nc, clusters: k, headDim: d, sinks: sinks)
        let maxK = shapes.maxClusters, ncMax = shapes.maxClustered, w2 = 2 * d
        // one [key | value] row of head `head` at position p, written at dst[at]
        func row(_ head: Int, _ p: Int, _ dst: inout [Float], _ at: Int) throws {
            let src = ((layer * h + head) * n + p) * d
            try keys.halves(from: src, count: d, into: &dst, at: at)
            try values.halves(from: src, count: d, into: &dst, at: at + d)
        }
        var sink = [Float](repeating: 0, count: h * sinks * w2)
        var win = [Float](repeating: 0, count: h * window * w2)
        var clusteredKeys = [Float](repeating: 0, count: h * ncMax * d)
        var clusteredValues = clusteredKeys
        var cent = [Float](repeating: 0, count: h * maxK * d)
        var vcent = [Float](repeating: 0, count: h * maxK * d)
        var cnt = [Int64](repeating: 0, count: h * maxK)
        var start = [Int64](repeating: 0, count: h * maxK)
        for head in 0..<h {
            for p in 0..<sinks { try row(head, p, &sink, (head * sinks + p) * w2) }
            for p in 0..<window { try row(head, sinks + nc + p, &win, (head * window + p) * w2) }
            for j in 0..<nc {
                let src = ((layer * h + head) * n + sinks + Int(order[head * nc + j])) * d, at = (head * ncMax + j) * d
                try keys.halves(from: src, count: d, into: &clusteredKeys, at: at)
                try values.halves(from: src, count: d, into: &clusteredValues, at: at)
            }
            cent.replaceSubrange((head * maxK * d)..<(head * maxK * d + k * d), with: centroids[(head * k * d)..<((head + 1) * k * d)])
            vcent.replaceSubrange((head * maxK * d)..<(head * maxK * d + k * d), with: valueCentroids[(head * k * d)..<((head + 1) * k * d)])
            var total: Int64 = 0
            for c in 0..<k {
                cnt[head * maxK + c] = counts[head * k + c]
                start[head * maxK + c] = total
                total += counts[head * k + c]
            }
        }
        out.append(("sink_kv_\(layer)", .float32(try Float32Tensor(sink, shape: [h, sinks, w2]))))
        out.append(("window_kv_\(layer)", .float32(try Float32Tensor(win, shape: [h, window, w2]))))
        // flat, head by head: the lookup gathers rows of every head in one go
        out.append(("clustered_keys_\(layer)", .float32(try Float32Tensor(clusteredKeys, shape: [h * ncMax, d]))))
        out.append(("clustered_values_\(layer)", .float32(try Float32Tensor(clusteredValues, shape: [h * ncMax, d]))))
        out.append(("centroids_\(layer)", .float32(try Float32Tensor(cent, shape: [h, maxK, d]))))
        out.append(("value_centroids_\(layer)", .float32(try Float32Tensor(vcent, shape: [h, maxK, d]))))
        out.append(("counts_\(layer)", .int64(try Int64Tensor(cnt, shape: [h, maxK]))))
        out.append(("cluster_start_\(layer)", .int64(try Int64Tensor(start, shape: [h, maxK]))))
        return out
    }

    /// "next_rows_<layer>" [Hkv * max_clustered] int64 per layer (pack_arrays.next_rows), for decoders with followed
    /// keys (contract followKeys > 0): for every flat row of the clustered tables (decoderContextInputs' layout, cluster
    /// by cluster per KV head, head h's row j = flat row h * max_clustered + j), the flat row of the next context
    /// position, -1 where that position is not clustered (the last clustered key) and for padding rows. What a
    /// followed key points to: the key after one the last token weighed most (the in-graph plan's graphs take them as
    /// inputs; the split plan's CPU maps the stages' follow_weights through them, KeptRows.followPointer). Built layer
    /// by layer from that layer's labels.
    public static func nextRows(_ pack: ContextPack, shapes: DecoderShapes) throws -> NamedTensors {
        let l = pack.layers, h = pack.kvHeads, nc = pack.numClustered, width = shapes.maxClustered
        if nc > width {
            throw PackError("the context pack has \(nc) clustered keys per head but the decoder takes at most \(width); " +
                "re-export with --max-context \(pack.numTokens) or more")
        }
        let labels = try pack["lookup.labels"]
        var out: NamedTensors = []
        for layer in 0..<l {
            let order = clusterOrder(try labels.longs(from: layer * h * nc, count: h * nc), groups: h, nc: nc, offset: 0)  // slot -> index
            var table = [Int64](repeating: -1, count: h * width)
            var slotOf = [Int](repeating: 0, count: nc)  // clustered index -> its slot
            for head in 0..<h {
                let g = head * nc
                for j in 0..<nc { slotOf[Int(order[g + j])] = j }
                for j in 0..<nc {
                    let after = Int(order[g + j]) + 1
                    if after < nc { table[head * width + j] = Int64(head * width + slotOf[after]) }
                }
            }
            out.append(("next_rows_\(layer)", .int64(try Int64Tensor(table, shape: [h * width]))))
        }
        return out
    }

    /// Per group of nc labels: the positions 0..<nc sorted by label, stable (np.argsort kind="stable"), + offset. A
    /// counting sort where a group's labels span a small range (cluster labels: 0..<K), which is stable; a stable
    /// comparison sort otherwise.
    public static func clusterOrder(_ labels: [Int64], groups: Int, nc: Int, offset: Int) -> [Int64] {
        var out = [Int64](repeating: 0, count: groups * nc)
        for g in 0..<groups {
            guard nc > 0 else { continue }
            let group = labels[(g * nc)..<((g + 1) * nc)]
            let lo = group.min()!, hi = group.max()!
            let (span, overflow) = hi.subtractingReportingOverflow(lo)
            if !overflow && span <= 4 * Int64(nc) + 1024 {
                // counts of label lo + c at c + 1, then first[c] = labels below lo + c
                var first = [Int](repeating: 0, count: Int(span) + 2)
                for v in group { first[Int(v - lo) + 1] += 1 }
                for c in 1..<first.count { first[c] += first[c - 1] }
                for j in 0..<nc {
                    let c = Int(labels[g * nc + j] - lo)
                    out[g * nc + first[c]] = Int64(j + offset)
                    first[c] += 1
                }
            } else {
                // ties by position: stable whatever the sort algorithm
                let idx = (0..<nc).sorted { a, b in
                    let la = labels[g * nc + a], lb = labels[g * nc + b]
                    return la != lb ? la < lb : a < b
                }
                for j in 0..<nc { out[g * nc + j] = Int64(idx[j] + offset) }
            }
        }
        return out
    }

    /// Mean fp16 value of every cluster of one layer in float64 (empty clusters 0), int8-coded with one fp16 scale per
    /// vector like the key centroids (value_centroids + quantized_like_centroids): [H, K] x D float32. `values` is the
    /// pack's kv.values [L, H, N, D] fp16 (read in place), `counts` and `order` the layer's [H, K] and [H, Nc].
    public static func layerValueCentroids(values: StoredTensor, layer: Int, counts: [Int64], order: [Int64], heads: Int,
                                           tokens n: Int, clustered nc: Int, clusters k: Int, headDim d: Int,
                                           sinks: Int) throws -> [Float] {
        var mean = [Double](repeating: 0, count: heads * k * d)
        var row = [Float](repeating: 0, count: d)
        for head in 0..<heads {
            let g = layer * heads + head
            var j = 0
            for c in 0..<k {
                let cnt = Int(counts[head * k + c])
                let base = (head * k + c) * d
                for r in 0..<cnt {
                    let p = sinks + Int(order[head * nc + j + r])
                    try values.halves(from: (g * n + p) * d, count: d, into: &row, at: 0)
                    for i in 0..<d { mean[base + i] += Double(row[i]) }
                }
                j += cnt
                let div = Double(max(cnt, 1))
                for i in 0..<d { mean[base + i] /= div }
            }
        }
        return quantizedLikeCentroids(mean, headDim: d)
    }

    /// quantized_like_centroids: float32, scale = fp16(max|x| / 127), codes = clip(rint(x / scale)), codes x scale.
    public static func quantizedLikeCentroids(_ x: [Double], headDim d: Int) -> [Float] {
        var out = [Float](repeating: 0, count: x.count)
        for v in 0..<(x.count / d) {
            var peak: Float = 0
            for i in 0..<d { peak = max(peak, abs(Float(x[v * d + i]))) }
            let scale = Half.toFloat(Half.fromFloat(peak / 127))
            let safe: Float = scale > 0 ? scale : 1
            for i in 0..<d {
                // through an integer code, as the int8 codes: -0.0 comes back as +0.0
                let q = Double(Float(x[v * d + i]) / safe).rounded(.toNearestOrEven)
                let code = q.isNaN ? 0 : Int(min(max(q, -127), 127))
                out[v * d + i] = Float(code) * scale
            }
        }
        return out
    }
}
