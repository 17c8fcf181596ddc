"""Keras weight files without TensorFlow: Keras 1.0-1.2, Keras 2 / tf.keras ``.h5``, Keras 3 ``.keras`` and ``.weights.h5``.

>>> import layoutconv
>>> kf = layoutconv.open("model.h5")          # identifies format, version, backend   # doctest: +SKIP
>>> print(kf.summary())                       # doctest: +SKIP
>>> conv = kf.conv1d()                        # canonical Conv1D, Theano kernels flipped  # doctest: +SKIP
>>> rec = kf.conv("conv2d")                   # any conv layer (Keras 1 Convolution2D too): Conv, ConvTranspose or Chain  # doctest: +SKIP
>>> module = layoutconv.to_torch(conv)        # doctest: +SKIP

Only numpy is imported here; h5py is imported when a file is opened.  Every
file is checked before it is read (see ``docs/keras-legacy.md``, "Safety").
"""

from __future__ import annotations

from .formats import FORMATS, Layer, Weight
from .reader import DEFAULTS, KerasFile, from_keras1, inspect_text
from .reader import open_file as open  # noqa: A001  (layoutconv.open mirrors the builtin's name on purpose)
from .semantics import BACKEND_FLIPS, canonical_padding, theano_same_pads

__all__ = [
    "open",
    "from_keras1",
    "inspect_text",
    "KerasFile",
    "Layer",
    "Weight",
    "FORMATS",
    "DEFAULTS",
    "BACKEND_FLIPS",
    "canonical_padding",
    "theano_same_pads",
]
