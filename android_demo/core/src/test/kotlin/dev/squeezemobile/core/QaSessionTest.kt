package dev.squeezemobile.core

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import java.io.File
import java.io.RandomAccessFile
import java.util.concurrent.Executor

/**
 * The Q&A screen's logic (QaSession, DecoderDirectory) on a real export directory layout: the tiny model's decoder
 * manifest, tokenizer and context pack on disk, the runtime replaced by the replay of the exported graph's outputs
 * (GenerationTest). Work runs on the worker executor, every listener call on the UI executor, in order.
 */
class QaSessionTest {
    @TempDir
    lateinit var tmp: File

    private val gen = Golden.json("qa_generation.json.gz")
    private val manifest = DecoderManifest.parse(Golden.bytes("qa_decoder_manifest.json"))
    private val full = manifest.pick("onnx", "full")
    private val fullGreedy = gen["runs"].list().first { it["kind"].string() == "greedy" && it["attention"].string() == "full" }

    /** An export directory as `squeeze export decoder` writes it (artifact files of the manifest's sizes, sparse). */
    private fun exportDir(name: String, manifestText: String = Golden.text("qa_decoder_manifest.json"), withFiles: Boolean = true): File {
        val dir = File(tmp, name).apply { mkdirs() }
        File(dir, "manifest.json").writeText(manifestText)
        File(dir, "tokenizer.json").writeBytes(Golden.bytes("qa_tokenizer_tiny.json"))
        if (withFiles) for (a in manifest.artifacts) RandomAccessFile(File(dir, a.file), "rw").use { it.setLength(a.bytes!!) }
        return dir
    }

    private fun packFile(name: String = "doc.pack") = File(tmp, name).apply { writeBytes(Golden.bytes("qa_pack.safetensors")) }

    /** Replays the recorded full-attention greedy run, from the start at every prefill. */
    private inner class Replay : DecoderRuntime {
        override val name = "replay runtime"
        var closed = false
        private var current: DecoderRuntime? = null

        override fun run(method: String, inputs: Map<String, DecoderTensor>): Map<String, DecoderTensor> {
            if (method == "prefill") current = GenerationTest().ReplayRuntime(fullGreedy)
            return current!!.run(method, inputs)
        }

        override fun close() { closed = true }
    }

    private class Events : QaListener {
        val log = ArrayList<String>()
        val text = StringBuilder()
        var answer: Answer? = null
        var stats: String? = null
        var onUi = true

        override fun onStatus(text: String) { check(); log.add("status: $text") }
        override fun onText(delta: String) { check(); log.add("text"); text.append(delta) }
        override fun onAnswer(answer: Answer, stats: String) { check(); log.add("answer"); this.answer = answer; this.stats = stats }
        override fun onError(message: String) { check(); log.add("error: $message") }
        private fun check() { onUi = onUi && Thread.currentThread().name == UI_THREAD }
    }

    /** The "main thread": runs posted work at once, under a recognisable thread name. */
    private val ui = Executor { r ->
        val t = Thread.currentThread()
        val old = t.name
        t.name = UI_THREAD
        try { r.run() } finally { t.name = old }
    }
    private val direct = Executor { it.run() }

    @Test
    fun asksStreamsAndReportsTheNumbers() {
        val dir = exportDir("tiny")
        val events = Events()
        val opened = ArrayList<Replay>()
        val session = QaSession(direct, ui, { a, f -> assertEquals(full.file, a.file); assertEquals(File(dir, full.file), f); Replay().also { opened += it } }, events)
        val selection = QaSelection(dir, full.file, packFile())
        assertTrue(session.ask(selection, gen["prompt"].string(), 12))
        assertEquals(null, events.log.firstOrNull { it.startsWith("error") }, events.log.toString())
        val answer = events.answer!!
        assertEquals(fullGreedy["text"].string(), answer.text)
        assertEquals(answer.text, events.text.toString())
        assertEquals("answer", events.log.last())
        assertEquals(listOf("status: loading ${full.file}…", "status: reading doc.pack…", "status: generating with replay runtime…"),
            events.log.filter { it.startsWith("status") })
        assertTrue(events.onUi, "a listener call ran off the UI executor")
        assertTrue(events.stats!!.startsWith("replay runtime | prefill "), events.stats)
        assertTrue(events.stats!!.contains("(${gen["prompt_ids"].intArray().size} prompt + ${answer.contextTokens} context tokens)"), events.stats)
        assertTrue(events.stats!!.contains("tok/s (12 tokens)"), events.stats)
        assertFalse(session.busy)
        // the same selection again: nothing reloads; another pack: re-attached, same runtime
        events.log.clear()
        assertTrue(session.ask(selection, gen["prompt"].string(), 12))
        assertEquals(listOf("status: generating with replay runtime…"), events.log.filter { it.startsWith("status") })
        events.log.clear()
        assertTrue(session.ask(selection.copy(pack = packFile("other.pack")), gen["prompt"].string(), 12))
        assertEquals(listOf("status: reading other.pack…", "status: generating with replay runtime…"), events.log.filter { it.startsWith("status") })
        assertEquals(1, opened.size)
        assertEquals(fullGreedy["text"].string(), events.answer!!.text)
        session.close()
        assertTrue(opened[0].closed)
    }

