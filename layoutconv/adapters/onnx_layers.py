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
Dense           ``r == 2``: ``Gemm``; ``r >= 3``: ``Transpose`` (channels last) -> ``MatMul`` ->
                ``Add`` -> ``Transpose`` back.  The weight as the record holds it: a Keras kernel
                ``(in, out)`` (``transB=0``, ``MatMul`` on it), else ``(out, in)`` (``transB=1``,
                ``MatMul`` on its ``Transpose``): no copy of a big kernel is made to write it
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
import os
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
from ..recurrent import Bidirectional, Recurrent
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


#: Makes the initializer of a layer weight: ``store(requested_name, name, array) -> TensorProto`` (``requested_name``
#: is the name the emitter asked for, ``name`` the one given).  The default stores the bytes in the tensor
#: (:func:`onnx_adapter._tensor`); :mod:`layoutconv.adapters.onnx_external` writes them to an external data file.
Store = Callable[[str, str, np.ndarray], TensorProto]


class _Builder:
    """An ONNX graph under construction: nodes, initializers, and unique names."""

    def __init__(self, opset: int, dtype: np.dtype, reserved: set[str], store: Store | None = None) -> None:
        self.opset, self.dtype = opset, np.dtype(dtype)
        self.store: Store = store or (lambda requested, name, array: base._tensor(name, np.asarray(array)))
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
        """An initializer named ``name`` (a layer's weight), made by ``store``; a second call with the same bytes reuses it."""
        if name in self._arrays:
            old = self._arrays[name]
            if old is array or (old.dtype == array.dtype and old.shape == array.shape and old.tobytes() == array.tobytes()):
                return name
            raise fail(
                ConfigError,
                f"Two different weights would be stored as {name!r}",
                "one array per layer weight name",
                f"shapes {old.shape} and {array.shape}",
                "Rename one of the layers.",
            )
        requested = name
        if name in self.taken:
            name = self.name(name)
        self.taken.add(name)
        self._arrays[name] = array
        self.initializers[name] = self.store(requested, name, array)
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


def _conv_weight(b: _Builder, name: str, array: np.ndarray | None) -> str:
    """A convolution's kernel or bias stored straight from the record (no copy through a TensorProto); '' for no bias."""
    return "" if array is None else b.weight(name, array)


@emits(Conv, ConvTranspose)
def _conv(b: _Builder, conv: Conv | ConvTranspose, at: _At) -> None:
    nodes, inits = base.conv_parts(conv, b.opset, weights=False)
    names = {"x": at.inputs[0], "y": at.out, "W": _conv_weight(b, f"{at.layer}.weight", conv.kernel), "B": _conv_weight(b, f"{at.layer}.bias", conv.bias)}
    doc = next(n.doc_string for n in nodes if n.name == "conv")
    b.place(nodes, inits, names, at.edge, {"conv": at.edge}, {"conv": _conv_doc(conv, at.layer, doc)})


@emits(Chain)
def _chain(b: _Builder, chain: Chain, at: _At) -> None:
    """One convolution after the other; weights ``<layer>.<i>.weight`` as in a PyTorch ``nn.Sequential``."""
    x = at.inputs[0]
    last = len(chain.layers) - 1
    for i, conv in enumerate(chain.layers):
        out = at.out if i == last else b.name(f"{at.edge}/{i}")
        nodes, inits = base.conv_parts(conv, b.opset, weights=False)
        names = {"x": x, "y": out, "W": _conv_weight(b, f"{at.layer}.{i}.weight", conv.kernel), "B": _conv_weight(b, f"{at.layer}.{i}.bias", conv.bias)}
        doc = next(n.doc_string for n in nodes if n.name == "conv")
        main = at.edge if i == last else f"{at.edge}/{i}"
        b.place(nodes, inits, names, f"{at.edge}/{i}", {"conv": main}, {"conv": _conv_doc(conv, at.layer, doc)})
        x = out


@emits(layers.Dense)
def _dense(b: _Builder, d: layers.Dense, at: _At) -> None:
    rank = at.rank(d)
    # the weight in the order the record holds it: a Keras kernel (in, out) as it was read (a transposed view of
    # the record's (out, in)), anything else (out, in), as nn.Linear holds it; the nodes say which
    keras_order = abs(d.kernel.strides[0]) < abs(d.kernel.strides[1])
    w = b.weight(f"{at.layer}.weight", d.kernel.T if keras_order else d.kernel)
    bias = [b.weight(f"{at.layer}.bias", d.bias)] if d.bias is not None else []
    doc = _hint(layer=at.layer)
    if rank == 2:
        z = at.out if d.activation == "linear" else b.name(f"{at.edge}/linear")
        b.node("Gemm", [at.inputs[0], w, *bias], [z], at.edge, doc=doc, transB=0 if keras_order else 1)
        if d.activation != "linear":
            _activate(b, d.activation, z, at.out, at.edge)
        return
    # on a sequence or an image: the features are the last axis for MatMul, as Keras' Dense and nn.Linear see them
    x = b.transpose(at.inputs[0], to_last(rank), None, f"{at.edge}/channels_last")
    if keras_order:
        wt = w
    else:
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


@emits(layers.Scale)
def _scale(b: _Builder, layer: layers.Scale, at: _At) -> None:
    """``x * scale + offset`` (Keras ``Rescaling``; ``x + 3.0`` in a Keras 3 model): Mul, then Add."""
    scaled = b.name(f"{at.edge}/scaled")
    b.node("Mul", [at.inputs[0], b.scalar(f"{at.layer}.scale", layer.scale)], [scaled], f"{at.edge}/mul", doc=_hint(layer=at.layer))
    b.node("Add", [scaled, b.scalar(f"{at.layer}.offset", layer.offset)], [at.out], at.edge)


@emits(Recurrent, Bidirectional)
def _recurrent(b: _Builder, record: Any, at: _At) -> None:
    """An ONNX RNN/LSTM/GRU node (with its Transposes) as the recurrent adapter writes it, weights named after the layer."""
    from . import onnx_recurrent

    model = onnx_recurrent.to_native(record, opset=b.opset)
    g = model.graph
    names = {"x": at.inputs[0], "y": at.out}
    names.update({t.name: f"{at.layer}.{t.name}" for t in g.initializer if t.name in ("W", "R", "B")})
    b.place(list(g.node), list(g.initializer), names, at.edge)


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
    if isinstance(record, (Recurrent, Bidirectional)) and not record.return_sequences:
        return 2  # the last step only: (N, units)
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
    if any(math.prod(i.shape) > reference.MAX_ELEMENTS for i in graph.inputs):
        return None  # sizes a file declares are not trusted to allocate from (average pooling counts cells in an array)
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
            elif isinstance(r, (Recurrent, Bidirectional)):
                from . import onnx_recurrent

                need = max(need, onnx_recurrent.required_opset(r))
    return need


def _dims(name: str, shape: Sequence[int | None]) -> list[Any]:
    return ["N"] + [s if s is not None else f"{name}_{k}" for k, s in enumerate(shape, start=1)]


