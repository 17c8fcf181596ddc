"""Find which convention turns raw weights and an input into the output a framework produced.

Given a kernel and bias as a framework returned them, an input ``x`` and the
output ``y`` that framework computed, :func:`diagnose` tries every reading
that fits the shapes (kernel layout, Theano flip, padding rule, data format,
stride, dilation, groups), runs the reference pass for each, applies every
activation of :mod:`layoutconv.activations` to that one linear output, and
compares each with ``y`` elementwise, with the tolerance of
:func:`layoutconv.tolerance.tolerance`.

>>> d = layoutconv.diagnose(W, b, x, y)       # doctest: +SKIP
>>> print(d)                                  # doctest: +SKIP
>>> d.conv, d.code                            # doctest: +SKIP

Several matches are a result, not an error: they are all listed, with a note
on why the data cannot tell them apart and what input (or weights) would.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from . import activations, layouts, reference
from .conv import PADDING_RULES, Conv1D
from .conventions import CONVENTIONS, Convention
from .errors import ConfigError, ShapeError, fail
from .tolerance import ASSERT_CLOSE_DEFAULTS, through_activation, tolerance

#: Padding readings tried, in order of preference.  ``theano-same`` is Theano's
#: border mode 'half' cropped to ceil(L / s) outputs: explicit pads
#: ``(span // 2, (span - 1) // 2)`` with ``span = dilation * (K - 1) + 1``.
PADDINGS = ("valid", "same_upper", "same_lower", "causal", "theano-same")
FORMATS = ("channels_last", "channels_first")
#: Strides and dilations tried when none is given and stride = dilation = 1 reproduces nothing.
STRIDES = (1, 2, 3, 4)
DILATIONS = (1, 2, 3)
#: Activations tried on every reading, in order of preference (linear first).  Each is
#: applied to the reading's one linear output, so trying them all costs little.
ACTIVATIONS = tuple(activations.ACTIVATIONS)

#: What weights would tell apart two readings that compute the same function, by the attribute they differ in.
WEIGHTS_DISTINGUISH = {
    "flip": "a kernel that is not symmetric under reversal along K",
    "layout": "a kernel that is not symmetric under swapping the axes the layouts disagree on "
    "(a layer whose filters, in_channels and kernel_size differ lets the shape alone decide)",
    "data format": "an input shape whose length differs from its channel count",
    "padding": "other weights",
    "stride/dilation": "other weights",
    "activation": "weights whose outputs reach the values where the activations differ (e.g. negative ones for relu)",
}
#: What input would tell apart two readings that merely agree on this ``x``.
INPUT_DISTINGUISH = {
    "flip": "an input that varies along its length (random normal, not constant)",
    "layout": "a random-normal input",
    "data format": "an input whose length differs from its channel count",
    "padding": "an input whose first and last values are not zero",
    "stride/dilation": "a longer random-normal input",
    "activation": "an input that drives the outputs over a wider range (e.g. 30 times larger), where the activations differ",
}


@dataclass(frozen=True)
class Candidate:
    """One reading of the weights, and how well its reference output matched ``y``."""

    layout: str  # axis names, e.g. "K 1 I O"
    layout_name: str  # e.g. "keras1.1"
    flipped: bool
    x_format: str
    y_format: str
    stride: int
    dilation: int
    groups: int
    paddings: tuple[str, ...]  # every padding reading that gives these pads
    pads: tuple[int, int]
    activation: str  # canonical name, "linear" for none
    conventions: tuple[str, ...]
    max_abs_error: float
    error_over_tolerance: float
    conv: Conv1D = field(repr=False, compare=False)

    @property
    def matched(self) -> bool:
        return self.error_over_tolerance <= 1.0

    @property
    def padding(self) -> Any:
        """The ``padding=`` argument that builds this reading (a rule name, or explicit pads)."""
        rules = [p for p in self.paddings if p in PADDING_RULES]
        return rules[0] if rules else self.pads

    @property
    def code(self) -> str:
        """A line of Python that builds :attr:`conv` from the raw ``W`` and ``b``."""
        args = [f"padding={self.padding!r}"]
        extra = (("stride", self.stride), ("dilation", self.dilation), ("groups", self.groups))
        args += [f"{name}={value}" for name, value in extra if value != 1]
        if self.activation != "linear":
            args.append(f"activation={self.activation!r}")
        bias = "b" if self.conv.bias is not None else "None"
        if self.conventions:
            make = f"layoutconv.conventions.CONVENTIONS[{self.conventions[0]!r}]"
        else:
            make = f"layoutconv.conventions.Convention('custom', {self.layout!r}, {self.flipped}, {self.x_format!r})"
        return f"conv = {make}.conv1d(W, {bias}, {', '.join(args)})"

    def to_dict(self) -> dict[str, Any]:
        return dict(
            layout=self.layout,
            layout_name=self.layout_name,
            flipped=self.flipped,
            x_format=self.x_format,
            y_format=self.y_format,
            stride=self.stride,
            dilation=self.dilation,
            groups=self.groups,
            paddings=list(self.paddings),
            pads=list(self.pads),
            activation=self.activation,
            conventions=list(self.conventions),
            max_abs_error=self.max_abs_error,
            error_over_tolerance=self.error_over_tolerance,
            matched=self.matched,
            code=self.code,
        )


@dataclass(frozen=True)
class Diagnosis:
    """Every reading that reproduces ``y``, the closest ones that do not, and what to use."""

    kernel_shape: tuple[int, ...]
    bias_shape: tuple[int, ...] | None
    x_shape: tuple[int, ...]
    y_shape: tuple[int, ...]
    tried: int  # readings (layout, flip, formats, stride, dilation, pads), each with every activation
    matches: tuple[Candidate, ...]
    near_misses: tuple[Candidate, ...]
    note: str
    seconds: float

    @property
    def conv(self) -> Conv1D | None:
        """The canonical convolution of the best match (``None`` when nothing matched)."""
        return self.matches[0].conv if self.matches else None

    @property
    def code(self) -> str:
        return self.matches[0].code if self.matches else ""

    @property
    def ambiguous(self) -> bool:
        return len(self.matches) > 1

    def to_dict(self) -> dict[str, Any]:
        return dict(
            kernel_shape=list(self.kernel_shape),
            bias_shape=None if self.bias_shape is None else list(self.bias_shape),
            x_shape=list(self.x_shape),
            y_shape=list(self.y_shape),
            tried=self.tried,
            matches=[c.to_dict() for c in self.matches],
            near_misses=[c.to_dict() for c in self.near_misses],
            ambiguous=self.ambiguous,
            note=self.note,
            code=self.code,
            conv=None if self.conv is None else repr(self.conv),
            seconds=self.seconds,
        )

    def __str__(self) -> str:
        return format_diagnosis(self)


# -- enumeration -------------------------------------------------------------


def _float_array(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.name not in ASSERT_CLOSE_DEFAULTS:
        raise fail(
            ConfigError,
            f"Unsupported dtype for `{name}`",
            f"a floating array ({', '.join(ASSERT_CLOSE_DEFAULTS)})",
            f"dtype {arr.dtype}",
            f"Cast it, e.g. `{name}.astype(np.float32)`.",
        )
    return arr


def _pads(rule: str, kernel_size: int, stride: int, dilation: int, length: int) -> tuple[int, int]:
    span = dilation * (kernel_size - 1) + 1
    if rule == "theano-same":
        return (span // 2, (span - 1) // 2)
    probe = Conv1D(np.zeros((1, 1, kernel_size)), stride=stride, dilation=dilation, padding=rule)
    ((begin, end),) = probe.pads(length)
    return (begin, end)


def _out_length(length: int, pads: tuple[int, int], kernel_size: int, stride: int, dilation: int) -> int | None:
    span = dilation * (kernel_size - 1) + 1
    padded = length + sum(pads)
    return None if padded < span else (padded - span) // stride + 1


def _conventions(layout: str, flipped: bool, x_format: str) -> tuple[str, ...]:
    names = layouts.parse(layout).names
    same = [c for c in CONVENTIONS.values() if layouts.parse(c.layout).names == names and c.flipped == flipped]
    exact = tuple(c.name for c in same if c.data_format == x_format)
    return exact or tuple(c.name for c in same)


@dataclass(frozen=True)
class _Spec:
    layout_name: str
    layout: str
    sizes: tuple[int, int, int]  # O, I, K
    flipped: bool
    x_format: str
    y_format: str
    groups: int
    stride: int
    dilation: int
    paddings: tuple[str, ...]
    pads: tuple[int, int]


def _specs(readings, x, y, grid, groups) -> Iterator[_Spec]:
    """Every reading whose shapes fit, for the (stride, dilation) pairs in ``grid``."""
    for x_format in FORMATS:
        c, length = (x.shape[2], x.shape[1]) if x_format == "channels_last" else x.shape[1:]
        for name, axes, (o, i, k), _ in readings:
            if c % i or (groups is not None and c != i * groups):
                continue
            g = c // i
            if o % g:
                continue
            for y_format in FORMATS:
                o_y, length_y = (y.shape[2], y.shape[1]) if y_format == "channels_last" else y.shape[1:]
                if o_y != o:
                    continue
                for s, d in grid:
                    by_pads: dict[tuple[int, int], list[str]] = {}
                    for rule in PADDINGS:
                        pads = _pads(rule, k, s, d, length)
                        if _out_length(length, pads, k, s, d) == length_y:
                            by_pads.setdefault(pads, []).append(rule)
                    for pads, rules in by_pads.items():
                        for flipped in (False, True):
                            yield _Spec(name, axes, (o, i, k), flipped, x_format, y_format, g, s, d, tuple(rules), pads)


def _shape_error(readings, x, y, bias, groups) -> Exception:
    """The most specific reason why no reading fits the shapes."""
    bias_shape = None if bias is None else tuple(bias.shape)
    shapes = f"kernel {readings[0][3]}, bias {bias_shape}, x {tuple(x.shape)}, y {tuple(y.shape)}"
    outs = sorted({r[2][0] for r in readings})
    y_channels = {y.shape[1], y.shape[2]}
    if not y_channels & set(outs):
        return fail(
            ShapeError,
            "y's channel count matches no output-channel axis of the kernel",
            f"y of shape (N, O, L_out) or (N, L_out, O) with O in {outs} (the kernel's possible filter counts)",
            shapes,
            "Check that y is this layer's output and the kernel this layer's weights.",
        )
    ins = sorted({r[2][1] for r in readings})
    if not any(c % i == 0 and (groups is None or c == i * groups) for c in (x.shape[1], x.shape[2]) for i in ins):
        fixed = "" if groups is None else f" (times groups={groups})"
        return fail(
            ShapeError,
            "x's channel count fits no input-channel axis of the kernel",
            f"x of shape (N, C, L) or (N, L, C) with C a multiple of one of {ins}{fixed}",
            shapes,
            "" if groups is None else "Leave groups=None to let the shapes decide.",
        )
    return fail(
        ShapeError,
        "No padding, stride and dilation turn x's length into y's",
        f"an output length given by {', '.join(PADDINGS)} with stride in {STRIDES} and dilation in {DILATIONS}",
        shapes,
        "Pass stride=... and dilation=... if the layer used larger ones.",
    )


def _readings(kernel: np.ndarray, bias: np.ndarray | None):
    fits = layouts.fitting_layouts(tuple(kernel.shape))
    if not fits:
        known = "; ".join(f"{n} ({a})" for n, a in layouts.LAYOUTS.items())
        raise fail(
            ShapeError,
            "The kernel's shape fits no known layout",
            f"a kernel in one of the layouts {known}",
            f"shape {tuple(kernel.shape)}",
            "Pass the kernel exactly as the framework's get_weights() returned it.",
        )
    readings = [(name, layouts.LAYOUTS[name], (s["O"], s["I"], s["K"]), tuple(kernel.shape)) for name, s in fits]
    if bias is not None:
        kept = [r for r in readings if bias.shape == (r[2][0],)]
        if not kept:
            raise fail(
                ShapeError,
                "The bias matches no output-channel axis of the kernel",
                f"bias of shape (O,) with O in {sorted({r[2][0] for r in readings})}",
                f"bias {tuple(bias.shape)} with kernel {tuple(kernel.shape)}",
            )
        readings = kept
    return readings


def _worst_dtype(*arrays: np.ndarray) -> str:
    return max((a.dtype.name for a in arrays), key=lambda n: ASSERT_CLOSE_DEFAULTS[n][0])


#: Elements every activation is first checked on; only those that pass there (or the
#: closest, when none does) are checked on the whole output.  A wrong activation is
#: wrong on most elements, so the sample rejects it for a fraction of the cost.
SAMPLE = 256


def _errors(got: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``|got - out|``, infinite where ``got`` is not finite."""
    err = np.abs(got - out)
    err[~np.isfinite(got)] = np.inf
    return err


