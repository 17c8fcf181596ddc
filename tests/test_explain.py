"""explain: the tap-by-tap account of one output element, and the by-hand formula in each convention's terms.

Expected values come from a direct loop written here, on the *raw* kernel
(indexed by its axis names, flipped for Theano conventions) and the raw
input: no layoutconv layout code, no padding code.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import numpy as np
import pytest

import layoutconv
from layoutconv import reference
from layoutconv.conventions import CONVENTIONS, Convention
from layoutconv import Explanation, explain

# torch.testing.assert_close defaults for float64
RTOL, ATOL = 1e-7, 1e-7
_INDEX_PAD = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def source_positions(length: int, pads: tuple[int, int], mode: str) -> np.ndarray:
    """For each padded position, the input position it copies (-1: a zero)."""
    if mode == "zeros":
        return np.pad(np.arange(length), pads, constant_values=-1)
    return np.pad(np.arange(length), pads, mode=_INDEX_PAD[mode])


def direct(W, b, x, convention: Convention, index, *, stride=1, dilation=1, groups=1, pads=(0, 0), mode="zeros") -> float:
    """y[n, f, t] by a plain loop over the raw kernel and raw input of ``convention``."""
    names = convention.layout.split()
    sizes = dict(zip(names, W.shape))
    per_group, taps = sizes["I"], sizes["K"]
    last = convention.data_format == "channels_last"
    length = x.shape[1] if last else x.shape[2]
    n, f, t = index
    group = f // (sizes["O"] // groups)
    src = source_positions(length, pads, mode)
    total = 0.0 if b is None else float(b[f])
    for c in range(per_group):
        for k in range(taps):
            p = src[stride * t + dilation * k]
            if p < 0:
                continue
            at = {"O": f, "I": c, "K": taps - 1 - k if convention.flipped else k, "1": 0}
            value = x[n, p, group * per_group + c] if last else x[n, group * per_group + c, p]
            total += float(W[tuple(at[a] for a in names)]) * float(value)
    return total


class Case(NamedTuple):
    id: str
    out: int
    inp: int
    k: int
    length: int
    hp: dict[str, Any]
    pads: tuple[int, int]
    index: tuple[int, int, int]
    in_padding: bool


CASES = [
    Case("valid", 4, 3, 5, 17, {}, (0, 0), (1, 2, 3), False),
    # L=15, stride 2, K=4: 8 outputs, total pad 3 -> (1, 2); the last window reaches 2 pads
    Case("same_upper-stride2-even-kernel-last", 4, 3, 4, 15, dict(stride=2, padding="same_upper"), (1, 2), (1, 3, 7), True),
    Case("causal-t0", 3, 3, 3, 11, dict(padding="causal"), (2, 0), (0, 1, 0), True),
    Case("reflect-begin", 5, 2, 5, 13, dict(padding=(3, 2), padding_mode="reflect"), (3, 2), (1, 4, 0), True),
    Case("replicate-stride3-end", 4, 3, 4, 14, dict(stride=3, padding=(1, 3), padding_mode="replicate"), (1, 3), (0, 0, 4), True),
    Case("circular-end", 3, 2, 3, 9, dict(padding=(2, 2), padding_mode="circular"), (2, 2), (1, 2, 10), True),
    Case("groups2", 6, 4, 3, 12, dict(groups=2, padding="same_upper"), (1, 1), (1, 4, 11), True),
    Case("dilation2", 4, 3, 3, 16, dict(dilation=2, padding="same_upper"), (2, 2), (0, 3, 1), True),
]


def make(case: Case, convention: Convention, rng: np.random.Generator):
    groups = case.hp.get("groups", 1)
    sizes = {"O": case.out, "I": case.inp // groups, "K": case.k, "1": 1}
    W = rng.standard_normal(tuple(sizes[a] for a in convention.layout.split()))
    b = rng.standard_normal(case.out)
    shape = (2, case.length, case.inp) if convention.data_format == "channels_last" else (2, case.inp, case.length)
    return W, b, rng.standard_normal(shape)


def channels_first(x: np.ndarray, convention: Convention) -> np.ndarray:
    return np.swapaxes(x, 1, 2) if convention.data_format == "channels_last" else x


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@pytest.mark.parametrize("name", sorted(CONVENTIONS))
def test_by_hand_expression_evaluates_to_the_reference(name, case, rng):
    convention = CONVENTIONS[name]
    W, b, x = make(case, convention, rng)
    conv = convention.conv1d(W, b, **case.hp)
    e = explain(conv, x, case.index, source=name)
    expected = direct(W, b, x, convention, e.index, pads=case.pads, mode=case.hp.get("padding_mode", "zeros"), **{
        k: v for k, v in case.hp.items() if k in ("stride", "dilation", "groups")
    })
    by_hand = eval(e.by_hand, {"np": np, "W": W, "bias": b, "X": x})
    np.testing.assert_allclose(by_hand, expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(e.by_hand_value, expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(e.total, expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(e.reference, expected, rtol=RTOL, atol=ATOL)
    assert e.agree
    assert e.pads == case.pads
    assert e.uses_padding == case.in_padding
    assert ("np.pad(X" in e.by_hand) == case.in_padding
    assert ("::-1" in e.by_hand) == convention.flipped


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_taps_report_positions_padding_and_sources(case, rng):
    convention = CONVENTIONS["torch"]
    W, b, x = make(case, convention, rng)
    conv = convention.conv1d(W, b, **case.hp)
    e = explain(conv, x, case.index)
    n, f, t = e.index
    s, d = case.hp.get("stride", 1), case.hp.get("dilation", 1)
    src = source_positions(case.length, case.pads, case.hp.get("padding_mode", "zeros"))
    group = f // (case.out // case.hp.get("groups", 1))
    per_group = case.inp // case.hp.get("groups", 1)
    running = b[f]
    for k, tap in enumerate(e.taps):
        position = s * t + d * k - case.pads[0]
        assert (tap.k, tap.position) == (k, position)
        assert tap.padding == (not 0 <= position < case.length)
        source = int(src[s * t + d * k])
        assert tap.source == (None if source < 0 else source)
        inputs = [0.0 if source < 0 else x[n, group * per_group + c, source] for c in range(per_group)]
        np.testing.assert_array_equal(tap.inputs, inputs)
        np.testing.assert_array_equal(tap.weights, W[f, :, k])
        running += float(np.dot(W[f, :, k], inputs))
        np.testing.assert_allclose(tap.partial, running, rtol=RTOL, atol=ATOL)
    assert e.channels == tuple(range(group * per_group, (group + 1) * per_group))


def question_example(rng: np.random.Generator):
    """The question's shapes: Keras 1.1 Theano Conv1D(64, 10) on (123, 3), float32."""
    W = rng.standard_normal((10, 1, 3, 64)).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    x = rng.standard_normal((1, 123, 3)).astype(np.float32)
    return W, b, x


