"""The ONNX adapter at spatial rank 2 and 3, and for transposed convolutions: bit-exact round trips, forward passes, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from layoutconv import ConfigError, Conv, ConvTranspose, ShapeError, UnsupportedError
from layoutconv.verify import compare

from conftest import need


@pytest.fixture(scope="module")
def A():
    need("onnx", "onnxruntime")
    from layoutconv.adapters import onnx_adapter

    return onnx_adapter


# name -> (padding, stride, dilation); the kernels are 3 x 5 (x 2), so a swapped axis shows
CONV_CASES = {
    "valid": ("valid", (1, 1), (1, 1)),
    "explicit_asym": (((1, 2), (0, 3)), (2, 3), (1, 1)),
    "same_upper_auto_pad": ("same_upper", (2, 3), (1, 1)),
    "same_lower_auto_pad": ("same_lower", (3, 2), (1, 1)),
    "same_upper_static_pads": ("same_upper", (1, 1), (2, 1)),
    "same_lower_pads_subgraph": ("same_lower", (2, 3), (2, 1)),
    "same_upper_pads_subgraph": ("same_upper", (3, 1), (1, 2)),
}
MODES = ["zeros", "reflect", "replicate", "circular"]


def conv2d(rng, padding, stride, dilation, mode="zeros", activation="linear", groups=1):
    kernel = rng.standard_normal((4, 4 // groups, 3, 5)).astype(np.float32)
    return Conv(kernel, rng.standard_normal(4).astype(np.float32), stride=stride, dilation=dilation, padding=padding,
                padding_mode=mode, activation=activation, groups=groups)  # fmt: skip


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv2d_round_trip_and_forward(A, rng, case, mode):
    padding, stride, dilation = CONV_CASES[case]
    conv = conv2d(rng, padding, stride, dilation, mode)
    model = A.to_native(conv)
    assert A.from_native(model) == conv
    for shape in [(2, 4, 11, 13), (1, 4, 12, 9)]:  # one model, several spatial sizes
        x = rng.standard_normal(shape).astype(np.float32)
        result = compare(conv, x, A.run(model, x), "onnx")
        assert result.status == "pass", result.message


def test_conv2d_pads_attribute_order(A, rng):
    model = A.to_native(conv2d(rng, ((1, 2), (0, 3)), 1, 1))
    node = next(n for n in model.graph.node if n.op_type == "Conv")
    assert [list(a.ints) for a in node.attribute if a.name == "pads"] == [[1, 0, 2, 3]]  # x1_begin, x2_begin, x1_end, x2_end


@pytest.mark.parametrize("rule", ["same_upper", "same_lower"])
def test_conv3d_pads_subgraph_is_matched_by_structure(A, rng, rule):
    kernel = rng.standard_normal((2, 3, 3, 5, 2)).astype(np.float32)
    conv = Conv(kernel, stride=(2, 1, 3), dilation=(2, 1, 1), padding=rule, padding_mode="reflect", activation="relu")
    model = A.to_native(conv)
    pad = next(n for n in model.graph.node if n.op_type == "Pad")
    assert A._written_same_rule(A._Graph(model), pad) == (rule, conv.stride, conv.receptive_field)
    assert A.from_native(model) == conv
    x = rng.standard_normal((1, 3, 9, 8, 7)).astype(np.float32)
    assert compare(conv, x, A.run(model, x), "onnx").status == "pass"


def test_conv3d_pads_subgraph_through_the_interpreter(A, rng):
    conv = Conv(rng.standard_normal((2, 3, 3, 5, 2)).astype(np.float32), stride=(2, 1, 3), dilation=(2, 1, 1), padding="same_lower")
    model = A.to_native(conv)
    for node in model.graph.node:
        node.doc_string = ""
        if node.op_type == "Concat":
            node.input[0], node.input[2] = "pad_zeros_nc", "pad_zeros_nc_again"  # breaks the structural match only
    model.graph.node.insert(0, __import__("onnx").helper.make_node("Identity", ["pad_zeros_nc"], ["pad_zeros_nc_again"]))
    pad = next(n for n in model.graph.node if n.op_type == "Pad")
    assert A._written_same_rule(A._Graph(model), pad) is None
    assert A.from_native(model).same_pads_for_every_size("same_lower")


TRANSPOSE_CASES = {
    "valid": ("valid", (1, 1), (1, 1), (0, 0), None),
    "explicit": (((1, 2), (0, 3)), (2, 3), (1, 1), (1, 2), None),
    "same_upper_dilated": ("same_upper", (2, 3), (2, 1), (0, 0), None),
    "same_lower_output_padding": ("same_lower", (3, 2), (1, 2), (1, 0), None),
    "same_upper_output_shape": ("same_upper", (2, 3), (1, 1), (0, 0), (9, 16)),
    "same_lower_output_shape": ("same_lower", (3, 2), (1, 2), (1, 0), (13, 12)),
}


@pytest.mark.parametrize("activation", ["linear", "relu6"])
@pytest.mark.parametrize("case", list(TRANSPOSE_CASES))
def test_conv_transpose_round_trip_and_forward(A, rng, case, activation):
    padding, stride, dilation, extra, out = TRANSPOSE_CASES[case]
    t = ConvTranspose(rng.standard_normal((4, 3, 3, 5)).astype(np.float32), rng.standard_normal(6).astype(np.float32),
                      stride=stride, dilation=dilation, padding=padding, output_padding=extra, output_shape=out,
                      groups=2, activation=activation)  # fmt: skip
    model = A.to_native(t)
    assert [n.op_type for n in model.graph.node][0] == "ConvTranspose"
    assert A.from_native(model) == t
    x = rng.standard_normal((2, 4, 5, 6)).astype(np.float32)
    result = compare(t, x, A.run(model, x), "onnx")
    assert result.status == "pass", result.message


def test_conv_transpose_3d_and_1d(A, rng):
    for kernel in (rng.standard_normal((2, 3, 3)), rng.standard_normal((2, 3, 3, 5, 2))):
        t = ConvTranspose(kernel.astype(np.float64), stride=2, padding="same_lower")
        assert A.from_native(A.to_native(t)) == t


def test_node_index_counts_conv_and_conv_transpose(A, rng):
    import onnx

    first = A.to_native(ConvTranspose(rng.standard_normal((4, 4, 3, 5)).astype(np.float32), stride=2))
    second = conv2d(rng, "valid", 1, 1)
    g = first.graph
    g.node[0].output[0] = "mid"
    g.node.append(onnx.helper.make_node("Conv", ["mid", "W2", "B2"], ["y"], name="second", kernel_shape=[3, 5]))
    g.initializer.extend([onnx.numpy_helper.from_array(second.kernel, "W2"), onnx.numpy_helper.from_array(second.bias, "B2")])
    assert isinstance(A.from_native(first, node=0), ConvTranspose)
    assert A.from_native(first, node="second") == second.replace(padding=((0, 0), (0, 0)))
    with pytest.raises(ConfigError, match="several Conv nodes"):
        A.from_native(first)


# -- refusals -------------------------------------------------------------------------------------
def hand(onnx, op, kernel, nodes=(), data="x", **attrs):
    h = onnx.helper
    graph = h.make_graph(
        list(nodes) + [h.make_node(op, [data, "W"], ["y"], name="n", **attrs)], "g",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)], [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(kernel, "W")],
    )  # fmt: skip
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def test_refusals(A, rng):
    import onnx

    k2 = rng.standard_normal((4, 2, 3, 5)).astype(np.float32)
    with pytest.raises(UnsupportedError, match="`strides` has the wrong number of values"):
        A.from_native(hand(onnx, "Conv", k2, strides=[1, 1, 1]))
    with pytest.raises(ShapeError, match="kernel_shape"):
        A.from_native(hand(onnx, "Conv", k2, kernel_shape=[5, 3]))
    with pytest.raises(UnsupportedError, match="fed by Pad node"):
        pads = onnx.numpy_helper.from_array(np.zeros(8, np.int64), "p")
        m = hand(onnx, "ConvTranspose", k2, [onnx.helper.make_node("Pad", ["x", "p"], ["xp"], name="pad")], data="xp")
        m.graph.initializer.append(pads)
        A.from_native(m)
    with pytest.raises(UnsupportedError, match="output_shape"):
        A.from_native(hand(onnx, "ConvTranspose", k2, pads=[1, 1, 1, 1], output_shape=[9, 9]))
    with pytest.raises(ConfigError, match="both `auto_pad` and `pads`"):
        A.from_native(hand(onnx, "ConvTranspose", k2, pads=[1, 1, 1, 1], auto_pad="SAME_UPPER"))
    with pytest.raises(UnsupportedError, match="pads something other than the spatial axes"):
        pads = onnx.numpy_helper.from_array(np.array([0, 1, 0, 0, 0, 0, 0, 0], np.int64), "p")
        m = hand(onnx, "Conv", k2, [onnx.helper.make_node("Pad", ["x", "p"], ["xp"], name="pad")], data="xp")
        m.graph.initializer.append(pads)
        A.from_native(m)
    with pytest.raises(ShapeError, match="wrong rank"):
        A.run(A.to_native(conv2d(rng, "valid", 1, 1)), rng.standard_normal((1, 4, 9)).astype(np.float32))
