"""Chats kept in the browser, so a reload or a closed tab loses nothing.

The browser stores one value (gradio's BrowserState, in localStorage): ``{"version": 1,
"chats": [{"id", "title", "updated", "turns", "named"?, "settings"?}], "settings"?}``, the chat
in use first, at most MAX_CHATS; ``settings`` are a chat's generation settings (and, at the top,
the last used). A regenerated answer keeps its earlier ones (``versions``), an edited user turn
what followed it (``branches``).
Everything read back is the browser's, so it is untrusted. ``read`` keeps what is well formed
and drops the rest, with a sentence for the user:
- a value of another shape or version, or one over MAX_STORED_CHARS, is dropped whole;
- each turn is rebuilt field by field (``clean_turn``): the roles, text, status, metrics of
  numbers, tool uses and the messages a tool turn exchanged. Special-token literals in an
  answer are escaped, as user text is (``prompts.escape_specials``), and a tool turn's own
  messages keep only the tool-call markers, so no saved or imported chat can forge a system
  turn; a user turn from an imported file keeps ``imported`` (it is shown like model output);
- an image path is kept only inside the server's upload folder (or an imported session's
  folder), and only while its file is there (a restarted server has none of them). Any other
  path is never read.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
import typing
import uuid
from pathlib import Path
from typing import Any

from lfmui import engine, prompts
from lfmui.errors import InputError
from lfmui.prompts import TOOL_CALL_MARKERS as CALLS
from lfmui.settings import SAMPLING, Settings

VERSION = 1
MAX_CHATS = 20
MAX_STORED_CHARS = 4_000_000  # localStorage holds about 5 MB per site
MAX_TITLE = 60
STATUSES = {"eos", "stopped", "max_tokens", "time_limit", "error", "round_limit", "streaming"}
EMPTY = {"version": VERSION, "chats": []}


def secret(folder: Path) -> str:
    """The key gradio's BrowserState encrypts the browser's copy with: made once per install
    and kept in `folder`, so chats outlive a restart of the server (a random key per start
    would not). Every page receives it, so it keeps nothing secret from that browser's user:
    chats are private only as far as the browser profile is."""
    import secrets

    file = folder / "browser-state.key"
    try:
        key = file.read_text().strip()
        if len(key) >= 32:
            return key
    except OSError:
        pass
    key = secrets.token_urlsafe(32)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        file.write_text(key)
        file.chmod(0o600)
    except OSError:  # a read-only folder: the chats last as long as this server
        pass
    return key


def new_id() -> str:
    return uuid.uuid4().hex[:12]


def title_of(turns: list[dict[str, Any]]) -> str:
    """The first user text, shortened: how the chat is listed."""
    first = next((t["text"] for t in turns if t["role"] == "user" and t["text"].strip()), "")
    line = " ".join(first.split()) or "A chat with images"
    return line if len(line) <= MAX_TITLE else line[: MAX_TITLE - 1] + "…"


def read(value: Any, uploads: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The stored chats that are well formed, and a sentence for what was dropped."""
    if value in (None, "", {}, EMPTY):
        return [], []
    try:
        size = len(json.dumps(value))
    except (TypeError, ValueError, RecursionError):
        size = MAX_STORED_CHARS + 1
    if not isinstance(value, dict) or value.get("version") != VERSION:
        return [], ["The chats saved in this browser are from another version; they were reset."]
    if size > MAX_STORED_CHARS or not isinstance(value.get("chats"), list):
        return [], ["The chats saved in this browser were damaged or too large; they were reset."]
    chats, dropped_turns, dropped_images, damaged = [], 0, 0, []
    for chat in value["chats"][:MAX_CHATS]:
        if not isinstance(chat, dict) or not isinstance(chat.get("turns"), list):
            dropped_turns += 1
            continue
        turns = []
        for turn in chat["turns"]:
            clean, lost = clean_turn(turn, uploads, damaged)
            dropped_images += lost
            if clean is None:
                dropped_turns += 1
            else:
                turns.append(clean)
        if turns:
            ident = chat.get("id") if isinstance(chat.get("id"), str) else new_id()
            updated = chat.get("updated")
            updated = updated if _number(updated) else 0
            named = _name(chat.get("named"))
            record = {
                "id": ident[:32],
                "title": named or title_of(turns),
                "updated": updated,
                "turns": turns,
            }
            if named:
                record["named"] = named
            kept_settings = clean_settings(chat.get("settings"))
            if kept_settings:
                record["settings"] = kept_settings
            chats.append(record)
    said = []
    if dropped_turns:
        said.append(f"{dropped_turns} damaged part(s) of the saved chats were left out.")
    if damaged:
        said.append(
            f"{len(damaged)} damaged branch(es) of edited messages were left out; the rest of "
            "each chat is kept."
        )
    if dropped_images:
        said.append(
            f"{dropped_images} image(s) of the saved chats are no longer on the server (it "
            "restarted); their text is kept."
        )
    return chats, said


