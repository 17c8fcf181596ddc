"""One implementation behind both Keras adapters (Keras 3 ``keras`` and Keras 2 ``tf_keras``).

The two flavours differ only in the module they import (and in a few facts kept
in tables below), so every function here takes a :class:`Flavour` that carries
it.  Every layer family is one row of :data:`KINDS`, indexed by spatial rank:

=====================  ==================================  ===================================================
Keras layers           kernel(s) as stored (axis names)    record
=====================  ==================================  ===================================================
``Conv1D/2D/3D``       ``K I O``, ``H W I O``, ``D H W I O``  :class:`~layoutconv.Conv` (with ``groups``)
``Conv1D/2D/3DTranspose``  ``K O I``, ``H W O I``, ...     :class:`~layoutconv.ConvTranspose` (no groups)
``DepthwiseConv1D/2D``  ``K G M``, ``H W G M``             ``Conv`` with ``groups = in_channels``,
                                                           output channel ``c * M + m``
``SeparableConv1D/2D``  ``H W G M`` then ``1 1 I O``       :class:`~layoutconv.Chain` of that depthwise ``Conv``
                                                           (no bias, linear) and a pointwise ``Conv`` holding
                                                           the bias and the activation
=====================  ==================================  ===================================================

Keras cross-correlates and keeps its kernel layout whatever the ``data_format``,
so weights move with permutations derived from the axis names
(:mod:`layoutconv.layouts`) and no flip.

:func:`to_native` returns the plain built layer when Keras can spell the
record, and otherwise a small built ``Sequential``:

- **Padding of a convolution** (``Conv``, depthwise, and the depthwise part of a
  separable one): ``"valid"``, ``"same_upper"`` (Keras ``'same'``, any stride) and,
  where the layer takes it, ``"causal"`` are spelled directly; pads equal to one
  of those are too; any other pads go into a ``ZeroPadding1D/2D/3D`` in front of a
  ``'valid'`` layer.  ``"same_lower"`` with a stride depends on the input size,
  which Keras cannot express: pass ``length=`` (an int, or one size per axis) to
  build a model that is right for that input size only.
- **Crops of a transposed convolution**: per axis, Keras computes
  ``(crop_begin, crop_end)`` and ``output_padding`` (ONNX terms) from
  ``r = d (k - 1) + 1`` as follows (:func:`keras_transpose_axis`, the formula of
  Keras 3's own backend conversion, matched against TensorFlow by the tests)::

      'valid', output_padding None   crops (0, 0), output_padding max(s - r, 0)
      'valid', output_padding a      crops (0, 0), output_padding a
      'same',  output_padding None   T = r - s            } crops (max(T, 0) // 2, rest),
      'same',  output_padding a      T = r - r % 2 - a    } a negative end crop is output_padding

  so its crops never depend on the input size.  A record whose crops no
  spelling gives becomes ``'valid'`` + ``output_padding`` followed by a
  ``Cropping1D/2D/3D``.
- **A Chain** of a depthwise and a pointwise ``Conv`` is one ``SeparableConv1D/2D``;
  any other chain is a ``Sequential`` of each record's layers.

Padding layers without a ``data_format`` (tf_keras ``ZeroPadding1D``, both
flavours' ``Cropping1D``) sit between two ``Permute((2, 1))`` layers for
``channels_first``.  A fused activation travels as the layer's ``activation=``,
named per flavour by :data:`layoutconv.activations.KERAS_NAMES`;
:func:`from_native` recognises it by identity with the flavour's functions and
refuses softmax, custom functions and non-default arguments.

Facts established by experiment (TensorFlow 2.21, Keras 3.15, tf_keras 2.21, CPU):

- Channels-first convolutions cannot be called eagerly on CPU (``UnimplementedError:
  The Conv2D op currently only supports the NHWC tensor format on the CPU``; tf_keras
  ``DepthwiseConv1D``/``SeparableConv*D`` likewise, ``Conv*DTranspose`` says
  ``Conv2DCustomBackpropInputOp only supports NHWC``).  The same layers run when
  compiled by XLA (``tf.function(layer, jit_compile=True)``), which is what
  :func:`run` does on a machine without a GPU.  So are dilated transposed
  convolutions, which TensorFlow's CPU kernels refuse in either format ("Current
  CPU implementations do not yet support dilation rates larger than 1"), and
  ``DepthwiseConv2D``/``SeparableConv2D`` with unequal strides ("Current
  implementation only supports equal length strides in the row and column dimensions").
- Grouped ``Conv*D``, ``DepthwiseConv*D`` and ``SeparableConv*D`` run in float16,
  bfloat16, float32 and float64 in both data formats.
- A ``DepthwiseConv*D`` kernel ``(*k, C, M)`` feeds output channel ``c * M + m``
  (checked against the framework with ``C != M``); ``SeparableConv*D`` adds its
  bias and applies its activation after the pointwise convolution.
- ``strides > 1`` with ``dilation_rate > 1`` (on any axes) is refused at
  construction by ``Conv*D`` and ``Conv*DTranspose`` in both flavours and by
  tf_keras's depthwise and separable layers; Keras 3's ``DepthwiseConv*D`` and
  ``SeparableConv*D`` accept it and compute it correctly.
- ``padding="causal"``: Keras 3 only ``Conv1D``; tf_keras ``Conv1D`` and ``SeparableConv1D``.
- Transposed layers have no ``groups``; ``output_padding`` must be below the
  stride.  With ``padding='same'``, an even receptive field and ``output_padding``
  0, TensorFlow fails (``InvalidArgumentError``): :func:`to_native` never writes that.
- tf_keras ``Conv2DTranspose`` with unequal dilations raises when called;
  tf_keras ``Conv3DTranspose`` silently ignores ``dilation_rate`` (it computes an
  undilated convolution).  Both are refused, in both directions.
- ``padding="same"`` of a convolution pads like ``"same_upper"`` at any stride.
- ``set_weights`` and reading the variables keep bytes for every float dtype;
  bfloat16 comes back as ``ml_dtypes.bfloat16``.
- Keras 3 on TensorFlow computes a wrong channels_first layer with bias when the
  (static) last spatial output size equals the number of output channels:
  ``keras.ops.add`` turns ``x + bias.reshape(1, F, 1, ...)`` into
  ``tf.nn.bias_add(..., data_format="NHWC")`` whenever ``x.shape[-1] == F``, so the
  bias lands on the last spatial axis (every layer kind adds its bias this way).
  tf_keras and Keras 3 on PyTorch are right.  :func:`run` probes for this once
  (:func:`bias_follows_length`) and raises ``UnsupportedError`` for such inputs
  instead of reporting Keras's wrong numbers as a conversion failure.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from .. import activations, layouts
from ..chain import Chain
from ..conv import Conv
from ..errors import ConfigError, ShapeError, UnsupportedError, fail
from ..transpose import ConvTranspose

DATA_FORMATS = ("channels_last", "channels_first")
_OTHER_FORMAT = {"channels_last": "channels_first", "channels_first": "channels_last"}

#: Keras padding strings <-> canonical rules
TO_CANONICAL_PADDING: dict[str, str] = {"valid": "valid", "same": "same_upper", "causal": "causal"}
TO_KERAS_PADDING: dict[str, str] = {v: k for k, v in TO_CANONICAL_PADDING.items()}

#: what every refusal points to
ELSEWHERE = "Convert to PyTorch instead (target 'torch'), which writes every layoutconv record."

#: the name of the last spatial axis, by rank (for messages)
_LAST_AXIS = {1: "length", 2: "width", 3: "width"}

Pairs = tuple[tuple[int, int], ...]

#: how each flavour turns a variable or tensor into numpy
_TO_NUMPY: dict[str, Callable[[ModuleType, Any], np.ndarray]] = {
    # Variable.numpy() avoids np.array(variable), which NumPy 2 deprecates for Keras variables.
    "keras": lambda k, t: np.asarray(t.numpy() if isinstance(t, k.Variable) else k.ops.convert_to_numpy(t)),
    "tf_keras": lambda k, t: np.asarray(k.backend.get_value(t)),
}


class Kind(NamedTuple):
    """One family of Keras convolution layers, by spatial rank."""

    name: str
    classes: dict[int, str]  # spatial rank -> Keras class name
    kernels: tuple[str, ...]  # axes after the spatial ones, one entry per kernel variable (in ``layer.weights`` order)
    causal: tuple[str, ...]  # flavours whose rank-1 layer takes padding="causal"
    stride_with_dilation: tuple[str, ...]  # flavours whose layer takes strides > 1 with dilation_rate > 1


CONV = Kind("conv", {1: "Conv1D", 2: "Conv2D", 3: "Conv3D"}, ("I O",), ("keras", "tf_keras"), ())
TRANSPOSE = Kind("transpose", {r: f"Conv{r}DTranspose" for r in (1, 2, 3)}, ("O I",), (), ())
DEPTHWISE = Kind("depthwise", {1: "DepthwiseConv1D", 2: "DepthwiseConv2D"}, ("G M",), (), ("keras",))
SEPARABLE = Kind("separable", {1: "SeparableConv1D", 2: "SeparableConv2D"}, ("G M", "I O"), ("tf_keras",), ("keras",))
KINDS = (CONV, TRANSPOSE, DEPTHWISE, SEPARABLE)

#: (flavour, rank) -> why its transposed layer cannot have this dilation, or None (tf_keras facts above)
_TRANSPOSE_DILATION: dict[tuple[str, int], Callable[[tuple[int, ...]], str | None]] = {
    ("tf_keras", 2): lambda d: "tf_keras Conv2DTranspose raises when called with unequal dilations" if d[0] != d[1] else None,
    ("tf_keras", 3): lambda d: (
        "tf_keras Conv3DTranspose ignores dilation_rate (it computes an undilated convolution)" if max(d) > 1 else None
    ),
}


def kernel_layout(rank: int, axes: str) -> str:
    """A Keras kernel layout: the spatial axis names of ``rank`` followed by ``axes`` (``"I O"``, ``"O I"``, ``"G M"``)."""
    return " ".join(layouts.SPATIAL[rank] + tuple(axes.split()))


def _zeros(rank: int) -> Pairs:
    return ((0, 0),) * rank


def _add(a: Pairs, b: Pairs) -> Pairs:
    return tuple((x + u, y + v) for (x, y), (u, v) in zip(a, b))


@dataclass(frozen=True)
class Flavour:
    """A Keras flavour: its framework name and its imported module."""

    name: str
    keras: ModuleType

    def to_numpy(self, tensor: Any) -> np.ndarray:
        return _TO_NUMPY[self.name](self.keras, tensor)

    @property
    def accepted(self) -> str:
        return (
            f"a built {self.name} convolution layer (Conv1D/2D/3D, Conv1D/2D/3DTranspose, DepthwiseConv1D/2D, "
            "SeparableConv1D/2D), or a Sequential of them with ZeroPadding, Cropping and Permute((2, 1)) layers "
            "around them (what to_native returns)"
        )


@functools.lru_cache(maxsize=None)
def _takes_data_format(cls: type) -> bool:
    return "data_format" in inspect.signature(cls.__init__).parameters


@functools.lru_cache(maxsize=None)
def _class_table(flavour: Flavour) -> dict[type, tuple[Kind, int]]:
    layers = flavour.keras.layers
    return {getattr(layers, name): (kind, rank) for kind in KINDS for rank, name in kind.classes.items()}


@functools.lru_cache(maxsize=None)
def _around_table(flavour: Flavour) -> dict[type, tuple[str, int]]:
    """Padding and cropping layer classes -> ("pad" or "crop", spatial rank)."""
    layers = flavour.keras.layers
    return {
        getattr(layers, f"{name}{rank}D"): (what, rank)
        for what, name in (("pad", "ZeroPadding"), ("crop", "Cropping"))
        for rank in (1, 2, 3)
    }


def identify(flavour: Flavour, obj: Any) -> tuple[Kind, int] | None:
    """``(kind, spatial rank)`` of a Keras convolution layer (its most specific known class), or None."""
    table = _class_table(flavour)
    for cls in type(obj).__mro__:
        if cls in table:
            return table[cls]
    return None


class Segment(NamedTuple):
    """One convolution layer of a native object with the zero pads in front of it and the crops behind it."""

    layer: Any
    kind: Kind
    rank: int
    pads: Pairs
    crops: Pairs


class Parsed(NamedTuple):
    """A native Keras object taken apart: its convolution layers in order, and its input and output data formats."""

    segments: tuple[Segment, ...]
    data_format: str
    output_format: str

    @property
    def conv_layer(self) -> Any:
        """The (first) convolution layer."""
        return self.segments[0].layer


# -- reading ------------------------------------------------------------------
def _wrong_type(flavour: Flavour, obj: Any) -> ConfigError:
    return fail(
        ConfigError,
        f"Cannot read a convolution from a {type(obj).__module__}.{type(obj).__name__}",
        flavour.accepted,
        f"{type(obj).__name__}",
        "For a layer inside a larger model, pass the layer itself: model.get_layer(name).",
    )


def _pairs(value: Any, rank: int) -> Pairs:
    """A padding or cropping layer's amounts as one (begin, end) pair per spatial axis."""
    flat = np.asarray(value, dtype=np.int64).reshape(rank, 2)
    return tuple((int(b), int(e)) for b, e in flat)


