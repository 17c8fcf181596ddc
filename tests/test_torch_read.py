"""PyTorch models in (``read_model(module, example_inputs=x)``) and out again to the reference, PyTorch, Keras 3 and tf_keras.

The PyTorch model is the oracle: every graph is run by the numpy reference
(float64), by ``to_torch`` and by ``to_keras`` (both flavours, channels-first
input as the PyTorch model takes it) and compared with ``model(x)``.  The
models are written here; their weights are random, their BatchNorm statistics
perturbed (random mean, random positive variance, random scale and offset),
their sizes odd and different from their channel counts.

Tolerance: ``torch.testing.assert_close``'s float32 defaults (rtol 1.3e-6,
atol 1e-5) for every model; the reference computes in float64 and each
framework rounds its float32 sums (at most 99 terms here) once per layer.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import need

need("torch")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import layoutconv  # noqa: E402
from layoutconv import ConfigError, ShapeError, UnsupportedError, layers, reference, registry  # noqa: E402
from layoutconv.model import read_model  # noqa: E402

FLOAT32 = dict(rtol=1.3e-6, atol=1e-5)  # torch.testing.assert_close defaults for float32


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(20261129)


def perturbed(model: nn.Module, seed: int = 7) -> nn.Module:
    """Random weights and BatchNorm statistics that are not the identity, in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() > 1 else 1.0))
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 2 + 0.3)
    return model.eval()


# -- the models --------------------------------------------------------------------------------------


