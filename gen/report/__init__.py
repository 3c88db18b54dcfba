"""``sdg report DIR``: what a run made, as one self-contained HTML page and the same plots as PNG.

    DIR/report.html      the funnel, examples, distributions, diversity and the engine over time
    DIR/report/*.png     each plot of the page
    DIR/README.md        the dataset card (gen/report/card.py)

``sdg run`` and ``sdg filter`` write it at the end of every run. The measures are in
:mod:`gen.report.measures`, the plots in :mod:`gen.report.figures`, the page in ``page.html.j2``.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import jinja2

from gen.report.card import write_card
from gen.report.figures import draw
from gen.report.measures import TEXT_SAMPLE, engine_names, measure
from gen.storage import Location

PAGE = "report.html"
PLOTS = "report"


def write_report(root: str | Path | Location) -> Location:
    """Write ``DIR/report.html``, ``DIR/report/*.png`` and the card for the output dir ``root``
    (a path or URI); returns the page."""
    root = root if isinstance(root, Location) else Location.of(root)
    measures = measure(root)
    plots = draw(measures)
    for name, png in plots.items():
        root.child(PLOTS, f"{name}.png").write_bytes(png)
    environment = jinja2.Environment(loader=jinja2.PackageLoader("gen.report", ""), autoescape=True)
    spec = measures.manifest.get("spec", {})
    page = environment.get_template("page.html.j2").render(
        m=measures, manifest=measures.manifest, title=str(root), sample=TEXT_SAMPLE,
        model=", ".join(engine_names(spec)) or "unknown",
        written=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        plots={name: "data:image/png;base64," + base64.b64encode(png).decode() for name, png in plots.items()})
    page_file = root.child(PAGE)
    page_file.write_bytes(page.encode())
    write_card(measures)
    return page_file
