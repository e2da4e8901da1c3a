"""Sweep 15: questions wrapped in instructions the project never used, full vs squeezed defaults (exact head 16 +
tail 32) vs squeezed with exact_head 0 (the previous default). Host Python API, one model load.

    python run.py THREADS            # 46-54-token prompts -> results.jsonl
    python run.py THREADS long       # 73-81-token prompts -> results_long.jsonl
"""
import json, sys, time, torch
from squeezed_attention import load_checkpoint, LlamaForCausalLM, load_context_pack, Generator, AttentionChoice
torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
FACTS = [
 ('d15_handbook', 'What is the access PIN for the loading bay door?', '40817'),
 ('d15_handbook', 'What is the guest wifi password?', 'marmalade'),
 ('d2_aptget', 'What is the mirror server password?', 'copperfield'),
 ('d2_aptget', 'Who is the maintainer on call this week?', 'Venkataraman'),
 ('d2_diary', 'What is the current ferry ticket number?', '61457'),
 ('d2_diary', 'On what date was the filter warranty registered?', 'September'),
 ('d4_mix', 'What is the access badge number for chamber 3?', '7761342'),
 ('d4_mix', 'What is the code word for the fire drill?', 'pelican'),
 ('d4_tar', 'What is the vault code?', '9907312'),
 ('d4_tar', 'Where is the tape library located?', 'Geneva'),
 ('d7_aptget', 'What is the support hotline password?', 'juniper'),
 ('d7_aptget', 'Where is the data centre?', 'Reykjavik'),
]
WRAPS = {
 "form": "{q} I need this for a form I am filling in right now, so please give me the exact value as it is written in the document, without any extra commentary or formatting.",
 "brief": "{q} Answer briefly. Do not explain your reasoning, do not restate the question, and if the information is missing from the text just reply that it was not found.",
 "sandwich": "I have been reading through this document for a while and I still cannot find one detail. {q} Reply with just the value, and keep your answer short please.",
}
LONG_WRAPS = {
 "long_after": "{q} Please read the whole document carefully before you answer. Give the answer in one short sentence that states the value exactly as the document writes it, with no explanation, no list, no quotation marks and no extra remarks, and if the document does not mention it at all, simply reply that you do not know.",
 "middle": "I am preparing a short summary of this document for my team and I have gone through most of it already, but there is one detail I keep missing. {q} Please reply with the value only, in one short sentence, and if it is not in the document, say that you do not know.",
}
LONG = len(sys.argv) > 2 and sys.argv[2] == "long"
if LONG:
    WRAPS = LONG_WRAPS
ck = load_checkpoint()
model = LlamaForCausalLM.from_checkpoint(ck)
out = open("/tmp/s50/sweep15/results_long.jsonl" if LONG else "/tmp/s50/sweep15/results.jsonl", "a")
packs = {}
for doc, q, ans in FACTS:
    if doc not in packs:
        packs[doc] = Generator(model, ck.tokenizer, load_context_pack(f"/tmp/sweep13/cases/{doc}/doc.pack"))
    gen = packs[doc]
    for wrap, tmpl in WRAPS.items():
        prompt = tmpl.format(q=q)
        row = {"doc": doc, "wrap": wrap, "prompt": prompt, "answer": ans, "prompt_tokens": len(gen.prompt_ids(prompt))}
        for name, choice in (("full", AttentionChoice("full")),
                             ("sq", AttentionChoice("top-k", kv_budget=0.125)),
                             ("sq_head0", AttentionChoice("top-k", kv_budget=0.125, exact_head=0))):
            t0 = time.time()
            r = gen.generate(prompt, choice, max_new_tokens=32)
            row[name] = {"text": r.text, "ok": ans.lower() in r.text.lower(), "ids": r.token_ids, "secs": round(time.time() - t0, 1)}
        print(doc, wrap, row["prompt_tokens"], {k: row[k]["ok"] for k in ("full", "sq", "sq_head0")}, flush=True)
        out.write(json.dumps(row) + "\n"); out.flush()
