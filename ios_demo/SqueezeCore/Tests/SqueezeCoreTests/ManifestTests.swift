import XCTest
@testable import SqueezeCore

/// The manifest.json of a real reduced export (hmdb51, T=4, 64x64, frames_uint8, ONNX).
final class ManifestTests: XCTestCase {
    private var text = ""
    private var manifest: Manifest!

    override func setUpWithError() throws {
        text = try Golden.text("manifest.json")
        manifest = try Manifest.parse(text)
    }

    func testInputAndPreprocessing() throws {
        XCTAssertEqual(manifest.modelName, "squeezetime")
        XCTAssertEqual(manifest.configName, "hmdb51")
        XCTAssertEqual(manifest.numClasses, 51)
        let input = manifest.input
        XCTAssertEqual(input.format, "frames_uint8")
        XCTAssertEqual(input.shape, [1, 4, 64, 64, 3])
        XCTAssertEqual(input.dtype, "uint8")
        XCTAssertEqual(input.batch, 1)
        XCTAssertEqual(input.layout, "NTHWC uint8 RGB 0..255 (normalisation inside the graph)")
        XCTAssertEqual(manifest.inputBytes, 4 * 64 * 64 * 3)
        let p = manifest.preprocessing
        XCTAssertEqual(p.frames, 4)
        XCTAssertEqual(p.frameInterval, 4)
        XCTAssertEqual(p.resizeShortSide, 73)
        XCTAssertEqual(p.size, 64)
        XCTAssertEqual(p.mean, [123.675, 116.28, 103.53])
        XCTAssertEqual(p.std, [58.395, 57.12, 57.375])
        XCTAssertEqual(p.channelOrder, "RGB")
        XCTAssertTrue(p.normalisationInGraph)
        // the golden video files were made with the same parameters
        XCTAssertEqual(try Golden.video()["resize_short_side"].int(), p.resizeShortSide)
        XCTAssertEqual(try Golden.video()["crop_size"].int(), p.size)
    }

    func testArtifactsAndLabels() throws {
        XCTAssertEqual(manifest.artifacts.count, 1)
        let onnx = try XCTUnwrap(manifest.artifact("onnx"))
        XCTAssertEqual(onnx.file, "squeezetime_hmdb51_4x64_frames_uint8_fp32.onnx")
        XCTAssertEqual(onnx.format, "onnx")
        XCTAssertEqual(onnx.precision, "fp32")
        XCTAssertEqual(onnx.verificationStatus, "pass")
        XCTAssertEqual(onnx.sha256?.count, 64)
        XCTAssertEqual(onnx.inputs, [TensorInfo(name: "input", shape: [1, 4, 64, 64, 3], dtype: "uint8", layout: manifest.input.layout)])
        XCTAssertEqual(onnx.outputs.map(\.name), ["logits"])
        XCTAssertEqual(onnx.outputs.first?.shape, [1, 51])
        XCTAssertNil(manifest.artifact("tflite"))
        XCTAssertEqual(manifest.labelsFile, "labels.txt")
        let labels = Manifest.parseLabels(try Golden.text(try XCTUnwrap(manifest.labelsFile)))
        XCTAssertEqual(labels.count, manifest.numClasses)
        XCTAssertEqual(labels[0], "brush_hair")
        XCTAssertEqual(Manifest.parseLabels("a\r\nb\n"), ["a", "b"])
    }

    private func edited(_ replacements: (String, String)...) -> String {
        var t = text
        for (old, new) in replacements {
            guard let r = t.range(of: old) else { fatalError("test edit not applicable: \(old)") }
            t.replaceSubrange(r, with: new)
        }
        return t
    }

    private func refused(_ t: String) -> String { thrownMessage(ManifestError.self) { try Manifest.parse(t) } }

    func testBadManifestsGiveOneLineErrors() {
        XCTAssertEqual(refused(edited(("\"frames\": 4,\n    \"frame_interval\": 4,", "\"frames\": 4,"))),
                       "manifest.preprocessing: missing key \"frame_interval\"")
        XCTAssertEqual(refused(edited(("\"frames\": 4,\n    \"frame_interval\"", "\"frames\": \"4\",\n    \"frame_interval\""))),
                       "manifest.preprocessing.frames: expected an integer, found a string")
        XCTAssertTrue(refused(edited(("\"schema\": \"squeeze-mobile/manifest/1\"", "\"schema\": \"other/1\""))).contains("not a squeeze-mobile manifest"))
        XCTAssertTrue(refused(edited(("\"format\": \"frames_uint8\"", "\"format\": \"nhwc\""))).contains("unknown format \"nhwc\""))
        XCTAssertTrue(refused(edited(("\"resize_short_side\": 73", "\"resize_short_side\": 60"))).contains("smaller than the crop size"))
        XCTAssertTrue(refused(edited(("\"size\": 64", "\"size\": 32"))).contains("does not match format frames_uint8"))
        XCTAssertTrue(refused(edited(("\"file\": \"squeezetime_", "\"file\": \"../squeezetime_"))).contains("not a plain file name"))
        XCTAssertTrue(refused(String(text.prefix(text.count / 2))).hasPrefix("invalid JSON at offset"))
        XCTAssertTrue(refused("[]").contains("expected an object"))
    }

