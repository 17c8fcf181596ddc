"""ONNX for the layer records and whole graphs, against real onnxruntime and Keras 3: writing, running, reading back.

Tolerances (``torch.testing.assert_close`` defaults per dtype: float32 rtol 1.3e-6,
atol 1e-5; float64 rtol 1e-7, atol 1e-7):

- a single layer: ``|onnx - reference| <= atol + rtol * magnitude``, elementwise, where
  the magnitude is the sum of the absolute terms that make each output (the
  reference pass on ``|W|``, ``|b|``, ``|x|`` for a Dense, ``|x - mean| / sd * |scale|
  + |offset|`` for a normalisation, the average of ``|x|`` for an average pool), so
  the tolerance grows with the length of the sum as float32 rounding does, and
  through an activation by its Lipschitz bound (``layoutconv.tolerance``).  Layers
  that only move, copy, pick or compare values (Flatten, Reshape, Permute, Pad,
  Crop, Embedding, Concat, max pooling, max/min merges) must match exactly;
- a whole model: ``|onnx - oracle| <= atol * S + rtol * |oracle|`` with ``S`` the
  largest output magnitude: float32 rounding in a deep network grows with the size
  of the activations it carries, which the output scale stands for; a wrong
  layout, pad or order is an error of the order of ``S`` itself.  Observed errors
  are 3e-7 S (ResNet50) to 1e-6 S (NASNetMobile), 10 times inside.
"""

from __future__ import annotations

import numpy as np
import pytest

import layoutconv
from layoutconv import ConfigError, Conv, ConvTranspose, FileFormatError, ShapeError, UnsafeFileError, UnsupportedError, activations, layers, reference
from layoutconv.chain import Chain
from layoutconv.graph import Graph, Input, Node
from layoutconv.tolerance import ASSERT_CLOSE_DEFAULTS, through_activation

from conftest import need

RNG = np.random.default_rng(20261130)


@pytest.fixture(scope="module")
def L():
    need("onnx", "onnxruntime")
    from layoutconv.adapters import onnx_layers

    return onnx_layers


@pytest.fixture(scope="module")
def onnx(L):
    import onnx

    return onnx


@pytest.fixture(scope="module")
def keras():
    need("keras", "tensorflow")
    import keras

    return keras


def rand(*shape, dtype="float32"):
    return RNG.standard_normal(shape).astype(dtype)


# -- tolerances --------------------------------------------------------------------------------------


