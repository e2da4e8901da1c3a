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
 * byte-identical to decoder_context_inputs (sha256 of every input).
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
