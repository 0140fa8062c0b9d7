"""How a study should use the cores: its independent trainings one after the other with all
threads, or side by side with one thread each (``spatialmix.parallel``)?

Trains the same ``--jobs`` short runs (``--steps`` optimizer steps each, the quick preset's model
by default) both ways in the same run and prints the wall time of each, the CPU capability and
the ratio. Run it on an otherwise idle machine.

    python benchmarks/study_parallelism.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from spatialmix.accel.speed import available_cores
from spatialmix.engine.config import TrainConfig
from spatialmix.engine.parallel import run_side_by_side
from spatialmix.engine.train import fit
from spatialmix.ui.display import ResultTable


def short_run(config: TrainConfig, run_dir: Path, steps: int) -> float:
    return fit(config, run_dir, max_steps=steps)["images_per_s"]


def timed(jobs, processes: int, threads: int) -> float:
    start = time.perf_counter()
    run_side_by_side(jobs, processes=processes, threads=threads)
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--jobs", type=int, default=4)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--mode", default="chans")
    args = p.parse_args(argv)
    cores = available_cores()
    print(
        f"ConvMixer-{args.width}/{args.depth} k5 p2 {args.mode}, {args.jobs} jobs x {args.steps} steps, "
        f"{cores} cores, CPU capability {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}"
    )
    table = ResultTable(
        "A study's independent trainings: sequential vs side by side",
        [("how", "how", ""), ("seconds", "wall time (s)", ".1f"), ("ratio", "speed vs sequential", ".2f")],
    )
    with tempfile.TemporaryDirectory() as tmp:

        def jobs(tag):
            return [
                (
                    short_run,
                    (
                        TrainConfig(
                            model="convmixer",
                            width=args.width,
                            depth=args.depth,
                            kernel_size=5,
                            patch_size=2,
                            mode=args.mode,
                            seed=i,
                            progress=False,
                            train_subset=20000,
                        ),
                        Path(tmp) / f"{tag}-{i}",
                        args.steps,
                    ),
                )
                for i in range(args.jobs)
            ]

        sequential = timed(jobs("seq"), processes=1, threads=cores)
        side = timed(jobs("side"), processes=cores, threads=1)
        one_thread = timed(jobs("one"), processes=1, threads=1)
    table.add(how=f"one after the other, {cores} threads", seconds=sequential, ratio=1.0)
    table.add(how=f"side by side, {cores} processes x 1 thread", seconds=side, ratio=sequential / side)
    table.add(how="one after the other, 1 thread", seconds=one_thread, ratio=sequential / one_thread)
    table.print()
    print(table.to_markdown())
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
