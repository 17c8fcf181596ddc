"""The ONNX adapter against real onnx and onnxruntime: bit-exact round trips, forward passes, hand-built models, errors."""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest

import layoutconv
from layoutconv import (
    ConfigError,
    Conv1D,
    FileFormatError,
    LayoutError,
    ShapeError,
    UnsafeFileError,
    UnsupportedError,
)
from layoutconv.verify import compare

from conftest import need, np_dtype

DTYPES = ["float16", "bfloat16", "float32", "float64"]
MODES = ["zeros", "reflect", "replicate", "circular"]
# name -> (padding, stride, dilation): static and length-dependent spellings, with and without the Pad sub-graph
PADDINGS = {
    "valid": ("valid", 1, 1),
    "explicit_asym_s2": (((3, 1),), 2, 1),
    "causal_d2": ("causal", 1, 2),
    "same_upper_s1_d1": ("same_upper", 1, 1),
    "same_upper_s3_d1": ("same_upper", 3, 1),
    "same_upper_s1_d2": ("same_upper", 1, 2),
    "same_lower_s2_d3": ("same_lower", 2, 3),
    "same_upper_s3_d2": ("same_upper", 3, 2),
}
RULES = {"valid": "valid", "same_upper": "same_upper", "same_lower": "same_lower", "causal": "causal", "explicit_3_1": ((3, 1),)}
# Forward comparisons use layoutconv.verify.compare: torch.testing.assert_close's per-dtype
# (rtol, atol) applied to the magnitude of the summed terms (see layoutconv/verify.py).


@pytest.fixture(scope="module")
def A():
    need("onnx", "onnxruntime", "ml_dtypes")
    from layoutconv.adapters import onnx_adapter

    return onnx_adapter


@pytest.fixture(scope="module")
def onnx(A):
    import onnx

    return onnx


def make_conv(rng, dtype="float32", out=6, in_per_group=4, k=3, groups=2, bias=True, **kw) -> Conv1D:
    dt = np_dtype(dtype)
    kernel = rng.standard_normal((out, in_per_group, k)).astype(dt)
    b = rng.standard_normal(out).astype(dt) if bias else None
    return Conv1D(kernel, b, groups=groups, **kw)


def odd_length(conv: Conv1D, extra: int) -> int:
    """An odd length, not a multiple of the stride, long enough for reflect padding."""
    (span,), (s,) = conv.receptive_field, conv.stride
    n = 2 * span + extra
    while n % 2 == 0 or (s > 1 and n % s == 0):
        n += 1
    return n


def check_forward(A, onnx, conv: Conv1D, lengths, seed: int = 0) -> None:
    """Emit the model, check it, run it on every length, compare elementwise with the reference."""
    model = A.to_native(conv)
    onnx.checker.check_model(model, full_check=True)
    rng = np.random.default_rng(seed)
    for n in lengths:
        x = rng.standard_normal((2, conv.in_channels, n)).astype(conv.dtype)
        y = A.run(model, x)
        assert y.shape == (2, conv.out_channels, conv.output_length(n))
        result = compare(conv, x, y, "onnx")
        assert result.passed, f"L={n}: {result}"


