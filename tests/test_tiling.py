"""The tiling plan (lfmui.tiling; checklist items 13-15): the processor's own plan within the
image-token budget, extreme strips, bad settings refused before the model runs, literal image
tokens as text, the inspector's preview and Budget A/B."""

from __future__ import annotations

import math
import threading
from dataclasses import replace

import pytest
from PIL import Image

from lfmui import prompts, tiling, turns
from lfmui.errors import InputError

SIZES = [(256, 384), (512, 512), (1024, 1024), (1000, 3000), (4000, 300), (1, 1), (1, 65500)]
SETTINGS = [
    None,  # the model's processor defaults
    tiling.PRESETS["fast"],
    tiling.PRESETS["balanced"],
    tiling.PRESETS["detailed"],
    tiling.Tiling(True, 2, 10, True, 64, 64),
    tiling.Tiling(False, 1, 1, False, 16, 16),
    tiling.Tiling(True, 10, 10, True, 256, 1024),
]


@pytest.fixture(scope="module")
def loaded(vl_manager):
    with vl_manager.lease() as loaded:
        yield loaded


# ---- tiling: the inspector's counts are the processor's ---------------------------------------
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_item13_plan_matches_processor_and_stays_in_budget(loaded, size):
    picture = Image.effect_noise(size, 40).convert("RGB") if max(size) < 5000 else None
    picture = picture or Image.new("RGB", size, "gray")
    for setting in SETTINGS:
        cut = setting or tiling.Tiling.from_processor(loaded.processor)
        plan = tiling.plan_tiles(loaded.processor, picture, cut, context_tokens=32768)
        conversation = [
            {
                "role": "user",
                "content": [{"type": "image", "image": picture}, {"type": "text", "text": "hi"}],
            }
        ]
        inputs = prompts.build_inputs(loaded, conversation, cut)
        in_prompt = int((inputs["input_ids"] == tiling.IMAGE_TOKEN_ID).sum())
        assert plan["image_tokens"] == in_prompt, (size, cut)
        assert 0 < plan["image_tokens"] <= cut.budget, (size, cut, plan)
        if plan["tiled"]:
            rows, cols = plan["grid"]
            assert rows * cols <= cut.max_tiles
            assert (
                plan["image_tokens"]
                == rows * cols * plan["tokens_per_tile"] + (plan["view_tokens"])
            )
        else:
            w, h = plan["view_size"]
            assert plan["image_tokens"] == math.ceil(w / 32) * math.ceil(h / 32)


def test_item13_extreme_aspect_ratios_are_padded_not_exploded(loaded):
    for size in [(1, 65500), (65500, 1)]:
        plan = tiling.plan_tiles(
            loaded.processor, Image.new("RGB", size), tiling.PRESETS["fast"], 32768
        )
        assert plan["image_tokens"] <= 64
        long, short = max(plan["fitted_size"]), min(plan["fitted_size"])
        assert long <= tiling.MAX_LONG_SIDE and long <= tiling.MAX_ASPECT * short


def test_tiling_defaults_come_from_the_processor(loaded):
    cut = tiling.Tiling.from_processor(loaded.processor)
    source = loaded.processor.image_processor
    assert (cut.min_tiles, cut.max_tiles, cut.use_thumbnail) == (
        source.min_tiles,
        source.max_tiles,
        source.use_thumbnail,
    )
    assert tiling.preset("detailed", use_thumbnail=False).use_thumbnail is False


