"""The equivalence harness: run a converted convolution in each framework and compare with the reference.

Each framework's output is compared elementwise with :func:`layoutconv.reference.conv1d`
under the tolerance policy of :mod:`layoutconv.tolerance` (``torch.testing.assert_close``'s
per-dtype ``rtol``/``atol`` applied to the magnitude of the summed terms).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from . import frameworks as _fw
from .errors import ConfigError, LayoutError, UnsupportedError, fail

if TYPE_CHECKING:
    from .conv import Conv1D

# ``import layoutconv`` imports this module (``verify`` is a top-level name), so the
# reference pass, the records, the registry and the tolerance policy are imported by
# the functions that use them, not here.

DEFAULT_FRAMEWORKS = ("keras", "tf_keras", "torch", "onnx")
_AXES = {1: "L", 2: "H, W", 3: "D, H, W"}


@dataclass(frozen=True)
class Result:
    """How one framework compared with the reference."""

    framework: str
    status: str  # "pass", "fail", "unsupported", "missing", "error"
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    worst_error_over_tolerance: float | None = None
    rtol: float | None = None
    atol: float | None = None
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    message: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "pass"


@dataclass(frozen=True)
class Report:
    """The outcome of :func:`verify`: one :class:`Result` per framework."""

    conv: Conv1D
    input_shape: tuple[int, ...]
    reference_shape: tuple[int, ...]
    results: tuple[Result, ...]

    @property
    def passed(self) -> bool:
        """True when at least one framework ran and none failed or errored."""
        ran = [r for r in self.results if r.status in ("pass", "fail", "error")]
        return bool(ran) and all(r.passed for r in ran)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: the convolution, the shapes, and every result."""
        h = self.conv.hyperparameters()
        return {
            "conv": {k: (list(v) if isinstance(v, tuple) else v) for k, v in h.items()},
            "input_shape": list(self.input_shape),
            "reference_shape": list(self.reference_shape),
            "passed": self.passed,
            "results": [asdict(r) for r in self.results],
        }

    def __getitem__(self, framework: str) -> Result:
        name = _fw.canonical_name(framework)
        for r in self.results:
            if r.framework == name:
                return r
        raise KeyError(framework)

    def __str__(self) -> str:
        lines = [
            f"{self.conv!r}",
            f"input (N, C, {_AXES[len(self.input_shape) - 2]}) = {self.input_shape}  ->  reference output {self.reference_shape}",
            f"{'framework':<10} {'status':<12} {'max abs err':>12} {'max rel err':>12} {'err/tol':>8} {'rtol':>9} {'atol':>9}",
        ]
        for r in self.results:
            if r.max_abs_error is None:
                lines.append(f"{r.framework:<10} {r.status:<12} {r.message}")
                continue
            lines.append(
                f"{r.framework:<10} {r.status:<12} {r.max_abs_error:>12.3e} {r.max_rel_error:>12.3e} "
                f"{r.worst_error_over_tolerance:>8.3f} {r.rtol:>9.2e} {r.atol:>9.2e}"
                + (f"  {r.message}" if r.message else "")
            )
        lines.append("PASSED" if self.passed else "FAILED")
        return "\n".join(lines)


