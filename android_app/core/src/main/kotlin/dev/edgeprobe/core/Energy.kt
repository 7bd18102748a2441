package dev.edgeprobe.core

import org.json.JSONArray
import org.json.JSONObject

// Battery energy from BatteryManager samples: current x voltage, trapezoid over the samples of each
// window, the idle window's power subtracted as the host's energy.py does ((run W - idle W) x run
// time). Unit and discharge sign are decided the host's way (battery_estimate: the idle median, or
// the run median without an idle window), and the raw samples go into the record as read, so the
// host can redo all of it.

/** |median current| below this is mA, not µA: no phone idles under 10 mA (host energy.py's BATTERY_MA_BELOW). */
const val BATTERY_MA_BELOW = 10_000L

/** BatteryManager.BATTERY_STATUS_* (EXTRA_STATUS), as the platform defines them. */
const val BATTERY_STATUS_UNKNOWN = 1
const val BATTERY_STATUS_CHARGING = 2
const val BATTERY_STATUS_DISCHARGING = 3
const val BATTERY_STATUS_NOT_CHARGING = 4
const val BATTERY_STATUS_FULL = 5

const val BATTERY_METHOD = "BatteryManager CURRENT_NOW x EXTRA_VOLTAGE sampled every 10 ms; trapezoid per window; " +
    "(run W - idle W) x run duration"

/** CLOCK_MONOTONIC in seconds (System.nanoTime is CLOCK_MONOTONIC on Linux and Android): the clock of
 *  the record's windows. A sampler's tS and the window markers must come from the same clock. */
fun monotonicS(): Double = System.nanoTime() / 1e9

/** The sysfs-style name of a BatteryManager status (what the host's charging() reads in supply_status). */
fun batteryStatusName(status: Int?): String? = when (status) {
    null -> null
    BATTERY_STATUS_UNKNOWN -> "Unknown"
    BATTERY_STATUS_CHARGING -> "Charging"
    BATTERY_STATUS_DISCHARGING -> "Discharging"
    BATTERY_STATUS_NOT_CHARGING -> "Not charging"
    BATTERY_STATUS_FULL -> "Full"
    else -> "Unknown ($status)"
}

/** CLOCK_MONOTONIC seconds: idle window [idleStartS, idleEndS), run window [runStartS, runEndS]
 *  (PROTOCOL.md). No idle window: idleStartS == idleEndS (the record then has both at runStartS). */
data class EnergyWindow(val idleStartS: Double?, val idleEndS: Double?, val runStartS: Double, val runEndS: Double) {
    val hasIdle: Boolean get() = idleStartS != null && idleEndS != null && idleEndS > idleStartS

    fun inIdle(tS: Double): Boolean = hasIdle && tS >= idleStartS!! && tS < idleEndS!!
    fun inRun(tS: Double): Boolean = tS >= runStartS && tS <= runEndS

    fun toJson(): JSONObject {
        val idle0 = if (hasIdle) idleStartS!! else runStartS
        val idle1 = if (hasIdle) idleEndS!! else runStartS
        return JSONObject().put("idle_start_s", idle0).put("idle_end_s", idle1)
            .put("run_start_s", runStartS).put("run_end_s", runEndS)
    }
}

/** What the integrator made of one run's samples. [available] false: [reason] says why and nothing
 *  else is measured (never 0 J). [energyJ] is the net run energy ((runW - idleW) x durationS), null
 *  with [energyJReason] without an idle baseline; [grossEnergyJ] = runW x durationS. [reliable] false
 *  with [unreliableReason] when charging or the current reads 0. [rawSamples] are the samples of the
 *  windows as read (a sample with a null current or voltage is not in them: it is in [samplesDropped]). */
