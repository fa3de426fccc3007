"""Tools: plain typed Python functions whose signature and docstring are the JSON schema.

``Tool.from_function`` is transformers' ``get_json_schema``; ``Tool.from_schema`` checks a JSON
definition. ``execute`` runs a parsed call in a worker process (``tools.workers``) with a timeout
and an output cap: an unknown tool, bad arguments, a tool that raises or one that hangs all become
a ``ToolResult`` the model reads, never an exception in the loop. The demo tools are in
``tools.builtin``. Why tools run apart and what that asks of a tool: docs/tools.md.
"""

from __future__ import annotations

import functools
import json
import pickle
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jsonschema

from lfmui import toolcalls
from lfmui.errors import InputError, broken_character, read_json
from lfmui.tools import workers
from lfmui.tools.workers import TIMEOUT_S, current_image

MAX_OUTPUT_CHARS = 4_000


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
    ok, output = workers.run(tool.fn, arguments, current_image.get(), timeout)
    return result(ok, output if ok else f"Error: {name} {output}")


def _builtin_fn(name: str) -> Callable[..., Any] | None:
    from lfmui.tools import builtin

    return next((f for f in builtin.FUNCTIONS if f.__name__ == name), None)


def _cap(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"… [cut: {len(text) - limit:,} more characters]"


@functools.cache
def builtins() -> dict[str, Tool]:
    """The built-in tools by name (their schemas made on first use: get_json_schema comes
    with transformers, which importing this module does not pull in)."""
    from lfmui.tools import builtin

    return {fn.__name__: Tool.from_function(fn) for fn in builtin.FUNCTIONS}


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
