"""The canonical convolution: one immutable, validated description with ONNX ``Conv`` semantics.

Everything layoutconv reads is turned into a :class:`Conv1D`; everything it
writes is made from one.  The semantics are those of ONNX ``Conv`` (and
PyTorch ``nn.Conv1d``): a cross-correlation with kernel ``(O, I // groups, K)``.
:func:`layoutconv.reference.conv1d` is the executable definition.

Spatial hyperparameters are stored as tuples, one entry per spatial axis, so
that 2-D and 3-D convolutions can share this class's machinery; only the 1-D
class is public for now.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Sequence, Union

import numpy as np

from . import activations, layouts
from .errors import ConfigError, ShapeError, fail
from .record import Record, frozen_array, hand_over_copy

#: Padding rules that are not explicit ``(begin, end)`` pairs.
PADDING_RULES = ("valid", "same_upper", "same_lower", "causal")
#: How padded positions are filled (PyTorch's ``padding_mode`` names).
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")

Padding = Union[str, tuple[tuple[int, int], ...]]

#: The largest stride, dilation, pad or receptive field accepted on any axis (2**24).
#: No trained model comes near it; a file that declares more is corrupt or hostile,
#: and refusing it here keeps every later computation small (docs/security.md).
MAX_EXTENT = 1 << 24


def _positive_tuple(name: str, value: Any, rank: int) -> tuple[int, ...]:
    given = value
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value),) * rank
    try:
        out = tuple(int(v) for v in value)
        ok = len(out) == rank and all(
            v == orig and 0 < v <= MAX_EXTENT and not isinstance(orig, bool) for v, orig in zip(out, value)
        )
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise fail(
            ConfigError,
            f"Invalid value for argument `{name}`",
            f"a strictly positive integer up to {MAX_EXTENT} (or a tuple of {rank} of them)",
            f"{name}={given!r}",
        )
    return out


def _normalise_padding(padding: Any, rank: int) -> Padding:
    if isinstance(padding, str):
        rule = padding.lower()
        if rule in PADDING_RULES:
            return rule
        hint = ""
        if rule == "same":
            hint = (
                "'same' is ambiguous when the total padding is odd: use 'same_upper' "
                "(TensorFlow, Keras and PyTorch put the extra pad at the end) or 'same_lower'."
            )
        raise fail(
            ConfigError,
            "Invalid value for argument `padding`",
            f"one of {PADDING_RULES}, an integer, or (begin, end) pairs",
            f"padding={padding!r}",
            hint,
        )
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
        pairs: Any = ((int(padding), int(padding)),) * rank
    else:
        try:
            seq = list(padding)
            if rank == 1 and len(seq) == 2 and all(isinstance(v, (int, np.integer)) for v in seq):
                seq = [seq]
            pairs = tuple((int(b), int(e)) for b, e in seq)
        except (TypeError, ValueError, OverflowError):
            pairs = None
    if (
        pairs is None
        or len(pairs) != rank
        or any(isinstance(v, bool) or not 0 <= v <= MAX_EXTENT for pair in pairs for v in pair)
    ):
        raise fail(
            ConfigError,
            "Invalid value for argument `padding`",
            f"integers from 0 to {MAX_EXTENT}: p, (begin, end), or {rank} (begin, end) pairs, or one of {PADDING_RULES}",
            f"padding={padding!r}",
        )
    return pairs


class KernelRecord(Record):
    """What every convolution-like record shares: a kernel whose axes 2.. are spatial, chosen by rank.

    ``Family(kernel, ...)`` on the rank-generic class returns the subclass for the
    kernel's number of spatial axes (from ``layout`` when one is given), looked up
    in the family's ``BY_RANK``.
    """

    __slots__ = ()
    spatial_rank: ClassVar[int] = 0  # 0: pick the class from the kernel
    BY_RANK: ClassVar[dict[int, type]] = {}
    #: how the family's kernel axes read, for error messages
    AXES_TEXT: ClassVar[str] = ""

    def __new__(cls, kernel: Any = None, *args: Any, layout: str | None = None, **kwargs: Any) -> Any:
        if cls.spatial_rank:
            return super().__new__(cls)
        rank = layouts.parse(layout).rank if layout is not None else np.ndim(kernel) - 2
        if rank not in cls.BY_RANK:
            raise fail(
                ShapeError,
                f"Kernel has the wrong rank for a {cls.__name__}",
                f"3, 4 or 5 axes: ({cls.AXES_TEXT}...) for 1, 2 or 3 spatial axes",
                f"shape {tuple(np.shape(kernel))}" + (f" in layout {layout!r}" if layout else ""),
            )
        return super().__new__(cls.BY_RANK[rank])

    @property
    def dtype(self) -> np.dtype:
        return self.kernel.dtype  # type: ignore[attr-defined]

    @property
    def kernel_shape(self) -> tuple[int, ...]:
        return tuple(int(k) for k in self.kernel.shape[2:])  # type: ignore[attr-defined]

    @property
    def receptive_field(self) -> tuple[int, ...]:
        """Input (or, transposed, output) span of one kernel: ``dilation * (kernel - 1) + 1`` per axis."""
        return tuple(d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel_shape))  # type: ignore[attr-defined]

    def _sizes(self, spatial: int | Sequence[int]) -> tuple[int, ...]:
        """A spatial size as one integer per axis (an integer is used for every axis)."""
        if isinstance(spatial, (int, np.integer)):
            return (int(spatial),) * self.spatial_rank
        return tuple(int(n) for n in spatial)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KernelRecord):
            return NotImplemented
        return type(self) is type(other) and self.same_weights(other) and self.hyperparameters() == other.hyperparameters()

    __hash__ = None  # type: ignore[assignment]

    def _own_hyperparameters(self) -> dict[str, Any]:
        """The family's own hyperparameters (padding mode; output padding ...), for :meth:`hyperparameters`."""
        return {}

    def hyperparameters(self) -> dict[str, Any]:
        """Everything but the weights, as plain Python values."""
        return dict(
            in_channels=self.in_channels,  # type: ignore[attr-defined]
            out_channels=self.out_channels,  # type: ignore[attr-defined]
            kernel_shape=self.kernel_shape,
            stride=self.stride,  # type: ignore[attr-defined]
            dilation=self.dilation,  # type: ignore[attr-defined]
            groups=self.groups,  # type: ignore[attr-defined]
            padding=self.padding,  # type: ignore[attr-defined]
            **self._own_hyperparameters(),
            activation=self.activation,  # type: ignore[attr-defined]
            bias=self.bias is not None,  # type: ignore[attr-defined]
            dtype=self.dtype.name,
        )

    def _describe(self, middle: list[str]) -> str:
        """``Name(in_channels=.., out_channels=.., kernel_size=.., stride.., dilation.., groups.., <middle>, activation.., bias=.., dtype=..)``."""
        one = (lambda v: v[0]) if self.spatial_rank == 1 else (lambda v: v)
        parts = [
            f"in_channels={self.in_channels}",  # type: ignore[attr-defined]
            f"out_channels={self.out_channels}",  # type: ignore[attr-defined]
            f"kernel_size={one(self.kernel_shape)}",
        ]
        for name in ("stride", "dilation"):
            if any(v != 1 for v in getattr(self, name)):
                parts.append(f"{name}={one(getattr(self, name))}")
        if self.groups != 1:  # type: ignore[attr-defined]
            parts.append(f"groups={self.groups}")  # type: ignore[attr-defined]
        padding = self.padding  # type: ignore[attr-defined]
        parts.append(f"padding={one(padding) if isinstance(padding, tuple) else repr(padding)}")
        parts += middle
        if self.activation != "linear":  # type: ignore[attr-defined]
            parts.append(f"activation={self.activation!r}")  # type: ignore[attr-defined]
        parts.append(f"bias={self.bias is not None}")  # type: ignore[attr-defined]
        parts.append(f"dtype={self.dtype.name}")
        return f"{type(self).__name__}({', '.join(parts)})"