# -- an independent oracle: a direct loop, with the pads and padding modes written out here --------
def spec_pads(rule, length: int, stride: int, dilation: int, k: int) -> tuple[int, int]:
    """The ONNX Conv spec's pads, written independently of Conv1D.pads."""
    span = dilation * (k - 1) + 1
    if isinstance(rule, tuple):
        return rule[0]
    if rule == "valid":
        return 0, 0
    if rule == "causal":
        return span - 1, 0
    out = -(-length // stride)
    total = max(0, (out - 1) * stride + span - length)
    return (total // 2, total - total // 2) if rule == "same_upper" else (total - total // 2, total // 2)


def source_index(i: int, length: int, mode: str) -> int | None:
    """Which input position padded position ``i`` (in input coordinates) copies; None means zero."""
    if 0 <= i < length:
        return i
    if mode == "zeros":
        return None
    if mode == "reflect":  # mirror without repeating the edge: -1 -> 1, L -> L - 2
        return -i if i < 0 else 2 * (length - 1) - i
    if mode == "replicate":
        return min(max(i, 0), length - 1)
    return i % length  # circular


def loop_conv(x, w, b, *, stride, dilation, groups, begin, end, mode) -> np.ndarray:
    x, w = x.astype(np.float64), w.astype(np.float64)
    n, c, length = x.shape
    o, cg, k = w.shape
    span = dilation * (k - 1) + 1
    out_len = (length + begin + end - span) // stride + 1
    y = np.zeros((n, o, out_len))
    for f in range(o):
        group = f // (o // groups)
        for t in range(out_len):
            acc = np.zeros(n) if b is None else np.full(n, float(b[f]))
            for ci in range(cg):
                for tap in range(k):
                    src = source_index(stride * t + dilation * tap - begin, length, mode)
                    if src is not None:
                        acc += w[f, ci, tap] * x[:, group * cg + ci, src]
            y[:, f, t] = acc
    return y


# -- round trips ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding", list(PADDINGS), ids=list(PADDINGS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_is_bit_exact(A, onnx, rng, dtype, padding, mode):
    pad, stride, dilation = PADDINGS[padding]
    conv = make_conv(rng, dtype, padding=pad, stride=stride, dilation=dilation, padding_mode=mode)
    model = A.to_native(conv)
    onnx.checker.check_model(model, full_check=True)
    stored = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    assert stored["W"].dtype == conv.kernel.dtype and stored["W"].tobytes() == conv.kernel.tobytes()
    assert stored["B"].dtype == conv.bias.dtype and stored["B"].tobytes() == conv.bias.tobytes()
    back = A.from_native(model)
    assert back.same_weights(conv)
    assert back.equivalent(conv, spatial=odd_length(conv, 5))
    assert back == conv  # the padding rule's name and the mode come back too


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding", list(PADDINGS), ids=list(PADDINGS))
def test_round_trip_without_the_name_hint_is_equivalent(A, rng, padding, mode):
    pad, stride, dilation = PADDINGS[padding]
    conv = make_conv(rng, padding=pad, stride=stride, dilation=dilation, padding_mode=mode)
    model = A.to_native(conv)
    for node in model.graph.node:
        node.doc_string = ""
    back = A.from_native(model)  # read from the graph's structure alone
    for length in (9, 10, 11, 12, 23):
        assert back.equivalent(conv, spatial=length) or back.pads(length) == conv.pads(length) == ((0, 0),)


def test_conv_inside_a_larger_graph(A, onnx, rng):
    """The Pad sub-graph reads the length of an intermediate tensor, not of the graph input."""
    conv = make_conv(rng, padding="same_lower", stride=2, dilation=3, padding_mode="replicate")
    model = A.to_native(conv)
    for node in model.graph.node:
        node.input[:] = ["x_relu" if i == "x" else i for i in node.input]
    model.graph.node.insert(0, onnx.helper.make_node("Relu", ["x"], ["x_relu"], name="relu"))
    onnx.checker.check_model(model, full_check=True)
    assert A.from_native(model) == conv
    x = rng.standard_normal((2, 8, 21)).astype(np.float32)
    assert compare(conv, np.maximum(x, 0), A.run(model, x), "onnx").passed


def test_round_trip_through_a_file(A, rng, tmp_path, onnx):
    conv = make_conv(rng, "bfloat16", k=5, padding="same_lower", stride=2, dilation=2, padding_mode="circular")
    path = tmp_path / "conv.onnx"
    onnx.save(A.to_native(conv), path)
    assert A.from_native(path) == conv
    assert A.from_native(str(path)) == conv


def test_emitted_model_shape_and_opsets(A, onnx, rng):
    conv = make_conv(rng, padding="same_upper", stride=3, dilation=2, padding_mode="reflect")
    model = A.to_native(conv)
    (x,), (y,) = model.graph.input, model.graph.output
    assert [d.dim_param or d.dim_value for d in x.type.tensor_type.shape.dim] == ["N", 8, "L"]
    assert [d.dim_param or d.dim_value for d in y.type.tensor_type.shape.dim] == ["N", 6, "L_out"]
    assert model.opset_import[0].version == 17
    assert A.to_native(conv.replace(padding_mode="circular")).opset_import[0].version == 19
    assert A.to_native(conv.replace(kernel=conv.kernel.astype(np_dtype("bfloat16")), bias=None)).opset_import[0].version == 22
    assert A.to_native(conv, opset=21).opset_import[0].version == 21


@pytest.mark.parametrize("dilation", [1, 2])
def test_same_padding_never_uses_auto_pad_with_dilation(A, rng, dilation):
    conv = make_conv(rng, padding="same_upper", stride=2, dilation=dilation)
    autos = [a.s for n in A.to_native(conv).graph.node for a in n.attribute if a.name == "auto_pad"]
    assert autos == ([b"SAME_UPPER"] if dilation == 1 else [b"VALID"])


# -- forward passes -------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [2, 3], ids=["k2", "k3"])
@pytest.mark.parametrize("dilation", [1, 2, 3], ids=["d1", "d2", "d3"])
@pytest.mark.parametrize("stride", [1, 2, 3], ids=["s1", "s2", "s3"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("rule", list(RULES))
def test_forward_matches_reference(A, onnx, rng, rule, mode, stride, dilation, k):
    conv = make_conv(rng, k=k, padding=RULES[rule], stride=stride, dilation=dilation, padding_mode=mode)
    check_forward(A, onnx, conv, [odd_length(conv, 3), odd_length(conv, 14)])


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("groups", [1, 2, 6], ids=["g1", "g2", "depthwise"])
@pytest.mark.parametrize("k", range(1, 8), ids=[f"k{k}" for k in range(1, 8)])
@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_forward_kernel_sizes_and_groups(A, onnx, rng, mode, k, groups, bias):
    conv = make_conv(rng, out=6, in_per_group=6 // groups, k=k, groups=groups, bias=bias,
                     padding="same_lower", stride=2, dilation=2, padding_mode=mode)  # fmt: skip
    check_forward(A, onnx, conv, [odd_length(conv, 2)])


# (out, in_channels, kernel, groups): sizes that coincide, so a wrong axis order cannot go unnoticed
AMBIGUOUS = {
    "k_eq_filters": (5, 3, 5, 1),
    "in_eq_filters": (4, 4, 3, 1),
    "k_eq_in": (6, 3, 3, 1),
    "all_five": (5, 5, 5, 1),
    "all_four_g2": (4, 4, 4, 2),
}


@pytest.mark.parametrize("shape", list(AMBIGUOUS.values()), ids=list(AMBIGUOUS))
def test_forward_ambiguous_shapes_against_direct_loop(A, rng, shape):
    out, cin, k, groups = shape
    conv = make_conv(rng, out=out, in_per_group=cin // groups, k=k, groups=groups, padding="causal", stride=2)
    x = rng.standard_normal((2, cin, 13)).astype(np.float32)
    y = A.run(A.to_native(conv), x)
    expected = loop_conv(x, conv.kernel, conv.bias, stride=2, dilation=1, groups=groups, begin=k - 1, end=0, mode="zeros")
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)  # float32 vs a float64 loop, fan-in <= 25


# Oracle cases: the pads are computed in the test from the ONNX spec, padding modes by index mapping.
ORACLE = {
    "reflect_same_upper_s2_d2": ("same_upper", "reflect", 2, 2, 3),
    "replicate_same_lower_s3_d1": ("same_lower", "replicate", 3, 1, 4),
    "circular_explicit": (((3, 1),), "circular", 1, 2, 3),
    "reflect_causal_d3": ("causal", "reflect", 1, 3, 2),
    "zeros_same_upper_s3_d2": ("same_upper", "zeros", 3, 2, 4),
}


@pytest.mark.parametrize("case", list(ORACLE.values()), ids=list(ORACLE))
def test_forward_against_direct_loop(A, rng, case):
    rule, mode, stride, dilation, k = case
    conv = make_conv(rng, k=k, padding=rule, stride=stride, dilation=dilation, padding_mode=mode)
    model = A.to_native(conv)
    for length in (17, 22):  # one model, two lengths: the pads are recomputed at run time
        x = rng.standard_normal((2, 8, length)).astype(np.float32)
        begin, end = spec_pads(rule, length, stride, dilation, k)
        expected = loop_conv(x, conv.kernel, conv.bias, stride=stride, dilation=dilation, groups=2,
                             begin=begin, end=end, mode=mode)  # fmt: skip
        y = A.run(model, x)
        assert y.shape == expected.shape
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_one_model_serves_many_lengths(A, rng):
    conv = make_conv(rng, k=3, padding="same_upper", stride=3, dilation=2, padding_mode="reflect")
    model = A.to_native(conv)
    for length in (11, 12, 13, 31):
        x = rng.standard_normal((1, 8, length)).astype(np.float32)
        y = A.run(model, x)
        assert y.shape == (1, 6, math.ceil(length / 3))
        assert compare(conv, x, y, "onnx").passed


def test_float16_runs_within_tolerance(A, onnx, rng):
    conv = make_conv(rng, "float16", out=8, in_per_group=16, k=5, groups=1, padding="same_upper", stride=2)
    check_forward(A, onnx, conv, [41])


@pytest.mark.parametrize("dtype", ["float64", "bfloat16"])
def test_dtypes_onnxruntime_cannot_run(A, rng, dtype):
    conv = make_conv(rng, dtype, padding="same_upper")
    x = rng.standard_normal((1, 8, 15)).astype(np_dtype(dtype))
    with pytest.raises(UnsupportedError, match=dtype):
        A.run(A.to_native(conv), x)
    result = layoutconv.verify(conv, frameworks=["onnx"]).results[0]
    assert result.status == "unsupported"


def test_public_api_and_verify(A, rng):
    conv = make_conv(rng, padding="causal", dilation=2, padding_mode="replicate")
    assert layoutconv.from_onnx(layoutconv.to_onnx(conv)) == conv
    assert layoutconv.verify(conv, frameworks=["onnx"]).passed


# -- models built by hand (and by another exporter) -----------------------------------------------
def hand_model(onnx, kernel, bias=None, opset=17, nodes=(), data="x", weights_as_constants=False, **attrs):
    """A model with one Conv node reading ``data``; ``nodes`` come before it (e.g. a Pad)."""
    h = onnx.helper
    elem = h.np_dtype_to_tensor_dtype(kernel.dtype)
    tensors = [onnx.numpy_helper.from_array(kernel, "W")]
    if bias is not None:
        tensors.append(onnx.numpy_helper.from_array(bias, "B"))
    pre = list(nodes)
    inits = []
    if weights_as_constants:
        pre += [h.make_node("Constant", [], [t.name], value=t) for t in tensors]
    else:
        inits = tensors
    conv = h.make_node("Conv", [data, "W"] + (["B"] if bias is not None else []), ["y"], name="the_conv", **attrs)
    rank = kernel.ndim
    graph = h.make_graph(
        pre + [conv], "hand",
        [h.make_tensor_value_info("x", elem, ["N", kernel.shape[1] * attrs.get("group", 1)] + ["L"] * (rank - 2))],
        [h.make_tensor_value_info("y", elem, ["N", kernel.shape[0]] + ["L_out"] * (rank - 2))], inits,
    )  # fmt: skip
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
    model.ir_version = h.find_min_ir_version_for(model.opset_import)
    return model


# auto_pad, pads, stride -> the padding layoutconv must read
HAND = {
    "notset_pads": (dict(pads=[2, 1]), 2, ((2, 1),)),
    "notset_default": (dict(), 1, ((0, 0),)),
    "valid": (dict(auto_pad="VALID"), 3, "valid"),
    "same_upper_s1": (dict(auto_pad="SAME_UPPER"), 1, "same_upper"),
    "same_upper_s2": (dict(auto_pad="SAME_UPPER"), 2, "same_upper"),
    "same_lower_s1": (dict(auto_pad="SAME_LOWER"), 1, "same_lower"),
    "same_lower_s3": (dict(auto_pad="SAME_LOWER"), 3, "same_lower"),
}


@pytest.mark.parametrize("case", list(HAND.values()), ids=list(HAND))
def test_hand_built_conv_matches_onnxruntime(A, onnx, rng, case):
    attrs, stride, padding = case
    kernel = rng.standard_normal((4, 3, 4)).astype(np.float32)  # even kernel: same_upper != same_lower
    bias = rng.standard_normal(4).astype(np.float32)
    model = hand_model(onnx, kernel, bias, strides=[stride], kernel_shape=[4], **attrs)
    onnx.checker.check_model(model, full_check=True)
    conv = A.from_native(model)
    assert conv.padding == padding and conv.stride == (stride,) and conv.padding_mode == "zeros"
    assert conv.same_weights(Conv1D(kernel, bias))
    for length in (16, 19):
        x = rng.standard_normal((2, 3, length)).astype(np.float32)
        y_ort = A.run(model, x)  # onnxruntime's own output of the hand-built model
        assert compare(conv, x, y_ort, "onnx").passed
        begin, end = spec_pads(padding, length, stride, 1, 4)
        expected = loop_conv(x, kernel, bias, stride=stride, dilation=1, groups=1, begin=begin, end=end, mode="zeros")
        np.testing.assert_allclose(y_ort, expected, rtol=1e-5, atol=1e-5)


def test_hand_built_weights_in_constant_nodes(A, onnx, rng):
    kernel = rng.standard_normal((6, 2, 3)).astype(np.float16)
    bias = rng.standard_normal(6).astype(np.float16)
    model = hand_model(onnx, kernel, bias, weights_as_constants=True, group=3, dilations=[2], pads=[1, 3])
    conv = A.from_native(model)
    assert conv.same_weights(Conv1D(kernel, bias, groups=3))
    assert (conv.groups, conv.dilation, conv.padding) == (3, (2,), ((1, 3),))
    x = rng.standard_normal((2, 6, 15)).astype(np.float16)
    assert compare(conv, x, A.run(model, x), "onnx").passed


def test_hand_built_same_with_dilation_is_read_but_onnxruntime_refuses_it(A, onnx, rng):
    """onnxruntime quirk: auto_pad SAME_* with a dilation > 1 fails at run time (why to_native never writes it)."""
    kernel = rng.standard_normal((4, 3, 3)).astype(np.float32)
    model = hand_model(onnx, kernel, auto_pad="SAME_UPPER", dilations=[2])
    assert A.from_native(model) == Conv1D(kernel, padding="same_upper", dilation=2)
    with pytest.raises(ShapeError, match="Dilation not supported"):
        A.run(model, rng.standard_normal((1, 3, 11)).astype(np.float32))


@pytest.mark.parametrize("onnx_mode,mode", [("reflect", "reflect"), ("edge", "replicate"), ("constant", "zeros")])
def test_hand_built_pad_then_conv(A, onnx, rng, onnx_mode, mode):
    h = onnx.helper
    kernel = rng.standard_normal((4, 3, 3)).astype(np.float32)
    pads = onnx.numpy_helper.from_array(np.array([0, 0, 2, 0, 0, 1], np.int64), "p")
    pad = h.make_node("Pad", ["x", "pads_c"], ["xp"], mode=onnx_mode, name="the_pad")
    model = hand_model(onnx, kernel, nodes=[h.make_node("Constant", [], ["pads_c"], value=pads), pad], data="xp",
                       pads=[1, 0] if mode == "zeros" else [0, 0])  # fmt: skip
    conv = A.from_native(model)
    assert conv.padding == (((3, 1),) if mode == "zeros" else ((2, 1),)) and conv.padding_mode == mode
    x = rng.standard_normal((2, 3, 9)).astype(np.float32)
    assert compare(conv, x, A.run(model, x), "onnx").passed


def test_hand_built_pad_with_attributes_opset10(A, onnx, rng):
    h = onnx.helper
    kernel = rng.standard_normal((4, 3, 2)).astype(np.float32)
    pad = h.make_node("Pad", ["x"], ["xp"], mode="reflect", pads=[0, 0, 1, 0, 0, 3])
    model = hand_model(onnx, kernel, opset=10, nodes=[pad], data="xp")
    conv = A.from_native(model)
    assert (conv.padding, conv.padding_mode) == (((1, 3),), "reflect")
    x = rng.standard_normal((2, 3, 10)).astype(np.float32)
    assert compare(conv, x, A.run(model, x), "onnx").passed


def test_a_lying_padding_hint_is_ignored(A, rng):
    conv = make_conv(rng, padding=((1, 1),))
    model = A.to_native(conv)
    model.graph.node[-1].doc_string = "layoutconv: padding_mode=reflect padding=causal"
    assert A.from_native(model) == conv


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate"])
def test_torch_exported_model(A, rng, mode):
    need("torch")
    import io

    import torch

    module = torch.nn.Conv1d(4, 6, 3, stride=2, dilation=2, padding=2, groups=2, padding_mode=mode).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(1, 4, 15),), buf, dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "N", 2: "L"}})  # fmt: skip
    import onnx

    conv = A.from_native(onnx.load_from_string(buf.getvalue()))
    expected = Conv1D(module.weight.detach().numpy(), module.bias.detach().numpy(), stride=2, dilation=2,
                      groups=2, padding=2, padding_mode=mode)  # fmt: skip
    assert conv == expected
    x = rng.standard_normal((2, 4, 19)).astype(np.float32)
    with torch.no_grad():
        y_torch = module(torch.from_numpy(x)).numpy()
    assert compare(conv, x, y_torch, "torch").passed


