package dev.edgeprobe.core

import java.io.File
import java.io.IOException
import java.io.RandomAccessFile
import java.nio.ByteBuffer
import java.nio.charset.CodingErrorAction
import java.util.concurrent.TimeUnit

/** Runs one runner process (server.py `_run`): argv as built by RunArgs, in the work dir, stdin
 *  /dev/null, stdout and stderr to temporary files outside the work dir, the tokens scrubbed from
 *  its environment; killed at its timeout. [tmpDir]: where those files go (the app: its cache dir);
 *  [env]: set on top of this process's environment (the app: LD_LIBRARY_PATH of its native libs),
 *  before the tokens are scrubbed. */
class RunnerProcess(private val tmpDir: File? = null, private val env: Map<String, String> = emptyMap()) {
    companion object {
        /** The most of a run's stdout / stderr sent back (its end); JSON-escaped, both fit a 1 MiB header. */
        const val OUTPUT_TAIL_BYTES = 64 shl 10
        val SCRUBBED_ENV = listOf("EDGEPROBE_TOKEN", "EDGEPROBE_SERVE_TOKEN", "EDGEPROBE_SPLIT_TOKEN")

        /** The last 64 KiB of [f] as UTF-8 (invalid bytes as U+FFFD), with server.py `_tail`'s
         *  "[... N bytes cut ...]" line in front when something was cut. */
        fun tail(f: File): String {
            RandomAccessFile(f, "r").use { raf ->
                val size = raf.length()
                val start = maxOf(0L, size - OUTPUT_TAIL_BYTES)
                val buf = ByteArray((size - start).toInt())
                raf.seek(start)
                raf.readFully(buf)
                val text = Charsets.UTF_8.newDecoder()
                    .onMalformedInput(CodingErrorAction.REPLACE)
                    .onUnmappableCharacter(CodingErrorAction.REPLACE)
                    .decode(ByteBuffer.wrap(buf)).toString()
                return if (size > OUTPUT_TAIL_BYTES) "[... ${size - OUTPUT_TAIL_BYTES} bytes cut ...]\n$text" else text
            }
        }

        /** Java reports a process killed by signal N as 128 + N; Python's Popen as -N, and the host
         *  reads a negative exit code as a crash (session.py). The runners exit 0..3 themselves. */
        fun pythonExitCode(javaCode: Int): Int = if (javaCode in 129..(128 + 64)) -(javaCode - 128) else javaCode
    }

    /** Starts [argv] in [workdir] and waits up to [timeoutS]; IOException when it cannot be started. */
    fun run(argv: List<String>, workdir: File, timeoutS: Double): RunOutcome {
        val out = File.createTempFile("edgeprobe-run-", ".out", tmpDir)
        val err = File.createTempFile("edgeprobe-run-", ".err", tmpDir)
        try {
            val pb = ProcessBuilder(argv)
                .directory(workdir)
                .redirectInput(ProcessBuilder.Redirect.from(File("/dev/null")))
                .redirectOutput(ProcessBuilder.Redirect.to(out))
                .redirectError(ProcessBuilder.Redirect.to(err))
            val childEnv = pb.environment()
            childEnv.putAll(env)
            SCRUBBED_ENV.forEach { childEnv.remove(it) }
            val t0 = System.nanoTime()
            val proc = pb.start()
            var code: Int?
            var timedOut = false
            val finished = try {
                proc.waitFor((timeoutS * 1e9).toLong(), TimeUnit.NANOSECONDS)
            } catch (e: InterruptedException) {
                false
            }
            if (finished) {
                code = pythonExitCode(proc.exitValue())
            } else {
                killTree(proc)
                proc.waitFor()
                code = null
                timedOut = true
            }
            val durationS = (System.nanoTime() - t0) / 1e9
            return RunOutcome(code, tail(out), tail(err), durationS, timedOut)
        } finally {
            out.delete()
            err.delete()
        }
    }

    /** SIGKILL to the runner and, where the platform has ProcessHandle (JVM 9+, not Android), to its
     *  descendants first (collected before the parent dies and they are re-parented). Android has
     *  no ProcessHandle: there only the runner itself is killed. */
    private fun killTree(proc: Process) {
        val descendants: List<Any> = try {
            val list = ArrayList<Any>()
            proc.descendants().forEach { list.add(it) }
            list
        } catch (_: NoSuchMethodError) {
            emptyList()
        } catch (_: NoClassDefFoundError) {
            emptyList()
        } catch (_: UnsupportedOperationException) {
            emptyList()
        }
        proc.destroyForcibly()
        for (d in descendants) {
            try {
                (d as ProcessHandle).destroyForcibly()
            } catch (_: Throwable) {
            }
        }
    }
}

/** The IOException of a runner that could not be started, for the refusal text. */
internal fun IOException.oneLine(): String = (message ?: javaClass.simpleName).lines().first()
