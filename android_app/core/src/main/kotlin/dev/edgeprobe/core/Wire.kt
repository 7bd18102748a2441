package dev.edgeprobe.core

import java.io.IOException
import java.io.InputStream
import java.io.OutputStream
import java.math.BigDecimal
import java.math.BigInteger
import java.math.MathContext
import java.math.RoundingMode
import java.net.InetSocketAddress
import java.net.ServerSocket
import java.net.Socket
import java.net.SocketTimeoutException
import java.security.MessageDigest
import java.security.SecureRandom
import java.util.Collections
import java.util.Locale
import javax.crypto.Mac
import javax.crypto.spec.SecretKeySpec

// The wire of the runner service, byte-compatible with device_runner/edgeprobe_runner/wire.py:
// framing (4-byte big-endian length + UTF-8 JSON object header + optional `size` payload bytes),
// the v2 handshake (HMAC-SHA256 challenge-response; the token never crosses the wire), the limits
// (header sizes, auth deadline, idle timeout, connection caps, the in-flight byte budget). The
// headers are read and written as Python's json does (its error texts, json.dumps' spacing and
// ensure_ascii escapes), so a client cannot tell this server from the Python one by its frames.

object Wire {
    const val AUTH = "hmac-sha256"
    const val AUTH_CONTEXT = "edgeprobe-auth-v1"
    const val MAX_PREAUTH_HEADER_BYTES = 4096L
    const val DEFAULT_MAX_HEADER_BYTES = 1L shl 20
    const val DEFAULT_AUTH_DEADLINE_S = 10.0
    const val DEFAULT_IDLE_TIMEOUT_S = 120.0
    const val DEFAULT_MAX_CONNECTIONS = 64
    const val DEFAULT_MAX_PREAUTH_PER_ADDRESS = 8
    const val CHUNK = 1 shl 16
    private val HEX64 = Regex("[0-9a-f]{64}")
    private val random = SecureRandom()

    fun isHex64(s: Any?): Boolean = s is String && HEX64.matches(s)

    // -- framing ---------------------------------------------------------------------------------

    fun encodeMsg(header: Map<String, Any?>): ByteArray {
        val data = PyJson.dumps(header).toByteArray(Charsets.UTF_8)
        val out = ByteArray(4 + data.size)
        val n = data.size
        out[0] = (n ushr 24).toByte(); out[1] = (n ushr 16).toByte(); out[2] = (n ushr 8).toByte(); out[3] = n.toByte()
        System.arraycopy(data, 0, out, 4, n)
        return out
    }

    fun sendMsg(conn: Conn, header: Map<String, Any?>, payload: ByteArray = ByteArray(0)) {
        val frame = encodeMsg(header)
        if (payload.size <= CHUNK) conn.write(frame + payload) else { conn.write(frame); conn.write(payload) }
    }

    /** [n] bytes; the buffer grows only as bytes arrive. [deadlineNs] (System.nanoTime) bounds the
     *  whole read however slowly the bytes come; without it a read waits the socket's timeout. */
    fun recvExact(conn: Conn, n: Long, deadlineNs: Long? = null): ByteArray {
        val buf = java.io.ByteArrayOutputStream(minOf(maxOf(n, 1L), CHUNK.toLong()).toInt())
        val scratch = ByteArray(minOf(maxOf(n, 1L), CHUNK.toLong()).toInt())
        var have = 0L
        while (have < n) {
            val want = minOf(n - have, scratch.size.toLong()).toInt()
            val got = readSome(conn, scratch, want, deadlineNs)
            if (got <= 0) throw ProtocolError("connection closed after $have of $n bytes")
            buf.write(scratch, 0, got)
            have += got
        }
        return buf.toByteArray()
    }

    private fun readSome(conn: Conn, scratch: ByteArray, want: Int, deadlineNs: Long?): Int {
        if (deadlineNs != null) {
            val leftNs = deadlineNs - System.nanoTime()
            if (leftNs <= 0) throw ProtocolError("authentication deadline passed")
            conn.setReadTimeoutS(leftNs / 1e9)
        }
        return try {
            conn.read(scratch, 0, want)
        } catch (e: SocketTimeoutException) {
            if (deadlineNs != null) throw ProtocolError("authentication deadline passed")
            throw e
        }
    }

    /** A header's bytes as a JSON object, or ProtocolError (Python's parse_header texts). */
    fun parseHeader(data: ByteArray): MutableMap<String, Any?> {
        val value = try {
            PyJson.loads(PyJson.decodeUtf8(data))
        } catch (e: PyJson.DecodeError) {
            throw ProtocolError("header is not UTF-8 JSON: ${e.message!!.lines().first()}")
        }
        if (value !is MutableMap<*, *>) throw ProtocolError("header is a JSON ${PyJson.typeName(value)}, not an object")
        @Suppress("UNCHECKED_CAST")
        return value as MutableMap<String, Any?>
    }

