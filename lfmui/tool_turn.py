"""The tool turn: the model's calls parsed (``toolcalls``), run (``tools.execute``, or the
user's approval first, or results typed by hand), and read back, for at most ``max_rounds``
rounds. ``ToolTurn`` is the resumable state: each round's steps (``Text``, ``Parsed``,
``Result``, ``Paused``, ``Final``, ``Failed``) are applied to it, so a turn paused for approval
or typed results continues where it stopped. Never touches gradio.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from lfmui import toolcalls, tools
from lfmui.errors import InputError
from lfmui.manager import ModelManager
from lfmui.turns import chat_turn

MAX_TOOL_ROUNDS = 3
MAX_ROUNDS_CAP = 5
Approve = Callable[[dict[str, Any]], dict[str, Any] | None]


@dataclass(frozen=True)
class Text:
    """A delta of the model's raw output (tool-call markers visible)."""

    round: int
    text: str
    kind: ClassVar[str] = "text"


@dataclass(frozen=True)
class Parsed:
    """A model round, parsed: the raw text, its calls and errors, the remaining text."""

    round: int
    raw: str
    calls: list[dict[str, Any]]
    errors: list[str]
    text: str
    metrics: dict[str, Any]
    reason: str  # the engine's done reason: eos, stopped, max_tokens, time_limit
    repairs: list[str] = field(default_factory=list)  # toolcalls' repairs, for the trace
    typed: bool = False  # the user wrote this round's reply (ToolTurn.typed), not the model
    kind: ClassVar[str] = "parsed"

    @property
    def answered(self) -> bool:
        """Whether this round ends the turn: stopped, or no calls (and no bad ones) to run."""
        return self.reason == "stopped" or not (self.calls or self.errors)


@dataclass(frozen=True)
class Result:
    """One tool result, fed back to the model in the tool role."""

    round: int
    result: tools.ToolResult
    kind: ClassVar[str] = "result"


@dataclass(frozen=True)
class Paused:
    """The round's results, computed but not fed back: review them, then ``ToolTurn.resume``."""

    round: int
    results: list[tools.ToolResult]
    kind: ClassVar[str] = "paused"


@dataclass(frozen=True)
class Final:
    """The answer, or why the loop ended (reason "round_limit")."""

    round: int
    text: str
    reason: str
    kind: ClassVar[str] = "final"


@dataclass(frozen=True)
class Failed:
    """The model failed; the turn ends."""

    round: int
    error: str
    kind: ClassVar[str] = "error"


Step = Text | Parsed | Result | Paused | Final | Failed


@dataclass
class Round:
    """What one round of a tool turn did: the raw text so far, its parse and its results."""

    number: int
    raw: str = ""
    parsed: Parsed | None = None
    results: list[tools.ToolResult] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        parsed = {} if self.parsed is None else asdict(self.parsed)
        fields = {k: v for k, v in parsed.items() if k not in ("round", "raw")}
        results = [r.to_json() for r in self.results]
        return {"round": self.number, "raw": self.raw, **fields, "results": results}


@dataclass
class ToolTurn:
    """A tool turn's state, changed only by ``apply``: the conversation (extended with each
    round's call and results), the rounds so far, the results waiting for review
    (``pending``) and the end (``final``). Steps from a GPU worker process apply the same way
    on this side."""

    conversation: list[dict[str, Any]]
    registry: dict[str, tools.Tool]
    schemas: list[dict[str, Any]]
    max_rounds: int = MAX_TOOL_ROUNDS
    rounds: list[Round] = field(default_factory=list)
    pending: list[tools.ToolResult] | None = None
    final: Final | Failed | None = None
    # replies the user typed for the next rounds, used in turn instead of generating: a model
    # with random weights never writes a call, and the call flow can still be tried
    typed: list[str] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        conversation: list[dict[str, Any]],
        registry: dict[str, tools.Tool],
        tool_choice: str = "auto",
        max_rounds: int = MAX_TOOL_ROUNDS,
    ) -> ToolTurn:
        """A turn over `conversation` (the last message is the user's) with `registry`'s
        tools; the tool choice is stated in the system turn."""
        if not 1 <= max_rounds <= MAX_ROUNDS_CAP:
            raise InputError(f"max_rounds must be between 1 and {MAX_ROUNDS_CAP}.")
        schemas = apply_tool_choice(
            conversation, [t.schema() for t in registry.values()], tool_choice
        )
        return cls(conversation, registry, schemas, max_rounds)

    def apply(self, step: Step) -> None:
        if isinstance(step, Text | Parsed) and (
            not self.rounds or self.rounds[-1].number != step.round
        ):
            self.rounds.append(Round(step.round))
        current = self.rounds[-1] if self.rounds else None
        if isinstance(step, Text):
            current.raw += step.text
        elif isinstance(step, Parsed):
            current.raw, current.parsed = step.raw, step
        elif isinstance(step, Result):
            if not current.results:  # the model's call turn as it wrote it, once a round
                self.conversation.append({"role": "assistant", "content": current.raw})
            current.results.append(step.result)
            self.conversation.append({"role": "tool", "content": step.result.output})
        elif isinstance(step, Paused):
            self.pending = list(step.results)
        else:
            self.final = step

    def resume(self, results: list[tools.ToolResult]) -> list[Result]:
        """Feed the paused round's results back (edited or not); ``run_tool_turn`` goes on."""
        if self.pending is None:
            raise InputError("There are no tool results waiting to be sent.")
        if len(results) != len(self.pending):
            raise InputError(
                f"Send {len(self.pending)} result(s), one per call, in order; got {len(results)}."
            )
        self.pending = None
        steps = [Result(self.rounds[-1].number, result) for result in results]
        for step in steps:
            self.apply(step)
        return steps

    def to_json(self) -> dict[str, Any]:
        """The trace: each round's raw text, parsed calls, errors and results, then the end."""
        final = None
        if isinstance(self.final, Final):
            final = {"text": self.final.text, "reason": self.final.reason}
        elif isinstance(self.final, Failed):
            final = {"error": self.final.error}
        return {"rounds": [r.to_json() for r in self.rounds], "final": final}


