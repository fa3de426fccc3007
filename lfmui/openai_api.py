"""lfmui's own OpenAI-compatible routes: ``GET /v1/models`` and ``POST /v1/chat/completions``.

A request is checked whole before any model work (``parse_request``): the resident model's id
(or ``"lfmui"``), messages with the roles system, user, assistant and tool, text and image parts
(images as ``data:`` URLs only: the server fetches nothing), ``tools`` and ``tool_choice``,
``max_tokens`` (or ``max_completion_tokens``), ``temperature``, ``top_p``, ``top_k`` (vLLM's
extra), ``seed``, ``stop``, ``stream`` and ``stream_options.include_usage``. Anything else,
``n`` above 1 and ``logprobs`` are 400s that say what to send instead, shaped as OpenAI
errors, with the UI's sentences.

The reply runs through ``turns.chat_turn``: the same engine, generation thread, limits and
errors as the UI. With tools, LFM2's calls come back as ``tool_calls`` (``toolcalls.parse``);
the reply is then read whole before it is sent, so no call markers stream out as text. A tool
that cannot be called (``tools.registry_of``) is left out, not the request: the response's
``x-lfmui-skipped-tools`` header says which and why. A client that goes away sets the reply's
Stop flag: generation ends at the next token.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lfmui import backends, images, reasoning, toolcalls, turns
from lfmui import tools as tools_module
from lfmui.errors import LfmuiError, NoModelLoaded, TooManyRequests
from lfmui.manager import ModelManager

ACCEPTED = {
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "tools",
    "tool_choice",
    "n",
    "user",
    "parallel_tool_calls",
}
MAX_STOPS = 4
MAX_STOP_CHARS = 256  # a stop string is held back while it may be starting: its length bounds that
MAX_MESSAGES = 512
TOOL_CHOICES = ("auto", "none", "required")
SKIPPED_HEADER = "x-lfmui-skipped-tools"
FINISH = {"eos": "stop", "stopped": "stop", "max_tokens": "length", "time_limit": "length"}


class ApiError(Exception):
    """A request refused: its HTTP status and an OpenAI-shaped body."""

    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param = status, param

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": None}}


@dataclass
class ChatRequest:
    conversation: list[dict[str, Any]]
    settings: dict[str, Any]
    tools: list[dict[str, Any]] | None = None
    stream: bool = False
    include_usage: bool = False
    stops: list[str] = field(default_factory=list)
    folder: str = ""  # where the request's images were written
    skipped_tools: list[str] = field(default_factory=list)  # tools left out: why, per tool
    model: str | None = None  # the Backend it picked (lfmui.backends.of; None: the default)
    answered_by: str = "lfmui"  # that Backend's key: the reply's `model`, as OpenAI names its own

    def headers(self) -> dict[str, str]:
        """The response's own headers: the tools left out, where any were (OpenAI's shape
        has no field for it)."""
        if not self.skipped_tools:
            return {}
        said = " ".join(self.skipped_tools)[:1000]
        return {SKIPPED_HEADER: said.encode("ascii", "backslashreplace").decode()}


def models(manager: ModelManager) -> dict[str, Any]:
    """What `model` may name: the default first, then each resident model (by id, and by
    id@level) and the connected endpoint's model."""
    return {"object": "list", "data": [_model(name) for name in backends.names(manager)]}


def _model(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "lfmui"}


def _pick(model: Any, manager: ModelManager) -> str | None:
    """The Backend the request's `model` names (lfmui.backends.named), or a 404/503 saying
    which names it may use."""
    try:
        return backends.named(manager, model)
    except NoModelLoaded as exc:
        raise ApiError(str(exc), 404 if backends.names(manager) else 503, "model") from None
    except LfmuiError as exc:  # a load on demand refused (the pool is full, say)
        raise ApiError(str(exc), 503, "model") from None


def parse_request(body: Any, manager: ModelManager) -> ChatRequest:
    """A checked request, or ApiError saying what to send instead."""
    if not isinstance(body, dict):
        raise ApiError("Send a JSON object with model and messages.")
    unknown = sorted(set(body) - ACCEPTED)
    if unknown:
        raise ApiError(
            f"lfmui does not support {', '.join(unknown)[:80]}; send only: "
            f"{', '.join(sorted(ACCEPTED))}.",
            param=unknown[0],
        )
    if body.get("n", 1) != 1:
        raise ApiError("n must be 1: lfmui returns one choice per request.", param="n")
    settings = _settings(body)
    stops = body.get("stop") or []
    stops = [stops] if isinstance(stops, str) else stops
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOPS
        or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stops)
    ):
        raise ApiError(
            f"stop must be a string or up to {MAX_STOPS} strings of 1 to {MAX_STOP_CHARS} "
            "characters.",
            param="stop",
        )
    _count(body.get("messages"))
    _check_tool_choice(body.get("tool_choice", "auto"))
    pick = _pick(body.get("model"), manager)  # last of the checks: it may load a model
    # where the request's images go, made only when one comes (images.save_data_url)
    folder = str(Path(tempfile.gettempdir()) / f"lfmui-v1-{uuid.uuid4().hex}")
    try:
        conversation = _conversation(body.get("messages"), Path(folder))
        skipped: list[str] = []
        tools = _tools(body.get("tools"), body.get("tool_choice", "auto"), conversation, skipped)
    except Exception:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    options = body.get("stream_options") or {}
    return ChatRequest(
        conversation,
        settings,
        tools,
        bool(body.get("stream")),
        bool(isinstance(options, dict) and options.get("include_usage")),
        stops,
        folder,
        skipped,
        pick,
        backends.of(manager, pick).key,
    )


