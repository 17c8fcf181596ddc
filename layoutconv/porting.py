"""Port a trained model into your own PyTorch module: :func:`port`.

You wrote the architecture by hand (modules named and registered as you like);
the weights are in a Keras model or file.  ``port`` finds which source layer
goes into which of your modules, converts every layout on the way (including
the columns of a ``Linear`` after a flatten, which PyTorch and Keras list in
different orders), sets what changes outputs (BatchNorm epsilon), loads the
weights, and, when the source can run, proves the result: end to end and
layer by layer.  On a mismatch your module is left as it was and the report
names the first layer that differs and why it probably does.

>>> report = layoutconv.port("model.h5", MyNet(), example_inputs=x)   # doctest: +SKIP
>>> print(report)                                                     # doctest: +SKIP

How layers are matched: your module is run once on ``example_inputs`` with
hooks, which gives the order in which modules holding parameters execute
(their registration order does not matter).  The source's weighted layers, in
execution order, are paired with them one to one; each pair must be of the same
kind with the same weight shapes.  ``mapping={"source_layer": "target.module"}``
pins pairs by name; the rest are paired in order.

How a flatten is found: for a ``Linear`` that reads a flattened tensor, the
module producing that tensor is made to output the numbers ``1..n`` once, and
the values reaching the ``Linear`` say exactly which element went where,
whatever mix of ``view``, ``flatten``, ``permute`` or ``transpose`` your
``forward`` uses.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from . import activations, layers, reference
from .chain import Chain
from .conv import Conv
from .errors import ConfigError, LayoutError, ShapeError, UnsupportedError, VerificationError, fail
from .graph import Graph, from_canonical, to_canonical
from .record import Record
from .tolerance import ASSERT_CLOSE_DEFAULTS
from .transpose import ConvTranspose

#: end-to-end tolerance: the dtype's rtol times this factor per weighted layer, relative to max |y|
END_TO_END_FACTOR = 10


# -- reports -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mapping:
    """One source layer loaded into one target module."""

    source: str
    target: str
    kind: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class LayerCheck:
    """How one matched layer's output compared with the source's.

    ``own`` is the error of the layer on its own (the source layer applied to
    the input the target module received), relative to the largest output;
    ``carried`` the error of its output against the source model's.
    """

    source: str
    target: str
    carried: float
    own: float
    passed: bool
    cause: str = ""


@dataclass(frozen=True)
class PortReport:
    """What :func:`port` did, and whether the ported module reproduces the source."""

    mappings: tuple[Mapping, ...]
    verified: bool  # False when the source cannot run (weights only, no architecture)
    passed: bool
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    tolerance: float | None = None
    layers: tuple[LayerCheck, ...] = ()
    notes: tuple[str, ...] = ()
    loaded: bool = True  # False for a check of a module that already held the weights (verify(source, target, x))

    @property
    def first_divergence(self) -> LayerCheck | None:
        return next((c for c in self.layers if not c.passed), None)

    def __str__(self) -> str:
        lines = ["source layer -> target module"]
        width = max((len(m.source) for m in self.mappings), default=10)
        for m in self.mappings:
            lines.append(f"  {m.source:<{width}} -> {m.target}  ({m.kind}){'  ' + '; '.join(m.notes) if m.notes else ''}")
        for note in self.notes:
            lines.append(f"note: {note}")
        if not self.verified:
            lines.append("NOT VERIFIED: the source cannot run (weights only, no architecture); pass architecture= to verify")
            return "\n".join(lines)
        lines.append(
            f"end to end: max abs error {self.max_abs_error:.3e}, max rel error {self.max_rel_error:.3e} "
            f"(tolerance {self.tolerance:.1e} relative to the largest output)"
        )
        for c in self.layers:
            lines.append(f"  {c.source:<{width}} carried {c.carried:.2e}  own {c.own:.2e}  {'ok' if c.passed else 'DIFFERS'}")
        first = self.first_divergence
        if first is not None:
            lines.append(f"first divergence: {first.source} -> {first.target}: {first.cause}")
        lines.append("PASSED" if self.passed else "FAILED" + (" (the target module was left unchanged)" if self.loaded else ""))
        return "\n".join(lines)


# -- the source side ---------------------------------------------------------------------------------


class SourceLayer(NamedTuple):
    name: str
    record: Record
    edge: str | None  # the graph edge holding this layer's output (None: not in a runnable graph)
    input_edge: str | None
    flatten: tuple[str, tuple[int, ...] | None] | None  # (order, canonical (C, *S) or None) of a flatten feeding a Dense
    assumed: bool = False  # hyperparameters assumed, not read


_PASS_THROUGH = (layers.Identity, layers.Activation)


def _graph_layers(graph: Graph, shapes: dict[str, tuple[int, ...]] | None) -> list[SourceLayer]:
    producer = {n.name: n for n in graph.nodes}
    out: list[SourceLayer] = []
    seen: set[str] = set()
    for node in graph.nodes:
        record = graph.layers[node.layer]
        if node.layer in seen or not _weighted(record):
            continue
        seen.add(node.layer)
        flatten = None
        if isinstance(record, layers.Dense):
            edge = node.inputs[0]
            while edge in producer and isinstance(graph.layers[producer[edge].layer], _PASS_THROUGH):
                edge = producer[edge].inputs[0]
            if edge in producer and isinstance(graph.layers[producer[edge].layer], layers.Flatten):
                flat = producer[edge]
                shape = shapes[flat.inputs[0]][1:] if shapes is not None else None
                flatten = (graph.layers[flat.layer].order, shape)
        if isinstance(record, Chain):
            for i, part in enumerate(record.layers):
                last = i == len(record.layers) - 1
                out.append(SourceLayer(f"{node.layer}[{i}]", part, node.name if last else None, node.inputs[0] if i == 0 else None, None))
            continue
        out.append(SourceLayer(node.layer, record, node.name, node.inputs[0], flatten))
    return out


def _weighted(record: Record) -> bool:
    if isinstance(record, Chain):
        return True
    return any(getattr(record, a, None) is not None for a in record.ARRAYS)


def _file_layers(kf: Any) -> list[SourceLayer]:
    """The weighted layers of a weights-only Keras file, in file order (Keras writes them in model order)."""
    out: list[SourceLayer] = []
    previous: Record | None = None
    for layer in kf.layers:
        if not layer.weights:
            continue
        kind = layer.type or ""
        if layer.is_conv1d or kind in _conv_classes():
            record: Record = kf.conv(layer.name)
        elif kind == "Dense" or (not kind and [len(w.shape) for w in layer.weights] in ([2], [2, 1])):
            arrays = kf.weights(layer.name)
            record = layers.Dense(arrays[0], arrays[1] if len(arrays) > 1 else None, layout="I O")
        elif kind == "BatchNormalization" and len(layer.weights) == 4:
            gamma, beta, mean, variance = kf.weights(layer.name)  # Keras 1's running_std holds the variance
            record = layers.BatchNorm(mean, variance, gamma, beta, epsilon=1e-3)
        else:
            raise fail(
                UnsupportedError,
                f"Layer {layer.name!r} ({kind or 'unknown type'}) of a weights-only file cannot be ported without its architecture",
                "convolution, Dense and BatchNormalization layers (or architecture=model.json)",
                f"weights {[w.shape for w in layer.weights]}",
                "Pass architecture= (the model.json, or the Keras model) so every layer is known.",
            )
        flatten = None
        if isinstance(record, layers.Dense) and previous is not None and getattr(previous, "spatial_rank", 0):
            if record.in_channels != previous.out_channels:
                flatten = ("channels_last", None)  # Keras flattens channels last
        out.append(SourceLayer(layer.name, record, None, None, flatten, assumed=True))
        previous = record
    return out


def _conv_classes() -> tuple[str, ...]:
    from .legacy import semantics

    return tuple(semantics.CONV_CLASSES)


# -- the target side ---------------------------------------------------------------------------------


class TargetCall(NamedTuple):
    name: str
    module: Any
    inputs: tuple[tuple[int, ...], ...]
    output: tuple[int, ...] | None


def _trace(target: Any, example: Sequence[Any]) -> list[TargetCall]:
    import torch

    names = {m: n for n, m in target.named_modules()}
    calls: list[TargetCall] = []

    def hook(module: Any, args: Any, output: Any) -> None:
        shapes = tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))
        out = tuple(output.shape) if isinstance(output, torch.Tensor) else None
        calls.append(TargetCall(names[module], module, shapes, out))

    handles = [m.register_forward_hook(hook) for m in target.modules() if _is_leaf(m)]
    try:
        with torch.no_grad():
            target(*example)
    except Exception as exc:  # the user's forward: report, do not crash
        raise fail(
            ShapeError,
            f"Your module failed on the example inputs {[tuple(x.shape) for x in example]}",
            "a module that runs on example_inputs",
            f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}",
        ) from None
    finally:
        for h in handles:
            h.remove()
    return calls


def _is_leaf(module: Any) -> bool:
    return not list(module.children()) or any(True for _ in module.parameters(recurse=False))


def _has_parameters(module: Any) -> bool:
    return any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))


# -- kinds and weights -------------------------------------------------------------------------------


def _kind_of_module(module: Any) -> str:
    from torch import nn

    for cls, kind in (
        (nn.modules.conv._ConvTransposeNd, "ConvTranspose"),
        (nn.modules.conv._ConvNd, "Conv"),
        (nn.Linear, "Dense"),
        (nn.modules.batchnorm._BatchNorm, "BatchNorm"),
        (nn.LayerNorm, "LayerNorm"),
        (nn.Embedding, "Embedding"),
    ):
        if isinstance(module, cls):
            return kind
    return type(module).__name__


def _kind_of_record(record: Record) -> str:
    for cls, kind in ((ConvTranspose, "ConvTranspose"), (Conv, "Conv"), (layers.Dense, "Dense"), (layers.BatchNorm, "BatchNorm"),
                      (layers.LayerNorm, "LayerNorm"), (layers.Embedding, "Embedding")):
        if isinstance(record, cls):
            return kind
    return type(record).__name__


def _describe_record(record: Record) -> str:
    if isinstance(record, layers.Dense):
        return f"Dense {record.in_channels}->{record.out_channels}"
    if isinstance(record, (Conv, ConvTranspose)):
        return f"{type(record).__name__} {record.in_channels}->{record.out_channels} kernel {record.kernel_shape}"
    if isinstance(record, layers.BatchNorm):
        return f"BatchNorm {record.in_channels}"
    return repr(record)


def _expected_tensors(record: Record) -> dict[str, np.ndarray]:
    """The target's parameter and buffer values (PyTorch names) for a record, before any flatten permutation."""
    if isinstance(record, (Conv, ConvTranspose)):
        out = {"weight": record.kernel}
        if record.bias is not None:
            out["bias"] = record.bias
        return out
    if isinstance(record, layers.Dense):
        out = {"weight": record.kernel}
        if record.bias is not None:
            out["bias"] = record.bias
        return out
    if isinstance(record, layers.BatchNorm):
        return {
            "weight": record.scale if record.scale is not None else np.ones_like(record.mean),
            "bias": record.offset if record.offset is not None else np.zeros_like(record.mean),
            "running_mean": record.mean,
            "running_var": record.variance,
        }
    if isinstance(record, layers.LayerNorm):
        size = next(a for a in (record.scale, record.offset) if a is not None)
        return {
            "weight": record.scale if record.scale is not None else np.ones_like(size),
            "bias": record.offset if record.offset is not None else np.zeros_like(size),
        }
    if isinstance(record, layers.Embedding):
        return {"weight": record.weights}
    raise fail(UnsupportedError, "This layer kind cannot be ported yet", "Conv, ConvTranspose, Dense, BatchNorm, LayerNorm, Embedding", type(record).__name__)


