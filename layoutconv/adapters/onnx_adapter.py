"""ONNX adapter: a :class:`~layoutconv.Conv` as an ONNX ``Conv`` node (with a ``Pad`` node when needed),
a :class:`~layoutconv.ConvTranspose` as a ``ConvTranspose`` node, at spatial rank 1, 2 or 3.

``to_native`` writes a self-contained model: input ``x`` of shape ``(N, C, *spatial)``
with dynamic ``N`` and spatial sizes, output ``y``, kernel ``W`` (``O I *K``, the
canonical layout, same bytes) and bias ``B`` as initializers.  ``pads`` are ordered
``[x1_begin, x2_begin, ..., x1_end, x2_end, ...]``.  A ``ConvTranspose`` keeps
``pads`` / ``auto_pad``, ``output_padding`` and ``output_shape`` as attributes.
A ``Conv``'s padding becomes (per axis where it says so):

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
linear), folding a ``Pad`` node that feeds it into the padding.  Pads computed at
run time are recognised without running the file: the sub-graph ``to_native``
writes is matched by its structure, and other shape arithmetic is evaluated by a
small numpy interpreter over a whitelist of ops, with caps on nodes and tensor
sizes (see ``docs/security.md``); onnxruntime never runs a part of a file that is
being read.  The padding rule's name (``causal``, ``same_upper`` ...) travels in
the ``Conv`` node's ``doc_string`` and is used only when it describes the same
computation as the graph.
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
from ..chain import Chain
from ..conv import Conv
from ..transpose import ConvTranspose
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

#: Largest ``.onnx`` file read: protobuf cannot parse a message of 2 GiB or more.
MAX_ONNX_BYTES = (1 << 31) - 1
#: Tensor types read from a file (one value per element, fixed size); others are refused.
_READ_TYPES = frozenset(
    {
        TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16,
        TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.INT64,
        TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64, TensorProto.BOOL,
    }
)  # fmt: skip
#: Ops the pads interpreter evaluates: shape arithmetic on tiny tensors.  Anything else is refused.
PAD_OPS = (
    "Shape", "Size", "Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Cast", "Add", "Sub", "Mul",
    "Div", "Mod", "Max", "Min", "Neg", "Constant", "Reshape", "Transpose", "ConstantOfShape", "Identity",
)  # fmt: skip
#: At most this many nodes may compute one Pad node's pads (``to_native`` writes 10, PyTorch's exporter 15) ...
MAX_PAD_NODES = 64
#: ... and every tensor among them holds at most this many elements (pads of a 1-d conv have 6).
MAX_PAD_ELEMENTS = 64
#: Input lengths at which computed pads are compared with a rule: all of them up to this bound, samples beyond.
MAX_PROBE_LENGTHS = 1024


# ---------------------------------------------------------------------------
# Conv, ConvTranspose -> ONNX
# ---------------------------------------------------------------------------
def required_opset(conv: Conv | ConvTranspose) -> int:
    """The lowest opset that expresses ``conv`` (17; 19 for ``circular``; 22 for bfloat16)."""
    mode = getattr(conv, "padding_mode", "zeros")  # a ConvTranspose has none
    return max(MIN_OPSET, PAD_MODES[mode][1], DTYPE_OPSET[conv.dtype.name])


def choose_opset(need: int, opset: Any, what: str) -> int:
    """``opset`` checked against ``need`` (the lowest that expresses ``what``) and the newest onnx knows; ``need`` if None."""
    latest = onnx.defs.onnx_opset_version()
    if opset is None:
        return need
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not need <= opset <= latest:
        raise fail(
            ConfigError,
            "Invalid value for argument `opset`",
            f"an integer from {need} (what {what} needs) to {latest} (the newest this onnx knows)",
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


def _dynamic_pads(conv: Conv, data: str) -> tuple[list[onnx.NodeProto], list[TensorProto], str]:
    """Nodes computing ``[0, 0, *begins, 0, 0, *ends]`` from ``Shape(data)`` for a ``same_*`` rule, every axis at once.

    The arithmetic runs on vectors of one value per spatial axis:
    total = max((ceil(L / s) - 1) * s + r - L, 0); the odd pad goes at the end (upper) or the begin (lower).
    """
    rank = conv.spatial_rank
    s, r = np.array(conv.stride), np.array(conv.receptive_field)
    inits = [
        _int64("pad_s_minus_1", *(s - 1)),
        _int64("pad_s", *s),
        _int64("pad_r_minus_s", *(r - s)),
        _int64("pad_zero", *[0] * rank),
        _int64("pad_two", *[2] * rank),
        _int64("pad_zeros_nc", 0, 0),
    ]
    mk = helper.make_node
    nodes = [
        mk("Shape", [data], ["pad_L"], start=2, end=2 + rank, name="pad_length"),
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


def activation_nodes(activation: str, dtype: Any, opset: int, z: str, out: str) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """The nodes applying ``activation`` to tensor ``z`` (constants in ``dtype``), the last one writing ``out``.

    Internal tensors are ``act_<i>``, constants ``act_<i>_const<j>``, nodes ``<activation>_<i>``:
    a caller that puts them in a larger graph renames them.
    """
    steps = _recipe_for(activation, opset)
    nodes, inits = [], []
    outputs = [f"act_{i}" for i in range(len(steps) - 1)] + [out]
    for i, step in enumerate(steps):
        inputs = []
        for ref in step.inputs:
            if isinstance(ref, float):
                name = f"act_{i}_const{len(inputs)}"
                inits.append(_tensor(name, np.asarray(ref, dtype=dtype)))
                inputs.append(name)
            else:
                inputs.append(z if ref == "z" else outputs[ref])
        nodes.append(helper.make_node(step.op, inputs, [outputs[i]], name=f"{activation}_{i}", **step.attrs))
    return nodes, inits


#: spatial rank -> names of the input's dynamic spatial dims
SPATIAL_DIMS: dict[int, tuple[str, ...]] = {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}


def _flat(pairs: tuple[tuple[int, int], ...]) -> list[int]:
    """``((b1, e1), (b2, e2), ...)`` as ONNX orders pads: ``[b1, b2, ..., e1, e2, ...]``."""
    return [b for b, _ in pairs] + [e for _, e in pairs]


def _conv_nodes(conv: Conv, attrs: dict[str, Any]) -> tuple[list[onnx.NodeProto], list[TensorProto], str]:
    """The padding of ``conv``: ``attrs`` gets ``auto_pad`` or ``pads``; returns the Pad nodes before the Conv and its data input."""
    rank = conv.spatial_rank
    static = None if conv.padding_depends_on_length else conv.pads()
    zero = ((0, 0),) * rank
    if conv.padding_mode == "zeros" or static == zero:
        auto = _TO_AUTO_PAD.get(conv.padding) if isinstance(conv.padding, str) else None
        if auto and (all(d == 1 for d in conv.dilation) or auto == "VALID"):
            attrs["auto_pad"] = auto  # onnxruntime refuses SAME_* with a dilation > 1
            return [], [], "x"
        if static is not None:
            attrs["pads"] = _flat(static)
            return [], [], "x"
    if static is None:
        nodes, inits, pads = _dynamic_pads(conv, "x")
    else:
        nodes, inits, pads = [], [_int64("pads", *_flat(((0, 0), (0, 0)) + static))], "pads"
    mode = PAD_MODES[conv.padding_mode][0]
    nodes.append(helper.make_node("Pad", ["x", pads], ["x_padded"], mode=mode, name="pad"))
    attrs["auto_pad"] = "VALID"
    return nodes, inits, "x_padded"


def _transpose_attrs(t: ConvTranspose, attrs: dict[str, Any]) -> None:
    """``ConvTranspose``'s own attributes: ``output_padding``, ``pads`` or ``auto_pad``, ``output_shape``."""
    if any(a >= s for a, s in zip(t.output_padding, t.stride)):
        # onnxruntime 1.32: "output_padding (1) may be too large for stride (1)" (PyTorch allows < dilation too)
        raise fail(
            UnsupportedError,
            "onnxruntime refuses an output_padding that is not smaller than the stride",
            "output_padding < stride on every axis",
            f"output_padding={t.output_padding} with stride {t.stride} (allowed by PyTorch because dilation is {t.dilation})",
            "Convert to PyTorch instead (target 'torch'), or add the extra output positions yourself.",
        )
    if any(t.output_padding):
        attrs["output_padding"] = list(t.output_padding)
    if isinstance(t.padding, tuple):
        attrs["pads"] = _flat(t.padding)
    else:
        attrs["auto_pad"] = _TO_AUTO_PAD[t.padding]
    if t.output_shape_ is not None:
        attrs["output_shape"] = list(t.output_shape_)


