"""Keras recurrent layers <-> recurrent records, for Keras 3 and tf_keras (one implementation, a :class:`Flavour` each).

``SimpleRNN``, ``LSTM``, ``GRU`` (and ``RNN`` around a ``SimpleRNNCell``,
``LSTMCell`` or ``GRUCell``) are :class:`~layoutconv.recurrent.SimpleRNN`,
:class:`~layoutconv.recurrent.LSTM`, :class:`~layoutconv.recurrent.GRU`;
``Bidirectional`` around them is :class:`~layoutconv.recurrent.Bidirectional`.
Keras stores ``kernel`` ``(F, G*H)`` and ``recurrent_kernel`` ``(H, G*H)``,
layout ``I (G H)``, with the gates in the order ``i f c o`` (LSTM) and
``z r h`` (GRU); the permutations come from :data:`layoutconv.recurrent.GATE_ORDERS`.

Biases: Keras has one ``bias`` ``(G*H,)``, except ``GRU(reset_after=True)``
whose ``bias`` is ``(2, 3H)``: row 0 the input bias, row 1 the recurrent one.
A record with two biases where Keras has one is written with their sum (in
float64, rounded once to the dtype): an LSTM, a SimpleRNN and a
``GRU(reset_after=False)`` add both biases to the same pre-activation, so that
is the same function, but the two halves cannot be read back separately;
:func:`layoutconv.recurrent.keras_form` is the record as Keras holds it, and
what :func:`from_native` gives back.

Activations are read by identity with the flavour's named functions (Keras 3
``hard_sigmoid`` is ``hard_sigmoid_keras3``, tf_keras ``hard_sigmoid`` is
``hard_sigmoid_keras2``); a record whose activation the flavour lacks is
refused, naming who can write it.  Keras' ``go_backwards`` returns the outputs
in processing order (the first output belongs to the last input step), which
is the record's meaning.

Facts established by experiment (Keras 3.15 and tf_keras 2.21 on TensorFlow 2.21, CPU):

- ``go_backwards=True, return_sequences=True`` equals the forward layer on the
  time-reversed input, *not* flipped back; ``Bidirectional`` flips its backward
  layer's sequence back before merging.
- Defaults: ``recurrent_activation="sigmoid"``, GRU ``reset_after=True`` (both flavours).
- SimpleRNN, LSTM and GRU run in float16, float32 and float64; bfloat16 fails in
  TensorFlow (``Value for attr 'T' of bfloat16 is not in the list of allowed values``).
- ``Bidirectional`` weights are the forward layer's then the backward layer's.

Refused: ``stateful=True`` (state carried between batches), ``return_state=True``
(several outputs), ``merge_mode=None`` (two outputs), stacked cells, and
subclasses that override ``call``.  Dropout only acts in training and is ignored.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .. import activations, registry
from ..errors import ConfigError, ShapeError, UnsupportedError, fail
from ..recurrent import GRU, RECORDS, Bidirectional, Recurrent, check_input, from_canonical, keras_form, to_canonical
from . import _keras_common as _common
from ._keras_common import Flavour

#: Keras layer class -> record kind (``RNN`` takes the kind of its cell)
LAYER_KINDS: dict[str, str | None] = {"SimpleRNN": "rnn", "LSTM": "lstm", "GRU": "gru", "RNN": None}
#: Keras cell class -> record kind
CELL_KINDS: dict[str, str] = {"SimpleRNNCell": "rnn", "LSTMCell": "lstm", "GRUCell": "gru"}
#: record kind -> the Keras layer class written
WRITE_CLASS: dict[str, str] = {"rnn": "SimpleRNN", "lstm": "LSTM", "gru": "GRU"}
#: Keras' layout of ``kernel`` and ``recurrent_kernel``, and of a bias
KERNEL_LAYOUT = "I (G H)"
BIAS_LAYOUT = "(G H)"

_ELSEWHERE = "Convert to PyTorch (target 'torch') instead, which writes every recurrent record."


# -- which objects are ours -----------------------------------------------------
@functools.lru_cache(maxsize=None)
def _tables(flavour: Flavour) -> tuple[dict[type, str | None], dict[type, str], type]:
    layers = flavour.keras.layers
    return (
        {getattr(layers, name): kind for name, kind in LAYER_KINDS.items()},
        {getattr(layers, name): kind for name, kind in CELL_KINDS.items()},
        layers.Bidirectional,
    )


def _known_base(obj: Any, table: dict[type, Any]) -> type | None:
    """The flavour's class ``obj`` is, or derives from without overriding ``call``."""
    for cls in type(obj).__mro__:
        if cls in table:
            return cls if type(obj).call is cls.call else None
    return None


