package dev.squeezemobile.core

import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import java.lang.management.ManagementFactory

/**
 * PackLayout converts the pack's fp16 key/value rows layer by layer straight into the decoder inputs' float32 buffers.
 * The whole layout is byte-identical to Python's (ContextPackTest.decoderContextInputsAreByteIdenticalToPython, the
 * reference); here each layer's own call gives exactly that layer's part of it, on the real 2-layer pack, and one
 * layer's call allocates its inputs and that layer's lookup tables, never a float32 copy of a key/value table (checked
 * with the JVM's per-thread allocation counter, which counts bytes, not time).
 */
class PackLayoutLayerTest {
    private val pack = ContextPack.read(Golden.bytes("qa_pack.safetensors"), "qa_pack.safetensors")
    private val shapes = DecoderShapes.parse(Golden.json("qa_generation.json.gz")["shapes"])

    private fun bytesOf(t: DecoderTensor) = t.toLittleEndian()

    private fun assertSame(expected: Map<String, DecoderTensor>, actual: Map<String, DecoderTensor>, what: String) {
        assertEquals(expected.keys.toList(), actual.keys.toList(), what)
        for ((name, e) in expected) {
            val a = actual.getValue(name)
            assertEquals(e::class, a::class, "$what $name")
            assertArrayEquals(e.shape, a.shape, "$what $name")
            assertArrayEquals(bytesOf(e), bytesOf(a), "$what $name")
        }
    }

    @Test
    fun eachLayersCallGivesThatLayersPartOfTheLayout() {
        assertTrue(pack.layers > 1)
        for (attention in listOf("squeezed", "full")) {
            val whole = PackLayout.decoderContextInputs(pack, shapes, attention)   // Python's bytes (ContextPackTest)
            assertEquals(pack.layers * (if (attention == "full") 2 else 8), whole.size, attention)
            for (l in 0 until pack.layers) {
                val layer = PackLayout.layerContextInputs(pack, shapes, attention, l)
                assertTrue(layer.keys.all { it.endsWith("_$l") }, "$attention layer $l")
                assertSame(whole.filterKeys { it.endsWith("_$l") }, layer, "$attention layer $l")
            }
        }
        // the dequantized centroids, whole and per layer, as the long-widening conversion computed them
        for (prefix in listOf("lookup.", "lookup.level1_")) {
            val codes = pack["${prefix}centroid_codes"].longs()
            val scales = pack["${prefix}centroid_scales"].floats()
            val expected = FloatArray(codes.size) { codes[it].toFloat() * scales[it / pack.headDim] }
            assertArrayEquals(expected, pack.centroids(prefix), prefix)
            val per = expected.size / pack.layers
            for (l in 0 until pack.layers) {
                assertArrayEquals(expected.copyOfRange(l * per, (l + 1) * per), pack.layerCentroids(l, prefix), "$prefix layer $l")
            }
        }
    }

    /** The golden pack with every layer's keys and values but [keep]'s replaced by other finite fp16 values, re-hashed. */
    private fun otherLayersReplaced(keep: Int): ContextPack {
        val b = Golden.bytes("qa_pack.safetensors").copyOf()
        val st = SafeTensors.read(b, "x")
        for (name in listOf("kv.keys", "kv.values")) {
            val t = st.tensors.getValue(name)
            val per = t.byteCount / pack.layers
            for (l in 0 until pack.layers) {
                if (l == keep) continue
                for (i in 0 until per / 2) {
                    val bits = (i * 7919 + l * 31) and 0x3BFF // exponent below 15: finite, |x| < 1
                    b[t.offset + l * per + 2 * i] = bits.toByte()
                    b[t.offset + l * per + 2 * i + 1] = (bits ushr 8).toByte()
                }
            }
        }
        val changed = SafeTensors.read(b, "x")
        val old = changed.metadata.getValue("content_sha256")
        val text = String(b, Charsets.ISO_8859_1).replace(old, ContextPack.contentSha256(changed.tensors, changed.metadata))
        return ContextPack.read(text.toByteArray(Charsets.ISO_8859_1), "replaced.pack")
    }

