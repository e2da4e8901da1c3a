// The safetensors container a context pack is stored in: an 8-byte little-endian header length, a JSON header
// (dtype, shape and data offsets per tensor, string metadata under "__metadata__"), then the tensors' bytes.
// Port of StoredTensor / SafeTensors in ContextPack.kt; every problem is a one-line PackError.

/// One tensor of a safetensors file: its dtype as safetensors names it ("F16", "I32", ...) and raw LE bytes.
public struct StoredTensor {
    public let name: String
    public let dtype: String
    public let shape: [Int]
    public let data: [UInt8]

    public var elementCount: Int { shape.reduce(1, *) }

    static let numpyNames: [String: String] = [
        "F16": "float16", "F32": "float32", "F64": "float64", "I8": "int8", "U8": "uint8", "I16": "int16",
        "U16": "uint16", "I32": "int32", "U32": "uint32", "I64": "int64", "U64": "uint64", "BOOL": "bool",
    ]
    public static let elementBytes: [String: Int] = [
        "F16": 2, "F32": 4, "F64": 8, "I8": 1, "U8": 1, "I16": 2, "U16": 2, "I32": 4, "U32": 4, "I64": 8, "U64": 8,
        "BOOL": 1, "BF16": 2,
    ]

    /// numpy's name for the dtype (what the content hash spells as torch.<name>).
    public func numpyDtype() throws -> String {
        guard let n = StoredTensor.numpyNames[dtype] else { throw PackError("tensor \(name) has unsupported dtype \(dtype)") }
        return n
    }

    /// Little-endian unsigned integer of `width` bytes at byte offset `at`.
    @inline(__always)
    private static func le(_ p: UnsafeBufferPointer<UInt8>, _ at: Int, _ width: Int) -> UInt64 {
        var v: UInt64 = 0
        for i in 0..<width { v |= UInt64(p[at + i]) << (8 * UInt64(i)) }
        return v
    }

    /// Every element as a float (exact for F16 and F32; F64 rounds).
    public func floats() throws -> [Float] {
        let n = elementCount
        return try data.withUnsafeBufferPointer { p in
            switch dtype {
            case "F16": return (0..<n).map { Half.toFloat(UInt16(StoredTensor.le(p, 2 * $0, 2))) }
            case "F32": return (0..<n).map { Float(bitPattern: UInt32(StoredTensor.le(p, 4 * $0, 4))) }
            case "F64": return (0..<n).map { Float(Double(bitPattern: StoredTensor.le(p, 8 * $0, 8))) }
            default: throw PackError("tensor \(name) is \(dtype), expected a float tensor")
            }
        }
    }

    public func doubles() throws -> [Double] {
        if dtype == "F64" {
            return data.withUnsafeBufferPointer { p in (0..<elementCount).map { Double(bitPattern: StoredTensor.le(p, 8 * $0, 8)) } }
        }
        return try floats().map { Double($0) }
    }

    /// Every element as an Int64 (integer dtypes).
    public func longs() throws -> [Int64] {
        let n = elementCount
        return try data.withUnsafeBufferPointer { p in
            switch dtype {
            case "I8": return (0..<n).map { Int64(Int8(bitPattern: p[$0])) }
            case "U8": return (0..<n).map { Int64(p[$0]) }
            case "I16": return (0..<n).map { Int64(Int16(bitPattern: UInt16(StoredTensor.le(p, 2 * $0, 2)))) }
            case "U16": return (0..<n).map { Int64(StoredTensor.le(p, 2 * $0, 2)) }
            case "I32": return (0..<n).map { Int64(Int32(bitPattern: UInt32(StoredTensor.le(p, 4 * $0, 4)))) }
            case "U32": return (0..<n).map { Int64(StoredTensor.le(p, 4 * $0, 4)) }
            case "I64": return (0..<n).map { Int64(bitPattern: StoredTensor.le(p, 8 * $0, 8)) }
            default: throw PackError("tensor \(name) is \(dtype), expected an integer tensor")
            }
        }
    }
}

public enum SafeTensors {
    public struct File {
        public let metadata: [String: String]
        /// tensors by name, in the header's order
        public let tensors: [String: StoredTensor]
        public let order: [String]
    }

    public static func read(_ bytes: [UInt8], source: String) throws -> File {
        func bad(_ why: String) -> PackError {
            PackError("\(source) is not a readable context pack (\(why)); rebuild it with `squeeze context build`")
        }
        if bytes.count < 8 { throw bad("too short") }
        var headerLen: UInt64 = 0
        for i in 0..<8 { headerLen |= UInt64(bytes[i]) << (8 * UInt64(i)) }
        if headerLen < 2 || headerLen > UInt64(bytes.count - 8) { throw bad("bad header length") }
        let dataStart = 8 + Int(headerLen)
        let header: JSONPath
        do {
            header = JSONPath(try Json.parse(Array(bytes[8..<dataStart])), path: "header")
        } catch is JSONError {
            throw bad("header is not JSON")
        }
        var metadata: [String: String] = [:]
        var tensors: [String: StoredTensor] = [:]
        var order: [String] = []
        var spans: [(Int64, Int64)] = []
        do {
            let obj = try header.obj()
            for name in obj.keys {
                let entry = JSONPath(obj[name]!, path: name)
                if name == "__metadata__" {
                    let m = try entry.obj()
                    for k in m.keys { metadata[k] = try JSONPath(m[k]!, path: k).string() }
                    continue
                }
                let dtype = try entry["dtype"].string()
                let shape = try entry["shape"].intArray()
                let offsets = try entry["data_offsets"].longArray()
                guard let size = StoredTensor.elementBytes[dtype] else { throw bad("tensor \(name) has unknown dtype \(dtype)") }
                var byteCount = Int64(size)
                for d in shape {
                    if d < 0 { throw bad("negative shape") }
                    let (product, overflow) = byteCount.multipliedReportingOverflow(by: Int64(d))
                    if overflow { throw bad("tensor \(name) lies outside the file") }
                    byteCount = product
                }
                let available = Int64(bytes.count - dataStart)
                if offsets.count != 2 || offsets[0] < 0 || offsets[1] - offsets[0] != byteCount || offsets[1] > available {
                    throw bad("tensor \(name) lies outside the file")
                }
                if tensors[name] == nil { order.append(name) }
                tensors[name] = StoredTensor(name: name, dtype: dtype, shape: shape,
                                             data: Array(bytes[(dataStart + Int(offsets[0]))..<(dataStart + Int(offsets[1]))]))
                spans.append((offsets[0], offsets[1]))
            }
        } catch is JSONError {
            throw bad("malformed header")
        }
        // the tensors' bytes follow one another and end the file, as the safetensors library requires (Python's pack
        // reader refuses anything else: bytes appended to a pack, or tensors sharing or skipping bytes)
        var end: Int64 = 0
        for (start, stop) in spans.sorted(by: { $0.0 < $1.0 }) {
            if start != end { throw bad("its tensors' bytes overlap or leave a gap at byte \(Int64(dataStart) + end)") }
            end = stop
        }
        if Int64(dataStart) + end != Int64(bytes.count) { throw bad("\(Int64(bytes.count - dataStart) - end) bytes after its last tensor") }
        return File(metadata: metadata, tensors: tensors, order: order)
    }
}
