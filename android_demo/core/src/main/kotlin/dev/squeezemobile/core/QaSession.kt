package dev.squeezemobile.core

import java.io.File
import java.util.concurrent.Executor
import java.util.concurrent.atomic.AtomicBoolean

/**
 * A `squeeze export decoder --out DIR` directory on disk: manifest.json, tokenizer.json and the artifacts
 * (decoder_session.DecoderSession's file handling). The app lists these under its files directory.
 */
class DecoderDirectory(val dir: File) {
    val manifest: DecoderManifest = run {
        val file = File(dir, MANIFEST)
        if (!file.isFile) throw DecoderException("$dir has no $MANIFEST; export a decoder with `squeeze export decoder --out DIR` and copy DIR there")
        DecoderManifest.parse(file.readBytes())
    }

    val name: String get() = dir.name

    /**
     * The artifact's file; refuses a missing or truncated one (its size is not the manifest's) and a .pte delegated to
     * Core ML, which ExecuTorch runs on Apple devices only.
     */
    fun file(artifact: DecoderArtifact): File {
        if (artifact.appleOnly) {
            throw DecoderException("${artifact.file} is a .pte for ExecuTorch's Core ML delegate (export --pte-backend coreml), " +
                "which runs on Apple devices only; export --formats pte with the default --pte-backend xnnpack for Android")
        }
        val f = File(dir, artifact.file)
        if (!f.isFile) throw DecoderException("the artifact $f is missing; copy the whole export directory")
        if (artifact.bytes != null && f.length() != artifact.bytes) {
            throw DecoderException("the artifact $f has ${f.length()} bytes, the manifest says ${artifact.bytes}; copy it again")
        }
        return f
    }

    /**
     * The artifacts whose file is present and whose format one of [formats] runs, in manifest order (not a .pte
     * delegated to Core ML: Apple devices only).
     */
    fun usableArtifacts(formats: Collection<String>): List<DecoderArtifact> =
        manifest.artifacts.filter { it.format in formats && !it.appleOnly && File(dir, it.file).isFile }

    fun tokenizer(): ByteLevelBpeTokenizer {
        val f = File(dir, manifest.tokenizer.file)
        if (!f.isFile) throw DecoderException("the tokenizer $f is missing; re-export the decoder or copy the whole directory")
        return ByteLevelBpeTokenizer.fromFile(f, manifest.tokenizer.sha256)
    }

    companion object {
        const val MANIFEST = "manifest.json"

        /**
         * [root] itself or its subdirectories whose manifest.json says it is a decoder export (its schema), by name: also
         * one this version cannot use (another schema version, a contract it refuses), so that opening it says why in
         * one line instead of the export silently missing from the list (the iOS app's ModelLocations.scan does the same).
         */
        fun list(root: File): List<File> {
            val dirs = listOf(root) + (root.listFiles { f -> f.isDirectory }?.sortedBy { it.name } ?: emptyList())
            return dirs.filter { isDecoderExport(File(it, MANIFEST)) }
        }

        private fun isDecoderExport(manifest: File): Boolean = manifest.isFile && try {
            val schema = JsonPath.of(Json.parse(manifest.readBytes())).opt("schema")?.value
            schema is String && schema.startsWith(DecoderManifest.SCHEMA_PREFIX)
        } catch (e: JsonException) {
            false
        } catch (e: java.io.IOException) {
            false
        }

        /**
         * Context packs in [root], by name: `squeeze context build --out NAME.pack.safetensors` (the CLI's own example)
         * or NAME.pack.
         */
        fun listPacks(root: File): List<File> =
            root.listFiles { f -> f.isFile && isPackName(f.name) }?.sortedBy { it.name } ?: emptyList()

        /** A context pack's file name: NAME.pack or NAME.pack.safetensors (the same file, safetensors inside). */
        fun isPackName(name: String): Boolean = name.endsWith(".pack") || name.endsWith(".pack.safetensors")

        /** One line naming an artifact on screen: format, attention, lookup plan, weights file. */
        fun label(artifact: DecoderArtifact): String {
            val c = artifact.contract
            val attention = if (c.attention == "squeezed") "squeezed (KV budget ${c.kvBudget})" else "full"
            val plan = if (c.attention == "squeezed") ", ${c.lookupPlan} lookup" else ""
            return "${artifact.format}: $attention$plan · ${artifact.file}"
        }
    }
}

/** Opens the runtime of one artifact (ONNX Runtime, LiteRT, ExecuTorch: app/ provides it per format). */
fun interface DecoderRuntimeFactory {
    /** [file]: the artifact's file, checked to exist with the manifest's size. */
    fun open(artifact: DecoderArtifact, file: File): DecoderRuntime
}

/** What the Q&A screen picked: an export directory, one of its artifacts (by file name) and a context pack. */
data class QaSelection(val directory: File, val artifactFile: String, val pack: File)

/** Called on the UI executor, in the order things happen. */
interface QaListener {
    /** Loading or generating: a short status line. */
    fun onStatus(text: String)

    /** The next piece of the answer (never a split multi-byte character). */
    fun onText(delta: String)

    fun onAnswer(answer: Answer, stats: String)

    /** One line for the user: what went wrong and what to do. */
    fun onError(message: String)
}

/**
 * The Q&A screen's logic without the screen: loads the selected artifact in its runtime, the tokenizer and the pack
 * (DocumentQa.attach) and generates on [worker] (one thread: it owns the runtime); every listener call goes through
 * [ui] (the main thread on Android). Loading happens again only for what changed since the last question.
 */
