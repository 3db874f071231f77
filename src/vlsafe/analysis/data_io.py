"""Analysis output folders: ``data.safetensors`` + ``data.json``, PNG figures, ``summary.md``, ``report.html``.

Every analysis writes the numbers behind its figures (tensors as safetensors, tables and metadata as
JSON) so that :func:`vlsafe.analysis.redraw` can redraw the figures and the summary without recomputing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from safetensors.torch import load_file, save_file

from vlsafe.core.errors import InputError
from vlsafe.core.io import read_json
from vlsafe.report import ReportFigure, Section, render_markdown, render_page, save_png

logger = logging.getLogger(__name__)

DATA_TENSORS = "data.safetensors"
DATA_JSON = "data.json"
FIGURE_DIR = "figures"


def save_data(out_dir: str | Path, kind: str, data: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write ``data.json`` (``{"kind": kind, **data}``) and ``data.safetensors`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    save_file(clean, str(out / DATA_TENSORS), metadata={"format": f"vlsafe.analysis.{kind}"})
    (out / DATA_JSON).write_text(json.dumps({"kind": kind, **data}, indent=2, default=str), encoding="utf-8")
    return out


def load_data(out_dir: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read what :func:`save_data` wrote: ``(data_json, tensors)``."""
    out = Path(out_dir)
    meta_path, tensor_path = out / DATA_JSON, out / DATA_TENSORS
    if not meta_path.is_file():
        raise InputError(f"{str(out)!r} is not an analysis output folder: {DATA_JSON} is missing")
    data: dict[str, Any] = read_json(meta_path, "analysis data")
    tensors = load_file(str(tensor_path)) if tensor_path.is_file() else {}
    return data, tensors


def write_page(
    out_dir: str | Path, title: str, sections: Sequence[Section], figures: dict[str, Figure]
) -> dict[str, Path]:
    """Save ``figures`` (name -> Figure) as PNG and write ``summary.md`` and ``report.html``.

    Figures are attached to the section whose ``figures`` list names them (``ReportFigure.name``); the
    PNG bytes are filled in here.
    """
    out = Path(out_dir)
    fig_dir = out / FIGURE_DIR
    paths: dict[str, Path] = {}
    for name, fig in figures.items():
        paths[name] = save_png(fig, fig_dir / f"{name}.png")
    for sec in sections:
        for f in sec.figures:
            stem = Path(f.name).stem
            if stem in paths:
                f.png = paths[stem].read_bytes()
    md = out / "summary.md"
    md.write_text(render_markdown(title, sections, figure_dir=FIGURE_DIR), encoding="utf-8")
    page = out / "report.html"
    page.write_text(render_page(title, sections), encoding="utf-8")
    paths["summary"], paths["html"] = md, page
    logger.info("wrote %s to %s", title, out)
    return paths


def fig_ref(name: str, caption: str) -> ReportFigure:
    """A placeholder figure reference (bytes filled by :func:`write_page`)."""
    return ReportFigure(png=b"", caption=caption, name=f"{name}.png")
