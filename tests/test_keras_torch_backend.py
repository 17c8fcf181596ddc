"""The Keras 3 adapter on the PyTorch backend, in a subprocess (a backend is fixed when keras is imported).

The child converts a few convolutions with ``KERAS_BACKEND=torch``, runs them,
and prints one JSON object; the tests here assert on it.  Forward results use
:func:`layoutconv.verify.compare` (the project tolerance); the check of the
reference pass against a native layer uses float32 ``assert_close`` defaults
scaled by ``sqrt(fan_in)``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import need

CHILD = r"""
import json, math, sys
import numpy as np
import keras
from layoutconv import Conv1D, reference
from layoutconv.adapters import _keras_common
from layoutconv.frameworks import adapter
from layoutconv.verify import compare

ad = adapter("keras")
rng = np.random.default_rng(20261129)
# name: (out_channels, in_channels, kernel_size, length, hyperparameters, bias, data_format)
CASES = {
    "valid-K=O": (5, 3, 5, 13, dict(padding="valid"), True, "channels_last"),
    "same-s2-evenK4": (3, 3, 4, 13, dict(padding="same_upper", stride=2), True, "channels_last"),
    "causal-d2": (3, 3, 3, 11, dict(padding="causal", dilation=2), False, "channels_last"),
    "pads2-1-s2": (4, 3, 3, 13, dict(padding=(2, 1), stride=2), True, "channels_last"),
    "pads0-3-g2-first": (4, 4, 4, 9, dict(padding=(0, 3), groups=2), True, "channels_first"),
    "same-s2-evenK4-first": (3, 3, 4, 13, dict(padding="same_upper", stride=2), True, "channels_first"),
    "bias-Lout=O-first": (4, 2, 2, 11, dict(padding="same_upper", stride=3), True, "channels_first"),
}
out = {"backend": keras.backend.backend(), "results": {}, "native": {}}
for name, (o, i, k, length, hyper, bias, data_format) in CASES.items():
    g = hyper.get("groups", 1)
    conv = Conv1D(rng.standard_normal((o, i // g, k)).astype("float32"),
                  rng.standard_normal(o).astype("float32") if bias else None, **hyper)
    native = ad.to_native(conv, data_format=data_format)
    back = ad.from_native(native)
    x = rng.standard_normal((2, i, length)).astype("float32")
    r = compare(conv, x, ad.run(native, x), "keras")
    out["results"][name] = dict(status=r.status, ratio=r.worst_error_over_tolerance, message=r.message,
                                same_weights=back.same_weights(conv), equivalent=back.equivalent(conv, length))

# A native layer ('same', stride 2, even kernel) as the oracle for from_native + the reference pass.
for data_format in ("channels_last", "channels_first"):
    layer = keras.layers.Conv1D(4, 4, strides=2, padding="same", data_format=data_format)
    layer.build((None, None, 3) if data_format == "channels_last" else (None, 3, None))
    layer.set_weights([rng.standard_normal(w.shape).astype("float32") for w in layer.get_weights()])
    x = rng.standard_normal((2, 3, 13)).astype("float32")
    xin = x.transpose(0, 2, 1) if data_format == "channels_last" else x
    y = keras.ops.convert_to_numpy(layer(xin))
    y = y.transpose(0, 2, 1) if data_format == "channels_last" else y
    conv = ad.from_native(layer)
    expected = reference.conv1d(conv, x)
    scale = math.sqrt(conv.fan_in)
    err = np.abs(y - expected)
    out["native"][data_format] = dict(
        padding=conv.padding, shape_ok=y.shape == expected.shape,
        within=bool(np.all(err <= 1e-5 * scale + 1.3e-6 * scale * np.abs(expected))),
    )
out["bias_follows_length"] = _keras_common.bias_follows_length(_keras_common.Flavour("keras", keras))
out["tensorflow_imported"] = "tensorflow" in sys.modules
print(json.dumps(out))
"""

CASE_NAMES = [
    "valid-K=O",
    "same-s2-evenK4",
    "causal-d2",
    "pads2-1-s2",
    "pads0-3-g2-first",
    "same-s2-evenK4-first",
    "bias-Lout=O-first",
]


@pytest.fixture(scope="module")
def child() -> dict:
    need("keras", "torch")
    env = dict(os.environ, KERAS_BACKEND="torch", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_child_used_torch_backend(child):
    assert child["backend"] == "torch"
    assert child["bias_follows_length"] is False  # the TensorFlow-only Keras bug is absent here
    assert child["tensorflow_imported"] is False  # the adapter needs no TensorFlow on this backend


@pytest.mark.parametrize("name", CASE_NAMES)
def test_convert_and_run_on_torch_backend(child, name):
    result = child["results"][name]
    assert result["same_weights"] and result["equivalent"], result
    assert result["status"] == "pass", result


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_native_same_stride2_even_kernel_is_same_upper(child, data_format):
    native = child["native"][data_format]
    assert native["padding"] == "same_upper"
    assert native["shape_ok"] and native["within"], native
