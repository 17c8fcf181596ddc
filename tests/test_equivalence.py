"""Every framework, after conversion, computes the reference's outputs.

The grid spells out the configurations that break converters (ambiguous
shapes, even kernels with strides, causal dilation, groups, padding modes);
the property test draws random ones.  Where a framework cannot express a
configuration, the test names the reason and asserts that the harness reports
it as unsupported rather than computing something else.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import layoutconv
from layoutconv import Conv1D
from conftest import need
from layoutconv.verify import compare, default_input

FRAMEWORKS = {
    "keras": ("keras", "tensorflow"),
    "tf_keras": ("tf_keras", "tensorflow"),
    "torch": ("torch",),
    "onnx": ("onnx", "onnxruntime"),
}


def expected_unsupported(conv: Conv1D, framework: str, data_format: str = "channels_last", length: int | None = None) -> str | None:
    """Why a framework cannot run this convolution, or None when it must pass."""
    if framework in ("keras", "tf_keras"):
        depthwise = 1 < conv.groups == conv.in_channels  # written as DepthwiseConv1D, which Keras 3 lets do both
        if conv.stride[0] > 1 and conv.dilation[0] > 1 and not (framework == "keras" and depthwise):
            return "Keras refuses strides > 1 together with dilation_rate > 1"
        if (
            framework == "keras"
            and data_format == "channels_first"
            and conv.bias is not None
            and length is not None
            and conv.output_length(length) == conv.out_channels
        ):
            return "Keras 3 on TensorFlow adds a channels_first bias along the length axis when L_out == filters"
        if conv.padding_mode != "zeros":
            return "Keras convolutions only pad with zeros"
        if conv.padding == "same_lower" and conv.padding_depends_on_length:
            return "Keras cannot express length-dependent same_lower padding without a fixed length"
    if framework == "onnx" and conv.dtype.name in ("float64", "bfloat16"):
        return "onnxruntime's CPU Conv has float32 and float16 kernels only"
    return None


def make_conv(rng, o, cg, k, *, stride=1, dilation=1, groups=1, padding="valid", mode="zeros", bias=True, dtype=np.float32):
    kernel = rng.standard_normal((o, cg, k)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype) if bias else None
    return Conv1D(kernel, b, stride=stride, dilation=dilation, groups=groups, padding=padding, padding_mode=mode)


def check(conv: Conv1D, framework: str, **kwargs) -> None:
    need(*FRAMEWORKS[framework])
    report = layoutconv.verify(conv, frameworks=[framework], **kwargs)
    result = report[framework]
    reason = expected_unsupported(conv, framework, kwargs.get("keras_data_format", "channels_last"), report.input_shape[-1])
    if reason:
        assert result.status == "unsupported", (reason, str(report))
        return
    assert result.status == "pass", str(report)
    assert result.shape == report.reference_shape
    assert result.dtype == conv.dtype.name


# (O, I/g, K, stride, dilation, groups, padding, mode, bias)
GRID = {
    "k=filters-valid": (5, 3, 5, 1, 1, 1, "valid", "zeros", True),
    "in=filters-same-s2": (4, 4, 3, 2, 1, 1, "same_upper", "zeros", True),
    "k=in-even-same-s3": (6, 4, 4, 3, 1, 1, "same_upper", "zeros", False),
    "all-equal-causal-d2": (3, 3, 3, 1, 2, 1, "causal", "zeros", True),
    "same_lower-s1-d3": (4, 2, 4, 1, 3, 1, "same_lower", "zeros", True),
    "same_lower-s2": (4, 2, 5, 2, 1, 1, "same_lower", "zeros", True),
    "same_upper-s2-d2": (4, 3, 3, 2, 2, 1, "same_upper", "zeros", True),
    "explicit-asym": (4, 3, 6, 1, 1, 1, (3, 1), "zeros", True),
    "groups2": (6, 2, 3, 1, 1, 2, "same_upper", "zeros", True),
    "depthwise": (4, 1, 5, 2, 1, 4, "valid", "zeros", True),
    "k1": (7, 3, 1, 4, 1, 1, "valid", "zeros", True),
    "k11-s4-d3": (3, 2, 11, 4, 3, 1, "same_upper", "zeros", False),
    "reflect": (4, 3, 3, 1, 1, 1, (2, 1), "reflect", True),
    "replicate-same": (4, 3, 4, 1, 1, 1, "same_upper", "replicate", True),
    "circular-causal": (4, 3, 3, 1, 2, 1, "causal", "circular", True),
}


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
@pytest.mark.parametrize("case", list(GRID))
def test_grid(rng, case, framework):
    o, cg, k, s, d, g, padding, mode, bias = GRID[case]
    conv = make_conv(rng, o, cg, k, stride=s, dilation=d, groups=g, padding=padding, mode=mode, bias=bias)
    check(conv, framework)


@pytest.mark.parametrize("framework", ["keras", "tf_keras"])
@pytest.mark.parametrize("case", ["in=filters-same-s2", "all-equal-causal-d2", "explicit-asym", "groups2"])
def test_keras_channels_first(rng, case, framework):
    o, cg, k, s, d, g, padding, mode, bias = GRID[case]
    conv = make_conv(rng, o, cg, k, stride=s, dilation=d, groups=g, padding=padding, mode=mode, bias=bias)
    check(conv, framework, keras_data_format="channels_first")


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
@pytest.mark.parametrize("length", [9, 10, 11, 12], ids=lambda n: f"L{n}")
def test_lengths_around_the_stride(rng, framework, length):
    # stride 3: lengths 9 and 12 are multiples, 10 and 11 are not; same_upper pads change with each.
    conv = make_conv(rng, 4, 3, 4, stride=3, padding="same_upper")
    check(conv, framework, length=length)


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_dtypes(rng, framework, dtype):
    conv = make_conv(rng, 4, 3, 5, stride=2, padding="same_upper", dtype=np.dtype(dtype))
    check(conv, framework)


def test_wrong_layout_is_caught(rng):
    """A Keras kernel read with the wrong permutation still fits (5, 5, 5) and must fail the harness."""
    raw = rng.standard_normal((5, 5, 5)).astype(np.float32)  # Keras K I O
    right = Conv1D(raw, layout="K I O")
    wrong = Conv1D(raw)  # read as if it were O I K
    x = default_input(right)
    expected = layoutconv.reference.conv1d(right, x)
    result = compare(right, x, layoutconv.reference.conv1d(wrong, x).astype(np.float32), "wrong")
    assert result.status == "fail" and result.worst_error_over_tolerance > 100
    assert expected.shape == layoutconv.reference.conv1d(wrong, x).shape


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_random_configurations(data):
    for modules in FRAMEWORKS.values():
        need(*modules)
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    k = data.draw(st.integers(1, 11), label="kernel_size")
    s = data.draw(st.integers(1, 4), label="stride")
    d = data.draw(st.integers(1, 3), label="dilation")
    cg = data.draw(st.integers(1, 3), label="in_per_group")
    g = data.draw(st.sampled_from([1, 2, "depthwise"]), label="groups")
    og = data.draw(st.integers(1, 3), label="out_per_group")
    if g == "depthwise":
        g, cg = data.draw(st.integers(2, 4), label="channels"), 1
    padding = data.draw(
        st.sampled_from(["valid", "same_upper", "same_lower", "causal", (0, 2), (3, 1), 2]), label="padding"
    )
    mode = data.draw(st.sampled_from(["zeros", "zeros", "reflect", "replicate", "circular"]), label="mode")
    bias = data.draw(st.booleans(), label="bias")
    conv = make_conv(rng, og * g, cg, k, stride=s, dilation=d, groups=g, padding=padding, mode=mode, bias=bias)
    span = conv.receptive_field[0]
    # longer than every pad, so reflect and circular padding are defined
    length = data.draw(st.integers(max(span, 4) + 1, 3 * span + 9), label="length")
    data_format = data.draw(st.sampled_from(["channels_last", "channels_first"]), label="keras_data_format")
    report = layoutconv.verify(conv, frameworks=list(FRAMEWORKS), length=length, seed=seed % 1000, keras_data_format=data_format)
    for result in report.results:
        reason = expected_unsupported(conv, result.framework, data_format, length)
        if reason:
            assert result.status == "unsupported", (reason, str(report))
        else:
            assert result.status == "pass", str(report)


# -- every rank and transposed: PyTorch and onnxruntime must pass every drawn configuration ------
# (Keras' N-d refusals are spelled out, case by case, in tests/test_keras_nd.py.)
ND_FRAMEWORKS = ("torch", "onnx")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_random_nd_convolutions(data):
    for name in ND_FRAMEWORKS:
        need(*FRAMEWORKS[name])
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    rank = data.draw(st.sampled_from([2, 2, 3]), label="rank")
    per_axis = lambda lo, hi, label: tuple(data.draw(st.integers(lo, hi), label=f"{label}{a}") for a in range(rank))  # noqa: E731
    k = per_axis(1, 4 if rank == 2 else 2, "kernel")
    s = per_axis(1, 3, "stride")
    d = per_axis(1, 2, "dilation")
    g = data.draw(st.sampled_from([1, 2]), label="groups")
    cg, og = data.draw(st.integers(1, 3), label="in_per_group"), data.draw(st.integers(1, 3), label="out_per_group")
    padding = data.draw(st.sampled_from(["valid", "same_upper", "same_lower", "causal", "pairs"]), label="padding")
    if padding == "pairs":
        padding = tuple((data.draw(st.integers(0, 2)), data.draw(st.integers(0, 2))) for _ in range(rank))
    mode = data.draw(st.sampled_from(["zeros", "zeros", "reflect", "replicate", "circular"]), label="mode")
    kernel = rng.standard_normal((og * g, cg, *k)).astype(np.float32)
    bias = rng.standard_normal(og * g).astype(np.float32) if data.draw(st.booleans(), label="bias") else None
    activation = data.draw(st.sampled_from(["linear", "relu", "tanh"]), label="activation")
    conv = layoutconv.Conv(kernel, bias, stride=s, dilation=d, groups=g, padding=padding, padding_mode=mode, activation=activation)
    sizes = [data.draw(st.integers(max(r, 3) + 1, r + 6), label=f"size{a}") for a, r in enumerate(conv.receptive_field)]
    x = rng.standard_normal((2, conv.in_channels, *sizes)).astype(np.float32)
    report = layoutconv.verify(conv, frameworks=list(ND_FRAMEWORKS), x=x)
    assert report.passed and all(r.status == "pass" for r in report.results), str(report)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_random_transposed_convolutions(data):
    for name in ND_FRAMEWORKS:
        need(*FRAMEWORKS[name])
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    rank = data.draw(st.sampled_from([1, 2, 2, 3]), label="rank")
    per_axis = lambda lo, hi, label: tuple(data.draw(st.integers(lo, hi), label=f"{label}{a}") for a in range(rank))  # noqa: E731
    k = per_axis(1, 4 if rank < 3 else 2, "kernel")
    s = per_axis(1, 3, "stride")
    d = per_axis(1, 2, "dilation")
    extra = tuple(data.draw(st.integers(0, max(si, di) - 1), label=f"output_padding{a}") for a, (si, di) in enumerate(zip(s, d)))
    g = data.draw(st.sampled_from([1, 2]), label="groups")
    cg, og = data.draw(st.integers(1, 3), label="in_per_group"), data.draw(st.integers(1, 3), label="out_per_group")
    padding = data.draw(st.sampled_from(["valid", "same_upper", "same_lower", "pairs"]), label="padding")
    if padding == "pairs":
        padding = tuple((data.draw(st.integers(0, ki - 1)), data.draw(st.integers(0, ki - 1))) for ki in k)
    kernel = rng.standard_normal((cg * g, og, *k)).astype(np.float32)
    bias = rng.standard_normal(og * g).astype(np.float32) if data.draw(st.booleans(), label="bias") else None
    t = layoutconv.ConvTranspose(kernel, bias, stride=s, dilation=d, groups=g, padding=padding, output_padding=extra)
    sizes = per_axis(2, 6, "size")
    if any(n <= 0 for n in t.output_shape(sizes)):
        return  # crops that leave no output are refused elsewhere (ShapeError)
    x = rng.standard_normal((2, t.in_channels, *sizes)).astype(np.float32)
    report = layoutconv.verify(t, frameworks=list(ND_FRAMEWORKS), x=x)
    assert report["torch"].status == "pass", str(report)
    if any(a >= si for a, si in zip(extra, s)):  # PyTorch allows output_padding < dilation; onnxruntime does not
        assert report["onnx"].status == "unsupported" and "smaller than the stride" in report["onnx"].message
    else:
        assert report["onnx"].status == "pass", str(report)
