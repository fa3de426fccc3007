"""Browser checks in headless Debian chromium through Playwright: what a user really sees.

Screenshots land in tests/artifacts/ (CI keeps them); the README's come from these runs.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import expect

from lfmui.catalog import Catalog

pytestmark = pytest.mark.browser
# the picker's labels of the offline builds (random weights, and the hub model each stands in for)
VL_TINY, MOE_TINY = (Catalog().get(m).label for m in ("lfm2-vl-tiny", "lfm2-moe-tiny"))
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
SLOW = 60_000  # ms: the longest any condition below is waited for (a loaded 2-core machine)


def until(action, check, timeout_ms: int = SLOW) -> None:
    """Do `action`, then wait (up to 2 s) for `check` to hold; again until `timeout_ms`. For
    inputs the page can undo while it re-renders (an accordion opening, a slider re-bound)."""
    import time

    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        action()
        try:
            check(2_000)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def streaming(page, timeout_ms: int = SLOW) -> None:
    """The reply streams: the box's send arrow has turned into Stop."""
    expect(page.get_by_role("button", name="Stop")).to_be_visible(timeout=timeout_ms)


def clear_chat(page) -> None:
    """Clear the chat (the chat's own trash icon, there while it has messages), and wait
    until the page shows it empty. A reply still streaming is stopped by it."""
    trash = page.locator("#chat-pane").get_by_role("button", name="Clear")
    if trash.count() and trash.first.is_visible():
        trash.first.click()
    expect(page.locator("[data-testid=user]:visible")).to_have_count(0, timeout=SLOW)


def retry(page):
    """The Retry icon under the last reply (regenerate)."""
    return page.locator("#chat-pane").get_by_role("button", name="Retry").last


def new_chat(page) -> None:
    """A new chat, from the side panel (opened for it, closed after)."""
    _panel(page, True)
    page.locator("#new-chat").click()
    _panel(page, False)


def panel_open(page) -> bool:
    """Whether the chats' side panel is on screen (closed, it slides out of the window)."""
    box = page.locator("#new-chat").bounding_box()
    return bool(box) and box["x"] >= 0 and box["x"] + box["width"] <= page.viewport_size["width"]


def _panel(page, shown: bool) -> None:
    import time

    if panel_open(page) != shown:
        page.get_by_role("button", name="Toggle Sidebar").click()
    deadline = time.monotonic() + 10
    while panel_open(page) != shown:  # it slides
        assert time.monotonic() < deadline, "the side panel did not slide"
        time.sleep(0.1)


def idle(page, timeout_ms: int = SLOW) -> None:
    """No reply streams: Stop has turned back into the send arrow."""
    expect(page.get_by_role("button", name="Stop")).to_be_hidden(timeout=timeout_ms)


class AppState:
    """The in-process app's manager, with test-only levers on the real generate path."""

    def __init__(self, manager):
        self.manager = manager

    @contextlib.contextmanager
    def reply_never_ends(self, seconds_per_token: float = 0.0):
        """Replies run to max_new_tokens: generate's own min_new_tokens logits processor masks
        end-of-sequence, so a Stop test does not depend on when random weights emit it. With
        `seconds_per_token`, each step also waits that long (the tiny model writes 4096 tokens
        in seconds), so a reply outlasts a test's clicks."""
        import functools
        import time

        from transformers import LogitsProcessor, LogitsProcessorList

        class Slow(LogitsProcessor):
            def __call__(self, input_ids, scores):
                time.sleep(seconds_per_token)
                return scores

        model = self.manager.current().model
        model.generation_config.min_new_tokens = 4096
        if seconds_per_token:
            model.generate = functools.partial(
                model.generate, logits_processor=LogitsProcessorList([Slow()])
            )
        try:
            yield
        finally:
            model.generation_config.min_new_tokens = None
            if seconds_per_token:
                del model.generate  # back to the class's method

    def generation_thread_idle(self, timeout: float) -> bool:
        from lfmui import worker

        return worker.generation_worker().submit(lambda: True).result(timeout)


@pytest.fixture(scope="module")
def app_state(tiny_paths):
    from lfmui.manager import ModelManager

    manager = ModelManager()
    manager.load("lfm2-vl-tiny", "fp32")
    return AppState(manager)


@pytest.fixture(scope="module")
def app_url(app_state):
    from lfmui.ui import build_app, launch_settings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = build_app(app_state.manager)
    demo.launch(prevent_thread_lock=True, quiet=True, **launch_settings(port=port))
    yield f"http://127.0.0.1:{port}"
    demo.close()


@pytest.fixture(scope="module")
def page(app_url):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(app_url)
        page.get_by_text("lfmui · try LFM2 models").wait_for(timeout=SLOW)
        yield page
        browser.close()


def _picture(path: Path) -> Path:
    image = Image.new("RGB", (640, 480), "#2b6cb0")
    draw = ImageDraw.Draw(image)
    draw.ellipse((200, 120, 440, 360), fill="#f6e05e")
    image.save(path)
    return path


def _send(page, image, text):
    """Attach `image` to the chat box, type `text`, press Enter."""
    page.locator("input[type=file]").first.set_input_files(str(image))
    box = page.get_by_placeholder("Type a message, paste or drop an image…")
    box.fill(text)
    box.press("Enter")


