// Document Q&A (squeezed_attention/decoder_session.py DecoderSession): a decoder runtime + its tokenizer + one
// attached context pack. Frames the question as the pack was built (chat: join + question + suffix; raw: the
// question; the question encoded literally: special-token strings written in it stay text), runs the GenerationLoop
// and streams text without splitting a multi-byte character. Port of DocumentQa / Answer in Generation.kt.

/// One answer: its text and ids, and the numbers the Q&A screen shows.
public struct Answer {
    public let text: String
    public let tokenIds: [Int]
    public let promptTokens: Int
    public let contextTokens: Int
    public let prefillMs: Double
    public let decodeMs: Double
    public let decodeTokens: Int
    public let runtime: String
    /// The split plan's CPU lookup (KeptRows between stage graphs; 0 in-graph), inside prefill and decode
    public var lookupMs: Double = 0
    /// Of the decode steps, the answer's opening: those that attended every fixed-context row (exact_decode)
    public var exactDecodeTokens = 0
    /// Whether the caller stopped the answer early (generate's cancelled)
    public var cancelled = false
    /// Decode steps that ran again through the exact method (contract exact_below)
    public var rerunTokens = 0

    public var decodeTokensPerSecond: Double { decodeMs > 0 ? Double(decodeTokens) / (decodeMs / 1e3) : 0 }
}

public final class DocumentQa {
    public let runtime: DecoderRuntime
    public let contract: DecoderContract
    public let tokenizer: ByteLevelBpeTokenizer
    public let tokenizerInfo: DecoderTokenizerInfo
    public let loop: GenerationLoop

    /// exactDecode: the answer's opening, the decode steps of its first N tokens that attend every fixed-context row (nil:
    /// the manifest's exact_decode; DecoderContract.withExactDecode checks it, as Python's DecoderSession(exact_decode=)).
    public init(runtime: DecoderRuntime, contract: DecoderContract, tokenizer: ByteLevelBpeTokenizer,
                tokenizerInfo: DecoderTokenizerInfo, pack: ContextPack, exactDecode: Int? = nil,
                clockNanos: @escaping () -> Int64 = GenerationLoop.monotonicNanos) throws {
        let contract = try exactDecode.map { try contract.withExactDecode($0) } ?? contract
        self.runtime = runtime
        self.contract = contract
        self.tokenizer = tokenizer
        self.tokenizerInfo = tokenizerInfo
        let inputs = try PackLayout.decoderContextInputs(pack, shapes: contract.shapes, attention: contract.attention)
        loop = try GenerationLoop(runtime: runtime, contract: contract, pack: pack, contextInputs: inputs, clockNanos: clockNanos)
    }

    /// DecoderSession + attach: the artifact of manifest the runtime loaded, with a pack checked against the manifest's
    /// model (weights and tokenizer hashes) and laid out for the artifact's shapes; exactDecode as in init.
    public static func attach(manifest: DecoderManifest, artifact: DecoderArtifact, runtime: DecoderRuntime,
                              tokenizer: ByteLevelBpeTokenizer, pack: ContextPack, exactDecode: Int? = nil,
                              clockNanos: @escaping () -> Int64 = GenerationLoop.monotonicNanos) throws -> DocumentQa {
        try pack.checkModel(weightsSha256: manifest.weightsSha256, tokenizerSha256: manifest.tokenizerSha256)
        return try DocumentQa(runtime: runtime, contract: artifact.contract, tokenizer: tokenizer,
                              tokenizerInfo: manifest.tokenizer, pack: pack, exactDecode: exactDecode, clockNanos: clockNanos)
    }

    /// An answer's text without the U+FFFD an unfinished multi-byte character leaves at its end (the answer stopped
    /// between the bytes of one character; its token ids keep them): Python's tokenizer.finished_text. The stream holds
    /// those characters back, so the streamed text and the answer's text agree.
    public static func finishedText(_ text: String) -> String {
        var scalars = text.unicodeScalars
        while scalars.last == "\u{FFFD}" { scalars.removeLast() }
        return String(scalars)
    }

