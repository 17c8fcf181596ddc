"""A Keras model config (any Keras version) and its weights as a :class:`~layoutconv.graph.Graph`, without TensorFlow.

One generic walk serves Keras 1, 2 and 3, in files and in memory: the model
config gives the topology (``Sequential`` layer lists, functional
``inbound_nodes`` in the Keras 1/2 list form or the Keras 3 ``args`` form), and
a reader per layer class (:data:`READERS`, keyed by Keras class name) says what
the layer means as a record.  The weights come from a :class:`WeightSource`: a
Keras file (:class:`~layoutconv.legacy.KerasFile`) or a live Keras model.

Every Keras tensor of rank 3 or more is channels last; the graph keeps data
channels first and records ``"channels_last"`` on those edges.  A Keras axis
argument (``Concatenate(axis=-1)``, ``BatchNormalization(axis=-1)``) is mapped to
the channels-first axis it names.  Models built with ``data_format=
"channels_first"`` are refused for now.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, NamedTuple, Protocol

import numpy as np

from . import activations, layers
from .errors import ConfigError, UnsupportedError, fail
from .graph import Graph, Input, Node
from .record import Record


class WeightSource(Protocol):
    """Where a Keras model's weights and convolution records come from."""

    generation: int  # 1, 2 or 3: the Keras that wrote the config
    backend: str | None  # "theano" flips convolutions

    def arrays(self, layer: str) -> list[np.ndarray]: ...  # the layer's arrays in Keras' own order

    def conv(self, layer: str) -> Record: ...  # a convolution layer's canonical record

    def recurrent(self, layer: str, class_name: str, config: dict, arrays: list[np.ndarray]) -> Record: ...


def _with_constant(cls: str, name: str, constants: tuple[tuple[int, float], ...], tensors: int) -> Record:
    """``Add``/``Subtract``/``Multiply`` of one tensor and one number as a :class:`~layoutconv.layers.Scale`."""
    if tensors != 1 or len(constants) != 1 or cls not in ("Add", "Subtract", "Multiply"):
        raise fail(
            UnsupportedError, f"Layer {name!r} ({cls}) is called with numbers among its inputs",
            "Add, Subtract or Multiply of one tensor and one number", f"{tensors} tensor(s) and numbers {[v for _, v in constants]}",
        )
    position, value = constants[0]
    if cls == "Add":
        return layers.Scale(1.0, value)
    if cls == "Multiply":
        return layers.Scale(value, 0.0)
    return layers.Scale(1.0, -value) if position == 1 else layers.Scale(-1.0, value)


class Call(NamedTuple):
    """The context a reader gets for one layer: its class, config, and what it is called on."""

    class_name: str
    config: dict
    name: str
    in_ranks: tuple[int, ...]  # ranks of the input tensors, batch axis included
    source: Any

    @property
    def generation(self) -> int:
        return self.source.generation

    def get(self, *keys: str, default: Any = None) -> Any:
        """The first of ``keys`` (Keras 2/3 name, then Keras 1 name ...) present in the config."""
        for key in keys:
            if key in self.config and self.config[key] is not None:
                return self.config[key]
        return default

    def arrays(self) -> list[np.ndarray]:
        return self.source.arrays(self.name)

    def axis(self, value: Any, rank: int | None = None) -> int:
        """A Keras axis (of a channels-last tensor) as the channels-first axis it names."""
        rank = self.in_ranks[0] if rank is None else rank
        a = int(value)
        a = a + rank if a < 0 else a
        if not 1 <= a < rank:
            raise fail(ConfigError, f"Layer {self.name!r} has an axis out of range", f"an axis in 1..{rank - 1} (0 is the batch)", f"axis={value!r}")
        if rank < 3:
            return a
        return 1 if a == rank - 1 else a + 1

    def refuse(self, why: str, expected: str, received: str, remedy: str = "") -> Exception:
        return fail(UnsupportedError, f"Layer {self.name!r} ({self.class_name}) cannot be read: {why}", expected, received, remedy)


