"""Do worker processes finish the demo sooner than one process with all the threads?

Runs the same demo jobs -- by default the ``vl+sft`` and ``vl+joint`` repair rows (benign synthetic image and
typographic image, 48 + 48 held-out prompts, 100 VQA questions, greedy, the demo's generation length) -- two
ways, side by side in one run on the committed organism:

* ``sequential``: in this process, one job after the other, with all of this process' torch threads (what
  ``vlsafe demo --workers 1`` does);
* ``workers``: in N spawned processes with threads / N torch threads each (what ``vlsafe demo`` does by
  default), including the workers' start-up (imports) and model loading.

Each way writes its rows into its own fresh directory (nothing cached); the rows of the two ways are compared.
Prints, as its last line, ``{"workers_vs_sequential_speedup": ..., "rows_equal": ..., ...}``.

Run: ``.venv/bin/python benchmarks/demo_workers.py [--jobs vl+sft,vl+joint] [--workers 2] [--n 48] [--n-vqa 100]``
(about 3 minutes on 2 quiet cores; ``--n 2 --n-vqa 2`` is a smoke test).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from vlsafe.core.workers import run_in_workers
from vlsafe_organism import demo
from vlsafe_organism.base import ensure_base_weights
from vlsafe_organism.evaluation import eval_prompts
from vlsafe_organism.registry import artifacts_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", default="vl+sft,vl+joint", help="repair rows to measure (comma-separated)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch threads in all (sequential: all of them)")
    ap.add_argument("--n", type=int, default=demo.DEFAULT_N, help="held-out harmful and benign prompts each")
    ap.add_argument("--n-vqa", type=int, default=100, help="held-out VQA questions")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ensure_base_weights()
    harmful, benign = eval_prompts(args.n, args.n)
    names = args.jobs.split(",")
    figures: dict[str, object] = {"jobs": names, "workers": args.workers, "threads": args.threads}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for way in ("sequential", "workers"):
            out = Path(tmp) / way
            # as run_demo builds it (float32, the demo's generation length)
            common = {
                "v": demo.ROWS_VERSION,
                "nh": args.n,
                "nb": args.n,
                "nv": args.n_vqa,
                "tok": demo.DEMO_TOKENS,
            }
            ctx = demo._Context(out=out, cache_dir=None, art=artifacts_dir(), harmful=list(harmful),
                                benign=list(benign), n_vqa=args.n_vqa, max_new_tokens=demo.DEMO_TOKENS,
                                dtype="float32", common=common, repaired=tuple(names))  # fmt: skip
            jobs = [demo._Job("repair", n, settings=demo.REPAIR_SETTINGS) for n in names]
            start = time.perf_counter()
            if way == "sequential":
                got = [demo._run_job(ctx, j)[0] for j in jobs]
            else:
                per = max(1, args.threads // args.workers)
                outcomes = run_in_workers(demo._worker_job, [(ctx, j) for j in jobs], args.workers, per,
                                          log_dir=out / "logs")  # fmt: skip
                bad = [o.error for o in outcomes if o.error]
                if bad:
                    raise SystemExit(f"a worker job failed:\n{bad[0]}")
                got = [demo._run_job(ctx, j)[0] for j in jobs]  # read back from rows/
            figures[f"{way}_seconds"] = round(time.perf_counter() - start, 1)
            rows[way] = got
            print(way, figures[f"{way}_seconds"], "s", flush=True)
    seconds = {way: float(figures[f"{way}_seconds"]) for way in rows}  # type: ignore[arg-type]
    figures["workers_vs_sequential_speedup"] = round(seconds["sequential"] / seconds["workers"], 2)
    figures["rows_equal"] = rows["sequential"] == rows["workers"]
    if not figures["rows_equal"]:
        figures["rows"] = rows
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
