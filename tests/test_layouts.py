"""Layouts as axis names: permutations derived from names, checked element by element."""

from __future__ import annotations

import numpy as np
import pytest

from layoutconv import ShapeError, layouts


@pytest.mark.parametrize(
    "layout, index_of",
    [
        # For each layout, where canonical element (o, i, k) lives in the raw array.
        ("O I K", lambda o, i, k: (o, i, k)),
        ("K I O", lambda o, i, k: (k, i, o)),
        ("K 1 I O", lambda o, i, k: (k, 0, i, o)),
        ("O I K 1", lambda o, i, k: (o, i, k, 0)),
    ],
    ids=["torch-onnx", "keras2-3", "keras1.1", "keras1.0"],
)
def test_to_canonical_moves_every_element(rng, layout, index_of):
    # O=4, I=3, K=5: all different, so a wrong permutation cannot fit.
    o_, i_, k_ = 4, 3, 5
    raw = rng.standard_normal(layouts.shape_in(layout, o_, i_, k_)).astype(np.float32)
    canon = layouts.to_canonical(raw, layout)
    assert canon.shape == (o_, i_, k_)
    for o in range(o_):
        for i in range(i_):
            for k in range(k_):
                assert canon[o, i, k] == raw[index_of(o, i, k)]
    back = layouts.from_canonical(canon, layout)
    assert back.dtype == raw.dtype and back.tobytes() == raw.tobytes()


def test_layout_names_resolve():
    assert layouts.parse("keras").names == ("K", "I", "O")
    assert layouts.parse("keras1.1").names == ("K", "1", "I", "O")


@pytest.mark.parametrize("bad", ["O I", "O I K K", "O I X", "O O K"])
def test_invalid_layout_names(bad):
    with pytest.raises(ShapeError, match="Invalid kernel layout"):
        layouts.parse(bad)


def test_rank_mismatch_names_shape(rng):
    with pytest.raises(ShapeError, match=r"shape \(10, 3, 64\)"):
        layouts.to_canonical(rng.standard_normal((10, 3, 64)), "K 1 I O")


def test_singleton_axis_must_be_one(rng):
    with pytest.raises(ShapeError, match=r"singleton"):
        layouts.to_canonical(rng.standard_normal((10, 2, 3, 64)), "K 1 I O")


def test_fitting_layouts_lists_ambiguity():
    names = [name for name, _ in layouts.fitting_layouts((5, 5, 5))]
    assert names == ["torch", "keras"]
    names = [name for name, _ in layouts.fitting_layouts((10, 1, 3, 64))]
    assert names == ["keras1.1"]
