"""Keras 3 and tf_keras at every rank and kind (TensorFlow backend), against the frameworks themselves.

Keras is the independent oracle: a layer built by Keras with random weights is
read with ``from_native``, and Keras's own output must equal
``reference.forward(record, x)`` elementwise within ``tolerance.tolerance``.
The record then goes back through ``to_native`` (in the other data format):
weights bit-exact, the record equivalent, and ``run`` within tolerance again.
Kernels are non-square (3x5), strides differ per axis, sizes are odd, and
``kernel_size == filters`` somewhere, so an axis swap cannot pass unseen.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import numpy as np
import pytest

from conftest import need
from layoutconv import Chain, ConfigError, Conv, ConvTranspose, ShapeError, UnsupportedError, frameworks, layouts, reference
from layoutconv.tolerance import tolerance

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

OTHER = {"channels_last": "channels_first", "channels_first": "channels_last"}
DATA_FORMATS = ["channels_last", "channels_first"]


@pytest.fixture(scope="module", params=["keras", "tf_keras"])
def flavour(request: pytest.FixtureRequest) -> tuple[Any, Any]:
    """(adapter module, keras module) for each flavour."""
    need(request.param, "tensorflow")
    keras = importlib.import_module(request.param)
    if request.param == "keras" and keras.backend.backend() != "tensorflow":
        pytest.skip(f"these tests use the TensorFlow backend; KERAS_BACKEND is {keras.backend.backend()!r}")
    return frameworks.adapter(request.param), keras


def within(record: Any, x: np.ndarray, y: Any) -> None:
    """``y`` equals the reference elementwise within the project tolerance."""
    expected = reference.forward(record, x)
    y = np.asarray(y)
    assert y.shape == expected.shape, (y.shape, expected.shape)
    tol, _, _ = tolerance(record, x, expected)
    ratio = np.abs(y.astype(np.float64) - expected) / tol
    assert ratio.max() <= 1.0, f"worst error / tolerance {ratio.max():.3g} at {np.unravel_index(ratio.argmax(), ratio.shape)}"


def make_input(rng: np.random.Generator, record: Any, sizes: tuple[int, ...], dtype: str = "float32") -> np.ndarray:
    """A random ``(2, C, *sizes)`` input.  The last size grows (by 2, staying odd) until the last output size differs
    from out_channels: there Keras 3 misplaces a channels_first bias (pinned by test_misplaced_bias_at_every_kind)."""
    sizes = list(sizes)
    while last_output_size(record, tuple(sizes)) == record.out_channels:
        sizes[-1] += 2
    return rng.standard_normal((2, record.in_channels, *sizes)).astype(dtype)


def last_output_size(record: Any, sizes: tuple[int, ...]) -> int | None:
    try:
        return reference.forward(record, np.zeros((1, record.in_channels, *sizes))).shape[-1]
    except ShapeError:  # smaller than the receptive field
        return None


def keras_call(layer: Any, x: np.ndarray, data_format: str, xla: bool = False) -> np.ndarray:
    """The layer's own output for a channels-first input, returned channels first.

    TensorFlow on CPU runs channels_first layers, dilated transposed ones and depthwise ones with
    unequal strides only under XLA.
    """
    import tensorflow as tf

    if data_format == "channels_last":
        x = np.moveaxis(x, 1, -1)
    call = tf.function(layer, jit_compile=True) if xla or data_format == "channels_first" else layer
    y = np.asarray(call(x))
    return np.moveaxis(y, -1, 1) if data_format == "channels_last" else y


def keras_layer(keras: Any, name: str, options: dict, channels: int, rank: int, data_format: str, rng) -> Any:
    """A built Keras layer with random float32 weights."""
    layer = getattr(keras.layers, name)(**options, data_format=data_format)
    spatial = (None,) * rank
    layer.build((None,) + (spatial + (channels,) if data_format == "channels_last" else (channels,) + spatial))
    layer.set_weights([rng.standard_normal(w.shape).astype("float32") for w in layer.get_weights()])
    return layer


def weights(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype("float32")


# -- Keras as the oracle: every kind, every rank, both data formats ------------------------------------
# id: (Keras class, constructor arguments, in_channels, input spatial size, record kind)
NATIVE = {
    "conv2d-3x5-s21-same-K=O": ("Conv2D", dict(filters=5, kernel_size=(3, 5), strides=(2, 1), padding="same"), 3, (9, 11), Conv),
    "conv2d-2x3-d21-g2-nobias": (
        "Conv2D", dict(filters=6, kernel_size=(2, 3), dilation_rate=(2, 1), groups=2, use_bias=False), 4, (7, 9), Conv,
    ),
    "conv3d-2x3x1-s121-same-relu": (
        "Conv3D", dict(filters=3, kernel_size=(2, 3, 1), strides=(1, 2, 1), padding="same", activation="relu"), 2, (5, 7, 3), Conv,
    ),
    "t1d-k4-s3-same": ("Conv1DTranspose", dict(filters=2, kernel_size=4, strides=3, padding="same"), 3, (7,), ConvTranspose),
    "t1d-k2-s3-valid-k<s": ("Conv1DTranspose", dict(filters=4, kernel_size=2, strides=3), 2, (5,), ConvTranspose),
    "t2d-3x5-s21-valid-op10": (
        "Conv2DTranspose", dict(filters=3, kernel_size=(3, 5), strides=(2, 1), output_padding=(1, 0)), 2, (5, 4), ConvTranspose,
    ),
    "t2d-2x3-s2-same-tanh": (
        "Conv2DTranspose", dict(filters=2, kernel_size=(2, 3), strides=2, padding="same", activation="tanh"), 3, (4, 5), ConvTranspose,
    ),
    "t2d-3x2-d2-same": ("Conv2DTranspose", dict(filters=3, kernel_size=(3, 2), dilation_rate=2, padding="same"), 2, (5, 6), ConvTranspose),
    "t3d-2x1x3-s211-same-op100": (
        "Conv3DTranspose", dict(filters=2, kernel_size=(2, 1, 3), strides=(2, 1, 1), padding="same", output_padding=(1, 0, 0)),
        3, (3, 4, 5), ConvTranspose,
    ),
    "dw1d-k3-M2-s2-same": ("DepthwiseConv1D", dict(kernel_size=3, depth_multiplier=2, strides=2, padding="same"), 3, (11,), Conv),
    "dw2d-3x2-M3-d12-nobias": (
        "DepthwiseConv2D", dict(kernel_size=(3, 2), depth_multiplier=3, dilation_rate=(1, 2), use_bias=False), 2, (7, 9), Conv,
    ),
    "sep1d-k5-M2-same-relu": (
        "SeparableConv1D", dict(filters=4, kernel_size=5, depth_multiplier=2, padding="same", activation="relu"), 3, (13,), Chain,
    ),
    "sep2d-3x5-s12-tanh-nobias": (
        "SeparableConv2D", dict(filters=3, kernel_size=(3, 5), strides=(1, 2), activation="tanh", use_bias=False), 4, (7, 11), Chain,
    ),
}


@pytest.mark.parametrize("data_format", DATA_FORMATS)
@pytest.mark.parametrize("case", list(NATIVE))
def test_keras_layer_is_the_oracle_and_comes_back(flavour, data_format, case, rng):
    adapter, keras = flavour
    name, options, channels, sizes, kind = NATIVE[case]
    layer = keras_layer(keras, name, options, channels, len(sizes), data_format, rng)
    record = adapter.from_native(layer)
    assert isinstance(record, kind) and record.spatial_rank == len(sizes) and record.in_channels == channels
    x = make_input(rng, record, sizes)
    xla = (kind is ConvTranspose and max(layer.dilation_rate) > 1) or (kind is not ConvTranspose and len(set(layer.strides)) > 1
                                                                        and name.startswith(("Depthwise", "Separable")))
    within(record, x, keras_call(layer, x, data_format, xla=xla))

    native = adapter.to_native(record, data_format=OTHER[data_format])
    assert type(native).__name__ == name  # Keras spells it: the same class, no padding layers
    back = adapter.from_native(native)
    assert back.same_weights(record) and back.equivalent(record, x.shape[2:]), (back, record)
    within(record, x, adapter.run(native, x))


def test_depthwise_output_channel_is_c_times_m_plus_m(flavour, rng):
    """DepthwiseConv2D's (H, W, C, M) kernel feeds output channel c * M + m; reading it as m * C + c fails."""
    adapter, keras = flavour
    layer = keras_layer(keras, "DepthwiseConv2D", dict(kernel_size=(3, 5), depth_multiplier=2), 3, 2, "channels_last", rng)
    raw, bias = layer.get_weights()
    right = adapter.from_native(layer)
    assert right.groups == 3 and right.kernel.shape == (6, 1, 3, 5)
    assert right.kernel[2 * 2 + 1, 0, 1, 4] == raw[1, 4, 2, 1]  # c = 2, m = 1
    x = make_input(rng, right, (7, 9))
    y = keras_call(layer, x, "channels_last")
    within(right, x, y)
    misread = Conv(raw, bias, groups=3, layout="H W M G")  # O = (M G): output channel m * C + c
    error = np.abs(reference.forward(misread, x) - y).max()
    assert error > 100 * tolerance(right, x)[0].max()


