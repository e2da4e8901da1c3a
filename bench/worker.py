"""One measurement in its own process, so load time and peak memory belong to one runtime only.

    python -m bench.worker '{"kind": "artifact", "dir": ..., "file": ..., "threads": 2, "runs": 20, "warmup": 3}'

Prints one JSON line: load seconds, latencies, peak resident memory (ru_maxrss) and the resident memory
before the model was loaded (so the model's own footprint can be told apart from the interpreter's).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    # VmHWM belongs to this process image; ru_maxrss would carry over the parent's high-water mark across
    # fork+exec and report the parent's footprint instead of ours.
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(job: dict) -> dict:
    import torch

    from bench.stats import time_calls

    threads = int(job.get("threads") or 1)
    torch.set_num_threads(threads)
    runs, warmup = int(job.get("runs", 20)), int(job.get("warmup", 3))
    kind = job["kind"]
    if kind == "matmul":
        n = int(job.get("n", 4096))
        a, b = torch.randn(n, n), torch.randn(n, n)
        lat = time_calls(lambda: torch.mm(a, b), runs, warmup)
        return {"latencies_s": lat, "gflops": [2 * n**3 / t / 1e9 for t in lat], "n": n}

    from squeezetime.rewrite import InputSpec

    spec = InputSpec(**job["spec"])
    x = spec.example(seed=1)
    rss_before = _rss_mb()
    t0 = time.perf_counter()
    if kind == "eager":
        from export.pipeline import model_from_source
        from squeezetime.rewrite import export_ready

        model = model_from_source(job["source"], job["config"])
        if job.get("rewritten"):
            model = export_ready(model, spec)
            inp = x
        else:  # the official model takes the 5-D normalised clip
            inp = InputSpec(frames=spec.frames, size=spec.size, batch=spec.batch).example(seed=1)
        model.eval()

        def call():
            with torch.inference_mode():
                return model(inp)
        runtime = "PyTorch eager" + (" (rewritten)" if job.get("rewritten") else "")
    elif kind == "peer":  # a peer video model (bench/peers.py) in PyTorch eager
        from bench.peers import build_peer

        model = build_peer(job["peer"]).eval()

        def call():
            with torch.inference_mode():
                return model(x)
        runtime = "PyTorch eager"
    elif kind == "artifact":
        from export.backends import get_backend
        from export.quiet import quiet

        backend = get_backend(job["format"])
        path = os.path.join(job["dir"], job["file"])
        with quiet():
            if job.get("compute_units"):  # Core ML on macOS, one compute-unit setting per job
                from export.backends.coreml_backend import CoreMLRunner

                runner = CoreMLRunner(path, compute_units=job["compute_units"])
            else:
                runner = backend.load(path, threads=threads)
        arr = x.numpy() if job["format"] != "coreml" else x.float().numpy()

        def call():
            return runner(arr)
        runtime = backend.runtime + (f" {job['compute_units']}" if job.get("compute_units") else "")
    else:
        raise ValueError(f"unknown job kind {kind}")
    call()  # first call: some runtimes finish initialisation lazily; count it as load
    load_s = time.perf_counter() - t0
    with_quiet = job.get("quiet", True)
    if with_quiet and kind == "artifact":
        from export.quiet import quiet

        with quiet():
            lat = time_calls(call, runs, warmup)
    else:
        lat = time_calls(call, runs, warmup)
    return {"runtime": runtime, "load_s": load_s, "latencies_s": lat, "rss_before_mb": rss_before, "peak_rss_mb": _peak_mb()}


def main() -> int:
    job = json.loads(sys.argv[1])
    try:
        if job["kind"] == "decoder":  # torch-free for .onnx, as an app runs it
            from bench.decoder import measure_decoder

            result = measure_decoder(job)
        elif job["kind"] == "llama_cpp":  # the llama.cpp peer (bench.llama_cpp_peer), one (context, threads) row
            from bench.llama_cpp_peer import measure_job

            result = measure_job(job)
        else:
            result = measure(job)
        result["ok"] = True
    except Exception as exc:  # noqa: BLE001 - reported to the parent as data, one line
        result = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
    sys.stdout.write("\n@@RESULT@@" + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
