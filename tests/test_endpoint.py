"""The endpoint backend against real OpenAI-compatible servers that lfmui did not write:
``transformers serve`` on the offline tiny checkpoint (started here, on CPU), and, for servers
that parse tool calls themselves, a second lfmui's own /v1. Scripted replies go through each
server's real generate path (tests/helpers/scripted.py). The faults a server can have
(unreachable, too slow, malformed JSON, a stream cut short, unknown model ids) come from small
HTTP servers here, since no real server misbehaves on demand."""

from __future__ import annotations

import base64
import contextlib
import http.server
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from lfmui import endpoint, tool_turn, tools, turns
from lfmui.catalog import Catalog
from lfmui.endpoint import Endpoint, EndpointError
from lfmui.manager import ModelManager

ROOT = Path(__file__).resolve().parents[1]
# the console script of the transformers installed beside this Python (no activated venv needed)
TRANSFORMERS_CLI = str(Path(sys.executable).parent / "transformers")
ASK = "What is 2+3?"
CALL = '[calculator(expression="2+3")]'
ANSWER = "The answer is 5."


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, process: subprocess.Popen, seconds: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:3]} exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code < 500:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up in {seconds} s")


def _until_idle(url: str, model: str, seconds: float = 240) -> None:
    """Wait until the server answers a one-token reply: a reply an earlier test stopped, which
    transformers serve sometimes misses (see test_stop_closes_the_stream...), runs to its cap
    first, and the server answers nothing else meanwhile."""
    import httpx

    ask = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    with contextlib.suppress(httpx.TimeoutException):
        httpx.post(f"{url}/v1/chat/completions", json=ask, timeout=seconds).raise_for_status()


