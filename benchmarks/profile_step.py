"""Where a training step's time goes: torch.profiler's table per op kind, plain loop vs spatialmix.

The plain loop is the usual NCHW fp32 model; spatialmix's is what ``spatialmix train`` builds
(channels_last, bf16 autocast where the CPU has native bf16, the kernels of
``spatialmix.speed``). One table per (loop, mode): milliseconds per step and share of the step
for the op kinds that matter (convolution forward/backward, GELU, BatchNorm, the rest).

    python benchmarks/profile_step.py                      # ConvMixer-128/6 k5 p2, batch 128
    python benchmarks/profile_step.py --width 64 --depth 4 # the quick preset's model
"""

from __future__ import annotations

import argparse
import resource
import sys
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from spatialmix.accel import native, speed
from spatialmix.core.mixing import apply_mixing
from spatialmix.engine.device import autocast_context, resolve_amp
from spatialmix.models.convmixer import ConvMixer
from spatialmix.ui.display import ResultTable

KINDS = {  # op name prefix -> what the README calls it
    "aten::convolution_backward": "conv backward",
    "aten::mkldnn_convolution": "conv forward",
    "aten::_convolution": "conv forward",
    "aten::thnn_conv": "conv forward",
    "aten::gelu_backward": "GELU",
    "aten::gelu": "GELU",
    "aten::native_batch_norm_backward": "BatchNorm",
    "aten::native_batch_norm": "BatchNorm",
    "aten::copy_": "casts and copies",
    "aten::_to_copy": "casts and copies",
    "spatialmix::depthwise_weight_grad": "conv backward",  # the C kernels (spatialmix.native)
    "spatialmix::batchnorm_backward": "BatchNorm",
}


def step_profile(args, mode: str, ours: bool, steps: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = ConvMixer(args.width, args.depth, args.kernel_size, args.patch_size, in_chans=1, num_classes=10)
    apply_mixing(model, mode, seed=0)
    x, y = torch.randn(args.batch_size, 1, 28, 28), torch.randint(0, 10, (args.batch_size,))
    amp = resolve_amp("auto", torch.device("cpu")) if ours else "none"
    if ours:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def step():
        with autocast_context(torch.device("cpu"), amp), speed.FastKernels() if ours else nullcontext():
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        step()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    shares: dict[str, float] = {}
    total = 0.0
    for event in prof.key_averages():
        if not event.key.startswith(("aten::", "spatialmix::")):
            continue
        total += event.self_cpu_time_total
        kind = next((v for k, v in KINDS.items() if event.key == k), "other ops")
        shares[kind] = shares.get(kind, 0.0) + event.self_cpu_time_total
    return {
        "total": total / steps / 1000,
        "faults": faults,
        **{k: v / steps / 1000 for k, v in shares.items()},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--kernel-size", type=int, default=5)
    p.add_argument("--patch-size", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--plain-allocator",
        action="store_true",
        help="leave glibc's malloc thresholds alone (to see the page faults they cost)",
    )
    args = p.parse_args(argv)
    speed.set_threads(args.threads)
    if not args.plain_allocator:
        speed.tune_allocator()
    print(
        f"ConvMixer-{args.width}/{args.depth} k{args.kernel_size} p{args.patch_size}, "
        f"batch {args.batch_size}, {torch.get_num_threads()} thread(s), "
        f"allocator {'glibc defaults' if args.plain_allocator else 'tuned'}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}, "
        f"depthwise and batch-norm gradients: {native.status()}"
    )
    kinds = ["conv forward", "conv backward", "GELU", "BatchNorm", "casts and copies", "other ops"]
    table = ResultTable(
        "Training step profile (ms per step, share of the step)",
        [("loop", "loop", ""), ("total", "ms/step", ".0f")]
        + [(k, k, "") for k in kinds]
        + [("faults", "page faults/step", ".0f")],
    )
    for ours, mode in ((False, "full"), (True, "full"), (False, "chans"), (True, "chans")):
        prof = step_profile(args, mode, ours, args.steps)
        row = {
            "loop": f"{'spatialmix' if ours else 'plain NCHW fp32'} {mode.capitalize()}",
            "total": prof["total"],
            "faults": prof["faults"],
        }
        for k in kinds:
            row[k] = f"{prof.get(k, 0.0):.0f} ({prof.get(k, 0.0) / prof['total']:.0%})"
        table.add(**row)
    table.print()
    print(table.to_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
