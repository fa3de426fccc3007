"""build_app: the whole Blocks app; launch_settings: how it must be served."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gradio as gr
from starlette.middleware import Middleware

from lfmui import compiled, offline
from lfmui.access import Access
from lfmui.manager import ModelManager
from lfmui.serve import routes
from lfmui.serve.guard import RequestGuard
from lfmui.serve.hosts import Allowed
from lfmui.ui import (
    api,
    chat_reply,
    chat_tab,
    controls,
    gpu,
    model_cards,
    models_tab,
    tools_tab,
    vision_tab,
)

MAX_FILE_SIZE = "20mb"
# Escape stops whatever is streaming (the visible Stop buttons: the playground's, and the one
# the message box shows in place of its send arrow); Enter sends (the message box's own
# behaviour, Shift+Enter for a new line).
KEYS = """<script>
document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape") return;
  document.querySelectorAll("button").forEach((b) => {
    const stop = b.textContent.trim() === "Stop" || b.getAttribute("aria-label") === "Stop";
    if (stop && b.offsetParent !== null) b.click();
  });
});
// The chat's pagers (◀ ▶ under an answer or an edited message) are links to #flip-…: a click
// hands the link to the hidden #flip-target box, whose change event runs the flip.
document.addEventListener("click", (event) => {
  const link = event.target.closest && event.target.closest("a[href^='#flip-']");
  if (!link) return;
  event.preventDefault();
  event.stopPropagation();
  const box = document.querySelector("#flip-target textarea, #flip-target input");
  if (!box) return;
  box.value = link.getAttribute("href").slice(1) + ":" + Date.now();
  box.dispatchEvent(new Event("input", { bubbles: true }));
}, true);
</script>"""
THEME_AT_LOAD = """() => {  // the theme and the metrics toggle as left in this browser
  if (localStorage.getItem("lfmui-theme") === "dark") document.body.classList.add("dark");
  if (localStorage.getItem("lfmui-metrics") === "hidden")
    document.body.classList.add("lfmui-no-metrics");
}"""
TOGGLE_THEME = """() => {
  const dark = document.body.classList.toggle("dark");
  localStorage.setItem("lfmui-theme", dark ? "dark" : "light");  // kept for the next visit
}"""
QUEUE_MAX_SIZE = 64
# The message box stays pinned at the bottom of the window, whatever is above or below it; on a
# phone the title is one line. The pager's box is a channel, never shown.
CSS = """
#chat-box { position: sticky; bottom: 0; z-index: 20; background: var(--background-fill-primary);
  padding-bottom: 2px; }
#chat-help { margin-top: -6px; opacity: 0.8; }
.lfmui-hidden { display: none !important; }
.lfmui-no-metrics #chat-pane .metrics { display: none; }
#model-chip p { margin: 0 !important; }
#model-chip .badge { background: var(--color-accent-soft); border-radius: 6px; padding: 0 6px;
  font-size: 0.8em; white-space: nowrap; }
