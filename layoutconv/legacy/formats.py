"""The Keras weight-file formats: how to recognise each one and where its layers and weights live.

=====================  ===================================================================
format                 structure
=====================  ===================================================================
``keras1.0-weights``   ``save_weights`` of Keras 1.0: root attr ``layer_names``; group per
                       layer with attr ``weight_names`` (``<layer>_W``, ``<layer>_b``);
                       Conv1D kernel ``(nb_filter, input_dim, filter_length, 1)``
``keras1.1-weights``   the same from Keras 1.1-1.2; kernel ``(filter_length, 1, input_dim, nb_filter)``
``keras1-weights``     Keras 1 weights whose Conv1D kernel layout could not be decided, or without Conv1D
                       (2-D kernels ``(nb_filter, input_dim, nb_row, nb_col)`` for ``dim_ordering='th'``,
                       ``(nb_row, nb_col, input_dim, nb_filter)`` for ``'tf'``)
``keras1-model``       ``Model.save`` of Keras 1: root attrs ``keras_version``, ``model_config``
                       (JSON); the weights as above under the group ``model_weights``
``keras2-weights``     ``save_weights`` of Keras 2 / tf.keras / tf_keras: root attrs
                       ``layer_names``, ``backend``, ``keras_version``; weight names such as
                       ``conv1d_1/kernel:0`` nest as groups: ``/conv1d_1/conv1d_1/kernel:0``;
                       kernel ``(kernel_size, input_dim, filters)``
``keras2-model``       ``Model.save`` to ``.h5`` of Keras 2 (and of Keras 3): ``model_config``
                       plus the weights under ``model_weights``
``keras3-archive``     Keras 3 ``.keras``: a zip with ``config.json``, ``metadata.json`` and
                       ``model.weights.h5``
``keras3-weights``     Keras 3 ``.weights.h5``: ``layers/<snake_case_class>[_N]/vars/<i>``,
                       the layer name in the ``vars`` group's attr ``name`` (recent Keras 3)
=====================  ===================================================================
"""

from __future__ import annotations

import collections
import contextlib
import json
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, NamedTuple

import numpy as np

from ..errors import FileFormatError, UnsupportedError, fail
from ..record import hand_over
from . import semantics
from ._safe_h5 import HDF5_SIGNATURE, SafeH5, Span, file_size, guard
from ._safe_zip import MAX_JSON_BYTES, ZIP_SIGNATURE, SafeZip

#: format -> one-line description (shown by ``layoutconv inspect``)
FORMATS: dict[str, str] = {
    "keras1.0-weights": "Keras 1.0 save_weights (HDF5); Conv1D kernels (nb_filter, input_dim, filter_length, 1)",
    "keras1.1-weights": "Keras 1.1-1.2 save_weights (HDF5); Conv1D kernels (filter_length, 1, input_dim, nb_filter)",
    "keras1-weights": "Keras 1 save_weights (HDF5); no Conv1D layer, or its kernel layout not determined",
    "keras1-model": "Keras 1 model save (HDF5): model_config JSON, weights under /model_weights",
    "keras2-weights": "Keras 2 / tf.keras save_weights (HDF5); kernels (kernel_size, input_dim, filters)",
    "keras2-model": "Keras 2 / tf.keras model save (HDF5): model_config JSON, weights under /model_weights",
    "keras3-archive": "Keras 3 .keras archive (zip: config.json, metadata.json, model.weights.h5)",
    "keras3-weights": "Keras 3 .weights.h5: layers/<snake_case_class>[_N]/vars/<i>",
}

WEIGHTS_MEMBER = "model.weights.h5"


@dataclass(frozen=True)
class Weight:
    """One stored array: its name in the file, shape and dtype (``path`` locates it in the HDF5 tree)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    path: str = field(default="", compare=False)


@dataclass(frozen=True)
class Layer:
    """One layer of a weight file.

    ``type`` is the Keras class name (from the file's config, or guessed from
    the layer name: ``type_source`` says which; ``None`` when unknown).
    ``hyperparameters`` holds the config entries the file records (``None``
    without a config).  For Conv1D layers ``layout`` names the kernel layout
    (see :data:`layoutconv.layouts.LAYOUTS`) and ``layout_source`` how it was
    decided; ``layout`` is ``None`` when it could not be.
    """

    name: str
    type: str | None
    type_source: str
    weights: tuple[Weight, ...]
    hyperparameters: dict[str, Any] | None = None
    layout: str | None = None
    layout_source: str = ""

    @property
    def is_conv1d(self) -> bool:
        return self.type in semantics.CONV1D_TYPES

    @property
    def kernel(self) -> Weight | None:
        """The kernel's record: the weight with the most axes (>= 3)."""
        best = max(self.weights, key=lambda w: len(w.shape), default=None)
        return best if best is not None and len(best.shape) >= 3 else None

    @property
    def bias(self) -> Weight | None:
        ones = [w for w in self.weights if len(w.shape) == 1]
        return ones[0] if len(ones) == 1 else None


