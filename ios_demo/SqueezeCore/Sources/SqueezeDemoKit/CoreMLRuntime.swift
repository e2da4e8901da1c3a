// The video model on Core ML: a ModelRuntime over the export's .mlpackage (or legacy .mlmodel), compiled on the
// device the first time and cached; and the decoder on Core ML: a DecoderRuntime over the split plan's multifunction
// .mlpackage (`squeeze export decoder --formats coreml`). Apple-only (behind canImport(CoreML)); on Linux this file
// compiles to nothing. Core ML has no uint8 multi-array input, so a frames_uint8 export takes float32 0..255 (the
// graph's cast is a no-op): the bytes are widened, not normalised. Not built or run here (no Apple SDK): see
// ios_demo/README.md.
#if canImport(CoreML)
import CoreML
import Foundation
import SqueezeCore

public final class CoreMLModelRuntime: ModelRuntime {
    public let name: String
    private let model: MLModel
    private let inputName: String
    private let outputName: String
    private let inputShape: [Int]
    private let input: MLMultiArray

    /// The first Core ML artifact of the directory (mlpackage, else mlmodel) on the given compute units.
    public init(directory: VideoModelDirectory, computeUnits: MLComputeUnits = .all) throws {
        let container = directory.manifest.artifact("mlpackage") != nil ? "mlpackage" : "mlmodel"
        let (artifact, url) = try directory.artifact(container)
        guard let inp = artifact.inputs.first, let out = artifact.outputs.first else {
            throw AppError("the manifest lists no input/output names for \(artifact.file); re-export")
        }
        let config = MLModelConfiguration()
        config.computeUnits = computeUnits
        model = try MLModel(contentsOf: try CoreMLModelRuntime.compiled(url, sha256: artifact.sha256), configuration: config)
        inputName = inp.name
        outputName = out.name
        inputShape = directory.manifest.input.shape
        input = try MLMultiArray(shape: inputShape.map { NSNumber(value: $0) }, dataType: .float32)
        name = "Core ML (\(CoreMLModelRuntime.describe(computeUnits)))"
    }

    public static func describe(_ units: MLComputeUnits) -> String {
        switch units {
        case .cpuOnly: return "CPU"
        case .cpuAndGPU: return "CPU + GPU"
        case .all: return "all units"
        default:
            if #available(iOS 16.0, macOS 13.0, *), units == .cpuAndNeuralEngine { return "CPU + Neural Engine" }
            return "compute units \(units.rawValue)"
        }
    }

    /// The compiled model (.mlmodelc) of an .mlpackage/.mlmodel, compiled once into Application Support and reused
    /// while the artifact's sha256 (from the manifest) stays the same.
    static func compiled(_ url: URL, sha256: String?) throws -> URL {
        if url.pathExtension == "mlmodelc" { return url }
        let fm = FileManager.default
        let cache = try fm.url(for: .applicationSupportDirectory, in: .userDomainMask, appropriateFor: nil, create: true)
            .appendingPathComponent("compiled-models", isDirectory: true)
        try fm.createDirectory(at: cache, withIntermediateDirectories: true)
        let key = (sha256.map { String($0.prefix(16)) } ?? "nohash")
        let target = cache.appendingPathComponent("\(url.deletingPathExtension().lastPathComponent)-\(key).mlmodelc")
        if fm.fileExists(atPath: target.path) { return target }
        let temporary = try MLModel.compileModel(at: url)
        try? fm.removeItem(at: target)
        try fm.moveItem(at: temporary, to: target)
        return target
    }

