"""Weights through every ordered pair of adapters come back bit-exact: same bytes, same dtype, same computation."""

from __future__ import annotations

import numpy as np
import pytest

from layoutconv import Conv1D, frameworks
from conftest import need, np_dtype

NEEDS = {
    "keras": ("keras", "tensorflow"),
    "tf_keras": ("tf_keras", "tensorflow"),
    "torch": ("torch",),
    "onnx": ("onnx", "onnxruntime"),
}
PAIRS = [(a, b) for a in NEEDS for b in NEEDS if a != b]


def through(conv: Conv1D, name: str) -> Conv1D:
    adapter = frameworks.adapter(name)
    return adapter.from_native(adapter.to_native(conv))


@pytest.mark.parametrize("first, second", PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
@pytest.mark.parametrize(
    "padding, stride",
    [("valid", 1), ("same_upper", 2), ("causal", 1), ((3, 1), 1)],
    ids=["valid", "same-s2", "causal", "explicit"],
)
def test_pair_round_trip_is_bit_exact(rng, first, second, dtype, padding, stride):
    need(*NEEDS[first], "ml_dtypes")
    need(*NEEDS[second])
    # kernel_size == in_channels == filters: any stray transpose would still fit the shape
    conv = Conv1D(
        rng.standard_normal((4, 4, 4)).astype(np_dtype(dtype)),
        rng.standard_normal(4).astype(np_dtype(dtype)),
        stride=stride,
        padding=padding,
    )
    back = through(through(conv, first), second)
    assert back.dtype == conv.dtype
    assert back.kernel.tobytes() == conv.kernel.tobytes()
    assert back.bias.tobytes() == conv.bias.tobytes()
    assert back.equivalent(conv, spatial=23)


@pytest.mark.parametrize("first, second", PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_pair_round_trip_without_bias_and_grouped(rng, first, second):
    need(*NEEDS[first])
    need(*NEEDS[second])
    conv = Conv1D(rng.standard_normal((6, 2, 3)).astype(np.float32), groups=3, dilation=2, padding="same_upper")
    back = through(through(conv, first), second)
    assert back.bias is None
    assert back.same_weights(conv) and back.equivalent(conv)


#: records at every rank and kind, with every axis size different so a swapped axis cannot fit
ND_RECORDS = {
    "conv2d-3x5-same-s21": lambda r: __import__("layoutconv").Conv(
        r.standard_normal((4, 3, 3, 5)).astype(np.float32), r.standard_normal(4).astype(np.float32),
        stride=(2, 1), padding="same_upper", activation="relu"),
    "conv3d-groups": lambda r: __import__("layoutconv").Conv(
        r.standard_normal((4, 1, 2, 3, 1)).astype(np.float32), None, groups=2, padding=((1, 0), (1, 1), (0, 0))),
    "transpose2d-s2-op1": lambda r: __import__("layoutconv").ConvTranspose(
        r.standard_normal((3, 2, 3, 5)).astype(np.float32), r.standard_normal(2).astype(np.float32),
        stride=2, padding=((1, 1), (2, 2)), output_padding=1),
}


@pytest.mark.parametrize("first, second", PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
@pytest.mark.parametrize("case", ND_RECORDS, ids=list(ND_RECORDS))
def test_nd_records_round_trip_bit_exact_through_every_pair(rng, first, second, case):
    need(*NEEDS[first])
    need(*NEEDS[second])
    from layoutconv import registry

    record = ND_RECORDS[case](rng)

    def through_any(rec, name):
        native = registry.converter(rec, name).to_native(rec)
        return frameworks.adapter(name).from_native(native)

    back = through_any(through_any(record, first), second)
    assert type(back) is type(record) and back.same_weights(record)
    assert back.equivalent(record, (11, 13) if record.spatial_rank == 2 else (5, 7, 4))