# -- errors ---------------------------------------------------------------------------------------
def two_conv_model(onnx, rng):
    h = onnx.helper
    k1 = onnx.numpy_helper.from_array(rng.standard_normal((4, 3, 3)).astype(np.float32), "W1")
    k2 = onnx.numpy_helper.from_array(rng.standard_normal((5, 4, 2)).astype(np.float32), "W2")
    nodes = [h.make_node("Conv", ["x", "W1"], ["h"], name="first"), h.make_node("Conv", ["h", "W2"], ["y"], name="second")]
    graph = h.make_graph(nodes, "two", [h.make_tensor_value_info("x", 1, ["N", 3, "L"])],
                         [h.make_tensor_value_info("y", 1, None)], [k1, k2])  # fmt: skip
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def test_two_conv_nodes_need_node(A, onnx, rng):
    model = two_conv_model(onnx, rng)
    with pytest.raises(ConfigError, match="several Conv nodes.*'first', 'second'"):
        A.from_native(model)
    assert A.from_native(model, node="second").out_channels == 5
    assert A.from_native(model, node=0).out_channels == 4
    assert A.from_native(model, node="-1").out_channels == 5  # an index as typed on the command line
    with pytest.raises(ConfigError, match="No Conv node matches"):
        A.from_native(model, node="third")
    with pytest.raises(ConfigError, match="No Conv node matches"):
        A.from_native(model, node=2)