@media (max-width: 640px) {
  #app-title h1 { font-size: 1.1rem !important; margin: 0 !important; line-height: 1.3; }
  #app-banner p, #model-chip p { font-size: 0.8rem !important; margin: 0 !important; }
  #chat-help { display: none; }
  #chat-header { flex-direction: column; }
  #inspector-row { flex-direction: column-reverse; }  /* the drawing above its sliders */
}
"""


def build_app(
    manager: ModelManager | None = None, startup_note: str = "", access: Access | None = None
) -> gr.Blocks:
    """The lfmui app over `manager` (a fresh one with the built-in catalog by default); who
    owns it is `access` (by default: whoever runs it on this machine, or on a Space its
    author and the admin token)."""
    manager = manager or ModelManager(**compiled.LIFECYCLE)
    access = access or Access.configured()
    with gr.Blocks(title="lfmui: try LFM2 models", analytics_enabled=False) as demo:
        with gr.Row(equal_height=False):
            gr.Markdown("# lfmui · try LFM2 models", elem_id="app-title")
            theme = gr.Button("Dark / light", size="sm", scale=0, elem_id="theme-toggle")
        theme.click(None, None, None, js=TOGGLE_THEME)
        banner_box = gr.Markdown(model_cards.banner(manager, startup_note), elem_id="app-banner")
        pick = gr.State(None)  # this visitor's model (lfmui.backends; None: the default)
        with gr.Tabs() as tabs:
            with gr.Tab("Chat", id="chat"):
                chat = chat_tab.build(manager, pick, access)
            with gr.Tab("Tiling", id="inspector", elem_id="inspector-panel"):
                inspector = vision_tab.build(manager, pick)
            with gr.Tab("Tools", id="tools", elem_id="tools-panel"):
                playground = tools_tab.build(manager, pick)
            with gr.Tab("Models", id="models"):
                models = models_tab.build(manager, banner_box, access, pick)
        api.build(manager, access)
        chat.open_inspector.click(
            lambda: gr.Tabs(selected="inspector"), None, tabs, api_visibility="private"
        )
        tabs_of = _Tabs(manager, startup_note, banner_box, chat, inspector, models)
        tabs_of.follow_switches(pick)
        tabs_of.follow_page_loads(demo)
        demo.load(
            lambda: tools_tab.first_run(manager),
            None,
            playground.first_run,
            api_visibility="private",
        )
    demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=1)
    return demo


class _Tabs:
    """What one tab changes in another: after a model switch (a load, an unload, an endpoint,
    a visitor's pick) and on every page load, the controls reset to the model's defaults and
    the chip, pickers, message box and cards show what answers this visitor now."""

    def __init__(self, manager, startup_note, banner_box, chat, inspector, models) -> None:
        self.manager, self.startup_note, self.banner_box = manager, startup_note, banner_box
        self.chat, self.models = chat, models
        self.per_model = [
            chat.system_prompt,
            *chat.controls,
            *chat.image_detail.all,
            *inspector.controls.all,
        ]
        self.shown = [chat.chip, chat.model, chat.box, models.model, models.level, models.pool]

    def model_defaults(self, chosen: str | None = None) -> list:
        detail = vision_tab.reset_values(self.manager, chosen)
        return [*chat_reply.defaults(self.manager, chosen), *detail, *detail]

    def serving(self, chosen: str | None) -> list:  # what answers this visitor
        manager = self.manager
        box = chat_reply.message_box(manager, chosen)
        card = model_cards.pool_card(manager)
        chip = model_cards.chip(manager, chosen)
        picker = model_cards.chat_choices(manager, chosen)
        return [chip, picker, box, *model_cards.picked(manager), card]

    def after_switch(self, chosen: str | None) -> list:
        # one update: once the chip shows, the defaults are in
        return [*self.model_defaults(chosen), *self.serving(chosen)]

    def on_page(self) -> list:
        return [
            model_cards.status_card(self.manager),
            model_cards.banner(self.manager, self.startup_note),
            *self.model_defaults(),
            *self.serving(None),
        ]

    def follow_switches(self, pick: gr.State) -> None:
        outputs = [*self.per_model, *self.shown]
        for switch in [*self.models.switches, self.chat.model_picked]:
            switch.then(self.after_switch, pick, outputs, api_visibility="private")

    def follow_page_loads(self, demo: gr.Blocks) -> None:
        demo.load(None, None, None, js=THEME_AT_LOAD)
        restore, saved, restored = self.chat.restore
        loaded = demo.load(  # every page load, a reload included, shows the server's state
            self.on_page,
            None,
            [self.models.card, self.banner_box, *self.per_model, *self.shown],
            api_visibility="private",
        )
        # then the browser's chats: the chat in use brings back its own settings
        loaded.then(restore, saved, restored, api_visibility="private")


def launch_settings(
    host: str = "127.0.0.1",
    port: int = 7860,
    manager: ModelManager | None = None,
    allowed: Allowed | None = None,
    access: Access | None = None,
) -> dict[str, Any]:
    """Keyword arguments for demo.launch: no share link, no monitoring, no MCP, caps on, only
    this server's host names and its own page (and `allowed`'s) let in; with `manager`, lfmui's
    OpenAI-compatible routes (/v1) over it, ahead of gradio's own."""
    if os.environ.get("GRADIO_VIBE_MODE"):
        raise SystemExit(
            "GRADIO_VIBE_MODE is set: lfmui refuses to start with it (it lets the "
            "browser edit server code). Unset it and start again."
        )
    blocked = [str(offline.cache_dir()), str(Path(__file__).resolve().parents[2])]
    return {
        "server_name": host,
        "server_port": port,
        "share": False,
        "max_file_size": MAX_FILE_SIZE,
        "enable_monitoring": False,
        "mcp_server": False,
        "show_error": False,
        "blocked_paths": blocked,
        "footer_links": ["api"],
        "head": KEYS,  # keyboard shortcuts
        "css": CSS,
        "app_kwargs": {
            # who may call, body caps, no inline files, bounded uploads
            "middleware": [
                Middleware(
                    RequestGuard,
                    allowed=allowed or Allowed.configured((host,)),
                    uploads=controls.upload_folder(),
                )
            ],
            "routes": routes.routes(
                manager, access or Access.configured(host), chat_turn=gpu.chat_turn
            )
            if manager is not None
            else [],
        },
    }