def scripted_playground(panel) -> None:
    """The playground with no typed first reply and results automatic (where random weights
    answer, a page opens it in manual mode with an example call typed in)."""
    typed = panel.locator("#typed-reply textarea")
    if not typed.is_visible():
        panel.get_by_text("Write the model's first reply yourself").click()
    typed.fill("")
    panel.get_by_role("radio", name="automatic").check()


def typed_call_runs_to_an_answer(page, panel, city: str):
    """Run the playground in manual mode with a typed first reply that calls get_weather for
    `city`: the trace marks the round as typed, the result goes back, the model answers."""
    panel.get_by_role("button", name="Run").click()
    send = panel.get_by_role("button", name="Send results")
    send.wait_for(timeout=SLOW)
    trace = page.locator("#tool-trace")
    assert "You wrote" in trace.inner_text() and f'"city": "{city}"' in trace.inner_text()
    send.click()
    trace.get_by_text("Final answer").wait_for(timeout=SLOW)
    return trace


def _max_new_tokens(page, value: int) -> None:
    """Set the Max new tokens slider and wait until the app has taken the value."""
    slider = page.get_by_label("range slider for Max new tokens").first
    if not slider.is_visible():
        page.get_by_text("Generation settings").click()
    number = page.get_by_label("number input for Max new tokens").first
    # the accordion animates open; a fill during it can be undone
    until(
        lambda: slider.fill(str(value)),
        lambda ms: expect(number).to_have_value(str(value), timeout=ms),
    )


def test_chat_streams_a_reply_with_an_image(page, tmp_path):
    expect(
        page.locator("#model-chip").get_by_text("random weights: replies are noise")
    ).to_be_visible(timeout=SLOW)
    _send(page, _picture(tmp_path / "sun.png"), "What is in this picture?")
    bot = page.locator(".message-row.bot-row, [data-testid=bot]").last
    bot.wait_for(timeout=SLOW)
    page.get_by_text("tok/s").last.wait_for(timeout=SLOW)  # metrics footer: reply finished
    assert page.locator("img[src*='sun']").count() >= 1 or page.locator("img").count() >= 1
    page.screenshot(path=str(ARTIFACTS / "chat.png"), full_page=True)


def test_regenerate_replaces_the_last_reply(page):
    footers = page.get_by_text("tok/s")
    before = footers.count()
    assert before >= 1
    retry(page).click()
    page.get_by_text("answer 2 of 2").wait_for(timeout=SLOW)  # the new answer streams
    expect(page.locator("[data-testid=bot]").last).to_contain_text("tok/s", timeout=SLOW)  # ended
    assert footers.count() == before  # replaced, not appended
    assert page.locator("#chat-pane").get_by_text("What is in this picture?").count() == 1


def test_models_tab_shows_status_and_levels(page):
    page.get_by_role("tab", name="Models").click()
    page.get_by_text("resident weights").wait_for(timeout=SLOW)
    assert page.get_by_text(VL_TINY).first.is_visible()
    assert page.get_by_text("4-bit (bitsandbytes nf4)").first.is_visible()
    page.screenshot(path=str(ARTIFACTS / "models.png"), full_page=True)


def test_models_tab_marks_which_levels_fit(page, monkeypatch):
    """On a 16 GB machine (14 GiB free), LFM2-8B-A1B: fp32 and bf16 marked too big, the 4-bit
    and 8-bit levels marked as fitting, each with its estimate, before anything is clicked."""
    from playwright.sync_api import expect

    from lfmui import memory

    monkeypatch.setattr(memory, "meminfo_available", lambda: 14 * 2**30)
    monkeypatch.setattr(memory, "cgroup_headroom", lambda: None)
    page.get_by_role("tab", name="Models").click()
    page.locator("#model-picker input").click()
    page.get_by_role("option", name="LFM2-8B-A1B (mixture of experts, text only)").click()
    table = page.locator("#level-table")

    def row(label: str):
        return table.get_by_role("row", name=re.compile("^" + re.escape(label)))

    expect(table).to_contain_text("Memory free now: 14.0 GiB", timeout=SLOW)
    expect(row("fp32:")).to_contain_text("✗ too big: ~32.0 GiB")
    expect(row("bf16:")).to_contain_text("✗ too big")
    expect(row("4-bit (bitsandbytes nf4)")).to_contain_text("✓ fits: ~")
    expect(row("8-bit (bitsandbytes")).to_contain_text("✓ fits: ~")
    page.screenshot(path=str(ARTIFACTS / "fits.png"), full_page=True)
    page.locator("#model-picker input").click()  # back to the resident model for what follows
    page.get_by_role("option", name=VL_TINY).click()