def test_missing_initializer(A, onnx, rng):
    model = hand_model(onnx, rng.standard_normal((4, 3, 3)).astype(np.float32))
    del model.graph.initializer[:]
    with pytest.raises(FileFormatError, match="'the_conv'.*missing initializer"):
        A.from_native(model)


def test_weight_fed_at_run_time(A, onnx, rng):
    model = hand_model(onnx, rng.standard_normal((4, 3, 3)).astype(np.float32))
    del model.graph.initializer[:]
    model.graph.input.append(onnx.helper.make_tensor_value_info("W", 1, [4, 3, 3]))
    with pytest.raises(UnsupportedError, match="graph input"):
        A.from_native(model)


def test_four_dimensional_conv_is_refused(A, onnx, rng):
    model = hand_model(onnx, rng.standard_normal((4, 3, 3, 3, 3, 3)).astype(np.float32))
    with pytest.raises(UnsupportedError, match="not a 1-d, 2-d or 3-d convolution"):
        A.from_native(model)


def test_kernel_shape_disagrees(A, onnx, rng):
    model = hand_model(onnx, rng.standard_normal((4, 3, 3)).astype(np.float32), kernel_shape=[5])
    with pytest.raises(ShapeError, match="'the_conv'.*kernel_shape"):
        A.from_native(model)


