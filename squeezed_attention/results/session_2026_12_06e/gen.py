"""Host decode speed of one pack at N threads (run by run.sh under each OpenMP wait setting):
python gen.py THREADS PACK  (run from the repository root)."""
import json
import sys

import torch

from squeezed_attention import AttentionChoice, Generator

torch.set_num_threads(int(sys.argv[1]))
gen = Generator.from_pack(sys.argv[2])
res = {}
for name, choice in (("squeezed", AttentionChoice("top-k", kv_budget=0.125)), ("full", AttentionChoice("full"))):
    r = gen.generate("Summarise the document in one long paragraph.", choice, max_new_tokens=24, stop_at_eos=False)
    res[name] = {"prefill_s": round(r.prefill_seconds, 3),
                 "decode_ms_per_token": round(1e3 * r.decode_seconds / max(r.decode_tokens, 1), 1)}
print(json.dumps(res))
