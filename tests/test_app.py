"""The app as it starts: app.py's flags and launch settings, ZeroGPU, the served settings, the
start refusing a pool that holds nothing, and the page's own events (ui/app.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_item05_launch_settings_and_vibe_mode_refusal(monkeypatch):
    from lfmui.offline import cache_dir
    from lfmui.ui import launch_settings

    settings = launch_settings()
    assert settings["server_name"] == "127.0.0.1" and settings["server_port"] == 7860
    assert settings["share"] is False and settings["enable_monitoring"] is False
    assert settings["mcp_server"] is False and settings["max_file_size"]
    assert str(cache_dir()) in settings["blocked_paths"] and str(ROOT) in settings["blocked_paths"]
    monkeypatch.setenv("GRADIO_VIBE_MODE", "1")
    with pytest.raises(SystemExit, match="GRADIO_VIBE_MODE"):
        launch_settings()


def test_cli_flags_parse():
    sys.path.insert(0, str(ROOT))
    import app

    args = app.parse_args(
        [
            "--model",
            "lfm2-moe-tiny",
            "--quantization",
            "fp32",
            "--offline",
            "--host",
            "0.0.0.0",
            "--port",
            "7861",
        ]
    )
    assert (args.model, args.quantization, args.offline, args.port) == (
        "lfm2-moe-tiny",
        "fp32",
        True,
        7861,
    )


def test_python_app_py_serves_the_offline_model(tmp_path):
    """The README's run command: `python app.py` serves and streams with the offline checkpoint."""
    import os
    import time

    from gradio_client import Client

    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        client = None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                client = Client(f"http://127.0.0.1:{port}", verbose=False)
                break
            except Exception:
                time.sleep(0.5)
        assert client is not None, "app.py did not start serving"
        text = ""
        while time.monotonic() < deadline:
            try:
                text = client.predict("Hello", [], '{"max_new_tokens": 8}', api_name="/generate")
                break
            except Exception:  # the start-up load may still be running
                time.sleep(0.5)
        assert isinstance(text, str)
        assert client.predict(api_name="/last_metrics")["generated_tokens"] >= 1
    finally:
        proc.terminate()
        proc.wait(10)


def _zerogpu_env() -> dict[str, str]:
    """A ZeroGPU Space's switch, with a device API address where nothing listens."""
    return {
        **os.environ,
        "SPACES_ZERO_GPU": "true",
        "SPACES_ZERO_DEVICE_API_URL": "http://127.0.0.1:9",
        "LFMUI_CACHE": os.environ["LFMUI_CACHE"],
        "HF_DEACTIVATE_ASYNC_LOAD": "1",  # as app.py sets it on ZeroGPU
    }


