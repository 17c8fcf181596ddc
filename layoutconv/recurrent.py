r"""Recurrent layers as records: :class:`SimpleRNN`, :class:`LSTM`, :class:`GRU` and :class:`Bidirectional`.

A recurrent record holds four arrays in one float dtype, with the gates packed
along the first axis in **PyTorch's order** (LSTM ``i f g o``, GRU ``r z n``):

=====================  =====================  ===================================================
array                  shape                  role
=====================  =====================  ===================================================
``kernel``             ``(G*H, F)``           input weights, layout ``(G H) I``
``recurrent_kernel``   ``(G*H, H)``           recurrent weights, layout ``(G H) I``
``bias``               ``(G*H,)`` or None     added to the input part (PyTorch ``bias_ih``, ONNX ``Wb``)
``recurrent_bias``     ``(G*H,)`` or None     added to the recurrent part (``bias_hh``, ``Rb``)
=====================  =====================  ===================================================

``G`` is the number of gates (1, 4, 3), ``H`` the units, ``F`` the input
features.  Both biases are kept as read: PyTorch and ONNX have two, Keras has
one (and a second for ``GRU(reset_after=True)``), and a round trip must give
back the same bytes.

Every framework packs the gates in its own order; the orders are data
(:data:`GATE_ORDERS`) and every reordering is derived from the names by
:func:`to_canonical` / :func:`from_canonical` (einops style: the packed axis
is ``(G H)``), never sliced by hand:

>>> import numpy as np
>>> keras_kernel = np.arange(2 * 4 * 3).reshape(2, 12)            # Keras LSTM: (F, 4H), gates i f c o
>>> to_canonical(keras_kernel, "I (G H)", "lstm", "keras").shape  # (4H, F), gates i f g o
(12, 2)
>>> gate_permutation("lstm", "onnx", "torch")                     # ONNX i o f c -> PyTorch i f g o
(0, 2, 3, 1)

The data layout is layoutconv's channels-first: the input is ``(N, F, T)``;
the output ``(N, H, T)`` with ``return_sequences``, else ``(N, H)``.
:func:`forward` is the executable definition (see ``docs/layouts.md``,
"Recurrent layers", for every cell's formula), ``h`` and ``c`` start at zero.
``go_backwards`` reads the input from its last step to its first and returns
the outputs in that processing order, as Keras does (checked against Keras 3
and tf_keras: the output is *not* flipped back).
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Sequence

import numpy as np

from . import activations
from .errors import ConfigError, ShapeError, fail
from .record import FLOAT_DTYPES, Record, float_dtype, frozen_array

#: every framework's order of the gates on the packed axis, by gate name.  ``c`` and
#: ``g`` (LSTM cell input) are one gate, and so are ``h`` and ``n`` (GRU candidate).
#: "keras" covers Keras 2, tf.keras, tf_keras, Keras 3 and Keras 1's packed
#: ``consume_less='gpu'`` arrays; "keras1" is the order in which Keras 1 *stored*
#: its separate per-gate arrays (``W_i U_i b_i W_c U_c b_c W_f ...``), read from
#: its source (1.0.0 - 1.2.2, ``LSTM.trainable_weights``).
GATE_ORDERS: dict[tuple[str, str], str] = {
    ("rnn", "torch"): "h",
    ("rnn", "keras"): "h",
    ("rnn", "keras1"): "h",
    ("rnn", "onnx"): "h",
    ("lstm", "torch"): "i f g o",
    ("lstm", "keras"): "i f c o",
    ("lstm", "keras1"): "i c f o",
    ("lstm", "onnx"): "i o f c",
    ("gru", "torch"): "r z n",
    ("gru", "keras"): "z r h",
    ("gru", "keras1"): "z r h",
    ("gru", "onnx"): "z r h",
}
#: gate names that are the same gate, per kind (mapped to the canonical name)
SYNONYMS: dict[str, dict[str, str]] = {"rnn": {}, "lstm": {"c": "g"}, "gru": {"h": "n"}}
#: the canonical order is PyTorch's
CANONICAL_ORDER: dict[str, str] = {kind: GATE_ORDERS[(kind, "torch")] for kind in SYNONYMS}
#: framework spellings -> the key used in :data:`GATE_ORDERS`
_ORDER_ALIASES = {"canonical": "torch", "pytorch": "torch", "tf_keras": "keras", "keras2": "keras", "keras3": "keras"}

#: The canonical layout of a kernel and of a bias: the packed axis first.
CANONICAL_LAYOUT = "(G H) I"
CANONICAL_BIAS_LAYOUT = "(G H)"
#: The most elements the reference keeps for one input (2**28: 2 GiB in float64), checked first.
MAX_ELEMENTS = 1 << 28


# ---------------------------------------------------------------------------
# Gate orders and layouts as data
# ---------------------------------------------------------------------------
def gate_names(kind: str, order: str) -> tuple[str, ...]:
    """The canonical gate names of ``order`` (a framework in :data:`GATE_ORDERS`, or names such as ``"i f c o"``)."""
    if kind not in SYNONYMS:
        raise fail(ConfigError, "Unknown recurrent kind", f"one of {sorted(SYNONYMS)}", f"{kind!r}")
    key = _ORDER_ALIASES.get(order, order)
    text = GATE_ORDERS.get((kind, key), order)
    names = tuple(SYNONYMS[kind].get(n, n) for n in str(text).split())
    if sorted(names) != sorted(CANONICAL_ORDER[kind].split()):
        frameworks = sorted({f for k, f in GATE_ORDERS if k == kind})
        raise fail(
            ConfigError,
            f"Invalid gate order for a {kind}",
            f"a framework ({', '.join(frameworks)}) or each of the gates {CANONICAL_ORDER[kind]!r} once "
            f"(synonyms {SYNONYMS[kind] or 'none'})",
            f"{order!r}",
        )
    return names


@functools.lru_cache(maxsize=None)
def gate_permutation(kind: str, source: str, target: str) -> tuple[int, ...]:
    """``perm`` such that gate ``k`` of ``target`` is gate ``perm[k]`` of ``source`` (orders by framework or names)."""
    src, dst = gate_names(kind, source), gate_names(kind, target)
    return tuple(src.index(name) for name in dst)


class _Layout:
    """A parsed layout: elementary axes (``G``, ``H``, optional ``I`` and ``D``) and how they are grouped."""

    def __init__(self, text: str) -> None:
        self.text = text
        groups: list[tuple[str, ...]] = []
        current: list[str] | None = None
        for token in text.replace("(", " ( ").replace(")", " ) ").split():
            if token == "(":
                if current is not None:
                    raise self._error()
                current = []
            elif token == ")":
                if not current:
                    raise self._error()
                groups.append(tuple(current))
                current = None
            elif current is not None:
                current.append(token)
            else:
                groups.append((token,))
        axes = [a for g in groups for a in g]
        if current is not None or sorted(set(axes)) != sorted(axes) or not {"G", "H"} <= set(axes) or not set(axes) <= {"G", "H", "I", "D"}:
            raise self._error()
        self.groups = tuple(groups)
        self.axes = tuple(axes)

    def _error(self) -> Exception:
        return fail(
            ShapeError,
            f"Invalid recurrent weight layout {self.text!r}",
            "the axis names G (gates) and H (units) once each, optionally I (inputs of the matrix) and D "
            "(stacked biases or directions), grouped with parentheses as in '(G H) I' or 'I (G H)'",
            f"{self.text!r}",
        )


@functools.lru_cache(maxsize=None)
def _parse(layout: str) -> _Layout:
    return _Layout(layout)


def _convert(array: Any, kind: str, source: str, source_order: str, target: str, target_order: str) -> np.ndarray:
    src, dst = _parse(source), _parse(target)
    if set(src.axes) != set(dst.axes):
        raise fail(ShapeError, "Layouts name different axes", f"the axes of {source!r}", f"{target!r}")
    array = np.asarray(array)
    gates = len(CANONICAL_ORDER[kind].split())
    if array.ndim != len(src.groups):
        raise fail(
            ShapeError,
            f"Array does not fit the layout {source!r}",
            f"{len(src.groups)} axes",
            f"shape {tuple(array.shape)}",
        )
    sizes: dict[str, int] = {}
    for group, n in zip(src.groups, array.shape):
        if len(group) == 1:
            sizes[group[0]] = int(n)
        elif "G" in group and len(group) == 2:
            other = group[1] if group[0] == "G" else group[0]
            if n % gates:
                raise fail(
                    ShapeError,
                    f"The packed axis of a {kind} is not a multiple of its {gates} gates",
                    f"size gates * units on the {'(' + ' '.join(group) + ')'} axis of layout {source!r}",
                    f"shape {tuple(array.shape)}",
                )
            sizes["G"], sizes[other] = gates, int(n) // gates
        else:
            raise _parse(source)._error()
    if sizes["G"] != gates:
        raise fail(ShapeError, f"A {kind} has {gates} gates", f"size {gates} on the G axis", f"shape {tuple(array.shape)}")
    elementary = array.reshape([sizes[a] for a in src.axes])
    g = src.axes.index("G")
    elementary = np.take(elementary, gate_permutation(kind, source_order, target_order), axis=g)
    moved = np.transpose(elementary, [src.axes.index(a) for a in dst.axes])
    shape = [int(np.prod([sizes[a] for a in group])) for group in dst.groups]
    return np.ascontiguousarray(moved.reshape(shape))


def bias_layout_of(layout: str) -> str:
    """The layout of a bias that goes with a kernel in ``layout``: the same without ``I`` (``"I (G H)"`` -> ``"(G H)"``)."""
    groups = [g for g in _parse(layout).groups if g != ("I",)]
    return " ".join(g[0] if len(g) == 1 else "(" + " ".join(g) + ")" for g in groups)


def to_canonical(array: Any, layout: str, kind: str, order: str) -> np.ndarray:
    """``array`` (in ``layout``, gates in ``order``) as a canonical kernel ``(G H) I`` or bias ``(G H)``; values unchanged.

    ``order`` is a framework of :data:`GATE_ORDERS` or gate names.  Layout axes:
    ``G`` gates, ``H`` units, ``I`` the matrix's inputs, grouped by parentheses.

    >>> import numpy as np
    >>> to_canonical(np.array([1.0, 2.0, 3.0]), "(G H)", "gru", "keras")   # z r h -> r z n
    array([2., 1., 3.])
    """
    target = CANONICAL_LAYOUT if "I" in _parse(layout).axes else CANONICAL_BIAS_LAYOUT
    return _convert(array, kind, layout, order, target, "torch")


def from_canonical(array: Any, layout: str, kind: str, order: str) -> np.ndarray:
    """A canonical kernel ``(G H) I`` or bias ``(G H)`` in ``layout`` with the gates in ``order`` (values unchanged)."""
    source = CANONICAL_LAYOUT if "I" in _parse(layout).axes else CANONICAL_BIAS_LAYOUT
    return _convert(array, kind, source, "torch", layout, order)


# ---------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------
def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise fail(ConfigError, f"Invalid value for argument `{name}`", "True or False", f"{name}={value!r}")
    return bool(value)


class Recurrent(Record):
    """What :class:`SimpleRNN`, :class:`LSTM` and :class:`GRU` share: four arrays, activations, direction, output.

    Parameters (common to the three)
    --------------------------------
    kernel:
        ``(G*H, F)`` in the canonical gate order, or another layout named by
        ``layout`` with the gates in ``gate_order`` (e.g. ``layout="I (G H)",
        gate_order="keras"`` for a Keras kernel).
    recurrent_kernel:
        ``(G*H, H)``, in the same layout and order as ``kernel``.
    bias, recurrent_bias:
        ``(G*H,)`` or ``None`` each (in ``gate_order`` too).
    activation:
        The cell's activation (tanh by default), a name of :mod:`layoutconv.activations`.
    return_sequences:
        Output every step ``(N, H, T)`` (True) or the last one ``(N, H)`` (False).
    go_backwards:
        Read the input from its last step to its first; the outputs stay in that order.
    """

    __slots__ = ("kernel", "recurrent_kernel", "bias", "recurrent_bias", "activation", "return_sequences", "go_backwards")
    ARRAYS = ("kernel", "recurrent_kernel", "bias", "recurrent_bias")
    #: "rnn", "lstm" or "gru": the key of :data:`GATE_ORDERS`
    KIND: ClassVar[str] = ""

    kernel: np.ndarray
    recurrent_kernel: np.ndarray
    bias: np.ndarray | None
    recurrent_bias: np.ndarray | None
    activation: str
    return_sequences: bool
    go_backwards: bool

    @classmethod
    def gates(cls) -> int:
        return len(CANONICAL_ORDER[cls.KIND].split())

    def _set_arrays(self, kernel: Any, recurrent_kernel: Any, bias: Any, recurrent_bias: Any, layout: str | None, gate_order: str) -> None:
        kind, order = self.KIND, gate_order
        if layout is not None or gate_names(kind, order) != gate_names(kind, "torch"):
            kernel_layout = layout or CANONICAL_LAYOUT
            bias_layout = bias_layout_of(kernel_layout)
            kernel = to_canonical(kernel, kernel_layout, kind, order)
            recurrent_kernel = to_canonical(recurrent_kernel, kernel_layout, kind, order)
            bias = None if bias is None else to_canonical(bias, bias_layout, kind, order)
            recurrent_bias = None if recurrent_bias is None else to_canonical(recurrent_bias, bias_layout, kind, order)
        kernel = np.asarray(kernel)
        recurrent_kernel = np.asarray(recurrent_kernel)
        g, name, order_text = self.gates(), type(self).__name__, CANONICAL_ORDER[kind]
        hint = (
            f"Keras stores (F, {g}H) with the gates {GATE_ORDERS[(kind, 'keras')]!r}: pass layout='I (G H)', "
            "gate_order='keras'."
        )
        if kernel.ndim != 2 or kernel.shape[0] % g or 0 in kernel.shape:
            raise fail(
                ShapeError,
                f"{name} kernel has the wrong shape",
                f"a 2-d array (gates * units, input_size) = ({g}*H, F) with the gates in the order {order_text!r}",
                f"shape {tuple(kernel.shape)}",
                hint,
            )
        units = kernel.shape[0] // g
        if recurrent_kernel.shape != (g * units, units):
            raise fail(
                ShapeError,
                f"{name} recurrent_kernel does not match the kernel",
                f"shape ({g}*H, H) = {(g * units, units)} for the kernel's {units} units",
                f"shape {tuple(recurrent_kernel.shape)}",
                hint,
            )
        set_ = self._set
        set_("kernel", frozen_array("kernel", kernel))
        set_("recurrent_kernel", frozen_array("recurrent_kernel", recurrent_kernel))
        for field, value in (("bias", bias), ("recurrent_bias", recurrent_bias)):
            if value is not None:
                value = frozen_array(field, value)
                if value.shape != (g * units,):
                    raise fail(
                        ShapeError,
                        f"{name} {field} does not match the kernel",
                        f"shape ({g * units},): {g} gates x {units} units",
                        f"shape {tuple(value.shape)}",
                        "Keras 3 and tf_keras store a GRU(reset_after=True) bias as (2, 3H): row 0 is `bias`, "
                        "row 1 `recurrent_bias`." if kind == "gru" else "",
                    )
            set_(field, value)
        dtypes = {a.dtype.name for a in (self.kernel, self.recurrent_kernel, self.bias, self.recurrent_bias) if a is not None}
        if len(dtypes) > 1:
            raise fail(
                ConfigError,
                f"{name} arrays have different dtypes",
                "one float dtype for the kernels and biases",
                f"{sorted(dtypes)}",
                "Cast them to one dtype first.",
            )

    def _set_common(self, activation: Any, return_sequences: Any, go_backwards: Any) -> None:
        self._set("activation", activations.canonical(activation))
        self._set("return_sequences", _flag("return_sequences", return_sequences))
        self._set("go_backwards", _flag("go_backwards", go_backwards))

    # -- derived sizes ----------------------------------------------------
    @property
    def dtype(self) -> np.dtype:
        return self.kernel.dtype

    @property
    def units(self) -> int:
        """``H``: the size of the hidden state and of one step's output."""
        return int(self.recurrent_kernel.shape[1])

    @property
    def input_size(self) -> int:
        """``F``: the features of one input step."""
        return int(self.kernel.shape[1])

    in_channels = input_size

    @property
    def out_channels(self) -> int:
        return self.units

    def astype(self, dtype: Any) -> "Recurrent":
        """A copy with every array cast to ``dtype`` (a name of :data:`layoutconv.record.FLOAT_DTYPES` or a dtype)."""
        target = float_dtype(dtype) if isinstance(dtype, str) else np.dtype(dtype)
        cast = {name: None if getattr(self, name) is None else getattr(self, name).astype(target) for name in self.ARRAYS}
        return self.replace(**cast)

    def output_shape(self, batch: int, steps: int) -> tuple[int, ...]:
        """``(N, H, T)`` with ``return_sequences``, else ``(N, H)``."""
        return (batch, self.units, steps) if self.return_sequences else (batch, self.units)

    def hyperparameters(self) -> dict[str, Any]:
        """Everything but the weights, as plain Python values."""
        out: dict[str, Any] = dict(kind=type(self).__name__, input_size=self.input_size, units=self.units)
        out.update({f: getattr(self, f) for f in self.FIELDS})
        out.update(bias=self.bias is not None, recurrent_bias=self.recurrent_bias is not None, dtype=self.dtype.name)
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Recurrent):
            return NotImplemented
        return type(self) is type(other) and self.same_weights(other) and self.hyperparameters() == other.hyperparameters()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        defaults = {
            "activation": "tanh", "recurrent_activation": "sigmoid", "reset_after": True, "return_sequences": False, "go_backwards": False,
        }
        parts = [f"input_size={self.input_size}", f"units={self.units}"]
        parts += [f"{f}={getattr(self, f)!r}" for f in self.FIELDS if getattr(self, f) != defaults.get(f, object())]
        parts += [f"bias={self.bias is not None}", f"recurrent_bias={self.recurrent_bias is not None}", f"dtype={self.dtype.name}"]
        return f"{type(self).__name__}({', '.join(parts)})"


