"""The PyTorch adapter: ``torch.nn.Conv1d`` <-> :class:`~layoutconv.Conv1D`, bit for bit.

PyTorch already uses the canonical kernel layout ``(O, I // groups, K)`` and
cross-correlates, so weights move without any permutation; only the padding
needs care.  :func:`to_native` returns a plain ``nn.Conv1d`` whenever PyTorch
can spell the padding itself, and a :class:`PaddedConv1d` otherwise:

=====================================  ==========================================
canonical padding                      module returned
=====================================  ==========================================
``"valid"``                            ``nn.Conv1d(padding="valid")``
``((p, p),)``                          ``nn.Conv1d(padding=p)``
``"same_upper"``, stride 1             ``nn.Conv1d(padding="same")`` (PyTorch puts
                                       the odd extra pad at the end)
``((b, e),)`` with ``b != e``          ``PaddedConv1d``
``"causal"``, ``"same_lower"``         ``PaddedConv1d``
``"same_*"``, stride > 1               ``PaddedConv1d`` (pads depend on the length)
=====================================  ==========================================

A fused activation (``conv.activation``) also gives a :class:`PaddedConv1d`,
which applies it after the convolution.  A :class:`PaddedConv1d` *is* an
``nn.Conv1d`` built with ``padding=0``: its ``state_dict`` has the same keys
(``weight``, ``bias``) and loads into a plain module of your own::

    module = layoutconv.to_torch(conv)
    mine = torch.nn.Conv1d(conv.in_channels, conv.out_channels, conv.kernel_size,
                           stride=conv.stride[0], dilation=conv.dilation[0],
                           groups=conv.groups, bias=conv.bias is not None, padding=0)
    mine.load_state_dict(module.state_dict())
    # a PaddedConv1d pads in forward; do the same before calling `mine`:
    begin, end = module.pads(x.shape[-1])
    y = mine(torch.nn.functional.pad(x, (begin, end), mode=PAD_MODES[module.pad_mode]))

Then check your module with ``layoutconv.verify(conv, native=mine_wrapped)``.

Facts established by experiment (torch 2.13, CPU): ``conv1d`` runs in float16,
bfloat16, float32 and float64; ``padding="same"`` pads ``total // 2`` at the
beginning and the rest at the end, and is refused for stride > 1;
``F.pad`` reflect needs pads < length, circular needs pads <= length.
"""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import activations, reference, registry
from ..conv import PADDING_MODES, Conv, Conv1D
from ..chain import Chain
from ..transpose import ConvTranspose
from ..errors import ConfigError, ShapeError, UnsupportedError, fail
from ..record import FLOAT_DTYPES, float_dtype

NAME = "torch"
REQUIRES = ("torch",)

#: numpy dtype name <-> torch dtype (the floats a Conv1D may hold)
TORCH_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in FLOAT_DTYPES}
_DTYPE_NAMES = {v: k for k, v in TORCH_DTYPES.items()}

#: canonical padding_mode -> torch.nn.functional.pad mode
PAD_MODES: dict[str, str] = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}

#: torch's padding strings -> canonical rules
_TORCH_RULES = {"valid": "valid", "same": "same_upper"}

_ACCEPTED = (
    "torch.nn.Conv1d/2d/3d or ConvTranspose1d/2d/3d, layoutconv's modules (what to_native returns), "
    "or a Sequential of a padding module, one convolution and an activation module"
)


# -- numpy <-> torch without touching the bytes ------------------------------
def _dtype_error(what: str, dtype: Any) -> Exception:
    return fail(
        UnsupportedError,
        f"{what} has a dtype layoutconv cannot carry",
        f"one of {', '.join(TORCH_DTYPES)}",
        f"dtype {dtype}",
        "Cast it to one of those first.",
    )


def _numpy_dtype(dtype: torch.dtype, what: str) -> np.dtype:
    if dtype not in _DTYPE_NAMES:
        raise _dtype_error(what, dtype)
    return float_dtype(_DTYPE_NAMES[dtype])


