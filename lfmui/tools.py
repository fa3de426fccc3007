"""Tools: plain typed Python functions whose signature and docstring are the JSON schema.

``Tool.from_function`` is transformers' ``get_json_schema``: the function's type hints and its
Google-style docstring (first paragraph = description, ``Args:`` = parameter descriptions).
``execute`` runs a parsed call with a timeout and an output cap; an unknown tool, bad arguments,
a tool that raises or one that hangs all become a ``ToolResult`` the model reads, never an
exception in the loop.

Where tools run: in worker processes (``_Workers``: fresh interpreters that import only this
module, at most ``MAX_WORKERS`` at once, each reused call after call). A call that overruns
its timeout (counted once the function is loaded: importing its module is not the tool's
time) is stopped by killing its process, so a hung tool holds nothing: the next call gets
a fresh worker. A tool's function therefore travels by reference: it must be defined at the top
level of a module (``Tool.from_function`` refuses a closure or a lambda), and what it returns
comes back as JSON text. The picture a tool may read (``current_image``) goes along as a copy of
at most ``IMAGE_SIDE`` px, with its full size in ``info["size"]``.
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import datetime as dt
import functools
import json
import math
import operator
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import jsonschema

from lfmui import toolcalls
from lfmui.errors import InputError, broken_character, read_json

TIMEOUT_S = 2.0
MAX_OUTPUT_CHARS = 4_000
MAX_WORKERS = 4
WORKER_START_S = 30.0  # a fresh interpreter importing this module: about 0.3 s, more when busy
IMAGE_SIDE = 256
current_image: contextvars.ContextVar[Any] = contextvars.ContextVar("current_image", default=None)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[..., Any] | None = None  # None: a schema-only tool (results come by hand)

    def schema(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "parameters": self.parameters}

    @classmethod
    def from_function(cls, fn: Callable[..., Any]) -> Tool:
        """transformers' ``get_json_schema``: type hints (unions, Literal, lists, dicts) and a
        Google-style docstring (every argument described under ``Args:``)."""
        from transformers.utils.chat_template_utils import get_json_schema

        try:
            pickle.dumps(fn)
        except (pickle.PicklingError, AttributeError, TypeError):
            raise InputError(
                f"{getattr(fn, '__name__', 'A tool')}: a tool runs in a worker process, so its "
                "function must be defined at the top level of a module (not a closure or a "
                "lambda)."
            ) from None
        schema = get_json_schema(fn)["function"]
        return cls(schema["name"], schema["description"], schema["parameters"], fn)

    @classmethod
    def from_schema(cls, schema: Any) -> Tool:
        """A tool defined by JSON (the playground's editor): validated, with no function."""
        if not isinstance(schema, dict) or not isinstance(schema.get("name"), str):
            raise InputError('Each tool needs a "name" (a string).')
        name = schema["name"]
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}", name) or ".." in name:
            raise InputError(
                f"Tool name {name[:40]!r} cannot be called: use letters, digits, _, hyphens "
                "and single dots (at most 64), as OpenAI's tool names do."
            )
        parameters = schema.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
            raise InputError(f'{name}: "parameters" must be a JSON schema of type object.')
        if not isinstance(parameters.get("properties", {}), dict):
            raise InputError(f'{name}: "parameters.properties" must be an object.')
        try:  # a schema jsonschema cannot use ("required": 5, a dict as a type) is refused here
            jsonschema.Draft202012Validator.check_schema(parameters)
        except (jsonschema.SchemaError, RecursionError) as exc:
            where = "/".join(str(p) for p in getattr(exc, "path", [])) or "parameters"
            raise InputError(
                f"{name}: its parameters are not a valid JSON schema (at {where[:60]}); "
                "fix the definition."
            ) from None
        if broken_character(json.dumps(schema, ensure_ascii=False, default=str)):  # to the prompt
            raise InputError(
                f"{name}: its definition holds a broken character (an unpaired UTF-16 "
                "surrogate); remove it."
            )
        description = str(schema.get("description", ""))[:1000]
        return cls(name, description, parameters, _builtin_fn(name))


@dataclass
class ToolResult:
    name: str
    arguments: dict[str, Any]
    ok: bool
    output: str  # what goes back to the model (JSON text or an error sentence)
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "arguments": self.arguments,
            "ok": self.ok,
            "output": self.output,
            "seconds": round(self.seconds, 4),
        }


