"""A whole model: named layers (records), the nodes that call them, and the data layout on every edge.

A :class:`Graph` is inference-only plain data, made to carry trained models
between frameworks:

- ``layers``: name -> record.  A layer called twice (Keras shared layers, one
  convolution applied to a sequence and to its reverse complement) appears once
  and is used by two nodes, so its weights are written once;
- ``inputs``: the model's inputs (:class:`Input`: name, shape without the batch
  axis as the source framework sees it, layout, kind of data);
- ``nodes``: :class:`Node` s in execution order.  A node applies one layer to
  named edges (model inputs or earlier nodes) and its name is the name of the
  edge it produces; ``layout`` says how the *source* framework held that edge
  (``"channels_last"`` for Keras, ``"channels_first"`` for PyTorch; ``"flat"``
  for ``(N, F)`` data, where both agree);
- ``outputs``: the edges the model returns.

Inside the graph every tensor is channels first, like every record
(:mod:`layoutconv.layers`); the layouts say how to show data to, and take data
from, the source framework and a user.  :func:`layoutconv.reference.forward`
runs a graph on inputs in the source's layouts (``layout="channels_first"`` to
pass canonical arrays).

>>> import numpy as np
>>> from layoutconv import Conv, reference
>>> from layoutconv.layers import Flatten, Dense
>>> g = Graph(
...     layers={"conv": Conv(np.ones((2, 3, 2))), "flat": Flatten(), "dense": Dense(np.ones((1, 8)))},
...     inputs=[Input("x", (5, 3))],                               # Keras: 5 steps of 3 channels
...     nodes=[Node("conv", "conv", ("x",)), Node("flat", "flat", ("conv",), "flat"), Node("dense", "dense", ("flat",), "flat")],
...     outputs=["dense"],
... )
>>> reference.forward(g, np.ones((1, 5, 3))).tolist()
[[48.0]]
"""

from __future__ import annotations

import re
import types
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from .errors import ConfigError, ShapeError, fail
from .record import Record

#: How the source framework holds an edge.
LAYOUTS = ("channels_last", "channels_first", "flat")


class Input(NamedTuple):
    """A model input: its name, per-sample shape as the source sees it (``None`` for a free size), layout and kind."""

    name: str
    shape: tuple[int | None, ...]
    layout: str = "channels_last"
    kind: str = "float"  # "float" or "int" (Embedding ids)


class Node(NamedTuple):
    """One call of a layer: ``name`` (the edge it produces) = ``layers[layer](*inputs)``."""

    name: str
    layer: str
    inputs: tuple[str, ...]
    layout: str = "channels_last"


def _check_layout(value: str, where: str) -> str:
    if value not in LAYOUTS:
        raise fail(ConfigError, f"Invalid layout for {where}", f"one of {LAYOUTS}", f"{value!r}")
    return value


