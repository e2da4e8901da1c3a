"""ONNX (.onnx) through the torch.onnx dynamo exporter; runs on onnxruntime (CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from squeeze_mobile.errors import SqueezeError, reason_of

from .base import Backend, ExportOptions, Runner, register, versions_of

OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class _FlushDenormals:
    """Flush-to-zero / denormals-are-zero on the CALLING thread for the duration of a run (x86-64 glibc: the MXCSR
    field of fegetenv's environment with FTZ and DAZ set, restored afterwards; a no-op elsewhere). onnxruntime's
    ``session.set_denormal_as_zero`` sets the flags on its pool threads, and the caller runs a share of every
    operator: a softmax over masked scores (exp of very negative inputs ends in denormals) ran ~5x slower there,
    0.8 s of a 2.4 s full-attention prefill over a 2k pack.

    The same option also turns the flags on for good on the thread that CREATES the session; that leaked into every
    later float32 computation of the process (numpy lookups gave other kept rows), so session creation runs inside
    ``preserved()``, which puts the thread's environment back as it found it."""

    MXCSR_OFFSET = 28          # glibc x86-64 fenv_t: the x87 environment (28 bytes), then unsigned int __mxcsr
    FTZ_DAZ = 0x8040

    def __init__(self, flags: int = FTZ_DAZ):
        import ctypes
        import platform
        import sys

        self._flags = flags
        self._libm = None
        if sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64"):
            try:
                self._libm = ctypes.CDLL("libm.so.6")
            except OSError:  # pragma: no cover - not glibc
                self._libm = None
        self._saved = ctypes.create_string_buffer(32)
        self._changed = ctypes.create_string_buffer(32)
        self._set = False

    def preserved(self) -> "_FlushDenormals":
        """A context that changes nothing on entry and restores the calling thread's environment on exit."""
        return _FlushDenormals(flags=0)

    def __enter__(self):
        import ctypes

        self._set = False
        if self._libm is not None and self._libm.fegetenv(self._saved) == 0:
            if not self._flags:
                self._set = True
                return self
            ctypes.memmove(self._changed, self._saved, 32)
            mxcsr = ctypes.c_uint32.from_buffer(self._changed, self.MXCSR_OFFSET)
            mxcsr.value |= self._flags
            del mxcsr
            self._set = self._libm.fesetenv(self._changed) == 0
        return self

    def __exit__(self, *exc):
        if self._set:
            self._libm.fesetenv(self._saved)
        return False


class OnnxRunner(Runner):
    runtime = "onnxruntime (CPU)"

    def __init__(self, path: Path, threads: Optional[int], profile: bool = False, methods: Optional[dict] = None):
        import onnxruntime as ort

        # inputs a method fixes (the branch selector of a multi-graph file): fed by the runner, not the caller
        self._fixed = {name: {i["name"]: np.asarray(i["value"], dtype=i.get("dtype", "int64"))
                              for i in (m.get("inputs") or ()) if isinstance(i, dict) and "value" in i}
                       for name, m in (methods or {}).items()}

        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.set_denormal_as_zero", "1")   # pool threads; the caller: _FlushDenormals
        self._denormals = _FlushDenormals()
        self._profile_dir = None
        if profile:
            import tempfile

            self._profile_dir = tempfile.mkdtemp(prefix="ort_profile_")
            so.enable_profiling = True
            so.profile_file_prefix = str(Path(self._profile_dir) / "ort")
        with self._denormals.preserved():
            self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def operator_profile(self):
        """onnxruntime's profiler: one event per node execution (``<node>_kernel_time``)."""
        import json
        import shutil

        if self._profile_dir is None:
            return super().operator_profile()
        path = self.session.end_profiling()
        try:
            events = json.loads(Path(path).read_text(encoding="utf-8"))
        finally:
            shutil.rmtree(self._profile_dir, ignore_errors=True)
            self._profile_dir = None
        from .onnx_branches import CONTROL_FLOW

        suffix = "_kernel_time"
        # an If's time is its branch's nodes' time, which the profiler lists too: the nodes are the top level
        return [{"op": e.get("args", {}).get("op_name", ""), "node": e["name"][:-len(suffix)], "us": float(e["dur"]),
                 "top_level": e.get("args", {}).get("op_name", "") not in CONTROL_FLOW}
                for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith(suffix)]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self._denormals:
            return self.session.run(None, {self.input_name: x})[0]

    def run(self, method, feed):
        # one graph serves every method (the methods differ in a dynamic axis, or are branches of it); feed it
        # what it declares, and the method's fixed inputs
        fixed = self._fixed.get(method)
        if fixed:
            feed = {**feed, **fixed}
        names = [i.name for i in self.session.get_inputs()]
        missing = [n for n in names if n not in feed]
        if missing:
            raise SqueezeError(f"method {method!r} needs inputs {', '.join(missing)}")
        with self._denormals:
            try:
                outs = self.session.run(None, {n: feed[n] for n in names})
            except Exception as exc:  # noqa: BLE001 - onnxruntime's own types (InvalidArgument, Fail, ...)
                if type(exc).__module__.startswith("onnxruntime") and type(exc).__name__ == "InvalidArgument":
                    # e.g. a graph of another export behind this manifest: inputs of other shapes
                    raise SqueezeError(f"onnxruntime refused the {method} call ({reason_of(exc, 160)}): the .onnx does "
                                       "not take the inputs its manifest describes; re-export it or check the folder "
                                       "with `squeeze verify`") from None
                raise
        return dict(zip((o.name for o in self.session.get_outputs()), outs))


def branch_signatures(groups) -> dict:
    """The manifest's method table of a multi-graph file (onnx_branches.merge_branches): every method feeds the
    merged graph's inputs (those its own graph lacks, e.g. the lookup's inputs for the exact tail, are fed but not
    read), each in the first graph's shape, its own dynamic axes, and ``branch`` fixed to its graph's index."""
    from .onnx_branches import branch_input_entry

    first: dict = {}
    for graph, members in groups:
        for m in members:
            for entry in m.signature(dynamic=True)["inputs"]:
                first.setdefault(entry["name"], entry)
    table = {}
    for k, (graph, members) in enumerate(groups):
        for m in members:
            sig = m.signature(dynamic=True)
            own = {e["name"]: e for e in sig["inputs"]}
            inputs = []
            for name, outer in first.items():
                entry = dict(own.get(name, outer))
                if "dynamic" not in entry:
                    entry["shape"] = outer["shape"]
                inputs.append(entry)
            table[m.name] = {"graph": "main", "branch": k, "inputs": inputs + [branch_input_entry(k)],
                             "outputs": sig["outputs"]}
    return table


WEIGHT_BITS = {"int8": 8, "int4": 4}
WEIGHT_BLOCK = 32


def _quiet_nbits_quantizer():
    """onnxruntime's weight-only quantizer module, imported with the root logger put back as it was (the module
    calls logging.basicConfig(level=INFO) on import) and its per-node INFO lines silenced."""
    import logging

    root = logging.getLogger()
    handlers, root_level = list(root.handlers), root.level
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    root.handlers[:] = handlers
    root.setLevel(root_level)
    logging.getLogger(mnq.__name__).setLevel(logging.CRITICAL)
    return mnq


def _gemm_to_matmul(model) -> int:
    """The exporter writes 2-D linears as Gemm(transB=1), which the quantizer does not take: those become MatMul
    with the weight stored transposed. Returns how many were rewritten."""
    import numpy as np
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    rewritten = 0
    for node in model.graph.node:
        if node.op_type != "Gemm" or len(node.input) != 2 or node.input[1] not in inits:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0:
            continue
        name = node.input[1] + ("__t" if attrs.get("transB", 0) else "")
        if name not in inits:
            w = numpy_helper.to_array(inits[node.input[1]])
            inits[name] = numpy_helper.from_array(np.ascontiguousarray(w.T if attrs.get("transB", 0) else w), name)
            model.graph.initializer.append(inits[name])
        node.op_type = "MatMul"
        del node.attribute[:]
        node.input[1] = name
        rewritten += 1
    return rewritten


def _blocks_8bit(rows):
    """[R, C] float rows as 8-bit symmetric blocks of WEIGHT_BLOCK along C with scale = max|x| / 127 (llama.cpp
    Q8_0's grid; onnxruntime's own symmetric quantizer divides by 128, a different grid): (uint8 codes stored with
    zero point 128 [R, C / block, block], float32 scales [R, C / block])."""
    import numpy as np

    from .weight_grids import symmetric_8bit

    q, scale = symmetric_8bit(rows, WEIGHT_BLOCK)
    return (q.astype(np.int16) + 128).astype(np.uint8), scale


def _head_to_8bit(model, names) -> int:
    """The MatMuls named in ``names`` (constant [K, N] weights) become MatMulNBits in 8-bit symmetric blocks of
    WEIGHT_BLOCK along K (_blocks_8bit), accuracy_level 4. Returns how many were rewritten."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    count = 0
    for i, node in enumerate(model.graph.node):
        if node.name not in names:
            continue
        w = numpy_helper.to_array(inits[node.input[1]])          # [K, N]
        q, scale = _blocks_8bit(w.T)
        base = node.input[1] + "_Q8"
        model.graph.initializer.extend([numpy_helper.from_array(q, base),
                                        numpy_helper.from_array(scale.reshape(-1), base + "_scales")])
        model.graph.node[i].CopyFrom(helper.make_node(
            "MatMulNBits", [node.input[0], base, base + "_scales"], list(node.output), name=node.name,
            domain="com.microsoft", K=w.shape[0], N=w.shape[1], bits=8, block_size=WEIGHT_BLOCK, accuracy_level=4))
        count += 1
    return count


def _layers_to_4bit(model, names, accuracy_level: int) -> int:
    """The MatMuls named in ``names`` (constant [K, N] weights) in 4-bit asymmetric blocks of WEIGHT_BLOCK along K
    (min/max: w = d * q + lo, q in 0..15; llama.cpp Q4_1's grid, so a Q4_1 model is stored exactly), written as
    onnxruntime's fast symmetric MatMulNBits plus the block offsets: w = d * (q - 8) + c with c = lo + 8 d, so
    A @ W = MatMulNBits(A; q, d) + (A @ S) @ C, S [K, K/B] summing A over each block, C [K/B, N] the offsets
    (two small float products, 1/B of the weight). MatMulNBits with float zero points (onnxruntime's HQQ format)
    stores the same values but ran 20-40x slower per one-token product in a micro-benchmark. Returns how many products
    were rewritten."""
    import numpy as np
    from onnx import helper, numpy_helper

    from .weight_grids import asymmetric_4bit

    inits = {i.name: i for i in model.graph.initializer}
    sums = {}
    count = 0
    nodes = []
    for node in model.graph.node:
        if node.name not in names:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)       # [K, N]
        K, N = w.shape
        q, d, lo = asymmetric_4bit(w.T, WEIGHT_BLOCK)                              # [N, K/B, B], [N, K/B] x 2
        packed = q[..., 0::2] | (q[..., 1::2] << 4)                                 # [N, K/B, B/2], low nibble first
        offsets = (lo + 8 * d).astype(np.float32)                                   # [N, K/B]
        base = node.input[1] + "_Q4"
        if K not in sums:
            s_mat = np.kron(np.eye(K // WEIGHT_BLOCK, dtype=np.float32), np.ones((WEIGHT_BLOCK, 1), np.float32))
            sums[K] = f"block_sum_{K}"
            model.graph.initializer.append(numpy_helper.from_array(s_mat, sums[K]))
        model.graph.initializer.extend([numpy_helper.from_array(packed, base),
                                        numpy_helper.from_array(d.reshape(-1), base + "_scales"),
                                        numpy_helper.from_array(np.ascontiguousarray(offsets.T), base + "_offsets")])
        a, y = node.input[0], node.output[0]
        nodes += [helper.make_node("MatMulNBits", [a, base, base + "_scales"], [y + "_q4"], name=node.name,
                                   domain="com.microsoft", K=K, N=N, bits=4, block_size=WEIGHT_BLOCK,
                                   accuracy_level=accuracy_level),
                  helper.make_node("MatMul", [a, sums[K]], [y + "_block_sums"], name=node.name + "_block_sums"),
                  helper.make_node("MatMul", [y + "_block_sums", base + "_offsets"], [y + "_offsets"],
                                   name=node.name + "_offsets"),
                  helper.make_node("Add", [y + "_q4", y + "_offsets"], [y], name=node.name + "_add_offsets")]
        count += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return count


def _embedding_to_8bit(model, tables) -> int:
    """Every Gather from a constant table in ``tables`` becomes GatherBlockQuantized over int8 rows, symmetric
    blocks of WEIGHT_BLOCK along the row (_blocks_8bit; onnxruntime's own quantizer writes this op in 4 bits only).
    Returns how many gathers were rewritten."""
    import numpy as np
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    done = {}
    count = 0
    for i, node in enumerate(model.graph.node):
        if node.op_type != "Gather" or node.input[0] not in tables:
            continue
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
        table = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
        if axis != 0 or table.ndim != 2 or table.shape[1] % WEIGHT_BLOCK:
            continue
        if node.input[0] not in done:
            q, scale = _blocks_8bit(table)
            base = node.input[0] + "_Q8"
            model.graph.initializer.extend([
                numpy_helper.from_array(q.reshape(table.shape), base), numpy_helper.from_array(scale, base + "_scales"),
                numpy_helper.from_array(np.full(scale.shape, 128, np.uint8), base + "_zero_points")])
            done[node.input[0]] = base
        base = done[node.input[0]]
        model.graph.node[i].CopyFrom(helper.make_node(
            "GatherBlockQuantized", [base, node.input[1], base + "_scales", base + "_zero_points"], list(node.output),
            name=node.name, domain="com.microsoft", bits=8, block_size=WEIGHT_BLOCK, gather_axis=0, quantize_axis=1))
        count += 1
    return count


def _tied_tables(model, tables, products) -> dict:
    """{Gather table name: output name of the matrix product whose constant [K, N] weight is exactly that table
    transposed} -- a tied embedding (SmolLM2's head IS its embedding), found on the float weights."""
    import numpy as np
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    tied = {}
    for table in sorted(tables):
        t = inits[table]
        for node in products:
            w = inits[node.input[1]]
            if list(w.dims) == list(t.dims)[::-1] and \
                    np.array_equal(numpy_helper.to_array(w).T, numpy_helper.to_array(t)):
                tied[table] = node.output[0]
                break
    return tied


def _gather_tied_from_head(model, tied: dict) -> set:
    """A tied table stored once: every Gather over a table in ``tied`` whose product became an 8-bit MatMulNBits
    (blocks of WEIGHT_BLOCK, no zero-point input: codes centred on 128) reads that product's [V, H / block, block]
    codes with GatherBlockQuantized (quantize_axis 2), the scales through a Reshape, and its rows are reshaped back
    to [..., H]: the embedding takes the head's 8-bit values, one copy of the vocabulary table in the file.
    Returns the tables rewritten."""
    import numpy as np
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    heads = {}
    for node in model.graph.node:
        if node.op_type != "MatMulNBits" or len(node.input) != 3 or node.input[1] not in inits:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("bits") == 8 and attrs.get("block_size") == WEIGHT_BLOCK:
            heads[node.output[0]] = node
    done, out = set(), []
    for node in list(model.graph.node):
        head = heads.get(tied.get(node.input[0])) if node.op_type == "Gather" and node.input else None
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0) if head else None
        if head is None or axis != 0:
            out.append(node)
            continue
        codes, scales = head.input[1], head.input[2]
        rows, blocks, block = (int(d) for d in inits[codes].dims)
        base = node.name or node.output[0]
        zp_name = codes + "_zero_points_3d"
        if zp_name not in inits:
            inits[zp_name] = numpy_helper.from_array(np.full((rows, blocks, 1), 128, np.uint8), zp_name)
            model.graph.initializer.append(inits[zp_name])
        out += [
            helper.make_node("Constant", [], [base + "/scale_shape"], name=base + "/scale_shape",
                             value=helper.make_tensor(base + "/scale_shape", 7, [3], [rows, blocks, 1])),
            helper.make_node("Reshape", [scales, base + "/scale_shape"], [base + "/scales"], name=base + "/scales"),
            helper.make_node("GatherBlockQuantized", [codes, node.input[1], base + "/scales", zp_name],
                             [base + "/blocks"], name=node.name, domain="com.microsoft", bits=8,
                             block_size=WEIGHT_BLOCK, gather_axis=0, quantize_axis=2),
            # [..., H / block, block] -> [..., H]: the gathered rows' last two axes joined
            helper.make_node("Constant", [], [base + "/row_shape"], name=base + "/row_shape",
                             value=helper.make_tensor(base + "/row_shape", 7, [1], [blocks * block])),
            helper.make_node("Shape", [node.input[1]], [base + "/ids_shape"], name=base + "/ids_shape"),
            helper.make_node("Concat", [base + "/ids_shape", base + "/row_shape"], [base + "/out_shape"], axis=0,
                             name=base + "/out_shape"),
            helper.make_node("Reshape", [base + "/blocks", base + "/out_shape"], list(node.output), name=base + "/rows"),
        ]
        done.add(node.input[0])
    if done:
        del model.graph.node[:]
        model.graph.node.extend(out)
    return done


def _constant(model, inits: dict, name: str):
    """An initializer's array, or (through Reshape nodes of initializers) the initializer it is a view of."""
    from onnx import numpy_helper

    if name in inits:
        return numpy_helper.to_array(inits[name])
    for node in model.graph.node:
        if node.op_type == "Reshape" and node.output[0] == name:
            return _constant(model, inits, node.input[0])
    raise KeyError(name)


def half_storage(model, min_elements: int = 4096) -> dict:
    """Float32 initializers of the main graph whose every value is exactly a float16 (the quantized weights' block
    scales and offsets: a Q4_1 / Q8_0 GGUF stores them in float16) are stored as float16 and cast back by a Cast node
    at the top of the graph, which onnxruntime folds into a float32 initializer when the session is created (same
    values, same kernels and prepacking; the file carries half the bytes). Tensors that would change are left as
    they are. Returns {"tensors": n, "bytes_saved": b}."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    kept, casts, saved = [], [], 0
    for init in graph.initializer:
        if init.data_type != 1 or int(np.prod(init.dims)) < min_elements:
            kept.append(init)
            continue
        a = numpy_helper.to_array(init)
        half = a.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), a, equal_nan=False) or not np.isfinite(half).all():
            kept.append(init)
            continue
        stored = init.name + "__float16"
        kept.append(numpy_helper.from_array(half, stored))
        casts.append(helper.make_node("Cast", [stored], [init.name], name=init.name + "__to_float", to=1))
        saved += a.nbytes - half.nbytes
    if casts:
        del graph.initializer[:]
        graph.initializer.extend(kept)
        nodes = casts + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)
    return {"tensors": len(casts), "bytes_saved": int(saved)}


def dequantized_error(model, originals: dict) -> dict:
    """The largest |dequantized - original| over the weights each quantized operator stores (MatMulNBits,
    GatherBlockQuantized), read back from the written tensors: {op type/bits: max abs error}. ``originals``: the
    float weights by the operator's output name, rows as the operator stores them ([N, K] / the table)."""
    import numpy as np
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    worst = {}
    for node in model.graph.node:
        out = node.output[0].removesuffix("_q4")                              # _layers_to_4bit's product
        if node.op_type == "GatherBlockQuantized" and out not in originals:   # _gather_tied_from_head's rows, reshaped
            out = next((n.output[0] for n in model.graph.node if n.op_type == "Reshape" and n.input[0] == out), out)
        if out not in originals or node.op_type not in ("MatMulNBits", "GatherBlockQuantized"):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        bits, block = attrs["bits"], attrs["block_size"]
        data = node.input[1] if node.op_type == "MatMulNBits" else node.input[0]
        zp_name = node.input[3] if len(node.input) > 3 and node.input[3] else None
        raw = numpy_helper.to_array(inits[data]).astype(np.uint8)
        ref = originals[out]
        rows = ref.shape[0]
        if bits == 4:
            raw = np.stack([raw & 15, raw >> 4], -1)
        q = raw.reshape(rows, -1).astype(np.float32)
        scale = _constant(model, inits, node.input[2]).astype(np.float32).reshape(rows, -1)
        # no zero-point input: the op's default 2^(bits-1); the 8-bit tables store theirs one per block
        zp = (np.full(scale.shape, 2 ** (bits - 1), np.float32) if zp_name is None
              else numpy_helper.to_array(inits[zp_name]).astype(np.float32).reshape(rows, -1))
        n_blocks = scale.shape[1]
        q = q[:, :n_blocks * block].reshape(rows, n_blocks, block)
        deq = (q - zp[..., None]) * scale[..., None]
        if node.op_type == "MatMulNBits" and data + "_offsets" in inits:     # _layers_to_4bit's block offsets
            deq = deq + numpy_helper.to_array(inits[data + "_offsets"]).T[..., None]
        deq = deq.reshape(rows, -1)
        deq = deq[:, :ref.shape[1]]
        worst[node.op_type + f"/{bits}"] = max(worst.get(node.op_type + f"/{bits}", 0.0),
                                               float(np.abs(deq - ref).max()))
    return worst


# MatMulNBits accuracy_level of the int4 layers: 1 = float activations (the blocks dequantized in the kernel), 4 = int8
# activations. Measured on the real SmolLM2 int4 .onnx (3.8k context, 2 threads, interleaved medians): 20-token
# question prefill 82 -> 88 ms, 118-token 185 -> 211 ms, decode 15.7 -> 16.6 ms/token; answers a held-out case level
# 4 loses (quantize_weights' docstring).
INT4_LAYER_ACCURACY_LEVEL = 1


def quantize_weights(model, weights: str):
    """Weight-only quantization into onnxruntime's MatMulNBits for every matrix product with a constant weight
    (products with a thin constant stay float: RMSNorm's mean as a product with a [hidden, 1] vector, whose int8
    activations would round the variance).

    - int8 (onnxruntime's own quantizer): symmetric blocks of 32 along the input dimension, accuracy_level 4 (int8
      products on CPUs with dot-product instructions); the embedding table in 8 bits too (below).
    - int4: the decoder layers' linears in 4-bit ASYMMETRIC blocks of 32 (min/max: value = scale * q + min; run
      as symmetric MatMulNBits plus the blocks' offsets, _layers_to_4bit), the output head (a product over the
      vocabulary: its weight is the embedding table's shape) and the embedding table in 8-bit symmetric blocks of
      32 with scale max/127. That is the layout of llama.cpp's Q4_1 / Q8_0 files, so a model loaded from such a
      GGUF (the default SmolLM2) is stored exactly, with no second rounding; symmetric 4-bit blocks re-round those
      values and lose next-token agreement (bench/weight_schemes.py). The 4-bit layers run at accuracy_level 1
      (float activations: onnxruntime's 4-bit kernels dequantize the blocks; accuracy_level 4 rounds every
      activation to int8 and lost pass keys the float products answer, e.g. a held-out UUID case and the 7.6k pass key,
      for 6-14% less time at 3.8k context), the 8-bit head at accuracy_level 4 (its float path is several times slower:
      decode 85 ms/token instead of 15 at 2k).
    - Either way a tied embedding (the head's weight is the table transposed, exactly) reads the head's 8-bit codes
      and scales (_gather_tied_from_head): one copy of the vocabulary table in the file.
    Returns (model, record); the record has the largest |dequantized - float| weight error per operator, read back
    from the written tensors."""
    import collections

    import numpy as np
    import onnx
    from onnx import numpy_helper

    from squeeze_mobile.errors import SqueezeError

    if weights not in WEIGHT_BITS:
        raise SqueezeError(f"--weights must be fp32, {', '.join(WEIGHT_BITS)} for onnx; got {weights!r}")
    rewritten = _gemm_to_matmul(model)
    inits = {i.name: i for i in model.graph.initializer}
    tables = {n.input[0] for n in model.graph.node if n.op_type == "Gather" and n.input[0] in inits
              and len(inits[n.input[0]].dims) == 2}
    vocab = {inits[t].dims[0] for t in tables}
    products = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits
                and len(inits[n.input[1]].dims) == 2 and min(inits[n.input[1]].dims) > 1
                and inits[n.input[1]].dims[0] % WEIGHT_BLOCK == 0]
    originals = {n.output[0]: numpy_helper.to_array(inits[n.input[1]]).T.astype(np.float32) for n in products}
    heads = [n.name for n in products if weights == "int4" and inits[n.input[1]].dims[1] in vocab]
    layers = [n.name for n in products if n.name not in heads]
    tied = _tied_tables(model, tables, products)
    for n in model.graph.node:
        if n.op_type == "Gather" and n.input[0] in tables:
            originals[n.output[0]] = numpy_helper.to_array(inits[n.input[0]]).astype(np.float32)
    if weights == "int8":   # onnxruntime's own quantizer on exactly these products
        mnq = _quiet_nbits_quantizer()
        eight = mnq.DefaultWeightOnlyQuantConfig(block_size=WEIGHT_BLOCK, is_symmetric=True, accuracy_level=4, bits=8,
                                                 op_types_to_quantize=("MatMul",), quant_axes=(("MatMul", 0),))
        quantizer = mnq.MatMulNBitsQuantizer(model, algo_config=eight, nodes_to_include=layers,
                                             nodes_to_exclude=[n.name for n in model.graph.node if n.name not in set(layers)])
        quantizer.process()
        model = quantizer.model.model
    else:
        _layers_to_4bit(model, set(layers), accuracy_level=INT4_LAYER_ACCURACY_LEVEL)
        _head_to_8bit(model, set(heads))
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    # the embedding in 8 bits too: a tied table reads the head's codes (stored once), any other in Q8_0 blocks
    shared = _gather_tied_from_head(model, tied)
    _embedding_to_8bit(model, tables - shared)
    used = {i for n in model.graph.node for i in n.input}
    kept = [i for i in model.graph.initializer if i.name in used]   # drop the float originals of quantized weights
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    if not ops.get("MatMulNBits"):
        raise SqueezeError("onnxruntime's weight quantizer found no matrix product with a constant weight")
    # (_layers_to_4bit's block sums and offsets are float by design, 1/32 of their weights: not counted)
    float_weights = sum(int(np.prod(i.dims)) for i in kept if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2
                        and min(i.dims) >= WEIGHT_BLOCK and not i.name.endswith("_offsets")
                        and not i.name.startswith("block_sum_"))
    if weights == "int8":
        scheme = {"layers": "8-bit symmetric blocks of 32, accuracy_level 4", "head": "as the layers",
                  "embedding": "the head's 8-bit codes and scales (a tied table, stored once), GatherBlockQuantized"
                  if shared else "8-bit symmetric blocks of 32 (Q8_0's grid), GatherBlockQuantized"}
    else:
        scheme = {"layers": "4-bit asymmetric blocks of 32 (min/max; llama.cpp Q4_1's grid) as symmetric MatMulNBits "
                            f"+ per-block offsets, accuracy_level {INT4_LAYER_ACCURACY_LEVEL} (float activations)",
                  "head": "8-bit symmetric blocks of 32, accuracy_level 4 (llama.cpp Q8_0's layout)",
                  "embedding": "8-bit symmetric blocks of 32, GatherBlockQuantized" +
                               (" over the head's codes and scales (a tied table, stored once)" if shared else "")}
    tool = ("onnxruntime.quantization.matmul_nbits_quantizer" if weights == "int8" else
            "squeeze-mobile's block writer for onnxruntime's MatMulNBits / GatherBlockQuantized")
    return model, {"tool": tool, "weights": weights,
                   "bits": WEIGHT_BITS[weights], "block_size": WEIGHT_BLOCK, "symmetric": weights == "int8",
                   "accuracy_level": 4 if weights == "int8" else {"layers": INT4_LAYER_ACCURACY_LEVEL, "head": 4},
                   "scheme": scheme, "matmul_nbits": ops["MatMulNBits"],
                   "gather_block_quantized": ops.get("GatherBlockQuantized", 0), "gemm_rewritten": rewritten,
                   "tied_table_stored_once": bool(shared),
                   "float_matrix_elements_left": float_weights,
                   "max_abs_weight_error": dequantized_error(model, originals)}


# onnxruntime's calibration method for each activation observer (export.quantize.OBSERVERS)
ORT_CALIBRATION = {"minmax": "MinMax", "histogram": "Entropy"}
FLOAT_CONV_OPS = ("Conv", "FusedConv", "NchwcConv")


def _quiet_ort_logging():
    """onnxruntime.quantization calls logging.basicConfig on import: put the root logger back afterwards."""
    import contextlib
    import logging

    @contextlib.contextmanager
    def guard():
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        try:
            yield
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)

    return guard()


def preprocess_for_quantization(model, folder: Path) -> Path:
    """onnxruntime's quant_pre_process (shape inference + the graph optimizations it expects) on the float
    model; returns the path of the pre-processed float model (what the int8 model's tensor names refer to)."""
    import onnx

    with _quiet_ort_logging():
        from onnxruntime.quantization.shape_inference import quant_pre_process

    src, pre = folder / "float.onnx", folder / "float_pre.onnx"
    onnx.save(model, str(src))
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    return pre


class _Batches:
    """onnxruntime's CalibrationDataReader over a list of input arrays."""

    def __init__(self, arrays):
        self._it = iter([{INPUT_NAME: np.ascontiguousarray(a)} for a in arrays])

    def get_next(self):
        return next(self._it, None)

    def __iter__(self):  # qdq_loss_debug.collect_activations iterates the reader
        return iter(self.get_next, None)

    def rewind(self):  # pragma: no cover - not used by MinMax/Entropy calibration
        pass


def int8_kernel_check(path: Path) -> dict:
    """What onnxruntime (CPU EP, all optimizations) turns the QDQ graph into on THIS machine: convolutions must
    become QLinearConv; a Conv left in float (DQ -> Conv -> Q, seen with int8 activations on x86) would run fp32."""
    import collections
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="ort_opt_") as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        so.log_severity_level = 3  # the NCHWc warning about hardware-specific saved graphs
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        ops = collections.Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    float_convs = sum(ops.get(o, 0) for o in FLOAT_CONV_OPS)
    return {"checked_on": "onnxruntime CPUExecutionProvider, ORT_ENABLE_ALL, this machine",
            "int8_conv": ops.get("QLinearConv", 0), "float_conv": float_convs,
            "int8_matmul": ops.get("QGemm", 0) + ops.get("QLinearMatMul", 0) + ops.get("MatMulInteger", 0),
            "float_ops_left": {o: n for o, n in sorted(ops.items()) if o in ("ReduceMean", "Conv", "FusedConv",
                                                                             "NchwcConv", "Gemm", "MatMul")},
            "ops": dict(sorted(ops.items()))}


def quantize_static_qdq(model, dest: Path, opts: ExportOptions) -> dict:
    """Static int8 with onnxruntime's own tool: quant_pre_process, then quantize_static in QDQ format, weights int8
    per-channel symmetric, activations uint8 (asymmetric) -- on x86 onnxruntime fuses U8S8 QDQ convolutions into
    QLinearConv, while int8 (S8S8) activations left several convolutions in fp32 (checked on the optimized graph:
    int8_kernel_check)."""
    import tempfile

    import onnx
    import torch

    from export import quantize as q

    with _quiet_ort_logging():
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    observer = opts.extra.get("observer", q.DEFAULT_OBSERVER)
    method = ORT_CALIBRATION.get(observer)
    if method is None:
        raise SqueezeError(f"unknown activation observer {observer!r}; use one of {', '.join(ORT_CALIBRATION)}")
    calibration = [np.asarray(x) for x in q.calibration_tensors(opts)]
    with tempfile.TemporaryDirectory(prefix="ort_quant_") as tmp:
        pre = preprocess_for_quantization(model, Path(tmp))
        out = Path(tmp) / "int8.onnx"
        quantize_static(str(pre), str(out), _Batches(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, method))
        qmodel = onnx.load(str(out))
    qmodel.producer_version = torch.__version__.split("+")[0]
    onnx.checker.check_model(qmodel)
    with open(dest, "wb") as fh:
        fh.write(qmodel.SerializeToString(deterministic=True))
    kernels = int8_kernel_check(dest)
    if kernels["float_conv"]:
        raise SqueezeError(f"onnx int8: {kernels['float_conv']} convolution(s) stay fp32 in onnxruntime's optimized graph "
                           f"on this machine (only {kernels['int8_conv']} became QLinearConv)")
    import collections

    ops = collections.Counter(n.op_type for n in qmodel.graph.node)
    return {"opset": OPSET, "nodes": len(qmodel.graph.node),
            "quantization": {"tool": "onnxruntime.quantization (quant_pre_process + quantize_static, QDQ)",
                             **q.settings(opts, activations="uint8 per-tensor asymmetric (U8S8)",
                                          ort_calibrate_method=method),
                             "qdq_nodes": {"QuantizeLinear": ops.get("QuantizeLinear", 0),
                                           "DequantizeLinear": ops.get("DequantizeLinear", 0)},
                             "int8_kernels": kernels}}


@register
class OnnxBackend(Backend):
    name = "onnx"
    suffix = ".onnx"
    runtime = OnnxRunner.runtime
    precisions = ("fp32", "fp16", "int8")

    def artifact_name(self, stem, opts):
        return f"{stem}_{opts.precision}.onnx"

    def export(self, module, example, dest: Path, opts: ExportOptions):
        import onnx
        import torch

        program = torch.onnx.export(
            module, (example,), dynamo=True, opset_version=OPSET,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], external_data=False, verbose=False,
        )
        model = program.model_proto
        if opts.precision == "int8":
            return quantize_static_qdq(model, dest, opts)
        if opts.precision == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            # fp16 weights and activations inside; the graph keeps fp32/uint8 I/O for the app
            import onnx_ir

            model = convert_float_to_float16(model, keep_io_types=True)
            # the converter appends the input cast nodes at the end of the graph: restore topological order
            ir_model = onnx_ir.serde.deserialize_model(model)
            ir_model.graph.sort()
            model = onnx_ir.serde.serialize_model(ir_model)
        model.producer_version = torch.__version__.split("+")[0]
        onnx.checker.check_model(model)
        with open(dest, "wb") as fh:
            fh.write(model.SerializeToString(deterministic=True))
        return {"opset": OPSET, "nodes": len(model.graph.node)}

    def load(self, path, threads=None):
        return OnnxRunner(path, threads)

    def load_program(self, path, methods, threads=None, profile=False):
        return OnnxRunner(path, threads, profile, methods)

    def export_program(self, program, dest: Path, opts: ExportOptions):
        """One ONNX graph for all methods of one module: the widest method with its dynamic axes symbolic (the
        decoder's prefill and decode are the same graph at T = max_prompt and T = 1). Methods of other modules
        (the decoder's exact prompt tail) are further graphs in the same file, branches of an If on the input
        ``branch`` that share the weights (onnx_branches)."""
        import onnx

        from squeeze_mobile.errors import SqueezeError

        groups = program.graphs()
        if groups is None:
            raise SqueezeError(f"onnx holds one graph per module; methods {', '.join(program.names)} of one module "
                               "differ in more than a dynamic axis")
        models, quantized = [], {}
        for graph, _ in groups:
            model, record = self._graph_model(graph, opts.weights)
            models.append(model)
            for key, value in (record or {}).items():
                quantized.setdefault(key, value)
        if len(models) == 1:
            model = models[0]
            methods = {m.name: {"graph": "main", **m.signature(dynamic=True)} for m in program.methods}
        else:
            from .onnx_branches import merge_branches

            model = merge_branches(models)
            methods = branch_signatures(groups)
        if quantized:   # block scales / offsets that are exactly float16 (a GGUF's are) stored in half the bytes
            quantized["float16_storage"] = half_storage(model)
        onnx.checker.check_model(model)
        with open(dest, "wb") as fh:
            fh.write(model.SerializeToString(deterministic=True))
        from .onnx_branches import walk_nodes

        return {"opset": OPSET, "nodes": sum(1 for _ in walk_nodes(model.graph)),
                **({"graphs": len(models)} if len(models) > 1 else {}),
                **({"weight_quantization": quantized} if quantized else {}), "methods": methods}

    def _graph_model(self, graph, weights: str):
        """One method's graph as a ModelProto (its dynamic axes symbolic), weights quantized as asked."""
        import torch

        with torch.no_grad():
            exported = torch.onnx.export(
                graph.module, (), kwargs=graph.call_kwargs(graph.inputs), dynamo=True, opset_version=OPSET,
                input_names=list(graph.inputs), output_names=list(graph.outputs), external_data=False, verbose=False,
                dynamic_shapes=graph.dynamic_shapes(),
            )
        model = exported.model_proto
        model.producer_version = torch.__version__.split("+")[0]
        quantized = None
        if weights != "fp32":
            model, quantized = quantize_weights(model, weights)
        return model, quantized

    def tool_versions(self):
        return versions_of("torch", "onnx", "onnxscript", "onnxruntime")
