"""The generation settings, defined once: names, types, ranges, defaults and labels.

``Settings`` is a pydantic model; the engine takes it, the chat's sliders, the session file's
keys, ``/generate``'s documented keys and the validation of every request are read from its
fields (``FIELDS``, ``slider``). ``from_dict`` turns untrusted JSON-ish values into Settings or
an InputError that names the setting and the range to use.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from lfmui.errors import InputError


class Settings(BaseModel):
    """Validated generation settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_new_tokens: int = Field(256, ge=1, le=4096, title="Max new tokens")
    temperature: float = Field(0.1, ge=0.0, le=2.0, title="Temperature (0 = greedy)")
    min_p: float = Field(0.15, ge=0.0, le=1.0, title="min_p")
    top_p: float = Field(1.0, ge=0.01, le=1.0, title="top_p")
    # transformers' own default is 50; LFM2.5's cards give theirs (catalog sampling)
    top_k: int = Field(50, ge=0, le=1000, title="top_k (0 = off)")
    repetition_penalty: float = Field(1.05, ge=1.0, le=2.0, title="Repetition penalty")
    seed: int | None = Field(None, ge=0, le=2**32 - 1, title="Seed (empty = random)")
    # a reasoning model's thinking, in tokens: past it, </think> is written and the answer
    # follows (lfmui.backends; an in-process model only)
    thinking_budget: int = Field(0, ge=0, le=32768, title="Thinking budget (tokens; 0 = none)")
    # off: the prompt asks for no thinking, where the model's template has that switch
    # (``enable_thinking``, as vLLM's chat_template_kwargs names it; lfmui.reasoning)
    think: bool = Field(True, title="Think before answering (where the template can switch it)")
    time_limit: float = Field(120.0, ge=1.0, le=600.0, title="Time limit (s)")

    @field_validator("*", mode="before")
    @classmethod
    def _strict(cls, value: Any, info: ValidationInfo) -> Any:
        if cls.model_fields[info.field_name].annotation is bool:  # the switch: "false" and 0
            if not isinstance(value, bool):  # are not switches here
                raise ValueError("not true or false")
            return value
        # booleans, strings ("1") and infinities are not numbers here (a lax model took "1")
        if isinstance(value, bool | str) or (isinstance(value, float) and not math.isfinite(value)):
            raise ValueError("not a finite number")
        return value

    @classmethod
    def from_dict(cls, values: dict[str, Any], defaults: dict[str, Any] | None = None) -> Settings:
        """Settings from untrusted values over `defaults` (a model's recommended sampling);
        unknown keys and values out of range are InputErrors saying what to send."""
        unknown = sorted(set(values) - set(FIELDS))
        if unknown:
            raise InputError(
                f"Unknown setting(s): {', '.join(map(str, unknown))[:100]}. "
                f"Known: {', '.join(FIELDS)}."
            )
        known = {k: v for k, v in {**(defaults or {}), **values}.items() if k in FIELDS}
        try:
            return cls(**known)
        except ValidationError as exc:
            raise InputError(_sentence(exc.errors()[0])) from None

    def generate_kwargs(self) -> dict[str, Any]:  # (thinking_budget: backends.InProcess)
        sampling = self.temperature > 0
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": sampling,
            "repetition_penalty": self.repetition_penalty,
        }
        if sampling:
            kwargs.update(
                temperature=self.temperature,
                min_p=self.min_p or None,
                top_p=self.top_p,
                top_k=self.top_k,  # 0: no top-k cut (transformers adds none)
            )
        else:  # greedy: unset the checkpoint's sampling defaults so transformers doesn't warn
            kwargs.update(temperature=None, top_p=None, top_k=None, min_p=None)
        return kwargs


FIELDS = tuple(Settings.model_fields)
SAMPLING = FIELDS[:-1]  # what a person sets in the chat (time_limit is the server's)


def bounds(name: str) -> tuple[float, float]:
    """A setting's (low, high) from its definition."""
    rules = Settings.model_fields[name].metadata
    low = next(rule.ge for rule in rules if hasattr(rule, "ge"))
    return low, next(rule.le for rule in rules if hasattr(rule, "le"))


def slider(name: str) -> dict[str, Any]:
    """A control's spec for the UI: label, range, default, step, whole numbers or not (a
    switch: label and default)."""
    field = Settings.model_fields[name]
    if field.annotation is bool:
        return {"label": field.title, "value": field.default, "switch": True}
    low, high = bounds(name)
    whole = field.annotation in (int, int | None)
    step = 1 if whole else (0.05 if high - low > 1 else 0.01)
    return {
        "label": field.title,
        "minimum": low,
        "maximum": high,
        "value": field.default,
        "step": step,
        "whole": whole,
    }


def _sentence(error: dict[str, Any]) -> str:
    name = str(error["loc"][0]) if error.get("loc") else "a setting"
    if name not in FIELDS:
        return f"Invalid setting: {error.get('msg', 'unknown problem')}."
    control = slider(name)
    if control.get("switch"):
        return f"{name} takes true or false."
    low, high = (_number(control[k]) for k in ("minimum", "maximum"))
    if error["type"] in ("greater_than_equal", "less_than_equal"):
        return f"{name} is {error['input']}; use a value between {low} and {high}."
    kind = "a whole number" if control["whole"] else "a number"
    empty = " or null" if name == "seed" else ""
    return f"Settings must be numbers: {name} takes {kind} from {low} to {high}{empty}."


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"
