"""Which convention turned ``x`` into ``y`` for a 2-D convolution: layout, flip, data formats, stride, dilation,
padding and activation, searched like the 1-D :func:`layoutconv.diagnose` does.

A 4-d kernel is read as PyTorch/ONNX/Keras 1 ``'th'`` (``O I H W``) or Keras 2/3 and
Keras 1 ``'tf'`` (``H W I O``), unflipped or flipped on both spatial axes (Theano);
``x`` and ``y`` as channels first or last.  Only readings whose output shape is
``y``'s are evaluated; each reading's linear output is computed once and every
activation applied to it.  The tolerance is :mod:`layoutconv.tolerance`'s.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import activations, reference
from .conv import Conv
from .conventions import Convention
from .errors import ShapeError, fail
from .tolerance import ASSERT_CLOSE_DEFAULTS, through_activation, tolerance

#: (name, layout) of the 2-D kernel readings tried
LAYOUTS_2D = (("torch / onnx / keras1 'th'", "O I H W"), ("keras / keras1 'tf'", "H W I O"))
PADDINGS_2D = ("valid", "same_upper", "same_lower", "theano-same")
FORMATS = ("channels_first", "channels_last")
STRIDES_2D = (1, 2, 3)
DILATIONS_2D = (1, 2)


@dataclass(frozen=True)
class Reading2D:
    """One way of reading the weights, and how close it came to ``y`` (error / tolerance, worst element)."""

    layout_name: str
    layout: str
    flipped: bool
    x_format: str
    y_format: str
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: Any
    activation: str
    error_over_tolerance: float
    conv: Conv

    @property
    def matched(self) -> bool:
        return self.error_over_tolerance <= 1.0

    def describe(self) -> str:
        flip = ", flipped (Theano)" if self.flipped else ""
        return (
            f"kernel {self.layout} ({self.layout_name}){flip}, x {self.x_format}, y {self.y_format}, "
            f"stride {self.stride}, dilation {self.dilation}, padding {self.padding!r}, activation {self.activation}: "
            f"err/tol {self.error_over_tolerance:.3g}"
        )


@dataclass(frozen=True)
class Diagnosis2D:
    """Every reading that reproduces ``y``, and the closest ones that do not."""

    matches: tuple[Reading2D, ...]
    near_misses: tuple[Reading2D, ...]
    tried: int

    @property
    def conv(self) -> Conv | None:
        return self.matches[0].conv if self.matches else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "matches": [m.describe() for m in self.matches],
            "near_misses": [m.describe() for m in self.near_misses],
            "tried": self.tried,
            "conv": None if self.conv is None else repr(self.conv),
        }

    def __str__(self) -> str:
        if self.matches:
            lines = [f"{len(self.matches)} of {self.tried} readings reproduce y:"]
            lines += [f"  {m.describe()}" for m in self.matches]
            lines.append(f"  -> {self.conv!r}")
        else:
            lines = [f"No reading reproduces y ({self.tried} tried, with every activation in layoutconv.activations). Closest:"]
            lines += [f"  {m.describe()}" for m in self.near_misses]
        return "\n".join(lines)


def _channels_first(a: np.ndarray, fmt: str) -> np.ndarray:
    return a if fmt == "channels_first" else np.moveaxis(a, -1, 1)


def _padding(rule: str, kernel_shape: tuple[int, ...], dilation: tuple[int, ...]) -> Any:
    if rule != "theano-same":
        return rule
    spans = [d * (k - 1) + 1 for k, d in zip(kernel_shape, dilation)]
    return tuple((r // 2, (r - 1) // 2) for r in spans)


def diagnose_2d(
    kernel: np.ndarray,
    bias: np.ndarray | None,
    x: np.ndarray,
    y: np.ndarray,
    *,
    stride: Any = None,
    dilation: Any = None,
    groups: int | None = None,
    top: int = 3,
) -> Diagnosis2D:
    """The 2-D search (see the module documentation); called by :func:`layoutconv.diagnose` for 4-d ``x`` and ``y``."""
    if kernel.ndim != 4 or x.ndim != 4 or y.ndim != 4 or x.shape[0] != y.shape[0]:
        raise fail(
            ShapeError,
            "2-D diagnose needs a 4-d kernel and 4-d x and y with one batch size",
            "kernel (O, I, H, W) or (H, W, I, O); x and y (N, C, H, W) or (N, H, W, C)",
            f"kernel {tuple(kernel.shape)}, x {tuple(x.shape)}, y {tuple(y.shape)}",
        )
    pairs = lambda v, grid: [(v, v) if isinstance(v, int) else tuple(v)] if v is not None else list(itertools.product(grid, grid))  # noqa: E731
    strides, dilations = pairs(stride, STRIDES_2D), pairs(dilation, DILATIONS_2D)
    worst = max((a.dtype.name for a in (kernel, x, y) + (() if bias is None else (bias,))), key=lambda n: ASSERT_CLOSE_DEFAULTS[n][0])
    found: list[Reading2D] = []
    tried = 0
    for (name, layout), flipped, x_format, y_format in itertools.product(LAYOUTS_2D, (False, True), FORMATS, FORMATS):
        convention = Convention("candidate", layout, flipped, x_format)
        canon = convention.to_canonical_kernel(kernel)
        o, i = canon.shape[:2]
        xc, yc = _channels_first(x, x_format), _channels_first(y, y_format)
        c = xc.shape[1]
        if yc.shape[1] != o or c % i or (bias is not None and bias.shape != (o,)):
            continue
        g = c // i
        if (groups is not None and g != groups) or o % g:
            continue
        for s, d, rule in itertools.product(strides, dilations, PADDINGS_2D):
            try:
                conv = Conv(canon.astype(worst), None if bias is None else bias.astype(worst), stride=s, dilation=d,
                            groups=g, padding=_padding(rule, canon.shape[2:], d))
                if conv.output_shape(xc.shape[2:]) != tuple(yc.shape[2:]):
                    continue
                xw = xc.astype(worst)
                linear = reference.forward(conv, xw)
                tol, rtol, _ = tolerance(conv, xw, linear)
            except (ShapeError, ValueError):
                continue
            target = yc.astype(np.float64)
            for act in activations.ACTIVATIONS:
                tried += 1
                out = activations.apply(act, linear)
                bound = through_activation(tol, act, out, rtol)
                with np.errstate(invalid="ignore"):
                    ratio = float(np.max(np.abs(out - target) / bound)) if out.size else 0.0
                found.append(Reading2D(name, layout, flipped, x_format, y_format, tuple(s), tuple(d),
                                       conv.padding, act, ratio, conv.replace(activation=act)))
    if not found:
        raise fail(
            ShapeError,
            "No reading of the kernel turns x's shape into y's",
            f"a layout ({', '.join(layout for _, layout in LAYOUTS_2D)}), data formats, strides {STRIDES_2D}, dilations "
            f"{DILATIONS_2D} and paddings {PADDINGS_2D} that give y's shape",
            f"kernel {tuple(kernel.shape)}, x {tuple(x.shape)}, y {tuple(y.shape)}",
            "Pass stride= and dilation= if the layer used larger ones.",
        )
    matches = tuple(r for r in found if r.matched)
    near = tuple(sorted((r for r in found if not r.matched), key=lambda r: r.error_over_tolerance)[: max(top, 0)])
    return Diagnosis2D(matches, near, tried)
