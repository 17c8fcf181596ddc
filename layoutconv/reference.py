r"""The numpy reference forward pass: the executable definition of every record (:func:`forward`).

Convolution, 1-D (the N-d case applies the same sum over every spatial axis:
``y[n, f, *t] = b[f] + sum_c sum_{*k} W[f, c, *k] * x~[n, g(f) C/g + c, *(s t + d k - p_b)]``).
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

import itertools
from typing import Any, Callable, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import activations
from .chain import Chain
from .conv import Conv, Conv1D
from .transpose import ConvTranspose
from .errors import ConfigError, ShapeError, UnsupportedError, fail

#: The most elements a padded input may have (2**28: 2 GiB in float64), checked before anything is allocated.
MAX_ELEMENTS = 1 << 28

#: padding_mode -> numpy.pad's mode (PyTorch's names on the left)
NUMPY_PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


_AXES = {1: "L", 2: "H, W", 3: "D, H, W"}


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
    return pad(x, ((begin, end),), mode)


def pad(x: np.ndarray, pads: Sequence[tuple[int, int]], mode: str) -> np.ndarray:
    """Pad the last ``len(pads)`` axes of ``x`` as PyTorch's ``padding_mode`` does, refusing what PyTorch refuses."""
    rank = len(pads)
    for size, (begin, end) in zip(x.shape[-rank:], pads):
        _check_mode_limits(size, begin, end, mode)
    if not any(b or e for b, e in pads):
        return x
    widths = [(0, 0)] * (x.ndim - rank) + [tuple(p) for p in pads]
    return np.pad(x, widths, mode=NUMPY_PAD_MODES[mode])


def check_input(conv: Conv, x: Any) -> tuple[np.ndarray, tuple[tuple[int, int], ...]]:
    """Check that ``x`` is an ``(N, C, *spatial)`` input ``conv`` can run on; return it as an array with its pads.

    The one input check every runner shares (the reference, ``verify`` and the
    adapters' ``run``), so a bad input gives the same error everywhere.
    """
    x = np.asarray(x)
    rank = conv.spatial_rank
    if x.ndim != 2 + rank or x.shape[1] != conv.in_channels:
        if x.ndim == 1 + rank:
            hint = "Add a batch axis with x[None]."
        else:
            order = (0, rank + 1, *range(1, rank + 1))
            hint = f"Transpose a channels-last input with x.transpose{order}."
        raise fail(
            ShapeError,
            "Input does not fit the convolution",
            f"shape (N, {conv.in_channels}, {_AXES[rank]}): batch, channels, {'length' if rank == 1 else 'spatial axes'} (channels first)",
            f"shape {tuple(x.shape)}",
            hint,
        )
    spatial = tuple(int(n) for n in x.shape[2:])
    pads = conv.pads(spatial)
    for axis, (size, (begin, end), span) in enumerate(zip(spatial, pads, conv.receptive_field)):
        if size + begin + end < span:
            where = "length" if rank == 1 else f"size {size} on spatial axis {axis}"
            raise fail(
                ShapeError,
                "Input is shorter than the kernel's receptive field",
                f"padded {'length' if rank == 1 else 'size'} >= dilation * (kernel_size - 1) + 1 = {span}",
                f"{where if rank > 1 else 'length'} {size if rank == 1 else ''}".replace("  ", " ").strip()
                + f" with pads ({begin}, {end})",
            )
        _check_mode_limits(size, begin, end, conv.padding_mode)
    check_size(x.shape[:2], int(np.prod([n + b + e for n, (b, e) in zip(spatial, pads)], dtype=np.int64)))
    return x, pads


def check_size(leading: tuple[int, ...], padded_size: int) -> None:
    """Refuse an input whose padded copy would exceed :data:`MAX_ELEMENTS`, before allocating it."""
    elements = int(np.prod(leading, dtype=np.int64)) * int(padded_size)
    if elements > MAX_ELEMENTS:
        raise fail(
            ShapeError,
            "The padded input is too large for the reference pass",
            f"at most {MAX_ELEMENTS} elements (batch x channels x padded spatial size)",
            f"{elements} elements (leading axes {tuple(leading)}, padded spatial size {padded_size})",
            "Use a smaller batch or a shorter input.",
        )


def forward(record: Any, x: Any, *, dtype: Any = np.float64) -> np.ndarray:
    """Apply a record to ``x`` (channels first: ``(N, C, *spatial)``) in plain numpy; the definition of what it means.

    Inputs and weights are converted to ``dtype`` (float64 by default) before
    any arithmetic, so the result carries no rounding of a framework under
    test.  Vectorised: one padded copy, one strided window view, one ``einsum``.

    >>> import numpy as np
    >>> from layoutconv import Conv
    >>> conv = Conv(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]))          # a 2x2 kernel, one channel
    >>> forward(conv, np.arange(9.0).reshape(1, 1, 3, 3))
    array([[[[27., 37.],
             [57., 67.]]]])
    """
    for cls in type(record).__mro__:
        if cls in _FORWARD:
            return _FORWARD[cls](record, x, dtype)
    raise fail(
        ConfigError,
        "reference.forward has no definition for this object",
        f"one of {sorted(c.__name__ for c in _FORWARD)}",
        f"{type(record).__name__}",
    )


