"""TFLite / LiteRT (.tflite) through litert-torch; runs on the ai-edge-litert interpreter (XNNPACK delegate).

The Android GPU-delegate compatibility verdict of TensorFlow's TFLite analyzer goes into the manifest.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Optional

import numpy as np

from squeeze_mobile.metrics import sqnr_db

from .base import Backend, ExportOptions, Runner, register, versions_of


class LiteRTRunner(Runner):
    runtime = "LiteRT interpreter (XNNPACK)"

    def __init__(self, path: Path, threads: Optional[int]):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads or None)
        self.interpreter.allocate_tensors()
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        self.output_index = self.interpreter.get_output_details()[0]["index"]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input_index, np.ascontiguousarray(x))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_index).copy()


class LiteRTProgramRunner(Runner):
    """Named signatures of one .tflite file (one per method), run with the interpreter's signature runners.
    Inputs are matched by name; outputs come back in the method's declared order (litert-torch names them
    output_0, output_1, ...)."""

    runtime = "LiteRT interpreter (XNNPACK)"

    def __init__(self, path: Path, methods, threads: Optional[int]):
        from ai_edge_litert.interpreter import Interpreter

        self.table = methods
        self.interpreter = Interpreter(model_path=str(path), num_threads=threads or None)
        self._runners = {}
        # every signature prepared now, as an app does at start-up: a signature runner allocates its tensors and
        # sets up the delegate on first use, which a lazy start would charge to the first question's prefill
        for method in self.interpreter.get_signature_list():
            if method in self.table:
                self._prepare(method)

    def _prepare(self, method):
        runner = self.interpreter.get_signature_runner(method)
        details = runner.get_input_details()
        # one call on zeros now, as an app warms up at start-up: the interpreter allocates a signature's tensors and
        # XNNPACK packs its weights at the signature's first call, which would otherwise land in the first question
        runner(**{n: np.zeros(d["shape"], d["dtype"]) for n, d in details.items()})
        dtypes = {n: d["dtype"] for n, d in details.items()}
        ours = {i.get("tensor", i["name"]): i["name"] for i in self.table[method]["inputs"]}
        outputs = sorted(runner.get_output_details(), key=_output_index)
        self._runners[method] = (runner, {t: (ours.get(t, t), d) for t, d in dtypes.items()}, outputs)

    def run(self, method, feed):
        from squeeze_mobile.errors import SqueezeError

        if method not in self.table:
            raise SqueezeError(f"this model has no signature {method!r}; it has {', '.join(self.table)}")
        if method not in self._runners:
            self._prepare(method)
        runner, inputs, outputs = self._runners[method]
        missing = [name for name, _ in inputs.values() if name not in feed]
        if missing:
            raise SqueezeError(f"method {method!r} needs inputs {', '.join(missing)}")
        # the converter narrows int64 inputs (token ids, lengths) to int32: the manifest records the file's dtypes
        result = runner(**{t: np.ascontiguousarray(feed[name], dtype=d) for t, (name, d) in inputs.items()})
        return {name: result[key] for name, key in zip(self.table[method]["outputs"], outputs)}

    def __call__(self, x):
        return self.run("forward", {"input": x})["logits"]


WEIGHT_RECIPES = {"int8": "dynamic_wi8_afp32", "int4": "dynamic_wi4b32_afp32"}


def write_flatbuffer(edge_model, dest: Path) -> None:
    """Write a converted model from Python. LiteRT's own ``export`` writes through LLVM's C++ stream, which on a
    full disk (or a file-size limit) ends the whole process via LLVM's fatal-error handler -- its one message lost
    in the captured converter output and the temporary file left half-written; Python's write raises OSError, which
    the pipeline turns into one line and a removed temporary."""
    data = edge_model.model_content()
    with open(dest, "wb") as fh:
        fh.write(data)


def quantize_weights(path: Path, weights: str) -> dict:
    """Weight quantization of a converted .tflite in place with the LiteRT quantizer (ai-edge-quantizer): int8 =
    per-channel int8 weights, int4 = blocks of 32; activations stay float (dynamic range: the CPU kernels
    quantize them on the fly, the GPU delegate dequantizes the weights)."""
    from ai_edge_quantizer import quantizer, recipe

    from export.quiet import quiet
    from squeeze_mobile.errors import SqueezeError

    if weights not in WEIGHT_RECIPES:
        raise SqueezeError(f"--weights must be fp32, {', '.join(WEIGHT_RECIPES)} for tflite; got {weights!r}")
    name = WEIGHT_RECIPES[weights]
    with quiet():
        q = quantizer.Quantizer(str(path))
        q.load_quantization_recipe(getattr(recipe, name)())
        q.quantize().export_model(str(path), overwrite=True)
    return {"tool": "ai-edge-quantizer", "recipe": name, "weights": weights}


def signatures_of(path: Path, program) -> dict:
    """The methods' signatures with the dtypes the .tflite file declares (int64 inputs become int32)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    out = {}
    for m in program.methods:
        sig = m.signature()
        declared = interpreter.get_signature_runner(m.name).get_input_details()
        tensors = tensor_names(m)
        for entry in sig["inputs"]:
            tensor = tensors[entry["name"]]
            if tensor != entry["name"]:
                entry["tensor"] = tensor   # the signature's own name for it (list arguments are numbered)
            if tensor in declared:
                entry["dtype"] = np.dtype(declared[tensor]["dtype"]).name
        out[m.name] = {"graph": m.name, **sig}
    return out


