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
``s t + d k - p_b``.  There is no kernel flip.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .conv import Conv1D
from .errors import ShapeError, UnsupportedError, fail

_NUMPY_PAD_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def pad1d(x: np.ndarray, begin: int, end: int, mode: str) -> np.ndarray:
    """Pad the last axis of ``x`` as PyTorch's ``padding_mode`` does, refusing what PyTorch refuses."""
    length = x.shape[-1]
    if mode == "reflect" and max(begin, end) >= length:
        raise fail(
            UnsupportedError,
            "Reflect padding is larger than the input allows",
            f"pads < input length ({length})",
            f"pads ({begin}, {end})",
            "Use a longer input or another padding mode.",
        )
    if mode == "circular" and max(begin, end) > length:
        raise fail(
            UnsupportedError,
            "Circular padding wraps around more than once",
            f"pads <= input length ({length})",
            f"pads ({begin}, {end})",
            "Use a longer input or another padding mode.",
        )
    if begin == 0 and end == 0:
        return x
    widths = [(0, 0)] * (x.ndim - 1) + [(begin, end)]
    return np.pad(x, widths, mode=_NUMPY_PAD_MODE[mode])


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
    x = np.asarray(x)
    if x.ndim != 3 or x.shape[1] != conv.in_channels:
        raise fail(
            ShapeError,
            "Input does not fit the convolution",
            f"shape (N, {conv.in_channels}, L): batch, channels, length (channels first)",
            f"shape {tuple(x.shape)}",
            "Transpose a channels-last (N, L, C) input with x.transpose(0, 2, 1).",
        )
    n, c, length = x.shape
    (begin, end), = conv.pads(length)
    (span,), (s,), (d,) = conv.receptive_field, conv.stride, conv.dilation
    if length + begin + end < span:
        raise fail(
            ShapeError,
            "Input is shorter than the kernel's receptive field",
            f"padded length >= dilation * (kernel_size - 1) + 1 = {span}",
            f"length {length} with pads ({begin}, {end})",
        )
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
    return y
