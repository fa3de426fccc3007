"""The Models tab: pick a model and a quantization level, load or unload, see what is resident."""

from __future__ import annotations

import json
from typing import Any

import gradio as gr

from lfmui import backends, hub, measured, quant
from lfmui import endpoint as endpoints
from lfmui.access import Access
from lfmui.catalog import RANDOM_WEIGHTS_NOTE
from lfmui.errors import NoModelLoaded
from lfmui.manager import GIB, ModelManager
from lfmui.ui.render import warns
from lfmui.ui.running import ACCELERATOR


def quantization_table(manager: ModelManager, model_id: str) -> str:
    """Each level: whether `model_id` fits at it here now (with its estimate), what it costs,
    or why this machine cannot run it."""
    rows = manager.levels(model_id)
    free = rows[0]["available_gib"]
    # the free memory goes above the table: in the narrow header it wrapped mid-word
    lines = [
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


def your_model(manager: ModelManager, pick: gr.State) -> dict[str, Any]:
    """The visitor's own model: a picker over what is here (the chat and the API ask for it by
    name) and the pool's card; a pick changes nothing for anyone else."""
    with gr.Row():
        with gr.Column(scale=2):
            yours = gr.Dropdown(
                pick_choices(manager),
                value="default",
                label="Your model (this browser tab only; others keep theirs)",
                elem_id="your-model",
            )
        with gr.Column(scale=3):
            card = gr.Markdown(pool_card(manager), elem_id="pool-card")

    @warns(outputs=3)
    def on_pick(choice: str, progress=gr.Progress()):  # noqa: B008
        key = backends.named(manager, choice)  # a catalog id loads here, if visitors may load
        shown = gr.Dropdown(choices=pick_choices(manager), value=key or "default")
        return key, shown, pool_card(manager)

    def refresh(current: str | None):
        choices = pick_choices(manager)
        value = current if current in {key for _, key in choices} else "default"
        return gr.Dropdown(choices=choices, value=value), pool_card(manager)

    # .select: gradio's Dropdown fires .input twice for one click on an option (two loads)
    picked_event = yours.select(
        on_pick, yours, [pick, yours, card], api_visibility="private", **ACCELERATOR
    )
    yours.focus(refresh, pick, [yours, card], api_visibility="private")
    return {"picked": picked_event, "yours": yours, "pool": card, "refresh": refresh}


def _username(profile: gr.OAuthProfile | None) -> str | None:
    return getattr(profile, "username", None) if profile is not None else None


def build(
    manager: ModelManager,
    banner_box: gr.Markdown,
    startup_note: str,
    access: Access,
    pick: gr.State,
) -> dict[str, Any]:
    """Lay out the tab; return the components other tabs listen to. A visitor picks their own
    model from what is here (`pick`); loading, unloading and the endpoint change what every
    visitor has: only the owner (`access`) may."""
    choices = [(s.label, s.id) for s in manager.catalog.listed()]
    loaded = manager.current()
    yours = your_model(manager, pick)
    gr.Markdown("**The owner's controls** (the default model, the pool, endpoints)")
    with gr.Row():
        with gr.Column(scale=2):
            model = gr.Dropdown(
                choices,
                value=loaded.spec.id if loaded else choices[0][1],
                label="Model",
                elem_id="model-picker",
            )
            level = gr.Radio(
                level_choices(manager, model.value),
                value=loaded.quantization if loaded else "auto",
                label="Quantization",
                info="levels this machine cannot run are left out; the table below says in "
                "plain words what each level is, and why one cannot run",
                elem_id="level-picker",
            )
            with gr.Row():
                load_button = gr.Button("Load", variant="primary")
                unload_button = gr.Button("Unload")
            admin = gr.Textbox(
                label="Admin token (the owner's: loading, unloading and endpoints change "
                "what every visitor uses)",
                type="password",
                visible=not access.local,
                elem_id="admin-token",
            )
            if access.sign_in:  # a Space with hf_oauth: its author (or LFMUI_OWNERS) signs in
                gr.LoginButton("Sign in with Hugging Face (the owner)", elem_id="sign-in")
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
    model.input(
        lambda model_id: gr.Radio(level_choices(manager, model_id), value="auto"),
        model,
        level,
        api_visibility="private",
    )

    @warns(outputs=3)
    def load(
        model_id: str,
        quantization: str,
        token: str,
        request: gr.Request,
        profile: gr.OAuthProfile | None,
        progress=gr.Progress(),  # noqa: B008
    ):
        access.require_owner(request.headers, _username(profile), "load a model", token)
        manager.load(model_id, quantization, progress=lambda f, m: progress(f, desc=m))
        return status_card(manager), banner(manager), quantization_table(manager, model_id)

    @warns(outputs=3)
    def unload(model_id: str, token: str, request: gr.Request, profile: gr.OAuthProfile | None):
        access.require_owner(request.headers, _username(profile), "unload the model", token)
        manager.unload()
        return status_card(manager), banner(manager), quantization_table(manager, model_id)

    outputs = [card, banner_box, levels]  # what fits changes with what is resident
    # one progress bar, on the status card (not one per output over dimmed content)
    once = {"show_progress_on": card, "api_visibility": "private", **ACCELERATOR}
    load_event = load_button.click(load, [model, level, admin], outputs, **once)
    unloaded = unload_button.click(unload, [model, admin], outputs, **once)
    switched = endpoint_panel(manager, outputs, model, access, admin)
    return {
        "model": model,
        "level": level,
        "card": card,
        "loaded": load_event,
        "switched": switched,
        "unloaded": unloaded,
        **yours,
    }


def endpoint_panel(
    manager: ModelManager,
    outputs: list[Any],
    model: gr.Dropdown,
    access: Access,
    admin: gr.Textbox,
) -> list[Any]:
    """Connect to an OpenAI-compatible server (vLLM, SGLang, llama.cpp's server, transformers
    serve) or go back to the in-process model, the owner only; returns the two events."""
    current = manager.endpoint
    with gr.Accordion("Endpoint: an OpenAI-compatible server", open=current is not None):
        gr.Markdown(
            "Put the whole app in front of a server that speaks the OpenAI chat API, e.g. "
            "`vllm serve LiquidAI/LFM2-VL-1.6B`. The model id may stay empty: the first model "
            "the server lists is used."
        )
        with gr.Row():
            url = gr.Textbox(
                current.url if current and current.show_url else "",
                label="Server URL",
                placeholder="http://localhost:8000/v1",
                elem_id="endpoint-url",
            )
            served = gr.Dropdown(
                current.models if current else [],
                value=current.model if current else None,
                label="Model id",
                allow_custom_value=True,
                elem_id="endpoint-model",
            )
            key = gr.Textbox(label="API key (if the server wants one)", type="password")
        extra = gr.Textbox(
            json.dumps(current.extra_body)
            if current and current.extra_body and current.show_url
            else "",
            label="Extra request fields (JSON, sent with every request)",
            placeholder='{"top_k": 20}',
            max_lines=4,
        )
        with gr.Row():
            connect_button = gr.Button("Connect", variant="primary", elem_id="endpoint-connect")
            local_button = gr.Button("Use the in-process model", elem_id="endpoint-local")

    @warns(outputs=4)
    def connect(
        address: str,
        model_id: str | None,
        api_key: str,
        fields: str,
        picked: str,
        token: str,
        request: gr.Request,
        profile: gr.OAuthProfile | None,
    ):
        access.require_owner(request.headers, _username(profile), "connect an endpoint", token)
        access.check_endpoint((address or "").strip())
        endpoint = endpoints.Endpoint.connect(
            address,
            model_id,
            api_key,
            endpoints.extra_fields(fields),
            manager.catalog,
            show_url=access.local,
        )
        manager.use_endpoint(endpoint)
        table = quantization_table(manager, picked)
        served_now = gr.Dropdown(choices=endpoint.models, value=endpoint.model)
        return status_card(manager), banner(manager), table, served_now

    @warns(outputs=3)
    def use_local(picked: str, token: str, request: gr.Request, profile: gr.OAuthProfile | None):
        what = "switch back to the in-process model"
        access.require_owner(request.headers, _username(profile), what, token)
        manager.use_endpoint(None)
        return status_card(manager), banner(manager), quantization_table(manager, picked)

    connected = connect_button.click(
        connect,
        [url, served, key, extra, model, admin],
        [*outputs, served],
        api_visibility="private",
    )
    local = local_button.click(use_local, [model, admin], outputs, api_visibility="private")
    return [connected, local]
