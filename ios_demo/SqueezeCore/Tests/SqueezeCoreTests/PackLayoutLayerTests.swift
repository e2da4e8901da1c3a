import XCTest
@testable import SqueezeCore

/// PackLayout converts the pack's fp16 key/value rows layer by layer straight into the decoder inputs' float32 buffers
/// (PackLayoutLayerTest.kt's cases). Its output must be byte-identical to the whole-table layout it replaced
/// (WholeTableLayout below, kept verbatim as the reference: both tables converted to float32 first) on the real
/// 2-layer pack, and one layer's inputs must come from that layer's rows only (the pack's other layers replaced by
/// other values leave them unchanged). Swift on Linux has no allocation counter: the allocation bound is the Kotlin
/// test's (JVM per-thread allocated bytes); here it holds by the same structure (layerContextInputs).
final class PackLayoutLayerTests: XCTestCase {
    private var bytes: [UInt8] = []
    private var pack: ContextPack!
    private var shapes: DecoderShapes!

    override func setUpWithError() throws {
        bytes = try Golden.bytes("qa_pack.safetensors")
        pack = try ContextPack.read(bytes, source: "qa_pack.safetensors")
        shapes = try DecoderShapes.parse(try Golden.json("qa_generation.json.gz")["shapes"])
    }

    private func assertSame(_ expected: NamedTensors, _ actual: NamedTensors, _ what: String, line: UInt = #line) {
        XCTAssertEqual(expected.map(\.name), actual.map(\.name), what, line: line)
        for ((name, e), (_, a)) in zip(expected, actual) {
            XCTAssertEqual(e.shape, a.shape, "\(what) \(name)", line: line)
            XCTAssertEqual(e.toLittleEndian(), a.toLittleEndian(), "\(what) \(name)", line: line)
        }
    }

    func testLayerByLayerLayoutIsByteIdenticalToTheWholeTableLayout() throws {
        XCTAssertGreaterThan(pack.layers, 1)
        for attention in ["squeezed", "full"] {
            let whole = try WholeTableLayout.decoderContextInputs(pack, shapes: shapes, attention: attention)
            assertSame(whole, try PackLayout.decoderContextInputs(pack, shapes: shapes, attention: attention), attention)
            for l in 0..<pack.layers {
                let layer = try PackLayout.layerContextInputs(pack, shapes: shapes, attention: attention, layer: l)
                XCTAssertTrue(layer.allSatisfy { $0.name.hasSuffix("_\(l)") }, "\(attention) layer \(l)")
                assertSame(whole.filter { $0.name.hasSuffix("_\(l)") }, layer, "\(attention) layer \(l)")
            }
        }
        assertSame(try WholeTableLayout.nextRows(pack, shapes: shapes), try PackLayout.nextRows(pack, shapes: shapes), "next_rows")
        // the dequantized centroids, whole and per layer, as the Int64-widening conversion computed them
        for prefix in ["lookup.", "lookup.level1_"] {
            let codes = try pack["\(prefix)centroid_codes"].longs()
            let scales = try pack["\(prefix)centroid_scales"].floats()
            let expected = (0..<codes.count).map { Float(codes[$0]) * scales[$0 / pack.headDim] }
            XCTAssertEqual(try pack.centroids(prefix: prefix).map(\.bitPattern), expected.map(\.bitPattern), prefix)
            let per = expected.count / pack.layers
            for l in 0..<pack.layers {
                XCTAssertEqual(try pack.layerCentroids(l, prefix: prefix).map(\.bitPattern),
                               expected[(l * per)..<((l + 1) * per)].map(\.bitPattern), "\(prefix) layer \(l)")
            }
        }
    }

    func testClusterOrderIsStableByLabelOnEveryPath() throws {
        // counting sort (small label range) and comparison sort (a huge range) give np.argsort(kind="stable")
        let labels: [Int64] = [3, 1, 3, 0, 1, 1, 5_000_000_000, -7, 5_000_000_000, -7, 0, 2]
        XCTAssertEqual(PackLayout.clusterOrder(labels, groups: 2, nc: 6, offset: 10), [13, 11, 14, 15, 10, 12, 11, 13, 14, 15, 10, 12])
        XCTAssertEqual(PackLayout.clusterOrder([Int64.min, Int64.max, Int64.min], groups: 1, nc: 3, offset: 0), [0, 2, 1])
        let real = try pack["lookup.labels"].longs()
        let nc = pack.numClustered
        let order = PackLayout.clusterOrder(real, groups: pack.layers * pack.kvHeads, nc: nc, offset: 4)
        for g in 0..<(pack.layers * pack.kvHeads) {
            let group = Array(real[(g * nc)..<((g + 1) * nc)])
            let sorted: [Int] = (0..<nc).sorted { (a: Int, b: Int) -> Bool in
                let la: Int64 = group[a], lb: Int64 = group[b]
                return la != lb ? la < lb : a < b
            }
            let expected: [Int64] = sorted.map { Int64($0 + 4) }
            XCTAssertEqual(Array(order[(g * nc)..<((g + 1) * nc)]), expected, "group \(g)")
        }
    }

