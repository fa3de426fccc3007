"""The Models tab: pick a model and a quantization level, load or unload, see what is resident."""

from __future__ import annotations

from typing import Any

import gradio as gr

from lfmui import measured, quant
from lfmui.manager import GIB, ModelManager
from lfmui.ui.render import user_errors
from lfmui.ui.running import ACCELERATOR


def quantization_table(manager: ModelManager, model_id: str) -> str:
    """Each level: whether `model_id` fits at it here now (with its estimate), what it costs,
    or why this machine cannot run it."""
    rows = manager.levels(model_id)
    free = rows[0]["available_gib"]
    lines = [f"| level | memory ({free:.1f} GiB free) | notes |", "|---|---|---|"]
    for row in rows:
        if not row["available"]:
            room = "✗ not here"
        elif row["fits"] is None:
            room = "checked when loading"
        else:
            room = f"{'✓ fits' if row['fits'] else '✗ too big'}: ~{row['estimate_gib']:.1f} GiB"
        said = "; ".join(part for part in (row["reason"], row["note"]) if part)
        lines.append(f"| {row['label']} | {room} | {said} |")
    return "\n".join(lines)


def status_card(manager: ModelManager) -> str:
    status = manager.status()
    memory = status["memory"]
    lines = []
    if status.get("loading"):
        lines.append(f"**Loading {status['loading']}…**")
    if status["model_id"] is None:
        lines.append("No model loaded.")
    else:
        lines += [
            f"**{status['label']}** · {status['quantization']} on **{status['device']}** "
            f"({status['dtype']})",
            f"- resident weights: {status['resident_bytes'] / GIB:.3f} GiB",
            f"- load time: {status['load_seconds']:.2f} s",
        ]
        if status.get("decode"):
            lines.append(f"- decode: {status['decode']}")  # compiled, or why not
    if "cuda_allocated_bytes" in memory:
        lines.append(
            f"- CUDA allocated {memory['cuda_allocated_bytes'] / GIB:.2f} GiB, reserved "
            f"{memory['cuda_reserved_bytes'] / GIB:.2f} GiB, "
            f"peak {memory['cuda_peak_bytes'] / GIB:.2f} GiB"
        )
    lines.append(f"- process memory (RSS): {memory['rss_bytes'] / GIB:.2f} GiB")
    return "\n".join(lines)


def banner(manager: ModelManager, startup_note: str = "") -> str:
    """The warning strip above the tabs: random weights, offline fallback."""
    loaded = manager.current()
    notes = [startup_note] if startup_note else []
    if loaded is not None and loaded.spec.random_weights:
        notes.append(f"**{loaded.spec.id}** has {loaded.spec.note}.")
    return "\n\n".join(f"⚠️ {n}" for n in notes)


def build(manager: ModelManager, banner_box: gr.Markdown, startup_note: str) -> dict[str, Any]:
    """Lay out the tab; return the components other tabs listen to."""
    choices = [(s.label, s.id) for s in manager.catalog.listed()]
    loaded = manager.current()
    with gr.Row():
        with gr.Column(scale=2):
            model = gr.Dropdown(
                choices,
                value=loaded.spec.id if loaded else choices[0][1],
                label="Model",
                elem_id="model-picker",
            )
            level = gr.Radio(
                [("auto: the fastest that fits", "auto")]
                + [(q.label, q.name) for q in quant.QUANTIZATIONS.values()],
                value="auto",
                label="Quantization",
            )
            with gr.Row():
                load_button = gr.Button("Load", variant="primary")
                unload_button = gr.Button("Unload")
        with gr.Column(scale=3):
            card = gr.Markdown(status_card(manager), label="Status", container=True)
            figures = gr.Markdown(measured.table(model.value), elem_id="measured-figures")
    levels = gr.Markdown(
        quantization_table(manager, model.value),
        label="Quantization levels on this machine",
        elem_id="level-table",
    )
    model.change(measured.table, model, figures, api_visibility="private")
    model.change(
        lambda model_id: quantization_table(manager, model_id),
        model,
        levels,
        api_visibility="private",
    )

    @user_errors
    def load(model_id: str, quantization: str, progress=gr.Progress()):  # noqa: B008
        manager.load(model_id, quantization, progress=lambda f, m: progress(f, desc=m))
        return status_card(manager), banner(manager), quantization_table(manager, model_id)

    @user_errors
    def unload(model_id: str):
        manager.unload()
        return status_card(manager), banner(manager), quantization_table(manager, model_id)

    outputs = [card, banner_box, levels]  # what fits changes with what is resident
    load_event = load_button.click(
        load, [model, level], outputs, api_visibility="private", **ACCELERATOR
    )
    unload_button.click(unload, model, outputs, api_visibility="private", **ACCELERATOR)
    return {"model": model, "card": card, "loaded": load_event}
