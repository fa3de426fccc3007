"""The built-in demo tools (lfmui.tools.builtin): their answers, the calculator's refusals, the
picture a tool reads, whole-word unit names."""

from __future__ import annotations

import json

import pytest

from lfmui import tools


@pytest.mark.parametrize(
    "name,arguments,expected",
    [
        ("calculator", {"expression": "2 * (3 + 4) ** 2"}, 98),
        ("calculator", {"expression": "sqrt(16) + 10 // 3"}, 7.0),
        (
            "convert_units",
            {"value": 100, "from_unit": "c", "to_unit": "f"},
            {"value": 212.0, "unit": "f"},
        ),
        (
            "convert_units",
            {"value": 1, "from_unit": "mi", "to_unit": "km"},
            {"value": 1.609344, "unit": "km"},
        ),
        (
            "date_math",
            {"start": "2026-02-27", "days": 2},
            {"date": "2026-03-01", "weekday": "Sunday"},
        ),
        ("date_math", {"start": "2026-01-01", "end": "2026-12-25"}, {"days_between": 358}),
    ],
)
def test_builtin_tools(name, arguments, expected):
    result = tools.execute({"name": name, "arguments": arguments}, tools.BUILTINS)
    assert result.ok and json.loads(result.output) == expected


@pytest.mark.parametrize(
    "expression", ["__import__('os')", "9 ** 9 ** 9", "'a' * 3", "x + 1", "(1).real"]
)
def test_calculator_refuses_anything_but_arithmetic(expression):
    result = tools.execute(
        {"name": "calculator", "arguments": {"expression": expression}}, tools.BUILTINS
    )
    assert not result.ok


def test_image_facts_reads_the_attached_image():
    from PIL import Image

    token = tools.current_image.set(Image.new("RGB", (40, 30), (255, 0, 0)))
    try:
        result = tools.execute({"name": "image_facts", "arguments": {}}, tools.BUILTINS)
    finally:
        tools.current_image.reset(token)
    facts = json.loads(result.output)
    assert facts["width"] == 40 and facts["dominant_colours"][0]["hex"] == "#ff0000"


@pytest.mark.parametrize(("source", "target"), [("cf", "k"), ("c", "kf"), ("", "c"), ("m", "kg")])
def test_tools_unit_names_are_whole_words(source, target):
    """issue 18, tools: "cf" passed a substring test for temperatures and answered with a
    KeyError; a unit that is none is a sentence that lists the units."""
    result = tools.execute(
        {
            "name": "convert_units",
            "arguments": {"value": 1, "from_unit": source, "to_unit": target},
        },
        tools.builtins(),
    )
    assert not result.ok and "KeyError" not in result.output
    assert "use two units of one kind" in result.output and "c, f, k" in result.output
