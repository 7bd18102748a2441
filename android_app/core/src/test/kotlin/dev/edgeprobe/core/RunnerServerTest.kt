package dev.edgeprobe.core

import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import java.io.File
import java.net.Socket
import java.nio.file.Files
import java.nio.file.attribute.PosixFilePermission
import java.security.MessageDigest
import java.util.Random

/** The runner service over real loopback sockets: confinement, push/pull, quota, run, info. */
class RunnerServerTest {
    companion object {
        const val TOKEN = "runner-token-0123456789"
        /** tests/test_wire_security.py BAD_PATHS */
        val BAD_PATHS: List<Any?> = listOf(".", "", "./", "sub/..", "..", "../x", "a/../../x", "/etc/passwd", "/tmp/x",
            "x\u0000y", "jobs/../../x", "\\..\\x", 7L, null, listOf("a"))

        fun sha256(b: ByteArray): String = Wire.hex(MessageDigest.getInstance("SHA-256").digest(b))
    }

    @TempDir lateinit var tmp: File
    private var server: RunnerServer? = null

    private fun serve(nativeRunner: File? = null, inProcess: InProcessRunner? = null,
                      limits: ServerLimits = ServerLimits(authDeadlineS = 2.0, idleTimeoutS = 10.0, maxUploadBytes = 1L shl 20,
                          maxInflightBytes = 3L shl 19, maxDiskBytes = 3L shl 20)): RunnerServer {
        val s = RunnerServer("127.0.0.1", 0, TOKEN, File(tmp, "work"), "t", nativeRunner, inProcess, limits)
        s.start()
        server = s
        return s
    }

    @AfterEach fun stop() {
        server?.stop()
    }

    private fun authed(srv: RunnerServer): Conn {
        val s = Socket("127.0.0.1", srv.port)
        s.soTimeout = 30_000
        val c = Conn(s)
        Wire.clientHandshake(c, TOKEN, "runner", "test")
        return c
    }

    private fun ask(c: Conn, header: Map<String, Any?>, payload: ByteArray = ByteArray(0)): Map<String, Any?> {
        Wire.sendMsg(c, header, payload)
        return Wire.recvMsg(c)
    }

    private fun push(c: Conn, path: Any?, data: ByteArray): Map<String, Any?> =
        ask(c, linkedMapOf("op" to "push", "path" to path, "size" to data.size.toLong(), "sha256" to sha256(data)), data)

    private fun error(reply: Map<String, Any?>): String {
        assertEquals(false, reply["ok"], "$reply")
        val e = reply["error"] as String
        assertFalse(e.contains('\n'), e)
        return e
    }

    @Test fun pathTricksAreRefusedAndNothingLandsOutside() {
        val srv = serve()
        val outsideDir = File(tmp, "outside").also { it.mkdir() }
        Files.createSymbolicLink(File(srv.workdir, "link").toPath(), outsideDir.toPath())  // a symlink out of the work dir
        Files.createSymbolicLink(File(srv.workdir, "dangling").toPath(), File(outsideDir, "new").toPath())  // to a file not there yet
        val before = tmp.list()!!.sorted()
        authed(srv).use { c ->
            for (path in BAD_PATHS + listOf("link/x", "link", "dangling")) {
                val err = error(push(c, path, "payload".toByteArray()))
                assertTrue("work dir" in err || "directory" in err, "$path: $err")
                for (op in listOf("pull", "remove")) {
                    val e = error(ask(c, linkedMapOf("op" to op, "path" to path)))
                    assertTrue("work dir" in e || path == "link", "$op $path: $e")
                }
            }
            assertEquals("path '..' must name a file inside the runner's work dir (relative, no '..', not the work dir itself)",
                error(push(c, "..", ByteArray(1))))
            assertEquals("path 'x\\x00y' must be a string naming a file in the runner's work dir", error(push(c, "x\u0000y", ByteArray(1))))
            assertEquals("path 'None' must be a string naming a file in the runner's work dir", error(push(c, null, ByteArray(1))))
            assertEquals("path 'dangling' leaves the runner's work dir", error(push(c, "dangling", ByteArray(1))))
            assertEquals(before, tmp.list()!!.sorted())  // nothing beside the work dir
            assertEquals(0, outsideDir.list()!!.size)   // nor through the links
            assertEquals(listOf("dangling", "link"), srv.workdir.list()!!.sorted())
            assertEquals(true, push(c, "sub/./f", "x".toByteArray())["ok"])
            val f = File(srv.workdir, "sub/f")
            assertEquals("x", f.readText())
            assertEquals(setOf(PosixFilePermission.OWNER_READ, PosixFilePermission.OWNER_WRITE), Files.getPosixFilePermissions(f.toPath()))
            assertEquals(listOf("f"), File(srv.workdir, "sub").list()!!.toList())  // no .part file left
            // inside links are followed inside: still confined
            Files.createSymbolicLink(File(srv.workdir, "in").toPath(), File(srv.workdir, "sub").toPath())
            assertEquals(true, push(c, "in/g", "y".toByteArray())["ok"])
            assertEquals("y", File(srv.workdir, "sub/g").readText())
        }
    }