class Source(NamedTuple):
    """Where the arrays are: an HDF5 file, or an HDF5 member of a zip archive."""

    kind: str  # "hdf5" or "zip"
    member: str | None = None


class Parsed(NamedTuple):
    format: str
    generation: int  # 1, 2 or 3: which Keras wrote the structure
    keras_version: str | None
    keras_version_source: str
    backend_attr: str | None
    layers: tuple[Layer, ...]
    source: Source
    model_config: Any = None  # the whole model's config (parsed JSON), when the file has one


# -- entry points ---------------------------------------------------------
def parse(path: str) -> Parsed:
    """Identify the format of ``path`` and list its layers (no weight is read)."""
    head = _head(path)
    if head.startswith(ZIP_SIGNATURE):
        return _parse_archive(path)
    if head == HDF5_SIGNATURE:
        with SafeH5(path) as h5, guard(h5.label, "the HDF5 structure"):  # h5py raises on corrupt attribute messages
            return _parse_h5(h5, Source("hdf5"))
    raise fail(
        FileFormatError,
        f"{path} is neither an HDF5 file nor a zip archive",
        f"a Keras weight file starting with {HDF5_SIGNATURE!r} (.h5/.hdf5) or {ZIP_SIGNATURE!r} (.keras)",
        f"a file starting with {head!r}",
        "Check that the download completed and that this is the weight file, not a JSON or text file.",
    )


def read_arrays(path: str, source: Source, weights: Iterable[Weight]) -> list[np.ndarray]:
    """Read the given weights as native-order numpy arrays: from the file opened by :func:`session`, else after
    opening (and re-checking) it."""
    held = _SESSIONS.get((path, source))
    if held is not None:
        h5, _, options = held
        if options.get("memory") is not None:
            arrays = [h5.dataset(w.path, into=options["memory"]) for w in weights]
        else:
            arrays = [h5.dataset(w.path) for w in weights]
        return [hand_over(a) for a in arrays] if options.get("hand_over") else arrays
    with _weights_h5(path, source) as h5:
        return [h5.dataset(w.path) for w in weights]


#: files kept open by :func:`session`: (path, source) -> [the open SafeH5, number of sessions using it, options]
_SESSIONS: dict[tuple[str, Source], list[Any]] = {}


@contextlib.contextmanager
def session(path: str, source: Source, *, hand_over: bool = False, memory: Any = None) -> Iterator[None]:
    """Keep the weights of ``path`` open (checked once) while reading many layers: :func:`read_arrays` uses it.

    ``hand_over=True`` (for a caller that builds records of the arrays and keeps
    no other reference to them): every array read is given to the records
    without a copy (:func:`layoutconv.record.hand_over`): read-only.  ``memory``
    (an object with ``empty(shape, dtype)``) gives the arrays read their memory
    (:meth:`SafeH5.dataset`).  A nested session keeps the outer one's options.
    """
    key = (path, source)
    if key in _SESSIONS:
        _SESSIONS[key][1] += 1
    else:
        h5 = _weights_h5(path, source)
        h5.__enter__()
        _SESSIONS[key] = [h5, 1, {"hand_over": hand_over, "memory": memory}]
    try:
        yield
    finally:
        held = _SESSIONS[key]
        held[1] -= 1
        if held[1] == 0:
            del _SESSIONS[key]
            held[0].__exit__(None, None, None)


