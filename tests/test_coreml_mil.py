"""The Core ML MIL evaluator (export/backends/coreml_mil.py): conv and pooling against PyTorch on random shapes,
fp16 accumulation against a scalar reference, ops read back from a saved ML program, a reduced SqueezeTime
.mlpackage against PyTorch on real video (and the same file with one conv's weights edited on disk, and with
int8 weights), the legacy .mlmodel refused, and an op the evaluator lacks named."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from export.backends import coreml_mil as cm
from squeeze_mobile.errors import SqueezeError

RNG = np.random.default_rng(0)


def _rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


# ----------------------------------------------------------------------------------- conv / pool vs PyTorch
# (spatial input, C_in, C_out, kernel, strides, custom pad [b0, a0, b1, a1, ...], dilations, groups)
CONV_CASES = [
    ((9, 11), 6, 8, (3, 3), (1, 1), [1, 1, 1, 1], (1, 1), 1),
    ((9, 11), 6, 8, (3, 2), (2, 3), [0, 2, 1, 0], (1, 1), 1),           # asymmetric padding, unequal strides
    ((13, 12), 4, 6, (3, 3), (1, 2), [2, 2, 0, 1], (2, 3), 1),          # dilation
    ((10, 10), 8, 8, (2, 2), (2, 2), [0, 0, 0, 0], (1, 1), 8),          # depthwise 2x2/2 (SqueezeTime's downsample)
    ((10, 9), 4, 8, (3, 3), (1, 1), [1, 1, 1, 1], (1, 1), 4),           # depthwise with channel multiplier 2
    ((8, 8), 6, 9, (5, 3), (2, 1), [2, 2, 1, 1], (1, 2), 3),            # grouped, stride, dilation
    ((7, 9), 5, 7, (1, 1), (2, 2), [1, 0, 0, 1], (1, 1), 1),            # 1x1 with stride and padding
    ((17,), 3, 5, (4,), (3,), [2, 1], (2,), 1),                          # 1-D
    ((5, 6, 7), 4, 6, (3, 2, 3), (1, 2, 2), [1, 1, 0, 1, 1, 1], (1, 1, 2), 2),  # 3-D, grouped
]


@pytest.mark.parametrize("sizes,c_in,c_out,kernel,strides,pad,dilations,groups", CONV_CASES)
def test_conv_matches_torch(sizes, c_in, c_out, kernel, strides, pad, dilations, groups):
    x, w, b = _rand(2, c_in, *sizes), _rand(c_out, c_in // groups, *kernel), _rand(c_out)
    ours = cm.conv(x, w, b, strides, "custom", pad, dilations, groups)
    torch_pad = [p for i in reversed(range(len(sizes))) for p in (pad[2 * i], pad[2 * i + 1])]  # F.pad: last axis first
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(sizes)]
    ref = fn(F.pad(torch.from_numpy(x), torch_pad), torch.from_numpy(w), torch.from_numpy(b), stride=strides,
             dilation=dilations, groups=groups).numpy()
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_same_padding_follows_the_mil_rule():
    # 'same': ceil(in / stride) outputs, the odd padding element after; 'same_lower': before
    assert cm.spatial_padding("same", [8, 11], [3, 3], [2, 2], [1, 1]) == [0, 1, 1, 1]
    assert cm.spatial_padding("same_lower", [8, 11], [3, 3], [2, 1], [1, 2]) == [1, 0, 2, 2]
    assert cm.spatial_padding("valid", [8, 11], [3, 3], [2, 2], [1, 1]) == [0, 0, 0, 0]
    x, w = _rand(1, 3, 8, 11), _rand(4, 3, 3, 3)
    ref = F.conv2d(F.pad(torch.from_numpy(x), [1, 1, 0, 1]), torch.from_numpy(w), stride=2).numpy()
    np.testing.assert_allclose(cm.conv(x, w, None, [2, 2], "same"), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel,stride,pad,ceil", [((3, 3), (2, 2), 1, False), ((3, 3), (2, 2), 1, True),
                                                     ((2, 3), (2, 1), 0, True), ((3, 2), (1, 2), (1, 1), True)])
def test_pools_match_torch(kernel, stride, pad, ceil):
    x = _rand(2, 5, 11, 10)
    p = (pad, pad) if isinstance(pad, int) else pad
    mil_pad = [p[0], p[0], p[1], p[1]]
    t = torch.from_numpy(x)
    np.testing.assert_array_equal(cm.pool(x, "max", kernel, stride, "custom", mil_pad, ceil),
                                  F.max_pool2d(t, kernel, stride, p, ceil_mode=ceil).numpy())
    for exclude in (False, True):
        ours = cm.pool(x, "avg", kernel, stride, "custom", mil_pad, ceil, exclude_padding_from_average=exclude)
        ref = F.avg_pool2d(t, kernel, stride, p, ceil_mode=ceil, count_include_pad=not exclude).numpy()
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_fp16_accumulation_matches_a_scalar_reference():
    a, b = _rand(3, 13), _rand(13, 5)
    a16, b16 = a.astype(np.float16), b.astype(np.float16)
    block = cm.FP16_BLOCK
    expect = np.zeros((3, 5), np.float16)
    for i in range(3):
        for j in range(5):
            acc = None
            for k0 in range(0, 13, block):  # exact products summed per block, the running sum kept in fp16
                part = np.float16(sum(float(a16[i, k]) * float(b16[k, j]) for k in range(k0, min(k0 + block, 13))))
                acc = part if acc is None else np.float16(np.float32(acc) + np.float32(part))
            expect[i, j] = acc
    np.testing.assert_array_equal(cm.dot(a, b, "fp16"), expect.astype(np.float32))
    # a long sum drifts in fp16, not in fp32
    ones = np.full((1, 6000), 0.1, np.float32)
    assert abs(float(cm.dot(ones, np.ones((6000, 1), np.float32), "fp32")[0, 0]) - 600.0) < 0.01
    assert abs(float(cm.dot(ones, np.ones((6000, 1), np.float32), "fp16")[0, 0]) - 600.0) > 0.5


def test_round_to_declared_dtype_overflows_like_fp16():
    out = cm.round_to(np.array([1.0001, 70000.0, -1e6], np.float32), "fp16")
    assert out.dtype == np.float32 and out[0] == np.float32(np.float16(1.0001)) and np.isinf(out[1:]).all()


# ---------------------------------------------------------------------------------- saved ML programs
@pytest.fixture(scope="module")
def ct():
    import coremltools

    return coremltools


def _save_program(ct, prog, dest: Path, precision="fp32") -> Path:
    model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                       compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
                       pass_pipeline=ct.PassPipeline.EMPTY, skip_model_load=True)
    model.save(str(dest))
    return dest


def test_ops_read_back_from_a_saved_program(ct, tmp_path):
    from coremltools.converters.mil import Builder as mb

    w1, w2, lw, lb = _rand(8, 6, 3, 3), _rand(8, 6, 3, 3), _rand(5, 8), _rand(5)
    mean, var, gamma, beta = _rand(8), np.abs(_rand(8)) + 0.5, _rand(8), _rand(8)
    scale = np.float32(0.05)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 6, 8, 11))], opset_version=ct.target.iOS17)
    def prog(x):
        same = mb.conv(x=x, weight=w1, strides=[2, 2], pad_type="same", name="same")
        lower = mb.conv(x=x, weight=w2, strides=[2, 1], dilations=[1, 2], pad_type="same_lower", name="lower")
        maxp = mb.max_pool(x=same, kernel_sizes=[3, 3], strides=[2, 2], pad_type="custom", pad=[1, 1, 1, 1],
                           ceil_mode=True, name="maxp")
        avgp = mb.avg_pool(x=lower, kernel_sizes=[3, 2], strides=[2, 2], pad_type="custom", pad=[1, 1, 1, 1],
                           ceil_mode=True, exclude_padding_from_average=True, name="avgp")
        bn = mb.batch_norm(x=same, mean=mean, variance=var, gamma=gamma, beta=beta, epsilon=1e-3)
        act = mb.silu(x=bn, name="act")
        pooled = mb.reduce_mean(x=act, axes=[2, 3], keep_dims=False)
        logits = mb.linear(x=pooled, weight=lw, bias=lb)
        probs = mb.softmax(x=logits, axis=-1, name="probs")
        q = mb.quantize(input=act, scale=scale, output_dtype="int8")
        dq = mb.dequantize(input=q, scale=scale, name="dq")
        return maxp, avgp, probs, dq

    pkg = _save_program(ct, prog, tmp_path / "zoo.mlpackage")
    program = cm.MILProgram(pkg)
    assert {"conv", "max_pool", "avg_pool", "batch_norm", "silu", "reduce_mean", "linear", "softmax", "quantize",
            "dequantize"} <= set(program.op_counts)
    x = _rand(1, 6, 8, 11)
    out = program.run({"x": x})
    t = torch.from_numpy(x)
    # pads derived by hand from the MIL rule: same (H 0/1, W 1/1), same_lower with dilation (H 1/0, W 2/2)
    same = F.conv2d(F.pad(t, [1, 1, 0, 1]), torch.from_numpy(w1), stride=2)
    lower = F.conv2d(F.pad(t, [2, 2, 1, 0]), torch.from_numpy(w2), stride=(2, 1), dilation=(1, 2))
    np.testing.assert_allclose(out["maxp"], F.max_pool2d(same, 3, 2, 1, ceil_mode=True).numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["avgp"], F.avg_pool2d(lower, (3, 2), 2, 1, ceil_mode=True, count_include_pad=False).numpy(),
                               rtol=1e-4, atol=1e-4)
    act = F.silu(F.batch_norm(same, *map(torch.from_numpy, (mean, var, gamma, beta)), eps=1e-3))
    probs = torch.softmax(F.linear(act.mean(dim=(2, 3)), torch.from_numpy(lw), torch.from_numpy(lb)), -1)
    np.testing.assert_allclose(out["probs"], probs.numpy(), rtol=1e-4, atol=1e-5)
    dq = torch.clamp(torch.round(act / float(scale)), -128, 127) * float(scale)
    np.testing.assert_allclose(out["dq"], dq.numpy(), atol=1e-5)


def test_tensor_and_elementwise_ops_read_back(ct, tmp_path):
    from coremltools.converters.mil import Builder as mb

    g, b, idx = _rand(5), _rand(5), np.array([2, 0, -1], np.int32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3, 4, 5)), mb.TensorSpec(shape=(2, 5, 6))],
                opset_version=ct.target.iOS17)
    def prog(x, y):
        t = mb.transpose(x=x, perm=[0, 2, 1, 3])                                     # 2 x 4 x 3 x 5
        r = mb.reshape(x=t, shape=[2, -1, 5])                                         # 2 x 12 x 5
        ln = mb.layer_norm(x=r, axes=[-1], gamma=g, beta=b, epsilon=1e-5)
        mm = mb.reshape(x=mb.matmul(x=ln, y=y), shape=[0, -1, 6])                      # 2 x 12 x 6 (0: kept)
        mt = mb.matmul(x=y, y=ln, transpose_x=True, transpose_y=True, name="mt")      # 2 x 6 x 12
        s = mb.slice_by_index(x=mm, begin=[0, 1, 0], end=[2, 12, 4], stride=[1, 2, 1], end_mask=[True, False, False])
        e = mb.expand_dims(x=s, axes=[-1])
        c = mb.concat(values=[e, mb.mul(x=e, y=2.0)], axis=3)
        sq = mb.squeeze(x=mb.reduce_max(x=c, axes=[3], keep_dims=True), axes=[3])
        p = mb.pad(x=sq, pad=[1, 2], mode="reflect")
        gth = mb.gather(x=p, indices=idx, axis=2)
        act = mb.add(x=mb.tanh(x=gth), y=mb.gelu(x=mb.clip(x=gth, alpha=-1.0, beta=0.5), mode="TANH_APPROXIMATION"))
        out = mb.real_div(x=mb.maximum(x=act, y=-0.25), y=mb.reduce_sum(x=mb.abs(x=act), axes=[1], keep_dims=True),
                          name="out")
        return out, mt

    pkg = _save_program(ct, prog, tmp_path / "tensor_ops.mlpackage")
    x, y = _rand(2, 3, 4, 5), _rand(2, 5, 6)
    out = cm.MILProgram(pkg).run({"x": x, "y": y})
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    ln = F.layer_norm(tx.permute(0, 2, 1, 3).reshape(2, 12, 5), (5,), torch.from_numpy(g), torch.from_numpy(b), 1e-5)
    mm = ln @ ty
    e = mm[:, 1:12:2, 0:4].unsqueeze(-1)
    sq = torch.cat([e, e * 2], 3).amax(dim=3)
    p = F.pad(sq, [1, 2], mode="reflect")
    gth = p[:, :, [2, 0, p.shape[2] - 1]]
    act = torch.tanh(gth) + F.gelu(gth.clamp(-1.0, 0.5), approximate="tanh")
    expect = torch.maximum(act, torch.tensor(-0.25)) / act.abs().sum(dim=1, keepdim=True)
    np.testing.assert_allclose(out["out"], expect.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["mt"], (ty.transpose(1, 2) @ ln.transpose(1, 2)).numpy(), rtol=1e-4, atol=1e-5)


def test_an_op_without_implementation_is_named(ct, tmp_path):
    from coremltools.converters.mil import Builder as mb

    from export.verify import verify_artifact

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 7))], opset_version=ct.target.iOS17)
    def prog(x):
        return mb.cumsum(x=x, axis=1, name="c")

    pkg = _save_program(ct, prog, tmp_path / "cumsum.mlpackage")
    with pytest.raises(cm.CannotEvaluate, match=r"cannot evaluate op cumsum \(c\) yet"):
        cm.MILProgram(pkg)

    class Stub:  # a backend whose runner is the MIL evaluator: verification says "not run", it does not fail
        name, runtime = "coreml", cm.EVALUATOR

        def cannot_run_here(self, extras=None):
            return None

        def load(self, path, threads=None):
            return cm.MILProgram(path)

    res = verify_artifact(Stub(), pkg, None, None, "fp32")
    assert res["numeric"] is False and res["status"].startswith("not run (the MIL evaluator cannot evaluate op cumsum")


def test_legacy_mlmodel_is_structural_only(tmp_path):
    import platform

    from export.backends.coreml_backend import LEGACY_NOT_RUN, CoreMLBackend

    (tmp_path / "old.mlmodel").write_bytes(b"\0")
    with pytest.raises(cm.CannotEvaluate, match="legacy neural-network .mlmodel: it cannot be read back as a MIL program"):
        cm.MILProgram(tmp_path / "old.mlmodel")
    backend = CoreMLBackend()
    if platform.system() != "Darwin":
        assert backend.cannot_run_here({"container": "mlmodel", "file": "old.mlmodel"}) == LEGACY_NOT_RUN
        assert backend.cannot_run_here({"container": "mlpackage", "file": "new.mlpackage"}) is None
        assert backend.runtime == cm.EVALUATOR == "MIL program evaluated on Linux (semantics of the saved file), " \
                                                  "not Apple's runtime"


# ------------------------------------------------------------------- a real SqueezeTime artifact on real video
@pytest.fixture(scope="module")
def squeezetime_fp16(tmp_path_factory, real_video):
    """A reduced SqueezeTime (T=4, width 0.25, 64 px, HMDB51 head) as an fp16 .mlpackage + its verification set."""
    from conftest import randomize_bn

    import squeezetime
    from export.backends import ExportOptions, get_backend
    from export.verify import build_verification_set
    from squeezetime.rewrite import InputSpec, export_ready

    torch.manual_seed(3)
    model = randomize_bn(squeezetime.build_model("hmdb51", frames=4, width=0.25), seed=3).eval()
    spec = InputSpec(frames=4, size=64)
    dest = tmp_path_factory.mktemp("coreml_mil") / "small_fp16.mlpackage"
    get_backend("coreml").export(export_ready(model, spec), spec.example(seed=0), dest, ExportOptions(spec=spec, precision="fp16"))
    return dest, spec, build_verification_set(model, spec, real_video)


def _verify(pkg, vset, spec):
    from export.backends.coreml_backend import evaluate_mil

    return evaluate_mil(pkg, vset, spec, "fp16")  # the MIL evaluator on any OS (macOS's cross-check path)


def test_real_fp16_artifact_against_pytorch_on_real_video(squeezetime_fp16):
    pkg, spec, vset = squeezetime_fp16
    res = _verify(pkg, vset, spec)
    assert res["status"] == "pass" and res["numeric"] is True and res["failures"] == []
    assert res["inputs"] == 8 and sum("bikes.mp4" in p["input"] for p in res["per_input"]) == 6
    assert res["runtime"] == cm.EVALUATOR and res["evaluator"]["mil_ops"]["conv"] == 152
    bracket = res["accumulation_bracket"]
    # fp32 accumulation: ~1e-3 relative (fp16 weights and activations); fp16 accumulation: several times more
    assert res["rel_l2"] == bracket["fp32"]["rel_l2"] < 3e-3 and res["psnr_db"] > 55
    assert bracket["fp32"]["rel_l2"] < bracket["fp16"]["rel_l2"] < 2e-2 and bracket["fp16"]["block"] == cm.FP16_BLOCK
    assert res["top1_agreement"] == 1.0 and bracket["fp16"]["top1_agreement"] == 1.0
    # the pass rule: the error to PyTorch lies inside the spread fp16 accumulation alone makes
    assert res["rel_l2"] < bracket["spread_rel_l2"] == res["thresholds"]["rel_l2"]


def _weight_blob(pkg: Path, name: str):
    """(byte offset, byte count) of a const's data inside the package's weight.bin, from the saved spec."""
    import coremltools

    spec = coremltools.utils.load_spec(str(pkg))
    fn = spec.mlProgram.functions["main"]
    for op in fn.block_specializations[fn.opset].operations:
        if op.type == "const" and op.outputs[0].name == name:
            meta = op.attributes["val"].blobFileValue.offset
            data = (pkg / "Data/com.apple.CoreML/weights/weight.bin").read_bytes()
            sentinel, dtype, size, offset = struct.unpack_from("<IIQQ", data, meta)
            assert sentinel == 0xDEADBEEF and dtype == 1  # an fp16 blob
            return offset, size
    raise AssertionError(f"no const {name}")


def test_weights_edited_in_the_saved_file_fail_verification(squeezetime_fp16, tmp_path):
    pkg, spec, vset = squeezetime_fp16
    broken = tmp_path / "broken.mlpackage"
    shutil.copytree(pkg, broken)
    program = cm.MILProgram(pkg)
    # the first 7x7 conv (a CTL module's glo_conv): its kernels flipped, as a correlation/convolution mix-up would
    step = next(s for s in program.steps if s.kind == "conv" and program.constants[s.inputs["weight"]].shape[-1] == 7)
    shape = program.constants[step.inputs["weight"]].shape
    offset, size = _weight_blob(pkg, step.inputs["weight"])
    blob = broken / "Data/com.apple.CoreML/weights/weight.bin"
    data = bytearray(blob.read_bytes())
    w = np.frombuffer(bytes(data[offset:offset + size]), np.float16).reshape(shape)
    data[offset:offset + size] = np.ascontiguousarray(w[:, :, ::-1, ::-1]).tobytes()
    blob.write_bytes(bytes(data))
    edited = cm.MILProgram(broken)
    assert np.array_equal(edited.constants[step.inputs["weight"]], w[:, :, ::-1, ::-1].astype(np.float32))
    res = _verify(broken, vset, spec)
    assert res["status"] == "fail"
    assert any("exceeds the fp32/fp16-accumulation spread" in f for f in res["failures"])
    # the fixed fp16 tolerance alone (PSNR >= 30 dB, same top-1) would have let this through
    assert res["psnr_db"] > 30 and res["top1_agreement"] == 1.0
    assert res["rel_l2"] > 2 * res["accumulation_bracket"]["spread_rel_l2"]


def test_int8_weight_ops_are_evaluated(ct, tmp_path):
    """int8 weights as coremltools' linear_quantize_weights writes them for iOS 17 (constexpr_affine_dequantize, a
    per-output-channel scale and zero point) feeding a conv and a linear of an fp16 program."""
    from coremltools.converters.mil import Builder as mb

    wq = RNG.integers(-127, 128, (8, 6, 3, 3), dtype=np.int8)
    wscale, wzero = (RNG.random(8) * 0.02 + 0.01).astype(np.float16), RNG.integers(-3, 4, 8, dtype=np.int8)
    lq = RNG.integers(-127, 128, (4, 8), dtype=np.int8)
    lscale = np.float16(0.03)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 6, 10, 10))], opset_version=ct.target.iOS17)
    def prog(x):
        x16 = mb.cast(x=x, dtype="fp16")
        w = mb.constexpr_affine_dequantize(quantized_data=wq, scale=wscale, zero_point=wzero, axis=0, name="w")
        lw = mb.constexpr_affine_dequantize(quantized_data=lq, scale=lscale, zero_point=np.int8(0), axis=0, name="lw")
        y = mb.relu(x=mb.conv(x=x16, weight=w, pad_type="custom", pad=[1, 1, 1, 1]))
        y = mb.linear(x=mb.reduce_mean(x=y, axes=[2, 3], keep_dims=False), weight=lw)
        return mb.cast(x=y, dtype="fp32", name="out")

    pkg = _save_program(ct, prog, tmp_path / "int8.mlpackage", precision="fp16")
    program = cm.MILProgram(pkg)
    assert program.quantized and program.op_counts["constexpr_affine_dequantize"] == 2 and program.computes_in_fp16
    # the decompressed weights: (q - zero point) * scale per output channel, in fp16, equal to coremltools' own
    w = ((wq.astype(np.float32) - wzero.reshape(8, 1, 1, 1)) * wscale.astype(np.float32).reshape(8, 1, 1, 1))
    np.testing.assert_array_equal(program.constants["w"], w.astype(np.float16).astype(np.float32))
    for op in cm.load_program(pkg).functions["main"].operations:
        if op.op_type == "constexpr_affine_dequantize":
            assert np.array_equal(program.constants[op.outputs[0].name], op.materialized_val_inference().astype(np.float32))
    x = _rand(1, 6, 10, 10)
    x16 = torch.from_numpy(x).half().float()
    y = F.relu(F.conv2d(x16, torch.from_numpy(program.constants["w"]), padding=1)).mean(dim=(2, 3))
    ref = F.linear(y, torch.from_numpy(program.constants["lw"])).numpy()
    for acc in ("fp32", "fp16"):
        out = program.run({"x": x}, acc)["out"]
        np.testing.assert_allclose(out, ref, rtol=2e-2, atol=2e-2)
        assert np.abs(out - ref).max() > 0  # fp16 rounding shows


def test_bad_input_shape_is_one_line(squeezetime_fp16):
    pkg, _, _ = squeezetime_fp16
    program = cm.MILProgram(pkg)
    with pytest.raises(SqueezeError, match=r"input 'input' has shape \[1, 3, 4, 32, 32\]; the ML program takes \[1, 3, 4, 64, 64\]"):
        program.run({"input": np.zeros((1, 3, 4, 32, 32), np.float32)})
