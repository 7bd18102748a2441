package dev.edgeprobe.core

import java.io.File
import java.io.FileInputStream
import java.io.IOException
import java.nio.channels.Channels
import java.nio.file.FileAlreadyExistsException
import java.nio.file.Files
import java.nio.file.LinkOption
import java.nio.file.NoSuchFileException
import java.nio.file.Path
import java.nio.file.Paths
import java.nio.file.StandardCopyOption
import java.nio.file.StandardOpenOption
import java.nio.file.attribute.BasicFileAttributes
import java.nio.file.attribute.PosixFilePermissions
import java.security.MessageDigest

/** The limits of one runner server (PROTOCOL.md "Limits"; the Python server's defaults). */
data class ServerLimits(
    val maxConnections: Int = 64,
    val maxPreauthPerAddress: Int = 8,
    val authDeadlineS: Double = 10.0,
    val idleTimeoutS: Double = 120.0,
    val maxUploadBytes: Long = 2L shl 30,
    val maxInflightBytes: Long = 4L shl 30,
    val maxDiskBytes: Long = 8L shl 30,
)

/** The runner service (server.py RunnerServer) on the JVM and in the app: push, pull, remove,
 *  run, info after the v2 handshake, with the same confinement, limits and error texts. Runners:
 *  "native" ([nativeRunner], a process) and "app" ([inProcess], the ExecuTorch library in the app). */
