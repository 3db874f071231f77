"""How much faster is the demo's evaluation config than plain batched ``generate`` in the same harness?

Runs the workload of one degradation system of ``vlsafe demo`` -- ``organism:vl`` on the demo's 48 held-out
harmful and 48 benign prompts under every image setting, plus 100 held-out VQA questions -- through the
library's evaluation runner (:func:`vlsafe.evals.run_eval`, called by
:func:`vlsafe_organism.evaluation.evaluate_system` exactly as the demo calls it: one run directory per image
setting plus one for VQA, each arm into its own fresh directories) two ways, side by side in one process
(setting by setting, the arms alternating; greedy, the demo's generation lengths):

* ``before``: ``EvalConfig(shared_prefix=False, batch_size=16)``: plain ``model.generate`` in length-sorted
  batches of 16;
* ``after``: the demo's config (:func:`vlsafe_organism.evaluation.setting_run`): length-sorted batches of
  :data:`~vlsafe_organism.evaluation.EVAL_BATCH` (32), samples that show one image batched together, and the
  shared-prefix KV cache (:func:`vlsafe.models.greedy.greedy_shared_prefix`);
* ``after_bf16`` (``--bf16``): the same with a copy of the model cast to bfloat16 -- not used by the demo by default
  (``--dtype bfloat16``); measured to show what half precision would buy on CPUs with bf16 instructions, and
  what it changes.

The arms differ only in the run config (``before`` wraps ``setting_run`` to change its two fields). Each
arm's time is the runner's generation seconds (``results.json`` ``generation.seconds``, summed over the run
directories) and, as ``*_wall_s``, the whole ``evaluate_system`` calls (loading the images, judging, writing).

Prints per-setting seconds and, as its last line, ``{"after_vs_before_speedup": ..., "identical_replies": ...,
"identical_verdicts": ..., "identical_vqa_marks": ..., ...}`` where ``identical_*`` count the replies,
keyword-judge verdicts (refusal settings) plus VQA answers marked right or wrong, and VQA marks alone, of
``after`` equal to ``before``.

Run: ``.venv/bin/python benchmarks/demo_generation.py [--bf16] [--n 48] [--n-vqa 100]`` (about 6 minutes on 2
quiet cores; ``--n 2 --n-vqa 2`` is a smoke test of a minute, mostly model loading).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from vlsafe.evals.judges import read_verdicts
from vlsafe.evals.metrics import utility_correct
from vlsafe.evals.rundir import RunDir
from vlsafe.models import bundle_from_model
from vlsafe_organism import evaluation
from vlsafe_organism.demo import DEFAULT_N, DEMO_TOKENS
from vlsafe_organism.evaluation import IMAGE_SETTINGS, EvalSystem, evaluate_system
from vlsafe_organism.registry import artifacts_dir, build_system

#: run-config fields each arm changes in the demo's config (``setting_run``)
ARMS: dict[str, dict[str, Any]] = {
    "before": {"shared_prefix": False, "batch_size": 16},
    "after": {},
    "after_bf16": {},
}


@contextlib.contextmanager
def _config(overrides: dict[str, Any]) -> Iterator[None]:
    """Make :func:`evaluate_system` run with ``overrides`` applied to each of its run configs."""
    original = evaluation.setting_run

    def changed(*args: Any, **kwargs: Any) -> Any:
        return original(*args, **{**kwargs, **overrides})

    evaluation.setting_run = changed
    try:
        yield
    finally:
        evaluation.setting_run = original


def _outcomes(run_dir: Path) -> tuple[dict[str, str], dict[str, bool], float]:
    """``({id: reply}, {id: verdict}, generation seconds)`` of one run directory; the verdict is the keyword
    judge's refusal for a prompt and right / wrong for a VQA question."""
    records = RunDir(run_dir).records()
    replies = {str(r["id"]): r.get("response") or "" for r in records}
    if run_dir.name == "vqa":
        verdicts = {str(r["id"]): bool(utility_correct(r)) for r in records}
    else:
        judged = read_verdicts(run_dir / "verdicts.jsonl")
        verdicts = {i: bool(judged[i].refused) if i in judged else False for i in replies}
    results = json.loads((run_dir / "results.json").read_text())
    return replies, verdicts, float((results.get("generation") or {}).get("seconds") or 0.0)