def test_theano_kernel_naive_sum_is_a_listed_pitfall(rng):
    W, b, x = question_example(rng)
    convention = CONVENTIONS["keras1.1-theano"]
    conv = convention.conv1d(W, b)
    e = explain(conv, x, (0, 5, 0), source=convention)
    assert e.by_hand == "bias[5] + np.sum(W[::-1, 0, :, 5] * X[0, 0:10, :])"
    naive = b[5] + np.sum(W[:, 0, :, 5].astype(np.float64) * x[0, :10, :])
    unflipped = direct(W, b, x, CONVENTIONS["keras1.1-tensorflow"], (0, 5, 0))
    np.testing.assert_allclose(naive, unflipped, rtol=RTOL, atol=ATOL)
    (pitfall,) = e.pitfalls
    assert pitfall.expression == "bias[5] + np.sum(W[:, 0, :, 5] * X[0, 0:10, :])"
    np.testing.assert_allclose(pitfall.value, naive, rtol=1.3e-6, atol=1e-5)  # float32 sum
    assert abs(pitfall.value - e.reference) > 1e-3
    text = str(e)
    assert len(text.splitlines()) <= 20
    assert e.by_hand in text and pitfall.expression in text


def test_ignoring_padding_is_a_listed_pitfall(rng):
    W = rng.standard_normal((4, 3, 5))  # K I O: kernel 4, pads (1, 2)
    x = rng.standard_normal((1, 11, 3))
    conv = CONVENTIONS["keras"].conv1d(W, None, padding="same_upper")
    e = explain(conv, x, (0, 2, 3), source="keras")
    assert e.by_hand == "np.sum(W[:, :, 2] * X[0, 2:6, :])"
    (pitfall,) = e.pitfalls
    assert pitfall.expression == "np.sum(W[:, :, 2] * X[0, 3:7, :])"
    assert "padding ignored" in pitfall.mistake


