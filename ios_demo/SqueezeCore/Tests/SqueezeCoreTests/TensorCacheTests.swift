import XCTest
@testable import SqueezeCore

/// TensorCache (the runtimes' input arrays made once per pack): identity of storage, not content, decides reuse.
final class TensorCacheTests: XCTestCase {
    func testTheSameStorageIsMadeOnceAndReplacedOnesAreReleased() throws {
        var released: [String] = []
        var made = 0
        let cache = TensorCache<String> { released.append($0) }
        let make = { (t: DecoderTensor) -> String in made += 1; return "native\(made - 1):\(t.elementCount)" }
        let context = DecoderTensor.float32(try Float32Tensor([Float](repeating: 0, count: 4), shape: [2, 2]))
        XCTAssertEqual(cache.get("centroids_0", context, make: make), "native0:4")
        let again = context // a copy of the value shares the buffer
        XCTAssertEqual(cache.get("centroids_0", again, make: make), "native0:4")
        // equal values in another buffer: made again, the old one released
        let other = DecoderTensor.float32(try Float32Tensor([Float](repeating: 0, count: 4), shape: [2, 2]))
        XCTAssertEqual(cache.get("centroids_0", other, make: make), "native1:4")
        XCTAssertEqual(released, ["native0:4"])
        XCTAssertEqual(cache.get("n_tokens", .int64(try Int64Tensor([3], shape: [1])), make: make), "native2:1")
        XCTAssertEqual(cache.count, 2)
        cache.removeAll()
        XCTAssertEqual(released.sorted(), ["native0:4", "native1:4", "native2:1"])
        XCTAssertEqual(cache.count, 0)
    }

    func testAChangedCopyIsMadeAgain() throws {
        var made = 0
        let cache = TensorCache<Int>()
        var values: [Float] = [1, 2, 3, 4]
        let first = DecoderTensor.float32(try Float32Tensor(values, shape: [4]))
        XCTAssertEqual(cache.get("hidden", first) { _ in made += 1; return made }, 1)
        values[0] = 9 // copy on write: the cached tensor keeps [1, 2, 3, 4], the new one has its own buffer
        XCTAssertEqual(cache.get("hidden", .float32(try Float32Tensor(values, shape: [4]))) { _ in made += 1; return made }, 2)
    }

    func testOneStorageInTwoShapesKeepsBothArrays() throws {
        // a .pte's prefill_exact takes a clustered table per KV head, [Hkv, Nc, D], decode the flat [Hkv * Nc, D] table
        var made = 0
        let cache = TensorCache<String>()
        let data = [Float](repeating: 1, count: 12)
        let flat = DecoderTensor.float32(try Float32Tensor(data, shape: [6, 2]))
        let perHead = DecoderTensor.float32(try Float32Tensor(data, shape: [2, 3, 2]))
        for _ in 0..<3 {
            _ = cache.get("clustered_keys_0", flat) { t in made += 1; return "\(t.shape)" }
            _ = cache.get("clustered_keys_0", perHead) { t in made += 1; return "\(t.shape)" }
        }
        XCTAssertEqual(made, 2)
        XCTAssertEqual(cache.count, 2)
    }

    func testATensorOfAnotherTypeInTheSameShapeIsMadeAgain() throws {
        var made = 0
        let cache = TensorCache<Int>()
        _ = cache.get("x", .float32(try Float32Tensor([0], shape: [1]))) { _ in made += 1; return made }
        _ = cache.get("x", .int64(try Int64Tensor([0], shape: [1]))) { _ in made += 1; return made }
        XCTAssertEqual(made, 2)
    }
}
