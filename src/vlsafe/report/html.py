"""Self-contained HTML and markdown pages from sections of text, tables and figures.

A :class:`Section` holds markdown-ish ``text`` (paragraphs separated by blank lines, ``- `` bullet
lines, ``**bold**``, ```code```), :class:`ReportTable` s and :class:`ReportFigure` s. The HTML page
embeds every figure as a base64 PNG ``data:`` URI and inlines its CSS: it has no external asset.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vlsafe.core.io import write_bytes_atomic
from vlsafe.report.tables import html_table, table

__all__ = [
    "ReportFigure",
    "ReportTable",
    "Section",
    "render_markdown",
    "render_page",
    "text_to_html",
    "write_figures",
]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #ddd;padding-bottom:.3em}h2{margin-top:1.8em;border-bottom:1px solid #eee}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}caption{text-align:left;font-weight:600;padding:.3em 0}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}th{background:#f4f4f4}
tr:nth-child(even) td{background:#fafafa}figure{margin:1em 0}img{max-width:100%;height:auto}
figcaption{color:#555;font-size:.9em}code{background:#f2f2f2;padding:0 .25em;border-radius:3px}
.meta{color:#666;font-size:.85em}
"""


@dataclass
class ReportTable:
    """Rows (list of dicts) with an optional column order and caption."""

    rows: list[dict[str, Any]]
    columns: list[str] | None = None
    caption: str | None = None


@dataclass
class ReportFigure:
    """A PNG figure: its bytes, a caption and a file name (used by markdown links)."""

    png: bytes
    caption: str = ""
    name: str = "figure.png"

    @classmethod
    def from_file(cls, path: str | Path, caption: str = "") -> ReportFigure:
        path = Path(path)
        return cls(png=path.read_bytes(), caption=caption, name=path.name)


@dataclass
class Section:
    """One report section."""

    title: str
    text: str = ""
    tables: list[ReportTable] = field(default_factory=list)
    figures: list[ReportFigure] = field(default_factory=list)


def _inline(text: str) -> str:
    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def text_to_html(text: str) -> str:
    """Markdown-ish text -> HTML paragraphs and bullet lists (everything else escaped)."""
    blocks = [b for b in re.split(r"\n\s*\n", text.strip()) if b.strip()]
    parts = []
    for block in blocks:
        lines = block.splitlines()
        if all(ln.lstrip().startswith("- ") for ln in lines):
            items = "".join(f"<li>{_inline(ln.lstrip()[2:])}</li>" for ln in lines)
            parts.append(f"<ul>{items}</ul>")
        else:
            parts.append(f"<p>{_inline(' '.join(ln.strip() for ln in lines))}</p>")
    return "\n".join(parts)


def render_page(title: str, sections: Sequence[Section], subtitle: str | None = None) -> str:
    """Render a complete, self-contained HTML page."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">{html.escape(subtitle or "")} generated {stamp}</p>',
    ]
    for sec in sections:
        body.append(f"<section><h2>{html.escape(sec.title)}</h2>")
        if sec.text:
            body.append(text_to_html(sec.text))
        for t in sec.tables:
            body.append(html_table(t.rows, t.columns, caption=t.caption))
        for f in sec.figures:
            data = base64.b64encode(f.png).decode("ascii")
            alt = html.escape(f.caption or f.name)
            cap = f"<figcaption>{html.escape(f.caption)}</figcaption>" if f.caption else ""
            body.append(f'<figure><img alt="{alt}" src="data:image/png;base64,{data}">{cap}</figure>')
        body.append("</section>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_figures(sections: Sequence[Section], figure_dir: str | Path) -> None:
    """Write every section's figure into ``figure_dir`` so that :func:`render_markdown` links resolve.

    Figures of the same name but different bytes (e.g. per-pair heat maps drawn into different folders) get a
    numeric suffix; their ``name`` is updated in place.
    """
    out = Path(figure_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, bytes] = {}
    for section in sections:
        for fig in section.figures:
            name, stem, suffix, k = fig.name, Path(fig.name).stem, Path(fig.name).suffix or ".png", 1
            while name in written and written[name] != fig.png:
                k += 1
                name = f"{stem}_{k}{suffix}"
            fig.name = name
            if name not in written:
                write_bytes_atomic(out / name, fig.png)
                written[name] = fig.png


def render_markdown(title: str, sections: Sequence[Section], figure_dir: str = "figures") -> str:
    """Render the same sections as markdown; figures are linked as ``{figure_dir}/{name}``."""
    out = [f"# {title}", ""]
    for sec in sections:
        out += [f"## {sec.title}", ""]
        if sec.text:
            out += [sec.text.strip(), ""]
        for t in sec.tables:
            if t.caption:
                out += [f"**{t.caption}**", ""]
            out += [table(t.rows, t.columns), ""]
        for f in sec.figures:
            out += [f"![{f.caption or f.name}]({figure_dir}/{f.name})", ""]
    return "\n".join(out).rstrip() + "\n"