def test_preview_draws_the_grid(loaded):
    picture = Image.new("RGB", (1000, 3000), "white")
    plan = tiling.plan_tiles(loaded.processor, picture, tiling.PRESETS["detailed"], 32768)
    drawn = tiling.preview(picture, plan)
    assert plan["tiled"] and plan["grid"][0] > 1
    shown_h = drawn.size[1]
    y = round(shown_h / plan["grid"][0])  # the first horizontal grid line is red
    assert drawn.getpixel((drawn.size[0] // 2, y)) == tiling.GRID_COLOUR[:3]


@pytest.mark.parametrize(
    "values",
    [
        {"min_tiles": 5, "max_tiles": 2},
        {"min_tiles": 1},  # a 1x1 "grid": the processor then counts thumbnail tokens for a tile
        {"min_image_tokens": 200, "max_image_tokens": 100},
        {"max_tiles": 11},
        {"max_image_tokens": 0},
        {"max_image_tokens": math.nan},
        {"max_image_tokens": math.inf},
        {"max_tiles": None},
        {"max_tiles": "4"},
        {"use_thumbnail": "yes"},
        {"tile_size": 1024},
        "not an object",
    ],
)
def test_item14_bad_tiling_settings_are_clear_errors(values):
    with pytest.raises(InputError) as caught:
        tiling.Tiling.from_dict(values)
    assert "traceback" not in str(caught.value).lower()


def test_item14_bad_tiling_stops_before_the_model_runs(vl_manager, monkeypatch):
    ran = []
    monkeypatch.setattr(turns.engine, "stream", lambda *a, **k: ran.append(1) or iter(()))
    conversation = [{"role": "user", "content": "hello"}]
    with pytest.raises(InputError, match="min_tiles"):
        list(turns.chat_turn(vl_manager, conversation, tiling={"min_tiles": 9, "max_tiles": 3}))
    assert ran == []


def test_item15_literal_image_tokens_in_user_text_stay_text(loaded):
    text = "<image> <|image_start|> <|img_row_1_col_1|> <|img_thumbnail|> <|image_end|>"
    inputs = prompts.build_inputs(loaded, [{"role": "user", "content": text}])
    ids = inputs["input_ids"][0].tolist()
    assert not set(ids) & {tiling.IMAGE_TOKEN_ID, 397, 497, 498, 499}
    assert "pixel_values" not in inputs


def test_plan_is_thread_safe_enough_for_two_sessions(loaded):
    results = []

    def plan(size):
        picture = Image.new("RGB", size)
        results.append(tiling.plan_tiles(loaded.processor, picture, tiling.Tiling(), 32768))

    threads = [threading.Thread(target=plan, args=((s, s),)) for s in (300, 1500)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (
        sorted(r["image_tokens"] for r in results)[0]
        < sorted(r["image_tokens"] for r in results)[1]
    )


def test_budget_ab_answers_each_preset_with_its_costs(vl_manager, tmp_path):
    from lfmui.ui import vision_tab

    path = tmp_path / "ab.png"
    Image.effect_noise((1024, 1024), 30).convert("RGB").save(path)
    updates = vision_tab.budget_ab(vl_manager, str(path), "What is this?", 3)
    tables = [[list(row) for row in table] for table in updates]  # each update as it was sent
    final = tables[-1]
    assert [row[0] for row in final] == list(tiling.PRESETS)
    tokens = [row[1] for row in final]
    assert tokens[0] <= 64 < tokens[1] <= 128 < tokens[2]  # fast < balanced < detailed
    assert all(
        row[3] is not None and row[5].startswith("[noise from random weights]") for row in final
    )
    # every preset has its row from the first update, saying where it stands
    assert [row[5] for row in tables[0]] == ["waiting"] * len(tiling.PRESETS)
    assert tables[1][0][5].startswith("running") and tables[1][1][5] == "waiting"


def test_the_plan_says_which_knobs_change_nothing_for_this_image(loaded):
    """The issue's case: a tall image needs 3 tiles, so max tiles 10 or 4 cuts it the same,
    and the image-token limits only size the thumbnail; each claim is checked against the
    processor by changing that knob."""
    picture = Image.effect_noise((1000, 3000), 40).convert("RGB")
    base = tiling.Tiling.from_processor(loaded.processor)

    def plan(**change):
        return tiling.plan_tiles(loaded.processor, picture, replace(base, **change), 32768)

    wide = plan(max_tiles=10)
    said = " ".join(tiling.unchanged_by(wide))
    tiles = wide["tiles"]
    assert f"needs only {tiles} tiles" in said and "max tiles of 10 changes nothing" in said
    assert plan(max_tiles=max(tiles, 2))["image_tokens"] == wide["image_tokens"]  # true
    thumb = "they set only the thumbnail" if wide["thumbnail"] else "they change nothing here"
    assert thumb in said
    small = plan(max_image_tokens=64, min_image_tokens=16)
    assert small["tokens_per_tile"] == wide["tokens_per_tile"]  # tiles kept their cost
    # a small image in one view: the tile settings and the limits around its cost are moot
    one = tiling.plan_tiles(loaded.processor, Image.new("RGB", (200, 150)), base, 32768)
    quiet = " ".join(tiling.unchanged_by(one))
    assert "fits one view" in quiet
    if base.min_image_tokens < one["image_tokens"] < base.max_image_tokens:
        assert f"costs {one['image_tokens']} image tokens" in quiet
