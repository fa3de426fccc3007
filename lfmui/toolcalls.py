"""LFM2's tool calls in a reply: ``parse`` finds the blocks (Pythonic, or LFM2.5's JSON), reads
them with ``ast`` after size caps (never eval), and returns the calls, the errors (sentences the
model can act on), the repairs and the text left; ``validate`` checks a call against its schema;
``write_calls`` writes calls back in LFM2's form. Only literals are argument values. The policy,
stated once, with every case it settles: docs/tools.md#the-call-parser-lfmuitoolcalls.
"""

from __future__ import annotations

import ast
import bisect
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from lfmui import toolcall_repairs as repairs

START, END = "<|tool_call_start|>", "<|tool_call_end|>"
MAX_BLOCK_CHARS = 16_000
MAX_CALLS = 16
MAX_BLOCKS = 16
MAX_PARENS = 64
MAX_DEPTH = 16
MAX_INT = 2**63 - 1
JSON_NAMES = {"true": True, "false": False, "null": None, "True": True, "False": False}
_FENCE = re.compile(r"```.*?(```|\Z)", re.S)
_BARE = re.compile(r"\s*\[\s*[A-Za-z_][\w.\-]*\s*\(.*\]\s*", re.S)


@dataclass
class Parsed:
    calls: list[dict[str, Any]] = field(default_factory=list)  # {"name", "arguments"}
    errors: list[str] = field(default_factory=list)
    text: str = ""  # the reply without its call blocks
    repairs: list[str] = field(default_factory=list)  # what was repaired to read a call

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "errors": self.errors,
            "text": self.text,
            "repairs": self.repairs,
        }


def write_calls(calls: list[dict[str, Any]]) -> str:
    """Calls ({"name", "arguments"}) written the way LFM2 writes them: a block ``parse`` reads
    back to the same calls (an assistant's earlier calls, sent again in a conversation)."""
    return block_of(write_call(call) for call in calls)


def write_call(call: dict[str, Any]) -> str:
    return f"{call['name']}({', '.join(f'{k}={v!r}' for k, v in call['arguments'].items())})"


def block_of(written: Any) -> str:
    """Written calls as one block, markers included."""
    return f"{START}[{', '.join(written)}]{END}"


class CallError(ValueError):
    """A block or call that cannot be used; its message goes back to the model."""


def parse(text: str, tools: list[dict[str, Any]] | None = None) -> Parsed:
    """Calls, errors and remaining text of one model reply. Never raises on model output."""
    schemas = {t.get("name"): t for t in tools or [] if isinstance(t, dict)}
    aliases = _aliases(schemas)
    result = Parsed()
    if tools and START not in text and _BARE.fullmatch(text):
        bare = parse(f"{START}{text.strip()}{END}", tools)
        if bare.calls and not bare.errors:
            bare.repairs.append("read a call list written without the tool-call markers")
            return bare
    remaining: list[str] = []
    blocks = 0
    for kind, chunk in _split(text):
        if kind == "text":
            remaining.append(chunk)
            continue
        blocks += 1
        if blocks > MAX_BLOCKS:  # the work per reply is bounded
            if blocks == MAX_BLOCKS + 1:
                result.errors.append(
                    f"The reply has more than {MAX_BLOCKS} tool-call blocks; only the first "
                    f"{MAX_BLOCKS} were read. Make the calls in one block."
                )
            continue
        try:
            calls, errors, repairs = parse_block(_named(chunk, aliases))
        except CallError as exc:
            result.errors.append(_unnamed(str(exc), aliases))
            continue
        result.errors.extend(_unnamed(e, aliases) for e in errors)
        result.repairs.extend(_unnamed(r, aliases) for r in repairs)
        for call in calls:
            call["name"] = _unnamed(call["name"], aliases)
            try:
                call["arguments"] = _bind(call, schemas.get(call["name"]))
            except CallError as exc:
                result.errors.append(str(exc))
                continue
            problems = validate(call, schemas.get(call["name"])) if tools is not None else []
            if problems:
                result.errors.extend(problems)
            else:
                result.calls.append({"name": call["name"], "arguments": call["arguments"]})
    result.text = "".join(remaining).strip()
    return result


