"""What old Keras versions and backends computed, as tables: hyperparameter names, flips, paddings.

Facts used here (verified against the Keras 1.x/2.x and Theano sources, see
``docs/keras-legacy.md``):

* Theano's ``conv2d`` computes a true convolution (``filter_flip=True``), so
  a kernel trained under Theano is the canonical cross-correlation kernel
  reversed along K.  Every other backend cross-correlates.
* Keras ``'same'`` under Theano is Theano's ``'half'`` mode: pad
  ``r // 2`` on both sides (``r = dilation * (K - 1) + 1``) and, for an even
  kernel, keep the first ``ceil(L / s)`` outputs.  Its canonical form is the
  explicit padding ``(r // 2, (r - 1) // 2)`` for every input length and stride
  (derivation in the docs, checked by the tests).
* Keras ``'same'`` under TensorFlow (and in Keras 3) is ``same_upper``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from .. import layouts
from ..adapters._keras_common import KINDS
from ..conv import PADDING_RULES
from ..conventions import CONVENTIONS, Convention
from ..errors import ConfigError, ShapeError, fail

#: backend name -> does its convolution flip the kernel (true convolution)?
BACKEND_FLIPS: dict[str, bool] = {
    "theano": True,
    "tensorflow": False,
    "cntk": False,
    "mxnet": False,
    "jax": False,
    "torch": False,
    "numpy": False,
    "openvino": False,
}

#: Keras layer classes that are 1-D convolutions with a plain kernel and bias.
CONV1D_TYPES = ("Conv1D", "Convolution1D", "AtrousConvolution1D")

#: Keras 2/3 class name -> (kind name, spatial rank), from the Keras adapters' table (conv, transpose, depthwise, separable).
CONV_CLASSES: dict[str, tuple[str, int]] = {cls: (kind.name, rank) for kind in KINDS for rank, cls in kind.classes.items()}
CONV_CLASSES.update({"Convolution2D": ("conv", 2), "Convolution3D": ("conv", 3)})  # Keras 2 aliases
#: Keras 1 class name -> (kind name, spatial rank): the 2-D and 3-D classes of keras/layers/convolutional.py (1.0-1.2.2).
#: ``AtrousConvolution2D`` and ``Deconvolution2D`` exist from Keras 1.0.8; ``Convolution1D`` is read by ``conv1d``.
KERAS1_CONV_CLASSES: dict[str, tuple[str, int]] = {
    "Convolution2D": ("conv", 2),
    "AtrousConvolution2D": ("conv", 2),
    "Deconvolution2D": ("transpose", 2),
    "Convolution3D": ("conv", 3),
}
#: Keras 1 classes layoutconv names but does not read (``conv`` refuses them with the reason).
KERAS1_UNREAD = {
    "SeparableConvolution2D": "Keras 1 SeparableConvolution2D (TensorFlow backend only) is not read by layoutconv",
}
#: Keras 1 config keys of the kernel's spatial sizes, by rank
KERAS1_KERNEL_KEYS: dict[int, tuple[str, ...]] = {2: ("nb_row", "nb_col"), 3: ("kernel_dim1", "kernel_dim2", "kernel_dim3")}
#: Keras 1 ``dim_ordering`` -> the kernel layout (layouts.LAYOUTS) by rank, and the input layout it implies
KERAS1_ND_LAYOUTS: dict[tuple[str, int], str] = {
    ("th", 2): "keras1-th2d", ("tf", 2): "keras1-tf2d", ("th", 3): "keras1-th3d", ("tf", 3): "keras1-tf3d",
}
KERAS1_DATA_FORMATS = {"th": "channels_first", "tf": "channels_last"}
#: keyword arguments accepted by ``KerasFile.conv`` for Keras 1 2-D/3-D layers (Keras 1 and layoutconv spellings)
KERAS1_ND_KWARGS = {
    "padding": "padding",
    "border_mode": "padding",
    "stride": "stride",
    "strides": "stride",
    "subsample": "stride",
    "dilation": "dilation",
    "dilation_rate": "dilation",
    "atrous_rate": "dilation",
    "groups": "groups",
    "activation": "activation",
    "dim_ordering": "dim_ordering",
    "output_shape": "output_shape",
}
#: kind name -> the kernels' axes after the spatial ones, in stored order
KIND_KERNELS: dict[str, tuple[str, ...]] = {kind.name: kind.kernels for kind in KINDS}

#: canonical hyperparameter -> Keras 1 config key, and -> Keras 2/3 config key
KERAS1_KEYS = {
    "filters": "nb_filter",
    "kernel_size": "filter_length",
    "padding": "border_mode",
    "stride": "subsample_length",
    "dilation": "atrous_rate",
    "use_bias": "bias",
    "input_dim": "input_dim",
    "activation": "activation",
}
KERAS2_KEYS = {
    "filters": "filters",
    "kernel_size": "kernel_size",
    "padding": "padding",
    "stride": "strides",
    "dilation": "dilation_rate",
    "groups": "groups",
    "use_bias": "use_bias",
    "data_format": "data_format",
    "activation": "activation",
}

#: keyword arguments accepted by ``KerasFile.conv1d`` (Keras spellings map to layoutconv's)
KWARG_ALIASES = {
    "padding": "padding",
    "border_mode": "padding",
    "stride": "stride",
    "strides": "stride",
    "subsample_length": "stride",
    "dilation": "dilation",
    "dilation_rate": "dilation",
    "atrous_rate": "dilation",
    "groups": "groups",
    "activation": "activation",
}

#: lower-cased layer-name stem (underscores removed) -> Keras class name, for files without a config
NAME_STEMS = {
    "convolution1d": "Convolution1D",
    "atrousconvolution1d": "AtrousConvolution1D",
    "conv1d": "Conv1D",
    "convolution2d": "Convolution2D",
    "conv2d": "Conv2D",
    "convolution3d": "Convolution3D",
    "conv3d": "Conv3D",
    "atrousconvolution2d": "AtrousConvolution2D",
    "deconvolution2d": "Deconvolution2D",
    "separableconvolution2d": "SeparableConvolution2D",
    "conv1dtranspose": "Conv1DTranspose",
    "conv2dtranspose": "Conv2DTranspose",
    "conv3dtranspose": "Conv3DTranspose",
    "separableconv1d": "SeparableConv1D",
    "separableconv2d": "SeparableConv2D",
    "depthwiseconv1d": "DepthwiseConv1D",
    "depthwiseconv2d": "DepthwiseConv2D",
    "dense": "Dense",
    "embedding": "Embedding",
    "lstm": "LSTM",
    "gru": "GRU",
    "simplernn": "SimpleRNN",
    "bidirectional": "Bidirectional",
    "timedistributed": "TimeDistributed",
    "batchnormalization": "BatchNormalization",
    "layernormalization": "LayerNormalization",
    "maxpooling1d": "MaxPooling1D",
    "averagepooling1d": "AveragePooling1D",
    "globalmaxpooling1d": "GlobalMaxPooling1D",
    "globalaveragepooling1d": "GlobalAveragePooling1D",
    "dropout": "Dropout",
    "flatten": "Flatten",
    "activation": "Activation",
    "merge": "Merge",
    "concatenate": "Concatenate",
    "add": "Add",
    "multiply": "Multiply",
    "input": "InputLayer",
    "inputlayer": "InputLayer",
    "reshape": "Reshape",
    "permute": "Permute",
}


def keras_activation(name: Any, generation: int) -> str:
    """A Keras activation name as layoutconv's, read under the Keras generation that wrote it.

    ``hard_sigmoid`` meant ``clip(0.2 x + 0.5, 0, 1)`` in Keras 1 and 2 and
    ``relu6(x + 3) / 6`` in Keras 3.  Other names mean the same in every version.
    """
    from ..activations import canonical

    if isinstance(name, str) and name.strip().lower() == "hard_sigmoid":
        return "hard_sigmoid_keras3" if generation >= 3 else "hard_sigmoid_keras2"
    if isinstance(name, dict):  # Keras 3 serialises some activations as {"class_name": ..., "config": ...}
        name = name.get("config", {}).get("name") if isinstance(name.get("config"), dict) else name.get("class_name")
    return canonical(name)


def check_backend(backend: str) -> str:
    """Normalise a backend name, refusing unknown ones."""
    name = str(backend).strip().lower()
    if name not in BACKEND_FLIPS:
        raise fail(ConfigError, "Unknown Keras backend", f"one of {sorted(BACKEND_FLIPS)}", f"backend={backend!r}")
    return name


def theano_same_pads(kernel_size: Any, dilation: Any = 1) -> tuple[tuple[int, int], ...]:
    """Canonical explicit pads of Theano's ``'same'`` (``'half'`` plus crop), for any size and stride, one pair per axis.

    ``kernel_size`` and ``dilation`` are integers (one axis) or one value per axis.

    >>> theano_same_pads(4), theano_same_pads(5), theano_same_pads(3, dilation=2)
    (((2, 1),), ((2, 2),), ((2, 2),))
    >>> theano_same_pads((3, 4), (1, 2))
    ((1, 1), (3, 3))
    """
    sizes = _per_axis(kernel_size)
    dilations = _per_axis(dilation, len(sizes))
    spans = [d * (k - 1) + 1 for k, d in zip(sizes, dilations)]
    return tuple((r // 2, (r - 1) // 2) for r in spans)


def _per_axis(value: Any, rank: int | None = None) -> tuple[int, ...]:
    """An integer or a sequence as one integer per axis (``rank`` axes when given)."""
    try:
        values = tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)
    except (TypeError, ValueError, OverflowError):  # a config value from a file may be anything
        raise fail(ConfigError, "Invalid per-axis value", "an integer or a list of integers", f"{value!r}") from None
    if rank is not None and len(values) == 1:
        values *= rank
    if rank is not None and len(values) != rank:
        raise fail(ConfigError, "Wrong number of per-axis values", f"one value or {rank} values", f"{value!r}")
    return values


def canonical_padding(padding: Any, backend: str | None, kernel_size: int, dilation: int = 1) -> Any:
    """A Keras padding word, read under ``backend``, as a :class:`~layoutconv.Conv` padding.

    ``kernel_size`` and ``dilation`` are integers (1-D) or one value per spatial axis.

    ``'valid'`` and ``'causal'`` mean the same everywhere; ``'same'`` is
    ``same_upper`` except under Theano (see :func:`theano_same_pads`);
    ``'full'`` (Theano only) pads ``r - 1`` on both sides.  Canonical values
    (``'same_upper'``, ``'same_lower'``, integers, ``(begin, end)`` pairs) pass through.
    """
    if not isinstance(padding, str):
        return padding
    word = padding.lower()
    theano = backend == "theano"
    if word == "same":
        return theano_same_pads(kernel_size, dilation) if theano else "same_upper"
    if word == "full":
        if not theano:
            raise fail(
                ConfigError,
                "Padding 'full' is a Theano border mode",
                "'valid', 'same' or 'causal' for this backend",
                f"padding='full' with backend {backend!r}",
            )
        sizes = _per_axis(kernel_size)
        spans = [d * (k - 1) + 1 for k, d in zip(sizes, _per_axis(dilation, len(sizes)))]
        return tuple((r - 1, r - 1) for r in spans)
    if word in PADDING_RULES:
        return word
    raise fail(
        ConfigError,
        "Invalid Keras padding",
        f"'valid', 'same', 'causal', 'full' (Theano) or a canonical value {PADDING_RULES}",
        f"padding={padding!r}",
    )


def keras1_deconv_axis(k: int, s: int, out: int, word: str, backend: str | None) -> tuple[tuple[int, int], int, int]:
    """One axis of a Keras 1 ``Deconvolution2D`` with output size ``out``: ``((crop_begin, crop_end), output_padding, n)``.

    Keras 1 fixes the output size (config ``output_shape``), and both backends
    compute the gradient of a convolution whose input has that size (Keras 1.2.2
    ``deconv2d`` in ``keras/backend/{tensorflow,theano}_backend.py``).  ``n`` is
    the input size that convolution gives back, the only one the layer accepts.

    * TensorFlow (``tf.nn.conv2d_transpose``): ``'valid'`` crops nothing and
      ``n = floor((out - k) / s) + 1``; ``'same'`` crops ``T = max((ceil(out/s) - 1) s + k - out, 0)``,
      ``T // 2`` first, and ``n = ceil(out / s)``.  ``'full'`` does not exist.
    * Theano (``AbstractConv2d_gradInputs``): crops ``p`` at both ends, ``p = 0``
      (``'valid'``), ``k // 2`` (``'same'`` is Theano's ``'half'``) or ``k - 1``
      (``'full'``), and ``n = floor((out + 2p - k) / s) + 1``.

    ``output_padding = out - (s (n - 1) + k - crop_begin - crop_end)``, always below ``s``.

    >>> keras1_deconv_axis(3, 2, 25, "valid", "tensorflow"), keras1_deconv_axis(4, 2, 10, "same", "tensorflow")
    (((0, 0), 0, 12), ((1, 1), 0, 5))
    >>> keras1_deconv_axis(3, 2, 24, "same", "theano"), keras1_deconv_axis(3, 1, 14, "full", "theano")
    (((1, 1), 1, 12), ((2, 2), 0, 16))
    """
    if backend == "theano":
        p = {"valid": 0, "same": k // 2, "full": k - 1}[word]
        begin = end = p
        n = (out + 2 * p - k) // s + 1
    elif word == "valid":
        begin = end = 0
        n = (out - k) // s + 1
    else:  # TensorFlow SAME
        n = -(-out // s)
        total = max((n - 1) * s + k - out, 0)
        begin, end = total // 2, total - total // 2
    return (begin, end), out - (s * (n - 1) + k - begin - end), n


def convention_for(layout: str, backend: str | None, data_format: str = "channels_last") -> Convention:
    """The :class:`Convention` a legacy layer's kernel follows (``layout``: a name of :data:`layoutconv.layouts.LAYOUTS`).

    >>> convention_for("keras1-th2d", "theano", "channels_first")
    Convention(name='keras1-th2d-theano', layout='O I H W', flipped=True, data_format='channels_first')
    >>> convention_for("H W I O", "tensorflow").name, convention_for("D H W I O", "theano").name
    ('keras2d', 'keras3d-theano')
    """
    flipped = BACKEND_FLIPS.get(backend or "", False)
    names = {
        ("keras1.0", False): "keras1.0-tensorflow",
        ("keras1.0", True): "keras1.0-theano",
        ("keras1.1", False): "keras1.1-tensorflow",
        ("keras1.1", True): "keras1.1-theano",
        ("keras", False): "keras",
        ("keras", True): "keras-theano",
    }
    key = names.get((layout, flipped))
    if key is None:  # a 2-d or 3-d layout (keras2d, keras1-th2d, or axis names): named after it and the backend family
        axes = layouts.LAYOUTS.get(layout, layout)
        named = layout if layout in layouts.LAYOUTS else next((n for n, a in layouts.LAYOUTS.items() if a == axes and n.startswith("keras")), axes)
        suffix = "-theano" if flipped else ("-tensorflow" if named.startswith("keras1") else "")
        return Convention(named + suffix, axes, flipped, data_format)
    base = CONVENTIONS[key]
    if data_format != base.data_format:
        base = dataclasses.replace(base, name=f"{base.name} ({data_format})", data_format=data_format)
    return base


def keras1_layouts(shape: tuple[int, ...]) -> list[str]:
    """The Keras 1 kernel layouts (``keras1.0``, ``keras1.1``) a 4-d shape fits."""
    fits = []
    for name in ("keras1.1", "keras1.0"):
        recipe = layouts.parse(name)
        if len(shape) == len(recipe.names) and all(shape[i] == 1 for i in recipe.singletons):
            fits.append(name)
    return fits


def keras1_layout_from_sizes(shape: tuple[int, ...], sizes: Mapping[str, int]) -> list[str]:
    """Keras 1 layouts whose reading of ``shape`` agrees with known sizes (``filters``, ``kernel_size``, ``input_dim``)."""
    found = []
    for name in keras1_layouts(shape):
        names = layouts.parse(name).names
        read = {"filters": shape[names.index("O")], "kernel_size": shape[names.index("K")], "input_dim": shape[names.index("I")]}
        if all(read[k] == v for k, v in sizes.items() if v is not None and k in read):
            found.append(name)
    return found


def choose_keras1_layout(shape: tuple[int, ...], *, bias_length: int | None = None, layout: str | None = None) -> str:
    """Decide between the Keras 1.0 and 1.1 kernel layouts for a bare 4-d kernel, or explain why not.

    A shape with a singleton on both axis 1 and axis 3 (e.g. ``(5, 1, 5, 1)``)
    fits both; the bias length (= filters) settles it when the two readings
    differ, otherwise ``layout='keras1.0'`` or ``'keras1.1'`` must be given.
    """
    shape = tuple(int(n) for n in shape)
    fits = keras1_layouts(shape)
    if layout is not None:
        key = {"keras1.0": "keras1.0", "1.0": "keras1.0", "keras1.1": "keras1.1", "1.1": "keras1.1", "1.2": "keras1.1"}.get(str(layout))
        if key is None:
            raise fail(ConfigError, "Unknown Keras 1 layout", "'keras1.0' or 'keras1.1'", f"layout={layout!r}")
        if key not in fits:
            raise fail(
                ShapeError,
                f"The kernel does not fit layout {key!r} ({layouts.LAYOUTS[key]})",
                f"a 4-d kernel with axes ({layouts.LAYOUTS[key]})",
                f"shape {shape}",
            )
        return key
    if not fits:
        raise fail(
            ShapeError,
            "The kernel is not a Keras 1 Convolution1D kernel",
            "(filter_length, 1, input_dim, nb_filter) for Keras 1.1-1.2 or (nb_filter, input_dim, filter_length, 1) for Keras 1.0",
            f"shape {shape}",
            "Keras 2 and 3 kernels are 3-d (kernel_size, input_dim, filters): use Conv1D(kernel, bias, layout='K I O').",
        )
    if len(fits) == 2 and bias_length is not None:
        fits = keras1_layout_from_sizes(shape, {"filters": bias_length}) or fits
    if len(fits) == 1:
        return fits[0]
    raise fail(
        ShapeError,
        f"The kernel shape {shape} fits both Keras 1 layouts",
        "a way to tell them apart",
        f"Keras 1.1-1.2 reading (filter_length={shape[0]}, input_dim={shape[2]}, nb_filter={shape[3]}) and "
        f"Keras 1.0 reading (nb_filter={shape[0]}, input_dim={shape[1]}, filter_length={shape[2]})",
        "Pass layout='keras1.1' (Keras 1.1 and 1.2) or layout='keras1.0'.",
    )
