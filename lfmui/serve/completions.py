"""The reply to a checked /v1 request (``serve.protocol.ChatRequest``): ``run`` streams it
through ``turns.chat_turn`` (the same engine, generation thread, limits and errors as the UI) as
records, and ``completion`` and ``chunks`` shape them as OpenAI's response and stream chunks.
With tools the reply is read whole first, so no call markers stream out as text. A client that
goes away sets the reply's Stop flag. The request's path end to end: docs/architecture.md.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from lfmui import backends, reasoning, toolcalls, turns
from lfmui.manager import ModelManager
from lfmui.serve.protocol import ApiError, ChatRequest

FINISH = {"eos": "stop", "stopped": "stop", "max_tokens": "length", "time_limit": "length"}


def models(manager: ModelManager) -> dict[str, Any]:
    """What `model` may name: the default first, then each resident model (by id, and by
    id@level) and the connected endpoint's model."""
    return {"object": "list", "data": [_model(name) for name in backends.names(manager)]}


def _model(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "lfmui"}


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