class SimpleRNN(Recurrent):
    """A fully connected recurrent layer: ``h_t = act(W x_t + b + U h_{t-1} + b_r)``.

    >>> import numpy as np
    >>> rnn = SimpleRNN(np.ones((4, 3)), np.eye(4), return_sequences=True)
    >>> rnn
    SimpleRNN(input_size=3, units=4, return_sequences=True, bias=False, recurrent_bias=False, dtype=float64)
    """

    __slots__ = ()
    KIND = "rnn"
    FIELDS = ("activation", "return_sequences", "go_backwards")

    def __init__(
        self,
        kernel: Any,
        recurrent_kernel: Any,
        bias: Any = None,
        recurrent_bias: Any = None,
        *,
        activation: Any = "tanh",
        return_sequences: bool = False,
        go_backwards: bool = False,
        layout: str | None = None,
        gate_order: str = "torch",
    ) -> None:
        self._set_arrays(kernel, recurrent_kernel, bias, recurrent_bias, layout, gate_order)
        self._set_common(activation, return_sequences, go_backwards)


class LSTM(Recurrent):
    """Long short-term memory, gates ``i f g o``: ``c_t = f * c_{t-1} + i * g``, ``h_t = o * act(c_t)``.

    ``i f o`` use ``recurrent_activation`` (sigmoid by default; Keras 1 and 2
    default to ``hard_sigmoid_keras2``), ``g`` and the output use ``activation``.

    >>> import numpy as np
    >>> LSTM(np.zeros((8, 3), "float32"), np.zeros((8, 2), "float32"), np.zeros(8, "float32"))
    LSTM(input_size=3, units=2, bias=True, recurrent_bias=False, dtype=float32)
    """

    __slots__ = ("recurrent_activation",)
    KIND = "lstm"
    FIELDS = ("activation", "recurrent_activation", "return_sequences", "go_backwards")
    recurrent_activation: str

    def __init__(
        self,
        kernel: Any,
        recurrent_kernel: Any,
        bias: Any = None,
        recurrent_bias: Any = None,
        *,
        activation: Any = "tanh",
        recurrent_activation: Any = "sigmoid",
        return_sequences: bool = False,
        go_backwards: bool = False,
        layout: str | None = None,
        gate_order: str = "torch",
    ) -> None:
        self._set_arrays(kernel, recurrent_kernel, bias, recurrent_bias, layout, gate_order)
        self._set_common(activation, return_sequences, go_backwards)
        self._set("recurrent_activation", activations.canonical(recurrent_activation))


