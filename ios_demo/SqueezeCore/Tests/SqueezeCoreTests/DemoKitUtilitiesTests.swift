import Foundation
import XCTest
@testable import SqueezeCore
@testable import SqueezeDemoKit

/// The app's small platform-free pieces: strided Core ML arrays, the camera FPS meter, the keep-the-newest inference
/// worker, and finding export directories by their manifest.
final class DemoKitUtilitiesTests: XCTestCase {
    func testStridedArraysAreReadInRowMajorOrder() throws {
        XCTAssertEqual(try StridedLayout.rowMajorOffsets(shape: [2, 3], strides: [3, 1]), [0, 1, 2, 3, 4, 5])
        XCTAssertEqual(try StridedLayout.rowMajorOffsets(shape: [2, 3], strides: [8, 2]), [0, 2, 4, 8, 10, 12]) // padded rows
        XCTAssertEqual(try StridedLayout.rowMajorOffsets(shape: [2, 3], strides: [1, 2]), [0, 2, 4, 1, 3, 5]) // transposed
        XCTAssertEqual(try StridedLayout.rowMajorOffsets(shape: [1, 51], strides: [64, 1]), Array(0..<51))
        XCTAssertEqual(try StridedLayout.rowMajorOffsets(shape: [2, 0, 3], strides: [0, 3, 1]), [])
        XCTAssertEqual(try StridedLayout.rowMajorOffsets(shape: [], strides: []), [0])
        XCTAssertThrowsError(try StridedLayout.rowMajorOffsets(shape: [2], strides: [1, 1]))
        XCTAssertEqual(StridedLayout.contiguousStrides([1, 4, 64, 64, 3]), [49152, 12288, 192, 3, 1])
    }

    func testFrameRateOverTheLastSecond() {
        let meter = FrameRateMeter(windowSeconds: 1)
        XCTAssertEqual(meter.fps, 0)
        meter.tick(0)
        XCTAssertEqual(meter.fps, 0)
        let step30: Int64 = 1_000_000_000 / 30
        for i in 1...90 { meter.tick(Int64(i) * step30) } // 3 s at 30 fps
        XCTAssertEqual(meter.fps, 1e9 / Double(step30), accuracy: 1e-6)
        let t = Int64(90) * step30
        for i in 1...45 { meter.tick(t + Int64(i) * 2 * step30) } // then 3 s at 15 fps: the old rate has left the window
        XCTAssertEqual(meter.fps, 1e9 / Double(2 * step30), accuracy: 1e-6)
    }

    func testTheWorkerTakesTheNewestItemAndCountsTheSkippedOnes() {
        let started = DispatchSemaphore(value: 0), release = DispatchSemaphore(value: 0)
        let lock = NSLock()
        var processed: [Int] = []
        let worker = LatestOnlyWorker<Int>(label: "test") { item in
            if item == 1 { started.signal(); release.wait() }
            lock.lock(); processed.append(item); lock.unlock()
        }
        worker.submit(1)
        started.wait() // 1 is running
        worker.submit(2)
        worker.submit(3)
        worker.submit(4)
        release.signal()
        worker.waitUntilIdle()
        XCTAssertEqual(processed, [1, 4])
        XCTAssertEqual(worker.dropped, 2)
        worker.submit(5)
        worker.waitUntilIdle()
        XCTAssertEqual(processed, [1, 4, 5])
    }

    func testExportDirectoriesAreFoundByTheirManifests() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("squeeze-locations-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: root) }
        let video = root.appendingPathComponent("squeezetime"), decoder = root.appendingPathComponent("decoder")
        let other = root.appendingPathComponent("other")
        for d in [video, decoder, other] { try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true) }
        try Data(try Golden.bytes("manifest.json")).write(to: video.appendingPathComponent("manifest.json"))
        try Data(try Golden.bytes("qa_decoder_manifest.json")).write(to: decoder.appendingPathComponent("manifest.json"))
        try Data("{\"schema\": \"something/else\"}".utf8).write(to: other.appendingPathComponent("manifest.json"))
        let found = ModelLocations.scan([root, root.appendingPathComponent("missing")])
        XCTAssertEqual(found.video.map(\.lastPathComponent), ["squeezetime"])
        XCTAssertEqual(found.decoder.map(\.lastPathComponent), ["decoder"])

        // the video export without its label file: one line saying what to copy
        XCTAssertTrue(thrownMessage(AppError.self) { try VideoModelDirectory.load(video) }.contains("labels.txt"))
        // a label file of another line count than the classes: refused by the core in one line
        try Data((try Golden.text("labels.txt") + "extra\n").utf8).write(to: video.appendingPathComponent("labels.txt"))
        XCTAssertTrue(thrownMessage(ManifestError.self) { try VideoModelDirectory.load(video) }
            .hasPrefix("labels.txt has 52 lines but the model has 51 classes"))
        try Data(try Golden.bytes("labels.txt")).write(to: video.appendingPathComponent("labels.txt"))
        let dir = try VideoModelDirectory.load(video)
        XCTAssertEqual(dir.labels?.count, dir.manifest.numClasses)
        XCTAssertTrue(thrownMessage(AppError.self) { try dir.artifact("pte") }.contains("has no pte model (it has: onnx)"))
        XCTAssertTrue(thrownMessage(AppError.self) { try dir.artifact("onnx") }.contains("missing"))
        let backend = VideoBackend(name: "test", containers: ["mlpackage", "onnx"]) { _ in throw AppError("unused") }
        XCTAssertTrue(backend.canRun(dir))
        XCTAssertFalse(VideoBackend(name: "pte", containers: ["pte"]) { _ in throw AppError("unused") }.canRun(dir))
        XCTAssertTrue(thrownMessage(AppError.self) { try VideoModelDirectory.load(other.appendingPathComponent("none")) }
            .contains("no manifest.json"))
    }
}
