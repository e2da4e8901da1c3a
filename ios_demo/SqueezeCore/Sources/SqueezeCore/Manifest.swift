// manifest.json of a `squeeze export` directory (export/pipeline.py), the part the app needs: the model input
// (format, shape, dtype, layout), the preprocessing, the label file and the artifacts with their tensor names.
// Unknown keys are ignored; missing or mistyped keys the app relies on throw ManifestError with one line naming
// the key. Port of Manifest.kt.

public struct ManifestError: SqueezeError {
    public let message: String
    public init(_ message: String) { self.message = message }
}

public struct TensorInfo: Equatable {
    public let name: String
    public let shape: [Int]
    public let dtype: String
    public let layout: String?

    public init(name: String, shape: [Int], dtype: String, layout: String?) {
        self.name = name
        self.shape = shape
        self.dtype = dtype
        self.layout = layout
    }

    public var elementCount: Int64 { shape.reduce(Int64(1)) { $0 * Int64($1) } }
}

public struct ManifestInput: Equatable {
    public let format: String
    public let shape: [Int]
    public let batch: Int
    public let dtype: String
    public let layout: String?
}

public struct ManifestPreprocessing: Equatable {
    public let frames: Int
    public let frameInterval: Int
    public let resizeShortSide: Int
    public let size: Int
    public let mean: [Float]
    public let std: [Float]
    public let channelOrder: String
    /// true when the graph normalises (frames_uint8): the app feeds raw 0..255 bytes
    public let normalisationInGraph: Bool
}

public struct Artifact: Equatable {
    public let format: String
    public let container: String
    public let file: String
    public let sha256: String?
    public let bytes: Int64?
    public let precision: String?
    public let runtime: String?
    public let inputs: [TensorInfo]
    public let outputs: [TensorInfo]
    /// "pass", "fail", "not run (needs macOS)", ... as verification.status says; nil if absent
    public let verificationStatus: String?
    /// A .pte's delegate ("xnnpack", "coreml": export --pte-backend); nil for other formats and older manifests
    public var pteBackend: String? = nil

    /// A .pte delegated to Core ML (export --pte-backend coreml): ExecuTorch runs it on Apple devices only (this app
    /// runs it with the backend_coreml library linked; the Android app passes it over).
    public var appleOnly: Bool { Artifact.isAppleOnly(container: container, pteBackend: pteBackend) }

    /// Whether an artifact of `container` with .pte delegate `pteBackend` runs on Apple devices only.
    public static func isAppleOnly(container: String, pteBackend: String?) -> Bool { container == "pte" && pteBackend == "coreml" }
}

public struct Manifest {
    public static let schemaPrefix = "squeeze-mobile/manifest/"
    public static let inputFormats = ["clip", "squeezed", "frames_uint8"]

    public let schema: String
    public let modelName: String
    public let configName: String?
    public let numClasses: Int
    public let input: ManifestInput
    public let preprocessing: ManifestPreprocessing
    /// label file name, relative to the manifest's directory; nil when the export has none
    public let labelsFile: String?
    /// the artifacts that exist as files (records of artifacts not produced are left out)
    public let artifacts: [Artifact]

    /// The artifact of a container ("onnx", "tflite", "pte", "mlpackage", "mlmodel"), or nil. A .pte of either delegate
    /// (XNNPACK, Core ML: Artifact.appleOnly) runs here; the Android core passes the Core ML one over.
    public func artifact(_ container: String) -> Artifact? { artifacts.first { $0.container == container } }

    /// Bytes of one model input (N x T x H x W x 3 for frames_uint8; 4 bytes per element for float32).
    public var inputBytes: Int64 { input.shape.reduce(Int64(1)) { $0 * Int64($1) } * (input.dtype == "uint8" ? 1 : 4) }

    public static func parse(_ text: String) throws -> Manifest { try parse(Array(text.utf8)) }

    public static func parse(_ bytes: [UInt8]) throws -> Manifest {
        do {
            return try fromJson(JSONPath(try Json.parse(bytes), path: "manifest"))
        } catch let e as JSONError {
            throw ManifestError(e.message)
        }
    }

    /// Label file text -> one label per line (the export writes one class name per line, index order), split as Python's
    /// str.splitlines splits it (every reader of the export does: `squeeze predict`, `squeeze verify`'s count): at \n,
    /// \r\n, \r, U+000B, U+000C, U+001C..U+001E, U+0085, U+2028 and U+2029; no empty label after a final line break.
    public static func parseLabels(_ text: String) -> [String] {
        // on Unicode scalars: "\r\n" is one Character in Swift
        var lines: [String] = []
        var current = String.UnicodeScalarView()
        var afterCR = false
        var open = false // characters since the last line break
        for scalar in text.unicodeScalars {
            if scalar == "\n" && afterCR { afterCR = false; continue } // the \n of \r\n
            afterCR = scalar == "\r"
            if lineBreaks.contains(scalar.value) {
                lines.append(String(current))
                current = String.UnicodeScalarView()
                open = false
            } else {
                current.append(scalar)
                open = true
            }
        }
        if open { lines.append(String(current)) }
        return lines
    }

    /// The characters Python's str.splitlines breaks lines at.
    private static let lineBreaks: Set<UInt32> = [0x0A, 0x0D, 0x0B, 0x0C, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029]

    /// A file name inside the export directory, as `squeeze verify` requires of artifacts and labels (export/pipeline.py
    /// _safe_file_name): 1..255 characters, no path separator, no NUL, not hidden ("." first).
    public static func isPlainFileName(_ name: String) -> Bool {
        let count = name.unicodeScalars.count // Python's len (code points)
        return count > 0 && count <= 255 && !name.unicodeScalars.contains { $0 == "/" || $0 == "\\" || $0 == "\u{0}" }
            && name.unicodeScalars.first != "."
    }

