"""Whole Keras models: read (live and from files, TF-free), run in numpy, generated in PyTorch, verified.

The oracle is Keras itself (``model.predict``) on models built here with
random weights and perturbed BatchNorm statistics.
"""

from __future__ import annotations

import numpy as np
import pytest

import layoutconv
from layoutconv import ConfigError, UnsupportedError, layers, reference

keras = pytest.importorskip("keras")
tf_keras = pytest.importorskip("tf_keras")
torch = pytest.importorskip("torch")

F32 = dict(rtol=2e-5, atol=2e-5)  # float32 Keras vs float64 reference through several layers


def _randomise(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        if "BatchNormalization" in type(layer).__name__:
            gamma, beta, mean, var = weights
            layer.set_weights([rng.normal(1, 0.3, gamma.shape), rng.normal(0, 0.3, beta.shape), rng.normal(0, 0.5, mean.shape),
                               rng.uniform(0.2, 2.0, var.shape)])
            continue
        layer.set_weights([(rng.normal(size=w.shape) / np.sqrt(max(1, np.prod(w.shape[:-1])))).astype(w.dtype) for w in weights])
    return model



def cnn_1d(k):
    inp = k.Input((31, 5))
    x = k.layers.Conv1D(8, 5, activation="relu", padding="same")(inp)
    x = k.layers.BatchNormalization()(x)
    x = k.layers.MaxPooling1D(3, strides=2, padding="same")(x)
    x = k.layers.Conv1D(6, 3, dilation_rate=2)(x)
    x = k.layers.AveragePooling1D(2)(x)
    x = k.layers.Flatten()(x)
    x = k.layers.Dropout(0.4)(x)
    x = k.layers.Dense(7, activation="tanh")(x)
    return k.Model(inp, k.layers.Dense(3, activation="softmax")(x))


def cnn_2d(k):
    inp = k.Input((13, 11, 3))
    x = k.layers.ZeroPadding2D(((1, 2), (0, 1)))(inp)
    x = k.layers.Conv2D(6, (3, 5), strides=(2, 1), activation="relu")(x)
    y = k.layers.Conv2D(6, 1, padding="same")(x)
    x = k.layers.Add()([x, y])
    x = k.layers.BatchNormalization()(x)
    x = k.layers.AveragePooling2D((2, 3), strides=(2, 2), padding="same")(x)
    x = k.layers.Cropping2D(((1, 0), (0, 1)))(x)
    x = k.layers.GlobalAveragePooling2D()(x)
    return k.Model(inp, k.layers.Dense(4)(x))


def two_inputs(k):
    a = k.Input((17, 4))
    b = k.Input((3,))
    x = k.layers.Conv1D(5, 3)(a)
    x = k.layers.GlobalMaxPooling1D()(x)
    y = k.layers.Dense(5, activation="sigmoid")(b)
    m = k.layers.Multiply()([x, y])
    c = k.layers.Concatenate()([m, y])
    return k.Model([a, b], k.layers.Dense(2)(c))


def sequence_ops(k):
    inp = k.Input((9, 6))
    x = k.layers.Permute((2, 1))(inp)  # (6, 9): channels are now the 9 steps
    x = k.layers.Dense(4)(x)  # on the last axis, at each of the 6 positions
    x = k.layers.Reshape((8, 3))(x)
    x = k.layers.LayerNormalization()(x)
    x = k.layers.Conv1D(5, 2, activation="elu")(x)
    x = k.layers.Flatten()(x)
    return k.Model(inp, x)


def embedding(k):
    inp = k.Input((12,), dtype="int32")
    x = k.layers.Embedding(20, 6)(inp)
    x = k.layers.Conv1D(4, 3, activation="relu")(x)
    x = k.layers.GlobalAveragePooling1D()(x)
    return k.Model(inp, x)


MODELS = [cnn_1d, cnn_2d, two_inputs, sequence_ops, embedding]


def _inputs(model, seed=1):
    rng = np.random.default_rng(seed)
    out = []
    for t in model.inputs:
        shape = (3,) + tuple(t.shape[1:])
        out.append(rng.integers(0, 20, size=shape).astype("int32") if "int" in str(t.dtype) else rng.normal(size=shape).astype("float32"))
    return out


@pytest.mark.parametrize("build", MODELS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("flavor", ["keras", "tf_keras"])
def test_live_keras_model_reference_and_torch_match_predict(build, flavor):
    k = keras if flavor == "keras" else tf_keras
    model = _randomise(build(k))
    xs = _inputs(model)
    expected = model.predict(xs[0] if len(xs) == 1 else xs, verbose=0)
    graph = layoutconv.read_model(model)
    np.testing.assert_allclose(reference.forward(graph, *xs), expected, **F32)
    module = layoutconv.to_torch(graph)
    with torch.no_grad():
        got = module(*[torch.from_numpy(x) for x in xs]).numpy()
    np.testing.assert_allclose(got, expected, **F32)
    report = layoutconv.verify(graph, frameworks=["torch"], x=xs)
    assert report.passed, str(report)


@pytest.mark.parametrize("build", [cnn_1d, cnn_2d, two_inputs], ids=lambda f: f.__name__)
def test_keras3_file_read_without_tensorflow_matches_predict(build, tmp_path):
    model = _randomise(build(keras))
    path = tmp_path / "model.keras"
    model.save(path)
    xs = _inputs(model)
    graph = layoutconv.read_model(str(path))
    np.testing.assert_allclose(reference.forward(graph, *xs), model.predict(xs[0] if len(xs) == 1 else xs, verbose=0), **F32)
    assert graph.same_weights(layoutconv.read_model(model))


@pytest.mark.parametrize("build", [cnn_1d, two_inputs], ids=lambda f: f.__name__)
@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
def test_tf_keras_h5_full_save_and_weights_with_architecture(build, tmp_path):
    model = _randomise(build(tf_keras))
    xs = _inputs(model)
    expected = model.predict(xs[0] if len(xs) == 1 else xs, verbose=0)
    full = tmp_path / "model.h5"
    model.save(full)
    np.testing.assert_allclose(reference.forward(layoutconv.read_model(str(full)), *xs), expected, **F32)
    weights = tmp_path / "w.h5"
    model.save_weights(weights)
    arch = tmp_path / "model.json"
    arch.write_text(model.to_json())
    with pytest.raises(ConfigError, match="weights only"):
        layoutconv.read_model(str(weights))
    graph = layoutconv.read_model(str(weights), architecture=str(arch))
    np.testing.assert_allclose(reference.forward(graph, *xs), expected, **F32)


def test_generated_module_takes_channels_first_on_request():
    model = _randomise(cnn_1d(keras))
    (x,) = _inputs(model)
    graph = layoutconv.read_model(model)
    module = layoutconv.to_torch(graph, layout="channels_first")
    with torch.no_grad():
        got = module(torch.from_numpy(x.transpose(0, 2, 1).copy())).numpy()
    np.testing.assert_allclose(got, model.predict(x, verbose=0), **F32)
    dense = next(n for n, r in graph.layers.items() if isinstance(r, layers.Dense))
    bn = next(n for n, r in graph.layers.items() if isinstance(r, layers.BatchNorm))
    assert f"{dense}.weight" in module.state_dict() and f"{bn}.running_var" in module.state_dict()  # named after the layers


def test_flatten_order_is_what_keras_does_not_what_torch_does():
    inp = keras.Input((4, 3))
    model = _randomise(keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(inp))))
    graph = layoutconv.read_model(model)
    ((name, flat),) = [(n, r) for n, r in graph.layers.items() if isinstance(r, layers.Flatten)]
    assert flat.order == "channels_last"
    x = _inputs(model)[0]
    wrong = graph.replace(layers={**graph.layers, name: layers.Flatten("channels_first")})
    right_err = np.abs(reference.forward(graph, x) - model.predict(x, verbose=0)).max()
    wrong_err = np.abs(reference.forward(wrong, x) - model.predict(x, verbose=0)).max()
    assert right_err < 1e-5 < 1e-2 < wrong_err


