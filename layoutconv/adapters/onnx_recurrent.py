"""ONNX ``RNN``, ``LSTM`` and ``GRU`` nodes for the recurrent records, both ways.

**The model's layout.**  Like every model layoutconv writes, :func:`to_native`
takes the canonical channels-first input ``x`` of shape ``(N, F, T)`` and
writes ``y`` of shape ``(N, C, T)`` (``return_sequences``) or ``(N, C)``, so
a convolution's output feeds it without a transpose of the user's own.  The
recurrent operators want ``(T, N, F)`` (``layout=0``): a ``Transpose`` node
moves the input there, and ``Transpose``/``Reshape``/``Squeeze`` nodes bring
``Y`` ``(T, D, N, H)`` or ``Y_h`` ``(D, N, H)`` back.  Sizes ``N`` and ``T``
are dynamic.

=======================================  ======================================================
record                                   graph
=======================================  ======================================================
one direction                            ``direction="forward"``
``go_backwards``                         ``direction="reverse"``; with ``return_sequences`` a
                                         ``Slice(step=-1)`` puts ``Y`` in processing order, as
                                         Keras returns it (ONNX aligns ``Y`` with the input)
``Bidirectional`` (forward first)        ``direction="bidirectional"``; ``concat`` is the
                                         direction axis folded into the channels (forward
                                         first); ``sum``/``mul``/``ave``: ``Split`` then
                                         ``Add``/``Mul``/``Add``+``Div(2)``
=======================================  ======================================================

Weights: ``W`` ``(D, G*H, F)``, ``R`` ``(D, G*H, H)``, ``B`` ``(D, 2*G*H)`` (``Wb``
then ``Rb``) with the gates in ONNX's order (LSTM ``i o f c``, GRU ``z r h``),
reordered from the record's by :func:`layoutconv.recurrent.from_canonical`.  ``B`` holds
both biases or neither; a record's missing bias is written as zeros and the
node's ``doc_string`` hint (``layoutconv: ...``) says so, with ``return_sequences``,
``go_backwards`` and ``merge_mode``.  Activations are written explicitly
(``activations``, with ``activation_alpha``/``activation_beta`` for those that
take them, in order, as onnxruntime consumes them): tanh, sigmoid, relu,
softsign, softplus, ``linear`` (``Affine(1, 0)``), ``leaky_relu``
(``LeakyRelu(0.2)``), ``elu`` (``Elu(1)``), ``hard_sigmoid_keras2``
(``HardSigmoid(0.2, 0.5)``), ``hard_sigmoid_keras3`` (``HardSigmoid(1/6, 0.5)``);
other activations have no ONNX recurrent function and are refused.  GRU
``reset_after`` is ``linear_before_reset``.

:func:`from_native` reads one recurrent node (``node=`` picks among several):
with the hint it restores the record as written; without it, ``return_sequences``
is whether ``Y`` is used, ``reverse`` means ``go_backwards`` (its ``Y`` is refused:
aligned with the input, it is no record's output) and ``bidirectional`` is ``concat``.
Refused: ``clip``, ``input_forget=1``, peepholes, ``sequence_lens``, non-zero
initial states, an LSTM whose ``g`` and ``h`` activations differ.

Facts established by experiment (onnx 1.23, onnxruntime 1.32, CPU): onnxruntime
runs ``RNN``, ``LSTM`` and ``GRU`` in float32 and float16; not in float64 (``RNN``:
no kernel, ``LSTM``/``GRU``: "does not support double yet"), which :func:`run`
reports as :class:`~layoutconv.UnsupportedError`.  onnxruntime gives
``activation_alpha``/``activation_beta`` values only to the functions that take
them, in order (``[HardSigmoid, Tanh, Tanh]`` with ``alpha=[0.2]`` is right).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from .. import __version__, activations, registry
from ..errors import ConfigError, FileFormatError, LayoutError, UnsupportedError, fail
from ..recurrent import GRU, LSTM, RECORDS, Bidirectional, Recurrent, SimpleRNN, check_input, from_canonical, to_canonical
from . import onnx_adapter as _onnx

NAME = "onnx"
#: record kind <-> ONNX operator
OPS: dict[str, str] = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}
_KINDS = {op: kind for kind, op in OPS.items()}
#: The lowest opset written (the recurrent operators as they are since opset 14); bfloat16 needs 22.
MIN_OPSET = 17
DTYPE_OPSET: dict[str, int] = {"float16": MIN_OPSET, "float32": MIN_OPSET, "float64": MIN_OPSET, "bfloat16": 22}
#: dtypes onnxruntime's CPU recurrent kernels run (see the module documentation)
ORT_DTYPES = ("float16", "float32")

#: canonical activation -> (ONNX function, alpha, beta); None where the function takes no such value
ONNX_ACTIVATIONS: dict[str, tuple[str, float | None, float | None]] = {
    "tanh": ("Tanh", None, None),
    "sigmoid": ("Sigmoid", None, None),
    "relu": ("Relu", None, None),
    "softsign": ("Softsign", None, None),
    "softplus": ("Softplus", None, None),
    "linear": ("Affine", 1.0, 0.0),
    "leaky_relu": ("LeakyRelu", 0.2, None),
    "elu": ("Elu", 1.0, None),
    "hard_sigmoid_keras2": ("HardSigmoid", 0.2, 0.5),
    "hard_sigmoid_keras3": ("HardSigmoid", 1 / 6, 0.5),
}
#: ONNX function (lower case) -> (takes alpha, takes beta, default alpha, default beta), as onnxruntime reads them
_PARAMETERS: dict[str, tuple[bool, bool, float, float]] = {
    "relu": (False, False, 0.0, 0.0),
    "tanh": (False, False, 0.0, 0.0),
    "sigmoid": (False, False, 0.0, 0.0),
    "softsign": (False, False, 0.0, 0.0),
    "softplus": (False, False, 0.0, 0.0),
    "affine": (True, True, 1.0, 0.0),
    "leakyrelu": (True, False, 0.01, 0.0),
    "thresholdedrelu": (True, False, 1.0, 0.0),
    "scaledtanh": (True, True, 1.0, 1.0),
    "hardsigmoid": (True, True, 0.2, 0.5),
    "elu": (True, False, 1.0, 0.0),
}
#: the activation functions of one direction, per kind, and ONNX's defaults
_SLOTS: dict[str, tuple[str, ...]] = {"rnn": ("f",), "lstm": ("f", "g", "h"), "gru": ("f", "g")}
_DEFAULTS: dict[str, tuple[str, ...]] = {"rnn": ("Tanh",), "lstm": ("Sigmoid", "Tanh", "Tanh"), "gru": ("Sigmoid", "Tanh")}
_HINT = "layoutconv:"
_ACCEPTED = "a model with an RNN, LSTM or GRU node (node= picks one of several)"


# ---------------------------------------------------------------------------
# record -> ONNX
# ---------------------------------------------------------------------------
def _onnx_activation(name: str, what: str) -> tuple[str, float | None, float | None]:
    if name in ONNX_ACTIVATIONS:
        return ONNX_ACTIVATIONS[name]
    raise fail(
        UnsupportedError,
        f"ONNX's recurrent operators have no activation function computing {name} ({activations.get(name).formula}) for `{what}`",
        f"one of {sorted(ONNX_ACTIVATIONS)}",
        f"{what}={name!r}",
        "Convert to PyTorch (target 'torch') instead, which computes every activation.",
    )


def _functions(layer: Recurrent) -> list[str]:
    """The record's activation per ONNX slot (``f`` gates, ``g`` candidate, ``h`` output)."""
    if isinstance(layer, SimpleRNN):
        return [layer.activation]
    gate = layer.recurrent_activation  # type: ignore[attr-defined]
    return [gate, layer.activation, layer.activation] if isinstance(layer, LSTM) else [gate, layer.activation]