class Graph(Record):
    """A model as named records, nodes in execution order, and the source's layout on every edge (module docs)."""

    __slots__ = ("layers", "inputs", "nodes", "outputs", "name")
    FIELDS = ("layers", "inputs", "nodes", "outputs", "name")

    layers: Mapping[str, Record]
    inputs: tuple[Input, ...]
    nodes: tuple[Node, ...]
    outputs: tuple[str, ...]
    name: str

    def __init__(
        self,
        layers: Mapping[str, Record],
        inputs: Iterable[Input],
        nodes: Iterable[Node],
        outputs: Iterable[str],
        name: str = "model",
    ) -> None:
        layers = dict(layers)
        for key, record in layers.items():
            if not isinstance(key, str) or not key or not isinstance(record, Record):
                raise fail(ConfigError, "Invalid graph layer", "name -> layoutconv record", f"{key!r} -> {type(record).__name__}")
        inputs_t = tuple(Input(i.name, tuple(i.shape), _check_layout(i.layout, f"input {i.name!r}"), i.kind) for i in inputs)
        nodes_t = tuple(Node(n.name, n.layer, tuple(n.inputs), _check_layout(n.layout, f"node {n.name!r}")) for n in nodes)
        outputs_t = tuple(outputs)
        known: set[str] = set()
        for i in inputs_t:
            if i.name in known:
                raise fail(ConfigError, "Two graph inputs have one name", "unique edge names", f"{i.name!r} twice")
            if i.kind not in ("float", "int"):
                raise fail(ConfigError, f"Invalid kind for input {i.name!r}", "'float' or 'int'", f"{i.kind!r}")
            known.add(i.name)
        used: set[str] = set()
        for n in nodes_t:
            if n.name in known:
                raise fail(ConfigError, "Two graph edges have one name", "unique node and input names", f"{n.name!r} twice")
            if n.layer not in layers:
                raise fail(ConfigError, f"Node {n.name!r} calls an unknown layer", f"one of {sorted(layers)}", f"{n.layer!r}")
            missing = [e for e in n.inputs if e not in known]
            if missing or not n.inputs:
                raise fail(
                    ConfigError,
                    f"Node {n.name!r} reads edges that are not computed before it",
                    "nodes in execution order, reading model inputs or earlier nodes",
                    f"inputs {list(n.inputs)} ({', '.join(map(repr, missing)) or 'none given'} unknown)",
                )
            known.add(n.name)
            used.add(n.layer)
        if not outputs_t or any(o not in known for o in outputs_t):
            raise fail(ConfigError, "Invalid graph outputs", f"names of edges among {sorted(known)}", f"{list(outputs_t)}")
        unused = sorted(set(layers) - used)
        if unused:
            raise fail(ConfigError, "Graph layers no node calls", "every layer used by a node", f"unused {unused}")
        self._set("layers", types.MappingProxyType(layers))
        self._set("inputs", inputs_t)
        self._set("nodes", nodes_t)
        self._set("outputs", outputs_t)
        self._set("name", str(name))

    def values(self) -> dict[str, Any]:
        values = super().values()
        values["layers"] = dict(self.layers)
        return values

    def same_weights(self, other: Record) -> bool:
        return (
            isinstance(other, Graph)
            and list(self.layers) == list(other.layers)
            and all(a.same_weights(b) for a, b in zip(self.layers.values(), other.layers.values()))
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Graph):
            return NotImplemented
        return (
            list(self.layers.items()) == list(other.layers.items())
            and (self.inputs, self.nodes, self.outputs) == (other.inputs, other.nodes, other.outputs)
        )

    __hash__ = None  # type: ignore[assignment]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise fail(ConfigError, "No such node", f"one of {[n.name for n in self.nodes]}", f"{name!r}")

    def layout_of(self, edge: str) -> str:
        """How the source framework holds an edge (an input or a node)."""
        for i in self.inputs:
            if i.name == edge:
                return i.layout
        return self.node(edge).layout

    def weighted_layers(self) -> list[tuple[str, Record]]:
        """The layers that hold arrays, in the order nodes first call them."""
        seen: list[str] = []
        for n in self.nodes:
            if n.layer not in seen and any(getattr(self.layers[n.layer], a, None) is not None for a in self.layers[n.layer].ARRAYS):
                seen.append(n.layer)
            record = self.layers[n.layer]
            if n.layer not in seen and hasattr(record, "layers") and not isinstance(record, Graph):
                seen.append(n.layer)  # a Chain (separable convolution) holds its arrays in its layers
        return [(name, self.layers[name]) for name in seen]

    def summary(self) -> str:
        """One line per node: name, layer kind, inputs, and layout."""
        lines = [f"Graph {self.name!r}: {len(self.inputs)} input(s), {len(self.nodes)} node(s), {len(self.layers)} layer(s)"]
        for i in self.inputs:
            lines.append(f"  input {i.name}: shape (N, {', '.join('?' if s is None else str(s) for s in i.shape)}) {i.layout}")
        for n in self.nodes:
            shared = "" if n.layer == n.name else f" [layer {n.layer}]"
            lines.append(f"  {n.name}{shared}: {self.layers[n.layer]!r} <- {', '.join(n.inputs)} ({n.layout})")
        lines.append(f"  outputs: {', '.join(self.outputs)}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: inputs, nodes (layer kind, hyperparameters, inputs, layout) and outputs."""

        def plain(v: Any) -> Any:
            if isinstance(v, (tuple, list)):
                return [plain(x) for x in v]
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            if isinstance(v, Record):
                return {"kind": type(v).__name__, **{k: plain(x) for k, x in _hyper(v).items()}}
            return v if isinstance(v, (str, int, float, bool)) or v is None else repr(v)

        return {
            "name": self.name,
            "inputs": [{"name": i.name, "shape": list(i.shape), "layout": i.layout, "kind": i.kind} for i in self.inputs],
            "nodes": [
                {"name": n.name, "layer": n.layer, "inputs": list(n.inputs), "layout": n.layout, "record": plain(self.layers[n.layer])}
                for n in self.nodes
            ],
            "outputs": list(self.outputs),
        }

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {len(self.nodes)} nodes, inputs {[i.name for i in self.inputs]}, outputs {list(self.outputs)})"


