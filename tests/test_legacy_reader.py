"""layoutconv.legacy: real Keras 1/2 files, synthetic files in every HDF5 format, Theano's rules.

The expected outputs are computed here a second way: a direct loop over
Theano's true convolution applied to the *raw* stored kernel,
``y[b, t, n] = bias[n] + sum_k sum_f x[b, s t + d k - p, f] * W[L-1-k, 0, f, n]``,
with Theano's ``'same'`` (``'half'`` padding ``r // 2``, then the crop to
``ceil(n / s)`` for even kernels) spelled out literally.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import layoutconv
from layoutconv import layouts, reference
from layoutconv.errors import ConfigError, FileFormatError, ShapeError
from layoutconv.verify import tolerance

from conftest import need

FIXTURES = Path(__file__).parent / "fixtures" / "legacy_keras"
DEEPCPF1_K1 = FIXTURES / "deepcpf1_DeepCpf1_weights_keras1_theano.h5"
DEEPCPF1_K2 = FIXTURES / "deepcpf1_DeepCpf1_weights_keras2.0.5_theano.h5"
SEQ_DEEPCPF1 = FIXTURES / "deepcpf1_Seq_deepCpf1_weights_keras1_theano.h5"
FACTORNET = FIXTURES / "factornet_FOXA1_onePeak_DGF_final_model.hdf5"


@pytest.fixture(scope="module", autouse=True)
def _h5py() -> None:
    need("h5py")


# -- the second implementation -------------------------------------------------
def theano_conv1d(x, w, b=None, *, stride=1, border_mode="valid", dilation=1, flip=True):
    """Theano's conv1d as Keras 1/2 ran it, by loops. ``x`` is ``(N, length, C)``; ``w`` is ``(L, 1, C, O)`` as stored.

    ``flip=False`` gives TensorFlow's cross-correlation instead (same padding words, 'same' = TF SAME).
    """
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n_batch, length, _ = x.shape
    taps, out = w.shape[0], w.shape[3]
    span = dilation * (taps - 1) + 1
    if flip or border_mode != "same":
        begin = end = {"valid": 0, "same": span // 2, "full": span - 1}[border_mode]
    else:  # TensorFlow SAME
        total = max((math.ceil(length / stride) - 1) * stride + span - length, 0)
        begin, end = total // 2, total - total // 2
    padded = np.zeros((n_batch, length + begin + end, x.shape[2]))
    padded[:, begin : begin + length] = x
    steps = (length + begin + end - span) // stride + 1
    y = np.zeros((n_batch, steps, out))
    for t in range(steps):
        for k in range(taps):
            tap = w[taps - 1 - k, 0] if flip else w[k, 0]
            y[:, t, :] += padded[:, stride * t + dilation * k, :] @ tap
    if flip and border_mode == "same" and taps % 2 == 0:
        y = y[:, : math.ceil(length / stride)]
    if b is not None:
        y = y + np.asarray(b, np.float64)
    return y


def assert_matches(conv: layoutconv.Conv1D, x_nlc: np.ndarray, expected_nlo: np.ndarray, actual_nol=None) -> None:
    """Elementwise comparison with the project's tolerance (verify.tolerance); channels-last expected."""
    x = np.ascontiguousarray(x_nlc.transpose(0, 2, 1))
    actual = reference.conv1d(conv, x) if actual_nol is None else np.asarray(actual_nol, np.float64)
    expected = expected_nlo.transpose(0, 2, 1)
    assert actual.shape == expected.shape
    tol, _, _ = tolerance(conv, x)
    err = np.abs(actual - expected)
    assert (err <= tol).all(), f"worst error / tolerance = {float((err / tol).max()):.3g}"


def one_hot_like(rng: np.random.Generator, n: int, length: int, channels: int) -> np.ndarray:
    """One-hot DNA-like input plus small noise (so no two positions are equal)."""
    x = np.eye(channels)[rng.integers(0, channels, size=(n, length))]
    return x + 0.05 * rng.normal(size=x.shape)