def execute(
    call: dict[str, Any],
    registry: dict[str, Tool],
    timeout: float = TIMEOUT_S,
    max_output: int = MAX_OUTPUT_CHARS,
) -> ToolResult:
    """Run one parsed call; every failure is a result the model can read."""
    name, arguments = call["name"], call.get("arguments", {})
    started = time.perf_counter()

    def result(ok: bool, output: str) -> ToolResult:
        elapsed = time.perf_counter() - started
        return ToolResult(name, arguments, ok, _cap(output, max_output), elapsed)

    tool = registry.get(name)
    if tool is None:
        return result(False, f"Error: unknown tool '{name[:60]}'.")
    problems = toolcalls.validate(call, tool.schema())
    if problems:
        return result(False, "Error: " + " ".join(problems))
    if tool.fn is None:
        return result(False, f"Error: {name} has no implementation here; answer without it.")
    ok, output = _workers.run(tool.fn, arguments, _portable(current_image.get()), timeout)
    return result(ok, output if ok else f"Error: {name} {output}")


def _call(fn: Callable[..., Any], arguments: dict[str, Any]) -> tuple[bool, str]:
    """One call, in a worker: (True, its value as JSON text) or (False, what went wrong)."""
    try:
        value = fn(**arguments)
    except Exception as exc:  # the tool's own failure: reported to the model
        return False, f"failed: {type(exc).__name__}: {str(exc)[:300]}"
    try:
        text = value if isinstance(value, str) else json.dumps(value, allow_nan=False, default=str)
    except ValueError:
        return False, "returned a value that is not valid JSON."
    return True, text


def serve(fd: int) -> None:
    """A worker process's loop (``python -c "...serve(fd)"``): calls in, (ok, text) out, over
    the socket `fd`, until it closes."""
    from multiprocessing.connection import Connection

    connection = Connection(fd)
    connection.send("ready")
    while True:
        try:  # the function first: its module is imported here, outside the call's time
            fn = connection.recv()
        except (EOFError, OSError):
            return
        except Exception as exc:  # noqa: BLE001 - a module that cannot be imported here
            connection.send(f"could not be loaded: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        connection.send("ready")
        try:
            arguments, image = connection.recv()
        except (EOFError, OSError):
            return
        token = current_image.set(image)
        try:
            connection.send(_call(fn, arguments))
        finally:
            current_image.reset(token)


class _Workers:
    """Worker processes for tool calls: idle ones are reused; one whose call overruns is killed.

    A worker is a fresh interpreter that imports this module only (``subprocess``, not
    ``multiprocessing``: its children import the main script again, and ``app.py`` builds the
    whole app at import)."""

    def __init__(self) -> None:
        self._idle: list[tuple[subprocess.Popen, Any]] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_WORKERS)

    def run(
        self, fn: Callable[..., Any], arguments: dict[str, Any], image: Any, timeout: float
    ) -> tuple[bool, str]:
        if not self._slots.acquire(timeout=timeout):
            return False, f"did not start: {MAX_WORKERS} tool calls are running; try again."
        try:
            try:
                process, connection = self._take()
            except OSError as exc:
                return False, f"did not start: no worker process ({exc.strerror or exc})."
            try:
                connection.send(fn)  # loaded (its module imported) before the clock starts
                if not connection.poll(WORKER_START_S):
                    _kill(process, connection)
                    return False, f"did not start: its module took over {WORKER_START_S:g} s."
                loaded = connection.recv()
                if loaded != "ready":
                    self._give_back(process, connection)
                    return False, loaded
                connection.send((arguments, image))
                if connection.poll(timeout):
                    answer = connection.recv()
                    self._give_back(process, connection)
                    return answer
                _kill(process, connection)
                return False, f"did not finish within {timeout:g} s; it was stopped."
            except (EOFError, OSError, pickle.PicklingError):  # the worker died mid-call
                _kill(process, connection)
                return False, "failed: its worker process ended during the call."
        finally:
            self._slots.release()

    def _give_back(self, process: subprocess.Popen, connection: Any) -> None:
        with self._lock:
            self._idle.append((process, connection))

    def _take(self) -> tuple[subprocess.Popen, Any]:
        with self._lock:
            while self._idle:
                process, connection = self._idle.pop()
                if process.poll() is None:
                    return process, connection
                connection.close()
        from multiprocessing.connection import Connection

        ours, theirs = socket.socketpair()
        paths = os.pathsep.join(p for p in sys.path if p)  # a tool defined in any module here
        process = subprocess.Popen(
            [sys.executable, "-c", f"import lfmui.tools as t; t.serve({theirs.fileno()})"],
            pass_fds=[theirs.fileno()],
            env={**os.environ, "PYTHONPATH": paths},
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: a kill takes what the tool started
        )
        theirs.close()
        connection = Connection(ours.detach())
        if not connection.poll(WORKER_START_S) or connection.recv() != "ready":
            _kill(process, connection)
            raise OSError(0, f"a worker did not start within {WORKER_START_S:g} s")
        return process, connection

    def running(self) -> list[int]:
        """The pids of the idle workers (for tests and the log)."""
        with self._lock:
            return [process.pid for process, _ in self._idle if process.poll() is None]


