"""What answers a chat: a Backend, the one interface callers use.

An in-process model of the manager's pool and an OpenAI-compatible endpoint the owner connected
are both Backends: each chats (engine events), says what it is (its key, the id /v1 names, the
label the page shows), whether it reads images, whether its weights are random, its sampling
defaults, and how it cuts an image (tiling). Callers get one from ``of(manager, pick)`` and never
ask which kind they hold. A pick is a key from ``choices`` (None: the default, what answers for
whoever picked nothing).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from lfmui import engine, prompts
from lfmui.errors import InputError, NoModelLoaded
from lfmui.manager import ModelManager
from lfmui.reasoning import CLOSE, Splitter, has_switch, opens_thinking
from lfmui.settings import Settings
from lfmui.tiling import Tiling, plan_tiles


class Backend(Protocol):
    key: str  # what a pick names
    model: str  # the id /v1 names
    label: str  # as the page shows it (an endpoint's address only where it may be shown)
    reads_images: bool
    random_weights: bool
    on_this_machine: bool  # False: a server elsewhere answers (no GPU of ours is used)
    sampling: dict[str, Any]
    system_prompt: str

    def chat(
        self,
        conversation: list[dict[str, Any]],
        settings: dict[str, Any] | None = None,
        stop: threading.Event | None = None,
        tiling: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
        raw: bool = False,
        generate_kwargs: dict[str, Any] | None = None,
        client: str = "",
    ) -> Iterator[engine.Event]:
        """The reply as engine events; `client` (a session, a /v1 caller) takes its turn on
        the generation thread with the others (worker.FairWorker)."""
        ...

    def tiling_defaults(self) -> Tiling | None: ...

    def plan(self, picture: Any, values: dict[str, Any] | None) -> dict[str, Any]: ...


def of(manager: ModelManager, pick: str | None = None) -> Backend:
    """The Backend `pick` names (None, "" or "default": the default one); NoModelLoaded says
    what to pick instead when it is not here."""
    endpoint = manager.endpoint
    if pick and str(pick).startswith("endpoint:"):  # lfmui.endpoint.Endpoint.key
        if endpoint is None or endpoint.key != pick:
            raise NoModelLoaded(
                "That endpoint is no longer connected; pick another model in the Models tab."
            )
        return Remote(endpoint)
    if endpoint is not None and pick in (None, "", "default"):
        return Remote(endpoint)
    loaded = manager.resolve(pick)
    if loaded is None:
        with manager.lease(pick):  # raises the sentence for why nothing answers
            loaded = manager.resolve(pick)
    if loaded is None:
        raise NoModelLoaded("No model is loaded. Load one in the Models tab first.")
    return InProcess(manager, None if pick in (None, "", "default") else loaded.key, loaded)


def names(manager: ModelManager) -> dict[str, str | None]:
    """Each name a script may give for a model (/v1's `model`, /generate's settings), and
    the pick it stands for (None: the default): the default's id, each resident model by its
    id (its most recently used level) and its id@level, and the endpoint's model."""
    served = manager.readiness()["model_id"]
    listed: dict[str, str | None] = {} if served is None else {served: None}
    if manager.endpoint is not None:
        listed.setdefault(manager.endpoint.model, manager.endpoint.key)
    for entry in manager.pool():  # most recently used first
        listed.setdefault(entry["model_id"], entry["key"])
        listed.setdefault(entry["key"], entry["key"])
    return listed


def named(manager: ModelManager, name: Any) -> str | None:
    """The pick `name` stands for: "lfmui", "default" or the default's id, a resident model,
    the endpoint, or (where the owner allows loading on demand) a listed catalog model, loaded
    into the pool now. NoModelLoaded says which names may be used."""
    listed = names(manager)
    if name in (None, "", "lfmui", "default") and listed:
        return None
    if isinstance(name, str) and name in listed:
        return listed[name]
    if manager.endpoint is not None and name == manager.endpoint.key:  # the picker's key
        return name
    loadable = {spec.id for spec in manager.catalog.listed()}
    if isinstance(name, str) and manager.load_on_demand and name in loadable:
        return manager.pick(name)
    if not listed:
        raise NoModelLoaded("No model is loaded. Load one in the Models tab first.")
    usable = ", ".join(f"'{n[:80]}'" for n in list(listed)[:8])
    raise NoModelLoaded(
        f"Model '{str(name)[:60]}' is not loaded here; use {usable} (GET /v1/models lists them)."
    )


