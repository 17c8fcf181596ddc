"""One implementation behind both Keras adapters (Keras 3 ``keras`` and Keras 2 ``tf_keras``).

The two flavours differ only in the module they import, so every function here
takes a :class:`Flavour` that carries it.  Keras stores a ``Conv1D`` kernel as
``(K, I // groups, O)`` (layout ``"K I O"``) whatever the ``data_format``, and
cross-correlates, so weights move with one permutation from
:mod:`layoutconv.layouts` and no flip.

:func:`to_native` returns a plain ``Conv1D`` layer when Keras can spell the
padding, and otherwise a small built ``Sequential`` with zero padding in front:

=======================================  ===============================================
canonical padding                        native returned
=======================================  ===============================================
``"valid"``                              ``Conv1D(padding="valid")``
``"same_upper"`` (any stride)            ``Conv1D(padding="same")``
``"causal"``                             ``Conv1D(padding="causal")``
pads equal to one of the above           that layer (e.g. ``((1, 1),)`` with k=3, stride 1)
other ``((b, e),)``, ``"same_lower"``    ``Sequential([ZeroPadding1D((b, e)), Conv1D("valid")])``
``"same_lower"``, stride > 1             needs ``length=``: the pads depend on the input
                                         length, which Keras cannot express; the model is
                                         then right for inputs of that length only
=======================================  ===============================================

For ``channels_first`` the padding layer pads the length axis: Keras 3's
``ZeroPadding1D`` takes ``data_format``; tf_keras's does not, so it is wrapped
in a ``Permute((2, 1))`` pair.

A fused activation travels as the ``Conv1D``'s ``activation=``, named per flavour
by :data:`layoutconv.activations.KERAS_NAMES` (``hard_sigmoid`` is
``hard_sigmoid_keras3`` in Keras 3 and ``hard_sigmoid_keras2`` in tf_keras).
:func:`from_native` recognises the function by identity with what the flavour's
``activations.get(name)`` returns; softmax, custom functions and non-default
arguments are refused.  tf_keras has no ``hard_silu`` and no Keras 3
``hard_sigmoid``, and Keras 3 no Keras 2 ``hard_sigmoid``: :func:`to_native`
refuses those (naming the targets that have them) rather than substitute.

Facts established by experiment (TensorFlow 2.21, Keras 3.15, tf_keras 2.21, CPU):

- ``Conv1D(data_format="channels_first")`` cannot be called eagerly on CPU in either
  flavour: ``UnimplementedError: The Conv2D op currently only supports the NHWC
  tensor format on the CPU. The op was given the format: NCHW``.  The same layer
  runs when compiled by XLA (``tf.function(layer, jit_compile=True)``), which is
  what :func:`run` does on a machine without a GPU.  Grouped layers already
  take that XLA path inside Keras and run in both data formats.
- Grouped ``Conv1D`` (``groups > 1``), float16, bfloat16 and float64 all run on CPU.
- Keras refuses ``strides > 1`` together with ``dilation_rate > 1`` when the
  layer is made (``ValueError``), so :func:`to_native` raises ``UnsupportedError``.
- ``padding="same"`` with stride > 1 and even kernels pads like ``"same_upper"``
  (the odd extra pad at the end), checked by the tests on every backend run.
- ``set_weights`` and reading ``layer.kernel`` keep bytes for every float dtype;
  bfloat16 comes back as ``ml_dtypes.bfloat16``.
- In tf_keras ``Conv1DTranspose`` is a subclass of ``Conv1D``; it is refused.
- Keras 3 on TensorFlow computes a wrong channels_first ``Conv1D`` with bias when the
  (static) output length equals ``filters``: ``keras.ops.add`` turns
  ``x + bias.reshape(1, F, 1)`` into ``tf.nn.bias_add(..., data_format="NHWC")``
  whenever ``x.shape[-1] == F``, so the bias lands on the length axis
  (``keras.ops.add(zeros((1, 2, 2)), [[[0], [1]]])`` gives ``[[0, 1], [0, 1]]``).
  tf_keras and Keras 3 on PyTorch are right.  :func:`run` probes for this once
  (:func:`bias_follows_length`) and raises ``UnsupportedError`` for such inputs
  instead of reporting Keras's wrong numbers as a conversion failure.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, NamedTuple

import numpy as np

from .. import activations, layouts, reference
from ..conv import Conv1D
from ..errors import ConfigError, UnsupportedError, fail

KERNEL_LAYOUT = layouts.LAYOUTS["keras"]  # "K I O"
DATA_FORMATS = ("channels_last", "channels_first")
_OTHER_FORMAT = {"channels_last": "channels_first", "channels_first": "channels_last"}

#: Keras padding strings <-> canonical rules
TO_CANONICAL_PADDING: dict[str, str] = {"valid": "valid", "same": "same_upper", "causal": "causal"}
TO_KERAS_PADDING: dict[str, str] = {v: k for k, v in TO_CANONICAL_PADDING.items()}

#: how each flavour turns a variable or tensor into numpy
_TO_NUMPY: dict[str, Callable[[ModuleType, Any], np.ndarray]] = {
    # Variable.numpy() avoids np.array(variable), which NumPy 2 deprecates for Keras variables.
    "keras": lambda k, t: np.asarray(t.numpy() if isinstance(t, k.Variable) else k.ops.convert_to_numpy(t)),
    "tf_keras": lambda k, t: np.asarray(k.backend.get_value(t)),
}


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
            f"a built {self.name} Conv1D layer, or a Sequential of ZeroPadding1D / Permute((2, 1)) "
            f"layers followed by one Conv1D (what to_native returns)"
        )

    @property
    def padding_has_data_format(self) -> bool:
        """Keras 3's ZeroPadding1D takes data_format; tf_keras's does not."""
        return "data_format" in inspect.signature(self.keras.layers.ZeroPadding1D.__init__).parameters


class Parsed(NamedTuple):
    """A native Keras object taken apart: the Conv1D layer, the zero pads in front, the input data_format."""

    conv_layer: Any
    pads: tuple[int, int]
    data_format: str


# -- reading ------------------------------------------------------------------
def _is_conv1d(flavour: Flavour, obj: Any) -> bool:
    layers = flavour.keras.layers
    return isinstance(obj, layers.Conv1D) and not isinstance(obj, layers.Conv1DTranspose)


def _is_swap(flavour: Flavour, layer: Any) -> bool:
    return isinstance(layer, flavour.keras.layers.Permute) and tuple(layer.dims) == (2, 1)


def _wrong_type(flavour: Flavour, obj: Any) -> ConfigError:
    return fail(
        ConfigError,
        f"Cannot read a convolution from a {type(obj).__module__}.{type(obj).__name__}",
        flavour.accepted,
        f"{type(obj).__name__}",
        "For a layer inside a larger model, pass the layer itself: model.get_layer(name).",
    )


def parse(flavour: Flavour, native: Any) -> Parsed:
    """Find the Conv1D, the explicit zero pads before it, and the input data_format of ``native``."""
    if _is_conv1d(flavour, native):
        return Parsed(native, (0, 0), native.data_format)
    if not isinstance(native, flavour.keras.Sequential):
        raise _wrong_type(flavour, native)
    chain = [layer for layer in native.layers if not isinstance(layer, flavour.keras.layers.InputLayer)]
    if not chain or not _is_conv1d(flavour, chain[-1]) or any(_is_conv1d(flavour, layer) for layer in chain[:-1]):
        raise fail(
            ConfigError,
            "The Sequential model is not a padded Conv1D",
            flavour.accepted,
            f"layers {[type(layer).__name__ for layer in chain]}",
            "Pass the Conv1D layer itself: model.get_layer(name).",
        )
    conv_layer = chain[-1]
    # Walk backwards from the conv, tracking which layout the tensor is in.
    state, begin, end = conv_layer.data_format, 0, 0
    for layer in reversed(chain[:-1]):
        if _is_swap(flavour, layer):
            state = _OTHER_FORMAT[state]
        elif isinstance(layer, flavour.keras.layers.ZeroPadding1D):
            pads_length = getattr(layer, "data_format", "channels_last") == state
            if not pads_length:
                raise fail(
                    UnsupportedError,
                    f"ZeroPadding1D {layer.name!r} pads the channel axis, not the length",
                    "padding along the length axis only",
                    f"a {state} tensor padded as {getattr(layer, 'data_format', 'channels_last')}",
                )
            b, e = (int(v) for v in layer.padding)
            begin, end = begin + b, end + e
        else:
            raise fail(
                ConfigError,
                f"Layer {layer.name!r} ({type(layer).__name__}) is not part of a padded Conv1D",
                flavour.accepted,
                f"layers {[type(item).__name__ for item in chain]}",
                "Pass the Conv1D layer itself: model.get_layer(name).",
            )
    return Parsed(conv_layer, (begin, end), state)


def _check_layer(flavour: Flavour, layer: Any) -> None:
    if not layer.built:
        raise fail(
            ConfigError,
            f"Conv1D layer {layer.name!r} is not built, so it has no weights yet",
            "a built layer",
            "an unbuilt layer",
            "Build it first, e.g. layer.build((None, None, in_channels)) for channels_last, or call it on an input.",
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
        f"Conv1D layer {layer.name!r} has activation {described} built in: {why}",
        f"one of {flavour.name}'s {sorted(activations.KERAS_NAMES[flavour.name])} with its default arguments",
        f"activation={described}",
        f"Convert the convolution without it (layer.activation = {flavour.keras.__name__}.activations.linear) "
        "and apply the activation as its own layer after the converted one.",
    )


def keras_activation(flavour: Flavour, conv: Conv1D) -> str:
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


def from_native(flavour: Flavour, native: Any) -> Conv1D:
    """A built Keras ``Conv1D`` (or a model made by :func:`to_native`) as a :class:`Conv1D`, weights bit-exact."""
    parsed = parse(flavour, native)
    layer = parsed.conv_layer
    _check_layer(flavour, layer)
    kernel = flavour.to_numpy(layer.kernel)
    bias = flavour.to_numpy(layer.bias) if layer.use_bias else None
    conv = Conv1D(
        kernel,
        bias,
        stride=tuple(layer.strides),
        dilation=tuple(layer.dilation_rate),
        groups=int(getattr(layer, "groups", 1)),
        padding=TO_CANONICAL_PADDING[layer.padding],
        activation=read_activation(flavour, layer),
        layout=KERNEL_LAYOUT,
    )
    if parsed.pads == (0, 0):
        return conv
    if conv.padding_depends_on_length:
        raise fail(
            UnsupportedError,
            "ZeroPadding1D in front of Conv1D(padding='same') with stride > 1",
            "a fixed total padding",
            f"pads {parsed.pads} then 'same' with stride {conv.stride[0]}, which depends on the input length",
        )
    (b, e), = conv.pads()
    return conv.replace(padding=((parsed.pads[0] + b, parsed.pads[1] + e),))


# -- writing ------------------------------------------------------------------
def keras_padding(conv: Conv1D, length: int | None = None) -> tuple[str, tuple[int, int]]:
    """The Keras padding string for ``conv`` and the zero pads a padding layer must add in front."""
    if isinstance(conv.padding, str) and conv.padding in TO_KERAS_PADDING:
        return TO_KERAS_PADDING[conv.padding], (0, 0)
    if conv.padding_depends_on_length and length is None:
        raise fail(
            UnsupportedError,
            f"Keras cannot express padding {conv.padding!r} with stride {conv.stride[0]}",
            "a padding Keras has ('valid', 'same' = same_upper, 'causal') or pads that do not depend on the length",
            f"padding {conv.padding!r}, whose pads change with the input length",
            "Pass length=<input length> to build a model with explicit pads for that length only.",
        )
    pads = conv.pads(length)
    # A rule Keras has that gives exactly these pads (for every length) is preferred.
    for rule in ("valid", "causal", "same_upper"):
        candidate = conv.replace(padding=rule)
        if not candidate.padding_depends_on_length and candidate.pads() == pads:
            return TO_KERAS_PADDING[rule], (0, 0)
    return "valid", pads[0]


def _check_writable(conv: Conv1D, data_format: str, length: int | None) -> None:
    if not isinstance(conv, Conv1D):
        raise fail(ConfigError, "to_native needs a Conv1D", "a layoutconv.Conv1D", f"{type(conv).__name__}")
    if data_format not in DATA_FORMATS:
        raise fail(
            ConfigError, "Invalid value for argument `data_format`", f"one of {DATA_FORMATS}", f"data_format={data_format!r}"
        )
    if length is not None and (isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length <= 0):
        raise fail(
            ConfigError, "Invalid value for argument `length`", "a strictly positive integer or None", f"length={length!r}"
        )
    if conv.padding_mode != "zeros":
        raise fail(
            UnsupportedError,
            f"Keras cannot pad a convolution with padding_mode={conv.padding_mode!r}",
            "padding_mode='zeros' (Keras Conv1D and ZeroPadding1D only pad with zeros)",
            f"padding_mode={conv.padding_mode!r}",
            "Pad the input yourself before the layer, or convert to PyTorch/ONNX instead.",
        )
    if conv.stride[0] > 1 and conv.dilation[0] > 1:
        raise fail(
            UnsupportedError,
            "Keras Conv1D refuses strides > 1 together with dilation_rate > 1",
            "stride 1 or dilation 1",
            f"stride={conv.stride[0]}, dilation={conv.dilation[0]}",
            "Convert to PyTorch or ONNX, which support both at once.",
        )


def _padding_layers(flavour: Flavour, pads: tuple[int, int], data_format: str, dtype: str) -> list[Any]:
    layers = flavour.keras.layers
    if flavour.padding_has_data_format:
        return [layers.ZeroPadding1D(pads, data_format=data_format, dtype=dtype)]
    pad = layers.ZeroPadding1D(pads, dtype=dtype)
    if data_format == "channels_last":
        return [pad]
    return [layers.Permute((2, 1), dtype=dtype), pad, layers.Permute((2, 1), dtype=dtype)]


def to_native(flavour: Flavour, conv: Conv1D, data_format: str = "channels_last", length: int | None = None) -> Any:
    """A built Keras ``Conv1D`` (or padded ``Sequential``) with ``conv``'s weights, in ``data_format``."""
    _check_writable(conv, data_format, length)
    padding, pads = keras_padding(conv, length)
    activation = keras_activation(flavour, conv)
    dtype = conv.dtype.name
    layer = flavour.keras.layers.Conv1D(
        filters=conv.out_channels,
        kernel_size=conv.kernel_size,
        strides=conv.stride[0],
        padding=padding,
        data_format=data_format,
        dilation_rate=conv.dilation[0],
        groups=conv.groups,
        use_bias=conv.bias is not None,
        activation=activation,
        kernel_initializer="zeros",
        dtype=dtype,
    )
    input_shape = (None, conv.in_channels) if data_format == "channels_last" else (conv.in_channels, None)
    if pads == (0, 0):
        layer.build((None,) + input_shape)
        native = layer
    else:
        native = flavour.keras.Sequential(
            [flavour.keras.Input(input_shape, dtype=dtype), *_padding_layers(flavour, pads, data_format, dtype), layer]
        )
    weights = [layouts.from_canonical(conv.kernel, KERNEL_LAYOUT)]
    if conv.bias is not None:
        weights.append(conv.bias)
    layer.set_weights(weights)
    back = from_native(flavour, native)
    if back.activation != conv.activation:
        raise fail(
            UnsupportedError,
            f"{flavour.name} did not keep the activation",
            f"activation {conv.activation!r} read back",
            f"{back.activation!r}",
        )
    if not back.same_weights(conv):  # the same reload check safetensors' converter makes
        raise fail(
            UnsupportedError,
            f"{flavour.name} did not keep the weights bit-exact",
            f"kernel and bias of dtype {dtype} stored unchanged",
            f"dtype {back.dtype} with different bytes",
        )
    return native


