"""The depthwise conv's gradients (C kernel for the weight, flipped filters for the input): torch's
numbers, any thread count, torch's own conv where they do not apply."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import UnderFastKernels
from spatialmix.accel import depthwise, native

pytestmark = pytest.mark.skipif(native.library() is None, reason=f"no kernels: {native.status()}")


def _channels_last(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype).contiguous(memory_format=torch.channels_last)


def _torch_weight_grad(x, gy, k, p):
    """oneDNN's gradient, in fp32 from the same (possibly bf16-rounded) values."""
    c = x.shape[1]
    return torch.ops.aten.convolution_backward(
        gy.float(),
        x.float(),
        torch.zeros(c, 1, k, k),
        None,
        [1, 1],
        [p, p],
        [1, 1],
        False,
        [0, 0],
        c,
        [False, True, False],
    )[1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "n,c,h,w,k,p",
    [
        (5, 32, 9, 9, 5, 2),  # vector path, 'same' padding
        (17, 19, 7, 11, 3, 1),  # 16 channels on the vector path, 3 on the plain one; images over one chunk
        (4, 16, 12, 12, 7, 0),  # no padding: a smaller output
        (3, 48, 6, 6, 9, 4),  # the largest kernel with register accumulators
        (2, 16, 8, 8, 11, 5),  # larger: the plain path
        (3, 16, 8, 8, 4, 1),  # even kernel: the plain path
        (2, 20, 5, 5, 1, 0),  # 1 x 1
    ],
)
def test_weight_grad_is_torchs(dtype, n, c, h, w, k, p):
    torch.manual_seed(0)
    x = _channels_last(n, c, h, w, dtype=dtype)
    gy = _channels_last(n, c, h + 2 * p - k + 1, w + 2 * p - k + 1, dtype=dtype)
    ours = depthwise.weight_grad(x, gy, k, p)
    ref = _torch_weight_grad(x, gy, k, p)
    assert ours.dtype == torch.float32 and ours.shape == (c, 1, k, k)
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_weight_grad_is_bitwise_the_same_for_any_thread_count():
    x, gy = _channels_last(40, 64, 14, 14), _channels_last(40, 64, 14, 14)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(depthwise.weight_grad(x, gy, 5, 2))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(results[0], r) for r in results[1:])


def _learned_pair():
    torch.manual_seed(0)
    plain = nn.Conv2d(24, 24, 5, padding=2, groups=24)
    fast = UnderFastKernels(nn.Conv2d(24, 24, 5, padding=2, groups=24))
    fast.load_state_dict(plain.state_dict())
    return plain, fast


def _close(ours, ref, tol):
    return torch.allclose(ours.float(), ref.float(), rtol=tol, atol=tol * ref.abs().max().item())


@pytest.mark.parametrize("learned", [True, False])
@pytest.mark.parametrize("amp", [False, True])
def test_depthwise_conv_gives_torchs_output_and_gradients(amp, learned):
    """Learned (Full) or frozen (Chans, a model under attack): torch's own forward pass (in fp32 for
    learned filters under autocast), and input, weight and bias gradients that match the exact ones
    computed in float64."""
    plain, fast = _learned_pair()
    for m in (plain, fast):
        m.weight.requires_grad_(learned), m.bias.requires_grad_(learned)
    x = _channels_last(6, 24, 10, 10, dtype=torch.bfloat16 if amp else torch.float32)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast("cpu", torch.bfloat16, enabled=amp):
        ya, yb = fast(xa), plain(xb)
        node = (
            ya.grad_fn if not (learned and amp) else ya.grad_fn.next_functions[0][0]
        )  # (after the cast to bf16)
        assert type(node).__name__ == "_DepthwiseConvBackward"  # our path ran
        assert ya.dtype == yb.dtype
        if learned and amp:  # learned filters compute in fp32 under autocast, rounded once to bf16
            with torch.autocast("cpu", enabled=False):
                expected = F.conv2d(x.float(), plain.weight, plain.bias, padding=2, groups=24).bfloat16()
            assert torch.equal(ya, expected)
        else:
            assert torch.equal(ya, yb)  # the forward pass is torch's own conv
    g = torch.randn_like(ya)
    ya.backward(g), yb.backward(g)
    tol = 1e-5 if not amp else 2e-2  # bf16: both round the input gradient to bf16
    x64, w64 = x.double().requires_grad_(), plain.weight.detach().double().requires_grad_()
    F.conv2d(x64, w64, None, padding=2, groups=24).backward(g.double())
    assert _close(xa.grad, x64.grad, tol) and _close(xb.grad, x64.grad, tol)
    if learned:
        assert fast.weight.grad.dtype == torch.float32
        # fp32 from the bf16 activations and gradients (oneDNN's bf16 conv rounds it to bf16)
        assert _close(fast.weight.grad, w64.grad, 1e-5)
        assert _close(fast.weight.grad, plain.weight.grad, tol)
        assert _close(fast.bias.grad, plain.bias.grad, tol)
    else:
        assert fast.weight.grad is None and fast.bias.grad is None