def _weights_h5(path: str, source: Source) -> SafeH5:
    """The HDF5 file holding the weights (not yet opened): the file itself, or the weights member of an archive
    (read in place when stored uncompressed, as Keras 3 writes it; otherwise read into memory)."""
    if source.kind != "zip":
        return SafeH5(path)
    member = source.member or WEIGHTS_MEMBER
    with SafeZip(path) as z:
        span = z.stored_span(member)
        data: Any = Span(path, *span) if span is not None else z.read(member)
    return SafeH5(data, label=f"{path}!{member}")


def _head(path: str) -> bytes:
    size = file_size(path)
    if size == 0:
        raise fail(FileFormatError, f"{path} is empty", "a Keras weight file", "0 bytes")
    try:
        with open(path, "rb") as fh:
            return fh.read(8)
    except OSError as exc:
        raise fail(FileFormatError, f"Cannot open {path}", "a readable file", f"{exc.strerror or exc}") from None


# -- configs ---------------------------------------------------------------
#: Deepest nesting of lists and objects accepted in a config.  Keras 3 and tf_keras write 6 to 10
#: levels, plus 3 per nested model (measured); the recursive helpers that walk a config (and
#: ``json.dumps``) stay far from Python's recursion limit at this depth.
MAX_JSON_DEPTH = 100


def _json(text: str | bytes, label: str, what: str) -> Any:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise fail(FileFormatError, f"The {what} in {label} is not valid JSON", "a JSON document", f"{type(exc).__name__}: {exc}") from None
    depth = json_depth(value)
    if depth > MAX_JSON_DEPTH:
        raise fail(
            FileFormatError,
            f"The {what} in {label} is nested too deeply",
            f"lists and objects nested at most {MAX_JSON_DEPTH} levels deep (Keras writes 6 to 10, plus 3 per nested model)",
            f"more than {MAX_JSON_DEPTH} levels",
            "The file is corrupt or hostile; it was not read.",
        )
    return value


def json_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """How deeply lists and dicts nest in ``value`` (a scalar is 0), counted without recursion; stops above ``limit``."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def config_layers(config: Any) -> dict[str, tuple[str, dict]]:
    """Every layer config found in a model config, by layer name: ``name -> (class_name, config)``.

    Walks nested models (``layers`` lists, Keras 1 ``Sequential`` lists and
    ``Merge`` layers) but not wrapped layers (``TimeDistributed``), whose
    weights are stored under the wrapper.
    """
    found: dict[str, tuple[str, dict]] = {}

    def walk(node: Any, depth: int = 0) -> None:
        if depth > 64:
            return
        if isinstance(node, list):
            for item in node:
                walk(item, depth + 1)
            return
        if not isinstance(node, dict):
            return
        cls, cfg = node.get("class_name"), node.get("config")
        if isinstance(cls, str) and isinstance(cfg, dict) and isinstance(cfg.get("name"), str):
            found.setdefault(cfg["name"], (cls, cfg))
        inner = cfg if cfg is not None else node
        if isinstance(inner, list):
            walk(inner, depth + 1)
        elif isinstance(inner, dict) and "layers" in inner:
            walk(inner["layers"], depth + 1)

    walk(config)
    return found


def _snake(name: str) -> str:
    """Keras' snake_case of a class name: ``Conv1D -> conv1d``, ``InputLayer -> input_layer``."""
    name = re.sub(r"\W+", "", name)
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def keras3_paths(config: Any, prefix: str = "") -> dict[str, tuple[str, dict]]:
    """Keras 3 weight paths (``conv1d``, ``conv1d_1``, ``sequential/dense``) -> ``(class_name, config)``.

    Keras 3 names each layer's weights group after its class, numbered per
    class in model order; used when the file does not record layer names.
    """
    out: dict[str, tuple[str, dict]] = {}
    layers = config.get("config", {}).get("layers") if isinstance(config, dict) else None
    if not isinstance(layers, list):
        return out
    counts: collections.Counter[str] = collections.Counter()
    for entry in layers:
        if not isinstance(entry, dict) or not isinstance(entry.get("class_name"), str):
            continue
        snake = _snake(entry["class_name"])
        n = counts[snake]
        counts[snake] += 1
        path = prefix + (snake if n == 0 else f"{snake}_{n}")
        out[path] = (entry["class_name"], entry.get("config") or {})
        out.update(keras3_paths(entry, path + "/"))
    return out


def guess_type(name: str) -> str | None:
    """A Keras class name guessed from a default layer name (``convolution1d_2 -> Convolution1D``)."""
    stem = re.sub(r"_\d+$", "", name.rsplit("/", 1)[-1]).replace("_", "").lower()
    return semantics.NAME_STEMS.get(stem)


