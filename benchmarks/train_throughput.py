"""Training throughput of spatialmix (Full / Chans / Space) against a plain reference loop.

The reference is the ConvMixer recipe as people usually write it: NCHW, fp32, every parameter in
AdamW, per-sample torchvision transforms in a DataLoader. spatialmix runs the real training path
(``spatialmix.engine.train.fit``): the in-memory uint8 data set with batch augmentation, channels_last,
mixed precision where the hardware has it, and frozen tensors left out of the backward pass and
the optimizer. Both train the same ConvMixer on the same data with the same batch size; the table
gives images/s (median of ``--repeats`` timed runs) and the ratio to the reference.

    python benchmarks/train_throughput.py                    # ConvMixer-128/6, k5, p2, batch 128
    python benchmarks/train_throughput.py --accuracy-epochs 1   # also compare test accuracy
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from spatialmix.accel import native
from spatialmix.data.datasets import load_dataset
from spatialmix.engine.config import TrainConfig
from spatialmix.engine.device import resolve_amp, resolve_device
from spatialmix.engine.optim import piecewise_linear_lr
from spatialmix.engine.train import fit
from spatialmix.models.convmixer import ConvMixer
from spatialmix.ui.display import ResultTable


class PerSampleDataset(Dataset):
    """What a typical script does: one PIL image at a time through torchvision transforms."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i, 0].numpy(), mode="L")), int(self.labels[i])


def reference_transform(mean, std, train: bool, pad: int):
    steps = [T.RandomCrop(28, padding=pad), T.RandomHorizontalFlip()] if train else []
    return T.Compose(steps + [T.ToTensor(), T.Normalize(mean, std)])


def reference_loop(
    data, args, steps: int, workers: int, epochs: int | None = None
) -> tuple[float, float | None]:
    """Train the plain way; return (images/s over ``steps`` steps, test accuracy if ``epochs``)."""
    torch.manual_seed(0)
    model = ConvMixer(args.width, args.depth, args.kernel_size, args.patch_size, in_chans=1, num_classes=10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    dataset = PerSampleDataset(
        data.train_images, data.train_labels, reference_transform(data.mean, data.std, True, pad=3)
    )
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
    )
    total = (epochs or 1) * len(loader)
    step, seen, start = 0, 0, None
    for _ in range(epochs or 10**9):
        for x, y in loader:
            if step == args.warmup:
                start, seen = time.perf_counter(), 0
            for group in optimizer.param_groups:
                group["lr"] = piecewise_linear_lr(step, total, args.lr)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step, seen = step + 1, seen + len(y)
            if epochs is None and step >= steps + args.warmup:
                return seen / (time.perf_counter() - start), None
    speed = seen / (time.perf_counter() - start)
    return speed, reference_accuracy(model, data)


@torch.no_grad()
def reference_accuracy(model, data) -> float:
    model.eval()
    x = (data.test_images.float() / 255 - data.mean[0]) / data.std[0]
    return sum(
        (model(x[i : i + 500]).argmax(1) == data.test_labels[i : i + 500]).sum().item()
        for i in range(0, len(x), 500)
    ) / len(x)


def spatialmix_run(
    data, args, mode: str, steps: int, epochs: int | None = None
) -> tuple[float, float | None]:
    config = TrainConfig(
        dataset="fashion-mnist",
        model="convmixer",
        width=args.width,
        depth=args.depth,
        kernel_size=args.kernel_size,
        patch_size=args.patch_size,
        mode=mode,
        batch_size=args.batch_size,
        lr=args.lr,
        epochs=epochs or 1,
        amp=args.amp,
        channels_last=not args.nchw,
        progress=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        if epochs is None:
            # The first steps warm up the allocator and oneDNN's kernel cache, as in the reference.
            fit(config, Path(tmp) / "warm", data=data, max_steps=args.warmup)
            result = fit(config, Path(tmp) / "run", data=data, max_steps=steps)
            return result["images_per_s"], None
        summary = fit(config, Path(tmp) / "run", data=data)
        return summary["images_per_s"], summary["test_acc"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--kernel-size", type=int, default=5)
    p.add_argument("--patch-size", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--steps", type=int, default=20, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[0, 2],
        help="DataLoader workers tried for the reference; its best is the baseline",
    )
    p.add_argument("--amp", default="auto")
    p.add_argument("--nchw", action="store_true", help="spatialmix without channels_last")
    p.add_argument(
        "--accuracy-epochs",
        type=int,
        default=0,
        help="also train reference and spatialmix Full for this many epochs and compare accuracy",
    )
    p.add_argument("--train-subset", type=int, default=None)
    args = p.parse_args(argv)

    data = load_dataset("fashion-mnist", download=False).subset(args.train_subset, None)
    device = resolve_device("auto")
    print(
        f"ConvMixer-{args.width}/{args.depth} k{args.kernel_size} p{args.patch_size}, "
        f"batch {args.batch_size}, {device}, {torch.get_num_threads()} threads, "
        f"amp {resolve_amp(args.amp, device)}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}, "
        f"depthwise and batch-norm gradients: {native.status()}",
        flush=True,
    )
    table = ResultTable(
        "Training throughput (images/s, median of repeats)",
        [
            ("name", "loop", ""),
            ("speed", "images/s", ".0f"),
            ("ratio", "vs reference", ".2f"),
            ("runs", "all runs", ""),
        ],
    )
    ref_runs = {w: [] for w in args.workers}
    ours = {m: [] for m in ("full", "chans", "space")}
    for _ in range(args.repeats):  # interleaved, so drifting machine load hits every row alike
        for w in args.workers:
            ref_runs[w].append(reference_loop(data, args, args.steps, w)[0])
        for mode in ours:
            ours[mode].append(spatialmix_run(data, args, mode, args.steps)[0])
    best_w = max(ref_runs, key=lambda w: statistics.median(ref_runs[w]))
    ref = statistics.median(ref_runs[best_w])
    for w, speeds in ref_runs.items():
        table.add(
            name=f"reference (NCHW fp32, DataLoader {w} workers)",
            speed=statistics.median(speeds),
            ratio=statistics.median(speeds) / ref,
            runs=" ".join(f"{s:.0f}" for s in speeds),
        )
    for mode, speeds in ours.items():
        table.add(
            name=f"spatialmix {mode.capitalize()}",
            speed=statistics.median(speeds),
            ratio=statistics.median(speeds) / ref,
            runs=" ".join(f"{s:.0f}" for s in speeds),
        )
    table.print()
    print(table.to_markdown())
    if args.accuracy_epochs:
        ref_speed, ref_acc = reference_loop(data, args, 0, best_w, epochs=args.accuracy_epochs)
        our_speed, our_acc = spatialmix_run(data, args, "full", 0, epochs=args.accuracy_epochs)
        print(
            f"accuracy after {args.accuracy_epochs} epoch(s): "
            f"reference {ref_acc:.4f} ({ref_speed:.0f} img/s), "
            f"spatialmix Full {our_acc:.4f} ({our_speed:.0f} img/s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
