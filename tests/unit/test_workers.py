"""The worker pool of the demo: thread split, spawned workers with their own thread count, failures kept."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vlsafe.core.workers import peak_rss_children_mb, run_in_workers, split_threads


def _job(x: int) -> tuple[int, int, int]:
    import torch

    if x < 0:
        raise RuntimeError(f"job {x} refuses negative input")
    print(f"job {x} ran")  # goes to the worker's log file
    return x * x, torch.get_num_threads(), os.getpid()


@pytest.mark.parametrize(
    ("threads", "jobs", "expected"),
    [(2, 11, (2, 1)), (16, 11, (4, 4)), (1, 11, (1, 1)), (8, 2, (2, 4)), (3, 0, (1, 3))],
)
def test_split_threads(threads: int, jobs: int, expected: tuple[int, int]) -> None:
    assert split_threads(threads, jobs) == expected


def test_split_threads_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="threads=0"):
        split_threads(0, 3)


def test_jobs_run_in_spawned_workers_with_their_thread_count_and_failures_are_kept(tmp_path: Path) -> None:
    outcomes = run_in_workers(_job, [3, -1, 4, 5], workers=2, threads=1, log_dir=tmp_path / "logs")
    assert [o.job for o in outcomes] == [3, -1, 4, 5]  # in the order of the jobs, whatever finished first
    ok = [o for o in outcomes if o.error is None]
    assert [o.value[0] for o in ok] == [9, 16, 25]
    assert {o.value[1] for o in ok} == {1}  # each worker runs with the thread count it was given
    assert all(o.value[2] != os.getpid() for o in ok)  # and in another process
    failed = outcomes[1]
    assert failed.value is None and "job -1 refuses negative input" in (failed.error or "")
    logs = "".join(p.read_text() for p in (tmp_path / "logs").glob("worker-*.log"))
    assert "job 3 ran" in logs and "job 5 ran" in logs
    assert peak_rss_children_mb() > 10  # the finished workers count in the peak


def _mark(path: str) -> str:
    import time

    Path(path).write_text("ran")
    time.sleep(0.3)  # slower than the parent's reaction, so the queued jobs are still queued when it stops
    return path


def test_an_interrupted_run_starts_no_further_job(tmp_path: Path) -> None:
    jobs = [str(tmp_path / f"job{i}") for i in range(8)]

    def interrupt(job: str) -> str:  # the parent is interrupted when the first job is reported
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_in_workers(_mark, jobs, workers=1, label=interrupt)
    ran = sorted(p.name for p in tmp_path.iterdir())
    assert "job0" in ran and len(ran) < len(jobs)  # the queued jobs were cancelled, not run


def test_bad_worker_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="workers=0"):
        run_in_workers(_job, [1], workers=0)
