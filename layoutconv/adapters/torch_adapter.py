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

A :class:`PaddedConv1d` keeps its weights in an ordinary ``nn.Conv1d`` at
``.conv`` (built with ``padding=0``) and pads in ``forward``.  To move the
weights into a module of your own::

    module = layoutconv.to_torch(conv)
    mine = torch.nn.Conv1d(conv.in_channels, conv.out_channels, conv.kernel_size,
                           stride=conv.stride[0], dilation=conv.dilation[0],
                           groups=conv.groups, bias=conv.bias is not None, padding=0)
    mine.load_state_dict(conv1d_module(module).state_dict())
    # a PaddedConv1d pads in forward; do the same before calling `mine`:
    begin, end = module.pads(x.shape[-1])
    y = mine(torch.nn.functional.pad(x, (begin, end), mode=PAD_MODES[module.padding_mode]))

``conv1d_module(module)`` returns the ``nn.Conv1d`` that holds the weights in
either case.

Facts established by experiment (torch 2.13, CPU): ``conv1d`` runs in float16,
bfloat16, float32 and float64; ``padding="same"`` pads ``total // 2`` at the
beginning and the rest at the end, and is refused for stride > 1;
``F.pad`` reflect needs pads < length, circular needs pads <= length.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import reference
from ..conv import PADDING_MODES, Conv1D
from ..errors import ConfigError, FrameworkMissingError, UnsupportedError, fail

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

_ACCEPTED = "torch.nn.Conv1d or layoutconv's PaddedConv1d (what to_native returns)"


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


# -- the one padding formula -------------------------------------------------
def _geometry(conv: nn.Conv1d, padding: Any) -> Conv1D:
    """A weightless stand-in for ``conv`` whose ``pads()``/``receptive_field`` are layoutconv's own.

    The kernel is a zero placeholder of the right size: only stride, dilation,
    kernel size and the padding rule enter :meth:`Conv1D.pads`, so the module
    and the reference pass share one formula.
    """
    return Conv1D(
        np.zeros((1, 1, conv.kernel_size[0]), np.float32),
        stride=conv.stride[0],
        dilation=conv.dilation[0],
        padding=padding,
    )


