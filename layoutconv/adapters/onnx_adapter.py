"""ONNX adapter: a :class:`~layoutconv.Conv1D` as an ONNX ``Conv`` node (with a ``Pad`` node when needed).

``to_native`` writes a self-contained model: input ``x`` of shape ``(N, C, L)``
with dynamic ``N`` and ``L``, output ``y``, kernel ``W`` (``O I K``, the
canonical layout, same bytes) and bias ``B`` as initializers.  Padding becomes:

- zeros, ``valid``: ``Conv(auto_pad=VALID)``;
- zeros, explicit pads or ``causal``: ``Conv(pads=[b, e])``;
- zeros, ``same_*`` with dilation 1: ``Conv(auto_pad=SAME_UPPER | SAME_LOWER)``;
- zeros, ``same_*`` with dilation > 1 and stride 1: ``Conv(pads=[b, e])`` (static pads);
- zeros, ``same_*`` with dilation > 1 and stride > 1: ``Shape -> arithmetic -> Pad -> Conv``;
- reflect / replicate / circular with non-zero pads: ``Pad(reflect | edge | wrap) -> Conv``,
  the pads computed from ``Shape(x)`` when they depend on the length.

(onnxruntime refuses ``auto_pad=SAME_*`` with a dilation > 1: "Dilation not
supported for AutoPadType::SAME_UPPER or AutoPadType::SAME_LOWER".)  The opset
is the lowest that expresses the model: 17, 19 for ``circular`` (``Pad`` mode
``wrap``), 22 for bfloat16 (``Conv`` accepts bfloat16 from opset 22).

A fused activation follows the ``Conv`` (whose output is then ``y_linear``) and
writes ``y``; :data:`ACTIVATION_RECIPES` lists the nodes for each: ``Relu``,
``Clip(0, 6)``, ``LeakyRelu(alpha=0.2)``, ``HardSigmoid(alpha=0.2 | 1/6, beta=0.5)``,
``HardSwish``, ``x * Sigmoid(x)`` for swish, and ``Gelu`` (opset 20+) or its erf
formula, ``Mish`` (opset 18+) or ``x * Tanh(Softplus(x))``, so the opset stays 17.

``from_native`` reads a ``Conv`` node back, with the activation whose nodes are
the only users of its output (an activation operator it cannot record, such as
``LeakyRelu(alpha=0.01)``, is refused; anything else after the ``Conv`` leaves it
linear), folding a ``Pad`` node that feeds it into the padding; pads computed at run time are recognised by evaluating them
for many input lengths.  The padding rule's name (``causal``, ``same_upper``
...) travels in the ``Conv`` node's ``doc_string`` and is used only when it
describes the same computation as the graph.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Callable, NamedTuple

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from .. import __version__, registry
from ..conv import Conv1D
from ..errors import (
    ConfigError,
    FileFormatError,
    LayoutError,
    ShapeError,
    UnsafeFileError,
    UnsupportedError,
    fail,
)

NAME = "onnx"
REQUIRES = ("onnx", "onnxruntime")

#: The lowest opset written; ``Conv``, ``Pad`` and ``Shape(start, end)`` all exist there.
MIN_OPSET = 17
#: padding_mode -> (ONNX ``Pad`` mode, first opset that has it)
PAD_MODES: dict[str, tuple[str, int]] = {
    "zeros": ("constant", MIN_OPSET),
    "reflect": ("reflect", MIN_OPSET),
    "replicate": ("edge", MIN_OPSET),
    "circular": ("wrap", 19),
}
#: dtype -> first opset whose ``Conv`` accepts it
DTYPE_OPSET: dict[str, int] = {"float16": MIN_OPSET, "float32": MIN_OPSET, "float64": MIN_OPSET, "bfloat16": 22}

_FROM_PAD_MODE = {mode: name for name, (mode, _) in PAD_MODES.items()}
_AUTO_PAD = {"VALID": "valid", "SAME_UPPER": "same_upper", "SAME_LOWER": "same_lower"}
_TO_AUTO_PAD = {rule: auto for auto, rule in _AUTO_PAD.items()}
_HINT = "layoutconv:"
_HINT_FIELD = re.compile(r"\b(padding|padding_mode)=(\w+)")
#: onnxruntime exception -> the layoutconv error it becomes in :func:`run`
_ORT_ERRORS: dict[type, type[LayoutError]] = {
    _ort_state.NotImplemented: UnsupportedError,
    _ort_state.InvalidArgument: ShapeError,
    _ort_state.InvalidGraph: FileFormatError,
    _ort_state.InvalidProtobuf: FileFormatError,
}
_ORT_INPUT_DTYPES = {
    "tensor(float16)": "float16",
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(bfloat16)": "bfloat16",
}


# ---------------------------------------------------------------------------
# Conv1D -> ONNX
# ---------------------------------------------------------------------------
def required_opset(conv: Conv1D) -> int:
    """The lowest opset that expresses ``conv`` (17; 19 for ``circular``; 22 for bfloat16)."""
    return max(MIN_OPSET, PAD_MODES[conv.padding_mode][1], DTYPE_OPSET[conv.dtype.name])


def _choose_opset(conv: Conv1D, opset: int | None) -> int:
    need, latest = required_opset(conv), onnx.defs.onnx_opset_version()
    if opset is None:
        return need
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not need <= opset <= latest:
        raise fail(
            ConfigError,
            "Invalid value for argument `opset`",
            f"an integer from {need} (what {conv!r} needs) to {latest} (the newest this onnx knows)",
            f"opset={opset!r}",
            "Omit it to get the lowest opset that works.",
        )
    return int(opset)


def _tensor(name: str, array: np.ndarray) -> TensorProto:
    """``numpy_helper.from_array``, checked to store the same dtype and bytes (bfloat16 included)."""
    tensor = numpy_helper.from_array(array, name)
    back = numpy_helper.to_array(tensor)
    if back.dtype != array.dtype or back.tobytes() != array.tobytes():
        raise fail(
            UnsupportedError,
            f"onnx {onnx.__version__} cannot store {array.dtype} tensor {name!r} exactly",
            "a bit-exact TensorProto",
            f"{back.dtype} after a round trip",
            "Upgrade onnx (bfloat16 goes through ml_dtypes in recent versions).",
        )
    return tensor


def _int64(name: str, *values: int) -> TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _dynamic_pads(conv: Conv1D, data: str) -> tuple[list[onnx.NodeProto], list[TensorProto], str]:
    """Nodes computing ``[0, 0, begin, 0, 0, end]`` from ``Shape(data)`` for a ``same_*`` rule.

    total = max((ceil(L / s) - 1) * s + r - L, 0); the odd pad goes at the end (upper) or the begin (lower).
    """
    (s,), (r,) = conv.stride, conv.receptive_field
    inits = [
        _int64("pad_s_minus_1", s - 1),
        _int64("pad_s", s),
        _int64("pad_r_minus_s", r - s),
        _int64("pad_zero", 0),
        _int64("pad_two", 2),
        _int64("pad_zeros_nc", 0, 0),
    ]
    mk = helper.make_node
    nodes = [
        mk("Shape", [data], ["pad_L"], start=2, end=3, name="pad_length"),
        mk("Add", ["pad_L", "pad_s_minus_1"], ["pad_t1"], name="pad_ceil_add"),
        mk("Div", ["pad_t1", "pad_s"], ["pad_blocks"], name="pad_ceil_div"),
        mk("Mul", ["pad_blocks", "pad_s"], ["pad_t2"], name="pad_span_mul"),
        mk("Sub", ["pad_t2", "pad_L"], ["pad_t3"], name="pad_span_sub"),
        mk("Add", ["pad_t3", "pad_r_minus_s"], ["pad_need"], name="pad_need"),
        mk("Max", ["pad_need", "pad_zero"], ["pad_total"], name="pad_total"),
        mk("Div", ["pad_total", "pad_two"], ["pad_small"], name="pad_small"),
        mk("Sub", ["pad_total", "pad_small"], ["pad_big"], name="pad_big"),
    ]
    first, second = ("pad_small", "pad_big") if conv.padding == "same_upper" else ("pad_big", "pad_small")
    nodes.append(mk("Concat", ["pad_zeros_nc", first, "pad_zeros_nc", second], ["pads"], axis=0, name="pad_pads"))
    return nodes, inits, "pads"


class _Step(NamedTuple):
    """One node of an activation's sub-graph.

    ``inputs``: ``"z"`` is the Conv's output, an int the output of that earlier
    step, a float a scalar constant in the convolution's dtype.
    """

    op: str
    inputs: tuple[Any, ...]
    attrs: dict[str, Any] = {}


#: How each activation is written after the Conv, and every spelling :func:`from_native`
#: recognises.  The writer takes, per activation, the first recipe whose operators all
#: exist at the model's opset; the reader accepts any of them, with the attributes
#: checked (ONNX's defaults fill omitted ones: ``Selu``'s are SELU's constants).
ACTIVATION_RECIPES: dict[str, tuple[tuple[_Step, ...], ...]] = {
    "relu": ((_Step("Relu", ("z",)),),),
    "relu6": ((_Step("Clip", ("z", 0.0, 6.0)),),),
    "leaky_relu": ((_Step("LeakyRelu", ("z",), {"alpha": 0.2}),),),
    "sigmoid": ((_Step("Sigmoid", ("z",)),),),
    "tanh": ((_Step("Tanh", ("z",)),),),
    "elu": ((_Step("Elu", ("z",), {"alpha": 1.0}),),),
    "selu": ((_Step("Selu", ("z",)),),),
    "gelu": (
        (_Step("Gelu", ("z",), {"approximate": "none"}),),  # opset 20
        # z / sqrt(2) -> Erf -> + 1 -> * z -> * 0.5: what torch.onnx exports before opset 20
        (
            _Step("Div", ("z", math.sqrt(2.0))),
            _Step("Erf", (0,)),
            _Step("Add", (1, 1.0)),
            _Step("Mul", ("z", 2)),
            _Step("Mul", (3, 0.5)),
        ),
    ),
    "swish": (
        (_Step("Sigmoid", ("z",)), _Step("Mul", ("z", 0))),
        (_Step("Swish", ("z",), {"alpha": 1.0}),),  # opset 24; read, never written
    ),
    "softplus": ((_Step("Softplus", ("z",)),),),
    "softsign": (
        (_Step("Softsign", ("z",)),),
        (_Step("Abs", ("z",)), _Step("Add", (0, 1.0)), _Step("Div", ("z", 1))),  # torch.onnx's spelling; read only
    ),
    "mish": (
        (_Step("Mish", ("z",)),),  # opset 18
        (_Step("Softplus", ("z",)), _Step("Tanh", (0,)), _Step("Mul", ("z", 1))),
    ),
    "hard_sigmoid_keras2": ((_Step("HardSigmoid", ("z",), {"alpha": 0.2, "beta": 0.5}),),),
    "hard_sigmoid_keras3": ((_Step("HardSigmoid", ("z",), {"alpha": 1 / 6, "beta": 0.5}),),),
    "hard_silu": ((_Step("HardSwish", ("z",)),),),
}
#: Elementwise activation operators: one of them right after the Conv that no recipe
#: explains is refused rather than left out of the record.
ACTIVATION_OPS = frozenset(
    {
        "Relu", "Clip", "LeakyRelu", "PRelu", "ThresholdedRelu", "Sigmoid", "HardSigmoid", "Tanh", "Elu", "Selu",
        "Celu", "Gelu", "Softplus", "Softsign", "Mish", "HardSwish", "Swish", "Shrink", "Softmax", "LogSoftmax",
        "Hardmax",
    }
)  # fmt: skip
_COMMUTATIVE = frozenset({"Add", "Mul"})


def _recipe_for(activation: str, opset: int) -> tuple[_Step, ...]:
    """The first recipe for ``activation`` whose operators all exist at ``opset``."""
    for steps in ACTIVATION_RECIPES[activation]:
        if all(onnx.defs.has(step.op, opset) for step in steps):
            return steps
    raise fail(  # unreachable with the table above: every activation has an opset-17 recipe
        UnsupportedError,
        f"ONNX opset {opset} cannot express activation {activation!r}",
        "an opset with its operators",
        f"opset {opset}",
        "Pass a newer opset.",
    )


def _activation_nodes(conv: Conv1D, opset: int, z: str, out: str) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """The nodes applying ``conv.activation`` to tensor ``z``, the last one writing ``out``."""
    steps = _recipe_for(conv.activation, opset)
    nodes, inits = [], []
    outputs = [f"act_{i}" for i in range(len(steps) - 1)] + [out]
    for i, step in enumerate(steps):
        inputs = []
        for ref in step.inputs:
            if isinstance(ref, float):
                name = f"act_{i}_const{len(inputs)}"
                inits.append(_tensor(name, np.asarray(ref, dtype=conv.dtype)))
                inputs.append(name)
            else:
                inputs.append(z if ref == "z" else outputs[ref])
        nodes.append(helper.make_node(step.op, inputs, [outputs[i]], name=f"{conv.activation}_{i}", **step.attrs))
    return nodes, inits


def to_native(conv: Conv1D, opset: int | None = None) -> onnx.ModelProto:
    """An ONNX model computing ``conv`` on ``x`` of shape ``(N, C, L)``; it passes ``check_model(full_check=True)``.

    >>> model = to_native(conv)        # doctest: +SKIP
    >>> y = run(model, x)              # doctest: +SKIP

    Parameters
    ----------
    conv:
        The convolution.  Weights are stored bit-exactly in the ``O I K`` layout.
    opset:
        Default: :func:`required_opset` (17, 19 for ``circular``, 22 for bfloat16).
    """
    if not isinstance(conv, Conv1D):
        raise fail(ConfigError, "onnx.to_native needs a Conv1D", "a layoutconv.Conv1D", f"{type(conv).__name__}")
    opset = _choose_opset(conv, opset)
    elem = helper.np_dtype_to_tensor_dtype(conv.dtype)
    inits = [_tensor("W", conv.kernel)] + ([] if conv.bias is None else [_tensor("B", conv.bias)])
    nodes: list[onnx.NodeProto] = []
    attrs: dict[str, Any] = dict(
        kernel_shape=list(conv.kernel_shape), strides=list(conv.stride), dilations=list(conv.dilation), group=conv.groups
    )
    data = "x"
    static = None if conv.padding_depends_on_length else conv.pads()[0]
    if conv.padding_mode == "zeros" or static == (0, 0):
        auto = _TO_AUTO_PAD.get(conv.padding) if isinstance(conv.padding, str) else None
        if auto and (conv.dilation == (1,) or auto == "VALID"):
            attrs["auto_pad"] = auto  # onnxruntime refuses SAME_* with a dilation > 1
        elif static is not None:
            attrs["pads"] = list(static)
    if "auto_pad" not in attrs and "pads" not in attrs:
        if static is None:
            pad_nodes, pad_inits, pads = _dynamic_pads(conv, "x")
        else:
            pad_nodes, pad_inits, pads = [], [_int64("pads", 0, 0, static[0], 0, 0, static[1])], "pads"
        mode = PAD_MODES[conv.padding_mode][0]
        nodes += pad_nodes + [helper.make_node("Pad", ["x", pads], ["x_padded"], mode=mode, name="pad")]
        inits += pad_inits
        data = "x_padded"
        attrs["auto_pad"] = "VALID"
    hint = f"{_HINT} padding_mode={conv.padding_mode}"
    if isinstance(conv.padding, str):
        hint += f" padding={conv.padding}"
    inputs = [data, "W"] + (["B"] if conv.bias is not None else [])
    conv_out = "y" if conv.activation == "linear" else "y_linear"
    nodes.append(helper.make_node("Conv", inputs, [conv_out], name="conv", doc_string=hint, **attrs))
    if conv.activation != "linear":
        act_nodes, act_inits = _activation_nodes(conv, opset, conv_out, "y")
        nodes += act_nodes
        inits += act_inits
    graph = helper.make_graph(
        nodes,
        "layoutconv_conv1d",
        [helper.make_tensor_value_info("x", elem, ["N", conv.in_channels, "L"])],
        [helper.make_tensor_value_info("y", elem, ["N", conv.out_channels, "L_out"])],
        inits,
        doc_string=repr(conv),
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="layoutconv", producer_version=__version__
    )
    model.ir_version = helper.find_min_ir_version_for(model.opset_import)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise fail(
            UnsupportedError,
            f"ONNX opset {opset} cannot express {conv!r}",
            "a model the ONNX checker accepts",
            f"the checker's complaint: {exc}",
            "Pass a newer opset.",
        ) from None
    return model


# ---------------------------------------------------------------------------
# ONNX -> Conv1D
# ---------------------------------------------------------------------------
def _load(model_or_path: Any) -> onnx.ModelProto:
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    if not isinstance(model_or_path, (str, os.PathLike)):
        raise fail(
            ConfigError,
            "Cannot read an ONNX model from this object",
            "an onnx.ModelProto or a path to a .onnx file",
            f"{type(model_or_path).__name__}",
        )
    path = os.fspath(model_or_path)
    if not os.path.isfile(path):
        raise fail(FileFormatError, "ONNX file not found", "an existing .onnx file", f"{path!r}")
    try:
        return onnx.load(path, load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise fail(
            FileFormatError,
            "File is not an ONNX model",
            "a serialized onnx.ModelProto",
            f"{path!r} ({type(exc).__name__}: {exc})",
            "Check that the file is complete.",
        ) from None


def _refuse_external_data(model: onnx.ModelProto) -> None:
    tensors = list(model.graph.initializer) + [
        a.t for n in model.graph.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR
    ]
    for t in tensors:
        if t.data_location == TensorProto.EXTERNAL:
            where = {e.key: e.value for e in t.external_data}.get("location", "?")
            raise fail(
                UnsafeFileError,
                f"Tensor {t.name!r} keeps its data in an external file",
                "weights stored inside the model",
                f"data_location=EXTERNAL, location={where!r}",
                "layoutconv never follows external-data paths; check the files, load them with onnx.load, "
                "and pass the ModelProto after onnx.external_data_helper.convert_model_from_external_data(model).",
            )


def _pick(convs: list[onnx.NodeProto], node: str | int | None) -> onnx.NodeProto:
    if node is None and len(convs) == 1:
        return convs[0]
    if isinstance(node, (int, np.integer)) and not isinstance(node, bool) and -len(convs) <= node < len(convs):
        return convs[int(node)]
    if isinstance(node, str):
        named = [n for n in convs if n.name == node]
        if len(named) == 1:
            return named[0]
        if not named and node.strip().lstrip("-").isdigit() and -len(convs) <= int(node) < len(convs):
            return convs[int(node)]  # an index typed on the command line
    labels = [repr(n.name) if n.name else f"#{i} (unnamed)" for i, n in enumerate(convs)]
    what = "No Conv node matches `node`"
    if not convs:
        what = "Model has no Conv node"
    elif node is None:
        what = "Model has several Conv nodes"
    raise fail(
        ConfigError,
        what,
        "node=<name> or node=<index among the Conv nodes>, picking exactly one",
        f"node={node!r}; the model's Conv nodes: [{', '.join(labels)}]",
    )


#: where a weight came from -> (error class, remedy)
_WEIGHT_SOURCES: dict[str, tuple[type[LayoutError], str]] = {
    "node": (UnsupportedError, "Fold it into an initializer first (e.g. with onnxsim or onnxruntime's offline optimizer)."),
    "input": (UnsupportedError, "Store it as an initializer: layoutconv reads trained weights, not run-time inputs."),
    "missing": (FileFormatError, "The model is incomplete or was saved without its weights; re-export it."),
}


class _Graph:
    """Lookups in one graph: constants (initializers and ``Constant`` nodes) and producers."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.initializers = {t.name: t for t in model.graph.initializer}
        self.producers = {out: n for n in model.graph.node for out in n.output}
        self.inputs = {i.name for i in model.graph.input} - set(self.initializers)
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), MIN_OPSET)

    def constant(self, name: str) -> np.ndarray | None:
        """The value of ``name`` if it is an initializer or a ``Constant`` node's output, else None."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producers.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
                if a.name in ("value_ints", "value_int"):
                    return np.array(helper.get_attribute_value(a), dtype=np.int64)
        return None

    def weight(self, name: str, conv: onnx.NodeProto, role: str) -> np.ndarray:
        value = self.constant(name)
        if value is not None:
            return value
        node = self.producers.get(name)
        if node is not None:
            kind, source = "node", f"computed by {node.op_type} node {node.name!r}"
        elif name in self.inputs:
            kind, source = "input", "a graph input (fed at run time)"
        else:
            kind, source = "missing", "defined nowhere in the graph (missing initializer)"
        cls, remedy = _WEIGHT_SOURCES[kind]
        raise fail(
            cls,
            f"Conv node {conv.name!r}: {role} {name!r} is not stored in the model",
            "an initializer or a Constant node",
            source,
            remedy,
        )


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in out.items()}


def _spatial(node: onnx.NodeProto, attrs: dict[str, Any], name: str, default: list[int], size: int) -> list[int]:
    value = list(attrs.get(name, default))
    if len(value) != size:
        raise fail(
            UnsupportedError,
            f"Conv node {node.name!r}: attribute `{name}` is not one-dimensional",
            f"{size} value(s) for a 1-d convolution",
            f"{name}={value}",
        )
    return value


def _probe_lengths(stride: int, span: int) -> list[int]:
    """Input lengths that cover every case of the ``same_*`` formula (periodic in L, period = stride)."""
    return list(range(1, span + 3 * stride + 3)) + [997, 1024, 4099]


def _pad_function(g: _Graph, pad: onnx.NodeProto) -> Callable[[int], tuple[int, int]] | tuple[int, int]:
    """A Pad node's (begin, end) on the length axis: a constant pair, or a function of the input length."""
    if g.opset < 11:  # pads were an attribute before opset 11
        return _length_axis_pads(pad, np.array(_attrs(pad).get("pads", [0] * 6)), None)
    axes = None
    if len(pad.input) > 3 and pad.input[3]:
        axes = g.constant(pad.input[3])
        if axes is None:
            raise fail(
                UnsupportedError,
                f"Pad node {pad.name!r}: `axes` is computed at run time",
                "constant axes",
                f"tensor {pad.input[3]!r}",
            )
    pads = g.constant(pad.input[1])
    if pads is not None:
        return _length_axis_pads(pad, pads, axes)
    evaluate = _pads_evaluator(g, pad)
    return lambda length: _length_axis_pads(pad, evaluate(length), axes)


