"""What the Models tab and the chat's header show of the models, as Markdown and choices: the
level table (fits or not, in plain words), the status card, the banner, the pool's card, the
chip that names what answers this visitor, and the pickers' choices. Pure functions of the
manager: the app redraws them after every switch and page load."""

from __future__ import annotations

from typing import Any

import gradio as gr

from lfmui import backends, hub, quant
from lfmui.bench import measured
from lfmui.catalog import RANDOM_WEIGHTS_NOTE, ModelSpec
from lfmui.errors import NoModelLoaded
from lfmui.manager import GIB, ModelManager


def quantization_table(manager: ModelManager, model_id: str) -> str:
    """Each level: whether `model_id` fits at it here now (with its estimate), what it costs,
    or why this machine cannot run it."""
    rows = manager.levels(model_id)
    free = rows[0]["available_gib"]
    # the free memory goes above the table: in the narrow header it wrapped mid-word
    lines = [
        *model_facts(manager.catalog.get(model_id)),
        f"Memory free now: **{free:.1f} GiB**",
        "",
        "| level (in plain words) | memory | notes |",
        "|---|---|---|",
    ]
    for row in rows:
        if not row["available"]:
            room = "✗ not here"
        elif row["fits"] is None:
            room = "checked when loading"
        else:
            room = f"{'✓ fits' if row['fits'] else '✗ too big'}: ~{row['estimate_gib']:.1f} GiB"
        speed = row.get("tokens_per_s")
        if speed is not None:  # calibrated on this CPU (lfmui.calibrate)
            room += f"; ~{speed:g} tokens/s" + (" ⚠ slow" if row["slow"] else "")
        said = "; ".join(part for part in (row["reason"], row["note"]) if part)
        plain = quant.QUANTIZATIONS[row["name"]].plain
        lines.append(f"| **{row['label']}**: {plain} | {room} | {said} |")
    return "\n".join(lines)


def model_facts(spec: ModelSpec) -> list[str]:
    """What the catalog says of a model before it loads: where it comes from (the hub repo at
    its pinned revision, or what an offline build stands in for), its images, its sampling."""
    if spec.source == "hub":
        pinned = spec.revision != "main"
        at = f"commit `{spec.revision[:7]}`" if pinned else "`main` (not pinned)"
        where = f"`{spec.hub_repo}` at {at}"
    elif spec.source == "offline":
        where = f"offline build, {RANDOM_WEIGHTS_NOTE}; stands in for `{spec.hub_repo}`"
    else:
        where = f"local checkpoint `{spec.location}`"
    facts = [f"{spec.family}, {'reads images' if spec.kind == 'vl' else 'text only'}"]
    if spec.thinks:
        facts.append("thinks before answering")
    images = spec.image_defaults
    if images:
        thumbnail = "a thumbnail" if images["use_thumbnail"] else "no thumbnail"
        facts.append(
            f"images: {images['min_image_tokens']}-{images['max_image_tokens']} tokens each, "
            f"up to {images['max_tiles']} tiles of 512 px, {thumbnail}"
        )
    sampling = ", ".join(f"{k} {v:g}" for k, v in spec.sampling.items())
    return [f"{where} · {' · '.join(facts)}", "", f"Recommended sampling: {sampling}", ""]


def status_card(manager: ModelManager) -> str:
    status = manager.status()
    memory = status["memory"]
    lines = endpoint_lines(status["endpoint"])
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


def endpoint_lines(status: dict[str, Any] | None) -> list[str]:
    """The endpoint in use, for the status card: what it serves and what it did not take."""
    if status is None:
        return []
    lines = [
        f"**Endpoint in use:** `{status['model']}` at {status['url']} "
        f"({'vision-language' if status['kind'] == 'vl' else 'text'})",
        "- Quantization and speed are the server's business; the levels below apply to the "
        "in-process model, which stays loaded and answers again after *Use the in-process "
        "model*.",
        "- Tiling goes as `mm_processor_kwargs` (vLLM reads it); a server that ignores it "
        "silently reads images with its own settings.",
    ]
    if status["refused"]:
        lines.append(f"- This server refused: {', '.join(status['refused'])} (not sent now).")
    if status["note"]:
        lines.append(f"- Note: {status['note']}.")
    lines.append("")
    lines.append("**In-process model** (not answering while the endpoint is in use):")
    return lines


