"""The UI's GPU entry points (``chat_turn``, ``tool_turn``, ``run_tool_turn``): the plain ``turns``
and ``tool_turn`` functions, or on a ZeroGPU Space the same run in a ``@spaces.GPU`` worker
(``on_gpu``) with the visitor's pick resolved first, errors carried back as themselves
(``Carried``) and a duration asked for per call. What crosses the boundary and what cannot:
docs/architecture.md#zerogpu-the-gpu-entry-points-lfmuiuigpu.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from lfmui import backends, errors, turns
from lfmui import tool_turn as tool_loop
from lfmui.errors import InputError, LfmuiError

_manager: Any = None
WRAPPED: dict[str, Callable[..., Any]] = {}
QUOTA_MESSAGE = (
    "You have used up your GPU time on this Space for now. Wait a few minutes, log in to "
    "Hugging Face for a larger quota, or duplicate the Space to run it on your own hardware."
)
ABORTED = "GPU task aborted"  # what spaces says when the worker died (stopped at its duration)

# What one GPU call is asked to last (spaces' default is 60 s; longer asks cost more quota).
START_S = 10.0  # fork, CUDA start-up
MOVE_BYTES_PER_S = 1 << 30  # packed weights, disk -> pinned memory -> GPU (a cautious 1 GiB/s)
TOKEN_S = 0.05  # per new token: eager decode of a small model, with room to spare
IMAGE_S = 3.0  # per image: vision encoder and projector, tiles included
MAX_DURATION_S = 120


def zerogpu() -> bool:
    flag = os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")
    return flag and importlib.util.find_spec("spaces") is not None


def free_memory() -> int:
    """Bytes free on a ZeroGPU worker's GPU, as spaces reports them to the main process (which
    never starts CUDA)."""
    import torch

    return int(torch.cuda.mem_get_info()[0])


class Carried(gr.Error):
    """An LfmuiError on its way out of the worker: spaces passes a gr.Error through whole
    (pickled), and ``call`` raises the original class again with its sentence."""

    def __init__(self, message: str, kind: str = "InputError") -> None:
        super().__init__(message, print_exception=False)
        self.kind = kind

    def original(self) -> LfmuiError:
        cls = getattr(errors, self.kind, None)
        if not (isinstance(cls, type) and issubclass(cls, LfmuiError)):
            cls = LfmuiError
        return cls(self.message)


def duration_for(rounds_of: Callable[..., int]) -> Callable[..., int]:
    """spaces' duration callable (called with the GPU function's own arguments): the start,
    moving every resident model's weights (a new worker moves them all), and per round the
    new tokens and the images; at most MAX_DURATION_S."""

    def duration(first: Any, *rest: Any, settings: dict[str, Any] | None = None, **options: Any):
        conversation = getattr(first, "conversation", first)
        new_tokens = int((settings or {}).get("max_new_tokens", 256))
        pictures = sum(
            sum(p.get("type") == "image" for p in m["content"])
            for m in conversation
            if isinstance(m.get("content"), list)
        )
        resident = sum(e["gib"] for e in _manager.pool()) * 2**30 if _manager else 0
        rounds = rounds_of(first, *rest, **options)
        seconds = START_S + resident / MOVE_BYTES_PER_S
        seconds += rounds * (new_tokens * TOKEN_S + pictures * IMAGE_S)
        return int(min(MAX_DURATION_S, seconds))

    return duration


def one_round(*_: Any, **__: Any) -> int:
    return 1


def tool_rounds(first: Any, *_: Any, max_rounds: int | None = None, **__: Any) -> int:
    """A tool turn's rounds: its ToolTurn's limit, or the one given to tool_turn."""
    return int(getattr(first, "max_rounds", None) or max_rounds or tool_loop.MAX_TOOL_ROUNDS)


def on_gpu(
    fn: Callable[..., Iterator[Any]], rounds_of: Callable[..., int] = one_round
) -> Callable[..., Iterator[Any]]:
    """`fn` itself, or on ZeroGPU `fn` run in the GPU worker (see the module docstring)."""
    if not zerogpu():
        return fn
    import spaces

    def in_worker(first: Any, *rest: Any, **options: Any) -> Iterator[Any]:
        try:
            yield from fn(_manager, first, *rest, **options)
        except LfmuiError as exc:  # as a gr.Error, its sentence survives spaces
            raise Carried(str(exc), type(exc).__name__) from None

    in_worker.__name__ = fn.__name__
    duration = duration_for(rounds_of)
    gpu_fn = spaces.GPU(duration=duration)(in_worker)
    WRAPPED[fn.__name__] = gpu_fn

    def call(manager: Any, first: Any, *rest: Any, **options: Any) -> Iterator[Any]:
        """`fn` with the same arguments (tool_turn's registry comes second, by position)."""
        global _manager
        backend = backends.of(manager, options.get("model"))  # why nothing answers: said here
        if not backend.on_this_machine:  # a server elsewhere answers: no GPU of ours is needed
            yield from fn(manager, first, *rest, **options)
            return
        _manager = manager
        options["model"] = backend.key  # the worker answers with this model, or says why not
        options.pop("stop", None)
        try:
            for step in gpu_fn(first, *rest, **options):
                if hasattr(first, "apply"):
                    first.apply(step)
                yield step
        except Carried as exc:
            raise exc.original() from None
        except Exception as exc:
            said = str(getattr(exc, "message", exc))
            if ABORTED in said:
                seconds = duration(first, *rest, **options)
                raise InputError(
                    f"The reply ran past its GPU time on this Space ({seconds} s for one reply) "
                    "and was stopped. Ask for fewer new tokens or send fewer images, then send "
                    "again."
                ) from None
            if "quota" in said.lower():  # spaces reports quota as an error with this word
                raise InputError(QUOTA_MESSAGE) from None
            raise

    return call


chat_turn = on_gpu(turns.chat_turn)
tool_turn = on_gpu(tool_loop.tool_turn, tool_rounds)
run_tool_turn = on_gpu(tool_loop.run_tool_turn, tool_rounds)