def _fits(layer: SourceLayer, call: TargetCall) -> str:
    """Why ``layer`` cannot go into ``call.module`` ('' when it can)."""
    kind = _kind_of_record(layer.record)
    if kind != _kind_of_module(call.module):
        return f"kinds differ: {kind} vs {type(call.module).__name__}"
    tensors = dict(call.module.named_parameters(recurse=False))
    tensors.update(dict(call.module.named_buffers(recurse=False)))
    for name, value in _expected_tensors(layer.record).items():
        have = tensors.get(name)
        if have is None:
            if name == "bias" and value is not None:
                return "the source has a bias, the target module has none (bias=False)"
            continue
        if tuple(have.shape) != tuple(value.shape):
            return f"{name} shapes differ: source {tuple(value.shape)} vs target {tuple(have.shape)}"
    if isinstance(layer.record, layers.BatchNorm) and not call.module.affine:
        if layer.record.scale is not None or layer.record.offset is not None:
            return "the source scales and shifts (gamma/beta), the target BatchNorm has affine=False"
    return ""


def _match(sources: list[SourceLayer], calls: list[TargetCall], mapping: dict[str, str] | None) -> list[tuple[SourceLayer, TargetCall]]:
    seen: set[int] = set()
    weighted: list[TargetCall] = []
    for call in calls:
        if _has_parameters(call.module) and id(call.module) not in seen and any(True for _ in call.module.parameters(recurse=False)):
            seen.add(id(call.module))
            weighted.append(call)
    by_name = {c.name: c for c in weighted}
    pinned: dict[str, TargetCall] = {}
    for src, tgt in (mapping or {}).items():
        if src not in {s.name for s in sources}:
            raise fail(ConfigError, f"mapping names an unknown source layer {src!r}", f"one of {[s.name for s in sources]}", repr(src))
        if tgt not in by_name:
            raise fail(ConfigError, f"mapping names an unknown target module {tgt!r}", f"one of {list(by_name)}", repr(tgt))
        pinned[src] = by_name[tgt]
    free_sources = [s for s in sources if s.name not in pinned]
    used = {id(c.module) for c in pinned.values()}
    free_targets = [c for c in weighted if id(c.module) not in used]
    if len(free_sources) != len(free_targets):
        raise fail(
            ConfigError,
            "The source and your module have different numbers of layers with weights",
            f"one target module per source layer: {[f'{s.name} ({_describe_record(s.record)})' for s in free_sources]}",
            f"modules run in this order: {[f'{c.name} ({type(c.module).__name__})' for c in free_targets]}",
            "Pass mapping={source_layer: 'target.module'} for the pairs that are not in the same order.",
        )
    pairs = [(s, pinned[s.name]) for s in sources if s.name in pinned]
    for s, c in pairs:
        why = _fits(s, c)
        if why:
            raise fail(ConfigError, f"mapping pairs {s.name!r} with {c.name!r}, which does not fit", "a module of the same kind and shapes", why)
    unused = list(free_targets)
    for s in free_sources:
        # the next module in execution order when it fits; otherwise the only module that fits
        nxt = unused[0]
        if not _fits(s, nxt):
            chosen = nxt
        else:
            candidates = [t for t in unused if not _fits(s, t)]
            if len(candidates) != 1:
                raise fail(
                    ConfigError,
                    f"Source layer {s.name!r} ({_describe_record(s.record)}) does not fit your module {nxt.name!r} "
                    f"({type(nxt.module).__name__}), the next in execution order: {_fits(s, nxt)}",
                    "one module of the same kind and weight shapes",
                    f"{'several' if candidates else 'no'} unused modules that fit: {[t.name for t in candidates]}",
                    "Pass mapping={" + repr(s.name) + ": 'target.module'} to pair it by hand.",
                )
            chosen = candidates[0]
        unused.remove(chosen)
        pairs.append((s, chosen))
    order = {id(c.module): i for i, c in enumerate(weighted)}
    return sorted(pairs, key=lambda p: order[id(p[1].module)])