def test_external_data_is_read_beside_a_path_and_refused_elsewhere(A, onnx, rng, tmp_path):
    conv = make_conv(rng)
    model = A.to_native(conv)
    path = tmp_path / "ext.onnx"
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    back = A.from_native(path)  # a plain file name beside the model: read (docs/security.md)
    assert back.kernel.tobytes() == conv.kernel.tobytes() and back.bias.tobytes() == conv.bias.tobytes()
    with pytest.raises(UnsafeFileError, match="weights.bin"):
        A.from_native(onnx.load(path, load_external_data=False))  # a ModelProto has no directory to read it from
    (tmp_path / "weights.bin").rename(tmp_path / "real.bin")
    os.symlink(tmp_path / "real.bin", tmp_path / "weights.bin")
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        A.from_native(path)


def test_unreadable_inputs(A, tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff\x00 not a protobuf \x13\x37" * 7)
    with pytest.raises(FileFormatError, match="not an ONNX model"):
        A.from_native(garbage)
    with pytest.raises(FileFormatError, match="not found"):
        A.from_native(tmp_path / "missing.onnx")
    with pytest.raises(ConfigError, match="ModelProto or a path"):
        A.from_native(42)


def test_pad_with_nonzero_constant(A, onnx, rng):
    h = onnx.helper
    pads = onnx.numpy_helper.from_array(np.array([0, 0, 1, 0, 0, 1], np.int64), "pads")
    value = onnx.numpy_helper.from_array(np.array(0.5, np.float32), "value")
    model = hand_model(onnx, rng.standard_normal((4, 3, 3)).astype(np.float32), data="xp",
                       nodes=[h.make_node("Pad", ["x", "pads", "value"], ["xp"], name="the_pad")])  # fmt: skip
    model.graph.initializer.extend([pads, value])
    with pytest.raises(UnsupportedError, match="'the_pad'.*non-zero"):
        A.from_native(model)


def test_reflect_pad_and_conv_pads_together(A, onnx, rng):
    h = onnx.helper
    pads = onnx.numpy_helper.from_array(np.array([0, 0, 1, 0, 0, 1], np.int64), "pads")
    model = hand_model(onnx, rng.standard_normal((4, 3, 3)).astype(np.float32), data="xp", pads=[1, 1],
                       nodes=[h.make_node("Pad", ["x", "pads"], ["xp"], mode="reflect", name="the_pad")])  # fmt: skip
    model.graph.initializer.append(pads)
    with pytest.raises(UnsupportedError, match="both pad"):
        A.from_native(model)


def test_pads_fed_at_run_time(A, onnx, rng):
    h = onnx.helper
    model = hand_model(onnx, rng.standard_normal((4, 3, 3)).astype(np.float32), data="xp",
                       nodes=[h.make_node("Pad", ["x", "pads"], ["xp"], mode="edge", name="the_pad")])  # fmt: skip
    model.graph.input.append(h.make_tensor_value_info("pads", onnx.TensorProto.INT64, [6]))
    with pytest.raises(UnsupportedError, match="'the_pad'.*values of tensor 'pads'"):
        A.from_native(model)


def test_opset_out_of_range(A, rng):
    conv = make_conv(rng, padding=1, padding_mode="circular")
    with pytest.raises(ConfigError, match="opset"):
        A.to_native(conv, opset=17)  # Pad mode 'wrap' needs 19
    with pytest.raises(ConfigError, match="opset"):
        A.to_native(conv, opset=10_000)


def test_run_rejects_bad_inputs(A, rng):
    conv = make_conv(rng, padding=3, padding_mode="reflect")
    model = A.to_native(conv)
    with pytest.raises(ConfigError, match="x.astype"):
        A.run(model, rng.standard_normal((1, 8, 11)))  # float64 input for a float32 model
    with pytest.raises(ShapeError, match="wrong rank"):
        A.run(model, rng.standard_normal((8, 11)).astype(np.float32))
    with pytest.raises(ShapeError, match="Pad reflect"):
        A.run(model, rng.standard_normal((1, 8, 3)).astype(np.float32))  # reflect pad 3 needs length > 3


def test_every_error_is_a_layout_error(A, onnx, rng):
    with pytest.raises(LayoutError):
        A.from_native(two_conv_model(onnx, rng))
    with pytest.raises(LayoutError):
        A.to_native("not a conv")


# -- fused activations ----------------------------------------------------------------------------
#: the nodes written after the Conv at the default opset (17): no activation raises it
WRITTEN = {
    "linear": [],
    "relu": ["Relu"],
    "relu6": ["Clip"],
    "leaky_relu": ["LeakyRelu"],
    "sigmoid": ["Sigmoid"],
    "tanh": ["Tanh"],
    "elu": ["Elu"],
    "selu": ["Selu"],
    "gelu": ["Div", "Erf", "Add", "Mul", "Mul"],  # Gelu exists from opset 20
    "swish": ["Sigmoid", "Mul"],
    "softplus": ["Softplus"],
    "softsign": ["Softsign"],
    "mish": ["Softplus", "Tanh", "Mul"],  # Mish exists from opset 18
    "hard_sigmoid_keras2": ["HardSigmoid"],
    "hard_sigmoid_keras3": ["HardSigmoid"],
    "hard_silu": ["HardSwish"],
}


#: bfloat16 needs opset 22, which has Gelu and Mish
WRITTEN_AT_22 = {**WRITTEN, "gelu": ["Gelu"], "mish": ["Mish"]}


def test_every_activation_has_a_written_form():
    assert sorted(WRITTEN) == sorted(layoutconv.activations.ACTIVATIONS)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", list(WRITTEN))
def test_activation_round_trip_and_forward(A, onnx, rng, activation, dtype):
    conv = make_conv(rng, dtype, out=5, in_per_group=3, k=5, groups=1, padding="same_upper", stride=2,
                     activation=activation)  # fmt: skip
    model = A.to_native(conv)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == A.required_opset(conv) == (22 if dtype == "bfloat16" else 17)
    assert [n.op_type for n in model.graph.node] == ["Conv"] + (WRITTEN_AT_22 if dtype == "bfloat16" else WRITTEN)[activation]
    assert [o.name for o in model.graph.output] == ["y"] and model.graph.node[-1].output[:] == ["y"]
    back = A.from_native(model)
    assert back == conv and back.same_weights(conv)
    if dtype in ("float16", "float32"):  # what onnxruntime's CPU Conv runs
        x = rng.standard_normal((2, 3, 13)).astype(dtype) * 2  # pre-activations over every kink and plateau
        result = compare(conv, x, A.run(model, x), "onnx")
        assert result.passed, result


@pytest.mark.parametrize("activation, opset, op", [("gelu", 20, "Gelu"), ("mish", 18, "Mish")])
def test_activation_operator_of_newer_opsets(A, onnx, rng, activation, opset, op):
    conv = make_conv(rng, activation=activation)
    model = A.to_native(conv, opset=opset)
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Conv", op]
    assert A.from_native(model) == conv
    x = rng.standard_normal((2, 8, 11)).astype(np.float32)
    assert compare(conv, x, A.run(model, x), "onnx").passed


def with_activation(onnx, A, conv, make_nodes, opset=None, extra_outputs=()):
    """``conv`` written to ONNX, with the nodes after its Conv replaced by ``make_nodes(helper)`` (y_linear -> y)."""
    model = A.to_native(conv.replace(activation="relu"), opset=opset)
    del model.graph.node[1:]
    nodes, inits = make_nodes(onnx.helper, onnx.numpy_helper)
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(inits)
    for name in extra_outputs:
        shape = ["N", conv.out_channels, "L_out"]
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape))
    onnx.checker.check_model(model, full_check=True)
    return model


