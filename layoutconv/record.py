"""The immutable record every layer description shares: validation on construction, pickling, ``replace``.

A record is plain data: weight arrays (read-only numpy arrays in one float
dtype) and hyperparameters (plain Python values).  A subclass names them in
``ARRAYS`` and ``FIELDS`` and validates them in ``__init__``, setting each
attribute with :meth:`Record._set`; this base gives every record the same
behaviour:

- attributes cannot be assigned after construction; :meth:`replace` makes a
  changed copy that is validated like a new record;
- ``pickle``, ``copy`` and ``deepcopy`` rebuild through ``__init__`` (a file
  cannot smuggle in a record that would not validate);
- :meth:`same_weights` compares every array's dtype, shape and bytes.

>>> import numpy as np
>>> from layoutconv import Conv1D
>>> conv = Conv1D(np.ones((2, 1, 3)), padding="causal")
>>> conv.replace(padding="valid").padding
'valid'
>>> conv.same_weights(conv.replace(padding="valid"))
True
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .errors import ConfigError, FrameworkMissingError, fail

#: The float dtypes a record's arrays may have (bfloat16 through ml_dtypes).
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def float_dtype(name: str) -> np.dtype:
    """The numpy dtype of a name in :data:`FLOAT_DTYPES`; ``bfloat16`` comes from ml_dtypes (numpy has none)."""
    if name not in FLOAT_DTYPES:
        raise fail(ConfigError, "Unsupported dtype", f"one of {', '.join(FLOAT_DTYPES)}", f"{name!r}")
    if name != "bfloat16":
        return np.dtype(name)
    try:
        import ml_dtypes
    except ImportError:
        raise fail(
            FrameworkMissingError,
            "bfloat16 arrays need the ml_dtypes package",
            "ml_dtypes to be installed (numpy has no bfloat16 of its own)",
            "an environment without it",
            "Install it with: pip install ml_dtypes",
        ) from None
    return np.dtype(ml_dtypes.bfloat16)


def frozen_array(name: str, value: Any) -> np.ndarray:
    """A read-only copy of ``value`` in a supported float dtype, refusing non-finite values with their index."""
    arr = np.array(value, copy=True)
    if arr.dtype.name not in FLOAT_DTYPES:
        raise fail(
            ConfigError,
            f"Unsupported dtype for `{name}`",
            f"a floating dtype ({', '.join(FLOAT_DTYPES)})",
            f"dtype {arr.dtype}",
            f"Cast it first, for example `{name}.astype(np.float32)`.",
        )
    if not _all_finite(arr):
        finite = np.isfinite(arr.astype(np.float64))
        where = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise fail(
            ConfigError,
            f"`{name}` contains a non-finite value",
            "finite numbers only",
            f"{arr[where]!r} at index {where}",
            "The weights are corrupt or were never trained; re-export them.",
        )
    arr.setflags(write=False)
    return arr


#: elements checked at a time by :func:`_all_finite` (a float64 copy of a whole 1 GiB kernel would take 2 GiB)
_FINITE_CHUNK = 1 << 20


def _all_finite(arr: np.ndarray) -> bool:
    """True when every value is finite; checked a slice at a time so that big arrays need no copy."""
    flat = arr.ravel(order="K")  # a view: arrays made by np.array(copy=True) are contiguous in their own order
    native = arr.dtype.name != "bfloat16"  # numpy's isfinite knows float16/32/64; bfloat16 goes through float32 (exact)
    for start in range(0, flat.size, _FINITE_CHUNK):
        part = flat[start : start + _FINITE_CHUNK]
        if not np.isfinite(part if native else part.astype(np.float32)).all():
            return False
    return True


def _rebuild(cls: type, values: dict[str, Any]) -> "Record":
    return cls(**values)


class Record:
    """Base of every immutable layer record (see the module documentation)."""

    __slots__ = ()
    #: names of the weight arrays (``None`` allowed, e.g. a missing bias), in constructor order
    ARRAYS: ClassVar[tuple[str, ...]] = ()
    #: names of the hyperparameters, as the constructor takes them
    FIELDS: ClassVar[tuple[str, ...]] = ()

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; use .replace({name}=...) to make a changed copy")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def values(self) -> dict[str, Any]:
        """Every array and hyperparameter by name: ``type(r)(**r.values())`` rebuilds the record."""
        return {name: getattr(self, name) for name in self.ARRAYS + self.FIELDS}

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle and copy rebuild through __init__, so the copy is validated like the original
        return (_rebuild, (type(self), self.values()))

    def __copy__(self) -> "Record":
        return self  # immutable: a copy is the same value

    def __deepcopy__(self, memo: dict) -> "Record":
        return self

    def replace(self, **changes: Any) -> Any:
        """A copy with some fields changed, validated like a new record."""
        values = self.values()
        unknown = set(changes) - set(values)
        if unknown:
            raise fail(ConfigError, "Unknown field for replace()", f"some of {sorted(values)}", f"{sorted(unknown)}")
        values.update(changes)
        return type(self)(**values)

    def same_weights(self, other: "Record") -> bool:
        """True when every array has the same dtype, shape and bytes (both ``None`` counts as the same)."""

        def same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
            if a is None or b is None:
                return a is None and b is None
            return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()

        return type(self).ARRAYS == type(other).ARRAYS and all(
            same(getattr(self, n), getattr(other, n)) for n in self.ARRAYS
        )

    __hash__ = None  # type: ignore[assignment]