def _hyperparameters(cls: str, cfg: dict) -> dict[str, Any]:
    """The config entries worth reporting: conv keys for Conv1D layers, scalar entries otherwise."""
    if cls in semantics.CONV1D_TYPES:
        keys = set(semantics.KERAS1_KEYS.values()) | set(semantics.KERAS2_KEYS.values()) | {"activation"}
        return {k: cfg[k] for k in cfg if k in keys}

    def plain(v: Any) -> bool:
        return v is None or isinstance(v, (str, int, float, bool)) or (isinstance(v, list) and all(plain(x) for x in v))

    return {k: v for k, v in cfg.items() if k != "name" and plain(v)}


def _typed(name: str, weights: tuple[Weight, ...], cfgs: dict[str, tuple[str, dict]], config_what: str) -> Layer:
    entry = cfgs.get(name)
    if entry is not None:
        cls, cfg = entry
        return Layer(name, cls, config_what, weights, _hyperparameters(cls, cfg))
    guess = guess_type(name)
    if guess:
        return Layer(name, guess, "guessed from the layer name", weights)
    return Layer(name, None, "unknown (no config, name not a Keras default)", weights)


# -- HDF5 formats ----------------------------------------------------------
def _parse_h5(h5: SafeH5, source: Source, archive_config: Any = None, archive_version: tuple[str | None, str] | None = None) -> Parsed:
    f = h5.file
    root_attrs_names = set(f.attrs.keys())
    if "layers" in f and "layer_names" not in root_attrs_names and "layer_names0" not in root_attrs_names:
        return _parse_keras3(h5, source, archive_config, archive_version)
    model_config = h5.text(f, "model_config")
    if "model_weights" in f and (model_config is not None or "layer_names" not in root_attrs_names):
        root = h5.group("model_weights")
        full = True
    elif "layer_names" in root_attrs_names or "layer_names0" in root_attrs_names:
        root, full = f, False
    elif "nb_layers" in root_attrs_names:
        raise fail(
            UnsupportedError,
            f"{h5.label} is a Keras 0.x weight file",
            "a file written by Keras 1, 2 or 3",
            "root attribute 'nb_layers' (Keras 0.x)",
            "Load it in Keras 1 and save it again.",
        )
    else:
        raise fail(
            FileFormatError,
            f"{h5.label} is an HDF5 file but not a Keras weight file",
            "root attribute 'layer_names', or 'model_config' with group 'model_weights', or a Keras 3 'layers' group",
            f"root attributes {sorted(root_attrs_names)[:10]} and members {sorted(f.keys())[:10]}",
        )
    model_json = _json(model_config, h5.label, "model_config attribute") if model_config else None
    cfgs = config_layers(model_json) if model_json is not None else {}

    version = h5.text(f, "keras_version") or h5.text(root, "keras_version")
    backend = h5.text(f, "backend") or h5.text(root, "backend")
    entries = []
    for lname in h5.strings(root, "layer_names") or []:
        g = h5.group(posixpath.join(root.name, lname))
        weights = tuple(
            Weight(wn, *h5.info(posixpath.join(g.name, wn))) for wn in (h5.strings(g, "weight_names") or [])
        )
        entries.append((lname, weights))

    if version:
        generation = 1 if version.strip().startswith("1") else 2
        version_source = "file attribute 'keras_version'"
    else:
        names = [w.name for _, ws in entries for w in ws]
        slashed = any("/" in n for n in names)
        generation = 2 if slashed else 1
        example = f", e.g. {names[0]!r}" if names else ""
        version_source = (
            f"not recorded; Keras 2 structure: weight names with '/'{example}"
            if slashed
            else f"not recorded; Keras 1 structure: no keras_version attribute, weight names without '/'{example}"
        )
    config_what = "model_config attribute"
    layers = [_typed(n, ws, cfgs, config_what) for n, ws in entries]
    if generation == 1:
        layers, decided = _keras1_layouts(layers, version)
        if full:
            fmt = "keras1-model"
        else:
            fmt = {"keras1.0": "keras1.0-weights", "keras1.1": "keras1.1-weights"}.get(decided or "", "keras1-weights")
        if not version and decided:
            version_source += (
                "; Conv1D kernels in the Keras 1.0 layout (nb_filter, input_dim, filter_length, 1)"
                if decided == "keras1.0"
                else "; Conv1D kernels in the Keras 1.1+ layout (filter_length, 1, input_dim, nb_filter): Keras 1.1 or 1.2"
            )
    else:
        layers = [_keras2_layout(layer) for layer in layers]
        fmt = "keras2-model" if full else "keras2-weights"
    return Parsed(fmt, generation, version, version_source, backend, tuple(layers), source, model_json)


