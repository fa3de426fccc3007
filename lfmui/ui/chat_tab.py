"""The Chat tab: a multimodal message box and a streaming Chatbot over the resident model.

The session's conversation lives in a gr.State list of turns (the Chatbot is only its rendering),
so nothing the user sent is lost when a reply fails or is stopped. Stop sets the session's flag,
which the engine checks at every generated token.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from lfmui import backends, chats, hub, offline, turns
from lfmui.access import Access
from lfmui.errors import InputError
from lfmui.manager import ModelManager
from lfmui.settings import SAMPLING
from lfmui.ui import chat_list, gpu, running
from lfmui.ui.chat_reply import (
    BOX_FOR,
    BOX_HINT,
    CLEAR_GRACE_S,
    CLEAR_WAIT_S,
    REPLIES,
    box_for,
    settings_of,
    stream_reply,
)
from lfmui.ui.chat_session import SessionPanel
from lfmui.ui.controls import TilingControls, sampling_control
from lfmui.ui.render import flip_of, owners, to_chatbot, warns
from lfmui.ui.running import ACCELERATOR

EXAMPLES = [
    str(Path(__file__).resolve().parents[2] / "assets" / "examples" / name)
    for name in ("chart.png", "house.png")
]


class ChatTab:
    """The Chat tab: its components (made in ``__init__``) and its handlers, each reading its
    inputs as one dict of components (gradio still injects the request)."""

    def __init__(self, manager: ModelManager, pick: gr.State, access: Access) -> None:
        self.manager, self.access = manager, access
        self.pick = pick  # the model this visitor picked (lfmui.backends; None: the default)
        self.state = gr.State([])
        # the chats, kept in this browser (lfmui.chats): a reload or a closed tab loses nothing
        self.saved = gr.BrowserState(
            chats.EMPTY, storage_key="lfmui-chats", secret=chats.secret(offline.cache_dir())
        )
        self.chat_id = gr.State("")
        self.undoable = gr.State(None)  # what the last Clear or Delete removed (Undo brings it)
        self._render_chat_list()
        self._render_header()
        self._render_chat()
        self._render_settings()
        self._setup_events()

    def _render_chat_list(self) -> None:
        """The chats kept in this browser: a side panel (a drawer on a phone)."""
        with gr.Sidebar(label="Chats", open=False, elem_id="chats-panel"):
            self.new_chat = gr.Button("+ New chat", size="sm", elem_id="new-chat")
            self.past = gr.Radio(
                [], label="Chats kept in this browser", elem_id="past-chats", interactive=True
            )
            self.title = gr.Textbox(
                label="Title of this chat", max_length=chats.MAX_TITLE, elem_id="chat-title"
            )
            with gr.Row():
                self.rename_button = gr.Button(
                    "Rename", size="sm", elem_id="rename-chat", interactive=False
                )
                self.delete_button = gr.Button(
                    "Delete this chat",
                    size="sm",
                    variant="stop",
                    elem_id="delete-chat",
                    interactive=False,
                )

    def _render_header(self) -> None:
        """What answers, and the picker that changes it, over the chat."""
        with gr.Row(equal_height=True, elem_id="chat-header"):
            self.chip = gr.Markdown(elem_id="model-chip")  # the app keeps it current
            self.model = gr.Dropdown(
                [], label="Model", scale=0, min_width=260, elem_id="chat-model"
            )

    def _render_chat(self) -> None:
        # in the chat's toolbar: the metrics under each reply shown or hidden (app.TOGGLE_METRICS)
        self.metrics_toggle = gr.Button(
            "Metrics", size="sm", render=False, elem_id="metrics-toggle"
        )
        self.chatbot = gr.Chatbot(
            label="Chat",
            height="min(480px, 50vh)",  # the box below stays on the first screen
            sanitize_html=True,
            render_markdown=True,
            editable="user",  # a sent message can be edited: the chat re-runs from it
            elem_id="chat-pane",
            latex_delimiters=LATEX,
            placeholder=WELCOME,
            examples=CHAT_EXAMPLES,
            buttons=["copy", self.metrics_toggle],
        )
        # the chat's pager links (◀ ▶ under an answer or an edited message) write here
        self.flip_target = gr.Textbox(
            label="Flip to", elem_id="flip-target", elem_classes=["lfmui-hidden"]
        )
        with gr.Row(visible=False, elem_id="undo-bar") as self.undo_bar:
            self.undo_note = gr.Markdown()
            self.undo_button = gr.Button("Undo", size="sm", scale=0, elem_id="undo-button")
        self.box = gr.MultimodalTextbox(
            placeholder=BOX_HINT,
            file_types=["image"],
            file_count="multiple",
            label="Message",
            show_label=False,
            sources=["upload"],
            autofocus=True,
            elem_id="chat-box",
        )
        gr.Markdown(HELP_LINE, elem_id="chat-help")

    def _render_settings(self) -> None:
        with gr.Accordion("Generation settings (kept with the chat)", open=False):
            self.system_prompt = gr.Textbox(label="System prompt", lines=2)
            with gr.Row():
                self.controls = [sampling_control(name) for name in SAMPLING]
            self.use_tools = gr.Checkbox(
                False, label="Use tools (the playground's built-ins: calculator, units, dates, …)"
            )
        with gr.Accordion("Image detail", open=False):
            self.image_detail = TilingControls("applies to the next message you send")
            self.open_inspector = gr.Button("Open the tiling inspector", size="sm")
        self.session_panel = SessionPanel(self.manager, self)

    # ---- reading the controls -------------------------------------------------------------
    def settings(self, data: dict) -> dict[str, Any]:
        return settings_of([data[c] for c in self.controls])

    def _reply(self, history: list, data: dict, stop: threading.Event, session: str):
        return stream_reply(
            self.manager,
            history,
            data[self.system_prompt],
            self.settings(data),
            stop,
            self.image_detail.values(data),
            data[self.use_tools],
            data[self.pick],
            session,
        )

    # ---- the chat's settings ----------------------------------------------------------------
    def settings_outputs(self) -> list[Any]:
        """What a chat keeps of its settings: the system prompt, sampling and Use tools."""
        return [self.system_prompt, *self.controls, self.use_tools]

    def kept_settings(self, values: list[Any]) -> dict[str, Any]:
        prompt, *sampling, use_tools = values
        return {
            **settings_of(sampling),
            "system_prompt": prompt or "",
            "use_tools": bool(use_tools),
        }

    def shown_settings(self, kept: dict[str, Any] | None) -> list[Any]:
        """The controls for a chat's kept settings (each left as it is where none is kept)."""
        kept = kept or {}
        return [
            kept.get("system_prompt", gr.skip()),
            *(kept.get(name, gr.skip()) for name in SAMPLING),
            kept.get("use_tools", gr.skip()),
        ]

    # ---- chats kept in the browser ------------------------------------------------------------
    def on_restore(self, saved: Any):
        """Page load: the chat in use comes back (the others are listed), with its settings."""
        stored, said = chats.read(saved, chat_list.UPLOADS)
        for sentence in said:
            gr.Warning(sentence)
        last = chats.last_settings(saved)
        if not stored:
            fresh = chats.new_id()
            value = chats.write([], fresh, [], last)
            shown = self.shown_settings(last)
            return (
                [],
                [],
                fresh,
                chat_list.listed([], fresh),
                value,
                "",
                *shown,
                *chat_list.acts_on([]),
            )
        current = stored[0]
        turns = current["turns"]
        kept = current.get("settings") or last
        value = chats.write(stored, current["id"], turns, kept)  # stored again, cleaned
        listed = chat_list.listed(stored, current["id"])
        shown = self.shown_settings(kept)
        return (
            turns, to_chatbot(turns), current["id"], listed, value, current["title"], *shown,
            *chat_list.acts_on(turns),
        )  # fmt: skip

    def on_save(self, saved: Any, chat_id: str, history: list, *values: Any):
        """After every change to the chat or its settings: it is stored, first in the list."""
        stored, _ = chats.read(saved, chat_list.UPLOADS)
        value = chats.write(stored, chat_id, history, self.kept_settings(list(values)))
        return value, chat_list.listed(value["chats"], chat_id), *chat_list.acts_on(history)

    def on_open(self, saved: Any, chosen: str):
        stored, _ = chats.read(saved, chat_list.UPLOADS)
        chat = chats.find(stored, chosen)
        if chat is None:
            gr.Warning("That chat is no longer kept in this browser.")
            return [gr.skip()] * (4 + len(self.settings_outputs()))
        shown = self.shown_settings(chat.get("settings"))
        return chat["turns"], to_chatbot(chat["turns"]), chat["id"], chat["title"], *shown

    def on_clear(self, saved: Any, chat_id: str, history: list, request: gr.Request):
        """The chat empties (Undo brings it back). A reply still streaming in it is stopped
        first and has ended before the empty chat is sent: its last update would otherwise
        fill the chat again."""
        streamed = REPLIES.state(request.session_hash) != running.IDLE
        if not REPLIES.stop_and_wait(request.session_hash, CLEAR_WAIT_S):
            gr.Warning("The reply is still stopping; press Clear again in a moment.")
            return [gr.skip()] * 5
        if streamed:  # gradio sends a cancelled event's last output as it completes: let it
            time.sleep(CLEAR_GRACE_S)  # go first (a CI run once saw it land after the clear)
        if not history:
            return [], [], gr.skip(), gr.skip(), gr.skip()
        stored, _ = chats.read(saved, chat_list.UPLOADS)
        chat = chats.find(stored, chat_id) or {}
        gone = {**chat, "id": chat_id, "turns": history}
        return [], [], {"kind": "clear", "chat": gone}, gr.Row(visible=True), "Chat cleared."

    # ---- handlers --------------------------------------------------------------------------
    @warns(outputs=3)
    def on_submit(self, data: dict, request: gr.Request):
        message = data[self.box] or {}
        text = message.get("text", "") or ""
        files = list(message.get("files", []) or [])
        if not text.strip() and not files:
            raise InputError("Type a message or attach an image first.")
        if len(files) > turns.MAX_IMAGES_PER_MESSAGE:
            raise InputError(f"Attach at most {turns.MAX_IMAGES_PER_MESSAGE} images per message.")
        turns.user_message(text, files)  # bad images are refused before the message is kept
        with REPLIES.one(request.session_hash) as stop:  # before the box empties
            history = [*data[self.state], {"role": "user", "text": text, "images": files}]
            # the box empties and its send arrow turns into Stop while the reply streams
            streaming = gr.MultimodalTextbox(value=None, **BOX_FOR[running.STREAMING])
            yield history, to_chatbot(history), streaming
            for update in self._reply(history, data, stop, request.session_hash):
                yield *update, gr.skip()

    @warns(outputs=3)
    def on_edit(self, data: dict, edit: gr.EditData, request: gr.Request):
        """A user message edited in the chat: what followed it is kept as a branch (its pager
        flips back to it), and the reply runs again from the edited message."""
        history = list(data[self.state])
        shown = owners(history)
        if not 0 <= edit.index < len(shown) or shown[edit.index][1] != "text":
            raise InputError("Only the words of a message you sent can be edited.")
        number = shown[edit.index][0]
        text = edit.value if isinstance(edit.value, str) else ""
        if not text.strip() and not history[number].get("images"):
            raise InputError("The edited message is empty; type something or undo the edit.")
        edited = {k: v for k, v in history[number].items() if k != "imported"}  # now yours
        with REPLIES.one(request.session_hash) as stop:
            history = chats.branched(history, number, {**edited, "text": text})
            yield history, to_chatbot(history), box_for(running.STREAMING)
            for update in self._reply(history, data, stop, request.session_hash):
                yield *update, gr.skip()

    @warns(outputs=3)
    def on_regenerate(self, data: dict, request: gr.Request):
        """A new answer to the last message; the earlier ones are kept to flip back to."""
        history = list(data[self.state])
        earlier = history[-1] if history and history[-1]["role"] == "assistant" else None
        while history and history[-1]["role"] == "assistant":
            history.pop()
        if not history:
            raise InputError("Nothing to regenerate yet: send a message first.")
        with REPLIES.one(request.session_hash) as stop:
            box = box_for(running.STREAMING)  # Stop shows with the reply's first update
            for update in self._reply(history, data, stop, request.session_hash):
                yield *update, box
                box = gr.skip()
        if earlier is not None and history[-1]["role"] == "assistant":
            history[-1] = chats.with_earlier(history[-1], earlier)
            yield history, to_chatbot(history), gr.skip()

    @staticmethod
    def box_now(request: gr.Request) -> gr.MultimodalTextbox:
        """The box after any event: as the session's reply state says (a refused second send
        ends first, so Stop stays while the first reply streams)."""
        return box_for(REPLIES.state(request.session_hash))

    @warns(outputs=2)
    def on_flip(self, history: list, target: str):
        """A pager link in the chat (``flip-answer-N-STEP`` or ``flip-branch-N-STEP``): turn
        N shows its answer or branch STEP away."""
        history = list(history)
        try:
            kind, number, step = flip_of(target)
            turn = history[number]
        except (ValueError, IndexError):
            raise InputError("That pager is out of date; flip again from the chat.") from None
        if kind == "answer" and len(turn.get("versions", [])) > 1:
            history[number] = chats.flipped(turn, step)
        elif kind == "branch" and len(turn.get("branches", [])) > 1:
            history = chats.switched(history, number, step)
        else:
            raise InputError("There is one version of this message; nothing to flip to.")
        return history, to_chatbot(history)

    @staticmethod
    def on_undo(history: list):
        history = list(history)
        while history and history[-1]["role"] == "assistant":
            history.pop()
        if not history:
            return history, to_chatbot(history), gr.skip()
        last = history.pop()
        return history, to_chatbot(history), {"text": last["text"], "files": last["images"]}

    @warns(outputs=2)
    def on_model(self, choice: str, request: gr.Request, progress=gr.Progress()):  # noqa: B008
        """The chat's model picker: a model that is here answers this visitor now; another
        loads (auto level) where this visitor may load, replacing the owner's default."""
        if REPLIES.state(request.session_hash) != running.IDLE:
            raise InputError("A reply is streaming; press Stop first, then change the model.")
        here = backends.names(self.manager)
        if choice in here or self.manager.load_on_demand:
            key = backends.named(self.manager, choice)
            return key, gr.skip()
        spec = self.manager.catalog.get(choice)
        if spec.source == "hub" and hub.offline_mode():
            raise InputError(
                f"{spec.id} needs a download, and this app runs offline. Pick an offline "
                "model (lfm2-vl-tiny, lfm2-moe-tiny, …), or start the app online."
            )
        self.access.require_owner(request.headers, None, "load a model")
        self.manager.load(choice, "auto", progress=lambda f, m: progress(f, desc=m))
        return None, gr.skip()

    @staticmethod
    def on_stop(request: gr.Request) -> gr.MultimodalTextbox:
        return box_for(REPLIES.stop(request.session_hash))

    def _setup_events(self) -> None:
        """Wire the tab: replies, then the side panel; every change is stored in the browser."""
        changes = self._setup_replies()
        self._setup_chat_list(changes)

    def _inputs(self) -> set[Any]:
        """What a reply reads: the chat, the visitor's model, the prompt and every setting."""
        knobs = [*self.controls, *self.image_detail.knobs]
        return {self.state, self.pick, self.system_prompt, self.use_tools, *knobs}

    def _setup_replies(self) -> list[Any]:
        """Sending, regenerating, editing, stopping, undoing and clearing; the model picker,
        export and import. Returns the events that change the chat."""
        private, inputs = {"api_visibility": "private"}, self._inputs()
        self.model_picked = self.model.select(  # (.input fires twice per pick: two loads)
            self.on_model,
            self.model,
            [self.pick, self.model],
            show_progress_on=self.chip,  # one bar, where the model is named
            **private,
            **ACCELERATOR,
        )
        imported = self.session_panel.setup_events(inputs)
        chat = [self.state, self.chatbot]
        reply = {**private, **ACCELERATOR}
        # a second Enter while a reply streams reaches on_submit, which refuses it with a
        # sentence (gradio's default, trigger_mode "once", would drop it without a word)
        submitted = self.box.submit(
            self.on_submit, {self.box, *inputs}, [*chat, self.box], trigger_mode="multiple", **reply
        )
        regenerated = self.chatbot.retry(self.on_regenerate, inputs, [*chat, self.box], **reply)
        edited = self.chatbot.edit(self.on_edit, inputs, [*chat, self.box], **reply)
        self.box.stop(self.on_stop, None, self.box, queue=False, **private)
        undone = self.chatbot.undo(
            self.on_undo, self.state, [*chat, self.box], queue=False, **private
        )
        self.chatbot.example_select(_example, None, self.box, queue=False, **private)
        self.metrics_toggle.click(None, None, None, js=TOGGLE_METRICS)
        replies = [submitted, regenerated, edited]
        if gpu.zerogpu():  # the worker process cannot see the flag: cancel the event itself
            self.box.stop(None, None, None, cancels=replies)
        # Clear also cancels a running reply's event: gradio would otherwise send that event's
        # last output once more when it completes, after the cleared chat (seen under load)
        cleared = self.chatbot.clear(
            self.on_clear,
            [self.saved, self.chat_id, self.state],
            [*chat, self.undoable, self.undo_bar, self.undo_note],
            cancels=replies,
            **private,
        )
        # an event ended (a reply, a refusal, a Clear): Stop only while a reply still streams
        for event in (*replies, cleared):
            event.then(self.box_now, None, self.box, queue=False, **private)
        hide = gr.Row(visible=False)
        self.box.submit(lambda: hide, None, self.undo_bar, queue=False, **private)
        return [*replies, cleared, undone, imported]

    def _setup_chat_list(self, changes: list[Any]) -> None:
        """The side panel (open, new, rename, delete, undo), the pager's flips, and storing
        the chat in the browser after each of `changes` and each of these."""
        private = {"api_visibility": "private"}
        chat = [self.state, self.chatbot]
        removed = [self.undoable, self.undo_bar, self.undo_note]
        kept = [self.saved, self.chat_id, self.state, *self.settings_outputs()]
        store = (kept, [self.saved, self.past, self.rename_button, self.delete_button])
        save = {"queue": False, **private}
        flipped = self.flip_target.change(
            self.on_flip, [self.state, self.flip_target], chat, **save
        )
        brought = self.undo_button.click(
            chat_list.on_bring_back,
            [self.undoable, self.saved],
            [*chat, self.chat_id, self.title, self.undoable, self.undo_bar, *store[1]],
            **save,
        )
        for event in [*changes, flipped, brought]:  # each change is stored in the browser
            event.then(self.on_save, *store, **save)
        for control in self.settings_outputs():  # and each change of a setting
            control.input(self.on_save, *store, **save)
        opened = self.past.input(
            self.on_open,
            [self.saved, self.past],
            [*chat, self.chat_id, self.title, *self.settings_outputs()],
            **save,
        )
        opened.then(self.on_save, *store, **save)
        self.new_chat.click(
            chat_list.on_new, self.saved, [*chat, self.chat_id, self.past, self.title], **save
        ).then(self.on_save, *store, **save)
        self.rename_button.click(
            chat_list.on_rename,
            [self.saved, self.chat_id, self.state, self.title],
            [self.saved, self.past],
            **private,
        )
        self.delete_button.click(
            chat_list.on_delete,
            [self.saved, self.chat_id, self.state],
            [self.saved, self.past, *chat, self.chat_id, self.title, *removed],
            **private,
        ).then(self.on_save, *store, **save)


