// Camera buffers -> the core's RgbFrame, platform-free so it is tested here: the capture output delivers
// kCVPixelFormatType_32BGRA (B, G, R, A per pixel, rows bytesPerRow apart, possibly padded); the core wants R, G, B
// first. The frame is then rotated upright (Preprocessing.rotate) before any resize: the model was trained on upright
// video, and the resize treats its two axes differently.
import SqueezeCore

/// How the phone is held (UIDeviceOrientation's four upright cases, without UIKit).
public enum DeviceOrientation {
    case portrait
    case portraitUpsideDown
    /// home button / bottom edge on the right
    case landscapeLeft
    /// home button / bottom edge on the left
    case landscapeRight
}

public enum CameraFrames {
    /// Packed RGB of a BGRA buffer (width x height pixels, bytesPerRow bytes per row, padding ignored).
    public static func rgbFromBGRA(_ base: UnsafeRawPointer, width: Int, height: Int, bytesPerRow: Int) throws -> RgbFrame {
        try require(width > 0 && height > 0 && bytesPerRow >= width * 4,
                    "BGRA buffer of \(width)x\(height) pixels with \(bytesPerRow) bytes per row")
        let src = base.assumingMemoryBound(to: UInt8.self)
        var out = [UInt8](repeating: 0, count: width * height * 3)
        out.withUnsafeMutableBufferPointer { dst in
            for y in 0..<height {
                let row = src + y * bytesPerRow
                var o = y * width * 3
                for x in 0..<width {
                    let p = row + 4 * x
                    dst[o] = p[2]
                    dst[o + 1] = p[1]
                    dst[o + 2] = p[0]
                    o += 3
                }
            }
        }
        return try RgbFrame.packed(out, width: width, height: height)
    }

    /// The same from a byte array (tests, recorded frames).
    public static func rgbFromBGRA(_ bytes: [UInt8], width: Int, height: Int, bytesPerRow: Int) throws -> RgbFrame {
        try require(bytes.count >= (height - 1) * bytesPerRow + width * 4, "BGRA buffer too small: \(bytes.count) bytes")
        return try bytes.withUnsafeBytes { try rgbFromBGRA($0.baseAddress!, width: width, height: height, bytesPerRow: bytesPerRow) }
    }

    /// Clockwise rotation that makes the back camera's buffer upright. The sensor's buffers are landscape with the
    /// bottom edge on the right (AVCaptureVideoOrientation.landscapeRight); the front camera is not handled.
    public static func backCameraRotation(_ orientation: DeviceOrientation) -> Int {
        switch orientation {
        case .portrait: return 90
        case .landscapeLeft: return 0
        case .portraitUpsideDown: return 270
        case .landscapeRight: return 180
        }
    }

    /// Camera buffer -> upright RGB frame, what ClipBuilder.offer's closure returns for a kept frame.
    public static func upright(_ base: UnsafeRawPointer, width: Int, height: Int, bytesPerRow: Int,
                               orientation: DeviceOrientation) throws -> RgbFrame {
        let rgb = try rgbFromBGRA(base, width: width, height: height, bytesPerRow: bytesPerRow)
        let degrees = backCameraRotation(orientation)
        return degrees == 0 ? rgb : try Preprocessing.rotate(rgb, degrees: degrees)
    }
}

/// `require` of the core is internal; the app's own.
@inline(__always)
func require(_ condition: Bool, _ message: @autoclosure () -> String) throws {
    if !condition { throw InvalidArgument(message()) }
}
