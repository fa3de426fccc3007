"""The UI's GPU entry points, wrapped for Hugging Face ZeroGPU when the app runs there.

On a ZeroGPU Space (``SPACES_ZERO_GPU`` set and the ``spaces`` package installed) a GPU is only
attached inside a function decorated with ``@spaces.GPU``, run in a worker process: the model
manager is bound here once (module state the worker inherits) so the wrapped functions take only
picklable arguments. Each call asks for a duration derived from max_new_tokens and the images
sent, and a quota error becomes a message that says what to do. Elsewhere these are the plain
``turns`` functions. torch.compile is off under ZeroGPU (``engine.decode_plan``): each request
would pay the compile in a fresh worker.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterator
from typing import Any

from lfmui import turns
from lfmui.errors import InputError

_manager: Any = None
WRAPPED: dict[str, Callable[..., Any]] = {}
QUOTA_MESSAGE = (
    "You have used up your GPU time on this Space for now. Wait a few minutes, log in to "
    "Hugging Face for a larger quota, or duplicate the Space to run it on your own hardware."
)


def zerogpu() -> bool:
    flag = os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")
    return flag and importlib.util.find_spec("spaces") is not None


def bind(manager: Any) -> None:
    global _manager
    _manager = manager


def duration(
    conversation: list[dict[str, Any]], settings: dict[str, Any] | None = None, *_: Any, **__: Any
) -> int:
    """Seconds of GPU to ask for: a base, the new tokens, and the images to encode."""
    new_tokens = int((settings or {}).get("max_new_tokens", 256))
    pictures = sum(
        sum(p.get("type") == "image" for p in m["content"])
        for m in conversation
        if isinstance(m.get("content"), list)
    )
    rounds = int((settings or {}).get("max_rounds", 1))
    return int(min(120, 10 + rounds * (new_tokens * 0.05 + pictures * 3)))


def _chat(conversation, settings=None, tiling=None, tools=None, raw=False):
    yield from turns.chat_turn(_manager, conversation, settings, None, tiling, tools, raw)


def _tool_turn(
    conversation, settings=None, registry=None, tool_choice="auto", max_rounds=3, tiling=None
):
    yield from turns.tool_turn(
        _manager, conversation, registry, settings, None, tool_choice, max_rounds, tiling=tiling
    )


def _round(conversation, settings=None, schemas=None, round_no=1):
    yield from turns.model_round(_manager, conversation, schemas, settings, None, round_no)


def _wrap(name: str, fn: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    import spaces

    gpu_fn = spaces.GPU(duration=duration)(fn)
    WRAPPED[name] = gpu_fn

    def friendly(*args: Any, **kwargs: Any) -> Iterator[Any]:
        try:
            yield from gpu_fn(*args, **kwargs)
        except Exception as exc:  # spaces reports quota as an error with this word in it
            if "quota" in str(exc).lower():
                raise InputError(QUOTA_MESSAGE) from None
            raise

    return friendly


if zerogpu():
    _gpu_chat = _wrap("chat_turn", _chat)
    _gpu_tool_turn = _wrap("tool_turn", _tool_turn)
    _gpu_round = _wrap("model_round", _round)


def chat_turn(manager, conversation, settings=None, stop=None, tiling=None, tools=None, raw=False):
    """turns.chat_turn, on the ZeroGPU worker when there is one. The Stop flag cannot reach
    that worker process: there, Stop cancels the gradio event instead."""
    if zerogpu():
        return _gpu_chat(conversation, settings, tiling, tools, raw)
    return turns.chat_turn(manager, conversation, settings, stop, tiling, tools, raw)


def tool_turn(
    manager,
    conversation,
    registry,
    settings=None,
    stop=None,
    tool_choice="auto",
    max_rounds=turns.MAX_TOOL_ROUNDS,
    tiling=None,
):
    if zerogpu():
        return _gpu_tool_turn(conversation, settings, registry, tool_choice, max_rounds, tiling)
    return turns.tool_turn(
        manager, conversation, registry, settings, stop, tool_choice, max_rounds, tiling=tiling
    )


def model_round(manager, conversation, schemas, settings, stop, round_no):
    if zerogpu():
        return _gpu_round(conversation, settings, schemas, round_no)
    return turns.model_round(manager, conversation, schemas, settings, stop, round_no)
