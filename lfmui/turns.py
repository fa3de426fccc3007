"""One chat turn: lease the resident model, build its inputs, stream the reply.

The UI and the API call ``chat_turn``; it never touches gradio. Errors the user can act on are
raised as ``LfmuiError`` before generation starts, or arrive as an ``error`` event after.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from lfmui import engine, prompts, toolcalls, tools
from lfmui.errors import InputError
from lfmui.manager import ModelManager
from lfmui.tiling import Tiling

MAX_PROMPT_CHARS = 100_000
MAX_IMAGES_PER_MESSAGE = 4
MAX_IMAGES_PER_CHAT = 12


def chat_turn(
    manager: ModelManager,
    conversation: list[dict[str, Any]],
    settings: dict[str, Any] | None = None,
    stop: threading.Event | None = None,
    tiling: dict[str, Any] | None = None,
    tools: list[dict[str, Any]] | None = None,
    raw: bool = False,
    generate_kwargs: dict[str, Any] | None = None,
) -> Iterator[engine.Event]:
    """Stream the assistant's reply to `conversation` (the last message is the user's).

    `tiling` overrides the loaded model's image-processor defaults for this request only;
    `tools` (JSON schemas) go into the system turn; `raw` keeps special tokens (tool-call
    markers) in the text; `generate_kwargs` reaches generate() (tests force outputs with it).
    """
    check_conversation(conversation)
    with manager.lease() as loaded:
        checked = engine.Settings.from_dict(settings or {}, defaults=dict(loaded.spec.sampling))
        cut = tiling_of(loaded, tiling)
        started = time.perf_counter()
        inputs = prompts.build_inputs(loaded, conversation, cut, tools)
        preprocess = {"preprocess_s": round(time.perf_counter() - started, 4)}
        _check_context(loaded, inputs, checked.max_new_tokens)
        yield from engine.stream(
            loaded,
            inputs,
            checked,
            stop,
            skip_special_tokens=not raw,
            extra_generate_kwargs=generate_kwargs,
            extra_metrics=preprocess,
        )


def tiling_of(loaded: Any, values: dict[str, Any] | None) -> Tiling | None:
    """Validated per-request tiling over the loaded model's defaults (None for text models)."""
    if loaded.spec.kind != "vl":
        return None
    return Tiling.from_dict(values, defaults=Tiling.from_processor(loaded.processor))


def check_conversation(conversation: list[dict[str, Any]]) -> None:
    """Caps checked before any model work: characters, images per message and per chat."""
    total = pictures = 0
    for message in conversation:
        content = message["content"]
        if isinstance(content, str):
            total += len(content)
            continue
        total += sum(len(p.get("text", "")) for p in content)
        here = sum(p.get("type") == "image" for p in content)
        if here > MAX_IMAGES_PER_MESSAGE:
            raise InputError(
                f"A message holds {here} images; attach at most {MAX_IMAGES_PER_MESSAGE} "
                "per message."
            )
        pictures += here
    if pictures > MAX_IMAGES_PER_CHAT:
        raise InputError(
            f"The chat holds {pictures} images; the limit is {MAX_IMAGES_PER_CHAT}. "
            "Clear the chat (or undo turns) and send the image again."
        )
    if total > MAX_PROMPT_CHARS:
        raise InputError(
            f"The conversation holds {total:,} characters; the limit is {MAX_PROMPT_CHARS:,}. "
            "Shorten the message or clear the chat."
        )


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


# ---- the tool loop ---------------------------------------------------------------------------
MAX_TOOL_ROUNDS = 3
Approve = Callable[[dict[str, Any]], dict[str, Any] | None]


@dataclass(frozen=True)
class Step:
    """One thing that happened in a tool turn.

    kinds: "text" (a delta of the model's raw output, markers visible), "parsed" (raw text,
    calls, errors, remaining text, metrics, done reason), "result" (one tool result), "final"
    (the answer, or why the loop ended), "error" (the model failed).
    """

    kind: str
    round: int
    data: dict[str, Any] = field(default_factory=dict)


def tool_instruction(choice: str, names: list[str]) -> str:
    """The system-prompt sentence that states the tool choice."""
    if choice == "auto":
        return ""
    if choice == "none":
        return "Do not call any tool; answer directly."
    if choice not in names:
        raise InputError(
            f"Tool choice '{choice[:40]}' is not one of the tools: auto, none, "
            f"or {', '.join(names)}."
        )
    return f"Call the tool {choice} before you answer."


