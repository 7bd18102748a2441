package dev.edgeprobe.core

import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import java.io.ByteArrayOutputStream
import java.io.File
import java.net.ServerSocket
import java.net.Socket
import java.net.SocketTimeoutException
import kotlin.concurrent.thread

/** The wire against Python's: MACs, JSON texts and bytes, the handshake both ways, framing refusals. */
class WireTest {
    companion object {
        const val TOKEN = "runner-token-0123456789"

        fun connect(port: Int): Conn {
            val s = Socket("127.0.0.1", port)
            s.soTimeout = 10_000
            return Conn(s)
        }

        /** Reads until the peer closes (or 5 s pass); the bytes. */
        fun drain(c: Conn): ByteArray {
            val out = ByteArrayOutputStream()
            val buf = ByteArray(4096)
            c.setReadTimeoutS(5.0)
            try {
                while (true) {
                    val n = c.read(buf, 0, buf.size)
                    if (n < 0) break
                    out.write(buf, 0, n)
                }
            } catch (_: java.io.IOException) {
            }
            return out.toByteArray()
        }

        fun frame(header: String): ByteArray {
            val b = header.toByteArray(Charsets.UTF_8)
            return byteArrayOf((b.size ushr 24).toByte(), (b.size ushr 16).toByte(), (b.size ushr 8).toByte(), b.size.toByte()) + b
        }
    }

    @TempDir lateinit var tmp: File
    private var server: RunnerServer? = null

    private fun serve(limits: ServerLimits = ServerLimits(authDeadlineS = 1.5, idleTimeoutS = 3.0)): RunnerServer {
        val s = RunnerServer("127.0.0.1", 0, TOKEN, File(tmp, "work"), "t", limits = limits)
        s.start()
        server = s
        return s
    }

    @AfterEach fun stop() {
        server?.stop()
    }

    @Test fun macsAreThoseOfPythonsHmac() {
        // python3: wire.auth_mac(TOKEN, role, "runner", "ab" * 32, "cd" * 32); wire.auth_mac("tökén", ...)
        assertEquals("712430b296b7be60e0656e3cc8d71fe1cb7d239b29ee2169450336c5b03a690c",
            Wire.authMac(TOKEN, "client", "runner", "ab".repeat(32), "cd".repeat(32)))
        assertEquals("304c0e4f53a9228a2211258940c7df571675d965166fab8c460af1db50d9a911",
            Wire.authMac(TOKEN, "server", "runner", "ab".repeat(32), "cd".repeat(32)))
        assertEquals("0273398378c805b8c546cd2a69fad4f61aca6ead93e2684ef0d3fb3f0208d645",
            Wire.authMac("tökén", "client", "runner", "0".repeat(64), "f".repeat(64)))
        assertTrue(Wire.isHex64(Wire.newNonce()))
        assertFalse(Wire.newNonce() == Wire.newNonce())
        assertFalse(Wire.macEqual("AB".repeat(32), "ab".repeat(32)))  // lowercase hex only, as Python's compare_digest
    }

    @Test fun framesAreTheBytesOfPythonsEncodeMsg() {
        // python3: wire.encode_msg({'op': 'x', 'v': [1, 2.5, None, True], 's': 'é"\\\n\x7f/😀'})
        val want = "\u0000\u0000\u0000N" + "{\"op\": \"x\", \"v\": [1, 2.5, null, true], \"s\": \"\\u00e9\\\"\\\\\\n\\u007f/\\ud83d\\ude00\"}"
        val got = Wire.encodeMsg(linkedMapOf("op" to "x", "v" to listOf(1L, 2.5, null, true), "s" to "é\"\\\n\u007f/\uD83D\uDE00"))
        assertArrayEquals(want.toByteArray(Charsets.ISO_8859_1), got)
    }