    @Test fun pushAndPullRoundTripWithSha256() {
        val srv = serve()
        val data = ByteArray(300_000).also { Random(1).nextBytes(it) }
        authed(srv).use { c ->
            val r = push(c, "jobs/m.pte", data)
            assertEquals(mapOf("ok" to true, "sha256" to sha256(data)), r)
            Wire.sendMsg(c, linkedMapOf("op" to "pull", "path" to "jobs/m.pte"))
            val head = Wire.recvMsg(c)
            assertEquals(data.size.toLong(), head["size"])
            assertArrayEquals(data, Wire.recvExact(c, data.size.toLong()))
            // a wrong sha256: refused, nothing kept, the connection in sync
            val e = error(ask(c, linkedMapOf("op" to "push", "path" to "jobs/bad", "size" to 3L, "sha256" to sha256(data)), "abc".toByteArray()))
            assertEquals("sha256 of the received file does not match; nothing was kept", e)
            assertEquals(listOf("m.pte"), File(srv.workdir, "jobs").list()!!.toList())
            assertEquals("no file 'jobs/missing' on the device", error(ask(c, linkedMapOf("op" to "pull", "path" to "jobs/missing"))))
            assertEquals("no file 'jobs' on the device", error(ask(c, linkedMapOf("op" to "pull", "path" to "jobs"))))
            assertEquals("'jobs' is a directory; remove deletes files only", error(ask(c, linkedMapOf("op" to "remove", "path" to "jobs"))))
            assertEquals(mapOf("ok" to true, "removed" to true), ask(c, linkedMapOf("op" to "remove", "path" to "jobs/m.pte")))
            assertEquals(mapOf("ok" to true, "removed" to false), ask(c, linkedMapOf("op" to "remove", "path" to "jobs/m.pte")))
        }
    }

    @Test fun theQuotaRefusesAPushAndTheConnectionStaysUsable() {
        val srv = serve(limits = ServerLimits(maxUploadBytes = 1L shl 20, maxDiskBytes = 2_500_000))
        val blob = ByteArray(1_000_000).also { Random(2).nextBytes(it) }
        authed(srv).use { c ->
            assertEquals(true, push(c, "jobs/a", blob)["ok"])
            assertEquals(true, push(c, "jobs/b", blob)["ok"])
            assertEquals(true, push(c, "jobs/b", blob)["ok"])  // replacing a file counts only the difference
            val r = push(c, "jobs/c", blob)
            assertEquals("the work dir ${srv.workdir} holds 2000000 bytes; 1000000 more would pass its 2500000-byte quota " +
                "(--max-disk-bytes); clean it or raise the quota", error(r))
            assertFalse(r.containsKey("closed"))
            assertFalse(File(srv.workdir, "jobs/c").exists())
            assertEquals(true, ask(c, linkedMapOf("op" to "info"))["ok"])  // the refused payload was read and dropped
            ask(c, linkedMapOf("op" to "remove", "path" to "jobs/a"))
            assertEquals(true, push(c, "jobs/c", blob)["ok"])  // room again
        }
        authed(srv).use { c ->  // over the per-upload limit: refused unread, closed
            val r = ask(c, linkedMapOf("op" to "push", "path" to "jobs/big", "size" to java.math.BigInteger.TEN.pow(12), "sha256" to "0".repeat(64)))
            assertEquals("upload of 1000000000000 bytes is over this runner's 1048576-byte limit (--max-upload-bytes); " +
                "the payload was not read, closing", error(r))
            assertEquals(true, r["closed"])
        }
    }

