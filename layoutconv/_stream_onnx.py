"""``convert --stream`` to ``.onnx``: the model's structure from its config, the weights streamed into ``<name>.data``.

The walk is :mod:`layoutconv.convert_stream`'s (the model config in execution
order, one layer's weights in memory at a time); each layer with weights, when
first called, is:

1. read from the file and made into its record (as :func:`~layoutconv.read_model` does);
2. run by the reference on a small random input (the layer's expected output);
3. written as a one-layer graph by the whole-model writer's own emitters
   (:func:`layoutconv.adapters.onnx_layers.write_graph`), whose weights go
   straight from the record into the data file
   (:class:`~layoutconv.adapters.onnx_external.DataWriter`: same names, layouts,
   bytes and order as ``to_onnx`` of the whole model; each tensor read back and
   compared byte for byte as it is written);
4. dropped (a shared layer is kept until its last call), then run in
   onnxruntime from a one-layer model file whose initializers point into the data
   file being written (so onnxruntime computes with the bytes on disk), and
   compared with step 2 (tolerance as for ``.safetensors``/``.pt``).

At the end the whole graph is written by the same writer over records that
hold no data, each weight looked up among those streamed (name, dtype and
shape must match, and every streamed weight must be used), so the model is the
one :func:`~layoutconv.save_model` writes with ``external_data=True``.  The
model is checked with ``onnx.checker`` on its path, by layoutconv's own reader
(every external reference safe, docs/security.md) and loaded by onnxruntime;
only then are the data file and the model moved into place (data first).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .convert_stream import StreamReport, _Memory, _Prepared, _Progress, _Stream, _Thread, _layer_bytes, _nbytes, hollow
from .errors import OutputError, VerificationError, fail


def _session_options() -> Any:
    """One thread, no prepacking and no graph rewriting: onnxruntime holds each weight once, as stored."""
    import onnxruntime as ort

    from .adapters import onnx_adapter

    options = onnx_adapter._session_options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.add_session_config_entry("session.disable_prepacking", "1")
    return options


class _Lookup:
    """The final pass's ``store``: each weight's initializer as streamed (checked against the record's dtype and shape)."""

    def __init__(self, streamed: dict[str, Any]) -> None:
        self.streamed = streamed
        self.used: set[str] = set()

    def __call__(self, requested: str, name: str, array: np.ndarray) -> Any:
        from onnx import TensorProto, helper

        t = self.streamed.get(requested)
        if t is None or tuple(t.dims) != tuple(array.shape) or t.data_type != helper.np_dtype_to_tensor_dtype(array.dtype):
            raise fail(
                VerificationError, f"The whole model asks for weight {requested!r}, which was not streamed as it is",
                "a weight written when its layer was converted, with the same dtype and shape",
                "nothing" if t is None else f"dims {list(t.dims)}, type {t.data_type}", "Nothing was written.",
            )
        self.used.add(requested)
        out = TensorProto()
        out.CopyFrom(t)
        out.name = name
        return out


class _OnnxStream(_Stream):
    """One streaming conversion to ``.onnx`` (module docs)."""

    def __init__(self, kf: Any, writer: Any, folder: str, seed: int, memory: Any = None) -> None:
        super().__init__(kf, writer, "onnx", seed, memory)
        self.folder = folder
        self.options = _session_options()

    def _named(self, layer: str) -> None:
        """Nothing to name: the ONNX writer names initializers after the layers (and needs no PyTorch)."""

    def _prepare(self, node: Any) -> _Prepared:
        """The whole of a layer's conversion (nothing waits for PyTorch here): its weights written, the layer run."""
        nbytes = _nbytes(self.walk.layers[node.layer])
        return _Prepared(node, None, None, None, None, self._convert(node), None, False, nbytes)

    def _finish(self, prepared: _Prepared) -> None:
        """Nothing left: :meth:`_prepare` did it all."""

    def _convert(self, node: Any) -> tuple[int, ...]:
        """Write one layer's weights, read them back, run the layer from the file in onnxruntime; its output shape."""
        from .adapters import onnx_external, onnx_layers
        from .graph import Graph, Input, Node

        record = self.walk.layers[node.layer]
        dtype, ref_dtype = self._dtype(record), self._check_dtype(record)
        x = self._sample(node.inputs[0], record, dtype)
        y_shape = self._forward(record, x[:0], ref_dtype).shape  # the output's shape from no samples
        expecting = _Thread(lambda: self._forward(record, x, ref_dtype))  # while the weights are written (both only read them)
        x_shape, kind = self.shapes[node.inputs[0]]
        mini = Graph(
            {node.layer: record}, [Input("x", x_shape, "channels_first" if len(x_shape) >= 2 else "flat", kind)],
            [Node("y", node.layer, ("x",), "channels_first" if len(y_shape) > 2 else "flat")], ["y"], name=node.layer,
        )
        before = len(self.writer.tensors)
        try:
            model = onnx_layers.write_graph(
                mini, layout="channels_first", store=self.writer.store, check=False, shapes={"x": tuple(x_shape), "y": tuple(y_shape[1:])},
            )  # writes each weight to the data file and reads it back
        finally:
            expected = expecting.join()
        kind_name = type(record).__name__
        if self.calls_left[node.layer] == 1:
            self.walk.release(node.layer, hollow(record))
        del record, mini
        names = list(self.writer.tensors)[before:]
        tensors = [self.writer.tensors[n] for n in names]
        nbytes = sum(int(onnx_external.external_fields(t).get("length", 0)) or len(t.raw_data) for t in tensors)
        for t in tensors:
            if t.data_location == t.EXTERNAL:
                self.largest = max(self.largest, int(onnx_external.external_fields(t)["length"]))
        self.total += nbytes
        path = os.path.join(self.folder, "layer.onnx")
        onnx_external.save(model, path)
        del model
        try:
            session = onnx_layers.session(path, self.options)
            got = np.asarray(session.run(None, {"x": x})[0])
            del session
        finally:
            os.unlink(path)
        return self._judge(node.layer, kind_name, tuple(t.name for t in tensors), nbytes, got, expected, ref_dtype, " in onnxruntime")

    def finish(self, model_path: str) -> Any:
        """The whole graph's model over the streamed weights, written to ``model_path``; returns the graph."""
        from .adapters import onnx_external, onnx_layers

        graph = self.walk.graph()
        shapes = {edge: shape for edge, (shape, _) in self.shapes.items()} if self.fixed else None
        lookup = _Lookup(self.writer.tensors)
        model = onnx_layers.write_graph(graph, store=lookup, check=False, shapes=shapes)
        unused = sorted(set(self.writer.tensors) - lookup.used)
        if unused:
            raise fail(VerificationError, "Weights were streamed that the whole model does not use", "every streamed weight in the model",
                       f"{unused[:6]}", "Nothing was written.")
        onnx_external.save(model, model_path)
        return graph


def stream_onnx(
    source: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    architecture: Any = None,
    backend: str | None = None,
    overwrite: bool = False,
    parents: bool = False,
    progress: bool = False,
    seed: int = 0,
) -> StreamReport:
    """Convert the whole Keras model in ``source`` to ``path`` (``.onnx``) and ``<path>.data`` layer by layer (module docs)."""
    from .adapters import onnx_adapter, onnx_external, onnx_layers
    from .convert import _check_output
    from .frameworks import adapter
    from .model import keras_model_file

    start = time.perf_counter()
    adapter("onnx")  # FrameworkMissingError with the install hint
    kf = keras_model_file(source, architecture=architecture, backend=backend)
    final = Path(path)
    _check_output(final, overwrite, parents)
    pair = onnx_external.Pair(final, overwrite)
    bar = _Progress(sum(_layer_bytes(layer) for layer in kf.layers), progress, f"convert {final.name}")
    writer = None
    try:
        try:
            writer = onnx_external.DataWriter(pair.data, pair.data_name)
            memory = _Memory()
            # records take the arrays read as they are, in memory reused layer by layer (as the .safetensors stream)
            with kf.reading(hand_over=True, memory=memory):
                stream = _OnnxStream(kf, writer, pair.dir, seed, memory)
                stream.run(bar)
            memory.clear()
            writer.close()
            graph = stream.finish(pair.model)
            onnx_external.check_path(pair.model, f"the model streamed to {str(final)!r}")
            onnx_adapter._load(pair.model, external="check")  # layoutconv's own reader accepts every reference
            session = onnx_layers.session(pair.model, _session_options())  # onnxruntime loads the whole model
            names = [i.name for i in session.get_inputs()]
            del session
            if names != [i.name for i in graph.inputs]:
                raise fail(VerificationError, "onnxruntime does not see the model's inputs", f"{[i.name for i in graph.inputs]}", f"{names}", "Nothing was written.")
        except OSError as exc:
            raise fail(OutputError, f"Cannot write {str(final)!r}", "room and permission to write the file", f"{exc.strerror or exc}", "Nothing was written.") from None
        finally:
            if writer is not None:
                writer.close()
        pair.commit(with_data=writer.total > 0)
        return StreamReport(
            graph.name, "onnx", str(final), tuple(stream.shapes[i.name][0] for i in graph.inputs), tuple(stream.checks),
            len(writer.tensors), stream.total, stream.largest, time.perf_counter() - start,
            notes=(f"weights in {pair.data_name} beside the model (ONNX external data)",) if writer.total else (),
        )
    finally:
        bar.close()
        pair.cleanup()
