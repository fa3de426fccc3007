"""Streaming generation: one call yields typed events for one reply.

``stream(loaded, inputs, settings, stop)`` runs ``model.generate`` in a thread of its own with a
streamer made for this call only (a queue of token ids: the generation thread does no decoding)
and yields ``Event``s: ``text`` deltas from incremental detokenization that never splits a
multi-byte character, then ``metrics`` and ``done`` (with its reason), or ``error``. Stop is a
threading.Event checked by a StoppingCriteria at every step and, in eager decode, before every
layer of the vision tower and the language model: a prompt with an image (seconds on a CPU)
stops within a layer, not at its end. The thread is joined in a ``finally``, so a closed tab or
a cancelled request frees the accelerator.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

from lfmui.compiled import decode_plan, prepared
from lfmui.heap import process_rss
from lfmui.settings import Settings
from lfmui.worker import generation_worker

log = logging.getLogger(__name__)
# "thinking": a reasoning model's <think> block, apart from its answer's "text"
# (lfmui.backends.thinking_events)
EventKind = Literal["text", "thinking", "metrics", "done", "error"]
DoneReason = Literal["eos", "stopped", "max_tokens", "time_limit", "error"]
_END = object()


class Metrics(TypedDict, total=False):
    """A reply's ``metrics`` event (typed, so the API page shows each key); /last_metrics
    adds done (the end: eos, stopped, max_tokens, time_limit) and random_weights."""

    model: str  # the key of the model that answered (id@level)
    queue_wait_s: float
    preprocess_s: float
    ttft_s: float | None
    decode_tokens_per_s: float | None
    prompt_tokens: int
    generated_tokens: int
    total_s: float
    image_tokens: int
    peak_memory_gib: float
    peak_memory_kind: str
    server_ignored: str  # an endpoint's: the settings it refused by name
    done: str
    random_weights: bool


@dataclass(frozen=True)
class Event:
    kind: EventKind
    text: str = ""
    data: dict[str, Any] = field(default_factory=dict)


class ThinkingBudget:
    """A logits processor for a reply that starts inside a <think> block: once `budget` tokens
    of thinking have been generated without a close, it writes `close` (the tokens of
    ``\n</think>\n\n``) one token at a time, and the answer follows; then it stands aside.
    Appended after any other processor, so its choice is the one generate() takes."""

    def __init__(self, budget: int, close: list[int], closed: Any) -> None:
        self.budget, self.close, self.closed = budget, close, closed  # closed(ids) -> bool
        self.start: int | None = None
        self.forced = 0
        self.hit = self.done = False

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self.start is None:
            self.start = input_ids.shape[1]
        if self.done:
            return scores
        if self.forced == 0:
            generated = input_ids.shape[1] - self.start
            if generated < self.budget:
                return scores
            # read once, at the budget: a block the model closed itself is left as it is
            self.done = self.closed(input_ids[0, self.start :].tolist())
            if self.done:
                return scores
        if self.forced >= len(self.close):
            self.done = True
            return scores
        self.hit = True
        forced = scores.new_full(scores.shape, -float("inf"))
        forced[:, self.close[self.forced]] = 0.0
        self.forced += 1
        return forced


class _TokenQueue:
    """A streamer for one call: pushes generated token ids to a queue, nothing more."""

    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue()
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate() first sends the prompt
            self._prompt_seen = True
            return
        self.queue.put(value.reshape(-1).tolist())

    def end(self) -> None:
        self.queue.put(_END)


class IncrementalDecoder:
    """Turns a growing list of token ids into text deltas without splitting characters."""

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0  # ids before this are context only
        self.read = 0  # text of ids[prefix:read] was already emitted

    def push(self, new_ids: list[int]) -> str:
        self.ids.extend(new_ids)
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix : self.read], skip_special_tokens=self.skip)
        after = decode(self.ids[self.prefix :], skip_special_tokens=self.skip)
        if after.endswith("\ufffd") or len(after) <= len(before):
            return ""  # an unfinished UTF-8 sequence: wait for the next token
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before) :]

    def flush(self) -> str:
        """Whatever is still held back at the end (an invalid trailing byte sequence)."""
        before = self.tokenizer.decode(
            self.ids[self.prefix : self.read], skip_special_tokens=self.skip
        )
        after = self.tokenizer.decode(self.ids[self.prefix :], skip_special_tokens=self.skip)
        self.prefix = self.read = len(self.ids)
        return after[len(before) :]


def _stopping_criteria(batch: int, device: Any, *events: threading.Event) -> Any:
    import torch
    from transformers import StoppingCriteria

    # Both answers exist on the device up front: a step costs a flag check, no kernel launch.
    answers = {
        flag: torch.full((batch,), flag, dtype=torch.bool, device=device) for flag in (False, True)
    }

    class StopOnEvent(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return answers[any(e.is_set() for e in events)]

    return StopOnEvent()


class _Stopped(Exception):
    """Raised by a layer hook when Stop is pressed mid-forward (a long prefill)."""


@contextlib.contextmanager
def _stoppable(model: Any, *events: threading.Event) -> Iterator[None]:
    """Every block of every ``layers`` list (the vision encoder's and the language model's)
    checks `events` before it runs. Eager decode only: hooks would break compiled graphs."""
    import torch

    def check(_module: Any, _args: Any) -> None:
        if any(e.is_set() for e in events):
            raise _Stopped

    handles = [
        block.register_forward_pre_hook(check)
        for name, blocks in model.named_modules()
        if name.endswith("layers") and isinstance(blocks, torch.nn.ModuleList)
        for block in blocks
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def stream(
    loaded: Any,
    inputs: Any,
    settings: Settings,
    stop: threading.Event | None = None,
    skip_special_tokens: bool = True,
    extra_generate_kwargs: dict[str, Any] | None = None,
    extra_metrics: dict[str, Any] | None = None,
    client: str = "",
) -> Iterator[Event]:
    """Generate a reply to `inputs` and yield its events; always ends with done or error.
    `client` names whose reply it is: clients take turns on the generation thread.

    Replies take turns on the one generation thread: the time spent waiting for it is the
    reply's queue wait, and TTFT counts from the moment generate() starts.
    """
    stop = stop or threading.Event()
    gone = threading.Event()  # the consumer went away; the caller's own `stop` stays untouched
    generation = _Generation(loaded, inputs, settings, (stop, gone), extra_generate_kwargs)
    prompt_tokens = int(inputs["input_ids"].shape[-1])
    decoder = IncrementalDecoder(loaded.tokenizer, skip_special_tokens)
    eos = set(_eos_ids(loaded))
    submitted = time.perf_counter()
    first_token_at = None
    last_id = None
    job = generation_worker().submit(generation.run, client)
    try:
        while True:
            batch, finished = _drain(generation.streamer.queue)
            if batch:
                if first_token_at is None:
                    first_token_at = time.perf_counter()
                last_id = batch[-1]
                delta = decoder.push([t for t in batch if t not in eos])
                if delta:
                    yield Event("text", delta)
            if finished:
                break
        tail = decoder.flush()
        if tail:
            yield Event("text", tail)
        if generation.failure:
            name, message = generation.failure[0]
            log.warning("generate failed: %s", name)
            yield Event("error", data={"error": name, "message": message})
            return
        job.result()  # generate() has returned: its timings are complete
        ended = time.perf_counter()
        started = generation.clock["started"]
        generated = len(decoder.ids) + (1 if last_id in eos else 0)
        reason = _done_reason(stop, loaded, last_id, eos, generated, settings, ended - started)
        metrics = {
            "model": loaded.key,
            "queue_wait_s": round(started - submitted, 4),
            **(extra_metrics or {}),
            **timing(started, first_token_at, ended, prompt_tokens, generated),
            **generation.costs(inputs),
        }
        yield Event("metrics", data=metrics)
        yield Event("done", data={"reason": reason})
    finally:
        gone.set()  # a consumer that went away (closed tab, cancel) stops the generation
        if not job.cancel():  # still queued: dropped; else wait for generate() to return
            job.result()  # run() reports its own failures, so this does not raise


class _Generation:
    """One reply's generate() call, run on the generation thread (``run``): its tokens go to
    ``streamer``; a failure is kept as (exception name, what the user is told), never raised;
    ``clock`` holds when it started and the memory peak."""

    def __init__(self, loaded, inputs, settings: Settings, flags, extra: dict | None) -> None:
        from transformers import MaxTimeCriteria, StoppingCriteriaList

        self.loaded, self.settings = loaded, settings
        self.flags = (*flags, loaded.cancel)  # stop, gone, the model's own cancel
        self.streamer = _TokenQueue()
        needed = int(inputs["input_ids"].shape[-1]) + settings.max_new_tokens
        self.plan, _note = decode_plan(loaded, needed)
        self.time_cap = MaxTimeCriteria(settings.time_limit)  # its clock starts in run()
        rows, device = inputs["input_ids"].shape[0], loaded.model.device
        criteria = StoppingCriteriaList(
            [_stopping_criteria(rows, device, *self.flags), self.time_cap]
        )
        self.kwargs = {
            **inputs,
            **settings.generate_kwargs(),
            **self.plan,
            **(extra or {}),
            "streamer": self.streamer,
            "stopping_criteria": criteria,
        }
        self.failure: list[tuple[str, str]] = []
        self.clock: dict[str, float] = {}
        self.on_cuda = loaded.device == "cuda"

    def costs(self, inputs: Any) -> dict[str, Any]:
        """What the reply cost besides time: its image tokens and the memory peak."""
        image_token = getattr(self.loaded.model.config, "image_token_id", None)
        images = int((inputs["input_ids"] == image_token).sum()) if image_token else 0
        return {
            "image_tokens": images,
            "peak_memory_gib": round(self.clock["peak_bytes"] / 2**30, 3),
            "peak_memory_kind": "cuda_peak_allocated" if self.on_cuda else "process_rss",
        }

    def run(self) -> None:
        import torch

        self.clock["started"] = time.perf_counter()
        # The cap counts generation time, as the done reason does: a reply that waited its turn
        # was cut early and then reported as "eos" (CI caught it).
        self.time_cap.initial_timestamp = time.time()
        try:
            if any(flag.is_set() for flag in self.flags):  # stopped while queued
                self.streamer.end()
                return
            if self.on_cuda:
                torch.cuda.reset_peak_memory_stats()
            if self.settings.seed is not None:
                torch.manual_seed(self.settings.seed)
            model = self.loaded.model
            hooks = contextlib.nullcontext() if self.plan else _stoppable(model, *self.flags)
            with torch.inference_mode(), hooks:
                model.generate(**prepared(self.kwargs))
        except _Stopped:  # Stop mid-forward: a stopped reply, not a failure
            self.streamer.end()
        except BaseException as exc:  # reported to the consumer as an error event
            # Only its name and sentence are kept: the exception's traceback holds the frames
            # of generate(), and with them the activations an out-of-memory must give back.
            self.failure.append((type(exc).__name__, failure_message(exc)))
            self.streamer.end()
        finally:
            peak = torch.cuda.max_memory_allocated() if self.on_cuda else process_rss()
            self.clock["peak_bytes"] = peak
            if self.failure and self.on_cuda:
                torch.cuda.empty_cache()  # the failed reply's blocks go back to the next one


GENERATE_FAILED = "The model failed while generating; try again."
OUT_OF_MEMORY = (
    "The accelerator ran out of memory on this reply. Lower the image detail, shorten the "
    "chat, or load a smaller model or a 4-bit level, then send again."
)


def failure_message(exc: BaseException) -> str:
    """The sentence a user reads when generate() raised `exc` (no type names, no paths)."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return OUT_OF_MEMORY
    return GENERATE_FAILED