    @Test fun theInflightBudgetIsReservedBeforeReceiving() {
        val srv = serve()  // budget 1.5 MiB, 1 MiB per push
        val size = 1 shl 20
        val data = ByteArray(size).also { Random(3).nextBytes(it) }
        val head = linkedMapOf<String, Any?>("op" to "push", "path" to "jobs/a.bin", "size" to size.toLong(), "sha256" to sha256(data))
        assertTrue(size.toLong() == RunnerServer.DRAIN_LIMIT_BYTES)
        val a = authed(srv)
        Wire.sendMsg(a, head, data.copyOf(10))  // holds 1 MiB of the budget
        Thread.sleep(200)
        authed(srv).use { b ->
            val r = push(b, "jobs/b.bin", data)  // at most 1 MiB: read and dropped, the connection stays
            assertEquals("busy: 1048576 bytes of uploads are in flight, and 1048576 more would pass this runner's 1572864-byte " +
                "budget (--max-inflight-bytes); try again later", error(r))
            assertFalse(r.containsKey("closed"))
        }
        a.write(data, 10, size - 10)
        assertEquals(true, Wire.recvMsg(a)["ok"])
        authed(srv).use { b -> assertEquals(true, push(b, "jobs/b.bin", data)["ok"]) }  // released: the next one fits
        a.close()
    }

    private fun script(name: String, body: String): File {
        val f = File(tmp, name)
        f.writeText("#!/bin/sh\n$body\n")
        f.setExecutable(true)
        return f
    }

    private fun runFiles(): List<String> =
        File(System.getProperty("java.io.tmpdir")).list()!!.filter { it.startsWith("edgeprobe-run-") }.sorted()

    @Test fun runGivesTheNativeRunnerExactlyTheBuiltArgvInTheWorkDir() {
        val echo = script("echo-runner", "pwd -P; for a in \"\$@\"; do printf 'arg=%s\\n' \"\$a\"; done; echo err >&2; exit 3")
        val srv = serve(nativeRunner = echo)
        val runFilesBefore = runFiles()
        authed(srv).use { c ->
            val r = ask(c, linkedMapOf("op" to "run", "runner" to "native", "timeout_s" to 30L, "args" to linkedMapOf(
                "model" to "jobs/m.pte", "warmup" to 3L, "min_seconds" to 0.5, "output" to "jobs/r.json", "method" to "forward")))
            assertEquals(true, r["ok"], "$r")
            val w = srv.workdir.path
            assertEquals("$w\narg=--model\narg=$w/jobs/m.pte\narg=--warmup\narg=3\narg=--min-seconds\narg=0.5\n" +
                "arg=--method\narg=forward\narg=--output\narg=$w/jobs/r.json\n", r["stdout"])
            assertEquals("err\n", r["stderr"])
            assertEquals(3L, r["exit_code"])
            assertEquals(false, r["timed_out"])
            assertTrue(r["duration_s"] is Double)
            assertEquals("this runner server has no python runner (the app runs the native runner, or its in-process one: runner app)",
                error(ask(c, linkedMapOf("op" to "run", "runner" to "python", "args" to linkedMapOf("model" to "m")))))
            assertEquals("run needs runner native, not 'sh'",
                error(ask(c, linkedMapOf("op" to "run", "runner" to "sh", "args" to linkedMapOf("model" to "m")))))
            assertEquals("run timeout_s must be a number of seconds in (0, 86400]",
                error(ask(c, linkedMapOf("op" to "run", "runner" to "native", "args" to linkedMapOf("model" to "m"), "timeout_s" to 1e9))))
            assertTrue("structured" in error(ask(c, linkedMapOf("op" to "run", "argv" to listOf("@native", "--model", "m")))))
            assertEquals(true, ask(c, linkedMapOf("op" to "info"))["ok"])  // every refusal kept the connection
        }
        assertEquals(runFilesBefore, runFiles())  // the output files are gone with the run
    }

