"""Issue 18: a fuzz run (hypothesis) over the API's JSON inputs and session import.

Each input is random JSON-ish data (numbers past any range, infinities, strings, nesting, keys
that exist and keys that do not). The property is the app's rule: every input is either served
or refused with one of our sentences; nothing escapes as another exception, and nothing is
logged at ERROR level (an unexpected error is logged with its traceback and the client reads
the safe line). The budget is fixed and derandomized, so CI runs the same examples each time;
``LFMUI_FUZZ_EXAMPLES`` raises it, and draws new examples, for a longer run by hand.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from lfmui import chats, session, tiling, turns
from lfmui.errors import InputError
from lfmui.settings import FIELDS as SETTING_KEYS
from lfmui.settings import bounds, slider
from lfmui.ui.api import PublicApi
from lfmui.ui.render import SAFE_LINE, to_chatbot

EXAMPLES = int(os.environ.get("LFMUI_FUZZ_EXAMPLES", "100"))
BUDGET = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize="LFMUI_FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0, 1, 2, 4, 64, 4096, 0.5, 1.9, "1", "DROP", "x", "", "\ud800"])
    | st.text(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


def _keyed(keys: list[str]) -> st.SearchStrategy[dict]:
    """Objects whose keys are mostly the ones that mean something, with values of any kind."""
    return st.dictionaries(st.sampled_from(keys) | st.text(max_size=8), values, max_size=6)


def _json(strategy: st.SearchStrategy) -> st.SearchStrategy[str]:
    """Serialized (NaN and Infinity included, as json.dumps writes them), or raw text now and
    then: not JSON, or nested past the parser's depth."""
    raw = st.sampled_from(["", "{", "[]", "null", "5", '"s"', "[" * 5000 + "]" * 5000, "{" * 3000])
    serialized = strategy.map(json.dumps)
    return st.one_of(serialized, serialized, serialized, serialized, raw, st.text(max_size=30))


def _near(low: float, high: float, whole: bool) -> st.SearchStrategy:
    """A value in range most of the time, else anything."""
    inside = st.integers(int(low), int(high)) if whole else st.floats(low, high)
    return st.one_of(*[inside] * 8, values)


def _valid_mostly(ranges: dict[str, st.SearchStrategy]) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({}, optional=ranges)


TILING = _valid_mostly(
    {
        name: st.one_of(st.booleans(), values)
        if name not in tiling.LIMITS
        else _near(*tiling.LIMITS[name], whole=True)
        for name in tiling.FIELDS
    }
) | _keyed(list(tiling.FIELDS))
HISTORY = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "tool"]) | values}
    ).map(lambda m: {**m, "content": "earlier words"})
    | values,
    max_size=3,
)
SETTINGS = _valid_mostly(
    {
        **{
            name: _near(*bounds(name), whole=slider(name)["whole"])
            for name in SETTING_KEYS
            if name not in ("max_new_tokens", "time_limit", "think")
        },
        "think": st.booleans() | values,
        "max_new_tokens": _near(1, 8, whole=True),  # a short reply: the budget is examples
        "tiling": TILING,
        "messages": HISTORY,
        "system": st.text(max_size=30) | values,
    }
) | _keyed([*SETTING_KEYS, "tiling", "messages", "system", "tool_choice", "max_rounds"])
SCHEMA = _keyed(["type", "properties", "required", "enum", "items", "description"])
TOOL = _keyed(["name", "description", "parameters"]) | st.fixed_dictionaries(
    {
        "name": st.sampled_from(["calculator", "get weather", "9lives", "a.b", "x" * 70, "ok_1"]),
        "description": st.text(max_size=30) | values,
        "parameters": SCHEMA | st.just({"type": "object", "properties": {"q": {"type": "string"}}}),
    }
)


@pytest.fixture(scope="module")
def api(vl_manager):
    return PublicApi(vl_manager)


@pytest.fixture
def errors_logged(caplog):
    """Call it at the start of an example (it forgets the earlier ones) and at its end: the
    messages logged at ERROR level in between."""
    caplog.set_level(logging.ERROR)

    def logged(start: bool = False) -> list[str]:
        if start:
            caplog.clear()
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]

    return logged


