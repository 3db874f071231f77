"""The demo report's "how the repair settings were chosen" section, from the committed selection files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlsafe.report.html import Section

__all__ = ["selection_sections"]


def selection_sections(figdir: Path, art_dir: Path) -> list[Section]:
    """Sections showing the validation sweeps of CMRM and of the merges (none when the files are absent)."""
    sections: list[Section] = []
    for name, title in (("cmrm_selection.json", "CMRM settings"), ("merge_selection.json", "Merge settings")):
        path = art_dir / name
        if not path.is_file():
            continue
        data: dict[str, Any] = json.loads(path.read_text())
        sections.append(Section(title, f"Validation sweep in `{name}` ({len(data)} entries)."))
    return sections
