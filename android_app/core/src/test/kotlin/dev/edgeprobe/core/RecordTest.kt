package dev.edgeprobe.core

import org.json.JSONArray
import org.json.JSONObject
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import java.io.File
import java.io.IOException

class RecordTest {
    /** android_app/build/test-results/records ($EDGEPROBE_RECORDS_DIR if set), found from where these
     *  test classes were loaded (build.sh: android_app/build/test-classes), else from the working
     *  directory. The lead's pytest feeds the records written there to the host's parser. */
    private fun recordsDir(): File {
        System.getenv("EDGEPROBE_RECORDS_DIR")?.let { return File(it).apply { mkdirs() } }
        val loadedFrom = try { File(RecordTest::class.java.protectionDomain.codeSource.location.toURI()) } catch (e: Exception) { null }
        var b: File? = loadedFrom
        while (b != null) {
            if (b.name == "build" && File(b.parentFile, "core/src").isDirectory) {
                return File(b, "test-results/records").apply { mkdirs() }
            }
            b = b.parentFile
        }
        var d: File? = File(System.getProperty("user.dir")).absoluteFile
        while (d != null) {
            val app = when {
                File(d, "android_app/core/src").isDirectory -> File(d, "android_app")
                d.name == "android_app" && File(d, "core/src").isDirectory -> d
                else -> null
            }
            if (app != null) return File(app, "build/test-results/records").apply { mkdirs() }
            d = d.parentFile
        }
        throw IllegalStateException("run the tests from inside the repository (no android_app/ above ${System.getProperty("user.dir")})")
    }

    private val runner = RecordRunner(version = "0.1.0", runtimeVersion = "0.7.0", delegate = "xnnpack")
    private val iterationNs = listOf(1_234_567L, 5_000_000_000L, 987_654L, Long.MAX_VALUE / 2)

    private fun energy(): JSONObject {
        val integ = BatteryEnergyIntegrator()
        for (k in 0..200) {
            integ.add(BatterySample(k * 0.01, if (k < 100) -310_000L else -920_000L, 3_880L, BATTERY_STATUS_DISCHARGING, 0))
        }
        integ.idleStart(0.0)
        integ.runStart(1.0)
        integ.runEnd(2.0)
        return integ.result().toJson()
    }

    private fun thermal(): JSONObject = ThermalLog().apply {
        before(ThermalReading(0.0, 0, 0.3)); sample(ThermalReading(1.5, 1, Double.NaN)); after(ThermalReading(2.0, 1, Double.NaN))
    }.toJson()

    private fun okWriter(): RecordWriter = RecordWriter(runner, "model.pte", 4_096L).apply {
        config = RecordConfig(method = "forward", warmup = 3, iterations = 4, minSeconds = 0.0, maxIterations = null,
            threadsRequested = 0, threadsUsed = 4, loader = "Module.load", etdump = false)
        verification = RecordVerification(true, true, 1, 1e-3, 1e-3, 1.5e-6, null)
        timing = RecordTiming(loadMs = 12.5, firstInferenceMs = 3.25, iterationNs = iterationNs)
        memory = RecordMemory(baselineRssBytes = 50_000_000L, baselineHwmBytes = 51_000_000L, peakRssBytes = 80_000_000L,
            swapBytes = null, hwmReset = false, peakRssDefinition = "peak_rss_bytes - baseline_hwm_bytes: a lower bound")
        energyBlock = energy()
        thermalBlock = thermal()
        environment = RecordEnvironment("Linux", "5.10.1-android12", "aarch64", null, 8, "localhost")
    }

    /** PROTOCOL.md's record: every key, in its nesting. */
    private val protocolKeys = mapOf(
        "" to setOf("schema_version", "status", "error", "runner", "artifact", "config", "verification", "timing", "memory",
            "energy", "thermal", "environment"),
        "runner" to setOf("flavor", "version", "runtime", "runtime_version", "build", "build_reason", "delegate"),
        "artifact" to setOf("path", "size_bytes"),
        "config" to setOf("method", "warmup", "iterations", "min_seconds", "max_iterations", "threads_requested",
            "threads_used", "loader", "etdump"),
        "verification" to setOf("checked", "passed", "testsets", "rtol", "atol", "max_abs_error", "reason"),
        "timing" to setOf("load_ms", "first_inference_ms", "iteration_ns"),
        "memory" to setOf("baseline_rss_bytes", "baseline_hwm_bytes", "peak_rss_bytes", "swap_bytes", "source",
            "hwm_reset", "peak_rss_definition"),
        "environment" to setOf("os", "kernel", "machine", "cpu_model", "cores", "hostname"),
    )

    private fun keys(o: JSONObject): Set<String> = o.keys().asSequence().toSet()