def test_zerogpu_wraps_the_gpu_functions():
    """With the spaces package and ZeroGPU's variable set, the app starts with its GPU entry
    points wrapped by spaces.GPU and compiled decode off."""
    code = (
        "from lfmui.ui import build_app, gpu; from lfmui import compiled; build_app(); "
        "import types; "
        "print(sorted(gpu.WRAPPED), all(hasattr(f, '__wrapped__') for f in gpu.WRAPPED.values()), "
        "compiled.decode_plan(types.SimpleNamespace(device='cuda', quantization='bf16'))[1], "
        "gpu.duration_for(gpu.one_round)([{'role': 'user', 'content': [{'type': 'image'}]}], "
        "settings={'max_new_tokens': 200}))"
    )
    env = _zerogpu_env()
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    last = out.stdout.strip().splitlines()[-1]
    assert last == (
        "['chat_turn', 'run_tool_turn', 'tool_turn'] True "
        "eager decode: on ZeroGPU each new GPU worker would compile again 23"
    )
    plain = subprocess.run(
        [sys.executable, "-c", "from lfmui.ui import gpu; print(gpu.zerogpu(), gpu.WRAPPED)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert plain.stdout.strip() == "False {}"  # elsewhere the plain functions


def test_item05_served_settings_and_one_accelerator_group(tiny_paths):
    """What the app is served with: upload cap, bounded queue, one concurrency group for every
    event that uses the model, sanitized chat HTML, no flagging, no share link, no monitoring,
    MCP off, model cache and repo blocked."""
    import gradio as gr

    from lfmui.offline import cache_dir
    from lfmui.ui import build_app, launch_settings

    demo = build_app()
    settings = launch_settings()
    assert settings["max_file_size"] == "20mb" and settings["share"] is False
    assert settings["enable_monitoring"] is False and settings["mcp_server"] is False
    assert {str(cache_dir()), str(ROOT)} <= set(settings["blocked_paths"])
    assert demo._queue.max_size == 64
    model_work = {
        "on_submit",
        "on_regenerate",
        "generate",
        "tool_turn",
        "load_model",
        "load",
        "unload",
        "on_run",
        "on_send",
        "on_compare",
    }
    groups = {
        (f.concurrency_id, f.concurrency_limit) for f in demo.fns.values() if f.name in model_work
    }
    assert groups == {("accelerator", 4)}
    blocks = list(demo.blocks.values())
    chatbots = [b for b in blocks if isinstance(b, gr.Chatbot)]
    assert chatbots and all(c.sanitize_html for c in chatbots)
    assert not any(getattr(b, "value", None) == "Flag" for b in blocks)


def test_clear_stops_a_running_reply_and_waits_for_its_last_update():
    """Clear against a streaming reply: the reply is stopped, and Clear answers only once the
    reply has ended, so the reply's last update cannot fill the cleared chat again."""
    import threading
    import time

    from lfmui.ui.running import Running

    running = Running("busy")
    sent: list[str] = []

    def reply():
        with running.one("s") as stop:
            while not stop.wait(0.01):
                sent.append("token")
            time.sleep(0.2)  # the stopped reply's last update takes a while
            sent.append("last update")

    worker = threading.Thread(target=reply)
    worker.start()
    while not sent:
        time.sleep(0.01)
    assert running.stop_and_wait("s", timeout=5)
    sent.append("cleared")
    worker.join()
    assert sent[-2:] == ["last update", "cleared"]
    assert running.stop_and_wait("nobody", timeout=0.1)  # nothing running: at once

    held = threading.Event()

    def deaf():  # a reply that ignores Stop: Clear gives up and says so
        with running.one("t"):
            held.wait(5)

    worker = threading.Thread(target=deaf)
    worker.start()
    while running.flag("t") is None:
        time.sleep(0.01)
    assert not running.stop_and_wait("t", timeout=0.2)
    held.set()
    worker.join()
    assert running.flag("t") is None


@pytest.mark.parametrize(
    "flags, environment, said",
    [
        (
            ["--pool-gib", "0.508", "--quantization", "fp32"],
            {},
            "the largest level that fits is bf16",
        ),
        (["--pool-gib", "0.1"], {}, "cannot hold lfm2-vl-tiny at any level here"),
        ([], {"LFMUI_POOL_GIB": "lots"}, "LFMUI_POOL_GIB='lots' is not a number of GiB"),
        (["--pool-gib", "-2"], {}, "--pool-gib must be a number of GiB above 0"),
        (["--preload", "lfm2-moe-tiny"], {}, "--preload keeps several models resident"),
        (["--pool-gib", "2"], {"LFMUI_PRELOAD": "gpt-9"}, "'gpt-9' is not a catalog id"),
        (
            ["--pool-gib", "0.8", "--quantization", "fp32"],
            {"LFMUI_PRELOAD": "lfm2-moe-tiny@fp32"},
            "These fit: lfm2-vl-tiny@fp32 (0.5 GiB); these do not: lfm2-moe-tiny@fp32",
        ),
        (["--pool-gib", "2", "--preload", "lfm2-moe-tiny@q9"], {}, "'q9' is not a quant"),
    ],
)
def test_a_pool_budget_that_holds_no_model_stops_the_start_with_a_sentence(
    tiny_paths, flags, environment, said
):
    """Bad input: a pool budget too small for the start-up model says so, and names the
    largest level that fits; a budget that is no number names its variable."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **environment}
    started = subprocess.run(
        [sys.executable, "app.py", "--offline", "--port", str(_free_port()), *flags],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode != 0
    assert said in started.stderr, started.stderr[-2000:]
    assert "Traceback" not in started.stderr


def test_zerogpu_the_chats_tool_turn_reaches_the_gpu_function_with_its_registry(tiny_paths):
    """issue 27, finding 3: the chat's "Use tools" calls gpu.tool_turn with the registry as a
    third positional argument; the ZeroGPU wrapper took two (a TypeError before any GPU).
    Here the call reaches spaces, which then fails to reach its device API (none here); the
    whole turn, in a worker, is rehearsed in tests/test_gpu.py."""
    code = (
        "from lfmui.ui import build_app, gpu; from lfmui import tools; "
        "from lfmui.manager import ModelManager; build_app(); "
        "manager = ModelManager(); manager.load('lfm2-vl-tiny', 'fp32'); "
        "steps = gpu.tool_turn(manager, [{'role': 'user', 'content': 'hi'}], "
        "dict(tools.BUILTINS), settings={'max_new_tokens': 4}); "
        "exec('try:\\n next(steps)\\nexcept Exception as exc:\\n "
        "print(type(exc).__name__, str(exc)[:300])')"
    )
    env = _zerogpu_env()
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env,
        timeout=180,
    )  # fmt: skip
    said = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-2000:]
    assert "positional argument" not in said, said
    assert said.startswith("ConnectError"), said  # spaces asked the device API for a GPU


def test_a_model_load_shows_one_progress_bar():
    """Load, Unload and the chat's model picker show their progress on one component (the
    status card, the chip), not one bar per output over dimmed content."""
    from lfmui.manager import ModelManager
    from lfmui.ui import build_app

    config = build_app(ModelManager()).config
    components = {c["id"]: c for c in config["components"]}

    def named(component):
        props = component.get("props", {})
        return props.get("value") if component["type"] == "button" else props.get("elem_id")

    switches = [
        dep
        for dep in config["dependencies"]
        if any(
            t[0] in components and named(components[t[0]]) in ("Load", "Unload", "chat-model")
            for t in dep["targets"]
        )
        and len(dep["outputs"]) > 1
    ]
    assert len(switches) == 3
    for dep in switches:
        assert dep["show_progress_on"] and len(dep["show_progress_on"]) == 1, dep["targets"]
