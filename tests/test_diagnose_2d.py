"""diagnose for 2-D convolutions: outputs produced by real frameworks, found back."""

from __future__ import annotations

import numpy as np
import pytest

import layoutconv
from layoutconv import ShapeError

from conftest import need


def test_finds_a_keras_conv2d_with_stride_same_and_relu(rng):
    need("keras", "tensorflow")
    import keras

    layer = keras.layers.Conv2D(5, (3, 2), strides=(2, 1), padding="same", activation="relu")
    x = rng.standard_normal((2, 7, 6, 3)).astype(np.float32)  # channels last
    y = keras.ops.convert_to_numpy(layer(x))
    kernel, bias = (np.asarray(w) for w in layer.get_weights())
    d = layoutconv.diagnose(kernel, bias, x, y)
    assert d.matches, str(d)
    best = d.matches[0]
    assert (best.layout, best.flipped, best.x_format, best.stride) == ("H W I O", False, "channels_last", (2, 1))
    assert best.activation == "relu"
    # relu6 computes the same wherever no output exceeds 6: the only other activation allowed to match
    assert {m.activation for m in d.matches} <= {"relu", "relu6"} and float(y.max()) < 6
    np.testing.assert_allclose(layoutconv.reference.forward(d.conv, np.moveaxis(x, -1, 1)),
                               np.moveaxis(y, -1, 1), rtol=1e-5, atol=1e-5)


def test_finds_a_torch_conv2d_and_refuses_the_flipped_reading(rng):
    need("torch")
    import torch

    m = torch.nn.Conv2d(3, 4, (3, 5), padding=(1, 2), dilation=(1, 1), dtype=torch.float64)
    x = rng.standard_normal((1, 3, 8, 9))
    y = m(torch.from_numpy(x)).detach().numpy()
    d = layoutconv.diagnose(m.weight.detach().numpy(), m.bias.detach().numpy(), x, y, stride=1, dilation=1)
    assert d.matches and all(not r.flipped and r.layout == "O I H W" for r in d.matches)
    assert any(r.padding == ((1, 1), (2, 2)) or r.padding == "same_upper" for r in d.matches)
    assert "reproduce y" in str(d)


def test_theano_flipped_kernel_is_found(rng):
    kernel = rng.standard_normal((3, 3, 2, 4))  # H W I O, as stored by Keras 2 on Theano (flipped)
    canon = np.flip(layoutconv.layouts.to_canonical(kernel, "H W I O"), axis=(2, 3))
    x = rng.standard_normal((1, 2, 7, 7))
    y = layoutconv.reference.forward(layoutconv.Conv(np.ascontiguousarray(canon)), x)
    d = layoutconv.diagnose(kernel, None, np.moveaxis(x, 1, -1), np.moveaxis(y, 1, -1), stride=1, dilation=1)
    assert d.matches and d.matches[0].flipped and d.matches[0].layout == "H W I O"


def test_no_shape_fits_is_a_clear_error(rng):
    with pytest.raises(ShapeError, match="turns x's shape into y's"):
        layoutconv.diagnose(rng.standard_normal((4, 3, 3, 3)), None, rng.standard_normal((1, 3, 8, 8)),
                            rng.standard_normal((1, 4, 2, 2)), stride=1, dilation=1)
