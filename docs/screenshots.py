"""Screenshots of a run's report.html for the README: each plot whose title starts with one of TITLES, rendered in
headless Chromium (Debian's package, driven by Playwright) and saved as docs/screenshots/<name>.png.

    python docs/screenshots.py RUN_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
# Flags for a machine without network: without the background-networking ones Chromium keeps dialling out.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TITLES = {
    "policy-bars": "Pick (trial",
    "pareto-heatmap": "Pareto models: per-layer sparsity",
    "history": "Optimisation history: accuracy loss",
    "importances": "Hyper-parameter importance for accuracy loss",
}
OUT = Path(__file__).parent / "screenshots"


def main(run_dir: Path) -> None:
    OUT.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto((run_dir / "report.html").resolve().as_uri())
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length > 0")
        for name, prefix in TITLES.items():
            index = page.evaluate(
                "prefix => [...document.querySelectorAll('.js-plotly-plot')]"
                ".findIndex(el => (el.layout.title.text || '').startsWith(prefix))", prefix)
            if index < 0:
                print(f"no plot titled {prefix!r} in {run_dir / 'report.html'}", file=sys.stderr)
                continue
            page.locator(".js-plotly-plot").nth(index).screenshot(path=str(OUT / f"{name}.png"))
            print(OUT / f"{name}.png")
        browser.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