    public func run(_ modelInput: ModelInput) throws -> [Float] {
        let count = inputShape.reduce(1, *)
        let strides = input.strides.map(\.intValue)
        guard strides == StridedLayout.contiguousStrides(inputShape) else {
            throw AppError("Core ML gave a strided input array \(strides); this runtime fills contiguous arrays only")
        }
        let dst = input.dataPointer.bindMemory(to: Float.self, capacity: count)
        switch modelInput {
        case .uint8(let bytes):
            guard bytes.count == count else { throw AppError("input has \(bytes.count) values, the model takes \(count)") }
            for i in 0..<count { dst[i] = Float(bytes[i]) }
        case .float32(let values):
            guard values.count == count else { throw AppError("input has \(values.count) values, the model takes \(count)") }
            values.withUnsafeBufferPointer { dst.update(from: $0.baseAddress!, count: count) }
        }
        let features = try MLDictionaryFeatureProvider(dictionary: [inputName: MLFeatureValue(multiArray: input)])
        let result = try model.prediction(from: features)
        guard let logits = result.featureValue(for: outputName)?.multiArrayValue else {
            throw AppError("the Core ML model returned no \(outputName) array")
        }
        return try CoreMLModelRuntime.floats(logits)
    }

    /// Every element of a (possibly strided) multi-array in row-major order as Float.
    static func floats(_ array: MLMultiArray) throws -> [Float] {
        let offsets = try StridedLayout.rowMajorOffsets(shape: array.shape.map(\.intValue), strides: array.strides.map(\.intValue))
        switch array.dataType {
        case .float32:
            let p = array.dataPointer.bindMemory(to: Float.self, capacity: (offsets.max() ?? 0) + 1)
            return offsets.map { p[$0] }
        case .double:
            let p = array.dataPointer.bindMemory(to: Double.self, capacity: (offsets.max() ?? 0) + 1)
            return offsets.map { Float(p[$0]) }
        default: // float16, int32: through NSNumber at each logical index (slow, fine for a few logits)
            let shape = array.shape.map(\.intValue)
            return (0..<offsets.count).map { linear -> Float in
                var rest = linear
                var index = [NSNumber](repeating: 0, count: shape.count)
                for axis in stride(from: shape.count - 1, through: 0, by: -1) {
                    index[axis] = NSNumber(value: rest % shape[axis])
                    rest /= shape[axis]
                }
                return array[index].floatValue
            }
        }
    }
}

/// The decoder's Core ML export: one .mlpackage whose functions are the split plan's stage graphs (prefill_<s>,
/// decode_<s>, prefill_exact_<s>, and decode_exact_<s> where exported: the answer's opening steps, prefill_exact's
/// stages one token wide; the cache as explicit inputs and outputs, state "io"), each loaded once as the function of
/// that name (MLModelConfiguration.functionName, iOS 18 / macOS 15) from one compiled model, every name the manifest
/// lists. The core's split loop calls them with the CPU lookup between stages. An artifact without decode_exact stages
/// gets its opening steps as prefill_exact_<s> calls padded to that function's static width, so every call of one
/// function has its one shape (the cached arrays are keyed by input name and shape). The pack's tables go in as MLMultiArrays made once per
/// pack (TensorCache: the same arrays are passed to every step); integer inputs are int32 in the file (Core ML has no
/// int64 inputs: the manifest records the file's dtypes); outputs are read by their tensor names (`out_<name>`).
@available(iOS 18.0, macOS 15.0, *)
public final class CoreMLDecoderRuntime: DecoderRuntime {
    public let name: String
    private let artifact: DecoderArtifact
    private var functions: [String: MLModel] = [:]
    private let arrays = TensorCache<MLMultiArray>()

    public init(directory: DecoderModelDirectory, artifact: DecoderArtifact, computeUnits: MLComputeUnits = .all) throws {
        guard artifact.format == "coreml" else {
            throw AppError("\(artifact.file) is a \(artifact.format) artifact; the Core ML runtime loads the .mlpackage of --formats coreml")
        }
        let compiled = try CoreMLModelRuntime.compiled(try directory.artifactURL(artifact), sha256: artifact.sha256)
        for method in artifact.methodNames { // every function now, as the app starts: none is compiled during a question
            let config = MLModelConfiguration()
            config.computeUnits = computeUnits
            config.functionName = method
            functions[method] = try MLModel(contentsOf: compiled, configuration: config)
        }
        self.artifact = artifact
        name = "Core ML (\(CoreMLModelRuntime.describe(computeUnits)))"
    }

