"""Image detail controls (shared by the chat and the inspector), the tiling inspector, budget A/B.

The inspector runs the loaded model's real processor on the uploaded picture for every change of
the controls and draws what it made of it; the budget A/B sends one picture and question at the
three presets and shows the answers and costs side by side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import gradio as gr

from lfmui import backends, tiling, turns
from lfmui.errors import InputError, NoModelLoaded
from lfmui.manager import ModelManager
from lfmui.ui import gpu
from lfmui.ui.controls import MODEL_DEFAULT, TilingControls
from lfmui.ui.render import warns
from lfmui.ui.running import ACCELERATOR

AB_HEADERS = ["preset", "image tokens", "prompt tokens", "TTFT s", "tok/s", "answer"]


def reset_values(manager: ModelManager, pick: str | None = None) -> list[Any]:
    """Preset and knobs back to the answering model's processor defaults."""
    try:
        defaults = backends.of(manager, pick).tiling_defaults()
    except NoModelLoaded:
        defaults = None
    if defaults is None:
        return [gr.skip()] * (1 + len(tiling.FIELDS))
    return [MODEL_DEFAULT, *asdict(defaults).values()]


def describe(plan: dict[str, Any]) -> str:
    """The plan in words, under the picture."""
    width, height = plan["image_size"]
    lines = [
        f"**{plan['image_tokens']} image tokens** (budget {plan['budget']}), "
        f"{plan['context_share']:.1%} of the {plan['context_tokens']:,}-token context"
    ]
    if plan["fitted_size"] != plan["image_size"]:
        fw, fh = plan["fitted_size"]
        lines.append(f"- {width}x{height} given to the processor as {fw}x{fh} (kept in budget)")
    if plan["tiled"]:
        rows, cols = plan["grid"]
        tw, th = plan["tiled_size"]
        lines.append(
            f"- {rows} row(s) x {cols} column(s) of {plan['tile_px']} px tiles "
            f"(resized to {tw}x{th}), {plan['tokens_per_tile']} tokens per tile"
        )
        if plan["thumbnail"]:
            vw, vh = plan["view_size"]
            lines.append(f"- thumbnail {vw}x{vh}: {plan['view_tokens']} tokens")
        else:
            lines.append("- no thumbnail")
    else:
        vw, vh = plan["view_size"]
        lines.append(f"- one view, resized {width}x{height} → {vw}x{vh}: 32x32 px per token")
    quiet = tiling.unchanged_by(plan)
    if quiet:
        lines += ["", "**What changes nothing here**", *(f"- {line}" for line in quiet)]
    return "\n".join(lines)


def inspect(
    manager: ModelManager, path: str | None, values: dict[str, Any], pick: str | None = None
):
    """(picture with the plan drawn, description, plan JSON) for the inspector, by the model
    the visitor picked."""
    if not path:
        return None, "Upload an image to see how the model will cut it.", None
    picture, plan = turns.inspect_image(manager, path, values, pick)
    return tiling.preview(picture, plan), describe(plan), plan


def budget_ab(manager: ModelManager, path: str | None, question: str, new_tokens: int):
    """Stream a table: the same picture and question at each preset."""
    if not path:
        raise InputError("Upload an image first.")
    message = turns.user_message(question or "Describe this image.", [path])
    loaded = manager.current()
    if loaded is None:
        raise NoModelLoaded("No model is loaded. Load one in the Models tab first.")
    thumbnail = tiling.Tiling.from_processor(loaded.processor).use_thumbnail
    # every preset has its row from the start, saying where it stands
    rows: list[list[Any]] = [[name, None, None, None, None, "waiting"] for name in tiling.PRESETS]
    yield rows
    for row, name in zip(rows, tiling.PRESETS, strict=True):
        cut = asdict(tiling.preset(name, use_thumbnail=thumbnail))
        conversation = [message]
        settings = {"max_new_tokens": int(new_tokens), "temperature": 0.0}
        answer, metrics = "", {}
        row[5] = "running: reading the image…"
        yield rows
        for event in gpu.chat_turn(manager, conversation, settings=settings, tiling=cut):
            if event.kind == "text":
                answer += event.text
                row[5] = answer
            elif event.kind == "metrics":
                metrics = event.data
            elif event.kind == "error":
                row[5] = event.data["message"]
            yield rows
        if loaded.spec.random_weights:
            row[5] = f"[noise from random weights] {answer}"
        row[1:5] = [
            metrics.get("image_tokens"),
            metrics.get("prompt_tokens"),
            metrics.get("ttft_s"),
            metrics.get("decode_tokens_per_s"),
        ]
        yield rows


@dataclass(frozen=True)
class InspectorParts:
    """What the Tiling tab hands the app: its knobs, which a model switch resets."""

    controls: TilingControls


def build(manager: ModelManager, pick: gr.State) -> InspectorParts:
    gr.Markdown(
        "Upload an image to see how the loaded model will cut it: the tile grid and the "
        "thumbnail drawn over it, and the image tokens it costs. Counts come from the model's "
        "own processor. Changes here apply to this tab; the chat has its own **Image detail**."
    )
    with gr.Row(elem_id="inspector-row"):  # on a phone the drawing comes first (app.CSS)
        with gr.Column(scale=1):
            controls = TilingControls("fast 32-64 tokens · balanced 64-128 · detailed: tiles")
        with gr.Column(scale=2):
            # a file, not gr.Image: gradio's image preprocessing fails on a broken upload
            # before lfmui's intake can say why (an Error badge instead of a warning)
            upload = gr.File(file_types=["image"], type="filepath", label="Image to inspect")
            picture = gr.Image(label="How the model sees it", interactive=False, height=560)
            summary = gr.Markdown(elem_id="tiling-summary")
            plan_json = gr.JSON(label="Plan", visible=False)
    with gr.Accordion("Budget A/B: one image and question at each preset", open=False):
        question = gr.Textbox(label="Question", value="Describe this image.")
        new_tokens = gr.Slider(1, 512, value=48, step=1, label="Max new tokens")
        compare = gr.Button("Compare presets")
        table = gr.Dataframe(headers=AB_HEADERS, label="Answers and costs", wrap=True)

    @warns(outputs=3)
    def on_change(data: dict):
        return inspect(manager, data[upload], controls.values(data), data[pick])

    inputs = {upload, pick, *controls.all}
    for trigger in [upload.change, *(k.change for k in controls.knobs)]:
        trigger(
            on_change,
            inputs,
            [picture, summary, plan_json],
            api_visibility="private",
            trigger_mode="always_last",
        )

    @warns(outputs=1)
    def on_compare(path, text, tokens):
        yield from budget_ab(manager, path, text, tokens)

    compare.click(
        on_compare, [upload, question, new_tokens], table, api_visibility="private", **ACCELERATOR
    )
    return InspectorParts(controls)
