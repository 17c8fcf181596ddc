"""The layers around the convolutions: dense, normalisation, pooling, reshaping and merging records.

Every record here follows the same conventions as :class:`~layoutconv.Conv`:

- data is **channels first**: a tensor is ``(N, C, *spatial)`` (a sequence is
  ``(N, features, time)``), or ``(N, C)`` once flattened.  A layer that Keras
  applies to the last axis (``Dense``, ``BatchNormalization(axis=-1)``,
  ``Concatenate(axis=-1)``) applies here to axis 1;
- weights are stored in PyTorch's layout (``Dense.kernel`` is ``(out, in)``, as
  ``nn.Linear.weight``), read-only, in one float dtype;
- the records are immutable (:class:`~layoutconv.record.Record`), and
  :func:`layoutconv.reference.forward` is the executable definition of each.

Where the source framework's data layout matters to a layer (the order in
which ``Flatten`` lists its elements, the axes ``Reshape`` and ``Permute`` see),
the record says which layout it was written for: ``order="channels_last"`` is
what Keras does, ``"channels_first"`` what PyTorch does.

>>> import numpy as np
>>> from layoutconv import reference
>>> x = np.arange(6.0).reshape(1, 2, 3)                  # (N, C, L): 2 channels, length 3
>>> reference.forward(Flatten("channels_first"), x)      # PyTorch: channel after channel
array([[0., 1., 2., 3., 4., 5.]])
>>> reference.forward(Flatten("channels_last"), x)       # Keras: position after position
array([[0., 3., 1., 4., 2., 5.]])
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Sequence

import numpy as np

from . import activations
from .conv import MAX_EXTENT, _normalise_padding, _positive_tuple
from .errors import ConfigError, ShapeError, fail
from .record import Record, frozen_array

#: The two orders in which a channels-first tensor can be listed by Flatten/Reshape/Permute.
ORDERS = ("channels_last", "channels_first")


def _order(value: Any, name: str = "order") -> str:
    if value not in ORDERS:
        raise fail(ConfigError, f"Invalid value for argument `{name}`", f"one of {ORDERS}", f"{name}={value!r}")
    return value


def _vector(name: str, value: Any, size: int | None, optional: bool = True) -> np.ndarray | None:
    if value is None:
        if optional:
            return None
        raise fail(ConfigError, f"`{name}` is missing", "an array", "None")
    arr = frozen_array(name, value)
    if arr.ndim != 1 or (size is not None and arr.shape[0] != size):
        raise fail(
            ShapeError, f"`{name}` has the wrong shape", f"shape ({size if size is not None else 'C'},)", f"shape {arr.shape}"
        )
    return arr


class Layer(Record):
    """Base of the records in this module: equality by class, weights and hyperparameters."""

    __slots__ = ()

    def hyperparameters(self) -> dict[str, Any]:
        """Everything but the weights, as plain Python values."""
        return {name: getattr(self, name) for name in self.FIELDS}

    @property
    def dtype(self) -> np.dtype | None:
        arrays = [getattr(self, n) for n in self.ARRAYS if getattr(self, n) is not None]
        return arrays[0].dtype if arrays else None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Layer):
            return NotImplemented
        return type(self) is type(other) and self.same_weights(other) and self.hyperparameters() == other.hyperparameters()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        parts = []
        for name in self.ARRAYS:
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={tuple(value.shape)}")
        parts += [f"{k}={v!r}" for k, v in self.hyperparameters().items()]
        if self.dtype is not None:
            parts.append(f"dtype={self.dtype.name}")
        return f"{type(self).__name__}({', '.join(parts)})"


# -- weighted layers ----------------------------------------------------------------------------------


class Dense(Layer):
    """A fully connected layer on the channel axis: ``y[n, o, ...] = a(sum_i W[o, i] x[n, i, ...] + b[o])``.

    ``kernel`` is ``(out_features, in_features)`` (PyTorch ``nn.Linear.weight``;
    a Keras ``Dense`` kernel is its transpose, ``layout="I O"``).  On an input with
    spatial axes it applies at every position, which is what Keras ``Dense`` on a
    3-d input and ``TimeDistributed(Dense)`` do.
    """

    __slots__ = ("kernel", "bias", "activation")
    ARRAYS = ("kernel", "bias")
    FIELDS = ("activation",)

    def __init__(self, kernel: Any, bias: Any = None, *, activation: str | None = "linear", layout: str = "O I") -> None:
        kernel = np.asarray(kernel)
        if layout not in ("O I", "I O"):
            raise fail(ConfigError, "Invalid value for argument `layout`", "'O I' (PyTorch) or 'I O' (Keras)", f"layout={layout!r}")
        if kernel.ndim != 2 or 0 in kernel.shape:
            raise fail(
                ShapeError, "A Dense kernel must be a non-empty matrix", f"shape (out, in) in layout {layout!r}", f"shape {kernel.shape}"
            )
        if layout == "I O":
            kernel = kernel.T
        self._set("kernel", frozen_array("kernel", kernel))
        self._set("bias", _vector("bias", bias, kernel.shape[0]))
        self._set("activation", activations.canonical(activation))

    @property
    def in_channels(self) -> int:
        return int(self.kernel.shape[1])

    @property
    def out_channels(self) -> int:
        return int(self.kernel.shape[0])


class BatchNorm(Layer):
    """Batch normalisation at inference on axis 1: ``y = (x - mean) / sqrt(variance + epsilon) * scale + offset``.

    ``epsilon`` is what the source used (Keras' default is 1e-3, PyTorch's 1e-5:
    a model ported with the wrong one is off by up to ``0.5 * 1e-3 / variance``
    relative).  ``scale`` (Keras ``gamma``) and ``offset`` (``beta``) may be ``None``
    (``scale=False`` / ``center=False`` in Keras).
    """

    __slots__ = ("scale", "offset", "mean", "variance", "epsilon")
    ARRAYS = ("scale", "offset", "mean", "variance")
    FIELDS = ("epsilon",)

    def __init__(self, mean: Any, variance: Any, scale: Any = None, offset: Any = None, *, epsilon: float = 1e-3) -> None:
        mean_arr = _vector("mean", mean, None, optional=False)
        assert mean_arr is not None
        size = mean_arr.shape[0]
        variance_arr = _vector("variance", variance, size, optional=False)
        assert variance_arr is not None
        if (variance_arr.astype(np.float64) < 0).any():
            where = int(np.argmax(variance_arr.astype(np.float64) < 0))
            raise fail(
                ConfigError,
                "A BatchNorm moving variance is negative",
                "variances >= 0",
                f"{variance_arr[where]!r} at channel {where}",
                "The file is corrupt, or mean and variance were swapped.",
            )
        self._set("mean", mean_arr)
        self._set("variance", variance_arr)
        self._set("scale", _vector("scale", scale, size))
        self._set("offset", _vector("offset", offset, size))
        eps = float(epsilon)
        if not (math.isfinite(eps) and eps >= 0):
            raise fail(ConfigError, "Invalid value for argument `epsilon`", "a finite number >= 0", f"epsilon={epsilon!r}")
        self._set("epsilon", eps)

    @property
    def in_channels(self) -> int:
        return int(self.mean.shape[0])

    out_channels = in_channels


class LayerNorm(Layer):
    """Layer normalisation over ``axes`` (channels-first axis numbers, 1 = channels): ``(x - mu) / sqrt(var + eps) * scale + offset``.

    ``mu`` and ``var`` (the biased variance) are taken over ``axes`` for every other
    index; ``scale`` and ``offset`` have the shape of those axes.  Keras'
    ``LayerNormalization()`` (``axis=-1``, epsilon 1e-3) normalises over the
    channels: ``axes=(1,)``.  PyTorch's ``nn.LayerNorm`` (epsilon 1e-5) normalises
    over trailing axes of a channels-last tensor.
    """

    __slots__ = ("scale", "offset", "axes", "epsilon")
    ARRAYS = ("scale", "offset")
    FIELDS = ("axes", "epsilon")

    def __init__(self, scale: Any = None, offset: Any = None, *, axes: Sequence[int] = (1,), epsilon: float = 1e-3) -> None:
        axes_t = tuple(int(a) for a in axes)
        if not axes_t or any(a < 1 for a in axes_t) or len(set(axes_t)) != len(axes_t):
            raise fail(ConfigError, "Invalid value for argument `axes`", "distinct axis numbers >= 1 (0 is the batch)", f"axes={axes!r}")
        self._set("axes", tuple(sorted(axes_t)))
        for name, value in (("scale", scale), ("offset", offset)):
            self._set(name, None if value is None else frozen_array(name, value))
        shapes = {a.shape for a in (self.scale, self.offset) if a is not None}
        if len(shapes) > 1 or any(len(s) != len(axes_t) for s in shapes):
            raise fail(ShapeError, "LayerNorm scale and offset do not fit", f"one shape with {len(axes_t)} axes", f"shapes {sorted(shapes)}")
        eps = float(epsilon)
        if not (math.isfinite(eps) and eps >= 0):
            raise fail(ConfigError, "Invalid value for argument `epsilon`", "a finite number >= 0", f"epsilon={epsilon!r}")
        self._set("epsilon", eps)


class Embedding(Layer):
    """A lookup table: integer ids ``(N, *T)`` give ``weights[ids]`` moved channels first, ``(N, D, *T)``."""

    __slots__ = ("weights",)
    ARRAYS = ("weights",)
    FIELDS = ()

    def __init__(self, weights: Any) -> None:
        weights = frozen_array("weights", weights)
        if weights.ndim != 2 or 0 in weights.shape:
            raise fail(ShapeError, "Embedding weights must be a non-empty matrix", "shape (vocabulary, dimension)", f"shape {weights.shape}")
        self._set("weights", weights)

    @property
    def out_channels(self) -> int:
        return int(self.weights.shape[1])


# -- elementwise and pooling --------------------------------------------------------------------------


class Activation(Layer):
    """A standalone activation (Keras ``Activation``/``ReLU`` layers, PyTorch ``nn.ReLU`` ...), by canonical name."""

    __slots__ = ("activation",)
    FIELDS = ("activation",)

    def __init__(self, activation: str) -> None:
        self._set("activation", activations.canonical(activation))


class Softmax(Layer):
    """``exp(x) / sum(exp(x))`` along ``axis`` (channels-first numbering: 1 is the channel axis, Keras' ``axis=-1``)."""

    __slots__ = ("axis",)
    FIELDS = ("axis",)

    def __init__(self, axis: int = 1) -> None:
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or axis < 1:
            raise fail(ConfigError, "Invalid value for argument `axis`", "an axis number >= 1 (0 is the batch)", f"axis={axis!r}")
        self._set("axis", int(axis))


class Scale(Layer):
    """``y = x * scale + offset`` with two numbers (Keras ``Rescaling``: images from 0..255 to 0..1)."""

    __slots__ = ("scale", "offset")
    FIELDS = ("scale", "offset")

    def __init__(self, scale: float, offset: float = 0.0) -> None:
        for name, value in (("scale", scale), ("offset", offset)):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(float(value)):
                raise fail(ConfigError, f"Invalid value for argument `{name}`", "a finite number", f"{name}={value!r}")
        self._set("scale", float(scale))
        self._set("offset", float(offset))


class Identity(Layer):
    """A layer that passes its input through at inference (Dropout, SpatialDropout, GaussianNoise ...)."""

    __slots__ = ("was",)
    FIELDS = ("was",)

    def __init__(self, was: str = "") -> None:
        self._set("was", str(was))


POOL_KINDS = ("max", "avg")


class Pool(Layer):
    """Max or average pooling over every spatial axis, with ``Conv``'s padding rules.

    ``padding`` is ``"valid"``, ``"same_upper"`` (Keras and TensorFlow ``'same'``),
    ``"same_lower"`` or ``(begin, end)`` pairs (PyTorch's symmetric ``padding=p``).
    Padded cells never win a max.  For an average, ``count_include_pad`` says
    whether padded cells count in the divisor: Keras ``'same'`` does not count
    them, PyTorch ``AvgPool`` does by default: the outputs at the borders differ.
    """

    __slots__ = ("kind", "pool_size", "stride", "padding", "count_include_pad")
    FIELDS = ("kind", "pool_size", "stride", "padding", "count_include_pad")

    def __init__(
        self,
        kind: str,
        pool_size: int | Sequence[int],
        stride: int | Sequence[int] | None = None,
        *,
        padding: Any = "valid",
        count_include_pad: bool = False,
        rank: int | None = None,
    ) -> None:
        if kind not in POOL_KINDS:
            raise fail(ConfigError, "Invalid value for argument `kind`", f"one of {POOL_KINDS}", f"kind={kind!r}")
        if rank is None:
            rank = 1 if isinstance(pool_size, (int, np.integer)) else len(tuple(pool_size))
        if rank not in (1, 2, 3):
            raise fail(ConfigError, "Pooling has 1, 2 or 3 spatial axes", "rank 1, 2 or 3", f"rank {rank}")
        self._set("kind", kind)
        self._set("pool_size", _positive_tuple("pool_size", pool_size, rank))
        self._set("stride", _positive_tuple("stride", self.pool_size if stride is None else stride, rank))
        if padding == "causal":
            raise fail(ConfigError, "Pooling has no causal padding", "'valid', 'same_upper', 'same_lower' or pairs", "padding='causal'")
        self._set("padding", _normalise_padding(padding, rank))
        if isinstance(self.padding, tuple) and any(max(b, e) >= k for (b, e), k in zip(self.padding, self.pool_size)):
            raise fail(
                ConfigError,
                "A pooling pad is as large as the window",
                "pads smaller than the pool size on every axis (a window of padding only has no value)",
                f"padding {self.padding} for pool size {self.pool_size}",
            )
        self._set("count_include_pad", bool(count_include_pad) if kind == "avg" else False)

    @property
    def spatial_rank(self) -> int:
        return len(self.pool_size)

    def pads(self, spatial: Sequence[int]) -> tuple[tuple[int, int], ...]:
        """``(begin, end)`` pads per spatial axis for an input of size ``spatial``."""
        if isinstance(self.padding, tuple):
            return self.padding
        if self.padding == "valid":
            return ((0, 0),) * self.spatial_rank
        out = []
        for size, s, k in zip(spatial, self.stride, self.pool_size):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            small, big = total // 2, total - total // 2
            out.append((small, big) if self.padding == "same_upper" else (big, small))
        return tuple(out)

    def output_shape(self, spatial: Sequence[int]) -> tuple[int, ...]:
        return tuple(
            (n + b + e - k) // s + 1 for n, (b, e), k, s in zip(spatial, self.pads(spatial), self.pool_size, self.stride)
        )


class GlobalPool(Layer):
    """Max or average over every spatial axis: ``(N, C, *spatial)`` gives ``(N, C)``, or ``(N, C, 1, ...)`` with ``keepdims``."""

    __slots__ = ("kind", "keepdims")
    FIELDS = ("kind", "keepdims")

    def __init__(self, kind: str, *, keepdims: bool = False) -> None:
        if kind not in POOL_KINDS:
            raise fail(ConfigError, "Invalid value for argument `kind`", f"one of {POOL_KINDS}", f"kind={kind!r}")
        self._set("kind", kind)
        self._set("keepdims", bool(keepdims))


# -- shape and layout ---------------------------------------------------------------------------------


class Flatten(Layer):
    """``(N, C, *spatial)`` to ``(N, C * prod(spatial))``, listing elements in ``order``.

    ``"channels_last"`` (Keras, TensorFlow) lists position after position, all
    channels of one position together; ``"channels_first"`` (PyTorch
    ``x.flatten(1)`` on an ``(N, C, L)`` tensor) lists channel after channel.
    The Dense layer after a Flatten sees its inputs in that order, so porting it
    across the two needs its columns permuted: the most common silent error of
    model ports.
    """

    __slots__ = ("order",)
    FIELDS = ("order",)

    def __init__(self, order: str = "channels_last") -> None:
        self._set("order", _order(order))


def _target_shape(shape: Any) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in shape)
    except (TypeError, ValueError):
        out = ()
    if not out or out.count(-1) > 1 or any(v == 0 or v < -1 or v > MAX_EXTENT for v in out):
        raise fail(
            ConfigError, "Invalid value for argument `shape`", "positive sizes without the batch axis, at most one -1", f"shape={shape!r}"
        )
    return out