    @Test fun jsonErrorsAreTheTextsOfPythonsJson() {
        // python3: json.loads(text) -> str(exc)
        val cases = mapOf(
            "" to "Expecting value: line 1 column 1 (char 0)",
            "[1," to "Expecting value: line 1 column 4 (char 3)",
            "{\"a\" 1}" to "Expecting ':' delimiter: line 1 column 6 (char 5)",
            "{\"a\":1,}" to "Expecting property name enclosed in double quotes: line 1 column 8 (char 7)",
            "{1:2}" to "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
            "\"abc" to "Unterminated string starting at: line 1 column 1 (char 0)",
            "\"a\\x\"" to "Invalid \\escape: line 1 column 3 (char 2)",
            "\"\\u12\"" to "Invalid \\uXXXX escape: line 1 column 3 (char 2)",
            "[1 2]" to "Expecting ',' delimiter: line 1 column 4 (char 3)",
            "1 2" to "Extra data: line 1 column 3 (char 2)",
            "\"\u0001\"" to "Invalid control character at: line 1 column 2 (char 1)",
            "nul" to "Expecting value: line 1 column 1 (char 0)",
            "-" to "Expecting value: line 1 column 1 (char 0)",
            "01" to "Extra data: line 1 column 2 (char 1)",
            "{\n\"a\": x}" to "Expecting value: line 2 column 6 (char 7)",
        )
        for ((text, want) in cases) {
            val e = assertThrows(PyJson.DecodeError::class.java, { PyJson.loads(text) }, text)
            assertEquals(want, e.message, text)
        }
        val utf8 = mapOf(
            byteArrayOf(0xff.toByte()) to "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte",
            byteArrayOf('a'.code.toByte(), 0xc3.toByte()) to "'utf-8' codec can't decode byte 0xc3 in position 1: unexpected end of data",
            byteArrayOf(0xe0.toByte(), 0x80.toByte()) to "'utf-8' codec can't decode byte 0xe0 in position 0: invalid continuation byte",
            byteArrayOf(0xed.toByte(), 0xa0.toByte(), 0x80.toByte()) to "'utf-8' codec can't decode byte 0xed in position 0: invalid continuation byte",
            byteArrayOf(0xf0.toByte(), 0x9f.toByte(), 0x98.toByte()) to "'utf-8' codec can't decode bytes in position 0-2: unexpected end of data",
        )
        for ((bytes, want) in utf8) assertEquals(want, assertThrows(PyJson.DecodeError::class.java) { PyJson.decodeUtf8(bytes) }.message)
        assertEquals("é😀", PyJson.decodeUtf8("é😀".toByteArray()))
    }

    @Test fun jsonValuesKeepPythonsTypes() {
        val v = PyJson.loads("{\"i\": 3, \"f\": 3.0, \"b\": true, \"n\": null, \"big\": 1000000000000000000000000000000, " +
            "\"nan\": NaN, \"i\": 4, \"s\": \"\\ud83d\\ude00\\ud800\"}") as Map<*, *>
        assertEquals(4L, v["i"])  // a repeated key: the last wins
        assertEquals(listOf("i", "f", "b", "n", "big", "nan", "s"), v.keys.toList())  // at the first one's place
        assertEquals(3.0, v["f"])
        assertTrue(v["f"] is Double && v["b"] is Boolean && v.containsKey("n") && v["n"] == null)
        assertEquals(java.math.BigInteger.TEN.pow(30), v["big"])
        assertTrue((v["nan"] as Double).isNaN())
        assertEquals("\uD83D\uDE00\uD800", v["s"])
        val deep = "[".repeat(5000) + "]".repeat(5000)
        assertEquals("nested too deeply", assertThrows(PyJson.DecodeError::class.java) { PyJson.loads(deep) }.message)
    }

    @Test fun pythonReprAndFormat() {
        // python3: repr(x) / format(x, 'g')
        val floats = mapOf(1e-05 to "1e-05", 1e16 to "1e+16", 123456789012345680.0 to "1.2345678901234568e+17",
            0.1 + 0.2 to "0.30000000000000004", 5e-324 to "5e-324", 1.7976931348623157e308 to "1.7976931348623157e+308",
            60.0 to "60.0", 0.5 to "0.5", 1e9 to "1000000000.0", 0.0001 to "0.0001", -2.5 to "-2.5", 1e15 to "1000000000000000.0")
        for ((x, want) in floats) assertEquals(want, PyFormat.floatRepr(x))
        val g = mapOf(0.0 to "0", 1e6 to "1e+06", 1e8 to "1e+08", 86400.0 to "86400", 1e9 to "1e+09", 0.001 to "0.001",
            10.0 to "10", 1.5 to "1.5", 123456789.0 to "1.23457e+08", 0.00001 to "1e-05")
        for ((x, want) in g) assertEquals(want, PyFormat.g(x), "$x")
        assertEquals("\"a'b\"", PyFormat.reprString("a'b"))
        assertEquals("'a\\'b\"'", PyFormat.reprString("a'b\""))
        assertEquals("'\\x00\\u200b\uD83D\uDE00é\\xa0'", PyFormat.reprString("\u0000\u200b\uD83D\uDE00é\u00a0"))
        assertEquals("[1, 'a', {'k': None}]", PyFormat.str(listOf(1L, "a", linkedMapOf("k" to null))))
    }

