"""The Pythonic tool-call parser (CHECKLIST items 20-28), the tools, and a fuzz run."""

from __future__ import annotations

import contextlib
import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lfmui import tools
from lfmui.toolcalls import END, START, parse, parse_block

WEATHER = tools.BUILTINS["get_weather"].schema()
SCHEMAS = [t.schema() for t in tools.BUILTINS.values()]
ANY = {
    "name": "f",
    "parameters": {"type": "object", "properties": {}, "additionalProperties": True},
}


def block(body: str) -> str:
    return f"{START}{body}{END}"


@pytest.mark.parametrize(
    "body,arguments",
    [
        ('f(s="it\'s \\"quoted\\"")', {"s": 'it\'s "quoted"'}),
        ("f(s='a\\nb\\tc\\\\')", {"s": "a\nb\tc\\"}),
        (
            'f(d={"a": [1, {"b": None}], "c": {"d": True}})',
            {"d": {"a": [1, {"b": None}], "c": {"d": True}}},
        ),
        ("f(a=True, b=False, c=None)", {"a": True, "b": False, "c": None}),
        ("f(a=true, b=false, c=null)", {"a": True, "b": False, "c": None}),
        ("f(n=-1, x=-2.5, y=+3, z=1e3)", {"n": -1, "x": -2.5, "y": 3, "z": 1000.0}),
        ('f(s="東京 🙂 café")', {"s": "東京 🙂 café"}),
        ("f(t=(1, 2), l=[])", {"t": [1, 2], "l": []}),
        ("f()", {}),
    ],
)
def test_well_formed_calls(body, arguments):
    parsed = parse(block(f"[{body}]"), [ANY])
    assert parsed.errors == [] and parsed.calls == [{"name": "f", "arguments": arguments}]
    json.dumps(parsed.to_json(), allow_nan=False)  # always valid JSON