_REARRANGE_METHODS = {"view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze", "unsqueeze", "swapaxes", "movedim"}


def _rearranging(node: Any, modules: dict[str, Any]) -> bool:
    """True when an fx node only moves elements around (or is the identity at inference)."""
    import torch

    if node.op == "call_method":
        return node.target in _REARRANGE_METHODS
    if node.op == "call_function":
        return node.target in (torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze,
                               torch.movedim, torch.swapaxes, torch.nn.functional.dropout)
    if node.op == "call_module":
        return isinstance(modules.get(node.target), (torch.nn.Flatten, torch.nn.Unflatten, torch.nn.Identity, torch.nn.Dropout))
    return False


def _probe(target: Any, example: Sequence[Any], linear: Any, in_features: int, produce: Callable[[tuple[int, ...]], Any],
           where: str) -> tuple[np.ndarray, tuple[int, ...], str] | None:
    """Find the tensor flattened into ``linear`` with torch.fx and feed it the numbers 1..n; None when fx cannot trace."""
    import torch
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        gm = torch.fx.symbolic_trace(target)
        ShapeProp(gm).propagate(*example)
    except Exception:  # untraceable forward (data-dependent control flow): fall back to module hooks
        return None
    modules = dict(gm.named_modules())
    name = next((n for n, m in target.named_modules() if m is linear), None)
    node = next((n for n in gm.graph.nodes if n.op == "call_module" and n.target == name), None)
    if node is None or not node.args:
        return None
    source = node.args[0]
    while hasattr(source, "op") and _rearranging(source, modules) and source.args:
        source = source.args[0]
    meta = getattr(source, "meta", {}).get("tensor_meta")
    if meta is None or len(meta.shape) < 3 or math.prod(meta.shape[1:]) != in_features:
        return None
    shape = tuple(int(v) for v in meta.shape[1:])
    captured: list[Any] = []

    class Probe(torch.fx.Interpreter):
        def run_node(self, n: Any) -> Any:
            if n is node:
                captured.append(self.env[n.args[0]][0].detach().to(torch.float64).flatten().cpu().numpy().copy())
            result = super().run_node(n)
            if n is source:
                return produce(shape).to(result.dtype).expand(result.shape).clone()
            return result

    with torch.no_grad():
        Probe(gm).run(*example)
    return (captured[0] if captured else np.array([])), shape, source.name


def _probe_order(target: Any, example: Sequence[Any], calls: list[TargetCall], linear: Any, in_features: int) -> tuple[np.ndarray, tuple[int, ...], str]:
    """For a Linear reading a flattened tensor: which element of the flattened tensor reaches each input.

    Returns ``(index, shape, producer)``: ``index[j]`` is the flat index (in the
    flattened tensor's sample, of shape ``shape``) of what input ``j`` receives.
    """
    import torch

    at = next(i for i, c in enumerate(calls) if c.module is linear)

    def produce(shape: tuple[int, ...]) -> Any:
        return torch.arange(1, in_features + 1, dtype=torch.float64).reshape(shape)

    found = _probe(target, example, linear, in_features, produce, calls[at].name)
    if found is None:
        producer = None
        for c in reversed(calls[:at]):
            if c.output is not None and len(c.output) >= 3 and math.prod(c.output[1:]) == in_features:
                producer = c
                break
        if producer is None:
            raise fail(
                UnsupportedError,
                f"Cannot find the tensor your module flattens before {calls[at].name!r}",
                f"a traceable forward (torch.fx), or a module before it whose output has {in_features} elements per sample",
                f"module outputs {[(c.name, c.output) for c in calls[:at]][-6:]}",
                "Make the forward traceable by torch.fx, or produce the flattened tensor with a module (e.g. nn.MaxPool1d).",
            )
        shape = producer.output[1:]
        captured: list[Any] = []

        def replace(module: Any, args: Any, output: Any) -> Any:
            return produce(shape).to(output.dtype).expand(output.shape).clone()

        def grab(module: Any, args: Any) -> None:
            captured.append(args[0][0].detach().to(torch.float64).flatten().cpu().numpy().copy())

        h1 = producer.module.register_forward_hook(replace)
        h2 = linear.register_forward_pre_hook(grab)
        try:
            with torch.no_grad():
                target(*example)
        finally:
            h1.remove()
            h2.remove()
        found = (captured[0] if captured else np.array([])), tuple(shape), producer.name
    got, shape, producer_name = found
    index = np.rint(got).astype(np.int64) - 1
    if got.shape != (in_features,) or not np.array_equal(np.sort(index), np.arange(in_features)) or not np.allclose(got, index + 1):
        raise fail(
            UnsupportedError,
            f"What reaches {calls[at].name!r} is not a rearrangement of {producer_name!r}'s output",
            "only flatten/view/reshape/permute (and eval-mode dropout) between them",
            "other operations in between",
            "Check the forward between these two.",
        )
    return index, tuple(shape), producer_name