def test_paste_an_image_stream_and_stop(page, app_state, tmp_path):
    """Paste an image, send, watch the reply grow, press Stop: the reply ends as stopped."""
    page.get_by_role("tab", name="Chat").click()
    clear_chat(page)
    _max_new_tokens(page, 4096)
    box = page.get_by_placeholder("Type a message, paste or drop an image…")
    data = _picture(tmp_path / "pasted.png").read_bytes()
    box.evaluate(
        """(el, bytes) => {
            const file = new File([new Uint8Array(bytes)], "pasted.png", {type: "image/png"});
            const clip = new DataTransfer();
            clip.items.add(file);
            el.dispatchEvent(new ClipboardEvent("paste", {clipboardData: clip, bubbles: true}));
        }""",
        list(data),
    )
    page.locator(".thumbnail-item, .thumbnail-image, img[alt]").first.wait_for(timeout=SLOW)
    box.fill("Describe this picture at length.")
    with app_state.reply_never_ends():
        box.press("Enter")
        bot = page.locator(".message-row.bot-row, [data-testid=bot]").last
        bot.wait_for(timeout=SLOW)
        page.wait_for_function(  # watch the reply stream: its text has had three lengths
            """(el) => {
                el._lengths = el._lengths || new Set();
                el._lengths.add(el.innerText.length);
                return el._lengths.size >= 3;
            }""",
            arg=bot.element_handle(),
            polling=100,
            timeout=SLOW,
        )
        page.get_by_role("button", name="Stop").click()
        page.get_by_text("stopped ·").last.wait_for(timeout=SLOW)
        stopped_tokens = int(
            page.get_by_text("stopped ·").last.inner_text().split(" tokens")[0].split()[-1]
        )
        assert stopped_tokens < 4096
    assert app_state.generation_thread_idle(timeout=2)
    assert page.locator("#chat-pane").get_by_text("Describe this picture at length.").count() == 1
    page.screenshot(path=str(ARTIFACTS / "chat-stop.png"), full_page=True)
    _max_new_tokens(page, 64)  # later tests get short replies again


def test_tiling_inspector_draws_the_plan_and_follows_the_sliders(page, tmp_path):
    page.get_by_role("tab", name="Chat").click()
    page.get_by_text("Image detail").click()
    page.get_by_role("button", name="Open the tiling inspector").click()
    panel = page.locator("#inspector-panel")
    panel.get_by_text("Upload an image to see how the model will cut it.").wait_for(timeout=SLOW)
    tall = Image.new("RGB", (1000, 3000), "#e2e8f0")
    draw = ImageDraw.Draw(tall)
    for i, colour in enumerate(["#2b6cb0", "#38a169", "#d69e2e", "#e53e3e", "#805ad5"]):
        draw.ellipse((150, 150 + i * 560, 850, 700 + i * 560), fill=colour)
    tall.save(tmp_path / "tall.png")
    panel.locator("input[type=file]").first.set_input_files(str(tmp_path / "tall.png"))
    summary = panel.get_by_text("image tokens** (budget").or_(
        panel.get_by_text("image tokens (budget")
    )
    summary.first.wait_for(timeout=SLOW)
    plan = page.locator("#tiling-summary")
    expect(plan).to_contain_text(re.compile(r"[3-9] row\(s\) x 1 column\(s\)"), timeout=SLOW)
    # a knob that cannot change this plan is named, with why
    expect(plan).to_contain_text("What changes nothing here")
    expect(plan).to_contain_text(re.compile(r"needs only \d+ tiles: a max tiles of 10"))
    slider = panel.get_by_label("range slider for Max tiles")
    until(  # the plan follows the slider: 2 tiles at most, so 2 rows
        lambda: slider.fill("2"),
        lambda ms: expect(plan).to_contain_text("2 row(s) x 1 column(s)", timeout=ms),
    )
    slider.fill("4")
    panel.get_by_label("Add a thumbnail of the whole image").check()
    expect(plan).to_contain_text("thumbnail ", timeout=SLOW)
    expect(panel.locator("img").first).to_be_visible(timeout=SLOW)
    page.screenshot(path=str(ARTIFACTS / "inspector.png"), full_page=True)


def test_chat_image_detail_preset_applies_to_the_next_message(page, tmp_path):
    page.get_by_role("tab", name="Chat").click()
    clear_chat(page)
    accordion = page.get_by_text("Image detail")
    if not page.get_by_role("radio", name="fast").first.is_visible():
        accordion.click()
    page.get_by_role("radio", name="fast").first.check()
    _max_new_tokens(page, 64)
    _send(page, _picture(tmp_path / "fast.png"), "Quick look, please.")
    footer = page.get_by_text("image) ·").last
    footer.wait_for(timeout=SLOW)
    image_tokens = int(footer.inner_text().split(" image)")[0].split("(")[-1])
    assert 0 < image_tokens <= 64  # the fast preset, not the model's 256-token default


def test_tool_playground_shows_the_trace(page, app_state):
    from helpers.scripted import scripted_generate

    page.get_by_role("tab", name="Tools").click()
    panel = page.locator("#tools-panel")
    scripted_playground(panel)
    request = panel.get_by_label("Request")
    request.fill("What is the weather in Paris, in fahrenheit?")
    call = '<|tool_call_start|>[get_weather(city="Paris", unit="fahrenheit")]<|tool_call_end|>'
    answer = "It is 64 F and partly cloudy in Paris (demo data)."
    with scripted_generate(app_state.manager.current(), [call, answer]):
        panel.get_by_role("button", name="Run").click()
        trace = page.locator("#tool-trace")
        trace.get_by_text("Final answer").wait_for(timeout=SLOW)
    text = trace.inner_text()
    assert "<|tool_call_start|>" in text  # the raw model text, special tokens visible
    assert '"city": "Paris"' in text and "get_weather" in text and '"temperature": 64' in text
    assert answer in text and "noise from random weights" in text
    page.screenshot(path=str(ARTIFACTS / "tools.png"), full_page=True)


