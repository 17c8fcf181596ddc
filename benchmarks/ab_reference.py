"""Interleaved A/B of the reference pass: ``layoutconv/reference.py`` at a git revision against the working tree.

Not part of ``make bench``.  On a shared machine two runs of the same code differ
by more than most changes to the reference, so both versions run in one process,
alternated call by call (the order rotated every round), on the cases of
``bench_reference.py``; each figure is the median over the rounds (the minimum is
shown too), and ``others`` is the share of the machine other processes used
meanwhile.  Run from the repository::

    PYTHONPATH=. python benchmarks/ab_reference.py --base HEAD~1 --only issue9

Options: ``--base REV`` (default ``HEAD``), ``--only TEXT``, ``--rounds N``
(default 15), ``--dtypes 32,64``, ``--quiet SHARE`` (wait before each case until
other processes use less than SHARE of the CPU).  The base version is loaded as a
module of the working tree's package (``layoutconv._reference_base``), so it must
import what the working tree still provides.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _harness import OthersLoad, fmt_ms, machine_info, wait_quiet  # noqa: E402
from bench_reference import cases  # noqa: E402

from layoutconv import reference  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_base(rev: str):
    """``layoutconv/reference.py`` as of ``rev``, imported as ``layoutconv._reference_base``."""
    source = subprocess.run(["git", "show", f"{rev}:layoutconv/reference.py"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(source)
    try:
        spec = importlib.util.spec_from_file_location("layoutconv._reference_base", f.name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        os.unlink(f.name)
    return module


def interleaved(runs: dict, rounds: int) -> tuple[dict, dict, float]:
    """Median and minimum seconds of every callable, called in turn round after round; others' CPU share."""
    for run in runs.values():
        run()
    names = list(runs)
    times: dict = {k: [] for k in names}
    with OthersLoad() as others:
        for r in range(rounds):
            for k in names[r % len(names) :] + names[: r % len(names)]:
                t0 = time.perf_counter()
                runs[k]()
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}, {k: min(v) for k, v in times.items()}, others.share


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="the git revision to compare against (default HEAD)")
    parser.add_argument("--only", default="", help="only the cases whose name contains this text")
    parser.add_argument("--rounds", type=int, default=15, help="calls of each version per case and dtype (default 15)")
    parser.add_argument("--dtypes", default="32,64", help="reference dtypes, bits (default 32,64)")
    parser.add_argument("--quiet", type=float, default=None, metavar="SHARE", help="wait before each case until others use less than SHARE")
    args = parser.parse_args(argv)
    base = load_base(args.base)
    for line in machine_info():
        print(line)
    print(f"base: {args.base}; new: the working tree; median (min) of {args.rounds} interleaved rounds\n")
    print(f"{'case':<44}{'dtype':>8}{'base':>20}{'new':>20}{'new/base':>10}{'others':>8}")
    for case in cases(np.random.default_rng(0)):
        if args.only not in case.name:
            continue
        x = np.random.default_rng(1).standard_normal(case.x_shape).astype(np.float32)
        for bits in args.dtypes.split(","):
            dtype = {"32": np.float32, "64": np.float64}[bits.strip()]
            if args.quiet is not None:
                wait_quiet(args.quiet)
            med, low, others = interleaved(
                {"base": lambda: base.forward(case.record, x, dtype=dtype), "new": lambda: reference.forward(case.record, x, dtype=dtype)}, args.rounds
            )
            cells = [f"{fmt_ms(med[k])} ({fmt_ms(low[k])})" for k in ("base", "new")]
            print(f"{case.name:<44}{'f' + bits:>8}{cells[0]:>20}{cells[1]:>20}{med['new'] / med['base']:>10.2f}{others:>8.0%}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
