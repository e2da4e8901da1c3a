"""Command line for the peers table: ``python -m bench.run_peers [--out DIR] [--threads 2] [--runs 10]``.

A thin layer over :func:`bench.peers.run_peers_benchmark`; prints progress to stderr and the Markdown table
(also written to OUT/report.md beside report.json and report.png) to stdout.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import List, Optional

from squeeze_mobile.errors import SqueezeError


def _csv(text: Optional[str]) -> Optional[List[str]]:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def main(argv: Optional[List[str]] = None) -> int:
    from bench.peers import PEERS

    p = argparse.ArgumentParser(
        prog="python -m bench.run_peers",
        description="Benchmark SqueezeTime against its peers (paper Table 7, K400): export each model to every "
                    "format, check the artifact against PyTorch eager, time every runtime in its own process, and "
                    "write the paper-style table (report.md), report.json and report.png.")
    p.add_argument("--out", default="bench_out/peers", help="output folder (default: bench_out/peers)")
    p.add_argument("--threads", default="2", help="comma-separated thread counts, e.g. 1,2 (default: 2)")
    p.add_argument("--runs", type=int, default=10, help="timed runs per runtime (default: 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up runs (default: 2)")
    p.add_argument("--formats", default="onnx,tflite,pte", help="export formats (default: onnx,tflite,pte)")
    p.add_argument("--peers", default=None, help=f"comma-separated subset of: {', '.join(PEERS)} (default: all)")
    p.add_argument("--no-squeezetime", action="store_true", help="leave SqueezeTime out (no ratios then)")
    p.add_argument("--reuse", action="store_true",
                   help="keep artifacts and check results an earlier run left in OUT/artifacts (same model, format and "
                        "tool versions) instead of converting again, e.g. to re-time at other thread counts")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)

    from bench.host import parse_threads
    from bench.peers import run_peers_benchmark

    t0 = time.monotonic()

    def progress(name: str, msg: str) -> None:
        print(f"[{time.monotonic() - t0:6.0f}s] {name}: {msg}", file=sys.stderr, flush=True)

    try:
        report = run_peers_benchmark(args.out, formats=_csv(args.formats), threads=parse_threads(args.threads),
                                     runs=args.runs, warmup=args.warmup, include_squeezetime=not args.no_squeezetime,
                                     progress=progress, peers=_csv(args.peers), reuse=args.reuse)
    except SqueezeError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