    public func run(method: String, inputs: [String: DecoderTensor]) throws -> [String: DecoderTensor] {
        guard let declared = artifact.methods[method], let model = functions[method] else {
            throw AppError("\(artifact.file) has no function \(method); it has \(artifact.methodNames.joined(separator: ", "))")
        }
        var features: [String: MLFeatureValue] = [:]
        for info in declared.inputs {
            guard let tensor = inputs[info.name] else { throw AppError("\(method): input \(info.name) missing") }
            let array = try arrays.get(info.name, tensor) { try CoreMLDecoderRuntime.multiArray($0, dtype: info.dtype, name: info.name) }
            features[info.name] = MLFeatureValue(multiArray: array)
        }
        let result = try model.prediction(from: try MLDictionaryFeatureProvider(dictionary: features))
        var named: [String: DecoderTensor] = [:]
        for (output, tensor) in zip(declared.outputs, declared.outputTensors) {
            guard let array = result.featureValue(for: tensor)?.multiArrayValue else {
                throw AppError("\(method) returned no \(tensor) array")
            }
            named[output] = .float32(try Float32Tensor(try CoreMLModelRuntime.floats(array), shape: array.shape.map(\.intValue)))
        }
        return named
    }

    /// A contiguous multi-array of the file's dtype holding `tensor` (int64 values narrowed to int32, checked).
    static func multiArray(_ tensor: DecoderTensor, dtype: String, name: String) throws -> MLMultiArray {
        let shape = tensor.shape.map { NSNumber(value: $0) }
        switch (tensor, dtype) {
        case (.float32(let t), "float32"):
            let array = try MLMultiArray(shape: shape, dataType: .float32)
            try requireContiguous(array, name: name)
            let dst = array.dataPointer.bindMemory(to: Float.self, capacity: t.data.count)
            t.data.withUnsafeBufferPointer { src in if let base = src.baseAddress { dst.update(from: base, count: src.count) } }
            return array
        case (.int64(let t), "int32"):
            let array = try MLMultiArray(shape: shape, dataType: .int32)
            try requireContiguous(array, name: name)
            let dst = array.dataPointer.bindMemory(to: Int32.self, capacity: t.data.count)
            for (i, v) in t.data.enumerated() {
                guard let narrow = Int32(exactly: v) else { throw AppError("input \(name): \(v) does not fit the file's int32") }
                dst[i] = narrow
            }
            return array
        default:
            throw AppError("input \(name) is \(dtype) in the .mlpackage; the loop gave a tensor of another type (re-export)")
        }
    }

    private static func requireContiguous(_ array: MLMultiArray, name: String) throws {
        let strides = array.strides.map(\.intValue)
        guard strides == StridedLayout.contiguousStrides(array.shape.map(\.intValue)) else {
            throw AppError("Core ML gave a strided array \(strides) for input \(name); this runtime fills contiguous arrays only")
        }
    }
}

extension DecoderBackend {
    /// The Core ML decoder backends the Q&A screen offers (iOS 18: multifunction models).
    @available(iOS 18.0, macOS 15.0, *)
    public static var coreML: [DecoderBackend] {
        [MLComputeUnits.all, .cpuAndNeuralEngine, .cpuOnly].map { units in
            DecoderBackend(name: "Core ML (\(CoreMLModelRuntime.describe(units)))", format: "coreml") { dir, artifact in
                try CoreMLDecoderRuntime(directory: dir, artifact: artifact, computeUnits: units)
            }
        }
    }
}

extension VideoBackend {
    /// The Core ML backends the recognition screen offers.
    public static var coreML: [VideoBackend] {
        var units: [MLComputeUnits] = [.all, .cpuOnly]
        if #available(iOS 16.0, macOS 13.0, *) { units.insert(.cpuAndNeuralEngine, at: 1) }
        return units.map { u in
            VideoBackend(name: "Core ML (\(CoreMLModelRuntime.describe(u)))", containers: ["mlpackage", "mlmodel"]) { dir in
                try CoreMLModelRuntime(directory: dir, computeUnits: u)
            }
        }
    }
}
#endif