def _max(values: np.ndarray) -> float:
    return float(values.max()) if values.size else 0.0


#: A reading that no activation matches is reported under the activation that brings it
#: closest only when that is this many times closer than no activation; otherwise under
#: ``linear`` (far from ``y``, the closest activation is an accident of the values).
CLOSER = 10.0


def _evaluate(spec: _Spec, kernel, bias, x, y, worst: str, cache: dict) -> list[Candidate]:
    """The reading's matching activations, or (when none matches) the one it is reported under.

    Closeness is measured as the error over the tolerance before any activation:
    the same yardstick for all, so an activation with a steep slope (and so a
    wider tolerance) is not preferred for that alone.
    """
    key = (spec.layout, spec.flipped, spec.x_format, spec.stride, spec.dilation, spec.pads)
    if key not in cache:
        reading = Convention("candidate", spec.layout, spec.flipped, spec.x_format)
        conv = reading.conv1d(kernel, bias, stride=spec.stride, dilation=spec.dilation, groups=spec.groups, padding=spec.pads)
        xc = x if spec.x_format == "channels_first" else x.transpose(0, 2, 1)
        checked = conv
        if conv.dtype.name != worst:  # tolerance of the least precise of kernel, bias, x and y
            checked = conv.replace(kernel=conv.kernel.astype(worst), bias=None if bias is None else bias.astype(worst))
        tol, rtol, _ = tolerance(checked, xc)
        linear = reference.conv1d(conv, xc)
        sample = np.unique(np.linspace(0, linear.size - 1, min(SAMPLE, linear.size)).astype(np.intp))
        cache[key] = (conv, linear.ravel(), tol.ravel(), rtol, sample)
    conv, linear, tol, rtol, sample = cache[key]
    got = np.ascontiguousarray(y if spec.y_format == "channels_first" else y.transpose(0, 2, 1), dtype=np.float64).ravel()

    def score(name: str, at: Any) -> tuple[float, float, float]:
        """(max |error|, max error / tolerance, max error / tolerance before the activation) on elements ``at``."""
        out = activations.apply(name, linear[at])
        err = _errors(got[at], out)
        return _max(err), _max(err / through_activation(tol[at], name, out, rtol)), _max(err / tol[at])

    first = {name: score(name, sample) for name in ACTIVATIONS}
    passed = [name for name in ACTIVATIONS if first[name][1] <= 1.0]
    if not passed:
        closest = min(ACTIVATIONS, key=lambda n: first[n][2])
        passed = [closest if first[closest][2] * CLOSER <= first["linear"][2] else "linear"]
    scores = [(name, *score(name, slice(None))[:2]) for name in passed]
    kept = [sc for sc in scores if sc[2] <= 1.0] or [min(scores, key=lambda sc: sc[2])]
    if spec.paddings[0] in PADDING_RULES:  # keep the rule (it matters when the length changes)
        conv = conv.replace(padding=spec.paddings[0])
    conventions = _conventions(spec.layout, spec.flipped, spec.x_format)
    return [
        Candidate(
            layout=spec.layout,
            layout_name=spec.layout_name,
            flipped=spec.flipped,
            x_format=spec.x_format,
            y_format=spec.y_format,
            stride=spec.stride,
            dilation=spec.dilation,
            groups=spec.groups,
            paddings=spec.paddings,
            pads=spec.pads,
            activation=name,
            conventions=conventions,
            max_abs_error=max_abs,
            error_over_tolerance=ratio,
            conv=conv.replace(activation=name),
        )
        for name, max_abs, ratio in kept
    ]


