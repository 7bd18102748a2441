package dev.edgeprobe.core

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import java.io.File

/** RunArgs against server.py build_argv: the table of tests/test_wire_security.py, the same texts. */
class RunArgsTest {
    private val work = File("/w")

    /** As the test's confine: a path strictly inside, else a refusal that names the work dir. */
    private fun confine(p: Any?): File {
        if (p !is String || p.contains("..") || p.startsWith("/")) throw Refused("path leaves the runner's work dir")
        return File(work, p)
    }

    /** As the Python server calls it: runners native and python, native-only keys for native only. */
    private fun py(runner: String, args: Any?): List<String> =
        RunArgs.buildArgv(runner, args, ::confine, listOf("native", "python"), setOf("native"))

    private fun refusal(runner: String, args: Any?): String =
        assertThrows(Refused::class.java) { py(runner, args) }.message!!

    @Test fun theArgvIsBuiltInTableOrder() {
        // the request's key order is not the argv's: the table's is
        val args = linkedMapOf<String, Any?>("output" to "jobs/r.json", "method" to "forward", "min_seconds" to 0.5,
            "iterations" to 20L, "warmup" to 3L, "vectors" to "jobs/v.epv", "model" to "jobs/m.pte")
        assertEquals(listOf("--model", "/w/jobs/m.pte", "--vectors", "/w/jobs/v.epv", "--warmup", "3", "--iterations", "20",
            "--min-seconds", "0.5", "--method", "forward", "--output", "/w/jobs/r.json"), py("python", args))
        // python3: build_argv('python', {'model': 'm', 'min_seconds': 1e-05, 'rtol': 60, 'atol': 1e9}, ...)
        assertEquals(listOf("--model", "/w/m", "--min-seconds", "1e-05", "--rtol", "60.0", "--atol", "1000000000.0"),
            py("python", linkedMapOf("model" to "m", "min_seconds" to 1e-05, "rtol" to 60L, "atol" to 1e9)))
    }

    @Test fun theRefusalsOfTestWireSecurity() {
        val target = "/tmp/pwned"
        val bad = listOf(
            linkedMapOf("model" to "m", "output=$target" to 1L) to "does not take",
            linkedMapOf("model" to "m", "out" to target) to "does not take",
            linkedMapOf("model" to "m", "--output" to target) to "does not take",
            linkedMapOf("model" to "/etc/passwd") to "work dir",
            linkedMapOf("model" to "m", "output" to target) to "work dir",
            linkedMapOf("model" to "../../x") to "work dir",
            linkedMapOf("model" to "m", "method" to "--output=$target") to "'method' must be",
            linkedMapOf("model" to "m", "warmup" to "1 --output $target") to "'warmup' must be",
            linkedMapOf("model" to "m", "warmup" to true) to "'warmup' must be",
            linkedMapOf("model" to "m", "iterations" to 0L) to "'iterations' must be",
            linkedMapOf("model" to "m", "rtol" to Double.NaN) to "'rtol' must be",
            linkedMapOf("model" to "m", "split_name" to "-x") to "native runner only",
            linkedMapOf("vectors" to "v") to "needs 'model'",
        )
        for ((args, why) in bad) {
            val msg = refusal("python", args)
            assertTrue(why in msg, "$args: $msg")
        }
        assertTrue("JSON object" in refusal("python", "--model m"))
        assertEquals("run needs runner native or python, not 'sh'", refusal("sh", linkedMapOf("model" to "m")))
    }

