"""The rank-generic reference pass and records against a direct N-d loop written here, independently."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from layoutconv import Conv, Conv1D, ShapeError, layouts, reference
from layoutconv.conv import Conv2D, Conv3D

from test_reference import direct_conv1d, source_index


def direct_conv_nd(kernel, bias, x, stride, dilation, groups, pads, mode):
    """y[n, f, *t] = b[f] + sum_c sum_k W[f, c, *k] * x~[n, g*C/g + c, *(s*t + d*k - p_b)], by loops."""
    n_, _, *size = x.shape
    o_, cg, *ks = kernel.shape
    rank = len(size)
    out = [(size[a] + pads[a][0] + pads[a][1] - dilation[a] * (ks[a] - 1) - 1) // stride[a] + 1 for a in range(rank)]
    y = np.zeros((n_, o_, *out))
    for n, f in itertools.product(range(n_), range(o_)):
        g = f // (o_ // groups)
        for t in itertools.product(*(range(m) for m in out)):
            acc = 0.0 if bias is None else float(bias[f])
            for c in range(cg):
                for k in itertools.product(*(range(m) for m in ks)):
                    where = [source_index(stride[a] * t[a] + dilation[a] * k[a] - pads[a][0], size[a], mode) for a in range(rank)]
                    if None not in where:
                        acc += float(kernel[(f, c, *k)]) * float(x[(n, g * cg + c, *where)])
            y[(n, f, *t)] = acc
    return y


def tf_same(size, k, s, d, lower=False):
    """TensorFlow's SAME rule per axis, written out again."""
    total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
    small, big = total // 2, total - total // 2
    return (big, small) if lower else (small, big)


CASES_2D = {
    # O, I/g, kernel, stride, dilation, groups, padding, mode, input size
    "3x5_valid_s12": (4, 3, (3, 5), (1, 2), (1, 1), 1, "valid", "zeros", (9, 11)),
    "3x5_same_upper_s21": (5, 3, (3, 5), (2, 1), (1, 1), 1, "same_upper", "zeros", (8, 9)),
    "2x4_same_lower_d21": (4, 2, (2, 4), (1, 2), (2, 1), 2, "same_lower", "zeros", (7, 10)),
    "explicit_reflect": (3, 3, (3, 3), (1, 1), (1, 2), 1, ((2, 1), (0, 3)), "reflect", (7, 9)),
    "depthwise_circular": (6, 1, (3, 2), (2, 1), (1, 1), 6, ((1, 1), (1, 0)), "circular", (6, 7)),
    "replicate_k_eq_o": (3, 3, (3, 3), (1, 1), (1, 1), 1, ((3, 0), (1, 2)), "replicate", (5, 6)),
}


def _pads(padding, ks, stride, dilation, size):
    if isinstance(padding, tuple):
        return padding
    if padding == "valid":
        return tuple((0, 0) for _ in ks)
    return tuple(tf_same(n, k, s, d, lower=padding == "same_lower") for n, k, s, d in zip(size, ks, stride, dilation))


@pytest.mark.parametrize("case", CASES_2D, ids=list(CASES_2D))
def test_2d_matches_direct_loop(rng, case):
    o, i, ks, stride, dilation, groups, padding, mode, size = CASES_2D[case]
    kernel = rng.standard_normal((o, i, *ks))
    bias = rng.standard_normal(o)
    x = rng.standard_normal((2, i * groups, *size))
    conv = Conv(kernel, bias, stride=stride, dilation=dilation, groups=groups, padding=padding, padding_mode=mode)
    assert isinstance(conv, Conv2D) and conv.kernel_shape == ks
    pads = _pads(padding, ks, stride, dilation, size)
    assert conv.pads(size) == pads
    expected = direct_conv_nd(kernel, bias, x, stride, dilation, groups, pads, mode)
    np.testing.assert_allclose(reference.forward(conv, x), expected, rtol=1e-12, atol=1e-12)


def test_3d_matches_direct_loop(rng):
    kernel = rng.standard_normal((4, 2, 2, 3, 1))
    x = rng.standard_normal((1, 4, 5, 6, 4))
    conv = Conv(kernel, None, stride=(1, 2, 1), dilation=(2, 1, 1), groups=2, padding="same_upper", activation="relu")
    assert isinstance(conv, Conv3D)
    pads = _pads("same_upper", (2, 3, 1), (1, 2, 1), (2, 1, 1), (5, 6, 4))
    expected = np.maximum(direct_conv_nd(kernel, None, x, (1, 2, 1), (2, 1, 1), 2, pads, "zeros"), 0)
    np.testing.assert_allclose(reference.forward(conv, x), expected, rtol=1e-12, atol=1e-12)


