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

// Python's str()/repr()/format(x, 'g') for error texts identical to the Python server's (split out of Wire.kt).

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
