"""The public API (gradio_client): /status, /models, /load_model, /generate, /last_metrics,
/plan_tiles, /parse_tool_calls, /tool_turn.

Names and shapes are fixed by DESIGN.md so scripts can rely on them. Errors reach the client as
gr.Error with the same sentences the UI shows.
"""

from __future__ import annotations

import contextlib
import inspect
import typing
from collections import OrderedDict
from typing import Any, TypedDict

import gradio as gr

from lfmui import backends, quant, tiling, tool_turn, toolcalls, tools, turns
from lfmui.access import Access
from lfmui.engine import Metrics
from lfmui.errors import InputError, read_json
from lfmui.manager import ModelManager, ModelStatus, Readiness
from lfmui.settings import FIELDS as SETTING_KEYS
from lfmui.ui import gpu
from lfmui.ui.render import user_errors
from lfmui.ui.running import ACCELERATOR

MAX_SETTINGS_CHARS = 250_000
MAX_SESSIONS_KEPT = 1000  # /last_metrics remembers this many clients, newest first
_last_metrics: OrderedDict[str, dict[str, Any]] = OrderedDict()


def parse_settings(settings_json: str) -> dict[str, Any]:
    if not settings_json or not settings_json.strip():
        return {}
    if len(settings_json) > MAX_SETTINGS_CHARS:  # the earlier turns (messages) come in it
        raise InputError(
            f"settings_json is over {MAX_SETTINGS_CHARS:,} characters; shorten the messages."
        )
    settings = read_json(settings_json, 'settings_json (e.g. {"max_new_tokens": 64})')
    if not isinstance(settings, dict):
        raise InputError('settings_json must be a JSON object, e.g. {"max_new_tokens": 64}.')
    return settings


class ParsedCalls(TypedDict):
    """/parse_tool_calls: the calls ({name, arguments}), the errors the model would read, the
    text without the call blocks, what was repaired, and the tool definitions left out."""

    calls: list[dict[str, Any]]
    errors: list[str]
    text: str
    repairs: list[str]
    skipped_tools: list[str]


class Trace(TypedDict):
    """/tool_turn: each round (raw text, calls, errors, repairs, results), the end (text and
    reason, or error), whether replies are random-weight noise, the definitions left out."""

    rounds: list[dict[str, Any]]
    final: dict[str, Any] | None
    random_weights: bool
    skipped_tools: list[str]


class PublicApi:
    """The endpoints, one method each; ``build`` registers them under DESIGN.md's names."""

    def __init__(self, manager: ModelManager, access: Access | None = None) -> None:
        self.manager = manager
        self.access = access or Access.configured()

    def status(self) -> Readiness:
        """Ready or not before you send: {ready, state (ready, loading, no_model), loading,
        model_id, quantization, endpoint, random_weights, requests_in_flight}."""
        return self.manager.readiness()

    def models(self) -> list[dict[str, Any]]:
        """The catalog, with each quantization level: available here, its memory estimate,
        and whether the model fits at it now."""
        return [
            {**spec.to_json(), "quantizations": self.manager.levels(spec.id)}
            for spec in self.manager.catalog.listed()
        ]

    @user_errors
    def load_model(self, model_id: str, quantization: str, request: gr.Request) -> ModelStatus:
        """Load a catalog model at a quantization level (see below); its status."""
        self.access.require_owner(request.headers, None, "load a model")
        return self.manager.load(model_id, quantization)

    @user_errors
    def generate(
        self, prompt: str, image_files: list[str] | None, settings_json: str, request: gr.Request
    ):
        """Stream the answer to one prompt (with optional images) as growing text."""
        settings = parse_settings(settings_json)
        cut = settings.pop("tiling", None)  # image detail for this request, e.g. {"max_tiles": 4}
        earlier = turns.history_of(settings.pop("messages", None), settings.pop("system", None))
        pick = backends.named(self.manager, settings.pop("model", None))  # a visitor's model
        files = list(image_files or [])
        if not (prompt or "").strip() and not files:
            raise InputError("Send a prompt, an image, or both.")
        if len(files) > turns.MAX_IMAGES_PER_MESSAGE:
            raise InputError(f"Send at most {turns.MAX_IMAGES_PER_MESSAGE} images per request.")
        answer = thought = ""
        conversation = [*earlier, turns.user_message(prompt or "", files)]
        client = request.session_hash or ""  # visitors take turns (worker.FairWorker)
        events = gpu.chat_turn(
            self.manager, conversation, settings=settings, tiling=cut, model=pick, client=client
        )
        # closed on every way out: a raised error's traceback would keep the reply (and its
        # lease on the model) suspended until collected
        with contextlib.closing(events):
            for event in events:
                if event.kind == "text":
                    answer += event.text
                    yield answer
                elif event.kind == "thinking":  # a reasoning model's: apart from the answer
                    thought += event.text
                elif event.kind == "metrics":
                    noise = self.manager.readiness(pick)["random_weights"]
                    _last_metrics[request.session_hash] = {**event.data, "random_weights": noise}
                    _last_metrics.move_to_end(request.session_hash)
                    while len(_last_metrics) > MAX_SESSIONS_KEPT:  # bounded across many clients
                        _last_metrics.popitem(last=False)
                elif event.kind == "done":
                    kept = _last_metrics.setdefault(request.session_hash, {})
                    kept["done"] = event.data["reason"]
                    if thought:  # /last_metrics gives it, as /v1 gives reasoning_content
                        kept["reasoning"] = thought
                        kept["thinking_cut"] = bool(event.data.get("thinking_cut"))
                elif event.kind == "error":
                    raise gr.Error(event.data["message"])
        yield answer

    @user_errors
    def plan_tiles(self, image: str, tiling_json: str) -> dict[str, Any]:
        """How the loaded model's processor cuts `image` under tiling_json (see the keys
        below; empty = the model's defaults): grid, tiles, thumbnail, image_tokens."""
        values = parse_settings(tiling_json) or None
        if not image:
            raise InputError("Send an image file.")
        return turns.inspect_image(self.manager, image, values)[1]

    @user_errors
    def parse_tool_calls(self, text: str, tools_json: str) -> ParsedCalls:
        """Parse LFM2 tool calls out of model text: {calls, errors, text, repairs,
        skipped_tools}. tools_json (a JSON list of tool schemas; empty = the built-ins)
        validates the calls; a definition that cannot be called is left out, and said."""
        if len(text or "") > 200_000:
            raise InputError("The text is over 200,000 characters; send one model reply.")
        registry = tools.registry_from_json(tools_json)
        schemas = [t.schema() for t in registry.values()]
        parsed = toolcalls.parse(text or "", schemas).to_json()
        return ParsedCalls(**parsed, skipped_tools=registry.skipped)

    @user_errors
    def tool_turn(self, prompt: str, tools_json: str, settings_json: str) -> Trace:
        """One full tool turn (automatic results) and its trace: the rounds with the raw model
        text, parsed calls, errors and results, then the final answer."""
        settings = parse_settings(settings_json)
        choice = str(settings.pop("tool_choice", "auto"))
        rounds = settings.pop("max_rounds", tool_turn.MAX_TOOL_ROUNDS)
        if not isinstance(rounds, int) or isinstance(rounds, bool):
            raise InputError(
                f"max_rounds must be a whole number between 1 and {tool_turn.MAX_ROUNDS_CAP}."
            )
        if not (prompt or "").strip():
            raise InputError("Send a request for the model.")
        registry = tools.registry_from_json(tools_json)
        conversation = [{"role": "user", "content": prompt}]
        turn = tool_turn.ToolTurn.start(conversation, registry, choice, rounds)
        for _ in gpu.run_tool_turn(self.manager, turn, settings=settings):
            pass
        noise = self.manager.readiness()["random_weights"]
        return Trace(**turn.to_json(), random_weights=noise, skipped_tools=registry.skipped)

    def last_metrics(self, request: gr.Request) -> Metrics:
        """Metrics of this client's last /generate call, with done (its end) and
        random_weights (true: the answer is noise from an offline build)."""
        return Metrics(**_last_metrics.get(request.session_hash, {}))


