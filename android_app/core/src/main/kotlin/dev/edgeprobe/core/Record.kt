package dev.edgeprobe.core

import org.json.JSONArray
import org.json.JSONObject
import java.io.File
import java.io.FileOutputStream
import java.io.IOException
import java.nio.file.Files
import java.nio.file.StandardCopyOption

// The versioned runner record (device_runner/PROTOCOL.md "Record", schema_version 1) as the app's
// in-process runner writes it: every key of the protocol in the same nesting, runner.flavor "app",
// runner.delegate (which ExecuTorch backend ran), written atomically. The host reads it with the
// same parser as a native runner's record (host/edgeprobe/results.py RunRecord.from_runner_json),
// which ignores the keys it does not know (delegate, voltage_unit, the Android thermal fields).

const val RECORD_SCHEMA_VERSION = 1
const val APP_RUNNER_FLAVOR = "app"
const val APP_RUNNER_RUNTIME = "executorch"

/** runner.build: the runtime's main native library and the compilers of its ELF .comment. */
data class RuntimeBuild(val library: String, val compilers: List<String>, val source: String = ".comment")

/** runner: [version] this app's, [runtimeVersion] the ExecuTorch Android library's (the host needs a
 *  string here: give the Gradle dependency's version), [delegate] the backend that ran ("xnnpack",
 *  "vulkan", "qnn"). [build] null needs [buildReason]. */
data class RecordRunner(
    val version: String,
    val runtimeVersion: String,
    val delegate: String,
    val build: RuntimeBuild? = null,
    val buildReason: String? = if (build == null) "the app does not read the ExecuTorch library's ELF .comment" else null,
)

/** config (PROTOCOL.md): [maxIterations] null = no cap; [threadsUsed] null needs [threadsNote]. */
data class RecordConfig(
    val method: String,
    val warmup: Int,
    val iterations: Int,
    val minSeconds: Double,
    val maxIterations: Int?,
    val threadsRequested: Int,
    val threadsUsed: Int?,
    val loader: String,
    val etdump: Boolean,
    val threadsNote: String? = null,
)

data class RecordVerification(
    val checked: Boolean,
    val passed: Boolean?,
    val testsets: Int,
    val rtol: Double?,
    val atol: Double?,
    val maxAbsError: Double?,
    val reason: String?,
) {
    companion object {
        /** No vectors: nothing checked, and why. */
        fun unchecked(reason: String = "no test vectors given; inputs are ones") =
            RecordVerification(false, null, 0, null, null, null, reason)
    }
}

/** timing: [iterationNs] one monotonic-clock sample per timed execute. */
data class RecordTiming(val loadMs: Double?, val firstInferenceMs: Double?, val iterationNs: List<Long>)

data class RecordMemory(
    val baselineRssBytes: Long?,
    val baselineHwmBytes: Long?,
    val peakRssBytes: Long?,
    val swapBytes: Long?,
    val hwmReset: Boolean?,
    val peakRssDefinition: String?,
    val source: String = "/proc/self/status VmHWM",
)

data class RecordEnvironment(
    val os: String?,
    val kernel: String?,
    val machine: String?,
    val cpuModel: String?,
    val cores: Int?,
    val hostname: String?,
) {
    companion object {
        /** This JVM's (on Android: os.name "Linux", os.version the kernel, os.arch "aarch64"), the
         *  CPU model as the Python runner reads it from /proc/cpuinfo. */
        fun current(): RecordEnvironment {
            val arch = System.getProperty("os.arch")
            return RecordEnvironment(
                os = System.getProperty("os.name"),
                kernel = System.getProperty("os.version"),
                machine = when (arch) { "amd64" -> "x86_64"; "arm64" -> "aarch64"; else -> arch },
                cpuModel = cpuModel(),
                cores = Runtime.getRuntime().availableProcessors(),
                hostname = try { java.net.InetAddress.getLocalHost().hostName } catch (e: Exception) { null },
            )
        }

        private fun cpuModel(): String? {
            val lines = try { File("/proc/cpuinfo").readLines() } catch (e: IOException) { return null }
            for (key in listOf("model name", "Hardware", "CPU part")) {
                val line = lines.firstOrNull { it.startsWith(key) } ?: continue
                return line.substringAfter(':').trim()
            }
            return null
        }
    }
}

/** Builds one record and writes it. Set the parts as the run measures them (a part left null is
 *  written null; say why with [missing]), then [ok] or [error], then [write]. [energyBlock] and
 *  [thermalBlock] take BatteryEnergy.toJson() / ThermalLog.toJson() (or [unavailable]). */
class RecordWriter(val runner: RecordRunner, val artifactPath: String?, val artifactSizeBytes: Long?) {
    var config: RecordConfig? = null
    var verification: RecordVerification? = null
    var timing: RecordTiming? = null
    var memory: RecordMemory? = null
    var energyBlock: JSONObject? = null
    var thermalBlock: JSONObject? = null
    var environment: RecordEnvironment? = RecordEnvironment.current()
    private val missingReasons = LinkedHashMap<String, String>()

    /** [part] (config, verification, timing, memory, environment) is null in the record because of [reason]. */
    fun missing(part: String, reason: String): RecordWriter {
        missingReasons[part] = oneLineText(reason)
        return this
    }

    /** The record of a finished measurement; refuses one that lacks what an ok record has. */
    fun ok(): JSONObject {
        val t = timing
        if (config == null || verification == null || t == null || t.iterationNs.isEmpty()) {
            throw IllegalStateException("an ok record needs config, verification and timing with iteration_ns: " +
                "set them, or write error(code, message)")
        }
        check(t.iterationNs.all { it > 0 }) { "iteration_ns holds a sample <= 0 ns: time each execute with System.nanoTime" }
        return build("ok", null, t, energyBlock ?: unavailable("no energy meter ran for this record"))
    }