data class BatteryEnergy(
    val available: Boolean,
    val reason: String?,
    val energyJ: Double? = null,
    val energyJReason: String? = null,
    val grossEnergyJ: Double? = null,
    val idleW: Double? = null,
    val runW: Double? = null,
    val durationS: Double? = null,
    val idleDurationS: Double? = null,
    val currentUnit: String? = null,
    val dischargeSign: Int? = null,
    val calibration: String? = null,
    val reliable: Boolean = false,
    val unreliableReason: String? = null,
    val rawSamples: List<BatterySample> = emptyList(),
    val idleSamples: Int = 0,
    val runSamples: Int = 0,
    val samplesDropped: Int = 0,
    val droppedReason: String? = null,
    val supplyStatus: String? = null,
    val chargerOnline: Boolean? = null,
    val window: EnergyWindow? = null,
) {
    /** PROTOCOL.md's measured energy block for meter "battery", or {"available": false, "reason", "meter"}. */
    fun toJson(): JSONObject {
        if (!available) {
            return JSONObject().put("available", false).put("reason", reason ?: "battery energy was not measured")
                .put("meter", "battery")
        }
        val raw = JSONArray()
        for (s in rawSamples) raw.put(JSONArray().put(s.tS).put(s.currentNow!!).put(s.voltageMv!!))
        return JSONObject()
            .put("available", true)
            .put("reason", JSONObject.NULL)
            .put("meter", "battery")
            .put("energy_j", jsonNumber(energyJ))
            .put("energy_j_reason", energyJReason ?: JSONObject.NULL)
            .put("energy_j_definition", "(run_w - idle_w) x duration_s; gross_energy_j = run_w x duration_s")
            .put("gross_energy_j", jsonNumber(grossEnergyJ))
            .put("idle_w", jsonNumber(idleW))
            .put("run_w", jsonNumber(runW))
            .put("duration_s", jsonNumber(durationS))
            .put("idle_duration_s", jsonNumber(idleDurationS))
            .put("samples", rawSamples.size)
            .put("idle_samples", idleSamples)
            .put("run_samples", runSamples)
            .put("samples_dropped", samplesDropped)
            .put("dropped_reason", droppedReason ?: JSONObject.NULL)
            .put("method", BATTERY_METHOD)
            .put("domains", JSONObject())
            .put("window", window!!.toJson())
            .put("supply", "BatteryManager")
            .put("supply_status", supplyStatus ?: JSONObject.NULL)
            .put("charger_online", chargerOnline ?: JSONObject.NULL)
            .put("current_unit", currentUnit ?: JSONObject.NULL)
            .put("voltage_unit", "mV")
            .put("discharge_sign", dischargeSign ?: JSONObject.NULL)
            .put("calibration", calibration ?: JSONObject.NULL)
            .put("reliable", reliable)
            .put("unreliable_reason", unreliableReason ?: JSONObject.NULL)
            .put("raw_samples", raw)
    }
}

/** A number for a JSON block: null (JSON null) when missing or not finite (JSON has no NaN/inf, and
 *  org.json's put() throws on them). */
internal fun jsonNumber(x: Double?): Any = if (x == null || !x.isFinite()) JSONObject.NULL else x

/** Collects [BatterySample]s (from a [BatterySamplerLoop] or a recorded trace) and the window
 *  markers, and integrates them in [result]. Thread-safe: the loop adds from its thread while the
 *  runner marks the windows from its own. */
class BatteryEnergyIntegrator {
    private val samples = ArrayList<BatterySample>()
    private val failedAtS = ArrayList<Double>()
    private var failedReason: String? = null
    private var idleStartS: Double? = null
    private var idleEndS: Double? = null
    private var runStartS: Double? = null
    private var runEndS: Double? = null

    @Synchronized fun add(sample: BatterySample) {
        samples.add(sample)
    }

    @Synchronized fun addAll(trace: Iterable<BatterySample>) {
        trace.forEach { samples.add(it) }
    }

    /** A read that failed at [tS] (the sampler threw): counted as dropped when it falls in a window. */
    @Synchronized fun addFailed(tS: Double, reason: String) {
        failedAtS.add(tS)
        if (failedReason == null) failedReason = oneLineText(reason)
    }

