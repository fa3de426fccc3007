"""What real LFM2 replies get wrong in a tool call, repaired in the text of a call that does not
parse, for ``lfmui.toolcalls``: a raw newline, tab or NUL inside a string escaped, an apostrophe
between letters in a single-quoted string escaped, leading zeros dropped, and failing those a
keyword's string run to the quote the next keyword follows. Each repair has a note the caller
reports. ``pieces`` and ``segments`` cut a call block into code and strings, and into calls.
The policy these follow: docs/tools.md#the-call-parser-lfmuitoolcalls.
"""

from __future__ import annotations

import ast
import re
import warnings


def parse_repaired(segment: str) -> tuple[ast.AST, list[str]]:
    """The call node of `segment` as written, else after the repairs, else after re-quoting
    its keyword strings; the notes of the repairs it took. Raises the first parse error."""
    first: Exception | None = None
    for attempt in (lambda: (segment, []), lambda: _repair(segment), lambda: _requoted(segment)):
        text, notes = attempt()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # an unknown escape (\,) stays as written
                return ast.parse(text, mode="eval").body, notes
        except (SyntaxError, ValueError) as exc:
            first = first or exc
    raise first


_NEXT_ARGUMENT = re.compile(r"\s*(?:,\s*[A-Za-z_]\w*\s*=|\)\s*$)")
_MISSING_COMMA = re.compile(r"\s+[A-Za-z_]\w*\s*=")


def _requoted(segment: str) -> tuple[str, list[str]]:
    """Each keyword argument's string taken to end at the quote that the next keyword (or the
    call's closing parenthesis) follows; the quotes inside it escaped, then the repairs."""
    out, at, depth, found = [], 0, 0, set()
    endless: set[str] = set()  # quotes with no end from an earlier start: none from later ones
    while at < len(segment):
        char = segment[at]
        depth += (char in "([{") - (char in ")]}")
        opening = re.match(r"=\s*(['\"])", segment[at:]) if char == "=" and depth == 1 else None
        end = None
        if opening and opening.group(1) not in endless:
            end = _string_end(segment, at + opening.end(), opening.group(1))
            if end is None:
                endless.add(opening.group(1))
        if end is None:
            out.append(char)
            at += 1
            continue
        start, quote = at + opening.end(), opening.group(1)
        inner, kinds = _escaped(segment[start:end], quote)
        found |= kinds
        out.append(segment[at:start] + inner + quote)
        at = end + 1
    text, notes = _repair("".join(out))
    found = {_NOTES["raw"]} & found | ({_REQUOTED} if _NOTES["quote"] in found else set())
    return text, sorted({*notes, *found})


def _string_end(segment: str, start: int, quote: str) -> int | None:
    at = start
    while at < len(segment):
        if segment[at] == "\\":
            at += 2
            continue
        if segment[at] == quote and _NEXT_ARGUMENT.match(segment, at + 1):
            return at
        if segment[at] == quote and _MISSING_COMMA.match(segment, at + 1):
            return None  # `a="x" b="y"`: two arguments without their comma, not one string
        at += 1
    return None


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\x00"}
_NOTES = {
    "raw": "a raw newline, tab or NUL inside a string was escaped",
    "quote": "an apostrophe inside a single-quoted string was escaped",
    "zeros": "an integer's leading zeros were dropped",
}
_REQUOTED = "quotes inside a string argument were escaped"
_LEADING_ZEROS = re.compile(r"(?<![\w.])0+(?=[1-9]\d*(?![\w.]))")


def _escaped(body: str, quote: str) -> tuple[str, set[str]]:
    """A string literal's body with its unescaped `quote`s and raw newlines, tabs and NULs
    escaped, and the notes of what was."""
    out, found, at = [], set(), 0
    while at < len(body):
        char = body[at]
        if char == "\\":
            out.append(body[at : at + 2])
            at += 2
            continue
        if char == quote:
            out.append("\\" + quote)
            found.add(_NOTES["quote"])
        elif char in _ESCAPES:
            out.append(_ESCAPES[char])
            found.add(_NOTES["raw"])
        else:
            out.append(char)
        at += 1
    return "".join(out), found


def pieces(text: str) -> list[tuple[str, str]]:
    """`text` cut into ("code", ...), ("string", quoted literal) and ("open", a literal left
    open to the end). A backslash escapes the next character; a single quote between two
    letters inside a single-quoted string is an apostrophe, not its end (``'it's'``)."""
    cut, start, quote, at = [], 0, "", 0
    while at < len(text):
        char = text[at]
        if quote and char == "\\":
            at += 2
            continue
        if quote and char == quote and not _apostrophe(text, at, quote):
            cut.append(("string", text[start : at + 1]))
            start, quote = at + 1, ""
        elif not quote and char in "'\"":
            cut.append(("code", text[start:at]))
            start, quote = at, char
        at += 1
    cut.append(("open" if quote else "code", text[start:]))
    return [(kind, piece) for kind, piece in cut if piece]


def segments(body: str) -> list[str]:
    """The top-level comma-separated pieces of `body`, outside strings and brackets."""
    parts, current, depth = [], [], 0
    for kind, piece in pieces(body):
        start = 0
        for at, char in enumerate(piece if kind == "code" else ""):
            depth += (char in "([{") - (char in ")]}")
            if char == "," and depth == 0:
                parts.append("".join(current) + piece[start:at])
                current, start = [], at + 1
        current.append(piece[start:])
    parts.append("".join(current))
    return [piece.strip() for piece in parts if piece.strip()]


def _apostrophe(text: str, at: int, quote: str) -> bool:
    """A single quote between two letters inside a single-quoted string (``'it's'``)."""
    return (
        quote == "'"
        and 0 < at < len(text) - 1
        and text[at - 1].isalpha()
        and text[at + 1].isalpha()
    )


def _repair(segment: str) -> tuple[str, list[str]]:
    """`segment` with the policy's repairs made, and a note for each kind made."""
    out, notes = [], set()
    for kind, piece in pieces(segment):
        if kind == "code":
            fixed = _LEADING_ZEROS.sub("", piece)
            notes |= {_NOTES["zeros"]} if fixed != piece else set()
            out.append(fixed)
            continue
        quote, closed = piece[0], kind == "string"
        body, found = _escaped(piece[1 : -1 if closed else None], quote)
        notes |= found
        out.append(quote + body + (quote if closed else ""))
    return "".join(out), sorted(notes)