def apply_tool_choice(
    conversation: list[dict[str, Any]], schemas: list[dict[str, Any]], choice: str
) -> list[dict[str, Any]]:
    """The tool choice stated in the system turn (in place); the schemas for the prompt
    (none when the choice is "none")."""
    note = tool_instruction(choice, [str(schema.get("name")) for schema in schemas])
    if note:
        _add_to_system(conversation, note)
    return [] if choice == "none" else schemas


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


def run_tool_turn(
    manager: ModelManager,
    turn: ToolTurn,
    *,
    settings: dict[str, Any] | None = None,
    stop: threading.Event | None = None,
    pause: bool = False,
    approve: Approve | None = None,
    generate_kwargs: dict[str, Any] | None = None,
    tiling: dict[str, Any] | None = None,
    model: str | None = None,
    client: str = "",
) -> Iterator[Step]:
    """Generate, parse, execute, feed results back in the tool role, until an answer or
    `turn.max_rounds`; each step is applied to `turn` as it is yielded.

    `pause` stops before results go back (a ``Paused`` step): ``turn.resume(results)`` with
    the reviewed results, then call again. `approve` sees each call before it runs and returns
    it (edited or not), or None to decline.
    """
    if turn.pending is not None or turn.final is not None:
        raise InputError("This tool turn is waiting for results or has ended; start a new one.")
    image = last_image(turn.conversation)
    while len(turn.rounds) < turn.max_rounds:
        number = len(turn.rounds) + 1
        if turn.typed:
            rounds = _typed_round(turn, number)
        else:
            options = (settings, stop, generate_kwargs, tiling, model, client)
            rounds = _model_round(manager, turn, number, *options)
        for step in rounds:
            turn.apply(step)
            yield step
            if isinstance(step, Failed):
                return
        parsed = turn.rounds[-1].parsed
        if parsed.answered:
            steps: list[Step] = [Final(number, parsed.text, parsed.reason)]
        else:
            results = run_calls(parsed.calls, parsed.errors, turn.registry, approve, image)
            steps = [Paused(number, results)] if pause else [Result(number, r) for r in results]
        for step in steps:
            turn.apply(step)
            yield step
        if turn.pending is not None or turn.final is not None:
            return
    text = f"Stopped after {turn.max_rounds} rounds of tool calls without a final answer."
    step = Final(turn.max_rounds, text, "round_limit")
    turn.apply(step)
    yield step


def tool_turn(
    manager: ModelManager,
    conversation: list[dict[str, Any]],
    registry: dict[str, tools.Tool],
    *,
    tool_choice: str = "auto",
    max_rounds: int = MAX_TOOL_ROUNDS,
    **options: Any,
) -> Iterator[Step]:
    """A whole tool turn with automatic results (``run_tool_turn``'s options);
    `conversation` is extended in place with the assistant and tool messages."""
    turn = ToolTurn.start(conversation, registry, tool_choice, max_rounds)
    yield from run_tool_turn(manager, turn, **options)


def _model_round(
    manager: ModelManager,
    turn: ToolTurn,
    number: int,
    settings: dict[str, Any] | None,
    stop: threading.Event | None,
    generate_kwargs: dict[str, Any] | None,
    tiling: dict[str, Any] | None,
    model: str | None,
    client: str,
) -> Iterator[Step]:
    """One generation with the tool list (on the Backend `model` picks): ``Text`` steps, then
    ``Parsed`` (or ``Failed``)."""
    raw, metrics, reason = "", {}, "eos"
    for event in chat_turn(
        manager,
        turn.conversation,
        settings=settings,
        stop=stop,
        tiling=tiling,
        tools=turn.schemas or None,
        raw=True,
        generate_kwargs=generate_kwargs,
        model=model,
        client=client,
    ):
        if event.kind == "text":
            raw += event.text
            yield Text(number, event.text)
        elif event.kind == "metrics":
            metrics = event.data
        elif event.kind == "done":
            reason = event.data["reason"]
        elif event.kind == "error":
            yield Failed(number, event.data["message"])
            return
    parsed = toolcalls.parse(raw, turn.schemas)
    yield Parsed(
        number, raw, parsed.calls, parsed.errors, parsed.text, metrics, reason, parsed.repairs
    )


def _typed_round(turn: ToolTurn, number: int) -> Iterator[Step]:
    """A round whose reply the user typed: parsed and run like the model's, marked typed."""
    raw = turn.typed.pop(0)
    yield Text(number, raw)
    parsed = toolcalls.parse(raw, turn.schemas)
    yield Parsed(
        number, raw, parsed.calls, parsed.errors, parsed.text, {}, "eos", parsed.repairs, True
    )


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
                declined = "Error: the user declined this call."
                results.append(
                    tools.ToolResult(call["name"], call["arguments"], False, declined, 0.0)
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
