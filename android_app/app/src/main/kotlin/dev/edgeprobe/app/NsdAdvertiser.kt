package dev.edgeprobe.app

import android.content.Context
import android.net.nsd.NsdManager
import android.net.nsd.NsdServiceInfo
import android.util.Log
import dev.edgeprobe.core.Advertiser

/** NsdManager as core's [Advertiser]: `_edgeprobe._tcp` with the TXT records of the Python runner
 *  server's zeroconf advertisement (device_runner/edgeprobe_runner/server.py `advertise`: name, abi,
 *  runtimes, version), so the host finds the app exactly as it finds `edgeprobe runner serve`. */
class NsdAdvertiser(context: Context) : Advertiser {
    private val nsd = context.getSystemService(Context.NSD_SERVICE) as NsdManager
    private var listener: NsdManager.RegistrationListener? = null

    @Synchronized
    override fun advertise(name: String, port: Int, txt: Map<String, String>) {
        stop()
        val info = NsdServiceInfo()
        info.serviceName = name
        info.serviceType = SERVICE_TYPE
        info.port = port
        for (key in TXT_KEYS) {
            val value = txt[key] ?: continue
            try {
                info.setAttribute(key, value)
            } catch (e: IllegalArgumentException) {
                // a DNS-SD TXT entry holds at most 255 bytes: leave it out rather than not advertise
                Log.w(TAG, "TXT $key left out of the advertisement: ${e.message}")
            }
        }
        val l = object : NsdManager.RegistrationListener {
            override fun onServiceRegistered(serviceInfo: NsdServiceInfo) {
                Log.i(TAG, "advertised ${serviceInfo.serviceName} $SERVICE_TYPE port $port")
            }

            override fun onRegistrationFailed(serviceInfo: NsdServiceInfo, errorCode: Int) {
                Log.w(TAG, "NSD registration of $name failed (error $errorCode): the host must be given tcp:ADDRESS:$port")
            }

            override fun onServiceUnregistered(serviceInfo: NsdServiceInfo) {
                Log.i(TAG, "advertisement of ${serviceInfo.serviceName} withdrawn")
            }

            override fun onUnregistrationFailed(serviceInfo: NsdServiceInfo, errorCode: Int) {
                Log.w(TAG, "NSD unregistration of $name failed (error $errorCode)")
            }
        }
        nsd.registerService(info, NsdManager.PROTOCOL_DNS_SD, l)
        listener = l
    }

    @Synchronized
    override fun stop() {
        val l = listener ?: return
        listener = null
        try {
            nsd.unregisterService(l)
        } catch (e: IllegalArgumentException) {
            Log.w(TAG, "NSD listener was not registered: ${e.message}")
        }
    }

    companion object {
        /** server.py SERVICE_TYPE "_edgeprobe._tcp.local." as NsdManager writes it (no domain) */
        const val SERVICE_TYPE = "_edgeprobe._tcp"
        // the Python server's TXT keys, plus delegates (which ExecuTorch backends the in-process runner has)
        val TXT_KEYS = listOf("name", "abi", "runtimes", "version", "delegates")
        private const val TAG = "edgeprobe"
    }
}