def default_input(conv: Any, *, length: int | None = None, batch: int = 2, seed: int = 0) -> np.ndarray:
    """A symmetry-breaking input ``(N, C, *spatial)``: standard normal values, each spatial size odd and not a
    multiple of its stride (so ``'same'`` pads are asymmetric and the last window partial), sizes differing per axis.

    ``length`` sets every spatial size.  A recurrent record gets ``(N, F, T)`` with ``T = length or 7``.
    """
    from .conv import Conv
    from .recurrent import LAYER_TYPES, default_input as sequence_input

    if isinstance(conv, LAYER_TYPES):
        return sequence_input(conv, steps=length or 7, batch=batch, seed=seed)
    rank = conv.spatial_rank
    if length is not None:
        return np.random.default_rng(seed).standard_normal((batch, conv.in_channels, *(int(length),) * rank)).astype(conv.dtype)
    sizes = []
    for axis, (span, s) in enumerate(zip(conv.receptive_field, conv.stride)):
        size = (2 * span + 3 * s + 4 if isinstance(conv, Conv) else span + 2) + 2 * axis  # axes of different sizes
        while size % 2 == 0 or (s > 1 and size % s == 0):  # odd, and not a multiple of the stride
            size += 1
        sizes.append(size)
    # Stay clear of a Keras 3 channels_first bias bug (docs/verification.md): the last output
    # size must differ from out_channels.
    while _last_output_size(conv, sizes) == conv.out_channels:
        sizes[-1] += 2 * conv.stride[-1]  # stays odd and off the stride; the output moves by 2
    sizes = tuple(sizes)
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, conv.in_channels, *sizes)).astype(conv.dtype)


def _last_output_size(record: Any, sizes: list[int]) -> int | None:
    """The reference's output size on the last spatial axis (``None`` when the record has no single formula)."""
    layers = getattr(record, "layers", (record,))
    for layer in layers:
        try:
            sizes = list(layer.output_shape(tuple(sizes)))
        except (AttributeError, LayoutError):
            return None
    return sizes[-1]


def compare(conv: Conv1D, x: np.ndarray, y: Any, framework: str, expected: np.ndarray | None = None) -> Result:
    """Compare one framework output ``y`` (``(N, O, L_out)``) with the reference, elementwise."""
    from . import reference
    from .tolerance import tolerance

    if expected is None:
        expected = reference.forward(conv, x)
    y = np.asarray(y)
    tol, rtol, atol = tolerance(conv, x, expected)
    common = dict(framework=framework, rtol=rtol, atol=atol, shape=tuple(y.shape), dtype=y.dtype.name)
    if y.shape != expected.shape:
        return Result(status="fail", message=f"shape {tuple(y.shape)} != reference {tuple(expected.shape)}", **common)
    problems = []
    if y.dtype != conv.dtype:
        problems.append(f"dtype {y.dtype.name} != {conv.dtype.name}")
    err = np.abs(y.astype(np.float64) - expected)
    if not np.isfinite(err).all():
        problems.append("non-finite output")
        err = np.where(np.isfinite(err), err, np.inf)
    with np.errstate(over="ignore", divide="ignore"):  # relative to an exact zero (after relu) is inf
        rel = err / np.maximum(np.abs(expected), np.finfo(np.float64).tiny)
    ratio = float(np.max(err / tol)) if err.size else 0.0
    status = "pass" if ratio <= 1.0 and not problems else "fail"
    if ratio > 1.0:
        worst = np.unravel_index(int(np.argmax(err / tol)), err.shape)
        problems.append(
            f"worst at (n, f, t) = {tuple(int(i) for i in worst)}: got {float(y[worst]):.6g}, reference {float(expected[worst]):.6g}"
        )
    return Result(
        status=status,
        max_abs_error=float(err.max()) if err.size else 0.0,
        max_rel_error=float(rel.max()) if rel.size else 0.0,
        worst_error_over_tolerance=ratio,
        message="; ".join(problems),
        **common,
    )


