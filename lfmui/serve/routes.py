"""The OpenAI-compatible routes on the app's server (``lfmui.serve.completions`` does the work).

``routes(manager)`` gives Starlette routes that ``launch_settings`` hands to the server before
gradio's own. Blocking work (checking images, generating) runs in the server's thread pool; a
stream's client that goes away sets the reply's Stop flag and its generator is closed as soon as
the generation thread lets go of it, so the model's lease is never left behind.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from lfmui import turns
from lfmui.access import Access
from lfmui.errors import read_json
from lfmui.manager import ModelManager
from lfmui.serve import completions, protocol
from lfmui.serve.guard import client_address

MAX_IN_FLIGHT = 4  # /v1 replies at once, all callers together (like the page's events)
MAX_WAITING = 32  # more wait their turn without holding a thread; past these, 429 at once


class Door:
    """At most `most` /v1 replies run at once; up to `waiting` more wait in the event loop
    (no thread of the server's pool is held while waiting, so the page stays quick), and one
    more is turned away with 429. Waiting callers are let in in turn: the caller served least
    recently first, so one caller's many requests do not keep another's out."""

    def __init__(self, most: int = MAX_IN_FLIGHT, waiting: int = MAX_WAITING) -> None:
        self.most, self.waiting, self.inside = most, waiting, 0
        self._waiters: dict[int, str] = {}  # ticket: caller, in arrival order
        self._served: dict[str, int] = {}  # caller: the admission it last had
        self._count = 0
        self._lock = threading.Lock()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def _admit(self, ticket: int, client: str) -> bool:
        """Under the lock: let `ticket` in if there is room and it is its caller's turn."""
        if self.inside >= self.most:
            return False
        turn = min(self._waiters, key=lambda t: (self._served.get(self._waiters[t], -1), t))
        if turn != ticket:
            return False
        del self._waiters[ticket]
        self.inside += 1
        self._count += 1
        self._served[client] = self._count
        return True

    async def enter(self, client: str = "") -> bool:
        with self._lock:
            if len(self._waiters) >= self.waiting and self.inside >= self.most:
                return False
            self._count += 1
            ticket = self._count
            self._waiters[ticket] = client
        try:
            while True:
                with self._lock:
                    if self._admit(ticket, client):
                        return True
                await asyncio.sleep(0.02)
        finally:
            with self._lock:
                self._waiters.pop(ticket, None)
                if len(self._served) > 4 * (self.most + self.waiting):  # bounded
                    waiting = set(self._waiters.values())
                    self._served = {c: n for c, n in self._served.items() if c in waiting}

    def leave(self) -> None:
        with self._lock:
            self.inside -= 1


def caller(request: Request) -> str:
    """Who sends a /v1 request, for taking turns (guard.client_address: never a header the
    caller sets)."""
    peer = request.client.host if request.client else None
    return "v1:" + client_address(request.headers.get("x-forwarded-for"), peer)


def routes(
    manager: ModelManager,
    access: Access | None = None,
    door: Door | None = None,
    chat_turn: Callable[..., Iterator[Any]] = turns.chat_turn,
) -> list[Route]:
    """``GET /v1/models`` and ``POST /v1/chat/completions``; `chat_turn` is turns.chat_turn or
    the UI's wrapper of it (on ZeroGPU, run in a GPU worker)."""
    v1 = _V1(manager, access or Access.configured(), door or Door(), chat_turn)
    return [
        Route("/v1/models", v1.models, methods=["GET"]),
        Route("/v1/chat/completions", v1.chat_completions, methods=["POST"]),
    ]


class _V1:
    """The two routes over one manager: thin, each a check, then serve.protocol and
    serve.completions."""

    def __init__(self, manager: ModelManager, access: Access, door: Door, chat_turn) -> None:
        self.manager, self.access, self.door, self.chat_turn = manager, access, door, chat_turn

    def refusal(self, request: Request) -> JSONResponse | None:
        """401 in OpenAI's shape unless the request carries the key /v1 asks for."""
        why = self.access.api_refusal(request.headers)
        if not why:
            return None
        body = protocol.ApiError(why, 401).body()
        body["error"]["code"] = "invalid_api_key"
        return JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})

    async def models(self, request: Request) -> JSONResponse:
        return self.refusal(request) or JSONResponse(completions.models(self.manager))

    async def chat_completions(self, request: Request):
        refused = self.refusal(request)
        if refused is not None:
            return refused
        try:
            body = read_json(await request.body(), "The body (send a JSON object)")
            chat = await run_in_threadpool(protocol.parse_request, body, self.manager)
        except Exception as exc:  # every refusal is an OpenAI-shaped answer
            return _error(protocol.refused(exc))
        try:
            admitted = await self.door.enter(caller(request))
        except BaseException:  # the caller left while waiting its turn
            shutil.rmtree(chat.folder, ignore_errors=True)
            raise
        if not admitted:
            shutil.rmtree(chat.folder, ignore_errors=True)
            busy = protocol.ApiError(
                f"{self.door.most} /v1 replies are running and {self.door.waiting} waiting "
                "already; retry in a few seconds.",
                429,
            )
            return JSONResponse(busy.body(), status_code=429, headers={"Retry-After": "2"})
        return await self._answer(chat, caller(request))

    async def _answer(self, chat: protocol.ChatRequest, client: str):
        """The admitted request's reply, whole or streamed; its end lets the next one in."""
        stop = threading.Event()
        records = completions.run(self.manager, chat, stop, client, self.chat_turn)
        model = chat.answered_by  # the model that answers, as OpenAI names its snapshot
        streaming = None
        try:
            if not chat.stream:
                done = completions.completion(model, await run_in_threadpool(list, records))
                return JSONResponse(done, headers=chat.headers())
            stream = completions.chunks(model, records, chat.include_usage)
            first = await run_in_threadpool(next, stream)  # errors before any byte is a 4xx
            streaming = StreamingResponse(
                _events(first, stream, records, stop, chat.folder, self.door.leave),
                media_type="text/event-stream",
                headers=chat.headers(),
            )
            return streaming
        except Exception as exc:
            return _error(protocol.refused(exc))
        finally:  # answered, refused, or the caller left (cancelled): the reply ends here
            if streaming is None:
                _close_later(records, stop, chat.folder, self.door.leave)


async def _events(first, stream, records, stop: threading.Event, folder: str, done: Any):
    try:
        yield _sse(first)
        async for payload in iterate_in_threadpool(stream):
            yield _sse(payload)
        yield "data: [DONE]\n\n"
    except Exception as exc:  # after the headers: the error as the stream's last event
        yield _sse(protocol.refused(exc).body())
    finally:  # also when the client went away and the server cancelled this task
        _close_later(records, stop, folder, done)


def _close_later(records: Iterator[dict], stop: threading.Event, folder: str, done: Any) -> None:
    """Stop the reply and close its generator (which releases the model's lease) once the
    generation thread hands it back; remove the request's images; then `done` (the door)."""
    stop.set()

    def close() -> None:
        for _ in range(600):
            try:
                records.close()
                break
            except ValueError:  # "generator already executing": its thread is finishing a step
                time.sleep(0.05)
        shutil.rmtree(folder, ignore_errors=True)
        done()

    threading.Thread(target=close, name="lfmui-v1-close", daemon=True).start()


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _error(error: protocol.ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)
