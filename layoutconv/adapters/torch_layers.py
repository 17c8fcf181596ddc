"""PyTorch modules for the layer records (:mod:`layoutconv.layers`) and whole graphs (:class:`GraphModule`).

Every module here computes on channels-first tensors, as the reference does.
Weighted layers become the standard modules (``nn.Linear``, ``nn.BatchNorm1d``,
``nn.LayerNorm``, ``nn.Embedding``), so a generated model's ``state_dict`` has
the keys a hand-written one would have; the :class:`GraphModule` moves the
channel axis last around the modules that want it there (``nn.Linear`` on a
sequence, ``nn.LayerNorm``, recurrent layers) and back.

The layers PyTorch has no module for (a Keras-order ``Flatten``, a merge, a
``'same'`` pooling whose pads depend on the input size) are small modules
defined here, with no parameters.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import graph as graph_module, layers, registry
from ..errors import ConfigError, ShapeError, UnsupportedError, fail
from ..graph import Graph, attribute_name
from . import torch_adapter as base

# -- parameterless modules ---------------------------------------------------------------------------


class Activation(nn.Module):
    """A canonical activation by name (see :mod:`layoutconv.activations`)."""

    def __init__(self, activation: str) -> None:
        super().__init__()
        self.activation = activation
        self._fn = base.TORCH_ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(x)

    def extra_repr(self) -> str:
        return repr(self.activation)


#: canonical activation -> a standard torch module when one computes exactly it
_STANDARD_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "linear": nn.Identity,
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "gelu": nn.GELU,
    "swish": nn.SiLU,
    "softsign": nn.Softsign,
    "mish": nn.Mish,
    "hard_sigmoid_keras3": nn.Hardsigmoid,
    "hard_silu": nn.Hardswish,
}


def activation_module(name: str) -> nn.Module:
    """``nn.ReLU()`` etc. when torch has the exact module, else an :class:`Activation`."""
    make = _STANDARD_ACTIVATIONS.get(name)
    return make() if make is not None else Activation(name)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.movedim(1, -1) if x.dim() > 2 else x


def _channels_first(x: torch.Tensor) -> torch.Tensor:
    return x.movedim(-1, 1) if x.dim() > 2 else x


class Flatten(nn.Module):
    """``(N, C, *spatial)`` to ``(N, -1)`` in ``order``: ``"channels_last"`` lists position after position (Keras)."""

    def __init__(self, order: str) -> None:
        super().__init__()
        self.order = order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (_channels_last(x) if self.order == "channels_last" else x).flatten(1)

    def extra_repr(self) -> str:
        return f"order={self.order!r}"


class Reshape(nn.Module):
    """Reshape each sample to ``shape`` as the source saw it (see :class:`layoutconv.layers.Reshape`)."""

    def __init__(self, shape: tuple[int, ...], order: str) -> None:
        super().__init__()
        self.shape, self.order = tuple(shape), order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.order == "channels_first":
            return x.reshape((x.shape[0],) + self.shape)
        return _channels_first(_channels_last(x).reshape((x.shape[0],) + self.shape))


class Permute(nn.Module):
    """Permute the non-batch axes as the source saw them (see :class:`layoutconv.layers.Permute`)."""

    def __init__(self, dims: tuple[int, ...], order: str) -> None:
        super().__init__()
        self.dims, self.order = tuple(dims), order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.order == "channels_first":
            return x.permute((0,) + self.dims)
        return _channels_first(_channels_last(x).permute((0,) + self.dims))


class Pad(nn.Module):
    """Constant padding of the spatial axes, ``(begin, end)`` per axis."""

    def __init__(self, pads: tuple[tuple[int, int], ...], value: float = 0.0) -> None:
        super().__init__()
        self.pads, self.value = pads, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, [v for pair in reversed(self.pads) for v in pair], value=self.value)


class Crop(nn.Module):
    """Cropping of the spatial axes, ``(begin, end)`` per axis."""

    def __init__(self, crops: tuple[tuple[int, int], ...]) -> None:
        super().__init__()
        self.crops = crops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        where = tuple(slice(b, n - e) for n, (b, e) in zip(x.shape[2:], self.crops))
        return x[(slice(None), slice(None)) + where]


class Merge(nn.Module):
    """Several inputs combined: add, subtract, multiply, average, maximum, minimum, or concatenate along ``axis``."""

    def __init__(self, op: str, axis: int = 1) -> None:
        super().__init__()
        self.op, self.axis = op, axis

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.op == "concatenate":
            return torch.cat(xs, dim=self.axis)
        if self.op == "subtract":
            return xs[0] - xs[1]
        out = xs[0]
        for x in xs[1:]:
            if self.op in ("add", "average"):
                out = out + x
            elif self.op == "multiply":
                out = out * x
            elif self.op == "maximum":
                out = torch.maximum(out, x)
            else:
                out = torch.minimum(out, x)
        return out / len(xs) if self.op == "average" else out

    def extra_repr(self) -> str:
        return f"{self.op!r}" + (f", axis={self.axis}" if self.op == "concatenate" else "")


class Scale(nn.Module):
    """``x * scale + offset`` (Keras ``Rescaling``)."""

    def __init__(self, scale: float, offset: float) -> None:
        super().__init__()
        self.scale, self.offset = scale, offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.offset

    def extra_repr(self) -> str:
        return f"scale={self.scale}, offset={self.offset}"


class GlobalPool(nn.Module):
    """Max or mean over every spatial axis."""

    def __init__(self, kind: str, keepdims: bool = False) -> None:
        super().__init__()
        self.kind, self.keepdims = kind, keepdims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, x.dim()))
        if self.kind == "max":
            return x.amax(dim=dims, keepdim=self.keepdims)
        return x.mean(dim=dims, keepdim=self.keepdims)


class Pool(nn.Module):
    """Pooling whose padding torch's own modules cannot express (asymmetric, size-dependent, or not counted).

    Max pooling pads with ``-inf``; average pooling divides by the number of
    real cells in each window unless ``count_include_pad``.
    """

    def __init__(self, record: layers.Pool) -> None:
        super().__init__()
        self.record = record
        rank = record.spatial_rank
        self._max = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[rank]
        self._avg = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[rank]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.record
        pads = r.pads(tuple(int(n) for n in x.shape[2:]))
        flat = [v for pair in reversed(pads) for v in pair]
        if r.kind == "max":
            return self._max(F.pad(x, flat, value=-math.inf), r.pool_size, r.stride)
        total = self._avg(F.pad(x, flat), r.pool_size, r.stride)
        if r.count_include_pad or not any(flat):
            return total
        ones = F.pad(torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device), flat)
        return total / self._avg(ones, r.pool_size, r.stride)

    def extra_repr(self) -> str:
        return repr(self.record)


_MAX_POOLS = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_AVG_POOLS = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}


def _pool(record: layers.Pool) -> nn.Module:
    pads = record.padding
    symmetric = pads == "valid" or (
        isinstance(pads, tuple) and all(b == e and 2 * b <= k for (b, e), k in zip(pads, record.pool_size))
    )
    if not symmetric:
        return Pool(record)
    p = 0 if pads == "valid" else tuple(b for b, _ in pads)
    if record.kind == "max":
        return _MAX_POOLS[record.spatial_rank](record.pool_size, record.stride, padding=p)
    return _AVG_POOLS[record.spatial_rank](record.pool_size, record.stride, padding=p, count_include_pad=record.count_include_pad)


# -- weighted layers ---------------------------------------------------------------------------------


def _param(array: np.ndarray) -> nn.Parameter:
    return nn.Parameter(base.to_tensor(array), requires_grad=False)


class Linear(nn.Linear):
    """``nn.Linear`` followed by a fused activation (Keras ``Dense(activation=...)``); ``state_dict`` keys ``weight``, ``bias``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear", dtype: Any = None) -> None:
        super().__init__(in_features, out_features, bias=bias, dtype=dtype)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return base.TORCH_ACTIVATIONS[self.activation](super().forward(x))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", activation={self.activation!r}"


