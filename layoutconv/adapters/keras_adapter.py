"""The Keras 3 adapter: ``keras.layers.Conv1D`` <-> :class:`~layoutconv.Conv1D`, bit for bit.

Works on any Keras 3 backend (the tests run TensorFlow and PyTorch).  The
implementation is shared with the tf_keras adapter; see
:mod:`layoutconv.adapters._keras_common` for the padding table and the
framework facts it relies on.

>>> conv = from_native(layer)                              # doctest: +SKIP
>>> layer2 = to_native(conv, data_format="channels_first") # doctest: +SKIP
>>> y = run(layer2, x)            # x: (N, C, L) numpy      # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from .. import registry as _registry
from ..conv import Conv1D
from . import _keras_common as _common

NAME = "keras"
REQUIRES = ("keras", "tensorflow")
_FLAVOUR = _common.Flavour(NAME, keras)


def from_native(layer: Any) -> Conv1D:
    """A built ``keras.layers.Conv1D`` (any data_format, dtype, padding) or a model from :func:`to_native`."""
    return _common.from_native(_FLAVOUR, layer)


def to_native(conv: Conv1D, data_format: str = "channels_last", length: int | None = None) -> Any:
    """A built Keras 3 ``Conv1D`` (or a ``Sequential`` with ``ZeroPadding1D`` in front) holding ``conv``'s weights.

    Parameters
    ----------
    conv:
        The canonical convolution.
    data_format:
        ``"channels_last"`` (input ``(N, L, C)``) or ``"channels_first"`` (``(N, C, L)``).
        On TensorFlow without a GPU, a channels_first layer runs only under
        ``tf.function(..., jit_compile=True)``; :func:`run` does that for you.
    length:
        Only for ``"same_lower"`` with stride > 1, which Keras cannot express: the
        model gets explicit pads for inputs of exactly this length.
    """
    return _common.to_native(_FLAVOUR, conv, data_format, length)


def run(native: Any, x: Any) -> np.ndarray:
    """Apply ``native`` to ``x`` given as ``(N, C, L)`` numpy; return ``(N, O, L_out)`` numpy."""
    return _common.run(_FLAVOUR, native, x)


_registry.register(Conv1D, NAME, to_native=to_native, run=run)
