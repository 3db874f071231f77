"""Analysis output folders: ``data.safetensors`` + ``data.json``, PNG figures, ``summary.md``, ``report.html``.

Every analysis writes the numbers behind its figures (tensors as safetensors, tables and metadata as
JSON) so that :func:`vlsafe.analysis.redraw` can redraw the figures and the summary without recomputing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from vlsafe.core.errors import InputError
from vlsafe.core.io import read_json, write_bytes_atomic, write_text_atomic
from vlsafe.core.tensor_files import load_tensors, save_tensors
from vlsafe.report import ReportFigure, Section, png_bytes, render_markdown, render_page

logger = logging.getLogger(__name__)

DATA_TENSORS = "data.safetensors"
DATA_JSON = "data.json"
FIGURE_DIR = "figures"
_DIGEST_KEY = "data_sha256"


def save_data(out_dir: str | Path, kind: str, data: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write ``data.safetensors`` and then ``data.json`` (``{"kind": kind, **data}`` plus the SHA-256 of the
    tensor file) into ``out_dir``, each atomically; ``data.json`` goes last, so it always describes whole data."""
    out = Path(out_dir)
    tensor_path = out / DATA_TENSORS
    save_tensors(tensor_path, tensors, format=f"vlsafe.analysis.{kind}")
    digest = hashlib.sha256(tensor_path.read_bytes()).hexdigest()
    write_text_atomic(
        out / DATA_JSON, json.dumps({"kind": kind, **data, _DIGEST_KEY: digest}, indent=2, default=str)
    )
    return out


def load_data(out_dir: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read what :func:`save_data` wrote: ``(data_json, tensors)``.

    Raises:
        InputError: ``data.json`` is missing or malformed, or ``data.safetensors`` is missing, unreadable, or not
            the file ``data.json`` was written with (an interrupted run replaced one but not the other).
    """
    out = Path(out_dir)
    meta_path, tensor_path = out / DATA_JSON, out / DATA_TENSORS
    if not meta_path.is_file():
        raise InputError(f"{str(out)!r} is not an analysis output folder: {DATA_JSON} is missing")
    data = read_json(meta_path, "analysis data")
    if not isinstance(data, dict):
        raise InputError(f"{meta_path} must hold a JSON object, got {type(data).__name__}")
    digest = data.pop(_DIGEST_KEY, None)
    if digest is not None:
        if not tensor_path.is_file():
            raise InputError(f"{str(out)!r}: {DATA_TENSORS} is missing ({DATA_JSON} names it)")
        if hashlib.sha256(tensor_path.read_bytes()).hexdigest() != digest:
            raise InputError(
                f"{str(out)!r}: {DATA_TENSORS} is not the file {DATA_JSON} was written with (an interrupted run?); "
                "run the analysis again"
            )
    tensors = load_tensors(tensor_path, "analysis data")[0] if tensor_path.is_file() else {}
    return data, tensors


def write_page(
    out_dir: str | Path, title: str, sections: Sequence[Section], figures: dict[str, Figure]
) -> dict[str, Path]:
    """Save ``figures`` (name -> Figure) as PNG and write ``summary.md`` and ``report.html``, each atomically.

    Figures are attached to the section whose ``figures`` list names them (``ReportFigure.name``); the
    PNG bytes are filled in here.
    """
    out = Path(out_dir)
    fig_dir = out / FIGURE_DIR
    paths: dict[str, Path] = {}
    pngs: dict[str, bytes] = {}
    for name, fig in figures.items():
        pngs[name] = png_bytes(fig)
        paths[name] = write_bytes_atomic(fig_dir / f"{name}.png", pngs[name])
    for sec in sections:
        for f in sec.figures:
            stem = Path(f.name).stem
            if stem in pngs:
                f.png = pngs[stem]
    md = write_text_atomic(out / "summary.md", render_markdown(title, sections, figure_dir=FIGURE_DIR))
    page = write_text_atomic(out / "report.html", render_page(title, sections))
    paths["summary"], paths["html"] = md, page
    logger.info("wrote %s to %s", title, out)
    return paths


def fig_ref(name: str, caption: str) -> ReportFigure:
    """A placeholder figure reference (bytes filled by :func:`write_page`)."""
    return ReportFigure(png=b"", caption=caption, name=f"{name}.png")
