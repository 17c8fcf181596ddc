"""Whole-model verification: every framework runs the converted model on the same inputs as the reference.

The tolerance for a model is end to end: a framework computing in ``dtype``
passes when ``max |y - y_ref| <= rtol(dtype) * END_TO_END_FACTOR * L * max |y_ref|``
(or ``<= atol(dtype)``), ``L`` the number of layers with weights and
``rtol``/``atol`` those of ``torch.testing.assert_close``.  Each layer adds its
own rounding; a wrong permutation, flatten order, epsilon or activation makes
an error of the order of the output itself.  Where a framework can show every
intermediate result (PyTorch), the report also names the first node whose
output leaves that bound: where a port went wrong.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from . import frameworks as _fw
from . import graph as graph_module
from . import layers, reference
from . import registry as _registry
from .errors import FrameworkMissingError, LayoutError, UnsupportedError
from .graph import Graph
from .porting import END_TO_END_FACTOR
from .tolerance import ASSERT_CLOSE_DEFAULTS


@dataclass(frozen=True)
class ModelResult:
    """How one framework's run of the whole model compared with the reference."""

    framework: str
    status: str  # pass, fail, unsupported, missing, error
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    tolerance: float | None = None
    first_divergence: str | None = None
    message: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "pass"


@dataclass(frozen=True)
class ModelReport:
    """The outcome of verifying a :class:`~layoutconv.graph.Graph`: one result per framework."""

    graph: Graph
    input_shapes: tuple[tuple[int, ...], ...]
    results: tuple[ModelResult, ...]

    @property
    def passed(self) -> bool:
        ran = [r for r in self.results if r.status in ("pass", "fail", "error")]
        return bool(ran) and all(r.passed for r in ran)

    def __getitem__(self, framework: str) -> ModelResult:
        name = _fw.canonical_name(framework)
        for r in self.results:
            if r.framework == name:
                return r
        raise KeyError(framework)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.graph.name,
            "input_shapes": [list(s) for s in self.input_shapes],
            "passed": self.passed,
            "results": [asdict(r) for r in self.results],
        }

    def __str__(self) -> str:
        lines = [
            f"{self.graph!r}",
            f"inputs {[tuple(s) for s in self.input_shapes]} (source layout)",
            f"{'framework':<10} {'status':<12} {'max abs err':>12} {'max rel err':>12} {'tolerance':>10}",
        ]
        for r in self.results:
            if r.max_abs_error is None:
                lines.append(f"{r.framework:<10} {r.status:<12} {r.message}")
                continue
            lines.append(
                f"{r.framework:<10} {r.status:<12} {r.max_abs_error:>12.3e} {r.max_rel_error:>12.3e} {r.tolerance:>10.1e}"
                + (f"  first divergence: {r.first_divergence}" if r.first_divergence else "")
                + (f"  {r.message}" if r.message else "")
            )
        lines.append("PASSED" if self.passed else "FAILED")
        return "\n".join(lines)


def _dtype(graph: Graph) -> np.dtype:
    for record in graph.layers.values():
        dtype = getattr(record, "dtype", None)
        if dtype is not None:
            return np.dtype(dtype)
    return np.dtype(np.float32)


def default_inputs(graph: Graph, *, batch: int = 2, seed: int = 0, size: int = 17) -> list[np.ndarray]:
    """Symmetry-breaking inputs in the source's layouts: normal values, free sizes odd (``size``), ids within vocabularies."""
    rng = np.random.default_rng(seed)
    dtype = _dtype(graph)
    out = []
    for spec in graph.inputs:
        shape = (batch,) + tuple(size + 2 * i if s is None else s for i, s in enumerate(spec.shape))
        if spec.kind == "int":
            vocab = min(
                (graph.layers[n.layer].weights.shape[0] for n in graph.nodes if spec.name in n.inputs and isinstance(graph.layers[n.layer], layers.Embedding)),
                default=2,
            )
            out.append(rng.integers(0, vocab, size=shape))
        else:
            out.append(rng.standard_normal(shape).astype(dtype))
    return out