def assert_within(actual, expected, tol):
    actual = np.asarray(actual, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = np.abs(actual - expected)
    worst = np.unravel_index(np.argmax(err - tol), err.shape)
    assert np.all(err <= tol), f"error {err[worst]:.3g} > tolerance {tol[worst] if np.ndim(tol) else tol:.3g} at {worst}"


def magnitude(record, xs):
    """The sum of the absolute terms behind each output element (see the module docs)."""
    xs64 = [np.asarray(x, dtype=np.float64) for x in xs]
    x = xs64[0]
    if isinstance(record, layers.Dense):
        plain = record.replace(kernel=np.abs(record.kernel.astype(np.float64)), bias=None if record.bias is None else np.abs(record.bias.astype(np.float64)), activation="linear")
        return reference.forward(plain, np.abs(x))
    if isinstance(record, layers.BatchNorm):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        sd = np.sqrt(record.variance.astype(np.float64) + record.epsilon).reshape(shape)
        scale = 1 if record.scale is None else np.abs(record.scale.astype(np.float64)).reshape(shape)
        offset = 0 if record.offset is None else np.abs(record.offset.astype(np.float64)).reshape(shape)
        return (np.abs(x) + np.abs(record.mean.astype(np.float64)).reshape(shape)) / sd * scale + offset
    if isinstance(record, layers.LayerNorm):
        plain = reference.forward(layers.LayerNorm(axes=record.axes, epsilon=record.epsilon), x)
        mu = x.mean(axis=record.axes, keepdims=True)
        sd = np.sqrt(((x - mu) ** 2).mean(axis=record.axes, keepdims=True) + record.epsilon)
        terms = np.abs(plain) + (np.abs(x) + np.abs(mu)) / sd
        shape = (1,) + tuple(x.shape[a] if a in record.axes else 1 for a in range(1, x.ndim))
        scale = 1 if record.scale is None else np.abs(record.scale.astype(np.float64)).reshape(shape)
        offset = 0 if record.offset is None else np.abs(record.offset.astype(np.float64)).reshape(shape)
        return terms * scale + offset
    if isinstance(record, layers.Merge):
        if record.op == "multiply":
            return np.prod(np.abs(np.stack(xs64)), axis=0)
        return sum(np.abs(v) for v in xs64)
    if isinstance(record, (layers.Pool, layers.GlobalPool)):
        return reference.forward(record, np.abs(x))
    if isinstance(record, (Conv, ConvTranspose, Chain)):
        return None  # layoutconv.tolerance carries convolutions
    return np.abs(reference.forward(record, xs64[0] if len(xs64) == 1 else xs64))


EXACT = (layers.Flatten, layers.Reshape, layers.Permute, layers.Pad, layers.Crop, layers.Embedding, layers.Identity)


def check_layer(record, xs, actual, dtype):
    expected = reference.forward(record, xs[0] if len(xs) == 1 else xs)
    rtol, atol = ASSERT_CLOSE_DEFAULTS[np.dtype(dtype).name]
    exact = isinstance(record, EXACT) or (isinstance(record, layers.Pool) and record.kind == "max") or (
        isinstance(record, layers.Merge) and record.op in ("concatenate", "maximum", "minimum")
    ) or (isinstance(record, layers.GlobalPool) and record.kind == "max") or (isinstance(record, layers.Activation) and record.activation in ("linear", "relu", "relu6"))
    if exact:
        assert np.asarray(actual).shape == expected.shape
        np.testing.assert_array_equal(np.asarray(actual, dtype=np.float64), expected)
        return
    if isinstance(record, (Conv, ConvTranspose, Chain)):
        from layoutconv.tolerance import tolerance

        tol = tolerance(record, xs[0])[0]
    else:
        mag = magnitude(record, xs)
        tol = atol + rtol * mag
        activation = getattr(record, "activation", "linear")
        if activation != "linear":
            tol = through_activation(tol, activation, expected, rtol)
        if isinstance(record, layers.Activation):
            tol = atol + rtol * (activations.get(record.activation).lipschitz * np.abs(np.asarray(xs[0], np.float64)) + np.abs(expected))
    assert_within(actual, expected, tol)


# -- every layer kind alone --------------------------------------------------------------------------


def case(record_fn, shapes, dtype="float32", ids=None, input_shape=None, same_record=True):
    return dict(record_fn=record_fn, shapes=shapes, dtype=dtype, ids=ids, input_shape=input_shape, same_record=same_record)


def dense(i, o, dtype="float32", bias=True, activation="linear"):
    return lambda: layers.Dense(rand(o, i, dtype=dtype), rand(o, dtype=dtype) if bias else None, activation=activation)


def bn(c, dtype="float32", scale=True, offset=True, eps=1e-3):
    return lambda: layers.BatchNorm(
        rand(c, dtype=dtype), RNG.uniform(0.2, 2.0, c).astype(dtype),
        RNG.uniform(0.5, 1.5, c).astype(dtype) if scale else None, rand(c, dtype=dtype) if offset else None, epsilon=eps,
    )


def ln(shape, axes, dtype="float32", scale=True, offset=True, eps=1e-3):
    return lambda: layers.LayerNorm(
        RNG.uniform(0.5, 1.5, shape).astype(dtype) if scale else None, rand(*shape, dtype=dtype) if offset else None, axes=axes, epsilon=eps
    )


LAYER_CASES = {
    "dense_flat_relu": case(dense(5, 7, activation="relu"), [(3, 5)]),
    "dense_seq_gelu_nobias": case(dense(5, 4, bias=False, activation="gelu"), [(2, 5, 9)], input_shape=(5, None)),
    "dense_image_swish": case(dense(3, 6, activation="swish"), [(2, 3, 5, 7)], input_shape=(3, 5, 7)),
    "dense_flat_tanh_f64": case(dense(6, 5, "float64", activation="tanh"), [(3, 6)], "float64"),
    "dense_seq_f64": case(dense(4, 3, "float64"), [(2, 4, 11)], "float64", input_shape=(4, None)),
    "bn_seq": case(bn(5), [(2, 5, 9)]),
    "bn_image_no_scale": case(bn(3, scale=False), [(2, 3, 7, 5)]),
    "bn_flat_no_offset_f64": case(bn(6, "float64", offset=False, eps=1e-5), [(4, 6)], "float64"),
    "ln_channels_seq": case(ln((5,), (1,)), [(2, 5, 9)], input_shape=(5, 9)),
    "ln_channels_flat_f64": case(ln((7,), (1,), "float64", eps=1e-5), [(3, 7)], "float64"),
    "ln_spatial_trailing": case(ln((5, 7), (2, 3)), [(2, 3, 5, 7)], input_shape=(3, 5, 7)),
    "ln_channels_and_width": case(ln((3, 7), (1, 3), offset=False), [(2, 3, 5, 7)], input_shape=(3, 5, 7)),
    "ln_no_scale": case(ln((4,), (1,), scale=False), [(2, 4, 9)], input_shape=(4, 9)),
    "embedding_seq": case(lambda: layers.Embedding(rand(13, 5)), [(2, 9)], ids=13),
    "embedding_flat_f64": case(lambda: layers.Embedding(rand(11, 3, dtype="float64")), [(7,)], "float64", ids=11, input_shape=()),
    "softmax_channels": case(lambda: layers.Softmax(1), [(2, 5, 9)]),
    "softmax_width_f64": case(lambda: layers.Softmax(3), [(2, 3, 5, 7)], "float64"),
    "identity": case(lambda: layers.Identity("Dropout"), [(2, 3, 5)]),
    "global_avg": case(lambda: layers.GlobalPool("avg"), [(2, 5, 7, 9)]),
    "global_max_keepdims": case(lambda: layers.GlobalPool("max", keepdims=True), [(2, 5, 11)]),
    "flatten_keras_seq": case(lambda: layers.Flatten("channels_last"), [(2, 3, 7)], input_shape=(3, 7)),
    "flatten_keras_image": case(lambda: layers.Flatten("channels_last"), [(2, 3, 5, 7)], input_shape=(3, 5, 7)),
    "flatten_torch_image": case(lambda: layers.Flatten("channels_first"), [(2, 3, 5, 7)]),
    "reshape_keras": case(lambda: layers.Reshape((5, -1)), [(2, 3, 5, 7)], input_shape=(3, 5, 7)),
    "reshape_keras_to_flat": case(lambda: layers.Reshape((-1,)), [(2, 3, 7)], input_shape=(3, 7)),
    "reshape_torch": case(lambda: layers.Reshape((7, 15), "channels_first"), [(2, 3, 5, 7)]),
    "permute_keras_seq": case(lambda: layers.Permute((2, 1)), [(2, 3, 7)], same_record=False),
    "permute_keras_image": case(lambda: layers.Permute((3, 1, 2)), [(2, 3, 5, 7)], same_record=False),
    "permute_torch": case(lambda: layers.Permute((3, 1, 2), "channels_first"), [(2, 3, 5, 7)]),
    "pad_1d_value_f64": case(lambda: layers.Pad(((2, 1),), 0.5), [(2, 3, 7)], "float64"),
    "pad_2d": case(lambda: layers.Pad(((1, 0), (0, 3))), [(2, 3, 5, 7)]),
    "crop_1d": case(lambda: layers.Crop(((2, 0),)), [(2, 3, 9)]),
    "crop_3d": case(lambda: layers.Crop(((1, 1), (0, 2), (3, 0))), [(2, 3, 5, 7, 6)]),
    "merge_add3": case(lambda: layers.Merge("add"), [(2, 3, 5)] * 3),
    "merge_subtract_f64": case(lambda: layers.Merge("subtract"), [(2, 3, 5)] * 2, "float64"),
    "merge_multiply2": case(lambda: layers.Merge("multiply"), [(2, 3, 5)] * 2),
    "merge_multiply3": case(lambda: layers.Merge("multiply"), [(2, 3, 5)] * 3, same_record=False),
    "merge_average3": case(lambda: layers.Merge("average"), [(2, 3, 5, 7)] * 3),
    "merge_maximum3": case(lambda: layers.Merge("maximum"), [(2, 3, 5)] * 3),
    "merge_minimum2_f64": case(lambda: layers.Merge("minimum"), [(2, 7)] * 2, "float64"),
    "merge_concat_channels": case(lambda: layers.Merge("concatenate", 1), [(2, 3, 5), (2, 4, 5)]),
    "merge_concat_width": case(lambda: layers.Merge("concatenate", 3), [(2, 3, 5, 2), (2, 3, 5, 7)]),
    "conv1d_reflect_same_stride2": case(
        lambda: Conv(rand(4, 3, 5), rand(4), stride=2, padding="same_upper", padding_mode="reflect", activation="elu"), [(2, 3, 17)]
    ),
    "conv2d_same_dilated": case(lambda: Conv(rand(5, 3, 3, 2), None, dilation=(2, 1), padding="same_lower"), [(2, 3, 9, 7)]),
    "conv_transpose_2d": case(lambda: ConvTranspose(rand(3, 4, 3, 2), rand(4), stride=(2, 1), padding=((1, 0), (0, 1))), [(2, 3, 5, 7)]),
    "chain_separable_2d": case(
        lambda: Chain((Conv(rand(6, 1, 3, 3), groups=3, padding="same_upper"), Conv(rand(4, 6, 1, 1), rand(4), activation="relu"))),
        [(2, 3, 9, 7)],
    ),
}
ACTIVATIONS = sorted(activations.ACTIVATIONS)
for _name in ACTIVATIONS:
    LAYER_CASES[f"activation_{_name}"] = case((lambda n: lambda: layers.Activation(n))(_name), [(2, 3, 5)], same_record=_name != "linear")
for _name in ("relu", "relu6", "sigmoid", "tanh", "swish"):  # onnxruntime's CPU float64 kernels cover these
    LAYER_CASES[f"activation_{_name}_f64"] = case((lambda n: lambda: layers.Activation(n))(_name), [(2, 3, 5)], "float64")


def inputs_for(c):
    if c["ids"] is not None:
        return [RNG.integers(0, c["ids"], size=s) for s in c["shapes"]]
    return [3 * rand(*s, dtype=c["dtype"]) for s in c["shapes"]]


@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_each_layer_runs_in_onnxruntime_like_the_reference_and_reads_back(L, onnx, name):
    c = LAYER_CASES[name]
    record = c["record_fn"]()
    xs = inputs_for(c)
    free = [(None,) * (len(shape) - 1) for shape in c["shapes"]]  # every size dynamic unless the case fixes some
    input_shape = c["input_shape"] if c["input_shape"] is not None else free if isinstance(record, layers.Merge) else free[0]
    # a convolution alone keeps its own single-node model (to_onnx); inside a graph it goes through the same emitter
    write = L.to_native if isinstance(record, (Conv, ConvTranspose)) else layoutconv.to_onnx
    model = write(record, input_shape=input_shape, dtype=c["dtype"])
    onnx.checker.check_model(model, full_check=True)
    y = L.run(model, xs)
    assert y.dtype == np.dtype(c["dtype"])
    check_layer(record, xs, y, c["dtype"])
    back = layoutconv.read_model(model)
    np.testing.assert_array_equal(reference.forward(back, *xs), reference.forward(record, xs[0] if len(xs) == 1 else xs))
    if c["same_record"]:
        assert list(back.layers) == ["layer"] and back.layers["layer"] == record, back.summary()


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize(
    "pool_size,stride,padding,count_include_pad",
    [
        ((3,), (2,), "valid", False),
        ((3,), (2,), "same_upper", False),
        ((4,), (3,), "same_lower", False),
        ((3, 2), (2, 2), "same_upper", False),
        ((2, 3), (3, 2), "same_upper", False),  # a window smaller than the stride on one axis
        ((3, 3), (1, 2), ((1, 0), (2, 1)), True),
        ((3, 2, 2), (2, 1, 2), "same_lower", False),
    ],
    ids=["1d_valid", "1d_same_upper", "1d_same_lower", "2d_same_upper", "2d_window_lt_stride", "2d_explicit_counted", "3d_same_lower"],
)
def test_pool_with_fixed_and_free_sizes(L, kind, pool_size, stride, padding, count_include_pad):
    pool = layers.Pool(kind, pool_size, stride, padding=padding, count_include_pad=count_include_pad)
    rank = len(pool_size)
    sizes = [(9, 7, 6)[:rank], (8, 11, 5)[:rank]]
    fixed = layoutconv.to_onnx(pool, input_shape=(3, *sizes[0]))
    x = rand(2, 3, *sizes[0])
    check_layer(pool, [x], L.run(fixed, x), "float32")
    back = layoutconv.read_model(fixed)
    assert back.layers["layer"] == pool  # the 'same' rule comes back from the node's note, checked at the fixed size
    if isinstance(padding, str) and padding.startswith("same") and any(k < s for k, s in zip(pool_size, stride)):
        with pytest.raises(UnsupportedError, match="window is smaller than its stride"):
            layoutconv.to_onnx(pool)
        return
    free = layoutconv.to_onnx(pool)  # auto_pad=SAME_* (or explicit pads) with dynamic sizes
    for size in sizes:
        x = rand(2, 3, *size)
        check_layer(pool, [x], L.run(free, x), "float32")


def test_dense_is_gemm_on_features_and_matmul_on_the_last_axis_with_weights_named_after_the_layer(L):
    d = dense(5, 7, activation="relu")()
    flat = layoutconv.to_onnx(d)
    assert [n.op_type for n in flat.graph.node] == ["Gemm", "Relu"]
    assert {t.name: tuple(t.dims) for t in flat.graph.initializer} == {"layer.weight": (7, 5), "layer.bias": (7,)}
    seq = layoutconv.to_onnx(d, input_shape=(5, None))
    assert [n.op_type for n in seq.graph.node] == ["Transpose", "Transpose", "MatMul", "Add", "Relu", "Transpose"]
    weight = next(t for t in seq.graph.initializer if t.name == "layer.weight")
    assert weight.raw_data == d.kernel.tobytes()  # the canonical (out, in) bytes, as nn.Linear.weight


def test_a_layer_alone_takes_the_rank_it_implies_and_refuses_bad_options(L):
    model = layoutconv.to_onnx(layers.Flatten("channels_last"))  # default: (N, C, L)
    assert len(model.graph.input[0].type.tensor_type.shape.dim) == 3
    assert len(layoutconv.to_onnx(layers.Softmax(3)).graph.input[0].type.tensor_type.shape.dim) == 4
    with pytest.raises(ConfigError, match="opset"):
        layoutconv.to_onnx(layers.Softmax(1), opset=16)
    with pytest.raises(ConfigError, match="dtype"):
        layoutconv.to_onnx(layers.Dense(rand(3, 2)), dtype="float64")
    with pytest.raises(ConfigError, match="layout"):
        layoutconv.to_onnx(Graph({"s": layers.Softmax(1)}, [Input("x", (3,), "flat")], [Node("s", "s", ("x",), "flat")], ["s"]), layout="nhwc")


# -- whole graphs from Keras 3 -----------------------------------------------------------------------


def perturb_batch_norms(keras, model):
    """Random moving statistics and affine parameters: a fresh BatchNormalization is almost the identity."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            values = []
            for w in layer.weights:
                shape = tuple(w.shape)
                if "variance" in w.name:
                    values.append(RNG.uniform(0.5, 2.0, shape))
                elif "gamma" in w.name:
                    values.append(RNG.uniform(0.5, 1.5, shape))
                else:
                    values.append(0.2 * RNG.standard_normal(shape))
            layer.set_weights([v.astype("float32") for v in values])


def assert_model_close(actual, expected, rtol=1.3e-6, atol=1e-5):
    """Whole models (module docs): elementwise ``atol * S + rtol * |expected|``, S the largest output magnitude."""
    expected = np.asarray(expected, dtype=np.float64)
    scale = float(np.max(np.abs(expected)))
    assert scale > 0
    assert_within(actual, expected, atol * scale + rtol * np.abs(expected))


def keras_round_trip(L, onnx, model, xs):
    """Keras -> graph -> ONNX -> onnxruntime, against Keras and the reference; then ONNX -> graph, bit-exact."""
    graph = layoutconv.read_model(model)
    proto = layoutconv.to_onnx(graph)
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == [i.name for i in graph.inputs]
    assert [o.name for o in proto.graph.output] == list(graph.outputs)
    feeds = xs if len(xs) > 1 else xs[0]
    expected = model.predict(feeds, verbose=0)
    ours = L.run(proto, xs)
    ref = reference.forward(graph, *xs)
    expected, ours, ref = (v if isinstance(v, (list, tuple)) else [v] for v in (expected, ours, ref))
    for e, o, r in zip(expected, ours, ref):
        assert o.shape == e.shape
        assert_model_close(o, e)
        assert_model_close(o, r)
    back = layoutconv.read_model(proto)
    assert [n for n, _ in back.weighted_layers()] == [n for n, _ in graph.weighted_layers()]
    for (name, a), (_, b) in zip(graph.weighted_layers(), back.weighted_layers()):
        assert a.same_weights(b), name
    for r_back, r_ref in zip(reference.forward(back, *xs) if len(ref) > 1 else [reference.forward(back, *xs)], ref):
        np.testing.assert_array_equal(r_back, r_ref)
    return graph, proto, back


def test_keras_conv1d_pool_batchnorm_flatten_dense(L, onnx, keras):
    x_in = keras.Input((23, 5), name="signal")
    y = keras.layers.Conv1D(6, 4, activation="relu", name="conv1d")(x_in)
    y = keras.layers.MaxPooling1D(3, 2, padding="same")(y)
    y = keras.layers.BatchNormalization(name="batch_normalization")(y)
    y = keras.layers.AveragePooling1D(2, padding="valid")(y)
    y = keras.layers.Flatten()(y)
    y = keras.layers.Dense(3, activation="softmax", name="dense")(y)
    model = keras.Model(x_in, y)
    perturb_batch_norms(keras, model)
    graph, proto, back = keras_round_trip(L, onnx, model, [rand(3, 23, 5)])
    assert proto.graph.node[0].op_type == "Transpose"  # channels-last input, as the Keras model takes it
    assert [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == ["N", 23, 5]
    names = {t.name for t in proto.graph.initializer}
    assert {"conv1d.weight", "batch_normalization.running_var", "dense.weight", "dense.bias"} <= names
    assert back == graph or all(back.layers[k] == graph.layers[k] for k in graph.layers)


def test_keras_conv2d_same_average_pool_padding_cropping_merges(L, onnx, keras):
    x_in = keras.Input((13, 11, 3))
    a = keras.layers.ZeroPadding2D(((1, 2), (0, 3)))(x_in)
    a = keras.layers.Conv2D(5, (3, 2), strides=(2, 2), padding="same", activation="tanh")(a)  # (16, 14) -> (8, 7)
    b = keras.layers.Cropping2D(((2, 1), (1, 2)))(x_in)
    b = keras.layers.Conv2D(5, (3, 2))(b)  # (10, 8) -> (8, 7)
    s = keras.layers.Add()([a, b])
    m = keras.layers.Multiply()([a, b])
    c = keras.layers.Concatenate()([s, m])
    c = keras.layers.AveragePooling2D((3, 2), (2, 2), padding="same")(c)
    c = keras.layers.BatchNormalization()(c)
    g = keras.layers.GlobalAveragePooling2D()(c)
    out = keras.layers.Dense(4)(g)
    model = keras.Model(x_in, [out, c])
    perturb_batch_norms(keras, model)
    keras_round_trip(L, onnx, model, [rand(2, 13, 11, 3)])


def test_keras_embedding_layer_norm_reshape_permute_and_two_inputs(L, onnx, keras):
    ids = keras.Input((15,), dtype="int32")
    feats = keras.Input((15, 4))
    e = keras.layers.Embedding(17, 6)(ids)
    c = keras.layers.Concatenate()([e, feats])
    c = keras.layers.Conv1D(8, 3, padding="same")(c)
    c = keras.layers.LayerNormalization()(c)
    d = keras.layers.Dense(5, activation="gelu")(c)  # on a sequence: MatMul on the last axis
    r = keras.layers.Reshape((5, 15))(d)
    p = keras.layers.Permute((2, 1))(r)
    g = keras.layers.GlobalAveragePooling1D()(p)
    model = keras.Model([ids, feats], [g, r])
    graph, proto, back = keras_round_trip(L, onnx, model, [RNG.integers(0, 17, (3, 15)), rand(3, 15, 4)])
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64


def test_keras_model_with_a_free_length_has_dynamic_axes(L, onnx, keras):
    x_in = keras.Input((None, 4))
    y = keras.layers.Conv1D(6, 3, strides=2, padding="same", activation="relu")(x_in)
    y = keras.layers.MaxPooling1D(3, 2, padding="same")(y)
    y = keras.layers.AveragePooling1D(2, padding="same")(y)
    y = keras.layers.Dense(3)(y)
    model = keras.Model(x_in, y)
    graph = layoutconv.read_model(model)
    proto = layoutconv.to_onnx(graph)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] == "N" and isinstance(dims[1], str) and dims[2] == 4
    for length in (17, 20, 9):
        x = rand(2, length, 4)
        assert_model_close(L.run(proto, x), model.predict(x, verbose=0))
        assert_model_close(L.run(proto, x), reference.forward(graph, x))


def test_layout_channels_first_leaves_the_edges_alone(L, keras):
    x_in = keras.Input((9, 7, 3))
    y = keras.layers.Conv2D(4, 3)(x_in)
    model = keras.Model(x_in, [y, keras.layers.GlobalMaxPooling2D()(y)])
    graph = layoutconv.read_model(model)
    proto = layoutconv.to_onnx(graph, layout="channels_first")
    assert "Transpose" not in {n.op_type for n in proto.graph.node}
    x = rand(2, 9, 7, 3)
    image, pooled = L.run(proto, np.moveaxis(x, -1, 1))
    keras_image, keras_pooled = model.predict(x, verbose=0)
    assert_model_close(np.moveaxis(image, 1, -1), keras_image)
    assert_model_close(pooled, keras_pooled)


def test_keras_dense_softmax_head_is_dense_then_softmax(keras):
    x_in = keras.Input((6,))
    model = keras.Model(x_in, keras.layers.Dense(3, activation="softmax", name="head")(x_in))
    graph = layoutconv.read_model(model)
    assert [type(graph.layers[n.layer]).__name__ for n in graph.nodes] == ["Dense", "Softmax"]
    assert graph.outputs == ("head",) and graph.layers["head"].activation == "linear"
    x = rand(4, 6)
    assert_model_close(reference.forward(graph, x), model.predict(x, verbose=0))


def test_keras_operation_with_a_constant_reads_as_a_scale(L, onnx, keras):
    x_in = keras.Input((5, 3))
    model = keras.Model(x_in, keras.layers.ReLU(6.0)(x_in * (1 / 6) + 3.0))  # Keras 3 records the numbers in the call
    graph = layoutconv.read_model(model)
    assert sorted(type(r).__name__ for r in graph.layers.values()) == ["Activation", "Scale", "Scale"]
    x = rand(2, 5, 3) * 20
    np.testing.assert_allclose(reference.forward(graph, x), model.predict(x, verbose=0), rtol=1.3e-6, atol=1e-5)
    np.testing.assert_allclose(L.run(layoutconv.to_onnx(graph), x), model.predict(x, verbose=0), rtol=1.3e-6, atol=1e-5)


def perturbed(keras, make):
    model = make()
    perturb_batch_norms(keras, model)
    return model


APPLICATIONS = {
    "MobileNetV2": lambda k: k.applications.MobileNetV2(input_shape=(32, 32, 3), weights=None, alpha=0.35, classes=10, classifier_activation=None),
    "ResNet50": lambda k: k.applications.ResNet50(input_shape=(32, 32, 3), weights=None, classes=10, classifier_activation=None),
    # Reshape head and a softmax Activation layer (DenseNet121, Xception, InceptionV3, NASNetMobile, VGG16 pass too: docs/onnx.md)
    "MobileNet": lambda k: k.applications.MobileNet(input_shape=(32, 32, 3), weights=None, alpha=0.25, classes=10, classifier_activation="softmax"),
}


@pytest.mark.parametrize("name", sorted(APPLICATIONS))
def test_keras_applications_end_to_end(L, onnx, keras, name):
    model = perturbed(keras, lambda: APPLICATIONS[name](keras))
    x = rand(2, 32, 32, 3)
    graph, proto, back = keras_round_trip(L, onnx, model, [x])
    assert all(back.layers[k] == r for k, r in graph.layers.items()), [k for k, r in graph.layers.items() if back.layers.get(k) != r][:5]


# -- graphs built by hand: float64, shared layers, several outputs -------------------------------------


def test_float64_graph_of_dense_norms_and_softmax_runs_in_float64(L, onnx):
    g = Graph(
        {
            "dense": layers.Dense(rand(7, 5, dtype="float64"), rand(7, dtype="float64"), activation="relu"),
            "bn": bn(7, "float64")(),
            "ln": ln((7,), (1,), "float64")(),
            "out": layers.Dense(rand(3, 7, dtype="float64"), None),
            "softmax": layers.Softmax(1),
        },
        [Input("x", (5,), "flat")],
        [Node("dense", "dense", ("x",), "flat"), Node("bn", "bn", ("dense",), "flat"), Node("ln", "ln", ("bn",), "flat"),
         Node("out", "out", ("ln",), "flat"), Node("softmax", "softmax", ("out",), "flat")],
        ["softmax"],
    )  # fmt: skip
    proto = layoutconv.to_onnx(g)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    x = rand(4, 5, dtype="float64")
    y = L.run(proto, x)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, reference.forward(g, x), rtol=1e-7, atol=1e-7)
    assert layoutconv.read_model(proto) == g


def test_a_shared_layer_writes_its_weights_once_and_reads_back_shared(L):
    conv = Conv(rand(4, 3, 3), rand(4), padding="same_upper", activation="relu")
    g = Graph(
        {"conv": conv, "add": layers.Merge("add")},
        [Input("a", (11, 3)), Input("b", (11, 3))],
        [Node("conv", "conv", ("a",)), Node("conv:1", "conv", ("b",)), Node("add", "add", ("conv", "conv:1"))],
        ["add"],
    )
    proto = layoutconv.to_onnx(g)
    assert sorted(t.name for t in proto.graph.initializer) == ["conv.bias", "conv.weight"]
    a, b = rand(2, 11, 3), rand(2, 11, 3)
    assert_model_close(L.run(proto, [a, b]), reference.forward(g, a, b))
    back = layoutconv.read_model(proto)
    assert list(back.layers) == ["conv", "add"] and [n.layer for n in back.nodes] == ["conv", "conv", "add"]


def test_mixed_dtypes_are_refused(L):
    g = Graph(
        {"a": layers.Dense(rand(3, 2)), "b": layers.Dense(rand(2, 3, dtype="float64"))},
        [Input("x", (2,), "flat")],
        [Node("a", "a", ("x",), "flat"), Node("b", "b", ("a",), "flat")],
        ["b"],
    )
    with pytest.raises(ConfigError, match="several dtypes"):
        layoutconv.to_onnx(g)


def test_run_checks_its_inputs(L):
    proto = layoutconv.to_onnx(layers.Merge("add"))
    with pytest.raises(ShapeError, match="number of inputs"):
        L.run(proto, [rand(2, 3)])
    with pytest.raises(ConfigError, match="float32"):
        L.run(proto, [rand(2, 3, dtype="float64")] * 2)
    pool64 = layoutconv.to_onnx(layers.Pool("avg", 3), dtype="float64")  # valid ONNX; onnxruntime has no float64 kernel
    with pytest.raises(UnsupportedError, match="AveragePool"):
        L.run(pool64, rand(1, 2, 7, dtype="float64"))


# -- reading files layoutconv did not write ----------------------------------------------------------


def test_torch_export_reads_with_its_reflect_pad_folded(L):
    need("torch")
    import io
    import warnings

    import onnx as onnx_module
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 5, 3, padding=1, padding_mode="reflect")
            self.pool = torch.nn.AvgPool2d(2, ceil_mode=False)
            self.fc = torch.nn.Linear(5 * 3 * 4, 7)

        def forward(self, x):
            return torch.softmax(self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1)), dim=1)

    net = Net().eval()
    x = torch.randn(2, 3, 7, 9, generator=torch.Generator().manual_seed(3))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), buffer, input_names=["x"], output_names=["y"], dynamo=False)
    graph = layoutconv.read_model(onnx_module.load_from_string(buffer.getvalue()))
    conv = next(r for r in graph.layers.values() if isinstance(r, Conv))
    assert conv.padding_mode == "reflect" and conv.activation == "relu"
    assert graph.layers["fc"].kernel.tobytes() == net.fc.weight.detach().numpy().tobytes()
    with torch.no_grad():
        expected = net(x).numpy()
    assert_model_close(reference.forward(graph, x.numpy()), expected)


def _model(onnx, nodes, inputs, outputs, inits=(), opset=17):
    from onnx import helper

    graph = helper.make_graph(nodes, "hand", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = helper.find_min_ir_version_for(model.opset_import)
    return model


def test_an_unknown_op_is_refused_with_its_name_and_node(L, onnx):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = _model(onnx, [helper.make_node("LpNormalization", ["x"], ["y"], name="norm_here")], [x], [y])
    with pytest.raises(UnsupportedError, match=r"LpNormalization.*'norm_here'"):
        layoutconv.read_model(model)
    custom = _model(onnx, [helper.make_node("Relu", ["x"], ["y"], name="r", domain="com.example")], [x], [y])
    with pytest.raises(UnsupportedError, match="domain 'com.example'"):
        layoutconv.read_model(custom)
    leaky = _model(onnx, [helper.make_node("LeakyRelu", ["x"], ["y"], name="leak", alpha=0.01)], [x], [y])
    with pytest.raises(UnsupportedError, match=r"LeakyRelu node 'leak'.*alpha=0\.2"):
        layoutconv.read_model(leaky)


def test_reading_refuses_computed_shapes_batch_moves_and_external_data(L, onnx, tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    computed = _model(
        onnx,
        [helper.make_node("Shape", ["x"], ["s"], name="shape"), helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape")],
        [x], [y],
    )  # fmt: skip
    with pytest.raises(UnsupportedError, match="Reshape node 'reshape' computes its target shape at run time"):
        layoutconv.read_model(computed)
    moved = _model(onnx, [helper.make_node("Transpose", ["x"], ["y"], name="t", perm=[1, 0, 2])], [x], [y])
    with pytest.raises(UnsupportedError, match="batch"):
        layoutconv.read_model(moved)
    w = numpy_helper.from_array(rand(4, 5), "w")
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("raw_data")
    entry = w.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    external = _model(onnx, [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [x], [y], [w])
    with pytest.raises(UnsafeFileError, match="external"):
        layoutconv.read_model(external)
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(layoutconv.to_onnx(layers.Dense(rand(3, 2))).SerializeToString()[:-7])
    with pytest.raises(FileFormatError):
        layoutconv.read_model(truncated)


def test_read_model_from_a_path(L, tmp_path):
    d = layers.Dense(rand(3, 2), rand(3), activation="sigmoid")
    path = tmp_path / "dense.onnx"
    path.write_bytes(layoutconv.to_onnx(d).SerializeToString())
    back = layoutconv.read_model(str(path))
    assert back.layers["layer"] == d


def test_tf_keras_sequential_model_to_onnx(L, onnx):
    need("tf_keras", "tensorflow")
    import tf_keras

    model = tf_keras.Sequential(
        [
            tf_keras.layers.Conv1D(6, 5, strides=2, padding="same", activation="relu", input_shape=(21, 4)),
            tf_keras.layers.MaxPooling1D(2, padding="same"),
            tf_keras.layers.BatchNormalization(),
            tf_keras.layers.Flatten(),
            tf_keras.layers.Dense(3, activation="softmax"),
        ]
    )
    perturb_batch_norms(tf_keras, model)
    keras_round_trip(L, onnx, model, [rand(3, 21, 4)])


def test_declared_sizes_are_not_trusted_to_allocate_from(L):
    pool = layers.Pool("avg", 3, 2, padding="same_upper")
    model = layoutconv.to_onnx(pool, input_shape=(3, 11))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = 1 << 40  # a file may declare any size; the 'same' note is then not checked by running shapes
    back = layoutconv.read_model(model)
    assert back.layers["layer"].padding == ((1, 1),)  # the explicit pads of the file, the rule left unconfirmed
