r"""Explain one output element: which inputs each kernel tap meets, the products, the sums.

The question this answers: "I summed ``bias[f] + W * X`` by hand and got a
different number from the framework; what does the layer actually compute?"

>>> import numpy as np, layoutconv
>>> rng = np.random.default_rng(0)
>>> conv = layoutconv.Conv1D(rng.normal(size=(4, 3, 5)), rng.normal(size=4), padding="causal")
>>> e = layoutconv.explain(conv, rng.normal(size=(1, 3, 9)), (0, 2, 1))
>>> e.agree
True
>>> e.by_hand
'bias[2] + np.sum(W[2, :, :] * np.pad(X, ((0, 0), (0, 0), (4, 0)))[0, :, 1:6])'

``by_hand`` is written in the *source* framework's own terms (a
:class:`~layoutconv.conventions.Convention` or its name): it is a numpy
expression that evaluates, with ``W`` the kernel as that framework stores it,
``bias`` the bias and ``X`` the input in that framework's data format, to the
reference value.  For a Keras 1.1 Theano kernel it reads
``bias[f] + np.sum(W[::-1, 0, :, f] * X[n, t0:t0+K, :])``: Theano computed a
true convolution, so the stored kernel is used reversed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import activations, reference
from .conv import Conv1D
from .conventions import CONVENTIONS, Convention
from .errors import ConfigError, ShapeError, fail
from .tolerance import ASSERT_CLOSE_DEFAULTS

#: how many input channels a tap may have before the text shows only the tap's sum
_MAX_CHANNELS_SHOWN = 4
#: how many taps are shown at each end of a long kernel
_TAPS_SHOWN = 8


@dataclass(frozen=True)
class Tap:
    """What kernel tap ``k`` meets for one output element.

    ``position`` is the input position ``s*t + d*k - pad_begin`` (outside
    ``[0, L)`` it falls in the padding); ``source`` is the input position the
    padded value was copied from (``None`` for zero padding).
    """

    k: int
    position: int
    padding: bool
    source: int | None
    inputs: tuple[float, ...]  # x~[n, c, position] for each input channel c of the group
    weights: tuple[float, ...]  # W[f, c, k] (canonical, cross-correlation)
    products: tuple[float, ...]
    tap_sum: float
    partial: float  # bias + sum of the taps up to and including this one


@dataclass(frozen=True)
class Pitfall:
    """A tempting by-hand formula that is wrong here, and what it gives."""

    mistake: str
    expression: str
    value: float


@dataclass(frozen=True)
class Explanation:
    """How ``y[n, f, t]`` is computed; ``str()`` prints it, ``to_dict()`` gives JSON."""

    conv: Conv1D
    index: tuple[int, int, int]
    input_shape: tuple[int, ...]
    data_format: str
    source: Convention
    pads: tuple[int, int]
    group: int
    channels: tuple[int, ...]  # absolute input channels the filter sees
    taps: tuple[Tap, ...]
    bias: float | None
    total: float  # bias + every tap: the value before the activation
    output: float  # the activation applied to ``total`` (equal to it without one)
    reference: float
    tolerance: float
    by_hand: str
    by_hand_value: float
    pitfalls: tuple[Pitfall, ...]

    @property
    def agree(self) -> bool:
        """The tap-by-tap total, the reference pass and the by-hand expression agree within tolerance."""
        return abs(self.output - self.reference) <= self.tolerance and abs(self.by_hand_value - self.reference) <= self.tolerance

    @property
    def uses_padding(self) -> bool:
        return any(tap.padding for tap in self.taps)

    def to_dict(self) -> dict[str, Any]:
        n, f, t = self.index
        return dict(
            conv=repr(self.conv),
            index=dict(n=n, f=f, t=t),
            input_shape=list(self.input_shape),
            data_format=self.data_format,
            source=self.source.name,
            pads=list(self.pads),
            padding_mode=self.conv.padding_mode,
            group=self.group,
            channels=list(self.channels),
            taps=[
                dict(
                    k=tap.k,
                    position=tap.position,
                    padding=tap.padding,
                    source=tap.source,
                    inputs=list(tap.inputs),
                    weights=list(tap.weights),
                    products=list(tap.products),
                    tap_sum=tap.tap_sum,
                    partial=tap.partial,
                )
                for tap in self.taps
            ],
            bias=self.bias,
            total=self.total,
            activation=self.conv.activation,
            output=self.output,
            reference=self.reference,
            tolerance=self.tolerance,
            agree=self.agree,
            by_hand=self.by_hand,
            by_hand_value=self.by_hand_value,
            pitfalls=[dict(mistake=p.mistake, expression=p.expression, value=p.value) for p in self.pitfalls],
        )

    def __str__(self) -> str:
        return format_explanation(self)


def _convention(source: Convention | str | None) -> Convention:
    if source is None:
        return CONVENTIONS["torch"]
    if isinstance(source, Convention):
        return source
    if source in CONVENTIONS:
        return CONVENTIONS[source]
    raise fail(ConfigError, "Unknown source convention", f"one of {sorted(CONVENTIONS)} or a Convention", f"source={source!r}")


def _to_channels_first(x: np.ndarray, data_format: str) -> np.ndarray:
    return x if data_format == "channels_first" else x.transpose(0, 2, 1)


def _source_position(position: int, length: int, mode: str) -> int | None:
    """Where a padded position's value comes from (PyTorch padding modes)."""
    if 0 <= position < length:
        return position
    if mode == "zeros":
        return None
    if mode == "replicate":
        return min(max(position, 0), length - 1)
    if mode == "circular":
        return position % length
    return -position if position < 0 else 2 * (length - 1) - position  # reflect, edge not repeated


