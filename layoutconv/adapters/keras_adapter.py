"""The Keras 3 adapter: Keras convolution layers <-> layoutconv records, bit for bit, at every rank.

``Conv1D/2D/3D`` and ``DepthwiseConv1D/2D`` are :class:`~layoutconv.Conv` records,
``Conv1D/2D/3DTranspose`` are :class:`~layoutconv.ConvTranspose`, and
``SeparableConv1D/2D`` are a :class:`~layoutconv.Chain` (depthwise, then
pointwise).  Works on any Keras 3 backend (the tests run TensorFlow and
PyTorch).  The implementation is shared with the tf_keras adapter; see
:mod:`layoutconv.adapters._keras_common` for the tables and the framework
facts it relies on.

>>> record = from_native(layer)                               # doctest: +SKIP
>>> layer2 = to_native(record, data_format="channels_first")  # doctest: +SKIP
>>> y = run(layer2, x)            # x: (N, C, *spatial) numpy  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from .. import registry as _registry
from ..chain import Chain
from ..conv import Conv
from ..transpose import ConvTranspose
from . import _keras_common as _common

NAME = "keras"
REQUIRES = ("keras", "tensorflow")
_FLAVOUR = _common.Flavour(NAME, keras)


def from_native(layer: Any) -> Conv | ConvTranspose | Chain:
    """A built Keras 3 convolution layer (any kind, rank, data_format, dtype, padding) or a model from :func:`to_native`."""
    if keras_recurrent.reads(_FLAVOUR, layer):  # recurrent layers: layoutconv.adapters.keras_recurrent
        return keras_recurrent.from_native(_FLAVOUR, layer)
    return _common.from_native(_FLAVOUR, layer)


def to_native(record: Conv | ConvTranspose | Chain, data_format: str = "channels_last", length: Any = None) -> Any:
    """A built Keras 3 layer (or a small ``Sequential`` with padding or cropping layers) computing ``record``.

    Parameters
    ----------
    record:
        A :class:`~layoutconv.Conv` (a depthwise one, ``groups == in_channels``, becomes a
        ``DepthwiseConv1D/2D``), a :class:`~layoutconv.ConvTranspose`, or a
        :class:`~layoutconv.Chain` (depthwise then pointwise becomes a ``SeparableConv1D/2D``).
    data_format:
        ``"channels_last"`` (input ``(N, *spatial, C)``) or ``"channels_first"`` (``(N, C, *spatial)``).
        On TensorFlow without a GPU, a channels_first layer runs only under
        ``tf.function(..., jit_compile=True)``; :func:`run` does that for you.
    length:
        Only for ``"same_lower"`` with stride > 1, which Keras cannot express: the
        model gets explicit pads for inputs of exactly this size (an int, or one per spatial axis).
    """
    return _common.to_native(_FLAVOUR, record, data_format, length)


def run(native: Any, x: Any) -> np.ndarray:
    """Apply ``native`` to ``x`` given as ``(N, C, *spatial)`` numpy; return ``(N, O, *spatial_out)`` numpy."""
    if keras_recurrent.reads(_FLAVOUR, native):  # a recurrent layer takes (N, T, F): layoutconv.adapters.keras_recurrent
        return keras_recurrent.run(_FLAVOUR, native, x)
    return _common.run(_FLAVOUR, native, x)


for _kind in (Conv, ConvTranspose, Chain):
    _registry.register(_kind, NAME, to_native=to_native, run=run)

from . import keras_recurrent  # noqa: E402  (SimpleRNN, LSTM, GRU, Bidirectional)

keras_recurrent.register(_FLAVOUR)
from . import keras_layers  # noqa: E402,F401  (registers the layer and graph converters of both Keras flavours)
