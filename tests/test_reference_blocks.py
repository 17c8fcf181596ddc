"""The reference pass's fast paths (blocked im2col + GEMM, kernel rows sharing their columns, depthwise,
blocked transposed scatter) against direct loops.

The block sizes are shrunk so that every boundary is crossed: blocks of images that do not
divide the batch, boxes of output positions that end mid-row, one position per box, and
both ways of laying out the columns (the padded input's flat grid and the exact output grid).
The loops are the independent oracles of ``test_reference_nd`` and ``test_transpose``.
"""

from __future__ import annotations

import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from layoutconv import Conv, ConvTranspose, activations, reference

from test_reference_nd import direct_conv_nd
from test_transpose import direct_transpose

# (O, C/g, kernel, stride, dilation, groups, padding, mode, input shape (N, C, *spatial), activation)
CONV_CASES = {
    "1d_n1_odd_length": (5, 3, (4,), (1,), (1,), 1, ((2, 1),), "zeros", (1, 3, 23), "linear"),
    "1d_groups2_s2_d2_reflect": (4, 3, (3,), (2,), (2,), 2, ((3, 2),), "reflect", (3, 6, 19), "relu"),
    "1d_one_channel": (3, 1, (5,), (1,), (1,), 1, ((0, 0),), "zeros", (2, 1, 17), "linear"),
    "1d_depthwise_x3_d2": (12, 1, (3,), (1,), (2,), 4, ((2, 2),), "replicate", (3, 4, 15), "tanh"),
    "1d_depthwise_x10_gemm": (30, 1, (3,), (1,), (1,), 3, ((1, 1),), "zeros", (2, 3, 11), "linear"),
    "1d_depthwise_s3": (5, 1, (4,), (3,), (1,), 5, ((1, 2),), "circular", (2, 5, 13), "linear"),
    "2d_3x3_p1": (6, 4, (3, 3), (1, 1), (1, 1), 1, ((1, 1), (1, 1)), "zeros", (3, 4, 7, 9), "linear"),
    "2d_s21_d12_circular": (4, 3, (2, 3), (2, 1), (1, 2), 1, ((1, 0), (2, 2)), "circular", (2, 3, 9, 8), "relu"),
    "2d_groups3_2x2_replicate": (6, 2, (3, 2), (1, 2), (1, 1), 3, ((1, 1), (0, 1)), "replicate", (2, 6, 6, 7), "linear"),
    "2d_depthwise_x2_s12": (8, 1, (3, 3), (1, 2), (1, 1), 4, ((1, 1), (1, 1)), "zeros", (3, 4, 6, 9), "linear"),
    "2d_1x1_valid": (5, 4, (1, 1), (1, 1), (1, 1), 1, ((0, 0), (0, 0)), "zeros", (2, 4, 5, 6), "linear"),
    "3d_groups2_s121_d211": (4, 2, (2, 3, 1), (1, 2, 1), (2, 1, 1), 2, ((1, 1), (1, 1), (0, 0)), "zeros", (2, 4, 5, 6, 4), "relu"),
    "3d_depthwise_reflect": (3, 1, (2, 2, 2), (1, 1, 2), (1, 1, 1), 3, ((1, 0), (0, 1), (1, 1)), "reflect", (1, 3, 4, 5, 5), "linear"),
}

#: bytes of im2col per block: one position at a time, an odd size that cuts rows, about two images per block, the default
BLOCKS = {"one_position": 1, "odd": 8 * 37 * 5, "two_images": 8 * 2 * 37 * 80, "default": reference.COLUMN_BYTES}