class Reshape(Layer):
    """Reshape every sample to ``shape`` (without the batch axis), as the source framework saw its data.

    ``order="channels_last"`` (Keras ``Reshape``): the input is listed channels
    last, reshaped to ``shape``, and the last axis of ``shape`` is the result's
    channel axis.  ``"channels_first"`` (PyTorch ``view``/``reshape``): the
    channels-first data is reshaped directly.
    """

    __slots__ = ("shape", "order")
    FIELDS = ("shape", "order")

    def __init__(self, shape: Sequence[int], order: str = "channels_last") -> None:
        self._set("shape", _target_shape(shape))
        self._set("order", _order(order))


class Permute(Layer):
    """Permute the non-batch axes (``dims`` numbers them from 1, as Keras ``Permute`` does), in the source's layout.

    With ``order="channels_last"`` (Keras), ``dims`` applies to the channels-last
    view of the data and the result's last axis is its channel axis.
    """

    __slots__ = ("dims", "order")
    FIELDS = ("dims", "order")

    def __init__(self, dims: Sequence[int], order: str = "channels_last") -> None:
        dims_t = tuple(int(d) for d in dims)
        if sorted(dims_t) != list(range(1, len(dims_t) + 1)):
            raise fail(ConfigError, "Invalid value for argument `dims`", "a permutation of 1..rank (batch excluded)", f"dims={dims!r}")
        self._set("dims", dims_t)
        self._set("order", _order(order))