def reads(flavour: Flavour, obj: Any) -> bool:
    """True for the recurrent layers :func:`from_native` reads (the Keras adapters hand them here)."""
    layer_table, _, bidirectional = _tables(flavour)
    return isinstance(obj, bidirectional) or any(isinstance(obj, cls) for cls in layer_table)


def _unsupported(flavour: Flavour, obj: Any, why: str) -> Exception:
    return fail(
        UnsupportedError,
        f"Not a {flavour.name} recurrent layer layoutconv reads: {why}",
        f"a built {flavour.name} SimpleRNN, LSTM, GRU, RNN(SimpleRNNCell | LSTMCell | GRUCell) or a Bidirectional "
        "of one (subclasses must not override call)",
        f"{type(obj).__module__}.{type(obj).__qualname__}" + (f" {obj.name!r}" if hasattr(obj, "name") else ""),
    )


# -- activations ---------------------------------------------------------------
def _read_activation(flavour: Flavour, function: Any, where: str) -> str:
    keywords, arguments, bare = {}, (), function
    if isinstance(function, functools.partial):
        bare, keywords, arguments = function.func, dict(function.keywords), function.args
    name = next((canonical for known, canonical in _common._known_activations(flavour) if known is bare), None)
    if name is not None and not arguments and not _common._changed_defaults(bare, keywords):
        return name
    raise fail(
        UnsupportedError,
        f"{where} is {_common._describe(function)}, not one of the activations a record holds",
        f"one of {flavour.name}'s {sorted(activations.KERAS_NAMES[flavour.name])} with its default arguments",
        f"{_common._describe(function)}",
    )


def keras_activation_name(flavour: Flavour, canonical: str, what: str) -> str:
    """The flavour's name for a canonical activation, or an UnsupportedError naming who has it."""
    names = activations.KERAS_NAMES[flavour.name]
    found = next((keras_name for keras_name, c in names.items() if c == canonical), None)
    if found is not None:
        return found
    able = [f for f, table in activations.KERAS_NAMES.items() if canonical in table.values()] + ["torch"]
    raise fail(
        UnsupportedError,
        f"{flavour.name} has no activation computing {canonical} ({activations.get(canonical).formula}) for `{what}`",
        f"one of the activations {flavour.name} has: {sorted(set(names.values()))}",
        f"{what}={canonical!r}",
        f"Convert to {', '.join(able)} instead. No other {flavour.name} function is silently substituted.",
    )