class QaSession(
    private val worker: Executor,
    private val ui: Executor,
    private val runtimes: DecoderRuntimeFactory,
    private val listener: QaListener,
) : AutoCloseable {
    private val cancel = AtomicBoolean(false)
    private val running = AtomicBoolean(false)
    // worker-thread state
    private var loadedRuntime: Pair<File, String>? = null
    private var loadedPack: File? = null
    private var directory: DecoderDirectory? = null
    private var artifact: DecoderArtifact? = null
    private var runtime: DecoderRuntime? = null
    private var tokenizer: ByteLevelBpeTokenizer? = null
    private var qa: DocumentQa? = null

    /** Whether a question is being answered (the screen disables Ask meanwhile). */
    val busy: Boolean get() = running.get()

    /**
     * Answer [question] with the [selection] (loading what changed), at most [maxNewTokens] new tokens (fewer when
     * the exported cache has less room for this question). Returns false (and does nothing) while busy.
     */
    fun ask(selection: QaSelection, question: String, maxNewTokens: Int): Boolean {
        if (!running.compareAndSet(false, true)) return false
        cancel.set(false)
        worker.execute {
            var last: () -> Unit = { listener.onError("the question was not answered") }
            try {
                val qa = load(selection)
                val ids = qa.promptIds(question)
                val room = qa.contract.shapes.maxPrompt + qa.contract.shapes.maxNew - ids.size
                post { listener.onStatus("generating with ${qa.runtime.name}…") }
                val answer = qa.generate(question, maxNewTokens = maxOf(1, minOf(maxNewTokens, room)),
                    cancelled = { cancel.get() }) { text -> post { listener.onText(text) } }
                val line = stats(answer)
                last = { listener.onAnswer(answer, line) }
            } catch (e: Exception) {
                val message = describe(e)
                last = { listener.onError(message) }
            } catch (e: OutOfMemoryError) {
                // the pack's context inputs and the cache are float32 copies in the Java heap: an 8k-token pack of a
                // 30-layer model needs hundreds of MB; say so instead of "the question was not answered"
                unload()
                last = { listener.onError(OUT_OF_MEMORY) }
            } finally {
                running.set(false) // before the last callback: the screen may ask again from it
                post(last)
            }
        }
        return true
    }

    /** Stop after the current token (the answer so far is reported as cancelled). */
    fun stop() = cancel.set(true)

    private fun post(block: () -> Unit) = ui.execute(block)

    /** On the worker: (re)open the runtime when the directory or artifact changed, re-attach when the pack did. */
    private fun load(selection: QaSelection): DocumentQa {
        val key = selection.directory to selection.artifactFile
        if (key != loadedRuntime) {
            closeRuntime()
            val dir = DecoderDirectory(selection.directory)
            val art = dir.manifest.artifacts.firstOrNull { it.file == selection.artifactFile }
                ?: throw DecoderException("${selection.directory} has no artifact ${selection.artifactFile} in its manifest; pick another")
            post { listener.onStatus("loading ${art.file}…") }
            val file = dir.file(art)
            val tok = dir.tokenizer()
            runtime = runtimes.open(art, file)
            directory = dir
            artifact = art
            tokenizer = tok
            loadedRuntime = key
        }
        if (selection.pack != loadedPack || qa == null) {
            qa = null
            loadedPack = null
            post { listener.onStatus("reading ${selection.pack.name}…") }
            val pack = ContextPack.read(selection.pack)
            qa = DocumentQa.attach(directory!!.manifest, artifact!!, runtime!!, tokenizer!!, pack)
            loadedPack = selection.pack
        }
        return qa!!
    }

    /** Drops everything loaded (after running out of memory: the next question loads again). */
    private fun unload() {
        try {
            closeRuntime()
        } catch (e: Exception) {
            // closing a runtime that ran out of memory may fail too; nothing is kept either way
        }
        directory = null
        artifact = null
        tokenizer = null
    }

    private fun closeRuntime() {
        qa = null
        loadedPack = null
        loadedRuntime = null
        try {
            runtime?.close()
        } finally {
            runtime = null
        }
    }

    /** Closes the runtime on the worker (after a running question). */
    override fun close() {
        cancel.set(true)
        worker.execute { closeRuntime() }
    }

    companion object {
        /** The one line for running out of memory while loading or answering. */
        const val OUT_OF_MEMORY = "not enough memory for this decoder and context pack (its context inputs and KV cache " +
            "are held as float32); export the decoder with a smaller --max-context and build a shorter pack, or close other apps"

        /** The numbers the screen shows under an answer. */
        fun stats(a: Answer): String {
            val lookup = (if (a.rerunTokens > 0) ", ${a.rerunTokens} unsure re-run exactly" else "") +
                (if (a.lookupMs > 0) ", CPU lookup %.0f ms".format(java.util.Locale.ROOT, a.lookupMs) else "")
            return "%s | prefill %.0f ms (%d prompt + %d context tokens) | decode %.1f tok/s (%d tokens)%s%s".format(
                java.util.Locale.ROOT, a.runtime, a.prefillMs, a.promptTokens, a.contextTokens, a.decodeTokensPerSecond,
                a.tokenIds.size, lookup, if (a.cancelled) " | stopped" else "")
        }

        /** A user-caused error (bad file, wrong pack, ...) is its one-line message; anything else names its type. */
        fun describe(e: Throwable): String = when (e) {
            is IllegalArgumentException -> e.message ?: e.javaClass.simpleName
            is java.io.IOException -> "cannot read a file: ${e.message}"
            else -> "${e.javaClass.simpleName}: ${e.message}"
        }
    }
}
