"""Benchmark reports: report.json, a Markdown table (report.md) and a PNG chart (report.png)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

from squeeze_mobile.atomic import atomic_path, check_creatable_dir, check_destination, ensure_writable_dir
from squeeze_mobile.errors import SqueezeError
from squeeze_mobile.metrics import json_text

REPORT_FILES = ("report.json", "report.md", "report.png")


def check_report_dir(out_dir, names=REPORT_FILES, create: bool = True) -> Path:
    """Refuse, before a benchmark runs, a report location that cannot take the report files.

    ``create=False``: check only, create nothing (the folder is made when the reports are written), so a benchmark
    that fails or is interrupted first leaves no empty report folder behind."""
    out_dir = Path(out_dir)
    if not create:
        check_creatable_dir(out_dir)
        for name in names:
            dest = out_dir / name
            if dest.is_dir() and not dest.is_symlink():
                raise SqueezeError(f"{dest} is a directory; give the path of a file to write (nothing was changed)")
        return out_dir
    ensure_writable_dir(out_dir)
    for name in names:
        check_destination(out_dir / name, "file")
    return out_dir


def one_line(text) -> str:
    """A table cell: one line, no Markdown column separators."""
    return " ".join(str(text).split()).replace("|", "/")


def _fmt(v, spec="{:.1f}", dash="-"):
    return dash if v is None else spec.format(v)


def _rates(gops: Dict[str, float]) -> str:
    return ", ".join(f"{t} thread{'s' if t != '1' else ''} {v:.0f}" for t, v in gops.items())


def peaks_lines(peaks: Dict) -> List[str]:
    """The machine section: what the native probe measured (or why it did not)."""
    if not peaks or peaks.get("status") != "ok":
        note = (peaks or {}).get("note", "not measured")
        return [f"Machine peaks: not measured ({one_line(note)}); the % of peak column stays empty."]
    build = f"{peaks['compiler']} {' '.join(peaks['flags'])}"
    lines = [f"Machine peaks measured in this run by the native probe ({build}; best of the probes before and after "
             "the runtimes), GOP/s:"]
    for kind, label in (("fp32", "fp32 FMA peak"), ("int8", "int8 dot-product peak")):
        if peaks.get(kind):
            lines.append(f"- {label} ({peaks[kind]['isa']}, {peaks[kind]['chains']} independent chains): "
                         f"{_rates(peaks[kind]['gops'])}")
    if peaks.get("int8_amx"):
        lines.append(f"- int8 AMX tiles ({peaks['int8_amx']['isa']}; recorded, not the reference: a runtime that uses "
                     f"AMX can pass 100% of the int8 dot-product peak): {_rates(peaks['int8_amx']['gops'])}")
    elif peaks.get("int8_amx_note"):
        lines.append(f"- int8 AMX tiles: not measured ({one_line(peaks['int8_amx_note'])})")
    if peaks.get("read_bw"):
        lines.append(f"- memory read bandwidth ({peaks['read_bw']['isa']}, a buffer per thread far larger than the "
                     f"last-level cache), GB/s: {_rates(peaks['read_bw']['gops'])}")
    return lines


def int8_lines(report: Dict) -> List[str]:
    pairs = report.get("int8_vs_fp32") or []
    if not pairs:
        return []
    lines = ["", "int8 vs fp32, same runtime, same run (ratio of p50 latencies; below 1: int8 is faster):", "",
             "| runtime | threads | fp32 p50 ms | int8 p50 ms | int8/fp32 | int8 speed-up |",
             "|---|---:|---:|---:|---:|---:|"]
    for p in pairs:
        lines.append(f"| {p['runtime']} | {p['threads']} | {p['fp32_p50_ms']:.1f} | {p['int8_p50_ms']:.1f} | "
                     f"{p['int8_fp32_latency_ratio']:.2f} | {p['int8_speedup']:.2f}x |")
    return lines


HOST_COLUMNS = ("runtime", "precision", "file", "threads", "load s", "p50 ms", "p90 ms", "p99 ms", "min ms", "clips/s",
                "peak RSS MB", "size MB", "GOP/s", "% of peak", "vs eager", "int8/fp32")


def markdown(report: Dict) -> str:
    model = report["model"]
    where = report["machine"].get("cpu") or report["machine"].get("device") or "this machine"
    lines = [f"# squeeze bench: {model['config']} {model['input']['format']} {model['input']['shape']} on {where}", ""]
    if "gflop_per_clip" in model:  # the host report
        lines += [f"Model: {model['gflop_per_clip']:.2f} GFLOP per clip. GOP/s: the model's operations (2 x MACs) per "
                  "second at p50, in any arithmetic; % of peak: against the fp32 FMA peak for fp32/fp16 rows and the "
                  f"int8 dot-product peak for int8 rows, at the row's thread count. {report['runs']} timed runs after "
                  f"{report['warmup']} warm-up runs; each runtime in its own process.", ""]
        lines += peaks_lines(report["machine"].get("peaks")) + [""]
    else:
        lines += [f"{report['runs']} timed runs after {report['warmup']} warm-up runs. "
                  "executor_runner reports only an average, shown as p50 (marked *).", ""]
    lines += ["| " + " | ".join(HOST_COLUMNS) + " |", "|---|---|---|" + "---:|" * (len(HOST_COLUMNS) - 3)]
    for r in report["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['name']} | {r.get('precision') or '-'} | {r.get('file') or '-'} | {r['threads']} | "
                         f"{one_line(r['status'])}: {one_line(r.get('detail', ''))} |" + "|" * (len(HOST_COLUMNS) - 5))
            continue
        star = "*" if r.get("p50_is_average") else ""
        lines.append(
            f"| {r['runtime']} | {r.get('precision') or '-'} | {r.get('file') or '-'} | {r['threads']} | "
            f"{_fmt(r.get('load_s'), '{:.2f}')} | "
            f"{r['p50_ms']:.1f}{star} | {_fmt(r.get('p90_ms'))} | {_fmt(r.get('p99_ms'))} | {_fmt(r.get('min_ms'))} | "
            f"{r['clips_per_s']:.1f} | {_fmt(r.get('peak_rss_mb'), '{:.0f}')} | "
            f"{_fmt(r['bytes'] / 1e6 if r.get('bytes') else None)} | {_fmt(r.get('achieved_gflops'), '{:.0f}')} | "
            f"{_fmt(r.get('pct_of_peak'), '{:.0f}%')} | {_fmt(r.get('speedup_vs_eager'), '{:.2f}x')} | "
            f"{_fmt(r.get('int8_fp32_latency_ratio'), '{:.2f}')} |")
    lines += int8_lines(report)
    return "\n".join(lines) + "\n"


def figure(report: Dict):
    """The latency chart of report.png (a matplotlib Figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in report["rows"] if r["status"] == "ok"]
    threads = sorted({r["threads"] for r in ok})

    def label(r):  # fp32 and int8 of one runtime are separate bars
        precision = r.get("precision") or "fp32"
        return r["runtime"] if precision == "fp32" else f"{r['runtime']} {precision}"

    names: List[str] = list(dict.fromkeys(label(r) for r in ok))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(names)), 4))
    width = 0.8 / max(1, len(threads))
    peaks = (report.get("machine") or {}).get("peaks") or {}
    bounds = []
    for i, t in enumerate(threads):
        vals = [next((r["p50_ms"] for r in ok if label(r) == n and r["threads"] == t), 0) for n in names]
        bars = ax.bar([j + i * width for j in range(len(names))], vals, width, label=f"{t} thread(s)")
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
        color = bars.patches[0].get_facecolor()
        for kind, style in (("fp32", "--"), ("int8", ":")):
            if kind == "int8" and not any(r.get("precision") == "int8" for r in ok):
                continue
            peak = ((peaks.get(kind) or {}).get("gops") or {}).get(str(t))
            if peak and "gflop_per_clip" in report.get("model", {}):
                per_call = report["model"].get("gflop_per_call", report["model"]["gflop_per_clip"])   # latency is per call
                ax.axhline(per_call / peak * 1e3, linestyle=style, linewidth=0.8, color=color)
                bounds.append(kind)
    ax.set_xticks([j + width * (len(threads) - 1) / 2 for j in range(len(names))])
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    batch = int(((report.get("model") or {}).get("input") or {}).get("batch") or 1)
    ax.set_ylabel("p50 latency per call (ms)" + (f", {batch} clips per call" if batch > 1 else ""))
    # two short lines: one long line is cut off at the figure's edge when there are few runtimes
    subtitle = {("fp32",): "(dashed: compute bound at the fp32 FMA peak)",
                ("fp32", "int8"): "(compute bound: dashed at the fp32 FMA peak, dotted at the int8 peak)"}
    key = tuple(k for k in ("fp32", "int8") if k in bounds)
    ax.set_title("SqueezeTime p50 latency by runtime" + (f"\n{subtitle[key]}" if key in subtitle else ""), fontsize=9)
    if ax.get_legend_handles_labels()[0]:  # every row failed: nothing to label
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
        tmp.write_text(json_text({**report, "files": files}), encoding="utf-8")
    return files