# -- real files ------------------------------------------------------------------
REAL = [
    pytest.param(DEEPCPF1_K1, "keras1.1-weights", None, True, "convolution1d_2", (80, 4, 5), id="deepcpf1-keras1"),
    pytest.param(DEEPCPF1_K2, "keras2-weights", "2.0.5", False, "conv1d_2", (80, 4, 5), id="deepcpf1-keras2.0.5"),
    pytest.param(SEQ_DEEPCPF1, "keras1.1-weights", None, True, "convolution1d_157", (80, 4, 5), id="seq-deepcpf1-keras1"),
    pytest.param(FACTORNET, "keras1.1-weights", None, True, "convolution1d_1", (32, 5, 34), id="factornet-keras1"),
]


@pytest.mark.parametrize("path, fmt, version, inferred, conv_name, kernel_shape", REAL)
def test_real_file_is_identified(path, fmt, version, inferred, conv_name, kernel_shape):
    kf = layoutconv.open(path)
    assert kf.format == fmt
    assert kf.keras_version == version
    assert kf.backend == "theano"
    assert kf.backend_inferred is inferred
    if inferred:
        assert "':0'" in kf.backend_source and "inferred" in kf.backend_source
        assert "inferred" in kf.summary() and "backend='tensorflow'" in kf.summary()
    else:
        assert kf.backend_source == "file attribute 'backend'"
    assert [layer.name for layer in kf.conv1d_layers] == [conv_name]
    conv = kf.conv1d()
    assert conv.kernel.shape == kernel_shape
    assert conv.padding == "valid" and conv.stride == (1,)
    assert kf.convention().flipped


@pytest.mark.parametrize("path, fmt, version, inferred, conv_name, kernel_shape", REAL)
def test_real_file_matches_theano_rule(path, fmt, version, inferred, conv_name, kernel_shape, rng):
    kf = layoutconv.open(path)
    conv = kf.conv1d()
    raw_kernel, raw_bias = kf.weights(conv_name)
    if raw_kernel.ndim == 3:  # Keras 2 stores (L, C, O); the rule is written for (L, 1, C, O)
        raw_kernel = raw_kernel[:, None]
    assert conv.kernel.dtype == raw_kernel.dtype == np.float32
    taps, channels = raw_kernel.shape[0], raw_kernel.shape[2]
    x = one_hot_like(rng, 3, taps + 17, channels)
    expected = theano_conv1d(x, raw_kernel, raw_bias)
    assert_matches(conv, x, expected)
    # ... and the same file ported to a PyTorch layer computes what Theano computed.
    need("torch")
    import torch

    module = layoutconv.to_torch(conv)
    with torch.no_grad():
        y = module(torch.from_numpy(x.transpose(0, 2, 1).astype(np.float32))).numpy()
    assert y.dtype == np.float32
    assert_matches(conv, x, expected, actual_nol=y)


def test_deepcpf1_keras1_and_keras2_give_identical_canonical_kernels():
    a = layoutconv.open(DEEPCPF1_K1).conv1d()
    b = layoutconv.open(DEEPCPF1_K2).conv1d()
    assert a.same_weights(b)
    assert a.kernel.tobytes() == b.kernel.tobytes() and a.bias.tobytes() == b.bias.tobytes()
    assert a == b


def test_backend_override_wins():
    theano = layoutconv.open(FACTORNET).conv1d()
    tf = layoutconv.open(FACTORNET, backend="tensorflow")
    assert tf.backend == "tensorflow" and not tf.backend_inferred and "caller" in tf.backend_source
    assert np.array_equal(tf.conv1d().kernel, theano.kernel[..., ::-1])
    with pytest.raises(ConfigError, match="Unknown Keras backend"):
        layoutconv.open(FACTORNET, backend="caffe")


def test_real_file_ported_to_torch_matches_theano_rule(rng):
    """Item 5: the documented path from a legacy file to a ready nn.Conv1d."""
    need("torch")
    import torch

    kf = layoutconv.open(SEQ_DEEPCPF1)
    conv = kf.conv1d(padding="same")  # a weights-only file: the padding is ours to choose
    module = layoutconv.to_torch(conv)
    raw_kernel, raw_bias = kf.weights()
    x = one_hot_like(rng, 2, 34, 4)  # Seq-deepCpf1 inputs are 34 x 4 one-hot DNA
    with torch.no_grad():
        y = module(torch.from_numpy(x.transpose(0, 2, 1).astype(np.float32))).numpy()
    assert y.dtype == np.float32
    assert_matches(conv, x, theano_conv1d(x, raw_kernel, raw_bias, border_mode="same"), actual_nol=y)