    private fun writeAndRead(record: JSONObject, name: String): JSONObject {
        val file = File(recordsDir(), name)
        RecordWriter.write(record, file)
        assertFalse(File(file.path + ".tmp").exists(), "a temp file was left behind")
        val text = file.readText(Charsets.UTF_8)
        assertEquals(1, text.count { it == '\n' }, "one JSON line")
        return JSONObject(text)
    }

    @Test
    fun okRecordRoundTripsEveryField() {
        val back = writeAndRead(okWriter().ok(), "ok.json")
        for ((block, expected) in protocolKeys) {
            val o = if (block == "") back else back.getJSONObject(block)
            assertEquals(expected, keys(o) - setOf("missing"), "keys of ${block.ifEmpty { "the record" }}")
        }
        assertEquals(1, back.get("schema_version"))
        assertEquals("ok", back.getString("status"))
        assertTrue(back.isNull("error"))
        val r = back.getJSONObject("runner")
        assertEquals(listOf("app", "0.1.0", "executorch", "0.7.0", "xnnpack"),
            listOf("flavor", "version", "runtime", "runtime_version", "delegate").map { r.getString(it) })
        assertTrue(r.isNull("build"))
        assertTrue(r.getString("build_reason").isNotEmpty(), "a null build says why")
        assertEquals("model.pte", back.getJSONObject("artifact").getString("path"))
        assertEquals(4_096L, back.getJSONObject("artifact").getLong("size_bytes"))

        val c = back.getJSONObject("config")
        assertEquals(3, c.get("warmup"))
        assertEquals(4, c.get("iterations"))
        assertEquals(0.0, c.getDouble("min_seconds"))
        assertTrue(c.has("max_iterations") && c.isNull("max_iterations"), "max_iterations null stays null (no cap)")
        assertEquals(0, c.get("threads_requested"))
        assertEquals(4, c.get("threads_used"))
        assertEquals("Module.load", c.getString("loader"))
        assertEquals(false, c.get("etdump"))

        val v = back.getJSONObject("verification")
        assertEquals(true, v.get("checked"))
        assertEquals(true, v.get("passed"))
        assertEquals(1, v.get("testsets"))
        assertEquals(1e-3, v.getDouble("rtol"))
        assertEquals(1.5e-6, v.getDouble("max_abs_error"))
        assertTrue(v.isNull("reason"))

        val t = back.getJSONObject("timing")
        assertEquals(12.5, t.getDouble("load_ms"))
        assertEquals(3.25, t.getDouble("first_inference_ms"))
        val ns = t.getJSONArray("iteration_ns")
        assertEquals(iterationNs.size, ns.length())
        for (k in iterationNs.indices) {
            val x = ns.get(k)
            assertTrue(x is Int || x is Long, "iteration_ns[$k] parsed as ${x.javaClass.simpleName}, not an integer")
            assertEquals(iterationNs[k], (x as Number).toLong())
        }

        val m = back.getJSONObject("memory")
        assertEquals(50_000_000L, m.getLong("baseline_rss_bytes"))
        assertEquals(80_000_000L, m.getLong("peak_rss_bytes"))
        assertTrue(m.has("swap_bytes") && m.isNull("swap_bytes"))
        assertEquals(false, m.get("hwm_reset"))
        assertEquals("/proc/self/status VmHWM", m.getString("source"))

        val e = back.getJSONObject("energy")
        assertEquals(true, e.get("available"))
        assertEquals("battery", e.getString("meter"))
        assertEquals(201, e.getJSONArray("raw_samples").length())
        val sent = energy()
        assertEquals(sent.getDouble("energy_j"), e.getDouble("energy_j"))
        assertEquals(-920_000L, e.getJSONArray("raw_samples").getJSONArray(150).getLong(1))
        for (key in listOf("idle_start_s", "idle_end_s", "run_start_s", "run_end_s")) {
            assertEquals(sent.getJSONObject("window").getDouble(key), e.getJSONObject("window").getDouble(key))
        }

        val th = back.getJSONObject("thermal")
        assertEquals(1, th.getInt("worst_status"))
        assertEquals(0.3, th.getDouble("headroom_before"))
        assertTrue(th.isNull("headroom_after"), "NaN headroom is null")

        val env = back.getJSONObject("environment")
        assertEquals(8, env.getInt("cores"))
        assertTrue(env.has("cpu_model") && env.isNull("cpu_model"))
        assertFalse(back.has("missing"), "nothing was missing")
    }