def test_large_fan_in_is_summarised_per_tap(rng):
    conv = layoutconv.Conv1D(rng.standard_normal((7, 16, 40)), rng.standard_normal(7), padding="same_upper")
    e = explain(conv, rng.standard_normal((1, 16, 45)), (0, 3, 44))
    lines = str(e).splitlines()
    assert len(lines) < 30
    assert any(line.strip() == "..." for line in lines)
    assert any("16 products" in line for line in lines)
    assert e.agree


def test_channels_last_input_and_negative_index(rng):
    conv = layoutconv.Conv1D(rng.standard_normal((3, 3, 3)), rng.standard_normal(3), padding="causal")
    x = rng.standard_normal((2, 3, 9))
    first = explain(conv, x, (1, 2, -1))
    last = explain(conv, np.swapaxes(x, 1, 2), (1, 2, 8), data_format="channels_last")
    assert first.index == last.index == (1, 2, 8)
    assert first.total == last.total
    np.testing.assert_allclose(first.total, reference.conv1d(conv, x)[1, 2, 8], rtol=RTOL, atol=ATOL)


def test_public_name_is_the_function(rng):
    conv = layoutconv.Conv1D(rng.standard_normal((2, 3, 3)))
    assert isinstance(layoutconv.explain(conv, rng.standard_normal((1, 3, 7)), (0, 1, 2)), Explanation)


def test_to_dict_is_json(rng):
    conv = layoutconv.Conv1D(rng.standard_normal((2, 3, 3)), rng.standard_normal(2), padding=(1, 1), padding_mode="reflect")
    e = explain(conv, rng.standard_normal((1, 3, 7)), (0, 1, 0), source="keras-theano", data_format="channels_first")
    d = json.loads(json.dumps(e.to_dict()))
    assert d["by_hand"] == e.by_hand and d["source"] == "keras-theano"
    assert d["taps"][0]["padding"] is True and d["taps"][0]["source"] == 1


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda conv, x: explain(conv, x[:, :2], (0, 0, 0)), layoutconv.ShapeError, "(2, 2, 9)"),
        (lambda conv, x: explain(conv, x, (0, 4, 0)), layoutconv.ShapeError, "(2, 4, 7)"),
        (lambda conv, x: explain(conv, x, (0, 0)), layoutconv.ConfigError, "(n, f, t)"),
        (lambda conv, x: explain(conv, x, (0, 0, 0), source="theano"), layoutconv.ConfigError, "keras1.1-theano"),
        (lambda conv, x: explain(conv, x, (0, 0, 0), data_format="NCL"), layoutconv.ConfigError, "channels_last"),
    ],
    ids=["channels-mismatch", "index-out-of-range", "short-index", "unknown-source", "bad-data-format"],
)
def test_errors_name_what_was_received(call, error, words, rng):
    conv = layoutconv.Conv1D(rng.standard_normal((4, 3, 3)))
    with pytest.raises(error) as info:
        call(conv, rng.standard_normal((2, 3, 9)))
    assert words in str(info.value)