def _preference(c: Candidate) -> tuple:
    """Order among matches: plain stride/dilation, a named convention, no flip, the usual paddings."""
    return (
        c.stride * c.dilation,
        not c.conventions,
        c.flipped,
        ACTIVATIONS.index(c.activation),
        PADDINGS.index(c.paddings[0]),
        list(layouts.LAYOUTS).index(c.layout_name),
        c.error_over_tolerance,
    )


# -- ambiguity ------------------------------------------------------------------


def _differences(matches: tuple[Candidate, ...]) -> list[str]:
    first = matches[0]
    checks = {
        "flip": lambda c: c.flipped,
        "layout": lambda c: c.layout,
        "data format": lambda c: (c.x_format, c.y_format),
        "padding": lambda c: c.pads,
        "stride/dilation": lambda c: (c.stride, c.dilation),
        "activation": lambda c: c.activation,
    }
    return [name for name, key in checks.items() if any(key(c) != key(first) for c in matches[1:])]


def _probe_outputs(c: Candidate, probe: np.ndarray) -> np.ndarray:
    xc = probe if c.x_format == "channels_first" else probe.transpose(0, 2, 1)
    out = reference.conv1d(c.conv, xc)
    return out if c.y_format == "channels_first" else out.transpose(0, 2, 1)


