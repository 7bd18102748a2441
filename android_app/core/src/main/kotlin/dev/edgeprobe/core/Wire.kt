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
    fun discard(conn: Conn, size: Long) = recvToFile(conn, size, DROP)

    /** An OutputStream that keeps nothing (OutputStream.nullOutputStream is Java 11: not on Android 26). */
    private val DROP = object : OutputStream() {
        override fun write(b: Int) {}
        override fun write(b: ByteArray, off: Int, len: Int) {}
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
