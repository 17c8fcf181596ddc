"""Benchmark: ``layoutconv convert`` of a ~1 GiB Keras checkpoint, against ``cp`` of the same file.

Builds once (under ``--workdir``, default ``/tmp/layoutconv-bench-convert``) a
Keras 3 model of about 1 GiB of float32 weights (2-D convolutions, a batch
norm, a Flatten and large Dense layers; glorot-random weights) and saves it as
``model.keras``, ``model.h5`` (full save) and ``model.weights.h5`` with
``model.json``.  Then, for every source and every output format, in one run:

* **wall time**: ``cp SOURCE DEST`` against ``python -m layoutconv convert
  SOURCE OUT --stream --quiet --force`` (each a fresh subprocess importing a
  bytecode-compiled copy of the package, as an installed one is; wall time seen
  by this process, median of ``--runs``; the page cache is warm for both:
  every source is read once before timing).  Printed as the ratio convert / cp
  and against the goal ``2 x cp + 2 s`` (the 2 s cover the interpreter and the
  imports: ``import torch`` alone is measured and printed);
* **peak memory**: the converting process's own peak resident set (``VmHWM``
  in ``/proc/self/status``, read by the process itself when it is done; a
  fresh process, so nothing of this one is counted), against the largest
  tensor written.  Printed as peak / largest and against the goal
  ``2 x largest + 300 MB``; the peak of a process that only imports what
  ``convert`` imports is printed too.

Outputs: ``.safetensors``, ``.pt`` and ``.onnx`` (the weights in
``model.onnx.data`` beside it, ONNX external data; its peak is also compared
with a process that imports what the ONNX stream imports, without PyTorch).
``--big`` builds and converts a model of 2.3 GiB instead (Dense layers of
14336 units, the largest tensor 784 MiB; ``.keras`` only by default), beyond
protobuf's 2 GiB: the case that needs external data.

``cp`` runs right after the previous copy was deleted, so it writes into page
cache pages just freed; ``convert`` writes its first tensor seconds after its
start.  On a virtual machine that returns memory freed for about 2 s to its
host (free page reporting), fresh pages cost far more than recycled ones, so
``--idle-cp SECONDS`` (default 3) also times ``cp`` after that long idle
following the deletion, for scale (the goal stays against the plain ``cp``).

``--whole`` also times the whole-model path (``--no-stream``) once, for
comparison.  ``--markdown`` prints the table as ``docs/benchmarks.md`` records
it.  Run with ``make bench`` or ``PYTHONPATH=. python benchmarks/bench_convert.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(1, ROOT)

MB = 1 << 20

#: Run in the converting subprocess: the CLI, then its own peak RSS on stderr.
LAUNCH = r"""
import sys
from layoutconv import cli
try:
    code = cli.main(sys.argv[1:])
finally:
    import resource
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    sys.stderr.write(f"\nVMHWM_KB={hwm} CPU_USER={usage.ru_utime:.2f} CPU_SYS={usage.ru_stime:.2f}\n")
sys.exit(code)
"""

#: The imports ``convert --stream`` needs, and nothing else (what the 300 MB of the goal is for).
IMPORTS = r"""
import layoutconv.convert_stream, layoutconv.adapters.torch_layers, h5py, safetensors.torch, torch, time
with open("/proc/self/status") as f:
    print(next(int(line.split()[1]) for line in f if line.startswith("VmHWM")))
"""
#: The same for ``convert --stream`` to ``.onnx`` (onnx and onnxruntime, no PyTorch).
IMPORTS_ONNX = r"""
import layoutconv._stream_onnx, layoutconv.adapters.onnx_layers, layoutconv.adapters.onnx_external, h5py, onnx, onnxruntime, time
with open("/proc/self/status") as f:
    print(next(int(line.split()[1]) for line in f if line.startswith("VmHWM")))
"""
#: Units of the three large Dense layers: 8192 (978 MiB of weights), or with ``--big`` 14336 (2.3 GiB).
WIDTH, BIG_WIDTH = 8192, 14336


def build(workdir: str, width: int = WIDTH, forms: str = "keras,h5,weights") -> dict[str, str]:
    """The checkpoint in its three forms (made once; ``model.done`` marks a complete set)."""
    paths = {
        "keras": os.path.join(workdir, "model.keras"),
        "h5": os.path.join(workdir, "model.h5"),
        "weights": os.path.join(workdir, "model.weights.h5"),
        "json": os.path.join(workdir, "model.json"),
    }
    done = os.path.join(workdir, "model.done")
    wanted = [paths[f] for f in forms.split(",")]
    if os.path.exists(done) and all(os.path.exists(p) for p in wanted):
        return paths
    os.makedirs(workdir, exist_ok=True)
    code = r"""
