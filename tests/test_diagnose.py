"""diagnose: recover the convention that produced an output.

Outputs are produced independently of layoutconv's reference pass: by a
direct loop over the raw kernel (indexed by axis names, reversed for Theano
conventions, padded by explicit pads computed here), or by PyTorch / Keras.
"""

from __future__ import annotations

import json
from typing import NamedTuple

import numpy as np
import pytest

import layoutconv
from layoutconv.conventions import CONVENTIONS, Convention
from layoutconv import Diagnosis, diagnose

from conftest import need


def framework_output(W, b, x, convention: Convention, *, stride=1, dilation=1, groups=1, pads=(0, 0)) -> np.ndarray:
    """What a framework in ``convention`` computes: zero padding, raw kernel, raw input and output layout."""
    names = convention.layout.split()
    sizes = dict(zip(names, W.shape))
    out, per_group, taps = sizes["O"], sizes["I"], sizes["K"]
    last = convention.data_format == "channels_last"
    xc = np.swapaxes(x, 1, 2) if last else x
    batch, _, length = xc.shape
    xp = np.pad(xc.astype(np.float64), ((0, 0), (0, 0), pads))
    out_len = (length + sum(pads) - dilation * (taps - 1) - 1) // stride + 1
    y = np.zeros((batch, out, out_len))
    for f in range(out):
        group = f // (out // groups)
        for k in range(taps):
            at = {"O": f, "I": slice(None), "K": taps - 1 - k if convention.flipped else k, "1": 0}
            w = W[tuple(at[a] for a in names)].astype(np.float64)  # (I,)
            for t in range(out_len):
                y[:, f, t] += xp[:, group * per_group : (group + 1) * per_group, stride * t + dilation * k] @ w
        y[:, f, :] += 0.0 if b is None else b[f]
    return np.swapaxes(y, 1, 2) if last else y


def raw_kernel(convention: Convention, out: int, per_group: int, taps: int, rng) -> np.ndarray:
    sizes = {"O": out, "I": per_group, "K": taps, "1": 1}
    return rng.standard_normal(tuple(sizes[a] for a in convention.layout.split()))


class Pad(NamedTuple):
    rule: str
    pads: tuple[int, int]  # for kernel 4, stride 1


# kernel 4: valid (0, 0); TF/Keras/PyTorch 'same' puts the odd pad at the end; Theano 'same' at the beginning
PADS = [Pad("valid", (0, 0)), Pad("same_upper", (1, 2)), Pad("theano-same", (2, 1)), Pad("causal", (3, 0))]


@pytest.mark.parametrize("pad", PADS, ids=[p.rule for p in PADS])
@pytest.mark.parametrize("name", sorted(CONVENTIONS))
def test_recovers_the_convention_that_produced_y(name, pad, rng):
    convention = CONVENTIONS[name]
    W = raw_kernel(convention, 5, 3, 4, rng)  # O=5, I=3, K=4: no other layout fits
    b = rng.standard_normal(5)
    x = rng.standard_normal((2, 13, 3) if convention.data_format == "channels_last" else (2, 3, 13))
    y = framework_output(W, b, x, convention, pads=pad.pads).astype(np.float32)
    d = diagnose(W, b, x, y)
    assert len(d.matches) == 1, str(d)
    (match,) = d.matches
    assert name in match.conventions
    assert (match.flipped, match.pads, match.x_format) == (convention.flipped, pad.pads, convention.data_format)
    assert pad.rule in match.paddings
    assert d.conv.equivalent(convention.conv1d(W, b, padding=match.padding), 13)
    assert d.code.startswith("conv = layoutconv.conventions.CONVENTIONS[")
    assert d.near_misses and all(c.error_over_tolerance > 1 for c in d.near_misses)


def test_question_sizes_keras11_theano(rng):
    W = rng.standard_normal((10, 1, 3, 64)).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    x = rng.standard_normal((1, 123, 3)).astype(np.float32)
    # Theano's true convolution: y[b, t, n] = bias[n] + sum_k sum_f x[b, t + k, f] * W[L-1-k, 0, f, n]
    y = np.empty((1, 114, 64), np.float32)
    for t in range(114):
        y[0, t] = b + sum(x[0, t + k].astype(np.float64) @ W[9 - k, 0].astype(np.float64) for k in range(10))
    d = diagnose(W, b, x, y)
    assert [m.conventions for m in d.matches] == [("keras1.1-theano",)]
    assert d.code == "conv = layoutconv.conventions.CONVENTIONS['keras1.1-theano'].conv1d(W, b, padding='valid')"
    assert not d.ambiguous and d.note == ""
    assert "keras1.1-tensorflow" in str(d)


