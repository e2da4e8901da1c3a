"""Ad-hoc (RESULTS.md 3zb): compare two suite results on their common cases: recall medians and answers."""
import json, sys, statistics as st
def load(d):
    r = json.load(open(d + "/suite.json")) if __import__('os').path.exists(d + "/suite.json") else json.load(open(d + "/suite.partial.json"))
    return r
a, b = load(sys.argv[1]), load(sys.argv[2])
ids = sorted(set(x["case_id"] for x in a["recall"]) & set(x["case_id"] for x in b["recall"]))
print(len(ids), "common cases")
for cfg in ("top-k@0.225", "top-k@0.125"):
    for key in ("context", "clustered", "ceiling"):
        va = [v for r in a["recall"] if r["config"] == cfg and r["case_id"] in ids for row in r[key] for v in row]
        vb = [v for r in b["recall"] if r["config"] == cfg and r["case_id"] in ids for row in r[key] for v in row]
        print(cfg, key, f"{st.median(va):.3f} {st.median(vb):.3f}")
    for d in (a, b):
        full = {r["case_id"] for r in d["cases"] if r["config"] == "full" and r["correct"]}
        ok = {r["case_id"] for r in d["cases"] if r["config"] == cfg and r["correct"]}
        print(cfg, "answers", len(ok & full & set(ids)), "of", len(full & set(ids)), "extra", len((ok - full) & set(ids)))