def _differences(conv: Conv1D, theirs: Conv1D, length: int) -> list[str]:
    """What differs between the record and the user's module, in the user's terms ("your module ...")."""
    notes: list[str] = []
    k_mine, k_theirs = conv.kernel, theirs.kernel
    if k_theirs.shape != k_mine.shape:
        notes.append(f"your kernel has shape {k_theirs.shape} (O, I/groups, K); this layer's is {k_mine.shape}")
    elif not theirs.same_weights(conv.replace(activation=theirs.activation)):
        a, b = k_theirs.astype(np.float64), k_mine.astype(np.float64)
        if np.array_equal(a, b[..., ::-1]) and not np.array_equal(a, b):
            notes.append(
                "your kernel is this layer's reversed along the kernel axis: a kernel trained with Theano "
                "used without its flip, or flipped twice"
            )
        elif not np.array_equal(a, b) and np.array_equal(np.sort(a, axis=None), np.sort(b, axis=None)):
            notes.append(
                "your kernel holds this layer's values in another order: a reshape where a transpose was "
                "needed, or the wrong axis order (PyTorch and ONNX kernels are (O, I/groups, K), Keras's (K, I, O))"
            )
        elif not np.array_equal(a, b):
            notes.append(f"your kernel's values differ from this layer's (largest difference {np.abs(a - b).max():.3g})")
        if (theirs.bias is None) != (conv.bias is None):
            notes.append("your module has no bias; this layer has one" if theirs.bias is None else "your module adds a bias; this layer has none")
        elif theirs.bias is not None and not np.array_equal(theirs.bias.astype(np.float64), conv.bias.astype(np.float64)):
            notes.append("your bias differs from this layer's")
        if theirs.dtype != conv.dtype:
            notes.append(f"your weights are {theirs.dtype.name}; this layer's are {conv.dtype.name}")
    for field, label in (("stride", "stride"), ("dilation", "dilation"), ("groups", "groups")):
        mine_v, theirs_v = getattr(conv, field), getattr(theirs, field)
        if mine_v != theirs_v:
            one = (lambda v: v[0]) if isinstance(mine_v, tuple) else (lambda v: v)
            notes.append(f"your module uses {label} {one(theirs_v)}; this layer uses {one(mine_v)}")
    same_geometry = (conv.kernel_shape, conv.stride, conv.dilation) == (theirs.kernel_shape, theirs.stride, theirs.dilation)
    if same_geometry and not conv.same_pads_for_every_size(theirs.padding):
        notes.append(_padding_difference(conv, theirs, length))
    if theirs.padding_mode != conv.padding_mode:
        notes.append(f"your module pads with {theirs.padding_mode}; this layer with {conv.padding_mode}")
    if theirs.activation != conv.activation:
        notes.append(f"your module applies {theirs.activation}; this layer applies {conv.activation}")
    return notes


def _padding_difference(conv: Conv1D, theirs: Conv1D, length: int) -> str:
    """The first input length (the tested one first) where the two paddings differ, said in the user's terms."""
    span, stride = conv.receptive_field[0], conv.stride[0]
    for n in [length, *range(span, span + 2 * stride + 8)]:
        mine_p, theirs_p = conv.pads(n)[0], theirs.pads(n)[0]
        if mine_p != theirs_p:
            where = f"at length {n}" if n == length else f"at length {n} (they agree at this input's length {length})"
            return f"your module pads {theirs_p}; this layer needs {mine_p} {where}"
    return f"your module pads by {theirs.padding!r}; this layer by {conv.padding!r}"  # pragma: no cover


def _other_lengths(conv: Any, length: int) -> list[int]:
    """Lengths that meet every other case of a length-dependent padding (one per residue mod the stride, at most 7)."""
    from .conv import Conv1D

    if not (isinstance(conv, Conv1D) and conv.padding_depends_on_length):
        return []
    return [length + j for j in range(1, min(conv.stride[0], 8))]


