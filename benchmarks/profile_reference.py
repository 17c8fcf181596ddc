"""Where ``reference.forward`` spends its time on the issue-9 cases, and the floor of its approach.

Not part of ``make bench``.  Run ``PYTHONPATH=. python benchmarks/profile_reference.py``
(``--runs N``, ``--only TEXT``, ``--all`` for every benchmark case, ``--quiet SHARE``).

For every case and dtype (float32, float64), timed in the same run:

* ``reference.forward``, and inside it the time of its ``np.matmul`` calls (the
  module's ``np`` is swapped for a proxy that times ``matmul``; the rest is the
  padding, the column copies, the crop and Python);
* ``GEMM floor``: ``np.matmul`` alone on the whole batch's column matrix, prepared
  beforehand (per image, bias row included): what any im2col + BLAS reference pays
  with numpy's BLAS, before a single copy;
* onnxruntime's ``MatMul`` on the same matrices (float32 only: onnxruntime has no
  float64 GEMM on CPU), to tell a better GEMM from a better convolution;
* onnxruntime's ``Conv`` with default session options (what issue 9 measures
  against) and with ``ORT_ENABLE_EXTENDED`` graph optimisation, which leaves out
  the NCHWc layout transformer (its blocked direct-convolution kernels), so the
  Conv runs as im2col + MLAS GEMM.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import types

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _harness import OthersLoad, fmt_ms, load_now, machine_info, median_seconds, onnx_model_bytes, onnx_runner, wait_quiet  # noqa: E402
from bench_reference import cases  # noqa: E402

from layoutconv import Conv, reference  # noqa: E402


class _TimedNumpy(types.ModuleType):
    """``numpy`` with ``matmul`` timed: swapped in for ``reference.np`` while profiling."""

    def __init__(self) -> None:
        super().__init__("numpy")
        self.gemm = 0.0

    def __getattr__(self, name: str):
        return getattr(np, name)

    def matmul(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = np.matmul(*args, **kwargs)
        self.gemm += time.perf_counter() - t0
        return out


def forward_split(conv: Conv, x: np.ndarray, dtype, runs: int) -> tuple[float, float]:
    """Median seconds of ``reference.forward`` and of the ``np.matmul`` calls inside it (same runs)."""
    proxy = _TimedNumpy()
    totals, gemms = [], []
    reference.np = proxy
    try:
        reference.forward(conv, x, dtype=dtype)
        for _ in range(runs):
            proxy.gemm = 0.0
            t0 = time.perf_counter()
            reference.forward(conv, x, dtype=dtype)
            totals.append(time.perf_counter() - t0)
            gemms.append(proxy.gemm)
    finally:
        reference.np = np
    return float(np.median(totals)), float(np.median(gemms))


def column_shapes(conv: Conv, x_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(images, rows of W, columns of W = rows of the column matrix, positions) of the whole im2col GEMM."""
    n = x_shape[0]
    positions = int(np.prod(conv.output_shape(x_shape[2:])))
    inner = conv.fan_in + (conv.bias is not None)
    return n * conv.groups, conv.out_channels // conv.groups, inner, positions


def gemm_floor(conv: Conv, x_shape: tuple[int, ...], dtype, runs: int) -> float:
    b, m, k, p = column_shapes(conv, x_shape)
    rng = np.random.default_rng(0)
    w, cols = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((b, k, p)).astype(dtype)
    out = np.empty((b, m, p), dtype)
    return median_seconds(lambda: np.matmul(w, cols, out=out), runs)


def ort_matmul(conv: Conv, x_shape: tuple[int, ...], runs: int) -> float:
    """onnxruntime's MatMul (default session) on the float32 column matrices of the case."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    b, m, k, p = column_shapes(conv, x_shape)
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((m, k)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["W", "cols"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("cols", TensorProto.FLOAT, [b, k, p])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = helper.find_min_ir_version_for(model.opset_import)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    cols = rng.standard_normal((b, k, p)).astype(np.float32)
    return median_seconds(lambda: session.run(None, {"cols": cols}), runs)


def ort_without_nchwc(conv: Conv, x: np.ndarray, runs: int) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    session = ort.InferenceSession(onnx_model_bytes(conv, x.shape[2:]), options, providers=["CPUExecutionProvider"])
    return median_seconds(lambda: session.run(None, {"x": x}), runs)


def profile_case(conv: Conv, x: np.ndarray, runs: int) -> None:
    ort = median_seconds(onnx_runner(conv, x), runs)
    print(f"  onnxruntime Conv, default session (NCHWc kernels)          {fmt_ms(ort):>10}   1.00x")
    plain = ort_without_nchwc(conv, x, runs)
    print(f"  onnxruntime Conv, ORT_ENABLE_EXTENDED (im2col + MLAS GEMM) {fmt_ms(plain):>10} {plain / ort:>6.2f}x")
    mm = ort_matmul(conv, x.shape, runs)
    b, m, k, p = column_shapes(conv, x.shape)
    print(f"  onnxruntime MatMul on the column matrices (float32)".ljust(61) + f"{fmt_ms(mm):>10} {mm / ort:>6.2f}x"
          f"   ({b} x ({m}x{k} @ {k}x{p}))")
    for dtype in (np.float32, np.float64):
        name = np.dtype(dtype).name
        total, gemm = forward_split(conv, x, dtype, runs)
        floor = gemm_floor(conv, x.shape, dtype, runs)
        print(f"  {name}: np.matmul alone on the column matrices (GEMM floor)".ljust(61) + f"{fmt_ms(floor):>10} {floor / ort:>6.2f}x")
        print(f"  {name}: reference.forward".ljust(61) + f"{fmt_ms(total):>10} {total / ort:>6.2f}x")
        print(f"  {name}:   of which np.matmul".ljust(61) + f"{fmt_ms(gemm):>10} {gemm / ort:>6.2f}x")
        print(f"  {name}:   the rest (pad, column copies, crop, Python)".ljust(61) + f"{fmt_ms(total - gemm):>10} {(total - gemm) / ort:>6.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed calls per measurement (median taken); default 7")
    parser.add_argument("--only", default="", help="profile only the cases whose name contains this text")
    parser.add_argument("--all", action="store_true", help="every (non-transposed, non-depthwise) benchmark case, not only issue 9's")
    parser.add_argument("--quiet", type=float, default=None, metavar="SHARE",
                        help="before each case, wait (up to 10 min) until other processes use less than SHARE of the CPU")
    args = parser.parse_args(argv)
    for line in machine_info():
        print(line)
    print(f"each time: median of {args.runs} runs after 1 warm-up; ratios to onnxruntime's default Conv session\n")
    for case in cases(np.random.default_rng(0)):
        conv = case.record
        wanted = case.issue9 or (args.all and isinstance(conv, Conv) and conv.in_channels // conv.groups > 1)
        if not wanted or args.only not in case.name:
            continue
        x = np.random.default_rng(1).standard_normal(case.x_shape).astype(np.float32)
        if args.quiet is not None:
            wait_quiet(args.quiet)
        print(f"== {case.name}")
        with OthersLoad() as others:
            profile_case(conv, x, args.runs)
        print(f"  others' CPU share meanwhile: {others.share:.0%}\n", flush=True)
    print(f"load average (1 min) at the end: {load_now():.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
