"""Per-request image tiling for LFM2-VL: one validated settings value, presets, and the plan.

``Tiling`` holds the six knobs the LFM2-VL image processor takes per request. ``plan_tiles`` runs
the real processor on one image and reads everything it reports from the processor's output: the
grid from the ``<|img_row_R_col_C|>`` markers in input_ids, the token counts from the ``<image>``
tokens between them, the resized size from ``spatial_shapes``. No second formula can drift from
what the model is given. ``preview`` draws that plan over the picture.

Two processor hazards are capped before the processor runs (``fit``): an image below the token
minimum is upscaled by the processor with ceil rounding, which can overshoot the maximum, so it is
resized here to a 32 px grid inside [min, max] tokens (the processor then leaves it as is);
an image longer than 16:1 is shrunk and padded here to that ratio (the processor clamps each
side to at least 32 px, so a 1x65500 image would cost about 4,000 tokens against a 256 budget).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from lfmui.errors import InputError

IMAGE_TOKEN_ID = 396
ROW_COL_FIRST, ROW_COL_LAST = 397, 496  # <|img_row_R_col_C|>: 397 + (R-1)*10 + (C-1)
THUMBNAIL_ID = 497
TOKEN_PX = 32  # one image token covers 32x32 px of the resized image (patch 16, downsample 2)
TILE_TOKENS = 256  # a 512 px tile
MAX_ASPECT = 16  # longer images are padded to 16:1
MAX_LONG_SIDE = 4096  # before padding (10 tiles of 512 px is the processor's widest grid)


def _knob(default: Any, label: str, low: int | None = None, high: int | None = None, step: int = 1):
    """A Tiling field with what its control shows: label, and the range of a whole number."""
    return field(default=default, metadata={"label": label, "range": (low, high), "step": step})


@dataclass(frozen=True)
class Tiling:
    """How one image is cut and how many tokens it may cost: the one definition of the six
    knobs (names, types, defaults, ranges, labels) that the controls, the session file and
    the API's documented keys are read from."""

    do_image_splitting: bool = _knob(True, "Cut large images into 512 px tiles")
    min_tiles: int = _knob(2, "Min tiles", 1, 10)
    max_tiles: int = _knob(10, "Max tiles", 1, 10)
    use_thumbnail: bool = _knob(True, "Add a thumbnail of the whole image")
    min_image_tokens: int = _knob(64, "Min image tokens", 16, 256, 16)
    max_image_tokens: int = _knob(256, "Max image tokens", 16, 1024, 16)

    def __post_init__(self) -> None:
        for name in ("do_image_splitting", "use_thumbnail"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be true or false.")
        for name, (low, high) in LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"{name} must be a whole number between {low} and {high}.")
            if not low <= value <= high:
                raise InputError(f"{name} is {value}; use a value between {low} and {high}.")
        if self.do_image_splitting and self.min_tiles < 2:
            # transformers 5.23 then counts thumbnail-sized tokens for a full 512 px tile
            raise InputError(
                "With tiling on, min_tiles must be at least 2; turn tiling off for one view."
            )
        if self.min_tiles > self.max_tiles:
            raise InputError(
                f"min_tiles ({self.min_tiles}) is above max_tiles ({self.max_tiles}); "
                "lower min_tiles or raise max_tiles."
            )
        if self.min_image_tokens > self.max_image_tokens:
            raise InputError(
                f"min_image_tokens ({self.min_image_tokens}) is above max_image_tokens "
                f"({self.max_image_tokens}); lower the minimum or raise the maximum."
            )

    @classmethod
    def from_processor(cls, processor: Any) -> Tiling:
        """The loaded model's own defaults (its processor config)."""
        source = getattr(processor, "image_processor", processor)
        values = {name: getattr(source, name) for name in FIELDS}
        values["min_image_tokens"] = max(values["min_image_tokens"], LIMITS["min_image_tokens"][0])
        return cls(**values)

    @classmethod
    def from_dict(cls, values: Any, defaults: Tiling | None = None) -> Tiling:
        """Validated settings from untrusted JSON-ish values; unknown keys are errors."""
        if values is None:
            return defaults or cls()
        if not isinstance(values, dict):
            raise InputError('Tiling settings must be a JSON object, e.g. {"max_tiles": 4}.')
        unknown = sorted(set(values) - set(FIELDS))
        if unknown:
            raise InputError(
                f"Unknown tiling setting(s): {', '.join(map(str, unknown))[:100]}. "
                f"Known: {', '.join(FIELDS)}."
            )
        typed = {}
        for name, value in values.items():
            typed[name] = _flag(name, value) if name in _FLAGS else _whole(name, value)
        return replace(defaults or cls(), **typed)

    def images_kwargs(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def budget(self) -> int:
        """The most image tokens one image may cost under these settings."""
        if not self.do_image_splitting:
            return self.max_image_tokens
        tiled = self.max_tiles * TILE_TOKENS + (self.max_image_tokens if self.use_thumbnail else 0)
        return max(tiled, self.max_image_tokens)


FIELDS = tuple(Tiling.__dataclass_fields__)
RANGES = (("min_tiles", "max_tiles"), ("min_image_tokens", "max_image_tokens"))  # low <= high
KNOBS = {name: dict(f.metadata) for name, f in Tiling.__dataclass_fields__.items()}
LIMITS = {name: knob["range"] for name, knob in KNOBS.items() if knob["range"][0] is not None}
_FLAGS = tuple(name for name in FIELDS if name not in LIMITS)

PRESETS = {
    "fast": Tiling(False, 1, 1, False, 32, 64),  # in FIELDS' order
    "balanced": Tiling(False, 1, 1, False, 64, 128),
    "detailed": Tiling(True, 2, 4, True, 128, 256),
}
PRESET_NOTES = {
    "fast": "32-64 tokens, one tile",
    "balanced": "64-128 tokens, one tile",
    "detailed": "128-256 tokens per view, up to 4 tiles of 512 px plus a thumbnail",
}


def preset(name: str, use_thumbnail: bool = True) -> Tiling:
    """A preset; the thumbnail follows the model (LFM2-VL-450M is trained without one)."""
    if name not in PRESETS:
        raise InputError(f"Unknown preset '{str(name)[:40]}'; use one of {', '.join(PRESETS)}.")
    chosen = PRESETS[name]
    return replace(chosen, use_thumbnail=chosen.use_thumbnail and use_thumbnail)


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise InputError(f"{name} must be true or false, not {str(value)[:20]!r}.")


def _whole(name: str, value: Any) -> int:
    low, high = LIMITS[name]
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{name} must be a whole number between {low} and {high}.")
    return value


def fit(image: Any, tiling: Tiling) -> Any:
    """The image as the processor should see it so that it stays inside the budget."""
    return _fit_small(_cap_aspect(image), tiling)


def _cap_aspect(image: Any) -> Any:
    """Pad (white) an image longer than MAX_ASPECT:1 to that ratio, after shrinking it to
    MAX_LONG_SIDE: the processor clamps each side to >= 32 px and would keep the long side."""
    from PIL import Image

    width, height = image.size
    if max(width, height) <= MAX_ASPECT * min(width, height):
        return image
    scale = min(1.0, MAX_LONG_SIDE / max(width, height))
    if scale < 1:
        image = image.resize((max(1, round(width * scale)), max(1, round(height * scale))))
        width, height = image.size
    target = (
        max(width, math.ceil(height / MAX_ASPECT)),
        max(height, math.ceil(width / MAX_ASPECT)),
    )
    canvas = Image.new("RGB", target, "white")
    canvas.paste(image, ((target[0] - width) // 2, (target[1] - height) // 2))
    return canvas


def _fit_small(image: Any, tiling: Tiling) -> Any:
    """Resize an image below the token minimum onto a 32 px grid within [min, max] tokens.

    The processor would upscale it itself, rounding each side up, which can land above
    max_image_tokens; a size already on the grid and inside the range passes through unchanged.
    """
    width, height = image.size
    if width * height >= tiling.min_image_tokens * TOKEN_PX**2:
        return image
    aspect = math.log(width / height)
    best = None
    for cols in range(1, tiling.max_image_tokens + 1):
        rows = max(1, math.ceil(tiling.min_image_tokens / cols))
        if rows * cols > tiling.max_image_tokens:
            continue
        error = abs(math.log(cols / rows) - aspect)
        if best is None or error < best[0]:
            best = (error, cols, rows)
    _, cols, rows = best
    return image.resize((cols * TOKEN_PX, rows * TOKEN_PX))


def plan_tiles(processor: Any, image: Any, tiling: Tiling, context_tokens: int) -> dict[str, Any]:
    """What the processor makes of `image` under `tiling`, read from its own output."""
    fitted = fit(image, tiling)
    out = processor(
        images=[[fitted]],
        text=[processor.image_token],
        images_kwargs=tiling.images_kwargs(),
        return_tensors="pt",
    )
    ids = out["input_ids"][0].tolist()
    layout = read_layout(ids)
    shapes = out["spatial_shapes"].tolist()
    view_h, view_w = shapes[-1]  # the single view, or the thumbnail after the tiles
    has_view = not layout["tiled"] or layout["thumbnail"]
    patch = processor.image_processor.encoder_patch_size
    tile = processor.image_processor.tile_size
    total = ids.count(IMAGE_TOKEN_ID)
    plan = {
        "image_size": list(image.size),
        "fitted_size": list(fitted.size),
        "grid": [layout["rows"], layout["cols"]],
        "tiles": layout["rows"] * layout["cols"] if layout["tiled"] else 1,
        "tiled": layout["tiled"],
        "tokens_per_tile": layout["tokens_per_tile"],
        "tile_px": tile if layout["tiled"] else None,
        "tiled_size": [layout["cols"] * tile, layout["rows"] * tile] if layout["tiled"] else None,
        "thumbnail": layout["thumbnail"],
        "view_size": [view_w * patch, view_h * patch] if has_view else None,
        "view_tokens": layout["view_tokens"],
        "image_tokens": total,
        "budget": tiling.budget,
        "context_tokens": context_tokens,
        "context_share": round(total / context_tokens, 4),
        "tiling": tiling.images_kwargs(),
    }
    if total > tiling.budget:  # a processor change slipped past fit(): never exceed the budget
        raise InputError(
            f"This image would cost {total} image tokens, above the budget of {tiling.budget}; "
            "lower max_tiles or max_image_tokens."
        )
    return plan


def unchanged_by(plan: dict[str, Any]) -> list[str]:
    """Which of the knobs cannot change this image's plan, and why: the inspector says so, so
    a slider that moves nothing is not a mystery."""
    knobs, said = plan["tiling"], []
    tiles = plan["tiles"]
    if plan["tiled"]:
        if knobs["max_tiles"] > tiles:
            said.append(
                f"This image needs only {tiles} tiles: a max tiles of {knobs['max_tiles']} "
                f"changes nothing (any value from {tiles} up cuts it the same way)."
            )
        per_tile = plan["tokens_per_tile"]
        limits = "the min and max image tokens"
        said.append(
            f"Each {plan['tile_px']} px tile costs {per_tile} tokens whatever {limits}: "
            + (
                f"they set only the thumbnail ({plan['view_tokens']} tokens)."
                if plan["thumbnail"]
                else "with no thumbnail, they change nothing here."
            )
        )
    else:
        if knobs["do_image_splitting"]:
            said.append(
                "Tiling is on, but this image fits one view: the tile settings change nothing."
            )
        low, high, cost = knobs["min_image_tokens"], knobs["max_image_tokens"], plan["image_tokens"]
        if low < cost < high:
            said.append(
                f"At its size this image costs {cost} image tokens, between the min ({low}) "
                f"and the max ({high}): moving either within that range changes nothing."
            )
    return said


def read_layout(ids: list[int]) -> dict[str, Any]:
    """Grid and token counts of one image from its expanded token ids."""
    rows = cols = 1
    per_tile: list[int] = []
    view_tokens = 0
    section = None
    for token in ids:
        if ROW_COL_FIRST <= token <= ROW_COL_LAST:
            index = token - ROW_COL_FIRST
            rows, cols = max(rows, index // 10 + 1), max(cols, index % 10 + 1)
            per_tile.append(0)
            section = "tile"
        elif token == THUMBNAIL_ID:
            section = "thumbnail"
        elif token == IMAGE_TOKEN_ID:
            if section == "tile":
                per_tile[-1] += 1
            else:
                view_tokens += 1
    tiled = bool(per_tile)
    return {
        "rows": rows,
        "cols": cols,
        "tiled": tiled,
        "tokens_per_tile": per_tile[0] if tiled else None,
        "thumbnail": tiled and THUMBNAIL_ID in ids,
        "view_tokens": view_tokens,
    }


PREVIEW_BOX = (960, 720)
GRID_COLOUR = (255, 64, 64, 255)
TOKEN_GRID_COLOUR = (255, 255, 255, 110)
THUMB_COLOUR = (64, 160, 255, 255)


def preview(image: Any, plan: dict[str, Any]) -> Any:
    """The picture with the plan drawn over it: tile grid, token grid, thumbnail inset."""
    from PIL import Image, ImageDraw, ImageOps

    # the picture as the model gets it (padded to 16:1 at most): a 1x65500 strip shrank to
    # zero width here and the preview failed
    shown = ImageOps.contain(_cap_aspect(image).convert("RGB"), PREVIEW_BOX)
    width, height = shown.size
    overlay = Image.new("RGBA", shown.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    if plan["tiled"]:
        rows, cols = plan["grid"]
        for c in range(1, cols):
            x = round(c * width / cols)
            draw.line([(x, 0), (x, height)], fill=GRID_COLOUR, width=3)
        for r in range(1, rows):
            y = round(r * height / rows)
            draw.line([(0, y), (width, y)], fill=GRID_COLOUR, width=3)
        for r in range(rows):
            for c in range(cols):
                x, y = round(c * width / cols) + 6, round(r * height / rows) + 6
                _label(draw, (x, y), f"tile {r + 1},{c + 1} · {plan['tokens_per_tile']}")
        if plan["thumbnail"]:
            _thumbnail_inset(shown, overlay, image, plan)
    else:
        view_w, view_h = plan["view_size"]
        step_x, step_y = width / (view_w / TOKEN_PX), height / (view_h / TOKEN_PX)
        if min(step_x, step_y) >= 4:  # a token grid finer than 4 px is noise
            for i in range(1, round(view_w / TOKEN_PX)):
                draw.line([(round(i * step_x), 0), (round(i * step_x), height)], TOKEN_GRID_COLOUR)
            for j in range(1, round(view_h / TOKEN_PX)):
                draw.line([(0, round(j * step_y)), (width, round(j * step_y))], TOKEN_GRID_COLOUR)
        _label(draw, (6, 6), f"one view {view_w}x{view_h} px · {plan['view_tokens']} tokens")
    return Image.alpha_composite(shown.convert("RGBA"), overlay).convert("RGB")


def _thumbnail_inset(shown: Any, overlay: Any, image: Any, plan: dict[str, Any]) -> None:
    """The thumbnail at its own resolution, to the scale of the tiles, in the corner."""
    from PIL import ImageDraw

    scale = shown.size[0] / plan["tiled_size"][0]
    view_w, view_h = plan["view_size"]
    size = (max(8, round(view_w * scale)), max(8, round(view_h * scale)))
    thumb = image.convert("RGB").resize((view_w, view_h)).resize(size)
    corner = (shown.size[0] - size[0] - 8, shown.size[1] - size[1] - 8)
    shown.paste(thumb, corner)
    draw = ImageDraw.Draw(overlay)
    draw.rectangle(
        [corner, (corner[0] + size[0], corner[1] + size[1])], outline=THUMB_COLOUR, width=3
    )
    text = f"thumbnail {view_w}x{view_h} · {plan['view_tokens']}"
    _label(draw, (max(4, corner[0] - 40), max(4, corner[1] - 26)), text)


def _label(draw: Any, at: tuple[int, int], text: str) -> None:
    from PIL import ImageFont

    font = ImageFont.load_default(size=15)
    box = draw.textbbox(at, text, font=font)
    draw.rectangle([box[0] - 4, box[1] - 3, box[2] + 4, box[3] + 3], fill=(0, 0, 0, 170))
    draw.text(at, text, fill=(255, 255, 255, 255), font=font)
