"""The controls the tabs share, generated from their one definition: the sampling settings
(``lfmui.settings``) and the image tiling knobs (``lfmui.tiling.Tiling``)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import gradio as gr

from lfmui import tiling
from lfmui.settings import slider


def upload_folder() -> Path:
    """Where gradio writes uploads (its GRADIO_TEMP_DIR)."""
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder())


MODEL_DEFAULT = "model default"
CUSTOM = "custom"
PRESET_CHOICES = [MODEL_DEFAULT, *tiling.PRESETS, CUSTOM]


def sampling_control(name: str) -> gr.Slider | gr.Number | gr.Checkbox:
    """The control for one sampling setting."""
    spec = slider(name)
    if spec.get("switch"):  # the thinking switch
        return gr.Checkbox(spec["value"], label=spec["label"])
    if spec["value"] is None:  # the seed: empty means random
        return gr.Number(value=None, precision=0, label=spec["label"])
    return gr.Slider(
        spec["minimum"],
        spec["maximum"],
        value=spec["value"],
        step=spec["step"],
        label=spec["label"],
    )


def _tiling_control(name: str) -> gr.Checkbox | gr.Slider:
    knob, default = tiling.KNOBS[name], getattr(tiling.Tiling(), name)
    if name not in tiling.LIMITS:
        return gr.Checkbox(default, label=knob["label"])
    low, high = knob["range"]
    return gr.Slider(low, high, value=default, step=knob["step"], label=knob["label"])


class TilingControls:
    """A preset picker plus the six knobs; `values(data)` reads them from a handler's inputs."""

    def __init__(self, note: str) -> None:
        self.preset = gr.Radio(PRESET_CHOICES, value=MODEL_DEFAULT, label="Preset", info=note)
        made = {}
        for pair in (tiling.FIELDS[0::3], tiling.FIELDS[1:3], tiling.FIELDS[4:6]):
            with gr.Row():  # the two flags, the tile range, the token range
                made.update({name: _tiling_control(name) for name in pair})
        self.knobs = [made[name] for name in tiling.FIELDS]
        self.preset.input(
            self._apply_preset, [self.preset, *self.knobs], self.knobs, api_visibility="private"
        )
        for knob in self.knobs:
            knob.input(lambda: CUSTOM, None, self.preset, api_visibility="private")
        for low, high in tiling.RANGES:  # a minimum never passes its maximum, nor the reverse
            lower, upper = made[low], made[high]
            # .change: fires for a drag, a typed number and a preset alike; a pair settles in
            # one step (the second rule then changes nothing, so nothing fires again)
            lower.change(max, [lower, upper], upper, api_visibility="private", queue=False)
            upper.change(min, [upper, lower], lower, api_visibility="private", queue=False)

    @property
    def all(self) -> list[Any]:
        return [self.preset, *self.knobs]

    def values(self, data: dict) -> dict[str, Any]:
        values = dict(zip(tiling.FIELDS, (data[k] for k in self.knobs), strict=True))
        for name in tiling.LIMITS:
            if isinstance(values[name], float) and values[name].is_integer():
                values[name] = int(values[name])
        for low, high in tiling.RANGES:  # mid-correction (see __init__): never crossed
            values[high] = max(values[low], values[high])
        return values

    def _apply_preset(self, name: str, *current: Any) -> list[Any]:
        if name in tiling.PRESETS:
            thumbnail = current[tiling.FIELDS.index("use_thumbnail")]
            return list(asdict(tiling.preset(name, use_thumbnail=thumbnail)).values())
        return [gr.skip()] * len(self.knobs)