Reader = Callable[[Call], "Record | tuple[Record, ...] | None"]

#: Keras class name -> reader (``None`` from a reader: the layer is the identity at inference; a tuple:
#: records applied one after the other, e.g. ``Dense(activation="softmax")`` as a Dense and a Softmax).
READERS: dict[str, Reader] = {}


def reads(*class_names: str) -> Callable[[Reader], Reader]:
    def register(fn: Reader) -> Reader:
        for name in class_names:
            if name in READERS:
                raise RuntimeError(f"two readers for Keras class {name}")
            READERS[name] = fn
        return fn

    return register


def keras_activation(value: Any, generation: int) -> str:
    """A Keras activation (name or Keras 3 serialised dict) as a canonical name; ``hard_sigmoid`` by Keras version."""
    if isinstance(value, dict):
        value = value.get("config") if isinstance(value.get("config"), str) else value.get("class_name")
    if value is None:
        return "linear"
    name = str(value)
    if name == "hard_sigmoid":
        return "hard_sigmoid_keras3" if generation >= 3 else "hard_sigmoid_keras2"
    return activations.canonical(name)


# -- readers -----------------------------------------------------------------------------------------

IDENTITY_CLASSES = (
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise", "GaussianDropout",
    "AlphaDropout", "ActivityRegularization",
)


@reads(*IDENTITY_CLASSES)
def _identity(call: Call) -> None:
    return None


@reads(
    "Conv1D", "Conv2D", "Conv3D", "Convolution1D", "Convolution2D", "Convolution3D", "AtrousConvolution1D",
    "AtrousConvolution2D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose", "Deconvolution2D",
    "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D", "SeparableConvolution2D",
)
def _conv(call: Call) -> Record:
    if call.get("data_format") == "channels_first" or call.get("dim_ordering") == "th" and call.class_name.endswith(("2D", "3D")):
        raise call.refuse(
            "channels_first models are not read as whole models yet",
            "data_format='channels_last' (the Keras default)",
            f"data_format={call.get('data_format', 'dim_ordering')!r}",
            "Read the convolution on its own with layoutconv.from_keras(layer) or KerasFile.conv(name).",
        )
    return call.source.conv(call.name)


def _is_softmax(value: Any) -> bool:
    return value == "softmax" or (isinstance(value, dict) and "softmax" in (value.get("config"), value.get("class_name")))


@reads("Dense")
def _dense(call: Call) -> Record | tuple[Record, ...]:
    arrays = call.arrays()
    if not arrays or arrays[0].ndim != 2:
        raise call.refuse("no kernel", "a (in, out) kernel", f"arrays {[a.shape for a in arrays]}")
    bias = arrays[1] if len(arrays) > 1 else None
    if _is_softmax(call.get("activation")):  # not elementwise: a layer of its own after the Dense (every classifier head)
        return layers.Dense(arrays[0], bias, layout="I O"), layers.Softmax(1)
    return layers.Dense(arrays[0], bias, activation=keras_activation(call.get("activation"), call.generation), layout="I O")


@reads("TimeDistributed")
def _time_distributed(call: Call) -> Record | tuple[Record, ...]:
    inner = call.config.get("layer") or {}
    if inner.get("class_name") != "Dense":
        raise call.refuse("only TimeDistributed(Dense) is supported", "a wrapped Dense layer", f"a wrapped {inner.get('class_name')}")
    inner_call = call._replace(class_name="Dense", config=dict(inner.get("config") or {}))
    return _dense(inner_call)