def test_chat_with_tools_shows_used_tool_messages(page, app_state):
    from helpers.scripted import scripted_generate

    page.get_by_role("tab", name="Chat").click()
    clear_chat(page)
    if not page.get_by_label("Use tools").first.is_visible():
        page.get_by_text("Generation settings").click()
    page.get_by_label("Use tools").first.check()
    call = '<|tool_call_start|>[calculator(expression="21 * 2")]<|tool_call_end|>'
    with scripted_generate(app_state.manager.current(), [call, "That makes 42."]):
        box = page.get_by_placeholder("Type a message, paste or drop an image…")
        box.fill("What is 21 times 2?")
        box.press("Enter")
        page.get_by_text("That makes 42.").wait_for(timeout=SLOW)
    used = page.get_by_text("Used tool calculator")
    assert used.count() == 1
    page.get_by_text("prompt 1892").or_(page.get_by_text("tok/s")).last.wait_for(timeout=SLOW)
    idle(page)  # the reply's last update has rendered
    until(  # the collapsible ("done": closed) opens to show what went back
        lambda: used.first.click(),
        lambda ms: expect(page.get_by_text('arguments: {"expression": "21 * 2"}')).to_be_visible(
            timeout=ms
        ),
    )
    page.screenshot(path=str(ARTIFACTS / "chat-tools.png"), full_page=True)
    page.get_by_label("Use tools").first.uncheck()


def test_tool_playground_manual_mode_sends_the_edited_result(page, app_state):
    from helpers.scripted import scripted_generate

    page.get_by_role("tab", name="Tools").click()
    panel = page.locator("#tools-panel")
    scripted_playground(panel)
    panel.get_by_role("radio", name="manual").check()
    panel.get_by_label("Request").fill("Weather in Tokyo?")
    call = '<|tool_call_start|>[get_weather(city="Tokyo")]<|tool_call_end|>'
    with scripted_generate(app_state.manager.current(), [call, "Noted."]) as script:
        panel.get_by_role("button", name="Run").click()
        send = panel.get_by_role("button", name="Send results")
        send.wait_for(timeout=SLOW)
        editor = panel.locator(".cm-content").last
        editor.get_by_text("demo table").wait_for(timeout=SLOW)  # the prefilled result
        editor.click()
        page.keyboard.press("Control+A")
        page.keyboard.insert_text('[{"name": "get_weather", "output": {"sky": "edited by hand"}}]')
        assert "edited by hand" in editor.inner_text()
        send.click()
        page.locator("#tool-trace").get_by_text("Final answer").wait_for(timeout=SLOW)
    assert "edited by hand" in page.locator("#tool-trace").inner_text()
    assert len(script.prompts) == 2  # the model ran again, after the edited result went back
    panel.get_by_role("radio", name="automatic").check()


def test_escape_stops_the_reply(page, app_state, tmp_path):
    page.get_by_role("tab", name="Chat").click()
    clear_chat(page)
    _max_new_tokens(page, 4096)
    with app_state.reply_never_ends():
        box = page.get_by_placeholder("Type a message, paste or drop an image…")
        box.fill("Talk until I press Escape.")
        box.press("Enter")
        page.get_by_text("…").or_(page.locator(".bot-row")).last.wait_for(timeout=SLOW)
        streaming(page)
        page.keyboard.press("Escape")
        page.get_by_text("stopped ·").last.wait_for(timeout=SLOW)
    _max_new_tokens(page, 64)


def test_item31_one_reply_per_chat_while_it_streams(page, app_state):
    """Enter while a reply streams: no second generation, the typed text stays in the box,
    the history keeps one message and one reply, and Retry, Edit and Undo are disabled; after
    Stop it sends."""
    page.get_by_role("tab", name="Chat").click()
    clear_chat(page)
    _max_new_tokens(page, 4096)
    box = page.get_by_placeholder("Type a message, paste or drop an image…")
    users, bots = page.locator("[data-testid=user]"), page.locator("[data-testid=bot]")
    with app_state.reply_never_ends(seconds_per_token=0.02):
        box.fill("The first message.")
        box.press("Enter")
        bots.last.wait_for(timeout=SLOW)
        streaming(page)
        box.fill("A second message typed while the first reply streams.")
        box.press("Enter")
        page.get_by_text("A reply is still streaming in this chat").first.wait_for(timeout=SLOW)
        for action in ("Retry", "Edit", "Undo"):  # nothing to act on until the reply ends
            expect(page.locator("#chat-pane").get_by_role("button", name=action)).to_be_disabled()
        assert box.input_value() == "A second message typed while the first reply streams."
        assert users.count() == 1 and bots.count() == 1
        page.screenshot(path=str(ARTIFACTS / "busy.png"), full_page=True)
        page.keyboard.press("Escape")
        page.get_by_text("stopped ·").last.wait_for(timeout=SLOW)
    assert app_state.generation_thread_idle(5)
    _max_new_tokens(page, 16)
    idle(page)
    box.press("Enter")
    page.get_by_text("A second message typed while").last.wait_for(timeout=SLOW)
    page.get_by_text("tok/s").last.wait_for(timeout=SLOW)
    assert users.count() == 2 and bots.count() == 2
    assert [u.inner_text().strip() for u in users.all()] == [
        "The first message.",
        "A second message typed while the first reply streams.",
    ]
    _max_new_tokens(page, 64)


