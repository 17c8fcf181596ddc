"""Keras 3 and tf_keras recurrent layers and the records: layers built by hand with set_weights are read and
compared with the reference (and with per-step loops of Keras' own equations); what to_native writes runs like
the reference and reads back bit-exactly.  Baseline tolerance: torch.testing.assert_close's defaults for the
dtype (float32: rtol 1.3e-6, atol 1e-5; float64: rtol 1e-7, atol 1e-7), applied with numpy."""

from __future__ import annotations

import numpy as np
import pytest

import layoutconv
from layoutconv import ConfigError, UnsupportedError, reference
from layoutconv import recurrent as R
from layoutconv.tolerance import ASSERT_CLOSE_DEFAULTS

import recurrent_oracle as oracle
from conftest import need

FLAVOURS = ["keras", "tf_keras"]
#: what each flavour's "hard_sigmoid" computes (tests/test_activations.py establishes it)
HARD_SIGMOID = {"keras": "hard_sigmoid_keras3", "tf_keras": "hard_sigmoid_keras2"}


@pytest.fixture(scope="module", params=FLAVOURS)
def flavour(request):
    need(request.param, "tensorflow")
    import importlib

    module = importlib.import_module(request.param)
    adapter = importlib.import_module(f"layoutconv.adapters.{'keras' if request.param == 'keras' else 'tf_keras'}_adapter")
    return request.param, module, adapter


def assert_close(actual, expected):
    rtol, atol = ASSERT_CLOSE_DEFAULTS[np.asarray(actual).dtype.name]
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=rtol, atol=atol)


def weights(rng, kind, f, h, dtype, use_bias=True, reset_after=True):
    g = {"SimpleRNN": 1, "LSTM": 4, "GRU": 3}[kind]
    out = [rng.normal(scale=0.5, size=(f, g * h)), rng.normal(scale=0.5, size=(h, g * h))]
    if use_bias:
        out.append(rng.normal(scale=0.5, size=(2, g * h) if kind == "GRU" and reset_after else (g * h,)))
    return [a.astype(dtype) for a in out]


def build(keras, kind, f, arrays, dtype, **options):
    layer = getattr(keras.layers, kind)(arrays[1].shape[0], dtype=dtype, **options)
    layer.build((None, None, f))
    layer.set_weights(arrays)
    return layer


def oracle_of(kind, x_nft, arrays, options, flavour_name):
    names = {"hard_sigmoid": HARD_SIGMOID[flavour_name]}
    act = names.get(options.get("activation", "tanh"), options.get("activation", "tanh"))
    gate = names.get(options.get("recurrent_activation", "sigmoid"), options.get("recurrent_activation", "sigmoid"))
    bias = arrays[2] if len(arrays) > 2 else None
    xb, gb = np.moveaxis(x_nft, 1, 2), options.get("go_backwards", False)
    if kind == "LSTM":
        y = oracle.keras_lstm(xb, arrays[0], arrays[1], bias, act, gate, gb)
    elif kind == "GRU":
        y = oracle.keras_gru(xb, arrays[0], arrays[1], bias, options.get("reset_after", True), act, gate, gb)
    else:
        y = oracle.keras_simple_rnn(xb, arrays[0], arrays[1], bias, act, gb)
    return oracle.channels_first(y, options.get("return_sequences", False))


