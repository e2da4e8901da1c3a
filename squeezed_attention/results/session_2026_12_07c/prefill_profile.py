"""Operator profile of one 128-token prompt call in an exported .onnx decoder pair (squeezed exact method vs full
attention's prefill): where the exact prompt's extra time goes. Usage: prefill_profile.py ART_DIR PACK [threads]"""
import collections
import json
import sys
from pathlib import Path

from export.backends import get_backend
from squeezed_attention.decoder_session import GenerationLoop
from squeezed_attention.pack_arrays import decoder_context_inputs, read_pack_arrays

art_dir, pack_path = Path(sys.argv[1]), sys.argv[2]
threads = int(sys.argv[3]) if len(sys.argv) > 3 else 2
manifest = json.loads((art_dir / "manifest.json").read_text())
pack = read_pack_arrays(pack_path)
ids = list(range(1000, 1128))
for art in manifest["artifacts"]:
    c = art["decoder"]
    runner = get_backend(art["format"]).load_program(art_dir / art["file"], c["methods"], threads, profile=True)
    loop = GenerationLoop(runner, c, pack, decoder_context_inputs(pack, c["shapes"], c["attention"]),
                          exact_decode=0, exact_below=0)
    for _ in range(2):
        loop.prompt(ids, loop.new_cache())
    events = runner.operator_profile()
    by_op = collections.Counter()
    for e in events:
        if e["top_level"]:
            by_op[e["op"]] += e["us"] / 2e3
    total = sum(by_op.values())
    print(f"{art['file']}: {total:.0f} ms per prompt (sum of nodes)")
    for op, ms in by_op.most_common(12):
        print(f"  {op:24s} {ms:8.1f} ms {ms / total:6.1%}")
