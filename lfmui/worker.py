"""The generation thread: every reply's generate() runs on one thread (``generation_worker``),
which takes clients in turn (``FairWorker``) so one client's queued replies delay another's by
at most about one reply, and refuses a client past ``MAX_QUEUED_PER_CLIENT`` with a sentence.
The thread is made anew after a fork (a ZeroGPU worker) and uses the cores torch may use.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
from typing import Any

from lfmui.errors import TooManyRequests

log = logging.getLogger(__name__)
MAX_QUEUED_PER_CLIENT = 16  # replies one client may have waiting or running at once


class FairWorker:
    """The one long-lived thread that runs generate(), taking clients in turn.

    Each client (a browser session, a /v1 caller) has its own line of jobs; the thread takes
    the oldest job of the next client in rotation, so a client with many queued replies delays
    another's one reply by at most one of its own. A client may hold MAX_QUEUED_PER_CLIENT
    jobs; one more is refused with a sentence (TooManyRequests) before it queues.
    """

    def __init__(self, per_client: int = MAX_QUEUED_PER_CLIENT) -> None:
        self.per_client = per_client
        self._lines: dict[str, list[tuple[concurrent.futures.Future, Any]]] = {}
        self._turn: list[str] = []  # clients with waiting jobs, in the order they are served
        self._running: str | None = None  # the client whose job runs now
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._serve, name="lfmui-generate", daemon=True)
        self._thread.start()

    def submit(self, fn: Any, client: str = "") -> concurrent.futures.Future:
        """Queue `fn` in `client`'s line; its Future (cancel() drops it while it waits)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._ready:
            line = self._lines.setdefault(client, [])
            line[:] = [job for job in line if not job[0].cancelled()]
            held = len(line) + (self._running == client)
            if held >= self.per_client:
                raise TooManyRequests(
                    f"You have {held} replies waiting or running already; wait for one to "
                    "finish, then send again."
                )
            line.append((future, fn))
            if client not in self._turn and client != self._running:
                self._turn.append(client)
            self._ready.notify()
        return future

    def waiting(self) -> dict[str, int]:
        """Jobs waiting or running, per client."""
        with self._ready:
            held = {c: len(line) for c, line in self._lines.items() if line}
            if self._running is not None:
                held[self._running] = held.get(self._running, 0) + 1
            return held

    def _next(self) -> tuple[concurrent.futures.Future, Any]:
        with self._ready:
            while True:
                while not self._turn:
                    self._ready.wait()
                client = self._turn.pop(0)
                line = self._lines.get(client)
                if line:  # (a line whose jobs were all cancelled is empty)
                    future, fn = line.pop(0)
                    self._running = client
                    return future, fn
                self._lines.pop(client, None)

    def _serve(self) -> None:
        while True:
            future, fn = self._next()
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as exc:  # the caller's Future reports it
                        future.set_exception(exc)
            finally:
                with self._ready:
                    client, self._running = self._running, None
                    if self._lines.get(client):
                        self._turn.append(client)  # its next job waits for the others' turns
                    else:
                        self._lines.pop(client, None)
                del future, fn  # nothing of a finished reply stays referenced here


_worker: FairWorker | None = None
_worker_lock = threading.Lock()


def _forget_worker() -> None:
    """In a forked child (a ZeroGPU worker) the parent's generation thread does not exist:
    the child starts its own on its first reply."""
    global _worker, _worker_lock
    _worker, _worker_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_worker)


def generation_worker() -> FairWorker:
    """The one long-lived thread that runs generate(), fair across clients (FairWorker).

    torch.compile's CUDA graphs are recorded per thread: a new thread per request would record
    them again on every reply (measured: +144 ms TTFT and 0.73x decode on an H100). One thread
    also means one generation at a time on the accelerator.
    """
    global _worker
    with _worker_lock:
        if _worker is None:
            _worker = FairWorker()
            _use_the_cores(_worker)
        return _worker


def _use_the_cores(worker: FairWorker) -> None:
    """An OpenMP team as wide as the cores on the generation thread, teams of one elsewhere
    (lfmui/__init__.py says why). torch.set_num_threads sets the calling thread's team and the
    default that threads yet to start take up, so the worker widens its own team, then this
    thread sets the default back to one. A user's OMP_NUM_THREADS is left to rule."""
    import torch

    import lfmui

    if lfmui.USER_THREADS is not None:
        return
    cores = lfmui.usable_cores()

    def widen() -> None:
        torch.get_num_threads()  # torch's per-thread set-up first: it would apply the default
        torch.set_num_threads(cores)

    worker.submit(widen).result()
    torch.set_num_threads(1)