def _is_swap(flavour: Flavour, layer: Any, rank: int) -> bool:
    return rank == 1 and isinstance(layer, flavour.keras.layers.Permute) and tuple(layer.dims) == (2, 1)


def parse(flavour: Flavour, native: Any) -> Parsed:
    """Find the convolution layers of ``native``, the zero pads before and crops after each, and the data formats."""
    found = identify(flavour, native)
    if found is not None:
        kind, rank = found
        return Parsed((Segment(native, kind, rank, _zeros(rank), _zeros(rank)),), native.data_format, native.data_format)
    if not isinstance(native, flavour.keras.Sequential):
        raise _wrong_type(flavour, native)
    chain = [layer for layer in native.layers if not isinstance(layer, flavour.keras.layers.InputLayer)]
    convs = [(layer, identify(flavour, layer)) for layer in chain if identify(flavour, layer) is not None]
    names = [type(layer).__name__ for layer in chain]
    if not convs:
        raise fail(
            ConfigError, "The Sequential model holds no convolution", flavour.accepted, f"layers {names}",
            "Pass the convolution layer itself: model.get_layer(name).",
        )
    rank = convs[0][1][1]
    first = type(convs[0][0]).__name__
    if any(r != rank for _, (_, r) in convs):
        raise fail(ConfigError, "The Sequential model mixes convolutions of different ranks", "one spatial rank", f"layers {names}")

    def not_part(layer: Any, why: str = "") -> ConfigError:
        return fail(
            ConfigError,
            f"Layer {layer.name!r} ({type(layer).__name__}) is not part of a padded {first}" + (f": {why}" if why else ""),
            flavour.accepted,
            f"layers {names}",
            "Pass the convolution layer itself: model.get_layer(name).",
        )

    segments: list[Segment] = []
    pending = _zeros(rank)  # zero pads waiting for the next convolution
    flips = 0  # Permute((2, 1)) layers seen so far
    formats: list[tuple[Any, str, int, bool]] = []  # (layer, its data_format, flips before it, is a padding layer)
    for layer in chain:
        conv = identify(flavour, layer)
        around = _around_table(flavour).get(type(layer))
        if conv is not None:
            segments.append(Segment(layer, conv[0], rank, pending, _zeros(rank)))
            pending = _zeros(rank)
            formats.append((layer, layer.data_format, flips, False))
        elif _is_swap(flavour, layer, rank):
            flips += 1
        elif around is not None and around[1] == rank:
            amounts = _pairs(layer.padding if around[0] == "pad" else layer.cropping, rank)
            if around[0] == "pad":
                pending = _add(pending, amounts)
            elif not segments or segments[-1].kind is not TRANSPOSE or any(b or e for b, e in pending):
                raise not_part(layer, "a Cropping layer can only follow a transposed convolution")
            else:
                segments[-1] = segments[-1]._replace(crops=_add(segments[-1].crops, amounts))
            formats.append((layer, getattr(layer, "data_format", "channels_last"), flips, True))
        else:
            raise not_part(layer)
    if any(b or e for b, e in pending):
        raise not_part(chain[-1], "zero padding behind the last convolution")

    def state(data_format: str, flipped: int) -> str:
        return data_format if flipped % 2 == 0 else _OTHER_FORMAT[data_format]

    _, format0, flips0, _ = next(item for item in formats if not item[3])
    input_format = state(format0, flips0)
    for layer, data_format, flipped, padding_layer in formats:
        actual = state(input_format, flipped)
        if data_format == actual:
            continue
        if padding_layer:
            raise fail(
                UnsupportedError,
                f"{type(layer).__name__} {layer.name!r} pads the channel axis, not the {_LAST_AXIS[rank] if rank == 1 else 'spatial axes'}",
                "padding and cropping along the spatial axes only",
                f"a {actual} tensor padded as {data_format}",
            )
        raise fail(
            ConfigError,
            f"Layer {layer.name!r} reads a {actual} tensor as {data_format}",
            "every convolution to see its input in its own data_format",
            f"layers {names}",
        )
    return Parsed(tuple(segments), input_format, state(input_format, flips))