# The documented keys, read from their one definition (lfmui.settings, lfmui.tiling).
_KEYS = (
    f"settings_json: a JSON object of {', '.join(SETTING_KEYS)}; tiling: an object of "
    f"{', '.join(tiling.FIELDS)} (this request only); system: a system prompt; messages: the "
    'earlier turns, [{"role": "user" or "assistant", "content": "..."}], oldest first.'
)
PublicApi.generate.__doc__ = f"Stream the answer to one prompt (with images) as text. {_KEYS}"
for _method in (
    PublicApi.status,
    PublicApi.last_metrics,
    PublicApi.load_model,
    PublicApi.parse_tool_calls,
    PublicApi.tool_turn,
):
    # gradio reads a return type from the annotation; postponed (string) annotations resolved
    _hints = typing.get_type_hints(_method)
    _method.__annotations__ = inspect.unwrap(_method).__annotations__ = _hints
PublicApi.load_model.__doc__ = (
    "Load a catalog model (/models lists the ids) at a quantization level: auto (the fastest "
    f"that runs here and fits), or {', '.join(quant.QUANTIZATIONS)}; returns its status."
)
PublicApi.plan_tiles.__doc__ = (
    "How the loaded model's processor cuts an image under tiling_json (a JSON object of "
    f"{', '.join(tiling.FIELDS)}; empty = the model's defaults): grid, tiles, thumbnail, "
    "image_tokens."
)


def build(manager: ModelManager, access: Access | None = None) -> None:
    """Register the API endpoints (call inside the Blocks context)."""
    api = PublicApi(manager, access)
    gr.api(api.status, api_name="status")
    gr.api(api.models, api_name="models")
    gr.api(api.load_model, api_name="load_model", **ACCELERATOR)
    gr.api(api.last_metrics, api_name="last_metrics")
    gr.api(api.parse_tool_calls, api_name="parse_tool_calls")
    gr.api(api.tool_turn, api_name="tool_turn", **ACCELERATOR)
    with gr.Column(visible=False):
        tile_image = gr.File(type="filepath", file_types=["image"], label="Image")
        tile_settings = gr.Textbox(label="Tiling JSON")
        tile_plan = gr.JSON(label="Plan")
        tile_trigger = gr.Button("Plan tiles")
    tile_trigger.click(
        api.plan_tiles, [tile_image, tile_settings], tile_plan, api_name="plan_tiles"
    )
    with gr.Column(visible=False):
        prompt = gr.Textbox(label="Prompt")
        files = gr.File(
            file_count="multiple", type="filepath", file_types=["image"], label="Images"
        )
        settings = gr.Textbox(label="Settings JSON")
        answer = gr.Textbox(label="Answer")
        trigger = gr.Button("Generate")
    trigger.click(
        api.generate,
        [prompt, files, settings],
        answer,
        api_name="generate",
        **ACCELERATOR,
    )
