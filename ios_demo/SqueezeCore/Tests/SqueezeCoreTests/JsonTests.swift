import XCTest
@testable import SqueezeCore

final class JsonTests: XCTestCase {
    func testScalarsAndTypes() throws {
        XCTAssertEqual(try Json.parse("42"), .int(42))
        XCTAssertEqual(try Json.parse(" -7 "), .int(-7))
        XCTAssertEqual(try Json.parse("0"), .int(0))
        XCTAssertEqual(try Json.parse("123.675"), .double(123.675))
        XCTAssertEqual(try Json.parse("1.5E-7"), .double(1.5e-7))
        guard case .double(let negZero) = try Json.parse("-0.0") else { return XCTFail("-0.0 is not a double") }
        XCTAssertEqual(negZero.bitPattern, (-0.0 as Double).bitPattern)
        XCTAssertEqual(try Json.parse("100000000000000000000"), .double(1e20)) // past Int64: a double
        XCTAssertEqual(try Json.parse("true"), .bool(true))
        XCTAssertEqual(try Json.parse("false"), .bool(false))
        XCTAssertEqual(try Json.parse("null"), .null)
        XCTAssertEqual(try Json.parse("\"\""), .string(""))
    }

    func testNumbersRoundLikePython() throws {
        // shortest round-trip doubles written by Python's json must read back to the same double
        for s in ["0.1", "58.395", "6.556510925292969e-07", "132.53863279389336", "1.7976931348623157e308", "5e-324"] {
            XCTAssertEqual(try Json.parse(s), .double(Double(s)!), s)
        }
    }

    func testStringsAndEscapes() throws {
        XCTAssertEqual(try Json.parse("\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\""), .string("a\"b\\c/d\u{8}\u{C}\n\r\t"))
        XCTAssertEqual(try Json.parse("\"\\u00e9\\u20AC\""), .string("é€"))
        XCTAssertEqual(try Json.parse("\"\\ud83d\\ude00\""), .string("😀")) // a surrogate pair
        XCTAssertEqual(try Json.parse("\"naïve ünïcode 😀\""), .string("naïve ünïcode 😀"))
    }

    func testContainersKeepOrderAndLastDuplicateWins() throws {
        guard case .object(let v) = try Json.parse(#"{"b": [1, 2.5, "x", null, {}], "a": {"k": []}, "b2": true, "a": 3}"#) else {
            return XCTFail("not an object")
        }
        XCTAssertEqual(v.keys, ["b", "b2", "a"])
        XCTAssertEqual(v["b"], .array([.int(1), .double(2.5), .string("x"), .null, .object(JSONObject())]))
        XCTAssertEqual(v["a"], .int(3))
    }

    func testMalformedInputIsRefusedWithAnOffset() {
        let bad = ["", "   ", "{", "[1,]", "[1 2]", "{\"a\" 1}", "{\"a\":1,}", "{a:1}", "'x'", "\"abc", "\"a\\x\"",
                   "\"\\u12G4\"", "01", "1.", ".5", "-", "1e", "+1", "tru", "nul", "[1]x", "{\"a\":1}}", "\"tab\there\"", "NaN",
                   "Infinity", "\u{FEFF}{}"]
        for text in bad {
            let message = thrownMessage(JSONError.self) { try Json.parse(text) }
            XCTAssertTrue(message.hasPrefix("invalid JSON at offset "), "\(text): \(message)")
        }
        XCTAssertThrowsError(try Json.parse([0x7B, 0xC3, 0x28, 0x7D])) // not UTF-8
        // a byte-order mark: skipped in bytes (Python's json.loads of bytes, the manifest readers), refused in text (above)
        XCTAssertEqual(try Json.parse([0xEF, 0xBB, 0xBF] + Array("{}".utf8)), .object(JSONObject()))
        XCTAssertThrowsError(try Json.parse([0xEF, 0xBB, 0xBF] as [UInt8]))
    }

    func testDeepNestingIsRefusedNotAStackOverflow() throws {
        let deep = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        XCTAssertTrue(thrownMessage(JSONError.self) { try Json.parse(deep) }.contains("nesting deeper than 256"))
        guard case .array(let a) = try Json.parse(String(repeating: "[", count: 256) + "1" + String(repeating: "]", count: 256)) else {
            return XCTFail("not an array")
        }
        XCTAssertEqual(a.count, 1)
    }

    func testTypedAccessNamesThePath() throws {
        let root = JSONPath(try Json.parse(#"{"input": {"shape": [1, 4, "64"]}, "n": 2.0, "f": 2.5}"#), path: "manifest")
        XCTAssertEqual(try root["n"].int(), 2)
        XCTAssertEqual(thrownMessage(JSONError.self) { try root["input"]["shape"].intArray() },
                       "manifest.input.shape[2]: expected an integer, found a string")
        XCTAssertEqual(thrownMessage(JSONError.self) { try root["labels"] }, "manifest: missing key \"labels\"")
        XCTAssertThrowsError(try root["f"].int())
    }

    func testReadsEveryGoldenJsonFile() throws {
        for name in ["manifest.json", "video.json", "sampling.json", "latency.json", "logits.json"] {
            guard case .object = try Json.parse(try Golden.bytes(name)) else { return XCTFail("\(name) is not an object") }
        }
        XCTAssertEqual(try Golden.json("logits.json")["logits"].doubleArray().count, 51)
    }
}
