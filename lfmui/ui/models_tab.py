"""The Models tab: pick a model and a quantization level, load or unload, see what is resident."""

from __future__ import annotations

from typing import Any

import gradio as gr

from lfmui import measured, quant
from lfmui.manager import GIB, ModelManager
from lfmui.ui.queue import ACCELERATOR
from lfmui.ui.render import user_errors


def quantization_table() -> str:
    rows = ["| level | here | what it costs |", "|---|---|---|"]
    for row in quant.availability_table():
        mark = "✓ yes" if row["available"] else "✗ no"
        said = "; ".join(part for part in (row["reason"], row["note"]) if part)
        rows.append(f"| {row['label']} | {mark} | {said} |")
    return "\n".join(rows)


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
                [(q.label, q.name) for q in quant.QUANTIZATIONS.values()],
                value=quant.default_quantization(),
                label="Quantization",
            )
            with gr.Row():
                load_button = gr.Button("Load", variant="primary")
                unload_button = gr.Button("Unload")
            gr.Markdown(quantization_table(), label="Quantization levels on this machine")
        with gr.Column(scale=3):
            card = gr.Markdown(status_card(manager), label="Status", container=True)
            figures = gr.Markdown(measured.table(model.value), elem_id="measured-figures")
    model.change(measured.table, model, figures, api_visibility="private")

    @user_errors
    def load(model_id: str, quantization: str, progress=gr.Progress()):  # noqa: B008
        manager.load(model_id, quantization, progress=lambda f, m: progress(f, desc=m))
        return status_card(manager), banner(manager)

    @user_errors
    def unload():
        manager.unload()
        return status_card(manager), banner(manager)

    load_event = load_button.click(
        load,
        [model, level],
        [card, banner_box],
        api_visibility="private",
        **ACCELERATOR,
    )
    unload_button.click(unload, None, [card, banner_box], api_visibility="private", **ACCELERATOR)
    return {"model": model, "card": card, "loaded": load_event}