    fun recvMsg(conn: Conn, maxHeaderBytes: Long = DEFAULT_MAX_HEADER_BYTES, deadlineNs: Long? = null): MutableMap<String, Any?> {
        val b = recvExact(conn, 4, deadlineNs)
        val n = ((b[0].toLong() and 0xff) shl 24) or ((b[1].toLong() and 0xff) shl 16) or
            ((b[2].toLong() and 0xff) shl 8) or (b[3].toLong() and 0xff)
        if (n > maxHeaderBytes) throw ProtocolError("header of $n bytes is over the $maxHeaderBytes-byte limit")
        return parseHeader(recvExact(conn, n, deadlineNs))
    }

    /** Streams [size] payload bytes into [out] (and [hasher]) in chunks. */
    fun recvToFile(conn: Conn, size: Long, out: OutputStream, hasher: MessageDigest? = null) {
        val scratch = ByteArray(CHUNK)
        var left = size
        while (left > 0) {
            val got = conn.read(scratch, 0, minOf(left, CHUNK.toLong()).toInt())
            if (got <= 0) throw ProtocolError("connection closed with $left of $size payload bytes unsent")
            out.write(scratch, 0, got)
            hasher?.update(scratch, 0, got)
            left -= got
        }
    }

    /** Reads and drops [size] payload bytes (a refused push keeps the connection in sync). */
    fun discard(conn: Conn, size: Long) {
        val scratch = ByteArray(minOf(maxOf(size, 1L), CHUNK.toLong()).toInt())
        var left = size
        while (left > 0) {
            val got = conn.read(scratch, 0, minOf(left, scratch.size.toLong()).toInt())
            if (got <= 0) throw ProtocolError("connection closed with $left of $size payload bytes unsent")
            left -= got
        }
    }

    /** [header] then exactly [size] bytes of [input], in chunks. */
    fun sendFile(conn: Conn, header: Map<String, Any?>, input: InputStream, size: Long) {
        conn.write(encodeMsg(header))
        val scratch = ByteArray(CHUNK)
        var left = size
        while (left > 0) {
            val got = input.read(scratch, 0, minOf(left, CHUNK.toLong()).toInt())
            if (got <= 0) throw ProtocolError("file ended with $left of $size bytes unsent")
            conn.write(scratch, 0, got)
            left -= got
        }
    }

    /** After a refusal whose payload was not read: stop sending, then read and drop a bounded
     *  amount of what the client still sends, so its kernel does not reset the connection before
     *  it has read the refusal. */
    fun closeAfterRefusal(conn: Conn, drainBytes: Long = 1L shl 20, drainS: Double = 0.5) {
        try {
            conn.socket.shutdownOutput()
            val endNs = System.nanoTime() + (drainS * 1e9).toLong()
            var left = drainBytes
            val scratch = ByteArray(CHUNK)
            while (left > 0) {
                val tNs = endNs - System.nanoTime()
                if (tNs <= 0) break
                conn.setReadTimeoutS(tNs / 1e9)
                val got = conn.read(scratch, 0, minOf(left, CHUNK.toLong()).toInt())
                if (got <= 0) break
                left -= got
            }
        } catch (_: IOException) {
        }
    }

    // -- the v2 handshake ------------------------------------------------------------------------

    fun newNonce(): String {
        val b = ByteArray(32)
        random.nextBytes(b)
        return hex(b)
    }

    fun hex(b: ByteArray): String {
        val sb = StringBuilder(b.size * 2)
        for (x in b) sb.append(Character.forDigit((x.toInt() shr 4) and 0xf, 16)).append(Character.forDigit(x.toInt() and 0xf, 16))
        return sb.toString()
    }

    fun authMac(token: String, role: String, service: String, serverNonce: String, clientNonce: String): String {
        val mac = Mac.getInstance("HmacSHA256")
        mac.init(SecretKeySpec(token.toByteArray(Charsets.UTF_8), "HmacSHA256"))
        return hex(mac.doFinal("$AUTH_CONTEXT|$role|$service|$serverNonce|$clientNonce".toByteArray(Charsets.UTF_8)))
    }

    /** Constant time in the length of [want]: MessageDigest.isEqual. */
    fun macEqual(got: Any?, want: String): Boolean =
        got is String && MessageDigest.isEqual(got.toByteArray(Charsets.UTF_8), want.toByteArray(Charsets.UTF_8))

    /** A last one-line error frame before closing; never blocks for long. */
    fun refuse(conn: Conn, error: String) {
        try {
            conn.setTimeoutS(1.0)
            conn.write(encodeMsg(linkedMapOf("ok" to false, "closed" to true, "error" to error)))
        } catch (_: IOException) {
            return
        }
        closeAfterRefusal(conn, 1L shl 16, 0.2)
    }

