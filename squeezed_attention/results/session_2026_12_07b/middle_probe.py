"""Ad-hoc (RESULTS.md 3zb): questions in the middle of 60-80-token prompts (a preamble before, an instruction after) on
the suite's texts, full attention vs squeezed variants at KV budget 0.125, greedy, host API, 1 thread.

    python middle_probe.py LENGTH CASES SEED OUT.jsonl VARIANTS [SPLIT]

"sq" is AttentionChoice's default of the day: the runs middle_2k/4k.jsonl and middle_b.jsonl were made with the
16-token head (3za's default); middle_heldout.jsonl with the 128-token head (3zb's)."""
import json, sys, time, torch, random
from squeezed_attention import load_checkpoint, LlamaForCausalLM, Generator, AttentionChoice
from squeezed_attention.pack import BuildSettings, build_context_pack
from squeezed_attention.suite import suite_cases
torch.set_num_threads(1)
length, n, seed, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
variants = sys.argv[5].split(",") if len(sys.argv) > 5 else ["sq", "head48", "rows1"]
split = sys.argv[6] if len(sys.argv) > 6 else "dev"
PRE = ["I am writing up notes on this text for a colleague who asked me about it this morning, and there is one thing I could not find on my first read.",
       "My manager forwarded me this document yesterday and asked a few questions about it; I have answered most of them, but one is still open.",
       "Before the meeting starts I want to double-check one detail from the document above, because I remember it only vaguely."]
POST = ["Please reply with the value only, in one short sentence, and if it is not there, say that you do not know.",
        "Keep the reply short and exact; no explanation is needed, and say so plainly if the document does not contain it.",
        "Answer in a single sentence that quotes the value exactly as written, without any other remarks."]
CFG = {"full": AttentionChoice("full"), "sq": AttentionChoice("top-k", kv_budget=0.125),
       "head48": AttentionChoice("top-k", kv_budget=0.125, exact_head=48),
       "head16": AttentionChoice("top-k", kv_budget=0.125, exact_head=16),
       "rows1": AttentionChoice("top-k", kv_budget=0.125, prefill_rows=1),
       "tail64": AttentionChoice("top-k", kv_budget=0.125, exact_tail=64),
       "b30": AttentionChoice("top-k", kv_budget=0.3), "b50": AttentionChoice("top-k", kv_budget=0.5),
       "b30rows1": AttentionChoice("top-k", kv_budget=0.3, prefill_rows=1)}
ck = load_checkpoint(); model = LlamaForCausalLM.from_checkpoint(ck)
rng = random.Random(seed)
cases = [c for c in suite_cases(ck.tokenizer, split, (length,), n, seed) if len(c.answers) == 1]
f = open(out, "a")
for c in cases:
    pack = build_context_pack(model, ck, c.text, BuildSettings(framing="chat"))
    gen = Generator(model, ck.tokenizer, pack)
    prompt = f"{rng.choice(PRE)} {c.question} {rng.choice(POST)}"
    row = {"case": c.case_id, "prompt_tokens": len(gen.prompt_ids(prompt)), "prompt": prompt}
    for name in ["full"] + variants:
        t = time.time()
        r = gen.generate(prompt, CFG[name], max_new_tokens=40, stop_when=c.correct)
        row[name] = {"ok": c.correct(r.text), "text": r.text[:120], "s": round(time.time() - t, 1)}
    print(json.dumps(row), flush=True); f.write(json.dumps(row) + "\n"); f.flush()
