"""Keras (3 and tf_keras) for the layer records and whole graphs: a :class:`~layoutconv.graph.Graph` as a functional model.

:func:`graph_to_native` (what ``layoutconv.to_keras(graph, flavor=...)`` calls)
builds a ``keras.Model`` whose layers carry the graph's layer names
(sanitised: characters other than letters, digits, ``_ . -`` become ``_``) and
whose weights are set bit for bit (each weighted layer is read back and
compared byte by byte).

**Layouts.**  Inside the model every tensor is channels last, whatever the
source: TensorFlow's CPU kernels have no channels-first convolution (the
single-layer adapters run such layers under XLA only), and a channels-last
model is the one a Keras user expects.  At the edges, ``layout`` decides:

- ``"source"`` (default): inputs and outputs as the source framework holds
  them.  A PyTorch model's twin takes ``(N, C, *spatial)`` and a
  ``Permute`` layer (``<input>.channels_last``) moves the channels last behind
  each such input; outputs held channels first are moved back
  (``<output>.output``).  ``model(x)`` is then a drop-in replacement
  for ``torch_model(x)``;
- ``"channels_last"``: Keras' own layout, no transposition at the edges;
- ``"channels_first"``: the canonical layout of the records.

Records become Keras layers as follows (``internal`` = the channels-last tensor):

===================  =============================================================================
record               Keras
===================  =============================================================================
Conv, ConvTranspose  the convolution adapters' layers (:func:`_keras_common.specs`), with
Chain                ``ZeroPadding`` in front / ``Cropping`` behind where Keras cannot spell the pads
Dense                ``Dense`` (kernel transposed to ``(in, out)``)
BatchNorm            ``BatchNormalization(axis=-1, epsilon)`` with the moving statistics
LayerNorm            ``LayerNormalization(axis=...)``, axes mapped to channels last
Embedding            ``Embedding``
Activation/Softmax   ``Activation(name)`` (per flavour, :data:`layoutconv.activations.KERAS_NAMES`) / ``Softmax``;
                     a hard sigmoid or hard_silu the flavour has no function for is built from
                     ``Rescaling(scale, offset)``, ``ReLU(max_value=1)`` (and ``Multiply`` with the input),
                     never substituted by the flavour's other ``hard_sigmoid``
Identity             nothing
Pool                 ``Max/AveragePooling*D``: ``'valid'``; ``'same'`` where Keras' own pads are the
                     record's and Keras ignores them as the record does; zero pads in front of an
                     average that counts them; for max pooling with explicit pads, the edge cells
                     copied outwards (``Cropping`` + ``Concatenate``, exact, see below)
GlobalPool           ``GlobalMax/AveragePooling*D(keepdims)``
Flatten/Reshape/     ``Flatten``/``Reshape``/``Permute``; with ``order="channels_first"`` a
Permute              ``Permute`` first moves the channels back in front, so elements are listed
                     in PyTorch's order (the classic Flatten -> Dense bug of Keras <-> PyTorch ports)
Pad / Crop           ``ZeroPadding*D`` (value 0 only) / ``Cropping*D``
Merge                ``Add``, ``Subtract``, ``Multiply``, ``Average``, ``Maximum``, ``Minimum``,
                     ``Concatenate(axis)`` with the axis mapped to channels last
===================  =============================================================================

**Max pooling with explicit pads** (PyTorch's ``MaxPool2d(3, 2, padding=1)``)
pads with ``-inf``, and Keras has no such padding layer (``ZeroPadding`` pads
zeros, which win every window whose real cells are all negative).  Padding
instead with copies of the edge cell is exact: a window that reaches ``j``
cells into the begin pad starts at ``-j`` and ends at ``k - 1 - j >= k - 1 - b >= 0``
(a pad ``b`` is smaller than the window ``k``), so it also holds the real
edge cell whose copies it sees, and its maximum is unchanged; the same holds
at the end and, axis by axis, in 2-D and 3-D.  The copies are made with
``Cropping`` (the edge cell) and ``Concatenate`` (``b`` copies, the input,
``e`` copies), which needs the input's size: graphs read from PyTorch have it.
An average pooling that does not count explicit pads has no such construction
and is refused, unless the pads are those of Keras' ``'same'``.

Per-record converters (``to_keras(layers.Dense(...))``) build a one-layer
model of this kind; ``input_shape`` (channels first, without the batch axis)
fixes its input, and ``data_format`` its layout.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import numpy as np

from .. import activations, frameworks, layers, registry
from ..recurrent import Bidirectional, Recurrent
from ..chain import Chain
from ..conv import Conv
from ..errors import ConfigError, LayoutError, ShapeError, UnsupportedError, fail
from ..graph import Graph, Input, Node
from ..transpose import ConvTranspose
from . import _keras_common as common

#: what ``layout=`` accepts
LAYOUTS = ("source", "channels_last", "channels_first")

_MERGE_CLASSES = {
    "add": "Add", "subtract": "Subtract", "multiply": "Multiply", "average": "Average", "maximum": "Maximum",
    "minimum": "Minimum", "concatenate": "Concatenate",
}


def sanitise(name: str) -> str:
    """A graph name as a Keras layer name: letters, digits, ``_ . -`` kept, anything else ``_``."""
    out = re.sub(r"[^A-Za-z0-9_.\-]", "_", str(name)) or "layer"
    return out if out[0].isalnum() else "l" + out


# -- axis bookkeeping ----------------------------------------------------------------------------------


def to_last(rank: int) -> tuple[int, ...]:
    """The transpose taking ``(N, C, *spatial)`` to ``(N, *spatial, C)`` (batch included)."""
    return (0,) + tuple(range(2, rank)) + (1,)


def to_first(rank: int) -> tuple[int, ...]:
    """The transpose taking ``(N, *spatial, C)`` to ``(N, C, *spatial)``."""
    return (0, rank - 1) + tuple(range(1, rank - 1))


def compose(*perms: Sequence[int]) -> tuple[int, ...]:
    """One transpose doing ``x.transpose(p1).transpose(p2)...``."""
    out = tuple(range(len(perms[0])))
    for p in perms:
        out = tuple(out[i] for i in p)
    return out


def keras_axis(axis: int, rank: int) -> int:
    """The axis of the channels-last tensor holding canonical (channels-first) ``axis`` of a rank-``rank`` tensor."""
    if rank < 3:
        return axis
    return rank - 1 if axis == 1 else axis - 1


# -- building ------------------------------------------------------------------------------------------


class Builder:
    """Creates the Keras layers of one model: unique sanitised names, shared layers reused, weights set once and checked."""

    def __init__(self, flavour: common.Flavour, dtype: str) -> None:
        self.flavour = flavour
        self.keras = flavour.keras
        self.dtype = dtype
        self._names: set[str] = set()
        self._made: dict[tuple[str, ...], Any] = {}
        self._weights: list[tuple[Any, list[np.ndarray]]] = []
        self._set: set[int] = set()

    def name(self, wanted: str) -> str:
        base = sanitise(wanted)
        name, i = base, 1
        while name in self._names:
            name = f"{base}_{i}"
            i += 1
        self._names.add(name)
        return name

    def make(self, key: str, class_name: str, *args: Any, **options: Any) -> Any:
        """The layer called ``key`` (created once: a graph layer used by two nodes is one Keras layer).

        Only a request with the same class and arguments gets the same layer back;
        any other gets a layer of its own (named ``key_1`` ...).
        """
        ident = (key, class_name, repr(args), repr(sorted(options.items())))
        if ident not in self._made:
            cls = getattr(self.keras.layers, class_name)
            self._made[ident] = cls(*args, **options, dtype=self.dtype, name=self.name(key))
        return self._made[ident]

    def spatial_layer(self, key: str, what: str, pairs: Sequence[tuple[int, int]]) -> Any:
        """A ``ZeroPadding*D`` or ``Cropping*D`` for ``(begin, end)`` pairs, channels last."""
        rank = len(pairs)
        cls = getattr(self.keras.layers, f"{what}{rank}D")
        amounts = tuple(pairs[0]) if rank == 1 else tuple(tuple(p) for p in pairs)
        extra = {"data_format": "channels_last"} if common._takes_data_format(cls) else {}
        return self.make(key, f"{what}{rank}D", amounts, **extra)

    def permute(self, key: str, x: Any, perm: Sequence[int]) -> Any:
        """``x.transpose(perm)`` (batch fixed) as a ``Permute`` layer; nothing for the identity."""
        perm = tuple(perm)
        if perm == tuple(range(len(perm))):
            return x
        assert perm[0] == 0
        return self.make(key, "Permute", perm[1:])(x)

    def set_weights(self, layer: Any, weights: Sequence[np.ndarray]) -> None:
        if id(layer) in self._set:
            return
        weights = [np.ascontiguousarray(w) for w in weights]
        layer.set_weights(weights)
        self._set.add(id(layer))
        self._weights.append((layer, weights))

    def check(self) -> None:
        """Every weight read back has the bytes written (the reload check of safetensors' converter)."""
        for layer, weights in self._weights:
            back = [self.flavour.to_numpy(v) for v in layer.weights]
            same = len(back) == len(weights) and all(
                a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes() for a, b in zip(back, weights)
            )
            if not same:
                raise fail(
                    UnsupportedError,
                    f"{self.flavour.name} did not keep layer {layer.name!r}'s weights bit-exact",
                    f"arrays {[(w.shape, w.dtype.name) for w in weights]} stored unchanged",
                    f"{[(b.shape, b.dtype.name) for b in back]}",
                )


def _static(x: Any) -> tuple[int, ...] | None:
    """The spatial sizes of a channels-last Keras tensor, or None when one is unknown."""
    sizes = tuple(x.shape[1:-1])
    return None if any(n is None for n in sizes) else tuple(int(n) for n in sizes)


Build = Callable[[Builder, Any, str, str, list], Any]

#: record kind -> function(builder, record, layer name, node name, input tensors) -> output tensor
BUILDERS: dict[type, Build] = {}


def builds(*kinds: type) -> Callable[[Build], Build]:
    def register(fn: Build) -> Build:
        for kind in kinds:
            if kind in BUILDERS:
                raise RuntimeError(f"two Keras builders for {kind.__name__}")
            BUILDERS[kind] = fn
        return fn

    return register


@builds(Conv, ConvTranspose, Chain)
def _conv(b: Builder, record: Any, layer: str, node: str, xs: list) -> Any:
    (x,) = xs
    plan = common.specs(b.flavour, record, _static(x))
    for i, spec in enumerate(plan):
        key = layer if len(plan) == 1 else f"{layer}.{i}"
        if any(p or q for p, q in spec.pads):
            x = b.spatial_layer(f"{node}.pad" if len(plan) == 1 else f"{node}.{i}.pad", "ZeroPadding", spec.pads)(x)
        made = b.make(key, spec.kind.classes[spec.rank], **spec.options, data_format="channels_last")
        x = made(x)
        b.set_weights(made, spec.weights)
        if any(p or q for p, q in spec.crops):
            x = b.spatial_layer(f"{node}.crop" if len(plan) == 1 else f"{node}.{i}.crop", "Cropping", spec.crops)(x)
    return x


#: activations a flavour has no function for, built from layers it has: (scale, offset) of a
#: ``Rescaling``, then ``ReLU(max_value=1)``, then (``True``) a ``Multiply`` with the input
_BUILT_ACTIVATIONS: dict[str, tuple[float, float, bool]] = {
    "hard_sigmoid_keras2": (0.2, 0.5, False),  # clip(0.2 x + 0.5, 0, 1): Keras 3 has no such function
    "hard_sigmoid_keras3": (1 / 6, 0.5, False),  # clip(x / 6 + 0.5, 0, 1): tf_keras's hard_sigmoid is the other one
    "hard_silu": (1 / 6, 0.5, True),  # x * clip(x / 6 + 0.5, 0, 1): tf_keras has no hard_silu
}


def _has(b: Builder, activation: str) -> bool:
    return activation in activations.KERAS_NAMES[b.flavour.name].values()


def _apply_activation(b: Builder, activation: str, key: str, x: Any) -> Any:
    """``activation`` applied to ``x``: an ``Activation`` layer, or the construction of :data:`_BUILT_ACTIVATIONS`."""
    if _has(b, activation) or activation not in _BUILT_ACTIVATIONS:
        return b.make(key, "Activation", common.keras_activation(b.flavour, layers.Activation(activation)))(x)
    scale, offset, times_input = _BUILT_ACTIVATIONS[activation]
    y = b.make(f"{key}.affine", "Rescaling", scale, offset)(x)
    y = b.make(f"{key}.clip" if times_input else key, "ReLU", max_value=1.0)(y)
    return b.make(key, "Multiply")([x, y]) if times_input else y


@builds(layers.Dense)
def _dense(b: Builder, record: layers.Dense, layer: str, node: str, xs: list) -> Any:
    fused = record.activation if _has(b, record.activation) else "linear"
    made = b.make(
        layer, "Dense", record.out_channels, activation=common.keras_activation(b.flavour, record.replace(activation=fused)),
        use_bias=record.bias is not None, kernel_initializer="zeros",
    )
    y = made(xs[0])
    b.set_weights(made, [record.kernel.T] + ([record.bias] if record.bias is not None else []))
    return y if fused == record.activation else _apply_activation(b, record.activation, f"{layer}.activation", y)


@builds(layers.BatchNorm)
def _batch_norm(b: Builder, record: layers.BatchNorm, layer: str, node: str, xs: list) -> Any:
    made = b.make(layer, "BatchNormalization", axis=-1, epsilon=record.epsilon, center=record.offset is not None, scale=record.scale is not None)
    y = made(xs[0], training=False)
    arrays = [a for a in (record.scale, record.offset) if a is not None] + [record.mean, record.variance]
    b.set_weights(made, arrays)
    return y


@builds(layers.LayerNorm)
def _layer_norm(b: Builder, record: layers.LayerNorm, layer: str, node: str, xs: list) -> Any:
    (x,) = xs
    rank = len(x.shape)
    if max(record.axes) >= rank:
        raise fail(ShapeError, "The LayerNorm's axes do not fit its input", f"axes below {rank}", f"axes {record.axes}")
    mapped = {a: keras_axis(a, rank) for a in record.axes}
    order = sorted(record.axes, key=lambda a: mapped[a])  # Keras keeps gamma in its own (sorted) axis order
    perm = [record.axes.index(a) for a in order]
    axis = [mapped[a] for a in order]
    made = b.make(
        layer, "LayerNormalization", axis=axis if len(axis) > 1 else axis[0], epsilon=record.epsilon,
        center=record.offset is not None, scale=record.scale is not None,
    )
    y = made(x)
    b.set_weights(made, [a.transpose(perm) for a in (record.scale, record.offset) if a is not None])
    return y


@builds(layers.Embedding)
def _embedding(b: Builder, record: layers.Embedding, layer: str, node: str, xs: list) -> Any:
    vocabulary, dimension = record.weights.shape
    made = b.make(layer, "Embedding", int(vocabulary), int(dimension), embeddings_initializer="zeros")
    y = made(xs[0])
    b.set_weights(made, [record.weights])
    return y


@builds(layers.Activation)
def _activation(b: Builder, record: layers.Activation, layer: str, node: str, xs: list) -> Any:
    return _apply_activation(b, record.activation, layer, xs[0])


@builds(layers.Softmax)
def _softmax(b: Builder, record: layers.Softmax, layer: str, node: str, xs: list) -> Any:
    (x,) = xs
    return b.make(layer, "Softmax", axis=keras_axis(record.axis, len(x.shape)))(x)


@builds(layers.Identity)
def _identity(b: Builder, record: layers.Identity, layer: str, node: str, xs: list) -> Any:
    return xs[0]


def _copy_edges(b: Builder, node: str, x: Any, pads: Sequence[tuple[int, int]], sizes: Sequence[int]) -> Any:
    """``x`` padded by copies of its edge cells on each spatial axis (exact for max pooling: module documentation)."""
    rank = len(pads)
    for axis, ((begin, end), n) in enumerate(zip(pads, sizes)):
        if not (begin or end):
            continue
        parts = []
        if begin:
            crops = [(0, 0)] * rank
            crops[axis] = (0, n - 1)
            first = b.spatial_layer(f"{node}.first{axis}", "Cropping", crops)(x)
            parts += [first] * begin
        parts.append(x)
        if end:
            crops = [(0, 0)] * rank
            crops[axis] = (n - 1, 0)
            last = b.spatial_layer(f"{node}.last{axis}", "Cropping", crops)(x)
            parts += [last] * end
        x = b.make(f"{node}.edges{axis}", "Concatenate", axis=1 + axis)(parts)
    return x


@builds(layers.Pool)
def _pool(b: Builder, record: layers.Pool, layer: str, node: str, xs: list) -> Any:
    (x,) = xs
    rank = record.spatial_rank
    cls = f"{'Max' if record.kind == 'max' else 'Average'}Pooling{rank}D"
    options = dict(pool_size=record.pool_size, strides=record.stride, data_format="channels_last")
    if record.padding == "valid":
        return b.make(layer, cls, padding="valid", **options)(x)
    if record.padding == "same_upper" and not record.count_include_pad:
        return b.make(layer, cls, padding="same", **options)(x)
    sizes = _static(x)
    if sizes is None:
        raise fail(
            UnsupportedError,
            f"Keras pooling cannot pad by {record.padding!r} for every input size",
            "an input whose spatial sizes are known (a graph read from PyTorch has them)",
            f"input shape {tuple(x.shape)}",
        )
    pads = record.pads(sizes)
    if not any(p or q for p, q in pads):
        return b.make(layer, cls, padding="valid", **options)(x)
    same = layers.Pool(record.kind, record.pool_size, record.stride, padding="same_upper", rank=rank).pads(sizes)
    if pads == same and not record.count_include_pad:  # Keras 'same' pads exactly these cells, and ignores them
        return b.make(layer, cls, padding="same", **options)(x)
    if record.kind == "avg":
        if not record.count_include_pad:
            raise fail(
                UnsupportedError,
                "Keras average pooling cannot leave explicit pads out of the divisor",
                f"count_include_pad=True, or the pads Keras' 'same' makes at this size ({same})",
                f"pads {pads} with count_include_pad=False",
                "Convert to PyTorch or ONNX instead, which can.",
            )
        x = b.spatial_layer(f"{node}.pad", "ZeroPadding", pads)(x)
        return b.make(layer, cls, padding="valid", **options)(x)
    x = _copy_edges(b, node, x, pads, sizes)
    return b.make(layer, cls, padding="valid", **options)(x)


@builds(layers.GlobalPool)
def _global_pool(b: Builder, record: layers.GlobalPool, layer: str, node: str, xs: list) -> Any:
    (x,) = xs
    rank = len(x.shape) - 2
    if rank not in (1, 2, 3):
        raise fail(ShapeError, "Global pooling needs spatial axes", "an input (N, C, *spatial) with 1 to 3 spatial axes", f"shape {tuple(x.shape)}")
    cls = f"Global{'Max' if record.kind == 'max' else 'Average'}Pooling{rank}D"
    return b.make(layer, cls, keepdims=record.keepdims, data_format="channels_last")(x)


@builds(layers.Flatten)
def _flatten(b: Builder, record: layers.Flatten, layer: str, node: str, xs: list) -> Any:
    (x,) = xs
    rank = len(x.shape)
    if record.order == "channels_first" and rank > 2:
        x = b.permute(f"{node}.channels_first", x, to_first(rank))
    return b.make(layer, "Flatten")(x)


@builds(layers.Reshape)
def _reshape(b: Builder, record: layers.Reshape, layer: str, node: str, xs: list) -> Any:
    (x,) = xs
    if record.order == "channels_last":
        return b.make(layer, "Reshape", record.shape)(x)
    rank = len(x.shape)
    if rank > 2:
        x = b.permute(f"{node}.channels_first", x, to_first(rank))
    y = b.make(layer, "Reshape", record.shape)(x)
    out = len(record.shape) + 1
    return b.permute(f"{node}.channels_last", y, to_last(out)) if out > 2 else y


@builds(layers.Permute)
def _permute(b: Builder, record: layers.Permute, layer: str, node: str, xs: list) -> Any:
    (x,) = xs
    rank = len(x.shape)
    if len(record.dims) + 1 != rank:
        raise fail(ShapeError, "Input does not fit the Permute layer", f"{len(record.dims)} axes after the batch", f"shape {tuple(x.shape)}")
    perm = (0,) + record.dims
    if record.order == "channels_first":
        perm = compose(to_first(rank), perm, to_last(rank))
    return b.permute(layer, x, perm)


@builds(layers.Pad)
def _pad(b: Builder, record: layers.Pad, layer: str, node: str, xs: list) -> Any:
    if record.value != 0:
        raise fail(
            UnsupportedError,
            "Keras pads with zeros only",
            "Pad(value=0)",
            f"value={record.value!r}",
            "Convert to PyTorch or ONNX instead, which pad with any constant.",
        )
    return b.spatial_layer(layer, "ZeroPadding", record.pads)(xs[0])


@builds(layers.Crop)
def _crop(b: Builder, record: layers.Crop, layer: str, node: str, xs: list) -> Any:
    return b.spatial_layer(layer, "Cropping", record.crops)(xs[0])


@builds(layers.Merge)
def _merge(b: Builder, record: layers.Merge, layer: str, node: str, xs: list) -> Any:
    if record.op == "concatenate":
        return b.make(layer, "Concatenate", axis=keras_axis(record.axis, len(xs[0].shape)))(list(xs))
    return b.make(layer, _MERGE_CLASSES[record.op])(list(xs))


# -- whole graphs --------------------------------------------------------------------------------------


@builds(Recurrent, Bidirectional)
def _recurrent(b: Builder, record: Any, layer: str, node: str, xs: list) -> Any:
    """A recurrent layer as the recurrent adapter writes it, re-made under the graph's layer name."""
    from . import keras_recurrent

    key = ("recurrent", layer)
    made = b._made.get(key)
    if made is None:
        built = keras_recurrent.to_native(b.flavour, record)  # checks what it wrote against the record's Keras form
        config = built.get_config()
        config["name"] = b.name(layer)
        made = type(built).from_config(config)
        b._made[key] = made
        y = made(xs[0])
        b.set_weights(made, [b.flavour.to_numpy(v) for v in built.weights])
        return y
    return made(xs[0])


def _dtype(graph: Graph) -> str:
    found = {r.dtype.name for r in graph.layers.values() if getattr(r, "dtype", None) is not None}
    if len(found) > 1:
        raise fail(
            UnsupportedError,
            f"Graph {graph.name!r} mixes weight dtypes",
            "one float dtype for every layer (a Keras model computes in one)",
            f"dtypes {sorted(found)}",
            "Cast the records to one dtype first.",
        )
    return found.pop() if found else "float32"


def _builder(record: Any) -> Build:
    for cls in type(record).__mro__:
        if cls in BUILDERS:
            return BUILDERS[cls]
    raise fail(
        UnsupportedError,
        f"No Keras layer for a {type(record).__name__} record yet",
        f"one of {sorted(c.__name__ for c in BUILDERS)}",
        type(record).__name__,
        "Convert to PyTorch instead (target 'torch').",
    )


def _input_shape(spec: Input, layout: str) -> tuple[Any, ...]:
    """The shape a model input takes in ``layout``, from the spec's shape in the source's layout."""
    shape = tuple(spec.shape)
    if len(shape) < 2 or layout == "source":
        return shape
    canonical = (shape[-1],) + shape[:-1] if spec.layout == "channels_last" else shape
    return canonical if layout == "channels_first" else canonical[1:] + canonical[:1]


def graph_to_native(flavour: common.Flavour, graph: Graph, data_format: str = "channels_last", layout: str = "source") -> Any:
    """A Keras functional model computing ``graph`` (module documentation), weights set and checked."""
    if layout not in LAYOUTS:
        raise fail(ConfigError, "Invalid value for argument `layout`", f"one of {LAYOUTS}", f"layout={layout!r}")
    if data_format != "channels_last":
        raise fail(
            UnsupportedError,
            "A whole model is built channels last inside",
            "data_format='channels_last' (use layout= to choose what the model's inputs and outputs look like)",
            f"data_format={data_format!r}",
            "TensorFlow's CPU kernels have no channels-first convolution; layout='source' gives a PyTorch model's twin "
            "channels-first inputs and outputs.",
        )
    keras = flavour.keras
    dtype = _dtype(graph)
    b = Builder(flavour, dtype)
    tensors: dict[str, Any] = {}
    model_inputs = []
    for spec in graph.inputs:
        shape = _input_shape(spec, layout)
        x = keras.Input(shape, dtype="int64" if spec.kind == "int" else dtype, name=b.name(spec.name))
        model_inputs.append(x)
        rank = len(shape) + 1
        held_first = rank > 2 and spec.kind == "float" and (
            layout == "channels_first" or layout == "source" and spec.layout == "channels_first"
        )
        tensors[spec.name] = b.permute(f"{spec.name}.channels_last", x, to_last(rank)) if held_first else x
    for node in graph.nodes:
        record = graph.layers[node.layer]
        try:
            tensors[node.name] = _builder(record)(b, record, node.layer, node.name, [tensors[e] for e in node.inputs])
        except LayoutError as exc:
            raise type(exc)(f"Layer {node.layer!r} ({type(record).__name__}, node {node.name!r}): {exc}") from None
    outputs = []
    for name in graph.outputs:
        y = tensors[name]
        rank = len(y.shape)
        first = rank > 2 and (layout == "channels_first" or layout == "source" and graph.layout_of(name) == "channels_first")
        outputs.append(b.permute(f"{name}.output", y, to_first(rank)) if first else y)
    one_in, one_out = len(model_inputs) == 1, len(outputs) == 1  # a list of one makes Keras 3 warn when called on a tensor
    model = keras.Model(model_inputs[0] if one_in else model_inputs, outputs[0] if one_out else outputs, name=sanitise(graph.name))
    b.check()
    return model


def run_graph(flavour: common.Flavour, native: Any, xs: Any) -> Any:
    """Run a Keras model on numpy inputs laid out as the model takes them; numpy out (a tuple for several outputs)."""
    xs = list(xs) if isinstance(xs, (list, tuple)) else [xs]
    specs = list(native.inputs)
    if len(xs) != len(specs):
        raise fail(ShapeError, f"The model takes {len(specs)} input(s)", f"arrays for {[t.name for t in specs]}", f"{len(xs)} array(s)")
    feed = []
    for x, spec in zip(xs, specs):
        x = np.asarray(x)
        want = np.dtype(str(getattr(spec.dtype, "name", spec.dtype)))
        feed.append(np.ascontiguousarray(x.astype(want, copy=False)))
    y = native(feed if len(feed) > 1 else feed[0], training=False)
    if isinstance(y, (list, tuple)):
        return tuple(flavour.to_numpy(t) for t in y)
    return flavour.to_numpy(y)


# -- one record at a time -------------------------------------------------------------------------------


def _default_shapes(record: Any) -> list[tuple[Any, ...]]:
    if isinstance(record, layers.Dense):
        return [(record.in_channels,)]
    if isinstance(record, layers.BatchNorm):
        return [(record.in_channels,)]
    if isinstance(record, layers.Embedding):
        return [(None,)]
    raise fail(
        ConfigError,
        f"A {type(record).__name__} needs input_shape= to be built on its own",
        "input_shape=(C, *spatial) (channels first, without the batch axis; a list of shapes for a merge)",
        "input_shape=None",
    )


def layer_to_native(
    flavour: common.Flavour, record: Any, data_format: str = "channels_last", input_shape: Any = None
) -> Any:
    """A one-layer Keras model computing ``record`` on input in ``data_format`` (``input_shape`` channels first)."""
    if data_format not in common.DATA_FORMATS:
        raise fail(ConfigError, "Invalid value for argument `data_format`", f"one of {common.DATA_FORMATS}", f"data_format={data_format!r}")
    if input_shape is None:
        shapes = _default_shapes(record)
    elif isinstance(input_shape, list) and input_shape and isinstance(input_shape[0], (list, tuple)):
        shapes = [tuple(s) for s in input_shape]
    else:
        shapes = [tuple(input_shape)]
    kind = "int" if isinstance(record, layers.Embedding) else "float"
    inputs = []
    for i, canonical in enumerate(shapes):
        cl = len(canonical) > 1 and data_format == "channels_last" and kind == "float"
        shape = canonical[1:] + canonical[:1] if cl else canonical
        inputs.append(Input(f"x{i}" if len(shapes) > 1 else "x", shape, "channels_last" if cl else ("flat" if len(shape) < 2 else "channels_first"), kind))
    node = Node("y", "layer", tuple(i.name for i in inputs), data_format)
    model = graph_to_native(flavour, Graph({"layer": record}, inputs, [node], ["y"], name=type(record).__name__.lower()), layout="source")
    model._layoutconv_data_format = data_format
    return model


def run_layer(flavour: common.Flavour, native: Any, x: Any) -> Any:
    """Apply a one-layer model to channels-first ``x`` (a list for a merge); channels-first numpy out."""
    last = getattr(native, "_layoutconv_data_format", "channels_last") == "channels_last"
    xs = list(x) if isinstance(x, (list, tuple)) else [x]
    moved = [np.moveaxis(np.asarray(a), 1, -1) if last and np.asarray(a).ndim > 2 and np.asarray(a).dtype.kind == "f" else a for a in xs]
    y = run_graph(flavour, native, moved)
    return np.moveaxis(y, -1, 1) if last and y.ndim > 2 else y


# -- registration: both flavours, resolved when first used ------------------------------------------------


def _flavour(name: str) -> common.Flavour:
    return frameworks.adapter(name)._FLAVOUR


def _registered(name: str) -> None:
    def graph_native(graph: Graph, data_format: str = "channels_last", layout: str = "source") -> Any:
        return graph_to_native(_flavour(name), graph, data_format, layout)

    def graph_run(native: Any, xs: Any) -> Any:
        return run_graph(_flavour(name), native, xs)

    def layer_native(record: Any, data_format: str = "channels_last", input_shape: Any = None) -> Any:
        return layer_to_native(_flavour(name), record, data_format, input_shape)

    def layer_run(native: Any, x: Any) -> Any:
        return run_layer(_flavour(name), native, x)

    registry.register(Graph, name, to_native=graph_native, run=graph_run)
    for kind in layers.LAYERS:
        registry.register(kind, name, to_native=layer_native, run=layer_run)


for _name in ("keras", "tf_keras"):
    _registered(_name)
