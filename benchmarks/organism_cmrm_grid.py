"""CMRM's paper grid on one organism system, on the validation split, with the organism's own selection code.

Runs :func:`vlsafe_organism.repairs.cmrm.select_cmrm` (the library's ``run_sweep`` per option set: the paper
grid, one axis at a time from the paper's form and from the last-position form, pruned by measurement; 40 + 40
validation prompts with held-out synthetic images, 48 validation VQA questions) on ``organism:<system>`` of the
committed artefacts, resumable from ``OUT``. The selection JSON (``OUT/<system>.json``, the file the build writes
as ``cmrm_selection.json`` / ``cmrm_vlm_selection.json``) and its figure are written there.

Prints, as its last line, ``{"system", "seconds", "reference", "points", "chosen": {level: {...}}}``.

Run: ``.venv/bin/python benchmarks/organism_cmrm_grid.py vlm OUT [--threads 1]`` (35-60 s of one core per
point; 40-70 points per system).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from vlsafe_organism.repairs.cmrm import SELECTION_FILES, select_cmrm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system", choices=sorted(SELECTION_FILES))
    parser.add_argument("out", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    sel = select_cmrm(args.out / f"{args.system}.json", system=args.system, work_dir=args.out / f"runs-{args.system}",
                      figure=args.out / f"{args.system}.png")  # fmt: skip

    def brief(p: dict | None) -> dict | None:
        if not p:
            return None
        keep = ("label", "harmful_refusal", "benign_refusal", "utility", "within_limits")
        return {**{k: p.get(k) for k in keep}, "alpha": p["choice"]["alpha"]}

    points = sum(len((sel.get(level) or {}).get("points", [])) for level in ("dataset", "sample"))
    print(json.dumps({"system": args.system, "seconds": round(time.time() - start), "reference": sel["reference"],
                      "points": points, "chosen": {lv: brief(sel[lv]["chosen"]) for lv in ("dataset", "sample")}}))  # fmt: skip


if __name__ == "__main__":
    main()