def conv_parts(conv: Conv | ConvTranspose, opset: int, weights: bool = True) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """The nodes and initializers computing ``conv`` from tensor ``x`` into ``y``: kernel ``W``, bias ``B``.

    ``weights=False`` leaves ``W`` and ``B`` out of the initializers (the caller stores them itself).

    The convolution node is named ``conv``; every other tensor and node has a
    fixed local name, so a caller placing several convolutions in one graph
    (:mod:`layoutconv.adapters.onnx_layers`) renames them.
    """
    inits = [] if not weights else [_tensor("W", conv.kernel)] + ([] if conv.bias is None else [_tensor("B", conv.bias)])
    attrs: dict[str, Any] = dict(
        kernel_shape=list(conv.kernel_shape), strides=list(conv.stride), dilations=list(conv.dilation), group=conv.groups
    )
    if isinstance(conv, ConvTranspose):
        op, nodes, data, hint = "ConvTranspose", [], "x", ""
        _transpose_attrs(conv, attrs)
    else:
        op = "Conv"
        nodes, pad_inits, data = _conv_nodes(conv, attrs)
        inits += pad_inits
        hint = f"{_HINT} padding_mode={conv.padding_mode}"
        if isinstance(conv.padding, str):
            hint += f" padding={conv.padding}"
    inputs = [data, "W"] + (["B"] if conv.bias is not None else [])
    conv_out = "y" if conv.activation == "linear" else "y_linear"
    nodes.append(helper.make_node(op, inputs, [conv_out], name="conv", doc_string=hint, **attrs))
    if conv.activation != "linear":
        act_nodes, act_inits = activation_nodes(conv.activation, conv.dtype, opset, conv_out, "y")
        nodes += act_nodes
        inits += act_inits
    return nodes, inits


def to_native(conv: Conv | ConvTranspose, opset: int | None = None) -> onnx.ModelProto:
    """An ONNX model computing ``conv`` on ``x`` of shape ``(N, C, *spatial)``; it passes ``check_model(full_check=True)``.

    >>> model = to_native(conv)        # doctest: +SKIP
    >>> y = run(model, x)              # doctest: +SKIP

    Parameters
    ----------
    conv:
        A :class:`~layoutconv.Conv` (an ONNX ``Conv`` node, with a ``Pad`` node when
        needed) or a :class:`~layoutconv.ConvTranspose` (a ``ConvTranspose`` node), at
        spatial rank 1, 2 or 3.  Weights are stored bit-exactly in the canonical layout.
    opset:
        Default: :func:`required_opset` (17, 19 for ``circular``, 22 for bfloat16).
    """
    if not isinstance(conv, (Conv, ConvTranspose)):
        raise fail(
            ConfigError, "onnx.to_native needs a convolution record", "a layoutconv.Conv or ConvTranspose",
            f"{type(conv).__name__}",
        )
    opset = choose_opset(required_opset(conv), opset, repr(conv))
    rank = conv.spatial_rank
    elem = helper.np_dtype_to_tensor_dtype(conv.dtype)
    nodes, inits = conv_parts(conv, opset)
    op = "ConvTranspose" if isinstance(conv, ConvTranspose) else "Conv"
    dims = SPATIAL_DIMS[rank]
    graph = helper.make_graph(
        nodes,
        f"layoutconv_{op.lower()}{rank}d",
        [helper.make_tensor_value_info("x", elem, ["N", conv.in_channels, *dims])],
        [helper.make_tensor_value_info("y", elem, ["N", conv.out_channels, *(f"{d}_out" for d in dims)])],
        inits,
        doc_string=repr(conv),
    )
    model = checked_model(graph, opset, repr(conv))
    return model


# ---------------------------------------------------------------------------
# ONNX -> Conv, ConvTranspose
# ---------------------------------------------------------------------------
def checked_model(graph: onnx.GraphProto, opset: int, what: str, remedy: str = "Pass a newer opset.", check: bool = True) -> onnx.ModelProto:
    """A model around ``graph`` at ``opset`` (lowest IR version that holds it) that passes the full ONNX checker.

    ``check=False`` leaves the check to the caller (a model whose weights are external data is checked by its path).
    """
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", int(opset))], producer_name="layoutconv", producer_version=__version__
    )
    model.ir_version = helper.find_min_ir_version_for(model.opset_import)
    if not check:
        return model
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise fail(
            UnsupportedError,
            f"ONNX opset {opset} cannot express {what}",
            "a model the ONNX checker accepts",
            f"the checker's complaint: {str(exc)[:600]}",
            remedy,
        ) from None
    return model


