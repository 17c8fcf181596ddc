r"""The canonical transposed convolution, with ONNX ``ConvTranspose`` semantics, at spatial rank 1, 2 or 3.

A transposed convolution scatters each input element through the kernel:
tap ``k`` of input position ``t`` lands on output position ``s t + d k - p_b``.
With kernel ``W`` of shape ``(C_in, O / g, *kernel)`` (PyTorch's and ONNX's
layout, canonical ``I O ...``), stride ``s``, dilation ``d``, groups ``g``,
``output_padding`` ``a`` and pads ``(p_b, p_e)`` on each spatial axis::

    y[n, f, *u] = b[f] + sum over c in group(f), *t, *k with s t + d k - p_b = u of
                  x[n, c, *t] * W[c, f mod (O / g), *k]

    output size = s (L - 1) + a + d (K - 1) + 1 - p_b - p_e          (per axis)

``a`` adds output positions at the end (they receive no taps unless the pads
reach them).  The padding is explicit pairs, ``"valid"`` (no pads), or a
``same_*`` rule, which picks the pads so that the output size is ``L s`` (or
``output_shape`` when one is recorded, as ONNX's attribute of that name does):
``total = s (L - 1) + a + d (K - 1) + 1 - out``; ``same_upper`` puts the odd
extra pad at the end, ``same_lower`` at the beginning.  A negative total
(the target is larger than the full output) is clamped to 0 for ``L s``, and
for an ``output_shape`` becomes a negative end pad: up to ``s - 1`` positions
(bias only) appended at the end, as onnxruntime computes it.  ONNX's ``output_shape``
without ``auto_pad`` splits like ``same_lower`` (its operator definition:
``pads[start] = total - total / 2``).

>>> import numpy as np
>>> t = ConvTranspose(np.zeros((4, 6, 3)), stride=2, padding=((1, 1),), output_padding=1)
>>> t
ConvTranspose1D(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=(1, 1), output_padding=1, bias=False, dtype=float64)
>>> t.output_shape(10)       # 2 * 9 + 1 + 3 - 2
(20,)
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from . import activations, layouts
from .conv import MAX_EXTENT, KernelRecord, Padding, _normalise_padding, _positive_tuple
from .errors import ConfigError, ShapeError, fail
from .record import frozen_array, hand_over_copy

#: Padding rules of a transposed convolution (no ``causal``: ONNX ``ConvTranspose`` has none).
TRANSPOSE_PADDING_RULES = ("valid", "same_upper", "same_lower")


class ConvTranspose(KernelRecord):
    """A transposed convolution of spatial rank 1, 2 or 3 (see the module documentation for the formula).

    ``ConvTranspose(kernel, ...)`` returns a :class:`ConvTranspose1D`, ``2D`` or ``3D``
    chosen by the kernel's spatial axes.

    Parameters
    ----------
    kernel:
        ``(in_channels, out_channels // groups, *kernel)`` (PyTorch, ONNX), or another
        layout named by ``layout`` (e.g. ``"H W O I"`` for a Keras ``Conv2DTranspose``).
    bias:
        ``(out_channels,)`` or ``None``.
    stride, dilation, output_padding:
        One value per spatial axis or one integer for all; ``output_padding`` must
        be smaller than the stride or the dilation on its axis.
    groups:
        Divides ``in_channels``.
    padding:
        ``"valid"``, ``"same_upper"``, ``"same_lower"``, an integer, or one
        ``(begin, end)`` pair per axis.
    output_shape:
        ONNX's ``output_shape``: the output's spatial size, from which a ``same_*``
        padding computes its pads.  Without it a ``same_*`` rule aims at ``L * stride``.
    activation:
        A fused activation (:mod:`layoutconv.activations`).
    """

    __slots__ = ("kernel", "bias", "stride", "dilation", "groups", "padding", "output_padding", "output_shape_", "activation")
    AXES_TEXT = "in_channels, out_channels // groups, kernel"
    ARRAYS = ("kernel", "bias")
    FIELDS = ("stride", "dilation", "groups", "padding", "output_padding", "output_shape", "activation")

    kernel: np.ndarray
    bias: np.ndarray | None
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    padding: Padding
    output_padding: tuple[int, ...]
    activation: str

    def __init__(
        self,
        kernel: Any,
        bias: Any = None,
        *,
        stride: int | Sequence[int] = 1,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        padding: Any = "valid",
        output_padding: int | Sequence[int] = 0,
        output_shape: int | Sequence[int] | None = None,
        activation: str | None = "linear",
        layout: str | None = None,
    ) -> None:
        rank = self.spatial_rank
        kernel = np.asarray(kernel)
        if layout is not None:
            kernel = hand_over_copy(layouts.to_canonical(kernel, layout, transposed=True), kernel)  # its own copy: kept as it is
        if kernel.ndim != 2 + rank or any(n == 0 for n in kernel.shape):
            raise fail(
                ShapeError,
                f"Kernel does not fit a {rank}-d transposed convolution",
                f"{2 + rank} non-empty axes ({', '.join(layouts.canonical(rank, transposed=True).split())}): "
                "in_channels, out_channels // groups, kernel",
                f"shape {tuple(kernel.shape)}",
                "A Keras Conv*DTranspose kernel is (kernel..., filters, in_channels): pass layout='H W O I' (2-d).",
            )
        self._set("kernel", frozen_array("kernel", kernel))
        if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups <= 0 or kernel.shape[0] % groups:
            raise fail(
                ConfigError,
                "Invalid value for argument `groups`",
                f"a strictly positive divisor of in_channels (kernel axis 0, {kernel.shape[0]})",
                f"groups={groups!r}",
            )
        self._set("groups", int(groups))
        out_channels = kernel.shape[1] * int(groups)
        if bias is not None:
            bias = frozen_array("bias", bias)
            if bias.shape != (out_channels,):
                raise fail(
                    ShapeError, "Bias does not match the kernel", f"shape ({out_channels},), one value per output channel",
                    f"shape {tuple(bias.shape)}",
                )
        self._set("bias", bias)
        self._set("stride", _positive_tuple("stride", stride, rank))
        self._set("dilation", _positive_tuple("dilation", dilation, rank))
        if isinstance(padding, str) and padding.lower() not in TRANSPOSE_PADDING_RULES:
            raise fail(
                ConfigError,
                "Invalid value for argument `padding` of a transposed convolution",
                f"one of {TRANSPOSE_PADDING_RULES}, an integer, or (begin, end) pairs",
                f"padding={padding!r}",
            )
        self._set("padding", _normalise_padding(padding, rank))
        extra = _non_negative_tuple("output_padding", output_padding, rank)
        for a, s, d in zip(extra, self.stride, self.dilation):
            if a >= max(s, d):
                raise fail(
                    ConfigError,
                    "output_padding is too large",
                    "output_padding < stride or < dilation on each axis (it only selects computed positions)",
                    f"output_padding={extra} with stride {self.stride} and dilation {self.dilation}",
                )
        self._set("output_padding", extra)
        if output_shape is not None:
            output_shape = _positive_tuple("output_shape", output_shape, rank)
            if not (isinstance(self.padding, str) and self.padding.startswith("same")):
                raise fail(
                    ConfigError,
                    "output_shape needs a same_* padding rule to say how its pads are split",
                    "padding='same_upper' (ONNX auto_pad SAME_UPPER) or 'same_lower' (SAME_LOWER, and ONNX NOTSET)",
                    f"padding={self.padding!r}",
                )
        self._set("output_shape_", output_shape)
        self._set("activation", activations.canonical(activation))
        if any(r > MAX_EXTENT for r in self.receptive_field):
            raise fail(
                ConfigError, "The kernel's receptive field is absurdly wide", f"at most {MAX_EXTENT} per axis",
                f"{self.receptive_field}",
            )

    # -- sizes --------------------------------------------------------------
    def values(self) -> dict[str, Any]:
        # the ONNX attribute ``output_shape`` is kept as ``output_shape_``: ``output_shape()`` is the size formula
        out = {name: getattr(self, name) for name in self.ARRAYS + self.FIELDS if name != "output_shape"}
        out["output_shape"] = self.output_shape_
        return out

    @property
    def in_channels(self) -> int:
        return int(self.kernel.shape[0])

    @property
    def out_channels(self) -> int:
        return int(self.kernel.shape[1]) * self.groups

    @property
    def padding_depends_on_length(self) -> bool:
        return isinstance(self.padding, str) and self.padding.startswith("same")

    def pads(self, spatial: int | Sequence[int] | None = None) -> tuple[tuple[int, int], ...]:
        """``(begin, end)`` output crops per axis for an input of the given spatial size."""
        if isinstance(self.padding, tuple):
            return self.padding
        if self.padding == "valid":
            return ((0, 0),) * self.spatial_rank
        if spatial is None:
            raise fail(
                ConfigError, f"Padding {self.padding!r} of a transposed convolution depends on the input size",
                "the input's spatial size", "none", "Pass it, e.g. t.pads(10).",
            )
        sizes = self._sizes(spatial)
        targets = self.output_shape_ or tuple(n * s for n, s in zip(sizes, self.stride))
        out = []
        for n, s, r, a, target in zip(sizes, self.stride, self.receptive_field, self.output_padding, targets):
            total = s * (n - 1) + a + r - target
            if total < 0 and self.output_shape_ is None:
                total = 0  # a same_* rule cannot grow the output: onnxruntime keeps s (L - 1) + a + r (tests pin it)
            elif total < 0:
                if -total >= s:
                    raise fail(
                        ShapeError,
                        "The requested output is larger than the transposed convolution can produce",
                        f"an output size below {s * n + a + r} (at most stride - 1 positions past "
                        f"{s * (n - 1) + a + r}) for an input of size {n}",
                        f"output_shape {target}",
                    )
                out.append((0, total))  # ONNX output_shape past the full output: positions appended at the end
                continue
            small, big = total // 2, total - total // 2
            out.append((small, big) if self.padding == "same_upper" else (big, small))
        return tuple(out)

    def output_shape(self, spatial: int | Sequence[int]) -> tuple[int, ...]:
        """Output spatial size: ``s (L - 1) + a + d (K - 1) + 1 - p_b - p_e`` per axis."""
        sizes = self._sizes(spatial)
        return tuple(
            s * (n - 1) + a + r - b - e
            for n, s, a, r, (b, e) in zip(sizes, self.stride, self.output_padding, self.receptive_field, self.pads(sizes))
        )

    # -- comparison and display ---------------------------------------------
    def _own_hyperparameters(self) -> dict[str, Any]:
        return {"output_padding": self.output_padding, "output_shape": self.output_shape_}

    def equivalent(self, other: "ConvTranspose", spatial: int | Sequence[int] | None = None) -> bool:
        """Bit-identical weights and the same computation (pads compared for ``spatial`` when given)."""
        if type(self) is not type(other) or not self.same_weights(other):
            return False
        mine, theirs = self.hyperparameters(), other.hyperparameters()
        for h in (mine, theirs):
            h.pop("padding"), h.pop("output_shape")
        if mine != theirs:
            return False
        if spatial is None:
            return (self.padding, self.output_shape_) == (other.padding, other.output_shape_)
        return self.pads(spatial) == other.pads(spatial)

    def __repr__(self) -> str:
        one = (lambda v: v[0]) if self.spatial_rank == 1 else (lambda v: v)
        middle = [f"output_padding={one(self.output_padding)}"] if any(self.output_padding) else []
        if self.output_shape_ is not None:
            middle.append(f"output_shape={one(self.output_shape_)}")
        return self._describe(middle)


def _non_negative_tuple(name: str, value: Any, rank: int) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value),) * rank
    try:
        out = tuple(int(v) for v in value)
        ok = len(out) == rank and all(0 <= v <= MAX_EXTENT and not isinstance(v, bool) for v in value)
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise fail(
            ConfigError, f"Invalid value for argument `{name}`", f"a non-negative integer or a tuple of {rank} of them",
            f"{name}={value!r}",
        )
    return out


class ConvTranspose1D(ConvTranspose):
    """A 1-D transposed convolution: kernel ``(C_in, O // groups, K)``, input ``(N, C_in, L)``."""

    spatial_rank = 1
    __slots__ = ()


class ConvTranspose2D(ConvTranspose):
    """A 2-D transposed convolution: kernel ``(C_in, O // groups, H, W)``, input ``(N, C_in, H, W)``."""

    spatial_rank = 2
    __slots__ = ()


class ConvTranspose3D(ConvTranspose):
    """A 3-D transposed convolution: kernel ``(C_in, O // groups, D, H, W)``, input ``(N, C_in, D, H, W)``."""

    spatial_rank = 3
    __slots__ = ()


ConvTranspose.BY_RANK = {1: ConvTranspose1D, 2: ConvTranspose2D, 3: ConvTranspose3D}
