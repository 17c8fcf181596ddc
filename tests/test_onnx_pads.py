"""How the ONNX reader finds a Pad node's pads without running the file: structure, a bounded interpreter, checked tensors.

onnxruntime appears here only as the test's oracle for the interpreter; the
reader itself never runs a part of a file (``test_from_native_never_starts_onnxruntime``).
"""

from __future__ import annotations

import numpy as np
import pytest

from layoutconv import Conv1D, FileFormatError, UnsafeFileError, UnsupportedError

from conftest import need


@pytest.fixture(scope="module")
def A():
    need("onnx", "onnxruntime")
    from layoutconv.adapters import onnx_adapter

    return onnx_adapter


@pytest.fixture(scope="module")
def onnx(A):
    import onnx

    return onnx


def conv(rng, padding="same_upper", stride=2, dilation=3, k=3) -> Conv1D:
    return Conv1D(rng.standard_normal((4, 2, k)).astype(np.float32), padding=padding, stride=stride, dilation=dilation)


def pad_node(model):
    return next(n for n in model.graph.node if n.op_type == "Pad")


def with_pads(onnx, nodes, inits=(), opset=17, **conv_attrs):
    """Pad(x, pads) -> Conv (kernel size 3, ``conv_attrs``), with ``pads`` computed by ``nodes`` from ``inits``."""
    h = onnx.helper
    w = onnx.numpy_helper.from_array(np.ones((4, 2, 3), np.float32), "W")
    conv = h.make_node("Conv", ["xp", "W"], ["y"], name="conv", **conv_attrs)
    graph = h.make_graph(
        list(nodes) + [h.make_node("Pad", ["x", "pads"], ["xp"], name="the_pad"), conv],
        "pads", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 2, "L"])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], [w] + list(inits),
    )  # fmt: skip
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def const(onnx, name, *values):
    return onnx.numpy_helper.from_array(np.array(values, np.int64), name)


def foreign_same_upper(onnx, s, d, conv_stride=None):
    """same_upper pads for a kernel of 3 with stride ``s``, dilation ``d``, written another way: Gather, Mod, Neg, Min, Unsqueeze, Squeeze, Cast, Reshape, Slice, Transpose, ConstantOfShape."""
    mk = onnx.helper.make_node
    r = 2 * d + 1
    nodes = [
        mk("Shape", ["x"], ["shape"]),
        mk("Gather", ["shape", "two"], ["L"], axis=0),  # scalar L
        mk("Neg", ["L"], ["minus_L"]),
        mk("Mod", ["minus_L", "s"], ["m"]),  # (-L) mod s, the sign of the divisor
        mk("Add", ["m", "r_minus_s"], ["need"]),
        mk("Max", ["need", "zero"], ["total"]),
        mk("Min", ["total", "big"], ["total_c"]),
        mk("Cast", ["total_c"], ["total_f"], to=onnx.TensorProto.FLOAT),
        mk("Cast", ["total_f"], ["total_i"], to=onnx.TensorProto.INT64),
        mk("Div", ["total_i", "two_s"], ["small"]),
        mk("Sub", ["total_i", "small"], ["large"]),
        mk("Unsqueeze", ["small", "axis0"], ["small_1"]),
        mk("Unsqueeze", ["large", "axis0"], ["large_1"]),
        mk("ConstantOfShape", ["two_shape"], ["zeros2"], value=onnx.numpy_helper.from_array(np.array([0], np.int64))),
        mk("Concat", ["zeros2", "small_1", "zeros2", "large_1"], ["flat"], axis=0),
        mk("Reshape", ["flat", "two_by_three"], ["grid"]),
        mk("Transpose", ["grid"], ["grid_t"], perm=[1, 0]),
        mk("Transpose", ["grid_t"], ["grid_back"], perm=[1, 0]),
        mk("Reshape", ["grid_back", "six"], ["pads_6"]),
        mk("Slice", ["pads_6", "start0", "stop6"], ["pads_s"]),
        mk("Unsqueeze", ["pads_s", "axis0"], ["pads_u"]),
        mk("Squeeze", ["pads_u", "axis0"], ["pads"]),
    ]
    inits = [onnx.numpy_helper.from_array(np.array(2, np.int64), "two"),
             onnx.numpy_helper.from_array(np.array(s, np.int64), "s"), onnx.numpy_helper.from_array(np.array(r - s, np.int64), "r_minus_s"),
             onnx.numpy_helper.from_array(np.array(0, np.int64), "zero"), onnx.numpy_helper.from_array(np.array(10**6, np.int64), "big"),
             onnx.numpy_helper.from_array(np.array(2, np.int64), "two_s"), const(onnx, "axis0", 0), const(onnx, "two_shape", 2),
             const(onnx, "two_by_three", 2, 3), const(onnx, "six", 6), const(onnx, "start0", 0), const(onnx, "stop6", 6)]  # fmt: skip
    return with_pads(onnx, nodes, inits, strides=[conv_stride or s], dilations=[d])