    @Test
    fun oneAskAtATime() {
        val dir = exportDir("tiny")
        val queued = ArrayList<Runnable>()
        val events = Events()
        val session = QaSession({ queued.add(it) }, ui, { _, _ -> Replay() }, events)
        val selection = QaSelection(dir, full.file, packFile())
        assertTrue(session.ask(selection, gen["prompt"].string(), 12))
        assertTrue(session.busy)
        assertFalse(session.ask(selection, "again", 12))
        assertEquals(1, queued.size)
        queued.removeAt(0).run()
        assertFalse(session.busy)
        assertEquals("answer", events.log.last())
    }

    @Test
    fun userErrorsAreOneLine() {
        val events = Events()
        val session = QaSession(direct, ui, { _, _ -> Replay() }, events)
        val pack = packFile()
        fun lastError(selection: QaSelection): String {
            events.log.clear()
            session.ask(selection, "ab", 4)
            return events.log.last().also { assertTrue(it.startsWith("error: "), events.log.toString()) }
        }
        // no export there
        assertTrue(lastError(QaSelection(File(tmp, "nothing").apply { mkdirs() }, full.file, pack)).contains("has no manifest.json"))
        // an artifact the manifest does not list, a missing or truncated file
        val dir = exportDir("tiny")
        assertTrue(lastError(QaSelection(dir, "other.onnx", pack)).contains("has no artifact other.onnx"))
        val bare = exportDir("bare", withFiles = false)
        val missing = lastError(QaSelection(bare, full.file, pack))
        assertTrue(missing.contains("is missing; copy the whole export directory"), missing)
        RandomAccessFile(File(bare, full.file), "rw").use { it.setLength(7) }
        assertTrue(lastError(QaSelection(bare, full.file, pack)).contains("has 7 bytes, the manifest says ${full.bytes}"))
        // a pack of other weights than the export's; a damaged pack
        val other = exportDir("other", Golden.text("qa_decoder_manifest.json").replace(manifest.weightsSha256!!, "0".repeat(64)))
        assertTrue(lastError(QaSelection(other, full.file, pack)).contains("built for other model weights"))
        val damaged = File(tmp, "damaged.pack").apply { writeBytes(Golden.bytes("qa_pack.safetensors").also { it[it.size - 3] = (it[it.size - 3] + 1).toByte() }) }
        assertTrue(lastError(QaSelection(dir, full.file, damaged)).contains("modified after it was built"))
        // a runtime failure (not a user error) names its type
        val failing = QaSession(direct, ui, { _, _ -> throw IllegalStateException("no such delegate") }, events)
        events.log.clear()
        failing.ask(QaSelection(dir, full.file, pack), "ab", 4)
        assertEquals("error: IllegalStateException: no such delegate", events.log.last())
        // running out of memory (an 8k pack's float32 context inputs) was reported as "the question was not answered"
        var opens = 0
        val hungry = QaSession(direct, ui, { _, _ -> opens++; if (opens == 1) throw OutOfMemoryError("Java heap space") else Replay() }, events)
        events.log.clear()
        val question = gen["prompt"].string()  // the replay's recorded question
        hungry.ask(QaSelection(dir, full.file, pack), question, 12)
        assertEquals("error: ${QaSession.OUT_OF_MEMORY}", events.log.last())
        hungry.ask(QaSelection(dir, full.file, pack), question, 12)  // loads again, answers
        assertEquals("answer", events.log.last())
        assertEquals(2, opens)
        assertTrue(events.onUi)
    }