def _rel(got: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    diff = float(np.max(np.abs(got.astype(np.float64) - expected))) if expected.size else 0.0
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    return diff, diff / scale if scale > 0 else diff


def _weighted(graph: Graph) -> int:
    return max(1, sum(1 for _ in graph.weighted_layers()))


def verify_model(
    graph: Graph, frameworks: Iterable[str] | None = None, inputs: Sequence[Any] | None = None, *, seed: int = 0
) -> ModelReport:
    """Convert ``graph`` into each framework, run the whole model, compare with :func:`layoutconv.reference.forward`."""
    explicit = frameworks is not None
    names = [_fw.canonical_name(f) for f in (frameworks if explicit else ("torch", "onnx", "keras", "tf_keras"))]
    xs = default_inputs(graph, seed=seed) if inputs is None else [np.asarray(x) for x in inputs]
    edges = graph_module.run(graph, xs, lambda r, x: reference.forward(r, x), keep=True)
    expected = [graph_module.from_canonical(edges[o], graph.layout_of(o)) for o in graph.outputs]
    results = []
    for name in names:
        if not _fw.is_available(name):
            if explicit:
                raise FrameworkMissingError(f"{name} is not installed. Install it with: {_fw.INSTALL_HINT[name]}")
            results.append(ModelResult(name, "missing", message=f"not installed ({_fw.INSTALL_HINT[name]})"))
            continue
        results.append(_one(graph, name, xs, edges, expected))
    return ModelReport(graph, tuple(tuple(x.shape) for x in xs), tuple(results))


def _one(graph: Graph, name: str, xs: list[np.ndarray], edges: dict[str, np.ndarray], expected: list[np.ndarray]) -> ModelResult:
    try:
        conv = _registry.converter(graph, name)
        native = conv.to_native(graph)
        got = conv.run(native, xs)
    except UnsupportedError as exc:
        return ModelResult(name, "unsupported", message=str(exc))
    except LayoutError as exc:
        return ModelResult(name, "error", message=str(exc))
    outs = list(got) if isinstance(got, (tuple, list)) else [got]
    dtype = outs[0].dtype.name if outs and outs[0].dtype.name in ASSERT_CLOSE_DEFAULTS else "float32"
    rtol, atol = ASSERT_CLOSE_DEFAULTS[dtype]
    tol = rtol * END_TO_END_FACTOR * _weighted(graph)
    abs_err = rel_err = 0.0
    for y, e in zip(outs, expected):
        if y.shape != e.shape:
            return ModelResult(name, "fail", message=f"output shape {y.shape}, reference {e.shape}")
        a, r = _rel(y, e)
        abs_err, rel_err = max(abs_err, a), max(rel_err, r)
    passed = rel_err <= tol or abs_err <= atol
    first = None if passed else _first_divergence(graph, name, native, xs, edges, tol)
    return ModelResult(name, "pass" if passed else "fail", abs_err, rel_err, tol, first)


def _first_divergence(graph: Graph, name: str, native: Any, xs: list[np.ndarray], edges: dict[str, np.ndarray], tol: float) -> str | None:
    """The first node whose output leaves the bound, where the framework shows intermediate results (PyTorch)."""
    if name != "torch" or not hasattr(native, "edges"):
        return None
    import torch

    from .adapters import torch_adapter

    tensors = [torch_adapter.to_tensor(x) if x.dtype.kind == "f" else torch.from_numpy(x) for x in xs]
    with torch.no_grad():
        got = native.edges(*tensors)
    for node in graph.nodes:
        value = got[node.name].detach().to(torch.float64).numpy()
        if value.shape != edges[node.name].shape or _rel(value, edges[node.name])[1] > tol:
            return f"{node.name} ({type(graph.layers[node.layer]).__name__})"
    return None
