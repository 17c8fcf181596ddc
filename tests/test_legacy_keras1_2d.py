"""Keras 1 Convolution2D, AtrousConvolution2D, Deconvolution2D and Convolution3D read from Keras 1 HDF5 files.

No Keras 1 2-D file is available offline, so every test writes one with h5py
byte for byte as Keras 1.2.2 wrote it (``engine/topology.py``
``save_weights_to_hdf5_group``: root attribute ``layer_names``, one group per
layer with attribute ``weight_names``, datasets named after the variables,
``convolution2d_1_W`` under Theano and ``convolution2d_1_W:0`` under TensorFlow;
``models.py`` ``save_model``: root attributes ``keras_version`` and
``model_config``, the weights under ``/model_weights``).

The expected outputs come from an oracle written here, independent of
layoutconv: direct loops over output positions and kernel taps, indexing the
kernel as Keras 1 stored it (``'th'``: ``W[o, c, *taps]``; ``'tf'``:
``W[*taps, c, o]``), with each backend's rule spelled out (Keras 1.2.2
``keras/backend/theano_backend.py`` and ``tensorflow_backend.py``):

* Theano computes a true convolution: output ``t`` takes tap ``k - 1 - j`` at
  ``x_pad[s t + d j]``.  ``'same'`` is Theano's ``'half'`` (pad ``r // 2`` on
  both sides, ``r = d (k - 1) + 1``), then an even kernel keeps the first
  ``ceil(n / s)`` outputs; ``'full'`` pads ``r - 1``.
* TensorFlow cross-correlates (tap ``j`` at ``x_pad[s t + d j]``); ``'same'`` is
  ``SAME``: ``max((ceil(n/s) - 1) s + r - n, 0)`` in total, the smaller half first.
* ``Deconvolution2D`` is the gradient of that convolution with respect to an
  input of the configured ``output_shape``: each input element is scattered
  through the kernel, ``out_pad[s t + j] += x[t] * tap`` (tap ``k - 1 - j`` under
  Theano), then ``out = out_pad[p_begin : p_begin + out_size]``.

Comparisons use torch.testing.assert_close's float64 tolerances (rtol = atol = 1e-7).
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

import layoutconv
from layoutconv import reference
from layoutconv.errors import ConfigError, FileFormatError, ShapeError, UnsupportedError

from conftest import need

RTOL = ATOL = 1e-7  # torch.testing.assert_close's defaults for float64


@pytest.fixture(scope="module", autouse=True)
def _h5py() -> None:
    need("h5py")


# -- Keras 1 files -----------------------------------------------------------------
def write_keras1(path, layers, *, model_config=None, keras_version="1.2.2"):
    """A Keras 1 ``save_weights`` file, or a ``save_model`` file when ``model_config`` is given.

    ``layers`` is ``[(layer_name, [(weight_name, array), ...]), ...]`` in model order.
    """
    import h5py

    with h5py.File(path, "w") as f:
        if model_config is not None:
            f.attrs["keras_version"] = str(keras_version).encode("utf8")
            f.attrs["model_config"] = json.dumps(model_config).encode("utf8")
            root = f.create_group("model_weights")
        else:
            root = f
        root.attrs["layer_names"] = [name.encode("utf8") for name, _ in layers]
        for name, weights in layers:
            g = root.create_group(name)
            g.attrs["weight_names"] = [w.encode("utf8") for w, _ in weights]
            for wname, value in weights:
                dset = g.create_dataset(wname, value.shape, dtype=value.dtype)
                dset[:] = value
    return path


def sequential(*layer_configs):
    """Keras 1 ``Sequential.get_config()`` as ``save_model`` wrote it: a list of layer configs."""
    return {"class_name": "Sequential", "config": list(layer_configs)}


def layer_config(cls, name, *, nb_filter, kernel, border_mode, subsample, dim_ordering, activation="linear", bias=True, **extra):
    """A Keras 1 layer config (``get_config`` of 1.2.2, regularizers and constraints as ``None``)."""
    keys = ("nb_row", "nb_col") if len(kernel) == 2 else ("kernel_dim1", "kernel_dim2", "kernel_dim3")
    config = {
        "name": name, "trainable": True, "nb_filter": nb_filter, **dict(zip(keys, kernel)), "init": "glorot_uniform",
        "activation": activation, "border_mode": border_mode, "subsample": list(subsample), "dim_ordering": dim_ordering,
        "W_regularizer": None, "b_regularizer": None, "activity_regularizer": None, "W_constraint": None,
        "b_constraint": None, "bias": bias, **extra,
    }
    return {"class_name": cls, "config": config}


def stored_kernel(rng, dim_ordering, nb_filter, input_dim, kernel):
    """Random weights in the shape Keras 1 ``build`` gave ``W``: ``'th'`` (nb_filter, input_dim, *kernel), ``'tf'`` (*kernel, input_dim, nb_filter)."""
    shape = (nb_filter, input_dim, *kernel) if dim_ordering == "th" else (*kernel, input_dim, nb_filter)
    return rng.normal(size=shape).astype(np.float32)


def tap(w, dim_ordering, o, c, taps):
    """Kernel value for output channel ``o``, input channel ``c`` and tap ``taps``, read from the stored array."""
    return w[(o, c, *taps)] if dim_ordering == "th" else w[(*taps, c, o)]


def to_channels_first(x, dim_ordering):
    return x if dim_ordering == "th" else np.moveaxis(x, -1, 1)


def from_channels_first(y, dim_ordering):
    return y if dim_ordering == "th" else np.moveaxis(y, 1, -1)


ACTIVATIONS = {"linear": lambda v: v, "relu": lambda v: np.maximum(v, 0.0), "tanh": np.tanh}


# -- the oracle ----------------------------------------------------------------------
def keras1_conv(x, w, b, *, dim_ordering, backend, border_mode, subsample, atrous_rate=None, activation="linear"):
    """What Keras 1's ``K.conv2d``/``K.conv3d`` computed, by loops. ``x`` and the result are in ``dim_ordering``."""
    x = to_channels_first(np.asarray(x, np.float64), dim_ordering)
    w = np.asarray(w, np.float64)
    n_batch, channels, *sizes = x.shape
    rank = len(sizes)
    kernel = w.shape[2:] if dim_ordering == "th" else w.shape[:rank]
    filters = w.shape[0] if dim_ordering == "th" else w.shape[-1]
    dilation = tuple(atrous_rate or (1,) * rank)
    spans = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
    pads = []
    for n, s, r in zip(sizes, subsample, spans):
        if backend == "theano":
            p = {"valid": 0, "same": r // 2, "full": r - 1}[border_mode]
            pads.append((p, p))
        elif border_mode == "same":
            total = max((math.ceil(n / s) - 1) * s + r - n, 0)
            pads.append((total // 2, total - total // 2))
        else:
            pads.append((0, 0))
    padded = np.zeros((n_batch, channels, *(n + b_ + e_ for n, (b_, e_) in zip(sizes, pads))))
    padded[(slice(None), slice(None), *(slice(b_, b_ + n) for n, (b_, _) in zip(sizes, pads)))] = x
    out_sizes = [(n + b_ + e_ - r) // s + 1 for n, (b_, e_), r, s in zip(sizes, pads, spans, subsample)]
    y = np.zeros((n_batch, filters, *out_sizes))
    for t in itertools.product(*(range(m) for m in out_sizes)):
        for j in itertools.product(*(range(k) for k in kernel)):
            where = tuple(s * ti + d * ji for s, ti, d, ji in zip(subsample, t, dilation, j))
            taps = tuple(k - 1 - ji for k, ji in zip(kernel, j)) if backend == "theano" else j
            for o in range(filters):
                for c in range(channels):
                    y[(slice(None), o, *t)] += padded[(slice(None), c, *where)] * tap(w, dim_ordering, o, c, taps)
    if backend == "theano" and border_mode == "same":  # Keras 1 crops an even kernel's extra outputs
        for axis, (k, n, s) in enumerate(zip(kernel, sizes, subsample)):
            if k % 2 == 0:
                y = np.take(y, range(math.ceil(n / s)), axis=2 + axis)
    if b is not None:
        y += np.asarray(b, np.float64).reshape((1, -1) + (1,) * rank)
    return from_channels_first(ACTIVATIONS[activation](y), dim_ordering)


def keras1_deconv(x, w, b, *, dim_ordering, backend, border_mode, subsample, output_size, activation="linear"):
    """What Keras 1's ``K.deconv2d`` computed, by scattering every input element through the stored kernel."""
    x = to_channels_first(np.asarray(x, np.float64), dim_ordering)
    w = np.asarray(w, np.float64)
    n_batch, channels, *sizes = x.shape
    kernel = w.shape[2:] if dim_ordering == "th" else w.shape[:2]
    filters = w.shape[0] if dim_ordering == "th" else w.shape[-1]
    begins = []
    for k, s, out in zip(kernel, subsample, output_size):
        if backend == "theano":
            begins.append({"valid": 0, "same": k // 2, "full": k - 1}[border_mode])
        elif border_mode == "same":
            begins.append(max((math.ceil(out / s) - 1) * s + k - out, 0) // 2)
        else:
            begins.append(0)
    full = [s * (n - 1) + k for s, n, k in zip(subsample, sizes, kernel)]
    out_pad = np.zeros((n_batch, filters, *(max(f, bg + out) for f, bg, out in zip(full, begins, output_size))))
    for t in itertools.product(*(range(n) for n in sizes)):
        for j in itertools.product(*(range(k) for k in kernel)):
            where = tuple(s * ti + ji for s, ti, ji in zip(subsample, t, j))
            taps = tuple(k - 1 - ji for k, ji in zip(kernel, j)) if backend == "theano" else j
            for o in range(filters):
                for c in range(channels):
                    out_pad[(slice(None), o, *where)] += x[(slice(None), c, *t)] * tap(w, dim_ordering, o, c, taps)
    y = out_pad[(slice(None), slice(None), *(slice(bg, bg + out) for bg, out in zip(begins, output_size)))]
    if b is not None:
        y = y + np.asarray(b, np.float64).reshape(1, -1, 1, 1)
    return from_channels_first(ACTIVATIONS[activation](y), dim_ordering)


def input_for(rng, dim_ordering, channels, sizes, n_batch=2):
    shape = (n_batch, channels, *sizes) if dim_ordering == "th" else (n_batch, *sizes, channels)
    return rng.normal(size=shape)


def check_record(record, x, expected, dim_ordering):
    """The reference pass of ``record``, and the PyTorch module layoutconv builds from it, both equal the oracle."""
    xc = np.ascontiguousarray(to_channels_first(x, dim_ordering))
    ours = from_channels_first(reference.forward(record, xc), dim_ordering)
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, rtol=RTOL, atol=ATOL)
    need("torch")
    import torch

    module = layoutconv.to_torch(record).double()
    with torch.no_grad():
        y = module(torch.from_numpy(xc)).numpy()
    torch.testing.assert_close(
        torch.from_numpy(np.ascontiguousarray(from_channels_first(y, dim_ordering))), torch.from_numpy(expected),
        rtol=RTOL, atol=ATOL,
    )


def weight_names(name, backend):
    suffix = ":0" if backend == "tensorflow" else ""
    return f"{name}_W{suffix}", f"{name}_b{suffix}"


# -- Convolution2D, AtrousConvolution2D and Convolution3D from model saves ----------
#: id -> (class, dim_ordering, backend, border_mode, kernel, subsample, atrous_rate, nb_filter, input_dim, input sizes, activation)
CONV_CASES = {
    "th-theano-valid-3x5-stride2x1": ("Convolution2D", "th", "theano", "valid", (3, 5), (2, 1), None, 4, 3, (11, 13), "linear"),
    "th-theano-same-even4x3-stride2x3": ("Convolution2D", "th", "theano", "same", (4, 3), (2, 3), None, 5, 2, (9, 14), "relu"),
    "tf-theano-full-3x2-stride1x2": ("Convolution2D", "tf", "theano", "full", (3, 2), (1, 2), None, 3, 4, (7, 9), "linear"),
    "tf-tensorflow-same-3x5-stride2x1": ("Convolution2D", "tf", "tensorflow", "same", (3, 5), (2, 1), None, 4, 3, (10, 11), "tanh"),
    "th-tensorflow-valid-2x5-stride3x2": ("Convolution2D", "th", "tensorflow", "valid", (2, 5), (3, 2), None, 2, 5, (12, 13), "linear"),
    "th-tensorflow-same-even4x2-stride2x3": ("Convolution2D", "th", "tensorflow", "same", (4, 2), (2, 3), None, 3, 2, (9, 10), "linear"),
    "kernel-eq-filters-tf-theano-same-4x4": ("Convolution2D", "tf", "theano", "same", (4, 4), (1, 1), None, 4, 4, (7, 9), "linear"),
    "atrous-tf-theano-same-3x4-rate2x1": ("AtrousConvolution2D", "tf", "theano", "same", (3, 4), (1, 1), (2, 1), 3, 2, (11, 9), "linear"),
    "atrous-th-theano-valid-2x3-rate1x3-stride2x1": ("AtrousConvolution2D", "th", "theano", "valid", (2, 3), (2, 1), (1, 3), 3, 4, (9, 15), "relu"),
    "atrous-th-theano-same-even2x4-rate2x3": ("AtrousConvolution2D", "th", "theano", "same", (2, 4), (1, 1), (2, 3), 2, 3, (9, 16), "linear"),
    "atrous-th-tensorflow-same-3x3-rate2": ("AtrousConvolution2D", "th", "tensorflow", "same", (3, 3), (1, 1), (2, 2), 2, 3, (9, 11), "linear"),
    "3d-th-theano-valid-2x3x4-stride1x2x1": ("Convolution3D", "th", "theano", "valid", (2, 3, 4), (1, 2, 1), None, 3, 2, (5, 7, 6), "linear"),
    "3d-tf-tensorflow-same-2x3x2-stride2x1x2": ("Convolution3D", "tf", "tensorflow", "same", (2, 3, 2), (2, 1, 2), None, 2, 3, (5, 6, 7), "linear"),
    "3d-th-theano-same-odd3x1x5": ("Convolution3D", "th", "theano", "same", (3, 1, 5), (1, 1, 1), None, 2, 2, (5, 4, 7), "relu"),
}


def conv_file(tmp_path, rng, case, *, model=True):
    cls, order, backend, mode, kernel, subsample, rate, filters, channels, _, activation = CONV_CASES[case]
    name = f"{cls.lower()}_1"
    w = stored_kernel(rng, order, filters, channels, kernel)
    b = rng.normal(size=filters).astype(np.float32)
    w_name, b_name = weight_names(name, backend)
    extra = {"atrous_rate": list(rate)} if rate else {}
    config = sequential(
        layer_config(cls, name, nb_filter=filters, kernel=kernel, border_mode=mode, subsample=subsample, dim_ordering=order,
                     activation=activation, **extra),
        {"class_name": "Flatten", "config": {"name": "flatten_1", "trainable": True}},
    )
    path = write_keras1(tmp_path / f"{case}.h5", [(name, [(w_name, w), (b_name, b)]), ("flatten_1", [])],
                        model_config=config if model else None)
    return path, name, w, b


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_model_save_matches_keras1(tmp_path, rng, case):
    cls, order, backend, mode, kernel, subsample, rate, filters, channels, sizes, activation = CONV_CASES[case]
    path, name, w, b = conv_file(tmp_path, rng, case)
    kf = layoutconv.open(path)
    assert (kf.format, kf.backend, kf.keras_version) == ("keras1-model", backend, "1.2.2")
    record = kf.conv(name)
    assert isinstance(record, layoutconv.Conv) and record.spatial_rank == len(kernel)
    assert (record.kernel_shape, record.stride, record.activation) == (kernel, subsample, activation)
    assert record.kernel.dtype == np.float32 and (record.in_channels, record.out_channels) == (channels, filters)
    x = input_for(rng, order, channels, sizes)
    expected = keras1_conv(x, w, b, dim_ordering=order, backend=backend, border_mode=mode, subsample=subsample,
                           atrous_rate=rate, activation=activation)
    check_record(record, x, expected, order)
    # every hyperparameter came from the config
    assert {source for _, source in kf.hyperparameters_of(name).values()} == {"config"}
    assert kf.convention(name).flipped is (backend == "theano")
    assert kf.convention(name).data_format == ("channels_first" if order == "th" else "channels_last")


def test_flip_is_on_every_spatial_axis_and_the_only_backend_difference(tmp_path, rng):
    path, name, w, _ = conv_file(tmp_path, rng, "th-theano-valid-3x5-stride2x1")
    theano = layoutconv.open(path).conv(name)
    tensorflow = layoutconv.open(path, backend="tensorflow").conv(name)
    assert np.array_equal(tensorflow.kernel, w)  # 'th' is already (O, I, H, W)
    assert np.array_equal(theano.kernel, w[:, :, ::-1, ::-1])


def test_tf_ordering_kernel_is_read_by_axis_names(tmp_path, rng):
    path, name, w, _ = conv_file(tmp_path, rng, "tf-tensorflow-same-3x5-stride2x1")
    record = layoutconv.open(path).conv(name)
    assert record.kernel.shape == (4, 3, 3, 5)
    for o, c, i, j in [(0, 0, 0, 0), (3, 2, 2, 4), (1, 2, 0, 3)]:
        assert record.kernel[o, c, i, j] == w[i, j, c, o]


# -- weights-only files: hyperparameters from arguments, assumptions said ----------
def test_weights_only_takes_arguments_per_axis(tmp_path, rng):
    case = "th-theano-same-even4x3-stride2x3"
    _, order, backend, mode, kernel, subsample, _, filters, channels, sizes, _ = CONV_CASES[case]
    path, name, w, b = conv_file(tmp_path, rng, case, model=False)
    kf = layoutconv.open(path)
    assert (kf.format, kf.backend, kf.backend_inferred) == ("keras1-weights", "theano", True)
    hp = kf.hyperparameters_of(name, border_mode="same", subsample=subsample, activation="relu")
    assert hp["stride"] == (subsample, "argument") and hp["padding"] == (((2, 1), (1, 1)), "argument")
    assert hp["dilation"] == ((1, 1), "default") and hp["groups"] == (1, "default") and hp["activation"] == ("relu", "argument")
    record = kf.conv(name, border_mode="same", subsample=subsample, activation="relu")
    x = input_for(rng, order, channels, sizes)
    check_record(record, x, keras1_conv(x, w, b, dim_ordering=order, backend=backend, border_mode=mode,
                                        subsample=subsample, activation="relu"), order)
    # layoutconv's spellings, and a canonical padding that gives the same pads, read the same layer
    assert kf.conv(name, padding=((2, 1), (1, 1)), stride=subsample, activation="relu") == record
    # nothing given: every hyperparameter is the default, and said so
    assert {source for _, source in kf.hyperparameters_of(name).values()} == {"default"}
    assert kf.conv(name).padding == "valid" and kf.conv(name).stride == (1, 1)


def test_weights_only_dim_ordering_from_bias_argument_or_refused(tmp_path, rng):
    w = rng.normal(size=(4, 3, 5, 4)).astype(np.float32)  # 'th' (O=4, I=3, 5x4) or 'tf' (4x3 kernel, I=5, O=4)
    layers = [("convolution2d_1", [("convolution2d_1_W", w), ("convolution2d_1_b", rng.normal(size=4).astype(np.float32))])]
    kf = layoutconv.open(write_keras1(tmp_path / "amb.h5", layers))
    with pytest.raises(ShapeError, match="dim_ordering='th'.*dim_ordering='tf'") as exc:
        kf.conv("convolution2d_1")
    assert "convolution2d_1" in str(exc.value) and "(4, 3, 5, 4)" in str(exc.value)
    assert kf.conv("convolution2d_1", dim_ordering="th").kernel_shape == (5, 4)
    assert kf.conv("convolution2d_1", dim_ordering="tf").kernel_shape == (4, 3)
    assert "dim_ordering" in kf.summary() and "undecided" in kf.summary()
    with pytest.raises(ConfigError, match="Invalid dim_ordering"):
        kf.conv("convolution2d_1", dim_ordering="channels_first")
    # the bias settles it when only one reading has nb_filter = bias length
    w_tf = rng.normal(size=(4, 3, 5, 3)).astype(np.float32)
    settled = [("convolution2d_1", [("convolution2d_1_W", w_tf), ("convolution2d_1_b", rng.normal(size=3).astype(np.float32))])]
    kf = layoutconv.open(write_keras1(tmp_path / "tf.h5", settled))
    assert kf.convention("convolution2d_1").layout == "H W I O"
    assert "inferred: the bias length 3" in kf.summary()


def test_model_save_with_kernel_equal_to_filters_needs_no_guess(tmp_path, rng):
    """(4, 4, 4, 4) with 4 filters fits both orderings; the config's dim_ordering decides, and a weights-only copy refuses."""
    path, name, w, b = conv_file(tmp_path, rng, "kernel-eq-filters-tf-theano-same-4x4")
    assert w.shape == (4, 4, 4, 4)
    record = layoutconv.open(path).conv(name)  # 'tf' and Theano: kernel[o, c, i, j] = W[3 - i, 3 - j, c, o]
    assert record.kernel[1, 2, 3, 0] == w[0, 3, 2, 1] and record.kernel[3, 0, 1, 2] == w[2, 1, 0, 3]
    bare = write_keras1(tmp_path / "bare.h5", [(name, [(f"{name}_W", w), (f"{name}_b", b)])])
    with pytest.raises(ShapeError, match="does not settle it"):
        layoutconv.open(bare).conv(name)
    with pytest.raises(ConfigError, match="contradicts the file's config"):
        layoutconv.open(path).conv(name, dim_ordering="th")


def test_untyped_layers_are_read_by_the_kernel_they_hold(tmp_path, rng):
    """A renamed layer: a kernel that fits a Keras 1 Conv1D layout is a Conv1D, another 4-d kernel a Convolution2D."""
    w2 = rng.normal(size=(3, 2, 3, 5)).astype(np.float32)  # no size-1 axis: not a Conv1D kernel
    w1 = rng.normal(size=(5, 1, 2, 3)).astype(np.float32)  # (filter_length, 1, input_dim, nb_filter)
    b = rng.normal(size=3).astype(np.float32)
    layers = [("my_conv2d", [("my_conv2d_W", w2), ("my_conv2d_b", b)]), ("my_conv1d", [("my_conv1d_W", w1), ("my_conv1d_b", b)])]
    kf = layoutconv.open(write_keras1(tmp_path / "renamed.h5", layers))
    record = kf.conv("my_conv2d", padding="valid")
    assert isinstance(record, layoutconv.Conv2D) and record.kernel_shape == (3, 5)  # bias 3 = nb_filter: 'th'
    assert isinstance(kf.conv("my_conv1d"), layoutconv.Conv1D)
    assert isinstance(kf.conv("my_conv1d", layer_type="Convolution1D"), layoutconv.Conv1D)
    x = input_for(rng, "th", 2, (7, 9))
    check_record(record, x, keras1_conv(x, w2, b, dim_ordering="th", backend="theano", border_mode="valid", subsample=(1, 1)), "th")
    with pytest.raises(ConfigError, match="Unknown layer_type"):
        kf.conv("my_conv2d", layer_type="Conv2D")  # a Keras 2 class in a Keras 1 file
    guessed = layoutconv.open(write_keras1(tmp_path / "typed.h5", [("convolution2d_1", [("convolution2d_1_W", w2), ("convolution2d_1_b", b)])]))
    with pytest.raises(ConfigError, match="contradicts the file"):
        guessed.conv("convolution2d_1", layer_type="Convolution3D")


def test_keras2_weights_only_nd_files_take_arguments(tmp_path, rng):
    """Keras 2 save_weights (conv2d_1/kernel:0): per-axis arguments, an untyped 4-d kernel assumed Conv2D."""
    import h5py

    w = rng.normal(size=(3, 5, 4, 2)).astype(np.float32)  # (H, W, I, O)
    b = rng.normal(size=2).astype(np.float32)
    path = tmp_path / "k2.h5"
    with h5py.File(path, "w") as f:
        f.attrs["backend"], f.attrs["keras_version"] = b"tensorflow", b"2.2.4"
        f.attrs["layer_names"] = [b"conv2d_1", b"block_a"]
        for name in ("conv2d_1", "block_a"):
            g = f.create_group(name)
            g.attrs["weight_names"] = [f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()]
            g[f"{name}/kernel:0"], g[f"{name}/bias:0"] = w, b
    kf = layoutconv.open(path)
    record = kf.conv("conv2d_1", padding="same", strides=(2, 1), dilation_rate=(1, 2), activation="relu")
    hp = kf.hyperparameters_of("conv2d_1", padding="same", strides=(2, 1), dilation_rate=(1, 2), activation="relu")
    assert hp["stride"] == ((2, 1), "argument") and hp["dilation"] == ((1, 2), "argument") and hp["groups"] == (1, "default")
    assert hp["padding"] == ("same_upper", "argument")
    x = input_for(rng, "tf", 4, (9, 12))
    expected = keras1_conv(x, w, b, dim_ordering="tf", backend="tensorflow", border_mode="same", subsample=(2, 1),
                           atrous_rate=(1, 2), activation="relu")  # Keras 2 Conv2D on TensorFlow: the same cross-correlation
    check_record(record, x, expected, "tf")
    assert kf.layer("block_a").type is None  # no config, not a default name: the 4-d kernel says Conv2D
    untyped = kf.conv("block_a", padding="same", strides=(2, 1), dilation_rate=(1, 2), activation="relu")
    assert untyped == record
    assert kf.hyperparameters_of("block_a", strides=(2, 1))["stride"] == ((2, 1), "argument")
    with pytest.raises(ConfigError, match="Unknown or repeated hyperparameter"):
        kf.conv("block_a", layer_type="Conv2DTranspose", output_shape=(9, 9))
    with pytest.raises(ConfigError, match="Wrong number of per-axis values"):
        kf.conv("conv2d_1", strides=(2, 1, 1))


# -- Deconvolution2D -------------------------------------------------------------------
#: id -> (dim_ordering, backend, border_mode, kernel, subsample, nb_filter, input_dim, output rows/cols, keras_version)
DECONV_CASES = {
    "th-theano-valid-3x4-stride2x3": ("th", "theano", "valid", (3, 4), (2, 3), 3, 2, (12, 14), "1.2.2"),
    "tf-tensorflow-same-3x4-stride2": ("tf", "tensorflow", "same", (3, 4), (2, 2), 2, 3, (9, 10), "1.2.2"),
    "th-tensorflow-valid-3x3-stride1x2": ("th", "tensorflow", "valid", (3, 3), (1, 2), 4, 2, (7, 12), "1.1.0"),
    "tf-theano-same-odd3x5-stride2": ("tf", "theano", "same", (3, 5), (2, 2), 2, 3, (10, 9), "1.2.2"),
    "th-theano-full-2x3-stride1x2": ("th", "theano", "full", (2, 3), (1, 2), 3, 3, (5, 9), "1.0.8"),
    "th-theano-same-even2x4-stride1": ("th", "theano", "same", (2, 4), (1, 1), 2, 3, (6, 7), "1.2.2"),
}


def input_size(backend, mode, k, s, out):
    """The one input size each backend's deconv2d accepts for this output size (written from its rule)."""
    if backend == "tensorflow":
        return math.ceil(out / s) if mode == "same" else (out - k) // s + 1
    p = {"valid": 0, "same": k // 2, "full": k - 1}[mode]
    return (out + 2 * p - k) // s + 1


def deconv_file(tmp_path, rng, case, *, model=True, **overrides):
    order, backend, mode, kernel, subsample, filters, channels, out, version = DECONV_CASES[case]
    name = "deconvolution2d_1"
    w = stored_kernel(rng, order, filters, channels, kernel)  # stored like Convolution2D's W: O = nb_filter (the output)
    b = rng.normal(size=filters).astype(np.float32)
    shape = [None, filters, *out] if order == "th" else [None, *out, filters]
    config = sequential(
        layer_config("Deconvolution2D", name, nb_filter=filters, kernel=kernel, border_mode=mode, subsample=subsample,
                     dim_ordering=order, output_shape=overrides.get("output_shape", shape))
    )
    w_name, b_name = weight_names(name, backend)
    path = write_keras1(tmp_path / f"{case}.h5", [(name, [(w_name, w), (b_name, b)])], model_config=config if model else None,
                        keras_version=overrides.get("keras_version", version))
    return path, name, w, b


@pytest.mark.parametrize("case", list(DECONV_CASES))
def test_deconvolution2d_matches_keras1(tmp_path, rng, case):
    order, backend, mode, kernel, subsample, filters, channels, out, _ = DECONV_CASES[case]
    path, name, w, b = deconv_file(tmp_path, rng, case)
    kf = layoutconv.open(path)
    record = kf.conv(name)
    assert isinstance(record, layoutconv.ConvTranspose)
    assert (record.in_channels, record.out_channels, record.kernel_shape, record.stride) == (channels, filters, kernel, subsample)
    sizes = tuple(input_size(backend, mode, k, s, o) for k, s, o in zip(kernel, subsample, out))
    assert record.output_shape(sizes) == out
    x = input_for(rng, order, channels, sizes)
    expected = keras1_deconv(x, w, b, dim_ordering=order, backend=backend, border_mode=mode, subsample=subsample, output_size=out)
    assert to_channels_first(expected, order).shape == (2, filters, *out)  # the configured output_shape
    check_record(record, x, expected, order)
    hp = kf.hyperparameters_of(name)
    assert hp["output_padding"] == (record.output_padding, "config")


def test_deconvolution2d_weights_only_takes_output_shape(tmp_path, rng):
    case = "th-theano-valid-3x4-stride2x3"
    order, backend, mode, kernel, subsample, filters, channels, out, _ = DECONV_CASES[case]
    path, name, w, b = deconv_file(tmp_path, rng, case, model=False)
    kf = layoutconv.open(path)
    with pytest.raises(ConfigError, match="needs its output_shape"):
        kf.conv(name, subsample=subsample)
    record = kf.conv(name, subsample=subsample, output_shape=out)
    assert kf.conv(name, subsample=subsample, output_shape=(None, filters, *out)) == record  # Keras 1's own 4-tuple
    sizes = tuple(input_size(backend, mode, k, s, o) for k, s, o in zip(kernel, subsample, out))
    x = input_for(rng, order, channels, sizes)
    check_record(record, x, keras1_deconv(x, w, b, dim_ordering=order, backend=backend, border_mode=mode,
                                          subsample=subsample, output_size=out), order)
    with pytest.raises(FileFormatError, match="does not match its kernel"):
        kf.conv(name, subsample=subsample, output_shape=(None, filters + 1, *out))


# -- what is refused, and why ---------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        pytest.param({"output_shape": (2, 14)}, ConfigError, "smaller than its kernel allows", id="output-smaller-than-kernel"),
        pytest.param({"output_shape": (12,)}, ConfigError, "2 positive output sizes", id="output-shape-one-size"),
        pytest.param({"output_shape": (12, None)}, ConfigError, "2 positive output sizes", id="output-shape-none"),
        pytest.param({"output_shape": (12, 14), "border_mode": "causal"}, ConfigError, "Invalid Keras 1 border_mode", id="causal"),
        pytest.param({"output_shape": (12, 14), "output_padding": 1}, ConfigError, "Unknown or repeated", id="output_padding-kwarg"),
    ],
)
def test_deconvolution2d_argument_errors(tmp_path, rng, kwargs, error, match):
    path, name, _, _ = deconv_file(tmp_path, rng, "th-theano-valid-3x4-stride2x3", model=False)
    with pytest.raises(error, match=match):
        layoutconv.open(path).conv(name, subsample=(2, 3), **kwargs)


def test_deconvolution2d_has_no_convention(tmp_path, rng):
    path, name, _, _ = deconv_file(tmp_path, rng, "tf-tensorflow-same-3x4-stride2")
    with pytest.raises(ConfigError, match="has no Convention"):
        layoutconv.open(path).convention(name)


def test_theano_deconvolution_same_with_even_kernel_and_stride_is_refused(tmp_path, rng):
    path, name, _, _ = deconv_file(tmp_path, rng, "th-theano-same-even2x4-stride1")
    layoutconv.open(path).conv(name)  # stride 1: Keras 1's crop keeps everything (the oracle test above)
    import h5py

    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        config["config"][0]["config"]["subsample"] = [2, 1]
        f.attrs["model_config"] = json.dumps(config).encode()
    with pytest.raises(UnsupportedError, match=r"crops the output to ceil\(input / stride\)"):
        layoutconv.open(path).conv(name)


def test_theano_deconvolution_tf_ordering_needs_keras_1_2_1(tmp_path, rng):
    path, name, _, _ = deconv_file(tmp_path, rng, "tf-theano-same-odd3x5-stride2", keras_version="1.2.0")
    with pytest.raises(UnsupportedError, match="Keras 1.2.1 or later") as exc:
        layoutconv.open(path).conv(name)
    assert "output_shape unconverted" in str(exc.value)
    assert isinstance(layoutconv.open(path, backend="tensorflow").conv(name), layoutconv.ConvTranspose)


def test_full_border_mode_is_theano_only(tmp_path, rng):
    path, name, _, _ = deconv_file(tmp_path, rng, "th-theano-full-2x3-stride1x2")
    with pytest.raises(ConfigError, match="'full' is a Theano border mode"):
        layoutconv.open(path, backend="tensorflow").conv(name)
    path, name, _, _ = conv_file(tmp_path, rng, "tf-theano-full-3x2-stride1x2")
    with pytest.raises(ConfigError, match="'full' is a Theano border mode"):
        layoutconv.open(path, backend="tensorflow").conv(name)


def test_tensorflow_atrous_needs_equal_rates_and_stride_1(tmp_path, rng):
    """Keras 1's TensorFlow conv2d asserts both for a dilated convolution: such a layer only ran on Theano."""
    path, name, _, _ = conv_file(tmp_path, rng, "atrous-th-theano-valid-2x3-rate1x3-stride2x1")
    assert layoutconv.open(path).conv(name).dilation == (1, 3)
    with pytest.raises(ConfigError, match="cannot have run on Keras 1's TensorFlow backend") as exc:
        layoutconv.open(path, backend="tensorflow").conv(name)
    assert "backend='theano'" in str(exc.value)


def test_theano_convolution3d_same_with_even_kernel_is_refused(tmp_path, rng):
    path, name, _, _ = conv_file(tmp_path, rng, "3d-th-theano-valid-2x3x4-stride1x2x1", model=False)
    kf = layoutconv.open(path)  # kernel (2, 3, 4): even on two axes; no keras_version
    with pytest.raises(UnsupportedError, match=r"before Theano 0\.9"):
        kf.conv(name, border_mode="same")
    assert kf.conv(name, border_mode="valid").padding == "valid"
    assert layoutconv.open(path, backend="tensorflow").conv(name, border_mode="same").padding == "same_upper"


def keras1_theano_conv3d2d_same(x, w, b):
    """Keras 1.0-1.1.0's Theano conv3d for 'same' ('th'): pad (k - 1) // 2 in front and k // 2 behind, then a
    valid true convolution (conv3d2d flips the filters), stride 1."""
    x = np.asarray(x, np.float64)
    kernel = w.shape[2:]
    padded = np.pad(x, [(0, 0), (0, 0)] + [((k - 1) // 2, k // 2) for k in kernel])
    return keras1_conv(padded, w, b, dim_ordering="th", backend="theano", border_mode="valid", subsample=(1, 1, 1))


def test_theano_convolution3d_same_with_even_kernel_from_keras_1_1_0(tmp_path, rng):
    """Before 1.1.1 Keras 1 always padded (k - 1) // 2 in front (conv3d2d), so a recorded version settles it."""
    w = stored_kernel(rng, "th", 3, 2, (2, 3, 4))
    b = rng.normal(size=3).astype(np.float32)
    config = sequential(layer_config("Convolution3D", "convolution3d_1", nb_filter=3, kernel=(2, 3, 4), border_mode="same",
                                     subsample=(1, 1, 1), dim_ordering="th"))
    layers = [("convolution3d_1", [("convolution3d_1_W", w), ("convolution3d_1_b", b)])]
    record = layoutconv.open(write_keras1(tmp_path / "old.h5", layers, model_config=config, keras_version="1.1.0")).conv()
    assert record.padding == ((0, 1), (1, 1), (1, 2))
    x = input_for(rng, "th", 2, (5, 6, 7))
    check_record(record, x, keras1_theano_conv3d2d_same(x, w, b), "th")
    newer = write_keras1(tmp_path / "new.h5", layers, model_config=config, keras_version="1.1.1")
    with pytest.raises(UnsupportedError, match="depends on the Theano version"):
        layoutconv.open(newer).conv()
    config["config"][0]["config"]["subsample"] = [1, 2, 1]  # Keras 1.1.0 asserted stride 1 for 'same'
    strided = write_keras1(tmp_path / "strided.h5", layers, model_config=config, keras_version="1.1.0")
    with pytest.raises(ConfigError, match="asserted stride 1"):
        layoutconv.open(strided).conv()


def test_keras1_refuses_groups_dilation_on_plain_classes_and_mismatched_configs(tmp_path, rng):
    path, name, _, _ = conv_file(tmp_path, rng, "th-theano-valid-3x5-stride2x1")
    kf = layoutconv.open(path)
    with pytest.raises(ConfigError, match="no grouped convolutions"):
        kf.conv(name, groups=2)
    with pytest.raises(ConfigError, match="has no atrous_rate"):
        kf.conv(name, atrous_rate=(2, 1))
    with pytest.raises(ConfigError, match="contradicts the file's config"):
        kf.conv(name, subsample=(1, 1))
    with pytest.raises(ConfigError, match="contradicts the file's config"):
        kf.conv(name, border_mode="same")
    assert kf.conv(name, subsample=(2, 1), border_mode="valid", groups=1) == kf.conv(name)
    with pytest.raises(ConfigError, match="Unknown or repeated hyperparameter"):
        kf.conv(name, output_padding=1)
    import h5py

    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        config["config"][0]["config"]["nb_row"] = 4
        f.attrs["model_config"] = json.dumps(config).encode()
    with pytest.raises(FileFormatError, match="nb_row=3 as the 'th' kernel"):
        layoutconv.open(path).conv(name)


@pytest.mark.parametrize(
    "key, value",
    [("subsample", ["a", 1]), ("subsample", None), ("dim_ordering", ["th"]), ("border_mode", "bogus"), ("activation", "nope")],
    ids=["subsample-str", "subsample-null", "dim_ordering-list", "border_mode-unknown", "activation-unknown"],
)
def test_corrupt_config_values_are_typed_errors(tmp_path, rng, key, value):
    path, name, _, _ = conv_file(tmp_path, rng, "tf-tensorflow-same-3x5-stride2x1")
    import h5py

    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        config["config"][0]["config"][key] = value
        f.attrs["model_config"] = json.dumps(config).encode()
    kf = layoutconv.open(path)
    if value is None:  # not recorded: the default, said so
        assert kf.hyperparameters_of(name)["stride"] == ((1, 1), "default")
        return
    with pytest.raises(layoutconv.LayoutError):
        kf.conv(name)
    assert name in kf.summary()  # inspect reports the layer's error instead of failing


def test_separable_convolution2d_is_refused_by_name(tmp_path, rng):
    depthwise, pointwise = rng.normal(size=(3, 3, 2, 1)).astype(np.float32), rng.normal(size=(1, 1, 2, 4)).astype(np.float32)
    layers = [("separableconvolution2d_1", [("separableconvolution2d_1_depthwise_kernel:0", depthwise),
                                            ("separableconvolution2d_1_pointwise_kernel:0", pointwise)])]
    kf = layoutconv.open(write_keras1(tmp_path / "sep.h5", layers))
    with pytest.raises(UnsupportedError, match="SeparableConvolution2D"):
        kf.conv("separableconvolution2d_1")


def test_inspect_reports_keras1_2d_layers(tmp_path, rng):
    path, name, _, _ = conv_file(tmp_path, rng, "tf-theano-full-3x2-stride1x2")
    kf = layoutconv.open(path)
    text = kf.summary()
    assert "keras1-tf2d (H W I O)" in text and "full -> [[2, 2], [1, 1]] (config)" in text
    assert f"{name}: layout from Keras 1 Convolution2D with dim_ordering='tf' (model config)" in text
    info = {layer["name"]: layer["conv"] for layer in kf.to_dict()["layers"]}[name]
    assert info["flip"] is True and info["stride"] == [1, 2] and info["data_format"] == "channels_last"
    assert "Every spatial axis" in text or "every spatial axis" in text
