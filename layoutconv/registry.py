"""One table of converters, keyed by (record kind, framework): what each adapter can write and run.

Each adapter module registers its converters when it is imported::

    registry.register(Conv, "torch", to_native=to_native, run=run)

and every caller (``to_torch``, ``verify``, ``save``) asks :func:`converter`,
which imports the framework's adapter on first use and finds the converter for
the record's class or its nearest base class.  A second registration of the
same pair is a bug and raises; a missing pair is an
:class:`~layoutconv.UnsupportedError` that lists what the framework has.
Nothing here imports a framework.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np

from . import frameworks
from .errors import UnsupportedError, fail


class Converter(NamedTuple):
    """How one framework writes and runs one kind of record."""

    kind: type
    framework: str
    to_native: Callable[..., Any]
    run: Callable[[Any, Any], np.ndarray]


_TABLE: dict[tuple[type, str], Converter] = {}


def register(kind: type, framework: str, *, to_native: Callable[..., Any], run: Callable[[Any, Any], np.ndarray]) -> None:
    """Register the converter of ``kind`` records for ``framework`` (once)."""
    key = (kind, frameworks.canonical_name(framework))
    if key in _TABLE:
        raise RuntimeError(f"a converter for {kind.__name__} in {key[1]} is registered twice")
    _TABLE[key] = Converter(kind, key[1], to_native, run)


def converter(record: Any, framework: str) -> Converter:
    """The converter for ``record`` (a record or its class) in ``framework``, importing the adapter if needed."""
    name = frameworks.canonical_name(framework)
    frameworks.adapter(name)  # importing the adapter registers its converters
    kind = record if isinstance(record, type) else type(record)
    for cls in kind.__mro__:
        found = _TABLE.get((cls, name))
        if found is not None:
            return found
    known = sorted(k.__name__ for k, f in _TABLE if f == name)
    elsewhere = sorted({f for k, f in _TABLE if f != name and issubclass(kind, k)})
    raise fail(
        UnsupportedError,
        f"The {name} adapter cannot write a {kind.__name__} yet",
        f"a record it writes: {', '.join(known)}",
        f"a {kind.__name__}",
        f"Adapters loaded here that write it: {', '.join(elsewhere)}." if elsewhere else "",
    )


def registered() -> list[tuple[str, str]]:
    """Every ``(record kind, framework)`` pair registered so far (adapters register when imported)."""
    return sorted((k.__name__, f) for k, f in _TABLE)