@dataclass(frozen=True)
class ChatParts:
    """What the Chat tab hands the app: what a model switch redraws or resets, the events that
    switch, and the page load's restore of the browser's chats (handler, input, outputs)."""

    chip: gr.Markdown
    model: gr.Dropdown
    model_picked: Any
    box: gr.MultimodalTextbox
    system_prompt: gr.Textbox
    controls: list[Any]
    image_detail: TilingControls
    open_inspector: gr.Button
    restore: tuple[Any, Any, list[Any]]


def build(manager: ModelManager, pick: gr.State, access: Access) -> ChatParts:
    tab = ChatTab(manager, pick, access)
    restored = [tab.state, tab.chatbot, tab.chat_id, tab.past, tab.saved, tab.title]
    restored += [*tab.settings_outputs(), tab.rename_button, tab.delete_button]
    return ChatParts(
        chip=tab.chip,
        model=tab.model,
        model_picked=tab.model_picked,
        box=tab.box,
        system_prompt=tab.system_prompt,
        controls=tab.controls,
        image_detail=tab.image_detail,
        open_inspector=tab.open_inspector,
        restore=(tab.on_restore, tab.saved, restored),
    )


def _example(selected: gr.SelectData) -> dict[str, Any]:
    """An example in the empty chat fills the box (Enter sends it)."""
    value = selected.value if isinstance(selected.value, dict) else {}
    files = [f.get("path") if isinstance(f, dict) else f for f in value.get("files") or []]
    return {"text": value.get("text", ""), "files": [f for f in files if f]}


