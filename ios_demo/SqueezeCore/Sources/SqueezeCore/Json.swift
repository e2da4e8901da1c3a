// A small, strict JSON reader (RFC 8259) for manifest.json, tokenizer.json and golden files: no dependency
// (Foundation's JSONSerialization loses key order and the integer/float distinction). Port of Json.kt.
//
// Values: object -> JSONValue.object (key order kept; a repeated key keeps the last value at the last position,
// as Python's json does), array, string, integer literal -> .int (Int64; .double when it does not fit), other
// number -> .double (correctly rounded, as Python's float()), true/false, null. Malformed input throws JSONError
// with the byte offset; nesting deeper than maxDepth is refused rather than overflowing the stack.

/// One error type per area, each with a one-line message (what the app shows).
public protocol SqueezeError: Error, CustomStringConvertible {
    var message: String { get }
}

extension SqueezeError {
    public var description: String { message }
}

/// A caller passed arguments that cannot work (Kotlin's IllegalArgumentException from require()).
public struct InvalidArgument: SqueezeError {
    public let message: String
    public init(_ message: String) { self.message = message }
}

@inline(__always)
func require(_ condition: Bool, _ message: @autoclosure () -> String) throws {
    if !condition { throw InvalidArgument(message()) }
}

public struct JSONError: SqueezeError {
    public let message: String
    public init(_ message: String) { self.message = message }
}

/// A JSON object with its key order.
public struct JSONObject: Equatable {
    public private(set) var keys: [String] = []
    public private(set) var values: [String: JSONValue] = [:]

    public init() {}

    public subscript(key: String) -> JSONValue? { values[key] }

    public var count: Int { keys.count }

    mutating func set(_ key: String, _ value: JSONValue) {
        if values[key] != nil { keys.removeAll { $0 == key } } // a repeated key: last value, last position
        keys.append(key)
        values[key] = value
    }
}

public indirect enum JSONValue: Equatable {
    case null
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object(JSONObject)
}

public enum Json {
    public static let defaultMaxDepth = 256

    /// Parse text (a leading byte-order mark is refused, as Python's json.loads of str refuses it).
    public static func parse(_ text: String, maxDepth: Int = defaultMaxDepth) throws -> JSONValue {
        try parseUTF8(Array(text.utf8), maxDepth: maxDepth)
    }

    /// Parse UTF-8 bytes. A leading byte-order mark is skipped, as Python's json.loads of bytes and the Python manifest
    /// readers skip it (a Windows editor writes one).
    public static func parse(_ bytes: [UInt8], maxDepth: Int = defaultMaxDepth) throws -> JSONValue {
        try parseUTF8(bytes.starts(with: [0xEF, 0xBB, 0xBF]) ? Array(bytes.dropFirst(3)) : bytes, maxDepth: maxDepth)
    }

    private static func parseUTF8(_ bytes: [UInt8], maxDepth: Int) throws -> JSONValue {
        if !isValidUTF8(bytes) { throw JSONError("JSON text is not valid UTF-8") }
        return try bytes.withUnsafeBufferPointer { buf in
            var p = Parser(s: buf, maxDepth: maxDepth)
            p.skipWhitespace()
            let value = try p.readValue(0)
            p.skipWhitespace()
            if !p.atEnd { throw p.fail("unexpected \(p.describeHere()) after the JSON value") }
            return value
        }
    }

    static func isValidUTF8(_ bytes: [UInt8]) -> Bool {
        var it = bytes.makeIterator()
        var decoder = UTF8()
        while true {
            switch decoder.decode(&it) {
            case .scalarValue: continue
            case .emptyInput: return true
            case .error: return false
            }
        }
    }

    private struct Parser {
        let s: UnsafeBufferPointer<UInt8>
        let maxDepth: Int
        var pos = 0

        init(s: UnsafeBufferPointer<UInt8>, maxDepth: Int) {
            self.s = s
            self.maxDepth = maxDepth
        }

        var atEnd: Bool { pos >= s.count }

        func fail(_ what: String) -> JSONError { JSONError("invalid JSON at offset \(pos): \(what)") }

        func describeHere() -> String {
            if atEnd { return "end of text" }
            let b = s[pos]
            if b < 0x80 { return "character '\(Character(Unicode.Scalar(b)))'" }
            return "byte 0x\(String(b, radix: 16))"
        }

        mutating func skipWhitespace() {
            while pos < s.count {
                let c = s[pos]
                if c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D { pos += 1 } else { break }
            }
        }

        mutating func readValue(_ depth: Int) throws -> JSONValue {
            if atEnd { throw fail("unexpected end of text, expected a value") }
            let c = s[pos]
            switch c {
            case UInt8(ascii: "{"): return try readObject(depth + 1)
            case UInt8(ascii: "["): return try readArray(depth + 1)
            case UInt8(ascii: "\""): return .string(try readString())
            case UInt8(ascii: "t"): try readWord("true"); return .bool(true)
            case UInt8(ascii: "f"): try readWord("false"); return .bool(false)
            case UInt8(ascii: "n"): try readWord("null"); return .null
            default:
                if c == UInt8(ascii: "-") || isDigit(c) { return try readNumber() }
                throw fail("unexpected \(describeHere()), expected a value")
            }
        }

