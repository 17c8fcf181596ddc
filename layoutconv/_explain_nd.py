r"""Explain one output element of a 2-D or 3-D convolution, or of a transposed convolution at any rank.

The 1-D explanation (:mod:`layoutconv._explain`) writes the by-hand formula in
every legacy convention's terms; this module does the same tap by tap at any
rank, with the formula in PyTorch's or Keras' terms::

    y[n, f, *t] = b[f] + sum over c, *k of W[f, c, *k] * x~[n, c, *(s t + d k - p_b)]

and, for a transposed convolution, lists which input position each tap takes
(``t = (u + p_b - d k) / s`` when that is a whole number inside the input)::

    y[n, f, *u] = b[f] + sum over c, *k with s t + d k - p_b = u of x[n, c, *t] * W[c, f mod (O/g), *k]
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import activations, reference
from .conv import Conv
from .conventions import Convention, for_rank
from .errors import ConfigError, ShapeError, fail
from .tolerance import ASSERT_CLOSE_DEFAULTS
from .transpose import ConvTranspose

#: taps listed at each end when a kernel has many
_TAPS_SHOWN = 12


@dataclass(frozen=True)
class TapND:
    """What kernel tap ``k`` (one index per spatial axis) meets for one output element."""

    k: tuple[int, ...]
    position: tuple[int, ...] | None  # input position; None when no input reaches this tap (transposed)
    padding: bool  # the position falls in the padding
    inputs: tuple[float, ...]
    weights: tuple[float, ...]
    products: tuple[float, ...]
    tap_sum: float
    partial: float


@dataclass(frozen=True)
class ExplanationND:
    """How ``y[n, f, *t]`` is computed at any rank; ``str()`` prints it, ``to_dict()`` gives JSON."""

    record: Any
    index: tuple[int, ...]
    input_shape: tuple[int, ...]
    data_format: str
    source: Convention | None
    pads: tuple[tuple[int, int], ...]
    group: int
    channels: tuple[int, ...]
    taps: tuple[TapND, ...]
    bias: float | None
    total: float
    output: float
    reference: float
    tolerance: float
    by_hand: str | None
    by_hand_value: float | None

    @property
    def agree(self) -> bool:
        ok = abs(self.output - self.reference) <= self.tolerance
        return ok and (self.by_hand_value is None or abs(self.by_hand_value - self.reference) <= self.tolerance)

    def to_dict(self) -> dict[str, Any]:
        return dict(
            record=repr(self.record),
            index=list(self.index),
            input_shape=list(self.input_shape),
            data_format=self.data_format,
            source=None if self.source is None else self.source.name,
            pads=[list(p) for p in self.pads],
            group=self.group,
            channels=list(self.channels),
            taps=[
                dict(k=list(t.k), position=None if t.position is None else list(t.position), padding=t.padding,
                     inputs=list(t.inputs), weights=list(t.weights), products=list(t.products), tap_sum=t.tap_sum,
                     partial=t.partial)
                for t in self.taps
            ],
            bias=self.bias,
            total=self.total,
            activation=self.record.activation,
            output=self.output,
            reference=self.reference,
            tolerance=self.tolerance,
            agree=self.agree,
            by_hand=self.by_hand,
            by_hand_value=self.by_hand_value,
        )

    def __str__(self) -> str:
        return format_nd(self)


def _index(index: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
    try:
        idx = tuple(int(i) for i in index)
    except (TypeError, ValueError):
        idx = ()
    if len(idx) != len(shape):
        raise fail(ConfigError, "Invalid output index", f"{len(shape)} integers (n, f, then one per spatial axis)", f"{index!r}")
    if not all(-size <= i < size for i, size in zip(idx, shape)):
        raise fail(ShapeError, "Output index out of range", f"an index within the output shape {shape}", f"{idx}")
    return tuple(i % size for i, size in zip(idx, shape))


def _channels_first(x: np.ndarray, data_format: str, rank: int) -> np.ndarray:
    if x.ndim != 2 + rank:
        axes = "(N, C, *spatial)" if data_format == "channels_first" else "(N, *spatial, C)"
        raise fail(ShapeError, "explain input has the wrong rank", f"a {2 + rank}-d array {axes}", f"shape {tuple(x.shape)}")
    return x if data_format == "channels_first" else np.moveaxis(x, -1, 1)


def _slice(start: int, stop: int, step: int) -> str:
    return f"{start}:{stop}" + (f":{step}" if step != 1 else "")


def _by_hand(conv: Conv, src: Convention, index: tuple[int, ...], spatial: tuple[int, ...], group: int) -> str:
    """The element as one numpy expression over the kernel as ``src`` stores it and ``X`` in ``src``'s data format."""
    n, f, *t = index
    rank = conv.spatial_rank
    names = src.layout.split()
    spatial_names = [a for a in names if a not in ("O", "I", "1")]
    picks = {"O": str(f), "I": ":", "1": "0", **{a: "::-1" if src.flipped else ":" for a in spatial_names}}
    w = f"W[{', '.join(picks[a] for a in names)}]"
    kept = [a for a in names if a not in ("O", "1")]
    last = src.data_format == "channels_last"
    target = [*spatial_names, "I"] if last else ["I", *spatial_names]
    if kept != target:
        w = f"np.transpose({w}, {tuple(kept.index(a) for a in target)})"
    pads = conv.pads(spatial)
    per_group = conv.kernel.shape[1]
    chan = ":" if conv.groups == 1 else _slice(group * per_group, (group + 1) * per_group, 1)
    starts = [s * ti - b for s, ti, (b, _) in zip(conv.stride, t, pads)]
    inside = all(0 <= st and st + r <= size for st, r, size in zip(starts, conv.receptive_field, spatial))
    if inside:
        windows = [_slice(st, st + r, d) for st, r, d in zip(starts, conv.receptive_field, conv.dilation)]
        x = "X"
    else:
        windows = [_slice(s * ti, s * ti + r, d) for s, ti, r, d in zip(conv.stride, t, conv.receptive_field, conv.dilation)]
        widths = [(0, 0)] + ([*pads, (0, 0)] if last else [(0, 0), *pads])
        mode = None if conv.padding_mode == "zeros" else reference.NUMPY_PAD_MODES[conv.padding_mode]
        x = f"np.pad(X, {tuple(tuple(p) for p in widths)}" + (f", mode={mode!r})" if mode else ")")
    axes = [str(n), *windows, chan] if last else [str(n), chan, *windows]
    total = f"np.sum({w} * {x}[{', '.join(axes)}])"
    if conv.bias is not None:
        total = f"bias[{f}] + {total}"
    return f"{conv.activation}({total})" if conv.activation != "linear" else total


