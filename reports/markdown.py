"""report.md: the report's sections as GitHub-flavoured Markdown; static PNGs of the main plots (report-plots/), the
interactive ones named, they live in report.html."""

from __future__ import annotations

from reports.content import Section, Table

PLOTS_DIR = "report-plots"  # beside report.md, where build.py writes each section's images


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(table: Table) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in table.headers) + " |",
             "|" + "---|" * len(table.headers)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table.rows]
    return lines


def _section(section: Section) -> list[str]:
    lines = [f"## {section.title}", ""]
    lines += [line for paragraph in section.paragraphs for line in (paragraph, "")]
    if section.figures:
        titles = "; ".join(figure.layout.title.text for figure in section.figures)
        lines += [f"Interactive in report.html: {titles}.", ""]
    lines += [line for image in section.images for line in (f"![{image.alt}]({PLOTS_DIR}/{image.name})", "")]
    if section.table is not None:
        lines += _table(section.table) + [""]
    if section.code is not None:
        lines += [f"```{section.code_language}", section.code, "```", ""]
    return lines


def render_markdown(title: str, sections: list[Section]) -> str:
    """The whole Markdown document."""
    lines = [f"# {title}", ""]
    for section in sections:
        lines += _section(section)
    return "\n".join(lines).rstrip("\n") + "\n"