    /** The error record: [code] as the runners use them (output_mismatch, load_failed, bad_vectors,
     *  execute_failed, unsupported, internal_error, usage), [message] made one line. Timing stays only
     *  when timed iterations exist and the outputs did not mismatch (as the Python runner does). */
    fun error(code: String, message: String): JSONObject {
        require(Regex("[a-z][a-z0-9_]{0,63}").matches(code)) { "error code '$code' is not a snake_case word like load_failed" }
        val t = timing?.takeIf { code != "output_mismatch" && it.iterationNs.isNotEmpty() }
        val err = JSONObject().put("code", code).put("message", oneLineText(message))
        return build("error", err, t, energyBlock ?: unavailable("run ended before the timed loop"))
    }

    private fun build(status: String, error: JSONObject?, t: RecordTiming?, energy: JSONObject): JSONObject {
        val r = runner
        val record = JSONObject()
            .put("schema_version", RECORD_SCHEMA_VERSION)
            .put("status", status)
            .put("error", error ?: JSONObject.NULL)
            .put("runner", JSONObject()
                .put("flavor", APP_RUNNER_FLAVOR)
                .put("version", r.version)
                .put("runtime", APP_RUNNER_RUNTIME)
                .put("runtime_version", r.runtimeVersion)
                .put("delegate", r.delegate)
                .put("build", r.build?.let { b ->
                    JSONObject().put("library", b.library).put("source", b.source).put("compilers", JSONArray(b.compilers))
                } ?: JSONObject.NULL)
                .put("build_reason", nul(r.buildReason?.let(::oneLineText))))
            .put("artifact", JSONObject().put("path", nul(artifactPath)).put("size_bytes", nul(artifactSizeBytes)))
            .put("config", config?.let { c ->
                JSONObject()
                    .put("method", c.method).put("warmup", c.warmup).put("iterations", c.iterations)
                    .put("min_seconds", jsonNumber(c.minSeconds)).put("max_iterations", nul(c.maxIterations))
                    .put("threads_requested", c.threadsRequested).put("threads_used", nul(c.threadsUsed))
                    .put("loader", c.loader).put("etdump", c.etdump)
                    .also { if (c.threadsNote != null) it.put("threads_note", oneLineText(c.threadsNote)) }
            } ?: JSONObject.NULL)
            .put("verification", verification?.let { v ->
                JSONObject()
                    .put("checked", v.checked).put("passed", nul(v.passed)).put("testsets", v.testsets)
                    .put("rtol", jsonNumber(v.rtol)).put("atol", jsonNumber(v.atol))
                    .put("max_abs_error", jsonNumber(v.maxAbsError)).put("reason", nul(v.reason?.let(::oneLineText)))
            } ?: JSONObject.NULL)
            .put("timing", t?.let {
                JSONObject().put("load_ms", jsonNumber(it.loadMs)).put("first_inference_ms", jsonNumber(it.firstInferenceMs))
                    .put("iteration_ns", JSONArray().also { a -> it.iterationNs.forEach { ns -> a.put(ns) } })
            } ?: JSONObject.NULL)
            .put("memory", memory?.let { m ->
                JSONObject()
                    .put("baseline_rss_bytes", nul(m.baselineRssBytes)).put("baseline_hwm_bytes", nul(m.baselineHwmBytes))
                    .put("peak_rss_bytes", nul(m.peakRssBytes)).put("swap_bytes", nul(m.swapBytes))
                    .put("source", m.source).put("hwm_reset", nul(m.hwmReset))
                    .put("peak_rss_definition", nul(m.peakRssDefinition))
            } ?: JSONObject.NULL)
            .put("energy", energy)
            .put("thermal", thermalBlock ?: unavailable("no thermal reading was taken for this record"))
            .put("environment", environment?.let { e ->
                JSONObject().put("os", nul(e.os)).put("kernel", nul(e.kernel)).put("machine", nul(e.machine))
                    .put("cpu_model", nul(e.cpuModel)).put("cores", nul(e.cores)).put("hostname", nul(e.hostname))
            } ?: JSONObject.NULL)
        if (missingReasons.isNotEmpty()) {
            val m = JSONObject()
            for ((k, v) in missingReasons) m.put(k, v)
            record.put("missing", m)
        }
        return record
    }

    companion object {
        /** {"available": false, "reason": ...}: a block that was not measured, and why (one line). */
        fun unavailable(reason: String): JSONObject = JSONObject().put("available", false).put("reason", oneLineText(reason))

        private fun nul(x: Any?): Any = x ?: JSONObject.NULL

        /** [record] as one JSON line to [path], atomically: written to PATH.tmp beside it (as the runners
         *  do), synced, renamed over PATH; a failure leaves no PATH.tmp and throws one line. */
        fun write(record: JSONObject, path: File) {
            val tmp = File(path.path + ".tmp")
            try {
                FileOutputStream(tmp).use { out ->
                    out.write((record.toString() + "\n").toByteArray(Charsets.UTF_8))
                    out.fd.sync()
                }
                Files.move(tmp.toPath(), path.toPath(), StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING)
            } catch (e: IOException) {
                tmp.delete()
                throw IOException(oneLineText("cannot write the record to $path: ${e.message ?: e.javaClass.simpleName}; " +
                    "check that its directory exists and is writable"), e)
            }
        }
    }
}
