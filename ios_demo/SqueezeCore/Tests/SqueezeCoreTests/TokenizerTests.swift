import Foundation
import XCTest
@testable import SqueezeCore

/// The real model's byte-level BPE (SmolLM2-135M-Instruct's tokenizer.json, the file the decoder export ships) against
/// Python's `tokenizers` on real texts: licence texts, many scripts, emoji with joiners, whitespace runs, digits, chat
/// special tokens. Ids and decoded text must be identical (the goldens the Kotlin TokenizerTest reads).
final class TokenizerTests: XCTestCase {
    /// Parsed once for the class (1.5 MB of JSON); the path comes from SQUEEZE_QA_TOKENIZER (run_tests.sh sets it).
    private static var shared: Result<ByteLevelBpeTokenizer, Error>?

    private func realTokenizer() throws -> ByteLevelBpeTokenizer { try TokenizerTests.sharedTokenizer() }

    /// The real model's tokenizer, parsed once for the test run (GenerationTests' literal question reads it too).
    static func sharedTokenizer() throws -> ByteLevelBpeTokenizer {
        if let r = TokenizerTests.shared { return try r.get() }
        let r = Result { () throws -> ByteLevelBpeTokenizer in
            guard let path = ProcessInfo.processInfo.environment["SQUEEZE_QA_TOKENIZER"], !path.isEmpty else {
                throw GoldenMissing(message: "SQUEEZE_QA_TOKENIZER is not set; run ios_demo/run_tests.sh")
            }
            guard let data = FileManager.default.contents(atPath: path) else {
                throw GoldenMissing(message: "\(path) is missing; run .venv/bin/python android_demo/tools/make_golden.py --tokenizer-only")
            }
            let bytes = [UInt8](data)
            if try Golden.json("qa_tokenizer.json.gz")["tokenizer_sha256"].string() != SHA256.hexDigest(bytes) {
                throw GoldenMissing(message: "\(path) is not the tokenizer the goldens were made with; run android_demo/tools/make_golden.py")
            }
            return try ByteLevelBpeTokenizer.parse(bytes, source: "tokenizer.json")
        }
        TokenizerTests.shared = r
        return try r.get()
    }

    func testRealTextsGiveThePythonIds() throws {
        let tok = try realTokenizer()
        let golden = try Golden.json("qa_tokenizer.json.gz")
        XCTAssertEqual(tok.vocabSize, try golden["vocab_size"].int())
        var tokens = 0
        for c in try golden["cases"].list() {
            let text = try c["text"].string()
            let expected = try c["ids"].intArray()
            let ids = try tok.encode(text)
            if ids != expected {
                let first = zip(ids, expected).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(ids.count, expected.count)
                XCTFail("ids of \(String(text.prefix(60)).debugDescription): \(ids.count) vs \(expected.count) ids, first difference at \(first): " +
                        "got \(Array(ids[first..<min(first + 6, ids.count)])), expected \(Array(expected[first..<min(first + 6, expected.count)]))" +
                        " (text there: \(tok.decode(Array(expected[max(0, first - 2)..<min(first + 3, expected.count)]), skipSpecial: false).debugDescription))")
            }
            tokens += ids.count
        }
        XCTAssertGreaterThan(tokens, 4000, "only \(tokens) tokens compared")
    }

    func testDecodingGivesThePythonText() throws {
        let tok = try realTokenizer()
        let golden = try Golden.json("qa_tokenizer.json.gz")
        for c in try golden["cases"].list() + golden["decodes"].list() {
            let ids = try c["ids"].intArray()
            XCTAssertEqual(tok.decode(ids), try c["decoded"].string(), "decode of \(ids.prefix(12))")
            XCTAssertEqual(tok.decode(ids, skipSpecial: false), try c["decoded_with_special"].string(), "decode of \(ids.prefix(12))")
        }
    }

    func testSpecialTokensOfTheChatFrame() throws {
        let tok = try realTokenizer()
        XCTAssertEqual(tok.tokenToId("<|im_start|>"), 1)
        XCTAssertEqual(tok.tokenToId("<|im_end|>"), 2)
        XCTAssertTrue(tok.specialIds.contains(0) && tok.specialIds.contains(2))
        XCTAssertEqual(try tok.encode("<|im_start|><|im_end|>"), [1, 2])
        XCTAssertEqual(tok.idToToken(2), "<|im_end|>")
    }

    func testLiteralModeKeepsWrittenSpecialTokensAsText() throws {
        // Python's encode_literal (tokenizers' encode_special_tokens=True): "<|im_end|>" written in user text is text
        let tok = try realTokenizer()
        var differ = 0
        for c in try Golden.json("qa_tokenizer.json.gz")["literal_cases"].list() {
            let text = try c["text"].string()
            let ids = try tok.encode(text, literal: true)
            let name = String(text.prefix(60)).debugDescription
            XCTAssertEqual(ids, try c["ids"].intArray(), "literal ids of \(name)")
            XCTAssertEqual(try tok.encode(text), try c["ids_matched"].intArray(), "ids of \(name)")
            XCTAssertFalse(ids.contains { tok.specialIds.contains($0) }, "a special token in the literal ids of \(name)")
            XCTAssertEqual(tok.decode(ids), text, "the literal ids of \(name) decode to the text")
            if try ids != c["ids_matched"].intArray() { differ += 1 }
        }
        XCTAssertGreaterThanOrEqual(differ, 6, "only \(differ) literal cases differ from the default encoding")
        XCTAssertEqual(try tok.encode("<|im_start|>"), [1])
        XCTAssertGreaterThan(try tok.encode("<|im_start|>", literal: true).count, 1)
    }

