"""RequestGuard, ASGI middleware in front of gradio and /v1: who may call (``Allowed``: the Host
and Origin), a cap on request bodies, no files inlined as data URLs, uploads read in full with
per-request and per-client caps, no echoed request headers, nosniff and frame-ancestors on every
response. Each refusal is a sentence saying what to send instead. The rules and the caps:
docs/security.md#the-request-guard-lfmuiserveguard.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from lfmui.serve.hosts import Allowed, hostname

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES = 4 * 2**20  # a 100,000-character prompt is < 1 MB of JSON even fully escaped
# A file object's path or url holding a data: URL. Inside a JSON string every quote is escaped,
# so this matches keys of the payload, never text a user typed.
NOSNIFF = (b"x-content-type-options", b"nosniff")
INLINE_FILE = re.compile(rb'"(?:path|url)"\s*:\s*"data:', re.IGNORECASE)
TOO_LARGE = (
    "The request is over {mib} MB. Send at most 100,000 characters of text, and images as "
    "uploaded files (gradio_client's handle_file), not inline."
)
# /v1 (lfmui.serve.completions): images come inline as data: URLs, up to 4 per message
V1_MAX_BODY_BYTES = 32 * 2**20
V1_TOO_LARGE = (
    "The request is over {mib} MB. Send fewer or smaller images (each under 20 MB, at most 4 "
    "per message) and at most 100,000 characters of text."
)
INLINE = (
    "Images sent inline as data: URLs are refused. Send each image as an uploaded file "
    "(gradio_client's handle_file, or POST it to /gradio_api/upload first)."
)


# uploads (gradio's own cap is per file: max_file_size)
MAX_UPLOAD_FILES = 16  # a chat message takes 4 images; the Tools tab's and the import's one each
MAX_UPLOAD_BYTES = 64 * 2**20
CLIENT_UPLOAD_BYTES = 1 * 2**30
CLIENT_UPLOAD_FILES = 400
CLIENT_WINDOW_S = 3600.0
MAX_CLIENTS = 10_000
MIN_FREE_DISK = 1 * 2**30
UPLOAD_CHUNK = 2**20
# headers a response may carry with the same value as the request: the representation's own
SHARED_HEADERS = {
    b"content-type",
    b"content-length",
    b"content-encoding",
    b"content-language",
    b"connection",
    b"cache-control",
    b"date",
    b"vary",
    b"transfer-encoding",
}
NEVER_ECHOED = {b"cookie", b"authorization", b"proxy-authorization"}


class _UploadLedger:
    """What each client stored in the last CLIENT_WINDOW_S: (time, bytes, files) entries, for
    at most MAX_CLIENTS clients, the least recent forgotten first (a client's address can be
    forged, so the ledger must stay bounded)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, list[tuple[float, int, int]]] = OrderedDict()

    def room(self, client: str, size: int, files: int) -> bool:
        with self._lock:
            now = time.monotonic()
            kept = [e for e in self._entries.pop(client, []) if now - e[0] < CLIENT_WINDOW_S]
            self._entries[client] = kept  # now the most recent
            while len(self._entries) > MAX_CLIENTS:
                self._entries.popitem(last=False)
            stored = sum(e[1] for e in kept) + size
            count = sum(e[2] for e in kept) + files
            if stored > CLIENT_UPLOAD_BYTES or count > CLIENT_UPLOAD_FILES:
                return False
            kept.append((now, size, files))
            return True