def _torch_dtype(dtype: np.dtype, what: str) -> torch.dtype:
    if dtype.name not in TORCH_DTYPES:
        raise _dtype_error(what, dtype)
    return TORCH_DTYPES[dtype.name]


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A numpy copy of ``tensor`` with the same dtype and bytes (bfloat16 becomes ``ml_dtypes.bfloat16``)."""
    _numpy_dtype(tensor.dtype, "Tensor")
    t = tensor.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(float_dtype("bfloat16")).copy()
    return t.numpy().copy()


#: :func:`tensor_views` is active: :func:`to_tensor` shares the array's memory instead of copying it
_TENSOR_VIEWS: contextvars.ContextVar[bool] = contextvars.ContextVar("layoutconv_tensor_views", default=False)


@contextlib.contextmanager
def tensor_views() -> Iterator[None]:
    """Within this context, :func:`to_tensor` returns a tensor sharing the array's memory, strided as the array is
    (a Keras ``Dense`` kernel stays a transposed view), instead of a contiguous copy: for a caller that only reads
    the module and keeps the arrays alive and unchanged while it does (``convert --stream`` writes the weights
    from the views, then runs the module once)."""
    token = _TENSOR_VIEWS.set(True)
    try:
        yield
    finally:
        _TENSOR_VIEWS.reset(token)


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """A torch tensor owning a contiguous copy of ``array``, same dtype and values (``ml_dtypes.bfloat16`` -> ``torch.bfloat16``).

    One copy, made by torch (whose strided copy transposes a Keras kernel several
    times faster than ``np.ascontiguousarray``); no copy within :func:`tensor_views`.
    """
    source = _view(array)
    if _TENSOR_VIEWS.get():
        return source
    return source.clone(memory_format=torch.contiguous_format)


def _view(array: np.ndarray) -> torch.Tensor:
    """A torch tensor sharing ``array``'s memory (read it, never write it); strided arrays stay strided."""
    array = np.asarray(array)
    _torch_dtype(array.dtype, "Array")
    if any(s < 0 for s in array.strides) or any(s % array.itemsize for s in array.strides):
        array = np.ascontiguousarray(array)  # torch takes neither negative nor unaligned strides
    bf16 = array.dtype.name == "bfloat16"
    with warnings.catch_warnings():  # records hold read-only arrays; the view is only read
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensor = torch.from_numpy(array.view(np.int16) if bf16 else array)
    return tensor.view(torch.bfloat16) if bf16 else tensor


# -- activations ---------------------------------------------------------------
#: canonical activation -> the torch function computing it (names only are stored on modules)
TORCH_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "linear": lambda x: x,
    "relu": F.relu,
    "relu6": F.relu6,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.2),
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "elu": F.elu,
    "selu": F.selu,
    "gelu": F.gelu,
    "swish": F.silu,
    "softplus": F.softplus,
    "softsign": F.softsign,
    "mish": F.mish,
    "hard_sigmoid_keras2": lambda x: torch.clamp(0.2 * x + 0.5, 0, 1),
    "hard_sigmoid_keras3": F.hardsigmoid,
    "hard_silu": F.hardswish,
}

#: torch activation module class -> canonical name, or a function of the module returning it (None: parameters differ)
_ACTIVATION_MODULES: dict[type, Callable[[nn.Module], str | None]] = {
    nn.Identity: lambda m: "linear",
    nn.ReLU: lambda m: "relu",
    nn.ReLU6: lambda m: "relu6",
    nn.Sigmoid: lambda m: "sigmoid",
    nn.Tanh: lambda m: "tanh",
    nn.SELU: lambda m: "selu",
    nn.SiLU: lambda m: "swish",
    nn.Softsign: lambda m: "softsign",
    nn.Mish: lambda m: "mish",
    nn.Hardsigmoid: lambda m: "hard_sigmoid_keras3",
    nn.Hardswish: lambda m: "hard_silu",
    nn.ELU: lambda m: "elu" if m.alpha == 1.0 else None,
    nn.GELU: lambda m: "gelu" if m.approximate == "none" else None,
    nn.LeakyReLU: lambda m: "leaky_relu" if m.negative_slope == 0.2 else None,
    nn.Softplus: lambda m: "softplus" if m.beta == 1 and m.threshold >= 20 else None,
}