def _load(model_or_path: Any, external: str = "load") -> onnx.ModelProto:
    """A ``ModelProto`` as it is, or the model in a ``.onnx`` file (size cap, typed errors).

    A file's external data is followed only when safe (:mod:`onnx_external`): checked, then read into the
    tensors (``external="load"``), or only checked (``"check"``, for onnxruntime to read it from the path).
    """
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
    size = os.path.getsize(path)
    if size > MAX_ONNX_BYTES:
        raise fail(
            UnsafeFileError,
            "File is too large to be an ONNX model",
            f"at most {MAX_ONNX_BYTES} bytes (protobuf cannot hold a larger message)",
            f"{path!r} ({size} bytes)",
            "Large models keep their weights in external data beside the model (model.onnx.data), which layoutconv reads.",
        )
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise fail(
            FileFormatError,
            "File is not an ONNX model",
            "a serialized onnx.ModelProto",
            f"{path!r} ({type(exc).__name__}: {exc})",
            "Check that the file is complete.",
        ) from None
    from . import onnx_external

    if onnx_external.has_external(model):
        base_dir = os.path.dirname(path) or "."
        if external == "load":
            onnx_external.load_external(model, base_dir)
        else:
            onnx_external.plan(model, base_dir)
    return model


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
                "A model in memory has no directory to find its data in: pass the .onnx file's path (layoutconv "
                "follows external data beside it when that is safe, docs/security.md), or load the data into the "
                "ModelProto first.",
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
        what = "Model has no Conv node (nor ConvTranspose node)"
    elif node is None:
        what = "Model has several Conv nodes"
    raise fail(
        ConfigError,
        what,
        "node=<name> or node=<index among the Conv and ConvTranspose nodes>, picking exactly one",
        f"node={node!r}; the model's Conv and ConvTranspose nodes: [{', '.join(labels)}]",
    )


#: where a weight came from -> (error class, remedy)
_WEIGHT_SOURCES: dict[str, tuple[type[LayoutError], str]] = {
    "node": (UnsupportedError, "Fold it into an initializer first (e.g. with onnxsim or onnxruntime's offline optimizer)."),
    "input": (UnsupportedError, "Store it as an initializer: layoutconv reads trained weights, not run-time inputs."),
    "missing": (FileFormatError, "The model is incomplete or was saved without its weights; re-export it."),
}


def checked_array(t: TensorProto, what: str, max_elements: int | None = None) -> np.ndarray:
    """``numpy_helper.to_array`` after checking that the tensor holds exactly the data its dims declare.

    The declared element count is compared with the bytes of ``raw_data`` (or the
    length of the typed field) before anything is allocated; external data,
    segments and types other than plain numbers are refused.
    """
    if t.data_location == TensorProto.EXTERNAL:
        raise fail(
            UnsafeFileError,
            f"Tensor {what} keeps its data in an external file",
            "data stored inside the model",
            "data_location=EXTERNAL",
            "layoutconv never follows external-data paths.",
        )
    if t.HasField("segment") or t.data_type not in _READ_TYPES:
        kind = "a segment of a tensor" if t.HasField("segment") else f"element type {t.data_type}"
        raise fail(UnsupportedError, f"Cannot read tensor {what}", "a float or integer tensor stored whole", kind)
    dims = list(t.dims)
    if any(d < 0 for d in dims):
        raise fail(FileFormatError, f"Tensor {what} has a negative dimension", "dims >= 0", f"dims {dims}")
    count = math.prod(dims)
    if max_elements is not None and count > max_elements:
        raise fail(UnsupportedError, f"Tensor {what} is too large here", f"at most {max_elements} elements", f"dims {dims}")
    itemsize = helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    if t.HasField("raw_data"):
        present, expected, unit = len(t.raw_data), count * itemsize, "bytes of raw_data"
    else:
        field = helper.tensor_dtype_to_field(t.data_type)
        present, expected, unit = len(getattr(t, field)), count, f"values in {field}"
    if present != expected:
        raise fail(
            FileFormatError,
            f"Tensor {what} does not hold the data its dims declare",
            f"{expected} {unit} for dims {dims}",
            f"{present}",
            "The model is truncated or corrupt; export it again.",
        )
    try:
        return numpy_helper.to_array(t)
    except (ValueError, TypeError) as exc:
        raise fail(FileFormatError, f"Cannot read tensor {what}", "a well-formed TensorProto", f"{type(exc).__name__}: {exc}") from None


def _constant_value(node: onnx.NodeProto, max_elements: int | None = None) -> np.ndarray | None:
    """A ``Constant`` node's value (tensor, ints or floats), checked like an initializer; None for other kinds."""
    for a in node.attribute:
        if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
            return checked_array(a.t, f"{a.t.name or node.output[0]!r} of Constant node {node.name!r}", max_elements)
        if a.name in ("value_ints", "value_int", "value_floats", "value_float"):
            values = list(a.ints) if a.name == "value_ints" else list(a.floats) if a.name == "value_floats" else None
            if values is not None and max_elements is not None and len(values) > max_elements:
                raise fail(UnsupportedError, f"Constant node {node.name!r} is too large here", f"at most {max_elements} values", f"{len(values)}")
            if a.name == "value_int":
                return np.array(a.i, dtype=np.int64)
            if a.name == "value_float":
                return np.array(a.f, dtype=np.float32)
            return np.array(values, dtype=np.int64 if a.name == "value_ints" else np.float32)
    return None


