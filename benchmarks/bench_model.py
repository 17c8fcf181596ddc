"""Benchmark: the reference pass on a whole model against PyTorch and onnxruntime, in one run.

Issue 9 asks for the whole-model reference (``reference.forward`` on a graph) within 3x
onnxruntime on a ResNet-style network.  This builds real architectures with
``keras.applications`` (random weights, batch-norm statistics perturbed so that no
normalisation is the identity; nothing is downloaded), reads each with
``layoutconv.read_model``, writes it with ``to_torch`` and ``to_onnx``, checks that every
engine computes the float64 reference's outputs, then times each engine on the same
float32 input: the reference in float64 (the default) and in float32 mode, the PyTorch
GraphModule (default threads, ``torch.no_grad()``), and an onnxruntime session with default
options.  Prints the median times and the ratios reference / framework.

Run with ``make bench`` or ``PYTHONPATH=. python benchmarks/bench_model.py``; options:
``--runs N`` (median of N timed calls; default 5), ``--batch N`` (default 1), ``--only TEXT``,
``--markdown``.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _harness import OthersLoad, fmt_ms, load_now, machine_info, median_seconds  # noqa: E402
from profile_reference import forward_split  # noqa: E402

import layoutconv  # noqa: E402
from layoutconv import reference  # noqa: E402

#: issue 9: whole-model reference / onnxruntime (default threads) at most this on the ResNet-style network
GOAL = 3.0

#: name -> (keras.applications constructor, input size, is it the issue's ResNet-style network)
MODELS = {
    "ResNet50": ("ResNet50", 224, True),
    "MobileNetV2": ("MobileNetV2", 224, False),
}


def build(constructor: str, size: int, rng: np.random.Generator):
    import keras

    model = getattr(keras.applications, constructor)(weights=None, input_shape=(size, size, 3))
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([
                gamma * rng.uniform(0.5, 1.5, gamma.shape).astype(np.float32),
                beta + 0.1 * rng.standard_normal(beta.shape).astype(np.float32),
                mean + 0.1 * rng.standard_normal(mean.shape).astype(np.float32),
                var * rng.uniform(0.5, 2.0, var.shape).astype(np.float32),
            ])
    return model


def runners(graph, x: np.ndarray) -> dict:
    import onnxruntime as ort
    import torch

    module = layoutconv.to_torch(graph)
    tensor = torch.from_numpy(x)

    def run_torch() -> np.ndarray:
        with torch.no_grad():
            return module(tensor).numpy()

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(layoutconv.to_onnx(graph).SerializeToString(), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return {
        "ref64": lambda: reference.forward(graph, x),
        "ref32": lambda: reference.forward(graph, x, dtype=np.float32),
        "torch": run_torch,
        "ort": lambda: session.run(None, {name: x})[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed calls per engine (median taken); default 5")
    parser.add_argument("--batch", type=int, default=1, help="images per call; default 1")
    parser.add_argument("--only", default="", help="run only the models whose name contains this text")
    parser.add_argument("--markdown", action="store_true", help="print the table as a markdown table")
    args = parser.parse_args(argv)
    dash = "- " if args.markdown else ""
    for line in machine_info():
        print(dash + line)
    print(f"{dash}each time: median of {args.runs} runs after 1 warm-up; batch {args.batch}; float32 input; "
          "ratios are reference time / framework time; others' CPU: share of the machine other processes used meanwhile")
    cols = ("ref64", "ref32", "torch", "ort")
    ratios = [("ref64", "ort"), ("ref32", "ort"), ("ref64", "torch"), ("ref32", "torch")]
    head = ["model", "layers", *cols, *(f"{a}/{b}" for a, b in ratios), "others"]
    if args.markdown:
        print("\n| " + " | ".join(head) + " |\n| --- |" + " ---: |" * (len(head) - 1))
    else:
        print("\n" + f"{head[0]:<14}{head[1]:>7}" + "".join(f"{h:>13}" for h in head[2:]))
    rng = np.random.default_rng(0)
    verdicts, splits = [], []
    for name, (constructor, size, issue9) in MODELS.items():
        if args.only not in name:
            continue
        graph = layoutconv.read_model(build(constructor, size, rng))
        x = rng.standard_normal((args.batch, size, size, 3)).astype(np.float32)
        engines = runners(graph, x)
        truth = engines["ref64"]()
        scale = float(np.max(np.abs(truth))) or 1.0
        for engine, run in engines.items():
            got = np.asarray(run(), np.float64)
            if got.shape != truth.shape or not np.allclose(got, truth, rtol=1e-4, atol=1e-5 * scale):
                raise AssertionError(f"{name}: {engine} disagrees with the float64 reference")
        with OthersLoad() as others:
            t = {engine: median_seconds(run, runs=args.runs) for engine, run in engines.items()}
        cells = [name, str(len(graph.nodes)), *(fmt_ms(t[c]) for c in cols), *(f"{t[a] / t[b]:.1f}x" for a, b in ratios), f"{others.share:.0%}"]
        if args.markdown:
            print("| " + " | ".join(cells) + " |", flush=True)
        else:
            print(f"{cells[0]:<14}{cells[1]:>7}" + "".join(f"{c:>13}" for c in cells[2:]), flush=True)
        if issue9:
            verdicts += [(name, e, t[e] / t["ort"]) for e in ("ref64", "ref32")]
        for dtype in (np.float64, np.float32):
            total, gemm = forward_split(graph, x, dtype, args.runs)
            splits.append(f"{dash}{name}, reference in {np.dtype(dtype).name}: {fmt_ms(total)}, of which np.matmul {fmt_ms(gemm)} "
                          f"({gemm / t['ort']:.1f}x onnxruntime's whole model; the rest {(total - gemm) / t['ort']:.1f}x)")
    print("\n".join(splits))
    for name, engine, r in verdicts:
        print(f"{dash}issue 9, whole model {name}: {engine} / ort = {r:.1f}x (goal {GOAL}x): {'met' if r <= GOAL else 'missed'}")
    print(f"{dash}load average (1 min) at the end: {load_now():.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