def test_torch_stride_dilation_found_by_widening(rng):
    need("torch")
    import torch

    W = rng.standard_normal((5, 3, 4)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    x = rng.standard_normal((2, 3, 21)).astype(np.float32)
    with torch.no_grad():
        y = torch.nn.functional.conv1d(torch.from_numpy(x), torch.from_numpy(W), torch.from_numpy(b), stride=2, dilation=3).numpy()
    d = diagnose(W, b, x, y)
    assert len(d.matches) == 1, str(d)
    m = d.matches[0]
    assert (m.conventions, m.stride, m.dilation, m.pads, m.flipped) == (("torch", "onnx"), 2, 3, (0, 0), False)
    assert "stride=2, dilation=3" in d.code


def test_torch_groups_follow_from_shapes(rng):
    need("torch")
    import torch

    W = rng.standard_normal((6, 2, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    x = rng.standard_normal((1, 4, 11)).astype(np.float32)
    with torch.no_grad():
        y = torch.nn.functional.conv1d(torch.from_numpy(x), torch.from_numpy(W), torch.from_numpy(b), padding="same", groups=2).numpy()
    d = diagnose(W, b, x, y)
    assert len(d.matches) == 1, str(d)
    assert (d.matches[0].groups, d.matches[0].pads, d.matches[0].layout) == (2, (1, 1), "O I K")
    assert "groups=2" in d.code
    with pytest.raises(layoutconv.ShapeError, match="groups=1"):
        diagnose(W, b, x, y, groups=1)


def test_keras3_same_padding(rng):
    need("keras", "tensorflow")
    import keras

    layer = keras.layers.Conv1D(5, 4, padding="same")
    x = rng.standard_normal((2, 13, 3)).astype(np.float32)
    y = np.asarray(layer(x))
    W, b = layer.get_weights()
    d = diagnose(W, b, x, y)
    assert len(d.matches) == 1, str(d)
    assert "keras" in d.matches[0].conventions and d.matches[0].pads == (1, 2)
    assert d.matches[0].padding == "same_upper"


def test_flip_symmetric_kernel_is_reported_as_ambiguous(rng):
    A = rng.standard_normal((4, 3, 5))
    W = A + A[::-1]  # K I O, symmetric under reversal along K
    b = rng.standard_normal(5)
    x = rng.standard_normal((1, 13, 3))
    y = framework_output(W, b, x, CONVENTIONS["keras"])
    d = diagnose(W, b, x, y)
    assert d.ambiguous
    assert {m.conventions for m in d.matches} == {("keras",), ("keras-theano",)}
    assert d.matches[0].conventions == ("keras",)  # the unflipped reading is preferred
    assert "flip" in d.note and "same function" in d.note and "not symmetric under reversal" in d.note
    assert "2 reproduce y" in str(d)


def test_cube_kernel_symmetric_across_layouts_is_ambiguous(rng):
    need("torch")
    import torch

    A = rng.standard_normal((5, 5, 5)).astype(np.float32)
    W = A + A.transpose(2, 1, 0)  # W[o, i, k] == W[k, i, o]: O I K and K I O readings coincide
    b = rng.standard_normal(5).astype(np.float32)
    x = rng.standard_normal((1, 5, 11)).astype(np.float32)
    with torch.no_grad():
        y = torch.nn.functional.conv1d(torch.from_numpy(x), torch.from_numpy(W), torch.from_numpy(b)).numpy()
    d = diagnose(W, b, x, y)
    assert {(m.layout, m.flipped) for m in d.matches} == {("O I K", False), ("K I O", False)}
    assert "layout" in d.note and "same function" in d.note


def test_uninformative_input_is_reported_with_what_would_help(rng):
    W = rng.standard_normal((4, 3, 5))
    b = rng.standard_normal(5)
    x = np.zeros((1, 13, 3))  # on purpose: a zero input cannot tell any reading apart
    y = framework_output(W, b, x, CONVENTIONS["keras"], pads=(1, 2))
    d = diagnose(W, b, x, y)
    assert len(d.matches) >= 4
    assert "happen to agree on this x" in d.note and "random-normal input" in d.note


def test_to_dict_is_json(rng):
    W = rng.standard_normal((4, 3, 5))
    x = rng.standard_normal((1, 13, 3))
    d = diagnose(W, None, x, framework_output(W, None, x, CONVENTIONS["keras-theano"]))
    out = json.loads(json.dumps(d.to_dict()))
    assert out["matches"][0]["conventions"] == ["keras-theano"]
    assert out["code"].endswith(".conv1d(W, None, padding='valid')")
    assert isinstance(d, Diagnosis)


@pytest.mark.parametrize(
    "kernel, bias, x, y, words",
    [
        ((4, 3, 5), (5,), (1, 13, 3), (1, 10, 7), "(1, 10, 7)"),
        ((4, 3, 5, 6), None, (1, 13, 3), (1, 10, 5), "(4, 3, 5, 6)"),
        ((4, 3, 5), (6,), (1, 13, 3), (1, 10, 5), "bias (6,)"),
        ((4, 3, 5), (5,), (1, 13, 7), (1, 10, 5), "multiple of one of"),
        ((4, 3, 5), (5,), (1, 13, 3), (1, 30, 5), "output length"),
        ((4, 3, 5), (5,), (1, 13, 3), (2, 10, 5), "same batch size"),
    ],
    ids=["y-channels", "kernel-rank", "bias", "x-channels", "lengths", "batch"],
)
def test_shape_errors_name_the_shapes(kernel, bias, x, y, words, rng):
    args = [None if s is None else rng.standard_normal(s) for s in (kernel, bias, x, y)]
    with pytest.raises(layoutconv.ShapeError) as info:
        diagnose(*args)
    assert words in str(info.value)


def test_public_name_is_the_function(rng):
    W = rng.standard_normal((4, 3, 5))
    x = rng.standard_normal((1, 13, 3))
    y = framework_output(W, None, x, CONVENTIONS["keras"])
    assert isinstance(layoutconv.diagnose(W, None, x, y), Diagnosis)


# -- fused activations ------------------------------------------------------------------------------


def keras_layer_output(flavour: str, activation: str, rng, dtype="float32"):
    """A real Keras Conv1D(5, 4, padding='same') with random-normal weights, and what it computes."""
    need(flavour, "tensorflow")
    import importlib

    keras = importlib.import_module(flavour)
    layer = keras.layers.Conv1D(5, 4, padding="same", activation=activation, dtype=dtype)
    layer.build((None, None, 3))
    layer.set_weights([rng.standard_normal(w.shape).astype(dtype) for w in layer.get_weights()])
    x = (2 * rng.standard_normal((2, 13, 3))).astype(dtype)  # pre-activations well beyond 6 in both directions
    y = np.asarray(layer(x))
    W, b = layer.get_weights()
    return W, b, x, y


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("flavour", ["keras", "tf_keras"])
def test_finds_the_activation_of_a_keras_layer(flavour, activation, rng):
    W, b, x, y = keras_layer_output(flavour, activation, rng)
    d = diagnose(W, b, x, y)
    assert len(d.matches) == 1, str(d)
    (match,) = d.matches
    assert (match.activation, match.pads, match.layout) == (activation, (1, 2), "K I O")
    assert "keras" in match.conventions
    assert d.conv.activation == activation and f"activation={activation!r}" in d.code
    assert f"  {activation}  " in str(d)
    assert d.to_dict()["matches"][0]["activation"] == activation


@pytest.mark.parametrize("y_dtype", ["float16", "float32"])
def test_activation_found_when_y_is_float16(y_dtype, rng):
    """A float16 layer's output: weights, x and y in float16, or float32 weights and x with y rounded to float16."""
    W, b, x, y = keras_layer_output("keras", "relu", rng, dtype="float16")
    assert diagnose(W, b, x, y).matches[0].activation == "relu"
    W32, b32, x32, y32 = keras_layer_output("keras", "tanh", rng, dtype="float32")
    d = diagnose(W32, b32, x32, y32.astype(y_dtype))
    assert [m.activation for m in d.matches] == ["tanh"], str(d)


def test_activation_is_applied_to_the_right_reading_only(rng):
    """relu applied to the unflipped reading: the flipped reading with relu is a near miss, not a match."""
    W = raw_kernel(CONVENTIONS["keras"], 5, 3, 4, rng)
    b = rng.standard_normal(5)
    x = rng.standard_normal((2, 13, 3))
    y = np.maximum(framework_output(W, b, x, CONVENTIONS["keras"]), 0).astype(np.float32)
    d = diagnose(W, b, x, y)
    assert [(m.conventions, m.activation) for m in d.matches] == [(("keras",), "relu")]
    assert all(c.error_over_tolerance > 10 for c in d.near_misses)


def test_no_match_says_activations_were_tried(rng):
    W = rng.standard_normal((4, 3, 5))
    x = rng.standard_normal((1, 13, 3))
    y = rng.standard_normal((1, 10, 5))  # no layer made this
    text = str(diagnose(W, None, x, y))
    assert "No reading reproduces y with any activation tried (linear, relu, relu6, leaky_relu, sigmoid, tanh" in text
    assert "each tried with 16 activations" in text


def test_activations_a_positive_output_cannot_tell_apart_are_reported(rng):
    """All outputs positive: linear, relu and others agree; linear is preferred and the note says what would tell."""
    W = rng.standard_normal((4, 3, 5))
    b = np.full(5, 50.0)
    x = rng.standard_normal((1, 13, 3))
    y = framework_output(W, b, x, CONVENTIONS["keras"])
    d = diagnose(W, b, x, y)
    names = [m.activation for m in d.matches]
    assert names[0] == "linear" and "relu" in names and "sigmoid" not in names
    assert "activation" in d.note and "happen to agree on this x" in d.note and "30 times larger" in d.note
    assert "(30 * np.random.default_rng(0).standard_normal(x.shape) differs between them)" in d.note
