package dev.edgeprobe.core

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

class ThermalLogTest {
    @Test
    fun worstStatusIsTrackedAcrossTheRunNotTheLastReading() {
        val log = ThermalLog()
        log.before(ThermalReading(0.0, 0, 0.4))
        for ((t, s) in listOf(1.0 to 1, 2.0 to 3, 3.0 to 1)) log.sample(ThermalReading(t, s, 0.8))
        log.after(ThermalReading(4.0, 1, 0.7))
        assertEquals(3, log.worstStatus)
        assertTrue(log.throttled())
        val json = log.toJson()
        assertTrue(json.getBoolean("available"))
        assertEquals("PowerManager", json.getString("source"))
        assertEquals(3, json.getInt("worst_status"))
        assertEquals("THERMAL_STATUS_SEVERE", json.getString("worst_status_name"))
        assertEquals(2.0, json.getDouble("worst_status_t_s"))
        assertEquals(3, json.getInt("samples"))
        assertEquals(0, json.getJSONObject("before").getInt("status"))
        assertEquals(1, json.getJSONObject("after").getInt("status"))
        assertEquals(0.4, json.getDouble("headroom_before"))
        assertEquals(0.7, json.getDouble("headroom_after"))
    }

    @Test
    fun aRunThatStartedThrottledCountsAsThrottled() {
        val log = ThermalLog()
        log.before(ThermalReading(0.0, 4, null))
        log.sample(ThermalReading(1.0, 1, null))
        log.after(ThermalReading(2.0, 0, null))
        assertEquals(4, log.worstStatus)
        assertEquals("THERMAL_STATUS_CRITICAL", log.toJson().getString("worst_status_name"))
    }

    @Test
    fun throttledFromModerateOn() {
        fun worst(s: Int) = ThermalLog().apply {
            before(ThermalReading(0.0, 0, null)); sample(ThermalReading(1.0, s, null)); after(ThermalReading(2.0, 0, null))
        }
        assertFalse(worst(0).throttled())
        assertFalse(worst(1).throttled()) // LIGHT: not yet throttling noticeably
        assertTrue(worst(2).throttled()) // MODERATE
        assertTrue(worst(6).throttled())
        assertFalse(worst(1).toJson().getBoolean("throttled"))
        assertTrue(worst(2).toJson().getBoolean("throttled"))
    }

    @Test
    fun nanHeadroomIsNullNotANumber() {
        val log = ThermalLog()
        log.before(ThermalReading(0.0, 0, Double.NaN))
        log.after(ThermalReading(1.0, 0, 0.25))
        val json = log.toJson() // org.json throws on NaN: this must not
        assertTrue(json.isNull("headroom_before"))
        assertTrue(json.getJSONObject("before").isNull("headroom"))
        assertEquals(0.25, json.getDouble("headroom_after"))
        // and the text is valid JSON without NaN tokens
        assertFalse(json.toString().contains("NaN"))
    }

    @Test
    fun noStatusIsUnavailableWithAReason() {
        val log = ThermalLog()
        log.before(ThermalReading(0.0, null, null)) // API 26-28: no getCurrentThermalStatus
        log.sample(ThermalReading(0.5, null, null))
        log.after(ThermalReading(1.0, null, null))
        val json = log.toJson()
        assertFalse(json.getBoolean("available"))
        assertTrue(json.getString("reason").contains("no thermal status"), json.getString("reason"))
        assertFalse(log.throttled())
        assertEquals(null, log.worstStatus)
        // a status below an unknown one is still a status: the block is available
        val some = ThermalLog().apply { before(ThermalReading(0.0, null, null)); after(ThermalReading(1.0, 0, null)) }
        assertTrue(some.toJson().getBoolean("available"))
        assertTrue(some.toJson().getJSONObject("before").isNull("status"))
    }

    @Test
    fun samplerLoopLogsReadsAndCountsFailures() {
        val n = java.util.concurrent.atomic.AtomicInteger()
        val loop = ThermalSamplerLoop({
            val k = n.incrementAndGet()
            if (k == 3) throw IllegalStateException("thermal service gone")
            ThermalReading(monotonicS(), if (k == 2) 3 else 0, null)
        }, periodMs = 5)
        loop.start()
        Thread.sleep(200)
        loop.stop()
        val json = loop.log.toJson()
        assertEquals(3, json.getInt("worst_status"))
        assertEquals(1, json.getInt("read_errors"))
        assertEquals(n.get() - 1, json.getInt("samples"))
    }
}
