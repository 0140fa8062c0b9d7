"""Run a study's independent jobs (trainings, attack evaluations) side by side.

On a small CPU, two processes with one thread each do nearly twice the work of one process with
one thread, and far more than one process with two threads when anything else runs on the
machine (a 2-thread process waits for its slower core). So a study hands its independent jobs
to `run_side_by_side`, which runs them in ``processes`` worker processes with ``threads``
torch threads each. A job's result does not depend on what ran beside it: it is bitwise the
result of the same job run alone with the same number of threads (tested).

Jobs are ``(function, args)`` pairs of module-level functions (they are sent to the workers by
pickling, like any ``multiprocessing`` job); results come back in the order of the jobs.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from spatialmix.accel import speed

Job = tuple[Callable[..., Any], tuple]


def default_processes() -> int:
    """One worker per core this process may use."""
    return speed.available_cores()


def _start_worker(threads: int) -> None:
    speed.set_threads(threads)
    speed.tune_allocator()


def run_side_by_side(
    jobs: Sequence[Job],
    processes: int | None = None,
    threads: int = 1,
    on_done: Callable[[int, Any], None] | None = None,
) -> list:
    """Run ``jobs`` in ``processes`` workers (``threads`` torch threads each); return their results.

    ``processes`` None: one per available core; 1 runs the jobs here, one after the other (with
    ``threads`` threads). ``on_done(index, result)`` is called in this process as each job ends.
    The first job that raises, or an interrupt of this process, stops the others (their worker
    processes are terminated; every run folder is crash-safe) and is raised here.
    """
    processes = default_processes() if processes is None else processes
    if processes < 1 or threads < 1:
        raise ValueError(f"processes and threads must be at least 1, got {processes} and {threads}")
    results: list = [None] * len(jobs)
    if processes == 1 or len(jobs) <= 1:
        _start_worker(threads)
        for i, (fn, args) in enumerate(jobs):
            results[i] = fn(*args)
            if on_done:
                on_done(i, results[i])
        return results
    # spawn, not fork: a forked child inherits torch's thread pool and OpenMP state half-initialized.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=min(processes, len(jobs)),
        mp_context=context,
        initializer=_start_worker,
        initargs=(threads,),
    ) as pool:
        futures = {pool.submit(fn, *args): i for i, (fn, args) in enumerate(jobs)}
        try:
            for future in as_completed(futures):  # as each job ends, not when all have
                results[futures[future]] = future.result()  # re-raises a job's exception
                if on_done:
                    on_done(futures[future], results[futures[future]])
        except BaseException:
            # A job failed, or Ctrl-C / SIGTERM reached this process only (kill PID, a scheduler):
            # stop the other jobs now instead of letting orphaned workers train on. Every run folder
            # is crash-safe, so the same command continues them later.
            # (No future.cancel() first: the executor then fails the jobs as "broken" itself, which
            # it cannot do to a cancelled one without printing a traceback.)
            for process in list((getattr(pool, "_processes", None) or {}).values()):  # no public kill
                process.terminate()
            raise
    return results