def _count(messages: Any) -> None:
    """Counts and shapes checked before anything is decoded: the number of messages, the
    images per message and in all, and each assistant's earlier tool calls."""
    if not isinstance(messages, list) or not messages:
        raise ApiError("messages must be a non-empty list.", param="messages")
    if len(messages) > MAX_MESSAGES:
        raise ApiError(
            f"{len(messages):,} messages were sent; send at most {MAX_MESSAGES}.",
            param="messages",
        )
    pictures = 0
    for number, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        parts = content if isinstance(content, list) else []
        here = sum(1 for p in parts if isinstance(p, dict) and p.get("type") == "image_url")
        if here > turns.MAX_IMAGES_PER_MESSAGE:
            raise ApiError(
                f"messages[{number}] holds {here} images; send at most "
                f"{turns.MAX_IMAGES_PER_MESSAGE} per message.",
                param="messages",
            )
        pictures += here
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        if calls is not None and not (
            isinstance(calls, list)
            and all(isinstance(c, dict) and isinstance(c.get("function"), dict) for c in calls)
        ):
            raise ApiError(
                f"messages[{number}].tool_calls must be a list of "
                '{"type": "function", "function": {"name": ..., "arguments": "{...}"}}.',
                param="messages",
            )
    if pictures > turns.MAX_IMAGES_PER_CHAT:
        raise ApiError(
            f"The messages hold {pictures} images; send at most {turns.MAX_IMAGES_PER_CHAT}.",
            param="messages",
        )


def _check_tool_choice(choice: Any) -> None:
    named = isinstance(choice, dict) and isinstance(choice.get("function"), dict)
    if choice in TOOL_CHOICES or (named and isinstance(choice["function"].get("name"), str)):
        return
    raise ApiError(
        'tool_choice must be "auto", "none", "required" or '
        '{"type": "function", "function": {"name": "..."}}.',
        param="tool_choice",
    )


def _settings(body: dict[str, Any]) -> dict[str, Any]:
    names = {"max_completion_tokens": "max_new_tokens", "max_tokens": "max_new_tokens"}
    names.update(temperature="temperature", top_p="top_p", top_k="top_k", seed="seed")
    return {names[k]: v for k, v in body.items() if k in names and v is not None}


def _conversation(messages: list[Any], folder: Path) -> list[dict[str, Any]]:
    """The messages, counted and shaped by ``_count`` already, with their images decoded."""
    conversation = []
    for number, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in (
            "system",
            "user",
            "assistant",
            "tool",
            "developer",
        ):
            raise ApiError(
                f"messages[{number}] needs a role of system, user, assistant or tool.",
                param="messages",
            )
        role = "system" if message["role"] == "developer" else message["role"]
        content = _content(message.get("content"), folder / str(number), number)
        for call in message.get("tool_calls") or []:  # an assistant's earlier calls
            content += _written_call(call)
        conversation.append({"role": role, "content": content})
    if conversation[-1]["role"] not in ("user", "tool"):
        raise ApiError("The last message must be from the user or a tool.", param="messages")
    return conversation


def _content(content: Any, stem: Path, number: int) -> Any:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise ApiError(f"messages[{number}].content must be text or a list of parts.")
    parts = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            url = (part.get("image_url") or {}).get("url") if isinstance(part, dict) else None
            if isinstance(url, str) and not url.startswith("data:"):
                raise ApiError(
                    "Remote image URLs are refused: lfmui fetches nothing. Send the image as "
                    "a data:image/...;base64 URL.",
                    param="messages",
                )
            what = f"The image in messages[{number}]"
            path = images.save_data_url(url, stem / f"image-{index}", what)
            parts.append({"type": "image", "image": images.load_safe(path)})
        else:
            raise ApiError(
                f"messages[{number}].content[{index}] must be a text or image_url part.",
                param="messages",
            )
    return parts


def _written_call(call: Any) -> str:
    """An earlier OpenAI tool call written back the way LFM2 writes calls."""
    function = call.get("function", {}) if isinstance(call, dict) else {}
    raw = function.get("arguments") or "{}"
    try:
        arguments = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        raise ApiError("A tool call's arguments must be a JSON object.")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise ApiError("A tool call needs a function name.", param="messages")
    return toolcalls.write_calls([{"name": name, "arguments": arguments}])


