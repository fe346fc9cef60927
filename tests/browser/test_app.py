"""`vlmkit app` in a real browser: Debian's headless Chromium driven by Playwright, against one app server (the
CLI in a subprocess, with an API key) on a scripted tiny model whose reply is Markdown with hostile markup and
a grounding box. Screenshots go to $VLMKIT_TEST_ARTIFACTS (default: the test's temporary folder)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
# .ci/run sets VLMKIT_BROWSER_TIER=1 after installing chromium: there a missing browser fails the module, never
# skips it silently (as VLMKIT_VLLM_TIER does for the real-vLLM tier).
REQUIRED = bool(os.environ.get("VLMKIT_BROWSER_TIER"))


def _missing(reason: str) -> None:
    if REQUIRED:
        raise RuntimeError(f"VLMKIT_BROWSER_TIER is set but {reason}")
    pytest.skip(reason, allow_module_level=True)


if not CHROMIUM.exists():
    _missing("Debian's chromium is not installed (apt-get install chromium); .ci/run installs it")
try:
    import playwright.sync_api as playwright_sync
except ImportError:
    _missing("playwright is not installed (pip install playwright)")

KEY = "s3cret-key"
# Markdown, markup that must stay text, and a Qwen2-VL grounding box on the 0-1000 grid.
REPLY = (
    "**Found** it <script>window.pwned=1</script><img src=x onerror=\"window.pwned=1\">\n"
    "<|object_ref_start|>cat<|object_ref_end|><|box_start|>(100,200),(500,600)<|box_end|>"
)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("VLMKIT_TEST_ARTIFACTS") or tmp_path_factory.mktemp("artifacts")) / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, small_model) -> Path:
    """The app's folder: two images, a corrupt one, a dataset with a box, a training set, an eval result."""
    root = tmp_path_factory.mktemp("app")
    Image.new("RGB", (400, 300), "orange").save(root / "a.png")
    Image.new("RGB", (2400, 1800), "teal").save(root / "big.jpg", quality=95)  # resized in the browser
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really" * 10)
    rows = [
        {
            "messages": [
                {"role": "user", "content": "<image>Where is the <ref-object>?"},
                {"role": "assistant", "content": "<bbox>"},
            ],
            "images": ["a.png"],
            "objects": {"ref": ["猫"], "bbox": [[40, 30, 200, 150]]},
        },
        {"messages": [{"role": "user", "content": "第二行\nline 2"}, {"role": "assistant", "content": "ok"}]},
    ]
    (root / "boxes.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    train = [{"messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "zz zz"}]}] * 4
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    evals = root / "runs" / "eval"
    evals.mkdir(parents=True)
    (evals / "metrics.json").write_text(json.dumps({
        "dataset": "val.jsonl", "metrics": ["exact_match"],
        "models": {
            "base": {"predictions": "base.predictions.jsonl", "rows": 1, "failed": 0, "scores": {"exact_match": {"value": 0.0}}},
            "checkpoint-3": {"predictions": "ck.predictions.jsonl", "rows": 1, "failed": 0, "scores": {"exact_match": {"value": 1.0}}},
        },
    }))  # fmt: skip
    (evals / "base.predictions.jsonl").write_text(json.dumps({"response": "dog", "labels": "cat"}) + "\n")
    (evals / "ck.predictions.jsonl").write_text(json.dumps({"response": "cat", "labels": "cat"}) + "\n")
    return root


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, workdir) -> str:
    from scripted import build_scripted_model

    model = build_scripted_model("qwen2-vl", tmp_path_factory.mktemp("grounding") / "model", REPLY)
    port = free_port()
    log = open(workdir / "app.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "vlmkit", "app", "--model", str(model), "--port", str(port), "--api-key", KEY],
        cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(url + "health", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((workdir / "app.log").read_text()) from None
                time.sleep(0.5)
        assert f"open the page: {url}" in (workdir / "app.log").read_text()
        yield url
    finally:
        server.terminate()
        server.wait(30)
        log.close()


@pytest.fixture(scope="module")
def browser():
    with playwright_sync.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, app_url):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(app_url)
    page.fill("#key-input", KEY)
    page.click("#key-form button")
    page.wait_for_selector("#model option", state="attached")
    yield page
    assert not errors, errors
    context.close()


def test_the_page_asks_for_the_key_and_names_a_wrong_one(browser, app_url, artifacts):
    context = browser.new_context()
    page = context.new_page()
    page.goto(app_url)
    page.wait_for_selector("#key-form:not([hidden])")
    assert "needs its API key" in page.inner_text("#key-error")
    page.fill("#key-input", "wrong")
    page.click("#key-form button")
    page.wait_for_function("document.querySelector('#key-error').textContent.includes('wrong API key')")
    page.screenshot(path=artifacts / "key.png")
    page.fill("#key-input", KEY)
    page.click("#key-form button")
    page.wait_for_selector("#model option", state="attached")
    assert page.is_hidden("#key-form")
    context.close()


def test_two_images_get_a_streamed_reply_with_its_box_drawn_and_no_script_runs(page, workdir, artifacts):
    page.set_input_files("#files", [str(workdir / "a.png"), str(workdir / "big.jpg")])
    page.wait_for_selector("#attachments figure:nth-child(2)")
    captions = page.locator("#attachments figcaption").all_inner_texts()
    assert captions[0].startswith("400×300")
    assert "2400×1800" in captions[1] and "resized to 1600×1200" in captions[1]  # resized before upload
    page.fill("#prompt", "Where is the cat?\n第二行")
    page.click("#send")
    reply = page.locator(".message.assistant:not(.streaming)").last
    reply.locator("strong", has_text="Found").wait_for()
    # the markup arrives as text, never as elements, and never runs
    assert "<script>window.pwned=1</script>" in reply.inner_text()
    assert reply.locator("script, img").count() == 0
    assert page.evaluate("window.pwned") is None
    box = page.locator(".message.user .boxed").nth(1).locator(".box")  # the reply's boxes: on the last image
    box.wait_for()
    assert box.inner_text() == "cat"
    # (100,200),(500,600) on the 0-1000 grid of a 1600x1200 image
    style = box.get_attribute("style")
    assert "left: 10%" in style and "top: 20%" in style and "width: 40%" in style
    assert "model sees" in page.locator(".message.user figcaption").nth(1).inner_text()
    assert page.locator(".message.user").inner_text().count("第二行") == 1
    page.screenshot(path=artifacts / "chat.png", full_page=True)


def test_a_corrupt_image_gets_the_servers_error(page, workdir, artifacts):
    page.set_input_files("#files", [str(workdir / "broken.png")])
    page.wait_for_selector("#attachments figure")
    page.fill("#prompt", "What is this?")
    page.click("#send")
    error = page.locator(".message.error")
    error.wait_for()
    assert "image 1" in error.inner_text() and "not" in error.inner_text()
    assert page.locator(".message.assistant").count() == 0
    page.screenshot(path=artifacts / "chat_error.png")


def test_a_dataset_shows_its_images_boxes_and_check(page, artifacts):
    page.goto(page.url.split("#")[0] + "#data")
    page.fill("#data-path", "boxes.jsonl")
    page.click("#data-open")
    card = page.locator(".row-card").first
    card.locator(".boxed img").wait_for()
    assert card.locator(".box").inner_text() == "猫"
    assert "400×300" in card.inner_text()
    assert "第二行\nline 2" in page.locator(".row-card").nth(1).inner_text()
    page.click("#data-check")
    page.locator("#data-check-out pre").wait_for()
    assert "2" in page.inner_text("#data-check-out pre")
    page.screenshot(path=artifacts / "data.png", full_page=True)
    page.fill("#data-path", "/etc/passwd")
    page.click("#data-open")
    page.wait_for_selector("#data-rows .error")
    assert "outside the app's folders" in page.inner_text("#data-rows .error")


def test_compare_shows_checkpoints_side_by_side(page, artifacts):
    page.goto(page.url.split("#")[0] + "#compare")
    page.wait_for_selector("table.scores")
    table = page.inner_text("table.scores")
    assert "base" in table and "checkpoint-3" in table and "1.0000" in table
    assert "dog" in page.inner_text("table.predictions")
    page.screenshot(path=artifacts / "compare.png", full_page=True)


def test_a_phone_width_window_has_no_sideways_scroll(browser, app_url, artifacts):
    context = browser.new_context(viewport={"width": 390, "height": 800})
    page = context.new_page()
    page.goto(app_url)
    page.fill("#key-input", KEY)
    page.click("#key-form button")
    page.wait_for_selector("#model option", state="attached")
    for tab in ("chat", "data", "train"):
        page.goto(app_url + "#" + tab)
        page.wait_for_timeout(300)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, tab
    page.screenshot(path=artifacts / "phone.png", full_page=True)
    context.close()


def test_a_non_loopback_host_without_a_key_is_refused():
    done = subprocess.run(
        [sys.executable, "-m", "vlmkit", "app", "--model", "m", "--host", "0.0.0.0"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --host 0.0.0.0 without --api-key would let anyone on the network use the page (chat, data, "
        "training); give --api-key KEY, or keep --host 127.0.0.1"
    ]


@pytest.mark.slow
def test_a_lora_run_survives_a_reload_and_ends_done_with_its_curve(page, small_model, artifacts):
    page.goto(page.url.split("#")[0] + "#train")
    page.wait_for_selector("#train-form input[name=model]")
    page.evaluate("document.querySelectorAll('#train-form details').forEach(d => d.open = true)")
    page.fill("input[name=model]", str(small_model))
    page.fill("input[name=dataset]", "train.jsonl")
    page.fill("input[name=max_steps]", "3")
    page.fill("input[name=logging_steps]", "1")
    page.fill("input[name=report_to]", "none")
    page.fill("input[name=num_workers]", "0")
    page.click("#train-form button[type=submit]")
    page.wait_for_selector("#run h4.state-starting, #run h4.state-running")
    page.reload()  # the run is read again from its folder (the key stays for the tab's session)
    page.wait_for_selector("#run h4.state-done", timeout=240_000)
    assert "step 3 of 3" in page.inner_text("#run .steps")
    assert "checkpoint-3" in page.inner_text("#run .steps")
    points = page.evaluate("fetch('/ui/api/runs', {headers: {Authorization: 'Bearer " + KEY + "'}}).then(r => r.json())")
    assert points["runs"][0]["state"] == "done" and points["runs"][0]["step"] == 3
    page.screenshot(path=artifacts / "train.png", full_page=True)


def test_a_failed_run_shows_its_error_line(page):
    page.goto(page.url.split("#")[0] + "#train")
    page.wait_for_selector("#train-form input[name=model]")
    page.fill("input[name=model]", "no-such-model-folder")
    page.fill("input[name=dataset]", "train.jsonl")
    page.click("#train-form button[type=submit]")
    page.wait_for_selector("#run h4.state-failed", timeout=120_000)
    assert page.inner_text("#run .run-error").startswith("error:")