class Conv(KernelRecord):
    """A convolution (cross-correlation) of spatial rank 1, 2 or 3 with ONNX ``Conv`` semantics.

    ``Conv(kernel, ...)`` returns a :class:`Conv1D`, :class:`Conv2D` or
    :class:`Conv3D`, chosen by the kernel's number of spatial axes (from its
    ``layout`` when one is given).  See :class:`Conv1D` for the parameters; for
    rank 2 and 3 every spatial hyperparameter takes one value per axis (or one
    integer for all), and an explicit padding is one ``(begin, end)`` pair per axis.

    >>> import numpy as np
    >>> Conv(np.zeros((8, 4, 3, 5)), stride=(1, 2), padding="same_upper")
    Conv2D(in_channels=4, out_channels=8, kernel_size=(3, 5), stride=(1, 2), padding='same_upper', bias=False, dtype=float64)
    >>> Conv(np.zeros((3, 5, 4, 8)), layout="H W I O").kernel_shape   # a Keras Conv2D kernel
    (3, 5)
    """

    __slots__ = ("kernel", "bias", "stride", "dilation", "groups", "padding", "padding_mode", "activation")
    AXES_TEXT = "out_channels, in_channels // groups, kernel"
    ARRAYS = ("kernel", "bias")
    FIELDS = ("stride", "dilation", "groups", "padding", "padding_mode", "activation")

    kernel: np.ndarray
    bias: np.ndarray | None
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    padding: Padding
    padding_mode: str
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
        padding_mode: str = "zeros",
        activation: str | None = "linear",
        layout: str | None = None,
    ) -> None:
        rank = self.spatial_rank
        kernel = np.asarray(kernel)
        if layout is not None:
            if layouts.parse(layout).rank != rank:
                raise fail(
                    ShapeError,
                    f"Layout {layout!r} is not a {rank}-d kernel layout",
                    f"a layout with {rank} spatial axis name(s) ({' '.join(layouts.SPATIAL[rank])})",
                    f"{layouts.parse(layout).rank} spatial axes",
                )
            kernel = hand_over_copy(layouts.to_canonical(kernel, layout), kernel)  # a copy of its own: no second one
        if kernel.ndim != 2 + rank:
            raise fail(
                ShapeError,
                f"Kernel has the wrong rank for a {rank}-d convolution",
                f"{2 + rank} axes ({', '.join(layouts.canonical(rank).split())}): out_channels, in_channels // groups, kernel",
                f"shape {tuple(kernel.shape)}",
                "If the kernel comes from Keras, pass its layout, e.g. layout='K I O' (Keras 2/3 Conv1D), "
                "'K 1 I O' (Keras 1.1+ Convolution1D) or 'H W I O' (Keras Conv2D).",
            )
        if any(s == 0 for s in kernel.shape):
            raise fail(ShapeError, "Kernel has an empty axis", "every axis of size >= 1", f"shape {tuple(kernel.shape)}")
        set_ = self._set
        set_("kernel", frozen_array("kernel", kernel))
        if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups <= 0:
            raise fail(ConfigError, "Invalid value for argument `groups`", "a strictly positive integer", f"groups={groups!r}")
        out_channels = kernel.shape[0]
        if out_channels % groups:
            raise fail(
                ConfigError,
                "out_channels is not divisible by groups",
                f"out_channels (kernel axis 0) to be a multiple of groups={groups}",
                f"out_channels={out_channels}",
            )
        set_("groups", int(groups))
        if bias is not None:
            bias = frozen_array("bias", bias)
            if bias.shape != (out_channels,):
                raise fail(
                    ShapeError,
                    "Bias does not match the kernel",
                    f"shape ({out_channels},), one value per output channel",
                    f"shape {tuple(bias.shape)}",
                )
        set_("bias", bias)
        set_("stride", _positive_tuple("stride", stride, rank))
        set_("dilation", _positive_tuple("dilation", dilation, rank))
        set_("padding", _normalise_padding(padding, rank))
        if padding_mode not in PADDING_MODES:
            raise fail(
                ConfigError, "Invalid value for argument `padding_mode`", f"one of {PADDING_MODES}", f"padding_mode={padding_mode!r}"
            )
        set_("padding_mode", padding_mode)
        set_("activation", activations.canonical(activation))
        too_wide = [r for r in self.receptive_field if r > MAX_EXTENT]
        if too_wide:
            raise fail(
                ConfigError,
                "The kernel's receptive field is absurdly wide",
                f"dilation * (kernel_size - 1) + 1 <= {MAX_EXTENT} on every axis",
                f"receptive field {self.receptive_field} (kernel {self.kernel_shape}, dilation {self.dilation})",
                "The configuration is corrupt; check the file's dilation and kernel size.",
            )

    # -- derived sizes ----------------------------------------------------
    @property
    def out_channels(self) -> int:
        return int(self.kernel.shape[0])

    @property
    def in_channels(self) -> int:
        return int(self.kernel.shape[1]) * self.groups

    @property
    def fan_in(self) -> int:
        """Number of products summed into one output: ``(in_channels // groups) * prod(kernel)``."""
        return int(np.prod(self.kernel.shape[1:]))

    @property
    def padding_depends_on_length(self) -> bool:
        """True for ``same_*`` rules with a stride > 1: the pads change with the input length."""
        return self.padding in ("same_upper", "same_lower") and any(s > 1 for s in self.stride)

    def pads(self, spatial: int | Sequence[int] | None = None) -> tuple[tuple[int, int], ...]:
        """The ``(begin, end)`` zero-based pads per spatial axis for an input of the given size.

        ``spatial`` may be omitted when the padding does not depend on the input size.
        """
        if isinstance(self.padding, tuple):
            return self.padding
        rule = self.padding
        if rule == "valid":
            return ((0, 0),) * self.spatial_rank
        if rule == "causal":
            return tuple((r - 1, 0) for r in self.receptive_field)
        if spatial is None:
            if self.padding_depends_on_length:
                raise fail(
                    ConfigError,
                    f"Padding {rule!r} with stride {self.stride} depends on the input length",
                    "the input length",
                    "none",
                    "Pass the length, e.g. conv.pads(123).",
                )
            spatial = (1,) * self.spatial_rank  # with stride 1 every length gives the same pads
        spatial = self._sizes(spatial)
        out = []
        for size, s, r in zip(spatial, self.stride, self.receptive_field):
            total = max((math.ceil(size / s) - 1) * s + r - size, 0)
            small, big = total // 2, total - total // 2
            out.append((small, big) if rule == "same_upper" else (big, small))
        return tuple(out)

    def output_shape(self, spatial: int | Sequence[int]) -> tuple[int, ...]:
        """Output spatial size for an input of spatial size ``spatial`` (ONNX ``Conv`` formula)."""
        spatial = self._sizes(spatial)
        return tuple(
            (size + b + e - r) // s + 1
            for size, (b, e), r, s in zip(spatial, self.pads(spatial), self.receptive_field, self.stride)
        )

    def with_static_padding(self, spatial: int | Sequence[int]) -> "Conv":
        """The same convolution with its padding resolved to explicit pairs for this input size."""
        return self.replace(padding=self.pads(spatial))

    # -- comparison and display ------------------------------------------
    def _own_hyperparameters(self) -> dict[str, Any]:
        return {"padding_mode": self.padding_mode}

    def equivalent(self, other: "Conv", spatial: int | Sequence[int] | None = None) -> bool:
        """Bit-identical weights and the same computation (padding compared after resolution)."""
        if type(self) is not type(other) or not self.same_weights(other):
            return False
        mine, theirs = self.hyperparameters(), other.hyperparameters()
        mine.pop("padding"), theirs.pop("padding")
        if mine != theirs:
            return False
        if self.padding == other.padding:
            return True
        if spatial is not None:
            return self.pads(spatial) == other.pads(spatial)
        return self.same_pads_for_every_size(other.padding)

    def _pads_over_sizes(self) -> tuple[Any, ...]:
        """Per axis, every ``(begin, end)`` the padding takes over all input sizes, in closed form.

        A ``same_*`` rule pads ``total = max(((-L) mod s) + r - s, 0)``, which only
        depends on ``L mod s`` and takes exactly the values ``max(r - s, 0) .. r - 1``.
        One value is written as the fixed pair; several as ``(rule, lowest, highest)``.
        """
        if self.padding not in ("same_upper", "same_lower"):
            return tuple(("fixed", p) for p in self.pads())
        out = []
        for s, r in zip(self.stride, self.receptive_field):
            low, high = max(r - s, 0), r - 1
            if low == high:
                small, big = low // 2, low - low // 2
                out.append(("fixed", (small, big) if self.padding == "same_upper" else (big, small)))
            else:
                out.append((self.padding, low, high))
        return tuple(out)

    def same_pads_for_every_size(self, padding: Any) -> bool:
        """True when ``padding`` gives this convolution the same pads as its own for every input size.

        Decided in closed form (no input size is enumerated), so it is instant
        even for absurd strides:

        >>> import numpy as np
        >>> conv = Conv1D(np.zeros((1, 1, 3)), padding="same_upper")
        >>> conv.same_pads_for_every_size(((1, 1),)), conv.same_pads_for_every_size("same_lower")
        (True, True)
        >>> conv.replace(stride=2).same_pads_for_every_size("same_lower")
        False
        """
        return self._pads_over_sizes() == self.replace(padding=padding)._pads_over_sizes()

    def __repr__(self) -> str:
        return self._describe([f"padding_mode={self.padding_mode!r}"] if self.padding_mode != "zeros" else [])