    /// Python's tokenizer.check_question: in chat framing a question that is not blank (an empty user turn asks nothing,
    /// and the model answered some question of its own; raw framing continues the context, whitespace is text there).
    /// Blank is Python's str.isspace, scalar for scalar. (A Swift String holds no stray surrogate, which Python refuses.)
    public static func checkQuestion(_ text: String, raw: Bool) throws {
        if !raw && text.unicodeScalars.allSatisfy({ isPythonSpace($0.value) }) {
            throw DecoderError("the prompt is empty\(text.isEmpty ? "" : " (only whitespace)"): the user's turn needs a "
                               + "question; ask one")
        }
    }

    /// str.isspace of Python 3.11: the ASCII controls it counts, U+0085, and Unicode's Zs, Zl and Zp.
    static func isPythonSpace(_ v: UInt32) -> Bool {
        switch v {
        case 0x09...0x0D, 0x1C...0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000: return true
        default: return false
        }
    }

    /// The question's token ids, framed as the pack was built (raw: nil = as the pack says).
    public func promptIds(_ prompt: String, raw: Bool? = nil) throws -> [Int] {
        let framing = loop.pack.framing
        let isRaw = raw ?? (framing == "raw")
        if isRaw != (framing == "raw") {
            throw DecoderError("this pack was built with \(framing) framing; " + (isRaw ? "drop --raw" : "pass --raw") +
                " or rebuild the pack")
        }
        try DocumentQa.checkQuestion(prompt, raw: isRaw)
        // the question is user text: special-token strings written in it stay text (Python's DecoderSession.prompt_ids,
        // encode_literal); only the framing's suffix ("<|im_end|>\n<|im_start|>assistant\n") has real markers
        if isRaw { return try tokenizer.encode(prompt, literal: true) }
        return try tokenizer.encode(tokenizerInfo.join + prompt, literal: true) + tokenizer.encode(tokenizerInfo.suffix)
    }

    /// Answer prompt greedily; onText gets each new piece of text as soon as it is whole UTF-8; when cancelled turns
    /// true (checked after each token: the screen's Stop) the answer ends there.
    public func generate(_ prompt: String, maxNewTokens: Int = 64, raw: Bool? = nil, stopAtEos: Bool = true,
                         onText: ((String) -> Void)? = nil, cancelled: () -> Bool = { false }) throws -> Answer {
        let ids = try promptIds(prompt, raw: raw)
        var printed = 0 // Unicode scalars already streamed
        var stream: (([Int]) -> Void)? = nil
        if let onText = onText {
            stream = { [tokenizer] tokens in
                let scalars = tokenizer.decode(tokens).unicodeScalars
                if scalars.last != "\u{FFFD}" { // wait for the rest of a multi-byte character
                    var piece = String.UnicodeScalarView()
                    piece.append(contentsOf: scalars.dropFirst(printed))
                    onText(String(piece))
                    printed = scalars.count
                }
            }
        }
        let out = try loop.greedy(ids, maxNewTokens: maxNewTokens, stopIds: stopAtEos ? tokenizerInfo.stopTokenIds : [],
                                  onToken: stream, cancelled: cancelled)
        let text = DocumentQa.finishedText(tokenizer.decode(out.tokens))
        // text held back with a character the answer never finished (a space in the same token): the streamed pieces
        // add up to the answer's text (Python's TextStream.finish)
        if let onText = onText, text.unicodeScalars.count > printed {
            var rest = String.UnicodeScalarView()
            rest.append(contentsOf: text.unicodeScalars.dropFirst(printed))
            onText(String(rest))
        }
        return Answer(text: text, tokenIds: out.tokens, promptTokens: ids.count,
                      contextTokens: loop.pack.numTokens, prefillMs: Double(out.prefillNanos) / 1e6,
                      decodeMs: Double(out.decodeNanos) / 1e6, decodeTokens: out.decodeSteps, runtime: runtime.name,
                      lookupMs: Double(out.lookupNanos) / 1e6, exactDecodeTokens: out.exactSteps, cancelled: out.cancelled,
                      rerunTokens: out.rerunAt.count)
    }
}
