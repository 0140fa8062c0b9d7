"""K seeds of a study's small model on both cores: side by side, or as one batched model?

A study trains many small, independent models (modes x seeds x sigmas), and more seeds are the whole
cost of a verdict. `spatialmix.parallel` runs them side by side, one single-thread process each.
The other ways train K of them as *one* model:

* grouped convolutions: every layer's channels are the K models' channels side by side, the stem,
  pointwise convs and head are grouped convolutions (groups = K) so no channel of one model ever
  sees another's, the depthwise convs and BatchNorms are per channel anyway, and model i reads its
  own batch from input channel block i;
* ``torch.func``: ``stack_module_state`` gives every parameter a leading model dimension and
  ``vmap(grad(loss))`` computes the K gradients in one call (BatchNorm with batch statistics only,
  as vmap cannot update running statistics in place; fp32, as bf16 autocast fails in its
  convolution backward).

The K losses are summed (or vmapped), so each model gets exactly its own gradient, and AdamW is
elementwise, so each takes exactly its own step. This script first checks that claim (K lone models
and the batched ones, same weights and batches, 3 fp32 AdamW steps: the largest parameter
difference is printed and must be at float tolerance; ``tests/test_speed.py`` checks it too), then
times, in the same run on the quick preset's model: one lone model on 1 thread, K lone models side
by side (in rounds of one single-thread process per core), and each batched way on all cores.
images/s counts every model's images (a batched step of batch B trains K x B images); "per seed" is
that divided by the models trained at once. Run it on an otherwise idle machine.

    python benchmarks/batched_models.py --models 2,4    # K = 2 and 4, Chans and Full
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from spatialmix.accel.speed import FastKernels, available_cores, set_threads
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


def make_models(n: int, mode: str, width: int, depth: int, in_chans: int = 1) -> list[ConvMixer]:
    models = []
    for seed in range(n):
        torch.manual_seed(seed)
        models.append(
            apply_mixing(ConvMixer(width, depth, 5, 2, in_chans=in_chans, num_classes=10), mode, seed=seed)
        )
    return models


def batches(n: int, batch: int, steps: int, seed: int = 0, in_chans: int = 1, size: int = 28, device="cpu"):
    """``steps`` batches of ``n`` models: images (B, n * in_chans, size, size), model i reading channel
    block i, and labels (B, n)."""
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(batch, n * in_chans, size, size, generator=g).to(device),
            torch.randint(0, 10, (batch, n), generator=g).to(device),
        )
        for _ in range(steps)
    ]


def optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(list(trainable_parameters(model)), lr=0.01, weight_decay=0.01)


def lone_step(model, opt, x, y, amp="none"):
    with autocast_context(x.device, amp):
        loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def batched_step(model, opt, x, y, amp="none"):
    with autocast_context(x.device, amp):
        logits = model(x)
        loss = sum(F.cross_entropy(logits[:, i].float(), y[:, i]) for i in range(y.shape[1]))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


class VmappedModels:
    """N models as one functional model under ``torch.vmap`` (``torch.func.stack_module_state``): every
    parameter gets a leading model dimension, the trainable ones are stepped by one AdamW. BatchNorm
    under vmap cannot update running statistics in place, so the models normalize with batch
    statistics only (``torch.func.replace_all_batch_norm_modules_``), in training and evaluation."""

    def __init__(self, models: list[nn.Module]):
        for model in models:
            torch.func.replace_all_batch_norm_modules_(model)
        params, buffers = torch.func.stack_module_state(models)
        names = {name for name, p in models[0].named_parameters() if p.requires_grad}
        self.trainable = {k: v for k, v in params.items() if k in names}
        self.frozen = {k: v.detach() for k, v in params.items() if k not in names}
        self.buffers = buffers
        self.base = copy.deepcopy(models[0]).to("meta")
        self.opt = torch.optim.AdamW(list(self.trainable.values()), lr=0.01, weight_decay=0.01)

        def loss(trainable, frozen, buffers, x, y, amp):
            with autocast_context(torch.device("cpu"), amp):
                logits = torch.func.functional_call(self.base, ({**trainable, **frozen}, buffers), (x,))
            return F.cross_entropy(logits.float(), y)

        self.gradients = torch.vmap(torch.func.grad(loss), in_dims=(0, 0, 0, 0, 0, None))

    def step(self, x, y, amp="none"):
        """One AdamW step of every model: ``x`` (B, N, H, W) and ``y`` (B, N), model i reads block i."""
        xs = x.transpose(0, 1).unsqueeze(2)  # (N, B, 1, H, W)
        grads = self.gradients(self.trainable, self.frozen, self.buffers, xs, y.transpose(0, 1), amp)
        for name, p in self.trainable.items():
            p.grad = grads[name]
        self.opt.step()


def vmap_difference(
    n: int = 2, mode: str = "chans", width: int = 16, depth: int = 2, steps: int = 3
) -> float:
    """Largest |parameter difference| between N lone models and their vmapped twin after ``steps``
    (both normalizing with batch statistics, as vmap requires)."""
    models = make_models(n, mode, width, depth)
    for model in models:
        torch.func.replace_all_batch_norm_modules_(model)
    twin = VmappedModels(copy.deepcopy(models))
    opts = [optimizer(m) for m in models]
    for x, y in batches(n, 16, steps):
        for i, (m, o) in enumerate(zip(models, opts)):
            lone_step(m, o, x[:, i : i + 1], y[:, i])
        twin.step(x, y)
    lone = dict(torch.func.stack_module_state(models)[0])
    return max((twin.trainable[k] - lone[k]).abs().max().item() for k in twin.trainable)


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
    how: str,
    n: int,
    mode: str,
    width: int,
    depth: int,
    batch: int,
    steps: int,
    threads: int,
    warmup: int = 3,
) -> float:
    """Images/s of all models trained ``how``: "lone" (one model), "grouped" or "vmap" (N as one)."""
    set_threads(threads)
    amp = resolve_amp("auto", torch.device("cpu"))
    models = make_models(n, mode, width, depth)
    together = how != "lone"
    data = batches(n if together else 1, batch, warmup + steps)
    if how == "vmap":
        trainer = VmappedModels(models)

        def step(x, y):  # fp32: under torch.func.grad, bf16 autocast fails in the convolution backward
            trainer.step(x, y, "none")

    else:
        model = (batched_twin(models) if together else models[0]).to(memory_format=torch.channels_last)
        opt, one_step = optimizer(model), (batched_step if together else lone_step)
        data = [
            (x.contiguous(memory_format=torch.channels_last), y if together else y[:, 0]) for x, y in data
        ]

        def step(x, y):
            with FastKernels():  # the CPU kernels, as training runs them
                one_step(model, opt, x, y, amp)

    for x, y in data[:warmup]:
        step(x, y)
    start = time.perf_counter()
    for x, y in data[warmup:]:
        step(x, y)
    return (n if together else 1) * batch * steps / (time.perf_counter() - start)


def gpu_images_per_s(how: str, n: int, mode: str, args, device: torch.device, warmup: int = 5) -> float:
    """Images/s of ``n`` models on one GPU: "lone" trains one (K seeds one at a time advance at this
    rate together), "grouped" trains all ``n`` as one batched model."""
    amp = resolve_amp("auto", device)
    models = make_models(n, mode, args.width, args.depth, args.in_chans)
    together = how == "grouped"
    model = (batched_twin(models) if together else models[0]).to(device, memory_format=torch.channels_last)
    data = batches(
        n if together else 1, args.batch_size, warmup + args.steps, 0, args.in_chans, args.image_size, device
    )
    data = [(x.contiguous(memory_format=torch.channels_last), y if together else y[:, 0]) for x, y in data]
    opt, step = optimizer(model), (batched_step if together else lone_step)
    for x, y in data[:warmup]:
        step(model, opt, x, y, amp)
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for x, y in data[warmup:]:
        step(model, opt, x, y, amp)
    torch.cuda.synchronize(device)
    return (n if together else 1) * args.batch_size * args.steps / (time.perf_counter() - start)


def gpu_main(args) -> int:
    """K seeds on one GPU: one at a time (a lone model) against one batched model of grouped convolutions."""
    device = torch.device("cuda")
    print(
        f"ConvMixer-{args.width}/{args.depth} k5 p2, {args.in_chans} x {args.image_size}^2 inputs, batch "
        f"{args.batch_size} per seed, {torch.cuda.get_device_name(device)}, "
        f"amp {resolve_amp('auto', device)}, torch {torch.__version__}"
    )
    table = ResultTable(
        "K seeds on one GPU: one at a time or one batched model (images/s of all K, and per seed)",
        [
            ("mode", "mode", ""),
            ("k", "K", ""),
            ("how", "how", ""),
            ("ips", "images/s (median)", ".0f"),
            ("per_seed", "per seed", ".0f"),
            ("ratio", "vs one at a time", ".2f"),
        ],
    )
    for mode in args.modes.split(","):
        for n in [int(k) for k in args.models.split(",")]:
            runs = {"lone": [], "grouped": []}
            for _ in range(args.repeats):
                for how in runs:
                    runs[how].append(gpu_images_per_s(how, n, mode, args, device))
            lone = statistics.median(runs["lone"])  # K seeds one at a time: each at the lone rate, in turn
            grouped = statistics.median(runs["grouped"])
            table.add(mode=mode, k=n, how=f"{n} seeds one at a time", ips=lone, per_seed=lone / n, ratio=1.0)
            table.add(
                mode=mode,
                k=n,
                how="one batched model (grouped convs)",
                ips=grouped,
                per_seed=grouped / n,
                ratio=grouped / lone,
            )
    table.print()
    print(table.to_markdown())
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="2", help="N: models (seeds) trained together, comma-separated")
    p.add_argument("--modes", default="chans,full")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--in-chans", type=int, default=1, help="input channels (cuda: 3 for CIFAR-shaped data)")
    p.add_argument("--image-size", type=int, default=28)
    args = p.parse_args(argv)
    if args.device == "cuda":
        return gpu_main(args)
    cores = available_cores()
    print(
        f"ConvMixer-{args.width}/{args.depth} k5 p2, batch {args.batch_size}, {cores} cores, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"amp {resolve_amp('auto', torch.device('cpu'))}, "
        f"torch {torch.__version__}"
    )
    counts = [int(n) for n in args.models.split(",")]
    for mode in args.modes.split(","):
        print(
            f"{mode}: largest parameter difference from {max(counts)} lone models after 3 fp32 AdamW steps: "
            f"grouped {max_difference(max(counts), mode):.2e}, vmap {vmap_difference(max(counts), mode):.2e}"
        )
    table = ResultTable(
        f"K seeds on {cores} cores: side by side or one batched model (images/s of all K, and per seed)",
        [
            ("mode", "mode", ""),
            ("k", "K", ""),
            ("how", "how", ""),
            ("ips", "images/s (median)", ".0f"),
            ("per_seed", "per seed", ".0f"),
            ("runs", "every run", ""),
            ("ratio", "vs side by side", ".2f"),
        ],
    )
    for mode in args.modes.split(","):
        for n in counts:
            shape = (mode, args.width, args.depth, args.batch_size, args.steps)

            def measure(how: str, threads: int, n=n, shape=shape) -> float:
                return images_per_s(how, n, shape[0], *shape[1:], threads)

            def side_by_side(n=n, shape=shape) -> float:
                processes = min(n, cores)  # K runs in `cores` single-thread processes: rounds of `cores`
                job = (images_per_s, ("lone", 1, shape[0], *shape[1:], 1))
                return sum(run_side_by_side([job] * processes, processes=processes, threads=1))

            reference = f"{n} lone models side by side, {min(n, cores)} x 1 thread"
            ways = {
                "1 lone model, 1 thread": lambda measure=measure: measure("lone", 1),
                reference: side_by_side,
                f"grouped convolutions, {cores} threads": lambda measure=measure: measure("grouped", cores),
                f"torch.func vmap (fp32), {cores} threads": lambda measure=measure: measure("vmap", cores),
            }
            runs = {how: [] for how in ways}
            for _ in range(args.repeats):  # interleaved, so load from elsewhere hits every way alike
                for how, way in ways.items():
                    runs[how].append(way())
            best = statistics.median(runs[reference])
            for how, values in runs.items():
                together = how.startswith(("grouped", "torch.func"))
                table.add(
                    mode=mode,
                    k=n if together or how == reference else 1,
                    how=how,
                    ips=statistics.median(values),
                    per_seed=statistics.median(values)
                    / (n if together else min(n, cores) if how == reference else 1),
                    runs=" ".join(f"{v:.0f}" for v in values),
                    ratio=statistics.median(values) / best,
                )
    table.print()
    print(table.to_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
