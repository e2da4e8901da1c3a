"""Ad-hoc (RESULTS.md 3zb): summarise middle_probe.py outputs: answers of full attention's per variant, and the misses."""
import json, sys
rows = [json.loads(l) for f in sys.argv[1:] for l in open(f)]
names = [k for k in rows[0] if isinstance(rows[0][k], dict)]
full = [r for r in rows if r["full"]["ok"]]
print(len(rows), "cases; full answers", len(full))
for n in names:
    print(n, sum(r[n]["ok"] for r in full), "of full's;", "extra", sum(r[n]["ok"] for r in rows if not r["full"]["ok"]))
for r in full:
    bad = [n for n in names if not r[n]["ok"]]
    if bad: print(r["case"], r["prompt_tokens"], bad, [r[n]["text"][:60] for n in bad])