@reads("BatchNormalization")
def _batch_norm(call: Call) -> Record:
    if call.get("mode", default=0) != 0:
        raise call.refuse(
            "Keras 1 BatchNormalization modes 1 and 2 normalise with the statistics of each batch at inference",
            "mode=0", f"mode={call.get('mode')}",
        )
    axis = call.get("axis", default=-1)
    axes = [axis] if isinstance(axis, int) else list(axis)
    if len(axes) != 1 or call.axis(axes[0]) != 1:
        raise call.refuse("only normalisation over the channel axis is supported", "axis=-1", f"axis={axis!r}")
    arrays = call.arrays()
    if call.generation == 1:
        gamma, beta, mean, variance = arrays  # Keras 1 stores the variance as `running_std` (keras 1.1.0 normalization.py)
    else:
        it = iter(arrays)
        gamma = next(it) if call.get("scale", default=True) else None
        beta = next(it) if call.get("center", default=True) else None
        mean, variance = next(it), next(it)
    return layers.BatchNorm(mean, variance, gamma, beta, epsilon=call.get("epsilon", default=1e-3))


@reads("LayerNormalization")
def _layer_norm(call: Call) -> Record:
    if call.get("rms_scaling", default=False):
        raise call.refuse("RMS scaling is not supported yet", "rms_scaling=False", "rms_scaling=True")
    axis = call.get("axis", default=-1)
    axes = tuple(sorted(call.axis(a) for a in ([axis] if isinstance(axis, int) else axis)))
    arrays = iter(call.arrays())
    scale = next(arrays) if call.get("scale", default=True) else None
    offset = next(arrays) if call.get("center", default=True) else None
    if scale is not None and scale.ndim != len(axes) or offset is not None and offset.ndim != len(axes):
        # Keras stores them with the shape of the normalised axes in Keras' own order
        raise call.refuse("scale/offset shapes do not match the axes", f"{len(axes)} axes", f"{[a.shape for a in (scale, offset) if a is not None]}")
    return layers.LayerNorm(scale, offset, axes=axes, epsilon=call.get("epsilon", default=1e-3))


@reads("Embedding")
def _embedding(call: Call) -> Record:
    if call.get("mask_zero", default=False):
        raise call.refuse(
            "mask_zero=True changes what later layers compute (masked time steps)",
            "mask_zero=False", "mask_zero=True",
        )
    return layers.Embedding(call.arrays()[0])


@reads("Activation")
def _activation(call: Call) -> Record:
    name = call.get("activation")
    if _is_softmax(name):
        return layers.Softmax(1)
    return layers.Activation(keras_activation(name, call.generation))


@reads("Rescaling")
def _rescaling(call: Call) -> Record:
    scale, offset = call.get("scale", default=1.0), call.get("offset", default=0.0)
    if not isinstance(scale, (int, float)) or not isinstance(offset, (int, float)):
        raise call.refuse("only one scale and one offset for every channel are supported", "numbers", f"scale={scale!r}, offset={offset!r}")
    return layers.Scale(scale, offset)


@reads("Normalization")
def _normalization(call: Call) -> Record:
    if call.get("invert", default=False):
        raise call.refuse("invert=True is not supported", "invert=False", "invert=True")
    axis = call.get("axis", default=-1)
    axes = [axis] if isinstance(axis, int) else list(axis)
    if len(axes) != 1 or call.axis(axes[0]) != 1:
        raise call.refuse("only normalisation per channel is supported", "axis=-1", f"axis={axis!r}")
    arrays = call.arrays()
    mean, variance = (arrays[0], arrays[1]) if len(arrays) >= 2 else (call.get("mean"), call.get("variance"))
    mean, variance = np.asarray(mean, dtype=np.float32).reshape(-1), np.asarray(variance, dtype=np.float32).reshape(-1)
    # Keras divides by max(sqrt(variance), 1e-7): a BatchNorm with epsilon 0 while no deviation is below 1e-7
    if (np.sqrt(variance.astype(np.float64)) < 1e-7).any():
        raise call.refuse("a variance below 1e-14 is clamped by Keras, which a BatchNorm does not do", "variances >= 1e-14", f"min {variance.min()!r}")
    return layers.BatchNorm(mean, variance, epsilon=0.0)


@reads("Softmax")
def _softmax(call: Call) -> Record:
    return layers.Softmax(call.axis(call.get("axis", default=-1)))