    @Test
    fun errorRecordIsOneLineAndKeepsNullsWithReasons() {
        val w = RecordWriter(runner, "model.pte", null)
        w.config = RecordConfig("forward", 3, 20, 0.5, 100, 2, null, "Module.load", false, threadsNote = "the\nlibrary picks its pool")
        w.verification = RecordVerification(true, false, 2, 1e-3, 1e-3, Double.NaN, "testset 1: output 0 differs")
        w.timing = RecordTiming(1.0, 2.0, emptyList())
        w.memory = null
        w.missing("memory", "the app cannot reset VmHWM\nof its own process")
        val back = writeAndRead(w.error("output_mismatch", "testset 1:\n output 0 differs\r\n\tfrom the expected output\u2028(max |a-e| = 0.5)"),
            "error.json")
        assertEquals("error", back.getString("status"))
        val err = back.getJSONObject("error")
        assertEquals(setOf("code", "message"), keys(err))
        assertEquals("output_mismatch", err.getString("code"))
        val message = err.getString("message")
        assertEquals("testset 1: output 0 differs from the expected output (max |a-e| = 0.5)", message)
        assertFalse(message.any { it == '\n' || it == '\r' || it == '\u2028' })
        assertTrue(back.isNull("timing"), "an output mismatch reports no timing")
        assertTrue(back.isNull("memory"))
        assertEquals("the app cannot reset VmHWM of its own process", back.getJSONObject("missing").getString("memory"))
        val c = back.getJSONObject("config")
        assertEquals(100, c.get("max_iterations"))
        assertEquals(0.5, c.getDouble("min_seconds"))
        assertTrue(c.isNull("threads_used"))
        assertEquals("the library picks its pool", c.getString("threads_note"))
        assertTrue(back.getJSONObject("verification").isNull("max_abs_error"), "NaN max_abs_error is null")
        assertEquals(false, back.getJSONObject("verification").get("passed"))
        for (block in listOf("energy", "thermal")) {
            val b = back.getJSONObject(block)
            assertEquals(false, b.get("available"))
            assertFalse(b.getString("reason").contains('\n'))
        }
        assertTrue(back.getJSONObject("artifact").isNull("size_bytes"))
        assertEquals("app", back.getJSONObject("runner").getString("flavor"))
    }

    @Test
    fun errorRecordKeepsTimedIterationsForOtherCodes() {
        val w = okWriter()
        val rec = w.error("execute_failed", "execute failed after 4 iterations")
        assertEquals(iterationNs.size, rec.getJSONObject("timing").getJSONArray("iteration_ns").length())
        w.timing = RecordTiming(1.0, null, emptyList())
        assertTrue(w.error("execute_failed", "x").isNull("timing"), "timing without iterations is dropped, as the runners do")
        assertThrows(IllegalArgumentException::class.java) { w.error("Bad Code", "x") }
    }

    @Test
    fun okNeedsTimedIterations() {
        val w = okWriter()
        w.timing = RecordTiming(1.0, 2.0, emptyList())
        assertThrows(IllegalStateException::class.java) { w.ok() }
        w.timing = null
        assertThrows(IllegalStateException::class.java) { w.ok() }
        w.timing = RecordTiming(1.0, 2.0, listOf(5L, 0L))
        assertThrows(IllegalStateException::class.java) { w.ok() }
    }

    @Test
    fun writeIsAtomicAndFailsInOneLine(@TempDir dir: File) {
        val path = File(dir, "record.json")
        path.writeText("old")
        RecordWriter.write(okWriter().ok(), path)
        assertEquals("ok", JSONObject(path.readText()).getString("status"))
        assertEquals(listOf("record.json"), dir.list()!!.toList(), "only the record is left")
        val nowhere = File(dir, "missing-dir/record.json")
        val e = assertThrows(IOException::class.java) { RecordWriter.write(okWriter().ok(), nowhere) }
        assertFalse(e.message!!.contains('\n'))
        assertTrue(e.message!!.contains(nowhere.path), e.message)
        assertFalse(File(nowhere.path + ".tmp").exists())
        // the rename fails after the temp file was written (a non-empty directory in the way): no temp left
        val blocked = File(dir, "blocked.json").apply { mkdirs() }
        File(blocked, "x").writeText("x")
        assertThrows(IOException::class.java) { RecordWriter.write(okWriter().ok(), blocked) }
        assertFalse(File(blocked.path + ".tmp").exists(), "the temp file was left behind")
    }

    @Test
    fun buildNamesItsCompilers() {
        val w = okWriter()
        val r = RecordWriter(RecordRunner("0.1.0", "0.7.0", "vulkan",
            RuntimeBuild("libexecutorch.so", listOf("clang version 18", "GCC: (GNU) 13"))), "m.pte", 1L)
        r.config = w.config; r.verification = w.verification; r.timing = w.timing
        val b = r.ok().getJSONObject("runner")
        assertTrue(b.isNull("build_reason"))
        assertEquals("vulkan", b.getString("delegate"))
        val compilers: JSONArray = b.getJSONObject("build").getJSONArray("compilers")
        assertEquals(listOf("clang version 18", "GCC: (GNU) 13"), (0 until compilers.length()).map { compilers.getString(it) })
        assertEquals(".comment", b.getJSONObject("build").getString("source"))
    }
}
