"""One chat turn: the picked Backend (lfmui.backends) streams the reply. The tool loop over it
is ``lfmui.tool_turn``.

The UI and the API call ``chat_turn``; it never touches gradio. Errors the user can act on are
raised as ``LfmuiError`` before generation starts, or arrive as an ``error`` event after.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from lfmui import backends, engine, images, reasoning
from lfmui.errors import InputError, broken_character
from lfmui.manager import ModelManager

MAX_PROMPT_CHARS = 100_000
MAX_IMAGES_PER_MESSAGE = 4
MAX_IMAGES_PER_CHAT = 12


def chat_turn(
    manager: ModelManager,
    conversation: list[dict[str, Any]],
    *,
    settings: dict[str, Any] | None = None,
    stop: threading.Event | None = None,
    tiling: dict[str, Any] | None = None,
    tools: list[dict[str, Any]] | None = None,
    raw: bool = False,
    generate_kwargs: dict[str, Any] | None = None,
    model: str | None = None,
    client: str = "",
) -> Iterator[engine.Event]:
    """Stream the assistant's reply to `conversation` (the last message is the user's) from
    the Backend `model` picks (None: the default one).

    `tiling` overrides the loaded model's image-processor defaults for this request only;
    `tools` (JSON schemas) go into the system turn; `raw` keeps special tokens (tool-call
    markers) in the text; `generate_kwargs` reaches generate() (tests force outputs with it).
    An endpoint takes neither `raw` nor `generate_kwargs` (lfmui.backends.Remote).
    """
    check_conversation(conversation)
    backend = backends.of(manager, model)
    yield from backend.chat(
        conversation, settings, stop, tiling, tools, raw, generate_kwargs, client
    )


def user_message(text: str, paths: list[str]) -> dict[str, Any]:
    """A user message: its images read through the safe intake (images.load_safe), then the
    text."""
    parts: list[dict[str, Any]] = [{"type": "image", "image": images.load_safe(p)} for p in paths]
    parts.append({"type": "text", "text": text})
    return {"role": "user", "content": parts}


MAX_HISTORY_MESSAGES = 64


def history_of(messages: Any, system: Any = None) -> list[dict[str, Any]]:
    """Earlier turns sent by a script (text only: ``[{"role": "user" | "assistant",
    "content": str}]``, oldest first) and a system prompt, checked: an InputError says what
    to send instead. The caps on characters apply to the whole conversation later."""
    if system is not None and not isinstance(system, str):
        raise InputError("system must be a string (the system prompt).")
    if messages is None:
        messages = []
    if not isinstance(messages, list) or len(messages) > MAX_HISTORY_MESSAGES:
        raise InputError(
            f'messages must be a list of at most {MAX_HISTORY_MESSAGES} turns, each {{"role": '
            '"user" or "assistant", "content": "text"}, oldest first.'
        )
    history = [{"role": "system", "content": system}] if (system or "").strip() else []
    for number, message in enumerate(messages, 1):
        ok = isinstance(message, dict) and set(message) == {"role", "content"}
        if not ok or message["role"] not in ("user", "assistant"):
            raise InputError(
                f'messages[{number}] must be {{"role": "user" or "assistant", "content": '
                '"text"} (images go in image_files, for this turn).'
            )
        if not isinstance(message["content"], str):
            raise InputError(f"messages[{number}].content must be text.")
        history.append({"role": message["role"], "content": message["content"]})
    return history


def conversation_of(
    chat: list[dict[str, Any]], system_prompt: str | None, reads_images: bool
) -> tuple[list[dict[str, Any]], list[int]]:
    """The model conversation from a chat's turns ({"role", "text", "images"} for the user;
    "text" and the tool "messages" it exchanged for the assistant), and the indexes of the
    user turns whose images were left out because the model reads text only."""
    conversation: list[dict[str, Any]] = []
    dropped: list[int] = []
    if (system_prompt or "").strip():  # an empty box can arrive as None
        conversation.append({"role": "system", "content": system_prompt})
    for number, turn in enumerate(chat):
        if turn["role"] == "assistant":
            conversation.extend(turn.get("messages", []))  # its tool calls and results
            if turn["text"] or turn.get("thinking"):  # the template keeps or drops thinking
                answer = reasoning.joined(turn.get("thinking", ""), turn["text"])
                conversation.append({"role": "assistant", "content": answer})
            continue
        paths = list(turn.get("images", []))
        if paths and not reads_images:
            dropped.append(number)
        conversation.append(user_message(turn["text"], paths if reads_images else []))
    return conversation, dropped


def inspect_image(
    manager: ModelManager, path: str, values: dict[str, Any] | None, model: str | None = None
) -> tuple[Any, dict[str, Any]]:
    """The picture at `path` (safe intake) and how the picked model's processor cuts it under
    `values` over its defaults: grid, tiles, thumbnail, image tokens (tiling.plan_tiles)."""
    picture = images.load_safe(path)
    return picture, backends.of(manager, model).plan(picture, values)


def check_conversation(conversation: list[dict[str, Any]]) -> None:
    """Caps checked before any model work: characters, images per message and per chat; and
    text a tokenizer can read (an unpaired UTF-16 surrogate is no character at all)."""
    total = pictures = 0
    for message in conversation:
        content = message["content"]
        texts = [content] if isinstance(content, str) else [p.get("text", "") for p in content]
        if any(broken_character(text) for text in texts):
            raise InputError(
                "The message holds a broken character (an unpaired UTF-16 surrogate); remove "
                "it or paste the text again."
            )
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
