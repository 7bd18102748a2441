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

// The bounded TCP server under both of core's services (split out of Wire.kt: one job per file).

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