def ort_pads(onnx, model, lengths):
    """The test's oracle: the pads sub-graph run by onnxruntime."""
    import onnxruntime as ort

    g = model.graph
    pad = pad_node(model)
    model = onnx.helper.make_model(
        onnx.helper.make_graph([n for n in g.node if n.op_type not in ("Pad", "Conv")], "pads", list(g.input),
                               [onnx.helper.make_tensor_value_info(pad.input[1], onnx.TensorProto.INT64, None)], list(g.initializer)),
        opset_imports=list(model.opset_import),
    )  # fmt: skip
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return {n: tuple(int(v) for v in session.run(None, {"x": np.zeros((1, 2, n), np.float32)})[0]) for n in lengths}


# -- layoutconv's own sub-graph: matched by structure ------------------------------------------------------
@pytest.mark.parametrize("rule", ["same_upper", "same_lower"])
@pytest.mark.parametrize("stride, dilation, k", [(2, 2, 3), (3, 2, 3), (5, 4, 4), (1 << 24, 1 << 20, 5)], ids=["s2_d2", "s3_d2", "s5_d4_k4", "huge"])
def test_own_subgraph_is_matched_by_structure(A, rng, rule, stride, dilation, k):
    c = conv(rng, rule, stride, dilation, k)
    model = A.to_native(c)
    assert A._written_same_rule(A._Graph(model), pad_node(model)) == (rule, (stride,), c.receptive_field)
    assert A.from_native(model) == c


def test_a_perturbed_own_subgraph_goes_through_the_interpreter(A, onnx, rng):
    c = conv(rng, "same_lower", 3, 2)
    model = A.to_native(c)
    shape = next(n for n in model.graph.node if n.op_type == "Shape")
    shape.output[0] = "pad_L_raw"
    model.graph.node.insert(1, onnx.helper.make_node("Identity", ["pad_L_raw"], ["pad_L"], name="detour"))
    for node in model.graph.node:
        node.doc_string = ""  # no hint: the rule must come from the graph
    assert A._written_same_rule(A._Graph(model), pad_node(model)) is None
    assert A.from_native(model).same_pads_for_every_size("same_lower")


# -- the interpreter against onnxruntime ---------------------------------------------------------------
@pytest.mark.parametrize("stride, dilation", [(2, 2), (3, 2), (4, 3)])
def test_interpreter_agrees_with_onnxruntime(A, onnx, rng, stride, dilation):
    c = conv(rng, "same_upper", stride, dilation)
    lengths = range(1, 3 * c.receptive_field[0] + 2 * stride)
    for model in (A.to_native(c), foreign_same_upper(onnx, stride, dilation)):
        program = A._PadsProgram(A._Graph(model), pad_node(model), channels=2)
        assert program.reads_length
        assert {n: tuple(int(v) for v in program(n)) for n in lengths} == ort_pads(onnx, model, lengths)


def test_foreign_same_subgraph_is_recognised(A, onnx):
    assert A.from_native(foreign_same_upper(onnx, 3, 3)) == Conv1D(np.ones((4, 2, 3), np.float32), padding="same_upper", stride=3, dilation=3)
    with pytest.raises(UnsupportedError, match="unknown way"):  # the same pads do not fit a convolution of another stride
        A.from_native(foreign_same_upper(onnx, 3, 3, conv_stride=1))


def test_constant_pads_as_an_initializer(A, onnx):
    assert A.from_native(with_pads(onnx, [], [const(onnx, "pads", 0, 0, 1, 0, 0, 2)])).padding == ((1, 2),)


def test_constant_pads_computed_by_constant_nodes(A, onnx):
    mk = onnx.helper.make_node
    nodes = [mk("Constant", [], ["half"], value_ints=[0, 0, 2]), mk("Concat", ["half", "half"], ["pads"], axis=0)]
    assert A.from_native(with_pads(onnx, nodes)).padding == ((2, 2),)


# -- refusals -------------------------------------------------------------------------------------------
def refused(A, model, *words):
    with pytest.raises(UnsupportedError) as info:
        A.from_native(model)
    for word in ("'the_pad'", *words):
        assert word in str(info.value)


