"""Offline checkpoints: load through the Auto classes, token ids, exact chat-template strings."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from lfmui import lfm2_format, offline


def test_tiny_checkpoints_load_through_auto_classes(tiny_paths):
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
        Lfm2MoeForCausalLM,
        Lfm2VlForConditionalGeneration,
        Lfm2VlProcessor,
    )

    vl = AutoModelForImageTextToText.from_pretrained(tiny_paths["lfm2-vl-tiny"])
    assert isinstance(vl, Lfm2VlForConditionalGeneration)
    assert isinstance(AutoProcessor.from_pretrained(tiny_paths["lfm2-vl-tiny"]), Lfm2VlProcessor)
    moe = AutoModelForCausalLM.from_pretrained(tiny_paths["lfm2-moe-tiny"])
    assert isinstance(moe, Lfm2MoeForCausalLM)
    tokenizer = AutoTokenizer.from_pretrained(tiny_paths["lfm2-moe-tiny"])
    assert tokenizer.eos_token_id == 7 and moe.generation_config.eos_token_id == 7


def test_tiny_checkpoints_are_small(tiny_paths):
    from pathlib import Path

    for path in tiny_paths.values():
        size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
        assert size < 10 * 2**20


@pytest.mark.parametrize(
    ("token_id", "token"),
    [
        (0, "<|pad|>"),
        (1, "<|startoftext|>"),
        (2, "<|endoftext|>"),
        (6, "<|im_start|>"),
        (7, "<|im_end|>"),
        (8, "<|tool_list_start|>"),
        (9, "<|tool_list_end|>"),
        (10, "<|tool_call_start|>"),
        (11, "<|tool_call_end|>"),
        (12, "<|tool_response_start|>"),
        (13, "<|tool_response_end|>"),
        (396, "<image>"),
        (397, "<|img_row_1_col_1|>"),
        (398, "<|img_row_1_col_2|>"),
        (407, "<|img_row_2_col_1|>"),
        (496, "<|img_row_10_col_10|>"),
        (497, "<|img_thumbnail|>"),
        (498, "<|image_start|>"),
        (499, "<|image_end|>"),
        (500, "<|image_split|>"),
    ],
)
def test_special_tokens_sit_at_lfm2_ids_as_single_tokens(tiny_paths, token_id, token):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_paths["lfm2-vl-tiny"])
    assert tokenizer.convert_tokens_to_ids(token) == token_id
    assert tokenizer(f"a{token}b", add_special_tokens=False).input_ids[1] == token_id
    assert tokenizer.decode([token_id]) == token


def test_byte_level_round_trip_of_unicode(tiny_paths):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_paths["lfm2-moe-tiny"])
    text = "Grüße, 東京! مرحبا 🙂 tab\there"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == text
    assert all(i >= lfm2_format.N_SPECIAL for i in ids)


def _render(path, messages, tools=None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    return tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=True
    )


def test_template_system_user_with_image_assistant(tiny_paths):
    messages = [
        {"role": "system", "content": "You are a helpful multimodal assistant by Liquid AI."},
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}],
        },
        {"role": "assistant", "content": "A red square."},
        {"role": "user", "content": "And the border?"},
    ]
    assert _render(tiny_paths["lfm2-vl-tiny"], messages) == (
        "<|startoftext|><|im_start|>system\n"
        "You are a helpful multimodal assistant by Liquid AI.<|im_end|>\n"
        "<|im_start|>user\n<image>Describe this image.<|im_end|>\n"
        "<|im_start|>assistant\nA red square.<|im_end|>\n"
        "<|im_start|>user\nAnd the border?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_template_tool_list_and_tool_turn(tiny_paths):
    tools = [
        {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
        {"name": "add", "parameters": {}},
    ]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": '<|tool_call_start|>[get_weather(city="Paris")]<|tool_call_end|>',
        },
        {"role": "tool", "content": '{"temperature": 21}'},
    ]
    schema = ", ".join(json.dumps(t) for t in tools)
    assert _render(tiny_paths["lfm2-moe-tiny"], messages, tools) == (
        "<|startoftext|><|im_start|>system\n"
        f"Be brief.\nList of tools: <|tool_list_start|>[{schema}]<|tool_list_end|><|im_end|>\n"
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        "<|im_start|>assistant\n"
        '<|tool_call_start|>[get_weather(city="Paris")]<|tool_call_end|><|im_end|>\n'
        "<|im_start|>tool\n<|tool_response_start|>"
        '{"temperature": 21}<|tool_response_end|><|im_end|>\n'
        "<|im_start|>assistant\n"
    )


def test_template_reads_a_system_turn_given_as_text_parts(tiny_paths):
    """OpenAI-shaped servers (transformers serve) pass every message as parts, the system
    turn included: it renders as its text, as a string does."""
    parts = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}]
    string = [{"role": "system", "content": "Be brief."}]
    user = [{"role": "user", "content": "hi"}]
    tools = [{"name": "f", "parameters": {}}]
    path = tiny_paths["lfm2-vl-tiny"]
    assert _render(path, parts + user, tools) == _render(path, string + user, tools)
    assert "system\nBe brief.\nList of tools" in _render(path, parts + user, tools)


def test_a_cached_build_gets_the_current_template_without_a_rebuild(tmp_path, monkeypatch):
    monkeypatch.setenv("LFMUI_CACHE", str(tmp_path))
    path = offline.ensure_checkpoint("lfm2-moe-tiny")
    weights = (path / "model.safetensors").stat().st_mtime_ns
    (path / "chat_template.jinja").write_text("{{ messages }}")
    offline.ensure_checkpoint("lfm2-moe-tiny")
    assert (path / "chat_template.jinja").read_text() == lfm2_format.CHAT_TEMPLATE
    assert (path / "model.safetensors").stat().st_mtime_ns == weights


def test_a_cached_thinking_build_keeps_its_own_template(tmp_path, monkeypatch):
    """A second start finds the build cached and must not give it LFM2's template (it did:
    the thinking model's prompt then opened no <think> block)."""
    monkeypatch.setenv("LFMUI_CACHE", str(tmp_path))
    path = offline.ensure_checkpoint("lfm2.5-thinking-tiny")
    offline.ensure_checkpoint("lfm2.5-thinking-tiny")
    assert (path / "chat_template.jinja").read_text() == lfm2_format.THINKING_TEMPLATE