def _system(dtype: torch.dtype) -> EvalSystem:
    """``organism:vl`` as the demo loads it, in ``dtype``."""
    model, proc = build_system("vl", None, artifacts_dir())
    return EvalSystem("vl", bundle_from_model(model.to(dtype), proc, name="organism:vl"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bf16", action="store_true", help="also measure the demo's config in bfloat16")
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="held-out harmful and benign prompts each")
    parser.add_argument("--n-vqa", type=int, default=100, help="held-out VQA questions")
    args = parser.parse_args()

    torch.manual_seed(0)
    float32 = _system(torch.float32)
    systems = {"before": float32, "after": float32}
    if args.bf16:  # a model of its own: casting one back to float32 would keep the rounded weights
        systems["after_bf16"] = _system(torch.bfloat16)
    arms = list(systems)
    gen_s = {a: 0.0 for a in arms}
    wall_s = {a: 0.0 for a in arms}
    replies: dict[str, dict[str, str]] = {a: {} for a in arms}
    verdicts: dict[str, dict[str, bool]] = {a: {} for a in arms}
    # one step per run directory of the demo: each image setting, then VQA
    steps = [(s, [s], 0) for s in IMAGE_SETTINGS] + [("vqa", [], args.n_vqa)]
    with tempfile.TemporaryDirectory(prefix="demo-generation-") as tmp:
        for label, settings, n_vqa in steps:
            line = [label]
            for arm in arms:
                out = Path(tmp) / arm
                t0 = time.perf_counter()
                with _config(ARMS[arm]):
                    evaluate_system(systems[arm], settings, out, n_harmful=args.n, n_benign=args.n, n_vqa=n_vqa,
                                    max_new_tokens=DEMO_TOKENS)  # fmt: skip
                wall_s[arm] += time.perf_counter() - t0
                got, judged, seconds = _outcomes(out / label)
                gen_s[arm] += seconds
                replies[arm].update({f"{label}/{i}": r for i, r in got.items()})
                verdicts[arm].update({f"{label}/{i}": v for i, v in judged.items()})
                line.append(f"{arm} {seconds:.1f} s")
            print(" | ".join(line), flush=True)

    def same(a: str, b: str, what: dict[str, dict[str, Any]], prefix: str = "") -> int:
        return sum(what[a][k] == what[b][k] for k in what[a] if k.startswith(prefix))

    result: dict[str, Any] = {
        "n_generations": len(replies["before"]),
        "before_s": round(gen_s["before"], 1),
        "after_s": round(gen_s["after"], 1),
        "after_vs_before_speedup": round(gen_s["before"] / gen_s["after"], 3),
        "before_wall_s": round(wall_s["before"], 1),
        "after_wall_s": round(wall_s["after"], 1),
        "after_vs_before_wall_speedup": round(wall_s["before"] / wall_s["after"], 3),
        "identical_replies": same("before", "after", replies),
        "identical_verdicts": same("before", "after", verdicts),
        "n_vqa": sum(k.startswith("vqa/") for k in verdicts["before"]),
        "identical_vqa_marks": same("before", "after", verdicts, "vqa/"),
        "threads": torch.get_num_threads(),
    }
    if args.bf16:
        result.update(
            after_bf16_s=round(gen_s["after_bf16"], 1),
            bf16_vs_after_speedup=round(gen_s["after"] / gen_s["after_bf16"], 3),
            bf16_identical_replies=same("after", "after_bf16", replies),
            bf16_identical_verdicts=same("after", "after_bf16", verdicts),
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
