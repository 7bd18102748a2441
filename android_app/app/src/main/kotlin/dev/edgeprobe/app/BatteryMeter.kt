package dev.edgeprobe.app

import android.content.Context
import android.content.Intent
import android.content.IntentFilter
import android.os.BatteryManager
import dev.edgeprobe.core.BatterySample
import dev.edgeprobe.core.BatterySampler

/** BatteryManager as a [BatterySampler]: BATTERY_PROPERTY_CURRENT_NOW as the platform gives it (unit
 *  and sign vary by vendor: core's BatteryEnergyIntegrator decides them), voltage, status and plug
 *  state from the sticky ACTION_BATTERY_CHANGED intent. Nothing is converted here. */
class BatteryMeter(private val context: Context) : BatterySampler {
    private val battery = context.getSystemService(Context.BATTERY_SERVICE) as BatteryManager
    private var sticky: Intent? = null
    private var stickyAtS = Double.NEGATIVE_INFINITY

    override fun sample(): BatterySample {
        val tS = elapsedRealtimeS()
        // Long.MIN_VALUE: the property is not supported on this device (BatteryManager docs)
        val current = battery.getLongProperty(BatteryManager.BATTERY_PROPERTY_CURRENT_NOW).takeIf { it != Long.MIN_VALUE }
        val intent = stickyIntent(tS)
        return BatterySample(
            tS = tS,
            currentNow = current,
            voltageMv = intent?.getIntExtra(BatteryManager.EXTRA_VOLTAGE, -1)?.takeIf { it > 0 }?.toLong(),
            status = intent?.getIntExtra(BatteryManager.EXTRA_STATUS, -1)?.takeIf { it >= 0 },
            plugged = intent?.getIntExtra(BatteryManager.EXTRA_PLUGGED, -1)?.takeIf { it >= 0 },
        )
    }

    /** The sticky intent, read again at most every [STICKY_REFRESH_S]: registerReceiver is a binder
     *  call, too slow for every 10 ms sample, and the system re-broadcasts it only on a change anyway. */
    private fun stickyIntent(nowS: Double): Intent? {
        if (nowS - stickyAtS >= STICKY_REFRESH_S) {
            sticky = context.registerReceiver(null, IntentFilter(Intent.ACTION_BATTERY_CHANGED))
            stickyAtS = nowS
        }
        return sticky
    }

    private companion object {
        const val STICKY_REFRESH_S = 0.5
    }
}
