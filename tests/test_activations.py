"""Fused activations: each numpy definition against its formula written here, element by element,
and the record and reference pass carrying them."""

from __future__ import annotations

import math

import numpy as np
import pytest

import layoutconv
from layoutconv import ConfigError, Conv1D, activations, reference

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