    @Test
    fun listsExportsPacksAndLabelsArtifacts() {
        val root = File(tmp, "decoders").apply { mkdirs() }
        exportDir("decoders/b")
        exportDir("decoders/a")
        File(root, "c").mkdirs()                                                     // no manifest
        File(root, "d").apply { mkdirs() }.resolve("manifest.json").writeText(Golden.text("manifest.json")) // a video export
        assertEquals(listOf("a", "b"), DecoderDirectory.list(root).map { it.name })
        // exports this version cannot use are listed too, and opening one says why in one line (they were left out of
        // the list without a word: "nothing found"; the iOS app lists them by their schema as well)
        val text = Golden.text("qa_decoder_manifest.json")
        exportDir("decoders/old", text.replace(DecoderManifest.SCHEMA, "squeeze-mobile/decoder-manifest/1"))
        exportDir("decoders/question", text.replaceFirst("\"decode_selection\": \"step\"", "\"decode_selection\": \"question\""))
        File(root, "e").apply { mkdirs() }.resolve("manifest.json").writeText("{not json")
        assertEquals(listOf("a", "b", "old", "question"), DecoderDirectory.list(root).map { it.name })
        fun opened(name: String) = assertThrows(DecoderException::class.java) { DecoderDirectory(File(root, name)) }.message!!
        assertTrue(opened("old").contains("written by another version of squeeze-mobile (schema 'squeeze-mobile/decoder-manifest/1'"))
        assertTrue(opened("question").startsWith("decoder.decode_selection: this app runs per-step selection only"))
        val packs = File(tmp, "packs").apply { mkdirs() }
        for (n in listOf("z.pack", "a.pack", "notes.txt", "m.pack.safetensors", "w.safetensors")) File(packs, n).writeText("x")
        // `squeeze context build --out manual.pack.safetensors` (the CLI's example) is a pack too; the iOS app lists both
        assertEquals(listOf("a.pack", "m.pack.safetensors", "z.pack"), DecoderDirectory.listPacks(packs).map { it.name })
        assertEquals(emptyList<File>(), DecoderDirectory.listPacks(File(tmp, "absent")))
        val dir = DecoderDirectory(File(root, "a"))
        assertEquals(listOf("squeezed", "full"), dir.usableArtifacts(setOf("onnx")).map { it.contract.attention })
        assertEquals(emptyList<DecoderArtifact>(), dir.usableArtifacts(setOf("tflite", "pte")))
        val squeezed = manifest.pick("onnx", "squeezed")
        assertEquals("onnx: squeezed (KV budget 0.3), in-graph lookup · ${squeezed.file}", DecoderDirectory.label(squeezed))
        assertEquals("onnx: full · ${full.file}", DecoderDirectory.label(full))
    }

    /** The golden manifest with its two ONNX artifacts recorded as .pte files of the given delegates (squeezed, full). */
    private fun pteManifest(squeezed: String, fullDelegate: String): String {
        val text = Golden.text("qa_decoder_manifest.json")
        fun pte(file: String, delegate: String) = "\"format\": \"pte\",\n      \"pte_backend\": \"$delegate\",\n      \"file\": \"$file\","
        val squeezedFile = manifest.pick("onnx", "squeezed").file
        return text.replaceFirst("\"format\": \"onnx\",\n      \"file\": \"$squeezedFile\",", pte(squeezedFile, squeezed))
            .replaceFirst("\"format\": \"onnx\",\n      \"file\": \"${full.file}\",", pte(full.file, fullDelegate))
            .also { check(it.split("\"pte_backend\"").size == 3) }
    }

