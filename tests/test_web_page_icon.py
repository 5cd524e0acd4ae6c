"""The web chat page carries its own icon: a browser asks the server for nothing that is missing."""

from __future__ import annotations

import pytest
from test_serving_browser import CHROMIUM, CHROMIUM_ARGS, pytestmark  # noqa: F401 (skip marker)

from shoshin.data.tokenizers import CharTokenizer
from shoshin.serving import ServeConfig, background_server, create_app


@pytest.mark.slow
def test_page_loads_with_an_inline_icon_and_no_failed_request():
    from test_sampling import looping_gpt

    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    app = create_app(looping_gpt(), CharTokenizer(list("abcdefghij"), []), "loop", ServeConfig())
    with background_server(app) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            failed, errors = [], []
            page.on("response", lambda r: r.status >= 400 and failed.append((r.status, r.url)))
            page.on("requestfailed", lambda r: failed.append(("failed", r.url)))
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.goto(url)
            page.wait_for_function("document.getElementById('model').textContent.includes('loop')")
            href = page.get_attribute("link[rel=icon]", "href")
            assert href.startswith("data:image/svg+xml;base64,")  # no URL in the page
            # The icon is a picture the browser can draw, not just a string.
            width = page.evaluate(
                """href => new Promise(resolve => {
                    const img = new Image();
                    img.onload = () => resolve(img.naturalWidth);
                    img.onerror = () => resolve(0);
                    img.src = href;
                })""",
                href,
            )
            assert width > 0
            page.wait_for_timeout(500)  # a favicon request, if any, comes after the load
            assert failed == [] and errors == []
        finally:
            browser.close()
