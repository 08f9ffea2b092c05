"""One self-contained HTML page: every image inlined as base64 PNG, tables as HTML, no scripts, no external files."""

from __future__ import annotations

import base64
import datetime as dt
import html
from dataclasses import dataclass, field
from pathlib import Path

from embedcache.report.tables import FALLBACK_NOTE, HeadTable

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
img { max-width: 100%; display: block; margin: 0.8em 0; border: 1px solid #eee; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th { background: #f4f4f4; } td.name { text-align: left; } td.best { font-weight: bold; background: #eef7ee; }
td.fallback { color: #8a4b00; font-style: italic; background: #fff6e8; }
h3.scope { font-size: 1em; margin: 1.4em 0 0.3em; overflow-wrap: anywhere; }
p.note { color: #666; font-size: 0.9em; } code { background: #f4f4f4; padding: 0 0.2em; }
"""


@dataclass
class Section:
    """A titled part of the page: paragraphs (plain text), images (PNG paths with captions) and raw HTML tables."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    images: list[tuple[Path, str]] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)


def inline_png(path: Path) -> str:
    """A data: URI holding the PNG's bytes."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def head_table_html(table: HeadTable) -> str:
    """One scoped head table as HTML: its scope as a heading, rows heads, the best test cell highlighted and
    validation fallbacks marked (never shown as test numbers)."""
    best = table.best()
    body = []
    for row in table.rows:
        cell = table.cells[row]
        classes = " ".join(name for name, on in (("best", row == best), ("fallback", cell.split != "test")) if on)
        attribute = f' class="{classes}"' if classes else ""
        body.append(f"<tr><td class=name>{html.escape(row)}</td><td>{html.escape(table.seeds_text(row))}</td>"
                    f"<td{attribute}>{html.escape(table.cell_text(row))}</td>"
                    f"<td class=name>{html.escape(table.split_text(row))}</td></tr>")
    note = f"<p class=note>{html.escape(FALLBACK_NOTE)}</p>" if table.has_fallback else ""
    return (f"<h3 class=scope>{html.escape(table.scope.describe())}</h3><table>"
            f"<tr><th>head</th><th>seeds</th><th>{html.escape(table.metric_name)} (%)</th><th>split</th></tr>"
            f"{''.join(body)}</table>{note}")


def render_page(title: str, source: str, sections: list[Section]) -> str:
    """The whole report as one HTML string."""
    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    parts = [
        "<!DOCTYPE html>", "<html lang=en><head><meta charset=utf-8>",
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class=note>source <code>{html.escape(source)}</code>; written {created} by embedcache report</p>",
    ]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        parts += [f"<p>{html.escape(text)}</p>" for text in section.paragraphs]
        parts += section.tables
        for path, caption in section.images:
            parts.append(f"<figure><img alt=\"{html.escape(caption)}\" src=\"{inline_png(path)}\">"
                         f"<figcaption class=note>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