@reads("ReLU")
def _relu(call: Call) -> Record:
    max_value, slope, threshold = call.get("max_value"), call.get("negative_slope", default=0.0), call.get("threshold", default=0.0)
    if slope or threshold or max_value not in (None, 6, 6.0):
        raise call.refuse("only relu and relu6 are supported", "negative_slope=0, threshold=0, max_value None or 6", f"{call.config}")
    return layers.Activation("relu" if max_value is None else "relu6")


@reads("LeakyReLU")
def _leaky_relu(call: Call) -> Record:
    slope = float(call.get("negative_slope", "alpha", default=0.3))
    if slope != 0.2:
        raise call.refuse("only a slope of 0.2 is supported", "alpha (negative_slope) = 0.2", f"{slope}")
    return layers.Activation("leaky_relu")


@reads("ELU")
def _elu(call: Call) -> Record:
    if float(call.get("alpha", default=1.0)) != 1.0:
        raise call.refuse("only alpha=1 is supported", "alpha=1.0", f"alpha={call.get('alpha')}")
    return layers.Activation("elu")


def _rank_of(call: Call) -> int:
    return call.in_ranks[0] - 2


@reads(
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "MaxPool1D", "MaxPool2D", "MaxPool3D", "AvgPool1D", "AvgPool2D", "AvgPool3D",
)
def _pool(call: Call) -> Record:
    if call.get("data_format") == "channels_first" or call.get("dim_ordering") == "th" and call.class_name.endswith(("2D", "3D")):
        raise call.refuse("channels_first models are not read as whole models yet", "data_format='channels_last'", "channels_first")
    rank = _rank_of(call)
    size = call.get("pool_size", "pool_length", default=2)
    stride = call.get("strides", "stride", default=None)
    if isinstance(size, list) and call.generation == 1 and rank == 1:
        size = size[0]
    padding = str(call.get("padding", "border_mode", default="valid")).lower()
    if padding == "same":
        if call.source.backend == "theano":
            raise call.refuse(
                "Theano's 'same' pooling pads pool_size - 2 (odd) or - 1 (even) cells and crops (keras 1.1.0 theano_backend.pool2d)",
                "padding='valid'", "padding='same' under Theano",
            )
        padding = "same_upper"
    kind = "max" if call.class_name.startswith("Max") else "avg"
    return layers.Pool(kind, size, stride, padding=padding, count_include_pad=False, rank=rank)


@reads(
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
    "GlobalAveragePooling3D", "GlobalMaxPool1D", "GlobalMaxPool2D", "GlobalMaxPool3D", "GlobalAvgPool1D", "GlobalAvgPool2D",
    "GlobalAvgPool3D",
)
def _global_pool(call: Call) -> Record:
    if call.get("data_format") == "channels_first":
        raise call.refuse("channels_first models are not read as whole models yet", "data_format='channels_last'", "channels_first")
    return layers.GlobalPool("max" if "Max" in call.class_name else "avg", keepdims=bool(call.get("keepdims", default=False)))


@reads("Flatten")
def _flatten(call: Call) -> Record:
    if call.get("data_format") == "channels_first":
        raise call.refuse("Flatten(data_format='channels_first') is not supported yet", "data_format='channels_last'", "channels_first")
    return layers.Flatten("channels_last")


@reads("Reshape")
def _reshape(call: Call) -> Record:
    return layers.Reshape(call.get("target_shape", "dims"), "channels_last")


@reads("Permute")
def _permute(call: Call) -> Record:
    return layers.Permute(call.get("dims"), "channels_last")


def _spatial_pairs(call: Call, value: Any, rank: int) -> tuple[tuple[int, int], ...]:
    if isinstance(value, dict):  # Keras 1 ZeroPadding2D(padding={'top_pad': ..})
        keys = (("top_pad", "bottom_pad"), ("left_pad", "right_pad"))[:rank]
        return tuple((int(value.get(a, 0)), int(value.get(b, 0))) for a, b in keys)
    if isinstance(value, int):
        return ((value, value),) * rank
    value = [list(v) if isinstance(v, tuple) else v for v in value]
    if rank == 1 and len(value) == 2 and all(isinstance(v, int) for v in value):
        return ((value[0], value[1]),)
    if len(value) == rank and all(isinstance(v, int) for v in value):
        return tuple((v, v) for v in value)
    if len(value) == 2 * rank and rank == 2 and all(isinstance(v, int) for v in value):  # Keras 1 (top, bottom, left, right)
        return ((value[0], value[1]), (value[2], value[3]))
    return tuple((int(b), int(e)) for b, e in value)


