"""The side panel's chats: the list as it shows them and the handlers that change it without
the tab's state (new, rename, delete, undo). They are stored in the browser (``lfmui.chats``)."""

from __future__ import annotations

import time
from typing import Any

import gradio as gr

from lfmui import chats
from lfmui.errors import InputError
from lfmui.ui import running
from lfmui.ui.chat_reply import REPLIES
from lfmui.ui.controls import upload_folder
from lfmui.ui.render import to_chatbot, warns

UPLOADS = upload_folder()  # where gradio keeps uploads: stored images must be there


def listed(stored: list[dict[str, Any]], current: str) -> gr.Radio:
    """The kept chats as the side panel lists them (title · when), the one in use selected."""
    choices = [(f"{c['title']} · {when(c.get('updated', 0))}", c["id"]) for c in stored]
    return gr.Radio(
        choices=choices, value=current if any(c[1] == current for c in choices) else None
    )


def acts_on(history: list) -> tuple[gr.Button, gr.Button]:
    """Rename and Delete, enabled only when the chat has something to name or delete."""
    return gr.Button(interactive=bool(history)), gr.Button(interactive=bool(history))


def when(stamp: float) -> str:
    if not stamp:
        return "earlier"
    now = time.time()
    if now - stamp < 86400 and time.localtime(now).tm_mday == time.localtime(stamp).tm_mday:
        return time.strftime("%H:%M", time.localtime(stamp))
    return time.strftime("%d %b", time.localtime(stamp))


def on_new(saved: Any):
    stored, _ = chats.read(saved, UPLOADS)
    fresh = chats.new_id()
    return [], [], fresh, listed(stored, fresh), ""


@warns(outputs=2)
def on_rename(saved: Any, chat_id: str, history: list, title: str):
    if not history:
        raise InputError("Send a first message, then name the chat.")
    stored, _ = chats.read(saved, UPLOADS)
    value = chats.write(stored, chat_id, history, name=title or "")
    return value, listed(value["chats"], chat_id)


def on_delete(saved: Any, chat_id: str, history: list, request: gr.Request):
    """The chat in use goes from the list; Undo brings it back until the next removal."""
    if REPLIES.state(request.session_hash) != running.IDLE:
        gr.Warning("A reply is streaming in this chat; press Stop first, then delete it.")
        return [gr.skip()] * 9
    stored, _ = chats.read(saved, UPLOADS)
    gone = chats.find(stored, chat_id)
    if gone is None and not history:
        gr.Warning("This chat is empty: there is nothing to delete.")
        return [gr.skip()] * 9
    gone = gone or {"id": chat_id, "title": chats.title_of(history), "turns": history}
    value = chats.write(stored, chat_id, [])
    fresh = chats.new_id()
    note = f"Deleted “{gone['title']}”."
    return (
        value, listed(value["chats"], fresh), [], [], fresh, "",
        {"kind": "delete", "chat": gone}, gr.Row(visible=True), note,
    )  # fmt: skip


def on_bring_back(undoable: dict | None, saved: Any):
    """Undo of the last Clear or Delete: that chat comes back, in use, with its name and
    settings."""
    if not undoable:
        return [gr.skip()] * 10
    chat = undoable["chat"]
    turns, named = chat["turns"], chat.get("named", "")
    stored, _ = chats.read(saved, UPLOADS)
    value = chats.write(stored, chat["id"], turns, chat.get("settings"), named)
    shown = listed(value["chats"], chat["id"])
    hidden = gr.Row(visible=False)
    return (
        turns,
        to_chatbot(turns),
        chat["id"],
        named,
        None,
        hidden,
        value,
        shown,
        *acts_on(turns),
    )
