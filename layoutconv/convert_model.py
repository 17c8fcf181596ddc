"""Write a whole model (:class:`~layoutconv.graph.Graph`) to a file, read it back, verify it, then keep it.

=============== ====================== =====================================================
target          suffix                 what the file holds
=============== ====================== =====================================================
torch           ``.pt``, ``.pth``      the ``state_dict`` of ``layoutconv.to_torch(graph)``:
                                       plain tensors named after the source's layers
                                       (``conv1d.weight``, ``dense.bias``), PyTorch layouts,
                                       a Dense after a Flatten with its columns in PyTorch's
                                       flatten order (:func:`~layoutconv.graph.flatten_channels_first`);
                                       loads with ``torch.load(path, weights_only=True)``
safetensors     ``.safetensors``       the same tensors and names, through the safetensors
                                       package (``pip install 'layoutconv[safetensors]'``)
onnx            ``.onnx``              ``layoutconv.to_onnx(graph)``
keras           ``.keras``             ``layoutconv.to_keras(graph)`` (Keras 3)
=============== ====================== =====================================================

As for single layers (:func:`layoutconv.save`): the file is written beside the
target under a temporary name, read back with the framework (every tensor must
be the same bytes as the generated model's), the model it holds is run against
the reference pass (:func:`layoutconv.verify_model.verify_model`'s tolerance),
and only then is it renamed into place.  A failure leaves nothing behind.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from .convert import _check_output, target_for, temporary_beside
from .errors import ConfigError, FrameworkMissingError, OutputError, UnsupportedError, VerificationError, fail
from .graph import Graph
from .verify_model import ModelReport, ModelResult, default_inputs, verify_model


class ModelTarget(NamedTuple):
    name: str
    framework: str  # which framework runs what the file holds
    suffixes: tuple[str, ...]
    write_and_check: Callable[[Graph, str], Any]  # writes, reads back, returns the model the file holds (runnable)


def _state(graph: Graph) -> tuple[Any, dict[str, Any]]:
    from .adapters.torch_layers import GraphModule
    from .graph import flatten_channels_first

    try:  # PyTorch's flatten order, so a hand-written twin (x.flatten(1)) loads the tensors as they are
        graph = flatten_channels_first(graph)
    except ConfigError:
        pass  # free input sizes: the Flatten keeps the source's order (the generated module follows it)
    module = GraphModule(graph)
    return module, {k: v.detach().contiguous() for k, v in module.state_dict().items()}


def _same_tensors(written: dict[str, Any], back: dict[str, Any], what: str) -> None:
    import torch

    if list(written) != list(back) and sorted(written) != sorted(back):
        raise fail(VerificationError, f"The {what} file does not hold the tensors written", f"{sorted(written)[:8]}...", f"{sorted(back)[:8]}...")
    for name, value in written.items():
        other = back[name]
        if not isinstance(other, torch.Tensor):
            other = torch.from_numpy(np.asarray(other))
        if value.dtype != other.dtype or value.shape != other.shape or not torch.equal(value, other):
            raise fail(VerificationError, f"Tensor {name!r} read back from the {what} file differs", "the same dtype, shape and bytes", f"{other.dtype} {tuple(other.shape)}")


def _torch_file(graph: Graph, path: str) -> Any:
    import torch

    module, state = _state(graph)
    torch.save(state, path)
    back = torch.load(path, weights_only=True)
    _same_tensors(state, back, ".pt")
    module.load_state_dict(back, strict=True)
    return module


def _safetensors_file(graph: Graph, path: str) -> Any:
    try:
        from safetensors.torch import load_file, save_file
    except ImportError:
        raise fail(
            FrameworkMissingError, "Writing .safetensors needs the safetensors package", "safetensors installed",
            "an environment without it", "Install it with: pip install 'layoutconv[safetensors]'",
        ) from None
    module, state = _state(graph)
    save_file(state, path, metadata={"written_by": "layoutconv", "model": graph.name})
    back = load_file(path)
    _same_tensors(state, back, ".safetensors")
    module.load_state_dict(back, strict=True)
    return module


def _onnx_file(graph: Graph, path: str) -> Any:
    import onnx

    from . import registry

    model = registry.converter(graph, "onnx").to_native(graph)
    onnx.save(model, path)
    return onnx.load(path)


def _keras_file(graph: Graph, path: str) -> Any:
    import keras

    from . import registry

    model = registry.converter(graph, "keras").to_native(graph)
    model.save(path)
    return keras.models.load_model(path, compile=False)


MODEL_TARGETS: dict[str, ModelTarget] = {
    "torch": ModelTarget("torch", "torch", (".pt", ".pth"), _torch_file),
    "safetensors": ModelTarget("safetensors", "torch", (".safetensors",), _safetensors_file),
    "onnx": ModelTarget("onnx", "onnx", (".onnx",), _onnx_file),
    "keras": ModelTarget("keras", "keras", (".keras",), _keras_file),
}


def model_target_for(path: str | os.PathLike[str], to: str | None = None) -> ModelTarget:
    return target_for(path, to, MODEL_TARGETS)


def save_model(
    graph: Graph,
    path: str | os.PathLike[str],
    *,
    to: str | None = None,
    inputs: Any = None,
    overwrite: bool = False,
    parents: bool = False,
    external_data: bool | None = None,
) -> ModelReport:
    """Write ``graph`` to ``path`` (module docs), verify what the file holds against the reference, keep it only then.

    ``external_data`` (``.onnx`` only): store the weights in ``<path>.data`` beside the model (ONNX external
    data, :mod:`layoutconv.adapters.onnx_external`); by default when they exceed ``EXTERNAL_ABOVE`` bytes (1.5 GiB:
    protobuf cannot hold 2 GiB); ``False`` never (a larger model then fails).
    """
    target = model_target_for(path, to)
    final = Path(path)
    _check_output(final, overwrite, parents)
    if external_data and target.name != "onnx":
        raise fail(ConfigError, "External data is an ONNX feature", "an output ending in .onnx with external_data=True",
                   f"a {target.name} output", "Drop external_data (--external-data).")
    if target.name == "onnx" and _external(graph, external_data):
        return _save_onnx_external(graph, final, inputs, overwrite)
    suffix = final.suffix if final.suffix.lower() in target.suffixes else target.suffixes[0]
    tmp = temporary_beside(final, suffix)
    try:
        try:
            held = target.write_and_check(graph, tmp)
        except OSError as exc:
            raise fail(OutputError, f"Cannot write {str(final)!r}", "room and permission to write the file", f"{exc.strerror or exc}", "Nothing was written.") from None
        report = _verify_held(graph, held, target.framework, inputs)
        _passed(report, target.framework, final)
        try:
            os.replace(tmp, final)
        except OSError as exc:
            raise fail(OutputError, f"Cannot move the verified file to {str(final)!r}", "a writable path", f"{exc.strerror or exc}", "Nothing was written.") from None
        return report
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _passed(report: ModelReport, framework: str, final: Path) -> None:
    result = report.results[0]
    if result.status == "unsupported":
        raise fail(UnsupportedError, f"{framework} cannot run this model, so the file could not be verified", "a model the framework runs", result.message, "Nothing was written.")
    if not report.passed:
        raise fail(VerificationError, f"The model written to {str(final)!r} does not compute the reference's outputs", "outputs within tolerance", "\n" + str(report), "Nothing was written.")


def _external(graph: Graph, external_data: bool | None) -> bool:
    from .adapters.onnx_external import EXTERNAL_ABOVE, weight_bytes

    return bool(external_data) if external_data is not None else weight_bytes(graph) > EXTERNAL_ABOVE


def _save_onnx_external(graph: Graph, final: Path, inputs: Any, overwrite: bool) -> ModelReport:
    """``.onnx`` with its weights in ``<name>.data``: written tensor by tensor from the records (each read back
    byte for byte), the model checked by its path, run in onnxruntime from the files, then both moved into place."""
    from .adapters import onnx_adapter, onnx_external, onnx_layers

    pair = onnx_external.Pair(final, overwrite)
    try:
        try:
            writer = onnx_external.DataWriter(pair.data, pair.data_name)
            try:
                model = onnx_layers.write_graph(graph, store=writer.store, check=False)
                onnx_external.save(model, pair.model)
            finally:
                writer.close()
            del model
            onnx_external.check_path(pair.model, f"the model written to {str(final)!r}")
            onnx_adapter._load(pair.model, external="check")  # layoutconv's own reader accepts what it wrote
        except OSError as exc:
            raise fail(OutputError, f"Cannot write {str(final)!r}", "room and permission to write the file", f"{exc.strerror or exc}", "Nothing was written.") from None
        report = _verify_held(graph, pair.model, "onnx", inputs)
        _passed(report, "onnx", final)
        pair.commit(with_data=writer.total > 0)
        return report
    finally:
        pair.cleanup()


def _verify_held(graph: Graph, held: Any, framework: str, inputs: Any) -> ModelReport:
    """Run what the file holds (read back) against the reference, with verify_model's tolerance."""
    from . import graph as graph_module
    from . import reference, registry
    from .verify_model import _rel, _weighted, END_TO_END_FACTOR
    from .tolerance import ASSERT_CLOSE_DEFAULTS

    xs = default_inputs(graph) if inputs is None else [np.asarray(x) for x in inputs]
    expected = reference.forward(graph, *xs)
    expected = list(expected) if isinstance(expected, tuple) else [expected]
    try:
        got = registry.converter(graph, framework).run(held, xs)
    except UnsupportedError as exc:
        return ModelReport(graph, tuple(x.shape for x in xs), (ModelResult(framework, "unsupported", message=str(exc)),))
    outs = list(got) if isinstance(got, (tuple, list)) else [got]
    dtype = outs[0].dtype.name if outs[0].dtype.name in ASSERT_CLOSE_DEFAULTS else "float32"
    rtol, atol = ASSERT_CLOSE_DEFAULTS[dtype]
    tol = rtol * END_TO_END_FACTOR * _weighted(graph)
    abs_err = rel_err = 0.0
    for y, e in zip(outs, expected):
        if y.shape != e.shape:
            return ModelReport(graph, tuple(x.shape for x in xs), (ModelResult(framework, "fail", message=f"output shape {y.shape}, reference {e.shape}"),))
        a, r = _rel(y, e)
        abs_err, rel_err = max(abs_err, a), max(rel_err, r)
    passed = rel_err <= tol or abs_err <= atol
    return ModelReport(graph, tuple(x.shape for x in xs), (ModelResult(framework, "pass" if passed else "fail", abs_err, rel_err, tol),))