def _length_axis_pads(pad: onnx.NodeProto, pads: np.ndarray, axes: np.ndarray | None) -> tuple[int, int]:
    pads = np.asarray(pads, dtype=np.int64).ravel()
    axes_list = [int(a) % 3 for a in (axes if axes is not None else range(3))]
    if pads.size != 2 * len(axes_list):
        raise fail(
            UnsupportedError,
            f"Pad node {pad.name!r} does not pad a (N, C, L) tensor",
            f"{2 * len(axes_list)} pads",
            f"pads={pads.tolist()}",
        )
    begin = dict(zip(axes_list, pads[: len(axes_list)]))
    end = dict(zip(axes_list, pads[len(axes_list) :]))
    if any(begin.get(a, 0) or end.get(a, 0) for a in (0, 1)) or begin.get(2, 0) < 0 or end.get(2, 0) < 0:
        raise fail(
            UnsupportedError,
            f"Pad node {pad.name!r} pads something other than the length axis",
            "non-negative pads on axis 2 only",
            f"pads={pads.tolist()} on axes {axes_list}",
        )
    return int(begin.get(2, 0)), int(end.get(2, 0))


def _pads_evaluator(g: _Graph, pad: onnx.NodeProto) -> Callable[[int], np.ndarray]:
    """Extract the sub-graph computing ``pad``'s pads from the length of its data input; return it as a function."""
    data, target = pad.input[0], pad.input[1]
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    seen: set[str] = set()

    def refuse(what: str, received: str) -> LayoutError:
        expected = f"pads that are constant or computed from Shape({data})"
        return fail(UnsupportedError, f"Pad node {pad.name!r}: the pads depend on {what}", expected, received)

    def visit(name: str) -> None:
        if not name or name in seen:
            return
        seen.add(name)
        if name in g.initializers:
            inits.append(g.initializers[name])
            return
        node = g.producers.get(name)
        if node is None or name == data:
            raise refuse(f"the values of tensor {name!r}", "value-dependent pads")
        if node.op_type in ("Shape", "Size"):
            if node.input[0] != data:
                raise refuse(f"the shape of {node.input[0]!r}", f"{node.op_type}({node.input[0]})")
        else:
            for i in node.input:
                visit(i)
        nodes.append(node)

    visit(target)
    # Shape and Size read only the shape, so a float32 stand-in of length L serves every dtype.
    graph = helper.make_graph(
        nodes,
        "pads",
        [helper.make_tensor_value_info(data, TensorProto.FLOAT, [1, 1, "L"])],
        [helper.make_tensor_value_info(target, TensorProto.INT64, None)],
        inits,
    )
    sub = helper.make_model(graph, opset_imports=list(g.model.opset_import))
    sub.ir_version = g.model.ir_version
    try:
        session = ort.InferenceSession(sub.SerializeToString(), _session_options(), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise fail(
            UnsupportedError,
            f"Pad node {pad.name!r}: cannot evaluate how its pads are computed",
            "a pads sub-graph onnxruntime can run",
            f"{type(exc).__name__}: {exc}",
        ) from None
    return lambda length: session.run(None, {data: np.zeros((1, 1, length), np.float32)})[0]


def _rule_from_function(pads_of: Callable[[int], tuple[int, int]], probe: Conv1D, pad: onnx.NodeProto) -> Any:
    """Constant pads, or the ``same_*`` rule the pads follow for every probed length."""
    seen = {n: pads_of(n) for n in _probe_lengths(probe.stride[0], probe.receptive_field[0])}
    if len(set(seen.values())) == 1:
        return (next(iter(seen.values())),)
    for rule in ("same_upper", "same_lower"):
        if all(probe.replace(padding=rule).pads(n)[0] == p for n, p in seen.items()):
            return rule
    raise fail(
        UnsupportedError,
        f"Pad node {pad.name!r} computes its pads from the input length in an unknown way",
        "constant pads or the 'same_upper' / 'same_lower' rule for this stride and dilation",
        ", ".join(f"L={n}: {p}" for n, p in list(seen.items())[:6]),
    )


def _padding(g: _Graph, node: onnx.NodeProto, attrs: dict[str, Any], probe: Conv1D) -> tuple[Any, str]:
    """(padding, padding_mode) of the Conv node, with a feeding Pad node folded in."""
    auto = attrs.get("auto_pad", "NOTSET")
    pads = _spatial(node, attrs, "pads", [0, 0], 2)
    if auto not in ("NOTSET", *_AUTO_PAD):
        raise fail(
            ConfigError,
            f"Conv node {node.name!r}: invalid attribute `auto_pad`",
            "NOTSET, VALID, SAME_UPPER or SAME_LOWER",
            f"auto_pad={auto!r}",
        )
    if auto != "NOTSET" and any(pads):
        raise fail(
            ConfigError,
            f"Conv node {node.name!r}: both `auto_pad` and `pads` are set",
            "one of them",
            f"auto_pad={auto!r}, pads={pads}",
        )
    own: Any = _AUTO_PAD[auto] if auto != "NOTSET" else ((pads[0], pads[1]),)
    own_zero = own in ("valid", ((0, 0),)) or (own in ("same_upper", "same_lower") and probe.receptive_field == (1,))
    pad = g.producers.get(node.input[0])
    if pad is None or pad.op_type != "Pad":
        return own, "zeros"
    pad_attrs = _attrs(pad)
    mode_name = pad_attrs.get("mode", "constant")
    if mode_name not in _FROM_PAD_MODE:
        raise fail(
            UnsupportedError,
            f"Pad node {pad.name!r} feeding Conv {node.name!r} has an unknown mode",
            f"one of {sorted(_FROM_PAD_MODE)}",
            f"mode={mode_name!r}",
        )
    mode = _FROM_PAD_MODE[mode_name]
    if mode == "zeros":
        if g.opset < 11:
            value = pad_attrs.get("value", 0.0)
        else:
            value = g.constant(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else 0.0
        if value is None or np.any(np.asarray(value, dtype=np.float64) != 0):
            raise fail(
                UnsupportedError,
                f"Pad node {pad.name!r} pads with a non-zero or computed constant",
                "constant_value 0",
                f"constant_value={value!r}",
            )
    function = _pad_function(g, pad)
    outer = (function,) if isinstance(function, tuple) else _rule_from_function(function, probe, pad)
    if outer == ((0, 0),):
        return own, "zeros"  # a Pad that adds nothing; the hint may still name the mode
    if own_zero:
        return outer, mode
    if mode == "zeros" and isinstance(outer, tuple) and isinstance(own, tuple):
        ((pb, pe),), ((cb, ce),) = outer, own
        return ((pb + cb, pe + ce),), mode
    raise fail(
        UnsupportedError,
        f"Pad node {pad.name!r} and Conv node {node.name!r} both pad",
        "padding in one of them (or zero padding in both)",
        f"Pad mode {mode_name!r} with pads {outer} and Conv padding {own}",
    )


def _apply_hint(conv: Conv1D, node: onnx.NodeProto) -> Conv1D:
    """Take the padding rule's name and the mode from the node's hint when they describe the same computation."""
    if not node.doc_string.startswith(_HINT):
        return conv
    hint = dict(_HINT_FIELD.findall(node.doc_string))
    try:
        named = conv.replace(
            padding=hint.get("padding", conv.padding),
            padding_mode=hint.get("padding_mode", conv.padding_mode),
        )
    except LayoutError:
        return conv
    lengths = _probe_lengths(conv.stride[0], conv.receptive_field[0])
    if any(named.pads(n) != conv.pads(n) for n in lengths):
        return conv
    if named.padding_mode != conv.padding_mode and any(conv.pads(n) != ((0, 0),) for n in lengths):
        return conv
    return named


def _recipe_text(steps: tuple[_Step, ...]) -> str:
    """A recipe as text, e.g. ``HardSigmoid(x, alpha=0.2, beta=0.5)``."""

    def show(value: Any) -> str:
        return f"{value:.6g}" if isinstance(value, float) else repr(value)

    parts = []
    for step in steps:
        args = ["x" if r == "z" else show(r) if isinstance(r, float) else f"t{r}" for r in step.inputs]
        args += [f"{k}={show(v)}" for k, v in step.attrs.items()]
        parts.append(f"{step.op}({', '.join(args)})")
    return " -> ".join(parts)


def _node_text(g: _Graph, node: onnx.NodeProto) -> str:
    """A node with its constant scalar inputs and its attributes, e.g. ``Clip node 'c' (inputs x, -1, 1)``."""

    def show(name: str) -> str:
        value = g.constant(name) if name else None
        return f"{float(value.ravel()[0]):.6g}" if value is not None and value.size == 1 else "x"

    details = [f"inputs {', '.join(show(i) for i in node.input)}"] if len(node.input) > 1 else []
    details += [f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v!r}" for k, v in _attrs(node).items()]
    return f"{node.op_type} node {node.name!r}" + (f" ({', '.join(details)})" if details else "")


def _same_constant(value: np.ndarray | None, expected: float) -> bool:
    """A scalar constant equal to ``expected`` rounded to the constant's own dtype."""
    if value is None or value.size != 1 or value.dtype.name not in DTYPE_OPSET:
        return False
    return bool(value.ravel()[0] == np.asarray(expected).astype(value.dtype))


def _same_attribute(actual: Any, expected: Any) -> bool:
    """Float attributes are stored as float32, so they are compared at that precision."""
    if isinstance(expected, float):
        return isinstance(actual, float) and np.float32(actual) == np.float32(expected)
    return bool(actual == expected)


def _schema_defaults(op: str, opset: int) -> dict[str, Any]:
    """The attribute defaults of ``op`` at ``opset`` (its newest definition if it does not exist there)."""
    try:
        schema = onnx.defs.get_schema(op, opset)
    except onnx.defs.SchemaError:
        schema = onnx.defs.get_schema(op)
    out = {name: helper.get_attribute_value(a.default_value) for name, a in schema.attributes.items() if a.default_value.name}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in out.items()}


def _attrs_match(node: onnx.NodeProto, step: _Step, opset: int) -> bool:
    """The node's attributes, with ONNX's defaults for omitted ones, are exactly the step's."""
    defaults = _schema_defaults(node.op_type, opset)
    actual, expected = {**defaults, **_attrs(node)}, {**defaults, **step.attrs}
    return set(actual) == set(expected) and all(_same_attribute(actual[k], v) for k, v in expected.items())


def _inputs_match(g: _Graph, node: onnx.NodeProto, step: _Step, tensors: dict[Any, str]) -> bool:
    """``node``'s inputs are the step's: the named tensors and scalar constants of the given values."""
    names = list(node.input)
    if len(names) != len(step.inputs):
        return False
    orders = [step.inputs, step.inputs[::-1]] if step.op in _COMMUTATIVE else [step.inputs]

    def fits(name: str, ref: Any) -> bool:
        if isinstance(ref, float):
            return _same_constant(g.constant(name), ref)
        return name == tensors[ref]

    return any(all(fits(name, ref) for name, ref in zip(names, order)) for order in orders)


def _match_recipe(
    g: _Graph, steps: tuple[_Step, ...], z: str, consumers: dict[str, list[onnx.NodeProto]]
) -> list[onnx.NodeProto] | None:
    """The nodes that compute ``steps`` from tensor ``z``, or None."""
    tensors: dict[Any, str] = {"z": z}
    matched: list[onnx.NodeProto] = []
    for i, step in enumerate(steps):
        anchor = tensors[next(r for r in step.inputs if not isinstance(r, float))]
        found = next(
            (
                n
                for n in consumers.get(anchor, [])
                if n.op_type == step.op
                and n.domain in ("", "ai.onnx")
                and not any(n is m for m in matched)
                and _inputs_match(g, n, step, tensors)
                and _attrs_match(n, step, g.opset)
            ),
            None,
        )
        if found is None:
            return None
        matched.append(found)
        tensors[i] = found.output[0]
    return matched


def _read_activation(g: _Graph, conv_node: onnx.NodeProto) -> str:
    """The activation applied to the Conv's output: the recipe whose nodes are the only users of it."""
    z = conv_node.output[0]
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.model.graph.node:
        for name in dict.fromkeys(n.input):
            consumers.setdefault(name, []).append(n)
    graph_outputs = {o.name for o in g.model.graph.output}
    label = f"Conv node {conv_node.name!r}"
    partial = None
    for activation, recipes in ACTIVATION_RECIPES.items():
        for steps in recipes:
            matched = _match_recipe(g, steps, z, consumers)
            if matched is None:
                continue
            inner = [z] + [m.output[0] for m in matched[:-1]]
            others = [n for t in inner for n in consumers.get(t, []) if not any(n is m for m in matched)]
            if not others and not graph_outputs & set(inner):
                return activation
            partial = (activation, others, graph_outputs & set(inner))
    if partial is not None:
        activation, others, exposed = partial
        users = [_node_text(g, n) for n in others] + [f"graph output {t!r}" for t in sorted(exposed)]
        raise fail(
            UnsupportedError,
            f"{label} is followed by {activation}, but its output is also used without it",
            f"the {activation} nodes as the only users of the Conv's output",
            f"also used by {', '.join(users)}",
            "layoutconv records a convolution with its activation applied to every use of its output.",
        )
    unknown = [n for n in consumers.get(z, []) if n.op_type in ACTIVATION_OPS]
    if not unknown:
        return "linear"  # the Conv's output goes on to something that is not an activation
    node = unknown[0]
    alike = [
        f"{_recipe_text(steps)} ({activation})"
        for activation, recipes in ACTIVATION_RECIPES.items()
        for steps in recipes
        if steps[0].op == node.op_type
    ]
    raise fail(
        UnsupportedError,
        f"{label} is followed by a {node.op_type} activation that layoutconv cannot record",
        " or ".join(alike) if alike else f"one of the activations layoutconv records: {', '.join(ACTIVATION_RECIPES)}",
        _node_text(g, node),
        "Apply this activation yourself after the converted convolution "
        "(a graph whose Conv output is the graph output reads as a plain convolution).",
    )


def from_native(model_or_path: Any, node: str | int | None = None) -> Conv1D:
    """The ``Conv`` node of an ONNX model as a :class:`Conv1D` (a ``Pad`` node feeding it becomes its padding).

    Parameters
    ----------
    model_or_path:
        An ``onnx.ModelProto`` or a path to a ``.onnx`` file.  External data is refused.
    node:
        Name of the ``Conv`` node, or its index among the ``Conv`` nodes; may be
        omitted when the graph has exactly one.
    """
    model = _load(model_or_path)
    _refuse_external_data(model)
    convs = [n for n in model.graph.node if n.op_type == "Conv" and n.domain in ("", "ai.onnx")]
    conv_node = _pick(convs, node)
    label = f"Conv node {conv_node.name!r}"
    g = _Graph(model)
    kernel = g.weight(conv_node.input[1], conv_node, "weight W")
    has_bias = len(conv_node.input) > 2 and conv_node.input[2]
    bias = g.weight(conv_node.input[2], conv_node, "bias B") if has_bias else None
    if kernel.ndim != 3:
        raise fail(
            UnsupportedError,
            f"{label} is not a 1-d convolution",
            "a weight of rank 3 (out_channels, in_channels // group, kernel)",
            f"weight shape {kernel.shape}",
            "layoutconv reads Conv1D only.",
        )
    if kernel.dtype.name not in DTYPE_OPSET:
        raise fail(
            UnsupportedError,
            f"{label}: unsupported weight dtype",
            f"one of {sorted(DTYPE_OPSET)}",
            f"{kernel.dtype}",
            "Quantized convolutions are not supported.",
        )
    attrs = _attrs(conv_node)
    declared = _spatial(conv_node, attrs, "kernel_shape", [kernel.shape[2]], 1)
    if declared[0] != kernel.shape[2]:
        raise fail(
            ShapeError,
            f"{label}: `kernel_shape` disagrees with the weight",
            f"kernel_shape=[{kernel.shape[2]}] (weight shape {kernel.shape})",
            f"kernel_shape={declared}",
        )
    stride = _spatial(conv_node, attrs, "strides", [1], 1)
    dilation = _spatial(conv_node, attrs, "dilations", [1], 1)
    try:
        probe = Conv1D(kernel, bias, stride=stride, dilation=dilation, groups=attrs.get("group", 1))
    except LayoutError as exc:
        raise type(exc)(f"{label}: {exc}") from None
    padding, mode = _padding(g, conv_node, attrs, probe)
    activation = _read_activation(g, conv_node)
    return _apply_hint(probe.replace(padding=padding, padding_mode=mode, activation=activation), conv_node)


# ---------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------
def _session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


def _ort_error(exc: Exception, what: str, remedy: str, default: type[LayoutError]) -> LayoutError:
    cls = _ORT_ERRORS.get(type(exc), default)
    message = str(exc).strip().rstrip(".")
    return fail(cls, what, "a model and input onnxruntime accepts", f"onnxruntime {ort.__version__}: {message}", remedy)


def run(model: Any, x: Any) -> np.ndarray:
    """Run an ONNX model (``ModelProto`` or path) on ``x`` of shape ``(N, C, L)`` with onnxruntime's CPU provider.

    Returns the first output, ``(N, O, L_out)``.  onnxruntime's CPU ``Conv`` has
    float32 and float16 kernels only: float64 and bfloat16 raise
    :class:`~layoutconv.UnsupportedError`.
    """
    x = np.asarray(x)
    if x.ndim != 3:
        raise fail(ShapeError, "Input has the wrong rank", "shape (N, C, L), channels first", f"shape {tuple(x.shape)}")
    if x.dtype.name == "bfloat16":
        raise fail(
            UnsupportedError,
            "onnxruntime cannot run bfloat16 convolutions on CPU",
            "float16 or float32 (onnxruntime's CPU Conv kernels)",
            "a bfloat16 input",
            "Verify bfloat16 weights in another framework, or cast a copy to float32.",
        )
    data = (model if isinstance(model, onnx.ModelProto) else _load(model)).SerializeToString()
    try:
        session = ort.InferenceSession(data, _session_options(), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise _ort_error(
            exc,
            f"onnxruntime cannot run this model on CPU (input dtype {x.dtype.name})",
            "onnxruntime's CPU provider has Conv kernels for float32 and float16 only; cast a copy to float32 to run it.",
            FileFormatError,
        ) from None
    first = session.get_inputs()[0]
    wanted = _ORT_INPUT_DTYPES.get(first.type, first.type)
    if wanted != x.dtype.name:
        raise fail(
            ConfigError,
            f"Input dtype does not match the model's input {first.name!r}",
            f"{wanted}",
            f"{x.dtype.name}",
            f"Cast it: x.astype(np.{wanted}).",
        )
    try:
        y = session.run(None, {first.name: x})[0]
    except Exception as exc:
        raise _ort_error(
            exc,
            f"onnxruntime failed on an input of shape {tuple(x.shape)}",
            "Check the input length against the receptive field and the padding mode's limits.",
            ShapeError,
        ) from None
    return np.asarray(y)


registry.register(Conv1D, NAME, to_native=to_native, run=run)
