package dev.squeezemobile.core

/**
 * Frame sampling, as the Python pipeline does it (squeezetime/video.py: sample_indices) for files, and its
 * streaming form for a camera.
 *
 * The official test sampling (mmaction SampleFrames, test_mode) takes clips of [clipLen] frames spaced
 * [interval] frames apart: frame indices offset + i * interval. A camera has no end, so the app keeps a
 * sliding clip instead: every [interval]-th frame, the newest [clipLen] of them. Fed the frames of a file,
 * with phase = offset % interval, that clip is exactly the offline clip at the moment its last frame
 * arrives (tested against the Python indices).
 */
object FrameSampling {
    /**
     * mmaction SampleFrames in test mode: evenly spaced clip starts, indices looped past the end.
     * Returns numClips arrays of clipLen frame indices, as sample_indices in squeezetime/video.py.
     */
    fun sampleIndices(numFrames: Int, clipLen: Int, interval: Int, numClips: Int = 1): Array<IntArray> {
        require(numFrames > 0) { "numFrames must be positive, got $numFrames" }
        require(clipLen > 0 && interval > 0 && numClips > 0) { "clipLen, interval and numClips must be positive" }
        val span = clipLen * interval
        // the same double arithmetic as numpy: (n - span + 1) / numClips, then offset = trunc(c * avg + avg / 2)
        val avg = (numFrames - span + 1).toDouble() / numClips.toDouble()
        return Array(numClips) { c ->
            val offset = if (numFrames > span - 1) (c.toDouble() * avg + avg / 2.0).toLong() else 0L
            IntArray(clipLen) { i -> Math.floorMod(offset + i.toLong() * interval, numFrames.toLong()).toInt() }
        }
    }

    /** The phase (frame index modulo interval) at which a [FrameSampler] reproduces the single offline clip. */
    fun offlinePhase(numFrames: Int, clipLen: Int, interval: Int): Int = sampleIndices(numFrames, clipLen, interval)[0][0] % interval
}

/**
 * A ring buffer of the newest [clipLen] frames among every [interval]-th frame (those whose running index
 * is congruent to [phase] modulo [interval]). Frames are whatever the app stores per kept frame: typically the
 * preprocessed crop bytes, so only kept frames are converted and resized.
 *
 * Not thread-safe: the camera analysis callback owns it (one worker thread).
 */
class FrameSampler<F : Any>(val clipLen: Int, val interval: Int, val phase: Int = 0) {
    init {
        require(clipLen > 0) { "clipLen must be positive, got $clipLen" }
        require(interval > 0) { "interval must be positive, got $interval" }
        require(phase in 0 until interval) { "phase must be in 0..${interval - 1}, got $phase" }
    }

    private val frames = arrayOfNulls<Any>(clipLen)
    private val indices = LongArray(clipLen)
    private var count = 0 // frames held (<= clipLen)
    private var next = 0 // ring slot the next kept frame goes to

    /** Frames offered so far (kept or not): the running index of the next frame. */
    var framesSeen: Long = 0
        private set

    /** Whether the next offered frame will be kept (lets the app skip converting the others). */
    fun wantsNext(): Boolean = framesSeen % interval == phase.toLong()

    /** Offer the next camera frame; returns true when it was kept. [frame] is only evaluated if kept. */
    fun offer(frame: () -> F): Boolean {
        val keep = wantsNext()
        if (keep) {
            frames[next] = frame()
            indices[next] = framesSeen
            next = (next + 1) % clipLen
            if (count < clipLen) count++
        }
        framesSeen++
        return keep
    }

    fun offer(frame: F): Boolean = offer { frame }

    /** A full clip is held (clipLen kept frames). */
    val isFull: Boolean get() = count == clipLen

    /** Kept frames held, oldest first. */
    val size: Int get() = count

    /** The running indices of the held frames, oldest first. */
    fun clipIndices(): LongArray = LongArray(count) { i -> indices[slot(i)] }

    /** The held frames, oldest first (the time order the model expects). */
    fun clip(): List<F> = List(count) { i ->
        @Suppress("UNCHECKED_CAST")
        frames[slot(i)] as F
    }

    fun reset() {
        frames.fill(null)
        count = 0
        next = 0
        framesSeen = 0
    }

    private fun slot(i: Int): Int = (next - count + i + clipLen) % clipLen
}