    @Test fun theExactTextsOfPythonsRefusals() {
        // python3: str(exc) of build_argv for the same requests
        assertEquals("run argument 'warmup' must be an integer in 0..1e+06, not '1000000000000000000000000000000'",
            refusal("python", linkedMapOf("model" to "m", "warmup" to java.math.BigInteger.TEN.pow(30))))
        assertEquals("run argument 'warmup' must be an integer in 0..1e+06, not \"[1, 'a', {'k': None}]\"",
            refusal("python", linkedMapOf("model" to "m", "warmup" to listOf(1L, "a", linkedMapOf("k" to null)))))
        assertEquals("'split_timeout_s' is for the native runner only",
            refusal("python", linkedMapOf("model" to "m", "split_timeout_s" to 0L)))
        assertEquals("run argument 'warmup' must be an integer in 0..1e+06, not 'True'",
            refusal("python", linkedMapOf("model" to "m", "warmup" to true)))
        assertEquals("run argument 'threads' must be an integer in 0..4096, not '3.0'",
            refusal("python", linkedMapOf("model" to "m", "threads" to 3.0)))  // a float is not an int, even 3.0
        assertEquals("run argument 'rtol' must be a number in 0..1e+09, not 'nan'",
            refusal("python", linkedMapOf("model" to "m", "rtol" to Double.NaN)))
        assertEquals("run argument 'idle_s' must be a number in 0..3600, not 'inf'",
            refusal("python", linkedMapOf("model" to "m", "idle_s" to Double.POSITIVE_INFINITY)))
        assertEquals("run argument 'min_seconds' must be a number in 0..86400, not 'False'",
            refusal("python", linkedMapOf("model" to "m", "min_seconds" to false)))
        assertEquals("run does not take '--output', 'out'; the run arguments are ${RunArgs.RUN_ARGS.keys.joinToString(", ")}",
            refusal("python", linkedMapOf("model" to "m", "out" to "x", "--output" to "y")))
        assertTrue(RunArgs.RUN_ARGS.keys.joinToString(", ").startsWith("model, vectors, warmup, iterations, min_seconds, max_iterations"))
        assertEquals("run argument 'split_encoding' must be one of fp32, fp16, int8, not 'bf9'",
            refusal("native", linkedMapOf("model" to "m", "split_encoding" to "bf9")))
    }

    @Test fun nativeSplitArgsAreCheckedAndConfined() {
        // tests/test_wire_security.py::test_native_split_args_are_confined_too
        val argv = py("native", linkedMapOf("model" to "m", "split_server" to "10.0.0.1:9000", "split_token_file" to "jobs/t",
            "split_name" to "edgeprobe-split-1-ab", "split_send" to 2L, "split_encoding" to "int8",
            "split_send_inputs" to true, "split_timeout_s" to 60L))
        assertEquals(listOf("--model", "/w/m", "--split-server", "10.0.0.1:9000", "--split-token-file", "/w/jobs/t",
            "--split-name", "edgeprobe-split-1-ab", "--split-send", "2", "--split-encoding", "int8",
            "--split-send-inputs", "1", "--split-timeout-s", "60.0"), argv)
        for ((key, value) in listOf("split_server" to "-x:1", "split_server" to "h:99999", "split_server" to "h:0",
            "split_encoding" to "bf9", "split_token_file" to "/etc/shadow", "split_send_inputs" to "1")) {
            assertThrows(Refused::class.java, { py("native", linkedMapOf("model" to "m", key to value)) }, "$key=$value")
        }
        assertEquals(listOf("--model", "/w/m", "--split-server", "[::1]:9000"),
            py("native", linkedMapOf("model" to "m", "split_server" to "[::1]:9000", "split_send_inputs" to false)))
    }

    @Test fun thisServersRunnersTakeTheNativeKeysInBoth() {
        // the server's own call: runners native and app; app gets the native runner's argv
        val args = linkedMapOf<String, Any?>("model" to "m", "split_server" to "none")
        assertEquals(listOf("--model", "/w/m", "--split-server", "none"), RunArgs.buildArgv("app", args, ::confine))
        assertEquals("run needs runner native or app, not 'sh'",
            assertThrows(Refused::class.java) { RunArgs.buildArgv("sh", args, ::confine) }.message)
        assertEquals("run needs runner native, not 'app'",
            assertThrows(Refused::class.java) { RunArgs.buildArgv("app", args, ::confine, listOf("native")) }.message)
    }
}
