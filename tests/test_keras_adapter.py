"""Keras 3 (TensorFlow backend) and tf_keras adapters: bit-exact round trips and forward equivalence.

Every test runs for both flavours.  Forward passes are compared with
:func:`layoutconv.verify.compare` (the project tolerance, see
:mod:`layoutconv.verify`), except where a native Keras layer is the oracle for
the package's reference pass: there the tolerance is that of
``torch.testing.assert_close`` for float32 scaled by ``sqrt(fan_in)``
(``rtol = 1.3e-6 * sqrt(fan_in)``, ``atol = 1e-5 * sqrt(fan_in)``).
"""

from __future__ import annotations

import importlib
import math
import os
from typing import Any

import numpy as np
import pytest

from conftest import need
from layoutconv import Conv1D, ConfigError, ShapeError, UnsupportedError, layouts, reference
from layoutconv import frameworks
from layoutconv.verify import compare

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

FLAVOURS = ["keras", "tf_keras"]
DATA_FORMATS = ["channels_last", "channels_first"]


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> tuple[Any, Any]:
    """(adapter module, keras module) for each flavour; skips when it is not installed."""
    name = request.param
    need(name, "tensorflow")
    keras = importlib.import_module(name)
    if name == "keras" and keras.backend.backend() != "tensorflow":
        pytest.skip(f"these tests use the TensorFlow backend; KERAS_BACKEND is {keras.backend.backend()!r}")
    return frameworks.adapter(name), keras


# (out_channels, in_channels, kernel_size, length, hyperparameters, bias)
CASES = [
    pytest.param(5, 3, 5, 13, dict(padding="valid"), True, id="valid-K=O=5"),
    pytest.param(3, 3, 4, 13, dict(padding="same_upper", stride=2), True, id="same-s2-evenK4-I=O"),
    pytest.param(4, 2, 2, 13, dict(padding="same_upper", stride=3), True, id="same-s3-evenK2"),
    pytest.param(4, 2, 6, 14, dict(padding="same_upper", stride=3), False, id="same-s3-evenK6-L14"),
    pytest.param(3, 3, 3, 11, dict(padding="causal", dilation=2), False, id="causal-d2-K=I=O-nobias"),
    pytest.param(5, 3, 4, 11, dict(padding="causal", stride=2), True, id="causal-s2-evenK"),
    pytest.param(4, 3, 3, 13, dict(padding=(2, 1), stride=2), True, id="pads2-1-s2"),
    pytest.param(4, 4, 4, 9, dict(padding=(0, 3), groups=2), True, id="pads0-3-g2-K=I=O"),
    pytest.param(2, 5, 3, 9, dict(padding=(1, 1)), True, id="pads1-1-is-same"),
    pytest.param(2, 4, 4, 9, dict(padding="same_lower"), False, id="same_lower-K=I-nobias"),
    pytest.param(4, 2, 3, 11, dict(padding="same_upper", dilation=2, groups=2), True, id="same-d2-g2"),
    pytest.param(6, 4, 2, 13, dict(padding="valid", stride=3, groups=2), False, id="valid-s3-g2-nobias"),
    pytest.param(4, 4, 5, 11, dict(padding="same_upper", groups=4), True, id="same-depthwise-g4"),
]


