"""Multi-method programs (the decoder's split-plan stage graphs) as ONE Core ML ML program with several functions.

Each method is converted on its own (torch.export -> coremltools, iOS 18 ML program, fp32 compute, static
shapes), then the converted programs are merged into one .mlpackage whose functions carry the method names
(coremltools' MultiFunctionDescriptor: weights that are identical across functions, e.g. a layer's weights in
its ``prefill_<s>`` and ``decode_<s>`` stage, are stored once). An app loads it with
``MLModelConfiguration.functionName = "<method>"`` (iOS 18 / macOS 15).

Names: inputs keep the method's names. Core ML refuses a name that is both an input and an output of one
function (a stage takes ``hidden`` and returns the next ``hidden``), so every output is written as
``out_<name>``; the manifest's method table records that tensor name and the runner maps it back. Integer
inputs (token ids, lengths, counts) are int32 in the file (Core ML has no int64 inputs); the manifest records
the file's dtypes and the runner casts.

Runs here: Apple's runtime on macOS; elsewhere the MIL evaluator (export.backends.coreml_mil), which reads the
saved program back and evaluates the function op by op (the semantics of the file, not Apple's runtime).
"""

from __future__ import annotations

import platform
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from squeeze_mobile.errors import SqueezeError

from .base import Runner

ON_MACOS = platform.system() == "Darwin"
OUTPUT_PREFIX = "out_"
DEPLOYMENT_TARGET = "iOS18"   # multifunction ML programs and the int4 per-block palettes need iOS 18 / macOS 15
# coremltools' linear+bias fusion indexes the bias's last dimension and fails on the 0-d constants our masks add
# (IndexError in fuse_linear_bias); nothing in these graphs needs it (their linears have no bias)
SKIPPED_PASSES = ("common::fuse_linear_bias",)


def _file_dtype(dtype) -> str:
    name = str(dtype).replace("torch.", "")
    return {"int64": "int32", "float64": "float32", "bool": "int32"}.get(name, name)


def convert_method(method, dest: Path, precision: str = "fp32", weights: str = "fp32") -> None:
    """One method -> a single-function .mlpackage at ``dest`` (inputs by name, outputs ``out_<name>``); ``weights``
    int8 / int4: its weight matrices compressed during the conversion (WEIGHT_TOOLS)."""
    import coremltools as ct
    import torch

    kwargs = method.call_kwargs(method.inputs)
    with torch.no_grad():
        exported = torch.export.export(method.module, (), kwargs, strict=False).run_decompositions({})
    inputs = [ct.TensorType(name=n, shape=tuple(t.shape), dtype=np.dtype(_file_dtype(t.dtype)).type)
              for n, t in method.inputs.items()]
    outputs = [ct.TensorType(name=OUTPUT_PREFIX + n) for n in method.outputs]
    pipeline = ct.PassPipeline.DEFAULT
    pipeline.remove_passes(list(SKIPPED_PASSES))
    # weights are compressed in the conversion's own pipeline (linear_quantize_weights on the saved model would run
    # the default pipeline again, fuse_linear_bias included)
    if weights == "int8":
        from .coreml_backend import int8_weight_config

        pipeline.append_pass("compression::linear_quantize_weights")
        pipeline.set_options("compression::linear_quantize_weights",
                             {"config": int8_weight_config(names=list(weight_matrices(exported)))})
    elif weights == "int4":
        matrices = weight_matrices(exported)
        ragged = [fqn for fqn in matrices.values() if exported.state_dict[fqn].shape[1] % GRID_BLOCK]
        if ragged:
            raise SqueezeError(f"Core ML int4 stores weights in blocks of {GRID_BLOCK} along the input dimension; "
                               f"{ragged[0]} is {list(exported.state_dict[ragged[0]].shape)}: use --weights int8")
        _register_grid_pass()
        pipeline.append_pass(GRID_PASS)
        pipeline.set_options(GRID_PASS, {"four_bit": [n for n, fqn in matrices.items() if not _is_table(fqn)],
                                         "eight_bit": [n for n, fqn in matrices.items() if _is_table(fqn)]})
    model = ct.convert(exported, inputs=inputs, outputs=outputs, convert_to="mlprogram",
                       minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET),
                       compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
                       pass_pipeline=pipeline)
    model.save(str(dest))


