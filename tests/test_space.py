"""A Hugging Face Space rehearsed on the loopback: `python app.py` with no flags, started with the
environment a Space sets, reached through requests that carry the Space's Host and Origin."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
SPACE_HOST = "lfmui-tests-lfmui.hf.space"
SPACE = {  # what Spaces set for `python app.py` (plus HF_HOME on a writable folder)
    "SPACE_ID": "lfmui-tests/lfmui",
    "SPACE_HOST": SPACE_HOST,
    "SPACE_AUTHOR_NAME": "lfmui-tests",
    "SYSTEM": "spaces",
    "GRADIO_SERVER_NAME": "0.0.0.0",
}
AS_VISITOR = {"Host": SPACE_HOST, "Origin": f"https://{SPACE_HOST}"}
ADMIN_TOKEN = "owner-token-for-the-rehearsal"
AS_OWNER = {**AS_VISITOR, "Authorization": f"Bearer {ADMIN_TOKEN}"}
LOAD_DELAY_S = 8.0
# Test-only: reading the weights waits LOAD_DELAY_S first, so the first page is asked for while the
# model is still loading (the tiny model would otherwise be ready before the port opens).
SLOW_FIRST_LOAD = """
import os, time
import lfmui.manager as manager
_load_weights = manager.ModelManager._load_weights
def load_weights(self, *args, **kwargs):
    time.sleep(float(os.environ["LFMUI_TEST_LOAD_DELAY_S"]))
    return _load_weights(self, *args, **kwargs)
manager.ModelManager._load_weights = load_weights
"""


def _space_port() -> int:
    """7860, as on a Space, where it is free here; else any free port."""
    for port in (7860, 0):
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise AssertionError("no free port")


def _listening(port: int) -> list[str]:
    """The local addresses of the listening TCP sockets on `port` (from /proc/net/tcp*)."""
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.append("[::]" if address == "0" * width and width == 32 else address)
    return ["0.0.0.0" if a == "00000000" else a for a in found]


def _wait_until_listening(process: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"app.py exited: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"app.py did not listen within 180 s: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def _serving(env: dict[str, str], port: int, log: Path, *flags: str) -> Iterator[subprocess.Popen]:
    """`python app.py` with `flags` and `env`, its output in `log`, once it listens on `port`;
    ended when the block ends."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "app.py", *flags], cwd=ROOT, env=env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        _wait_until_listening(process, port, log)
        yield process
    finally:
        # the whole group: with SYSTEM=spaces a process of gradio's may outlive app.py (one
        # was found serving after the suite had ended)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):  # the group is killed either way
            process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


# gradio's Spaces reloader (SYSTEM=spaces) leaves event loops whose __del__ prints this; a bare
# gr.Blocks app started with the same environment prints it too
GRADIO_ON_SPACES = re.compile(
    r"Exception ignored in: <function BaseEventLoop.__del__.*?"
    r"ValueError: Invalid file descriptor: -1\n",
    flags=re.DOTALL,
)


def _ours(log: str) -> str:
    return GRADIO_ON_SPACES.sub("", log)


