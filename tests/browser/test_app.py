"""`vlmkit app` in a real browser: Debian's headless Chromium driven by Playwright (one browser per module),
against two servers started at once (the CLI in subprocesses, each with an API key): `vlmkit app` on a scripted
tiny model (600-token vocabulary) whose reply is Markdown with hostile markup and a grounding box, and
`vlmkit serve --ui` on another port with the small model and a LoRA adapter whose replies differ (adapter
choice, training, resume, chat with a run's checkpoint). Screenshots go to $VLMKIT_TEST_ARTIFACTS (default:
the test's temporary folder)."""

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
SERVE_KEY = "another-key"
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
def servers(tmp_path_factory, workdir, small_model, adapter):
    """Both servers, started together (their start-up is most of this module's set-up): the app on the scripted
    grounding model, and `serve --ui` on the small model with the adapter `zz` in a folder of its own."""
    from scripted import build_scripted_model

    model = build_scripted_model("qwen2-vl", tmp_path_factory.mktemp("grounding") / "model", REPLY, small_vocab=True)
    serve_dir = tmp_path_factory.mktemp("serve")
    (serve_dir / "train.jsonl").write_text((workdir / "train.jsonl").read_text())
    commands = {
        "app": (workdir, ["app", "--model", str(model), "--api-key", KEY]),
        "serve": (serve_dir, ["serve", "--ui", "--model", str(small_model), "--adapters", f"zz={adapter}",
                              "--api-key", SERVE_KEY]),
    }  # fmt: skip
    started = {}
    for name, (cwd, args) in commands.items():
        port, log = free_port(), open(cwd / f"{name}.log", "w")
        command = [sys.executable, "-m", "vlmkit", *args, "--port", str(port)]
        started[name] = (subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT), log, cwd, port)
    try:
        urls = {name: wait_ready(server, port, cwd / f"{name}.log") for name, (server, _, cwd, port) in started.items()}
        yield urls | {"serve_dir": serve_dir}
    finally:
        for server, _, _, _ in started.values():
            server.terminate()
        for server, log, _, _ in started.values():
            server.wait(30)
            log.close()