class RequestGuard:
    """ASGI middleware: who may call, a size cap on request bodies, no inline files, bounded
    uploads, no echoed headers."""

    def __init__(
        self,
        app: App,
        max_body_bytes: int = MAX_BODY_BYTES,
        allowed: Allowed | None = None,
        uploads: Path | None = None,
    ) -> None:
        """`uploads`: the folder uploads are written to (the disk whose free room is kept)."""
        self.app = app
        self.uploads = uploads or Path(tempfile.gettempdir())
        self.max_body_bytes = max_body_bytes
        self.allowed = allowed or Allowed.configured()
        self.ledger = _UploadLedger()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        websocket = scope["type"] == "websocket"
        if not websocket:
            send = _headers_of_ours(send, scope)
        refusal = self._refusal(scope)
        if refusal is not None:
            if websocket:
                await send({"type": "websocket.close", "code": 1008, "reason": refusal[1][:120]})
            else:
                await _refuse(send, *refusal, scope.get("path", "").startswith("/v1/"))
            return
        if websocket or scope.get("method") != "POST":
            await self.app(scope, receive, send)
        elif _is_upload(scope):
            await self._upload(scope, receive, send)
        else:
            await self._bounded(scope, receive, send)

    def _refusal(self, scope: Scope) -> tuple[int, str] | None:
        host = _header(scope, b"host") or ""
        if not self.allowed.host_ok(host):
            name = host[:80] or "(none)"
            return 400, (
                f"This server does not answer to the host name {name!r}. Open it by its address "
                "(http://127.0.0.1:PORT); to reach it by this name (a proxy, a domain), start it "
                f"with --allow-host {hostname(host) or 'NAME'} (or LFMUI_ALLOWED_HOSTS)."
            )
        origin = _header(scope, b"origin")
        if origin is not None and not self.allowed.origin_ok(origin, host):
            return 403, (
                f"Requests from the page at {origin[:80]!r} are refused: only this app's own "
                "page may call it. To embed it in another page (a reverse proxy's), start it "
                "with --allow-origin ORIGIN (or LFMUI_ALLOWED_ORIGINS)."
            )
        return None

    async def _bounded(self, scope: Scope, receive: Receive, send: Send) -> None:
        v1 = scope.get("path", "").startswith("/v1/")  # OpenAI clients send images inline
        cap = V1_MAX_BODY_BYTES if v1 else self.max_body_bytes
        too_large = (V1_TOO_LARGE if v1 else TOO_LARGE).format(mib=cap // 2**20)
        declared = _content_length(scope)
        if declared is not None and declared > cap:
            await _refuse(send, 413, too_large, v1)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:  # read the (bounded) body, then hand it on unchanged
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > cap:
                await _refuse(send, 413, too_large, v1)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if not v1 and INLINE_FILE.search(body):
            await _refuse(send, 400, INLINE)
            return
        await self.app(scope, _replay([body], receive), send)

    async def _upload(self, scope: Scope, receive: Receive, send: Send) -> None:
        """An upload read whole into a file that vanishes when closed, counted (files are the
        multipart boundaries, which file data cannot contain), then handed to gradio."""
        declared = _content_length(scope)
        if declared is not None and declared > MAX_UPLOAD_BYTES:
            await _refuse(send, 413, UPLOAD_TOO_LARGE)
            return
        boundary = _boundary(scope)
        with tempfile.TemporaryFile() as spool:
            size, parts, tail, more = 0, 0, b"", True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return  # cut short: the spool goes with the with-block; gradio saw nothing
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > MAX_UPLOAD_BYTES:
                    await _refuse(send, 413, UPLOAD_TOO_LARGE)
                    return
                if boundary:
                    seen = tail + chunk
                    parts += seen.count(boundary)
                    tail = seen[-(len(boundary) - 1) :] if len(boundary) > 1 else b""
                    if parts - 1 > MAX_UPLOAD_FILES:
                        await _refuse(send, 413, UPLOAD_TOO_MANY)
                        return
                spool.write(chunk)
                more = message.get("more_body", False)
            files = max(parts - 1, 0)  # the closing delimiter is the last boundary
            if not self._disk_has_room(size):
                await _refuse(send, 507, DISK_FULL)
                return
            if not self.ledger.room(_client(scope), size, files):
                await _refuse(send, 429, CLIENT_FULL)
                return
            spool.seek(0)
            chunks = iter(lambda: spool.read(UPLOAD_CHUNK), b"")
            await self.app(scope, _replay(chunks, receive), send)

    def _disk_has_room(self, size: int) -> bool:
        folder = self.uploads
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        try:
            return shutil.disk_usage(folder).free - size >= MIN_FREE_DISK
        except OSError:
            return True  # cannot tell: gradio's own write then fails with its message


UPLOAD_TOO_LARGE = (
    f"The upload is over {MAX_UPLOAD_BYTES // 2**20} MB. Send fewer files at once (each at most "
    "20 MB)."
)
UPLOAD_TOO_MANY = f"An upload holds at most {MAX_UPLOAD_FILES} files; send fewer at once."
CLIENT_FULL = (
    f"This client stored {CLIENT_UPLOAD_BYTES // 2**30} GB or {CLIENT_UPLOAD_FILES} files in "
    "the last hour, the most one client may; wait and try again, or reuse the images already "
    "uploaded."
)
DISK_FULL = (
    "The server's disk is almost full, so the upload was refused; free some space on it (or "
    "restart the app to clear old uploads) and try again."
)


def _replay(chunks: Any, receive: Receive) -> Receive:
    """A receive that hands on `chunks` as the body, then waits for the disconnect."""
    pending = iter(chunks)
    current = next(pending, b"")
    done = False

    async def replay() -> Message:
        nonlocal current, done
        if done:
            return await receive()  # after the body: wait for the disconnect, as servers do
        following = next(pending, None)
        message = {"type": "http.request", "body": current, "more_body": following is not None}
        if following is None:
            done = True
        else:
            current = following
        return message

    return replay


def _boundary(scope: Scope) -> bytes | None:
    kind = _header(scope, b"content-type") or ""
    found = re.search(r'boundary="?([^";]{1,200})"?', kind, re.IGNORECASE)
    return b"--" + found.group(1).encode() if found else None


def client_address(forwarded: str | None, peer: str | None) -> str:
    """Who sends a request, for per-client caps and taking turns: never a value the caller
    chose. Behind a Space's proxy, the address that proxy appended (the last X-Forwarded-For
    value: the ones before it are the caller's to write); anywhere else the socket's peer."""
    if forwarded and os.environ.get("SPACE_ID"):
        return forwarded.rsplit(",", 1)[-1].strip()[:64] or peer or "unknown"
    return peer or "unknown"


def _client(scope: Scope) -> str:
    peer = scope.get("client")
    return client_address(_header(scope, b"x-forwarded-for"), str(peer[0]) if peer else None)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


SPACES_ANCESTORS = "https://huggingface.co https://*.huggingface.co"


def frame_ancestors() -> str:
    """Who may frame the app: itself; Hugging Face on a Space (``SPACE_ID`` is set there);
    the origins listed in ``LFMUI_FRAME_ANCESTORS`` (space separated)."""
    allowed = ["'self'"]
    if os.environ.get("SPACE_ID"):
        allowed.append(SPACES_ANCESTORS)
    extra = os.environ.get("LFMUI_FRAME_ANCESTORS", "")
    allowed += [o for o in extra.split() if re.fullmatch(r"https?://[\w.*:-]+", o)]
    return "frame-ancestors " + " ".join(allowed)


def _headers_of_ours(send: Send, scope: Scope) -> Send:
    """Every response says X-Content-Type-Options: nosniff, so the browser never runs an
    upload served as application/octet-stream as a script or a style sheet (without it,
    chromium runs an uploaded .js given as a <script> source; tests/test_web.py showed it),
    names who may frame it (``frame_ancestors``), and carries no header the request sent."""
    policy = (b"content-security-policy", frame_ancestors().encode())
    ours = {NOSNIFF[0], policy[0]}
    sent = {(k.lower(), v) for k, v in scope.get("headers", []) if k.lower() not in SHARED_HEADERS}
    sent_names = {k for k, _ in sent}

    def echoed(name: bytes, value: bytes) -> bool:
        name = name.lower()
        return (name, value) in sent or (name in NEVER_ECHOED and name in sent_names)

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [
                (k, v)
                for k, v in message.get("headers", [])
                if k.lower() not in ours and not echoed(k, v)
            ]
            message = {**message, "headers": [*headers, NOSNIFF, policy]}
        await send(message)

    return sending


def _is_upload(scope: Scope) -> bool:
    return scope.get("path", "").rstrip("/").endswith("/upload")


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse(send: Send, status: int, detail: str, openai: bool = False) -> None:
    shaped = {"message": detail, "type": "invalid_request_error", "param": None, "code": None}
    body = json.dumps({"error": shaped} if openai else {"detail": detail, "error": detail})
    body = body.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
