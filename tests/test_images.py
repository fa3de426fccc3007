"""Image intake (CHECKLIST items 7-16) and per-request tiling, on generated files."""

from __future__ import annotations

import io
import math
import struct
import threading
import time
import tracemalloc
import zlib
from dataclasses import replace

import pytest
from PIL import Image

from lfmui import images, prompts, tiling, turns
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


def _png(path, size=(64, 48), mode="RGB", colour="red", **save):
    Image.new(mode, size, colour).save(path, **save)
    return path


def _png_header_only(path, width, height):
    """A tiny PNG file that declares width x height (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    body = struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = zlib.compress(b"\x00" * 64)
    data = b"IDAT" + idat
    body += struct.pack(">I", len(idat)) + data + struct.pack(">I", zlib.crc32(data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body + b"\x00\x00\x00\x00IEND\xaeB`\x82")
    return path


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


# ---- intake: CHECKLIST items 7-12 --------------------------------------------------------------
@pytest.mark.parametrize("size", [(20000, 20000), (10000, 10000)], ids=["bomb", "100MP"])
def test_item07_huge_images_are_refused_with_memory_bounded(tmp_path, size):
    path = _png_header_only(tmp_path / "bomb.png", *size)
    assert path.stat().st_size < 200
    tracemalloc.start()
    with pytest.raises(InputError, match="too large"):
        images.load_safe(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 20 * 2**20


def _truncated(tmp_path, fmt):
    buffer = io.BytesIO()
    Image.effect_noise((300, 300), 50).convert("RGB").save(buffer, fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def _written(path, data):
    path.write_bytes(data)
    return path


def _pdf_named_jpg(tmp_path):
    path = tmp_path / "doc.jpg"
    Image.new("RGB", (20, 20)).save(path, "PDF")
    return path


@pytest.mark.parametrize(
    "make",
    [
        lambda t: _truncated(t, "JPEG"),
        lambda t: _truncated(t, "PNG"),
        lambda t: _written(t / "empty.png", b""),
        lambda t: _written(t / "noise.png", bytes(range(256)) * 40),
        _pdf_named_jpg,
    ],
    ids=["truncated-jpeg", "truncated-png", "zero-bytes", "random-bytes", "pdf-as-jpg"],
)
def test_item08_unreadable_files_say_could_not_read(tmp_path, make):
    with pytest.raises(InputError, match="Could not read image|not a PNG"):
        images.load_safe(make(tmp_path))


@pytest.mark.parametrize("fmt", ["TIFF", "EPS", "BMP", "ICO"])
def test_item09_formats_outside_the_allowlist_are_refused(tmp_path, fmt):
    path = tmp_path / "renamed.png"
    Image.new("RGB", (32, 32), "blue").save(path, fmt)
    with pytest.raises(InputError, match="not a PNG, JPEG, WEBP or GIF"):
        images.load_safe(path)


@pytest.mark.parametrize(
    "payload",
    [
        b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
        b"8BPS\x00\x01" + b"\x00" * 64,  # a PSD header
    ],
    ids=["svg", "psd"],
)
def test_item09_svg_and_psd_renamed_png_are_refused(tmp_path, payload):
    path = tmp_path / "renamed.png"
    path.write_bytes(payload)
    with pytest.raises(InputError):
        images.load_safe(path)


@pytest.mark.parametrize("orientation,expected", [(6, (20, 40)), (8, (20, 40)), (1, (40, 20))])
def test_item10_exif_orientation_is_applied(tmp_path, orientation, expected):
    picture = Image.new("RGB", (40, 20), "green")
    exif = picture.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "rotated.jpg"
    picture.save(path, exif=exif)
    assert images.load_safe(path).size == expected


def test_item10_malformed_exif_is_still_processed(tmp_path):
    path = tmp_path / "bad-exif.jpg"
    Image.new("RGB", (40, 20), "green").save(path, exif=b"Exif\x00\x00MM\x00*garbage!!")
    picture = images.load_safe(path)
    assert picture.size == (40, 20) and picture.mode == "RGB"


def _palette_with_transparency(path):
    picture = Image.new("P", (8, 8), 0)
    picture.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    picture.save(path, transparency=0)
    return path


@pytest.mark.parametrize(
    "make,expected",
    [
        (lambda p: _png(p.with_suffix(".jpg"), mode="CMYK", colour=(0, 0, 0, 0)), (255, 255, 255)),
        (_palette_with_transparency, (255, 255, 255)),
        (lambda p: _png(p, mode="LA", colour=(0, 0)), (255, 255, 255)),
        (lambda p: _png(p, mode="RGBA", colour=(255, 0, 0, 0)), (255, 255, 255)),
        (lambda p: _png(p, mode="RGBA", colour=(255, 0, 0, 255)), (255, 0, 0)),
        (lambda p: _png(p, mode="I;16", colour=65535), (255, 255, 255)),
        (lambda p: _png(p, mode="I;16", colour=32896), (128, 128, 128)),
        (lambda p: _png(p, mode="L", colour=7), (7, 7, 7)),
    ],
    ids=[
        "cmyk",
        "palette-transparent",
        "la",
        "rgba-clear",
        "rgba-opaque",
        "grey16-max",
        "grey16",
        "grey8",
    ],
)
def test_item11_modes_become_sane_rgb(tmp_path, make, expected):
    picture = images.load_safe(make(tmp_path / "mode.png"))
    assert picture.mode == "RGB"
    assert picture.getpixel((0, 0)) == expected


def test_item12_animation_with_thousands_of_frames_gives_the_first(tmp_path):
    frames = [Image.new("P", (8, 8), i % 200) for i in range(3000)]
    for frame in frames:
        frame.putpalette([(i * 37) % 256 for i in range(768)])
    path = tmp_path / "long.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=10)
    started = time.monotonic()
    picture = images.load_safe(path)
    assert time.monotonic() - started < 5  # a guard against decoding every frame, not a speed test
    assert picture.getpixel((0, 0)) == frames[0].convert("RGB").getpixel((0, 0))


def test_item12_animated_webp_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "lime", "blue")]
    path = tmp_path / "anim.webp"
    frames[0].save(path, save_all=True, append_images=frames[1:], lossless=True)
    assert images.load_safe(path).getpixel((0, 0)) == (255, 0, 0)


def test_item16_too_many_images_in_one_message(vl_manager):
    parts = [{"type": "image", "image": Image.new("RGB", (32, 32))} for _ in range(9)]
    conversation = [{"role": "user", "content": [*parts, {"type": "text", "text": "hi"}]}]
    with pytest.raises(InputError, match="at most 4 per message"):
        list(turns.chat_turn(vl_manager, conversation))
    four = [{"role": "user", "content": [*parts[:4], {"type": "text", "text": "hi"}]}]
    with pytest.raises(InputError, match="the limit is 12"):
        list(turns.chat_turn(vl_manager, four * 4))


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


def test_decoded_images_stay_bounded_by_bytes_and_go_on_a_switch(tmp_path):
    """issue 18, decoded_image_cache: 32 distinct 40-megapixel uploads leave at most 600 MiB
    above the baseline (the cache counts bytes, not entries), and a model switch drops it."""
    import gc
    import shutil

    from lfmui import heap, images

    big = tmp_path / "big.png"
    Image.new("RGB", (6300, 6290), "teal").save(big)  # 40 megapixels, a few kB as PNG
    copies = []
    for number in range(32):  # distinct files: each its own cache entry
        copies.append(tmp_path / f"upload-{number}.png")
        shutil.copy(big, copies[-1])
    images.forget()
    gc.collect()
    heap.trim_heap()
    baseline = heap.process_rss()
    for path in copies:
        images.load_safe(path)
    gc.collect()
    heap.trim_heap()
    grown = heap.process_rss() - baseline
    assert grown <= 600 * 2**20, f"{grown / 2**20:.0f} MiB above the baseline"
    assert sum(images._bytes(p) for p in images._decoded.values()) <= images.MAX_CACHE_BYTES
    assert images.load_safe(copies[-1]) is images.load_safe(copies[-1])  # still a cache
    images.forget()
    assert not images._decoded