def _flatten_columns(layer: SourceLayer, index: np.ndarray, shape: tuple[int, ...], channels: int) -> tuple[np.ndarray, str]:
    """Source column for each target input position of a Dense after a flatten."""
    order, source_shape = layer.flatten  # type: ignore[misc]
    if source_shape is None:  # weights-only: the channels are those of the layer before, the rest from the target
        if shape[0] == channels:
            source_shape, layout = shape, "channels_first"
        elif shape[-1] == channels:
            source_shape, layout = (shape[-1],) + shape[:-1], "channels_last"
        else:
            raise fail(
                ShapeError,
                f"The tensor your module flattens before {layer.name!r} does not have the source's {channels} channels",
                f"an axis of {channels} channels",
                f"shape {shape}",
            )
    else:
        source_shape = tuple(source_shape)
        if shape == source_shape:
            layout = "channels_first"
        elif shape == source_shape[1:] + source_shape[:1]:
            layout = "channels_last"
        else:
            raise fail(
                ShapeError,
                f"The tensor your module flattens before {layer.name!r} has another shape than the source's",
                f"{source_shape} (channels first) or its channels-last view",
                f"{shape}",
            )
    n = int(np.prod(source_shape))
    canonical = np.arange(n).reshape(source_shape)  # canonical flat index of every element
    target_view = canonical if layout == "channels_first" else np.moveaxis(canonical, 0, -1)
    canonical_of_target = target_view.reshape(-1)[index]
    source_order = canonical if order == "channels_first" else np.moveaxis(canonical, 0, -1)
    column_of_canonical = np.empty(n, dtype=np.int64)
    column_of_canonical[source_order.reshape(-1)] = np.arange(n)
    return column_of_canonical[canonical_of_target], layout


# -- verification ------------------------------------------------------------------------------------


def _to_numpy_inputs(example: Sequence[Any]) -> list[np.ndarray]:
    out = []
    for x in example:
        if hasattr(x, "detach"):
            x = x.detach().cpu().numpy()
        out.append(np.asarray(x))
    return out


def _fits_shape(shape: tuple[int, ...], pattern: tuple[int | None, ...]) -> bool:
    return len(shape) == len(pattern) and all(p is None or p == n for p, n in zip(pattern, shape))


def _source_inputs(graph: Graph, example: list[np.ndarray]) -> tuple[list[np.ndarray], list[str], list[str]]:
    """The example inputs in the source's layouts, and how the target takes each (``source`` or ``channels_first``)."""
    out, how, notes = [], [], []
    for spec, x in zip(graph.inputs, example):
        fits_source = _fits_shape(x.shape[1:], spec.shape)
        first_pattern = (spec.shape[-1], *spec.shape[:-1]) if spec.layout == "channels_last" and len(spec.shape) >= 2 else None
        fits_first = first_pattern is not None and _fits_shape(x.shape[1:], first_pattern)
        if fits_first:
            out.append(np.moveaxis(x, 1, -1))
            how.append("channels_first")
            if fits_source:
                notes.append(f"input {spec.name!r} fits both layouts; taken as channels first (PyTorch's)")
        elif fits_source:
            out.append(x)
            how.append("source")
        else:
            raise fail(
                ShapeError,
                f"Example input for {spec.name!r} fits neither the source's layout nor channels first",
                f"(N, {', '.join('?' if s is None else str(s) for s in spec.shape)}) or its channels-first view",
                f"shape {x.shape}",
            )
    return out, how, notes


def _as_canonical(value: np.ndarray, canonical_shape: tuple[int, ...], channels_last: bool = False) -> np.ndarray | None:
    """A target tensor as the canonical layout (channels first), or None if it fits neither layout."""
    if value.ndim > 2 and channels_last:
        moved = np.moveaxis(value, -1, 1)
        return moved if moved.shape == canonical_shape else None
    if value.shape == canonical_shape:
        return value
    moved = np.moveaxis(value, -1, 1) if value.ndim > 2 else value
    return moved if moved.shape == canonical_shape else None


