"""ONNX for the layer records (:mod:`layoutconv.layers`) and whole graphs (:class:`~layoutconv.graph.Graph`), both ways.

Writing (:func:`to_native`).  Every tensor inside the ONNX graph is channels
first, as in the records; a model's inputs and outputs are laid out as the
source model had them (``layout="source"``: a Keras model's twin takes
``(N, *spatial, C)``) by ``Transpose`` nodes at the edges.  Each record kind has
one emitter (:data:`EMITTERS`, keyed by record class) that appends its nodes
and initializers to the graph under construction:

==============  ==================================================================================
record          ONNX nodes (``x`` channels first, rank ``r``)
==============  ==================================================================================
Conv            ``Conv`` (+ ``Pad`` / pads sub-graph), as :func:`onnx_adapter.to_native` writes one
ConvTranspose   ``ConvTranspose``
Chain           one ``Conv`` per layer (separable: depthwise then pointwise)
Dense           ``r == 2``: ``Gemm(transB=1)``; ``r >= 3``: ``Transpose`` (channels last) ->
                ``MatMul`` (with ``Transpose`` of the weight) -> ``Add`` -> ``Transpose`` back
BatchNorm       ``BatchNormalization`` (inference)
LayerNorm       ``LayerNormalization`` on a view whose normalised axes are last (``Transpose`` around it)
Embedding       ``Gather`` (a ``Cast`` of float ids first) -> ``Transpose`` (channels first)
Activation      the recipes of :data:`onnx_adapter.ACTIVATION_RECIPES` (``Identity`` for linear)
Softmax         ``Softmax(axis)``
Identity        ``Identity``
Pool            ``MaxPool`` / ``AveragePool``: explicit pads, or ``auto_pad=SAME_*`` when the size is dynamic
GlobalPool      ``GlobalMaxPool`` / ``GlobalAveragePool`` (-> ``Flatten`` unless ``keepdims``)
Flatten         (``Transpose`` to channels last ->) ``Flatten(axis=1)``
Reshape         (``Transpose`` ->) ``Reshape([0, *shape])`` (-> ``Transpose``)
Permute         one ``Transpose``
Pad             ``Pad(mode=constant)``
Crop            ``Slice`` on the spatial axes
Merge           ``Add``/``Sum``, ``Sub``, ``Mul``, ``Mean``, ``Max``, ``Min``, ``Concat``
==============  ==================================================================================

Initializers are named after the layer, as PyTorch names parameters
(``dense.weight``, ``bn.running_var``, ``sep.1.weight`` for a chain), stored in
the record's dtype and canonical layout, bit for bit; a layer called twice
writes its weights once.  The main node of a layer is named after its edge and
carries a ``layoutconv:`` note in its ``doc_string`` (the layer name, and what
the ONNX op cannot say: a ``'same'`` pooling rule, a missing BatchNorm scale).

Reading (:func:`read_model`) walks the nodes in order and keeps, for every ONNX
tensor, the graph edge it is a transposition of: ``Transpose`` nodes are
composed, not recorded, until an op needs channels first, so the writer's
layout round trips (``Transpose -> MatMul -> Add -> Transpose`` reads as one
``Dense``).  Weights come through :func:`onnx_adapter.checked_array`; external
data is refused; nothing in the file is run, and an op that no reader knows
raises :class:`~layoutconv.UnsupportedError` naming the op and the node.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from .. import __version__, graph as graph_module, layers, reference, registry
from ..chain import Chain
from ..conv import Conv
from ..errors import ConfigError, FileFormatError, LayoutError, ShapeError, UnsupportedError, fail
from ..graph import Graph, Input, Node
from ..record import Record
from ..transpose import ConvTranspose
from . import onnx_adapter as base

#: The ONNX ops :func:`read_model` reads (activations through their recipes, see ``onnx_adapter``).
READ_OPS: tuple[str, ...] = ()  # filled in below, from the readers' table

_INT64_MAX = (1 << 63) - 1
_INT_TYPES = {TensorProto.INT64, TensorProto.INT32, TensorProto.INT16, TensorProto.INT8, TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT32}
_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}
#: The largest tensor rank read or written (batch included).
MAX_RANK = 8


# -- axis permutations -------------------------------------------------------------------------------


def to_last(rank: int) -> tuple[int, ...]:
    """The ``Transpose`` perm from channels first to channels last (identity below rank 3)."""
    return (0, *range(2, rank), 1) if rank > 2 else tuple(range(rank))


def to_first(rank: int) -> tuple[int, ...]:
    """The ``Transpose`` perm from channels last to channels first (identity below rank 3)."""
    return (0, rank - 1, *range(1, rank - 1)) if rank > 2 else tuple(range(rank))


def compose(p: Sequence[int], q: Sequence[int]) -> tuple[int, ...]:
    """``x.transpose(p).transpose(q) == x.transpose(compose(p, q))``."""
    return tuple(p[i] for i in q)


def _identity(p: Sequence[int]) -> bool:
    return tuple(p) == tuple(range(len(p)))


# -- the hint in doc_string --------------------------------------------------------------------------


def _hint(**fields: Any) -> str:
    """``layoutconv: layer=dense scale=none``: what the ONNX node cannot say itself (names are %-quoted)."""
    parts = [f"{k}={urllib.parse.quote(str(v), safe='')}" for k, v in fields.items() if v is not None]
    return " ".join([base._HINT, *parts])


def _hints(node: onnx.NodeProto) -> dict[str, str]:
    doc = base._text(node.doc_string)
    if not doc.startswith(base._HINT):
        return {}
    return {k: urllib.parse.unquote(v) for k, v in re.findall(r"\b(\w+)=(\S+)", doc[len(base._HINT) :])}


# ---------------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------------


class _Builder:
    """An ONNX graph under construction: nodes, initializers, and unique names."""

    def __init__(self, opset: int, dtype: np.dtype, reserved: set[str]) -> None:
        self.opset, self.dtype = opset, np.dtype(dtype)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, TensorProto] = {}
        self._arrays: dict[str, np.ndarray] = {}
        self.taken = set(reserved)
        self._node_names: set[str] = set()

    def name(self, hint: str) -> str:
        """A tensor name not used yet, ``hint`` if free."""
        out, i = hint, 1
        while out in self.taken:
            out = f"{hint}_{i}"
            i += 1
        self.taken.add(out)
        return out

    def node(self, op: str, inputs: Sequence[str], outputs: Sequence[str], name: str, doc: str = "", **attrs: Any) -> None:
        unique, i = name, 1
        while unique in self._node_names:
            unique = f"{name}_{i}"
            i += 1
        self._node_names.add(unique)
        self.nodes.append(helper.make_node(op, list(inputs), list(outputs), name=unique, doc_string=doc, **attrs))

    def weight(self, name: str, array: np.ndarray) -> str:
        """An initializer named ``name`` (a layer's weight); a second call with the same bytes reuses it."""
        if name in self._arrays:
            old = self._arrays[name]
            if old.dtype == array.dtype and old.shape == array.shape and old.tobytes() == array.tobytes():
                return name
            raise fail(
                ConfigError,
                f"Two different weights would be stored as {name!r}",
                "one array per layer weight name",
                f"shapes {old.shape} and {array.shape}",
                "Rename one of the layers.",
            )
        if name in self.taken:
            name = self.name(name)
        self.taken.add(name)
        self._arrays[name] = array
        self.initializers[name] = base._tensor(name, np.asarray(array))
        return name

    def const(self, hint: str, array: Any) -> str:
        """A small constant initializer (shapes, scalars) under a fresh name."""
        name = self.name(hint)
        self._arrays[name] = np.asarray(array)
        self.initializers[name] = base._tensor(name, np.asarray(array))
        return name

    def ints(self, hint: str, values: Sequence[int]) -> str:
        return self.const(hint, np.array(list(values), dtype=np.int64))

    def scalar(self, hint: str, value: float) -> str:
        return self.const(hint, np.asarray(value, dtype=self.dtype))

    def transpose(self, x: str, perm: Sequence[int], out: str | None, name: str) -> str:
        """``Transpose(x, perm)`` into ``out`` (a fresh name when None); nothing when perm is the identity and ``out`` is None."""
        if _identity(perm) and out is None:
            return x
        out = out or self.name(name)
        self.node("Transpose", [x], [out], name, perm=list(perm))
        return out

    def place(
        self, nodes: list[onnx.NodeProto], inits: list[TensorProto], names: dict[str, str], prefix: str,
        main: dict[str, str] | None = None, docs: dict[str, str] | None = None,
    ) -> None:
        """Add nodes written with local names (``onnx_adapter.conv_parts``, ``activation_nodes``), renamed.

        ``names`` maps local tensor names to graph names (the data input and output, the
        weights, which are stored under those names); every other local tensor becomes
        ``<prefix>/<local>``.  ``main`` maps local node names to graph node names (the
        others become ``<prefix>/<local>``), ``docs`` gives some nodes a ``doc_string``.
        """
        renamed = dict(names)
        main, docs = main or {}, docs or {}

        def new(local: str) -> str:
            if not local:
                return local
            if local not in renamed:
                renamed[local] = self.name(f"{prefix}/{local}")
            return renamed[local]

        for t in inits:
            if t.name in names:  # a weight: stored under its layer's name
                self.weight(names[t.name], base.numpy_helper.to_array(t))
            else:
                self.const_tensor(new(t.name), t)
        for n in nodes:
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            doc = docs.get(n.name, base._text(n.doc_string))
            self.node(n.op_type, [new(i) for i in n.input], [new(o) for o in n.output], main.get(n.name, f"{prefix}/{n.name}"), doc=doc, **attrs)

    def const_tensor(self, name: str, tensor: TensorProto) -> None:
        copy = TensorProto()
        copy.CopyFrom(tensor)
        copy.name = name
        self.taken.add(name)
        self.initializers[name] = copy


class _At(NamedTuple):
    """Where one node of the graph is written: its layer and edge, its input tensors (channels first), what is known of them."""

    layer: str
    edge: str
    inputs: tuple[str, ...]
    ranks: tuple[int | None, ...]
    shapes: tuple[tuple[int, ...] | None, ...]  # per sample, channels first, when every size is known
    kinds: tuple[str, ...]  # "float" or "int"
    out: str

    def rank(self, record: Any, i: int = 0) -> int:
        rank = self.ranks[i]
        if rank is None:
            raise fail(
                ConfigError,
                f"The ONNX form of {type(record).__name__} depends on its input's rank",
                "a known rank",
                "an input of unknown rank",
                "Pass input_shape=(C, ...) (per sample, channels first) to to_onnx.",
            )
        return rank


Emitter = Callable[[_Builder, Any, _At], None]
#: record class -> the function appending its nodes (looked up along the class's MRO).
EMITTERS: dict[type, Emitter] = {}


def emits(*kinds: type) -> Callable[[Emitter], Emitter]:
    def register(fn: Emitter) -> Emitter:
        for kind in kinds:
            if kind in EMITTERS:
                raise RuntimeError(f"two ONNX emitters for {kind.__name__}")
            EMITTERS[kind] = fn
        return fn

    return register


def _activate(b: _Builder, activation: str, z: str, out: str, prefix: str, main: str | None = None, doc: str = "") -> None:
    """``activation`` applied to ``z`` into ``out`` (the recipes of ``onnx_adapter``); ``main`` names the first node."""
    if activation == "linear":
        b.node("Identity", [z], [out], main or f"{prefix}/identity", doc=doc)
        return
    nodes, inits = base.activation_nodes(activation, b.dtype, b.opset, z, out)
    first = nodes[0].name
    b.place(nodes, inits, {z: z, out: out}, prefix, {first: main} if main else None, {first: doc} if doc else None)


def _conv_doc(conv: Conv | ConvTranspose, layer: str, doc: str) -> str:
    """The conv node's own note (padding rule and mode) with the layer's name added."""
    extra = _hint(layer=layer)[len(base._HINT) :]
    return (base._text(doc) or base._HINT) + extra


@emits(Conv, ConvTranspose)
def _conv(b: _Builder, conv: Conv | ConvTranspose, at: _At) -> None:
    nodes, inits = base.conv_parts(conv, b.opset)
    names = {"x": at.inputs[0], "y": at.out, "W": f"{at.layer}.weight", "B": f"{at.layer}.bias"}
    doc = next(n.doc_string for n in nodes if n.name == "conv")
    b.place(nodes, inits, names, at.edge, {"conv": at.edge}, {"conv": _conv_doc(conv, at.layer, doc)})


@emits(Chain)
def _chain(b: _Builder, chain: Chain, at: _At) -> None:
    """One convolution after the other; weights ``<layer>.<i>.weight`` as in a PyTorch ``nn.Sequential``."""
    x = at.inputs[0]
    last = len(chain.layers) - 1
    for i, conv in enumerate(chain.layers):
        out = at.out if i == last else b.name(f"{at.edge}/{i}")
        nodes, inits = base.conv_parts(conv, b.opset)
        names = {"x": x, "y": out, "W": f"{at.layer}.{i}.weight", "B": f"{at.layer}.{i}.bias"}
        doc = next(n.doc_string for n in nodes if n.name == "conv")
        main = at.edge if i == last else f"{at.edge}/{i}"
        b.place(nodes, inits, names, f"{at.edge}/{i}", {"conv": main}, {"conv": _conv_doc(conv, at.layer, doc)})
        x = out


@emits(layers.Dense)
def _dense(b: _Builder, d: layers.Dense, at: _At) -> None:
    rank = at.rank(d)
    w = b.weight(f"{at.layer}.weight", d.kernel)
    bias = [b.weight(f"{at.layer}.bias", d.bias)] if d.bias is not None else []
    doc = _hint(layer=at.layer)
    if rank == 2:
        z = at.out if d.activation == "linear" else b.name(f"{at.edge}/linear")
        b.node("Gemm", [at.inputs[0], w, *bias], [z], at.edge, doc=doc, transB=1)
        if d.activation != "linear":
            _activate(b, d.activation, z, at.out, at.edge)
        return
    # on a sequence or an image: the features are the last axis for MatMul, as Keras' Dense and nn.Linear see them
    x = b.transpose(at.inputs[0], to_last(rank), None, f"{at.edge}/channels_last")
    wt = b.name(f"{at.edge}/weight_t")
    b.node("Transpose", [w], [wt], f"{at.edge}/weight_t", perm=[1, 0])
    z = b.name(f"{at.edge}/matmul")
    b.node("MatMul", [x, wt], [z], at.edge, doc=doc)
    if bias:
        added = b.name(f"{at.edge}/add")
        b.node("Add", [z, bias[0]], [added], f"{at.edge}/bias")
        z = added
    if d.activation != "linear":
        y = b.name(f"{at.edge}/activation")
        _activate(b, d.activation, z, y, at.edge)
        z = y
    b.transpose(z, to_first(rank), at.out, f"{at.edge}/channels_first")


@emits(layers.BatchNorm)
def _batch_norm(b: _Builder, bn: layers.BatchNorm, at: _At) -> None:
    mean = bn.mean
    inputs = [
        at.inputs[0],
        b.weight(f"{at.layer}.weight", bn.scale if bn.scale is not None else np.ones_like(mean)),
        b.weight(f"{at.layer}.bias", bn.offset if bn.offset is not None else np.zeros_like(mean)),
        b.weight(f"{at.layer}.running_mean", mean),
        b.weight(f"{at.layer}.running_var", bn.variance),
    ]
    doc = _hint(layer=at.layer, scale="none" if bn.scale is None else None, offset="none" if bn.offset is None else None)
    b.node("BatchNormalization", inputs, [at.out], at.edge, doc=doc, epsilon=bn.epsilon)


@emits(layers.LayerNorm)
def _layer_norm(b: _Builder, ln: layers.LayerNorm, at: _At) -> None:
    rank = at.rank(ln)
    if max(ln.axes) >= rank:
        raise fail(ShapeError, "Input does not fit the LayerNorm layer", f"more than {max(ln.axes)} axes", f"rank {rank}")
    shape = next((a.shape for a in (ln.scale, ln.offset) if a is not None), None)
    if shape is None:
        known = at.shapes[0]
        if known is None:
            raise fail(
                UnsupportedError,
                "A LayerNorm without scale and offset has no size to write its ONNX scale with",
                "scale or offset, or an input of known shape",
                "neither",
            )
        shape = tuple(known[a - 1] for a in ln.axes)
    # ONNX normalises the trailing axes: move the normalised axes last, in order, and back after
    perm = tuple(a for a in range(rank) if a not in ln.axes) + ln.axes
    x = b.transpose(at.inputs[0], perm, None, f"{at.edge}/axes_last")
    dtype = next((a.dtype for a in (ln.scale, ln.offset) if a is not None), b.dtype)
    inputs = [x, b.weight(f"{at.layer}.weight", ln.scale if ln.scale is not None else np.ones(shape, dtype))]
    if ln.offset is not None:
        inputs.append(b.weight(f"{at.layer}.bias", ln.offset))
    y = at.out if _identity(perm) else b.name(f"{at.edge}/normalised")
    doc = _hint(layer=at.layer, scale="none" if ln.scale is None else None)
    b.node("LayerNormalization", inputs, [y], at.edge, doc=doc, axis=rank - len(ln.axes), epsilon=ln.epsilon)
    if not _identity(perm):
        b.transpose(y, tuple(int(i) for i in np.argsort(perm)), at.out, f"{at.edge}/axes_back")


@emits(layers.Embedding)
def _embedding(b: _Builder, emb: layers.Embedding, at: _At) -> None:
    rank = at.rank(emb) + 1
    ids = at.inputs[0]
    if at.kinds[0] != "int":
        cast = b.name(f"{at.edge}/ids")
        b.node("Cast", [ids], [cast], f"{at.edge}/ids", to=TensorProto.INT64)
        ids = cast
    gathered = at.out if rank <= 2 else b.name(f"{at.edge}/gather")
    b.node("Gather", [b.weight(f"{at.layer}.weight", emb.weights), ids], [gathered], at.edge, doc=_hint(layer=at.layer), axis=0)
    if rank > 2:
        b.transpose(gathered, to_first(rank), at.out, f"{at.edge}/channels_first")


@emits(layers.Activation)
def _activation(b: _Builder, act: layers.Activation, at: _At) -> None:
    _activate(b, act.activation, at.inputs[0], at.out, at.edge, main=at.edge, doc=_hint(layer=at.layer))


@emits(layers.Softmax)
def _softmax(b: _Builder, sm: layers.Softmax, at: _At) -> None:
    b.node("Softmax", [at.inputs[0]], [at.out], at.edge, doc=_hint(layer=at.layer), axis=sm.axis)


@emits(layers.Identity)
def _identity_layer(b: _Builder, layer: layers.Identity, at: _At) -> None:
    b.node("Identity", [at.inputs[0]], [at.out], at.edge, doc=_hint(layer=at.layer, was=layer.was or None))


@emits(layers.Pool)
def _pool(b: _Builder, pool: layers.Pool, at: _At) -> None:
    attrs: dict[str, Any] = dict(kernel_shape=list(pool.pool_size), strides=list(pool.stride))
    rule = None
    if isinstance(pool.padding, tuple):
        if any(v for pair in pool.padding for v in pair):
            attrs["pads"] = base._flat(pool.padding)
    elif pool.padding != "valid":
        rule = pool.padding
        shape = at.shapes[0]
        if shape is not None:  # sizes known: the pads of the rule at that size
            pads = pool.pads(shape[1:])
            if any(v for pair in pads for v in pair):
                attrs["pads"] = base._flat(pads)
        elif any(k < s for k, s in zip(pool.pool_size, pool.stride)):
            # onnxruntime 1.32 does not clamp the SAME_* total pad at 0: a window smaller than the
            # stride gives "padding values must be non-negative" for some input sizes
            raise fail(
                UnsupportedError,
                "onnxruntime cannot run a 'same' pooling whose window is smaller than its stride on inputs of any size",
                "pool_size >= stride on every axis, or an input of fixed size",
                f"pool_size {pool.pool_size}, stride {pool.stride}, input sizes unknown",
                "Give the model's input a fixed spatial size.",
            )
        else:
            attrs["auto_pad"] = base._TO_AUTO_PAD[rule]
    op = "MaxPool" if pool.kind == "max" else "AveragePool"
    if pool.kind == "avg":
        attrs["count_include_pad"] = int(pool.count_include_pad)
    b.node(op, [at.inputs[0]], [at.out], at.edge, doc=_hint(layer=at.layer, padding=rule), **attrs)


@emits(layers.GlobalPool)
def _global_pool(b: _Builder, pool: layers.GlobalPool, at: _At) -> None:
    op = "GlobalMaxPool" if pool.kind == "max" else "GlobalAveragePool"
    pooled = at.out if pool.keepdims else b.name(f"{at.edge}/pooled")
    b.node(op, [at.inputs[0]], [pooled], at.edge, doc=_hint(layer=at.layer))
    if not pool.keepdims:
        b.node("Flatten", [pooled], [at.out], f"{at.edge}/flatten", axis=1)


@emits(layers.Flatten)
def _flatten(b: _Builder, flat: layers.Flatten, at: _At) -> None:
    x = at.inputs[0]
    if flat.order == "channels_last":
        x = b.transpose(x, to_last(at.rank(flat)), None, f"{at.edge}/channels_last")
    b.node("Flatten", [x], [at.out], at.edge, doc=_hint(layer=at.layer), axis=1)


@emits(layers.Reshape)
def _reshape(b: _Builder, layer: layers.Reshape, at: _At) -> None:
    x = at.inputs[0]
    out_rank = len(layer.shape) + 1
    shape = b.ints(f"{at.edge}/shape", (0, *layer.shape))  # 0: the batch size, copied
    if layer.order == "channels_first":
        b.node("Reshape", [x, shape], [at.out], at.edge, doc=_hint(layer=at.layer))
        return
    x = b.transpose(x, to_last(at.rank(layer)), None, f"{at.edge}/channels_last")
    y = at.out if out_rank <= 2 else b.name(f"{at.edge}/reshaped")
    b.node("Reshape", [x, shape], [y], at.edge, doc=_hint(layer=at.layer))
    if out_rank > 2:
        b.transpose(y, to_first(out_rank), at.out, f"{at.edge}/channels_first")


def permute_perm(layer: layers.Permute) -> tuple[int, ...]:
    """The one ``Transpose`` perm (channels first in and out) that computes ``layer``."""
    rank = len(layer.dims) + 1
    inner = (0, *layer.dims)
    if layer.order == "channels_first":
        return inner
    return compose(compose(to_last(rank), inner), to_first(rank))


@emits(layers.Permute)
def _permute(b: _Builder, layer: layers.Permute, at: _At) -> None:
    rank = at.ranks[0]
    if rank is not None and rank != len(layer.dims) + 1:
        raise fail(ShapeError, "Input does not fit the Permute layer", f"{len(layer.dims)} axes after the batch", f"rank {rank}")
    b.node("Transpose", [at.inputs[0]], [at.out], at.edge, doc=_hint(layer=at.layer), perm=list(permute_perm(layer)))


@emits(layers.Pad)
def _pad(b: _Builder, layer: layers.Pad, at: _At) -> None:
    pads = b.ints(f"{at.edge}/pads", base._flat(((0, 0), (0, 0)) + layer.pads))
    value = b.scalar(f"{at.edge}/value", layer.value)
    b.node("Pad", [at.inputs[0], pads, value], [at.out], at.edge, doc=_hint(layer=at.layer), mode="constant")


@emits(layers.Crop)
def _crop(b: _Builder, layer: layers.Crop, at: _At) -> None:
    count = len(layer.crops)
    starts = b.ints(f"{at.edge}/starts", [begin for begin, _ in layer.crops])
    ends = b.ints(f"{at.edge}/ends", [-end if end else _INT64_MAX for _, end in layer.crops])
    axes = b.ints(f"{at.edge}/axes", range(2, 2 + count))
    b.node("Slice", [at.inputs[0], starts, ends, axes], [at.out], at.edge, doc=_hint(layer=at.layer))


#: Merge op -> the ONNX op for two inputs and for more
_MERGE_OPS = {
    "add": ("Add", "Sum"),
    "subtract": ("Sub", None),
    "multiply": ("Mul", None),  # no n-ary product in ONNX: a chain of Mul, left to right like the reference
    "average": ("Mean", "Mean"),
    "maximum": ("Max", "Max"),
    "minimum": ("Min", "Min"),
}


@emits(layers.Merge)
def _merge(b: _Builder, merge: layers.Merge, at: _At) -> None:
    doc = _hint(layer=at.layer)
    xs = list(at.inputs)
    if len(xs) < 2 or (merge.op == "subtract" and len(xs) != 2):
        raise fail(ShapeError, f"A {merge.op} merge got the wrong number of inputs", "exactly 2" if merge.op == "subtract" else "2 or more", f"{len(xs)}")
    if merge.op == "concatenate":
        b.node("Concat", xs, [at.out], at.edge, doc=doc, axis=merge.axis)
        return
    binary, nary = _MERGE_OPS[merge.op]
    if len(xs) == 2 or nary is not None:
        b.node(binary if len(xs) == 2 else nary, xs, [at.out], at.edge, doc=doc)
        return
    acc = xs[0]
    for i, x in enumerate(xs[1:], start=1):
        last = i == len(xs) - 1
        out = at.out if last else b.name(f"{at.edge}/{i}")
        b.node(binary, [acc, x], [out], at.edge if i == 1 else f"{at.edge}/{i}", doc=doc if i == 1 else "")
        acc = out


def _emitter(record: Any) -> Emitter:
    for cls in type(record).__mro__:
        if cls in EMITTERS:
            return EMITTERS[cls]
    raise fail(
        UnsupportedError,
        f"The ONNX writer has no form for a {type(record).__name__} yet",
        f"a record it writes: {', '.join(sorted(c.__name__ for c in EMITTERS))}",
        f"a {type(record).__name__}",
    )


# -- ranks and shapes --------------------------------------------------------------------------------


def _out_rank(record: Any, ranks: Sequence[int | None]) -> int | None:
    """The rank (batch included) of what ``record`` makes of inputs of ``ranks``; None when unknown."""
    if isinstance(record, (Conv, ConvTranspose, Chain, layers.Pool)):
        return record.spatial_rank + 2
    if isinstance(record, (layers.Pad, layers.Crop)):
        return len(getattr(record, "pads", None) or record.crops) + 2
    if isinstance(record, layers.Flatten):
        return 2
    if isinstance(record, (layers.Reshape, layers.Permute)):
        return len(getattr(record, "shape", None) or record.dims) + 1
    if isinstance(record, layers.GlobalPool) and not record.keepdims:
        return 2
    first = ranks[0] if ranks else None
    if isinstance(record, layers.Embedding):
        return None if first is None else first + 1
    return first


def static_shapes(graph: Graph) -> dict[str, tuple[int, ...]] | None:
    """Every edge's per-sample shape, channels first, when every input size is fixed; else None.

    The reference pass runs on a batch of zero samples: numpy works out every
    shape without computing anything.
    """
    if any(s is None for i in graph.inputs for s in i.shape):
        return None
    xs = [np.zeros((0, *i.shape), dtype=np.int64 if i.kind == "int" else np.float64) for i in graph.inputs]
    edges = graph_module.run(graph, xs, lambda r, x: reference.forward(r, x), keep=True)
    return {name: tuple(int(v) for v in value.shape[1:]) for name, value in edges.items()}


# -- the model ---------------------------------------------------------------------------------------


def _graph_dtype(graph: Graph, dtype: Any) -> np.dtype:
    found: dict[str, str] = {}
    for name, record in graph.layers.items():
        inner = record.layers if isinstance(record, Chain) else (record,)
        for r in inner:
            for a in getattr(r, "ARRAYS", ()):
                value = getattr(r, a, None)
                if isinstance(value, np.ndarray):
                    found.setdefault(value.dtype.name, name)
    if dtype is not None:
        wanted = np.dtype(dtype)
        if found and set(found) != {wanted.name}:
            raise fail(ConfigError, "Invalid value for argument `dtype`", f"the weights' dtype {sorted(found)}", f"dtype={wanted.name}")
        return wanted
    if len(found) > 1:
        raise fail(
            ConfigError,
            "The graph's weights have several dtypes",
            "one float dtype for every layer (ONNX operators take one element type)",
            ", ".join(f"{d} (layer {n!r})" for d, n in found.items()),
            "Cast the records to one dtype first.",
        )
    return np.dtype(next(iter(found), "float32"))


def required_opset(graph: Graph, dtype: np.dtype) -> int:
    """The lowest opset that writes ``graph``: 17 (``LayerNormalization``), more for circular padding or bfloat16."""
    need = max(base.MIN_OPSET, base.DTYPE_OPSET.get(dtype.name, base.MIN_OPSET))
    for record in graph.layers.values():
        for r in record.layers if isinstance(record, Chain) else (record,):
            if isinstance(r, (Conv, ConvTranspose)):
                need = max(need, base.required_opset(r))
    return need


def _choose_opset(graph: Graph, dtype: np.dtype, opset: Any) -> int:
    need, latest = required_opset(graph, dtype), onnx.defs.onnx_opset_version()
    if opset is None:
        return need
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not need <= opset <= latest:
        raise fail(
            ConfigError,
            "Invalid value for argument `opset`",
            f"an integer from {need} (what this graph needs) to {latest} (the newest this onnx knows)",
            f"opset={opset!r}",
            "Omit it to get the lowest opset that works.",
        )
    return int(opset)


def _dims(name: str, shape: Sequence[int | None]) -> list[Any]:
    return ["N"] + [s if s is not None else f"{name}_{k}" for k, s in enumerate(shape, start=1)]


def write_graph(graph: Graph, opset: Any = None, layout: str = "source", dtype: Any = None, free: frozenset[str] = frozenset()) -> onnx.ModelProto:
    """The ONNX model of ``graph`` (see :func:`to_native`); inputs named in ``free`` are declared without a shape."""
    if layout not in ("source", "channels_first"):
        raise fail(ConfigError, "Invalid value for argument `layout`", "'source' or 'channels_first'", f"layout={layout!r}")
    dt = _graph_dtype(graph, dtype)
    opset = _choose_opset(graph, dt, opset)
    elem = helper.np_dtype_to_tensor_dtype(dt)
    shapes = None if free else static_shapes(graph)
    ranks: dict[str, int | None] = {i.name: None if i.name in free else len(i.shape) + 1 for i in graph.inputs}
    kinds = {i.name: i.kind for i in graph.inputs}
    for n in graph.nodes:
        ranks[n.name] = _out_rank(graph.layers[n.layer], [ranks[e] for e in n.inputs])
        kinds[n.name] = "float"
        if (ranks[n.name] or 0) > MAX_RANK:
            raise fail(UnsupportedError, f"Edge {n.name!r} has too many axes", f"at most {MAX_RANK}", f"rank {ranks[n.name]}")

    def moved(edge: str) -> bool:  # is this edge transposed at the model's boundary?
        return layout == "source" and graph.layout_of(edge) == "channels_last" and (ranks[edge] or 0) > 2

    edge_names = {i.name for i in graph.inputs} | {n.name for n in graph.nodes}
    b = _Builder(opset, dt, edge_names)
    tensor_of: dict[str, str] = {}
    inputs = []
    for spec in graph.inputs:
        in_elem = TensorProto.INT64 if spec.kind == "int" else elem
        if spec.name in free:
            inputs.append(helper.make_tensor_value_info(spec.name, in_elem, None))
            tensor_of[spec.name] = spec.name
            continue
        declared = spec.shape if layout == "source" or spec.layout != "channels_last" or len(spec.shape) < 2 else (spec.shape[-1], *spec.shape[:-1])
        inputs.append(helper.make_tensor_value_info(spec.name, in_elem, _dims(spec.name, declared)))
        tensor_of[spec.name] = spec.name
        if moved(spec.name):
            tensor_of[spec.name] = b.transpose(spec.name, to_first(ranks[spec.name] or 0), b.name(f"{spec.name}/channels_first"), f"{spec.name}/channels_first")
    out_names = {o: (b.name(f"{o}/channels_first") if moved(o) else o) for o in graph.outputs}
    for node in graph.nodes:
        record = graph.layers[node.layer]
        at = _At(
            layer=node.layer,
            edge=node.name,
            inputs=tuple(tensor_of[e] for e in node.inputs),
            ranks=tuple(ranks[e] for e in node.inputs),
            shapes=tuple(shapes[e] if shapes is not None else None for e in node.inputs),
            kinds=tuple(kinds[e] for e in node.inputs),
            out=out_names.get(node.name, node.name),
        )
        try:
            _emitter(record)(b, record, at)
        except LayoutError as exc:
            raise type(exc)(f"Layer {node.layer!r} (node {node.name!r}): {exc}") from None
        tensor_of[node.name] = at.out
    outputs, written = [], set()
    for o in graph.outputs:
        rank = ranks[o]
        name = o
        if o in written or o in {i.name for i in graph.inputs}:  # ONNX outputs are unique and not inputs
            name = b.name(f"{o}/output")
        written.add(name)
        if moved(o):
            b.transpose(tensor_of[o], to_last(rank or 0), name, f"{o}/channels_last")
        elif tensor_of[o] != name:
            b.node("Identity", [tensor_of[o]], [name], f"{o}/output")
        if shapes is not None:
            cf = shapes[o]
            dims = _dims(o, (*cf[1:], cf[0]) if moved(o) else cf)
        else:
            dims = None if rank is None else _dims(o, [None] * (rank - 1))
        outputs.append(helper.make_tensor_value_info(name, elem, dims))
    onnx_graph = helper.make_graph(b.nodes, graph.name, inputs, outputs, list(b.initializers.values()), doc_string=f"layoutconv graph {graph.name!r}")
    model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="layoutconv", producer_version=__version__)
    model.ir_version = helper.find_min_ir_version_for(model.opset_import)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise fail(
            UnsupportedError,
            f"ONNX opset {opset} cannot express graph {graph.name!r}",
            "a model the ONNX checker accepts",
            f"the checker's complaint: {str(exc)[:600]}",
            "Pass a newer opset, or check that the graph runs in the reference pass on its input shapes.",
        ) from None
    return model


