"""RequestGuard: bounds what one HTTP request may carry before gradio reads it; nosniff.

gradio caps uploads (``max_file_size``) but reads any other request body whole: a 50 MB prompt or
an image inlined as a ``data:`` URL through the API would be parsed in full before the app could
refuse it. This ASGI middleware answers such requests itself, with a sentence that says what to
send instead:

- a body over ``MAX_BODY_BYTES`` (uploads excepted: gradio's own cap answers those) -> 413;
- a file given inline as a ``data:`` URL -> 400 (gradio would refuse it anyway, but silently);
  files travel as uploads (gradio_client's ``handle_file``), which the upload cap covers;
- the OpenAI-compatible routes (``/v1/``) take images inline, as OpenAI clients send them, under
  a larger cap (``V1_MAX_BODY_BYTES``), and are refused with OpenAI-shaped errors.

Every response also gets ``X-Content-Type-Options: nosniff`` and a Content-Security-Policy of
``frame-ancestors`` (``frame_ancestors``): the app is framed only by itself, by Hugging Face when
it runs as a Space, and by the origins in ``LFMUI_FRAME_ANCESTORS`` (a reverse proxy's page), so
another site cannot frame it and steer a user's clicks.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

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
# /v1 (lfmui.openai_api): images come inline as data: URLs, up to 4 per message
V1_MAX_BODY_BYTES = 32 * 2**20
V1_TOO_LARGE = (
    "The request is over {mib} MB. Send fewer or smaller images (each under 20 MB, at most 4 "
    "per message) and at most 100,000 characters of text."
)
INLINE = (
    "Images sent inline as data: URLs are refused. Send each image as an uploaded file "
    "(gradio_client's handle_file, or POST it to /gradio_api/upload first)."
)


class RequestGuard:
    """ASGI middleware: a size cap on non-upload request bodies and no inline files."""

    def __init__(self, app: App, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _nosniff(send)
        if scope.get("method") != "POST" or _is_upload(scope):
            await self.app(scope, receive, send)
            return
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
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as servers do

        await self.app(scope, replay, send)


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


def _nosniff(send: Send) -> Send:
    """Every response says X-Content-Type-Options: nosniff, so the browser never runs an
    upload served as application/octet-stream as a script or a style sheet (without it,
    chromium runs an uploaded .js given as a <script> source; tests/test_web.py showed it),
    and names who may frame it (``frame_ancestors``)."""
    policy = (b"content-security-policy", frame_ancestors().encode())
    ours = {NOSNIFF[0], policy[0]}

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [h for h in message.get("headers", []) if h[0].lower() not in ours]
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