def wait_ready(server: subprocess.Popen, port: int, log: Path) -> str:
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 240
    while True:
        try:
            urllib.request.urlopen(url + "health", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(log.read_text()) from None
            time.sleep(0.3)
    assert f"open the page: {url}" in log.read_text()
    return url


@pytest.fixture(scope="module")
def app_url(servers) -> str:
    return servers["app"]


@pytest.fixture(scope="module")
def serve_url(servers) -> str:
    return servers["serve"]


@pytest.fixture(scope="module")
def browser():
    with playwright_sync.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


def open_page(browser, url: str, key: str):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.fill("#key-input", key)
    page.click("#key-form button")
    page.wait_for_selector("#model option", state="attached")
    yield page
    assert not errors, errors
    context.close()


@pytest.fixture
def page(browser, app_url):
    yield from open_page(browser, app_url, KEY)


@pytest.fixture
def serve_page(browser, serve_url):
    """The page of `vlmkit serve --ui` on its own port, unlocked with that server's key."""
    yield from open_page(browser, serve_url, SERVE_KEY)


def ask(page, text: str) -> str:
    """Send `text` in the chat and return the finished reply's text."""
    done = page.locator(".message.assistant:not(.streaming)").count()
    page.fill("#prompt", text)
    page.click("#send")
    reply = page.locator(".message.assistant:not(.streaming)").nth(done)
    reply.wait_for()
    return reply.inner_text()


def test_the_page_asks_for_the_key_and_names_a_wrong_one(browser, app_url, artifacts):
    context = browser.new_context()
    page = context.new_page()
    page.goto(app_url)
    page.wait_for_selector("#key-form:not([hidden])")
    assert "needs its API key" in page.inner_text("#key-error")
    page.fill("#key-input", "wrong")
    page.click("#key-form button")
    page.locator("#key-error", has_text="wrong API key").wait_for()  # no wait_for_function: the page's CSP forbids eval
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
    # the size and tokens the model saw, from the family's encoder: 1600x1200 -> 1596x1204 -> 43x57 patches
    # of 28 px -> 2451 tokens (Qwen2-VL's smart_resize; 400x300 -> 392x308 -> 14x11 = 154 tokens)
    captions = page.locator(".message.user figcaption").all_inner_texts()
    assert "model sees 392×308, 154 tokens" in captions[0]
    assert "model sees 1596×1204, 2451 tokens" in captions[1]
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


def test_serve_ui_on_another_port_asks_its_key_and_the_adapter_changes_the_reply(serve_page, artifacts):
    """`vlmkit serve --ui --port P --adapters zz=...`: the page of a second server, unlocked with its own key;
    the same question to the base model and to the adapter gets different replies."""
    options = serve_page.locator("#model option").all_inner_texts()
    assert options == [options[0], "zz (adapter)"]
    serve_page.click("#tab-chat summary")  # the generation settings
    serve_page.fill("#max-tokens", "6")
    base = ask(serve_page, "Hello")
    serve_page.select_option("#model", "zz")
    tuned = ask(serve_page, "Hello")
    assert tuned.startswith("zz") and tuned != base  # the adapter was trained to answer "zz zz zz"
    serve_page.screenshot(path=artifacts / "serve_adapter.png", full_page=True)


def test_a_video_in_chat_gets_a_reply_and_its_token_count(page, workdir):
    from videos import make_video

    make_video(workdir / "clip.mp4", 8, fps=4, size=(56, 56))
    page.set_input_files("#files", [str(workdir / "clip.mp4")])
    page.locator("#attachments video").wait_for()
    assert "clip.mp4: video" in page.inner_text("#attachments figcaption")
    assert "Found" in ask(page, "What happens in the video?")
    caption = page.locator(".message.user figcaption").last
    page.locator(".message.user figcaption", has_text="tokens").last.wait_for()
    # 8 frames at 4 fps, sampled at Qwen2-VL's 2 fps: 4 frames, 2 per temporal patch; 56x56 raised to the video
    # minimum of 336x336: grid (t, h, w) = (2, 24, 24), 2x2 merged -> 288 tokens
    assert "clip.mp4: video" in caption.inner_text() and "model sees, 288 tokens" in caption.inner_text()


@pytest.mark.slow
def test_a_lora_run_reloads_stops_resumes_to_done_and_its_checkpoint_chats(serve_page, servers, small_model, artifacts):
    page = serve_page
    page.goto(page.url.split("#")[0] + "#train")
    page.wait_for_selector("#train-form input[name=model]")
    page.evaluate("document.querySelectorAll('#train-form details').forEach(d => d.open = true)")
    page.fill("input[name=model]", str(small_model))
    page.fill("input[name=dataset]", "train.jsonl")
    page.fill("input[name=max_steps]", "100")
    page.fill("input[name=save_steps]", "5")  # the first checkpoint comes early: the stop lands mid-run
    page.fill("input[name=logging_steps]", "1")
    page.fill("input[name=report_to]", "none")
    page.fill("input[name=num_workers]", "0")
    page.click("#train-form button[type=submit]")
    page.wait_for_selector("#run h4.state-starting, #run h4.state-running")
    page.reload()  # the run is read again from its folder (the key stays for the tab's session)
    page.locator("#run .steps", has_text="checkpoints: checkpoint-").wait_for(timeout=240_000)
    page.click("#run button:text('Stop')")
    page.wait_for_selector("#run h4.state-stopped", timeout=120_000)
    stopped_at = int(page.inner_text("#run .steps").split()[1])
    assert 0 < stopped_at < 100
    page.click("#run button.resume")  # `vlmkit sft ... --resume RUN_FOLDER`, as the CLI resumes
    page.wait_for_selector("#run h4.state-done", timeout=240_000)
    assert "step 100 of 100" in page.inner_text("#run .steps")
    page.screenshot(path=artifacts / "train.png", full_page=True)
    runs = page.evaluate("fetch('/ui/api/runs', {headers: {Authorization: 'Bearer " + SERVE_KEY + "'}}).then(r => r.json())")
    assert [(r["state"], r["step"]) for r in runs["runs"]] == [("done", 100)]  # one run, resumed in its own folder
    (output,) = (servers["serve_dir"] / "runs" / ".app").glob("*.log")
    assert "a run folder; resuming from its newest complete checkpoint" in output.read_text()
    page.click("#run button.chat-checkpoint >> text=checkpoint-100")
    page.wait_for_url("**#chat")
    name = page.input_value("#model")
    assert name.endswith("/checkpoint-100")
    assert ask(page, "Hello")  # the checkpoint, loaded onto the served model, replies
    models = page.evaluate("fetch('/v1/models', {headers: {Authorization: 'Bearer " + SERVE_KEY + "'}}).then(r => r.json())")
    assert name in [m["id"] for m in models["data"]]


def test_a_failed_run_shows_its_error_line(page):
    page.goto(page.url.split("#")[0] + "#train")
    page.wait_for_selector("#train-form input[name=model]")
    page.fill("input[name=model]", "no-such-model-folder")
    page.fill("input[name=dataset]", "train.jsonl")
    page.click("#train-form button[type=submit]")
    page.wait_for_selector("#run h4.state-failed", timeout=120_000)
    assert page.inner_text("#run .run-error").startswith("error:")
