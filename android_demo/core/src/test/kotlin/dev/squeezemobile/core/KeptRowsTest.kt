package dev.squeezemobile.core

import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

/**
 * The split plan's CPU lookup against lookup_numpy.kept_rows: random tables (ties, empty and padding clusters,
 * keep_keys from 0 to above every head's keys and above max_keep, +-0 / +-inf / NaN scores, a head without keys,
 * a table whose clusters are not in index order) and the tiny model's real lookups (its split stages' scores on the
 * pack's context inputs, prefill and one decode step). kept_keys, kept_values and kept_bias must be bit-identical.
 */
class KeptRowsTest {
    private val golden = Golden.json("qa_kept_rows.json.gz")
    private val blob = Golden.floatsLE("qa_kept_rows_f32le.bin.gz")

    private fun floats(j: JsonPath): FloatArray = blob.copyOfRange(j["offset"].int(), j["offset"].int() + j["count"].int())

    private fun longs(j: JsonPath): LongArray = j.list().map { it.long() }.toLongArray()

    /** Bit-exact comparison (-0.0 != 0.0, -inf == -inf) naming the first difference. */
    private fun assertBits(expected: FloatArray, actual: FloatArray, what: String) {
        assertEquals(expected.size, actual.size, "$what: size")
        val bad = expected.indices.filter { expected[it].toRawBits() != actual[it].toRawBits() }
        assertTrue(bad.isEmpty()) {
            "$what: ${bad.size} of ${expected.size} values differ; first at ${bad[0]}: expected ${expected[bad[0]]}, got ${actual[bad[0]]}"
        }
    }

    @Test
    fun keptRowsAreIdenticalToNumpy() {
        val cases = golden["cases"].list()
        assertEquals(46, cases.size)
        assertEquals(4, cases.count { it["name"].string().startsWith("tiny model") })
        var usedSlots = 0
        var unusedSlots = 0
        for (case in cases) {
            val what = case["name"].string()
            val h = case["kv_heads"].int()
            val k = case["clusters"].int()
            val maxKeep = case["max_keep"].int()
            val r = KeptRows.compute(floats(case["scores"]), longs(case["counts"]), longs(case["cluster_start"]),
                floats(case["clustered_keys"]), floats(case["clustered_values"]), h, case["clustered_rows"].int(),
                case["keep_keys"].int(), maxKeep)
            assertEquals(case["head_dim"].int(), r.headDim, what)
            assertEquals(k, r.numClusters, what)
            val bias = floats(case["kept_bias"])
            assertBits(bias, r.bias, "$what: kept_bias")
            assertBits(floats(case["kept_keys"]), r.keys, "$what: kept_keys")
            assertBits(floats(case["kept_values"]), r.values, "$what: kept_values")
            for (i in 0 until h) for (s in 0 until maxKeep) if (bias[i * (maxKeep + k) + s] == 0f) usedSlots++ else unusedSlots++
        }
        assertTrue(usedSlots > 0 && unusedSlots > 0, "the golden covers used ($usedSlots) and unused ($unusedSlots) slots")
    }

    @Test
    fun tensorsOfTheLoopGiveTheStageInputs() {
        val case = golden["cases"].list().first { it["name"].string().startsWith("tiny model") }
        val (h, k, nc, d) = listOf("kv_heads", "clusters", "clustered_rows", "head_dim").map { case[it].int() }
        val maxKeep = case["max_keep"].int()
        // the pack's context inputs are flat, [Hkv * Nc, D] head by head; [Hkv, Nc, D] views of them give the same
        for (shape in listOf(intArrayOf(h * nc, d), intArrayOf(h, nc, d))) {
            val what = shape.contentToString()
            val r = KeptRows.compute(
                DecoderTensor.Float32(floats(case["scores"]), intArrayOf(h, k)),
                DecoderTensor.Int64(longs(case["counts"]), intArrayOf(h, k)),
                DecoderTensor.Int64(longs(case["cluster_start"]), intArrayOf(h, k)),
                DecoderTensor.Float32(floats(case["clustered_keys"]), shape),
                DecoderTensor.Float32(floats(case["clustered_values"]), shape),
                case["keep_keys"].int(), maxKeep,
            )
            val inputs = r.inputs()
            assertEquals(listOf("kept_keys", "kept_values", "kept_bias"), inputs.keys.toList())
            for (name in listOf("kept_keys", "kept_values")) {
                assertArrayEquals(intArrayOf(h, maxKeep, d), inputs.getValue(name).shape, "$what: $name")
                assertBits(floats(case[name]), (inputs.getValue(name) as DecoderTensor.Float32).data, "$what: $name")
            }
            assertArrayEquals(intArrayOf(h, maxKeep + k), inputs.getValue("kept_bias").shape, what)
            assertBits(floats(case["kept_bias"]), (inputs.getValue("kept_bias") as DecoderTensor.Float32).data, "$what: kept_bias")
        }
    }

