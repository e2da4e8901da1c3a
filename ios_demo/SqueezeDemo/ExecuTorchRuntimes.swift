// ExecuTorch runtimes (.pte): the video model (a ModelRuntime) and the decoder (a DecoderRuntime), over ExecuTorch's
// Swift API (Module, Tensor<T>, Value; the API is marked experimental upstream: written against the 0.7+ Swift
// package, adjust to the version you add). Compiled only when the ExecuTorch package is linked to the app target
// (`#if canImport(ExecuTorch)`), so the project builds without it. Not built or run here (no Apple SDK).
#if canImport(ExecuTorch)
import ExecuTorch
import Foundation
import SqueezeCore
import SqueezeDemoKit

/// The video model's "forward": one input of the manifest's shape and dtype (uint8 for frames_uint8), logits out.
final class ExecuTorchModelRuntime: ModelRuntime {
    let name: String
    private let module: Module
    private let shape: [Int]

    init(directory: VideoModelDirectory) throws {
        let (artifact, url) = try directory.artifact("pte")
        module = Module(filePath: url.path)
        try module.load("forward")
        shape = directory.manifest.input.shape
        name = artifact.runtime ?? "ExecuTorch" // the manifest names the delegate, e.g. "ExecuTorch (XNNPACK)"
    }

    func run(_ input: ModelInput) throws -> [Float] {
        let value: ValueConvertible
        switch input {
        case .uint8(let bytes): value = Tensor<UInt8>(bytes, shape: shape)
        case .float32(let floats): value = Tensor<Float>(floats, shape: shape)
        }
        let outputs = try module.execute("forward", [value])
        guard let logits: Tensor<Float> = outputs.first?.tensor() else {
            throw AppError("the .pte returned no float32 tensor from forward")
        }
        return logits.scalars()
    }
}

/// The decoder's methods ("prefill", "decode") with inputs in the order the manifest lists them (an ExecuTorch program
/// takes its inputs by position) and outputs named by the manifest. State "buffer" (.pte): the KV cache lives in the
/// program's mutable buffers, so the loop sends no past_keys/past_values. The pack's tables (the same arrays every
/// step) become ExecuTorch tensors once per pack (TensorCache), not a copy of tens of MB per step.
final class ExecuTorchDecoderRuntime: DecoderRuntime {
    let name: String
    private let module: Module
    private let artifact: DecoderArtifact
    private let tensors = TensorCache<ValueConvertible>()

    init(directory: DecoderModelDirectory, artifact: DecoderArtifact) throws {
        module = Module(filePath: try directory.artifactURL(artifact).path)
        for method in artifact.methodNames { try module.load(method) }
        self.artifact = artifact
        name = artifact.runtime ?? "ExecuTorch"
    }

    func run(method: String, inputs: [String: DecoderTensor]) throws -> [String: DecoderTensor] {
        guard let declared = artifact.methods[method] else { throw AppError("the .pte has no method \(method)") }
        let values: [ValueConvertible] = try declared.inputs.map { (info: TensorInfo) throws -> ValueConvertible in
            guard let t = inputs[info.name] else { throw AppError("\(method): input \(info.name) missing") }
            return tensors.get(info.name, t) { t -> ValueConvertible in
                switch t {
                case .float32(let f): return Tensor<Float>(f.data, shape: f.shape)
                case .int64(let l): return Tensor<Int64>(l.data, shape: l.shape)
                }
            }
        }
        let outputs = try module.execute(method, values)
        guard outputs.count == declared.outputs.count else {
            throw AppError("\(method) returned \(outputs.count) outputs, the manifest lists \(declared.outputs.count)")
        }
        var named: [String: DecoderTensor] = [:]
        for (name, value) in zip(declared.outputs, outputs) {
            // float32 (logits, new keys/values, stage outputs) or int64 (follow_out: the followed keys' rows)
            if let tensor: Tensor<Float> = value.tensor() {
                named[name] = .float32(try Float32Tensor(tensor.scalars(), shape: tensor.shape))
            } else if let tensor: Tensor<Int64> = value.tensor() {
                named[name] = .int64(try Int64Tensor(tensor.scalars(), shape: tensor.shape))
            } else {
                throw AppError("\(method): output \(name) is neither float32 nor int64")
            }
        }
        return named
    }
}

enum ExecuTorchBackends {
    /// The delegate a .pte runs on (XNNPACK, or Core ML with `--pte-backend coreml`) is fixed at export; link the
    /// matching backend library (backend_xnnpack / backend_coreml) to the app target.
    static var video: [VideoBackend] {
        [VideoBackend(name: "ExecuTorch (.pte)", containers: ["pte"]) { dir in try ExecuTorchModelRuntime(directory: dir) }]
    }

    static var decoder: [DecoderBackend] {
        [DecoderBackend(name: "ExecuTorch (.pte)", format: "pte") { dir, artifact in
            try ExecuTorchDecoderRuntime(directory: dir, artifact: artifact)
        }]
    }
}
#endif