def _slice(start: int, stop: int, step: int) -> str:
    return f"{start}:{stop}" + (f":{step}" if step != 1 else "")


def _expressions(
    conv: Conv1D, src: Convention, index: tuple[int, int, int], length: int, pads: tuple[int, int], group: int
) -> tuple[str, list[tuple[str, str]]]:
    """The by-hand expression in ``src``'s terms, and the tempting wrong ones."""
    n, f, t = index
    (s,), (d,), (span,) = conv.stride, conv.dilation, conv.receptive_field
    begin, end = pads
    per_group = conv.kernel.shape[1]
    last = src.data_format == "channels_last"

    def weight(flip: bool) -> str:
        names = src.layout.split()
        picks = {"O": str(f), "I": ":", "K": "::-1" if flip else ":", "1": "0"}
        w = f"W[{', '.join(picks[a] for a in names)}]"
        kept = [a for a in names if a in ("I", "K")]
        return w + (".T" if kept != (["K", "I"] if last else ["I", "K"]) else "")

    def window(start: int, padded: bool) -> str:
        time = _slice(start, start + span, d)
        chan = ":" if conv.groups == 1 else _slice(group * per_group, (group + 1) * per_group, 1)
        x = "X"
        if padded:
            widths = f"((0, 0), ({begin}, {end}), (0, 0))" if last else f"((0, 0), (0, 0), ({begin}, {end}))"
            mode = None if conv.padding_mode == "zeros" else reference.NUMPY_PAD_MODES[conv.padding_mode]
            x = f"np.pad(X, {widths}" + (f", mode={mode!r})" if mode else ")")
        return f"{x}[{n}, {time}, {chan}]" if last else f"{x}[{n}, {chan}, {time}]"

    def expr(w: str, x: str, activated: bool = True) -> str:
        total = f"np.sum({w} * {x})"
        total = total if conv.bias is None else f"bias[{f}] + {total}"
        return f"{conv.activation}({total})" if activated and conv.activation != "linear" else total

    start = s * t - begin  # window start in the unpadded input
    inside = start >= 0 and start + span <= length
    right = expr(weight(src.flipped), window(start, False) if inside else window(s * t, True))
    wrong = []
    if src.flipped:
        wrong.append((
            "kernel not reversed: this framework convolved (Theano), so its stored kernel runs backwards",
            expr(weight(False), window(start, False) if inside else window(s * t, True)),
        ))
    if begin and s * t + span <= length:
        wrong.append((
            f"padding ignored: the window starts {begin} position(s) earlier, at X position {start}",
            expr(weight(src.flipped), window(s * t, False)),
        ))
    if conv.activation != "linear":
        wrong.append((
            f"activation forgotten: the layer applies {conv.activation} to the sum",
            expr(weight(src.flipped), window(start, False) if inside else window(s * t, True), activated=False),
        ))
    return right, wrong


def _evaluate(expression: str, kernel: np.ndarray, bias: np.ndarray | None, x: np.ndarray) -> float:
    namespace = {"np": np, "W": kernel, "bias": bias, "X": x}
    namespace.update({name: a.function for name, a in activations.ACTIVATIONS.items()})
    return float(eval(expression, {"__builtins__": {}}, namespace))  # noqa: S307 - our own expression