def _served_or_told(run) -> None:
    """`run()` is served, or refused with one of our sentences (never the safe line)."""
    try:
        run()
        event("served")
    except gr.Error as exc:
        assert exc.message != SAFE_LINE and exc.message.strip(), exc.message
        event("refused with a sentence")


@BUDGET
@given(settings_json=_json(SETTINGS), prompt=st.text(max_size=40))
def test_fuzz_generate_settings(api, errors_logged, settings_json, prompt):
    errors_logged(start=True)

    def run():
        stream = api.generate(prompt, None, settings_json, SimpleNamespace(session_hash="fuzz"))
        for count, _ in enumerate(stream):  # a valid request streams: two updates are enough
            if count == 1:
                stream.close()
                break

    _served_or_told(run)
    assert errors_logged() == []


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("fuzz") / "wide.png"
    Image.new("RGB", (1200, 300), (40, 90, 200)).save(path)
    return str(path)


@BUDGET
@given(tiling_json=_json(TILING))
def test_fuzz_tiling_json(api, picture, errors_logged, tiling_json):
    errors_logged(start=True)
    _served_or_told(lambda: api.plan_tiles(picture, tiling_json))
    assert errors_logged() == []


@BUDGET
@given(
    tools_json=_json(st.lists(TOOL, max_size=3)) | _json(TOOL),
    text=st.sampled_from(["", "<|tool_call_start|>[calculator(expression='1+1')]<|tool_call_end|>"])
    | st.text(max_size=40),
)
def test_fuzz_tools_json(api, errors_logged, tools_json, text):
    errors_logged(start=True)
    _served_or_told(lambda: api.parse_tool_calls(text, tools_json))
    settings_json = json.dumps({"max_new_tokens": 3, "max_rounds": 1})
    _served_or_told(lambda: api.tool_turn("Use a tool.", tools_json, settings_json))
    assert errors_logged() == []


def _png_url() -> str:
    import base64

    data = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(data, "PNG")
    return "data:image/png;base64," + base64.b64encode(data.getvalue()).decode()


IMAGE = st.fixed_dictionaries(
    {
        "name": st.text(max_size=12) | values,
        "data": st.sampled_from([_png_url(), "data:x", ""]) | values,
    }
)
MESSAGE = _keyed(["role", "text", "images", "status", "metrics", "tools", "messages", "error"]) | (
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "assistant", "system", "tool"]),
            "text": st.text(max_size=30) | values,
            "images": st.lists(IMAGE, max_size=3) | values,
            "metrics": _keyed(["ttft_s", "generated_tokens"]) | values,
            "tools": st.lists(_keyed(["name", "arguments", "ok", "output"]), max_size=2) | values,
            "messages": st.lists(_keyed(["role", "content"]), max_size=2) | values,
            "error": st.text(max_size=20) | values,
            "versions": st.lists(_keyed(["role", "text", "status"]), max_size=3) | values,
        }
    )
)
BUNDLE = st.fixed_dictionaries(
    {
        "format": st.sampled_from([session.FORMAT, session.FORMAT, "other"]) | values,
        "model": _keyed(["id", "quantization"]) | values,
        "system_prompt": st.text(max_size=20) | values,
        "sampling": SETTINGS | values,
        "tiling": TILING | values,
        "use_tools": values,
        "messages": st.lists(MESSAGE, max_size=5) | values,
    }
)


@BUDGET
@given(bundle=BUNDLE)
def test_fuzz_session_import(tmp_path_factory, bundle):
    path = tmp_path_factory.mktemp("bundle") / "session.json"
    path.write_text(json.dumps(bundle))
    before = set(Path(tempfile.gettempdir()).glob("lfmui-import-*"))
    try:
        restored = session.restore(session.read_bundle(str(path)))
    except InputError as exc:
        assert str(exc).strip()
        assert set(Path(tempfile.gettempdir()).glob("lfmui-import-*")) <= before  # none left
        return
    to_chatbot(restored.turns)  # shown, kept in the browser and sent on as a conversation
    chats.write([], "fuzz", restored.turns)
    turns.conversation_of(restored.turns, restored.system_prompt, True)
    images = [p for t in restored.turns for p in t.get("images", [])]
    assert len(images) <= turns.MAX_IMAGES_PER_CHAT
