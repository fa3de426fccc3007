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
from lfmui.tiling import Tiling

MAX_PROMPT_CHARS = 100_000
MAX_IMAGES_PER_MESSAGE = 4
MAX_IMAGES_PER_CHAT = 12


def chat_turn(
    manager: ModelManager,
    conversation: list[dict[str, Any]],
    settings: dict[str, Any] | None = None,
    stop: threading.Event | None = None,
    tiling: dict[str, Any] | None = None,
) -> Iterator[engine.Event]:
    """Stream the assistant's reply to `conversation` (the last message is the user's).

    `tiling` overrides the loaded model's image-processor defaults for this request only.
    """
    check_conversation(conversation)
    with manager.lease() as loaded:
        checked = engine.Settings.from_dict(settings or {}, defaults=dict(loaded.spec.sampling))
        cut = tiling_of(loaded, tiling)
        started = time.perf_counter()
        inputs = prompts.build_inputs(loaded, conversation, cut)
        preprocess = {"preprocess_s": round(time.perf_counter() - started, 4)}
        _check_context(loaded, inputs, checked.max_new_tokens)
        yield from engine.stream(loaded, inputs, checked, stop, extra_metrics=preprocess)


def tiling_of(loaded: Any, values: dict[str, Any] | None) -> Tiling | None:
    """Validated per-request tiling over the loaded model's defaults (None for text models)."""
    if loaded.spec.kind != "vl":
        return None
    return Tiling.from_dict(values, defaults=Tiling.from_processor(loaded.processor))


def check_conversation(conversation: list[dict[str, Any]]) -> None:
    """Caps checked before any model work: characters, images per message and per chat."""
    total = pictures = 0
    for message in conversation:
        content = message["content"]
        if isinstance(content, str):
            total += len(content)
            continue
        total += sum(len(p.get("text", "")) for p in content)
        here = sum(p.get("type") == "image" for p in content)
        if here > MAX_IMAGES_PER_MESSAGE:
            raise InputError(
                f"A message holds {here} images; attach at most {MAX_IMAGES_PER_MESSAGE} "
                "per message."
            )
        pictures += here
    if pictures > MAX_IMAGES_PER_CHAT:
        raise InputError(
            f"The chat holds {pictures} images; the limit is {MAX_IMAGES_PER_CHAT}. "
            "Clear the chat (or undo turns) and send the image again."
        )
    if total > MAX_PROMPT_CHARS:
        raise InputError(
            f"The conversation holds {total:,} characters; the limit is {MAX_PROMPT_CHARS:,}. "
            "Shorten the message or clear the chat."
        )


def _check_context(loaded: Any, inputs: Any, max_new_tokens: int) -> None:
    context = context_tokens(loaded)
    prompt = int(inputs["input_ids"].shape[-1])
    if prompt + max_new_tokens > context:
        raise InputError(
            f"The conversation is {prompt:,} tokens; with max new tokens {max_new_tokens:,} it "
            f"exceeds the model's context of {context:,}. Clear the chat, lower the image "
            "detail, or lower max new tokens."
        )


def context_tokens(loaded: Any) -> int:
    """The model's context length (its text config's max_position_embeddings)."""
    config = loaded.model.config
    text = getattr(config, "text_config", None) or config
    return int(getattr(text, "max_position_embeddings", 32_768))