def write(
    chats: list[dict[str, Any]],
    chat_id: str,
    turns: list[dict[str, Any]],
    settings: dict[str, Any] | None = None,
    name: str | None = None,
) -> dict:
    """The value to store: chat `chat_id` with `turns` first (dropped when it has none), then
    the others, newest first, at most MAX_CHATS. `settings` (the chat's generation settings)
    are kept with the chat and as the last used, for a chat not yet begun; `name` is a title
    the user gave it ("" for the first message's)."""
    others = [c for c in chats if c["id"] != chat_id]
    previous = find(chats, chat_id) or {}
    named = _name(name if name is not None else previous.get("named"))
    chosen = settings if settings is not None else previous.get("settings")
    current = []
    if turns:
        kept = [_storable(t) for t in turns]
        record = {"id": chat_id, "title": named or title_of(kept), "updated": time.time()}
        record["turns"] = kept
        if named:
            record["named"] = named
        if chosen:
            record["settings"] = chosen
        current = [record]
    value: dict[str, Any] = {"version": VERSION, "chats": (current + others)[:MAX_CHATS]}
    if chosen:
        value["settings"] = chosen
    return value


def find(chats: list[dict[str, Any]], chat_id: str) -> dict[str, Any] | None:
    """The stored chat called `chat_id`, if kept."""
    return next((c for c in chats if c["id"] == chat_id), None)


SETTINGS_TEXT = 4000  # the longest system prompt kept


def clean_settings(value: Any) -> dict[str, Any] | None:
    """Stored generation settings, if well formed: the sampling controls (validated as a
    request's are), the system prompt and Use tools. None for anything else."""
    if not isinstance(value, dict):
        return None
    sampling = {k: value[k] for k in SAMPLING if k in value}
    try:
        checked = Settings.from_dict(sampling).model_dump()
    except InputError:  # the browser's copy is not trusted
        return None
    clean: dict[str, Any] = {k: checked[k] for k in sampling}
    if isinstance(value.get("system_prompt"), str):
        clean["system_prompt"] = value["system_prompt"][:SETTINGS_TEXT]
    if isinstance(value.get("use_tools"), bool):
        clean["use_tools"] = value["use_tools"]
    return clean or None


def last_settings(value: Any) -> dict[str, Any] | None:
    """The settings used last in this browser (for a chat that has none of its own)."""
    return clean_settings(value.get("settings")) if isinstance(value, dict) else None


def _name(value: Any) -> str:
    return " ".join(value.split())[:MAX_TITLE] if isinstance(value, str) else ""


