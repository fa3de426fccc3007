"""The chat's reply, apart from the tab's layout: ``stream_reply`` streams one reply into the
history from the visitor's model (through the ZeroGPU wrappers in ``gpu``), folding engine
events and tool steps into the assistant turn; ``REPLIES`` is each session's reply state
(``running``), and the message box is drawn from it (``BOX_FOR``, ``message_box``).
"""

from __future__ import annotations

import threading
from typing import Any

import gradio as gr

from lfmui import backends, tool_turn, tools, turns
from lfmui.errors import LfmuiError, NoModelLoaded
from lfmui.manager import ModelManager
from lfmui.settings import SAMPLING, Settings
from lfmui.ui import gpu, running
from lfmui.ui.render import to_chatbot
from lfmui.ui.running import Running

CLEAR_GRACE_S = 0.3  # after a stopped reply has ended, before the cleared chat is sent
CLEAR_WAIT_S = 10.0  # how long Clear waits for a stopped reply to end (it stops within a token)
REPLIES = Running(  # the chat's running reply per session
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
        options = {"settings": settings, "stop": stop, "tiling": tiling, "model": pick}
        for _ in _folded(manager, conversation, reply, use_tools, client=client, **options):
            yield history, earlier + to_chatbot([reply])
    except LfmuiError as exc:
        if reply not in history:
            history.append(reply)
        reply.update(status="error", error=str(exc))
        yield history, to_chatbot(history)
    finally:
        if reply["status"] == "streaming":  # the client went away mid-reply
            reply["status"] = "stopped"


def _folded(manager, conversation, reply: dict[str, Any], use_tools: bool, **options: Any):
    """The turn's events (with the built-in tools, its steps) folded into `reply` one by one;
    yields after each."""
    if use_tools:
        for step in gpu.tool_turn(manager, conversation, dict(tools.BUILTINS), **options):
            apply_step(reply, step)
            yield
        return
    for event in gpu.chat_turn(manager, conversation, **options):
        apply_event(reply, event)
        yield


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


def apply_step(reply: dict[str, Any], step: tool_turn.Step) -> None:
    """A tool-turn step folded into the assistant turn: calls and results become its tools."""
    if isinstance(step, tool_turn.Text):
        reply["text"] += step.text
    elif isinstance(step, tool_turn.Parsed):
        reply["metrics"] = step.metrics
        if not step.answered:
            reply["text"] = ""  # the call block: shown as "Used tool" messages instead
            reply.setdefault("messages", []).append({"role": "assistant", "content": step.raw})
    elif isinstance(step, tool_turn.Result):
        reply.setdefault("tools", []).append(step.result.to_json())
        # later turns see the call and its result, as the model wrote and read them
        reply.setdefault("messages", []).append({"role": "tool", "content": step.result.output})
    elif isinstance(step, tool_turn.Final):
        reply.update(text=step.text, status=step.reason)
    elif isinstance(step, tool_turn.Failed):
        reply.update(status="error", error=step.error)


BOX_HINT = "Type a message, paste or drop an image…"
# the message box in each reply state (running.TRANSITIONS): the send arrow only when idle
BOX_FOR = {
    running.IDLE: {"submit_btn": True, "stop_btn": False},
    running.STREAMING: {"submit_btn": False, "stop_btn": True},
    running.STOPPING: {"submit_btn": False, "stop_btn": True},
}


def box_for(state: str) -> gr.MultimodalTextbox:
    return gr.MultimodalTextbox(**BOX_FOR[state])


TEXT_ONLY_HINT = "Type a message (this model reads text only: no images)"


def message_box(manager: ModelManager, pick: str | None = None) -> gr.MultimodalTextbox:
    """The message box for what answers this visitor now: a text-only model takes no
    attachments, so an image is refused before Send, not after. It leaves the box's value and
    its send/Stop button alone: only the reply's own events set those (on_submit's first
    yield, on_stop, box_now), since a page-load or model-switch update can land seconds
    late, in the middle of a reply, and a reply state read before the reply began would take
    Stop away and put the sent message back in the box."""
    images = manager.readiness(pick)["reads_images"]
    return gr.MultimodalTextbox(
        sources=["upload"] if images else [],
        file_types=["image"] if images else [".none"],
        placeholder=BOX_HINT if images else TEXT_ONLY_HINT,
    )


SWITCH_INFO = {
    True: "this model's template can turn thinking off",
    False: "this model's template cannot turn thinking off (a thinking model: use the budget)",
}


def defaults(manager: ModelManager, pick: str | None = None) -> list[Any]:
    """System prompt and generation controls reset to the picked model's recommended values."""
    try:
        backend = backends.of(manager, pick)
    except NoModelLoaded:
        return [gr.skip()] * (1 + len(SAMPLING))
    recommended = Settings.from_dict({}, defaults=backend.sampling)
    values = [getattr(recommended, n) for n in SAMPLING]
    # the thinking switch: on, and saying whether the model's template can turn thinking off
    # (it stays clickable: a chat kept with it off must be able to turn it back on)
    think = SAMPLING.index("think")
    values[think] = gr.update(value=values[think], info=SWITCH_INFO[backend.thinking_switch])
    return [backend.system_prompt, *values]