def test_template_tools_without_system_prompt(tiny_paths):
    rendered = _render(
        tiny_paths["lfm2-moe-tiny"],
        [{"role": "user", "content": "hi"}],
        [{"name": "f", "parameters": {}}],
    )
    assert rendered.startswith(
        "<|startoftext|><|im_start|>system\nList of tools: <|tool_list_start|>"
        '[{"name": "f", "parameters": {}}]<|tool_list_end|><|im_end|>\n'
    )


def test_processor_expands_image_into_layout_tokens(tiny_paths):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_paths["lfm2-vl-tiny"])
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    inputs = processor(
        images=[[Image.new("RGB", (1024, 1024))]], text=[prompt], return_tensors="pt"
    )
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(498) == 1 and ids.count(499) == 1  # image start / end
    assert ids.count(397) == 1 and ids.count(396) == 4 * 256  # 2x2 grid of 512 px tiles


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        ("lfm2-vl-450m-synthetic", 354_483_968),
        ("lfm2-vl-1.6b-synthetic", 1_170_340_608),
        ("lfm2-vl-3b-synthetic", 2_569_272_320),  # LFM2-2.6B, LFM2-VL-3B's language tower
    ],
)
def test_full_shape_builds_match_published_lm_parameter_counts(build, expected):
    assert offline.language_model_parameters(build) == expected