def clean_turn(
    turn: Any, uploads: Path, damaged: list[int] | None = None, depth: int = 0
) -> tuple[dict[str, Any] | None, int]:
    """A stored turn rebuilt from its well-formed fields (None if it has none), and how many of
    its images were dropped; each damaged branch left out adds one to `damaged`."""
    if not isinstance(turn, dict) or not isinstance(turn.get("text", ""), str):
        return None, 0
    if turn.get("role") == "user":
        paths = turn.get("images", [])
        paths = paths if isinstance(paths, list) else []
        kept = [p for p in paths if isinstance(p, str) and _uploaded(p, uploads)]
        clean = {"role": "user", "text": turn.get("text", ""), "images": kept}
        if turn.get("imported") is True:
            clean["imported"] = True
        if "branches" in turn:
            _clean_branches(clean, turn, uploads, damaged if damaged is not None else [], depth)
        return clean, len(paths) - len(kept)
    if turn.get("role") != "assistant":
        return None, 0
    metrics = turn.get("metrics") if isinstance(turn.get("metrics"), dict) else {}
    clean: dict[str, Any] = {
        "role": "assistant",
        "text": prompts.escape_specials(turn.get("text", "")),
        "status": turn.get("status") if turn.get("status") in STATUSES else "eos",
        "metrics": {k: _metric(k, v) for k, v in metrics.items() if _metric(k, v) is not None},
        "random_weights": turn.get("random_weights") is True,
    }
    if clean["status"] == "streaming":  # the page went away mid-reply
        clean["status"] = "stopped"
    versions = turn.get("versions")
    if isinstance(versions, list):  # a regenerated answer's earlier ones (one level deep)
        kept = [
            clean_turn(_answer(v), uploads)[0]
            for v in versions[:MAX_VERSIONS]
            if isinstance(v, dict)
        ]
        kept = [v for v in kept if v is not None and v["role"] == "assistant"]
        shown = turn.get("version")
        if len(kept) >= 2:
            fits = isinstance(shown, int) and not isinstance(shown, bool) and 0 <= shown < len(kept)
            clean["versions"], clean["version"] = kept, shown if fits else len(kept) - 1
    if isinstance(turn.get("thinking"), str) and turn["thinking"]:  # a reasoning model's
        clean["thinking"] = prompts.escape_specials(turn["thinking"])
        if turn.get("thinking_cut") is True:
            clean["thinking_cut"] = True
    if isinstance(turn.get("error"), str):
        clean["error"] = turn["error"][:500]
    used = turn.get("tools")
    if isinstance(used, list):
        clean["tools"] = [u for u in used if _tool_use(u)]
    exchanged = turn.get("messages")
    if isinstance(exchanged, list):
        clean["messages"] = [
            {"role": m["role"], "content": prompts.escape_specials(m["content"], keep=CALLS)}
            for m in exchanged
            if isinstance(m, dict)
            and m.get("role") in ("assistant", "tool")
            and isinstance(m.get("content"), str)
        ]
    return clean, 0


MAX_VERSIONS = 10


def with_earlier(reply: dict[str, Any], earlier: dict[str, Any]) -> dict[str, Any]:
    """A regenerated answer that keeps the answers before it (``versions``, oldest first; the
    one shown is ``version``)."""
    kept = earlier.get("versions") or [_answer(earlier)]
    versions = [*kept, _answer(reply)][-MAX_VERSIONS:]
    return {**_answer(reply), "versions": versions, "version": len(versions) - 1}


def flipped(turn: dict[str, Any], step: int) -> dict[str, Any]:
    """The same answer turn showing its version `step` away (clamped to the ends)."""
    versions = turn["versions"]
    shown = min(max(turn.get("version", len(versions) - 1) + step, 0), len(versions) - 1)
    return {**versions[shown], "versions": versions, "version": shown}


MAX_BRANCHES = 10
MAX_DEPTH = 4  # branches inside branches, as deep as a stored chat may nest them