def _aliases(schemas: dict[str, Any]) -> dict[str, str]:
    """Python names for the tools whose names are not (``get-weather``): name -> alias."""
    odd = [n for n in schemas if isinstance(n, str) and not re.fullmatch(r"[A-Za-z_][\w.]*", n)]
    return {name: f"lfmui_tool_{i}" for i, name in enumerate(odd)}


def _named(body: str, aliases: dict[str, str]) -> str:
    """`body` with each tool name that is not a Python name replaced by its alias, where it
    is called and outside strings."""
    for name, alias in aliases.items():
        pattern = re.compile(rf"(?<![\w.\-]){re.escape(name)}(?=\s*\()")
        body = _outside_strings(body, lambda code, p=pattern, a=alias: p.sub(a, code))
    return body


def _unnamed(text: str, aliases: dict[str, str]) -> str:
    for name, alias in aliases.items():
        text = re.sub(rf"\b{alias}\b", name, text)
    return text


def _outside_strings(text: str, change: Any) -> str:
    """`text` with `change` applied to the parts outside string literals."""
    return "".join(
        change(piece) if kind == "code" else piece for kind, piece in repairs.pieces(text)
    )


def _split(text: str) -> list[tuple[str, str]]:
    """("text", ...) and ("block", body) pieces; markers in fenced code stay text."""
    fences = [(m.start(), m.end()) for m in _FENCE.finditer(text)]  # in order, apart
    starts = [a for a, _ in fences]

    def in_fence(at: int) -> bool:  # a binary search: a reply of many fences stays linear
        index = bisect.bisect_right(starts, at) - 1
        return index >= 0 and at < fences[index][1]

    pieces: list[tuple[str, str]] = []
    at = 0
    while True:
        start = text.find(START, at)
        while start != -1 and in_fence(start):
            start = text.find(START, start + 1)
        if start == -1:
            pieces.append(("text", _drop_stray_ends(text[at:], at, in_fence)))
            return pieces
        pieces.append(("text", _drop_stray_ends(text[at:start], at, in_fence)))
        end = text.find(END, start)
        body_end = end if end != -1 else len(text)
        body = text[start + len(START) : body_end]
        pieces.append(("block", body))
        at = body_end + len(END) if end != -1 else len(text)
        at = _skip_echo(text, at, body.strip())


def _skip_echo(text: str, at: int, body: str) -> int:
    """Past the call body when LFM2 repeats it after the end marker (with or without [])."""
    rest = text[at:].lstrip()
    bare = body[1:-1].strip() if body.startswith("[") and body.endswith("]") else ""
    for echoed in (body, bare):
        if echoed and rest.startswith(echoed):
            return len(text) - len(rest) + len(echoed)
    return at


def _drop_stray_ends(chunk: str, offset: int, in_fence) -> str:
    out, at = [], 0
    while (end := chunk.find(END, at)) != -1:
        if in_fence(offset + end):
            out.append(chunk[at : end + len(END)])
        else:
            out.append(chunk[at:end])
        at = end + len(END)
    out.append(chunk[at:])
    return "".join(out)


def parse_block(body: str) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """The calls in one block body (``[f(a=1), g()]``), literals only, with the errors of the
    calls that cannot be used and the repairs made; CallError when the block as a whole is."""
    body = body.strip()
    if not body:
        raise CallError("The tool call block is empty; write [tool_name(arg=value)].")
    _check_caps(body)
    try:
        tree = ast.parse(body, mode="eval").body
        nodes = tree.elts if isinstance(tree, ast.List | ast.Tuple) else [tree]
        items: list[tuple[ast.AST | CallError, list[str]]] = [(node, []) for node in nodes]
    except (SyntaxError, ValueError):  # ValueError: a NUL byte
        items = _call_by_call(body)
    except (MemoryError, RecursionError):
        raise CallError("The tool call could not be parsed; keep it short and flat.") from None
    if not items:
        raise CallError("The tool call list is empty; write [tool_name(arg=value)].")
    if len(items) > MAX_CALLS:
        raise CallError(f"{len(items)} calls in one block; make at most {MAX_CALLS}.")
    calls, errors, repairs = [], [], []
    for node, notes in items:
        try:
            if isinstance(node, CallError):
                raise node
            call = _call(node)
        except CallError as exc:
            errors.append(str(exc))
            continue
        calls.append(call)
        repairs.extend(f"{call['name']}: {note}" for note in notes)
    return calls, errors, repairs


