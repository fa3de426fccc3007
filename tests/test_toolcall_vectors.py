"""Published LFM2 tool-call vectors from other parsers, kept as tests of lfmui's own.

The inputs and expected calls are those of vLLM's
``tests/tool_parsers/test_lfm2_tool_parser.py`` (vllm-project/vllm at 011cde7c: its
``TEST_CASES``, ``test_bad_sibling_call_does_not_drop_good_calls`` and
``test_whitespace_after_start_token``), restated here as data: what a real LFM2 reply writes,
and the call a reader agrees it means. One vector is answered differently on purpose, and says so:
an empty block (``[]``) is an error the model reads here, not silence.

The second set is llama.cpp's: ``tests/test-chat.cpp``, ``test_lfm2_parser`` (the llama.cpp
vendored by llama-cpp-python 0.3.36), with the tool schemas it names. Its one streaming case (a
call cut off mid-argument, shown as a partial call while it streams) has no counterpart here:
lfmui reads a call once the reply has ended.
"""

from __future__ import annotations

import json

import pytest

from lfmui.toolcalls import END, START, parse

SIMPLE = ("get_candidate_status(candidate_id='12345')", {"candidate_id": "12345"})
MORE_TYPES = (
    "register_user(name='John Doe', age=37, address={'city': 'San Francisco', 'state': 'CA'}, "
    "role=None, passed_test=True, aliases=['John', 'Johnny'])",
    {
        "name": "John Doe",
        "age": 37,
        "address": {"city": "San Francisco", "state": "CA"},
        "role": None,
        "passed_test": True,
        "aliases": ["John", "Johnny"],
    },
)
VECTORS = {
    "simple": [SIMPLE],
    "more_types": [MORE_TYPES],
    "parameterless": [("get_weather()", {})],
    "empty_dict": [("do_something_cool(additional_data={})", {"additional_data": {}})],
    "empty_list": [("do_something_cool(steps=[])", {"steps": []})],
    "escaped_string": [
        (
            r"get_weather(city='Martha\'s Vineyard', metric='\"cool units\"')",
            {"city": "Martha's Vineyard", "metric": '"cool units"'},
        )
    ],
    "parallel_calls": [SIMPLE, MORE_TYPES],
    "dotted_name": [
        (
            "grocery.orderIngredients(ingredientList=[{'name': 'Lasagna noodles', 'amount': "
            "250, 'unit': 'g'}], deliveryAddress='845 Willow Lane, Springfield, IL 62704')",
            {
                "ingredientList": [{"name": "Lasagna noodles", "amount": 250, "unit": "g"}],
                "deliveryAddress": "845 Willow Lane, Springfield, IL 62704",
            },
        )
    ],
    "bracket_in_string": [
        ("exec(command='grep -F \"]\" log.txt')", {"command": 'grep -F "]" log.txt'})
    ],
    "multiline_string_arg": [
        (
            "exec(command='cat > f.py << EOF\nimport csv\nprint(1)\nEOF')",
            {"command": "cat > f.py << EOF\nimport csv\nprint(1)\nEOF"},
        )
    ],
    "set_arg": [("label(tags={'urgent', 'bug'})", {"tags": ["urgent", "bug"]})],
    "nested_quote": [
        (
            "bash(command='sed -n '360,450p' /testbed/sympy/matrices/common.py')",
            {"command": "sed -n '360,450p' /testbed/sympy/matrices/common.py"},
        )
    ],
    "nested_python_c": [
        (
            "bash(command='cd /testbed && python3 -c \"from sympy import latex\n"
            "print(latex(3*x, mul_symbol='\\,'))\"')",
            {
                "command": 'cd /testbed && python3 -c "from sympy import latex\n'
                "print(latex(3*x, mul_symbol='\\,'))\""
            },
        )
    ],
    "leading_zero_int": [("set_date(month=07, day=05)", {"month": 7, "day": 5})],
    "nul_byte_string_arg": [("exec(command='printf a\x00b')", {"command": "printf a\x00b"})],
}


@pytest.mark.parametrize("name", VECTORS)
def test_vllm_lfm2_vectors_parse_to_the_calls_meant(name):
    calls = VECTORS[name]
    body = ", ".join(text for text, _ in calls)
    parsed = parse(f"{START}[{body}]{END}")  # no tool list: vLLM's vectors name no schemas
    expected = [{"name": text.split("(")[0], "arguments": args} for text, args in calls]
    assert parsed.calls == expected and parsed.errors == [], parsed
    json.dumps(parsed.to_json(), allow_nan=False)  # results stay valid JSON (the NUL too)


def test_content_after_the_call_stays_text():
    parsed = parse(f"{START}[{SIMPLE[0]}]{END}\nChecking the current status of candidate ID 12345.")
    assert parsed.calls == [{"name": "get_candidate_status", "arguments": SIMPLE[1]}]
    assert parsed.text == "Checking the current status of candidate ID 12345."


def test_a_bad_sibling_call_does_not_drop_the_good_one():
    parsed = parse(f"{START}[{SIMPLE[0]}, bad(x=b'z')]{END}")
    assert parsed.calls == [{"name": "get_candidate_status", "arguments": SIMPLE[1]}]
    assert len(parsed.errors) == 1 and "bytes" in parsed.errors[0]


def test_whitespace_after_the_start_marker():
    parsed = parse(f"{START} [{SIMPLE[0]}]{END}")
    assert parsed.calls == [{"name": "get_candidate_status", "arguments": SIMPLE[1]}]


