"""Per-layer quantization error of an export's int8 artifacts: `squeeze quant-report DIR`.

For every int8 artifact in DIR/manifest.json, the SQNR (dB, 10*log10(signal energy / error energy)) of each
quantized tensor against the fp32 model, measured on the held-out real verification views, with the tool the
format's own toolchain provides:

- ONNX: onnxruntime.quantization.qdq_loss_debug on the artifact itself and the pre-processed fp32 graph its
  tensor names refer to: every activation (the int8 model's dequantized tensor vs the fp32 model's) and every
  weight (dequantized vs float);
- TFLite (LiteRT quantizer): the LiteRT quantizer's ``validate`` -- the artifact and the fp32 .tflite run side by
  side in the LiteRT interpreter (XNNPACK), every tensor compared (its SNR is a power ratio, given here in dB);
- ExecuTorch and Core ML W8A8 (and TFLite when litert-torch's PT2E quantizer won): torchao's PT2E numeric
  debugger, which compares each node of the fake-quantized PyTorch graph with the fp32 graph. The quantization
  is redone from the calibration views the manifest records (their sha256 must match), so this is the PyTorch
  simulation of the artifact, not the runtime: XNNPACK runs the whole graph as one delegate, and ExecuTorch's
  Inspector sees it as one row;
- Core ML weight-only int8: the SQNR of every int8 weight of the saved ML program (constexpr decompressed) against
  the fp16 weight of the same name in the float program (activations are not quantized).

Writes quant_report.json, quant_report.md and quant_report.png (worst layers first).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from squeeze_mobile.atomic import atomic_path, check_creatable_dir, check_destination
from squeeze_mobile.errors import SqueezeError
from squeeze_mobile.metrics import json_text, sqnr_db

REPORT = "quant_report"
WORST_SHOWN = 20
Progress = Callable[[str, str], None]


def _finite(v: float) -> Optional[float]:
    return None if v is None or not math.isfinite(v) else float(v)


# ------------------------------------------------------------------------------------------- per format
def onnx_layers(ready, example, artifact: Path, inputs: List[np.ndarray]) -> Dict:
    """qdq_loss_debug: activations of the int8 graph vs the pre-processed fp32 graph, and weights."""
    import torch

    from .backends.onnx_backend import INPUT_NAME, OPSET, OUTPUT_NAME, _Batches, _quiet_ort_logging, \
        preprocess_for_quantization

    with _quiet_ort_logging():
        from onnxruntime.quantization import qdq_loss_debug as dbg

    program = torch.onnx.export(ready, (example,), dynamo=True, opset_version=OPSET, input_names=[INPUT_NAME],
                                output_names=[OUTPUT_NAME], external_data=False, verbose=False)
    rows = []
    with tempfile.TemporaryDirectory(prefix="qdq_debug_") as tmp:
        tmp = Path(tmp)
        float_model = preprocess_for_quantization(program.model_proto, tmp)
        dbg.modify_model_output_intermediate_tensors(str(float_model), str(tmp / "float_aug.onnx"))
        dbg.modify_model_output_intermediate_tensors(str(artifact), str(tmp / "int8_aug.onnx"))
        f_acts = dbg.collect_activations(str(tmp / "float_aug.onnx"), _Batches(inputs))
        q_acts = dbg.collect_activations(str(tmp / "int8_aug.onnx"), _Batches(inputs))
        matched = dbg.create_activation_matching(q_acts, f_acts)
        scopes = _onnx_scopes(artifact)
        for name, m in matched.items():
            if not m.get("float"):
                continue
            rows.append({"name": f"{scopes[name]} ({name})" if scopes.get(name) else name, "tensor": name,
                         "kind": "activation",
                         "sqnr_db": sqnr_db(np.concatenate(m["float"]), np.concatenate(m["post_qdq"]))})
        for name, (ref, deq) in onnx_weight_matching(float_model, artifact).items():
            rows.append({"name": name, "kind": "weight", "sqnr_db": sqnr_db(ref, deq)})
    return {"tool": "onnxruntime.quantization.qdq_loss_debug",
            "what": "activations (qdq_loss_debug): the int8 graph's dequantized tensor vs the same tensor of the fp32 "
                    "graph (errors accumulated up to that layer); "
                    "weights: every constant DequantizeLinear input dequantized vs the float initializer of the same "
                    "name (in int64: qdq_loss_debug's create_weight_matching subtracts uint8 zero points in uint8, "
                    "which wraps for the uint8 constants of Add/Mul)", "rows": rows}


def _onnx_scopes(path: Path) -> Dict[str, str]:
    """Node output -> the PyTorch module it came from (the exporter's name-scope metadata), e.g. 'blocks.7.downsample'."""
    import ast

    import onnx

    out = {}
    for node in onnx.load(str(path)).graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        try:
            scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
        except (ValueError, SyntaxError):
            continue
        module = next((s for s in reversed(scopes[:-1]) if s), "") if isinstance(scopes, list) else ""
        for o in node.output:
            if module:
                out[o] = module
    return out


def onnx_weight_matching(float_model: Path, qdq_model: Path) -> Dict[str, tuple]:
    """{name: (float initializer, dequantized int8/uint8 initializer)} for every DequantizeLinear of a constant."""
    import onnx
    from onnx import numpy_helper

    floats = {i.name: i for i in onnx.load(str(float_model)).graph.initializer}
    model = onnx.load(str(qdq_model))
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        name = node.input[0][:-len("_quantized")] if node.input[0].endswith("_quantized") else node.input[0]
        if name not in floats:
            continue
        q = numpy_helper.to_array(inits[node.input[0]]).astype(np.int64)
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        zero = (numpy_helper.to_array(inits[node.input[2]]).astype(np.int64) if len(node.input) > 2 and node.input[2]
                else np.zeros_like(scale, dtype=np.int64))
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.size > 1:  # per-channel: broadcast along the quantization axis
            shape = [1] * q.ndim
            shape[axis] = scale.size
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        ref = numpy_helper.to_array(floats[name])
        deq = (q - zero) * scale
        if deq.shape == ref.shape:
            out[name] = (ref, deq)
    return out


def tflite_layers(ready, example, artifact: Path, inputs: List[np.ndarray]) -> Dict:
    """The LiteRT quantizer's validate(): the fp32 .tflite and the artifact side by side, every tensor compared."""
    import os

    import litert_torch
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer
    from ai_edge_quantizer.utils import validation_utils

    with tempfile.TemporaryDirectory(prefix="litert_validate_") as tmp:
        path = Path(tmp) / "float.tflite"
        litert_torch.convert(ready, (example,)).export(str(path))
        float_bytes = path.read_bytes()
    q = quantizer.Quantizer(bytearray(float_bytes), previous_quantized_model=str(artifact))
    sigs = Interpreter(model_content=float_bytes).get_signature_list()
    key = next(iter(sigs))
    name = sigs[key]["inputs"][0]
    result = q.validate({key: [{name: np.asarray(x)} for x in inputs]},
                        error_metrics=[validation_utils.ValidationErrorMetric.SNR,
                                       validation_utils.ValidationErrorMetric.MSE],
                        use_xnnpack=True, num_threads=os.cpu_count() or 1)
    sig = result.get_signature_comparison_result(key)
    rows = []
    for kind, table in (("activation", sig.intermediate_tensors), ("output", sig.output_tensors),
                        ("weight", sig.constant_tensors)):
        for tensor, metrics in table.items():
            snr, mse = metrics.get("snr"), metrics.get("mse")
            db = math.inf if snr is not None and math.isinf(snr) else (10 * math.log10(snr) if snr and snr > 0 else None)
            row = {"name": short_tflite_name(tensor), "tensor": tensor, "kind": kind, "sqnr_db": db, "mse": mse}
            if mse is not None and mse > PADDING_MSE:
                # a max-pool border padded with the float minimum (-3.4e38) in fp32 and with the int8 minimum in the
                # int8 model: both lose every max, so the huge difference is no quantization error
                row.update({"sqnr_db": None, "padding": True,
                            "note": "max-pool padding (float minimum vs int8 minimum): not a quantization error"})
            rows.append(row)
    return {"tool": "ai-edge-quantizer Quantizer.validate (LiteRT interpreter, XNNPACK)",
            "what": "every tensor of the int8 model vs the same tensor of the fp32 .tflite, same inputs (its SNR "
                    "ratio shown in dB)", "rows": rows}


PADDING_MSE = 1e30


def short_tflite_name(tensor: str) -> str:
    """litert-torch names tensors by module path ('pkg.Class_attr/...;k'); keep the attribute path of the last op:
    'blocks.1.ctl.glo_conv3;2'."""
    import re

    last = tensor.split(";;")[-1]
    path, _, index = last.partition(";")
    parts = []
    for comp in path.split("/"):
        m = re.match(r"^(?:[\w]+\.)*[A-Z]\w*?_(.+)$", comp)
        if m:
            parts.append(m.group(1))
    name = ".".join(parts) or path
    return f"{name};{index}" if index else name


def pt2e_layers(ready, example, quantizer, calibration, inputs) -> Dict:
    """torchao's PT2E numeric debugger: each node of the quantized (fake-quant) graph vs the fp32 graph."""
    import torch
    from torchao.quantization.pt2e import _numeric_debugger as nd
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    with torch.no_grad():
        ep = torch.export.export(ready, (example,), strict=False)
        reference = nd.prepare_for_propagation_comparison(ep.module())
        prepared = prepare_pt2e(ep.module(), quantizer)
        for x in calibration:
            prepared(x)
        quantized = nd.prepare_for_propagation_comparison(convert_pt2e(prepared))
        for x in inputs:
            reference(torch.as_tensor(x))
            quantized(torch.as_tensor(x))
    compared = nd.compare_results(nd.extract_results_from_loggers(reference), nd.extract_results_from_loggers(quantized))
    rows = []
    for info, summary in compared.items():
        ref = [np.asarray(r.ref) for r in summary.results]
        act = [np.asarray(r.actual) for r in summary.results]
        try:
            value = sqnr_db(np.concatenate([a.ravel() for a in ref]), np.concatenate([a.ravel() for a in act]))
        except ValueError:  # a node whose output is not one tensor
            continue
        module = summary.ref_module_stack or ""
        rows.append({"name": f"{module} ({summary.ref_node_name})" if module else summary.ref_node_name,
                     "kind": "activation", "sqnr_db": value})
    return {"tool": "torchao PT2E numeric debugger (prepare_for_propagation_comparison, compare_results)",
            "what": "each node of the fake-quantized PyTorch graph vs the fp32 graph (a simulation of the artifact, "
                    "redone from the recorded calibration views)", "rows": rows}


def coreml_weight_layers(ready, example, artifact: Path) -> Dict:
    """int8 weights of a weight-only ML program vs the fp16 weights of the same names in the float program."""
    import coremltools as ct
    import torch

    from .backends import coreml_mil
    from .backends.coreml_backend import CoreMLBackend

    ep = torch.export.export(ready, (example,), strict=False).run_decompositions({})
    float_model = CoreMLBackend()._ct_convert(ep, example.float() if not example.is_floating_point() else example,
                                              ct.precision.FLOAT16)
    with tempfile.TemporaryDirectory(prefix="coreml_weights_") as tmp:
        path = Path(tmp) / "float.mlpackage"
        float_model.save(str(path))
        floats = coreml_mil.MILProgram(path).constants
        quant = coreml_mil.MILProgram(artifact)
    spec = ct.models.MLModel(str(artifact), skip_model_load=True).get_spec()
    fn = spec.mlProgram.functions["main"]
    names = [o.name for op in fn.block_specializations[fn.opset].operations if op.type.startswith("constexpr_")
             for o in op.outputs]
    rows = []
    for name in names:
        base = name[:-len("_quantized")] if name.endswith("_quantized") else name
        ref = floats.get(base, floats.get(name))
        got = quant.constants.get(name)
        if ref is None or got is None or np.shape(ref) != np.shape(got):
            continue
        rows.append({"name": base, "kind": "weight", "sqnr_db": sqnr_db(ref, got)})
    return {"tool": "coremltools (MIL programs read back; constexpr_affine_dequantize decompressed)",
            "what": "each int8 weight vs the fp16 weight of the same name in the unquantized program (weight-only "
                    "int8: activations stay fp16)", "rows": rows}


# ------------------------------------------------------------------------------------------------ driver
def _summary(rows: List[Dict]) -> Dict:
    values = [r["sqnr_db"] for r in rows if r.get("sqnr_db") is not None and math.isfinite(r["sqnr_db"])]
    if not values:
        return {"tensors": len(rows)}
    return {"tensors": len(rows), "min_sqnr_db": min(values), "median_sqnr_db": float(np.median(values)),
            "max_sqnr_db": max(values)}


def _order(rows: List[Dict]) -> List[Dict]:
    """Worst (lowest SQNR) first; exact tensors (infinite SQNR) and unknown values last."""
    def key(r):
        v = r.get("sqnr_db")
        return (v is None, math.inf if v is None else v)

    for r in rows:
        if r.get("sqnr_db") is not None and not math.isfinite(r["sqnr_db"]):
            r["exact"] = True

    out = sorted(rows, key=lambda r: (r.get("exact", False),) + key(r))
    for r in out:  # JSON has no infinity: an exact tensor says so instead
        if r.get("sqnr_db") is not None and not math.isfinite(r["sqnr_db"]):
            r["sqnr_db"] = None
    return out


def quant_report(out_dir, report_dir=None, progress: Optional[Progress] = None, verify_video=None) -> Dict:
    """Per-layer error of every int8 artifact in ``out_dir``; writes JSON, Markdown and PNG into ``report_dir``
    (default: ``out_dir``). Returns the report."""
    from squeezetime.rewrite import export_ready

    from .calibration import rebuild_calibration_set
    from .pipeline import model_from_source, plan_verification
    from .quiet import quiet
    from .verify import build_verification_set, sha256_file

    say = progress or (lambda stage, msg: None)
    plan = plan_verification(out_dir, verify_video)
    report_dir = Path(report_dir) if report_dir is not None else plan.out_dir
    check_creatable_dir(report_dir)   # made when the report is written: a refused run leaves no new folder
    for suffix in ("json", "md", "png"):   # a folder (or FIFO, device) where a report file goes: refused before work
        destination = report_dir / f"{REPORT}.{suffix}"
        if destination.exists() or destination.is_symlink():
            check_destination(destination, "file")
    int8 = [it for it in plan.artifacts if it["record"].get("precision") == "int8"]
    if not int8:
        raise SqueezeError(f"{plan.out_dir} holds no int8 artifacts; export with --precision int8 first")
    manifest = plan.manifest
    model = model_from_source(manifest["model"]["source"], manifest["model"]["config"])
    spec = plan.spec
    say("report", "decoding the held-out verification views")
    vset = build_verification_set(model, spec, plan.video)
    real = [i for i, r in enumerate(vset.real) if r]
    held_out = [spec.from_clip(vset.clips[i:i + 1], vset.frames_uint8[i:i + 1]).numpy() for i in real]
    if spec.batch > 1:  # the graphs take spec.batch clips: repeat the views to fill a batch
        held_out = [np.concatenate([h] * spec.batch) for h in held_out]
    ready = export_ready(model, spec)
    example = spec.example(seed=0)
    artifacts = []
    for item in int8:
        art, path = item["record"], item["path"]
        if not path.exists() or sha256_file(path) != art.get("sha256"):
            artifacts.append({"file": art["file"], "format": art["format"], "error": "artifact missing or sha256 differs "
                              "from the manifest"})
            continue
        quant = art.get("quantization") or {}
        say(art["format"], f"per-layer error of {art['file']}")
        t0 = time.perf_counter()
        try:
            with quiet():
                entry = _layers_for(art, quant, path, ready, example, spec, held_out, vset, model.config,
                                    rebuild_calibration_set)
        except SqueezeError as exc:
            entry = {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a tool that fails is reported for its artifact, the others go on
            entry = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
        entry = {"file": art["file"], "format": art["format"], "scheme": quant.get("int8_scheme", "static"),
                 **entry, "seconds": round(time.perf_counter() - t0, 1)}
        if "rows" in entry:
            entry["rows"] = _order(entry["rows"])
            entry["summary"] = _summary(entry["rows"])
        artifacts.append(entry)
    report = {"schema": "squeeze-mobile/quant-report/1", "export_dir": str(plan.out_dir),
              "views": {"count": len(held_out), "what": "the real verification views (no calibration view shares a "
                                                        "frame with them)", "video_sha256": vset.video_sha256},
              "metric": "SQNR dB = 10*log10(sum(fp32^2) / sum((int8 - fp32)^2)) over the views; worst first",
              "artifacts": artifacts}
    write_report(report, report_dir)
    return report


def _layers_for(art, quant, path, ready, example, spec, held_out, vset, config, rebuild) -> Dict:
    import torch

    fmt = art["format"]
    if fmt == "onnx":
        return onnx_layers(ready, example, path, held_out)
    if fmt == "coreml" and quant.get("int8_scheme") == "weight_only":
        return coreml_weight_layers(ready, example, path)
    if fmt == "tflite" and quant.get("chosen", "litert_quantizer") == "litert_quantizer":
        return tflite_layers(ready, example, path, held_out)
    # PT2E-quantized: redo the quantization from the recorded calibration views, then the numeric debugger
    calib = rebuild(config, spec, quant.get("calibration"), vset)
    tensors = calib.tensors_for(spec)
    observer = quant.get("activation_observer", "minmax")
    observer = observer if observer in ("minmax", "histogram") else "minmax"
    from . import quantize as q

    if fmt == "pte" and art.get("pte_backend", "xnnpack") == "xnnpack":
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                              get_symmetric_quantization_config)

        quantizer = XNNPACKQuantizer().set_global(q.with_observer(get_symmetric_quantization_config(is_per_channel=True),
                                                                  observer))
    elif fmt == "tflite":
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config

        quantizer = PT2EQuantizer().set_global(q.with_observer(get_symmetric_quantization_config(is_per_channel=True),
                                                               observer))
    else:  # Core ML W8A8, or a .pte for the Core ML delegate
        from .backends.coreml_backend import coreml_pt2e_quantizer

        quantizer, _ = coreml_pt2e_quantizer(observer)
        tensors = [t.float() for t in tensors]
        example = example.float()
        held_out = [np.asarray(h, np.float32) for h in held_out]
    return pt2e_layers(ready, example, quantizer, tensors, [torch.as_tensor(h) for h in held_out])


def _fmt(v, spec="{:.1f}", row=None) -> str:
    if v is None:
        return "exact" if row is None or row.get("exact") else "n/a"
    return spec.format(v)


def write_report(report: Dict, folder: Path) -> None:
    folder = Path(folder)
    with atomic_path(folder / f"{REPORT}.json") as tmp:
        tmp.write_text(json_text(report, indent=1), encoding="utf-8")
    with atomic_path(folder / f"{REPORT}.md") as tmp:
        tmp.write_text(markdown(report), encoding="utf-8")
    with atomic_path(folder / f"{REPORT}.png") as tmp:
        plot(report, tmp)


def markdown(report: Dict) -> str:
    lines = ["# int8 per-layer quantization error", "",
             f"SQNR (dB) of every quantized tensor against fp32 on {report['views']['count']} held-out real views "
             f"({report['views']['what']}); worst first. Higher is better; 'exact' = no error.", ""]
    for a in report["artifacts"]:
        lines += [f"## {a['file']} ({a['format']}, {a.get('scheme', '')})", ""]
        if "error" in a:
            lines += [f"Not available: {a['error']}", ""]
            continue
        s = a["summary"]
        lines += [f"Tool: {a['tool']}. {a['what'].capitalize()}.", "",
                  f"{s['tensors']} tensors; SQNR min {_fmt(s.get('min_sqnr_db'))} dB, median "
                  f"{_fmt(s.get('median_sqnr_db'))} dB.", "",
                  "| # | tensor | kind | SQNR dB |", "|---:|---|---|---:|"]
        for i, r in enumerate(a["rows"][:WORST_SHOWN], 1):
            name = str(r["name"]).replace("|", "\\|")
            note = f" ({r['note']})" if r.get("note") else ""
            lines.append(f"| {i} | `{name}`{note} | {r['kind']} | {_fmt(r.get('sqnr_db'), row=r)} |")
        if len(a["rows"]) > WORST_SHOWN:
            lines.append(f"\n({len(a['rows']) - WORST_SHOWN} more tensors in {REPORT}.json)")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(report: Dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arts = [a for a in report["artifacts"] if a.get("rows")]
    n = max(1, len(arts))
    fig, axes = plt.subplots(n, 1, figsize=(10, 0.28 * WORST_SHOWN * n + 1.2 * n), squeeze=False)
    for ax, a in zip(axes[:, 0], arts):
        rows = [r for r in a["rows"] if r.get("sqnr_db") is not None][:WORST_SHOWN]
        names = [str(r["name"])[-60:] for r in rows][::-1]
        values = [r["sqnr_db"] for r in rows][::-1]
        colors = ["#c44" if r["kind"] == "weight" else "#48c" for r in rows][::-1]
        ax.barh(range(len(values)), values, color=colors)
        ax.set_yticks(range(len(values)))
        ax.set_yticklabels(names, fontsize=6)
        ax.set_xlabel("SQNR vs fp32 (dB); worst at the top; blue activations, red weights")
        ax.set_title(f"{a['file']} - {a['tool'].split(' (')[0]}", fontsize=8)
    if not arts:
        axes[0, 0].text(0.5, 0.5, "no per-layer data", ha="center")
    fig.tight_layout()
    fig.savefig(str(path), dpi=110, format="png")
    plt.close(fig)
