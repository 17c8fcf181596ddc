"""Find NaN and Inf in stored weights, and say where they are in the file's own layout.

>>> import numpy as np
>>> w = np.zeros((5, 4, 80), np.float32); w[3, 0, 17] = np.nan; w[4, 1, 2] = np.inf
>>> print(find(w, "conv1d_1/kernel:0", role="kernel", layout="K I O").message())
kernel conv1d_1/kernel:0 has NaN at (3, 0, 17) in the file's (K, I, O) layout; 2 non-finite values (1 NaN, 1 +Inf)

``layoutconv.Conv1D`` refuses non-finite weights when it is built; ``layoutconv
inspect`` reports them earlier, for every array of a file, with the index as
the file stores it (not in the canonical ``O I K`` layout).  Only numpy is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class NonFinite:
    """The non-finite values of one stored array: the first one's index (C order) and the counts."""

    tensor: str
    role: str  # "kernel", "bias", "weight", "tensor"
    index: tuple[int, ...]
    value: str  # "NaN", "+Inf" or "-Inf": the value at ``index``
    nan: int
    posinf: int
    neginf: int
    layout: str | None = None  # the array's axis names as the file stores it ("K I O"), when known

    @property
    def count(self) -> int:
        return self.nan + self.posinf + self.neginf

    def message(self) -> str:
        where = f" in the file's ({', '.join(self.layout.split())}) layout" if self.layout else ""
        kinds = ", ".join(f"{n} {k}" for k, n in (("NaN", self.nan), ("+Inf", self.posinf), ("-Inf", self.neginf)) if n)
        plural = "s" if self.count != 1 else ""
        return f"{self.role} {self.tensor} has {self.value} at {self.index}{where}; {self.count} non-finite value{plural} ({kinds})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "tensor": self.tensor,
            "role": self.role,
            "index": list(self.index),
            "layout": self.layout,
            "value": self.value,
            "count": self.count,
            "nan": self.nan,
            "posinf": self.posinf,
            "neginf": self.neginf,
            "message": self.message(),
        }


def _as_checkable(array: Any) -> np.ndarray | None:
    """A numpy array np.isfinite accepts, or None for dtypes that cannot hold NaN or Inf (integers, bool)."""
    arr = np.asarray(array)
    if arr.dtype.kind in "fc":
        return arr
    if arr.dtype.kind == "V" and arr.dtype.names is None:  # ml_dtypes (bfloat16, float8_*): exact in float32
        try:
            return arr.astype(np.float32)
        except (TypeError, ValueError):
            return None
    return None


def find(array: Any, tensor: str, *, role: str = "tensor", layout: str | None = None) -> NonFinite | None:
    """The :class:`NonFinite` record of ``array``, or ``None`` when every value is finite (or the dtype cannot be non-finite)."""
    arr = _as_checkable(array)
    if arr is None:
        return None
    bad = ~np.isfinite(arr)
    if not bad.any():
        return None
    first = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), arr.shape)) if arr.ndim else ()
    real = arr.real if arr.dtype.kind == "c" else arr
    imag = arr.imag if arr.dtype.kind == "c" else None
    nan = np.isnan(arr)
    pos = np.isposinf(real) | (np.isposinf(imag) if imag is not None else False)
    neg = np.isneginf(real) | (np.isneginf(imag) if imag is not None else False)
    pos &= ~nan
    neg &= ~nan & ~pos
    v = arr[first]
    value = "NaN" if np.isnan(v) else ("+Inf" if pos[first] else "-Inf")
    return NonFinite(tensor, role, first, value, int(nan.sum()), int(pos.sum()), int(neg.sum()), layout)


def report_lines(found: tuple[NonFinite, ...] | list[NonFinite], checked: int) -> list[str]:
    """The weights-check lines of an ``inspect`` text report (every format)."""
    if not found:
        return [f"Weights  all finite ({checked} floating-point array{'s' if checked != 1 else ''} checked)"]
    lines = [f"Weights  NOT FINITE: {len(found)} of {checked} arrays hold NaN or Inf; a model built from them computes NaN or Inf"]
    return lines + [f"  {record.message()}" for record in found]