    @Test
    fun clusteredTablesOfTheWrongShapeAreRefused() {
        val scores = DecoderTensor.Float32(floatArrayOf(1f, 0f, 0f, 1f), intArrayOf(2, 2))
        val counts = DecoderTensor.Int64(longArrayOf(1, 1, 1, 1), intArrayOf(2, 2))
        val start = DecoderTensor.Int64(longArrayOf(0, 1, 0, 1), intArrayOf(2, 2))
        fun compute(keys: DecoderTensor.Float32, values: DecoderTensor.Float32 = DecoderTensor.Float32(keys.data.map { -it }
            .toFloatArray(), keys.shape)) = KeptRows.compute(scores, counts, start, keys, values, 2, 2)
        // [Hkv * Nc, D] with 4 rows over 2 heads, and their [Hkv, Nc, D] views: the same rows
        val flat = compute(DecoderTensor.Float32(FloatArray(8) { it.toFloat() }, intArrayOf(4, 2)))
        val view = compute(DecoderTensor.Float32(FloatArray(8) { it.toFloat() }, intArrayOf(2, 2, 2)))
        assertArrayEquals(floatArrayOf(0f, 1f, 2f, 3f, 6f, 7f, 4f, 5f), flat.keys)
        assertArrayEquals(floatArrayOf(-0f, -1f, -2f, -3f, -6f, -7f, -4f, -5f), flat.values)
        assertArrayEquals(flat.keys, view.keys)
        assertArrayEquals(flat.values, view.values)
        assertArrayEquals(flat.bias, view.bias)
        val rows = assertThrows(IllegalArgumentException::class.java) { // 5 rows do not divide into 2 heads
            compute(DecoderTensor.Float32(FloatArray(10), intArrayOf(5, 2)))
        }
        assertEquals("clustered_keys [5, 2] / clustered_values [5, 2] must both be [Hkv * Nc, D] with rows for the " +
            "scores' 2 KV heads", rows.message)
        val apart = assertThrows(IllegalArgumentException::class.java) { // keys and values of different shapes
            compute(DecoderTensor.Float32(FloatArray(8), intArrayOf(4, 2)), DecoderTensor.Float32(FloatArray(8), intArrayOf(2, 2, 2)))
        }
        assertTrue(apart.message!!.contains("must both be [Hkv * Nc, D]"), apart.message)
        assertThrows(IllegalArgumentException::class.java) { // a 3-D table with another head count
            compute(DecoderTensor.Float32(FloatArray(8), intArrayOf(1, 4, 2)))
        }
        assertThrows(IllegalArgumentException::class.java) { // neither 2-D nor 3-D
            compute(DecoderTensor.Float32(FloatArray(8), intArrayOf(8)))
        }
    }

    @Test
    fun aSmallCaseByHand() {
        // one head, clusters 0..3 with 2, 0, 3, 1 keys (rows laid out cluster by cluster), D = 1: key r, value -r
        val keys = FloatArray(6) { it.toFloat() }
        val values = FloatArray(6) { -it.toFloat() }
        val counts = longArrayOf(2, 0, 3, 1)
        val start = longArrayOf(0, 2, 2, 5)
        // ranking: cluster 2 (0.9), then 0 and 1 tied at 0.5 (index order), then 3
        val r = KeptRows.compute(floatArrayOf(0.5f, 0.5f, 0.9f, 0.1f), counts, start, keys, values, 1, 6, keepKeys = 4, maxKeep = 5)
        val inf = Float.NEGATIVE_INFINITY
        assertArrayEquals(floatArrayOf(2f, 3f, 4f, 0f, 0f), r.keys) // 3 of cluster 2, 1 of 0, row 0
        assertArrayEquals(floatArrayOf(-2f, -3f, -4f, -0f, -0f), r.values)
        // slots: 4 used, 1 unused; clusters: 2 and 0 kept (-inf), 1 (empty, ranked after 0) and 3 summarised (0)
        assertArrayEquals(floatArrayOf(0f, 0f, 0f, 0f, inf, inf, 0f, inf, 0f), r.bias)
        // keep nothing: every slot unused, every cluster a summary
        val none = KeptRows.compute(floatArrayOf(0.5f, 0.5f, 0.9f, 0.1f), counts, start, keys, values, 1, 6, keepKeys = 0, maxKeep = 2)
        assertArrayEquals(floatArrayOf(inf, inf, 0f, 0f, 0f, 0f), none.bias)
    }

    @Test
    fun inconsistentTablesAreRefused() {
        val table = FloatArray(4 * 2)
        assertThrows(IllegalArgumentException::class.java) { // cluster rows past the table
            KeptRows.compute(floatArrayOf(1f, 0f), longArrayOf(3, 2), longArrayOf(0, 3), table, table, 1, 4, 5, 5)
        }
        assertThrows(IllegalArgumentException::class.java) { // counts not [Hkv, K]
            KeptRows.compute(floatArrayOf(1f, 0f), longArrayOf(3), longArrayOf(0), table, table, 1, 4, 5, 5)
        }
        assertThrows(IllegalArgumentException::class.java) { // values not the keys' size
            KeptRows.compute(floatArrayOf(1f, 0f), longArrayOf(2, 2), longArrayOf(0, 2), table, FloatArray(4), 1, 4, 5, 5)
        }
    }
}
