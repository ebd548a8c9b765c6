"""The playground page driven in headless Chromium (Debian's `chromium`, through Playwright's
driver; no browser is downloaded by a test tool) against the real server on the tiny model.

The screenshot of the page after an answer is saved under the test's temporary folder
(`playground-answer.png`; its path is printed)."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.api.conftest import API_KEY, MODEL, wait_idle

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# What the headless browser needs on a machine without a network (see the platform notes).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium on this machine (install Debian's `chromium`; "
                             ".ci/run does so where it can)")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    # bypass_csp: Playwright's own waits evaluate strings, which the page's CSP forbids
    context = browser.new_context(viewport={"width": 1100, "height": 900}, bypass_csp=True)
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


@pytest.fixture
def slow_decode(service, monkeypatch):
    """40 ms a decode step: a stream lasts long enough to be stopped by a click."""
    executor = service.engine.executor
    fast = executor.launch_decode

    def launch_decode(tokens, positions, budgets=None):
        time.sleep(0.04 * (1 if budgets is None else int(budgets.max())))
        return fast(tokens, positions, budgets)

    monkeypatch.setattr(executor, "launch_decode", launch_decode)


def answer_text(page) -> str:
    return page.locator("#conversation .message.assistant .text").last.inner_text()


def test_chat_stream_stop_settings_and_errors(server, service, page, slow_decode, tmp_path):
    page.goto(server.url + "/")
    assert page.url.endswith("/playground")
    page.wait_for_function("document.querySelectorAll('#model option').length >= 4")
    options = page.locator("#model option").all_inner_texts()
    assert MODEL in options and any("attn-lora (LoRA on" in o for o in options)

    # a message, sent with the keyboard; streamed text appears while the answer runs
    page.fill("#system", "Answer briefly.")
    page.fill("#max_tokens", "200")
    page.fill("#input", "Tell me a story")
    page.press("#input", "Enter")
    page.wait_for_function(
        "document.querySelector('#conversation .assistant .text')?.textContent.length > 0")
    assert page.is_enabled("#stop") and page.is_disabled("#send")
    early = answer_text(page)

    # stop mid-stream: the request ends and the server frees its slot long before 200 tokens
    page.click("#stop")
    page.wait_for_selector("#conversation .assistant.stopped")
    assert page.is_enabled("#send")
    stopped_at = answer_text(page)
    assert len(stopped_at) >= len(early)
    assert wait_idle(service, timeout=5)["decoding"] == 0
    time.sleep(0.3)
    assert answer_text(page) == stopped_at  # nothing arrives after the stop

    # a full answer: stats of the answer are shown
    page.fill("#max_tokens", "12")
    page.fill("#input", "And another one")
    page.click("#send")
    page.wait_for_function("document.querySelector('#stats').textContent.includes('tok/s')")
    stats = page.inner_text("#stats")
    assert re.search(r"TTFT \d+ ms · 12 tokens · [\d.]+ tok/s", stats), stats
    assert len(page.locator("#conversation .message").all()) == 4
    screenshot = tmp_path / "playground-answer.png"
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"screenshot: {screenshot}")
    assert screenshot.stat().st_size > 10_000

    # a changed parameter shows in the copied curl command and in the Python snippet
    page.fill("#temperature", "0.35")
    page.fill("#top_k", "7")
    page.click("#copy-curl")
    page.wait_for_function("document.querySelector('#status').textContent.includes('copied')")
    curl = page.evaluate("navigator.clipboard.readText()")
    python = page.inner_text("#python")
    assert '"temperature": 0.35' in curl and '"top_k": 7' in curl
    assert "temperature=0.35" in python and 'extra_body={"top_k": 7}' in python
    assert "/v1/chat/completions" in curl and '"Answer briefly."' in curl
    page.select_option("#route", "workers-ai")
    assert f"/ai/run/{MODEL}" in page.inner_text("#curl")

    # an invalid value: the API's own words appear in the page
    page.fill("#top_k", "500")
    page.fill("#input", "Hello")
    page.click("#send")
    page.wait_for_selector("#error:not([hidden])")
    expected = httpx.post(f"{server.url}/ai/run/{MODEL}", json={
        "messages": [{"role": "user", "content": "Hello"}], "top_k": 500}).json()
    assert page.inner_text("#error") == expected["errors"][0]["message"]
    assert "top_k" in page.inner_text("#error")
    assert len(page.locator("#conversation .message").all()) == 4  # the failed turn is gone


def test_raw_prompt_over_workers_ai_with_an_adapter(server, page):
    page.goto(server.url + "/playground")
    page.wait_for_function("document.querySelectorAll('#model option').length >= 4")
    page.select_option("#model", "attn-lora")
    page.select_option("#route", "workers-ai")
    page.check("#raw")
    page.fill("#max_tokens", "5")
    page.fill("#input", "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n")
    curl = page.inner_text("#curl")
    assert '"raw": true' in curl and '"lora": "attn-lora"' in curl
    assert f"/ai/run/{MODEL}" in curl
    page.click("#send")
    page.wait_for_function("document.querySelector('#stats').textContent.includes('tok/s')")
    assert "5 tokens" in page.inner_text("#stats")


def test_the_page_asks_for_the_api_key_and_keeps_it_in_the_session_only(secured, page):
    page.goto(secured.url + "/playground")  # the page itself needs no key
    page.wait_for_selector("#key-panel:not([hidden])")
    page.fill("#api-key", "wrong-key")
    page.click("#save-key")
    page.wait_for_selector("#error:not([hidden])")
    assert "Incorrect API key" in page.inner_text("#error")
    page.fill("#api-key", API_KEY)
    page.press("#api-key", "Enter")
    page.wait_for_selector("#key-panel", state="hidden")
    page.wait_for_function("document.querySelectorAll('#model option').length >= 1")
    page.fill("#max_tokens", "4")
    page.fill("#input", "Hi")
    page.press("#input", "Enter")
    page.wait_for_function("document.querySelector('#stats').textContent.includes('tok/s')")
    assert page.evaluate("localStorage.length") == 0
    assert page.evaluate("sessionStorage.getItem('gemma-server-api-key')") == API_KEY
    assert API_KEY not in page.inner_text("#curl") + page.inner_text("#python")


def test_the_page_is_usable_in_a_narrow_window(server, browser):
    context = browser.new_context(viewport={"width": 380, "height": 800}, bypass_csp=True)
    page = context.new_page()
    try:
        page.goto(server.url + "/playground")
        page.wait_for_function("document.querySelectorAll('#model option').length >= 1")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 380  # no sideways scrolling
        for control in ("#input", "#send", "#temperature", "#model"):
            box = page.locator(control).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 380
        labels = page.evaluate(
            "[...document.querySelectorAll('input, textarea, select')]"
            ".filter(e => !e.labels || e.labels.length === 0).map(e => e.id)")
        assert labels == []  # every control is labelled
    finally:
        context.close()


def test_the_page_loads_nothing_from_elsewhere(server):
    reply = httpx.get(f"{server.url}/playground")
    assert reply.status_code == 200 and "default-src 'self'" in \
        reply.headers["content-security-policy"]
    assert "http://" not in reply.text and "https://" not in reply.text
    for asset in ("playground.js", "playground.css"):
        static = httpx.get(f"{server.url}/playground/static/{asset}")
        assert static.status_code == 200 and "https://" not in static.text