    @Test fun handshakeBothWaysAndAWrongTokenIsClosed() {
        val srv = serve()
        connect(srv.port).use { c ->
            val info = Wire.clientHandshake(c, TOKEN, "runner", "test")
            assertEquals("t", info["name"])
            assertEquals("edgeprobe-core", info["server"])
            Wire.sendMsg(c, linkedMapOf("op" to "info"))
            assertEquals(true, Wire.recvMsg(c)["ok"])
        }
        connect(srv.port).use { c ->
            val e = assertThrows(AuthError::class.java) { Wire.clientHandshake(c, "not-the-token", "runner", "test") }
            assertEquals("test refused the connection: unauthorized: wrong token", e.message)
            assertEquals(0, drain(c).size)  // and closed after it
        }
        connect(srv.port).use { c ->  // a client of the other service stops at the challenge
            val e = assertThrows(AuthError::class.java) { Wire.clientHandshake(c, TOKEN, "split", "test") }
            assertEquals("test is an edgeprobe 'runner' server, not the 'split' one; check the address", e.message)
        }
        connect(srv.port).use { c ->  // the raw exchange: the server's MAC is over both nonces
            val challenge = Wire.recvMsg(c)
            val sn = challenge["nonce"] as String
            assertEquals(mapOf("op" to "challenge", "auth" to "hmac-sha256", "service" to "runner", "nonce" to sn), challenge)
            val cn = "ab".repeat(32)
            Wire.sendMsg(c, linkedMapOf("op" to "hello", "nonce" to cn, "mac" to Wire.authMac(TOKEN, "client", "runner", sn, cn)))
            val ok = Wire.recvMsg(c)
            assertEquals(Wire.authMac(TOKEN, "server", "runner", sn, cn), ok["mac"])
        }
    }

    @Test fun aServerThatCannotProveTheTokenIsNotTalkedTo() {
        val rogue = ServerSocket(0)
        val received = ByteArrayOutputStream()
        val t = thread(isDaemon = true) {
            rogue.accept().use { s ->
                val c = Conn(s)
                s.soTimeout = 5000
                Wire.sendMsg(c, linkedMapOf("op" to "challenge", "auth" to "hmac-sha256", "service" to "runner", "nonce" to Wire.newNonce()))
                val hello = Wire.recvMsg(c)
                synchronized(received) { received.write(PyJson.dumps(hello).toByteArray()) }
                Wire.sendMsg(c, linkedMapOf("ok" to true, "mac" to "0".repeat(64), "info" to linkedMapOf("name" to "rogue")))
                val buf = ByteArray(4096)
                try {
                    while (true) { val n = c.read(buf, 0, buf.size); if (n < 0) break; synchronized(received) { received.write(buf, 0, n) } }
                } catch (_: SocketTimeoutException) {
                }
            }
        }
        connect(rogue.localPort).use { c ->
            val e = assertThrows(AuthError::class.java) { Wire.clientHandshake(c, TOKEN, "runner", "127.0.0.1:1") }
            assertEquals("the server at 127.0.0.1:1 did not prove it holds the token; not talking to it", e.message)
        }
        t.join(10_000)
        rogue.close()
        val got = synchronized(received) { received.toString("UTF-8") }
        assertTrue(got.startsWith("{\"op\": \"hello\""), got)
        assertEquals(1, got.count { it == '{' }, got)  // the hello and nothing after it
        assertFalse(got.contains(TOKEN))
    }

    @Test fun anOversizeHeaderBeforeAuthIsRefusedAtOnce() {
        val srv = serve()
        connect(srv.port).use { c ->
            Wire.recvMsg(c)
            c.write(byteArrayOf(0, 0, 0x10, 0x01) + "{".repeat(100).toByteArray())  // 4097 bytes claimed
            val t0 = System.nanoTime()
            val reply = Wire.recvMsg(c)
            assertTrue((System.nanoTime() - t0) / 1e9 < 1.0)
            assertEquals(true, reply["closed"])
            assertEquals("unauthorized: header of 4097 bytes is over the 4096-byte limit (answer the challenge with " +
                "hello {nonce, mac} within 1.5 s)", reply["error"])
        }
        connect(srv.port).use { c ->  // a 4 GiB claim: the length is unsigned
            Wire.recvMsg(c)
            c.write(byteArrayOf(-1, -1, -1, -1))
            assertTrue((Wire.recvMsg(c)["error"] as String).contains("header of 4294967295 bytes is over the 4096-byte limit"))
        }
        connect(srv.port).use { c ->  // a hello that is not one
            Wire.recvMsg(c)
            Wire.sendMsg(c, linkedMapOf("op" to "hello", "token" to TOKEN))
            assertTrue((Wire.recvMsg(c)["error"] as String).startsWith("unauthorized: the first message must be hello"))
        }
    }

