"""Session bundles (export and import one JSON file) and "copy as code" for the chat.

A bundle holds everything needed to see and reproduce a chat: model id and quantization,
system prompt, sampling settings and seed, image-detail settings, whether tools were on (and
their definitions), library versions, and the messages with their images embedded as data URLs,
their metrics and tool calls. Importing checks every image through the same safe intake as an
upload and restores the chat and its settings.
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
import mimetypes
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lfmui import chats, images, tools
from lfmui.errors import InputError, read_json
from lfmui.settings import SAMPLING, Settings
from lfmui.tiling import FIELDS as TILING_FIELDS
from lfmui.tiling import Tiling
from lfmui.turns import MAX_IMAGES_PER_CHAT

FORMAT = "lfmui-session/1"
MAX_BUNDLE_BYTES = 20 * 1024 * 1024


def versions() -> dict[str, str]:
    found = {}
    for name in ("transformers", "torch", "gradio", "pillow"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _embed(path: str) -> dict[str, str]:
    data = Path(path).read_bytes()
    kind = mimetypes.guess_type(path)[0] or "image/png"
    return {
        "name": Path(path).name,
        "data": f"data:{kind};base64,{base64.b64encode(data).decode()}",
    }


def export_session(
    turns: list[dict[str, Any]],
    model: dict[str, Any],
    system_prompt: str,
    sampling: dict[str, Any],
    tiling: dict[str, Any],
    use_tools: bool,
) -> dict[str, Any]:
    """The bundle (a JSON-able dict) for a chat and its settings."""
    messages = []
    for turn in turns:
        entry = {k: v for k, v in turn.items() if k not in ("images", "images_dropped", "imported")}
        if turn["role"] == "user":
            entry["images"] = [_embed(p) for p in turn.get("images", [])]
        messages.append(entry)
    return {
        "format": FORMAT,
        "model": model,
        "system_prompt": system_prompt or "",  # an empty box can arrive as None
        "sampling": {k: sampling.get(k) for k in SAMPLING},
        "tiling": {k: tiling.get(k) for k in TILING_FIELDS},
        "use_tools": bool(use_tools),
        "tools": [t.schema() for t in tools.BUILTINS.values()] if use_tools else [],
        "versions": versions(),
        "messages": messages,
    }


def write_bundle(bundle: dict[str, Any]) -> str:
    """The bundle saved as a .json file in a fresh temp dir (for a download)."""
    folder = Path(tempfile.mkdtemp(prefix="lfmui-session-"))
    path = folder / "lfmui-session.json"
    path.write_text(json.dumps(bundle, ensure_ascii=False, indent=1))
    return str(path)


MAX_IMPORTS_KEPT = 20  # imported chats whose images stay on disk (the browser keeps 20 chats)


def read_bundle(path: str) -> dict[str, Any]:
    """A bundle file, checked: size, JSON, format, the types of its sections. Its messages are
    rebuilt one by one by ``restore``; nothing in it is trusted."""
    file = Path(path)
    if file.stat().st_size > MAX_BUNDLE_BYTES:
        raise InputError("The session file is over 20 MB; export a shorter chat.")
    try:
        bundle = read_json(file.read_bytes(), "The session file")
    except InputError:
        raise InputError(
            "This is not a session file (not JSON, or nested too deeply). Pick a file exported "
            "here."
        ) from None
    if not isinstance(bundle, dict) or bundle.get("format") != FORMAT:
        raise InputError(f"This is not an lfmui session file (expected format {FORMAT}).")
    if not isinstance(bundle.get("messages"), list):
        raise InputError("The session file's messages are damaged; export the chat again.")
    for key, kind in (("sampling", dict), ("tiling", dict), ("model", dict)):
        if not isinstance(bundle.get(key), kind):
            raise InputError(f"The session file has no valid '{key}'; export the chat again.")
    return bundle


@dataclass
class Restored:
    """An imported session as the chat takes it: every field checked, with a sentence for each
    part left out (``notes``)."""

    turns: list[dict[str, Any]]
    system_prompt: str
    sampling: dict[str, Any]  # only the settings that are valid
    tiling: dict[str, Any]  # empty when the file's are not valid together
    use_tools: bool
    model_id: str | None
    notes: list[str] = field(default_factory=list)


def restore(bundle: dict[str, Any]) -> Restored:
    """A checked bundle (``read_bundle``) rebuilt field by field, as the browser's saved chats
    are (``chats.clean_turn``): its images written out through the upload checks (at most the
    chat's ``MAX_IMAGES_PER_CHAT``) into a fresh ``lfmui-import-*`` folder, which goes again
    when the import is refused; only the ``MAX_IMPORTS_KEPT`` newest such folders are kept."""
    folder = Path(tempfile.mkdtemp(prefix="lfmui-import-"))
    try:
        turns, notes = _turns(bundle["messages"], folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    _sweep_imports()
    sampling, bad = {}, []
    for name in SAMPLING:
        if name in bundle["sampling"]:
            try:
                Settings.from_dict({name: bundle["sampling"][name]})
                sampling[name] = bundle["sampling"][name]
            except InputError:
                bad.append(name)
    if bad:
        notes.append(
            f"The file's values for {', '.join(bad)} were not valid; the current ones are kept."
        )
    given = {k: v for k, v in bundle["tiling"].items() if k in TILING_FIELDS}
    try:
        cut = Tiling.from_dict(given)
        tiling = {name: getattr(cut, name) for name in given}
    except InputError as exc:
        tiling = {}
        notes.append(f"The file's image-detail settings were not used: {exc}")
    system = bundle.get("system_prompt", "")
    model_id = bundle["model"].get("id")
    return Restored(
        turns,
        system if isinstance(system, str) else "",
        sampling,
        tiling,
        bundle.get("use_tools") is True,
        model_id[:200] if isinstance(model_id, str) else None,
        notes,
    )


def _turns(messages: list[Any], folder: Path) -> tuple[list[dict[str, Any]], list[str]]:
    turns, dropped, extra_images = [], 0, 0
    room = MAX_IMAGES_PER_CHAT
    for index, message in enumerate(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            embedded = message.get("images")
            embedded = embedded if isinstance(embedded, list) else []
            extra_images += max(len(embedded) - room, 0)
            kept = embedded[:room]
            room -= len(kept)
            message = {
                **message,
                "images": [
                    _unembed(image, folder / f"{index}-{n}") for n, image in enumerate(kept)
                ],
            }
        turn, _ = chats.clean_turn(message, folder)
        if turn is None:
            dropped += 1
            continue
        if turn["role"] == "user":
            turn["imported"] = True  # shown like model output: no HTML, images as links
        turns.append(turn)
    if messages and not turns:
        raise InputError("The session file's messages are damaged; export the chat again.")
    notes = []
    if dropped:
        notes.append(f"{dropped} damaged message(s) of the file were left out.")
    if extra_images:
        notes.append(
            f"The chat takes at most {MAX_IMAGES_PER_CHAT} images: the first were kept, "
            f"{extra_images} more left out."
        )
    return turns, notes


def _sweep_imports() -> None:
    """Remove all but the MAX_IMPORTS_KEPT newest imported folders."""
    folders = sorted(
        Path(tempfile.gettempdir()).glob("lfmui-import-*"),
        key=lambda f: f.stat().st_mtime if f.exists() else 0,
        reverse=True,
    )
    for old in folders[MAX_IMPORTS_KEPT:]:
        shutil.rmtree(old, ignore_errors=True)


def _unembed(image: Any, stem: Path) -> str:
    image = image if isinstance(image, dict) else {}
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(str(image.get("name", ""))).name)[:80]
    name = Path(name).stem or "image"
    # one folder per image: names kept as sent
    what = "An image in the session file"
    return str(images.save_data_url(image.get("data"), stem / name, what))


# ---- copy as code ------------------------------------------------------------------------------
def transformers_code(bundle: dict[str, Any], hub_repo: str, kind: str) -> str:
    """Python that reproduces the chat's next request with plain transformers."""
    sampling = {k: v for k, v in bundle["sampling"].items() if v is not None}
    greedy = not sampling.get("temperature")
    generate = {"max_new_tokens": sampling.get("max_new_tokens", 256), "do_sample": not greedy}
    if not greedy:
        generate.update(
            {k: sampling[k] for k in ("temperature", "min_p", "top_p") if k in sampling}
        )
    generate["repetition_penalty"] = sampling.get("repetition_penalty", 1.0)
    lines = ["import torch"]
    auto = "AutoModelForImageTextToText" if kind == "vl" else "AutoModelForCausalLM"
    lines += [f"from transformers import AutoProcessor, {auto}", "from PIL import Image", ""]
    if sampling.get("seed") is not None:
        lines += [f"torch.manual_seed({int(sampling['seed'])})"]
    lines += [
        f'model_id = "{hub_repo}"',
        f'model = {auto}.from_pretrained(model_id, dtype="auto", device_map="auto")',
        "processor = AutoProcessor.from_pretrained(model_id)",
        "",
        "conversation = [",
    ]
    if bundle["system_prompt"].strip():
        lines.append(f'    {{"role": "system", "content": {bundle["system_prompt"]!r}}},')
    for message in _to_last_question(bundle["messages"]):
        if message["role"] == "assistant":
            lines.append(f'    {{"role": "assistant", "content": {message["text"]!r}}},')
            continue
        parts = [
            f'{{"type": "image", "image": Image.open({image["name"]!r})}}'
            for image in message.get("images", [])
        ]
        parts.append(f'{{"type": "text", "text": {message["text"]!r}}}')
        lines.append(f'    {{"role": "user", "content": [{", ".join(parts)}]}},')
    lines += [
        "]",
        "inputs = processor.apply_chat_template(",
        "    conversation, add_generation_prompt=True, tokenize=True, return_dict=True,",
        '    return_tensors="pt",',
    ]
    if bundle["sampling"].get("think") is False:  # the template's switch (lfmui.reasoning)
        lines.append("    enable_thinking=False,")
    if kind == "vl":
        lines.append(f'    processor_kwargs={{"images_kwargs": {bundle["tiling"]!r}}},')
    lines += [
        ").to(model.device)",
        f"out = model.generate(**inputs, **{generate!r})",
        'new = out[0, inputs["input_ids"].shape[1]:]',
        "print(processor.decode(new, skip_special_tokens=True))",
    ]
    return "\n".join(lines)


def _to_last_question(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chat up to its last user message: the code then asks for the last answer again
    (ending on that answer, add_generation_prompt would ask for a turn the chat never had)."""
    last = max((n for n, m in enumerate(messages) if m["role"] == "user"), default=-1)
    return messages[: last + 1]


def client_code(bundle: dict[str, Any], url: str) -> str:
    """gradio_client code that sends the chat's last user message to this app's /generate,
    with the earlier turns (their text) and the system prompt."""
    asked = _to_last_question(bundle["messages"])
    last = asked[-1] if asked else None
    prompt = last["text"] if last else "Describe this image."
    files = [image["name"] for image in (last or {}).get("images", [])]
    settings = {k: v for k, v in bundle["sampling"].items() if v is not None}
    settings["tiling"] = bundle["tiling"]
    if bundle["system_prompt"].strip():
        settings["system"] = bundle["system_prompt"]
    earlier = [{"role": m["role"], "content": m["text"]} for m in asked[:-1] if m["text"]]
    if earlier:
        settings["messages"] = earlier
    return "\n".join(
        [
            "import json",
            "from gradio_client import Client, handle_file",
            "",
            f"client = Client({url!r})",
            "# the chat's last message again, with the turns before it (text only)",
            "job = client.submit(",
            f"    {prompt!r},",
            f"    [{', '.join(f'handle_file({f!r})' for f in files)}],",
            f"    json.dumps({settings!r}),",
            '    api_name="/generate",',
            ")",
            "for answer in job:",
            "    print(answer)",
            'print(client.predict(api_name="/last_metrics"))',
        ]
    )
