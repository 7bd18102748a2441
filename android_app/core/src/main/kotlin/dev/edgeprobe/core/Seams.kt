package dev.edgeprobe.core

import java.io.File

// The seams between the pure-JVM core and what only Android provides. The app module implements
// them with BatteryManager, PowerManager, NsdManager and the ExecuTorch Android library; the JVM
// build and the tests implement them with plain files and fakes. Nothing here imports android.*.

/** One battery reading as the platform gave it: nothing converted, nothing guessed.
 *  [currentNow] is BatteryManager.BATTERY_PROPERTY_CURRENT_NOW (µA on most phones, but the sign and
 *  sometimes the unit differ by vendor); [voltageMv] is the sticky ACTION_BATTERY_CHANGED intent's
 *  EXTRA_VOLTAGE (mV); [status] its EXTRA_STATUS (BatteryManager.BATTERY_STATUS_*), [plugged] its
 *  EXTRA_PLUGGED (0 = on battery). A value the platform did not give is null. */
data class BatterySample(
    val tS: Double,
    val currentNow: Long?,
    val voltageMv: Long?,
    val status: Int?,
    val plugged: Int?,
)

/** Reads one [BatterySample] now (the app: BatteryManager; tests: a recorded trace). */
fun interface BatterySampler {
    fun sample(): BatterySample
}

/** One thermal reading: PowerManager.getCurrentThermalStatus() (THERMAL_STATUS_NONE = 0 ..
 *  THERMAL_STATUS_SHUTDOWN = 6) and getThermalHeadroom(forecastSeconds) (null where the platform
 *  returns NaN or is older than API 30). */
data class ThermalReading(val tS: Double, val status: Int?, val headroom: Double?)

fun interface ThermalReader {
    fun read(): ThermalReading
}

/** Makes the server findable: the app uses NsdManager (`_edgeprobe._tcp`), a JVM host nothing. */
interface Advertiser {
    fun advertise(name: String, port: Int, txt: Map<String, String>)
    fun stop()
}

/** What a runner process (or the app's in-process runner) left when it ended. [exitCode] is null
 *  when it was killed (timeout); stdout and stderr are their last 64 KiB. */
data class RunOutcome(
    val exitCode: Int?,
    val stdout: String,
    val stderr: String,
    val durationS: Double,
    val timedOut: Boolean,
)

/** The app's in-process runner on the ExecuTorch Android library (runner name "app" on the wire).
 *  It takes the runner argv the server built and checked (PROTOCOL.md's flags, paths already
 *  confined to the work dir) and writes the same versioned record as the native runner to --output.
 *  [delegates]: the ExecuTorch backends this build of the library carries ("xnnpack", "vulkan", "qnn"). */
interface InProcessRunner {
    val delegates: List<String>
    fun run(argv: List<String>, workdir: File, timeoutS: Double): RunOutcome
}