def _kill(process: subprocess.Popen, connection: Any) -> None:
    """Kill the worker and every process its tool started (its process group)."""
    with contextlib.suppress(OSError):
        os.killpg(process.pid, signal.SIGKILL)
    process.kill()
    process.wait(timeout=5)
    connection.close()


_workers = _Workers()


def _portable(image: Any) -> Any:
    """The picture a tool may read, small enough to send to a worker; its size kept."""
    if image is None:
        return None
    small = image.copy()
    small.thumbnail((IMAGE_SIDE, IMAGE_SIDE))
    small.info = {"size": image.size}
    return small


def _builtin_fn(name: str) -> Callable[..., Any] | None:
    return next((f for f in _BUILTIN_FUNCTIONS if f.__name__ == name), None)


def _cap(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"… [cut: {len(text) - limit:,} more characters]"


# ---- built-in demo tools -----------------------------------------------------------------------
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


_BUILTIN_FUNCTIONS = (calculator, convert_units, date_math, get_weather, search_docs, image_facts)


@functools.cache
def builtins() -> dict[str, Tool]:
    """The built-in tools by name (their schemas made on first use: get_json_schema comes
    with transformers, which importing this module does not pull in)."""
    return {fn.__name__: Tool.from_function(fn) for fn in _BUILTIN_FUNCTIONS}


def __getattr__(name: str) -> Any:  # ``tools.BUILTINS``, made on first use
    if name == "BUILTINS":
        return builtins()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def registry_from_json(tools_json: str) -> Registry:
    """Tools from the playground's JSON (a list of schemas); empty means the built-ins."""
    if not tools_json or not tools_json.strip():
        return Registry(builtins(), [])
    if len(tools_json) > 50_000:
        raise InputError("The tool definitions are over 50,000 characters; keep them short.")
    schemas = read_json(tools_json, "The tool definitions")
    if isinstance(schemas, dict):
        schemas = [schemas]
    return registry_of(schemas)


class Registry(dict):
    """Tools by name, and a sentence for each definition left out (``skipped``)."""

    def __init__(self, tools: dict[str, Tool], skipped: list[str]) -> None:
        super().__init__(tools)
        self.skipped = skipped


MAX_TOOLS = 32


def registry_of(schemas: Any) -> Registry:
    """Tools from definitions, each checked alone: one that cannot be called (its name, its
    parameters, a name already given) is left out with a sentence and the rest stay. A list is
    refused as a whole only when it is not a list of at most MAX_TOOLS or none can be called."""
    if not isinstance(schemas, list) or len(schemas) > MAX_TOOLS:
        raise InputError(f"Send a JSON list of at most {MAX_TOOLS} tool definitions.")
    kept: dict[str, Tool] = {}
    skipped: list[str] = []
    for schema in schemas:
        try:
            tool = Tool.from_schema(schema)
        except InputError as exc:
            skipped.append(str(exc))
            continue
        if tool.name in kept:
            skipped.append(f"Tool name {tool.name!r} is given twice; the first one is used.")
            continue
        kept[tool.name] = tool
    if schemas and not kept:
        raise InputError(" ".join(skipped[:3]))
    return Registry(kept, skipped)
