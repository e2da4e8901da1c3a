import XCTest
@testable import SqueezeCore
@testable import SqueezeDemoKit

/// The camera buffer conversion the app does before the core sees a frame: BGRA with padded rows -> packed RGB, and
/// the rotation that makes the back camera's buffer upright for each way the phone is held.
final class CameraFramesTests: XCTestCase {
    /// BGRA bytes of an RGB frame with `pad` extra bytes per row (what CVPixelBuffer rows look like), alpha 255.
    static func bgra(_ frame: RgbFrame, pad: Int) -> (bytes: [UInt8], bytesPerRow: Int) {
        let bpr = frame.width * 4 + pad
        var out = [UInt8](repeating: 7, count: frame.height * bpr) // padding is garbage, not zeros
        for y in 0..<frame.height {
            for x in 0..<frame.width {
                let o = y * bpr + 4 * x
                out[o] = UInt8(frame.get(x, y, 2))
                out[o + 1] = UInt8(frame.get(x, y, 1))
                out[o + 2] = UInt8(frame.get(x, y, 0))
                out[o + 3] = 255
            }
        }
        return (out, bpr)
    }

    func testBgraBuffersWithPaddedRowsBecomeThePackedRgbFrame() throws {
        let frame = try Golden.sourceFrames()[0] // 640x272 RGB of bikes.mp4
        let (bytes, bpr) = CameraFramesTests.bgra(frame, pad: 64)
        let rgb = try CameraFrames.rgbFromBGRA(bytes, width: frame.width, height: frame.height, bytesPerRow: bpr)
        XCTAssertEqual(rgb.width, 640)
        XCTAssertEqual(rgb.height, 272)
        XCTAssertNil(diffBytes(Array(frame.data[frame.offset..<(frame.offset + 640 * 272 * 3)]), rgb.data))
        XCTAssertThrowsError(try CameraFrames.rgbFromBGRA(bytes, width: 640, height: 272, bytesPerRow: 640 * 4 - 1))
        XCTAssertThrowsError(try CameraFrames.rgbFromBGRA(Array(bytes.prefix(1000)), width: 640, height: 272, bytesPerRow: bpr))
    }

    func testBackCameraBuffersAreRotatedUpright() throws {
        // a 3x2 landscape buffer, pixel values = 10 * (y * 3 + x) in R
        let w = 3, h = 2
        var rgb = [UInt8](repeating: 0, count: w * h * 3)
        for i in 0..<(w * h) { rgb[3 * i] = UInt8(10 * i); rgb[3 * i + 1] = 1; rgb[3 * i + 2] = 2 }
        let frame = try RgbFrame.packed(rgb, width: w, height: h)
        let (bytes, bpr) = CameraFramesTests.bgra(frame, pad: 4)
        let expected: [(DeviceOrientation, Int, [UInt8])] = [
            (.landscapeLeft, 0, [0, 10, 20, 30, 40, 50]),
            (.portrait, 90, [30, 0, 40, 10, 50, 20]),         // 2x3: the sensor's left column becomes the top row
            (.landscapeRight, 180, [50, 40, 30, 20, 10, 0]),
            (.portraitUpsideDown, 270, [20, 50, 10, 40, 0, 30]),
        ]
        for (orientation, degrees, reds) in expected {
            XCTAssertEqual(CameraFrames.backCameraRotation(orientation), degrees)
            let upright = try bytes.withUnsafeBytes {
                try CameraFrames.upright($0.baseAddress!, width: w, height: h, bytesPerRow: bpr, orientation: orientation)
            }
            XCTAssertEqual(upright.width, degrees % 180 == 0 ? w : h, "\(orientation)")
            XCTAssertEqual((0..<(w * h)).map { upright.data[3 * $0] }, reds, "\(orientation)")
            XCTAssertEqual(upright.data[1], 1)
            XCTAssertEqual(upright.data[2], 2)
        }
    }
}