    @Test fun aSlowHelloIsDroppedAtTheDeadline() {
        val srv = serve()
        connect(srv.port).use { c ->
            Wire.recvMsg(c)
            val t0 = System.nanoTime()
            val hello = Wire.encodeMsg(linkedMapOf("op" to "hello", "nonce" to "ab".repeat(32), "mac" to "cd".repeat(32)))
            var reply: Map<String, Any?>? = null
            for (b in hello.take(8)) {  // a byte every 0.4 s: each read is quick, the whole is not
                try { c.write(byteArrayOf(b)) } catch (_: java.io.IOException) { break }
                c.setReadTimeoutS(0.4)
                try { reply = Wire.recvMsg(c); break } catch (_: SocketTimeoutException) {}
            }
            val tookS = (System.nanoTime() - t0) / 1e9
            assertTrue(reply != null && (reply["error"] as String).contains("authentication deadline passed"), "$reply")
            assertTrue(tookS in 1.3..3.0, "$tookS")
        }
    }

    private fun authed(srv: RunnerServer): Conn {
        val c = connect(srv.port)
        Wire.clientHandshake(c, TOKEN, "runner", "test")
        return c
    }

    @Test fun badFramesAfterAuthAreSaidInOneLineAndClosed() {
        val srv = serve()
        authed(srv).use { c ->  // truncated: 10 bytes claimed, 2 sent
            c.write(byteArrayOf(0, 0, 0, 10, '{'.code.toByte(), '}'.code.toByte()))
            c.socket.shutdownOutput()
            val r = Wire.recvMsg(c)
            assertEquals("bad frame: connection closed after 2 of 10 bytes; closing", r["error"])
            assertEquals(true, r["closed"])
        }
        authed(srv).use { c ->
            c.write(frame("[1, 2]"))
            assertEquals("bad frame: header is a JSON list, not an object; closing", Wire.recvMsg(c)["error"])
            assertEquals(0, drain(c).size)
        }
        authed(srv).use { c ->
            c.write(frame("{\"op\": 'info'}"))
            assertEquals("bad frame: header is not UTF-8 JSON: Expecting value: line 1 column 8 (char 7); closing",
                Wire.recvMsg(c)["error"])
        }
        authed(srv).use { c ->  // a header over 1 MiB after authentication
            c.write(byteArrayOf(0, 0x10, 0, 1))
            assertEquals("bad frame: header of 1048577 bytes is over the 1048576-byte limit; closing", Wire.recvMsg(c)["error"])
        }
        authed(srv).use { c ->  // an unknown op is refused and the connection stays
            Wire.sendMsg(c, linkedMapOf("op" to "exec"))
            val r = Wire.recvMsg(c)
            assertEquals("unknown op 'exec' (push, pull, remove, run, info)", r["error"])
            assertFalse(r.containsKey("closed"))
            Wire.sendMsg(c, linkedMapOf("op" to "info"))
            assertEquals(true, Wire.recvMsg(c)["ok"])
        }
    }

    private fun waitFor(what: () -> Boolean) {
        val t0 = System.nanoTime()
        while (!what() && System.nanoTime() - t0 < 5e9) Thread.sleep(20)
    }

    @Test fun theUnauthenticatedCapPerAddressAndTheConnectionCap() {
        val srv = serve(ServerLimits(maxConnections = 4, maxPreauthPerAddress = 2, authDeadlineS = 5.0))
        val held = ArrayList<Conn>()
        try {
            held += authed(srv)
            repeat(2) { held += connect(srv.port).also { assertEquals("challenge", Wire.recvMsg(it)["op"]) } }
            connect(srv.port).use { c ->
                val r = Wire.recvMsg(c)
                assertEquals("busy: 127.0.0.1 already has 2 connections that have not authenticated; try again later", r["error"])
                assertEquals(true, r["closed"])
            }
            held.removeAt(2).close()  // its place comes back when the server sees it go
            waitFor { srv.connections == 2 }
            held += authed(srv)  // authenticated: no longer counted as unauthenticated
            held += connect(srv.port).also { assertEquals("challenge", Wire.recvMsg(it)["op"]) }
            assertEquals(4, srv.connections)
            connect(srv.port).use { c ->
                assertEquals("busy: this server already has 4 connections (its connection cap); try again later", Wire.recvMsg(c)["error"])
            }
            Wire.sendMsg(held[0], linkedMapOf("op" to "info"))  // an authenticated client is served at the cap
            assertEquals(true, Wire.recvMsg(held[0])["ok"])
        } finally {
            held.forEach { it.close() }
        }
        waitFor { srv.connections == 0 }
        assertEquals(0, srv.connections)  // released when they closed
        authed(srv).close()
    }

    @Test fun anIdleAuthenticatedConnectionIsClosed() {
        val srv = serve(ServerLimits(idleTimeoutS = 0.5))
        authed(srv).use { c ->
            val t0 = System.nanoTime()
            assertEquals(0, drain(c).size)
            val s = (System.nanoTime() - t0) / 1e9
            assertTrue(s in 0.4..2.0, "$s")
        }
    }
}