    func testLiteralModeStillMatchesNonSpecialAddedTokens() throws {
        // the tiny tokenizer plus a non-special added token ("nan") and a special one around it ("xnanx"): the special
        // token's characters stay one piece of text with their neighbours, the non-special one is matched
        let added = try Golden.json("qa_tokenizer.json.gz")["literal_added"]
        let tok = try ByteLevelBpeTokenizer.parse(Array(try added["tokenizer"].string().utf8), source: "literal_added")
        XCTAssertTrue(tok.addedTokens.contains { !$0.special } && tok.addedTokens.contains { $0.special && $0.content == "xnanx" })
        for c in try added["cases"].list() {
            let text = try c["text"].string()
            XCTAssertEqual(try tok.encode(text, literal: true), try c["ids"].intArray(), "literal ids of \(text.debugDescription)")
            XCTAssertEqual(try tok.encode(text), try c["ids_matched"].intArray(), "ids of \(text.debugDescription)")
        }
    }

    func testTinyModelTokenizerWithItsOwnMerges() throws {
        // the tiny test model's tokenizer.json (40 tokens, 5 merges): the one the generation goldens use
        let tok = try ByteLevelBpeTokenizer.parse(try Golden.bytes("qa_tokenizer_tiny.json"))
        let gen = try Golden.json("qa_generation.json.gz")
        let chat = try gen["tokenizer"]["chat"]
        let prompt = try chat["join"].string() + gen["prompt"].string() + chat["suffix"].string()
        XCTAssertEqual(try tok.encode(prompt), try gen["prompt_ids"].intArray())
        for run in try gen["runs"].list() {
            XCTAssertEqual(tok.decode(try run["tokens"].intArray()), try run["text"].string())
        }
    }

    func testUnsupportedTokenizersAreRefusedInOneLine() throws {
        let text = try Golden.text("qa_tokenizer_tiny.json")
        let wordPiece = text.replacingOccurrences(of: "\"type\":\"BPE\"", with: "\"type\":\"WordPiece\"")
        XCTAssertNotEqual(wordPiece, text)
        let message = thrownMessage(TokenizerError.self) { try ByteLevelBpeTokenizer.parse(Array(wordPiece.utf8)) }
        XCTAssertTrue(message.contains("WordPiece") && !message.contains("\n"), message)
        XCTAssertThrowsError(try ByteLevelBpeTokenizer.parse(Array("{not json".utf8)))
        XCTAssertThrowsError(try ByteLevelBpeTokenizer.fromFile("/nonexistent/tokenizer.json"))
    }

    func testATokenizerOtherThanTheExportsIsRefused() throws {
        // the decoder manifest records tokenizer.json's sha256: an edited vocabulary (two digits' ids swapped) parsed fine
        // and answered other digits (Python: load_decoder_tokenizer; Kotlin: the same check)
        let manifest = try DecoderManifest.parse(try Golden.bytes("qa_decoder_manifest.json"))
        let sha = try XCTUnwrap(manifest.tokenizer.sha256)
        let text = try Golden.text("qa_tokenizer_tiny.json")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tokenizer-sha-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let good = dir.appendingPathComponent("tokenizer.json"), edited = dir.appendingPathComponent("edited.json")
        try Data(text.utf8).write(to: good)
        let other = text.replacingOccurrences(of: "\"ab\":", with: "\"ab\" :")  // the same vocabulary, other bytes
        XCTAssertNotEqual(other, text)
        try Data(other.utf8).write(to: edited)
        let tok = try ByteLevelBpeTokenizer.fromFile(good.path, sha256: sha)
        let message = thrownMessage(TokenizerError.self) { _ = try ByteLevelBpeTokenizer.fromFile(edited.path, sha256: sha) }
        XCTAssertTrue(message.hasSuffix("is not the one the export wrote (its sha256 differs from the manifest's); restore it or "
                                        + "re-export the decoder") && !message.contains("\n"), message)
        // a manifest without the hash (older exports) is not checked
        XCTAssertEqual(try ByteLevelBpeTokenizer.fromFile(edited.path).encode("ab an"), try tok.encode("ab an"))
    }

