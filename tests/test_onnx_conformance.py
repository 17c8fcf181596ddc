"""The ONNX project's own backend test data, read from the installed onnx package (nothing is copied).

``onnx/backend/test/data/pytorch-converted/test_Conv*`` and ``test_ConvTranspose*``
are real models exported from PyTorch (Conv1d/2d/3d with groups, dilation,
padding, strides, depthwise, ConvTranspose2d), each with a recorded input and
output.  Every one goes through ``from_onnx`` and must then reproduce the
recorded output in ``reference.forward`` (within ``tolerance.tolerance``), in a
model written by ``to_torch`` and one written by ``to_onnx``, and in Keras when
Keras can express it (else a typed refusal with its reason).

The node tests (``onnx/backend/test/case/node``: ``auto_pad``, ``output_shape`` ...)
are taken from the generators the package ships; their weights are graph inputs,
so the test stores them as initializers first (layoutconv reads trained weights,
not run-time inputs).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from layoutconv import ConvTranspose, UnsupportedError, reference, registry
from layoutconv.tolerance import tolerance

from conftest import need

onnx = pytest.importorskip("onnx")
DATA = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "pytorch-converted")
MODELS = sorted(n for n in os.listdir(DATA) if n.startswith(("test_Conv", "test_ConvTranspose"))) if os.path.isdir(DATA) else []

#: What Keras cannot express in these models, by the words of the refusal it raises.
KERAS_REFUSALS = {
    "test_Conv2d_dilated": "refuses strides > 1 together with dilation_rate > 1",
    "test_Conv3d_dilated_strided": "refuses strides > 1 together with dilation_rate > 1",
}


def load_case(name: str) -> tuple[onnx.ModelProto, list[np.ndarray], np.ndarray]:
    from onnx import numpy_helper

    folder = os.path.join(DATA, name)
    model = onnx.load(os.path.join(folder, "model.onnx"))
    data = os.path.join(folder, "test_data_set_0")
    inputs = []
    for i in range(len(model.graph.input)):
        path = os.path.join(data, f"input_{i}.pb")
        if os.path.exists(path):
            inputs.append(numpy_helper.to_array(onnx.load_tensor(path)))
    output = numpy_helper.to_array(onnx.load_tensor(os.path.join(data, "output_0.pb")))
    return model, inputs, output


def assert_matches(record, x, y, recorded, what):
    tol, _, _ = tolerance(record, x, recorded.astype(np.float64))
    y = np.asarray(y, dtype=np.float64)
    assert y.shape == recorded.shape, f"{what}: shape {y.shape} != recorded {recorded.shape}"
    err = np.abs(y - recorded)
    assert np.all(err <= tol), f"{what}: max error {err.max():.3g}, at most {float((err / tol).max()):.3g} x tolerance"


@pytest.fixture(scope="module")
def A():
    need("onnx", "onnxruntime")
    from layoutconv.adapters import onnx_adapter

    return onnx_adapter


def test_the_data_is_there():
    assert len(MODELS) >= 28, f"onnx {onnx.__version__} ships {len(MODELS)} Conv models under {DATA}"
    assert any(n.startswith("test_ConvTranspose") for n in MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_pytorch_converted_model(A, name):
    import layoutconv

    model, inputs, recorded = load_case(name)
    record = layoutconv.from_onnx(model)
    x = inputs[0]
    assert record.spatial_rank == x.ndim - 2
    assert_matches(record, x, reference.forward(record, x), recorded, "reference.forward")
    # the recorded output came from the file itself; so must ours, with the weights read back bit-exactly
    kernel = next(t for t in model.graph.initializer if t.name == model.graph.node[0].input[1])
    assert np.asarray(onnx.numpy_helper.to_array(kernel)).tobytes() == record.kernel.tobytes()
    assert_matches(record, x, A.run(A.to_native(record), x), recorded, "to_onnx")
    assert A.from_native(A.to_native(record)) == record


@pytest.mark.parametrize("name", MODELS)
def test_pytorch_converted_model_in_torch(name):
    need("torch", "onnx")
    import layoutconv

    model, inputs, recorded = load_case(name)
    record = layoutconv.from_onnx(model)
    torch_ = registry.converter(record, "torch")
    assert_matches(record, inputs[0], torch_.run(torch_.to_native(record), inputs[0]), recorded, "to_torch")


@pytest.mark.parametrize("name", MODELS)
def test_pytorch_converted_model_in_keras(name):
    need("keras", "tensorflow", "onnx")
    import layoutconv

    model, inputs, recorded = load_case(name)
    record = layoutconv.from_onnx(model)
    keras_ = registry.converter(record, "keras")
    try:
        native = keras_.to_native(record)
    except UnsupportedError as exc:
        assert name in KERAS_REFUSALS, f"Keras refused {name}: {exc}"
        assert KERAS_REFUSALS[name] in str(exc)
        return
    assert name not in KERAS_REFUSALS, f"Keras now expresses {name}: drop it from KERAS_REFUSALS"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y = keras_.run(native, inputs[0])
    assert_matches(record, inputs[0], y, recorded, "to_keras")


# -- the node tests: auto_pad, output_shape, output_padding -------------------------------------------
NODE_CASES = (
    "test_conv_with_strides_padding",
    "test_conv_with_strides_no_padding",
    "test_conv_with_strides_and_asymmetric_padding",
    "test_conv_with_autopad_same",
    "test_convtranspose",
    "test_convtranspose_1d",
    "test_convtranspose_3d",
    "test_convtranspose_output_shape",
    "test_convtranspose_pad",
    "test_convtranspose_kernel_shape",
    "test_convtranspose_pads",
    "test_convtranspose_dilations",
    "test_convtranspose_autopad_same",
    "test_convtranspose_group_2",
    "test_convtranspose_group_2_image_3",
)


@pytest.fixture(scope="module")
def node_cases():
    need("onnx")
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return {c.name: c for c in collect_testcases(None) if c.name in NODE_CASES}


def with_stored_weights(case) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """The node test's model with every input but the first stored as an initializer (from its data set)."""
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    inputs, outputs = case.data_sets[0]
    graph = model.graph
    for value, info in list(zip(inputs, graph.input))[1:]:
        graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(value), info.name))
    del graph.input[1:]
    return model, np.asarray(inputs[0]), np.asarray(outputs[0])