    @Test fun theRunnersEnvironmentHasNoToken() {
        val envDump = script("env-runner", "echo \"token=\${EDGEPROBE_TOKEN-unset} serve=\${EDGEPROBE_SERVE_TOKEN-unset} " +
            "split=\${EDGEPROBE_SPLIT_TOKEN-unset} lib=\${LD_LIBRARY_PATH-unset}\"")
        val work = File(tmp, "w").also { it.mkdir() }
        val env = mapOf("EDGEPROBE_TOKEN" to TOKEN, "EDGEPROBE_SERVE_TOKEN" to "s", "EDGEPROBE_SPLIT_TOKEN" to "p", "LD_LIBRARY_PATH" to "/lib/x")
        val out = RunnerProcess(tmp, env).run(listOf(envDump.path), work, 30.0)
        assertEquals("token=unset serve=unset split=unset lib=/lib/x\n", out.stdout)
        assertEquals(0, out.exitCode)
    }

    @Test fun aRunnerPastItsTimeoutIsKilled() {
        val sleeper = script("sleep-runner", "sleep 30 & echo \$!; wait")  // its child: killed with it (ProcessHandle)
        val srv = serve(nativeRunner = sleeper)
        authed(srv).use { c ->
            val t0 = System.nanoTime()
            val r = ask(c, linkedMapOf("op" to "run", "runner" to "native", "timeout_s" to 0.5, "args" to linkedMapOf("model" to "m")))
            val tookS = (System.nanoTime() - t0) / 1e9
            assertTrue(r.containsKey("exit_code"))
            assertNull(r["exit_code"])
            assertEquals(true, r["timed_out"])
            val child = ProcessHandle.of((r["stdout"] as String).trim().toLong())
            val t1 = System.nanoTime()
            while (child.map { it.isAlive }.orElse(false) && System.nanoTime() - t1 < 3e9) Thread.sleep(20)
            assertFalse(child.map { it.isAlive }.orElse(false), "the runner's child outlived the kill")
            assertTrue(tookS < 5.0, "$tookS")
            assertTrue((r["duration_s"] as Double) >= 0.5)
        }
    }

    @Test fun aFloodingRunnerGivesItsTailBack() {
        val noisy = script("noisy", "head -c 200000 /dev/zero | tr '\\0' 'a'; printf end")
        val out = RunnerProcess(tmp).run(listOf(noisy.path), tmp, 30.0)
        assertTrue(out.stdout.startsWith("[... ${200_003 - 65_536} bytes cut ...]\naaa"), out.stdout.take(60))
        assertTrue(out.stdout.endsWith("aend"))
        assertEquals(65_536 + "[... ${200_003 - 65_536} bytes cut ...]\n".length, out.stdout.length)
    }

    @Test fun theAppRunnerGetsTheSameArgvAndInfoListsIt() {
        val seen = ArrayList<List<String>>()
        val app = object : InProcessRunner {
            override val delegates = listOf("xnnpack", "vulkan")
            override fun run(argv: List<String>, workdir: File, timeoutS: Double): RunOutcome {
                seen += argv
                return RunOutcome(0, "ok", "", 0.25, false)
            }
        }
        val srv = serve(inProcess = app)
        val info = srv.info()
        assertEquals("app", info["runtimes"])  // no native runner given
        assertEquals("xnnpack,vulkan", info["delegates"])
        assertEquals("edgeprobe-core", info["server"])
        assertTrue(info["machine"] != "amd64")
        authed(srv).use { c ->
            val r = ask(c, linkedMapOf("op" to "run", "runner" to "app", "args" to linkedMapOf("model" to "m", "split_server" to "none")))
            assertEquals(mapOf("ok" to true, "exit_code" to 0L, "stdout" to "ok", "stderr" to "", "duration_s" to 0.25, "timed_out" to false), r)
            assertEquals(listOf(listOf("--model", "${srv.workdir}/m", "--split-server", "none")), seen)
            assertEquals("this runner server has no native runner (start it with --native-runner)",
                error(ask(c, linkedMapOf("op" to "run", "runner" to "native", "args" to linkedMapOf("model" to "m")))))
        }
        server!!.stop()
        val plain = serve(nativeRunner = script("r", "true"))
        assertEquals("native", plain.info()["runtimes"])
        assertFalse(plain.info().containsKey("delegates"))
    }
}
