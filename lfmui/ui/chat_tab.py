"""The Chat tab: a multimodal message box and a streaming Chatbot over the resident model.

The session's conversation lives in a gr.State list of turns (the Chatbot is only its rendering),
so nothing the user sent is lost when a reply fails or is stopped. Stop sets the session's flag,
which the engine checks at every generated token.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import gradio as gr

from lfmui import backends, chats, offline, session, tiling, tools, turns
from lfmui.errors import InputError, LfmuiError, NoModelLoaded
from lfmui.manager import ModelManager
from lfmui.settings import SAMPLING, Settings
from lfmui.ui import gpu
from lfmui.ui.controls import TilingControls, sampling_control
from lfmui.ui.guard import upload_folder
from lfmui.ui.render import owners, to_chatbot, warns
from lfmui.ui.running import ACCELERATOR, Running

EXAMPLES = [
    str(Path(__file__).resolve().parents[2] / "assets" / "examples" / name)
    for name in ("chart.png", "house.png")
]
CLEAR_WAIT_S = 10.0  # how long Clear waits for a stopped reply to end (it stops within a token)
_replies = Running(  # the chat's running reply per session
    "A reply is still streaming in this chat; wait for it or press Stop, then send again."
)


def settings_of(values: list[Any]) -> dict[str, Any]:
    settings = dict(zip(SAMPLING, values, strict=True))
    if settings["seed"] in (None, "", -1):
        settings["seed"] = None
    return settings


def stream_reply(
    manager: ModelManager,
    history: list,
    system_prompt: str,
    settings: dict[str, Any],
    stop: threading.Event,
    tiling: dict[str, Any] | None = None,
    use_tools: bool = False,
    pick: str | None = None,
    client: str = "",
):
    """Append an assistant turn to `history` and stream the reply into it from the model the
    visitor picked (`pick`, lfmui.backends; None: the default one), with the built-in tools
    when `use_tools`: their calls show as collapsible "Used tool" messages."""
    serving = manager.readiness(pick)
    reply = {
        "role": "assistant",
        "text": "",
        "status": "streaming",
        "metrics": {},
        "random_weights": serving["random_weights"],
    }
    try:
        conversation, dropped = turns.conversation_of(
            history, system_prompt, serving["reads_images"]
        )
        for number, turn in enumerate(history):
            turn["images_dropped"] = number in dropped  # the chat says they were not sent
        if dropped:
            gr.Warning(f"{serving['label']} reads text only: the images in this chat are not sent.")
        earlier = to_chatbot(history)  # rendered once: only the reply changes per token
        history.append(reply)
        yield history, earlier + to_chatbot([reply])
        if use_tools:
            registry = dict(tools.BUILTINS)
            for step in gpu.tool_turn(
                manager,
                conversation,
                registry,
                settings=settings,
                stop=stop,
                tiling=tiling,
                model=pick,
                client=client,
            ):
                apply_step(reply, step)
                yield history, earlier + to_chatbot([reply])
            return
        for event in gpu.chat_turn(
            manager,
            conversation,
            settings=settings,
            stop=stop,
            tiling=tiling,
            model=pick,
            client=client,
        ):
            apply_event(reply, event)
            yield history, earlier + to_chatbot([reply])
    except LfmuiError as exc:
        if reply not in history:
            history.append(reply)
        reply.update(status="error", error=str(exc))
        yield history, to_chatbot(history)
    finally:
        if reply["status"] == "streaming":  # the client went away mid-reply
            reply["status"] = "stopped"


def apply_event(reply: dict[str, Any], event: Any) -> None:
    """An engine event folded into the assistant turn."""
    if event.kind == "text":
        reply["text"] += event.text
    elif event.kind == "thinking":
        reply["thinking"] = reply.get("thinking", "") + event.text
    elif event.kind == "metrics":
        reply["metrics"] = event.data
    elif event.kind == "done":
        reply["status"] = event.data["reason"]
        if event.data.get("thinking_cut"):
            reply["thinking_cut"] = True
    elif event.kind == "error":
        reply.update(status="error", error=event.data["message"])


def apply_step(reply: dict[str, Any], step: turns.Step) -> None:
    """A tool-turn step folded into the assistant turn: calls and results become its tools."""
    if isinstance(step, turns.Text):
        reply["text"] += step.text
    elif isinstance(step, turns.Parsed):
        reply["metrics"] = step.metrics
        if not step.answered:
            reply["text"] = ""  # the call block: shown as "Used tool" messages instead
            reply.setdefault("messages", []).append({"role": "assistant", "content": step.raw})
    elif isinstance(step, turns.Result):
        reply.setdefault("tools", []).append(step.result.to_json())
        # later turns see the call and its result, as the model wrote and read them
        reply.setdefault("messages", []).append({"role": "tool", "content": step.result.output})
    elif isinstance(step, turns.Final):
        reply.update(text=step.text, status=step.reason)
    elif isinstance(step, turns.Failed):
        reply.update(status="error", error=step.error)


# what an import sets: state, chatbot, system prompt, the sampling controls, the tiling knobs and
# preset, use tools (ChatTab._import_outputs, in this order)
IMPORT_OUTPUTS = 3 + len(SAMPLING) + len(tiling.FIELDS) + 2


class ChatTab:
    """The Chat tab: its components (made in ``__init__``) and its handlers, each reading its
    inputs as one dict of components (gradio still injects the request)."""

    def __init__(self, manager: ModelManager, pick: gr.State) -> None:
        self.manager = manager
        self.pick = pick  # the model this visitor picked (lfmui.backends; None: the default)
        self.state = gr.State([])
        self.chip = gr.Markdown(elem_id="model-chip")  # what answers (the app keeps it current)
        # the chats, kept in this browser (lfmui.chats): a reload or a closed tab loses nothing
        self.saved = gr.BrowserState(
            chats.EMPTY, storage_key="lfmui-chats", secret=chats.secret(offline.cache_dir())
        )
        self.chat_id = gr.State("")
        with gr.Row(equal_height=True):
            self.past = gr.Dropdown(
                [],
                label="Chats kept in this browser",
                scale=4,
                elem_id="past-chats",
            )
            self.new_chat = gr.Button("New chat", size="sm", scale=1, elem_id="new-chat")
        self.chatbot = gr.Chatbot(
            label="Chat",
            height="min(480px, 55vh)",  # a phone keeps the message box on its first screen
            sanitize_html=True,
            render_markdown=True,
            editable="user",  # a sent message can be edited: the chat re-runs from it
            elem_id="chat-pane",
            latex_delimiters=LATEX,
        )
        self.box = gr.MultimodalTextbox(
            placeholder=BOX_HINT,
            file_types=["image"],
            file_count="multiple",
            label="Message",
            show_label=False,
            sources=["upload"],
        )
        chart, house = EXAMPLES
        gr.Examples(
            [
                {
                    "text": "What does this chart show? Which month is highest?",
                    "files": [EXAMPLES[0]],
                },
                {"text": "Describe this picture in one sentence.", "files": [EXAMPLES[1]]},
                {"text": "Write a haiku about small, fast language models.", "files": []},
            ],
            inputs=self.box,
            label="Examples (they fill the box; press Enter to send)",
        )
        with gr.Row():  # Stop lives in the message box, in place of its send arrow
            self.earlier_button = gr.Button("◀ Earlier answer", size="sm", min_width=80)
            self.regenerate_button = gr.Button("Regenerate")
            self.undo_button = gr.Button("Undo last turn (edit)")
            self.clear_button = gr.Button("Clear", elem_id="chat-clear")
            self.later_button = gr.Button("Later answer ▶", size="sm", min_width=80)
        with gr.Accordion("Generation settings", open=False):
            self.system_prompt = gr.Textbox(label="System prompt", lines=2)
            with gr.Row():
                self.controls = [sampling_control(name) for name in SAMPLING]
            self.use_tools = gr.Checkbox(
                False, label="Use tools (the playground's built-ins: calculator, units, dates, …)"
            )
        with gr.Accordion("Image detail", open=False):
            self.image_detail = TilingControls("applies to the next message you send")
            self.open_inspector = gr.Button("Open the tiling inspector", size="sm")
        with gr.Accordion("Session: export, import, copy as code", open=False):
            with gr.Row():
                self.export_button = gr.Button("Export session", size="sm")
                self.code_button = gr.Button("Show as code", size="sm")
            with gr.Row():
                self.exported = gr.File(label="Exported session (download)", interactive=False)
                self.imported = gr.File(
                    label="Import a session file", file_types=[".json"], elem_id="session-import"
                )
            self.transformers_box = gr.Code(
                language="python", label="transformers code", visible=False
            )
            self.client_box = gr.Code(language="python", label="gradio_client code", visible=False)
        self._wire()

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

    def _bundle(self, data: dict) -> dict[str, Any]:
        loaded = self.manager.current()
        model = {"id": loaded.spec.id, "quantization": loaded.quantization} if loaded else {}
        return session.export_session(
            data[self.state],
            model,
            data[self.system_prompt],
            self.settings(data),
            self.image_detail.values(data),
            data[self.use_tools],
        )

    # ---- chats kept in the browser ------------------------------------------------------------
    def on_restore(self, saved: Any):
        """Page load: the chat in use comes back (the others are listed)."""
        stored, said = chats.read(saved, UPLOADS)
        for sentence in said:
            gr.Warning(sentence)
        if not stored:
            fresh = chats.new_id()
            return [], [], fresh, _listed([], fresh), chats.write([], fresh, [])
        current = stored[0]
        turns = current["turns"]
        value = chats.write(stored, current["id"], turns)  # stored again, cleaned
        return turns, to_chatbot(turns), current["id"], _listed(stored, current["id"]), value

    @staticmethod
    def on_save(saved: Any, chat_id: str, history: list):
        """After every change to the chat: it is stored, first in the list."""
        stored, _ = chats.read(saved, UPLOADS)
        value = chats.write(stored, chat_id, history)
        return value, _listed(value["chats"], chat_id)

    @staticmethod
    def on_open(saved: Any, chosen: str):
        stored, _ = chats.read(saved, UPLOADS)
        chat = next((c for c in stored if c["id"] == chosen), None)
        if chat is None:
            gr.Warning("That chat is no longer kept in this browser.")
            return gr.skip(), gr.skip(), gr.skip()
        return chat["turns"], to_chatbot(chat["turns"]), chat["id"]

    @staticmethod
    def on_new(saved: Any):
        stored, _ = chats.read(saved, UPLOADS)
        fresh = chats.new_id()
        return [], [], fresh, _listed(stored, fresh)

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
        with _replies.one(request.session_hash) as stop:  # before the box empties
            history = [*data[self.state], {"role": "user", "text": text, "images": files}]
            # the box empties and its send arrow turns into Stop while the reply streams
            streaming = gr.MultimodalTextbox(value=None, submit_btn=False, stop_btn=True)
            yield history, to_chatbot(history), streaming
            for update in self._reply(history, data, stop, request.session_hash):
                yield *update, gr.skip()

    @warns(outputs=3)
    def on_edit(self, data: dict, edit: gr.EditData, request: gr.Request):
        """A user message edited in the chat: the turns after it go, the reply runs again."""
        history = list(data[self.state])
        shown = owners(history)
        if not 0 <= edit.index < len(shown) or shown[edit.index][1] != "text":
            raise InputError("Only the words of a message you sent can be edited.")
        number = shown[edit.index][0]
        text = edit.value if isinstance(edit.value, str) else ""
        if not text.strip() and not history[number].get("images"):
            raise InputError("The edited message is empty; type something or undo the edit.")
        edited = {k: v for k, v in history[number].items() if k != "imported"}  # now yours
        history = [*history[:number], {**edited, "text": text}]
        with _replies.one(request.session_hash) as stop:
            yield history, to_chatbot(history), stop_ready()
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
        with _replies.one(request.session_hash) as stop:
            box = stop_ready()  # the send arrow turns into Stop with the reply's first update
            for update in self._reply(history, data, stop, request.session_hash):
                yield *update, box
                box = gr.skip()
        if earlier is not None and history[-1]["role"] == "assistant":
            history[-1] = chats.with_earlier(history[-1], earlier)
            yield history, to_chatbot(history), gr.skip()

    @staticmethod
    def box_now(request: gr.Request) -> gr.MultimodalTextbox:
        """The box's button after an event: Stop while this session's reply still streams
        (a refused second send ends first), else the send arrow."""
        running = _replies.flag(request.session_hash) is not None
        return stop_ready() if running else send_ready()

    @warns(outputs=2)
    def on_flip(self, history: list, step: int):
        """Show an earlier (-1) or later (+1) answer to the last message."""
        history = list(history)
        last = history[-1] if history else None
        if not last or last["role"] != "assistant" or len(last.get("versions", [])) < 2:
            raise InputError("There is one answer to this message; Regenerate makes another.")
        history[-1] = chats.flipped(last, step)
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

    @staticmethod
    def on_stop(request: gr.Request) -> None:
        _replies.stop(request.session_hash)

    @staticmethod
    def on_clear(request: gr.Request):
        """The chat empties. A reply still streaming in it is stopped first and has ended
        before the empty chat is sent: its last update would otherwise fill the chat again."""
        if not _replies.stop_and_wait(request.session_hash, CLEAR_WAIT_S):
            gr.Warning("The reply is still stopping; press Clear again in a moment.")
            return gr.skip(), gr.skip()
        return [], []

    @warns(outputs=1)
    def on_export(self, data: dict):
        if not data[self.state]:
            raise InputError("Nothing to export yet: send a message first.")
        return session.write_bundle(self._bundle(data))

    @warns(outputs=2)
    def on_show_code(self, data: dict, request: gr.Request):
        loaded = self.manager.current()
        if loaded is None:
            raise InputError("Load a model first; the code names it.")
        bundle = self._bundle(data)
        url = str(request.request.base_url) if request.request else "http://127.0.0.1:7860/"
        return (
            gr.Code(
                session.transformers_code(bundle, loaded.spec.hub_repo, loaded.spec.kind),
                visible=True,
            ),
            gr.Code(session.client_code(bundle, url), visible=True),
        )

    @warns(outputs=IMPORT_OUTPUTS)
    def on_import(self, path: str | None):
        if not path:
            return [gr.skip()] * len(self._import_outputs())
        restored = session.restore(session.read_bundle(path))
        loaded = self.manager.current()
        wanted = restored.model_id
        if wanted and (loaded is None or loaded.spec.id != wanted):
            gr.Warning(
                f"This session was made with {wanted[:80]}; load it in the Models tab to "
                "continue it."
            )
        for note in restored.notes:
            gr.Warning(note)
        sampling, cut = restored.sampling, restored.tiling
        return [
            restored.turns,
            to_chatbot(restored.turns),
            restored.system_prompt,
            *(sampling.get(name, gr.skip()) for name in SAMPLING),
            *(cut.get(name, gr.skip()) for name in tiling.FIELDS),
            "custom" if cut else gr.skip(),
            restored.use_tools,
        ]

    def _import_outputs(self) -> list[Any]:
        detail = self.image_detail
        outputs = [
            self.state,
            self.chatbot,
            self.system_prompt,
            *self.controls,
            *detail.knobs,
            detail.preset,
            self.use_tools,
        ]
        assert len(outputs) == IMPORT_OUTPUTS
        return outputs

    def _wire(self) -> None:
        private = {"api_visibility": "private"}
        inputs = {
            self.state,
            self.pick,
            self.system_prompt,
            self.use_tools,
            *self.controls,
            *self.image_detail.knobs,
        }
        self.export_button.click(self.on_export, inputs, self.exported, **private)
        self.code_button.click(
            self.on_show_code, inputs, [self.transformers_box, self.client_box], **private
        )
        self._imported = self.imported.upload(
            self.on_import, self.imported, self._import_outputs(), **private
        )
        chat = [self.state, self.chatbot]
        submitted = self.box.submit(
            self.on_submit, {self.box, *inputs}, [*chat, self.box], **private, **ACCELERATOR
        )
        regenerated = self.regenerate_button.click(
            self.on_regenerate, inputs, [*chat, self.box], **private, **ACCELERATOR
        )
        edited = self.chatbot.edit(
            self.on_edit, inputs, [*chat, self.box], **private, **ACCELERATOR
        )
        self.box.stop(self.on_stop, None, None, queue=False, **private)
        self._undone = self.undo_button.click(
            self.on_undo, self.state, [*chat, self.box], queue=False, **private
        )
        if gpu.zerogpu():  # the worker process cannot see the flag: cancel the event itself
            self.box.stop(None, None, None, cancels=[submitted, regenerated, edited])
        # queued, like the page's restore of the kept chats: a Clear right after a reload comes
        # after that restore instead of being overtaken by it (the restored chat came back)
        # Clear also cancels a running reply's event: gradio would otherwise send that event's
        # last output once more when it completes, after the cleared chat (seen under load)
        replies = [submitted, regenerated, edited]
        cleared = self.clear_button.click(self.on_clear, None, chat, cancels=replies, **private)
        # the Chatbot's own trash icon clears the rendering; the conversation must go with it
        trashed = self.chatbot.clear(self.on_clear, None, chat, cancels=replies, **private)
        # an event ended (a reply, a refusal, a Clear): Stop only while a reply still streams
        for event in (*replies, cleared, trashed):
            event.then(self.box_now, None, self.box, queue=False, **private)
        store = ([self.saved, self.chat_id, self.state], [self.saved, self.past])
        flips = [
            button.click(lambda h, s=step: self.on_flip(h, s), self.state, chat, **private)
            for button, step in ((self.earlier_button, -1), (self.later_button, 1))
        ]
        changes = [submitted, regenerated, edited, cleared, trashed, self._undone, self._imported]
        for event in [*changes, *flips]:  # each change to the chat is stored in the browser
            event.then(self.on_save, *store, queue=False, **private)
        opened = self.past.input(
            self.on_open, [self.saved, self.past], [*chat, self.chat_id], queue=False, **private
        )
        opened.then(self.on_save, *store, queue=False, **private)
        self.new_chat.click(
            self.on_new, self.saved, [*chat, self.chat_id, self.past], queue=False, **private
        )


def build(manager: ModelManager, pick: gr.State) -> dict[str, Any]:
    tab = ChatTab(manager, pick)
    return {
        "restore": (
            tab.on_restore,
            tab.saved,
            [tab.state, tab.chatbot, tab.chat_id, tab.past, tab.saved],
        ),
        "chip": tab.chip,
        "box": tab.box,
        "system_prompt": tab.system_prompt,
        "controls": tab.controls,
        "image_detail": tab.image_detail,
        "open_inspector": tab.open_inspector,
    }


UPLOADS = upload_folder()  # where gradio keeps uploads: stored images must be there


def _listed(stored: list[dict[str, Any]], current: str) -> gr.Dropdown:
    """The kept chats as the picker lists them, the one in use selected."""
    choices = [(c["title"], c["id"]) for c in stored]
    return gr.Dropdown(
        choices=choices, value=current if any(c[1] == current for c in choices) else None
    )


# LaTeX as models write it: $$…$$ and \[…\] displayed, \(…\) inline (a lone $ stays a
# dollar sign: prices are more common in replies than inline maths)
LATEX = [
    {"left": "$$", "right": "$$", "display": True},
    {"left": "\\[", "right": "\\]", "display": True},
    {"left": "\\(", "right": "\\)", "display": False},
]
BOX_HINT = "Type a message, paste or drop an image…"


def send_ready() -> gr.MultimodalTextbox:
    return gr.MultimodalTextbox(submit_btn=True, stop_btn=False)


def stop_ready() -> gr.MultimodalTextbox:
    return gr.MultimodalTextbox(submit_btn=False, stop_btn=True)


TEXT_ONLY_HINT = "Type a message (this model reads text only: no images)"


def message_box(manager: ModelManager, pick: str | None = None) -> gr.MultimodalTextbox:
    """The message box for what answers this visitor now: a text-only model takes no
    attachments, so an image is refused before Send, not after."""
    images = manager.readiness(pick)["reads_images"]
    return gr.MultimodalTextbox(
        sources=["upload"] if images else [],
        file_types=["image"] if images else [".none"],
        placeholder=BOX_HINT if images else TEXT_ONLY_HINT,
    )


def defaults(manager: ModelManager, pick: str | None = None) -> list[Any]:
    """System prompt and generation controls reset to the picked model's recommended values."""
    try:
        backend = backends.of(manager, pick)
    except NoModelLoaded:
        return [gr.skip()] * (1 + len(SAMPLING))
    recommended = Settings.from_dict({}, defaults=backend.sampling)
    return [backend.system_prompt, *(getattr(recommended, n) for n in SAMPLING)]