    @Test
    fun aPteDelegatedToCoreMlIsNeitherListedNorLoaded() {
        // `squeeze export decoder --formats pte --pte-backend coreml`: ExecuTorch runs it on Apple devices only (Python:
        // cannot_run_here off Darwin, and pick_artifact tries the others first); an Android runtime failed on it with
        // whatever ExecuTorch said
        val m = DecoderManifest.parse(pteManifest(squeezed = "coreml", fullDelegate = "xnnpack"))
        assertEquals(listOf("coreml", "xnnpack"), m.artifacts.map { it.pteBackend })
        assertEquals(listOf(true, false), m.artifacts.map { it.appleOnly })
        assertEquals(full.file, m.pick("pte").file)
        assertEquals(m.artifacts[0].file, m.pick("pte", "squeezed").file)   // the only one asked for: still found
        assertEquals(null, manifest.artifacts[0].pteBackend)
        val dir = exportDir("pte", pteManifest(squeezed = "coreml", fullDelegate = "xnnpack"))
        assertEquals(listOf(full.file), DecoderDirectory(dir).usableArtifacts(setOf("pte", "onnx")).map { it.file })
        val events = Events()
        QaSession(direct, ui, { _, _ -> Replay() }, events).ask(QaSelection(dir, m.artifacts[0].file, packFile()), "ab", 4)
        assertEquals("error: ${m.artifacts[0].file} is a .pte for ExecuTorch's Core ML delegate (export --pte-backend coreml), " +
            "which runs on Apple devices only; export --formats pte with the default --pte-backend xnnpack for Android", events.log.last())
    }

    @Test
    fun aTokenizerOtherThanTheExportsIsRefused() {
        // the manifest records tokenizer.json's sha256: an edited vocabulary (two digits' ids swapped) parsed fine and
        // answered other digits (Python: load_decoder_tokenizer); a manifest without one (older exports) is not checked
        assertEquals(64, manifest.tokenizer.sha256?.length)
        val dir = exportDir("edited")
        val good = DecoderDirectory(dir).tokenizer()
        val text = Golden.text("qa_tokenizer_tiny.json")
        val edited = text.replaceFirst("\"ab\":", "\"ab\" :")   // the same vocabulary, other bytes: still not the export's
        check(edited != text)
        File(dir, "tokenizer.json").writeText(edited)
        val e = assertThrows(TokenizerException::class.java) { DecoderDirectory(dir).tokenizer() }
        assertTrue(e.message!!.endsWith("is not the one the export wrote (its sha256 differs from the manifest's); restore it " +
            "or re-export the decoder") && !e.message!!.contains("\n"), e.message)
        val old = exportDir("old", Golden.text("qa_decoder_manifest.json").replace(Regex(",\\s*\"sha256\": \"${manifest.tokenizer.sha256}\""), ""))
        assertEquals(null, DecoderDirectory(old).manifest.tokenizer.sha256)
        File(old, "tokenizer.json").writeText(edited)
        assertEquals(good.encode("ab an").toList(), DecoderDirectory(old).tokenizer().encode("ab an").toList())
    }

    @Test
    fun aManifestNamingFilesOutsideItsDirectoryIsRefused() {
        // the app opens File(dir, name): "../x" or an absolute path would reach any file the app can read
        val text = Golden.text("qa_decoder_manifest.json")
        fun refused(t: String) = assertThrows(DecoderException::class.java) { DecoderManifest.parse(t) }.message!!
        assertEquals("manifest.artifacts[1].file: \"../../databases/x.onnx\" is not a plain file name inside the export " +
            "directory; re-export the decoder", refused(text.replace("\"file\": \"${full.file}\"", "\"file\": \"../../databases/x.onnx\"")))
        assertTrue(refused(text.replace("\"file\": \"tokenizer.json\"", "\"file\": \"/sdcard/tokenizer.json\""))
            .startsWith("manifest.tokenizer.file: \"/sdcard/tokenizer.json\" is not a plain file name"))
        assertTrue(refused(text.replace("\"file\": \"tokenizer.json\"", "\"file\": \".tokenizer.json\"")).contains("not a plain file name"))
    }

    companion object {
        const val UI_THREAD = "qa-ui"
    }
}

