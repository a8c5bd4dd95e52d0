"""The run report in a real browser: headless Chromium (Debian package) driven by Playwright.

Every request that is not to the report file itself is blocked and recorded: the page must make
none. No console error, every plotly figure and circuitsvis view draws, and clicking a head
thumbnail in the attention view shows that head."""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _require_browser():
    reason = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "Playwright for Python is not installed (pip install playwright)"
    if reason is None and CHROMIUM is None:
        reason = "headless Chromium is absent (apt-get install chromium)"
    if reason is not None:
        if os.environ.get("MEMLENS_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser tests required here but {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def page(tiny_run):
    _require_browser()
    from playwright.sync_api import sync_playwright

    report = tiny_run / "report.html"
    blocked, errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1280, "height": 900})

        def route(r):
            if r.request.url.startswith("file://") and r.request.url.split("#")[0].endswith("report.html"):
                r.continue_()
            else:
                blocked.append(r.request.url)
                r.abort()

        pg.route("**/*", route)
        pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(report.as_uri(), wait_until="load")
        pg.wait_for_timeout(1500)
        yield pg, blocked, errors
        browser.close()


def test_no_request_leaves_the_page(page):
    _, blocked, _ = page
    assert blocked == []


def test_no_console_error(page):
    _, _, errors = page
    assert errors == []


def test_every_plotly_figure_draws(page):
    pg, _, _ = page
    figures = pg.locator(".plotly-figure .js-plotly-plot")
    assert figures.count() >= 8
    for i in range(figures.count()):
        fig = figures.nth(i)
        fig.scroll_into_view_if_needed()
        assert fig.locator("svg.main-svg").count() > 0, f"figure {i} has no SVG"
        box = fig.bounding_box()
        assert box is not None and box["width"] > 100 and box["height"] > 100


def test_every_circuitsvis_view_draws(page):
    pg, _, _ = page
    views = pg.locator(".memlens-cv")
    assert views.count() >= 4
    for i in range(views.count()):
        v = views.nth(i)
        assert v.evaluate("el => el.childElementCount") > 0, f"view {i} ({v.get_attribute('data-component')}) is empty"
        assert v.inner_text().strip() != ""


def test_attention_canvases_are_painted(page):
    pg, _, _ = page
    view = pg.locator('.memlens-cv[data-component="AttentionHeads"]').first
    view.scroll_into_view_if_needed()
    painted = view.evaluate("""el => [...el.querySelectorAll('canvas')].map(c => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; })""")
    assert len(painted) >= 2 and all(n > 0 for n in painted)


def test_clicking_a_head_shows_it(page):
    pg, _, _ = page
    view = pg.locator('.memlens-cv[data-component="AttentionHeads"]').first
    view.scroll_into_view_if_needed()
    names = [t.strip() for t in view.locator("h4").all_inner_texts()]  # the thumbnails' labels
    shown = [ln.strip() for ln in view.inner_text().split("\n") if ln.strip().endswith("Zoomed")]
    assert len(shown) == 1, view.inner_text()
    target = next(n for n in names if f"{n} Zoomed" != shown[0])
    view.locator("h4", has_text=target).first.click()
    pg.mouse.move(0, 0)  # leave the thumbnails: a click locks the head, a hover alone would not
    pg.wait_for_timeout(300)
    now = [ln.strip() for ln in view.inner_text().split("\n") if ln.strip().endswith("Zoomed")]
    assert now == [f"{target} Zoomed"]