def _rel(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    return diff, diff / scale if scale > 0 else diff


# -- the verb ----------------------------------------------------------------------------------------


def _read_source(source: Any, architecture: Any) -> tuple[Graph | None, list[SourceLayer] | None, Any]:
    from .model import read_model

    if isinstance(source, Graph):
        return source, None, None
    if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
        from .legacy import open as open_keras_file

        kf = open_keras_file(source)
        if architecture is None and kf.model_config is None:
            return None, _file_layers(kf), kf
    return read_model(source, architecture=architecture), None, None


class _Prepared(NamedTuple):
    graph: Graph | None
    edges: dict[str, np.ndarray] | None
    how: list[str]
    pairs: list[tuple[SourceLayer, TargetCall]]
    plan: list[tuple[Any, dict[str, np.ndarray], dict[str, Any]]]
    mappings: list[Mapping]
    ported: dict[str, Record]
    notes: list[str]


def _prepare(source: Any, target: Any, example: list[Any], mapping: dict[str, str] | None, architecture: Any) -> _Prepared:
    """Read the source, trace the target, pair layers, and compute every tensor to load (nothing is written)."""
    from .adapters import torch_adapter

    graph, file_layers, _ = _read_source(source, architecture)
    notes: list[str] = []

    shapes = None
    src_inputs: list[np.ndarray] = []
    how: list[str] = []
    edges: dict[str, np.ndarray] | None = None
    if graph is not None:
        src_inputs, how, more = _source_inputs(graph, _to_numpy_inputs(example))
        notes += more
        from . import graph as graph_module

        edges = graph_module.run(graph, src_inputs, lambda r, x: reference.forward(r, x), keep=True)
        shapes = {k: v.shape for k, v in edges.items()}
        sources = _graph_layers(graph, shapes)
    else:
        assert file_layers is not None
        sources = file_layers
        notes.append("the source is a weights-only file: stride, padding, activations and the flatten order (channels last, Keras') are assumed, not read")

    target.eval()
    calls = _trace(target, example)
    pairs = _match(sources, calls, mapping)

    # compute every tensor first; nothing is written until all of them are ready
    plan: list[tuple[Any, dict[str, np.ndarray], dict[str, Any]]] = []
    mappings: list[Mapping] = []
    ported: dict[str, Record] = {}
    previous_out: dict[str, int] = {}
    for i, (layer, call) in enumerate(pairs):
        record = layer.record
        tensors = dict(_expected_tensors(record))
        attrs: dict[str, Any] = {}
        layer_notes: list[str] = []
        if isinstance(record, layers.Dense) and layer.flatten is not None:
            channels = next((s.record.out_channels for s, _ in reversed(pairs[:i]) if getattr(s.record, "spatial_rank", 0)), 0)
            index, shape, producer = _probe_order(target, example, calls, call.module, record.in_channels)
            columns, layout = _flatten_columns(layer, index, shape, channels)
            tensors["weight"] = record.kernel[:, columns]
            record = record.replace(kernel=tensors["weight"])
            if not np.array_equal(columns, np.arange(columns.size)):
                layer_notes.append(f"columns permuted: the source flattened {layer.flatten[0].replace('_', ' ')}, yours {layout.replace('_', ' ')} (after {producer})")
        if isinstance(record, (layers.BatchNorm, layers.LayerNorm)) and call.module.eps != record.epsilon:
            attrs["eps"] = record.epsilon
            layer_notes.append(f"eps set to {record.epsilon:g} (was {call.module.eps:g})")
        if isinstance(record, (Conv, ConvTranspose)):
            source_in = shapes[layer.input_edge][2:] if shapes is not None and layer.input_edge in shapes else None
            layer_notes += _check_conv(layer, call, torch_adapter, source_in)
        if isinstance(record, (Conv, ConvTranspose, layers.Dense)) and record.bias is None and getattr(call.module, "bias", None) is not None:
            tensors["bias"] = np.zeros(record.out_channels, dtype=record.kernel.dtype)
            layer_notes.append("bias set to zeros (the source has none)")
        params = dict(call.module.named_parameters(recurse=False))
        params.update(dict(call.module.named_buffers(recurse=False)))
        for name, value in tensors.items():
            dtype = str(params[name].dtype).replace("torch.", "")
            if value.dtype.name != dtype:
                layer_notes.append(f"{name} cast {value.dtype.name} -> {dtype}")
                break
        plan.append((call.module, tensors, attrs))
        mappings.append(Mapping(layer.name, call.name, _kind_of_record(layer.record), tuple(layer_notes)))
        ported[layer.name] = record

    return _Prepared(graph, edges, how, pairs, plan, mappings, ported, notes)


def port(
    source: Any,
    target: Any,
    *,
    example_inputs: Any = None,
    mapping: dict[str, str] | None = None,
    architecture: Any = None,
    strict: bool = True,
) -> PortReport:
    """Load a trained model's weights into your own PyTorch module and prove it computes the same (module docs).

    ``source``: anything :func:`layoutconv.read_model` reads (a Keras model, a
    Keras file of any version, with ``architecture=`` for weights-only files), or
    a weights-only Keras file alone (then nothing can run the source: the
    weights are loaded and checked for kind and shape, and the report says it is
    not verified).  ``target``: a ``torch.nn.Module``.  ``example_inputs``: a
    tensor or tuple of tensors your module takes (channels first, or in the
    source's layout), required.

    Returns a :class:`PortReport`.  When the check fails the module is restored
    and, with ``strict`` (default), a :class:`~layoutconv.VerificationError`
    carrying the report (``error.report``) is raised.
    """
    from .model import _keras_flavour

    flavour = _keras_flavour(target)
    if flavour is not None:
        if example_inputs is None:
            raise fail(ConfigError, "port needs example_inputs", "an array (or tuple of arrays) your Keras model takes", "None")
        example_np = [np.asarray(x) for x in (example_inputs if isinstance(example_inputs, (tuple, list)) else [example_inputs])]
        return _port_keras(source, target, example_np, mapping, architecture, strict, flavour)
    import torch

    from .adapters import torch_adapter

    if not isinstance(target, torch.nn.Module):
        raise fail(UnsupportedError, "port writes into PyTorch modules and Keras models", "a torch.nn.Module or a Keras model",
                   f"a {type(target).__name__}")
    if example_inputs is None:
        raise fail(ConfigError, "port needs example_inputs", "a tensor (or tuple of tensors) your module takes", "None")
    example = list(example_inputs) if isinstance(example_inputs, (tuple, list)) else [example_inputs]
    example = [x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x)) for x in example]
    prepared = _prepare(source, target, example, mapping, architecture)
    graph, edges, how, pairs, plan, mappings, ported, notes = prepared
    snapshot = {k: v.detach().clone() for k, v in target.state_dict().items()}
    saved_attrs = [(module, {k: getattr(module, k) for k in attrs}) for module, _, attrs in plan]
    _load(plan, torch_adapter)

    if graph is None:
        return PortReport(tuple(mappings), verified=False, passed=True, notes=tuple(notes))

    assert edges is not None
    report = _verify_port(graph, target, example, how, edges, pairs, ported, tuple(mappings), notes)
    if not report.passed:
        target.load_state_dict(snapshot)
        for module, values in saved_attrs:
            for k, v in values.items():
                setattr(module, k, v)
        if strict:
            err = VerificationError(str(report))
            err.report = report  # type: ignore[attr-defined]
            raise err
    return report


def _check_conv(layer: SourceLayer, call: TargetCall, torch_adapter: Any, source_in: tuple[int, ...] | None) -> list[str]:
    module = call.module
    record = layer.record
    notes: list[str] = []
    for name in ("stride", "dilation"):
        have = tuple(getattr(module, name))
        if have != record.__getattribute__(name):
            raise fail(ConfigError, f"Your module {call.name!r} has another {name} than source layer {layer.name!r}",
                       f"{name}={record.__getattribute__(name)}", f"{name}={have}",
                       "Change the module's constructor argument." if not layer.assumed else "The source file does not record it: check your model's code.")
    if module.groups != record.groups:
        raise fail(ConfigError, f"Your module {call.name!r} has groups={module.groups}, source layer {layer.name!r} groups={record.groups}",
                   f"groups={record.groups}", f"groups={module.groups}")
    if isinstance(record, Conv) and call.inputs and source_in is not None:
        try:
            mine = torch_adapter.from_native(module)
        except LayoutError:
            return notes
        target_in = tuple(call.inputs[0][2:])
        before = tuple(t - s for t, s in zip(target_in, source_in))  # padded in forward before the module
        theirs = tuple(b + e for b, e in record.pads(source_in))
        ours = tuple(p + b + e for p, (b, e) in zip(before, mine.pads(target_in)))
        if ours != theirs or mine.padding_mode != record.padding_mode:
            raise fail(
                ConfigError,
                f"Your module {call.name!r} pads differently from source layer {layer.name!r}",
                f"pads {record.pads(source_in)} in total per axis ({record.padding!r}, {record.padding_mode}) for input size {source_in}",
                f"{ours} in total ({before} before the module, {mine.pads(target_in)} by it, {mine.padding_mode})",
                "Keras 'same' puts the odd extra pad at the end, which PyTorch's symmetric padding=p cannot: pad in forward with F.pad.",
            )
        if any(before):
            notes.append(f"padded by {before} before the module (checked numerically)")
    return notes