        private func checkDepth(_ depth: Int) throws {
            if depth > maxDepth { throw fail("nesting deeper than \(maxDepth) levels") }
        }

        private mutating func readObject(_ depth: Int) throws -> JSONValue {
            try checkDepth(depth)
            pos += 1 // '{'
            var out = JSONObject()
            skipWhitespace()
            if !atEnd && s[pos] == UInt8(ascii: "}") {
                pos += 1
                return .object(out)
            }
            while true {
                skipWhitespace()
                if atEnd || s[pos] != UInt8(ascii: "\"") { throw fail("expected a string key, found \(describeHere())") }
                let key = try readString()
                skipWhitespace()
                if atEnd || s[pos] != UInt8(ascii: ":") {
                    throw fail("expected ':' after key \"\(key)\", found \(describeHere())")
                }
                pos += 1
                skipWhitespace()
                out.set(key, try readValue(depth))
                skipWhitespace()
                if atEnd { throw fail("unexpected end of text inside an object") }
                switch s[pos] {
                case UInt8(ascii: ","): pos += 1
                case UInt8(ascii: "}"): pos += 1; return .object(out)
                default: throw fail("expected ',' or '}' in an object, found \(describeHere())")
                }
            }
        }

        private mutating func readArray(_ depth: Int) throws -> JSONValue {
            try checkDepth(depth)
            pos += 1 // '['
            var out: [JSONValue] = []
            skipWhitespace()
            if !atEnd && s[pos] == UInt8(ascii: "]") {
                pos += 1
                return .array(out)
            }
            while true {
                skipWhitespace()
                out.append(try readValue(depth))
                skipWhitespace()
                if atEnd { throw fail("unexpected end of text inside an array") }
                switch s[pos] {
                case UInt8(ascii: ","): pos += 1
                case UInt8(ascii: "]"): pos += 1; return .array(out)
                default: throw fail("expected ',' or ']' in an array, found \(describeHere())")
                }
            }
        }

        private mutating func readWord(_ word: String) throws {
            let w = Array(word.utf8)
            let n = w.count
            if pos + n > s.count || !(0..<n).allSatisfy({ s[pos + $0] == w[$0] }) {
                throw fail("unexpected \(describeHere()), expected a value")
            }
            pos += n
        }

        private mutating func readString() throws -> String {
            pos += 1 // opening quote
            var out: [UInt8] = []
            while true {
                if atEnd { throw fail("unterminated string") }
                let c = s[pos]
                pos += 1
                if c == UInt8(ascii: "\"") {
                    return String(decoding: out, as: UTF8.self)
                } else if c == UInt8(ascii: "\\") {
                    if atEnd { throw fail("unterminated escape") }
                    let e = s[pos]
                    pos += 1
                    switch e {
                    case UInt8(ascii: "\""): out.append(0x22)
                    case UInt8(ascii: "\\"): out.append(0x5C)
                    case UInt8(ascii: "/"): out.append(0x2F)
                    case UInt8(ascii: "b"): out.append(0x08)
                    case UInt8(ascii: "f"): out.append(0x0C)
                    case UInt8(ascii: "n"): out.append(0x0A)
                    case UInt8(ascii: "r"): out.append(0x0D)
                    case UInt8(ascii: "t"): out.append(0x09)
                    case UInt8(ascii: "u"):
                        var unit = UInt32(try readHex4())
                        if (0xD800..<0xDC00).contains(unit), pos + 6 <= s.count, s[pos] == 0x5C, s[pos + 1] == UInt8(ascii: "u") {
                            // a surrogate pair arrives as two escapes
                            let save = pos
                            pos += 2
                            let low = UInt32(try readHex4())
                            if (0xDC00..<0xE000).contains(low) {
                                unit = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                            } else {
                                pos = save
                            }
                        }
                        // a lone surrogate cannot be held by a Swift String: U+FFFD
                        let scalar = Unicode.Scalar(unit) ?? "\u{FFFD}"
                        out.append(contentsOf: Array(String(Character(scalar)).utf8))
                    default:
                        pos -= 1
                        throw fail("invalid escape '\\\(Character(Unicode.Scalar(e)))'")
                    }
                } else if c < 0x20 {
                    pos -= 1
                    throw fail("control character U+\(hex4(Int(c))) inside a string")
                } else {
                    out.append(c)
                }
            }
        }

        private mutating func readHex4() throws -> Int {
            if pos + 4 > s.count { throw fail("truncated \\u escape") }
            var v = 0
            for i in 0..<4 {
                let c = s[pos + i]
                let d: Int
                switch c {
                case 0x30...0x39: d = Int(c) - 0x30
                case 0x41...0x46: d = Int(c) - 0x41 + 10
                case 0x61...0x66: d = Int(c) - 0x61 + 10
                default: throw fail("invalid \\u escape")
                }
                v = v * 16 + d
            }
            pos += 4
            return v
        }