#: torch padding module class -> (canonical padding_mode, spatial rank)
_PAD_MODULES: dict[type, tuple[str, int]] = {
    getattr(nn, f"{kind}{rank}d"): (mode, rank)
    for kind, mode in (
        ("ZeroPad", "zeros"),
        ("ConstantPad", "zeros"),  # only with value 0, checked when read
        ("ReflectionPad", "reflect"),
        ("ReplicationPad", "replicate"),
        ("CircularPad", "circular"),
    )
    for rank in (1, 2, 3)
}

#: spatial rank -> torch's convolution classes and functions
CONV_MODULES: dict[int, type] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
TRANSPOSE_MODULES: dict[int, type] = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_CONV_FUNCTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_TRANSPOSE_FUNCTIONS = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


# -- the one padding formula -------------------------------------------------
def _geometry(kernel_size: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...], padding: Any) -> Conv:
    """A weightless stand-in whose ``pads()`` is layoutconv's own, so module and reference share one formula."""
    return Conv(np.zeros((1, 1, *kernel_size), np.float32), stride=stride, dilation=dilation, padding=padding)


def _flat(pairs: tuple[tuple[int, int], ...]) -> list[int]:
    """``F.pad``'s order: the last axis first, ``(begin, end)`` each."""
    return [v for begin, end in reversed(pairs) for v in (begin, end)]