def test_unknown_layer_class_is_named():
    inp = keras.Input((5, 3))
    model = keras.Model(inp, keras.layers.UpSampling1D(2)(inp))
    with pytest.raises(UnsupportedError, match="UpSampling1D"):
        layoutconv.read_model(model)


class _ConvRecurrentNet(torch.nn.Module):
    """A PyTorch model with Conv/BN, a bidirectional LSTM and a stacked GRU (batch first), flattened into a Linear."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(4, 6, 3)
        self.bn = torch.nn.BatchNorm1d(6)
        self.lstm = torch.nn.LSTM(6, 5, batch_first=True, bidirectional=True)
        self.gru = torch.nn.GRU(10, 7, batch_first=True, num_layers=2)
        self.fc = torch.nn.Linear(7 * 9, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x))).transpose(1, 2)
        x, _ = self.lstm(x)
        x, _ = self.gru(x)
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("flavor", ["keras", "tf_keras"])
def test_pytorch_recurrent_model_to_keras_matches_pytorch(flavor):
    torch.manual_seed(5)
    model = _ConvRecurrentNet().eval()
    with torch.no_grad():
        model.bn.running_mean.normal_()
        model.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, 4, 11)
    with torch.no_grad():
        expected = model(x).numpy()
    graph = layoutconv.read_model(model, example_inputs=x)
    assert sum(isinstance(r, layoutconv.recurrent.GRU) for r in graph.layers.values()) == 2  # one record per stacked layer
    np.testing.assert_allclose(reference.forward(graph, x.numpy()), expected, rtol=1e-5, atol=1e-6)
    keras_model = layoutconv.to_keras(graph, flavor=flavor)
    np.testing.assert_allclose(np.asarray(keras_model(x.numpy())), expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(layoutconv.to_torch(graph)(x).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_final_states_of_a_recurrent_module_are_refused_by_name():
    class LastState(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(3, 4, batch_first=True)

        def forward(self, x):
            _, (h, c) = self.lstm(x)
            return h[0]

    with pytest.raises(UnsupportedError, match="final states"):
        layoutconv.read_model(LastState(), example_inputs=torch.randn(2, 5, 3))


def test_pytorch_recurrent_model_to_onnx_matches_pytorch():
    pytest.importorskip("onnxruntime")
    from layoutconv.adapters import onnx_layers

    torch.manual_seed(6)
    model = _ConvRecurrentNet().eval()
    with torch.no_grad():
        model.bn.running_mean.normal_()
        model.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 4, 11)
    with torch.no_grad():
        expected = model(x).numpy()
    proto = layoutconv.to_onnx(layoutconv.read_model(model, example_inputs=x))
    assert {n.op_type for n in proto.graph.node} >= {"LSTM", "GRU", "Conv", "BatchNormalization"}
    np.testing.assert_allclose(onnx_layers.run(proto, x.numpy()), expected, rtol=1e-5, atol=1e-6)
    back = layoutconv.read_model(proto)  # recurrent nodes read back, with the nodes around them, as one record each
    assert sum(isinstance(r, (layoutconv.LSTM, layoutconv.GRU, layoutconv.Bidirectional)) for r in back.layers.values()) == 3
    np.testing.assert_allclose(reference.forward(back, x.numpy()), expected, rtol=1e-5, atol=1e-6)