def test_without_the_kernel_a_learned_conv_runs_in_fp32_under_autocast(monkeypatch):
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setattr(native, "_unavailable", "turned off for this test")
    conv = nn.Conv2d(8, 8, 5, padding=2, groups=8)
    x = _channels_last(1, 8, 5, 5)
    assert not depthwise.supports(x, conv.weight, conv.stride, conv.padding, conv.dilation, torch.float32)
    plain, fast = _learned_pair()
    x = _channels_last(2, 24, 9, 9).bfloat16()
    with torch.autocast("cpu", torch.bfloat16):
        y = fast(x)
    assert y.dtype == torch.bfloat16
    expected = F.conv2d(x.float(), plain.weight, plain.bias, padding=2, groups=24)
    assert torch.equal(y, expected.bfloat16())  # computed in fp32, rounded once
    assert "turned off for this test" in native.status()


def _supported(conv: nn.Conv2d, x, dtype) -> bool:
    return depthwise.supports(x, conv.weight, conv.stride, conv.padding, conv.dilation, dtype)


def test_shapes_the_kernel_does_not_handle_are_left_to_torch():
    x = _channels_last(2, 8, 9, 9)
    assert _supported(nn.Conv2d(8, 8, 3, padding=1, groups=8), x, torch.float32)
    for conv in (
        nn.Conv2d(8, 8, 3, padding=1, groups=8, stride=2),
        nn.Conv2d(8, 8, 3, padding=2, groups=8, dilation=2),
        nn.Conv2d(8, 8, 3, padding=(1, 0), groups=8),
        nn.Conv2d(8, 8, 3, padding="same", groups=8),
    ):
        assert not _supported(conv, x, torch.float32)
    assert not _supported(nn.Conv2d(8, 8, 3, padding=1, groups=8), x.contiguous(), torch.float32)
    assert not _supported(nn.Conv2d(8, 8, 3, padding=1, groups=8), x, torch.float16)
    # reflect padding: the module pads, then convolves without padding (which the kernel does)
    torch.manual_seed(0)
    reflect = nn.Conv2d(8, 8, 3, padding=1, groups=8, padding_mode="reflect")
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = UnderFastKernels(reflect)(xa), reflect(xb)
    assert type(ya.grad_fn).__name__ == "_DepthwiseConvBackward" and _close(ya, yb, 1e-6)
    g = torch.randn_like(ya)
    ya.backward(g), yb.backward(g)
    assert _close(xa.grad, xb.grad, 1e-5)


@pytest.mark.parametrize("k,p", [(3, 0), (3, 1), (5, 0), (5, 4), (7, 3)])
def test_input_gradient_by_flipped_filters_for_every_padding(k, p):
    torch.manual_seed(0)
    x = _channels_last(3, 16, 9, 8).double().float()
    weight = torch.randn(16, 1, k, k)
    xa = x.clone().requires_grad_()
    y = depthwise.conv(xa, weight, None, p)
    g = torch.randn_like(y)
    y.backward(g)
    x64 = x.double().requires_grad_()
    F.conv2d(x64, weight.double(), None, padding=p, groups=16).backward(g.double())
    assert xa.grad.shape == x.shape and _close(xa.grad, x64.grad, 1e-5)


def test_weight_grad_refuses_what_the_kernel_must_not_read():
    x = _channels_last(2, 16, 8, 8)
    for gy, message in (
        (_channels_last(2, 16, 9, 8), "gy of shape \\(2, 16, 8, 8\\)"),  # larger than the output
        (_channels_last(2, 16, 8, 8).bfloat16(), "x's dtype"),
        (_channels_last(2, 16, 8, 8).half(), "x's dtype"),
    ):
        with pytest.raises(ValueError, match=message):
            depthwise.weight_grad(x, gy, 3, 1)
    with pytest.raises(ValueError):
        depthwise.weight_grad(x.half(), _channels_last(2, 16, 8, 8).half(), 3, 1)
    # NCHW inputs are made channels_last, not misread
    gy = torch.randn(2, 16, 8, 8)
    assert _close(depthwise.weight_grad(x.contiguous(), gy, 3, 1), _torch_weight_grad(x, gy, 3, 1), 1e-5)
