"""The thinking/answer split of a reasoning model's reply (lfmui.reasoning), as it streams."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lfmui.reasoning import Splitter, joined, opens_thinking, split

REPLY = "<think>\nThe user asks 2+3. That is 5.\n</think>\n\nThe answer is 5."


def _streamed(text: str, cuts: list[int], thinking: bool = False):
    splitter = Splitter(thinking)
    pieces, start = [], 0
    for cut in [*sorted(cuts), len(text)]:
        pieces += splitter.feed(text[start:cut])
        start = cut
    pieces += splitter.finish()
    return splitter, pieces


def test_a_reply_that_opens_its_thinking_is_split_at_the_close():
    assert split(REPLY) == ("The user asks 2+3. That is 5.", "The answer is 5.", False)


def test_a_prompt_that_opened_the_block_starts_the_reply_in_its_thinking():
    prompt = "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n<think>\n"
    assert opens_thinking(prompt)
    assert not opens_thinking("<|im_start|>assistant\n")
    assert split("It is 5.</think>The answer is 5.", thinking=True) == (
        "It is 5.",
        "The answer is 5.",
        False,
    )


def test_a_reply_without_thinking_is_all_content_and_a_later_marker_is_text():
    text = "Use <think> tags like this: <think>x</think>."
    assert split(text) == ("", text, False)


def test_a_reply_that_ends_inside_its_thinking_is_cut_and_keeps_what_it_thought():
    reasoning, content, cut = split("<think>Let me count: 1, 2, 3</thi")
    assert cut and content == "" and reasoning == "Let me count: 1, 2, 3</thi"


@pytest.mark.parametrize("at", range(len(REPLY) + 1))
def test_a_marker_split_across_chunks_at_any_point_is_still_found(at):
    splitter, pieces = _streamed(REPLY, [at])
    assert (splitter.reasoning.strip(), splitter.content) == split(REPLY)[:2]
    assert [part for part, _ in itertools.groupby(p for p, _ in pieces)] == ["reasoning", "content"]


def test_a_piece_is_given_out_as_soon_as_it_cannot_be_a_marker():
    splitter = Splitter(thinking=True)
    assert splitter.feed("Count: 1 <") == [("reasoning", "Count: 1 ")]  # "<" may open </think>
    assert splitter.feed("2") == [("reasoning", "<2")]
    assert splitter.feed("</think>Five") == [("content", "Five")]
    assert splitter.in_thinking is False


@given(st.lists(st.integers(min_value=0, max_value=len(REPLY)), max_size=8), st.booleans())
def test_any_chunking_gives_the_whole_reply_split_once(cuts, thinking):
    text = REPLY.removeprefix("<think>") if thinking else REPLY
    splitter, pieces = _streamed(text, cuts, thinking)
    assert "".join(t for p, t in pieces if p == "reasoning") == splitter.reasoning
    assert "".join(t for p, t in pieces if p == "content") == splitter.content == "The answer is 5."


def test_an_answer_goes_back_to_the_template_with_its_thinking_for_it_to_keep_or_drop():
    assert joined("It is 5.", "Five.") == "<think>It is 5.</think>Five."
    assert joined("", "Five.") == "Five."
