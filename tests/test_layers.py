"""The layer records' reference pass, each checked against an oracle written here (a loop or a formula) or a framework.

Shapes break symmetry: odd sizes, channel counts that differ from every
spatial size, random values; pads and pools with sizes that do not divide.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from layoutconv import ConfigError, ShapeError, layers, reference

RNG = np.random.default_rng(20261129)
F64 = dict(rtol=1e-7, atol=1e-7)  # torch.testing.assert_close defaults for float64


def rand(*shape):
    return RNG.normal(size=shape)


def close(actual, expected, **tol):
    np.testing.assert_allclose(actual, expected, **(tol or F64))


def test_dense_on_flat_and_on_sequences():
    w, b = rand(5, 3), rand(5)
    x = rand(2, 3)
    expected = np.array([[sum(w[o, i] * x[n, i] for i in range(3)) + b[o] for o in range(5)] for n in range(2)])
    close(reference.forward(layers.Dense(w, b), x), expected)
    seq = rand(2, 3, 7)  # (N, C, T): applied at every time step, like Keras' Dense on (N, T, C)
    y = reference.forward(layers.Dense(w, b, activation="relu"), seq)
    for t in range(7):
        close(y[:, :, t], np.maximum(reference.forward(layers.Dense(w, b), seq[:, :, t]), 0))


def test_dense_keras_layout_is_the_transpose():
    w = rand(3, 5)  # Keras (in, out)
    assert np.array_equal(layers.Dense(w, layout="I O").kernel, w.T)


def test_batch_norm_formula_per_channel():
    mean, var, gamma, beta = rand(4), np.abs(rand(4)) + 0.1, rand(4), rand(4)
    x = rand(3, 4, 5, 2)
    y = reference.forward(layers.BatchNorm(mean, var, gamma, beta, epsilon=1e-3), x)
    for c in range(4):
        close(y[:, c], (x[:, c] - mean[c]) / np.sqrt(var[c] + 1e-3) * gamma[c] + beta[c])


def test_batch_norm_refuses_negative_variance():
    with pytest.raises(ConfigError, match="negative"):
        layers.BatchNorm(np.zeros(3), np.array([1.0, -0.5, 1.0]))


def test_layer_norm_over_channels_matches_torch():
    torch = pytest.importorskip("torch")
    gamma, beta = rand(6), rand(6)
    x = rand(2, 6, 5)
    y = reference.forward(layers.LayerNorm(gamma, beta, axes=(1,), epsilon=1e-5), x)
    t = torch.nn.functional.layer_norm(torch.from_numpy(x).movedim(1, -1), (6,), torch.from_numpy(gamma), torch.from_numpy(beta), 1e-5)
    close(y, t.movedim(-1, 1).numpy())


def test_embedding_is_a_lookup_moved_channels_first():
    w = rand(7, 3)
    ids = np.array([[0, 6, 2, 2, 5]])
    y = reference.forward(layers.Embedding(w), ids)
    assert y.shape == (1, 3, 5)
    for t, i in enumerate(ids[0]):
        close(y[0, :, t], w[i])
    with pytest.raises(ShapeError, match="out of range"):
        reference.forward(layers.Embedding(w), np.array([[7]]))


def _pool_oracle(x, kind, k, s, pads, count_include_pad):
    """Direct loop over every output position of a 1-D pool."""
    n, c, length = x.shape
    (b, e), = pads
    out_len = (length + b + e - k) // s + 1
    y = np.empty((n, c, out_len))
    for t in range(out_len):
        cells = [p - b for p in range(t * s, t * s + k)]
        real = [p for p in cells if 0 <= p < length]
        if kind == "max":
            y[:, :, t] = x[:, :, real].max(axis=2)
        else:
            y[:, :, t] = x[:, :, real].sum(axis=2) / (k if count_include_pad else len(real))
    return y


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("k,s,length", [(3, 2, 10), (2, 2, 7), (4, 3, 11), (5, 1, 5)])
@pytest.mark.parametrize("padding", ["valid", "same_upper", "same_lower", ((1, 0),)])
@pytest.mark.parametrize("count_include_pad", [False, True])
def test_pool_1d_against_a_loop(kind, k, s, length, padding, count_include_pad):
    x = rand(2, 3, length)
    pool = layers.Pool(kind, k, s, padding=padding, count_include_pad=count_include_pad)
    expected = _pool_oracle(x, kind, k, s, pool.pads((length,)), count_include_pad and kind == "avg")
    close(reference.forward(pool, x), expected)


def test_pool_2d_same_matches_tensorflow_avg_pool():
    tf = pytest.importorskip("tensorflow")
    x = rand(2, 3, 7, 6)
    y = reference.forward(layers.Pool("avg", (3, 2), (2, 2), padding="same_upper"), x)
    t = tf.nn.avg_pool2d(np.moveaxis(x, 1, -1), (3, 2), (2, 2), "SAME").numpy()
    close(y, np.moveaxis(t, -1, 1))


def test_pool_refuses_a_pad_as_wide_as_the_window():
    with pytest.raises(ConfigError, match="as large as the window"):
        layers.Pool("max", 2, padding=((2, 0),))


def test_global_pool_and_softmax():
    x = rand(2, 3, 5, 4)
    close(reference.forward(layers.GlobalPool("avg"), x), x.reshape(2, 3, -1).mean(axis=2))
    close(reference.forward(layers.GlobalPool("max", keepdims=True), x), x.max(axis=(2, 3), keepdims=True))
    s = reference.forward(layers.Softmax(1), x)
    close(s, np.exp(x) / np.exp(x).sum(axis=1, keepdims=True))


def test_flatten_orders():
    x = rand(2, 3, 5)  # channels first: 3 channels, 5 steps
    keras_order = reference.forward(layers.Flatten("channels_last"), x)
    torch_order = reference.forward(layers.Flatten("channels_first"), x)
    for n, c, t in itertools.product(range(2), range(3), range(5)):
        assert keras_order[n, t * 3 + c] == x[n, c, t]
        assert torch_order[n, c * 5 + t] == x[n, c, t]


def test_reshape_and_permute_in_keras_order():
    x = rand(2, 3, 4)  # Keras sees (N, 4, 3)
    keras_view = np.moveaxis(x, 1, -1)
    y = reference.forward(layers.Reshape((2, 6)), x)  # Keras: (N, 2, 6), channels (6) first here
    close(y, np.moveaxis(keras_view.reshape(2, 2, 6), -1, 1))
    p = reference.forward(layers.Permute((2, 1)), x)  # Keras: (N, 3, 4), channels = 4
    close(p, np.moveaxis(keras_view.transpose(0, 2, 1), -1, 1))
    close(reference.forward(layers.Reshape((12,), "channels_first"), x), x.reshape(2, 12))


def test_pad_and_crop():
    x = rand(2, 3, 5, 4)
    padded = reference.forward(layers.Pad(((1, 2), (0, 3))), x)
    assert padded.shape == (2, 3, 8, 7)
    close(padded[:, :, 1:6, 0:4], x)
    assert not padded[:, :, 0].any() and not padded[:, :, 6:].any() and not padded[:, :, :, 4:].any()
    close(reference.forward(layers.Crop(((1, 2), (0, 1))), x), x[:, :, 1:3, 0:3])
    with pytest.raises(ShapeError, match="whole input"):
        reference.forward(layers.Crop(((3, 2),)), rand(1, 2, 5))


@pytest.mark.parametrize(
    "op,fn",
    [
        ("add", lambda a, b, c: a + b + c),
        ("multiply", lambda a, b, c: a * b * c),
        ("average", lambda a, b, c: (a + b + c) / 3),
        ("maximum", lambda a, b, c: np.maximum(np.maximum(a, b), c)),
        ("minimum", lambda a, b, c: np.minimum(np.minimum(a, b), c)),
    ],
)
def test_merges(op, fn):
    a, b, c = rand(2, 3, 5), rand(2, 3, 5), rand(2, 3, 5)
    close(reference.forward(layers.Merge(op), [a, b, c]), fn(a, b, c))


def test_subtract_takes_two_and_concatenate_an_axis():
    a, b = rand(2, 3, 5), rand(2, 4, 5)
    close(reference.forward(layers.Merge("subtract"), [a, a[:, ::-1]]), a - a[:, ::-1])
    with pytest.raises(ShapeError, match="exactly 2"):
        reference.forward(layers.Merge("subtract"), [a, a, a])
    close(reference.forward(layers.Merge("concatenate", 1), [a, b]), np.concatenate([a, b], axis=1))
    with pytest.raises(ShapeError, match="one shape"):
        reference.forward(layers.Merge("add"), [a, b])


def test_records_are_immutable_and_rebuild_on_replace():
    dense = layers.Dense(rand(2, 3))
    with pytest.raises(AttributeError):
        dense.activation = "relu"  # type: ignore[misc]
    assert dense.replace(activation="relu").activation == "relu"
    assert dense == layers.Dense(dense.kernel)
    assert dense != layers.Dense(dense.kernel, activation="tanh")