#: record kind -> its default per-sample input shape (channels first) when written alone; None: any rank
_ALONE_SHAPES: dict[type, Callable[[Any], tuple[int | None, ...] | None]] = {
    layers.Dense: lambda r: (r.in_channels,),
    layers.LayerNorm: lambda r: (None,) * max(r.axes),
    layers.Embedding: lambda r: (None,),
    layers.Flatten: lambda r: None if r.order == "channels_first" else (None, None),
    layers.Reshape: lambda r: None if r.order == "channels_first" else (None, None),
    layers.Permute: lambda r: (None,) * len(r.dims),
    layers.Pool: lambda r: (None,) * (r.spatial_rank + 1),
    layers.Pad: lambda r: (None,) * (len(r.pads) + 1),
    layers.Crop: lambda r: (None,) * (len(r.crops) + 1),
    Conv: lambda r: (r.in_channels, *(None,) * r.spatial_rank),
    ConvTranspose: lambda r: (r.in_channels, *(None,) * r.spatial_rank),
    Chain: lambda r: (r.in_channels, *(None,) * r.spatial_rank),
}


def _alone(record: Record, input_shape: Any) -> tuple[Graph, frozenset[str]]:
    """A one-node graph around ``record``, channels first: input ``x`` (``x0, x1, ...`` for a merge), output ``y``."""
    if isinstance(record, layers.Merge):
        shapes = list(input_shape) if input_shape is not None else [None, None]
        if input_shape is not None and (not shapes or not all(s is None or isinstance(s, (tuple, list)) for s in shapes)):
            raise fail(ConfigError, "Invalid value for argument `input_shape`", "a list of per-sample shapes, one per merged input", f"{input_shape!r}")
        names = [f"x{i}" for i in range(len(shapes))]
    else:
        shapes = [input_shape if input_shape is not None else next((f(record) for c, f in _ALONE_SHAPES.items() if isinstance(record, c)), None)]
        names = ["x"]
    free = frozenset(n for n, s in zip(names, shapes) if s is None)
    kind = "int" if isinstance(record, layers.Embedding) else "float"
    ins = [Input(n, tuple(s) if s is not None else (), "channels_first" if s is None or len(s) >= 2 else "flat", kind) for n, s in zip(names, shapes)]
    out_layout = "channels_first"
    graph = Graph({"layer": record}, ins, [Node("y", "layer", tuple(names), out_layout)], ["y"], name=type(record).__name__.lower())
    return graph, free