GRID_PASS = "squeeze::gguf_grid_weights"
GRID_BLOCK = 32
WEIGHT_TOOLS = {"int8": "coremltools.optimize.coreml linear_quantize_weights pass (per-channel symmetric)",
                "int4": f"squeeze-mobile MIL pass {GRID_PASS} (llama.cpp Q4_1 / Q8_0 grids)"}


def _register_grid_pass() -> None:
    """Registers (once) the MIL pass that stores weight matrices on llama.cpp's grids as iOS 18
    constexpr_blockwise_shift_scale constants, w = scale * (data - offset): ``four_bit`` ones as uint4 codes in
    blocks of 32 along the input dimension with scale d and a FLOAT offset -lo/d (Q4_1: w = d q + lo, exact;
    coremltools' own asymmetric int4 rounds the offset to an integer, up to half a step off for every weight of a
    block: 80% next-token agreement on SmolLM2), ``eight_bit`` ones (the embedding and output head, Q8_0 in the
    GGUF) as int8 symmetric blocks of 32 with scale max/127."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types
    from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass
    from coremltools.converters.mil.mil.passes.helper import block_context_manager
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY, register_pass

    from .weight_grids import asymmetric_4bit, symmetric_8bit

    if GRID_PASS in PASS_REGISTRY:
        return

    class gguf_grid_weights(AbstractGraphPass):
        def __init__(self):
            self.four_bit, self.eight_bit = (), ()

        def apply(self, prog):
            for f in prog.functions.values():
                self._block(f)

        @block_context_manager
        def _block(self, block):
            wanted = set(self.four_bit) | set(self.eight_bit)
            for op in list(block.operations):
                if op.op_type != "const" or op.name not in wanted:
                    continue
                w = np.asarray(op.outputs[0].val, dtype=np.float32)    # [out, in], in a multiple of GRID_BLOCK
                rows, blocks = w.shape[0], w.shape[1] // GRID_BLOCK
                if op.name in self.four_bit:
                    q, d, lo = asymmetric_4bit(w, GRID_BLOCK)
                    data = q.reshape(w.shape).astype(types.nptype_from_builtin(types.uint4))
                    extra = {"offset": (-lo / d).astype(np.float32)}
                else:
                    q, d = symmetric_8bit(w, GRID_BLOCK)
                    data, extra = q.reshape(w.shape), {}
                new = mb.constexpr_blockwise_shift_scale(data=data, scale=d.reshape(rows, blocks), before_op=op,
                                                         name=op.name + "_grid", **extra)
                op.enclosing_block.replace_uses_of_var_after_op(anchor_op=op, old_var=op.outputs[0], new_var=new)
                block.remove_ops([op])

    register_pass(namespace="squeeze")(gguf_grid_weights)


def weight_matrices(exported) -> dict:
    """{const name: parameter name} of the model's weight matrices in a converted program (torch.export's parameter
    placeholders, which coremltools keeps as the const names): projections, MLP, head, embedding. Norm vectors and
    the graph's own tables (RoPE, masks: buffers and lifted constants) are not model weights and stay in float."""
    return {name: fqn for name, fqn in exported.graph_signature.inputs_to_parameters.items()
            if exported.state_dict[fqn].dim() == 2}


def _is_table(fqn: str) -> bool:
    """The token embedding and the output head (vocabulary-sized tables)."""
    return "embed_tokens" in fqn or "lm_head" in fqn


def compressed_weights(path: Path) -> Dict:
    """What the saved program stores compressed: per function, the constexpr (decompress-at-load) ops and the share
    of the linear / matmul / gather constant-weight elements that come from one."""
    import coremltools as ct

    from .coreml_backend import block_producers

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    out = {"functions": {}}
    total_all = quantized_all = 0
    for name, fn in spec.mlProgram.functions.items():
        block = fn.block_specializations[fn.opset]
        producer, numel = block_producers(block)
        total = quantized = constexpr = 0
        for op in block.operations:
            constexpr += op.type.startswith("constexpr_")
            slots = {"linear": ("weight",), "matmul": ("x", "y"), "gather": ("x",)}.get(op.type, ())
            for slot in slots:
                if slot not in op.inputs or not op.inputs[slot].arguments:
                    continue
                var = op.inputs[slot].arguments[0].name
                src = producer.get(var)
                if src is None or not (src.type == "const" or src.type.startswith("constexpr_")) \
                        or not var.startswith("p_"):
                    continue                                    # an activation or a graph table, not a weight
                n = numel.get(var, 0)
                total += n
                quantized += n if src.type.startswith("constexpr_") else 0
        out["functions"][name] = {"constexpr_ops": constexpr, "weight_elements": total, "compressed_elements": quantized}
        total_all += total
        quantized_all += quantized
    out["compressed_weight_fraction"] = round(quantized_all / total_all, 4) if total_all else 0.0
    if not total_all:
        raise SqueezeError(f"{Path(path).name}: no model weight matrix found in the saved program to check for "
                           "compression")
    if quantized_all < total_all:
        raise SqueezeError(f"{Path(path).name}: only {quantized_all / total_all:.0%} of the weight matrices are "
                           "compressed")
    return out