def test_clear_while_a_reply_streams_stops_it_and_the_chat_stays_empty(page, app_state):
    """Clear during a reply: the reply stops, and its last update does not bring the chat
    back (it used to, when Clear landed between two of the reply's updates)."""
    page.get_by_role("tab", name="Chat").click()
    clear_chat(page)
    _max_new_tokens(page, 4096)
    box = page.get_by_placeholder("Type a message, paste or drop an image…")
    with app_state.reply_never_ends(seconds_per_token=0.02):
        box.fill("Clear me while you answer.")
        box.press("Enter")
        page.locator("[data-testid=bot]").last.wait_for(timeout=SLOW)
        streaming(page)
        clear_chat(page)
        idle(page)  # the reply has ended (its send arrow is back after its last update)
    assert app_state.generation_thread_idle(5)
    expect(page.locator("[data-testid=user]:visible")).to_have_count(0)
    expect(page.locator("[data-testid=bot]:visible")).to_have_count(0)
    _max_new_tokens(page, 64)


def test_item08_a_refused_image_keeps_the_chat_and_the_box(page, tmp_path):
    """A refusal is a warning toast; the chat and the message box (text and attachment) stay
    on screen as they were (a gr.Error would draw an Error badge over both)."""
    page.get_by_role("tab", name="Chat").click()
    clear_chat(page)
    box = page.get_by_placeholder("Type a message, paste or drop an image…")
    box.fill("Hello.")
    box.press("Enter")
    page.get_by_text("tok/s").last.wait_for(timeout=SLOW)
    users = page.locator("[data-testid=user]:visible")
    expect(users).to_have_count(1)
    before = 1
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    _send(page, bad, "Is this picture readable?")
    page.get_by_text("Could not read image 'broken.png'").first.wait_for(timeout=SLOW)
    assert box.input_value() == "Is this picture readable?"
    assert users.count() == before and users.first.is_visible()
    assert page.get_by_text("Error", exact=True).count() == 0
    page.screenshot(path=str(ARTIFACTS / "refused.png"), full_page=True)
    page.reload()  # a fresh session for the tests after (the box still holds the bad file)
    page.get_by_text("lfmui · try LFM2 models").wait_for(timeout=SLOW)
    # the chat comes back from this browser's storage (and has, before the next test clears)
    expect(page.locator("[data-testid=user]:visible").filter(has_text="Hello.")).to_have_count(1)


def test_export_and_reimport_a_session(page, tmp_path):
    page.get_by_role("tab", name="Chat").click()
    clear_chat(page)
    _send(page, _picture(tmp_path / "kept.png"), "Remember this picture.")
    page.get_by_text("tok/s").last.wait_for(timeout=SLOW)
    page.get_by_text("Session: export, import, copy as code").click()
    page.get_by_role("button", name="Export session").click()
    link = page.locator('a[download="lfmui-session.json"]').first
    link.wait_for(timeout=SLOW)
    with page.expect_download() as download:
        link.click()
    saved = tmp_path / "session.json"
    download.value.save_as(saved)
    bundle = json.loads(saved.read_text())
    assert bundle["messages"][0]["text"] == "Remember this picture."
    clear_chat(page)
    from playwright.sync_api import expect  # waits for the cleared chat (a bare count raced)

    in_chat = page.locator("#chat-pane").get_by_text("Remember this picture.")
    expect(in_chat).to_have_count(0, timeout=SLOW)
    page.get_by_label("Import a session file").locator("input[type=file]").or_(
        page.locator("input[type=file][accept*='.json']")
    ).first.set_input_files(str(saved))
    in_chat.wait_for(timeout=SLOW)
    page.get_by_role("button", name="Show as code").click()
    page.get_by_text("AutoModelForImageTextToText").first.wait_for(timeout=SLOW)
    page.screenshot(path=str(ARTIFACTS / "session.png"), full_page=True)


def test_imported_remote_images_a_hostile_session_file_loads_nothing(page, tmp_path):
    """issue 18, classes 6, 8 and 9 in the browser: an imported file whose words carry a
    Markdown image and an <img> (a tracking pixel), an answer whose error carries another,
    14 images (the chat takes 12) and max_new_tokens "DROP". The pixel's server is asked for
    nothing; the chat shows the words and the links; warnings say what was left out."""
    import base64
    import http.server
    import io
    import threading

    asked: list[str] = []

    class Pixel(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the http.server name)
            asked.append(self.path)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Pixel)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    pixel = f"http://127.0.0.1:{server.server_address[1]}"
    data = io.BytesIO()
    Image.new("RGB", (8, 8), (250, 200, 0)).save(data, "PNG")
    picture = {
        "name": "p.png",
        "data": "data:image/png;base64," + base64.b64encode(data.getvalue()).decode(),
    }
    bundle = {
        "format": "lfmui-session/1",
        "model": {"id": "lfm2-vl-tiny"},
        "system_prompt": "",
        "sampling": {"max_new_tokens": "DROP", "temperature": 0.3},
        "tiling": {},
        "use_tools": False,
        "messages": [
            {
                "role": "user",
                "text": f"Look ![tracker]({pixel}/md.png) and <img src='{pixel}/html.png'> here.",
                "images": [picture] * 4,
            },
            {"role": "assistant", "text": "Noted.", "error": f"<img src='{pixel}/error.png'>"},
            *[{"role": "user", "text": f"More {n}", "images": [picture] * 4} for n in range(3)],
        ],
    }
    path = tmp_path / "hostile-session.json"
    path.write_text(json.dumps(bundle))
    try:
        page.get_by_role("tab", name="Chat").click()
        clear_chat(page)
        held = page.locator("#session-import").get_by_role("button", name="Clear")
        if held.count():  # the file the last test imported: emptied, the drop zone back
            held.first.click()
        page.get_by_text("Session: export, import, copy as code").click()
        page.get_by_label("Import a session file").locator("input[type=file]").or_(
            page.locator("input[type=file][accept*='.json']")
        ).first.set_input_files(str(path))
        page.get_by_text("More 2").wait_for(timeout=SLOW)
        page.get_by_text("values for max_new_tokens were not valid").first.wait_for(timeout=SLOW)
        page.get_by_text("at most 12 images").first.wait_for(timeout=SLOW)
        page.get_by_text("image: tracker").first.wait_for(timeout=SLOW)  # a link now
        shown = page.locator("[data-testid=user] img, [data-testid=bot] img")
        expect(shown.and_(page.locator("img[src*='gradio_api/file=']"))).to_have_count(
            12, timeout=SLOW
        )
        sources = [shown.nth(i).get_attribute("src") or "" for i in range(shown.count())]
        assert not [src for src in sources if src.startswith(pixel)]
        assert len([src for src in sources if "gradio_api/file=" in src]) == 12
        assert asked == []  # the browser fetched nothing from the pixel's server
        assert page.get_by_text("Error", exact=True).count() == 0
        page.screenshot(path=str(ARTIFACTS / "import-hostile.png"), full_page=True)
    finally:
        server.shutdown()
        clear_chat(page)