def _scalars(nh, **values):
    return [nh.from_array(np.array(v, np.float32), name) for name, v in values.items()]


REFUSED = {
    "HardSigmoid-alpha0.3": (
        lambda h, nh: ([h.make_node("HardSigmoid", ["y_linear"], ["y"], alpha=0.3)], []),
        r"HardSigmoid activation.*Expected HardSigmoid\(x, alpha=0.2, beta=0.5\) \(hard_sigmoid_keras2\) or "
        r"HardSigmoid\(x, alpha=0.166667, beta=0.5\) \(hard_sigmoid_keras3\).*alpha=0.3",
    ),
    "LeakyRelu-torch-default": (
        lambda h, nh: ([h.make_node("LeakyRelu", ["y_linear"], ["y"])], []),  # ONNX's default alpha is 0.01
        r"Expected LeakyRelu\(x, alpha=0.2\)",
    ),
    "Clip-hardtanh": (
        lambda h, nh: ([h.make_node("Clip", ["y_linear", "lo", "hi"], ["y"])], _scalars(nh, lo=-1, hi=1)),
        r"Expected Clip\(x, 0, 6\) \(relu6\).*inputs x, -1, 1",
    ),
    "Elu-alpha0.5": (lambda h, nh: ([h.make_node("Elu", ["y_linear"], ["y"], alpha=0.5)], []), r"Elu\(x, alpha=1\)"),
    "Selu-gamma2": (lambda h, nh: ([h.make_node("Selu", ["y_linear"], ["y"], gamma=2.0)], []), r"gamma=2"),
    "PRelu": (
        lambda h, nh: ([h.make_node("PRelu", ["y_linear", "slope"], ["y"])], _scalars(nh, slope=0.25)),
        r"PRelu activation.*one of the activations layoutconv records: relu, relu6",
    ),
    "Softmax": (lambda h, nh: ([h.make_node("Softmax", ["y_linear"], ["y"], axis=1)], []), r"Softmax activation"),
}


