"""How long does ``vlsafe demo`` take at an earlier commit and in the working tree, and are its figures the same?

Runs the whole demo twice on this machine, one run right after the other, each in a fresh output directory
(nothing reused from ``rows/``):

* ``before``: ``vlsafe demo --out OUT/before`` of commit ``--before`` (default ``710051f``, the last commit
  before the organism became a separate package: it lived in ``src/vlsafe/organism`` and the CLI registered
  ``demo`` itself), checked out with ``git worktree add`` into a temporary directory and imported through
  ``PYTHONPATH=<worktree>/src``, which comes before the editable installs of this venv;
* ``after``: ``vlsafe demo --out OUT/after`` of the working tree (``PYTHONPATH=<repo>/src:<repo>/organism/src``).

Both run this venv's ``vlsafe`` console script through :mod:`subprocess` with the same environment otherwise
(same threads, same organism cache: ``$VLSAFE_CACHE/organism``, default ``~/.cache/vlsafe/organism``). Before
timing, one short process per tree checks that ``import vlsafe`` resolves into that tree and warms the cache:
it converts the base weights if they are missing (else the first demo would pay for the conversion) and, for
the working tree, renders the held-out scenes its evaluation harness reads from the cache (the demo would
write them on its first run; the old demo renders in memory each time; the noise images, well under a second,
are left to the demo). ``--order after-first`` swaps the runs
to check for order effects.

Compares the wall seconds of each run (and each ``results.json`` ``seconds``), their ratio, every row
(``system``, ``image``, ``harmful_refused``, ``n_harmful``, ``benign_refused``, ``n_benign``, ``utility``,
``utility_by_type``, matched by system and image) and every example reply. Each demo's output is kept under
``OUT/before`` / ``OUT/after`` (``OUT/*.log``: its console output).

Prints, as its last line, ``{"before_s", "after_s", "ratio", "rows_identical", "differing_rows",
"examples_identical", "before_commit", "after_commit", ...}`` (``ratio`` = before_s / after_s: above 1, the
working tree is faster).

Run: ``.venv/bin/python benchmarks/demo_before_after.py --out reports/demo-before-after [--before 710051f]
[--order after-first]`` (about 20-25 minutes on 2 quiet cores: two whole demos). ``--dry-run`` only makes the
worktree, checks the imports (warming the cache) and prints the commands; ``--n 1 --no-repairs --no-analysis
--workers 1`` (passed to both demos) is a smoke test of about 2.5 minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: row fields compared between the two demos (rows are matched by system and image setting)
ROW_FIELDS = ("harmful_refused", "n_harmful", "benign_refused", "n_benign", "utility", "utility_by_type")
#: what each tree's check process runs: print where vlsafe is imported from, then warm the organism cache
_PREPARE = {
    "before": (
        "import vlsafe; print(vlsafe.__file__, flush=True)\n"
        "from vlsafe.organism.base import ensure_base_weights\n"
        "ensure_base_weights()\n"
    ),
    "after": (
        "import sys, vlsafe, vlsafe_organism; print(vlsafe.__file__, vlsafe_organism.__file__, flush=True)\n"
        "from vlsafe_organism.base import ensure_base_weights\n"
        "from vlsafe_organism.evaluation import prompt_samples, vqa_samples\n"
        "ensure_base_weights()\n"
        "n = int(sys.argv[1])\n"
        "prompt_samples('harmful_eval', n); prompt_samples('benign_eval', n); vqa_samples('vqa_eval', 100)\n"
    ),
}


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True, text=True).stdout.strip()


def _demo_args(args: argparse.Namespace) -> list[str]:
    """Options passed to both demos (flags both commits' ``vlsafe demo`` accept)."""
    extra = [] if args.n is None else ["--n", str(args.n)]
    extra += ["--no-repairs"] if args.no_repairs else []
    extra += ["--no-analysis"] if args.no_analysis else []
    extra += [] if args.workers is None else ["--workers", str(args.workers)]
    return extra


def _prepare(way: str, env: dict[str, str], roots: list[Path], n: int) -> str:
    """Check that ``env`` imports vlsafe (and the organism) from ``roots``; warm the cache. Returns the paths."""
    done = subprocess.run([sys.executable, "-c", _PREPARE[way], str(n)], env=env, cwd=tempfile.gettempdir(),
                          check=True, capture_output=True, text=True)  # fmt: skip
    paths = done.stdout.splitlines()[0].split()
    for path, root in zip(paths, roots, strict=True):
        if not Path(path).resolve().is_relative_to(root.resolve()):
            raise SystemExit(
                f"{way}: with PYTHONPATH={env['PYTHONPATH']} the import comes from {path}, not {root}"
            )
    return " ".join(paths)


def _run(way: str, command: list[str], env: dict[str, str], out: Path) -> float:
    """Run one demo (console output to ``out/<way>.log``); its wall seconds."""
    print(f"{way}: {' '.join(command)}", flush=True)
    with (out / f"{way}.log").open("w") as log:
        start = time.perf_counter()
        done = subprocess.run(command, env=env, cwd=out, stdout=log, stderr=subprocess.STDOUT, check=False)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{way}: the demo failed (exit {done.returncode}); see {out / f'{way}.log'}")
    print(f"{way}: {seconds:.1f} s", flush=True)
    return seconds


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=0.0, abs_tol=1e-12)
    return bool(a == b)