def export_program(program, dest: Path, precision: str = "fp32", progress=None, weights: str = "fp32") -> Dict:
    """Every method of ``program`` as a function of one .mlpackage at ``dest``; returns the method table."""
    import coremltools as ct

    if program.state:
        raise SqueezeError("Core ML programs take the cache as explicit inputs here (the split plan); a program with "
                           "mutable buffers is not converted")
    work = Path(tempfile.mkdtemp(prefix="squeeze-coreml-"))
    try:
        desc = ct.utils.MultiFunctionDescriptor()
        for i, m in enumerate(program.methods):
            if progress:
                progress(f"Core ML: converting {m.name} ({i + 1}/{len(program.methods)})")
            part = work / f"{m.name}.mlpackage"
            convert_method(m, part, precision, weights)
            desc.add_function(str(part), src_function_name="main", target_function_name=m.name)
        desc.default_function_name = program.methods[0].name
        ct.utils.save_multifunction(desc, str(dest))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = {}
    for m in program.methods:
        sig = m.signature()
        for entry in sig["inputs"]:
            entry["dtype"] = _file_dtype(entry["dtype"])
        sig["output_tensors"] = [OUTPUT_PREFIX + n for n in m.outputs]
        table[m.name] = {"graph": m.name, **sig}
    return table


class CoreMLProgramRunner(Runner):
    """The functions of a multifunction .mlpackage by method name: Apple's runtime on macOS (one MLModel per
    function), the MIL evaluator elsewhere (the saved program read once, each function prepared on first use)."""

    def __init__(self, path: Path, methods: Dict[str, Dict], threads: Optional[int] = None):
        from .coreml_mil import EVALUATOR, load_program

        self.path, self.table, self.threads = Path(path), methods, threads or 1
        self.runtime = "Core ML (Apple runtime)" if ON_MACOS else EVALUATOR
        self._program = None if ON_MACOS else load_program(self.path)
        self._functions = {}

    def _function(self, method):
        if method not in self._functions:
            if ON_MACOS:
                import coremltools as ct

                self._functions[method] = ct.models.MLModel(str(self.path), function_name=method)
            else:
                from .coreml_mil import MILProgram

                if method not in self._program.functions:
                    raise SqueezeError(f"{self.path.name} has no function {method!r}; it has "
                                       f"{', '.join(self._program.functions)}")
                self._functions[method] = MILProgram(self.path, function=method, program=self._program)
        return self._functions[method]

    def run(self, method, feed):
        if method not in self.table:
            raise SqueezeError(f"this model has no function {method!r}; it has {', '.join(self.table)}")
        spec = self.table[method]
        missing = [i["name"] for i in spec["inputs"] if i["name"] not in feed]
        if missing:
            raise SqueezeError(f"method {method!r} needs inputs {', '.join(missing)}")
        args = {i["name"]: np.ascontiguousarray(feed[i["name"]], dtype=i["dtype"]) for i in spec["inputs"]}
        fn = self._function(method)
        if ON_MACOS:
            out = fn.predict(args)
        else:
            from .coreml_backend import _blas_threads

            with _blas_threads(self.threads):
                out = fn.run(args, "fp32")
        tensors = spec.get("output_tensors") or [OUTPUT_PREFIX + n for n in spec["outputs"]]
        return {name: np.asarray(out[t]) for name, t in zip(spec["outputs"], tensors)}

    def __call__(self, x):
        return self.run("forward", {"input": x})["logits"]
