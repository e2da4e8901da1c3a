import XCTest
@testable import SqueezeCore

/// The split plan's CPU lookup against lookup_numpy.kept_rows (the goldens KeptRowsTest.kt reads): random tables (ties,
/// empty and padding clusters, keep_keys from 0 to above every head's keys and above max_keep, +-0 / +-inf / NaN
/// scores; with followed rows: kept ones, repeated ones, -1) and the tiny model's real lookups (a decoder with followed
/// keys: its prefill and both decode steps). kept_keys, kept_values and kept_bias must be bit-identical, the slots' rows
/// equal; and the pointer a stage's follow_weights give (lookup_numpy.follow_pointer) equal.
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
        XCTAssertEqual(cases.count, 52)
        XCTAssertEqual(try cases.filter { try $0["name"].string().hasPrefix("tiny model") }.count, 6)
        var usedSlots = 0, unusedSlots = 0, followed = 0, movedByFollowing = 0
        for c in cases {
            let what = try c["name"].string()
            let h = try c["kv_heads"].int(), k = try c["clusters"].int(), maxKeep = try c["max_keep"].int()
            let follow = try c.has("follow_rows") ? try c["follow_rows"].longArray() : nil
            func compute(_ followRows: [Int64]?) throws -> KeptRows {
                try KeptRows.compute(scores: floats(c["scores"]), counts: c["counts"].longArray(),
                                     clusterStart: c["cluster_start"].longArray(), clusteredKeys: floats(c["clustered_keys"]),
                                     clusteredValues: floats(c["clustered_values"]), kvHeads: h,
                                     numClustered: c["clustered_rows"].int(), keepKeys: c["keep_keys"].int(), maxKeep: maxKeep,
                                     followRows: followRows)
            }
            let r = try compute(follow)
            XCTAssertEqual(r.headDim, try c["head_dim"].int(), what)
            XCTAssertEqual(r.numClusters, k, what)
            let bias = try floats(c["kept_bias"])
            assertBits(bias, r.bias, "\(what): kept_bias")
            assertBits(try floats(c["kept_keys"]), r.keys, "\(what): kept_keys")
            assertBits(try floats(c["kept_values"]), r.values, "\(what): kept_values")
            for i in 0..<h {
                for s in 0..<maxKeep {
                    if bias[i * (maxKeep + k) + s] == 0 { usedSlots += 1 } else { unusedSlots += 1 }
                    XCTAssertEqual(r.slotRows[i * maxKeep + s] >= 0, bias[i * (maxKeep + k) + s] == 0, "\(what): slot \(s) of head \(i)")
                }
            }
            if let follow = follow {
                followed += 1
                XCTAssertEqual(r.slotRows, try c["slot_rows"].longArray(), "\(what): slot rows")
                // the followed rows add slots (the summaries stay the selection's); without them the lookup differs
                let plain = try compute(nil)
                XCTAssertEqual(Array(plain.bias.suffix(k)), Array(r.bias.suffix(k)), "\(what): summaries")
                if plain.slotRows != r.slotRows { movedByFollowing += 1 }
                XCTAssertEqual(try compute(follow.map { _ in -1 }).slotRows, plain.slotRows, "\(what): no followed rows")
            }
        }
        XCTAssertTrue(usedSlots > 0 && unusedSlots > 0, "the golden covers used (\(usedSlots)) and unused (\(unusedSlots)) slots")
        XCTAssertEqual(followed, 10)
        // every followed case but the tiny model's prefills (fed -1: a prompt call follows none) adds rows
        XCTAssertEqual(movedByFollowing, 8, "the followed cases add rows to the selection's slots")
    }

    func testFollowPointerIsIdenticalToNumpy() throws {
        let cases = try golden["pointer_cases"].list()
        XCTAssertEqual(try cases.map { try $0["name"].string() }, ["ties", "few weights", "one"])
        var found = 0, none = 0
        for c in cases {
            let what = try c["name"].string()
            let weights = try c["weights"].list().map { Float(try $0.double()) }
            let pointer = try KeptRows.followPointer(weights: weights, slotRows: c["slot_rows"].longArray(),
                                                     nextRows: c["next_rows"].longArray(), kvHeads: c["kv_heads"].int(),
                                                     follow: c["follow"].int())
            let expected = try c["pointer"].longArray()
            XCTAssertEqual(pointer, expected, what)
            found += expected.filter { $0 >= 0 }.count
            none += expected.filter { $0 < 0 }.count
        }
        XCTAssertTrue(found > 0 && none > 0, "the golden covers rows (\(found)) and none (\(none))")
    }

    func testFollowedRowsTakeTheFreeSlotsOnce() throws {
        // 2 heads of 5 slots; head 0 kept rows 3 and 4, head 1 rows 10, 11, 12 (flat rows, head 1's offset by 10)
        let slots: [Int64] = [3, 4, -1, -1, -1, 10, 11, 12, -1, -1]
        // head 0: -1 skipped, 4 kept already, 7 then 7 again once; head 1: 12 kept already, 15 new, -1
        XCTAssertEqual(try KeptRows.withFollowed(slots, [-1, 4, 7, 7, 12, 15, -1, 13], kvHeads: 2),
                       [3, 4, 7, -1, -1, 10, 11, 12, 15, 13])
        XCTAssertEqual(try KeptRows.withFollowed(slots, [Int64](repeating: -1, count: 4), kvHeads: 2), slots)
        // more new rows than free slots: the loop must select keep_keys - follow_keys
        XCTAssertEqual(thrownMessage(InvalidArgument.self) {
            try KeptRows.withFollowed([1, 2, 3], [5, 6], kvHeads: 1)
        }, "no slot left for a followed row: 3 slots, the selection used 3; pass keep_keys - follow_keys")
        // through the lookup: one head, clusters of 2, 0, 3, 1 keys (rows cluster by cluster), D = 1: key r, value -r
        let keys = (0..<6).map(Float.init)
        let r = try KeptRows.compute(scores: [0.5, 0.5, 0.9, 0.1], counts: [2, 0, 3, 1], clusterStart: [0, 2, 2, 5],
                                     clusteredKeys: keys, clusteredValues: keys.map { -$0 }, kvHeads: 1, numClustered: 6,
                                     keepKeys: 2, maxKeep: 5, followRows: [5, 3])
        let inf = -Float.infinity
        XCTAssertEqual(r.slotRows, [2, 3, 5, -1, -1])  // 2 of cluster 2, then followed row 5; row 3 kept already
        assertBits([2, 3, 5, 0, 0], r.keys, "keys")
        assertBits([-2, -3, -5, -0.0, -0.0], r.values, "values")
        // cluster 2 kept (-inf), every other one summarised, cluster 3 too: its row 5 is followed, not selected
        assertBits([0, 0, 0, inf, inf, 0, 0, inf, 0], r.bias, "bias")
        XCTAssertThrowsError(try KeptRows.compute(scores: [0.5, 0.5, 0.9, 0.1], counts: [2, 0, 3, 1], clusterStart: [0, 2, 2, 5],
                                                  clusteredKeys: keys, clusteredValues: keys, kvHeads: 1, numClustered: 6,
                                                  keepKeys: 2, maxKeep: 5, followRows: [6])) // past the table
    }

    func testThePointerFollowsTheLargestWeightsStably() throws {
        // one head of 6 slots: ranked 0.5 (slot 3), then 0.25 twice (slots 1, 4: the lower first), then 0 / NaN
        let weights: [Float] = [0, 0.25, .nan, 0.5, 0.25, -0.0]
        let rows: [Int64] = [0, 1, 2, 3, -1, 5]
        let next: [Int64] = [10, 11, 12, 13, 14, 15]
        XCTAssertEqual(try KeptRows.followPointer(weights: weights, slotRows: rows, nextRows: next, kvHeads: 1, follow: 3),
                       [13, 11, -1])  // slot 4 is unused: -1
        // a zero weight (a masked slot) gives none, however far down the F largest reach
        XCTAssertEqual(try KeptRows.followPointer(weights: weights, slotRows: rows, nextRows: next, kvHeads: 1, follow: 6),
                       [13, 11, -1, -1, -1, -1])
        // two heads: each ranks its own slots
        XCTAssertEqual(try KeptRows.followPointer(weights: [0.1, 0.9, 0.7, 0.3], slotRows: [0, 1, 2, 3], nextRows: [1, 2, 3, -1],
                                                  kvHeads: 2, follow: 1), [2, 3])
        XCTAssertThrowsError(try KeptRows.followPointer(weights: [1, 1], slotRows: [0, 1], nextRows: [1, -1], kvHeads: 1, follow: 3))
        XCTAssertThrowsError(try KeptRows.followPointer(weights: [1], slotRows: [4], nextRows: [1, -1], kvHeads: 1, follow: 1))
    }

    func testTensorsOfTheLoopGiveTheStageInputs() throws {
        // a decode step of the tiny decoder with followed keys: keep_keys - 2 selected, the previous call's rows added
        let c = try XCTUnwrap(try golden["cases"].list().first { try $0["name"].string().hasPrefix("tiny model, decode") })
        let h = try c["kv_heads"].int(), k = try c["clusters"].int(), nc = try c["clustered_rows"].int(), d = try c["head_dim"].int()
        let maxKeep = try c["max_keep"].int()
        // the pack's context inputs are flat, [Hkv * Nc, D] head by head; [Hkv, Nc, D] views of them give the same
        for shape in [[h * nc, d], [h, nc, d]] {
            let what = "\(shape)"
            let r = try KeptRows.compute(
                scores: Float32Tensor(floats(c["scores"]), shape: [h, k]),
                counts: Int64Tensor(c["counts"].longArray(), shape: [h, k]),
                clusterStart: Int64Tensor(c["cluster_start"].longArray(), shape: [h, k]),
                clusteredKeys: Float32Tensor(floats(c["clustered_keys"]), shape: shape),
                clusteredValues: Float32Tensor(floats(c["clustered_values"]), shape: shape),
                keepKeys: c["keep_keys"].int(), maxKeep: maxKeep, followRows: c["follow_rows"].longArray())
            let inputs = try r.inputs()
            XCTAssertEqual(inputs.map(\.name), ["kept_keys", "kept_values", "kept_bias"])
            for (name, tensor) in inputs {
                XCTAssertEqual(tensor.shape, name == "kept_bias" ? [h, maxKeep + k] : [h, maxKeep, d], "\(what): \(name)")
                guard case .float32(let t) = tensor else { return XCTFail("\(name) is not float32") }
                assertBits(try floats(c[name]), t.data, "\(what): \(name)")
            }
        }
    }

    func testClusteredTablesOfTheWrongShapeAreRefused() throws {
        let scores = try Float32Tensor([1, 0, 0, 1], shape: [2, 2])
        let counts = try Int64Tensor([1, 1, 1, 1], shape: [2, 2]), start = try Int64Tensor([0, 1, 0, 1], shape: [2, 2])
        // values: the keys negated, of the same shape unless valueShape says otherwise
        func compute(_ data: [Float], _ shape: [Int], valueShape: [Int]? = nil) throws -> KeptRows {
            try KeptRows.compute(scores: scores, counts: counts, clusterStart: start,
                                 clusteredKeys: Float32Tensor(data, shape: shape),
                                 clusteredValues: Float32Tensor(data.map { -$0 }, shape: valueShape ?? shape), keepKeys: 2, maxKeep: 2)
        }
        // [Hkv * Nc, D] with 4 rows over 2 heads, and their [Hkv, Nc, D] views: the same rows
        let rows = (0..<8).map(Float.init)
        let flat = try compute(rows, [4, 2]), view = try compute(rows, [2, 2, 2])
        XCTAssertEqual(flat.keys, [0, 1, 2, 3, 6, 7, 4, 5])
        assertBits([-0.0, -1, -2, -3, -6, -7, -4, -5], flat.values, "values")
        XCTAssertEqual(flat.keys, view.keys)
        XCTAssertEqual(flat.values, view.values)
        XCTAssertEqual(flat.bias, view.bias)
        let message = thrownMessage(InvalidArgument.self) { try compute([Float](repeating: 0, count: 10), [5, 2]) } // 5 rows, 2 heads
        XCTAssertEqual(message, "clustered_keys [5, 2] / clustered_values [5, 2] must both be [Hkv * Nc, D] with rows for the " +
                       "scores' 2 KV heads")
        let apart = thrownMessage(InvalidArgument.self) { try compute(rows, [4, 2], valueShape: [2, 2, 2]) } // keys and values apart
        XCTAssertTrue(apart.contains("must both be [Hkv * Nc, D]"), apart)
        XCTAssertThrowsError(try compute([Float](repeating: 0, count: 8), [1, 4, 2])) // a 3-D table, another head count
        XCTAssertThrowsError(try compute([Float](repeating: 0, count: 8), [8])) // neither 2-D nor 3-D
    }

    func testASmallCaseByHand() throws {
        // one head, clusters 0..3 with 2, 0, 3, 1 keys (rows laid out cluster by cluster), D = 1: key r, value -r
        let keys = (0..<6).map(Float.init), values = keys.map { -$0 }
        let counts: [Int64] = [2, 0, 3, 1], start: [Int64] = [0, 2, 2, 5]
        // ranking: cluster 2 (0.9), then 0 and 1 tied at 0.5 (index order), then 3
        let r = try KeptRows.compute(scores: [0.5, 0.5, 0.9, 0.1], counts: counts, clusterStart: start, clusteredKeys: keys,
                                     clusteredValues: values, kvHeads: 1, numClustered: 6, keepKeys: 4, maxKeep: 5)
        let inf = -Float.infinity
        assertBits([2, 3, 4, 0, 0], r.keys, "keys") // 3 of cluster 2, 1 of 0, row 0
        assertBits([-2, -3, -4, -0.0, -0.0], r.values, "values")
        // slots: 4 used, 1 unused; clusters: 2 and 0 kept (-inf), 1 (empty, ranked after 0) and 3 summarised (0)
        assertBits([0, 0, 0, 0, inf, inf, 0, inf, 0], r.bias, "bias")
        // keep nothing: every slot unused, every cluster a summary
        let none = try KeptRows.compute(scores: [0.5, 0.5, 0.9, 0.1], counts: counts, clusterStart: start, clusteredKeys: keys,
                                        clusteredValues: values, kvHeads: 1, numClustered: 6, keepKeys: 0, maxKeep: 2)
        assertBits([inf, inf, 0, 0, 0, 0], none.bias, "bias (keep nothing)")
    }

    func testInconsistentTablesAreRefused() {
        let table = [Float](repeating: 0, count: 8)
        XCTAssertThrowsError(try KeptRows.compute(scores: [1, 0], counts: [3, 2], clusterStart: [0, 3], clusteredKeys: table,
                                                  clusteredValues: table, kvHeads: 1, numClustered: 4, keepKeys: 5,
                                                  maxKeep: 5)) // cluster rows past the table
        XCTAssertThrowsError(try KeptRows.compute(scores: [1, 0], counts: [3], clusterStart: [0], clusteredKeys: table,
                                                  clusteredValues: table, kvHeads: 1, numClustered: 4, keepKeys: 5,
                                                  maxKeep: 5)) // counts not [Hkv, K]
        XCTAssertThrowsError(try KeptRows.compute(scores: [1, 0], counts: [2, 2], clusterStart: [0, 2], clusteredKeys: table,
                                                  clusteredValues: Array(table[..<4]), kvHeads: 1, numClustered: 4, keepKeys: 5,
                                                  maxKeep: 5)) // values not the keys' size
    }
}