def _hyper(record: Record) -> dict[str, Any]:
    """A record's hyperparameters and array shapes, for reports."""
    out: dict[str, Any] = {}
    if hasattr(record, "hyperparameters"):
        out.update(record.hyperparameters())
    for name in record.ARRAYS:
        value = getattr(record, name, None)
        if value is not None:
            out[f"{name}_shape"] = list(value.shape)
    return out


def to_canonical(x: np.ndarray, layout: str) -> np.ndarray:
    """An array as the source holds it (``layout``) to channels first."""
    return np.moveaxis(x, -1, 1) if layout == "channels_last" and x.ndim > 2 else x


def from_canonical(x: np.ndarray, layout: str) -> np.ndarray:
    """A channels-first array to how the source holds it (``layout``)."""
    return np.moveaxis(x, 1, -1) if layout == "channels_last" and x.ndim > 2 else x


def run(graph: Graph, inputs: Sequence[Any], apply: Any, *, layout: str = "source", keep: bool = False, donate: bool = False) -> Any:
    """Run ``graph`` with ``apply(record, x_or_list)`` for every node (the reference and verify share this walk).

    ``inputs`` are given in the source's layouts (``layout="source"``) or channels
    first (``"channels_first"``).  Returns the outputs (one array, or a tuple) in
    that layout, or with ``keep=True`` every edge by name, channels first.

    With ``donate=True``, ``apply`` is called as ``apply(record, x_or_list, owned)``:
    ``owned`` (a bool, or one per input) says that nothing else will read that input's
    memory again (its last use, not an output, sharing no memory with a graph input or
    with any value still to be read), so ``apply`` may overwrite it.  Values are dropped
    after their last use.
    """
    if layout not in ("source", "channels_first"):
        raise fail(ConfigError, "Invalid value for argument `layout`", "'source' or 'channels_first'", f"layout={layout!r}")
    if len(inputs) != len(graph.inputs):
        raise fail(
            ShapeError,
            f"Graph {graph.name!r} takes {len(graph.inputs)} input(s)",
            f"arrays for {[i.name for i in graph.inputs]}",
            f"{len(inputs)} array(s)",
        )
    edges: dict[str, Any] = {}
    for spec, x in zip(graph.inputs, inputs):
        x = np.asarray(x)
        if x.ndim != len(spec.shape) + 1 or any(s is not None and s != n for s, n in zip(spec.shape, x.shape[1:] if layout == "source" else from_canonical(x, spec.layout).shape[1:])):
            raise fail(
                ShapeError,
                f"Input {spec.name!r} does not fit the graph",
                f"shape (N, {', '.join('?' if s is None else str(s) for s in spec.shape)}) ({spec.layout})",
                f"shape {tuple(x.shape)}",
            )
        edges[spec.name] = to_canonical(x, spec.layout) if layout == "source" else x
    if not donate:
        for node in graph.nodes:
            args = [edges[e] for e in node.inputs]
            edges[node.name] = apply(graph.layers[node.layer], args[0] if len(args) == 1 else args)
    else:
        _run_donating(graph, edges, apply)
    if keep:
        return edges
    outs = [edges[o] if layout == "channels_first" else from_canonical(edges[o], graph.layout_of(o)) for o in graph.outputs]
    return outs[0] if len(outs) == 1 else tuple(outs)


def _run_donating(graph: Graph, edges: dict[str, Any], apply: Any) -> None:
    """The node loop of :func:`run` with ``donate=True``: tells ``apply`` which inputs it may overwrite."""
    last = {e: i for i, node in enumerate(graph.nodes) for e in node.inputs}
    kept = set(graph.outputs)
    protected = list(edges.values())  # the caller's arrays (or views of them)
    for i, node in enumerate(graph.nodes):
        args = [edges[e] for e in node.inputs]

        def free(e: str, x: Any) -> bool:
            if last[e] != i or e in kept or node.inputs.count(e) != 1:
                return False
            others = [v for name, v in edges.items() if name != e and (name in kept or last.get(name, -1) >= i)]
            return not any(np.may_share_memory(v, x) for v in others + protected)

        owned = [free(e, x) for e, x in zip(node.inputs, args)]
        edges[node.name] = apply(graph.layers[node.layer], args[0] if len(args) == 1 else args, owned[0] if len(args) == 1 else owned)
        for e in set(node.inputs):
            if last[e] == i and e not in kept:
                del edges[e]


