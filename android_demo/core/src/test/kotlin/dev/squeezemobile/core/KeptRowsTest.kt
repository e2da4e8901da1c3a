package dev.squeezemobile.core

import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

/**
 * The split plan's CPU lookup against lookup_numpy.kept_rows: random tables (ties, empty and padding clusters,
 * keep_keys from 0 to above every head's keys and above max_keep, +-0 / +-inf / NaN scores, a head without keys,
 * a table whose clusters are not in index order; followed rows: kept ones, -1, a row twice) and the tiny model's real
 * lookups (its split stages' scores on the pack's context inputs, prefill and two decode steps that follow the
 * previous call's pointer). kept_keys, kept_values and kept_bias must be bit-identical, the slots' rows equal; and
 * follow_pointer (the ranked follow_weights to the next call's rows) equal to lookup_numpy.follow_pointer.
 */
class KeptRowsTest {
    private val golden = Golden.json("qa_kept_rows.json.gz")
    private val blob = Golden.floatsLE("qa_kept_rows_f32le.bin.gz")

    // The hand table of the by-hand cases: one head, clusters 0..3 with 2, 0, 3, 1 keys (rows laid out cluster by
    // cluster), D = 1: key r, value -r; scores rank cluster 2 first, then 0 and 1 tied (index order), then 3.
    private val keys = FloatArray(6) { it.toFloat() }
    private val values = FloatArray(6) { -it.toFloat() }
    private val counts = longArrayOf(2, 0, 3, 1)
    private val start = longArrayOf(0, 2, 2, 5)
    private val scores = floatArrayOf(0.5f, 0.5f, 0.9f, 0.1f)

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

    /** A case's follow_rows (flat [Hkv * F]), null for a lookup without followed keys. */
    private fun followRows(case: JsonPath): LongArray? = case.opt("follow_rows")?.let { longs(it) }

    @Test
    fun keptRowsAreIdenticalToNumpy() {
        val cases = golden["cases"].list()
        assertEquals(52, cases.size)
        assertEquals(6, cases.count { it["name"].string().startsWith("tiny model") })
        assertEquals(10, cases.count { it.has("follow_rows") })  // 4 random tables, every tiny model lookup
        var usedSlots = 0
        var unusedSlots = 0
        var followedSlots = 0 // slots a followed row took (the selection had not kept it)
        for (case in cases) {
            val what = case["name"].string()
            val h = case["kv_heads"].int()
            val k = case["clusters"].int()
            val maxKeep = case["max_keep"].int()
            val follow = followRows(case)
            val r = KeptRows.compute(floats(case["scores"]), longs(case["counts"]), longs(case["cluster_start"]),
                floats(case["clustered_keys"]), floats(case["clustered_values"]), h, case["clustered_rows"].int(),
                case["keep_keys"].int(), maxKeep, follow)
            assertEquals(case["head_dim"].int(), r.headDim, what)
            assertEquals(k, r.numClusters, what)
            val bias = floats(case["kept_bias"])
            assertBits(bias, r.bias, "$what: kept_bias")
            assertBits(floats(case["kept_keys"]), r.keys, "$what: kept_keys")
            assertBits(floats(case["kept_values"]), r.values, "$what: kept_values")
            for (i in 0 until h) for (s in 0 until maxKeep) if (bias[i * (maxKeep + k) + s] == 0f) usedSlots++ else unusedSlots++
            if (follow != null) {
                assertArrayEquals(longs(case["slot_rows"]), r.slotRows, "$what: slot_rows")
                val selected = KeptRows.compute(floats(case["scores"]), longs(case["counts"]), longs(case["cluster_start"]),
                    floats(case["clustered_keys"]), floats(case["clustered_values"]), h, case["clustered_rows"].int(),
                    case["keep_keys"].int(), maxKeep)
                followedSlots += r.slotRows.count { it >= 0 } - selected.slotRows.count { it >= 0 }
            }
        }
        assertTrue(usedSlots > 0 && unusedSlots > 0, "the golden covers used ($usedSlots) and unused ($unusedSlots) slots")
        assertTrue(followedSlots > 0, "the golden's followed rows take slots")
    }

    @Test
    fun followPointerIsNumpys() {
        val cases = golden["pointer_cases"].list()
        assertEquals(listOf("ties", "few weights", "one"), cases.map { it["name"].string() })
        for (case in cases) {
            val what = case["name"].string()
            val weights = case["weights"].doubleArray().map { it.toFloat() }.toFloatArray()
            val pointer = KeptRows.followPointer(weights, longs(case["slot_rows"]), longs(case["next_rows"]), case["kv_heads"].int(),
                case["follow"].int())
            assertArrayEquals(longs(case["pointer"]), pointer, what)
            assertEquals(case["kv_heads"].int() * case["follow"].int(), pointer.size, what)
        }
        // the real lookups: a decode step follows what the step before pointed to (rows of its own head)
        val decodes = golden["cases"].list().filter { it["name"].string().startsWith("tiny model, decode") }
        assertTrue(decodes.all { c -> followRows(c)!!.any { it >= 0 } }, "the tiny model's decode steps follow rows")
    }

