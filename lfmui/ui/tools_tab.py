"""The tool-calling playground: tool definitions, tool choice, automatic or manual results, and
a trace per round (raw model text with its special tokens, parsed calls, errors, results).

Automatic mode runs ``turns.tool_turn``. Manual mode stops after each model round with the
parsed calls and a results editor prefilled by running them (or empty for tools with no
implementation); "Send results" feeds the edited results back in the tool role and continues.
"""

from __future__ import annotations

import json
from typing import Any

import gradio as gr

from lfmui import images, tools, turns
from lfmui.errors import InputError
from lfmui.manager import ModelManager
from lfmui.ui import gpu
from lfmui.ui.queue import ACCELERATOR, Running
from lfmui.ui.render import fenced, safe_markdown, user_errors

_runs = Running(  # the playground's running tool turn per session
    "A tool turn is still running here; wait for it or press Stop, then run again."
)
EXAMPLES_JSON = json.dumps([t.schema() for t in tools.BUILTINS.values()], indent=2)


def render_trace(rounds: list[dict[str, Any]], final: dict[str, Any] | None, noise: bool) -> str:
    """The trace as Markdown: one section per round, then the final answer."""
    parts = []
    for r in rounds:
        metrics = r.get("metrics") or {}
        head = f"#### Round {r['round']}"
        if metrics.get("ttft_s") is not None:
            head += f" · TTFT {metrics['ttft_s']:.2f} s · {metrics.get('generated_tokens')} tokens"
        parts += [head, "**Model wrote** (special tokens shown)", fenced(r.get("raw", "") or "…")]
        if "calls" in r:
            parts += ["**Parsed calls**", fenced(json.dumps(r["calls"], indent=1), "json")]
        if r.get("errors"):
            parts += ["**Errors** (sent back to the model)"]
            parts += [f"- {e}" for e in r["errors"]]
        for result in r.get("results", []):
            mark = "✓" if result["ok"] else "✗"
            parts.append(
                f"**Result** {mark} `{result['name']}` · {result['seconds'] * 1000:.1f} ms"
            )
            parts.append(fenced(result["output"], "json" if result["ok"] else ""))
    if final is not None:
        label = "noise from random weights · " if noise else ""
        answer = safe_markdown(final["text"]) or "—"
        parts += [f"#### Final answer ({label}{final.get('reason', 'eos')})", answer]
    return "\n\n".join(parts)


def _registry(tools_json: str) -> dict[str, tools.Tool]:
    return tools.registry_from_json(tools_json)


def _start(manager: ModelManager, data: dict[str, Any]) -> dict[str, Any]:
    """A fresh session state for a run: the conversation with the prompt and optional image."""
    prompt = (data["prompt"] or "").strip()
    if not prompt:
        raise InputError("Type a request for the model first.")
    registry = _registry(data["tools_json"])
    content: Any = prompt
    if data["image"]:
        content = [
            {"type": "image", "image": images.load_safe(data["image"])},
            {"type": "text", "text": prompt},
        ]
    conversation = [{"role": "user", "content": content}]
    schemas = turns.prepare_tools(conversation, registry, data["choice"] or "auto")
    loaded = manager.current()
    return {
        "conversation": conversation,
        "schemas": schemas,
        "tools_json": data["tools_json"],
        "rounds": [],
        "pending": None,
        "noise": bool(loaded and loaded.spec.random_weights),
    }


def run_rounds(manager, state, settings, stop, max_rounds, manual):
    """Model rounds from `state` until an answer, a manual pause or the round cap; yields
    (state, final) after every step."""
    registry = _registry(state["tools_json"])
    image = turns.last_image(state["conversation"])
    while len(state["rounds"]) < max_rounds:
        number = len(state["rounds"]) + 1
        current = {"round": number, "raw": ""}
        state["rounds"].append(current)
        for step in gpu.model_round(
            manager, state["conversation"], state["schemas"], settings, stop, number
        ):
            if step.kind == "text":
                current["raw"] += step.data["text"]
            elif step.kind == "error":
                yield state, {"text": step.data["error"], "reason": "error"}
                return
            else:
                current.update(step.data)
            yield state, None
        if turns.answered(current):
            yield state, {"text": current["text"], "reason": current["reason"]}
            return
        ran = turns.run_calls(current["calls"], current["errors"], registry, None, image)
        results = [r.to_json() for r in ran]
        if manual:
            state["pending"] = {"raw": current["raw"], "results": results}
            yield state, None
            return
        current["results"] = results
        _feed_back(state["conversation"], current["raw"], results)
        yield state, None
    yield state, turns.round_limit(max_rounds)


def _feed_back(conversation: list[dict], raw: str, results: list[dict[str, Any]]) -> None:
    turns.feed_back(conversation, raw, [result["output"] for result in results])


