import XCTest
@testable import SqueezeCore

/// The CPU-fallback lookup against lookup_numpy.select_keys on the real pack and the model's real post-RoPE queries
/// (its observation window: 100 queries, and the last one alone, as a decode step), every layer, flat and
/// hierarchical, budget and threshold, per KV group and per query head (the goldens CentroidLookupTest.kt reads).
/// Indices and masks must be identical; cluster scores agree within 1e-12 (float64, summation order differs from BLAS).
final class CentroidLookupTests: XCTestCase {
    private var pack: ContextPack!
    private var lookup: CentroidLookup!
    private var golden: JSONPath!
    private var queries: [Float] = []

    override func setUpWithError() throws {
        pack = try ContextPack.read(try Golden.bytes("qa_pack.safetensors"), source: "qa_pack.safetensors")
        lookup = try CentroidLookup.fromPack(pack)
        golden = try Golden.json("qa_lookup.json.gz")
        queries = try Golden.floatsLE("qa_queries_f32le.bin.gz")
    }

    func testTablesDescribeThePack() throws {
        XCTAssertEqual(lookup.groupSize, try golden["group_size"].int())
        XCTAssertEqual(lookup.firstPosition, try golden["first_position"].int())
        XCTAssertEqual(lookup.numClusters, pack.numClusters)
        XCTAssertEqual(lookup.numClustered, pack.numClustered)
    }

    func testSelectedKeysAreIdenticalToNumpy() throws {
        let shape = try golden["query_shape"].intArray() // [L, Hq, W, D]
        let hq = shape[1], w = shape[2], d = shape[3]
        var maxScoreDiff = 0.0
        let cases = try golden["cases"].list()
        XCTAssertEqual(cases.count, 2 * 2 * 2 * 4)
        var thresholdCases = 0, hierarchicalCases = 0
        for c in cases {
            let layer = try c["layer"].int()
            let range = try c["queries"].intArray()
            let a = range[0], t = range[1] - range[0]
            var q = [Float](repeating: 0, count: hq * t * d)
            for h in 0..<hq {
                let from = ((layer * hq + h) * w + a) * d
                q.replaceSubrange((h * t * d)..<((h + 1) * t * d), with: queries[from..<(from + t * d)])
            }
            let spec = try LookupSpec(mode: c["mode"].string(), budgetKeys: c["budget_keys"].int(), threshold: c["threshold"].double(),
                                      perQueryHead: c["per_query_head"].bool(), hierarchical: c["hierarchical"].bool(),
                                      level1Keep: c["level1_keep"].int())
            let what = "layer \(layer), queries \(range), \(try c["spec"].string()), per head \(spec.perQueryHead)"
            let sel = try lookup.select(layer: layer, queries: q, numQueryHeads: hq, spec: spec)
            let expected = try c["indices"].list()
            XCTAssertEqual(sel.indices.count, expected.count, what)
            for s in expected.indices {
                XCTAssertEqual(sel.indices[s], try expected[s].longArray(), "\(what), head \(s)")
            }
            if try c["valid"].isNull {
                XCTAssertNil(sel.valid, what)
            } else {
                thresholdCases += 1
                let valid = try XCTUnwrap(sel.valid, what)
                for (s, v) in try c["valid"].list().enumerated() {
                    XCTAssertEqual(valid[s], try v.list().map { try $0.bool() }, "\(what), head \(s)")
                }
            }
            if spec.hierarchical { hierarchicalCases += 1 }
            XCTAssertEqual(sel.centroidsScored, try c["centroids_scored"].double(), accuracy: 1e-12, what)
            let scores = try lookup.scoreLayer(layer: layer, queries: q, numQueryHeads: hq, spec: spec).scores
            for (s, row) in try c["scores"].list().enumerated() {
                let e = try row.doubleArray()
                XCTAssertEqual(scores[s].count, e.count, what)
                for k in e.indices { maxScoreDiff = max(maxScoreDiff, abs(e[k] - scores[s][k])) }
            }
        }
        XCTAssertTrue(thresholdCases > 0 && hierarchicalCases > 0, "the golden covers threshold and hierarchical cases")
        XCTAssertLessThanOrEqual(maxScoreDiff, 1e-12, "max cluster score difference \(maxScoreDiff)")
    }

    func testRankingIsStableAndTreatsSignedZerosAsEqual() throws {
        XCTAssertEqual(CentroidLookup.stableDescending([0.0, 0.5, -0.0, 0.5, -1.0]), [1, 3, 0, 2, 4])
        XCTAssertThrowsError(try LookupSpec(mode: "topk"))
        XCTAssertThrowsError(try lookup.select(layer: 0, queries: [1, 2, 3], numQueryHeads: 4, spec: LookupSpec()))
    }
}