def to_native(record: Any, opset: int | None = None, *, layout: str = "source", input_shape: Any = None, dtype: Any = None) -> onnx.ModelProto:
    """An ONNX model of a layer record or a whole :class:`~layoutconv.graph.Graph`; it passes ``check_model(full_check=True)``.

    >>> model = layoutconv.to_onnx(layoutconv.read_model(keras_model))   # doctest: +SKIP
    >>> y = run(model, [x_channels_last])                                # doctest: +SKIP

    Parameters
    ----------
    record:
        A graph: inputs and outputs are named after the graph's, with a dynamic batch
        axis ``N`` and every size the graph leaves free (``None``) dynamic too.  A
        layer record alone: input ``x`` (``x0``, ``x1`` ... for a merge), channels
        first, output ``y``.
    opset:
        Default: the lowest that writes every record (17; 19 for circular padding; 22 for bfloat16).
    layout:
        ``"source"`` (default): inputs and outputs laid out as the source model had them
        (channels last for a Keras model), with ``Transpose`` nodes at the edges;
        ``"channels_first"``: the canonical layout everywhere.
    input_shape:
        A layer alone: its per-sample input shape, channels first (``None`` for a free
        size; a list of shapes for a merge).  By default the rank the record implies, or
        any rank when the ONNX form does not depend on it.
    dtype:
        The float dtype of a graph without weights (default float32).
    """
    if isinstance(record, Graph):
        return write_graph(record, opset, layout, dtype)
    if not isinstance(record, Record):
        raise fail(ConfigError, "onnx.to_native needs a layoutconv record", "a layer record or a Graph", f"{type(record).__name__}")
    _emitter(record)  # an unknown kind is refused before anything is built
    graph, free = _alone(record, input_shape)
    return write_graph(graph, opset, "channels_first", dtype, free)