def write_graph(
    graph: Graph, opset: Any = None, layout: str = "source", dtype: Any = None, *, store: Store | None = None, check: bool = True,
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> onnx.ModelProto:
    """The ONNX model of ``graph`` (see :func:`to_native`).

    ``store`` makes each weight's initializer (default: the bytes inside the tensor; see :data:`Store`);
    ``check=False`` skips the in-memory ONNX checker, for a model whose weights are external data (checked
    by its path once written).  ``shapes``: every edge's per-sample shape (channels first) when the caller knows
    them (a streaming conversion), instead of :func:`static_shapes` running the reference on the whole graph.
    """
    if layout not in ("source", "channels_first"):
        raise fail(ConfigError, "Invalid value for argument `layout`", "'source' or 'channels_first'", f"layout={layout!r}")
    dt = _graph_dtype(graph, dtype)
    opset = base.choose_opset(required_opset(graph, dt), opset, "this graph")
    elem = helper.np_dtype_to_tensor_dtype(dt)
    shapes = static_shapes(graph) if shapes is None else shapes
    ranks: dict[str, int | None] = {i.name: len(i.shape) + 1 for i in graph.inputs}
    kinds = {i.name: i.kind for i in graph.inputs}
    for n in graph.nodes:
        ranks[n.name] = _out_rank(graph.layers[n.layer], [ranks[e] for e in n.inputs])
        kinds[n.name] = "float"
        if (ranks[n.name] or 0) > MAX_RANK:
            raise fail(UnsupportedError, f"Edge {n.name!r} has too many axes", f"at most {MAX_RANK}", f"rank {ranks[n.name]}")

    def moved(edge: str) -> bool:  # is this edge transposed at the model's boundary?
        return layout == "source" and graph.layout_of(edge) == "channels_last" and (ranks[edge] or 0) > 2

    edge_names = {i.name for i in graph.inputs} | {n.name for n in graph.nodes}
    if store is None:
        _fits_in_memory(graph)
    b = _Builder(opset, dt, edge_names, store)
    tensor_of: dict[str, str] = {}
    inputs = []
    for spec in graph.inputs:
        in_elem = TensorProto.INT64 if spec.kind == "int" else elem
        declared = spec.shape if layout == "source" or spec.layout != "channels_last" or len(spec.shape) < 2 else (spec.shape[-1], *spec.shape[:-1])
        inputs.append(helper.make_tensor_value_info(spec.name, in_elem, _dims(spec.name, declared)))
        tensor_of[spec.name] = spec.name
        if moved(spec.name):
            rank = ranks[spec.name] or 0
            tensor_of[spec.name] = b.name(f"{spec.name}/channels_first")
            b.node("Transpose", [spec.name], [tensor_of[spec.name]], f"{spec.name}/channels_first", doc=_hint(layout="channels_last"), perm=list(to_first(rank)))
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
            b.node("Transpose", [tensor_of[o]], [name], f"{o}/channels_last", doc=_hint(layout="channels_last"), perm=list(to_last(rank or 0)))
        elif tensor_of[o] != name:
            b.node("Identity", [tensor_of[o]], [name], f"{o}/output")
        if shapes is not None:
            cf = shapes[o]
            dims = _dims(o, (*cf[1:], cf[0]) if moved(o) else cf)
        else:
            dims = _dims(o, [None] * ((rank or 2) - 1))
        outputs.append(helper.make_tensor_value_info(name, elem, dims))
    onnx_graph = helper.make_graph(b.nodes, graph.name, inputs, outputs, list(b.initializers.values()), doc_string=f"layoutconv graph {graph.name!r}")
    model = base.checked_model(
        onnx_graph, opset, f"graph {graph.name!r}",
        "Pass a newer opset, or check that the graph runs in the reference pass on its input shapes.", check=check,
    )
    return model


def _fits_in_memory(graph: Graph) -> None:
    """Refuse a graph whose weights outgrow one protobuf message (2 GiB), before any is copied into one."""
    from .onnx_external import INLINE_LIMIT, weight_bytes

    total = weight_bytes(graph)
    if total > INLINE_LIMIT:
        raise fail(
            UnsupportedError,
            f"Graph {graph.name!r} has too many weight bytes for an ONNX model held in memory",
            f"at most {INLINE_LIMIT} bytes (protobuf cannot serialize a message of 2 GiB)",
            f"{total} bytes",
            "Write it to a file instead: layoutconv.save_model(graph, 'model.onnx') (layoutconv convert) stores the "
            "weights as external data beside it (model.onnx.data).",
        )


#: record kind -> its default per-sample input shape (channels first, ``None`` for a free size) when written alone
_ALONE_SHAPES: dict[type, Callable[[Any], tuple[int | None, ...]]] = {
    layers.Dense: lambda r: (r.in_channels,),
    layers.BatchNorm: lambda r: (r.in_channels, None),
    layers.LayerNorm: lambda r: (None,) * max(r.axes),
    layers.Embedding: lambda r: (None,),
    layers.Softmax: lambda r: (None,) * max(r.axis, 2),
    layers.Permute: lambda r: (None,) * len(r.dims),
    layers.Pool: lambda r: (None,) * (r.spatial_rank + 1),
    layers.Pad: lambda r: (None,) * (len(r.pads) + 1),
    layers.Crop: lambda r: (None,) * (len(r.crops) + 1),
    layers.Merge: lambda r: (None,) * max(r.axis, 2),
    Conv: lambda r: (r.in_channels, *(None,) * r.spatial_rank),
    ConvTranspose: lambda r: (r.in_channels, *(None,) * r.spatial_rank),
    Chain: lambda r: (r.in_channels, *(None,) * r.spatial_rank),
}  # anything else: (N, C, L)


def _alone(record: Record, input_shape: Any) -> Graph:
    """A one-node graph around ``record``, channels first: input ``x`` (``x0, x1`` for a merge), output ``y``."""
    default = next((f(record) for c, f in _ALONE_SHAPES.items() if isinstance(record, c)), (None, None))
    if isinstance(record, layers.Merge):
        shapes = [default, default] if input_shape is None else list(input_shape)
        names = [f"x{i}" for i in range(len(shapes))]
    else:
        shapes, names = [default if input_shape is None else input_shape], ["x"]
    try:
        shapes = [tuple(None if v is None else int(v) for v in s) for s in shapes]
    except (TypeError, ValueError):
        raise fail(
            ConfigError,
            "Invalid value for argument `input_shape`",
            "a per-sample shape, channels first, e.g. (3, None) (a list of them for a merge)",
            f"input_shape={input_shape!r}",
        ) from None
    kind = "int" if isinstance(record, layers.Embedding) else "float"
    ins = [Input(n, s, "channels_first" if len(s) >= 2 else "flat", kind) for n, s in zip(names, shapes)]
    return Graph({"layer": record}, ins, [Node("y", "layer", tuple(names), "channels_first")], ["y"], name=type(record).__name__.lower())


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
        size; a list of shapes for a merge).  By default free sizes at the rank the
        record implies (``(C,)`` for a Dense, ``(C, L)`` where nothing implies one).
    dtype:
        The float dtype of a graph without weights (default float32).
    """
    if isinstance(record, Graph):
        return write_graph(record, opset, layout, dtype)
    if not isinstance(record, Record):
        raise fail(ConfigError, "onnx.to_native needs a layoutconv record", "a layer record or a Graph", f"{type(record).__name__}")
    _emitter(record)  # an unknown kind is refused before anything is built
    return write_graph(_alone(record, input_shape), opset, "channels_first", dtype)


# -- running -----------------------------------------------------------------------------------------


def session(model: Any, options: Any = None) -> Any:
    """An onnxruntime CPU session for a ``ModelProto`` or a path; a file with external data is handed over by its path
    (checked first, :mod:`onnx_external`), so that no message of 2 GiB is built."""
    from . import onnx_external

    try:
        if isinstance(model, onnx.ModelProto):
            base._refuse_external_data(model)  # onnxruntime would look for it beside the working directory
            source: Any = model.SerializeToString()
        else:
            loaded = base._load(model, external="check")
            source = os.fspath(model) if onnx_external.has_external(loaded) else loaded.SerializeToString()
            del loaded
        return ort.InferenceSession(source, options or base._session_options(), providers=["CPUExecutionProvider"])
    except LayoutError:
        raise
    except Exception as exc:
        raise base._ort_error(
            exc,
            "onnxruntime cannot run this model on CPU",
            "onnxruntime's CPU provider lacks float64 kernels for Conv, AveragePool, GlobalAveragePool, Mean and several "
            "activations (docs/onnx.md); cast a copy to float32 to run it.",
            FileFormatError,
        ) from None


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
    sess = session(model)
    specs = sess.get_inputs()
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
        ys = sess.run(None, feeds)
    except Exception as exc:
        raise base._ort_error(exc, f"onnxruntime failed on inputs of shapes {[tuple(x.shape) for x in xs]}", "Check the input shapes against the model's.", ShapeError) from None
    ys = [np.asarray(y) for y in ys]
    return ys[0] if len(ys) == 1 else tuple(ys)



# ---------------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------------


class _View(NamedTuple):
    """An ONNX tensor as a graph edge: ``tensor == canonical(edge).transpose(perm)``."""

    edge: str
    perm: tuple[int, ...]
    tensor: str
    origin: onnx.NodeProto | None = None  # the Transpose that made this view (names a Permute layer made of it)


OpReader = Callable[["_Reader", onnx.NodeProto], None]
#: ONNX op -> the function reading one node of it into the graph.
OP_READERS: dict[str, OpReader] = {}


def reads(*ops: str) -> Callable[[OpReader], OpReader]:
    def register(fn: OpReader) -> OpReader:
        for op in ops:
            if op in OP_READERS:
                raise RuntimeError(f"two ONNX readers for {op}")
            OP_READERS[op] = fn
        return fn

    return register


#: The first op of every activation recipe: such a node is tried as an activation before its own reader.
_ACTIVATION_STARTS = frozenset(steps[0].op for recipes in base.ACTIVATION_RECIPES.values() for steps in recipes)
#: Weight names as the writer (and PyTorch) gives them: ``<layer>.weight``, ``<layer>.<i>.weight`` ...
_WEIGHT_NAME = re.compile(r"^(.+?)\.(?:\d+\.)?(?:weight|bias|running_mean|running_var|W|R|B)$")
#: ONNX's "to the end" in Slice: anything at or above this is read as no crop at the end.
_SLICE_END = (1 << 31) - 1


def _f32(value: float) -> float:
    """A float32 attribute (epsilon) as the shortest decimal that rounds to it: 1e-3 stays 1e-3."""
    return float(np.format_float_scientific(np.float32(value), unique=True))


class _Reader:
    """One walk over an ONNX graph's nodes, in order, building a :class:`Graph` (see the module docs)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.g = base._Graph(model)
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in model.graph.node:
            for name in dict.fromkeys(n.input):
                if name:
                    self.consumers.setdefault(name, []).append(n)
        self.output_names = [o.name for o in model.graph.output]
        self.graph_outputs = set(self.output_names)
        self.views: dict[str, _View] = {}
        self.ranks: dict[str, int] = {}
        self.layers: dict[str, Record] = {}
        self.nodes: list[Node] = []
        self.inputs: list[Input] = []
        self.edges: set[str] = set()
        self.done: set[int] = set()
        self.deferred: dict[str, onnx.NodeProto] = {}
        self.permuted: dict[tuple[str, tuple[int, ...]], str] = {}
        self.pool_rules: dict[str, str] = {}
        self.defer = True  # a foreign Pad before Convs waits: they take it as their padding

    # -- names -------------------------------------------------------------------------------------
    def _unique(self, name: str, taken: Any) -> str:
        out, i = name, 1
        while out in taken:
            out = f"{name}_{i}"
            i += 1
        return out

    def _layer_name(self, node: onnx.NodeProto, weights: Sequence[str]) -> str:
        hinted = _hints(node).get("layer")
        if hinted:
            return hinted
        for w in weights:
            m = _WEIGHT_NAME.match(w or "")
            if m:
                return m.group(1)
        return node.name or (node.output[0] if node.output else "") or node.op_type.lower()

    def add(
        self, record: Record, node: onnx.NodeProto, inputs: Sequence[str], final: str, perm: Sequence[int], rank: int,
        weights: Sequence[str] = (), edge: str | None = None,
    ) -> str:
        """A graph node computing ``record`` on ``inputs`` (edges); the ONNX tensor ``final`` is its output transposed by ``perm``."""
        if rank > MAX_RANK:
            raise fail(UnsupportedError, f"{node.op_type} node {node.name!r} makes a tensor of too many axes", f"at most {MAX_RANK}", f"rank {rank}")
        layer = self._layer_name(node, weights)
        existing = self.layers.get(layer)
        if existing is not None and not (type(existing) is type(record) and existing == record):
            layer = self._unique(layer, self.layers)
        self.layers[layer] = record
        if edge is None:
            edge = final if final in self.graph_outputs else (node.name or final)
        edge = self._unique(edge, self.edges)
        self.edges.add(edge)
        self.ranks[edge] = rank
        self.nodes.append(Node(edge, layer, tuple(inputs), "channels_first" if rank > 2 else "flat"))
        self.views[final] = _View(edge, tuple(perm), final)
        return edge

    # -- tensors -----------------------------------------------------------------------------------
    def constant(self, name: str, max_elements: int | None = None, depth: int = 0) -> tuple[np.ndarray, str] | None:
        """The value of a constant tensor and the initializer it comes from (through Transpose/Identity), or None."""
        if not name or depth > 8:
            return None
        value = self.g.constant(name, max_elements)
        if value is not None:
            return value, name
        node = self.g.producers.get(name)
        if node is None or node.op_type not in ("Transpose", "Identity") or node.domain not in ("", "ai.onnx"):
            return None
        inner = self.constant(node.input[0], max_elements, depth + 1)
        if inner is None:
            return None
        if node.op_type == "Identity":
            return inner
        perm = base._attrs(node).get("perm")
        try:
            return np.transpose(inner[0], perm), inner[1]
        except (ValueError, TypeError) as exc:
            raise fail(FileFormatError, f"Transpose node {node.name!r} does not fit its constant", "a permutation of its axes", f"{exc}") from None

    def weight(self, name: str, node: onnx.NodeProto, role: str, ndim: int | None = None) -> tuple[np.ndarray, str]:
        found = self.constant(name)
        if found is None:
            producer = self.g.producers.get(name)
            if producer is not None:
                kind, source = "node", f"computed by {producer.op_type} node {producer.name!r}"
            elif name in self.g.inputs:
                kind, source = "input", "a graph input (fed at run time)"
            else:
                kind, source = "missing", "defined nowhere in the graph (missing initializer)"
            cls, remedy = base._WEIGHT_SOURCES[kind]
            raise fail(cls, f"{node.op_type} node {node.name!r}: {role} {name!r} is not stored in the model", "an initializer or a Constant node", source, remedy)
        value, source = found
        if value.dtype.name not in base.DTYPE_OPSET:
            raise fail(UnsupportedError, f"{node.op_type} node {node.name!r}: {role} {name!r} is not a float tensor", f"one of {sorted(base.DTYPE_OPSET)}", f"{value.dtype}", "Quantized layers are not supported.")
        if ndim is not None and value.ndim != ndim:
            raise fail(UnsupportedError, f"{node.op_type} node {node.name!r}: {role} {name!r} has the wrong rank", f"{ndim} axes", f"shape {value.shape}")
        return np.ascontiguousarray(value), source

    def view(self, name: str, node: onnx.NodeProto) -> _View:
        if name in self.views:
            return self.views[name]
        if name in self.deferred:
            self._read(self.deferred.pop(name), defer=False)
            return self.views[name]
        label = f"{node.op_type} node {node.name!r}"
        if self.constant(name) is not None:
            raise fail(
                UnsupportedError,
                f"{label} reads the constant {name!r} where layoutconv expects a tensor computed from the model's inputs",
                "constants only as weights (a bias after MatMul, a BatchNorm's statistics ...)",
                f"a constant operand of {node.op_type}",
                "Fold the constant into a layer's weights before exporting.",
            )
        raise fail(FileFormatError, f"{label} reads tensor {name!r}, which no earlier node computes", "nodes in topological order", f"an unknown tensor {name!r}")

    def canonical(self, name: str, node: onnx.NodeProto) -> str:
        """The edge holding tensor ``name`` channels first (a Permute layer when it is a transposition of one)."""
        v = self.view(name, node)
        return v.edge if _identity(v.perm) else self.permute(v.edge, v.perm, v.tensor, v.origin)

    def permute(self, edge: str, perm: tuple[int, ...], hint: str, origin: onnx.NodeProto | None = None) -> str:
        """A Permute layer (channels first) giving ``canonical(edge).transpose(perm)``, named after the Transpose that asked for it."""
        key = (edge, perm)
        if key in self.permuted:
            return self.permuted[key]
        if perm[0] != 0:
            raise fail(UnsupportedError, f"Tensor {hint!r} moves the batch axis", "transpositions that keep axis 0 in place", f"perm {list(perm)}")
        node = origin if origin is not None else onnx.NodeProto(name=f"{hint}/permute", op_type="Transpose")
        made = self.add(layers.Permute(perm[1:], "channels_first"), node, [edge], f"\0permute:{hint}", tuple(range(len(perm))), len(perm), edge=node.name or f"{hint}/permute")
        self.permuted[key] = made
        return made

    def channels_last(self, name: str, node: onnx.NodeProto) -> _View:
        """A view of tensor ``name`` whose last axis is the channel axis of its edge (a Permute layer if needed)."""
        v = self.view(name, node)
        rank = len(v.perm)
        if v.perm[-1] == 1 or rank < 2:
            return v
        edge = self.permute(v.edge, compose(v.perm, to_first(rank)), v.tensor, v.origin)
        return _View(edge, to_last(rank), v.tensor)

    def sole_consumer(self, tensor: str) -> onnx.NodeProto | None:
        users = self.consumers.get(tensor, [])
        if len(users) != 1 or tensor in self.graph_outputs or id(users[0]) in self.done:
            return None
        return users[0]

    def alias(self, node: onnx.NodeProto, source: str) -> None:
        v = self.view(source, node)
        self.views[node.output[0]] = _View(v.edge, v.perm, node.output[0])

    # -- activations -------------------------------------------------------------------------------
    def _match(self, steps: tuple[Any, ...], z: str, first: onnx.NodeProto | None) -> list[onnx.NodeProto] | None:
        tensors: dict[Any, str] = {"z": z}
        matched: list[onnx.NodeProto] = []
        for i, step in enumerate(steps):
            anchor = tensors[next(ref for ref in step.inputs if not isinstance(ref, float))]
            candidates = [first] if i == 0 and first is not None else self.consumers.get(anchor, [])
            found = next(
                (
                    n for n in candidates
                    if n.op_type == step.op and n.domain in ("", "ai.onnx") and len(n.output) > 0
                    and (n is first or id(n) not in self.done) and not any(n is m for m in matched)
                    and base._inputs_match(self.g, n, step, tensors) and base._attrs_match(n, step, self.g.opset)
                ),
                None,
            )
            if found is None:
                return None
            matched.append(found)
            tensors[i] = found.output[0]
        return matched

    def activation(self, z: str, first: onnx.NodeProto | None = None, owner: onnx.NodeProto | None = None) -> tuple[str, list[onnx.NodeProto]] | None:
        """The longest activation recipe applied to ``z`` whose inner tensors nothing else reads.

        ``first``: the recipe must start with this node (a standalone activation).
        ``owner``: fused into that Conv/Dense node, so ``z`` itself must have no other reader;
        in a file layoutconv wrote, the activation's nodes are named ``<owner>/...``.
        """
        if owner is not None and z in self.graph_outputs:
            return None
        best: tuple[str, list[onnx.NodeProto]] | None = None
        for name, recipes in base.ACTIVATION_RECIPES.items():
            for steps in recipes:
                matched = self._match(steps, z, first)
                if matched is None or (best is not None and len(matched) <= len(best[1])):
                    continue
                inner = ([z] if owner is not None else []) + [m.output[0] for m in matched[:-1]]
                others = [n for t in inner for n in self.consumers.get(t, []) if not any(n is m for m in matched)]
                if others or self.graph_outputs & set(inner):
                    continue
                if owner is not None and _hints(owner) and not all(m.name.startswith(f"{owner.name}/") for m in matched):
                    continue  # layoutconv wrote this activation as a layer of its own
                best = (name, matched)
        return best

    def fused(self, owner: onnx.NodeProto, z: str) -> tuple[str, str]:
        """``(activation, output tensor)`` after ``z``, the output of ``owner``; the activation's nodes are consumed."""
        found = self.activation(z, owner=owner)
        if found is None:
            return "linear", z
        for m in found[1]:
            self.done.add(id(m))
        return found[0], found[1][-1].output[0]

    # -- the walk ----------------------------------------------------------------------------------
    def _read_inputs(self) -> None:
        for vi in self.model.graph.input:
            if vi.name in self.g.initializers:
                continue
            label = f"Graph input {vi.name!r}"
            if not vi.type.HasField("tensor_type"):
                raise fail(UnsupportedError, f"{label} is not a tensor", "tensor inputs", f"a {vi.type.WhichOneof('value')}")
            tt = vi.type.tensor_type
            if tt.elem_type in _FLOAT_TYPES:
                kind = "float"
            elif tt.elem_type in _INT_TYPES:
                kind = "int"
            else:
                raise fail(UnsupportedError, f"{label} has an unsupported element type", "float or integer data", f"element type {tt.elem_type}")
            if not tt.HasField("shape") or not 1 <= len(tt.shape.dim) <= MAX_RANK:
                raise fail(UnsupportedError, f"{label} has no usable rank", f"a declared shape of 1 to {MAX_RANK} axes", "no shape" if not tt.HasField("shape") else f"{len(tt.shape.dim)} axes")
            dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim]
            rank = len(dims)
            users = self.consumers.get(vi.name, [])
            last = (
                rank > 2 and kind == "float" and bool(users) and vi.name not in self.graph_outputs
                and all(u.op_type == "Transpose" and tuple(base._attrs(u).get("perm", ())) == to_first(rank) and self._boundary(u) for u in users)
            )
            layout = "channels_last" if last else "channels_first" if rank > 2 else "flat"
            self.inputs.append(Input(vi.name, tuple(dims[1:]), layout, kind))
            self.edges.add(vi.name)
            self.ranks[vi.name] = rank
            self.views[vi.name] = _View(vi.name, to_last(rank) if last else tuple(range(rank)), vi.name)

    def _boundary(self, transpose: onnx.NodeProto) -> bool:
        """Whether a Transpose at an input or output moves channels for the source's layout.

        layoutconv notes it on the node; in other files every such Transpose counts (for a
        rank-3 tensor the swap is its own inverse, so the perm alone cannot say).
        """
        if self.model.producer_name == "layoutconv":
            return _hints(transpose).get("layout") == "channels_last"
        return True

    def _read(self, node: onnx.NodeProto, defer: bool = True) -> None:
        self.done.add(id(node))
        label = f"{node.op_type} node {node.name!r}"
        if node.domain not in ("", "ai.onnx"):
            raise fail(UnsupportedError, f"{label} is in domain {node.domain!r}", "operators of the default ONNX domain", f"domain {node.domain!r}")
        outer, self.defer = self.defer, defer
        try:
            if node.op_type in _ACTIVATION_STARTS and node.input and self.constant(node.input[0]) is None and self._standalone_activation(node):
                return
            reader = OP_READERS.get(node.op_type)
            if reader is None:
                raise fail(
                    UnsupportedError,
                    f"ONNX op {node.op_type} ({label}) cannot be read into a layoutconv graph",
                    f"one of the ops layoutconv reads: {', '.join(READ_OPS)}",
                    f"op {node.op_type}",
                )
            reader(self, node)
        except LayoutError as exc:
            if repr(node.name) in str(exc) or not node.name:
                raise
            raise type(exc)(f"{label}: {exc}") from None
        finally:
            self.defer = outer

    def _standalone_activation(self, node: onnx.NodeProto) -> bool:
        z = node.input[0]
        found = self.activation(z, first=node)
        if found is None:
            return False
        name, matched = found
        for m in matched:
            self.done.add(id(m))
        v = self.view(z, node)
        self.add(layers.Activation(name), node, [v.edge], matched[-1].output[0], v.perm, len(v.perm))
        return True

    def _outputs(self) -> tuple[list[str], dict[str, str]]:
        """The output edges, and the layout of those the file gives channels last."""
        outputs, layouts = [], {}
        inputs = {i.name: i.layout for i in self.inputs}
        for name in self.output_names:
            v = self.view(name, onnx.NodeProto(op_type="output", name=name))
            rank = len(v.perm)
            natural = "channels_first" if rank > 2 else "flat"
            producer = self.g.producers.get(name)
            if _identity(v.perm):
                edge, layout = v.edge, natural
            elif rank > 2 and v.perm == to_last(rank) and producer is not None and producer.op_type == "Transpose" and self._boundary(producer):
                edge, layout = v.edge, "channels_last"
            else:
                edge, layout = self.permute(v.edge, v.perm, name, v.origin), natural
            held = inputs.get(edge, layouts.get(edge, layout))
            if held != layout and not (rank <= 2 and {held, layout} <= {"flat", "channels_first"}):
                # the same edge leaves in two layouts (or an input leaves in another): a copy of its own
                copy = onnx.NodeProto(name=f"{name}/output", op_type="Identity")
                edge = self.add(layers.Identity("output"), copy, [edge], f"\0{name}", tuple(range(rank)), rank)
            if edge not in inputs:
                layouts[edge] = layout
            outputs.append(edge)
        return outputs, layouts

    def _data_nodes(self) -> list[onnx.NodeProto]:
        """The nodes that compute data from the inputs and lead to an output, in order.

        Nodes that compute constants or shapes only (PyTorch's exporter writes a reflect
        conv's pads as ``ConstantOfShape -> Concat -> Reshape -> Slice ...``) and dead nodes
        are left to whoever reads their values (a Conv folding its Pad); none is executed here.
        """
        dynamic = set(self.g.inputs)
        for n in self.model.graph.node:
            if n.op_type not in ("Shape", "Size") and any(i in dynamic for i in n.input if i):
                dynamic.update(o for o in n.output if o)  # a shape's arithmetic is read by its user, as a constant or not at all
        needed, stack = set(), list(self.output_names)
        while stack:
            t = stack.pop()
            n = self.g.producers.get(t)
            if n is None or id(n) in needed:
                continue
            needed.add(id(n))
            stack.extend(i for i in n.input if i)
        return [n for n in self.model.graph.node if id(n) in needed and any(o in dynamic for o in n.output)]

    def read(self) -> Graph:
        self._read_inputs()
        for node in self._data_nodes():
            if id(node) not in self.done:
                self._read(node)
        outputs, layouts = self._outputs()
        nodes = [n._replace(layout=layouts.get(n.name, n.layout)) for n in self.nodes]
        used = {n.layer for n in nodes}
        graph = Graph({k: v for k, v in self.layers.items() if k in used}, self.inputs, nodes, outputs, name=self.model.graph.name or "onnx")
        return self._pool_rules(graph)

    def _pool_rules(self, graph: Graph) -> Graph:
        """Pools written with a 'same' rule at a fixed size read back with the rule, when it gives the same pads there."""
        if not self.pool_rules:
            return graph
        shapes = static_shapes(graph)
        if shapes is None:
            return graph
        renamed = dict(graph.layers)
        for layer, rule in self.pool_rules.items():
            pool = graph.layers[layer]
            sizes = [shapes[n.inputs[0]][1:] for n in graph.nodes if n.layer == layer]
            try:
                named = pool.replace(padding=rule)
            except LayoutError:
                continue
            if sizes and all(named.pads(s) == pool.pads(s) for s in sizes):
                renamed[layer] = named
        return Graph(renamed, graph.inputs, graph.nodes, graph.outputs, name=graph.name)