def _call_by_call(body: str) -> list[tuple[ast.AST | CallError, list[str]]]:
    """A block that does not parse as a whole: each top-level call on its own, repaired where
    a reader would agree what was meant (the policy above), with the notes of its repairs;
    a call that still does not parse is its CallError."""
    inner = body[1:] if body.startswith("[") else body
    items: list[tuple[ast.AST | CallError, list[str]]] = []
    for segment in repairs.segments(inner[:-1] if inner.endswith("]") else inner):
        try:
            items.append(repairs.parse_repaired(segment))
        except (SyntaxError, ValueError) as exc:
            reason = exc.msg if isinstance(exc, SyntaxError) else "it cannot be read"
            shown = segment[:60]
            message = f"The tool call {shown!r} is not valid Python call syntax: {reason}."
            items.append((CallError(message), []))
        except (MemoryError, RecursionError):
            items.append((CallError("A tool call could not be parsed; keep it short."), []))
    return items


def _check_caps(body: str) -> None:
    if len(body) > MAX_BLOCK_CHARS:
        raise CallError(
            f"The tool call block is {len(body):,} characters; the limit is {MAX_BLOCK_CHARS:,}."
        )
    if body.count("(") > MAX_PARENS:
        raise CallError(f"The tool call block has more than {MAX_PARENS} calls or groups.")
    depth = deepest = 0
    for char in body:  # brackets inside strings count too: stricter, never looser
        if char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]}":
            depth -= 1
    if deepest > MAX_DEPTH:
        raise CallError(f"The tool call nests {deepest} levels deep; the limit is {MAX_DEPTH}.")


def _call(node: ast.AST) -> dict[str, Any]:
    if isinstance(node, ast.Dict):
        return _json_call(literal(node, "the tool call"))
    if not isinstance(node, ast.Call):
        raise CallError("Each item of the tool call list must be a call: tool_name(arg=value).")
    name = _dotted(node.func)
    if name is None:
        raise CallError("Call a tool by its name (letters, digits, _ and dots; no expressions).")
    positional = []
    for arg in node.args:
        if isinstance(arg, ast.Starred):
            raise CallError(f"{name}: *args unpacking is not allowed; name each argument.")
        positional.append(literal(arg, name))
    keywords: dict[str, Any] = {}
    for keyword in node.keywords:
        if keyword.arg is None:
            raise CallError(f"{name}: **kwargs unpacking is not allowed; name each argument.")
        if keyword.arg in keywords:  # ast.parse accepts repeats; the compiler would not
            raise CallError(f"{name}: '{keyword.arg}' is given twice; give each argument once.")
        keywords[keyword.arg] = literal(keyword.value, name)
    return {"name": name, "positional": positional, "arguments": keywords}


def _json_call(item: dict[str, Any]) -> dict[str, Any]:
    """A call in the JSON form (``{"name": "f", "arguments": {...}}``; the arguments may come
    as a JSON string, as OpenAI's ``tool_calls`` carry them)."""
    name, arguments = item.get("name"), item.get("arguments", {})
    if not isinstance(name, str) or not name or set(item) - {"name", "arguments"}:
        raise CallError('A JSON tool call is {"name": "tool_name", "arguments": {...}}.')
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            arguments = None
    if not isinstance(arguments, dict):
        raise CallError(f'{name}: "arguments" must be an object of named arguments.')
    return {"name": name, "positional": [], "arguments": arguments}


