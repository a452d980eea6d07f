"""report.html: one self-contained page (plotly.js inlined once) that opens offline."""

from __future__ import annotations

import html
from functools import partial

from reports.content import Section, Table

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f3f4f6; }
pre { background: #f6f8fa; padding: 0.75rem; overflow-x: auto; font-size: 0.85rem; }
"""
escape = partial(html.escape, quote=False)  # element text only: quotes need no escaping there


def _table(table: Table) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in table.headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in table.rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(section: Section, index: int, plotly_js_included: bool) -> tuple[str, bool]:
    """The section's HTML and whether plotly.js has been inlined by now."""
    parts = [f"<h2>{escape(section.title)}</h2>"]
    parts += [f"<p>{escape(p)}</p>" for p in section.paragraphs]
    if section.table is not None:
        parts.append(_table(section.table))
    if section.code is not None:
        parts.append(f"<pre><code>{escape(section.code)}</code></pre>")
    for number, figure in enumerate(section.figures):
        parts.append(figure.to_html(
            full_html=False, include_plotlyjs=not plotly_js_included, div_id=f"figure-{index}-{number}",
        ))
        plotly_js_included = True
    return "\n".join(parts), plotly_js_included


def render_html(title: str, sections: list[Section]) -> str:
    """The whole HTML document; figure ids are fixed so the same study gives the same bytes."""
    body, included = [], False
    for index, section in enumerate(sections):
        text, included = _section(section, index, included)
        body.append(text)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{escape(title)}</h1>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )
