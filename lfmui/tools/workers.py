"""Where tools run: worker processes, fresh interpreters that import only ``lfmui.tools``, at
most ``MAX_WORKERS`` at once, each reused call after call. A call that overruns its timeout
(counted once the function is loaded: importing its module is not the tool's time) is stopped by
killing its process group, so a hung tool holds nothing and the next call gets a fresh worker. A
tool's function travels by reference (defined at the top level of a module) and its value comes
back as JSON text. The picture a tool may read (``current_image``) goes along as a copy of at
most ``IMAGE_SIDE`` px, with its full size in ``info["size"]``.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

TIMEOUT_S = 2.0
MAX_WORKERS = 4
WORKER_START_S = 30.0  # a fresh interpreter importing lfmui.tools: about 0.3 s, more when busy
IMAGE_SIDE = 256
current_image: contextvars.ContextVar[Any] = contextvars.ContextVar("current_image", default=None)


def run(fn: Callable[..., Any], arguments: dict[str, Any], image: Any, timeout: float):
    """One call of `fn` in a worker, with a copy of `image` it may read: (True, its value as
    JSON text) or (False, what went wrong)."""
    return _workers.run(fn, arguments, _portable(image), timeout)


def _call(fn: Callable[..., Any], arguments: dict[str, Any]) -> tuple[bool, str]:
    """One call, in a worker: (True, its value as JSON text) or (False, what went wrong)."""
    try:
        value = fn(**arguments)
    except Exception as exc:  # the tool's own failure: reported to the model
        return False, f"failed: {type(exc).__name__}: {str(exc)[:300]}"
    try:
        text = value if isinstance(value, str) else json.dumps(value, allow_nan=False, default=str)
    except ValueError:
        return False, "returned a value that is not valid JSON."
    return True, text


def serve(fd: int) -> None:
    """A worker process's loop (``python -c "...serve(fd)"``): calls in, (ok, text) out, over
    the socket `fd`, until it closes."""
    from multiprocessing.connection import Connection

    connection = Connection(fd)
    connection.send("ready")
    while True:
        try:  # the function first: its module is imported here, outside the call's time
            fn = connection.recv()
        except (EOFError, OSError):
            return
        except Exception as exc:  # noqa: BLE001 - a module that cannot be imported here
            connection.send(f"could not be loaded: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        connection.send("ready")
        try:
            arguments, image = connection.recv()
        except (EOFError, OSError):
            return
        token = current_image.set(image)
        try:
            connection.send(_call(fn, arguments))
        finally:
            current_image.reset(token)


class _Workers:
    """Worker processes for tool calls: idle ones are reused; one whose call overruns is killed.

    A worker is a fresh interpreter that imports this module only (``subprocess``, not
    ``multiprocessing``: its children import the main script again, and ``app.py`` builds the
    whole app at import)."""

    def __init__(self) -> None:
        self._idle: list[tuple[subprocess.Popen, Any]] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_WORKERS)

    def run(
        self, fn: Callable[..., Any], arguments: dict[str, Any], image: Any, timeout: float
    ) -> tuple[bool, str]:
        if not self._slots.acquire(timeout=timeout):
            return False, f"did not start: {MAX_WORKERS} tool calls are running; try again."
        try:
            try:
                process, connection = self._take()
            except OSError as exc:
                return False, f"did not start: no worker process ({exc.strerror or exc})."
            try:
                connection.send(fn)  # loaded (its module imported) before the clock starts
                if not connection.poll(WORKER_START_S):
                    _kill(process, connection)
                    return False, f"did not start: its module took over {WORKER_START_S:g} s."
                loaded = connection.recv()
                if loaded != "ready":
                    self._give_back(process, connection)
                    return False, loaded
                connection.send((arguments, image))
                if connection.poll(timeout):
                    answer = connection.recv()
                    self._give_back(process, connection)
                    return answer
                _kill(process, connection)
                return False, f"did not finish within {timeout:g} s; it was stopped."
            except (EOFError, OSError, pickle.PicklingError):  # the worker died mid-call
                _kill(process, connection)
                return False, "failed: its worker process ended during the call."
        finally:
            self._slots.release()

    def _give_back(self, process: subprocess.Popen, connection: Any) -> None:
        with self._lock:
            self._idle.append((process, connection))

    def _take(self) -> tuple[subprocess.Popen, Any]:
        with self._lock:
            while self._idle:
                process, connection = self._idle.pop()
                if process.poll() is None:
                    return process, connection
                connection.close()
        from multiprocessing.connection import Connection

        ours, theirs = socket.socketpair()
        paths = os.pathsep.join(p for p in sys.path if p)  # a tool defined in any module here
        process = subprocess.Popen(
            [sys.executable, "-c", f"import lfmui.tools.workers as w; w.serve({theirs.fileno()})"],
            pass_fds=[theirs.fileno()],
            env={**os.environ, "PYTHONPATH": paths},
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: a kill takes what the tool started
        )
        theirs.close()
        connection = Connection(ours.detach())
        if not connection.poll(WORKER_START_S) or connection.recv() != "ready":
            _kill(process, connection)
            raise OSError(0, f"a worker did not start within {WORKER_START_S:g} s")
        return process, connection

    def running(self) -> list[int]:
        """The pids of the idle workers (for tests and the log)."""
        with self._lock:
            return [process.pid for process, _ in self._idle if process.poll() is None]


def _kill(process: subprocess.Popen, connection: Any) -> None:
    """Kill the worker and every process its tool started (its process group)."""
    with contextlib.suppress(OSError):
        os.killpg(process.pid, signal.SIGKILL)
    process.kill()
    process.wait(timeout=5)
    connection.close()


_workers = _Workers()


def _portable(image: Any) -> Any:
    """The picture a tool may read, small enough to send to a worker; its size kept."""
    if image is None:
        return None
    small = image.copy()
    small.thumbnail((IMAGE_SIDE, IMAGE_SIDE))
    small.info = {"size": image.size}
    return small