def explain(
    conv: Conv1D,
    x: Any,
    index: tuple[int, int, int],
    *,
    source: Convention | str | None = None,
    data_format: str | None = None,
) -> Explanation:
    """Take ``y[n, f, t] = conv(x)[n, f, t]`` apart tap by tap and check it against the reference.

    >>> print(layoutconv.explain(conv, x, (0, 5, 0), source="keras1.1-theano"))   # doctest: +SKIP

    Parameters
    ----------
    conv:
        The canonical convolution.
    x:
        One input, ``(N, C, L)``, or ``(N, L, C)`` with ``data_format="channels_last"``.
    index:
        ``(n, f, t)``: batch item, output channel, output position.  Negative
        values count from the end, as in numpy (``t=-1`` is the last output).
    source:
        The convention the weights came from (a :class:`Convention` or a name in
        ``CONVENTIONS``, e.g. ``"keras1.1-theano"``); ``by_hand`` is written in its
        terms.  Default: ``"torch"`` (the canonical layout).
    data_format:
        The layout of ``x``: ``"channels_first"`` or ``"channels_last"``.  Default:
        the source convention's data format, or ``channels_first`` without a source.
    """
    if not isinstance(conv, Conv1D):
        from ._explain_nd import explain_nd  # 2-d, 3-d and transposed convolutions

        return explain_nd(conv, x, index, source=source, data_format=data_format)  # type: ignore[return-value]
    src = _convention(source)
    if data_format is None:
        data_format = src.data_format if source is not None else "channels_first"
    if data_format not in ("channels_first", "channels_last"):
        raise fail(ConfigError, "Invalid data_format", "'channels_first' or 'channels_last'", f"{data_format!r}")
    raw_x = np.asarray(x)
    axes = "(N, C, L)" if data_format == "channels_first" else "(N, L, C)"
    if raw_x.ndim != 3:
        raise fail(ShapeError, "explain input has the wrong rank", f"a 3-d array {axes}", f"shape {tuple(raw_x.shape)}")
    xc = _to_channels_first(raw_x, data_format)
    if xc.shape[1] != conv.in_channels:
        raise fail(
            ShapeError,
            "explain input does not fit the convolution",
            f"{axes} with C = {conv.in_channels}",
            f"shape {tuple(raw_x.shape)} read as {data_format}",
            "Pass data_format='channels_last' for an (N, L, C) input." if data_format == "channels_first" else "",
        )
    batch, _, length = xc.shape
    expected = reference.conv1d(conv, xc)  # also validates length and padding
    try:
        n, f, t = (int(i) for i in index)
    except (TypeError, ValueError):
        raise fail(ConfigError, "Invalid output index", "three integers (n, f, t)", f"{index!r}") from None
    limits = expected.shape
    if not all(-size <= i < size for i, size in zip((n, f, t), limits)):
        raise fail(
            ShapeError,
            "Output index out of range",
            f"(n, f, t) within the output shape (N, O, L_out) = {limits}",
            f"({n}, {f}, {t})",
        )
    n, f, t = n % limits[0], f % limits[1], t % limits[2]

    (pads,) = conv.pads(length)
    begin, _ = pads
    (s,), (d,) = conv.stride, conv.dilation
    per_group = conv.kernel.shape[1]
    group = f // (conv.out_channels // conv.groups)
    channels = tuple(range(group * per_group, (group + 1) * per_group))
    window = xc[n : n + 1, channels[0] : channels[-1] + 1].astype(np.float64)
    padded = reference.pad1d(window, *pads, conv.padding_mode)[0]
    kernel = conv.kernel.astype(np.float64)
    bias = None if conv.bias is None else float(conv.bias[f])
    partial = 0.0 if bias is None else bias
    magnitude = 0.0 if bias is None else abs(bias)
    taps = []
    for k in range(conv.kernel_size):
        position = s * t + d * k - begin
        inputs = padded[:, s * t + d * k]
        weights = kernel[f, :, k]
        products = weights * inputs
        partial += float(products.sum())
        magnitude += float(np.abs(products).sum())
        inside = 0 <= position < length
        taps.append(
            Tap(
                k=k,
                position=position,
                padding=not inside,
                source=_source_position(position, length, conv.padding_mode),
                inputs=tuple(float(v) for v in inputs),
                weights=tuple(float(v) for v in weights),
                products=tuple(float(v) for v in products),
                tap_sum=float(products.sum()),
                partial=partial,
            )
        )
    rtol, atol = ASSERT_CLOSE_DEFAULTS[conv.dtype.name]
    activation = activations.get(conv.activation)
    output = float(activation.function(np.float64(partial)))
    tolerance = atol + rtol * magnitude
    if activation.name != "linear":
        tolerance = activation.lipschitz * tolerance + rtol * abs(output)
    right, wrong = _expressions(conv, src, (n, f, t), length, pads, group)
    raw_kernel = src.from_canonical_kernel(conv.kernel)
    src_x = xc if src.data_format == "channels_first" else xc.transpose(0, 2, 1)
    return Explanation(
        conv=conv,
        index=(n, f, t),
        input_shape=tuple(raw_x.shape),
        data_format=data_format,
        source=src,
        pads=pads,
        group=group,
        channels=channels,
        taps=tuple(taps),
        bias=bias,
        total=partial,
        output=output,
        reference=float(expected[n, f, t]),
        tolerance=tolerance,
        by_hand=right,
        by_hand_value=_evaluate(right, raw_kernel, conv.bias, src_x),
        pitfalls=tuple(Pitfall(m, e, _evaluate(e, raw_kernel, conv.bias, src_x)) for m, e in wrong),
    )