def _tools(
    tools: Any, choice: Any, conversation: list[dict[str, Any]], skipped: list[str]
) -> list | None:
    """The tool schemas for the prompt (the tool choice stated in `conversation`); sentences
    for the tools left out go to `skipped`."""
    if not tools:
        return None
    if not isinstance(tools, list):
        raise ApiError("tools must be a list of function tools.", param="tools")
    functions = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type") != "function":
            raise ApiError('Each tool must be {"type": "function", "function": {...}}.')
        functions.append(function)
    registry = tools_module.registry_of(functions)  # one that cannot be called is left out
    skipped.extend(registry.skipped)
    schemas = [tool.schema() for tool in registry.values()]
    if isinstance(choice, dict):
        choice = (choice.get("function") or {}).get("name", "auto")
    choice = {"required": "auto"}.get(choice, choice)
    return turns.apply_tool_choice(conversation, schemas, str(choice))


def run(
    manager: ModelManager,
    request: ChatRequest,
    stop: threading.Event,
    client: str = "",
    chat_turn: Callable[..., Iterator[Any]] = turns.chat_turn,
) -> Iterator[dict]:
    """The reply as ("delta", text) / ("reasoning", text) / ("calls", [...]) / ("end",
    finish, usage) records;
    `client` takes its turn on the generation thread with the others. `chat_turn` is
    turns.chat_turn or the UI's wrapper of it (on ZeroGPU, run in a GPU worker)."""
    text, usage, finish = "", {}, "stop"
    events = chat_turn(
        manager,
        request.conversation,
        settings=request.settings,
        stop=stop,
        tools=request.tools or None,
        raw=request.tools is not None,
        model=request.model,
        client=client,
    )
    sent = 0  # characters streamed so far: a possible start of a stop string is held back
    for event in events:
        if event.kind == "thinking":  # a reasoning model's, sent apart (reasoning_content)
            yield {"reasoning": event.text}
        elif event.kind == "text":
            text += event.text
            cut = _stop_at(text, request.stops)
            if cut is not None:
                stop.set()
                text, finish = text[:cut], "stop"
                break
            ready = len(text) - _held(text, request.stops)
            if request.tools is None and ready > sent:
                yield {"delta": text[sent:ready]}
                sent = ready
        elif event.kind == "metrics":
            usage = _usage(event.data)
        elif event.kind == "done":
            finish = FINISH.get(event.data["reason"], "stop")
        elif event.kind == "error":
            raise ApiError(event.data["message"], 500)
    for event in events:  # after a stop string: the engine ends at the next token
        if event.kind == "metrics":
            usage = _usage(event.data)
    if request.tools is None and len(text) > sent:
        yield {"delta": text[sent:]}
    if request.tools is not None:
        parsed = toolcalls.parse(text, request.tools)
        if parsed.text:
            yield {"delta": parsed.text}
        if parsed.calls:
            yield {"calls": [_tool_call(c) for c in parsed.calls]}
            finish = "tool_calls"
    yield {"end": finish, "usage": usage}


def _held(text: str, stops: list[str]) -> int:
    """How many of `text`'s last characters could begin a stop string."""
    return max((reasoning.partial(text, stop) for stop in stops), default=0)


def _stop_at(text: str, stops: list[str]) -> int | None:
    found = [text.find(s) for s in stops if s in text]
    return min(found) if found else None


def _usage(metrics: dict[str, Any]) -> dict[str, int]:
    prompt, completion = metrics.get("prompt_tokens", 0), metrics.get("generated_tokens", 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _tool_call(call: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])},
    }


def completion(model: str, records: list[dict]) -> dict[str, Any]:
    """The non-streaming response from the reply's records."""
    text = "".join(r.get("delta", "") for r in records)
    reasoning = "".join(r.get("reasoning", "") for r in records)
    calls = [c for r in records for c in r.get("calls", [])]
    end = records[-1]
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if reasoning:  # as vLLM's reasoning parsers return it
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = calls
    return {
        **_head(model, "chat.completion"),
        "choices": [{"index": 0, "message": message, "finish_reason": end["end"]}],
        "usage": end["usage"],
    }


def chunks(model: str, records: Iterator[dict], include_usage: bool) -> Iterator[dict]:
    """The streaming response's chunks (the SSE ``data:`` payloads) from the reply's records."""
    head = _head(model, "chat.completion.chunk")

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    yield chunk({"role": "assistant", "content": ""})
    for record in records:
        if "reasoning" in record:
            yield chunk({"reasoning_content": record["reasoning"]})
        elif "delta" in record:
            yield chunk({"content": record["delta"]})
        elif "calls" in record:
            calls = [{"index": i, **c} for i, c in enumerate(record["calls"])]
            yield chunk({"tool_calls": calls})
        else:
            yield chunk({}, record["end"])
            if include_usage:
                yield {**head, "choices": [], "usage": record["usage"]}


def _head(model: str, kind: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": kind,
        "created": int(time.time()),
        "model": model,
    }


def refused(exc: Exception) -> ApiError:
    """Our errors as OpenAI-shaped ones (the same sentences as the UI)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, NoModelLoaded):
        return ApiError(str(exc), 503)
    if isinstance(exc, TooManyRequests):
        return ApiError(str(exc), 429)
    if isinstance(exc, LfmuiError):
        return ApiError(str(exc), 400)
    return ApiError("Something went wrong on the server; the app is still running.", 500)
