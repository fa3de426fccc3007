"""Test-only scripted replies: a logits processor that forces a token sequence per generate() call.

Everything else stays the app's own (prompt, template, engine, parser, execution): only the choice
of the next token is forced, through generate()'s own logits_processor argument.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from transformers import LogitsProcessor, LogitsProcessorList


class Scripted(LogitsProcessor):
    """Forces reply i of `replies` on the i-th generate() call, then end of turn."""

    def __init__(self, tokenizer, replies: list[str], eos: int) -> None:
        self.scripts = [tokenizer.encode(r, add_special_tokens=False) + [eos] for r in replies]
        self.call = -1
        self.start = self.last = None
        self.prompts: list[int] = []
        self.prompt_ids: list[list[int]] = []  # each call's prompt, as generate() got it

    def __call__(self, input_ids, scores):
        length = input_ids.shape[1]
        if self.last is None or length != self.last + 1:  # a new generate() call
            self.call, self.start = self.call + 1, length
            self.prompts.append(length)
            self.prompt_ids.append(input_ids[0].tolist())
        self.last = length
        step = length - self.start
        script = self.scripts[min(self.call, len(self.scripts) - 1)]
        forced = script[min(step, len(script) - 1)]
        out = torch.full_like(scores, -float("inf"))
        out[:, forced] = 0.0
        return out


@contextlib.contextmanager
def scripted_generate(loaded, replies: list[str]):
    """Every generate() of the loaded model follows `replies` in turn (the last one repeats)."""
    processor = Scripted(loaded.tokenizer, replies, eos=7)
    original = loaded.model.generate
    loaded.model.generate = functools.partial(
        original, logits_processor=LogitsProcessorList([processor])
    )
    try:
        yield processor
    finally:
        del loaded.model.generate  # back to the class's method


ANCHOR_TOKENS = 32  # the prompt tail that names where a scripted reply starts (the tiny
# tokenizer is nearly one token per character: 32 reach back into the last message)


def server_script(tokenizer, script: list[tuple[list[dict], str]], eos: int = 7) -> dict:
    """A ``generation_config`` for ``transformers serve`` (sent as a request field) that forces,
    after each conversation of `script`, its reply, through generate()'s own sequence_bias.

    Each conversation is rendered with the checkpoint's chat template; its last ANCHOR_TOKENS
    prompt tokens anchor the reply, and every step of the reply is lifted after the anchor and
    the reply so far: the server's real generate path writes it. Elsewhere end-of-sequence is
    lowered, so an unscripted reply runs to max_tokens (a Stop test does not race random EOS).
    """
    bias: list = [[[eos], -100.0]]
    for conversation, reply in script:
        prompt = tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        anchor = list(prompt[-min(ANCHOR_TOKENS, len(prompt) - 1) :])  # never the BOS: the
        # server's prompt has a system turn (the tools) before the conversation
        forced = tokenizer.encode(reply, add_special_tokens=False) + [eos]
        bias += [[anchor + forced[: k + 1], 1000.0] for k in range(len(forced))]
    return {"do_sample": False, "eos_token_id": eos, "sequence_bias": bias}
