package dev.edgeprobe.core

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNotNull
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import kotlin.math.abs

class EnergyTest {
    /** A recorded-looking trace: 10 ms samples, idle [0, 1) s at ~310 mA, run [1, 2] s at ~920 mA, the
     *  voltage sagging under load; [currentUa] maps the discharge current (µA, positive) to what the
     *  phone reports. */
    private fun trace(currentUa: (Long) -> Long, status: Int = BATTERY_STATUS_DISCHARGING, plugged: Int = 0): List<BatterySample> {
        val out = ArrayList<BatterySample>()
        for (k in 0..200) {
            val tS = k * 0.01 + (if (k in 1..199) 0.0003 * (k % 3) else 0.0) // jitter, as a real sampler has
            val running = tS >= 1.0
            val wobble = ((k * 7919) % 41 - 20) * 1000L // +-20 mA of noise, in µA
            val ua = (if (running) 920_000L else 310_000L) + wobble
            val mv = (if (running) 3_861L else 3_902L) + (k % 5)
            out.add(BatterySample(tS, currentUa(ua), mv, status, plugged))
        }
        return out
    }

    private fun integrate(samples: List<BatterySample>, idle: Boolean = true, runEndS: Double = 2.0): BatteryEnergy {
        val integ = BatteryEnergyIntegrator()
        integ.addAll(samples)
        if (idle) integ.idleStart(0.0)
        integ.runStart(1.0)
        integ.runEnd(runEndS)
        return integ.result()
    }

    private fun assertRel(expected: Double, actual: Double?, rel: Double = 1e-9) {
        assertNotNull(actual)
        assertTrue(abs(actual!! - expected) <= rel * abs(expected), "expected $expected, got $actual")
    }

    @Test
    fun pixelNegativeAndSamsungPositiveMicroampsGiveTheSameEnergy() {
        val pixel = integrate(trace({ -it }))
        val samsung = integrate(trace({ it }))
        assertTrue(pixel.available && samsung.available)
        assertEquals(-1, pixel.dischargeSign)
        assertEquals(1, samsung.dischargeSign)
        assertEquals("µA", pixel.currentUnit)
        // (0.92 - 0.31) A x ~3.87 V x 1 s, the idle power subtracted: about 2.3 J, positive for both
        assertTrue(pixel.energyJ!! in 2.0..2.6, "energy ${pixel.energyJ}")
        assertRel(pixel.energyJ!!, samsung.energyJ)
        assertRel(pixel.idleW!!, samsung.idleW)
        assertTrue(pixel.reliable, pixel.unreliableReason)
    }

    @Test
    fun milliampDeviceGivesTheSameEnergyAsMicroamps() {
        val ua = integrate(trace({ -it }))
        val ma = integrate(trace({ -it / 1000 })) // the trace's currents are whole mA
        assertEquals("mA", ma.currentUnit)
        assertEquals("µA", ua.currentUnit)
        assertRel(ua.energyJ!!, ma.energyJ)
        assertRel(ua.runW!!, ma.runW)
    }

    @Test
    fun chargingIsMarkedUnreliableWithTheReason() {
        val charging = integrate(trace({ it }, status = BATTERY_STATUS_CHARGING, plugged = 2))
        assertTrue(charging.available)
        assertFalse(charging.reliable)
        assertTrue(charging.unreliableReason!!.contains("charger"), charging.unreliableReason)
        assertEquals("Charging", charging.supplyStatus)
        assertEquals(true, charging.chargerOnline)
        // plugged alone (status still Discharging, as some phones report on a weak charger) is charging too
        val plugged = integrate(trace({ it }, plugged = 1))
        assertFalse(plugged.reliable)
        assertTrue(plugged.unreliableReason!!.contains("plugged=1"), plugged.unreliableReason)
        val onBattery = integrate(trace({ it }))
        assertTrue(onBattery.reliable, onBattery.unreliableReason)
        assertEquals(false, onBattery.chargerOnline)
        assertEquals("Discharging", onBattery.supplyStatus)
    }