# -- running -----------------------------------------------------------------------------------------


def run(model: Any, inputs: Any) -> Any:
    """Run an ONNX model (``ModelProto`` or path) with onnxruntime's CPU provider on one array or a list (one per input).

    Integer arrays fed to an int64 input are cast to int64.  Returns the output, or a
    tuple for several.
    """
    xs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    xs = [np.asarray(x) for x in xs]
    if any(x.dtype.name == "bfloat16" for x in xs):
        raise fail(
            UnsupportedError,
            "onnxruntime cannot run bfloat16 models on CPU",
            "float16, float32 or float64 inputs",
            "a bfloat16 input",
            "Cast a copy of the weights and inputs to float32 to check it.",
        )
    data = (model if isinstance(model, onnx.ModelProto) else base._load(model)).SerializeToString()
    try:
        session = ort.InferenceSession(data, base._session_options(), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise base._ort_error(
            exc,
            "onnxruntime cannot run this model on CPU",
            "onnxruntime's CPU provider lacks float64 kernels for Conv, AveragePool, GlobalAveragePool, Mean and several "
            "activations (docs/onnx.md); cast a copy to float32 to run it.",
            FileFormatError,
        ) from None
    specs = session.get_inputs()
    if len(xs) != len(specs):
        raise fail(ShapeError, "Wrong number of inputs", f"{len(specs)}: {[s.name for s in specs]}", f"{len(xs)} array(s)")
    feeds = {}
    for spec, x in zip(specs, xs):
        wanted = base._ORT_INPUT_DTYPES.get(spec.type, spec.type.replace("tensor(", "").replace(")", ""))
        if wanted == "int64" and x.dtype.kind in "iu":
            x = x.astype(np.int64)
        if x.dtype.name != wanted:
            raise fail(ConfigError, f"Input dtype does not match the model's input {spec.name!r}", wanted, x.dtype.name, f"Cast it: x.astype(np.{wanted}).")
        if spec.shape is not None and len(spec.shape) != x.ndim:
            raise fail(ShapeError, f"Input {spec.name!r} has the wrong rank", f"{len(spec.shape)} axes", f"shape {tuple(x.shape)}")
        feeds[spec.name] = x
    try:
        ys = session.run(None, feeds)
    except Exception as exc:
        raise base._ort_error(exc, f"onnxruntime failed on inputs of shapes {[tuple(x.shape) for x in xs]}", "Check the input shapes against the model's.", ShapeError) from None
    ys = [np.asarray(y) for y in ys]
    return ys[0] if len(ys) == 1 else tuple(ys)


for _kind in (*layers.LAYERS, Chain, Graph):
    registry.register(_kind, base.NAME, to_native=to_native, run=run)