@pytest.mark.parametrize("body", ["", " "])
def test_an_empty_block_is_an_error_the_model_reads(body):
    """vLLM reports no call; lfmui tells the model how to write one (its stated policy)."""
    parsed = parse(f"{START}[{body}]{END}")
    assert parsed.calls == [] and "empty" in parsed.errors[0]


def test_hyphenated_tool_names_are_called_as_the_tool_list_writes_them():
    """OpenAI clients name tools with hyphens: the model writes the name as given, the call
    comes back under it, and a string that looks like a call stays a string."""
    tools = [
        {
            "name": "get-weather",
            "description": "",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    parsed = parse(f'{START}[get-weather(city="get-weather(x)")]{END}', tools)
    assert parsed.calls == [{"name": "get-weather", "arguments": {"city": "get-weather(x)"}}]
    wrong = parse(f"{START}[get-weather(city=1)]{END}", tools)
    assert wrong.calls == [] and wrong.errors[0].startswith("get-weather: ")


@pytest.mark.parametrize(
    "body",
    [
        "[f(" + "a='x, " * 2600 + ")]",  # strings that never end, at every keyword
        "[f(" + "a='b' c=" * 1900 + ")]",  # missing commas all along
        "[f(a='" + "\\'" * 7000 + ")]",
    ],
)
def test_repairing_a_hostile_block_stays_quick(body):
    """The repairs scan a block in linear time: a 16,000-character block that fails every
    repair is answered in well under a second (a hang guard, not a speed target)."""
    import time

    started = time.perf_counter()
    parsed = parse(f"{START}{body[:15_990]}{END}")
    assert time.perf_counter() - started < 1.0
    assert parsed.calls == [] and parsed.errors


# ---- llama.cpp's vectors ------------------------------------------------------------------
def _tool(name: str, **properties: dict) -> dict:
    return {"name": name, "parameters": {"type": "object", "properties": properties}}


LLAMA_TOOLS = [
    _tool("special_function", arg1={"type": "integer"}),
    _tool("special_function_with_opt", arg1={"type": "integer"}, arg2={"type": "integer"}),
    _tool("get_time", city={"type": "string"}),
    _tool("toggle", enabled={"type": "boolean"}),
    _tool("set_nullable", value={"type": ["string", "null"]}),
    _tool("set_config", config={"type": "object"}),
    _tool(
        "Calendar.create_event",
        title={"type": "string"},
        participants={"type": "array", "items": {"type": "string"}},
        metadata={"type": "object"},
    ),
    _tool("python", code={"type": "string"}),
    _tool("empty_args"),
]
LLAMA_VECTORS = {
    "single_call": ("[special_function(arg1=1)]", [("special_function", {"arg1": 1})]),
    "string_argument": ('[get_time(city="XYZCITY")]', [("get_time", {"city": "XYZCITY"})]),
    "python_true": ("[toggle(enabled=True)]", [("toggle", {"enabled": True})]),
    "python_none": ("[set_nullable(value=None)]", [("set_nullable", {"value": None})]),
    "nested_python_literal": (
        '[set_config(config={"enabled": True, "count": 3})]',
        [("set_config", {"config": {"enabled": True, "count": 3}})],
    ),
    "json_literals": (
        '[set_config(config={"enabled": true, "note": null})]',
        [("set_config", {"config": {"enabled": True, "note": None}})],
    ),
    "dotted_name": (
        '[Calendar.create_event(title="demo", participants=["Alice", "Bob"], '
        'metadata={"priority": "high", "reminder": true})]',
        [
            (
                "Calendar.create_event",
                {
                    "title": "demo",
                    "participants": ["Alice", "Bob"],
                    "metadata": {"priority": "high", "reminder": True},
                },
            )
        ],
    ),
    "multiline_code": (
        "[python(code=\"def hello():\\n    print('hey')\")]",
        [("python", {"code": "def hello():\n    print('hey')"})],
    ),
    "escapes_decode": (
        '[python(code="First line\\nSecond line\\tindented")]',
        [("python", {"code": "First line\nSecond line\tindented"})],
    ),
    "escaped_quotes": (
        '[python(code="print(\\"hi\\")")]',
        [("python", {"code": 'print("hi")'})],
    ),
    "parallel_calls": (
        "[special_function(arg1=1), special_function_with_opt(arg1=1, arg2=2)]",
        [("special_function", {"arg1": 1}), ("special_function_with_opt", {"arg1": 1, "arg2": 2})],
    ),
    "empty_arguments": ("[empty_args()]", [("empty_args", {})]),
}


@pytest.mark.parametrize("name", LLAMA_VECTORS)
def test_llama_cpp_lfm2_vectors_parse_to_the_calls_meant(name):
    block, calls = LLAMA_VECTORS[name]
    parsed = parse(f"{START}{block}{END}", LLAMA_TOOLS)
    assert parsed.calls == [{"name": n, "arguments": a} for n, a in calls], parsed
    assert parsed.errors == [] and parsed.text == ""


def test_llama_cpp_content_before_a_call_and_plain_content_stay_text():
    before = parse(f'Let me check the time.{START}[get_time(city="Paris")]{END}', LLAMA_TOOLS)
    assert before.calls == [{"name": "get_time", "arguments": {"city": "Paris"}}]
    assert before.text == "Let me check the time."
    for content in (
        "Hello, world!\nWhat's up?",
        "Use this format: [link text](url). Example: [Wikipedia](https://www.wikipedia.org).",
    ):
        parsed = parse(content, LLAMA_TOOLS)  # markdown links are no calls, marker or not
        assert parsed.calls == [] and parsed.errors == [] and parsed.text == content