def _compare_rows(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows that differ: ``{"system", "image", "before": {field: value}, "after": {...}}`` with only the
    differing fields (a row missing on one side: ``None`` there)."""
    old = {(r["system"], r["image"]): r for r in before}
    new = {(r["system"], r["image"]): r for r in after}
    differing = []
    for key in [*old, *(k for k in new if k not in old)]:
        a, b = old.get(key), new.get(key)
        if a is None or b is None:
            differing.append({"system": key[0], "image": key[1], "before": a, "after": b})
            continue
        fields = [f for f in ROW_FIELDS if not _same(a.get(f), b.get(f))]
        if fields:
            differing.append({"system": key[0], "image": key[1], "before": {f: a.get(f) for f in fields},
                              "after": {f: b.get(f) for f in fields}})  # fmt: skip
    return differing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="710051f", help="commit of the 'before' demo")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "demo-before-after")
    parser.add_argument("--order", choices=("before-first", "after-first"), default="before-first")
    parser.add_argument(
        "--dry-run", action="store_true", help="check the imports and print the commands only"
    )
    parser.add_argument("--n", type=int, help="held-out harmful and benign prompts each (both demos)")
    parser.add_argument("--no-repairs", action="store_true", help="leave out the repairs (both demos)")
    parser.add_argument("--no-analysis", action="store_true", help="leave out the analysis (both demos)")
    parser.add_argument("--workers", type=int, help="worker processes of both demos (default: theirs)")
    args = parser.parse_args()

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    before_commit = _git("rev-parse", "--verify", f"{args.before}^{{commit}}")
    after_commit = _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--", "src", "organism"))
    vlsafe_cli = Path(sys.executable).with_name("vlsafe")  # this venv's console script: vlsafe.cli:main
    extra = _demo_args(args)
    tmp = Path(tempfile.mkdtemp(prefix="demo-before-after-"))
    worktree = tmp / "worktree"
    _git("worktree", "add", "--detach", str(worktree), before_commit)
    try:
        envs = {
            "before": {**os.environ, "PYTHONPATH": str(worktree / "src")},
            "after": {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO / 'organism' / 'src'}"},
        }
        roots = {"before": [worktree / "src"], "after": [REPO / "src", REPO / "organism" / "src"]}
        order = ["before", "after"] if args.order == "before-first" else ["after", "before"]
        commands = {way: [str(vlsafe_cli), "demo", "--out", str(out / way), *extra] for way in order}
        for way in order:
            print(f"{way}: vlsafe from {_prepare(way, envs[way], roots[way], args.n or 48)}", flush=True)
        if args.dry_run:
            for way in order:
                print(f"{way}: PYTHONPATH={envs[way]['PYTHONPATH']} {' '.join(commands[way])}")
            return
        wall = {}
        for way in order:
            if (out / way).exists():  # a fresh demo: rows/ of an earlier run would be reused
                shutil.rmtree(out / way)
            wall[way] = _run(way, commands[way], envs[way], out)
    finally:
        _git("worktree", "remove", "--force", str(worktree))
        shutil.rmtree(tmp, ignore_errors=True)

    results = {way: json.loads((out / way / "results.json").read_text()) for way in order}
    differing = _compare_rows(results["before"]["rows"], results["after"]["rows"])
    old_ex, new_ex = results["before"].get("examples", {}), results["after"].get("examples", {})
    differing_examples = sorted(k for k in {*old_ex, *new_ex} if old_ex.get(k) != new_ex.get(k))
    figures = {
        "before_s": round(wall["before"], 1),
        "after_s": round(wall["after"], 1),
        "ratio": round(wall["before"] / wall["after"], 3),
        "before_results_s": results["before"].get("seconds"),
        "after_results_s": results["after"].get("seconds"),
        "results_ratio": round(results["before"]["seconds"] / results["after"]["seconds"], 3)
        if results["before"].get("seconds") and results["after"].get("seconds")
        else None,
        "rows_identical": not differing,
        "n_rows": len(results["after"]["rows"]),
        "differing_rows": differing,
        "examples_identical": not differing_examples,
        "differing_examples": differing_examples,
        "before_commit": before_commit,
        "after_commit": after_commit,
        "after_dirty": dirty,
        "order": args.order,
        "demo_options": extra,
    }
    (out / "before_after.json").write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
