"""What lfmui writes to an OpenAI-compatible server and reads back, for ``lfmui.endpoint``:
messages in OpenAI's shape (untrusted text escaped, images as data URLs inside the tiling's
aspect cap), a stream's chunks folded into one reply (``Reply``: text, reasoning, tool calls,
usage), a stream closed the moment Stop comes (``close_on_stop``), the SDK's client (following no
redirect) and the model list within a deadline, and the server's errors in a few words.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from lfmui import prompts, toolcalls
from lfmui.catalog import Catalog
from lfmui.errors import EndpointError
from lfmui.tiling import Tiling, fit

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 10.0
LIST_TIMEOUT_S = 15.0
PNG_MAX_PIXELS = 1024 * 1024  # larger pictures go as JPEG (quality 92): a smaller request
OPTIONAL = {  # request fields a server may refuse, and what the user is told it did not take
    "min_p": "min_p",
    "top_k": "top_k",
    "repetition_penalty": "repetition penalty",
    "mm_processor_kwargs": "tiling and image budget (mm_processor_kwargs)",
    "chat_template_kwargs": "the thinking switch (chat_template_kwargs)",
}


@dataclass
class Reply:
    """What the stream said so far."""

    first_at: float | None = None
    generated: int = 0  # content chunks, for servers that report no usage
    usage: dict[str, Any] | None = None
    finish: str | None = None
    chars: int = 0  # text and tool-call characters so far
    calls: dict[int, dict[str, str]] = field(default_factory=dict)  # index -> name, arguments

    def take(self, chunk: Any) -> tuple[str, str]:
        """One chunk folded in; the text and the reasoning (a server's reasoning parser) it
        adds."""
        if getattr(chunk, "usage", None) is not None:
            self.usage = chunk.usage.model_dump()
        text = thought = ""
        for choice in chunk.choices or []:
            delta = choice.delta
            if delta is not None and delta.content:
                text += delta.content
            thought += reasoning_of(delta)
            for call in (delta.tool_calls if delta is not None else None) or []:
                held = self.calls.setdefault(call.index or 0, {"name": "", "arguments": ""})
                if call.function is not None:
                    held["name"] += call.function.name or ""
                    held["arguments"] += call.function.arguments or ""
                    self.chars += len(call.function.name or "") + len(call.function.arguments or "")
            if choice.finish_reason:
                self.finish = choice.finish_reason
        if text or self.calls or thought:
            self.first_at = self.first_at or time.perf_counter()
        if text:
            self.generated += 1
        self.chars += len(text)
        return text, thought

    def written_calls(self) -> str:
        """The server's calls as LFM2's block; arguments that are not a JSON object are
        written as they came, so the tool turn reports that call as unreadable."""
        written = []
        for index in sorted(self.calls):
            call = self.calls[index]
            try:
                arguments = json.loads(call["arguments"] or "{}")
            except ValueError:
                arguments = None
            if isinstance(arguments, dict):
                written.append(toolcalls.write_call({"name": call["name"], "arguments": arguments}))
            else:
                written.append(f"{call['name']}({call['arguments']})")
        return toolcalls.block_of(written)


def close_on_stop(
    stop: threading.Event,
    ended: threading.Event,
    stream: Any,
    deadline: float = float("inf"),
    expired: threading.Event | None = None,
) -> None:
    """Close `stream` as soon as Stop is pressed or the reply's deadline passes (`expired` is
    set then), even while the server sends nothing or only keep-alive comments (a long
    prefill): the server sees the client leave and aborts the request."""
    while not ended.wait(0.1):
        late = time.perf_counter() > deadline
        if late and expired is not None:
            expired.set()
        if stop.is_set() or late:
            # closing a socket does not wake a thread blocked reading it; a shutdown does
            with contextlib.suppress(Exception):
                network = stream.response.extensions["network_stream"]
                network.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
            stream.close()
            return


def base_url(url: str) -> str:
    url = (url or "").strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise EndpointError(
            f"'{url[:80]}' is not an http(s) URL; give the server's address, e.g. "
            "http://localhost:8000/v1."
        )
    return url if url.endswith("/v1") else f"{url}/v1"


def client_for(base: str, api_key: str | None) -> Any:
    """The SDK's client for `base`; an SDK that is missing or does not fit is a sentence. It
    follows no redirect: a server checked by lfmui.access cannot send it elsewhere."""
    try:
        import openai

        timeout = openai.Timeout(LIST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        return openai.OpenAI(
            base_url=base,
            api_key=api_key or "not-needed",
            max_retries=0,
            timeout=timeout,
            http_client=openai.DefaultHttpxClient(follow_redirects=False, timeout=timeout),
        )
    except Exception as exc:  # noqa: BLE001 - ImportError, or an SDK of another major version
        log.exception("the openai SDK could not make a client")
        raise EndpointError(
            f"The openai package could not be used ({type(exc).__name__}: {short(exc)}). "
            "Install the versions lfmui is tested with: pip install -r requirements.txt."
        ) from None


def within(seconds: float, base: str, work: Any) -> Any:
    """`work()`'s result, or EndpointError once `seconds` pass (its thread is left to end on
    its own socket timeouts)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    worker = threading.Thread(target=run, name="lfmui-endpoint-connect", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise EndpointError(
            f"{base} did not finish answering within {seconds:.0f} s. Check that the server "
            "is running and not overloaded, then connect again."
        )
    if "error" in box:
        raise box["error"]
    return box["result"]


def list_models(client: Any, base: str, model: str | None) -> tuple[list[str], str]:
    """The ids the server lists, or none (with a note) where listing fails and `model` is given."""
    import openai

    try:
        listed = [m.id for m in client.models.list().data if isinstance(m.id, str)]
    except (openai.APIConnectionError, openai.APITimeoutError) as exc:
        raise EndpointError(
            f"{base} cannot be reached ({cause(exc)}). Start the server, or check the URL "
            "(e.g. http://localhost:8000/v1)."
        ) from None
    except Exception as exc:  # noqa: BLE001 - an error status or a malformed list
        if model:
            return [], f"the server did not list its models ({type(exc).__name__}); using '{model}'"
        raise EndpointError(
            f"{base} did not list its models ({short(exc)}). Give the model id it serves."
        ) from None
    if not listed and not model:
        raise EndpointError(f"{base} lists no models. Give the model id it serves.")
    return listed, ""


def reasoning_of(delta: Any) -> str:
    """A streamed delta's reasoning: ``reasoning_content`` (vLLM's parsers, llama.cpp,
    DeepSeek) or ``reasoning`` (newer vLLM); the SDK keeps such fields as extras."""
    extra = getattr(delta, "model_extra", None) or {}
    for name in ("reasoning_content", "reasoning"):
        value = extra.get(name)
        if isinstance(value, str) and value:
            return value
    return ""


def catalog_match(catalog: Catalog, served: str) -> Any:
    """The catalog entry a served id names: a hub repo (``LiquidAI/LFM2-VL-1.6B``) or a GGUF
    file named after one (``LFM2-VL-1.6B-Q8_0.gguf``); the longest name wins."""
    name = served.lower()
    hub = [s for s in catalog.all() if s.source == "hub"]
    matches = [s for s in hub if s.hub_repo.split("/")[-1].lower() in name]
    return max(matches, key=lambda s: len(s.hub_repo), default=None)


def processor_of(source: str) -> Any:
    """The model's processor from `source` (a directory or a hub id), without weights; None
    where it cannot be read (offline, a GGUF name, a private repo)."""
    try:
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(source)
    except Exception as exc:  # noqa: BLE001 - any failure means: no config to plan with
        log.info("no processor config for %s: %s", source, type(exc).__name__)
        return None


def message(message: dict[str, Any], cut: Tiling | None) -> dict[str, Any]:
    """A conversation message in OpenAI's shape: untrusted text escaped, images as data URLs."""
    role, content = message["role"], message["content"]
    trusted = role in ("system", "assistant")
    escape = prompts.escape_image_slots if trusted else prompts.escape_specials
    if isinstance(content, str):
        return {"role": role, "content": escape(content)}
    parts = []
    for part in content:
        if part["type"] == "image":
            parts.append({"type": "image_url", "image_url": {"url": data_url(part["image"], cut)}})
        else:
            text = escape(part["text"])
            parts.append({"type": "text", "text": text})
    return {"role": role, "content": parts}


def data_url(image: Any, cut: Tiling | None) -> str:
    """A checked picture as a data URL, inside the tiling's aspect cap."""
    picture = fit(image, cut or Tiling())
    large = picture.width * picture.height > PNG_MAX_PIXELS
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG" if large else "PNG", **({"quality": 92} if large else {}))
    kind = "jpeg" if large else "png"
    return f"data:image/{kind};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def refused_field(exc: Any, fields: dict[str, Any]) -> str | None:
    """The optional field a 400/422 names, if it names one we sent."""
    if exc.status_code not in (400, 422):
        return None
    said = server_message(exc)
    return next((name for name in OPTIONAL if name in fields and name in said), None)


def server_message(exc: Any) -> str:
    """The server's own words from an error status, short and on one line."""
    body = getattr(exc, "body", None)
    said = None
    if isinstance(body, dict):
        said = body.get("message") or body.get("detail") or body.get("error")
        if isinstance(said, dict):
            said = said.get("message")
    text = str(said if said is not None else getattr(exc, "message", "") or exc)
    return " ".join(text.split())[:200] or "no message"


def cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    return short(cause) if cause else "no connection"


def short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:120] or type(exc).__name__