import sys, keras
paths = dict(zip(["keras", "h5", "weights", "json"], sys.argv[1:5]))
W, forms = int(sys.argv[5]), sys.argv[6].split(",")
L = keras.layers
inp = keras.Input((32, 32, 3), name="image")
x = L.Conv2D(64, 3, padding="same", activation="relu", name="conv1")(inp)
x = L.MaxPooling2D(2, name="pool1")(x)
x = L.Conv2D(256, 3, padding="same", activation="relu", name="conv2")(x)
x = L.MaxPooling2D(2, name="pool2")(x)
x = L.Conv2D(1024, 3, padding="same", activation="relu", name="conv3")(x)
x = L.MaxPooling2D(2, name="pool3")(x)
x = L.Conv2D(2048, 3, padding="same", name="conv4")(x)
x = L.BatchNormalization(name="bn4")(x)
x = L.Activation("relu", name="relu4")(x)
x = L.MaxPooling2D(2, name="pool4")(x)
x = L.Flatten(name="flatten")(x)
x = L.Dense(W, activation="relu", name="fc1")(x)
x = L.Dense(W, activation="relu", name="fc2")(x)
x = L.Dense(W, activation="relu", name="fc3")(x)
x = L.Dense(4096, activation="relu", name="fc4")(x)
out = L.Dense(10, activation="softmax", name="head")(x)
model = keras.Model(inp, out, name="bench")
if "keras" in forms:
    model.save(paths["keras"])
if "h5" in forms:
    model.save(paths["h5"])
if "weights" in forms:
    model.save_weights(paths["weights"])
with open(paths["json"], "w") as f:
    f.write(model.to_json())