    /** The server's side: challenge, check the client's MAC, prove our own. On failure the client
     *  is told why in one line and AuthError is thrown (the caller closes the connection). */
    fun serverHandshake(conn: Conn, token: String, service: String, info: () -> Map<String, Any?>,
                        deadlineS: Double = DEFAULT_AUTH_DEADLINE_S, onAuthenticated: () -> Unit = {}) {
        val deadlineNs = System.nanoTime() + (deadlineS * 1e9).toLong()
        val serverNonce = newNonce()
        conn.setTimeoutS(deadlineS)
        sendMsg(conn, linkedMapOf("op" to "challenge", "auth" to AUTH, "service" to service, "nonce" to serverNonce))
        val hello = try {
            recvMsg(conn, MAX_PREAUTH_HEADER_BYTES, deadlineNs)
        } catch (e: ProtocolError) {
            refuse(conn, "unauthorized: ${e.message} (answer the challenge with hello {nonce, mac} within ${PyFormat.g(deadlineS)} s)")
            throw AuthError(e.message ?: "")
        }
        val clientNonce = hello["nonce"]
        if (hello["op"] != "hello" || clientNonce !is String || !isHex64(clientNonce)) {
            refuse(conn, "unauthorized: the first message must be hello {nonce: 64 hex digits, mac} " +
                "(edgeprobe protocol v2: the server speaks first); closing")
            throw AuthError("no valid hello")
        }
        if (!macEqual(hello["mac"], authMac(token, "client", service, serverNonce, clientNonce))) {
            refuse(conn, "unauthorized: wrong token")
            throw AuthError("wrong token")
        }
        onAuthenticated()  // before the reply: a client that has it is no longer counted as unauthenticated
        sendMsg(conn, linkedMapOf("ok" to true, "mac" to authMac(token, "server", service, serverNonce, clientNonce),
            "info" to info()))
    }

    /** The client's side; returns the server's info. Throws AuthError when the server refuses, is
     *  not the expected service, or does not prove it holds the token (then nothing else was sent). */
    fun clientHandshake(conn: Conn, token: String, service: String, where: String): Map<String, Any?> {
        val challenge = recvMsg(conn, MAX_PREAUTH_HEADER_BYTES)
        if (challenge["op"] != "challenge") {
            if (challenge["ok"] == false) throw AuthError("$where refused the connection: ${PyFormat.str(challenge["error"])}")
            throw AuthError("$where did not send an edgeprobe v2 challenge; is it an older edgeprobe " +
                "(upgrade both sides) or not an edgeprobe server?")
        }
        if (challenge["service"] != service) {
            throw AuthError("$where is an edgeprobe ${PyFormat.repr(challenge["service"])} server, not the " +
                "${PyFormat.repr(service)} one; check the address")
        }
        if (challenge["auth"] != AUTH) {
            throw AuthError("$where asks for authentication ${PyFormat.repr(challenge["auth"])}; only $AUTH is spoken here")
        }
        val serverNonce = challenge["nonce"]
        if (serverNonce !is String || !isHex64(serverNonce)) throw AuthError("$where sent a malformed challenge nonce; not talking to it")
        val clientNonce = newNonce()
        sendMsg(conn, linkedMapOf("op" to "hello", "nonce" to clientNonce,
            "mac" to authMac(token, "client", service, serverNonce, clientNonce)))
        val reply = recvMsg(conn)
        if (!PyFormat.truthy(reply["ok"])) throw AuthError("$where refused the connection: ${PyFormat.str(reply["error"])}")
        if (!macEqual(reply["mac"], authMac(token, "server", service, serverNonce, clientNonce))) {
            throw AuthError("the server at $where did not prove it holds the token; not talking to it")
        }
        @Suppress("UNCHECKED_CAST")
        return (reply["info"] as? Map<String, Any?>) ?: emptyMap()
    }
}

/** The peer broke the protocol, went away, or ran past a deadline. */
open class ProtocolError(message: String) : Exception(message)

/** Authentication failed: a wrong token, a server that did not prove it holds the token, or a peer
 *  that is not the expected edgeprobe service. */
class AuthError(message: String) : ProtocolError(message)

/** One TCP connection: unbuffered reads, whole-frame writes. Java sockets have no write timeout,
 *  so a write records when it started and BoundedServer's reaper closes a connection whose write
 *  has waited longer than [writeTimeoutS] (Python's socket timeout covers sends as well). */
class Conn(val socket: Socket) : java.io.Closeable {
    private val input: InputStream = socket.getInputStream()
    private val output: OutputStream = socket.getOutputStream()
    @Volatile var writeTimeoutS: Double = Wire.DEFAULT_IDLE_TIMEOUT_S
    @Volatile var writingSinceNs: Long = 0L
        private set

    fun setReadTimeoutS(s: Double) {
        socket.soTimeout = maxOf(1L, minOf(Int.MAX_VALUE.toLong(), Math.ceil(s * 1000.0).toLong())).toInt()
    }