class GRU(Recurrent):
    """Gated recurrent unit, gates ``r z n``: ``h_t = (1 - z) * n + z * h_{t-1}``.

    ``reset_after=True`` (PyTorch, ONNX ``linear_before_reset=1``, Keras 3 and
    tf_keras default) applies the reset gate after the recurrent product,
    ``n = act(W_n x + b_n + r * (U_n h + b_rn))``; ``reset_after=False`` (Keras 1,
    Keras 2 default) before it, ``n = act(W_n x + b_n + U_n (r * h) + b_rn)``,
    which ``torch.nn.GRU`` cannot compute.

    >>> import numpy as np
    >>> GRU(np.zeros((6, 3)), np.zeros((6, 2)), reset_after=False)
    GRU(input_size=3, units=2, reset_after=False, bias=False, recurrent_bias=False, dtype=float64)
    """

    __slots__ = ("recurrent_activation", "reset_after")
    KIND = "gru"
    FIELDS = ("activation", "recurrent_activation", "reset_after", "return_sequences", "go_backwards")
    recurrent_activation: str
    reset_after: bool

    def __init__(
        self,
        kernel: Any,
        recurrent_kernel: Any,
        bias: Any = None,
        recurrent_bias: Any = None,
        *,
        activation: Any = "tanh",
        recurrent_activation: Any = "sigmoid",
        reset_after: bool = True,
        return_sequences: bool = False,
        go_backwards: bool = False,
        layout: str | None = None,
        gate_order: str = "torch",
    ) -> None:
        self._set_arrays(kernel, recurrent_kernel, bias, recurrent_bias, layout, gate_order)
        self._set_common(activation, return_sequences, go_backwards)
        self._set("recurrent_activation", activations.canonical(recurrent_activation))
        self._set("reset_after", _flag("reset_after", reset_after))


