"""The playground page in headless Chromium against the server process: generate, rate, edit an upload.

Needs a Chromium binary (`/usr/bin/chromium`, or the path in FLOWFACTORY_CHROMIUM; CI installs Debian's
`chromium`). Without one the test is skipped, unless FLOWFACTORY_REQUIRE_BROWSER=1 (CI sets it) turns the
skip into a failure, so the browser test cannot silently stop running there."""

import os
import shutil

import pytest
from helpers_serve import free_port, new_key, start, tiny_models
from PIL import Image

from flowfactory.serve.store import SQLiteJobStore

CHROMIUM = os.environ.get("FLOWFACTORY_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# a closed network: no background connections, no component updates, no sandbox (CI runs as root)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
WAIT_MS = 120_000  # an upper bound for a tiny model on a slow CI machine, not a timing assertion


def _browser_or_skip():
    if CHROMIUM is None or not os.path.exists(CHROMIUM):
        if os.environ.get("FLOWFACTORY_REQUIRE_BROWSER") == "1":
            pytest.fail("FLOWFACTORY_REQUIRE_BROWSER=1 but no Chromium found (set FLOWFACTORY_CHROMIUM)")
        pytest.skip("no Chromium on this machine (apt-get install chromium, or set FLOWFACTORY_CHROMIUM)")
    return pytest.importorskip("playwright.sync_api")


def _image_shown(page) -> tuple[int, int]:
    """Waits until the result image has loaded; -> its natural (width, height)."""
    page.wait_for_function("() => { const i = document.getElementById('out'); return i && i.complete && i.naturalWidth > 0; }",
                           timeout=WAIT_MS)  # fmt: skip
    return page.eval_on_selector("#out", "i => [i.naturalWidth, i.naturalHeight]")


def test_playground_generates_rates_and_edits_in_chromium(tmp_path):
    sync_api = _browser_or_skip()
    (tmp_path / "models").mkdir()
    models = tiny_models(tmp_path / "models")
    port = free_port()
    proc = start(tmp_path, models, port)
    key = new_key(tmp_path)
    store = SQLiteJobStore(tmp_path / "jobs.sqlite")
    upload = tmp_path / "upload.png"
    Image.new("RGB", (320, 256), (40, 90, 230)).save(upload)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"http://127.0.0.1:{port}/")
            assert page.title() == "flowfactory playground"

            # generate: the schnell tier (this server has only pro: the fallback runs), 300 x 260
            page.fill("#key", key)
            page.fill("#prompt", "a green square on a black background")
            page.select_option("#endpoint", "flux-schnell")
            page.fill("#width", "300")
            page.fill("#height", "260")
            page.click("#go")
            assert _image_shown(page) == [300, 260]
            assert page.text_content("#status") == "Ready"
            (job,) = [j for j in store.jobs_of_key(store.key_id(key))]
            assert job.endpoint == "flux-schnell" and job.request["prompt"] == "a green square on a black background"
            assert job.result["tier"] == "pro"  # the documented fallback, reported in the result

            # rate it: the rating lands in the feedback table against that job
            page.click("#rate button[data-r='4']")
            page.wait_for_function("() => document.getElementById('rated').textContent.startsWith('thanks')",
                                   timeout=WAIT_MS)  # fmt: skip
            assert [(f["job_id"], f["kind"], f["rating"]) for f in store.feedback()] == [(job.id, "rating", 4.0)]

            # edit an uploaded image: the page switches to Kontext and the output keeps the upload's aspect
            page.set_input_files("#image", str(upload))
            page.fill("#prompt", "make it red")
            page.click("#go")
            page.wait_for_function("() => !document.getElementById('rate').hidden", timeout=WAIT_MS)
            w, h = _image_shown(page)
            assert abs(w / h - 320 / 256) < 0.02
            edit = [j for j in store.jobs_of_key(store.key_id(key)) if j.id != job.id]
            assert [j.endpoint for j in edit] == ["flux-kontext-pro"] and edit[0].status == "Ready"

            # a wrong key is shown as an error on the page, not swallowed
            page.fill("#key", "ff-wrong")
            page.click("#go")
            page.wait_for_function("() => document.getElementById('status').textContent.startsWith('error')",
                                   timeout=WAIT_MS)  # fmt: skip
            assert errors == []
            browser.close()
    finally:
        proc.kill()
        proc.wait()
