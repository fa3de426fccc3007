"""Pure functions that turn the session's conversation and engine events into UI values."""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Callable
from typing import Any

import gradio as gr

from lfmui.errors import LfmuiError

log = logging.getLogger(__name__)

DONE_LABELS = {
    "eos": "",
    "stopped": "stopped",
    "max_tokens": "truncated: max new tokens reached",
    "time_limit": "truncated: time limit reached",
    "error": "failed",
    "round_limit": "stopped: tool round limit reached",
}


def metrics_line(metrics: dict[str, Any], reason: str, hideable: bool = False) -> str:
    """A one-line summary shown small under an assistant message: how it ended, then the
    figures (`hideable`: in the span the Metrics toggle hides)."""
    label = DONE_LABELS.get(reason, reason)
    numbers = figures(metrics)
    if hideable and numbers:
        numbers = f'<span class="metrics">{numbers}</span>'
    return " · ".join(part for part in (label, numbers) if part)


def figures(metrics: dict[str, Any]) -> str:
    """A reply's measured figures in one line (what the Metrics toggle hides)."""
    parts = []
    if metrics.get("ttft_s") is not None:
        parts.append(f"TTFT {metrics['ttft_s']:.2f} s")
    if metrics.get("decode_tokens_per_s"):
        parts.append(f"{metrics['decode_tokens_per_s']:.1f} tok/s")
    if metrics.get("generated_tokens") is not None:
        parts.append(f"{metrics['generated_tokens']} tokens")
    if metrics.get("prompt_tokens") is not None:
        image = f" ({metrics['image_tokens']} image)" if metrics.get("image_tokens") else ""
        parts.append(f"prompt {metrics['prompt_tokens']}{image}")
    if metrics.get("preprocess_s") is not None:
        parts.append(f"prep {metrics['preprocess_s']:.2f} s")
    if metrics.get("queue_wait_s", 0) >= 0.05:  # only worth a word when the reply had to wait
        parts.append(f"queued {metrics['queue_wait_s']:.1f} s")
    if metrics.get("peak_memory_gib") is not None:
        kind = "peak" if metrics.get("peak_memory_kind") == "cuda_peak_allocated" else "RSS"
        parts.append(f"{kind} {metrics['peak_memory_gib']:.2f} GiB")
    if metrics.get("server_ignored"):  # an endpoint refused some settings by name
        parts.append(f"the server ignored: {metrics['server_ignored']}")
    return " · ".join(parts)


def to_chatbot(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Chatbot's messages for the session's turns."""
    return [message for _, _, message in _messages(turns)]


# a reply that ended inside its thinking: its answer part says so (the thinking stays above)
CUT_IN_THINKING = (
    "*The thinking was cut off before an answer: raise max new tokens (or the time limit) "
    "and regenerate.*"
)


def thinking_message(turn: dict[str, Any]) -> dict[str, Any]:
    """A reasoning model's thinking, as a collapsible block above its answer: open while it
    thinks, collapsed once the answer starts (gradio's ChatMessage metadata)."""
    thinking_now = turn.get("status") == "streaming" and not turn["text"]
    metrics = turn.get("metrics", {})
    title = "Thinking…" if thinking_now else "Thinking"
    if metrics.get("thinking_tokens") is not None:
        title += f" · {metrics['thinking_tokens']} tokens"
    if metrics.get("thinking_s") is not None:
        title += f" · {metrics['thinking_s']:.1f} s"
    if metrics.get("thinking_budget_hit"):
        title += " · ended by the thinking budget"
    if turn.get("thinking_cut"):
        title += " · cut off before the answer"
    status = "pending" if thinking_now else "done"
    content = safe_markdown(turn["thinking"])
    return {"role": "assistant", "content": content, "metadata": {"title": title, "status": status}}


def owners(turns: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """For each Chatbot message (as ``to_chatbot`` lists them), its turn's index and what it
    shows: "image", "note", "text" (a user's words), "pager", "tool", "thinking" or "reply"."""
    return [(number, kind) for number, kind, _ in _messages(turns)]


def _messages(turns: list[dict[str, Any]]):
    for number, turn in enumerate(turns):
        if turn["role"] == "user":
            for path in turn.get("images", []):
                yield number, "image", {"role": "user", "content": {"path": path}}
            if turn.get("images_dropped"):
                note = "<sub>images not sent: this model reads text only</sub>"
                yield number, "note", {"role": "user", "content": note}
            if turn["text"]:  # an imported file's words are someone else's: shown safe
                text = safe_markdown(turn["text"]) if turn.get("imported") else turn["text"]
                yield number, "text", {"role": "user", "content": text}
            if len(turn.get("branches", [])) > 1:  # an edited message: which version is shown
                shown = pager("branch", number, turn["branch"], len(turn["branches"]), "version")
                yield number, "pager", {"role": "user", "content": f"<sub>{shown}</sub>"}
            continue
        for used in turn.get("tools", []):
            yield number, "tool", tool_message(used)
        if turn.get("thinking"):
            yield number, "thinking", thinking_message(turn)
        text = safe_markdown(turn["text"]) or ("…" if turn.get("status") == "streaming" else "")
        if turn.get("thinking_cut") and not turn["text"]:  # shown, never sent back
            text = CUT_IN_THINKING
        footer = metrics_line(turn.get("metrics", {}), turn.get("status", "eos"), hideable=True)
        if turn.get("error"):  # in full-size type, above what streamed before it
            said = f"⚠️ **{safe_markdown(turn['error'])}**"
            text = f"{said}\n\n{text}" if text else said
            footer = "stopped by an error"
        if len(turn.get("versions", [])) > 1:  # a regenerated answer: which one is shown
            shown = pager("answer", number, turn.get("version", 0), len(turn["versions"]))
            footer = f"{shown} · {footer}" if footer else shown
        if turn.get("random_weights"):
            footer = "noise from random weights" + (f" · {footer}" if footer else "")
        if footer:
            text += f"\n\n<sub>{footer}</sub>"
        yield number, "reply", {"role": "assistant", "content": text}


def pager(kind: str, number: int, shown: int, count: int, noun: str = "answer") -> str:
    """◀ answer 2 of 3 ▶: links the page turns into a flip of turn `number` (app.KEYS; read
    back by ``flip_of``)."""
    earlier = f"[◀](#flip-{kind}-{number}--1)" if shown > 0 else "◁"
    later = f"[▶](#flip-{kind}-{number}-1)" if shown < count - 1 else "▷"
    return f"{earlier} {noun} {shown + 1} of {count} {later}"


def flip_of(target: str) -> tuple[str, int, int]:
    """A pager link as the page hands it back (``flip-KIND-N-STEP:stamp``): kind, turn, step.
    ValueError for anything else."""
    _, kind, number, step = (target or "").split(":")[0].split("-", 3)
    return kind, int(number), int(step)


_MD_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)]*)\)")


