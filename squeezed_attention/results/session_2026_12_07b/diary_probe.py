"""Ad-hoc (RESULTS.md 3zb): the 3z diary asked with a preamble + question + instruction (66-76 tokens), full attention
vs the default (head 128) vs --exact-head 16, KV budget 0.125, greedy 20 tokens -> stdout (diary_probe.jsonl)."""
import torch, json
from pathlib import Path
from squeezed_attention.generation import AttentionChoice, Generator
from squeezed_attention.pack import BuildSettings, build_context_pack
from squeezed_attention.testing import real_checkpoint, real_model
torch.set_num_threads(1)
text = Path("squeezed_attention/results/session_2026_12_06f/diary.txt").read_text()
ck = real_checkpoint(); m = real_model()
gen = Generator(m, ck.tokenizer, build_context_pack(m, ck, text, BuildSettings()))
PRE = ["I am writing up notes on this diary for a friend who asked me about it this morning, and there is one thing I could not find on my first read.",
       "Before I call the office I want to double-check one detail from the diary above, because I remember it only vaguely."]
POST = " Please reply with the value only, in one short sentence, and if it is not there, say that you do not know."
QS = [("What is the vault code?", "5521904"), ("What is the password for the reading room?", "heliotrope"),
      ("What is the ferry ticket number?", "88213")]
for pre in PRE:
    for q, a in QS:
        prompt = f"{pre} {q}{POST}"
        row = {"n": len(gen.prompt_ids(prompt)), "q": q, "pre": pre[:20]}
        for name, ch in (("full", AttentionChoice("full")), ("default", AttentionChoice("top-k", kv_budget=0.125)),
                         ("head16", AttentionChoice("top-k", kv_budget=0.125, exact_head=16))):
            r = gen.generate(prompt, ch, max_new_tokens=20)
            row[name] = (a in r.text, r.text[:70])
        print(json.dumps(row), flush=True)