def test_dark_theme_and_phone_width(page, app_url):
    page.get_by_role("button", name="Dark / light").click()
    assert page.evaluate("document.body.classList.contains('dark')")
    page.get_by_role("tab", name="Chat").click()
    page.screenshot(path=str(ARTIFACTS / "dark.png"), full_page=False)
    page.get_by_role("button", name="Dark / light").click()
    phone = page.context.browser.new_page(viewport={"width": 390, "height": 844})
    phone.goto(app_url)
    phone.get_by_text("lfmui · try LFM2 models").wait_for(timeout=SLOW)
    overflow = phone.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1  # nothing wider than the phone's screen
    tabs = phone.get_by_role("tab", name="Chat").bounding_box()
    assert tabs["y"] < 844 * 0.25, tabs  # the title and the banners leave the screen to the chat
    phone.screenshot(path=str(ARTIFACTS / "phone.png"), full_page=False)
    phone.close()


def test_every_control_has_a_label(page):
    """Every input, text area, select and text button we put on the Chat tab has a name a
    screen reader can read (gradio's own icon and image buttons are left to gradio)."""
    page.get_by_role("tab", name="Chat").click()
    page.get_by_text("What does this chart show?").first.wait_for(timeout=SLOW)
    unlabeled = page.evaluate(
        """() => [...document.querySelectorAll('input, textarea, select, button')]
            .filter((el) => el.offsetParent !== null && el.type !== 'file')
            .filter((el) => !el.classList.contains('icon-button') && !el.querySelector('img'))
            .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                && !el.getAttribute('aria-labelledby') && !el.textContent.trim()
                && !el.getAttribute('title') && !el.getAttribute('placeholder'))
            .map((el) => el.outerHTML.slice(0, 300))"""
    )
    assert unlabeled == [], unlabeled


def test_load_a_model_from_the_models_tab(page):
    """Load with the default choice, auto (the fastest level here that fits, as calibrated on
    this CPU), then fp32."""
    from lfmui import calibrate, memory, quant
    from lfmui.catalog import Catalog

    config = memory.config_of(Catalog().get("lfm2-moe-tiny"))
    measured = {} if quant.cuda_available() else calibrate.decode_ms(config)
    fastest = calibrate.fastest_first(quant.auto_levels(), measured)[0].name  # all fit
    page.get_by_role("tab", name="Models").click()
    page.locator("#model-picker input").first.click()
    page.get_by_role("option", name="lfm2-moe-tiny").first.click()
    expect(page.locator("#model-picker input").first).to_have_value(re.compile("^lfm2-moe-tiny"))
    # a new pick resets the level to auto, by the server's reply: Load only once it landed
    expect(page.locator("#level-picker input[value='auto']")).to_be_checked(timeout=SLOW)
    page.get_by_role("button", name="Load", exact=True).click()
    status = f"{MOE_TINY} · {fastest}"
    page.get_by_text(status).wait_for(timeout=SLOW)
    # a reload shows the server's state: the picker, the level, the chat's chip, and a
    # message box that takes no images (the text-only model loaded)
    page.reload()
    page.get_by_text("lfmui · try LFM2 models").wait_for(timeout=SLOW)
    page.get_by_text(f"Model: lfm2-moe-tiny · {fastest}").wait_for(timeout=SLOW)
    assert page.get_by_placeholder("this model reads text only").count() == 1
    assert page.locator("#model-chip").get_by_text("random weights").count() == 1
    page.get_by_role("tab", name="Models").click()
    assert page.locator("#model-picker input").first.input_value().startswith("lfm2-moe-tiny")
    assert page.locator(f"#level-picker input[value='{fastest}']").is_checked()
    page.screenshot(path=str(ARTIFACTS / "reload-state.png"), full_page=True)
    page.locator("#model-picker input").first.click()
    page.get_by_role("option", name="lfm2-vl-tiny").first.click()
    expect(page.locator("#model-picker input").first).to_have_value(re.compile("^lfm2-vl-tiny"))
    expect(page.locator("#level-picker input[value='auto']")).to_be_checked(timeout=SLOW)
    page.get_by_role("radio", name="fp32").check()
    page.get_by_role("button", name="Load", exact=True).click()
    page.get_by_text(f"{VL_TINY} · fp32").wait_for(timeout=SLOW)
    chip = page.locator("#model-chip").get_by_text("Model: lfm2-vl-tiny · fp32")
    chip.wait_for(state="attached", timeout=SLOW)  # the chat's chip follows (tab hidden)
    assert page.get_by_placeholder("Type a message, paste or drop an image…").count() == 1
    page.screenshot(path=str(ARTIFACTS / "models.png"), full_page=True)


