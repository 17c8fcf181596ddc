"""The canonical Conv1D: validation, padding arithmetic, immutability."""

from __future__ import annotations

import math

import numpy as np
import pytest

from layoutconv import ConfigError, Conv1D, ShapeError


def kernel(rng, o=4, i=3, k=5, dtype=np.float32):
    return rng.standard_normal((o, i, k)).astype(dtype)


def tf_same_pads(length, k, s, d):
    """TensorFlow's documented SAME rule, written out independently."""
    out = math.ceil(length / s)
    eff = (k - 1) * d + 1
    total = max((out - 1) * s + eff - length, 0)
    return total // 2, total - total // 2


@pytest.mark.parametrize("length", [7, 8, 9, 10, 11, 123])
@pytest.mark.parametrize("k, s, d", [(1, 1, 1), (2, 1, 1), (4, 2, 1), (5, 3, 2), (10, 4, 3), (3, 2, 3)])
def test_same_upper_matches_tensorflow_rule(rng, length, k, s, d):
    conv = Conv1D(kernel(rng, k=k), stride=s, dilation=d, padding="same_upper")
    assert conv.pads(length) == (tf_same_pads(length, k, s, d),)
    assert conv.output_length(length) == math.ceil(length / s)
    lower = conv.replace(padding="same_lower")
    b, e = tf_same_pads(length, k, s, d)
    assert lower.pads(length) == ((e, b),)


@pytest.mark.parametrize("k, d", [(1, 1), (3, 1), (4, 2), (5, 3)])
def test_causal_pads_left_only(rng, k, d):
    conv = Conv1D(kernel(rng, k=k), dilation=d, padding="causal")
    assert conv.pads(17) == ((d * (k - 1), 0),)
    assert conv.output_length(17) == 17


def test_length_dependent_padding_needs_length(rng):
    conv = Conv1D(kernel(rng), stride=2, padding="same_upper")
    assert conv.padding_depends_on_length
    with pytest.raises(ConfigError, match="depends on the input length"):
        conv.pads()
    assert not conv.replace(stride=1).padding_depends_on_length


def test_explicit_padding_spellings(rng):
    k = kernel(rng)
    assert Conv1D(k, padding=2).padding == ((2, 2),)
    assert Conv1D(k, padding=(1, 3)).padding == ((1, 3),)
    assert Conv1D(k, padding=[(0, 4)]).padding == ((0, 4),)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(stride=0), r"stride=0"),
        (dict(dilation=-1), r"dilation=-1"),
        (dict(groups=0), r"groups=0"),
        (dict(groups=3), r"out_channels=4"),
        (dict(padding=-1), r"padding=-1"),
        (dict(padding="same"), r"same_upper"),
        (dict(padding="full"), r"padding='full'"),
        (dict(padding_mode="mirror"), r"padding_mode='mirror'"),
        (dict(bias=np.zeros(5, np.float32)), r"shape \(5,\)"),
    ],
    ids=["stride0", "dilation-neg", "groups0", "groups-not-divisor", "pad-neg", "same-ambiguous", "pad-unknown", "mode-unknown", "bias-shape"],
)
def test_invalid_configurations_fail_at_construction(rng, kwargs, match):
    bias = kwargs.pop("bias", None)
    with pytest.raises(ConfigError, match=match):
        Conv1D(kernel(rng), bias, **kwargs)


def test_kernel_rank_and_dtype_errors(rng):
    with pytest.raises(ShapeError, match=r"shape \(10, 1, 3, 64\)"):
        Conv1D(rng.standard_normal((10, 1, 3, 64)).astype(np.float32))
    with pytest.raises(ConfigError, match="int64"):
        Conv1D(np.arange(60).reshape(4, 3, 5))
    bad = kernel(rng)
    bad[1, 2, 3] = np.nan
    with pytest.raises(ConfigError, match=r"index \(1, 2, 3\)"):
        Conv1D(bad)
    with pytest.raises(ShapeError, match="empty axis"):
        Conv1D(np.zeros((4, 0, 3), np.float32))


def test_layout_argument_reads_keras_kernel(rng):
    raw = rng.standard_normal((5, 3, 4)).astype(np.float32)  # K I O
    conv = Conv1D(raw, layout="K I O")
    assert conv.kernel.shape == (4, 3, 5)
    assert conv.kernel[2, 1, 4] == raw[4, 1, 2]


