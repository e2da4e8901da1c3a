// The decoder's byte-level BPE tokenizer, read from the tokenizer.json the decoder export ships beside the artifact
// (a Hugging Face `tokenizers` file, as squeezed_attention/tokenizer.py builds it). Gives the same ids as Python's
// `Tokenizer.from_file(path).encode(text, add_special_tokens=False).ids` and the same text as its
// `decode(ids, skip_special_tokens=...)`. Port of Tokenizer.kt.
//
// What it implements (and refuses anything else with a one-line TokenizerError): no normaliser, no post processor;
// pre-tokenizer ByteLevel (GPT-2 split, no prefix space), optionally after Digits (one piece per digit, as SmolLM's);
// a BPE model without dropout, unknown token, prefixes/suffixes or byte fallback; added tokens matched verbatim (no
// lstrip/rstrip/single_word), leftmost-longest, before pre-tokenization; special ones not matched in literal mode
// (`encode(text, literal: true)`: user text, where "<|im_end|>" stays characters). Text is handled as Unicode
// scalars (the GPT-2 split regex is written out by hand: NSRegularExpression's \s is not Unicode White_Space).
import Foundation

public struct TokenizerError: SqueezeError {
    public let message: String
    public init(_ message: String) { self.message = message }
}

public struct AddedToken: Equatable {
    public let id: Int
    public let content: String
    public let special: Bool
    let scalars: [Unicode.Scalar]

    init(id: Int, content: String, special: Bool) {
        self.id = id
        self.content = content
        self.special = special
        scalars = Array(content.unicodeScalars)
    }
}

public final class ByteLevelBpeTokenizer {
    private let vocab: [String: Int]
    private let idToTokenTable: [String?]
    /// (left id << 32 | right id) -> rank << 32 | merged id
    private let merges: [UInt64: UInt64]
    public let addedTokens: [AddedToken]
    private let splitDigits: Bool
    private let useRegex: Bool
    private let ignoreMerges: Bool
    private let addedById: [Int: AddedToken]
    private let addedByFirstScalar: [Unicode.Scalar: [AddedToken]]
    private let byteSymbol: [Int]
    private var cache: [[UInt8]: [Int]] = [:]
    private static let cacheLimit = 10_000

    /// Ids of the special added tokens (skipped by decode with skipSpecial).
    public let specialIds: Set<Int>

    public var vocabSize: Int { idToTokenTable.count }

    private init(vocab: [String: Int], idToToken: [String?], merges: [UInt64: UInt64], addedTokens: [AddedToken],
                 splitDigits: Bool, useRegex: Bool, ignoreMerges: Bool) {
        self.vocab = vocab
        idToTokenTable = idToToken
        self.merges = merges
        self.addedTokens = addedTokens
        self.splitDigits = splitDigits
        self.useRegex = useRegex
        self.ignoreMerges = ignoreMerges
        var byId: [Int: AddedToken] = [:]
        var byFirst: [Unicode.Scalar: [AddedToken]] = [:]
        for t in addedTokens {
            byId[t.id] = t // a repeated id: the last one (Kotlin's associateBy)
            byFirst[t.scalars[0], default: []].append(t)
        }
        addedById = byId
        addedByFirstScalar = byFirst
        byteSymbol = (0..<256).map { b in vocab[String(Character(ByteLevelBpeTokenizer.byteToScalar[b]))] ?? -1 }
        specialIds = Set(addedTokens.filter(\.special).map(\.id))
    }

    public func tokenToId(_ token: String) -> Int? { addedTokens.first { $0.content == token }?.id ?? vocab[token] }

    public func idToToken(_ id: Int) -> String? {
        if let a = addedById[id] { return a.content }
        return id >= 0 && id < idToTokenTable.count ? idToTokenTable[id] : nil
    }

    /// Token ids of text (add_special_tokens=False: no BOS/EOS added). By default special-token strings in the text
    /// become their tokens (the chat framing's own markers). literal: user text (a document, a question), whose
    /// written "<|im_end|>" or "<|endoftext|>" stays text, as Python's `encode_literal` (tokenizers'
    /// `encode_special_tokens=True`): a special token's match is passed over, its characters go through
    /// pre-tokenization and BPE with the text around them; non-special added tokens are still matched (the real model
    /// has none). Text without special-token strings gets the same ids either way.
    public func encode(_ text: String, literal: Bool = false) throws -> [Int] {
        let s = Array(text.unicodeScalars)
        var out: [Int] = []
        var segmentStart = 0
        var i = 0
        while i < s.count {
            guard let match = addedAt(s, i) else {
                i += 1
                continue
            }
            if literal && match.special { // the Rust library's leftmost-longest scan goes on after the skipped match
                i += match.scalars.count
                continue
            }
            try encodeSegment(s[segmentStart..<i], &out)
            out.append(match.id)
            i += match.scalars.count
            segmentStart = i
        }
        try encodeSegment(s[segmentStart..<s.count], &out)
        return out
    }

