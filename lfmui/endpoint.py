"""An OpenAI-compatible server as the model: vLLM, SGLang, llama.cpp's server, transformers serve.

``Endpoint.connect`` lists the served models (``GET /v1/models``; a server that fails there, as
``transformers serve`` does without a hub cache, is used with the model id the user gives) and
reads the model's processor config without weights. ``chat`` streams one reply as the engine's
events (text, metrics, done or error), so the chat, the tool turn and lfmui's own /v1 run on it
unchanged (``turns.chat_turn`` sends a turn here while an endpoint is in use).

Policy, stated once:
- Images go as data URLs, after the app's safe intake and the tiling's aspect cap: the server
  fetches nothing. User and tool text is escaped as for the in-process model.
- Always sent: ``max_tokens``, ``temperature``, ``top_p``, ``seed``. Sent where the server takes
  them: ``min_p``, ``top_k``, ``repetition_penalty`` and the tiling as ``mm_processor_kwargs``
  (vLLM's per-request processor settings). A server that refuses one by name (a 400 or 422
  that names it) is asked again without it, and each reply says what the server did not take.
  A server that silently ignores a field cannot be told apart; the Models tab says so.
- Stop closes the stream at once, before the first token and before the response headers too:
  the server sees the client leave and aborts the request.
- The upstream is bounded: one deadline for the whole reply (the time limit; keep-alive comments
  do not extend it), at most a few chunks more than ``max_tokens`` and ``CHARS_PER_TOKEN``
  characters a token (the reply then ends as at max tokens), one deadline for Connect, and at
  most ``MAX_LISTED_MODELS`` model ids.
- Metrics come from the stream: TTFT from the request to the first text, tokens/s and token
  counts from the usage the server reports (chunks counted when it reports none).
- Tool calls: the server's ``tool_calls`` are written back as LFM2's call block
  (``toolcalls.write_calls``), so the tool turn reads them as it reads the in-process model's;
  a server that sends the raw text is read by ``toolcalls.parse``.
- Failures (unreachable, too slow, an error status, malformed JSON, a stream cut short) are
  sentences that say what to do: ``EndpointError`` before a reply starts, an error event after.
  The in-process model is never touched.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lfmui import prompts, toolcalls
from lfmui.catalog import NOISE_SAMPLING, SAMPLING_OF, SYSTEM_PROMPT_OF, Catalog
from lfmui.engine import Event
from lfmui.errors import LfmuiError
from lfmui.settings import Settings
from lfmui.tiling import Tiling, fit

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 10.0
LIST_TIMEOUT_S = 15.0
CONNECT_DEADLINE_S = 30.0  # Connect, listing the models included, ends within this
MAX_LISTED_MODELS = 200
EXTRA_CHUNKS = 16  # chunks past max_tokens a server may send (role, usage, split tokens)
CHARS_PER_TOKEN = 64  # a reply's characters (text and tool calls) per token asked for
MIN_REPLY_CHARS = 64 * 1024
OPTIONAL = {  # request fields a server may refuse, and what the user is told it did not take
    "min_p": "min_p",
    "top_k": "top_k",
    "repetition_penalty": "repetition penalty",
    "mm_processor_kwargs": "tiling and image budget (mm_processor_kwargs)",
}
FINISH = {"stop": "eos", "tool_calls": "eos", "function_call": "eos", "length": "max_tokens"}
PNG_MAX_PIXELS = 1024 * 1024  # larger pictures go as JPEG (quality 92): a smaller request


class EndpointError(LfmuiError):
    """The endpoint could not be used; the message says why and what to do."""


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
    extra_body: dict[str, Any] = field(default_factory=dict)
    refused: set[str] = field(default_factory=set)  # OPTIONAL fields this server refused
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
        base = _base_url(url)
        model = (model or "").strip() or None
        if extra_body is not None and not isinstance(extra_body, dict):
            raise EndpointError('Extra request fields must be a JSON object, e.g. {"top_k": 20}.')
        client = _client(base, api_key)
        models, note = _within(CONNECT_DEADLINE_S, base, lambda: _list_models(client, base, model))
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
        spec = None if directory.is_dir() else _catalog_match(catalog, self.model)
        self.processor = _processor(
            str(directory) if directory.is_dir() else spec.hub_repo if spec else self.model
        )
        if spec is not None:
            self.kind = spec.kind
        elif self.processor is not None:
            self.kind = "vl" if hasattr(self.processor, "image_processor") else "text"
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
        defaults = Tiling.from_processor(self.processor) if self.processor else Tiling()
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
        reply = _Reply()
        try:
            stream, reason = self._open_within(body, settings.time_limit, stop, deadline)
        except EndpointError as exc:
            yield Event("error", data={"error": "EndpointError", "message": str(exc)})
            return
        if stream is None:  # Stop came before the response headers
            yield Event("metrics", data=self._metrics(reply, submitted, settings))
            yield Event("done", data={"reason": "stopped"})
            return
        most_chunks = settings.max_new_tokens + EXTRA_CHUNKS
        most_chars = max(MIN_REPLY_CHARS, settings.max_new_tokens * CHARS_PER_TOKEN)
        ended, expired = threading.Event(), threading.Event()
        watch = (stop, ended, stream, deadline, expired)
        threading.Thread(target=_close_on_stop, args=watch, daemon=True).start()
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
                    if reply.generated > most_chunks:
                        reason, delta = "max_tokens", ""
                    elif reply.chars > most_chars:
                        reason, delta = "max_tokens", delta[: most_chars - reply.chars]
                    if delta:
                        yield Event("text", delta)
                    if reason:
                        break
        except Exception as exc:  # noqa: BLE001 - the network and the server's JSON: a sentence
            if not (stop.is_set() or expired.is_set()):  # else: closed under the reading
                yield Event("error", data={"error": type(exc).__name__, "message": self._said(exc)})
                return
        finally:
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
            "messages": [_message(m, cut) for m in conversation],
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
                    timeout=openai.Timeout(time_limit, connect=CONNECT_TIMEOUT_S),
                )
            except openai.APIStatusError as exc:
                named = _refused_field(exc, fields)
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
                f"{where} cannot be reached ({_cause(exc)}). Start the server or fix the "
                "URL in the Models tab, or switch back to the in-process model."
            )
        if isinstance(exc, openai.APIStatusError):
            said = _server_message(exc)
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

    def _metrics(self, reply: _Reply, submitted: float, settings: Settings) -> dict[str, Any]:
        ended = time.perf_counter()
        first = reply.first_at
        usage = reply.usage or {}
        generated = int(usage.get("completion_tokens") or reply.generated)
        decode_s = ended - first if first else 0.0
        metrics: dict[str, Any] = {
            "queue_wait_s": 0.0,
            "ttft_s": round(first - submitted, 4) if first else None,
            "decode_tokens_per_s": round((generated - 1) / decode_s, 2)
            if generated > 1 and decode_s > 0
            else None,
            "prompt_tokens": int(usage.get("prompt_tokens") or 0),
            "generated_tokens": generated,
            "total_s": round(ended - submitted, 4),
            "image_tokens": 0,
            "endpoint": self.where,
            "tokens_counted_from": "usage" if reply.usage else "stream chunks",
        }
        if self.refused:
            metrics["server_ignored"] = ", ".join(OPTIONAL[name] for name in sorted(self.refused))
        return metrics


@dataclass
class _Reply:
    """What the stream said so far."""

    first_at: float | None = None
    generated: int = 0  # content chunks, for servers that report no usage
    usage: dict[str, Any] | None = None
    finish: str | None = None
    chars: int = 0  # text and tool-call characters so far
    calls: dict[int, dict[str, str]] = field(default_factory=dict)  # index -> name, arguments

    def take(self, chunk: Any) -> tuple[str, str]:
        """One chunk folded in; the text and the reasoning (a server's reasoning parser) it
        adds."""
        if getattr(chunk, "usage", None) is not None:
            self.usage = chunk.usage.model_dump()
        text = thought = ""
        for choice in chunk.choices or []:
            delta = choice.delta
            if delta is not None and delta.content:
                text += delta.content
            thought += _reasoning_of(delta)
            for call in (delta.tool_calls if delta is not None else None) or []:
                held = self.calls.setdefault(call.index or 0, {"name": "", "arguments": ""})
                if call.function is not None:
                    held["name"] += call.function.name or ""
                    held["arguments"] += call.function.arguments or ""
                    self.chars += len(call.function.name or "") + len(call.function.arguments or "")
            if choice.finish_reason:
                self.finish = choice.finish_reason
        if text or self.calls or thought:
            self.first_at = self.first_at or time.perf_counter()
        if text:
            self.generated += 1
        self.chars += len(text)
        return text, thought

    def written_calls(self) -> str:
        """The server's calls as LFM2's block; arguments that are not a JSON object are
        written as they came, so the tool turn reports that call as unreadable."""
        written = []
        for index in sorted(self.calls):
            call = self.calls[index]
            try:
                arguments = json.loads(call["arguments"] or "{}")
            except ValueError:
                arguments = None
            if isinstance(arguments, dict):
                written.append(toolcalls.write_call({"name": call["name"], "arguments": arguments}))
            else:
                written.append(f"{call['name']}({call['arguments']})")
        return toolcalls.block_of(written)


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


def _close_on_stop(
    stop: threading.Event,
    ended: threading.Event,
    stream: Any,
    deadline: float = float("inf"),
    expired: threading.Event | None = None,
) -> None:
    """Close `stream` as soon as Stop is pressed or the reply's deadline passes (`expired` is
    set then), even while the server sends nothing or only keep-alive comments (a long
    prefill): the server sees the client leave and aborts the request."""
    while not ended.wait(0.1):
        late = time.perf_counter() > deadline
        if late and expired is not None:
            expired.set()
        if stop.is_set() or late:
            # closing a socket does not wake a thread blocked reading it; a shutdown does
            with contextlib.suppress(Exception):
                network = stream.response.extensions["network_stream"]
                network.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
            stream.close()
            return


def _base_url(url: str) -> str:
    url = (url or "").strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise EndpointError(
            f"'{url[:80]}' is not an http(s) URL; give the server's address, e.g. "
            "http://localhost:8000/v1."
        )
    return url if url.endswith("/v1") else f"{url}/v1"


def _client(base: str, api_key: str | None) -> Any:
    """The SDK's client for `base`; an SDK that is missing or does not fit is a sentence. It
    follows no redirect: a server checked by lfmui.access cannot send it elsewhere."""
    try:
        import openai

        timeout = openai.Timeout(LIST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        return openai.OpenAI(
            base_url=base,
            api_key=api_key or "not-needed",
            max_retries=0,
            timeout=timeout,
            http_client=openai.DefaultHttpxClient(follow_redirects=False, timeout=timeout),
        )
    except Exception as exc:  # noqa: BLE001 - ImportError, or an SDK of another major version
        log.exception("the openai SDK could not make a client")
        raise EndpointError(
            f"The openai package could not be used ({type(exc).__name__}: {_short(exc)}). "
            "Install the versions lfmui is tested with: pip install -r requirements.txt."
        ) from None


def _within(seconds: float, base: str, work: Any) -> Any:
    """`work()`'s result, or EndpointError once `seconds` pass (its thread is left to end on
    its own socket timeouts)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    worker = threading.Thread(target=run, name="lfmui-endpoint-connect", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise EndpointError(
            f"{base} did not finish answering within {seconds:.0f} s. Check that the server "
            "is running and not overloaded, then connect again."
        )
    if "error" in box:
        raise box["error"]
    return box["result"]


def _list_models(client: Any, base: str, model: str | None) -> tuple[list[str], str]:
    """The ids the server lists, or none (with a note) where listing fails and `model` is given."""
    import openai

    try:
        listed = [m.id for m in client.models.list().data if isinstance(m.id, str)]
    except (openai.APIConnectionError, openai.APITimeoutError) as exc:
        raise EndpointError(
            f"{base} cannot be reached ({_cause(exc)}). Start the server, or check the URL "
            "(e.g. http://localhost:8000/v1)."
        ) from None
    except Exception as exc:  # noqa: BLE001 - an error status or a malformed list
        if model:
            return [], f"the server did not list its models ({type(exc).__name__}); using '{model}'"
        raise EndpointError(
            f"{base} did not list its models ({_short(exc)}). Give the model id it serves."
        ) from None
    if not listed and not model:
        raise EndpointError(f"{base} lists no models. Give the model id it serves.")
    return listed, ""


def _reasoning_of(delta: Any) -> str:
    """A streamed delta's reasoning: ``reasoning_content`` (vLLM's parsers, llama.cpp,
    DeepSeek) or ``reasoning`` (newer vLLM); the SDK keeps such fields as extras."""
    extra = getattr(delta, "model_extra", None) or {}
    for name in ("reasoning_content", "reasoning"):
        value = extra.get(name)
        if isinstance(value, str) and value:
            return value
    return ""


def _catalog_match(catalog: Catalog, served: str) -> Any:
    """The catalog entry a served id names: a hub repo (``LiquidAI/LFM2-VL-1.6B``) or a GGUF
    file named after one (``LFM2-VL-1.6B-Q8_0.gguf``); the longest name wins."""
    name = served.lower()
    hub = [s for s in catalog.all() if s.source == "hub"]
    matches = [s for s in hub if s.hub_repo.split("/")[-1].lower() in name]
    return max(matches, key=lambda s: len(s.hub_repo), default=None)


def _processor(source: str) -> Any:
    """The model's processor from `source` (a directory or a hub id), without weights; None
    where it cannot be read (offline, a GGUF name, a private repo)."""
    try:
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(source)
    except Exception as exc:  # noqa: BLE001 - any failure means: no config to plan with
        log.info("no processor config for %s: %s", source, type(exc).__name__)
        return None


def _message(message: dict[str, Any], cut: Tiling | None) -> dict[str, Any]:
    """A conversation message in OpenAI's shape: untrusted text escaped, images as data URLs."""
    role, content = message["role"], message["content"]
    trusted = role in ("system", "assistant")
    if isinstance(content, str):
        return {"role": role, "content": content if trusted else prompts.escape_specials(content)}
    parts = []
    for part in content:
        if part["type"] == "image":
            parts.append({"type": "image_url", "image_url": {"url": data_url(part["image"], cut)}})
        else:
            text = part["text"] if trusted else prompts.escape_specials(part["text"])
            parts.append({"type": "text", "text": text})
    return {"role": role, "content": parts}


def data_url(image: Any, cut: Tiling | None) -> str:
    """A checked picture as a data URL, inside the tiling's aspect cap."""
    picture = fit(image, cut or Tiling())
    large = picture.width * picture.height > PNG_MAX_PIXELS
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG" if large else "PNG", **({"quality": 92} if large else {}))
    kind = "jpeg" if large else "png"
    return f"data:image/{kind};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def _refused_field(exc: Any, fields: dict[str, Any]) -> str | None:
    """The optional field a 400/422 names, if it names one we sent."""
    if exc.status_code not in (400, 422):
        return None
    said = _server_message(exc)
    return next((name for name in OPTIONAL if name in fields and name in said), None)


def _server_message(exc: Any) -> str:
    """The server's own words from an error status, short and on one line."""
    body = getattr(exc, "body", None)
    said = None
    if isinstance(body, dict):
        said = body.get("message") or body.get("detail") or body.get("error")
        if isinstance(said, dict):
            said = said.get("message")
    text = str(said if said is not None else getattr(exc, "message", "") or exc)
    return " ".join(text.split())[:200] or "no message"


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    return _short(cause) if cause else "no connection"


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:120] or type(exc).__name__
