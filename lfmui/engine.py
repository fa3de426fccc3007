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

import concurrent.futures
import contextlib
import functools
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

from lfmui import prompts
from lfmui.errors import TooManyRequests
from lfmui.heap import process_rss
from lfmui.settings import Settings

log = logging.getLogger(__name__)
# "thinking": a reasoning model's <think> block, apart from its answer's "text"
# (lfmui.backends.thinking_events)
EventKind = Literal["text", "thinking", "metrics", "done", "error"]
DoneReason = Literal["eos", "stopped", "max_tokens", "time_limit", "error"]
_END = object()
STATIC_CACHE_LEN = 8192  # one static cache size for all requests: the compiled decode is reused


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
    import torch
    from transformers import MaxTimeCriteria, StoppingCriteriaList

    stop = stop or threading.Event()
    gone = threading.Event()  # the consumer went away; the caller's own `stop` stays untouched
    streamer = _TokenQueue()
    needed = int(inputs["input_ids"].shape[-1]) + settings.max_new_tokens
    plan, _note = decode_plan(loaded, needed)
    time_cap = MaxTimeCriteria(settings.time_limit)  # its clock starts with generate(), below
    flags = (stop, gone, loaded.cancel)
    criteria = StoppingCriteriaList(
        [_stopping_criteria(inputs["input_ids"].shape[0], loaded.model.device, *flags), time_cap]
    )
    kwargs = {
        **inputs,
        **settings.generate_kwargs(),
        **plan,
        **(extra_generate_kwargs or {}),
        "streamer": streamer,
        "stopping_criteria": criteria,
    }
    failure: list[tuple[str, str]] = []  # (exception name, what the user is told)
    timing: dict[str, float] = {}
    on_cuda = loaded.device == "cuda"

    def run() -> None:
        timing["started"] = time.perf_counter()
        # The cap counts generation time, as the done reason does: a reply that waited its turn
        # was cut early and then reported as "eos" (CI caught it).
        time_cap.initial_timestamp = time.time()
        try:
            if stop.is_set() or gone.is_set() or loaded.cancel.is_set():  # stopped while queued
                streamer.end()
                return
            if on_cuda:
                torch.cuda.reset_peak_memory_stats()
            if settings.seed is not None:
                torch.manual_seed(settings.seed)
            hooks = contextlib.nullcontext() if plan else _stoppable(loaded.model, *flags)
            with torch.inference_mode(), hooks:
                loaded.model.generate(**prepared(kwargs))
        except _Stopped:  # Stop mid-forward: a stopped reply, not a failure
            streamer.end()
        except BaseException as exc:  # reported to the consumer as an error event
            # Only its name and sentence are kept: the exception's traceback holds the frames
            # of generate(), and with them the activations an out-of-memory must give back.
            failure.append((type(exc).__name__, failure_message(exc)))
            streamer.end()
        finally:
            timing["peak_bytes"] = torch.cuda.max_memory_allocated() if on_cuda else process_rss()
            if failure and on_cuda:
                torch.cuda.empty_cache()  # the failed reply's blocks go back to the next one

    prompt_tokens = int(inputs["input_ids"].shape[-1])
    decoder = IncrementalDecoder(loaded.tokenizer, skip_special_tokens)
    eos = set(_eos_ids(loaded))
    submitted = time.perf_counter()
    first_token_at = None
    last_id = None
    job = generation_worker().submit(run, client)
    try:
        while True:
            batch, finished = _drain(streamer.queue)
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
        if failure:
            name, message = failure[0]
            log.warning("generate failed: %s", name)
            yield Event("error", data={"error": name, "message": message})
            return
        job.result()  # generate() has returned: its timings are complete
        ended = time.perf_counter()
        started = timing["started"]
        generated = len(decoder.ids) + (1 if last_id in eos else 0)
        reason = _done_reason(stop, loaded, last_id, eos, generated, settings, ended - started)
        image_token = getattr(loaded.model.config, "image_token_id", None)
        metrics = {
            "model": loaded.key,
            "queue_wait_s": round(started - submitted, 4),
            **(extra_metrics or {}),
            **_metrics(started, first_token_at, ended, prompt_tokens, generated),
            "image_tokens": int((inputs["input_ids"] == image_token).sum()) if image_token else 0,
            "peak_memory_gib": round(timing["peak_bytes"] / 2**30, 3),
            "peak_memory_kind": "cuda_peak_allocated" if on_cuda else "process_rss",
        }
        yield Event("metrics", data=metrics)
        yield Event("done", data={"reason": reason})
    finally:
        gone.set()  # a consumer that went away (closed tab, cancel) stops the generation
        if not job.cancel():  # still queued: dropped; else wait for generate() to return
            job.result()  # run() reports its own failures, so this does not raise


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


MAX_QUEUED_PER_CLIENT = 16  # replies one client may have waiting or running at once


