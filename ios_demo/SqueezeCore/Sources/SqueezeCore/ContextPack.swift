// Context packs read without any runtime (squeezed_attention/pack_arrays.py read_pack_arrays / check_model): the
// safetensors file, its format and content hash, the consistency of its tensors and the model/tokenizer it was
// built for. Its layout as the exported decoder's inputs is PackLayout.swift. Port of ContextPack in ContextPack.kt;
// every problem with a file is a one-line PackError saying what to do.
import Foundation

public struct PackError: SqueezeError {
    public let message: String
    public init(_ message: String) { self.message = message }
}

/// A context pack read and verified: its metadata and tensors, and the numbers the decoder and the lookup need.
public final class ContextPack {
    public static let format = "squeeze-context-pack/2"

    public let source: String
    public let metadata: [String: String]
    public let tensors: [String: StoredTensor]
    public let settings: JSONPath
    public let modelConfig: JSONPath

    public let numTokens: Int
    public let layers: Int
    public let kvHeads: Int
    public let headDim: Int
    public let sinkTokens: Int
    public let observationWindow: Int
    public let numClustered: Int
    public let numClusters: Int
    public let centroidFraction: Double
    /// "chat" (the context is the start of one user turn) or "raw"
    public let framing: String

    public var weightsSha256: String? { metadata["weights_sha256"] }
    public var tokenizerSha256: String? { metadata["tokenizer_sha256"] }

    private init(source: String, metadata: [String: String], tensors: [String: StoredTensor]) throws {
        self.source = source
        self.metadata = metadata
        self.tensors = tensors
        do {
            settings = JSONPath(try Json.parse(metadata["build_settings"] ?? ""), path: "build_settings")
            modelConfig = JSONPath(try Json.parse(metadata["model_config"] ?? ""), path: "model_config")
            sinkTokens = try settings["sink_tokens"].int()
            observationWindow = try settings["observation_window"].int()
            centroidFraction = try settings["centroid_fraction"].double()
            framing = try settings.opt("framing")?.string() ?? "chat"
        } catch let e as JSONError {
            throw PackError("\(source) is an inconsistent context pack (\(e.message)); rebuild it with `squeeze context build`")
        }
        // shapes checked by inconsistency() before
        let keys = tensors["kv.keys"]!.shape
        numTokens = tensors["context.token_ids"]!.shape[0]
        layers = keys[0]
        kvHeads = keys[1]
        headDim = keys[3]
        numClustered = tensors["lookup.labels"]!.shape[2]
        numClusters = tensors["lookup.counts"]!.shape[2]
    }

    public subscript(name: String) -> StoredTensor {
        get throws {
            guard let t = tensors[name] else { throw PackError("\(source) has no tensor \(name)") }
            return t
        }
    }

    public func tokenIds() throws -> [Int64] { try self["context.token_ids"].longs() }

    /// Refuse a pack built for other weights or another tokenizer than the artifact's (check_model).
    public func checkModel(weightsSha256: String?, tokenizerSha256: String?) throws {
        if let w = weightsSha256, !w.isEmpty, metadata["weights_sha256"] != w {
            throw PackError("\(source) was built for other model weights than this decoder was exported from " +
                "(weights sha256 differs); rebuild the pack with the artifact's model")
        }
        if let t = tokenizerSha256, !t.isEmpty, metadata["tokenizer_sha256"] != t {
            throw PackError("\(source) was built with a different tokenizer than this decoder's; " +
                "rebuild the pack with the artifact's model")
        }
    }

    /// int8 codes x fp16 scales -> float32 [L, H, K, D] (dequantized_centroids: exact).
    public func centroids(prefix: String = "lookup.") throws -> [Float] {
        try dequantized(prefix: prefix, from: 0, count: try self["\(prefix)centroid_codes"].elementCount)
    }

