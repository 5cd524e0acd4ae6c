"""The web chat page in a real browser: Playwright drives Debian's chromium against a real server."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from serving_tiny import one_torch_thread, tiny_chat_model  # noqa: F401

from shoshin.serving import ServeConfig, background_server, create_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason="no chromium binary (install Debian's `chromium` package: apt-get install chromium)",
)


@pytest.mark.slow
def test_chat_page_streams_a_reply_with_the_settings_it_builds_from_the_schema(tmp_path):
    from test_sampling import looping_gpt

    from shoshin.data.tokenizers import CharTokenizer

    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    model = looping_gpt()  # greedy replies repeat "d" until the token limit
    tok = CharTokenizer(list("abcdefghij"), [])
    app = create_app(model, tok, "loop", ServeConfig(max_tokens=30))
    with background_server(app) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 700})
            page.goto(url)
            page.wait_for_function("document.getElementById('model').textContent.includes('loop')")
            # Record every text the reply bubbles show, to see them grow piece by piece.
            page.evaluate(
                """() => {
                    window.seen = [];
                    new MutationObserver(() => {
                        const bubbles = document.querySelectorAll('.msg.assistant');
                        if (bubbles.length) window.seen.push(bubbles[bubbles.length - 1].textContent);
                    }).observe(document.getElementById('log'),
                               {childList: true, subtree: true, characterData: true});
                }"""
            )

            def ask(text: str, **settings: str) -> str:
                page.click("#settings-toggle")
                for name, value in settings.items():
                    page.fill(f"#{name}", value)
                page.click("#settings-close")
                page.fill("#input", text)
                page.press("#input", "Enter")
                page.wait_for_function(
                    f"document.querySelectorAll('.msg.assistant:not(.streaming)').length == {ask.n}",
                    timeout=60_000,
                )
                ask.n += 1
                return page.locator(".msg.assistant").last.text_content()

            ask.n = 1
            # Every sampling setting of the API is on the page, built from /openapi.json.
            page.wait_for_selector("#frequency-penalty", state="attached")
            for name in ("temperature", "top-p", "top-k", "min-p", "presence-penalty",
                         "repetition-penalty", "logit-bias"):  # fmt: skip
                assert page.locator(f"#{name}").count() == 1, name
            looped = ask("hello", temperature="0")
            seen = [s for s in page.evaluate("window.seen") if s]
            biased = ask("again", **{"logit-bias": "3:-100"})
            penalised = ask("more", **{"logit-bias": "", "frequency-penalty": "0.5"})
            shot = Path(os.environ.get("SHOSHIN_SCREENSHOT_DIR", tmp_path)) / "chat-page.png"
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    assert looped == "d" * 30, looped
    assert len(set(seen)) > 2, f"the reply should appear in pieces, saw {seen}"
    assert all(looped.startswith(s) for s in seen), "pieces should only ever extend the reply"
    assert "d" not in biased and len(biased) == 30, (
        biased
    )  # the page's logit bias reached the model
    assert penalised != looped and penalised.count("d") < 20, penalised
    assert shot.stat().st_size > 10_000
