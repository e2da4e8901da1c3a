"""Prefill (128-token prompt) and decode time, full vs squeezed at KV budget 0.125 with prefill_rows 0/8/1, interleaved."""
import sys, time, statistics, torch
sys.path.insert(0, '/work/main')
from pathlib import Path
from squeezed_attention.model import LlamaForCausalLM
from squeezed_attention.weights import load_checkpoint
from squeezed_attention.generation import AttentionChoice, Generator
from squeezed_attention.pack import read_context_pack, build_context_pack, save_context_pack, BuildSettings
from squeezed_attention.suite import documents, _prose, split_items
import random
torch.set_num_threads(2)
n_ctx = int(sys.argv[1]); reps = int(sys.argv[2])
ck = load_checkpoint(None); model = LlamaForCausalLM.from_checkpoint(ck); tok = ck.tokenizer
path = Path(f'/tmp/sa_exp/speed_{n_ctx}.pack')
docs = documents()
paras, _ = _prose(tok, docs, split_items(sorted(docs), 'dev'), n_ctx + 400, random.Random(1))
ids = tok.encode("\n\n".join(paras))
if path.exists():
    pack = read_context_pack(path)
else:
    pack = build_context_pack(model, ck, tok.decode(ids[:n_ctx], skip_special=False), BuildSettings(framing='raw'))
    save_context_pack(pack, path)
gen = Generator(model, tok, pack)
prompt = torch.tensor(ids[n_ctx:n_ctx + 128])
choices = {'full': AttentionChoice('full')}
for r in (0, 1):
    choices[f'rows{r}'] = AttentionChoice('top-k', kv_budget=0.125, prefill_rows=r)
ctxs = {k: gen.context(c) for k, c in choices.items()}
times = {k: [] for k in ctxs}
dec = {k: [] for k in ('full', 'rows0')}
for rep in range(reps + 1):
    for k, ctx in ctxs.items():
        cache = model.new_cache(200)
        t = time.perf_counter()
        model.step(prompt, cache, position_offset=pack.num_tokens, context=ctx)
        if rep: times[k].append(time.perf_counter() - t)
        if k in dec:
            t = time.perf_counter()
            for i in range(8):
                model.step(prompt[i:i + 1], cache, position_offset=pack.num_tokens, context=ctx)
            if rep: dec[k].append((time.perf_counter() - t) / 8)
med = {k: statistics.median(v) for k, v in times.items()}
for k in med:
    print(f"prefill {k}: {med[k]*1000:.0f} ms  speed-up vs full {med['full']/med[k]:.2f}x  vs rows0 {med[k]/med['rows0']:.3f}")
for k, v in dec.items():
    print(f"decode {k}: {statistics.median(v)*1000:.1f} ms/token")
print(gen.context(choices['rows0']).backend, pack.num_tokens)
