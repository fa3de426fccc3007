"""lfmui's own /v1 through the official openai SDK, against the app's real server.

Model outputs that a test needs (a tool call, a long reply) are forced through the real generate
path by tests/helpers/scripted.py; everything else is the app's own. The routes are
lfmui/serve/routes.py over serve.protocol and serve.completions (tests/test_protocol.py checks
the request model alone).
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time

import httpx
import pytest
from helpers.scripted import scripted_generate

openai = pytest.importorskip("openai")  # tests/requirements.txt installs it

CALL = '<|tool_call_start|>[get_weather(city="Paris")]<|tool_call_end|>'
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def served(tiny_paths):
    from conftest import serving

    from lfmui.manager import ModelManager

    manager = ModelManager()
    manager.load("lfm2-vl-tiny", "fp32")
    with serving(manager) as url:
        yield f"{url}/v1", manager


@pytest.fixture
def sdk(served):
    return openai.OpenAI(base_url=served[0], api_key="unused", max_retries=0, timeout=120)


def _data_url(size=(300, 200), colour="red") -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_models_lists_the_resident_model(sdk):
    """The default first, then each resident model by its id@level too."""
    assert [m.id for m in sdk.models.list().data] == ["lfm2-vl-tiny", "lfm2-vl-tiny@fp32"]


def test_a_streamed_chat(sdk):
    stream = sdk.chat.completions.create(
        model="lfm2-vl-tiny",
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=8,
        temperature=1.0,
        seed=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert (
        text
        and finishes[-1] in ("stop", "length")
        and finishes[:-1] == [None] * (len(finishes) - 1)
    )
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and 1 <= usage.completion_tokens <= 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_an_image_as_a_data_url_costs_its_image_tokens(sdk):
    def ask(content):
        reply = sdk.chat.completions.create(
            model="lfm2-vl-tiny", messages=[{"role": "user", "content": content}], max_tokens=2
        )
        return reply.usage.prompt_tokens

    text_only = ask([{"type": "text", "text": "What is it?"}])
    with_image = ask(
        [
            {"type": "image_url", "image_url": {"url": _data_url()}},
            {"type": "text", "text": "What is it?"},
        ]
    )
    assert with_image > text_only + 16  # the picture's tokens reached the model


def test_tools_come_back_as_tool_calls_and_the_result_is_answered(sdk, served):
    manager = served[1]
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    with scripted_generate(manager.current(), [CALL, "It is 18 C in Paris."]) as script:
        first = sdk.chat.completions.create(
            model="lfm2-vl-tiny", messages=messages, tools=[WEATHER], max_tokens=40
        )
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls" and not choice.message.content
        (call,) = choice.message.tool_calls
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "Paris"}
        messages += [
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 18}'},
        ]
        second = sdk.chat.completions.create(
            model="lfm2-vl-tiny", messages=messages, tools=[WEATHER], max_tokens=40
        )
    assert second.choices[0].message.content == "It is 18 C in Paris."
    assert second.choices[0].finish_reason == "stop" and len(script.prompts) == 2
    assert script.prompts[1] > script.prompts[0]  # the call and its result went back in


def test_odd_tool_names_are_kept_and_an_uncallable_tool_is_left_out_not_the_request(sdk, served):
    """Names with dots and hyphens, as OpenAI clients write them, are called back under their
    own names; a tool that cannot be called (a space in its name) is left out, and the
    response's header says so, instead of the whole tool list being refused."""
    manager = served[1]
    hyphen = {**WEATHER, "function": {**WEATHER["function"], "name": "weather-now"}}
    dotted = {**WEATHER, "function": {**WEATHER["function"], "name": "weather.tomorrow"}}
    broken = {**WEATHER, "function": {**WEATHER["function"], "name": "get weather"}}
    block = '<|tool_call_start|>[weather-now(city="Paris"), weather.tomorrow(city="Oslo")]'
    with scripted_generate(manager.current(), [block + "<|tool_call_end|>"]):
        raw = sdk.chat.completions.with_raw_response.create(
            model="lfm2-vl-tiny",
            messages=[{"role": "user", "content": "Weather?"}],
            tools=[hyphen, broken, dotted],
            max_tokens=60,
        )
    calls = raw.parse().choices[0].message.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("weather-now", {"city": "Paris"}),
        ("weather.tomorrow", {"city": "Oslo"}),
    ]
    assert "'get weather' cannot be called" in raw.headers["x-lfmui-skipped-tools"]
    with pytest.raises(openai.BadRequestError, match="cannot be called"):
        sdk.chat.completions.create(
            model="lfm2-vl-tiny",
            messages=[{"role": "user", "content": "Weather?"}],
            tools=[broken],
            max_tokens=4,
        )


