"""ConvTranspose: the record, and the reference pass against a direct scatter loop written here,
PyTorch's ConvTranspose and onnxruntime's ConvTranspose (every auto_pad and output_shape)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from layoutconv import ConfigError, ConvTranspose, ConvTranspose1D, ConvTranspose2D, ShapeError, reference

from conftest import need


def direct_transpose(kernel, bias, x, stride, dilation, groups, pads, output_padding):
    """y[n, f, *(s t + d k - p_b)] += x[n, c, *t] * W[c, f mod O/g, *k], by loops over everything."""
    n_, c_, *size = x.shape
    _, og, *ks = kernel.shape
    rank = len(size)
    o_ = og * groups
    cg = c_ // groups
    full = [stride[a] * (size[a] - 1) + dilation[a] * (ks[a] - 1) + 1 + output_padding[a] for a in range(rank)]
    out = [full[a] - pads[a][0] - pads[a][1] for a in range(rank)]
    y = np.zeros((n_, o_, *out))
    for n, c in itertools.product(range(n_), range(c_)):
        g = c // cg
        for t in itertools.product(*(range(m) for m in size)):
            for k in itertools.product(*(range(m) for m in ks)):
                u = [stride[a] * t[a] + dilation[a] * k[a] - pads[a][0] for a in range(rank)]
                if all(0 <= u[a] < out[a] for a in range(rank)):
                    for j in range(og):
                        y[(n, g * og + j, *u)] += x[(n, c, *t)] * kernel[(c, j, *k)]
    if bias is not None:
        y += np.asarray(bias).reshape((1, o_) + (1,) * rank)
    return y


CASES = {
    # kernel (C_in, O/g, *k), stride, dilation, groups, pads, output_padding, input size
    "1d_s2_op1": ((4, 3, 3), (2,), (1,), 1, ((1, 1),), (1,), (9,)),
    "1d_asym_d2_groups": ((4, 2, 3), (3,), (2,), 2, ((2, 0),), (1,), (7,)),
    "2d_3x2_s23": ((4, 3, 3, 2), (2, 3), (1, 2), 2, ((1, 0), (2, 1)), (1, 1), (5, 4)),
    "2d_k_eq_o": ((3, 3, 3, 3), (1, 2), (1, 1), 1, ((0, 0), (1, 1)), (0, 1), (4, 5)),
    "3d": ((2, 2, 2, 3, 1), (2, 1, 2), (1, 1, 1), 1, ((0, 1), (1, 1), (0, 0)), (1, 0, 0), (3, 4, 2)),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_reference_matches_direct_scatter_loop(rng, case):
    kshape, stride, dilation, groups, pads, extra, size = CASES[case]
    kernel = rng.standard_normal(kshape)
    bias = rng.standard_normal(kshape[1] * groups)
    x = rng.standard_normal((2, kshape[0], *size))
    t = ConvTranspose(kernel, bias, stride=stride, dilation=dilation, groups=groups, padding=pads, output_padding=extra)
    expected = direct_transpose(kernel, bias, x, stride, dilation, groups, pads, extra)
    got = reference.forward(t, x)
    assert got.shape == expected.shape == (2, t.out_channels, *t.output_shape(size))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rank", [1, 2])
def test_reference_matches_pytorch(rng, rank):
    need("torch")
    import torch

    cls = {1: torch.nn.ConvTranspose1d, 2: torch.nn.ConvTranspose2d}[rank]
    k = (3,) if rank == 1 else (3, 5)
    stride, padding, extra, dil = ((2,), (1,), (1,), (1,)) if rank == 1 else ((2, 3), (1, 2), (1, 2), (1, 1))
    m = cls(6, 4, k, stride=stride, padding=padding, output_padding=extra, dilation=dil, groups=2, dtype=torch.float64)
    with torch.no_grad():
        m.weight.normal_()
        m.bias.normal_()
    x = rng.standard_normal((2, 6, *((7,) if rank == 1 else (5, 4))))
    t = ConvTranspose(m.weight.detach().numpy(), m.bias.detach().numpy(), stride=stride, dilation=dil, groups=2,
                      padding=tuple((p, p) for p in padding), output_padding=extra)
    torch.testing.assert_close(torch.from_numpy(reference.forward(t, x)), m(torch.from_numpy(x)).detach())


ORT_CASES = {
    # auto_pad, output_shape, stride, kernel, input length: pads ONNX derives (written out from its formula)
    "same_upper_odd_total": ("SAME_UPPER", None, 2, 4, 5),  # total = 2*4 + 4 - 10 = 2 -> (1, 1)
    "same_upper_s3": ("SAME_UPPER", None, 3, 5, 4),  # total = 9 + 5 - 12 = 2
    "same_lower_s2_k5": ("SAME_LOWER", None, 2, 5, 6),  # total = 10 + 5 - 12 = 3 -> (2, 1)
    "same_upper_s2_k5": ("SAME_UPPER", None, 2, 5, 6),  # -> (1, 2)
    "output_shape_notset": ("NOTSET", 14, 2, 5, 6),  # total = 15 - 14 = 1 -> (1, 0): the bigger half first
    "output_shape_upper": ("SAME_UPPER", 14, 2, 5, 6),  # -> (0, 1)
    "k1_s2_same_upper_clamped": ("SAME_UPPER", None, 2, 1, 5),  # total = 8 + 1 - 10 = -1: output stays 9
    "k1_s3_same_lower_clamped": ("SAME_LOWER", None, 3, 1, 4),  # total = -2: output stays 10
    "output_shape_one_past_full": ("NOTSET", 8, 2, 3, 3),  # full 7, asked 8: a bias-only position at the end
    "output_shape_past_full_upper": ("SAME_UPPER", 8, 2, 3, 3),  # appended at the end for SAME_UPPER too
}


@pytest.mark.parametrize("case", ORT_CASES, ids=list(ORT_CASES))
def test_auto_pad_and_output_shape_match_onnxruntime(rng, case):
    need("onnx", "onnxruntime")
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    auto, out_shape, s, k, length = ORT_CASES[case]
    kernel = rng.standard_normal((3, 2, k)).astype(np.float32)
    bias = rng.standard_normal(2).astype(np.float32)
    x = rng.standard_normal((1, 3, length)).astype(np.float32)
    attrs = dict(strides=[s], auto_pad=auto)
    if out_shape is not None:
        attrs["output_shape"] = [out_shape]
    node = helper.make_node("ConvTranspose", ["x", "W", "B"], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, length])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(kernel, "W"), numpy_helper.from_array(bias, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    rule = "same_upper" if auto == "SAME_UPPER" else "same_lower"
    t = ConvTranspose(kernel, bias, stride=s, padding=rule, output_shape=out_shape)
    assert reference.forward(t, x).shape == y.shape
    np.testing.assert_allclose(reference.forward(t, x), y, rtol=1.3e-6, atol=1e-5)


def test_record_validation():
    k = np.zeros((4, 3, 3))
    assert type(ConvTranspose(k)) is ConvTranspose1D
    assert type(ConvTranspose(np.zeros((3, 5, 3, 4)), layout="H W O I")) is ConvTranspose2D  # Keras Conv2DTranspose
    assert ConvTranspose(np.zeros((3, 5, 3, 4)), layout="H W O I").kernel.shape == (4, 3, 3, 5)
    with pytest.raises(ConfigError, match="output_padding is too large"):
        ConvTranspose(k, stride=2, output_padding=2)
    with pytest.raises(ConfigError, match="divisor of in_channels"):
        ConvTranspose(k, groups=3)
    with pytest.raises(ConfigError, match="same_\\* padding rule"):
        ConvTranspose(k, output_shape=10)
    with pytest.raises(ConfigError, match="padding"):
        ConvTranspose(k, padding="causal")
    with pytest.raises(ShapeError, match="larger than the transposed convolution can produce"):
        ConvTranspose(k, padding="same_upper", output_shape=40).pads(5)  # full output 7: at most stride - 1 = 0 more
    t = ConvTranspose(k, stride=2, padding="same_lower", output_shape=11, activation="relu")
    assert t.replace(output_padding=1).output_padding == (1,) and t.replace().output_shape_ == (11,)
    import pickle

    assert pickle.loads(pickle.dumps(t)) == t
