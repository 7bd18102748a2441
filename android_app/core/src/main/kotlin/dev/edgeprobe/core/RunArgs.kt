package dev.edgeprobe.core

import java.io.File
import java.math.BigInteger

// The structured run request (device_runner/edgeprobe_runner/server.py RUN_ARGS / build_argv): every
// key of `args` is checked against this table and the runner's argv is built from it, so no client
// string reaches an argv unchecked. The refusals are the Python server's texts.

/** A request refused with the connection still in sync (nothing of it is left unread). */
open class Refused(message: String) : ProtocolError(message)

/** A request refused whose payload was not read: the reply says so and the connection closes. */
class Fatal(message: String) : ProtocolError(message)

/** One run argument: [kind] path | int | float | enum | name | address | flag. */
data class Arg(
    val kind: String,
    val lo: Double = 0.0,
    val hi: Double = 0.0,
    val choices: List<String> = emptyList(),
    val nativeOnly: Boolean = false,
    val required: Boolean = false,
) {
    val takes: String
        get() = when (kind) {
            "int" -> "an integer in ${PyFormat.g(lo)}..${PyFormat.g(hi)}"
            "float" -> "a number in ${PyFormat.g(lo)}..${PyFormat.g(hi)}"
            "path" -> "a path relative to the work dir"
            "enum" -> "one of ${choices.joinToString(", ")}"
            "name" -> "a name of letters, digits, '_', '.', '-'"
            "address" -> "HOST:PORT or none"
            "flag" -> "true or false"
            else -> error("unknown Arg kind $kind")
        }
}

object RunArgs {
    private val NAME = Regex("[A-Za-z0-9_][A-Za-z0-9_.\\-]{0,255}")
    private val METHOD = Regex("[A-Za-z_][A-Za-z0-9_]{0,127}")
    private val ADDRESS = Regex("(?:[A-Za-z0-9][A-Za-z0-9.\\-]{0,252}|\\[[0-9A-Fa-f:.]{2,45}\\]):[0-9]{1,5}")

    /** In argv order; the flag of a key is `--` + the key with `_` as `-` (PROTOCOL.md). */
    val RUN_ARGS: Map<String, Arg> = linkedMapOf(
        "model" to Arg("path", required = true),
        "vectors" to Arg("path"),
        "warmup" to Arg("int", 0.0, 1_000_000.0),
        "iterations" to Arg("int", 1.0, 100_000_000.0),
        "min_seconds" to Arg("float", 0.0, 86_400.0),
        "max_iterations" to Arg("int", 0.0, 1_000_000_000.0),
        "idle_s" to Arg("float", 0.0, 3_600.0),
        "threads" to Arg("int", 0.0, 4_096.0),
        "rtol" to Arg("float", 0.0, 1e9),
        "atol" to Arg("float", 0.0, 1e9),
        "method" to Arg("name"),
        "output" to Arg("path"),
        "etdump" to Arg("path"),
        "save_outputs" to Arg("path"),
        "split_server" to Arg("address", nativeOnly = true),
        "split_outputs" to Arg("path", nativeOnly = true),
        "split_token_file" to Arg("path", nativeOnly = true),
        "split_name" to Arg("name", nativeOnly = true),
        "split_send" to Arg("int", 0.0, 1_000_000.0, nativeOnly = true),
        "split_encoding" to Arg("enum", choices = listOf("fp32", "fp16", "int8"), nativeOnly = true),
        "split_send_inputs" to Arg("flag", nativeOnly = true),
        "split_timeout_s" to Arg("float", 0.001, 86_400.0, nativeOnly = true),
    )

    fun flag(key: String): String = "--" + key.replace('_', '-')

    /** A JSON integer as Python sees one (never a bool: JSON true is a Boolean here). */
    private fun asInteger(v: Any?): BigInteger? = when (v) {
        is Long -> BigInteger.valueOf(v)
        is Int -> BigInteger.valueOf(v.toLong())
        is BigInteger -> v
        else -> null
    }

    private fun within(v: BigInteger, spec: Arg): Boolean =
        // the bounds are at most 1e9: exact as longs
        v >= BigInteger.valueOf(Math.ceil(spec.lo).toLong()) && v <= BigInteger.valueOf(Math.floor(spec.hi).toLong())

    /** The runner's flags from a structured request: every value checked against [RUN_ARGS], every
     *  path through [confine] (a file strictly inside the work dir, absolute). [runners]: the runner
     *  names this server takes (the refusal lists them); [nativeFlagRunners]: those that may be given
     *  the native-only keys (the Python server: native; this one: native and app, the same argv). */
    fun buildArgv(
        runner: Any?, args: Any?, confine: (Any?) -> File,
        runners: List<String> = listOf("native", "app"),
        nativeFlagRunners: Set<String> = setOf("native", "app"),
    ): List<String> {
        if (runner !is String || runner !in runners) {
            throw Refused("run needs runner ${runners.joinToString(" or ")}, not ${PyFormat.repr(runner)}")
        }
        if (args !is Map<*, *>) throw Refused("run needs args: a JSON object of run arguments (PROTOCOL.md)")
        val unknown = args.keys.map { it.toString() }.filter { it !in RUN_ARGS }.sorted()
        if (unknown.isNotEmpty()) {
            throw Refused("run does not take ${unknown.joinToString(", ") { PyFormat.repr(it) }}; " +
                "the run arguments are ${RUN_ARGS.keys.joinToString(", ")}")
        }
        val out = ArrayList<String>()
        for ((key, spec) in RUN_ARGS) {
            if (!args.containsKey(key)) {
                if (spec.required) throw Refused("run needs ${PyFormat.repr(key)}")
                continue
            }
            val value = args[key]
            val flag = flag(key)
            if (spec.nativeOnly && runner !in nativeFlagRunners) throw Refused("${PyFormat.repr(key)} is for the native runner only")
            val bad = Refused("run argument ${PyFormat.repr(key)} must be ${spec.takes}, " +
                "not ${PyFormat.repr(PyFormat.head(PyFormat.str(value), 80))}")
            when (spec.kind) {
                "path" -> out += listOf(flag, confine(value).path)
                "int" -> {
                    val v = asInteger(value)
                    if (v == null || !within(v, spec)) throw bad
                    out += listOf(flag, v.toString())
                }
                "float" -> {
                    // an integer is taken as Python's float(value): 60 -> "60.0"
                    val v = asInteger(value)?.let { if (it.bitLength() < 63) it.toDouble() else null }
                        ?: (value as? Double) ?: throw bad
                    if (v.isNaN() || v.isInfinite() || v < spec.lo || v > spec.hi) throw bad
                    // Python's repr(float) ("0.5", "60.0", "1e-05"); both runners (strtod, float()) parse it
                    out += listOf(flag, PyFormat.floatRepr(v))
                }
                "enum" -> {
                    if (value !is String || value !in spec.choices) throw bad
                    out += listOf(flag, value)
                }
                "name" -> {
                    val pattern = if (key == "method") METHOD else NAME
                    if (value !is String || !pattern.matches(value)) throw bad
                    out += listOf(flag, value)
                }
                "address" -> {
                    if (value !is String || !(value == "none" || ADDRESS.matches(value))) throw bad
                    if (value != "none" && value.substringAfterLast(':').toInt() !in 1..65535) throw bad
                    out += listOf(flag, value)
                }
                "flag" -> {
                    if (value !is Boolean) throw bad
                    if (value) out += listOf(flag, "1")
                }
            }
        }
        return out
    }
}