def _activation_attrs(layers: tuple[Recurrent, ...]) -> dict[str, Any]:
    names, alphas, betas = [], [], []
    for layer in layers:
        for slot, function in zip(_SLOTS[layer.KIND], _functions(layer)):
            op, alpha, beta = _onnx_activation(function, "recurrent_activation" if slot == "f" and layer.KIND != "rnn" else "activation")
            names.append(op)
            if alpha is not None:
                alphas.append(alpha)
            if beta is not None:
                betas.append(beta)
    attrs: dict[str, Any] = {"activations": names}
    if alphas:
        attrs["activation_alpha"] = alphas
    if betas:
        attrs["activation_beta"] = betas
    return attrs


def _why_not(record: Bidirectional) -> str | None:
    fw, bw = record.forward, record.backward
    if fw.go_backwards:
        return "its forward layer has go_backwards=True (ONNX's forward direction reads the input in order)"
    if type(fw) is not type(bw):
        return f"its directions are different layers ({type(fw).__name__}, {type(bw).__name__})"
    if fw.units != bw.units:
        return f"its directions have different units ({fw.units}, {bw.units}); one node has one hidden_size"
    if isinstance(fw, GRU) and fw.reset_after != bw.reset_after:  # type: ignore[attr-defined]
        return "its directions differ in reset_after; one node has one linear_before_reset"
    return None


