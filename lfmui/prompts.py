"""Conversation -> model inputs, through the model's own chat template and processor.

A conversation is a list of ``{"role": ..., "content": str | list[part]}`` messages where a part is
``{"type": "text", "text": ...}`` or ``{"type": "image", "image": PIL.Image}``. Text typed by a
user, returned by a tool or written in a tool definition is escaped so that it can never forge a
role, a tool call or an image slot: a literal ``<|im_end|>`` or ``<image>`` stays plain text.
"""

from __future__ import annotations

import re
from typing import Any

from lfmui.errors import InputError
from lfmui.reasoning import SWITCH, has_switch, opens_thinking
from lfmui.tiling import IMAGE_TOKEN_ID, Tiling, fit

# Any LFM2 special-token literal: <|...|> markers, the bare <image> slot, and a thinking
# model's <think> / </think> (typed by a user, they must not open or close its thinking)
_SPECIAL_LITERAL = re.compile(r"<(?=\|[^<>|\s]{1,48}\|>|image>|/?think>)")
WORD_JOINER = "\u2060"  # invisible; splits the literal so the tokenizer sees plain text
# An image slot's literals: the processor alone places them, from image parts, so no text (the
# model's own reply, fed back in a tool turn's next round, included) may carry one
_IMAGE_SLOT = re.compile(r"<(?=image>|\|image_(?:start|end|split)\|>|\|img_\w{1,16}\|>)")


TOOL_CALL_MARKERS = ("<|tool_call_start|>", "<|tool_call_end|>")


def escape_specials(text: str, keep: tuple[str, ...] = ()) -> str:
    """Make special-token literals in untrusted text tokenize as ordinary characters, but for
    the literals in `keep` (a saved tool turn keeps its ``TOOL_CALL_MARKERS``)."""
    if keep:
        pieces = re.split("(" + "|".join(map(re.escape, keep)) + ")", text)
        return "".join(p if p in keep else escape_specials(p) for p in pieces)
    return _SPECIAL_LITERAL.sub("<" + WORD_JOINER, text)


def escape_image_slots(text: str) -> str:
    """Trusted text (system, assistant) with image-slot literals made plain text: a model's raw
    reply may hold any token (random weights do), and a slot without its image stops the
    processor ("Found 1 <image> tokens in the text but no images were passed")."""
    return _IMAGE_SLOT.sub("<" + WORD_JOINER, text)


def escape_tree(value: Any) -> Any:
    """A JSON value (tool definitions) with every string in it, keys included, escaped."""
    if isinstance(value, str):
        return escape_specials(value)
    if isinstance(value, dict):
        return {escape_specials(str(k)): escape_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [escape_tree(v) for v in value]
    return value


def _template_messages(conversation: list[dict[str, Any]]) -> tuple[list[dict], list[Any]]:
    """Escape untrusted text, pull images out in order, keep parts the template understands."""
    messages, images = [], []
    for message in conversation:
        role, content = message["role"], message["content"]
        trusted = role in ("system", "assistant")
        escape = escape_image_slots if trusted else escape_specials
        if isinstance(content, str):
            messages.append({"role": role, "content": escape(content)})
            continue
        parts = []
        for part in content:
            if part["type"] == "image":
                images.append(part["image"])
                parts.append({"type": "image"})
            else:
                parts.append({"type": "text", "text": escape(part["text"])})
        messages.append({"role": role, "content": parts})
    return messages, images


def build_inputs(
    loaded: Any,
    conversation: list[dict[str, Any]],
    tiling: Tiling | None = None,
    tools: list[dict] | None = None,
    think: bool = True,
) -> Any:
    """Tokenized inputs (and pixel values) for `conversation`, on the model's device.

    Images are cut per `tiling` (the model's own processor defaults when None); each costs at
    most ``tiling.budget`` image tokens. `think` False turns a reasoning model's thinking off
    through its template's switch; a template without one that opens a <think> block is an
    InputError (the prompt would think anyway).
    """
    messages, images = _template_messages(conversation)
    processor = loaded.processor
    if images and loaded.spec.kind != "vl":
        raise InputError(
            f"{loaded.spec.id} reads text only; remove the images or load a vision-language model."
        )
    switch = {} if think or not has_switch(processor.chat_template) else {SWITCH: False}
    prompt = processor.apply_chat_template(  # tool definitions are untrusted text too
        messages,
        tools=escape_tree(tools) if tools else None,
        add_generation_prompt=True,
        tokenize=False,
        **switch,
    )
    if not think and not switch and opens_thinking(prompt):
        raise InputError(
            f"{loaded.spec.id}'s template has no switch to turn thinking off; turn 'Think' "
            "back on, and set a thinking budget to keep its thinking short."
        )
    if loaded.spec.kind == "vl":
        tiling = tiling or Tiling.from_processor(processor)
        images = [fit(image, tiling) for image in images]
        inputs = processor(
            images=[images] if images else None,
            text=[prompt],
            images_kwargs=tiling.images_kwargs(),
            return_tensors="pt",
        )
        _check_budget(inputs, len(images), tiling)
    else:
        inputs = processor(prompt, add_special_tokens=False, return_tensors="pt")
    inputs = inputs.to(loaded.model.device)
    if "pixel_values" in inputs:  # the processor emits float32; the vision tower may be bf16
        inputs["pixel_values"] = inputs["pixel_values"].to(loaded.model.dtype)
    return inputs


def _check_budget(inputs: Any, n_images: int, tiling: Tiling) -> None:
    used = int((inputs["input_ids"] == IMAGE_TOKEN_ID).sum())
    if used > n_images * tiling.budget:  # fit() keeps each image inside; never send more
        raise InputError(
            f"The images would cost {used} image tokens, above the budget of {tiling.budget} "
            "per image; lower max_tiles or max_image_tokens."
        )
