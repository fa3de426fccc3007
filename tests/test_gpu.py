"""lfmui.ui.gpu on a ZeroGPU Space, rehearsed on CPU: `python app.py` with the real spaces
package, its device API stubbed on the loopback, and only the worker's GPU steps stubbed
(tests/helpers/zerogpu.py says which). Each request below crosses into a forked worker and back,
pickled both ways, as on a Space."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest
from helpers.zerogpu import SHIM, DeviceAPI
from test_space import (
    ADMIN_TOKEN,
    API_KEY,
    AS_OWNER,
    AS_VISITOR,
    _call,
    _join,
    _ours,
    _serving,
    _space_env,
    _space_port,
)

ROOT = Path(__file__).resolve().parents[1]
V1 = {**AS_VISITOR, "Authorization": f"Bearer {API_KEY}"}


def _zerogpu_env(folder: Path, port: int, api: DeviceAPI, **extra: str) -> dict[str, str]:
    """A ZeroGPU Space's environment: the Space's own, ZeroGPU's switch and device API, the
    cgroup and offload paths spaces reads and writes, and the shim (tests/helpers/zerogpu.py)."""
    (folder / "shim").mkdir(parents=True, exist_ok=True)
    (folder / "shim" / "sitecustomize.py").write_text(SHIM)
    (folder / "cgroup").write_text("0::/rehearsal\n1:devices:/rehearsal\n")
    return _space_env(
        folder,
        port,
        PYTHONPATH=os.pathsep.join([str(folder / "shim"), str(ROOT)]),
        SPACES_ZERO_GPU="true",
        SPACES_ZERO_DEVICE_API_URL=api.url,
        ZEROGPU_PROC_SELF_CGROUP_PATH=str(folder / "cgroup"),
        ZEROGPU_OFFLOAD_DIR=str(folder / "offload"),
        LFMUI_TEST_CUDA_INIT_MARK=str(folder / "cuda-init"),
        LFMUI_TEST_SLOW_GENERATE=str(folder / "slow-generate"),
        LFMUI_ADMIN_TOKEN=ADMIN_TOKEN,
        LFMUI_API_KEY=API_KEY,
        **extra,
    )


@pytest.fixture(scope="module")
def zerogpu_space(tiny_paths):
    """The Space, started with two models to load at start: lfm2-vl-tiny (the default) and
    lfm2-moe-tiny."""
    folder = Path(tempfile.mkdtemp(prefix="lfmui-zerogpu-"))
    (folder / "hf").mkdir()
    api = DeviceAPI()
    port = _space_port()
    env = _zerogpu_env(folder, port, api, LFMUI_PRELOAD="lfm2-moe-tiny@fp32")
    log = folder / "app.log"
    try:
        with _serving(env, port, log):
            yield f"http://127.0.0.1:{port}", api, folder, log
    finally:
        api.close()


def _index(base: str, api_name: str) -> int:
    config = httpx.get(f"{base}/config", headers=AS_VISITOR, timeout=30).json()
    for index, dependency in enumerate(config["dependencies"]):
        if dependency.get("api_name") == api_name:
            return index
    raise AssertionError(f"no /{api_name}")


def _as_session(base: str, session: str, api_name: str, data: list) -> dict:
    """Event `api_name` joined in `session` (as a page's script does); its completion."""
    with httpx.Client(headers=AS_VISITOR, timeout=180) as http:
        done = _join(http, base, session, _index(base, api_name), data)
    assert isinstance(done, dict), done
    return done


def _generate(base: str, session: str, prompt: str, **settings) -> tuple[dict, dict]:
    """/generate in `session`, then that session's /last_metrics: (completion, metrics)."""
    done = _as_session(base, session, "generate", [prompt, None, json.dumps(settings)])
    metrics = _as_session(base, session, "last_metrics", [])
    return done, metrics["output"]["data"][0]


def test_zerogpu_models_load_at_start_on_the_main_thread_and_cuda_never_starts_here(
    zerogpu_space,
):
    """Finding 1: the start-up load ran on a thread of its own, where spaces' CUDA emulation
    (thread-local) does not reach, so no model loaded. Now both models load before launch()
    on the main thread; the main process never starts CUDA; no GPU is asked for yet."""
    base, api, folder, log = zerogpu_space
    status = _call(base, "status", [])[-1][1][0]
    assert (status["state"], status["model_id"]) == ("ready", "lfm2-vl-tiny"), status
    listed = httpx.get(f"{base}/v1/models", headers=V1, timeout=30).json()["data"]
    assert {"lfm2-moe-tiny@fp32", "lfm2-vl-tiny@bf16"} <= {m["id"] for m in listed}, listed
    said = _ours(log.read_text())
    assert "start-up load" not in said and "Traceback" not in said, said[-3000:]
    assert not (folder / "cuda-init").exists()


def test_zerogpu_generate_reaches_the_worker_with_every_argument(zerogpu_space):
    """/generate crosses into the worker and back with its prompt, settings and pick: the
    metrics come from the worker's engine (the model that answered, the tokens asked for)."""
    base, api, _, _ = zerogpu_space
    asked = len(api.schedules)
    done, metrics = _generate(base, "gen-a", "Hello", max_new_tokens=5, model="lfm2-moe-tiny")
    assert done["success"], done
    assert metrics["model"] == "lfm2-moe-tiny@fp32" and 1 <= metrics["generated_tokens"] <= 5
    assert metrics["random_weights"] is True
    assert len(api.schedules) == asked + 1
    assert 10 <= int(api.schedules[-1]["durationSeconds"]) <= 120


def test_zerogpu_a_reused_worker_answers_with_the_model_picked_now(zerogpu_space):
    """Finding 4: spaces reuses an idle worker, which keeps the manager it was forked with.
    The pick is resolved before the worker is asked: after the owner makes lfm2-moe-tiny the
    default, the same worker answers with it. A model not loaded at start is refused."""
    base, api, _, log = zerogpu_space
    _, first = _generate(base, "reuse", "Hello", max_new_tokens=3)
    assert first["model"] == "lfm2-vl-tiny@bf16"
    workers = len(api.allowed)
    switched = _call(base, "load_model", ["lfm2-moe-tiny", "fp32"], AS_OWNER)
    assert switched[-1][0] == "complete", switched
    try:
        _, second = _generate(base, "reuse", "Hello", max_new_tokens=3)
        assert second["model"] == "lfm2-moe-tiny@fp32"
        assert len(api.allowed) == workers  # the same worker, reused
        refused = _call(base, "load_model", ["lfm2-moe-tiny", "bf16"], AS_OWNER)
        assert refused[-1][0] == "error"
        assert "On ZeroGPU the models are loaded when the Space starts" in str(refused[-1][1])
    finally:
        _call(base, "load_model", ["lfm2-vl-tiny", "bf16"], AS_OWNER)


def test_zerogpu_v1_replies_come_from_the_worker(zerogpu_space):
    """/v1 (a script's route, no gradio event) reaches the worker too: its reply names the
    model picked, and its usage counts the tokens asked for."""
    base, api, _, _ = zerogpu_space
    asked = len(api.schedules)
    reply = httpx.post(
        f"{base}/v1/chat/completions",
        headers=V1,
        json={"model": "lfm2-moe-tiny", "messages": [{"role": "user", "content": "Hi"}],
              "max_tokens": 4, "seed": 3},
        timeout=180,
    )  # fmt: skip
    assert reply.status_code == 200, reply.text
    assert reply.json()["model"] == "lfm2-moe-tiny@fp32"
    assert 1 <= reply.json()["usage"]["completion_tokens"] <= 4
    assert len(api.schedules) == asked + 1


def test_zerogpu_an_input_error_raised_in_the_worker_arrives_as_its_sentence(zerogpu_space):
    """Finding 5: spaces turns an exception raised in the worker into "ZeroGPU worker error"
    unless it is a gr.Error. The over-long prompt is refused inside the worker (chat_turn's
    check), and its sentence is what the caller reads."""
    base, api, _, _ = zerogpu_space
    asked = len(api.schedules)
    done, _ = _generate(base, "long", "x" * 100_001, max_new_tokens=3)
    assert len(api.schedules) == asked + 1  # it reached the worker
    assert not done["success"]
    said = done["output"]["error"]
    assert "100,000" in said and "ZeroGPU worker error" not in said, said


def test_zerogpu_the_tool_turn_reaches_the_worker_and_asks_for_its_rounds(zerogpu_space):
    """/tool_turn runs its rounds in the worker (arguments and the ToolTurn pickled across)
    and asks for a duration that counts every round (finding 6: it counted one)."""
    base, api, _, _ = zerogpu_space
    asked = len(api.schedules)
    tools_json = json.dumps([{"name": "get_weather", "builtin": True}])
    settings = json.dumps({"max_new_tokens": 400, "max_rounds": 2})
    trace = _call(base, "tool_turn", ["Weather in Paris?", tools_json, settings])
    assert trace[-1][0] == "complete", trace[-1]
    assert trace[-1][1][0]["rounds"], trace[-1]
    one_round = 10 + 400 * 0.05
    assert int(api.schedules[asked]["durationSeconds"]) > one_round


def test_zerogpu_a_worker_past_its_duration_ends_with_a_sentence_and_the_next_is_served(
    zerogpu_space,
):
    """Bad input: the worker outlives its time and is stopped (the device API kills it, as
    ZeroGPU does). The reply ends with a sentence naming the limit; the next request is
    served by a new worker."""
    base, api, folder, _ = zerogpu_space
    api.kill_after = 2.0
    (folder / "slow-generate").write_text("20")
    try:
        done, _ = _generate(base, "slow", "Hello", max_new_tokens=8)
    finally:
        api.kill_after = None
        (folder / "slow-generate").unlink()
    assert api.killed, "the worker was not stopped"
    assert not done["success"]
    said = done["output"]["error"]
    assert "ran past its GPU time on this Space" in said and " s for one reply" in said, said
    workers = len(api.allowed)
    again, metrics = _generate(base, "slow", "Hello", max_new_tokens=3)
    assert again["success"] and metrics["generated_tokens"] >= 1
    assert len(api.allowed) == workers + 1  # a new worker


def test_zerogpu_a_model_list_that_does_not_fit_the_gpu_is_refused_at_start(tmp_path):
    """Bad input: the models to load at start do not fit the GPU spaces reports. The start
    ends with a sentence naming what fits, before anything loads."""
    api = DeviceAPI()
    try:
        env = _zerogpu_env(
            tmp_path,
            _space_port(),
            api,
            LFMUI_PRELOAD="LFM2-8B-A1B@fp32,lfm2-8b-a1b-synthetic@fp32,LFM2-VL-1.6B@fp32",
        )
        env.pop("HF_HUB_OFFLINE")
        started = subprocess.run(
            [sys.executable, "app.py", "--synthetic", "--offline"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        api.close()
    assert started.returncode != 0
    said = started.stderr
    assert "more than the GPU's free memory" in said, said[-3000:]
    fit = "These fit: lfm2-vl-tiny@bf16 (0.5 GiB), LFM2-8B-A1B@fp32 (32.0 GiB)"
    assert fit in said and "these do not: LFM2-VL-1.6B@fp32" in said, said[-3000:]
    assert "Traceback" not in said and "loaded" not in said


@pytest.mark.browser
def test_zerogpu_the_chat_with_and_without_tools_answers_from_the_worker(zerogpu_space):
    """Finding 3, as a visitor meets it: the chat's reply, and its "Use tools" turn (which
    hands the worker the registry as a third positional argument: a TypeError before), both
    run in the worker and end in the chat without an error."""
    from playwright.sync_api import sync_playwright
    from test_browser import ARTIFACTS, CHROMIUM, SLOW, idle

    base, api, _, log = zerogpu_space
    asked = len(api.schedules)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(base)
            box = page.get_by_placeholder("Type a message, paste or drop an image…")
            box.wait_for(timeout=SLOW)
            for use_tools in (False, True):
                if use_tools:
                    if not page.get_by_label("Use tools").first.is_visible():
                        page.get_by_text("Generation settings").click()
                    page.get_by_label("Use tools").first.check()
                box.fill("What is 21 times 2?")
                box.press("Enter")
                page.locator("[data-testid=bot]").nth(int(use_tools)).wait_for(timeout=SLOW)
                idle(page, 180_000)
            page.screenshot(path=str(ARTIFACTS / "zerogpu-chat.png"), full_page=True)
            shown = page.locator("#chat-pane").inner_text()
        finally:
            browser.close()
    assert len(api.schedules) >= asked + 2, api.schedules[asked:]
    for wrong in ("Error", "error", "TypeError", "ZeroGPU worker"):
        assert wrong not in shown, shown
    assert "Traceback" not in _ours(log.read_text())