def _stack(layers: tuple[Recurrent, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    kind = layers[0].KIND
    w = np.stack([from_canonical(layer.kernel, "(G H) I", kind, "onnx") for layer in layers])
    r = np.stack([from_canonical(layer.recurrent_kernel, "(G H) I", kind, "onnx") for layer in layers])
    if all(layer.bias is None and layer.recurrent_bias is None for layer in layers):
        return w, r, None
    rows = []
    for layer in layers:
        zeros = np.zeros(layer.kernel.shape[0], layer.dtype)
        halves = [zeros if b is None else from_canonical(b, "(G H)", kind, "onnx") for b in (layer.bias, layer.recurrent_bias)]
        rows.append(np.concatenate(halves))
    return w, r, np.stack(rows)


def required_opset(record: Recurrent | Bidirectional) -> int:
    """The lowest opset that expresses ``record`` (17; 22 for bfloat16)."""
    return max(MIN_OPSET, DTYPE_OPSET[record.dtype.name])


def _hint(record: Recurrent | Bidirectional, layers: tuple[Recurrent, ...]) -> str:
    stored = " ".join(f"stored_biases={int(layer.bias is not None)}{int(layer.recurrent_bias is not None)}" for layer in layers)
    text = f"{_HINT} return_sequences={record.return_sequences}"
    if isinstance(record, Bidirectional):
        text += f" merge_mode={record.merge_mode}"
    else:
        text += f" go_backwards={record.go_backwards}"
    return f"{text} {stored}"


def _merge_nodes(mode: str, a: str, b: str, out: str, dtype: np.dtype) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    mk = helper.make_node
    if mode == "sum":
        return [mk("Add", [a, b], [out], name="merge_sum")], []
    if mode == "mul":
        return [mk("Mul", [a, b], [out], name="merge_mul")], []
    two = _onnx._tensor("merge_two", np.asarray(2, dtype=dtype))
    return [mk("Add", [a, b], ["merge_total"], name="merge_add"), mk("Div", ["merge_total", "merge_two"], [out], name="merge_ave")], [two]


def _output_nodes(record: Recurrent | Bidirectional, reverse_flip: bool) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """From ``Y`` ``(T, D, N, H)`` or ``Y_h`` ``(D, N, H)`` to ``y`` ``(N, C, T)`` or ``(N, C)``."""
    mk, ints = helper.make_node, _onnx._int64
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    sequences = record.return_sequences
    source = "Y" if sequences else "Y_h"
    direction_axis = 1 if sequences else 0
    if reverse_flip:  # reverse direction, outputs wanted in processing order
        inits += [ints("flip_starts", -1), ints("flip_ends", -(2**63)), ints("flip_axes", 0), ints("flip_steps", -1)]
        nodes.append(mk("Slice", ["Y", "flip_starts", "flip_ends", "flip_axes", "flip_steps"], ["Y_in_order"], name="go_backwards_order"))
        source = "Y_in_order"
    merge = record.merge_mode if isinstance(record, Bidirectional) else None
    if merge == "concat":
        if sequences:  # (T, 2, N, H) -> (N, T, 2, H) -> (N, T, 2H) -> (N, 2H, T)
            inits.append(ints("concat_shape", 0, 0, -1))
            nodes += [
                mk("Transpose", [source], ["Y_ntdh"], perm=[2, 0, 1, 3], name="batch_first"),
                mk("Reshape", ["Y_ntdh", "concat_shape"], ["Y_ntc"], name="concat_directions"),
                mk("Transpose", ["Y_ntc"], ["y"], perm=[0, 2, 1], name="channels_first"),
            ]
        else:  # (2, N, H) -> (N, 2, H) -> (N, 2H)
            inits.append(ints("concat_shape", 0, -1))
            nodes += [
                mk("Transpose", [source], ["Y_ndh"], perm=[1, 0, 2], name="batch_first"),
                mk("Reshape", ["Y_ndh", "concat_shape"], ["y"], name="concat_directions"),
            ]
        return nodes, inits
    if merge is not None:
        nodes.append(mk("Split", [source], ["Y_forward", "Y_backward"], axis=direction_axis, name="directions"))
        merged, more = _merge_nodes(merge, "Y_forward", "Y_backward", "Y_merged", record.dtype)
        nodes += merged
        inits += more
        source = "Y_merged"
    inits.append(ints("direction_axis", direction_axis))
    if sequences:  # (T, 1, N, H) -> (T, N, H) -> (N, H, T)
        nodes += [
            mk("Squeeze", [source, "direction_axis"], ["Y_tnh"], name="one_direction"),
            mk("Transpose", ["Y_tnh"], ["y"], perm=[1, 2, 0], name="channels_first"),
        ]
    else:  # (1, N, H) -> (N, H)
        nodes.append(mk("Squeeze", [source, "direction_axis"], ["y"], name="one_direction"))
    return nodes, inits


def to_native(record: Recurrent | Bidirectional, opset: int | None = None) -> onnx.ModelProto:
    """An ONNX model computing ``record`` on ``x`` ``(N, F, T)`` (see the module documentation); full checker passed."""
    if not isinstance(record, (Recurrent, Bidirectional)):
        raise fail(ConfigError, "to_native needs a recurrent record", "a SimpleRNN, LSTM, GRU or Bidirectional", f"{type(record).__name__}")
    need, latest = required_opset(record), onnx.defs.onnx_opset_version()
    if opset is None:
        opset = need
    elif isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not need <= opset <= latest:
        raise fail(
            ConfigError,
            "Invalid value for argument `opset`",
            f"an integer from {need} to {latest}",
            f"opset={opset!r}",
            "Omit it to get the lowest opset that works.",
        )
    if isinstance(record, Bidirectional):
        why = _why_not(record)
        if why is not None:
            raise fail(
                UnsupportedError,
                f"One ONNX node cannot compute this Bidirectional: {why}",
                "forward.go_backwards=False and both directions of one kind, with the same units (and reset_after)",
                f"{record!r}",
                "Convert to PyTorch (target 'torch') instead, or convert the two directions as separate records.",
            )
        layers: tuple[Recurrent, ...] = (record.forward, record.backward)
        direction = "bidirectional"
    else:
        layers = (record,)
        direction = "reverse" if record.go_backwards else "forward"
    first = layers[0]
    attrs: dict[str, Any] = dict(hidden_size=first.units, direction=direction, **_activation_attrs(layers))
    if isinstance(first, GRU):
        attrs["linear_before_reset"] = int(first.reset_after)
    w, r, b = _stack(layers)
    inits = [_onnx._tensor("W", w), _onnx._tensor("R", r)] + ([] if b is None else [_onnx._tensor("B", b)])
    mk = helper.make_node
    inputs = ["X_tnf", "W", "R"] + (["B"] if b is not None else [])
    outputs = ["Y", ""] if record.return_sequences else ["", "Y_h"]
    nodes = [
        mk("Transpose", ["x"], ["X_tnf"], perm=[2, 0, 1], name="time_first"),
        mk(OPS[first.KIND], inputs, outputs, name=first.KIND, doc_string=_hint(record, layers), **attrs),
    ]
    more_nodes, more_inits = _output_nodes(record, direction == "reverse" and record.return_sequences)
    nodes += more_nodes
    inits += more_inits
    elem = helper.np_dtype_to_tensor_dtype(record.dtype)
    out_shape = ["N", record.out_channels, "T"] if record.return_sequences else ["N", record.out_channels]
    graph = helper.make_graph(
        nodes,
        f"layoutconv_{first.KIND}",
        [helper.make_tensor_value_info("x", elem, ["N", record.input_size, "T"])],
        [helper.make_tensor_value_info("y", elem, out_shape)],
        inits,
        doc_string=repr(record),
    )
    model = _onnx.checked_model(graph, opset, repr(record))
    return model


# ---------------------------------------------------------------------------
# ONNX -> record
# ---------------------------------------------------------------------------
def _recurrent_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type in _KINDS and n.domain in ("", "ai.onnx")]


def reads(model: Any, node: Any = None) -> bool:
    """True when :func:`from_native` should read ``model`` (the ONNX adapter hands such models here).

    That is: ``node`` names one of its recurrent nodes, or the graph has
    recurrent nodes and no ``Conv``/``ConvTranspose`` node.
    """
    if not isinstance(model, onnx.ModelProto):
        return False
    found = _recurrent_nodes(model)
    if not found:
        return False
    if isinstance(node, str) and any(n.name == node for n in found):
        return True
    return not any(n.op_type in _onnx.CONV_OPS for n in model.graph.node)


def _pick(found: list[onnx.NodeProto], node: Any) -> onnx.NodeProto:
    if node is None and len(found) == 1:
        return found[0]
    if isinstance(node, (int, np.integer)) and not isinstance(node, bool) and -len(found) <= node < len(found):
        return found[int(node)]
    if isinstance(node, str):
        named = [n for n in found if n.name == node]
        if len(named) == 1:
            return named[0]
    labels = [repr(n.name) if n.name else f"#{i} (unnamed)" for i, n in enumerate(found)]
    raise fail(
        ConfigError,
        "Model has no RNN, LSTM or GRU node" if not found else "Cannot tell which recurrent node to read",
        "node=<name> or node=<index among the RNN, LSTM and GRU nodes>, picking exactly one",
        f"node={node!r}; the model's recurrent nodes: [{', '.join(labels)}]",
    )


def _read_functions(kind: str, attrs: dict[str, Any], directions: int, label: str) -> list[list[str]]:
    """The canonical activation per slot, per direction, consuming alphas and betas as onnxruntime does."""
    slots = len(_SLOTS[kind])
    names = [_onnx._text(n) for n in attrs.get("activations", [])] or list(_DEFAULTS[kind]) * directions
    if len(names) == slots and directions == 2 and "activations" in attrs:
        raise fail(
            FileFormatError,
            f"{label}: a bidirectional node lists the activations of both directions",
            f"{2 * slots} names",
            f"{names}",
        )
    if len(names) != slots * directions:
        raise fail(FileFormatError, f"{label}: wrong number of activations", f"{slots * directions}", f"{names}")
    alphas, betas = list(attrs.get("activation_alpha", [])), list(attrs.get("activation_beta", []))
    out: list[str] = []
    for name in names:
        key = str(name).lower()
        if key not in _PARAMETERS:
            raise fail(UnsupportedError, f"{label}: unknown activation function {name!r}", f"one of {sorted(_PARAMETERS)}", f"{name!r}")
        takes_alpha, takes_beta, alpha, beta = _PARAMETERS[key]
        if takes_alpha and alphas:
            alpha = alphas.pop(0)
        if takes_beta and betas:
            beta = betas.pop(0)
        out.append(_canonical_function(key, alpha, beta, label))
    return [out[d * slots : (d + 1) * slots] for d in range(directions)]


def _canonical_function(key: str, alpha: float, beta: float, label: str) -> str:
    for canonical, (op, a, b) in ONNX_ACTIVATIONS.items():
        if op.lower() != key:
            continue
        if (a is None or np.float32(a) == np.float32(alpha)) and (b is None or np.float32(b) == np.float32(beta)):
            return canonical
    raise fail(
        UnsupportedError,
        f"{label}: activation {key}(alpha={alpha}, beta={beta}) is not one a record holds",
        f"one of {', '.join(f'{op}{(a, b) if a is not None else ()}' for op, a, b in ONNX_ACTIVATIONS.values())}",
        f"{key} with alpha={alpha}, beta={beta}",
    )


def _zero_or_absent(g: Any, node: onnx.NodeProto, index: int, role: str, label: str) -> None:
    if len(node.input) <= index or not node.input[index]:
        return
    value = g.constant(node.input[index])
    if value is None or value.any():
        raise fail(
            UnsupportedError,
            f"{label} has {role}",
            f"no {role} (a record starts from zero states, without peepholes, on whole sequences)",
            f"input {node.input[index]!r}" + ("" if value is None else " with non-zero values"),
        )


def _used(model: onnx.ModelProto, name: str) -> bool:
    return bool(name) and (any(name in n.input for n in model.graph.node) or any(o.name == name for o in model.graph.output))


def _hint_fields(node: onnx.NodeProto) -> dict[str, str] | None:
    doc = _onnx._text(node.doc_string)
    if not doc.startswith(_HINT):
        return None
    fields: dict[str, Any] = {}
    for part in doc[len(_HINT):].split():
        key, _, value = part.partition("=")
        fields.setdefault(key, []).append(value)
    return fields


def from_native(model_or_path: Any, node: str | int | None = None) -> Recurrent | Bidirectional:
    """An ``RNN``, ``LSTM`` or ``GRU`` node of an ONNX model as a record (see the module documentation)."""
    model = _onnx._load(model_or_path)
    _onnx._refuse_external_data(model)
    found = _recurrent_nodes(model)
    rnn = _pick(found, node)
    kind = _KINDS[rnn.op_type]
    label = f"{rnn.op_type} node {rnn.name!r}"
    attrs = _onnx._attrs(rnn)
    if len(rnn.input) < 3 or not all(rnn.input[:3]):
        raise fail(FileFormatError, f"{label} lacks an input", f"{rnn.op_type}(X, W, R, ...)", f"inputs {list(rnn.input)}")
    if "clip" in attrs:
        raise fail(UnsupportedError, f"{label} clips its cell at {attrs['clip']}", "no clip attribute (no framework but ONNX clips)", f"clip={attrs['clip']}")
    if attrs.get("input_forget", 0):
        raise fail(UnsupportedError, f"{label} couples its input and forget gates", "input_forget=0", f"input_forget={attrs['input_forget']}")
    g = _onnx._Graph(model)
    _zero_or_absent(g, rnn, 4, "sequence_lens", label)
    _zero_or_absent(g, rnn, 5, "an initial hidden state", label)
    if kind == "lstm":
        _zero_or_absent(g, rnn, 6, "an initial cell state", label)
        _zero_or_absent(g, rnn, 7, "peephole weights P", label)
    w = g.weight(rnn.input[1], rnn, "weight W")
    r = g.weight(rnn.input[2], rnn, "recurrence weight R")
    b = g.weight(rnn.input[3], rnn, "bias B") if len(rnn.input) > 3 and rnn.input[3] else None
    direction = attrs.get("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise fail(FileFormatError, f"{label}: unknown direction", "forward, reverse or bidirectional", f"{direction!r}")
    directions = 2 if direction == "bidirectional" else 1
    gates = RECORDS[kind].gates()
    if w.ndim != 3 or r.ndim != 3 or w.shape[0] != directions or r.shape[0] != directions or (b is not None and b.shape != (directions, 2 * w.shape[1])):
        raise fail(
            FileFormatError,
            f"{label}: weights do not fit direction={direction!r}",
            f"W (D, {gates}H, F), R (D, {gates}H, H), B (D, {2 * gates}H) with D={directions}",
            f"W {w.shape}, R {r.shape}, B {None if b is None else b.shape}",
        )
    if "hidden_size" in attrs and attrs["hidden_size"] * gates != w.shape[1]:
        raise fail(FileFormatError, f"{label}: hidden_size disagrees with W", f"hidden_size={w.shape[1] // gates}", f"hidden_size={attrs['hidden_size']}")
    functions = _read_functions(kind, attrs, directions, label)
    hint = _hint_fields(rnn)
    y_used = len(rnn.output) > 0 and _used(model, rnn.output[0])
    yh_used = len(rnn.output) > 1 and _used(model, rnn.output[1])
    if hint is not None and hint.get("return_sequences", [""])[0] in ("True", "False"):
        return_sequences = hint["return_sequences"][0] == "True"
        if (return_sequences and not y_used) or (not return_sequences and not yh_used):
            return_sequences = y_used  # the hint does not describe this graph
    else:
        return_sequences = y_used
    if not (y_used or yh_used):
        raise fail(FileFormatError, f"{label}: neither Y nor Y_h is used", "a node whose output is used", f"outputs {list(rnn.output)}")
    flipped = any(n.op_type == "Slice" and n.input and n.input[0] == rnn.output[0] for n in model.graph.node)
    if direction == "reverse" and return_sequences and not (hint is not None and flipped):
        raise fail(
            UnsupportedError,
            f"{label} runs in reverse and its sequence Y, aligned with the input steps, is used",
            "Y_h, or Y in processing order (Keras' go_backwards, what layoutconv writes: Y flipped in time by a Slice)",
            "Y aligned with the input",
            "Read it as the backward half of a bidirectional node, or flip Y in time after it.",
        )
    stored = [(True, True)] * directions
    if hint is not None and len(hint.get("stored_biases", [])) == directions:
        stored = [(s[:1] == "1", s[1:2] == "1") for s in hint["stored_biases"]]
    records = []
    for d in range(directions):
        fields: dict[str, Any] = {"return_sequences": return_sequences, "go_backwards": direction == "reverse" or d == 1}
        slots = functions[d]
        if kind == "lstm":
            if slots[1] != slots[2]:
                raise fail(
                    UnsupportedError,
                    f"{label}: its cell (g) and output (h) activations differ ({slots[1]}, {slots[2]})",
                    "one activation for both (records and Keras have one)",
                    f"activations {slots}",
                )
            fields.update(recurrent_activation=slots[0], activation=slots[1])
        elif kind == "gru":
            fields.update(recurrent_activation=slots[0], activation=slots[1], reset_after=bool(attrs.get("linear_before_reset", 0)))
        else:
            fields["activation"] = slots[0]
        bias = recurrent_bias = None
        if b is not None:
            half = w.shape[1]
            bias = to_canonical(b[d, :half], "(G H)", kind, "onnx")
            recurrent_bias = to_canonical(b[d, half:], "(G H)", kind, "onnx")
            if not stored[d][0] and not bias.any():
                bias = None
            if not stored[d][1] and not recurrent_bias.any():
                recurrent_bias = None
        try:
            records.append(
                RECORDS[kind](
                    to_canonical(w[d], "(G H) I", kind, "onnx"), to_canonical(r[d], "(G H) I", kind, "onnx"),
                    bias, recurrent_bias, **fields,
                )  # fmt: skip
            )
        except LayoutError as exc:
            raise type(exc)(f"{label}: {exc}") from None
    if directions == 1:
        return records[0]
    merge = "concat"
    if hint is not None and hint.get("merge_mode", [""])[0] in ("sum", "mul", "ave"):
        wanted = hint["merge_mode"][0]
        ops = {n.op_type for n in model.graph.node}
        if {"sum": {"Split", "Add"}, "mul": {"Split", "Mul"}, "ave": {"Split", "Add", "Div"}}[wanted] <= ops:
            merge = wanted
    return Bidirectional(records[0], records[1], merge)


# ---------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------
def run(model: Any, x: Any) -> np.ndarray:
    """Run the model on a canonical ``x`` ``(N, F, T)`` with onnxruntime's CPU provider; ``(N, C, T)`` or ``(N, C)``.

    onnxruntime's CPU recurrent kernels run float32 and float16 only: float64
    and bfloat16 raise :class:`~layoutconv.UnsupportedError` before anything runs.
    """
    loaded = _onnx._load(model)
    record = from_native(loaded)
    x = check_input(record, x)
    dims = [d.dim_value if d.HasField("dim_value") else None for d in loaded.graph.input[0].type.tensor_type.shape.dim]
    if len(dims) != 3 or dims[1] != record.input_size:
        raise fail(
            UnsupportedError,
            "run takes the models layoutconv writes, whose input is channels first",
            f"a first graph input of shape (N, {record.input_size}, T)",
            f"shape {['?' if d is None else d for d in dims]}",
            "Run other models with onnxruntime directly, in their own input layout.",
        )
    dtype = record.dtype.name
    if dtype not in ORT_DTYPES:
        raise fail(
            UnsupportedError,
            f"onnxruntime {ort.__version__} has no CPU {OPS[record.forward.KIND if isinstance(record, Bidirectional) else record.KIND]} "
            f"kernel for {dtype}",
            f"one of {ORT_DTYPES}",
            f"dtype {dtype}",
            "Verify these weights in PyTorch or Keras, or cast a copy of the record to float32 for onnxruntime.",
        )
    try:
        session = ort.InferenceSession(loaded.SerializeToString(), _onnx._session_options(), providers=["CPUExecutionProvider"])
        first = session.get_inputs()[0]
        y = session.run(None, {first.name: x.astype(dtype, copy=False)})[0]
    except Exception as exc:
        raise _onnx._ort_error(exc, "onnxruntime could not run this recurrent model", "Verify it in PyTorch instead.", UnsupportedError) from None
    return np.asarray(y)


for _kind in (Recurrent, Bidirectional):
    registry.register(_kind, NAME, to_native=to_native, run=run)
