"""The built-in demo tools, plain typed functions (their docstrings are their schemas). Their
data is fixed demo data: never presented as real weather or documents."""

from __future__ import annotations

import ast
import datetime as dt
import math
import operator
import re
from typing import Any, Literal

from lfmui.tools.workers import current_image

_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_FUNCS = {"sqrt": math.sqrt, "log": math.log, "exp": math.exp, "sin": math.sin, "cos": math.cos}


def calculator(expression: str) -> float | int:
    """Evaluate an arithmetic expression: + - * / // % **, parentheses, sqrt, log, exp, sin, cos.

    Args:
        expression: the expression, e.g. "2 * (3 + 4) ** 2"
    """
    if len(expression) > 200:
        raise ValueError("expression longer than 200 characters")
    return _arith(ast.parse(expression, mode="eval").body)


def _arith(node: ast.AST) -> float | int:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _arith(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _arith(node.left), _arith(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > 100 or abs(left) > 1e6):
            raise ValueError("exponent too large")
        return _OPS[type(node.op)](left, right)
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCS
        and len(node.args) == 1
        and not node.keywords
    ):
        return _FUNCS[node.func.id](_arith(node.args[0]))
    raise ValueError("only numbers, + - * / // % **, parentheses and sqrt/log/exp/sin/cos")


_UNITS = {  # unit -> (dimension, factor to the base unit)
    "m": ("length", 1.0),
    "km": ("length", 1000.0),
    "cm": ("length", 0.01),
    "mi": ("length", 1609.344),
    "ft": ("length", 0.3048),
    "in": ("length", 0.0254),
    "kg": ("mass", 1.0),
    "g": ("mass", 0.001),
    "lb": ("mass", 0.45359237),
    "l": ("volume", 1.0),
    "ml": ("volume", 0.001),
    "gal": ("volume", 3.785411784),
}


def convert_units(value: float, from_unit: str, to_unit: str) -> dict[str, Any]:
    """Convert a quantity between units of length (m, km, cm, mi, ft, in), mass (kg, g, lb),
    volume (l, ml, gal) or temperature (c, f, k).

    Args:
        value: the quantity to convert
        from_unit: the unit it is in
        to_unit: the unit wanted
    """
    a, b = from_unit.lower(), to_unit.lower()
    temperatures = ("c", "f", "k")  # whole unit names: "cf" is no unit (a substring test took it)
    if a in temperatures and b in temperatures:
        kelvin = {"c": value + 273.15, "f": (value - 32) * 5 / 9 + 273.15, "k": value}[a]
        out = {"c": kelvin - 273.15, "f": (kelvin - 273.15) * 9 / 5 + 32, "k": kelvin}[b]
        return {"value": round(out, 6), "unit": b}
    if a not in _UNITS or b not in _UNITS or _UNITS[a][0] != _UNITS[b][0]:
        raise ValueError(
            f"cannot convert {from_unit[:20]!r} to {to_unit[:20]!r}: use two units of one "
            f"kind: {', '.join(_UNITS)}, or c, f, k for temperature"
        )
    return {"value": round(value * _UNITS[a][1] / _UNITS[b][1], 6), "unit": b}


def date_math(start: str, days: int = 0, end: str = "") -> dict[str, Any]:
    """Add days to an ISO date, or count the days between two ISO dates.

    Args:
        start: a date as YYYY-MM-DD
        days: days to add (negative to subtract)
        end: a second date; when given, the result is the number of days from start to end
    """
    first = dt.date.fromisoformat(start)
    if end:
        return {"days_between": (dt.date.fromisoformat(end) - first).days}
    if abs(days) > 100_000:
        raise ValueError("at most 100,000 days")
    moved = first + dt.timedelta(days=days)
    return {"date": moved.isoformat(), "weekday": moved.strftime("%A")}


_WEATHER = {  # demo data, fixed: never presented as real weather
    "paris": (18, "partly cloudy"),
    "london": (14, "light rain"),
    "tokyo": (22, "clear"),
    "new york": (20, "sunny"),
    "san francisco": (16, "fog"),
    "boston": (12, "windy"),
}


def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> dict[str, Any]:
    """Current weather for a city, from a fixed demo table (not live data).

    Args:
        city: the city name, e.g. "Paris"
        unit: celsius or fahrenheit
    """
    key = city.strip().lower()
    if key not in _WEATHER:
        raise ValueError(f"no demo weather for {city!r}; known: {', '.join(sorted(_WEATHER))}")
    celsius, sky = _WEATHER[key]
    temp = celsius if unit == "celsius" else round(celsius * 9 / 5 + 32)
    return {"city": city, "temperature": temp, "unit": unit, "sky": sky, "source": "demo table"}


_DOCS = [
    (
        "LFM2-VL",
        "LFM2-VL models read images at native resolution up to 512x512 px; larger "
        "images are cut into 512 px tiles, plus a thumbnail on the 1.6B model.",
    ),
    (
        "LFM2-8B-A1B",
        "LFM2-8B-A1B is a mixture of experts with 8.3B parameters in total and "
        "about 1.5B active per token: 32 experts, 4 used per token.",
    ),
    (
        "Tool calls",
        "LFM2 writes tool calls as a Python list between <|tool_call_start|> and "
        "<|tool_call_end|>; results go back in the tool role.",
    ),
    (
        "Quantization",
        "lfmui offers bf16, fp16 and fp32, and 8-bit and 4-bit levels through "
        "bitsandbytes on CUDA.",
    ),
    (
        "Image tokens",
        "Each 512 px tile costs 256 image tokens; the image-token budget trades detail for speed.",
    ),
]


def search_docs(query: str, k: int = 3) -> list[dict[str, str]]:
    """Search a small bundled set of notes about LFM2 and lfmui.

    Args:
        query: words to look for
        k: how many results (1-5)
    """
    words = set(re.findall(r"\w+", query.lower()))
    scored = []
    for title, text in _DOCS:
        hits = len(words & set(re.findall(r"\w+", f"{title} {text}".lower())))
        if hits:
            scored.append((hits, title, text))
    scored.sort(key=lambda s: -s[0])
    return [{"title": t, "text": x} for _, t, x in scored[: max(1, min(k, 5))]]


def image_facts() -> dict[str, Any]:
    """Facts about the image the user attached: size and dominant colours."""
    image = current_image.get()
    if image is None:
        raise ValueError("no image is attached to this conversation")
    width, height = image.info.get("size", image.size)  # a worker gets a smaller copy
    small = image.convert("RGB").resize((64, 64)).quantize(colors=4)
    palette = small.getpalette()[:12]
    counts = sorted(small.getcolors(), reverse=True)
    colours = [
        {
            "hex": "#{:02x}{:02x}{:02x}".format(*palette[i * 3 : i * 3 + 3]),
            "share": round(c / 4096, 2),
        }
        for c, i in counts
    ]
    return {"width": width, "height": height, "dominant_colours": colours}


FUNCTIONS = (calculator, convert_units, date_math, get_weather, search_docs, image_facts)
