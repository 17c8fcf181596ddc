"""Conventions: how a framework stored a kernel and what its forward pass did with it.

A :class:`Convention` is the small record that says how to read raw weights:
the kernel's axis names, whether the framework convolved (flipped the kernel,
as Theano did) or cross-correlated, and which input layout it used.  Legacy
readers attach one to what they read, ``explain`` uses it to print the
by-hand formula in the source framework's own terms, and ``diagnose`` searches
over them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import layouts
from .conv import Conv, Conv1D
from .errors import ConfigError, fail


@dataclass(frozen=True)
class Convention:
    """How raw convolution weights were laid out and used.

    ``layout``: axis names (see :mod:`layoutconv.layouts`) or a known layout name;
    its spatial axes give the rank.
    ``flipped``: the framework computed a true convolution (Theano), so the
    stored kernel is reversed along every spatial axis relative to the canonical
    cross-correlation (what Keras 2's ``convert_all_kernels_in_model`` undid).
    ``data_format``: the input layout the framework used (``channels_last`` is
    ``(N, *spatial, C)``, ``channels_first`` is ``(N, C, *spatial)``).
    """

    name: str
    layout: str
    flipped: bool = False
    data_format: str = "channels_last"

    def __post_init__(self) -> None:
        layouts.parse(self.layout)
        if self.data_format not in ("channels_last", "channels_first"):
            raise fail(
                ConfigError,
                "Invalid data_format",
                "'channels_last' or 'channels_first'",
                f"{self.data_format!r}",
            )

    @property
    def rank(self) -> int:
        """Number of spatial axes of the kernels this convention describes."""
        return layouts.parse(self.layout).rank

    def to_canonical_kernel(self, kernel: Any) -> np.ndarray:
        """Raw kernel in this convention -> canonical ``O I spatial...`` cross-correlation kernel."""
        canon = layouts.to_canonical(np.asarray(kernel), self.layout)
        return np.ascontiguousarray(_flip_spatial(canon)) if self.flipped else canon

    def from_canonical_kernel(self, kernel: Any) -> np.ndarray:
        """Canonical ``O I spatial...`` kernel -> the raw kernel this convention stores."""
        kernel = np.asarray(kernel)
        if self.flipped:
            kernel = _flip_spatial(kernel)
        return layouts.from_canonical(kernel, self.layout)

    def conv(self, kernel: Any, bias: Any = None, **hyperparameters: Any) -> Conv:
        """Build the canonical :class:`~layoutconv.Conv` (any rank) from raw weights in this convention."""
        return Conv(self.to_canonical_kernel(kernel), bias, **hyperparameters)

    def conv1d(self, kernel: Any, bias: Any = None, **hyperparameters: Any) -> Conv1D:
        """Build the canonical :class:`Conv1D` from raw weights in this convention."""
        return Conv1D(self.to_canonical_kernel(kernel), bias, **hyperparameters)


def _flip_spatial(kernel: np.ndarray) -> np.ndarray:
    """Reverse every spatial axis (2 onwards) of a canonical kernel."""
    return np.flip(kernel, axis=tuple(range(2, kernel.ndim)))


#: The conventions layoutconv knows by name.
CONVENTIONS: dict[str, Convention] = {
    c.name: c
    for c in (
        Convention("torch", "O I K", False, "channels_first"),
        Convention("onnx", "O I K", False, "channels_first"),
        Convention("keras", "K I O", False, "channels_last"),
        Convention("keras-theano", "K I O", True, "channels_last"),
        Convention("keras1.1-tensorflow", "K 1 I O", False, "channels_last"),
        Convention("keras1.1-theano", "K 1 I O", True, "channels_last"),
        Convention("keras1.0-tensorflow", "O I K 1", False, "channels_last"),
        Convention("keras1.0-theano", "O I K 1", True, "channels_last"),
    )
}

#: Conventions of 2-d and 3-d kernels (``explain`` at every rank; the Keras 1 2-d readers).
CONVENTIONS_ND: dict[str, Convention] = {
    c.name: c
    for c in (
        Convention("torch2d", "O I H W", False, "channels_first"),
        Convention("keras2d", "H W I O", False, "channels_last"),
        Convention("keras2d-theano", "H W I O", True, "channels_last"),
        Convention("keras1-th2d-theano", "O I H W", True, "channels_first"),  # Keras 1 dim_ordering='th' on Theano
        Convention("torch3d", "O I D H W", False, "channels_first"),
        Convention("keras3d", "D H W I O", False, "channels_last"),
    )
}


def for_rank(name: str, rank: int) -> Convention:
    """The convention ``name`` (``"torch"``, ``"keras"``, ``"keras-theano"``...) for kernels of ``rank`` spatial axes."""
    if rank == 1:
        return CONVENTIONS[name]
    base = {"torch": "torch", "onnx": "torch", "keras": "keras", "keras-theano": "keras2d-theano"}.get(name)
    wanted = {("torch", 2): "torch2d", ("torch", 3): "torch3d", ("keras", 2): "keras2d", ("keras", 3): "keras3d",
              ("keras2d-theano", 2): "keras2d-theano"}.get((base or "", rank))
    if wanted is None:
        raise fail(
            ConfigError,
            f"No {rank}-d form of convention {name!r}",
            "torch, onnx, keras or (2-d) keras-theano",
            f"{name!r}",
        )
    return CONVENTIONS_ND[wanted]