    @Synchronized fun idleStart(tS: Double) { idleStartS = tS }

    /** Ends the idle window before the run window opens (something ran between them); without it
     *  the idle window ends at runStart. */
    @Synchronized fun idleEnd(tS: Double) { idleEndS = tS }

    @Synchronized fun runStart(tS: Double) { runStartS = tS }

    @Synchronized fun runEnd(tS: Double) { runEndS = tS }

    /** The windows as marked; null until runStart and runEnd were both marked. */
    @Synchronized fun markedWindow(): EnergyWindow? {
        val r0 = runStartS ?: return null
        val r1 = runEndS ?: return null
        val i0 = idleStartS
        return EnergyWindow(i0, if (i0 == null) null else (idleEndS ?: r0), r0, r1)
    }

    /** Integrates over [window] (default: the marked one). */
    @Synchronized fun result(window: EnergyWindow? = null): BatteryEnergy {
        val w = window ?: markedWindow() ?: return BatteryEnergy(
            false, "the run window was never marked (call runStart(tS) and runEnd(tS) around the timed loop)")
        if (!(w.runEndS >= w.runStartS) || !w.runStartS.isFinite() || !w.runEndS.isFinite()) {
            return BatteryEnergy(false, "the run window [${w.runStartS}, ${w.runEndS}] is not a time span: mark runStart before runEnd on one clock")
        }
        if (w.idleStartS != null && w.idleEndS != null && w.idleEndS < w.idleStartS) {
            return BatteryEnergy(false, "the idle window [${w.idleStartS}, ${w.idleEndS}) ends before it starts: mark idleStart before runStart on one clock")
        }
        return integrate(w, samples.sortedBy { it.tS }, failedAtS.toList(), failedReason)
    }

