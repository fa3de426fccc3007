"""Published LFM2 tool-call vectors from another parser, kept as tests of lfmui's own.

The inputs and expected calls are those of vLLM's
``tests/tool_parsers/test_lfm2_tool_parser.py`` (vllm-project/vllm at 011cde7c: its
``TEST_CASES``, ``test_bad_sibling_call_does_not_drop_good_calls`` and
``test_whitespace_after_start_token``), restated here as data: what a real LFM2 reply writes,
and the call a reader agrees it means. One vector is answered differently on purpose, and says so:
an empty block (``[]``) is an error the model reads here, not silence.
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
