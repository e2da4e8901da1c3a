"""`squeeze bench`: host latency of every artifact in an export directory; Android (adb) and GPU modes."""

from __future__ import annotations

import sys
from pathlib import Path

from squeeze_mobile import cli_types
from squeeze_mobile.errors import SqueezeError


TOKEN_COUNTS = cli_types.comma_list(cli_types.nonnegative_int, "token count", repeats="once")  # as --threads 1,1


def add_subcommands(sub) -> None:
    from export.backends import format_list_text

    p = sub.add_parser(
        "bench",
        help="latency/throughput of exported artifacts on this machine, an Android phone (adb) or a CUDA GPU",
        description="Host mode (default): every artifact in DIR/manifest.json runs in its own runtime (onnxruntime, "
        "LiteRT/XNNPACK, ExecuTorch/XNNPACK) plus PyTorch eager as the reference, each in its own process, at each "
        "thread count; every precision in the manifest (fp32, fp16, int8) in the same run, a format's precisions "
        "back to back. Reports load time, p50/p90/p99/min latency, clips/s, peak RSS, size, achieved GOP/s and its "
        "share of this machine's peak for the artifact's precision (fp32 FMA peak for fp32/fp16, int8 dot-product "
        "peak for int8; a small native probe, compiled on first use with the system C compiler, measures both in "
        "the same run), and the int8/fp32 latency ratio per runtime. Every artifact is first checked against its "
        "manifest record as `squeeze verify` does (present, same sha256); one that is not fails its rows without being "
        "run (in a decoder directory it stops the bench before any run). Writes report.json, report.md and report.png (default DIR/bench/, created only when they are written).",
    )
    p.add_argument("dir", nargs="?", type=cli_types.path,
                   help="export directory (with manifest.json); not used with --gpu or --peers")
    p.add_argument("--threads", default=None, type=cli_types.comma_list(cli_types.threads, "thread count", repeats="once"),
                   help="comma-separated CPU thread counts, each >= 1 (default 1,2; 2 for a decoder directory)")
    p.add_argument("--runs", type=cli_types.positive_int, default=None,
                   help="timed runs per measurement, >= 1 (default 20; 3 prefills per round for a decoder directory)")
    p.add_argument("--warmup", type=cli_types.nonnegative_int, default=None,
                   help="untimed warm-up runs, >= 0 (default 3; 1 per worker for a decoder directory)")
    p.add_argument("--out", type=cli_types.path, help="report directory (default DIR/bench; bench_out/gpu with --gpu, bench_out/peers with --peers)")
    p.add_argument("--no-eager", dest="eager", action="store_false",
                   help="skip the PyTorch eager reference (default: include it)")
    p.add_argument("--formats", default=None, metavar="F,F", type=cli_types.checked(format_list_text, "list"),
                   help="benchmark only these formats' artifacts, e.g. onnx or onnx,pte (onnx, tflite, pte, coreml); "
                   "the PyTorch eager reference rows stay unless --no-eager (default: every artifact in DIR)")
    p.add_argument("--checkpoint", default=None, type=cli_types.path,
                   help="the checkpoint a SqueezeTime export came from, when it is no longer at the path the manifest "
                   "records (the PyTorch eager rows rebuild the model from it); its sha256 must match the manifest's "
                   "(default: the recorded path)")
    d = p.add_argument_group("decoder directories (squeeze export decoder): prefill ms and decode tok/s, squeezed vs "
                             "full attention, per runtime, over real-prose packs built with the decoder's model; each "
                             "decode step against its memory floor (the bytes it reads at this machine's measured read "
                             "bandwidth)")
    d.add_argument("--contexts", type=cli_types.comma_list(cli_types.int_range(512, 1 << 20), "context length",
                                                                 repeats="once"),
                   default=(2048, 4096, 8192), metavar="N,N",
                   help="context lengths in tokens, comma-separated, each >= 512 and capped at the artifact's "
                   "--max-context (default 2048,4096,8192)")
    d.add_argument("--context-pack", action="append", default=None, metavar="PACK",
                   help="benchmark over this context pack instead of building packs (repeatable; default: build)")
    d.add_argument("--decode-tokens", type=cli_types.positive_int, default=None,
                   help="greedy decode steps timed per run, >= 1 (default 32, or the export's --max-new when smaller)")
    d.add_argument("--rounds", type=cli_types.positive_int, default=2,
                   help="interleaved rounds over every (context, format, attention), >= 1 (default 2)")
    d.add_argument("--llama-cpp", action="store_true",
                   help="also time the llama.cpp peer (same GGUF, the context's state saved and restored, same packs "
                   "and question; needs pip install -r requirements-llamacpp.txt) (default: off)")
    d.add_argument("--prefill-tail", type=TOKEN_COUNTS, default=None, metavar="N[,N]",
                   help="squeezed artifacts: the question's last N tokens select their keys one at a time (decode "
                   "steps; squeeze generate --prefill-tail); several values give one row each, in the same "
                   "interleaved run (default: the manifest's prefill_tail)")
    d.add_argument("--exact-tail", type=TOKEN_COUNTS, default=None, metavar="N[,N]",
                   help="squeezed artifacts: the question's last N tokens attend every fixed-context key (the "
                   "artifact's prefill_exact; squeeze generate --exact-tail), at most the width it was exported with; "
                   "several values give one row each, in the same interleaved run, with every --prefill-tail "
                   "(default: the manifest's exact_tail)")
    d.add_argument("--exact-head", type=TOKEN_COUNTS, default=None, metavar="N[,N]",
                   help="squeezed artifacts: the question's first N tokens attend every fixed-context key too (squeeze "
                   "generate --exact-head); several values give one row each, in the same interleaved run, with every "
                   "--exact-tail (default: the manifest's exact_head)")
    d.add_argument("--no-profile", dest="profile", action="store_false",
                   help="skip the profiled pass that measures the lookup's share of decode time (default: run it)")
    p.add_argument("--adb", nargs="?", const="", default=None, metavar="SERIAL",
                   help="benchmark on an Android phone over adb, optionally the device serial (default: this machine)")
    phone = [p.add_argument("--tflite-benchmark", help="path to LiteRT's benchmark_model binary for the phone "
                            "(android_arm64) (default: none; needed for .tflite artifacts with --adb)")]
    phone.append(p.add_argument("--pte-runner", help="path to ExecuTorch's executor_runner binary for the phone, built "
                                "with XNNPACK (default: none; needed for .pte artifacts with --adb)"))
    phone.append(p.add_argument("--cpu-mask", default=None,
                                help="taskset mask for big-core pinning on the phone, e.g. f0 (default: no pinning)"))
    p.add_argument("--gpu", action="store_true",
                   help="clips/s of SqueezeTime and peers on a CUDA GPU (default: off; needs CUDA)")
    p.add_argument("--peers", action="store_true",
                   help="SqueezeTime vs X3D-XS, R(2+1)D-18, TSM-R18 (and more) exported through the same pipeline "
                   "and run in the same runtimes: the paper-style table (default: off; out: bench_out/peers)")
    p.set_defaults(func=cmd_bench, decoder_options=list(d._group_actions), phone_options=phone)


