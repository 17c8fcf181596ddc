"""The equivalence harness: run a converted convolution in each framework and compare with the reference.

Each framework's output is compared elementwise with :func:`layoutconv.reference.conv1d`
under the tolerance policy of :mod:`layoutconv.tolerance` (``torch.testing.assert_close``'s
per-dtype ``rtol``/``atol`` applied to the magnitude of the summed terms).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from . import frameworks as _fw
from . import reference
from .conv import Conv1D
from .errors import LayoutError, UnsupportedError
from .tolerance import ASSERT_CLOSE_DEFAULTS, tolerance  # noqa: F401  (re-exported: verify's public names)

DEFAULT_FRAMEWORKS = ("keras", "tf_keras", "torch", "onnx")


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
            f"input (N, C, L) = {self.input_shape}  ->  reference output {self.reference_shape}",
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


def default_input(conv: Conv1D, *, length: int | None = None, batch: int = 2, seed: int = 0) -> np.ndarray:
    """A symmetry-breaking input ``(N, C, L)``: standard normal values, an odd length that is not a multiple of the stride."""
    if length is None:
        (span,), (s,) = conv.receptive_field, conv.stride
        length = 2 * span + 3 * s + 4
        # odd, not a multiple of the stride, and (to stay clear of a Keras 3 channels_first
        # bias bug, see docs/verification.md) an output length different from out_channels
        while length % 2 == 0 or (s > 1 and length % s == 0) or conv.output_length(length) == conv.out_channels:
            length += 1
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, conv.in_channels, length)).astype(conv.dtype)


def compare(conv: Conv1D, x: np.ndarray, y: Any, framework: str, expected: np.ndarray | None = None) -> Result:
    """Compare one framework output ``y`` (``(N, O, L_out)``) with the reference, elementwise."""
    if expected is None:
        expected = reference.conv1d(conv, x)
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


def verify(
    conv: Conv1D,
    frameworks: Iterable[str] | None = None,
    x: Any = None,
    *,
    length: int | None = None,
    batch: int = 2,
    seed: int = 0,
    keras_data_format: str = "channels_last",
) -> Report:
    """Convert ``conv`` into each framework, run it on the same input, and compare with the reference.

    >>> import numpy as np, layoutconv
    >>> conv = layoutconv.Conv1D(np.random.default_rng(1).normal(size=(4, 3, 5)).astype("float32"))
    >>> report = layoutconv.verify(conv, frameworks=["torch"])   # doctest: +SKIP
    >>> report.passed                                            # doctest: +SKIP
    True

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
    keras_data_format:
        Which Keras layout to build and run (``channels_last`` or ``channels_first``).
    """
    explicit = frameworks is not None
    names = [_fw.canonical_name(f) for f in (frameworks if explicit else DEFAULT_FRAMEWORKS)]
    if x is None:
        x = default_input(conv, length=length, batch=batch, seed=seed)
    x, _ = reference.check_input(conv, x)
    if x.dtype != conv.dtype:
        x = x.astype(conv.dtype)
    expected = reference.conv1d(conv, x)
    results = []
    for name in names:
        if not _fw.is_available(name):
            if explicit:
                _fw.adapter(name)  # raises FrameworkMissingError with the install hint
            results.append(Result(framework=name, status="missing", message=f"not installed ({_fw.INSTALL_HINT[name]})"))
            continue
        adapter = _fw.adapter(name)
        options = {"data_format": keras_data_format} if name in ("keras", "tf_keras") else {}
        try:
            native = adapter.to_native(conv, **options)
            y = adapter.run(native, x)
        except UnsupportedError as exc:
            results.append(Result(framework=name, status="unsupported", message=str(exc)))
            continue
        except LayoutError as exc:
            results.append(Result(framework=name, status="error", message=str(exc)))
            continue
        results.append(compare(conv, x, y, name, expected))
    return Report(conv=conv, input_shape=tuple(x.shape), reference_shape=tuple(expected.shape), results=tuple(results))