class FairWorker:
    """The one long-lived thread that runs generate(), taking clients in turn.

    Each client (a browser session, a /v1 caller) has its own line of jobs; the thread takes
    the oldest job of the next client in rotation, so a client with many queued replies delays
    another's one reply by at most one of its own. A client may hold MAX_QUEUED_PER_CLIENT
    jobs; one more is refused with a sentence (TooManyRequests) before it queues.
    """

    def __init__(self, per_client: int = MAX_QUEUED_PER_CLIENT) -> None:
        self.per_client = per_client
        self._lines: dict[str, list[tuple[concurrent.futures.Future, Any]]] = {}
        self._turn: list[str] = []  # clients with waiting jobs, in the order they are served
        self._running: str | None = None  # the client whose job runs now
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._serve, name="lfmui-generate", daemon=True)
        self._thread.start()

    def submit(self, fn: Any, client: str = "") -> concurrent.futures.Future:
        """Queue `fn` in `client`'s line; its Future (cancel() drops it while it waits)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._ready:
            line = self._lines.setdefault(client, [])
            line[:] = [job for job in line if not job[0].cancelled()]
            held = len(line) + (self._running == client)
            if held >= self.per_client:
                raise TooManyRequests(
                    f"You have {held} replies waiting or running already; wait for one to "
                    "finish, then send again."
                )
            line.append((future, fn))
            if client not in self._turn and client != self._running:
                self._turn.append(client)
            self._ready.notify()
        return future

    def waiting(self) -> dict[str, int]:
        """Jobs waiting or running, per client."""
        with self._ready:
            held = {c: len(line) for c, line in self._lines.items() if line}
            if self._running is not None:
                held[self._running] = held.get(self._running, 0) + 1
            return held

    def _next(self) -> tuple[concurrent.futures.Future, Any]:
        with self._ready:
            while True:
                while not self._turn:
                    self._ready.wait()
                client = self._turn.pop(0)
                line = self._lines.get(client)
                if line:  # (a line whose jobs were all cancelled is empty)
                    future, fn = line.pop(0)
                    self._running = client
                    return future, fn
                self._lines.pop(client, None)

    def _serve(self) -> None:
        while True:
            future, fn = self._next()
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as exc:  # the caller's Future reports it
                        future.set_exception(exc)
            finally:
                with self._ready:
                    client, self._running = self._running, None
                    if self._lines.get(client):
                        self._turn.append(client)  # its next job waits for the others' turns
                    else:
                        self._lines.pop(client, None)
                del future, fn  # nothing of a finished reply stays referenced here


_worker: FairWorker | None = None
_worker_lock = threading.Lock()


def _forget_worker() -> None:
    """In a forked child (a ZeroGPU worker) the parent's generation thread does not exist:
    the child starts its own on its first reply."""
    global _worker, _worker_lock
    _worker, _worker_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_worker)


def generation_worker() -> FairWorker:
    """The one long-lived thread that runs generate(), fair across clients (FairWorker).

    torch.compile's CUDA graphs are recorded per thread: a new thread per request would record
    them again on every reply (measured: +144 ms TTFT and 0.73x decode on an H100). One thread
    also means one generation at a time on the accelerator.
    """
    global _worker
    with _worker_lock:
        if _worker is None:
            _worker = FairWorker()
            _use_the_cores(_worker)
        return _worker


def _use_the_cores(worker: FairWorker) -> None:
    """An OpenMP team as wide as the cores on the generation thread, teams of one elsewhere
    (lfmui/__init__.py says why). torch.set_num_threads sets the calling thread's team and the
    default that threads yet to start take up, so the worker widens its own team, then this
    thread sets the default back to one. A user's OMP_NUM_THREADS is left to rule."""
    import torch

    import lfmui

    if lfmui.USER_THREADS is not None:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    def widen() -> None:
        torch.get_num_threads()  # torch's per-thread set-up first: it would apply the default
        torch.set_num_threads(cores or 1)

    worker.submit(widen).result()
    torch.set_num_threads(1)


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


COMPILED_LEVELS = ("bf16", "fp16", "fp32")  # plain torch layers; quantized ones do not compile
# Inputs generate() hands every decode step that only the prefill reads. transformers drops
# pixel_values and pixel_attention_mask after the prefill; LFM2-VL's spatial_shapes it forwards
# on every step, so a compiled decode recompiles on the first image reply.
PREFILL_ONLY = ("spatial_shapes",)


def decode_plan(loaded: Any, tokens: int = 0) -> tuple[dict[str, Any], str]:
    """Extra generate() kwargs for compiled decode where it pays, and a note saying which.

    Compiled decode reuses the model's one static cache (``static_cache``), reset for each
    request by ``prepared``; a request whose prompt and new tokens (`tokens`) would pass the
    cache's length decodes eagerly instead. On CPU it is off unless LFMUI_CPU_COMPILE names a
    torch.compile backend (e.g. eager, inductor): the CUDA path, rehearsed on CPU."""
    cpu_backend = os.environ.get("LFMUI_CPU_COMPILE", "").strip()
    if loaded.device != "cuda" and not cpu_backend:
        return {}, "eager decode: torch.compile does not pay on CPU"
    if os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true"):
        return {}, "eager decode: on ZeroGPU each new GPU worker would compile again"
    if loaded.quantization not in COMPILED_LEVELS:
        return {}, f"eager decode: {loaded.quantization} layers do not compile"
    if loaded.quantization == "fp16" and getattr(loaded.model.config, "num_experts", None):
        # transformers' grouped experts fall back to a loop that reads expert counts on the
        # host (.tolist()) for anything but bf16: CUDA graphs cannot capture it
        return {}, "eager decode: fp16 experts do not compile (bf16 does)"
    if tokens > STATIC_CACHE_LEN:
        return {}, f"eager decode: this reply may pass the static cache's {STATIC_CACHE_LEN} tokens"
    kwargs: dict[str, Any] = {"past_key_values": static_cache(loaded)}
    if loaded.device != "cuda":
        from transformers import CompileConfig

        config = CompileConfig(backend=cpu_backend, mode="default")
        config._compile_all_devices = True  # transformers compiles on accelerators only, else
        kwargs["compile_config"] = config
    return kwargs, "compiled decode: static cache + torch.compile"


