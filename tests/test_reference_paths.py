"""The reference pass's short cuts, each against a direct loop written here.

1x1 convolutions without padding multiply the input itself (no column copy); pooling reduces one
strided view per tap; batch normalisation is one multiply and one add; stride-1 2-D convolutions
stack their kernel rows in the products' inner dimension (the row stack), unless a cost rule sends a
big kernel on a tiny input to the tap-by-tap columns.  The oracles below are the definitions,
written with explicit loops over output positions.
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


# -- 2-D convolutions: the row stack, the cost rule, and where the column paths convert -------------

_NUMPY_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _conv2d_loop(w, b, x, stride, dilation, groups, pads, mode="zeros"):
    """``y[n, f, i, j] = b[f] + sum_{c,r,t} w[f, c, r, t] x~[n, g(f) C/g + c, s i + d r - p, s j + d t - p]``, a position at a time.

    ``x~`` is ``x`` padded by numpy's own ``np.pad`` (PyTorch's ``padding_mode`` names mapped to numpy's).
    """
    xp = np.pad(np.asarray(x, np.float64), [(0, 0), (0, 0), *pads], mode=_NUMPY_MODES[mode])
    o, cg, kh, kw = w.shape
    og = o // groups
    (sh, sw), (dh, dw) = stride, dilation
    out = [(m - d * (k - 1) - 1) // s + 1 for m, k, s, d in zip(xp.shape[2:], (kh, kw), stride, dilation)]
    y = np.zeros((x.shape[0], o, *out))
    for i, j in itertools.product(range(out[0]), range(out[1])):
        window = xp[:, :, i * sh : i * sh + dh * (kh - 1) + 1 : dh, j * sw : j * sw + dw * (kw - 1) + 1 : dw]
        for g in range(groups):
            part = window[:, g * cg : (g + 1) * cg]
            y[:, g * og : (g + 1) * og, i, j] = np.tensordot(part, np.asarray(w[g * og : (g + 1) * og], np.float64), axes=([1, 2, 3], [1, 2, 3]))
    if b is not None:
        y += np.asarray(b, np.float64)[:, None, None]
    return y


def _float32_bound(conv, x):
    """What float32 arithmetic may miss by: fan-in times the unit roundoff, relative to ``|W| |x|``."""
    scale = _conv2d_loop(np.abs(conv.kernel), None if conv.bias is None else np.abs(conv.bias), np.abs(x), conv.stride, conv.dilation, conv.groups, conv.pads(x.shape[2:]), conv.padding_mode)
    return (conv.fan_in + 3) * np.finfo(np.float32).eps * scale


# (filters, channels per group, kernel, dilation, groups, pads, padding mode, input shape (N, C, H, W)); odd sizes throughout
ROW_STACK_CASES = {
    "3x3_p1_in_channels_eq_filters": (6, 6, (3, 3), (1, 1), 1, ((1, 1), (1, 1)), "zeros", (3, 6, 7, 9)),
    "3x3_valid_kernel_size_eq_in_channels": (5, 3, (3, 3), (1, 1), 1, ((0, 0), (0, 0)), "zeros", (3, 3, 8, 7)),
    "2x3_asymmetric_pads_d2": (4, 3, (2, 3), (1, 2), 1, ((2, 0), (1, 3)), "zeros", (3, 3, 5, 9)),
    "3x2_groups3": (6, 2, (3, 2), (1, 1), 3, ((1, 2), (0, 1)), "zeros", (3, 6, 6, 5)),
    "4x1_one_tap_a_row": (4, 3, (4, 1), (1, 1), 1, ((1, 2), (0, 0)), "zeros", (3, 3, 7, 4)),
    "2x2_two_taps_a_row_d3": (3, 4, (2, 2), (1, 3), 1, ((0, 1), (2, 1)), "zeros", (3, 4, 5, 6)),
    "3x3_pads_wider_than_the_kernel": (3, 2, (3, 3), (1, 1), 1, ((4, 3), (2, 5)), "zeros", (3, 2, 3, 4)),
    "5x4_groups2_reflect": (4, 2, (5, 4), (1, 1), 2, ((2, 2), (1, 2)), "reflect", (3, 4, 6, 7)),
    "3x5_d2_replicate": (3, 3, (3, 5), (1, 2), 1, ((1, 1), (4, 4)), "replicate", (3, 3, 4, 6)),
    "2x3_circular": (4, 3, (2, 3), (1, 1), 1, ((0, 1), (2, 2)), "circular", (3, 3, 5, 4)),
}

#: (images, chunk, rows) per block: all at once, one row of one image at a time, and sizes that leave
#: remainders (3 images as 2 + 1, chunks of 3 rows cut into products of 2 and 1 rows)
ROW_STACK_BLOCKS = {"whole": None, "one_row": (1, 1, 1), "remainders": (2, 3, 2), "chunk_of_rows": (3, 5, 5)}


def _row_stack_conv(case, with_bias, seed):
    o, cg, ks, dilation, groups, pads, mode, shape = ROW_STACK_CASES[case]
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((o, cg, *ks)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32) if with_bias else None
    x = rng.standard_normal(shape).astype(np.float32)
    return Conv(w, b, dilation=dilation, groups=groups, padding=pads, padding_mode=mode), x


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("block", ROW_STACK_BLOCKS, ids=list(ROW_STACK_BLOCKS))
@pytest.mark.parametrize("case", ROW_STACK_CASES, ids=list(ROW_STACK_CASES))
def test_row_stack_against_a_loop(monkeypatch, case, block, with_bias, dtype):
    """Kernel rows stacked in the products' inner dimension: every block boundary, pad, group and tap count."""
    conv, x = _row_stack_conv(case, with_bias, len(case) + 7 * with_bias)
    ho, wo = conv.output_shape(x.shape[2:])
    monkeypatch.setattr(reference, "ROW_STACK_COLUMNS", 0)  # the sizes' rules off: these convolutions are small
    monkeypatch.setattr(reference, "ROW_STACK_WEIGHTS", 0)
    plan = reference._RowStack.of(x.shape[0], x.shape[1], tuple(m + b + e for m, (b, e) in zip(x.shape[2:], conv.pads(x.shape[2:]))), (ho, wo), conv, np.dtype(dtype).itemsize)
    assert plan is not None and plan.step == conv.dilation[1]
    if ROW_STACK_BLOCKS[block] is not None:
        images, chunk, rows = ROW_STACK_BLOCKS[block]
        forced = reference._RowStack(min(images, x.shape[0]), min(chunk, ho), min(rows, ho), plan.step)
        monkeypatch.setattr(reference._RowStack, "of", classmethod(lambda cls, *args: forced))
    got = reference.forward(conv, x, dtype=dtype)
    expected = _conv2d_loop(conv.kernel, conv.bias, x, conv.stride, conv.dilation, conv.groups, conv.pads(x.shape[2:]), conv.padding_mode)
    assert got.dtype == dtype and got.shape == expected.shape
    if dtype == np.float64:
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    else:
        assert np.all(np.abs(got - expected) <= _float32_bound(conv, x))


