import sys, json, random, time, torch
from squeezed_attention import testing
from squeezed_attention.suite import documents, split_items, _prose
from squeezed_attention.pack import BuildSettings, build_context_pack
from squeezed_attention.generation import AttentionChoice, Generator
from squeezed_attention.evaluate import continuation_metrics
torch.set_num_threads(1)
split, length, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
variants = {k: AttentionChoice("top-k", kv_budget=0.125, follow_keys=int(k[1:])) for k in sys.argv[5].split(",")}
model, ck = testing.real_model(), testing.real_checkpoint()
tok = ck.tokenizer
docs = documents()
T = 64
res = []
for ci in range(n):
    rng = random.Random(f"{split}:continuation:{length}:{seed}" + (f":{ci}" if ci else ""))
    paras, used = _prose(tok, docs, split_items(sorted(docs), split), length + T + 64, rng)
    ids = tok.encode("\n\n".join(paras))
    n_ctx = length - T
    pack = build_context_pack(model, ck, tok.decode(ids[:n_ctx], skip_special=False), BuildSettings(framing="raw"))
    cont = tok.encode(tok.decode(ids[n_ctx:n_ctx + T + 8]))[:T]
    gen = Generator(model, tok, pack)
    ref, _ = continuation_metrics(gen, AttentionChoice("full"), cont)
    row = {"case": ci, "source": used[0]}
    for k, ch in variants.items():
        lp, m = continuation_metrics(gen, ch, cont, ref)
        row[k] = (round(m["top1_agreement"] * m["scored_tokens"]), m["kl_mean"])
    print(json.dumps(row), flush=True)
    res.append(row)
for k in variants:
    print(k, sum(r[k][0] for r in res), "/", 63 * len(res), "KL", sum(r[k][1] for r in res) / len(res))
