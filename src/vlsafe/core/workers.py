"""Run independent CPU jobs in worker processes, each with its own share of the torch threads.

On a few CPU cores, small-batch inference of a ~100M-parameter model uses a second intra-op thread poorly
(many ops are too small to split), so two one-thread processes finish two jobs sooner than one two-thread
process does them in turn (``benchmarks/demo_workers.py``). :func:`run_in_workers` is that pattern for jobs
that write their own results (the demo's row files): spawned processes (no fork of a process that holds
torch threads), a thread count per worker, each worker's output in a log file instead of interleaved bars on
the terminal, one progress bar over the jobs, and a failed job reported with its traceback instead of
sinking the others.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

__all__ = ["JobOutcome", "peak_rss_children_mb", "run_in_workers", "split_threads"]

logger = logging.getLogger(__name__)


@dataclass
class JobOutcome:
    """What one job gave: its ``value`` or, when it raised, ``error`` (the formatted traceback)."""

    job: Any
    value: Any = None
    error: str | None = None
    seconds: float = 0.0


def split_threads(threads: int, n_jobs: int, max_workers: int = 4) -> tuple[int, int]:
    """``(workers, threads per worker)`` for ``n_jobs`` jobs on ``threads`` threads: one worker per thread,
    at most ``max_workers`` and never more than the jobs; ``(1, threads)`` means run in this process."""
    if threads < 1 or n_jobs < 0 or max_workers < 1:
        raise ValueError(f"threads={threads}, n_jobs={n_jobs}, max_workers={max_workers}: all must be >= 1")
    workers = max(1, min(threads, max_workers, n_jobs))
    return workers, max(1, threads // workers)


def _init_worker(threads: int, log_dir: str | None) -> None:
    torch.set_num_threads(threads)
    if log_dir is not None:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        stream = open(Path(log_dir) / f"worker-{os.getpid()}.log", "a", buffering=1)  # noqa: SIM115
        sys.stdout = sys.stderr = stream
        logging.basicConfig(stream=stream, level=logging.INFO, force=True,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip


def _call(fn: Callable[[Any], Any], job: Any) -> tuple[Any, str | None, float]:
    start = time.perf_counter()
    try:
        return fn(job), None, time.perf_counter() - start
    except Exception:  # reported to the parent with its traceback; the other jobs go on
        return None, traceback.format_exc(), time.perf_counter() - start


def run_in_workers(
    fn: Callable[[Any], Any],
    jobs: Sequence[Any],
    workers: int,
    threads: int = 1,
    *,
    log_dir: str | Path | None = None,
    desc: str | None = None,
    label: Callable[[Any], str] = str,
) -> list[JobOutcome]:
    """Run ``fn(job)`` for every job in ``workers`` spawned processes with ``threads`` torch threads each.

    Jobs are handed out in the given order as workers become free (put the longest first). ``fn`` and the jobs
    must be picklable (a module-level function; plain data). A job that raises does not stop the others: its
    outcome carries the traceback and it is logged here as a warning.

    Args:
        fn: The job function (module level).
        jobs: The jobs.
        workers: Processes (>= 1).
        threads: Torch intra-op threads in each process.
        log_dir: Where each worker's stdout, stderr and log records go (``worker-<pid>.log``); ``None`` keeps
            them on the terminal.
        desc: Label of the progress bar over the jobs (no bar when ``None``).
        label: Names a job in log messages.

    Returns:
        One :class:`JobOutcome` per job, in the order of ``jobs``.
    """
    if workers < 1 or threads < 1:
        raise ValueError(f"workers={workers}, threads={threads}: both must be >= 1")
    outcomes: dict[int, JobOutcome] = {}
    context = multiprocessing.get_context("spawn")
    init = (threads, str(log_dir) if log_dir is not None else None)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=init) as pool:
        futures = {pool.submit(_call, fn, job): i for i, job in enumerate(jobs)}
        try:
            _collect(futures, jobs, outcomes, desc, label)
        except BaseException:  # Ctrl-C or a failure here: start no further job, then let the running ones end
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return [outcomes[i] for i in range(len(jobs))]


def _collect(
    futures: dict[Any, int],
    jobs: Sequence[Any],
    outcomes: dict[int, JobOutcome],
    desc: str | None,
    label: Callable[[Any], str],
) -> None:
    with tqdm(total=len(jobs), desc=desc, disable=desc is None) as bar:
        for future in as_completed(futures):
            i = futures[future]
            try:
                value, error, seconds = future.result()
            except Exception:  # the worker itself died (killed, out of memory, unpicklable result)
                value, error, seconds = None, traceback.format_exc(), 0.0
            outcomes[i] = JobOutcome(jobs[i], value, error, seconds)
            if error is not None:
                logger.warning("job %s failed in its worker:\n%s", label(jobs[i]), error)
            else:
                logger.info("job %s done in %.0f s", label(jobs[i]), seconds)
            bar.set_postfix_str(label(jobs[i]), refresh=False)
            bar.update(1)


def peak_rss_children_mb() -> float:
    """Peak resident set size of the largest finished child process, in MiB (0 when there was none)."""

    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