    @Test
    fun followedRowsTakeTheNextUnusedSlotsOnce() {
        // the hand table (cluster 2 ranks first, then 0): keep 3 selects rows 2, 3, 4 (cluster 2)
        fun lookup(keep: Int, maxKeep: Int, follow: LongArray?) = KeptRows.compute(scores, counts, start, keys, values, 1, 6, keep, maxKeep, follow)
        val inf = Float.NEGATIVE_INFINITY
        // followed: -1 (none), 3 (kept already), 5, 5 again, 0: rows 5 and 0 after the selection, once each
        val r = lookup(3, 6, longArrayOf(-1, 3, 5, 5, 0))
        assertArrayEquals(longArrayOf(2, 3, 4, 5, 0, -1), r.slotRows)
        assertArrayEquals(floatArrayOf(2f, 3f, 4f, 5f, 0f, 0f), r.keys)
        assertArrayEquals(floatArrayOf(-2f, -3f, -4f, -5f, -0f, -0f), r.values)
        // slots: 5 used; clusters as the selection's alone (2 kept; 0, 1, 3 summarised although rows 5 and 0 are attended)
        assertArrayEquals(floatArrayOf(0f, 0f, 0f, 0f, 0f, inf, 0f, 0f, inf, 0f), r.bias)
        assertBitsEqual(lookup(3, 6, null).bias.copyOfRange(6, 10), r.bias.copyOfRange(6, 10))
        // every followed row -1 (a prompt call): the selection alone
        val none = lookup(3, 6, LongArray(5) { -1 })
        assertArrayEquals(lookup(3, 6, null).keys, none.keys)
        assertArrayEquals(lookup(3, 6, null).bias, none.bias)
        assertArrayEquals(longArrayOf(2, 3, 4, -1, -1, -1), none.slotRows)
        // no slot left: the loop must pass keep_keys - follow_keys
        val full = assertThrows(IllegalArgumentException::class.java) { lookup(4, 4, longArrayOf(5)) }
        assertEquals("no slot left for a followed row: 4 slots, the selection used 4; pass keep_keys - follow_keys", full.message)
        assertThrows(IllegalArgumentException::class.java) { lookup(3, 6, longArrayOf(6)) } // outside the table
        assertThrows(IllegalArgumentException::class.java) { // not [Hkv, F]
            KeptRows.compute(floatArrayOf(1f, 0f, 0f, 1f), longArrayOf(1, 1, 1, 1), longArrayOf(0, 1, 0, 1), FloatArray(4), FloatArray(4), 2, 2, 1, 2, longArrayOf(1))
        }
        // two heads: head 1's rows are flat (h * Nc + r), its followed row from its own rows; unused slots read row 0
        val two = KeptRows.compute(floatArrayOf(1f, 0f, 0f, 1f), longArrayOf(1, 1, 1, 1), longArrayOf(0, 1, 0, 1),
            floatArrayOf(10f, 11f, 12f, 13f), floatArrayOf(20f, 21f, 22f, 23f), 2, 2, 1, 3, longArrayOf(-1, 1, 2, -1))
        assertArrayEquals(longArrayOf(0, 1, -1, 3, 2, -1), two.slotRows)
        assertArrayEquals(floatArrayOf(10f, 11f, 10f, 13f, 12f, 10f), two.keys)
    }

    @Test
    fun followPointerRanksWeightsStably() {
        // two heads of 4 slots, follow 2; next_rows maps flat row r to 100 + r (row 7: none)
        val next = LongArray(8) { if (it == 7) -1L else 100L + it }
        val slots = longArrayOf(3, 1, 0, -1, 4, 7, 5, 6)
        // head 0: slots 0 and 2 tie at 0.5 (the lower slot first); head 1: slot 1 (row 7) best but has no next row,
        // then slot 3
        val p = KeptRows.followPointer(floatArrayOf(0.5f, 0.25f, 0.5f, 0f, 0.1f, 0.6f, 0f, 0.3f), slots, next, 2, 2)
        assertArrayEquals(longArrayOf(103, 100, -1, 106), p)
        // an unused slot points nowhere even with a weight (head 0's best, slot 3); NaN ranks last (head 1's slot 1)
        assertArrayEquals(longArrayOf(-1, 101, 105, 104), KeptRows.followPointer(floatArrayOf(0f, 0.2f, 0f, 1f, 0.1f, Float.NaN, 0.2f, 0f),
            slots, next, 2, 2))
        // weights of 0 (masked slots) point nowhere, even among the first F
        assertArrayEquals(longArrayOf(103, -1, -1, -1), KeptRows.followPointer(floatArrayOf(0.5f, 0f, 0f, 0f, 0f, -0f, 0f, 0f),
            slots, next, 2, 2))
        assertArrayEquals(longArrayOf(), KeptRows.followPointer(FloatArray(8), slots, next, 2, 0))
        assertThrows(IllegalArgumentException::class.java) { KeptRows.followPointer(FloatArray(8), slots, next, 2, 5) }
        assertThrows(IllegalArgumentException::class.java) { KeptRows.followPointer(FloatArray(6), slots, next, 2, 1) }
    }

    private fun assertBitsEqual(expected: FloatArray, actual: FloatArray) = assertBits(expected, actual, "bits")

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
                case["keep_keys"].int(), maxKeep, followRows(case),
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
        // the hand table; ranking: cluster 2 (0.9), then 0 and 1 tied at 0.5 (index order), then 3
        val r = KeptRows.compute(scores, counts, start, keys, values, 1, 6, keepKeys = 4, maxKeep = 5)
        val inf = Float.NEGATIVE_INFINITY
        assertArrayEquals(floatArrayOf(2f, 3f, 4f, 0f, 0f), r.keys) // 3 of cluster 2, 1 of 0, row 0
        assertArrayEquals(floatArrayOf(-2f, -3f, -4f, -0f, -0f), r.values)
        // slots: 4 used, 1 unused; clusters: 2 and 0 kept (-inf), 1 (empty, ranked after 0) and 3 summarised (0)
        assertArrayEquals(floatArrayOf(0f, 0f, 0f, 0f, inf, inf, 0f, inf, 0f), r.bias)
        // keep nothing: every slot unused, every cluster a summary
        val none = KeptRows.compute(scores, counts, start, keys, values, 1, 6, keepKeys = 0, maxKeep = 2)
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