    /// Text of ids: byte-level tokens back to bytes, then UTF-8 with U+FFFD for invalid sequences (as Rust's
    /// from_utf8_lossy); special tokens dropped when skipSpecial; ids outside the vocabulary are skipped.
    public func decode(_ ids: [Int], skipSpecial: Bool = true) -> String {
        var bytes: [UInt8] = []
        for id in ids {
            let added = addedById[id]
            if let a = added, a.special, skipSpecial { continue }
            guard let token = added?.content ?? (id >= 0 && id < idToTokenTable.count ? idToTokenTable[id] : nil) else { continue }
            var mapped: [UInt8] = []
            var ok = true
            for scalar in token.unicodeScalars {
                let v = Int(scalar.value)
                let b = v < ByteLevelBpeTokenizer.scalarToByte.count ? ByteLevelBpeTokenizer.scalarToByte[v] : -1
                if b < 0 { ok = false; break }
                mapped.append(UInt8(b))
            }
            // a token with a character outside the byte alphabet (an added token such as "<|im_start|>" is inside
            // it) goes out as its own UTF-8, as the Hugging Face ByteLevel decoder does
            bytes += ok ? mapped : Array(token.utf8)
        }
        return ByteLevelBpeTokenizer.decodeUtf8Lossy(bytes)
    }

    private func addedAt(_ s: [Unicode.Scalar], _ i: Int) -> AddedToken? {
        guard let candidates = addedByFirstScalar[s[i]] else { return nil }
        var best: AddedToken?
        for t in candidates where t.scalars.count <= s.count - i && (best == nil || t.scalars.count > best!.scalars.count) {
            if s[i..<(i + t.scalars.count)].elementsEqual(t.scalars) { best = t }
        }
        return best
    }

    private func encodeSegment(_ segment: ArraySlice<Unicode.Scalar>, _ out: inout [Int]) throws {
        if segment.isEmpty { return }
        if !splitDigits {
            try encodePiece(segment, &out)
            return
        }
        // Digits(individual_digits=True): every numeric character (Unicode Nd, Nl, No) is a piece of its own
        var start = segment.startIndex
        for i in segment.indices where ByteLevelBpeTokenizer.isNumeric(segment[i]) {
            if start < i { try encodePiece(segment[start..<i], &out) }
            try encodePiece(segment[i..<(i + 1)], &out)
            start = i + 1
        }
        if start < segment.endIndex { try encodePiece(segment[start..<segment.endIndex], &out) }
    }

    private func encodePiece(_ piece: ArraySlice<Unicode.Scalar>, _ out: inout [Int]) throws {
        if !useRegex {
            try encodeWord(piece, &out)
            return
        }
        var i = piece.startIndex
        while i < piece.endIndex {
            let end = ByteLevelBpeTokenizer.gpt2Match(piece, at: i)
            try encodeWord(piece[i..<end], &out)
            i = end
        }
    }

    private func encodeWord(_ word: ArraySlice<Unicode.Scalar>, _ out: inout [Int]) throws {
        if word.isEmpty { return }
        var bytes: [UInt8] = []
        for scalar in word { UTF8.encode(scalar) { bytes.append($0) } }
        if let cached = cache[bytes] {
            out += cached
            return
        }
        let ids = try bpe(bytes)
        if cache.count < ByteLevelBpeTokenizer.cacheLimit { cache[bytes] = ids }
        out += ids
    }

    /// Pairs queued by bpe since the tokenizer was made (a test's measure that merging stays O(n log n) in a word's
    /// bytes: a word of n bytes queues at most 3n pairs).
    private(set) var queuedPairs: Int64 = 0

