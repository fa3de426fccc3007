"""DESIGN.md's one-way import rule, for the whole package: every import of an lfmui module (at
the top of a file or inside a function) points to a lower floor, so there are no cycles and
nothing imports back up. The floors are the code map in the README, read bottom up."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FLOORS = [
    {"lfmui", "lfmui.errors"},
    # what everything may use: process memory, measurements, the call parser, the CPU weight
    # kernels, the generation settings, who the owner is
    {
        "lfmui.access",
        "lfmui.heap",
        "lfmui.meters",
        "lfmui.measured",
        "lfmui.llamacpp",
        "lfmui.toolcalls",
        "lfmui.reasoning",
        "lfmui.cpu_weights",
        "lfmui.settings",
    },
    {"lfmui.catalog", "lfmui.tiling", "lfmui.images", "lfmui.tools", "lfmui.moe_quant"},
    {"lfmui.prompts"},
    {"lfmui.quant", "lfmui.hub", "lfmui.engine", "lfmui.offline"},
    {"lfmui.memory", "lfmui.endpoint", "lfmui.chats", "lfmui.calibrate"},
    {"lfmui.manager"},
    {"lfmui.backends"},
    {"lfmui.turns"},
    {"lfmui.bench", "lfmui.session", "lfmui.openai_api"},
    {"lfmui.ui.gpu"},
    {"lfmui.ui.render", "lfmui.ui.running", "lfmui.ui.guard", "lfmui.ui.v1"},
    {"lfmui.ui.controls"},
    # the tabs and the API: none imports another
    {
        "lfmui.ui.vision_tab",
        "lfmui.ui.tools_tab",
        "lfmui.ui.models_tab",
        "lfmui.ui.chat_tab",
        "lfmui.ui.api",
    },
    {"lfmui.ui.app"},
    {"lfmui.ui"},
]
FLOOR_OF = {module: number for number, floor in enumerate(FLOORS) for module in floor}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The lfmui modules `path` imports (``from lfmui import x`` names the module lfmui.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "lfmui"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "lfmui":
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in FLOOR_OF else node.module)
    return found


def test_every_module_has_a_floor():
    modules = {_module(p) for p in (ROOT / "lfmui").rglob("*.py")}
    assert modules == set(FLOOR_OF), (modules - set(FLOOR_OF), set(FLOOR_OF) - modules)


def test_imports_point_down_only():
    wrong = []
    for path in (ROOT / "lfmui").rglob("*.py"):
        module = _module(path)
        for imported in _imports(path) - {module}:
            if FLOOR_OF[imported] >= FLOOR_OF[module]:
                wrong.append(f"{module} (floor {FLOOR_OF[module]}) imports {imported}")
    assert wrong == []


def test_the_rule_sees_a_lazy_import_back_up(tmp_path):
    """A function-level import counts like one at the top of the file."""
    source = tmp_path / "lfmui" / "quant.py"
    source.parent.mkdir()
    source.write_text("def f():\n    from lfmui.manager import ModelManager\n")
    assert _imports(source) == {"lfmui.manager"}
    assert FLOOR_OF["lfmui.manager"] > FLOOR_OF["lfmui.quant"]