def flatten_channels_first(graph: Graph, inputs: Sequence[Any] | None = None) -> Graph:
    """The same model with every Keras-order ``Flatten`` feeding a ``Dense`` turned into PyTorch's order.

    The ``Dense`` columns are permuted to match, so the outputs do not change;
    the weights are then those a hand-written PyTorch model (``x.flatten(1)`` on
    channels-first data) loads as they are.  A Flatten whose output goes
    anywhere else is left as it was.  ``inputs`` fixes the sizes a Flatten sees
    (default: one sample of the declared input shapes; free sizes need it).
    """
    from . import layers, reference

    if inputs is None:
        if any(s is None for i in graph.inputs for s in i.shape):
            raise fail(
                ShapeError,
                "The model's input sizes are not all fixed",
                "inputs= giving example inputs, to know what each Flatten sees",
                f"input shapes {[i.shape for i in graph.inputs]}",
            )
        inputs = [np.zeros((1,) + tuple(i.shape), dtype=np.int64 if i.kind == "int" else np.float64) for i in graph.inputs]
    edges = run(graph, inputs, lambda r, x: reference.forward(r, x), keep=True)
    new_layers = dict(graph.layers)
    for node, users in flatten_users(graph):
        column = flatten_column(edges[node.inputs[0]].shape[1:])
        new_layers[node.layer] = layers.Flatten("channels_first")
        for u in users:
            dense = graph.layers[u.layer]
            new_layers[u.layer] = dense.replace(kernel=np.ascontiguousarray(dense.kernel[:, column]))
    return graph.replace(layers=new_layers)


def flatten_column(shape: Sequence[int]) -> np.ndarray:
    """For a Flatten of channels-first data of ``shape`` ``(C, *S)``: the Keras-order column of each element in PyTorch's order.

    A Dense kernel ``(out, in)`` reading Keras' flatten reads PyTorch's as ``kernel[:, column]``.
    """
    canonical = np.arange(int(np.prod(shape))).reshape(tuple(shape))
    keras_order = np.moveaxis(canonical, 0, -1).reshape(-1)  # canonical index listed in Keras' order
    column = np.empty_like(keras_order)
    column[keras_order] = np.arange(keras_order.size)  # Keras column of each canonical element
    return column


def flatten_users(graph: Graph) -> list[tuple[Node, list[Node]]]:
    """The Keras-order ``Flatten`` nodes :func:`flatten_channels_first` turns, each with the ``Dense`` nodes reading it.

    Only the kinds of the layers and the nodes matter (not the weights): a Flatten
    qualifies when every node reading it is a Dense and neither it nor those Dense
    layers are called by another node.
    """
    from . import layers

    consumers: dict[str, list[Node]] = {}
    for n in graph.nodes:
        for e in n.inputs:
            consumers.setdefault(e, []).append(n)
    calls: dict[str, int] = {}
    for n in graph.nodes:
        calls[n.layer] = calls.get(n.layer, 0) + 1
    found = []
    for node in graph.nodes:
        flat = graph.layers[node.layer]
        if not isinstance(flat, layers.Flatten) or flat.order != "channels_last":
            continue
        users = consumers.get(node.name, [])
        if not users or any(not isinstance(graph.layers[u.layer], layers.Dense) for u in users):
            continue
        if calls[node.layer] > 1 or any(calls[u.layer] > 1 for u in users):
            continue  # shared layers: changing one use would change the others
        found.append((node, users))
    return found


def attribute_name(name: str, taken: set[str]) -> str:
    """A layer name as a valid, unique module attribute (``conv1d/kernel`` -> ``conv1d_kernel``)."""
    out = re.sub(r"\W", "_", name) or "layer"
    if out[0].isdigit():
        out = "_" + out
    base_name, i = out, 1
    while out in taken or out in ("forward", "training", "graph", "layout"):
        out = f"{base_name}_{i}"
        i += 1
    taken.add(out)
    return out