def _ambiguity_note(matches: tuple[Candidate, ...], x_shape: tuple[int, ...]) -> str:
    if len(matches) < 2:
        return ""
    differ = _differences(matches)
    probe = "np.random.default_rng(0).standard_normal(x.shape)"
    telling = None  # the first probe on which the readings differ; a large one too, where activations saturate
    try:
        for scale in (1, 30):
            outs = [_probe_outputs(c, scale * np.random.default_rng(0).standard_normal(x_shape)) for c in matches]
            if not all(o.shape == outs[0].shape and np.allclose(o, outs[0], rtol=1e-9, atol=1e-12) for o in outs[1:]):
                telling = probe if scale == 1 else f"{scale} * {probe}"
                break
    except Exception:  # a probe that a reading cannot run on tells them apart too
        telling = probe
    head = f"{len(matches)} readings reproduce y; they differ in {', '.join(differ) or 'padding names only'}. "
    if telling is None:
        return head + (
            "With these weights they compute the same function (on any input), so every one of them is a correct "
            "conversion of these weights and no input can tell them apart; only different weights could: "
            + "; ".join(dict.fromkeys(WEIGHTS_DISTINGUISH[d] for d in differ))
            + "."
        )
    return head + (
        "They compute different functions that happen to agree on this x: run the framework again on "
        f"a random-normal input of shape {x_shape} ({telling} differs between them) "
        "and diagnose that output. What tells them apart: " + "; ".join(dict.fromkeys(INPUT_DISTINGUISH[d] for d in differ)) + "."
    )


