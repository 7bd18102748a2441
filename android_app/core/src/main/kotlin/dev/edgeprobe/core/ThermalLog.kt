package dev.edgeprobe.core

import org.json.JSONObject

// The thermal log of one run: PowerManager's thermal status and headroom before and after the run
// and the worst status seen in between, so a farm can discard a run measured while throttling.

/** PowerManager.THERMAL_STATUS_* as the platform defines them (index = status). */
val THERMAL_STATUS_NAMES = listOf(
    "THERMAL_STATUS_NONE", "THERMAL_STATUS_LIGHT", "THERMAL_STATUS_MODERATE", "THERMAL_STATUS_SEVERE",
    "THERMAL_STATUS_CRITICAL", "THERMAL_STATUS_EMERGENCY", "THERMAL_STATUS_SHUTDOWN",
)

/** From this status on the platform throttles noticeably: a run that saw it is not a clean measurement. */
const val THERMAL_STATUS_MODERATE = 2

fun thermalStatusName(status: Int?): String? = when {
    status == null -> null
    status in THERMAL_STATUS_NAMES.indices -> THERMAL_STATUS_NAMES[status]
    else -> "THERMAL_STATUS_UNKNOWN($status)"
}

/** Readings of one run: [before] the timed work, [sample] during it (a [ThermalSamplerLoop] calls
 *  it), [after] it. The worst status counts all of them: a run that started throttled was measured
 *  throttled. Thread-safe. */
class ThermalLog {
    private var before: ThermalReading? = null
    private var after: ThermalReading? = null
    private var samples = 0
    private var worst: Int? = null
    private var worstAtS: Double? = null
    private var readErrors = 0
    private var readError: String? = null

    @Synchronized fun before(reading: ThermalReading) {
        before = reading
        see(reading)
    }

    @Synchronized fun sample(reading: ThermalReading) {
        samples++
        see(reading)
    }

    @Synchronized fun after(reading: ThermalReading) {
        after = reading
        see(reading)
    }

    /** A read that threw: counted, its first message kept (the status it would have given is unknown). */
    @Synchronized fun failed(reason: String) {
        readErrors++
        if (readError == null) readError = oneLineText(reason)
    }

    private fun see(r: ThermalReading) {
        val s = r.status ?: return
        if (worst == null || s > worst!!) {
            worst = s
            worstAtS = r.tS
        }
    }

    /** The worst THERMAL_STATUS_* seen, null when no reading had a status. */
    val worstStatus: Int?
        @Synchronized get() = worst

    /** True when the worst status seen is THERMAL_STATUS_MODERATE (2) or worse: discard the run.
     *  False when nothing was known (no status): [toJson] then says available false and why. */
    @Synchronized fun throttled(): Boolean = (worst ?: -1) >= THERMAL_STATUS_MODERATE

    /** The record's thermal block, extended for Android (PROTOCOL.md's before_c/after_c are sysfs zones,
     *  which an app cannot read: absent here, and the host reads them as empty). */
    @Synchronized fun toJson(): JSONObject {
        val w = worst
        if (w == null) {
            val why = when {
                before == null && after == null && samples == 0 && readErrors == 0 -> "no thermal reading was taken"
                readErrors > 0 -> "no thermal status was read ($readErrors failed read(s): $readError)"
                else -> "PowerManager gave no thermal status (getCurrentThermalStatus needs API 29)"
            }
            return JSONObject().put("available", false).put("reason", why).put("source", "PowerManager")
        }
        return JSONObject()
            .put("available", true)
            .put("reason", JSONObject.NULL)
            .put("source", "PowerManager")
            .put("before", readingJson(before))
            .put("after", readingJson(after))
            .put("worst_status", w)
            .put("worst_status_name", thermalStatusName(w))
            .put("worst_status_t_s", jsonNumber(worstAtS))
            .put("headroom_before", jsonNumber(headroom(before)))
            .put("headroom_after", jsonNumber(headroom(after)))
            .put("samples", samples)
            .put("read_errors", readErrors)
            .put("throttled", w >= THERMAL_STATUS_MODERATE)
            .put("throttled_definition", "worst_status >= THERMAL_STATUS_MODERATE (2), before, during or after the run")
    }

    private companion object {
        /** getThermalHeadroom returns NaN when it has no forecast: a missing value, never a number. */
        fun headroom(r: ThermalReading?): Double? = r?.headroom?.takeIf { it.isFinite() }

        fun readingJson(r: ThermalReading?): Any = if (r == null) JSONObject.NULL else JSONObject()
            .put("t_s", jsonNumber(r.tS))
            .put("status", r.status ?: JSONObject.NULL)
            .put("status_name", thermalStatusName(r.status) ?: JSONObject.NULL)
            .put("headroom", jsonNumber(headroom(r)))
    }
}

/** Reads [reader] every [periodMs] on a daemon thread between [start] and [stop] into [log]
 *  (before/after are the caller's: log.before(reader.read()) ahead of start()). */
class ThermalSamplerLoop(
    private val reader: ThermalReader,
    val log: ThermalLog = ThermalLog(),
    val periodMs: Long = 100,
) {
    private val loop = PeriodicLoop("edgeprobe-thermal-sampler", periodMs) { sampleNow() }

    fun sampleNow() {
        try {
            log.sample(reader.read())
        } catch (e: Exception) {
            log.failed("thermal read failed: ${e.javaClass.simpleName}: ${e.message ?: ""}")
        }
    }

    fun start() = loop.start()

    fun stop() = loop.stop()
}
