package dev.squeezemobile.demo

import android.Manifest
import android.content.Intent
import android.content.pm.PackageManager
import android.os.Bundle
import android.view.View
import android.widget.AdapterView
import android.widget.ArrayAdapter
import android.widget.Button
import android.widget.Spinner
import android.widget.TextView
import androidx.activity.ComponentActivity
import androidx.activity.result.contract.ActivityResultContracts
import androidx.camera.core.CameraSelector
import androidx.camera.core.ImageAnalysis
import androidx.camera.core.Preview
import androidx.camera.lifecycle.ProcessCameraProvider
import androidx.camera.view.PreviewView
import androidx.core.content.ContextCompat
import dev.squeezemobile.core.Classifier
import dev.squeezemobile.core.ClipBuilder
import dev.squeezemobile.core.ModelRuntime
import dev.squeezemobile.core.RecognitionResult
import dev.squeezemobile.demo.runtime.Backend
import dev.squeezemobile.demo.runtime.ModelDirectory
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors

/**
 * Camera preview, top-5 actions, inference ms (p50/p90 of the last 100), camera FPS and the backend in use; a button
 * opens the document Q&A screen (QaActivity).
 */
class MainActivity : ComponentActivity() {
    private lateinit var models: ModelDirectory
    private lateinit var results: TextView
    private lateinit var stats: TextView
    private val analysisThread: ExecutorService = Executors.newSingleThreadExecutor()
    private val inferenceThread: ExecutorService = Executors.newSingleThreadExecutor()
    private var runtime: ModelRuntime? = null
    @Volatile private var classifier: Classifier? = null

    private val permission = registerForActivityResult(ActivityResultContracts.RequestPermission()) { granted ->
        if (granted) startCamera() else results.setText(R.string.camera_permission_needed)
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        results = findViewById(R.id.results)
        stats = findViewById(R.id.stats)
        findViewById<Button>(R.id.open_qa).setOnClickListener { startActivity(Intent(this, QaActivity::class.java)) }
        models = try {
            ModelDirectory(this)
        } catch (e: java.io.IOException) {
            results.setText(R.string.no_models)
            return
        }
        val backends = models.available()
        val spinner = findViewById<Spinner>(R.id.backend)
        spinner.adapter = ArrayAdapter(this, android.R.layout.simple_spinner_dropdown_item, backends.map { it.label })
        spinner.onItemSelectedListener = object : AdapterView.OnItemSelectedListener {
            override fun onItemSelected(parent: AdapterView<*>?, view: View?, position: Int, id: Long) = select(backends[position])
            override fun onNothingSelected(parent: AdapterView<*>?) {}
        }
        if (ContextCompat.checkSelfPermission(this, Manifest.permission.CAMERA) == PackageManager.PERMISSION_GRANTED) {
            startCamera()
        } else {
            permission.launch(Manifest.permission.CAMERA)
        }
    }

    /** Switch backends on the inference thread (it owns the runtime), closing the previous one. */
    private fun select(backend: Backend) = inferenceThread.execute {
        runtime?.close()
        val r = models.open(backend)
        runtime = r
        classifier = Classifier(r, models.labels)
    }

    private fun startCamera() {
        val future = ProcessCameraProvider.getInstance(this)
        future.addListener({
            val provider = future.get()
            val preview = Preview.Builder().build().also {
                it.setSurfaceProvider(findViewById<PreviewView>(R.id.preview).surfaceProvider)
            }
            val analysis = ImageAnalysis.Builder()
                .setBackpressureStrategy(ImageAnalysis.STRATEGY_KEEP_ONLY_LATEST)
                .setOutputImageFormat(ImageAnalysis.OUTPUT_IMAGE_FORMAT_RGBA_8888)
                .build()
            val clips = ClipBuilder(models.manifest)
            analysis.setAnalyzer(analysisThread, SwitchingAnalyzer(clips))
            provider.unbindAll()
            provider.bindToLifecycle(this, CameraSelector.DEFAULT_BACK_CAMERA, preview, analysis)
        }, ContextCompat.getMainExecutor(this))
    }

    /** Forwards to a FrameAnalyzer bound to the classifier of the backend selected now. */
    private inner class SwitchingAnalyzer(private val clips: ClipBuilder) : ImageAnalysis.Analyzer {
        private var current: Pair<Classifier, FrameAnalyzer>? = null

        override fun analyze(image: androidx.camera.core.ImageProxy) {
            val c = classifier ?: return image.close()
            val analyzer = current?.takeIf { it.first === c }?.second
                ?: FrameAnalyzer(clips, c, inferenceThread, ::show).also { current = c to it }
            analyzer.analyze(image)
        }
    }

    private fun show(result: RecognitionResult, cameraFps: Double) {
        val text = result.top.joinToString("\n") { "%5.1f%%  %s".format(100 * it.probability, it.label ?: "class ${it.index}") }
        val s = classifier?.latency?.summary()
        val line = "%s | %.0f ms (p50 %.0f, p90 %.0f) | camera %.0f fps".format(
            result.runtime, result.inferenceMs, s?.p50Ms ?: 0.0, s?.p90Ms ?: 0.0, cameraFps)
        runOnUiThread {
            results.text = text
            stats.text = line
        }
    }

    override fun onDestroy() {
        super.onDestroy()
        analysisThread.shutdown()
        inferenceThread.execute { runtime?.close() }
        inferenceThread.shutdown()
    }
}
