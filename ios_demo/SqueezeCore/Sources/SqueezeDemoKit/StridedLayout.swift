// Element offsets of a strided array walked in row-major order. Core ML's MLMultiArray outputs may be strided (rows
// padded for the Neural Engine), so the logits are read through their strides, never as one contiguous block.
// Platform-free, so it is tested here.

public enum StridedLayout {
    /// Offsets (in elements) of every element of an array of shape with strides, in row-major order.
    public static func rowMajorOffsets(shape: [Int], strides: [Int]) throws -> [Int] {
        try require(shape.count == strides.count, "shape \(shape) and strides \(strides) differ in rank")
        try require(shape.allSatisfy { $0 >= 0 } && strides.allSatisfy { $0 >= 0 }, "negative shape \(shape) or strides \(strides)")
        let count = shape.reduce(1, *)
        var out = [Int](repeating: 0, count: count)
        if count == 0 { return out }
        var index = [Int](repeating: 0, count: shape.count)
        var offset = 0
        for i in 0..<count {
            out[i] = offset
            // odometer: advance the last axis, carry into earlier ones
            var axis = shape.count - 1
            while axis >= 0 {
                index[axis] += 1
                offset += strides[axis]
                if index[axis] < shape[axis] { break }
                offset -= strides[axis] * index[axis]
                index[axis] = 0
                axis -= 1
            }
        }
        return out
    }

    /// Contiguous row-major strides of a shape.
    public static func contiguousStrides(_ shape: [Int]) -> [Int] {
        var strides = [Int](repeating: 1, count: shape.count)
        var s = 1
        for axis in stride(from: shape.count - 1, through: 0, by: -1) {
            strides[axis] = s
            s *= shape[axis]
        }
        return strides
    }
}