def test_a_client_that_goes_away_frees_the_generator(sdk, served):
    manager = served[1]
    loaded = manager.current()
    with scripted_generate(loaded, ["word " * 3000]):
        stream = sdk.chat.completions.create(
            model="lfm2-vl-tiny",
            messages=[{"role": "user", "content": "Talk"}],
            max_tokens=4000,
            stream=True,
        )
        for _, _chunk in zip(range(3), stream, strict=False):
            pass
        assert loaded.leases == 1
        stream.close()
        deadline = time.monotonic() + 20
        while loaded.leases and time.monotonic() < deadline:
            time.sleep(0.05)
    assert loaded.leases == 0  # the reply stopped and let go of the model
    again = sdk.chat.completions.create(
        model="lfm2-vl-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert again.choices[0].finish_reason in ("stop", "length")


def test_a_stop_string_ends_the_reply_before_it(sdk, served):
    with scripted_generate(served[1].current(), ["one two STOP three four"]):
        reply = sdk.chat.completions.create(
            model="lfm2-vl-tiny",
            messages=[{"role": "user", "content": "Count"}],
            max_tokens=40,
            stop=["STOP"],
        )
        streamed = sdk.chat.completions.create(
            model="lfm2-vl-tiny",
            messages=[{"role": "user", "content": "Count"}],
            max_tokens=40,
            stop="STOP",
            stream=True,
        )
        text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert reply.choices[0].message.content == "one two " == text
    assert reply.choices[0].finish_reason == "stop"


def test_ten_sdk_clients_at_once(sdk):
    before = threading.active_count()
    results, errors = [], []

    def one(number: int) -> None:
        try:
            reply = sdk.chat.completions.create(
                model="lfm2-vl-tiny",
                messages=[{"role": "user", "content": f"Client {number}"}],
                max_tokens=4,
            )
            results.append(reply.choices[0].finish_reason)
        except Exception as exc:  # noqa: BLE001 - the test reports any failure
            errors.append(repr(exc))

    workers = [threading.Thread(target=one, args=(n,)) for n in range(10)]
    for worker in workers:
        worker.start()
    peak = threading.active_count()
    for worker in workers:
        worker.join(120)
    assert errors == [] and len(results) == 10
    assert peak - before <= 10 + 40  # the clients, and the server's bounded thread pool


@pytest.mark.parametrize(
    ("extra", "status", "message"),
    [
        ({"n": 2}, 400, "n must be 1"),
        ({"logprobs": True}, 400, "does not support logprobs"),
        ({"response_format": {"type": "json_object"}}, 400, "does not support response_format"),
        ({"model": "gpt-4o"}, 404, "is not loaded here"),
        ({"stop": ["a"] * 5}, 400, "stop must be"),
        ({"messages": []}, 400, "non-empty list"),
        ({"max_tokens": 0}, 400, "between 1 and 4096"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}
                        ],
                    }
                ]
            },
            400,
            "Remote image URLs are refused",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}
                        ],
                    }
                ]
            },
            400,
            "damaged",
        ),
    ],
)
def test_bad_requests_are_openai_shaped_errors_that_say_what_to_send(
    served, extra, status, message
):
    body = {"model": "lfm2-vl-tiny", "messages": [{"role": "user", "content": "hi"}], **extra}
    response = httpx.post(f"{served[0]}/chat/completions", json=body, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error"


def test_a_body_over_the_cap_is_refused_before_it_is_read(served):
    from lfmui.serve.guard import V1_MAX_BODY_BYTES

    response = httpx.post(
        f"{served[0]}/chat/completions",
        content=b"x" * (V1_MAX_BODY_BYTES + 1),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert (
        response.status_code == 413
        and "fewer or smaller images" in response.json()["error"]["message"]
    )


def _post(served, body: dict, headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{served[0]}/chat/completions", json=body, headers=headers, timeout=60)


def _image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def test_resources_images_are_counted_before_any_is_decoded(served):
    """Issue 26: five 40-megapixel PNGs were decoded (1 GiB) before the "at most 4" refusal.
    Undecodable images prove the count comes first: decoding would say "damaged"."""
    broken = "data:image/png;base64,@@"
    one = [{"role": "user", "content": [_image_part(broken) for _ in range(5)]}]
    response = _post(served, {"model": "lfmui", "messages": one})
    assert response.status_code == 400 and "holds 5 images" in response.text
    spread = [
        {"role": "user", "content": [_image_part(broken) for _ in range(4)]} for _ in range(4)
    ]
    response = _post(served, {"model": "lfmui", "messages": spread})
    assert response.status_code == 400 and "hold 16 images; send at most 12" in response.text


def test_resources_messages_are_capped_before_they_are_read(served):
    messages = [{"role": "user", "content": "hi"}] * 100_000
    response = _post(served, {"model": "lfmui", "messages": messages})
    assert response.status_code == 400
    assert "100,000 messages were sent; send at most 512" in response.json()["error"]["message"]


def test_resources_a_long_stop_string_is_refused(served):
    body = {"model": "lfmui", "messages": [{"role": "user", "content": "hi"}]}
    response = _post(served, {**body, "stop": ["x" * 250_000]})
    assert response.status_code == 400 and "1 to 256 characters" in response.text
    streamed = _post(served, {**body, "stop": "x" * 257, "stream": True})
    assert streamed.status_code == 400  # a refusal is a 4xx before the first byte, streamed too


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"tool_choice": 5}, "tool_choice must be"),
        ({"tool_choice": {"function": "get_weather"}}, "tool_choice must be"),
        ({"tool_choice": ["auto"]}, "tool_choice must be"),
        (
            {
                "messages": [
                    {"role": "assistant", "tool_calls": 7},
                    {"role": "user", "content": "?"},
                ]
            },
            "tool_calls must be a list",
        ),
        (
            {
                "messages": [
                    {"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]},
                    {"role": "user", "content": "?"},
                ]
            },
            "needs a function name",
        ),
        (
            {
                "messages": [
                    {"role": "assistant", "tool_calls": ["x"]},
                    {"role": "user", "content": "?"},
                ]
            },
            "tool_calls must be a list",
        ),
    ],
)
def test_malformed_tool_shapes_are_400s_that_say_the_shape(served, extra, says):
    body = {"model": "lfmui", "messages": [{"role": "user", "content": "hi"}], **extra}
    response = _post(served, body)
    assert response.status_code == 400, response.text
    assert says in response.json()["error"]["message"]