def _console(stderr=True):
    from export.cli_export import _console as console

    return console(stderr)


def cmd_bench(args) -> int:
    from export.cli_export import _progress

    from .host import parse_threads

    from .report import check_report_dir

    console = _console()
    from squeezed_attention.decoder_export import is_decoder_manifest

    decoder = bool(args.dir) and not (args.gpu or args.peers) and is_decoder_manifest(args.dir)
    formats = _parse_formats(args.formats)
    threads = parse_threads(args.threads or ("2" if decoder else "1,2"))
    if args.runs is None:
        args.runs = 3 if decoder else 20
    if args.warmup is None:
        args.warmup = 1 if decoder else 3
    if args.gpu and args.peers:
        raise SqueezeError("--gpu and --peers are separate benchmarks; run them one at a time")
    given = [] if decoder else cli_types.given_options(args, getattr(args, "decoder_options", []))
    phone = [] if args.adb is not None else cli_types.given_options(args, getattr(args, "phone_options", []))
    if phone:  # ignored too: `bench DIR --cpu-mask f0` timed this machine unpinned
        raise SqueezeError(f"{', '.join(phone)} {'apply' if len(phone) > 1 else 'applies'} to phone benchmarks; "
                           f"add --adb [SERIAL] to run on a phone, or drop {'them' if len(phone) > 1 else 'it'}")
    if given:  # they were ignored: `bench DIR --contexts 2048` on a SqueezeTime export ran its usual table
        what = ("--gpu does not take" if args.gpu else "--peers does not take" if args.peers
                else f"{args.dir or 'no DIR given'}: no decoder export there to take")
        raise SqueezeError(f"{', '.join(given)} {'apply' if len(given) > 1 else 'applies'} to decoder directories "
                           f"(squeeze export decoder); {what} {'them' if len(given) > 1 else 'it'}")
    if (args.gpu or args.peers) and (args.dir or args.adb is not None):
        mode = "--gpu" if args.gpu else "--peers"
        raise SqueezeError(f"{mode} benchmarks the PyTorch models it builds itself and reads no export directory or "
                           f"phone; drop {'DIR' if args.dir else '--adb'}, or drop {mode} to benchmark DIR")
    if (args.gpu or args.peers) and (formats or args.checkpoint):
        mode, flag = ("--gpu" if args.gpu else "--peers"), ("--formats" if formats else "--checkpoint")
        raise SqueezeError(f"{flag} applies to an export directory; {mode} benchmarks the models it builds itself")
    if args.gpu:
        import torch

        from .gpu import GPU_REPORT_FILES, run_gpu_benchmark

        if not torch.cuda.is_available():
            raise SqueezeError("--gpu needs a CUDA GPU, and none is available to PyTorch here "
                               "(torch.cuda.is_available() is False); run it on a machine with one")
        out_dir = args.out or "bench_out/gpu"
        check_report_dir(out_dir, GPU_REPORT_FILES)
        report = run_gpu_benchmark(out_dir=out_dir, progress=_progress(console))
        _console(False).print(report["markdown"].rstrip("\n"), markup=False, soft_wrap=True)
        return _fail_on_error_rows(report["rows"], lambda r: r.get("error"), lambda r: f"{r['model']} {r['dtype']}")
    if args.peers:
        from .peers import run_peers_benchmark

        report = run_peers_benchmark(args.out or "bench_out/peers", threads=tuple(threads), runs=args.runs,
                                     warmup=args.warmup, progress=_progress(console))
        md = report.get("markdown") or Path(report["files"]["markdown"]).read_text()
        _console(False).print(md.rstrip("\n"), markup=False, soft_wrap=True)
        return 0
    if not args.dir:
        raise SqueezeError("give the export directory to benchmark (squeeze bench DIR)")
    # the report location is checked before anything runs: results are never lost to an unwritable --out; nothing is
    # created until the reports are written (a failed or interrupted run leaves no empty folder behind)
    check_report_dir(args.out or Path(args.dir) / ("bench_android" if args.adb is not None else "bench"), create=False)
    if decoder:
        if args.adb is not None:
            raise SqueezeError("--adb benchmarks SqueezeTime artifacts; decoder directories run on this machine")
        if args.checkpoint:
            raise SqueezeError("--checkpoint applies to SqueezeTime export directories; a decoder directory names its "
                               "model in its manifest")
        from .decoder import decoder_markdown, run_decoder_benchmark

        report = run_decoder_benchmark(args.dir, contexts=list(args.contexts), threads=threads, runs=args.runs, warmup=args.warmup,
                                       rounds=args.rounds, decode_tokens=args.decode_tokens, packs=args.context_pack,
                                       profile=args.profile, out_dir=args.out, progress=_progress(console),
                                       llama_cpp=args.llama_cpp,
                                       prefill_tails=None if args.prefill_tail is None else list(args.prefill_tail),
                                       exact_tails=None if args.exact_tail is None else list(args.exact_tail),
                                       exact_heads=None if args.exact_head is None else list(args.exact_head),
                                       formats=formats)
        _console(False).print(decoder_markdown(report).rstrip("\n"), markup=False, soft_wrap=True)
        print(f"reports: {', '.join(report['files'].values())}", file=sys.stderr)
        return _fail_on_error_rows(report["rows"], lambda r: r.get("detail") if r.get("status") == "error" else None,
                                   lambda r: f"{r['format']} {r['attention']} at {r['context_tokens']} tokens")
    if args.adb is not None:
        from .android import run_android_benchmark

        if args.checkpoint:
            raise SqueezeError("--checkpoint rebuilds the PyTorch eager rows, which --adb does not run; drop it")
        report = run_android_benchmark(args.dir, serial=args.adb or None, tflite_benchmark=args.tflite_benchmark,
                                       pte_runner=args.pte_runner, threads=threads, runs=args.runs,
                                       warmup=args.warmup, cpu_mask=args.cpu_mask, out_dir=args.out,
                                       progress=_progress(console), formats=formats)
    else:
        from .host import run_host_benchmark

        report = run_host_benchmark(args.dir, threads=threads, runs=args.runs, warmup=args.warmup, out_dir=args.out,
                                    include_eager=args.eager, progress=_progress(console), formats=formats,
                                    checkpoint=args.checkpoint)
    from .report import markdown

    # soft_wrap: a Markdown row stays one line however wide the table (a wrapped row is no longer a table row)
    _console(False).print(markdown(report).rstrip("\n"), markup=False, soft_wrap=True)
    print(f"reports: {', '.join(report['files'].values())}", file=sys.stderr)
    return _fail_on_error_rows(report["rows"], lambda r: r.get("detail") if r.get("status") == "error" else None,
                               lambda r: f"{r.get('name', r.get('format'))} at {r.get('threads')} thread(s)")


def _parse_formats(text):
    """--formats: known format names (executorch = pte), or None for every artifact; unknown names are refused."""
    if text is None:
        return None
    from export.pipeline import parse_formats

    return parse_formats(text)


def _fail_on_error_rows(rows, error_of, name_of) -> int:
    """Exit status 1 with one `error:` line when any measurement failed (the table shows each reason)."""
    failed = [r for r in rows if error_of(r)]
    if not failed:
        return 0
    first = " ".join(str(error_of(failed[0])).split())[:200]
    print(f"error: {len(failed)} of {len(rows)} benchmark row(s) failed (first: {name_of(failed[0])}: {first}); "
          "see the table", file=sys.stderr)
    return 1