#: kind -> record class
RECORDS: dict[str, type[Recurrent]] = {cls.KIND: cls for cls in (SimpleRNN, LSTM, GRU)}
#: How the outputs of the two directions of a :class:`Bidirectional` are merged (Keras' names).
MERGE_MODES = ("concat", "sum", "mul", "ave")


class Bidirectional(Record):
    """Two recurrent records over the same input, their outputs merged (Keras ``Bidirectional`` semantics).

    ``y = merge(forward(x), flip(backward(x)))`` with ``flip`` the time reversal
    when the layers return sequences (nothing otherwise): the backward layer's
    outputs are put back in input order, so step ``t`` of both halves belongs to
    input step ``t``.  ``backward.go_backwards`` must differ from
    ``forward.go_backwards``, as Keras requires; with ``forward.go_backwards=False``
    this is PyTorch's ``bidirectional=True`` and ONNX ``direction="bidirectional"``.
    ``concat`` puts the forward units first.

    >>> import numpy as np
    >>> fw = LSTM(np.zeros((8, 3)), np.zeros((8, 2)))
    >>> Bidirectional(fw, fw.replace(go_backwards=True), "sum").out_channels
    2
    """

    __slots__ = ("forward", "backward", "merge_mode")
    FIELDS = ("forward", "backward", "merge_mode")

    forward: Recurrent
    backward: Recurrent
    merge_mode: str

    def __init__(self, forward: Recurrent, backward: Recurrent, merge_mode: str | None = "concat") -> None:
        for name, layer in (("forward", forward), ("backward", backward)):
            if not isinstance(layer, Recurrent):
                raise fail(
                    ConfigError,
                    f"Bidirectional `{name}` is not a recurrent record",
                    "a layoutconv SimpleRNN, LSTM or GRU",
                    f"{type(layer).__name__}",
                )
        if merge_mode is None:
            raise fail(
                ConfigError,
                "Bidirectional merge_mode=None returns two tensors",
                f"one of {MERGE_MODES} (a record has one output)",
                "merge_mode=None",
                "Convert the two directions as two records: Bidirectional.forward and a backward record with "
                "go_backwards=True, whose sequence output is in reversed time order.",
            )
        if merge_mode not in MERGE_MODES:
            raise fail(ConfigError, "Invalid value for argument `merge_mode`", f"one of {MERGE_MODES}", f"merge_mode={merge_mode!r}")
        problems = []
        if forward.input_size != backward.input_size:
            problems.append(f"input_size {forward.input_size} != {backward.input_size}")
        if forward.return_sequences != backward.return_sequences:
            problems.append(f"return_sequences {forward.return_sequences} != {backward.return_sequences}")
        if forward.go_backwards == backward.go_backwards:
            problems.append(f"both have go_backwards={forward.go_backwards}")
        if forward.dtype != backward.dtype:
            problems.append(f"dtype {forward.dtype.name} != {backward.dtype.name}")
        if merge_mode != "concat" and forward.units != backward.units:
            problems.append(f"units {forward.units} != {backward.units} with merge_mode={merge_mode!r}")
        if problems:
            raise fail(
                ConfigError,
                "The two directions of a Bidirectional do not fit",
                "the same input_size, return_sequences and dtype, opposite go_backwards, and the same units "
                "unless merge_mode='concat'",
                "; ".join(problems),
                "Build the backward layer as forward.replace(go_backwards=not forward.go_backwards, ...).",
            )
        self._set("forward", forward)
        self._set("backward", backward)
        self._set("merge_mode", merge_mode)

    @property
    def dtype(self) -> np.dtype:
        return self.forward.dtype

    @property
    def input_size(self) -> int:
        return self.forward.input_size

    in_channels = input_size

    @property
    def return_sequences(self) -> bool:
        return self.forward.return_sequences

    @property
    def out_channels(self) -> int:
        if self.merge_mode == "concat":
            return self.forward.units + self.backward.units
        return self.forward.units

    def astype(self, dtype: Any) -> "Bidirectional":
        """A copy with both directions' arrays cast to ``dtype``."""
        return Bidirectional(self.forward.astype(dtype), self.backward.astype(dtype), self.merge_mode)

    def output_shape(self, batch: int, steps: int) -> tuple[int, ...]:
        return (batch, self.out_channels, steps) if self.return_sequences else (batch, self.out_channels)

    def same_weights(self, other: Record) -> bool:
        return isinstance(other, Bidirectional) and self.forward.same_weights(other.forward) and self.backward.same_weights(other.backward)

    def hyperparameters(self) -> dict[str, Any]:
        return dict(
            kind="Bidirectional",
            merge_mode=self.merge_mode,
            forward=self.forward.hyperparameters(),
            backward=self.backward.hyperparameters(),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Bidirectional):
            return NotImplemented
        return self.merge_mode == other.merge_mode and self.forward == other.forward and self.backward == other.backward

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Bidirectional({self.forward!r}, {self.backward!r}, merge_mode={self.merge_mode!r})"