    private companion object {
        fun inAny(w: EnergyWindow, tS: Double) = w.inIdle(tS) || w.inRun(tS)

        fun integrate(w: EnergyWindow, sorted: List<BatterySample>, failedAtS: List<Double>, failedReason: String?): BatteryEnergy {
            val inWindows = sorted.filter { inAny(w, it.tS) }
            val kept = inWindows.filter { it.currentNow != null && it.voltageMv != null }
            val nullDropped = inWindows.size - kept.size
            val failed = failedAtS.count { inAny(w, it) }
            val dropped = nullDropped + failed
            val droppedReason = when {
                dropped == 0 -> null
                failed == 0 -> "$nullDropped sample(s) without a current or voltage reading (the platform gave none): left out, not integrated as 0"
                else -> "$nullDropped sample(s) without a reading, $failed failed read(s): ${failedReason ?: "no reason given"}"
            }
            val idle = kept.filter { w.inIdle(it.tS) }
            val run = kept.filter { w.inRun(it.tS) }
            val span = if (sorted.isEmpty()) "no samples were read at all"
            else "${sorted.size} sample(s) read between ${sorted.first().tS} and ${sorted.last().tS} s"
            if (run.isEmpty()) {
                return BatteryEnergy(false, "no battery samples fell in the run window [${w.runStartS}, ${w.runEndS}] " +
                    "($span; a run shorter than the 10 ms sampling period?): no energy measured", samplesDropped = dropped,
                    droppedReason = droppedReason, window = w)
            }
            if (w.hasIdle && idle.isEmpty()) {
                return BatteryEnergy(false, "no battery samples fell in the idle window [${w.idleStartS}, ${w.idleEndS}) " +
                    "($span): no idle baseline, so no energy measured; idle longer (--idle-s) or sample faster",
                    samplesDropped = dropped, droppedReason = droppedReason, window = w)
            }
            // the host's calibration (energy.py battery_estimate): the median of the idle currents (the run's
            // without an idle window) decides the unit by magnitude and the discharge sign by its sign
            val ref = if (idle.isNotEmpty()) idle else run
            val refName = if (idle.isNotEmpty()) "idle" else "run"
            val medI = ref.map { it.currentNow!! }.sorted()[ref.size / 2]
            val mA = kotlin.math.abs(medI) < BATTERY_MA_BELOW
            val perAmp = if (mA) 1e3 else 1e6
            val unit = if (mA) "mA" else "µA"
            val sign = if (medI < 0) -1 else 1
            val calibration = "current in $unit: |$refName median| ${kotlin.math.abs(medI)} " +
                (if (mA) "< $BATTERY_MA_BELOW (no phone idles under 10 mA)" else ">= $BATTERY_MA_BELOW") +
                "; voltage in mV (BatteryManager EXTRA_VOLTAGE); discharge sign " +
                (if (sign < 0) "negative: the $refName median $medI < 0 (Pixel-style)" else "positive: the $refName median $medI >= 0 (Samsung/Qualcomm-style)")

            fun powerW(s: BatterySample): Double = (sign * s.currentNow!!) / perAmp * (s.voltageMv!! / 1e3)

            val runW = meanPowerW(run, ::powerW)
            val durationS = w.runEndS - w.runStartS
            val idleW = if (idle.isNotEmpty()) meanPowerW(idle, ::powerW) else null
            val idleDurationS = if (w.hasIdle) w.idleEndS!! - w.idleStartS!! else null
            val problems = ArrayList<String>()
            // charging is read from every sample of the windows, those without a current reading too
            fun isCharging(s: BatterySample) = s.status == BATTERY_STATUS_CHARGING || s.status == BATTERY_STATUS_FULL
            fun isPlugged(s: BatterySample) = (s.plugged ?: 0) != 0
            val charging = inWindows.filter(::isCharging)
            val plugged = inWindows.filter(::isPlugged)
            val onCharger = inWindows.count { isCharging(it) || isPlugged(it) }
            if (onCharger > 0) {
                val what = if (plugged.isNotEmpty()) "plugged=${plugged.first().plugged}" else "status ${batteryStatusName(charging.first().status)}"
                problems.add("a charger is connected ($what in $onCharger of ${inWindows.size} samples): " +
                    "the battery current includes the charger's; unplug the phone and measure over Wi-Fi")
            }
            var energyJ: Double? = null
            var energyJReason: String? = null
            val zero = medI == 0L
            if (zero) {
                energyJReason = "the battery current reads 0 (the $refName median): this phone does not report CURRENT_NOW, " +
                    "no energy from it (the raw samples are kept)"
                problems.add(energyJReason)
            }
            if (idleW == null) {
                val why = "no idle baseline was measured (--idle-s 0): only gross_energy_j, which includes the idle power"
                if (energyJReason == null) energyJReason = why
                problems.add(why)
            } else if (!zero) {
                energyJ = (runW - idleW) * durationS
            }
            val status = inWindows.lastOrNull { it.status != null && w.inRun(it.tS) }?.status
                ?: inWindows.lastOrNull { it.status != null }?.status
            val supplyStatus = if (charging.isNotEmpty()) batteryStatusName(charging.first().status) else batteryStatusName(status)
            val chargerOnline = if (inWindows.none { it.plugged != null }) null else plugged.isNotEmpty()
            return BatteryEnergy(
                available = true, reason = null, energyJ = energyJ, energyJReason = energyJReason,
                grossEnergyJ = if (zero) null else runW * durationS, idleW = if (zero) null else idleW,
                runW = if (zero) null else runW, durationS = durationS,
                idleDurationS = idleDurationS, currentUnit = unit, dischargeSign = sign, calibration = calibration,
                reliable = problems.isEmpty(), unreliableReason = if (problems.isEmpty()) null else problems.joinToString("; "),
                rawSamples = kept, idleSamples = idle.size, runSamples = run.size, samplesDropped = dropped,
                droppedReason = droppedReason, supplyStatus = supplyStatus, chargerOnline = chargerOnline, window = w,
            )
        }

        /** Time-weighted mean power over the samples of one window: the trapezoid integral / the time it
         *  spans; one sample (or all at one instant): their plain mean. */
        fun meanPowerW(xs: List<BatterySample>, powerW: (BatterySample) -> Double): Double {
            val spanS = xs.last().tS - xs.first().tS
            if (xs.size < 2 || !(spanS > 0)) return xs.sumOf(powerW) / xs.size
            var energyJ = 0.0
            for (k in 1 until xs.size) {
                energyJ += (powerW(xs[k - 1]) + powerW(xs[k])) / 2 * (xs[k].tS - xs[k - 1].tS)
            }
            return energyJ / spanS
        }
    }
}