@reads("ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D")
def _zero_padding(call: Call) -> Record:
    if call.get("data_format") == "channels_first" or call.get("dim_ordering") == "th" and not call.class_name.endswith("1D"):
        raise call.refuse("channels_first models are not read as whole models yet", "data_format='channels_last'", "channels_first")
    return layers.Pad(_spatial_pairs(call, call.get("padding", default=1), _rank_of(call)))


@reads("Cropping1D", "Cropping2D", "Cropping3D")
def _cropping(call: Call) -> Record:
    if call.get("data_format") == "channels_first" or call.get("dim_ordering") == "th" and not call.class_name.endswith("1D"):
        raise call.refuse("channels_first models are not read as whole models yet", "data_format='channels_last'", "channels_first")
    return layers.Crop(_spatial_pairs(call, call.get("cropping", default=(1, 1)), _rank_of(call)))


_MERGE_CLASSES = {
    "Add": "add", "Subtract": "subtract", "Multiply": "multiply", "Average": "average", "Maximum": "maximum", "Minimum": "minimum",
}


@reads(*_MERGE_CLASSES)
def _merge(call: Call) -> Record:
    if len(call.in_ranks) < 2:  # Keras 3 writes `x + 3.0` as an `Add` operation of one tensor and a constant
        raise call.refuse(
            "a merge of one tensor (and a constant) is a Keras operation such as `x + 3.0`, not a Merge layer",
            "a merge of two or more tensors",
            f"{len(call.in_ranks)} tensor input(s)",
            "Write the constant as a layer (e.g. Activation('hard_sigmoid') instead of ReLU(6)(x + 3) / 6).",
        )
    return layers.Merge(_MERGE_CLASSES[call.class_name])


@reads("Concatenate")
def _concatenate(call: Call) -> Record:
    return layers.Merge("concatenate", call.axis(call.get("axis", default=-1)))


_KERAS1_MODES = {"sum": "add", "mul": "multiply", "ave": "average", "max": "maximum", "concat": "concatenate"}


@reads("Merge")
def _keras1_merge(call: Call) -> Record:
    mode = call.get("mode", default="sum")
    if not isinstance(mode, str) or mode not in _KERAS1_MODES:
        raise call.refuse("this Merge mode is not supported", f"one of {sorted(_KERAS1_MODES)}", f"mode={mode!r}")
    if mode == "concat":
        return layers.Merge("concatenate", call.axis(call.get("concat_axis", default=-1)))
    return layers.Merge(_KERAS1_MODES[mode])


@reads("LSTM", "GRU", "SimpleRNN", "Bidirectional")
def _recurrent(call: Call) -> Record:
    if call.get("stateful", default=False):
        raise call.refuse("stateful layers carry state between batches", "stateful=False", "stateful=True")
    if call.get("return_state", default=False):
        raise call.refuse("return_state gives several outputs", "return_state=False", "return_state=True")
    return call.source.recurrent(call.name, call.class_name, call.config, call.arrays())


# -- output ranks ------------------------------------------------------------------------------------


def out_rank(record: Record, ranks: tuple[int, ...]) -> int:
    """The rank (batch included) of what ``record`` makes of inputs of ``ranks``."""
    if isinstance(record, layers.Flatten):
        return 2
    if isinstance(record, layers.Reshape):
        return len(record.shape) + 1
    if isinstance(record, layers.GlobalPool):
        return ranks[0] if record.keepdims else 2
    if isinstance(record, layers.Embedding):
        return ranks[0] + 1
    if hasattr(record, "return_sequences"):
        return 3 if record.return_sequences else 2
    return ranks[0]


