import sys, json, torch, numpy as np
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))  # the repository root
from squeezed_attention.weights import load_checkpoint
from squeezed_attention.model import LlamaForCausalLM
from squeezed_attention.suite import suite_cases
from squeezed_attention.pack import BuildSettings, build_context_pack
from squeezed_attention.generation import AttentionChoice, Generator
torch.set_num_threads(int(sys.argv[4]))
split, length, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ck = load_checkpoint(None); model = LlamaForCausalLM.from_checkpoint(ck); tok = ck.tokenizer
out = []
for case in suite_cases(tok, split, [length], 12, seed):
    pack = build_context_pack(model, ck, case.text, BuildSettings(framing=case.framing))
    gen = Generator(model, tok, pack)
    raw = case.framing == "raw"
    prompt = ("\n\nQuestion: " + case.question + "\nAnswer:") if raw else case.question
    r = gen.generate(prompt, AttentionChoice("full"), max_new_tokens=48, raw=raw)
    ans = r.token_ids
    ids = gen.prompt_ids(prompt, raw)
    ch = AttentionChoice("top-k", kv_budget=0.125)
    ctx = gen.context(ch); cache = model.new_cache(len(ids) + len(ans) + 2)
    logits = model.step(torch.tensor(ids), cache, position_offset=pack.num_tokens, context=ctx)
    steps = []
    for i, t in enumerate(ans):
        p = torch.softmax(logits.double(), -1)
        top = torch.topk(p, 2)
        steps.append({"i": i, "agree": int(int(top.indices[0]) == t), "p": float(top.values[0]),
                      "margin": float(top.values[0] - top.values[1])})
        logits = model.step(torch.tensor([t]), cache, position_offset=pack.num_tokens, context=ctx)
    out.append({"case": case.case_id, "full_correct": case.correct(r.text), "steps": steps})
    print(case.case_id, case.correct(r.text), sum(s["agree"] for s in steps[16:]), len(steps[16:]), flush=True)
    json.dump(out, open(f"answers_{split}_{length}_{seed}.json", "w"))