_CODE = re.compile(r"(```.*?(?:```|\Z)|`[^`\n]*`)", re.S)


def safe_markdown(text: str) -> str:
    """Model output as Markdown that runs nothing and fetches nothing: HTML tags are shown as
    text, and Markdown images become plain links (a browser would load them on sight). Code
    blocks and spans are left as written: the renderer shows them literally anyway."""
    pieces = _CODE.split(text)
    for i in range(0, len(pieces), 2):  # the prose between code
        prose = pieces[i].replace("&", "&amp;").replace("<", "&lt;")
        pieces[i] = _MD_IMAGE.sub(lambda m: f"[image: {m.group(1) or 'link'}]({m.group(2)})", prose)
    return "".join(pieces)


def fenced(text: str, language: str = "") -> str:
    """A Markdown code block that no backtick run inside `text` can close."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text}\n{fence}"


def tool_message(used: dict[str, Any]) -> dict[str, Any]:
    """A collapsible "Used tool" message: the call's arguments and what went back."""
    arguments = json.dumps(used["arguments"], ensure_ascii=False)
    output = used["output"]
    body = f"arguments: `{arguments[:500]}`\n\n{fenced(output)}"
    mark = "" if used["ok"] else " (error)"
    return {
        "role": "assistant",
        "content": body,
        "metadata": {"title": f"Used tool {used['name']}{mark}", "status": "done"},
    }


SAFE_LINE = "Something went wrong on the server; the app is still running. Try again."


def user_errors(fn: Callable) -> Callable:
    """For the API: our errors become gr.Error (what to do next); anything else is logged and
    the client reads the safe line."""

    def raising(exc: Exception) -> Any:
        if isinstance(exc, gr.Error):
            raise exc
        raise gr.Error(_sentence(fn, exc), print_exception=False) from None

    return _guarded(fn, raising)


def warns(outputs: int) -> Callable[[Callable], Callable]:
    """For the UI's own events (the API keeps ``user_errors``): a refusal is a warning toast
    and each of the `outputs` stays as it was; anything unexpected is logged and the toast
    says the safe line. A gr.Error would draw an "Error" badge over the outputs, hiding a
    chat, a preview or a status card (and what the user typed) until the next update."""
    unchanged = gr.skip() if outputs == 1 else (gr.skip(),) * outputs

    def decorate(fn: Callable) -> Callable:
        def warning(exc: Exception) -> Any:
            gr.Warning(_sentence(fn, exc))
            return unchanged

        return _guarded(fn, warning)

    return decorate


def _sentence(fn: Callable, exc: Exception) -> str:
    """What the user reads for `exc` raised in `fn`: our sentence, or the safe line (and the
    traceback in the log)."""
    if isinstance(exc, gr.Error):
        return str(exc.message)
    if isinstance(exc, LfmuiError):
        return str(exc)
    log.exception("unexpected error in %s", fn.__name__)
    return SAFE_LINE


def _guarded(fn: Callable, handle: Callable[[Exception], Any]) -> Callable:
    """`fn` (a function or a generator function) with its exceptions given to `handle`, whose
    value is returned (or yielded, for a generator) in place of the failed call's."""
    if _is_generator(fn):

        @functools.wraps(fn)
        def stream(*args: Any, **kwargs: Any):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:
                yield handle(exc)

        return stream

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            return handle(exc)

    return call


def _is_generator(fn: Callable) -> bool:
    import inspect

    return inspect.isgeneratorfunction(fn)