def _pairs(name: str, value: Any) -> tuple[tuple[int, int], ...]:
    try:
        pairs = tuple((int(b), int(e)) for b, e in value)
        ok = 1 <= len(pairs) <= 3 and all(0 <= v <= MAX_EXTENT for p in pairs for v in p)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise fail(ConfigError, f"Invalid value for argument `{name}`", "one (begin, end) pair of integers >= 0 per spatial axis", f"{name}={value!r}")
    return pairs


class Pad(Layer):
    """Constant padding of the spatial axes (Keras ``ZeroPadding*D``): one ``(begin, end)`` pair per axis."""

    __slots__ = ("pads", "value")
    FIELDS = ("pads", "value")

    def __init__(self, pads: Sequence[tuple[int, int]], value: float = 0.0) -> None:
        self._set("pads", _pairs("pads", pads))
        self._set("value", float(value))


class Crop(Layer):
    """Cropping of the spatial axes (Keras ``Cropping*D``): ``(begin, end)`` elements removed per axis."""

    __slots__ = ("crops",)
    FIELDS = ("crops",)

    def __init__(self, crops: Sequence[tuple[int, int]]) -> None:
        self._set("crops", _pairs("crops", crops))


#: Merge operations and what they compute over their inputs ``x1, x2, ...``.
MERGE_OPS = ("add", "subtract", "multiply", "average", "maximum", "minimum", "concatenate")


class Merge(Layer):
    """Combine several inputs elementwise (``add`` ... ``minimum``) or by ``concatenate`` along ``axis`` (channels first: 1 = channels).

    ``subtract`` takes exactly two inputs (``x1 - x2``).  Keras 1 ``Merge`` modes map
    as ``sum`` to add, ``mul`` to multiply, ``ave`` to average, ``max`` to maximum,
    ``concat`` to concatenate.
    """

    __slots__ = ("op", "axis")
    FIELDS = ("op", "axis")
    MIN_INPUTS: ClassVar[int] = 2

    def __init__(self, op: str, axis: int = 1) -> None:
        if op not in MERGE_OPS:
            raise fail(ConfigError, "Invalid value for argument `op`", f"one of {MERGE_OPS}", f"op={op!r}")
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or axis < 1:
            raise fail(ConfigError, "Invalid value for argument `axis`", "an axis number >= 1 (0 is the batch)", f"axis={axis!r}")
        self._set("op", op)
        self._set("axis", int(axis))


#: Every record kind of this module.
LAYERS = (Dense, BatchNorm, LayerNorm, Embedding, Activation, Softmax, Scale, Identity, Pool, GlobalPool, Flatten, Reshape, Permute, Pad, Crop, Merge)
