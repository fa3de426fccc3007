"""The /v1 request as a pydantic model (lfmui.serve.protocol.ChatCompletionRequest), alone: the
fields lfmui accepts, the first problem named in OpenAI's error shape, the sampling fields
mapped to lfmui's settings. tests/test_routes.py sends the same through the real server."""

from __future__ import annotations

import pytest

from lfmui.serve.protocol import MAX_MESSAGES, ApiError, ChatCompletionRequest, refused

HELLO = [{"role": "user", "content": "Hello"}]


def read(**body):
    return ChatCompletionRequest.read({"messages": HELLO, **body})


def test_a_plain_request_reads_with_openais_defaults():
    request = read(model="lfmui", max_tokens=32, temperature=0.2, seed=7)
    assert request.n == 1 and request.stream is False and request.stop == []
    assert request.tool_choice == "auto" and request.tools is None
    assert request.settings() == {"max_new_tokens": 32, "temperature": 0.2, "seed": 7}
    assert read(max_completion_tokens=9).settings() == {"max_new_tokens": 9}
    assert read(stop="###").stop == ["###"]


@pytest.mark.parametrize(
    ("body", "param", "said"),
    [
        ({"logprobs": True}, "logprobs", "lfmui does not support logprobs; send only:"),
        ({"n": 2}, "n", "n must be 1"),
        ({"stop": ["a"] * 5}, "stop", "up to 4 strings"),
        ({"stop": [""]}, "stop", "of 1 to 256 characters"),
        ({"messages": []}, "messages", "messages must be a non-empty list"),
        ({"messages": HELLO * (MAX_MESSAGES + 1)}, "messages", f"send at most {MAX_MESSAGES}"),
        ({"tool_choice": "always"}, "tool_choice", 'tool_choice must be "auto"'),
        ({"stream": "maybe"}, "stream", "stream: Input should be a valid boolean"),
        ({"stream_options": "usage"}, "stream_options", "stream_options: Input should be"),
    ],
)
def test_each_problem_is_named_with_what_to_send(body, param, said):
    with pytest.raises(ApiError, match=said.replace("(", r"\(")) as refusal:
        ChatCompletionRequest.read({"messages": HELLO, **body})
    assert refusal.value.status == 400 and refusal.value.param == param
    assert refusal.value.body()["error"]["type"] == "invalid_request_error"


def test_unknown_fields_are_named_before_any_other_check():
    with pytest.raises(ApiError, match="does not support functions, logprobs") as refusal:
        ChatCompletionRequest.read({"messages": [], "n": 3, "logprobs": 1, "functions": []})
    assert refusal.value.param == "functions"


def test_a_body_that_is_not_an_object_is_refused():
    for body in (None, [], "hello", 3):
        with pytest.raises(ApiError, match="Send a JSON object"):
            ChatCompletionRequest.read(body)


def test_our_errors_become_openai_shaped_ones():
    from lfmui.errors import InputError, NoModelLoaded, TooManyRequests

    assert refused(NoModelLoaded("none")).status == 503
    assert refused(TooManyRequests("wait")).status == 429
    assert refused(InputError("too long")).status == 400
    hidden = refused(RuntimeError("/secret/path"))
    assert hidden.status == 500 and "/secret" not in str(hidden)


def test_the_thinking_switch_comes_as_vllms_chat_template_kwargs():
    assert read(chat_template_kwargs={"enable_thinking": False}).settings() == {"think": False}
    assert read(chat_template_kwargs={}).settings() == {}
    with pytest.raises(ApiError, match="enable_thinking") as refused_kwargs:
        read(chat_template_kwargs={"keep_past_thinking": True})
    assert refused_kwargs.value.param == "chat_template_kwargs"
    with pytest.raises(ApiError, match="must be true or false") as not_a_switch:
        read(chat_template_kwargs={"enable_thinking": "no"})
    assert not_a_switch.value.param == "chat_template_kwargs.enable_thinking"