    func testLabelsAreSplitAsPythonSplitsThemAndCountedAgainstTheClasses() throws {
        // str.splitlines, as squeeze predict and squeeze verify read the file: "\r" alone (an old Mac editor), form feed,
        // NEL, U+2028 also end a line; no empty label after a final line break, an empty line inside is one
        XCTAssertEqual(Manifest.parseLabels("a\rb\rc\r"), ["a", "b", "c"])
        XCTAssertEqual(Manifest.parseLabels("a\r\n\r\nb"), ["a", "", "b"])
        XCTAssertEqual(Manifest.parseLabels("a\u{0B}b\u{0C}c\u{85}d\u{2028}e\u{2029}f\n"), ["a", "b", "c", "d", "e", "f"])
        XCTAssertEqual(Manifest.parseLabels("a\u{1C}b\u{1E}"), ["a", "b"])
        XCTAssertEqual(Manifest.parseLabels("a\n\n"), ["a", ""])
        XCTAssertEqual(Manifest.parseLabels(""), [])
        XCTAssertEqual(Manifest.parseLabels("x y\nz\tw"), ["x y", "z\tw"])
        XCTAssertEqual(Manifest.parseLabels("a\r\r\nb"), ["a", "", "b"])
        // the golden label file with \r line ends: still 51 labels
        let golden = try Golden.text("labels.txt")
        let labels = try manifest.labels(golden.replacingOccurrences(of: "\n", with: "\r"))
        XCTAssertEqual(labels.count, manifest.numClasses)
        XCTAssertEqual(try manifest.labels(golden), labels)
        // a label file of another model would put wrong names on the predictions: refused in one line
        XCTAssertEqual(thrownMessage(ManifestError.self) { try self.manifest.labels(golden + "extra\n") },
                       "labels.txt has 52 lines but the model has 51 classes (one label per line expected); re-export, or " +
                       "set the manifest's labels to null")
    }

    func testNamesOfFilesOutsideTheExportDirectoryAreRefused() throws {
        // export/pipeline.py _safe_file_name: no separator, no NUL, nothing hidden, at most 255 characters (code points)
        for bad in ["../labels.txt", "/etc/passwd", "..", ".", ".hidden", "a\\b", "", ".\u{301}x"] {
            XCTAssertFalse(Manifest.isPlainFileName(bad), bad)
            let json = bad.replacingOccurrences(of: "\\", with: "\\\\")
            XCTAssertTrue(refused(edited(("\"labels\": \"labels.txt\"", "\"labels\": \"\(json)\""))).hasPrefix("manifest.labels: "), bad)
            XCTAssertTrue(refused(edited(("\"file\": \"squeezetime_hmdb51_4x64_frames_uint8_fp32.onnx\"", "\"file\": \"\(json)\"")))
                .contains("is not a plain file name inside the export directory"), bad)
        }
        XCTAssertFalse(Manifest.isPlainFileName(String(repeating: "a", count: 256)))
        XCTAssertTrue(Manifest.isPlainFileName(String(repeating: "a", count: 255)))
        XCTAssertTrue(Manifest.isPlainFileName(String(repeating: "\u{1F600}", count: 200)))
        XCTAssertTrue(Manifest.isPlainFileName("labels..txt"))
        XCTAssertNil(try Manifest.parse(edited(("\"labels\": \"labels.txt\"", "\"labels\": null"))).labelsFile)
    }

    func testAPteDelegatedToCoreMlIsReadAndRunsHere() throws {
        // `squeeze export squeezetime --formats pte --pte-backend coreml` records pte_backend "coreml": ExecuTorch runs it on
        // Apple devices only (the Android core passes it over; this app runs either delegate)
        func pte(_ file: String, _ delegate: String) -> String {
            "{\"format\": \"executorch\", \"container\": \"pte\", \"file\": \"\(file)\", \"precision\": \"fp32\", " +
                "\"pte_backend\": \"\(delegate)\", \"inputs\": [], \"outputs\": []}"
        }
        let both = try Manifest.parse(edited(("\"artifacts\": [", "\"artifacts\": [\(pte("c.pte", "coreml")), \(pte("x.pte", "xnnpack")), ")))
        XCTAssertEqual(both.artifacts.map(\.pteBackend), ["coreml", "xnnpack", nil])
        XCTAssertEqual(both.artifacts.map(\.appleOnly), [true, false, false])
        XCTAssertEqual(both.artifact("pte")?.file, "c.pte")
    }

    func testRecordsOfArtifactsNotProducedAreSkipped() throws {
        let notProduced = #"{"format": "coreml", "container": "mlmodel", "file": null, "status": "not produced", "reason": "x"}"#
        let m = try Manifest.parse(edited(("\"artifacts\": [", "\"artifacts\": [\(notProduced), ")))
        XCTAssertEqual(m.artifacts.map(\.container), ["onnx"])
    }
}
