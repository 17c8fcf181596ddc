"""Read convolution weights (Conv1D of every Keras; every Keras 2/3 convolution class) from Keras files without TensorFlow.

>>> kf = layoutconv.open("DeepCpf1_weights.h5")          # doctest: +SKIP
>>> kf.format, kf.backend, kf.backend_source             # doctest: +SKIP
('keras1.1-weights', 'theano', "inferred: no weight name ends in ':0' ...")
>>> conv = kf.conv1d()                                   # the canonical, unflipped Conv1D  # doctest: +SKIP
>>> module = layoutconv.to_torch(conv)                   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import operator
import re
import textwrap
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np

from .. import layouts
from ..adapters._keras_common import tidy_transpose, kernel_layout, keras_transpose_axis
from .._finite import NonFinite, find as find_nonfinite, report_lines
from ..chain import Chain
from ..conv import Conv, Conv1D
from ..conventions import Convention
from ..errors import ConfigError, FileFormatError, LayoutError, ShapeError, UnsupportedError, fail
from ..transpose import ConvTranspose
from . import formats, semantics
from .formats import FORMATS, Layer, Source, Weight

#: Used when neither the file's config nor the caller gives a value.
DEFAULTS: dict[str, Any] = {"padding": "valid", "stride": 1, "dilation": 1, "groups": 1, "activation": "linear"}

#: Said by ``inspect`` and ``convert`` about every Theano file (see docs/keras-legacy.md, "The flip").
THEANO_LOAD_WARNING = (
    "Loading this file into tf.keras (tf_keras) or Keras 3 directly gives wrong outputs: their load_weights "
    "copies each Theano kernel as stored and does not flip it (measured with tf_keras 2.21 and Keras 3.15). "
    "layoutconv flips it: use layoutconv.open(path).conv1d() (.conv(name) for any layer) or `layoutconv convert`."
)


@dataclass(frozen=True)
class KerasFile:
    """What a Keras weight file holds, as read by :func:`open` (an immutable record; weights are read on demand).

    ``format`` is one of :data:`layoutconv.legacy.formats.FORMATS`.
    ``keras_version`` and ``backend`` are ``None`` when unknown; the
    ``*_source`` fields say how each was determined, and
    ``backend_inferred`` is true when the backend was deduced rather than read.
    """

    path: str
    format: str
    keras_version: str | None
    keras_version_source: str
    backend: str | None
    backend_source: str
    backend_inferred: bool
    layers: tuple[Layer, ...]
    generation: int = field(default=2, repr=False)
    _source: Source = field(default=Source("hdf5"), repr=False, compare=False)
    #: the whole model's config (parsed JSON) of a full save or a .keras archive; None for weights-only files
    model_config: Any = field(default=None, repr=False, compare=False)

    # -- lookup -----------------------------------------------------------
    @property
    def description(self) -> str:
        return FORMATS[self.format]

    @property
    def conv1d_layers(self) -> tuple[Layer, ...]:
        return tuple(layer for layer in self.layers if layer.is_conv1d)

    @property
    def conv_layers(self) -> tuple[Layer, ...]:
        """Every convolution layer :meth:`conv` reads: Conv1D of every Keras, the Keras 2/3 classes of
        :data:`semantics.CONV_CLASSES` and the Keras 1 classes of :data:`semantics.KERAS1_CONV_CLASSES`."""
        return tuple(layer for layer in self.layers if layer.is_conv1d or self._conv_class(layer) is not None)

    def with_architecture(self, config: Any) -> "KerasFile":
        """This file with a model config from elsewhere (a ``model.json`` parsed), as a full save would carry it.

        A weights-only file (``save_weights``) names its layers but not what they
        are; with the architecture each layer is typed and configured from it, so
        :meth:`conv` and whole-model reading take stride, padding and activation
        from the config instead of defaults.
        """
        import dataclasses

        cfgs = formats.config_layers(config)
        if not cfgs:
            raise fail(
                ConfigError,
                "The architecture has no layers",
                "a Keras model config (model.to_json(): class_name and config with layers)",
                f"a {type(config).__name__}",
            )
        typed = [formats._typed(layer.name, layer.weights, cfgs, "architecture (model config given by the caller)") for layer in self.layers]
        if self.generation == 1:
            version = config.get("keras_version") if isinstance(config, dict) else None
            typed, _ = formats._keras1_layouts(typed, version or self.keras_version)
        else:
            typed = [formats._keras2_layout(layer) for layer in typed]
        return dataclasses.replace(self, layers=tuple(typed), model_config=config)

    def layer(self, name: str | None = None) -> Layer:
        """The layer called ``name``; without a name, the file's single Conv1D layer."""
        if name is None:
            convs = self.conv1d_layers
            if len(convs) == 1:
                return convs[0]
            if not convs:
                listing = ", ".join(f"{layer.name} ({layer.type or 'unknown type'})" for layer in self.layers[:20])
                raise fail(
                    ConfigError,
                    f"{self.path} has no Conv1D layer",
                    f"a layer of type {' / '.join(semantics.CONV1D_TYPES)}",
                    f"the layers {listing or '(none)'}",
                    "If a layer of unknown type is a 1-D convolution, pass its name: conv1d('name').",
                )
            raise fail(
                ConfigError,
                f"{self.path} has {len(convs)} Conv1D layers",
                "layer_name= to pick one",
                f"the Conv1D layers {[layer.name for layer in convs]}",
                f"For example conv1d({convs[0].name!r}).",
            )
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise fail(
            ConfigError,
            f"{self.path} has no layer {name!r}",
            "one of the file's layer names",
            f"{[layer.name for layer in self.layers][:30]}",
        )

    def weights(self, layer_name: str | None = None) -> list[np.ndarray]:
        """The raw arrays of a layer, exactly as stored (native byte order), in the file's order."""
        layer = self.layer(layer_name)
        return formats.read_arrays(self.path, self._source, layer.weights)

    def reading(self, *, hand_over: bool = False, memory: Any = None) -> Any:
        """A context in which the file stays open (checked once) for reading many layers.

        ``hand_over=True``: the arrays read are given to the records built of
        them without a copy (read-only; for a caller that keeps no other
        reference to them).  ``memory``: where the arrays read get their memory
        (:func:`layoutconv.legacy.formats.session`).

        >>> with kf.reading():                                  # doctest: +SKIP
        ...     records = [kf.conv(layer.name) for layer in kf.conv_layers]
        """
        return formats.session(self.path, self._source, hand_over=hand_over, memory=memory)

    # -- conversion -------------------------------------------------------
    def convention(self, layer_name: str | None = None, *, layout: str | None = None, **hyperparameters: Any) -> Convention:
        """The :class:`~layoutconv.conventions.Convention` the layer's raw kernel follows.

        Conv1D layers and plain 2-D/3-D convolutions (``Conv2D``, Keras 1
        ``Convolution2D`` ...); ``hyperparameters`` may settle a Keras 1 layer's
        ``dim_ordering`` (see :meth:`conv`).  Without a name: the file's only
        Conv1D, else its only convolution.
        """
        with self._context(layer_name):
            layer = self._typed_conv_layer(self._default_name(layer_name), None)
            if layer.is_conv1d or layer.type is None:
                layer = self._conv_layer(layer.name)
                name, _ = self._layout(layer, layout)
                self._check_backend()
                return semantics.convention_for(name, self.backend, self._config(layer).get("data_format", "channels_last"))
            plan = self._nd_plan(layer, hyperparameters)
            if plan.kind != "conv":
                raise fail(
                    ConfigError,
                    f"Layer {layer.name!r} ({layer.type}) has no Convention",
                    "a Conv1D/2D/3D layer (a Convention describes one convolution kernel)",
                    f"a {plan.kind} layer",
                    "Its record from conv() is explained in PyTorch's terms.",
                )
            return semantics.convention_for(plan.layout, self.backend, plan.data_format)

    def conv1d(self, layer_name: str | None = None, *, layout: str | None = None, **hyperparameters: Any) -> Conv1D:
        """The layer as a canonical :class:`~layoutconv.Conv1D` (cross-correlation, kernel ``O I K``).

        The kernel is flipped when the backend convolved (Theano).  Stride,
        dilation, groups, padding and activation come from the file's config where it has
        one; otherwise from ``hyperparameters`` (``padding``, ``stride``,
        ``dilation``, ``groups``, ``activation``; Keras spellings such as ``border_mode``,
        ``strides`` or ``subsample_length`` are accepted), else the defaults
        ``padding='valid'``, stride 1, dilation 1, no activation
        (:meth:`hyperparameters_of` says which were assumed).  A keyword that contradicts
        the config is a :class:`~layoutconv.ConfigError`.  Padding words are
        read under the file's backend: ``'same'`` is Theano's rule for Theano
        files and ``same_upper`` otherwise.

        ``layout`` (``'keras1.0'`` or ``'keras1.1'``) settles a Keras 1 kernel
        whose shape fits both layouts.
        """
        with self._context(layer_name):
            layer = self._conv_layer(layer_name)
            layout_name, _ = self._layout(layer, layout)
            self._check_backend()
            kernel_rec, bias_rec = _kernel_and_bias(layer, self.path)
            resolved, _ = self._resolve(layer, layout_name, hyperparameters)
            arrays = formats.read_arrays(self.path, self._source, [w for w in (kernel_rec, bias_rec) if w is not None])
            kernel = arrays[0]
            bias = arrays[1] if bias_rec is not None else None
            convention = semantics.convention_for(layout_name, self.backend, self._config(layer).get("data_format", "channels_last"))
            return convention.conv1d(kernel, bias, **resolved)

    def conv(self, layer_name: str | None = None, *, layer_type: str | None = None, **hyperparameters: Any) -> Conv | ConvTranspose | Chain:
        """Any Keras convolution layer as its canonical record (weights read as stored, Theano kernels flipped).

        ==========================  =============================================================
        Keras layer                 record
        ==========================  =============================================================
        ``Conv1D/2D/3D``            :class:`~layoutconv.Conv` (``groups`` from the config)
        ``Conv1D/2D/3DTranspose``   :class:`~layoutconv.ConvTranspose`
        ``DepthwiseConv1D/2D``      ``Conv`` with ``groups = in_channels``
        ``SeparableConv1D/2D``      :class:`~layoutconv.Chain` (depthwise ``Conv``, then a
                                    pointwise ``Conv`` holding the bias and activation)
        Keras 1 ``Convolution2D``,  ``Conv`` (kernel ``O I H W`` for ``dim_ordering='th'``,
        ``AtrousConvolution2D``,    ``H W I O`` for ``'tf'``; 3-D alike)
        ``Convolution3D``
        Keras 1 ``Deconvolution2D`` ``ConvTranspose`` (kernel stored like ``Convolution2D``'s; crops
                                    and ``output_padding`` from the config's ``output_shape``)
        ==========================  =============================================================

        Conv1D layers (Keras 1, 2 and 3) go through :meth:`conv1d`.  Stride,
        dilation, groups, padding, output_padding and activation come from the
        file's config; a keyword (Keras or layoutconv spelling) fills what the
        config lacks and must agree with what it has.  Under TensorFlow and
        Keras 3 ``'same'`` is ``same_upper`` on every axis; under Theano (Keras 2)
        it is Theano's half rule per axis (:func:`semantics.theano_same_pads`) and
        every kernel is reversed along all its spatial axes (Theano convolved).
        The kernel layout of Keras 2/3 does not depend on ``data_format``; that of
        Keras 1 follows the layer's ``dim_ordering`` (docs/keras-legacy.md, "Keras 1
        2-D and 3-D layers").

        Files without a config (``save_weights``) take every hyperparameter from
        the keywords, per axis (``stride=(2, 1)``), else the defaults; Keras 1 layers
        also take ``dim_ordering`` (``'th'`` or ``'tf'``; settled by the bias length
        when only one reading fits) and a ``Deconvolution2D`` its ``output_shape``
        (``(rows, cols)``, or the config's 4-tuple).  :meth:`hyperparameters_of` says
        what was assumed.  A layer whose type the file does not say is read as a
        Conv1D when its kernel fits one (3 axes in Keras 2/3; a Keras 1 Conv1D layout,
        with its size-1 axis), otherwise as ``Conv2D``/``Conv3D`` (Keras 1:
        ``Convolution2D``/``3D``) by its number of axes; ``layer_type=`` names the
        class instead.
        """
        with self._context(layer_name):
            layer = self._typed_conv_layer(layer_name, layer_type)
            if layer.is_conv1d or layer.type is None:
                return self.conv1d(layer.name, **hyperparameters)
            plan = self._nd_plan(layer, hyperparameters)
            arrays = formats.read_arrays(self.path, self._source, list(layer.weights))
            kernels = [a for a in arrays if a.ndim == plan.rank + 2]
            bias = next((a for a in arrays if a.ndim == 1), None)
            if plan.flip:  # Theano convolved: reverse the stored kernel along its spatial axes, wherever the layout has them
                axes = layouts.spatial_axes(plan.layout)
                kernels = [np.ascontiguousarray(np.flip(k, axis=axes)) for k in kernels]
            return _ND_BUILDERS[plan.kind](plan, kernels, bias)

    # -- reports ----------------------------------------------------------
    def summary(self) -> str:
        """A text report: file facts with their sources, then one row per layer."""
        lines = [
            f"File     {self.path}",
            f"Format   {self.format}: {self.description}",
            f"Version  {self.keras_version or 'unknown'} ({self.keras_version_source})",
            f"Backend  {self.backend or ('any' if self.generation == 3 else 'unknown')} ({self.backend_source})",
        ]
        flip = semantics.BACKEND_FLIPS.get(self.backend or "")
        if self.backend == "theano":
            lines.append("Flip     yes: Theano computed a true convolution; canonical kernels are reversed along K (every spatial axis)")
        elif flip is False or self.generation == 3:
            lines.append("Flip     no: this backend cross-correlates like PyTorch and ONNX")
        if self.backend_inferred:
            other = "tensorflow" if self.backend == "theano" else "theano"
            lines.append(f"Note     the backend was inferred, not recorded; pass backend='{other}' if the model was trained with {other}")
        for text in self.load_warnings():
            lines += textwrap.wrap(text, 100, initial_indent="Warning  ", subsequent_indent=" " * 9)
        rows = [("layer", "type", "kernel shape", "layout", "flip", "padding")]
        for layer in self.layers:
            info = self._conv_info(layer)
            kernel = layer.kernel or (layer.weights[0] if layer.weights else None)
            shape = str(kernel.shape) if kernel else "-"
            if info is None:
                rows.append((layer.name, layer.type or "?", shape, "-", "-", "-"))
            elif "error" in info:
                rows.append((layer.name, layer.type or "?", shape, info.get("layout") or "undecided", "?", "? (see below)"))
            else:
                pad = info["padding"]
                word = f"{pad['keras']} -> " if pad["keras"] is not None and pad["keras"] != pad["canonical"] else ""
                rows.append(
                    (
                        layer.name,
                        layer.type or "?",
                        shape,
                        f"{info['layout']} ({info['layout_axes']})",
                        "yes" if info["flip"] else "no",
                        f"{word}{pad['canonical']} ({pad['source']})",
                    )
                )
        widths = [max(len(str(r[i])) for r in rows) for i in range(5)]
        lines.append("")
        lines += ["  ".join(str(c).ljust(w) for c, w in zip(r[:5], widths)) + "  " + str(r[5]) for r in rows]
        notes = []
        for layer in self.conv1d_layers if self.generation > 1 else self.conv_layers:
            info = self._conv_info(layer) or {}
            if "error" in info:
                notes.append(f"{layer.name}: {info['error']}")
            elif self.generation == 1:
                notes.append(f"{layer.name}: layout from {info['layout_source']}")
        if notes:
            lines.append("")
            lines += notes
        lines.append("")
        lines += report_lines(self.nonfinite(), self._finite_checked)
        return "\n".join(line.rstrip() for line in lines)

    def to_dict(self) -> dict[str, Any]:
        """Everything :meth:`summary` shows, as JSON-ready data (``layoutconv inspect --json``)."""
        return {
            "path": self.path,
            "format": self.format,
            "format_description": self.description,
            "keras_version": {"value": self.keras_version, "source": self.keras_version_source},
            "backend": {"value": self.backend, "source": self.backend_source, "inferred": self.backend_inferred},
            "layers": [
                {
                    "name": layer.name,
                    "type": layer.type,
                    "type_source": layer.type_source,
                    "weights": [{"name": w.name, "shape": list(w.shape), "dtype": w.dtype} for w in layer.weights],
                    "hyperparameters": layer.hyperparameters,
                    "conv1d": self._conv_info(layer) if layer.is_conv1d else None,
                    "conv": self._conv_info(layer),
                }
                for layer in self.layers
            ],
            "warnings": list(self.load_warnings()),
            "nonfinite": [record.to_dict() for record in self.nonfinite()],
            "finite_checked": self._finite_checked,
        }

    def load_warnings(self) -> tuple[str, ...]:
        """What goes wrong when this file is loaded by its own frameworks instead of layoutconv (Theano files)."""
        if self.backend != "theano":
            return ()
        text = THEANO_LOAD_WARNING
        if self.generation == 1:
            text += " Keras 3 refuses this file's 4-d Keras 1 kernels; copied in by hand without the flip, they give the same wrong outputs."
        if self.backend_inferred:
            text += " The backend was inferred (see Note): this holds if the model was trained with Theano."
        return (text,)

    def nonfinite(self) -> tuple[NonFinite, ...]:
        """NaN and Inf in every stored floating-point weight, indexed in the file's own layout.

        Reads every weight once (the reader has size-checked them).  A Conv1D
        kernel's record names its layout (``K I O``, ``K 1 I O`` ...).
        """
        return self._finite_check[0]

    @property
    def _finite_checked(self) -> int:
        return self._finite_check[1]

    @functools.cached_property
    def _finite_check(self) -> tuple[tuple[NonFinite, ...], int]:
        jobs: list[tuple[Weight, str, str, str | None]] = []  # (weight, role, name, layout)
        for layer in self.layers:
            for w in layer.weights:
                if not _is_float(w.dtype):
                    continue
                name = w.name if layer.name in w.name else f"{layer.name}/{w.name}"
                if layer.is_conv1d and w is layer.kernel:
                    jobs.append((w, "kernel", name, layouts.parse(layer.layout).layout if layer.layout else None))
                elif layer.is_conv1d and w is layer.bias:
                    jobs.append((w, "bias", name, None))
                else:
                    jobs.append((w, "weight", name, None))
        if not jobs:
            return (), 0
        arrays = formats.read_arrays(self.path, self._source, [job[0] for job in jobs])
        found = [find_nonfinite(array, name, role=role, layout=axes) for (_, role, name, axes), array in zip(jobs, arrays)]
        return tuple(r for r in found if r is not None), len(jobs)

    # -- internals --------------------------------------------------------
    @contextlib.contextmanager
    def _context(self, layer_name: str | None) -> Iterator[None]:
        try:
            yield
        except LayoutError as exc:
            if self.path in str(exc):
                raise
            where = f"layer {layer_name!r} of {self.path}" if layer_name else self.path
            raise type(exc)(f"{where}: {exc}") from None

    def _check_backend(self) -> None:
        if self.generation == 3:
            return
        if self.backend not in semantics.BACKEND_FLIPS:
            raise fail(
                ConfigError,
                "The file's backend is unknown, so whether the kernel is flipped is unknown",
                f"one of {sorted(semantics.BACKEND_FLIPS)}",
                f"{self.backend!r} ({self.backend_source})",
                "Pass backend='theano' or backend='tensorflow' to layoutconv.open().",
            )

    def _conv_layer(self, layer_name: str | None) -> Layer:
        layer = self.layer(layer_name)
        if layer.is_conv1d or (layer.type is None and layer.kernel is not None):
            return layer
        raise fail(
            ConfigError,
            f"Layer {layer.name!r} is not a Conv1D layer",
            f"a layer of type {' / '.join(semantics.CONV1D_TYPES)}",
            f"type {layer.type} ({layer.type_source})",
            f"The Conv1D layers are {[c.name for c in self.conv1d_layers]}.",
        )

    def _layout(self, layer: Layer, layout: str | None) -> tuple[str, str]:
        kernel = layer.kernel
        if kernel is None:
            raise fail(ShapeError, f"Layer {layer.name!r} has no kernel", "a weight with 3 or 4 axes", f"weights {[w.shape for w in layer.weights]}")
        bias_length = layer.bias.shape[0] if layer.bias is not None else None
        if self.generation == 1:
            if layout is not None:
                return semantics.choose_keras1_layout(kernel.shape, bias_length=bias_length, layout=layout), "given by the caller (layout=...)"
            if layer.layout:
                return layer.layout, layer.layout_source
            decided = {c.layout for c in self.conv1d_layers if c.layout}
            fits = semantics.keras1_layouts(kernel.shape)
            if len(decided) == 1 and next(iter(decided)) in fits:
                return next(iter(decided)), "the layout of the file's other Conv1D layers"
            return semantics.choose_keras1_layout(kernel.shape, bias_length=bias_length), f"kernel shape {kernel.shape}"
        if layout is not None and layouts.parse(layout).names != layouts.parse("keras").names:
            raise fail(ConfigError, "Keras 2 and 3 files have one kernel layout", "layout=None or 'keras'", f"layout={layout!r}")
        if len(kernel.shape) != 3:
            raise fail(
                ShapeError,
                f"Layer {layer.name!r} does not hold a Conv1D kernel",
                "a 3-d kernel (kernel_size, input_dim, filters)",
                f"shape {kernel.shape}",
            )
        return "keras", layer.layout_source or "Keras 2/3 kernels are (kernel_size, input_dim, filters)"

    def _config(self, layer: Layer) -> dict[str, Any]:
        """The layer's config in layoutconv's names (``stride``, ``dilation``, ``padding`` word, ...)."""
        keys = semantics.KERAS1_KEYS if self.generation == 1 else semantics.KERAS2_KEYS
        hp = layer.hyperparameters or {}
        out: dict[str, Any] = {}
        for canon, key in keys.items():
            if key in hp and hp[key] is not None:
                value = hp[key]
                if isinstance(value, (list, tuple)) and len(value) == 1:
                    value = value[0]
                out[canon] = value
        return out

    def _resolve(self, layer: Layer, layout_name: str, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """Canonical hyperparameters and where each came from ('config', 'argument', 'default')."""
        given: dict[str, Any] = {}
        for key, value in kwargs.items():
            canon = semantics.KWARG_ALIASES.get(key)
            if canon is None:
                raise fail(
                    ConfigError,
                    f"Unknown hyperparameter {key!r}",
                    f"some of {sorted(semantics.KWARG_ALIASES)}",
                    f"{key}={value!r}",
                    "Kernel size, filters and bias come from the weights themselves.",
                )
            if canon in given:
                raise fail(ConfigError, f"{canon!r} given twice", "one spelling per hyperparameter", f"{sorted(kwargs)}")
            given[canon] = value
        config = self._config(layer)
        kernel = layer.kernel
        assert kernel is not None
        names = layouts.parse(layout_name).names
        size = {axis: kernel.shape[i] for i, axis in enumerate(names) if axis != "1"}
        _check_config_sizes(layer, config, size)

        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for key in ("stride", "dilation", "groups"):
            if key in config:
                values[key], sources[key] = config[key], "config"
                if key in given and given[key] != config[key]:
                    raise fail(
                        ConfigError,
                        f"{key}={given[key]!r} contradicts the file's config",
                        f"{key}={config[key]!r} (as recorded) or no {key} argument",
                        f"{key}={given[key]!r}",
                    )
            elif key in given:
                values[key], sources[key] = given[key], "argument"
            else:
                values[key], sources[key] = DEFAULTS[key], "default"
        if not isinstance(values["dilation"], (int, np.integer)) or isinstance(values["dilation"], bool):
            raise fail(ConfigError, "Invalid value for `dilation`", "a positive integer", f"dilation={values['dilation']!r}")
        k, d = size["K"], int(values["dilation"])
        def settle(key: str, from_config: Any, from_args: Any, agree: Callable[[Any, Any], bool], shown: str = "") -> None:
            """The config wins; an argument that contradicts it is an error; else the argument; else the default."""
            if from_config is not None:
                values[key], sources[key] = from_config, "config"
                if from_args is not None and not agree(from_config, from_args):
                    raise fail(
                        ConfigError,
                        f"{key}={given[key]!r} contradicts the file's config",
                        f"{key}={config[key]!r} (as recorded{shown.format(from_config)}) or no {key} argument",
                        f"{key}={given[key]!r}" + (f" (canonical {from_args})" if shown else ""),
                    )
            elif from_args is not None:
                values[key], sources[key] = from_args, "argument"
            else:
                values[key], sources[key] = DEFAULTS[key], "default"

        def read(key: str, convert: Callable[[Any], Any]) -> tuple[Any, Any]:
            return tuple(convert(src[key]) if key in src else None for src in (config, given))  # type: ignore[return-value]

        stride = values["stride"]
        settle(
            "padding",
            *read("padding", lambda word: semantics.canonical_padding(word, self.backend, k, d)),
            lambda a, b: _same_padding(a, b, k, stride, d),
            "; canonical {}",
        )
        sources["padding_word"] = str(config.get("padding", given.get("padding", DEFAULTS["padding"])))
        settle("activation", *read("activation", lambda name: semantics.keras_activation(name, self.generation)), operator.eq)
        return values, sources

    def hyperparameters_of(
        self, layer_name: str | None = None, *, layer_type: str | None = None, **hyperparameters: Any
    ) -> dict[str, tuple[Any, str]]:
        """What :meth:`conv1d` (or :meth:`conv`, for other layers) will use for each hyperparameter, and where it comes from.

        ``{"padding": ("valid", "default"), "stride": (2, "config"), ...}``: the source
        is ``"config"`` (recorded in the file), ``"argument"`` (given here) or
        ``"default"`` (neither: an assumption the caller should know about; every
        Keras 1 weights file has no config, so everything but the weights is assumed).
        For 2-D and 3-D layers stride and dilation are per-axis tuples and the padding
        is canonical per axis; a transposed layer adds ``output_padding``.  Without a
        name: the file's only Conv1D, else its only convolution.
        """
        with self._context(layer_name):
            layer = self._typed_conv_layer(self._default_name(layer_name), layer_type)
            if layer.is_conv1d or layer.type is None:
                layer = self._conv_layer(layer.name)
                layout_name, _ = self._layout(layer, None)
                values, sources = self._resolve(layer, layout_name, hyperparameters)
                return {key: (values[key], sources[key]) for key in ("padding", "stride", "dilation", "groups", "activation")}
            plan = self._nd_plan(layer, hyperparameters)
        keys = ("padding", "stride", "dilation", "groups", "activation") + (("output_padding",) if plan.kind == "transpose" else ())
        return {key: (getattr(plan, key), plan.sources[key]) for key in keys}

    def _default_name(self, layer_name: str | None) -> str | None:
        """``layer_name``; without one, the file's only Conv1D when it has Conv1D layers (as :meth:`conv1d` picks)."""
        if layer_name is None and self.conv1d_layers:
            return self.layer(None).name
        return layer_name

    def _conv_class(self, layer: Layer) -> tuple[str, int] | None:
        """``(kind, rank)`` of a convolution layer that is not a Conv1D, by its class name and the Keras that wrote it."""
        table = semantics.KERAS1_CONV_CLASSES if self.generation == 1 else semantics.CONV_CLASSES
        return table.get(layer.type or "")

    def _any_conv_layer(self, layer_name: str | None) -> Layer:
        if layer_name is None:
            convs = self.conv_layers
            if len(convs) != 1:
                raise fail(
                    ConfigError,
                    f"{self.path} has {len(convs)} convolution layers",
                    "layer_name= to pick one" if convs else "a layer of a Keras convolution class",
                    f"the convolution layers {[layer.name for layer in convs]}" if convs
                    else f"the layers {[f'{x.name} ({x.type})' for x in self.layers][:20]}",
                )
            return convs[0]
        layer = self.layer(layer_name)
        if layer.is_conv1d or self._conv_class(layer) is not None or (layer.type is None and layer.kernel is not None):
            return layer
        if self.generation == 1 and layer.type in semantics.KERAS1_UNREAD:
            raise fail(
                UnsupportedError,
                f"Layer {layer.name!r} is a Keras 1 {layer.type}",
                f"one of {sorted(set(semantics.KERAS1_CONV_CLASSES) | set(semantics.CONV1D_TYPES))}",
                f"type {layer.type} ({layer.type_source}): {semantics.KERAS1_UNREAD[layer.type]}",
            )
        known = semantics.KERAS1_CONV_CLASSES if self.generation == 1 else semantics.CONV_CLASSES
        raise fail(
            ConfigError,
            f"Layer {layer.name!r} is not a convolution layer",
            f"one of {sorted(set(known) | set(semantics.CONV1D_TYPES))}",
            f"type {layer.type} ({layer.type_source})",
            f"The convolution layers are {[c.name for c in self.conv_layers]}.",
        )

    def _typed_conv_layer(self, layer_name: str | None, layer_type: str | None) -> Layer:
        """The convolution layer, its class settled: the file's, the caller's ``layer_type``, or assumed from the kernel.

        A layer of unknown type stays untyped (read as a Conv1D) when its kernel
        fits a Conv1D (Keras 2/3: 3 axes; Keras 1: a Convolution1D layout with its
        size-1 axis, as :meth:`conv1d` reads it); otherwise it is assumed to be the
        plain convolution of its rank (``Conv2D``/``Conv3D``; Keras 1 ``Convolution2D``/``3D``).
        """
        layer = self._any_conv_layer(layer_name)
        table = semantics.KERAS1_CONV_CLASSES if self.generation == 1 else semantics.CONV_CLASSES
        if layer_type is not None:
            if layer_type not in table and layer_type not in semantics.CONV1D_TYPES:
                raise fail(
                    ConfigError,
                    f"Unknown layer_type {layer_type!r} for a Keras {self.generation} file",
                    f"one of {sorted(set(table) | set(semantics.CONV1D_TYPES))}",
                    f"layer_type={layer_type!r}",
                )
            if layer.type is not None and layer.type != layer_type:
                raise fail(
                    ConfigError,
                    f"layer_type={layer_type!r} contradicts the file",
                    f"no layer_type, or {layer.type!r}: layer_type only names the class of a layer whose type is unknown",
                    f"layer {layer.name!r} of type {layer.type} ({layer.type_source})",
                )
            return dataclasses.replace(layer, type=layer_type, type_source="given by the caller (layer_type=...)")
        kernel = layer.kernel
        if layer.type is not None or kernel is None:
            return layer
        fits_1d = bool(semantics.keras1_layouts(kernel.shape)) if self.generation == 1 else len(kernel.shape) == 3
        rank = len(kernel.shape) - 2
        guess = {(1, 2): "Convolution2D", (1, 3): "Convolution3D"}.get((self.generation, rank)) or (
            f"Conv{rank}D" if self.generation > 1 and rank in (2, 3) else None
        )
        if fits_1d or guess is None:
            return layer
        return dataclasses.replace(
            layer, type=guess,
            type_source=f"assumed from its {rank + 2}-axis kernel: the file does not say (pass layer_type= to say otherwise)",
        )

    def _nd_weights(self, layer: Layer, rank: int, want: tuple[str, ...]) -> tuple[list[Weight], Weight | None]:
        """The layer's kernels (``rank + 2`` axes each, as many as its class has) and its optional 1-d bias, or an error."""
        kernels = [w for w in layer.weights if len(w.shape) == rank + 2]
        biases = [w for w in layer.weights if len(w.shape) == 1]
        if len(kernels) != len(want) or len(biases) > 1 or len(kernels) + len(biases) != len(layer.weights):
            raise fail(
                FileFormatError,
                f"Layer {layer.name!r} ({layer.type}) does not hold the weights its class has",
                f"{len(want)} kernel(s) of {rank + 2} axes ({' and '.join(want)}) and at most one 1-d bias",
                f"weights {[(w.name, w.shape) for w in layer.weights]}",
            )
        return kernels, (biases[0] if biases else None)

    def _nd_plan(self, layer: Layer, kwargs: dict[str, Any]) -> "_Plan":
        """Everything but the arrays of a convolution layer that is not a Conv1D, checked against its weights' shapes."""
        found = self._conv_class(layer)
        assert found is not None
        kind, rank = found
        self._check_backend()
        aliases = semantics.KERAS1_ND_KWARGS if self.generation == 1 else ND_KWARG_ALIASES
        given: dict[str, Any] = {}
        for key, value in kwargs.items():
            canon = aliases.get(key)
            if canon is None or canon in given:
                raise fail(
                    ConfigError,
                    f"Unknown or repeated hyperparameter {key!r}",
                    f"each of {sorted(aliases)} at most once",
                    f"{sorted(kwargs)}",
                    "Kernel size, filters and bias come from the weights themselves.",
                )
            given[canon] = value
        settle = _Settle(layer.hyperparameters or {}, given)
        if self.generation == 1:
            return self._keras1_plan(layer, kind, rank, settle)
        config = settle.config
        want = tuple(kernel_layout(rank, a) for a in semantics.KIND_KERNELS[kind])
        kernels, bias = self._nd_weights(layer, rank, want)

        def per_axis(v: Any) -> tuple[int, ...]:
            return semantics._per_axis(v, rank)

        stride = settle("stride", "strides", (1,) * rank, per_axis)
        dilation = settle("dilation", "dilation_rate", (1,) * rank, per_axis)
        if kind == "conv":
            groups = settle("groups", "groups", 1, int)
        else:  # depthwise and separable: one group per input channel, read from the kernel; transposed: Keras has none
            groups = int(kernels[0].shape[-2]) if kind in ("depthwise", "separable") else 1
            settle.sources["groups"] = "weights" if kind != "transpose" else "config" if layer.hyperparameters is not None else "default"
        activation = semantics.keras_activation(settle("activation", "activation", "linear", lambda v: v), self.generation)
        output_padding = settle("output_padding", "output_padding", None, per_axis) if kind == "transpose" else None
        first = kernels[0].shape
        spatial = tuple(first[:rank])
        read = {"kernel_size": spatial, "use_bias": bias is not None}
        read["filters"] = {"conv": first[-1], "transpose": first[-2], "separable": kernels[-1].shape[-1]}.get(kind)
        if kind in ("depthwise", "separable"):
            read["depth_multiplier"] = first[-1]
        for key, actual in read.items():
            recorded = config.get(key)
            if recorded is None or actual is None:
                continue
            recorded = per_axis(recorded) if key == "kernel_size" else recorded
            if recorded != actual:
                raise fail(
                    FileFormatError,
                    f"The config of layer {layer.name!r} does not match its weights",
                    f"{key}={actual!r} as the weights have it",
                    f"{key}={config[key]!r} in the config",
                    "The file is inconsistent; it may have been edited.",
                )
        flip = semantics.BACKEND_FLIPS.get(self.backend or "", False)
        if kind == "transpose":
            padding_word = settle("padding", "padding", "valid", _word)
            if padding_word not in ("valid", "same"):
                raise fail(
                    UnsupportedError, f"Layer {layer.name!r} has a padding layoutconv does not read", "'valid' or 'same'",
                    f"padding={padding_word!r}",
                )
            if flip and padding_word == "same":
                raise fail(
                    UnsupportedError,
                    f"Layer {layer.name!r} is a Theano {layer.type} with padding 'same'",
                    "padding 'valid' (Theano's 'same' for transposed convolutions is not modelled: it was never measured)",
                    "padding='same' with backend 'theano'",
                )
            extra = output_padding or (None,) * rank
            axes = [keras_transpose_axis(k, s, d, padding_word, a) for k, s, d, a in zip(spatial, stride, dilation, extra)]
            padding: Any = tuple(p for p, _ in axes)
            output_padding = tuple(a for _, a in axes)
        else:
            padding, padding_word = self._conv_padding(settle, "padding", spatial, stride, dilation)
        layout = want[0]
        return _Plan(
            kind, rank, stride, dilation, groups, padding, padding_word, output_padding, activation,
            str(config.get("data_format") or "channels_last"), flip, settle.sources, layout,
            f"Keras {self.generation} kernel layout of {layer.type}",
        )

    def _conv_padding(
        self, settle: "_Settle", key: str, spatial: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...]
    ) -> tuple[Any, str]:
        """A convolution's canonical padding and the Keras word it came from (config ``key``), read under the file's backend.

        The config's word wins; an argument (a Keras word or a canonical padding)
        must give the same pads for every input size; else the argument; else ``'valid'``.
        """

        def canonical(value: Any) -> Any:
            return semantics.canonical_padding(_word(value) if isinstance(value, str) else value, self.backend, spatial, dilation)

        padding = settle("padding", key, "valid", canonical, agree=lambda a, b: _same_padding(a, b, spatial, stride, dilation))
        raw = settle.config.get(key) if settle.config.get(key) is not None else settle.given.get("padding", "valid")
        return padding, str(raw)

    def _keras1_plan(self, layer: Layer, kind: str, rank: int, settle: "_Settle") -> "_Plan":
        """A Keras 1 ``Convolution2D``/``AtrousConvolution2D``/``Convolution3D``/``Deconvolution2D`` (keras/layers/convolutional.py, 1.2.2).

        The kernel's layout follows ``dim_ordering``; stride is ``subsample``, dilation
        ``atrous_rate`` (Atrous classes only), padding ``border_mode``.  Keras 1 has no
        groups.
        """
        assert layer.type is not None
        readings = " or ".join(f"{layouts.LAYOUTS[semantics.KERAS1_ND_LAYOUTS[(o, rank)]]} ({o!r})" for o in ("th", "tf"))
        kernels, bias_w = self._nd_weights(layer, rank, (readings,))
        kernel = kernels[0]
        ordering, ordering_source = self._keras1_ordering(layer, rank, kernel.shape, bias_w, settle)
        layout = semantics.KERAS1_ND_LAYOUTS[(ordering, rank)]
        size = dict(zip(layouts.parse(layout).names, kernel.shape))
        spatial = tuple(size[a] for a in layouts.SPATIAL[rank])
        config = settle.config
        checks = [("nb_filter", size["O"]), *zip(semantics.KERAS1_KERNEL_KEYS[rank], spatial)]
        if "bias" in config:
            checks.append(("bias", bias_w is not None))
        for key, actual in checks:
            if key in config and config[key] != actual:
                raise fail(
                    FileFormatError,
                    f"The config of layer {layer.name!r} does not match its weights",
                    f"{key}={actual!r} as the {ordering!r} kernel {kernel.shape} has it",
                    f"{key}={config[key]!r} in the config",
                    "The file is inconsistent; it may have been edited.",
                )

        def per_axis(v: Any) -> tuple[int, ...]:
            return semantics._per_axis(v, rank)

        stride = settle("stride", "subsample", (1,) * rank, per_axis)
        atrous = layer.type.startswith("Atrous") or layer.hyperparameters is None
        if atrous:
            dilation = settle("dilation", "atrous_rate", (1,) * rank, per_axis)
        else:  # the config of a class without atrous_rate records dilation 1
            dilation = (1,) * rank
            settle.sources["dilation"] = "config"
            if settle.given.get("dilation") is not None and per_axis(settle.given["dilation"]) != dilation:
                raise fail(
                    ConfigError,
                    f"dilation={settle.given['dilation']!r} contradicts the file's config",
                    f"no dilation argument, or 1: a Keras 1 {layer.type} has no atrous_rate (AtrousConvolution2D has)",
                    f"dilation={settle.given['dilation']!r}",
                )
        if self.backend == "tensorflow" and any(d > 1 for d in dilation) and (len(set(dilation)) > 1 or set(stride) != {1}):
            raise fail(
                ConfigError,
                f"Layer {layer.name!r} cannot have run on Keras 1's TensorFlow backend",
                "equal atrous rates and stride 1 on every axis (Keras 1's TensorFlow conv2d asserts both for a dilated "
                "convolution, in every release from 1.0.8 to 1.2.2)",
                f"atrous_rate {dilation} and subsample {stride} with backend 'tensorflow' ({self.backend_source})",
                "If the model was trained with Theano, open the file with backend='theano'.",
            )
        if settle.given.get("groups") not in (None, 1):
            raise fail(
                ConfigError,
                "Keras 1 has no grouped convolutions",
                "no groups argument, or groups=1",
                f"groups={settle.given['groups']!r}",
            )
        settle.sources["groups"] = "config" if layer.hyperparameters is not None else "default"
        activation = semantics.keras_activation(settle("activation", "activation", "linear", lambda v: v), 1)
        flip = semantics.BACKEND_FLIPS.get(self.backend or "", False)
        output_padding = None
        if kind == "transpose":
            padding, output_padding, padding_word = self._keras1_deconv(layer, ordering, spatial, stride, size["O"], settle)
        else:
            padding, padding_word = self._conv_padding(settle, "border_mode", spatial, stride, dilation)
            if flip and rank == 3 and padding_word.lower() == "same" and any(k % 2 == 0 for k in spatial):
                padding = self._keras1_theano_same_3d(layer, spatial, stride)
        return _Plan(
            kind, rank, stride, dilation, 1, padding, padding_word, output_padding, activation,
            semantics.KERAS1_DATA_FORMATS[ordering], flip, settle.sources, layout,
            f"Keras 1 {layer.type} with dim_ordering={ordering!r} ({ordering_source})",
        )

    def _keras1_theano_same_3d(self, layer: Layer, spatial: tuple[int, ...], stride: tuple[int, ...]) -> Any:
        """Pads of a Theano ``Convolution3D`` with ``border_mode='same'`` and an even kernel size, where Keras 1 had two paths.

        Keras 1.0.0-1.1.0 always ran ``conv3d2d.conv3d`` (a true convolution) on
        the input padded ``(k - 1) // 2`` in front and ``k // 2`` behind, stride 1
        only (asserted); from 1.1.1 Keras used ``T.nnet.conv3d`` when Theano had it
        (0.9 and later: ``'half'`` plus the crop, :func:`semantics.theano_same_pads`),
        else the old path.  Only a recorded version up to 1.1.0 settles it.
        """
        version = _version(self.keras_version)
        if self.keras_version is None or version > (1, 1, 0):
            raise fail(
                UnsupportedError,
                f"Layer {layer.name!r} is a Theano Convolution3D with border_mode 'same' and an even kernel {spatial}",
                "odd kernel sizes, border_mode 'valid' or 'full', or a file from Keras 1.0.0-1.1.0 (recorded)",
                f"keras_version {self.keras_version!r}: from Keras 1.1.1 the result depends on the Theano version: "
                "before Theano 0.9 (conv3d2d) the input is padded (k - 1) // 2 in front, from 0.9 (T.nnet.conv3d) k // 2",
                "Which Theano ran is not recorded; layoutconv does not guess.",
            )
        if set(stride) != {1}:
            raise fail(
                ConfigError,
                f"Layer {layer.name!r} cannot have run on Keras {self.keras_version}'s Theano backend",
                "subsample (1, 1, 1): its Convolution3D asserted stride 1 for border_mode 'same'",
                f"subsample {stride}",
            )
        return tuple(((k - 1) // 2, k // 2) for k in spatial)

    def _keras1_ordering(
        self, layer: Layer, rank: int, shape: tuple[int, ...], bias_w: Weight | None, settle: "_Settle"
    ) -> tuple[str, str]:
        """A Keras 1 layer's ``dim_ordering`` and how it was decided: config, argument, or the only reading the bias fits."""

        def check(value: Any) -> str:
            word = str(value).lower()
            if word not in ("th", "tf"):
                raise fail(ConfigError, "Invalid dim_ordering", "'th' or 'tf'", f"dim_ordering={value!r}")
            return word

        ordering = settle("dim_ordering", "dim_ordering", None, check)
        if ordering is not None:
            source = settle.sources["dim_ordering"]
            return ordering, {"config": "model config", "argument": "given by the caller (dim_ordering=...)"}.get(source, source)
        config = settle.config
        sizes = {"O": bias_w.shape[0] if bias_w is not None else config.get("nb_filter")}
        sizes.update(zip(layouts.SPATIAL[rank], (config.get(k) for k in semantics.KERAS1_KERNEL_KEYS[rank])))
        readings = {o: dict(zip(layouts.parse(semantics.KERAS1_ND_LAYOUTS[(o, rank)]).names, shape)) for o in ("th", "tf")}
        fits = [o for o, read in readings.items() if all(read[a] == v for a, v in sizes.items() if v is not None)]
        if len(fits) == 1 and any(v is not None for v in sizes.values()):
            settle.sources["dim_ordering"] = "inferred"
            what = f"bias length {bias_w.shape[0]} (= nb_filter)" if bias_w is not None else "the config's sizes"
            return fits[0], f"inferred: the {what} fits only this reading of the kernel {shape}"
        described = "; ".join(
            f"'{o}' reads nb_filter={r['O']}, input_dim={r['I']}, kernel {tuple(r[a] for a in layouts.SPATIAL[rank])}"
            for o, r in readings.items()
        )
        raise fail(
            ShapeError,
            f"The dim_ordering of Keras 1 layer {layer.name!r} is not recorded and its kernel {shape} does not settle it",
            "a config with dim_ordering, or a bias whose length (nb_filter) fits one reading only",
            f"{described}; bias {'length ' + str(bias_w.shape[0]) if bias_w is not None else 'none'}"
            + ("" if fits else " (fits neither reading)"),
            "Pass dim_ordering='th' (kernel (nb_filter, input_dim, ...)) or dim_ordering='tf' (kernel (..., input_dim, "
            "nb_filter)), --dim-ordering on the command line: the model's image_dim_ordering, 'th' by default in "
            "Keras 1.0, 'tf' from Keras 1.1.",
        )

    def _keras1_deconv(
        self, layer: Layer, ordering: str, spatial: tuple[int, ...], stride: tuple[int, ...], filters: int, settle: "_Settle"
    ) -> tuple[Any, tuple[int, ...], str]:
        """Crops, output_padding and border_mode of a Keras 1 ``Deconvolution2D``, from its ``output_shape``."""
        rank = len(spatial)
        theano = self.backend == "theano"

        def word_of(value: Any) -> str:
            word = _word(value) if isinstance(value, str) else value
            if word not in ("valid", "same", "full"):
                raise fail(ConfigError, "Invalid Keras 1 border_mode for Deconvolution2D", "'valid', 'same' or 'full'", f"{value!r}")
            return word

        def out_sizes(value: Any) -> tuple[int, ...]:
            try:
                seq = list(value)
            except TypeError:
                seq = []
            if len(seq) == rank + 2:
                channels = seq[1] if ordering == "th" else seq[-1]
                if channels is not None and channels != filters:
                    raise fail(
                        FileFormatError, f"The output_shape of layer {layer.name!r} does not match its kernel",
                        f"{filters} output channels (nb_filter)", f"output_shape={value!r}",
                    )
                seq = seq[2:] if ordering == "th" else seq[1:-1]
            if len(seq) != rank or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in seq):
                raise fail(
                    ConfigError, f"Invalid output_shape for Deconvolution2D {layer.name!r}",
                    f"{rank} positive output sizes, or Keras 1's ({rank + 2}-tuple with batch and channels in dim_ordering {ordering!r})",
                    f"output_shape={value!r}",
                )
            return tuple(int(v) for v in seq)

        word = settle("padding", "border_mode", "valid", word_of)
        out = settle("output_shape", "output_shape", None, out_sizes)
        if out is None:
            raise fail(
                ConfigError,
                f"Deconvolution2D {layer.name!r} needs its output_shape, which the file does not record",
                "output_shape=(rows, cols): Keras 1 fixed the deconvolution's output size in the layer",
                "no config and no output_shape argument",
                "Pass the output_shape the model was built with (--output-shape ROWS,COLS on the command line).",
            )
        settle.sources["output_padding"] = settle.sources["output_shape"]
        if word == "full" and not theano:
            raise fail(
                ConfigError, "border_mode 'full' is a Theano border mode", "'valid' or 'same' for this backend",
                f"border_mode='full' with backend {self.backend!r}",
            )
        if theano and word == "same" and any(k % 2 == 0 and s > 1 for k, s in zip(spatial, stride)):
            raise fail(
                UnsupportedError,
                f"Layer {layer.name!r} is a Theano Deconvolution2D with border_mode 'same', an even kernel {spatial} and stride {stride}",
                "an odd kernel size or stride 1 on every axis where border_mode is 'same'",
                "a configuration where Keras 1's Theano deconv2d crops the output to ceil(input / stride) positions "
                "(the crop meant for a convolution), far fewer than the output_shape it declares",
                "That output was never measured; layoutconv does not guess it.",
            )
        if theano and ordering == "tf" and _version(self.keras_version) < (1, 2, 1):
            raise fail(
                UnsupportedError,
                f"Layer {layer.name!r} is a Theano Deconvolution2D with dim_ordering 'tf' from Keras {self.keras_version or '(version not recorded)'}",
                "Keras 1.2.1 or later (recorded in the file), or dim_ordering 'th'",
                f"keras_version {self.keras_version!r}",
                "Before Keras 1.2.1 the Theano backend passed the 'tf' output_shape unconverted, so its output sizes "
                "were not the configured ones; which ones is not recorded.",
            )
        axes = [semantics.keras1_deconv_axis(k, s, o, word, self.backend) for k, s, o in zip(spatial, stride, out)]
        if any(n < 1 for _, _, n in axes):
            raise fail(
                ConfigError,
                f"The output_shape of Deconvolution2D {layer.name!r} is smaller than its kernel allows",
                f"output sizes that a {word!r} convolution with kernel {spatial} maps back to at least one position",
                f"output_shape {out}",
            )
        return tuple(p for p, _, _ in axes), tuple(a for _, a, _ in axes), word

    def _conv_info(self, layer: Layer) -> dict[str, Any] | None:
        if not layer.is_conv1d:
            return self._nd_info(layer) if self._conv_class(layer) is not None else None
        info: dict[str, Any] = {"layout": layer.layout, "layout_source": layer.layout_source}
        try:
            name, source = self._layout(layer, None)
            self._check_backend()
            resolved, sources = self._resolve(layer, name, {})
            _check_geometry(layer, name, resolved)
            convention = semantics.convention_for(name, self.backend, self._config(layer).get("data_format", "channels_last"))
        except LayoutError as exc:
            info["error"] = str(exc)
            return info
        no_config = "" if layer.hyperparameters is not None else "; the file has no config"
        canonical = resolved["padding"]
        info.update(
            layout=name,
            layout_axes=layouts.parse(name).layout,
            layout_source=source,
            flip=convention.flipped,
            convention=convention.name,
            data_format=convention.data_format,
            stride=resolved["stride"],
            dilation=resolved["dilation"],
            groups=resolved["groups"],
            padding={
                "keras": sources["padding_word"] if sources["padding"] != "default" else None,
                "canonical": _plain(canonical),
                "source": sources["padding"] + (no_config if sources["padding"] == "default" else ""),
            },
        )
        return info

    def _nd_info(self, layer: Layer) -> dict[str, Any]:
        """What ``inspect`` shows for a convolution that is not a Conv1D (read from the config, no weights read)."""
        found = self._conv_class(layer)
        assert found is not None
        kind, rank = found
        if self.generation == 1:  # the layout follows dim_ordering, known once the plan is made
            info: dict[str, Any] = {"kind": kind, "layout": None, "layout_axes": None, "layout_source": "Keras 1: by dim_ordering"}
        else:
            axes = " + ".join(kernel_layout(rank, a) for a in semantics.KIND_KERNELS[kind])
            info = {"kind": kind, "layout": "keras", "layout_axes": axes, "layout_source": "Keras 2/3 kernel layout of " + layer.type}
        try:
            plan = self._nd_plan(layer, {})
        except LayoutError as exc:
            info["error"] = str(exc)
            return info
        if self.generation == 1:
            info.update(layout=plan.layout, layout_axes=layouts.parse(plan.layout).layout, layout_source=plan.layout_source)
        no_config = "" if layer.hyperparameters is not None else "; the file has no config"
        info.update(
            flip=plan.flip,
            data_format=plan.data_format,
            stride=list(plan.stride),
            dilation=list(plan.dilation),
            groups=plan.groups,
            activation=plan.activation,
            padding={
                "keras": plan.padding_word if plan.sources["padding"] != "default" else None,
                "canonical": _plain(plan.padding),
                "source": plan.sources["padding"] + (no_config if plan.sources["padding"] == "default" else ""),
            },
        )
        if plan.output_padding is not None:
            info["output_padding"] = list(plan.output_padding)
        return info


#: keyword arguments accepted by ``KerasFile.conv`` for Keras 2/3 layers other than Conv1D
ND_KWARG_ALIASES = {**semantics.KWARG_ALIASES, "output_padding": "output_padding"}


class _Settle:
    """Settles each hyperparameter of one layer: the config wins, an argument that contradicts it is an error,
    else the argument, else the default; ``sources[name]`` says which (``config``, ``argument``, ``default``).

    ``config`` is the layer's recorded config (Keras names), ``given`` the caller's
    keywords in layoutconv's names.
    """

    def __init__(self, config: dict[str, Any], given: dict[str, Any]) -> None:
        self.config = config
        self.given = given
        self.sources: dict[str, str] = {}

    def __call__(
        self, name: str, key: str, default: Any, normalise: Callable[[Any], Any], agree: Callable[[Any, Any], bool] = operator.eq
    ) -> Any:
        recorded = normalise(self.config[key]) if self.config.get(key) is not None else None
        argument = normalise(self.given[name]) if self.given.get(name) is not None else None
        if recorded is not None and argument is not None and not agree(recorded, argument):
            raise fail(
                ConfigError,
                f"{name}={self.given[name]!r} contradicts the file's config",
                f"{key}={self.config[key]!r} (as recorded) or no {name} argument",
                f"{name}={self.given[name]!r}",
            )
        for value, source in ((recorded, "config"), (argument, "argument")):
            if value is not None:
                self.sources[name] = source
                return value
        self.sources[name] = "default"
        return default


def _word(value: Any) -> str:
    return str(value).lower()


def _version(text: str | None) -> tuple[int, ...]:
    """``'1.2.1'`` -> ``(1, 2, 1)``; unknown or unreadable -> ``(0,)`` (older than every release)."""
    numbers = re.findall(r"\d+", text or "")
    return tuple(int(n) for n in numbers[:3]) or (0,)


class _Plan(NamedTuple):
    """A convolution layer's canonical hyperparameters (other than Conv1D), before its arrays are read."""

    kind: str
    rank: int
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    padding: Any  # canonical padding (transposed: crops as (begin, end) pairs)
    padding_word: str
    output_padding: tuple[int, ...] | None
    activation: str
    data_format: str
    flip: bool
    sources: dict[str, str]
    layout: str  # the (first) stored kernel's layout: a name of layouts.LAYOUTS or axis names
    layout_source: str


def _build_conv(plan: _Plan, kernels: list[np.ndarray], bias: Any) -> Conv:
    return Conv(
        kernels[0], bias, stride=plan.stride, dilation=plan.dilation, groups=plan.groups, padding=plan.padding,
        activation=plan.activation, layout=plan.layout,
    )


def _build_depthwise(plan: _Plan, kernels: list[np.ndarray], bias: Any, activation: str | None = None) -> Conv:
    return Conv(
        kernels[0], bias, stride=plan.stride, dilation=plan.dilation, groups=int(kernels[0].shape[-2]), padding=plan.padding,
        activation=plan.activation if activation is None else activation, layout=kernel_layout(plan.rank, "G M"),
    )


def _build_separable(plan: _Plan, kernels: list[np.ndarray], bias: Any) -> Chain:
    depthwise = _build_depthwise(plan, kernels[:1], None, activation="linear")
    pointwise = Conv(kernels[1], bias, activation=plan.activation, layout=kernel_layout(plan.rank, "I O"))
    return Chain((depthwise, pointwise))


def _build_transpose(plan: _Plan, kernels: list[np.ndarray], bias: Any) -> ConvTranspose:
    t = ConvTranspose(
        kernels[0], bias, stride=plan.stride, dilation=plan.dilation, padding=plan.padding,
        output_padding=plan.output_padding, activation=plan.activation, layout=plan.layout,
    )
    return tidy_transpose(t)


#: kind name (``semantics.CONV_CLASSES``) -> how its plan and arrays become a record
_ND_BUILDERS = {"conv": _build_conv, "depthwise": _build_depthwise, "separable": _build_separable, "transpose": _build_transpose}


def _check_geometry(layer: Layer, layout_name: str, resolved: dict[str, Any]) -> None:
    """Validate the resolved stride, dilation and padding (layoutconv's caps included) on a stand-in kernel.

    Lets ``inspect`` report an absurd configuration without reading the weights;
    groups are checked against the real weights by :meth:`KerasFile.conv1d`.
    """
    assert layer.kernel is not None
    k = layer.kernel.shape[layouts.parse(layout_name).names.index("K")]
    Conv1D(np.zeros((1, 1, k), np.float32), stride=resolved["stride"], dilation=resolved["dilation"], padding=resolved["padding"])


def _is_float(dtype: str) -> bool:
    try:
        return np.dtype(dtype).kind == "f"
    except TypeError:
        return False


def _plain(padding: Any) -> Any:
    return [list(p) for p in padding] if isinstance(padding, tuple) else padding


def _kernel_and_bias(layer: Layer, path: str) -> tuple[Weight, Weight | None]:
    kernel = layer.kernel
    rest = [w for w in layer.weights if w is not kernel]
    if kernel is None or len(rest) > 1 or (rest and len(rest[0].shape) != 1):
        raise fail(
            FileFormatError,
            f"Layer {layer.name!r} in {path} does not hold a kernel and an optional bias",
            "a 3-d or 4-d kernel and at most one 1-d bias",
            f"weights {[(w.name, w.shape) for w in layer.weights]}",
        )
    return kernel, (rest[0] if rest else None)


def _check_config_sizes(layer: Layer, config: dict[str, Any], size: dict[str, int]) -> None:
    checks = [("filters", size["O"]), ("kernel_size", size["K"])]
    if "groups" not in config and config.get("input_dim") is not None:
        checks.append(("input_dim", size["I"]))
    if "use_bias" in config:
        checks.append(("use_bias", layer.bias is not None))
    for key, actual in checks:
        if key in config and config[key] != actual:
            raise fail(
                FileFormatError,
                f"The config of layer {layer.name!r} does not match its weights",
                f"{key}={actual!r} as the weights have it",
                f"{key}={config[key]!r} in the config",
                "The file is inconsistent; it may have been edited.",
            )


def _same_padding(a: Any, b: Any, kernel_size: Any, stride: Any, dilation: Any) -> bool:
    """Whether two canonical paddings give the same pads for every input size (decided without enumerating sizes).

    ``kernel_size``, ``stride`` and ``dilation`` are integers (1-D) or one value per axis.
    """
    if a == b:
        return True
    sizes = tuple(kernel_size) if isinstance(kernel_size, (tuple, list)) else (kernel_size,)
    probe = np.zeros((1, 1, *sizes), np.float32)  # validates and normalises the values
    ca = Conv(probe, padding=a, stride=stride, dilation=dilation)
    cb = Conv(probe, padding=b, stride=stride, dilation=dilation)
    return ca.same_pads_for_every_size(cb.padding)


# -- public functions --------------------------------------------------------
def open_file(path: Any, *, backend: str | None = None) -> KerasFile:
    """Identify a Keras weight file and list its layers; see :class:`KerasFile`.

    ``backend`` overrides the backend recorded in (or inferred from) the file:
    Keras 1 files do not record one, and layoutconv infers Theano when no
    weight name ends in ``':0'``.
    """
    path = str(path)
    parsed = formats.parse(path)
    if backend is not None:
        name, source, inferred = semantics.check_backend(backend), "given by the caller (backend=...)", False
    elif parsed.backend_attr:
        name, source, inferred = parsed.backend_attr.strip().lower(), "file attribute 'backend'", False
    elif parsed.generation == 3:
        name, source, inferred = None, "not recorded in Keras 3 files; every Keras 3 backend cross-correlates, so no flip", False
    else:
        name, source, inferred = _infer_backend(parsed.layers)
    return KerasFile(
        path=path,
        format=parsed.format,
        keras_version=parsed.keras_version,
        keras_version_source=parsed.keras_version_source,
        backend=name,
        backend_source=source,
        backend_inferred=inferred,
        layers=parsed.layers,
        generation=parsed.generation,
        _source=parsed.source,
        model_config=parsed.model_config,
    )


def _infer_backend(layers: tuple[Layer, ...]) -> tuple[str | None, str, bool]:
    names = [w.name for layer in layers for w in layer.weights]
    if not names:
        return None, "unknown: not recorded and the file holds no weights", False
    tagged = [n for n in names if re.search(r":\d+$", n)]
    if tagged:
        return "tensorflow", f"inferred: weight names end in ':0' like TensorFlow variables (e.g. {tagged[0]!r})", True
    return (
        "theano",
        f"inferred: not recorded, and no weight name ends in ':0' as TensorFlow names do (e.g. {names[0]!r}), so Theano",
        True,
    )


def from_keras1(
    kernel: Any,
    bias: Any = None,
    *,
    backend: str,
    padding: Any = "valid",
    stride: int = 1,
    dilation: int = 1,
    layout: str | None = None,
) -> Conv1D:
    """A Keras 1 ``Convolution1D`` kernel (and bias) given as arrays, as a canonical :class:`Conv1D`.

    >>> import numpy as np
    >>> w = np.arange(2 * 1 * 3 * 4, dtype="float32").reshape(2, 1, 3, 4)   # (filter_length, 1, input_dim, nb_filter)
    >>> from_keras1(w, backend="theano", padding="same")
    Conv1D(in_channels=3, out_channels=4, kernel_size=2, padding=(1, 0), bias=False, dtype=float32)

    Parameters
    ----------
    kernel:
        ``(filter_length, 1, input_dim, nb_filter)`` (Keras 1.1-1.2) or
        ``(nb_filter, input_dim, filter_length, 1)`` (Keras 1.0).  A shape that
        fits both is settled by the bias length, else by ``layout``.
    backend:
        ``"theano"`` (the kernel is flipped: Theano convolved) or ``"tensorflow"``.
    padding:
        The ``border_mode``: ``"valid"``, ``"same"`` (Theano's rule or
        ``same_upper``), ``"full"`` (Theano), or a canonical padding.
    stride, dilation:
        ``subsample_length`` and ``atrous_rate`` (AtrousConvolution1D).
    layout:
        ``"keras1.0"`` or ``"keras1.1"`` when the shape is ambiguous.
    """
    backend = semantics.check_backend(backend)
    kernel = np.asarray(kernel)
    bias_length = None
    if bias is not None and np.ndim(bias) == 1:
        bias_length = int(np.shape(bias)[0])
    layout_name = semantics.choose_keras1_layout(kernel.shape, bias_length=bias_length, layout=layout)
    names = layouts.parse(layout_name).names
    k = int(kernel.shape[names.index("K")])
    pad = semantics.canonical_padding(padding, backend, k, dilation)
    convention = semantics.convention_for(layout_name, backend)
    return convention.conv1d(kernel, bias, padding=pad, stride=stride, dilation=dilation)


def inspect_text(path: Any, *, as_json: bool = False, backend: str | None = None) -> str:
    """The report ``layoutconv inspect`` prints: :meth:`KerasFile.summary`, or :meth:`KerasFile.to_dict` as JSON."""
    kf = open_file(path, backend=backend)
    if as_json:
        return json.dumps(kf.to_dict(), indent=2, default=str)
    return kf.summary()