@pytest.fixture(scope="module")
def keyed(served):
    """A second server over the same manager, with /v1's key set."""
    from lfmui.access import Access
    from lfmui.ui import build_app, launch_settings

    manager = served[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = build_app(manager)
    access = Access.configured("127.0.0.1", api_key="sk-right-key")
    settings = launch_settings(port=port, manager=manager, access=access)
    demo.launch(prevent_thread_lock=True, quiet=True, **settings)
    yield f"http://127.0.0.1:{port}/v1"
    demo.close()


def test_api_key_no_key_or_a_wrong_one_is_401_in_openais_shape(keyed):
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "sk-right-key"}):
        for method, path in (("GET", "/models"), ("POST", "/chat/completions")):
            response = httpx.request(
                method, f"{keyed}{path}", headers=headers, json={"model": "lfmui"}, timeout=30
            )
            assert response.status_code == 401, (headers, path)
            error = response.json()["error"]
            assert error["code"] == "invalid_api_key" and "Bearer" in error["message"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=keyed, api_key="sk-wrong", max_retries=0).models.list()


def test_api_key_the_right_key_answers(keyed):
    client = openai.OpenAI(base_url=keyed, api_key="sk-right-key", max_retries=0, timeout=120)
    assert [m.id for m in client.models.list().data] == ["lfm2-vl-tiny", "lfm2-vl-tiny@fp32"]
    reply = client.chat.completions.create(
        model="lfmui", messages=[{"role": "user", "content": "Hello"}], max_tokens=4
    )
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_item43_beyond_this_machine_v1_is_closed_until_a_key_is_set(monkeypatch):
    from lfmui.access import Access

    monkeypatch.delenv("LFMUI_API_KEY", raising=False)
    monkeypatch.setenv("SPACE_ID", "someone/lfmui")
    why = Access.configured("0.0.0.0").api_refusal({})
    assert "needs an API key, and none is set" in why and "--api-key" in why
    assert (
        Access.configured("0.0.0.0", api_key="k").api_refusal({"Authorization": "Bearer k"}) == ""
    )


def test_resources_v1_runs_a_few_replies_at_once_lets_some_wait_and_turns_the_rest_away():
    """The /v1 door: `most` replies run, `waiting` more wait without a thread, one more is
    turned away at once (429); a reply that ends lets the next waiting one in."""
    import asyncio

    from lfmui.errors import TooManyRequests
    from lfmui.serve import protocol
    from lfmui.serve.routes import Door

    async def scenario() -> list:
        door = Door(most=1, waiting=1)
        first = await door.enter()
        second = asyncio.ensure_future(door.enter())
        await asyncio.sleep(0.2)
        third = await door.enter()  # one running, one waiting: turned away
        assert not second.done() and door.queued == 1
        door.leave()
        admitted = await asyncio.wait_for(second, 5)
        return [first, admitted, third, door.inside, door.queued]

    assert asyncio.run(scenario()) == [True, True, False, 1, 0]
    refused = protocol.refused(TooManyRequests("You have 16 replies waiting or running"))
    assert refused.status == 429


def test_item44_fairness_v1_callers_are_let_in_in_turn():
    """B holds the one running place and 3 waiting; A's one request, sent last, is let in
    next (A was served least recently), then B's in their order."""
    import asyncio

    from lfmui.serve.routes import Door

    async def scenario() -> list[str]:
        door = Door(most=1, waiting=8)
        order: list[str] = []

        async def one(name: str, client: str) -> None:
            assert await door.enter(client)
            order.append(name)

        await one("B1", "B")
        waiting = []
        for name in ("B2", "B3", "B4"):
            waiting.append(asyncio.ensure_future(one(name, "B")))
            await asyncio.sleep(0.05)
        waiting.append(asyncio.ensure_future(one("A", "A")))
        await asyncio.sleep(0.1)
        for _ in waiting:  # each reply ends, letting the next in
            door.leave()
            await asyncio.sleep(0.1)
        await asyncio.wait_for(asyncio.gather(*waiting), 5)
        return order

    assert asyncio.run(scenario()) == ["B1", "A", "B2", "B3", "B4"]
