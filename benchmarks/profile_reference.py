"""Where ``reference.forward`` spends its time on the issue-9 cases, and prototypes for making it faster.

Not part of ``make bench``.  Run ``PYTHONPATH=. python benchmarks/profile_reference.py``
(``--runs N``, ``--only TEXT``, ``--transposed`` to also try the transposed cases).

1. Stages: the steps of ``layoutconv.reference._conv_forward`` replayed one by one
   (input check, cast + pad, window view, numpy's einsum split into the steps
   its batched-matmul path takes, bias), each timed on its own.
2. Prototypes, checked against ``reference.forward`` and timed in the same run as
   onnxruntime (default threads), which issue 9 measures against:

   * ``einsum, no g axis``: today's einsum, but when ``groups == 1`` without the
     group axis of size 1; that axis makes numpy's einsum reduce over it in a
     first ``c_einsum`` call, i.e. copy the whole window tensor once before
     the ``reshape`` copies it again.
   * ``im2col``: copy the windows tap by tap (each tap is a strided slice of the
     padded input) into a contiguous ``(n, g, C/g * K, *out)`` buffer, then one
     ``matmul`` with the kernel as ``(g, O/g, C/g * K)``: one copy, one GEMM per
     image and group, output already channels-first, bias added in place.
   * ``im2col, blocks of B``: the same with the batch in blocks of B images,
     reusing one buffer (with B = 1 it stays in the last-level cache).
   * ``GEMM of im2col alone``: the matmul on a prepared buffer, the floor of that
     approach with numpy's BLAS.
   * ``transposed: one GEMM + col2im``: for ``ConvTranspose``, one matmul for
     every tap at once, then the per-tap strided scatter-add (today: one
     non-BLAS einsum per tap).

Prototypes live here only; layoutconv/ is unchanged.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _harness import OthersLoad, fmt_ms, load_now, machine_info, median_seconds, onnx_runner, wait_quiet  # noqa: E402
from bench_reference import cases  # noqa: E402

from layoutconv import Conv, ConvTranspose, activations, reference  # noqa: E402
from numpy._core.einsumfunc import _parse_eq_to_batch_matmul  # noqa: E402
from numpy._core.multiarray import c_einsum  # noqa: E402


# -- 1. stages of today's forward -------------------------------------------------
def stages(conv: Conv, x: np.ndarray, dtype, runs: int) -> dict[str, float]:
    """Median seconds of each step of ``_conv_forward``, each replayed on the previous step's result."""
    rank = conv.spatial_rank
    axes = tuple(range(2, 2 + rank))
    n, c = x.shape[:2]
    g, o = conv.groups, conv.out_channels
    t, k = "pqr"[:rank], "uvw"[:rank]
    eq = f"ngc{t}{k},goc{k}->ngo{t}"
    out: dict[str, float] = {}

    out["check_input"] = median_seconds(lambda: reference.check_input(conv, x), runs)
    _, pads = reference.check_input(conv, x)
    out["astype + pad"] = median_seconds(lambda: reference.pad(x.astype(dtype, copy=False), pads, conv.padding_mode), runs)
    xp = reference.pad(x.astype(dtype, copy=False), pads, conv.padding_mode)

    def window() -> np.ndarray:
        windows = sliding_window_view(xp, conv.receptive_field, axis=axes)
        pick = (slice(None),) * 2 + tuple(slice(None, None, s) for s in conv.stride)
        pick += tuple(slice(None, None, d) for d in conv.dilation)
        windows = windows[pick]
        return windows.reshape(n, g, c // g, *windows.shape[2 : 2 + rank], *conv.kernel_shape)

    out["window view (+reshape)"] = median_seconds(window, runs)
    windows = window()
    shape = windows.shape[3 : 3 + rank]
    w = conv.kernel.astype(dtype).reshape(g, o // g, c // g, *conv.kernel_shape)
    out["einsum total"] = median_seconds(lambda: np.einsum(eq, windows, w, optimize=True), runs)
    # the steps of numpy's bmm_einsum path (numpy >= 2.4) for this equation
    eq_a, eq_b, shape_a, shape_b, shape_ab, perm_ab, _ = _parse_eq_to_batch_matmul(eq, windows.shape, w.shape)
    a = windows
    if eq_a is not None:
        out[f"  einsum: c_einsum {eq_a}"] = median_seconds(lambda: c_einsum(eq_a, windows), runs)
        a = c_einsum(eq_a, windows)
    if shape_a is not None:
        out["  einsum: reshape copy of windows"] = median_seconds(lambda: np.reshape(a, shape_a), runs)
        a = np.reshape(a, shape_a)
    b = c_einsum(eq_b, w) if eq_b is not None else w
    b = np.reshape(b, shape_b) if shape_b is not None else b
    out[f"  einsum: matmul {a.shape}@{b.shape}"] = median_seconds(lambda: np.matmul(a, b), runs)
    y = np.einsum(eq, windows, w, optimize=True).reshape(n, o, *shape)
    if conv.bias is not None:
        bias = conv.bias.astype(dtype).reshape((1, o) + (1,) * rank)
        out["bias (y + b, y is a transposed view)"] = median_seconds(lambda: y + bias, runs)
        y = y + bias
    out["activation"] = median_seconds(lambda: activations.apply(conv.activation, y), runs)
    out["forward (whole)"] = median_seconds(lambda: reference.forward(conv, x, dtype=dtype), runs)
    return out


# -- 2. prototypes --------------------------------------------------------------------
def einsum_no_group_axis(conv: Conv, x: np.ndarray, dtype) -> np.ndarray:
    """Today's forward, but without the size-1 group axis when groups == 1."""
    if conv.groups != 1:
        return reference.forward(conv, x, dtype=dtype)
    x, pads = reference.check_input(conv, x)
    rank = conv.spatial_rank
    n, c = x.shape[:2]
    xp = reference.pad(x.astype(dtype, copy=False), pads, conv.padding_mode)
    windows = sliding_window_view(xp, conv.receptive_field, axis=tuple(range(2, 2 + rank)))
    pick = (slice(None),) * 2 + tuple(slice(None, None, s) for s in conv.stride)
    windows = windows[pick + tuple(slice(None, None, d) for d in conv.dilation)]
    t, k = "pqr"[:rank], "uvw"[:rank]
    y = np.einsum(f"nc{t}{k},oc{k}->no{t}", windows, conv.kernel.astype(dtype), optimize=True)
    if conv.bias is not None:
        y = y + conv.bias.astype(dtype).reshape((1, -1) + (1,) * rank)
    return activations.apply(conv.activation, y)


def im2col(conv: Conv, x: np.ndarray, dtype, block: int | None = None) -> np.ndarray:
    """Taps copied into a contiguous (B, g, C/g * K, P) buffer, then one matmul per block of images."""
    x, pads = reference.check_input(conv, x)
    rank = conv.spatial_rank
    n, c = x.shape[:2]
    g, o = conv.groups, conv.out_channels
    xp = reference.pad(x.astype(dtype, copy=False), pads, conv.padding_mode)
    shape = conv.output_shape(x.shape[2:])
    positions = int(np.prod(shape))
    taps = int(np.prod(conv.kernel_shape))
    w = conv.kernel.astype(dtype).reshape(g, o // g, (c // g) * taps)
    y = np.empty((n, o, *shape), dtype)
    block = block or n
    cols = np.empty((block, c, *conv.kernel_shape, *shape), dtype)
    for start in range(0, n, block):
        stop = min(start + block, n)
        buf = cols[: stop - start]
        for tap in itertools.product(*(range(kk) for kk in conv.kernel_shape)):
            where = tuple(slice(d * kk, d * kk + s * (m - 1) + 1, s) for d, kk, s, m in zip(conv.dilation, tap, conv.stride, shape))
            buf[(slice(None), slice(None), *tap)] = xp[(slice(start, stop), slice(None), *where)]
        np.matmul(w, buf.reshape(stop - start, g, (c // g) * taps, positions), out=y[start:stop].reshape(stop - start, g, o // g, positions))
    if conv.bias is not None:
        y += conv.bias.astype(dtype).reshape((1, o) + (1,) * rank)
    return activations.apply(conv.activation, y)


def gemm_only(conv: Conv, x: np.ndarray, dtype):
    """The GEMM of im2col alone on a prepared buffer: the floor of that approach with numpy's BLAS."""
    c, o, g = conv.in_channels, conv.out_channels, conv.groups
    positions = int(np.prod(conv.output_shape(x.shape[2:])))
    taps = int(np.prod(conv.kernel_shape))
    w = np.ones((g, o // g, (c // g) * taps), dtype)
    cols = np.ones((x.shape[0], g, (c // g) * taps, positions), dtype)
    return lambda: np.matmul(w, cols)


def transpose_gemm_col2im(t: ConvTranspose, x: np.ndarray, dtype) -> np.ndarray:
    """One matmul for every tap, then the per-tap strided scatter-add (col2im)."""
    rank = t.spatial_rank
    n, c, *size = x.shape
    pads = t.pads(tuple(size))
    full = [s * (m - 1) + r + a for m, s, r, a in zip(size, t.stride, t.receptive_field, t.output_padding)]
    g, o = t.groups, t.out_channels
    taps = int(np.prod(t.kernel_shape))
    xg = x.astype(dtype, copy=False).reshape(n, g, c // g, int(np.prod(size)))
    # w[g, i, o, *k] -> (g, o * K, i)
    w = t.kernel.astype(dtype).reshape(g, c // g, (o // g) * taps).transpose(0, 2, 1)
    parts = np.matmul(w, xg).reshape(n, g, o // g, *t.kernel_shape, *size)
    y = np.zeros((n, g, o // g, *full), dtype=dtype)
    for tap in itertools.product(*(range(k) for k in t.kernel_shape)):
        where = tuple(slice(d * k, d * k + s * (m - 1) + 1, s) for d, k, s, m in zip(t.dilation, tap, t.stride, size))
        y[(slice(None),) * 3 + where] += parts[(slice(None),) * 3 + tap]
    crop = tuple(slice(b, f - e) for (b, e), f in zip(pads, full))
    y = y.reshape(n, o, *full)[(slice(None), slice(None)) + crop]
    if t.bias is not None:
        y = y + t.bias.astype(dtype).reshape((1, o) + (1,) * rank)
    return activations.apply(t.activation, y)


def profile_one(record, x: np.ndarray, dtype, runs: int) -> None:
    """Print the stages and the prototypes of one case in one dtype, with onnxruntime timed alongside."""
    name = np.dtype(dtype).name
    ort = median_seconds(onnx_runner(record, x), runs)
    print(f"  -- {name}: onnxruntime (default threads, float32) {fmt_ms(ort)}")
    truth = reference.forward(record, x, dtype=dtype)
    tol = (1e-9 if dtype == np.float64 else 1e-4) * float(np.max(np.abs(truth)))
    protos = {"today's reference.forward": lambda: reference.forward(record, x, dtype=dtype)}
    if isinstance(record, Conv):
        print(f"  -- {name}: stages of reference.forward (each timed alone)")
        for step, sec in stages(record, x, dtype, runs).items():
            print(f"     {step:<58} {fmt_ms(sec):>10}")
        protos["einsum, no g axis"] = lambda: einsum_no_group_axis(record, x, dtype)
        for block in (None, 4, 1):
            protos[f"im2col, {'whole batch' if block is None else f'blocks of {block}'}"] = (
                lambda block=block: im2col(record, x, dtype, block=block)
            )
    else:
        protos["transposed: one GEMM + col2im"] = lambda: transpose_gemm_col2im(record, x, dtype)
    print(f"  -- {name}: prototypes (time, ratio to onnxruntime)")
    for label, fn in protos.items():
        got = fn()
        assert got.shape == truth.shape and np.allclose(got, truth, rtol=0, atol=tol), label
        sec = median_seconds(fn, runs)
        print(f"     {label:<58} {fmt_ms(sec):>10} {sec / ort:>6.1f}x")
    if isinstance(record, Conv):
        sec = median_seconds(gemm_only(record, x, dtype), runs)
        print(f"     {'(GEMM of im2col alone, prepared buffer)':<58} {fmt_ms(sec):>10} {sec / ort:>6.1f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed calls per measurement (median taken); default 5")
    parser.add_argument("--only", default="", help="profile only the cases whose name contains this text")
    parser.add_argument("--transposed", action="store_true", help="also prototype the transposed cases")
    parser.add_argument("--quiet", type=float, default=None, metavar="SHARE",
                        help="before each case and dtype, wait (up to 10 min) until other processes use less than SHARE of the CPU")
    args = parser.parse_args(argv)
    for line in machine_info():
        print(line)
    print(f"each time: median of {args.runs} runs after 1 warm-up\n")
    for case in cases(np.random.default_rng(0)):
        wanted = case.issue9 or (args.transposed and isinstance(case.record, ConvTranspose))
        if not wanted or args.only not in case.name:
            continue
        x = np.random.default_rng(1).standard_normal(case.x_shape).astype(np.float32)
        print(f"== {case.name}")
        for dtype in (np.float64, np.float32):
            if args.quiet is not None:
                wait_quiet(args.quiet)
            with OthersLoad() as others:
                profile_one(case.record, x, dtype, args.runs)
            print(f"     others' CPU share meanwhile: {others.share:.0%}")
        print(flush=True)
    print(f"load average (1 min) at the end: {load_now():.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