class PaddedConv1d(nn.Module):
    """``nn.Conv1d`` with every layoutconv padding rule: pads in ``forward``, then convolves with ``.conv``.

    >>> m = PaddedConv1d(3, 8, 4, stride=2, padding="same_lower")   # doctest: +SKIP
    >>> m.pads(11)                                                  # doctest: +SKIP
    (2, 1)

    Parameters are those of ``nn.Conv1d``, except ``padding``: ``"valid"``,
    ``"same_upper"``, ``"same_lower"``, ``"causal"``, an int or a ``(begin, end)``
    pair (see :class:`~layoutconv.Conv1D`).  Pads that depend on the input
    length are recomputed on every call, so the module is not TorchScript-able
    and a traced export bakes in the traced length; export with
    ``layoutconv.to_onnx`` instead.
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
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        if padding_mode not in PAD_MODES:
            raise fail(
                ConfigError,
                "Invalid value for argument `padding_mode`",
                f"one of {PADDING_MODES}",
                f"padding_mode={padding_mode!r}",
            )
        self.conv = nn.Conv1d(
            in_channels, out_channels, kernel_size, stride=stride, padding=0, dilation=dilation,
            groups=groups, bias=bias, device=device, dtype=dtype,
        )
        # Plain, picklable values only (a Conv1D refuses deepcopy); normalised by Conv1D.
        self.padding = _geometry(self.conv, padding).padding
        self.padding_mode = padding_mode

    def pads(self, length: int) -> tuple[int, int]:
        """``(begin, end)`` pads for an input of this length (:meth:`Conv1D.pads`)."""
        ((begin, end),) = _geometry(self.conv, self.padding).pads(int(length))
        return begin, end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        begin, end = self.pads(x.shape[-1])
        if begin or end:
            x = F.pad(x, (begin, end), mode=PAD_MODES[self.padding_mode])
        return self.conv(x)

    def extra_repr(self) -> str:
        return f"padding={self.padding!r}, padding_mode={self.padding_mode!r}"


# -- reading a module ----------------------------------------------------------
def _overrides_conv1d(module: nn.Module) -> bool:
    """True when a ``nn.Conv1d`` subclass computes something else (QAT, custom forward, ...)."""
    cls = type(module)
    return cls.forward is not nn.Conv1d.forward or cls._conv_forward is not nn.Conv1d._conv_forward


def _unwrap(module: Any) -> tuple[nn.Conv1d, Any, str]:
    """The ``nn.Conv1d`` holding the weights, the canonical padding and the padding mode."""
    wrapper = type(module)
    if isinstance(module, PaddedConv1d) and wrapper.forward is PaddedConv1d.forward and wrapper.pads is PaddedConv1d.pads:
        inner = module.conv
        if not isinstance(inner, nn.Conv1d) or _overrides_conv1d(inner) or inner.padding != (0,):
            raise fail(
                ConfigError,
                "PaddedConv1d.conv was changed",
                "a plain nn.Conv1d with padding=0 (the wrapper does the padding)",
                f"{inner!r}",
                "Rebuild the module with layoutconv.to_torch.",
            )
        return inner, module.padding, module.padding_mode
    if isinstance(module, nn.Conv1d) and not _overrides_conv1d(module):
        if nn.parameter.is_lazy(module.weight):
            raise fail(
                ConfigError,
                "Lazy convolution has no weights yet",
                "an initialised module",
                f"{type(module).__name__} with uninitialised weights",
                "Run it once on an input (or load a state dict) first.",
            )
        if isinstance(module.padding, str):
            padding: Any = _TORCH_RULES[module.padding]
        else:
            padding = ((module.padding[0], module.padding[0]),)
        return module, padding, module.padding_mode
    raise fail(
        UnsupportedError,
        "Not a 1-d convolution layoutconv can read",
        _ACCEPTED + " (subclasses must not override forward)",
        f"{type(module).__module__}.{type(module).__qualname__}",
        "ConvTranspose1d, Conv2d and quantized/QAT convolutions are not supported.",
    )


def conv1d_module(module: Any) -> nn.Conv1d:
    """The ``nn.Conv1d`` that holds the weights: ``module`` itself, or ``module.conv`` for a :class:`PaddedConv1d`.

    Use it to copy weights into your own module:
    ``mine.load_state_dict(conv1d_module(module).state_dict())``.
    """
    return _unwrap(module)[0]


def from_native(module: Any) -> Conv1D:
    """A ``nn.Conv1d`` (any padding, padding_mode and float dtype) or a :class:`PaddedConv1d` as a :class:`Conv1D`.

    Weights are copied with their dtype and bytes unchanged.
    """
    inner, padding, padding_mode = _unwrap(module)
    kernel = to_numpy(inner.weight)
    bias = None if inner.bias is None else to_numpy(inner.bias)
    return Conv1D(
        kernel,
        bias,
        stride=inner.stride[0],
        dilation=inner.dilation[0],
        groups=inner.groups,
        padding=padding,
        padding_mode=padding_mode,
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

    A plain ``nn.Conv1d`` when PyTorch can express the padding, else a
    :class:`PaddedConv1d` (see the module docstring for the table).
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
    if spelling is None:
        module = PaddedConv1d(padding=conv.padding, **common)
    else:
        module = nn.Conv1d(padding=spelling, **common)
    holder = conv1d_module(module)
    with torch.no_grad():
        holder.weight.copy_(to_tensor(conv.kernel))
        if conv.bias is not None:
            holder.bias.copy_(to_tensor(conv.bias))
    return module.eval()


# -- running ---------------------------------------------------------------------
def run(native: Any, x: Any) -> np.ndarray:
    """Apply ``native`` to ``x`` ``(N, C, L)`` under ``torch.no_grad()``; return ``(N, O, L_out)`` numpy.

    ``x`` is cast to the module's dtype; the result has that dtype
    (``ml_dtypes.bfloat16`` for a bfloat16 module).
    """
    inner = conv1d_module(native)
    x = np.asarray(x)
    dtype = _numpy_dtype(inner.weight.dtype, "Module")
    if x.dtype.kind not in "fiu" and x.dtype.name not in TORCH_DTYPES:
        raise fail(
            ConfigError,
            "Input is not numeric",
            "a float (or integer) array",
            f"dtype {x.dtype}",
            f"Cast it, e.g. x.astype({dtype.name!r}).",
        )
    reference.check_input(from_native(native), x)
    tensor = to_tensor(x.astype(dtype, copy=False)).to(inner.weight.device)
    with torch.no_grad():
        y = native(tensor)
    return to_numpy(y)