def _evaluate(expression: str, kernel: np.ndarray, bias: np.ndarray | None, x: np.ndarray) -> float:
    namespace: dict[str, Any] = {"np": np, "W": kernel, "bias": bias, "X": x}
    namespace.update({name: a.function for name, a in activations.ACTIVATIONS.items()})
    return float(eval(expression, {"__builtins__": {}}, namespace))  # noqa: S307 - our own expression


def _finish(record: Any, partial: float, magnitude: float) -> tuple[float, float]:
    rtol, atol = ASSERT_CLOSE_DEFAULTS[record.dtype.name]
    activation = activations.get(record.activation)
    output = float(activation.function(np.float64(partial)))
    tol = atol + rtol * magnitude
    if activation.name != "linear":
        tol = activation.lipschitz * tol + rtol * abs(output)
    return output, tol


def explain_nd(record: Any, x: Any, index: Any, *, source: Any = None, data_format: str | None = None) -> ExplanationND:
    """Take one output element of a ``Conv`` (any rank) or ``ConvTranspose`` apart tap by tap (see the module doc)."""
    if not isinstance(record, (Conv, ConvTranspose)):
        raise fail(ConfigError, "explain needs a convolution", "a layoutconv.Conv or ConvTranspose", f"{type(record).__name__}")
    rank = record.spatial_rank
    src = None
    if isinstance(record, Conv):
        src = source if isinstance(source, Convention) else for_rank(source or "torch", rank)
    elif source not in (None, "torch", "onnx"):
        raise fail(ConfigError, "A transposed convolution is explained in PyTorch's terms only", "source=None", f"source={source!r}")
    if data_format is None:
        data_format = src.data_format if (src is not None and source is not None) else "channels_first"
    if data_format not in ("channels_first", "channels_last"):
        raise fail(ConfigError, "Invalid data_format", "'channels_first' or 'channels_last'", f"{data_format!r}")
    raw = np.asarray(x)
    xc = _channels_first(raw, data_format, rank)
    if xc.shape[1] != record.in_channels:
        raise fail(ShapeError, "explain input does not fit the convolution", f"C = {record.in_channels} channels",
                   f"shape {tuple(raw.shape)} read as {data_format}")
    expected = reference.forward(record, xc)  # validates the input too
    idx = _index(index, expected.shape)
    n, f, *t = idx
    spatial = tuple(int(v) for v in xc.shape[2:])
    pads = record.pads(spatial)
    kernel = record.kernel.astype(np.float64)
    bias = None if record.bias is None else float(record.bias[f])
    partial = 0.0 if bias is None else bias
    magnitude = 0.0 if bias is None else abs(bias)
    taps = []
    if isinstance(record, Conv):
        per_group = record.kernel.shape[1]
        group = f // (record.out_channels // record.groups)
        channels = tuple(range(group * per_group, (group + 1) * per_group))
        padded = reference.pad(xc[n, channels[0] : channels[-1] + 1].astype(np.float64), pads, record.padding_mode)
        for k in itertools.product(*(range(m) for m in record.kernel_shape)):
            at = tuple(s * ti + d * ki for s, ti, d, ki in zip(record.stride, t, record.dilation, k))
            position = tuple(a - b for a, (b, _) in zip(at, pads))
            inputs = padded[(slice(None), *at)]
            weights = kernel[(f, slice(None), *k)]
            products = weights * inputs
            partial += float(products.sum())
            magnitude += float(np.abs(products).sum())
            outside = any(not 0 <= p < size for p, size in zip(position, spatial))
            taps.append(TapND(k, position, outside, tuple(map(float, inputs)), tuple(map(float, weights)),
                              tuple(map(float, products)), float(products.sum()), partial))
        by_hand = _by_hand(record, src, idx, spatial, group)
        by_hand_value = _evaluate(by_hand, src.from_canonical_kernel(record.kernel), record.bias,
                                  raw if data_format == src.data_format else np.moveaxis(xc, 1, -1) if src.data_format == "channels_last" else xc)
    else:
        out_per_group = record.out_channels // record.groups
        group = f // out_per_group
        per_group = record.in_channels // record.groups
        channels = tuple(range(group * per_group, (group + 1) * per_group))
        for k in itertools.product(*(range(m) for m in record.kernel_shape)):
            grid = [u + b - d * ki for u, (b, _), d, ki in zip(t, pads, record.dilation, k)]
            reached = all(g % s == 0 and 0 <= g // s < size for g, s, size in zip(grid, record.stride, spatial))
            weights = kernel[(slice(channels[0], channels[-1] + 1), f % out_per_group, *k)]
            if reached:
                position = tuple(g // s for g, s in zip(grid, record.stride))
                inputs = xc[(n, slice(channels[0], channels[-1] + 1), *position)].astype(np.float64)
            else:
                position, inputs = None, np.zeros_like(weights)
            products = weights * inputs
            partial += float(products.sum())
            magnitude += float(np.abs(products).sum())
            taps.append(TapND(k, position, False, tuple(map(float, inputs)), tuple(map(float, weights)),
                              tuple(map(float, products)), float(products.sum()), partial))
        by_hand, by_hand_value = None, None
    output, tol = _finish(record, partial, magnitude)
    return ExplanationND(
        record=record, index=idx, input_shape=tuple(raw.shape), data_format=data_format, source=src, pads=pads,
        group=group, channels=channels, taps=tuple(taps), bias=bias, total=partial, output=output,
        reference=float(expected[idx]), tolerance=tol, by_hand=by_hand, by_hand_value=by_hand_value,
    )


def _tap_line(tap: TapND, n: int) -> str:
    if tap.position is None:
        where = "no input lands here"
    elif tap.padding:
        where = f"pad@{tap.position}"
    else:
        where = f"x[{n}, :, {', '.join(map(str, tap.position))}]"
    terms = (
        " + ".join(f"{w:.4g}*{v:.4g}" for w, v in zip(tap.weights, tap.inputs)) if len(tap.products) <= 3
        else f"{len(tap.products)} products"
    )
    return f"  k={str(tap.k):<10} {where:<28} {terms}  = {tap.tap_sum:+.6g}   running {tap.partial:+.6g}"


def format_nd(e: ExplanationND) -> str:
    """The text ``str(explanation)`` prints."""
    r = e.record
    n, f, *t = e.index
    transposed = isinstance(r, ConvTranspose)
    lines = [f"y{list(e.index)} of {r!r}",
             f"input {e.input_shape} ({e.data_format}), pads {list(e.pads)}, group {e.group} (input channels "
             f"{e.channels[0]}..{e.channels[-1]})"]
    if transposed:
        lines.append(f"y[n, f, *u] = b[f] + sum over c, k with s*t + d*k - p_b = u of x[n, c, *t] * W[c, f mod {r.out_channels // r.groups}, *k]")
    else:
        lines.append(f"y[n, f, *t] = b[f] + sum over c, k of W[f, c, *k] * x~[n, c, *(s*t + d*k - p_b)]   (W canonical, x channels first)")
    taps = list(e.taps)
    shown: list[Any] = taps if len(taps) <= 2 * _TAPS_SHOWN + 1 else taps[:_TAPS_SHOWN] + [None] + taps[-_TAPS_SHOWN:]
    if e.bias is not None:
        lines.append(f"  bias[{f}] = {e.bias:+.6g}")
    lines += ["  ..." if tap is None else _tap_line(tap, n) for tap in shown]
    if r.activation != "linear":
        lines.append(f"sum {e.total:.6g}, then {r.activation}(x) = {activations.get(r.activation).formula}: {e.output:.6g}")
    verdict = "agree" if e.agree else "DISAGREE"
    lines.append(f"total {e.output:.6g}   reference {e.reference:.6g}   {verdict} "
                 f"(|diff| {abs(e.output - e.reference):.1e}, tolerance {e.tolerance:.1e})")
    if e.by_hand is not None and e.source is not None:
        lines.append(f"By hand in {e.source.name} terms (W: kernel as stored, axes ({', '.join(e.source.layout.split())}); "
                     f"X: input {e.data_format}):")
        lines.append(f"  {e.by_hand}  =  {e.by_hand_value:.6g}")
    return "\n".join(lines)