@pytest.fixture(scope="module")
def served(tiny_paths, tmp_path_factory):
    """`transformers serve <tiny VL checkpoint>` on CPU; its base URL and model id (the path).
    No hub cache exists for it, so its /v1/models fails, as the issue describes."""
    path, port = tiny_paths["lfm2-vl-tiny"], _port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path_factory.mktemp("hf"))}
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [TRANSFORMERS_CLI, "serve", path, "--port", str(port), "--device", "cpu"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for(f"http://127.0.0.1:{port}/health", process)
        yield f"http://127.0.0.1:{port}", path
    finally:
        process.terminate()
        process.wait(30)


def _script(path: str) -> str:
    """The generation_config that scripts the calculator tool turn on the server."""
    from helpers.scripted import server_script
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    ask = [{"role": "user", "content": ASK}]
    after = [*ask, {"role": "assistant", "content": CALL}, {"role": "tool", "content": "5"}]
    block = f"<|tool_call_start|>{CALL}<|tool_call_end|>"
    return json.dumps(server_script(tokenizer, [(ask, block), (after, ANSWER)]))


@pytest.fixture(scope="module")
def scripted_body(served):
    return {"generation_config": _script(served[1])}


def _endpoint_manager(url: str, model: str | None, extra: dict | None = None) -> ModelManager:
    manager = ModelManager()
    manager.use_endpoint(Endpoint.connect(url, model, extra_body=extra))
    return manager


def _picture() -> Image.Image:
    return Image.new("RGB", (700, 300), "#2b6cb0")


def _reply(manager, conversation, **options):
    events = list(turns.chat_turn(manager, conversation, **options))
    text = "".join(e.text for e in events if e.kind == "text")
    by_kind = {e.kind: e.data for e in events if e.kind != "text"}
    return text, by_kind


# ---- against transformers serve ------------------------------------------------------------
def test_connect_uses_the_given_model_id_when_the_server_lists_none(served):
    url, path = served
    endpoint = Endpoint.connect(url, path)
    assert endpoint.url == f"{url}/v1" and endpoint.model == path
    assert "did not list its models" in endpoint.note
    assert endpoint.kind == "vl" and endpoint.processor is not None  # read without weights
    assert endpoint.random_weights  # an offline build of ours: the UI says noise
    with pytest.raises(EndpointError, match="Give the model id it serves"):
        Endpoint.connect(url)


def test_streams_a_chat_with_an_image_and_says_what_the_server_ignored(served):
    manager = _endpoint_manager(*served)
    plain = [{"role": "user", "content": "Describe it."}]
    greedy = {"max_new_tokens": 8, "temperature": 0.0}  # greedy: visible characters
    pictured = [turns.user_message("Describe it.", [])]
    pictured[0]["content"].insert(0, {"type": "image", "image": _picture()})
    events = list(
        turns.chat_turn(manager, pictured, settings=greedy, tiling={"max_image_tokens": 64})
    )
    deltas = [e for e in events if e.kind == "text"]
    metrics = next(e.data for e in events if e.kind == "metrics")
    assert len(deltas) >= 2  # streamed, not one block
    assert events[-1].kind == "done" and events[-1].data["reason"] in ("max_tokens", "eos")
    assert metrics["tokens_counted_from"] == "usage"
    assert metrics["generated_tokens"] >= 1 and metrics["ttft_s"] > 0
    _, without_image = _reply(manager, plain, settings={"max_new_tokens": 1})
    # the image reached the server's processor: it costs prompt tokens
    assert metrics["prompt_tokens"] > without_image["metrics"]["prompt_tokens"] + 16
    # transformers serve refuses mm_processor_kwargs by name: asked again without it, and said
    assert "mm_processor_kwargs" in metrics["server_ignored"]
    assert "mm_processor_kwargs" in manager.endpoint.refused


def test_the_inspector_plans_with_the_served_models_processor_config(served, tmp_path):
    manager = _endpoint_manager(*served)
    path = tmp_path / "wide.png"
    Image.new("RGB", (1600, 600), "white").save(path)
    _, plan = turns.inspect_image(manager, str(path), {"max_tiles": 4})
    assert plan["tiles"] <= 4 and plan["image_tokens"] > 0
    assert manager.current() is None  # no in-process model was needed


def test_stop_closes_the_stream_and_the_server_aborts(served, scripted_body):
    """A full reply of 2,000 tokens is timed first; a reply stopped after a few chunks must
    leave the server free for the next one well before that full reply could have ended."""
    manager = _endpoint_manager(*served, scripted_body)  # EOS lowered: replies run to the cap
    long = {"max_new_tokens": 2000, "temperature": 0.0}
    conversation = [{"role": "user", "content": "Write at length."}]
    started = time.perf_counter()
    _, full = _reply(manager, conversation, settings=long)
    full_s = time.perf_counter() - started
    assert full["metrics"]["generated_tokens"] == 2000
    # transformers serve misses some clients that leave: in these runs about one stop in five
    # (OMP_NUM_THREADS=1, as the tests give it), its generation then runs to the end; plain
    # openai SDK clients were not seen to hit it in 16 tries, so the cause is not pinned down
    # (likely where the server's cancellation lands). The client leaving at once is asserted
    # every time; the server's abort on one of three stops.
    waits = []
    for _ in range(3):
        stopped_at = time.perf_counter()
        _stopped_after_five_chunks(manager, conversation, long)
        assert time.perf_counter() - stopped_at < 1.0  # the client left at once
        started = time.perf_counter()
        _, after = _reply(manager, conversation, settings={"max_new_tokens": 4})
        waits.append(time.perf_counter() - started)
        assert after["done"]["reason"] in ("max_tokens", "eos")
        if waits[-1] < 0.5 * full_s:
            break
    print(f"full reply {full_s:.2f} s, next after a stop {', '.join(f'{w:.2f}' for w in waits)} s")
    assert min(waits) < 0.5 * full_s, (waits, full_s)


def _stopped_after_five_chunks(manager, conversation, settings) -> None:
    stop = threading.Event()
    chunks = 0
    for event in turns.chat_turn(manager, conversation, settings=settings, stop=stop):
        if event.kind == "text":
            chunks += 1
            if chunks == 5:
                stop.set()
        if event.kind == "done":
            assert event.data["reason"] == "stopped"


def test_a_tool_turn_runs_through_the_endpoint(served, scripted_body):
    """transformers serve drops special tokens: the call arrives as a bare list, is read as a
    block (and the trace says so), runs, and the result goes back for the answer."""
    manager = _endpoint_manager(*served, scripted_body)
    conversation = [{"role": "user", "content": ASK}]
    steps = list(
        tool_turn.tool_turn(
            manager, conversation, tools.builtins(), settings={"max_new_tokens": 64}
        )
    )
    parsed = [s for s in steps if isinstance(s, tool_turn.Parsed)]
    assert parsed[0].calls == [{"name": "calculator", "arguments": {"expression": "2+3"}}]
    assert "without the tool-call markers" in parsed[0].repairs[0]
    results = [s.result for s in steps if isinstance(s, tool_turn.Result)]
    assert [(r.name, r.output) for r in results] == [("calculator", "5")]
    assert steps[-1] == tool_turn.Final(2, ANSWER, "eos")
    assert conversation[-1] == {"role": "tool", "content": "5"}


def test_the_app_runs_on_an_endpoint(served, scripted_body, tmp_path):
    """`python app.py --endpoint ...` as a user starts it: a streamed chat with an image and a
    Stop through its /v1 (the OpenAI SDK), and a tool turn through its gradio API."""
    import openai
    from gradio_client import Client

    url, path = served
    port = _port()
    process = subprocess.Popen(
        [sys.executable, "app.py", "--offline", "--port", str(port), "--endpoint", url,
         "--endpoint-model", path, "--endpoint-body", json.dumps(scripted_body)],
        cwd=ROOT,
        stdout=(tmp_path / "app.log").open("w"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _wait_for(f"http://127.0.0.1:{port}/v1/models", process)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x")
        assert [m.id for m in client.models.list().data] == [path]
        buffer = io.BytesIO()
        _picture().save(buffer, "PNG")
        image = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        content = [
            {"type": "image_url", "image_url": {"url": image}},
            {"type": "text", "text": "Describe it."},
        ]
        stream = client.chat.completions.create(
            model=path,
            messages=[{"role": "user", "content": content}],
            max_tokens=16,
            temperature=0.0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        assert sum(bool(c.choices and c.choices[0].delta.content) for c in chunks) >= 2
        assert chunks[-1].usage.prompt_tokens > 64  # the image's tokens, counted by the server
        at_length = {
            "model": path,
            "messages": [{"role": "user", "content": "Write at length."}],
            "max_tokens": 2000,
            "temperature": 0.0,
        }
        started = time.perf_counter()
        full = client.chat.completions.create(**at_length)
        full_s = time.perf_counter() - started
        assert full.usage.completion_tokens == 2000  # EOS lowered by the script: to the cap
        waits = []  # transformers serve misses about one client in five that leaves (see
        for _ in range(3):  # test_stop_closes_the_stream...): its abort shows in one of three
            with client.chat.completions.create(**at_length, stream=True) as stream:
                for number, _ in enumerate(stream):
                    if number == 3:
                        break  # the client leaves: the app closes its stream to the server
            started = time.perf_counter()
            quick = client.chat.completions.create(
                model=path, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
            )
            assert quick.choices[0].finish_reason == "length"
            waits.append(time.perf_counter() - started)
            if waits[-1] < 0.5 * full_s:
                break
        assert min(waits) < 0.5 * full_s, (waits, full_s)  # not behind the stopped reply
        gradio = Client(f"http://127.0.0.1:{port}/", verbose=False)
        trace = gradio.predict(ASK, "", '{"max_new_tokens": 64}', api_name="/tool_turn")
        assert trace["rounds"][0]["calls"][0]["name"] == "calculator"
        assert trace["rounds"][0]["results"][0]["output"] == "5"
        assert trace["final"]["text"] == ANSWER
        assert trace["random_weights"] is True
    finally:
        process.terminate()
        process.wait(30)


# ---- a server that parses tool calls itself: another lfmui's /v1 ---------------------------
def test_tool_calls_parsed_by_the_server_are_run(vl_manager):
    from helpers.scripted import scripted_generate

    from lfmui.ui import build_app, launch_settings

    port = _port()
    demo = build_app(vl_manager)
    demo.launch(
        prevent_thread_lock=True, quiet=True, **launch_settings(port=port, manager=vl_manager)
    )
    try:
        manager = _endpoint_manager(f"http://127.0.0.1:{port}", None)
        assert manager.endpoint.model == "lfm2-vl-tiny"  # the first model it lists
        block = f"<|tool_call_start|>{CALL}<|tool_call_end|>"
        with scripted_generate(vl_manager.current(), [block, ANSWER]):
            steps = list(
                tool_turn.tool_turn(
                    manager,
                    [{"role": "user", "content": ASK}],
                    tools.builtins(),
                    settings={"max_new_tokens": 64},
                )
            )
        parsed = [s for s in steps if isinstance(s, tool_turn.Parsed)]
        assert parsed[0].calls == [{"name": "calculator", "arguments": {"expression": "2+3"}}]
        assert parsed[0].repairs == []  # it came as tool_calls, written back as LFM2's block
        assert steps[-1] == tool_turn.Final(2, ANSWER, "eos")
    finally:
        demo.close()


# ---- faults ------------------------------------------------------------------------------
class _Fault(http.server.BaseHTTPRequestHandler):
    """A server with one fault, chosen by the class attribute `fault`."""

    fault = "none"
    models = ["mystery-model"]
    location = ""  # where "redirect" sends the client
    asked: list[str] = []  # paths requested of this server

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        self.asked.append(self.path)
        if self.fault == "drip list":  # headers, then a byte every 0.5 s for a long while
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            for _ in range(240):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.5)
            return
        models = self.models * 5000 if self.fault == "many models" else self.models
        if self.fault == "many models":
            models = [f"model-{i}" for i in range(len(models))]
        if self.fault == "redirect":
            self.send_response(302)
            self.send_header("Location", self.location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send(200, json.dumps({"object": "list", "data": [{"id": m} for m in models]}))

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.fault == "slow":
            time.sleep(5)
            return
        chunk = {"id": "1", "object": "chat.completion.chunk", "created": 0, "model": "m"}
        good = {**chunk, "choices": [{"index": 0, "delta": {"content": "Hel"}}]}
        if self.fault == "malformed":
            self._stream([f"data: {json.dumps(good)}\n\n", "data: {not json\n\n"])
        elif self.fault == "cut":
            self._stream([f"data: {json.dumps(good)}\n\n"])  # no finish, no [DONE]
        elif self.fault == "long prefill":  # the headers, then nothing for 5 s
            self._stream([])
            time.sleep(5)
            self._stream([f"data: {json.dumps(good)}\n\n"], headers=False)
        elif self.fault == "no headers":  # reads the prompt for 5 s before answering at all
            time.sleep(5)
            self._stream([f"data: {json.dumps(good)}\n\n"])
        elif self.fault == "comments":  # keep-alive comments only, for 10 s
            self._stream([])
            for _ in range(50):
                self._stream([": keep-alive\n\n"], headers=False)
                time.sleep(0.2)
        elif self.fault in ("flood", "huge"):  # past max_tokens: 20,000 chunks, or 1 MB ones
            self._stream([])
            text = "word " if self.fault == "flood" else "x" * 1_000_000
            many = {**chunk, "choices": [{"index": 0, "delta": {"content": text}}]}
            line = f"data: {json.dumps(many)}\n\n".encode()
            with contextlib.suppress(OSError):  # the client leaves early, as it should
                for _ in range(20_000 if self.fault == "flood" else 300):
                    self.wfile.write(line)
        elif self.fault == "unknown model":
            self._send(404, json.dumps({"error": {"message": "The model does not exist."}}))
        elif self.fault in ("reasoning parser", "raw think"):  # not faults: two ways to think
            if self.fault == "reasoning parser":  # vLLM's --reasoning-parser qwen3, llama.cpp
                deltas = [{"reasoning_content": "Two and "}, {"reasoning_content": "three."}]
                deltas += [{"content": "Five"}, {"content": "."}]
            else:  # a server without a parser sends the model's block as text
                deltas = [{"content": t} for t in ("<thi", "nk>Two and three.</th", "ink>Five.")]
            lines = [
                f"data: {json.dumps({**chunk, 'choices': [{'index': 0, 'delta': d}]})}\n\n"
                for d in deltas
            ]
            end = {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            self._stream([*lines, f"data: {json.dumps(end)}\n\n", "data: [DONE]\n\n"])

    def _send(self, status: int, body: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def _stream(self, lines: list[str], headers: bool = True) -> None:
        if headers:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.flush()
        for line in lines:
            self.wfile.write(line.encode())
        self.wfile.flush()


HANDLERS: dict[str, type] = {}  # each fake server's handler class, by its URL


@contextlib.contextmanager
def _faulty(fault: str, **attributes):
    handler = type("Handler", (_Fault,), {"fault": fault, "asked": [], **attributes})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    HANDLERS[url] = handler
    try:
        yield url
    finally:
        server.shutdown()
        HANDLERS.pop(url, None)


@pytest.mark.parametrize(
    ("fault", "said"),
    [
        ("slow", "did not answer in time"),
        ("malformed", "not valid OpenAI JSON"),
        ("cut", "ended the reply before it finished"),
        ("unknown model", "does not serve 'mystery-model'"),
    ],
)
def test_a_faulty_endpoint_gets_a_sentence_and_the_in_process_model_stays(vl_manager, fault, said):
    with _faulty(fault) as url:
        endpoint = Endpoint.connect(url)  # lists a model id the app does not know: usable
        assert endpoint.model == "mystery-model" and "processor config" in endpoint.note
        resident = vl_manager.current()
        vl_manager.use_endpoint(endpoint)
        try:
            _, ended = _reply(
                vl_manager,
                [{"role": "user", "content": "Hi"}],
                settings={"max_new_tokens": 4, "time_limit": 1},
            )
        finally:
            vl_manager.use_endpoint(None)
    assert said in ended["error"]["message"]
    assert vl_manager.current() is resident
    text, ok = _reply(
        vl_manager, [{"role": "user", "content": "Hi"}], settings={"max_new_tokens": 2}
    )
    assert ok["done"]["reason"] in ("eos", "max_tokens")


@pytest.mark.parametrize("fault", ["long prefill", "no headers"])
def test_stop_before_the_first_token_closes_the_stream_at_once(fault):
    """A server still reading the prompt (5 s here: after its headers, or before them) sends
    nothing to check Stop against: the stream is closed from beside the reader, or the
    request left before the headers, and the reply ends stopped long before."""
    with _faulty(fault) as url:
        manager = _endpoint_manager(url, None)
        stop = threading.Event()
        threading.Timer(0.3, stop.set).start()
        started = time.perf_counter()
        _, ended = _reply(manager, [{"role": "user", "content": "Hi"}], stop=stop)
        took = time.perf_counter() - started
    assert ended["done"]["reason"] == "stopped" and "error" not in ended
    assert took < 2.5, took  # half the server's silence: Stop did not wait for a token


def test_an_unreachable_or_wrong_endpoint_is_refused_with_what_to_do():
    with pytest.raises(EndpointError, match="cannot be reached.*Start the server"):
        Endpoint.connect(f"http://127.0.0.1:{_port()}/v1", "m")
    with pytest.raises(EndpointError, match="not an http"):
        Endpoint.connect("localhost:8000", "m")
    with _faulty("none") as url, pytest.raises(EndpointError, match="serves mystery-model"):
        Endpoint.connect(url, "LiquidAI/LFM2-VL-1.6B")


# ---- in a browser ----------------------------------------------------------------------------
@pytest.mark.browser
def test_browser_connect_chat_stop_and_tools_on_an_endpoint(
    vl_manager, served, scripted_body, tmp_path
):
    """The Models tab's Endpoint panel connects; the chat streams a reply to an image from the
    server, Stop ends one, a tool turn shows its call; then the in-process model answers again."""
    from playwright.sync_api import expect, sync_playwright
    from test_browser import (
        ARTIFACTS,
        CHROMIUM,
        _max_new_tokens,
        _picture,
        _send,
        clear_chat,
        idle,
        streaming,
    )

    from lfmui.ui import build_app, launch_settings

    url, path = served
    port = _port()
    demo = build_app(vl_manager)
    demo.launch(prevent_thread_lock=True, quiet=True, **launch_settings(port=port))
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}")
            page.get_by_role("tab", name="Models").click()
            page.get_by_text("Endpoint: an OpenAI-compatible server").click()
            served_id = page.locator("#endpoint-model input").first
            served_id.fill(path)
            served_id.press("Enter")  # a custom dropdown value is taken on Enter or blur
            extra = page.get_by_label("Extra request fields")
            extra.fill(json.dumps(scripted_body))
            # the address last: a box filled in the instant the accordion mounts it can show
            # the text while the app still holds "" (in 2 of 4 runs here); no person is that fast
            address = page.locator("#endpoint-url textarea, #endpoint-url input").first
            address.fill(url)
            for box, value in [(served_id, path), (extra, json.dumps(scripted_body))]:
                expect(box).to_have_value(value)  # Connect sends what the page holds
            expect(address).to_have_value(url)
            _until_idle(url, path)  # a stopped reply of an earlier test may still run there
            page.locator("#endpoint-connect").click()
            # Connect may take its whole deadline (the served /v1/models fails slowly), and
            # the page then redraws the Models tab: waited for with room beyond it; a refusal
            # (a toast) fails the test with its sentence
            connect_ms = int((endpoint.CONNECT_DEADLINE_S + 30) * 1000)
            in_use, toast = page.get_by_text("Endpoint in use"), page.locator(".toast-body")
            in_use.or_(toast).first.wait_for(timeout=connect_ms)
            assert in_use.is_visible(), f"Connect refused: {toast.all_inner_texts()}"
            page.get_by_text("Replies come from the endpoint").wait_for(timeout=5_000)
            page.screenshot(path=str(ARTIFACTS / "models-endpoint.png"), full_page=True)

            page.get_by_role("tab", name="Chat").click()
            _max_new_tokens(page, 32)
            _send(page, _picture(tmp_path / "sun.png"), "Describe it.")
            page.get_by_text("the server ignored").last.wait_for(timeout=60_000)
            assert page.get_by_text("random weights").first.is_visible()

            _max_new_tokens(page, 4096)  # EOS lowered by the script: it runs until stopped
            box = page.get_by_placeholder("Type a message, paste or drop an image…")
            box.fill("Write at length.")
            box.press("Enter")
            streaming(page)
            # Escape presses the visible Stop (app.KEYS): no pointer, so a reply that moves
            # the page as it streams cannot put something else under the click (a full run
            # once saw the click wait on a navigation)
            page.keyboard.press("Escape")
            page.get_by_text("stopped ·").last.wait_for(timeout=10_000)
            stopped = page.get_by_text("stopped ·").last.inner_text()
            assert int(stopped.split(" tokens")[0].split()[-1]) < 4096

            _max_new_tokens(page, 64)
            clear_chat(page)
            page.get_by_label("Use tools").first.check()
            box.fill(ASK)
            box.press("Enter")
            page.get_by_text(ANSWER).wait_for(timeout=60_000)
            assert page.get_by_text("Used tool calculator").count() == 1
            idle(page)
            page.screenshot(path=str(ARTIFACTS / "chat-endpoint-tools.png"), full_page=True)
            page.get_by_label("Use tools").first.uncheck()

            page.get_by_role("tab", name="Models").click()
            page.locator("#endpoint-local").click()
            page.get_by_text("Replies come from the endpoint").wait_for(
                state="detached", timeout=10_000
            )
            assert vl_manager.endpoint is None and vl_manager.current() is not None
            browser.close()
    finally:
        vl_manager.use_endpoint(None)
        demo.close()


# ---- the upstream bounded (issue 26) ------------------------------------------------------------
def test_upstream_bounds_a_reply_past_max_tokens_ends_there(vl_manager):
    for fault in ("flood", "huge"):
        with _faulty(fault) as url:
            manager = _endpoint_manager(url, None)
            text, ended = _reply(
                manager, [{"role": "user", "content": "Hi"}], settings={"max_new_tokens": 8}
            )
        assert ended["done"]["reason"] == "max_tokens", (fault, ended)
        if fault == "flood":
            assert text.count("word") <= 8 + 16  # 8 asked for, a few chunks of slack
        else:
            assert len(text) == 64 * 1024  # cut at the cap, not 300 MB


def test_upstream_bounds_comments_do_not_extend_the_time_limit():
    with _faulty("comments") as url:
        manager = _endpoint_manager(url, None)
        started = time.perf_counter()
        _, ended = _reply(manager, [{"role": "user", "content": "Hi"}], settings={"time_limit": 1})
        took = time.perf_counter() - started
    assert ended["done"]["reason"] == "time_limit" and "error" not in ended
    assert took < 5, took  # the server's comments went on for 10 s


def test_upstream_bounds_connect_has_one_deadline_and_a_capped_list(monkeypatch):
    from lfmui import endpoint as module

    monkeypatch.setattr(module, "CONNECT_DEADLINE_S", 2.0)
    with _faulty("drip list") as url:
        started = time.perf_counter()
        with pytest.raises(EndpointError, match="did not finish answering within 2 s"):
            Endpoint.connect(url)
        assert time.perf_counter() - started < 5
    with _faulty("many models") as url:
        endpoint = Endpoint.connect(url)
    assert len(endpoint.models) == module.MAX_LISTED_MODELS


def test_item41_ssrf_a_redirect_is_not_followed():
    """A server that passed the address check cannot send the client elsewhere (here another
    local server, which would have listed its model)."""
    with _faulty("none", models=["elsewhere"]) as inside:
        with _faulty("redirect", location=f"{inside}/v1/models") as url:
            with pytest.raises(EndpointError, match="did not list its models"):
                Endpoint.connect(url)
            assert HANDLERS[url].asked == ["/v1/models"]  # the redirect was sent
        assert HANDLERS[inside].asked == []  # and not followed
        assert Endpoint.connect(inside).model == "elsewhere"  # which it would have been


@pytest.mark.parametrize("server", ["reasoning parser", "raw think"])
def test_a_servers_thinking_comes_apart_from_its_answer(server):
    """A server's reasoning_content (vLLM's and llama.cpp's reasoning parsers) and a raw
    <think> block (a server without one, markers split across chunks) both arrive as thinking,
    the answer as text."""
    with _faulty(server) as url:
        manager = _endpoint_manager(url, None)
        events = list(turns.chat_turn(manager, [{"role": "user", "content": "2+3?"}]))
    thought = "".join(e.text for e in events if e.kind == "thinking")
    answer = "".join(e.text for e in events if e.kind == "text")
    assert (thought, answer) == ("Two and three.", "Five.")
    assert events[-1].kind == "done" and events[-1].data["reason"] == "eos"


@pytest.mark.parametrize(
    ("served", "thumbnail", "fewest"),
    [("LFM2-VL-450M-Q8_0.gguf", False, 64), ("LFM2.5-VL-450M-Q8_0.gguf", True, 32)],
)
def test_a_served_catalog_model_without_a_processor_config_cuts_by_the_catalogs_defaults(
    served, thumbnail, fewest, monkeypatch
):
    """llama.cpp's server names its GGUF file; the hub repo's processor config cannot be read
    offline, so the catalog's image defaults for that model stand in."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    connected = Endpoint(url="http://127.0.0.1:1/v1", model=served, models=[served], client=None)
    connected._describe(Catalog(), "")
    assert connected.processor is None and connected.kind == "vl"
    cut = connected.tiling(None)
    assert cut.use_thumbnail is thumbnail and cut.min_image_tokens == fewest
    assert connected.tiling({"max_tiles": 4}).max_tiles == 4


def test_thinking_off_goes_to_a_server_as_chat_template_kwargs():
    """vLLM, SGLang and llama.cpp's server pass it to the template; a server that refuses the
    field is asked again without it, and the user told (wire.OPTIONAL)."""
    from lfmui import openai_wire
    from lfmui.settings import Settings

    connected = Endpoint(url="http://127.0.0.1:1/v1", model="m", models=["m"], client=None)
    ask = [{"role": "user", "content": "hi"}]
    off = connected._body(ask, Settings(think=False), None, None, None)
    assert off["chat_template_kwargs"] == {"enable_thinking": False}
    assert "chat_template_kwargs" not in connected._body(ask, Settings(), None, None, None)
    assert "chat_template_kwargs" in openai_wire.OPTIONAL