    @Test
    fun zeroCurrentIsUnreliableAndNoEnergy() {
        val e = integrate(trace({ 0L }))
        assertTrue(e.available) // the raw samples still go to the host
        assertFalse(e.reliable)
        assertTrue(e.unreliableReason!!.contains("reads 0"), e.unreliableReason)
        assertNull(e.energyJ) // not 0 J: nothing was measured
        assertNull(e.grossEnergyJ)
        assertTrue(e.energyJReason!!.contains("reads 0"), e.energyJReason)
    }

    @Test
    fun aSampleWithoutCurrentIsDroppedAndCountedNotIntegratedAsZero() {
        // constant power: leaving a sample out changes nothing; reading it as 0 A would lower the energy
        fun flat(k: Int) = BatterySample(k * 0.01, if (k < 100) -300_000L else -900_000L, 3_900L, BATTERY_STATUS_DISCHARGING, 0)
        val whole = (0..200).map(::flat)
        val gap = whole.mapIndexed { k, s ->
            when (k) { 150 -> s.copy(currentNow = null); 160 -> s.copy(voltageMv = null); else -> s }
        }
        val ref = integrate(whole)
        val e = integrate(gap)
        assertEquals(2, e.samplesDropped)
        assertNotNull(e.droppedReason)
        assertEquals(ref.rawSamples.size - 2, e.rawSamples.size)
        assertTrue(e.rawSamples.none { it.currentNow == null || it.voltageMv == null })
        assertRel(ref.energyJ!!, e.energyJ, 1e-12)
        assertEquals(2, e.toJson().getInt("samples_dropped"))
    }

    @Test
    fun noSamplesInTheRunWindowIsUnavailableNotZero() {
        val samples = (0..99).map { BatterySample(it * 0.01, -300_000L, 3_900L, BATTERY_STATUS_DISCHARGING, 0) }
        val integ = BatteryEnergyIntegrator()
        integ.addAll(samples)
        integ.idleStart(0.0)
        integ.runStart(5.0)
        integ.runEnd(5.004)
        val e = integ.result()
        assertFalse(e.available)
        assertNull(e.energyJ)
        assertTrue(e.reason!!.contains("run window"), e.reason)
        val json = e.toJson()
        assertFalse(json.getBoolean("available"))
        assertEquals(e.reason, json.getString("reason"))
        assertFalse(json.has("energy_j"))
        // an idle window that got no sample: no baseline, so no energy either
        val integ2 = BatteryEnergyIntegrator()
        integ2.addAll(samples)
        integ2.idleStart(-3.0)
        integ2.idleEnd(-2.0)
        integ2.runStart(0.0)
        integ2.runEnd(0.99)
        val e2 = integ2.result()
        assertFalse(e2.available)
        assertTrue(e2.reason!!.contains("idle window"), e2.reason)
        // the window never marked
        assertFalse(BatteryEnergyIntegrator().also { it.addAll(samples) }.result().available)
    }

    @Test
    fun handComputedTrapezoidOnFourSamplesMatchesExactly() {
        // idle [-2, 0): 2 W flat; run [0, 4]: 4, 8, 12, 4 W at uneven times 0, 1, 2, 4 s (µA, Pixel sign)
        val integ = BatteryEnergyIntegrator()
        integ.add(BatterySample(-2.0, -500_000L, 4_000L, BATTERY_STATUS_DISCHARGING, 0))
        integ.add(BatterySample(-1.0, -500_000L, 4_000L, BATTERY_STATUS_DISCHARGING, 0))
        for ((t, ua) in listOf(0.0 to -1_000_000L, 1.0 to -2_000_000L, 2.0 to -3_000_000L, 4.0 to -1_000_000L)) {
            integ.add(BatterySample(t, ua, 4_000L, BATTERY_STATUS_DISCHARGING, 0))
        }
        integ.idleStart(-2.0)
        integ.runStart(0.0)
        integ.runEnd(4.0)
        val e = integ.result()
        // trapezoid: (4+8)/2*1 + (8+12)/2*1 + (12+4)/2*2 = 6 + 10 + 16 = 32 J over 4 s = 8 W
        // (a plain mean of the samples says 7 W; a trapezoid that assumed equal steps, 28/3 W)
        assertEquals(8.0, e.runW)
        assertEquals(2.0, e.idleW)
        assertEquals(32.0, e.grossEnergyJ)
        assertEquals(24.0, e.energyJ) // (8 - 2) W x 4 s
        assertEquals(4.0, e.durationS)
        assertEquals(4, e.runSamples)
        assertEquals(2, e.idleSamples)
    }