@pytest.mark.parametrize("make, words", list(REFUSED.values()), ids=list(REFUSED))
def test_activation_the_record_cannot_hold_is_refused(A, onnx, rng, make, words):
    model = with_activation(onnx, A, make_conv(rng), make)
    with pytest.raises(UnsupportedError, match=words):
        A.from_native(model)


def test_tanh_approximation_of_gelu_is_refused(A, onnx, rng):
    tanh_gelu = lambda h, nh: ([h.make_node("Gelu", ["y_linear"], ["y"], approximate="tanh")], [])  # noqa: E731
    model = with_activation(onnx, A, make_conv(rng), tanh_gelu, opset=20)
    with pytest.raises(UnsupportedError, match=r"Expected Gelu\(x, approximate='none'\).*approximate='tanh'"):
        A.from_native(model)


def test_activation_that_is_not_the_only_user_is_refused(A, onnx, rng):
    """The Conv's output leaves the graph too: the record cannot say relu for one use and linear for the other."""
    relu = lambda h, nh: ([h.make_node("Relu", ["y_linear"], ["y"])], [])  # noqa: E731
    model = with_activation(onnx, A, make_conv(rng), relu, extra_outputs=["y_linear"])
    words = "followed by relu, but its output is also used without it.*graph output 'y_linear'"
    with pytest.raises(UnsupportedError, match=words):
        A.from_native(model)