class CNN1D(nn.Module):
    """Conv1d + BatchNorm1d + ReLU + MaxPool1d(padding=1) + Flatten + Linear; length 16 makes the pool's pads (1, 1), not Keras' 'same' (0, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 5, padding=2)
        self.bn = nn.BatchNorm1d(6)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool1d(3, 2, padding=1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(6 * 8, 3)

    def forward(self, x):
        return self.fc(self.flat(self.pool(self.act(self.bn(self.conv(x))))))


class ResBlock2D(nn.Module):
    """A ResNet stem and one downsampling basic block: a skip add through a projection, AdaptiveAvgPool2d((1, 1))."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.pool0 = nn.MaxPool2d(3, 2, padding=1)
        self.c1 = nn.Conv2d(8, 12, 3, stride=2, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(12)
        self.c2 = nn.Conv2d(12, 12, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(12)
        self.proj = nn.Sequential(nn.Conv2d(8, 12, 1, stride=2, bias=False), nn.BatchNorm2d(12))
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = self.pool0(F.relu(self.bn0(self.stem(x))))
        y = F.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(y))
        x = F.relu(y + self.proj(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class CatView(nn.Module):
    """Two branches joined by torch.cat, then x.view(x.size(0), -1) into a Linear (PyTorch's flatten order)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(3, 4, 3)
        self.b = nn.Conv1d(3, 5, 3)
        self.fc = nn.Linear(9 * 11, 7)

    def forward(self, x):
        z = torch.cat([self.a(x), torch.sigmoid(self.b(x))], dim=1)
        return self.fc(z.view(z.size(0), -1))


class TextCNN(nn.Module):
    """Embedding (channels last in torch) + LayerNorm + transpose + Conv1d + Linear per step + mean over time + softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(23, 6)
        self.norm = nn.LayerNorm(6)
        self.conv = nn.Conv1d(6, 5, 3, padding=1)
        self.act = nn.GELU()
        self.fc = nn.Linear(5, 4)

    def forward(self, ids):
        x = self.norm(self.emb(ids))  # (N, T, 6)
        x = self.act(self.conv(x.transpose(1, 2)))  # (N, 5, T)
        x = self.fc(x.permute(0, 2, 1))  # (N, T, 4)
        return torch.softmax(x.mean(dim=1), dim=-1)


class LengthLinear(nn.Module):
    """nn.Linear over the *length* axis of a conv output, AvgPool1d counting its pads, reshape and flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 3)
        self.over_time = nn.Linear(7, 5)
        self.pool = nn.AvgPool1d(2, padding=1)
        self.fc = nn.Linear(12, 2)

    def forward(self, x):
        x = torch.tanh(self.over_time(self.conv(x)))  # (N, 4, 5): the Linear mixes positions
        x = self.pool(x)  # (N, 4, 3)
        x = x.reshape(x.shape[0], 2, 6)
        return self.fc(x.flatten(1))


class Functional2D(nn.Module):
    """Functional pooling, elementwise merges of every kind, a global max with keepdim."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 6, 3, padding=1)
        self.b = nn.Conv2d(2, 6, 3, padding=1)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        y = torch.maximum(a, b) * b - F.relu6(a)
        y = torch.add(y, torch.minimum(a, b))
        y = F.avg_pool2d(F.max_pool2d(y, 2), 3, 1, 1, count_include_pad=False)
        return y.amax((2, 3), keepdim=True).flatten(1)


class Net3D(nn.Module):
    """Conv3d with per-axis padding, BatchNorm3d, Hardswish, MaxPool3d, AdaptiveAvgPool3d(1)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 3, (3, 2, 3), padding=(1, 0, 1))
        self.bn = nn.BatchNorm3d(3)
        self.act = nn.Hardswish()
        self.pool = nn.MaxPool3d(2)
        self.gap = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        return self.fc(self.gap(self.pool(self.act(self.bn(self.conv(x))))).flatten(1))


class Reflect(nn.Module):
    """A reflection pad folded into the convolution behind it (padding_mode='reflect'): PyTorch and ONNX only."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.ReflectionPad1d(2), nn.Conv1d(3, 4, 5), nn.ReLU())

    def forward(self, x):
        return self.body(x)


class Odds(nn.Module):
    """Constant and negative (cropping) pads, adaptive pooling to a dividing size, nn.Softmax, Unflatten, a layoutconv module."""

    def __init__(self) -> None:
        super().__init__()
        from layoutconv.adapters import torch_layers

        self.pad = nn.ConstantPad2d((1, 0, 2, 1), 0.0)
        self.conv = nn.Conv2d(2, 4, 3)
        self.pool = nn.AdaptiveAvgPool2d((3, 4))
        self.softmax = nn.Softmax(dim=1)
        self.unflatten = nn.Unflatten(1, (4, 12))
        self.keras_flatten = torch_layers.Flatten("channels_last")

    def forward(self, x):
        y = F.pad(self.conv(self.pad(x)), (-1, 0, 0, -1))  # (N, 4, 9, 8)
        y = self.softmax(self.pool(y))  # (N, 4, 3, 4)
        return self.unflatten(y.flatten(1)).unsqueeze(2), self.keras_flatten(y)


def _float(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(*shape, generator=_generator())


MODELS = {
    "cnn1d": (CNN1D, lambda: _float((2, 4, 16))),
    "resblock2d": (ResBlock2D, lambda: _float((2, 3, 13, 11))),
    "cat_view": (CatView, lambda: _float((2, 3, 13))),
    "text_cnn": (TextCNN, lambda: torch.randint(0, 23, (3, 9), generator=_generator())),
    "length_linear": (LengthLinear, lambda: _float((2, 3, 9))),
    "functional2d": (Functional2D, lambda: _float((2, 2, 9, 7))),
    "net3d": (Net3D, lambda: _float((2, 2, 7, 6, 5))),
    "reflect": (Reflect, lambda: _float((2, 3, 11))),
    "odds": (Odds, lambda: _float((2, 2, 9, 10))),
}
KERAS_REFUSED = {"reflect": "padding_mode='reflect'"}

_CACHE: dict[str, tuple] = {}


def case(name: str):
    """(model, x, graph, expected output as numpy), built once per test session."""
    if name not in _CACHE:
        cls, make_x = MODELS[name]
        torch.manual_seed(3)
        model = perturbed(cls())
        x = make_x()
        with torch.no_grad():
            out = model(x)
        expected = tuple(t.numpy() for t in out) if isinstance(out, tuple) else out.numpy()
        _CACHE[name] = (model, x, read_model(model, example_inputs=x), expected)
    return _CACHE[name]


def compare(actual, expected) -> None:
    """Each output has the model's shape and matches it within the float32 tolerance."""
    pairs = zip(actual, expected) if isinstance(expected, tuple) else [(actual, expected)]
    assert len(actual) == len(expected) if isinstance(expected, tuple) else not isinstance(actual, tuple)
    for a, e in pairs:
        assert a.shape == e.shape
        np.testing.assert_allclose(a, e, **FLOAT32)


def max_error(actual, expected) -> float:
    return float(np.max(np.abs(np.asarray(actual, np.float64) - expected)))


@pytest.mark.parametrize("name", MODELS)
def test_reference_matches_the_model(name):
    model, x, graph, expected = case(name)
    compare(reference.forward(graph, x.numpy(), layout="source"), expected)


@pytest.mark.parametrize("name", MODELS)
def test_to_torch_matches_the_model(name):
    model, x, graph, expected = case(name)
    native = layoutconv.to_torch(graph)
    compare(registry.converter(graph, "torch").run(native, x.numpy()), expected)


@pytest.mark.parametrize("flavor", ["keras", "tf_keras"])
@pytest.mark.parametrize("name", MODELS)
def test_to_keras_matches_the_model(name, flavor):
    need(flavor, "tensorflow")
    model, x, graph, expected = case(name)
    if name in KERAS_REFUSED:
        with pytest.raises(UnsupportedError, match=KERAS_REFUSED[name]):
            layoutconv.to_keras(graph, flavor=flavor)
        return
    native = layoutconv.to_keras(graph, flavor=flavor)  # takes the PyTorch model's input as it is
    compare(registry.converter(graph, flavor).run(native, x.numpy()), expected)


# -- what the reader makes of PyTorch's layouts -------------------------------------------------------


def test_layer_names_are_the_qualified_module_names():
    _, _, graph, _ = case("resblock2d")
    assert {"stem", "bn0", "pool0", "c1", "proj.0", "proj.1", "fc"} <= set(graph.layers)
    assert isinstance(graph.layers["proj.1"], layers.BatchNorm)
    assert graph.layers["bn0"].epsilon == 1e-5
    assert isinstance(graph.layers["pool"], layers.GlobalPool) and graph.layers["pool"].keepdims
    assert graph.node("add").inputs == ("b2", "proj.1")


def test_batch_norm_statistics_are_copied_bit_exact():
    model, _, graph, _ = case("cnn1d")
    bn = graph.layers["bn"]
    for mine, theirs in ((bn.mean, model.bn.running_mean), (bn.variance, model.bn.running_var), (bn.scale, model.bn.weight)):
        assert mine.dtype == np.float32 and mine.tobytes() == theirs.detach().numpy().tobytes()
    assert graph.layers["fc"].kernel.tobytes() == model.fc.weight.detach().numpy().tobytes()


def test_flatten_and_view_keep_pytorch_element_order():
    _, _, graph, _ = case("cat_view")
    assert graph.layers["view"] == layers.Flatten("channels_first")
    assert graph.layers["cat"] == layers.Merge("concatenate", 1)


def test_channels_last_edges_move_no_data():
    """Embedding output, LayerNorm, transposes and the Linear per step: no Permute record at all."""
    _, _, graph, _ = case("text_cnn")
    kinds = {name: type(r).__name__ for name, r in graph.layers.items()}
    assert "Permute" not in kinds.values(), kinds
    assert graph.layout_of("emb") == "channels_last" and graph.layout_of("norm") == "channels_last"
    assert graph.layers["transpose"] == layers.Identity("permute") and graph.layout_of("transpose") == "channels_first"
    assert graph.layers["norm"].axes == (1,)
    assert graph.layers["mean"] == layers.GlobalPool("avg")
    assert graph.layers["softmax"] == layers.Softmax(1)
    assert graph.inputs[0].kind == "int" and graph.inputs[0].layout == "flat"


def test_linear_over_the_length_axis_moves_the_data():
    _, _, graph, _ = case("length_linear")
    assert graph.layers["over_time.channels_last"] == layers.Permute((2, 1), "channels_first")
    assert graph.node("over_time").inputs == ("over_time.channels_last",)
    assert graph.layout_of("tanh") == "channels_last"  # the Linear's output, held as PyTorch holds it
    assert graph.node("pool").inputs == ("pool.channels_first",)  # and moved back for the pooling
    assert graph.layers["reshape"] == layers.Reshape((2, 6), "channels_first")


def test_pads_crops_adaptive_pooling_and_layoutconv_modules():
    _, _, graph, _ = case("odds")
    assert graph.layers["pad"] == layers.Pad(((2, 1), (1, 0)))
    assert graph.layers["pad_1"] == layers.Crop(((0, 1), (1, 0)))  # F.pad with negative pads, named after its fx node
    assert graph.layers["pool"] == layers.Pool("avg", (3, 2), (3, 2))
    assert graph.layers["softmax"] == layers.Softmax(1)
    assert graph.layers["unflatten"] == layers.Reshape((4, 12), "channels_first")
    assert graph.layers["keras_flatten"] == layers.Flatten("channels_last")


def test_reflection_pad_is_folded_into_the_convolution():
    _, _, graph, _ = case("reflect")
    conv = graph.layers["body.1"]
    assert conv.padding_mode == "reflect" and conv.padding == ((2, 2),)
    assert "body.0" not in graph.layers


def test_a_shared_module_is_one_layer_called_twice():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(3, 3, 3, padding=1)

        def forward(self, x):
            return self.conv(F.relu(self.conv(x)))

    model = perturbed(Shared())
    x = _float((2, 3, 10))
    graph = read_model(model, example_inputs=x)
    assert [n.name for n in graph.nodes if n.layer == "conv"] == ["conv", "conv:1"]
    np.testing.assert_allclose(reference.forward(graph, x.numpy()), model(x).detach().numpy(), **FLOAT32)


def test_several_inputs_and_outputs():
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(5, 3)

        def forward(self, a, b):
            s = self.fc(a) - self.fc(b)
            return s, torch.cat([a, b], 1)

    model = perturbed(Two())
    a, b = _float((2, 5)), _float((2, 5)) * 3
    graph = read_model(model, example_inputs=(a, b))
    ys = reference.forward(graph, a.numpy(), b.numpy())
    expected = model(a, b)
    for y, e in zip(ys, expected):
        np.testing.assert_allclose(y, e.detach().numpy(), **FLOAT32)


def test_ceil_mode_is_read_where_it_changes_nothing():
    model = nn.Sequential(nn.Conv1d(2, 3, 2), nn.MaxPool1d(2, ceil_mode=True)).eval()
    read_model(model, example_inputs=_float((1, 2, 9)))  # conv output 8: no partial window
    with pytest.raises(UnsupportedError, match="ceil_mode"):
        read_model(model, example_inputs=_float((1, 2, 10)))


def test_training_flags_are_restored():
    model = CNN1D().train()
    model.bn.eval()
    read_model(model, example_inputs=_float((2, 4, 16)))
    assert model.training and model.conv.training and not model.bn.training


# -- refusals ------------------------------------------------------------------------------------------


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = _Gate()

    def forward(self, x):
        return self.inner(x)


class _Gate(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x
        return -x


def test_untraceable_model_names_the_submodule_and_line():
    with pytest.raises(UnsupportedError) as info:
        read_model(Branchy(), example_inputs=_float((1, 2, 3)))
    message = str(info.value)
    assert "submodule 'inner' (_Gate)" in message and "test_torch_read.py" in message and "if x.sum() > 0" in message
    assert "Expected a forward that torch.fx.symbolic_trace can follow" in message


def test_example_inputs_are_required():
    with pytest.raises(ConfigError, match="needs example inputs"):
        read_model(CNN1D())


@pytest.mark.parametrize(
    "body,match",
    [
        (lambda s, x: x.reshape(-1, 4), "one row per sample"),
        (lambda s, x: x * s.scale, "stored on the module"),
        (lambda s, x: x + 1.0, "constant"),
        (lambda s, x: torch.cumsum(x, 2), "no reader for this operation.*cumsum"),
        (lambda s, x: F.leaky_relu(x), "leaky_relu with non-default negative_slope"),
        (lambda s, x: F.dropout(x, 0.1), "drops values at inference"),
        (lambda s, x: x + x[:, :1], "stored on the module|not a tensor|no reader"),
        (lambda s, x: x.permute(1, 0, 2), "batch"),
    ],
    ids=["batch_folded", "parameter", "constant", "cumsum", "leaky_slope", "dropout_training", "getitem", "batch_permute"],
)
def test_refusals_name_the_node(body, match):
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1, 3, 1))

        def forward(self, x):
            return body(self, x)

    with pytest.raises(UnsupportedError, match=match) as info:
        read_model(M(), example_inputs=_float((2, 3, 4)))
    assert "fx node" in str(info.value)


def test_broadcasting_merge_is_refused():
    class SE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gap = nn.AdaptiveAvgPool1d(1)

        def forward(self, x):
            return x * torch.sigmoid(self.gap(x))

    with pytest.raises(UnsupportedError, match="broadcasting"):
        read_model(SE(), example_inputs=_float((2, 3, 5)))


def test_unknown_objects_are_still_refused_by_name():
    with pytest.raises(UnsupportedError, match="torch.nn.Module"):
        read_model(object())
    with pytest.raises(ConfigError, match="only for PyTorch"):
        read_model("model.h5", example_inputs=np.zeros((1, 2)))