class _Padded:
    """What every layoutconv convolution module adds to its ``nn.ConvNd`` base: a padding rule, a mode, an activation."""

    rank: int = 0

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = "valid",
        dilation: Any = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        activation: str | None = "linear",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        if padding_mode not in PAD_MODES:
            raise fail(
                ConfigError,
                "Invalid value for argument `padding_mode`",
                f"one of {PADDING_MODES}",
                f"padding_mode={padding_mode!r}",
            )
        super().__init__(  # type: ignore[call-arg]
            in_channels, out_channels, kernel_size, stride=stride, padding=0, dilation=dilation,
            groups=groups, bias=bias, device=device, dtype=dtype,
        )
        # Plain, picklable values only, normalised by Conv.
        self.pad_rule = _geometry(self.kernel_size, self.stride, self.dilation, padding).padding
        self.pad_mode = padding_mode
        self.activation = activations.canonical(activation)

    def pad_pairs(self, size: Any) -> tuple[tuple[int, int], ...]:
        """``(begin, end)`` pads per spatial axis for an input of this spatial size (:meth:`Conv.pads`)."""
        return _geometry(self.kernel_size, self.stride, self.dilation, self.pad_rule).pads(tuple(int(n) for n in size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pairs = self.pad_pairs(x.shape[2:])
        if any(b or e for b, e in pairs):
            x = F.pad(x, _flat(pairs), mode=PAD_MODES[self.pad_mode])
        y = _CONV_FUNCTIONS[self.rank](x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return TORCH_ACTIVATIONS[self.activation](y)

    def extra_repr(self) -> str:
        text = super().extra_repr() + f", pad_rule={self.pad_rule!r}, pad_mode={self.pad_mode!r}"  # type: ignore[misc]
        return text + (f", activation={self.activation!r}" if self.activation != "linear" else "")


class PaddedConv1d(_Padded, nn.Conv1d):
    """An ``nn.Conv1d`` with every layoutconv padding rule and an optional fused activation.

    It *is* an ``nn.Conv1d`` (built with ``padding=0``): its ``state_dict`` has the
    keys ``weight`` and ``bias`` and loads into a plain ``nn.Conv1d`` of the same
    shape.  ``forward`` pads the input by :meth:`pads` with ``pad_mode``, convolves,
    and applies ``activation`` (see :mod:`layoutconv.activations`).

    >>> m = PaddedConv1d(3, 8, 4, stride=2, padding="same_lower")   # doctest: +SKIP
    >>> m.pads(11)                                                  # doctest: +SKIP
    (2, 1)

    Parameters are those of ``nn.Conv1d``, except ``padding``: ``"valid"``,
    ``"same_upper"``, ``"same_lower"``, ``"causal"``, an int or a ``(begin, end)``
    pair (see :class:`~layoutconv.Conv1D`), kept in ``pad_rule``; ``padding_mode``,
    kept in ``pad_mode``; and ``activation``, a name from
    :data:`layoutconv.activations.ACTIVATIONS`.  Pads that depend on the input
    length are recomputed on every call, so a traced export bakes in the traced
    length; export with ``layoutconv.to_onnx`` instead.
    """

    rank = 1

    def pads(self, length: int) -> tuple[int, int]:
        """``(begin, end)`` pads for an input of this length (:meth:`Conv1D.pads`)."""
        ((begin, end),) = self.pad_pairs((length,))
        return begin, end


class PaddedConv2d(_Padded, nn.Conv2d):
    """:class:`PaddedConv1d` for two spatial axes: an ``nn.Conv2d`` whose ``state_dict`` loads into a plain one."""

    rank = 2


class PaddedConv3d(_Padded, nn.Conv3d):
    """:class:`PaddedConv1d` for three spatial axes: an ``nn.Conv3d`` whose ``state_dict`` loads into a plain one."""

    rank = 3


PADDED_MODULES: dict[int, type] = {1: PaddedConv1d, 2: PaddedConv2d, 3: PaddedConv3d}


class _CroppedTranspose:
    """What layoutconv's transposed modules add to ``nn.ConvTransposeNd``: asymmetric or size-dependent crops, an activation."""

    rank: int = 0

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = "valid",
        output_padding: Any = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: Any = 1,
        output_shape: Any = None,
        activation: str | None = "linear",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(  # type: ignore[call-arg]
            in_channels, out_channels, kernel_size, stride=stride, padding=0, output_padding=output_padding,
            groups=groups, bias=bias, dilation=dilation, device=device, dtype=dtype,
        )
        shape = self._geometry_for(padding, output_shape)
        self.pad_rule = shape.padding
        self.target_shape = shape.output_shape_
        self.activation = activations.canonical(activation)

    def _geometry_for(self, padding: Any, output_shape: Any) -> ConvTranspose:
        return ConvTranspose(
            np.zeros((1, 1, *self.kernel_size), np.float32), stride=self.stride, dilation=self.dilation,
            padding=padding, output_padding=self.output_padding, output_shape=output_shape,
        )

    def crop_pairs(self, size: Any) -> tuple[tuple[int, int], ...]:
        """``(begin, end)`` crops per spatial axis for an input of this spatial size (:meth:`ConvTranspose.pads`)."""
        return self._geometry_for(self.pad_rule, self.target_shape).pads(tuple(int(n) for n in size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        pairs = self.crop_pairs(x.shape[2:])
        y = _TRANSPOSE_FUNCTIONS[self.rank](
            x, self.weight, self.bias, self.stride, 0, self.output_padding, self.groups, self.dilation
        )
        grow = [max(-e, 0) for _, e in pairs]  # an ONNX output_shape past the full output appends positions
        if any(grow):
            y = F.pad(y, [v for g in reversed(grow) for v in (0, g)])
        y = y[(slice(None), slice(None)) + tuple(slice(b, y.shape[2 + i] - max(e, 0)) for i, (b, e) in enumerate(pairs))]
        return TORCH_ACTIVATIONS[self.activation](y)


class CroppedConvTranspose1d(_CroppedTranspose, nn.ConvTranspose1d):
    """An ``nn.ConvTranspose1d`` (same ``state_dict`` keys) with asymmetric or ``same_*`` crops and a fused activation."""

    rank = 1


class CroppedConvTranspose2d(_CroppedTranspose, nn.ConvTranspose2d):
    """An ``nn.ConvTranspose2d`` (same ``state_dict`` keys) with asymmetric or ``same_*`` crops and a fused activation."""

    rank = 2


class CroppedConvTranspose3d(_CroppedTranspose, nn.ConvTranspose3d):
    """An ``nn.ConvTranspose3d`` (same ``state_dict`` keys) with asymmetric or ``same_*`` crops and a fused activation."""

    rank = 3


CROPPED_MODULES: dict[int, type] = {1: CroppedConvTranspose1d, 2: CroppedConvTranspose2d, 3: CroppedConvTranspose3d}


# -- reading a module ----------------------------------------------------------
class Parsed(NamedTuple):
    """A module taken apart: the ``nn.ConvNd`` holding the weights, and what the module does around it."""

    conv: nn.Module
    padding: Any
    padding_mode: str
    activation: str


def _rank(module: nn.Module) -> int:
    return len(module.kernel_size)


def _overrides(module: nn.Module) -> bool:
    """True when a convolution subclass computes something else (QAT, custom forward, ...)."""
    cls = type(module)
    for ours in (_Padded, _CroppedTranspose):
        if issubclass(cls, ours):
            return cls.forward is not ours.forward
    base = CONV_MODULES.get(_rank(module)) if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed else None
    if base is not None:
        return cls.forward is not base.forward or cls._conv_forward is not base._conv_forward
    base = TRANSPOSE_MODULES.get(_rank(module))
    return base is None or cls.forward is not base.forward


def _unsupported(module: Any, why: str = "") -> Exception:
    return fail(
        UnsupportedError,
        "Not a convolution layoutconv can read" + (f": {why}" if why else ""),
        _ACCEPTED + " (subclasses must not override forward)",
        f"{type(module).__module__}.{type(module).__qualname__}",
        "Quantized and QAT convolutions are not supported.",
    )


def _activation_name(module: nn.Module) -> str:
    read = _ACTIVATION_MODULES.get(type(module))
    name = read(module) if read is not None else None
    if name is None:
        raise fail(
            UnsupportedError,
            f"Activation module {module!r} after the convolution is not one layoutconv represents",
            "one of " + ", ".join(sorted(c.__name__ for c in _ACTIVATION_MODULES)) + " with its default parameters "
            "(LeakyReLU(0.2), Keras' slope)",
            f"{module!r}",
            "Keep it outside the part you convert, or replace it with an equivalent module.",
        )
    return name


def _pad_module_pairs(pad: nn.Module, rank: int) -> tuple[str, tuple[tuple[int, int], ...]]:
    """A padding module's mode and its ``(begin, end)`` per spatial axis (its ``padding`` lists the last axis first)."""
    mode, pad_rank = _PAD_MODULES[type(pad)]
    if pad_rank != rank:
        raise _unsupported(pad, f"a {pad_rank}-d padding module in front of a {rank}-d convolution")
    flat = [int(v) for v in pad.padding]
    pairs = tuple((flat[2 * i], flat[2 * i + 1]) for i in range(rank))[::-1]
    return mode, pairs


def _parse_sequential(module: nn.Sequential) -> Parsed:
    items = list(module)
    convs = [i for i, m in enumerate(items) if isinstance(m, nn.modules.conv._ConvNd)]
    if len(convs) != 1:
        raise _unsupported(module, f"a Sequential needs exactly one convolution, this one has {len(convs)}")
    (at,) = convs
    inner = _parse_single(items[at])
    if len(items[:at]) > 1 or len(items[at + 1 :]) > 1:
        raise _unsupported(module, "a Sequential may hold one padding module, the convolution, and one activation module")
    padding, mode = inner.padding, inner.padding_mode
    if items[:at]:
        pad = items[0]
        if inner.conv.transposed:
            raise _unsupported(module, "a padding module in front of a transposed convolution")
        if type(pad) not in _PAD_MODULES or (isinstance(pad, (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)) and pad.value != 0):
            raise _unsupported(module, f"{pad!r} before the convolution is not a padding module layoutconv reads")
        outer, pairs = _pad_module_pairs(pad, _rank(inner.conv))
        own = _geometry(inner.conv.kernel_size, inner.conv.stride, inner.conv.dilation, padding)
        if own.padding_depends_on_length:
            raise _unsupported(module, "a padding module in front of padding='same' with a stride")
        inner_pairs = own.pads()
        if any(b or e for b, e in inner_pairs) and (outer != "zeros" or mode != "zeros"):
            raise _unsupported(module, "both the padding module and the convolution pad, not both with zeros")
        padding = tuple((b + ib, e + ie) for (b, e), (ib, ie) in zip(pairs, inner_pairs))
        mode = outer if any(b or e for b, e in pairs) else mode
    activation = inner.activation
    if items[at + 1 :]:
        if activation != "linear":
            raise _unsupported(module, "two activations in a row")
        activation = _activation_name(items[at + 1])
    return Parsed(inner.conv, padding, mode, activation)


def _parse_single(module: Any) -> Parsed:
    if not isinstance(module, nn.modules.conv._ConvNd) or _rank(module) not in (1, 2, 3) or _overrides(module):
        raise _unsupported(module)
    if nn.parameter.is_lazy(module.weight):
        raise fail(
            ConfigError,
            "Lazy convolution has no weights yet",
            "an initialised module",
            f"{type(module).__name__} with uninitialised weights",
            "Run it once on an input (or load a state dict) first.",
        )
    rank = _rank(module)
    if isinstance(module, (_Padded, _CroppedTranspose)):
        if any(module.padding) or module.padding_mode != "zeros":
            raise fail(
                ConfigError,
                f"{type(module).__name__}'s own padding was changed",
                "padding=0 and padding_mode='zeros' (the module pads by pad_rule and pad_mode)",
                f"padding={module.padding!r}, padding_mode={module.padding_mode!r}",
                "Rebuild the module with layoutconv.to_torch.",
            )
        mode = module.pad_mode if isinstance(module, _Padded) else "zeros"
        return Parsed(module, module.pad_rule, mode, module.activation)
    if module.transposed and module.padding_mode != "zeros":
        raise _unsupported(module, f"padding_mode={module.padding_mode!r} on a transposed convolution")
    if isinstance(module.padding, str):
        padding: Any = _TORCH_RULES[module.padding]
    else:
        padding = tuple((int(p), int(p)) for p in module.padding)
        assert len(padding) == rank
    return Parsed(module, padding, module.padding_mode, "linear")


def parse(module: Any) -> Parsed:
    """Take a module apart: an ``nn.Conv1d/2d/3d``, ``nn.ConvTranspose1d/2d/3d``, one of layoutconv's
    modules, or an ``nn.Sequential`` of an optional padding module (``ZeroPad*d``,
    ``ConstantPad*d(value=0)``, ``ReflectionPad*d``, ``ReplicationPad*d``, ``CircularPad*d``),
    one convolution and an optional activation module."""
    if isinstance(module, nn.Sequential):
        return _parse_sequential(module)
    return _parse_single(module)


def conv1d_module(module: Any) -> nn.Module:
    """The convolution module that holds the weights (the module itself unless it is a ``Sequential``).

    Use it to copy weights into your own module:
    ``mine.load_state_dict(conv1d_module(module).state_dict())``.
    """
    return parse(module).conv


def from_native(module: Any) -> Conv | ConvTranspose:
    """A torch convolution module as a :class:`~layoutconv.Conv` or :class:`~layoutconv.ConvTranspose`.

    Accepts ``nn.Conv1d/2d/3d`` (any padding, padding_mode and float dtype),
    ``nn.ConvTranspose1d/2d/3d``, the modules :func:`to_native` makes, and a
    ``Sequential`` of padding, convolution and activation modules.  Weights are
    copied with their dtype and bytes unchanged.
    """
    if torch_recurrent.reads(module):  # recurrent modules: layoutconv.adapters.torch_recurrent
        return torch_recurrent.from_native(module)
    parsed = parse(module)
    inner = parsed.conv
    kernel = to_numpy(inner.weight)
    bias = None if inner.bias is None else to_numpy(inner.bias)
    common = dict(stride=tuple(inner.stride), dilation=tuple(inner.dilation), groups=inner.groups, activation=parsed.activation)
    if inner.transposed:
        target = getattr(inner, "target_shape", None)
        return ConvTranspose(
            kernel, bias, padding=parsed.padding, output_padding=tuple(inner.output_padding), output_shape=target, **common
        )
    return Conv(kernel, bias, padding=parsed.padding, padding_mode=parsed.padding_mode, **common)


# -- writing a module ----------------------------------------------------------
def _torch_padding(conv: Conv) -> Any:
    """How ``nn.ConvNd`` spells ``conv.padding``, or ``None`` when it cannot."""
    if conv.padding == "valid":
        return "valid"
    if conv.padding == "same_upper" and all(s == 1 for s in conv.stride):
        return "same"
    if isinstance(conv.padding, tuple) and all(b == e for b, e in conv.padding):
        return conv.padding[0][0] if conv.spatial_rank == 1 else tuple(b for b, _ in conv.padding)
    return None


def _fill(module: nn.Module, record: Any) -> nn.Module:
    if _TENSOR_VIEWS.get():  # the weights are views of the record's arrays instead of the module's own
        module.weight = nn.Parameter(to_tensor(record.kernel), requires_grad=module.weight.requires_grad)
        if record.bias is not None:
            module.bias = nn.Parameter(to_tensor(record.bias), requires_grad=module.bias.requires_grad)
        return module.eval()
    with torch.no_grad():  # copied straight from the record's arrays: no intermediate tensor
        module.weight.copy_(_view(record.kernel))
        if record.bias is not None:
            module.bias.copy_(_view(record.bias))
    return module.eval()


def to_native(record: Conv | ConvTranspose) -> nn.Module:
    """A PyTorch module in eval mode, in the kernel's dtype, running on ``(N, C, *spatial)``.

    A plain ``nn.ConvNd`` / ``nn.ConvTransposeNd`` when PyTorch can express the
    padding and there is no activation, else a :class:`PaddedConv1d` (``2d``, ``3d``)
    or a :class:`CroppedConvTranspose1d` (``2d``, ``3d``); either way the
    ``state_dict`` has the keys of the plain module.
    """
    if isinstance(record, ConvTranspose):
        return _transpose_to_native(record)
    if isinstance(record, Chain):
        return nn.Sequential(*(to_native(layer) for layer in record.layers)).eval()
    if not isinstance(record, Conv):
        raise fail(ConfigError, "to_native needs a Conv or ConvTranspose", "a layoutconv.Conv or ConvTranspose", f"{type(record).__name__}")
    conv = record
    one = (lambda v: v[0]) if conv.spatial_rank == 1 else tuple
    common = dict(
        in_channels=conv.in_channels,
        out_channels=conv.out_channels,
        kernel_size=one(conv.kernel_shape),
        stride=one(conv.stride),
        dilation=one(conv.dilation),
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        dtype=_torch_dtype(conv.dtype, "Kernel"),
    )
    spelling = _torch_padding(conv)
    if spelling is None or conv.activation != "linear":
        module = PADDED_MODULES[conv.spatial_rank](padding=conv.padding, activation=conv.activation, **common)
    else:
        module = CONV_MODULES[conv.spatial_rank](padding=spelling, **common)
    return _fill(module, conv)


def _transpose_to_native(t: ConvTranspose) -> nn.Module:
    common = dict(
        in_channels=t.in_channels,
        out_channels=t.out_channels,
        kernel_size=t.kernel_shape,
        stride=t.stride,
        dilation=t.dilation,
        groups=t.groups,
        output_padding=t.output_padding,
        bias=t.bias is not None,
        dtype=_torch_dtype(t.dtype, "Kernel"),
    )
    symmetric = isinstance(t.padding, tuple) and all(b == e for b, e in t.padding)
    if (t.padding == "valid" or symmetric) and t.activation == "linear":
        padding = tuple(b for b, _ in t.pads())
        return _fill(TRANSPOSE_MODULES[t.spatial_rank](padding=padding, **common), t)
    module = CROPPED_MODULES[t.spatial_rank](padding=t.padding, output_shape=t.output_shape_, activation=t.activation, **common)
    return _fill(module, t)


# -- running ---------------------------------------------------------------------
def run(native: Any, x: Any) -> np.ndarray:
    """Apply ``native`` to ``x`` ``(N, C, L)`` under ``torch.no_grad()``; return ``(N, O, L_out)`` numpy.

    ``x`` is cast to the module's dtype (that of its first parameter); the result
    has that dtype (``ml_dtypes.bfloat16`` for a bfloat16 module).  Any module
    runs, including one of the user's own that :func:`from_native` cannot read;
    the input is checked against the convolution when it can be read.
    """
    if not isinstance(native, nn.Module):
        raise _unsupported(native)
    if torch_recurrent.reads(native):  # a recurrent module takes (N, T, F): layoutconv.adapters.torch_recurrent
        return torch_recurrent.run(native, x)
    first = next(iter(native.parameters()), None)
    if first is None or nn.parameter.is_lazy(first):
        raise fail(
            ConfigError,
            f"Module {type(native).__name__} has no initialised parameters to run with",
            "a module holding the convolution's weights",
            f"{type(native).__name__}" + (" with uninitialised (lazy) weights" if first is not None else " without parameters"),
            "Run it once on an input (or load a state dict) first.",
        )
    x = np.asarray(x)
    dtype = _numpy_dtype(first.dtype, "Module")
    if x.dtype.kind not in "fiu" and x.dtype.name not in TORCH_DTYPES:
        raise fail(
            ConfigError,
            "Input is not numeric",
            "a float (or integer) array",
            f"dtype {x.dtype}",
            f"Cast it, e.g. x.astype({dtype.name!r}).",
        )
    try:
        readable = from_native(native)
    except UnsupportedError:
        readable = None  # a module of the user's own: run it as it is
    if isinstance(readable, Conv):
        reference.check_input(readable, x)
    tensor = to_tensor(x.astype(dtype, copy=False)).to(first.device)
    try:
        with torch.no_grad():
            y = native(tensor)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise fail(
            ShapeError,
            f"The module {type(native).__name__} failed on an input of shape {tuple(x.shape)}",
            "a module that accepts (N, C, L) input",
            f"{type(exc).__name__}: {first_line}",
        ) from None
    if not isinstance(y, torch.Tensor):
        raise fail(ConfigError, "The module did not return a tensor", "a torch.Tensor", f"{type(y).__name__}")
    return to_numpy(y)


registry.register(Conv, NAME, to_native=to_native, run=run)
registry.register(ConvTranspose, NAME, to_native=to_native, run=run)
registry.register(Chain, NAME, to_native=to_native, run=run)

from . import torch_layers  # noqa: E402,F401  (registers the layer and graph converters)
from . import torch_recurrent  # noqa: E402  (registers SimpleRNN, LSTM, GRU, Bidirectional)