def _conv_forward(conv: Conv, x: Any, dtype: Any) -> np.ndarray:
    x, pads = check_input(conv, x)
    n, c = x.shape[:2]
    rank = conv.spatial_rank
    axes = tuple(range(2, 2 + rank))
    xp = pad(x.astype(dtype, copy=False), pads, conv.padding_mode)
    # windows[n, c, *t, *k] = xp[n, c, *(s * t + d * k)]
    windows = sliding_window_view(xp, conv.receptive_field, axis=axes)
    pick = (slice(None),) * 2 + tuple(slice(None, None, s) for s in conv.stride)
    pick += tuple(slice(None, None, d) for d in conv.dilation)
    windows = windows[pick]
    out = windows.shape[2 : 2 + rank]
    g, o = conv.groups, conv.out_channels
    t, k = "pqr"[:rank], "uvw"[:rank]
    kernel = conv.kernel.astype(dtype)
    if g == 1:
        # no group axis: a size-1 axis made einsum copy the whole window view before the
        # matrix product (twice as slow, docs/benchmarks.md)
        y = np.einsum(f"nc{t}{k},oc{k}->no{t}", windows, kernel, optimize=True)
    else:
        windows = windows.reshape(n, g, c // g, *out, *conv.kernel_shape)
        w = kernel.reshape(g, o // g, c // g, *conv.kernel_shape)
        # BLAS pays off when each group contracts over several channels; for depthwise-like
        # groups (one channel in, one out) numpy's own loop is about 4x faster (docs/benchmarks.md).
        blas = (c // g) * (o // g) > 1
        y = np.einsum(f"ngc{t}{k},goc{k}->ngo{t}", windows, w, optimize=blas).reshape(n, o, *out)
    if conv.bias is not None:
        y = y + conv.bias.astype(dtype).reshape((1, o) + (1,) * rank)
    return activations.apply(conv.activation, y)


def _transpose_forward(t: ConvTranspose, x: Any, dtype: Any) -> np.ndarray:
    """Scatter every kernel tap: ``y[.., s t + d k - p_b] += x[.., t] * W[.., k]`` (a loop over taps only)."""
    x = np.asarray(x)
    rank = t.spatial_rank
    if x.ndim != 2 + rank or x.shape[1] != t.in_channels:
        raise fail(
            ShapeError,
            "Input does not fit the transposed convolution",
            f"shape (N, {t.in_channels}, {_AXES[rank]}) (channels first)",
            f"shape {tuple(x.shape)}",
        )
    n, c, *size = x.shape
    pads = t.pads(tuple(size))
    full = [s * (m - 1) + r + a for m, s, r, a in zip(size, t.stride, t.receptive_field, t.output_padding)]
    check_size((n, t.out_channels), int(np.prod(full, dtype=np.int64)))
    g, o = t.groups, t.out_channels
    xg = x.astype(dtype, copy=False).reshape(n, g, c // g, *size)
    w = t.kernel.astype(dtype).reshape(g, c // g, o // g, *t.kernel_shape)
    y = np.zeros((n, g, o // g, *full), dtype=dtype)
    letters, taps = "pqr"[:rank], "uvw"[:rank]
    # one matrix product for every tap at once (BLAS, threaded), then a strided add per tap:
    # ten times faster than one small einsum per tap (docs/benchmarks.md)
    parts = np.einsum(f"ngi{letters},gio{taps}->ngo{taps}{letters}", xg, w, optimize=True)
    for tap in itertools.product(*(range(k) for k in t.kernel_shape)):
        where = tuple(slice(d * k, d * k + s * (m - 1) + 1, s) for d, k, s, m in zip(t.dilation, tap, t.stride, size))
        y[(slice(None),) * 3 + where] += parts[(slice(None),) * 3 + tap]
    y = y.reshape(n, o, *full)
    grow = [(0, max(-e, 0)) for _, e in pads]  # a negative end pad appends positions no tap reaches
    if any(g for _, g in grow):
        y = np.pad(y, [(0, 0), (0, 0), *grow])
    crop = tuple(slice(b, f + g - max(e, 0)) for (b, e), f, (_, g) in zip(pads, full, grow))
    y = y[(slice(None), slice(None)) + crop]
    if t.bias is not None:
        y = y + t.bias.astype(dtype).reshape((1, o) + (1,) * rank)
    return activations.apply(t.activation, y)


def _chain_forward(chain: Chain, x: Any, dtype: Any) -> np.ndarray:
    for layer in chain.layers:
        x = forward(layer, x, dtype=dtype)
    return x


_FORWARD: dict[type, Callable[[Any, Any, Any], np.ndarray]] = {
    Conv: _conv_forward,
    ConvTranspose: _transpose_forward,
    Chain: _chain_forward,
}

from . import recurrent as _recurrent  # noqa: E402  (recurrent layers: SimpleRNN, LSTM, GRU, Bidirectional)

_FORWARD.update(_recurrent.FORWARD)


def conv1d(conv: Conv1D, x: Any, *, dtype: Any = np.float64) -> np.ndarray:
    """Apply a :class:`Conv1D` to ``x`` of shape ``(N, C, L)``; return ``(N, O, L_out)`` (see :func:`forward`).

    >>> import numpy as np
    >>> from layoutconv import Conv1D
    >>> conv = Conv1D(np.array([[[1.0, 2.0]]]), np.array([0.5]))
    >>> conv1d(conv, np.array([[[1.0, 10.0, 100.0]]]))
    array([[[ 21.5, 210.5]]])
    """
    if not isinstance(conv, Conv1D):
        raise fail(ShapeError, "reference.conv1d needs a Conv1D", "a layoutconv.Conv1D (reference.forward takes any rank)", f"{type(conv).__name__}")
    return forward(conv, x, dtype=dtype)
