// The document Q&A screen (SwiftUI): pick a decoder artifact and a context pack, ask a question, watch the answer
// stream in, with prefill ms and decode tokens/s. The logic lives in QaSession / DocumentQa (platform-free, tested on
// Linux against Python); this file only wires the screen. Apple-only (behind canImport(SwiftUI)); not built or run
// here (no Apple SDK): see ios_demo/README.md.
#if canImport(SwiftUI)
import SqueezeCore
import SwiftUI

public final class QaModel: ObservableObject {
    /// one artifact of the export with the backend that runs it
    public struct Option {
        public let title: String
        let backend: DecoderBackend
        let artifact: DecoderArtifact
    }

    @Published public private(set) var options: [Option] = []
    @Published public var optionIndex = 0 { didSet { if oldValue != optionIndex { loadRuntime() } } }
    @Published public private(set) var packs: [URL] = []
    @Published public var packIndex = 0 { didSet { if oldValue != packIndex { attachPack() } } }
    @Published public private(set) var attached: AttachedPack?
    @Published public var question = ""
    @Published public private(set) var answer = ""
    @Published public private(set) var stats: String?
    @Published public private(set) var busy = false
    /// an answer is being generated (the Stop button's state; busy also covers loading a runtime or a pack)
    @Published public private(set) var answering = false
    @Published public private(set) var message: String?
    public var maxNewTokens = 64

    private var directory: DecoderModelDirectory?
    private var session: QaSession?
    private let setup = DispatchQueue(label: "dev.squeezemobile.qa-setup")

    public init(backends: [DecoderBackend], modelRoots: [URL] = ModelLocations.defaultRoots()) {
        let found = ModelLocations.scan(modelRoots)
        guard let dir = found.decoder.first else {
            message = "no decoder export found: add the `squeeze export decoder` directory and a .pack to models/ (see README)"
            return
        }
        do {
            let loaded = try DecoderModelDirectory.load(dir)
            directory = loaded
            // squeezed artifacts first: they are the point of the demo
            let artifacts = loaded.manifest.artifacts.sorted { ($0.contract.attention == "squeezed" ? 0 : 1) < ($1.contract.attention == "squeezed" ? 0 : 1) }
            options = backends.flatMap { b in
                artifacts.filter { $0.format == b.format }.map { Option(title: "\(b.name) · \($0.contract.attention)", backend: b, artifact: $0) }
            }
            // packs beside the export, and any in the model roots (Documents)
            packs = loaded.packs() + modelRoots.flatMap { DecoderModelDirectory.packs(in: $0) }
            if options.isEmpty {
                let formats = Set(loaded.manifest.artifacts.map(\.format)).sorted().joined(separator: ", ")
                let runnable = Array(Set(backends.map(\.format))).sorted().joined(separator: ", ")
                message = "this app runs \(runnable) decoder artifacts, the export has \(formats); export with " +
                    "`squeeze export decoder --formats coreml` (iOS 18) or `--formats pte` (with the ExecuTorch package)"
            } else if packs.isEmpty {
                message = "no context pack (*.pack.safetensors) next to the export; build one with `squeeze context build` and copy it"
            }
        } catch {
            message = "\(error)"
        }
    }

    public func start() {
        if session == nil { loadRuntime() }
    }

    private func loadRuntime() {
        guard let directory = directory, options.indices.contains(optionIndex) else { return }
        let option = options[optionIndex]
        busy = true
        attached = nil
        setup.async { [weak self] in
            do {
                let runtime = try option.backend.make(directory, option.artifact)
                let session = try QaSession(directory: directory, artifact: option.artifact, runtime: runtime)
                DispatchQueue.main.async {
                    self?.session = session
                    self?.busy = false
                    self?.attachPack()
                }
            } catch {
                DispatchQueue.main.async {
                    self?.busy = false
                    self?.message = "\(option.title): \(error)"
                }
            }
        }
    }

    private func attachPack() {
        guard let session = session, packs.indices.contains(packIndex) else { return }
        busy = true
        attached = nil
        session.attach(pack: packs[packIndex]) { result in
            DispatchQueue.main.async { [weak self] in
                self?.busy = false
                switch result {
                case .success(let info):
                    self?.attached = info
                    self?.message = nil
                case .failure(let error):
                    self?.message = "\(error)"
                }
            }
        }
    }

    public func ask() {
        guard let session = session, attached != nil, !busy else { return }
        let q = question.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !q.isEmpty else { return }
        busy = true
        answering = true
        answer = ""
        stats = nil
        session.ask(q, maxNewTokens: maxNewTokens, onText: { piece in
            DispatchQueue.main.async { [weak self] in self?.answer += piece }
        }, completion: { result in
            DispatchQueue.main.async { [weak self] in
                self?.busy = false
                self?.answering = false
                switch result {
                case .success(let a):
                    self?.answer = a.text
                    self?.stats = String(format: "prefill %.0f ms · decode %.1f tok/s · %d tokens · prompt %d / context %d tokens · %@",
                                         a.prefillMs, a.decodeTokensPerSecond, a.tokenIds.count, a.promptTokens, a.contextTokens, a.runtime)
                        + (a.cancelled ? " · stopped" : "")
                case .failure(let error):
                    self?.message = "\(error)"
                }
            }
        })
    }

    /// Ends the running answer after its current token (the answer so far is kept; its stats say "stopped").
    public func stop() {
        guard answering else { return }
        session?.stop()
    }
}

public struct QaScreen: View {
    @ObservedObject var model: QaModel

    public init(model: QaModel) {
        self.model = model
    }

    public var body: some View {
        VStack(alignment: .leading, spacing: 10) {
            if !model.options.isEmpty {
                Picker("Decoder", selection: $model.optionIndex) {
                    ForEach(model.options.indices, id: \.self) { i in Text(model.options[i].title).tag(i) }
                }
                .pickerStyle(.menu)
            }
            if !model.packs.isEmpty {
                Picker("Document", selection: $model.packIndex) {
                    ForEach(model.packs.indices, id: \.self) { i in Text(model.packs[i].lastPathComponent).tag(i) }
                }
                .pickerStyle(.menu)
            }
            if let p = model.attached {
                Text("\(p.name): \(p.contextTokens) context tokens, \(p.attention) attention" +
                     (p.keepKeys.map { ", keeps \($0) of \(p.clusteredKeys) clustered keys" } ?? ""))
                    .font(.footnote)
            }
            HStack {
                TextField("Ask about the document", text: $model.question)
                    .textFieldStyle(.roundedBorder)
                    .onSubmit { model.ask() }
                Button("Ask") { model.ask() }
                    .disabled(model.busy || model.attached == nil)
                Button("Stop") { model.stop() }
                    .disabled(!model.answering)
            }
            if model.busy { ProgressView() }
            ScrollView {
                Text(model.answer)
                    .frame(maxWidth: .infinity, alignment: .leading)
                    .textSelection(.enabled)
            }
            if let stats = model.stats { Text(stats).font(.footnote.monospacedDigit()) }
            if let message = model.message { Text(message).font(.footnote).foregroundColor(.red) }
        }
        .padding()
        .onAppear { model.start() }
    }
}
#endif