# LaTeX as models write it: $$…$$ and \[…\] displayed, \(…\) inline (a lone $ stays a
# dollar sign: prices are more common in replies than inline maths)
LATEX = [
    {"left": "$$", "right": "$$", "display": True},
    {"left": "\\[", "right": "\\]", "display": True},
    {"left": "\\(", "right": "\\)", "display": False},
]
HELP_LINE = (
    "<sub>Enter sends · Shift+Enter: new line · Escape stops the reply · under a message: "
    "copy, edit ✎, regenerate ↻, undo ↶ · ◀ ▶ flip between answers and edits</sub>"
)
WELCOME = (
    "**Try an LFM2 model.** Ask anything, or attach an image (paste it, drop it, or use the "
    "clip in the box). Or start from an example:"
)
CHAT_EXAMPLES = [
    {
        "text": "What does this chart show? Which month is highest?",
        "files": [EXAMPLES[0]],
        "display_text": "What does this chart show?",
    },
    {"text": "Describe this picture in one sentence.", "files": [EXAMPLES[1]]},
    {"text": "Write a haiku about small, fast language models."},
]
TOGGLE_METRICS = """() => {  // kept for the next visit, like the theme (app.THEME_AT_LOAD)
  const hidden = document.body.classList.toggle("lfmui-no-metrics");
  localStorage.setItem("lfmui-metrics", hidden ? "hidden" : "shown");
}"""
