"""Session bundles: export, import, the restored session equals the exported one; copy as code."""

from __future__ import annotations

import ast
import base64
import io
import json

import pytest
from PIL import Image

from lfmui import session
from lfmui.errors import InputError

SAMPLING = {
    "max_new_tokens": 64,
    "temperature": 0.2,
    "min_p": 0.15,
    "top_p": 1.0,
    "repetition_penalty": 1.05,
    "seed": 7,
}
TILING = {
    "do_image_splitting": True,
    "min_tiles": 2,
    "max_tiles": 4,
    "use_thumbnail": True,
    "min_image_tokens": 64,
    "max_image_tokens": 128,
}


@pytest.fixture
def chat(tmp_path):
    picture = tmp_path / "sun.png"
    Image.new("RGB", (64, 48), "gold").save(picture)
    return [
        {"role": "user", "text": "What is this?", "images": [str(picture)]},
        {
            "role": "assistant",
            "text": "A sun.",
            "status": "eos",
            "metrics": {"ttft_s": 0.1},
            "random_weights": True,
            "tools": [
                {
                    "name": "image_facts",
                    "arguments": {},
                    "ok": True,
                    "output": "{}",
                    "seconds": 0.01,
                }
            ],
            "messages": [
                {"role": "assistant", "content": "<|tool_call_start|>[image_facts()]"},
                {"role": "tool", "content": "{}"},
            ],
        },
        {"role": "user", "text": "And now?", "images": []},
    ]


def _bundle(chat):
    model = {"id": "lfm2-vl-tiny", "quantization": "fp32"}
    return session.export_session(chat, model, "Be brief.", SAMPLING, TILING, True)


def test_export_import_round_trip_restores_the_same_session(chat):
    bundle = _bundle(chat)
    assert bundle["format"] == session.FORMAT and bundle["versions"]["transformers"]
    assert bundle["messages"][0]["images"][0]["data"].startswith("data:image/png;base64,")
    assert [t["name"] for t in bundle["tools"]][:2] == ["calculator", "convert_units"]
    path = session.write_bundle(bundle)
    loaded = session.read_bundle(path)
    restored = session.restore(loaded).turns
    assert Image.open(restored[0]["images"][0]).getpixel((0, 0)) == (255, 215, 0)
    again = session.export_session(
        restored,
        loaded["model"],
        loaded["system_prompt"],
        loaded["sampling"],
        loaded["tiling"],
        loaded["use_tools"],
    )
    assert again == bundle  # the restored session equals the exported one
    assert json.loads(json.dumps(again)) == again


@pytest.mark.parametrize(
    "content,message",
    [
        (b"not json", "not JSON"),
        (b'{"format": "other"}', "not an lfmui session"),
        (
            json.dumps(
                {
                    "format": session.FORMAT,
                    "messages": [{"role": "system"}],
                    **{k: {} for k in ("sampling", "tiling", "model")},
                }
            ).encode(),
            "damaged",
        ),
        (
            json.dumps({"format": session.FORMAT, "messages": [], "sampling": []}).encode(),
            "sampling",
        ),
    ],
)
def test_bad_session_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        session.restore(session.read_bundle(path))


@pytest.mark.parametrize("data", ["data:image/png;base64,@@@", "no comma", 5])
def test_damaged_embedded_images_are_refused(chat, data):
    bundle = _bundle(chat)
    bundle["messages"][0]["images"][0]["data"] = data
    with pytest.raises(InputError, match="damaged"):
        session.restore(bundle)


def test_embedded_images_pass_the_upload_checks(chat):
    tiff = io.BytesIO()
    Image.new("RGB", (8, 8)).save(tiff, "TIFF")
    bundle = _bundle(chat)
    encoded = base64.b64encode(tiff.getvalue()).decode()
    bundle["messages"][0]["images"][0]["data"] = f"data:image/png;base64,{encoded}"
    with pytest.raises(InputError, match="not a PNG, JPEG, WEBP or GIF"):
        session.restore(bundle)


def test_copy_as_code_is_valid_python_with_the_settings(chat):
    bundle = _bundle(chat)
    code = session.transformers_code(bundle, "LiquidAI/LFM2-VL-450M", "vl")
    ast.parse(code)
    assert '"LiquidAI/LFM2-VL-450M"' in code and "'max_tiles': 4" in code
    assert "'temperature': 0.2" in code and "torch.manual_seed(7)" in code
    assert "Image.open('sun.png')" in code and "'Be brief.'" in code
    client = session.client_code(bundle, "http://127.0.0.1:7860/")
    ast.parse(client)
    assert "'And now?'" in client and 'api_name="/generate"' in client
    # the earlier turns and the system prompt go with it (/generate takes them)
    assert "'What is this?'" in client and "'system': 'Be brief.'" in client


def test_copy_as_code_turns_thinking_off_where_the_chat_did(chat):
    bundle = _bundle(chat)
    assert "enable_thinking" not in session.transformers_code(bundle, "x/y", "text")
    bundle["sampling"]["think"] = False
    code = session.transformers_code(bundle, "x/y", "text")
    ast.parse(code)
    assert "    enable_thinking=False," in code


def test_copy_as_code_asks_for_the_last_answer_again_not_a_new_turn(chat):
    """A chat that ends on an answer: the code's conversation ends on the question before
    it, so generate() writes that answer again (ending on the answer, with the generation
    prompt, it asked for a turn the chat never had)."""
    answered = [*chat, {"role": "assistant", "text": "Night.", "status": "eos", "metrics": {}}]
    code = session.transformers_code(_bundle(answered), "LiquidAI/LFM2-VL-450M", "vl")
    assert "'Night.'" not in code and "'And now?'" in code
    conversation = code[code.index("conversation = [") : code.index("]\ninputs")]
    assert conversation.rstrip().endswith("'And now?'}]},")