def branched(history: list[dict[str, Any]], number: int, edited: dict[str, Any]) -> list:
    """The chat after user turn `number` was edited into `edited`: what followed it is kept as
    a branch (``branches``, on the user turn; the one shown is ``branch``) to flip back to."""
    first = history[number]
    branches = [list(b) for b in first.get("branches") or [[_tail_turn(first)]]]
    branches[first.get("branch", len(branches) - 1)] = _tail(history[number:])
    branches = [*branches, [_tail_turn(edited)]][-MAX_BRANCHES:]
    return [
        *history[:number],
        {**_tail_turn(edited), "branches": branches, "branch": len(branches) - 1},
    ]


def switched(history: list[dict[str, Any]], number: int, step: int) -> list:
    """The chat showing the branch `step` away from user turn `number`'s (clamped)."""
    first = history[number]
    branches = [list(b) for b in first["branches"]]
    current = first.get("branch", len(branches) - 1)
    branches[current] = _tail(history[number:])
    shown = min(max(current + step, 0), len(branches) - 1)
    tail = branches[shown]
    return [*history[:number], {**tail[0], "branches": branches, "branch": shown}, *tail[1:]]


def _tail(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [_tail_turn(turns[0]), *turns[1:]]


def _tail_turn(turn: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in turn.items() if k not in ("branches", "branch")}


def _clean_branches(
    clean: dict[str, Any], turn: dict[str, Any], uploads: Path, damaged: list[int], depth: int
) -> None:
    """A user turn's stored branches, each kept only if every turn in it is well formed (a
    damaged one is dropped whole, and counted in `damaged`)."""
    value = turn.get("branches")
    if not isinstance(value, list) or depth >= MAX_DEPTH:
        damaged.append(1)
        return
    kept = []
    for tail in value[:MAX_BRANCHES]:
        rebuilt = []
        if isinstance(tail, list) and tail:
            rebuilt = [clean_turn(t, uploads, damaged, depth + 1)[0] for t in tail]
        if not rebuilt or None in rebuilt or rebuilt[0]["role"] != "user":
            damaged.append(1)
            continue
        kept.append(rebuilt)
    shown = turn.get("branch")
    if len(kept) >= 2:
        fits = isinstance(shown, int) and not isinstance(shown, bool) and 0 <= shown < len(kept)
        clean["branches"], clean["branch"] = kept, shown if fits else len(kept) - 1


def _answer(turn: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in turn.items() if k not in ("versions", "version")}


def _storable(turn: dict[str, Any]) -> dict[str, Any]:
    """A turn as JSON can hold it (the chat's turns carry only JSON types; drop flags)."""
    return {k: v for k, v in turn.items() if k != "images_dropped"}


def _tool_use(used: Any) -> bool:
    return (
        isinstance(used, dict)
        and isinstance(used.get("name"), str)
        and isinstance(used.get("output"), str)
        and isinstance(used.get("arguments"), dict)
        and isinstance(used.get("ok"), bool)
    )


def _uploaded(path: str, uploads: Path) -> bool:
    """Whether `path` is a file the app itself wrote: an upload, or an imported session's."""
    try:
        file = Path(path).resolve()
        if file.is_relative_to(uploads.resolve()):
            return file.is_file()
        temp = Path(tempfile.gettempdir()).resolve()
        imported = file.is_relative_to(temp) and file.relative_to(temp).parts[0].startswith(
            "lfmui-import-"
        )
        return imported and file.is_file()
    except (OSError, ValueError):
        return False


def _metric(name: Any, value: Any) -> Any:
    """A metric as ``engine.Metrics`` types it (a number, or text for its text keys); None
    for anything else ("1" as a time, text under a name of ours that holds a number)."""
    kind = _METRIC_TYPES.get(name)
    if kind is str:
        return value[:200] if isinstance(value, str) else None
    if kind is bool:
        return value if isinstance(value, bool) else None
    return value if kind is not None and _number(value) else None


_METRIC_TYPES = {
    name: str if hint is str else bool if hint is bool else float
    for name, hint in typing.get_type_hints(engine.Metrics).items()
}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
