"""Host benchmark of exported decoders: prefill ms and decode tok/s, squeezed vs full attention, per runtime.

    squeeze bench DECODER_DIR [--contexts 2048,4096,8192] [--threads 2] [--runs 3]

For every context length, a real-prose context pack with a pass key in it is built once with the decoder's
own model (or taken from ``--context-pack``) and cached under the report directory. Every artifact in the
manifest (each format x attention mode) then answers the pass-key question over that pack in its own runtime,
in its own process (load time and peak RSS belong to it): the prefill of the question as the manifest says to
feed it (its own length where the prefill graph's token axis is dynamic -- .onnx, .pte for XNNPACK -- else padded to
``max_prompt``), the prefill of a prompt of exactly ``max_prompt`` tokens (prose + the question: the longest
question, what the llama.cpp peer also times), then ``decode_tokens`` greedy steps, each timed. Rows are interleaved (context -> format -> attention, repeated ``rounds`` times) so a
load drift on a shared machine hits squeezed and full alike; medians over all samples. Ratios compare the
squeezed and the full artifact of the same format at the same context and thread count, measured in the same
run. A profiling pass per squeezed artifact reports the share of decode time spent in the lookup, from the
runtime's own profiler (onnxruntime's profiler / ExecuTorch's ETDump). Each decode step is also set against its
memory floor (bench/memory_floor.py): the bytes the artifact's static shapes make a step read, at the read
bandwidth the native probe measures on this machine before and after the runs (the best of both, machine.peaks);
the ratio of full attention's bytes to the squeezed step's is the most the decode speed-up can reach here. The
max-prompt prefill is set against its arithmetic floor the same way (bench/arithmetic_floor.py: its multiply-adds at
the measured fp32 / int8 peaks), which bounds the prefill speed-up.
"""

from __future__ import annotations

import json
import os
import statistics
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from squeeze_mobile.atomic import atomic_path
from squeeze_mobile.errors import SqueezeError

from . import arithmetic_floor, memory_floor
from .host import machine_info, run_worker
from .report import _fmt, check_report_dir, one_line, write_reports

Progress = Callable[[str, str], None]
DEFAULT_CONTEXTS = (2048, 4096, 8192)
REPORT_FILES = ("report.json", "report.md", "report.png")
# the answer length the "answer ms/token" column prices: the exact opening steps, then selecting steps
ANSWER_TOKENS = 64
# ExecuTorch portable kernels that only the in-graph lookup uses (its centroid products and softmax run inside
# XNNPACK islands together with the attention and cannot be told apart in ETDump without an ETRecord)
# (embedding: the kept rows' gather since 2026-12-04, and the token lookup of an fp32 program, one small call a
# step; index_select: the kept rows' gather in earlier artifacts)
PTE_LOOKUP_KERNELS = ("topk", "gather", "scatter_add", "scatter", "cumsum", "minimum", "embedding", "index_select")
# onnxruntime nodes of the lookup: the exporter records the call site of every node; these come from
# ExportableDecoder._squeezed_rows (centroid scores, top-k, ranked fill, gather)
ONNX_LOOKUP_CALL = "_squeezed_rows("


def mode_label(d: Dict) -> str:
    """'squeezed', 'squeezed (split)', 'squeezed (question)', 'squeezed (tail 16)', 'squeezed (exact 32)' or 'full'
    for a decoder contract or a bench row."""
    return d["attention"] + (" (split)" if d.get("lookup_plan") == "split" else "") + \
        (" (question)" if d.get("decode_selection") == "question" else "") + \
        (f" (tail {d['prefill_tail']})" if d["attention"] == "squeezed" and d.get("prefill_tail") else "") + \
        (f" (exact {d['exact_tail']})" if d["attention"] == "squeezed" and d.get("exact_tail") else "") + \
        (f" (head {d['exact_head']})" if d["attention"] == "squeezed" and d.get("exact_head") else "")


def context_label(tokens: int) -> str:
    return f"{tokens / 1024:.1f}k".replace(".0k", "k")


def _pack_text(tokenizer, tokens: int, seed: int):
    """Real prose with a pass key at about half depth whose chat-framed context is ``tokens`` long (whole
    paragraphs overshoot; the tail is cut at a token boundary)."""
    from squeezed_attention.evaluate import make_case
    from squeezed_attention.pack import frame_context

    case, text = make_case(tokenizer, "passkey", 2 * tokens, 0.25, seed=seed, rotate=2)
    ids = tokenizer.encode(text)
    cut = len(ids) - (len(frame_context(tokenizer, text, "chat")) - tokens)
    while cut > 0:
        text = tokenizer.decode(ids[:cut])
        over = len(frame_context(tokenizer, text, "chat")) - tokens
        if over <= 0:
            break
        cut -= over
    return case, text


