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
from .conv import Conv1D
from .errors import ConfigError, fail


@dataclass(frozen=True)
class Convention:
    """How raw Conv1D weights were laid out and used.

    ``layout``: axis names (see :mod:`layoutconv.layouts`) or a known layout name.
    ``flipped``: the framework computed a true convolution (Theano), so the
    stored kernel is reversed along K relative to the canonical cross-correlation.
    ``data_format``: the input layout the framework used (``channels_last`` is
    ``(N, L, C)``, ``channels_first`` is ``(N, C, L)``).
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

    def to_canonical_kernel(self, kernel: Any) -> np.ndarray:
        """Raw kernel in this convention -> canonical ``O I K`` cross-correlation kernel."""
        canon = layouts.to_canonical(np.asarray(kernel), self.layout)
        return np.ascontiguousarray(canon[..., ::-1]) if self.flipped else canon

    def from_canonical_kernel(self, kernel: Any) -> np.ndarray:
        """Canonical ``O I K`` kernel -> the raw kernel this convention stores."""
        kernel = np.asarray(kernel)
        if self.flipped:
            kernel = kernel[..., ::-1]
        return layouts.from_canonical(kernel, self.layout)

    def conv1d(self, kernel: Any, bias: Any = None, **hyperparameters: Any) -> Conv1D:
        """Build the canonical :class:`Conv1D` from raw weights in this convention."""
        return Conv1D(self.to_canonical_kernel(kernel), bias, **hyperparameters)


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
