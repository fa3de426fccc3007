"""Image intake (CHECKLIST items 7-16) and per-request tiling, on generated files."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
import zlib

import pytest
from PIL import Image

from lfmui import images, turns
from lfmui.errors import InputError


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
