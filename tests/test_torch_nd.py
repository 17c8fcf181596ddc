"""The PyTorch adapter at every rank: Conv2d/3d and ConvTranspose1d/2d/3d both ways, against real torch."""

from __future__ import annotations

import numpy as np
import pytest

from layoutconv import Conv, ConvTranspose, reference
from layoutconv.tolerance import tolerance

from conftest import need

# torch warns that 'same' with an even kernel copies the input; that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")


@pytest.fixture(scope="module")
def ta():
    need("torch")
    from layoutconv.adapters import torch_adapter

    return torch_adapter


@pytest.fixture(scope="module")
def torch(ta):
    import torch

    return torch


def close(record, x, y):
    """Elementwise within the project tolerance (the reference is checked against loops in test_reference_nd)."""
    expected = reference.forward(record, x)
    assert y.shape == expected.shape
    tol, _, _ = tolerance(record, x, expected)
    assert (np.abs(y.astype(np.float64) - expected) <= tol).all()


CONVS = {
    # kernel (O, I/g, *k), stride, dilation, groups, padding, mode, input size
    "2d_3x5_same_upper_s21": ((5, 3, 3, 5), (2, 1), (1, 1), 1, "same_upper", "zeros", (9, 8)),
    "2d_same_lower_d2": ((4, 2, 2, 3), (1, 1), (2, 1), 2, "same_lower", "reflect", (7, 9)),
    "2d_asym_explicit_circular": ((3, 3, 3, 3), (1, 2), (1, 1), 1, ((2, 0), (1, 1)), "circular", (6, 7)),
    "2d_plain_symmetric": ((4, 3, 3, 5), (1, 1), (1, 1), 1, ((1, 1), (2, 2)), "zeros", (7, 8)),
    "2d_same_s1_torch_spells": ((4, 4, 4, 2), (1, 1), (1, 1), 1, "same_upper", "replicate", (6, 5)),
    "2d_depthwise_causal": ((6, 1, 3, 3), (1, 1), (1, 1), 6, "causal", "zeros", (7, 6)),
    "3d_valid": ((4, 2, 2, 3, 1), (1, 2, 1), (1, 1, 2), 1, "valid", "zeros", (4, 7, 5)),
    "3d_same_upper_s2": ((2, 3, 3, 1, 2), (2, 1, 2), (1, 1, 1), 1, "same_upper", "zeros", (5, 3, 6)),
}


@pytest.mark.parametrize("case", CONVS, ids=list(CONVS))
def test_conv_nd_round_trip_and_forward(ta, torch, rng, case):
    kshape, stride, dilation, groups, padding, mode, size = CONVS[case]
    conv = Conv(rng.standard_normal(kshape).astype(np.float32), rng.standard_normal(kshape[0]).astype(np.float32),
                stride=stride, dilation=dilation, groups=groups, padding=padding, padding_mode=mode)
    module = ta.to_native(conv)
    plain = ta.CONV_MODULES[conv.spatial_rank]
    assert isinstance(module, plain)
    plain(conv.in_channels, conv.out_channels, conv.kernel_shape, groups=groups).load_state_dict(module.state_dict(), strict=True)
    back = ta.from_native(module)
    assert back.same_weights(conv) and back.equivalent(conv, size)
    x = rng.standard_normal((2, conv.in_channels, *size)).astype(np.float32)
    close(conv, x, ta.run(module, x))


def test_plain_conv2d_with_torch_same_reads_back(ta, torch, rng):
    m = torch.nn.Conv2d(3, 4, (4, 3), padding="same", dtype=torch.float64)
    x = rng.standard_normal((2, 3, 7, 6))
    conv = ta.from_native(m)
    assert conv.padding == "same_upper"
    torch.testing.assert_close(torch.from_numpy(reference.forward(conv, x)), m(torch.from_numpy(x)).detach())