class _Graph:
    """Lookups in one graph: constants (initializers and ``Constant`` nodes) and producers."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.initializers = {t.name: t for t in model.graph.initializer}
        self.producers = {out: n for n in model.graph.node for out in n.output}
        self.inputs = {i.name for i in model.graph.input} - set(self.initializers)
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), MIN_OPSET)

    def constant(self, name: str, max_elements: int | None = None) -> np.ndarray | None:
        """The value of ``name`` if it is an initializer or a ``Constant`` node's output, else None.

        The tensor is checked first (see :func:`_array`); ``max_elements`` refuses larger ones.
        """
        if name in self.initializers:
            return checked_array(self.initializers[name], f"initializer {name!r}", max_elements)
        node = self.producers.get(name)
        if node is not None and node.op_type == "Constant":
            return _constant_value(node, max_elements)
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


def _text(value: str | bytes) -> str:
    """A protobuf string field as text: protobuf returns bytes when a file stores invalid UTF-8 there."""
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    try:
        out = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    except ValueError as exc:
        raise fail(
            FileFormatError,
            f"{node.op_type} node {node.name!r} has an attribute of unknown type",
            "attributes of the types ONNX defines",
            f"{exc}"[:200],
        ) from None
    return {k: v.decode(errors="replace") if isinstance(v, bytes) else v for k, v in out.items()}


def _spatial(node: onnx.NodeProto, attrs: dict[str, Any], name: str, default: list[int], size: int) -> list[int]:
    value = attrs.get(name, default)
    if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
        raise fail(
            FileFormatError,
            f"{node.op_type} node {node.name!r}: attribute `{name}` has the wrong type",
            "a list of integers (an INTS attribute)",
            f"{name}={str(value)[:80]}",
        )
    if len(value) != size:
        raise fail(
            UnsupportedError,
            f"{node.op_type} node {node.name!r}: attribute `{name}` has the wrong number of values",
            f"{size} value(s), as the weight's spatial rank says",
            f"{name}={value}",
        )
    return value


def _probe_lengths(stride: int, span: int) -> list[int]:
    """Input lengths at which pads computed at run time are compared with the ``same_*`` rules.

    A rule's pads depend on ``m = (-L) mod s`` only: ``total = max(m + r - s, 0)``.
    Every length up to ``r + 3 s + 2`` covers each case; when that is more than
    :data:`MAX_PROBE_LENGTHS` lengths, the residues that matter (0 to 3, ``s - 3`` to
    ``s - 1``, around the clamp at ``m = s - r``, and 17 spread ones) are each
    probed at three lengths, together with every length up to 64.
    """
    last = span + 3 * stride + 2
    if last <= MAX_PROBE_LENGTHS:
        lengths = set(range(1, last + 1))
    else:
        s, r = stride, span
        residues = {0, 1, 2, 3, s - 1, s - 2, s - 3} | {s - r + i for i in range(-2, 3)} | {i * s // 17 for i in range(17)}
        lengths = set(range(1, 65))
        for m in {m % s for m in residues}:
            lengths |= {q * s - m for q in (1, 2, (r + m) // s + 2) if q * s - m >= 1}
    return sorted(lengths | {997, 1024, 4099})


Pairs = tuple[tuple[int, int], ...]
PadFunction = Callable[[tuple[int, ...]], Pairs]


def _pad_function(g: _Graph, pad: onnx.NodeProto, probe: Conv) -> Pairs | str | PadFunction:
    """A Pad node's ``(begin, end)`` pairs on the spatial axes.

    Constant pairs; or the name of the ``same_*`` rule when the pads come from the
    sub-graph :func:`_dynamic_pads` writes, for this stride and receptive field; or
    else a function of the input's spatial size, evaluated by :class:`_PadsProgram`.
    """
    rank = probe.spatial_rank
    if g.opset < 11:  # pads were an attribute before opset 11
        return _spatial_pads(pad, np.array(_attrs(pad).get("pads", [0] * 2 * (2 + rank))), None, rank)
    if len(pad.input) < 2 or not pad.input[1]:
        raise fail(FileFormatError, f"Pad node {pad.name!r} has no pads input", "Pad(data, pads, ...) from opset 11 on", f"inputs {list(pad.input)}")
    axes = None
    if len(pad.input) > 3 and pad.input[3]:
        axes = g.constant(pad.input[3], max_elements=MAX_PAD_ELEMENTS)
        if axes is None:
            raise fail(
                UnsupportedError,
                f"Pad node {pad.name!r}: `axes` is computed at run time",
                "constant axes",
                f"tensor {pad.input[3]!r}",
            )
    pads = g.constant(pad.input[1], max_elements=MAX_PAD_ELEMENTS)
    if pads is not None:
        return _spatial_pads(pad, pads, axes, rank)
    written = _written_same_rule(g, pad)
    if axes is None and written is not None and written[1:] == (probe.stride, probe.receptive_field):
        return written[0]
    program = _PadsProgram(g, pad, probe.in_channels, rank)
    if not program.reads_length:
        return _spatial_pads(pad, program(1), axes, rank)
    return lambda sizes: _spatial_pads(pad, program(sizes), axes, rank)


def _spatial_pads(pad: onnx.NodeProto, pads: np.ndarray, axes: np.ndarray | None, rank: int) -> Pairs:
    """The spatial ``(begin, end)`` pairs of a Pad node's pads on an ``(N, C, *spatial)`` tensor."""
    pads = np.asarray(pads)
    if pads.dtype.kind not in "iu":
        raise fail(UnsupportedError, f"Pad node {pad.name!r}: pads are not integers", "int64 pads", f"dtype {pads.dtype}")
    pads = pads.astype(np.int64).ravel()
    ndim = 2 + rank
    if axes is not None and any(not -ndim <= int(a) < ndim for a in np.asarray(axes).ravel()):
        raise fail(UnsupportedError, f"Pad node {pad.name!r}: `axes` out of range", f"axes in [-{ndim}, {ndim})", f"axes={np.asarray(axes).tolist()}")
    axes_list = [int(a) % ndim for a in (np.asarray(axes).ravel() if axes is not None else range(ndim))]
    if pads.size != 2 * len(axes_list):
        raise fail(
            UnsupportedError,
            f"Pad node {pad.name!r} does not pad an (N, C, {', '.join(SPATIAL_DIMS[rank])}) tensor",
            f"{2 * len(axes_list)} pads",
            f"pads={pads.tolist()}",
        )
    begin = dict(zip(axes_list, pads[: len(axes_list)]))
    end = dict(zip(axes_list, pads[len(axes_list) :]))
    spatial = range(2, ndim)
    if any(begin.get(a, 0) or end.get(a, 0) for a in (0, 1)) or any(begin.get(a, 0) < 0 or end.get(a, 0) < 0 for a in spatial):
        raise fail(
            UnsupportedError,
            f"Pad node {pad.name!r} pads something other than the spatial axes",
            f"non-negative pads on axes 2 to {ndim - 1} only",
            f"pads={pads.tolist()} on axes {axes_list}",
        )
    return tuple((int(begin.get(a, 0)), int(end.get(a, 0))) for a in spatial)


