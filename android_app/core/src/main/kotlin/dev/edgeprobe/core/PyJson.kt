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

// Python's json module, read and written (split out of Wire.kt).

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
