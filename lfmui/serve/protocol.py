"""The OpenAI chat-completions protocol as lfmui reads it: the request body as a pydantic
model (``ChatCompletionRequest``: the fields lfmui accepts and their range checks), the checked
request the reply runs from (``ChatRequest``: images decoded, tools chosen), and ``ApiError``,
an OpenAI-shaped refusal with the UI's sentences. Nothing here generates. What /v1 accepts and
why: docs/api.md.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from lfmui import backends, images, tool_turn, toolcalls, turns
from lfmui import tools as tools_module
from lfmui.errors import LfmuiError, NoModelLoaded, TooManyRequests
from lfmui.manager import ModelManager
from lfmui.reasoning import SWITCH

MAX_STOPS = 4
MAX_STOP_CHARS = 256  # a stop string is held back while it may be starting: its length bounds that
MAX_MESSAGES = 512
TOOL_CHOICES = ("auto", "none", "required")
SKIPPED_HEADER = "x-lfmui-skipped-tools"
SETTING_OF = {  # the request's sampling fields, by the name lfmui's settings give them
    "max_completion_tokens": "max_new_tokens",
    "max_tokens": "max_new_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "seed": "seed",
}


class ApiError(Exception):
    """A request refused: its HTTP status and an OpenAI-shaped body."""

    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param = status, param

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": None}}


class ChatCompletionRequest(BaseModel):
    """The body of ``POST /v1/chat/completions``: any other field is refused by name. Fields are
    checked in this order and the first problem is the answer. The sampling fields' ranges are
    the one settings definition's (``lfmui.settings``), checked when the reply starts."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    model: Any = None
    n: Any = 1
    stop: Any = None
    messages: Any = None
    tool_choice: Any = "auto"
    tools: Any = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: Any = None
    max_completion_tokens: Any = None
    temperature: Any = None
    top_p: Any = None
    top_k: Any = None
    seed: Any = None
    user: str | None = None
    parallel_tool_calls: bool | None = None
    # vLLM's and llama.cpp's way to pass the template's switches; lfmui reads enable_thinking
    chat_template_kwargs: Any = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: Any) -> Any:
        if n != 1:
            raise ApiError("n must be 1: lfmui returns one choice per request.", param="n")
        return n

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: Any) -> list[str]:
        stops = [stop] if isinstance(stop, str) else (stop or [])
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
        return stops

    @field_validator("messages")
    @classmethod
    def _messages(cls, messages: Any) -> Any:
        _count(messages)
        return messages

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice(cls, choice: Any) -> Any:
        _check_tool_choice(choice)
        return choice

    @field_validator("chat_template_kwargs")
    @classmethod
    def _template_switches(cls, given: Any) -> Any:
        if given is None:
            return given
        if not isinstance(given, dict) or set(given) - {SWITCH}:
            raise ApiError(
                f'chat_template_kwargs takes {{"{SWITCH}": true or false}} only.',
                param="chat_template_kwargs",
            )
        if not isinstance(given.get(SWITCH, True), bool):
            raise ApiError(
                f"chat_template_kwargs.{SWITCH} must be true or false.",
                param=f"chat_template_kwargs.{SWITCH}",
            )
        return given

    def settings(self) -> dict[str, Any]:
        """The sampling fields sent, by lfmui's names (and the thinking switch)."""
        sent = self.model_dump(include=set(SETTING_OF), exclude_none=True)
        settings = {SETTING_OF[k]: v for k, v in sent.items()}
        if self.chat_template_kwargs and SWITCH in self.chat_template_kwargs:
            settings["think"] = self.chat_template_kwargs[SWITCH]
        return settings

    @classmethod
    def read(cls, body: Any) -> ChatCompletionRequest:
        """The body checked, or ApiError naming the first problem and what to send instead."""
        if not isinstance(body, dict):
            raise ApiError("Send a JSON object with model and messages.")
        unknown = sorted(set(body) - set(cls.model_fields))
        if unknown:
            raise ApiError(
                f"lfmui does not support {', '.join(unknown)[:80]}; send only: "
                f"{', '.join(sorted(cls.model_fields))}.",
                param=unknown[0],
            )
        try:
            return cls.model_validate(body)
        except ValidationError as exc:  # a field's type (the checks above raise ApiError)
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ApiError(f"{where}: {first['msg']}.", param=where) from None


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


def parse_request(body: Any, manager: ModelManager) -> ChatRequest:
    """A checked request, or ApiError saying what to send instead."""
    request = ChatCompletionRequest.read(body)
    pick = _pick(request.model, manager)  # last of the checks: it may load a model
    # where the request's images go, made only when one comes (images.save_data_url)
    folder = str(Path(tempfile.gettempdir()) / f"lfmui-v1-{uuid.uuid4().hex}")
    try:
        conversation = _conversation(request.messages, Path(folder))
        skipped: list[str] = []
        tools = _tools(request.tools, request.tool_choice, conversation, skipped)
    except Exception:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    options = request.stream_options or {}
    return ChatRequest(
        conversation,
        request.settings(),
        tools,
        request.stream,
        bool(options.get("include_usage")),
        request.stop,
        folder,
        skipped,
        pick,
        backends.of(manager, pick).key,
    )


def _pick(model: Any, manager: ModelManager) -> str | None:
    """The Backend the request's `model` names (lfmui.backends.named), or a 404/503 saying
    which names it may use."""
    try:
        return backends.named(manager, model)
    except NoModelLoaded as exc:
        raise ApiError(str(exc), 404 if backends.names(manager) else 503, "model") from None
    except LfmuiError as exc:  # a load on demand refused (the pool is full, say)
        raise ApiError(str(exc), 503, "model") from None


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
    return tool_turn.apply_tool_choice(conversation, schemas, str(choice))


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