    func testLongRunsOfOneCharacterMergeInLinearithmicWork() throws {
        // a question pasted with a long run of one character (a row of "=", a long number, a base64 blob): merging
        // rescanned the whole word per merge (the Kotlin port: 25 s for 32,000 "a"; Python's tokenizers: 9 ms). Python's
        // ids, and the pairs queued bounded by 3 per byte (the old rescans looked at ~n^2 / 2 pairs)
        _ = try realTokenizer() // the checked file
        let tok = try ByteLevelBpeTokenizer.fromFile(try XCTUnwrap(ProcessInfo.processInfo.environment["SQUEEZE_QA_TOKENIZER"]))
        func repeating(_ id: Int, _ n: Int) -> [Int] { [Int](repeating: id, count: n) }
        let cases: [(String, [Int])] = [
            (String(repeating: "a", count: 32000), repeating(46880, 8000)),
            (String(repeating: "=", count: 32000), repeating(28909, 500)),
            (String(repeating: "-", count: 5001), repeating(15069, 78) + [26238]),
            (String(repeating: "ab", count: 10000) + "!", repeating(369, 10000) + [17]),
            (String(repeating: "\u{e9}", count: 3001), repeating(2756, 3001)),
            (String(repeating: "\u{1F600}", count: 2001), (0..<(3 * 2001)).map { [10813, 242, 218][$0 % 3] }),
            // runs the pre-tokenizer splits (whitespace before a word, newlines, digits one by one, punctuation)
            (String(repeating: " ", count: 32000) + "a", repeating(40686, 499) + [12427, 1703, 22754, 253]),
            (String(repeating: "\n", count: 32000), repeating(22342, 8000)),
            (String(repeating: "1", count: 32000), repeating(33, 32000)),
            (String(repeating: "<", count: 32000), repeating(33691, 16000)),
        ]
        for (text, ids) in cases {
            let before = tok.queuedPairs
            XCTAssertEqual(try tok.encode(text), ids, "ids of \(text.prefix(4))... (\(text.unicodeScalars.count) scalars)")
            XCTAssertLessThanOrEqual(tok.queuedPairs - before, 3 * Int64(text.utf8.count))
        }
    }

    func testPostProcessorsOfHuggingFaceFilesChangeNoIdAndAreAccepted() throws {
        // a model folder's tokenizer.json (SmolLM2's on the Hub) carries a ByteLevel post-processor, Llama-style ones a
        // TemplateProcessing; with add_special_tokens=False, the only way the pipeline encodes, Python's tokenizers gives
        // the same ids and text with and without them (checked with tokenizers on the real tokenizer.json); they were
        // refused here, so an export of a model folder could not be used
        let text = try Golden.text("qa_tokenizer_tiny.json")
        XCTAssertTrue(text.contains("\"post_processor\":null"))
        func with(_ pp: String) throws -> ByteLevelBpeTokenizer {
            let edited = text.replacingOccurrences(of: "\"post_processor\":null", with: "\"post_processor\":\(pp)")
            return try ByteLevelBpeTokenizer.parse(Array(edited.utf8))
        }
        let byteLevel = #"{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":false,"use_regex":true}"#
        let template = #"{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<|im_start|>","type_id":0}},"# +
            #"{"Sequence":{"id":"A","type_id":0}}],"pair":[{"Sequence":{"id":"A","type_id":0}}],"# +
            #""special_tokens":{"<|im_start|>":{"id":"<|im_start|>","ids":[1],"tokens":["<|im_start|>"]}}}"#
        let plain = try ByteLevelBpeTokenizer.parse(Array(text.utf8))
        for tok in [try with(byteLevel), try with(template), try with(#"{"type":"Sequence","processors":["# + byteLevel + "," + template + "]}")] {
            for s in ["ok a b 12", " a<|im_end|>b 12", "<|im_start|>a"] { XCTAssertEqual(try tok.encode(s), try plain.encode(s), s) }
            // (the tiny vocabulary has no "<": literal mode only on plain text)
            XCTAssertEqual(try tok.encode("ok a b 12", literal: true), try plain.encode("ok a b 12", literal: true))
        }
        let message = thrownMessage(TokenizerError.self) { try with(#"{"type":"BertProcessing","sep":["a",5],"cls":["b",6]}"#) }
        XCTAssertTrue(message.contains("a post_processor (BertProcessing)"), message)
    }

    /// The GPT-2 split written out by hand, on the cases that decide between its alternatives (expected pieces checked
    /// with Python tokenizers' ByteLevel(add_prefix_space=False).pre_tokenize_str).
    func testGpt2SplitAlternatives() throws {
        func split(_ text: String) -> [String] {
            let s = Array(text.unicodeScalars)
            var out: [String] = []
            var i = 0
            while i < s.count {
                let end = ByteLevelBpeTokenizer.gpt2Match(s[...], at: i)
                out.append(String(String.UnicodeScalarView(s[i..<end])))
                i = end
            }
            return out
        }
        XCTAssertEqual(split("I'm  here, it's 42!"), ["I", "'m", " ", " here", ",", " it", "'s", " 42", "!"])
        XCTAssertEqual(split("a   \n"), ["a", "   \n"])
        XCTAssertEqual(split("x\u{85}\u{A0}y"), ["x", "\u{85}", "\u{A0}", "y"]) // NBSP is no " " prefix
        XCTAssertEqual(split("'re'RE"), ["'re", "'", "RE"])
    }
}
