import XCTest
@testable import SqueezeCore

/// A real context pack file (the tiny real-format Llama's, built and saved by the Python pipeline; the goldens
/// ContextPackTest.kt reads): format, content hash, consistency and model checks, and its layout as the exported
/// decoder's context inputs, which must be byte-identical to decoder_context_inputs (sha256 of every input).
final class ContextPackTests: XCTestCase {
    private var bytes: [UInt8] = []
    private var pack: ContextPack!
    private var gen: JSONPath!

    override func setUpWithError() throws {
        bytes = try Golden.bytes("qa_pack.safetensors")
        pack = try ContextPack.read(bytes, source: "qa_pack.safetensors")
        gen = try Golden.json("qa_generation.json.gz")
    }

    static func dtypeOf(_ t: DecoderTensor) -> String {
        switch t {
        case .float32: return "float32"
        case .int64: return "int64"
        }
    }

    static func sha256(_ t: DecoderTensor) -> String { SHA256.hexDigest(t.toLittleEndian()) }

    func testReadsTheRealPackAndVerifiesItsHash() throws {
        XCTAssertEqual(pack.numTokens, try gen["num_tokens"].int())
        XCTAssertEqual(pack.layers, 2)
        XCTAssertEqual(pack.kvHeads, 2)
        XCTAssertEqual(pack.headDim, 8)
        XCTAssertEqual(pack.numClustered, pack.numTokens - 4 - 100)
        XCTAssertEqual(pack.framing, "chat")
        XCTAssertEqual(try ContextPack.contentSha256(tensors: pack.tensors, metadata: pack.metadata), pack.metadata["content_sha256"])
        XCTAssertEqual(try pack.tokenIds().count, pack.numTokens)
        // built for the model and tokenizer the generation golden names
        try pack.checkModel(weightsSha256: gen["model"]["weights_sha256"].string(), tokenizerSha256: gen["model"]["tokenizer_sha256"].string())
        XCTAssertEqual(pack.metadata["context_sha256"], try gen["context_sha256"].string())
        XCTAssertTrue(try CentroidLookup.fromPack(pack).hasLevel1)
    }

    /// bytes with the first occurrence of `old` replaced by `new` (same length)
    private func replacing(_ b: [UInt8], _ old: String, _ new: String) -> [UInt8] {
        let o = Array(old.utf8), n = Array(new.utf8)
        var out = b
        for i in 0...(b.count - o.count) where Array(b[i..<(i + o.count)]) == o {
            out.replaceSubrange(i..<(i + o.count), with: n)
            return out
        }
        XCTFail("\(old) not found")
        return out
    }

    func testDamagedOrForeignPacksAreRefusedInOneLine() throws {
        func refused(_ b: [UInt8], _ expect: String, line: UInt = #line) {
            let m = thrownMessage(PackError.self, line: line) { try ContextPack.read(b, source: "x.pack") }
            XCTAssertTrue(m.contains(expect) && !m.contains("\n"), m, line: line)
        }
        var flipped = bytes
        flipped[flipped.count - 3] &+= 1
        refused(flipped, "modified after it was built")
        refused(Array(bytes.prefix(bytes.count - 10)), "not a readable context pack")
        refused([0, 0, 0, 0], "not a readable context pack")
        refused(replacing(bytes, "squeeze-context-pack/2", "squeeze-context-pack/9"), "is not a squeeze-context-pack/2 file")
        // bytes appended after the last tensor, and two tensors on the same bytes (one range left unused): the content
        // hash still matches (it covers the tensors, not the file), Python's reader (the safetensors library) refuses both
        refused(bytes + Array("garbage".utf8), "(7 bytes after its last tensor)")
        refused(replacing(bytes, "[792,1584]", "[0,792]   "), "its tensors' bytes overlap or leave a gap")
        XCTAssertTrue(thrownMessage(PackError.self) { try self.pack.checkModel(weightsSha256: String(repeating: "0", count: 64), tokenizerSha256: nil) }
            .contains("other model weights"))
        XCTAssertTrue(thrownMessage(PackError.self) { try self.pack.checkModel(weightsSha256: nil, tokenizerSha256: String(repeating: "0", count: 64)) }
            .contains("different tokenizer"))
        XCTAssertTrue(thrownMessage(PackError.self) { try ContextPack.read(path: "/nonexistent.pack") }.contains("not found"))
    }

    func testDecoderContextInputsAreByteIdenticalToPython() throws {
        let shapes = try DecoderShapes.parse(gen["shapes"])
        for attention in ["squeezed", "full"] {
            let run = try XCTUnwrap(try gen["runs"].list().first { try $0["attention"].string() == attention })
            let expected = try run["context_inputs"]
            // the squeezed runs' decoder follows keys: the pack's next_rows_<layer> come after the other inputs
            XCTAssertEqual(try run["follow_keys"].int(), attention == "squeezed" ? 2 : 0)
            let inputs = try PackLayout.decoderContextInputs(pack, shapes: shapes, attention: attention) +
                (attention == "squeezed" ? try PackLayout.nextRows(pack, shapes: shapes) : [])
            XCTAssertEqual(inputs.map(\.name), try expected.obj().keys, attention)
            for (name, t) in inputs {
                let e = try expected[name]
                XCTAssertEqual(ContextPackTests.dtypeOf(t), try e["dtype"].string(), name)
                XCTAssertEqual(t.shape, try e["shape"].intArray(), name)
                XCTAssertEqual(ContextPackTests.sha256(t), try e["sha256"].string(), "\(attention) input \(name)")
            }
        }
    }