def test_the_lfm25_moe_build_is_lfm2_8b_with_twice_the_vocabulary_and_thinks():
    lfm2 = offline.shape_config("lfm2-8b-a1b-synthetic")
    lfm25 = offline.shape_config("lfm2.5-8b-a1b-synthetic")
    assert lfm25 == {**lfm2, "vocab_size": 2 * 65536}
    assert offline.chat_template_of("lfm2.5-8b-a1b-synthetic") == lfm2_format.THINKING_TEMPLATE
    tokenizer = lfm2_format.build_tokenizer(lfm25["vocab_size"])
    assert len(tokenizer) == 131072
    text = "a longer vocabulary still encodes text both ways"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_full_shape_moe_build_matches_published_shape():
    import torch

    config = offline.make_config(offline.shape_config("lfm2-8b-a1b-synthetic"))
    with torch.device("meta"):
        model = offline.model_class(config)(config)
    total = sum(p.numel() for p in model.parameters())
    assert 8.3e9 <= total < 8.4e9  # "8.3B total"
    assert config.num_experts == 32 and config.num_experts_per_tok == 4
    attention = [i for i, t in enumerate(config.layer_types) if t == "full_attention"]
    assert attention == [2, 6, 10, 14, 18, 21]


def test_rebuild_when_marker_is_stale(tmp_path, monkeypatch):
    monkeypatch.setenv("LFMUI_CACHE", str(tmp_path))
    path = offline.ensure_checkpoint("lfm2-moe-tiny")
    assert offline.is_built(path)
    (path / offline.MARKER).write_text('{"version": -1}')
    assert not offline.is_built(path)
    assert offline.is_built(offline.ensure_checkpoint("lfm2-moe-tiny"))
    assert not list(tmp_path.glob(".lfm2-moe-tiny-*"))  # no temporary build left behind


def test_a_checkpoint_written_block_by_block_loads_whole(tmp_path):
    """The 8B's builder (one decoder layer in memory at a time), run on the 8B's layout at tiny
    widths: a shard per block in the hub's per-expert layout, and from_pretrained finds every
    weight, none missing or unexpected, with random (not empty) values."""
    import json

    import torch
    from transformers import AutoModelForCausalLM

    config = offline.make_config(offline.shape_config("lfm2-moe-replica"))
    torch.manual_seed(0)
    offline._write_by_blocks(config, tmp_path, torch.bfloat16)
    weight_map = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(weight_map.values())) == config.num_hidden_layers + 2  # + embeddings, norm
    assert "model.layers.3.feed_forward.experts.31.w2.weight" in weight_map  # per-expert keys
    model, info = AutoModelForCausalLM.from_pretrained(
        tmp_path, dtype=torch.bfloat16, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    experts = model.model.layers[3].feed_forward.experts.gate_up_proj
    assert experts.shape == (32, 2 * 64, 64) and 0.01 < experts.float().std() < 0.03
    assert model.model.embedding_norm.weight.float().eq(1).all()  # norms start at one


def test_a_build_cuts_images_as_the_model_it_stands_in_for(tmp_path, monkeypatch):
    """lfm2-vl-tiny stands in for LFM2-VL-450M, which reads no thumbnail; a cached build whose
    processor config differs gets the current defaults back without a rebuild."""
    monkeypatch.setenv("LFMUI_CACHE", str(tmp_path))
    path = offline.ensure_checkpoint("lfm2-vl-tiny")
    config_file = path / "processor_config.json"
    saved = json.loads(config_file.read_text())["image_processor"]
    assert saved["use_thumbnail"] is False and saved["max_pixels_tolerance"] == 2.0
    weights = (path / "model.safetensors").stat().st_mtime_ns
    config = json.loads(config_file.read_text())
    config["image_processor"]["use_thumbnail"] = True
    config_file.write_text(json.dumps(config))
    offline.ensure_checkpoint("lfm2-vl-tiny")
    assert json.loads(config_file.read_text())["image_processor"]["use_thumbnail"] is False
    assert (path / "model.safetensors").stat().st_mtime_ns == weights
