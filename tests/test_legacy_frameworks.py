"""Real saves from tf_keras (Keras 2) and Keras 3, read back without their frameworks.

The expected Conv1D is built from the live layer: ``layer.get_weights()``
converted with :mod:`layoutconv.layouts` and the layer's own config; the
comparison is bit-exact on the weights.  One forward check per flavour runs
the live layer and compares with the reference pass of what was read.
"""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import pytest

import layoutconv
from layoutconv import layouts, reference
from layoutconv.verify import tolerance

from conftest import need

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
pytestmark = pytest.mark.filterwarnings(
    "ignore:You are saving your model as an HDF5 file:UserWarning",
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning",
)

LENGTH = 19
CHANNELS = 4
#: (name, filters, kernel_size, strides, padding, dilation_rate, groups): kernel_size == in_channels,
#: filters == kernel_size, in_channels == filters somewhere; even and odd kernels; stride and dilation.
CONVS = [
    ("conv_same", 4, 4, 2, "same", 1, 1),
    ("conv_causal", 5, 3, 1, "causal", 2, 1),
    ("conv_valid", 5, 5, 1, "valid", 1, 1),
    ("conv_grouped", 4, 2, 1, "valid", 1, 5),
]
PADDING = {"same": "same_upper", "causal": "causal", "valid": "valid"}


def build(keras_module):
    """A Sequential model with the CONVS (random normal weights, never all ones)."""
    layers = [keras_module.layers.Input((LENGTH, CHANNELS))]
    for name, filters, size, stride, padding, dilation, groups in CONVS:
        if groups > 1:
            filters = 10  # groups 5 needs in and out channels divisible by 5
        layers.append(
            keras_module.layers.Conv1D(
                filters, size, strides=stride, padding=padding, dilation_rate=dilation, groups=groups, name=name
            )
        )
    model = keras_module.Sequential(layers)
    rng = np.random.default_rng(11)
    for layer in model.layers:
        layer.set_weights([rng.normal(size=w.shape).astype(w.dtype) for w in layer.get_weights()])
    return model


def expected_conv(layer) -> layoutconv.Conv1D:
    kernel, bias = layer.get_weights()
    return layoutconv.Conv1D(
        layouts.to_canonical(kernel, "keras"),
        bias,
        stride=layer.strides[0],
        dilation=layer.dilation_rate[0],
        groups=layer.groups,
        padding=PADDING[layer.padding],
    )


def run_live(layer_model, x_nlc):
    return np.asarray(layer_model(x_nlc.astype(np.float32)))


def check_file(path, model, *, config: bool, fmt: str):
    kf = layoutconv.open(path)
    assert kf.format == fmt
    for layer in model.layers:
        expected = expected_conv(layer)
        if config:
            got = kf.conv1d(layer.name)
            assert got == expected, f"{layer.name}: {got} != {expected}"
        else:  # no config in the file: hyperparameters are ours to give
            got = kf.conv1d(layer.name, padding=layer.padding, strides=layer.strides[0], dilation_rate=layer.dilation_rate[0], groups=layer.groups)
            assert got == expected
        raw = kf.weights(layer.name)
        live = layer.get_weights()
        assert [a.dtype for a in raw] == [b.dtype for b in live]
        assert [a.tobytes() for a in raw] == [b.tobytes() for b in live]
    return kf


def check_forward(kf, model, rng):
    """The first layer (same, stride 2, even kernel) run live vs the reference pass of what was read."""
    layer = model.layers[0]
    x = rng.normal(size=(2, LENGTH, CHANNELS))
    conv = kf.conv1d(layer.name)
    live = run_live(layer, x).transpose(0, 2, 1)
    x_ncl = np.ascontiguousarray(x.transpose(0, 2, 1))
    tol, _, _ = tolerance(conv, x_ncl)
    err = np.abs(live - reference.conv1d(conv, x_ncl))
    assert live.shape == err.shape and (err <= tol).all()


@pytest.fixture(scope="module")
def tf_keras_model():
    need("tf_keras", "tensorflow")
    import tf_keras

    return build(tf_keras)


@pytest.fixture(scope="module")
def keras3_model():
    need("keras", "tensorflow")
    import keras

    return build(keras)


def test_tf_keras_save_weights(tmp_path, tf_keras_model):
    path = tmp_path / "x.h5"
    tf_keras_model.save_weights(str(path))
    kf = check_file(path, tf_keras_model, config=False, fmt="keras2-weights")
    assert kf.backend == "tensorflow" and not kf.backend_inferred
    assert kf.layer("conv_same").weights[0].name == "conv_same/kernel:0"


def test_tf_keras_save_model(tmp_path, tf_keras_model, rng):
    path = tmp_path / "x.h5"
    tf_keras_model.save(str(path))
    kf = check_file(path, tf_keras_model, config=True, fmt="keras2-model")
    assert kf.keras_version.startswith("2.") and kf.keras_version_source == "file attribute 'keras_version'"
    check_forward(kf, tf_keras_model, rng)


def test_keras3_archive(tmp_path, keras3_model, rng):
    path = tmp_path / "x.keras"
    keras3_model.save(str(path))
    kf = check_file(path, keras3_model, config=True, fmt="keras3-archive")
    assert kf.keras_version.startswith("3.") and kf.backend is None
    assert kf.layer("conv_grouped").type_source == "config.json"
    check_forward(kf, keras3_model, rng)


def test_keras3_weights_h5(tmp_path, keras3_model):
    path = tmp_path / "x.weights.h5"
    keras3_model.save_weights(str(path))
    kf = check_file(path, keras3_model, config=False, fmt="keras3-weights")
    assert kf.layer("conv_valid").type == "Conv1D"


def test_keras3_legacy_h5(tmp_path, keras3_model):
    path = tmp_path / "x3.h5"
    keras3_model.save(str(path))
    kf = check_file(path, keras3_model, config=True, fmt="keras2-model")
    assert kf.backend == "tensorflow" and kf.keras_version.startswith("3.")


def test_keras3_archive_without_recorded_names(tmp_path, keras3_model):
    """Older Keras 3 files do not store layer names in the weights: they are matched through config.json."""
    import h5py

    path = tmp_path / "x.keras"
    keras3_model.save(str(path))
    with zipfile.ZipFile(path) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    buf = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buf, "r+") as f:
        f.visititems(lambda name, obj: obj.attrs.__delitem__("name") if "name" in obj.attrs else None)
    members["model.weights.h5"] = buf.getvalue()
    stripped = tmp_path / "stripped.keras"
    with zipfile.ZipFile(stripped, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    kf = check_file(stripped, keras3_model, config=True, fmt="keras3-archive")
    assert kf.layer("conv_causal").type_source == "config.json (matched by weight path)"
