// The Q&A screen's pipeline without the screen: a decoder export directory + a runtime for one of its artifacts,
// a context pack attached (checked against the export's model, laid out once), questions answered one at a time on
// a background queue with the text streamed as it is generated. Platform-free, so it is tested here with a runtime
// that replays the exported graph's outputs.
import Dispatch
import Foundation
import SqueezeCore

/// What the Q&A screen shows about the attached pack.
public struct AttachedPack {
    public let name: String
    public let contextTokens: Int
    public let attention: String
    /// clustered keys the lookup keeps of the pack (squeezed attention), nil for full attention
    public let keepKeys: Int?
    public let clusteredKeys: Int
}

public final class QaSession {
    public let directory: DecoderModelDirectory
    public let artifact: DecoderArtifact
    public let runtime: DecoderRuntime
    /// The answer's opening the session asks for (nil: the manifest's exact_decode), checked when the session is made
    public let exactDecode: Int?
    private let tokenizer: ByteLevelBpeTokenizer
    private let queue = DispatchQueue(label: "dev.squeezemobile.qa", qos: .userInitiated)
    private let clockNanos: () -> Int64
    private var qa: DocumentQa? // used on `queue` only
    private let stopLock = NSLock()
    private var stopRequested = false // under stopLock: set by stop(), read after each token

    /// exactDecode: the decode steps of each answer's first N tokens that attend every fixed-context row (nil: the
    /// manifest's exact_decode); a value the artifact cannot run is refused here in one line (withExactDecode).
    public init(directory: DecoderModelDirectory, artifact: DecoderArtifact, runtime: DecoderRuntime, exactDecode: Int? = nil,
                clockNanos: @escaping () -> Int64 = GenerationLoop.monotonicNanos) throws {
        if let n = exactDecode { _ = try artifact.contract.withExactDecode(n) }
        self.exactDecode = exactDecode
        self.directory = directory
        self.artifact = artifact
        self.runtime = runtime
        self.clockNanos = clockNanos
        tokenizer = try directory.tokenizer()
    }

    /// Reads, verifies and lays out a pack (a few MB of file reading and hashing: off the main thread); completion
    /// runs on the session's queue.
    public func attach(pack url: URL, completion: @escaping (Result<AttachedPack, Error>) -> Void) {
        queue.async {
            completion(Result {
                let pack = try ContextPack.read(path: url.path)
                let qa = try DocumentQa.attach(manifest: self.directory.manifest, artifact: self.artifact, runtime: self.runtime,
                                               tokenizer: self.tokenizer, pack: pack, exactDecode: self.exactDecode,
                                               clockNanos: self.clockNanos)
                self.qa = qa
                return AttachedPack(name: url.lastPathComponent, contextTokens: pack.numTokens, attention: self.artifact.contract.attention,
                                    keepKeys: qa.loop.keepKeys, clusteredKeys: pack.numClustered)
            })
        }
    }

    /// Answers one question; onText gets each new piece of text, completion the answer with its timings (both on the
    /// session's queue). Questions asked while one runs wait their turn.
    public func ask(_ question: String, maxNewTokens: Int = 64, onText: @escaping (String) -> Void,
                    completion: @escaping (Result<Answer, Error>) -> Void) {
        setStop(false)
        queue.async {
            completion(Result {
                guard let qa = self.qa else { throw AppError("attach a context pack first (build one with `squeeze context build`)") }
                let room = qa.loop.shapes.maxPrompt + qa.loop.shapes.maxNew - (try qa.promptIds(question)).count
                return try qa.generate(question, maxNewTokens: max(1, min(maxNewTokens, room)), onText: onText,
                                       cancelled: { self.stopWanted() })
            })
        }
    }

    /// Stop the running answer after its current token (Answer.cancelled says so), as the Android app's Stop does.
    public func stop() { setStop(true) }

    private func setStop(_ value: Bool) {
        stopLock.lock()
        defer { stopLock.unlock() }
        stopRequested = value
    }

    private func stopWanted() -> Bool {
        stopLock.lock()
        defer { stopLock.unlock() }
        return stopRequested
    }

    /// Blocks until queued work is done (tests).
    public func waitUntilIdle() { queue.sync {} }
}