    @Test
    fun withoutAnIdleWindowTheNetEnergyIsNullWithAReason() {
        val e = integrate(trace({ -it }), idle = false)
        assertTrue(e.available)
        assertNull(e.energyJ)
        assertNotNull(e.energyJReason)
        assertNotNull(e.grossEnergyJ)
        assertFalse(e.reliable)
        val json = e.toJson()
        assertTrue(json.isNull("energy_j"))
        val w = json.getJSONObject("window")
        // the host needs numbers in every window key; no idle window = an empty one at the run's start
        assertEquals(1.0, w.getDouble("idle_start_s"))
        assertEquals(1.0, w.getDouble("idle_end_s"))
        assertEquals(0, json.getInt("idle_samples"))
    }

    @Test
    fun theJsonBlockKeepsTheRawSamplesAsReadAndSaysTheUnits() {
        val samples = trace({ -it })
        val json = integrate(samples).toJson()
        assertEquals("battery", json.getString("meter"))
        assertEquals("mV", json.getString("voltage_unit"))
        assertEquals("µA", json.getString("current_unit"))
        assertEquals(-1, json.getInt("discharge_sign"))
        assertEquals("Discharging", json.getString("supply_status"))
        assertFalse(json.getBoolean("charger_online"))
        val raw = json.getJSONArray("raw_samples")
        assertEquals(samples.size, raw.length()) // every sample lies in [0, 2]
        assertEquals(json.getInt("samples"), raw.length())
        for (k in 0 until raw.length()) {
            val row = raw.getJSONArray(k)
            assertEquals(samples[k].tS, row.getDouble(0))
            assertEquals(samples[k].currentNow, row.getLong(1)) // negative, as the Pixel reported it
            assertEquals(samples[k].voltageMv, row.getLong(2))
        }
        val w = json.getJSONObject("window")
        assertEquals(listOf(0.0, 1.0, 1.0, 2.0),
            listOf("idle_start_s", "idle_end_s", "run_start_s", "run_end_s").map { w.getDouble(it) })
        assertEquals(json.getDouble("duration_s"), 1.0)
    }

    @Test
    fun samplerLoopFeedsTheIntegratorUntilStopped() {
        val fail = java.util.concurrent.atomic.AtomicBoolean(false)
        val loop = BatterySamplerLoop({
            if (fail.get()) throw IllegalStateException("binder died")
            BatterySample(monotonicS(), -300_000L, 3_900L, BATTERY_STATUS_DISCHARGING, 0)
        }, periodMs = 5)
        val t0 = monotonicS()
        loop.integrator.idleStart(t0)
        loop.start()
        Thread.sleep(150)
        loop.integrator.runStart(monotonicS())
        Thread.sleep(150)
        fail.set(true)
        Thread.sleep(50)
        loop.integrator.runEnd(monotonicS())
        loop.stop()
        val taken = loop.samplesTaken
        Thread.sleep(50)
        assertEquals(taken, loop.samplesTaken, "a sample was added after stop()")
        assertTrue(taken >= 6, "only $taken samples in 300 ms at a 5 ms period")
        val e = loop.integrator.result()
        assertTrue(e.available, e.reason)
        assertTrue(e.samplesDropped >= 1, "the failed reads were not counted")
        assertTrue(e.droppedReason!!.contains("binder died"), e.droppedReason)
    }
}