/** One line (whitespace runs, newlines included, as one space), as every message in a record must be. */
internal fun oneLineText(message: String): String {
    val out = StringBuilder()
    var space = false
    for (c in message) {
        // Python's str.split() whitespace: Java's isWhitespace + the no-break spaces + NEL
        if (Character.isWhitespace(c) || Character.isSpaceChar(c) || c == '\u0085') {
            space = out.isNotEmpty()
        } else {
            if (space) out.append(' ')
            space = false
            out.append(c)
        }
    }
    return if (out.isEmpty()) "(no message)" else out.toString()
}

/** Runs [tick] every [periodMs] on a daemon thread between [start] and [stop] (fixed rate; a late
 *  tick is not made up in a burst). The battery and thermal loops share it. */
internal class PeriodicLoop(private val name: String, private val periodMs: Long, private val tick: () -> Unit) {
    @Volatile private var running = false
    private var thread: Thread? = null

    init {
        require(periodMs > 0) { "$name: the period must be > 0 ms, got $periodMs" }
    }

    @Synchronized fun start() {
        check(thread == null) { "$name is already running: stop() it before starting it again" }
        running = true
        thread = Thread({ loop() }, name).apply { isDaemon = true; start() }
    }

    private fun loop() {
        val periodNs = periodMs * 1_000_000L
        var nextNs = System.nanoTime()
        while (running) {
            tick()
            nextNs += periodNs
            val waitNs = nextNs - System.nanoTime()
            if (waitNs > 0) {
                // not interrupted by stop(): an interrupt can break a sampler's read (NIO channels close on it)
                try { Thread.sleep(waitNs / 1_000_000L, (waitNs % 1_000_000L).toInt()) } catch (e: InterruptedException) { return }
            } else {
                nextNs = System.nanoTime()
            }
        }
    }

    /** Stops the loop and waits for its last tick to end (so nothing is added after stop returns). */
    @Synchronized fun stop() {
        val t = thread ?: return
        running = false
        t.join(maxOf(2_000L, 20 * periodMs))
        thread = null
    }
}

/** Samples [sampler] every [periodMs] (default 10, the protocol's battery period) on a daemon
 *  thread between [start] and [stop], handing every sample to [integrator]; a read that throws is
 *  counted (dropped, with its message) at [clock]'s time. Mark the windows on [integrator] with the
 *  sampler's clock (default: [monotonicS], CLOCK_MONOTONIC). */
class BatterySamplerLoop(
    private val sampler: BatterySampler,
    val integrator: BatteryEnergyIntegrator = BatteryEnergyIntegrator(),
    val periodMs: Long = 10,
    private val clock: () -> Double = ::monotonicS,
) {
    private val taken = java.util.concurrent.atomic.AtomicInteger()

    /** Samples handed to the integrator so far (failed reads not counted). */
    val samplesTaken: Int get() = taken.get()

    private val loop = PeriodicLoop("edgeprobe-battery-sampler", periodMs) { sampleNow() }

    /** One sample now, on the caller's thread (the loop calls it too). */
    fun sampleNow() {
        try {
            integrator.add(sampler.sample())
            taken.incrementAndGet()
        } catch (e: Exception) {
            integrator.addFailed(clock(), "battery read failed: ${e.javaClass.simpleName}: ${e.message ?: ""}")
        }
    }

    fun start() = loop.start()

    /** Stops sampling; no sample is added after it returns. */
    fun stop() = loop.stop()
}