    /** Both directions, as Python's sock.settimeout. */
    fun setTimeoutS(s: Double) {
        setReadTimeoutS(s)
        writeTimeoutS = s
    }

    /** Bytes read (at least 1), or -1 at the end of the stream. */
    fun read(buf: ByteArray, off: Int, len: Int): Int = input.read(buf, off, len)

    fun write(b: ByteArray, off: Int = 0, len: Int = b.size) {
        writingSinceNs = System.nanoTime() or 1L
        try {
            output.write(b, off, len)
            output.flush()
        } finally {
            writingSinceNs = 0L
        }
    }

    override fun close() {
        try { socket.close() } catch (_: IOException) {}
    }
}

/** Bytes that may be in flight at once across all connections: reserve before receiving. */
class Budget(val total: Long) {
    @Volatile var used: Long = 0L
        private set

    @Synchronized fun reserve(n: Long): Boolean {
        if (used + n > total) return false
        used += n
        return true
    }

    @Synchronized fun release(n: Long) {
        used -= n
    }
}

/** A thread-per-connection TCP server with a connection cap, a cap per address on connections that
 *  have not authenticated, the v2 handshake under a deadline and an idle timeout after it (wire.py
 *  BoundedServer). A refused connection gets one line (`{"ok": false, "closed": true, "error":
 *  "busy: ..."}`) before the challenge and is closed; the server goes on serving the others. */
abstract class BoundedServer(
    host: String, port: Int, private val token: String, val service: String,
    val maxConnections: Int = Wire.DEFAULT_MAX_CONNECTIONS,
    val maxPreauthPerAddress: Int = Wire.DEFAULT_MAX_PREAUTH_PER_ADDRESS,
    val authDeadlineS: Double = Wire.DEFAULT_AUTH_DEADLINE_S,
    val idleTimeoutS: Double = Wire.DEFAULT_IDLE_TIMEOUT_S,
) {
    private val listener: ServerSocket
    private val lock = Any()
    /** Connections being served now (authenticated or not). */
    @Volatile var connections: Int = 0
        private set
    private val preauth = HashMap<String, Int>()
    private val openConns: MutableSet<Conn> = Collections.synchronizedSet(LinkedHashSet())
    @Volatile private var stopped = false

    init {
        require(token.isNotEmpty()) { "a server needs a non-empty token" }
        listener = ServerSocket()
        listener.reuseAddress = true
        listener.bind(InetSocketAddress(host, port), 128)
    }

    /** The bound port (0 asked = ephemeral). */
    val port: Int get() = listener.localPort

    /** What the handshake's reply carries as `info`. */
    abstract fun info(): Map<String, String>

    /** Serves one authenticated connection's requests until it closes. */
    abstract fun serveConnection(conn: Conn)

    /** The accept loop and the write-timeout reaper, on daemon threads. */
    open fun start() {
        thread("edgeprobe-accept") { acceptLoop() }
        thread("edgeprobe-reaper") { reapLoop() }
    }

    /** Closes the listening socket and every open connection. */
    open fun stop() {
        stopped = true
        try { listener.close() } catch (_: IOException) {}
        val all = synchronized(openConns) { openConns.toList() }
        all.forEach { it.close() }
    }

    private fun thread(name: String, body: () -> Unit) {
        val t = Thread(body, name)
        t.isDaemon = true
        t.start()
    }

    private fun acceptLoop() {
        while (!stopped) {
            val sock = try { listener.accept() } catch (_: IOException) { if (stopped) return else continue }
            val address = sock.inetAddress.hostAddress ?: "?"
            val why = admit(address)
            if (why != null) {
                try {
                    // a fresh connection's send buffer is empty: this never waits
                    sock.getOutputStream().write(Wire.encodeMsg(linkedMapOf("ok" to false, "closed" to true, "error" to why)))
                    sock.shutdownOutput()
                } catch (_: IOException) {
                }
                try { sock.close() } catch (_: IOException) {}
                continue
            }
            val conn = try { Conn(sock) } catch (_: IOException) { release(address, false); try { sock.close() } catch (_: IOException) {}; continue }
            openConns.add(conn)
            try {
                thread("edgeprobe-conn") { handle(conn, address) }
            } catch (e: Throwable) {  // no thread could be started: this connection is not served
                openConns.remove(conn)
                conn.close()
                release(address, false)
            }
        }
    }

    private fun reapLoop() {
        while (!stopped) {
            try { Thread.sleep(200) } catch (_: InterruptedException) { return }
            val now = System.nanoTime()
            val all = synchronized(openConns) { openConns.toList() }
            for (c in all) {
                val since = c.writingSinceNs
                if (since != 0L && now - since > (c.writeTimeoutS * 1e9).toLong()) c.close()
            }
        }
    }

    private fun admit(address: String): String? = synchronized(lock) {
        if (connections >= maxConnections) {
            return "busy: this server already has $maxConnections connections (its connection cap); try again later"
        }
        if ((preauth[address] ?: 0) >= maxPreauthPerAddress) {
            return "busy: $address already has $maxPreauthPerAddress connections that have not authenticated; try again later"
        }
        connections += 1
        preauth[address] = (preauth[address] ?: 0) + 1
        null
    }

    private fun dropPreauth(address: String) {
        val n = (preauth[address] ?: 0) - 1
        if (n > 0) preauth[address] = n else preauth.remove(address)
    }

    private fun release(address: String, authenticated: Boolean) = synchronized(lock) {
        connections -= 1
        if (!authenticated) dropPreauth(address)
    }

    private fun handle(conn: Conn, address: String) {
        var authenticated = false
        try {
            conn.socket.tcpNoDelay = true
            Wire.serverHandshake(conn, token, service, ::info, authDeadlineS) {
                synchronized(lock) { dropPreauth(address) }
                authenticated = true
            }
            conn.setTimeoutS(idleTimeoutS)
            serveConnection(conn)
        } catch (_: IOException) {
            // timeout, reset, or the client went away mid-frame
        } catch (_: ProtocolError) {
        } catch (e: RuntimeException) {
            System.err.println("edgeprobe-core: a connection from $address ended on ${e.javaClass.simpleName}: ${e.message?.lines()?.first()}")
        } finally {
            try {
                conn.socket.shutdownOutput()
            } catch (_: IOException) {
            }
            conn.close()
            openConns.remove(conn)
            release(address, authenticated)
        }
    }
}

