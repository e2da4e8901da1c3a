// The safetensors container a context pack is stored in: an 8-byte little-endian header length, a JSON header
// (dtype, shape and data offsets per tensor, string metadata under "__metadata__"), then the tensors' bytes.
// Port of StoredTensor / SafeTensors in ContextPack.kt; every problem is a one-line PackError.

/// One tensor of a safetensors file: its dtype as safetensors names it ("F16", "I32", ...) and raw LE bytes. `data` is
/// a slice of the file's bytes (a pack's tensors share the file's storage: reading a pack copies none of them).
/// Conversions come whole (`floats()`, `longs()`) or for a range of elements (`halves(into:)`, `floats(from:count:)`,
/// `longs(from:count:)`): the pack layout converts one layer's rows at a time.
public struct StoredTensor {
    public let name: String
    public let dtype: String
    public let shape: [Int]
    public let data: ArraySlice<UInt8>

    public init(name: String, dtype: String, shape: [Int], data: ArraySlice<UInt8>) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.data = data
    }

    public init(name: String, dtype: String, shape: [Int], data: [UInt8]) {
        self.init(name: name, dtype: dtype, shape: shape, data: data[...])
    }

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

    private func checkRange(_ from: Int, _ count: Int) throws {
        if from < 0 || count < 0 || from + count > elementCount {
            throw PackError("elements \(from)..<\(from + count) outside tensor \(name) of \(elementCount)")
        }
    }

    /// Every element as a float (exact for F16 and F32; F64 rounds).
    public func floats() throws -> [Float] { try floats(from: 0, count: elementCount) }

    /// `count` elements from element `from` as floats (exact for F16 and F32; F64 rounds).
    public func floats(from: Int, count n: Int) throws -> [Float] {
        try checkRange(from, n)
        return try data.withUnsafeBufferPointer { p in
            switch dtype {
            case "F16": return (from..<(from + n)).map { Half.toFloat(UInt16(StoredTensor.le(p, 2 * $0, 2))) }
            case "F32": return (from..<(from + n)).map { Float(bitPattern: UInt32(StoredTensor.le(p, 4 * $0, 4))) }
            case "F64": return (from..<(from + n)).map { Float(Double(bitPattern: StoredTensor.le(p, 8 * $0, 8))) }
            default: throw PackError("tensor \(name) is \(dtype), expected a float tensor")
            }
        }
    }

    /// F16 element `index` as a float (exact).
    public func half(_ index: Int) throws -> Float {
        if dtype != "F16" { throw PackError("tensor \(name) is \(dtype), expected F16") }
        try checkRange(index, 1)
        return data.withUnsafeBufferPointer { p in Half.toFloat(UInt16(p[2 * index]) | UInt16(p[2 * index + 1]) << 8) }
    }

    /// `count` F16 elements from element `from` converted to float (exact) into `dst` from `at`: no array of the
    /// tensor's size is made, whatever its size.
    public func halves(from: Int, count n: Int, into dst: inout [Float], at: Int) throws {
        if dtype != "F16" { throw PackError("tensor \(name) is \(dtype), expected F16") }
        try checkRange(from, n)
        if at < 0 || at + n > dst.count { throw PackError("\(n) elements of tensor \(name) into \(dst.count) floats at \(at)") }
        data.withUnsafeBufferPointer { p in
            dst.withUnsafeMutableBufferPointer { q in
                var src = 2 * from
                for i in at..<(at + n) {
                    q[i] = Half.toFloat(UInt16(p[src]) | UInt16(p[src + 1]) << 8)
                    src += 2
                }
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
    public func longs() throws -> [Int64] { try longs(from: 0, count: elementCount) }

    /// `count` elements from element `from` as Int64 (integer dtypes).
    public func longs(from: Int, count n: Int) throws -> [Int64] {
        try checkRange(from, n)
        let r = from..<(from + n)
        return try data.withUnsafeBufferPointer { p in
            switch dtype {
            case "I8": return r.map { Int64(Int8(bitPattern: p[$0])) }
            case "U8": return r.map { Int64(p[$0]) }
            case "I16": return r.map { Int64(Int16(bitPattern: UInt16(StoredTensor.le(p, 2 * $0, 2)))) }
            case "U16": return r.map { Int64(StoredTensor.le(p, 2 * $0, 2)) }
            case "I32": return r.map { Int64(Int32(bitPattern: UInt32(StoredTensor.le(p, 4 * $0, 4)))) }
            case "U32": return r.map { Int64(StoredTensor.le(p, 4 * $0, 4)) }
            case "I64": return r.map { Int64(bitPattern: StoredTensor.le(p, 8 * $0, 8)) }
            default: throw PackError("tensor \(name) is \(dtype), expected an integer tensor")
            }
        }
    }

    /// `count` I8 elements from element `from` (the centroid codes, read without widening the whole table).
    public func int8s(from: Int, count n: Int) throws -> [Int8] {
        if dtype != "I8" { throw PackError("tensor \(name) is \(dtype), expected I8") }
        try checkRange(from, n)
        return data.withUnsafeBufferPointer { p in (from..<(from + n)).map { Int8(bitPattern: p[$0]) } }
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
                // a slice of the file's bytes (shared storage, no copy)
                tensors[name] = StoredTensor(name: name, dtype: dtype, shape: shape,
                                             data: bytes[(dataStart + Int(offsets[0]))..<(dataStart + Int(offsets[1]))])
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