def static_cache(loaded: Any) -> Any:
    """The model's one static cache, made on first use: every compiled request decodes into
    the same tensors, so the compiled step (and its CUDA graph) never sees a new address."""
    if loaded.static_cache is None:
        from transformers import StaticCache

        text = loaded.model.config.get_text_config(decoder=True)
        loaded.static_cache = StaticCache(config=text, max_cache_len=STATIC_CACHE_LEN)
    return loaded.static_cache


def prepared(plan: dict[str, Any]) -> dict[str, Any]:
    """`plan`, its static cache emptied for the next request: called on the thread that runs
    generate(), right before it (another request may still be decoding into it until then)."""
    cache = plan.get("past_key_values")
    if cache is not None:
        cache.reset()
    return plan


def trim_decode_inputs(model: Any) -> None:
    """Drop the prefill-only inputs (PREFILL_ONLY) from every decode step of `model`."""
    prepare = model.prepare_inputs_for_generation
    if getattr(prepare, "trims_decode_inputs", False):
        return

    @functools.wraps(prepare)  # generate() reads its signature to check the inputs it gets
    def prepare_inputs(*args: Any, **kwargs: Any) -> dict[str, Any]:
        inputs = prepare(*args, **kwargs)
        if inputs.get("pixel_values") is None:  # a decode step
            for name in PREFILL_ONLY:
                inputs.pop(name, None)
        return inputs

    prepare_inputs.trims_decode_inputs = True  # type: ignore[attr-defined]
    model.prepare_inputs_for_generation = prepare_inputs


def warm_up(loaded: Any) -> str:
    """Compile the decode step at load time so the first user does not pay for it: a text
    request, and for a vision model an image request too (its prefill differs)."""
    trim_decode_inputs(loaded.model)
    extra, note = decode_plan(loaded)
    if not extra:
        log.info("%s: %s", loaded.spec.id, note)
        return note
    import torch
    from PIL import Image

    requests = [[{"role": "user", "content": "Hello"}]]
    if loaded.spec.kind == "vl":
        picture = Image.new("RGB", (64, 64), "#2b6cb0")
        image = [{"type": "image", "image": picture}, {"type": "text", "text": "Hello"}]
        requests.append([{"role": "user", "content": image}])
    inputs = [prompts.build_inputs(loaded, request) for request in requests]

    def run() -> None:
        with torch.inference_mode():
            for each in (*inputs, inputs[0]):  # the last call checks the graph is reused
                loaded.model.generate(
                    **each, max_new_tokens=8, min_new_tokens=8, do_sample=False, **prepared(extra)
                )

    started = time.perf_counter()
    generation_worker().submit(run).result()  # compile on the thread that will generate
    log.info("%s: %s, warmed in %.1f s", loaded.spec.id, note, time.perf_counter() - started)
    return note


def forget_compiled(gone: Any, resident: list[Any]) -> None:
    """After `gone` left the pool: drop what dynamo compiled and the CUDA-graph trees, on the
    generation thread that recorded them, then compile the `resident` models' decode again.

    dynamo keys compiled code on code objects every model shares (transformers' forward
    wrapper), so a gone model's entries stay, count against the recompile limit, and past it
    every new model decodes eagerly without a word."""
    if gone.static_cache is None:  # it never compiled
        return
    gone.static_cache = None

    def reset() -> None:
        import torch

        torch._dynamo.reset()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            from torch._inductor import cudagraph_trees

            cudagraph_trees.reset_cudagraph_trees()

    generation_worker().submit(reset).result()
    for loaded in resident:
        if loaded.static_cache is not None:
            warm_up(loaded)


# what the manager calls as a model arrives and leaves: ModelManager(**engine.LIFECYCLE)
LIFECYCLE = {"on_loaded": warm_up, "on_unloaded": forget_compiled}


def compiled_entries() -> int:
    """How many compiled entries dynamo holds, over every code object it has compiled."""
    from torch._dynamo import convert_frame
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    codes = [ref() for ref in convert_frame.input_codes.seen]
    return sum(len(_debug_get_cache_entry_list(code)) for code in codes if code is not None)


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


def _metrics(started, first_at, ended, prompt_tokens, generated) -> dict[str, Any]:
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