def edited_results(text: str, expected: int) -> list[dict[str, Any]]:
    """The manual-mode editor's JSON: a list of {name, output} (output any JSON or a string)."""
    try:
        values = json.loads(text or "[]")
    except json.JSONDecodeError as exc:
        raise InputError(
            f"The results are not valid JSON: {exc.msg} (line {exc.lineno})."
        ) from None
    if not isinstance(values, list) or len(values) != expected:
        raise InputError(f"Send a JSON list of {expected} result(s), one per call, in order.")
    out = []
    for value in values:
        if not isinstance(value, dict) or "output" not in value:
            raise InputError('Each result needs an "output" (text or any JSON value).')
        output = value["output"]
        text_out = output if isinstance(output, str) else json.dumps(output)
        out.append(
            {
                "name": str(value.get("name", "tool")),
                "arguments": value.get("arguments", {}),
                "ok": True,
                "output": text_out[: tools.MAX_OUTPUT_CHARS],
                "seconds": 0.0,
            }
        )
    return out


def build(manager: ModelManager) -> None:
    gr.Markdown(
        "Give the model tools, ask something, and watch each round: what the model wrote "
        "(special tokens shown), how it was parsed, what ran and what went back."
    )
    state = gr.State(None)
    with gr.Row():
        with gr.Column(scale=1):
            tools_json = gr.Code(
                EXAMPLES_JSON,
                language="json",
                label="Tool definitions (JSON list)",
                lines=12,
                max_lines=24,
            )
            examples = gr.Button("Load the built-in examples", size="sm")
            choice = gr.Dropdown(
                ["auto", "none", *tools.BUILTINS],
                value="auto",
                label="Tool choice",
                allow_custom_value=True,
            )
            mode = gr.Radio(
                ["automatic", "manual"],
                value="automatic",
                label="Tool results",
                info="manual: edit each result before it goes back to the model",
            )
            with gr.Row():
                max_rounds = gr.Slider(1, 5, value=3, step=1, label="Max rounds")
                new_tokens = gr.Slider(8, 1024, value=256, step=8, label="Max new tokens")
        with gr.Column(scale=2):
            prompt = gr.Textbox(
                label="Request", value="What is the weather in Paris, in fahrenheit?", lines=2
            )
            image = gr.Image(type="filepath", label="Image (optional, for image_facts)", height=140)
            with gr.Row():
                run = gr.Button("Run", variant="primary")
                stop = gr.Button("Stop", variant="stop")
            pending = gr.Code(
                language="json",
                label="Tool results to send (edit, then send)",
                visible=False,
                lines=6,
            )
            send = gr.Button("Send results", visible=False)
            trace = gr.Markdown(elem_id="tool-trace")

    def stream(run_state, data, session):
        settings = {"max_new_tokens": int(data[new_tokens]), "temperature": 0.0}
        with _runs.one(session) as stop_flag:
            for current, final in run_rounds(
                manager,
                run_state,
                settings,
                stop_flag,
                int(data[max_rounds]),
                data[mode] == "manual",
            ):
                waiting = current["pending"]
                yield (
                    current,
                    render_trace(current["rounds"], final, current["noise"]),
                    gr.Code(
                        value=json.dumps(waiting["results"], indent=1) if waiting else "",
                        visible=bool(waiting),
                    ),
                    gr.Button(visible=bool(waiting)),
                )

    @user_errors
    def on_run(data: dict, request: gr.Request):
        fresh = {
            "prompt": data[prompt],
            "image": data[image],
            "tools_json": data[tools_json],
            "choice": data[choice],
        }
        yield from stream(_start(manager, fresh), data, request.session_hash)

    @user_errors
    def on_send(data: dict, request: gr.Request):
        run_state = data[state]
        if not run_state or not run_state["pending"]:
            raise InputError("There are no tool results waiting to be sent.")
        results = edited_results(data[pending], len(run_state["pending"]["results"]))
        run_state["rounds"][-1]["results"] = results
        _feed_back(run_state["conversation"], run_state["pending"]["raw"], results)
        run_state["pending"] = None
        yield from stream(run_state, data, request.session_hash)

    def on_stop(request: gr.Request) -> None:
        _runs.stop(request.session_hash)

    def on_tools_change(text: str):
        try:
            names = list(_registry(text))
        except InputError as exc:
            gr.Warning(str(exc))
            return gr.skip()
        return gr.Dropdown(choices=["auto", "none", *names])

    inputs = {state, prompt, image, tools_json, choice, mode, max_rounds, new_tokens, pending}
    outputs = [state, trace, pending, send]
    run.click(on_run, inputs, outputs, api_visibility="private", **ACCELERATOR)
    send.click(on_send, inputs, outputs, api_visibility="private", **ACCELERATOR)
    stop.click(on_stop, None, None, queue=False, api_visibility="private")
    examples.click(lambda: EXAMPLES_JSON, None, tools_json, api_visibility="private")
    tools_json.blur(on_tools_change, tools_json, choice, api_visibility="private")
