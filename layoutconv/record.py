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

import weakref
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


#: memory records may hold without a copy (id -> the array owning it; an entry goes when its array does):
#: arrays given away with :func:`hand_over`, and buffers declared with :func:`lend_memory`
_TRUSTED: "weakref.WeakValueDictionary[int, np.ndarray]" = weakref.WeakValueDictionary()


def hand_over(arr: np.ndarray) -> np.ndarray:
    """Give a freshly made array to the records that will be built from it: read-only from now on, and taken
    by :func:`frozen_array` (whole, or as a transposed view of it) without a copy.

    For arrays nobody else holds, e.g. one just read from a file: a record
    otherwise copies every array it is given, so that no caller can change it
    afterwards (a checkpoint's 256 MB kernel would be allocated twice).  ``arr``
    must own its memory or view a buffer given with :func:`lend_memory`;
    anything else is left as it is (and copied as usual).
    """
    if not isinstance(arr, np.ndarray):
        return arr
    if arr.base is None and arr.flags.owndata:
        arr.setflags(write=False)
        _TRUSTED[id(arr)] = arr
    elif _TRUSTED.get(id(_root(arr))) is _root(arr):
        arr.setflags(write=False)
    return arr


def hand_over_copy(made: np.ndarray, source: Any) -> np.ndarray:
    """:func:`hand_over` ``made`` when it is an array just made from ``source`` (its own memory, none of
    ``source``'s): a record constructor's private copy, e.g. a kernel transposed to the canonical layout."""
    if isinstance(made, np.ndarray) and made.base is None and made.flags.owndata and not np.may_share_memory(made, source):
        return hand_over(made)
    return made


def lend_memory(buffer: np.ndarray) -> np.ndarray:
    """Declare that ``buffer`` (an array owning its memory) is written by its owner only while nothing refers to
    it: read-only views of it (:func:`hand_over`) may then be held by records without a copy.

    For a pool that reuses big buffers from layer to layer (``layoutconv.convert_stream``):
    every view of a buffer refers to it, so the pool sees when none is left.
    """
    if buffer.base is not None or not buffer.flags.owndata:
        raise ValueError("lend_memory takes an array that owns its memory")
    _TRUSTED[id(buffer)] = buffer
    return buffer


def _root(arr: np.ndarray) -> np.ndarray:
    while isinstance(arr.base, np.ndarray):
        arr = arr.base
    return arr


def _taken_whole(value: Any) -> bool:
    """True for a read-only view of trusted memory (:func:`hand_over`, :func:`lend_memory`) whose elements are
    dense (a contiguous array, or one with its axes permuted): a record may hold it without a copy."""
    if not isinstance(value, np.ndarray) or value.flags.writeable:
        return False
    root = _root(value)
    if _TRUSTED.get(id(root)) is not root:
        return False
    dims = sorted((s, n) for s, n in zip(value.strides, value.shape) if n > 1)
    step = value.itemsize
    for stride, n in dims:  # dense: the smallest stride one element, each next one the span of those before
        if stride != step:
            return False
        step *= n
    return True


def frozen_array(name: str, value: Any) -> np.ndarray:
    """A read-only copy of ``value`` in a supported float dtype, refusing non-finite values with their index.

    An array given away with :func:`hand_over` (or a transposed view of all of it) is taken as it is: no copy.
    """
    arr = value if _taken_whole(value) else np.array(value, copy=True)
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
