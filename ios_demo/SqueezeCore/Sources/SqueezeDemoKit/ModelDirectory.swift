// The export directories the app reads (`squeeze export squeezetime ...` and `squeeze export decoder ...` output
// copied into the app's models/ folder or its Documents folder), and the backends that can run them. Platform-free:
// what file to load comes from each directory's manifest.json, never from the app.
import Foundation
import SqueezeCore

/// A problem the user can fix (missing export, wrong file), one line.
public struct AppError: SqueezeError {
    public let message: String
    public init(_ message: String) { self.message = message }
}

/// A `squeeze export squeezetime` directory: manifest.json, labels and the model files.
public struct VideoModelDirectory {
    public let url: URL
    public let manifest: Manifest
    public let labels: [String]?

    public static func load(_ url: URL) throws -> VideoModelDirectory {
        let manifestURL = url.appendingPathComponent("manifest.json")
        guard let data = FileManager.default.contents(atPath: manifestURL.path) else {
            throw AppError("no manifest.json in \(url.lastPathComponent); copy the whole `squeeze export squeezetime` directory")
        }
        let manifest = try Manifest.parse([UInt8](data))
        var labels: [String]? = nil
        if let file = manifest.labelsFile {
            guard let text = FileManager.default.contents(atPath: url.appendingPathComponent(file).path) else {
                throw AppError("the manifest names \(file), which is not in \(url.lastPathComponent); copy the whole export directory")
            }
            labels = try manifest.labels(String(decoding: text, as: UTF8.self)) // one per class, else one line
        }
        return VideoModelDirectory(url: url, manifest: manifest, labels: labels)
    }

    /// The artifact of a container ("mlpackage", "pte", ...) and its file, which must exist.
    public func artifact(_ container: String) throws -> (artifact: Artifact, url: URL) {
        guard let a = manifest.artifact(container) else {
            let have = manifest.artifacts.map(\.container).joined(separator: ", ")
            throw AppError("this export has no \(container) model (it has: \(have.isEmpty ? "none" : have)); " +
                "export it with `squeeze export squeezetime --formats ...`")
        }
        let file = url.appendingPathComponent(a.file)
        guard FileManager.default.fileExists(atPath: file.path) else {
            throw AppError("\(a.file) is listed in manifest.json but missing; copy the whole export directory")
        }
        return (a, file)
    }
}

/// A `squeeze export decoder` directory: manifest.json, tokenizer.json, the decoder artifacts, and context packs
/// (`squeeze context build` output, *.pack) put beside them.
public struct DecoderModelDirectory {
    public let url: URL
    public let manifest: DecoderManifest

    public static func load(_ url: URL) throws -> DecoderModelDirectory {
        guard let data = FileManager.default.contents(atPath: url.appendingPathComponent("manifest.json").path) else {
            throw AppError("no manifest.json in \(url.lastPathComponent); copy the whole `squeeze export decoder` directory")
        }
        return DecoderModelDirectory(url: url, manifest: try DecoderManifest.parse([UInt8](data)))
    }

    public func tokenizer() throws -> ByteLevelBpeTokenizer {
        try ByteLevelBpeTokenizer.fromFile(url.appendingPathComponent(manifest.tokenizer.file).path, sha256: manifest.tokenizer.sha256)
    }

    /// The artifact's file, which must exist; a file (not an .mlpackage folder) of another size than the manifest's
    /// `bytes` is refused in one line (truncated or replaced: Python's DecoderSession and the Android core refuse it too)
    /// before a runtime fails on it with its own message.
    public func artifactURL(_ artifact: DecoderArtifact) throws -> URL {
        let file = url.appendingPathComponent(artifact.file)
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: file.path, isDirectory: &isDir) else {
            throw AppError("\(artifact.file) is listed in manifest.json but missing; copy the whole export directory")
        }
        if !isDir.boolValue, let expected = artifact.bytes,
           let size = (try? FileManager.default.attributesOfItem(atPath: file.path))?[.size] as? NSNumber,
           size.int64Value != expected {
            throw AppError("\(artifact.file) has \(size.int64Value) bytes, the manifest says \(expected); copy it again")
        }
        return file
    }

    /// The context packs in this directory, by name.
    public func packs() -> [URL] { DecoderModelDirectory.packs(in: url) }

    /// Context packs in a folder: `squeeze context build --out NAME.pack.safetensors` (or renamed to NAME.pack).
    public static func packs(in folder: URL) -> [URL] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? []
        return names.filter { $0.hasSuffix(".pack") || $0.hasSuffix(".pack.safetensors") }.sorted()
            .map { folder.appendingPathComponent($0) }
    }
}

/// The export directories found under the app's model roots (the bundle's models/ folder, Documents/): every folder
/// (the root itself or one level down) whose manifest.json says what it holds.
public struct ModelLocations {
    public let video: [URL]
    public let decoder: [URL]

    /// The app bundle's models/ folder (exports added to the Xcode project) and the app's Documents folder (exports
    /// copied with the Files app or Finder).
    public static func defaultRoots() -> [URL] {
        var roots: [URL] = []
        if let bundled = Bundle.main.url(forResource: "models", withExtension: nil) { roots.append(bundled) }
        if let documents = FileManager.default.urls(for: .documentDirectory, in: .userDomainMask).first { roots.append(documents) }
        return roots
    }

    public static func scan(_ roots: [URL]) -> ModelLocations {
        var video: [URL] = [], decoder: [URL] = []
        for root in roots {
            let children = ((try? FileManager.default.contentsOfDirectory(atPath: root.path)) ?? []).sorted()
            for dir in [root] + children.map({ root.appendingPathComponent($0) }) {
                guard let data = FileManager.default.contents(atPath: dir.appendingPathComponent("manifest.json").path),
                      let json = try? Json.parse([UInt8](data)),
                      let schema = try? JSONPath(json).opt("schema")?.stringOrNull() else { continue }
                if schema.hasPrefix(DecoderManifest.schemaPrefix) {
                    decoder.append(dir)
                } else if schema.hasPrefix(Manifest.schemaPrefix) {
                    video.append(dir)
                }
            }
        }
        return ModelLocations(video: video, decoder: decoder)
    }
}

/// A way to run the video model: its name on screen, the artifact container it loads, and how to make the runtime.
public struct VideoBackend {
    public let name: String
    /// artifact containers it can load, any of them ("mlpackage", "mlmodel"; "pte")
    public let containers: [String]
    public let make: (VideoModelDirectory) throws -> ModelRuntime

    public init(name: String, containers: [String], make: @escaping (VideoModelDirectory) throws -> ModelRuntime) {
        self.name = name
        self.containers = containers
        self.make = make
    }

    /// Whether the export holds an artifact this backend loads.
    public func canRun(_ directory: VideoModelDirectory) -> Bool {
        containers.contains { directory.manifest.artifact($0) != nil }
    }
}

/// A way to run the decoder: its name, the artifact format it loads ("pte", "onnx"), and how to make the runtime.
public struct DecoderBackend {
    public let name: String
    public let format: String
    public let make: (DecoderModelDirectory, DecoderArtifact) throws -> DecoderRuntime

    public init(name: String, format: String, make: @escaping (DecoderModelDirectory, DecoderArtifact) throws -> DecoderRuntime) {
        self.name = name
        self.format = format
        self.make = make
    }
}
