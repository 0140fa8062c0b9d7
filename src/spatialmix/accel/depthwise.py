"""A depthwise convolution's gradients on CPUs: the weight gradient from a small C kernel built on
first use, the input gradient as a conv with the flipped filters.

In Full and Space training most of a ConvMixer step's convolution backward was oneDNN's depthwise
*weight* gradient: on the benchmark's shapes (128 images x 128 channels of 14 x 14, kernel 5, one
thread) it takes 24 ms in fp32 and 65 ms in bf16, against 3 ms for the forward pass. The kernel
in ``kernels/depthwise_grad.c`` computes the same sum in about 4 ms (0.4 ms on the quick preset's
64 x 64 channels), for fp32 or bf16 inputs, accumulating in fp32. oneDNN's input gradient took
about twice its forward pass; the forward conv of the output gradient with the flipped filters is
the same sum.

`conv` is a stride-1 depthwise ``conv2d`` with those two gradients and torch's own forward
pass. The kernel is built and checked by `spatialmix.accel.native`. Without it, or for shapes it
does not handle (stride or dilation above 1, not channels_last, unequal padding), `supports`
is False and callers keep torch's own convolution: the same results to float rounding, slower.

The images are summed in fixed chunks of `CHUNK` and the chunks added in order, so the
gradient is bitwise the same whatever the number of threads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spatialmix.accel import native

CHUNK = 16  # images summed together before the chunks are added, in order


def weight_grad(x: torch.Tensor, gy: torch.Tensor, kernel_size: int, padding: int) -> torch.Tensor:
    """fp32 ``[C, 1, k, k]`` gradient of the weight of a stride-1 depthwise conv with input ``x``
    and output gradient ``gy`` (CPU, fp32 or bf16; made channels_last if they are not)."""
    lib = native.library()
    if lib is None:
        raise RuntimeError(f"the C kernels are not available: {native.status()}")
    n, c, h, w = x.shape
    out_shape = (n, c, h + 2 * padding - kernel_size + 1, w + 2 * padding - kernel_size + 1)
    if (
        tuple(gy.shape) != out_shape
        or gy.dtype != x.dtype
        or x.dtype not in (torch.float32, torch.bfloat16)
        or x.device.type != "cpu"
        or gy.device.type != "cpu"
        or min(out_shape) < 1
    ):
        # the kernel trusts these sizes for its memory reads: nothing else may reach it
        raise ValueError(
            f"weight_grad needs CPU fp32/bf16 tensors with gy of shape {out_shape} and x's dtype; "
            f"got x {tuple(x.shape)} {x.dtype}, gy {tuple(gy.shape)} {gy.dtype}"
        )
    x, gy = x.contiguous(memory_format=torch.channels_last), gy.contiguous(memory_format=torch.channels_last)
    with torch.profiler.record_function("spatialmix::depthwise_weight_grad"):  # so profiles count it
        return native.call_depthwise_weight_grad(
            lib, x, gy, kernel_size, padding, CHUNK, torch.get_num_threads()
        )


def is_channels_last(t: torch.Tensor) -> bool:
    """A 4-D tensor whose memory is dense in channels_last order (what the kernels read)."""
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)


def _pair(value) -> tuple | None:
    """``3`` or ``(3, 3)`` -> (3, 3); anything else (a string such as 'same') -> None."""
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return tuple(value)
    return None


def same_padding(padding) -> int:
    """The one padding of both sides that `supports` accepted."""
    return _pair(padding)[0]


def supports(x: torch.Tensor, weight: torch.Tensor, stride, padding, dilation, dtype: torch.dtype) -> bool:
    """Whether `conv` can run a depthwise ``conv2d(x, weight, ..., stride, padding, dilation)``
    in ``dtype`` (one filter per channel; a learned weight needs the kernel)."""
    k, p = weight.shape[-2:], _pair(padding)
    return (
        x.device.type == "cpu"
        and dtype in (torch.float32, torch.bfloat16)
        and is_channels_last(x)
        and weight.dim() == 4
        and weight.shape[0] == x.shape[1]
        and weight.shape[1] == 1
        and k[0] == k[1]
        and _pair(stride) == (1, 1)
        and _pair(dilation) == (1, 1)
        and p is not None
        and p[0] == p[1]
        and 0 <= p[0] <= k[0] - 1
        and weight.dtype == torch.float32
        and (not weight.requires_grad or native.library() is not None)
    )


class _DepthwiseConv(torch.autograd.Function):
    """The forward pass by torch (oneDNN); the input gradient as the forward conv of the output
    gradient with the flipped filters (oneDNN's own backward-data kernel for depthwise convs took
    1.9x the time of that conv: 1.15 against 0.62 ms for 100 x 64 x 14 x 14, fp32, one thread);
    the weight gradient by the C kernel, in fp32 for the fp32 weight even when the activations
    are bf16."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding: int):
        w = weight.to(x.dtype)
        ctx.save_for_backward(x, w)
        ctx.padding, ctx.has_bias = padding, bias is not None
        return F.conv2d(x, w, None if bias is None else bias.to(x.dtype), 1, padding, 1, x.shape[1])

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        p, channels = ctx.padding, x.shape[1]
        gy = gy.contiguous(memory_format=torch.channels_last)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:  # stride 1: the full correlation with the flipped filters
            gx = F.conv2d(gy, w.flip((2, 3)), None, 1, w.shape[-1] - 1 - p, 1, channels)
        if ctx.needs_input_grad[1]:
            gw = weight_grad(x, gy, w.shape[-1], p)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gy.sum(dim=(0, 2, 3), dtype=torch.float32)
        return gx, gw, gb, None


def conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int) -> torch.Tensor:
    """A stride-1 depthwise ``conv2d`` of channels_last ``x`` in ``x``'s dtype, with fp32 ``weight``
    and ``bias`` (their gradients come back in fp32; a frozen weight needs no kernel). Check
    `supports` first."""
    return _DepthwiseConv.apply(x, weight, bias, padding)