    /// The golden pack with every layer's keys and values but `keep`'s replaced by other finite fp16 values, re-hashed.
    private func otherLayersReplaced(_ keep: Int) throws -> ContextPack {
        var b = bytes
        let st = try SafeTensors.read(b, source: "x")
        for name in ["kv.keys", "kv.values"] {
            let t = st.tensors[name]!
            let per = t.data.count / pack.layers, at = t.data.startIndex
            for l in 0..<pack.layers where l != keep {
                for i in 0..<(per / 2) {
                    let bits = (i * 7919 + l * 31) & 0x3BFF // exponent below 15: finite, |x| < 1
                    b[at + l * per + 2 * i] = UInt8(bits & 0xFF)
                    b[at + l * per + 2 * i + 1] = UInt8(bits >> 8)
                }
            }
        }
        let changed = try SafeTensors.read(b, source: "x")
        let old = Array(changed.metadata["content_sha256"]!.utf8)
        let new = Array(try ContextPack.contentSha256(tensors: changed.tensors, metadata: changed.metadata).utf8)
        let i = try XCTUnwrap((0...(b.count - old.count)).first { Array(b[$0..<($0 + old.count)]) == old })
        b.replaceSubrange(i..<(i + old.count), with: new)
        return try ContextPack.read(b, source: "replaced.pack")
    }

    func testOneLayersInputsComeFromThatLayersRowsOnly() throws {
        for keep in 0..<pack.layers {
            let other = try otherLayersReplaced(keep)
            for attention in ["squeezed", "full"] {
                for l in 0..<pack.layers {
                    let mine = try PackLayout.layerContextInputs(pack, shapes: shapes, attention: attention, layer: l)
                    let theirs = try PackLayout.layerContextInputs(other, shapes: shapes, attention: attention, layer: l)
                    let same = zip(mine, theirs).allSatisfy { $0.tensor.toLittleEndian() == $1.tensor.toLittleEndian() }
                    XCTAssertEqual(same, l == keep, "\(attention) layer \(l), pack with only layer \(keep) kept")
                    let name = attention == "full" ? "context_keys_\(l)" : "clustered_keys_\(l)"
                    if l != keep {
                        XCTAssertNotEqual(mine.first { $0.name == name }!.tensor.toLittleEndian(),
                                          theirs.first { $0.name == name }!.tensor.toLittleEndian())
                    }
                }
            }
        }
    }

    func testAPackFileIsReadIntoOneArray() throws {
        // read(path:) reads the file straight into its byte array; the tensors are slices of it
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("packlayout-\(getpid()).pack")
        try Data(bytes).write(to: url)
        defer { try? FileManager.default.removeItem(at: url) }
        XCTAssertEqual(ContextPack.readFile(url.path), bytes)
        let read = try ContextPack.read(path: url.path)
        assertSame(try PackLayout.decoderContextInputs(pack, shapes: shapes, attention: "squeezed"),
                   try PackLayout.decoderContextInputs(read, shapes: shapes, attention: "squeezed"), "read from a file")
        XCTAssertNil(ContextPack.readFile(url.path + ".missing"))
    }
}

