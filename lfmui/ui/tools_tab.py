"""The tool-calling playground: tool definitions, tool choice, automatic or manual results, and
a trace per round (raw model text with its special tokens, parsed calls, errors, results).

Both modes run ``tool_turn.run_tool_turn`` on a ``tool_turn.ToolTurn`` kept in the session. Manual
pauses after each model round with the parsed calls and a results editor prefilled by running
them (or with the error for tools with no implementation); "Send results" resumes the turn with
the edited results.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import gradio as gr

from lfmui import tool_turn, tools, turns
from lfmui.catalog import TOOL_FORMATS
from lfmui.errors import InputError, read_json
from lfmui.manager import ModelManager
from lfmui.ui import gpu
from lfmui.ui.controls import sampling_control
from lfmui.ui.render import fenced, safe_markdown, warns
from lfmui.ui.running import ACCELERATOR, Running

_runs = Running(  # the playground's running tool turn per session
    "A tool turn is still running here; wait for it or press Stop, then run again."
)
EXAMPLES_JSON = json.dumps([t.schema() for t in tools.BUILTINS.values()], indent=2)
# a call as each tool format writes it (catalog.TOOL_FORMATS): the first reply a visitor edits
EXAMPLE_CALLS = {
    "lfm2": '<|tool_call_start|>[get_weather(city="Paris", unit="fahrenheit")]<|tool_call_end|>',
    "lfm2.5": '<|tool_call_start|>[{"name": "get_weather", "arguments": {"city": "Paris", '
    '"unit": "fahrenheit"}}]<|tool_call_end|>',
}
RAW_SHOWN = 2000, 24  # characters and lines of a round's raw text in the trace (noise runs long)


def shortened(raw: str) -> str:
    """A round's raw text as the trace shows it: runs of blank lines as one, at most
    RAW_SHOWN, saying what was left out (noise from random weights is mostly blank)."""
    if not raw.strip():
        return f"(whitespace only: {len(raw)} characters)"
    squeezed = re.sub(r"\n[ \t]*(?:\n[ \t]*)+\n", "\n\n", raw)
    chars, lines = RAW_SHOWN
    kept = "\n".join(squeezed[:chars].split("\n")[:lines])
    return kept if kept == raw else f"{kept}\n… ({len(raw) - len(kept)} characters not shown)"


def first_run(manager: ModelManager, pick: str | None = None) -> list[Any]:
    """The playground as a page opens it: where random weights answer (they never write a
    call), in manual mode with the model's first reply to write, pre-filled with a call in
    the model's format. Else as built."""
    ready = manager.readiness(pick)
    if not ready["random_weights"]:
        return [gr.skip()] * 3
    call = EXAMPLE_CALLS.get(ready["tool_format"] or "lfm2", EXAMPLE_CALLS["lfm2"])
    return [gr.Accordion(open=True), call, "manual"]


def render_trace(turn: tool_turn.ToolTurn, noise: bool, tool_format: str | None = None) -> str:
    """The trace as Markdown: the model's tool format, one section per round, then the final
    answer."""
    parts = []
    if tool_format in TOOL_FORMATS:
        said = f"Tool format: {TOOL_FORMATS[tool_format]}; calls between the tool-call markers"
        parts.append(f"{said}, Pythonic or JSON.")
    for r in turn.rounds:
        metrics = r.parsed.metrics if r.parsed else {}
        head = f"#### Round {r.number}"
        if metrics.get("ttft_s") is not None:
            head += f" · TTFT {metrics['ttft_s']:.2f} s · {metrics.get('generated_tokens')} tokens"
        wrote = "**Model wrote** (special tokens shown)"
        if r.parsed and r.parsed.typed:
            wrote = "**You wrote** (in place of the model)"
        raw = shortened(r.raw or "…")
        parts += [head, wrote, fenced(raw)]
        if r.parsed and not r.parsed.calls:
            parts.append("**Parsed calls**: none (the reply holds no tool call)")
        elif r.parsed:
            parts += ["**Parsed calls**", fenced(json.dumps(r.parsed.calls, indent=1), "json")]
            if r.parsed.repairs:
                parts += ["**Repaired** (to read what the model meant)"]
                parts += [f"- {note}" for note in r.parsed.repairs]
            if r.parsed.errors:
                parts += ["**Errors** (sent back to the model)"]
                parts += [f"- {e}" for e in r.parsed.errors]
        for result in r.results:
            mark = "✓" if result.ok else "✗"
            parts.append(f"**Result** {mark} `{result.name}` · {result.seconds * 1000:.1f} ms")
            parts.append(fenced(result.output, "json" if result.ok else ""))
    final = turn.final
    if isinstance(final, tool_turn.Failed):
        parts += ["#### Final answer (error)", safe_markdown(final.error)]
    elif final is not None:
        label = "noise from random weights · " if noise else ""
        answer = safe_markdown(final.text) or "(no answer text)"
        parts += [f"#### Final answer ({label}{final.reason})", answer]
    return "\n\n".join(parts)


