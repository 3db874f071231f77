"""The demo report's CMRM positive-control section: the library's own-image control
(:func:`vlsafe.methods.cmrm.controls.own_image_control`) run on the organism's VL systems themselves.

Sample level with each prompt's own image, alpha 1, one layer, the last position must give the text-only state
there; when it does at the first, middle and last decoder layer, the hooks reach the states CMRM means to move,
so a CMRM row that misses its target says something about the method on that system, not about the wiring. The
second control (a planted constant image offset removed exactly by the paper's form) needs a purpose-built
model and runs in the test suite (``tests/integration/test_cmrm_controls.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlsafe.data.scenes import make_example
from vlsafe.methods.cmrm import own_image_control
from vlsafe.models import load_model
from vlsafe.report import ReportTable, Section
from vlsafe_organism import safety_data as sd
from vlsafe_organism.evaluation import EVAL_IMAGE_START
from vlsafe_organism.registry import resolve_organism

__all__ = ["SYSTEMS", "cmrm_control_section"]

#: the systems CMRM is measured on
SYSTEMS = ("vlm", "vl")


def cmrm_control_section(
    cache_dir: str | Path | None, art_dir: Path, n: int = 8, systems: tuple[str, ...] = SYSTEMS
) -> tuple[Section, dict[str, Any]]:
    """The section, and ``{"cmrm_control_ok": bool, "cmrm_control": [...]}`` for ``results.json``: the control on
    the first ``n`` held-out harmful prompts, each with its held-out synthetic render."""
    prompts = [p.text for p in sd.load_split("harmful_eval")][:n]
    images = [make_example(EVAL_IMAGE_START + i, "test").image for i in range(len(prompts))]
    rows: list[dict[str, Any]] = []
    for system in systems:
        bundle = load_model(resolve_organism(f"organism:{system}", cache_dir, art_dir), dtype="float32")
        bundle.model.eval()
        for r in own_image_control(bundle, prompts, images):
            rows.append({"system": system, **r.as_dict()})
    ok = all(r["ok"] for r in rows)
    table = [{"system": r["system"], "layer": r["layer"], "image moves the state by": f"{r['image_shift']:.3g}",
              "steered minus text-only": f"{r['residual']:.2g}", "state scale": f"{r['scale']:.3g}",
              "passed": "yes" if r["ok"] else "NO"} for r in rows]  # fmt: skip
    text = (
        f"Sample-level CMRM with each prompt's own image as img′, alpha 1, one layer, the last position, on {len(prompts)} "
        "held-out harmful prompts with their renders: the steered state must equal the text-only state at that "
        "layer (largest absolute difference within 1e-4 of the state's scale). "
        + ("**Passed** on every system and layer: the steering reaches the states it means to move. "
           if ok else "**Failed** (see the table): the CMRM rows of the failing system are not evidence about the method. ")  # fmt: skip
        + "The second control, a planted constant image offset that the paper's form removes exactly, runs in the "
        "test suite on a purpose-built model."
    )
    return Section("CMRM positive control", text, tables=[ReportTable(table)]), {"cmrm_control_ok": ok,
                                                                                  "cmrm_control": rows}  # fmt: skip
