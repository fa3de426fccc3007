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

from lfmui import session, tiling, tools, turns
from lfmui.errors import InputError, LfmuiError
from lfmui.manager import ModelManager
from lfmui.settings import SAMPLING, Settings
from lfmui.ui import gpu
from lfmui.ui.controls import TilingControls, sampling_control
from lfmui.ui.render import kept_on_error, to_chatbot, user_errors
from lfmui.ui.running import ACCELERATOR, Running

EXAMPLES = [
    str(Path(__file__).resolve().parents[2] / "assets" / "examples" / name)
    for name in ("chart.png", "house.png")
]
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
):
    """Append an assistant turn to `history` and stream the reply into it (with the built-in
    tools when `use_tools`: their calls show as collapsible "Used tool" messages)."""
    loaded = manager.current()
    reads_images = loaded is None or loaded.spec.kind == "vl"
    reply = {
        "role": "assistant",
        "text": "",
        "status": "streaming",
        "metrics": {},
        "random_weights": bool(loaded and loaded.spec.random_weights),
    }
    try:
        conversation, dropped = turns.conversation_of(history, system_prompt, reads_images)
        for number, turn in enumerate(history):
            turn["images_dropped"] = number in dropped  # the chat says they were not sent
        if dropped:
            gr.Warning(f"{loaded.spec.id} reads text only: the images in this chat are not sent.")
        history.append(reply)
        yield history, to_chatbot(history)
        if use_tools:
            registry = dict(tools.BUILTINS)
            for step in gpu.tool_turn(
                manager, conversation, registry, settings=settings, stop=stop, tiling=tiling
            ):
                apply_step(reply, step)
                yield history, to_chatbot(history)
            return
        for event in gpu.chat_turn(
            manager, conversation, settings=settings, stop=stop, tiling=tiling
        ):
            apply_event(reply, event)
            yield history, to_chatbot(history)
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
    elif event.kind == "metrics":
        reply["metrics"] = event.data
    elif event.kind == "done":
        reply["status"] = event.data["reason"]
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


