"""The web chat page as a chat app, in a real browser (Debian's chromium driven by Playwright, a real
server on loopback): Markdown rendered as elements and never as the model's HTML, conversations that
survive a reload and can be switched and deleted, regenerate, copy and edit, settings explained by
the API schema in a panel over the chat, and a layout that works on a 390-px-wide phone.

Screenshots land in $SHOSHIN_SCREENSHOT_DIR (else the test's tmp folder) for a person to look at.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from test_serving_browser import CHROMIUM, CHROMIUM_ARGS, pytestmark  # noqa: F401 (skip marker)

from shoshin.data.tokenizers import CharTokenizer
from shoshin.serving import ServeConfig, background_server, create_app

PAGE = Path(__file__).resolve().parent.parent / "shoshin" / "serving" / "static" / "index.html"
DESKTOP = {"width": 1200, "height": 800}
PHONE = {"width": 390, "height": 844}
REPLY = "d" * 30  # what the looping model says greedily, up to the server's token limit

# A stored reply full of Markdown, and of HTML that must stay text.
MARKDOWN = """# Plan

Some **bold**, some *emphasis* and `inline code`.

- first item
- second with a [good link](https://example.com/docs)
- [bad link](javascript:alert(1)) stays text

1. one
2. two

```python
print("<b>not bold</b>")
```

<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">
> quoted"""


@pytest.fixture
def browser_page(tmp_path):
    """A function opening the chat page of a real server at a viewport size."""
    from test_sampling import looping_gpt

    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    app = create_app(
        looping_gpt(), CharTokenizer(list("abcdefghij"), []), "loop", ServeConfig(max_tokens=30)
    )
    with background_server(app) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=DESKTOP)
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=url)

        def open_page(viewport: dict):
            page = context.new_page()
            page.set_viewport_size(viewport)
            page.on("dialog", lambda dialog: dialog.accept())  # "delete this conversation?"
            page.goto(url)
            page.wait_for_function("document.getElementById('model').textContent.includes('loop')")
            page.wait_for_selector("#temperature", state="attached")
            return page

        try:
            yield open_page, url
        finally:
            browser.close()


def screenshot(page, tmp_path: Path, name: str) -> Path:
    shot = Path(os.environ.get("SHOSHIN_SCREENSHOT_DIR", tmp_path)) / f"{name}.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 5_000
    return shot


def send(page, text: str) -> None:
    """Type `text`, press Enter, wait until the reply has finished streaming."""
    page.fill("#input", text)
    page.press("#input", "Enter")
    wait_idle(page)


def wait_idle(page) -> None:
    page.wait_for_function(
        "!document.body.classList.contains('busy') && !document.querySelector('.streaming')",
        timeout=60_000,
    )


def texts(page, selector: str) -> list[str]:
    return page.locator(selector).all_text_contents()


def test_the_page_names_no_external_url():
    page = PAGE.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert not re.search(r"""url\(\s*["']?(https?:)?//""", page)
    assert "innerHTML" not in page and "insertAdjacentHTML" not in page and "outerHTML" not in page


@pytest.mark.slow
@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_markdown_is_rendered_as_elements_and_html_stays_text(browser_page, tmp_path, viewport):
    open_page, _ = browser_page
    page = open_page(viewport)
    stored = [
        {
            "id": "md",
            "title": "",
            "updated": 1,
            "messages": [
                {"role": "user", "content": "show me <b>markdown</b>"},
                {"role": "assistant", "content": MARKDOWN},
            ],
        }
    ]
    page.evaluate(
        "stored => { localStorage.setItem('shoshin-conversations', JSON.stringify(stored));"
        " localStorage.setItem('shoshin-current', 'md'); }",
        stored,
    )
    page.reload()
    page.wait_for_selector(".msg.assistant h1")
    reply = ".msg.assistant"
    assert texts(page, f"{reply} h1") == ["Plan"]
    assert texts(page, f"{reply} strong") == ["bold"]
    assert texts(page, f"{reply} em") == ["emphasis"]
    assert "inline code" in texts(page, f"{reply} p code")
    assert texts(page, f"{reply} ul > li")[0] == "first item"
    assert texts(page, f"{reply} ol > li") == ["one", "two"]
    assert texts(page, f"{reply} pre code") == ['print("<b>not bold</b>")']
    assert texts(page, f"{reply} blockquote") == ["quoted"]
    links = page.eval_on_selector_all(f"{reply} a", "as => as.map(a => [a.href, a.rel, a.text])")
    assert links == [["https://example.com/docs", "noopener noreferrer nofollow", "good link"]]
    # The model's HTML is text on the screen: no element made of it, nothing of it ran.
    assert page.locator(f"{reply} script, {reply} img, {reply} b").count() == 0
    shown = page.locator(reply).text_content()
    assert (
        "<script>window.pwned = 1</script>" in shown and "[bad link](javascript:alert(1))" in shown
    )
    assert page.evaluate("window.pwned") is None
    assert texts(page, ".msg.user") == ["show me <b>markdown</b>"]  # the user's text is text too
    screenshot(page, tmp_path, f"chat-markdown-{viewport['width']}")


# Whole pieces of a reply as single tokens of a char tokenizer (its decode joins them): a model can
# then stream Markdown and HTML token by token. ":" ends the plain-text chat prompt ("Assistant:").
PIECES = [
    "Some **bold** and `code` ",
    "<script>window.pwned = 1</script>",
    ' [x](javascript:alert(1)) <img src=x onerror="window.pwned = 2">',
]


def scripted_gpt(tok: CharTokenizer, order: list[str]):
    """A real GPT whose greedy next token depends only on the current one: each of `order`'s
    tokens is followed by the next, the last by <|endoftext|>. Attention and MLP are zeroed, so the
    final LayerNorm sees the current token's one-hot embedding and the LM head maps it on."""
    import torch

    from shoshin.config import ModelConfig
    from shoshin.models import build_model

    vocab = tok.vocab_size
    config = ModelConfig(
        n_layer=1, n_head=1, n_embd=vocab + 2, block_size=64, vocab_size=vocab, tie_embeddings=False
    )
    model = build_model(config).eval()
    ids = [tok.stoi[piece] for piece in order] + [tok.special_tokens["<|endoftext|>"]]
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.ln_f.weight.fill_(1.0)
        for t in range(vocab):
            model.wte.weight[t, t] = 1.0
        for current, following in zip(ids[:-1], ids[1:], strict=True):
            model.lm_head.weight[following, current] = 10.0
    return model


@pytest.mark.slow
def test_a_streamed_reply_renders_markdown_and_its_html_stays_text(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    tok = CharTokenizer(["a", ":", *PIECES], ["<|endoftext|>"])
    app = create_app(scripted_gpt(tok, [":", *PIECES]), tok, "scripted", ServeConfig())
    with background_server(app) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=PHONE)
            page.goto(url)
            page.wait_for_selector("#temperature", state="attached")
            page.click("#settings-toggle")
            page.fill("#temperature", "0")
            page.click("#settings-close")
            send(page, "a")
            reply = ".msg.assistant"
            shown = page.locator(reply).text_content()
            strong, code = texts(page, f"{reply} strong"), texts(page, f"{reply} code")
            made = page.locator(f"{reply} script, {reply} img, {reply} a").count()
            pwned = page.evaluate("window.pwned")
            screenshot(page, tmp_path, "chat-streamed-390")
        finally:
            browser.close()
    assert shown.startswith("Some bold and code <script>window.pwned = 1</script>"), shown
    assert strong == ["bold"] and code == ["code"]
    assert made == 0 and pwned is None
    assert "[x](javascript:alert(1))" in shown


@pytest.mark.slow
def test_conversations_regenerate_copy_and_edit(browser_page, tmp_path):
    open_page, _ = browser_page
    page = open_page(DESKTOP)
    requests = []
    page.on("request", lambda r: r.url.endswith("/v1/chat/completions") and requests.append(r))
    page.click("#settings-toggle")
    page.fill("#temperature", "0")
    page.dispatch_event("#temperature", "change")
    page.click("#settings-close")
    send(page, "hello")
    assert texts(page, ".msg.user") == ["hello"]
    assert texts(page, ".msg.assistant p") == [REPLY]  # a reply is Markdown: a paragraph

    page.reload()  # the conversation, and the setting, survive a reload
    page.wait_for_selector(".msg.assistant")
    assert texts(page, ".msg.user") == ["hello"] and texts(page, ".msg.assistant") == [REPLY]
    assert page.input_value("#temperature") == "0"
    assert texts(page, "#conversations li .open") == ["hello"]

    page.click(".turn.assistant [data-action=regenerate]")
    wait_idle(page)
    assert len(requests) == 2 and texts(page, ".msg.assistant") == [REPLY]  # replaced, not added
    body = json.loads(requests[-1].post_data)
    assert body["messages"] == [{"role": "user", "content": "hello"}]
    assert body["temperature"] == 0

    page.click(".turn.assistant [data-action=copy]")
    assert page.evaluate("navigator.clipboard.readText()") == REPLY

    page.click(".turn.user [data-action=edit]")
    page.fill(".turn.editing textarea", "hello again")
    page.click("text=Save & send")
    wait_idle(page)
    assert texts(page, ".msg.user") == ["hello again"] and len(requests) == 3
    assert json.loads(requests[-1].post_data)["messages"][-1]["content"] == "hello again"

    page.click("#new-chat")
    assert page.locator(".msg").count() == 0
    send(page, "second chat")
    assert texts(page, "#conversations li .open") == ["second chat", "hello again"]
    page.click("#conversations li >> text=hello again")
    assert texts(page, ".msg.user") == ["hello again"]
    screenshot(page, tmp_path, "chat-conversations-1200")

    page.click("#conversations li.current .delete")
    assert texts(page, "#conversations li .open") == ["second chat"]
    page.reload()
    page.wait_for_selector(".msg.user")
    assert texts(page, "#conversations li .open") == ["second chat"]
    assert texts(page, ".msg.user") == ["second chat"]


@pytest.mark.slow
@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_settings_explain_themselves_over_the_chat_and_the_input_fits(
    browser_page, tmp_path, viewport
):
    open_page, url = browser_page
    page = open_page(viewport)
    send(page, "hi")
    schema = page.evaluate("fetch('/openapi.json').then(r => r.json())")
    props = schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    described = {n: p["description"] for n, p in props.items() if p.get("x-shoshin-setting")}
    assert described  # the schema marks the sampling settings

    log_box = page.locator("#log").bounding_box()
    page.click("#settings-toggle")
    panel = page.locator("#settings-panel")
    assert panel.is_visible()
    for name, description in described.items():
        box = f"#{name.replace('_', '-')}"
        help_id = page.get_attribute(box, "aria-describedby")
        help_text = page.locator(f"#{help_id}").text_content()
        assert help_text.startswith(description), (name, help_text)
        assert page.get_attribute(box, "title") == help_text
    assert page.locator("#temperature-help").is_visible()
    # The panel lies over the chat: the conversation keeps its place and size.
    assert page.locator("#log").bounding_box() == log_box
    screenshot(page, tmp_path, f"chat-settings-{viewport['width']}")
    page.keyboard.press("Escape")
    assert not panel.is_visible()

    width = viewport["width"]
    field = page.locator("#input").bounding_box()
    assert field["width"] >= 0.6 * width, field  # room to type, even at 390 px
    assert field["x"] >= 0 and field["x"] + field["width"] <= width
    send_button = page.locator("#send").bounding_box()
    assert send_button["x"] + send_button["width"] <= width  # nothing pushed off the screen
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    if width < 720:  # on a phone the conversation list is one tap away, not beside the chat
        assert not page.locator("#new-chat").is_visible()
        page.click("#menu")
        page.wait_for_timeout(300)
        assert page.locator("#new-chat").is_visible()
        screenshot(page, tmp_path, "chat-sidebar-390")
        page.click("#conversations li >> text=hi")
        page.wait_for_timeout(300)
        assert not page.locator("#new-chat").is_visible()
    screenshot(page, tmp_path, f"chat-{width}")