def read_model(model_or_path: Any) -> Graph:
    """An ONNX model (``ModelProto`` or ``.onnx`` path) as a :class:`~layoutconv.graph.Graph`, without running any of it.

    Inputs keep their names and shapes; one fed straight into a ``Transpose`` to channels
    first (a Keras twin) is read as channels last, and so is an output that ends with
    the opposite ``Transpose``.  Every layer becomes a record (weights bit for bit);
    an op layoutconv does not read raises :class:`~layoutconv.UnsupportedError` naming it.
    """
    model = base._load(model_or_path)
    base._refuse_external_data(model)
    return _Reader(model).read()


# -- the op readers ----------------------------------------------------------------------------------


def _unused_extra_outputs(r: _Reader, node: onnx.NodeProto) -> None:
    for out in node.output[1:]:
        if out and (r.consumers.get(out) or out in r.graph_outputs):
            raise fail(UnsupportedError, f"{node.op_type} node {node.name!r}: its output {out!r} is used", "only the first output used (inference)", f"output {out!r} read")


@reads("Constant")
def _read_constant(r: _Reader, node: onnx.NodeProto) -> None:
    """Constants are read by the nodes that use them."""


@reads("Conv", "ConvTranspose")
def _read_conv(r: _Reader, node: onnx.NodeProto) -> None:
    data = node.input[0] if node.input else ""
    pad = r.g.producers.get(data)
    record = None
    if node.op_type == "Conv" and pad is not None and data in r.deferred:
        try:  # a foreign Pad before a Conv (PyTorch's reflect padding ...) is the conv's padding
            record = base.read_conv(r.g, node, fold_pad=True, activation=False)
            data = pad.input[0]
        except UnsupportedError:
            record = None
    if record is None:
        record = base.read_conv(r.g, node, fold_pad=False, activation=False)
    x = r.canonical(data, node)
    weights = [node.input[1]]
    activation, final = r.fused(node, node.output[0])
    record = record.replace(activation=activation)
    chain = re.match(r"^(.+)\.0\.weight$", node.input[1])
    if chain and isinstance(record, Conv):
        parts, last, out = [record], node, final
        while True:
            nxt = r.sole_consumer(out)
            if nxt is None or nxt.op_type != "Conv" or len(nxt.input) < 2 or nxt.input[1] != f"{chain.group(1)}.{len(parts)}.weight":
                break
            part = base.read_conv(r.g, nxt, fold_pad=False, activation=False)
            r.done.add(id(nxt))
            act, out = r.fused(nxt, nxt.output[0])
            parts.append(part.replace(activation=act))
            last = nxt
        if len(parts) > 1:
            r.add(Chain(parts), last, [x], out, tuple(range(parts[0].spatial_rank + 2)), parts[0].spatial_rank + 2, weights)
            return
    rank = record.spatial_rank + 2
    r.add(record, node, [x], final, tuple(range(rank)), rank, weights)