TRANSPOSES = {
    # kernel (C_in, O/g, *k), stride, dilation, groups, padding, output_padding, output_shape, input size
    "1d_symmetric_plain": ((4, 3, 3), (2,), (1,), 1, ((1, 1),), (1,), None, (7,)),
    "1d_asym": ((4, 3, 4), (2,), (1,), 2, ((2, 1),), (0,), None, (9,)),
    "1d_same_upper": ((3, 2, 5), (3,), (1,), 1, "same_upper", (0,), None, (6,)),
    "2d_3x5_same_lower_output_shape": ((4, 2, 3, 5), (2, 2), (1, 1), 2, "same_lower", (1, 0), (11, 9), (5, 4)),
    "2d_valid_d2": ((3, 3, 2, 3), (1, 2), (2, 1), 1, "valid", (1, 1), None, (4, 5)),
    "3d_symmetric": ((2, 2, 2, 3, 1), (2, 1, 1), (1, 1, 1), 1, ((1, 1), (0, 0), (0, 0)), (1, 0, 0), None, (3, 4, 2)),
}


@pytest.mark.parametrize("case", TRANSPOSES, ids=list(TRANSPOSES))
def test_transpose_round_trip_and_forward(ta, torch, rng, case):
    kshape, stride, dilation, groups, padding, extra, target, size = TRANSPOSES[case]
    t = ConvTranspose(rng.standard_normal(kshape), rng.standard_normal(kshape[1] * groups), stride=stride,
                      dilation=dilation, groups=groups, padding=padding, output_padding=extra, output_shape=target)
    module = ta.to_native(t)
    assert isinstance(module, ta.TRANSPOSE_MODULES[t.spatial_rank])
    back = ta.from_native(module)
    assert back.same_weights(t) and back.equivalent(t, size)
    x = rng.standard_normal((2, t.in_channels, *size))
    y = ta.run(module, x)
    np.testing.assert_allclose(y, reference.forward(t, x), rtol=1e-10, atol=1e-10)


def test_torch_built_transpose_reads_back(ta, torch, rng):
    m = torch.nn.ConvTranspose2d(4, 6, (3, 2), stride=(2, 3), padding=(1, 0), output_padding=(1, 2), groups=2, dtype=torch.float64)
    x = rng.standard_normal((2, 4, 5, 3))
    t = ta.from_native(m)
    assert t.padding == ((1, 1), (0, 0)) and t.output_padding == (1, 2)
    torch.testing.assert_close(torch.from_numpy(reference.forward(t, x)), m(torch.from_numpy(x)).detach())


def test_sequential_2d_padding_module_is_read(ta, torch, rng):
    seq = torch.nn.Sequential(torch.nn.ReflectionPad2d((1, 2, 0, 1)), torch.nn.Conv2d(3, 4, (2, 3), dtype=torch.float64), torch.nn.ReLU())
    conv = ta.from_native(seq)
    assert conv.padding == ((0, 1), (1, 2)) and conv.padding_mode == "reflect" and conv.activation == "relu"
    x = rng.standard_normal((1, 3, 6, 7))
    torch.testing.assert_close(torch.from_numpy(reference.forward(conv, x)), seq(torch.from_numpy(x)).detach())


def test_verify_nd_runs_torch_and_names_what_others_lack(ta, rng):
    from layoutconv import registry, verify

    conv = Conv(rng.standard_normal((5, 3, 3, 5)).astype(np.float32), rng.standard_normal(5).astype(np.float32),
                stride=(2, 1), padding="same_upper", activation="relu")
    report = verify(conv)
    assert report["torch"].passed and report.input_shape[2] != report.input_shape[3]  # axes of different sizes
    assert report["keras"].passed and report["tf_keras"].passed, str(report)  # every rank: tests/test_keras_nd.py
    assert report["onnx"].passed, str(report)  # every rank since onnx-nd: tests/test_onnx_nd.py
    t = ConvTranspose(rng.standard_normal((4, 3, 3)).astype(np.float32), stride=2, padding="same_upper")
    assert verify(t, frameworks=["torch"]).passed
    assert ("ConvTranspose", "torch") in registry.registered()


def test_registry_refuses_a_second_registration(ta):
    from layoutconv import registry

    with pytest.raises(RuntimeError, match="registered twice"):
        registry.register(Conv, "torch", to_native=ta.to_native, run=ta.run)
