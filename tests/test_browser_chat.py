"""The chat as people expect it (issue 30), in headless chromium: every reply stoppable, the box in
view and focused, removals undone, the model picked in the chat, settings kept with the chat.

Screenshots land in tests/artifacts/; the README's first-load pictures come from here.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import test_browser
from playwright.sync_api import expect
from test_browser import (
    ARTIFACTS,
    SLOW,
    _max_new_tokens,
    _panel,
    clear_chat,
    new_chat,
    retry,
    streaming,
)

# the browser suite's fixtures: this module's own app, page and levers
app_state, app_url, page = test_browser.app_state, test_browser.app_url, test_browser.page
pytestmark = pytest.mark.browser
ASSETS = Path(__file__).resolve().parents[1] / "assets"
BOX = "Type a message, paste or drop an image…"
LOAD = 300_000  # ms: a model load through the chat's picker (see the picker's test)
SIZES = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_first_load_shows_the_box_focused_every_tab_and_one_notice(page, app_url, size):
    viewport = SIZES[size]
    fresh = page.context.browser.new_page(viewport=viewport)
    try:
        fresh.goto(app_url)
        fresh.get_by_text("lfmui · try LFM2 models").wait_for(timeout=SLOW)
        fresh.get_by_text("What does this chart show?").first.wait_for(timeout=SLOW)
        box = fresh.locator("#chat-box")
        expect(box.locator("textarea")).to_be_focused(timeout=SLOW)  # typing goes to the box
        where = box.bounding_box()
        assert where["y"] >= 0 and where["y"] + where["height"] <= viewport["height"], where
        for tab in ("Chat", "Tiling", "Tools", "Models"):  # none hidden behind a "…" menu
            expect(fresh.get_by_role("tab", name=tab)).to_be_visible()
        # the empty chat welcomes and offers examples; random weights are said once, on the chip
        expect(fresh.locator("#chat-pane").get_by_text("Try an LFM2 model.")).to_be_visible()
        notices = fresh.get_by_text("random weights", exact=False).filter(visible=True)
        assert notices.count() == 1 and fresh.locator("#model-chip .badge").is_visible()
        overflow = fresh.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1
        shot = ARTIFACTS / f"first-load-{size}.png"
        fresh.screenshot(path=str(shot))
        shutil.copy(shot, ASSETS / f"first-load-{size}.png")
    finally:
        fresh.close()


def _in_a_new_chat(page, text: str) -> None:
    """Send `text` as the first message of a new chat."""
    page.get_by_role("tab", name="Chat").click()
    new_chat(page)
    box = page.get_by_placeholder(BOX)
    box.fill(text)
    box.press("Enter")


def _settings_open(page) -> None:
    if not page.get_by_label("System prompt").is_visible():
        page.get_by_text("Generation settings").click()
    expect(page.get_by_label("System prompt")).to_be_visible()


def _stop_and_time(page) -> tuple[float, float]:
    """Press Stop; the seconds until the reply shows it stopped, and from then until the box
    offers Send again."""
    box = page.locator("#chat-box")
    stop = box.get_by_role("button", name="Stop")
    expect(stop).to_be_visible(timeout=SLOW)
    ended = page.locator("[data-testid=bot]").last.get_by_text("stopped", exact=False)
    pressed = time.monotonic()
    stop.click()
    ended.wait_for(timeout=SLOW)
    stopped = time.monotonic()
    expect(box.get_by_role("button", name="Submit")).to_be_visible(timeout=SLOW)
    return stopped - pressed, time.monotonic() - stopped


def test_stop_ends_a_regeneration_an_edit_and_a_tool_turn_and_send_comes_back(page, app_state):
    page.get_by_role("tab", name="Chat").click()
    new_chat(page)
    _max_new_tokens(page, 4096)
    box = page.get_by_placeholder(BOX)
    timings = {}
    with app_state.reply_never_ends(seconds_per_token=0.05):
        box.fill("Keep talking.")
        box.press("Enter")
        streaming(page)
        timings["send"] = _stop_and_time(page)
        retry(page).click()
        streaming(page)
        timings["regenerate"] = _stop_and_time(page)
        page.locator("[data-testid=user]").first.hover()
        page.locator("#chat-pane").get_by_role("button", name="Edit").first.click()
        page.locator("#chat-pane textarea").first.fill("Keep talking, edited.")
        page.locator("#chat-pane").get_by_role("button", name="Submit").first.click()
        streaming(page)
        timings["edit"] = _stop_and_time(page)
        _settings_open(page)
        page.get_by_label("Use tools").check()
        box.fill("What is 2 + 2? Use the calculator.")
        box.press("Enter")
        streaming(page)
        timings["tool turn"] = _stop_and_time(page)
        page.get_by_label("Use tools").uncheck()
    assert app_state.generation_thread_idle(5)
    print("stop timings (s):", {k: [round(v, 3) for v in t] for k, t in timings.items()})
    for way, (to_stop, to_send) in timings.items():
        assert to_stop < 1.0, f"{way}: the reply took {to_stop:.2f} s to stop"
        assert to_send < 0.5, f"{way}: Send came back {to_send:.2f} s after the reply ended"
    page.screenshot(path=str(ARTIFACTS / "chat-stopped.png"), full_page=True)
    _max_new_tokens(page, 64)


def test_clear_and_delete_can_be_undone_and_a_chat_renamed(page):
    _in_a_new_chat(page, "A chat about tide pools.")
    page.get_by_text("tok/s").last.wait_for(timeout=SLOW)
    users = page.locator("[data-testid=user]:visible")
    clear_chat(page)
    expect(page.locator("#undo-bar")).to_contain_text("Chat cleared.")
    page.locator("#undo-button").click()
    expect(users.filter(has_text="tide pools")).to_have_count(1, timeout=SLOW)
    expect(page.locator("#undo-bar")).to_be_hidden()
    _panel(page, True)
    page.locator("#chat-title textarea, #chat-title input").first.fill("Tide pools")
    page.locator("#rename-chat").click()
    expect(page.locator("#past-chats")).to_contain_text("Tide pools", timeout=SLOW)
    page.locator("#delete-chat").click()
    expect(page.locator("#past-chats")).not_to_contain_text("Tide pools", timeout=SLOW)
    expect(users).to_have_count(0)
    expect(page.locator("#undo-bar")).to_contain_text("Deleted “Tide pools”.")
    page.screenshot(path=str(ARTIFACTS / "chat-deleted.png"))
    page.locator("#undo-button").click()
    expect(users.filter(has_text="tide pools")).to_have_count(1, timeout=SLOW)
    expect(page.locator("#past-chats")).to_contain_text("Tide pools", timeout=SLOW)
    _panel(page, False)
    # with nothing to act on, Delete and Rename are disabled (no warnings to stack)
    new_chat(page)
    _panel(page, True)
    expect(page.locator("#delete-chat")).to_be_disabled(timeout=SLOW)
    expect(page.locator("#rename-chat")).to_be_disabled()
    _panel(page, False)


def test_settings_are_kept_with_the_chat_across_a_reload(page):
    page.get_by_role("tab", name="Chat").click()
    new_chat(page)
    _max_new_tokens(page, 4096)
    _settings_open(page)
    prompt = page.get_by_label("System prompt")
    prompt.fill("Answer like a lighthouse keeper.")
    prompt.blur()
    box = page.get_by_placeholder(BOX)
    box.fill("Settings test.")
    box.press("Enter")
    page.get_by_text("Settings test.").last.wait_for(timeout=SLOW)
    stop = page.locator("#chat-box").get_by_role("button", name="Stop")
    if stop.is_visible():  # (random weights may end the reply first)
        page.keyboard.press("Escape")
    expect(page.locator("#chat-box").get_by_role("button", name="Submit")).to_be_visible(
        timeout=SLOW
    )
    page.reload()
    page.get_by_text("lfmui · try LFM2 models").wait_for(timeout=SLOW)
    page.get_by_text("Settings test.").first.wait_for(timeout=SLOW)
    _settings_open(page)
    number = page.get_by_label("number input for Max new tokens").first
    expect(number).to_have_value("4096", timeout=SLOW)
    expect(page.get_by_label("System prompt")).to_have_value("Answer like a lighthouse keeper.")
    _max_new_tokens(page, 64)
    page.get_by_label("System prompt").fill("")
    page.get_by_label("System prompt").blur()


def test_the_model_picker_in_the_chat_switches_and_the_attach_button_follows(
    page, app_state, monkeypatch
):
    loads = []  # one pick, one load (gradio's Dropdown fired .input twice per click)
    load = app_state.manager.load
    monkeypatch.setattr(
        app_state.manager, "load", lambda *a, **k: loads.append(a[0]) or load(*a, **k)
    )
    page.get_by_role("tab", name="Chat").click()
    picker = page.locator("#chat-model input")
    attach = page.locator("#chat-box").get_by_role("button", name="Upload a file")
    expect(attach).to_be_visible()
    picker.click()
    options = page.get_by_role("option")
    expect(options.filter(has_text="can't load: needs a download").first).to_be_visible()
    options.filter(has_text="lfm2-moe-tiny").first.click()
    chip = page.locator("#model-chip")
    # an `auto` load on a fresh machine builds the model and calibrates the CPU levels first
    # (the chip says "Loading lfm2-moe-tiny…" meanwhile): a CI run took over a minute
    expect(chip).to_contain_text("Model: lfm2-moe-tiny", timeout=LOAD)
    expect(attach).to_be_hidden(timeout=SLOW)  # a text model takes no images
    assert loads == ["lfm2-moe-tiny"]
    expect(page.get_by_placeholder("this model reads text only", exact=False)).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "chat-picker-moe.png"))
    picker.click()
    page.get_by_role("option").filter(has_text="lfm2-vl-tiny").first.click()
    expect(chip).to_contain_text("Model: lfm2-vl-tiny", timeout=LOAD)
    expect(attach).to_be_visible(timeout=SLOW)
    assert app_state.manager.current().spec.id == "lfm2-vl-tiny"
    # a model that needs the Hub is refused with a sentence, and the chat keeps its model
    picker.click()
    page.get_by_role("option").filter(has_text="can't load").first.click()
    page.get_by_text("needs a download, and this app runs offline").first.wait_for(timeout=SLOW)
    expect(chip).to_contain_text("lfm2-vl-tiny")


def test_the_playground_first_run_offline_is_manual_with_an_example_call(page, app_url):
    """Random weights never write a call: a fresh page opens the playground in manual mode
    with the model's first reply to write, pre-filled with a call in its format, so the
    first Run shows the whole flow; the trace has no empty boxes."""
    fresh = page.context.browser.new_page(viewport=SIZES["desktop"])
    try:
        fresh.goto(app_url)
        fresh.get_by_role("tab", name="Tools").click()
        panel = fresh.locator("#tools-panel")
        typed = panel.locator("#typed-reply textarea")
        expect(typed).to_have_value(
            '<|tool_call_start|>[get_weather(city="Paris", unit="fahrenheit")]<|tool_call_end|>',
            timeout=SLOW,
        )
        expect(panel.get_by_role("radio", name="manual")).to_be_checked()
        trace = test_browser.typed_call_runs_to_an_answer(fresh, panel, "Paris")
        assert "[]" not in trace.inner_text()  # no empty JSON box
        fresh.screenshot(path=str(ARTIFACTS / "tools-first-run.png"), full_page=True)
    finally:
        fresh.close()


def test_on_a_phone_the_inspector_draws_above_its_sliders(page, app_url, tmp_path):
    from PIL import Image

    phone = page.context.browser.new_page(viewport=SIZES["phone"])
    try:
        phone.goto(app_url)
        phone.get_by_role("tab", name="Tiling").click()
        panel = phone.locator("#inspector-panel")
        Image.new("RGB", (1000, 3000), "#38a169").save(tmp_path / "tall.png")
        panel.locator("input[type=file]").first.set_input_files(str(tmp_path / "tall.png"))
        plan = phone.locator("#tiling-summary")
        expect(plan).to_contain_text("What changes nothing here", timeout=SLOW)
        drawing = panel.get_by_text("How the model sees it").first.bounding_box()
        slider = panel.get_by_label("range slider for Max tiles").first.bounding_box()
        assert drawing["y"] < slider["y"], (drawing, slider)
        phone.screenshot(path=str(ARTIFACTS / "inspector-phone.png"), full_page=True)
    finally:
        phone.close()


def test_the_metrics_toggle_hides_and_shows_the_figures_under_replies(page):
    _in_a_new_chat(page, "Figures, please.")
    figures = page.locator("#chat-pane .metrics").last
    expect(figures).to_contain_text("tok/s", timeout=SLOW)
    toggle = page.locator("#chat-pane").get_by_role("button", name="Metrics")
    toggle.click()
    expect(figures).to_be_hidden()
    page.reload()  # remembered in this browser
    page.get_by_text("Figures, please.").first.wait_for(timeout=SLOW)
    expect(page.locator("#chat-pane .metrics").last).to_be_hidden(timeout=SLOW)
    page.locator("#chat-pane").get_by_role("button", name="Metrics").click()
    expect(page.locator("#chat-pane .metrics").last).to_be_visible()
