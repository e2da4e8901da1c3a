package dev.squeezemobile.core

import java.nio.ByteBuffer
import java.nio.ByteOrder

// What the app's runtime bindings (app/.../runtime/*Decoder.kt) share, kept here so that it is tested: reusing native
// tensors across steps, and the bytes of a tensor in the dtype a runtime declares.

/**
 * The native tensors a runtime binding made from the loop's inputs, one per key (input name) and shape, made again
 * only when another [DecoderTensor] object comes under that key and shape. The pack's context inputs are the same
 * objects at every step (megabytes per layer), so they are copied into the runtime once per attached pack instead of
 * once per token; the per-step inputs (tokens, lengths, the cache) are new objects and replace their entry (the old
 * one is released). The shape is part of the key because methods may declare one input in different shapes (a .pte's
 * prefill_exact takes the clustered tables as [Hkv, Nc, D] views, decode the flat [Hkv * Nc, D] tables): each shape
 * keeps its own entry, so switching methods does not make them again.
 */
class NativeTensorCache<T>(private val release: (T) -> Unit = {}) : AutoCloseable {
    private class Entry<T>(val source: DecoderTensor, val native: T)

    private data class Key(val name: String, val shape: List<Int>)

    private val entries = LinkedHashMap<Key, Entry<T>>()

    /** Native tensors held now. */
    val size: Int get() = entries.size

    fun get(key: String, tensor: DecoderTensor, make: (DecoderTensor) -> T): T {
        val k = Key(key, tensor.shape.toList())
        val old = entries[k]
        if (old != null && old.source === tensor) return old.native
        val native = make(tensor)
        entries[k] = Entry(tensor, native)
        if (old != null) release(old.native)
        return native
    }

    override fun close() {
        val all = entries.values.toList()
        entries.clear()
        for (e in all) release(e.native)
    }
}

/** A [DecoderTensor]'s bytes in the dtype a runtime declares for that input (LiteRT narrows int64 inputs to int32). */
object TensorBytes {
    /** A direct buffer in native order (what runtimes copy from without another copy), position 0. */
    fun pack(t: DecoderTensor, dtype: String, name: String = "input"): ByteBuffer {
        val out = ByteBuffer.allocateDirect(t.elementCount * bytesPer(dtype, name)).order(ByteOrder.nativeOrder())
        when {
            t is DecoderTensor.Float32 && dtype == "float32" -> out.asFloatBuffer().put(t.data)
            t is DecoderTensor.Int64 && dtype == "int64" -> out.asLongBuffer().put(t.data)
            t is DecoderTensor.Int64 && dtype == "int32" -> {
                val ints = out.asIntBuffer()
                for (v in t.data) {
                    if (v < Int.MIN_VALUE || v > Int.MAX_VALUE) throw DecoderException("$name holds $v, which does not fit the runtime's int32 input")
                    ints.put(v.toInt())
                }
            }
            else -> throw DecoderException("$name is ${if (t is DecoderTensor.Float32) "float32" else "int64"} but the runtime declares $dtype; re-export the decoder")
        }
        return out
    }

    /** A float32 output buffer (native order, from position 0) as a tensor of [shape]. */
    fun floats(buffer: ByteBuffer, shape: IntArray): DecoderTensor.Float32 {
        val n = shape.fold(1) { a, d -> a * d }
        val b = buffer.duplicate().order(buffer.order())
        b.rewind()
        if (b.remaining() < n * 4) throw DecoderException("an output of shape ${shape.contentToString()} needs ${n * 4} bytes, the runtime gave ${b.remaining()}")
        val data = FloatArray(n)
        b.asFloatBuffer().get(data)
        return DecoderTensor.Float32(data, shape)
    }

    fun bytesPer(dtype: String, name: String = "input"): Int = when (dtype) {
        "float32", "int32" -> 4
        "int64" -> 8
        else -> throw DecoderException("$name has dtype $dtype, which the app does not feed (float32, int64, int32)")
    }
}