        private func isDigit(_ c: UInt8) -> Bool { c >= 0x30 && c <= 0x39 }

        private mutating func readNumber() throws -> JSONValue {
            let start = pos
            if s[pos] == UInt8(ascii: "-") { pos += 1 }
            if atEnd { throw fail("truncated number") }
            if s[pos] == UInt8(ascii: "0") {
                pos += 1
            } else if s[pos] >= 0x31 && s[pos] <= 0x39 {
                while !atEnd && isDigit(s[pos]) { pos += 1 }
            } else {
                throw fail("invalid number")
            }
            var integral = true
            if !atEnd && s[pos] == UInt8(ascii: ".") {
                integral = false
                pos += 1
                if atEnd || !isDigit(s[pos]) { throw fail("digits expected after the decimal point") }
                while !atEnd && isDigit(s[pos]) { pos += 1 }
            }
            if !atEnd && (s[pos] == UInt8(ascii: "e") || s[pos] == UInt8(ascii: "E")) {
                integral = false
                pos += 1
                if !atEnd && (s[pos] == UInt8(ascii: "+") || s[pos] == UInt8(ascii: "-")) { pos += 1 }
                if atEnd || !isDigit(s[pos]) { throw fail("digits expected in the exponent") }
                while !atEnd && isDigit(s[pos]) { pos += 1 }
            }
            let literal = String(decoding: UnsafeBufferPointer(rebasing: s[start..<pos]), as: UTF8.self)
            if integral, let v = Int64(literal) { return .int(v) }
            guard let d = Double(literal) else { throw fail("invalid number") } // strtod: correctly rounded
            return .double(d)
        }
    }
}

func hex4(_ v: Int) -> String {
    let h = String(v, radix: 16, uppercase: true)
    return String(repeating: "0", count: max(0, 4 - h.count)) + h
}

/// Typed access to parsed JSON with one-line errors naming the path ("input.shape[2]"). Port of JsonPath.
public struct JSONPath {
    public let value: JSONValue
    public let path: String

    public init(_ value: JSONValue, path: String = "") {
        self.value = value
        self.path = path
    }

    public static func parse(_ bytes: [UInt8], path: String = "") throws -> JSONPath {
        JSONPath(try Json.parse(bytes), path: path)
    }

    private func fail(_ expected: String) -> JSONError {
        JSONError("\(path): expected \(expected), found \(JSONPath.describe(value))")
    }

    public var isNull: Bool { value == .null }

    public func obj() throws -> JSONObject {
        if case .object(let o) = value { return o }
        throw fail("an object")
    }

    public func has(_ key: String) throws -> Bool { try obj()[key] != nil }

    public subscript(key: String) -> JSONPath {
        get throws {
            guard let v = try obj()[key] else { throw JSONError("\(path): missing key \"\(key)\"") }
            return JSONPath(v, path: child(key))
        }
    }

    public func opt(_ key: String) throws -> JSONPath? {
        guard let v = try obj()[key] else { return nil }
        return JSONPath(v, path: child(key))
    }

    public func list() throws -> [JSONPath] {
        guard case .array(let l) = value else { throw fail("an array") }
        return l.enumerated().map { JSONPath($0.element, path: "\(path)[\($0.offset)]") }
    }

    public func string() throws -> String {
        if case .string(let s) = value { return s }
        throw fail("a string")
    }

    public func stringOrNull() throws -> String? { isNull ? nil : try string() }

    public func bool() throws -> Bool {
        if case .bool(let b) = value { return b }
        throw fail("true or false")
    }

    public func long() throws -> Int64 {
        switch value {
        case .int(let v): return v
        case .double(let d) where d == d.rounded(.down) && abs(d) < 9.0e15: return Int64(d)
        default: throw fail("an integer")
        }
    }

    public func int() throws -> Int {
        let v = try long()
        if v < Int64(Int32.min) || v > Int64(Int32.max) { throw fail("an integer in 32-bit range") }
        return Int(v)
    }

    public func double() throws -> Double {
        switch value {
        case .int(let v): return Double(v)
        case .double(let d): return d
        default: throw fail("a number")
        }
    }

    public func intArray() throws -> [Int] { try list().map { try $0.int() } }

    public func longArray() throws -> [Int64] { try list().map { try $0.long() } }

    public func doubleArray() throws -> [Double] { try list().map { try $0.double() } }

    private func child(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    public static func describe(_ v: JSONValue) -> String {
        switch v {
        case .null: return "null"
        case .object: return "an object"
        case .array: return "an array"
        case .string: return "a string"
        case .bool(let b): return "\(b)"
        case .int(let i): return "the integer \(i)"
        case .double(let d): return "the number \(d)"
        }
    }
}
