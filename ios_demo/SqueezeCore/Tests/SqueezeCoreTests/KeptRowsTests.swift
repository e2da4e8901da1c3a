import XCTest
@testable import SqueezeCore

/// The split plan's CPU lookup against lookup_numpy.kept_rows (the goldens KeptRowsTest.kt reads): random tables (ties,
/// empty and padding clusters, keep_keys from 0 to above every head's keys and above max_keep, +-0 / +-inf / NaN
/// scores) and the tiny model's real lookups. kept_bias and kept_kv must be bit-identical.
final class KeptRowsTests: XCTestCase {
    private var golden: JSONPath!
    private var blob: [Float] = []

    override func setUpWithError() throws {
        golden = try Golden.json("qa_kept_rows.json.gz")
        blob = try Golden.floatsLE("qa_kept_rows_f32le.bin.gz")
    }

    private func floats(_ j: JSONPath) throws -> [Float] {
        let offset = try j["offset"].int()
        return Array(blob[offset..<(offset + (try j["count"].int()))])
    }

    /// Bit-exact comparison (-0.0 != 0.0, -inf == -inf) naming the first difference.
    private func assertBits(_ expected: [Float], _ actual: [Float], _ what: String) {
        XCTAssertEqual(expected.count, actual.count, "\(what): size")
        let bad = zip(expected, actual).enumerated().filter { $0.element.0.bitPattern != $0.element.1.bitPattern }.map(\.offset)
        if let first = bad.first {
            XCTFail("\(what): \(bad.count) of \(expected.count) values differ; first at \(first): expected \(expected[first]), got \(actual[first])")
        }
    }

    func testKeptRowsAreIdenticalToNumpy() throws {
        let cases = try golden["cases"].list()
        XCTAssertEqual(cases.count, 46)
        XCTAssertEqual(try cases.filter { try $0["name"].string().hasPrefix("tiny model") }.count, 4)
        var usedSlots = 0, unusedSlots = 0
        for c in cases {
            let what = try c["name"].string()
            let h = try c["kv_heads"].int(), k = try c["clusters"].int(), maxKeep = try c["max_keep"].int()
            let r = try KeptRows.compute(scores: floats(c["scores"]), counts: c["counts"].longArray(),
                                         clusterStart: c["cluster_start"].longArray(), clusteredKv: floats(c["clustered_kv"]),
                                         kvHeads: h, numClustered: c["clustered_rows"].int(), keepKeys: c["keep_keys"].int(),
                                         maxKeep: maxKeep)
            XCTAssertEqual(r.rowWidth, try c["row_width"].int(), what)
            XCTAssertEqual(r.numClusters, k, what)
            let bias = try floats(c["kept_bias"])
            assertBits(bias, r.bias, "\(what): kept_bias")
            assertBits(try floats(c["kept_kv"]), r.kv, "\(what): kept_kv")
            for i in 0..<h {
                for s in 0..<maxKeep {
                    if bias[i * (maxKeep + k) + s] == 0 { usedSlots += 1 } else { unusedSlots += 1 }
                }
            }
        }
        XCTAssertTrue(usedSlots > 0 && unusedSlots > 0, "the golden covers used (\(usedSlots)) and unused (\(unusedSlots)) slots")
    }

    func testTensorsOfTheLoopGiveTheStageInputs() throws {
        let c = try XCTUnwrap(try golden["cases"].list().first { try $0["name"].string().hasPrefix("tiny model") })
        let h = try c["kv_heads"].int(), k = try c["clusters"].int(), nc = try c["clustered_rows"].int(), w = try c["row_width"].int()
        let maxKeep = try c["max_keep"].int()
        // the pack's context input is flat, [Hkv * Nc, 2D] head by head; a [Hkv, Nc, 2D] view of it gives the same
        for shape in [[h * nc, w], [h, nc, w]] {
            let what = "\(shape)"
            let r = try KeptRows.compute(
                scores: Float32Tensor(floats(c["scores"]), shape: [h, k]),
                counts: Int64Tensor(c["counts"].longArray(), shape: [h, k]),
                clusterStart: Int64Tensor(c["cluster_start"].longArray(), shape: [h, k]),
                clusteredKv: Float32Tensor(floats(c["clustered_kv"]), shape: shape),
                keepKeys: c["keep_keys"].int(), maxKeep: maxKeep)
            let inputs = try r.inputs()
            XCTAssertEqual(inputs.map(\.name), ["kept_kv", "kept_bias"])
            XCTAssertEqual(inputs[0].tensor.shape, [h, maxKeep, w], what)
            XCTAssertEqual(inputs[1].tensor.shape, [h, maxKeep + k], what)
            guard case .float32(let kv) = inputs[0].tensor, case .float32(let bias) = inputs[1].tensor else { return XCTFail("not float32") }
            assertBits(try floats(c["kept_kv"]), kv.data, "\(what): kept_kv")
            assertBits(try floats(c["kept_bias"]), bias.data, "\(what): kept_bias")
        }
    }