# -- the walk ----------------------------------------------------------------------------------------

Ref = tuple[str, int, int]  # (layer name, node index, tensor index), as Keras configs write tensors


def _refs(value: Any, constants: list[tuple[int, float]] | None = None) -> list[Ref]:
    """Every tensor reference in a Keras 3 ``args`` structure, in order; numbers among them go to ``constants``.

    A number's position is its index among all arguments (``x + 3.0`` is recorded
    as ``Add`` called on ``[x, 3.0]``).
    """
    found: list[Ref] = []
    count = [0]

    def walk(v: Any, depth: int = 0) -> None:
        if depth > 32:
            return
        if isinstance(v, dict):
            if v.get("class_name") == "__keras_tensor__":
                h = v.get("config", {}).get("keras_history")
                found.append((str(h[0]), int(h[1]), int(h[2])))
                count[0] += 1
                return
            for item in v.values():
                walk(item, depth + 1)
        elif isinstance(v, (list, tuple)):
            for item in v:
                walk(item, depth + 1)
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and constants is not None:
            constants.append((count[0], float(v)))
            count[0] += 1

    walk(value)
    return found


def _calls(entry: dict) -> list[tuple[list[Ref], tuple[tuple[int, float], ...]]]:
    """A functional layer entry's calls: the tensors each reads, and numbers passed with them (Keras 3)."""
    calls = []
    for node in entry.get("inbound_nodes") or []:
        if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
            constants: list[tuple[int, float]] = []
            calls.append((_refs(node.get("args", []), constants), tuple(constants)))
        else:  # Keras 1/2: [[name, node, tensor(, kwargs)], ...]
            calls.append(([(str(t[0]), int(t[1]), int(t[2])) for t in node], ()))
    return calls


def _io_refs(value: Any) -> list[Ref]:
    if not value:
        return []
    value = list(value)
    if isinstance(value[0], str):  # Keras 3 writes a single tensor flat
        return [(str(value[0]), int(value[1]), int(value[2]))]
    return [(str(v[0]), int(v[1]), int(v[2])) for v in value]


def _batch_shape(cfg: dict) -> list[Any] | None:
    for key in ("batch_input_shape", "batch_shape"):
        if cfg.get(key) is not None:
            return list(cfg[key])
    if cfg.get("input_shape") is not None:
        return [None, *cfg["input_shape"]]
    return None


def _input(name: str, cfg: dict) -> Input:
    shape = _batch_shape(cfg)
    if shape is None:
        raise fail(ConfigError, f"Input {name!r} has no shape in the config", "batch_input_shape or batch_shape", f"{sorted(cfg)}")
    dtype = str(cfg.get("dtype") or cfg.get("input_dtype") or "float32")
    return Input(name, tuple(None if s is None else int(s) for s in shape[1:]), "channels_last" if len(shape) >= 3 else "flat", "int" if "int" in dtype else "float")


def _normalise(config: Any) -> tuple[str, list[tuple[str, dict, str, list[list[Ref]]]], list[Ref], list[Ref]]:
    """``(model name, [(class, config, name, calls)], inputs, outputs)`` for a Sequential or functional config."""
    if isinstance(config, dict) and "class_name" in config and "config" in config:
        cls, cfg = config["class_name"], config["config"]
    else:
        cls, cfg = ("Sequential", config) if isinstance(config, list) else ("Functional", config)
    if cls == "Sequential":
        entries = cfg if isinstance(cfg, (list, tuple)) else cfg.get("layers", [])
        name = "sequential" if isinstance(cfg, list) else str(cfg.get("name", "sequential"))
        out: list[tuple[str, dict, str, list[list[Ref]]]] = []
        previous: Ref | None = None
        for entry in entries:
            lcls, lcfg = entry["class_name"], dict(entry.get("config") or {})
            lname = str(lcfg.get("name") or f"{lcls.lower()}_{len(out)}")
            if previous is None:
                if lcls == "InputLayer":
                    out.append((lcls, lcfg, lname, []))
                    previous = (lname, 0, 0)
                    continue
                shape = _batch_shape(lcfg)
                out.append(("InputLayer", {"batch_input_shape": shape, "dtype": lcfg.get("dtype") or lcfg.get("input_dtype")}, "input", []))
                previous = ("input", 0, 0)
            out.append((lcls, lcfg, lname, [([previous], ())]))
            previous = (lname, 0, 0)
        assert previous is not None
        return name, out, [(out[0][2], 0, 0)], [previous]
    if cls in ("Model", "Functional"):
        entries = [(e["class_name"], dict(e.get("config") or {}), str(e.get("name") or e["config"]["name"]), _calls(e)) for e in cfg["layers"]]
        return str(cfg.get("name", "model")), entries, _io_refs(cfg.get("input_layers")), _io_refs(cfg.get("output_layers"))
    raise fail(UnsupportedError, "Unknown Keras model class", "Sequential, Model or Functional", f"{cls!r}")


