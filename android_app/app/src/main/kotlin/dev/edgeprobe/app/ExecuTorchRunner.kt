package dev.edgeprobe.app

import dev.edgeprobe.core.BatteryEnergyIntegrator
import dev.edgeprobe.core.BatterySampler
import dev.edgeprobe.core.BatterySamplerLoop
import dev.edgeprobe.core.InProcessRunner
import dev.edgeprobe.core.RecordConfig
import dev.edgeprobe.core.RecordMemory
import dev.edgeprobe.core.RecordRunner
import dev.edgeprobe.core.RecordTiming
import dev.edgeprobe.core.RecordVerification
import dev.edgeprobe.core.RecordWriter
import dev.edgeprobe.core.RunOutcome
import dev.edgeprobe.core.ThermalLog
import dev.edgeprobe.core.ThermalReader
import dev.edgeprobe.core.ThermalSamplerLoop
import org.json.JSONObject
import org.pytorch.executorch.Module
import java.io.File
import java.util.concurrent.atomic.AtomicBoolean
import java.util.concurrent.atomic.AtomicReference

/** The in-process runner (runner "app") on the ExecuTorch Android library: the runner argv of
 *  PROTOCOL.md (built and confined by core's RunArgs) in, the same versioned record out, written with
 *  core's RecordWriter. It follows PROTOCOL.md's "Order of work": baseline, load (Module.load +
 *  loadMethod), first inference, warmup, meters and the idle window, the timed loop (one
 *  System.nanoTime sample per execute), memory after, ETDump. Inputs are the runtime's ones
 *  (Module.execute with no inputs, as minibench runs); test vectors and split mode are the native
 *  runner's (an `unsupported` record says so). [delegate] is the flavor's (BuildConfig.DELEGATE). */