def test_conv_followed_by_something_else_reads_linear(A, onnx, rng):
    """Arithmetic that is not an activation is the next layer's business; the Conv itself is linear."""
    conv = make_conv(rng)
    double = lambda h, nh: ([h.make_node("Add", ["y_linear", "y_linear"], ["y"])], [])  # noqa: E731
    assert A.from_native(with_activation(onnx, A, conv, double)) == conv
    assert A.from_native(two_conv_model(onnx, rng), node="first").activation == "linear"


def test_conv_followed_by_an_activation_inside_a_larger_graph(A, onnx, rng):
    """Conv -> Sigmoid -> Mul (swish) -> another Conv: the first Conv reads as swish."""
    model = two_conv_model(onnx, rng)
    h = onnx.helper
    first, second = model.graph.node
    first.output[0] = "h_linear"
    model.graph.node.insert(1, h.make_node("Sigmoid", ["h_linear"], ["h_gate"]))
    model.graph.node.insert(2, h.make_node("Mul", ["h_gate", "h_linear"], ["h"]))  # operands swapped on purpose
    assert A.from_native(model, node="first").activation == "swish"
    assert A.from_native(model, node="second").activation == "linear"


TORCH_ACTIVATIONS = {  # PyTorch module (built lazily) -> what layoutconv must read from its ONNX export
    "relu": ("ReLU", {}),
    "relu6": ("ReLU6", {}),
    "leaky_relu": ("LeakyReLU", {"negative_slope": 0.2}),
    "sigmoid": ("Sigmoid", {}),
    "tanh": ("Tanh", {}),
    "elu": ("ELU", {}),
    "selu": ("SELU", {}),
    "gelu": ("GELU", {}),
    "swish": ("SiLU", {}),
    "softplus": ("Softplus", {}),
    "softsign": ("Softsign", {}),
    "mish": ("Mish", {}),
    "hard_sigmoid_keras3": ("Hardsigmoid", {}),
    "hard_silu": ("Hardswish", {}),
}


def torch_export(module, opset: int, x):
    import io

    import onnx
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.from_numpy(x),), buf, dynamo=False, opset_version=opset, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "N", 2: "L"}})  # fmt: skip
    return onnx.load_from_string(buf.getvalue())


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("activation", list(TORCH_ACTIVATIONS))
def test_torch_exported_activation_is_read(A, rng, activation, opset):
    """torch.onnx writes its own spellings (Clip with Constant nodes, x / (1 + |x|) for Softsign, Gelu at 20);
    the Conv1D read back reproduces PyTorch's own output."""
    need("torch")
    import torch

    name, kwargs = TORCH_ACTIVATIONS[activation]
    module = torch.nn.Sequential(torch.nn.Conv1d(3, 5, 5, stride=2), getattr(torch.nn, name)(**kwargs)).eval()
    x = (2 * rng.standard_normal((2, 3, 13))).astype(np.float32)
    conv = A.from_native(torch_export(module, opset, x))
    assert conv.activation == activation
    with torch.no_grad():
        y_torch = module(torch.from_numpy(x)).numpy()
    assert compare(conv, x, y_torch, "torch").passed


def test_torch_default_leaky_relu_is_refused(A, rng):
    need("torch")
    import torch

    module = torch.nn.Sequential(torch.nn.Conv1d(3, 5, 5), torch.nn.LeakyReLU()).eval()
    with pytest.raises(UnsupportedError, match=r"LeakyRelu node .* \(alpha=0.01\)"):
        A.from_native(torch_export(module, 17, rng.standard_normal((1, 3, 11)).astype(np.float32)))