def _start(
    manager: ModelManager, data: dict[str, Any], max_rounds: int, pick: str | None = None
) -> dict[str, Any]:
    """A fresh session state for a run: the tool turn over the prompt and optional image
    (and the model's first reply, when the user typed it)."""
    prompt = (data["prompt"] or "").strip()
    if not prompt:
        raise InputError("Type a request for the model first.")
    registry = tools.registry_from_json(data["tools_json"])
    conversation = [turns.user_message(prompt, [data["image"]] if data["image"] else [])]
    turn = tool_turn.ToolTurn.start(conversation, registry, data["choice"] or "auto", max_rounds)
    if (data["typed"] or "").strip():
        turn.typed.append(data["typed"])
    ready = manager.readiness(pick)
    return {"turn": turn, "noise": ready["random_weights"], "tool_format": ready["tool_format"]}


def edited_results(text: str, expected: int) -> list[tools.ToolResult]:
    """The manual-mode editor's JSON: a list of {name, output} (output any JSON or a string)."""
    values = read_json(text or "[]", "The results")
    if not isinstance(values, list) or len(values) != expected:
        raise InputError(f"Send a JSON list of {expected} result(s), one per call, in order.")
    out = []
    for value in values:
        if not isinstance(value, dict) or "output" not in value:
            raise InputError('Each result needs an "output" (text or any JSON value).')
        output = value["output"]
        text_out = output if isinstance(output, str) else json.dumps(output)
        arguments = value.get("arguments", {})
        out.append(
            tools.ToolResult(
                str(value.get("name", "tool")),
                arguments if isinstance(arguments, dict) else {},
                True,
                text_out[: tools.MAX_OUTPUT_CHARS],
                0.0,
            )
        )
    return out