    func testNextRowsLeadFromEachClusteredKeyToTheNextPosition() throws {
        // per head, from the row of the first clustered position, next_rows visits every clustered row once, in position
        // order through the cluster-by-cluster layout, and ends at -1; padding rows lead nowhere
        let shapes = try DecoderShapes.parse(gen["shapes"])
        let next = try PackLayout.nextRows(pack, shapes: shapes)
        let h = pack.kvHeads, nc = pack.numClustered, width = shapes.maxClustered
        XCTAssertEqual(next.map(\.name), (0..<pack.layers).map { "next_rows_\($0)" })
        let labels = try pack["lookup.labels"].longs()
        let order = PackLayout.clusterOrder(labels, groups: pack.layers * h, nc: nc, offset: 0)
        for (l, (name, tensor)) in next.enumerated() {
            guard case .int64(let t) = tensor else { return XCTFail("\(name) is not int64") }
            XCTAssertEqual(t.shape, [h * width], name)
            for head in 0..<h {
                let g = (l * h + head) * nc
                var row = Int64(head * width) + Int64(try XCTUnwrap(order[g..<(g + nc)].firstIndex(of: 0)) - g)
                var positions: [Int64] = []
                while row >= 0 && positions.count <= nc {
                    XCTAssertTrue(row >= Int64(head * width) && row < Int64(head * width + nc), "\(name) head \(head): row \(row)")
                    positions.append(order[g + Int(row) - head * width])
                    row = t.data[Int(row)]
                }
                XCTAssertEqual(positions, (0..<Int64(nc)).map { $0 }, "\(name) head \(head)")
                XCTAssertTrue(t.data[(head * width + nc)..<((head + 1) * width)].allSatisfy { $0 == -1 }, "\(name) head \(head): padding")
            }
        }
    }

    func testPacksThatDoNotFitTheArtifactAreRefused() throws {
        let shapes = try DecoderShapes.parse(gen["shapes"])
        var small = shapes
        small.maxContext = pack.numTokens - 1
        XCTAssertTrue(thrownMessage(PackError.self) { try PackLayout.decoderContextInputs(self.pack, shapes: small, attention: "full") }
            .contains("--max-context \(pack.numTokens)"))
        var window = shapes
        window.window = 50
        XCTAssertTrue(thrownMessage(PackError.self) { try PackLayout.decoderContextInputs(self.pack, shapes: window, attention: "squeezed") }
            .contains("window tokens"))
        var clusters = shapes
        clusters.maxClusters = 2
        XCTAssertTrue(thrownMessage(PackError.self) { try PackLayout.decoderContextInputs(self.pack, shapes: clusters, attention: "squeezed") }
            .contains("clusters per head"))
        XCTAssertTrue(thrownMessage(PackError.self) { try PackLayout.decoderContextInputs(self.pack, shapes: shapes, attention: "sparse") }
            .contains("unknown attention"))
    }

    func testHalfPrecisionConversionsAreExact() {
        for bits in 0..<0x10000 {
            let f = Half.toFloat(UInt16(bits))
            if f.isNaN { continue }
            XCTAssertEqual(Int(Half.fromFloat(f)), bits, "half bits \(bits)")
        }
        XCTAssertEqual(Half.toFloat(Half.fromFloat(1 + 1.0 / 2048)), 1)                 // tie -> even
        XCTAssertEqual(Half.toFloat(Half.fromFloat(1 + 3.0 / 2048)), 1 + 2.0 / 1024)    // tie -> even (up)
        XCTAssertEqual(Half.toFloat(Half.fromFloat(65520)), .infinity)
        XCTAssertEqual(Half.toFloat(Half.fromFloat(65519)), 65504)
        XCTAssertEqual(Half.toFloat(Half.fromFloat(5.9604645e-8 * 0.75)), 5.9604645e-8) // subnormal rounding
        XCTAssertEqual(Half.toFloat(Half.fromFloat(5.9604645e-8 * 0.5)), 0)             // tie -> even (zero)
    }

    func testSha256AndPythonJsonStringsMatchPython() {
        // FIPS 180-4 example vectors (hashlib gives the same)
        XCTAssertEqual(SHA256.hexDigest([]), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(SHA256.hexDigest(Array("abc".utf8)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        let two = Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)
        XCTAssertEqual(SHA256.hexDigest(two), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        let million = [UInt8](repeating: UInt8(ascii: "a"), count: 1_000_000)
        XCTAssertEqual(SHA256.hexDigest(million), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
        // fed in uneven pieces (partial blocks, whole blocks straight from the input)
        var pieces = SHA256()
        var at = 0
        for n in [1, 63, 65, 128, 7] + [Int](repeating: 999_736 / 8, count: 8) {
            pieces.update(Array(million[at..<min(at + n, million.count)]))
            at += n
        }
        XCTAssertEqual(at, million.count)
        XCTAssertEqual(pieces.hexDigest(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
        // json.dumps('é\n"😀\x7f\t\\ ~')
        XCTAssertEqual(ContextPack.pythonJsonString("é\n\"😀\u{7f}\t\\ ~"), #""\u00e9\n\"\ud83d\ude00\u007f\t\\ ~""#)
    }
}
