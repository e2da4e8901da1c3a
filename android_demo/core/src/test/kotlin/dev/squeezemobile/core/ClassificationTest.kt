package dev.squeezemobile.core

import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

/** Softmax/top-k on the logits the real ONNX export gave for the golden frames_uint8 clip (Python onnxruntime). */
class ClassificationTest {
    private val g = Golden.json("logits.json")
    private val logits = g["logits"].doubleArray()

    @Test
    fun softmaxMatchesNumpy() {
        val expected = g["softmax"].doubleArray()
        val p = Classification.softmax(logits)
        for (i in p.indices) assertEquals(expected[i], p[i], 1e-15, "class $i")
        assertEquals(1.0, p.sum(), 1e-12)
        // from float32 logits (what a runtime returns): the same probabilities within float32 rounding of the logits
        val pf = Classification.softmax(FloatArray(logits.size) { logits[it].toFloat() })
        for (i in p.indices) assertEquals(expected[i], pf[i], 1e-7)
    }

    @Test
    fun top5MatchesPythonWithLabels() {
        val labels = Manifest.parseLabels(Golden.text("labels.txt"))
        val top = Classification.topK(FloatArray(logits.size) { logits[it].toFloat() }, 5, labels)
        assertArrayEquals(g["top5"].intArray(), top.map { it.index }.toIntArray())
        assertEquals(labels[top[0].index], top[0].label)
        assertTrue(top.zipWithNext().all { (a, b) -> a.probability >= b.probability })
    }

    @Test
    fun tiesNaNsAndShortLists() {
        assertArrayEquals(intArrayOf(1, 3, 0), Classification.topKIndices(doubleArrayOf(0.1, 0.5, 0.0, 0.5), 3))
        assertArrayEquals(intArrayOf(1, 2, 0), Classification.topKIndices(doubleArrayOf(Double.NaN, 2.0, 1.0), 3))
        assertArrayEquals(intArrayOf(0, 1), Classification.topKIndices(doubleArrayOf(2.0, 1.0), 5))
        val p = Classification.softmax(doubleArrayOf(1000.0, 1000.0)) // no overflow
        assertArrayEquals(doubleArrayOf(0.5, 0.5), p, 0.0)
        assertEquals(null, Classification.topK(floatArrayOf(1f, 2f), 1, listOf("only")).single().label)
    }
}
