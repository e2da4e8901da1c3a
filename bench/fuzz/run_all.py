"""Run every fuzzing harness in bench/fuzz/ for a bounded time and summarise (a benchmark-style script, not CI).

    python -m bench.fuzz.run_all --seconds 120 --out bench_out/fuzz

Each ``bench/fuzz/fuzz_*.py`` runs in its own process (``python -m bench.fuzz.fuzz_X --seconds N --out DIR``),
one after the other, and writes DIR/<target>.json; this script collects those into DIR/summary.json and
DIR/summary.md (target, executions, seconds, findings) and prints the table. Exit status 1 when a harness
found something or could not run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def harnesses() -> List[str]:
    return sorted(p.stem for p in HERE.glob("fuzz_*.py"))


def _report_of(out: Path, module: str, started: float) -> Dict:
    """The JSON the harness wrote: DIR/<suffix>.json by convention, else the newest report written since start."""
    guess = out / f"{module[len('fuzz_'):]}.json"
    candidates = [guess] if guess.is_file() and guess.stat().st_mtime >= started else []
    if not candidates:
        candidates = sorted((p for p in out.glob("*.json") if p.name != "summary.json" and p.stat().st_mtime >= started),
                            key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and {"target", "executions", "findings"} <= set(data):
            return data
    return {}


def run_one(module: str, seconds: float, out: Path) -> Dict:
    started = time.time()
    try:
        proc = subprocess.run([sys.executable, "-m", f"bench.fuzz.{module}", "--seconds", str(seconds), "--out", str(out)],
                              cwd=str(ROOT), capture_output=True, text=True, timeout=seconds + 900)
        rc, tail = proc.returncode, (proc.stderr or proc.stdout).strip().splitlines()[-1:]
    except subprocess.TimeoutExpired:
        rc, tail = None, [f"did not finish within {seconds + 900:.0f}s"]
    report = _report_of(out, module, started)
    row = {"module": module, "target": report.get("target", module), "executions": report.get("executions"),
           "seconds": report.get("seconds", round(time.time() - started, 1)),
           "findings": len(report.get("findings", [])) if report else None, "exit": rc,
           "details": report.get("findings", [])}
    if not report:
        row["error"] = " ".join((tail or ["no report written"])[0].split())[:300]
    return row


def markdown(rows: List[Dict], seconds: float) -> str:
    lines = [f"Fuzzing summary ({seconds:g} s per harness, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)", "",
             "| target | executions | seconds | findings | note |", "|---|---:|---:|---:|---|"]
    for r in rows:
        note = r.get("error") or "; ".join(f"{f.get('type')} at {f.get('where')} ({f.get('count')}x)"
                                           for f in r["details"][:3]) or "-"
        note = " ".join(str(note).split()).replace("|", "/")
        ex = "-" if r["executions"] is None else str(r["executions"])
        fi = "-" if r["findings"] is None else str(r["findings"])
        lines.append(f"| {r['target']} | {ex} | {r['seconds']} | {fi} | {note} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fuzz.run_all", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0, help="fuzzing time per harness (default 60)")
    p.add_argument("--out", default="bench_out/fuzz", help="report folder (default bench_out/fuzz)")
    p.add_argument("--only", default=None, help="comma-separated harness names, e.g. fuzz_checkpoint (default: all)")
    args = p.parse_args(argv)
    if args.seconds <= 0:
        p.error("--seconds must be > 0")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = harnesses()
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            p.error(f"unknown harness(es) {', '.join(unknown)}; have {', '.join(names)}")
        names = [n for n in names if n in wanted]
    rows = []
    for name in names:
        print(f"{name}: fuzzing for {args.seconds:g}s ...", file=sys.stderr, flush=True)
        rows.append(run_one(name, args.seconds, out))
    md = markdown(rows, args.seconds)
    (out / "summary.json").write_text(json.dumps({"seconds_per_harness": args.seconds, "rows": rows}, indent=2) + "\n")
    (out / "summary.md").write_text(md)
    print(md, end="")
    return 0 if all(r["findings"] == 0 and r["exit"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
