import XCTest
@testable import SqueezeCore

/// Softmax/top-k on the logits the real ONNX export gave for the golden frames_uint8 clip (Python onnxruntime).
final class ClassificationTests: XCTestCase {
    private var g: JSONPath!
    private var logits: [Double] = []

    override func setUpWithError() throws {
        g = try Golden.json("logits.json")
        logits = try g["logits"].doubleArray()
    }

    func testSoftmaxMatchesNumpy() throws {
        let expected = try g["softmax"].doubleArray()
        let p = try Classification.softmax(logits)
        for i in p.indices { XCTAssertEqual(p[i], expected[i], accuracy: 1e-15, "class \(i)") }
        XCTAssertEqual(p.reduce(0, +), 1.0, accuracy: 1e-12)
        // from float32 logits (what a runtime returns): the same probabilities within float32 rounding of the logits
        let pf = try Classification.softmax(logits.map { Float($0) })
        for i in p.indices { XCTAssertEqual(pf[i], expected[i], accuracy: 1e-7) }
    }

    func testTop5MatchesPythonWithLabels() throws {
        let labels = Manifest.parseLabels(try Golden.text("labels.txt"))
        let top = try Classification.topK(logits.map { Float($0) }, k: 5, labels: labels)
        XCTAssertEqual(top.map(\.index), try g["top5"].intArray())
        XCTAssertEqual(top[0].label, labels[top[0].index])
        XCTAssertTrue(zip(top, top.dropFirst()).allSatisfy { $0.probability >= $1.probability })
    }

    func testTiesNaNsAndShortLists() throws {
        XCTAssertEqual(try Classification.topKIndices([0.1, 0.5, 0.0, 0.5], k: 3), [1, 3, 0])
        XCTAssertEqual(try Classification.topKIndices([.nan, 2.0, 1.0], k: 3), [1, 2, 0])
        XCTAssertEqual(try Classification.topKIndices([2.0, 1.0], k: 5), [0, 1])
        XCTAssertEqual(try Classification.softmax([1000.0, 1000.0]), [0.5, 0.5]) // no overflow
        XCTAssertNil(try Classification.topK([1, 2], k: 1, labels: ["only"]).first?.label)
    }
}