@reads("RNN", "LSTM", "GRU")
def _read_recurrent(r: _Reader, node: onnx.NodeProto) -> None:
    """A recurrent node as layoutconv writes one: ``Transpose`` to time first, the node, then the nodes (named
    ``<layer>/...``) that bring its output back to ``(N, C, T)`` or ``(N, C)``, read as one record."""
    from . import onnx_recurrent

    label = f"{node.op_type} node {node.name!r}"
    x = r.view(node.input[0], node)
    if x.perm != (2, 0, 1):
        raise fail(UnsupportedError, f"{label} does not read a channels-first sequence made time first",
                   "X = Transpose(perm=[2, 0, 1]) of an (N, F, T) tensor (how layoutconv writes it)", f"a view with perm {x.perm}")
    record = onnx_recurrent.from_native(r.model, node=node.name)
    prefix = node.name.rsplit("/", 1)[0] + "/" if "/" in node.name else None
    current = {o for o in node.output if o}
    final = None
    while prefix is not None:
        step = [n for name in current for n in r.consumers.get(name, []) if n.name.startswith(prefix) and id(n) not in r.done]
        if not step:
            break
        for n in step:
            r.done.add(id(n))
            current |= {o for o in n.output if o}
            outside = any(not c.name.startswith(prefix) for o in n.output for c in r.consumers.get(o, [])) or any(o in r.graph_outputs for o in n.output)
            if outside:
                final = n.output[0]
    if final is None:
        raise fail(UnsupportedError, f"{label}: its output is not brought back to (N, C, T) the way layoutconv writes it",
                   "the output nodes layoutconv's writer puts after a recurrent node", "another arrangement (a foreign export)",
                   "Read the layer alone with layoutconv.adapters.onnx_recurrent.from_native(model, node=...).")
    rank = 3 if record.return_sequences else 2
    weights = [name for name in node.input[1:4] if name]
    r.add(record, node, [x.edge], final, tuple(range(rank)), rank, weights, edge=final)


