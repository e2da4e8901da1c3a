import json, os, sys
mode, file = sys.argv[1], sys.argv[2]
import onnxruntime as ort
O = ort.InferenceSession
class P(O):
    def __init__(s, p, so=None, **kw):
        if "noprepack" in mode: so.add_session_config_entry("session.disable_prepacking", "1")
        if "prio" in mode: so.execution_order = ort.ExecutionOrder.PRIORITY_BASED
        super().__init__(p, so, **kw)
ort.InferenceSession = P
sys.path.insert(0, ".")
from bench.decoder import measure_decoder
r = measure_decoder({"dir": os.environ["ADIR"], "file": file, "threads": 2, "pack": "/tmp/onnx8k/bench/packs/prose_7808.pack",
    "question": "What is the pass key mentioned in the text?", "decode_tokens": 12, "warmup": 1, "runs": 3})
med = lambda xs: 1000*sorted(xs)[len(xs)//2]
print(json.dumps({"mode": mode, "file": file[8:20], "peak": round(r["peak_rss_mb"]), "load_s": round(r["load_s"],2),
   "q_ms": round(med(r["prefill_s"])), "p128_ms": round(med(r["prompt_prefill_s"])), "dec_ms": round(med(r["decode_step_s"]),1), "text": r["text"][:40]}))
