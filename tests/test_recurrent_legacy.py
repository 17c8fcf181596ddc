"""Recurrent weights as Keras files store them: Keras 1's separate per-gate arrays (a real Keras 1.1 file, FactorNet's
Bidirectional LSTM) and Keras 2/3's packed ones.  Oracles: per-step loops of Keras 1's own step functions, and
tf_keras's legacy loader (``preprocess_weights_for_loading``), which converts Keras 1 weights its own way."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from layoutconv import FileFormatError, UnsupportedError, reference
from layoutconv import recurrent as R
from layoutconv.legacy.recurrent import from_keras1_weights, from_keras2_weights, keras1_roles
from layoutconv.tolerance import ASSERT_CLOSE_DEFAULTS

import recurrent_oracle as oracle
from conftest import need

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "legacy_keras"
FACTORNET = FIXTURES / "factornet_FOXA1_onePeak_DGF_final_model.hdf5"
#: the layer's config, copied from the model's architecture (factornet_FOXA1_onePeak_DGF_model.json, Keras 1.1.0;
#: the weights file has no config of its own), keeping the keys the reader uses
FACTORNET_CONFIG = {
    "merge_mode": "concat",
    "layer": {
        "class_name": "LSTM",
        "config": {
            "name": "forward_lstm_1", "inner_activation": "hard_sigmoid", "go_backwards": False, "activation": "tanh",
            "consume_less": "cpu", "stateful": False, "input_dim": 32, "return_sequences": True, "output_dim": 32,
        },
    },
    "name": "bidirectional_1",
}  # fmt: skip


def assert_close(actual, expected):
    rtol, atol = ASSERT_CLOSE_DEFAULTS[np.asarray(actual).dtype.name]
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def factornet():
    need("h5py")
    import h5py

    with h5py.File(FACTORNET, "r") as f:
        group = f["bidirectional_1"]
        names = [n.decode() for n in group.attrs["weight_names"]]
        return names, {n: group[n][()] for n in names}


def test_the_file_stores_keras1_arrays_in_the_order_keras1_wrote_them(factornet):
    names, arrays = factornet
    roles = keras1_roles("lstm", packed=False)
    assert roles == ("W_i", "U_i", "b_i", "W_c", "U_c", "b_c", "W_f", "U_f", "b_f", "W_o", "U_o", "b_o")
    assert names == [f"{d}_lstm_1_{role}" for d in ("forward", "backward") for role in roles]
    assert {arrays[n].shape for n in names if "_W_" in n or "_U_" in n} == {(32, 32)}
    assert {arrays[n].shape for n in names if "_b_" in n} == {(32,)} and arrays[names[0]].dtype == np.float32


def test_factornet_bidirectional_lstm_against_keras1_equations(factornet, rng):
    names, arrays = factornet
    record = from_keras1_weights("Bidirectional", FACTORNET_CONFIG, arrays)
    assert isinstance(record, R.Bidirectional) and record.merge_mode == "concat"
    assert record.forward.recurrent_activation == "hard_sigmoid_keras2" and record.backward.go_backwards
    assert record.out_channels == 64 and record.dtype == np.float32
    x = rng.normal(size=(1, 32, 5))
    halves = []
    for direction, backwards in (("forward", False), ("backward", True)):
        gates = {g: tuple(arrays[f"{direction}_lstm_1_{m}_{g}"].astype(np.float64) for m in "WUb") for g in "ifco"}
        y = oracle.channels_first(oracle.keras1_lstm(np.moveaxis(x, 1, 2), gates, go_backwards=backwards), True)
        halves.append(y[..., ::-1] if backwards else y)  # Keras 1 Bidirectional flips the backward sequence back
    np.testing.assert_allclose(reference.forward(record, x), np.concatenate(halves, axis=1), rtol=1e-7, atol=1e-7)
    positional = from_keras1_weights("Bidirectional", FACTORNET_CONFIG, [arrays[n] for n in names])  # stored order, no names
    assert positional == record


def test_factornet_against_tf_keras_legacy_loader(factornet, rng):
    need("tf_keras", "tensorflow")
    import tf_keras
    from tf_keras.src.saving.legacy import hdf5_format

    names, arrays = factornet
    record = from_keras1_weights("Bidirectional", FACTORNET_CONFIG, arrays)
    layer = tf_keras.layers.Bidirectional(tf_keras.layers.LSTM(32, return_sequences=True, recurrent_activation="hard_sigmoid"))
    layer.build((None, None, 32))
    converted = hdf5_format.preprocess_weights_for_loading(layer, [arrays[n] for n in names], "1", "theano")  # the loader passes the major version
    layer.set_weights(converted)
    x = rng.normal(size=(2, 32, 7)).astype(np.float32)
    y = np.moveaxis(layer(np.moveaxis(x, 1, 2)).numpy(), 2, 1)
    assert_close(y, reference.forward(record, x))
    from layoutconv.adapters import tf_keras_adapter

    assert tf_keras_adapter.from_native(layer) == record  # the same bytes, whoever reorders them


def _keras1_arrays(rng, kind, f, h, packed=False, prefix="layer_1"):
    width = {"rnn": 1, "lstm": 4, "gru": 3}[kind] * h if packed else h
    shapes = {"W": (f, width), "U": (h, width), "b": (width,)}
    return {f"{prefix}_{role}": rng.normal(scale=0.5, size=shapes[role[0]]).astype(np.float32) for role in keras1_roles(kind, packed)}


@pytest.mark.parametrize("go_backwards", [False, True])
def test_keras1_gru_separate_and_packed(rng, go_backwards):
    f, h = 3, 4
    separate = _keras1_arrays(rng, "gru", f, h)
    config = {"output_dim": h, "return_sequences": True, "go_backwards": go_backwards, "consume_less": "mem"}
    record = from_keras1_weights("GRU", config, separate)
    assert not record.reset_after and record.recurrent_activation == "hard_sigmoid_keras2"
    x = rng.normal(size=(2, f, 7))
    gates = {g: tuple(separate[f"layer_1_{m}_{g}"].astype(np.float64) for m in "WUb") for g in "zrh"}
    want = oracle.channels_first(oracle.keras1_gru(np.moveaxis(x, 1, 2), gates, go_backwards=go_backwards), True)
    np.testing.assert_allclose(reference.forward(record, x), want, rtol=1e-7, atol=1e-7)
    # consume_less='gpu' packs the same gates z r h along the last axis
    packed = {f"layer_1_{m}": np.concatenate([separate[f"layer_1_{m}_{g}"] for g in "zrh"], axis=-1) for m in "WUb"}
    assert from_keras1_weights("GRU", dict(config, consume_less="gpu"), packed) == record


def test_keras1_lstm_packed_gpu_and_simple_rnn(rng):
    f, h = 3, 2
    separate = _keras1_arrays(rng, "lstm", f, h)
    record = from_keras1_weights("LSTM", {"output_dim": h, "inner_activation": "sigmoid"}, separate)
    packed = {f"l_{m}": np.concatenate([separate[f"layer_1_{m}_{g}"] for g in "ifco"], axis=-1) for m in "WUb"}  # i f c o
    assert from_keras1_weights("LSTM", {"output_dim": h, "inner_activation": "sigmoid", "consume_less": "gpu"}, packed) == record
    rnn_arrays = _keras1_arrays(rng, "rnn", f, h)
    rnn = from_keras1_weights("SimpleRNN", {"output_dim": h, "activation": "relu"}, rnn_arrays)
    x = rng.normal(size=(2, f, 5))
    w, u, b = (rnn_arrays[f"layer_1_{m}"].astype(np.float64) for m in "WUb")
    np.testing.assert_allclose(reference.forward(rnn, x), oracle.keras_simple_rnn(np.moveaxis(x, 1, 2), w, u, b, "relu")[:, -1], atol=1e-7)


def test_keras1_refusals(rng):
    separate = _keras1_arrays(rng, "lstm", 3, 2)
    with pytest.raises(FileFormatError, match="consume_less='gpu'"):
        from_keras1_weights("LSTM", {"consume_less": "gpu"}, separate)
    with pytest.raises(UnsupportedError, match="stateful"):
        from_keras1_weights("LSTM", {"stateful": True}, separate)
    with pytest.raises(FileFormatError, match="wrong number of arrays"):
        from_keras1_weights("LSTM", {}, list(separate.values())[:11])
    twice = {k: v for k, v in separate.items() if k != "layer_1_U_c"}
    twice["other_W_i"] = separate["layer_1_W_i"]  # 12 arrays, two of them W_i, no U_c
    with pytest.raises(FileFormatError, match="'W_i'"):
        from_keras1_weights("LSTM", {}, twice)
    with pytest.raises(Exception, match="output_dim=5"):
        from_keras1_weights("LSTM", {"output_dim": 5}, separate)
    with pytest.raises(UnsupportedError, match="ConvLSTM2D"):
        from_keras1_weights("ConvLSTM2D", {}, separate)


@pytest.mark.parametrize("flavour", ["tf_keras", "keras"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU_after", "GRU_before", "SimpleRNN", "Bidirectional"])
def test_keras2_and_3_packed_weights_match_the_adapters(flavour, kind, rng):
    need(flavour, "tensorflow")
    import importlib

    keras = importlib.import_module(flavour)
    adapter = importlib.import_module(f"layoutconv.adapters.{flavour if flavour == 'tf_keras' else 'keras'}_adapter")
    make = {
        "LSTM": lambda: keras.layers.LSTM(4, recurrent_activation="hard_sigmoid", return_sequences=True),
        "GRU_after": lambda: keras.layers.GRU(4, reset_after=True),
        "GRU_before": lambda: keras.layers.GRU(4, reset_after=False, go_backwards=True),
        "SimpleRNN": lambda: keras.layers.SimpleRNN(4, use_bias=False),
        "Bidirectional": lambda: keras.layers.Bidirectional(keras.layers.GRU(4, return_sequences=True), merge_mode="mul"),
    }
    layer = make[kind]()
    layer.build((None, None, 3))
    layer.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in layer.get_weights()])
    config = json.loads(json.dumps(layer.get_config(), default=str))
    stored = [(w.path if hasattr(w, "path") else w.name, np.asarray(v)) for w, v in zip(layer.weights, layer.get_weights())]
    generation = 3 if flavour == "keras" else 2
    class_name = type(layer).__name__
    from_names = from_keras2_weights(class_name, config, stored, generation=generation)
    from_order = from_keras2_weights(class_name, config, [v for _, v in stored], generation=generation)
    assert from_names == from_order == adapter.from_native(layer)
