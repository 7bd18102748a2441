package dev.edgeprobe.app

import java.io.File
import java.io.IOException

/** This process's memory as the native runner reads it (PROTOCOL.md "Order of work" 1 and 6):
 *  VmRSS / VmHWM / VmSwap of /proc/self/status in bytes, and the VmHWM reset (clear_refs 5). On a phone
 *  the app's process also holds the ART heap, so the baseline is higher than the native runner's; the
 *  difference peak - baseline is still the run's own. */
object ProcMemory {
    /** The kB fields of /proc/self/status in bytes; a field the kernel does not give is absent. */
    fun status(): Map<String, Long> {
        val lines = try { File("/proc/self/status").readLines() } catch (e: IOException) { return emptyMap() }
        val out = HashMap<String, Long>()
        for (line in lines) {
            val key = line.substringBefore(':', "")
            if (key !in FIELDS) continue
            val kb = line.substringAfter(':').trim().removeSuffix("kB").trim().toLongOrNull() ?: continue
            out[key] = kb * 1024
        }
        return out
    }

    /** Resets VmHWM to VmRSS (Linux >= 4.0); null when done, else why not (one line). */
    fun resetHwm(): String? = try {
        File("/proc/self/clear_refs").writeText("5")
        null
    } catch (e: IOException) {
        "/proc/self/clear_refs: ${e.message ?: e.javaClass.simpleName}"
    } catch (e: SecurityException) {
        "/proc/self/clear_refs refused: ${e.message ?: "no reason given"}"
    }

    /** config's peak_rss_definition, in the runners' words (edgeprobe_runner/meters.py). */
    fun peakRssDefinition(resetFailed: String?): String = if (resetFailed == null) {
        "peak_rss_bytes - baseline_hwm_bytes: VmHWM after the run minus VmHWM before the model was loaded, " +
            "the mark first reset to VmRSS (/proc/self/clear_refs 5), so it is the run's own peak above the " +
            "runner's baseline"
    } else {
        "peak_rss_bytes - baseline_hwm_bytes: VmHWM after the run minus VmHWM before the model was loaded (the " +
            "mark could not be reset: $resetFailed), a lower bound of the run's peak above the runner's baseline " +
            "when baseline_hwm_bytes > baseline_rss_bytes"
    }

    private val FIELDS = setOf("VmRSS", "VmHWM", "VmSwap")
}
