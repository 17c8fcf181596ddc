"""Kernel layouts written as axis names, and the one place permutations come from.

A layout is a string of space-separated axis names:

``O``      output channels (filters); in a transposed convolution's kernel, output channels per group
``I``      input channels per group (``in_channels // groups``); in a transposed kernel, all input channels
``K``      kernel taps along the single spatial axis of a 1-D convolution
``H W``    kernel taps along the two spatial axes of a 2-D convolution (height, width)
``D H W``  ... and of a 3-D convolution (depth, height, width)
``1``      a singleton axis that carries no data (Keras 1 kept one)
``G M``    the output channels written as two axes, group and multiplier: ``O = (G M)``, output
           channel ``g * M + m`` (the group-major order of every grouped convolution).  Without
           an ``I`` axis the kernel has one input channel per group (``I`` = 1): a Keras
           ``DepthwiseConv2D`` kernel is ``H W G M`` (``G`` = input channels, ``M`` = depth multiplier)

The rank of a layout is the number of its spatial axes.  The canonical layout
of a convolution is ``O I`` followed by the spatial axes (PyTorch, ONNX):
``O I K``, ``O I H W``, ``O I D H W``; that of a transposed convolution is
``I O`` followed by them.  Every other layout is converted by
:func:`to_canonical` / :func:`from_canonical`, which derive the permutation
from the names; nobody writes a transpose by hand.  Keras stores spatial axes
first (``H W I O``), so a 3x5 kernel's two spatial axes are told apart by
name, never by position.

>>> import numpy as np
>>> w = np.zeros((10, 3, 64))                      # a Keras 2/3 Conv1D kernel
>>> to_canonical(w, "K I O").shape
(64, 3, 10)
>>> from_canonical(np.zeros((64, 3, 10)), "K 1 I O").shape
(10, 1, 3, 64)
>>> to_canonical(np.zeros((3, 5, 4, 8)), "H W I O").shape     # a Keras Conv2D kernel
(8, 4, 3, 5)
>>> to_canonical(np.zeros((3, 5, 4, 2)), "H W G M").shape     # a Keras DepthwiseConv2D kernel
(8, 1, 3, 5)
>>> from_canonical(np.zeros((8, 1, 3, 5)), "H W G M", groups=4).shape
(3, 5, 4, 2)
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from .errors import ShapeError, fail

#: spatial axis names by rank
SPATIAL: dict[int, tuple[str, ...]] = {1: ("K",), 2: ("H", "W"), 3: ("D", "H", "W")}
_SPATIAL_NAMES = {n for names in SPATIAL.values() for n in names}


def canonical(rank: int, transposed: bool = False) -> str:
    """The canonical layout of a ``rank``-d convolution kernel (``O I ...``), or of a transposed one (``I O ...``)."""
    channels = ("I", "O") if transposed else ("O", "I")
    return " ".join(channels + SPATIAL[rank])


CANONICAL = canonical(1)

#: Every kernel layout layoutconv knows, by the name used in reports.
LAYOUTS: dict[str, str] = {
    "torch": "O I K",
    "onnx": "O I K",
    "keras": "K I O",  # Keras 2.x, tf.keras and Keras 3, whatever the data_format
    "keras1.1": "K 1 I O",  # Keras 1.1 and 1.2 Convolution1D (stored as a 2-D kernel)
    "keras1.0": "O I K 1",  # Keras 1.0.x Convolution1D
    "torch2d": "O I H W",
    "torch3d": "O I D H W",
    "keras2d": "H W I O",  # Keras 2/3 Conv2D, and Keras 1 Convolution2D with dim_ordering='tf'
    "keras3d": "D H W I O",
    "keras1-th2d": "O I H W",  # Keras 1 Convolution2D, AtrousConvolution2D, Deconvolution2D with dim_ordering='th'
    "keras-transpose1d": "K O I",  # Keras Conv1DTranspose: (kernel, filters / groups, input channels)
    "keras-transpose2d": "H W O I",
    "keras-transpose3d": "D H W O I",
    "torch-transpose1d": "I O K",  # PyTorch / ONNX ConvTranspose: (in_channels, out_channels / groups, kernel...)
    "torch-transpose2d": "I O H W",
    "torch-transpose3d": "I O D H W",
    "keras-depthwise1d": "K G M",  # Keras DepthwiseConv1D: (kernel, in_channels, depth_multiplier)
    "keras-depthwise2d": "H W G M",
    # Keras 1 stores a Convolution2D/3D kernel by its layer's dim_ordering (keras/layers/convolutional.py, 1.0-1.2.2);
    # a Deconvolution2D kernel is stored exactly like its Convolution2D's, O being the deconvolution's output channels.
    "keras1-tf2d": "H W I O",  # Keras 1 Convolution2D, AtrousConvolution2D, Deconvolution2D with dim_ordering='tf'
    "keras1-tf3d": "D H W I O",  # Keras 1 Convolution3D with dim_ordering='tf'
    "keras1-th3d": "O I D H W",  # Keras 1 Convolution3D with dim_ordering='th'
}


class Recipe(NamedTuple):
    """How to turn an array in ``layout`` into its canonical layout and back."""

    layout: str
    names: tuple[str, ...]
    rank: int  # number of spatial axes
    to_canonical: tuple[int, ...]  # permutation applied after dropping the "1" axes (to ``O I spatial``)
    from_canonical: tuple[int, ...]
    singletons: tuple[int, ...]  # positions of "1" axes in ``layout``
    split_out: bool = False  # ``O`` is written as ``G M`` (the permutations then lead to ``G M [I] spatial``)
    implied_in: bool = False  # no ``I`` axis: one input channel per group


@functools.lru_cache(maxsize=None)
def parse(layout: str) -> Recipe:
    """Parse an axis-name string once; the result is cached.

    The permutations are to and from ``O I`` + spatial axes; a transposed
    kernel's ``I O`` order is a swap of the first two (see :func:`to_canonical`).
    """
    layout = LAYOUTS.get(layout, layout)
    names = tuple(str(layout).split())
    data = [n for n in names if n != "1"]
    spatial = tuple(n for n in data if n in _SPATIAL_NAMES)
    rank = len(spatial)
    known = rank in SPATIAL and sorted(spatial) == sorted(SPATIAL[rank])
    split = "G" in data or "M" in data
    channels = ("G", "M") if split else ("O",)
    implied_in = split and "I" not in data
    wanted = channels + (() if implied_in else ("I",)) + spatial
    if not known or sorted(data) != sorted(wanted):
        raise fail(
            ShapeError,
            f"Invalid kernel layout {layout!r}",
            "the axis names O (or G M) and I once each with the spatial axes of one rank (K; H W; or D H W), "
            f"plus optional '1' axes, or a known layout name ({', '.join(sorted(LAYOUTS))})",
            f"{names}",
        )
    canon = [n for n in (*channels, "I", *SPATIAL[rank]) if n in data]
    to_c = tuple(data.index(n) for n in canon)
    from_c = tuple(canon.index(n) for n in data)
    singletons = tuple(i for i, n in enumerate(names) if n == "1")
    return Recipe(layout, names, rank, to_c, from_c, singletons, split, implied_in)


def spatial_axes(layout: str) -> tuple[int, ...]:
    """Positions of the spatial axes in ``layout`` (``"O I H W"`` -> ``(2, 3)``, ``"H W I O"`` -> ``(0, 1)``).

    >>> spatial_axes("O I D H W"), spatial_axes("K 1 I O")
    ((2, 3, 4), (0,))
    """
    return tuple(i for i, n in enumerate(parse(layout).names) if n in _SPATIAL_NAMES)


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


def _swap_io(array: np.ndarray, transposed: bool) -> np.ndarray:
    return np.swapaxes(array, 0, 1) if transposed else array


def _no_split_transposed(recipe: Recipe, transposed: bool) -> None:
    if transposed and recipe.split_out:
        raise fail(
            ShapeError,
            f"Layout {recipe.layout!r} splits the output channels into G M, which only a convolution kernel does",
            "a transposed-convolution layout with O and I axes",
            f"{recipe.names} with transposed=True",
        )


def to_canonical(array: np.ndarray, layout: str, *, transposed: bool = False) -> np.ndarray:
    """Return ``array`` (in ``layout``) as a contiguous canonical kernel. Values and dtype are unchanged.

    ``transposed=True`` gives the transposed-convolution canonical ``I O spatial...``.
    A layout with ``G M`` merges them into ``O`` (``g * M + m``).
    """
    recipe = parse(layout)
    _no_split_transposed(recipe, transposed)
    array = np.asarray(array)
    _check_rank(array, recipe)
    squeezed = np.squeeze(array, axis=recipe.singletons) if recipe.singletons else array
    moved = np.transpose(squeezed, recipe.to_canonical)
    if recipe.split_out:  # (G, M, [I], spatial...) -> (G * M, I, spatial...)
        if recipe.implied_in:
            moved = np.expand_dims(moved, 2)
        moved = moved.reshape((moved.shape[0] * moved.shape[1],) + moved.shape[2:])
    return np.ascontiguousarray(_swap_io(moved, transposed))


def from_canonical(kernel: np.ndarray, layout: str, *, transposed: bool = False, groups: int | None = None) -> np.ndarray:
    """Return a canonical kernel (``O I ...``, or ``I O ...`` when ``transposed``) in ``layout``, contiguous.

    A layout with ``G M`` needs ``groups`` (the size of ``G``) to split ``O``.
    """
    recipe = parse(layout)
    _no_split_transposed(recipe, transposed)
    kernel = np.asarray(kernel)
    if kernel.ndim != 2 + recipe.rank:
        want = canonical(recipe.rank, transposed)
        raise fail(
            ShapeError,
            "Canonical kernel has the wrong rank",
            f"{2 + recipe.rank} axes ({', '.join(want.split())}) for layout {recipe.layout!r}",
            f"shape {tuple(kernel.shape)}",
        )
    kernel = _swap_io(kernel, transposed)
    if recipe.split_out:  # (G * M, I, spatial...) -> (G, M, [I], spatial...)
        if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups <= 0 or kernel.shape[0] % groups:
            raise fail(
                ShapeError,
                f"Layout {recipe.layout!r} splits the output channels into G M",
                f"groups= a positive divisor of out_channels ({kernel.shape[0]})",
                f"groups={groups!r}",
            )
        if recipe.implied_in and kernel.shape[1] != 1:
            raise fail(
                ShapeError,
                f"Layout {recipe.layout!r} has no I axis: one input channel per group",
                "a kernel of shape (O, 1, ...)",
                f"shape {tuple(kernel.shape)}",
            )
        kernel = kernel.reshape((int(groups), kernel.shape[0] // int(groups)) + kernel.shape[1:])
        if recipe.implied_in:
            kernel = kernel[:, :, 0]
    out = np.transpose(kernel, recipe.from_canonical)
    for i in recipe.singletons:
        out = np.expand_dims(out, i)
    return np.ascontiguousarray(out)


def shape_in(
    layout: str, out_channels: int, in_per_group: int, kernel_shape: int | tuple[int, ...], groups: int = 1
) -> tuple[int, ...]:
    """The shape a kernel has in ``layout``, for the given sizes (``kernel_shape`` one size per spatial axis)."""
    recipe = parse(layout)
    sizes_k = (kernel_shape,) if isinstance(kernel_shape, int) else tuple(kernel_shape)
    sizes = {"O": out_channels, "I": in_per_group, "1": 1, "G": groups, "M": out_channels // groups}
    sizes.update(zip(SPATIAL[recipe.rank], sizes_k))
    return tuple(sizes[n] for n in recipe.names)


def fitting_layouts(shape: tuple[int, ...], rank: int = 1) -> list[tuple[str, dict[str, int]]]:
    """Every known convolution layout of ``rank`` whose rank and singleton axes fit ``shape``, with the sizes it implies.

    Used by ``diagnose``: a shape like ``(5, 5, 5)`` fits several readings, and
    each is returned.  Layouts with the same axis string are listed once;
    transposed and depthwise (``G M``) layouts are not candidates.
    """
    seen: set[str] = set()
    found = []
    for name, axes in LAYOUTS.items():
        if axes in seen or "transpose" in name:
            continue
        seen.add(axes)
        recipe = parse(axes)
        if recipe.split_out or recipe.rank != rank or len(shape) != len(recipe.names) or any(shape[i] != 1 for i in recipe.singletons):
            continue
        sizes = {n: shape[i] for i, n in enumerate(recipe.names) if n != "1"}
        found.append((name, sizes))
    return found