def test_row_stack_takes_the_resnet_stage_and_leaves_what_it_would_slow_down():
    """With the default sizes: the ResNet stage of issue 9 takes the row stack in both dtypes; too few columns
    (one small image), tiny groups, strides, dilated rows and 1-D or 3-D kernels do not."""
    def plan(conv, shape, itemsize=8):
        pads = conv.pads(shape[2:])
        padded = tuple(m + b + e for m, (b, e) in zip(shape[2:], pads))
        return reference._RowStack.of(shape[0], shape[1], padded, conv.output_shape(shape[2:]), conv, itemsize)

    resnet = Conv(np.zeros((64, 64, 3, 3), np.float32), padding=1)
    for itemsize in (4, 8):
        stack = plan(resnet, (8, 64, 56, 56), itemsize)
        assert stack is not None and stack.images * stack.rows >= 1
    assert plan(resnet, (1, 64, 14, 14)) is None  # one image of 16 padded columns: products too small
    assert plan(Conv(np.zeros((128, 4, 3, 3)), padding=1, groups=32), (8, 128, 28, 28)) is None  # 4 channels a group
    assert plan(Conv(np.zeros((64, 64, 3, 3)), padding=1, stride=2), (8, 64, 56, 56)) is None
    assert plan(Conv(np.zeros((64, 64, 3, 3)), padding=2, dilation=(2, 1)), (8, 64, 56, 56)) is None
    assert plan(Conv(np.zeros((64, 64, 1, 3)), padding=((0, 0), (1, 1))), (8, 64, 56, 56)) is None


