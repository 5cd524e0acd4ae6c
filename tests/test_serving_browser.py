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
def test_chat_page_streams_a_reply(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    model, tok = tiny_chat_model()
    app = create_app(model, tok, "tiny-chat", ServeConfig(max_tokens=60))
    with background_server(app) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 600})
            page.goto(url)
            page.wait_for_function(
                "document.getElementById('model').textContent.includes('tiny-chat')"
            )
            # Record every text the reply bubble shows, to see it grow piece by piece.
            page.evaluate(
                """() => {
                    window.seen = [];
                    new MutationObserver(() => {
                        const bubble = document.querySelector('.msg.assistant');
                        if (bubble) window.seen.push(bubble.textContent);
                    }).observe(document.getElementById('log'),
                               {childList: true, subtree: true, characterData: true});
                }"""
            )
            page.click("summary")  # open the settings: greedy replies
            page.fill("#temperature", "0")
            page.click("summary")
            page.fill("#input", "what is your name?")
            page.press("#input", "Enter")
            page.wait_for_selector(".msg.assistant:not(.streaming)", timeout=60_000)
            reply = page.text_content(".msg.assistant")
            seen = [s for s in page.evaluate("window.seen") if s]
            shot = Path(os.environ.get("SHOSHIN_SCREENSHOT_DIR", tmp_path)) / "chat-page.png"
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    assert reply and reply != "…" and not reply.startswith("error"), reply
    assert len(set(seen)) > 2, f"the reply should appear in pieces, saw {seen}"
    assert all(reply.startswith(s) for s in seen), "pieces should only ever extend the reply"
    assert shot.stat().st_size > 10_000
