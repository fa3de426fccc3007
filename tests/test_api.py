"""The gradio API (lfmui/ui/api.py) through the app's real server and gradio_client: public
names, types on the API page, errors, streaming, tiling and tool-call endpoints."""

from __future__ import annotations

import json
import socket

import pytest
from PIL import Image


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_paths):
    from lfmui.manager import ModelManager
    from lfmui.ui import build_app, launch_settings

    manager = ModelManager()
    manager.load("lfm2-vl-tiny", "fp32")
    demo = build_app(manager)
    settings = launch_settings(port=_free_port())
    demo.launch(prevent_thread_lock=True, quiet=True, **settings)
    yield f"http://127.0.0.1:{settings['server_port']}", manager
    demo.close()


@pytest.fixture
def client(server):
    from gradio_client import Client

    return Client(server[0], verbose=False)


def test_public_api_names(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {
        "/status",
        "/models",
        "/load_model",
        "/generate",
        "/last_metrics",
        "/plan_tiles",
        "/parse_tool_calls",
        "/tool_turn",
    } <= names
    assert not any(
        n.startswith(("/load", "/unload", "/on_submit", "/stop")) and n not in {"/load_model"}
        for n in names
    ), names  # UI events stay private


def test_the_api_page_documents_keys_and_types(client):
    """Scripts read the API page: typed returns, the settings keys, every level name."""
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    status = api["/status"]["returns"][0]["python_type"]["type"]
    assert "ready: bool" in status and "random_weights: bool" in status
    metrics = api["/last_metrics"]["returns"][0]["python_type"]["type"]
    assert "ttft_s" in metrics and "random_weights: bool" in metrics
    generate = str(api["/generate"])
    assert all(key in generate for key in ("max_new_tokens", "tiling", "system", "messages"))
    assert [p["parameter_name"] for p in api["/generate"]["parameters"]] == [
        "prompt",
        "image_files",
        "settings_json",
    ]
    load = str(api["/load_model"])
    assert "auto" in load and "int8-cpu" in load and "int4-bf16" in load
    for name, key in (
        ("/load_model", "resident_gib: float"),
        ("/parse_tool_calls", "skipped_tools: list[str]"),
        ("/tool_turn", "random_weights: bool"),
    ):
        assert key in api[name]["returns"][0]["python_type"]["type"], name


def test_models_lists_catalog_with_quantization_availability(client):
    models = client.predict(api_name="/models")
    ids = {m["id"] for m in models}
    assert {"LFM2-VL-450M", "LFM2-VL-1.6B", "LFM2-8B-A1B", "lfm2-vl-tiny", "lfm2-moe-tiny"} <= ids
    levels = {q["name"]: q for q in models[0]["quantizations"]}
    assert set(levels) == {
        "bf16",
        "fp16",
        "fp32",
        "int8",
        "nf4",
        "int8-bf16",
        "int4-bf16",
        "int8-cpu",
    }
    assert all(levels[name]["note"] for name in ("int8", "nf4", "int8-cpu"))  # what each costs
    import torch

    if not torch.cuda.is_available():  # bitsandbytes runs on CPU too, and says what it costs
        assert levels["nf4"]["available"] and "CPU" in levels["nf4"]["reason"]


@pytest.mark.parametrize(
    "bad",
    ["org/evil", "/etc/passwd", "../x", "LiquidAI/LFM2-VL-450M", "~/.cache", "lfm2-vl-tiny/.."],
)
def test_item06_load_model_rejects_ids_outside_the_catalog(client, server, bad, monkeypatch):
    from gradio_client.exceptions import AppError

    import lfmui.hub
    import lfmui.offline

    touched = []  # anything that would fetch or build weights
    monkeypatch.setattr(lfmui.offline, "ensure_checkpoint", lambda *a, **k: touched.append(a))
    monkeypatch.setattr(lfmui.hub, "check", lambda *a, **k: touched.append(a))
    monkeypatch.setattr(server[1], "_load_weights", lambda *a, **k: touched.append(a))
    with pytest.raises(AppError, match="not in the model catalog"):
        client.predict(bad, "fp32", api_name="/load_model")
    assert touched == [] and server[1].current().spec.id == "lfm2-vl-tiny"


def test_item36_unavailable_levels_through_the_api_say_why(client, server, monkeypatch):
    from gradio_client.exceptions import AppError

    from lfmui import quant

    # a machine whose bitsandbytes cannot run (no kernel for its device)
    monkeypatch.setattr(quant, "_bitsandbytes_fails", lambda device: "RuntimeError: no kernel")
    levels = {q["name"]: q for q in client.predict(api_name="/models")[0]["quantizations"]}
    unavailable = [name for name, level in levels.items() if not level["available"]]
    assert {"int8", "nf4"} <= set(unavailable)  # and on CUDA int8-cpu
    for name in unavailable:
        with pytest.raises(AppError, match="is not available here: ") as info:
            client.predict("lfm2-vl-tiny", name, api_name="/load_model")
        assert levels[name]["reason"] in str(info.value)
    assert server[1].current().quantization == "fp32"
    assert isinstance(client.predict("hi", [], '{"max_new_tokens": 2}', api_name="/generate"), str)


@pytest.mark.parametrize(
    ("prompt", "refusal"),
    [
        ("x" * 1_000_000, "the limit is 100,000. Shorten the message"),
        ("", "Send a prompt, an image, or both."),
        ("  \n\t ", "Send a prompt, an image, or both."),
        ("a\x00b\x00", None),  # NUL: a reply
        ("مرحبا، ما هذا؟ \u202eabc\u202c שלום", None),  # RTL and bidi controls: a reply
        ("😀" * 2000, None),
    ],
)
def test_item17_long_empty_nul_and_rtl_messages(client, prompt, refusal):
    """1 MB through the API: the length error (50 MB: tests/test_web.py, refused at 4 MB)."""
    from gradio_client.exceptions import AppError

    if refusal:
        with pytest.raises(AppError, match=refusal.replace(".", r"\.")):
            client.predict(prompt, [], '{"max_new_tokens": 4}', api_name="/generate")
    else:
        reply = client.predict(prompt, [], '{"max_new_tokens": 4}', api_name="/generate")
        assert isinstance(reply, str)
        metrics = client.predict(api_name="/last_metrics")
        assert metrics["generated_tokens"] >= 1 and metrics["prompt_tokens"] > 1


def test_item30_failures_inside_generate_fifty_times_then_it_serves(client, server, monkeypatch):
    """generate() raising (an out-of-memory, then any error) 50 times: each reaches the client
    as a clear error within seconds, no thread piles up, and the next request is answered."""
    import threading
    import time

    import torch
    from gradio_client.exceptions import AppError

    from lfmui import engine

    model = server[1].current().model
    failures = [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")] * 25
    failures += [RuntimeError("device-side assert triggered")] * 25

    def failing_generate(**kwargs):
        raise failures.pop(0)

    client.predict("warm", [], '{"max_new_tokens": 2}', api_name="/generate")
    threads = threading.active_count()
    monkeypatch.setattr(model, "generate", failing_generate)
    slowest = 0.0
    for attempt in range(50):
        expected = engine.OUT_OF_MEMORY if attempt < 25 else engine.GENERATE_FAILED
        started = time.monotonic()
        with pytest.raises(AppError) as info:
            client.predict("hi", [], '{"max_new_tokens": 4}', api_name="/generate")
        slowest = max(slowest, time.monotonic() - started)
        assert str(info.value) == expected
    assert slowest < 5
    assert threading.active_count() <= threads + 2  # no pile-up
    monkeypatch.undo()
    assert isinstance(client.predict("hi", [], '{"max_new_tokens": 4}', api_name="/generate"), str)


def test_generate_streams_and_reports_metrics(client, tmp_path):
    from gradio_client import handle_file

    image = tmp_path / "square.png"
    Image.new("RGB", (300, 200), "green").save(image)
    settings = json.dumps({"max_new_tokens": 12, "temperature": 1.0, "seed": 5})
    job = client.submit("Describe this.", [handle_file(str(image))], settings, api_name="/generate")
    updates = list(job)
    assert len(updates) >= 2  # streamed, not one final blob
    assert all(b.startswith(a) for a, b in zip(updates, updates[1:], strict=False))  # growing
    metrics = client.predict(api_name="/last_metrics")
    assert metrics["generated_tokens"] <= 12 and metrics["image_tokens"] > 0
    assert metrics["preprocess_s"] > 0 and metrics["queue_wait_s"] >= 0
    assert metrics["peak_memory_gib"] > 0
    assert metrics["done"] in {"eos", "max_tokens"}


def test_status_says_ready_and_what_answers(client, server):
    status = client.predict(api_name="/status")
    assert status["ready"] is True and status["state"] == "ready"
    assert status["model_id"] == "lfm2-vl-tiny" and status["quantization"] == "fp32"
    assert status["random_weights"] is True and status["endpoint"] is None
    assert status["requests_in_flight"] == 0


def test_generate_takes_a_history_and_a_system_prompt(client):
    """Earlier turns and a system prompt go in settings_json (messages, system): the prompt
    the model reads grows by them, and the answer says it is random-weight noise."""
    short = json.dumps({"max_new_tokens": 2})
    client.predict("And Paris?", [], short, api_name="/generate")
    alone = client.predict(api_name="/last_metrics")["prompt_tokens"]
    history = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ]
    settings = json.dumps({"max_new_tokens": 2, "messages": history, "system": "Be brief."})
    client.predict("And Paris?", [], settings, api_name="/generate")
    metrics = client.predict(api_name="/last_metrics")
    # the two turns, their role markers and the system turn: many more characters read
    assert metrics["prompt_tokens"] > alone + 40
    assert metrics["random_weights"] is True


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"messages": {"role": "user"}}, "must be a list"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages\\[1\\] must be"),
        ({"messages": [{"role": "user", "content": ["x"]}]}, "content must be text"),
        ({"messages": [{"role": "user", "content": "x"}] * 65}, "at most 64"),
        ({"messages": [{"role": "user", "content": "x" * 100_001}]}, "100,000"),
        ({"system": 5}, "system must be a string"),
    ],
)
def test_generate_refuses_a_bad_history(client, settings, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        client.predict("hi", [], json.dumps(settings), api_name="/generate")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ("{bad", "not valid JSON"),
        ('{"max_new_tokens": -1}', "between"),
        ('{"temperature": "hot"}', "must be numbers"),
        ('{"nope": 1}', "Unknown setting"),
        # typed_conversions (issue 18): each was "something went wrong" or a silent 1
        ('{"max_new_tokens": Infinity}', "whole number from 1 to 4096"),
        ('{"seed": 1e400}', "whole number from 0"),
        ('{"max_new_tokens": "1"}', "whole number from 1 to 4096"),
        ('{"max_new_tokens": 1.9}', "whole number from 1 to 4096"),
        ('{"max_new_tokens": true}', "whole number from 1 to 4096"),
        ('{"a":' * 5000 + "1" + "}" * 5000, "nested too deeply"),
        ('{"tiling": ' + "[" * 5000 + "]" * 5000 + "}", "nested too deeply"),
    ],
)
def test_generate_rejects_bad_settings(client, settings, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        client.predict("hi", [], settings, api_name="/generate")


def test_load_model_switches_and_reports_status(client, server):
    status = client.predict("lfm2-moe-tiny", "fp32", api_name="/load_model")
    assert status["model_id"] == "lfm2-moe-tiny" and status["device"] in {"cpu", "cuda"}
    assert status["resident_bytes"] > 0 and status["load_seconds"] >= 0
    assert status["random_weights"] is True
    status = client.predict("lfm2-vl-tiny", "fp32", api_name="/load_model")
    assert status["model_id"] == "lfm2-vl-tiny"


def test_item29_a_cancelled_api_stream_frees_the_generation_thread(client):
    import time

    from lfmui import worker

    settings = json.dumps({"max_new_tokens": 4096, "temperature": 1.0})
    job = client.submit("Tell me a long story.", [], settings, api_name="/generate")
    deadline = time.monotonic() + 30
    while not job.outputs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.outputs(), "no streamed update before cancelling"
    job.cancel()
    cancelled_at = time.monotonic()
    idle = worker.generation_worker().submit(lambda: True).result(timeout=10)
    assert idle and time.monotonic() - cancelled_at < 2.5
    reply = client.predict("hi", [], '{"max_new_tokens": 4}', api_name="/generate")
    assert isinstance(reply, str)  # the app still serves


def test_plan_tiles_reports_the_processors_plan(client, tmp_path):
    from gradio_client import handle_file

    image = tmp_path / "tall.png"
    Image.new("RGB", (1000, 3000), "white").save(image)
    plan = client.predict(handle_file(str(image)), "", api_name="/plan_tiles")
    assert plan["tiled"] and plan["grid"][0] * plan["grid"][1] == plan["tiles"] > 1
    assert plan["image_tokens"] == plan["tiles"] * plan["tokens_per_tile"] + plan["view_tokens"]
    fast = client.predict(
        handle_file(str(image)),
        json.dumps({"do_image_splitting": False, "max_image_tokens": 64}),
        api_name="/plan_tiles",
    )
    assert not fast["tiled"] and fast["image_tokens"] <= 64


@pytest.mark.parametrize(
    "tiling_json", ['{"min_tiles": 5, "max_tiles": 2}', '{"max_tiles": "many"}', "[1]", "{oops"]
)
def test_item14_plan_tiles_rejects_bad_settings(client, tmp_path, tiling_json):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    image = tmp_path / "square.png"
    Image.new("RGB", (64, 64)).save(image)
    with pytest.raises(AppError):
        client.predict(handle_file(str(image)), tiling_json, api_name="/plan_tiles")


def test_generate_takes_tiling_per_request(client, tmp_path):
    from gradio_client import handle_file

    image = tmp_path / "big.png"
    Image.new("RGB", (1024, 1024), "navy").save(image)
    counts = []
    for cut in ({"do_image_splitting": False, "max_image_tokens": 64}, {"max_tiles": 4}):
        settings = json.dumps({"max_new_tokens": 2, "tiling": cut})
        list(client.submit("hi", [handle_file(str(image))], settings, api_name="/generate"))
        counts.append(client.predict(api_name="/last_metrics")["image_tokens"])
    assert counts[0] <= 64 < counts[1]


def test_item16_generate_caps_images_per_request(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    image = tmp_path / "one.png"
    Image.new("RGB", (32, 32)).save(image)
    with pytest.raises(AppError, match="at most 4"):
        client.predict("hi", [handle_file(str(image))] * 5, "", api_name="/generate")


def test_parse_tool_calls_endpoint(client):
    text = 'Sure.<|tool_call_start|>[get_weather(city="Paris", unit="kelvin")]<|tool_call_end|>'
    parsed = client.predict(text, "", api_name="/parse_tool_calls")
    assert parsed["calls"] == [] and "use one of" in parsed["errors"][0]
    assert parsed["text"] == "Sure."
    mine = json.dumps([{"name": "ping", "parameters": {"type": "object", "properties": {}}}])
    parsed = client.predict(
        "<|tool_call_start|>[ping()]<|tool_call_end|>", mine, api_name="/parse_tool_calls"
    )
    assert parsed["calls"] == [{"name": "ping", "arguments": {}}]


def test_tool_turn_endpoint_runs_a_forced_call(client, server):
    from helpers.scripted import scripted_generate

    call = '<|tool_call_start|>[calculator(expression="6 * 7")]<|tool_call_end|>'
    with scripted_generate(server[1].current(), [call, "The answer is 42."]):
        trace = client.predict(
            "What is 6 times 7?", "", '{"max_new_tokens": 48}', api_name="/tool_turn"
        )
    assert trace["rounds"][0]["calls"] == [
        {"name": "calculator", "arguments": {"expression": "6 * 7"}}
    ]
    assert trace["rounds"][0]["results"][0]["output"] == "42"
    assert trace["final"]["text"] == "The answer is 42." and trace["random_weights"]


@pytest.mark.parametrize(
    "tools_json,settings_json,message",
    [
        ("{bad", "", "not valid JSON"),
        ("", '{"tool_choice": "rm"}', "not one of the tools"),
        ("", '{"max_rounds": 50}', "max_rounds"),
    ],
)
def test_tool_turn_endpoint_rejects_bad_input(client, tools_json, settings_json, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        client.predict("hi", tools_json, settings_json, api_name="/tool_turn")


def test_hidden_model_ids_are_refused_through_the_api(client, server):
    """issue 18, hidden_model_ids: /load_model names only what the picker lists."""
    from gradio_client.exceptions import AppError

    before = server[1].current()
    with pytest.raises(AppError, match="full-shape benchmark build and is not offered here"):
        client.predict("lfm2-8b-a1b-synthetic", "fp32", api_name="/load_model")
    assert server[1].current() is before and server[1].loading is None


@pytest.mark.parametrize("size", [(1, 65500), (65500, 1)])
def test_extreme_strips_are_planned_and_previewed(client, server, tmp_path, size):
    """issue 18, extreme_aspect_preview: the inspector's preview shrank a 1x65500 strip to zero
    width and failed with the generic error; it now shows the strip padded as the model gets
    it, and /plan_tiles answers."""
    from gradio_client import handle_file

    from lfmui.ui import vision_tab

    path = tmp_path / "strip.png"
    Image.new("RGB", size, "navy").save(path)
    plan = client.predict(handle_file(str(path)), "", api_name="/plan_tiles")
    assert plan["image_tokens"] > 0
    preview, summary, _ = vision_tab.inspect(server[1], str(path), {})
    assert min(preview.size) > 0 and "image tokens" in summary


def test_a_lone_surrogate_in_the_prompt_is_a_sentence(server):
    """typed_conversions (issue 18): an unpaired surrogate (a browser's JSON can carry one as
    an escape; gradio_client cannot even encode it) reached the tokenizer as a TypeError."""
    from lfmui import turns
    from lfmui.errors import InputError

    with pytest.raises(InputError, match="broken character"):
        list(turns.chat_turn(server[1], [{"role": "user", "content": "hi \ud800 there"}]))


@pytest.mark.parametrize(
    ("schema", "where"),
    [
        ({"type": "object", "properties": {}, "required": 5}, "at required"),
        ({"type": "object", "properties": {"a": 5}}, "at properties/a"),
        ({"type": "object", "properties": {"a": {"type": {"x": 1}}}}, "at properties/a/type"),
    ],
)
def test_tool_schemas_jsonschema_cannot_use_are_refused(client, schema, where):
    """typed_conversions (issue 18): such a schema failed later, at the first call."""
    from gradio_client.exceptions import AppError

    tools_json = json.dumps([{"name": "f", "parameters": schema}])
    with pytest.raises(AppError, match=f"not a valid JSON schema \\({where}"):
        client.predict("[f()]", tools_json, api_name="/parse_tool_calls")