def test_inspect_imports_no_framework():
    code = (
        "import json, sys, layoutconv.legacy as L\n"
        f"text = L.inspect_text({str(FACTORNET)!r})\n"
        f"data = json.loads(L.inspect_text({str(DEEPCPF1_K2)!r}, as_json=True))\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'torch', 'keras', 'tf_keras', 'jax'))\n"
        "print(json.dumps({'heavy': heavy, 'text': text, 'format': data['format']}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert result["format"] == "keras2-weights"
    for word in ("keras1.1-weights", "theano", "inferred", "convolution1d_1", "(34, 1, 5, 32)", "K 1 I O", "yes"):
        assert word in result["text"]


def test_to_dict_is_json_and_complete():
    data = json.loads(layoutconv.legacy.inspect_text(FACTORNET, as_json=True))
    assert data["backend"] == {"value": "theano", "source": data["backend"]["source"], "inferred": True}
    conv = next(layer for layer in data["layers"] if layer["name"] == "convolution1d_1")
    assert conv["conv1d"]["layout"] == "keras1.1" and conv["conv1d"]["flip"] is True
    assert conv["conv1d"]["padding"]["canonical"] == "valid" and "default" in conv["conv1d"]["padding"]["source"]
    assert conv["weights"][0] == {"name": "convolution1d_1_W", "shape": [34, 1, 5, 32], "dtype": "float32"}


# -- synthetic files ---------------------------------------------------------------
def write_legacy(path, layers, *, attrs=None, model_config=None, big_endian=False):
    """Write the Keras 1/2 HDF5 structure: ``layers`` is ``[(layer_name, [(weight_name, array), ...]), ...]``."""
    import h5py

    with h5py.File(path, "w") as f:
        if model_config is not None:
            f.attrs["model_config"] = json.dumps(model_config).encode("utf8")
            root = f.create_group("model_weights")
        else:
            root = f
        for key, value in (attrs or {}).items():
            f.attrs[key] = value.encode("utf8")
            if model_config is not None:
                root.attrs[key] = value.encode("utf8")
        root.attrs["layer_names"] = np.array([name.encode("utf8") for name, _ in layers])
        for name, weights in layers:
            g = root.create_group(name)
            g.attrs["weight_names"] = np.array([w.encode("utf8") for w, _ in weights]) if weights else np.zeros(0)
            for wname, value in weights:
                dtype = value.dtype.newbyteorder(">") if big_endian else value.dtype
                g.create_dataset(wname, data=value.astype(dtype))
    return path


def keras1_conv_config(name, nb_filter, filter_length, border_mode="valid", subsample_length=1, input_dim=None):
    return {
        "class_name": "Convolution1D",
        "config": {
            "name": name,
            "nb_filter": nb_filter,
            "filter_length": filter_length,
            "border_mode": border_mode,
            "subsample_length": subsample_length,
            "input_dim": input_dim,
            "activation": "relu",
            "bias": True,
            "init": "glorot_uniform",
        },
    }


def normal(rng, *shape):
    return rng.normal(size=shape).astype(np.float32)


@pytest.mark.parametrize(
    "suffix, backend, flip",
    [pytest.param("", "theano", True, id="name-W-theano"), pytest.param(":0", "tensorflow", False, id="name-W:0-tensorflow")],
)
def test_keras11_weights_names_decide_backend(tmp_path, rng, suffix, backend, flip):
    kernel, bias = normal(rng, 4, 1, 3, 4), normal(rng, 4)  # filter_length == nb_filter == 4, input_dim 3
    path = write_legacy(
        tmp_path / "w.h5",
        [("input_1", []), ("convolution1d_1", [("convolution1d_1_W" + suffix, kernel), ("convolution1d_1_b" + suffix, bias)])],
    )
    kf = layoutconv.open(path)
    assert (kf.format, kf.backend, kf.backend_inferred, kf.keras_version) == ("keras1.1-weights", backend, True, None)
    conv = kf.conv1d(border_mode="same", subsample_length=2)
    assert conv.equivalent(layoutconv.from_keras1(kernel, bias, backend=backend, padding="same", stride=2))
    x = rng.normal(size=(2, 19, 3))
    assert_matches(conv, x, theano_conv1d(x, kernel, bias, stride=2, border_mode="same", flip=flip))


def test_keras10_weights_layout_and_big_endian(tmp_path, rng):
    kernel, bias = normal(rng, 5, 3, 4, 1), normal(rng, 5)  # (nb_filter, input_dim, filter_length, 1)
    path = write_legacy(tmp_path / "w10.h5", [("convolution1d_1", [("convolution1d_1_W", kernel), ("convolution1d_1_b", bias)])], big_endian=True)
    kf = layoutconv.open(path)
    assert kf.format == "keras1.0-weights" and kf.convention().name == "keras1.0-theano"
    conv = kf.conv1d()
    assert conv.kernel.dtype == np.dtype("float32") and conv.kernel.dtype.byteorder in "=|"
    as_11 = np.transpose(kernel, (2, 3, 1, 0))  # the test's own reading of the Keras 1.0 layout
    x = rng.normal(size=(2, 13, 3))
    assert_matches(conv, x, theano_conv1d(x, as_11, bias))


def test_keras1_model_save_uses_config(tmp_path, rng):
    kernel, bias = normal(rng, 4, 1, 3, 5), normal(rng, 5)
    config = {"class_name": "Sequential", "config": [keras1_conv_config("conv_a", 5, 4, "same", 3, 3), {"class_name": "Flatten", "config": {"name": "flatten_1"}}]}
    path = write_legacy(
        tmp_path / "m.h5",
        [("conv_a", [("conv_a_W", kernel), ("conv_a_b", bias)]), ("flatten_1", [])],
        attrs={"keras_version": "1.2.2"},
        model_config=config,
    )
    kf = layoutconv.open(path)
    assert (kf.format, kf.keras_version, kf.backend) == ("keras1-model", "1.2.2", "theano")
    layer = kf.layer("conv_a")
    assert layer.type == "Convolution1D" and layer.hyperparameters["border_mode"] == "same"
    conv = kf.conv1d()
    assert conv.padding == ((2, 1),) and conv.stride == (3,)
    x = rng.normal(size=(2, 23, 3))
    # the config's activation="relu" is applied (0.1.0 dropped it silently)
    assert conv.activation == "relu"
    assert_matches(conv, x, np.maximum(theano_conv1d(x, kernel, bias, stride=3, border_mode="same"), 0.0))
    assert kf.conv1d(padding="same", stride=3).equivalent(conv)
    assert kf.conv1d(padding=((2, 1),)).equivalent(conv)
    with pytest.raises(ConfigError, match="contradicts the file's config"):
        kf.conv1d(padding="valid")
    with pytest.raises(ConfigError, match="contradicts"):
        kf.conv1d(stride=1)
    assert "same -> [[2, 1]] (config)" in kf.summary()


def test_keras1_ambiguous_shape_settled_by_version_config_or_argument(tmp_path, rng):
    kernel = normal(rng, 1, 1, 3, 1)  # Keras 1.1: L=1, I=3, O=1;  Keras 1.0: O=1, I=1, L=3
    layers = [("convolution1d_1", [("convolution1d_1_W", kernel), ("convolution1d_1_b", normal(rng, 1))])]
    kf = layoutconv.open(write_legacy(tmp_path / "amb.h5", layers))
    assert kf.format == "keras1-weights" and kf.layer("convolution1d_1").layout is None
    with pytest.raises(ShapeError, match="layout='keras1.1'"):
        kf.conv1d()
    assert kf.conv1d(layout="keras1.0").kernel.shape == (1, 1, 3)
    assert kf.conv1d(layout="keras1.1").kernel.shape == (1, 3, 1)
    versioned = layoutconv.open(write_legacy(tmp_path / "v.h5", layers, attrs={"keras_version": "1.0.8"}, model_config={"class_name": "Sequential", "config": []}))
    assert versioned.conv1d().kernel.shape == (1, 1, 3)
    configured = layoutconv.open(
        write_legacy(tmp_path / "c.h5", layers, model_config={"class_name": "Sequential", "config": [keras1_conv_config("convolution1d_1", 1, 1, input_dim=3)]})
    )
    assert configured.conv1d().kernel.shape == (1, 3, 1)


@pytest.mark.parametrize(
    "backend, flip", [pytest.param("theano", True, id="theano"), pytest.param("tensorflow", False, id="tensorflow")]
)
def test_keras2_files_follow_backend_attribute(tmp_path, rng, backend, flip):
    kernel, bias = normal(rng, 4, 4, 3), normal(rng, 3)  # kernel_size == in_channels == 4
    layers = [("conv1d_1", [("conv1d_1/kernel:0", kernel), ("conv1d_1/bias:0", bias)]), ("dense_1", [("dense_1/kernel:0", normal(rng, 3, 2))])]
    weights = layoutconv.open(write_legacy(tmp_path / "w.h5", layers, attrs={"backend": backend, "keras_version": "2.1.6"}))
    assert (weights.format, weights.backend, weights.backend_inferred) == ("keras2-weights", backend, False)
    config = {
        "class_name": "Sequential",
        "config": {
            "name": "sequential_1",
            "layers": [
                {"class_name": "Conv1D", "config": {"name": "conv1d_1", "filters": 3, "kernel_size": [4], "strides": [2], "padding": "same", "dilation_rate": [1], "use_bias": True}},
                {"class_name": "Dense", "config": {"name": "dense_1", "units": 2}},
            ],
        },
    }
    model = layoutconv.open(write_legacy(tmp_path / "m.h5", layers, attrs={"backend": backend, "keras_version": "2.1.6"}, model_config=config))
    assert model.format == "keras2-model" and model.layer("dense_1").type == "Dense"
    conv = model.conv1d()
    assert conv.padding == (((2, 1),) if flip else "same_upper") and conv.stride == (2,)
    assert weights.conv1d(padding="same", strides=2).equivalent(conv, 21)
    x = rng.normal(size=(2, 21, 4))
    assert_matches(conv, x, theano_conv1d(x, kernel[:, None], bias, stride=2, border_mode="same", flip=flip))


def test_layer_selection_errors(tmp_path, rng):
    conv = lambda n: (n, [(f"{n}/kernel:0", normal(rng, 3, 2, 2)), (f"{n}/bias:0", normal(rng, 2))])  # noqa: E731
    kf = layoutconv.open(write_legacy(tmp_path / "two.h5", [conv("conv1d_1"), conv("conv1d_2"), ("dense_1", [("dense_1/kernel:0", normal(rng, 2, 2))])], attrs={"backend": "tensorflow", "keras_version": "2.2.4"}))
    with pytest.raises(ConfigError, match=r"2 Conv1D layers.*conv1d_1.*conv1d_2"):
        kf.conv1d()
    assert kf.conv1d("conv1d_2").kernel.shape == (2, 2, 3)
    with pytest.raises(ConfigError, match="no layer 'nope'"):
        kf.conv1d("nope")
    with pytest.raises(ConfigError, match="not a Conv1D layer"):
        kf.conv1d("dense_1")
    with pytest.raises(ConfigError, match=str(tmp_path / "two.h5")):
        kf.conv1d("conv1d_1", bogus=3)


# -- Theano's 'same' and from_keras1 -------------------------------------------------
@pytest.mark.parametrize("taps", [4, 5], ids=["even-4", "odd-5"])
@pytest.mark.parametrize("stride", [1, 3], ids=["stride1", "stride3"])
@pytest.mark.parametrize("length", [23, 24], ids=["len23", "len24"])
def test_theano_same_is_a_fixed_explicit_padding(rng, taps, stride, length):
    kernel, bias = normal(rng, taps, 1, 4, 5), normal(rng, 5)
    conv = layoutconv.from_keras1(kernel, bias, backend="theano", padding="same", stride=stride)
    assert conv.padding == ((taps // 2, (taps - 1) // 2),)
    x = rng.normal(size=(2, length, 4))
    expected = theano_conv1d(x, kernel, bias, stride=stride, border_mode="same")
    assert expected.shape[1] == math.ceil(length / stride)
    assert_matches(conv, x, expected)


@pytest.mark.parametrize("dilation", [1, 2], ids=["dil1", "dil2"])
def test_theano_full_and_atrous_same(rng, dilation):
    kernel = normal(rng, 4, 1, 3, 3)
    x = rng.normal(size=(1, 17, 3))
    for mode in ("full", "same"):
        conv = layoutconv.from_keras1(kernel, None, backend="theano", padding=mode, dilation=dilation, stride=2)
        assert_matches(conv, x, theano_conv1d(x, kernel, None, stride=2, border_mode=mode, dilation=dilation))


def test_from_keras1_tensorflow_same_is_same_upper(rng):
    kernel, bias = normal(rng, 4, 1, 3, 2), normal(rng, 2)
    conv = layoutconv.from_keras1(kernel, bias, backend="tensorflow", padding="same", stride=2)
    assert conv.padding == "same_upper"
    assert np.array_equal(conv.kernel, layouts.to_canonical(kernel, "K 1 I O"))
    x = rng.normal(size=(2, 15, 3))
    assert_matches(conv, x, theano_conv1d(x, kernel, bias, stride=2, border_mode="same", flip=False))
    with pytest.raises(ConfigError, match="Theano border mode"):
        layoutconv.from_keras1(kernel, bias, backend="tensorflow", padding="full")


def test_from_keras1_shapes_and_ambiguity(rng):
    k11 = normal(rng, 5, 1, 3, 4)
    k10 = np.ascontiguousarray(np.transpose(k11, (3, 2, 0, 1)))  # the same weights in the Keras 1.0 layout
    a = layoutconv.from_keras1(k11, backend="theano")
    b = layoutconv.from_keras1(k10, backend="theano")
    assert a.same_weights(b) and a.kernel.shape == (4, 3, 5)
    square = normal(rng, 5, 1, 5, 1)  # fits both layouts
    with pytest.raises(ShapeError, match="fits both Keras 1 layouts.*layout="):
        layoutconv.from_keras1(square, backend="theano")
    assert layoutconv.from_keras1(square, normal(rng, 1), backend="theano").kernel.shape == (1, 5, 5)  # bias says O=1
    assert layoutconv.from_keras1(square, normal(rng, 5), backend="theano").kernel.shape == (5, 1, 5)  # bias says O=5
    assert layoutconv.from_keras1(square, backend="theano", layout="keras1.0").kernel.shape == (5, 1, 5)
    with pytest.raises(ShapeError, match="not a Keras 1 Convolution1D kernel"):
        layoutconv.from_keras1(normal(rng, 5, 3, 4), backend="theano")
    with pytest.raises(ConfigError, match="Unknown Keras backend"):
        layoutconv.from_keras1(k11, backend="caffe")


def test_missing_and_wrong_files(tmp_path):
    with pytest.raises(FileFormatError, match="no such file"):
        layoutconv.open(tmp_path / "absent.h5")
    (tmp_path / "empty.h5").write_bytes(b"")
    with pytest.raises(FileFormatError, match="empty"):
        layoutconv.open(tmp_path / "empty.h5")
    import h5py

    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["data"] = np.arange(3.0)
    with pytest.raises(FileFormatError, match="not a Keras weight file"):
        layoutconv.open(tmp_path / "plain.h5")


def test_chunked_attributes_and_nested_keras1_config(tmp_path, rng):
    """Keras splits long attributes into name0, name1...; Keras 1 Merge layers nest whole Sequential configs."""
    import h5py

    kernel, bias = normal(rng, 3, 1, 2, 6), normal(rng, 6)
    inner = {"class_name": "Sequential", "config": [keras1_conv_config("branch_conv", 6, 3, "same", 1, 2)]}
    config = {"class_name": "Sequential", "config": [{"class_name": "Merge", "config": {"name": "merge_1", "layers": [inner], "mode": "concat"}}]}
    path = tmp_path / "chunked.h5"
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = b"1.1.0"
        f.attrs["model_config"] = json.dumps(config).encode()
        root = f.create_group("model_weights")
        root.attrs["layer_names0"] = np.array([b"merge_1"])
        root.attrs["layer_names1"] = np.array([b"branch_conv"])
        root.create_group("merge_1").attrs["weight_names"] = np.zeros(0)
        g = root.create_group("branch_conv")
        g.attrs["weight_names0"] = np.array([b"branch_conv_W"])
        g.attrs["weight_names1"] = np.array([b"branch_conv_b"])
        g["branch_conv_W"], g["branch_conv_b"] = kernel, bias
    kf = layoutconv.open(path)
    assert [layer.name for layer in kf.layers] == ["merge_1", "branch_conv"]
    assert kf.layer("branch_conv").type_source == "model_config attribute"
    conv = kf.conv1d()
    assert conv.padding == ((1, 1),)
    x = rng.normal(size=(1, 9, 2))
    assert_matches(conv, x, np.maximum(theano_conv1d(x, kernel, bias, border_mode="same"), 0.0))  # config: relu
