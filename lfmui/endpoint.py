"""An OpenAI-compatible server as the model (vLLM, SGLang, llama.cpp's server, transformers
serve): ``Endpoint.connect`` lists and checks what it serves; ``chat`` streams one reply as the
engine's events, so the chat, the tool turn and lfmui's own /v1 run on it unchanged. Failures
are sentences (``EndpointError`` before a reply, an error event after); the in-process model is
never touched. What is sent, bounded and measured:
docs/endpoints.md#how-lfmui-talks-to-an-endpoint-lfmuiendpoint.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from lfmui import openai_wire as wire
from lfmui import prompts
from lfmui.catalog import NOISE_SAMPLING, SAMPLING_OF, SYSTEM_PROMPT_OF, Catalog
from lfmui.engine import Event, timing
from lfmui.errors import EndpointError
from lfmui.reasoning import SWITCH
from lfmui.settings import Settings
from lfmui.tiling import Tiling

log = logging.getLogger(__name__)
CONNECT_DEADLINE_S = 30.0  # Connect, listing the models included, ends within this
MAX_LISTED_MODELS = 200
EXTRA_CHUNKS = 16  # chunks past max_tokens a server may send (role, usage, split tokens)
CHARS_PER_TOKEN = 64  # a reply's characters (text and tool calls) per token asked for
MIN_REPLY_CHARS = 64 * 1024
FINISH = {"stop": "eos", "tool_calls": "eos", "function_call": "eos", "length": "max_tokens"}


@dataclass
class Endpoint:
    """A connected OpenAI-compatible server and the model it serves."""

    url: str
    model: str
    models: list[str]
    client: Any  # openai.OpenAI
    kind: str = "vl"  # "vl" or "text": whether images are sent
    sampling: dict[str, Any] = field(default_factory=dict)
    system_prompt: str = SYSTEM_PROMPT_OF["vl"]
    random_weights: bool = False
    processor: Any = None  # the model's processor, read without weights (None: not found)
    image_defaults: dict[str, Any] = field(default_factory=dict)  # the catalog's, if it names it
    extra_body: dict[str, Any] = field(default_factory=dict)
    refused: set[str] = field(default_factory=set)  # wire.OPTIONAL fields this server refused
    note: str = ""  # what connecting found (no model list, no processor config)
    show_url: bool = True  # False: the address and extra fields are the owner's, shown to none

    @property
    def where(self) -> str:
        """The address as the page and the API show it."""
        return self.url if self.show_url else "the endpoint the owner connected"

    @classmethod
    def connect(
        cls,
        url: str,
        model: str | None = None,
        api_key: str | None = None,
        extra_body: dict[str, Any] | None = None,
        catalog: Catalog | None = None,
        show_url: bool = True,
    ) -> Endpoint:
        """Reach `url` (the server's base URL, with or without ``/v1``) and pick `model`, or
        the first it lists; EndpointError says what is wrong. With `show_url` False (an app
        that strangers reach) its address and extra fields are shown to nobody."""
        base = wire.base_url(url)
        model = (model or "").strip() or None
        if extra_body is not None and not isinstance(extra_body, dict):
            raise EndpointError('Extra request fields must be a JSON object, e.g. {"top_k": 20}.')
        client = wire.client_for(base, api_key)
        models, note = wire.within(
            CONNECT_DEADLINE_S, base, lambda: wire.list_models(client, base, model)
        )
        models = models[:MAX_LISTED_MODELS]
        if model is None:
            model = models[0]
        elif models and model not in models:
            raise EndpointError(
                f"{base} serves {', '.join(m[:60] for m in models[:8])}, not '{model[:80]}'. "
                "Pick one of those, or leave the model id empty for the first."
            )
        endpoint = cls(
            base,
            model,
            models or [model],
            client,
            extra_body=dict(extra_body or {}),
            show_url=show_url,
        )
        endpoint._describe(catalog or Catalog(), note)
        return endpoint

    def _describe(self, catalog: Catalog, note: str) -> None:
        """What the served model is: its kind, sampling defaults and processor config, from a
        local checkpoint directory (the served id is its path), the catalog entry the id
        names, or its processor config."""
        notes = [note] if note else []
        directory = Path(self.model).expanduser()
        spec = None if directory.is_dir() else wire.catalog_match(catalog, self.model)
        self.processor = wire.processor_of(
            str(directory) if directory.is_dir() else spec.hub_repo if spec else self.model
        )
        if spec is not None:
            self.kind = spec.kind
        elif self.processor is not None:
            self.kind = "vl" if hasattr(self.processor, "image_processor") else "text"
        # where the processor config cannot be read, the catalog's image defaults stand in
        self.image_defaults = dict(spec.image_defaults) if spec else {}
        self.sampling = dict(spec.sampling if spec else SAMPLING_OF[self.kind])
        self.system_prompt = SYSTEM_PROMPT_OF[self.kind]
        if directory.is_dir() and (directory / "lfmui-build.json").is_file():
            self.random_weights = True  # an offline build of ours: its replies are noise
            self.sampling = dict(NOISE_SAMPLING)
        if self.processor is None and self.kind == "vl":
            notes.append(
                "its processor config could not be read, so the tiling inspector cannot plan "
                "images for it"
            )
        self.note = "; ".join(notes)

    # ---- state ------------------------------------------------------------------------------
    @property
    def key(self) -> str:
        """How a visitor's pick names it: the model it serves, never its address."""
        return f"endpoint:{self.model}"

    @property
    def label(self) -> str:
        return f"{self.model} at {self.where}"

    def status(self) -> dict[str, Any]:
        return {
            "url": self.where,
            "model": self.model,
            "models": self.models,
            "kind": self.kind,
            "random_weights": self.random_weights,
            "refused": sorted(self.refused),
            "note": self.note,
        }

    def tiling(self, values: dict[str, Any] | None) -> Tiling | None:
        """Validated tiling over the model's processor defaults (None for text models)."""
        if self.kind != "vl":
            return None
        catalog = SimpleNamespace(**self.image_defaults) if self.image_defaults else None
        source = self.processor or catalog
        defaults = Tiling.from_processor(source) if source else Tiling()
        return Tiling.from_dict(values, defaults=defaults)

    # ---- one reply ----------------------------------------------------------------------------
    def chat(
        self,
        conversation: list[dict[str, Any]],
        settings: Settings,
        stop: threading.Event | None = None,
        tiling: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> Iterator[Event]:
        """Stream the reply to `conversation` as engine events; always ends with done or error."""
        stop = stop or threading.Event()
        cut = self.tiling(tiling)
        body = self._body(conversation, settings, cut, tiling, tools)
        submitted = time.perf_counter()
        deadline = submitted + settings.time_limit
        reply = wire.Reply()
        try:
            stream, reason = self._open_within(body, settings.time_limit, stop, deadline)
        except EndpointError as exc:
            yield Event("error", data={"error": "EndpointError", "message": str(exc)})
            return
        if stream is None:  # Stop came before the response headers
            yield Event("metrics", data=self._metrics(reply, submitted, settings))
            yield Event("done", data={"reason": "stopped"})
            return
        ended, expired = threading.Event(), threading.Event()
        watch = (stop, ended, stream, deadline, expired)
        threading.Thread(target=wire.close_on_stop, args=watch, daemon=True).start()
        read = self._read(stream, reply, settings, (stop, expired), deadline)
        try:
            for event in read:
                if event.kind == "error":
                    yield event
                    return
                if event.kind == "done":
                    reason = event.data["reason"]
                    break
                yield event
        finally:
            read.close()  # a reply cut at its cap closes the stream now: the server stops
            ended.set()
        if expired.is_set():
            reason = "time_limit"
        if stop.is_set():
            reason = "stopped"
        if reply.calls:
            yield Event("text", reply.written_calls())
        if reason is None:
            if reply.finish is None:
                yield Event("error", data={"error": "EndpointError", "message": self._cut_short()})
                return
            reason = FINISH.get(reply.finish, "eos")
        yield Event("metrics", data=self._metrics(reply, submitted, settings))
        yield Event("done", data={"reason": reason})

    def _read(self, stream, reply: wire.Reply, settings: Settings, flags, deadline: float):
        """The stream's text and thinking as events, until it ends, Stop or the deadline
        (`flags`: stop, expired), or the reply passes what was asked for: then a "done" event
        with that reason. A failure while reading is an "error" event, unless Stop or the
        deadline closed the stream under the reading."""
        stop, expired = flags
        most_chunks = settings.max_new_tokens + EXTRA_CHUNKS
        most_chars = max(MIN_REPLY_CHARS, settings.max_new_tokens * CHARS_PER_TOKEN)
        try:
            with stream:
                for chunk in stream:
                    if stop.is_set() or expired.is_set():
                        break
                    if time.perf_counter() > deadline:
                        expired.set()
                        break
                    delta, thought = reply.take(chunk)
                    if thought:  # vLLM's and llama.cpp's reasoning parsers send it apart
                        yield Event("thinking", thought)
                    # a server that sends past what was asked for is cut there
                    reason = None
                    if reply.generated > most_chunks:
                        reason, delta = "max_tokens", ""
                    elif reply.chars > most_chars:
                        reason, delta = "max_tokens", delta[: most_chars - reply.chars]
                    if delta:
                        yield Event("text", delta)
                    if reason:
                        yield Event("done", data={"reason": reason})
                        return
        except Exception as exc:  # noqa: BLE001 - the network and the server's JSON: a sentence
            if not (stop.is_set() or expired.is_set()):  # else: closed under the reading
                said = self._said(exc)
                yield Event("error", data={"error": type(exc).__name__, "message": said})

    def _body(
        self,
        conversation: list[dict[str, Any]],
        settings: Settings,
        cut: Tiling | None,
        tiling: dict[str, Any] | None,
        tools: list[dict[str, Any]] | None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [wire.message(m, cut) for m in conversation],
            "stream_options": {"include_usage": True},
            "max_tokens": settings.max_new_tokens,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "min_p": settings.min_p,
            "top_k": settings.top_k,
            "repetition_penalty": settings.repetition_penalty,
        }
        if settings.seed is not None:
            body["seed"] = settings.seed
        if not settings.think:  # vLLM's, SGLang's and llama.cpp's way to the template's switch
            body["chat_template_kwargs"] = {SWITCH: False}
        if cut is not None and tiling:  # only what the user set: the server keeps its defaults
            body["mm_processor_kwargs"] = {k: getattr(cut, k) for k in tiling}
        if tools:
            body["tools"] = [
                {"type": "function", "function": prompts.escape_tree(schema)} for schema in tools
            ]
        body.update(self.extra_body)
        for name in self.refused:
            body.pop(name, None)
        return body

    def _open_within(
        self, body: dict[str, Any], time_limit: float, stop: threading.Event, deadline: float
    ) -> tuple[Any, str | None]:
        """The stream, or (None, "stopped") when Stop comes before the response headers;
        EndpointError when the deadline does (a stream that arrives later is closed at once)."""
        box: dict[str, Any] = {}
        opened = threading.Event()

        def open_it() -> None:
            try:
                box["stream"] = self._open(body, time_limit)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                box["error"] = exc
            finally:
                opened.set()
                if box.get("abandoned") and "stream" in box:
                    box["stream"].close()  # the server sees the client leave

        threading.Thread(target=open_it, name="lfmui-endpoint-open", daemon=True).start()
        while not opened.wait(0.05):
            if stop.is_set() or time.perf_counter() > deadline:
                box["abandoned"] = True
                if opened.is_set() and "stream" in box:  # it came just now
                    box["stream"].close()
                if not stop.is_set():
                    raise EndpointError(self._too_slow())
                return None, "stopped"
        if "error" in box:
            raise box["error"]
        return box["stream"], None

    def _open(self, body: dict[str, Any], time_limit: float) -> Any:
        """The stream of chunks; a field the server refuses by name is dropped and asked again."""
        import openai

        fields = {k: v for k, v in body.items() if k not in ("model", "messages")}
        while True:
            try:
                return self.client.chat.completions.create(  # every other field as sent
                    model=body["model"],
                    messages=body["messages"],
                    stream=True,
                    extra_body=fields,
                    timeout=openai.Timeout(time_limit, connect=wire.CONNECT_TIMEOUT_S),
                )
            except openai.APIStatusError as exc:
                named = wire.refused_field(exc, fields)
                if named is None:
                    raise EndpointError(self._said(exc)) from None
                log.info("%s refused %s; asking again without it", self.url, named)
                self.refused.add(named)
                fields.pop(named)
            except Exception as exc:  # noqa: BLE001 - connection, timeout: a sentence
                raise EndpointError(self._said(exc)) from None

    # ---- sentences ----------------------------------------------------------------------------
    def _named(self) -> str:
        """The endpoint as a sentence begins with it (its address only where it may be shown)."""
        return f"The endpoint {self.url}" if self.show_url else "The endpoint the owner connected"

    def _too_slow(self) -> str:
        return (
            f"{self._named()} did not answer in time. Check that the server is running "
            "and not overloaded, or raise the time limit, then send again."
        )

    def _said(self, exc: BaseException) -> str:
        """What the user reads when the server failed with `exc`."""
        import openai

        where = self._named()
        if isinstance(exc, openai.APITimeoutError):
            return self._too_slow()
        if isinstance(exc, openai.APIConnectionError):
            return (
                f"{where} cannot be reached ({wire.cause(exc)}). Start the server or fix the "
                "URL in the Models tab, or switch back to the in-process model."
            )
        if isinstance(exc, openai.APIStatusError):
            said = wire.server_message(exc)
            if exc.status_code == 404 or "not found" in said.lower():
                return (
                    f"{where} does not serve '{self.model[:80]}' ({said}). Pick a model it "
                    f"serves in the Models tab: {', '.join(m[:60] for m in self.models[:8])}."
                )
            return (
                f"{where} refused the request ({exc.status_code}: {said}). Change what it "
                "names and send again."
            )
        if isinstance(exc, json.JSONDecodeError | ValueError | KeyError | TypeError):
            return (
                f"{where} sent a reply that is not valid OpenAI JSON. Check that the URL "
                "points at an OpenAI-compatible server (its /v1), then send again."
            )
        return self._cut_short()

    def _cut_short(self) -> str:
        return (
            f"{self._named()} ended the reply before it finished (the stream was cut "
            "short). The server may have restarted or run out of memory; send again."
        )

    def _metrics(self, reply: wire.Reply, submitted: float, settings: Settings) -> dict[str, Any]:
        usage = reply.usage or {}
        generated = int(usage.get("completion_tokens") or reply.generated)
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        metrics: dict[str, Any] = {
            "queue_wait_s": 0.0,
            **timing(submitted, reply.first_at, time.perf_counter(), prompt_tokens, generated),
            "image_tokens": 0,
            "endpoint": self.where,
            "tokens_counted_from": "usage" if reply.usage else "stream chunks",
        }
        if self.refused:
            metrics["server_ignored"] = ", ".join(
                wire.OPTIONAL[name] for name in sorted(self.refused)
            )
        return metrics


def extra_fields(text: str | None) -> dict[str, Any] | None:
    """Extra request fields typed as JSON (empty: none); InputError when it is not an object."""
    if not (text or "").strip():
        return None
    try:
        fields = json.loads(text)
    except ValueError:
        fields = None
    if not isinstance(fields, dict):
        raise EndpointError('Extra request fields must be a JSON object, e.g. {"top_k": 20}.')
    return fields
