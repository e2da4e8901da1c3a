package dev.squeezemobile.demo

import android.os.Bundle
import android.view.View
import android.widget.AdapterView
import android.widget.ArrayAdapter
import android.widget.Button
import android.widget.EditText
import android.widget.ScrollView
import android.widget.Spinner
import android.widget.TextView
import androidx.activity.ComponentActivity
import androidx.core.content.ContextCompat
import dev.squeezemobile.core.Answer
import dev.squeezemobile.core.DecoderArtifact
import dev.squeezemobile.core.DecoderDirectory
import dev.squeezemobile.core.QaListener
import dev.squeezemobile.core.QaSelection
import dev.squeezemobile.core.QaSession
import dev.squeezemobile.demo.runtime.DecoderBackends
import java.io.File
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors

/**
 * Document Q&A: pick an exported decoder directory (files/decoders/NAME/, as `squeeze export decoder` wrote it), one
 * of its artifacts (its format picks the runtime: ONNX Runtime, LiteRT, ExecuTorch) and a context pack; the answer
 * streams in token by token; prefill ms, decode tok/s and the runtime are shown under it. All logic is the core's
 * QaSession (generation on one worker thread, listener calls on the main thread); this class only binds views.
 */
class QaActivity : ComponentActivity(), QaListener {
    private val worker: ExecutorService = Executors.newSingleThreadExecutor()
    private lateinit var session: QaSession
    private lateinit var decodersRoot: File
    private lateinit var packsRoot: File

    private lateinit var decoderSpinner: Spinner
    private lateinit var artifactSpinner: Spinner
    private lateinit var packSpinner: Spinner
    private lateinit var question: EditText
    private lateinit var maxNewTokens: EditText
    private lateinit var ask: Button
    private lateinit var stop: Button
    private lateinit var status: TextView
    private lateinit var answer: TextView
    private lateinit var answerScroll: ScrollView
    private lateinit var stats: TextView

    private var decoders: List<File> = emptyList()
    private var artifacts: List<DecoderArtifact> = emptyList()
    private var packs: List<File> = emptyList()

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_qa)
        decoderSpinner = findViewById(R.id.decoder)
        artifactSpinner = findViewById(R.id.artifact)
        packSpinner = findViewById(R.id.pack)
        question = findViewById(R.id.question)
        maxNewTokens = findViewById(R.id.max_new_tokens)
        ask = findViewById(R.id.ask)
        stop = findViewById(R.id.stop)
        status = findViewById(R.id.status)
        answer = findViewById(R.id.answer)
        answerScroll = findViewById(R.id.answer_scroll)
        stats = findViewById(R.id.stats)

        // app-specific external storage: `adb push` reaches it, the app needs no storage permission
        val root = getExternalFilesDir(null) ?: filesDir
        decodersRoot = File(root, "decoders").apply { mkdirs() }
        packsRoot = File(root, "packs").apply { mkdirs() }
        session = QaSession(worker, ContextCompat.getMainExecutor(this), DecoderBackends, this)

        findViewById<Button>(R.id.open_camera).setOnClickListener { finish() } // the camera screen started this one
        findViewById<Button>(R.id.refresh).setOnClickListener { refresh() }
        ask.setOnClickListener { askQuestion() }
        stop.setOnClickListener { session.stop() }
        decoderSpinner.onItemSelectedListener = onSelected { showArtifactsAndPacks(decoders[it]) }
        refresh()
    }

    private fun onSelected(block: (Int) -> Unit) = object : AdapterView.OnItemSelectedListener {
        override fun onItemSelected(parent: AdapterView<*>?, view: View?, position: Int, id: Long) = block(position)
        override fun onNothingSelected(parent: AdapterView<*>?) {}
    }

    private fun <T> Spinner.show(items: List<T>, label: (T) -> String) {
        adapter = ArrayAdapter(this@QaActivity, android.R.layout.simple_spinner_dropdown_item, items.map(label))
    }

    /** Rescan files/decoders and files/packs (after an adb push). */
    private fun refresh() {
        decoders = DecoderDirectory.list(decodersRoot)
        decoderSpinner.show(decoders) { it.name }
        if (decoders.isEmpty()) {
            showArtifactsAndPacks(null)
            status.text = getString(R.string.qa_nothing_found, decodersRoot.path, packsRoot.path)
        }
    }

    private fun showArtifactsAndPacks(dir: File?) {
        artifacts = try {
            dir?.let { DecoderDirectory(it).usableArtifacts(DecoderBackends.formats) } ?: emptyList()
        } catch (e: IllegalArgumentException) {
            status.text = QaSession.describe(e)
            emptyList()
        }
        artifactSpinner.show(artifacts) { DecoderDirectory.label(it) }
        // packs beside the export too (a pack is data for one model: it is checked against the manifest on Ask)
        packs = DecoderDirectory.listPacks(packsRoot) + (dir?.let { DecoderDirectory.listPacks(it) } ?: emptyList())
        packSpinner.show(packs) { it.name }
    }

    private fun askQuestion() {
        val dir = decoders.getOrNull(decoderSpinner.selectedItemPosition)
        val artifact = artifacts.getOrNull(artifactSpinner.selectedItemPosition)
        val pack = packs.getOrNull(packSpinner.selectedItemPosition)
        // as typed: the core refuses a blank question (Python's rule) and asks exactly what `squeeze generate
        // --prompt` would (a trimmed copy was another prompt, with other token ids, than the CLI's)
        val text = question.text.toString()
        when {
            dir == null || artifact == null || pack == null -> status.setText(R.string.qa_pick_all)
            text.isEmpty() -> status.setText(R.string.qa_empty_question)
            else -> {
                val limit = maxNewTokens.text.toString().toIntOrNull()?.coerceAtLeast(1) ?: 64
                if (session.ask(QaSelection(dir, artifact.file, pack), text, limit)) {
                    answer.text = ""
                    stats.text = ""
                    setBusy(true)
                }
            }
        }
    }

    private fun setBusy(busy: Boolean) {
        ask.isEnabled = !busy
        stop.isEnabled = busy
    }

    // QaListener: called on the main thread by QaSession
    override fun onStatus(text: String) {
        status.text = text
    }

    override fun onText(delta: String) {
        answer.append(delta)
        answerScroll.post { answerScroll.fullScroll(View.FOCUS_DOWN) }
    }

    override fun onAnswer(answer: Answer, stats: String) {
        this.stats.text = stats
        status.setText(R.string.qa_done)
        setBusy(false)
    }

    override fun onError(message: String) {
        status.text = message
        setBusy(false)
    }

    override fun onDestroy() {
        super.onDestroy()
        session.close() // stops a running answer after its current token, then closes the runtime on the worker
        worker.shutdown()
    }
}