def tensor_names(method) -> dict:
    """Input name -> the signature input litert-torch makes of it: a keyword argument keeps its name, the items
    of a list argument become <argument>_<index>."""
    names = {}
    for key, value in method.call_kwargs({n: n for n in method.inputs}).items():
        if isinstance(value, (list, tuple)):
            names.update({item: f"{key}_{i}" for i, item in enumerate(value)})
        else:
            names[value] = key
    return names


def _output_index(name: str) -> int:
    match = re.search(r"(\d+)$", name)
    return int(match.group(1)) if match else 0


def gpu_compatibility(path: Path) -> dict:
    """Run TensorFlow's TFLite analyzer with the GPU-delegate check; return verdict + offending ops."""
    import tensorflow as tf

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        tf.lite.experimental.Analyzer.analyze(model_path=str(path), gpu_compatibility=True)
    report = buf.getvalue()
    incompatible = sorted(set(re.findall(r"GPU COMPATIBILITY WARNING: Not supported op (\w+)", report)))
    reasons = sorted(set(l.strip() for l in report.splitlines() if "GPU COMPATIBILITY WARNING" in l))
    compatible = "GPU COMPATIBILITY WARNING" not in report and "Your model looks compatible with GPU delegate" in report
    ops = sorted(set(re.findall(r"Op#\d+ (\w+)\(", report)))
    return {
        "android_gpu_delegate": "compatible" if compatible else "incompatible",
        "incompatible_ops": incompatible,
        "warnings": reasons[:20],
        "ops": ops,
    }


def float_io(model_bytes: bytes) -> bytes:
    """A fully quantized .tflite whose int8 graph inputs/outputs become float32: a QUANTIZE op after each int8 input
    and a DEQUANTIZE op before each int8 output (with the tensors' own scales), signatures re-pointed, so the app
    feeds and reads floats like the fp32 model's."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))

    def opcode(builtin: int) -> int:
        for i, code in enumerate(model.operatorCodes):
            if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
                return i
        code = schema.OperatorCodeT()
        code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 2
        model.operatorCodes.append(code)
        return len(model.operatorCodes) - 1

    sub = model.subgraphs[0]
    empty = len(model.buffers)
    model.buffers.append(schema.BufferT())
    remap = {}

    def float_twin(index: int, suffix: str) -> int:
        src = sub.tensors[index]
        t = schema.TensorT()
        t.shape, t.type, t.buffer = list(src.shape), schema.TensorType.FLOAT32, empty
        t.name = (src.name.decode() if isinstance(src.name, bytes) else str(src.name)) + suffix
        if src.shapeSignature is not None:
            t.shapeSignature = list(src.shapeSignature)
        sub.tensors.append(t)
        return len(sub.tensors) - 1

    def wrap(ends, builtin, float_side_is_input: bool):
        """Give each int8/uint8 graph input (output) a float32 twin and a QUANTIZE (DEQUANTIZE) op between them."""
        ops = []
        for k, idx in enumerate(list(ends)):
            if sub.tensors[idx].type in (schema.TensorType.INT8, schema.TensorType.UINT8):
                new = float_twin(idx, "_float")
                op = schema.OperatorT()
                op.opcodeIndex = opcode(builtin)
                op.inputs, op.outputs = ([new], [idx]) if float_side_is_input else ([idx], [new])
                ops.append(op)
                ends[k] = remap[idx] = new
        return ops

    head = wrap(sub.inputs, schema.BuiltinOperator.QUANTIZE, True)
    tail = wrap(sub.outputs, schema.BuiltinOperator.DEQUANTIZE, False)
    sub.operators = head + list(sub.operators) + tail
    for sig in model.signatureDefs or []:
        for tm in list(sig.inputs or []) + list(sig.outputs or []):
            tm.tensorIndex = remap.get(tm.tensorIndex, tm.tensorIndex)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def signature_io_names(path) -> Optional[dict]:
    """The .tflite file's one signature and its input / output names, as a signature runner is called with them."""
    from ai_edge_litert.interpreter import Interpreter

    signatures = Interpreter(model_path=str(path)).get_signature_list()
    if len(signatures) != 1:
        return None
    (name, io), = signatures.items()
    return {"signature": name, "inputs": list(io.get("inputs", [])), "outputs": list(io.get("outputs", []))}