def choices(manager: ModelManager) -> list[tuple[str, str]]:
    """What a visitor may pick, as (label, key): the default first, then the connected
    endpoint and the resident models."""
    listed = [("default (what the owner set)", "default")]
    if manager.endpoint is not None:
        remote = Remote(manager.endpoint)
        listed.append((f"{remote.model} (endpoint)", remote.key))
    for entry in manager.pool():
        state = f"answering {entry['answering']}" if entry["answering"] else "idle"
        listed.append((f"{entry['model_id']} · {entry['quantization']} ({state})", entry["key"]))
    return listed


class InProcess:
    """A resident model of the manager's pool (`pick` None: the default one, whichever that
    is when the reply starts), leased for each reply."""

    on_this_machine = True

    def __init__(self, manager: ModelManager, pick: str | None, loaded: Any) -> None:
        """`loaded`: the resident model `pick` names now (``of`` found it)."""
        self.manager, self.pick = manager, pick
        self.key = loaded.key
        spec = loaded.spec
        self.model, self.label = spec.id, f"{spec.id} · {loaded.quantization}"
        self.reads_images, self.random_weights = spec.kind == "vl", spec.random_weights
        self.sampling, self.system_prompt = dict(spec.sampling), spec.system_prompt
        self._processor = loaded.processor
        # whether its template can turn thinking off (Settings.think)
        self.thinking_switch = has_switch(loaded.processor.chat_template)

    def chat(
        self,
        conversation: list[dict[str, Any]],
        settings: dict[str, Any] | None = None,
        stop: threading.Event | None = None,
        tiling: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
        raw: bool = False,
        generate_kwargs: dict[str, Any] | None = None,
        client: str = "",
    ) -> Iterator[engine.Event]:
        with self.manager.lease(self.pick) as loaded:
            checked = Settings.from_dict(settings or {}, defaults=dict(loaded.spec.sampling))
            cut = tiling_of(loaded, tiling)
            started = time.perf_counter()
            inputs = prompts.build_inputs(loaded, conversation, cut, tools, checked.think)
            preprocess = {"preprocess_s": round(time.perf_counter() - started, 4)}
            _check_context(loaded, inputs, checked.max_new_tokens)
            opened = _prompt_opens_thinking(loaded, inputs)
            budget = None
            if opened and checked.thinking_budget:
                budget = _thinking_budget(loaded, checked.thinking_budget)
                generate_kwargs = _with_processor(generate_kwargs, budget)
            events = engine.stream(
                loaded,
                inputs,
                checked,
                stop,
                skip_special_tokens=not raw,
                extra_generate_kwargs=generate_kwargs,
                extra_metrics=preprocess,
                client=client,
            )
            tokens = loaded.tokenizer
            yield from thinking_events(
                events,
                opened,
                lambda text: len(tokens.encode(text, add_special_tokens=False)),
                budget,
            )

    def tiling_defaults(self) -> Tiling | None:
        return Tiling.from_processor(self._processor) if self.reads_images else None

    def plan(self, picture: Any, values: dict[str, Any] | None) -> dict[str, Any]:
        with self.manager.lease(self.pick) as loaded:
            if loaded.spec.kind != "vl":
                raise InputError(f"{loaded.spec.id} reads text only; load a vision-language model.")
            cut = tiling_of(loaded, values)
            return plan_tiles(loaded.processor, picture, cut, context_tokens(loaded))


class Remote:
    """The OpenAI-compatible server the owner connected (lfmui.endpoint.Endpoint)."""

    on_this_machine = False

    def __init__(self, endpoint: Any) -> None:
        self.endpoint = endpoint
        self.key = endpoint.key
        self.model, self.label = endpoint.model, endpoint.label
        self.reads_images, self.random_weights = endpoint.kind == "vl", endpoint.random_weights
        self.sampling, self.system_prompt = dict(endpoint.sampling), endpoint.system_prompt
        self.thinking_switch = True  # the server's template decides (chat_template_kwargs)

    def chat(
        self,
        conversation: list[dict[str, Any]],
        settings: dict[str, Any] | None = None,
        stop: threading.Event | None = None,
        tiling: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
        raw: bool = False,
        generate_kwargs: dict[str, Any] | None = None,
        client: str = "",
    ) -> Iterator[engine.Event]:
        """The server's reply (`raw` and `generate_kwargs` are the in-process model's: a
        server writes its own tool calls, and a test's logits processor stays here)."""
        checked = Settings.from_dict(settings or {}, defaults=self.sampling)
        # a server with a reasoning parser sends thinking apart (endpoint: "thinking" events);
        # one without sends the raw <think> block, split here
        yield from thinking_events(self.endpoint.chat(conversation, checked, stop, tiling, tools))

    def tiling_defaults(self) -> Tiling | None:
        return self.endpoint.tiling(None)

    def plan(self, picture: Any, values: dict[str, Any] | None) -> dict[str, Any]:
        if not self.reads_images:
            raise InputError(f"{self.model} reads text only; serve a vision-language model.")
        if self.endpoint.processor is None:
            raise InputError(
                f"The processor config of {self.model[:80]} could not be read, so its cut "
                "cannot be planned here; the server still reads images with its own settings."
            )
        return plan_tiles(self.endpoint.processor, picture, self.endpoint.tiling(values), 32_768)