def _dense(record: layers.Dense) -> nn.Module:
    dtype = base.TORCH_DTYPES[record.dtype.name]
    if record.activation == "linear":
        linear = nn.Linear(record.in_channels, record.out_channels, bias=record.bias is not None, dtype=dtype)
    else:
        linear = Linear(record.in_channels, record.out_channels, record.bias is not None, record.activation, dtype=dtype)
    linear.weight = _param(record.kernel)
    if record.bias is not None:
        linear.bias = _param(record.bias)
    return linear


class BatchNorm(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` that also takes 4-d and 5-d input (inference is the same per-channel formula)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-d input (got {input.dim()}-d)")


def _batch_norm(record: layers.BatchNorm) -> nn.Module:
    dtype = record.mean.dtype
    bn = BatchNorm(record.in_channels, eps=record.epsilon, affine=True, dtype=base.TORCH_DTYPES[dtype.name])
    # a missing scale/offset (Keras scale=False / center=False) is exactly 1 / 0
    bn.weight = _param(record.scale if record.scale is not None else np.ones_like(record.mean))
    bn.bias = _param(record.offset if record.offset is not None else np.zeros_like(record.mean))
    bn.running_mean = base.to_tensor(record.mean)
    bn.running_var = base.to_tensor(record.variance)
    return bn.eval()


def _layer_norm(record: layers.LayerNorm) -> nn.Module:
    if record.axes != (1,):
        raise fail(
            UnsupportedError,
            "PyTorch's LayerNorm normalises trailing axes; only normalisation over the channels is generated yet",
            "LayerNorm(axes=(1,)) (Keras LayerNormalization(axis=-1))",
            f"axes={record.axes}",
        )
    size = next((a.shape[0] for a in (record.scale, record.offset) if a is not None), None)
    if size is None:
        raise fail(UnsupportedError, "A LayerNorm without scale and offset has no size to build from", "scale or offset", "neither")
    dtype = next(a.dtype for a in (record.scale, record.offset) if a is not None)
    ln = nn.LayerNorm(size, eps=record.epsilon, dtype=base.TORCH_DTYPES[dtype.name])
    ln.weight = _param(record.scale if record.scale is not None else np.ones(size, dtype))
    ln.bias = _param(record.offset if record.offset is not None else np.zeros(size, dtype))
    return ln


def _embedding(record: layers.Embedding) -> nn.Module:
    emb = nn.Embedding(*record.weights.shape, dtype=base.TORCH_DTYPES[record.weights.dtype.name])
    emb.weight = _param(record.weights)
    return emb


_MAKERS: dict[type, Callable[[Any], nn.Module]] = {
    layers.Dense: _dense,
    layers.BatchNorm: _batch_norm,
    layers.LayerNorm: _layer_norm,
    layers.Embedding: _embedding,
    layers.Activation: lambda r: activation_module(r.activation),
    layers.Softmax: lambda r: nn.Softmax(dim=r.axis),
    layers.Identity: lambda r: nn.Identity(),
    layers.Scale: lambda r: Scale(r.scale, r.offset),
    layers.Pool: _pool,
    layers.GlobalPool: lambda r: GlobalPool(r.kind, r.keepdims),
    layers.Flatten: lambda r: Flatten(r.order),
    layers.Reshape: lambda r: Reshape(r.shape, r.order),
    layers.Permute: lambda r: Permute(r.dims, r.order),
    layers.Pad: lambda r: Pad(r.pads, r.value),
    layers.Crop: lambda r: Crop(r.crops),
    layers.Merge: lambda r: Merge(r.op, r.axis),
}


def to_native(record: Any) -> nn.Module:
    """A torch module in eval mode computing ``record`` on channels-first input, like the reference."""
    for cls in type(record).__mro__:
        if cls in _MAKERS:
            return _MAKERS[cls](record).eval()
    raise fail(UnsupportedError, "No PyTorch module for this record", f"one of {sorted(c.__name__ for c in _MAKERS)}", type(record).__name__)


#: record kinds whose torch module wants the channel axis last (and gives it back last)
CHANNELS_LAST: tuple[type, ...] = (layers.Dense, layers.LayerNorm)


def _wants_last(record: Any) -> bool:
    from ..recurrent import Bidirectional, Recurrent  # batch-first modules: (N, T, F) in, (N, T, H) or (N, H) out

    return isinstance(record, CHANNELS_LAST + (Recurrent, Bidirectional))


# -- whole graphs ------------------------------------------------------------------------------------


class GraphModule(nn.Module):
    """A whole model generated from a :class:`~layoutconv.graph.Graph`: one submodule per layer, named after it.

    ``layout="source"`` (default): inputs and outputs are laid out as in the
    source model (a Keras model's twin takes ``(N, steps, channels)``);
    ``"channels_first"``: PyTorch's own layout.  ``forward(*inputs)`` returns the
    output (a tuple for several).
    """

    def __init__(self, graph: Graph, layout: str = "source") -> None:
        super().__init__()
        if layout not in ("source", "channels_first"):
            raise fail(ConfigError, "Invalid value for argument `layout`", "'source' or 'channels_first'", f"layout={layout!r}")
        self.layout = layout
        taken: set[str] = set()
        self._names: dict[str, str] = {}
        for name, record in graph.layers.items():
            attr = attribute_name(name, taken)
            self._names[name] = attr
            self.add_module(attr, registry.converter(record, "torch").to_native(record))
        self._inputs = [(i.name, i.layout) for i in graph.inputs]
        self._steps = [(n.name, self._names[n.layer], n.inputs, _wants_last(graph.layers[n.layer]), isinstance(graph.layers[n.layer], layers.Embedding)) for n in graph.nodes]
        self._outputs = [(o, graph.layout_of(o)) for o in graph.outputs]
        self.eval()

    def edges(self, *xs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every edge of the model, channels first, by name (for layer-by-layer checks)."""
        if len(xs) != len(self._inputs):
            raise ValueError(f"expected {len(self._inputs)} input(s) {[n for n, _ in self._inputs]}, got {len(xs)}")
        env: dict[str, torch.Tensor] = {}
        for (name, layout), x in zip(self._inputs, xs):
            env[name] = _channels_first(x) if self.layout == "source" and layout == "channels_last" else x
        for name, attr, ins, last, embedding in self._steps:
            module = getattr(self, attr)
            args = [env[e] for e in ins]
            if last:
                args = [_channels_last(a) for a in args]
            y = module(*args)
            env[name] = _channels_first(y) if last or embedding else y
        return env

    def forward(self, *xs: torch.Tensor) -> Any:
        env = self.edges(*xs)
        outs = [
            _channels_last(env[o]) if self.layout == "source" and layout == "channels_last" else env[o] for o, layout in self._outputs
        ]
        return outs[0] if len(outs) == 1 else tuple(outs)


def graph_to_native(graph: Graph, layout: str = "source") -> nn.Module:
    return GraphModule(graph, layout)


def run_graph(native: Any, xs: Any) -> Any:
    """Run a :class:`GraphModule` (or any module) on numpy inputs given as the module expects them."""
    if not isinstance(xs, (list, tuple)):
        xs = [xs]
    first = next(iter(native.parameters()), None)
    tensors = []
    for x in xs:
        x = np.asarray(x)
        if x.dtype.kind == "f" and first is not None:
            x = x.astype(base._numpy_dtype(first.dtype, "Module"), copy=False)
        tensors.append(torch.from_numpy(np.ascontiguousarray(x)) if x.dtype.kind != "f" else base.to_tensor(x))
    with torch.no_grad():
        y = native(*tensors)
    return tuple(base.to_numpy(t) for t in y) if isinstance(y, tuple) else base.to_numpy(y)


def _run_layer(native: Any, x: Any) -> np.ndarray:
    return run_graph(native, x if isinstance(x, (list, tuple)) else [x])


for _kind in _MAKERS:
    registry.register(_kind, base.NAME, to_native=to_native, run=_run_layer)
registry.register(Graph, base.NAME, to_native=graph_to_native, run=run_graph)