def bench_packs(manifest: Dict, contexts: Sequence[int], pack_dir: Path, say: Progress) -> List[Dict]:
    """One real-prose pack per context length (pass key at half depth), built with the decoder's own model and
    reused on the next run when the cached file still belongs to that model."""
    from squeezed_attention.pack_arrays import read_pack_arrays

    model_info = manifest["model"]
    max_context = min(a["decoder"]["shapes"]["max_context"] for a in manifest["artifacts"] if a.get("file"))
    wanted = sorted({min(int(c), max_context) for c in contexts})
    out, missing = [], []
    for n in wanted:
        path = pack_dir / f"prose_{n}.pack"
        meta = path.with_suffix(".json")
        if path.is_file() and meta.is_file():
            try:
                pack = read_pack_arrays(path)
                pack.check_model(model_info.get("weights_sha256"), model_info.get("tokenizer_sha256"))
                out.append({"path": str(path), "requested": n, **json.loads(meta.read_text(encoding="utf-8"))})
                continue
            except (SqueezeError, ValueError, OSError):
                pass  # stale or foreign: rebuilt below
        missing.append((n, path, meta))
    if missing:
        from squeezed_attention.model import LlamaForCausalLM
        from squeezed_attention.pack import BuildSettings, build_context_pack, save_context_pack
        from squeezed_attention.weights import load_checkpoint

        source = model_info.get("source")
        if not source or not Path(source).exists():
            raise SqueezeError(f"the decoder's model {source} is not on this machine to build benchmark packs; "
                               "pass packs built for it with --context-pack")
        say("packs", f"loading {Path(source).name} to build {len(missing)} context pack(s)")
        checkpoint = load_checkpoint(source)
        if checkpoint.weights_sha256 != model_info.get("weights_sha256"):
            raise SqueezeError(f"{source} is not the model these artifacts were exported from (weights differ); "
                               "pass packs built for the exported model with --context-pack")
        model = LlamaForCausalLM.from_checkpoint(checkpoint)
        pack_dir.mkdir(parents=True, exist_ok=True)
        for n, path, meta in missing:
            case, text = _pack_text(checkpoint.tokenizer, n, seed=n)
            say("packs", f"building a {context_label(n)}-token pack from real prose")
            pack = build_context_pack(model, checkpoint, text, BuildSettings())
            if path.is_file() and not path.is_symlink():
                # this cache's own file that did not read back above (truncated by a full disk, a killed copy, or
                # another model's): replaced, where save_context_pack refuses to overwrite a file that is no pack
                path.unlink()
            save_context_pack(pack, path)
            info = {"context_tokens": pack.num_tokens, "question": case.question, "answer": case.answer}
            with atomic_path(meta) as tmp:
                tmp.write_text(json.dumps(info) + "\n", encoding="utf-8")
            out.append({"path": str(path), "requested": n, **info})
    return sorted(out, key=lambda p: p["requested"])


def user_packs(paths: Sequence[str], question: str, manifest: Optional[Dict] = None,
               artifacts: Sequence[Dict] = ()) -> List[Dict]:
    """The user's packs as bench rows, each refused up front (nothing run) where it does not fit the export: built
    for another model or tokenizer (``manifest``), or not a pack one of ``artifacts`` takes."""
    from squeezed_attention.pack_arrays import check_pack_fits, read_pack_arrays

    out, seen = [], set()
    for p in paths:
        if Path(p).resolve() in seen:   # one pack named twice (or by two paths) is measured once, as --threads counts
            continue
        seen.add(Path(p).resolve())
        pack = read_pack_arrays(p)
        if manifest is not None:
            model = manifest.get("model") or {}
            pack.check_model(model.get("weights_sha256"), model.get("tokenizer_sha256"))
        for a in artifacts:
            try:
                check_pack_fits(pack, a["decoder"]["shapes"], a["decoder"]["attention"], a["decoder"].get("kv_budget"))
            except SqueezeError as exc:
                raise SqueezeError(f"{p} does not fit {a['file']}: {exc}; nothing was run") from None
        out.append({"path": str(Path(p).resolve()), "requested": pack.num_tokens, "context_tokens": pack.num_tokens,
                    "question": question, "answer": None})
    return sorted(out, key=lambda p: p["context_tokens"])


def _median(xs):
    return statistics.median(xs) if xs else None


DEFAULT_DECODE_TOKENS = 32


