"""Benchmark: how long the command line takes, each figure against its peer, measured in this run.

* ``import layoutconv`` over ``import numpy`` (the goal: at most 25 ms more).
  Timed inside fresh interpreters (``perf_counter`` after ``import numpy`` and
  after ``import layoutconv``), median of ``--runs`` processes, and as the wall
  time of whole processes (``python -c "import numpy"`` against ``python -c
  "import numpy, layoutconv"``).  Two cases: the package's bytecode compiled
  beforehand (``compileall``, as ``pip install`` does) and from source
  (``PYTHONDONTWRITEBYTECODE=1`` and no ``.pyc``: every import compiles).
* ``layoutconv verify`` (every framework, the default workers) against the
  slowest single framework alone (``--frameworks X``, which runs in one
  process: its import and its run); the goal is at most 1.3x.  Also the
  one-process run (``--workers 1``) for comparison.
* ``layoutconv inspect`` of a small Keras 1 file (DeepCpf1's Seq-deepCpf1
  weights, 428 kB) against the 0.5 s goal, and against the floor of any
  inspect: an interpreter that imports numpy and h5py.

Every command is a fresh process running a copy of the package (in a temporary
directory, so the source tree's state does not matter); commands are
interleaved round by round so that a change in the machine's load hits all of
them alike.  ``others`` is the share of the machine's CPU time that other
processes used while a command ran (0%: the machine was ours).

Run with ``make bench`` or ``PYTHONPATH=. python benchmarks/bench_cli.py``;
``--runs N`` (default 5; imports: 4N), ``--quiet SHARE`` (before each round,
wait until other processes use less than SHARE of the CPU), ``--markdown``,
``--imports-only``, ``--package DIR`` (time another layoutconv directory,
e.g. an older version's from ``git archive``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(1, ROOT)

import _harness  # noqa: E402
from _harness import _busy_seconds, cpu_name, environment, wait_quiet  # noqa: E402

SMALL_KERAS = os.path.join(ROOT, "tests", "fixtures", "legacy_keras", "deepcpf1_Seq_deepCpf1_weights_keras1_theano.h5")
FRAMEWORKS = ("keras", "tf_keras", "torch", "onnx")
PACKAGE = os.path.join(ROOT, "layoutconv")  # --package: another version's, for a before/after comparison
IMPORT_GOAL_MS = 25.0
VERIFY_GOAL = 1.3
INSPECT_GOAL_S = 0.5


class Timed:
    """Wall time of a block that runs child processes, and the share of the CPU others used meanwhile."""

    def __enter__(self) -> "Timed":
        self._busy, self._mine, self._t = _busy_seconds(), sum(os.times()[:4]), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t
        busy = _busy_seconds()
        mine = sum(os.times()[:4]) - self._mine  # this process and its waited-for children
        if busy is None or self._busy is None:
            self.others = float("nan")
        else:
            self.others = max(0.0, (busy - self._busy - mine) / (self.seconds * (os.cpu_count() or 1)))


def package_copy(where: str, compiled: bool) -> str:
    return _harness.package_copy(PACKAGE, where, compiled)


def run(argv: list[str], env: dict[str, str]) -> tuple[Timed, str]:
    # from a directory without a package in it: `python -c` and `-m` put the working directory first on sys.path
    with Timed() as t:
        out = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=env["PYTHONPATH"])
    if out.returncode != 0 or out.stderr:
        raise SystemExit(f"{' '.join(argv)} failed (exit {out.returncode}):\n{out.stderr}{out.stdout}")
    return t, out.stdout


IN_PROCESS = (
    "import time; t0 = time.perf_counter(); import numpy; t1 = time.perf_counter(); import layoutconv; "
    "t2 = time.perf_counter(); print((t1 - t0) * 1e3, (t2 - t1) * 1e3)"
)


def bench_import(runs: int, quiet: float | None, tmp: str) -> list[dict]:
    rows = []
    for compiled in (True, False):
        env = environment(package_copy(os.path.join(tmp, "compiled" if compiled else "source"), compiled), compiled)
        numpy_in, over_in, wall_numpy, wall_both, others = [], [], [], [], []
        for i in range(4 * runs + 1):
            if quiet is not None and i % runs == 0:
                wait_quiet(quiet)
            t_numpy, _ = run([sys.executable, "-c", "import numpy"], env)
            t_both, _ = run([sys.executable, "-c", "import numpy, layoutconv"], env)
            _, out = run([sys.executable, "-c", IN_PROCESS], env)
            if i == 0:
                continue  # warm-up: the file system cache
            a, b = (float(v) for v in out.split())
            numpy_in.append(a)
            over_in.append(b)
            wall_numpy.append(t_numpy.seconds)
            wall_both.append(t_both.seconds)
            others.append(max(t_numpy.others, t_both.others))
        rows.append({
            "what": "import layoutconv over import numpy, " + ("bytecode compiled (as installed)" if compiled else "from source (no .pyc)"),
            "runs": len(over_in),
            "over_ms": statistics.median(over_in),
            "numpy_ms": statistics.median(numpy_in),
            "wall_numpy": statistics.median(wall_numpy),
            "wall_both": statistics.median(wall_both),
            "others": statistics.median(others),
        })
    return rows


def bench_commands(runs: int, quiet: float | None, tmp: str) -> dict[str, dict]:
    env = environment(package_copy(os.path.join(tmp, "cli"), True), True)
    lc = [sys.executable, "-m", "layoutconv"]
    commands = {
        "verify (default workers)": lc + ["verify"],
        "verify --workers 1": lc + ["verify", "--workers", "1"],
        **{f"verify --frameworks {f}": lc + ["verify", "--frameworks", f] for f in FRAMEWORKS},
        "inspect small Keras file": lc + ["inspect", SMALL_KERAS],
        "python: import numpy, h5py": [sys.executable, "-c", "import numpy, h5py"],
    }
    times: dict[str, list[Timed]] = {name: [] for name in commands}
    outputs: dict[str, set[str]] = {name: set() for name in commands}
    for name, argv in commands.items():  # warm-up: file system cache, TensorFlow's first start
        run(argv, env)
    for _ in range(runs):
        if quiet is not None:
            wait_quiet(quiet)
        for name, argv in commands.items():
            t, out = run(argv, env)
            times[name].append(t)
            outputs[name].add(out)
    one, many = outputs["verify --workers 1"], outputs["verify (default workers)"]
    if one != many or len(one) != 1:
        raise SystemExit("verify printed different reports with and without workers:\n" + "\n---\n".join(one | many))
    return {
        name: {"seconds": statistics.median(t.seconds for t in ts), "others": statistics.median(t.others for t in ts),
               "all": [t.seconds for t in ts]}
        for name, ts in times.items()
    }


def machine() -> list[str]:
    cpu = cpu_name()
    versions = []
    for dist in ("numpy", "tensorflow", "keras", "tf_keras", "torch", "onnx", "onnxruntime", "h5py"):
        try:
            versions.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{dist} missing")
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return [
        f"machine: {cpu}; os.cpu_count() = {os.cpu_count()}; load average (1, 5, 15 min) at start: {load}",
        f"Python {sys.version.split()[0]}; " + ", ".join(versions),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per command (median taken); imports: 4x as many")
    parser.add_argument("--quiet", type=float, default=None, metavar="SHARE",
                        help="before each round wait (up to 10 min) until other processes use less than SHARE of the CPU")
    parser.add_argument("--markdown", action="store_true", help="print markdown tables")
    parser.add_argument("--imports-only", action="store_true", help="time the imports only (no command is run)")
    parser.add_argument("--package", default=PACKAGE, help="the layoutconv directory to time (default: this repository's)")
    args = parser.parse_args(argv)
    globals()["PACKAGE"] = os.path.abspath(args.package)
    md = args.markdown
    bullet = "- " if md else ""
    for line in machine():
        print(bullet + line)
    print(f"{bullet}every figure: median of the runs; commands interleaved; others = CPU share of other processes", flush=True)

    with tempfile.TemporaryDirectory(prefix="layoutconv-bench-") as tmp:
        imports = bench_import(args.runs, args.quiet, tmp)
        print("\n| import | over numpy (in process) | import numpy | wall: numpy | wall: numpy + layoutconv | ratio | goal | others |"
              if md else f"\n{'import':<70}{'over numpy':>11}{'numpy':>9}{'wall np':>9}{'wall both':>10}{'ratio':>7}{'others':>8}")
        if md:
            print("| --- |" + " ---: |" * 7)
        for r in imports:
            ok = "met" if r["over_ms"] <= IMPORT_GOAL_MS else "MISSED"
            cells = [f"+{r['over_ms']:.1f} ms", f"{r['numpy_ms']:.0f} ms", f"{r['wall_numpy'] * 1e3:.0f} ms",
                     f"{r['wall_both'] * 1e3:.0f} ms", f"{r['wall_both'] / r['wall_numpy']:.2f}x"]
            if md:
                print(f"| {r['what']} ({r['runs']} runs) | " + " | ".join(cells) + f" | <= +{IMPORT_GOAL_MS:.0f} ms: {ok} | {r['others']:.0%} |")
            else:
                print(f"{r['what']:<70}{cells[0]:>11}{cells[1]:>9}{cells[2]:>9}{cells[3]:>10}{cells[4]:>7}{r['others']:>8.0%}  (goal +{IMPORT_GOAL_MS:.0f} ms: {ok})")
        sys.stdout.flush()
        if args.imports_only:
            return 0
        t = bench_commands(args.runs, args.quiet, tmp)

    singles = {f: t[f"verify --frameworks {f}"]["seconds"] for f in FRAMEWORKS}
    slowest = max(singles, key=singles.get)
    peer = {
        "verify (default workers)": (f"verify --frameworks {slowest}", VERIFY_GOAL),
        "verify --workers 1": (f"verify --frameworks {slowest}", None),
        "inspect small Keras file": ("python: import numpy, h5py", None),
    }
    print("\n| command | median | runs | against | its median | ratio | goal | others |" if md
          else f"\n{'command':<30}{'median':>8}   {'against':<30}{'median':>8}{'ratio':>7}{'others':>8}")
    if md:
        print("| --- | ---: | --- | --- | ---: | ---: | --- | ---: |")
    for name, row in t.items():
        against, goal = peer.get(name, (None, None))
        ratio = row["seconds"] / t[against]["seconds"] if against else None
        if name == "inspect small Keras file":
            verdict = f"<= {INSPECT_GOAL_S} s: {'met' if row['seconds'] <= INSPECT_GOAL_S else 'MISSED'} ({row['seconds'] / INSPECT_GOAL_S:.2f}x the budget)"
        elif goal is not None:
            verdict = f"<= {goal}x: {'met' if ratio <= goal else 'MISSED'}"
        else:
            verdict = "slowest single framework" if name == f"verify --frameworks {slowest}" else ""
        runs = " ".join(f"{s:.2f}" for s in row["all"])
        if md:
            print(f"| {name} | {row['seconds']:.2f} s | {runs} | {against or ''} | "
                  + (f"{t[against]['seconds']:.2f} s | {ratio:.2f}x" if against else " | ") + f" | {verdict} | {row['others']:.0%} |")
        else:
            print(f"{name:<30}{row['seconds']:>7.2f}s   {against or '':<30}"
                  + (f"{t[against]['seconds']:>7.2f}s{ratio:>6.2f}x" if against else " " * 14)
                  + f"{row['others']:>8.0%}  {verdict}")
    print(f"{bullet}load average (1 min) at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
