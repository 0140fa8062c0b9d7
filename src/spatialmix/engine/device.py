"""Where a run computes, and in which precision."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from spatialmix.errors import SpatialmixError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SpatialmixError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return torch.device(name)


def resolve_amp(amp: str, device: torch.device) -> str:
    """``auto`` picks bf16 on GPUs and on CPUs with native bf16 (AVX512-BF16/AMX); elsewhere bf16 is
    emulated and several times slower than fp32, so it picks ``none``."""
    if amp != "auto":
        return amp
    if device.type == "cuda":
        return "bf16"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "none"


def autocast_context(device: torch.device, amp: str):
    if resolve_amp(amp, device) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()
