"""RESULTS.md 3zc: the in-graph decoder takes the last token's attention-weight rows by index (gather_last), where the
split plan's stages keep a 0/1 product. Both must give the same followed-keys pointer and logits, including a call
whose tokens are padded past n_tokens (the last real token is not the last row). The feeds are the ones the
torch-free loop builds for a 50-token prompt (a selecting prefill, then the exact tail) over a 2-layer tiny model's
pack; a wrong row (n_tokens - 2, or a fixed one) fails it. The real LLM's exported graphs were verified token-identical
at export (RESULTS.md 3zc)."""
from __future__ import annotations

import numpy as np

from conftest import TINY_DECODER_TEXT


def test_the_last_token_rows_by_index_equal_the_product(tmp_path):
    from squeezed_attention import testing
    from squeezed_attention.decoder_export import (EagerRunner, contract_section, decoder_modules, decoder_program,
                                                   decoder_shapes)
    from squeezed_attention.decoder_session import GenerationLoop
    from squeezed_attention.model import LlamaForCausalLM
    from squeezed_attention.pack import BuildSettings, build_context_pack
    from squeezed_attention.exportable import pack_as_arrays
    from squeezed_attention.pack_arrays import decoder_context_inputs
    from squeezed_attention.weights import load_checkpoint

    ck = load_checkpoint(testing.write_tiny_llama_gguf(tmp_path / "tiny.gguf", layers=2, quantized=False))
    model = LlamaForCausalLM.from_checkpoint(ck)
    pack = pack_as_arrays(build_context_pack(model, ck, TINY_DECODER_TEXT, BuildSettings()))
    shapes = decoder_shapes(model.config, max_context=160, max_prompt=64, max_new=16, kv_budget=0.3)
    context = decoder_context_inputs(pack, shapes.to_dict(), "squeezed")
    by_index = decoder_modules(model, shapes, "squeezed", "io", "step", exact_tail=32, follow=2)
    by_product = decoder_modules(model, shapes, "squeezed", "io", "step", exact_tail=32, follow=2)
    for m in by_product.values():
        m.gather_last = False
    assert all(m.gather_last for m in by_index.values())
    program, _ = decoder_program(model, shapes, "squeezed", "onnx", exact_tail=32, follow=2)
    contract = contract_section(shapes, "squeezed", "onnx", 0.3, {m.name: m.signature(dynamic=True)
                                                                  for m in program.methods},
                                "in-graph", exact_tail=32, follow=2)
    feeds = []
    eager = EagerRunner(by_index)

    class Recorder:
        def run(self, method, feed):
            feeds.append((method, {k: np.copy(v) for k, v in feed.items()}))
            return eager.run(method, feed)

    ids = list(np.random.default_rng(5).integers(3, model.config.vocab_size, size=50))
    loop = GenerationLoop(Recorder(), contract, pack, context, exact_head=0)
    loop.prompt(ids, loop.new_cache())
    assert [(m, int(f["n_tokens"][0])) for m, f in feeds] == [("prefill", 18), ("prefill_exact", 32)]
    for method, feed in feeds:
        n = int(feed["n_tokens"][0])
        padded = {**feed, "tokens": np.concatenate([feed["tokens"], np.zeros(5, feed["tokens"].dtype)])}
        for case in (feed, padded):   # padded: the last real token is not the last row
            got, want = (EagerRunner(modules).run(method, {k: np.copy(v) for k, v in case.items()})
                         for modules in (by_index, by_product))
            assert np.array_equal(got["follow_out"], want["follow_out"]), (method, n)
            assert len(np.unique(got["follow_out"])) > 2, got["follow_out"]   # real pointers, not one default row
            np.testing.assert_allclose(got["logits"], want["logits"], rtol=0, atol=1e-6)
