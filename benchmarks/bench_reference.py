"""Benchmark: the numpy reference pass against PyTorch and onnxruntime on the same convolutions.

Prints the median time of each and the ratio reference / framework, measured in
this run on this machine.  Run with ``make bench`` (or ``python benchmarks/bench_reference.py``).
Results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from layoutconv import Conv1D, frameworks, reference  # noqa: E402

CASES = {
    # name: (N, C, L, O, K, stride, dilation, groups, padding)
    "question (1,3,123)->64x10": (1, 3, 123, 64, 10, 1, 1, 1, "valid"),
    "audio (8,64,4001)->64x9 same s2": (8, 64, 4001, 64, 9, 2, 1, 1, "same_upper"),
    "dna (32,4,1001)->80x5": (32, 4, 1001, 80, 5, 1, 1, 1, "valid"),
    "tcn (4,128,2047)->128x3 causal d4": (4, 128, 2047, 128, 3, 1, 4, 1, "causal"),
    "depthwise (8,256,1023)->256x7 g256": (8, 256, 1023, 256, 7, 1, 1, 256, "same_upper"),
}


def median_seconds(fn, repeat: int = 7) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    rng = np.random.default_rng(0)
    runners = {}
    for name in ("torch", "onnx"):
        if frameworks.is_available(name):
            runners[name] = frameworks.adapter(name)
    print(f"numpy {np.__version__}; frameworks: {', '.join(runners) or 'none'}; threads: torch default, onnxruntime 1 (the adapter session)")
    header = f"{'case':<38} {'reference f64':>14} {'reference f32':>14}" + "".join(f" {n:>10} {'ref64/' + n:>12}" for n in runners)
    print(header)
    for case, (n, c, length, o, k, s, d, g, padding) in CASES.items():
        conv = Conv1D(rng.standard_normal((o, c // g, k)).astype(np.float32), rng.standard_normal(o).astype(np.float32),
                      stride=s, dilation=d, groups=g, padding=padding)
        x = rng.standard_normal((n, c, length)).astype(np.float32)
        t64 = median_seconds(lambda: reference.conv1d(conv, x))
        t32 = median_seconds(lambda: reference.conv1d(conv, x, dtype=np.float32))
        row = f"{case:<38} {t64 * 1e3:>12.2f}ms {t32 * 1e3:>12.2f}ms"
        for name, adapter in runners.items():
            native = adapter.to_native(conv)
            t = median_seconds(lambda: adapter.run(native, x))
            row += f" {t * 1e3:>8.2f}ms {t64 / t:>11.1f}x"
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
