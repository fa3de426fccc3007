"""Stop while the full-shape VL-450M at fp32 reads a 1024x768 picture on the CPU (the longest
part of a reply there, several seconds): the reply ends before its first token, in under a third
of the time the same picture takes to read unstopped (measured in the same run, so a loaded
machine slows both), and the next message starts at once. In headless Debian chromium, like
tests/test_browser.py."""

from __future__ import annotations

import socket
import time

import pytest
from PIL import Image, ImageDraw
from test_browser import ARTIFACTS, CHROMIUM, SLOW, _max_new_tokens, _send, idle, streaming

pytestmark = pytest.mark.browser
# ms: the full-shape 450M at fp32 reads and writes many times slower on a loaded 2-core machine
HEAVY = 4 * SLOW


@pytest.fixture(scope="module")
def app_url(offline_cache):
    from lfmui.catalog import Catalog
    from lfmui.manager import ModelManager
    from lfmui.ui import build_app, launch_settings

    catalog = Catalog()
    catalog.show_all()  # the full-shape builds are hidden from the picker
    manager = ModelManager(catalog)
    manager.load("lfm2-vl-450m-synthetic", "fp32")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = build_app(manager)
    demo.launch(prevent_thread_lock=True, quiet=True, **launch_settings(port=port))
    yield f"http://127.0.0.1:{port}"
    demo.close()
    manager.unload()


def test_stop_during_an_image_prefill_ends_the_reply_at_once(app_url, tmp_path):
    from playwright.sync_api import sync_playwright

    photo = Image.new("RGB", (1024, 768), "#3b7a57")
    ImageDraw.Draw(photo).rectangle((200, 150, 800, 600), fill="#f4d35e")
    photo.save(tmp_path / "photo.png")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(app_url)
        page.get_by_text("lfmui · try LFM2 models").wait_for(timeout=SLOW)
        _max_new_tokens(page, 16)
        _send(page, tmp_path / "photo.png", "Describe this photo.")
        streaming(page, HEAVY)  # the picture is being read: seconds at fp32 on this CPU
        assert page.get_by_text("stopped ·").count() == 0  # still in the prefill
        clicked = time.perf_counter()
        page.get_by_role("button", name="Stop").click()
        page.get_by_text("stopped ·").last.wait_for(timeout=HEAVY)
        took = time.perf_counter() - clicked
        page.screenshot(path=str(ARTIFACTS / "stop-prefill.png"), full_page=True)
        footer = page.get_by_text("stopped ·").last.inner_text()
        assert " 0 tokens" in footer  # stopped before its first token
        finished = page.get_by_text("tok/s").or_(page.get_by_text("max tokens ·"))
        idle(page, HEAVY)  # the box takes a message again
        box = page.get_by_placeholder("Type a message, paste or drop an image…")
        box.fill("Hello")
        box.press("Enter")
        finished.last.wait_for(timeout=HEAVY)
        # the next message was not queued behind the stopped one (its footer would say so)
        assert page.locator("text=/queued/").count() == 0, "the next reply waited in the queue"
        idle(page, HEAVY)
        _max_new_tokens(page, 1)
        sent = time.perf_counter()
        _send(page, tmp_path / "photo.png", "Describe this photo.")  # read whole this time
        streaming(page, HEAVY)
        idle(page, HEAVY)  # Stop has turned back into the send arrow: the reply ended
        unstopped = time.perf_counter() - sent
        assert took < unstopped / 3, f"Stop took {took:.2f} s; the whole read {unstopped:.2f} s"
        browser.close()