# -- reading ---------------------------------------------------------------------
def _read_layer(flavour: Flavour, layer: Any) -> Recurrent:
    layer_table, cell_table, _ = _tables(flavour)
    base = _known_base(layer, layer_table)
    if base is None:
        raise _unsupported(flavour, layer, "not a plain recurrent layer")
    cell = getattr(layer, "cell", None)
    cell_base = _known_base(cell, cell_table)
    if cell_base is None:
        raise _unsupported(flavour, layer, f"its cell {type(cell).__name__} is not a SimpleRNNCell, LSTMCell or GRUCell")
    kind = cell_table[cell_base]
    for flag, why in (("stateful", "it carries its state from one batch to the next"), ("return_state", "it returns its states too")):
        if getattr(layer, flag, False):
            raise fail(
                UnsupportedError,
                f"{type(layer).__name__} layer {layer.name!r} has {flag}=True: {why}",
                f"{flag}=False (a record starts from zero states and has one output)",
                f"{flag}=True",
                f"Rebuild the layer with {flag}=False and the same weights.",
            )
    if not layer.built or getattr(cell, "kernel", None) is None:
        raise fail(
            ConfigError,
            f"{type(layer).__name__} layer {layer.name!r} has no weights yet",
            "a built layer",
            "an unbuilt layer",
            "Call it once on an input (or build it) first.",
        )
    kernel = flavour.to_numpy(cell.kernel)
    recurrent = flavour.to_numpy(cell.recurrent_kernel)
    bias = recurrent_bias = None
    if getattr(cell, "bias", None) is not None:
        stored = flavour.to_numpy(cell.bias)
        if stored.ndim == 2:  # GRU(reset_after=True): (2, 3H), input bias then recurrent bias
            bias, recurrent_bias = stored[0], stored[1]
        else:
            bias = stored
    where = f"{type(layer).__name__} layer {layer.name!r}"
    fields: dict[str, Any] = dict(
        activation=_read_activation(flavour, cell.activation, f"{where}'s activation"),
        return_sequences=bool(layer.return_sequences),
        go_backwards=bool(layer.go_backwards),
    )
    if kind != "rnn":
        fields["recurrent_activation"] = _read_activation(flavour, cell.recurrent_activation, f"{where}'s recurrent_activation")
    if kind == "gru":
        fields["reset_after"] = bool(cell.reset_after)
    order = "keras"
    return RECORDS[kind](
        to_canonical(kernel, KERNEL_LAYOUT, kind, order),
        to_canonical(recurrent, KERNEL_LAYOUT, kind, order),
        None if bias is None else to_canonical(bias, BIAS_LAYOUT, kind, order),
        None if recurrent_bias is None else to_canonical(recurrent_bias, BIAS_LAYOUT, kind, order),
        **fields,
    )


def from_native(flavour: Flavour, layer: Any) -> Recurrent | Bidirectional:
    """A built recurrent layer (or a ``Bidirectional`` of one) as a record; weights keep their dtype and bytes."""
    _, _, bidirectional = _tables(flavour)
    if isinstance(layer, bidirectional):
        if type(layer).call is not bidirectional.call:
            raise _unsupported(flavour, layer, "a Bidirectional subclass that overrides call")
        fw, bw = _read_layer(flavour, layer.forward_layer), _read_layer(flavour, layer.backward_layer)
        return Bidirectional(fw, bw, layer.merge_mode)
    return _read_layer(flavour, layer)


# -- writing ---------------------------------------------------------------------
def _keras_weights(layer: Recurrent) -> list[np.ndarray]:
    """``[kernel, recurrent_kernel(, bias)]`` as ``set_weights`` takes them, from a record in Keras form."""
    kind, order = layer.KIND, "keras"
    out = [from_canonical(layer.kernel, KERNEL_LAYOUT, kind, order), from_canonical(layer.recurrent_kernel, KERNEL_LAYOUT, kind, order)]
    if isinstance(layer, GRU) and layer.reset_after and layer.bias is not None:
        out.append(np.stack([from_canonical(b, BIAS_LAYOUT, kind, order) for b in (layer.bias, layer.recurrent_bias)]))
    elif layer.bias is not None:
        out.append(from_canonical(layer.bias, BIAS_LAYOUT, kind, order))
    return out


def _spec(flavour: Flavour, layer: Recurrent) -> tuple[str, dict[str, Any]]:
    options: dict[str, Any] = dict(
        units=layer.units,
        activation=keras_activation_name(flavour, layer.activation, "activation"),
        use_bias=layer.bias is not None,
        return_sequences=layer.return_sequences,
        go_backwards=layer.go_backwards,
        dtype=layer.dtype.name,
    )
    if layer.KIND != "rnn":
        options["recurrent_activation"] = keras_activation_name(flavour, layer.recurrent_activation, "recurrent_activation")  # type: ignore[attr-defined]
    options["kernel_initializer"] = options["recurrent_initializer"] = "zeros"  # the weights are set right after
    if isinstance(layer, GRU):
        options["reset_after"] = layer.reset_after
    return WRITE_CLASS[layer.KIND], options


