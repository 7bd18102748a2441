package dev.edgeprobe.app

import android.app.Notification
import android.app.NotificationChannel
import android.app.NotificationManager
import android.app.Service
import android.content.Context
import android.content.Intent
import android.content.pm.ServiceInfo
import android.os.Build
import android.os.IBinder
import android.util.Log
import dev.edgeprobe.core.RunnerServer
import org.json.JSONObject
import java.io.File
import java.security.SecureRandom

/** The foreground service (type specialUse) that hosts core's [RunnerServer]: the native runner
 *  from nativeLibraryDir (runner "native") and the ExecuTorch library in process (runner "app"),
 *  advertised over NSD. Started by `edgeprobe app start` through
 *  `am start-foreground-service -n dev.edgeprobe.app/.RunnerService [--es token T] [--ei port P]`;
 *  without a token extra it makes one and keeps it in files/token (0600). It writes
 *  files/server.json ({"port", "name", "host", "token_file"}) for the host to read with run-as, and
 *  stops on ACTION_STOP or when the system destroys it. */
class RunnerService : Service() {
    private var server: RunnerServer? = null
    private var advertiser: NsdAdvertiser? = null

    override fun onBind(intent: Intent?): IBinder? = null

    override fun onStartCommand(intent: Intent?, flags: Int, startId: Int): Int {
        if (intent?.action == ACTION_STOP) {
            // started with startForegroundService all the same: it must enter the foreground before
            // it may leave, or the system kills the app (ForegroundServiceDidNotStartInTimeException)
            startInForeground("stopping")
            shutDown()
            stopForeground(STOP_FOREGROUND_REMOVE)
            stopSelf()
            return START_NOT_STICKY
        }
        startInForeground("starting")
        if (server == null) {
            try {
                val s = startServer(intent)
                startInForeground("serving ${s.name} on port ${s.port}")
            } catch (e: Exception) {
                Log.e(TAG, "the runner server did not start: ${e.message}")
                stopForeground(STOP_FOREGROUND_REMOVE)
                stopSelf()
                return START_NOT_STICKY
            }
        }
        // restarted after the system killed it, with a null intent: the token file keeps the token
        return START_STICKY
    }

    override fun onDestroy() {
        shutDown()
        super.onDestroy()
    }

    private fun startServer(intent: Intent?): RunnerServer {
        val host = intent?.getStringExtra(EXTRA_HOST) ?: DEFAULT_HOST
        val port = intent?.getIntExtra(EXTRA_PORT, DEFAULT_PORT) ?: DEFAULT_PORT
        val name = intent?.getStringExtra(EXTRA_NAME) ?: defaultName()
        val tokenFile = File(filesDir, TOKEN_FILE)
        val token = intent?.getStringExtra(EXTRA_TOKEN)?.also { writeOwnerOnly(tokenFile, it) } ?: tokenFrom(tokenFile)
        val nativeRunner = File(applicationInfo.nativeLibraryDir, NATIVE_RUNNER)
        val inProcess = ExecuTorchRunner(
            delegate = BuildConfig.DELEGATE, runtimeVersion = BuildConfig.EXECUTORCH_VERSION,
            appVersion = BuildConfig.VERSION_NAME, battery = BatteryMeter(this), thermal = ThermalMeter(this),
        )
        val s = RunnerServer(host, port, token, File(filesDir, WORK_DIR), name,
            nativeRunner = nativeRunner.takeIf { it.canExecute() }, inProcess = inProcess)
        s.start()
        server = s
        val info = s.info()
        writeOwnerOnly(File(filesDir, STATUS_FILE), JSONObject()
            .put("host", host).put("port", s.port).put("name", name).put("token_file", tokenFile.path)
            .put("runtimes", info["runtimes"]).put("delegates", info["delegates"] ?: JSONObject.NULL).toString() + "\n")
        val a = NsdAdvertiser(this)
        try {
            a.advertise(name, s.port, info.filterKeys { it in NsdAdvertiser.TXT_KEYS })
            advertiser = a
        } catch (e: RuntimeException) {
            Log.w(TAG, "not advertised over NSD (${e.message}): give the host tcp:ADDRESS:${s.port}")
        }
        Log.i(TAG, "runner server $name on $host:${s.port}, runtimes ${info["runtimes"]}")
        return s
    }

    private fun shutDown() {
        advertiser?.stop()
        advertiser = null
        server?.stop()
        server = null
        File(filesDir, STATUS_FILE).delete()
    }

    private fun startInForeground(text: String) {
        val nm = getSystemService(Context.NOTIFICATION_SERVICE) as NotificationManager
        nm.createNotificationChannel(NotificationChannel(CHANNEL_ID, "edgeprobe runner", NotificationManager.IMPORTANCE_LOW))
        val n = Notification.Builder(this, CHANNEL_ID)
            .setContentTitle("edgeprobe runner")
            .setContentText(text)
            .setSmallIcon(android.R.drawable.stat_sys_upload)
            .setOngoing(true)
            .build()
        if (Build.VERSION.SDK_INT >= SPECIAL_USE_SDK) {
            startForeground(NOTIFICATION_ID, n, ServiceInfo.FOREGROUND_SERVICE_TYPE_SPECIAL_USE)
        } else {
            startForeground(NOTIFICATION_ID, n)
        }
    }

    private fun defaultName(): String =
        "edgeprobe-" + Build.MODEL.lowercase().replace(Regex("[^a-z0-9_.-]+"), "-").trim('-')

    /** The token of [file], or a new one (32 random bytes, hex) written there. */
    private fun tokenFrom(file: File): String {
        val existing = if (file.isFile) file.readText().trim() else ""
        if (existing.isNotEmpty()) return existing
        val bytes = ByteArray(32).also { SecureRandom().nextBytes(it) }
        val token = bytes.joinToString("") { "%02x".format(it.toInt() and 0xff) }
        writeOwnerOnly(file, token + "\n")
        return token
    }

    private fun writeOwnerOnly(file: File, text: String) {
        file.parentFile?.mkdirs()
        file.writeText(text)
        file.setReadable(false, false)
        file.setWritable(false, false)
        file.setReadable(true, true)
        file.setWritable(true, true)
    }

    companion object {
        const val ACTION_STOP = "dev.edgeprobe.app.STOP"
        const val EXTRA_TOKEN = "token"
        const val EXTRA_PORT = "port"
        const val EXTRA_HOST = "host"
        const val EXTRA_NAME = "name"
        /** all interfaces: the host reaches the phone over Wi-Fi (the handshake authenticates it) */
        const val DEFAULT_HOST = "0.0.0.0"
        const val DEFAULT_PORT = 8765
        const val NATIVE_RUNNER = "libedgeprobe_runner.so"
        const val TOKEN_FILE = "token"
        const val STATUS_FILE = "server.json"
        const val WORK_DIR = "work"
        private const val CHANNEL_ID = "edgeprobe-runner"
        private const val NOTIFICATION_ID = 1
        /** Build.VERSION_CODES.UPSIDE_DOWN_CAKE: FOREGROUND_SERVICE_TYPE_SPECIAL_USE exists from API 34 */
        private const val SPECIAL_USE_SDK = 34
        private const val TAG = "edgeprobe"
    }
}