def _load(plan: list[tuple[Any, dict[str, np.ndarray], dict[str, Any]]], torch_adapter: Any) -> None:
    import torch

    with torch.no_grad():
        for module, tensors, attrs in plan:
            params = dict(module.named_parameters(recurse=False))
            params.update(dict(module.named_buffers(recurse=False)))
            for name, value in tensors.items():
                have = params[name]
                have.copy_(torch_adapter.to_tensor(np.ascontiguousarray(value)).to(have.dtype))
            for k, v in attrs.items():
                setattr(module, k, v)


def _verify_port(graph: Graph, target: Any, example: list[Any], how: list[str], edges: dict[str, np.ndarray],
                 pairs: list[tuple[SourceLayer, TargetCall]], ported: dict[str, Record], mappings: tuple[Mapping, ...],
                 notes: list[str]) -> PortReport:
    import torch

    captured: dict[int, tuple[Any, Any]] = {}

    def hook(module: Any, args: Any, output: Any) -> None:
        if id(module) not in captured and args and isinstance(args[0], torch.Tensor) and isinstance(output, torch.Tensor):
            captured[id(module)] = (args[0].detach().to(torch.float64).cpu().numpy(), output.detach().to(torch.float64).cpu().numpy())

    handles = [c.module.register_forward_hook(hook) for _, c in pairs]
    try:
        with torch.no_grad():
            out = target(*example)
    finally:
        for h in handles:
            h.remove()
    outs = out if isinstance(out, (tuple, list)) else (out,)
    dtype = str(next(target.parameters()).dtype).replace("torch.", "")
    rtol, atol = ASSERT_CLOSE_DEFAULTS.get(dtype, ASSERT_CLOSE_DEFAULTS["float32"])
    tol = rtol * END_TO_END_FACTOR * max(1, len(pairs))

    checks: list[LayerCheck] = []
    previous: tuple[Record, str] | None = None
    for layer, call in pairs:
        if layer.edge is None or id(call.module) not in captured:
            continue
        x_t, y_t = captured[id(call.module)]
        expected = edges[layer.edge]
        record = ported[layer.name]
        y_c = _as_canonical(y_t, expected.shape, channels_last=not record_takes_first(record))
        x_c = x_t if record_takes_first(record) or x_t.ndim < 3 else np.moveaxis(x_t, -1, 1)
        if y_c is None:
            checks.append(LayerCheck(layer.name, call.name, math.inf, math.inf, False, f"output shape {y_t.shape} is not the source's {expected.shape}"))
            continue
        fused = getattr(record, "activation", "linear")
        applied = getattr(call.module, "activation", "linear") if isinstance(getattr(call.module, "activation", None), str) else "linear"
        # a plain nn.Conv1d / nn.Linear leaves the source's fused activation to the forward that follows it
        after = fused if applied == "linear" else "linear"
        carried = _rel(activations.apply(after, y_c), expected)[1]
        own_record = record.replace(activation=applied) if fused != applied else record
        if isinstance(record, Conv):
            try:
                from .adapters import torch_adapter

                mine = torch_adapter.from_native(call.module)
                own_record = own_record.replace(padding=mine.padding, padding_mode=mine.padding_mode)
            except LayoutError:
                pass
        try:
            own_expected = reference.forward(own_record, x_c)
            own = _rel(y_c, own_expected)[1]
        except LayoutError:
            own_expected, own = None, math.inf
        passed = carried <= tol and own <= tol  # a saturating activation after it can hide a wrong layer downstream
        cause = "" if passed else _cause(record, x_c, own, tol, previous)
        previous = (record, call.name)
        checks.append(LayerCheck(layer.name, call.name, carried, own, passed, cause))

    abs_err, rel_err = 0.0, 0.0
    ok = True
    for name, value in zip(graph.outputs, outs):
        expected_c = edges[name]
        got = value.detach().to(torch.float64).cpu().numpy()
        got_c = _as_canonical(got, expected_c.shape)
        if got_c is None:
            ok = False
            notes = notes + [f"output shape {got.shape} fits neither {expected_c.shape} nor its channels-last view"]
            continue
        a, r = _rel(got_c, expected_c)
        abs_err, rel_err = max(abs_err, a), max(rel_err, r)
        ok = ok and (r <= tol or a <= atol)
    passed = ok and all(c.passed for c in checks)
    if not ok and all(c.passed for c in checks):
        checks.append(LayerCheck("(output)", "(output)", rel_err, math.nan, False,
                                 "every layer with weights matches, so an operation after the last one differs (activation, pooling, merge)"))
    return PortReport(mappings, True, passed, abs_err, rel_err, tol, tuple(checks), tuple(notes))


def record_takes_first(record: Record) -> bool:
    return not isinstance(record, (layers.Dense, layers.LayerNorm))


#: activations whose outputs stay in a range: what reaches the next layer cannot leave it
_RANGES = {
    "relu": (0.0, math.inf), "relu6": (0.0, 6.0), "sigmoid": (0.0, 1.0), "hard_sigmoid_keras2": (0.0, 1.0),
    "hard_sigmoid_keras3": (0.0, 1.0), "softplus": (0.0, math.inf), "tanh": (-1.0, 1.0), "softsign": (-1.0, 1.0),
}


def _cause(record: Record, x: np.ndarray, own: float, tol: float, previous: tuple[Record, str] | None) -> str:
    """The likely cause of a layer whose output differs from the source's."""
    if own <= tol:
        act = getattr(previous[0], "activation", "linear") if previous else "linear"
        low, high = _RANGES.get(act, (-math.inf, math.inf))
        if previous is not None and x.size and (x.min() < low - 1e-6 or x.max() > high + 1e-6):
            return (f"what reaches it holds values {act!r} cannot produce (from {x.min():.3g} to {x.max():.3g}): "
                    f"the source applies {act!r} after {previous[1]!r}; your forward does not")
        return ("this layer computes the source's function on what it receives; what reaches it already differs: "
                "an operation before it (activation, pooling, padding, flatten or reshape order) does not match the source")
    if isinstance(record, (Conv, ConvTranspose)):
        return "this layer itself computes something else: check its padding, stride, dilation and activation"
    return f"this layer itself computes something else (own error {own:.2e})"


