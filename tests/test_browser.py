"""A real browser against a real server: headless Debian Chromium driven by Playwright.

The server is `inkloop serve`'s app (assistant.app.cli.serve.build_app: the REST API with the Gradio UI
mounted at "/"), run by uvicorn in a thread on 127.0.0.1 and a free port, with the tiny random model. The test types a
draft, asks for suggestions, rates one with 👍 and stars, accepts one, reloads the page, and checks
the database (a second Store on the same file) for every row the clicks should have written.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = Path("/tmp/inkloop-ui.png")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                       "(apt-get install -y chromium; CI installs it)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tiny_services, monkeypatch):
    """(base_url, services): uvicorn serving FastAPI + the mounted UI in a background thread."""
    import uvicorn

    from assistant.app.cli.serve import build_app

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    app = build_app(tiny_services)  # what `inkloop serve` runs: REST API + the UI mounted at "/"
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, name="inkloop-test-server", daemon=True)
    th.start()
    deadline = time.time() + 30
    while not srv.started:
        if time.time() > deadline or not th.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/", tiny_services
    srv.should_exit = True
    th.join(timeout=10)


def test_type_suggest_rate_accept_reload(server):
    from playwright.sync_api import expect, sync_playwright

    from storage.store import Store

    url, services = server
    expect.set_options(timeout=60_000)  # the default 5 s is short for generation on 2 busy cores
    draft_text = "The lighthouse keeper had not spoken to anyone in eleven days."
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.set_default_timeout(60_000)
            page.goto(url)
            draft = page.locator("#draft textarea")
            expect(draft).to_be_editable()  # read-only until the saved draft has loaded

            # type a draft; it is autosaved
            draft.fill(draft_text)
            expect(page.locator("#draft-status")).to_contain_text("draft saved")

            # fewer tokens and K=2 keep the tiny model fast
            page.locator("#k input[type=number]").fill("2")
            page.locator("#k input[type=number]").press("Enter")
            page.locator("#max-new-tokens input[type=number]").fill("16")
            page.locator("#max-new-tokens input[type=number]").press("Enter")

            page.locator("#suggest-continue").click()
            expect(page.locator("#suggest-info")).to_contain_text("request #")
            expect(page.locator("#cand-0")).to_be_visible()
            expect(page.locator("#cand-1")).to_be_visible()
            expect(page.locator("#cand-2")).to_be_hidden()
            expect(page.locator("#suggest-info")).to_contain_text("policy v0")
            first_text = page.locator("#cand-text-0 textarea").input_value()

            page.locator("#cand-up-0").click()
            expect(page.locator("#cand-msg-0")).to_contain_text("saved 👍")
            page.locator("#cand-stars-1").get_by_text("4", exact=True).click()
            expect(page.locator("#cand-msg-1")).to_contain_text("★★★★")
            page.locator("#cand-accept-0").click()
            expect(page.locator("#cand-msg-0")).to_contain_text("accepted")
            expect(draft).to_have_value(f"{draft_text} {first_text}" if first_text else draft_text)
            page.screenshot(path=str(SCREENSHOT), full_page=True)

            # a reload restores the draft (with the accepted text) from the store
            page.reload()
            expect(page.locator("#draft textarea")).to_be_editable()
            expect(page.locator("#draft textarea")).to_have_value(
                f"{draft_text} {first_text}" if first_text else draft_text
            )

            # Restyle: "imitate this sample" reveals the sample box; picking a sample voice fills it
            page.get_by_role("tab", name="Restyle").click()
            expect(page.locator("#sample textarea")).to_be_hidden()
            page.locator("#take-paragraph").click()
            expect(page.locator("#passage textarea")).to_have_value(f"{draft_text} {first_text}".strip())
            page.locator("#style input").click()
            page.get_by_role("option", name="imitate this sample").click()
            expect(page.locator("#sample textarea")).to_be_visible()
            page.locator("#sample-pick input").click()
            page.get_by_role("option", name="Nature journal").click()
            expect(page.locator("#sample textarea")).to_have_value(re.compile("^Morning, the third of May"))
            page.locator("#suggest-restyle").click()
            expect(page.locator("#suggest-info")).to_contain_text("restyle suggestion")
            page.locator("#cand-down-0").click()
            expect(page.locator("#cand-msg-0")).to_contain_text("saved 👎")
            page.locator("#rank-text input").fill("2 1")
            page.locator("#rank-save").click()
            expect(page.locator("#rank-msg")).to_contain_text("saved ranking 2 > 1")
        finally:
            browser.close()

    other = Store(services.store.path)  # a second connection on the same database file
    try:
        fb = other.feedback()
        assert [(f.kind, f.value, f.source) for f in fb] == [("thumb", 1.0, "ui"), ("stars", 4.0, "ui"),
                                                             ("accept", 1.0, "ui"), ("thumb", -1.0, "ui"),
                                                             ("rank", None, "ui")]
        assert fb[4].request_id == fb[3].request_id and len(fb[4].ranking) == 2
        assert fb[4].ranking[1] == fb[3].suggestion_id  # "2 1": the first suggestion ranked second
        restyle = other.get_request(fb[3].request_id)
        assert restyle.mode == "restyle" and restyle.options["style"] == "sample"
        assert restyle.options["sample"].startswith("Morning, the third of May")
        req = other.get_request(fb[0].request_id)
        assert req.mode == "continue" and req.text == draft_text and len(req.suggestions) == 2
        assert fb[0].suggestion_id == req.suggestions[0].id and fb[1].suggestion_id == req.suggestions[1].id
        assert req.suggestions[0].text == first_text
        doc = other.latest_document("default")
        assert doc["text"].startswith(draft_text) and req.document_id == doc["id"]
    finally:
        other.close()
