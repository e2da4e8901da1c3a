// A named input or output of the exported decoder: float32 or int64, row-major, with its shape (the tensors a
// DecoderRuntime binding exchanges). Port of DecoderTensor in ContextPack.kt.

public struct Float32Tensor: Equatable {
    public let data: [Float]
    public let shape: [Int]

    public init(_ data: [Float], shape: [Int]) throws {
        try require(data.count == shape.reduce(1, *), "\(data.count) floats for shape \(shape)")
        self.data = data
        self.shape = shape
    }
}

public struct Int64Tensor: Equatable {
    public let data: [Int64]
    public let shape: [Int]

    public init(_ data: [Int64], shape: [Int]) throws {
        try require(data.count == shape.reduce(1, *), "\(data.count) longs for shape \(shape)")
        self.data = data
        self.shape = shape
    }
}

public enum DecoderTensor: Equatable {
    case float32(Float32Tensor)
    case int64(Int64Tensor)

    public var shape: [Int] {
        switch self {
        case .float32(let t): return t.shape
        case .int64(let t): return t.shape
        }
    }

    public var elementCount: Int { shape.reduce(1, *) }

    /// Little-endian bytes (what a runtime binding copies into its tensor).
    public func toLittleEndian() -> [UInt8] {
        var out: [UInt8] = []
        switch self {
        case .float32(let t):
            out.reserveCapacity(t.data.count * 4)
            for v in t.data { withUnsafeBytes(of: v.bitPattern.littleEndian) { out += $0 } }
        case .int64(let t):
            out.reserveCapacity(t.data.count * 8)
            for v in t.data { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        }
        return out
    }
}