def test_1d_forward_is_conv1d(rng):
    conv = Conv(rng.standard_normal((5, 3, 5)), rng.standard_normal(5), stride=2, padding="same_upper")
    assert type(conv) is Conv1D
    x = rng.standard_normal((2, 3, 13))
    expected = direct_conv1d(conv.kernel, conv.bias, x, 2, 1, 1, conv.pads(13)[0], "zeros")
    np.testing.assert_allclose(reference.forward(conv, x), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(reference.forward(conv, x), reference.conv1d(conv, x))


@pytest.mark.parametrize(
    "layout, index_of, transposed",
    [
        # where canonical element (a, b, h, w) lives in the raw array; a 3x5 kernel so H and W cannot be swapped unseen
        ("H W I O", lambda o, i, h, w: (h, w, i, o), False),
        ("O I H W", lambda o, i, h, w: (o, i, h, w), False),
        ("H W O I", lambda i, o, h, w: (h, w, o, i), True),  # Keras Conv2DTranspose -> canonical (I, O, H, W)
        ("I O H W", lambda i, o, h, w: (i, o, h, w), True),  # PyTorch ConvTranspose2d
    ],
    ids=["keras-conv2d", "torch-conv2d", "keras-transpose2d", "torch-transpose2d"],
)
def test_2d_layouts_move_every_element(rng, layout, index_of, transposed):
    a_, b_, h_, w_ = 4, 2, 3, 5  # all different
    recipe = layouts.parse(layout)
    sizes = dict(zip(("I", "O") if transposed else ("O", "I"), (a_, b_)), H=h_, W=w_)
    raw = rng.standard_normal(tuple(sizes[n] for n in recipe.names))
    canon = layouts.to_canonical(raw, layout, transposed=transposed)
    assert canon.shape == (a_, b_, h_, w_)
    for a, b, h, w in itertools.product(range(a_), range(b_), range(h_), range(w_)):
        assert canon[a, b, h, w] == raw[index_of(a, b, h, w)]
    back = layouts.from_canonical(canon, layout, transposed=transposed)
    assert back.tobytes() == raw.tobytes()


def test_keras_3d_layout(rng):
    raw = rng.standard_normal((2, 3, 4, 5, 6))  # (D, H, W, I, O)
    conv = Conv(raw, layout="D H W I O")
    assert isinstance(conv, Conv3D) and conv.kernel.shape == (6, 5, 2, 3, 4)
    assert conv.kernel[1, 2, 0, 1, 3] == raw[0, 1, 3, 2, 1]


def test_layout_rank_must_match_the_class(rng):
    with pytest.raises(ShapeError, match="not a 1-d kernel layout"):
        Conv1D(rng.standard_normal((3, 5, 4, 8)), layout="H W I O")
    with pytest.raises(ShapeError, match="3, 4 or 5 axes"):
        Conv(rng.standard_normal((3, 4)))
    with pytest.raises(ShapeError, match="Invalid kernel layout"):
        layouts.parse("H I O")  # H without W


def test_nd_input_errors_name_the_axes(rng):
    conv = Conv(rng.standard_normal((4, 3, 3, 5)))
    with pytest.raises(ShapeError, match=r"\(N, 3, H, W\).*x\.transpose\(0, 3, 1, 2\)"):
        reference.forward(conv, rng.standard_normal((1, 9, 9, 3)))
    with pytest.raises(ShapeError, match="receptive field.*= 5.*size 4 on spatial axis 1"):
        reference.forward(conv, rng.standard_normal((1, 3, 9, 4)))


def test_chain_is_depthwise_then_pointwise(rng):
    from layoutconv import Chain, ConfigError

    dw = rng.standard_normal((6, 1, 3, 2))  # 3 channels, depth multiplier 2
    pw = rng.standard_normal((4, 6, 1, 1))
    b = rng.standard_normal(4)
    chain = Chain((Conv(dw, groups=3, stride=(2, 1)), Conv(pw, b, activation="tanh")))
    x = rng.standard_normal((2, 3, 7, 6))
    middle = direct_conv_nd(dw, None, x, (2, 1), (1, 1), 3, ((0, 0), (0, 0)), "zeros")
    expected = np.tanh(direct_conv_nd(pw, b, middle, (1, 1), (1, 1), 1, ((0, 0), (0, 0)), "zeros"))
    np.testing.assert_allclose(reference.forward(chain, x), expected, rtol=1e-12, atol=1e-12)
    assert chain.in_channels == 3 and chain.out_channels == 4
    with pytest.raises(ShapeError, match="do not fit"):
        Chain((Conv(pw), Conv(dw, groups=3)))
    with pytest.raises(ConfigError, match="needs records"):
        Chain(())