def _call(
    base: str, name: str, data: list, headers: dict[str, str] = AS_VISITOR
) -> list[tuple[str, object]]:
    """A gradio API call as a visitor's browser makes it: (event, data) as streamed."""
    with httpx.Client(headers=headers, timeout=60) as http:
        started = http.post(f"{base}/gradio_api/call/{name}", json={"data": data})
        assert started.status_code == 200, started.text
        event_id = started.json()["event_id"]
        events, kind = [], None
        with http.stream("GET", f"{base}/gradio_api/call/{name}/{event_id}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    events.append((kind, json.loads(line.removeprefix("data: "))))
        return events


def _space_env(folder: Path, port: int, **extra: str) -> dict[str, str]:
    """The environment a Space gives `python app.py` (this machine's, less its own GRADIO_SERVER
    and SPACE settings), its HF_HOME and gradio temp dir under `folder`, all traffic kept on the
    loopback, and `extra`."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("GRADIO_SERVER", "SPACE"))},
        **SPACE,
        "GRADIO_SERVER_PORT": str(port),
        "HF_HOME": str(folder / "hf"),
        "HF_HUB_OFFLINE": "1",  # traffic stays on the loopback: the start falls back to tiny
        "GRADIO_TEMP_DIR": str(folder / "gradio"),
        **extra,
    }


@pytest.fixture(scope="module")
def space(tiny_paths):
    folder = Path(tempfile.mkdtemp(prefix="lfmui-space-"))
    (folder / "hf").mkdir()
    (folder / "shim").mkdir()
    (folder / "shim" / "sitecustomize.py").write_text(SLOW_FIRST_LOAD)
    port = _space_port()
    log = folder / "app.log"
    env = _space_env(
        folder,
        port,
        PYTHONPATH=os.pathsep.join([str(folder / "shim"), str(ROOT)]),
        LFMUI_TEST_LOAD_DELAY_S=str(LOAD_DELAY_S),
        LFMUI_ADMIN_TOKEN=ADMIN_TOKEN,
    )
    try:
        with _serving(env, port, log) as process:
            yield port, process, log
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_space_listens_on_every_interface_on_its_port(space):
    port, _, _ = space
    assert set(_listening(port)) <= {"0.0.0.0", "[::]"} and _listening(port)


def test_space_first_page_is_quick_while_the_model_loads_then_it_streams(space):
    port, _, log = space
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    page = httpx.get(f"{base}/", headers=AS_VISITOR, timeout=30)
    first_page_s = time.monotonic() - started
    assert page.status_code == 200 and "gradio" in page.text
    assert first_page_s < 3.0, f"first page took {first_page_s:.2f} s"
    # Hugging Face frames the Space's page: its CSP says so
    policy = page.headers["content-security-policy"]
    assert "frame-ancestors" in policy and "https://huggingface.co" in policy

    status = _call(base, "status", [])[-1][1][0]
    assert status["state"] == "loading", status  # the page came before the model
    deadline = time.monotonic() + 120
    while status["state"] != "ready" and time.monotonic() < deadline:
        time.sleep(0.25)
        status = _call(base, "status", [])[-1][1][0]
    assert status["state"] == "ready" and status["model_id"] == "lfm2-vl-tiny", status

    settings = json.dumps({"max_new_tokens": 8, "temperature": 1.0, "seed": 3})
    events = _call(base, "generate", ["Describe the sea.", None, settings])
    kinds = [kind for kind, _ in events]
    assert kinds.count("generating") >= 2 and kinds[-1] == "complete", kinds  # streamed
    assert "Traceback" not in _ours(log.read_text())


def test_space_a_foreign_origin_is_refused(space):
    port, _, _ = space
    response = httpx.get(
        f"http://127.0.0.1:{port}/gradio_api/info",
        headers={"Host": SPACE_HOST, "Origin": "https://elsewhere.example"},
        timeout=30,
    )
    assert response.status_code == 403


def _ready(base: str) -> dict:
    deadline = time.monotonic() + 120
    while True:
        status = _call(base, "status", [])[-1][1][0]
        if status["state"] == "ready" or time.monotonic() > deadline:
            return status
        time.sleep(0.25)


def test_item40_space_owner_only_a_visitor_cannot_load_a_model_for_everyone(space):
    port, _, log = space
    base = f"http://127.0.0.1:{port}"
    assert _ready(base)["model_id"] == "lfm2-vl-tiny"
    refused = _call(base, "load_model", ["lfm2-moe-tiny", "fp32"])
    assert refused[-1][0] == "error"
    assert "Only the owner of this app can load a model" in str(refused[-1][1])
    assert _call(base, "status", [])[-1][1][0]["model_id"] == "lfm2-vl-tiny"  # unchanged
    wrong = {**AS_VISITOR, "Authorization": "Bearer not-the-token"}
    assert _call(base, "load_model", ["lfm2-moe-tiny", "fp32"], wrong)[-1][0] == "error"
    loaded = _call(base, "load_model", ["lfm2-moe-tiny", "fp32"], AS_OWNER)
    assert loaded[-1][0] == "complete" and loaded[-1][1][0]["model_id"] == "lfm2-moe-tiny"
    assert _call(base, "load_model", ["lfm2-vl-tiny", "fp32"], AS_OWNER)[-1][0] == "complete"
    assert "Traceback" not in _ours(log.read_text())


class _Upstream(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible server that lists one model (enough to connect at start)."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = json.dumps({"object": "list", "data": [{"id": "upstream-model"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_space_an_endpoints_address_and_fields_are_shown_to_no_visitor(tiny_paths, tmp_path):
    """The owner starts the Space with --endpoint (its host is named, so the loopback is let
    in): visitors read that an endpoint answers, never where it is or what is sent to it."""
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{upstream.server_address[1]}"
    port = _space_port()
    env = _space_env(tmp_path, port)
    secret = '{"top_k": 20, "note": "an-owner-secret"}'
    log = tmp_path / "app.log"
    flags = ["--endpoint", f"http://{address}/v1", "--endpoint-body", secret]
    try:
        with _serving(env, port, log, *flags):
            base = f"http://127.0.0.1:{port}"
            status = _call(base, "status", [])[-1][1][0]
            assert status["model_id"] == "upstream-model" and status["endpoint"], status
            page = httpx.get(f"{base}/", headers=AS_VISITOR, timeout=30).text
            config = httpx.get(f"{base}/config", headers=AS_VISITOR, timeout=30).text
            reply = _call(base, "generate", ["Hi", None, '{"max_new_tokens": 4}'])  # its sentence
            metrics = _call(base, "last_metrics", [])
            for seen in (json.dumps(status), page, config, json.dumps(reply), json.dumps(metrics)):
                assert address not in seen and "an-owner-secret" not in seen
    finally:
        upstream.shutdown()


# what a visitor sends to an event by its index: a value of the input's type, aimed at the
# shared state (a model to switch to, a level, an unreachable endpoint, a wrong token)
PROBE = {
    "dropdown": "lfm2-moe-tiny",
    "radio": "fp32",
    "textbox": "http://127.0.0.1:9/v1",
    "number": 1,
    "slider": 1,
    "checkbox": False,
}


def _join(http: httpx.Client, base: str, session: str, index: int, data: list) -> dict | str:
    """Join the queue with event `index` as a page's script does; its completion message (or
    the refusal's status code)."""
    joined = http.post(
        f"{base}/gradio_api/queue/join",
        json={"data": data, "fn_index": index, "session_hash": session,
              "event_data": None, "trigger_id": None},
    )  # fmt: skip
    if joined.status_code != 200:
        return str(joined.status_code)
    with http.stream(
        "GET", f"{base}/gradio_api/queue/data", params={"session_hash": session}
    ) as stream:
        for line in stream.iter_lines():
            message = json.loads(line[6:]) if line.startswith("data: ") else {}
            if message.get("msg") == "process_completed":
                return message
    return "no completion"


def _every_event_as(base: str, session: str) -> list[str]:
    """Join the queue with every event index of the page, as a visitor's script can; the
    messages each ended with."""
    with httpx.Client(headers=AS_VISITOR, timeout=60) as http:
        config = http.get(f"{base}/config").json()
        kinds = {c["id"]: c.get("type", "") for c in config["components"]}
        ended = []
        for index, dependency in enumerate(config["dependencies"]):
            if not dependency.get("backend_fn"):
                continue
            data = [PROBE.get(kinds.get(i, "")) for i in dependency.get("inputs", [])]
            done = _join(http, base, session, index, data)
            ended.append(f"{index}: {done.get('success') if isinstance(done, dict) else done}")
        return ended


def _event_of(config: dict, elem_id: str, trigger: str) -> int:
    """The index of the event `trigger` of the component with `elem_id`."""
    ids = {c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == elem_id}
    for index, dependency in enumerate(config["dependencies"]):
        if any(t[0] in ids and t[1] == trigger for t in dependency.get("targets", [])):
            return index
    raise AssertionError(f"no {trigger} event on #{elem_id}")


def test_item40_space_no_event_index_lets_a_visitor_change_the_shared_model(space):
    port, _, log = space
    base = f"http://127.0.0.1:{port}"
    before = _ready(base)
    ended = _every_event_as(base, "visitor-b-probe")
    assert len(ended) > 20, ended  # every event of the page was tried
    after = _call(base, "status", [])[-1][1][0]
    shared = ("model_id", "quantization", "endpoint", "state")
    assert {k: after[k] for k in shared} == {k: before[k] for k in shared}, ended
    # gradio logs its own refusals of malformed event data (an example index that is None, a
    # value of the wrong type) with a traceback; none may pass through lfmui's code
    ours = [line for line in log.read_text().splitlines() if 'File "' in line]
    assert not [line for line in ours if "/lfmui/" in line or "app.py" in line], ours[:20]
    assert "ERROR lfmui" not in log.read_text()


API_KEY = "sk-space-rehearsal"


def _v1(base: str, model: str, tokens: int = 24) -> tuple[float, float, dict]:
    started = time.monotonic()
    answer = httpx.post(
        f"{base}/v1/chat/completions",
        headers={**AS_VISITOR, "Authorization": f"Bearer {API_KEY}"},
        json={"model": model, "messages": [{"role": "user", "content": "Hi"}],
              "max_tokens": tokens},
        timeout=120,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    return started, time.monotonic(), answer.json()


def test_space_two_visitors_two_models_and_the_owners_endpoint(tiny_paths, tmp_path):
    """A pool of two on a Space: A uses lfm2-vl-tiny while B's pick loads lfm2-moe-tiny into
    the pool; both answer at the same time, each from its own model. B, through every event of
    the page, cannot connect, unload or change A's model. The owner's token connects an
    endpoint, which both visitors' pickers then list without its address or key."""
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{upstream.server_address[1]}"
    port = _space_port()
    env = _space_env(
        tmp_path,
        port,
        LFMUI_ADMIN_TOKEN=ADMIN_TOKEN,
        LFMUI_API_KEY=API_KEY,
        LFMUI_POOL_GIB="1.2",  # two tiny models (about 0.51 GiB each), not three
        LFMUI_LOAD_ON_DEMAND="1",
        LFMUI_ENDPOINT_HOSTS="127.0.0.1",  # the owner names the endpoint's host
    )
    log = tmp_path / "app.log"
    try:
        with _serving(env, port, log):
            base = f"http://127.0.0.1:{port}"
            assert _ready(base)["model_id"] == "lfm2-vl-tiny"
            # B's pick loads into the pool at auto, the fastest level here (it varies by CPU)
            assert _v1(base, "lfm2-moe-tiny", 2)[2]["model"].startswith("lfm2-moe-tiny@")
            answers: dict[str, tuple] = {}
            visitors = [
                threading.Thread(target=lambda m=m: answers.__setitem__(m, _v1(base, m, 48)))
                for m in ("lfm2-vl-tiny", "lfm2-moe-tiny")
            ]
            for visitor in visitors:
                visitor.start()
            for visitor in visitors:
                visitor.join(180)
            (a_start, a_end, a), (b_start, b_end, b) = (
                answers["lfm2-vl-tiny"],
                answers["lfm2-moe-tiny"],
            )
            assert a["model"].startswith("lfm2-vl-tiny@") and b["model"].startswith(
                "lfm2-moe-tiny@"
            )
            assert a["choices"][0]["message"] is not None and b["choices"][0]["message"] is not None
            assert a_start < b_end and b_start < a_end  # at the same time

            ended = _every_event_as(base, "visitor-b-probe")
            assert len(ended) > 20, ended
            status = _call(base, "status", [])[-1][1][0]
            assert (status["model_id"], status["endpoint"]) == ("lfm2-vl-tiny", None), ended
            assert _v1(base, "lfm2-vl-tiny", 2)[2]["model"] == a["model"]  # A's model, still here

            with httpx.Client(headers=AS_VISITOR, timeout=60) as http_client:
                config = http_client.get(f"{base}/config").json()
                connect = _event_of(config, "endpoint-connect", "click")
                url = f"http://{address}/v1"
                secret = "sk-upstream-secret"
                visitor = [url, None, secret, "", "lfm2-vl-tiny", "not-the-token"]
                _join(http_client, base, "visitor-b-connect", connect, visitor)
                assert _call(base, "status", [])[-1][1][0]["endpoint"] is None
                owner = [url, None, secret, "", "lfm2-vl-tiny", ADMIN_TOKEN]
                done = _join(http_client, base, "the-owner", connect, owner)
                assert isinstance(done, dict) and done.get("success"), done
                refresh = _event_of(config, "your-model", "focus")
                for session in ("visitor-a", "visitor-b"):
                    shown = _join(http_client, base, session, refresh, [None])
                    assert isinstance(shown, dict) and shown.get("success"), shown
                    said = json.dumps(shown)
                    assert "upstream-model (endpoint)" in said and "endpoint:upstream-model" in said
                    assert address not in said and secret not in said
            listed = httpx.get(
                f"{base}/v1/models",
                headers={**AS_VISITOR, "Authorization": f"Bearer {API_KEY}"},
                timeout=30,
            ).text
            assert "upstream-model" in listed and address not in listed and secret not in listed
            # the probe's malformed values get gradio's own tracebacks; none passes through lfmui
            frames = [line for line in log.read_text().splitlines() if 'File "' in line]
            assert not [f for f in frames if "/lfmui/" in f or "app.py" in f], frames[:20]
            assert "ERROR lfmui" not in log.read_text()
    finally:
        upstream.shutdown()


def _sign_in(component: dict) -> bool:
    """gradio's LoginButton (a template of Button), as lfmui marks it."""
    return component.get("props", {}).get("elem_id") == "sign-in"


def test_space_with_hf_oauth_shows_the_sign_in_button_and_none_without(space, tmp_path):
    """hf_oauth in the header makes the Space set OAUTH_*: the Models tab then offers the
    owner a Hugging Face sign-in; without it (the other rehearsal) there is no button."""
    port, _, _ = space
    plain = httpx.get(f"http://127.0.0.1:{port}/config", headers=AS_VISITOR, timeout=30).json()
    assert not [c for c in plain["components"] if _sign_in(c)]
    signed = _space_port()
    env = _space_env(  # what a Space with `hf_oauth: true` sets (the rehearsal's own values)
        tmp_path,
        signed,
        OAUTH_CLIENT_ID="rehearsal-client",
        OAUTH_CLIENT_SECRET="rehearsal-secret",
        OAUTH_SCOPES="openid profile",
        OPENID_PROVIDER_URL="https://huggingface.co",
    )
    log = tmp_path / "app.log"
    with _serving(env, signed, log):
        base = f"http://127.0.0.1:{signed}"
        config = httpx.get(f"{base}/config", headers=AS_VISITOR, timeout=30).json()
        buttons = [c for c in config["components"] if _sign_in(c)]
        assert len(buttons) == 1
        assert "Sign in with Hugging Face" in json.dumps(buttons[0])
        # (its /login/huggingface asks huggingface.co for the provider: not from here)
        assert "Traceback" not in _ours(log.read_text())