# -- records Keras cannot spell alone: padding and cropping layers, chains --------------------------------
# id: (record maker, input spatial size, data formats, Keras layer classes expected around the convolutions)
RECORDS = {
    "conv2d-asym-pads-s12": (
        lambda rng: Conv(weights(rng, 4, 3, 3, 5), weights(rng, 4), stride=(1, 2), padding=((2, 0), (1, 3))),
        (7, 9), ["channels_first"], ["ZeroPadding2D", "Conv2D"],
    ),
    "conv2d-causal": (
        lambda rng: Conv(weights(rng, 5, 2, 2, 3), weights(rng, 5), padding="causal", activation="elu"),
        (6, 7), ["channels_last"], ["ZeroPadding2D", "Conv2D"],
    ),
    "conv3d-same_lower-evenK": (
        lambda rng: Conv(weights(rng, 3, 2, 2, 2, 3), weights(rng, 3), padding="same_lower"),
        (5, 4, 7), ["channels_first"], ["ZeroPadding3D", "Conv3D"],
    ),
    "depthwise1d-causal-d2": (
        lambda rng: Conv(weights(rng, 4, 1, 3), weights(rng, 4), groups=2, dilation=2, padding="causal"),
        (11,), DATA_FORMATS, ["ZeroPadding1D", "DepthwiseConv1D"],
    ),
    "depthwise2d-explicit": (
        lambda rng: Conv(weights(rng, 6, 1, 3, 3), None, groups=3, padding=((1, 0), (0, 2))),
        (7, 6), ["channels_last"], ["ZeroPadding2D", "DepthwiseConv2D"],
    ),
    "t1d-asym-crops": (
        lambda rng: ConvTranspose(weights(rng, 3, 2, 4), weights(rng, 2), stride=2, padding=((2, 1),), output_padding=1),
        (7,), DATA_FORMATS, ["Conv1DTranspose", "Cropping1D"],
    ),
    "t2d-same_lower-s21": (
        lambda rng: ConvTranspose(weights(rng, 2, 3, 3, 4), weights(rng, 3), stride=(2, 1), padding="same_lower"),
        (5, 6), ["channels_first"], ["Conv2DTranspose", "Cropping2D"],
    ),
    "t3d-explicit": (
        lambda rng: ConvTranspose(weights(rng, 2, 2, 2, 1, 3), None, stride=(1, 2, 1), padding=((1, 1), (0, 1), (1, 0))),
        (3, 4, 5), ["channels_last"], ["Conv3DTranspose", "Cropping3D"],
    ),
    "separable2d-pads": (
        lambda rng: Chain((Conv(weights(rng, 6, 1, 3, 3), groups=3, padding=((0, 2), (1, 1))),
                           Conv(weights(rng, 4, 6, 1, 1), weights(rng, 4), activation="relu"))),
        (7, 9), ["channels_first"], ["ZeroPadding2D", "SeparableConv2D"],
    ),
    "separable1d-causal": (
        lambda rng: Chain((Conv(weights(rng, 4, 1, 3), groups=4, padding="causal"), Conv(weights(rng, 3, 4, 1), weights(rng, 3)))),
        (9,), ["channels_last"], {"keras": ["ZeroPadding1D", "SeparableConv1D"], "tf_keras": ["SeparableConv1D"]},
    ),
    "chain3d-depthwise-pointwise": (
        lambda rng: Chain((Conv(weights(rng, 6, 1, 2, 1, 3), groups=3), Conv(weights(rng, 2, 6, 1, 1, 1), weights(rng, 2)))),
        (4, 3, 5), ["channels_first"], ["Conv3D", "Conv3D"],
    ),
    "chain2d-conv-then-transpose": (
        lambda rng: Chain((Conv(weights(rng, 4, 3, 3, 3), weights(rng, 4), padding=((1, 0), (0, 1))),
                           ConvTranspose(weights(rng, 4, 2, 2, 3), weights(rng, 2), stride=2, padding=((0, 1), (1, 0))))),
        (5, 7), ["channels_last"], ["ZeroPadding2D", "Conv2D", "Conv2DTranspose", "Cropping2D"],
    ),
}
RECORD_CASES = [pytest.param(case, df, id=f"{case}-{df}") for case, (_, _, dfs, _) in RECORDS.items() for df in dfs]