@pytest.mark.parametrize("size, taken", [(3, False), (15, True)], ids=["tiny_input_tap_by_tap", "larger_input_row_stack"])
def test_cost_rule_big_kernel_on_a_tiny_input(monkeypatch, size, taken):
    """The row stack (and the row shift) copy the kernel to save column copies: on a tiny input the kernel is the
    larger, and the tap-by-tap columns are used instead; on a larger input, the same kernel takes the row stack."""
    monkeypatch.setattr(reference, "ROW_STACK_COLUMNS", 0)
    monkeypatch.setattr(reference, "ROW_STACK_WEIGHTS", 0)
    rng = np.random.default_rng(size)
    w = rng.standard_normal((40, 12, 3, 3)).astype(np.float32)  # 4320 weights
    b = rng.standard_normal(40).astype(np.float32)
    conv = Conv(w, b, padding=1)
    x = rng.standard_normal((1, 12, size, size)).astype(np.float32)
    padded = (1, 12, size + 2, size + 2)
    assert (reference._RowStack.of(1, 12, padded[2:], (size, size), conv, 8) is not None) is taken
    if not taken:
        assert reference._RowShift.of(padded, (size, size), conv, 8) is None
    expected = _conv2d_loop(w, b, x, (1, 1), (1, 1), 1, ((1, 1), (1, 1)))
    np.testing.assert_allclose(reference.forward(conv, x), expected, rtol=1e-12, atol=1e-12)
    assert np.all(np.abs(reference.forward(conv, x, dtype=np.float32) - expected) <= _float32_bound(conv, x))


@pytest.mark.parametrize(
    "kernel_dtype, dtype, shape, bias_row",
    [
        (np.float32, np.float64, (1, 6, 5, 5), True),  # the kernel is converted (copied) anyway
        (np.float64, np.float64, (1, 6, 5, 5), False),  # 18 values a row of W, 15 output positions: bias added after
        (np.float32, np.float32, (1, 6, 5, 5), False),  # the same without any copy of the kernel
        (np.float32, np.float32, (3, 6, 17, 15), True),  # 405 output positions: the copy is the cheaper
    ],
    ids=["converted_kernel", "float64_small_output", "float32_small_output", "float32_large_output"],
)
def test_tap_by_tap_bias_against_a_loop(kernel_dtype, dtype, shape, bias_row):
    """The column path puts the bias in the product (a row of ones) when its kernel copy is free or cheap, and
    adds it to the output otherwise; a stride of 2 keeps these convolutions on that path."""
    rng = np.random.default_rng(shape[0] + 2 * (dtype == np.float32))
    w = rng.standard_normal((8, 3, 3, 2)).astype(kernel_dtype)  # 2 groups: 18 values a row of W
    b = rng.standard_normal(8).astype(kernel_dtype)
    conv = Conv(w, b, stride=(2, 1), groups=2, padding=((1, 2), (0, 1)))
    x = rng.standard_normal(shape).astype(np.float32)
    outputs = shape[0] * np.prod(conv.output_shape(shape[2:]))
    assert bias_row == (np.dtype(kernel_dtype) != np.dtype(dtype) or 3 * 3 * 2 < outputs)
    got = reference.forward(conv, x, dtype=dtype)
    expected = _conv2d_loop(w, b, x, (2, 1), (1, 1), 2, ((1, 2), (0, 1)))
    assert got.dtype == dtype
    if dtype == np.float64:
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    else:
        assert np.all(np.abs(got - expected) <= _float32_bound(conv, x))


@pytest.mark.parametrize("kernel, stride", [((3, 4), (2, 3)), ((3, 3), (1, 1))], ids=["tap_by_tap", "row_shift"])
def test_unpadded_float32_input_is_converted_before_any_arithmetic(monkeypatch, kernel, stride):
    """A float32 input without pads through the column paths (the kernel is converted as it is laid out, not
    before): the float64 result must carry no float32 rounding (large inputs, tight tolerance)."""
    monkeypatch.setattr(reference, "ROW_STACK_COLUMNS", float("inf"))  # the row stack's own layout converts: tested above
    monkeypatch.setattr(reference, "ROW_SHIFT_HALO", float("-inf"))
    rng = np.random.default_rng(sum(kernel))
    w = rng.standard_normal((5, 4, *kernel))
    b = rng.standard_normal(5)
    x = (rng.standard_normal((2, 4, 11, 13)) * 1e3).astype(np.float32)
    conv = Conv(w, b, stride=stride)
    got = reference.forward(conv, x)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, _conv2d_loop(w, b, x, stride, (1, 1), 1, ((0, 0), (0, 0))), rtol=1e-12, atol=1e-9)
