"""Real architectures (keras.applications, random weights, perturbed BatchNorm statistics) go Keras -> PyTorch and ONNX.

Keras' predict is the oracle; the reference pass and the generated PyTorch model must both match it.
"""

from __future__ import annotations

import numpy as np
import pytest

import layoutconv
from layoutconv import reference

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

ARCHITECTURES = {
    "MobileNetV2": lambda: keras.applications.MobileNetV2(input_shape=(32, 32, 3), weights=None, alpha=0.35, classes=7),
    "MobileNetV3Small": lambda: keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), weights=None, classes=7),
    "ResNet50": lambda: keras.applications.ResNet50(input_shape=(32, 32, 3), weights=None, classes=7),
    "EfficientNetB0": lambda: keras.applications.EfficientNetB0(input_shape=(32, 32, 3), weights=None, classes=7),
    "DenseNet121": lambda: keras.applications.DenseNet121(input_shape=(32, 32, 3), weights=None, classes=7),
    "Xception": lambda: keras.applications.Xception(input_shape=(71, 71, 3), weights=None, classes=7),
}


def _perturb(model, rng):
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.normal(1, 0.2, gamma.shape), rng.normal(0, 0.2, beta.shape), rng.normal(0, 0.2, mean.shape),
                               rng.uniform(0.5, 1.5, var.shape)])


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_application_to_reference_pytorch_and_onnx(name):
    rng = np.random.default_rng(sum(map(ord, name)))
    model = ARCHITECTURES[name]()
    _perturb(model, rng)
    x = rng.normal(size=(2, *model.input_shape[1:])).astype(np.float32)
    expected = model.predict(x, verbose=0)
    graph = layoutconv.read_model(model)
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(reference.forward(graph, x), expected, rtol=1e-4, atol=1e-5 * scale)
    with torch.no_grad():
        got = layoutconv.to_torch(graph)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale)
    from layoutconv.adapters import onnx_layers

    np.testing.assert_allclose(onnx_layers.run(layoutconv.to_onnx(graph), x), expected, rtol=1e-4, atol=1e-5 * scale)
