"""Safe image intake: every uploaded picture passes through ``load_safe`` before a model sees it.

Checks, in order: file size, format allowlist (PNG, JPEG, WEBP, GIF, sniffed from the bytes, not
the name), pixel count (decompression bombs are errors, not warnings), then the first frame of an
animation, EXIF orientation (malformed EXIF is ignored), and a plain RGB picture (alpha
composited on white, 16-bit grey scaled, CMYK and palettes converted). The aspect-ratio cap
belongs to tiling (``lfmui.tiling.fit``), since what it protects is the image-token budget.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

from lfmui.errors import InputError

MAX_FILE_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 40_000_000
ALLOWED_FORMATS = {"PNG", "JPEG", "WEBP", "GIF"}


def load_safe(path: str | Path):
    """Open an uploaded image and return it as an RGB PIL image, or raise InputError.

    A chat sends its earlier images again on every turn: a file already read (same path, size
    and modification time) is not decoded again. Callers must not modify the image in place.
    """
    file = Path(path)
    try:
        stat = file.stat()
    except OSError:
        raise InputError(
            f"Could not read image '{file.name[:60]}': the upload is missing. Upload it again."
        ) from None
    key = (str(file), stat.st_size, stat.st_mtime_ns)
    with _cache_lock:
        if key in _decoded:
            _decoded.move_to_end(key)
            return _decoded[key]
    picture = _decode(*key)
    with _cache_lock:
        _decoded[key] = picture
        while sum(_bytes(p) for p in _decoded.values()) > MAX_CACHE_BYTES and len(_decoded) > 1:
            _decoded.popitem(last=False)  # the least recently used first
    return picture


# A chat sends its earlier pictures again every turn: decoded pictures are kept, bounded by
# their bytes (a 40-megapixel picture is 120 MB decoded; a count alone let four of them hold
# 600 MB), and dropped when the model changes (``forget``).
MAX_CACHE_BYTES = 256 * 2**20
_decoded: OrderedDict[tuple[str, int, int], Any] = OrderedDict()
_cache_lock = threading.Lock()


def _bytes(picture: Any) -> int:
    return picture.width * picture.height * len(picture.getbands())


def forget() -> None:
    """Drop every decoded picture (the manager calls this on a model switch)."""
    with _cache_lock:
        _decoded.clear()


_DATA_SUFFIX = {"image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif"}


def save_data_url(url: Any, stem: Path, what: str = "An image") -> Path:
    """A ``data:image/...;base64,...`` URL written to a file beside `stem` (its suffix from the
    media type) and checked like an upload; InputError naming `what` when it is not one."""
    import base64
    import binascii

    header, _, payload = url.partition(",") if isinstance(url, str) else ("", "", "")
    if not header.startswith("data:image/") or ";base64" not in header:
        raise InputError(f"{what} is damaged or not a base64 data:image/... URL; send one.")
    if len(payload) * 3 // 4 > MAX_FILE_BYTES:
        raise InputError(f"{what} is over {MAX_FILE_BYTES // 2**20} MB; send a smaller image.")
    try:
        data = base64.b64decode(payload, validate=True)
    except (ValueError, binascii.Error):
        raise InputError(f"{what} is damaged: its base64 does not decode.") from None
    kind = header.removeprefix("data:").split(";")[0]
    path = stem.with_name(stem.name + _DATA_SUFFIX.get(kind, ".png"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    load_safe(path)  # the same checks as an upload
    return path


def _decode(path: str, size: int, _mtime_ns: int):
    from PIL import Image

    file = Path(path)
    name = file.name[:60]
    if size > MAX_FILE_BYTES:
        raise InputError(
            f"'{name}' is {size / 2**20:.0f} MB; "
            f"images up to {MAX_FILE_BYTES // 2**20} MB are accepted."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as image:
                if image.format not in ALLOWED_FORMATS:
                    raise InputError(
                        f"'{name}' is not a PNG, JPEG, WEBP or GIF image; "
                        "convert it and upload again."
                    )
                if image.width * image.height > MAX_PIXELS:
                    raise InputError(
                        f"'{name}' is too large ({image.width}x{image.height}); "
                        f"use an image under {MAX_PIXELS // 10**6} megapixels."
                    )
                image.seek(0)  # first frame of an animation: later frames are never decoded
                image.load()
                return _to_rgb(_upright(image))
    except InputError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise InputError(
            f"'{name}' is too large (decompression bomb guard); use a smaller image."
        ) from None
    except Exception:
        raise InputError(
            f"Could not read image '{name}': the file is damaged or not an image."
        ) from None


def _upright(image):
    """Apply the EXIF orientation; a malformed EXIF block leaves the picture as stored."""
    from PIL import ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Corrupt EXIF data": handled below, not news
            return ImageOps.exif_transpose(image) or image
    except Exception:  # PIL raises many types on broken EXIF; the pixels are still good
        return image


def _to_rgb(image):
    """Explicit mode handling: 16/32-bit grey scaled to 8 bits, CMYK and palettes converted,
    alpha composited on white."""
    import numpy as np
    from PIL import Image

    if image.mode == "RGB":
        return image.copy()
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        top = values.max(initial=0)
        peak = 65535.0 if image.mode.startswith("I;16") or 255 < top <= 65535 else max(top, 255)
        scaled = np.clip(values * (255.0 / peak), 0, 255).round().astype(np.uint8)
        return Image.fromarray(scaled, "L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, "white")
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")