/// The layout before it went layer by layer (PackLayout.swift at 1600629), verbatim but for names: the reference.
enum WholeTableLayout {
    static func decoderContextInputs(_ pack: ContextPack, shapes: DecoderShapes, attention: String) throws -> NamedTensors {
        let n = pack.numTokens
        let keys = try pack["kv.keys"].floats()
        let values = try pack["kv.values"].floats()
        let l = pack.layers, h = pack.kvHeads, d = pack.headDim
        var out: NamedTensors = []
        if attention == "full" {
            for layer in 0..<l {
                for (name, src) in [("context_keys", keys), ("context_values", values)] {
                    var t = [Float](repeating: 0, count: h * shapes.maxContext * d)
                    for head in 0..<h {
                        let from = ((layer * h + head) * n) * d, to = head * shapes.maxContext * d
                        t.replaceSubrange(to..<(to + n * d), with: src[from..<(from + n * d)])
                    }
                    out.append(("\(name)_\(layer)", .float32(try Float32Tensor(t, shape: [h, shapes.maxContext, d]))))
                }
            }
            return out
        }
        let sinks = pack.sinkTokens, window = pack.observationWindow
        let counts = try pack["lookup.counts"].longs()
        let k = pack.numClusters
        let labels = try pack["lookup.labels"].longs()
        let nc = pack.numClustered
        let order = clusterOrder(labels, groups: l * h, nc: nc)
        let codes = try pack["lookup.centroid_codes"].longs()
        let scales = try pack["lookup.centroid_scales"].floats()
        let centroids = (0..<codes.count).map { Float(codes[$0]) * scales[$0 / d] }
        let valueCentroids = valueCentroids(values: values, counts: counts, order: order, layers: l, heads: h,
                                            tokens: n, clustered: nc, clusters: k, headDim: d, sinks: sinks)
        let maxK = shapes.maxClusters, ncMax = shapes.maxClustered, w2 = 2 * d
        func row(_ layer: Int, _ head: Int, _ p: Int, _ dst: inout [Float], _ at: Int) {
            let src = ((layer * h + head) * n + p) * d
            dst.replaceSubrange(at..<(at + d), with: keys[src..<(src + d)])
            dst.replaceSubrange((at + d)..<(at + w2), with: values[src..<(src + d)])
        }
        for layer in 0..<l {
            var sink = [Float](repeating: 0, count: h * sinks * w2)
            var win = [Float](repeating: 0, count: h * window * w2)
            var clusteredKeys = [Float](repeating: 0, count: h * ncMax * d)
            var clusteredValues = clusteredKeys
            var cent = [Float](repeating: 0, count: h * maxK * d)
            var vcent = [Float](repeating: 0, count: h * maxK * d)
            var cnt = [Int64](repeating: 0, count: h * maxK)
            var start = [Int64](repeating: 0, count: h * maxK)
            for head in 0..<h {
                let g = layer * h + head
                for p in 0..<sinks { row(layer, head, p, &sink, (head * sinks + p) * w2) }
                for p in 0..<window { row(layer, head, sinks + nc + p, &win, (head * window + p) * w2) }
                for j in 0..<nc {
                    let src = ((layer * h + head) * n + sinks + Int(order[g * nc + j])) * d, at = (head * ncMax + j) * d
                    clusteredKeys.replaceSubrange(at..<(at + d), with: keys[src..<(src + d)])
                    clusteredValues.replaceSubrange(at..<(at + d), with: values[src..<(src + d)])
                }
                cent.replaceSubrange((head * maxK * d)..<(head * maxK * d + k * d), with: centroids[(g * k * d)..<((g + 1) * k * d)])
                vcent.replaceSubrange((head * maxK * d)..<(head * maxK * d + k * d), with: valueCentroids[(g * k * d)..<((g + 1) * k * d)])
                var total: Int64 = 0
                for c in 0..<k {
                    cnt[head * maxK + c] = counts[g * k + c]
                    start[head * maxK + c] = total
                    total += counts[g * k + c]
                }
            }
            out.append(("sink_kv_\(layer)", .float32(try Float32Tensor(sink, shape: [h, sinks, w2]))))
            out.append(("window_kv_\(layer)", .float32(try Float32Tensor(win, shape: [h, window, w2]))))
            out.append(("clustered_keys_\(layer)", .float32(try Float32Tensor(clusteredKeys, shape: [h * ncMax, d]))))
            out.append(("clustered_values_\(layer)", .float32(try Float32Tensor(clusteredValues, shape: [h * ncMax, d]))))
            out.append(("centroids_\(layer)", .float32(try Float32Tensor(cent, shape: [h, maxK, d]))))
            out.append(("value_centroids_\(layer)", .float32(try Float32Tensor(vcent, shape: [h, maxK, d]))))
            out.append(("counts_\(layer)", .int64(try Int64Tensor(cnt, shape: [h, maxK]))))
            out.append(("cluster_start_\(layer)", .int64(try Int64Tensor(start, shape: [h, maxK]))))
        }
        return out
    }

    static func nextRows(_ pack: ContextPack, shapes: DecoderShapes) throws -> NamedTensors {
        let l = pack.layers, h = pack.kvHeads, nc = pack.numClustered, width = shapes.maxClustered
        let order = clusterOrder(try pack["lookup.labels"].longs(), groups: l * h, nc: nc)
        var out: NamedTensors = []
        for layer in 0..<l {
            var table = [Int64](repeating: -1, count: h * width)
            for head in 0..<h {
                let g = (layer * h + head) * nc
                var slotOf = [Int](repeating: 0, count: nc)
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

    static func clusterOrder(_ labels: [Int64], groups: Int, nc: Int) -> [Int64] {
        var out = [Int64](repeating: 0, count: groups * nc)
        for g in 0..<groups {
            let idx = (0..<nc).sorted { a, b in
                let la = labels[g * nc + a], lb = labels[g * nc + b]
                return la != lb ? la < lb : a < b
            }
            for j in 0..<nc { out[g * nc + j] = Int64(idx[j]) }
        }
        return out
    }

    static func valueCentroids(values: [Float], counts: [Int64], order: [Int64], layers: Int, heads: Int, tokens n: Int,
                               clustered nc: Int, clusters k: Int, headDim d: Int, sinks: Int) -> [Float] {
        var mean = [Double](repeating: 0, count: layers * heads * k * d)
        for g in 0..<(layers * heads) {
            var j = 0
            for c in 0..<k {
                let cnt = Int(counts[g * k + c])
                let base = (g * k + c) * d
                for r in 0..<cnt {
                    let src = (g * n + sinks + Int(order[g * nc + j + r])) * d
                    for i in 0..<d { mean[base + i] += Double(values[src + i]) }
                }
                j += cnt
                let div = Double(max(cnt, 1))
                for i in 0..<d { mean[base + i] /= div }
            }
        }
        return PackLayout.quantizedLikeCentroids(mean, headDim: d)
    }
}