def run_decoder_benchmark(art_dir, contexts: Sequence[int] = DEFAULT_CONTEXTS, threads: Sequence[int] = (2,),
                          runs: int = 3, warmup: int = 1, rounds: int = 2, decode_tokens: Optional[int] = None,
                          packs: Optional[Sequence[str]] = None, question: Optional[str] = None,
                          profile: bool = True, formats: Optional[Sequence[str]] = None, out_dir=None,
                          progress: Optional[Progress] = None, llama_cpp: bool = False,
                          prefill_tails: Optional[Sequence[int]] = None,
                          exact_tails: Optional[Sequence[int]] = None,
                          exact_heads: Optional[Sequence[int]] = None) -> Dict:
    from squeezed_attention.decoder_session import (decoder_dir, exact_head_of, exact_tail_of, load_decoder_tokenizer,
                                                    read_decoder_manifest)

    say = progress or (lambda a, b: None)
    # a tail given twice is one row, measured once
    prefill_tails = list(dict.fromkeys(prefill_tails)) if prefill_tails else [None]
    exact_tails = list(dict.fromkeys(exact_tails)) if exact_tails else [None]
    exact_heads = list(dict.fromkeys(exact_heads)) if exact_heads else [None]
    if runs < 1 or warmup < 0 or rounds < 1 or (decode_tokens is not None and decode_tokens < 1):
        raise SqueezeError("--runs, --rounds and --decode-tokens must be >= 1 and --warmup >= 0")
    art_dir = decoder_dir(art_dir).resolve()   # the folder, or its manifest.json
    manifest = read_decoder_manifest(art_dir)
    load_decoder_tokenizer(art_dir, manifest)   # every worker encodes with it: missing or unreadable is one line here
    # absolute: the packs it builds there are read by worker processes that run from the repository root
    # checked, not created: a run refused or interrupted before its report (or its packs) leaves no empty folder
    out_dir = check_report_dir((Path(out_dir) if out_dir else art_dir / "bench").resolve(), REPORT_FILES, create=False)
    artifacts = [a for a in manifest["artifacts"] if a.get("file") and "decoder" in a]
    if formats:
        have = sorted({a["format"] for a in artifacts})
        artifacts = [a for a in artifacts if a["format"] in formats]
        if not artifacts:
            raise SqueezeError(f"{art_dir} holds no {', '.join(formats)} decoder artifact (it has: "
                               f"{', '.join(have) or 'none'}); pass --formats with one of those")
    from export.backends import get_backend

    not_timed = []  # e.g. Core ML off macOS: the MIL evaluator checks numerics; its speed says nothing of a device
    for a in list(artifacts):
        why = get_backend(a["format"]).cannot_time_here(a)
        if why:
            not_timed.append({"format": a["format"], "file": a["file"], "reason": why})
            artifacts.remove(a)
            say(a["format"], f"{a['file']}: {why}")
    if not artifacts:
        raise SqueezeError(f"{art_dir} holds no decoder artifact that can be timed here"
                           + (f" ({not_timed[0]['reason']})" if not_timed else "; export one with `squeeze export decoder`"))
    from export.pipeline import artifact_problem

    for a in artifacts:   # as `squeeze verify` checks them (present, the sha256 the manifest records) before any run
        problem = artifact_problem(a, art_dir)
        if problem:
            raise SqueezeError(f"{problem.split(';')[0]}; re-export the decoder or check the folder with `squeeze "
                               f"verify {art_dir}` (nothing was run)")
        if a["decoder"]["attention"] == "squeezed":   # the loop's own check of --exact-tail, before anything runs
            for e in exact_tails:
                exact_tail_of(a["decoder"], e)
            for h in exact_heads:
                exact_head_of(a["decoder"], h)
    if llama_cpp:   # asked for by name: its absence is an error before any work, not a progress line in a run that exits 0
        from .llama_cpp_peer import llama_cpp_missing

        missing = llama_cpp_missing()
        if missing:
            raise SqueezeError("--llama-cpp: " + missing.replace("llama.cpp peer skipped: ", "")
                               + " (or drop --llama-cpp; nothing was run)")
    rooms = [a["decoder"]["shapes"]["max_new"] for a in artifacts]
    if decode_tokens is None:   # 32, or what a small export's --max-new leaves
        decode_tokens = min([DEFAULT_DECODE_TOKENS] + rooms)
    elif decode_tokens > min(rooms):
        raise SqueezeError(f"--decode-tokens must be at most {min(rooms)} (the exported decoder's --max-new)")
    if packs:
        from squeezed_attention.evaluate import PASSKEY_QUESTION

        pack_rows = user_packs(packs, question or PASSKEY_QUESTION, manifest, artifacts)
    else:
        if any(c < 512 for c in contexts):
            raise SqueezeError("--contexts takes context lengths of at least 512 tokens, e.g. 2048,4096,8192")
        pack_rows = bench_packs(manifest, contexts, out_dir / "packs", say)
    rows: Dict[tuple, Dict] = {}
    from .peak_probe import Probes

    # the machine's read bandwidth (each decode step's memory floor), before and after the runs: the better is its
    probes = Probes(threads, say=say)
    probes.probe("before the runs", "read bandwidth and arithmetic peaks")

    def tails_of(art):  # (prefill tail, exact tail, exact head); None: the manifest's; full attention selects nothing
        if art["decoder"]["attention"] != "squeezed":
            return [(None, None, None)]
        return [(p, e, h) for p in prefill_tails for e in exact_tails for h in exact_heads]

    order = [(p, a, t, tail) for t in threads for p in pack_rows for a in sorted(artifacts, key=lambda a: (
        a["format"], a["decoder"]["attention"] != "squeezed")) for tail in tails_of(a)]
    for r in range(rounds):
        for pack, art, t, tail in order:
            key = (pack["path"], art["file"], t, tail)
            row = rows.setdefault(key, {
                "format": art["format"], "file": art["file"], "runtime": art.get("runtime"),
                "weights": art.get("weights", "fp32"),
                "attention": art["decoder"]["attention"], "kv_budget": art["decoder"].get("kv_budget"),
                "lookup_plan": art["decoder"].get("lookup_plan"),
                "decode_selection": art["decoder"].get("decode_selection"), "threads": t,
                "prefill_tail": art["decoder"].get("prefill_tail") if tail[0] is None else tail[0],
                "exact_tail": art["decoder"].get("exact_tail") if tail[1] is None else tail[1],
                "exact_head": art["decoder"].get("exact_head") if tail[2] is None else tail[2],
                "context_tokens": pack["context_tokens"], "pack": pack["path"],
                "max_prompt": art["decoder"]["shapes"]["max_prompt"], "bytes": art.get("bytes"),
                "prefill_s": [], "prompt_prefill_s": [], "decode_step_s": [], "opening_step_s": [], "load_s": [],
                "peak_rss_mb": [],
                "load_average": [], "status": "ok"})
            if row["status"] != "ok":
                continue
            say(art["format"], f"{mode_label(row)} at {context_label(pack['context_tokens'])} context, "
                f"{t} thread(s), round {r + 1}/{rounds}")
            res = run_worker({"kind": "decoder", "dir": str(art_dir), "file": art["file"], "pack": pack["path"],
                              "question": pack["question"], "threads": t, "runs": runs, "warmup": warmup,
                              "decode_tokens": decode_tokens, "prefill_tail": tail[0], "exact_tail": tail[1],
                              "exact_head": tail[2]})
            row["load_average"].append(round(os.getloadavg()[0], 2))  # the 1-minute load the run just lived through
            if not res.get("ok"):
                row.update({"status": "error", "detail": res.get("error")})
                say(art["format"], f"error: {res.get('error')}")
                continue
            row["prefill_s"] += res["prefill_s"]
            row["prompt_prefill_s"] += res["prompt_prefill_s"]
            row["question_tokens"], row["prompt_tokens"] = res["question_tokens"], res["prompt_tokens"]
            row["decode_step_s"] += res["decode_step_s"]
            row["opening_step_s"] += res.get("opening_step_s") or []
            row["exact_decode"] = res.get("exact_decode") or 0
            row["exact_below"] = res.get("exact_below") or 0.0
            row["rerun_steps"] = row.get("rerun_steps", 0) + (res.get("rerun_steps") or 0)
            row["load_s"].append(res["load_s"])
            row["peak_rss_mb"].append(res["peak_rss_mb"])
            row["answer_text"] = res["text"]
            row["answered"] = (pack["answer"] in res["text"]) if pack.get("answer") else None
    out_rows = []
    for row in rows.values():
        if row["status"] == "ok":
            prefill, step = _median(row["prefill_s"]), _median(row["decode_step_s"])
            opening = row.get("exact_decode") or 0
            exact = _median(row["opening_step_s"]) if row["opening_step_s"] else None
            # the selecting steps an unsure top token ran again exactly (contract exact_below), on this question
            rate = row.get("rerun_steps", 0) / len(row["decode_step_s"]) if row["decode_step_s"] else 0.0
            # an ANSWER_TOKENS-token answer: its first exact_decode steps at the exact step's cost, the rest selecting,
            # each plus an exact step at the rate they ran again here
            k = min(opening, ANSWER_TOKENS)
            answer = ((k * exact + (ANSWER_TOKENS - k) * (step + rate * exact)) / ANSWER_TOKENS) if exact is not None \
                else None if opening else step   # an opening the cache had no room to time: no answer price
            row["rerun_rate"] = rate if row["attention"] == "squeezed" else None
            row.update({"prefill_ms": prefill * 1e3, "prompt_prefill_ms": _median(row["prompt_prefill_s"]) * 1e3,
                        "decode_ms_per_token": step * 1e3,
                        "opening_ms_per_token": None if exact is None else exact * 1e3,
                        "answer_ms_per_token": None if answer is None else answer * 1e3,
                        "decode_tokens_per_s": 1.0 / step, "load_s": _median(row["load_s"]),
                        "peak_rss_mb": max(row["peak_rss_mb"]),
                        "samples": {"prefill": len(row["prefill_s"]), "decode_steps": len(row["decode_step_s"])}})
        out_rows.append(row)
    probes.probe("after the runs", "read bandwidth and arithmetic peaks")
    peaks = probes.peaks()
    contracts = {a["file"]: a["decoder"] for a in artifacts}
    for row in out_rows:
        if row["status"] == "ok":
            memory_floor.annotate(row, manifest["model"]["config"], contracts[row["file"]], peaks)
            # the prompt as this row ran it: its exact tail may be shorter than the artifact's (--exact-tail)
            arithmetic_floor.annotate(row, manifest["model"]["config"],
                                      {**contracts[row["file"]], "exact_tail": row.get("exact_tail"),
                                       "exact_head": row.get("exact_head")}, peaks)
    for row in out_rows:  # squeezed over full: same format, context and threads, same run
        full = next((r for r in out_rows if r["attention"] == "full" and r["format"] == row["format"]
                     and r["context_tokens"] == row["context_tokens"] and r["threads"] == row["threads"]
                     and r["status"] == "ok"), None)
        if row["attention"] == "squeezed" and row["status"] == "ok" and full:
            row["prefill_speedup_vs_full"] = full["prefill_ms"] / row["prefill_ms"]
            row["prompt_prefill_speedup_vs_full"] = full["prompt_prefill_ms"] / row["prompt_prefill_ms"]
            row["decode_speedup_vs_full"] = full["decode_ms_per_token"] / row["decode_ms_per_token"]
            if row["answer_ms_per_token"]:
                row["answer_speedup_vs_full"] = full["answer_ms_per_token"] / row["answer_ms_per_token"]
            # the most the decode step can gain on this machine: full attention's bytes per step over these
            row["decode_speedup_ceiling"] = full["decode_read_mb"] / row["decode_read_mb"]
            if row.get("prompt_floor_ms") and full.get("prompt_floor_ms") and \
                    row.get("prompt_tokens") == full.get("prompt_tokens"):
                # the most the max-prompt prefill can gain: full attention's arithmetic floor over this one's
                row["prompt_speedup_ceiling"] = full["prompt_floor_ms"] / row["prompt_floor_ms"]
    if llama_cpp:  # the peer (bench.llama_cpp_peer): same GGUF, same packs and question, after the artifacts
        from .llama_cpp_peer import peer_rows

        out_rows += peer_rows(pack_rows, threads=threads, decode_tokens=decode_tokens, rounds=rounds, warmup=warmup,
                              model=manifest["model"].get("source"), progress=say)
    lookup = []
    if profile:
        largest = pack_rows[-1]
        for art in artifacts:
            if art["decoder"]["attention"] != "squeezed":
                continue
            ops = (art.get("delegation") or {}).get("decode", {}).get("portable_ops") or []
            if art["decoder"].get("decode_selection") == "question" and not [
                    op for op in ops if op.startswith("aten_topk_")]:
                # nothing to profile: the decode graph runs no lookup
                timed = [r for r in out_rows if r.get("file") == art["file"] and r["status"] == "ok"
                         and r["context_tokens"] == largest["context_tokens"]]
                lookup.append({"format": art["format"], "file": art["file"], "context_tokens": largest["context_tokens"],
                               "threads": threads[-1], "status": "ok", "lookup_ms": 0.0,
                               "total_ms": timed[0]["decode_ms_per_token"] if timed else float("nan"), "share": 0.0,
                               "counted": "question-level selection: the decode graph has no lookup kernel (its "
                                          "delegation summary); the prefill selects once per question"})
                continue
            say(art["format"], f"profiling decode at {context_label(largest['context_tokens'])} context for the "
                "lookup's share")
            res = run_worker({"kind": "decoder", "profile": True, "dir": str(art_dir), "file": art["file"],
                              "pack": largest["path"], "question": largest["question"], "threads": threads[-1],
                              "runs": 1, "warmup": 0, "decode_tokens": min(decode_tokens, 8)})
            entry = {"format": art["format"], "file": art["file"], "context_tokens": largest["context_tokens"],
                     "threads": threads[-1]}
            entry.update(res.get("lookup") or {"status": "error", "detail": res.get("error")})
            lookup.append(entry)
    report = {
        "schema": "squeeze-mobile/bench-decoder/1",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "artifacts_dir": str(art_dir), "machine": {**machine_info(), "peaks": peaks},
        "model": manifest["model"]["name"], "precision": manifest.get("precision"),
        "settings": {"runs": runs, "warmup": warmup, "rounds": rounds, "decode_tokens": decode_tokens,
                     "threads": list(threads)},
        "packs": pack_rows, "rows": out_rows, "lookup_share": lookup, "not_timed": not_timed,
    }
    failed = [r for r in out_rows if r["status"] != "ok"]
    if out_rows and len(failed) == len(out_rows) and (out_dir / REPORT_FILES[0]).exists():
        raise SqueezeError(f"every benchmark row failed (first: {failed[0]['file']}: "
                           f"{one_line(failed[0].get('detail'))}); the previous report in {out_dir} was kept")
    report["files"] = write_reports(report, out_dir, decoder_markdown, decoder_figure)
    return report


