package dev.edgeprobe.app

import org.json.JSONArray
import org.json.JSONObject

/** minibench's results file (pytorch/executorch extension/benchmark/android/benchmark,
 *  org.pytorch.minibench.BenchmarkMetric serialised by Gson into files/benchmark_results.json): a JSON
 *  array of {"benchmarkModel": {"name", "backend", "quantization"}, "metric", "actualValue",
 *  "targetValue", "deviceInfo": {"device", "arch", "os", "totalMem", "availMem"}}, the metric names
 *  and the trimmed mean exactly as its ModelRunner computes them, from edgeprobe's record. */
class MinibenchResults(private val deviceInfo: JSONObject) {
    val metrics = JSONArray()

    /** One model's metrics from its edgeprobe [record]; [pteName] without ".pte" names it as minibench does. */
    fun add(pteName: String, record: JSONObject) {
        val model = benchmarkModel(pteName)
        val timing = record.optJSONObject("timing")
        val loadMs = timing?.opt("load_ms") as? Number
        val ok = record.optString("status") == "ok"
        if (!ok || timing == null) {
            // minibench's failed load: the load time and a non-zero load_status
            if (loadMs != null) put(model, "model_load_time(ms)", loadMs.toDouble())
            put(model, "load_status", LOAD_FAILED)
            return
        }
        val ns = timing.getJSONArray("iteration_ns")
        val latencyMs = (0 until ns.length()).map { ns.getLong(it) / 1e6 }.sorted()
        // ModelRunner: "only use 80% samples in the middle (trimmean 0.2)"
        val trimmed = latencyMs.subList(latencyMs.size / 10, latencyMs.size * 9 / 10)
        put(model, "avg_inference_latency(ms)", latencyMs.average())
        put(model, "trimmean_inference_latency(ms)", if (trimmed.isEmpty()) latencyMs.average() else trimmed.average())
        put(model, "model_load_time(ms)", loadMs?.toDouble() ?: Double.NaN)
        put(model, "load_status", 0.0)
        // ram_pss_usage(mb) is left out: minibench takes Debug.getPss() with the module still loaded;
        // the record's memory block (VmHWM above the baseline) is the measured figure here
    }

    private fun put(model: JSONObject, metric: String, value: Double) {
        if (value.isNaN()) return
        metrics.put(JSONObject().put("benchmarkModel", model).put("metric", metric).put("actualValue", value)
            .put("targetValue", 0.0).put("deviceInfo", deviceInfo))
    }

    companion object {
        /** minibench reports the ExecuTorch error code; the app's record has a code word instead */
        const val LOAD_FAILED = -1.0

        /** BenchmarkMetric.extractBackendAndQuantization: NAME_BACKEND_QUANTIZATION, else the whole name. */
        fun benchmarkModel(pteName: String): JSONObject {
            val m = Regex("(?<name>\\w+)_(?<backend>[\\w+]+)_(?<quantization>\\w+)").matchEntire(pteName)
            return if (m != null) {
                JSONObject().put("name", m.groups[1]!!.value).put("backend", m.groups[2]!!.value)
                    .put("quantization", m.groups[3]!!.value)
            } else {
                JSONObject().put("name", pteName).put("backend", "").put("quantization", "")
            }
        }
    }
}