def compare(source: Any, target: Any, inputs: Any, *, mapping: dict[str, str] | None = None, architecture: Any = None) -> PortReport:
    """Check a PyTorch module that already holds a model's weights against the source: nothing is loaded or changed.

    What ``layoutconv.verify(source, target, inputs)`` runs for a ``torch.nn.Module``
    target: the layers are paired as :func:`port` pairs them, each pair's tensors
    are compared with the source's (converted to your module's layout), and the
    module runs against the reference end to end and layer by layer.
    """
    import torch

    if not isinstance(target, torch.nn.Module):
        raise fail(UnsupportedError, "compare checks PyTorch modules", "a torch.nn.Module", f"a {type(target).__name__}")
    example = list(inputs) if isinstance(inputs, (tuple, list)) else [inputs]
    example = [x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x)) for x in example]
    prepared = _prepare(source, target, example, mapping, architecture)
    graph, edges, how, pairs, plan, mappings, ported, notes = prepared
    checked = []
    for (module, tensors, attrs), m in zip(plan, mappings):
        params = dict(module.named_parameters(recurse=False))
        params.update(dict(module.named_buffers(recurse=False)))
        worst = 0.0
        for name, value in tensors.items():
            have = params[name].detach().to(torch.float64).cpu().numpy()
            worst = max(worst, float(np.max(np.abs(have - value.astype(np.float64)))) if value.size else 0.0)
        differs = [f"{k}={getattr(module, k):g} where the source has {v:g}" for k, v in attrs.items()]
        note = "weights equal" if worst == 0 else f"weights differ by up to {worst:.3g}"
        checked.append(Mapping(m.source, m.target, m.kind, (note, *differs)))
    if graph is None:
        return PortReport(tuple(checked), verified=False, passed=all(n.notes == ("weights equal",) for n in checked), notes=tuple(notes), loaded=False)
    assert edges is not None
    report = _verify_port(graph, target, example, how, edges, pairs, ported, tuple(checked), notes)
    return dataclasses.replace(report, loaded=False)


# -- Keras targets -----------------------------------------------------------------------------------


def _keras_weights_for(record: Record, in_shape: tuple[int, ...], flavour: str) -> list[np.ndarray]:
    """The arrays a Keras layer computing ``record`` holds, in Keras' order and layouts (built by the Keras adapter)."""
    from . import registry
    from .graph import Input, Node

    kind = "int" if isinstance(record, layers.Embedding) else "float"
    rank = len(in_shape)
    shape = tuple(in_shape[1:]) + tuple(in_shape[:1]) if rank > 1 and kind == "float" else tuple(in_shape)
    layout = "channels_last" if rank > 1 and kind == "float" else "flat"
    one = Graph({"layer": record}, [Input("x", shape, layout, kind)], [Node("y", "layer", ("x",), layout)], ["y"], name="port")
    model = registry.converter(one, flavour).to_native(one)
    weighted = [layer for layer in model.layers if layer.get_weights()]
    if len(weighted) != 1:
        raise fail(UnsupportedError, f"A {type(record).__name__} is not one Keras layer with weights", "one layer", f"{[l.name for l in weighted]}")
    return [np.asarray(w) for w in weighted[0].get_weights()]


def _port_keras(source: Any, target: Any, example: list[np.ndarray], mapping: dict[str, str] | None, architecture: Any,
                strict: bool, flavour: str) -> PortReport:
    from . import graph as graph_module
    from .model import read_model

    sgraph = source if isinstance(source, Graph) else read_model(source, architecture=architecture)
    tgraph = read_model(target)
    # the example inputs are the target's (Keras: channels last); the source may hold them otherwise
    t_edges = graph_module.run(tgraph, example, lambda r, x: reference.forward(r, x), keep=True)
    canonical_inputs = [t_edges[i.name] for i in tgraph.inputs]
    s_edges = graph_module.run(sgraph, canonical_inputs, lambda r, x: reference.forward(r, x), layout="channels_first", keep=True)
    sources = _graph_layers(sgraph, {k: v.shape for k, v in s_edges.items()})
    targets = _graph_layers(tgraph, {k: v.shape for k, v in t_edges.items()})
    pairs = _match_layers(sources, targets, mapping)
    plan: list[tuple[Any, list[np.ndarray], dict[str, Any]]] = []
    mappings: list[Mapping] = []
    for s, t in pairs:
        record, notes = s.record, []
        if isinstance(record, layers.Dense) and (s.flatten or t.flatten):
            record, note = _refold_columns(s, t)
            if note:
                notes.append(note)
        if isinstance(record, (Conv, ConvTranspose)):
            size = s_edges[s.input_edge].shape[2:] if s.input_edge in s_edges else None
            for name in ("stride", "dilation", "groups"):
                if getattr(record, name) != getattr(t.record, name):
                    raise fail(ConfigError, f"Your layer {t.name!r} has another {name} than source layer {s.name!r}",
                               f"{name}={getattr(record, name)}", f"{name}={getattr(t.record, name)}")
            if size is not None and isinstance(record, Conv) and record.pads(size) != t.record.pads(size):
                raise fail(ConfigError, f"Your layer {t.name!r} pads differently from source layer {s.name!r} at input size {size}",
                           f"pads {record.pads(size)}", f"pads {t.record.pads(size)}", "Add a ZeroPadding layer and use padding='valid'.")
            record = record.replace(padding=t.record.padding, activation=t.record.activation)
        elif hasattr(record, "activation") and hasattr(t.record, "activation") and not isinstance(record, layers.Activation):
            record = record.replace(activation=t.record.activation)  # the fused activation is the target's business: checked by running
        attrs: dict[str, Any] = {}
        if isinstance(record, (layers.BatchNorm, layers.LayerNorm)) and record.epsilon != t.record.epsilon:
            attrs["epsilon"] = record.epsilon
            notes.append(f"epsilon set to {record.epsilon:g} (was {t.record.epsilon:g})")
        keras_layer = target.get_layer(t.name)
        in_shape = t_edges[t.input_edge].shape[1:] if t.input_edge in t_edges else None
        weights = _keras_weights_for(record, in_shape, flavour)
        have = keras_layer.get_weights()
        if [w.shape for w in weights] != [w.shape for w in have]:
            raise fail(ConfigError, f"Source layer {s.name!r} does not fit your layer {t.name!r}", f"weights {[w.shape for w in weights]}",
                       f"weights {[w.shape for w in have]}")
        plan.append((keras_layer, [w.astype(h.dtype) for w, h in zip(weights, have)], attrs))
        mappings.append(Mapping(s.name, t.name, _kind_of_record(s.record), tuple(notes)))
    saved = [(layer, layer.get_weights(), {k: getattr(layer, k) for k in attrs}) for layer, _, attrs in plan]
    for layer, weights, attrs in plan:
        layer.set_weights(weights)
        for k, v in attrs.items():
            setattr(layer, k, v)
    report = _verify_keras(sgraph, s_edges, target, example, pairs, tuple(mappings), flavour)
    if not report.passed:
        for layer, weights, attrs in saved:
            layer.set_weights(weights)
            for k, v in attrs.items():
                setattr(layer, k, v)
        if strict:
            err = VerificationError(str(report))
            err.report = report  # type: ignore[attr-defined]
            raise err
    return report