def banner(manager: ModelManager, startup_note: str = "") -> str:
    """The warning strip above the tabs: random weights, offline fallback, the endpoint."""
    notes = [startup_note] if startup_note else []
    try:
        backend = backends.of(manager)
    except NoModelLoaded:
        backend = None
    if backend is not None and not backend.on_this_machine:
        noise = f" ({RANDOM_WEIGHTS_NOTE})" if backend.random_weights else ""
        notes.append(f"Replies come from the endpoint **{backend.label}**{noise}.")
    return "\n\n".join(f"⚠️ {n}" for n in notes)


AUTO_CHOICE = ("auto: the fastest that fits", "auto")


def level_choices(manager: ModelManager, model_id: str) -> list[tuple[str, str]]:
    """The levels a Load can use for `model_id` here (auto first); the table below the picker
    lists the others with the reason each cannot run."""
    labels = {q.name: q.label for q in quant.QUANTIZATIONS.values()}
    rows = manager.levels(model_id)
    return [AUTO_CHOICE] + [(labels[r["name"]], r["name"]) for r in rows if r["available"]]


def picked(manager: ModelManager) -> tuple[Any, Any]:
    """The picker and the level as the server has them: the resident model and its level (a
    page opened or reloaded later shows what is loaded, not the first entry)."""
    loaded = manager.current()
    if loaded is None:
        return gr.skip(), gr.skip()
    choices = level_choices(manager, loaded.spec.id)
    return gr.Dropdown(value=loaded.spec.id), gr.Radio(choices, value=loaded.quantization)


def chip(manager: ModelManager, pick: str | None = None) -> str:
    """One line over the chat: what answers this visitor, at which level, and whether it is
    noise."""
    ready = manager.readiness(pick)
    if ready["model_id"] is None:
        if ready["state"] == "loading":
            return f"⏳ Loading **{ready['loading']}**…"
        return "**No model loaded.** Load one in the Models tab."
    where = f" at {ready['endpoint']}" if ready["endpoint"] else f" · {ready['quantization']}"
    noise = (
        ' <span class="badge" title="for trying the app offline: no real model answers">'
        "random weights: replies are noise</span>"
        if ready["random_weights"]
        else ""
    )
    return f"Model: **{ready['model_id']}**{where}{noise}"


def chat_choices(manager: ModelManager, pick: str | None = None) -> gr.Dropdown:
    """The chat's model picker: what answers now first, then every model of the catalog in
    plain words with its measured size and speed, or why it cannot load here."""
    here = backends.names(manager)
    ready = manager.readiness(pick)
    current = ready["model_id"]
    listed = []
    for spec in manager.catalog.listed():
        words = spec.label
        if spec.id in here:
            words = f"● {words} · loaded"
        elif spec.source == "hub" and hub.offline_mode():
            words += " · can't load: needs a download, and this app runs offline"
        figure = measured.headline(spec.id)
        listed.append((f"{words} · {figure}" if figure else words, spec.id))
    if current and current not in {key for _, key in listed}:
        listed.insert(0, (f"● {current} · loaded", current))
    return gr.Dropdown(choices=listed, value=current)


def pool_card(manager: ModelManager) -> str:
    """What every visitor may pick from: the resident models (answering or idle), the
    endpoint, what is loading, and the pool's room."""
    lines = ["**Models here** (each visitor picks one for their own chats):"]
    pool = manager.pool()
    if manager.endpoint is not None:
        lines.append(f"- `{manager.endpoint.model}` · an endpoint the owner connected")
    for entry in pool:
        state = (
            f"answering {entry['answering']}"
            if entry["answering"]
            else f"idle {entry['idle_s']:g} s"
        )
        default = " · the default" if entry["default"] else ""
        lines.append(
            f"- `{entry['model_id']}` · {entry['quantization']} · {state} · "
            f"~{entry['gib']:.2f} GiB{default}"
        )
    if manager.loading:
        lines.append(f"- loading `{manager.loading}`…")
    if len(lines) == 1:
        lines.append("- none yet")
    budget = manager.pool_budget
    if budget is not None:
        used = sum(entry["gib"] for entry in pool)
        who = (
            "a pick of another model loads it if it fits (the least recently used idle model "
            "makes room)"
            if manager.load_on_demand
            else "only the owner loads models"
        )
        lines.append(f"\nPool: {used:.2f} of {budget / GIB:.2f} GiB in use; {who}.")
    return "\n".join(lines)


def pick_choices(manager: ModelManager) -> list[tuple[str, str]]:
    """The visitor's picker: what is here, then (where visitors may load) the catalog."""
    listed = backends.choices(manager)
    if manager.load_on_demand:
        here = {entry["model_id"] for entry in manager.pool()}
        listed += [
            (f"{spec.id} (loads into the pool)", spec.id)
            for spec in manager.catalog.listed()
            if spec.id not in here
        ]
    return listed