class Walk:
    """The nodes of a Keras model config in execution order, each layer read from ``source`` when first called.

    Iterating yields every :class:`Node` as soon as its layer is read, so a
    caller can convert and drop weights layer by layer
    (:mod:`layoutconv.convert_stream`): :meth:`release` swaps a layer's record for
    a lighter one of the same kind (what later calls of a shared layer and
    :meth:`graph` use).  :func:`build` walks to the end and keeps every record.
    """

    def __init__(self, config: Any, source: WeightSource, *, name: str | None = None) -> None:
        model_name, self._entries, input_refs, self._output_refs = _normalise(config)
        nested = [n for c, _, n, _ in self._entries if c in ("Sequential", "Model", "Functional")]
        if nested:
            raise fail(UnsupportedError, "Nested models are not read yet", "a model whose layers are layers", f"nested models {nested}")
        self.name = name or model_name
        self.source = source
        self.edge_of: dict[Ref, str] = {}  # a Keras tensor -> the graph edge holding it
        self.rank_of: dict[str, int] = {}
        self.inputs: list[Input] = []
        by_name = {n: (c, cfg) for c, cfg, n, _ in self._entries}
        for ref in input_refs:
            cls, cfg = by_name.get(ref[0], ("?", {}))
            spec = _input(ref[0], cfg)
            self.inputs.append(spec)
            self.edge_of[ref] = spec.name
            self.rank_of[spec.name] = len(spec.shape) + 1
        self.layers: dict[str, Record] = {}  # graph layer name -> record, in the order layers are first called
        self.nodes: list[Node] = []
        self.calls: dict[str, Call] = {}  # Keras layer name -> the call its reader was given
        self._records: dict[str, Any] = {}  # Keras layer name -> what its reader returned
        self._parts: dict[str, tuple[str, int]] = {}  # graph layer name -> (Keras layer name, index in the reader's tuple)
        self._call_counts = {n: len(calls) for _, _, n, calls in self._entries}
        self._constants: set[str] = set()  # graph layers made for one call with a number (x + 3.0)

    def call_count(self, key: str) -> int:
        """How many nodes call graph layer ``key`` (its Keras layer's calls; 1 for a merge with a number)."""
        if key in self._constants:
            return 1
        return self._call_counts[self._parts[key][0]]

    def release(self, key: str, record: Record) -> None:
        """Hold ``record`` (the same kind of layer, lighter) for graph layer ``key`` from now on."""
        self.layers[key] = record
        lname, i = self._parts[key]
        held = self._records[lname]
        self._records[lname] = held[:i] + (record,) + held[i + 1 :] if isinstance(held, tuple) else record

    def __iter__(self) -> Iterator[Node]:
        pending = [(c, cfg, n, i, call) for c, cfg, n, calls in self._entries if c != "InputLayer" for i, call in enumerate(calls)]
        constants_of = {(n, i): call[1] for _, _, n, i, call in pending}
        pending = [(c, cfg, n, i, call[0]) for c, cfg, n, i, call in pending]
        edge_of, rank_of = self.edge_of, self.rank_of
        while pending:
            progressed = False
            for item in list(pending):
                cls, cfg, lname, index, refs = item
                if any(r not in edge_of for r in refs):
                    continue
                pending.remove(item)
                progressed = True
                ins = tuple(edge_of[r] for r in refs)
                ranks = tuple(rank_of[e] for e in ins)
                constants = constants_of.get((lname, index), ())
                if constants:  # a merge called with a number: x + 3.0, x * (1 / 6)
                    record_c = _with_constant(cls, lname, constants, len(refs))
                    key = f"{lname}" if index == 0 else f"{lname}:{index}"
                    self.layers[key] = record_c
                    self._parts[key] = (key, 0)
                    self._records[key] = record_c
                    self._constants.add(key)
                    node = Node(key, key, ins, "channels_last" if ranks[0] >= 3 else "flat")
                    self.nodes.append(node)
                    edge_of[(lname, index, 0)] = key
                    rank_of[key] = ranks[0]
                    yield node
                    continue
                if lname not in self._records:
                    reader = READERS.get(cls)
                    if reader is None:
                        raise fail(
                            UnsupportedError,
                            f"Layer {lname!r} of class {cls} has no reader",
                            "a Keras layer class layoutconv reads",
                            f"class {cls}",
                            f"Known classes: {', '.join(sorted(READERS))}.",
                        )
                    call = Call(cls, cfg, lname, ranks, self.source)
                    self.calls[lname] = call
                    self._records[lname] = reader(call)
                if self._records[lname] is None:  # the identity at inference: the tensor passes through
                    edge_of[(lname, index, 0)] = ins[0]
                    continue
                held = self._records[lname]
                count = len(held) if isinstance(held, tuple) else 1
                del held  # no record is held across a yield: the caller may release it (its arrays must then go)
                base = lname if index == 0 else f"{lname}:{index}"
                for i in range(count):  # a fused softmax follows its layer as a node of its own; the last keeps the layer's name
                    held = self._records[lname]
                    part = held[i] if isinstance(held, tuple) else held
                    kind = type(part).__name__.lower()
                    key = lname if i == 0 else f"{lname}/{kind}"
                    if key not in self.layers:
                        self.layers[key] = part
                        self._parts[key] = (lname, i)
                    del held, part
                    edge = base if i == count - 1 else f"{base}/{kind}"
                    rank = out_rank(self.layers[key], ranks)
                    node = Node(edge, key, ins, "channels_last" if rank >= 3 else "flat")
                    self.nodes.append(node)
                    rank_of[edge] = rank
                    ins, ranks = (edge,), (rank,)
                    yield node
                edge_of[(lname, index, 0)] = ins[0]
            if not progressed:
                stuck = sorted({item[2] for item in pending})
                raise fail(ConfigError, "The model config's layers read tensors nobody makes", "a connected model", f"layers {stuck[:10]}")

    @property
    def outputs(self) -> list[str]:
        """The edges the model returns (once the walk is over)."""
        outputs = []
        for ref in self._output_refs:
            if ref not in self.edge_of:
                raise fail(ConfigError, "A model output is not computed", "outputs made by the model's layers", f"{ref}")
            outputs.append(self.edge_of[ref])
        return outputs

    def graph(self) -> Graph:
        """The :class:`Graph` walked (walk to the end first)."""
        used = {n.layer for n in self.nodes}
        return Graph({n: r for n, r in self.layers.items() if n in used}, self.inputs, self.nodes, self.outputs, name=self.name)


def layer_names(config: Any) -> list[str]:
    """The name of every layer in a model config, in its order."""
    return [n for _, _, n, _ in _normalise(config)[1]]


def build(config: Any, source: WeightSource, *, name: str | None = None) -> Graph:
    """The :class:`Graph` of a Keras model config, reading weights and convolutions from ``source``."""
    walk = Walk(config, source, name=name)
    for _ in walk:
        pass
    return walk.graph()