def _match_layers(sources: list[SourceLayer], targets: list[SourceLayer], mapping: dict[str, str] | None) -> list[tuple[SourceLayer, SourceLayer]]:
    """Pair weighted layers: pinned by ``mapping``, else the next in order when kind and shapes fit, else the only fit."""

    def fits(s: SourceLayer, t: SourceLayer) -> bool:
        if _kind_of_record(s.record) != _kind_of_record(t.record):
            return False
        try:
            a, b = _expected_tensors(s.record), _expected_tensors(t.record)
        except LayoutError:
            return type(s.record) is type(t.record)
        return {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}

    by_name = {t.name: t for t in targets}
    pairs: list[tuple[SourceLayer, SourceLayer]] = []
    pinned = dict(mapping or {})
    for src, tgt in pinned.items():
        s = next((x for x in sources if x.name == src), None)
        if s is None or tgt not in by_name:
            raise fail(ConfigError, "mapping names an unknown layer", f"source layers {[x.name for x in sources]}, target layers {list(by_name)}", f"{src!r}: {tgt!r}")
        pairs.append((s, by_name[tgt]))
    unused = [t for t in targets if t.name not in pinned.values()]
    free = [s for s in sources if s.name not in pinned]
    if len(free) != len(unused):
        raise fail(ConfigError, "The source and your model have different numbers of layers with weights",
                   f"{[s.name for s in free]}", f"{[t.name for t in unused]}", "Pass mapping= for the pairs that differ.")
    for s in free:
        if fits(s, unused[0]):
            chosen = unused[0]
        else:
            candidates = [t for t in unused if fits(s, t)]
            if len(candidates) != 1:
                raise fail(ConfigError, f"Source layer {s.name!r} ({_describe_record(s.record)}) does not fit your layer {unused[0].name!r}",
                           "one layer of the same kind and weight shapes", f"{'several' if candidates else 'no'} that fit: {[t.name for t in candidates]}",
                           "Pass mapping={" + repr(s.name) + ": 'layer_name'}.")
            chosen = candidates[0]
        unused.remove(chosen)
        pairs.append((s, chosen))
    order = {t.name: i for i, t in enumerate(targets)}
    return sorted(pairs, key=lambda p: order[p[1].name])


def _refold_columns(s: SourceLayer, t: SourceLayer) -> tuple[Record, str]:
    """A Dense's columns from the source's flatten order to the target's (both known from the graphs)."""
    s_order, s_shape = s.flatten or ("channels_first", None)
    t_order, t_shape = t.flatten or ("channels_first", None)
    shape = s_shape or t_shape
    if shape is None or (s_shape is not None and t_shape is not None and tuple(s_shape) != tuple(t_shape)):
        raise fail(ShapeError, f"The tensors flattened before {s.name!r} and {t.name!r} differ", f"{s_shape}", f"{t_shape}")
    if s_order == t_order:
        return s.record, ""
    n = int(np.prod(shape))
    canonical = np.arange(n).reshape(shape)
    listed = {o: (canonical if o == "channels_first" else np.moveaxis(canonical, 0, -1)).reshape(-1) for o in (s_order, t_order)}
    column_of = np.empty(n, dtype=np.int64)
    column_of[listed[s_order]] = np.arange(n)
    columns = column_of[listed[t_order]]
    record = s.record.replace(kernel=np.ascontiguousarray(s.record.kernel[:, columns]))
    return record, f"columns permuted: the source flattened {s_order.replace('_', ' ')}, yours {t_order.replace('_', ' ')}"


def _verify_keras(sgraph: Graph, s_edges: dict[str, np.ndarray], target: Any, example: list[np.ndarray],
                  pairs: list[tuple[SourceLayer, SourceLayer]], mappings: tuple[Mapping, ...], flavour: str) -> PortReport:
    """Run the Keras target against the source's reference; name the first matched layer whose output differs."""
    from . import graph as graph_module
    from .model import read_model

    got = target.predict(example if len(example) > 1 else example[0], verbose=0)
    outs = got if isinstance(got, (list, tuple)) else [got]
    rtol, atol = ASSERT_CLOSE_DEFAULTS.get(str(np.asarray(outs[0]).dtype), ASSERT_CLOSE_DEFAULTS["float32"])
    tol = rtol * END_TO_END_FACTOR * max(1, len(pairs))
    abs_err = rel_err = 0.0
    ok = True
    for name, y in zip(sgraph.outputs, outs):
        y = np.asarray(y, dtype=np.float64)
        expected = s_edges[name]
        y_c = _as_canonical(y, expected.shape)
        if y_c is None:
            ok = False
            continue
        a, r = _rel(y_c, expected)
        abs_err, rel_err = max(abs_err, a), max(rel_err, r)
        ok = ok and (r <= tol or a <= atol)
    # layer by layer: the target as it now is, read back and run in numpy, against the source
    tgraph = read_model(target)
    t_edges = graph_module.run(tgraph, example, lambda r, x: reference.forward(r, x), keep=True)
    checks = []
    for s, t in pairs:
        if s.edge is None or t.edge is None:
            continue
        expected, mine = s_edges[s.edge], t_edges[t.edge]
        fused_t = getattr(t.record, "activation", "linear")
        fused_s = getattr(s.record, "activation", "linear")
        if fused_t != fused_s and fused_t == "linear":
            mine = activations.apply(fused_s, mine)
        carried = _rel(mine, expected)[1] if mine.shape == expected.shape else math.inf
        checks.append(LayerCheck(s.name, t.name, carried, math.nan, carried <= tol, "" if carried <= tol else
                                 "this layer's output differs from the source's: check it and what comes before it"))
    passed = ok and all(c.passed for c in checks)
    return PortReport(mappings, True, passed, abs_err, rel_err, tol, tuple(checks))