LAYERS = {
    "lstm": ("LSTM", {}),
    "lstm_hard_sigmoid_seq_backwards": ("LSTM", {"recurrent_activation": "hard_sigmoid", "return_sequences": True, "go_backwards": True}),
    "lstm_no_bias_seq": ("LSTM", {"use_bias": False, "return_sequences": True}),
    "gru_reset_after_seq": ("GRU", {"reset_after": True, "return_sequences": True}),
    "gru_reset_before_hard_sigmoid": ("GRU", {"reset_after": False, "recurrent_activation": "hard_sigmoid"}),
    "gru_reset_before_backwards_seq": ("GRU", {"reset_after": False, "go_backwards": True, "return_sequences": True}),
    "simple_rnn_relu_seq": ("SimpleRNN", {"activation": "relu", "return_sequences": True}),
    "simple_rnn_backwards": ("SimpleRNN", {"go_backwards": True}),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("sizes", [(3, 4), (4, 4)], ids=["F3_H4", "F4_H4"])
@pytest.mark.parametrize("case", LAYERS, ids=list(LAYERS))
def test_layer_built_by_hand(flavour, rng, dtype, sizes, case):
    name, keras, adapter = flavour
    kind, options = LAYERS[case]
    f, h = sizes
    arrays = weights(rng, kind, f, h, dtype, options.get("use_bias", True), options.get("reset_after", True))
    layer = build(keras, kind, f, arrays, dtype, **options)
    record = layoutconv.from_keras(layer)  # through the Keras adapters' hook
    assert type(record).__name__ == {"LSTM": "LSTM", "GRU": "GRU", "SimpleRNN": "SimpleRNN"}[kind]
    x = rng.normal(size=(2, f, 7)).astype(dtype)
    expected = reference.forward(record, x)
    np.testing.assert_allclose(expected, oracle_of(kind, x, arrays, options, name), rtol=1e-7, atol=1e-7)
    y = adapter.run(layer, x)
    assert y.dtype == np.dtype(dtype)
    assert_close(y, expected)
    again = layoutconv.to_keras(record, name)
    assert adapter.from_native(again) == record
    assert [w.tobytes() for w in again.get_weights()] == [w.tobytes() for w in layer.get_weights()]


def test_rnn_around_a_cell_reads_like_the_layer(flavour, rng):
    name, keras, adapter = flavour
    arrays = weights(rng, "LSTM", 3, 4, "float32")
    layer = keras.layers.RNN(keras.layers.LSTMCell(4, recurrent_activation="hard_sigmoid"), return_sequences=True)
    layer.build((None, None, 3))
    layer.set_weights(arrays)
    record = adapter.from_native(layer)
    assert record.recurrent_activation == HARD_SIGMOID[name]
    x = rng.normal(size=(2, 3, 5)).astype("float32")
    assert_close(adapter.run(layer, x), reference.forward(record, x))


def test_go_backwards_returns_the_processing_order(flavour, rng):
    # Established by experiment: Keras does not flip a go_backwards layer's sequence back.
    name, keras, adapter = flavour
    arrays = weights(rng, "GRU", 3, 4, "float64")
    backwards = build(keras, "GRU", 3, arrays, "float64", return_sequences=True, go_backwards=True)
    forwards = build(keras, "GRU", 3, arrays, "float64", return_sequences=True)
    x = rng.normal(size=(2, 3, 6))
    assert_close(adapter.run(backwards, x), adapter.run(forwards, x[..., ::-1]))
    assert not np.allclose(adapter.run(backwards, x), adapter.run(forwards, x[..., ::-1])[..., ::-1])


@pytest.mark.parametrize("merge_mode", R.MERGE_MODES)
@pytest.mark.parametrize("return_sequences", [True, False], ids=["seq", "last"])
def test_bidirectional_built_by_hand(flavour, rng, merge_mode, return_sequences):
    name, keras, adapter = flavour
    layer = keras.layers.Bidirectional(
        keras.layers.LSTM(4, return_sequences=return_sequences, recurrent_activation="hard_sigmoid"), merge_mode=merge_mode
    )
    layer.build((None, None, 3))
    fw, bw = weights(rng, "LSTM", 3, 4, "float32"), weights(rng, "LSTM", 3, 4, "float32")
    layer.set_weights(fw + bw)
    record = adapter.from_native(layer)
    assert isinstance(record, R.Bidirectional) and record.merge_mode == merge_mode
    x = rng.normal(size=(2, 3, 7)).astype("float32")
    a = oracle.channels_first(oracle.keras_lstm(np.moveaxis(x, 1, 2), *fw, "tanh", HARD_SIGMOID[name]), return_sequences)
    b = oracle.channels_first(oracle.keras_lstm(np.moveaxis(x, 1, 2), *bw, "tanh", HARD_SIGMOID[name], True), return_sequences)
    if return_sequences:
        b = b[..., ::-1]
    want = {"concat": np.concatenate([a, b], 1), "sum": a + b, "mul": a * b, "ave": (a + b) / 2}[merge_mode]
    expected = reference.forward(record, x)
    np.testing.assert_allclose(expected, want, rtol=1e-7, atol=1e-7)
    assert_close(adapter.run(layer, x), expected)
    assert adapter.from_native(layoutconv.to_keras(record, name)) == record


def test_mixed_bidirectional_and_two_biases_are_written_in_keras_form(flavour, rng):
    name, keras, adapter = flavour
    g = lambda *s: rng.normal(scale=0.5, size=s).astype("float32")  # noqa: E731
    fw = R.LSTM(g(16, 3), g(16, 4), g(16), g(16), return_sequences=True)  # two biases: folded
    bw = R.GRU(g(9, 3), g(9, 3), g(9), None, reset_after=True, go_backwards=True, return_sequences=True)  # zeros added
    record = R.Bidirectional(fw, bw, "concat")
    layer = layoutconv.to_keras(record, name)
    back = adapter.from_native(layer)
    assert back == R.keras_form(record) and back != record
    x = rng.normal(size=(2, 3, 7)).astype("float32")
    assert_close(adapter.run(layer, x), reference.forward(record, x))
    assert layoutconv.verify(record, frameworks=[name], x=x).passed


def test_refusals(flavour, rng):
    name, keras, adapter = flavour
    arrays = weights(rng, "LSTM", 3, 4, "float32")
    for flag in ("stateful", "return_state"):
        options = {flag: True}
        layer = keras.layers.LSTM(4, **options)
        if flag == "stateful":
            layer.build((2, 5, 3))
        else:
            layer.build((None, None, 3))
        with pytest.raises(UnsupportedError, match=f"{flag}=True"):
            adapter.from_native(layer)
    two = keras.layers.Bidirectional(keras.layers.LSTM(4), merge_mode=None)
    two.build((None, None, 3))
    with pytest.raises(ConfigError, match="two tensors"):
        adapter.from_native(two)
    lacking = "hard_sigmoid_keras2" if name == "keras" else "hard_sigmoid_keras3"
    record = R.LSTM(*(R.to_canonical(a, l, "lstm", "keras") for a, l in zip(arrays, ("I (G H)", "I (G H)", "(G H)"))),
                    recurrent_activation=lacking)
    with pytest.raises(UnsupportedError) as info:
        layoutconv.to_keras(record, name)
    assert "torch" in str(info.value) and "silently" in str(info.value)
    import ml_dtypes

    half = R.LSTM(record.kernel.astype(ml_dtypes.bfloat16), record.recurrent_kernel.astype(ml_dtypes.bfloat16))
    with pytest.raises(UnsupportedError, match="bfloat16"):
        layoutconv.to_keras(half, name)
    with pytest.raises(UnsupportedError, match="data_format"):
        layoutconv.to_keras(record.replace(recurrent_activation="sigmoid"), name, data_format="channels_first")

    class Doubled(keras.layers.LSTM):
        def call(self, *args, **kwargs):
            return 2 * super().call(*args, **kwargs)

    custom = Doubled(4)
    custom.build((None, None, 3))
    with pytest.raises(UnsupportedError, match="override call"):
        adapter.from_native(custom)
