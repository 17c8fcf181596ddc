"""The reference pass's short cuts for whole models, each against a direct loop written here.

1x1 convolutions without padding multiply the input itself (no column copy); pooling reduces one
strided view per tap; batch normalisation is one multiply and one add.  The oracles below are the
definitions, written with explicit loops over output positions.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from layoutconv import Conv, layers, reference


def _conv_loop(w: np.ndarray, b: np.ndarray | None, x: np.ndarray, stride: tuple[int, ...]) -> np.ndarray:
    """A 1x1 convolution: ``y[n, f, t] = b[f] + sum_c w[f, c] x[n, c, s t]``, one output position at a time."""
    n, c, *size = x.shape
    out = [(m - 1) // s + 1 for m, s in zip(size, stride)]
    y = np.zeros((n, w.shape[0], *out))
    for t in itertools.product(*(range(m) for m in out)):
        src = x[(slice(None), slice(None), *(s * i for s, i in zip(stride, t)))].astype(np.float64)
        y[(slice(None), slice(None), *t)] = src @ w.reshape(w.shape[0], c).T.astype(np.float64) + (0 if b is None else b)
    return y


@pytest.mark.parametrize(
    "shape, filters, stride, bias",
    [
        ((3, 5, 7), 5, (1,), True),  # in_channels == filters
        ((2, 4, 9), 3, (2,), False),
        ((2, 3, 7, 5), 6, (1, 1), True),
        ((1, 6, 9, 8), 4, (2, 3), True),  # stride per axis, odd sizes
        ((2, 3, 5, 4, 3), 2, (2, 1, 2), False),
        ((0, 4, 6, 6), 5, (2, 2), True),  # zero samples: the ONNX writer probes shapes with them
    ],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_pointwise_conv_against_a_loop(shape, filters, stride, bias, dtype):
    rng = np.random.default_rng(sum(shape) + filters)
    rank = len(shape) - 2
    w = rng.standard_normal((filters, shape[1]) + (1,) * rank).astype(np.float32)
    b = rng.standard_normal(filters).astype(np.float32) if bias else None
    x = rng.standard_normal(shape).astype(np.float32)
    conv = Conv(w, b, stride=stride, padding="same_upper")  # 1x1 'same' pads nothing
    y = reference.forward(conv, x, dtype=dtype)
    assert y.dtype == dtype and y.shape == (shape[0], filters, *((m - 1) // s + 1 for m, s in zip(shape[2:], stride)))
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=1.3e-6, atol=1e-5)
    np.testing.assert_allclose(y, _conv_loop(w, b, x, stride), **tol)


def test_pointwise_conv_with_explicit_pads_still_pads():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 3, 1, 1))
    x = rng.standard_normal((2, 3, 5, 6))
    y = reference.forward(Conv(w, None, padding=((1, 0), (0, 2))), x)
    expected = _conv_loop(w, None, np.pad(x, [(0, 0), (0, 0), (1, 0), (0, 2)]), (1, 1))
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    assert y.shape == (2, 4, 6, 8)


def _pool_loop(x: np.ndarray, pool: layers.Pool) -> np.ndarray:
    """Max or average over each window of the padded input, one output position at a time."""
    spatial = x.shape[2:]
    pads = pool.pads(spatial)
    out = [(m + b + e - k) // s + 1 for m, (b, e), k, s in zip(spatial, pads, pool.pool_size, pool.stride)]
    y = np.empty(x.shape[:2] + tuple(out))
    for t in itertools.product(*(range(m) for m in out)):
        lo = [s * i - b for s, i, (b, _) in zip(pool.stride, t, pads)]
        inside = tuple(slice(max(a, 0), min(a + k, m)) for a, k, m in zip(lo, pool.pool_size, spatial))
        window = x[(slice(None), slice(None), *inside)].reshape(x.shape[0], x.shape[1], -1)
        if pool.kind == "max":
            y[(slice(None), slice(None), *t)] = window.max(axis=2)
        else:
            divisor = np.prod(pool.pool_size) if pool.count_include_pad else window.shape[2]
            y[(slice(None), slice(None), *t)] = window.sum(axis=2) / divisor
    return y


@pytest.mark.parametrize(
    "kind, size, stride, padding, include, shape",
    [
        ("max", (3, 3), (2, 2), ((1, 1), (1, 1)), False, (2, 3, 11, 9)),  # ResNet's stem pool, odd sizes
        ("max", (2, 3), (1, 2), "same_upper", False, (1, 4, 7, 8)),
        ("avg", (3, 3), (1, 1), "same_upper", False, (2, 3, 6, 7)),  # Keras: pads not counted
        ("avg", (3, 2), (2, 1), ((1, 1), (1, 0)), True, (2, 2, 9, 5)),  # PyTorch: pads counted
        ("avg", (2, 2, 3), (2, 2, 1), "valid", False, (1, 3, 5, 4, 7)),
        ("max", (2, 1, 2), (1, 1, 2), "same_lower", False, (2, 2, 3, 4, 5)),
    ],
)
def test_pool_against_a_loop(kind, size, stride, padding, include, shape):
    rng = np.random.default_rng(len(shape) * 7 + size[0])
    x = rng.standard_normal(shape)
    pool = layers.Pool(kind, size, stride, padding=padding, count_include_pad=include)
    np.testing.assert_allclose(reference.forward(pool, x), _pool_loop(x, pool), rtol=1e-13, atol=1e-13)


def test_batch_norm_against_the_formula_per_element():
    rng = np.random.default_rng(11)
    c = 5
    mean, offset, scale = rng.standard_normal((3, c))
    var = rng.uniform(0.1, 3.0, c)
    bn = layers.BatchNorm(mean, var, scale=scale, offset=offset, epsilon=1e-3)
    x = rng.standard_normal((2, c, 3, 4))
    expected = np.empty_like(x)
    for n, ch, i, j in itertools.product(*(range(m) for m in x.shape)):
        expected[n, ch, i, j] = (x[n, ch, i, j] - mean[ch]) / np.sqrt(var[ch] + 1e-3) * scale[ch] + offset[ch]
    np.testing.assert_allclose(reference.forward(bn, x), expected, rtol=1e-13, atol=1e-13)
    x32 = x.astype(np.float32)
    np.testing.assert_allclose(reference.forward(bn, x32, dtype=np.float32), expected, rtol=1.3e-6, atol=1e-5)


def test_graph_runs_in_place_only_on_values_nobody_reads_again():
    """Elementwise layers write into inputs no other node reads: a value read twice, an alias made by an
    Identity or a Flatten, the caller's input and the graph's outputs must come out untouched."""
    from layoutconv.graph import Graph, Input, Node

    rng = np.random.default_rng(5)
    c = 3  # the input's channels: conv's output is added to the input's relu
    bn = layers.BatchNorm(rng.standard_normal(c), rng.uniform(0.5, 2, c), scale=rng.standard_normal(c), offset=rng.standard_normal(c))
    g = Graph(
        layers={
            "conv": Conv(rng.standard_normal((c, 3, 5)), rng.standard_normal(c), padding="same_upper"),
            "bn": bn,
            "relu": layers.Activation("relu"),
            "same": layers.Identity(),
            "add": layers.Merge("add"),
            "flat": layers.Flatten(),
        },
        inputs=[Input("x", (7, 3))],
        nodes=[
            Node("conv", "conv", ("x",)),
            Node("alias", "same", ("conv",)),  # the same array under a second name
            Node("bn", "bn", ("alias",)),  # alias's last use, but conv is read again below
            Node("relu", "relu", ("bn",)),  # bn's last use: may be overwritten
            Node("sum", "add", ("relu", "conv")),  # conv's last use, relu's too
            Node("relu_in", "relu", ("x",)),  # the caller's input: never overwritten
            Node("total", "add", ("sum", "relu_in")),
            Node("flat", "flat", ("total",), "flat"),
            Node("out", "relu", ("flat",), "flat"),  # a view of total, whose memory nobody else reads
        ],
        outputs=["sum", "out"],
    )
    x = rng.standard_normal((2, 7, 3))
    before = x.copy()
    got_sum, got_out = reference.forward(g, x)
    np.testing.assert_array_equal(x, before)
    cf = np.ascontiguousarray(x.transpose(0, 2, 1))
    conv = reference.forward(g.layers["conv"], cf)
    relu = np.maximum((conv - bn.mean[:, None]) / np.sqrt(bn.variance[:, None] + bn.epsilon) * bn.scale[:, None] + bn.offset[:, None], 0)
    expected_sum = relu + conv
    expected_out = np.maximum((expected_sum + np.maximum(cf, 0)).transpose(0, 2, 1).reshape(2, -1), 0)
    np.testing.assert_allclose(got_sum.transpose(0, 2, 1), expected_sum, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(got_out, expected_out, rtol=1e-13, atol=1e-13)
