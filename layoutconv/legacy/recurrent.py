"""Recurrent layers from Keras weight files, in pure numpy: Keras 1's separate matrices and Keras 2/3's packed ones.

**Keras 1.0 - 1.2** (read from its source, ``keras/layers/recurrent.py`` at tags
1.0.0 to 1.2.2) built each gate from its own arrays, named ``{layer}_W_{gate}``
``(F, H)``, ``{layer}_U_{gate}`` ``(H, H)`` and ``{layer}_b_{gate}`` ``(H,)``, and
stored them in ``trainable_weights`` order, gate after gate:

=============  ===================================================================  =============
layer          stored arrays, in order                                              gate order
=============  ===================================================================  =============
``SimpleRNN``  ``W U b``                                                             --
``GRU``        ``W_z U_z b_z  W_r U_r b_r  W_h U_h b_h``                             ``z r h``
``LSTM``       ``W_i U_i b_i  W_c U_c b_c  W_f U_f b_f  W_o U_o b_o``                ``i c f o``
=============  ===================================================================  =============

(the LSTM *computes* with ``i f c o``: ``W = concatenate([W_i, W_f, W_c, W_o])``;
only the storage puts ``c`` second, and Keras 2's loader reorders it the same
way, ``saving.py``: ``weights[0], weights[6], weights[3], weights[9]``).  With
``consume_less='gpu'`` (1.0.4+) ``GRU`` and ``LSTM`` stored three packed
arrays instead, ``W`` ``(F, G*H)``, ``U`` ``(H, G*H)``, ``b`` ``(G*H,)``, gates
``z r h`` / ``i f c o``.  ``'cpu'`` and ``'mem'`` only change how the products
are computed.  Keras 1's config says ``output_dim`` (units) and
``inner_activation`` (the gates' activation, ``hard_sigmoid`` by default, which
is ``clip(0.2 x + 0.5, 0, 1)`` on Theano and TensorFlow alike).  Its GRU applies
the reset gate before the recurrent product (``reset_after=False``):
``hh = act(x W_h + b_h + (r * h) U_h)``, ``h = z * h_prev + (1 - z) * hh``.
``Bidirectional`` stores the forward layer's arrays, then the backward layer's
(names ``forward_<layer>_...``, ``backward_<layer>_...``); the backward layer is
the same layer with ``go_backwards`` flipped, and its sequence is flipped back
before the merge.  Recurrent layers compute matrix products, not convolutions:
nothing is flipped for Theano.

**Keras 2, tf.keras, tf_keras and Keras 3** store ``kernel`` ``(F, G*H)``,
``recurrent_kernel`` ``(H, G*H)`` and ``bias`` ``(G*H,)`` (``(2, 3H)`` for
``GRU(reset_after=True)``), gates ``i f c o`` / ``z r h``; ``hard_sigmoid`` is
Keras 2's function up to generation 2 and Keras 3's from 3.

>>> import numpy as np
>>> h, f = 2, 3
>>> arrays = {f"lstm_1_{m}_{g}": np.zeros((f, h) if m == "W" else (h, h) if m == "U" else (h,), "float32")
...           for g in "icfo" for m in "WUb"}
>>> from_keras1_weights("LSTM", {"output_dim": 2, "return_sequences": True}, arrays)
LSTM(input_size=3, units=2, recurrent_activation='hard_sigmoid_keras2', return_sequences=True, bias=True, recurrent_bias=False, dtype=float32)
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, FileFormatError, ShapeError, UnsupportedError, fail
from ..recurrent import GATE_ORDERS, GRU, RECORDS, Bidirectional, Recurrent, to_canonical

#: Keras class name -> record kind
KINDS: dict[str, str] = {"SimpleRNN": "rnn", "LSTM": "lstm", "GRU": "gru"}


def keras1_roles(kind: str, packed: bool) -> tuple[str, ...]:
    """The suffixes of a Keras 1 layer's arrays in stored order (``W_i U_i b_i W_c ...``, or ``W U b`` packed).

    Derived from the stored gate order :data:`layoutconv.recurrent.GATE_ORDERS` ``[(kind, "keras1")]``.
    """
    if kind == "rnn" or packed:
        return ("W", "U", "b")
    return tuple(f"{m}_{g}" for g in GATE_ORDERS[(kind, "keras1")].split() for m in ("W", "U", "b"))


def _kind(class_name: str) -> str:
    if class_name not in KINDS:
        raise fail(
            UnsupportedError,
            "Not a recurrent layer class layoutconv reads",
            f"one of {sorted(KINDS)} or Bidirectional",
            f"{class_name!r}",
        )
    return KINDS[class_name]


def _base(name: str) -> str:
    """A weight name without its group path and its TensorFlow ``:0`` suffix."""
    name = name.rsplit("/", 1)[-1]
    return name[:-2] if name.endswith(":0") else name


def _named(arrays: Any) -> list[tuple[str | None, np.ndarray]]:
    if isinstance(arrays, Mapping):
        return [(str(k), np.asarray(v)) for k, v in arrays.items()]
    out: list[tuple[str | None, np.ndarray]] = []
    for item in arrays:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            out.append((item[0], np.asarray(item[1])))
        else:
            out.append((None, np.asarray(item)))
    return out


def _by_role(items: list[tuple[str | None, np.ndarray]], roles: Sequence[str], what: str) -> list[np.ndarray]:
    """The arrays for ``roles``: by name suffix when every item is named, else by position."""
    if len(items) != len(roles):
        raise fail(
            FileFormatError,
            f"{what} has the wrong number of arrays",
            f"{len(roles)} ({' '.join(roles)})",
            f"{len(items)}: {[n for n, _ in items] if all(n for n, _ in items) else 'unnamed arrays'}",
        )
    if not all(n for n, _ in items):
        return [a for _, a in items]
    found = []
    for role in roles:
        # "kernel" must not take "recurrent_kernel": a name that ends in a longer role belongs to that role
        longer = [other for other in roles if other != role and other.endswith("_" + role)]
        matches = [
            a for n, a in items
            if (_base(n) == role or _base(n).endswith("_" + role)) and not any(_base(n).endswith(o) for o in longer)  # type: ignore[arg-type]
        ]  # fmt: skip
        if len(matches) != 1:
            raise fail(
                FileFormatError,
                f"{what}: cannot tell which array is {role!r}",
                f"exactly one name ending in '_{role}' among {[n for n, _ in items]}",
                f"{len(matches)} matches",
            )
        found.append(matches[0])
    return found


def _packed_in(items: list[tuple[str | None, np.ndarray]], kind: str) -> bool:
    if kind == "rnn":
        return True
    if all(n for n, _ in items):
        return not any(_base(n).endswith("_W_" + g) for n, _ in items for g in "izrfco")  # type: ignore[arg-type]
    return len(items) == 3


def _activation(name: Any, generation: int) -> str:
    from .semantics import keras_activation

    return keras_activation(name, generation)


def _refuse_stateful(config: Mapping[str, Any], what: str) -> None:
    if config.get("stateful"):
        raise fail(
            UnsupportedError,
            f"{what} is stateful: it carries its state from one batch to the next",
            "stateful=False (a record starts every sequence from zero states)",
            "stateful=True",
        )


def _check_units(layer: Recurrent, config: Mapping[str, Any], key: str, what: str) -> Recurrent:
    if key in config and config[key] is not None and int(config[key]) != layer.units:
        raise fail(
            ShapeError,
            f"{what}: the arrays disagree with the config",
            f"{key}={config[key]} units",
            f"arrays for {layer.units} units",
        )
    return layer


def _keras1_layer(kind: str, config: Mapping[str, Any], items: list[tuple[str | None, np.ndarray]], what: str) -> Recurrent:
    _refuse_stateful(config, what)
    packed = _packed_in(items, kind)
    consume = config.get("consume_less")
    if kind != "rnn" and consume is not None and (consume == "gpu") != packed:
        raise fail(
            FileFormatError,
            f"{what}: the arrays do not match consume_less={consume!r}",
            "3 packed arrays W U b" if consume == "gpu" else "separate arrays per gate (W_i U_i b_i ...)",
            f"{[n for n, _ in items]}",
        )
    roles = keras1_roles(kind, packed)
    arrays = _by_role(items, roles, what)
    if packed:
        w, u, b = arrays
        parts = (to_canonical(w, "I (G H)", kind, "keras"), to_canonical(u, "I (G H)", kind, "keras"), to_canonical(b, "(G H)", kind, "keras"))
    else:
        stacked = [np.stack(arrays[i::3]) for i in range(3)]  # W's, U's, b's, each in the stored gate order
        try:
            parts = (
                to_canonical(stacked[0], "G I H", kind, "keras1"),
                to_canonical(stacked[1], "G I H", kind, "keras1"),
                to_canonical(stacked[2], "G H", kind, "keras1"),
            )
        except ValueError as exc:  # pragma: no cover - np.stack of mismatched shapes
            raise fail(ShapeError, f"{what}: the gates' arrays differ in shape", "equal shapes per role", f"{exc}") from None
    fields: dict[str, Any] = dict(
        activation=_activation(config.get("activation", "tanh"), 1),
        return_sequences=bool(config.get("return_sequences", False)),
        go_backwards=bool(config.get("go_backwards", False)),
    )
    if kind != "rnn":
        fields["recurrent_activation"] = _activation(config.get("inner_activation", "hard_sigmoid"), 1)
    if kind == "gru":
        fields["reset_after"] = False  # Keras 1: hh = act(x W_h + b_h + (r * h) U_h)
    try:
        layer = RECORDS[kind](*parts, **fields)
    except (ConfigError, ShapeError) as exc:
        raise type(exc)(f"{what}: {exc}") from None
    return _check_units(layer, config, "output_dim", what)


def _halves(items: list[tuple[str | None, np.ndarray]], what: str) -> tuple[list, list]:
    """A Bidirectional's arrays: the ``forward_`` ones and the ``backward_`` ones (else the two halves, as Keras splits them)."""
    if all(n for n, _ in items):
        def side(name: str, prefix: str) -> bool:  # "forward_lstm_1_W_i", ".../forward_gru/gru_cell/kernel"
            return any(part.startswith(prefix) for part in name.split("/"))

        fw = [(n, a) for n, a in items if side(n, "forward_")]  # type: ignore[arg-type]
        bw = [(n, a) for n, a in items if side(n, "backward_")]  # type: ignore[arg-type]
        if fw and bw and len(fw) + len(bw) == len(items):
            return fw, bw
    if len(items) % 2:
        raise fail(FileFormatError, f"{what} has an odd number of arrays", "the forward layer's, then as many of the backward layer's", f"{len(items)}")
    return items[: len(items) // 2], items[len(items) // 2 :]


def _inner(config: Mapping[str, Any], what: str) -> tuple[str, dict[str, Any]]:
    layer = config.get("layer")
    if not isinstance(layer, Mapping) or not isinstance(layer.get("config"), Mapping):
        raise fail(FileFormatError, f"{what} has no wrapped layer in its config", "config['layer'] = {'class_name': ..., 'config': {...}}", f"{sorted(config)}")
    return str(layer.get("class_name")), dict(layer["config"])


def from_keras1_weights(kind: str, config: Mapping[str, Any], arrays_by_name: Any) -> Recurrent | Bidirectional:
    """A Keras 1 ``SimpleRNN``, ``LSTM``, ``GRU`` or ``Bidirectional`` from its config and stored arrays.

    Parameters
    ----------
    kind:
        The Keras class name (``"LSTM"``, ``"GRU"``, ``"SimpleRNN"``, ``"Bidirectional"``).
    config:
        The layer's Keras 1 config (``output_dim``, ``activation``, ``inner_activation``,
        ``return_sequences``, ``go_backwards``, ``consume_less``, ``stateful``; a
        Bidirectional's ``merge_mode`` and ``layer``).  Missing keys take Keras 1's defaults.
    arrays_by_name:
        ``{weight name: array}`` as the file stores them (``forward_lstm_1_W_i`` ...,
        matched by suffix, so group paths and ``:0`` do not matter), or the arrays in
        stored order (see the module documentation).
    """
    items = _named(arrays_by_name)
    what = f"Keras 1 {kind} {config.get('name', '')!r}".replace(" ''", "")
    if kind == "Bidirectional":
        inner_class, inner = _inner(config, what)
        fw_items, bw_items = _halves(items, what)
        fw = _keras1_layer(_kind(inner_class), inner, fw_items, f"{what} (forward)")
        backward_config = dict(inner, go_backwards=not inner.get("go_backwards", False))
        bw = _keras1_layer(_kind(inner_class), backward_config, bw_items, f"{what} (backward)")
        return Bidirectional(fw, bw, config.get("merge_mode", "concat"))
    return _keras1_layer(_kind(kind), config, items, what)


def _keras2_layer(kind: str, config: Mapping[str, Any], items: list[tuple[str | None, np.ndarray]], generation: int, what: str) -> Recurrent:
    _refuse_stateful(config, what)
    for flag in ("return_state", "time_major"):
        if config.get(flag):
            raise fail(UnsupportedError, f"{what} has {flag}=True", f"{flag}=False", f"{flag}=True")
    use_bias = bool(config.get("use_bias", True))
    roles = ("kernel", "recurrent_kernel") + (("bias",) if use_bias else ())
    kernel, recurrent, *rest = _by_role(items, roles, what)
    bias = recurrent_bias = None
    reset_after = bool(config.get("reset_after", False))
    if rest:
        stored = rest[0]
        if stored.ndim == 2:
            if kind != "gru" or not reset_after:
                raise fail(
                    ShapeError,
                    f"{what}: a 2-d bias belongs to a GRU with reset_after=True",
                    "a 1-d bias (G*H,)",
                    f"bias shape {stored.shape} with reset_after={config.get('reset_after')!r}",
                )
            bias, recurrent_bias = to_canonical(stored[0], "(G H)", kind, "keras"), to_canonical(stored[1], "(G H)", kind, "keras")
        else:
            bias = to_canonical(stored, "(G H)", kind, "keras")
    fields: dict[str, Any] = dict(
        activation=_activation(config.get("activation", "tanh"), generation),
        return_sequences=bool(config.get("return_sequences", False)),
        go_backwards=bool(config.get("go_backwards", False)),
    )
    if kind != "rnn":
        default = "hard_sigmoid" if generation == 2 else "sigmoid"  # Keras 2's default (tf.keras always writes it)
        fields["recurrent_activation"] = _activation(config.get("recurrent_activation", default), generation)
    if kind == "gru":
        fields["reset_after"] = reset_after
    try:
        layer = RECORDS[kind](
            to_canonical(kernel, "I (G H)", kind, "keras"), to_canonical(recurrent, "I (G H)", kind, "keras"), bias, recurrent_bias, **fields
        )
    except (ConfigError, ShapeError) as exc:
        raise type(exc)(f"{what}: {exc}") from None
    if isinstance(layer, GRU) and layer.reset_after and use_bias and recurrent_bias is None:
        raise fail(ShapeError, f"{what}: GRU(reset_after=True) stores a (2, 3H) bias", "bias of shape (2, 3H)", "a 1-d bias")
    return _check_units(layer, config, "units", what)


def from_keras2_weights(kind: str, config: Mapping[str, Any], arrays: Any, *, generation: int = 2) -> Recurrent | Bidirectional:
    """A Keras 2 / tf.keras (``generation=2``) or Keras 3 (``3``) recurrent layer from its config and stored arrays.

    ``arrays``: ``[kernel, recurrent_kernel, bias]`` in stored order (a Bidirectional's
    forward layer's, then its backward layer's), or ``{name: array}`` matched by
    suffix (``.../kernel:0``).  ``hard_sigmoid`` is read for the generation; a
    missing ``recurrent_activation`` is Keras 2's default ``hard_sigmoid``.
    """
    if generation not in (2, 3):
        raise fail(ConfigError, "Invalid value for argument `generation`", "2 (Keras 2, tf.keras, tf_keras) or 3 (Keras 3)", f"generation={generation!r}")
    items = _named(arrays)
    what = f"Keras {generation} {kind} {config.get('name', '')!r}".replace(" ''", "")
    if kind == "Bidirectional":
        inner_class, inner = _inner(config, what)
        fw_items, bw_items = _halves(items, what)
        backward = config.get("backward_layer")
        if isinstance(backward, Mapping) and isinstance(backward.get("config"), Mapping):
            bw_class, bw_config = str(backward.get("class_name")), dict(backward["config"])
        else:
            bw_class, bw_config = inner_class, dict(inner, go_backwards=not inner.get("go_backwards", False))
        fw = _keras2_layer(_kind(inner_class), inner, fw_items, generation, f"{what} (forward)")
        bw = _keras2_layer(_kind(bw_class), bw_config, bw_items, generation, f"{what} (backward)")
        return Bidirectional(fw, bw, config.get("merge_mode", "concat"))
    return _keras2_layer(_kind(kind), config, items, generation, what)
