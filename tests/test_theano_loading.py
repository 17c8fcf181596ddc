"""What tf_keras and Keras 3 really do with a Theano-trained Keras file: they do not flip the kernel.

Pins the behaviour docs/keras-legacy.md ("What tf.keras and Keras 3 do with a
Theano file") describes, so the project notices if a framework ever changes
it.  The file is the real DeepCpf1 weights saved by Keras 2.0.5 on Theano
(root attribute ``backend='theano'``); its Conv1D ``conv1d_2`` has 80 filters
of width 5 over 4 channels.  Theano convolved, so the cross-correlation
kernel that reproduces the trained model is the stored one reversed along K,
which is what layoutconv's reader returns.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np
import pytest

import layoutconv
from layoutconv import layouts, reference
from layoutconv.verify import tolerance

from conftest import need

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning",
)

FIXTURES = Path(__file__).parent / "fixtures" / "legacy_keras"
KERAS2_THEANO = str(FIXTURES / "deepcpf1_DeepCpf1_weights_keras2.0.5_theano.h5")
KERAS1_THEANO = str(FIXTURES / "deepcpf1_DeepCpf1_weights_keras1_theano.h5")
LAYER = "conv1d_2"
FLAVORS = {"tf_keras": ("tf_keras", "tensorflow"), "keras": ("keras", "tensorflow")}


def keras_module(flavor: str):
    need(*FLAVORS[flavor])
    return importlib.import_module(flavor)


def loaded_conv(flavor: str, path: str = KERAS2_THEANO, name: str = LAYER):
    """The smallest model whose layer name matches the file, after ``load_weights(path, by_name=True)``."""
    k = keras_module(flavor)
    model = k.Sequential([k.layers.Input((None, 4)), k.layers.Conv1D(80, 5, name=name)])
    model.load_weights(path, by_name=True)
    return model.get_layer(name)


def test_the_file_says_theano_and_its_kernel_is_not_symmetric():
    """Otherwise a flip would change nothing and the tests below could not fail."""
    kf = layoutconv.open(KERAS2_THEANO)
    assert (kf.format, kf.keras_version, kf.backend, kf.backend_inferred) == ("keras2-weights", "2.0.5", "theano", False)
    stored, _ = kf.weights(LAYER)
    assert stored.shape == (5, 4, 80)
    assert np.abs(stored - stored[::-1]).max() > 0.1


@pytest.mark.parametrize("flavor", sorted(FLAVORS))
def test_load_weights_copies_the_theano_kernel_as_stored(flavor):
    kf = layoutconv.open(KERAS2_THEANO)
    stored_kernel, stored_bias = kf.weights(LAYER)
    kernel, bias = loaded_conv(flavor).get_weights()
    # what the framework holds after loading: the stored bytes, unflipped ...
    assert kernel.dtype == stored_kernel.dtype and kernel.tobytes() == stored_kernel.tobytes()
    assert bias.tobytes() == stored_bias.tobytes()
    # ... not the kernel that reproduces the Theano model (layoutconv's, reversed along K)
    theano_correct = layouts.from_canonical(kf.conv1d(LAYER).kernel, "keras")
    assert np.array_equal(theano_correct, stored_kernel[::-1])
    assert not np.array_equal(kernel, theano_correct)


@pytest.mark.parametrize("flavor", sorted(FLAVORS))
def test_the_loaded_layer_is_wrong_and_layoutconv_conversion_is_right(flavor, rng):
    conv = layoutconv.open(KERAS2_THEANO).conv1d(LAYER)  # valid padding, stride 1: what DeepCpf1 used
    x = rng.standard_normal((2, 33, 4)).astype(np.float32)  # (N, L, C), odd length
    x_ncl = np.ascontiguousarray(x.transpose(0, 2, 1))
    expected = reference.conv1d(conv, x_ncl)  # what the Theano-trained layer computed
    tol, _, _ = tolerance(conv, x_ncl)

    loaded = np.asarray(loaded_conv(flavor)(x)).transpose(0, 2, 1)
    err = np.abs(loaded - expected)
    assert loaded.shape == expected.shape == (2, 80, 29)
    assert err.max() > 1e4 * tol.max()  # far outside the tolerance (measured: 2.1 max, 0.36 mean, 1.7e5 x tol)
    assert err.max() > 0.5 and np.mean(err > tol) > 0.9  # and nearly every output element is off

    converted = layoutconv.to_keras(conv, flavor=flavor)
    out = np.asarray(converted(x)).transpose(0, 2, 1)
    assert out.shape == expected.shape and (np.abs(out - expected) <= tol).all()


def test_tf_keras_loads_a_keras1_theano_kernel_unflipped_too():
    """tf_keras converts the Keras 1.1 layout (K, 1, I, O) -> (K, I, O) by dropping the axis, and does not flip."""
    name = "convolution1d_2"
    stored, _ = layoutconv.open(KERAS1_THEANO).weights(name)
    kernel, _ = loaded_conv("tf_keras", KERAS1_THEANO, name).get_weights()
    assert kernel.tobytes() == stored[:, 0].tobytes()
    assert np.array_equal(layouts.from_canonical(layoutconv.open(KERAS1_THEANO).conv1d(name).kernel, "keras"), kernel[::-1])


def test_keras3_refuses_a_keras1_kernel():
    with pytest.raises(ValueError, match=r"(?i)shape mismatch"):
        loaded_conv("keras", KERAS1_THEANO, "convolution1d_2")
