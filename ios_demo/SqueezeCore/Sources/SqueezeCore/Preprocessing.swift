// Preprocessing of the Python pipeline (squeezetime/video.py), bit for bit on the uint8 path: short-side bilinear
// resize (resize_short_side), centre crop, the frames_uint8 packing (N x T x H x W x 3) and the float
// normalisation (normalize). Port of Preprocessing.kt; see android_demo/README.md for why two PyTorch kernels.

/// An RGB image in a byte array: width x height pixels, rowStride bytes from one row to the next, pixelStride bytes
/// from one pixel to the next (3 for packed RGB, 4 for RGBA/RGBX/BGRA-converted buffers: the first three bytes of
/// each pixel are R, G, B). The app converts the camera's buffers to this; the core never sees YUV.
public struct RgbFrame {
    public let data: [UInt8]
    public let width: Int
    public let height: Int
    public let rowStride: Int
    public let pixelStride: Int
    public let offset: Int

    public init(data: [UInt8], width: Int, height: Int, rowStride: Int? = nil, pixelStride: Int = 3, offset: Int = 0) throws {
        let rowStride = rowStride ?? width * 3
        try require(width > 0 && height > 0, "frame of \(width)x\(height) pixels")
        try require(pixelStride >= 3, "pixelStride must be >= 3 (RGB), got \(pixelStride)")
        try require(rowStride >= width * pixelStride, "rowStride \(rowStride) is shorter than a row (\(width * pixelStride) bytes)")
        let needed = offset + (height - 1) * rowStride + width * pixelStride
        try require(offset >= 0 && needed <= data.count, "frame needs \(needed) bytes, the array has \(data.count)")
        self.data = data
        self.width = width
        self.height = height
        self.rowStride = rowStride
        self.pixelStride = pixelStride
        self.offset = offset
    }

    /// A packed H x W x 3 RGB frame (numpy's rgb24 layout).
    public static func packed(_ data: [UInt8], width: Int, height: Int, offset: Int = 0) throws -> RgbFrame {
        try RgbFrame(data: data, width: width, height: height, rowStride: width * 3, pixelStride: 3, offset: offset)
    }

    /// Channel c (0 = R) of pixel (x, y) as 0..255.
    public func get(_ x: Int, _ y: Int, _ c: Int) -> Int { Int(data[offset + y * rowStride + x * pixelStride + c]) }
}

/// Output size of a short-side resize: squeezetime.video.resize_short_side (Python: int(h * scale + 0.5)).
public struct Size: Equatable {
    public let width: Int
    public let height: Int

    public init(width: Int, height: Int) {
        self.width = width
        self.height = height
    }
}

/// Which of PyTorch's CPU bilinear kernels to reproduce (it picks by thread count): the generic separable kernel
/// with more than one thread (the Python pipeline's), the channels-last kernel with exactly one thread.
public enum BilinearKernel {
    /// per row: t = fma(x0, wx0, x1 * wx1); then fma(t0, wy0, t1 * wy1)
    case torchGeneric
    /// per pixel: weights wy * wx in float32, fma(x11, w11, fma(x10, w10, fma(x00, w00, x01 * w01)))
    case torchChannelsLast
}

public enum Preprocessing {
    /// The resized size for shortSide, as resize_short_side computes it.
    public static func resizedSize(width: Int, height: Int, shortSide: Int) throws -> Size {
        try require(shortSide > 0, "short side must be positive, got \(shortSide)")
        let scale = Double(shortSide) / Double(min(width, height))
        return Size(width: Int(Double(width) * scale + 0.5), height: Int(Double(height) * scale + 0.5))
    }

    /// Top-left corner (x, y) of the centre crop, as crop_offsets(h, w, size, "center").
    public static func centerCropOrigin(width: Int, height: Int, size: Int) throws -> (x: Int, y: Int) {
        if width < size || height < size {
            throw InvalidArgument("frames of \(width)x\(height) are smaller than the \(size)px crop; resize first")
        }
        return ((width - size) / 2, (height - size) / 2)
    }

