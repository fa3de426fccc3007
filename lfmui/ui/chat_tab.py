"""The Chat tab: a multimodal message box and a streaming Chatbot over the resident model.

The session's conversation lives in a gr.State list of turns (the Chatbot is only its rendering),
so nothing the user sent is lost when a reply fails or is stopped.
"""

from __future__ import annotations

import threading
from typing import Any

import gradio as gr

from lfmui import images, turns
from lfmui.errors import InputError, LfmuiError
from lfmui.manager import ModelManager
from lfmui.ui.render import to_chatbot, user_errors

MAX_IMAGES_PER_MESSAGE = 4
_stops: dict[str, threading.Event] = {}  # session -> Stop flag of its running reply


def conversation_of(turn_list: list[dict[str, Any]], system_prompt: str) -> list[dict[str, Any]]:
    """Model conversation (system prompt, images as parts) from the session's turns."""
    conversation: list[dict[str, Any]] = []
    if system_prompt.strip():
        conversation.append({"role": "system", "content": system_prompt})
    for turn in turn_list:
        if turn["role"] == "assistant":
            if turn["text"]:
                conversation.append({"role": "assistant", "content": turn["text"]})
            continue
        parts = [{"type": "image", "image": images.load_safe(p)} for p in turn.get("images", [])]
        parts.append({"type": "text", "text": turn["text"]})
        conversation.append({"role": "user", "content": parts})
    return conversation


def respond(
    manager: ModelManager,
    message: dict,
    history: list,
    system_prompt: str,
    max_new_tokens: float,
    request: gr.Request,
):
    """Append the user's message, then stream the reply into the last turn."""
    text = (message or {}).get("text", "") or ""
    files = list((message or {}).get("files", []) or [])
    if not text.strip() and not files:
        raise InputError("Type a message or attach an image first.")
    if len(files) > MAX_IMAGES_PER_MESSAGE:
        raise InputError(f"Attach at most {MAX_IMAGES_PER_MESSAGE} images per message.")
    for path in files:
        images.load_safe(path)  # reject bad images before the message joins the history
    stop = threading.Event()
    _stops[request.session_hash] = stop
    history = [*history, {"role": "user", "text": text, "images": files}]
    loaded = manager.current()
    reply = {
        "role": "assistant",
        "text": "",
        "status": "streaming",
        "metrics": {},
        "random_weights": bool(loaded and loaded.spec.random_weights),
    }
    history.append(reply)
    yield history, to_chatbot(history), gr.MultimodalTextbox(value=None)
    try:
        conversation = conversation_of(history[:-1], system_prompt)
        for event in turns.chat_turn(
            manager, conversation, {"max_new_tokens": max_new_tokens}, stop
        ):
            if event.kind == "text":
                reply["text"] += event.text
            elif event.kind == "metrics":
                reply["metrics"] = event.data
            elif event.kind == "done":
                reply["status"] = event.data["reason"]
            elif event.kind == "error":
                reply.update(status="error", error="the model failed while generating; try again")
            yield history, to_chatbot(history), gr.skip()
    except LfmuiError as exc:
        reply.update(status="error", error=str(exc))
        yield history, to_chatbot(history), gr.skip()
    finally:
        _stops.pop(request.session_hash, None)


def stop(request: gr.Request) -> None:
    flag = _stops.get(request.session_hash)
    if flag is not None:
        flag.set()


def build(manager: ModelManager) -> dict[str, Any]:
    state = gr.State([])
    chatbot = gr.Chatbot(label="Chat", height=480, sanitize_html=True, render_markdown=True)
    box = gr.MultimodalTextbox(
        placeholder="Type a message, paste or drop an image…",
        file_types=["image"],
        file_count="multiple",
        show_label=False,
        sources=["upload"],
    )
    with gr.Row():
        stop_button = gr.Button("Stop", variant="stop")
        clear_button = gr.Button("Clear")
    with gr.Accordion("Settings", open=False):
        system_prompt = gr.Textbox(label="System prompt", lines=2)
        max_new_tokens = gr.Slider(1, 2048, value=256, step=1, label="Max new tokens")

    @user_errors
    def on_submit(message, history, system, limit, request: gr.Request):
        yield from respond(manager, message, history, system, limit, request)

    box.submit(
        on_submit,
        [box, state, system_prompt, max_new_tokens],
        [state, chatbot, box],
        api_visibility="private",
        concurrency_id="accelerator",
    )
    stop_button.click(stop, None, None, queue=False, api_visibility="private")
    clear_button.click(
        lambda: ([], []), None, [state, chatbot], queue=False, api_visibility="private"
    )
    return {"system_prompt": system_prompt}
