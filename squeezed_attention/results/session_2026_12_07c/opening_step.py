"""One-token calls of prefill_exact (the answer's opening in-graph) against decode steps, timed interleaved over the
squeezed .onnx of each artifact directory given. Usage: opening_step.py PACK DIR [DIR...]"""
import json, sys, time, statistics
from pathlib import Path
from export.backends import get_backend
from squeezed_attention.decoder_session import GenerationLoop
from squeezed_attention.pack_arrays import decoder_context_inputs, read_pack_arrays
pack = read_pack_arrays(sys.argv[1])
loops = {}
for d in sys.argv[2:]:
    d = Path(d); m = json.loads((d / "manifest.json").read_text())
    art = next(a for a in m["artifacts"] if a["decoder"]["attention"] == "squeezed")
    c = art["decoder"]
    runner = get_backend("onnx").load_program(d / art["file"], c["methods"], 2)
    loop = GenerationLoop(runner, c, pack, decoder_context_inputs(pack, c["shapes"], c["attention"]), exact_decode=0, exact_below=0)
    cache = loop.new_cache(); loop.prompt(list(range(1000, 1128)), cache)
    loops[str(d)] = (loop, cache)
times = {k: [] for k in loops}
for r in range(12):
    for k, (loop, cache) in loops.items():
        t = time.perf_counter(); loop.step("prefill_exact", [1234], 128 + r, cache); times[k].append(time.perf_counter() - t)
        t = time.perf_counter(); loop.step("decode", [1234], 128 + r, cache); times[k + " decode"] = times.get(k + " decode", []) + [time.perf_counter() - t]
for k, v in times.items():
    print(k, f"{statistics.median(v) * 1e3:.1f} ms")