def test_item20_weather_call_parses_once():
    parsed = parse(block('[get_weather(city="Paris")]'), SCHEMAS)
    assert parsed.calls == [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    result = tools.execute(parsed.calls[0], tools.BUILTINS)
    assert result.ok and json.loads(result.output)["sky"] == "partly cloudy"


@pytest.mark.parametrize(
    "body",
    [
        "[os.system('rm -rf /')]",
        "[tools.get_weather(city='x')]",
        "[__import__('os').system('x')]",
        "[open('/etc/passwd')]",
        "[get_weather(city=f'{1+1}')]",
        "[get_weather(city=(lambda: 'x')())]",
        "[get_weather(city=open('x'))]",
        "[get_weather(city=x)]",
        "[get_weather(city={1, 2})]",
        "[get_weather(city=[c for c in 'ab'])]",
        "get_weather",
        "[1 + 1]",
    ],
)
def test_item21_nothing_is_evaluated(body, monkeypatch):
    import builtins

    monkeypatch.setattr(builtins, "eval", lambda *a: pytest.fail("eval"))
    monkeypatch.setattr(builtins, "exec", lambda *a: pytest.fail("exec"))
    parsed = parse(block(body), SCHEMAS)
    assert parsed.calls == [] and parsed.errors


def test_item21_unknown_tool_is_an_error_the_model_reads():
    parsed = parse(block("[launch_rockets(count=3)]"), SCHEMAS)
    assert parsed.calls == [] and "Unknown tool 'launch_rockets'" in parsed.errors[0]
    assert (
        "unknown tool"
        in tools.execute({"name": "launch_rockets", "arguments": {}}, tools.BUILTINS).output
    )


@pytest.mark.parametrize(
    "body,expected",
    [
        ('[get_weather("Paris", "fahrenheit")]', {"city": "Paris", "unit": "fahrenheit"}),
        ('[get_weather("Paris", "celsius", "extra")]', "at most 2 arguments"),
        ('[get_weather("Paris", city="Rome")]', "given twice"),
        ('[get_weather(**{"city": "Paris"})]', "**kwargs"),
        ('[get_weather(*["Paris"])]', "*args"),
        ('[get_weather(city="a", city="b")]', "given twice"),
        ("[get_weather(from=1)]", "not valid Python call syntax"),
    ],
)
def test_item22_argument_policy(body, expected):
    parsed = parse(block(body), SCHEMAS)
    if isinstance(expected, dict):
        assert parsed.calls == [{"name": "get_weather", "arguments": expected}]
    else:
        assert parsed.calls == [] and any(expected in e for e in parsed.errors), parsed.errors


@pytest.mark.parametrize(
    "body,expected",
    [
        ("[get_weather(city=3)]", "should be string"),
        ("[get_weather()]", "city is required"),
        ('[get_weather(city="Paris", wind=3)]', "not a parameter"),
        ('[get_weather(city="Paris", unit="kelvin")]', "use one of"),
        ('[search_docs(query="x", k="3")]', "should be integer"),
        ('[search_docs(query="x", k=True)]', "should be integer"),
    ],
)
def test_item23_schema_errors_become_results(body, expected):
    parsed = parse(block(body), SCHEMAS)
    assert parsed.calls == [] and any(expected in e for e in parsed.errors), parsed.errors
    call = parse(block(body), None).calls  # unvalidated parse, then execute validates
    if call:
        result = tools.execute(call[0], tools.BUILTINS)
        assert not result.ok and expected in result.output


@pytest.mark.parametrize(
    "value,outcome",
    [
        ("-1", -1),
        ("1e999", "finite"),
        ("-1e999", "finite"),
        ("nan", "literal"),
        ("float('nan')", "literal"),
        ("10**100", "literal"),
        ("07", 7),  # leading zeros: repaired (issue 16), reported in Parsed.repairs
        ("007.5", 7.5),  # Python's own float syntax
        ("100000000000000000000000", "too large"),
        ("0x1F", 31),
        ("1_000", 1000),
    ],
)
def test_item24_numbers_are_normalized_or_rejected(value, outcome):
    parsed = parse(block(f"[f(n={value})]"), [ANY])
    if isinstance(outcome, int | float):
        assert parsed.calls[0]["arguments"]["n"] == outcome
    else:
        assert parsed.calls == [] and any(outcome in e for e in parsed.errors), parsed.errors
    json.dumps(parsed.to_json(), allow_nan=False)


@pytest.mark.parametrize(
    "body,expected",
    [
        ('[f(s="' + "x" * 10_000_000 + '")]', "characters; the limit"),
        ("[" + ", ".join(["f()"] * 10_000) + "]", "limit"),
        ("[f(a=" + "[" * 300 + "]" * 300 + ")]", "levels deep"),
        ("[" + ", ".join(["f()"] * 17) + "]", "at most 16"),
    ],
    ids=["10MB-argument", "10000-calls", "300-deep", "17-calls"],
)
def test_item25_caps_before_parsing(body, expected):
    started = time.monotonic()
    parsed = parse(block(body), [ANY])
    assert time.monotonic() - started < 2  # a guard against parsing the whole thing
    assert parsed.calls == [] and any(expected in e for e in parsed.errors), parsed.errors


def test_item26_marker_quirks_are_deterministic():
    cut_off = parse(f'Let me check.{START}[get_weather(city="Paris")]', SCHEMAS)
    assert len(cut_off.calls) == 1 and cut_off.text == "Let me check."
    stray_end = parse(f"Done.{END} really", SCHEMAS)
    assert stray_end.calls == [] and stray_end.text == "Done. really"
    empty = parse(block("[]"), SCHEMAS)
    assert empty.calls == [] and "empty" in empty.errors[0]
    body = '[get_weather(city="Paris")]'
    echoed = parse(block(body) + body + " It is mild.", SCHEMAS)
    assert len(echoed.calls) == 1 and echoed.text == "It is mild."
    bare_echo = parse(block(body) + 'get_weather(city="Paris")', SCHEMAS)
    assert len(bare_echo.calls) == 1 and bare_echo.text == ""
    two = parse(block(body) + " and " + block('[get_weather(city="Tokyo")]'), SCHEMAS)
    assert [c["arguments"]["city"] for c in two.calls] == ["Paris", "Tokyo"]
    fenced = parse(f"```\n{block(body)}\n```", SCHEMAS)
    assert fenced.calls == [] and START in fenced.text
    assert parse(echoed.text, SCHEMAS).calls == []  # parsing the rest again runs nothing


# ---- fuzz: no exception escapes, bounded time per input ----------------------------------------
_pieces = st.sampled_from(
    [
        START,
        END,
        "[",
        "]",
        "(",
        ")",
        "{",
        "}",
        ",",
        "=",
        '"',
        "'",
        "get_weather",
        "city",
        "f",
        "1e999",
        "-",
        "**",
        "*",
        "\\",
        "\n",
        "```",
        "None",
        "true",
        ".",
        ":",
        " ",
        "0",
        "07",
        "x" * 50,
    ]
)
FUZZ_TIMES: list[float] = []


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=400), st.lists(_pieces, max_size=80).map("".join)))
def test_parser_fuzz_never_raises(text):
    started = time.perf_counter()
    parsed = parse(text, SCHEMAS)
    FUZZ_TIMES.append(time.perf_counter() - started)
    json.dumps(parsed.to_json(), allow_nan=False)
    assert FUZZ_TIMES[-1] < 1.0  # a hang guard, not a speed target
    for body in text.split(START)[1:]:  # each block body on its own, cut at its end marker
        with contextlib.suppress(ValueError):
            parse_block(body.split(END)[0])


