"""The prompt call's MatMul / Concat nodes by input shape (onnxruntime profiler) for each .onnx in an artifact
directory: which products a 128-token exact prompt spends its time in. Usage: prefill_matmuls.py DIR PACK"""
import collections, json, re, sys
from pathlib import Path
from export.backends import get_backend
from squeezed_attention.decoder_session import GenerationLoop
from squeezed_attention.pack_arrays import decoder_context_inputs, read_pack_arrays
art_dir = Path(sys.argv[1]); pack = read_pack_arrays(sys.argv[2])
manifest = json.loads((art_dir / "manifest.json").read_text())
ids = list(range(1000, 1128))
for art in manifest["artifacts"]:
    c = art["decoder"]
    runner = get_backend(art["format"]).load_program(art_dir / art["file"], c["methods"], 2, profile=True)
    loop = GenerationLoop(runner, c, pack, decoder_context_inputs(pack, c["shapes"], c["attention"]), exact_decode=0, exact_below=0)
    loop.prompt(ids, loop.new_cache())
    path = runner.session.end_profiling(); runner._profile_dir = None
    ev = json.loads(Path(path).read_text())
    agg = collections.Counter()
    for e in ev:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            a = e.get("args", {})
            if a.get("op_name") in ("MatMul", "FusedMatMul", "Concat"):
                shp = tuple(tuple(d for x in i.values() for d in x) for i in a.get("input_type_shape", []))
                agg[(a["op_name"], shp[:3] if a["op_name"] != "Concat" else len(shp), str(a.get("output_type_shape"))[:60])] += e["dur"] / 1e3
    print(art["file"])
    for k, v in agg.most_common(12):
        print(f"  {v:8.1f} ms {k}")