@reads("Gemm")
def _read_gemm(r: _Reader, node: onnx.NodeProto) -> None:
    a = base._attrs(node)
    if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or (len(node.input) > 2 and node.input[2] and a.get("beta", 1.0) != 1.0):
        raise fail(UnsupportedError, f"Gemm node {node.name!r} scales or transposes its input", "alpha=1, beta=1, transA=0", f"{a}")
    w, w_name = r.weight(node.input[1], node, "weight B", ndim=2)
    kernel = w if a.get("transB", 0) else np.ascontiguousarray(w.T)
    bias, names = None, [w_name]
    if len(node.input) > 2 and node.input[2]:
        c, c_name = r.weight(node.input[2], node, "bias C")
        if c.size != kernel.shape[0] or c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1):
            raise fail(UnsupportedError, f"Gemm node {node.name!r}: bias C is not one value per output", f"shape ({kernel.shape[0]},)", f"shape {c.shape}")
        bias, names = c.reshape(-1), [w_name, c_name]
    x = r.canonical(node.input[0], node)
    if r.ranks[x] != 2:
        raise fail(UnsupportedError, f"Gemm node {node.name!r} reads a tensor of rank {r.ranks[x]}", "rank 2 (N, features)", f"rank {r.ranks[x]}")
    activation, final = r.fused(node, node.output[0])
    r.add(layers.Dense(kernel, bias, activation=activation), node, [x], final, (0, 1), 2, names)


