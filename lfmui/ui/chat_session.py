"""The chat's session panel: export the chat as one JSON file, import one, or show it as
``transformers`` and ``gradio_client`` code (``lfmui.session`` does the work). It reads the
chat's components and, on import, sets them."""

from __future__ import annotations

from typing import Any

import gradio as gr

from lfmui import session, tiling
from lfmui.errors import InputError
from lfmui.manager import ModelManager
from lfmui.settings import SAMPLING
from lfmui.ui.render import to_chatbot, warns

# what an import sets: state, chatbot, system prompt, the sampling controls, the tiling knobs and
# preset, use tools (SessionPanel.import_outputs, in this order)
IMPORT_OUTPUTS = 3 + len(SAMPLING) + len(tiling.FIELDS) + 2


class SessionPanel:
    """Made inside the chat's settings, after the chat's own components (`chat`: its state,
    chatbot, system prompt, controls, image detail and use-tools box)."""

    def __init__(self, manager: ModelManager, chat: Any) -> None:
        self.manager, self.chat = manager, chat
        with gr.Accordion("Session: export, import, copy as code", open=False):
            with gr.Row():
                self.export_button = gr.Button("Export session", size="sm")
                self.code_button = gr.Button("Show as code", size="sm")
            with gr.Row():
                self.exported = gr.File(label="Exported session (download)", interactive=False)
                self.imported = gr.File(
                    label="Import a session file", file_types=[".json"], elem_id="session-import"
                )
            self.transformers_box = gr.Code(
                language="python", label="transformers code", visible=False
            )
            self.client_box = gr.Code(language="python", label="gradio_client code", visible=False)

    def _bundle(self, data: dict) -> dict[str, Any]:
        loaded = self.manager.current()
        model = {"id": loaded.spec.id, "quantization": loaded.quantization} if loaded else {}
        return session.export_session(
            data[self.chat.state],
            model,
            data[self.chat.system_prompt],
            self.chat.settings(data),
            self.chat.image_detail.values(data),
            data[self.chat.use_tools],
        )

    @warns(outputs=1)
    def on_export(self, data: dict):
        if not data[self.chat.state]:
            raise InputError("Nothing to export yet: send a message first.")
        return session.write_bundle(self._bundle(data))

    @warns(outputs=2)
    def on_show_code(self, data: dict, request: gr.Request):
        loaded = self.manager.current()
        if loaded is None:
            raise InputError("Load a model first; the code names it.")
        bundle = self._bundle(data)
        url = str(request.request.base_url) if request.request else "http://127.0.0.1:7860/"
        return (
            gr.Code(
                session.transformers_code(bundle, loaded.spec.hub_repo, loaded.spec.kind),
                visible=True,
            ),
            gr.Code(session.client_code(bundle, url), visible=True),
        )

    @warns(outputs=IMPORT_OUTPUTS)
    def on_import(self, path: str | None):
        if not path:
            return [gr.skip()] * len(self.import_outputs())
        restored = session.restore(session.read_bundle(path))
        loaded = self.manager.current()
        wanted = restored.model_id
        if wanted and (loaded is None or loaded.spec.id != wanted):
            gr.Warning(
                f"This session was made with {wanted[:80]}; load it in the Models tab to "
                "continue it."
            )
        for note in restored.notes:
            gr.Warning(note)
        sampling, cut = restored.sampling, restored.tiling
        return [
            restored.turns,
            to_chatbot(restored.turns),
            restored.system_prompt,
            *(sampling.get(name, gr.skip()) for name in SAMPLING),
            *(cut.get(name, gr.skip()) for name in tiling.FIELDS),
            "custom" if cut else gr.skip(),
            restored.use_tools,
        ]

    def import_outputs(self) -> list[Any]:
        detail = self.chat.image_detail
        outputs = [
            self.chat.state,
            self.chat.chatbot,
            self.chat.system_prompt,
            *self.chat.controls,
            *detail.knobs,
            detail.preset,
            self.chat.use_tools,
        ]
        assert len(outputs) == IMPORT_OUTPUTS
        return outputs

    def setup_events(self, inputs: set[Any]) -> Any:
        """Export and show-as-code read `inputs`; returns the import's event (it changes the
        chat)."""
        private = {"api_visibility": "private"}
        self.export_button.click(self.on_export, inputs, self.exported, **private)
        self.code_button.click(
            self.on_show_code, inputs, [self.transformers_box, self.client_box], **private
        )
        return self.imported.upload(self.on_import, self.imported, self.import_outputs(), **private)