def _io_types(path_or_bytes) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    it = (Interpreter(model_content=path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray))
          else Interpreter(model_path=str(path_or_bytes)))
    return {"input": np.dtype(it.get_input_details()[0]["dtype"]).name,
            "output": np.dtype(it.get_output_details()[0]["dtype"]).name}


def _run_bytes(model_bytes: bytes, inputs, reference_kernels: bool = False) -> np.ndarray:
    """Logits of a .tflite (bytes) on float inputs, with XNNPACK (default) or LiteRT's reference kernels."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kw = {"experimental_op_resolver_type": OpResolverType.BUILTIN_REF} if reference_kernels else {}
    it = Interpreter(model_content=model_bytes, num_threads=2, **kw)
    it.allocate_tensors()
    i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    outs = []
    for x in inputs:
        it.set_tensor(i, np.ascontiguousarray(x))
        it.invoke()
        outs.append(it.get_tensor(o).copy())
    return np.concatenate(outs)


def quantize_litert(float_bytes: bytes, calibration, observer: str) -> tuple:
    """The LiteRT quantizer (ai-edge-quantizer) on the float model: static_wi8_ai8 (int8 per-channel symmetric
    weights, int8 activations), the graph's input and output left float (QUANTIZE / DEQUANTIZE inside)."""
    import os

    from ai_edge_quantizer import quantizer, recipe

    q = quantizer.Quantizer(bytearray(float_bytes))
    rules = list(recipe.static_wi8_ai8())
    rules += [{"regex": ".*", "operation": op, "algorithm_key": "no_quantize"} for op in ("INPUT", "OUTPUT")]
    q.load_quantization_recipe(rules)
    from ai_edge_litert.interpreter import Interpreter

    sigs = Interpreter(model_content=bytes(float_bytes)).get_signature_list()
    key = next(iter(sigs))
    name = sigs[key]["inputs"][0]
    result = q.calibrate({key: [{name: np.asarray(x)} for x in calibration]}, num_threads=os.cpu_count() or 1)
    out = bytes(q.quantize(result, enable_progress_report=False).quantized_model)
    settings = {"tool": "ai-edge-quantizer (LiteRT quantizer), recipe static_wi8_ai8 + float INPUT/OUTPUT",
                "activation_observer": "min_max (the LiteRT quantizer's own calibration)" if observer == "histogram"
                else "min_max"}
    return out, settings


