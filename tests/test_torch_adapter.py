"""The PyTorch adapter against real torch: bit-exact round trips, forward passes, torch-built modules, errors."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest

from layoutconv import ConfigError, Conv1D, ShapeError, UnsupportedError, reference, verify
from layoutconv.verify import compare

from conftest import need, np_dtype

# torch warns that 'same' with an even kernel copies the input; that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")

DTYPES = ["float16", "bfloat16", "float32", "float64"]
MODES = ["zeros", "reflect", "replicate", "circular"]
# (padding, stride): every canonical spelling, static and length-dependent
PADDINGS = {
    "valid": ("valid", 1),
    "explicit_sym": (((2, 2),), 1),
    "explicit_asym": (((3, 1),), 2),
    "same_upper_s1": ("same_upper", 1),
    "same_upper_s3": ("same_upper", 3),
    "same_lower_s1": ("same_lower", 1),
    "same_lower_s2": ("same_lower", 2),
    "causal": ("causal", 1),
}


@pytest.fixture(scope="module")
def ta():
    need("torch", "ml_dtypes")
    from layoutconv.adapters import torch_adapter

    return torch_adapter


@pytest.fixture(scope="module")
def torch(ta):
    import torch

    return torch


def make_conv(rng, dtype="float32", out=6, in_per_group=4, k=4, groups=2, bias=True, **kw) -> Conv1D:
    dt = np_dtype(dtype)
    kernel = rng.standard_normal((out, in_per_group, k)).astype(dt)
    b = rng.standard_normal(out).astype(dt) if bias else None
    return Conv1D(kernel, b, groups=groups, **kw)


# -- Conv1D -> to_native -> from_native ---------------------------------------------
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("pad", PADDINGS, ids=list(PADDINGS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_is_bit_exact(ta, rng, dtype, pad, mode, bias):
    padding, stride = PADDINGS[pad]
    conv = make_conv(rng, dtype, bias=bias, stride=stride, dilation=2, padding=padding, padding_mode=mode)
    module = ta.to_native(conv)
    back = ta.from_native(module)
    assert back.same_weights(conv)
    assert back.equivalent(conv, 19)
    assert back.padding == conv.padding  # the same spelling comes back ("causal" stays "causal")
    assert back.dtype == conv.dtype and back.padding_mode == mode
    assert not module.training
    assert ta.conv1d_module(module).weight.dtype == ta.TORCH_DTYPES[dtype]


@pytest.mark.parametrize(
    "pad, plain",
    [
        ("valid", True),
        ("explicit_sym", True),
        ("same_upper_s1", True),
        ("explicit_asym", False),
        ("same_upper_s3", False),
        ("same_lower_s1", False),
        ("same_lower_s2", False),
        ("causal", False),
    ],
)
def test_plain_conv1d_when_torch_can_spell_the_padding(ta, torch, rng, pad, plain):
    padding, stride = PADDINGS[pad]
    module = ta.to_native(make_conv(rng, stride=stride, padding=padding, padding_mode="reflect"))
    assert (type(module) is torch.nn.Conv1d) is plain
    assert (type(module) is ta.PaddedConv1d) is not plain


def test_torch_same_puts_the_odd_pad_at_the_end(ta, torch):
    # A kernel that picks tap 0 only: y[t] = x[t - begin]; kernel 4 -> total pad 3.
    m = torch.nn.Conv1d(1, 1, 4, padding="same", bias=False, dtype=torch.float64)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[[1.0, 0.0, 0.0, 0.0]]], dtype=torch.float64))
    x = torch.tensor([[[0.3, -1.2, 2.5, 0.7, -0.4, 1.9, -2.2]]], dtype=torch.float64)
    y = m(x).detach()
    assert y[0, 0, 0] == 0.0 and torch.equal(y[0, 0, 1:], x[0, 0, :-1])  # begin = 1, end = 2
    assert ta.from_native(m).padding == "same_upper"


# -- forward: against the project tolerance ----------------------------------------
FORWARD = {
    # (O, I/g, K, stride, dilation, groups, padding, mode)
    "K_eq_O_same_upper_s2": (5, 3, 5, 2, 1, 1, "same_upper", "zeros"),
    "I_eq_O_causal_d2": (4, 4, 3, 1, 2, 1, "causal", "zeros"),
    "K_eq_I_same_lower_s3": (6, 3, 3, 3, 1, 1, "same_lower", "reflect"),
    "groups2_asym_circular": (6, 2, 4, 2, 1, 2, ((1, 3),), "circular"),
    "depthwise_replicate": (6, 1, 3, 1, 2, 6, ((3, 0),), "replicate"),
    "valid_s2": (4, 5, 5, 2, 1, 1, "valid", "zeros"),
}


@pytest.mark.parametrize("length", [18, 19, 20], ids=["L18", "L19", "L20"])
@pytest.mark.parametrize("case", FORWARD, ids=list(FORWARD))
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_within_project_tolerance(ta, rng, dtype, case, length):
    o, i, k, s, d, g, padding, mode = FORWARD[case]
    conv = make_conv(rng, dtype, out=o, in_per_group=i, k=k, groups=g, stride=s, dilation=d, padding=padding, padding_mode=mode)
    x = rng.standard_normal((2, conv.in_channels, length)).astype(conv.dtype)
    y = ta.run(ta.to_native(conv), x)
    assert y.dtype == conv.dtype
    result = compare(conv, x, y, "torch")
    assert result.passed, result


def test_verify_harness_passes_for_torch(rng):
    need("torch")
    conv = make_conv(rng, stride=3, padding="same_lower", padding_mode="circular")
    report = verify(conv, frameworks=["pt"])
    assert report.passed, str(report)


# -- forward: against a direct loop written here -----------------------------------
def padded_value(x, n, c, j, mode):
    """x~[n, c, j] for a position j relative to the unpadded input."""
    length = x.shape[2]
    if 0 <= j < length:
        return x[n, c, j]
    if mode == "zeros":
        return 0.0
    if mode == "replicate":
        return x[n, c, min(max(j, 0), length - 1)]
    if mode == "circular":
        return x[n, c, j % length]
    return x[n, c, -j if j < 0 else 2 * (length - 1) - j]  # reflect, pads < length


def loop_conv(w, b, x, stride, dilation, groups, begin, end, mode):
    n_, _, length = x.shape
    o_, cg, k_ = w.shape
    out_len = (length + begin + end - dilation * (k_ - 1) - 1) // stride + 1
    y = np.empty((n_, o_, out_len))
    for n in range(n_):
        for f in range(o_):
            g = f // (o_ // groups)
            for t in range(out_len):
                acc = b[f]
                for c in range(cg):
                    for k in range(k_):
                        acc += w[f, c, k] * padded_value(x, n, g * cg + c, stride * t + dilation * k - begin, mode)
                y[n, f, t] = acc
    return y


LOOP = {
    # (O, I/g, K, stride, dilation, groups, padding, mode, length, pads worked out by hand)
    # same_upper: out = ceil(13/3) = 5, total = 4*3 + 4 - 13 = 3 -> (1, 2)
    "same_upper_s3_even_k": (4, 3, 4, 3, 1, 1, "same_upper", "zeros", 13, (1, 2)),
    # same_lower: out = ceil(11/2) = 6, total = 5*2 + 5 - 11 = 4 -> (2, 2); L=12: 5*2+5-12 = 3 -> (2, 1)
    "same_lower_s2_L11": (3, 3, 5, 2, 1, 1, "same_lower", "zeros", 11, (2, 2)),
    "same_lower_s2_L12": (3, 3, 5, 2, 1, 1, "same_lower", "zeros", 12, (2, 1)),
    "causal_d2": (3, 2, 3, 1, 2, 1, "causal", "zeros", 9, (4, 0)),
    "groups2": (4, 2, 3, 1, 1, 2, ((2, 1),), "zeros", 9, (2, 1)),
    "reflect_asym": (3, 3, 3, 1, 1, 1, ((3, 1),), "reflect", 7, (3, 1)),
    "circular_asym": (3, 3, 3, 2, 1, 1, ((1, 4),), "circular", 8, (1, 4)),
    "replicate_asym": (3, 3, 3, 1, 1, 1, ((0, 5),), "replicate", 7, (0, 5)),
    "reflect_causal": (2, 3, 3, 1, 2, 1, "causal", "reflect", 8, (4, 0)),
}


@pytest.mark.parametrize("case", LOOP, ids=list(LOOP))
def test_forward_matches_direct_loop(ta, torch, rng, case):
    o, i, k, s, d, g, padding, mode, length, (begin, end) = LOOP[case]
    conv = make_conv(rng, "float64", out=o, in_per_group=i, k=k, groups=g, stride=s, dilation=d, padding=padding, padding_mode=mode)
    module = ta.to_native(conv)
    if isinstance(module, ta.PaddedConv1d):
        assert module.pads(length) == (begin, end)
    x = rng.standard_normal((2, conv.in_channels, length))
    expected = loop_conv(conv.kernel, conv.bias, x, s, d, g, begin, end, mode)
    torch.testing.assert_close(torch.from_numpy(ta.run(module, x)), torch.from_numpy(expected))


# -- modules built by torch -> from_native -> reference pass ------------------------
NATIVE = {
    # (in, out, kernel) with nn.Conv1d keyword arguments
    "K_eq_O": (3, 5, 5, dict(padding=2)),
    "I_eq_O_same": (4, 4, 3, dict(padding="same", dilation=2)),
    "K_eq_I_valid_s2": (3, 6, 3, dict(padding="valid", stride=2)),
    "all_equal_same_even": (4, 4, 4, dict(padding="same")),
    "tuple_padding": (3, 4, 3, dict(padding=(1,), stride=3)),
    "groups3": (6, 9, 3, dict(padding=1, groups=3)),
    "reflect": (3, 4, 3, dict(padding=2, padding_mode="reflect")),
    "replicate_same": (3, 4, 4, dict(padding="same", padding_mode="replicate")),
    "circular_d2": (3, 4, 3, dict(padding=3, dilation=2, padding_mode="circular")),
    "reflect_same_groups": (4, 6, 5, dict(padding="same", groups=2, padding_mode="reflect")),
}


@pytest.mark.parametrize("length", [15, 16], ids=["L15", "L16"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", NATIVE, ids=list(NATIVE))
def test_from_native_matches_torch(ta, torch, case, dtype, length):
    c_in, c_out, k, kwargs = NATIVE[case]
    torch.manual_seed(hash(case) % 2**31)
    m = torch.nn.Conv1d(c_in, c_out, k, dtype=getattr(torch, dtype), **kwargs)
    with torch.no_grad():
        m.weight.normal_()
        m.bias.normal_()
    x = torch.randn(2, c_in, length, dtype=getattr(torch, dtype))
    conv = ta.from_native(m)
    got = reference.conv1d(conv, x.numpy())
    torch.testing.assert_close(torch.from_numpy(got).to(x.dtype), m(x).detach())


@pytest.mark.parametrize("dtype", DTYPES)
def test_from_native_keeps_bytes_and_dtype(ta, torch, dtype):
    torch.manual_seed(3)
    m = torch.nn.Conv1d(4, 4, 4, padding="same", dtype=getattr(torch, dtype))
    conv = ta.from_native(m)
    assert conv.dtype == np_dtype(dtype)
    for mine, theirs in [(conv.kernel, m.weight), (conv.bias, m.bias)]:
        raw = theirs.detach().view(torch.int16 if theirs.element_size() == 2 else theirs.dtype)
        assert mine.tobytes() == raw.contiguous().numpy().tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
def test_run_returns_the_module_dtype(ta, rng, dtype):
    conv = make_conv(rng, dtype, padding="causal")
    x = rng.standard_normal((1, conv.in_channels, 11))  # float64 input, cast to the module dtype
    y = ta.run(ta.to_native(conv), x)
    assert y.dtype == np_dtype(dtype) and y.shape == (1, conv.out_channels, 11)


# -- the wrapper as a torch module -------------------------------------------------
def test_wrapper_weights_load_into_a_users_conv1d(ta, torch, rng):
    conv = make_conv(rng, "float64", stride=2, padding="same_lower", padding_mode="replicate")
    module = ta.to_native(conv)
    mine = torch.nn.Conv1d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=2, groups=conv.groups, dtype=torch.float64)
    mine.load_state_dict(module.state_dict(), strict=True)  # same keys, no unwrapping
    x = torch.from_numpy(rng.standard_normal((2, conv.in_channels, 17)))
    begin, end = module.pads(17)
    ours = mine(torch.nn.functional.pad(x, (begin, end), mode="replicate"))
    torch.testing.assert_close(ours.detach(), module(x).detach(), rtol=0, atol=0)


def test_wrapper_survives_deepcopy_and_torch_save(ta, torch, rng):
    conv = make_conv(rng, "bfloat16", padding="causal", padding_mode="circular")
    module = ta.to_native(conv)
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    for clone in [copy.deepcopy(module), torch.load(buffer, weights_only=False)]:
        assert ta.from_native(clone).equivalent(conv) and ta.from_native(clone).padding == "causal"
    assert sorted(module.state_dict()) == ["bias", "weight"]  # the keys of a plain nn.Conv1d


# -- errors ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "build, name",
    [
        (lambda t: t.nn.Linear(2, 3), "Linear"),
        (lambda t: t.ao.nn.qat.Conv1d(2, 4, 3, qconfig=t.ao.quantization.get_default_qat_qconfig()), "qat"),
        (lambda t: "conv", "str"),
    ],
    ids=["Linear", "QAT_Conv1d", "str"],
)
def test_from_native_rejects_other_modules(ta, torch, build, name):
    with pytest.raises(UnsupportedError, match=name) as info:
        ta.from_native(build(torch))
    assert "torch.nn.Conv1d/2d/3d" in str(info.value)


def test_lazy_conv_is_refused_until_initialised(ta, torch, rng):
    lazy = torch.nn.LazyConv1d(4, 3)
    with pytest.raises(ConfigError, match="LazyConv1d"):
        ta.from_native(lazy)
    with pytest.raises(ConfigError, match="LazyConv1d"):
        ta.run(lazy, rng.standard_normal((1, 2, 9)))


def test_to_native_rejects_a_non_conv(ta):
    with pytest.raises(ConfigError, match="ndarray"):
        ta.to_native(np.zeros((3, 2, 4)))


@pytest.mark.parametrize(
    "shape, match",
    [((4, 11), r"shape \(4, 11\).*x\[None\]"), ((2, 3, 11), r"\(N, 4, L\).*shape \(2, 3, 11\)"), ((1, 2, 4, 11), r"shape \(1, 2, 4, 11\)")],
    ids=["rank2", "wrong_channels", "rank4"],
)
def test_run_rejects_bad_shapes(ta, rng, shape, match):
    module = ta.to_native(make_conv(rng, groups=1, padding="valid"))
    with pytest.raises(ShapeError, match=match):
        ta.run(module, rng.standard_normal(shape))


def test_run_rejects_an_input_shorter_than_the_kernel(ta, rng):
    module = ta.to_native(make_conv(rng, groups=1, k=4, dilation=2, padding="valid"))
    with pytest.raises(ShapeError, match=r"= 7.*length 6"):
        ta.run(module, rng.standard_normal((1, 4, 6)))


@pytest.mark.parametrize("mode, length", [("reflect", 3), ("circular", 2)])
def test_run_rejects_padding_wider_than_the_input(ta, rng, mode, length):
    module = ta.to_native(make_conv(rng, groups=1, k=3, dilation=2, padding=((3, 0),), padding_mode=mode))
    with pytest.raises(UnsupportedError, match=rf"(?i){mode} padding.*length {length}.*pads \(3, 0\)"):
        ta.run(module, rng.standard_normal((1, 4, length)))


def test_run_rejects_a_non_numeric_input(ta, rng):
    module = ta.to_native(make_conv(rng, groups=1))
    with pytest.raises(ConfigError, match="<U1"):
        ta.run(module, np.full((1, 4, 9), "a"))


# -- fused activations ---------------------------------------------------------------
#: each canonical activation as the torch module a user would write after nn.Conv1d
TORCH_MODULES = {
    "relu": lambda t: t.nn.ReLU(),
    "relu6": lambda t: t.nn.ReLU6(),
    "leaky_relu": lambda t: t.nn.LeakyReLU(0.2),
    "sigmoid": lambda t: t.nn.Sigmoid(),
    "tanh": lambda t: t.nn.Tanh(),
    "elu": lambda t: t.nn.ELU(),
    "selu": lambda t: t.nn.SELU(),
    "gelu": lambda t: t.nn.GELU(),
    "swish": lambda t: t.nn.SiLU(),
    "softplus": lambda t: t.nn.Softplus(),
    "softsign": lambda t: t.nn.Softsign(),
    "mish": lambda t: t.nn.Mish(),
    "hard_sigmoid_keras3": lambda t: t.nn.Hardsigmoid(),
    "hard_silu": lambda t: t.nn.Hardswish(),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(TORCH_MODULES))
def test_activation_module_matches_torch_sequential_and_reference(ta, torch, rng, name, dtype):
    """to_torch of a record with an activation computes what nn.Sequential(conv, activation) computes."""
    conv = make_conv(rng, dtype, out=5, in_per_group=3, k=5, groups=1, stride=2, padding="same_upper", activation=name)
    module = ta.to_native(conv)
    assert sorted(module.state_dict()) == ["bias", "weight"]
    plain = torch.nn.Conv1d(3, 5, 5, stride=2, dtype=getattr(torch, dtype))
    plain.load_state_dict(module.state_dict(), strict=True)
    # TensorFlow's 'same' at L=15, k=5, s=2: total (ceil(15/2) - 1) * 2 + 5 - 15 = 4 -> (2, 2)
    user = torch.nn.Sequential(torch.nn.ZeroPad1d((2, 2)), plain, TORCH_MODULES[name](torch))
    x = rng.standard_normal((2, 3, 15)).astype(dtype)
    ours = ta.run(module, x)
    theirs = user(torch.from_numpy(x)).detach()
    torch.testing.assert_close(torch.from_numpy(ours), theirs)
    assert compare(conv, x, ours, "torch").passed
    assert ta.from_native(user).equivalent(conv.replace(padding=((2, 2),)))  # the user's Sequential is read back


def test_keras2_hard_sigmoid_has_no_torch_module_but_runs(ta, torch, rng):
    conv = make_conv(rng, "float64", groups=1, activation="hard_sigmoid_keras2")
    x = rng.standard_normal((2, 4, 13))
    y = ta.run(ta.to_native(conv), x)
    linear = ta.run(ta.to_native(conv.replace(activation="linear")), x)
    np.testing.assert_array_equal(y, np.clip(0.2 * linear + 0.5, 0, 1))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_activations_run_in_half_precision(ta, rng, dtype):
    for name in ("relu", "gelu", "swish", "hard_sigmoid_keras2", "mish"):
        conv = make_conv(rng, dtype, groups=1, padding="causal", activation=name)
        x = rng.standard_normal((1, 4, 11)).astype(np_dtype(dtype))
        assert compare(conv, x, ta.run(ta.to_native(conv), x), "torch").passed, name


def test_stride2_same_state_dict_loads_into_a_plain_conv1d(ta, torch, rng):
    conv = make_conv(rng, "float32", groups=1, stride=2, padding="same_upper")
    module = ta.to_native(conv)
    plain = torch.nn.Conv1d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=2)
    plain.load_state_dict(module.state_dict(), strict=True)
    assert torch.equal(plain.weight, module.weight) and torch.equal(plain.bias, module.bias)


def test_sequential_with_a_foreign_activation_is_refused(ta, torch):
    seq = torch.nn.Sequential(torch.nn.Conv1d(2, 3, 3), torch.nn.LeakyReLU(0.01))
    with pytest.raises(UnsupportedError, match=r"LeakyReLU\(negative_slope=0.01\)"):
        ta.from_native(seq)


# -- verify(conv, native=<the user's own module>) ------------------------------------------
def _users_conv(torch, conv, **kw):
    mine = torch.nn.Conv1d(conv.in_channels, conv.out_channels, conv.kernel_size, groups=conv.groups, **kw)
    with torch.no_grad():
        mine.weight.copy_(torch.from_numpy(conv.kernel.copy()))
        mine.bias.copy_(torch.from_numpy(conv.bias.copy()))
    return mine


def test_verify_native_passes_a_correct_user_module(ta, torch, rng):
    conv = make_conv(rng, "float32", groups=1, k=3, padding=((1, 1),), activation="relu")
    user = torch.nn.Sequential(_users_conv(torch, conv, padding=1), torch.nn.ReLU())
    report = verify(conv, native=user)
    assert report.passed and report["torch"].worst_error_over_tolerance <= 1.0


def test_verify_native_names_the_padding_the_user_got_wrong(ta, torch, rng):
    conv = make_conv(rng, "float32", groups=1, k=4, stride=2, padding="same_upper")
    user = _users_conv(torch, conv, stride=2, padding=2)
    report = verify(conv, native=user, length=31)
    assert not report.passed
    assert "your module pads (2, 2); this layer needs (1, 2) at length 31" in report["torch"].message


def test_verify_native_catches_a_custom_module_wrong_at_another_length(ta, torch, rng):
    """The user hard-coded the pads of odd lengths; only an even length shows it."""
    conv = make_conv(rng, "float32", groups=1, k=3, stride=2, padding="same_upper")

    class Mine(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = _users_conv(torch, conv, stride=2)

        def forward(self, x):
            return self.conv(torch.nn.functional.pad(x, (1, 1)))

    report = verify(conv, native=Mine(), length=31)
    assert conv.pads(31) == ((1, 1),) and conv.pads(32) == ((0, 1),)
    assert not report.passed and "at input length 32" in report["torch"].message


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda k: k[..., ::-1], "reversed along the kernel axis"),
        (lambda k: k.reshape(k.shape[2], k.shape[1], k.shape[0]).transpose(2, 1, 0), "another order"),
    ],
    ids=["flipped", "reshaped"],
)
def test_verify_native_explains_a_wrong_kernel(ta, torch, rng, damage, words):
    conv = make_conv(rng, "float64", out=5, in_per_group=3, k=5, groups=1)  # kernel_size == filters: shapes fit
    user = ta.to_native(conv)
    with torch.no_grad():
        user.weight.copy_(torch.from_numpy(np.ascontiguousarray(damage(conv.kernel))))
    report = verify(conv, native=user)
    assert not report.passed and words in report["torch"].message


def test_verify_native_names_a_missing_activation(ta, torch, rng):
    conv = make_conv(rng, "float32", groups=1, activation="gelu")
    user = _users_conv(torch, conv)
    report = verify(conv, native=user)
    assert not report.passed and "your module applies linear; this layer applies gelu" in report["torch"].message


def test_verify_takes_native_or_frameworks_not_both(ta, torch, rng):
    conv = make_conv(rng, groups=1)
    with pytest.raises(ConfigError, match="either frameworks= or native="):
        verify(conv, frameworks=["torch"], native=ta.to_native(conv))
