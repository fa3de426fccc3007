"""How events that use the model share the server: one concurrency group for all of them.

Every event that loads, unloads or generates joins the "accelerator" group. The group admits a
few events at once so the next request's image preprocessing overlaps the current reply; the
engine's single generation thread still runs one generate() at a time, and the time a reply
waits for it is reported as its queue wait. gradio takes the smallest limit any event of a group
names, so each event names this one. Within a tab, a session runs one reply at a time
(`Running`).
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Iterator

from lfmui.errors import InputError

ACCELERATOR = {"concurrency_id": "accelerator", "concurrency_limit": 4}


# One reply's life in a session, whichever way it started (send, regenerate, edit, a tool turn,
# an example): the only states and moves there are. What the message box shows follows from
# the state alone (chat_reply.box_for): the send arrow when idle, Stop otherwise.
IDLE, STREAMING, STOPPING = "idle", "streaming", "stopping"
TRANSITIONS = {
    (IDLE, "start"): STREAMING,
    (STREAMING, "stop"): STOPPING,
    (STREAMING, "end"): IDLE,
    (STOPPING, "stop"): STOPPING,
    (STOPPING, "end"): IDLE,
    (IDLE, "stop"): IDLE,  # Stop or Escape with nothing running changes nothing
}


class Running:
    """Each session's reply in one tab, as a state (TRANSITIONS) held by its Stop flag: a
    second start while one runs is refused with `busy`.

    The generator that streams a reply holds its flag; this registry holds only a weak
    reference, so a generator that is dropped without being closed frees the session too.
    """

    def __init__(self, busy: str) -> None:
        self.busy = busy  # what a second request while one runs is told
        self._flags: dict[str, weakref.ref[threading.Event]] = {}
        self._ended: dict[str, threading.Event] = {}  # set once the session's reply has ended
        self._lock = threading.Lock()

    def flag(self, session: str) -> threading.Event | None:
        ref = self._flags.get(session)
        return ref() if ref is not None else None

    def state(self, session: str) -> str:
        """IDLE, STREAMING, or STOPPING (Stop pressed, the reply not yet ended)."""
        flag = self.flag(session)
        if flag is None:
            return IDLE
        return STOPPING if flag.is_set() else STREAMING

    def stop(self, session: str) -> str:
        """Stop the session's reply (within a token); the state it is now in."""
        state = self.state(session)
        flag = self.flag(session)
        if flag is not None:
            flag.set()
        return TRANSITIONS[(state, "stop")]

    def stop_and_wait(self, session: str, timeout: float) -> bool:
        """Stop the session's running reply and wait until it has ended (its last update is
        then sent): False if it is still running after `timeout` seconds."""
        with self._lock:
            flag, ended = self.flag(session), self._ended.get(session)
        if flag is None or ended is None:
            return True
        flag.set()
        del flag  # held only by the reply: a dropped generator frees the session
        deadline = time.monotonic() + timeout
        while not ended.wait(0.05):
            if self.flag(session) is None:
                return True
            if time.monotonic() > deadline:
                return False
        return True

    @contextlib.contextmanager
    def one(self, session: str) -> Iterator[threading.Event]:
        """The Stop flag of a new reply in `session`; a second one while it runs is refused
        (before any output changes, so the chat and the message box stay as they were)."""
        with self._lock:
            if (self.state(session), "start") not in TRANSITIONS:
                raise InputError(self.busy)
            flag, ended = threading.Event(), threading.Event()
            self._flags[session] = weakref.ref(flag)
            self._ended[session] = ended
        try:
            yield flag
        finally:
            with self._lock:
                if self.flag(session) is flag:
                    del self._flags[session]
                if self._ended.get(session) is ended:
                    del self._ended[session]
            ended.set()
