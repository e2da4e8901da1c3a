"""Held-out cases: full vs top-k@0.125 with exact_below 0 / 0.2 / 0.5 on the same cases, plus continuations."""
import sys, json, random, time
import torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))  # the repository root
from squeezed_attention.weights import load_checkpoint
from squeezed_attention.model import LlamaForCausalLM
from squeezed_attention.suite import suite_cases, documents, split_items, _prose
from squeezed_attention.pack import BuildSettings, build_context_pack
from squeezed_attention.generation import AttentionChoice, Generator
from squeezed_attention.evaluate import continuation_metrics
torch.set_num_threads(int(sys.argv[4]) if len(sys.argv) > 4 else 1)
length, seed, ncases = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
ck = load_checkpoint(None); model = LlamaForCausalLM.from_checkpoint(ck); tok = ck.tokenizer
GATES = (0.0, 0.2, 0.5)
out = {"cases": [], "continuation": []}
path = f"heldout_{length}_{seed}.json"
t0 = time.time()
for case in suite_cases(tok, "heldout", [length], ncases, seed):
    pack = build_context_pack(model, ck, case.text, BuildSettings(framing=case.framing))
    gen = Generator(model, tok, pack)
    raw = case.framing == "raw"
    prompt = ("\n\nQuestion: " + case.question + "\nAnswer:") if raw else case.question
    n = 48 if len(case.answers) == 1 else 64
    row = {"case": case.case_id}
    r = gen.generate(prompt, AttentionChoice("full"), max_new_tokens=n, raw=raw, stop_when=lambda t: case.correct(t))
    row["full"] = case.correct(r.text)
    for g in GATES:
        r = gen.generate(prompt, AttentionChoice("top-k", kv_budget=0.125, exact_below=g), max_new_tokens=n, raw=raw,
                         stop_when=lambda t: case.correct(t))
        row[str(g)] = [case.correct(r.text), r.rerun_steps, r.decode_tokens]
    out["cases"].append(row)
    print(f"[{time.time()-t0:5.0f}s]", row, flush=True)
    json.dump(out, open(path, "w"))
docs = documents(); names = split_items(sorted(docs), "heldout")
for ci in range(4):
    rng = random.Random(f"gate-heldout-cont:{length}:{seed}:{ci}")
    paras, used = _prose(tok, docs, names, length + 128, rng)
    ids = tok.encode("\n\n".join(paras)); n_ctx = length - 64
    pack = build_context_pack(model, ck, tok.decode(ids[:n_ctx], skip_special=False), BuildSettings(framing="raw"))
    cont = tok.encode(tok.decode(ids[n_ctx:n_ctx + 72]))[:64]
    gen = Generator(model, tok, pack)
    ref, _ = continuation_metrics(gen, AttentionChoice("full"), cont)
    row = {"source": used[0]}
    for g in GATES:
        _, m = continuation_metrics(gen, AttentionChoice("top-k", kv_budget=0.125, exact_below=g), cont, ref)
        row[str(g)] = {k: m[k] for k in ("top1_agreement", "kl_mean", "selecting_top1_agreement", "selecting_tokens", "rerun_steps")}
    out["continuation"].append(row)
    print(f"[{time.time()-t0:5.0f}s]", row, flush=True)
    json.dump(out, open(path, "w"))
