"""Two ways to train a study's small models on both cores: side by side, or as one batched model?

A study trains many small, independent models (modes x seeds x sigmas). `spatialmix.parallel`
runs them side by side, one single-thread process each. The other way is to train N of them as
*one* model: every layer's channels are the N models' channels side by side, the stem, pointwise
convs and head are grouped convolutions (groups = N) so no channel of one model ever sees
another's, the depthwise convs and BatchNorms are per channel anyway, and model i reads its own
batch from input channel block i. The N losses are summed, so each model gets exactly its own
gradient, and AdamW is elementwise, so each takes exactly its own step.

This script first checks that claim (N lone models and the batched one, same weights and
batches, a few fp32 AdamW steps: the largest parameter difference is printed and must be at
float tolerance), then times, in the same run on the quick preset's model:

* one lone model on 1 thread (the unit), and N lone models side by side (N processes x 1 thread);
* the batched model of N on N threads, and on 1 thread.

images/s counts every model's images (a batched step of batch B trains N x B images). Run it on
an otherwise idle machine.

    python benchmarks/batched_models.py                # 2 models, Chans and Full
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from spatialmix.accel.speed import accelerate, available_cores, set_threads
from spatialmix.core.mixing import apply_mixing, trainable_parameters
from spatialmix.engine.device import autocast_context, resolve_amp
from spatialmix.engine.parallel import run_side_by_side
from spatialmix.models.convmixer import ConvMixer
from spatialmix.ui.display import ResultTable


class GroupedHead(nn.Module):
    """N linear heads as one grouped 1 x 1 conv over the pooled features: (B, N*W) -> (B, N, C)."""

    def __init__(self, heads: list[nn.Linear]):
        super().__init__()
        self.n, self.classes = len(heads), heads[0].out_features
        self.conv = nn.Conv1d(self.n * heads[0].in_features, self.n * self.classes, 1, groups=self.n)
        with torch.no_grad():
            self.conv.weight.copy_(torch.cat([h.weight for h in heads])[:, :, None])
            self.conv.bias.copy_(torch.cat([h.bias for h in heads]))

    def forward(self, features):
        return self.conv(features[:, :, None]).view(len(features), self.n, self.classes)


def batched_twin(models: list[ConvMixer]) -> nn.Module:
    """One network that computes ``models`` side by side: input (B, N*C, H, W), output (B, N, classes)."""
    n = len(models)
    twin = copy.deepcopy(models[0])
    lone_modules = [dict(m.named_modules()) for m in models]
    for name, module in list(twin.named_modules()):
        parts = [modules[name] for modules in lone_modules]
        if isinstance(module, nn.Conv2d):
            depthwise = module.groups == module.in_channels > 1
            grouped = nn.Conv2d(
                n * module.in_channels,
                n * module.out_channels,
                module.kernel_size,
                module.stride,
                module.padding,
                groups=n * module.groups if depthwise else n,
            )
            _copy_stacked(grouped, parts)
            grouped.weight.requires_grad_(module.weight.requires_grad)
            grouped.bias.requires_grad_(module.bias.requires_grad)
            _replace(twin, name, grouped)
        elif isinstance(module, nn.BatchNorm2d):
            norm = nn.BatchNorm2d(n * module.num_features)
            _copy_stacked(norm, parts)
            _replace(twin, name, norm)
    twin.head = GroupedHead([m.head for m in models])
    return twin


def _copy_stacked(target: nn.Module, parts: list[nn.Module]) -> None:
    with torch.no_grad():
        for key, value in target.state_dict().items():
            if value.dim() > 0:
                value.copy_(torch.cat([p.state_dict()[key] for p in parts]))


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def make_models(n: int, mode: str, width: int, depth: int) -> list[ConvMixer]:
    models = []
    for seed in range(n):
        torch.manual_seed(seed)
        models.append(
            apply_mixing(ConvMixer(width, depth, 5, 2, in_chans=1, num_classes=10), mode, seed=seed)
        )
    return models


def batches(n: int, batch: int, steps: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, n, 28, 28, generator=g), torch.randint(0, 10, (batch, n), generator=g))
        for _ in range(steps)
    ]


def optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(list(trainable_parameters(model)), lr=0.01, weight_decay=0.01)


def lone_step(model, opt, x, y, amp="none"):
    with autocast_context(torch.device("cpu"), amp):
        loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def batched_step(model, opt, x, y, amp="none"):
    with autocast_context(torch.device("cpu"), amp):
        logits = model(x)
        loss = sum(F.cross_entropy(logits[:, i].float(), y[:, i]) for i in range(y.shape[1]))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def max_difference(n: int = 2, mode: str = "chans", width: int = 16, depth: int = 2, steps: int = 3) -> float:
    """Largest |parameter difference| between N lone models and their batched twin after ``steps``."""
    models = make_models(n, mode, width, depth)
    twin = batched_twin(models)
    opts, twin_opt = [optimizer(m) for m in models], optimizer(twin)
    for x, y in batches(n, 16, steps):
        for i, (m, o) in enumerate(zip(models, opts)):
            lone_step(m, o, x[:, i : i + 1], y[:, i])
        batched_step(twin, twin_opt, x, y)
    again = batched_twin(models)  # the lone models' weights laid out as the twin's
    return max((a - b).abs().max().item() for a, b in zip(twin.parameters(), again.parameters()))


def images_per_s(
    batched: bool,
    n: int,
    mode: str,
    width: int,
    depth: int,
    batch: int,
    steps: int,
    threads: int,
    warmup: int = 3,
) -> float:
    set_threads(threads)
    amp = resolve_amp("auto", torch.device("cpu"))
    models = make_models(n, mode, width, depth)
    model = accelerate(batched_twin(models) if batched else models[0]).to(memory_format=torch.channels_last)
    opt, step = optimizer(model), (batched_step if batched else lone_step)
    data = batches(n if batched else 1, batch, warmup + steps)
    data = [(x.contiguous(memory_format=torch.channels_last), y if batched else y[:, 0]) for x, y in data]
    for x, y in data[:warmup]:
        step(model, opt, x, y, amp)
    start = time.perf_counter()
    for x, y in data[warmup:]:
        step(model, opt, x, y, amp)
    return (n if batched else 1) * batch * steps / (time.perf_counter() - start)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=int, default=2, help="N: models trained together")
    p.add_argument("--modes", default="chans,full")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    n, cores = args.models, available_cores()
    print(
        f"ConvMixer-{args.width}/{args.depth} k5 p2, batch {args.batch_size}, {n} models, {cores} cores, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"amp {resolve_amp('auto', torch.device('cpu'))}, "
        f"torch {torch.__version__}"
    )
    for mode in args.modes.split(","):
        print(
            f"{mode}: batched twin vs {n} lone models after 3 fp32 AdamW steps: largest parameter difference "
            f"{max_difference(n, mode):.2e}"
        )
    table = ResultTable(
        f"{n} small models on {cores} cores: side by side or batched (images/s of all models)",
        [
            ("mode", "mode", ""),
            ("how", "how", ""),
            ("ips", "images/s (median)", ".0f"),
            ("runs", "every run", ""),
            ("ratio", "vs side by side", ".2f"),
        ],
    )
    common = dict(n=n, width=args.width, depth=args.depth, batch=args.batch_size, steps=args.steps)
    for mode in args.modes.split(","):
        ways = {
            "1 lone model, 1 thread": lambda mode=mode: images_per_s(False, mode=mode, threads=1, **common),
            f"{n} lone models side by side, {n} x 1 thread": lambda mode=mode: sum(
                run_side_by_side(
                    [(images_per_s, (False, n, mode, args.width, args.depth, args.batch_size, args.steps, 1))]
                    * n,
                    processes=n,
                    threads=1,
                )
            ),
            f"batched model of {n}, {n} threads": lambda mode=mode: images_per_s(
                True, mode=mode, threads=n, **common
            ),
            f"batched model of {n}, 1 thread": lambda mode=mode: images_per_s(
                True, mode=mode, threads=1, **common
            ),
        }
        runs = {how: [] for how in ways}
        for _ in range(args.repeats):  # interleaved, so load from elsewhere hits every way alike
            for how, measure in ways.items():
                runs[how].append(measure())
        reference = statistics.median(runs[f"{n} lone models side by side, {n} x 1 thread"])
        for how, values in runs.items():
            table.add(
                mode=mode,
                how=how,
                ips=statistics.median(values),
                runs=" ".join(f"{v:.0f}" for v in values),
                ratio=statistics.median(values) / reference,
            )
    table.print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