/** Python's str(), repr() and format(x, 'g') for the values a JSON header holds, so that error
 *  texts are the Python server's, character for character. */
object PyFormat {
    /** Python truthiness of a JSON value. */
    fun truthy(v: Any?): Boolean = when (v) {
        null -> false
        is Boolean -> v
        is Long -> v != 0L
        is Int -> v != 0
        is BigInteger -> v.signum() != 0
        is Double -> v != 0.0
        is String -> v.isNotEmpty()
        is Map<*, *> -> v.isNotEmpty()
        is List<*> -> v.isNotEmpty()
        else -> true
    }

    fun str(v: Any?): String = when (v) {
        is String -> v
        else -> repr(v)
    }

    fun repr(v: Any?): String = when (v) {
        null -> "None"
        is Boolean -> if (v) "True" else "False"
        is String -> reprString(v)
        is Double -> floatRepr(v)
        is Float -> floatRepr(v.toDouble())
        is Number -> v.toString()
        is Map<*, *> -> v.entries.joinToString(", ", "{", "}") { "${repr(it.key)}: ${repr(it.value)}" }
        is List<*> -> v.joinToString(", ", "[", "]") { repr(it) }
        else -> reprString(v.toString())
    }

    /** The first [n] characters (code points, as Python slices a str). */
    fun head(s: String, n: Int): String {
        if (s.length <= n) return s
        val end = try { s.offsetByCodePoints(0, n) } catch (_: IndexOutOfBoundsException) { s.length }
        return s.substring(0, end)
    }

    /** Python's repr of a str: single quotes unless it holds ' and no ", escapes for \\, the
     *  quote, \t \n \r, and \x / \u / \U for characters that are not printable. */
    fun reprString(s: String): String {
        val quote = if (s.contains('\'') && !s.contains('"')) '"' else '\''
        val sb = StringBuilder(s.length + 2).append(quote)
        var i = 0
        while (i < s.length) {
            val cp = s.codePointAt(i)
            i += Character.charCount(cp)
            when {
                cp == quote.code || cp == '\\'.code -> sb.append('\\').appendCodePoint(cp)
                cp == '\t'.code -> sb.append("\\t")
                cp == '\n'.code -> sb.append("\\n")
                cp == '\r'.code -> sb.append("\\r")
                cp < 0x20 || cp == 0x7f -> sb.append(String.format(Locale.ROOT, "\\x%02x", cp))
                cp < 0x7f -> sb.appendCodePoint(cp)
                printable(cp) -> sb.appendCodePoint(cp)
                cp <= 0xff -> sb.append(String.format(Locale.ROOT, "\\x%02x", cp))
                cp <= 0xffff -> sb.append(String.format(Locale.ROOT, "\\u%04x", cp))
                else -> sb.append(String.format(Locale.ROOT, "\\U%08x", cp))
            }
        }
        return sb.append(quote).toString()
    }

    /** str.isprintable for one character: not Other (Cc Cf Cs Co Cn) and not a Separator but ' '. */
    private fun printable(cp: Int): Boolean = when (Character.getType(cp).toByte()) {
        Character.CONTROL, Character.FORMAT, Character.SURROGATE, Character.PRIVATE_USE, Character.UNASSIGNED,
        Character.SPACE_SEPARATOR, Character.LINE_SEPARATOR, Character.PARAGRAPH_SEPARATOR -> false
        else -> true
    }

