package dev.squeezemobile.core

import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import java.security.MessageDigest

/**
 * A real context pack file (the tiny real-format Llama's, built and saved by the Python pipeline): format, content
 * hash, consistency and model checks, and its layout as the exported decoder's context inputs, which must be
 * byte-identical to decoder_context_inputs (+ next_rows for a decoder with followed keys; sha256 of every input).
 */
class ContextPackTest {
    private val bytes = Golden.bytes("qa_pack.safetensors")
    private val pack = ContextPack.read(bytes, "qa_pack.safetensors")
    private val gen = Golden.json("qa_generation.json.gz")

    @Test
    fun readsTheRealPackAndVerifiesItsHash() {
        assertEquals(gen["num_tokens"].int(), pack.numTokens)
        assertEquals(2, pack.layers)
        assertEquals(2, pack.kvHeads)
        assertEquals(8, pack.headDim)
        assertEquals(pack.numTokens - 4 - 100, pack.numClustered)
        assertEquals("chat", pack.framing)
        assertEquals(pack.metadata["content_sha256"], ContextPack.contentSha256(pack.tensors, pack.metadata))
        // built for the model and tokenizer the generation golden names
        pack.checkModel(gen["model"]["weights_sha256"].string(), gen["model"]["tokenizer_sha256"].string())
        assertEquals(gen["context_sha256"].string(), pack.metadata["context_sha256"])
        assertTrue(CentroidLookup.fromPack(pack).hasLevel1)
    }

    @Test
    fun damagedOrForeignPacksAreRefusedInOneLine() {
        fun refused(b: ByteArray, expect: String) {
            val e = assertThrows(PackException::class.java) { ContextPack.read(b, "x.pack") }
            assertTrue(e.message!!.contains(expect) && !e.message!!.contains("\n"), e.message)
        }
        refused(bytes.copyOf().also { it[it.size - 3] = (it[it.size - 3] + 1).toByte() }, "modified after it was built")
        refused(bytes.copyOf(bytes.size - 10), "not a readable context pack")
        refused(ByteArray(4), "not a readable context pack")
        val text = String(bytes, Charsets.ISO_8859_1)
        refused(text.replace("squeeze-context-pack/2", "squeeze-context-pack/9").toByteArray(Charsets.ISO_8859_1), "is not a squeeze-context-pack/2 file")
        // bytes appended after the last tensor, and two tensors on the same bytes (one range left unused): the content
        // hash still matches (it covers the tensors, not the file), Python's reader (the safetensors library) refuses both
        refused(bytes + "garbage".toByteArray(), "(7 bytes after its last tensor)")
        check(text.contains("[792,1584]"))
        refused(text.replace("[792,1584]", "[0,792]   ").toByteArray(Charsets.ISO_8859_1), "its tensors' bytes overlap or leave a gap")
        val e = assertThrows(PackException::class.java) { pack.checkModel("0".repeat(64), null) }
        assertTrue(e.message!!.contains("other model weights"))
        val t = assertThrows(PackException::class.java) { pack.checkModel(null, "0".repeat(64)) }
        assertTrue(t.message!!.contains("different tokenizer"))
        assertThrows(PackException::class.java) { ContextPack.read(java.io.File("/nonexistent.pack")) }
    }

    @Test
    fun decoderContextInputsAreByteIdenticalToPython() {
        val shapes = DecoderShapes.parse(gen["shapes"])
        for (attention in listOf("squeezed", "full")) {
            val run = gen["runs"].list().first { it["attention"].string() == attention }
            val expected = run["context_inputs"].obj()
            val inputs = PackLayout.decoderContextInputs(pack, shapes, attention)
            // the golden's squeezed graph follows keys: its loop adds next_rows_<layer> (GenerationLoop.contextInputs)
            if (run["follow_keys"].int() > 0) inputs.putAll(PackLayout.nextRows(pack, shapes))
            assertEquals(attention == "squeezed", inputs.keys.any { it.startsWith("next_rows_") }, attention)
            assertEquals(expected.keys.toList(), inputs.keys.toList(), attention)
            for ((name, t) in inputs) {
                val e = run["context_inputs"][name]
                assertEquals(e["dtype"].string(), dtypeOf(t), name)
                assertArrayEquals(e["shape"].intArray(), t.shape, name)
                assertEquals(e["sha256"].string(), sha256(t), "$attention input $name")
            }
        }
    }

