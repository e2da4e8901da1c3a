// Golden files written by android_demo/tools/make_golden.py (the ones the Kotlin tests read), found through
// SQUEEZE_GOLDEN_DIR: ios_demo/run_tests.sh copies android_demo/core/src/test/resources/golden there with every
// .gz file decompressed (Foundation on Linux has no gzip reader), so "x.gz" is read from "x".
import Foundation
import XCTest
@testable import SqueezeCore

enum Golden {
    static var dir: String {
        guard let d = ProcessInfo.processInfo.environment["SQUEEZE_GOLDEN_DIR"], !d.isEmpty else {
            fatalError("SQUEEZE_GOLDEN_DIR is not set; run ios_demo/run_tests.sh")
        }
        return d
    }

    static func bytes(_ name: String) throws -> [UInt8] {
        let file = name.hasSuffix(".gz") ? String(name.dropLast(3)) : name
        let path = dir + "/" + file
        guard let data = FileManager.default.contents(atPath: path) else {
            throw GoldenMissing(message: "golden file \(path) is missing; run ios_demo/run_tests.sh (and android_demo/tools/make_golden.py)")
        }
        return [UInt8](data)
    }

    static func text(_ name: String) throws -> String { String(decoding: try bytes(name), as: UTF8.self) }

    static func json(_ name: String) throws -> JSONPath { JSONPath(try Json.parse(try bytes(name)), path: name) }

    static func floatsLE(_ name: String) throws -> [Float] { floats(try bytes(name)) }

    static func floats(_ b: [UInt8]) -> [Float] {
        var out = [Float](repeating: 0, count: b.count / 4)
        for i in 0..<out.count {
            var u = UInt32(b[4 * i])
            u |= UInt32(b[4 * i + 1]) << 8
            u |= UInt32(b[4 * i + 2]) << 16
            u |= UInt32(b[4 * i + 3]) << 24
            out[i] = Float(bitPattern: u)
        }
        return out
    }

    static func video() throws -> JSONPath { try json("video.json") }

    /// The decoded source frames at the sampled indices, one packed RGB frame each.
    static func sourceFrames() throws -> [RgbFrame] {
        if let cached = framesCache { return cached }
        let v = try video()
        let w = try v["width"].int(), h = try v["height"].int(), n = try v["frames"].int()
        let all = try bytes("frames_src.rgb.gz")
        precondition(all.count == n * w * h * 3, "frames_src.rgb has \(all.count) bytes")
        let frames = try (0..<n).map { t in try RgbFrame.packed(all, width: w, height: h, offset: t * w * h * 3) }
        framesCache = frames
        return frames
    }

    private static var framesCache: [RgbFrame]?
}

struct GoldenMissing: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}

/// Index and count of the bytes that differ, for a readable failure message; nil when equal.
func diffBytes(_ expected: [UInt8], _ actual: [UInt8]) -> String? {
    if expected.count != actual.count { return "sizes differ: expected \(expected.count) bytes, got \(actual.count)" }
    var first = -1, count = 0
    for i in expected.indices where expected[i] != actual[i] {
        if first < 0 { first = i }
        count += 1
    }
    if count == 0 { return nil }
    return "\(count) of \(expected.count) bytes differ; first at \(first): expected \(expected[first]), got \(actual[first])"
}

/// The message of the error `body` throws (fails the test when it throws none or another type).
func thrownMessage<E: SqueezeError>(_ errorType: E.Type, file: StaticString = #filePath, line: UInt = #line,
                                     _ body: () throws -> Any?) -> String {
    do {
        _ = try body()
        XCTFail("no \(E.self) thrown", file: file, line: line)
    } catch let e as E {
        return e.message
    } catch {
        XCTFail("expected \(E.self), got \(type(of: error)): \(error)", file: file, line: line)
    }
    return ""
}

/// `s` with the first occurrence of `what` replaced by `with` (unchanged where there is none): the tests' edits of a
/// golden manifest's text.
func replacingFirst(_ s: String, _ what: String, _ with: String) -> String {
    guard let r = s.range(of: what) else { return s }
    return s.replacingCharacters(in: r, with: with)
}