def build(manager: ModelManager) -> dict[str, Any]:
    state = gr.State([])
    chatbot = gr.Chatbot(label="Chat", height=480, sanitize_html=True, render_markdown=True)
    box = gr.MultimodalTextbox(
        placeholder="Type a message, paste or drop an image…",
        file_types=["image"],
        file_count="multiple",
        label="Message",
        show_label=False,
        sources=["upload"],
    )
    gr.Examples(
        [
            {"text": "What does this chart show? Which month is highest?", "files": [EXAMPLES[0]]},
            {"text": "Describe this picture in one sentence.", "files": [EXAMPLES[1]]},
            {"text": "Write a haiku about small, fast language models.", "files": []},
        ],
        inputs=box,
        label="Examples (they fill the box; press Enter to send)",
    )
    with gr.Row():
        stop_button = gr.Button("Stop", variant="stop")
        regenerate_button = gr.Button("Regenerate")
        undo_button = gr.Button("Undo last turn (edit)")
        clear_button = gr.Button("Clear")
    with gr.Accordion("Generation settings", open=False):
        system_prompt = gr.Textbox(label="System prompt", lines=2)
        with gr.Row():
            controls = [sampling_control(name) for name in SAMPLING]
        use_tools = gr.Checkbox(
            False, label="Use tools (the playground's built-ins: calculator, units, dates, …)"
        )
    with gr.Accordion("Image detail", open=False):
        image_detail = TilingControls("applies to the next message you send")
        open_inspector = gr.Button("Open the tiling inspector", size="sm")
    with gr.Accordion("Session: export, import, copy as code", open=False):
        with gr.Row():
            export_button = gr.Button("Export session", size="sm")
            code_button = gr.Button("Show as code", size="sm")
        with gr.Row():
            exported = gr.File(label="Exported session (download)", interactive=False)
            imported = gr.File(label="Import a session file", file_types=[".json"])
        transformers_box = gr.Code(language="python", label="transformers code", visible=False)
        client_box = gr.Code(language="python", label="gradio_client code", visible=False)

    # Handlers take their inputs as one dict (a set of components): the six controls are read
    # in one place, and gradio still injects the request.
    def settings_from(data: dict) -> dict[str, Any]:
        return settings_of([data[c] for c in controls])

    def reply_into(history: list, data: dict, stop: threading.Event):
        settings, detail = settings_from(data), image_detail.values(data)
        return stream_reply(
            manager, history, data[system_prompt], settings, stop, detail, data[use_tools]
        )

    @kept_on_error(outputs=3)
    def on_submit(data: dict, request: gr.Request):
        message = data[box] or {}
        text = message.get("text", "") or ""
        files = list(message.get("files", []) or [])
        if not text.strip() and not files:
            raise InputError("Type a message or attach an image first.")
        if len(files) > turns.MAX_IMAGES_PER_MESSAGE:
            raise InputError(f"Attach at most {turns.MAX_IMAGES_PER_MESSAGE} images per message.")
        turns.user_message(text, files)  # bad images are refused before the message is kept
        with _replies.one(request.session_hash) as stop:  # before the box empties
            history = [*data[state], {"role": "user", "text": text, "images": files}]
            yield history, to_chatbot(history), gr.MultimodalTextbox(value=None)
            for update in reply_into(history, data, stop):
                yield *update, gr.skip()

    @kept_on_error(outputs=2)
    def on_regenerate(data: dict, request: gr.Request):
        history = list(data[state])
        while history and history[-1]["role"] == "assistant":
            history.pop()
        if not history:
            raise InputError("Nothing to regenerate yet: send a message first.")
        with _replies.one(request.session_hash) as stop:
            yield from reply_into(history, data, stop)

    def on_undo(history):
        history = list(history)
        while history and history[-1]["role"] == "assistant":
            history.pop()
        if not history:
            return history, to_chatbot(history), gr.skip()
        last = history.pop()
        return history, to_chatbot(history), {"text": last["text"], "files": last["images"]}

    def on_stop(request: gr.Request) -> None:
        _replies.stop(request.session_hash)

    def bundle_of(data: dict) -> dict[str, Any]:
        loaded = manager.current()
        model = {"id": loaded.spec.id, "quantization": loaded.quantization} if loaded else {}
        return session.export_session(
            data[state],
            model,
            data[system_prompt],
            settings_from(data),
            image_detail.values(data),
            data[use_tools],
        )

    @user_errors
    def on_export(data: dict):
        if not data[state]:
            raise InputError("Nothing to export yet: send a message first.")
        return session.write_bundle(bundle_of(data))

    @user_errors
    def on_show_code(data: dict, request: gr.Request):
        loaded = manager.current()
        if loaded is None:
            raise InputError("Load a model first; the code names it.")
        bundle = bundle_of(data)
        repo = loaded.spec.hub_repo
        url = str(request.request.base_url) if request.request else "http://127.0.0.1:7860/"
        return (
            gr.Code(session.transformers_code(bundle, repo, loaded.spec.kind), visible=True),
            gr.Code(session.client_code(bundle, url), visible=True),
        )

    @user_errors
    def on_import(path: str | None):
        if not path:
            return [gr.skip()] * (3 + len(controls) + len(image_detail.knobs) + 2)
        bundle = session.read_bundle(path)
        restored = session.restore_turns(bundle)
        loaded = manager.current()
        wanted = bundle["model"].get("id")
        if wanted and (loaded is None or loaded.spec.id != wanted):
            gr.Warning(
                f"This session was made with {wanted}; load it in the Models tab to continue it."
            )
        sampling, cut = bundle["sampling"], bundle["tiling"]
        return [
            restored,
            to_chatbot(restored),
            str(bundle.get("system_prompt", "")),
            *(sampling.get(name, gr.skip()) for name in SAMPLING),
            *(cut.get(name, gr.skip()) for name in tiling.FIELDS),
            "custom",
            bool(bundle.get("use_tools")),
        ]

    inputs = {state, system_prompt, use_tools, *controls, *image_detail.knobs}
    export_button.click(on_export, inputs, exported, api_visibility="private")
    code_button.click(
        on_show_code, inputs, [transformers_box, client_box], api_visibility="private"
    )
    imported.upload(
        on_import,
        imported,
        [
            state,
            chatbot,
            system_prompt,
            *controls,
            *image_detail.knobs,
            image_detail.preset,
            use_tools,
        ],
        api_visibility="private",
    )
    submitted = box.submit(
        on_submit,
        {box, *inputs},
        [state, chatbot, box],
        api_visibility="private",
        **ACCELERATOR,
    )
    regenerated = regenerate_button.click(
        on_regenerate,
        inputs,
        [state, chatbot],
        api_visibility="private",
        **ACCELERATOR,
    )
    undo_button.click(on_undo, state, [state, chatbot, box], queue=False, api_visibility="private")
    stop_button.click(on_stop, None, None, queue=False, api_visibility="private")
    if gpu.zerogpu():  # the worker process cannot see the flag: cancel the event itself
        stop_button.click(None, None, None, cancels=[submitted, regenerated])
    clear_button.click(
        lambda: ([], []), None, [state, chatbot], queue=False, api_visibility="private"
    )
    # the Chatbot's own trash icon clears the rendering; the conversation must go with it
    chatbot.clear(lambda: [], None, state, queue=False, api_visibility="private")
    return {
        "system_prompt": system_prompt,
        "controls": controls,
        "image_detail": image_detail,
        "open_inspector": open_inspector,
    }


def defaults(manager: ModelManager) -> list[Any]:
    """System prompt and generation controls reset to the loaded model's recommended values."""
    loaded = manager.current()
    if loaded is None:
        return [gr.skip()] * (1 + len(SAMPLING))
    recommended = Settings.from_dict({}, defaults=dict(loaded.spec.sampling))
    return [loaded.spec.system_prompt, *(getattr(recommended, n) for n in SAMPLING)]
