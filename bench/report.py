"""Benchmark reports: report.json, a Markdown table (report.md) and a PNG chart (report.png)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

from squeeze_mobile.atomic import atomic_path, check_destination, ensure_writable_dir

REPORT_FILES = ("report.json", "report.md", "report.png")


def check_report_dir(out_dir, names=REPORT_FILES) -> Path:
    """Refuse, before a benchmark runs, a report location that cannot take the report files."""
    out_dir = Path(out_dir)
    ensure_writable_dir(out_dir)
    for name in names:
        check_destination(out_dir / name, "file")
    return out_dir


def one_line(text) -> str:
    """A table cell: one line, no Markdown column separators."""
    return " ".join(str(text).split()).replace("|", "/")


def _fmt(v, spec="{:.1f}", dash="-"):
    return dash if v is None else spec.format(v)


def markdown(report: Dict) -> str:
    model = report["model"]
    where = report["machine"].get("cpu") or report["machine"].get("device") or "this machine"
    lines = [f"# squeeze bench: {model['config']} {model['input']['format']} {model['input']['shape']} on {where}", ""]
    if "matmul_gflops" in report:
        mm = ", ".join(f"{t} thread(s): {v:.0f} GFLOP/s" for t, v in report["matmul_gflops"].items())
        lines += [f"Model: {model['gflop_per_clip']:.2f} GFLOP per clip. fp32 matmul rate measured in this run: {mm}. "
                  f"{report['runs']} timed runs after {report['warmup']} warm-up runs; each runtime in its own process.", ""]
    else:
        lines += [f"{report['runs']} timed runs after {report['warmup']} warm-up runs. "
                  "executor_runner reports only an average, shown as p50 (marked *).", ""]
    lines += ["| runtime | file | threads | load s | p50 ms | p90 ms | p99 ms | min ms | clips/s | peak RSS MB | size MB | GFLOP/s | % matmul | vs eager |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['name']} | {r.get('file') or '-'} | {r['threads']} | "
                         f"{one_line(r['status'])}: {one_line(r.get('detail', ''))} |||||||||||")
            continue
        star = "*" if r.get("p50_is_average") else ""
        lines.append(
            f"| {r['runtime']} | {r.get('file') or '-'} | {r['threads']} | {_fmt(r.get('load_s'), '{:.2f}')} | "
            f"{r['p50_ms']:.1f}{star} | {_fmt(r.get('p90_ms'))} | {_fmt(r.get('p99_ms'))} | {_fmt(r.get('min_ms'))} | "
            f"{r['clips_per_s']:.1f} | {_fmt(r.get('peak_rss_mb'), '{:.0f}')} | "
            f"{_fmt(r['bytes'] / 1e6 if r.get('bytes') else None)} | {_fmt(r.get('achieved_gflops'), '{:.0f}')} | "
            f"{_fmt(r.get('pct_of_matmul'), '{:.0f}%')} | {_fmt(r.get('speedup_vs_eager'), '{:.2f}x')} |")
    return "\n".join(lines) + "\n"


def figure(report: Dict):
    """The latency chart of report.png (a matplotlib Figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in report["rows"] if r["status"] == "ok"]
    threads = sorted({r["threads"] for r in ok})
    names: List[str] = list(dict.fromkeys(r["runtime"] for r in ok))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(names)), 4))
    width = 0.8 / max(1, len(threads))
    for i, t in enumerate(threads):
        vals = [next((r["p50_ms"] for r in ok if r["runtime"] == n and r["threads"] == t), 0) for n in names]
        bars = ax.bar([j + i * width for j in range(len(names))], vals, width, label=f"{t} thread(s)")
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
        if "matmul_gflops" in report:
            bound = report["model"]["gflop_per_clip"] / report["matmul_gflops"][str(t)] * 1e3
            ax.axhline(bound, linestyle="--", linewidth=0.8, color=bars.patches[0].get_facecolor())
    ax.set_xticks([j + width * (len(threads) - 1) / 2 for j in range(len(names))])
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("p50 latency per clip (ms)")
    # two short lines: one long line is cut off at the figure's edge when there are few runtimes
    ax.set_title("SqueezeTime p50 latency by runtime\n(dashed: compute bound at the measured matmul rate)", fontsize=9)
    ax.legend(fontsize=8)
    ax.margins(y=0.12)  # room for the bar labels under the frame
    fig.tight_layout()
    return fig


def write_reports(report: Dict, out_dir: Path, to_markdown=None, to_figure=None) -> Dict[str, str]:
    """report.md / report.png / report.json, each written atomically (``to_markdown`` / ``to_figure``: another
    report kind's renderers; default: the SqueezeTime host report's)."""
    import matplotlib.pyplot as plt

    out_dir = check_report_dir(out_dir)
    files = {"json": str(out_dir / "report.json"), "markdown": str(out_dir / "report.md"), "png": str(out_dir / "report.png")}
    with atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text((to_markdown or markdown)(report), encoding="utf-8")
    with atomic_path(out_dir / "report.png") as tmp:
        fig = (to_figure or figure)(report)
        fig.savefig(tmp, dpi=120, format="png")
        plt.close(fig)
    with atomic_path(out_dir / "report.json") as tmp:
        tmp.write_text(json.dumps({**report, "files": files}, indent=2) + "\n", encoding="utf-8")
    return files
