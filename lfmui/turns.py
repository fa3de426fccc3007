"""One chat turn: lease the resident model, build its inputs, stream the reply.

The UI and the API call ``chat_turn``; it never touches gradio. Errors the user can act on are
raised as ``LfmuiError`` before generation starts, or arrive as an ``error`` event after.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from lfmui import engine, prompts
from lfmui.errors import InputError
from lfmui.manager import ModelManager

MAX_PROMPT_CHARS = 100_000


def chat_turn(
    manager: ModelManager,
    conversation: list[dict[str, Any]],
    settings: dict[str, Any] | None = None,
    stop: threading.Event | None = None,
) -> Iterator[engine.Event]:
    """Stream the assistant's reply to `conversation` (the last message is the user's)."""
    _check_text(conversation)
    with manager.lease() as loaded:
        checked = engine.Settings.from_dict(settings or {}, defaults=dict(loaded.spec.sampling))
        started = time.perf_counter()
        inputs = prompts.build_inputs(loaded, conversation)
        preprocess = {"preprocess_s": round(time.perf_counter() - started, 4)}
        yield from engine.stream(loaded, inputs, checked, stop, extra_metrics=preprocess)


def _check_text(conversation: list[dict[str, Any]]) -> None:
    total = 0
    for message in conversation:
        content = message["content"]
        if isinstance(content, str):
            total += len(content)
        else:
            total += sum(len(p.get("text", "")) for p in content)
    if total > MAX_PROMPT_CHARS:
        raise InputError(
            f"The conversation holds {total:,} characters; the limit is {MAX_PROMPT_CHARS:,}. "
            "Shorten the message or clear the chat."
        )