@pytest.mark.parametrize("case, data_format", RECORD_CASES)
def test_record_round_trip_through_padding_layers(flavour, case, data_format, rng):
    adapter, keras = flavour
    make, sizes, _, structure = RECORDS[case]
    record = make(rng)
    native = adapter.to_native(record, data_format=data_format)
    kept = [type(layer).__name__ for layer in getattr(native, "layers", [native]) if type(layer).__name__ != "Permute"]
    assert kept == (structure[adapter.NAME] if isinstance(structure, dict) else structure)
    back = adapter.from_native(native)
    assert back.same_weights(record) and back.equivalent(record, sizes), (back, record)
    x = make_input(rng, record, sizes)
    within(record, x, adapter.run(native, x))


def test_same_lower_with_stride_needs_the_input_size(flavour, rng):
    adapter, _ = flavour
    conv = Conv(weights(rng, 3, 2, 4, 3), weights(rng, 3), stride=(2, 1), padding="same_lower")
    with pytest.raises(UnsupportedError, match=r"length=.*one size per spatial axis.*PyTorch"):
        adapter.to_native(conv)
    for sizes in ((9, 7), (10, 7)):  # odd and even heights give different pads
        native = adapter.to_native(conv, length=sizes)
        assert conv.equivalent(adapter.from_native(native), sizes)
        x = make_input(rng, conv, sizes)
        within(conv, x, adapter.run(native, x))