def _written_same_rule(g: _Graph, pad: onnx.NodeProto) -> tuple[str, tuple[int, ...], tuple[int, ...]] | None:
    """``(rule, strides, receptive fields)`` when ``pad``'s pads come from the sub-graph :func:`_dynamic_pads` writes.

    Matched by structure (ops, wiring and constant values), not by names:
    ``Concat([0, 0], a, [0, 0], b)`` of ``small = Div(total, 2)`` and
    ``big = Sub(total, small)``, with ``total = Max(Add(Sub(Mul(Div(Add(L, s - 1), s), s), L), r - s), 0)``
    and ``L = Shape(data, start=2, end=2 + rank)``, every constant a vector of one value per
    spatial axis.  Nothing is evaluated.
    """

    def node(name: str, op: str, arity: int) -> onnx.NodeProto | None:
        n = g.producers.get(name)
        ok = n is not None and n.op_type == op and n.domain in ("", "ai.onnx") and len(n.input) == arity
        return n if ok else None

    def const(name: str) -> list[int] | None:
        try:
            value = g.constant(name, max_elements=3)
        except LayoutError:
            return None
        return [int(v) for v in value.ravel()] if value is not None and value.dtype == np.int64 and value.ndim == 1 else None

    concat = node(pad.input[1], "Concat", 4)
    if concat is None or _attrs(concat).get("axis") != 0:
        return None
    zeros_1, first, zeros_2, second = concat.input
    if const(zeros_1) != [0, 0] or const(zeros_2) != [0, 0]:
        return None
    if node(first, "Div", 2) and node(second, "Sub", 2):
        rule, small, big = "same_upper", node(first, "Div", 2), node(second, "Sub", 2)
    elif node(first, "Sub", 2) and node(second, "Div", 2):
        rule, small, big = "same_lower", node(second, "Div", 2), node(first, "Sub", 2)
    else:
        return None
    assert small is not None and big is not None
    total_name = small.input[0]
    twos = const(small.input[1])
    if not twos or set(twos) != {2} or list(big.input) != [total_name, small.output[0]]:
        return None
    rank = len(twos)
    total = node(total_name, "Max", 2)
    need = node(total.input[0], "Add", 2) if total is not None and const(total.input[1]) == [0] * rank else None
    t3 = node(need.input[0], "Sub", 2) if need is not None else None
    t2 = node(t3.input[0], "Mul", 2) if t3 is not None else None
    blocks = node(t2.input[0], "Div", 2) if t2 is not None else None
    t1 = node(blocks.input[0], "Add", 2) if blocks is not None else None
    if need is None or t3 is None or t2 is None or blocks is None or t1 is None:
        return None
    length = node(t1.input[0], "Shape", 1)
    r_minus_s, s, s_again, s_minus_1 = const(need.input[1]), const(t2.input[1]), const(blocks.input[1]), const(t1.input[1])
    if length is None or t3.input[1] != t1.input[0] or length.input[0] != pad.input[0]:
        return None
    shape_attrs = _attrs(length)
    if (shape_attrs.get("start"), shape_attrs.get("end")) != (2, 2 + rank) or None in (r_minus_s, s, s_again, s_minus_1):
        return None
    assert r_minus_s is not None and s is not None and s_minus_1 is not None
    if len(s) != rank or s != s_again or s_minus_1 != [v - 1 for v in s] or len(r_minus_s) != rank or min(s) < 1:
        return None
    return rule, tuple(s), tuple(d + v for d, v in zip(r_minus_s, s))


class _PadsProgram:
    """The nodes that compute a Pad node's pads from its input's length, evaluated with numpy.

    Only the ops in :data:`PAD_OPS` are accepted, at most :data:`MAX_PAD_NODES`
    of them, reading only constants and ``Shape`` (or ``Size``) of the Pad's data
    input; every tensor is checked against :data:`MAX_PAD_ELEMENTS` before it is
    made.  Nothing else from the file is executed.

    >>> program = _PadsProgram(graph, pad_node, channels=8)      # doctest: +SKIP
    >>> program(123)                                             # pads for an input of length 123  # doctest: +SKIP
    """

    def __init__(self, g: _Graph, pad: onnx.NodeProto, channels: int, rank: int = 1) -> None:
        self.g, self.pad, self.channels, self.rank = g, pad, channels, rank
        self.data, self.target = pad.input[0], pad.input[1]
        self.nodes: list[onnx.NodeProto] = []
        self.constants: dict[str, np.ndarray] = {}
        self.reads_length = False
        self._collect()

    def _refuse(self, what: str, received: str, cls: type[LayoutError] = UnsupportedError) -> LayoutError:
        return fail(
            cls,
            f"Pad node {self.pad.name!r}: the pads depend on {what}",
            f"pads that are constant or computed from Shape({self.data}) with at most {MAX_PAD_NODES} nodes of {', '.join(PAD_OPS)}",
            received,
        )

    def _collect(self) -> None:
        """Find the nodes the pads depend on, in evaluation order; each is checked before its inputs are followed.

        An iterative depth-first walk: a tensor is pushed once, then its node is
        pushed again as "ready" above its inputs, so it is listed after them.
        """
        seen: set[str] = set()
        stack: list[tuple[str, bool]] = [(self.target, False)]
        accepted = 0
        while stack:
            name, ready = stack.pop()
            if ready:
                self.nodes.append(self.g.producers[name])
                continue
            if not name or name in seen:
                continue
            seen.add(name)
            if name in self.g.initializers:
                self.constants[name] = self._constant(name)
                continue
            node = self.g.producers.get(name)
            if node is None or name == self.data:
                raise self._refuse(f"the values of tensor {name!r}", "value-dependent pads")
            if node.domain not in ("", "ai.onnx") or node.op_type not in PAD_OPS:
                op = f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
                raise self._refuse(f"a {op} node ({node.name!r}), which layoutconv does not evaluate", f"op {op}")
            accepted += 1
            if accepted > MAX_PAD_NODES or len(node.input) > MAX_PAD_ELEMENTS:
                raise self._refuse(f"more than {MAX_PAD_NODES} nodes (or a node with more than {MAX_PAD_ELEMENTS} inputs)", "a larger sub-graph")
            stack.append((name, True))
            if node.op_type in ("Shape", "Size"):
                if list(node.input) != [self.data]:
                    raise self._refuse(f"the shape of {list(node.input)}", f"{node.op_type} of {list(node.input)}")
                self.reads_length = True
                continue
            stack.extend((i, False) for i in reversed(node.input) if i not in seen)

    def _constant(self, name: str) -> np.ndarray:
        value = self.g.constant(name, max_elements=MAX_PAD_ELEMENTS)
        assert value is not None
        return value

    def __call__(self, sizes: int | tuple[int, ...]) -> np.ndarray:
        """The pads tensor for an input of shape ``(1, channels, *sizes)`` (one int: that size on every axis)."""
        length = (int(sizes),) * self.rank if isinstance(sizes, (int, np.integer)) else tuple(sizes)
        env: dict[str, np.ndarray] = dict(self.constants)
        for node in self.nodes:
            reads_shape = node.op_type in ("Shape", "Size")  # of the data input, whose values are never read
            args = [] if reads_shape else [env.get(i) if i else None for i in node.input]
            if any(a is None for a, i in zip(args, node.input) if i):
                raise self._refuse("tensors computed out of order", f"node {node.name!r}", FileFormatError)
            try:
                with np.errstate(all="ignore"):
                    outputs = _PAD_OP_IMPLS[node.op_type](self, node, args, length)
            except LayoutError:
                raise
            except (ValueError, TypeError, IndexError, OverflowError, ZeroDivisionError) as exc:
                raise self._refuse(f"a {node.op_type} node ({node.name!r}) that cannot be evaluated", f"{type(exc).__name__}: {exc}") from None
            for out in node.output[:1]:
                env[out] = self._checked(np.asarray(outputs), node)
        result = env[self.target]
        return result

    def _checked(self, value: np.ndarray, node: onnx.NodeProto) -> np.ndarray:
        if value.size > MAX_PAD_ELEMENTS or value.dtype.kind not in "iuf":
            raise self._refuse(f"a {node.op_type} node ({node.name!r}) making a large or non-numeric tensor", f"shape {value.shape}, dtype {value.dtype}")
        return value

    # -- the ops -------------------------------------------------------------
    def size_check(self, shape: tuple[int, ...], node: onnx.NodeProto) -> tuple[int, ...]:
        """Refuse a result shape above the element cap before it is allocated."""
        if any(d < 0 for d in shape) or math.prod(shape) > MAX_PAD_ELEMENTS:
            raise self._refuse(f"a {node.op_type} node ({node.name!r}) making a tensor of shape {tuple(shape)}", f"more than {MAX_PAD_ELEMENTS} elements")
        return tuple(shape)