# ---------------------------------------------------------------------------
# The reference pass
# ---------------------------------------------------------------------------
def check_input(record: Recurrent | Bidirectional, x: Any) -> np.ndarray:
    """Check that ``x`` is a channels-first sequence ``(N, F, T)`` the record takes; return it as an array."""
    x = np.asarray(x)
    f = record.input_size
    if x.ndim != 3 or x.shape[1] != f or x.shape[2] < 1:
        hint = "Add a batch axis with x[None]." if x.ndim == 2 else "Transpose a batch-first (N, T, F) input with x.transpose(0, 2, 1)."
        raise fail(
            ShapeError,
            f"Input does not fit the {type(record).__name__}",
            f"shape (N, {f}, T): batch, features, steps (channels first), T >= 1",
            f"shape {tuple(x.shape)}",
            hint,
        )
    if x.dtype.kind not in "fiu" and x.dtype.name not in FLOAT_DTYPES:
        raise fail(ConfigError, "Input is not numeric", "a float array", f"dtype {x.dtype}")
    units = record.out_channels if isinstance(record, Bidirectional) else record.units
    elements = int(x.shape[0]) * int(x.shape[2]) * max(units, f) * 8
    if elements > MAX_ELEMENTS:
        raise fail(
            ShapeError,
            "The input is too large for the reference pass",
            f"batch x steps x 8 x max(units, features) <= {MAX_ELEMENTS}",
            f"{elements}",
            "Use a smaller batch or a shorter sequence.",
        )
    return x