NOTE = {
    "name": "note",
    "description": "Keep a note.",
    "parameters": {
        "type": "object",
        "properties": {
            "text": {"type": "string"},
            "n": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
    },
}


@pytest.mark.parametrize(
    ("body", "arguments", "repaired"),
    [
        ('[note(text="line one\nline two")]', {"text": "line one\nline two"}, "newline"),
        ('[note(text="a\tb\x00c")]', {"text": "a\tb\x00c"}, "NUL"),
        ("[note(text='don't stop')]", {"text": "don't stop"}, "apostrophe"),
        ("[note(text='x', n=07)]", {"text": "x", "n": 7}, "leading zeros"),
        ("[note(text='x', tags={'a', 'a'})]", {"text": "x", "tags": ["a"]}, None),
        ("[note(text='it''s')]", {"text": "its"}, None),  # two adjacent strings: Python's own
    ],
)
def test_what_real_lfm2_replies_get_wrong_is_repaired_and_reported(body, arguments, repaired):
    """Calls that vLLM's lfm2 parser recovers: read as meant, never evaluated, and each
    repair named for the trace."""
    parsed = parse(block(body), [*SCHEMAS, NOTE])
    assert parsed.calls == [{"name": "note", "arguments": arguments}] and not parsed.errors
    if repaired is None:
        assert parsed.repairs == []
    else:
        assert len(parsed.repairs) == 1 and repaired in parsed.repairs[0], parsed.repairs
    assert parsed.to_json()["repairs"] == parsed.repairs


def test_one_bad_call_beside_good_ones_loses_only_itself():
    good = (
        '[get_weather(city="Paris"), get_weather(city=os.system("x")), calculator(expression="1")]'
    )
    cut = '[get_weather(city="Paris"), get_weather(city="Rome"'  # the reply ended mid-call
    broken = '[get_weather(city="Paris"), get_weather(city="Rome" unit="celsius")]'  # no comma
    for body, kept, problem in (
        (good, ["get_weather", "calculator"], "only literal values"),
        (cut, ["get_weather"], "never closed"),
        (broken, ["get_weather"], "not valid Python call syntax"),
    ):
        parsed = parse(block(body), SCHEMAS)
        assert [c["name"] for c in parsed.calls] == kept, body
        assert parsed.calls[0]["arguments"] == {"city": "Paris"}
        assert len(parsed.errors) == 1 and problem in parsed.errors[0], parsed.errors


def test_repairs_never_reach_code_outside_strings():
    """The repairs touch string contents and integer literals only: names, calls and
    operators stay errors, and nothing is evaluated."""
    for body in (
        "[note(text='a', n=__import__('os').getpid())]",
        "[note(text='x'+'y')]",
        '[note(text="a\nb", n=07 + 1)]',
    ):
        parsed = parse(block(body), [*SCHEMAS, NOTE])
        assert parsed.calls == [] and parsed.errors, body


@pytest.mark.parametrize(
    "shape",
    [
        "```x```" + END,  # fences and stray end markers: every marker rescanned every fence
        START + "[f()]" + END,  # thousands of blocks
        "```x```" + START,
        START + "[" + "f(a=1), " * 3,
    ],
)
def test_parse_tool_calls_stays_linear_on_200_kB(shape):
    """issue 18, parse_cost: a 200 kB reply of fences and markers took 5.6-8.9 s of CPU;
    now at most 100 ms (the best of three runs, so a busy machine does not decide it)."""
    text = (shape * (200_000 // len(shape) + 1))[:200_000]
    took = []
    for _ in range(3):
        started = time.perf_counter()
        parsed = parse(text, [])
        took.append(time.perf_counter() - started)
    assert min(took) <= 0.1, took
    assert len(parsed.errors) <= 17  # at most one per block read, and one for the rest


@pytest.mark.parametrize(
    "body",
    [
        '[{"name": "get_weather", "arguments": {"city": "Paris"}}]',
        '{"name": "get_weather", "arguments": {"city": "Paris"}}',
        '[{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}]',
        'get_weather(city="Paris")',  # the Pythonic form beside it, unchanged
    ],
)
def test_a_call_in_the_json_form_is_read_like_the_pythonic_one(body):
    parsed = parse(block(body), [WEATHER])
    assert parsed.errors == []
    assert parsed.calls == [{"name": "get_weather", "arguments": {"city": "Paris"}}]


@pytest.mark.parametrize(
    "body,said",
    [
        ('[{"name": "get_weather", "city": "Paris"}]', '"name": "tool_name", "arguments"'),
        ('[{"name": 7, "arguments": {}}]', '"name": "tool_name", "arguments"'),
        ('[{"name": "get_weather", "arguments": [1]}]', "must be an object"),
        ('[{"name": "get_weather", "arguments": {"city": __import__("os")}}]', "literal"),
    ],
)
def test_a_malformed_json_call_is_an_error_the_model_reads(body, said):
    parsed = parse(block(body), [WEATHER])
    assert parsed.calls == [] and said in " ".join(parsed.errors)