def _keras2_layout(layer: Layer) -> Layer:
    if not layer.is_conv1d or layer.kernel is None:
        return layer
    if len(layer.kernel.shape) != 3:
        return _replace(layer, layout=None, layout_source=f"kernel shape {layer.kernel.shape} is not (kernel_size, input_dim, filters)")
    return _replace(layer, layout="keras", layout_source="Keras 2/3 kernels are (kernel_size, input_dim, filters)")


def _replace(layer: Layer, **changes: Any) -> Layer:
    import dataclasses

    return dataclasses.replace(layer, **changes)


def _keras1_layouts(layers: list[Layer], version: str | None) -> tuple[list[Layer], str | None]:
    """Decide each Keras 1 Conv1D kernel's layout; return the layers and the file's layout (if one)."""
    out: list[Layer] = []
    for layer in layers:
        kernel = layer.kernel
        if not layer.is_conv1d or kernel is None:
            out.append(layer)
            continue
        shape = kernel.shape
        fits = semantics.keras1_layouts(shape)
        source = ""
        if not fits:
            out.append(_replace(layer, layout=None, layout_source=f"kernel shape {shape} fits no Keras 1 Conv1D layout"))
            continue
        if len(fits) > 1 and layer.hyperparameters:
            hp = layer.hyperparameters
            sizes = {"filters": hp.get("nb_filter"), "kernel_size": hp.get("filter_length"), "input_dim": hp.get("input_dim")}
            narrowed = semantics.keras1_layout_from_sizes(shape, sizes)
            if len(narrowed) == 1:
                fits, source = narrowed, "model config (nb_filter, filter_length, input_dim)"
        if len(fits) > 1 and version:
            want = "keras1.0" if re.match(r"^1\.0(\.|$)", version.strip()) else "keras1.1"
            if want in fits:
                fits, source = [want], f"keras_version {version}"
        if len(fits) > 1 and layer.bias is not None:
            narrowed = semantics.keras1_layout_from_sizes(shape, {"filters": layer.bias.shape[0]})
            if len(narrowed) == 1:
                fits, source = narrowed, "bias length (= nb_filter)"
        if len(fits) == 1:
            source = source or f"kernel shape {shape} fits only this layout"
            out.append(_replace(layer, layout=fits[0], layout_source=source))
        else:
            out.append(_replace(layer, layout=None, layout_source=f"ambiguous: kernel shape {shape} fits both Keras 1.0 and 1.1 layouts"))
    decided = {layer.layout for layer in out if layer.is_conv1d and layer.layout}
    if len(decided) == 1:
        (file_layout,) = decided
        donor = next(layer.name for layer in out if layer.layout == file_layout)
        out = [
            _replace(layer, layout=file_layout, layout_source=f"same file as layer {donor!r} (one Keras version writes a file)")
            if layer.is_conv1d and layer.layout is None and file_layout in semantics.keras1_layouts(layer.kernel.shape if layer.kernel else ())
            else layer
            for layer in out
        ]
        return out, file_layout
    return out, None


def _natural(name: str) -> tuple[str, int]:
    m = re.match(r"^(.*?)(?:_(\d+))?$", name)
    assert m is not None
    return m.group(1), int(m.group(2) or -1)


#: Where Keras 3 keeps a recurrent layer's arrays, in the order ``get_weights`` lists them (forward before backward)
RECURRENT_CELLS = ("cell", "forward_layer/cell", "backward_layer/cell")


