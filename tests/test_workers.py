"""Where tools run (lfmui.tools.workers): a tool that raises or hangs becomes a result, a hung
or killed tool holds no worker and leaves no child, a tool reads a copy of the picture."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pytest

from lfmui import tools
from lfmui.errors import InputError
from lfmui.tools import workers

# where spawn_and_hang (run in a tool worker, which imports this module anew) writes its child's
# pid for the test to find
SPAWNED = Path(tempfile.gettempdir()) / f"lfmui-test-spawned-{os.getuid()}.pid"


def boom(x: int) -> int:
    """Raise.

    Args:
        x: Anything.
    """
    raise RuntimeError("kaput")


def hang() -> str:
    """Wait too long."""
    time.sleep(3600)
    return "late"


def spawn_and_hang() -> str:
    """Start a helper process, then wait too long."""
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    SPAWNED.write_text(str(child.pid))
    time.sleep(3600)
    return "late"


def test_item27_raising_and_hanging_tools_become_results():
    registry = {"boom": tools.Tool.from_function(boom), "hang": tools.Tool.from_function(hang)}
    raised = tools.execute({"name": "boom", "arguments": {"x": 1}}, registry)
    assert not raised.ok and "kaput" in raised.output
    started = time.monotonic()
    hung = tools.execute({"name": "hang", "arguments": {}}, registry, timeout=0.3)
    assert not hung.ok and "did not finish" in hung.output and time.monotonic() - started < 2


def test_hung_tool_pool_a_hung_tool_is_stopped_and_holds_no_worker():
    """issue 18, class 11: the tool pool's workers could be held forever by a hung tool."""
    import psutil

    registry = {"hang": tools.Tool.from_function(hang), **tools.BUILTINS}
    for _ in range(workers.MAX_WORKERS + 2):  # more hung calls than workers
        hung = tools.execute({"name": "hang", "arguments": {}}, registry, timeout=0.3)
        assert "did not finish within 0.3 s; it was stopped" in hung.output
    started = time.monotonic()
    done = tools.execute({"name": "calculator", "arguments": {"expression": "6*7"}}, registry)
    assert done.ok and done.output == "42" and time.monotonic() - started < 1.5
    alive = [
        child for child in psutil.Process().children() if "lfmui.tools" in " ".join(child.cmdline())
    ]
    # the hung ones were killed; the idle worker stays for the next call
    assert [w.pid for w in alive] == workers._workers.running() and len(alive) == 1


def test_hung_tool_pool_a_closure_cannot_be_a_tool():
    def local() -> str:
        """A closure."""
        return "x"

    with pytest.raises(InputError, match="top level of a module"):
        tools.Tool.from_function(local)
    with pytest.raises(InputError, match="top level of a module"):
        tools.Tool.from_function(lambda: 1)


def test_hung_tool_pool_image_facts_reads_a_copy_with_the_full_size():
    from PIL import Image

    token = tools.current_image.set(Image.new("RGB", (3000, 2000), (200, 10, 10)))
    try:
        result = tools.execute({"name": "image_facts", "arguments": {}}, tools.BUILTINS)
    finally:
        tools.current_image.reset(token)
    facts = json.loads(result.output)
    assert (facts["width"], facts["height"]) == (3000, 2000)
    assert facts["dominant_colours"][0]["hex"] == "#c80a0a"


def test_hung_tool_pool_a_killed_tool_takes_its_children_with_it():
    """Issue 26: a timed-out tool's child process outlived its killed worker."""
    import psutil

    SPAWNED.write_text("")
    registry = {"spawn": tools.Tool.from_function(spawn_and_hang)}
    hung = tools.execute({"name": "spawn", "arguments": {}}, registry, timeout=1.0)
    assert "did not finish within 1 s; it was stopped" in hung.output
    pid = int(SPAWNED.read_text())
    deadline = time.monotonic() + 5
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the tool's child outlived its worker"
        time.sleep(0.05)
