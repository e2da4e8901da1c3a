"""Diagnostic: at selecting decode steps of teacher-forced continuations, how does the squeezed step's confidence
relate to its top-1 agreement with full attention?"""
import json, sys, random
import numpy as np, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))  # the repository root
from squeezed_attention.weights import load_checkpoint
from squeezed_attention.model import LlamaForCausalLM
from squeezed_attention.suite import documents, split_items, _prose
from squeezed_attention.pack import BuildSettings, build_context_pack
from squeezed_attention.generation import AttentionChoice, Generator
from squeezed_attention.evaluate import continuation_metrics

torch.set_num_threads(int(sys.argv[4]) if len(sys.argv) > 4 else 2)
split, length, ncases = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ck = load_checkpoint(None)
model = LlamaForCausalLM.from_checkpoint(ck)
tok = ck.tokenizer
docs = documents()
names = split_items(sorted(docs), split)
out = []
budgets = [0.125]
for ci in range(ncases):
    rng = random.Random(f"gateprobe:{split}:{length}:{ci}")
    paras, used = _prose(tok, docs, names, length + 64 + 64, rng)
    ids = tok.encode("\n\n".join(paras))
    n_ctx = length - 64
    pack = build_context_pack(model, ck, tok.decode(ids[:n_ctx], skip_special=False), BuildSettings(framing="raw"))
    cont = tok.encode(tok.decode(ids[n_ctx:n_ctx + 72]))[:64]
    gen = Generator(model, tok, pack)
    ref, _ = continuation_metrics(gen, AttentionChoice("full"), cont)
    rec = {"source": used[0], "full": ref.numpy().tolist() if False else None}
    pf = ref.exp().numpy()
    for b in budgets:
        sq, m = continuation_metrics(gen, AttentionChoice("top-k", kv_budget=b), cont, ref)
        ps = sq.exp().numpy()
        rows = []
        for t in range(len(cont) - 1):
            rows.append({"t": t, "agree": int(pf[t].argmax() == ps[t].argmax()), "p_sq": float(ps[t].max()),
                         "p_full": float(pf[t].max()),
                         "margin_sq": float(np.sort(ps[t])[-1] - np.sort(ps[t])[-2]),
                         "ent_sq": float(-(ps[t] * np.log(ps[t] + 1e-30)).sum())})
        out.append({"case": ci, "source": used[0], "budget": b, "sel_from": m["selecting_from_step"], "steps": rows})
        print(ci, used[0], b, m["top1_agreement"], m["selecting_top1_agreement"], flush=True)
    json.dump(out, open(f"probe_{split}_{length}.json", "w"))
