"""DESIGN.md's one-way import rule, for the whole package: every import of an lfmui module (at
the top of a file or inside a function) points to a lower floor, so there are no cycles and
nothing imports back up. The layers are docs/architecture.md's, read bottom up."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (name, modules), bottom up. Subpackages: quant/ (levels, CPU kernels, MoE experts), tools/
# (registry, workers, built-ins), bench/ (cases, peers, meters, the CLI), serve/ (the OpenAI
# door: protocol, completions, routes, request guard); ui/ is the only package importing gradio.
LAYERS = [
    (
        "the package, its errors, the packages that only name their parts",
        {"lfmui", "lfmui.errors", "lfmui.bench", "lfmui.serve"},
    ),
    (
        "leaves: process memory, owners, settings, call repairs, LFM2's tokens, CPU kernels, "
        "tool workers, meters, the peer, allowed hosts, the generation thread",
        {
            "lfmui.worker",
            "lfmui.access",
            "lfmui.heap",
            "lfmui.reasoning",
            "lfmui.settings",
            "lfmui.toolcall_repairs",
            "lfmui.lfm2_format",
            "lfmui.quant.cpu_weights",
            "lfmui.tools.workers",
            "lfmui.bench.meters",
            "lfmui.bench.measured",
            "lfmui.bench.llamacpp",
            "lfmui.serve.hosts",
        },
    ),
    (
        "nouns: the catalog, tiling, images, the call parser, the request guard, built-in tools, "
        "MoE experts",
        {
            "lfmui.toolcalls",
            "lfmui.serve.guard",
            "lfmui.catalog",
            "lfmui.tiling",
            "lfmui.images",
            "lfmui.tools.builtin",
            "lfmui.quant.moe",
        },
    ),
    (
        "prompts, the tool registry, the levels table",
        {"lfmui.prompts", "lfmui.tools", "lfmui.quant"},
    ),
    ("compiled decode", {"lfmui.compiled"}),
    (
        "hub, engine, offline builds, what goes to an OpenAI-compatible server",
        {"lfmui.hub", "lfmui.engine", "lfmui.offline", "lfmui.openai_wire"},
    ),
    (
        "estimates, endpoints, chats, calibration",
        {"lfmui.memory", "lfmui.endpoint", "lfmui.chats", "lfmui.calibrate"},
    ),
    ("locating and loading", {"lfmui.loading"}),
    ("the model manager", {"lfmui.manager"}),
    ("backends", {"lfmui.backends"}),
    ("the chat turn", {"lfmui.turns"}),
    ("the tool turn", {"lfmui.tool_turn"}),
    (
        "sessions, the /v1 protocol, the bench cases",
        {"lfmui.session", "lfmui.serve.protocol", "lfmui.bench.cases"},
    ),
    ("/v1 replies, bench peers", {"lfmui.serve.completions", "lfmui.bench.peers"}),
    (
        "/v1 routes, the bench CLI, the UI's GPU wrappers",
        {"lfmui.serve.routes", "lfmui.bench.cli", "lfmui.ui.gpu"},
    ),
    (
        "the bench entry point, rendering, the reply's state",
        {"lfmui.bench.__main__", "lfmui.ui.render", "lfmui.ui.running"},
    ),
    (
        "shared controls, the chat's reply, the model cards",
        {"lfmui.ui.controls", "lfmui.ui.chat_reply", "lfmui.ui.model_cards"},
    ),
    ("the chat list, the session panel", {"lfmui.ui.chat_list", "lfmui.ui.chat_session"}),
    (
        "the tabs and the API: none imports another",
        {
            "lfmui.ui.vision_tab",
            "lfmui.ui.tools_tab",
            "lfmui.ui.models_tab",
            "lfmui.ui.chat_tab",
            "lfmui.ui.api",
        },
    ),
    ("the app", {"lfmui.ui.app"}),
    ("ui", {"lfmui.ui"}),
]
FLOORS = [modules for _, modules in LAYERS]
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


def test_light_modules_import_neither_torch_nor_gradio():
    code = (
        "import sys; import lfmui.catalog, lfmui.quant, lfmui.errors, lfmui.offline, "
        "lfmui.manager, lfmui.prompts, lfmui.engine, lfmui.turns, lfmui.images, lfmui.tiling, "
        "lfmui.loading, lfmui.tool_turn, lfmui.tools, lfmui.toolcalls, lfmui.serve.protocol; "
        "print(sorted(m for m in ('torch', 'gradio', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"  # nothing heavy at import time


def test_only_the_ui_package_imports_gradio():
    offenders = []
    for path in (ROOT / "lfmui").rglob("*.py"):
        if "ui" in path.relative_to(ROOT / "lfmui").parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            if any(n.split(".")[0] == "gradio" or n.startswith("lfmui.ui") for n in names):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_item06_no_trust_remote_code_anywhere():
    for path in [*(ROOT / "lfmui").rglob("*.py"), ROOT / "app.py"]:
        assert "trust_remote_code" not in path.read_text(), path


# Tests a newcomer finds: tests/test_<module>.py for a module (its last name; a package's
# own name for its __init__), the cross-cutting suites under their own names, and for a module
# with no file of its own, where its tests are.
SUITES = {
    "architecture": "the import rule, the layers, where tests are",
    "docs": "the README and docs/: every link resolves",
    "requirements": "the install: requirements, the lock, the Space's header",
    "browser": "the app in Debian's chromium",
    "browser_chat": "the chat in chromium: first load, stop, undo, branches, settings",
    "browser_prefill": "Stop while a full-shape model reads a picture",
    "web": "the HTTP surface: files, uploads, hosts, origins, headers",
    "hostile": "forged special tokens, markup and hostile files through every door",
    "fuzz": "random inputs through every door",
    "load": "the load test at CI size",
    "space": "python app.py as a Space starts it",
    "cuda": "CUDA-only: run on the GPU machine",
    "toolcall_vectors": "vLLM's published LFM2 parser vectors",
}
TESTED_IN = {
    "lfmui": ["test_architecture.py"],
    "lfmui.bench.__main__": ["test_calibrate.py"],
    "lfmui.serve": ["test_architecture.py"],
    "lfmui.ui": ["test_app.py"],
    "lfmui.errors": ["test_api.py", "test_routes.py"],
    "lfmui.backends": ["test_manager.py", "test_endpoint.py"],
    "lfmui.bench.cases": ["test_quant.py", "test_calibrate.py"],
    "lfmui.bench.cli": ["test_calibrate.py", "test_llamacpp.py"],
    "lfmui.bench.peers": ["test_llamacpp.py"],
    "lfmui.bench.measured": ["test_browser.py"],
    "lfmui.heap": ["test_memory.py", "test_manager.py"],
    "lfmui.hub": ["test_manager.py", "test_catalog.py"],
    "lfmui.compiled": ["test_engine.py", "test_cuda.py"],
    "lfmui.openai_wire": ["test_endpoint.py"],
    "lfmui.lfm2_format": ["test_offline.py"],
    "lfmui.toolcall_repairs": ["test_toolcalls.py", "test_toolcall_vectors.py"],
    "lfmui.worker": ["test_engine.py", "test_routes.py"],
    "lfmui.loading": ["test_manager.py", "test_memory.py"],
    "lfmui.prompts": ["test_engine.py", "test_hostile.py"],
    "lfmui.serve.completions": ["test_routes.py"],
    "lfmui.serve.guard": ["test_web.py"],
    "lfmui.serve.hosts": ["test_web.py"],
    "lfmui.turns": ["test_tool_turn.py", "test_api.py"],
    "lfmui.ui.chat_list": ["test_browser_chat.py"],
    "lfmui.ui.chat_session": ["test_browser.py"],
    "lfmui.ui.chat_reply": ["test_running.py", "test_tool_turn.py", "test_browser_chat.py"],
    "lfmui.ui.chat_tab": ["test_browser_chat.py", "test_browser.py"],
    "lfmui.ui.controls": ["test_browser.py"],
    "lfmui.ui.models_tab": ["test_browser.py"],
    "lfmui.ui.model_cards": ["test_quant.py", "test_calibrate.py", "test_browser.py"],
    "lfmui.ui.render": ["test_hostile.py", "test_browser.py"],
    "lfmui.ui.tools_tab": ["test_tool_turn.py", "test_browser.py"],
    "lfmui.ui.vision_tab": ["test_tiling.py", "test_browser.py"],
}


def _test_name(module: str) -> str:
    return module.split(".")[-1]


def test_every_test_file_is_named_for_a_module_or_a_suite():
    names = {_test_name(m) for m in FLOOR_OF}
    files = {p.stem.removeprefix("test_") for p in (ROOT / "tests").glob("test_*.py")}
    assert sorted(files - names - set(SUITES)) == []
    # helpers live in tests/helpers/, never under a name pytest collects (test_*.py, *_test.py)
    assert [p.name for p in (ROOT / "tests").rglob("*_test.py")] == []


def test_every_module_has_its_test_file_or_says_where_its_tests_are():
    files = {p.name for p in (ROOT / "tests").glob("test_*.py")}
    own = {m for m in FLOOR_OF if f"test_{_test_name(m)}.py" in files}
    assert sorted(set(FLOOR_OF) - own - set(TESTED_IN)) == []
    assert sorted(m for m in TESTED_IN if m in own) == []  # a module with its own file says so
    assert sorted(f for where in TESTED_IN.values() for f in where if f not in files) == []


def _path(module: str) -> Path:
    base = ROOT / Path(*module.split("."))
    return base.with_suffix(".py") if base.with_suffix(".py").exists() else base / "__init__.py"


if __name__ == "__main__":  # python tests/test_architecture.py: the layers, top down
    for number, (name, modules) in reversed(list(enumerate(LAYERS))):
        print(f"{number:2}  {name}")
        for module in sorted(modules):
            below = sorted(m.removeprefix("lfmui.") for m in _imports(_path(module)) - {module})
            print(f"      {module:28} -> {', '.join(below) or '-'}")