class NativeTensorCacheTest {
    @Test
    fun theSameTensorObjectIsMadeOnceAndReplacedOnesAreReleased() {
        val released = ArrayList<String>()
        var made = 0
        val cache = NativeTensorCache<String> { released.add(it) }
        val context = DecoderTensor.Float32(FloatArray(4), intArrayOf(2, 2))
        val make = { t: DecoderTensor -> "native${made++}:${t.elementCount}" }
        assertEquals("native0:4", cache.get("centroids_0", context, make))
        assertEquals("native0:4", cache.get("centroids_0", context, make))
        // equal values in another object: made again (identity, not content), the old one released
        assertEquals("native1:4", cache.get("centroids_0", DecoderTensor.Float32(FloatArray(4), intArrayOf(2, 2)), make))
        assertEquals(listOf("native0:4"), released)
        assertEquals("native2:1", cache.get("n_tokens", DecoderTensor.Int64(longArrayOf(3), intArrayOf(1)), make))
        assertEquals(2, cache.size)
        cache.close()
        assertEquals(listOf("native0:4", "native1:4", "native2:1"), released)
        assertEquals(0, cache.size)
    }

    @Test
    fun oneInputInTwoShapesKeepsBothNativeTensors() {
        // a .pte's prefill_exact takes the clustered tables as [Hkv, Nc, D] views, decode the flat [Hkv * Nc, D] tables
        // (GenerationLoop.methodInputs): switching between the methods must not make either again
        val released = ArrayList<String>()
        var made = 0
        val cache = NativeTensorCache<String> { released.add(it) }
        val make = { t: DecoderTensor -> "native${made++}:${t.shape.joinToString("x")}" }
        val flat = DecoderTensor.Float32(FloatArray(12), intArrayOf(6, 2))
        val perHead = DecoderTensor.Float32(flat.data, intArrayOf(2, 3, 2))
        repeat(3) {
            assertEquals("native0:6x2", cache.get("clustered_keys_0", flat, make))        // decode
            assertEquals("native1:2x3x2", cache.get("clustered_keys_0", perHead, make))   // prefill_exact
        }
        assertEquals(2, made)
        assertEquals(2, cache.size)
        assertEquals(emptyList<String>(), released)
        // a new object in one shape replaces that shape's entry only
        assertEquals("native2:6x2", cache.get("clustered_keys_0", DecoderTensor.Float32(FloatArray(12), intArrayOf(6, 2)), make))
        assertEquals(listOf("native0:6x2"), released)
        assertEquals("native1:2x3x2", cache.get("clustered_keys_0", perHead, make))
        cache.close()
        assertEquals(listOf("native0:6x2", "native2:6x2", "native1:2x3x2").sorted(), released.sorted())
    }
}

class TensorBytesTest {
    @Test
    fun packsInTheRuntimesDtypeAndReadsFloatOutputs() {
        val ids = DecoderTensor.Int64(longArrayOf(1, -2, 300), intArrayOf(3))
        val as32 = TensorBytes.pack(ids, "int32", "tokens")
        assertEquals(12, as32.capacity())
        assertEquals(java.nio.ByteOrder.nativeOrder(), as32.order())
        assertEquals(listOf(1, -2, 300), List(3) { as32.getInt(4 * it) })
        val as64 = TensorBytes.pack(ids, "int64", "tokens")
        assertEquals(listOf(1L, -2L, 300L), List(3) { as64.getLong(8 * it) })
        val f = DecoderTensor.Float32(floatArrayOf(0.5f, -0f, Float.NaN, 3e38f), intArrayOf(2, 2))
        val fb = TensorBytes.pack(f, "float32")
        val back = TensorBytes.floats(fb, intArrayOf(2, 2))
        assertEquals(f.data.map { it.toRawBits() }, back.data.map { it.toRawBits() })
        assertEquals(listOf(2, 2), back.shape.toList())
        val big = DecoderTensor.Int64(longArrayOf(1L shl 40), intArrayOf(1))
        assertTrue(org.junit.jupiter.api.Assertions.assertThrows(DecoderException::class.java) { TensorBytes.pack(big, "int32", "cache_len") }
            .message!!.contains("cache_len holds 1099511627776"))
        assertTrue(org.junit.jupiter.api.Assertions.assertThrows(DecoderException::class.java) { TensorBytes.pack(f, "int32", "hidden") }
            .message!!.contains("hidden is float32 but the runtime declares int32"))
        assertTrue(org.junit.jupiter.api.Assertions.assertThrows(DecoderException::class.java) { TensorBytes.pack(f, "float16", "hidden") }
            .message!!.contains("float16"))
        assertTrue(org.junit.jupiter.api.Assertions.assertThrows(DecoderException::class.java) { TensorBytes.floats(fb, intArrayOf(3, 2)) }
            .message!!.contains("needs 24 bytes"))
    }
}