    @Test
    fun oneLayersInputsComeFromThatLayersRowsOnly() {
        for (keep in 0 until pack.layers) {
            val other = otherLayersReplaced(keep)
            for (attention in listOf("squeezed", "full")) {
                for (l in 0 until pack.layers) {
                    val mine = PackLayout.layerContextInputs(pack, shapes, attention, l)
                    val theirs = PackLayout.layerContextInputs(other, shapes, attention, l)
                    val name = if (attention == "full") "context_keys_$l" else "clustered_keys_$l"
                    val same = mine.keys.all { bytesOf(mine.getValue(it)).contentEquals(bytesOf(theirs.getValue(it))) }
                    assertEquals(l == keep, same, "$attention layer $l, pack with only layer $keep kept")
                    if (l != keep) assertTrue(!bytesOf(mine.getValue(name)).contentEquals(bytesOf(theirs.getValue(name))))
                }
            }
        }
    }

    @Test
    fun clusterOrderIsStableByLabelOnEveryPath() {
        // counting sort (small label range) and comparison sort (a huge range) give np.argsort(kind="stable")
        val labels = longArrayOf(3, 1, 3, 0, 1, 1, 5_000_000_000L, -7, 5_000_000_000L, -7, 0, 2)
        assertArrayEquals(longArrayOf(13, 11, 14, 15, 10, 12, 11, 13, 14, 15, 10, 12), PackLayout.clusterOrder(labels, 2, 6, 10))
        assertArrayEquals(longArrayOf(0, 2, 1), PackLayout.clusterOrder(longArrayOf(Long.MIN_VALUE, Long.MAX_VALUE, Long.MIN_VALUE), 1, 3, 0))
        val real = pack["lookup.labels"].longs()
        val nc = pack.numClustered
        val order = PackLayout.clusterOrder(real, pack.layers * pack.kvHeads, nc, 4)
        for (g in 0 until pack.layers * pack.kvHeads) {
            val expected = (0 until nc).sortedBy { real[g * nc + it] }.map { (it + 4).toLong() }
            assertEquals(expected, order.copyOfRange(g * nc, (g + 1) * nc).toList(), "group $g")
        }
    }

    @Test
    fun oneLayerAllocatesItsInputsAndThatLayersTablesOnly() {
        val bean = ManagementFactory.getThreadMXBean() as com.sun.management.ThreadMXBean
        assertTrue(bean.isThreadAllocatedMemorySupported && bean.isThreadAllocatedMemoryEnabled)
        val tid = Thread.currentThread().id
        val H = pack.kvHeads
        val n = pack.numTokens
        val D = pack.headDim
        val K = pack.numClusters
        val nc = pack.numClustered
        // one layer's keys and values in float32: what converting even one layer's slice to a temporary would cost;
        // the old layout converted both whole tables (layers x this) before laying anything out
        val oneLayerKv = 2L * H * n * D * 4
        // that layer's tables: labels, cluster order, counting-sort counts, counts, scales, centroids, the value
        // centroids' float64 means and their float32 codes, plus a few small objects (maps, buffers, pairs)
        val tables = 2L * H * nc * 8 + H * (K + 2) * 4L + H * K * 8L + H * K * 4L + H * K * D * (4L + 8 + 4) + 8192
        assertTrue(tables < oneLayerKv, "the bound must be able to tell ($tables vs $oneLayerKv)")
        for (attention in listOf("squeezed", "full")) {
            for (l in 0 until pack.layers) PackLayout.layerContextInputs(pack, shapes, attention, l) // classes loaded
            for (l in 0 until pack.layers) {
                val before = bean.getThreadAllocatedBytes(tid)
                val out = PackLayout.layerContextInputs(pack, shapes, attention, l)
                val allocated = bean.getThreadAllocatedBytes(tid) - before
                // the outputs' arrays (16-byte header) and their tensor objects
                val outputs = out.values.sumOf { t ->
                    16L + 32 + when (t) {
                        is DecoderTensor.Float32 -> 4L * t.data.size
                        is DecoderTensor.Int64 -> 8L * t.data.size
                    } + 16 + 4L * t.shape.size
                }
                val scratch = allocated - outputs
                assertTrue(scratch <= tables, "$attention layer $l: $scratch bytes besides its inputs ($outputs), at most $tables")
            }
        }
    }
}