def quantize_pt2e(module, example, calibration, observer: str) -> tuple:
    """litert-torch's PT2E quantizer (per-channel symmetric weights, int8 activations; the fixed 1/256 output scale
    LiteRT's kernels want for sigmoid), converted by litert-torch; int8 I/O made float with float_io."""
    import litert_torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig

    from export import quantize as qz

    quantizer = PT2EQuantizer().set_global(qz.with_observer(get_symmetric_quantization_config(is_per_channel=True),
                                                            observer))
    # fold_quantize=False: litert-torch converts the explicit quantize ops (folded ones fail in its lowering)
    graph = qz.pt2e_quantize(module, example, quantizer, calibration, fold_quantize=False)
    edge = litert_torch.convert(graph, (example,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
    raw = edge.model_content()  # in memory: LiteRT's C++ file writer ends the process on a full disk
    settings = {"tool": "torchao PT2E + litert-torch PT2EQuantizer (symmetric, per-channel), litert-torch convert",
                "activation_observer": observer}
    return float_io(raw), settings, graph


@register
class LiteRTBackend(Backend):
    name = "tflite"
    suffix = ".tflite"
    runtime = LiteRTRunner.runtime
    precisions = ("fp32", "int8")

    def artifact_name(self, stem, opts):
        return f"{stem}_{opts.precision}.tflite"

    def file_io_names(self, path: Path):
        return signature_io_names(path)

    def export(self, module, example, dest: Path, opts: ExportOptions):
        import litert_torch

        edge_model = litert_torch.convert(module, (example,))
        write_flatbuffer(edge_model, dest)
        if opts.precision == "int8":
            return self._export_int8(module, example, dest, opts)
        return {"gpu_delegate": gpu_compatibility(dest)}

    def _export_int8(self, module, example, dest: Path, opts: ExportOptions):
        """Both quantizers on the same calibration views; the one whose logits are closer to the fp32 .tflite on
        those views (SQNR; the held-out verification views stay unseen) is kept. Both must load and run in LiteRT's
        reference kernels as well as with XNNPACK."""
        from export import quantize as qz
        from squeeze_mobile.errors import SqueezeError

        observer = opts.extra.get("observer", qz.DEFAULT_OBSERVER)
        calibration = [np.asarray(x) for x in qz.calibration_tensors(opts)]
        float_bytes = Path(dest).read_bytes()
        float_out = _run_bytes(float_bytes, calibration)
        candidates, graph = {}, None
        for name in ("litert_quantizer", "litert_torch_pt2e"):
            try:
                if name == "litert_quantizer":
                    data, settings = quantize_litert(float_bytes, calibration, observer)
                else:
                    data, settings, graph = quantize_pt2e(module, example, qz.calibration_tensors(opts), observer)
                xnn = _run_bytes(data, calibration)
                ref = _run_bytes(data, calibration[:1], reference_kernels=True)
                candidates[name] = {"bytes": data, "settings": settings, "io": _io_types(data),
                                    "calibration_sqnr_db": min(sqnr_db(float_out, xnn), 999.0),
                                    "reference_kernels": {"runs": True,
                                                          "sqnr_db_vs_xnnpack": min(sqnr_db(xnn[:len(ref)], ref), 999.0)}}
            except Exception as exc:  # noqa: BLE001 - a candidate that fails is recorded, the other may still win
                candidates[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
        ok = {k: c for k, c in candidates.items() if "bytes" in c and c["io"] == {"input": "float32", "output": "float32"}}
        if not ok:
            raise SqueezeError("tflite int8: neither quantizer produced a float-I/O model that runs in LiteRT's reference "
                               "kernels and XNNPACK (" + "; ".join(f"{k}: {c.get('error', c.get('io'))}"
                                                                  for k, c in candidates.items()) + ")")
        best = max(ok, key=lambda k: ok[k]["calibration_sqnr_db"])
        Path(dest).write_bytes(ok[best]["bytes"])
        vset = opts.extra.get("reference")
        reference_kernels = None
        if vset is not None:  # the kept model on the held-out views in LiteRT's reference kernels (XNNPACK: verify)
            from export.verify import compare

            out = _run_bytes(ok[best]["bytes"], vset.inputs_for(opts.spec), reference_kernels=True)[:len(vset.names)]
            res = compare(vset.reference, out, vset.names, "int8")
            reference_kernels = {"runtime": "LiteRT interpreter, reference kernels (BUILTIN_REF)",
                                 **{k: res[k] for k in ("status", "failures", "sqnr_db", "top1_agreement",
                                                        "softmax_kl", "max_abs_error")}}
            if res["status"] != "pass":
                raise SqueezeError(f"tflite int8 ({best}) misses the int8 thresholds in LiteRT's reference kernels: "
                                   + "; ".join(res["failures"]))
        record = {**qz.settings(opts), **ok[best]["settings"], "chosen": best,
                  "selection": "higher logits SQNR against the fp32 .tflite on the calibration views",
                  "candidates": {k: {kk: vv for kk, vv in c.items() if kk not in ("bytes", "settings")}
                                 | ({"tool": c["settings"]["tool"]} if "settings" in c else {})
                                 for k, c in candidates.items()},
                  "io": ok[best]["io"]}
        if reference_kernels:
            record["reference_kernels"] = reference_kernels
        if best == "litert_torch_pt2e" and graph is not None:
            simulated = qz.simulate(graph, opts)
            if simulated:
                record["pytorch_simulation"] = simulated
        return {"gpu_delegate": gpu_compatibility(dest), "quantization": record}

    def load(self, path, threads=None):
        return LiteRTRunner(path, threads)

    def export_program(self, program, dest: Path, opts: ExportOptions):
        """Every method as a signature of one .tflite (weights shared between signatures), static shapes."""
        import litert_torch
        import torch

        converter = None
        with torch.no_grad():
            for m in program.methods:
                kwargs = m.call_kwargs(m.inputs)
                converter = (litert_torch.signature(m.name, m.module, sample_kwargs=kwargs) if converter is None
                             else converter.signature(m.name, m.module, sample_kwargs=kwargs))
            edge_model = converter.convert()
        edge_model.export(str(dest))
        quantized = quantize_weights(dest, opts.weights) if opts.weights != "fp32" else None
        return {"gpu_delegate": gpu_compatibility(dest), **({"weight_quantization": quantized} if quantized else {}),
                "methods": signatures_of(dest, program)}

    def load_program(self, path, methods, threads=None, profile=False):
        return LiteRTProgramRunner(path, methods, threads)

    def tool_versions(self):
        return versions_of("torch", "litert-torch", "ai-edge-litert", "tensorflow")