    /// centroids() of one layer, [H, K, D]: what the pack layout needs per layer, without the whole table.
    public func layerCentroids(_ layer: Int, prefix: String = "lookup.") throws -> [Float] {
        let codes = try self["\(prefix)centroid_codes"]
        let perLayer = codes.elementCount / codes.shape[0]
        return try dequantized(prefix: prefix, from: layer * perLayer, count: perLayer)
    }

    /// Elements from..<from + count of the dequantized table (whole vectors: from and count multiples of D).
    private func dequantized(prefix: String, from: Int, count: Int) throws -> [Float] {
        let codes = try self["\(prefix)centroid_codes"]
        let d = headDim
        let scales = try self["\(prefix)centroid_scales"].floats(from: from / d, count: count / d)
        // int8 codes as they are (no Int64 per element of the table); another integer dtype through longs
        if codes.dtype == "I8" {
            let c = try codes.int8s(from: from, count: count)
            return (0..<count).map { Float(c[$0]) * scales[$0 / d] }
        }
        let wide = try codes.longs(from: from, count: count)
        return (0..<count).map { Float(wide[$0]) * scales[$0 / d] }
    }

    public static func read(path: String) throws -> ContextPack {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir), !isDir.boolValue,
              let bytes = readFile(path) else {
            throw PackError("context pack not found: \(path); build one with `squeeze context build`")
        }
        return try read(bytes, source: path)
    }

    /// The file's bytes read straight into one array (not through Data and a copy of it: a pack is ~190 MB at 8k
    /// tokens); nil when it cannot be opened.
    static func readFile(_ path: String) -> [UInt8]? {
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: path),
              let total = (attributes[.size] as? NSNumber)?.intValue ?? (attributes[.size] as? Int),
              let stream = InputStream(fileAtPath: path) else { return nil }
        if total <= 0 { return [] }
        stream.open()
        defer { stream.close() }
        if stream.streamStatus == .error { return nil }
        return [UInt8](unsafeUninitializedCapacity: total) { buffer, count in
            var got = 0
            while got < total {
                let r = stream.read(buffer.baseAddress! + got, maxLength: total - got)
                if r <= 0 { break }
                got += r
            }
            count = got // a file that shrank meanwhile: what was read (refused as truncated)
        }
    }

    /// The pack in `bytes`: its tensors are slices of that array (shared storage, no copy).
    public static func read(_ bytes: [UInt8], source: String) throws -> ContextPack {
        let st = try SafeTensors.read(bytes, source: source)
        if st.metadata["format"] != format {
            throw PackError("\(source) is not a \(format) file; rebuild it with `squeeze context build`")
        }
        let hash = try? contentSha256(tensors: st.tensors, metadata: st.metadata)
        if hash == nil || hash != st.metadata["content_sha256"] {
            throw PackError("\(source) was modified after it was built (content hash mismatch); rebuild it")
        }
        let problem: String?
        do {
            problem = try inconsistency(st.tensors, st.metadata)
        } catch is JSONError {
            problem = "its settings are not readable"
        }
        if let problem = problem {
            throw PackError("\(source) is an inconsistent context pack (\(problem)); rebuild it with `squeeze context build`")
        }
        return try ContextPack(source: source, metadata: st.metadata, tensors: st.tensors)
    }

    /// The content hash (content_sha256): sha256 over json.dumps(metadata minus the hash, sort_keys=True), then per
    /// tensor in name order "name|torch.<numpy dtype>|<Python shape tuple>|" and its bytes.
    public static func contentSha256(tensors: [String: StoredTensor], metadata: [String: String]) throws -> String {
        var md = SHA256()
        var json = "{"
        for (i, k) in pythonSorted(metadata.keys.filter { $0 != "content_sha256" }).enumerated() {
            if i > 0 { json += ", " }
            json += pythonJsonString(k) + ": " + pythonJsonString(metadata[k]!)
        }
        json += "}"
        md.update(json)
        for name in pythonSorted(Array(tensors.keys)) {
            let t = tensors[name]!
            let shape: String
            switch t.shape.count {
            case 0: shape = "()"
            case 1: shape = "(\(t.shape[0]),)"
            default: shape = "(" + t.shape.map(String.init).joined(separator: ", ") + ")"
            }
            md.update("\(name)|torch.\(try t.numpyDtype())|\(shape)|")
            t.data.withUnsafeBufferPointer { md.update($0) }
        }
        return md.hexDigest()
    }

    /// Python's sorted() of strings: by code point (Swift's < compares canonically equivalent forms).
    static func pythonSorted(_ keys: [String]) -> [String] {
        keys.map { (key: $0, points: $0.unicodeScalars.map(\.value)) }
            .sorted { $0.points.lexicographicallyPrecedes($1.points) }
            .map(\.key)
    }

    /// A string as Python's json.dumps writes it (ensure_ascii: everything outside ' '..'~' escaped, UTF-16 units).
    public static func pythonJsonString(_ s: String) -> String {
        var out = "\""
        for c in s.utf16 {
            switch c {
            case 0x22: out += "\\\""
            case 0x5C: out += "\\\\"
            case 0x0A: out += "\\n"
            case 0x0D: out += "\\r"
            case 0x09: out += "\\t"
            case 0x08: out += "\\b"
            case 0x0C: out += "\\f"
            default:
                if c >= 0x20 && c <= 0x7E {
                    out.unicodeScalars.append(Unicode.Scalar(UInt8(c)))
                } else {
                    out += "\\u" + hex4(Int(c)).lowercased()
                }
            }
        }
        return out + "\""
    }

    private static func inconsistency(_ a: [String: StoredTensor], _ metadata: [String: String]) throws -> String? {
        let needed = ["context.token_ids", "kv.keys", "kv.values", "lookup.centroid_codes", "lookup.centroid_scales",
                      "lookup.counts", "lookup.labels"]
        let missing = needed.filter { a[$0] == nil }
        if !missing.isEmpty { return "missing \(missing.joined(separator: ", "))" }
        guard let settingsText = metadata["build_settings"] else { return "its settings are not readable" }
        let settings = JSONPath(try Json.parse(settingsText), path: "build_settings")
        let sinks = try settings["sink_tokens"].int()
        let window = try settings["observation_window"].int()
        _ = try settings["centroid_fraction"].double()
        guard let configText = metadata["model_config"] else { return "its settings are not readable" }
        _ = try Json.parse(configText)
        let keys = a["kv.keys"]!, values = a["kv.values"]!, labels = a["lookup.labels"]!, counts = a["lookup.counts"]!
        let codes = a["lookup.centroid_codes"]!, scales = a["lookup.centroid_scales"]!, tokens = a["context.token_ids"]!
        let n = tokens.shape.count == 1 ? tokens.shape[0] : -1
        if keys.shape.count != 4 || keys.shape != values.shape || keys.shape[2] != n || keys.dtype != "F16" || values.dtype != "F16" {
            return "its key/value tensors do not match its tokens"
        }
        let l = keys.shape[0], h = keys.shape[1], d = keys.shape[3]
        let nc = n - sinks - window
        if nc < 1 || labels.shape != [l, h, nc] || codes.shape.count != 4 || codes.shape[0] != l || codes.shape[1] != h ||
            codes.shape[3] != d {
            return "its lookup tensors do not match its key/value tensors"
        }
        let k = codes.shape[2]
        if counts.shape != [l, h, k] || scales.shape != [l, h, k] || codes.dtype != "I8" { return "its centroid tensors disagree" }
        let lab = try labels.longs()
        if lab.contains(where: { $0 < 0 || $0 >= Int64(k) }) { return "cluster labels out of range" }
        var perCluster = [Int64](repeating: 0, count: l * h * k)
        for g in 0..<(l * h) {
            for j in 0..<nc { perCluster[g * k + Int(lab[g * nc + j])] += 1 }
        }
        if perCluster != (try counts.longs()) { return "cluster counts do not match the labels" }
        return nil
    }
}