    @Test
    fun nextRowsPointFromEachClusteredRowToTheNextPosition() {
        // one layer, two heads of 4 clustered positions, tables 6 rows wide. Head 0's labels [1, 0, 1, 0]: slots hold
        // positions [1, 3, 0, 2] (cluster by cluster, stable); position 1 -> 2 (slot 3), 3 -> none, 0 -> 1 (slot 0),
        // 2 -> 3 (slot 1). Head 1's labels [0, 0, 0, 0]: slots in position order, each the next slot; rows offset by 6
        val table = PackLayout.nextRowTable(longArrayOf(1, 0, 1, 0, 0, 0, 0, 0), groups = 2, heads = 2, nc = 4, width = 6)
        assertArrayEquals(longArrayOf(3, -1, 0, 1, -1, -1, 7, 8, 9, -1, -1, -1), table)
        // two layers of one head: every layer's rows start at 0 (flat rows per layer's table)
        // (layer 1's labels [2, 1, 0]: slots hold positions [2, 1, 0]; 2 -> none, 1 -> 2 (slot 0), 0 -> 1 (slot 1))
        assertArrayEquals(longArrayOf(1, 2, -1, -1, 0, 1), PackLayout.nextRowTable(longArrayOf(0, 0, 0, 2, 1, 0), 2, 1, 3, 3))
        // the real pack: one next_rows_<layer> per layer, [Hkv * max_clustered]; every clustered position but the last
        // of a head is pointed to once, from within its head
        val shapes = DecoderShapes.parse(gen["shapes"])
        val rows = PackLayout.nextRows(pack, shapes)
        assertEquals((0 until pack.layers).map { "next_rows_$it" }, rows.keys.toList())
        val width = shapes.maxClustered
        for ((name, t) in rows) {
            val data = (t as DecoderTensor.Int64).data
            assertArrayEquals(intArrayOf(pack.kvHeads * width), t.shape, name)
            for (h in 0 until pack.kvHeads) {
                val head = data.copyOfRange(h * width, (h + 1) * width)
                assertTrue(head.drop(pack.numClustered).all { it == -1L }, "$name head $h: padding")
                val pointed = head.take(pack.numClustered).filter { it >= 0 }
                assertEquals(pack.numClustered - 1, pointed.size, "$name head $h")
                assertEquals(pointed.size, pointed.toSet().size, "$name head $h: each row once")
                assertTrue(pointed.all { it >= h * width && it < h * width + pack.numClustered }, "$name head $h")
            }
        }
        assertThrows(PackException::class.java) { PackLayout.nextRows(pack, shapes.copy(maxContext = pack.numTokens - 1)) }
    }

    @Test
    fun packsThatDoNotFitTheArtifactAreRefused() {
        val shapes = DecoderShapes.parse(gen["shapes"])
        val small = shapes.copy(maxContext = pack.numTokens - 1)
        assertTrue(assertThrows(PackException::class.java) { PackLayout.decoderContextInputs(pack, small, "full") }
            .message!!.contains("--max-context ${pack.numTokens}"))
        assertTrue(assertThrows(PackException::class.java) { PackLayout.decoderContextInputs(pack, shapes.copy(window = 50), "squeezed") }
            .message!!.contains("window tokens"))
        assertTrue(assertThrows(PackException::class.java) { PackLayout.decoderContextInputs(pack, shapes.copy(maxClusters = 2), "squeezed") }
            .message!!.contains("clusters per head"))
    }

    @Test
    fun halfPrecisionConversionsAreExact() {
        for (bits in 0 until 0x10000) {
            val f = Half.toFloat(bits.toShort())
            if (f.isNaN()) continue
            assertEquals(bits, Half.fromFloat(f).toInt() and 0xFFFF, "half bits $bits")
        }
        assertEquals(1.0f, Half.toFloat(Half.fromFloat(1.0f + 1.0f / 2048)))               // tie -> even
        assertEquals(1.0f + 2.0f / 1024, Half.toFloat(Half.fromFloat(1.0f + 3.0f / 2048)))  // tie -> even (up)
        assertEquals(Float.POSITIVE_INFINITY, Half.toFloat(Half.fromFloat(65520.0f)))
        assertEquals(65504.0f, Half.toFloat(Half.fromFloat(65519.0f)))
        assertEquals(5.9604645e-8f, Half.toFloat(Half.fromFloat(5.9604645e-8f * 0.75f)))     // subnormal rounding
        assertEquals(0.0f, Half.toFloat(Half.fromFloat(5.9604645e-8f * 0.5f)))              // tie -> even (zero)
    }

    companion object {
        fun dtypeOf(t: DecoderTensor) = when (t) {
            is DecoderTensor.Float32 -> "float32"
            is DecoderTensor.Int64 -> "int64"
        }

        fun sha256(t: DecoderTensor): String =
            MessageDigest.getInstance("SHA-256").digest(t.toLittleEndian()).joinToString("") { "%02x".format(it) }
    }
}