def test_ops_outside_the_whitelist_are_refused(A, onnx):
    mk = onnx.helper.make_node
    refused(A, with_pads(onnx, [mk("Abs", ["p"], ["pads"])], [const(onnx, "p", 0, 0, 1, 0, 0, 1)]), "Abs")
    refused(A, with_pads(onnx, [mk("Evil", ["p"], ["pads"], domain="com.example")], [const(onnx, "p", 0, 0, 1, 0, 0, 1)]), "com.example.Evil")


def test_graph_size_and_tensor_size_are_capped(A, onnx):
    mk = onnx.helper.make_node
    chain = [mk("Identity", [f"p{i}"], [f"p{i + 1}"]) for i in range(A.MAX_PAD_NODES)] + [mk("Identity", [f"p{A.MAX_PAD_NODES}"], ["pads"])]
    refused(A, with_pads(onnx, chain, [const(onnx, "p0", 0, 0, 1, 0, 0, 1)]), f"more than {A.MAX_PAD_NODES} nodes")
    huge = [mk("ConstantOfShape", ["shape"], ["zeros"]), mk("Slice", ["zeros", "b", "e"], ["pads"])]
    refused(A, with_pads(onnx, huge, [const(onnx, "shape", 1 << 40), const(onnx, "b", 0), const(onnx, "e", 6)]), "ConstantOfShape", "shape (1099511627776,)")
    wide = [mk("Add", ["row", "col"], ["pads"])]
    refused(A, with_pads(onnx, wide, [onnx.numpy_helper.from_array(np.zeros((64, 1), np.int64), "row"),
                                      onnx.numpy_helper.from_array(np.zeros((1, 64), np.int64), "col")]), "shape (64, 64)")  # fmt: skip


def test_division_by_zero_and_shape_of_another_tensor_are_refused(A, onnx):
    mk = onnx.helper.make_node
    refused(A, with_pads(onnx, [mk("Div", ["p", "z"], ["pads"])], [const(onnx, "p", 0, 0, 1, 0, 0, 1), const(onnx, "z", 0)]), "ZeroDivisionError")
    other = [mk("Relu", ["x"], ["h"]), mk("Shape", ["h"], ["pads"])]
    refused(A, with_pads(onnx, other), "the shape of ['h']")


def test_from_native_never_starts_onnxruntime(A, onnx, rng, monkeypatch):
    """A tripwire: reading a model whose pads are computed at run time creates no onnxruntime session."""

    def tripwire(*args, **kwargs):
        raise AssertionError("from_native started onnxruntime")

    monkeypatch.setattr(A.ort, "InferenceSession", tripwire)
    A.from_native(foreign_same_upper(onnx, 2, 3))
    A.from_native(A.to_native(conv(rng, "same_lower", 3, 2)))


def test_probe_lengths_are_bounded(A):
    assert A._probe_lengths(2, 5)[:13] == list(range(1, 14))  # every length while that is cheap
    assert len(A._probe_lengths(1 << 24, (1 << 24) - 1)) < 500


# -- tensors: declared sizes against the data present ----------------------------------------------------------
@pytest.mark.parametrize(
    "fields, cls, words",
    [
        pytest.param(dict(dims=[1 << 20, 1 << 20, 3], raw_data=bytes(12)), FileFormatError, ["does not hold the data", "12"], id="raw-short"),
        pytest.param(dict(dims=[10**6, 10**6, 3], float_data=[0.0] * 3), FileFormatError, ["values in float_data"], id="typed-short"),
        pytest.param(dict(dims=[2, -3], raw_data=bytes(24)), FileFormatError, ["negative dimension"], id="negative-dim"),
        pytest.param(dict(dims=[1], data_type=8, string_data=[b"x"]), UnsupportedError, ["element type 8"], id="string"),
        pytest.param(dict(dims=[3], data_location=1), UnsafeFileError, ["external file"], id="external"),
    ],
)
def test_checked_array_refuses(A, onnx, fields, cls, words):
    tensor = onnx.TensorProto(name="t", **{"data_type": onnx.TensorProto.FLOAT, **fields})
    with pytest.raises(cls) as info:
        A.checked_array(tensor, "'t'")
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int8", "int32", "int64", "uint8", "uint16", "uint64", "bool"])
def test_checked_array_reads_what_onnx_writes(A, onnx, rng, dtype):
    array = (rng.standard_normal((2, 3)) * 10).astype(dtype)
    assert np.array_equal(A.checked_array(onnx.numpy_helper.from_array(array, "t"), "'t'"), array)
    typed = onnx.helper.make_tensor("t", onnx.helper.np_dtype_to_tensor_dtype(array.dtype), array.shape, array.ravel().tolist())
    assert np.array_equal(A.checked_array(typed, "'t'"), array)