    /** The shortest decimal digits that read back as [x] (x > 0, finite) and the decimal point's
     *  position: x = 0.DIGITS × 10^decpt (Python's float_repr_style 'short'). */
    private fun shortest(x: Double): Pair<String, Int> {
        val exact = BigDecimal(x)
        for (p in 1..17) {
            val r = exact.round(MathContext(p, RoundingMode.HALF_EVEN))
            if (r.toDouble() == x) {
                val s = r.stripTrailingZeros()
                val digits = s.unscaledValue().toString()
                return digits to (digits.length - s.scale())
            }
        }
        val s = exact.round(MathContext(17, RoundingMode.HALF_EVEN)).stripTrailingZeros()
        val digits = s.unscaledValue().toString()
        return digits to (digits.length - s.scale())
    }

    private fun fixed(digits: String, decpt: Int): String = when {
        decpt <= 0 -> "0." + "0".repeat(-decpt) + digits
        decpt >= digits.length -> digits + "0".repeat(decpt - digits.length)
        else -> digits.substring(0, decpt) + "." + digits.substring(decpt)
    }

    private fun exponent(digits: String, exp: Int): String {
        val mant = if (digits.length == 1) digits else digits[0] + "." + digits.substring(1)
        val e = Math.abs(exp).toString().padStart(2, '0')
        return mant + "e" + (if (exp < 0) "-" else "+") + e
    }

    /** Python's repr(float): "0.5", "60.0", "1e-05", "1e+16", "nan", "inf". */
    fun floatRepr(x: Double): String {
        if (x.isNaN()) return "nan"
        if (x.isInfinite()) return if (x > 0) "inf" else "-inf"
        if (x == 0.0) return if (1.0 / x < 0) "-0.0" else "0.0"
        val sign = if (x < 0) "-" else ""
        val (digits, decpt) = shortest(Math.abs(x))
        if (decpt <= -4 || decpt > 16) return sign + exponent(digits, decpt - 1)
        val f = fixed(digits, decpt)
        return sign + if (f.contains('.')) f else "$f.0"
    }

    /** Python's format(x, 'g'): 6 significant digits, trailing zeros removed ("1e+06", "86400", "0.001"). */
    fun g(x: Double): String {
        if (x.isNaN()) return "nan"
        if (x.isInfinite()) return if (x > 0) "inf" else "-inf"
        if (x == 0.0) return if (1.0 / x < 0) "-0" else "0"
        val sign = if (x < 0) "-" else ""
        val r = BigDecimal(Math.abs(x)).round(MathContext(6, RoundingMode.HALF_EVEN)).stripTrailingZeros()
        val digits = r.unscaledValue().toString()
        val exp = digits.length - r.scale() - 1
        return sign + if (exp < -4 || exp >= 6) exponent(digits, exp) else fixed(digits, exp + 1)
    }
}

/** JSON as Python's json module reads and writes it: objects are LinkedHashMap (the last of a
 *  repeated key wins), integers Long (BigInteger beyond), other numbers Double, NaN/Infinity
 *  accepted, strict strings; errors with json.JSONDecodeError's text ("Expecting value: line 1
 *  column 1 (char 0)"). dumps is json.dumps' default: ", " and ": ", ensure_ascii. */
object PyJson {
    class DecodeError(message: String) : Exception(message)

    private const val MAX_DEPTH = 900  // Python raises RecursionError near its recursion limit (1000)

    fun typeName(v: Any?): String = when (v) {
        null -> "NoneType"
        is Boolean -> "bool"
        is Long, is Int, is BigInteger -> "int"
        is Double -> "float"
        is String -> "str"
        is List<*> -> "list"
        is Map<*, *> -> "dict"
        else -> v.javaClass.simpleName
    }

    /** UTF-8 strictly, with the text of Python's UnicodeDecodeError on a bad byte. */
    fun decodeUtf8(b: ByteArray): String {
        val sb = StringBuilder(b.size)
        var i = 0
        val n = b.size
        fun bad(start: Int, end: Int, why: String): Nothing {
            val what = if (end - start == 1) "byte 0x%02x in position %d".format(Locale.ROOT, b[start].toInt() and 0xff, start)
            else "bytes in position $start-${end - 1}"
            throw DecodeError("'utf-8' codec can't decode $what: $why")
        }
        while (i < n) {
            val c = b[i].toInt() and 0xff
            if (c < 0x80) { sb.append(c.toChar()); i++; continue }
            val need: Int
            var lo = 0x80
            var hi = 0xbf
            when {
                c in 0xc2..0xdf -> need = 1
                c in 0xe0..0xef -> { need = 2; if (c == 0xe0) lo = 0xa0; if (c == 0xed) hi = 0x9f }
                c in 0xf0..0xf4 -> { need = 3; if (c == 0xf0) lo = 0x90; if (c == 0xf4) hi = 0x8f }
                else -> bad(i, i + 1, "invalid start byte")
            }
            var cp = c and (0x3f shr need)
            for (k in 1..need) {
                if (i + k >= n) bad(i, n, "unexpected end of data")
                val d = b[i + k].toInt() and 0xff
                val l = if (k == 1) lo else 0x80
                val h = if (k == 1) hi else 0xbf
                if (d < l || d > h) bad(i, i + k, "invalid continuation byte")
                cp = (cp shl 6) or (d and 0x3f)
            }
            sb.appendCodePoint(cp)
            i += need + 1
        }
        return sb.toString()
    }