def _tap_line(tap: Tap, n: int, explanation: Explanation) -> str:
    mode = explanation.conv.padding_mode
    if not tap.padding:
        where = f"x[{n}, :, {tap.position}]"
    elif tap.source is None:
        where = f"pad@{tap.position} = 0"
    else:
        where = f"pad@{tap.position} = x[{tap.source}] ({mode})"
    if len(tap.products) <= _MAX_CHANNELS_SHOWN:
        terms = " + ".join(f"{w:.4g}*{v:.4g}" for w, v in zip(tap.weights, tap.inputs))
    else:
        terms = f"{len(tap.products)} products"
    return f"  k={tap.k:<3d} {where:<26} {terms}  = {tap.tap_sum:+.6g}   running {tap.partial:+.6g}"


def format_explanation(e: Explanation) -> str:
    """The text ``str(explanation)`` prints: formula, taps, totals, by-hand expression."""
    conv, (n, f, t) = e.conv, e.index
    (s,), (d,) = conv.stride, conv.dilation
    begin, end = e.pads
    shape = e.input_shape
    ncl = shape if e.data_format == "channels_first" else (shape[0], shape[2], shape[1])
    ch = f"{e.channels[0]}..{e.channels[-1]}" if len(e.channels) > 1 else f"{e.channels[0]}"
    offset = f" - {begin}" if begin else ""
    lines = [
        f"y[{n}, {f}, {t}] of {conv!r}",
        f"input (N, C, L) = {ncl}, pads ({begin}, {end}) {conv.padding_mode}, "
        f"group {e.group} (input channels {ch})",
        f"y[{n}, {f}, {t}] = {'bias[%d] + ' % f if e.bias is not None else ''}sum over c, k of "
        f"W[{f}, c, k] * x[{n}, c, {s}*{t} + {d}*k{offset}]   (W canonical (O, I, K), x channels first)",
    ]
    src = e.source
    picks = {"O": str(f), "I": "c", "K": f"{conv.kernel_size - 1}-k" if src.flipped else "k", "1": "0"}
    stored = f"W[{', '.join(picks[a] for a in src.layout.split())}]"
    if stored != f"W[{f}, c, k]":
        lines.append(f"  (canonical W[{f}, c, k] is the {src.name} kernel's {stored})")
    taps = list(e.taps)
    if len(taps) > 2 * _TAPS_SHOWN + 1:
        shown = taps[:_TAPS_SHOWN] + [None] + taps[-_TAPS_SHOWN:]
    else:
        shown = taps
    if e.bias is not None:
        lines.append(f"  bias[{f}] = {e.bias:+.6g}")
    for tap in shown:
        lines.append("  ..." if tap is None else _tap_line(tap, n, e))
    verdict = "agree" if e.agree else "DISAGREE"
    if conv.activation != "linear":
        formula = activations.get(conv.activation).formula
        lines.append(f"sum {e.total:.6g}, then {conv.activation}(x) = {formula}: {e.output:.6g}")
    lines.append(
        f"total {e.output:.6g}   reference {e.reference:.6g}   by hand {e.by_hand_value:.6g}   "
        f"{verdict} (|diff| {abs(e.output - e.reference):.1e}, tolerance {e.tolerance:.1e})"
    )
    x_axes = "(N, L, C)" if src.data_format == "channels_last" else "(N, C, L)"
    lines.append(
        f"By hand in {src.name} terms (W: kernel as stored, axes ({', '.join(src.layout.split())})"
        f"{', used reversed: the framework convolved' if src.flipped else ''}; X: input {x_axes}):"
    )
    lines.append(f"  {e.by_hand}  =  {e.by_hand_value:.6g}")
    if e.uses_padding:
        lines.append(f"  The window runs into the padding: X is padded by ({begin}, {end}) {conv.padding_mode} first.")
    for p in e.pitfalls:
        lines.append(f"Not: {p.expression}  =  {p.value:.6g}  ({p.mistake})")
    return "\n".join(lines)

