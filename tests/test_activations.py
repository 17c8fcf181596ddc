"""Fused activations: each numpy definition against its formula written here, element by element,
and the record and reference pass carrying them."""

from __future__ import annotations

import importlib
import math
import os

import numpy as np
import pytest

import layoutconv
from layoutconv import ConfigError, Conv1D, activations, reference
from layoutconv.verify import compare

from conftest import need
from test_reference import direct_conv1d


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


#: each activation written a second time, per element, with the math module only
BY_HAND = {
    "linear": lambda v: v,
    "relu": lambda v: v if v > 0 else 0.0,
    "relu6": lambda v: min(max(v, 0.0), 6.0),
    "leaky_relu": lambda v: v if v >= 0 else 0.2 * v,
    "sigmoid": _sigmoid,
    "tanh": math.tanh,
    "elu": lambda v: v if v > 0 else math.exp(v) - 1.0,
    "selu": lambda v: 1.0507009873554805 * (v if v > 0 else 1.6732632423543772 * (math.exp(v) - 1.0)),
    "gelu": lambda v: v * 0.5 * math.erfc(-v / math.sqrt(2.0)),
    "swish": lambda v: v * _sigmoid(v),
    "softplus": lambda v: math.log1p(math.exp(v)) if v < 30 else v + math.log1p(math.exp(-v)),
    "softsign": lambda v: v / (1.0 + abs(v)),
    "mish": lambda v: v * math.tanh(math.log1p(math.exp(v)) if v < 30 else v),
    "hard_sigmoid_keras2": lambda v: min(max(0.2 * v + 0.5, 0.0), 1.0),
    "hard_sigmoid_keras3": lambda v: min(max(v + 3.0, 0.0), 6.0) / 6.0,
    "hard_silu": lambda v: v * min(max(v + 3.0, 0.0), 6.0) / 6.0,
}

#: points around every kink and saturation, plus random values and large magnitudes
POINTS = np.concatenate(
    [
        np.array([-40.0, -7.0, -3.0, -2.5, -1.0, -0.3, -1e-9, 0.0, 1e-9, 0.4, 1.0, 2.5, 3.0, 5.9, 6.0, 6.1, 40.0]),
        np.random.default_rng(5).normal(scale=4.0, size=101),
    ]
)


def test_every_activation_has_an_oracle():
    assert sorted(BY_HAND) == sorted(activations.ACTIVATIONS)


@pytest.mark.parametrize("name", sorted(BY_HAND))
def test_definition_matches_formula(name):
    got = activations.apply(name, POINTS.copy())
    want = np.array([BY_HAND[name](float(v)) for v in POINTS])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", sorted(BY_HAND))
def test_lipschitz_bound_holds(name):
    """The slope bound the tolerance relies on: no pair of nearby points is steeper."""
    x = np.linspace(-12, 12, 200_001)
    y = activations.apply(name, x)
    slope = np.abs(np.diff(y) / np.diff(x)).max()
    assert slope <= activations.get(name).lipschitz * (1 + 1e-6)


@pytest.mark.parametrize("alias, name", [("silu", "swish"), ("hard_swish", "hard_silu"), (None, "linear"), ("ReLU", "relu")])
def test_aliases(alias, name):
    assert activations.canonical(alias) == name


def test_plain_hard_sigmoid_is_refused_as_ambiguous():
    with pytest.raises(ConfigError, match="hard_sigmoid_keras2.*hard_sigmoid_keras3"):
        Conv1D(np.ones((2, 1, 3)), activation="hard_sigmoid")


def test_unknown_and_channel_mixing_activations_are_refused():
    with pytest.raises(ConfigError, match="Unknown activation.*softmax"):
        Conv1D(np.ones((2, 1, 3)), activation="softmax")


@pytest.mark.parametrize("name", ["relu", "gelu", "hard_sigmoid_keras2", "selu"])
def test_reference_applies_activation_after_bias(rng, name):
    kernel = rng.standard_normal((5, 3, 5))  # kernel_size == filters
    bias = rng.standard_normal(5)
    x = rng.standard_normal((2, 3, 13))
    conv = Conv1D(kernel, bias, stride=2, padding="same_upper", activation=name)
    (pads,) = conv.pads(13)
    linear = direct_conv1d(kernel, bias, x, 2, 1, 1, pads, "zeros")
    want = np.vectorize(BY_HAND[name])(linear)
    np.testing.assert_allclose(reference.conv1d(conv, x), want, rtol=1e-12, atol=1e-12)


def test_record_carries_activation_through_replace_pickle_and_repr(rng):
    import pickle

    conv = Conv1D(rng.standard_normal((4, 3, 5)).astype(np.float32), activation="silu")
    assert conv.activation == "swish"
    assert "activation='swish'" in repr(conv)
    assert pickle.loads(pickle.dumps(conv)) == conv
    assert conv.replace(activation=None).activation == "linear"
    assert conv != conv.replace(activation="relu")
    assert not conv.equivalent(conv.replace(activation="relu"))


def test_explain_applies_the_activation_and_names_forgetting_it(rng):
    conv = Conv1D(rng.standard_normal((4, 3, 5)), rng.standard_normal(4), activation="relu")
    x = rng.standard_normal((1, 3, 11))
    y = reference.conv1d(conv.replace(activation="linear"), x)
    n, f, t = next(zip(*np.nonzero(y < 0)))  # an element that relu changes
    e = layoutconv.explain(conv, x, (n, f, t))
    assert e.agree and e.output == 0.0 and e.total == pytest.approx(float(y[n, f, t]))
    assert any("activation forgotten" in p.mistake and p.value == pytest.approx(float(y[n, f, t])) for p in e.pitfalls)