def _verify_native(conv: Conv1D, native: Any, x: np.ndarray, expected: np.ndarray, seed: int) -> Result:
    from . import reference
    from .conv import Conv1D

    name = _fw.framework_of(native)
    adapter = _fw.adapter(name)
    rng = np.random.default_rng(seed + 1)
    inputs = [(x, expected)]
    for n in _other_lengths(conv, x.shape[-1]):
        extra = rng.standard_normal((x.shape[0], x.shape[1], n)).astype(conv.dtype)
        inputs.append((extra, reference.forward(conv, extra)))
    result = None
    for xi, ei in inputs:
        try:
            y = adapter.run(native, xi)
        except UnsupportedError as exc:
            return Result(framework=name, status="unsupported", message=str(exc))
        except LayoutError as exc:
            return Result(framework=name, status="error", message=f"at input length {xi.shape[-1]}: {exc}")
        outcome = compare(conv, xi, y, name, ei)
        if result is None:
            result = outcome
        if not outcome.passed:
            if xi is not x:
                outcome = replace(outcome, message=f"at input length {xi.shape[-1]} (the first input passed): {outcome.message}")
            result = outcome
            break
    assert result is not None
    try:
        theirs = adapter.from_native(native)
    except LayoutError as exc:
        if result.passed:
            return result
        return replace(result, message=f"{result.message}; layoutconv cannot read your module's configuration, "
                       f"so only its outputs were compared ({exc})")
    notes = _differences(conv, theirs, x.shape[-1]) if isinstance(conv, Conv1D) and isinstance(theirs, Conv1D) else []
    if type(theirs) is not type(conv):
        notes = [f"your module is a {type(theirs).__name__}; this layer is a {type(conv).__name__}"]
    if not notes:
        return result
    return replace(result, status="fail", message="; ".join(notes + ([result.message] if result.message else [])))


def _is_model(obj: Any) -> bool:
    """A framework model object (a torch Module) rather than a list of framework names."""
    module = type(obj).__module__ or ""
    return module.startswith("torch") or hasattr(obj, "named_modules")