def _int_list(value: Any) -> list[int]:
    return [int(v) for v in np.asarray(value).ravel()]


def _op_shape(p: _PadsProgram, node: onnx.NodeProto, args: list[Any], length: tuple[int, ...]) -> np.ndarray:
    dims = np.array([1, p.channels, *length], dtype=np.int64)
    if node.op_type == "Size":
        return np.array(math.prod(dims), dtype=np.int64)
    a = _attrs(node)
    return dims[a.get("start", 0) : a.get("end", len(dims))]


def _op_binary(p: _PadsProgram, node: onnx.NodeProto, args: list[Any], length: int) -> np.ndarray:
    a, b = args[0], args[1]
    p.size_check(np.broadcast_shapes(a.shape, b.shape), node)
    op = node.op_type
    if op in ("Div", "Mod") and a.dtype.kind in "iu" and np.any(b == 0):
        raise ZeroDivisionError(f"{op} by zero")
    if op == "Add":
        return a + b
    if op == "Sub":
        return a - b
    if op == "Mul":
        return a * b
    if op == "Div":
        if a.dtype.kind in "iu":  # ONNX integer division truncates toward zero
            q = np.abs(a) // np.abs(b)
            return np.where((a < 0) != (b < 0), -q, q).astype(np.result_type(a, b))
        return a / b
    return np.fmod(a, b) if _attrs(node).get("fmod", 0) else np.mod(a, b)


def _op_variadic(p: _PadsProgram, node: onnx.NodeProto, args: list[Any], length: int) -> np.ndarray:
    p.size_check(np.broadcast_shapes(*(a.shape for a in args)), node)
    return (np.maximum if node.op_type == "Max" else np.minimum).reduce(np.broadcast_arrays(*args))


def _op_gather(p: _PadsProgram, node: onnx.NodeProto, args: list[Any], length: int) -> np.ndarray:
    data, indices = args[0], args[1].astype(np.int64)
    axis = _attrs(node).get("axis", 0)
    return np.take(data, indices, axis=axis, mode="raise")


def _op_slice(p: _PadsProgram, node: onnx.NodeProto, args: list[Any], length: int) -> np.ndarray:
    data = args[0]
    starts, ends = _int_list(args[1]), _int_list(args[2])
    axes = _int_list(args[3]) if len(args) > 3 and args[3] is not None else list(range(len(starts)))
    steps = _int_list(args[4]) if len(args) > 4 and args[4] is not None else [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps) or 0 in steps:
        raise ValueError("starts, ends, axes and steps must have one entry per axis, and no step may be 0")
    index = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        index[axis] = slice(start, end, step)
    return data[tuple(index)]


def _op_concat(p: _PadsProgram, node: onnx.NodeProto, args: list[Any], length: int) -> np.ndarray:
    p.size_check((sum(a.size for a in args),), node)
    return np.concatenate([np.atleast_1d(a) for a in args], axis=_attrs(node).get("axis", 0))


def _op_axes(node: onnx.NodeProto, args: list[Any]) -> list[int] | None:
    if len(args) > 1 and args[1] is not None:
        return _int_list(args[1])
    axes = _attrs(node).get("axes")
    return None if axes is None else [int(a) for a in axes]


def _op_unsqueeze(p: _PadsProgram, node: onnx.NodeProto, args: list[Any], length: int) -> np.ndarray:
    axes = _op_axes(node, args) or []
    out = args[0]
    rank = out.ndim + len(axes)
    for axis in sorted(a % rank if -rank <= a < rank else rank for a in axes):
        out = np.expand_dims(out, axis)
    return out


def _op_squeeze(p: _PadsProgram, node: onnx.NodeProto, args: list[Any], length: int) -> np.ndarray:
    axes = _op_axes(node, args)
    return np.squeeze(args[0], axis=None if axes is None else tuple(axes))


def _op_cast(p: _PadsProgram, node: onnx.NodeProto, args: list[Any], length: int) -> np.ndarray:
    to = _attrs(node).get("to")
    if to not in _READ_TYPES:
        raise ValueError(f"Cast to element type {to}")
    return args[0].astype(helper.tensor_dtype_to_np_dtype(to))


def _op_reshape(p: _PadsProgram, node: onnx.NodeProto, args: list[Any], length: int) -> np.ndarray:
    data, shape = args[0], _int_list(args[1])
    if len(shape) > 8:
        raise ValueError(f"a shape of rank {len(shape)}")
    if not _attrs(node).get("allowzero", 0):
        shape = [data.shape[i] if d == 0 and i < data.ndim else d for i, d in enumerate(shape)]
    return data.reshape(shape)


def _op_constant_of_shape(p: _PadsProgram, node: onnx.NodeProto, args: list[Any], length: int) -> np.ndarray:
    shape = p.size_check(tuple(_int_list(args[0])), node)  # refused before anything is allocated
    value = _attrs(node).get("value")
    fill = checked_array(value, f"value of ConstantOfShape node {node.name!r}", 1) if value is not None else np.zeros(1, np.float32)
    return np.full(shape, fill.ravel()[0] if fill.size else 0, dtype=fill.dtype)


def _op_constant(p: _PadsProgram, node: onnx.NodeProto, args: list[Any], length: int) -> np.ndarray:
    value = _constant_value(node, MAX_PAD_ELEMENTS)
    if value is None:
        raise ValueError("a Constant node without a numeric value")
    return value


_PAD_OP_IMPLS: dict[str, Callable[[_PadsProgram, onnx.NodeProto, list[Any], int], np.ndarray]] = {
    "Shape": _op_shape,
    "Size": _op_shape,
    "Add": _op_binary,
    "Sub": _op_binary,
    "Mul": _op_binary,
    "Div": _op_binary,
    "Mod": _op_binary,
    "Max": _op_variadic,
    "Min": _op_variadic,
    "Neg": lambda p, node, args, length: -args[0],
    "Identity": lambda p, node, args, length: args[0],
    "Gather": _op_gather,
    "Slice": _op_slice,
    "Concat": _op_concat,
    "Unsqueeze": _op_unsqueeze,
    "Squeeze": _op_squeeze,
    "Cast": _op_cast,
    "Reshape": _op_reshape,
    "Transpose": lambda p, node, args, length: np.transpose(args[0], _attrs(node).get("perm")),
    "ConstantOfShape": _op_constant_of_shape,
    "Constant": _op_constant,
}
assert set(_PAD_OP_IMPLS) == set(PAD_OPS)


