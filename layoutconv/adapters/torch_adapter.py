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

from typing import Any, Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import activations, reference
from ..conv import PADDING_MODES, Conv1D
from ..errors import ConfigError, FrameworkMissingError, ShapeError, UnsupportedError, fail

NAME = "torch"
REQUIRES = ("torch",)

#: numpy dtype name <-> torch dtype (the floats a Conv1D may hold)
TORCH_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
_DTYPE_NAMES = {v: k for k, v in TORCH_DTYPES.items()}

#: canonical padding_mode -> torch.nn.functional.pad mode
PAD_MODES: dict[str, str] = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}

#: torch's padding strings -> canonical rules
_TORCH_RULES = {"valid": "valid", "same": "same_upper"}

_ACCEPTED = (
    "torch.nn.Conv1d, layoutconv's PaddedConv1d (what to_native returns), or a Sequential of "
    "a padding module, one Conv1d and an activation module"
)


# -- numpy <-> torch without touching the bytes ------------------------------
def _bfloat16() -> np.dtype:
    try:
        import ml_dtypes
    except ImportError:
        raise fail(
            FrameworkMissingError,
            "bfloat16 arrays need the ml_dtypes package",
            "ml_dtypes to be installed (numpy has no bfloat16 of its own)",
            "an environment without it",
            "Install it with: pip install ml_dtypes",
        ) from None
    return np.dtype(ml_dtypes.bfloat16)


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
    name = _DTYPE_NAMES[dtype]
    return _bfloat16() if name == "bfloat16" else np.dtype(name)


def _torch_dtype(dtype: np.dtype, what: str) -> torch.dtype:
    if dtype.name not in TORCH_DTYPES:
        raise _dtype_error(what, dtype)
    return TORCH_DTYPES[dtype.name]


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A numpy copy of ``tensor`` with the same dtype and bytes (bfloat16 becomes ``ml_dtypes.bfloat16``)."""
    _numpy_dtype(tensor.dtype, "Tensor")
    t = tensor.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(_bfloat16()).copy()
    return t.numpy().copy()


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """A torch tensor owning a copy of ``array``, same dtype and bytes (``ml_dtypes.bfloat16`` -> ``torch.bfloat16``)."""
    array = np.ascontiguousarray(array)
    _torch_dtype(array.dtype, "Array")
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(array.copy())


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

#: torch padding module class -> canonical padding_mode
_PAD_MODULES: dict[type, str] = {
    nn.ZeroPad1d: "zeros",
    nn.ConstantPad1d: "zeros",  # only with value 0, checked when read
    nn.ReflectionPad1d: "reflect",
    nn.ReplicationPad1d: "replicate",
    nn.CircularPad1d: "circular",
}


# -- the one padding formula -------------------------------------------------
def _geometry(kernel_size: int, stride: int, dilation: int, padding: Any) -> Conv1D:
    """A weightless stand-in whose ``pads()`` is layoutconv's own, so module and reference share one formula."""
    return Conv1D(np.zeros((1, 1, kernel_size), np.float32), stride=stride, dilation=dilation, padding=padding)


class PaddedConv1d(nn.Conv1d):
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

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: Any = "valid",
        dilation: int = 1,
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
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=0, dilation=dilation,
            groups=groups, bias=bias, device=device, dtype=dtype,
        )
        # Plain, picklable values only, normalised by Conv1D.
        self.pad_rule = _geometry(self.kernel_size[0], self.stride[0], self.dilation[0], padding).padding
        self.pad_mode = padding_mode
        self.activation = activations.canonical(activation)

    def pads(self, length: int) -> tuple[int, int]:
        """``(begin, end)`` pads for an input of this length (:meth:`Conv1D.pads`)."""
        ((begin, end),) = _geometry(self.kernel_size[0], self.stride[0], self.dilation[0], self.pad_rule).pads(int(length))
        return begin, end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        begin, end = self.pads(x.shape[-1])
        if begin or end:
            x = F.pad(x, (begin, end), mode=PAD_MODES[self.pad_mode])
        y = F.conv1d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return TORCH_ACTIVATIONS[self.activation](y)

    def extra_repr(self) -> str:
        text = super().extra_repr() + f", pad_rule={self.pad_rule!r}, pad_mode={self.pad_mode!r}"
        return text + (f", activation={self.activation!r}" if self.activation != "linear" else "")


