"""Benchmark: the numpy reference pass against PyTorch and onnxruntime on the same convolutions.

Prints, for every case, the median time of the reference in float64 and in
float32, of PyTorch (default threads) and of onnxruntime (default session
options, so its default threads), all measured in this run on this machine,
and the ratios reference / framework.  Run with ``make bench`` (or
``PYTHONPATH=. python benchmarks/bench_reference.py``); ``--markdown`` prints
the table as docs/benchmarks.md records it.  The machinery is in
``benchmarks/_harness.py``.

Options: ``--runs N`` (timed calls per engine, median taken; default 7),
``--repeat R`` (measure every case R times in a row and print the median time
and the median ratio, for a shared machine), ``--only TEXT`` (cases whose name
contains TEXT), ``--ort-one-thread`` (also time a one-thread onnxruntime
session, what the first recorded run compared against), ``--quiet SHARE``.
The last lines say whether issue 9's targets are met (reference / onnxruntime
with default threads: 1.5x in float32, 3x in float64, on the two cases marked
``issue9``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _harness import Case, fmt_ms, load_now, machine_info, measure, wait_quiet  # noqa: E402

from layoutconv import Conv, ConvTranspose  # noqa: E402


def _conv(rng: np.random.Generator, o: int, c: int, kernel: tuple[int, ...], groups: int = 1, **kw) -> Conv:
    w = (rng.standard_normal((o, c // groups, *kernel)) / np.sqrt(c // groups * np.prod(kernel))).astype(np.float32)
    return Conv(w, rng.standard_normal(o).astype(np.float32), groups=groups, **kw)


def _transpose(rng: np.random.Generator, c: int, o: int, kernel: tuple[int, ...], **kw) -> ConvTranspose:
    w = (rng.standard_normal((c, o, *kernel)) / np.sqrt(c * np.prod(kernel))).astype(np.float32)
    return ConvTranspose(w, rng.standard_normal(o).astype(np.float32), **kw)


def cases(rng: np.random.Generator) -> list[Case]:
    return [
        # the five 1-D cases of the first recorded run
        Case("1d question (1,3,123)->64x10", _conv(rng, 64, 3, (10,)), (1, 3, 123)),
        Case("1d audio (8,64,4001)->64x9 same s2", _conv(rng, 64, 64, (9,), stride=2, padding="same_upper"), (8, 64, 4001)),
        Case("1d dna (32,4,1001)->80x5", _conv(rng, 80, 4, (5,)), (32, 4, 1001)),
        Case("1d tcn (4,128,2047)->128x3 causal d4", _conv(rng, 128, 128, (3,), dilation=4, padding="causal"), (4, 128, 2047)),
        Case("1d depthwise (8,256,1023)->256x7 g256", _conv(rng, 256, 256, (7,), groups=256, padding="same_upper"), (8, 256, 1023)),
        # the two targets of issue 9
        Case("1d issue9 (32,64,1024)->128x9", _conv(rng, 128, 64, (9,)), (32, 64, 1024), issue9=True),
        Case("2d issue9 resnet (8,64,56,56)->64 3x3 p1", _conv(rng, 64, 64, (3, 3), padding=1), (8, 64, 56, 56), issue9=True),
        # stride and a non-square kernel
        Case("2d (8,32,112,112)->64 3x5 s2 p(1,2)", _conv(rng, 64, 32, (3, 5), stride=2, padding=((1, 1), (2, 2))), (8, 32, 112, 112)),
        # depthwise (MobileNet), grouped (ResNeXt) and 3-D
        Case("2d depthwise (8,128,56,56)->128 3x3 g128 p1", _conv(rng, 128, 128, (3, 3), groups=128, padding=1), (8, 128, 56, 56)),
        Case("2d grouped (8,128,28,28)->128 3x3 g32 p1", _conv(rng, 128, 128, (3, 3), groups=32, padding=1), (8, 128, 28, 28)),
        Case("3d (2,32,16,32,32)->32 3x3x3 p1", _conv(rng, 32, 32, (3, 3, 3), padding=1), (2, 32, 16, 32, 32)),
        # transposed: a 2-D decoder upsampling step and a 1-D one
        Case("2d T (8,64,28,28)->32 4x4 s2 p1", _transpose(rng, 64, 32, (4, 4), stride=2, padding=1), (8, 64, 28, 28)),
        Case("1d T (16,128,1024)->64x8 s4 p2", _transpose(rng, 128, 64, (8,), stride=4, padding=2), (16, 128, 1024)),
        # not a goal: how convert --stream checks a big layer (2 samples; a 75 MB float32 kernel on a tiny input)
        Case("2d stream check (2,1024,8,8)->2048 3x3 p1", _conv(rng, 2048, 1024, (3, 3), padding=1), (2, 1024, 8, 8)),
    ]


COLUMNS = ("ref64", "ref32", "torch", "ort")

#: issue 9: reference / onnxruntime (default threads) at most this, on the cases marked issue9
GOALS = {"ref32": 1.5, "ref64": 3.0}


def _ratio(r: float) -> str:
    return f"{r:.2f}x" if r < 1 else f"{r:.1f}x"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed calls per engine (median taken); default 7")
    parser.add_argument("--repeat", type=int, default=1, help="measure every case this many times; print medians (default 1)")
    parser.add_argument("--only", default="", help="run only the cases whose name contains this text")
    parser.add_argument("--ort-one-thread", action="store_true", help="also time a one-thread onnxruntime session")
    parser.add_argument("--markdown", action="store_true", help="print the table as a markdown table")
    parser.add_argument("--quiet", type=float, default=None, metavar="SHARE",
                        help="on a shared machine: before each case wait (up to 10 min) until other processes use less "
                        "than SHARE (e.g. 0.05) of the CPU, and time a case again (up to 3 times) if they used more meanwhile")
    args = parser.parse_args(argv)

    for line in machine_info():
        print(("- " if args.markdown else "") + line)
    repeated = f"; every case measured {args.repeat} times, the medians of the times and of the ratios shown" if args.repeat > 1 else ""
    print(f"{'- ' if args.markdown else ''}each time: median of {args.runs} runs after 1 warm-up{repeated}; float32 input and weights; "
          "ratios are reference time / framework time (>1: the reference is slower); "
          "others' CPU: share of the machine's CPU time used by other processes while the case was timed")
    cols = COLUMNS + (("ort1",) if args.ort_one_thread else ())
    titles = {"ref64": "ref f64", "ref32": "ref f32", "torch": "torch", "ort": "ort", "ort1": "ort 1thr"}
    ratios = [("ref64", "torch"), ("ref32", "torch"), ("ref64", "ort"), ("ref32", "ort")]
    if args.ort_one_thread:
        ratios.append(("ref64", "ort1"))
    if args.markdown:
        head = ["case", *(titles[c] for c in cols), *(f"{a}/{titles[b]}" for a, b in ratios), "others' CPU"]
        print("\n| " + " | ".join(head) + " |")
        print("| --- |" + " ---: |" * (len(head) - 1))
    else:
        print(f"\n{'case':<42}" + "".join(f"{titles[c]:>11}" for c in cols)
              + "".join(f"{a + '/' + titles[b]:>12}" for a, b in ratios) + f"{'others':>7}")
    rng = np.random.default_rng(0)
    goals = []
    for case in cases(rng):
        if args.only not in case.name:
            continue
        runs = []
        for _ in range(args.repeat):
            for _attempt in range(3 if args.quiet is not None else 1):
                if args.quiet is not None:
                    wait_quiet(args.quiet)
                t = measure(case, args.runs, np.random.default_rng(1), ort_one_thread=args.ort_one_thread)
                if args.quiet is None or t["others"] < args.quiet:
                    break
            runs.append(t)
        t = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        ratio = {(a, b): statistics.median(r[a] / r[b] for r in runs) for a, b in set(ratios) | {(e, "ort") for e in GOALS}}
        load = t["others"]
        if args.markdown:
            cells = [case.name, *(fmt_ms(t[c]) for c in cols), *(_ratio(ratio[a, b]) for a, b in ratios), f"{load:.0%}"]
            print("| " + " | ".join(cells) + " |", flush=True)
        else:
            print(f"{case.name:<42}" + "".join(f"{fmt_ms(t[c]):>11}" for c in cols)
                  + "".join(f"{_ratio(ratio[a, b]):>12}" for a, b in ratios) + f"{load:>7.0%}", flush=True)
        if case.issue9:
            goals += [(case.name, e, ratio[e, "ort"]) for e in GOALS]
    for name, engine, r in goals:
        verdict = "met" if r <= GOALS[engine] else "missed"
        print(f"{'- ' if args.markdown else ''}issue 9, {name}: {titles[engine]} / ort = {_ratio(r)} (goal {GOALS[engine]}x): {verdict}")
    print(f"{'- ' if args.markdown else ''}load average (1 min) at the end: {load_now():.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
