"""A reasoning model's reply, split into its thinking and its answer.

LFM2.5's thinking models (LFM2.5-1.2B-Thinking, LFM2.5-8B-A1B) write ``<think>…</think>`` before
the answer; their generation prompt may already have opened the block. ``Splitter`` follows a
streamed reply chunk by chunk and says which part each piece of text belongs to, holding back
only what could still become a marker, as vLLM's ``--reasoning-parser qwen3`` and llama.cpp's
LFM2 parser do on the server side. A reply that ends inside its thinking is ``cut``: its answer
is empty, and the caller says so.

The parts are named as the OpenAI-compatible servers name them: ``reasoning`` (their
``reasoning_content``) and ``content``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

OPEN, CLOSE = "<think>", "</think>"
Part = Literal["reasoning", "content"]


# The template variable that turns thinking off (Qwen3's and SmolLM3's name; vLLM and llama.cpp
# pass it as chat_template_kwargs). LFM2.5's published templates have none: their thinking
# models always think, and only a thinking budget bounds it.
SWITCH = "enable_thinking"


def has_switch(template: str | None) -> bool:
    """Whether a chat template reads the thinking switch."""
    return bool(template) and re.search(rf"\b{SWITCH}\b", template) is not None


def opens_thinking(prompt: str) -> bool:
    """Whether a rendered prompt ends inside a ``<think>`` block its generation prompt opened
    (the reply then starts in its thinking)."""
    tail = prompt.rstrip()
    return tail.endswith(OPEN)


def partial(text: str, marker: str) -> int:
    """How many of `text`'s last characters could be the start of `marker`."""
    return max((n for n in range(1, len(marker)) if text.endswith(marker[:n])), default=0)


@dataclass
class Splitter:
    """Feed a reply's text as it streams; each call returns the (part, text) pieces that are
    now certain. `thinking`: the prompt opened the block (``opens_thinking``). Without it, a
    reply whose first non-blank text is ``<think>`` opens one itself; any other reply is all
    content, and a later ``<think>`` in it is text."""

    thinking: bool = False
    _state: str = field(init=False, default="start")  # start -> reasoning -> content
    _held: str = field(init=False, default="")
    _closed: bool = field(init=False, default=False)  # the answer follows a </think>
    reasoning: str = field(init=False, default="")
    content: str = field(init=False, default="")

    def __post_init__(self) -> None:
        if self.thinking:
            self._state = "reasoning"

    @property
    def in_thinking(self) -> bool:
        return self._state == "reasoning"

    @property
    def cut(self) -> bool:
        """The reply has ended (``finish`` was called) inside its thinking."""
        return self._state == "cut"

    def feed(self, text: str) -> list[tuple[Part, str]]:
        self._held += text
        pieces: list[tuple[Part, str]] = []
        while True:
            if self._state == "start":
                stripped = self._held.lstrip()
                if stripped.startswith(OPEN):
                    self._held, self._state = stripped[len(OPEN) :], "reasoning"
                    continue
                if stripped and OPEN.startswith(stripped):  # a part of the marker so far
                    return pieces
                if not stripped:  # blank so far: it streams, and a <think> may still come
                    self._emit(pieces, "content", self._held)
                    self._held = ""
                    return pieces
                self._state = "content"
                continue
            if self._state == "reasoning":
                end = self._held.find(CLOSE)
                if end < 0:  # held back: a marker's start, and line breaks it may follow
                    ready = len(self._held) - partial(self._held, CLOSE)
                    ready = len(self._held[:ready].rstrip("\n"))
                    self._emit(pieces, "reasoning", self._held[:ready])
                    self._held = self._held[ready:]
                    return pieces
                self._emit(pieces, "reasoning", self._held[:end].rstrip("\n"))
                self._held, self._state = self._held[end + len(CLOSE) :], "content"
                self._closed = True
                continue
            self._emit(pieces, "content", self._held)
            self._held = ""
            return pieces

    def finish(self) -> list[tuple[Part, str]]:
        """The reply has ended: what was held back, and whether it ended in its thinking."""
        pieces: list[tuple[Part, str]] = []
        held, self._held = self._held, ""
        if self._state == "reasoning":
            self._emit(pieces, "reasoning", held)
            self._state = "cut"
        elif self._state != "cut":
            self._emit(pieces, "content", held)
        return pieces

    def _emit(self, pieces: list[tuple[Part, str]], part: Part, text: str) -> None:
        # the line breaks around the markers belong to neither part
        first = not (self.reasoning if part == "reasoning" else self.content).strip()
        if first and (part == "reasoning" or self._closed):
            text = text.lstrip("\n")
        if not text:
            return
        if part == "reasoning":
            self.reasoning += text
        else:
            self.content += text
        if pieces and pieces[-1][0] == part:
            pieces[-1] = (part, pieces[-1][1] + text)
        else:
            pieces.append((part, text))


def split(text: str, thinking: bool = False) -> tuple[str, str, bool]:
    """A whole reply's (reasoning, content, cut)."""
    splitter = Splitter(thinking)
    splitter.feed(text)
    splitter.finish()
    return splitter.reasoning.strip(), splitter.content, splitter.cut


def joined(reasoning: str, content: str) -> str:
    """An assistant turn as a thinking model's template reads it back: its template decides
    what of the thinking the next prompt keeps (LFM2.5's drops past thinking by default)."""
    return f"{OPEN}{reasoning}{CLOSE}{content}" if reasoning else content