class RunnerServer(
    host: String, port: Int, token: String, workdir: File, val name: String,
    private val nativeRunner: File? = null, private val inProcess: InProcessRunner? = null,
    val limits: ServerLimits = ServerLimits(),
) : BoundedServer(host, port, token, SERVICE, limits.maxConnections, limits.maxPreauthPerAddress,
    limits.authDeadlineS, limits.idleTimeoutS) {

    companion object {
        const val SERVICE = "runner"
        const val MAX_HEADER_BYTES = 1L shl 20
        /** A refused push up to this size is read and dropped: the connection stays usable. */
        const val DRAIN_LIMIT_BYTES = 1L shl 20
        /** The edgeprobe_runner version this server speaks for (device_runner/edgeprobe_runner/__init__.py). */
        const val VERSION = "0.1.0"
        private val OWNER_ONLY_FILE = PosixFilePermissions.fromString("rw-------")
        private val OWNER_ONLY_DIR = PosixFilePermissions.fromString("rwx------")
    }

    /** The work dir, symlinks resolved. */
    val workdir: File
    private val workdirPath: String
    val uploads = Budget(limits.maxInflightBytes)
    private val diskLock = Any()
    private var diskReserved = 0L
    private val processes = RunnerProcess()

    init {
        try {
            makeDirs(workdir.absoluteFile.toPath())
        } catch (e: IOException) {
            stop()  // the port is bound already
            throw e
        }
        this.workdir = File(realpath(workdir.absolutePath))
        workdirPath = this.workdir.path
    }

    override fun info(): Map<String, String> {
        val arch = System.getProperty("os.arch") ?: ""
        val machine = when (arch) { "amd64" -> "x86_64"; "x86" -> "i686"; else -> arch }
        val runtimes = ArrayList<String>()
        if (nativeRunner != null && nativeRunner.canExecute()) runtimes += "native"
        if (inProcess != null) runtimes += "app"
        val out = linkedMapOf(
            "name" to name, "os" to (System.getProperty("os.name") ?: ""), "kernel" to (System.getProperty("os.version") ?: ""),
            "machine" to machine, "abi" to machine, "hostname" to localHostname(),
            "cores" to Runtime.getRuntime().availableProcessors().toString(), "runtimes" to runtimes.joinToString(","),
            "version" to VERSION, "server" to "edgeprobe-core",
        )
        val delegates = inProcess?.delegates.orEmpty()
        if (delegates.isNotEmpty()) out["delegates"] = delegates.joinToString(",")
        return out
    }

    // -- confinement -------------------------------------------------------------------------------

    /** A client path as a file strictly inside the work dir, or Refused: a string, not empty,
     *  relative, no `..` component, not the work dir itself, no NUL or backslash, and still inside
     *  after symlinks are resolved (server.py `confined`). */
    fun confined(rel: Any?): File {
        if (rel !is String || rel.contains('\u0000') || rel.contains('\\')) {
            throw Refused("path ${PyFormat.repr(PyFormat.head(PyFormat.str(rel), 200))} must be a string naming a file in the runner's work dir")
        }
        val parts = rel.split('/').filter { it.isNotEmpty() && it != "." }  // PurePosixPath(rel).parts
        if (rel.isEmpty() || rel.startsWith("/") || parts.isEmpty() || ".." in parts) {
            throw Refused("path ${PyFormat.repr(PyFormat.head(rel, 200))} must name a file inside the runner's work dir " +
                "(relative, no '..', not the work dir itself)")
        }
        val p = realpath(workdirPath + "/" + parts.joinToString("/"))
        val inside = if (workdirPath == "/") p != "/" else p.startsWith("$workdirPath/")
        if (!inside) throw Refused("path ${PyFormat.repr(PyFormat.head(rel, 200))} leaves the runner's work dir")
        return File(p)
    }

    /** Python's os.path.realpath(strict=False) of an absolute path: every symlink that exists is
     *  followed (a dangling one too: its target is where a write would land), a component that does
     *  not exist is kept as written, a symlink loop is left unresolved. (File.getCanonicalFile does
     *  not follow a dangling symlink, which would let `link -> /outside/new` pass as inside.) */
    private fun realpath(path: String): String {
        val todo = ArrayDeque(path.split('/'))
        var result = ""  // "" = the root
        var hops = 0
        while (todo.isNotEmpty()) {
            val c = todo.removeFirst()
            if (c.isEmpty() || c == ".") continue
            if (c == "..") { result = result.substringBeforeLast('/', ""); continue }
            val candidate = "$result/$c"
            val link: Path? = try {
                val pp = Paths.get(candidate)
                if (hops < 40 && Files.isSymbolicLink(pp)) Files.readSymbolicLink(pp) else null
            } catch (_: IOException) {
                null
            } catch (_: UnsupportedOperationException) {
                null
            }
            if (link == null) { result = candidate; continue }
            hops++
            val target = link.toString()
            if (target.startsWith("/")) result = ""
            target.split('/').asReversed().forEach { todo.addFirst(it) }
        }
        return result.ifEmpty { "/" }
    }

    private fun makeDirs(dir: Path) {
        if (Files.isDirectory(dir)) return
        dir.parent?.let { makeDirs(it) }
        try {
            Files.createDirectory(dir, PosixFilePermissions.asFileAttribute(OWNER_ONLY_DIR))
        } catch (_: FileAlreadyExistsException) {
            if (!Files.isDirectory(dir)) throw IOException("$dir exists and is not a directory")
        }
    }

    /** Bytes of the files under the work dir, as server.py's os.walk + lstat: a symlink counts its
     *  own size, a symlink to a directory is neither counted nor followed. */
    fun diskUsed(): Long {
        var total = 0L
        fun walk(d: File) {
            val names = d.list() ?: return
            for (n in names) {
                val p = File(d, n).toPath()
                try {
                    val attrs = Files.readAttributes(p, BasicFileAttributes::class.java, LinkOption.NOFOLLOW_LINKS)
                    when {
                        attrs.isDirectory -> walk(p.toFile())
                        attrs.isSymbolicLink && Files.isDirectory(p) -> {}
                        else -> total += attrs.size()
                    }
                } catch (_: IOException) {
                }
            }
        }
        walk(workdir)
        return total
    }

    // -- requests ----------------------------------------------------------------------------------

    override fun serveConnection(conn: Conn) {
        while (true) {
            val req = try {
                Wire.recvMsg(conn, MAX_HEADER_BYTES)
            } catch (e: ProtocolError) {
                if ("after 0 of 4 bytes" !in (e.message ?: "")) {  // not a clean close: say why before closing
                    Wire.sendMsg(conn, linkedMapOf("ok" to false, "closed" to true, "error" to "bad frame: ${e.message}; closing"))
                    Wire.closeAfterRefusal(conn)
                }
                return
            }
            try {
                dispatch(conn, req)
            } catch (e: Fatal) {
                Wire.sendMsg(conn, linkedMapOf("ok" to false, "closed" to true, "error" to e.message))
                Wire.closeAfterRefusal(conn)
                return
            } catch (e: Refused) {
                Wire.sendMsg(conn, linkedMapOf("ok" to false, "error" to e.message))
            }
        }
    }

    fun dispatch(conn: Conn, req: Map<String, Any?>) {
        when (val op = req["op"]) {
            "info" -> Wire.sendMsg(conn, linkedMapOf("ok" to true, "info" to info()))
            "push" -> push(conn, req)
            "pull" -> pull(conn, req)
            "remove" -> remove(conn, req)
            "run" -> run(conn, req)
            else -> throw Refused("unknown op ${PyFormat.repr(PyFormat.head(PyFormat.str(op), 80))} (push, pull, remove, run, info)")
        }
    }

    private fun pull(conn: Conn, req: Map<String, Any?>) {
        val src = confined(req["path"])
        val input = try {
            FileInputStream(src)  // a directory or a missing file: FileNotFoundException
        } catch (_: IOException) {
            throw Refused("no file ${PyFormat.repr(req["path"])} on the device")
        }
        input.use {
            if (!Files.isRegularFile(src.toPath())) throw Refused("${PyFormat.repr(req["path"])} is not a file")
            val size = it.channel.size()
            try {
                Wire.sendFile(conn, linkedMapOf("ok" to true, "size" to size), it, size)
            } catch (_: ProtocolError) {  // the file shrank while it was sent: the stream is broken
                throw IOException("file changed while it was pulled")
            }
        }
    }

    private fun remove(conn: Conn, req: Map<String, Any?>) {
        val p = confined(req["path"]).toPath()
        if (Files.isDirectory(p)) throw Refused("${PyFormat.repr(req["path"])} is a directory; remove deletes files only")
        val removed = try {
            Files.delete(p)
            true
        } catch (_: NoSuchFileException) {
            false
        }
        Wire.sendMsg(conn, linkedMapOf("ok" to true, "removed" to removed))
    }

    private fun refusePush(conn: Conn, size: Long, why: String): Nothing {
        if (size <= DRAIN_LIMIT_BYTES) {
            Wire.discard(conn, size)
            throw Refused(why)
        }
        throw Fatal("$why; the payload was not read, closing")
    }

    private fun push(conn: Conn, req: Map<String, Any?>) {
        val claim = req["size"]
        val bigSize = when (claim) {
            is Long -> java.math.BigInteger.valueOf(claim)
            is java.math.BigInteger -> claim
            else -> null
        }
        if (bigSize == null || bigSize.signum() < 0) throw Fatal("push needs the payload's size (a non-negative integer); closing")
        if (bigSize > java.math.BigInteger.valueOf(limits.maxUploadBytes)) {
            throw Fatal("upload of $bigSize bytes is over this runner's ${limits.maxUploadBytes}-byte limit " +
                "(--max-upload-bytes); the payload was not read, closing")
        }
        val size = bigSize.toLong()
        val dest = try {
            confined(req["path"])
        } catch (e: Refused) {
            refusePush(conn, size, e.message ?: "")
        }
        if (dest.isDirectory) refusePush(conn, size, "push path ${PyFormat.repr(req["path"])} is a directory")
        val digest = req["sha256"] as? String ?: refusePush(conn, size, "push needs the payload's sha256 (hex)")
        if (!uploads.reserve(size)) {
            refusePush(conn, size, "busy: ${uploads.used} bytes of uploads are in flight, and $size more would pass " +
                "this runner's ${uploads.total}-byte budget (--max-inflight-bytes); try again later")
        }
        try {
            var used = 0L
            val fits = synchronized(diskLock) {
                val replaced = if (dest.isFile) dest.length() else 0L
                used = diskUsed() + diskReserved
                val ok = used - replaced + size <= limits.maxDiskBytes
                if (ok) diskReserved += size
                ok
            }
            if (!fits) {
                refusePush(conn, size, "the work dir $workdir holds $used bytes; $size more would pass its " +
                    "${limits.maxDiskBytes}-byte quota (--max-disk-bytes); clean it or raise the quota")
            }
            try {
                receive(conn, dest, size, digest)
            } finally {
                synchronized(diskLock) { diskReserved -= size }
            }
        } finally {
            uploads.release(size)
        }
        Wire.sendMsg(conn, linkedMapOf("ok" to true, "sha256" to digest))  // after the budget is released
    }

    /** Streams the payload to a 0600 `.NAME.part-XXXXXXXX` beside [dest], checks its sha256, renames. */
    private fun receive(conn: Conn, dest: File, size: Long, digest: String) {
        makeDirs(dest.parentFile.toPath())
        val tmp = File(dest.parentFile, ".${dest.name}.part-${Wire.newNonce().substring(0, 8)}").toPath()
        val h = MessageDigest.getInstance("SHA-256")
        try {
            Files.newByteChannel(tmp, setOf(StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE),
                PosixFilePermissions.asFileAttribute(OWNER_ONLY_FILE)).use { ch ->
                val out = Channels.newOutputStream(ch)
                Wire.recvToFile(conn, size, out, h)
                out.flush()
            }
            if (Wire.hex(h.digest()) != digest) throw Refused("sha256 of the received file does not match; nothing was kept")
            Files.move(tmp, dest.toPath(), StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING)
        } finally {
            try { Files.deleteIfExists(tmp) } catch (_: IOException) {}
        }
    }

    private fun run(conn: Conn, req: Map<String, Any?>) {
        if (req.containsKey("argv")) {
            throw Refused("run takes a structured request {runner, args, timeout_s}, not an argv " +
                "(runner protocol v2); upgrade the host's edgeprobe")
        }
        val runner = req["runner"]
        if (runner == "python") {
            throw Refused("this runner server has no python runner (the app runs the native runner, or its in-process one: runner app)")
        }
        val runners = if (inProcess != null) listOf("native", "app") else listOf("native")
        val flags = RunArgs.buildArgv(runner, req["args"], ::confined, runners)
        val timeoutS = when (val t = if (req.containsKey("timeout_s")) req["timeout_s"] else 300.0) {
            is Double -> t
            is Long -> t.toDouble()
            else -> null
        }
        if (timeoutS == null || timeoutS.isNaN() || !(timeoutS > 0 && timeoutS <= 86_400.0)) {
            throw Refused("run timeout_s must be a number of seconds in (0, 86400]")
        }
        val outcome = if (runner == "native") {
            if (nativeRunner == null) throw Refused("this runner server has no native runner (start it with --native-runner)")
            try {
                processes.run(listOf(nativeRunner.path) + flags, workdir, timeoutS)
            } catch (e: IOException) {
                throw Refused("cannot start the native runner: ${e.oneLine()}")
            }
        } else {
            try {
                inProcess!!.run(flags, workdir, timeoutS)
            } catch (e: Exception) {
                throw Refused("cannot run the app runner: ${(e.message ?: e.javaClass.simpleName).lines().first()}")
            }
        }
        Wire.sendMsg(conn, linkedMapOf("ok" to true, "exit_code" to outcome.exitCode, "stdout" to outcome.stdout,
            "stderr" to outcome.stderr, "duration_s" to outcome.durationS, "timed_out" to outcome.timedOut))
    }
}

/** The kernel's host name (Python's socket.gethostname / uname().node), without a DNS lookup. */
internal fun localHostname(): String {
    try {
        val s = File("/proc/sys/kernel/hostname").readText().trim()
        if (s.isNotEmpty()) return s
    } catch (_: IOException) {
    }
    return try { java.net.InetAddress.getLocalHost().hostName } catch (_: Exception) { "" }
}
