"""Scaling of DDP training on this machine's CPU: 1 process vs 2 gloo processes, same total cores.

Every configuration trains ConvMixer-128/6 (kernel 5, patch 2) on Fashion-MNIST with the global
batch of 128 through the real training path (``spatialmix.engine.train.fit``); processes are started
as torchrun would start them. The reference is one process using all ``--cores`` threads; DDP
runs use ``--cores / 2`` threads per process, and one process with that many threads shows how much
of the difference is thread scaling rather than DDP. images/s is what ``train`` reports for ``--steps``
optimizer steps (the global count over the slowest rank's time, first step included); the table
gives every repeat and the median, and the ratio of medians to the reference. Runs alternate, so
load from other programs hits every configuration alike. Close other work before trusting it.

    python benchmarks/ddp_scaling.py                 # 1 vs 2 processes on 2 cores, 5 repeats
    python benchmarks/ddp_scaling.py --sync-bn       # also 2 processes with SyncBatchNorm
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
from pathlib import Path

import torch
import torch.multiprocessing as mp

from spatialmix.ui.display import ResultTable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _process(rank: int, world_size: int, threads: int, port: int, args: dict, out: str) -> None:
    from spatialmix.engine import distributed
    from spatialmix.engine.config import TrainConfig
    from spatialmix.engine.train import fit

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(threads)
    config = TrainConfig(
        dataset="fashion-mnist",
        model="convmixer-128/6",
        batch_size=128,
        epochs=1,
        train_subset=args["train_subset"],
        test_subset=256,
        sync_bn=args["sync_bn"],
        device="cpu",
        progress=False,
    )
    try:
        result = fit(config, Path(out) / "run", max_steps=args["steps"])
        if rank == 0:
            (Path(out) / "result.json").write_text(json.dumps(result))
    finally:
        distributed.teardown()


def measure(world_size: int, threads: int, steps: int, sync_bn: bool) -> float:
    with tempfile.TemporaryDirectory() as out:
        args = {"steps": steps, "sync_bn": sync_bn, "train_subset": 128 * (steps + 1)}
        mp.spawn(_process, args=(world_size, threads, _free_port(), args, out), nprocs=world_size)
        return json.loads((Path(out) / "result.json").read_text())["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=2, help="threads in all (default: 2)")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per measurement (default: 12)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sync-bn", action="store_true", help="also measure 2 processes with SyncBatchNorm")
    args = parser.parse_args()
    setups = [
        ("1 process", 1, args.cores, False),
        ("2 processes (DDP, gloo)", 2, args.cores // 2, False),
        ("1 process, half the threads", 1, args.cores // 2, False),
    ]
    if args.sync_bn:
        setups.append(("2 processes + SyncBatchNorm", 2, args.cores // 2, True))
    results = {name: [] for name, *_ in setups}
    for repeat in range(args.repeats):
        for name, world_size, threads, sync_bn in setups:
            load = os.getloadavg()[0]
            results[name].append(measure(world_size, threads, args.steps, sync_bn))
            print(
                f"repeat {repeat + 1} {name:<28} {results[name][-1]:8.1f} images/s  (load {load:.1f})",
                flush=True,
            )
    reference = statistics.median(results[setups[0][0]])
    table = ResultTable(
        f"ConvMixer-128/6 k5 p2, Fashion-MNIST, global batch 128, {args.cores} CPU threads in all",
        [
            ("setup", "setup", ""),
            ("threads", "threads/process", ""),
            ("median", "images/s (median)", ".1f"),
            ("runs", "every run", ""),
            ("speedup", "vs 1 process", ".2f"),
        ],
    )
    for name, _world_size, threads, _ in setups:
        median = statistics.median(results[name])
        table.add(
            setup=name,
            threads=threads,
            median=median,
            runs=", ".join(f"{v:.0f}" for v in results[name]),
            speedup=median / reference,
        )
    table.print()


if __name__ == "__main__":
    main()