def _make(flavour: Flavour, layer: Recurrent) -> Any:
    name, options = _spec(flavour, layer)
    return getattr(flavour.keras.layers, name)(**options)


def _check_dtype(flavour: Flavour, record: Any) -> None:
    if record.dtype.name == "bfloat16":
        raise fail(
            UnsupportedError,
            f"{flavour.name}'s recurrent layers cannot run in bfloat16",
            "float16, float32 or float64 (TensorFlow has no bfloat16 kernel for them)",
            "dtype bfloat16",
            _ELSEWHERE,
        )


def to_native(flavour: Flavour, record: Recurrent | Bidirectional, data_format: str = "channels_last") -> Any:
    """A built Keras layer computing ``record`` (in Keras form, see :func:`layoutconv.recurrent.keras_form`).

    The layer takes ``(N, T, F)``, as every Keras recurrent layer does; ``data_format``
    exists for the registry's sake and must be ``"channels_last"``.  What was
    written is read back and compared bit for bit with the record in Keras form.
    """
    if not isinstance(record, (Recurrent, Bidirectional)):
        raise fail(ConfigError, "to_native needs a recurrent record", "a SimpleRNN, LSTM, GRU or Bidirectional", f"{type(record).__name__}")
    if data_format != "channels_last":
        raise fail(
            UnsupportedError,
            "Keras recurrent layers have no data_format",
            "data_format='channels_last' (they take (N, T, F))",
            f"data_format={data_format!r}",
        )
    _check_dtype(flavour, record)
    want = keras_form(record)
    shape = (None, None, record.input_size)
    if isinstance(want, Bidirectional):
        fw, bw = _make(flavour, want.forward), _make(flavour, want.backward)
        native = flavour.keras.layers.Bidirectional(fw, backward_layer=bw, merge_mode=want.merge_mode, dtype=want.dtype.name)
        native.build(shape)
        native.forward_layer.set_weights(_keras_weights(want.forward))
        native.backward_layer.set_weights(_keras_weights(want.backward))
    else:
        native = _make(flavour, want)
        native.build(shape)
        native.set_weights(_keras_weights(want))
    back = from_native(flavour, native)
    if back != want:  # the same reload check safetensors' converter makes
        raise fail(
            UnsupportedError,
            f"{flavour.name} did not keep the recurrent layer as written",
            f"{want!r} read back with the same bytes",
            f"{back!r}",
        )
    return native


# -- running ---------------------------------------------------------------------
def run(flavour: Flavour, native: Any, x: Any) -> np.ndarray:
    """Apply ``native`` to a canonical ``x`` ``(N, F, T)``; return canonical numpy ``(N, C, T)`` or ``(N, C)``."""
    record = from_native(flavour, native)
    x = check_input(record, x)
    _check_dtype(flavour, record)
    x_native = np.ascontiguousarray(np.moveaxis(x, 1, 2)).astype(record.dtype, copy=False)  # (N, T, F)
    time_major = bool(getattr(native, "time_major", False))
    if time_major:
        x_native = np.ascontiguousarray(np.moveaxis(x_native, 0, 1))
    y = _common._call(flavour, native, x_native, False)
    if y.ndim == 3:
        if time_major:
            y = np.moveaxis(y, 0, 1)
        y = np.ascontiguousarray(np.moveaxis(y, 2, 1))
    if y.ndim not in (2, 3):
        raise fail(ShapeError, "The layer returned an unexpected shape", "(N, T, C) or (N, C)", f"{tuple(y.shape)}")
    return y


def register(flavour: Flavour) -> None:
    """Register the recurrent converters of one Keras flavour (called at the bottom of its adapter module)."""
    for kind in (Recurrent, Bidirectional):
        registry.register(
            kind,
            flavour.name,
            to_native=lambda record, data_format="channels_last": to_native(flavour, record, data_format),
            run=lambda native, x: run(flavour, native, x),
        )