def _probe_sizes(probe: Conv) -> list[tuple[int, ...]]:
    """Spatial sizes at which computed pads are compared with a rule: every probe length on every axis.

    Axis ``i`` walks its own :func:`_probe_lengths` while the other axes walk theirs at
    other offsets, so that pads which read the wrong axis, or several axes, disagree.
    """
    lists = [_probe_lengths(s, r) for s, r in zip(probe.stride, probe.receptive_field)]
    count = max(len(lengths) for lengths in lists)
    return sorted({tuple(lengths[(k * (i + 1) + 3 * i) % len(lengths)] for i, lengths in enumerate(lists)) for k in range(count)})


def _rule_from_function(pads_of: PadFunction, probe: Conv, pad: onnx.NodeProto) -> Any:
    """Constant pads, or the ``same_*`` rule the pads follow for every probed size."""
    seen = {n: pads_of(n) for n in _probe_sizes(probe)}
    if len(set(seen.values())) == 1:
        return next(iter(seen.values()))
    for rule in ("same_upper", "same_lower"):
        if all(probe.replace(padding=rule).pads(n) == p for n, p in seen.items()):
            return rule
    raise fail(
        UnsupportedError,
        f"Pad node {pad.name!r} computes its pads from the input size in an unknown way",
        "constant pads or the 'same_upper' / 'same_lower' rule for this stride and dilation",
        ", ".join(f"size {n[0] if len(n) == 1 else n}: {p[0] if len(p) == 1 else p}" for n, p in list(seen.items())[:6]),
    )


def _own_padding(node: onnx.NodeProto, attrs: dict[str, Any], rank: int) -> tuple[str, Any]:
    """``(auto_pad, padding)`` of a Conv or ConvTranspose node: a rule's name or ``(begin, end)`` pairs."""
    auto = attrs.get("auto_pad", "NOTSET")
    pads = _spatial(node, attrs, "pads", [0] * 2 * rank, 2 * rank)
    if auto not in ("NOTSET", *_AUTO_PAD):
        raise fail(
            ConfigError,
            f"{node.op_type} node {node.name!r}: invalid attribute `auto_pad`",
            "NOTSET, VALID, SAME_UPPER or SAME_LOWER",
            f"auto_pad={auto!r}",
        )
    if auto != "NOTSET" and any(pads):
        raise fail(
            ConfigError,
            f"{node.op_type} node {node.name!r}: both `auto_pad` and `pads` are set",
            "one of them",
            f"auto_pad={auto!r}, pads={pads}",
        )
    if auto != "NOTSET":
        return auto, _AUTO_PAD[auto]
    return auto, tuple(zip(pads[:rank], pads[rank:]))


def _padding(g: _Graph, node: onnx.NodeProto, attrs: dict[str, Any], probe: Conv, fold_pad: bool = True) -> tuple[Any, str]:
    """(padding, padding_mode) of the Conv node, with a feeding Pad node folded in (unless ``fold_pad`` is false)."""
    rank = probe.spatial_rank
    zero = ((0, 0),) * rank
    own: Any = _own_padding(node, attrs, rank)[1]
    own_zero = own in ("valid", zero) or (own in ("same_upper", "same_lower") and all(r == 1 for r in probe.receptive_field))
    pad = g.producers.get(node.input[0])
    if pad is None or pad.op_type != "Pad" or not fold_pad:
        return own, "zeros"
    pad_attrs = _attrs(pad)
    mode_name = pad_attrs.get("mode", "constant")
    if not isinstance(mode_name, str) or mode_name not in _FROM_PAD_MODE:
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
    found = _pad_function(g, pad, probe)
    if isinstance(found, (tuple, str)):
        outer = found
    else:
        outer = _rule_from_function(found, probe, pad)
    if outer == zero:
        return own, "zeros"  # a Pad that adds nothing; the hint may still name the mode
    if own_zero:
        return outer, mode
    if mode == "zeros" and isinstance(outer, tuple) and isinstance(own, tuple):
        return tuple((pb + cb, pe + ce) for (pb, pe), (cb, ce) in zip(outer, own)), mode
    raise fail(
        UnsupportedError,
        f"Pad node {pad.name!r} and Conv node {node.name!r} both pad",
        "padding in one of them (or zero padding in both)",
        f"Pad mode {mode_name!r} with pads {outer} and Conv padding {own}",
    )


def _apply_hint(conv: Conv, node: onnx.NodeProto) -> Conv:
    """Take the padding rule's name and the mode from the node's hint when they describe the same computation."""
    doc = _text(node.doc_string)
    if not doc.startswith(_HINT):
        return conv
    hint = dict(_HINT_FIELD.findall(doc))
    try:
        named = conv.replace(
            padding=hint.get("padding", conv.padding),
            padding_mode=hint.get("padding_mode", conv.padding_mode),
        )
    except LayoutError:
        return conv
    if not conv.same_pads_for_every_size(named.padding):  # closed form: no input length is enumerated
        return conv
    if named.padding_mode != conv.padding_mode and not conv.same_pads_for_every_size(((0, 0),) * conv.spatial_rank):
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
                and len(n.output) > 0
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
    label = f"{conv_node.op_type} node {conv_node.name!r}"
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
            f"the {activation} nodes as the only users of the {conv_node.op_type}'s output",
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


#: The node types read as convolutions; ``node=`` counts among these, in graph order.
CONV_OPS = ("Conv", "ConvTranspose")


def from_native(model_or_path: Any, node: str | int | None = None) -> Conv | ConvTranspose:
    """A ``Conv`` or ``ConvTranspose`` node of an ONNX model as a :class:`~layoutconv.Conv` or :class:`~layoutconv.ConvTranspose`.

    Any spatial rank from 1 to 3 (the weight's rank says which).  A ``Pad`` node
    feeding a ``Conv`` becomes its padding; an activation after either node is read.

    Parameters
    ----------
    model_or_path:
        An ``onnx.ModelProto`` or a path to a ``.onnx`` file.  External data is refused.
    node:
        Name of the node, or its index among the ``Conv`` and ``ConvTranspose`` nodes
        in graph order; may be omitted when the graph has exactly one.
    """
    model = _load(model_or_path)
    _refuse_external_data(model)
    if onnx_recurrent.reads(model, node):  # RNN, LSTM, GRU nodes: layoutconv.adapters.onnx_recurrent
        return onnx_recurrent.from_native(model, node)
    convs = [n for n in model.graph.node if n.op_type in CONV_OPS and n.domain in ("", "ai.onnx")]
    return read_conv(_Graph(model), _pick(convs, node))


