"""The page `dvc plots show` and `dvc plots diff` write draws every plot offline.

The page opens in a real headless Chromium (Debian's `chromium` package, driven by Playwright)
that refuses every request that is not for a local file, as on a machine without a network:
Vega, Vega-Lite and Vega-Embed must come inlined from .dvc/plots/page.html, the project's
`plots.html_template`, not from DVC's default CDN tags.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import OFFLINE, TINY, commit_all, copy_project, run

# Debian's name for the browser, then Ubuntu's and Fedora's.
CHROMIUM_NAMES = ("chromium", "chromium-browser")
# Per Vega plot, whether it drew: a canvas that differs from a blank one of its size, or the
# number of marks in an SVG.
DRAWN = """() => [...document.querySelectorAll('.vega-embed')].map(plot => {
    const canvas = plot.querySelector('canvas');
    if (canvas) {
        const blank = document.createElement('canvas');
        [blank.width, blank.height] = [canvas.width, canvas.height];
        return canvas.width > 0 && canvas.toDataURL() !== blank.toDataURL() ? 1 : 0;
    }
    return plot.querySelectorAll('svg .mark-symbol path, svg .mark-rect path, svg .mark-line path')
        .length;
})"""
IMAGES = "() => [...document.images].map(image => image.complete ? image.naturalWidth : 0)"


def chromium() -> str:
    """The browser's path; a clear failure (never a skip) when the machine has none."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(
        "no Chromium on PATH: this test opens the plots page in a real browser. Install the OS "
        "package (Debian: apt-get install chromium), as .ci/run does."
    )


def open_offline(page_file: Path, *, expected_vega: int, screenshot: Path | None = None) -> dict:
    """Open `page_file` in headless Chromium with every non-file request aborted; what it drew.

    Waits (up to 30 s) until `expected_vega` Vega plots have drawn. Returns whether each Vega
    plot drew (see DRAWN), the width of every image, the console's errors (with the page's
    uncaught exceptions) and warnings, and the URLs the page tried to fetch from the network.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    seen: dict[str, list] = {"errors": [], "warnings": [], "network": []}

    def only_files(route) -> None:
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            seen["network"].append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium())
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.route("**/*", only_files)
            page.on(
                "console",
                lambda message: (
                    seen[f"{message.type}s"].append(message.text)
                    if message.type in ("error", "warning")
                    else None
                ),
            )
            page.on("pageerror", lambda error: seen["errors"].append(str(error)))
            page.goto(page_file.as_uri(), wait_until="load")
            with contextlib.suppress(PlaywrightTimeout):  # the caller sees what was drawn
                page.wait_for_function(
                    f"(drawn => drawn.length >= {expected_vega} && drawn.every(n => n > 0))"
                    f"(({DRAWN})())",
                    timeout=30_000,
                )
            drawn, images = page.evaluate(DRAWN), page.evaluate(IMAGES)
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"vega": drawn, "images": images, **seen}


def reported_plots(output: str) -> tuple[int, int]:
    """How many Vega plots and images a `dvc plots ... --json` output lists."""
    kinds = [entry["type"] for entries in json.loads(output)["data"].values() for entry in entries]
    return kinds.count("vega"), kinds.count("image")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The tiny offline pipeline run twice: committed at lr=1e-4, then lr=1e-3 in the workspace."""
    chromium()  # no browser: fail now, not after minutes of pipeline
    root = copy_project(tmp_path_factory.mktemp("plots"))
    run(["dvc", "exp", "run", *OFFLINE, *TINY, "-S", "lr=1e-4"], root)
    commit_all(root, "first results")
    run(["dvc", "exp", "run", *OFFLINE, *TINY, "-S", "lr=1e-3"], root)
    return root


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [["dvc", "plots", "show"], ["dvc", "plots", "diff", "HEAD"]],
    ids=["show", "diff"],
)
def test_plots_page_draws_every_plot_offline(project, tmp_path, command):
    vega, images = reported_plots(run([*command, "--json"], project).stdout)
    # the pictures: evaluate's samples and reliability diagram, analyze's top losses, two
    # Grad-CAM grids, label issues; a diff shows each twice (workspace and HEAD)
    assert (vega, images) == ((5, 6) if command[2] == "show" else (5, 12))

    run([*command, "-o", str(tmp_path / "page")], project)
    seen = open_offline(tmp_path / "page" / "index.html", expected_vega=vega)

    assert seen["network"] == [], "the page asked the network for scripts"
    assert seen["errors"] == []
    # Vega's own log lines ("WARN Infinite extent for field ...") come from DVC's templates (an
    # empty hover layer); any other warning, such as Vega-Embed's spec/library version mismatch,
    # would be ours.
    assert [warning for warning in seen["warnings"] if not warning.startswith("WARN ")] == []
    assert len(seen["vega"]) == vega and all(seen["vega"]), f"Vega plots drawn: {seen['vega']}"
    assert len(seen["images"]) == images and all(seen["images"]), f"images: {seen['images']}"