class ExecuTorchRunner(
    private val delegate: String,
    private val runtimeVersion: String,
    private val appVersion: String,
    private val battery: BatterySampler?,
    private val thermal: ThermalReader?,
) : InProcessRunner {
    override val delegates: List<String> = listOf(delegate)

    /** A forward call cannot be interrupted: a run past its timeout is told to stop at its next
     *  iteration, and a new run is refused until it has. */
    private val running = AtomicReference<Thread?>(null)

    override fun run(argv: List<String>, workdir: File, timeoutS: Double): RunOutcome {
        val t0 = System.nanoTime()
        val previous = running.get()
        if (previous != null && previous.isAlive) {
            return RunOutcome(1, "", "the previous in-process run is still going (a forward call cannot be " +
                "interrupted): wait for it, or restart the app's service\n", 0.0, false)
        }
        val stop = AtomicBoolean(false)
        val result = AtomicReference<Pair<Int, String>?>(null)
        val stderr = StringBuffer()
        val worker = Thread({
            result.set(try {
                measure(argv, workdir, stop, stderr)
            } catch (e: Throwable) {
                stderr.append("internal error: ${e.javaClass.simpleName}: ${e.message}\n")
                Pair(1, "")
            })
        }, "edgeprobe-executorch-run")
        worker.isDaemon = true
        running.set(worker)
        worker.start()
        worker.join((timeoutS * 1000).toLong().coerceAtLeast(1))
        val durationS = (System.nanoTime() - t0) / 1e9
        if (worker.isAlive) {
            stop.set(true)
            return RunOutcome(null, "", stderr.toString() + "timed out after ${timeoutS}s (the run stops at its next " +
                "iteration)\n", durationS, true)
        }
        val (code, stdout) = result.get() ?: Pair(1, "")
        return RunOutcome(code, stdout, stderr.toString(), durationS, false)
    }

    /** One measurement: (exit code, stdout). Exit codes as PROTOCOL.md: 0 record written, 1 internal
     *  error (record written), 2 usage, 3 the record could not be written. */
    private fun measure(argv: List<String>, workdir: File, stop: AtomicBoolean, stderr: StringBuffer): Pair<Int, String> {
        val args = try {
            Args.parse(argv, workdir)
        } catch (e: IllegalArgumentException) {
            stderr.append("usage: runner app --model PATH [PROTOCOL.md flags]: ${e.message}\n")
            val out = argv.zipWithNext().firstOrNull { it.first == "--output" }?.second
                ?.let { if (File(it).isAbsolute) it else File(workdir, it).path }
            if (out != null) {
                val w = RecordWriter(runnerInfo(), null, null)
                emit(w.error("usage", e.message ?: "bad arguments"), out, stderr) ?: return Pair(3, "")
            }
            return Pair(2, "")
        }
        val model = File(args.model)
        val w = RecordWriter(runnerInfo(), args.model, if (model.isFile) model.length() else null)
        w.config = RecordConfig(
            method = args.method, warmup = args.warmup, iterations = args.iterations, minSeconds = args.minSeconds,
            maxIterations = args.maxIterations.takeIf { it > 0 }, threadsRequested = args.threads,
            threadsUsed = args.threads.takeIf { it > 0 }, loader = "mmap", etdump = false,
            threadsNote = if (args.threads > 0) "as set through Module.load(numThreads); the Android API does not read the pool size back"
            else "the runtime's default pool (Module.load numThreads 0): the Android API does not report its size",
        )
        val record = try {
            timed(args, w, stop, stderr)
        } catch (e: RunFailure) {
            w.error(e.code, e.message ?: e.code)
        } catch (e: Exception) {
            stderr.append("internal error: ${e.javaClass.simpleName}: ${e.message}\n")
            val r = w.error("internal_error", "${e.javaClass.simpleName}: ${e.message}")
            return Pair(if (emit(r, args.output, stderr) == null) 3 else 1, if (args.output == null) "$r\n" else "")
        }
        emit(record, args.output, stderr) ?: return Pair(3, "")
        return Pair(0, if (args.output == null) "$record\n" else "")
    }

    private fun timed(args: Args, w: RecordWriter, stop: AtomicBoolean, stderr: StringBuffer): JSONObject {
        if (args.vectors != null) throw RunFailure("unsupported", "the app's in-process runner does not check test vectors yet: run without vectors, or with runner native")
        if (args.saveOutputs != null) throw RunFailure("unsupported", "--save-outputs is the native runner's: drop it, or use runner native")
        if (args.split) throw RunFailure("unsupported", "split mode is the native runner's: use runner native")
        val resetFailed = ProcMemory.resetHwm()
        val base = ProcMemory.status()
        fun memory(after: Map<String, Long>?) = RecordMemory(
            baselineRssBytes = base["VmRSS"], baselineHwmBytes = base["VmHWM"], peakRssBytes = after?.get("VmHWM"),
            swapBytes = after?.get("VmSwap"), hwmReset = resetFailed == null, peakRssDefinition = ProcMemory.peakRssDefinition(resetFailed))
        w.memory = memory(null)
        if (!File(args.model).canRead()) throw RunFailure("load_failed", "model file ${args.model} does not exist or is unreadable")

        val loadStart = System.nanoTime()
        val module = try {
            Module.load(args.model, Module.LOAD_MODE_MMAP, args.threads).also { it.loadMethod(args.method) }
        } catch (e: RuntimeException) {
            throw RunFailure("load_failed", "ExecuTorch could not load ${args.model} method ${args.method}: ${e.message}")
        }
        try {
            val loadMs = (System.nanoTime() - loadStart) / 1e6
            val firstStart = System.nanoTime()
            execute(module, args.method)
            val firstMs = (System.nanoTime() - firstStart) / 1e6
            w.verification = RecordVerification.unchecked("no test vectors given; inputs are the runtime's ones (Module.execute with no inputs)")
            w.timing = RecordTiming(loadMs, firstMs, emptyList())
            repeat(args.warmup) { execute(module, args.method) }

            val log = ThermalLog()
            val thermalLoop = thermal?.let { ThermalSamplerLoop(it, log) }
            val integrator = BatteryEnergyIntegrator()
            val batteryLoop = battery?.let { BatterySamplerLoop(it, integrator, clock = ::elapsedRealtimeS) }
            thermal?.let { log.before(it.read()) }
            thermalLoop?.start()
            batteryLoop?.start()
            val samples = ArrayList<Long>()
            try {
                if (args.idleS > 0) {
                    integrator.idleStart(elapsedRealtimeS())
                    Thread.sleep((args.idleS * 1000).toLong())
                }
                integrator.runStart(elapsedRealtimeS())
                val loopStart = System.nanoTime()
                while (!stop.get()) {
                    val n = samples.size
                    if (args.maxIterations > 0 && n >= args.maxIterations) break
                    if (n >= args.iterations && (System.nanoTime() - loopStart) / 1e9 >= args.minSeconds) break
                    val s = System.nanoTime()
                    execute(module, args.method)
                    samples.add(System.nanoTime() - s)
                }
                integrator.runEnd(elapsedRealtimeS())
            } finally {
                batteryLoop?.stop()
                thermalLoop?.stop()
            }
            thermal?.let { log.after(it.read()) }
            if (stop.get()) throw RunFailure("execute_failed", "stopped at the run's timeout after ${samples.size} timed iterations")
            w.timing = RecordTiming(loadMs, firstMs, samples)
            w.memory = memory(ProcMemory.status())
            if (battery != null) w.energyBlock = integrator.result().toJson()
            if (thermal != null) w.thermalBlock = log.toJson()
            if (args.etdump != null) {
                val written = module.etdump(args.etdump)
                if (!written) stderr.append("ETDump not written to ${args.etdump}: this ExecuTorch library was built without ETDump\n")
                w.config = w.config?.copy(etdump = written)
            }
            return w.ok()
        } finally {
            module.destroy()
        }
    }

    private fun execute(module: Module, method: String) {
        try {
            module.execute(method)
        } catch (e: RuntimeException) {
            throw RunFailure("execute_failed", "ExecuTorch failed to execute $method: ${e.message}")
        }
    }

    private fun runnerInfo() = RecordRunner(version = appVersion, runtimeVersion = runtimeVersion, delegate = delegate)

    /** Writes [record] to [output] (or nothing: the caller prints it); null when it could not be written. */
    private fun emit(record: JSONObject, output: String?, stderr: StringBuffer): Unit? {
        if (output == null) return Unit
        return try {
            RecordWriter.write(record, File(output))
        } catch (e: java.io.IOException) {
            stderr.append("${e.message}\n")
            null
        }
    }

    private class RunFailure(val code: String, message: String) : Exception(message)

    /** The runner flags of PROTOCOL.md "Arguments", as core's RunArgs builds them (every flag takes a value). */
    private data class Args(
        val model: String, val vectors: String?, val warmup: Int, val iterations: Int, val minSeconds: Double,
        val maxIterations: Int, val idleS: Double, val threads: Int, val method: String, val output: String?,
        val etdump: String?, val saveOutputs: String?, val split: Boolean,
    ) {
        companion object {
            private val KNOWN = setOf("model", "vectors", "warmup", "iterations", "min-seconds", "max-iterations", "idle-s",
                "threads", "rtol", "atol", "method", "output", "etdump", "save-outputs")

            /** [argv] as PROTOCOL.md's flags; a relative path is the work dir's (the server gives absolute ones). */
            fun parse(argv: List<String>, workdir: File): Args {
                val v = HashMap<String, String>()
                var i = 0
                while (i < argv.size) {
                    val flag = argv[i]
                    require(flag.startsWith("--") && i + 1 < argv.size) { "expected --FLAG VALUE at ${flag.take(40)}" }
                    v[flag.removePrefix("--")] = argv[i + 1]
                    i += 2
                }
                val unknown = v.keys.filter { it !in KNOWN && !it.startsWith("split-") }
                require(unknown.isEmpty()) { "unknown flag(s) ${unknown.joinToString { "--$it" }}" }
                fun int(k: String, d: Int) = v[k]?.let { it.toIntOrNull() ?: throw IllegalArgumentException("--$k needs an integer, not $it") } ?: d
                fun path(k: String) = v[k]?.let { if (File(it).isAbsolute) it else File(workdir, it).path }
                fun num(k: String, d: Double) = v[k]?.let { it.toDoubleOrNull() ?: throw IllegalArgumentException("--$k needs a number, not $it") } ?: d
                val args = Args(
                    model = path("model") ?: throw IllegalArgumentException("--model PATH is required"),
                    vectors = path("vectors"), warmup = int("warmup", 3), iterations = int("iterations", 20),
                    minSeconds = num("min-seconds", 0.0), maxIterations = int("max-iterations", 0), idleS = num("idle-s", 0.0),
                    threads = int("threads", 0), method = v["method"] ?: "forward", output = path("output"),
                    etdump = path("etdump"), saveOutputs = path("save-outputs"), split = v.keys.any { it.startsWith("split-") },
                )
                require(args.maxIterations == 0 || args.maxIterations >= args.iterations) {
                    "--max-iterations ${args.maxIterations} is below --iterations ${args.iterations}"
                }
                return args
            }
        }
    }
}
