"""The reference pass against a direct loop written here, independently of the package."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layoutconv import Conv1D, ShapeError, UnsupportedError, reference


def source_index(j: int, length: int, mode: str) -> int | None:
    """Where padded position j (relative to the unpadded input) reads from; None for a zero."""
    if 0 <= j < length:
        return j
    if mode == "zeros":
        return None
    if mode == "replicate":
        return 0 if j < 0 else length - 1
    if mode == "circular":
        return j % length
    # reflect about the first/last element, without repeating it
    period = 2 * (length - 1)
    j = abs(j) % period
    return j if j < length else period - j


def direct_conv1d(kernel, bias, x, stride, dilation, groups, pads, mode):
    """y[n, f, t] = b[f] + sum_c sum_k W[f, c, k] * x~[n, g*C/g + c, s*t + d*k - p_b], as plain loops."""
    n_, c_, length = x.shape
    o_, cg, k_ = kernel.shape
    begin, end = pads
    out_len = (length + begin + end - dilation * (k_ - 1) - 1) // stride + 1
    y = np.zeros((n_, o_, out_len))
    for n in range(n_):
        for f in range(o_):
            g = f // (o_ // groups)
            for t in range(out_len):
                acc = 0.0 if bias is None else float(bias[f])
                for c in range(cg):
                    for k in range(k_):
                        src = source_index(stride * t + dilation * k - begin, length, mode)
                        if src is not None:
                            acc += float(kernel[f, c, k]) * float(x[n, g * cg + c, src])
                y[n, f, t] = acc
    return y


CASES = [
    # (O, I/g, K, stride, dilation, groups, padding, mode, length)
    (4, 3, 5, 1, 1, 1, "valid", "zeros", 13),
    (5, 3, 5, 2, 1, 1, "same_upper", "zeros", 13),  # kernel_size == filters
    (4, 4, 2, 3, 1, 1, "same_upper", "zeros", 10),  # even kernel, length not a multiple of stride
    (4, 3, 4, 2, 2, 1, "same_lower", "zeros", 11),
    (3, 3, 3, 1, 3, 1, "causal", "zeros", 9),  # kernel_size == in_channels == filters
    (6, 2, 3, 1, 1, 2, (2, 1), "zeros", 9),  # groups
    (6, 1, 3, 2, 1, 6, "same_upper", "zeros", 11),  # depthwise
    (4, 3, 3, 1, 1, 1, (2, 1), "reflect", 7),
    (4, 3, 3, 2, 1, 1, (3, 1), "replicate", 8),
    (4, 3, 4, 1, 2, 1, (4, 3), "circular", 7),
    (4, 3, 5, 3, 1, 1, "same_upper", "reflect", 11),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[6]}-{c[7]}-k{c[2]}s{c[3]}d{c[4]}g{c[5]}" for c in CASES])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_reference_matches_direct_loop(rng, case, with_bias):
    o_, cg, k_, s, d, g, padding, mode, length = case
    kernel = rng.standard_normal((o_, cg, k_))
    bias = rng.standard_normal(o_) if with_bias else None
    conv = Conv1D(kernel, bias, stride=s, dilation=d, groups=g, padding=padding, padding_mode=mode)
    x = rng.standard_normal((2, cg * g, length))
    got = reference.conv1d(conv, x)
    want = direct_conv1d(kernel, bias, x, s, d, g, conv.pads(length)[0], mode)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_docstring_example_by_hand():
    conv = Conv1D(np.array([[[1.0, 2.0]]]), np.array([0.5]))
    y = reference.conv1d(conv, np.array([[[1.0, 10.0, 100.0]]]))
    # 1*1 + 2*10 + 0.5 and 1*10 + 2*100 + 0.5: tap k meets position t + k.
    assert y.tolist() == [[[21.5, 210.5]]]


def test_accumulates_in_float64(rng):
    # float16 weights and inputs: the reference promotes before multiplying.
    kernel = rng.standard_normal((3, 2, 4)).astype(np.float16)
    x = rng.standard_normal((1, 2, 9)).astype(np.float16)
    y = reference.conv1d(Conv1D(kernel), x)
    assert y.dtype == np.float64
    want = direct_conv1d(kernel.astype(np.float64), None, x.astype(np.float64), 1, 1, 1, (0, 0), "zeros")
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    k=st.integers(1, 6),
    s=st.integers(1, 4),
    d=st.integers(1, 3),
    g=st.sampled_from([1, 2]),
    padding=st.sampled_from(["valid", "same_upper", "same_lower", "causal", (1, 2), (3, 0)]),
)
def test_reference_property_against_direct_loop(data, k, s, d, g, padding):
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    cg, og = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    length = data.draw(st.integers(d * (k - 1) + 1, d * (k - 1) + 12))
    kernel = rng.standard_normal((og * g, cg, k))
    bias = rng.standard_normal(og * g)
    conv = Conv1D(kernel, bias, stride=s, dilation=d, groups=g, padding=padding)
    x = rng.standard_normal((1, cg * g, length))
    want = direct_conv1d(kernel, bias, x, s, d, g, conv.pads(length)[0], "zeros")
    np.testing.assert_allclose(reference.conv1d(conv, x), want, rtol=1e-12, atol=1e-12)


def test_input_errors(rng):
    conv = Conv1D(rng.standard_normal((4, 3, 5)))
    with pytest.raises(ShapeError, match=r"shape \(2, 13, 3\)"):
        reference.conv1d(conv, rng.standard_normal((2, 13, 3)))
    with pytest.raises(ShapeError, match="receptive field"):
        reference.conv1d(conv, rng.standard_normal((2, 3, 4)))
    reflect = conv.replace(padding=(4, 0), padding_mode="reflect")
    with pytest.raises(UnsupportedError, match=r"pads \(4, 0\)"):
        reference.conv1d(reflect, rng.standard_normal((1, 3, 4)))


def test_padded_input_over_the_cap_is_refused_before_allocating():
    conv = Conv1D(np.random.default_rng(3).normal(size=(2, 3, 3)), padding=(1 << 24, 1 << 24))
    x = np.zeros((4, 3, 5))  # padded: 4 * 3 * (2**25 + 5) elements > 2**28
    with pytest.raises(ShapeError, match="too large for the reference pass"):
        reference.conv1d(conv, x)