# -- the public function ---------------------------------------------------------


def diagnose(
    kernel: Any,
    bias: Any,
    x: Any,
    y: Any,
    *,
    stride: int | None = None,
    dilation: int | None = None,
    groups: int | None = None,
    top: int = 3,
) -> Diagnosis:
    """Find the readings of raw ``kernel``/``bias`` under which ``x`` gives ``y``.

    >>> d = diagnose(W, b, x, y)        # W (10, 1, 3, 64), x (1, 123, 3), y (1, 114, 64)   # doctest: +SKIP
    >>> d.matches[0].conventions, d.code                                                    # doctest: +SKIP
    (('keras1.1-theano',), "conv = layoutconv.conventions.CONVENTIONS['keras1.1-theano'].conv1d(W, b, padding='valid')")

    Parameters
    ----------
    kernel, bias:
        The weights exactly as the framework returned them (any layout in
        :data:`layoutconv.layouts.LAYOUTS`); ``bias`` may be ``None``.
    x, y:
        One input and the output the framework computed from it, 3-d (a 2-d
        pair is read as a batch of one), channels first or last (both are tried).
        4-d ``x`` and ``y`` are a 2-D convolution's: see :mod:`layoutconv._diagnose_2d`
        (``stride`` and ``dilation`` may then be pairs).
    stride, dilation, groups:
        Fix these when known.  Otherwise stride = dilation = 1 is tried first, then
        strides 1..4 and dilations 1..3 if nothing matched; groups follow from the shapes.
        Every reading is tried with each activation in :data:`ACTIVATIONS` (a ``y``
        taken after a fused ``relu`` or ``tanh`` is found, and ``d.conv`` carries it).
    top:
        How many of the closest non-matching readings to report.
    """
    started = time.perf_counter()
    kernel = _float_array("kernel", kernel)
    bias = None if bias is None else _float_array("bias", bias)
    x, y = _float_array("x", x), _float_array("y", y)
    if x.ndim == 4 and y.ndim == 4:
        from ._diagnose_2d import diagnose_2d  # a 2-D convolution

        return diagnose_2d(kernel, bias, x, y, stride=stride, dilation=dilation, groups=groups, top=top)  # type: ignore[return-value]
    if x.ndim == 2 and y.ndim == 2:
        x, y = x[None], y[None]
    if x.ndim != 3 or y.ndim != 3 or x.shape[0] != y.shape[0]:
        raise fail(
            ShapeError,
            "x and y do not look like one layer's input and output",
            "two 3-d arrays with the same batch size: (N, C, L) or (N, L, C) and (N, O, L_out) or (N, L_out, O)",
            f"x {tuple(x.shape)}, y {tuple(y.shape)}",
        )
    for name, value in (("stride", stride), ("dilation", dilation), ("groups", groups)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise fail(
                ConfigError, f"Invalid value for argument `{name}`", "a strictly positive integer or None", f"{name}={value!r}"
            )
    readings = _readings(kernel, bias)
    first = [(stride or 1, dilation or 1)]
    strides, dilations = (stride,) if stride else STRIDES, (dilation,) if dilation else DILATIONS
    wide = [(s, d) for s in strides for d in dilations if (s, d) not in first]
    worst = _worst_dtype(kernel, x, y, *(() if bias is None else (bias,)))
    cache: dict = {}
    per_reading = [_evaluate(spec, kernel, bias, x, y, worst, cache) for spec in _specs(readings, x, y, first, groups)]
    if not any(c.matched for found in per_reading for c in found) and wide:
        per_reading += [_evaluate(spec, kernel, bias, x, y, worst, cache) for spec in _specs(readings, x, y, wide, groups)]
    if not per_reading:
        raise _shape_error(readings, x, y, bias, groups)
    candidates = [c for found in per_reading for c in found]
    matches = tuple(sorted((c for c in candidates if c.matched), key=_preference))
    misses = tuple(sorted((c for c in candidates if not c.matched), key=lambda c: c.error_over_tolerance)[: max(top, 0)])
    return Diagnosis(
        kernel_shape=tuple(kernel.shape),
        bias_shape=None if bias is None else tuple(bias.shape),
        x_shape=tuple(x.shape),
        y_shape=tuple(y.shape),
        tried=len(per_reading),
        matches=matches,
        near_misses=misses,
        note=_ambiguity_note(matches, tuple(x.shape)),
        seconds=time.perf_counter() - started,
    )


# -- text ----------------------------------------------------------------------


_FMT = {"channels_last": "last", "channels_first": "first"}


def _columns(c: Candidate) -> list[str]:
    return [
        "yes" if c.matched else "no",
        ",".join(c.conventions) or f"custom {c.layout_name}",
        c.layout,
        "yes" if c.flipped else "no",
        f"{_FMT[c.x_format]}/{_FMT[c.y_format]}",
        str(c.stride),
        str(c.dilation),
        str(c.groups),
        "=".join(c.paddings),
        str(c.pads),
        c.activation,
        f"{c.max_abs_error:.2e}",
        f"{c.error_over_tolerance:.2e}",
    ]


def format_diagnosis(d: Diagnosis) -> str:
    """The table ``str(diagnosis)`` prints."""
    bias = "no bias" if d.bias_shape is None else f"bias {d.bias_shape}"
    verb = "reproduces" if len(d.matches) == 1 else "reproduce"
    header = ["match", "convention", "layout", "flip", "x/y format", "s", "d", "g", "padding", "pads", "activation"]
    header += ["max|err|", "err/tol"]
    rows = [header] + [_columns(c) for c in d.matches + d.near_misses]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        f"kernel {d.kernel_shape}, {bias}, x {d.x_shape}, y {d.y_shape}: {d.tried} readings fit the shapes, "
        f"each tried with {len(ACTIVATIONS)} activations; {len(d.matches)} {verb} y ({d.seconds:.3f} s)"
    ]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    if d.matches:
        lines.append(f"Use: {d.code}")
        lines.append(f"  -> {d.conv!r}")
    else:
        lines.append(
            f"No reading reproduces y with any activation tried ({', '.join(ACTIVATIONS)}). If the closest error is "
            "small, y may come from a lower precision than x and the weights (e.g. float16); if it is large, check "
            "that y is this layer's output for this x, taken before any layer that follows it."
        )
    if d.note:
        lines.append(d.note)
    return "\n".join(lines)

