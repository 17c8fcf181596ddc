r"""The numpy reference forward pass: the executable definition of a :class:`~layoutconv.Conv1D`.

For an input ``x`` of shape ``(N, C, L)``, a kernel ``W`` of shape
``(O, C // g, K)``, stride ``s``, dilation ``d``, groups ``g`` and pads
``(p_b, p_e)`` resolved for ``L`` (see :meth:`Conv1D.pads`), the output is

.. math::

    y[n, f, t] = b[f] + \sum_{c=0}^{C/g-1} \sum_{k=0}^{K-1}
                 W[f, c, k] \cdot \tilde x[n,\ \gamma(f) \cdot C/g + c,\ s t + d k - p_b]

with ``gamma(f) = f // (O / g)`` the group of filter ``f`` and ``x~`` the
input extended beyond ``[0, L)`` by the padding mode (zeros, reflect,
replicate or circular).  ``t`` runs over ``0 .. floor((L + p_b + p_e - d (K - 1) - 1) / s)``.
This is a cross-correlation: tap ``k`` of the kernel meets input position
``s t + d k - p_b``.  There is no kernel flip.  A fused activation
(:mod:`layoutconv.activations`) is then applied elementwise to ``y``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import activations
from .conv import Conv1D
from .errors import ShapeError, UnsupportedError, fail

#: The most elements a padded input may have (2**28: 2 GiB in float64), checked before anything is allocated.
MAX_ELEMENTS = 1 << 28

_NUMPY_PAD_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _check_mode_limits(length: int, begin: int, end: int, mode: str) -> None:
    """Refuse pads that PyTorch refuses: reflect needs pads < length, circular pads <= length."""
    limit = {"reflect": length - 1, "circular": length}.get(mode)
    if limit is not None and max(begin, end) > limit:
        raise fail(
            UnsupportedError,
            f"{mode.capitalize()} padding is larger than the input allows",
            f"pads <= {limit} for an input of length {length}",
            f"pads ({begin}, {end})",
            "Use a longer input or another padding mode.",
        )


def pad1d(x: np.ndarray, begin: int, end: int, mode: str) -> np.ndarray:
    """Pad the last axis of ``x`` as PyTorch's ``padding_mode`` does, refusing what PyTorch refuses."""
    _check_mode_limits(x.shape[-1], begin, end, mode)
    if begin == 0 and end == 0:
        return x
    widths = [(0, 0)] * (x.ndim - 1) + [(begin, end)]
    return np.pad(x, widths, mode=_NUMPY_PAD_MODE[mode])


def check_input(conv: Conv1D, x: Any) -> tuple[np.ndarray, tuple[int, int]]:
    """Check that ``x`` is an ``(N, C, L)`` input ``conv`` can run on; return it as an array with its pads.

    The one input check every runner shares (the reference, ``verify`` and the
    adapters' ``run``), so a bad input gives the same error everywhere.
    """
    x = np.asarray(x)
    if x.ndim != 3 or x.shape[1] != conv.in_channels:
        hint = (
            "Add a batch axis with x[None]."
            if x.ndim == 2
            else "Transpose a channels-last (N, L, C) input with x.transpose(0, 2, 1)."
        )
        raise fail(
            ShapeError,
            "Input does not fit the convolution",
            f"shape (N, {conv.in_channels}, L): batch, channels, length (channels first)",
            f"shape {tuple(x.shape)}",
            hint,
        )
    length = x.shape[-1]
    ((begin, end),) = conv.pads(length)
    (span,) = conv.receptive_field
    if length + begin + end < span:
        raise fail(
            ShapeError,
            "Input is shorter than the kernel's receptive field",
            f"padded length >= dilation * (kernel_size - 1) + 1 = {span}",
            f"length {length} with pads ({begin}, {end})",
        )
    _check_mode_limits(length, begin, end, conv.padding_mode)
    check_size(x.shape[:-1], length + begin + end)
    return x, (begin, end)


def check_size(leading: tuple[int, ...], padded_length: int) -> None:
    """Refuse an input whose padded copy would exceed :data:`MAX_ELEMENTS`, before allocating it."""
    elements = int(np.prod(leading, dtype=np.int64)) * int(padded_length)
    if elements > MAX_ELEMENTS:
        raise fail(
            ShapeError,
            "The padded input is too large for the reference pass",
            f"at most {MAX_ELEMENTS} elements (batch x channels x padded length)",
            f"{elements} elements (leading axes {tuple(leading)}, padded length {padded_length})",
            "Use a smaller batch or a shorter input.",
        )


def conv1d(conv: Conv1D, x: Any, *, dtype: Any = np.float64) -> np.ndarray:
    """Apply ``conv`` to ``x`` of shape ``(N, C, L)`` in plain numpy; return ``(N, O, L_out)``.

    Inputs and weights are converted to ``dtype`` (float64 by default) before
    any arithmetic, so the result carries no rounding of the framework
    under test.  The computation is vectorised: one padded copy, one strided
    window view, one ``einsum``.

    >>> import numpy as np
    >>> from layoutconv import Conv1D
    >>> conv = Conv1D(np.array([[[1.0, 2.0]]]), np.array([0.5]))
    >>> conv1d(conv, np.array([[[1.0, 10.0, 100.0]]]))
    array([[[ 21.5, 210.5]]])
    """
    if not isinstance(conv, Conv1D):
        raise fail(ShapeError, "reference.conv1d needs a Conv1D", "a layoutconv.Conv1D", f"{type(conv).__name__}")
    x, (begin, end) = check_input(conv, x)
    n, c, _ = x.shape
    (span,), (s,), (d,) = conv.receptive_field, conv.stride, conv.dilation
    xp = pad1d(x.astype(dtype, copy=False), begin, end, conv.padding_mode)
    # windows[n, c, t, k] = xp[n, c, s*t + d*k]
    windows = sliding_window_view(xp, span, axis=-1)[:, :, ::s, ::d]
    g = conv.groups
    out_len = windows.shape[2]
    windows = windows.reshape(n, g, c // g, out_len, conv.kernel_size)
    w = conv.kernel.astype(dtype).reshape(g, conv.out_channels // g, c // g, conv.kernel_size)
    # BLAS pays off when each group contracts over several channels; for depthwise-like
    # groups (one channel in, one out) numpy's own loop is about 4x faster (docs/benchmarks.md).
    blas = (c // g) * (conv.out_channels // g) > 1
    y = np.einsum("ngctk,gock->ngot", windows, w, optimize=blas).reshape(n, conv.out_channels, out_len)
    if conv.bias is not None:
        y = y + conv.bias.astype(dtype)[None, :, None]
    return activations.apply(conv.activation, y)
