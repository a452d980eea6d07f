"""report.html in a real browser: Debian's headless Chromium, driven by Playwright, opens a real digits run's report
without a console error, and its cost/accuracy plot draws one point per trial that has both."""
from __future__ import annotations

from pathlib import Path

import pytest

from reports.records import load_records

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package (make browser); Playwright's own browser download is not used
# No network here: without the background-networking flags Chromium's own connections fail and log console errors.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PLOT_TITLE = "vs validation accuracy"  # the cost/accuracy figure, found by its title: section ids may change
TRIAL_TRACES = ("search trials", "warm-start baselines", "stopped early")  # one point per trial, no repeats
RUN = ["--workload", "digits-cnn", "--budget", "0.5", "--threads", "1", "--finetune-epochs", "0.5",
       "--final-epochs", "0", "--no-sensitivity", "--trials", "4"]

pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} is missing: `make browser` installs "
                                "Debian's chromium package (as root or with passwordless sudo)")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[dev]'")

# The figure whose title contains `title`: per trace, its points in the data and the markers its SVG draws; null
# until plotly has drawn every scatter trace of it, {found: false} where the page has no such figure.
COUNT_POINTS = """title => {
    const titleOf = el => { const t = (el.layout || {}).title; return typeof t === 'string' ? t : (t || {}).text; };
    const figure = [...document.querySelectorAll('.js-plotly-plot')].find(el => (titleOf(el) || '').includes(title));
    if (!figure) return {found: false};
    const groups = figure.querySelectorAll('.scatterlayer .trace');
    if (!figure._fullData || groups.length < figure._fullData.filter(t => t.type === 'scatter').length) return null;
    const data = {}, drawn = {};
    for (const trace of figure.data) {
        data[trace.name] = Array.from(trace.x).filter((x, i) => x != null && trace.y[i] != null).length;
    }
    for (const group of groups) drawn[group.__data__[0].trace.name] = group.querySelectorAll('path.point').length;
    return {found: true, data, drawn};
}"""


def plotted_trials(run_dir: Path) -> int:
    """Trials of the study with both a cost ratio and a validation accuracy: each is one point of the plot."""
    records = load_records(f"sqlite:///{run_dir / 'study.db'}")
    return sum(t.cost_ratio is not None and t.accuracy is not None for t in records.trials)


def open_report(page: Path) -> tuple[dict, list[str]]:
    """Open the page in headless Chromium: the point counts of its cost/accuracy figure and every console error or
    uncaught page error, as text."""
    errors: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page()
            tab.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            tab.on("pageerror", lambda error: errors.append(str(error)))
            tab.goto(page.as_uri(), wait_until="load")
            counts = tab.wait_for_function(COUNT_POINTS, arg=PLOT_TITLE, timeout=15_000).json_value()
        finally:
            browser.close()
    return counts, errors


def test_report_renders_every_trial_without_console_errors(run_main, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    code, stderr = run_main([*RUN, "--out", str(run_dir)])
    assert code == 0, stderr[-3000:]

    counts, errors = open_report(run_dir / "report.html")

    assert errors == []
    assert counts["found"], f"no plotly figure titled '... {PLOT_TITLE}' in report.html"
    expected = plotted_trials(run_dir)
    trial_traces = [name for name in TRIAL_TRACES if name in counts["data"]]
    assert expected >= 3 and "warm-start baselines" in trial_traces, counts  # two baselines come first
    assert sum(counts["data"][name] for name in trial_traces) == expected, counts
    assert sum(counts["drawn"].get(name, 0) for name in trial_traces) == expected, counts
