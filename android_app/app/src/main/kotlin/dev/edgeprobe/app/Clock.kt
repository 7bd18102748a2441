package dev.edgeprobe.app

import android.os.SystemClock

/** The meters' clock, in seconds: SystemClock.elapsedRealtimeNanos (CLOCK_BOOTTIME, which also counts
 *  deep sleep). The battery and thermal samples and the energy windows the in-process runner marks
 *  all use it, so a window and its samples are always on one clock. */
fun elapsedRealtimeS(): Double = SystemClock.elapsedRealtimeNanos() / 1e9
