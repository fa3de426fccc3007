"""The Models tab: pick a model and a quantization level, load or unload, see what is resident."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import gradio as gr

from lfmui import backends
from lfmui import endpoint as endpoints
from lfmui.access import Access
from lfmui.bench import measured
from lfmui.manager import ModelManager
from lfmui.ui.model_cards import (
    banner,
    level_choices,
    pick_choices,
    pool_card,
    quantization_table,
    status_card,
)
from lfmui.ui.render import warns
from lfmui.ui.running import ACCELERATOR


@dataclass(frozen=True)
class ModelsParts:
    """What the Models tab hands the app: the components it redraws after a switch and the
    events that switch (the app follows each with the new model's defaults)."""

    model: gr.Dropdown  # the owner's model picker
    level: gr.Radio
    card: gr.Markdown  # the status card
    yours: gr.Dropdown  # the visitor's own model
    pool: gr.Markdown  # the pool's card
    switches: list[Any]  # load, unload, connect, back to the in-process model, a visitor's pick


def _username(profile: gr.OAuthProfile | None) -> str | None:
    return getattr(profile, "username", None) if profile is not None else None


class ModelsTab:
    """The tab, cut the way gradio's ChatInterface cuts its own: ``_render_*`` lay out, one
    ``_setup_events`` wires. A visitor picks their own model from what is here (`pick`);
    loading, unloading and the endpoint change what every visitor has: only the owner may."""

    def __init__(
        self,
        manager: ModelManager,
        banner_box: gr.Markdown,
        access: Access,
        pick: gr.State,
    ) -> None:
        self.manager, self.banner_box, self.access, self.pick = manager, banner_box, access, pick
        self._render_your_model()
        gr.Markdown("**The owner's controls** (the default model, the pool, endpoints)")
        self._render_owner_controls()
        self._render_endpoint()
        self._setup_events()

    def parts(self) -> ModelsParts:
        switches = [self.loaded, self.unloaded, self.connected, self.local, self.picked]
        return ModelsParts(self.model, self.level, self.card, self.yours, self.pool, switches)

    def _render_your_model(self) -> None:
        """The visitor's own model: a picker over what is here (the chat and the API ask for
        it by name) and the pool's card; a pick changes nothing for anyone else."""
        with gr.Row():
            with gr.Column(scale=2):
                self.yours = gr.Dropdown(
                    pick_choices(self.manager),
                    value="default",
                    label="Your model (this browser tab only; others keep theirs)",
                    elem_id="your-model",
                )
            with gr.Column(scale=3):
                self.pool = gr.Markdown(pool_card(self.manager), elem_id="pool-card")

    def _render_owner_controls(self) -> None:
        manager = self.manager
        choices = [(s.label, s.id) for s in manager.catalog.listed()]
        loaded = manager.current()
        with gr.Row():
            with gr.Column(scale=2):
                self.model = gr.Dropdown(
                    choices,
                    value=loaded.spec.id if loaded else choices[0][1],
                    label="Model",
                    elem_id="model-picker",
                )
                self.level = gr.Radio(
                    level_choices(manager, self.model.value),
                    value=loaded.quantization if loaded else "auto",
                    label="Quantization",
                    info="levels this machine cannot run are left out; the table below says in "
                    "plain words what each level is, and why one cannot run",
                    elem_id="level-picker",
                )
                with gr.Row():
                    self.load_button = gr.Button("Load", variant="primary")
                    self.unload_button = gr.Button("Unload")
                self.admin = gr.Textbox(
                    label="Admin token (the owner's: loading, unloading and endpoints change "
                    "what every visitor uses)",
                    type="password",
                    visible=not self.access.local,
                    elem_id="admin-token",
                )
                if self.access.sign_in:  # a Space with hf_oauth: its author or LFMUI_OWNERS
                    gr.LoginButton("Sign in with Hugging Face (the owner)", elem_id="sign-in")
            with gr.Column(scale=3):
                self.card = gr.Markdown(status_card(manager), label="Status", container=True)
                self.figures = gr.Markdown(
                    measured.table(self.model.value), elem_id="measured-figures"
                )
        self.levels = gr.Markdown(
            quantization_table(manager, self.model.value),
            label="Quantization levels on this machine",
            elem_id="level-table",
        )

    def _render_endpoint(self) -> None:
        """Connect to an OpenAI-compatible server (vLLM, SGLang, llama.cpp's server,
        transformers serve) or go back to the in-process model: the owner only."""
        current = self.manager.endpoint
        with gr.Accordion("Endpoint: an OpenAI-compatible server", open=current is not None):
            gr.Markdown(
                "Put the whole app in front of a server that speaks the OpenAI chat API, e.g. "
                "`vllm serve LiquidAI/LFM2-VL-1.6B`. The model id may stay empty: the first "
                "model the server lists is used."
            )
            with gr.Row():
                self.url = gr.Textbox(
                    current.url if current and current.show_url else "",
                    label="Server URL",
                    placeholder="http://localhost:8000/v1",
                    elem_id="endpoint-url",
                )
                self.served = gr.Dropdown(
                    current.models if current else [],
                    value=current.model if current else None,
                    label="Model id",
                    allow_custom_value=True,
                    elem_id="endpoint-model",
                )
                self.key = gr.Textbox(label="API key (if the server wants one)", type="password")
            self.extra = gr.Textbox(
                json.dumps(current.extra_body)
                if current and current.extra_body and current.show_url
                else "",
                label="Extra request fields (JSON, sent with every request)",
                placeholder='{"top_k": 20}',
                max_lines=4,
            )
            with gr.Row():
                self.connect_button = gr.Button(
                    "Connect", variant="primary", elem_id="endpoint-connect"
                )
                self.local_button = gr.Button("Use the in-process model", elem_id="endpoint-local")

    # ---- handlers ------------------------------------------------------------------------
    def _owner(self, request: gr.Request, profile, what: str, token: str) -> None:
        self.access.require_owner(request.headers, _username(profile), what, token)

    def _shown(self, model_id: str) -> tuple[str, str, str]:
        """The status card, the banner and the level table after a change for everyone."""
        manager = self.manager
        return status_card(manager), banner(manager), quantization_table(manager, model_id)

    @warns(outputs=3)
    def on_pick(self, choice: str, progress=gr.Progress()):  # noqa: B008
        key = backends.named(self.manager, choice)  # a catalog id loads here, if visitors may
        shown = gr.Dropdown(choices=pick_choices(self.manager), value=key or "default")
        return key, shown, pool_card(self.manager)

    def on_focus(self, current: str | None):
        choices = pick_choices(self.manager)
        value = current if current in {key for _, key in choices} else "default"
        return gr.Dropdown(choices=choices, value=value), pool_card(self.manager)

    @warns(outputs=3)
    def on_load(
        self,
        model_id: str,
        quantization: str,
        token: str,
        request: gr.Request,
        profile: gr.OAuthProfile | None,
        progress=gr.Progress(),  # noqa: B008
    ):
        self._owner(request, profile, "load a model", token)
        self.manager.load(model_id, quantization, progress=lambda f, m: progress(f, desc=m))
        return self._shown(model_id)

    @warns(outputs=3)
    def on_unload(
        self, model_id: str, token: str, request: gr.Request, profile: gr.OAuthProfile | None
    ):
        self._owner(request, profile, "unload the model", token)
        self.manager.unload()
        return self._shown(model_id)

    @warns(outputs=4)
    def on_connect(
        self,
        address: str,
        model_id: str | None,
        api_key: str,
        fields: str,
        picked: str,
        token: str,
        request: gr.Request,
        profile: gr.OAuthProfile | None,
    ):
        self._owner(request, profile, "connect an endpoint", token)
        self.access.check_endpoint((address or "").strip())
        endpoint = endpoints.Endpoint.connect(
            address,
            model_id,
            api_key,
            endpoints.extra_fields(fields),
            self.manager.catalog,
            show_url=self.access.local,
        )
        self.manager.use_endpoint(endpoint)
        served_now = gr.Dropdown(choices=endpoint.models, value=endpoint.model)
        return (*self._shown(picked), served_now)

    @warns(outputs=3)
    def on_local(
        self, picked: str, token: str, request: gr.Request, profile: gr.OAuthProfile | None
    ):
        self._owner(request, profile, "switch back to the in-process model", token)
        self.manager.use_endpoint(None)
        return self._shown(picked)

    def _setup_events(self) -> None:
        manager, model, private = self.manager, self.model, {"api_visibility": "private"}
        # .select: gradio's Dropdown fires .input twice for one click on an option (two loads)
        self.picked = self.yours.select(
            self.on_pick,
            self.yours,
            [self.pick, self.yours, self.pool],
            **private,
            **ACCELERATOR,
        )
        self.yours.focus(self.on_focus, self.pick, [self.yours, self.pool], **private)
        model.change(measured.table, model, self.figures, **private)
        model.change(lambda m: quantization_table(manager, m), model, self.levels, **private)
        model.input(
            lambda m: gr.Radio(level_choices(manager, m), value="auto"),
            model,
            self.level,
            **private,
        )
        outputs = [
            self.card,
            self.banner_box,
            self.levels,
        ]  # what fits changes with what is resident
        # one progress bar, on the status card (not one per output over dimmed content)
        once = {"show_progress_on": self.card, **private, **ACCELERATOR}
        self.loaded = self.load_button.click(
            self.on_load, [model, self.level, self.admin], outputs, **once
        )
        self.unloaded = self.unload_button.click(
            self.on_unload, [model, self.admin], outputs, **once
        )
        self.connected = self.connect_button.click(
            self.on_connect,
            [self.url, self.served, self.key, self.extra, model, self.admin],
            [*outputs, self.served],
            **private,
        )
        self.local = self.local_button.click(self.on_local, [model, self.admin], outputs, **private)


def build(
    manager: ModelManager, banner_box: gr.Markdown, access: Access, pick: gr.State
) -> ModelsParts:
    """Lay out the tab; return what the app redraws and follows."""
    return ModelsTab(manager, banner_box, access, pick).parts()