def read_conv(g: _Graph, conv_node: onnx.NodeProto, *, fold_pad: bool = True, activation: bool = True) -> Conv | ConvTranspose:
    """One ``Conv`` or ``ConvTranspose`` node of ``g`` as a record (see :func:`from_native`).

    ``fold_pad=False`` leaves a ``Pad`` node feeding the ``Conv`` out of its padding,
    ``activation=False`` leaves the activation after it out of the record: a reader of
    whole graphs reads those nodes as layers of their own.
    """
    op = conv_node.op_type
    label = f"{op} node {conv_node.name!r}"
    if len(conv_node.input) < 2 or not conv_node.input[0] or not conv_node.input[1] or not conv_node.output or not conv_node.output[0]:
        raise fail(
            FileFormatError,
            f"{label} lacks its data or weight input, or its output",
            f"{op}(X, W) or {op}(X, W, B) with one output",
            f"inputs {list(conv_node.input)}, outputs {list(conv_node.output)}",
        )
    kernel = g.weight(conv_node.input[1], conv_node, "weight W")
    has_bias = len(conv_node.input) > 2 and conv_node.input[2]
    bias = g.weight(conv_node.input[2], conv_node, "bias B") if has_bias else None
    if not 3 <= kernel.ndim <= 5:
        raise fail(
            UnsupportedError,
            f"{label} is not a 1-d, 2-d or 3-d convolution",
            "a weight of rank 3 to 5 (out_channels, in_channels // group, *kernel)"
            if op == "Conv" else "a weight of rank 3 to 5 (in_channels, out_channels // group, *kernel)",
            f"weight shape {kernel.shape}",
        )
    if kernel.dtype.name not in DTYPE_OPSET:
        raise fail(
            UnsupportedError,
            f"{label}: unsupported weight dtype",
            f"one of {sorted(DTYPE_OPSET)}",
            f"{kernel.dtype}",
            "Quantized convolutions are not supported.",
        )
    rank = kernel.ndim - 2
    attrs = _attrs(conv_node)
    shape = list(kernel.shape[2:])
    declared = _spatial(conv_node, attrs, "kernel_shape", shape, rank)
    if declared != shape:
        raise fail(
            ShapeError,
            f"{label}: `kernel_shape` disagrees with the weight",
            f"kernel_shape={shape} (weight shape {kernel.shape})",
            f"kernel_shape={declared}",
        )
    stride = _spatial(conv_node, attrs, "strides", [1] * rank, rank)
    dilation = _spatial(conv_node, attrs, "dilations", [1] * rank, rank)
    group = attrs.get("group", 1)
    if op == "ConvTranspose":
        record = _read_transpose(g, conv_node, attrs, kernel, bias, stride, dilation, group, fold_pad)
        return record.replace(activation=_read_activation(g, conv_node)) if activation else record
    try:
        probe = Conv(kernel, bias, stride=stride, dilation=dilation, groups=group)
    except LayoutError as exc:
        raise type(exc)(f"{label}: {exc}") from None
    padding, mode = _padding(g, conv_node, attrs, probe, fold_pad)
    fused = _read_activation(g, conv_node) if activation else "linear"
    return _apply_hint(probe.replace(padding=padding, padding_mode=mode, activation=fused), conv_node)


def _read_transpose(
    g: _Graph, node: onnx.NodeProto, attrs: dict[str, Any], kernel: np.ndarray, bias: np.ndarray | None,
    stride: list[int], dilation: list[int], group: Any, fold_pad: bool = True,
) -> ConvTranspose:
    """A ``ConvTranspose`` node: ``pads`` or ``auto_pad``, ``output_padding`` and ``output_shape``.

    ``output_shape`` without ``auto_pad`` splits its pads like ``SAME_LOWER`` (the
    operator's definition), so it reads as ``padding='same_lower'``.
    """
    rank = kernel.ndim - 2
    label = f"ConvTranspose node {node.name!r}"
    pad = g.producers.get(node.input[0])
    if fold_pad and pad is not None and pad.op_type == "Pad":
        raise fail(
            UnsupportedError,
            f"{label} is fed by Pad node {pad.name!r}",
            "a ConvTranspose reading its input unpadded",
            f"Pad node {pad.name!r} before it",
            "A transposed convolution's pads crop its output; padding its input is another layer (not recorded here).",
        )
    output_padding = _spatial(node, attrs, "output_padding", [0] * rank, rank)
    output_shape = _spatial(node, attrs, "output_shape", [], rank) if "output_shape" in attrs else None
    auto, padding = _own_padding(node, attrs, rank)
    if output_shape is not None:
        if auto == "VALID" or (auto == "NOTSET" and any(v for pair in padding for v in pair)):
            raise fail(
                UnsupportedError,
                f"{label} sets `output_shape` together with {'auto_pad=VALID' if auto == 'VALID' else 'explicit pads'}",
                "output_shape with auto_pad NOTSET (no pads), SAME_UPPER or SAME_LOWER",
                f"auto_pad={auto!r}, pads={_flat(padding) if isinstance(padding, tuple) else []}, output_shape={output_shape}",
                "ONNX computes the pads from output_shape; drop the pads (or output_shape).",
            )
        padding = "same_upper" if auto == "SAME_UPPER" else "same_lower"
    try:
        record = ConvTranspose(
            kernel, bias, stride=stride, dilation=dilation, groups=group, padding=padding,
            output_padding=output_padding, output_shape=output_shape,
        )
    except LayoutError as exc:
        raise type(exc)(f"{label}: {exc}") from None
    return record


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
    """Run an ONNX model (``ModelProto`` or path) on ``x`` of shape ``(N, C, *spatial)`` with onnxruntime's CPU provider.

    Returns the first output, ``(N, O, *spatial_out)``.  onnxruntime's CPU ``Conv`` has
    float32 and float16 kernels only: float64 and bfloat16 raise
    :class:`~layoutconv.UnsupportedError`.
    """
    if isinstance(model, (str, os.PathLike)) and os.path.isfile(model):
        model = _load(model)
    if isinstance(model, onnx.ModelProto) and onnx_recurrent.reads(model):  # layoutconv.adapters.onnx_recurrent
        return onnx_recurrent.run(model, x)
    x = np.asarray(x)
    if not 3 <= x.ndim <= 5:
        raise fail(
            ShapeError, "Input has the wrong rank", "shape (N, C, *spatial) with 1 to 3 spatial axes, channels first",
            f"shape {tuple(x.shape)}",
        )
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
    if first.shape is not None and len(first.shape) != x.ndim:
        raise fail(
            ShapeError, "Input has the wrong rank", f"{len(first.shape)} axes, as the model's input {first.name!r}",
            f"shape {tuple(x.shape)}",
        )
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


registry.register(Conv, NAME, to_native=to_native, run=run)
registry.register(ConvTranspose, NAME, to_native=to_native, run=run)

from . import onnx_recurrent  # noqa: E402  (RNN, LSTM, GRU nodes)
from . import onnx_layers  # noqa: E402,F401  (registers the layer and graph converters)
