import XCTest
@testable import SqueezeCore

/// PackLayout converts the pack's fp16 key/value rows layer by layer straight into the decoder inputs' float32 buffers
/// (PackLayoutLayerTest.kt's cases). The whole layout is byte-identical to Python's
/// (ContextPackTests.testDecoderContextInputsAreByteIdenticalToPython, the reference); here each layer's own call gives
/// exactly that layer's part of it on the real 2-layer pack, and one layer's inputs come from that layer's rows only
/// (the pack's other layers replaced by other values leave them unchanged). Swift on Linux has no allocation counter:
/// the allocation bound is the Kotlin test's (JVM per-thread allocated bytes); here it holds by the same structure
/// (layerContextInputs).
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

    func testEachLayersCallGivesThatLayersPartOfTheLayout() throws {
        XCTAssertGreaterThan(pack.layers, 1)
        for attention in ["squeezed", "full"] {
            // Python's bytes (ContextPackTests)
            let whole = try PackLayout.decoderContextInputs(pack, shapes: shapes, attention: attention)
            XCTAssertEqual(whole.count, pack.layers * (attention == "full" ? 2 : 8), attention)
            for l in 0..<pack.layers {
                let layer = try PackLayout.layerContextInputs(pack, shapes: shapes, attention: attention, layer: l)
                XCTAssertTrue(layer.allSatisfy { $0.name.hasSuffix("_\(l)") }, "\(attention) layer \(l)")
                assertSame(whole.filter { $0.name.hasSuffix("_\(l)") }, layer, "\(attention) layer \(l)")
            }
        }
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