class Conv1D(Conv):
    """A 1-D convolution (cross-correlation) with ONNX ``Conv`` semantics.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> conv = Conv1D(rng.normal(size=(64, 3, 10)).astype("float32"), np.zeros(64, "float32"))
    >>> conv
    Conv1D(in_channels=3, out_channels=64, kernel_size=10, padding='valid', bias=True, dtype=float32)
    >>> conv.output_shape(123)
    (114,)

    Parameters
    ----------
    kernel:
        ``(out_channels, in_channels // groups, kernel_size)``, or another layout
        named by ``layout`` (e.g. ``"K I O"`` for a Keras 2/3 kernel).
    bias:
        ``(out_channels,)`` or ``None``.
    stride, dilation:
        Positive integers.
    groups:
        Divides both ``in_channels`` and ``out_channels``.
    padding:
        ``"valid"``, ``"same_upper"`` (TensorFlow/Keras/PyTorch ``'same'``: the odd
        extra pad at the end), ``"same_lower"``, ``"causal"`` (``dilation * (k - 1)``
        at the beginning), an integer ``p`` or a ``(begin, end)`` pair.
    padding_mode:
        ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"`` (PyTorch's names).

    Instances are immutable; :meth:`replace` makes a changed copy.
    """

    spatial_rank = 1
    __slots__ = ()

    @property
    def kernel_size(self) -> int:
        return self.kernel_shape[0]

    def output_length(self, length: int) -> int:
        return self.output_shape(length)[0]


class Conv2D(Conv):
    """A 2-D convolution with ONNX ``Conv`` semantics: kernel ``(O, I // groups, H, W)``, input ``(N, C, H, W)``.

    Every spatial hyperparameter is a pair (height, width) or one integer for both.
    """

    spatial_rank = 2
    __slots__ = ()


class Conv3D(Conv):
    """A 3-D convolution with ONNX ``Conv`` semantics: kernel ``(O, I // groups, D, H, W)``, input ``(N, C, D, H, W)``."""

    spatial_rank = 3
    __slots__ = ()


Conv.BY_RANK = {1: Conv1D, 2: Conv2D, 3: Conv3D}

#: The 0.1 name of the rank-generic base.
ConvND = Conv