def _conv_case(rng, case, with_bias):
    o, cg, ks, stride, dilation, groups, padding, mode, xshape, activation = CONV_CASES[case]
    kernel = rng.standard_normal((o, cg, *ks))
    bias = rng.standard_normal(o) if with_bias else None
    conv = Conv(kernel, bias, stride=stride, dilation=dilation, groups=groups, padding=padding, padding_mode=mode, activation=activation)
    x = rng.standard_normal(xshape)
    return conv, x, activations.apply(activation, direct_conv_nd(kernel, bias, x, stride, dilation, groups, padding, mode))


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("products", ["per_block", "per_image"])
@pytest.mark.parametrize("grid", ["flat", "exact"])
@pytest.mark.parametrize("block", BLOCKS, ids=list(BLOCKS))
@pytest.mark.parametrize("case", CONV_CASES, ids=list(CONV_CASES))
def test_conv_matches_direct_loop_across_blocks(rng, monkeypatch, case, block, grid, products, with_bias):
    monkeypatch.setattr(reference, "COLUMN_BYTES", BLOCKS[block])
    monkeypatch.setattr(reference, "GEMM_PER_IMAGE", 0 if products == "per_image" else float("inf"))
    monkeypatch.setattr(reference, "DEPTHWISE_BLOCK", max(1, BLOCKS[block] // 40))
    # flat: stride-1 convolutions use the padded input's grid whatever it wastes; exact: never
    monkeypatch.setattr(reference, "FLAT_GRID_WASTE", float("inf") if grid == "flat" else 0.0)
    monkeypatch.setattr(reference, "ROW_SHIFT_HALO", float("inf"))  # the column copies, tap by tap (the row shift: below)
    conv, x, expected = _conv_case(rng, case, with_bias)
    got = reference.forward(conv, x)
    assert got.dtype == np.float64 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CONV_CASES, ids=list(CONV_CASES))
def test_conv_float32_mode_computes_in_float32(rng, monkeypatch, case):
    monkeypatch.setattr(reference, "COLUMN_BYTES", 8 * 37 * 5)
    monkeypatch.setattr(reference, "DEPTHWISE_BLOCK", 7)
    conv, x, expected = _conv_case(rng, case, True)
    got = reference.forward(conv, x, dtype=np.float32)
    assert got.dtype == np.float32
    # float32 rounding of inputs, weights and every partial sum: fan-in times the unit roundoff, relative to |W| |x|
    scale = direct_conv_nd(np.abs(conv.kernel), np.abs(conv.bias), np.abs(x), conv.stride, conv.dilation, conv.groups, conv.pads(x.shape[2:]), conv.padding_mode)
    bound = (conv.fan_in + 3) * np.finfo(np.float32).eps * scale
    assert np.all(np.abs(got - expected) <= bound)


# Stride 1, a kernel of several rows: kernel rows share their columns (reference._row_shift_gemm).  The row
# stack, which takes most 2-D cases first, is switched off here (its own tests: test_reference_paths.py).
# (O, C/g, kernel, dilation, groups, padding, mode, input shape (N, C, *spatial), activation); odd sizes throughout
ROW_SHIFT_CASES = {
    "2d_3x3_p1": (5, 3, (3, 3), (1, 1), 1, ((1, 1), (1, 1)), "zeros", (3, 3, 7, 11), "linear"),
    "2d_3x3_valid": (4, 5, (3, 3), (1, 1), 1, ((0, 0), (0, 0)), "zeros", (2, 5, 9, 7), "linear"),
    "2d_2x3_d12_groups2_reflect": (6, 2, (2, 3), (1, 2), 2, ((2, 1), (0, 3)), "reflect", (3, 4, 7, 9), "relu"),
    "2d_3x2_d21_circular": (4, 3, (3, 2), (2, 1), 1, ((1, 0), (2, 2)), "circular", (2, 3, 9, 8), "linear"),
    "2d_3x1_groups3_replicate": (6, 2, (3, 1), (1, 1), 3, ((3, 0), (1, 2)), "replicate", (2, 6, 5, 6), "tanh"),
    "2d_5x4_one_channel": (3, 1, (5, 4), (1, 1), 1, ((2, 2), (1, 2)), "zeros", (1, 1, 6, 5), "linear"),
    "3d_2x3x2_d211_groups2": (4, 2, (2, 3, 2), (2, 1, 1), 2, ((1, 1), (1, 1), (0, 1)), "zeros", (2, 4, 5, 6, 4), "relu"),
    "3d_3x1x3_reflect": (3, 3, (3, 1, 3), (1, 1, 1), 1, ((1, 1), (0, 0), (1, 1)), "reflect", (1, 3, 4, 3, 5), "linear"),
}


def _row_shift_case(rng, case, with_bias, n=None):
    o, cg, ks, dilation, groups, padding, mode, xshape, activation = ROW_SHIFT_CASES[case]
    kernel = rng.standard_normal((o, cg, *ks))
    bias = rng.standard_normal(o) if with_bias else None
    conv = Conv(kernel, bias, dilation=dilation, groups=groups, padding=padding, padding_mode=mode, activation=activation)
    x = rng.standard_normal((xshape[0] if n is None else n, *xshape[1:]))
    stride = (1,) * len(ks)
    return conv, x, activations.apply(activation, direct_conv_nd(kernel, bias, x, stride, dilation, groups, conv.pads(x.shape[2:]), mode))


def _row_shift_plan(conv, x, itemsize):
    padded = x.shape[:2] + tuple(m + b + e for m, (b, e) in zip(x.shape[2:], conv.pads(x.shape[2:])))
    return reference._RowShift.of(padded, conv.output_shape(x.shape[2:]), conv, itemsize)


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("block", BLOCKS, ids=list(BLOCKS))
@pytest.mark.parametrize("case", ROW_SHIFT_CASES, ids=list(ROW_SHIFT_CASES))
def test_row_shift_matches_direct_loop_across_blocks(rng, monkeypatch, case, block, with_bias):
    monkeypatch.setattr(reference, "ROW_STACK_COLUMNS", float("inf"))
    monkeypatch.setattr(reference, "COLUMN_BYTES", BLOCKS[block])
    monkeypatch.setattr(reference, "FLAT_GRID_WASTE", float("inf"))
    monkeypatch.setattr(reference, "ROW_SHIFT_HALO", float("-inf"))  # whatever share of a box its halo is
    conv, x, expected = _row_shift_case(rng, case, with_bias)
    plan = _row_shift_plan(conv, x, 8)
    assert plan is not None
    if block == "one_position":
        assert (plan.block, plan.most) == (1, 1)
    got = reference.forward(conv, x)
    assert got.dtype == np.float64 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_row_shift_boxes_cut_rows_and_images(rng, monkeypatch):
    """Budgets that give boxes ending mid-row, several images per block (not dividing the batch), one box per image."""
    monkeypatch.setattr(reference, "ROW_STACK_COLUMNS", float("inf"))
    monkeypatch.setattr(reference, "ROW_SHIFT_HALO", float("-inf"))
    conv, x, expected = _row_shift_case(rng, "2d_3x3_p1", True, n=5)
    # per grid position: three shifted copies of 3 channels and a row of ones; 3 kernel rows' products and their sum, 5 filters
    per_position = 3 * 3 + 1 + 4 * 5
    plans = set()
    image = 6 * 13 + 11 + 26  # grid positions of an image's outputs (padded rows of 13) and its halo (two rows)
    for positions in (26 + 7, 26 + 30, 2 * image, 5 * image):
        monkeypatch.setattr(reference, "COLUMN_BYTES", 8 * per_position * positions)
        plan = _row_shift_plan(conv, x, 8)
        plans.add((plan.block, plan.most))
        np.testing.assert_allclose(reference.forward(conv, x), expected, rtol=1e-12, atol=1e-12)
    # 5 positions (a row of 11 in three boxes), 25 (two rows), two images per block (5 = 2 + 2 + 1), the whole batch
    assert plans == {(1, 5), (1, 25), (2, 77), (5, 77)}


@pytest.mark.parametrize("case", ROW_SHIFT_CASES, ids=list(ROW_SHIFT_CASES))
def test_row_shift_float32_mode_computes_in_float32(rng, monkeypatch, case):
    monkeypatch.setattr(reference, "ROW_STACK_COLUMNS", float("inf"))
    monkeypatch.setattr(reference, "COLUMN_BYTES", 4 * 37 * 5)
    monkeypatch.setattr(reference, "FLAT_GRID_WASTE", float("inf"))
    monkeypatch.setattr(reference, "ROW_SHIFT_HALO", float("-inf"))
    conv, x, expected = _row_shift_case(rng, case, True)
    got = reference.forward(conv, x, dtype=np.float32)
    assert got.dtype == np.float32
    scale = direct_conv_nd(np.abs(conv.kernel), np.abs(conv.bias), np.abs(x), conv.stride, conv.dilation, conv.groups, conv.pads(x.shape[2:]), conv.padding_mode)
    assert np.all(np.abs(got - expected) <= (conv.fan_in + 3) * np.finfo(np.float32).eps * scale)


@pytest.mark.parametrize("case", ["2d_3x3_p1", "3d_2x3x2_d211_groups2"])
def test_row_shift_zero_samples(rng, monkeypatch, case):
    """A batch of 0 (the ONNX writer probes shapes with it) gives the output's shape and no work (whichever path:
    with no columns to save, the cost rule sends it to the tap-by-tap one)."""
    monkeypatch.setattr(reference, "FLAT_GRID_WASTE", float("inf"))
    monkeypatch.setattr(reference, "ROW_SHIFT_HALO", float("-inf"))
    conv, x, expected = _row_shift_case(rng, case, True, n=0)
    for dtype in (np.float64, np.float32):
        got = reference.forward(conv, x, dtype=dtype)
        assert got.shape == expected.shape == (0, conv.out_channels, *conv.output_shape(x.shape[2:])) and got.dtype == dtype


def test_row_shift_plans_for_the_resnet_stage_and_leaves_strides_and_rows_of_one():
    """With the default budget the row shift could take a ResNet-stage 3x3 convolution (the row stack takes it
    first); stride 2, a 1-D kernel and a big kernel on a tiny input (the cost rule) go to the column copies."""
    resnet = Conv(np.zeros((64, 64, 3, 3)), padding=1)
    padded = (8, 64, 58, 58)
    assert reference._RowShift.of(padded, (56, 56), resnet, 4).block == 1  # one image per block in float32
    plan64 = reference._RowShift.of(padded, (56, 56), resnet, 8)
    assert plan64.block == 1 and plan64.most < 56 * 56  # boxes of rows in float64
    assert reference._RowShift.of(padded, (28, 28), Conv(np.zeros((64, 64, 3, 3)), padding=1, stride=2), 4) is None
    assert reference._RowShift.of((8, 64, 1032), (1024,), Conv(np.zeros((64, 64, 9)), padding=4), 4) is None
    big = Conv(np.zeros((512, 256, 3, 3), np.float32), padding=1)  # 1.2 M weights; the columns of 2 images of 4x4: 74 k values
    assert reference._RowShift.of((2, 256, 6, 6), (4, 4), big, 4) is None
    assert reference._RowStack.of(2, 256, (6, 6), (4, 4), big, 4) is None


def _traced_peak(run):
    """``run()`` and the most memory Python allocators held meanwhile (numpy's buffers included)."""
    tracemalloc.start()
    try:
        out = run()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_row_shift_memory_is_bounded(rng, monkeypatch):
    """Three shifted copies of the input per box, not nine: the workspace stays within the budget."""
    monkeypatch.setattr(reference, "COLUMN_BYTES", 1 << 20)  # 819 grid positions a box: a sixth of an image
    conv = Conv(rng.standard_normal((16, 32, 3, 3)), rng.standard_normal(16), padding=1)
    x = rng.standard_normal((2, 32, 64, 64))
    assert _row_shift_plan(conv, x, 8).most < 64 * 64 // 4
    y, peak = _traced_peak(lambda: reference.forward(conv, x))
    padded = 2 * 32 * 66 * 66 * 8
    assert peak <= padded + y.nbytes + reference.COLUMN_BYTES + (1 << 20)
    np.testing.assert_allclose(y[:1, :2], direct_conv_nd(conv.kernel[:2], conv.bias[:2], x[:1], (1, 1), (1, 1), 1, ((1, 1), (1, 1)), "zeros"), rtol=1e-12, atol=1e-12)


def test_row_stack_memory_is_bounded(rng, monkeypatch):
    """The row stack lays the input out a block at a time in the workspace: no padded (float64) copy of the whole
    input, no column matrix; besides the output, the workspace and the re-laid kernel only."""
    monkeypatch.setattr(reference, "ROW_STACK_BYTES", 1 << 18)
    monkeypatch.setattr(reference, "COLUMN_BYTES", 1 << 20)
    conv = Conv(rng.standard_normal((48, 48, 3, 3)).astype(np.float32), rng.standard_normal(48).astype(np.float32), padding=1)
    x = rng.standard_normal((8, 48, 40, 30)).astype(np.float32)
    padded = 8 * 48 * 42 * 32 * 8
    assert reference._RowStack.of(8, 48, (42, 32), (40, 30), conv, 8) is not None
    y, peak = _traced_peak(lambda: reference.forward(conv, x))
    assert peak <= y.nbytes + reference.COLUMN_BYTES + (1 << 19) < y.nbytes + padded
    np.testing.assert_allclose(y[:1, :1], direct_conv_nd(conv.kernel[:1], conv.bias[:1], x[:1], (1, 1), (1, 1), 1, ((1, 1), (1, 1)), "zeros"), rtol=1e-12, atol=1e-12)


TRANSPOSE_CASES = {
    # kernel (C, O/g, *k), stride, dilation, groups, padding, output_padding, input shape (N, C, *spatial), output_shape
    "1d_n1_s2_crop": ((4, 3, 3), (2,), (1,), 1, ((1, 2),), (1,), (1, 4, 11), None),
    "1d_groups2_d2_no_pads": ((4, 2, 3), (3,), (2,), 2, ((0, 0),), (0,), (3, 4, 7), None),
    # ONNX output_shape past the full output (19): a negative end pad, two positions that only get the bias
    "1d_negative_end_pad": ((3, 2, 4), (3,), (1,), 1, "same_upper", (0,), (2, 3, 6), (21,)),
    "2d_s23_groups2": ((4, 3, 3, 2), (2, 3), (1, 2), 2, ((1, 0), (2, 1)), (1, 1), (3, 4, 5, 4), None),
    "3d": ((2, 2, 2, 3, 1), (2, 1, 2), (1, 1, 1), 1, ((0, 1), (1, 1), (0, 0)), (1, 0, 0), (2, 2, 3, 4, 2), None),
}


@pytest.mark.parametrize("block", BLOCKS, ids=list(BLOCKS))
@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=list(TRANSPOSE_CASES))
def test_transpose_matches_direct_loop_across_blocks(rng, monkeypatch, case, block):
    monkeypatch.setattr(reference, "COLUMN_BYTES", BLOCKS[block])
    kshape, stride, dilation, groups, padding, extra, xshape, target = TRANSPOSE_CASES[case]
    kernel = rng.standard_normal(kshape)
    bias = rng.standard_normal(kshape[1] * groups)
    x = rng.standard_normal(xshape)
    t = ConvTranspose(kernel, bias, stride=stride, dilation=dilation, groups=groups, padding=padding, output_padding=extra, output_shape=target)
    pads = t.pads(xshape[2:])
    if target is not None:
        assert pads == ((0, -2),)
    expected = direct_transpose(kernel, bias, x, stride, dilation, groups, pads, extra)
    got = reference.forward(t, x)
    assert got.shape == expected.shape == (xshape[0], t.out_channels, *t.output_shape(xshape[2:]))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_im2col_memory_is_bounded(rng, monkeypatch):
    """The column matrix of the whole batch is 9 x 64 / 16 = 36 times the output; the reference fills it block by block."""
    monkeypatch.setattr(reference, "COLUMN_BYTES", 1 << 16)
    conv = Conv(rng.standard_normal((16, 64, 9)), rng.standard_normal(16), padding="same_upper")
    x = rng.standard_normal((4, 64, 4096))
    full_columns = 4 * (64 * 9 + 1) * 4096 * 8
    y, peak = _traced_peak(lambda: reference.forward(conv, x))
    padded = 4 * 64 * (4096 + 8) * 8
    assert peak <= padded + y.nbytes + 2 * reference.COLUMN_BYTES + (1 << 20)
    assert peak < full_columns / 5


def test_workspace_is_per_thread_and_bounded(rng):
    """Threads running the reference at once get the same results as one after the other; the kept workspace stays small."""
    convs = [_conv_case(rng, case, True) for case in ("2d_3x3_p1", "1d_groups2_s2_d2_reflect", "3d_groups2_s121_d211")]
    transposed = ConvTranspose(rng.standard_normal((4, 3, 3)), rng.standard_normal(3), stride=(2,), padding=((1, 2),))
    tx = rng.standard_normal((3, 4, 11))
    jobs = [(conv, x) for conv, x, _ in convs] + [(transposed, tx)]
    alone = [reference.forward(record, x) for record, x in jobs]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda job: [reference.forward(*job) for _ in range(20)], jobs))
    for want, got in zip(alone, together):
        for y in got:
            np.testing.assert_allclose(y, want, rtol=1e-13, atol=1e-13)
    assert reference._LOCAL.workspace.nbytes <= reference.COLUMN_BYTES + 4096