@reads("MatMul")
def _read_matmul(r: _Reader, node: onnx.NodeProto) -> None:
    if r.constant(node.input[1]) is None:
        raise fail(UnsupportedError, f"MatMul node {node.name!r} multiplies two computed tensors", "a constant weight as second input (a Dense layer)", f"{node.input[1]!r} computed at run time")
    w, w_name = r.weight(node.input[1], node, "weight", ndim=2)
    kernel = np.ascontiguousarray(w.T)
    v = r.channels_last(node.input[0], node)
    out, bias, names = node.output[0], None, [w_name]
    add = r.sole_consumer(out)
    if add is not None and add.op_type == "Add" and len(add.input) == 2:
        other = add.input[1] if add.input[0] == out else add.input[0]
        found = r.constant(other)
        if found is not None and found[0].size == kernel.shape[0] and found[0].shape[-1:] == (kernel.shape[0],) and found[0].dtype.name in base.DTYPE_OPSET:
            bias, names = np.ascontiguousarray(found[0].reshape(-1)), [w_name, found[1]]
            r.done.add(id(add))
            out = add.output[0]
    activation, final = r.fused(node, out)
    r.add(layers.Dense(kernel, bias, activation=activation), node, [v.edge], final, v.perm, len(v.perm), names)


#: ONNX op -> (Merge op, number of inputs it takes: 2 or None for any)
_MERGES = {"Add": ("add", 2), "Sum": ("add", None), "Sub": ("subtract", 2), "Mul": ("multiply", 2), "Mean": ("average", None), "Max": ("maximum", None), "Min": ("minimum", None)}


def _same_views(r: _Reader, node: onnx.NodeProto, names: Sequence[str]) -> tuple[list[str], tuple[int, ...]]:
    """The edges of ``names`` and their common perm (each made channels first when they differ)."""
    views = [r.view(t, node) for t in names]
    if len({v.perm for v in views}) == 1:
        return [v.edge for v in views], views[0].perm
    edges = [r.canonical(t, node) for t in names]
    return edges, tuple(range(r.ranks[edges[0]]))


@reads(*_MERGES)
def _read_merge(r: _Reader, node: onnx.NodeProto) -> None:
    op, arity = _MERGES[node.op_type]
    names = [t for t in node.input if t]
    if len(names) < 2 or (arity is not None and len(names) != arity):
        raise fail(UnsupportedError, f"{node.op_type} node {node.name!r} has {len(names)} input(s)", "2 or more" if arity is None else f"{arity}", f"{len(names)}")
    edges, perm = _same_views(r, node, names)
    ranks = {r.ranks[e] for e in edges}
    if len(ranks) != 1:
        raise fail(UnsupportedError, f"{node.op_type} node {node.name!r} broadcasts tensors of different ranks", "inputs of one shape", f"ranks {sorted(ranks)}")
    r.add(layers.Merge(op), node, edges, node.output[0], perm, len(perm))


@reads("Concat")
def _read_concat(r: _Reader, node: onnx.NodeProto) -> None:
    names = [t for t in node.input if t]
    edges, perm = _same_views(r, node, names)
    rank = len(perm)
    axis = base._attrs(node).get("axis")
    if not isinstance(axis, int) or not -rank <= axis < rank or perm[axis % rank] == 0:
        raise fail(UnsupportedError, f"Concat node {node.name!r} does not join along a sample axis", f"an axis in 1..{rank - 1}", f"axis={axis!r}")
    if len(names) < 2:
        r.alias(node, names[0])
        return
    r.add(layers.Merge("concatenate", perm[axis % rank]), node, edges, node.output[0], perm, rank)


@reads("BatchNormalization")
def _read_batch_norm(r: _Reader, node: onnx.NodeProto) -> None:
    a = base._attrs(node)
    if a.get("training_mode", 0) or a.get("spatial", 1) != 1 or len(node.input) != 5:
        raise fail(UnsupportedError, f"BatchNormalization node {node.name!r} is not an inference batch norm", "training_mode=0, spatial=1, 5 inputs", f"{a}, {len(node.input)} inputs")
    _unused_extra_outputs(r, node)
    (scale, s_name), (offset, o_name), (mean, m_name), (var, v_name) = (
        r.weight(t, node, role, ndim=1) for t, role in zip(node.input[1:], ("scale", "B", "input_mean", "input_var"))
    )
    hints = _hints(node)
    x = r.canonical(node.input[0], node)
    record = layers.BatchNorm(
        mean, var,
        None if hints.get("scale") == "none" and np.all(scale == 1) else scale,
        None if hints.get("offset") == "none" and np.all(offset == 0) else offset,
        epsilon=_f32(a.get("epsilon", 1e-5)),
    )
    rank = r.ranks[x]
    r.add(record, node, [x], node.output[0], tuple(range(rank)), rank, [s_name, o_name, m_name, v_name])


@reads("LayerNormalization")
def _read_layer_norm(r: _Reader, node: onnx.NodeProto) -> None:
    _unused_extra_outputs(r, node)
    a = base._attrs(node)
    v = r.view(node.input[0], node)
    rank = len(v.perm)
    axis = a.get("axis", -1)
    if not isinstance(axis, int) or not -rank <= axis < rank:
        raise fail(FileFormatError, f"LayerNormalization node {node.name!r}: axis out of range", f"an axis of a rank-{rank} tensor", f"axis={axis!r}")
    axis %= rank
    normalised = v.perm[axis:]
    if 0 in normalised:
        raise fail(UnsupportedError, f"LayerNormalization node {node.name!r} normalises over the batch axis", "normalisation within each sample", f"axis={axis}")
    order = [int(i) for i in np.argsort(normalised)]  # the scale's axes in channels-first order
    arrays, names = [], []
    for i, role in ((1, "scale"), (2, "B")):
        if len(node.input) > i and node.input[i]:
            value, name = r.weight(node.input[i], node, role)
            if value.ndim != rank - axis:
                raise fail(UnsupportedError, f"LayerNormalization node {node.name!r}: {role} does not have the normalised shape", f"{rank - axis} axes", f"shape {value.shape}")
            arrays.append(np.ascontiguousarray(value.transpose(order)))
            names.append(name)
        else:
            arrays.append(None)
    scale, offset = arrays
    if _hints(node).get("scale") == "none" and scale is not None and np.all(scale == 1):
        scale = None
    record = layers.LayerNorm(scale, offset, axes=tuple(sorted(normalised)), epsilon=_f32(a.get("epsilon", 1e-5)))
    r.add(record, node, [v.edge], node.output[0], v.perm, rank, names)