def convert_command(args: Any) -> int:
    """``layoutconv convert --model``: read a whole model, write it, verify it, print the report.

    Streams layer by layer (:mod:`layoutconv.convert_stream`) with ``--stream``,
    or on its own for a Keras file of ``STREAM_ABOVE`` bytes or more going to
    ``.safetensors`` / ``.pt`` unless ``--no-stream``.
    """
    import json

    from . import convert_stream
    from .model import read_model

    report: Any = None
    if str(args.source).lower().endswith((".pt", ".pth", ".safetensors")):
        graph = _torch_source(args)
    else:
        target = model_target_for(args.output, args.to)
        if getattr(args, "external_data", None) is False and target.name == "onnx" and getattr(args, "stream", None):
            raise fail(ConfigError, "A streamed .onnx keeps its weights in external data", "--stream without --no-external-data",
                       "--stream --no-external-data", "Drop one of them (--no-stream builds the whole model in memory).")
        if convert_stream.should_stream(args.source, target.name, getattr(args, "stream", None)) and not (
            target.name == "onnx" and getattr(args, "external_data", None) is False
        ):
            report = convert_stream.stream_model(
                args.source, args.output, to=args.to, architecture=args.architecture, backend=args.backend,
                overwrite=args.force, parents=args.parents, progress=convert_stream.progress_wanted(getattr(args, "quiet", False)),
            )
        else:
            graph = read_model(args.source, architecture=args.architecture, backend=args.backend)
    if report is None:
        if not args.json:
            print(graph.summary())
        report = save_model(graph, args.output, to=args.to, overwrite=args.force, parents=args.parents, external_data=getattr(args, "external_data", None))
    if args.json:
        print(json.dumps({**report.to_dict(), "wrote": args.output}, indent=2))
    else:
        print(report)
        print(f"wrote {args.output}")
    return 0