def verify(
    conv: Conv1D,
    frameworks: Iterable[str] | None = None,
    x: Any = None,
    *,
    native: Any = None,
    length: int | None = None,
    batch: int = 2,
    seed: int = 0,
    keras_data_format: str = "channels_last",
    workers: int | None = None,
) -> Report:
    """Convert ``conv`` into each framework, run it on the same input, and compare with the reference.

    With ``native=``, check a layer or module *you* built instead (a ``torch.nn.Module``,
    a Keras layer, an ONNX model): it runs on the same input, and a mismatch is
    explained in your terms ("your module pads (2, 2); this layer needs (1, 2) at
    length 31").  Its configuration must match for every input length, not only
    the one tested.

    >>> import numpy as np, layoutconv
    >>> conv = layoutconv.Conv1D(np.random.default_rng(1).normal(size=(4, 3, 5)).astype("float32"))
    >>> report = layoutconv.verify(conv, frameworks=["torch"])   # doctest: +SKIP
    >>> report.passed                                            # doctest: +SKIP
    True
    >>> layoutconv.verify(conv, native=my_module).passed        # doctest: +SKIP

    Parameters
    ----------
    conv:
        The canonical convolution.
    frameworks:
        Names or aliases (``"keras"``, ``"tf_keras"``, ``"torch"``, ``"onnx"``).  Default:
        every framework that is installed; a framework named explicitly but not
        installed raises :class:`~layoutconv.FrameworkMissingError`.
    x:
        Input ``(N, C, L)``; default :func:`default_input`, cast to the kernel's dtype.
    native:
        Your own layer or module to check against ``conv`` (instead of ``frameworks``).
    keras_data_format:
        Which Keras layout to build and run (``channels_last`` or ``channels_first``).
    workers:
        How many worker processes may convert and run frameworks side by side
        (:mod:`layoutconv._workers`: Keras 3 and tf_keras share one, which imports
        TensorFlow once; with fewer workers than that, the lighter frameworks share).
        Default ``None`` = 1: everything runs in this process, one framework after
        the other, which is what a caller that has already imported its frameworks
        wants, and needs no ``if __name__ == "__main__":`` guard in a script (workers
        are spawned interpreters, which re-import the main script).  The command
        line passes one per CPU (``--workers``, ``LAYOUTCONV_WORKERS``): most of a
        fresh ``verify``'s time is importing TensorFlow and PyTorch, which then
        happens side by side.  The report is the same either way.
    """
    from . import reference
    from .conv import Conv
    from .graph import Graph

    if frameworks is not None and not isinstance(frameworks, str) and _is_model(frameworks):
        # verify(source, target, inputs): your own PyTorch model, checked against the source model
        from .porting import compare as compare_models

        return compare_models(conv, frameworks, x)  # type: ignore[return-value]
    if isinstance(conv, Graph):
        if native is not None:
            raise fail(ConfigError, "verify(graph, native=...) is not supported", "layoutconv.port(graph, module, example_inputs=...) to check a module of your own", "native=")
        from .verify_model import verify_model

        return verify_model(conv, frameworks, x, seed=seed)  # type: ignore[return-value]
    if native is not None and frameworks is not None:
        raise fail(
            ConfigError,
            "verify takes either frameworks= or native=",
            "frameworks to convert into, or your own module to check",
            f"frameworks={list(frameworks)!r} and native={type(native).__name__}",
        )
    explicit = frameworks is not None
    names = [_fw.canonical_name(f) for f in (frameworks if explicit else DEFAULT_FRAMEWORKS)]
    if x is None:
        x = default_input(conv, length=length, batch=batch, seed=seed)
    if isinstance(conv, Conv):
        x, _ = reference.check_input(conv, x)
    x = np.asarray(x)
    if x.dtype != conv.dtype:
        x = x.astype(conv.dtype)
    if native is not None:
        expected = reference.forward(conv, x)
        shapes = dict(conv=conv, input_shape=tuple(x.shape), reference_shape=tuple(expected.shape))
        return Report(results=(_verify_native(conv, native, x, expected, seed),), **shapes)
    results: dict[str, Result] = {}
    for name in names:
        if not _fw.is_available(name):
            if explicit:
                _fw.adapter(name)  # raises FrameworkMissingError with the install hint
            results[name] = Result(framework=name, status="missing", message=f"not installed ({_fw.INSTALL_HINT[name]})")
    runnable = [name for name in dict.fromkeys(names) if name not in results]
    if workers is None:
        workers = 1
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise fail(ConfigError, "Invalid number of workers", "a positive integer (1: everything in this process)", f"workers={workers!r}")
    from ._workers import Concurrent, groups

    if workers > 1 and len(groups(runnable)) > 1:  # one group (keras + tf_keras) gains nothing from a worker
        with Concurrent(conv, runnable, x, keras_data_format, workers) as running:
            expected = reference.forward(conv, x)  # while the workers import their frameworks
            outputs = running.outputs()
    else:
        expected = reference.forward(conv, x)
        outputs = {name: run_one(conv, name, x, keras_data_format) for name in runnable}
    for name, out in outputs.items():
        results[name] = out if isinstance(out, Result) else compare(conv, x, out, name, expected)
    shapes = dict(conv=conv, input_shape=tuple(x.shape), reference_shape=tuple(expected.shape))
    return Report(results=tuple(results[name] for name in names), **shapes)


def run_one(conv: Any, name: str, x: np.ndarray, keras_data_format: str = "channels_last") -> Any:
    """Convert ``conv`` into one framework and run it on ``x``: the output array, or a :class:`Result` saying why there is none.

    What every worker of a concurrent :func:`verify` runs (:mod:`layoutconv._workers`), and the
    sequential path too, so both report the same.  An error that is not a :class:`LayoutError`
    propagates.
    """
    from . import registry

    options = {"data_format": keras_data_format} if name in ("keras", "tf_keras") else {}
    try:
        converter = registry.converter(conv, name)
        native_made = converter.to_native(conv, **options)
        return np.asarray(converter.run(native_made, x))
    except UnsupportedError as exc:
        return Result(framework=name, status="unsupported", message=str(exc))
    except LayoutError as exc:
        return Result(framework=name, status="error", message=str(exc))


def __getattr__(name: str) -> Any:
    # re-exported for callers of the tolerance policy through verify (``from layoutconv.verify import tolerance``)
    if name in ("tolerance", "ASSERT_CLOSE_DEFAULTS"):
        from . import tolerance as _tolerance

        return getattr(_tolerance, name)
    raise AttributeError(f"module 'layoutconv.verify' has no attribute {name!r}")
