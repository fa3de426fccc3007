"""A reply's state in a session (lfmui.ui.running): one state machine for every way a reply
starts; what the message box shows follows from it."""

from __future__ import annotations

import pytest

from lfmui.errors import InputError
from lfmui.ui import chat_reply, running


def test_a_reply_moves_idle_streaming_stopping_idle_and_a_second_start_is_refused():
    replies = running.Running("busy: press Stop first")
    assert replies.state("s") == running.IDLE
    assert replies.stop("s") == running.IDLE  # Stop with nothing running changes nothing
    with replies.one("s") as flag:
        assert replies.state("s") == running.STREAMING
        with pytest.raises(InputError, match="press Stop"), replies.one("s"):
            pass
        assert replies.state("s") == running.STREAMING  # the refusal changed nothing
        assert replies.stop("s") == running.STOPPING and flag.is_set()
        assert replies.state("s") == running.STOPPING
        with pytest.raises(InputError), replies.one("s"):
            pass
        assert replies.state("other") == running.IDLE  # sessions are apart
    assert replies.state("s") == running.IDLE


def test_every_state_has_a_box_and_only_idle_offers_send():
    states = {state for state, _ in running.TRANSITIONS} | set(running.TRANSITIONS.values())
    assert set(chat_reply.BOX_FOR) == states
    for state in states:
        box = chat_reply.BOX_FOR[state]
        assert box["submit_btn"] == (state == running.IDLE)
        assert box["stop_btn"] == (state != running.IDLE)


def test_the_model_s_box_update_leaves_the_reply_s_button_and_the_box_alone():
    """The page load's and a model switch's update of the box (attachments, placeholder) can
    land seconds late, in the middle of a reply: it sets neither the send/Stop button nor the
    box's value, so it cannot take Stop away from a streaming reply or put a sent message back
    (it did while it carried the button state read before the reply began)."""
    from lfmui.manager import ModelManager

    replies_running = chat_reply.REPLIES.one("late-page")
    with replies_running:
        update = chat_reply.message_box(ModelManager())
        assert chat_reply.REPLIES.state("late-page") == running.STREAMING
    assert set(update.constructor_args) == {"sources", "file_types", "placeholder"}
