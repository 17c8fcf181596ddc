"""Keras 3 and tf_keras for the layer records and whole graphs (``to_keras(graph)``), against the numpy reference.

Every case runs in both flavours on TensorFlow.  Graphs are built here by
hand, channels first, with random weights and inputs of odd sizes whose
channel counts differ from every spatial size.  Tolerance:
``torch.testing.assert_close``'s float32 defaults (rtol 1.3e-6, atol 1e-5);
max pooling, cropping, padding and every reordering are compared bit for bit
(they only move float32 values).
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import need

import layoutconv  # noqa: E402
from layoutconv import Conv, ConfigError, UnsupportedError, layers, reference, registry  # noqa: E402
from layoutconv.graph import Graph, Input, Node  # noqa: E402
from layoutconv.model import read_model  # noqa: E402

FLOAT32 = dict(rtol=1.3e-6, atol=1e-5)  # torch.testing.assert_close defaults for float32
FLAVORS = ["keras", "tf_keras"]
RNG = np.random.default_rng(20261130)


@pytest.fixture(params=FLAVORS)
def flavor(request):
    need(request.param, "tensorflow")
    return request.param


def rand(*shape, dtype=np.float32):
    return RNG.normal(size=shape).astype(dtype)


def one(record, *shapes, kind="float"):
    """A graph of one node applying ``record`` to inputs of per-sample ``shapes``, channels first."""
    names = ["x"] if len(shapes) == 1 else [f"x{i}" for i in range(len(shapes))]
    inputs = [Input(n, s, "flat" if len(s) < 2 else "channels_first", kind) for n, s in zip(names, shapes)]
    return Graph({"layer": record}, inputs, [Node("y", "layer", tuple(names), "channels_first")], ["y"])


def run_keras(graph, flavor, *xs, layout="channels_first"):
    native = layoutconv.to_keras(graph, flavor=flavor, layout=layout)
    return native, registry.converter(graph, flavor).run(native, list(xs))


def check(graph, flavor, *xs, exact=False):
    expected = reference.forward(graph, *xs, layout="channels_first")
    _, y = run_keras(graph, flavor, *xs)
    assert y.shape == expected.shape
    if exact:
        np.testing.assert_array_equal(y, expected.astype(np.float32))
    else:
        np.testing.assert_allclose(y, expected, **FLOAT32)
    return y


# -- weighted records -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5,), (5, 7), (5, 7, 3)], ids=["flat", "sequence", "image"])
def test_dense_on_the_channel_axis(flavor, shape):
    dense = layers.Dense(rand(4, 5), rand(4), activation="tanh")
    check(one(dense, shape), flavor, rand(2, *shape))


@pytest.mark.parametrize("shape", [(6,), (6, 9), (6, 5, 7), (6, 3, 5, 4)], ids=["flat", "1d", "2d", "3d"])
def test_batch_norm_with_perturbed_statistics(flavor, shape):
    bn = layers.BatchNorm(rand(6), np.abs(rand(6)) + 0.2, rand(6), rand(6), epsilon=1e-5)
    check(one(bn, shape), flavor, rand(2, *shape))


def test_batch_norm_without_scale_and_offset(flavor):
    bn = layers.BatchNorm(rand(3), np.abs(rand(3)) + 0.2, epsilon=1e-3)
    check(one(bn, (3, 8)), flavor, rand(2, 3, 8))


@pytest.mark.parametrize("axes,shape", [((1,), (6,)), ((1,), (6, 7)), ((2,), (6, 7)), ((1, 2), (6, 7)), ((2, 3), (4, 5, 3))])
def test_layer_norm_axes_are_mapped_channels_last(flavor, axes, shape):
    sizes = tuple(shape[a - 1] for a in axes)
    ln = layers.LayerNorm(rand(*sizes), rand(*sizes), axes=axes, epsilon=1e-5)
    check(one(ln, shape), flavor, rand(2, *shape))


def test_embedding(flavor):
    emb = layers.Embedding(rand(11, 4))
    ids = RNG.integers(0, 11, size=(3, 7))
    y = check(one(emb, (7,), kind="int"), flavor, ids, exact=True)
    assert y.shape == (3, 4, 7)


@pytest.mark.parametrize("padding", ["valid", "same_upper", ((2, 1),)], ids=["valid", "same", "asymmetric"])
def test_convolution_through_the_conv_adapter(flavor, padding):
    conv = Conv(rand(5, 3, 4), rand(5), stride=2, padding=padding, activation="relu")
    check(one(conv, (3, 13)), flavor, rand(2, 3, 13))


# -- activations -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["relu", "gelu", "swish", "hard_sigmoid_keras2", "hard_sigmoid_keras3", "hard_silu", "selu"])
def test_activations_including_those_a_flavour_lacks(flavor, name):
    """tf_keras has no hard_silu and no Keras 3 hard_sigmoid, Keras 3 no Keras 2 hard_sigmoid: built from Rescaling and ReLU."""
    x = rand(2, 4, 9) * 4
    check(one(layers.Activation(name), (4, 9)), flavor, x)
    dense = layers.Dense(rand(3, 4), rand(3), activation=name)
    check(one(dense, (4, 9)), flavor, x)


def test_a_missing_activation_is_built_not_renamed():
    need("tf_keras", "tensorflow")
    native, _ = run_keras(one(layers.Activation("hard_silu"), (4, 9)), "tf_keras", rand(1, 4, 9))
    kinds = [type(layer).__name__ for layer in native.layers]
    assert "Rescaling" in kinds and "Multiply" in kinds and "Activation" not in kinds


@pytest.mark.parametrize("axis,shape", [(1, (5,)), (1, (5, 7)), (2, (5, 7)), (3, (3, 4, 6))])
def test_softmax_axis(flavor, axis, shape):
    check(one(layers.Softmax(axis), shape), flavor, rand(2, *shape))


# -- pooling -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind,size,stride,padding,include,shape",
    [
        ("max", 3, 2, "valid", False, (4, 13)),
        ("avg", 3, 2, "same_upper", False, (4, 12)),
        ("max", (3, 2), (2, 1), "same_upper", False, (4, 9, 6)),
        ("avg", 3, 2, ((1, 1),), True, (4, 12)),  # PyTorch AvgPool1d(3, 2, padding=1): zero pads counted
        ("avg", (3, 3), (1, 1), ((1, 1), (1, 1)), False, (4, 7, 6)),  # the pads of Keras' 'same' at stride 1
        ("avg", 3, 2, "same_lower", True, (4, 12)),
    ],
    ids=["max_valid", "avg_same", "max_same_2d", "avg_counting_pads", "avg_pads_are_same", "avg_same_lower_counted"],
)
def test_pool(flavor, kind, size, stride, padding, include, shape):
    pool = layers.Pool(kind, size, stride, padding=padding, count_include_pad=include)
    check(one(pool, shape), flavor, rand(2, *shape), exact=kind == "max")


@pytest.mark.parametrize(
    "size,stride,pads,shape",
    [
        (3, 2, ((1, 1),), (3, 16)),  # PyTorch MaxPool1d(3, 2, padding=1); Keras 'same' would pad (0, 1)
        (4, 2, ((2, 2),), (3, 11)),  # a pad of half the window
        (3, 1, ((2, 0),), (3, 10)),  # asymmetric (ONNX)
        ((3, 3), (2, 2), ((1, 1), (1, 1)), (3, 8, 7)),  # the ResNet stem's pooling
        ((2, 3, 3), (2, 2, 1), ((1, 1), (0, 0), (1, 1)), (2, 5, 6, 7)),
    ],
    ids=["resnet_1d", "half_window", "asymmetric", "resnet_2d", "3d"],
)
def test_max_pool_with_explicit_pads_is_exact_on_negative_inputs(flavor, size, stride, pads, shape):
    """Copies of the edge cells stand in for -inf pads; zero pads would win every all-negative window."""
    pool = layers.Pool("max", size, stride, padding=pads)
    x = rand(2, *shape) - 4.0  # mostly negative: zero padding would show at every border
    graph = one(pool, shape)
    wrong = reference.forward(layers.Pool("max", size, stride), reference.forward(layers.Pad(pads), x))
    assert not np.array_equal(wrong, reference.forward(pool, x))  # the test can tell the two apart
    native = layoutconv.to_keras(graph, flavor=flavor, layout="channels_first")
    assert not any("ZeroPadding" in type(layer).__name__ for layer in native.layers)
    check(graph, flavor, x, exact=True)


def test_average_pool_leaving_explicit_pads_out_is_refused(flavor):
    pool = layers.Pool("avg", 3, 2, padding=((1, 1),), count_include_pad=False)
    with pytest.raises(UnsupportedError, match="divisor"):
        layoutconv.to_keras(one(pool, (3, 16)), flavor=flavor)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("shape", [(5, 7), (5, 6, 4), (5, 3, 4, 2)], ids=["1d", "2d", "3d"])
def test_global_pool(flavor, kind, keepdims, shape):
    check(one(layers.GlobalPool(kind, keepdims=keepdims), shape), flavor, rand(2, *shape), exact=kind == "max")


# -- shapes and orders -------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["channels_first", "channels_last"])
@pytest.mark.parametrize("shape", [(3, 5), (3, 5, 4)], ids=["1d", "2d"])
def test_flatten_lists_elements_in_the_record_order(flavor, order, shape):
    y = check(one(layers.Flatten(order), shape), flavor, rand(2, *shape), exact=True)
    assert y.shape == (2, int(np.prod(shape)))


@pytest.mark.parametrize("order", ["channels_first", "channels_last"])
@pytest.mark.parametrize("target", [(15,), (5, 3), (3, 5), (1, 3, 5)])
def test_reshape(flavor, order, target):
    check(one(layers.Reshape(target, order), (3, 5)), flavor, rand(2, 3, 5), exact=True)


@pytest.mark.parametrize("order", ["channels_first", "channels_last"])
@pytest.mark.parametrize("dims,shape", [((2, 1), (3, 5)), ((3, 1, 2), (3, 5, 4)), ((1, 3, 2), (3, 5, 4))])
def test_permute(flavor, order, dims, shape):
    check(one(layers.Permute(dims, order), shape), flavor, rand(2, *shape), exact=True)


@pytest.mark.parametrize(
    "record,shape",
    [
        (layers.Pad(((2, 1),)), (3, 7)),
        (layers.Pad(((1, 0), (0, 2))), (3, 5, 4)),
        (layers.Crop(((1, 2),)), (3, 9)),
        (layers.Crop(((1, 0), (2, 1), (0, 1))), (2, 4, 5, 3)),
    ],
    ids=["pad1d", "pad2d", "crop1d", "crop3d"],
)
def test_pad_and_crop(flavor, record, shape):
    check(one(record, shape), flavor, rand(2, *shape), exact=True)


def test_padding_with_another_constant_is_refused(flavor):
    with pytest.raises(UnsupportedError, match="zeros only"):
        layoutconv.to_keras(one(layers.Pad(((1, 1),), value=1.5), (3, 7)), flavor=flavor)


@pytest.mark.parametrize("op", ["add", "subtract", "multiply", "average", "maximum", "minimum"])
def test_elementwise_merges(flavor, op):
    shapes = [(4, 6), (4, 6)] if op == "subtract" else [(4, 6)] * 3
    check(one(layers.Merge(op), *shapes), flavor, *[rand(2, *s) for s in shapes])


@pytest.mark.parametrize("axis,shapes", [(1, [(2, 6), (5, 6)]), (2, [(4, 3), (4, 5)]), (1, [(3,), (4,)]), (3, [(2, 3, 1), (2, 3, 4)])])
def test_concatenate_axis_is_mapped(flavor, axis, shapes):
    check(one(layers.Merge("concatenate", axis), *shapes), flavor, *[rand(2, *s) for s in shapes], exact=True)


# -- whole graphs: layouts, names, sharing, round trips ----------------------------------------------------


def _keras_style_graph() -> Graph:
    """Conv -> BatchNorm -> Flatten (Keras order) -> Dense, as read from a Keras model: channels-last input."""
    return Graph(
        {
            "conv/1": Conv(rand(4, 3, 3), rand(4)),
            "bn": layers.BatchNorm(rand(4), np.abs(rand(4)) + 0.5, rand(4), rand(4)),
            "flat": layers.Flatten("channels_last"),
            "features.0": layers.Dense(rand(2, 4 * 7), rand(2)),
        },
        [Input("x", (9, 3), "channels_last")],
        [
            Node("conv/1", "conv/1", ("x",)),
            Node("bn", "bn", ("conv/1",)),
            Node("flat", "flat", ("bn",), "flat"),
            Node("features.0", "features.0", ("flat",), "flat"),
        ],
        ["bn", "features.0"],
        name="keras style",
    )


@pytest.mark.parametrize("layout", ["source", "channels_last", "channels_first"])
def test_layout_of_the_model_edges(flavor, layout):
    graph = _keras_style_graph()
    x = rand(2, 9, 3)  # as the Keras source takes it
    expected = reference.forward(graph, x)
    given = np.moveaxis(x, -1, 1) if layout == "channels_first" else x
    native, (bn, dense) = run_keras(graph, flavor, given, layout=layout)
    assert tuple(native.inputs[0].shape) == (None,) + given.shape[1:]
    np.testing.assert_allclose(dense, expected[1], **FLOAT32)
    np.testing.assert_allclose(np.moveaxis(bn, 1, -1) if layout == "channels_first" else bn, expected[0], **FLOAT32)
    permutes = [layer for layer in native.layers if type(layer).__name__ == "Permute"]
    assert len(permutes) == (2 if layout == "channels_first" else 0)


def test_layer_names_are_sanitised_and_kept(flavor):
    native = layoutconv.to_keras(_keras_style_graph(), flavor=flavor)
    names = [layer.name for layer in native.layers]
    assert names == ["x", "conv_1", "bn", "flat", "features.0"]
    assert native.name == "keras_style"


def test_a_shared_layer_is_one_keras_layer(flavor):
    conv = Conv(rand(3, 3, 3), rand(3), padding=((2, 0),))  # needs a ZeroPadding1D in front
    graph = Graph(
        {"conv": conv, "act": layers.Activation("relu")},
        [Input("x", (3, 11), "channels_first")],
        [Node("conv", "conv", ("x",), "channels_first"), Node("act", "act", ("conv",), "channels_first"), Node("conv:1", "conv", ("act",), "channels_first")],
        ["conv:1"],
    )
    x = rand(2, 3, 11)
    native, y = run_keras(graph, flavor, x, layout="source")
    np.testing.assert_allclose(y, reference.forward(graph, x), **FLOAT32)
    assert [layer.name for layer in native.layers].count("conv") == 1
    assert len(native.get_layer("conv").weights) == 2


def _weighted_graph() -> Graph:
    emb = layers.Embedding(rand(13, 5))
    return Graph(
        {
            "emb": emb,
            "norm": layers.LayerNorm(rand(5), rand(5), epsilon=1e-5),
            "conv": Conv(rand(6, 5, 3), rand(6), padding="same_upper"),
            "bn": layers.BatchNorm(rand(6), np.abs(rand(6)) + 0.2, rand(6), rand(6), epsilon=1e-5),
            "pool": layers.GlobalPool("avg"),
            "head": layers.Dense(rand(3, 6), rand(3), activation="sigmoid"),
        },
        [Input("ids", (8,), "flat", "int")],
        [
            Node("emb", "emb", ("ids",), "channels_last"),
            Node("norm", "norm", ("emb",), "channels_last"),
            Node("conv", "conv", ("norm",), "channels_last"),
            Node("bn", "bn", ("conv",), "channels_last"),
            Node("pool", "pool", ("bn",), "flat"),
            Node("head", "head", ("pool",), "flat"),
        ],
        ["head"],
    )


def test_weights_round_trip_bit_exact_through_the_keras_reader(flavor):
    graph = _weighted_graph()
    native = layoutconv.to_keras(graph, flavor=flavor)
    back = read_model(native)
    for name, record in graph.weighted_layers():
        assert back.layers[name].same_weights(record), name
        assert type(back.layers[name]) is type(record)
    ids = RNG.integers(0, 13, size=(3, 8))
    np.testing.assert_allclose(reference.forward(back, ids), reference.forward(graph, ids), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(registry.converter(graph, flavor).run(native, ids), reference.forward(graph, ids), **FLOAT32)


def test_saved_model_reloads_and_predicts_the_same(flavor, tmp_path):
    graph = _weighted_graph()
    native = layoutconv.to_keras(graph, flavor=flavor)
    ids = RNG.integers(0, 13, size=(3, 8))
    path = tmp_path / "model.keras"
    native.save(path)
    keras = layoutconv.frameworks.adapter(flavor)._FLAVOUR.keras
    again = keras.models.load_model(path, compile=False)
    np.testing.assert_array_equal(registry.converter(graph, flavor).run(again, ids), registry.converter(graph, flavor).run(native, ids))


def test_one_record_on_its_own(flavor):
    dense = layers.Dense(rand(3, 5), rand(3))
    native = layoutconv.to_keras(dense, flavor=flavor)
    x = rand(4, 5)
    np.testing.assert_allclose(registry.converter(dense, flavor).run(native, x), reference.forward(dense, x), **FLOAT32)
    pool = layers.Pool("max", 3, 2, padding=((1, 1),))
    native = layoutconv.to_keras(pool, flavor=flavor, input_shape=(4, 10))  # channels first; the model takes (N, 10, 4)
    assert tuple(native.inputs[0].shape) == (None, 10, 4)
    x = rand(2, 4, 10)
    np.testing.assert_array_equal(registry.converter(pool, flavor).run(native, x), reference.forward(pool, x).astype(np.float32))
    with pytest.raises(ConfigError, match="input_shape"):
        layoutconv.to_keras(layers.Flatten(), flavor=flavor)


def test_argument_errors(flavor):
    graph = _keras_style_graph()
    with pytest.raises(UnsupportedError, match="channels last inside"):
        layoutconv.to_keras(graph, flavor=flavor, data_format="channels_first")
    with pytest.raises(ConfigError, match="layout"):
        layoutconv.to_keras(graph, flavor=flavor, layout="NCHW")
    mixed = Graph(
        {"a": layers.Dense(rand(2, 3)), "b": layers.Dense(rand(2, 2, dtype=np.float64))},
        [Input("x", (3,), "flat")],
        [Node("a", "a", ("x",), "flat"), Node("b", "b", ("a",), "flat")],
        ["b"],
    )
    with pytest.raises(UnsupportedError, match="mixes weight dtypes"):
        layoutconv.to_keras(mixed, flavor=flavor)


def test_errors_name_the_layer(flavor):
    graph = one(Conv(rand(2, 2, 3), padding_mode="reflect", padding=((1, 1),)), (2, 9))
    with pytest.raises(UnsupportedError, match=r"Layer 'layer' \(Conv1D, node 'y'\).*padding_mode='reflect'"):
        layoutconv.to_keras(graph, flavor=flavor)


def test_float64_graphs_stay_float64(flavor):
    dense = layers.Dense(rand(3, 4, dtype=np.float64), rand(3, dtype=np.float64))
    x = rand(2, 4, dtype=np.float64)
    native, y = run_keras(one(dense, (4,)), flavor, x)
    assert y.dtype == np.float64 and native.inputs[0].dtype in ("float64", getattr(native.inputs[0].dtype, "name", None))
    np.testing.assert_allclose(y, reference.forward(dense, x), rtol=1e-7, atol=1e-7)  # float64 defaults