def test_item19_model_output_runs_nothing_and_fetches_nothing(page, app_state):
    from helpers.scripted import scripted_generate

    page.get_by_role("tab", name="Chat").click()
    clear_chat(page)
    probe = "http://127.0.0.1:9/probe.png"
    hostile = (
        f"Look ![cat]({probe}) and <img src={probe} onerror=alert(1)> "
        "<script>alert(2)</script> [click](javascript:alert(3)) done."
    )
    requests, dialogs = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("dialog", lambda d: dialogs.append(d.message) or d.dismiss())
    with scripted_generate(app_state.manager.current(), [hostile]):
        box = page.get_by_placeholder("Type a message, paste or drop an image…")
        box.fill("Say something dangerous.")
        box.press("Enter")
        page.get_by_text("done.").last.wait_for(timeout=SLOW)
    idle(page)  # the reply has ended and rendered whole
    assert not [u for u in requests if "probe.png" in u]  # no external image fetched
    assert dialogs == []  # no script ran
    bot = page.locator(".bot-row, [data-testid=bot]").last.inner_html()
    assert (
        "<script" not in bot
        and "javascript:" not in bot
        and "onerror" not in bot.split("&lt;img")[0]
    )
    assert page.get_by_text("<img src=").count() >= 1  # shown as text


def test_every_refusal_in_every_tab_is_a_warning_without_badges(page, tmp_path):
    """A refusal in each tab: a warning toast says what to do, nothing shows an Error badge,
    and the tiling sliders cannot cross (a minimum pushed past its maximum takes it along)."""

    def warned(text: str) -> None:
        page.get_by_text(text).first.wait_for(timeout=SLOW)
        assert page.get_by_text("Error", exact=True).count() == 0, text

    page.get_by_role("tab", name="Tiling").click()
    panel = page.locator("#inspector-panel")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    if not panel.locator("input[type=file]").count():  # a picture from an earlier test
        panel.get_by_role("button", name="Clear").first.click()
    panel.locator("input[type=file]").first.set_input_files(str(bad))
    warned("Could not read image 'broken.png'")

    def number(label: str, value: str) -> None:
        expect(panel.get_by_label(f"number input for {label}")).to_have_value(value, timeout=SLOW)

    panel.get_by_label("range slider for Max image tokens").fill("128")
    number("Max image tokens", "128")
    panel.get_by_label("range slider for Min image tokens").fill("208")
    number("Max image tokens", "208")  # carried along, not crossed
    panel.get_by_label("range slider for Max image tokens").fill("32")
    number("Min image tokens", "32")

    page.get_by_role("tab", name="Tools").click()
    tools_panel = page.locator("#tools-panel")
    tools_panel.get_by_label("Request").fill("")
    tools_panel.get_by_role("button", name="Run").click()
    warned("Type a request for the model first.")
    definitions = tools_panel.locator(".cm-content").first  # the tool definitions editor
    definitions.click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text("[{oops")
    tools_panel.get_by_label("Request").click()  # the editor loses focus: checked
    warned("not valid JSON")
    tools_panel.get_by_role("button", name="Load the built-in examples").click()

    page.get_by_role("tab", name="Models").click()
    page.get_by_text("Endpoint: an OpenAI-compatible server").click()
    page.locator("#endpoint-url textarea, #endpoint-url input").first.fill("localhost:8000")
    page.locator("#endpoint-connect").click()
    warned("is not an http(s) URL")
    page.screenshot(path=str(ARTIFACTS / "refusals.png"), full_page=True)
    page.reload()  # a fresh page for the tests after
    page.get_by_text("lfmui · try LFM2 models").wait_for(timeout=SLOW)


def test_chats_and_the_theme_survive_a_reload(page):
    """The chat comes back after a reload, is listed with the others kept in this browser,
    and can be left for a new one and opened again; the dark theme is remembered too."""
    page.get_by_role("tab", name="Chat").click()
    new_chat(page)
    box = page.get_by_placeholder("Type a message, paste or drop an image…")
    box.fill("Remember this conversation about lighthouses.")
    box.press("Enter")
    page.get_by_text("tok/s").last.wait_for(timeout=SLOW)
    idle(page)  # stored after the reply ends: the list of kept chats names it
    _panel(page, True)
    expect(page.locator("#past-chats")).to_contain_text("lighthouses", timeout=SLOW)
    _panel(page, False)
    page.get_by_role("button", name="Dark / light").click()
    page.reload()
    page.get_by_text("lfmui · try LFM2 models").wait_for(timeout=SLOW)
    chat = page.locator("[data-testid=user]")
    chat.get_by_text("Remember this conversation about lighthouses.").wait_for(timeout=SLOW)
    assert page.locator("[data-testid=bot]").count() >= 1
    assert "dark" in (page.locator("body").get_attribute("class") or "")
    page.screenshot(path=str(ARTIFACTS / "reloaded-chat.png"), full_page=True)
    new_chat(page)
    expect(page.locator("[data-testid=user]")).to_have_count(0)
    _panel(page, True)
    page.locator("#past-chats label").filter(has_text="lighthouses").first.click()
    _panel(page, False)
    chat.get_by_text("Remember this conversation about lighthouses.").wait_for(timeout=SLOW)
    page.get_by_role("button", name="Dark / light").click()  # light again for the tests after