#: Node tests the records cannot run yet, with the reason.
NODE_GAPS: dict[str, str] = {}  # every shipped conv / convtranspose node case passes


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=NODE_GAPS[n])) if n in NODE_GAPS else n for n in NODE_CASES],
)
def test_node_case(A, node_cases, name):
    import layoutconv

    if name not in node_cases:
        pytest.skip(f"onnx {onnx.__version__} has no node test {name}")
    model, x, recorded = with_stored_weights(node_cases[name])
    record = layoutconv.from_onnx(model)
    assert_matches(record, x, reference.forward(record, x), recorded, "reference.forward")
    assert_matches(record, x, A.run(A.to_native(record), x), recorded, "to_onnx")
    assert A.from_native(A.to_native(record)) == record
    torch_ = registry.converter(record, "torch")
    assert_matches(record, x, torch_.run(torch_.to_native(record), x), recorded, "to_torch")


def test_node_cases_read_what_they_test(node_cases):
    import layoutconv

    def read(name):
        return layoutconv.from_onnx(with_stored_weights(node_cases[name])[0])

    assert read("test_conv_with_autopad_same").padding == "same_lower"
    assert read("test_convtranspose_autopad_same").padding == "same_upper"
    shaped = read("test_convtranspose_output_shape")
    assert isinstance(shaped, ConvTranspose) and shaped.padding == "same_lower" and shaped.output_shape_ == (10, 8)
    assert read("test_convtranspose_pad").output_padding == (1, 1)