    /// One word's bytes -> ids. Merges the adjacent pair with the lowest rank, the leftmost one among equal ranks,
    /// until no pair merges: the order of the Hugging Face BPE model's priority queue (rank, then position), which this
    /// runs the same way (tokenizers' Word::merge_all): the symbols a linked list over the byte positions, every pair a
    /// queue entry (rank, left position), an entry skipped when its pair changed since it was queued. O(n log n): the
    /// rescan of the whole word per merge it replaces took seconds for a run of thousands of one character.
    private func bpe(_ bytes: [UInt8]) throws -> [Int] {
        if ignoreMerges {
            var whole = String.UnicodeScalarView()
            for b in bytes { whole.append(ByteLevelBpeTokenizer.byteToScalar[Int(b)]) }
            if let id = vocab[String(whole)] { return [id] }
        }
        // a byte the vocabulary has no token for is dropped, as tokenizers' BPE does without an unk token (the real
        // SmolLM2 vocabulary has none for six control characters and the lead bytes of planes 4-11): its neighbours
        // become adjacent and may merge
        var symbols = bytes.compactMap { b -> Int? in
            let id = byteSymbol[Int(b)]
            return id < 0 ? nil : id
        }
        let n = symbols.count
        if n < 2 { return symbols }
        var next = (0..<n).map { $0 + 1 < n ? $0 + 1 : -1 }
        var prev = (0..<n).map { $0 - 1 }
        var alive = [Bool](repeating: true, count: n)
        var queue = UInt64Heap(capacity: n)
        // an entry: rank in the high 32 bits, the pair's left position in the low 32 (rank first, then position)
        func push(_ left: Int) {
            let right = next[left]
            guard right >= 0, let m = merges[ByteLevelBpeTokenizer.pairKey(symbols[left], symbols[right])] else { return }
            queue.add((m >> 32) << 32 | UInt64(left))
            queuedPairs += 1
        }
        for k in 0..<(n - 1) { push(k) }
        while let entry = queue.poll() {
            let rank = entry >> 32
            let left = Int(entry & 0xFFFF_FFFF)
            let right = next[left]
            guard alive[left], right >= 0,
                  let m = merges[ByteLevelBpeTokenizer.pairKey(symbols[left], symbols[right])],
                  m >> 32 == rank else { continue } // the pair changed since it was queued
            symbols[left] = Int(m & 0xFFFF_FFFF)
            alive[right] = false
            next[left] = next[right]
            if next[right] >= 0 { prev[next[right]] = left }
            if prev[left] >= 0 { push(prev[left]) }
            push(left)
        }
        var out: [Int] = []
        var k = 0
        while k >= 0 {
            out.append(symbols[k])
            k = next[k]
        }
        return out
    }

    /// A binary min-heap of UInt64 (the BPE queue).
    private struct UInt64Heap {
        private var items: [UInt64] = []

        init(capacity: Int) { items.reserveCapacity(capacity) }

        mutating func add(_ v: UInt64) {
            items.append(v)
            var i = items.count - 1
            while i > 0 {
                let parent = (i - 1) / 2
                if items[parent] <= v { break }
                items[i] = items[parent]
                i = parent
            }
            items[i] = v
        }

        mutating func poll() -> UInt64? {
            guard let last = items.popLast() else { return nil }
            if items.isEmpty { return last }
            let top = items[0]
            var i = 0
            while true {
                var child = 2 * i + 1
                if child >= items.count { break }
                if child + 1 < items.count && items[child + 1] < items[child] { child += 1 }
                if items[child] >= last { break }
                items[i] = items[child]
                i = child
            }
            items[i] = last
            return top
        }
    }

    // MARK: - the GPT-2 split, by hand

    /// End of the match of GPT-2's split regex (the `tokenizers` ByteLevel one, \s = Unicode White_Space) at i:
    /// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ (alternatives in this order).
    static func gpt2Match(_ s: ArraySlice<Unicode.Scalar>, at i: Int) -> Int {
        let end = s.endIndex
        let c = s[i]
        if c == "'" && i + 1 < end {
            let d = s[i + 1]
            if d == "s" || d == "t" || d == "m" || d == "d" { return i + 2 }
            if i + 2 < end {
                let e = s[i + 2]
                if (d == "r" && e == "e") || (d == "v" && e == "e") || (d == "l" && e == "l") { return i + 3 }
            }
        }
        for cls in [CharClass.letter, .number, .other] {
            var j = i
            if s[j] == " " && j + 1 < end && charClass(s[j + 1]) == cls { j += 1 }
            if charClass(s[j]) == cls {
                while j < end && charClass(s[j]) == cls { j += 1 }
                return j
            }
        }
        // whitespace (every scalar is a letter, a number, whitespace or other)
        var j = i
        while j < end && s[j].properties.isWhitespace { j += 1 }
        if j == end { return j } // \s+(?!\S) at the end
        if j - i >= 2 { return j - 1 } // \s+(?!\S): leave the last one to prefix the next word
        return j // \s+
    }

