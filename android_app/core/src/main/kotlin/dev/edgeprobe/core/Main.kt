package dev.edgeprobe.core

import java.io.File
import java.io.IOException
import java.util.concurrent.CountDownLatch
import kotlin.system.exitProcess

// `java -jar edgeprobe-core.jar serve ...`: the runner server on a plain JVM (a Linux host or board),
// as `edgeprobe runner serve` without zeroconf. The token comes from --token-file or $EDGEPROBE_TOKEN
// and is never printed (nor taken on the command line, where other users could read it).

private const val USAGE = "usage: edgeprobe-core serve [--host H] [--port P] [--token-file F] [--workdir W] [--name N] " +
    "[--native-runner PATH] [--max-upload-bytes N] [--max-inflight-bytes N] [--max-disk-bytes N] " +
    "[--max-connections N] [--max-preauth-per-address N] [--auth-timeout-s S] [--idle-timeout-s S] " +
    "(token: --token-file or \$EDGEPROBE_TOKEN)"

private class UsageError(message: String) : Exception(message)

/** The parsed `serve` options. */
internal data class ServeOptions(
    val host: String, val port: Int, val tokenFile: String?, val workdir: String?, val name: String?,
    val nativeRunner: String?, val limits: ServerLimits,
)

private val VALUE_FLAGS = setOf(
    "--host", "--port", "--token-file", "--workdir", "--name", "--native-runner", "--max-upload-bytes",
    "--max-inflight-bytes", "--max-disk-bytes", "--max-connections", "--auth-timeout-s", "--idle-timeout-s",
    "--max-preauth-per-address",
)

internal fun parseServe(args: List<String>, env: Map<String, String>): ServeOptions {
    val got = HashMap<String, String>()
    var i = 0
    while (i < args.size) {
        val a = args[i]
        val eq = a.indexOf('=')
        val flag = if (a.startsWith("--") && eq > 0) a.substring(0, eq) else a
        if (flag !in VALUE_FLAGS) throw UsageError("unrecognized argument ${a.substringBefore('=')}")
        val value = if (flag != a) a.substring(eq + 1) else {
            if (i + 1 >= args.size) throw UsageError("argument $flag: expected one argument")
            i++
            args[i]
        }
        got[flag] = value
        i++
    }
    fun long(flag: String, default: Long): Long =
        got[flag]?.let { it.trim().toLongOrNull() ?: throw UsageError("argument $flag: invalid int value: ${PyFormat.repr(it)}") } ?: default
    fun double(flag: String, default: Double): Double =
        got[flag]?.let { v ->
            v.trim().toDoubleOrNull()?.takeIf { !it.isNaN() } ?: throw UsageError("argument $flag: invalid float value: ${PyFormat.repr(v)}")
        } ?: default
    val port = long("--port", 0)
    if (port !in 0..65535) throw UsageError("argument --port: a port in 0..65535, not $port")
    val maxConnections = long("--max-connections", Wire.DEFAULT_MAX_CONNECTIONS.toLong())
    val d = ServerLimits()
    // the Python server takes this one in its constructor only; a flag here, so the contract test can
    // hold the JVM server to the same small caps as tests/test_wire_security.py's
    val maxPreauth = long("--max-preauth-per-address", d.maxPreauthPerAddress.toLong())
    val limits = ServerLimits(
        maxConnections = maxConnections.coerceIn(Int.MIN_VALUE.toLong(), Int.MAX_VALUE.toLong()).toInt(),
        maxPreauthPerAddress = maxPreauth.coerceIn(Int.MIN_VALUE.toLong(), Int.MAX_VALUE.toLong()).toInt(),
        authDeadlineS = double("--auth-timeout-s", d.authDeadlineS),
        idleTimeoutS = double("--idle-timeout-s", d.idleTimeoutS),
        maxUploadBytes = long("--max-upload-bytes", d.maxUploadBytes),
        maxInflightBytes = long("--max-inflight-bytes", d.maxInflightBytes),
        maxDiskBytes = long("--max-disk-bytes", d.maxDiskBytes),
    )
    if (minOf(limits.maxUploadBytes, limits.maxInflightBytes, limits.maxDiskBytes) < 0 || limits.maxConnections < 1 ||
        limits.maxPreauthPerAddress < 1 || !(limits.authDeadlineS > 0) || !(limits.idleTimeoutS > 0)) {
        throw UsageError("byte limits >= 0, --max-connections >= 1, --max-preauth-per-address >= 1 and timeouts > 0 are required")
    }
    return ServeOptions(got["--host"] ?: "127.0.0.1", port.toInt(), got["--token-file"], got["--workdir"], got["--name"],
        got["--native-runner"] ?: env["EDGEPROBE_NATIVE_RUNNER"], limits)
}

/** wire.py server_token without its random fallback: --token-file (its first line, stripped), else
 *  $EDGEPROBE_TOKEN; none is a usage error. */
internal fun serveToken(tokenFile: String?, env: Map<String, String>): String {
    if (tokenFile != null) {
        val first = try {
            File(tokenFile).bufferedReader(Charsets.UTF_8).use { it.readLine() ?: "" }
        } catch (e: IOException) {
            throw UsageError("--token-file: cannot read $tokenFile: ${e.oneLine()}")
        }
        val token = first.trim()
        if (token.isEmpty()) throw UsageError("--token-file: the token file $tokenFile is empty")
        return token
    }
    val token = env["EDGEPROBE_TOKEN"]
    if (token.isNullOrEmpty()) throw UsageError("a token is needed: --token-file F or \$EDGEPROBE_TOKEN (clients must prove they hold it)")
    return token
}

/** The server `serve ARGS` asks for, bound but not started; UsageError for anything wrong. */
private fun serverFor(args: List<String>, env: Map<String, String>): Pair<RunnerServer, String> {
    val opts = parseServe(args, env)
    val token = serveToken(opts.tokenFile, env)
    val workdir = File(opts.workdir ?: (System.getProperty("user.home") + "/.cache/edgeprobe-runner"))
    val name = opts.name ?: ("edgeprobe-" + localHostname())
    val server = try {
        RunnerServer(opts.host, opts.port, token, workdir, name, opts.nativeRunner?.let { File(it) }, null, opts.limits)
    } catch (e: IOException) {
        throw UsageError("cannot serve on ${opts.host}:${opts.port} with work dir $workdir: ${e.oneLine()}")
    }
    return server to opts.host
}

fun main(args: Array<String>) {
    if (args.isEmpty() || args[0] != "serve") {
        System.err.println("edgeprobe-core: error: the command is serve; $USAGE")
        exitProcess(2)
    }
    val (server, host) = try {
        serverFor(args.drop(1), System.getenv())
    } catch (e: UsageError) {
        System.err.println("edgeprobe-core serve: error: ${e.message}")
        exitProcess(2)
    }
    val done = CountDownLatch(1)
    Runtime.getRuntime().addShutdownHook(Thread {
        server.stop()
        done.countDown()
    })
    server.start()
    println(PyJson.dumps(linkedMapOf("listening" to "$host:${server.port}", "name" to server.name,
        "workdir" to server.workdir.path, "zeroconf" to false, "server" to "edgeprobe-core")))
    System.out.flush()
    done.await()
}
