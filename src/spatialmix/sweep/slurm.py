"""Sweep jobs through submitit: a process per job on this machine, or a Slurm job per configuration.

`run_with_submitit` submits the pending configurations of a sweep (at most ``max_running``
at a time), waits for them and reports each as it ends; an interruption cancels the jobs still
running. Inside a job, `SubmititJob` joins the job's processes (one per GPU) into one DDP
group, and submitit requeues the job when Slurm stops it for time or preemption (it resumes from
its checkpoint).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import submitit

from spatialmix.errors import SpatialmixError
from spatialmix.sweep.jobs import run_job
from spatialmix.sweep.settings import JobResources


class SubmititJob(submitit.helpers.Checkpointable):
    """A sweep job as submitit runs it (``checkpoint`` requeues it with the same arguments)."""

    def __call__(self, config: dict, run_dir: str) -> dict:

        _export_torch_distributed_env()
        return run_job(config, run_dir)


def _export_torch_distributed_env() -> None:
    """Inside a submitit job with several tasks: set RANK, WORLD_SIZE, MASTER_ADDR... as torchrun would."""
    try:
        env = submitit.JobEnvironment()
    except RuntimeError:
        return
    if env.num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)


def make_executor(executor: str, folder: Path, resources: JobResources):
    """A submitit executor for ``submitit-local`` or ``slurm``, with the job resources set."""
    cluster = {"submitit-local": "local", "slurm": "slurm"}[executor]
    try:
        ex = submitit.AutoExecutor(folder=folder, cluster=cluster)
    except RuntimeError as err:
        raise SpatialmixError(
            f"--executor {executor} cannot start here ({err}); run the sweep on a Slurm login node, "
            f"or use --executor local"
        ) from None
    ex.update_parameters(**resources.executor_parameters(name="spatialmix"))
    return ex


def run_with_submitit(
    folder: Path,
    pending: list,
    executor: str,
    resources: JobResources,
    max_running: int | None,
    poll_s: float | None,
    on_finish: Callable | None,
    say: Callable[[str], None] = print,
) -> tuple[list[str], dict[str, str]]:
    """Run the sweep jobs ``pending`` through submitit (files in ``folder``); returns (finished names,
    failed name -> why). ``on_finish(job, summary)`` is called here as each job finishes."""
    if not pending:
        return [], {}
    ex = make_executor(executor, folder, resources)
    poll_s = poll_s if poll_s is not None else (1.0 if executor == "submitit-local" else 30.0)
    limit = max_running or len(pending)
    waiting, running = list(pending), {}
    ran, failed = [], {}
    try:
        while waiting or running:
            while waiting and len(running) < limit:
                job = waiting.pop(0)
                # Job logs are files: no progress bar redrawn into them.
                submitted = ex.submit(
                    SubmititJob(), job.config.replace(progress=False).to_dict(), str(job.run_dir)
                )
                running[submitted] = job
                say(f"submitted {job.name} (job {submitted.job_id})")
            for submitted in [s for s in running if s.done()]:
                job = running.pop(submitted)
                try:
                    summary = submitted.result()
                except Exception as err:  # the job's traceback is in its log, next to the job
                    failed[job.name] = f"{_last_line(err)} (log: {submitted.paths.stderr})"
                    say(f"[red]failed[/] {job.name}: {failed[job.name]}")
                    continue
                ran.append(job.name)
                say(f"finished {job.name}: test acc {summary.get('test_acc', float('nan')):.4f}")
                if on_finish is not None:
                    on_finish(job, summary)
            if running:
                time.sleep(poll_s)
    except BaseException:
        for submitted in running:
            submitted.cancel(check=False)
        say(
            f"sweep interrupted: {len(ran)} configuration(s) finished in this call, {len(running)} running "
            "job(s) "
            f"cancelled; start the same sweep again to run the rest (finished ones are kept)"
        )
        raise
    return ran, failed


def _last_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(err).__name__