# -- reading a module ----------------------------------------------------------
class Parsed(NamedTuple):
    """A module taken apart: the ``nn.Conv1d`` holding the weights, and what the module does around it."""

    conv: nn.Conv1d
    padding: Any
    padding_mode: str
    activation: str


def _overrides_conv1d(module: nn.Module) -> bool:
    """True when a ``nn.Conv1d`` subclass computes something else (QAT, custom forward, ...)."""
    cls = type(module)
    if issubclass(cls, PaddedConv1d):
        return cls.forward is not PaddedConv1d.forward or cls.pads is not PaddedConv1d.pads
    return cls.forward is not nn.Conv1d.forward or cls._conv_forward is not nn.Conv1d._conv_forward


def _unsupported(module: Any, why: str = "") -> Exception:
    return fail(
        UnsupportedError,
        "Not a 1-d convolution layoutconv can read" + (f": {why}" if why else ""),
        _ACCEPTED + " (subclasses must not override forward)",
        f"{type(module).__module__}.{type(module).__qualname__}",
        "ConvTranspose1d, Conv2d and quantized/QAT convolutions are not supported.",
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


def _parse_sequential(module: nn.Sequential) -> Parsed:
    items = list(module)
    convs = [i for i, m in enumerate(items) if isinstance(m, nn.Conv1d)]
    if len(convs) != 1:
        raise _unsupported(module, f"a Sequential needs exactly one Conv1d, this one has {len(convs)}")
    (at,) = convs
    inner = _parse_single(items[at])
    if len(items[:at]) > 1 or len(items[at + 1 :]) > 1:
        raise _unsupported(module, "a Sequential may hold one padding module, the Conv1d, and one activation module")
    padding, mode = inner.padding, inner.padding_mode
    if items[:at]:
        pad = items[0]
        if type(pad) not in _PAD_MODULES or (isinstance(pad, nn.ConstantPad1d) and pad.value != 0):
            raise _unsupported(module, f"{pad!r} before the Conv1d is not a padding module layoutconv reads")
        outer = _PAD_MODULES[type(pad)]
        begin, end = (int(v) for v in pad.padding)
        own = _geometry(inner.conv.kernel_size[0], inner.conv.stride[0], inner.conv.dilation[0], padding)
        if own.padding_depends_on_length:
            raise _unsupported(module, "a padding module in front of padding='same' with a stride")
        ((b, e),) = own.pads()
        if (b or e) and (outer != "zeros" or mode != "zeros"):
            raise _unsupported(module, "both the padding module and the Conv1d pad, not both with zeros")
        padding, mode = ((begin + b, end + e),), outer if (begin or end) else mode
    activation = inner.activation
    if items[at + 1 :]:
        if activation != "linear":
            raise _unsupported(module, "two activations in a row")
        activation = _activation_name(items[at + 1])
    return Parsed(inner.conv, padding, mode, activation)


def _parse_single(module: Any) -> Parsed:
    if isinstance(module, nn.Conv1d) and not _overrides_conv1d(module):
        if nn.parameter.is_lazy(module.weight):
            raise fail(
                ConfigError,
                "Lazy convolution has no weights yet",
                "an initialised module",
                f"{type(module).__name__} with uninitialised weights",
                "Run it once on an input (or load a state dict) first.",
            )
        if isinstance(module, PaddedConv1d):
            if module.padding != (0,) or module.padding_mode != "zeros":
                raise fail(
                    ConfigError,
                    "PaddedConv1d's own nn.Conv1d padding was changed",
                    "padding=(0,) and padding_mode='zeros' (the module pads by pad_rule and pad_mode)",
                    f"padding={module.padding!r}, padding_mode={module.padding_mode!r}",
                    "Rebuild the module with layoutconv.to_torch.",
                )
            return Parsed(module, module.pad_rule, module.pad_mode, module.activation)
        if isinstance(module.padding, str):
            padding: Any = _TORCH_RULES[module.padding]
        else:
            padding = ((module.padding[0], module.padding[0]),)
        return Parsed(module, padding, module.padding_mode, "linear")
    raise _unsupported(module)


def parse(module: Any) -> Parsed:
    """Take a module apart: a ``nn.Conv1d``, a :class:`PaddedConv1d`, or a ``nn.Sequential`` of
    an optional padding module (``ZeroPad1d``, ``ConstantPad1d(value=0)``, ``ReflectionPad1d``,
    ``ReplicationPad1d``, ``CircularPad1d``), one ``nn.Conv1d`` and an optional activation module."""
    if isinstance(module, nn.Sequential):
        return _parse_sequential(module)
    return _parse_single(module)


def conv1d_module(module: Any) -> nn.Conv1d:
    """The ``nn.Conv1d`` that holds the weights (the module itself for ``nn.Conv1d`` and :class:`PaddedConv1d`).

    Use it to copy weights into your own module:
    ``mine.load_state_dict(conv1d_module(module).state_dict())``.
    """
    return parse(module).conv


def from_native(module: Any) -> Conv1D:
    """A ``nn.Conv1d`` (any padding, padding_mode and float dtype), a :class:`PaddedConv1d`,
    or a ``Sequential`` of padding, ``Conv1d`` and activation modules, as a :class:`Conv1D`.

    Weights are copied with their dtype and bytes unchanged.
    """
    parsed = parse(module)
    inner = parsed.conv
    kernel = to_numpy(inner.weight)
    bias = None if inner.bias is None else to_numpy(inner.bias)
    return Conv1D(
        kernel,
        bias,
        stride=inner.stride[0],
        dilation=inner.dilation[0],
        groups=inner.groups,
        padding=parsed.padding,
        padding_mode=parsed.padding_mode,
        activation=parsed.activation,
    )


# -- writing a module ----------------------------------------------------------
def _torch_padding(conv: Conv1D) -> Any:
    """How ``nn.Conv1d`` spells ``conv.padding``, or ``None`` when it cannot."""
    if conv.padding == "valid":
        return "valid"
    if conv.padding == "same_upper" and conv.stride == (1,):
        return "same"
    if isinstance(conv.padding, tuple):
        ((begin, end),) = conv.padding
        if begin == end:
            return begin
    return None


def to_native(conv: Conv1D) -> nn.Module:
    """A PyTorch module in eval mode, in the kernel's dtype, running on ``(N, C, L)``.

    A plain ``nn.Conv1d`` when PyTorch can express the padding and there is no
    activation, else a :class:`PaddedConv1d` (see the module docstring for the
    table); either way the ``state_dict`` keys are ``weight`` and ``bias``.
    """
    if not isinstance(conv, Conv1D):
        raise fail(ConfigError, "to_native needs a Conv1D", "a layoutconv.Conv1D", f"{type(conv).__name__}")
    dtype = _torch_dtype(conv.dtype, "Kernel")
    common = dict(
        in_channels=conv.in_channels,
        out_channels=conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride[0],
        dilation=conv.dilation[0],
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        dtype=dtype,
    )
    spelling = _torch_padding(conv)
    module: nn.Module
    if spelling is None or conv.activation != "linear":
        module = PaddedConv1d(padding=conv.padding, activation=conv.activation, **common)
    else:
        module = nn.Conv1d(padding=spelling, **common)
    with torch.no_grad():
        module.weight.copy_(to_tensor(conv.kernel))
        if conv.bias is not None:
            module.bias.copy_(to_tensor(conv.bias))
    return module.eval()


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
    if readable is not None:
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