# -- running ------------------------------------------------------------------
def _needs_xla(flavour: Flavour, data_format: str) -> bool:
    """TensorFlow on CPU runs channels_first convolutions only when XLA compiles them."""
    if data_format != "channels_first" or flavour.keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return not tf.config.list_physical_devices("GPU")


def _call(flavour: Flavour, native: Any, x_native: np.ndarray, data_format: str) -> np.ndarray:
    call = native
    if _needs_xla(flavour, data_format):
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
    """True when a channels_first Conv1D adds its bias along the length axis once length == filters.

    Keras 3.15 on TensorFlow does: ``keras.ops.add`` rewrites ``x + bias.reshape(1, F, 1)``
    as ``tf.nn.bias_add(x, bias, data_format="NHWC")`` whenever ``x.shape[-1] == F``.
    Probed once per flavour with a 2-filter layer, so a fixed Keras is picked up.
    """
    layer = flavour.keras.layers.Conv1D(2, 1, data_format="channels_first", dtype="float32")
    layer.build((None, 2, None))
    layer.set_weights([np.zeros((1, 2, 2), np.float32), np.array([0.0, 1.0], np.float32)])
    y = _call(flavour, layer, np.zeros((1, 2, 2), np.float32), "channels_first")
    return bool(y[0, 0, 1] != 0.0)