# -- verify runs Keras for every record kind ---------------------------------------------------------------
VERIFY = {
    "conv2d-3x5-s21-elu": (lambda rng: Conv(weights(rng, 5, 3, 3, 5), weights(rng, 5), stride=(2, 1), padding="same_upper",
                                            activation="elu"), "channels_first"),
    "depthwise2d": (lambda rng: Conv(weights(rng, 6, 1, 3, 5), weights(rng, 6), groups=3, padding="same_upper"), "channels_last"),
    "transpose3d": (lambda rng: ConvTranspose(weights(rng, 2, 3, 2, 3, 1), weights(rng, 3), stride=(2, 1, 1), padding="same_upper"),
                    "channels_first"),
    "separable1d": (lambda rng: Chain((Conv(weights(rng, 6, 1, 5), groups=3, stride=2, padding="same_upper"),
                                       Conv(weights(rng, 4, 6, 1), weights(rng, 4), activation="sigmoid"))), "channels_last"),
}


@pytest.mark.parametrize("case", list(VERIFY))
def test_verify_runs_keras_tf_keras_and_torch(case, rng):
    need("keras", "tf_keras", "tensorflow", "torch")
    from layoutconv import registry, verify

    make, data_format = VERIFY[case]
    record = make(rng)
    report = verify(record, frameworks=["keras", "tf_keras", "torch"], keras_data_format=data_format)
    assert report.passed and all(r.status == "pass" for r in report.results), str(report)
    assert {("Conv", "keras"), ("ConvTranspose", "tf_keras"), ("Chain", "keras")} <= set(registry.registered())