@reads("MaxPool", "AveragePool")
def _read_pool(r: _Reader, node: onnx.NodeProto) -> None:
    _unused_extra_outputs(r, node)
    x = r.canonical(node.input[0], node)
    rank = r.ranks[x]
    if not 3 <= rank <= 5:
        raise fail(UnsupportedError, f"{node.op_type} node {node.name!r} pools a rank-{rank} tensor", "1 to 3 spatial axes", f"rank {rank}")
    a = base._attrs(node)
    spatial = rank - 2
    kernel = base._spatial(node, a, "kernel_shape", [], spatial)
    stride = base._spatial(node, a, "strides", [1] * spatial, spatial)
    if any(d != 1 for d in base._spatial(node, a, "dilations", [1] * spatial, spatial)) or a.get("ceil_mode", 0):
        raise fail(UnsupportedError, f"{node.op_type} node {node.name!r} uses dilations or ceil_mode", "dilations of 1, ceil_mode=0", f"{a}")
    _, padding = base._own_padding(node, a, spatial)
    if isinstance(padding, tuple) and not any(v for pair in padding for v in pair):
        padding = "valid"
    kind = "max" if node.op_type == "MaxPool" else "avg"
    record = layers.Pool(kind, kernel, stride, padding=padding, count_include_pad=bool(a.get("count_include_pad", 0)), rank=spatial)
    edge = r.add(record, node, [x], node.output[0], tuple(range(rank)), rank)
    rule = _hints(node).get("padding")
    if rule in ("same_upper", "same_lower") and isinstance(padding, tuple):
        r.pool_rules[next(n.layer for n in r.nodes if n.name == edge)] = rule


@reads("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax")
def _read_global_pool(r: _Reader, node: onnx.NodeProto) -> None:
    kind = "max" if "Max" in node.op_type else "avg"
    v = r.view(node.input[0], node)
    rank = len(v.perm)
    spatial = set(range(2, rank))
    if rank < 3:
        raise fail(UnsupportedError, f"{node.op_type} node {node.name!r} pools a rank-{rank} tensor", "a tensor with spatial axes", f"rank {rank}")
    a = base._attrs(node)
    if node.op_type.startswith("Reduce"):
        axes = a.get("axes")
        if len(node.input) > 1 and node.input[1]:
            found = r.constant(node.input[1], max_elements=MAX_RANK)
            axes = None if found is None else [int(i) for i in found[0].ravel()]
        if not axes or {v.perm[i % rank] for i in axes if -rank <= i < rank} != spatial or len(axes) != len(spatial):
            raise fail(UnsupportedError, f"{node.op_type} node {node.name!r} does not reduce exactly the spatial axes", f"axes {sorted(spatial)} of the channels-first tensor", f"axes={axes}")
        keep = bool(a.get("keepdims", 1))
        perm = v.perm if keep else tuple(p for p in v.perm if p < 2)
        if not keep and perm != (0, 1):
            raise fail(UnsupportedError, f"{node.op_type} node {node.name!r} leaves (C, N)", "(N, C)", f"perm {v.perm}")
        r.add(layers.GlobalPool(kind, keepdims=keep), node, [v.edge], node.output[0], perm, rank if keep else 2)
        return
    x = r.canonical(node.input[0], node)
    out, keep = node.output[0], True
    nxt = r.sole_consumer(out)
    if nxt is not None and nxt.op_type == "Flatten" and base._attrs(nxt).get("axis", 1) == 1:
        keep = False
    elif nxt is not None and nxt.op_type == "Squeeze":
        axes = base._attrs(nxt).get("axes")
        if len(nxt.input) > 1 and nxt.input[1]:
            found = r.constant(nxt.input[1], max_elements=MAX_RANK)
            axes = None if found is None else [int(i) for i in found[0].ravel()]
        keep = not (axes and {i % rank for i in axes} == spatial and len(axes) == len(spatial))
    if not keep:
        assert nxt is not None
        r.done.add(id(nxt))
        out = nxt.output[0]
    r.add(layers.GlobalPool(kind, keepdims=keep), node, [x], out, tuple(range(rank if keep else 2)), rank if keep else 2)


@reads("Flatten")
def _read_flatten(r: _Reader, node: onnx.NodeProto) -> None:
    if base._attrs(node).get("axis", 1) != 1:
        raise fail(UnsupportedError, f"Flatten node {node.name!r} does not keep the batch axis alone", "axis=1", f"axis={base._attrs(node).get('axis')}")
    v = r.view(node.input[0], node)
    rank = len(v.perm)
    if rank <= 2:
        r.alias(node, node.input[0])
        return
    if _identity(v.perm) or v.perm == to_last(rank):
        order, edge = ("channels_first" if _identity(v.perm) else "channels_last"), v.edge
    else:
        order, edge = "channels_first", r.canonical(node.input[0], node)
    r.add(layers.Flatten(order), node, [edge], node.output[0], (0, 1), 2)


@reads("Reshape")
def _read_reshape(r: _Reader, node: onnx.NodeProto) -> None:
    found = r.constant(node.input[1] if len(node.input) > 1 else "", max_elements=MAX_RANK + 1)
    if found is None:
        raise fail(
            UnsupportedError,
            f"Reshape node {node.name!r} computes its target shape at run time",
            "a constant shape",
            f"shape from {node.input[1] if len(node.input) > 1 else 'nowhere'!r}",
            "Export with a constant shape (torch.flatten, or onnxsim to fold the Shape arithmetic).",
        )
    target = [int(v) for v in found[0].ravel()]
    allowzero = base._attrs(node).get("allowzero", 0)
    rest = target[1:]
    keeps_batch = (target[:1] == [0] and not allowzero) or (target[:1] == [-1] and -1 not in rest)
    if not keeps_batch or not rest or 0 in rest:
        raise fail(
            UnsupportedError,
            f"Reshape node {node.name!r} does not keep the batch axis",
            "a shape [0, ...] (batch copied) or [-1, sizes...] without zeros after the batch",
            f"shape {target}",
            "A model exported for one batch size fixes it; export with a dynamic batch axis.",
        )
    v = r.view(node.input[0], node)
    rank = len(v.perm)
    out_rank = len(rest) + 1
    if rank > 2 and v.perm == to_last(rank) and not _identity(v.perm):
        r.add(layers.Reshape(rest, "channels_last"), node, [v.edge], node.output[0], to_last(out_rank), out_rank)
        return
    edge = v.edge if _identity(v.perm) else r.canonical(node.input[0], node)
    r.add(layers.Reshape(rest, "channels_first"), node, [edge], node.output[0], tuple(range(out_rank)), out_rank)


@reads("Transpose")
def _read_transpose(r: _Reader, node: onnx.NodeProto) -> None:
    if r.constant(node.input[0]) is not None:
        return  # a weight's transposition: read by the node that uses it
    v = r.view(node.input[0], node)
    rank = len(v.perm)
    perm = base._attrs(node).get("perm", list(range(rank))[::-1])
    if not isinstance(perm, list) or sorted(perm) != list(range(rank)):
        raise fail(FileFormatError, f"Transpose node {node.name!r}: perm is not a permutation of the axes", f"a permutation of 0..{rank - 1}", f"perm={perm!r}")
    r.views[node.output[0]] = _View(v.edge, compose(v.perm, perm), node.output[0], node)


@reads("Identity", "Dropout")
def _read_identity(r: _Reader, node: onnx.NodeProto) -> None:
    if r.constant(node.input[0]) is not None:
        return
    _unused_extra_outputs(r, node)
    if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
        mode = r.constant(node.input[2])
        if mode is None or np.any(mode[0]):
            raise fail(UnsupportedError, f"Dropout node {node.name!r} may run in training mode", "training_mode absent or false", f"training_mode from {node.input[2]!r}")
    hints = _hints(node)
    if node.op_type == "Identity" and hints:
        v = r.view(node.input[0], node)
        r.add(layers.Identity(hints.get("was", "")), node, [v.edge], node.output[0], v.perm, len(v.perm))
        return
    r.alias(node, node.input[0])


