package dev.squeezemobile.core

import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

/**
 * The CPU-fallback lookup against lookup_numpy.select_keys on the real pack and the model's real post-RoPE queries
 * (its observation window: 100 queries, and the last one alone, as a decode step), every layer, flat and
 * hierarchical, budget and threshold, per KV group and per query head. Indices and masks must be identical;
 * cluster scores agree within 1e-12 (float64, summation order differs from BLAS).
 */
class CentroidLookupTest {
    private val pack = ContextPack.read(Golden.bytes("qa_pack.safetensors"), "qa_pack.safetensors")
    private val lookup = CentroidLookup.fromPack(pack)
    private val golden = Golden.json("qa_lookup.json.gz")
    private val queries = Golden.floatsLE("qa_queries_f32le.bin.gz")

    @Test
    fun tablesDescribeThePack() {
        assertEquals(golden["group_size"].int(), lookup.groupSize)
        assertEquals(golden["first_position"].int(), lookup.firstPosition)
        assertEquals(pack.numClusters, lookup.numClusters)
    }

    @Test
    fun selectedKeysAreIdenticalToNumpy() {
        val shape = golden["query_shape"].intArray() // [L, Hq, W, D]
        val (hq, w, d) = Triple(shape[1], shape[2], shape[3])
        var maxScoreDiff = 0.0
        val cases = golden["cases"].list()
        assertEquals(2 * 2 * 2 * 4, cases.size)
        for (case in cases) {
            val layer = case["layer"].int()
            val (a, b) = case["queries"].intArray().let { it[0] to it[1] }
            val t = b - a
            val q = FloatArray(hq * t * d)
            for (h in 0 until hq) System.arraycopy(queries, ((layer * hq + h) * w + a) * d, q, h * t * d, t * d)
            val spec = LookupSpec(case["mode"].string(), case["budget_keys"].int(), case["threshold"].double(),
                case["per_query_head"].bool(), case["hierarchical"].bool(), case["level1_keep"].int())
            val what = "layer $layer, queries $a..$b, ${case["spec"].string()}, per head ${spec.perQueryHead}"
            val sel = lookup.select(layer, q, hq, spec)
            val expected = case["indices"].list()
            assertEquals(expected.size, sel.indices.size, what)
            for (s in expected.indices) {
                assertArrayEquals(expected[s].list().map { it.long() }.toLongArray(), sel.indices[s], "$what, head $s")
            }
            if (case["valid"].isNull) assertNull(sel.valid, what) else {
                for ((s, v) in case["valid"].list().withIndex()) {
                    assertArrayEquals(v.list().map { it.bool() }.toBooleanArray(), sel.valid!![s], "$what, head $s")
                }
            }
            assertEquals(case["centroids_scored"].double(), sel.centroidsScored, 1e-12, what)
            val (scores, _) = lookup.scoreLayer(layer, q, hq, spec)
            for ((s, row) in case["scores"].list().withIndex()) {
                val e = row.doubleArray()
                for (k in e.indices) maxScoreDiff = maxOf(maxScoreDiff, Math.abs(e[k] - scores[s][k]))
            }
        }
        assertTrue(maxScoreDiff <= 1e-12, "max cluster score difference $maxScoreDiff")
    }

    @Test
    fun rankingIsStableAndTreatsSignedZerosAsEqual() {
        assertEquals(listOf(1, 3, 0, 2, 4), CentroidLookup.stableDescending(doubleArrayOf(0.0, 0.5, -0.0, 0.5, -1.0)).let {
            listOf(it[0], it[1], it[2], it[3], it[4])
        })
    }
}