    /// Source indices and weights along one axis (PyTorch's compute_source_index_and_lambda, float32).
    struct Axis {
        var i0: [Int], i1: [Int], l0: [Float], l1: [Float]
    }

    static func axis(_ inSize: Int, _ outSize: Int) -> Axis {
        var a = Axis(i0: Array(repeating: 0, count: outSize), i1: Array(repeating: 0, count: outSize),
                     l0: Array(repeating: 0, count: outSize), l1: Array(repeating: 0, count: outSize))
        if inSize == outSize { // scale factor 1: a copy
            for o in 0..<outSize { a.i0[o] = o; a.i1[o] = o; a.l0[o] = 1; a.l1[o] = 0 }
            return a
        }
        let scale = Float(inSize) / Float(outSize)
        for o in 0..<outSize {
            var src = fma(scale, Float(o) + 0.5, -0.5)
            if src < 0 { src = 0 }
            let idx = min(Int(Double(src).rounded(.down)), inSize - 1)
            let lambda1 = min(max(src - Float(idx), 0), 1)
            a.i0[o] = idx
            a.i1[o] = idx + (idx < inSize - 1 ? 1 : 0)
            a.l1[o] = lambda1
            a.l0[o] = 1 - lambda1
        }
        return a
    }

    /// Fused multiply-add of floats as the Kotlin core computes it: exact product in double, the sum rounded to
    /// double, then to float (reproduces PyTorch's x86 fma on the goldens: 0 differing bits).
    @inline(__always)
    static func fma(_ a: Float, _ b: Float, _ c: Float) -> Float {
        let p = Double(a) * Double(b)
        return Float(p + Double(c))
    }

    /// Resize frame so its short side is shortSide and write the cropSize x cropSize centre crop of the result as
    /// packed RGB into out at outOffset. Only the cropped pixels are computed, so the result equals resize-then-crop.
    public static func resizeShortSideCenterCrop(_ frame: RgbFrame, shortSide: Int, cropSize: Int, into out: inout [UInt8],
                                                 at outOffset: Int = 0, kernel: BilinearKernel = .torchGeneric) throws {
        let size = try resizedSize(width: frame.width, height: frame.height, shortSide: shortSide)
        let (x0, y0) = try centerCropOrigin(width: size.width, height: size.height, size: cropSize)
        try resizeRegion(frame, size, x0, y0, cropSize, cropSize, &out, outOffset, kernel)
    }