def run(flavour: Flavour, native: Any, x: Any) -> np.ndarray:
    """Apply ``native`` to ``x`` given as ``(N, C, L)``; return ``(N, O, L_out)`` as numpy."""
    conv = from_native(flavour, native)  # validates the object and gives the sizes
    parsed = parse(flavour, native)
    x, _ = reference.check_input(conv, x)  # (N, C, L): run transposes it for the layer's data_format
    layer = parsed.conv_layer
    out_length = conv.output_length(x.shape[-1])
    if (
        layer.data_format == "channels_first"
        and conv.bias is not None
        and out_length == conv.out_channels
        and bias_follows_length(flavour)
    ):
        raise fail(
            UnsupportedError,
            f"{flavour.name} {flavour.keras.__version__} adds a channels_first Conv1D's bias along the length axis "
            f"when the output length equals filters ({conv.out_channels}), so this layer would compute wrong values",
            "an input length whose output length differs from filters",
            f"input length {x.shape[-1]} -> output length {out_length}",
            "Use another input length or data_format='channels_last', or call the layer inside a tf.function "
            "whose input length is None (keras.ops.add turns the bias add into tf.nn.bias_add(data_format='NHWC')).",
        )
    channels_last = parsed.data_format == "channels_last"
    x_native = np.ascontiguousarray(x.transpose(0, 2, 1)) if channels_last else x
    y = _call(flavour, native, x_native, parsed.data_format)
    return y.transpose(0, 2, 1) if channels_last else y