def test_chats_stored_damaged_are_dropped_with_a_warning(page):
    page.evaluate("localStorage.setItem('lfmui-chats', '{\"not\": \"what lfmui wrote\"')")
    page.reload()
    page.get_by_text("lfmui · try LFM2 models").wait_for(timeout=SLOW)
    page.get_by_role("tab", name="Chat").click()
    page.get_by_placeholder("Type a message, paste or drop an image…").wait_for()
    assert page.get_by_text("Error", exact=True).count() == 0
    assert page.locator("[data-testid=user]").count() == 0


def test_edit_a_sent_message_and_the_chat_runs_again_from_it(page, app_state):
    from helpers.scripted import scripted_generate

    page.get_by_role("tab", name="Chat").click()
    new_chat(page)
    box = page.get_by_placeholder("Type a message, paste or drop an image…")
    with scripted_generate(
        app_state.manager.current(), ["First answer.", "Second answer.", "Answer, again: $$x^2$$"]
    ):
        for text, answer in (("First question", "First answer."), ("Second one", "Second answer.")):
            box.fill(text)
            box.press("Enter")
            page.get_by_text(answer).wait_for(timeout=SLOW)
            idle(page)
        first = page.locator("[data-testid=user]").filter(has_text="First question")
        first.hover()
        page.get_by_role("button", name="Edit").first.click()  # the first message's
        editor = page.locator("#chat-pane textarea").first
        editor.fill("First question, edited")
        page.get_by_role("button", name="Submit").first.click()
        page.get_by_text("Answer, again:").wait_for(timeout=SLOW)
    users = page.locator("[data-testid=user]")
    assert "First question, edited" in users.first.inner_text()
    assert page.get_by_text("Second answer.").count() == 0  # the later turns: another branch
    page.locator("[data-testid=bot] .katex").first.wait_for(timeout=SLOW)  # LaTeX rendered
    pager = page.locator("[data-testid=user]").get_by_text("version 2 of 2")
    expect(pager).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "chat-edit.png"), full_page=True)
    # the pager flips back to the branch before the edit, whole, and forth again
    page.locator("[data-testid=user] a[href^='#flip-branch-0--1']").click()
    page.get_by_text("Second answer.").wait_for(timeout=SLOW)
    assert users.first.inner_text().strip() == "First question"
    expect(page.locator("[data-testid=user]").get_by_text("version 1 of 2")).to_be_visible()
    assert page.get_by_text("First answer.").count() == 1
    page.locator("[data-testid=user] a[href^='#flip-branch-0-1']").click()
    page.get_by_text("Answer, again:").wait_for(timeout=SLOW)
    assert page.get_by_text("Second answer.").count() == 0


def test_regenerated_answers_are_kept_to_flip_between(page, app_state):
    from helpers.scripted import scripted_generate

    page.get_by_role("tab", name="Chat").click()
    new_chat(page)
    box = page.get_by_placeholder("Type a message, paste or drop an image…")
    with scripted_generate(app_state.manager.current(), ["Answer one.", "Answer two."]):
        box.fill("Say something.")
        box.press("Enter")
        page.get_by_text("Answer one.").wait_for(timeout=SLOW)
        idle(page)
        retry(page).click()
        page.get_by_text("answer 2 of 2").wait_for(timeout=SLOW)
    assert page.get_by_text("Answer one.").count() == 0
    page.locator("[data-testid=bot] a[href='#flip-answer-1--1']").click()  # ◀ under it
    page.get_by_text("answer 1 of 2").wait_for(timeout=SLOW)
    assert page.get_by_text("Answer one.").count() == 1
    page.locator("[data-testid=bot] a[href='#flip-answer-1-1']").click()  # ▶
    page.get_by_text("Answer two.").wait_for(timeout=SLOW)
    page.screenshot(path=str(ARTIFACTS / "chat-alternatives.png"), full_page=True)


def test_tool_playground_can_be_tried_offline_with_a_typed_first_reply(page):
    """With random weights no call is ever written: the user types the model's first reply,
    the manual-results flow is reached, and the model answers after the edited result."""
    page.get_by_role("tab", name="Tools").click()
    panel = page.locator("#tools-panel")
    scripted_playground(panel)
    panel.locator("#typed-reply textarea").fill(
        '<|tool_call_start|>[get_weather(city="Oslo")]<|tool_call_end|>'
    )
    panel.get_by_role("radio", name="manual").check()
    trace = typed_call_runs_to_an_answer(page, panel, "Oslo")
    assert "noise from random weights" in trace.inner_text()
    page.screenshot(path=str(ARTIFACTS / "tools-typed.png"), full_page=True)
    panel.locator("#typed-reply textarea").fill("")
    panel.get_by_role("radio", name="automatic").check()
