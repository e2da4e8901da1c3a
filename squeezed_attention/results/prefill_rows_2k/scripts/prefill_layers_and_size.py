import sys, torch
sys.path.insert(0, '/work/main')
from squeezed_attention.model import LlamaForCausalLM
from squeezed_attention.suite import suite_cases
from squeezed_attention.weights import load_checkpoint
from squeezed_attention.generation import AttentionChoice, Generator
from squeezed_attention.pack import read_context_pack
torch.set_num_threads(1)
ck = load_checkpoint(None); model = LlamaForCausalLM.from_checkpoint(ck)
cases = suite_cases(ck.tokenizer, 'dev', [2048], 12, 0)
case = [c for c in cases if c.case_id == sys.argv[1]][0]
budget = float(sys.argv[2])
pack = read_context_pack(f'/tmp/sa_exp/packs/{case.case_id}.pack')
gen = Generator(model, ck.tokenizer, pack)
raw = case.framing == 'raw'
prompt = ("\n\nQuestion: " + case.question + "\nAnswer:") if raw else case.question
class Hybrid:
    def __init__(s, pre, dec, pre_layers=range(30), other=None): s.pre, s.dec, s.pl, s.other = pre, dec, set(pre_layers), other
    def attend(s, layer, q):
        if q.shape[1] == 1: return s.dec.attend(layer, q)
        return (s.pre if layer in s.pl else s.other).attend(layer, q)
base = gen.context
full = base(AttentionChoice('full')); sq = base(AttentionChoice('top-k', kv_budget=budget))
B = sq.spec.budget_keys
tests = [('sqpre L0-9', Hybrid(sq, sq, range(0, 10), full)), ('sqpre L10-19', Hybrid(sq, sq, range(10, 20), full)),
         ('sqpre L20-29', Hybrid(sq, sq, range(20, 30), full))]
for m in (2, 3):
    big = base(AttentionChoice('top-k', keep_keys=min(pack.num_clustered, m * B)))
    tests.append((f'prefill {m}x keys', Hybrid(big, sq)))
for name, ctx in tests:
    gen.context = lambda choice, ctx=ctx: ctx
    r = gen.generate(prompt, AttentionChoice('full'), max_new_tokens=40, raw=raw, stop_when=case.correct)
    print(case.case_id, budget, name, case.correct(r.text), repr(r.text[:100]), flush=True)
