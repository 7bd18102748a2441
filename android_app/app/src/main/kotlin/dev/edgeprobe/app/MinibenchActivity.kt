package dev.edgeprobe.app

import android.app.Activity
import android.app.ActivityManager
import android.content.Context
import android.os.Build
import android.os.Bundle
import android.util.Log
import org.json.JSONObject
import java.io.File

/** minibench's entry point, so ExecuTorch's benchmark scripts keep working: the extras of
 *  org.pytorch.minibench.BenchmarkActivity (model_dir, num_iter default 50, num_warm_up_iter default
 *  10), every .pte in model_dir measured by [ExecuTorchRunner] (minibench takes only the first), and
 *  files/benchmark_results.json in minibench's shape, with edgeprobe's record of each model beside it
 *  (files/NAME.edgeprobe.json). The host fetches both with `run-as dev.edgeprobe.app cat files/...`. */
class MinibenchActivity : Activity() {
    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        val modelDir = intent.getStringExtra(EXTRA_MODEL_DIR)?.let(::File)
        val ptes = modelDir?.listFiles()?.filter { it.name.endsWith(".pte") }?.sortedBy { it.name }.orEmpty()
        if (ptes.isEmpty()) {
            Log.e(TAG, "no .pte in model_dir ${modelDir ?: "(not given: --es model_dir DIR)"}")
            finish()
            return
        }
        val numIter = intent.getIntExtra(EXTRA_NUM_ITER, 50)
        val numWarmup = intent.getIntExtra(EXTRA_NUM_WARMUP, 10)
        val runner = ExecuTorchRunner(
            delegate = BuildConfig.DELEGATE, runtimeVersion = BuildConfig.EXECUTORCH_VERSION,
            appVersion = BuildConfig.VERSION_NAME, battery = BatteryMeter(this), thermal = ThermalMeter(this),
        )
        // off the main thread (a model can take minutes); finish() when done, as minibench does
        Thread({
            try {
                runAll(runner, ptes, numIter, numWarmup)
            } finally {
                finish()
            }
        }, "edgeprobe-minibench").start()
    }

    private fun runAll(runner: ExecuTorchRunner, ptes: List<File>, numIter: Int, numWarmup: Int) {
        val results = MinibenchResults(deviceInfo())
        for (pte in ptes) {
            val name = pte.name.removeSuffix(".pte")
            val recordFile = File(filesDir, "$name.edgeprobe.json")
            val outcome = runner.run(listOf("--model", pte.path, "--warmup", numWarmup.toString(),
                "--iterations", numIter.toString(), "--output", recordFile.path), filesDir, RUN_TIMEOUT_S)
            val record = try {
                JSONObject(recordFile.readText())
            } catch (e: Exception) {
                Log.e(TAG, "$name: no record (exit ${outcome.exitCode}, ${outcome.stderr.trim()})")
                JSONObject().put("status", "error")
            }
            results.add(name, record)
        }
        val out = File(filesDir, RESULTS_FILE)
        val tmp = File(filesDir, "$RESULTS_FILE.tmp")
        tmp.writeText(results.metrics.toString())
        if (!tmp.renameTo(out)) Log.e(TAG, "cannot write $out")
        Log.i(TAG, "minibench results in $out")
    }

    /** minibench's DeviceInfo; its memory figures come from a MemoryInfo that is never filled (always
     *  0), these from ActivityManager.getMemoryInfo. */
    private fun deviceInfo(): JSONObject {
        val mem = ActivityManager.MemoryInfo()
        (getSystemService(Context.ACTIVITY_SERVICE) as ActivityManager).getMemoryInfo(mem)
        return JSONObject().put("device", Build.BRAND).put("arch", Build.MODEL)
            .put("os", "Android ${Build.VERSION.RELEASE}").put("totalMem", mem.totalMem).put("availMem", mem.availMem)
    }

    companion object {
        const val EXTRA_MODEL_DIR = "model_dir"
        const val EXTRA_NUM_ITER = "num_iter"
        const val EXTRA_NUM_WARMUP = "num_warm_up_iter"
        const val RESULTS_FILE = "benchmark_results.json"
        private const val RUN_TIMEOUT_S = 3600.0
        private const val TAG = "edgeprobe"
    }
}