def tiling_of(loaded: Any, values: dict[str, Any] | None) -> Tiling | None:
    """Validated per-request tiling over the loaded model's defaults (None for text models)."""
    if loaded.spec.kind != "vl":
        return None
    return Tiling.from_dict(values, defaults=Tiling.from_processor(loaded.processor))


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


def thinking_events(
    events: Iterator[engine.Event],
    opened: bool = False,
    count: Callable[[str], int] | None = None,
    budget: engine.ThinkingBudget | None = None,
) -> Iterator[engine.Event]:
    """A reply's events with a thinking model's ``<think>`` block taken out of its text:
    "thinking" events for the block, "text" for the answer (lfmui.reasoning.Splitter; `opened`:
    the prompt opened the block). A reply that ends inside its thinking says so in its done
    event (``thinking_cut``); its metrics gain ``thinking_s``, the time from the first
    thought to the answer, with `count` (the model's tokenizer) ``thinking_tokens``, and
    ``thinking_budget_hit`` where `budget` ended it. A reply with no block passes as it
    came."""
    splitter = Splitter(opened)
    started = ended = None
    for event in events:
        if event.kind == "text":
            pieces = splitter.feed(event.text)
        elif event.kind == "thinking":  # a server's reasoning_content
            pieces = [("reasoning", event.text)]
        else:
            pieces = splitter.finish() if event.kind in ("metrics", "error", "done") else []
        for part, text in pieces:
            now = time.perf_counter()
            if part == "reasoning":
                started = started or now
                yield engine.Event("thinking", text)
            else:
                ended = ended or (now if started else None)
                yield engine.Event("text", text)
        if event.kind == "metrics" and started is not None:
            thought = {"thinking_s": round((ended or time.perf_counter()) - started, 3)}
            if count is not None:
                thought["thinking_tokens"] = count(splitter.reasoning)
            if budget is not None and budget.hit:
                thought["thinking_budget_hit"] = True
            event = engine.Event("metrics", data={**event.data, **thought})
        elif event.kind == "done" and splitter.cut:
            event = engine.Event("done", data={**event.data, "thinking_cut": True})
        if event.kind not in ("text", "thinking"):
            yield event


def _thinking_budget(loaded: Any, budget: int) -> engine.ThinkingBudget:
    """The processor that ends `loaded`'s thinking after `budget` tokens."""
    tokens = loaded.tokenizer
    close = tokens.encode(f"\n{CLOSE}\n\n", add_special_tokens=False)

    def closed(ids: list[int]) -> bool:
        return CLOSE in tokens.decode(ids, skip_special_tokens=False)

    return engine.ThinkingBudget(budget, close, closed)


def _with_processor(generate_kwargs: dict[str, Any] | None, processor: Any) -> dict[str, Any]:
    """generate()'s keyword arguments with `processor` after the logits processors already
    there (a test's script first: the budget's choice wins)."""
    from transformers import LogitsProcessorList

    kwargs = dict(generate_kwargs or {})
    kwargs["logits_processor"] = LogitsProcessorList(
        [*kwargs.get("logits_processor", []), processor]
    )
    return kwargs


def _prompt_opens_thinking(loaded: Any, inputs: Any) -> bool:
    """Whether the rendered prompt ends inside a <think> block (a thinking model's template
    opens it on the generation prompt): its last few tokens, decoded as they are."""
    tail = loaded.tokenizer.decode(inputs["input_ids"][0, -8:].tolist(), skip_special_tokens=False)
    return opens_thinking(tail)