def _dotted(node: ast.AST) -> str | None:
    """``name`` or ``a.b.name`` (a tool whose name has dots, as OpenAI clients define them),
    else None. The name is only looked up among the tools, never resolved as Python."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return None if head is None else f"{head}.{node.attr}"
    return None


def literal(node: ast.AST, where: str) -> Any:
    """The value of a literal node, or CallError."""
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return value
        if isinstance(value, int):
            if abs(value) > MAX_INT:
                raise CallError(f"{where}: integer {str(value)[:20]}… is too large.")
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise CallError(f"{where}: numbers must be finite.")
            return value
        raise CallError(f"{where}: {type(value).__name__} values are not allowed.")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = literal(node.operand, where)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CallError(f"{where}: a sign can only go before a number.")
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.List | ast.Tuple):
        return [literal(item, where) for item in node.elts]
    if isinstance(node, ast.Set):  # JSON has no sets: a list of the distinct items, in order
        items = [literal(item, where) for item in node.elts]
        return list({json.dumps(i, sort_keys=True): i for i in items}.values())
    if isinstance(node, ast.Dict):
        out = {}
        for key, value in zip(node.keys, node.values, strict=True):
            if key is None:
                raise CallError(f"{where}: ** inside a dict is not allowed.")
            key_value = literal(key, where)
            if not isinstance(key_value, str):
                raise CallError(f"{where}: dict keys must be strings.")
            out[key_value] = literal(value, where)
        return out
    if isinstance(node, ast.Name) and node.id in JSON_NAMES:
        return JSON_NAMES[node.id]
    kind = type(node).__name__
    raise CallError(f"{where}: only literal values are allowed as arguments (got {kind}).")


def _bind(call: dict[str, Any], schema: dict[str, Any] | None) -> dict[str, Any]:
    """Keyword arguments, with positional ones matched to the schema's parameter order."""
    arguments = dict(call["arguments"])
    if not call["positional"]:
        return arguments
    if schema is None:
        raise CallError(
            f"{call['name']}: positional arguments need a known tool; use name=value arguments."
        )
    order = list(schema.get("parameters", {}).get("properties", {}))
    if len(call["positional"]) > len(order):
        raise CallError(
            f"{call['name']} takes at most {len(order)} arguments; "
            f"got {len(call['positional'])} positional ones."
        )
    for name, value in zip(order, call["positional"], strict=False):
        if name in arguments:
            raise CallError(f"{call['name']}: '{name}' is given twice.")
        arguments[name] = value
    return arguments


def validate(call: dict[str, Any], schema: dict[str, Any] | None) -> list[str]:
    """Errors of `call` against its tool's JSON schema (jsonschema, draft 2020-12), as
    sentences the model can act on. Objects that declare properties take no others unless
    they say so (``additionalProperties: false`` is set where the schema is silent)."""
    from jsonschema import Draft202012Validator

    name = call["name"]
    if schema is None:
        return [f"Unknown tool '{name[:60]}'. Call one of the tools in the list."]
    parameters = closed(schema.get("parameters") or {"type": "object", "properties": {}})
    validator = Draft202012Validator(parameters)
    errors = sorted(validator.iter_errors(call["arguments"]), key=lambda e: list(e.path))
    return [f"{name}: {_sentence(error)}" for error in errors]


def closed(schema: Any) -> Any:
    """`schema` with ``additionalProperties: false`` on every object that declares properties
    and does not say otherwise (a copy)."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: closed(value) for key, value in schema.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _sentence(error: Any) -> str:
    path = "arguments" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.path)
    value, kind = error.instance, error.validator
    if kind == "type":
        wanted = error.validator_value
        kinds = wanted if isinstance(wanted, list) else [wanted]
        return f"{path} should be {' or '.join(kinds)}, got {_kind(value)}."
    if kind == "enum":
        options = ", ".join(map(repr, error.validator_value))[:200]
        return f"{path} is {value!r}; use one of {options}."
    if kind == "required":
        missing = [k for k in error.validator_value if k not in value]
        return " ".join(f"{path}.{k} is required." for k in missing)
    if kind == "additionalProperties":
        known = error.schema.get("properties", {})
        extra = [k for k in value if k not in known]
        return " ".join(f"{path}.{k} is not a parameter of this tool." for k in extra)
    return f"{path}: {error.message[:300]}."


def _kind(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}
    names.update({dict: "object", type(None): "null"})
    return names.get(type(value), type(value).__name__)