# -- each framework's names, checked by running the framework ---------------------------------------
KERAS_FLAVOURS = ["keras", "tf_keras"]
KERAS_NAMES = [(f, n) for f in KERAS_FLAVOURS for n in activations.KERAS_NAMES[f]]
#: every framework verify knows
VERIFIED_FRAMEWORKS = ["keras", "tf_keras", "torch", "onnx"]
#: the Keras flavour that has no function computing an activation (to_native refuses it there)
LACKING = {"hard_silu": {"tf_keras"}, "hard_sigmoid_keras3": {"tf_keras"}, "hard_sigmoid_keras2": {"keras"}}


def keras_module(flavour: str):
    need(flavour, "tensorflow")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    keras = importlib.import_module(flavour)
    if flavour == "keras" and keras.backend.backend() != "tensorflow":
        pytest.skip(f"these tests use the TensorFlow backend; KERAS_BACKEND is {keras.backend.backend()!r}")
    return keras


@pytest.mark.parametrize("flavour, name", KERAS_NAMES, ids=[f"{f}-{n}" for f, n in KERAS_NAMES])
def test_keras_name_computes_its_canonical_function(flavour, name):
    """The framework's own function (on TensorFlow tensors: tf_keras's hard_sigmoid refuses numpy) against the table."""
    import tensorflow as tf

    function = keras_module(flavour).activations.get(name)
    got = np.asarray(function(tf.constant(POINTS, tf.float64)))
    canonical = activations.KERAS_NAMES[flavour][name]
    # float64 throughout; tf.nn.leaky_relu keeps its slope as float32 (0.2 + 3e-9)
    np.testing.assert_allclose(got, activations.apply(canonical, POINTS), rtol=1e-7, atol=1e-8)
    others = [n for n in activations.ACTIVATIONS if n != canonical and np.allclose(got, activations.apply(n, POINTS))]
    assert others == []


def test_tf_keras_lacks_the_keras3_hard_functions():
    """Why to_keras(..., 'tf_keras') refuses hard_silu and hard_sigmoid_keras3: tf_keras has no such function."""
    keras = keras_module("tf_keras")
    with pytest.raises(ValueError, match="Unknown activation function 'hard_silu'"):
        keras.activations.get("hard_silu")
    assert "hard_sigmoid_keras3" not in activations.KERAS_NAMES["tf_keras"].values()


def _keras_call(layer, x_ncl: np.ndarray, data_format: str) -> np.ndarray:
    """The layer's own output for an (N, C, L) input, as (N, O, L_out); channels_first needs XLA on CPU."""
    if data_format == "channels_last":
        return np.asarray(layer(x_ncl.transpose(0, 2, 1))).transpose(0, 2, 1)
    import tensorflow as tf

    return np.asarray(tf.function(layer, jit_compile=True)(x_ncl))


KERAS_CASES = [
    (flavour, data_format, name)
    for flavour, data_format in (("keras", "channels_last"), ("keras", "channels_first"), ("tf_keras", "channels_last"))
    for name in activations.KERAS_NAMES[flavour]
]


@pytest.mark.parametrize("flavour, data_format, name", KERAS_CASES, ids=["-".join(c) for c in KERAS_CASES])
def test_keras_layer_with_activation(flavour, data_format, name, rng):
    """A real Keras layer with a fused activation: read by name, computed by Keras as the reference says, verified."""
    keras = keras_module(flavour)
    layer = keras.layers.Conv1D(5, 5, strides=2, padding="same", activation=name, data_format=data_format)  # K == filters
    layer.build((None, None, 3) if data_format == "channels_last" else (None, 3, None))
    layer.set_weights([rng.standard_normal(w.shape).astype("float32") for w in layer.get_weights()])
    conv = layoutconv.from_keras(layer)
    assert conv.activation == activations.KERAS_NAMES[flavour][name]
    x = (2 * rng.standard_normal((2, 3, 13))).astype("float32")  # odd length; pre-activations from about -20 to 20
    result = compare(conv, x, _keras_call(layer, x, data_format), flavour)  # Keras is the oracle here
    assert result.passed, result
    report = layoutconv.verify(conv, frameworks=VERIFIED_FRAMEWORKS, x=x)
    assert report.passed, str(report)
    unsupported = {r.framework for r in report.results if r.status == "unsupported"}
    assert unsupported == LACKING.get(conv.activation, set()), str(report)


@pytest.mark.parametrize("name", ["relu", "gelu", "hard_sigmoid_keras2", "swish"])
def test_float16_layer_with_activation_verifies(name, rng):
    kernel = rng.standard_normal((4, 4, 4)).astype("float16")  # K == I == O
    conv = Conv1D(kernel, rng.standard_normal(4).astype("float16"), padding="same_upper", activation=name)
    report = layoutconv.verify(conv, frameworks=VERIFIED_FRAMEWORKS)
    passing = {r.framework for r in report.results if r.status == "pass"}
    assert report.passed and passing == set(VERIFIED_FRAMEWORKS) - LACKING.get(name, set()), str(report)


@pytest.mark.parametrize("name, flavour", [("hard_sigmoid_keras2", "keras"), ("hard_silu", "tf_keras")])
def test_keras_flavour_lacking_an_activation_refuses_it(name, flavour, rng):
    keras_module(flavour)
    conv = Conv1D(rng.standard_normal((3, 2, 3)).astype("float32"), activation=name)
    other = {"keras": "tf_keras", "tf_keras": "keras"}[flavour]
    words = f"{flavour} has no activation computing {name}.*Convert to {other}, torch, onnx"
    with pytest.raises(layoutconv.UnsupportedError, match=words):
        layoutconv.to_keras(conv, flavor=flavour)