    fun loads(text: String): Any? = Parser(text).parseDocument()

    /** Over the UTF-16 text; an error's position is counted in code points, as Python counts. */
    private class Parser(val s: String) {
        val n = s.length

        fun c(i: Int): Int = s[i].code

        fun fail(msg: String, pos: Int): Nothing {
            var line = 1
            var lastNl = -1
            for (k in 0 until minOf(pos, n)) if (s[k] == '\n') { line++; lastNl = k }
            val col = if (lastNl < 0) s.codePointCount(0, pos) + 1 else s.codePointCount(lastNl, pos)
            throw DecodeError("$msg: line $line column $col (char ${s.codePointCount(0, pos)})")
        }

        fun ws(i0: Int): Int {
            var i = i0
            while (i < n && (c(i) == ' '.code || c(i) == '\t'.code || c(i) == '\n'.code || c(i) == '\r'.code)) i++
            return i
        }

        fun parseDocument(): Any? {
            if (n > 0 && c(0) == 0xfeff) fail("Unexpected UTF-8 BOM (decode using utf-8-sig)", 0)
            val start = ws(0)
            val (v, end0) = value(start, 0) ?: fail("Expecting value", start)
            val end = ws(end0)
            if (end != n) fail("Extra data", end)
            return v
        }

        fun startsWith(i: Int, word: String): Boolean {
            if (i + word.length > n) return false
            for (k in word.indices) if (c(i + k) != word[k].code) return false
            return true
        }

        /** The value at [i] and the index after it, or null where none starts (Python's StopIteration). */
        fun value(i: Int, depth: Int): Pair<Any?, Int>? {
            if (i >= n) return null
            return when (c(i)) {
                '"'.code -> string(i + 1)
                '{'.code -> obj(i + 1, depth + 1)
                '['.code -> array(i + 1, depth + 1)
                'n'.code -> if (startsWith(i, "null")) null to i + 4 else null
                't'.code -> if (startsWith(i, "true")) true to i + 4 else null
                'f'.code -> if (startsWith(i, "false")) false to i + 5 else null
                'N'.code -> if (startsWith(i, "NaN")) Double.NaN to i + 3 else null
                'I'.code -> if (startsWith(i, "Infinity")) Double.POSITIVE_INFINITY to i + 8 else null
                '-'.code -> if (startsWith(i, "-Infinity")) Double.NEGATIVE_INFINITY to i + 9 else number(i)
                else -> number(i)
            }
        }

        fun isDigit(i: Int) = i < n && c(i) >= '0'.code && c(i) <= '9'.code

        /** `-?(0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?` at [i]; int unless it has a fraction or exponent. */
        fun number(i0: Int): Pair<Any?, Int>? {
            var i = i0
            if (i < n && c(i) == '-'.code) i++
            if (!isDigit(i)) return null
            if (c(i) == '0'.code) i++ else while (isDigit(i)) i++
            var isFloat = false
            if (i < n && c(i) == '.'.code && isDigit(i + 1)) { isFloat = true; i++; while (isDigit(i)) i++ }
            if (i < n && (c(i) == 'e'.code || c(i) == 'E'.code)) {
                var j = i + 1
                if (j < n && (c(j) == '+'.code || c(j) == '-'.code)) j++
                if (isDigit(j)) { isFloat = true; i = j; while (isDigit(i)) i++ }
            }
            val text = s.substring(i0, i)
            if (isFloat) return text.toDouble() to i
            return (text.toLongOrNull() ?: BigInteger(text)) to i
        }

