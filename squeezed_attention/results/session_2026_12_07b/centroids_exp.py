"""Ad-hoc (RESULTS.md 3zb): the suite with packs built at another centroid fraction (recall and answers at the same
KV budgets). python centroids_exp.py FRACTION LENGTH CASES SPLIT SEED OUT [THREADS] [CONTINUATION_CASES]"""
import dataclasses, json, sys, torch
from pathlib import Path
import squeezed_attention.pack as P
from squeezed_attention.settings import BuildSettings
from squeezed_attention.suite import run_suite
from squeezed_attention.model import LlamaForCausalLM
from squeezed_attention.weights import load_checkpoint

frac = float(sys.argv[1]); length = int(sys.argv[2]); cases = int(sys.argv[3])
split = sys.argv[4]; seed = int(sys.argv[5]); out = sys.argv[6]
torch.set_num_threads(int(sys.argv[7]) if len(sys.argv) > 7 else 1)

@dataclasses.dataclass
class Build(BuildSettings):
    centroid_fraction: float = frac

P.BuildSettings = Build
ck = load_checkpoint(None)
model = LlamaForCausalLM.from_checkpoint(ck)
r = run_suite(model, ck, split=split, lengths=(length,), cases_per_length=cases, kv_budgets=(0.225, 0.125),
              seed=seed, continuation_cases=int(sys.argv[8]) if len(sys.argv) > 8 else 0, out_dir=Path(out))
for e in r["summary"]:
    print(json.dumps(e))
