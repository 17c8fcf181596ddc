"""KerasFile.conv(): every Keras 2/3 convolution class, read from real saves without the frameworks.

The oracle is the framework itself: the loaded model's layer, run on a random
input, must equal the reference pass of the record read from the file (within
layoutconv's tolerance), and the record must equal ``layoutconv.from_keras(layer)``
bit for bit.  A Theano case rewrites a tf_keras file's ``backend`` attribute and
expects every kernel reversed along its spatial axes.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import layoutconv
from layoutconv import reference
from layoutconv.errors import UnsupportedError
from layoutconv.tolerance import tolerance

from conftest import need

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
pytestmark = pytest.mark.filterwarnings(
    "ignore:You are saving your model as an HDF5 file:UserWarning",
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning",
)

SIZE_2D = (9, 10, 4)  # H, W, C (channels_last)
SIZE_3D = (5, 6, 7, 3)  # D, H, W, C

#: layer name -> (class, args, kwargs, input: "2d" or "3d")
LAYERS = {
    "conv2d_same_relu": ("Conv2D", (6, (3, 5)), dict(strides=(2, 1), padding="same", activation="relu"), "2d"),
    "conv3d": ("Conv3D", (5, (2, 3, 3)), dict(strides=(1, 2, 1), padding="same"), "3d"),
    "tconv2d_same": ("Conv2DTranspose", (3, (3, 4)), dict(strides=2, padding="same", output_padding=1), "2d"),
    "tconv2d_valid": ("Conv2DTranspose", (5, (2, 3)), dict(strides=(2, 1), padding="valid", activation="sigmoid"), "2d"),
    "depthwise2d": ("DepthwiseConv2D", ((3, 3),), dict(depth_multiplier=2, padding="same"), "2d"),
    "separable2d": ("SeparableConv2D", (7, (3, 3)), dict(depth_multiplier=2, padding="valid", activation="tanh"), "2d"),
}
RECORDS = {
    "Conv2D": layoutconv.Conv,
    "Conv3D": layoutconv.Conv,
    "Conv2DTranspose": layoutconv.ConvTranspose,
    "DepthwiseConv2D": layoutconv.Conv,
    "SeparableConv2D": layoutconv.Chain,
}


def build(keras_module):
    """A functional model with one branch per LAYERS entry (random normal weights, never all ones)."""
    L = keras_module.layers
    inputs = {"2d": L.Input(SIZE_2D), "3d": L.Input(SIZE_3D)}
    outputs = [
        getattr(L, cls)(*args, name=name, **kwargs)(inputs[which]) for name, (cls, args, kwargs, which) in LAYERS.items()
    ]
    model = keras_module.Model(list(inputs.values()), outputs)
    rng = np.random.default_rng(7)
    for layer in model.layers:
        layer.set_weights([rng.normal(size=w.shape).astype(w.dtype) for w in layer.get_weights()])
    return model


def spatial_flip(record):
    """The record's kernels reversed along every spatial axis (what Theano's true convolution stored)."""
    if isinstance(record, layoutconv.Chain):
        return [np.flip(r.kernel, axis=tuple(range(2, r.kernel.ndim))) for r in record.layers]
    return [np.flip(record.kernel, axis=tuple(range(2, record.kernel.ndim)))]


def kernels(record):
    return [r.kernel for r in record.layers] if isinstance(record, layoutconv.Chain) else [record.kernel]


def check_layer(kf, layer, rng):
    name = layer.name
    got = kf.conv(name)
    assert isinstance(got, RECORDS[LAYERS[name][0]])
    expected = layoutconv.from_keras(layer)
    assert got == expected, f"{name}: {got} != {expected}"
    for a, b in zip(kernels(got), kernels(expected)):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    shape = SIZE_2D if LAYERS[name][3] == "2d" else SIZE_3D
    x = rng.normal(size=(2, *shape)).astype(np.float32)
    live = np.asarray(layer(x))
    x_cf = np.ascontiguousarray(np.moveaxis(x, -1, 1))
    ours = np.moveaxis(reference.forward(got, x_cf), 1, -1)
    tol, _, _ = tolerance(got, x_cf)
    tol = np.moveaxis(tol, 1, -1) if np.ndim(tol) == ours.ndim else tol
    assert live.shape == ours.shape, name
    assert (np.abs(live - ours) <= tol).all(), f"{name}: max error {np.abs(live - ours).max()}"


@pytest.fixture(scope="module")
def tf_keras_h5(tmp_path_factory):
    need("tf_keras", "tensorflow")
    import tf_keras

    model = build(tf_keras)
    path = tmp_path_factory.mktemp("tfk") / "m.h5"
    model.save(str(path))
    return path, tf_keras


@pytest.fixture(scope="module")
def keras3_archive(tmp_path_factory):
    need("keras", "tensorflow")
    import keras

    model = build(keras)
    path = tmp_path_factory.mktemp("k3") / "m.keras"
    model.save(str(path))
    return path, keras


@pytest.mark.parametrize("name", list(LAYERS))
def test_tf_keras_h5(tf_keras_h5, name, rng):
    path, tf_keras = tf_keras_h5
    kf = layoutconv.open(path)
    assert kf.format == "keras2-model" and kf.backend == "tensorflow"
    loaded = tf_keras.models.load_model(str(path), compile=False)
    check_layer(kf, loaded.get_layer(name), rng)


@pytest.mark.parametrize("name", list(LAYERS))
def test_keras3_archive(keras3_archive, name, rng):
    path, keras = keras3_archive
    kf = layoutconv.open(path)
    assert kf.format == "keras3-archive"
    loaded = keras.models.load_model(str(path), compile=False)
    check_layer(kf, loaded.get_layer(name), rng)


def test_hyperparameters_read(keras3_archive):
    kf = layoutconv.open(keras3_archive[0])
    conv = kf.conv("conv2d_same_relu")
    assert (conv.stride, conv.padding, conv.activation, conv.kernel_shape) == ((2, 1), "same_upper", "relu", (3, 5))
    assert kf.conv("depthwise2d").groups == SIZE_2D[-1] and kf.conv("depthwise2d").out_channels == 2 * SIZE_2D[-1]
    assert kf.conv("conv2d_same_relu", strides=(2, 1)) == conv  # agreeing keywords are accepted
    with pytest.raises(layoutconv.ConfigError, match="contradicts the file's config"):
        kf.conv("conv2d_same_relu", strides=1)


def test_inspect_lists_every_convolution(keras3_archive):
    kf = layoutconv.open(keras3_archive[0])
    text = kf.summary()
    for axes in ("H W I O", "D H W I O", "H W O I", "H W G M", "H W G M + H W I O"):
        assert axes in text
    info = {layer["name"]: layer["conv"] for layer in kf.to_dict()["layers"]}
    assert info["conv2d_same_relu"]["stride"] == [2, 1] and info["conv2d_same_relu"]["padding"]["canonical"] == "same_upper"
    assert info["conv2d_same_relu"]["data_format"] == "channels_last" and info["conv2d_same_relu"]["flip"] is False


@pytest.fixture(scope="module")
def theano_h5(tf_keras_h5, tmp_path_factory):
    import h5py

    path = tmp_path_factory.mktemp("th") / "m.h5"
    path.write_bytes(tf_keras_h5[0].read_bytes())
    with h5py.File(path, "r+") as f:
        f.attrs["backend"] = b"theano"
    return path


@pytest.mark.parametrize("name", [n for n in LAYERS if n != "tconv2d_same"])
def test_theano_kernels_flipped(theano_h5, tf_keras_h5, name):
    path, tf_keras = tf_keras_h5
    kf = layoutconv.open(theano_h5)
    assert kf.backend == "theano"
    expected = layoutconv.from_keras(tf_keras.models.load_model(str(path), compile=False).get_layer(name))
    got = kf.conv(name)
    for a, b in zip(kernels(got), spatial_flip(expected)):
        assert np.array_equal(a, b)
    assert layoutconv.open(path).conv(name) == expected  # the same bytes read as TensorFlow: no flip


def test_theano_same_is_half_per_axis(theano_h5):
    kf = layoutconv.open(theano_h5)
    assert kf.conv("conv2d_same_relu").padding == ((1, 1), (2, 2))  # kernel (3, 5): r // 2, (r - 1) // 2 per axis
    assert kf.conv("depthwise2d").padding == ((1, 1), (1, 1))
    with pytest.raises(UnsupportedError, match="Theano"):
        kf.conv("tconv2d_same")
