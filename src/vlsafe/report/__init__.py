"""Reports: markdown and self-contained HTML pages, tables and matplotlib figures.

:func:`write_report` turns run directories into ``report.md`` + ``report.html`` + PNG figures; the
building blocks (:func:`table`, :mod:`vlsafe.report.figures`, :func:`render_page`, :class:`Section`)
are reused by the analysis and organism reports. The ``results.json`` schema read here is
documented in :mod:`vlsafe.report.io`.
"""

from __future__ import annotations

from vlsafe.report import figures
from vlsafe.report.figures import bar_with_intervals, line_curves, png_bytes, save_png, scatter_with_intervals
from vlsafe.report.html import ReportFigure, ReportTable, Section, render_markdown, render_page, text_to_html
from vlsafe.report.io import RunData, load_run
from vlsafe.report.tables import fmt_ci, fmt_value, html_table, table
from vlsafe.report.writer import build_sections, write_report

__all__ = [
    "ReportFigure",
    "ReportTable",
    "RunData",
    "Section",
    "bar_with_intervals",
    "build_sections",
    "figures",
    "fmt_ci",
    "fmt_value",
    "html_table",
    "line_curves",
    "load_run",
    "png_bytes",
    "render_markdown",
    "render_page",
    "save_png",
    "scatter_with_intervals",
    "table",
    "text_to_html",
    "write_report",
]