class ToolsTab:
    """The playground: its components (made in ``__init__``) and its handlers."""

    def __init__(self, manager: ModelManager, pick: gr.State) -> None:
        self.manager = manager
        self.pick = pick  # the visitor's model (lfmui.backends; None: the default)
        gr.Markdown(
            "Give the model tools, ask something, and watch each round: what the model wrote "
            "(special tokens shown), how it was parsed, what ran and what went back."
        )
        self.state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                self._render_tools()
            with gr.Column(scale=2):
                self._render_request()
        self._setup_events()

    def _render_tools(self) -> None:
        """The tool definitions, the tool choice, how results go back, the limits."""
        self.tools_json = gr.Code(
            EXAMPLES_JSON,
            language="json",
            label="Tool definitions (JSON list)",
            lines=12,
            max_lines=24,
        )
        self.examples = gr.Button("Load the built-in examples", size="sm")
        self.choice = gr.Dropdown(
            ["auto", "none", *tools.BUILTINS],
            value="auto",
            label="Tool choice",
            allow_custom_value=True,
        )
        self.mode = gr.Radio(
            ["automatic", "manual"],
            value="automatic",
            label="Tool results",
            info="manual: edit each result before it goes back to the model",
        )
        with gr.Row():
            self.max_rounds = gr.Slider(
                1,
                tool_turn.MAX_ROUNDS_CAP,
                value=tool_turn.MAX_TOOL_ROUNDS,
                step=1,
                label="Max rounds",
            )
            self.new_tokens = sampling_control("max_new_tokens")

    def _render_request(self) -> None:
        """The request, an optional image, the typed first reply, Run and the trace."""
        self.prompt = gr.Textbox(
            label="Request", value="What is the weather in Paris, in fahrenheit?", lines=2
        )
        self.image = gr.File(  # a file: a broken upload reaches lfmui's intake
            file_types=["image"],
            type="filepath",
            label="Image (optional, for image_facts)",
        )
        with gr.Accordion("Write the model's first reply yourself", open=False) as self.write_first:
            self.typed = gr.Textbox(
                label="The model's first reply (special tokens included)",
                info="random weights never write a call: type one to try the flow "
                "(manual results, then the model's answer); the trace marks it yours",
                placeholder='<|tool_call_start|>[get_weather(city="Paris")]<|tool_call_end|>',
                lines=2,
                elem_id="typed-reply",
            )
        with gr.Row():
            self.run = gr.Button("Run", variant="primary")
            self.stop = gr.Button("Stop", variant="stop")
        self.pending = gr.Code(
            language="json",
            label="Tool results to send (edit, then send)",
            visible=False,
            lines=6,
        )
        self.send = gr.Button("Send results", visible=False)
        self.trace = gr.Markdown(elem_id="tool-trace")

    def _stream(self, run_state: dict[str, Any], data: dict, session: str):
        settings = {"max_new_tokens": int(data[self.new_tokens]), "temperature": 0.0}
        turn = run_state["turn"]
        with _runs.one(session) as stop_flag:
            steps = gpu.run_tool_turn(
                self.manager,
                turn,
                settings=settings,
                stop=stop_flag,
                pause=data[self.mode] == "manual",
                model=data[self.pick],
                client=session,
            )
            for _ in steps:
                waiting = turn.pending
                shown = json.dumps([r.to_json() for r in waiting], indent=1) if waiting else ""
                yield (
                    run_state,
                    render_trace(turn, run_state["noise"], run_state.get("tool_format")),
                    gr.Code(value=shown, visible=bool(waiting)),
                    gr.Button(visible=bool(waiting)),
                )

    @warns(outputs=4)
    def on_run(self, data: dict, request: gr.Request):
        fresh = {
            "prompt": data[self.prompt],
            "image": data[self.image],
            "tools_json": data[self.tools_json],
            "choice": data[self.choice],
            "typed": data[self.typed],
        }
        run_state = _start(self.manager, fresh, int(data[self.max_rounds]), data[self.pick])
        yield from self._stream(run_state, data, request.session_hash)

    @warns(outputs=4)
    def on_send(self, data: dict, request: gr.Request):
        run_state = data[self.state]
        if not run_state or run_state["turn"].pending is None:
            raise InputError("There are no tool results waiting to be sent.")
        turn = run_state["turn"]
        turn.resume(edited_results(data[self.pending], len(turn.pending)))
        yield from self._stream(run_state, data, request.session_hash)

    @staticmethod
    def on_stop(request: gr.Request) -> None:
        _runs.stop(request.session_hash)

    @staticmethod
    def on_tools_change(text: str):
        try:
            registry = tools.registry_from_json(text)
        except InputError as exc:
            gr.Warning(str(exc))
            return gr.skip()
        for sentence in registry.skipped:  # left out; the others stay usable
            gr.Warning(sentence)
        names = list(registry)
        return gr.Dropdown(choices=["auto", "none", *names])

    def _setup_events(self) -> None:
        private = {"api_visibility": "private"}
        inputs = {
            self.state,
            self.pick,
            self.prompt,
            self.image,
            self.tools_json,
            self.choice,
            self.typed,
            self.mode,
            self.max_rounds,
            self.new_tokens,
            self.pending,
        }
        outputs = [self.state, self.trace, self.pending, self.send]
        self.run.click(self.on_run, inputs, outputs, **private, **ACCELERATOR)
        self.send.click(self.on_send, inputs, outputs, **private, **ACCELERATOR)
        self.stop.click(self.on_stop, None, None, queue=False, **private)
        self.examples.click(lambda: EXAMPLES_JSON, None, self.tools_json, **private)
        self.tools_json.blur(self.on_tools_change, self.tools_json, self.choice, **private)


@dataclass(frozen=True)
class PlaygroundParts:
    """What the Tools tab hands the app: what the page's first load fills (``first_run``)."""

    first_run: list[Any]


def build(manager: ModelManager, pick: gr.State) -> PlaygroundParts:
    tab = ToolsTab(manager, pick)
    return PlaygroundParts([tab.write_first, tab.typed, tab.mode])