def _torch_source(args: Any) -> Graph:
    """A PyTorch state_dict file plus its class (``--architecture file.py:Class``) and ``--input-shape``, as a graph."""
    import numpy as np
    import torch

    from ._port_cli import _load_class, _shape
    from .model import read_model

    if not args.architecture or not getattr(args, "input_shape", None):
        raise fail(
            ConfigError,
            f"{args.source} is a state_dict: it holds tensors, not the model",
            "--architecture path/to/file.py:ClassName (built with no arguments) and --input-shape N,C,... (what forward takes)",
            f"--architecture={args.architecture!r}, --input-shape={getattr(args, 'input_shape', None)!r}",
        )
    module = _load_class(args.architecture)()
    if str(args.source).lower().endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(args.source)
    else:
        state = torch.load(args.source, weights_only=True)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise fail(ConfigError, f"{args.source} does not fit {args.architecture}", "the same parameter names and shapes",
                   (str(exc).strip().splitlines() or [""])[0]) from None
    rng = np.random.default_rng(0)
    example = tuple(torch.from_numpy(rng.standard_normal(_shape(s)).astype(np.float32)) for s in args.input_shape)
    return read_model(module.eval(), example_inputs=example if len(example) > 1 else example[0])


def is_whole_model(path: str, backend: str | None = None) -> bool:
    """True for a Keras file holding a whole model (a model config and more than one layer with weights)."""
    if str(path).lower().endswith(".onnx"):
        return False
    from .errors import LayoutError
    from .legacy import open as open_keras_file

    try:
        kf = open_keras_file(path, backend=backend)
    except LayoutError:
        return False  # the single-layer path reports the problem
    return kf.model_config is not None and sum(1 for layer in kf.layers if layer.weights) > 1