        fun string(begin: Int): Pair<Any?, Int> {
            val sb = StringBuilder()
            var i = begin
            while (true) {
                if (i >= n) fail("Unterminated string starting at", begin - 1)
                val ch0 = c(i)
                if (ch0 == '"'.code) return sb.toString() to i + 1
                if (ch0 < 0x20) fail("Invalid control character at", i)
                if (ch0 != '\\'.code) { sb.append(ch0.toChar()); i++; continue }
                i++  // after the backslash
                if (i >= n) fail("Unterminated string starting at", begin - 1)
                val e = c(i)
                if (e != 'u'.code) {
                    val ch = when (e) {
                        '"'.code -> '"'; '\\'.code -> '\\'; '/'.code -> '/'; 'b'.code -> '\b'
                        'f'.code -> '\u000c'; 'n'.code -> '\n'; 'r'.code -> '\r'; 't'.code -> '\t'
                        else -> fail("Invalid \\escape", i - 1)
                    }
                    sb.append(ch)
                    i++
                    continue
                }
                val u = i
                var cp = hex4(u + 1) ?: fail("Invalid \\uXXXX escape", u)
                i = u + 5
                if (cp in 0xd800..0xdbff && i + 6 < n && c(i) == '\\'.code && c(i + 1) == 'u'.code) {
                    val lo = hex4(i + 2) ?: fail("Invalid \\uXXXX escape", i + 1)
                    if (lo in 0xdc00..0xdfff) {
                        cp = 0x10000 + ((cp - 0xd800) shl 10) + (lo - 0xdc00)
                        i += 6
                    }
                }
                sb.appendCodePoint(cp)
            }
        }

        fun hex4(i: Int): Int? {
            if (i + 4 >= n) return null  // as _json.c: four digits and at least the closing quote after them
            var v = 0
            for (k in 0 until 4) {
                val d = Character.digit(c(i + k), 16)
                if (d < 0 || c(i + k) > 'f'.code) return null
                v = (v shl 4) or d
            }
            return v
        }

        fun obj(i0: Int, depth: Int): Pair<Any?, Int> {
            if (depth > MAX_DEPTH) throw DecodeError("nested too deeply")
            val out = LinkedHashMap<String, Any?>()
            var i = ws(i0)
            if (i < n && c(i) == '}'.code) return out to i + 1
            if (i >= n || c(i) != '"'.code) fail("Expecting property name enclosed in double quotes", i)
            while (true) {
                val (k, afterKey) = string(i + 1)
                i = ws(afterKey)
                if (i >= n || c(i) != ':'.code) fail("Expecting ':' delimiter", i)
                i = ws(i + 1)
                val (v, afterValue) = value(i, depth) ?: fail("Expecting value", i)
                out[k as String] = v
                i = ws(afterValue)
                if (i < n && c(i) == '}'.code) return out to i + 1
                if (i >= n || c(i) != ','.code) fail("Expecting ',' delimiter", i)
                i = ws(i + 1)
                if (i >= n || c(i) != '"'.code) fail("Expecting property name enclosed in double quotes", i)
            }
        }

        fun array(i0: Int, depth: Int): Pair<Any?, Int> {
            if (depth > MAX_DEPTH) throw DecodeError("nested too deeply")
            val out = ArrayList<Any?>()
            var i = ws(i0)
            if (i < n && c(i) == ']'.code) return out to i + 1
            while (true) {
                val (v, after) = value(i, depth) ?: fail("Expecting value", i)
                out.add(v)
                i = ws(after)
                if (i < n && c(i) == ']'.code) return out to i + 1
                if (i >= n || c(i) != ','.code) fail("Expecting ',' delimiter", i)
                i = ws(i + 1)
            }
        }
    }

    fun dumps(v: Any?): String = StringBuilder().also { write(it, v) }.toString()

    private fun write(sb: StringBuilder, v: Any?) {
        when (v) {
            null -> sb.append("null")
            is Boolean -> sb.append(if (v) "true" else "false")
            is String -> writeString(sb, v)
            is Double -> sb.append(
                when {
                    v.isNaN() -> "NaN"
                    v.isInfinite() -> if (v > 0) "Infinity" else "-Infinity"
                    else -> PyFormat.floatRepr(v)
                })
            is Float -> write(sb, v.toDouble())
            is Number -> sb.append(v.toString())
            is Map<*, *> -> {
                sb.append('{')
                var first = true
                for ((k, x) in v) {
                    if (!first) sb.append(", ")
                    first = false
                    writeString(sb, k.toString())
                    sb.append(": ")
                    write(sb, x)
                }
                sb.append('}')
            }
            is List<*> -> {
                sb.append('[')
                v.forEachIndexed { idx, x -> if (idx > 0) sb.append(", "); write(sb, x) }
                sb.append(']')
            }
            else -> writeString(sb, v.toString())
        }
    }

    private fun writeString(sb: StringBuilder, s: String) {
        sb.append('"')
        for (ch in s) {
            when (ch) {
                '"' -> sb.append("\\\"")
                '\\' -> sb.append("\\\\")
                '\n' -> sb.append("\\n")
                '\r' -> sb.append("\\r")
                '\t' -> sb.append("\\t")
                '\b' -> sb.append("\\b")
                '\u000c' -> sb.append("\\f")
                else -> if (ch < ' ' || ch > '~') sb.append(String.format(Locale.ROOT, "\\u%04x", ch.code)) else sb.append(ch)
            }
        }
        sb.append('"')
    }
}
