"""Kernel layouts written as axis names, and the one place permutations come from.

A layout is a string of space-separated axis names:

``O``  output channels (filters)
``I``  input channels per group (``in_channels // groups``)
``K``  kernel taps along the (single) spatial axis
``1``  a singleton axis that carries no data (Keras 1 kept one)

The canonical layout is ``O I K`` (PyTorch, ONNX).  Every other layout is
converted by :func:`to_canonical` / :func:`from_canonical`, which derive the
permutation from the names; nobody writes a transpose by hand.

>>> import numpy as np
>>> w = np.zeros((10, 3, 64))                      # a Keras 2/3 kernel
>>> to_canonical(w, "K I O").shape
(64, 3, 10)
>>> from_canonical(np.zeros((64, 3, 10)), "K 1 I O").shape
(10, 1, 3, 64)
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from .errors import ShapeError, fail

CANONICAL = "O I K"

#: Every kernel layout layoutconv knows, by the name used in reports.
LAYOUTS: dict[str, str] = {
    "torch": "O I K",
    "onnx": "O I K",
    "keras": "K I O",  # Keras 2.x, tf.keras and Keras 3, whatever the data_format
    "keras1.1": "K 1 I O",  # Keras 1.1 and 1.2 Convolution1D (stored as a 2-D kernel)
    "keras1.0": "O I K 1",  # Keras 1.0.x Convolution1D
}

_AXES = {"O", "I", "K", "1"}


class Recipe(NamedTuple):
    """How to turn an array in ``layout`` into the canonical layout and back."""

    layout: str
    names: tuple[str, ...]
    to_canonical: tuple[int, ...]  # permutation applied after dropping the "1" axes
    from_canonical: tuple[int, ...]
    singletons: tuple[int, ...]  # positions of "1" axes in ``layout``


@functools.lru_cache(maxsize=None)
def parse(layout: str) -> Recipe:
    """Parse an axis-name string once; the result is cached."""
    layout = LAYOUTS.get(layout, layout)
    names = tuple(layout.split())
    unknown = [n for n in names if n not in _AXES]
    data = [n for n in names if n != "1"]
    if unknown or sorted(data) != sorted(CANONICAL.split()):
        raise fail(
            ShapeError,
            f"Invalid kernel layout {layout!r}",
            "the axis names O, I and K once each, plus optional '1' axes, "
            f"or a known layout name ({', '.join(sorted(LAYOUTS))})",
            f"{names}",
        )
    canon = CANONICAL.split()
    to_c = tuple(data.index(n) for n in canon)
    from_c = tuple(canon.index(n) for n in data)
    singletons = tuple(i for i, n in enumerate(names) if n == "1")
    return Recipe(layout, names, to_c, from_c, singletons)


def _check_rank(array: np.ndarray, recipe: Recipe) -> None:
    if array.ndim != len(recipe.names):
        raise fail(
            ShapeError,
            f"Kernel does not fit layout {recipe.layout!r}",
            f"a {len(recipe.names)}-d array with axes ({', '.join(recipe.names)})",
            f"a {array.ndim}-d array of shape {tuple(array.shape)}",
            "Check which framework and version wrote this kernel.",
        )
    for i in recipe.singletons:
        if array.shape[i] != 1:
            raise fail(
                ShapeError,
                f"Kernel does not fit layout {recipe.layout!r}: axis {i} must be the singleton '1'",
                "size 1 on that axis",
                f"shape {tuple(array.shape)}",
            )


def to_canonical(array: np.ndarray, layout: str) -> np.ndarray:
    """Return ``array`` (in ``layout``) as a contiguous ``O I K`` kernel. Values and dtype are unchanged."""
    recipe = parse(layout)
    array = np.asarray(array)
    _check_rank(array, recipe)
    squeezed = np.squeeze(array, axis=recipe.singletons) if recipe.singletons else array
    return np.ascontiguousarray(np.transpose(squeezed, recipe.to_canonical))


def from_canonical(kernel: np.ndarray, layout: str) -> np.ndarray:
    """Return an ``O I K`` kernel in ``layout``, contiguous. Values and dtype are unchanged."""
    recipe = parse(layout)
    kernel = np.asarray(kernel)
    if kernel.ndim != 3:
        raise fail(ShapeError, "Canonical kernel has the wrong rank", "3 axes (O, I, K)", f"shape {tuple(kernel.shape)}")
    out = np.transpose(kernel, recipe.from_canonical)
    for i in recipe.singletons:
        out = np.expand_dims(out, i)
    return np.ascontiguousarray(out)


def shape_in(layout: str, out_channels: int, in_per_group: int, kernel_size: int) -> tuple[int, ...]:
    """The shape a kernel has in ``layout``, for the given sizes."""
    sizes = {"O": out_channels, "I": in_per_group, "K": kernel_size, "1": 1}
    return tuple(sizes[n] for n in parse(layout).names)


def fitting_layouts(shape: tuple[int, ...]) -> list[tuple[str, dict[str, int]]]:
    """Every known layout whose rank and singleton axes fit ``shape``, with the sizes it implies.

    Used by ``diagnose``: a shape like ``(5, 5, 5)`` fits several readings, and
    each is returned.  Layouts with the same axis string are listed once.
    """
    seen: set[str] = set()
    found = []
    for name, axes in LAYOUTS.items():
        if axes in seen:
            continue
        seen.add(axes)
        recipe = parse(axes)
        if len(shape) != len(recipe.names) or any(shape[i] != 1 for i in recipe.singletons):
            continue
        sizes = {n: shape[i] for i, n in enumerate(recipe.names) if n != "1"}
        found.append((name, sizes))
    return found