    public static func resizeShortSideCenterCrop(_ frame: RgbFrame, shortSide: Int, cropSize: Int,
                                                 kernel: BilinearKernel = .torchGeneric) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: cropSize * cropSize * 3)
        try resizeShortSideCenterCrop(frame, shortSide: shortSide, cropSize: cropSize, into: &out, at: 0, kernel: kernel)
        return out
    }

    /// The whole short-side resize (resize_short_side) as a packed RGB frame.
    public static func resizeShortSide(_ frame: RgbFrame, shortSide: Int, kernel: BilinearKernel = .torchGeneric) throws -> RgbFrame {
        let size = try resizedSize(width: frame.width, height: frame.height, shortSide: shortSide)
        var out = [UInt8](repeating: 0, count: size.width * size.height * 3)
        try resizeRegion(frame, size, 0, 0, size.width, size.height, &out, 0, kernel)
        return try RgbFrame.packed(out, width: size.width, height: size.height)
    }

    /// frame rotated clockwise by degrees (0, 90, 180, 270; the camera's orientation) as packed RGB, so that the
    /// model sees the scene upright. Rotate before resizing (the resize treats its two axes differently).
    public static func rotate(_ frame: RgbFrame, degrees: Int) throws -> RgbFrame {
        let d = floorMod(degrees, 360)
        try require(d % 90 == 0, "rotation must be a multiple of 90 degrees, got \(degrees)")
        let w = frame.width, h = frame.height
        let (ow, oh) = (d == 90 || d == 270) ? (h, w) : (w, h)
        var out = [UInt8](repeating: 0, count: ow * oh * 3)
        frame.data.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                for y in 0..<h {
                    for x in 0..<w {
                        let dx: Int, dy: Int
                        switch d {
                        case 0: (dx, dy) = (x, y)
                        case 90: (dx, dy) = (h - 1 - y, x)
                        case 180: (dx, dy) = (w - 1 - x, h - 1 - y)
                        default: (dx, dy) = (y, w - 1 - x)
                        }
                        let s = frame.offset + y * frame.rowStride + x * frame.pixelStride
                        let o = (dy * ow + dx) * 3
                        dst[o] = src[s]; dst[o + 1] = src[s + 1]; dst[o + 2] = src[s + 2]
                    }
                }
            }
        }
        return try RgbFrame.packed(out, width: ow, height: oh)
    }

    /// Centre crop of a frame (no resize) as packed RGB.
    public static func centerCrop(_ frame: RgbFrame, cropSize: Int) throws -> [UInt8] {
        let (x0, y0) = try centerCropOrigin(width: frame.width, height: frame.height, size: cropSize)
        var out = [UInt8]()
        out.reserveCapacity(cropSize * cropSize * 3)
        for y in y0..<(y0 + cropSize) {
            for x in x0..<(x0 + cropSize) {
                for c in 0..<3 { out.append(frame.data[frame.offset + y * frame.rowStride + x * frame.pixelStride + c]) }
            }
        }
        return out
    }

    /// Output pixels [x0, x0 + w) x [y0, y0 + h) of the resize of frame to size, packed RGB into out.
    static func resizeRegion(_ frame: RgbFrame, _ size: Size, _ x0: Int, _ y0: Int, _ w: Int, _ h: Int,
                             _ out: inout [UInt8], _ outOffset: Int, _ kernel: BilinearKernel) throws {
        try require(outOffset >= 0 && outOffset + w * h * 3 <= out.count, "output array too small")
        if size.width == frame.width && size.height == frame.height { // resize_short_side returns such frames unchanged
            var o = outOffset
            for y in y0..<(y0 + h) {
                for x in x0..<(x0 + w) {
                    let p = frame.offset + y * frame.rowStride + x * frame.pixelStride
                    out[o] = frame.data[p]; out[o + 1] = frame.data[p + 1]; out[o + 2] = frame.data[p + 2]
                    o += 3
                }
            }
            return
        }
        var o = outOffset
        try out.withUnsafeMutableBufferPointer { dst in
            try forEachResized(frame, size, x0, y0, w, h, kernel) { v in
                dst[o] = roundToUint8(v)
                o += 1
            }
        }
    }

    /// The float32 values of the resize before rounding (what F.interpolate returns): H x W x 3.
    public static func resizeFloat(_ frame: RgbFrame, size: Size, kernel: BilinearKernel = .torchGeneric) throws -> [Float] {
        var out = [Float](repeating: 0, count: size.width * size.height * 3)
        var o = 0
        try out.withUnsafeMutableBufferPointer { dst in
            try forEachResized(frame, size, 0, 0, size.width, size.height, kernel) { v in
                dst[o] = v
                o += 1
            }
        }
        return out
    }

    /// Calls emit with the float value of each channel of each output pixel of the region, row-major, RGB.
    @inline(__always)
    private static func forEachResized(_ frame: RgbFrame, _ size: Size, _ x0: Int, _ y0: Int, _ w: Int, _ h: Int,
                                       _ kernel: BilinearKernel, _ emit: (Float) -> Void) throws {
        try require(x0 >= 0 && y0 >= 0 && x0 + w <= size.width && y0 + h <= size.height, "region outside the resized frame")
        let ax = axis(frame.width, size.width)
        let ay = axis(frame.height, size.height)
        let rs = frame.rowStride, ps = frame.pixelStride, base = frame.offset
        let generic = kernel == .torchGeneric
        frame.data.withUnsafeBufferPointer { src in
            for oy in y0..<(y0 + h) {
                let row0 = base + ay.i0[oy] * rs
                let row1 = base + ay.i1[oy] * rs
                let wy0 = ay.l0[oy], wy1 = ay.l1[oy]
                for ox in x0..<(x0 + w) {
                    let c0 = ax.i0[ox] * ps, c1 = ax.i1[ox] * ps
                    let wx0 = ax.l0[ox], wx1 = ax.l1[ox]
                    // channels-last kernel: the four 2-D weights, each rounded to float32
                    let w00 = wy0 * wx0, w01 = wy0 * wx1, w10 = wy1 * wx0, w11 = wy1 * wx1
                    for c in 0..<3 {
                        let x00 = Float(src[row0 + c0 + c])
                        let x01 = Float(src[row0 + c1 + c])
                        let x10 = Float(src[row1 + c0 + c])
                        let x11 = Float(src[row1 + c1 + c])
                        if generic {
                            let t0 = fma(x00, wx0, x01 * wx1)
                            let t1 = fma(x10, wx0, x11 * wx1)
                            emit(fma(t0, wy0, t1 * wy1))
                        } else {
                            emit(fma(x11, w11, fma(x10, w10, fma(x00, w00, x01 * w01))))
                        }
                    }
                }
            }
        }
    }

    /// torch round_() (half to even) then clamp to 0..255.
    @inline(__always)
    static func roundToUint8(_ v: Float) -> UInt8 {
        let r = Double(v).rounded(.toNearestOrEven)
        return r < 0 ? 0 : (r > 255 ? 255 : UInt8(r))
    }

    /// Pack T frames of size x size x 3 (each packed RGB, oldest first) into the frames_uint8 input:
    /// N x T x H x W x 3 with N = 1, i.e. the frames one after the other.
    public static func packFramesUint8(_ frames: [[UInt8]], size: Int) throws -> [UInt8] {
        let frameBytes = size * size * 3
        var out = [UInt8]()
        out.reserveCapacity(frames.count * frameBytes)
        for (t, f) in frames.enumerated() {
            try require(f.count == frameBytes, "frame \(t) has \(f.count) bytes, expected \(frameBytes) (\(size)x\(size)x3)")
            out.append(contentsOf: f)
        }
        return out
    }

    /// squeezetime.video.normalize for one clip: T frames of size x size x 3 uint8 -> 3 x T x size x size float32
    /// (NCTHW without N), (x - mean[c]) / std[c] in float32. The "squeezed" format (3T x H x W, channel c * T + t)
    /// has the same memory order, so the same array serves both.
    public static func normalizeClip(_ frames: [[UInt8]], size: Int, mean: [Float], std: [Float]) throws -> [Float] {
        try require(mean.count == 3 && std.count == 3, "mean and std need 3 values (RGB)")
        let t = frames.count
        let plane = size * size
        var out = [Float](repeating: 0, count: 3 * t * plane)
        for (ti, f) in frames.enumerated() {
            try require(f.count == plane * 3, "frame \(ti) has \(f.count) bytes, expected \(plane * 3)")
            for c in 0..<3 {
                let m = mean[c], s = std[c]
                let dst = (c * t + ti) * plane
                for p in 0..<plane { out[dst + p] = (Float(f[p * 3 + c]) - m) / s }
            }
        }
        return out
    }
}

/// One camera frame -> the model's per-frame input, with the manifest's parameters: short-side resize, centre
/// crop, packed RGB crop bytes (what the frames_uint8 input takes per frame).
public struct FramePreprocessor {
    public let shortSide: Int
    public let cropSize: Int
    public let kernel: BilinearKernel

    public init(shortSide: Int, cropSize: Int, kernel: BilinearKernel = .torchGeneric) throws {
        try require(shortSide >= cropSize && cropSize > 0, "short side \(shortSide) must be >= crop size \(cropSize) > 0")
        self.shortSide = shortSide
        self.cropSize = cropSize
        self.kernel = kernel
    }

    public init(_ p: ManifestPreprocessing, kernel: BilinearKernel = .torchGeneric) throws {
        try self.init(shortSide: p.resizeShortSide, cropSize: p.size, kernel: kernel)
    }

    public var frameBytes: Int { cropSize * cropSize * 3 }

    public func process(_ frame: RgbFrame) throws -> [UInt8] {
        try Preprocessing.resizeShortSideCenterCrop(frame, shortSide: shortSide, cropSize: cropSize, kernel: kernel)
    }
}
