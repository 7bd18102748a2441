package dev.edgeprobe.app

import android.content.Context
import android.os.Build
import android.os.PowerManager
import dev.edgeprobe.core.ThermalReader
import dev.edgeprobe.core.ThermalReading

/** PowerManager as a [ThermalReader]: getCurrentThermalStatus (API 29+) and getThermalHeadroom
 *  (API 30+; NaN when the device has no forecast). Older devices read null, never a made-up status. */
class ThermalMeter(context: Context) : ThermalReader {
    private val power = context.getSystemService(Context.POWER_SERVICE) as PowerManager

    override fun read(): ThermalReading {
        val tS = elapsedRealtimeS()
        val status = if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.Q) power.currentThermalStatus else null
        val headroom = if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.R) {
            power.getThermalHeadroom(FORECAST_S).takeIf { !it.isNaN() }?.toDouble()
        } else {
            null
        }
        return ThermalReading(tS, status, headroom)
    }

    private companion object {
        /** headroom now, not a forecast */
        const val FORECAST_S = 0
    }
}