    func testClusteredTablesOfTheWrongShapeAreRefused() throws {
        let scores = try Float32Tensor([1, 0, 0, 1], shape: [2, 2])
        let counts = try Int64Tensor([1, 1, 1, 1], shape: [2, 2]), start = try Int64Tensor([0, 1, 0, 1], shape: [2, 2])
        func compute(_ data: [Float], _ shape: [Int]) throws -> KeptRows {
            try KeptRows.compute(scores: scores, counts: counts, clusterStart: start,
                                 clusteredKv: Float32Tensor(data, shape: shape), keepKeys: 2, maxKeep: 2)
        }
        // [Hkv * Nc, 2D] with 4 rows over 2 heads, and its [Hkv, Nc, 2D] view: the same rows
        let rows = (0..<8).map(Float.init)
        let flat = try compute(rows, [4, 2]), view = try compute(rows, [2, 2, 2])
        XCTAssertEqual(flat.kv, [0, 1, 2, 3, 6, 7, 4, 5])
        XCTAssertEqual(flat.kv, view.kv)
        XCTAssertEqual(flat.bias, view.bias)
        let message = thrownMessage(InvalidArgument.self) { try compute([Float](repeating: 0, count: 10), [5, 2]) } // 5 rows, 2 heads
        XCTAssertTrue(message.contains("[Hkv * Nc, 2D]") && message.contains("2 KV heads"), message)
        XCTAssertThrowsError(try compute([Float](repeating: 0, count: 8), [1, 4, 2])) // a 3-D table, another head count
        XCTAssertThrowsError(try compute([Float](repeating: 0, count: 8), [8])) // neither 2-D nor 3-D
    }

    func testASmallCaseByHand() throws {
        // one head, clusters 0..3 with 2, 0, 3, 1 keys (rows laid out cluster by cluster), rows [r, -r]
        let table = (0..<12).map { i -> Float in i % 2 == 0 ? Float(i / 2) : -Float(i / 2) }
        let counts: [Int64] = [2, 0, 3, 1], start: [Int64] = [0, 2, 2, 5]
        // ranking: cluster 2 (0.9), then 0 and 1 tied at 0.5 (index order), then 3
        let r = try KeptRows.compute(scores: [0.5, 0.5, 0.9, 0.1], counts: counts, clusterStart: start, clusteredKv: table,
                                     kvHeads: 1, numClustered: 6, keepKeys: 4, maxKeep: 5)
        let inf = -Float.infinity
        assertBits([2, -2, 3, -3, 4, -4, 0, -0.0, 0, -0.0], r.kv, "kv") // 3 of cluster 2, 1 of 0, row 0
        // slots: 4 used, 1 unused; clusters: 2 and 0 kept (-inf), 1 (empty, ranked after 0) and 3 summarised (0)
        assertBits([0, 0, 0, 0, inf, inf, 0, inf, 0], r.bias, "bias")
        // keep nothing: every slot unused, every cluster a summary
        let none = try KeptRows.compute(scores: [0.5, 0.5, 0.9, 0.1], counts: counts, clusterStart: start, clusteredKv: table,
                                        kvHeads: 1, numClustered: 6, keepKeys: 0, maxKeep: 2)
        assertBits([inf, inf, 0, 0, 0, 0], none.bias, "bias (keep nothing)")
    }

    func testInconsistentTablesAreRefused() {
        let table = [Float](repeating: 0, count: 8)
        XCTAssertThrowsError(try KeptRows.compute(scores: [1, 0], counts: [3, 2], clusterStart: [0, 3], clusteredKv: table,
                                                  kvHeads: 1, numClustered: 4, keepKeys: 5, maxKeep: 5)) // cluster rows past the table
        XCTAssertThrowsError(try KeptRows.compute(scores: [1, 0], counts: [3], clusterStart: [0], clusteredKv: table,
                                                  kvHeads: 1, numClustered: 4, keepKeys: 5, maxKeep: 5)) // counts not [Hkv, K]
    }
}