def test_immutable_and_copied(rng):
    k = kernel(rng)
    conv = Conv1D(k)
    k[0, 0, 0] = 123.0
    assert conv.kernel[0, 0, 0] != 123.0
    with pytest.raises(ValueError):
        conv.kernel[0, 0, 0] = 1.0
    with pytest.raises(AttributeError, match="replace"):
        conv.stride = (2,)


def test_dtype_kept(rng):
    for dtype in (np.float16, np.float32, np.float64):
        assert Conv1D(kernel(rng, dtype=dtype)).dtype == np.dtype(dtype)
    ml_dtypes = pytest.importorskip("ml_dtypes")
    k = kernel(rng).astype(ml_dtypes.bfloat16)
    assert Conv1D(k).dtype.name == "bfloat16"


def test_equivalent_compares_resolved_padding(rng):
    k = kernel(rng, k=3)
    causal = Conv1D(k, dilation=2, padding="causal")
    explicit = Conv1D(k, dilation=2, padding=(4, 0))
    assert causal.equivalent(explicit) and causal != explicit
    assert not causal.equivalent(explicit.replace(padding=(0, 4)))
    strided = Conv1D(k, stride=2, padding="same_upper")
    assert not strided.equivalent(strided.replace(padding=(1, 1)))
    assert strided.equivalent(strided.replace(padding=strided.pads(9)), spatial=9)


def test_in_channels_with_groups(rng):
    conv = Conv1D(kernel(rng, o=6, i=2), groups=3)
    assert (conv.in_channels, conv.out_channels, conv.fan_in) == (6, 6, 10)


def test_pickle_and_copy_keep_value(rng):
    import copy
    import pickle

    conv = Conv1D(kernel(rng), rng.standard_normal(4).astype(np.float32), stride=2, padding="causal")
    again = pickle.loads(pickle.dumps(conv))
    assert again == conv and again.kernel.tobytes() == conv.kernel.tobytes()
    assert copy.deepcopy(conv) == conv


RULES = ["valid", "causal", "same_upper", "same_lower", 0, 1, 2, (2, 1), (1, 2), (0, 1), (1, 0), (3, 3)]


@pytest.mark.parametrize("k, s, d", [(1, 1, 1), (2, 1, 1), (3, 2, 1), (4, 2, 2), (5, 3, 1), (2, 4, 1), (3, 5, 2)])
def test_same_pads_for_every_size_agrees_with_enumerating_sizes(rng, k, s, d):
    """The closed form against the brute force: every padding pair compared over lengths 1..60."""
    base = Conv1D(kernel(rng, k=k), stride=s, dilation=d)
    for a in RULES:
        for b in RULES:
            ca, cb = base.replace(padding=a), base.replace(padding=b)
            brute = all(ca.pads(n) == cb.pads(n) for n in range(1, 61))
            assert ca.same_pads_for_every_size(b) == brute, (a, b)


def test_absurd_strides_and_dilations_are_refused_instantly(rng):
    huge = 10**12
    for field in ("stride", "dilation"):
        with pytest.raises(ConfigError, match="up to 16777216"):
            Conv1D(kernel(rng), **{field: huge})
    with pytest.raises(ConfigError, match="receptive field is absurdly wide"):
        Conv1D(kernel(rng, k=3), dilation=10**7)  # each value allowed, the span 2 * 10**7 + 1 is not
    with pytest.raises(ConfigError, match="padding"):
        Conv1D(kernel(rng), padding=(huge, 0))
    wide = Conv1D(kernel(rng, k=2), stride=1 << 24, dilation=(1 << 24) - 1, padding="same_upper")
    assert not wide.same_pads_for_every_size("same_lower")  # closed form: no enumeration of 2**24 sizes


def test_every_record_dtype_has_one_tolerance_and_one_torch_dtype():
    from layoutconv.record import FLOAT_DTYPES, float_dtype
    from layoutconv.tolerance import ASSERT_CLOSE_DEFAULTS

    assert sorted(ASSERT_CLOSE_DEFAULTS) == sorted(FLOAT_DTYPES)
    assert [float_dtype(name).name for name in FLOAT_DTYPES] == list(FLOAT_DTYPES)
    with pytest.raises(ConfigError, match="Unsupported dtype"):
        float_dtype("int8")
