"""Bit-exact weight round trips of recurrent records through every ordered pair of frameworks that can express them:
record -> A -> record -> B -> record gives the same record, and A -> B -> A gives A's native weights back, byte for
byte.  The last native also runs like the reference (torch.testing.assert_close's float32 defaults)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import layoutconv
from layoutconv import reference
from layoutconv import recurrent as R
from layoutconv.tolerance import ASSERT_CLOSE_DEFAULTS

from conftest import need

FRAMEWORKS = ("torch", "keras", "tf_keras", "onnx")
REQUIRES = {"torch": ("torch",), "keras": ("keras", "tensorflow"), "tf_keras": ("tf_keras", "tensorflow"), "onnx": ("onnx", "onnxruntime")}


def _arrays(seed, *shapes):
    rng = np.random.default_rng(seed)
    return [rng.normal(scale=0.5, size=s).astype(np.float32) for s in shapes]


def _cases():
    lstm = R.LSTM(*_arrays(1, (16, 3), (16, 4), (16,)), return_sequences=True, go_backwards=True)
    gru_after = R.GRU(*_arrays(2, (12, 4), (12, 4), (12,), (12,)), reset_after=True)
    gru_before = R.GRU(*_arrays(3, (12, 3), (12, 4), (12,)), reset_after=False, return_sequences=True)
    rnn = R.SimpleRNN(*_arrays(4, (5, 3), (5, 5)), activation="relu", return_sequences=True)
    return {
        # name: (record, frameworks that express it exactly)
        "lstm_go_backwards_seq": (lstm, FRAMEWORKS),
        "lstm_hard_sigmoid_keras2": (lstm.replace(recurrent_activation="hard_sigmoid_keras2"), ("torch", "tf_keras", "onnx")),
        "lstm_hard_sigmoid_keras3": (lstm.replace(recurrent_activation="hard_sigmoid_keras3"), ("torch", "keras", "onnx")),
        "gru_reset_after_two_biases_F4_H4": (gru_after, FRAMEWORKS),
        "gru_reset_before": (gru_before, FRAMEWORKS),
        "simple_rnn_relu_no_bias": (rnn, FRAMEWORKS),
        "bidirectional_lstm_concat": (R.Bidirectional(lstm.replace(go_backwards=False), lstm.replace(kernel=_arrays(5, (16, 3))[0]), "concat"), FRAMEWORKS),
        "bidirectional_gru_sum_last": (
            R.Bidirectional(gru_before.replace(return_sequences=False),
                            gru_before.replace(return_sequences=False, go_backwards=True, recurrent_kernel=_arrays(6, (12, 4))[0]), "sum"),
            FRAMEWORKS,
        ),  # fmt: skip
    }


CASES = _cases()
PAIRS = [
    (case, a, b) for case, (_, able) in CASES.items() for a, b in itertools.permutations(able, 2)
]  # fmt: skip


def to_native(framework, record):
    if framework == "torch":
        return layoutconv.to_torch(record)
    if framework == "onnx":
        return layoutconv.to_onnx(record)
    return layoutconv.to_keras(record, framework)


def from_native(framework, native):
    if framework == "torch":
        return layoutconv.from_torch(native)
    if framework == "onnx":
        return layoutconv.from_onnx(native)
    return layoutconv.from_keras(native)


def native_bytes(framework, native):
    if framework == "torch":
        return [(k, v.numpy().tobytes()) for k, v in native.state_dict().items()]
    if framework == "onnx":
        return [(t.name, t.raw_data or t.SerializeToString()) for t in native.graph.initializer]
    return [w.tobytes() for w in native.get_weights()]


@pytest.mark.parametrize("case, a, b", PAIRS, ids=[f"{c}-{a}-to-{b}" for c, a, b in PAIRS])
def test_round_trip_through_a_pair(case, a, b):
    for framework in (a, b):
        need(*REQUIRES[framework])
    record, _ = CASES[case]
    native_a = to_native(a, record)
    via_a = from_native(a, native_a)
    native_b = to_native(b, via_a)
    via_b = from_native(b, native_b)
    assert via_a == record and via_b == record and via_b.same_weights(record)
    assert native_bytes(a, to_native(a, via_b)) == native_bytes(a, native_a)  # A -> B -> A: the same bytes
    from layoutconv import registry

    x = np.random.default_rng(9).normal(size=(2, record.input_size, 7)).astype(np.float32)
    y = registry.converter(record, b).run(native_b, x)
    rtol, atol = ASSERT_CLOSE_DEFAULTS["float32"]
    np.testing.assert_allclose(y.astype(np.float64), reference.forward(record, x), rtol=rtol, atol=atol)
