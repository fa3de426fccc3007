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
import tempfile
from pathlib import Path
from typing import Any

from lfmui import images, tools
from lfmui.errors import InputError
from lfmui.settings import SAMPLING
from lfmui.tiling import FIELDS as TILING_FIELDS

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
        entry = {k: v for k, v in turn.items() if k not in ("images", "images_dropped")}
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


def read_bundle(path: str) -> dict[str, Any]:
    """A bundle file, checked: size, JSON, format, field types. Never trusts its contents."""
    file = Path(path)
    if file.stat().st_size > MAX_BUNDLE_BYTES:
        raise InputError("The session file is over 20 MB; export a shorter chat.")
    try:
        bundle = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
        raise InputError(
            "This is not a session file (not JSON). Pick a file exported here."
        ) from None
    if not isinstance(bundle, dict) or bundle.get("format") != FORMAT:
        raise InputError(f"This is not an lfmui session file (expected format {FORMAT}).")
    messages = bundle.get("messages")
    if not isinstance(messages, list) or not all(_message_ok(m) for m in messages):
        raise InputError("The session file's messages are damaged; export the chat again.")
    for key, kind in (("sampling", dict), ("tiling", dict), ("model", dict)):
        if not isinstance(bundle.get(key), kind):
            raise InputError(f"The session file has no valid '{key}'; export the chat again.")
    return bundle


def _message_ok(message: Any) -> bool:
    return (
        isinstance(message, dict)
        and message.get("role") in ("user", "assistant")
        and isinstance(message.get("text", ""), str)
        and isinstance(message.get("images", []), list)
    )


def restore_turns(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """The chat's turns from a checked bundle; embedded images written out and checked."""
    folder = Path(tempfile.mkdtemp(prefix="lfmui-import-"))
    restored = []
    for index, message in enumerate(bundle["messages"]):
        turn = {k: v for k, v in message.items() if k != "images"}
        if message["role"] == "user":
            turn["images"] = [
                _unembed(image, folder / f"{index}-{n}")
                for n, image in enumerate(message["images"])
            ]
        restored.append(turn)
    return restored


def _unembed(image: Any, stem: Path) -> str:
    data = image.get("data") if isinstance(image, dict) else None
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(str(image.get("name", ""))).name)[:80]
    name = Path(name).stem or "image"
    # one folder per image: names kept as sent
    what = "An image in the session file"
    return str(images.save_data_url(data, stem / name, what))


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