def _check_layer(layer: Any) -> None:
    if not layer.built:
        raise fail(
            ConfigError,
            f"{type(layer).__name__} layer {layer.name!r} is not built, so it has no weights yet",
            "a built layer",
            "an unbuilt layer",
            "Build it first, e.g. layer.build((None, None, in_channels)) for a channels_last Conv1D, "
            "or call it on an input.",
        )


@functools.lru_cache(maxsize=None)
def _known_activations(flavour: Flavour) -> tuple[tuple[Any, str], ...]:
    """(function object, canonical name) for every name in the flavour's table, as Keras resolves it."""
    get = flavour.keras.activations.get
    return tuple((get(name), canonical) for name, canonical in activations.KERAS_NAMES[flavour.name].items())


def _describe(function: Any) -> str:
    if isinstance(function, functools.partial):
        arguments = [repr(a) for a in function.args] + [f"{k}={v!r}" for k, v in function.keywords.items()]
        return f"{_describe(function.func)}({', '.join(arguments)})"
    name = getattr(function, "__name__", None)
    if name is None:
        return f"a {type(function).__module__}.{type(function).__name__} object"
    return f"{getattr(function, '__module__', '?')}.{name}"


def _changed_defaults(function: Any, keywords: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments whose value differs from ``function``'s default (unknown ones count as changed)."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return dict(keywords)
    return {k: v for k, v in keywords.items() if k not in parameters or parameters[k].default != v}


def read_activation(flavour: Flavour, layer: Any) -> str:
    """The canonical name of ``layer.activation``, recognised by identity with the flavour's named functions.

    A ``functools.partial`` of one of them is accepted when it only repeats default
    arguments.  Anything else (softmax, a custom function, non-default parameters)
    is an :class:`UnsupportedError`: a record holds one of :data:`activations.ACTIVATIONS`.
    """
    function, keywords, arguments = layer.activation, {}, ()
    if isinstance(function, functools.partial):
        function, keywords, arguments = function.func, dict(function.keywords), function.args
    name = next((canonical for known, canonical in _known_activations(flavour) if known is function), None)
    changed = _changed_defaults(function, keywords) if name is not None else {}
    if name is not None and not changed and not arguments:
        return name
    described = _describe(layer.activation)
    if name is not None:
        why = f"{name} with non-default arguments {changed or arguments}"
    elif getattr(function, "__name__", None) == "softmax":
        why = "softmax mixes the channels of each position, so it is not an elementwise activation"
    else:
        why = "not one of the named activations a layoutconv record holds"
    raise fail(
        UnsupportedError,
        f"{type(layer).__name__} layer {layer.name!r} has activation {described} built in: {why}",
        f"one of {flavour.name}'s {sorted(activations.KERAS_NAMES[flavour.name])} with its default arguments",
        f"activation={described}",
        f"Convert the convolution without it (layer.activation = {flavour.keras.__name__}.activations.linear) "
        "and apply the activation as its own layer after the converted one.",
    )


def keras_activation(flavour: Flavour, conv: Any) -> str:
    """The flavour's ``activation=`` name for ``conv.activation``, or an UnsupportedError naming who has it."""
    names = activations.KERAS_NAMES[flavour.name]
    name = next((keras_name for keras_name, canonical in names.items() if canonical == conv.activation), None)
    if name is not None:
        return name
    # the PyTorch and ONNX adapters write every activation of layoutconv.activations
    able = [f for f, table in activations.KERAS_NAMES.items() if conv.activation in table.values()] + ["torch", "onnx"]
    raise fail(
        UnsupportedError,
        f"{flavour.name} has no activation computing {conv.activation} "
        f"({activations.get(conv.activation).formula})",
        f"one of the activations {flavour.name} has: {sorted(set(names.values()))}",
        f"activation={conv.activation!r}",
        f"Convert to {', '.join(able)} instead, which can; or convert conv.replace(activation='linear') "
        f"and apply {conv.activation} as its own layer. No other {flavour.name} function is silently substituted.",
    )


def keras_transpose_axis(k: int, s: int, d: int, padding: str, output_padding: int | None) -> tuple[tuple[int, int], int]:
    """``((crop_begin, crop_end), output_padding)`` in ONNX terms for one axis of a Keras ``Conv*DTranspose``."""
    r = d * (k - 1) + 1
    if padding == "valid":
        return (0, 0), (max(s - r, 0) if output_padding is None else output_padding)
    total = r - s if output_padding is None else r - r % 2 - output_padding
    begin = max(total, 0) // 2
    end = total - begin
    return (begin, max(end, 0)), max(-end, 0)


def tidy_transpose(t: ConvTranspose) -> ConvTranspose:
    """Explicit crops written as ``"valid"`` or ``"same_upper"`` when one of those gives them."""
    pairs = _transpose_pairs(t)
    if all(p == (0, 0) for p in pairs):
        return t.replace(padding="valid")
    if all(a + r - s >= 0 for a, r, s in zip(t.output_padding, t.receptive_field, t.stride)):
        if t.replace(padding="same_upper").pads(t.stride) == pairs:  # same_* crops do not depend on the size
            return t.replace(padding="same_upper")
    return t.replace(padding=pairs)


def _transpose_pairs(t: ConvTranspose) -> Pairs:
    return t.padding if isinstance(t.padding, tuple) else t.pads(t.stride)


def _keras_rule(layer: Any) -> str:
    rule = TO_CANONICAL_PADDING.get(layer.padding) if isinstance(layer.padding, str) else None
    if rule is None:
        raise fail(
            UnsupportedError,
            f"{type(layer).__name__} layer {layer.name!r} has a padding layoutconv does not read",
            f"one of {sorted(TO_CANONICAL_PADDING)}",
            f"padding={layer.padding!r}",
        )
    return rule


def _read_conv(flavour: Flavour, layer: Any, rank: int, kernels: list, bias: Any, common: dict) -> Conv:
    return Conv(kernels[0], bias, groups=int(getattr(layer, "groups", 1)), layout=kernel_layout(rank, "I O"), **common)


def _read_depthwise(flavour: Flavour, layer: Any, rank: int, kernels: list, bias: Any, common: dict) -> Conv:
    return Conv(kernels[0], bias, groups=int(kernels[0].shape[-2]), layout=kernel_layout(rank, "G M"), **common)


def _read_separable(flavour: Flavour, layer: Any, rank: int, kernels: list, bias: Any, common: dict) -> Chain:
    activation = common.pop("activation")
    depthwise = _read_depthwise(flavour, layer, rank, kernels[:1], None, common)
    pointwise = Conv(kernels[1], bias, activation=activation, layout=kernel_layout(rank, "I O"))
    return Chain((depthwise, pointwise))


def _read_transpose(flavour: Flavour, layer: Any, rank: int, kernels: list, bias: Any, common: dict) -> ConvTranspose:
    problem = _TRANSPOSE_DILATION.get((flavour.name, rank), lambda d: None)(common["dilation"])
    if problem:
        raise fail(
            UnsupportedError,
            f"{problem}, so layer {layer.name!r} does not compute what its configuration says",
            "dilation_rate 1 (or equal on both axes for Conv2DTranspose)",
            f"dilation_rate={common['dilation']}",
        )
    extra = layer.output_padding if layer.output_padding is not None else (None,) * rank
    padding = layer.padding
    if padding not in ("valid", "same"):
        raise fail(
            UnsupportedError,
            f"{type(layer).__name__} layer {layer.name!r} has a padding layoutconv does not read",
            "'valid' or 'same'",
            f"padding={padding!r}",
        )
    read = [keras_transpose_axis(k, s, d, padding, a) for k, s, d, a in zip(layer.kernel_size, common["stride"], common["dilation"], extra)]
    common.pop("padding")
    t = ConvTranspose(
        kernels[0], bias, padding=tuple(p for p, _ in read), output_padding=tuple(a for _, a in read),
        layout=kernel_layout(rank, "O I"), **common,
    )
    return tidy_transpose(t)


#: kind name -> how a layer of that kind becomes a record
_READERS: dict[str, Callable[..., Any]] = {
    "conv": _read_conv, "depthwise": _read_depthwise, "separable": _read_separable, "transpose": _read_transpose,
}


def read_layer(flavour: Flavour, layer: Any, kind: Kind, rank: int) -> Any:
    """The record one Keras convolution layer computes on its own (weights bit-exact)."""
    _check_layer(layer)
    arrays = [flavour.to_numpy(v) for v in layer.weights]
    if len(arrays) != len(kind.kernels) + bool(layer.use_bias):
        raise fail(
            ConfigError,
            f"{type(layer).__name__} layer {layer.name!r} has unexpected weights",
            f"{len(kind.kernels)} kernel(s)" + (" and a bias" if layer.use_bias else ""),
            f"{[tuple(a.shape) for a in arrays]}",
        )
    kernels, bias = arrays[: len(kind.kernels)], (arrays[-1] if layer.use_bias else None)
    common = dict(
        stride=tuple(int(s) for s in layer.strides),
        dilation=tuple(int(d) for d in layer.dilation_rate),
        padding=_keras_rule(layer) if kind is not TRANSPOSE else None,
        activation=read_activation(flavour, layer),
    )
    return _READERS[kind.name](flavour, layer, rank, kernels, bias, common)


def _with_pads(record: Any, pads: Pairs) -> Any:
    """``record`` with explicit zero pads added in front of it."""
    if not any(b or e for b, e in pads):
        return record
    if isinstance(record, Chain):
        return Chain((_with_pads(record.layers[0], pads),) + record.layers[1:])
    if isinstance(record, ConvTranspose):
        raise fail(
            UnsupportedError,
            "Zero padding in front of a transposed convolution",
            "padding only in front of a convolution (a transposed one crops its output instead)",
            f"pads {pads}",
        )
    if record.padding_depends_on_length:
        raise fail(
            UnsupportedError,
            f"Zero padding in front of padding='same' with stride {record.stride}",
            "a fixed total padding",
            f"pads {pads} then 'same', which depends on the input size",
        )
    return record.replace(padding=_add(pads, record.pads()))


def _with_crops(record: Any, crops: Pairs) -> Any:
    if not any(b or e for b, e in crops):
        return record
    return tidy_transpose(record.replace(padding=_add(_transpose_pairs(record), crops)))


def _read(flavour: Flavour, parsed: Parsed) -> tuple[list[Any], Any]:
    """Each convolution layer's own record, and the record the whole native object computes."""
    own = [read_layer(flavour, s.layer, s.kind, s.rank) for s in parsed.segments]
    records = [_with_crops(_with_pads(r, s.pads), s.crops) for r, s in zip(own, parsed.segments)]
    if len(records) == 1:
        return own, records[0]
    return own, Chain([layer for r in records for layer in (r.layers if isinstance(r, Chain) else (r,))])


def from_native(flavour: Flavour, native: Any) -> Conv | ConvTranspose | Chain:
    """A built Keras convolution layer (or a model made by :func:`to_native`) as a record, weights bit-exact.

    A ``Sequential`` of several convolutions is a :class:`~layoutconv.Chain` of their records.
    """
    return _read(flavour, parse(flavour, native))[1]


# -- writing ------------------------------------------------------------------
class Spec(NamedTuple):
    """One Keras convolution layer to build: its kind, constructor arguments, weights, and pads/crops around it."""

    kind: Kind
    rank: int
    options: dict[str, Any]
    weights: tuple[np.ndarray, ...]
    pads: Pairs
    crops: Pairs
    in_channels: int


def keras_padding(conv: Conv, spatial: tuple[int, ...] | None = None, *, causal: bool = True) -> tuple[str, Pairs]:
    """The Keras padding string for ``conv`` and the zero pads a padding layer must add in front.

    ``causal`` says whether the layer takes ``padding="causal"``.
    """
    rules = ("valid", "same_upper") + (("causal",) if causal else ())
    if conv.padding in rules:
        return TO_KERAS_PADDING[conv.padding], _zeros(conv.spatial_rank)
    if conv.padding_depends_on_length and spatial is None:
        raise fail(
            UnsupportedError,
            f"Keras cannot express padding {conv.padding!r} with stride {conv.stride if conv.spatial_rank > 1 else conv.stride[0]}",
            "a padding Keras has ('valid', 'same' = same_upper, 'causal') or pads that do not depend on the input size",
            f"padding {conv.padding!r}, whose pads change with the input {'length' if conv.spatial_rank == 1 else 'size'}",
            "Pass length=<input length> (one size per spatial axis for 2-d and 3-d) to build a model with explicit "
            f"pads for that input size only. {ELSEWHERE}",
        )
    pads = conv.pads(spatial)
    # A rule Keras has that gives exactly these pads (for every size) is preferred.
    for rule in rules:
        candidate = conv.replace(padding=rule)
        if not candidate.padding_depends_on_length and candidate.pads() == pads:
            return TO_KERAS_PADDING[rule], _zeros(conv.spatial_rank)
    return "valid", pads


def _keras_output_padding(padding: str, k: int, s: int, d: int, want: tuple[tuple[int, int], int]) -> int | None:
    """The ``output_padding`` that makes one axis of a Keras transposed layer give ``want`` (crops, output_padding), or None.

    :func:`keras_transpose_axis` inverted (``'same'``: ``T = crop_begin + crop_end - output_padding``,
    ``a = r - r % 2 - T``), then checked forwards; Keras needs ``a < s``, and TensorFlow ``r % 2 + a >= 1`` with 'same'.
    """
    (begin, end), extra = want
    r = d * (k - 1) + 1
    a = extra if padding == "valid" else r - r % 2 - (begin + end - extra)
    if not 0 <= a < s or (padding == "same" and r % 2 + a == 0):
        return None
    return a if keras_transpose_axis(k, s, d, padding, a) == want else None


def keras_transpose_padding(t: ConvTranspose) -> tuple[str, tuple[int, ...] | None, Pairs]:
    """Keras ``padding`` and ``output_padding`` for ``t``, and the crops a Cropping layer must add behind."""
    want = list(zip(_transpose_pairs(t), t.output_padding))
    axes = list(zip(t.kernel_shape, t.stride, t.dilation))
    for padding in ("valid", "same"):
        if all(keras_transpose_axis(k, s, d, padding, None) == w for (k, s, d), w in zip(axes, want)):
            return padding, None, _zeros(t.spatial_rank)
    for padding in ("valid", "same"):
        extra = [_keras_output_padding(padding, k, s, d, w) for (k, s, d), w in zip(axes, want)]
        if None not in extra:
            return padding, tuple(int(a) for a in extra), _zeros(t.spatial_rank)
    if any(a >= s for a, s in zip(t.output_padding, t.stride)):
        raise fail(
            UnsupportedError,
            "Keras needs output_padding smaller than the stride on every axis",
            "output_padding < stride",
            f"output_padding={t.output_padding} with stride {t.stride} (and dilation {t.dilation})",
            ELSEWHERE,
        )
    return "valid", t.output_padding, _transpose_pairs(t)


def _check_stride_with_dilation(flavour: Flavour, kind: Kind, record: Any) -> None:
    if max(record.stride) > 1 and max(record.dilation) > 1 and flavour.name not in kind.stride_with_dilation:
        rank = record.spatial_rank
        one = (lambda v: v[0]) if rank == 1 else (lambda v: v)
        raise fail(
            UnsupportedError,
            f"{flavour.name} {kind.classes[rank]} refuses strides > 1 together with dilation_rate > 1",
            "stride 1 or dilation 1 (on every axis)",
            f"stride={one(record.stride)}, dilation={one(record.dilation)}",
            "Convert to PyTorch or ONNX, which support both at once.",
        )


def _check_padding_mode(conv: Conv) -> None:
    if conv.padding_mode != "zeros":
        raise fail(
            UnsupportedError,
            f"Keras cannot pad a convolution with padding_mode={conv.padding_mode!r}",
            "padding_mode='zeros' (Keras convolutions and ZeroPadding layers only pad with zeros)",
            f"padding_mode={conv.padding_mode!r}",
            "Pad the input yourself before the layer, or convert to PyTorch/ONNX instead.",
        )


def _bias(record: Any) -> tuple[np.ndarray, ...]:
    return () if record.bias is None else (record.bias,)


def _conv_spec(flavour: Flavour, conv: Conv, spatial: tuple[int, ...] | None) -> Spec:
    rank = conv.spatial_rank
    depthwise = 1 < conv.groups == conv.in_channels and rank in DEPTHWISE.classes
    kind = DEPTHWISE if depthwise else CONV
    _check_padding_mode(conv)
    _check_stride_with_dilation(flavour, kind, conv)
    padding, pads = keras_padding(conv, spatial, causal=rank == 1 and flavour.name in kind.causal)
    options = dict(
        kernel_size=conv.kernel_shape, strides=conv.stride, padding=padding, dilation_rate=conv.dilation,
        use_bias=conv.bias is not None, activation=keras_activation(flavour, conv),
    )
    if depthwise:
        options.update(depth_multiplier=conv.out_channels // conv.in_channels, depthwise_initializer="zeros")
    else:
        options.update(filters=conv.out_channels, groups=conv.groups, kernel_initializer="zeros")
    kernel = layouts.from_canonical(conv.kernel, kernel_layout(rank, kind.kernels[0]), groups=conv.groups)
    return Spec(kind, rank, options, (kernel,) + _bias(conv), pads, _zeros(rank), conv.in_channels)


def _transpose_spec(flavour: Flavour, t: ConvTranspose, spatial: tuple[int, ...] | None) -> Spec:
    rank = t.spatial_rank
    name = TRANSPOSE.classes[rank]
    if t.groups > 1:
        raise fail(
            UnsupportedError, f"Keras {name} has no groups", "groups=1", f"groups={t.groups}", ELSEWHERE
        )
    if t.output_shape_ is not None:
        raise fail(
            UnsupportedError,
            f"Keras {name} has no output_shape: its crops cannot depend on the input size",
            "output_shape=None",
            f"output_shape={t.output_shape_}",
            ELSEWHERE,
        )
    _check_stride_with_dilation(flavour, TRANSPOSE, t)
    problem = _TRANSPOSE_DILATION.get((flavour.name, rank), lambda d: None)(t.dilation)
    if problem:
        raise fail(UnsupportedError, problem, "dilation this layer computes", f"dilation={t.dilation}", ELSEWHERE)
    padding, extra, crops = keras_transpose_padding(t)
    options = dict(
        filters=t.out_channels, kernel_size=t.kernel_shape, strides=t.stride, padding=padding, output_padding=extra,
        dilation_rate=t.dilation, use_bias=t.bias is not None, activation=keras_activation(flavour, t),
        kernel_initializer="zeros",
    )
    kernel = layouts.from_canonical(t.kernel, kernel_layout(rank, "O I"), transposed=True)
    return Spec(TRANSPOSE, rank, options, (kernel,) + _bias(t), _zeros(rank), crops, t.in_channels)


def _is_separable(chain: Chain) -> bool:
    """A depthwise Conv (no bias, linear) then a pointwise 1x1 Conv: what one SeparableConv layer computes."""
    if len(chain.layers) != 2 or chain.spatial_rank not in SEPARABLE.classes:
        return False
    dw, pw = chain.layers
    return (
        isinstance(dw, Conv) and isinstance(pw, Conv)
        and dw.groups == dw.in_channels and dw.bias is None and dw.activation == "linear"
        and all(k == 1 for k in pw.kernel_shape) and max(pw.stride) == 1 and max(pw.dilation) == 1
        and pw.groups == 1 and not pw.padding_depends_on_length and not any(b or e for b, e in pw.pads())
    )


def _separable_spec(flavour: Flavour, chain: Chain, spatial: tuple[int, ...] | None) -> Spec:
    dw, pw = chain.layers
    rank = chain.spatial_rank
    _check_padding_mode(dw)
    _check_stride_with_dilation(flavour, SEPARABLE, dw)
    padding, pads = keras_padding(dw, spatial, causal=rank == 1 and flavour.name in SEPARABLE.causal)
    options = dict(
        filters=pw.out_channels, kernel_size=dw.kernel_shape, strides=dw.stride, padding=padding,
        dilation_rate=dw.dilation, depth_multiplier=dw.out_channels // dw.in_channels, use_bias=pw.bias is not None,
        activation=keras_activation(flavour, pw), depthwise_initializer="zeros", pointwise_initializer="zeros",
    )
    kernels = (
        layouts.from_canonical(dw.kernel, kernel_layout(rank, "G M"), groups=dw.groups),
        layouts.from_canonical(pw.kernel, kernel_layout(rank, "I O")),
    )
    return Spec(SEPARABLE, rank, options, kernels + _bias(pw), pads, _zeros(rank), dw.in_channels)


def _output_shape(record: Any, spatial: tuple[int, ...]) -> tuple[int, ...]:
    if isinstance(record, Chain):
        for layer in record.layers:
            spatial = _output_shape(layer, spatial)
        return spatial
    return tuple(record.output_shape(spatial))


def specs(flavour: Flavour, record: Any, spatial: tuple[int, ...] | None = None) -> list[Spec]:
    """The Keras layers that compute ``record`` (``spatial``: the input size, needed only for same_lower with a stride)."""
    if isinstance(record, Chain):
        if _is_separable(record):
            return [_separable_spec(flavour, record, spatial)]
        out: list[Spec] = []
        for layer in record.layers:
            out += specs(flavour, layer, spatial)
            spatial = None if spatial is None else _output_shape(layer, spatial)
        return out
    if isinstance(record, ConvTranspose):
        return [_transpose_spec(flavour, record, spatial)]
    return [_conv_spec(flavour, record, spatial)]


def _check_writable(record: Any, data_format: str, length: Any) -> tuple[int, ...] | None:
    if not isinstance(record, (Conv, ConvTranspose, Chain)):
        raise fail(
            ConfigError, "to_native needs a record", "a layoutconv Conv, ConvTranspose or Chain", f"{type(record).__name__}"
        )
    if data_format not in DATA_FORMATS:
        raise fail(
            ConfigError, "Invalid value for argument `data_format`", f"one of {DATA_FORMATS}", f"data_format={data_format!r}"
        )
    if length is None:
        return None
    rank = record.spatial_rank
    sizes = (length,) * rank if isinstance(length, (int, np.integer)) and not isinstance(length, bool) else length
    try:
        ok = len(sizes) == rank and all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n > 0 for n in sizes)
    except TypeError:
        ok = False
    if not ok:
        raise fail(
            ConfigError,
            "Invalid value for argument `length`",
            f"a strictly positive integer, {rank} of them (one per spatial axis), or None",
            f"length={length!r}",
        )
    return tuple(int(n) for n in sizes)


def _input_shape(channels: int, rank: int, data_format: str) -> tuple[Any, ...]:
    spatial = (None,) * rank
    return spatial + (channels,) if data_format == "channels_last" else (channels,) + spatial


def _around(flavour: Flavour, name: str, rank: int, pairs: Pairs, data_format: str, dtype: str) -> list[Any]:
    """A ZeroPadding or Cropping layer for ``pairs``; wrapped in Permute((2, 1)) when it has no data_format."""
    layers = flavour.keras.layers
    cls = getattr(layers, f"{name}{rank}D")
    amounts = pairs[0] if rank == 1 else pairs
    if _takes_data_format(cls):
        return [cls(amounts, data_format=data_format, dtype=dtype)]
    layer = cls(amounts, dtype=dtype)
    if data_format == "channels_last":
        return [layer]
    return [layers.Permute((2, 1), dtype=dtype), layer, layers.Permute((2, 1), dtype=dtype)]


def build(flavour: Flavour, plan: Sequence[Spec], data_format: str, dtype: str) -> Any:
    """The built layer (or Sequential) for ``plan``, with the weights set."""
    layers = flavour.keras.layers
    made = [getattr(layers, s.kind.classes[s.rank])(**s.options, data_format=data_format, dtype=dtype) for s in plan]
    first = plan[0]
    input_shape = _input_shape(first.in_channels, first.rank, data_format)
    plain = len(plan) == 1 and not any(b or e for b, e in first.pads + first.crops)
    if plain:
        made[0].build((None,) + input_shape)
        native = made[0]
    else:
        items: list[Any] = [flavour.keras.Input(input_shape, dtype=dtype)]
        for s, layer in zip(plan, made):
            if any(b or e for b, e in s.pads):
                items += _around(flavour, "ZeroPadding", s.rank, s.pads, data_format, dtype)
            items.append(layer)
            if any(b or e for b, e in s.crops):
                items += _around(flavour, "Cropping", s.rank, s.crops, data_format, dtype)
        native = flavour.keras.Sequential(items)
    for s, layer in zip(plan, made):
        layer.set_weights(list(s.weights))
    return native


def _activations(record: Any) -> tuple[str, ...]:
    return tuple(layer.activation for layer in record.layers) if isinstance(record, Chain) else (record.activation,)


def to_native(flavour: Flavour, record: Any, data_format: str = "channels_last", length: Any = None) -> Any:
    """A built Keras layer (or padded/cropped ``Sequential``) computing ``record``, in ``data_format``."""
    spatial = _check_writable(record, data_format, length)
    native = build(flavour, specs(flavour, record, spatial), data_format, record.dtype.name)
    back = from_native(flavour, native)
    if _activations(back) != _activations(record):
        raise fail(
            UnsupportedError,
            f"{flavour.name} did not keep the activation",
            f"activation {_activations(record)} read back",
            f"{_activations(back)}",
        )
    if not back.same_weights(record):  # the same reload check safetensors' converter makes
        raise fail(
            UnsupportedError,
            f"{flavour.name} did not keep the weights bit-exact",
            f"kernel and bias of dtype {record.dtype.name} stored unchanged",
            f"dtype {back.dtype} with different bytes",
        )
    return native


# -- running ------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _tensorflow_cpu_only(flavour: Flavour) -> bool:
    if flavour.keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return not tf.config.list_physical_devices("GPU")


#: layers TensorFlow's CPU kernels refuse and XLA compiles (see the facts in the module documentation)
_XLA_ONLY: tuple[Callable[[Segment], bool], ...] = (
    lambda s: s.layer.data_format == "channels_first",
    lambda s: s.kind is TRANSPOSE and max(s.layer.dilation_rate) > 1,
    lambda s: s.kind in (DEPTHWISE, SEPARABLE) and len(set(s.layer.strides)) > 1,
)


def _needs_xla(flavour: Flavour, segments: Sequence[Segment]) -> bool:
    """True on TensorFlow without a GPU when a layer runs only under XLA (:data:`_XLA_ONLY`)."""
    return _tensorflow_cpu_only(flavour) and any(rule(s) for s in segments for rule in _XLA_ONLY)


def _call(flavour: Flavour, native: Any, x_native: np.ndarray, xla: bool) -> np.ndarray:
    call = native
    if xla:
        import tensorflow as tf

        call = tf.function(native, jit_compile=True)
    try:
        return flavour.to_numpy(call(x_native))
    except Exception as exc:  # a framework refusal becomes a layoutconv error, with the cause chained
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise fail(
            UnsupportedError,
            f"{flavour.name} ({flavour.keras.backend.backend()} backend) could not run this layer",
            "the layer to run on this machine",
            f"{type(exc).__name__}: {first_line}",
        ) from exc


@functools.lru_cache(maxsize=None)
def bias_follows_length(flavour: Flavour) -> bool:
    """True when a channels_first layer adds its bias along the last spatial axis once that axis's size == filters.

    Keras 3.15 on TensorFlow does: ``keras.ops.add`` rewrites ``x + bias.reshape(1, F, 1)``
    as ``tf.nn.bias_add(x, bias, data_format="NHWC")`` whenever ``x.shape[-1] == F``.
    Probed once per flavour with a 2-filter Conv1D, so a fixed Keras is picked up.
    """
    layer = flavour.keras.layers.Conv1D(2, 1, data_format="channels_first", dtype="float32")
    layer.build((None, 2, None))
    layer.set_weights([np.zeros((1, 2, 2), np.float32), np.array([0.0, 1.0], np.float32)])
    y = _call(flavour, layer, np.zeros((1, 2, 2), np.float32), _tensorflow_cpu_only(flavour))
    return bool(y[0, 0, 1] != 0.0)


def _checked_input(record: Any, x: Any) -> np.ndarray:
    first = record.layers[0] if isinstance(record, Chain) else record
    if isinstance(first, Conv):
        from .. import reference  # here, not at the top: the legacy readers (inspect) use this module without it

        return reference.check_input(first, x)[0]
    x = np.asarray(x)
    rank = first.spatial_rank
    if x.ndim != 2 + rank or x.shape[1] != first.in_channels:
        raise fail(
            ShapeError,
            "Input does not fit the transposed convolution",
            f"shape (N, {first.in_channels}, {', '.join(layouts.SPATIAL[rank]) if rank > 1 else 'L'}) (channels first)",
            f"shape {tuple(x.shape)}",
        )
    out = first.output_shape(x.shape[2:])
    if min(out) <= 0:
        raise fail(
            ShapeError,
            "The transposed convolution's crops leave no output for this input",
            "an input large enough for an output of at least 1 on every axis",
            f"input size {tuple(x.shape[2:])} -> output size {out}",
        )
    return x


def _refuse_misplaced_bias(flavour: Flavour, segment: Segment, record: Any, out: tuple[int, ...]) -> None:
    layer = segment.layer
    if not (layer.data_format == "channels_first" and layer.use_bias and out[-1] == record.out_channels):
        return
    if not bias_follows_length(flavour):
        return
    axis = _LAST_AXIS[segment.rank]
    raise fail(
        UnsupportedError,
        f"{flavour.name} {flavour.keras.__version__} adds a channels_first {type(layer).__name__}'s bias along the "
        f"{axis} axis when the output {axis} equals filters ({record.out_channels}), so this layer would compute wrong values",
        f"an input size whose output {axis} differs from filters",
        f"output size {out}",
        "Use another input size or data_format='channels_last', or call the layer inside a tf.function "
        "whose input shape is None (keras.ops.add turns the bias add into tf.nn.bias_add(data_format='NHWC')).",
    )


def run(flavour: Flavour, native: Any, x: Any) -> np.ndarray:
    """Apply ``native`` to ``x`` given as ``(N, C, *spatial)``; return ``(N, O, *spatial_out)`` as numpy."""
    parsed = parse(flavour, native)
    own, record = _read(flavour, parsed)  # validates the object and gives the sizes
    x = _checked_input(record, x)  # (N, C, *spatial): moved to the layer's data_format below
    spatial = tuple(int(n) for n in x.shape[2:])
    for segment, layer_record in zip(parsed.segments, own):
        out = _output_shape(layer_record, tuple(n + b + e for n, (b, e) in zip(spatial, segment.pads)))
        _refuse_misplaced_bias(flavour, segment, layer_record, out)
        spatial = tuple(n - b - e for n, (b, e) in zip(out, segment.crops))
    channels_last = parsed.data_format == "channels_last"
    x_native = np.ascontiguousarray(np.moveaxis(x, 1, -1)) if channels_last else x
    y = _call(flavour, native, x_native, _needs_xla(flavour, parsed.segments))
    return np.moveaxis(y, -1, 1) if parsed.output_format == "channels_last" else y