def _drain(tokens: queue.Queue) -> tuple[list[int], bool]:
    """Block for the next token ids, then take all that are ready: one decode per batch keeps
    the consumer off the GIL while generation runs ahead of it."""
    batch: list[int] = []
    item = tokens.get()
    while True:
        if item is _END:
            return batch, True
        batch.extend(item)
        try:
            item = tokens.get_nowait()
        except queue.Empty:
            return batch, False


def _eos_ids(loaded: Any) -> list[int]:
    eos = loaded.model.generation_config.eos_token_id
    return list(eos) if isinstance(eos, list | tuple) else [eos] if eos is not None else []


def _done_reason(stop, loaded, last_id, eos, generated, settings, elapsed) -> DoneReason:
    if last_id in eos:
        return "eos"
    if stop.is_set() or loaded.cancel.is_set():
        return "stopped"
    if generated >= settings.max_new_tokens:
        return "max_tokens"
    if elapsed >= settings.time_limit:
        return "time_limit"
    return "eos"


def timing(started, first_at, ended, prompt_tokens, generated) -> dict[str, Any]:
    """A reply's timing figures from its clock readings (perf_counter): time to first token,
    decode tokens/s (the tokens after the first, over the time after it), token counts and the
    total. Every backend's metrics start from these."""
    ttft = (first_at - started) if first_at else None
    decode_s = (ended - first_at) if first_at else 0.0
    return {
        "ttft_s": round(ttft, 4) if ttft is not None else None,
        "decode_tokens_per_s": round((generated - 1) / decode_s, 2)
        if generated > 1 and decode_s > 0
        else None,
        "prompt_tokens": prompt_tokens,
        "generated_tokens": generated,
        "total_s": round(ended - started, 4),
    }
