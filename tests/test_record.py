"""Records copy what they are given, except arrays handed over to them (``hand_over``, ``lend_memory``).

The oracle: whether the record's array shares memory with the one given
(``np.shares_memory``), and whether the caller can still change the record.
"""

from __future__ import annotations

import numpy as np
import pytest

from layoutconv import Conv, ConvTranspose, layers
from layoutconv.errors import ConfigError
from layoutconv.record import frozen_array, hand_over, hand_over_copy, lend_memory


def test_an_array_of_the_caller_is_copied_and_later_changes_do_not_reach_the_record():
    kernel = np.arange(12.0).reshape(3, 4)
    dense = layers.Dense(kernel, layout="I O")
    kernel[0, 0] = 99.0
    assert dense.kernel[0, 0] == 0.0
    assert not np.shares_memory(dense.kernel, kernel)


def test_a_read_only_array_of_the_caller_is_copied_too():
    """Read-only is no proof: the caller can make its own array writable again."""
    kernel = np.arange(12.0).reshape(3, 4)
    kernel.setflags(write=False)
    dense = layers.Dense(kernel)
    kernel.setflags(write=True)
    kernel[1, 1] = 99.0
    assert dense.kernel[1, 1] == 5.0


def test_a_handed_over_array_is_taken_without_a_copy_also_transposed():
    kernel = hand_over(np.arange(12.0, dtype=np.float32).reshape(3, 4).copy())
    assert not kernel.flags.writeable
    dense = layers.Dense(kernel, layout="I O")  # the record holds kernel.T
    assert np.shares_memory(dense.kernel, kernel)
    assert dense.kernel.shape == (4, 3) and dense.kernel[2, 1] == kernel[1, 2]
    assert not dense.kernel.flags.writeable


@pytest.mark.parametrize(
    "view",
    [lambda a: a[::2], lambda a: a[:, 1:], lambda a: a[::-1]],
    ids=["strided", "part-of-each-row", "reversed"],
)
def test_a_view_that_is_not_dense_is_copied(view):
    kernel = hand_over(np.arange(24.0).reshape(4, 6).copy())
    assert not kernel.flags.writeable
    dense = layers.Dense(view(kernel))
    assert not np.shares_memory(dense.kernel, kernel)
    assert np.array_equal(dense.kernel, view(kernel))


def test_a_handed_over_array_is_still_checked():
    bad = np.ones((2, 3))
    bad[1, 2] = np.nan
    with pytest.raises(ConfigError, match="non-finite value"):
        frozen_array("kernel", hand_over(bad))
    with pytest.raises(ConfigError, match="Unsupported dtype"):
        frozen_array("kernel", hand_over(np.ones((2, 3), dtype=np.int32)))


def test_hand_over_leaves_views_of_other_memory_alone():
    base = np.arange(6.0)
    view = hand_over(base[1:])
    assert view.flags.writeable  # not ours to freeze
    assert not np.shares_memory(layers.Dense(view.reshape(1, 5)).kernel, base)


def test_lent_memory_is_taken_through_read_only_views_and_stays_writable_for_its_owner():
    buffer = lend_memory(np.zeros(64, dtype=np.uint8))
    kernel = hand_over(buffer[:48].view(np.float32).reshape(3, 4))
    assert buffer.flags.writeable and not kernel.flags.writeable
    dense = layers.Dense(kernel)
    assert np.shares_memory(dense.kernel, buffer)
    writable = buffer[:48].view(np.float32).reshape(3, 4)  # a writable view is never taken as it is
    assert not np.shares_memory(layers.Dense(writable).kernel, buffer)
    with pytest.raises(ValueError, match="owns its memory"):
        lend_memory(buffer[:8])


def test_a_convolution_keeps_its_own_canonical_copy_instead_of_copying_it_again():
    keras_kernel = np.random.default_rng(0).normal(size=(3, 2, 4, 5))  # H W I O
    conv = Conv(keras_kernel, layout="H W I O")
    assert conv.kernel.flags.c_contiguous and conv.kernel.shape == (5, 4, 3, 2)
    assert np.array_equal(conv.kernel, keras_kernel.transpose(3, 2, 0, 1))
    assert not np.shares_memory(conv.kernel, keras_kernel)
    keras_kernel[...] = 0.0
    assert conv.kernel.any()
    t = ConvTranspose(np.ones((3, 5, 4)), layout="K O I")
    assert t.kernel.shape == (4, 5, 3) and not t.kernel.flags.writeable


def test_hand_over_copy_only_takes_arrays_made_from_the_source():
    source = np.arange(6.0).reshape(2, 3)
    assert hand_over_copy(source.T, source).flags.writeable  # a view of the source: left alone
    made = np.ascontiguousarray(source.T)
    assert not hand_over_copy(made, source).flags.writeable