def tool_turn(
    manager: ModelManager,
    conversation: list[dict[str, Any]],
    registry: dict[str, tools.Tool],
    settings: dict[str, Any] | None = None,
    stop: threading.Event | None = None,
    tool_choice: str = "auto",
    max_rounds: int = MAX_TOOL_ROUNDS,
    approve: Approve | None = None,
    generate_kwargs: dict[str, Any] | None = None,
    tiling: dict[str, Any] | None = None,
) -> Iterator[Step]:
    """Generate, parse, execute, feed results back in the tool role; at most `max_rounds`.

    `approve` sees each call before it runs and returns it (edited or not), or None to decline.
    `conversation` is extended in place with the assistant and tool messages.
    """
    schemas = prepare_tools(conversation, registry, tool_choice)
    image = last_image(conversation)
    for round_no in range(1, max_rounds + 1):
        parsed_step = None
        for step in model_round(
            manager, conversation, schemas, settings, stop, round_no, generate_kwargs, tiling
        ):
            yield step
            if step.kind == "error":
                return
            parsed_step = step
        data = parsed_step.data
        if answered(data):
            yield Step("final", round_no, {"text": data["text"], "reason": data["reason"]})
            return
        results = run_calls(data["calls"], data["errors"], registry, approve, image)
        feed_back(conversation, data["raw"], [r.output for r in results])
        for result in results:
            yield Step("result", round_no, result.to_json())
    yield Step("final", max_rounds, round_limit(max_rounds))


def answered(parsed: dict[str, Any]) -> bool:
    """A round's "parsed" data ends the turn: stopped, or no calls (and no bad ones) to run."""
    return parsed["reason"] == "stopped" or not (parsed["calls"] or parsed["errors"])


def feed_back(conversation: list[dict[str, Any]], raw: str, outputs: list[str]) -> None:
    """The model's call turn as it wrote it, then each result in the tool role (in place)."""
    conversation.append({"role": "assistant", "content": raw})
    conversation.extend({"role": "tool", "content": output} for output in outputs)


def round_limit(max_rounds: int) -> dict[str, Any]:
    """The final step's data when the model is still calling tools after `max_rounds`."""
    text = f"Stopped after {max_rounds} rounds of tool calls without a final answer."
    return {"text": text, "reason": "round_limit"}


def prepare_tools(
    conversation: list[dict[str, Any]], registry: dict[str, tools.Tool], tool_choice: str
) -> list[dict[str, Any]]:
    """The schemas for the prompt; the tool choice stated in the system turn (in place)."""
    note = tool_instruction(tool_choice, list(registry))
    if note:
        _add_to_system(conversation, note)
    return [] if tool_choice == "none" else [t.schema() for t in registry.values()]


def model_round(
    manager: ModelManager,
    conversation: list[dict[str, Any]],
    schemas: list[dict[str, Any]],
    settings: dict[str, Any] | None,
    stop: threading.Event | None,
    round_no: int,
    generate_kwargs: dict[str, Any] | None = None,
    tiling: dict[str, Any] | None = None,
) -> Iterator[Step]:
    """One generation with the tool list: "text" steps, then "parsed" (or "error")."""
    raw, metrics, reason = "", {}, "eos"
    for event in chat_turn(
        manager,
        conversation,
        settings,
        stop,
        tiling,
        tools=schemas or None,
        raw=True,
        generate_kwargs=generate_kwargs,
    ):
        if event.kind == "text":
            raw += event.text
            yield Step("text", round_no, {"text": event.text})
        elif event.kind == "metrics":
            metrics = event.data
        elif event.kind == "done":
            reason = event.data["reason"]
        elif event.kind == "error":
            yield Step("error", round_no, {"error": event.data["message"]})
            return
    parsed = toolcalls.parse(raw, schemas)
    data = {"raw": raw, **parsed.to_json(), "metrics": metrics, "reason": reason}
    yield Step("parsed", round_no, data)


def run_calls(
    calls: list[dict[str, Any]],
    errors: list[str],
    registry: dict[str, tools.Tool],
    approve: Approve | None = None,
    image: Any = None,
) -> list[tools.ToolResult]:
    """Each parsed call executed once (after approval); each parse error as a failed result."""
    results = []
    token = tools.current_image.set(image)
    try:
        for call in calls:
            chosen = approve(call) if approve else call
            if chosen is None:
                results.append(
                    tools.ToolResult(
                        call["name"],
                        call["arguments"],
                        False,
                        "Error: the user declined this call.",
                        0.0,
                    )
                )
                continue
            results.append(tools.execute(chosen, registry))
    finally:
        tools.current_image.reset(token)
    for error in errors:
        results.append(tools.ToolResult("(invalid call)", {}, False, f"Error: {error}", 0.0))
    return results


def _add_to_system(conversation: list[dict[str, Any]], note: str) -> None:
    if conversation and conversation[0]["role"] == "system":
        first = conversation[0]
        conversation[0] = {**first, "content": f"{first['content']}\n{note}".strip()}
    else:
        conversation.insert(0, {"role": "system", "content": note})


def last_image(conversation: list[dict[str, Any]]) -> Any:
    for message in reversed(conversation):
        content = message["content"]
        if isinstance(content, list):
            for part in reversed(content):
                if part.get("type") == "image":
                    return part["image"]
    return None