# -- what Keras cannot express: a typed error that says why and who can ---------------------------------
# id: (record maker, {flavour: words of the refusal, or None when the flavour writes it})
REFUSALS = {
    "conv2d-stride-and-dilation": (
        lambda rng: Conv(weights(rng, 3, 2, 3, 3), stride=(2, 1), dilation=(1, 2)),
        {"keras": "Conv2D refuses strides > 1 together with dilation_rate", "tf_keras": "Conv2D refuses strides > 1"},
    ),
    "depthwise2d-stride-and-dilation": (
        lambda rng: Conv(weights(rng, 4, 1, 3, 3), weights(rng, 4), groups=4, stride=(2, 1), dilation=(1, 2)),
        {"keras": None, "tf_keras": "DepthwiseConv2D refuses strides > 1 together with dilation_rate"},
    ),
    "separable2d-stride-and-dilation": (
        lambda rng: Chain((Conv(weights(rng, 2, 1, 3, 3), groups=2, stride=2, dilation=2), Conv(weights(rng, 3, 2, 1, 1)))),
        {"keras": None, "tf_keras": "SeparableConv2D refuses strides > 1"},
    ),
    "conv3d-reflect": (
        lambda rng: Conv(weights(rng, 3, 2, 3, 3, 3), padding=1, padding_mode="reflect"),
        {"keras": "padding_mode='reflect'", "tf_keras": "padding_mode='reflect'"},
    ),
    "transpose-groups": (
        lambda rng: ConvTranspose(weights(rng, 4, 3, 3, 3), groups=2),
        {"keras": "Conv2DTranspose has no groups", "tf_keras": "Conv2DTranspose has no groups"},
    ),
    "transpose-output_shape": (
        lambda rng: ConvTranspose(weights(rng, 2, 3, 3, 3), stride=2, padding="same_upper", output_shape=(9, 8)),
        {"keras": "no output_shape", "tf_keras": "no output_shape"},
    ),
    "transpose-stride-and-dilation": (
        lambda rng: ConvTranspose(weights(rng, 2, 3, 3), stride=2, dilation=2),
        {"keras": "Conv1DTranspose refuses strides > 1", "tf_keras": "Conv1DTranspose refuses strides > 1"},
    ),
    "transpose-output_padding-over-stride": (
        lambda rng: ConvTranspose(weights(rng, 2, 3, 2), dilation=2, output_padding=1),
        {"keras": "output_padding smaller than the stride", "tf_keras": "output_padding smaller than the stride"},
    ),
    "transpose2d-unequal-dilation": (
        lambda rng: ConvTranspose(weights(rng, 2, 3, 3, 3), weights(rng, 3), dilation=(2, 1)),
        {"keras": None, "tf_keras": "Conv2DTranspose raises when called with unequal dilations"},
    ),
    "transpose3d-dilation": (
        lambda rng: ConvTranspose(weights(rng, 2, 3, 2, 2, 2), weights(rng, 3), dilation=(1, 2, 1), padding="same_upper"),
        {"keras": None, "tf_keras": "Conv3DTranspose ignores dilation_rate"},
    ),
    "separable-hard_silu": (
        lambda rng: Chain((Conv(weights(rng, 2, 1, 3), groups=2), Conv(weights(rng, 3, 2, 1), activation="hard_silu"))),
        {"keras": None, "tf_keras": "tf_keras has no activation computing hard_silu"},
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_inexpressible_records_are_refused_with_the_reason(flavour, case, rng):
    adapter, _ = flavour
    make, words = REFUSALS[case]
    record = make(rng)
    if words[adapter.NAME] is None:  # this flavour writes it: it must then compute it
        native = adapter.to_native(record)
        x = make_input(rng, record, (9, 7, 5)[: record.spatial_rank])
        within(record, x, adapter.run(native, x))
        return
    with pytest.raises(UnsupportedError, match=words[adapter.NAME]) as info:
        adapter.to_native(record)
    assert "torch" in str(info.value) or "PyTorch" in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "name, options, words",
    [
        pytest.param("Conv3DTranspose", dict(dilation_rate=2), "ignores dilation_rate", id="t3d-dilated"),
        pytest.param("Conv2DTranspose", dict(dilation_rate=(2, 1)), "unequal dilations", id="t2d-unequal-dilation"),
    ],
)
def test_transposes_tf_keras_miscomputes_are_refused_when_read(flavour, name, options, words, rng):
    """tf_keras ignores (3-d) or chokes on (2-d) these dilations; Keras 3 computes them, under XLA on CPU."""
    adapter, keras = flavour
    rank = int(name[4])
    layer = keras_layer(keras, name, dict(filters=3, kernel_size=2, padding="same", **options), 2, rank, "channels_last", rng)
    if adapter.NAME == "tf_keras":
        with pytest.raises(UnsupportedError, match=words):
            adapter.from_native(layer)
        return
    record = adapter.from_native(layer)
    x = make_input(rng, record, (5, 4, 3)[:rank])
    within(record, x, keras_call(layer, x, "channels_last", xla=True))


def test_user_sequentials_are_read_or_refused(flavour, rng):
    adapter, keras = flavour
    L = keras.layers
    conv = L.Conv2D(4, (3, 5))
    model = keras.Sequential([keras.Input((None, None, 3)), L.ZeroPadding2D(((1, 2), (0, 1))), conv])
    conv.set_weights([weights(rng, *w.shape) for w in conv.get_weights()])
    record = adapter.from_native(model)
    assert record.padding == ((1, 2), (0, 1))
    x = make_input(rng, record, (7, 9))
    within(record, x, np.moveaxis(np.asarray(model(np.moveaxis(x, 1, -1))), -1, 1))

    cropped = keras.Sequential([keras.Input((None, None, 3)), L.Conv2D(4, 3), L.Cropping2D(1)])
    with pytest.raises(ConfigError, match="Cropping layer can only follow a transposed convolution"):
        adapter.from_native(cropped)
    padded_transpose = keras.Sequential([keras.Input((None, None, 3)), L.ZeroPadding2D(1), L.Conv2DTranspose(4, 3)])
    with pytest.raises(UnsupportedError, match="Zero padding in front of a transposed convolution"):
        adapter.from_native(padded_transpose)
    wrong_axes = keras.Sequential([
        keras.Input((3, None, None)), L.ZeroPadding2D(1, data_format="channels_last"), L.Conv2D(4, 3, data_format="channels_first"),
    ])
    with pytest.raises(UnsupportedError, match="pads the channel axis"):
        adapter.from_native(wrong_axes)


# -- the Keras 3 channels_first bias bug, for every kind --------------------------------------------------
BIASED = {
    "conv2d": lambda rng: Conv(weights(rng, 3, 2, 3, 5), weights(rng, 3), padding="same_upper"),
    "depthwise2d": lambda rng: Conv(weights(rng, 4, 1, 3, 3), weights(rng, 4), groups=2),
    "transpose2d": lambda rng: ConvTranspose(weights(rng, 2, 3, 2, 3), weights(rng, 3), stride=(1, 2)),
    "separable2d": lambda rng: Chain((Conv(weights(rng, 2, 1, 3, 3), groups=2), Conv(weights(rng, 3, 2, 1, 1), weights(rng, 3)))),
}


@pytest.mark.parametrize("case", list(BIASED))
def test_misplaced_bias_at_every_kind(flavour, case, rng):
    """Keras 3 on TensorFlow adds a channels_first bias along the last axis when its size equals filters; run refuses."""
    adapter, _ = flavour
    record = BIASED[case](rng)
    native = adapter.to_native(record, data_format="channels_first")
    width = next(w for w in range(1, 30) if last_output_size(record, (7, w)) == record.out_channels)
    x = rng.standard_normal((2, record.in_channels, 7, width)).astype("float32")
    y = keras_call(native, x, "channels_first")
    if adapter.NAME == "tf_keras":
        within(record, x, y)
        within(record, x, adapter.run(native, x))
        return
    b = (record.layers[-1] if isinstance(record, Chain) else record).bias.astype(np.float64)
    misplaced = reference.forward(record, x) - b[None, :, None, None] + b[None, None, None, :]
    np.testing.assert_allclose(y, misplaced, rtol=1e-4, atol=1e-4, err_msg="Keras fixed its bias_add? Update _keras_common.")
    with pytest.raises(UnsupportedError, match="bias along the width axis when the output width equals filters"):
        adapter.run(native, x)


# -- dtypes -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, data_format", [("float16", "channels_last"), ("bfloat16", "channels_first"), ("float64", "channels_last")])
@pytest.mark.parametrize("case", ["t2d-same_lower-s21", "separable2d-pads"])
def test_dtypes(flavour, dtype, data_format, case, rng):
    if dtype == "bfloat16":
        need("ml_dtypes")
    from conftest import np_dtype

    adapter, _ = flavour
    make, sizes, _, _ = RECORDS[case]
    made = make(rng)
    layers = made.layers if isinstance(made, Chain) else (made,)
    cast = [layer.replace(kernel=layer.kernel.astype(np_dtype(dtype)),
                          bias=None if layer.bias is None else layer.bias.astype(np_dtype(dtype))) for layer in layers]
    record = Chain(cast) if isinstance(made, Chain) else cast[0]
    native = adapter.to_native(record, data_format=data_format)
    back = adapter.from_native(native)
    assert back.dtype == np_dtype(dtype) and back.same_weights(record)
    x = make_input(rng, record, sizes, dtype=np_dtype(dtype))
    y = adapter.run(native, x)
    assert y.dtype == np_dtype(dtype)
    within(record, x, y)


# -- the depthwise layout, by name ------------------------------------------------------------------------
def test_depthwise_layout_moves_every_element(rng):
    raw = rng.standard_normal((3, 5, 4, 2))  # (H, W, G, M): 4 channels, depth multiplier 2
    canon = layouts.to_canonical(raw, "keras-depthwise2d")
    assert canon.shape == (8, 1, 3, 5)
    for h, w, g, m in np.ndindex(raw.shape):
        assert canon[g * 2 + m, 0, h, w] == raw[h, w, g, m]
    assert layouts.from_canonical(canon, "H W G M", groups=4).tobytes() == raw.tobytes()
    with pytest.raises(ConfigError, match="groups="):
        layouts.from_canonical(canon, "H W G M")
    with pytest.raises(ConfigError, match="one input channel per group"):
        layouts.from_canonical(np.zeros((8, 2, 3, 5)), "H W G M", groups=4)
    assert "keras-depthwise1d" not in [name for name, _ in layouts.fitting_layouts((3, 4, 2))]


def test_bad_arguments_and_inputs_are_typed_errors(flavour, rng):
    adapter, _ = flavour
    conv = Conv(weights(rng, 3, 2, 3, 5), padding="same_lower", stride=2)
    for length in ((9,), (9, 0), 2.5, True):
        with pytest.raises(ConfigError, match="Invalid value for argument `length`"):
            adapter.to_native(conv, length=length)
    with pytest.raises(ConfigError, match="to_native needs a record"):
        adapter.to_native(np.zeros((3, 2, 3, 5), "float32"))
    t = ConvTranspose(weights(rng, 2, 3, 3, 1), stride=1, padding=((2, 2), (0, 0)))
    native = adapter.to_native(t)
    with pytest.raises(ShapeError, match="crops leave no output"):
        adapter.run(native, rng.standard_normal((1, 2, 1, 4)).astype("float32"))
    with pytest.raises(ShapeError, match=r"shape \(N, 2, H, W\)"):
        adapter.run(native, rng.standard_normal((1, 4, 4, 2)).astype("float32"))  # channels last by mistake