def decoder_markdown(report: Dict) -> str:
    s = report["settings"]
    loads = [x for r in report["rows"] for x in r.get("load_average") or []]
    threads = s.get("threads") or [r.get("threads") or 1 for r in report["rows"]] or [1]
    busy = max(loads, default=0.0) > max(threads) + 0.75
    weights = sorted({r.get("weights") or "fp32" for r in report["rows"] if r.get("format") != "llama.cpp"}) or ["fp32"]
    lines = [f"# Decoder benchmark: {report['model']} ({' / '.join(weights)} weights, "
             f"{report.get('precision') or 'fp32'} activations)", "",
             f"{report['machine'].get('cpu', 'this machine')}; medians of {s['rounds']} interleaved rounds x "
             f"{s['runs']} runs (prefill) and x {s['decode_tokens']} steps (decode); each artifact in its own "
             "process. Question prefill: the pass-key question (its token count in brackets), run as the manifest "
             "says (padded to max_prompt where the prefill graph has static shapes); max-prompt prefill: a prompt of "
             "exactly max_prompt tokens (prose + the question), the longest the artifact takes. "
             "Speed-up: full-attention ms / squeezed ms, same format, context and threads, same run. Decode: the "
             "selecting steps; the answer's opening (its first exact_decode steps attend every context row, "
             f"manifest exact_decode) is timed on its own, and 'answer' is the mean cost per token of a {ANSWER_TOKENS}-"
             "token answer with that opening, each later step plus an exact step at the rate the steps ran again here "
             "(manifest exact_below: a selecting step whose top token is less likely runs again exactly; the rate in "
             "brackets depends on the text decoded)."
             + (f" 1-minute load average after each measurement: {min(loads):.2f}-{max(loads):.2f}" if loads else "")
             + (" (**the machine was busy: other processes shared the cores, absolute times and ratios are "
                "unreliable; re-run on an idle machine**)." if busy else "."), "",
             "| format | attention | context | threads | question prefill ms | max-prompt prefill ms | decode ms/token | "
             "decode tok/s | opening ms/token (steps) | answer ms/token | prefill speed-up (question / max-prompt) | "
             "decode speed-up | answer speed-up | peak RSS MB | load s | pass key |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(report["rows"], key=lambda r: (r["threads"], r["context_tokens"], r["format"], r["attention"])):
        if r["status"] != "ok":
            lines.append(f"| {r['format']} | {r['attention']} | {r['context_tokens']} | {r['threads']} | "
                         f"error: {one_line(r.get('detail'))[:120]} |||||||||||||")
            continue
        att = mode_label(r) + (f" (KV budget {r['kv_budget']:g})" if r["attention"] == "squeezed" else "")
        answered = {True: "yes", False: "no", None: "-"}[r.get("answered")]
        question = f" ({r['question_tokens']})" if r.get("question_tokens") else ""
        prompt = f" ({r['prompt_tokens']})" if r.get("prompt_tokens") else ""
        speedup = (f"{_fmt(r.get('prefill_speedup_vs_full'), '{:.2f}x')} / "
                   f"{_fmt(r.get('prompt_prefill_speedup_vs_full'), '{:.2f}x')}"
                   if r.get("prefill_speedup_vs_full") else "-")
        lines.append(f"| {r['format']} | {att} | {r['context_tokens']} | {r['threads']} | {r['prefill_ms']:.0f}{question} | "
                     f"{_fmt(r.get('prompt_prefill_ms'), '{:.0f}')}{prompt} | "
                     f"{r['decode_ms_per_token']:.1f} | {r['decode_tokens_per_s']:.1f} | "
                     + (f"{r['opening_ms_per_token']:.1f} ({r['exact_decode']}) | " if r.get("opening_ms_per_token")
                        is not None else "- | ")
                     + f"{_fmt(r.get('answer_ms_per_token'), '{:.1f}')}"
                     + (f" ({r['rerun_rate']:.0%} again)" if r.get("exact_below") else "") + f" | {speedup} | "
                     f"{_fmt(r.get('decode_speedup_vs_full'), '{:.2f}x')} | "
                     f"{_fmt(r.get('answer_speedup_vs_full'), '{:.2f}x')} | {r['peak_rss_mb']:.0f} | "
                     f"{r['load_s']:.1f} | {answered} |")
    if report["lookup_share"]:
        lines += ["", "## Share of decode time in the lookup (runtime profiler)", "",
                  "| format | context | lookup ms/token | decode ms/token (profiled) | share | what counts |",
                  "|---|---|---|---|---|---|"]
        for e in report["lookup_share"]:
            if e.get("status") == "error":
                lines.append(f"| {e['format']} | {e['context_tokens']} | error: {one_line(e.get('detail'))[:120]} |||")
                continue
            lines.append(f"| {e['format']}{' (split)' if 'graph_calls_per_step' in e else ''} | {e['context_tokens']} "
                         f"| {e['lookup_ms']:.2f} | {e['total_ms']:.1f} | {100 * e['share']:.1f}% | "
                         f"{one_line(e['counted'])} |")
        split = [e for e in report["lookup_share"] if "graph_calls_per_step" in e]
        if split:
            lines += ["", "Split plan, one decode step by wall clock:", "",
                      "| format | context | graph calls | in graphs ms | CPU lookup ms | loop glue ms | total ms |",
                      "|---|---|---|---|---|---|---|"]
            lines += [f"| {e['format']} | {e['context_tokens']} | {e['graph_calls_per_step']:.0f} | {e['graph_ms']:.1f} "
                      f"| {e['lookup_ms']:.1f} | {e['glue_ms']:.1f} | {e['total_ms']:.1f} |" for e in split]
    lines += memory_floor_markdown(report)
    lines += arithmetic_floor_markdown(report)
    for n in report.get("not_timed") or []:
        lines += ["", f"Not timed: {n['file']} ({n['format']}): {n['reason']}."]
    return "\n".join(lines) + "\n"


def memory_floor_markdown(report: Dict) -> List[str]:
    """The decode steps against their memory floor (bench/memory_floor.py)."""
    peaks = (report.get("machine") or {}).get("peaks") or {}
    rows = [r for r in report["rows"] if r["status"] == "ok" and r.get("decode_read_mb")]
    if not rows:
        return []
    lines = ["", "## Decode against the memory floor", ""]
    bw = peaks.get("read_bw") if peaks.get("status") == "ok" else None
    if not bw:
        return lines + [f"No floor: the read bandwidth was not measured ({one_line(peaks.get('note'))})."]
    rates = ", ".join(f"{g:.1f} GB/s on {t} thread(s) (runs: {', '.join(f'{x:.1f}' for x in bw['runs_gops'][t] if x)})"
                      for t, g in sorted(bw["gops"].items(), key=lambda kv: int(kv[0])))
    lines += [f"Read bandwidth measured by bench/native/peak_probe.c before and after the runs, the best of both: {rates}. "
              "A step's floor is the bytes it must read once "
              "(weights at the artifact's precision, the fixed-context keys and values it attends, the question's "
              "cache; bench/memory_floor.py) at that rate: no kernel can beat it. The ceiling is full attention's bytes "
              "per step over the squeezed step's: the most the decode speed-up can reach on this machine.", "",
              "| format | attention | weights | context | threads | MB read per step (weights + context + cache) | "
              "floor ms | measured ms | of bandwidth | speed-up ceiling | measured speed-up |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["threads"], r["context_tokens"], r["format"], r["attention"])):
        parts = r["decode_read_breakdown_mb"]
        lines.append(f"| {r['format']} | {r['attention']} | {r.get('weights') or 'fp32'} | {r['context_tokens']} | "
                     f"{r['threads']} | {r['decode_read_mb']:.0f} ({parts['weights']:.0f} + {parts['context']:.0f} + "
                     f"{parts['cache']:.0f}) | {_fmt(r.get('decode_floor_ms'), '{:.1f}')} | "
                     f"{r['decode_ms_per_token']:.1f} | {_fmt(r.get('decode_bandwidth_share'), '{:.0%}')} | "
                     f"{_fmt(r.get('decode_speedup_ceiling'), '{:.2f}x')} | "
                     f"{_fmt(r.get('decode_speedup_vs_full'), '{:.2f}x')} |")
    return lines


def arithmetic_floor_markdown(report: Dict) -> List[str]:
    """The max-prompt prefills against their arithmetic floor (bench/arithmetic_floor.py)."""
    from squeezed_attention.settings import exact_span

    peaks = (report.get("machine") or {}).get("peaks") or {}
    rows = [r for r in report["rows"] if r["status"] == "ok" and r.get("prompt_gmacs")]
    if not rows:
        return []
    lines = ["", "## Max-prompt prefill against the arithmetic floor", ""]
    if not any(r.get("prompt_floor_ms") for r in rows):
        return lines + [f"No floor: the arithmetic peaks were not measured ({one_line(peaks.get('note'))})."]
    lines += ["A prompt's floor is its multiply-adds at the artifact's static shapes (every token through every "
              "linear; each query head over every key and value row its parts hold, masked rows included; the exact "
              "tail's tokens over every context row; bench/arithmetic_floor.py) at the measured fp32 FMA peak (weights "
              "at int8/int4: the int8 dot-product peak). The ceiling is full attention's floor over the squeezed "
              "graph's: the most the max-prompt prefill speed-up can reach on this machine.", "",
              "| format | attention | weights | context | threads | tokens (exact head + tail) | GMAC (weights + attention) | "
              "floor ms | measured ms | of peak | speed-up ceiling | measured speed-up |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["threads"], r["context_tokens"], r["format"], r["attention"])):
        parts = r["prompt_gmacs_breakdown"]
        span = exact_span(r["prompt_tokens"], r.get("exact_head") or 0, r.get("exact_tail") or 0)
        tail = r["prompt_tokens"] - (span[1] - span[0]) if r["attention"] == "squeezed" else r["prompt_tokens"]
        lines.append(f"| {r['format']} | {r['attention']} | {r.get('weights') or 'fp32'} | {r['context_tokens']} | "
                     f"{r['threads']} | {r['prompt_tokens']} ({tail}) | {r['prompt_gmacs']:.1f} "
                     f"({parts['weights']:.1f} + {parts['attention']:.1f}) | {_fmt(r.get('prompt_floor_ms'), '{:.0f}')} | "
                     f"{_fmt(r.get('prompt_prefill_ms'), '{:.0f}')} | {_fmt(r.get('prompt_peak_share'), '{:.0%}')} | "
                     f"{_fmt(r.get('prompt_speedup_ceiling'), '{:.2f}x')} | "
                     f"{_fmt(r.get('prompt_prefill_speedup_vs_full'), '{:.2f}x')} |")
    return lines


def decoder_figure(report: Dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r["status"] == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for (fmt, att, t) in sorted({(r["format"], mode_label(r), r["threads"]) for r in rows}):
        sel = sorted((r for r in rows if (r["format"], mode_label(r), r["threads"]) == (fmt, att, t)),
                     key=lambda r: r["context_tokens"])
        xs = [r["context_tokens"] for r in sel]
        style = "--" if att == "full" else "-"
        label = f"{fmt} {att} ({t} thr)"
        axes[0].plot(xs, [r["prefill_ms"] for r in sel], style, marker="o", label=label)
        axes[1].plot(xs, [r["decode_tokens_per_s"] for r in sel], style, marker="o", label=label)
    axes[0].set(xlabel="context tokens", ylabel="prefill ms (lower is better)", title="prefill")
    axes[1].set(xlabel="context tokens", ylabel="decode tokens/s (higher is better)", title="decode")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------ worker side
def lookup_share(fmt: str, path: Path, events: List[Dict], steps: int) -> Dict:
    """The lookup's share of the profiled decode steps (see PTE_LOOKUP_KERNELS / ONNX_LOOKUP_CALL)."""
    total = sum(e["us"] for e in events if e["top_level"])
    if fmt == "onnx":
        import onnx

        from export.backends.onnx_branches import walk_nodes

        model = onnx.load(str(path))
        lookup_nodes = {n.name for n in walk_nodes(model.graph)
                        if any(p.key == "pkg.torch.onnx.stack_trace" and ONNX_LOOKUP_CALL in p.value
                               for p in n.metadata_props)}
        lookup = sum(e["us"] for e in events if e["node"] in lookup_nodes)
        counted = ("nodes exported from ExportableDecoder._squeezed_rows: centroid scores, softmax, top-k, "
                   "ranked fill, gather (nodes onnxruntime fused with others are not counted)")
    else:
        lookup = sum(e["us"] for e in events if not e.get("delegated") and not e["top_level"]
                     and e["op"] in PTE_LOOKUP_KERNELS)
        counted = (f"portable kernels {', '.join(PTE_LOOKUP_KERNELS)} (top-k, ranked fill, gather); the centroid "
                   "products and softmax run inside XNNPACK islands and are not separated")
    return {"status": "ok", "lookup_ms": lookup / 1e3 / steps, "total_ms": total / 1e3 / steps,
            "share": lookup / total if total else float("nan"), "counted": counted, "steps": steps}


def split_lookup_share(loop, ids, n_decode: int) -> Dict:
    """The split plan's decode step taken apart by wall clock: graph calls (the runtime), the CPU lookup
    (lookup_numpy.kept_rows), and the loop's own glue (cache writes, feeds)."""
    import time

    calls = {"n": 0, "s": 0.0}
    runner = loop.runner

    class Timed:
        def run(self, method, feed):
            t = time.perf_counter()
            try:
                return runner.run(method, feed)
            finally:
                calls["n"] += 1
                calls["s"] += time.perf_counter() - t

    loop.runner = Timed()
    try:
        cache = loop.new_cache()
        loop.lookup_seconds = 0.0
        t0 = time.perf_counter()
        for i in range(n_decode):
            loop.step("decode", [ids[-1]], len(ids) + i, cache)
        total = time.perf_counter() - t0
    finally:
        loop.runner = runner
    lookup = loop.lookup_seconds
    return {"status": "ok", "lookup_ms": lookup * 1e3 / n_decode, "total_ms": total * 1e3 / n_decode,
            "share": lookup / total if total else float("nan"), "steps": n_decode,
            "graph_calls_per_step": calls["n"] / n_decode, "graph_ms": calls["s"] * 1e3 / n_decode,
            "glue_ms": (total - lookup - calls["s"]) * 1e3 / n_decode,
            "counted": "split plan, wall clock: the CPU lookup (lookup_numpy.kept_rows, numpy) between the "
                       f"{calls['n'] // max(n_decode, 1)} graph calls of a step"}


def measure_decoder(job: Dict) -> Dict:
    """One artifact over one pack (bench.worker): prefill + greedy decode steps, or a profiled decode pass."""
    import time

    import numpy as np

    from bench.worker import _peak_mb, _rss_mb
    from export.backends import get_backend
    from export.quiet import quiet
    from squeezed_attention.decoder_session import (GenerationLoop, load_decoder_tokenizer, prompt_token_ids,
                                                    read_decoder_manifest)
    from squeezed_attention.pack_arrays import decoder_context_inputs, read_pack_arrays

    directory = Path(job["dir"])
    manifest = read_decoder_manifest(directory)
    art = next(a for a in manifest["artifacts"] if a.get("file") == job["file"])
    contract = art["decoder"]
    threads = int(job.get("threads") or 1)
    backend = get_backend(art["format"])
    with quiet():  # the runtime's Python module is imported before the clock starts: load time is the artifact's
        if art["format"] == "pte":
            import executorch.runtime  # noqa: F401
        elif art["format"] == "tflite":
            import ai_edge_litert.interpreter  # noqa: F401
        else:
            import onnxruntime  # noqa: F401
    rss_before = _rss_mb()
    t0 = time.perf_counter()
    with quiet():
        runner = backend.load_program(directory / art["file"], contract["methods"], threads,
                                      profile=bool(job.get("profile")))
    load_s = time.perf_counter() - t0
    pack = read_pack_arrays(job["pack"])
    context = decoder_context_inputs(pack, contract["shapes"], contract["attention"])
    loop = GenerationLoop(runner, contract, pack, context, prefill_tail=job.get("prefill_tail"),
                          exact_tail=job.get("exact_tail"), exact_head=job.get("exact_head"))
    tokenizer = load_decoder_tokenizer(directory, manifest)
    ids = prompt_token_ids(tokenizer, manifest["tokenizer"]["chat"], pack.settings.get("framing", "chat"), job["question"])
    n_decode = int(job["decode_tokens"])
    # the answer's opening (contract exact_decode): its exact steps are timed on their own (as many as the cache
    # holds besides the n_decode selecting steps that follow; profiled passes time the selecting steps only)
    loop.check_lengths(len(ids), n_decode + 1)
    room = contract["shapes"]["max_prompt"] + contract["shapes"]["max_new"] - len(ids) - n_decode - 1
    opening = min(loop.exact_decode, room) if loop.attention == "squeezed" and not job.get("profile") else 0
    if job.get("profile") and loop.split:
        return {"lookup": split_lookup_share(loop, ids, n_decode)}
    if job.get("profile"):
        cache = loop.new_cache()  # decode cost does not depend on the cache's contents, only on the shapes
        for i in range(n_decode):
            loop.step("decode", [ids[-1]], len(ids) + i, cache)
        return {"lookup": lookup_share(art["format"], directory / art["file"], runner.operator_profile(), n_decode)}
    # a prompt of exactly max_prompt tokens (prose + the question, as the llama.cpp peer times it): the longest
    # question the artifact takes; where its prefill graph has a dynamic token axis the question itself costs less
    from .llama_cpp_peer import padded_prompt_ids

    class _Ids:
        def encode(self, text):
            return tokenizer.encode(text, add_special_tokens=False).ids

    long_ids = padded_prompt_ids(_Ids(), ids, contract["shapes"]["max_prompt"])
    prefill, prompt_prefill, steps, opening_steps, tokens, reruns = [], [], [], [], [], 0
    for r in range(int(job["warmup"]) + int(job["runs"])):
        cache = loop.new_cache()
        t = time.perf_counter()
        loop.prompt(long_ids, cache)
        pp = time.perf_counter() - t
        cache = loop.new_cache()
        t = time.perf_counter()
        logits = loop.prompt(ids, cache)
        p = time.perf_counter() - t
        tokens, times, exact_times, again = [int(np.argmax(logits))], [], [], 0
        for i in range(opening + n_decode):
            t = time.perf_counter()
            logits = loop.step(loop.exact_method if i < opening else "decode", [tokens[-1]], len(ids) + i, cache)
            (exact_times if i < opening else times).append(time.perf_counter() - t)
            if i >= opening and loop.unsure(logits):   # contract exact_below: the step runs again exactly
                t = time.perf_counter()
                logits = loop.step(loop.exact_method, [tokens[-1]], len(ids) + i, cache)
                exact_times.append(time.perf_counter() - t)
                again += 1
            tokens.append(int(np.argmax(logits)))
        if r >= int(job["warmup"]):
            prefill.append(p)
            prompt_prefill.append(pp)
            steps += times
            opening_steps += exact_times
            reruns += again
    runner.close()
    return {"runtime": backend.runtime, "load_s": load_s, "prefill_s": prefill, "decode_step_s": steps,
            "opening_step_s": opening_steps, "exact_decode": loop.exact_decode if loop.attention == "squeezed" else 0,
            "exact_below": loop.exact_below, "rerun_steps": reruns,
            "prompt_prefill_s": prompt_prefill, "question_tokens": len(ids), "prompt_tokens": len(long_ids),
            "rss_before_mb": rss_before, "peak_rss_mb": _peak_mb(),
            "text": tokenizer.decode(tokens, skip_special_tokens=True)}
