import sys, torch
sys.path.insert(0, '/work/main')
from squeezed_attention.model import LlamaForCausalLM
from squeezed_attention.suite import suite_cases
from squeezed_attention.weights import load_checkpoint
from squeezed_attention.generation import AttentionChoice, Generator
from squeezed_attention.pack import read_context_pack
torch.set_num_threads(1)
ck = load_checkpoint(None); model = LlamaForCausalLM.from_checkpoint(ck)
cases = suite_cases(ck.tokenizer, 'dev', [2048], 24, 0)
case = [c for c in cases if c.case_id == sys.argv[1]][0]
pack = read_context_pack(f'/tmp/sa_exp/packs/{case.case_id}.pack')
gen = Generator(model, ck.tokenizer, pack)
raw = case.framing == 'raw'
prompt = ("\n\nQuestion: " + case.question + "\nAnswer:") if raw else case.question
class Hybrid:
    def __init__(s, pre, dec): s.pre, s.dec = pre, dec
    def attend(s, layer, q): return (s.pre if q.shape[1] > 1 else s.dec).attend(layer, q)
base = gen.context
for budget in (0.125, 0.225):
    full = base(AttentionChoice('full')); sq = base(AttentionChoice('top-k', kv_budget=budget))
    for name, ctx in (('fullpre+sqdec', Hybrid(full, sq)), ('sqpre+fulldec', Hybrid(sq, full))):
        gen.context = lambda choice, ctx=ctx: ctx
        r = gen.generate(prompt, AttentionChoice('full'), max_new_tokens=40, raw=raw, stop_when=case.correct)
        print(budget, name, case.correct(r.text), repr(r.text[:120]), flush=True)