def _weights(layer: Recurrent, dtype: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    zeros = np.zeros(layer.kernel.shape[0], dtype)
    b = zeros if layer.bias is None else layer.bias.astype(dtype)
    rb = zeros if layer.recurrent_bias is None else layer.recurrent_bias.astype(dtype)
    return layer.kernel.astype(dtype), layer.recurrent_kernel.astype(dtype), b, rb


def _act(name: str, v: np.ndarray) -> np.ndarray:
    return activations.apply(name, v)


def _steps(layer: Recurrent, x: np.ndarray, dtype: Any) -> np.ndarray:
    """The outputs ``(T, N, H)`` in processing order, for ``x`` given as ``(N, F, T)``."""
    w, u, b, rb = _weights(layer, dtype)
    xs = np.moveaxis(x.astype(dtype, copy=False), 2, 0)  # (T, N, F)
    if layer.go_backwards:
        xs = xs[::-1]
    units = layer.units
    xw = xs @ w.T + b  # every step's input part at once: (T, N, G*H)
    h = np.zeros((x.shape[0], units), dtype)
    c = np.zeros_like(h)
    out = np.empty((xs.shape[0], x.shape[0], units), dtype)
    kind, act = layer.KIND, layer.activation
    gate = getattr(layer, "recurrent_activation", None)
    for t in range(xs.shape[0]):
        if kind == "rnn":
            h = _act(act, xw[t] + h @ u.T + rb)
        elif kind == "lstm":
            i, f, g, o = np.split(xw[t] + h @ u.T + rb, 4, axis=1)
            c = _act(gate, f) * c + _act(gate, i) * _act(act, g)
            h = _act(gate, o) * _act(act, c)
        else:
            xr, xz, xn = np.split(xw[t], 3, axis=1)
            if layer.reset_after:  # type: ignore[attr-defined]
                hr, hz, hn = np.split(h @ u.T + rb, 3, axis=1)
                r, z = _act(gate, xr + hr), _act(gate, xz + hz)
                n = _act(act, xn + r * hn)
            else:
                u_r, u_z, u_n = np.split(u, 3, axis=0)
                rb_r, rb_z, rb_n = np.split(rb, 3)
                r, z = _act(gate, xr + h @ u_r.T + rb_r), _act(gate, xz + h @ u_z.T + rb_z)
                n = _act(act, xn + (r * h) @ u_n.T + rb_n)
            h = (1 - z) * n + z * h
        out[t] = h
    return out


def _layer_output(layer: Recurrent, x: np.ndarray, dtype: Any) -> np.ndarray:
    steps = _steps(layer, x, dtype)
    return np.moveaxis(steps, 0, 2) if layer.return_sequences else steps[-1]


def _merge(mode: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if mode == "concat":
        return np.concatenate([a, b], axis=1)
    if mode == "sum":
        return a + b
    if mode == "mul":
        return a * b
    return (a + b) / 2


def forward(record: Recurrent | Bidirectional, x: Any, dtype: Any = np.float64) -> np.ndarray:
    """Apply a recurrent record to ``x`` ``(N, F, T)`` in numpy; ``(N, H, T)`` or ``(N, H)`` (see the module doc).

    Weights and inputs are cast to ``dtype`` (float64 by default) first.  One
    Python loop over the time steps; every step is vectorised over the batch
    and the units, and the input part of every step is one matrix product.

    >>> import numpy as np
    >>> rnn = SimpleRNN(np.array([[1.0]]), np.array([[0.5]]), activation="linear", return_sequences=True)
    >>> forward(rnn, np.array([[[1.0, 0.0, 0.0]]]))
    array([[[1.  , 0.5 , 0.25]]])
    """
    x = check_input(record, x)
    if isinstance(record, Bidirectional):
        a = _layer_output(record.forward, x, dtype)
        b = _layer_output(record.backward, x, dtype)
        if record.return_sequences:
            b = b[..., ::-1]
        return _merge(record.merge_mode, a, b)
    return _layer_output(record, x, dtype)


# ---------------------------------------------------------------------------
# The tolerance
# ---------------------------------------------------------------------------
def _lip(name: str) -> float:
    return activations.get(name).lipschitz


def _bounds(layer: Recurrent, x: np.ndarray, rtol: float, atol: float) -> np.ndarray:
    """Elementwise bounds ``(T, N, H)`` on a framework's error, carried through every step (first order)."""
    w, u, b, rb = _weights(layer, np.float64)
    aw, au, ab, arb = np.abs(w), np.abs(u), np.abs(b), np.abs(rb)
    xs = np.moveaxis(x.astype(np.float64), 2, 0)
    if layer.go_backwards:
        xs = xs[::-1]
    xw, mag_xw = xs @ w.T + b, np.abs(xs) @ aw.T + ab
    n_batch, units = x.shape[0], layer.units
    h = np.zeros((n_batch, units))
    c = np.zeros_like(h)
    e_h = np.zeros_like(h)
    e_c = np.zeros_like(h)
    out = np.empty((xs.shape[0], n_batch, units))
    kind, act = layer.KIND, layer.activation
    gate = getattr(layer, "recurrent_activation", None)

    def rounded(value: np.ndarray, magnitude: np.ndarray, carried: np.ndarray) -> np.ndarray:
        # a sum's own rounding (atol + rtol * the magnitude of its terms) plus the error it was given
        return carried + atol + rtol * magnitude

    def activated(name: str, pre: np.ndarray, err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        value = _act(name, pre)
        return value, _lip(name) * err + rtol * np.abs(value)

    for t in range(xs.shape[0]):
        if kind in ("rnn", "lstm"):
            pre = xw[t] + h @ u.T + rb
            e_pre = rounded(pre, mag_xw[t] + np.abs(h) @ au.T + arb, e_h @ au.T)
            if kind == "rnn":
                h, e_h = activated(act, pre, e_pre)
            else:
                parts, errs = np.split(pre, 4, axis=1), np.split(e_pre, 4, axis=1)
                (i, e_i), (f, e_f), (g, e_g), (o, e_o) = (
                    activated(name, p, e) for name, p, e in zip((gate, gate, act, gate), parts, errs)
                )
                new_c = f * c + i * g
                e_c = np.abs(c) * e_f + np.abs(f) * e_c + np.abs(g) * e_i + np.abs(i) * e_g + rtol * (np.abs(f * c) + np.abs(i * g))
                c = new_c
                a_c, e_ac = activated(act, c, e_c)
                h, e_h = o * a_c, np.abs(a_c) * e_o + np.abs(o) * e_ac + rtol * np.abs(o * a_c)
        else:
            xr, xz, xn = np.split(xw[t], 3, axis=1)
            mr, mz, mn = np.split(mag_xw[t], 3, axis=1)
            u_r, u_z, u_n = np.split(u, 3, axis=0)
            a_r, a_z, a_n = np.split(au, 3, axis=0)
            rb_r, rb_z, rb_n = np.split(rb, 3)
            ar_r, ar_z, ar_n = np.split(arb, 3)
            pre_r, pre_z = xr + h @ u_r.T + rb_r, xz + h @ u_z.T + rb_z
            r, e_r = activated(gate, pre_r, rounded(pre_r, mr + np.abs(h) @ a_r.T + ar_r, e_h @ a_r.T))
            z, e_z = activated(gate, pre_z, rounded(pre_z, mz + np.abs(h) @ a_z.T + ar_z, e_h @ a_z.T))
            if layer.reset_after:  # type: ignore[attr-defined]
                hn = h @ u_n.T + rb_n
                e_hn = rounded(hn, np.abs(h) @ a_n.T + ar_n, e_h @ a_n.T)
                pre_n = xn + r * hn
                e_pre_n = rounded(pre_n, mn + np.abs(r * hn), np.abs(r) * e_hn + np.abs(hn) * e_r)
            else:
                rh = r * h
                e_rh = np.abs(r) * e_h + np.abs(h) * e_r + rtol * np.abs(rh)
                pre_n = xn + rh @ u_n.T + rb_n
                e_pre_n = rounded(pre_n, mn + np.abs(rh) @ a_n.T + ar_n, e_rh @ a_n.T)
            n, e_n = activated(act, pre_n, e_pre_n)
            new_h = (1 - z) * n + z * h
            e_h = np.abs(n - h) * e_z + np.abs(1 - z) * e_n + np.abs(z) * e_h + rtol * (np.abs((1 - z) * n) + np.abs(z * h))
            h = new_h
        out[t] = e_h
    return out


def _layer_bound(layer: Recurrent, x: np.ndarray, rtol: float, atol: float) -> np.ndarray:
    steps = _bounds(layer, x, rtol, atol)
    return np.moveaxis(steps, 0, 2) if layer.return_sequences else steps[-1]


def tolerance(record: Recurrent | Bidirectional, x: Any, expected: np.ndarray | None = None) -> tuple[np.ndarray, float, float]:
    """Elementwise tolerance for a framework's output of ``record`` on ``x``: ``(tol, rtol, atol)``.

    The project's policy (``layoutconv.tolerance``) carried through the cell:
    every sum is allowed ``atol + rtol * (magnitude of its terms)`` with
    ``torch.testing.assert_close``'s ``(rtol, atol)`` for the dtype; every
    activation multiplies the error it is given by its slope bound and adds
    ``rtol * |result|``; every product ``a * b`` carries ``|a| e_b + |b| e_a``.
    The hidden (and cell) state's bound is carried to the next step through
    ``|U|``, so the tolerance grows with the sequence exactly as far as the
    first-order error can.  A wrong gate order or a missing bias is an error of
    the order of the output itself and fails by orders of magnitude.
    """
    from .tolerance import rtol_atol

    x = check_input(record, x)
    rtol, atol = rtol_atol(record.dtype)
    if isinstance(record, Bidirectional):
        a = _layer_bound(record.forward, x, rtol, atol)
        b = _layer_bound(record.backward, x, rtol, atol)
        if record.return_sequences:
            b = b[..., ::-1]
        if record.merge_mode == "concat":
            return np.concatenate([a, b], axis=1), rtol, atol
        if expected is None:
            expected = forward(record, x)
        if record.merge_mode == "mul":
            ya = _layer_output(record.forward, x, np.float64)
            yb = _layer_output(record.backward, x, np.float64)
            if record.return_sequences:
                yb = yb[..., ::-1]
            return np.abs(yb) * a + np.abs(ya) * b + rtol * np.abs(expected), rtol, atol
        scale = 0.5 if record.merge_mode == "ave" else 1.0
        return scale * (a + b) + rtol * np.abs(expected), rtol, atol
    return _layer_bound(record, x, rtol, atol), rtol, atol


# ---------------------------------------------------------------------------
# Keras' single bias
# ---------------------------------------------------------------------------
def _folded(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None or b is None:
        return a if b is None else b  # no arithmetic: the same bytes
    return (a.astype(np.float64) + b.astype(np.float64)).astype(a.dtype)


def keras_form(record: Recurrent | Bidirectional) -> Any:
    """The record as Keras holds it: one bias, except ``GRU(reset_after=True)``, which keeps both.

    An LSTM, a SimpleRNN and a ``GRU(reset_after=False)`` add ``bias`` and
    ``recurrent_bias`` to the same pre-activation (for the GRU candidate too:
    ``U_n (r * h) + b_rn`` leaves ``b_rn`` outside the reset gate), so Keras
    stores their sum, computed in float64 and rounded once to the dtype; when
    one of them is ``None`` the other is kept as it is.  A ``GRU(reset_after=True)``
    with only one of the two gets zeros for the other (Keras stores both or none).
    A record already in Keras form is returned unchanged.
    """
    if isinstance(record, Bidirectional):
        fw, bw = keras_form(record.forward), keras_form(record.backward)
        return record if fw is record.forward and bw is record.backward else Bidirectional(fw, bw, record.merge_mode)
    if isinstance(record, GRU) and record.reset_after:
        if (record.bias is None) == (record.recurrent_bias is None):
            return record
        zeros = np.zeros(record.kernel.shape[0], record.dtype)
        return record.replace(
            bias=zeros if record.bias is None else record.bias,
            recurrent_bias=zeros if record.recurrent_bias is None else record.recurrent_bias,
        )
    if record.recurrent_bias is None:
        return record
    return record.replace(bias=_folded(record.bias, record.recurrent_bias), recurrent_bias=None)


#: the record classes of this module (for ``isinstance`` checks elsewhere)
LAYER_TYPES = (Recurrent, Bidirectional)
#: record class -> its reference pass (``reference.forward`` dispatches through it)
FORWARD = {Recurrent: forward, Bidirectional: forward}
#: record class -> its tolerance (``tolerance.tolerance`` dispatches through it)
TOLERANCE = {Recurrent: tolerance, Bidirectional: tolerance}


def default_input(record: Recurrent | Bidirectional, *, steps: int = 7, batch: int = 2, seed: int = 0) -> np.ndarray:
    """A symmetry-breaking input ``(N, F, T)``: standard normal values, an odd number of steps."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, record.input_size, steps)).astype(record.dtype)


def layers(record: Recurrent | Bidirectional) -> Sequence[Recurrent]:
    """The recurrent layers of a record: itself, or a Bidirectional's forward and backward."""
    return (record.forward, record.backward) if isinstance(record, Bidirectional) else (record,)
