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

    def __call__(self, input_ids, scores):
        length = input_ids.shape[1]
        if self.last is None or length != self.last + 1:  # a new generate() call
            self.call, self.start = self.call + 1, length
            self.prompts.append(length)
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
