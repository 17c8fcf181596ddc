r"""The tolerance policy: how close a framework's output must be to the reference, elementwise.

Each output element ``y[n, f, t]`` is a sum of ``fan_in = (C / g) * K``
products plus a bias.  Its rounding error in a framework grows with the size
of those terms, not with the size of the (possibly cancelling) result, so the
tolerance is that of ``torch.testing.assert_close`` for the dtype, applied to
the *magnitude* of the terms::

    mag[n, f, t] = |b[f]| + sum_{c, k} |W[f, c, k]| * |x~[n, c, s t + d k - p_b]|
    tol[n, f, t] = atol(dtype) + rtol(dtype) * mag[n, f, t]

``mag`` is the reference pass applied to ``|W|``, ``|b|`` and ``|x|``; it is at
least ``|y|`` and typically ``sqrt(fan_in)`` times larger, which is how the
tolerance scales with fan-in.  A wrong permutation or a missing flip makes an
error of the order of ``|y|`` itself and fails by orders of magnitude.

With a fused activation ``a`` (slope at most ``L``, see
:mod:`layoutconv.activations`), an error ``e`` before the activation is at
most ``L * e`` after it, and the framework rounds the activation's own result
once more::

    tol_act[n, f, t] = L * tol[n, f, t] + rtol(dtype) * |a(y)[n, f, t]|

This module imports nothing but numpy and the reference pass; ``verify``,
``explain`` and ``diagnose`` all take the policy from here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import activations, reference

#: ``torch.testing.assert_close`` defaults: dtype -> (rtol, atol)
ASSERT_CLOSE_DEFAULTS: dict[str, tuple[float, float]] = {
    "float16": (1e-3, 1e-5),
    "bfloat16": (1.6e-2, 1e-5),
    "float32": (1.3e-6, 1e-5),
    "float64": (1e-7, 1e-7),
}


def rtol_atol(dtype: Any) -> tuple[float, float]:
    """``(rtol, atol)`` of ``torch.testing.assert_close`` for a float dtype (by dtype or name)."""
    return ASSERT_CLOSE_DEFAULTS[np.dtype(dtype).name if not isinstance(dtype, str) else dtype]


def tolerance(conv: Any, x: np.ndarray, expected: np.ndarray | None = None) -> tuple[np.ndarray, float, float]:
    """Elementwise tolerance for comparing a framework's output with the reference (see the module doc).

    ``expected`` (the reference output, activation applied) is computed when not given.
    Returns ``(tol, rtol, atol)``.  For a :class:`~layoutconv.chain.Chain` the tolerance
    of each layer is carried through the next: ``tol_next = L * (|W| * tol) + tol_own``.
    """
    from .chain import Chain
    from .recurrent import TOLERANCE

    own = next((TOLERANCE[cls] for cls in type(conv).__mro__ if cls in TOLERANCE), None)
    if own is not None:  # recurrent records carry their bound through time (layoutconv.recurrent.tolerance)
        return own(conv, x, expected)
    if isinstance(conv, Chain):
        return _chain_tolerance(conv, x)
    rtol, atol = ASSERT_CLOSE_DEFAULTS[conv.dtype.name]
    magnitude = conv.replace(
        kernel=np.abs(conv.kernel.astype(np.float64)),
        bias=None if conv.bias is None else np.abs(conv.bias.astype(np.float64)),
        activation="linear",
    )
    tol = atol + rtol * reference.forward(magnitude, np.abs(np.asarray(x, dtype=np.float64)))
    if conv.activation != "linear":
        if expected is None:
            expected = reference.forward(conv, x)
        tol = through_activation(tol, conv.activation, expected, rtol)
    return tol, rtol, atol


def through_activation(tol: np.ndarray, activation: str, activated: np.ndarray, rtol: float) -> np.ndarray:
    """``tol_act = L * tol + rtol * |a(y)|``: the tolerance after ``activation`` (see the module doc).

    ``tol`` is the tolerance before the activation and ``activated`` the reference
    output after it.  ``diagnose`` uses this to try many activations on one reading
    without recomputing the tolerance before the activation.
    """
    if activations.canonical(activation) == "linear":
        return tol
    return activations.get(activation).lipschitz * tol + rtol * np.abs(activated)


def _chain_tolerance(chain: Any, x: np.ndarray) -> tuple[np.ndarray, float, float]:
    tol = None
    for layer in chain.layers:
        own, rtol, atol = tolerance(layer, x)
        if tol is not None:
            carried = layer.replace(kernel=np.abs(layer.kernel.astype(np.float64)), bias=None, activation="linear")
            tol = activations.get(layer.activation).lipschitz * reference.forward(carried, tol) + own
        else:
            tol = own
        x = reference.forward(layer, x)
    assert tol is not None
    return tol, rtol, atol
