r"""Activations fused into a layer: names, numpy definitions, and the facts the tolerance needs.

Most trained Keras models fuse an activation into their convolutions
(``Conv1D(64, 10, activation="relu")``).  A :class:`~layoutconv.Conv1D` carries
one by name; :func:`apply` is its executable definition, used by the reference
pass.  Every name means exactly one function:

======================  ===========================================================
name                    definition (``x`` the convolution's output)
======================  ===========================================================
``linear``              ``x`` (no activation)
``relu``                ``max(x, 0)``
``relu6``               ``min(max(x, 0), 6)``
``leaky_relu``          ``x if x >= 0 else 0.2 x`` (Keras' default slope; PyTorch's is 0.01)
``sigmoid``             ``1 / (1 + exp(-x))``
``tanh``                ``tanh(x)``
``elu``                 ``x if x > 0 else exp(x) - 1`` (alpha 1)
``selu``                ``1.0507... * (x if x > 0 else 1.6732... * (exp(x) - 1))``
``gelu``                ``x * Phi(x) = x / 2 * (1 + erf(x / sqrt(2)))`` (exact, not the tanh form)
``swish``               ``x * sigmoid(x)`` (Keras ``swish`` and ``silu``, PyTorch ``SiLU``)
``softplus``            ``log(1 + exp(x))``
``softsign``            ``x / (1 + |x|)``
``mish``                ``x * tanh(softplus(x))``
``hard_sigmoid_keras2`` ``clip(0.2 x + 0.5, 0, 1)``: Keras 1 and 2 (tf.keras, tf_keras) ``hard_sigmoid``
``hard_sigmoid_keras3`` ``clip(x / 6 + 0.5, 0, 1) = relu6(x + 3) / 6``: Keras 3 ``hard_sigmoid``,
                        PyTorch ``Hardsigmoid``, ONNX ``HardSigmoid(alpha=1/6)``
``hard_silu``           ``x * hard_sigmoid_keras3(x)``: Keras 3 ``hard_silu`` / ``hard_swish``,
                        PyTorch ``Hardswish``
======================  ===========================================================

``hard_sigmoid`` on its own is refused: Keras 2 and Keras 3 compute different
functions under that name, and picking one silently is exactly the kind of
error layoutconv exists to prevent.  The Keras adapters and readers resolve it
from the Keras version they read.

>>> import numpy as np
>>> apply("relu6", np.array([-1.0, 3.0, 7.0]))
array([0., 3., 6.])
>>> canonical("silu")
'swish'
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import numpy as np

from .errors import ConfigError, fail

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp of a negative number only: no overflow warning for large |x|
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x).astype(x.dtype, copy=False)


class Activation(NamedTuple):
    """One activation: its canonical name, its numpy definition, and a bound on its slope.

    ``lipschitz`` bounds ``|f(a) - f(b)| / |a - b|``; the verification tolerance
    carries an error before the activation through it (see ``docs/verification.md``).
    """

    name: str
    function: Callable[[np.ndarray], np.ndarray]
    lipschitz: float
    formula: str
    in_place: Callable[[np.ndarray], np.ndarray] | None = None  # the same function writing into its argument


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation("linear", lambda x: x, 1.0, "x"),
        Activation("relu", lambda x: np.maximum(x, 0), 1.0, "max(x, 0)", lambda x: np.maximum(x, 0, out=x)),
        Activation("relu6", lambda x: np.clip(x, 0, 6), 1.0, "min(max(x, 0), 6)", lambda x: np.clip(x, 0, 6, out=x)),
        Activation("leaky_relu", lambda x: np.where(x >= 0, x, 0.2 * x), 1.0, "x if x >= 0 else 0.2 x"),
        Activation("sigmoid", _sigmoid, 0.25, "1 / (1 + exp(-x))"),
        Activation("tanh", np.tanh, 1.0, "tanh(x)"),
        Activation("elu", lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))), 1.0, "x if x > 0 else exp(x) - 1"),
        Activation(
            "selu",
            lambda x: _SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(np.minimum(x, 0))),
            _SELU_SCALE * _SELU_ALPHA,
            "1.0507 * (x if x > 0 else 1.6733 * (exp(x) - 1))",
        ),
        Activation("gelu", lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2))), 1.13, "x / 2 * (1 + erf(x / sqrt(2)))"),
        Activation("swish", lambda x: x * _sigmoid(x), 1.1, "x * sigmoid(x)"),
        Activation("softplus", _softplus, 1.0, "log(1 + exp(x))"),
        Activation("softsign", lambda x: x / (1 + np.abs(x)), 1.0, "x / (1 + |x|)"),
        Activation("mish", lambda x: x * np.tanh(_softplus(x)), 1.1, "x * tanh(softplus(x))"),
        Activation("hard_sigmoid_keras2", lambda x: np.clip(0.2 * x + 0.5, 0, 1), 0.2, "clip(0.2 x + 0.5, 0, 1)"),
        Activation("hard_sigmoid_keras3", lambda x: np.clip(x / 6 + 0.5, 0, 1), 1 / 6, "clip(x / 6 + 0.5, 0, 1)"),
        Activation("hard_silu", lambda x: x * np.clip(x / 6 + 0.5, 0, 1), 1.5, "x * clip(x / 6 + 0.5, 0, 1)"),
    )
}

#: other spellings -> canonical name (frameworks' names for the same function)
ALIASES: dict[str, str] = {
    "none": "linear",
    "identity": "linear",
    "silu": "swish",
    "hard_swish": "hard_silu",
    "hardswish": "hard_silu",
    "hardsigmoid": "hard_sigmoid_keras3",
}


#: Each Keras flavour's ``activation=`` names -> canonical name.  The first name of a
#: canonical activation is the one ``to_native`` writes; a canonical name a flavour
#: lacks cannot be written to it.  Established by running each framework on tensors
#: (Keras 3.15, tf_keras 2.21 on TensorFlow 2.21; tests/test_activations.py checks it):
#:
#: - Keras 3 ``hard_sigmoid`` is ``relu6(x + 3) / 6``; tf_keras ``hard_sigmoid`` is
#:   ``clip(0.2 x + 0.5, 0, 1)``.  Keras 3 ``swish`` resolves to ``silu``, ``hard_swish``
#:   to ``hard_silu``.  Both ``gelu`` default to the exact erf form (``approximate=False``).
#: - tf_keras has no ``relu6``, ``leaky_relu`` or ``silu`` of its own: the names fall
#:   through to ``tf.nn.relu6``, ``tf.nn.leaky_relu`` (``alpha=0.2``, stored as float32)
#:   and ``tf.nn.silu``, and ``get_config`` keeps the name.  It has no ``hard_silu`` and
#:   no Keras 3 ``hard_sigmoid`` at all (``ValueError: Unknown activation function``);
#:   Keras 3 has no function computing the Keras 2 ``hard_sigmoid``.
KERAS_NAMES: dict[str, dict[str, str]] = {
    "keras": {
        "linear": "linear",
        "relu": "relu",
        "relu6": "relu6",
        "leaky_relu": "leaky_relu",
        "sigmoid": "sigmoid",
        "tanh": "tanh",
        "elu": "elu",
        "selu": "selu",
        "gelu": "gelu",
        "silu": "swish",
        "swish": "swish",
        "softplus": "softplus",
        "softsign": "softsign",
        "mish": "mish",
        "hard_sigmoid": "hard_sigmoid_keras3",
        "hard_silu": "hard_silu",
        "hard_swish": "hard_silu",
    },
    "tf_keras": {
        "linear": "linear",
        "relu": "relu",
        "relu6": "relu6",
        "leaky_relu": "leaky_relu",
        "sigmoid": "sigmoid",
        "tanh": "tanh",
        "elu": "elu",
        "selu": "selu",
        "gelu": "gelu",
        "swish": "swish",
        "silu": "swish",
        "softplus": "softplus",
        "softsign": "softsign",
        "mish": "mish",
        "hard_sigmoid": "hard_sigmoid_keras2",
    },
}


def canonical(name: Any) -> str:
    """The canonical name of an activation (``None`` is ``"linear"``), or a ConfigError listing the known ones."""
    if name is None:
        return "linear"
    key = str(name).strip().lower() if isinstance(name, str) else None
    if key in ACTIVATIONS:
        return key
    if key in ALIASES:
        return ALIASES[key]
    if key == "hard_sigmoid":
        raise fail(
            ConfigError,
            "Activation 'hard_sigmoid' means two different functions",
            "'hard_sigmoid_keras2' (Keras 1 and 2: clip(0.2 x + 0.5, 0, 1)) or "
            "'hard_sigmoid_keras3' (Keras 3 and PyTorch: clip(x / 6 + 0.5, 0, 1))",
            "activation='hard_sigmoid'",
            "Name the one your model was trained with.",
        )
    raise fail(
        ConfigError,
        "Unknown activation",
        f"one of {sorted(ACTIVATIONS)} (or {sorted(ALIASES)})",
        f"activation={name!r}",
        "Activations that mix channels (softmax) are not elementwise; keep them as a separate layer.",
    )


def get(name: Any) -> Activation:
    """The :class:`Activation` called ``name`` (any accepted spelling)."""
    return ACTIVATIONS[canonical(name)]


def apply(name: Any, x: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """Apply the activation to ``x`` elementwise, in ``x``'s dtype (into ``x`` itself when ``overwrite`` allows)."""
    activation = get(name)
    if activation.name == "linear":
        return x
    if overwrite and activation.in_place is not None and x.flags.writeable:
        return activation.in_place(x)
    return np.asarray(activation.function(x), dtype=x.dtype)