@reads("Cast")
def _read_cast(r: _Reader, node: onnx.NodeProto) -> None:
    if r.constant(node.input[0]) is not None:
        return
    to = base._attrs(node).get("to")
    users = r.consumers.get(node.output[0], [])
    if to in _INT_TYPES and users and all(u.op_type == "Gather" and len(u.input) > 1 and u.input[1] == node.output[0] for u in users):
        r.alias(node, node.input[0])  # ids cast to integers for Gather: the Embedding reads integral floats as ids
        return
    raise fail(UnsupportedError, f"Cast node {node.name!r} changes the element type of data", "a Cast of Embedding ids to integers", f"to={to!r}")


@reads("Gather")
def _read_gather(r: _Reader, node: onnx.NodeProto) -> None:
    if base._attrs(node).get("axis", 0) != 0:
        raise fail(UnsupportedError, f"Gather node {node.name!r} gathers along another axis than the rows", "axis=0 (an Embedding lookup)", f"axis={base._attrs(node).get('axis')}")
    weights, name = r.weight(node.input[0], node, "table", ndim=2)
    ids = r.canonical(node.input[1], node)
    rank = r.ranks[ids] + 1
    r.add(layers.Embedding(weights), node, [ids], node.output[0], to_last(rank), rank, [name])


@reads("Pad")
def _read_pad(r: _Reader, node: onnx.NodeProto) -> None:
    users = r.consumers.get(node.output[0], [])
    if r.defer and not _hints(node) and users and node.output[0] not in r.graph_outputs and all(u.op_type == "Conv" for u in users):
        r.deferred[node.output[0]] = node  # read only if a Conv cannot take it as its padding
        return
    a = base._attrs(node)
    if a.get("mode", "constant") != "constant":
        raise fail(UnsupportedError, f"Pad node {node.name!r} pads in mode {a.get('mode')!r} before something else than a Conv", "mode constant", f"mode={a.get('mode')!r}")
    x = r.canonical(node.input[0], node)
    rank = r.ranks[x]
    if not 3 <= rank <= 5:
        raise fail(UnsupportedError, f"Pad node {node.name!r} pads a rank-{rank} tensor", "1 to 3 spatial axes", f"rank {rank}")
    if r.g.opset < 11:
        pads, value, axes = np.array(a.get("pads", [])), a.get("value", 0.0), None
    else:
        found = r.constant(node.input[1] if len(node.input) > 1 else "", max_elements=2 * MAX_RANK)
        if found is not None:
            pads = found[0]
        else:  # pads computed from constants (PyTorch's exporter): the pads interpreter, never onnxruntime
            program = base._PadsProgram(r.g, node, 1, rank - 2)
            if program.reads_length:
                raise fail(UnsupportedError, f"Pad node {node.name!r} computes its pads from the input's size", "pads that do not depend on the input size", "pads read from Shape(...)")
            pads = program(1)
        value = 0.0
        if len(node.input) > 2 and node.input[2]:
            v = r.constant(node.input[2], max_elements=1)
            if v is None:
                raise fail(UnsupportedError, f"Pad node {node.name!r} computes its value at run time", "a constant value", f"{node.input[2]!r}")
            value = float(v[0].ravel()[0]) if v[0].size else 0.0
        axes = None
        if len(node.input) > 3 and node.input[3]:
            found_axes = r.constant(node.input[3], max_elements=MAX_RANK)
            if found_axes is None:
                raise fail(UnsupportedError, f"Pad node {node.name!r}: axes computed at run time", "constant axes", f"{node.input[3]!r}")
            axes = found_axes[0]
    pairs = base._spatial_pads(node, pads, axes, rank - 2)
    r.add(layers.Pad(pairs, value), node, [x], node.output[0], tuple(range(rank)), rank)


@reads("Slice")
def _read_slice(r: _Reader, node: onnx.NodeProto) -> None:
    x = r.canonical(node.input[0], node)
    rank = r.ranks[x]
    values = []
    for i, default in ((1, None), (2, None), (3, list(range(rank))), (4, None)):
        if len(node.input) > i and node.input[i]:
            found = r.constant(node.input[i], max_elements=MAX_RANK)
            if found is None:
                raise fail(UnsupportedError, f"Slice node {node.name!r} computes its bounds at run time", "constant starts, ends, axes and steps", f"{node.input[i]!r}")
            values.append([int(v) for v in found[0].ravel()])
        else:
            values.append(default)
    starts, ends, axes, steps = values
    if starts is None or ends is None:
        raise fail(FileFormatError, f"Slice node {node.name!r} lacks starts or ends", "Slice(data, starts, ends, ...)", f"inputs {list(node.input)}")
    steps = steps or [1] * len(starts)
    crops = {}
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = axis % rank if -rank <= axis < rank else -1
        if axis < 2 or step != 1 or start < 0 or (0 <= end < _SLICE_END):
            raise fail(
                UnsupportedError,
                f"Slice node {node.name!r} is not a crop of the spatial axes",
                "starts >= 0, ends < 0 (counted from the end) or 'to the end', step 1, on axes 2 and up",
                f"start {start}, end {end}, axis {axis}, step {step}",
            )
        crops[axis] = (start, 0 if end >= _SLICE_END else -end)
    if not 3 <= rank <= 5:
        raise fail(UnsupportedError, f"Slice node {node.name!r} crops a rank-{rank} tensor", "1 to 3 spatial axes", f"rank {rank}")
    pairs = tuple(crops.get(a, (0, 0)) for a in range(2, rank))
    r.add(layers.Crop(pairs), node, [x], node.output[0], tuple(range(rank)), rank)


@reads("Softmax")
def _read_softmax(r: _Reader, node: onnx.NodeProto) -> None:
    v = r.view(node.input[0], node)
    rank = len(v.perm)
    axis = base._attrs(node).get("axis", -1 if r.g.opset >= 13 else 1)
    if not isinstance(axis, int) or not -rank <= axis < rank:
        raise fail(FileFormatError, f"Softmax node {node.name!r}: axis out of range", f"an axis of a rank-{rank} tensor", f"axis={axis!r}")
    axis %= rank
    if r.g.opset < 13 and axis != rank - 1:
        raise fail(UnsupportedError, f"Softmax node {node.name!r} (opset {r.g.opset}) normalises over several axes", "opset 13 or later, or the last axis", f"axis={axis} of rank {rank}")
    if v.perm[axis] == 0:
        raise fail(UnsupportedError, f"Softmax node {node.name!r} normalises over the batch", "an axis within each sample", f"axis={axis}")
    r.add(layers.Softmax(v.perm[axis]), node, [v.edge], node.output[0], v.perm, rank)


def _unknown_activation(r: _Reader, node: onnx.NodeProto) -> None:
    alike = [f"{base._recipe_text(steps)} ({name})" for name, recipes in base.ACTIVATION_RECIPES.items() for steps in recipes if steps[0].op == node.op_type]
    raise fail(
        UnsupportedError,
        f"{node.op_type} node {node.name!r} is an activation layoutconv cannot record",
        " or ".join(alike) if alike else f"one of the activations layoutconv records: {', '.join(base.ACTIVATION_RECIPES)}",
        base._node_text(r.g, node),
    )


for _op in sorted(base.ACTIVATION_OPS - set(OP_READERS)):
    OP_READERS[_op] = _unknown_activation

_RECIPE_OPS = {step.op for recipes in base.ACTIVATION_RECIPES.values() for steps in recipes for step in steps}
READ_OPS = tuple(sorted((set(OP_READERS) - base.ACTIVATION_OPS - {"Constant"}) | (base.ACTIVATION_OPS & _RECIPE_OPS)))


for _kind in (*layers.LAYERS, Chain, Graph):
    registry.register(_kind, base.NAME, to_native=to_native, run=run)