def make_conv(rng, out_channels, in_channels, kernel_size, hyper, bias, dtype="float32") -> Conv1D:
    groups = hyper.get("groups", 1)
    kernel = rng.standard_normal((out_channels, in_channels // groups, kernel_size)).astype(dtype)
    b = rng.standard_normal(out_channels).astype(dtype) if bias else None
    return Conv1D(kernel, b, **hyper)


def make_input(rng, conv: Conv1D, length: int) -> np.ndarray:
    return rng.standard_normal((2, conv.in_channels, length)).astype(conv.dtype)


@pytest.mark.parametrize("data_format", DATA_FORMATS)
@pytest.mark.parametrize("out_channels, in_channels, kernel_size, length, hyper, bias", CASES)
def test_round_trip_and_forward(flavour, data_format, rng, out_channels, in_channels, kernel_size, length, hyper, bias):
    adapter, _ = flavour
    conv = make_conv(rng, out_channels, in_channels, kernel_size, hyper, bias)
    native = adapter.to_native(conv, data_format=data_format)
    back = adapter.from_native(native)
    assert back.same_weights(conv)
    assert back.equivalent(conv, length), (back, conv)
    x = make_input(rng, conv, length)
    result = compare(conv, x, adapter.run(native, x), adapter.NAME)
    assert result.passed, result


@pytest.mark.parametrize("data_format", DATA_FORMATS)
def test_native_layer_takes_its_own_data_format(flavour, data_format, rng):
    """What to_native returns is called on (N, L, C) or (N, C, L) as its data_format says."""
    adapter, keras = flavour
    conv = make_conv(rng, 3, 2, 4, dict(padding=(1, 2)), True)
    native = adapter.to_native(conv, data_format=data_format)
    x = make_input(rng, conv, 9)
    if data_format == "channels_last":
        y = np.asarray(native(x.transpose(0, 2, 1))).transpose(0, 2, 1)
    else:
        import tensorflow as tf  # channels_first needs XLA on CPU (see _keras_common)

        y = np.asarray(tf.function(native, jit_compile=True)(x))
    assert y.shape == (2, 3, conv.output_length(9))
    assert compare(conv, x, y, adapter.NAME).passed


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
@pytest.mark.parametrize("data_format", DATA_FORMATS)
@pytest.mark.parametrize(
    "out_channels, in_channels, kernel_size, length, hyper, bias",
    [CASES[1], CASES[7]],
)
def test_dtypes_round_trip_and_forward(
    flavour, dtype, data_format, rng, out_channels, in_channels, kernel_size, length, hyper, bias
):
    if dtype == "bfloat16":
        need("ml_dtypes")
    adapter, _ = flavour
    conv = make_conv(rng, out_channels, in_channels, kernel_size, hyper, bias, dtype=dtype)
    native = adapter.to_native(conv, data_format=data_format)
    back = adapter.from_native(native)
    assert back.dtype == np.dtype(dtype)
    assert back.same_weights(conv) and back.equivalent(conv, length)
    x = make_input(rng, conv, length)
    y = adapter.run(native, x)
    assert y.dtype == np.dtype(dtype)
    result = compare(conv, x, y, adapter.NAME)
    assert result.passed, result


def test_same_lower_with_stride_needs_length(flavour, rng):
    adapter, _ = flavour
    conv = make_conv(rng, 3, 2, 4, dict(padding="same_lower", stride=2), True)
    with pytest.raises(UnsupportedError, match="length="):
        adapter.to_native(conv)
    for length in (11, 12):  # odd and even lengths give different pads
        native = adapter.to_native(conv, length=length)
        assert conv.equivalent(adapter.from_native(native), length)
        x = make_input(rng, conv, length)
        assert compare(conv, x, adapter.run(native, x), adapter.NAME).passed


def test_channels_first_bias_when_output_length_equals_filters(flavour, rng):
    """Keras 3 on TensorFlow adds the bias along the length axis here; run refuses rather than report a false failure."""
    adapter, _ = flavour
    conv = make_conv(rng, 4, 2, 2, dict(padding="same_upper", stride=3), True)
    native = adapter.to_native(conv, data_format="channels_first")
    x = make_input(rng, conv, 11)  # output length 4 == filters
    y_native = call_keras(native, x, "channels_first")
    expected = reference.conv1d(conv, x)
    b = conv.bias.astype(np.float64)
    if adapter.NAME == "tf_keras":
        assert compare(conv, x, adapter.run(native, x), adapter.NAME).passed
        assert compare(conv, x, y_native, adapter.NAME).passed
        return
    # Keras 3.15: exactly the bias of filter t added instead of that of filter f.
    misplaced = expected - b[None, :, None] + b[None, None, :]
    np.testing.assert_allclose(
        y_native, misplaced, rtol=1e-5, atol=1e-5, err_msg="Keras fixed its bias_add? Update _keras_common."
    )
    with pytest.raises(UnsupportedError, match="bias along the length axis"):
        adapter.run(native, x)
    x_ok = make_input(rng, conv, 14)  # output length 5
    assert compare(conv, x_ok, adapter.run(native, x_ok), adapter.NAME).passed


# (filters, kernel_size, in_channels, length, Keras keyword arguments)
KERAS_LAYERS = [
    pytest.param(5, 5, 3, 13, dict(padding="valid"), id="valid-K=O"),
    pytest.param(3, 4, 3, 13, dict(padding="same", strides=2), id="same-s2-evenK-I=O"),
    pytest.param(4, 6, 2, 13, dict(padding="same", strides=3), id="same-s3-evenK6"),
    pytest.param(3, 3, 3, 11, dict(padding="causal", dilation_rate=2, use_bias=False), id="causal-d2-nobias"),
    pytest.param(4, 4, 4, 9, dict(padding="same", groups=2), id="same-g2-K=I=O"),
    pytest.param(2, 5, 5, 12, dict(padding="causal", strides=2), id="causal-s2-K=I"),
]


def call_keras(layer: Any, x_ncl: np.ndarray, data_format: str) -> np.ndarray:
    """The layer's own output for an (N, C, L) input, returned as (N, O, L_out)."""
    if data_format == "channels_last":
        return np.asarray(layer(x_ncl.transpose(0, 2, 1))).transpose(0, 2, 1)
    import tensorflow as tf

    return np.asarray(tf.function(layer, jit_compile=True)(x_ncl))


@pytest.mark.parametrize("data_format", DATA_FORMATS)
@pytest.mark.parametrize("filters, kernel_size, in_channels, length, options", KERAS_LAYERS)
def test_from_native_matches_keras(
    flavour, data_format, rng, filters, kernel_size, in_channels, length, options
):
    adapter, keras = flavour
    layer = keras.layers.Conv1D(filters, kernel_size, data_format=data_format, **options)
    layer.build((None, None, in_channels) if data_format == "channels_last" else (None, in_channels, None))
    layer.set_weights([rng.standard_normal(w.shape).astype("float32") for w in layer.get_weights()])
    conv = adapter.from_native(layer)
    assert conv.kernel.tobytes() == layouts.to_canonical(layer.get_weights()[0], "K I O").tobytes()
    x = rng.standard_normal((2, in_channels, length)).astype("float32")
    expected = call_keras(layer, x, data_format)
    scale = math.sqrt(conv.fan_in)
    np.testing.assert_allclose(reference.conv1d(conv, x), expected, rtol=1.3e-6 * scale, atol=1e-5 * scale)


WRONG_LAYOUTS = ["O I K", "I K O", "K O I", "O K I", "I O K"]


@pytest.mark.parametrize("wrong", WRONG_LAYOUTS)
def test_wrong_kernel_layout_fails_compare(flavour, rng, wrong):
    """A (5, 5, 5) Keras kernel fits every layout; only "K I O" reproduces Keras."""
    adapter, keras = flavour
    layer = keras.layers.Conv1D(5, 5, padding="same")
    layer.build((None, None, 5))
    raw, b = (rng.standard_normal(w.shape).astype("float32") for w in layer.get_weights())
    layer.set_weights([raw, b])
    x = rng.standard_normal((2, 5, 11)).astype("float32")
    y = adapter.run(layer, x)
    right = Conv1D(raw, b, padding="same_upper", layout="K I O")
    assert compare(right, x, y, adapter.NAME).passed
    misread = Conv1D(raw, b, padding="same_upper", layout=wrong)
    result = compare(misread, x, y, adapter.NAME)
    assert result.status == "fail" and result.worst_error_over_tolerance > 100, result


@pytest.mark.parametrize(
    "hyper, match",
    [
        pytest.param(dict(padding=(1, 1), padding_mode="reflect"), "padding_mode='reflect'", id="reflect"),
        pytest.param(dict(padding="causal", padding_mode="circular"), "padding_mode='circular'", id="circular"),
        pytest.param(dict(stride=2, dilation=2), "dilation_rate", id="stride-and-dilation"),
    ],
)
def test_inexpressible_conv_is_unsupported(flavour, rng, hyper, match):
    adapter, _ = flavour
    conv = make_conv(rng, 3, 2, 3, hyper, True)
    with pytest.raises(UnsupportedError, match=match):
        adapter.to_native(conv)


def test_user_sequential_with_zero_padding_is_read(flavour, rng):
    """ZeroPadding1D in front of a causal Conv1D: the pads add up to one explicit pair."""
    adapter, keras = flavour
    layer = keras.layers.Conv1D(4, 3, dilation_rate=2, padding="causal")
    model = keras.Sequential([keras.Input((None, 3)), keras.layers.ZeroPadding1D((1, 2)), layer])
    layer.set_weights([rng.standard_normal(w.shape).astype("float32") for w in layer.get_weights()])
    conv = adapter.from_native(model)
    assert conv.padding == ((1 + 4, 2),)
    x = rng.standard_normal((2, 3, 11)).astype("float32")
    assert compare(conv, x, adapter.run(model, x), adapter.NAME).passed


def test_sequential_with_other_layers_is_refused(flavour):
    adapter, keras = flavour
    model = keras.Sequential([keras.Input((None, 3)), keras.layers.Dense(3), keras.layers.Conv1D(4, 3)])
    with pytest.raises(ConfigError, match="Dense.*is not part of a padded Conv1D"):
        adapter.from_native(model)


def test_unbuilt_layer_is_refused(flavour):
    adapter, keras = flavour
    with pytest.raises(ConfigError, match="not built"):
        adapter.from_native(keras.layers.Conv1D(4, 3))


@pytest.mark.parametrize(
    "make, name",
    [
        pytest.param(lambda k: k.layers.Dense(3), "Dense", id="Dense"),
        pytest.param(lambda k: k.layers.MaxPooling2D(2), "MaxPooling2D", id="MaxPooling2D"),  # Conv2D etc.: test_keras_nd
        pytest.param(lambda k: k.layers.Permute((2, 1)), "Permute", id="Permute"),
        pytest.param(lambda k: np.zeros((3, 2, 4), "float32"), "ndarray", id="ndarray"),
    ],
)
def test_wrong_type_is_refused(flavour, make, name):
    adapter, keras = flavour
    with pytest.raises(ConfigError, match=f"{name}.*Expected a built {adapter.NAME} convolution layer"):
        adapter.from_native(make(keras))


def _softmax(keras):
    return "softmax"


def _custom(keras):
    return lambda x: x * 2.0


def _leaky_slope_01(keras):
    import functools

    if keras.__name__ == "keras":
        return functools.partial(keras.activations.leaky_relu, negative_slope=0.1)
    import tensorflow as tf

    return functools.partial(tf.nn.leaky_relu, alpha=0.1)  # what tf_keras's "leaky_relu" resolves to


@pytest.mark.parametrize(
    "make, words",
    [
        pytest.param(_softmax, "softmax mixes the channels", id="softmax"),
        pytest.param(_custom, "not one of the named activations", id="custom-function"),
        pytest.param(_leaky_slope_01, r"non-default arguments \{'(negative_slope|alpha)': 0.1\}", id="leaky-slope-0.1"),
    ],
)
def test_unrepresentable_activation_is_refused(flavour, make, words):
    adapter, keras = flavour
    layer = keras.layers.Conv1D(4, 3, activation=make(keras))
    layer.build((None, None, 2))
    with pytest.raises(UnsupportedError, match=words) as info:
        adapter.from_native(layer)
    assert f"layer {layer.name!r}" in str(info.value) and "activations.linear" in str(info.value)


def test_activation_given_with_its_default_arguments_is_read(flavour):
    import functools

    adapter, keras = flavour
    layer = keras.layers.Conv1D(4, 3, activation=functools.partial(keras.activations.elu, alpha=1.0))
    layer.build((None, None, 2))
    assert adapter.from_native(layer).activation == "elu"


@pytest.mark.parametrize("data_format", DATA_FORMATS)
def test_activation_survives_the_zero_padding_model(flavour, data_format, rng):
    """Explicit pads need a ZeroPadding1D in front; the activation stays on the Conv1D behind it."""
    adapter, _ = flavour
    conv = make_conv(rng, 5, 3, 5, dict(padding=(3, 1)), True).replace(activation="tanh")
    native = adapter.to_native(conv, data_format=data_format)
    assert type(native).__name__ == "Sequential" and parse_conv_layer(adapter, native).activation.__name__ == "tanh"
    back = adapter.from_native(native)
    assert back == conv and back.same_weights(conv)
    x = make_input(rng, conv, 13)
    assert compare(conv, x, adapter.run(native, x), adapter.NAME).passed


def parse_conv_layer(adapter, native):
    from layoutconv.adapters import _keras_common

    return _keras_common.parse(adapter._FLAVOUR, native).conv_layer


@pytest.mark.parametrize("activation", ["hard_silu", "hard_sigmoid_keras3"])
def test_activation_a_flavour_lacks_is_refused_naming_who_has_it(flavour, rng, activation):
    adapter, _ = flavour
    conv = make_conv(rng, 3, 2, 3, dict(padding="valid"), True).replace(activation=activation)
    if adapter.NAME == "keras":
        assert adapter.from_native(adapter.to_native(conv)) == conv
        return
    words = f"tf_keras has no activation computing {activation}.*Convert to keras, torch, onnx instead"
    with pytest.raises(UnsupportedError, match=words):
        adapter.to_native(conv)


def test_run_checks_input_shape(flavour, rng):
    adapter, _ = flavour
    native = adapter.to_native(make_conv(rng, 3, 2, 3, dict(padding="valid"), True))
    with pytest.raises(ShapeError, match=r"shape \(N, 2, L\)"):
        adapter.run(native, rng.standard_normal((2, 9, 3)).astype("float32"))  # channels-last by mistake


def test_verify_reports_keras_results(flavour, rng):
    import layoutconv

    adapter, _ = flavour
    good = make_conv(rng, 4, 3, 4, dict(padding="same_upper", stride=2), True)
    report = layoutconv.verify(good, frameworks=[adapter.NAME], keras_data_format="channels_first")
    assert report.passed and report[adapter.NAME].status == "pass", str(report)
    bad = good.replace(padding="same_lower")
    assert layoutconv.verify(bad, frameworks=[adapter.NAME])[adapter.NAME].status == "unsupported"