    /// The labels of labelsFile's `text` (parseLabels), refused in one line unless there is one per class: a label file
    /// of another model would put wrong names on the predictions.
    public func labels(_ text: String) throws -> [String] {
        let labels = Manifest.parseLabels(text)
        if labels.count != numClasses {
            throw ManifestError("\(labelsFile ?? "the label file") has \(labels.count) lines but the model has \(numClasses) classes " +
                                "(one label per line expected); re-export, or set the manifest's labels to null")
        }
        return labels
    }

    private static func fromJson(_ root: JSONPath) throws -> Manifest {
        let schema = try root["schema"].string()
        if !schema.hasPrefix(schemaPrefix) {
            throw ManifestError("manifest.schema: \"\(schema)\" is not a squeeze-mobile manifest; use the manifest.json `squeeze export` wrote")
        }
        let model = try root["model"]
        let config = try model.opt("config")
        let inp = try root["input"]
        let input = ManifestInput(
            format: try inp["format"].string(),
            shape: try inp["shape"].intArray(),
            batch: try inp["batch"].int(),
            dtype: try inp["dtype"].string(),
            layout: try inp.opt("layout")?.stringOrNull()
        )
        if !inputFormats.contains(input.format) {
            throw ManifestError("manifest.input.format: unknown format \"\(input.format)\"; this app knows \(inputFormats.joined(separator: ", "))")
        }
        let pre = try root["preprocessing"]
        let preprocessing = ManifestPreprocessing(
            frames: try pre["frames"].int(),
            frameInterval: try pre["frame_interval"].int(),
            resizeShortSide: try pre["resize_short_side"].int(),
            size: try pre["size"].int(),
            mean: try pre["mean"].doubleArray().map { Float($0) },
            std: try pre["std"].doubleArray().map { Float($0) },
            channelOrder: try pre["channel_order"].string(),
            normalisationInGraph: try pre["normalisation"].string() == "inside the graph"
        )
        try checkConsistent(input, preprocessing)
        guard let numClasses = try config?.opt("num_classes")?.int() else {
            throw ManifestError("manifest.model.config: missing key \"num_classes\"")
        }
        // records with "file": null say an artifact was not produced (e.g. the legacy Core ML model): nothing to load
        let artifacts = try root["artifacts"].list().filter { a in (try a.opt("file")).map { !$0.isNull } ?? false }
            .map { try artifact($0) }
        let labelsFile = try root.opt("labels")?.stringOrNull()
        if let name = labelsFile, !isPlainFileName(name) {
            throw ManifestError("manifest.labels: \"\(name)\" is not a plain file name inside the export directory; re-export, or set it to null")
        }
        return Manifest(
            schema: schema,
            modelName: try model["name"].string(),
            configName: try config?.opt("name")?.stringOrNull(),
            numClasses: numClasses,
            input: input,
            preprocessing: preprocessing,
            labelsFile: labelsFile,
            artifacts: artifacts
        )
    }

    private static func checkConsistent(_ input: ManifestInput, _ p: ManifestPreprocessing) throws {
        func bad(_ what: String) -> ManifestError { ManifestError("manifest: \(what)") }
        if p.frames < 1 || p.frameInterval < 1 || p.size < 1 { throw bad("preprocessing.frames, frame_interval and size must be positive") }
        if p.resizeShortSide < p.size {
            throw bad("preprocessing.resize_short_side \(p.resizeShortSide) is smaller than the crop size \(p.size)")
        }
        if p.mean.count != 3 || p.std.count != 3 || p.std.contains(where: { $0 <= 0 }) {
            throw bad("preprocessing.mean and std need 3 values, std > 0")
        }
        if p.channelOrder != "RGB" { throw bad("preprocessing.channel_order \"\(p.channelOrder)\" is not supported (RGB only)") }
        let n = input.batch, t = p.frames, s = p.size
        let expected: [Int]
        switch input.format {
        case "frames_uint8": expected = [n, t, s, s, 3]
        case "clip": expected = [n, 3, t, s, s]
        default: expected = [n, 3 * t, s, s]
        }
        if expected != input.shape {
            throw bad("input.shape \(input.shape) does not match format \(input.format) with frames \(t) and size \(s) (expected \(expected))")
        }
        let dtype = input.format == "frames_uint8" ? "uint8" : "float32"
        if input.dtype != dtype { throw bad("input.dtype \"\(input.dtype)\" for format \(input.format); expected \(dtype)") }
    }

    private static func tensor(_ t: JSONPath) throws -> TensorInfo {
        TensorInfo(name: try t["name"].string(), shape: try t["shape"].intArray(), dtype: try t["dtype"].string(),
                   layout: try t.opt("layout")?.stringOrNull())
    }

    private static func artifact(_ a: JSONPath) throws -> Artifact {
        let file = try a["file"].string()
        if !isPlainFileName(file) {
            throw ManifestError("\(a.path).file: \"\(file)\" is not a plain file name inside the export directory; re-export")
        }
        return Artifact(
            format: try a["format"].string(),
            container: try a["container"].string(),
            file: file,
            sha256: try a.opt("sha256")?.stringOrNull(),
            bytes: try a.opt("bytes").flatMap { $0.isNull ? nil : try $0.long() },
            precision: try a.opt("precision")?.stringOrNull(),
            runtime: try a.opt("runtime")?.stringOrNull(),
            inputs: try a["inputs"].list().map { try tensor($0) },
            outputs: try a["outputs"].list().map { try tensor($0) },
            verificationStatus: try a.opt("verification").flatMap { v in v.isNull ? nil : try v.opt("status")?.stringOrNull() },
            pteBackend: try a.opt("pte_backend")?.stringOrNull()
        )
    }
}
