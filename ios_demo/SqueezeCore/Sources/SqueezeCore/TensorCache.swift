// A runtime's own input arrays (MLMultiArray, an ExecuTorch tensor, ...) made once for inputs that stay the same
// between calls. The context pack's tables (tens of MB) go into every step; copying them into a new native array each
// time would cost more than the step. Port of NativeTensorCache in RuntimeBinding.kt: an entry is reused while the
// caller passes the same storage (identity, not content) under the same name and shape; a replaced entry is released.
// Platform-free, so it is tested here.

public final class TensorCache<Native> {
    private struct Key: Hashable {
        let name: String
        let shape: [Int]
    }

    private struct Entry {
        let source: DecoderTensor // kept alive: its buffer cannot be freed and handed to another array while cached
        let native: Native
    }

    private var entries: [Key: Entry] = [:]
    private let release: (Native) -> Void

    public init(release: @escaping (Native) -> Void = { _ in }) {
        self.release = release
    }

    /// Native arrays held now.
    public var count: Int { entries.count }

    /// The native array for `tensor` under `name`: the cached one while `tensor` is the same storage in the same shape
    /// (one buffer may be cached in two shapes, e.g. a pack table flat and per KV head), else a new one from `make`.
    public func get(_ name: String, _ tensor: DecoderTensor, make: (DecoderTensor) throws -> Native) rethrows -> Native {
        let key = Key(name: name, shape: tensor.shape)
        if let entry = entries[key], TensorCache.sameStorage(entry.source, tensor) { return entry.native }
        let native = try make(tensor)
        if let old = entries.updateValue(Entry(source: tensor, native: native), forKey: key) { release(old.native) }
        return native
    }

    /// Releases every native array (a new pack, or the runtime closing).
    public func removeAll() {
        for entry in entries.values { release(entry.native) }
        entries.removeAll()
    }

    /// Whether two tensors read one buffer. Arrays are copy-on-write: a caller that changes values it shares with the
    /// cache writes to a fresh buffer, so the same buffer means the same values.
    static func sameStorage(_ a: DecoderTensor, _ b: DecoderTensor) -> Bool {
        switch (a, b) {
        case (.float32(let x), .float32(let y)): return x.data.count == y.data.count && address(x.data) == address(y.data)
        case (.int64(let x), .int64(let y)): return x.data.count == y.data.count && address(x.data) == address(y.data)
        default: return false
        }
    }

    private static func address<T>(_ values: [T]) -> UnsafeRawPointer? {
        values.withUnsafeBufferPointer { $0.baseAddress.map { UnsafeRawPointer($0) } }
    }
}