"""
    subprocess.run([sys.executable, "-c", code, paths["keras"], paths["h5"], paths["weights"], paths["json"], str(width), forms], check=True)
    with open(done, "w") as f:
        f.write("ok\n")
    return paths


def wall(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str, str]:
    t0 = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=env["PYTHONPATH"] if env else None)
    seconds = time.perf_counter() - t0
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({run.returncode}):\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
    return seconds, run.stdout, run.stderr


def convert(source: str, out: str, extra: list[str], env: dict[str, str]) -> tuple[float, int, dict]:
    cmd = [sys.executable, "-c", LAUNCH, "convert", source, out, "--force", "--quiet", "--json", *extra]
    seconds, stdout, stderr = wall(cmd, env)
    tail = stderr.rsplit("VMHWM_KB=", 1)[1].split()
    hwm = int(tail[0]) * 1024
    report = json.loads(stdout[stdout.index("{"):stdout.rindex("}") + 1])
    report["cpu"] = (float(tail[1].split("=")[1]), float(tail[2].split("=")[1]))  # user, kernel seconds
    return seconds, hwm, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=None, help="default /tmp/layoutconv-bench-convert (-big with --big)")
    parser.add_argument("--big", action="store_true", help="a model of 2.3 GiB (beyond protobuf's 2 GiB), .keras only unless --sources")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of cp and of convert per case (median)")
    parser.add_argument("--sources", default=None, help="which forms of the checkpoint (default keras,h5,weights; keras with --big)")
    parser.add_argument("--targets", default="safetensors,pt,onnx", help="which outputs")
    parser.add_argument("--whole", action="store_true", help="also time the whole-model path (--no-stream) once")
    parser.add_argument("--idle-cp", type=float, default=3.0, help="also time cp this many seconds after deleting the previous copy (0: not)")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--clean", action="store_true", help="delete the workdir (the checkpoint) at the end")
    args = parser.parse_args()

    from _harness import OthersLoad, environment, machine_info, package_copy

    # the children import a copy of the package with its bytecode compiled, as an installed one has it (where
    # PYTHONDONTWRITEBYTECODE is set, as on the benchmark machine, every run would compile it: 0.2-0.3 s)
    copy = tempfile.mkdtemp(prefix="layoutconv-bench-package-")
    env = environment(package_copy(os.path.join(ROOT, "layoutconv"), copy, compiled=True), compiled=True)
    args.workdir = args.workdir or ("/tmp/layoutconv-bench-convert-big" if args.big else "/tmp/layoutconv-bench-convert")
    args.sources = args.sources or ("keras" if args.big else "keras,h5,weights")
    paths = build(args.workdir, BIG_WIDTH if args.big else WIDTH, args.sources)
    out_dir = os.path.join(args.workdir, "out")
    os.makedirs(out_dir, exist_ok=True)
    for line in machine_info():
        print(line)
    import torch  # noqa: F401  (only to record the versions in machine_info; the timed runs are fresh processes)

    t_torch = min(wall([sys.executable, "-c", "import torch"], env)[0] for _ in range(3))
    t_python = min(wall([sys.executable, "-c", "pass"], env)[0] for _ in range(3))
    base_kb = int(wall([sys.executable, "-c", IMPORTS], env)[1].split()[-1])
    onnx_kb = int(wall([sys.executable, "-c", IMPORTS_ONNX], env)[1].split()[-1])
    print(f"start-up: python {t_python:.2f} s, python -c 'import torch' {t_torch:.2f} s; "
          f"peak RSS of a process importing what convert imports: {base_kb / 1024:.0f} MB (to .onnx: {onnx_kb / 1024:.0f} MB)")
    sources = {
        "keras": (paths["keras"], [], ".keras"),
        "h5": (paths["h5"], [], ".h5 (full save)"),
        "weights": (paths["weights"], ["--architecture", paths["json"]], ".weights.h5 + model.json"),
    }
    rows = []
    for key in args.sources.split(","):
        source, extra, label = sources[key]
        size = os.path.getsize(source)
        with open(source, "rb") as f:  # warm the page cache for cp and convert alike
            while f.read(64 * MB):
                pass
        cps = []
        for _ in range(args.runs):
            dest = os.path.join(out_dir, "copy")
            cps.append(wall(["cp", source, dest])[0])
            os.unlink(dest)
        t_cp = statistics.median(cps)
        idle_cps = []
        for _ in range(args.runs if args.idle_cp > 0 else 0):
            time.sleep(args.idle_cp)  # the pages the last copy freed are handed back to the host meanwhile
            dest = os.path.join(out_dir, "copy")
            idle_cps.append(wall(["cp", source, dest])[0])
            os.unlink(dest)
        t_cp_idle = statistics.median(idle_cps) if idle_cps else float("nan")
        for target in args.targets.split(","):
            out = os.path.join(out_dir, f"model.{target}")
            written = [out, out + ".data"] if target == "onnx" else [out]
            times, peaks, cpus = [], [], []
            with OthersLoad() as others:
                for _ in range(args.runs):
                    for f in written:
                        if os.path.exists(f):
                            os.unlink(f)  # a new file, as cp makes (replacing one makes ext4 flush it first)
                    seconds, hwm, report = convert(source, out, ["--stream", *extra], env)
                    times.append(seconds)
                    peaks.append(hwm)
                    cpus.append(report["cpu"])
            assert report["passed"] and report["streamed"], report
            largest = report["largest_tensor"]
            t = statistics.median(times)
            peak = max(peaks)
            user, kernel = sorted(cpus)[len(cpus) // 2]
            row = dict(source=label, size=size, target=target, cp=t_cp, cp_idle=t_cp_idle, convert=t, peak=peak, largest=largest,
                       tensors=report["tensors"], written=report["nbytes"], others=others.share, user=user, kernel=kernel)
            if args.whole:
                for f in written:
                    if os.path.exists(f):
                        os.unlink(f)
                seconds, hwm, report_w = convert(source, out, ["--no-stream", *extra], env)
                row.update(whole=seconds, whole_peak=hwm)
            for f in written:
                if os.path.exists(f):
                    os.unlink(f)
            rows.append(row)
            print(
                f"{label} ({size / MB:.0f} MiB) -> {target}: cp {t_cp:.2f} s (after {args.idle_cp:.0f} s idle {t_cp_idle:.2f} s), "
                f"convert {t:.2f} s = {t / t_cp:.1f} x cp "
                f"(CPU {user:.1f} s user, {kernel:.1f} s kernel) "
                f"(goal 2 x cp + 2 s = {2 * t_cp + 2:.2f} s: {t / (2 * t_cp + 2):.2f} of it); "
                f"peak RSS {peak / MB:.0f} MB = {peak / largest:.2f} x largest tensor ({largest / MB:.0f} MB) "
                f"(goal 2 x largest + 300 MB = {(2 * largest + 300 * MB) / MB:.0f} MB: {peak / (2 * largest + 300 * MB):.2f} of it); "
                f"others used {others.share:.0%} of the CPU"
                + (f"; whole-model path {row['whole']:.1f} s, peak {row['whole_peak'] / MB:.0f} MB" if args.whole else "")
            )
    if args.markdown:
        print()
        head = "| source | output | cp | cp after idle | convert (CPU user + kernel) | convert / cp | convert / (2 cp + 2 s) | peak RSS | peak / largest tensor | peak / (2 largest + 300 MB) | others' CPU |"
        if args.whole:
            head += " whole-model path |"
        print(head)
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if args.whole else ""))
        for r in rows:
            line = (
                f"| {r['source']} ({r['size'] / MB:.0f} MiB) | .{r['target']} | {r['cp']:.2f} s | {r['cp_idle']:.2f} s | {r['convert']:.2f} s ({r['user']:.1f} + {r['kernel']:.1f}) | "
                f"{r['convert'] / r['cp']:.1f}x | {r['convert'] / (2 * r['cp'] + 2):.2f} | {r['peak'] / MB:.0f} MB | "
                f"{r['peak'] / r['largest']:.2f}x ({r['largest'] / MB:.0f} MB) | {r['peak'] / (2 * r['largest'] + 300 * MB):.2f} | {r['others']:.0%} |"
            )
            if args.whole:
                line += f" {r['whole']:.1f} s, {r['whole_peak'] / MB:.0f} MB |"
            print(line)
    shutil.rmtree(copy, ignore_errors=True)
    if args.clean:
        shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