def _parse_keras3(h5: SafeH5, source: Source, config: Any, version: tuple[str | None, str] | None) -> Parsed:
    import h5py

    found: list[tuple[str, str | None, tuple[Weight, ...]]] = []
    visited: set[int] = set()  # each group once: hard and soft links may lead back to a parent or fan out

    def walk(group: Any, prefix: str, depth: int = 0) -> None:
        if depth > 32:
            return
        for child in sorted(group.keys(), key=_natural):
            obj = group.get(child)
            if not isinstance(obj, h5py.Group) or hash(obj.id) in visited:
                continue
            visited.add(hash(obj.id))
            path = prefix + child
            vars_group = obj.get("vars")
            if isinstance(vars_group, h5py.Group):
                weights = _vars(vars_group, "vars")
                if not weights:  # a recurrent layer keeps its arrays in its cell; a Bidirectional in its two layers' cells
                    for inner in RECURRENT_CELLS:
                        cell = obj.get(f"{inner}/vars")
                        if isinstance(cell, h5py.Group):
                            weights += _vars(cell, f"{inner}/vars")
                found.append((path, h5.text(vars_group, "name"), weights))
            sub = obj.get("layers")
            if isinstance(sub, h5py.Group):
                walk(sub, path + "/", depth + 1)

    def _vars(group: Any, prefix: str) -> tuple[Weight, ...]:
        keys = sorted((k for k in group.keys() if k.isdigit()), key=int)
        return tuple(Weight(f"{prefix}/{k}", *h5.info(posixpath.join(group.name, k))) for k in keys)

    layers_group = h5.group("layers")
    visited.add(hash(layers_group.id))
    walk(layers_group, "")
    cfgs = config_layers(config) if config is not None else {}
    by_path = keras3_paths(config) if config is not None else {}
    order = {name: i for i, name in enumerate(cfgs)}
    layers = []
    for path, name_attr, weights in found:
        if name_attr and name_attr in cfgs:
            cls, cfg = cfgs[name_attr]
            layer = Layer(name_attr, cls, "config.json", weights, _hyperparameters(cls, cfg))
        elif path in by_path:
            cls, cfg = by_path[path]
            layer = Layer(cfg.get("name", path), cls, "config.json (matched by weight path)", weights, _hyperparameters(cls, cfg))
        else:
            guess = guess_type(path)
            layer = Layer(name_attr or path, guess, "guessed from the weight path" if guess else "unknown", weights)
        layers.append(_keras2_layout(layer))
    layers.sort(key=lambda layer: order.get(layer.name, len(order)))
    if source.kind == "zip":
        fmt = "keras3-archive"
        keras_version, version_source = version or (None, "not recorded")
    else:
        fmt = "keras3-weights"
        keras_version, version_source = None, "not recorded in .weights.h5 files; the layers/<name>/vars structure is Keras 3's"
    return Parsed(fmt, 3, keras_version, version_source, None, tuple(layers), source, config)


# -- Keras 3 archives ------------------------------------------------------
def _parse_archive(path: str) -> Parsed:
    with SafeZip(path) as z:
        names = set(z.names())
        if "config.json" not in names or WEIGHTS_MEMBER not in names:
            hint = "Keras 3 archives with model.weights.npz are not supported." if "model.weights.npz" in names else ""
            raise fail(
                FileFormatError,
                f"{path} is a zip archive but not a Keras 3 .keras file",
                f"members config.json and {WEIGHTS_MEMBER}",
                f"members {sorted(names)[:12]}",
                hint,
            )
        config = _json(z.read("config.json", cap=MAX_JSON_BYTES), path, "config.json")
        version: tuple[str | None, str] = (None, "not recorded (no metadata.json)")
        if "metadata.json" in names:
            meta = _json(z.read("metadata.json", cap=MAX_JSON_BYTES), path, "metadata.json")
            if isinstance(meta, dict) and meta.get("keras_version"):
                version = (str(meta["keras_version"]), "metadata.json 'keras_version'")
        span = z.stored_span(WEIGHTS_MEMBER)
        data: Any = Span(path, *span) if span is not None else z.read(WEIGHTS_MEMBER)
    with SafeH5(data, label=f"{path}!{WEIGHTS_MEMBER}") as h5, guard(h5.label, "the HDF5 structure"):
        if "layers" not in h5.file:
            raise fail(
                FileFormatError,
                f"{WEIGHTS_MEMBER} in {path} has no 'layers' group",
                "the Keras 3 weights structure layers/<name>/vars/<i>",
                f"members {sorted(h5.file.keys())[:10]}",
            )
        return _parse_keras3(h5, Source("zip", WEIGHTS_MEMBER), config, version)