    enum CharClass { case letter, number, whitespace, other }

    static func charClass(_ c: Unicode.Scalar) -> CharClass {
        switch c.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return .letter
        case .decimalNumber, .letterNumber, .otherNumber: return .number
        default: return c.properties.isWhitespace ? .whitespace : .other
        }
    }

    static func isNumeric(_ c: Unicode.Scalar) -> Bool {
        switch c.properties.generalCategory {
        case .decimalNumber, .letterNumber, .otherNumber: return true
        default: return false
        }
    }

    // MARK: - tables and reading

    /// GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the rest to U+0100 onwards.
    public static let byteToScalar: [Unicode.Scalar] = {
        var next: UInt32 = 256
        return (0..<256).map { b -> Unicode.Scalar in
            let printable = (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b)
            if printable { return Unicode.Scalar(UInt8(b)) }
            defer { next += 1 }
            return Unicode.Scalar(next)!
        }
    }()

    /// scalar value -> byte, -1 outside the byte alphabet
    static let scalarToByte: [Int] = {
        var t = [Int](repeating: -1, count: 0x200)
        for (b, s) in byteToScalar.enumerated() { t[Int(s.value)] = b }
        return t
    }()

    static func pairKey(_ a: Int, _ b: Int) -> UInt64 { UInt64(UInt32(truncatingIfNeeded: a)) << 32 | UInt64(UInt32(truncatingIfNeeded: b)) }

    /// The tokenizer in `path`; with `sha256` (the decoder manifest's `tokenizer.sha256`) it must be the file the export
    /// wrote: an edited vocabulary (two digits' ids swapped, say) parses fine and answers other digits. Parsed first, so a
    /// damaged file says it cannot be read (decoder_session.load_decoder_tokenizer's order; Kotlin: the same).
    public static func fromFile(_ path: String, sha256: String? = nil) throws -> ByteLevelBpeTokenizer {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir), !isDir.boolValue,
              let data = FileManager.default.contents(atPath: path) else {
            throw TokenizerError("the tokenizer \(path) is missing; re-export the decoder")
        }
        let bytes = [UInt8](data)
        let tokenizer = try parse(bytes, source: (path as NSString).lastPathComponent)
        if let expected = sha256, SHA256.hexDigest(bytes) != expected {
            throw TokenizerError("the tokenizer \(path) is not the one the export wrote (its sha256 differs from the manifest's); "
                                 + "restore it or re-export the decoder")
        }
        return tokenizer
    }

    public static func parse(_ bytes: [UInt8], source: String = "tokenizer.json") throws -> ByteLevelBpeTokenizer {
        do {
            return try build(JSONPath(try Json.parse(bytes), path: source))
        } catch let e as JSONError {
            throw TokenizerError("\(source) is not a readable tokenizer (\(e.message)); re-export the decoder")
        }
    }

    private static func unsupported(_ source: String, _ what: String) -> TokenizerError {
        TokenizerError("\(source) uses \(what), which this tokenizer does not implement; export the decoder with the project's byte-level BPE tokenizer")
    }

    /// A post-processor only adds its special tokens (and trims offsets) when encoding WITH special tokens; the pipeline
    /// always encodes without them (add_special_tokens=False), where the ids are the same: the ByteLevel one and the
    /// TemplateProcessing one that Hugging Face byte-level BPE tokenizer.json files carry (an export of a model folder
    /// copies its tokenizer.json) change no id here. Others are refused.
    private static func checkPostProcessor(_ source: String, _ v: JSONPath) throws {
        let type = try v["type"].string()
        switch type {
        case "ByteLevel", "TemplateProcessing": return
        case "Sequence": for p in try v["processors"].list() { try checkPostProcessor(source, p) }
        default: throw unsupported(source, "a post_processor (\(type))")
        }
    }

    private static func build(_ root: JSONPath) throws -> ByteLevelBpeTokenizer {
        let source = root.path
        if let v = try root.opt("normalizer"), !v.isNull { throw unsupported(source, "a normalizer (\(try v["type"].string()))") }
        if let v = try root.opt("post_processor"), !v.isNull { try checkPostProcessor(source, v) }
        var splitDigits = false
        var useRegex = true
        let pre = try root["pre_tokenizer"]
        let steps = try pre["type"].string() == "Sequence" ? try pre["pretokenizers"].list() : [pre]
        for (i, step) in steps.enumerated() {
            let type = try step["type"].string()
            switch type {
            case "Digits":
                if !(try step["individual_digits"].bool()) { throw unsupported(source, "Digits without individual_digits") }
                splitDigits = true
            case "ByteLevel":
                if i != steps.count - 1 { throw unsupported(source, "a pre-tokenizer after ByteLevel") }
                if try step.opt("add_prefix_space")?.bool() == true { throw unsupported(source, "ByteLevel with add_prefix_space") }
                useRegex = try step.opt("use_regex")?.bool() ?? true
            default:
                throw unsupported(source, "the \(type) pre-tokenizer")
            }
        }
        if try steps.last?["type"].string() != "ByteLevel" { throw unsupported(source, "no ByteLevel pre-tokenizer") }
        let decoder = try root["decoder"]
        if try decoder["type"].string() != "ByteLevel" { throw unsupported(source, "the \(try decoder["type"].string()) decoder") }

        let model = try root["model"]
        if try model["type"].string() != "BPE" { throw unsupported(source, "a \(try model["type"].string()) model") }
        for key in ["dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix"] {
            if let v = try model.opt(key), !v.isNull { throw unsupported(source, "BPE \(key)") }
        }
        if try model.opt("byte_fallback")?.bool() == true { throw unsupported(source, "BPE byte_fallback") }
        let ignoreMerges = try model.opt("ignore_merges")?.bool() ?? false

        var vocab: [String: Int] = [:]
        var maxId = -1
        let vocabObj = try model["vocab"].obj()
        vocab.reserveCapacity(vocabObj.count)
        for token in vocabObj.keys {
            let v = try JSONPath(vocabObj[token]!, path: "\(source).model.vocab").int()
            vocab[token] = v
            maxId = max(maxId, v)
        }
        let added = try root["added_tokens"].list().map { t -> AddedToken in
            for flag in ["single_word", "lstrip", "rstrip"] where try t.opt(flag)?.bool() == true {
                throw unsupported(source, "an added token with \(flag)")
            }
            let content = try t["content"].string()
            if content.unicodeScalars.isEmpty { throw unsupported(source, "an empty added token") }
            return AddedToken(id: try t["id"].int(), content: content, special: try t["special"].bool())
        }
        for t in added { maxId = max(maxId, t.id) }
        var idToToken = [String?](repeating: nil, count: maxId + 1)
        for (token, id) in vocab where id >= 0 { idToToken[id] = token }

        var merges: [UInt64: UInt64] = [:]
        let mergeList = try model["merges"].list()
        merges.reserveCapacity(mergeList.count)
        for (rank, m) in mergeList.enumerated() {
            // "left right" (older files) or ["left", "right"]
            let left: String, right: String
            if case .string(let s) = m.value {
                guard let sp = s.unicodeScalars.firstIndex(of: " ") else {
                    throw TokenizerError("\(m.path): a merge must be two tokens, found \"\(s)\"")
                }
                left = String(s.unicodeScalars[..<sp])
                right = String(s.unicodeScalars[s.unicodeScalars.index(after: sp)...])
            } else {
                let pair = try m.list()
                if pair.count != 2 { throw TokenizerError("\(m.path): a merge must be two tokens") }
                left = try pair[0].string()
                right = try pair[1].string()
            }
            guard let a = vocab[left] else { throw TokenizerError("\(m.path): merge token \"\(left)\" is not in the vocabulary") }
            guard let b = vocab[right] else { throw TokenizerError("\(m.path): merge token \"\(right)\" is not in the vocabulary") }
            guard let merged = vocab[left + right] else {
                throw TokenizerError("\(m.path): merged token \"\(left)\(right)\" is not in the vocabulary")
            }
            // a repeated merge: the later rank wins, as in the Rust library's map
            merges[pairKey(a, b)] = UInt64(rank) << 32 | UInt64(UInt32(truncatingIfNeeded: merged))
        }
        return ByteLevelBpeTokenizer(vocab: vocab, idToToken: idToToken, merges: merges, addedTokens: added,
                                     splitDigits: splitDigits, useRegex: useRegex, ignoreMerges: ignoreMerges)
    }

    /// UTF-8 -> String with one U+FFFD per maximal invalid subsequence (Rust's String::from_utf8_lossy).
    public static func decodeUtf8Lossy(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }
}
