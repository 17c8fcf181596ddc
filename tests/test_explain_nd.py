"""explain at every rank and for transposed convolutions: against direct loops written in the tests."""

from __future__ import annotations

import numpy as np
import pytest

import layoutconv
from layoutconv import Conv, ConvTranspose

from test_reference_nd import direct_conv_nd
from test_transpose import direct_transpose


@pytest.mark.parametrize("index", [(0, 1, 0, 5), (1, 3, 2, 3), (0, 0, 3, 0)], ids=["corner-padding", "inside", "edge"])
@pytest.mark.parametrize("source", ["torch", "keras"])
def test_conv2d_element_by_hand(rng, index, source):
    kernel = rng.standard_normal((4, 3, 3, 2))
    bias = rng.standard_normal(4)
    x = rng.standard_normal((2, 3, 7, 6))
    conv = Conv(kernel, bias, stride=(2, 1), padding="same_upper", activation="tanh")
    pads = conv.pads((7, 6))
    want = np.tanh(direct_conv_nd(kernel, bias, x, (2, 1), (1, 1), 1, pads, "zeros"))[index]
    data = x if source == "torch" else np.moveaxis(x, 1, -1)
    e = layoutconv.explain(conv, data, index, source=source)
    assert e.agree and e.output == pytest.approx(want, abs=1e-12) and e.by_hand_value == pytest.approx(want, abs=1e-12)
    assert len(e.taps) == 6 and e.taps[0].k == (0, 0)
    assert ("W[:, :, :, " in e.by_hand) is (source == "keras")  # the Keras kernel is (H, W, I, O)


def test_conv3d_groups_reflect(rng):
    kernel = rng.standard_normal((4, 1, 2, 2, 3))
    x = rng.standard_normal((1, 4, 4, 5, 6))
    conv = Conv(kernel, None, groups=4, padding=((1, 0), (0, 1), (2, 1)), padding_mode="reflect")
    want = direct_conv_nd(kernel, None, x, (1, 1, 1), (1, 1, 1), 4, conv.padding, "reflect")
    e = layoutconv.explain(conv, x, (0, 2, 0, 4, 0))
    assert e.agree and e.group == 2 and e.channels == (2,)
    assert e.output == pytest.approx(want[0, 2, 0, 4, 0], abs=1e-12)
    assert any(t.padding for t in e.taps)


def test_transposed_element_names_the_taps_no_input_reaches(rng):
    kernel = rng.standard_normal((3, 2, 3))
    bias = rng.standard_normal(2)
    x = rng.standard_normal((1, 3, 5))
    t = ConvTranspose(kernel, bias, stride=2, padding=((1, 0),))
    want = direct_transpose(kernel, bias, x, (2,), (1,), 1, ((1, 0),), (0,))
    for u in range(want.shape[-1]):
        e = layoutconv.explain(t, x, (0, 1, u))
        assert e.agree and e.output == pytest.approx(want[0, 1, u], abs=1e-12)
        reached = [tap for tap in e.taps if tap.position is not None]
        assert all(2 * tap.position[0] + tap.k[0] - 1 == u for tap in reached)
    assert "no input lands here" in str(layoutconv.explain(t, x, (0, 1, 4)))


def test_nd_index_must_have_every_axis(rng):
    conv = Conv(rng.standard_normal((2, 1, 2, 2)))
    with pytest.raises(layoutconv.ConfigError, match="4 integers"):
        layoutconv.explain(conv, rng.standard_normal((1, 1, 4, 4)), (0, 0, 1))
