"""The UI's GPU entry points, wrapped for Hugging Face ZeroGPU when the app runs there.

On a ZeroGPU Space (``SPACES_ZERO_GPU`` set and the ``spaces`` package installed) a GPU is only
attached inside a function decorated with ``@spaces.GPU``, run in a worker process. ``on_gpu``
wraps a ``turns`` function ``fn(manager, first, **options)``: the worker calls it with the
manager bound here (module state the worker inherits: the manager's locks cannot be pickled) and
every option forwarded as given, except the Stop flag, which cannot reach another process
(there Stop cancels the gradio event instead). In-place changes made in the worker do not come
back: where `first` has an ``apply(step)`` method (``turns.ToolTurn``), each step the worker
yields is applied to it here. Each call asks for a duration derived from max_new_tokens, the
rounds and the images sent, and a quota error becomes a message that says what to do.
Elsewhere, and while an endpoint answers, these are the plain ``turns`` functions.
torch.compile is off under ZeroGPU (``engine.decode_plan``): each request would pay the
compile in a fresh worker.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterator
from typing import Any

from lfmui import backends, turns
from lfmui.errors import InputError, NoModelLoaded

_manager: Any = None
WRAPPED: dict[str, Callable[..., Any]] = {}
QUOTA_MESSAGE = (
    "You have used up your GPU time on this Space for now. Wait a few minutes, log in to "
    "Hugging Face for a larger quota, or duplicate the Space to run it on your own hardware."
)


def zerogpu() -> bool:
    flag = os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")
    return flag and importlib.util.find_spec("spaces") is not None


def duration(first: Any, *_: Any, settings: dict[str, Any] | None = None, **__: Any) -> int:
    """Seconds of GPU to ask for: a base, the new tokens per round, and the images to encode."""
    conversation = getattr(first, "conversation", first)
    new_tokens = int((settings or {}).get("max_new_tokens", 256))
    pictures = sum(
        sum(p.get("type") == "image" for p in m["content"])
        for m in conversation
        if isinstance(m.get("content"), list)
    )
    rounds = int(getattr(first, "max_rounds", 1))
    return int(min(120, 10 + rounds * (new_tokens * 0.05 + pictures * 3)))


def on_gpu(fn: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    """`fn` itself, or on ZeroGPU `fn` run in the GPU worker (see the module docstring)."""
    if not zerogpu():
        return fn
    import spaces

    def in_worker(first: Any, *rest: Any, **options: Any) -> Iterator[Any]:
        yield from fn(_manager, first, *rest, **options)

    in_worker.__name__ = fn.__name__
    gpu_fn = spaces.GPU(duration=duration)(in_worker)
    WRAPPED[fn.__name__] = gpu_fn

    def call(manager: Any, first: Any, *rest: Any, **options: Any) -> Iterator[Any]:
        """`fn` with the same arguments (tool_turn's registry comes second, by position)."""
        global _manager
        if elsewhere(manager, options.get("model")):  # no GPU of ours is needed
            yield from fn(manager, first, *rest, **options)
            return
        _manager = manager
        options.pop("stop", None)
        try:
            for step in gpu_fn(first, *rest, **options):
                if hasattr(first, "apply"):
                    first.apply(step)
                yield step
        except Exception as exc:  # spaces reports quota as an error with this word in it
            if "quota" in str(exc).lower():
                raise InputError(QUOTA_MESSAGE) from None
            raise

    return call


def elsewhere(manager: Any, pick: str | None) -> bool:
    """Whether the Backend `pick` names answers from a server elsewhere."""
    try:
        return not backends.of(manager, pick).on_this_machine
    except NoModelLoaded:  # the turn itself says why nothing answers
        return False


chat_turn = on_gpu(turns.chat_turn)
tool_turn = on_gpu(turns.tool_turn)
run_tool_turn = on_gpu(turns.run_tool_turn)
