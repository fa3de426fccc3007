"""The install as a new machine meets it: every import declared, the lock in step with the
requirement files and with what is installed, and the Space header in step with the lock."""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "requirements.txt"
TESTING = ROOT / "tests" / "requirements.txt"
LOCK = ROOT / "requirements.lock"
REGENERATE = "bash .ci/lock"


def declared(*files: Path) -> dict[str, Requirement]:
    """The requirements the files name, by canonical name (options such as -c left out)."""
    found = {}
    for file in files:
        for line in file.read_text().splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith(("#", "-")):
                requirement = Requirement(line)
                found[canonicalize_name(requirement.name)] = requirement
    return found


def locked(text: str) -> dict[str, str]:
    """The lock's pins, by canonical name."""
    pins = re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", text, flags=re.MULTILINE)
    return {canonicalize_name(name): version for name, version in pins}


def imported(paths: list[Path], local: set[str]) -> dict[str, set[str]]:
    """Top-level modules imported anywhere in `paths` (inside functions too), less the
    standard library and `local` ones, each with the files that import it."""
    found: dict[str, set[str]] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in local:
                    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
                    found.setdefault(top, set()).add(str(where))
    return found


def undeclared(paths: list[Path], local: set[str], *files: Path) -> list[str]:
    """Each third-party import in `paths` that no requirement in `files` provides, as a line
    that says where it is imported and what to do."""
    names = set(declared(*files))
    providers = metadata.packages_distributions()
    problems = []
    for module, where in sorted(imported(paths, local).items()):
        dists = {canonicalize_name(d) for d in providers.get(module, [module])}
        if not dists & names:
            problems.append(
                f"{module} (imported by {', '.join(sorted(where))}) comes from "
                f"{' or '.join(sorted(dists))}, which {' and '.join(_shown(f) for f in files)} "
                f"{'does' if len(files) == 1 else 'do'} not declare: add it there, then run "
                f"`{REGENERATE}`"
            )
    return problems


def _shown(file: Path) -> str:
    return str(file.relative_to(ROOT)) if file.is_relative_to(ROOT) else file.name


def mismatches(requirements: dict[str, Requirement], pins: dict[str, str]) -> list[str]:
    """Each requirement the lock leaves out or pins outside its range, as a sentence."""
    problems = []
    for name, requirement in sorted(requirements.items()):
        version = pins.get(name)
        if version is None:
            problems.append(f"{name}: requirements ask for it, requirements.lock has no pin")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(
                f"{name}: requirements ask for {requirement.specifier}, "
                f"requirements.lock pins {version}"
            )
    return [f"{p}; regenerate the lock with `{REGENERATE}`" for p in problems]


def _app_sources() -> list[Path]:
    return sorted((ROOT / "lfmui").rglob("*.py")) + [ROOT / "app.py"]


def test_every_third_party_import_of_the_app_is_declared_in_requirements_txt():
    assert undeclared(_app_sources(), {"lfmui"}, RUNTIME) == []


def test_every_third_party_import_of_the_tests_is_declared():
    tests = sorted([*(ROOT / "tests").glob("*.py"), *(ROOT / "tests" / "helpers").glob("*.py")])
    local = {"lfmui", "app", "helpers", *(p.stem for p in tests)}
    assert undeclared(tests, local, RUNTIME, TESTING) == []


def test_an_undeclared_import_is_found_and_named(tmp_path):
    module = tmp_path / "probe.py"  # yaml arrives with gradio, but nothing declares it
    module.write_text("def f():\n    import yaml\n    from huggingface_hub import HfApi\n")
    problems = undeclared([*_app_sources(), module], {"lfmui"}, RUNTIME)
    assert len(problems) == 1, problems
    assert problems[0].startswith("yaml (imported by probe.py) comes from pyyaml")
    assert REGENERATE in problems[0]


def test_requirements_txt_alone_installs_the_locked_set():
    """A Space reads requirements.txt only: its -c line brings the lock to every install."""
    lines = [line.strip() for line in RUNTIME.read_text().splitlines()]
    assert "-c requirements.lock" in lines
    header = LOCK.read_text().split("\n\n")[0]
    assert f"#    {REGENERATE}" in header  # the lock names the command that regenerates it


def test_the_lock_holds_every_requirement_in_its_range():
    assert mismatches(declared(RUNTIME, TESTING), locked(LOCK.read_text())) == []


def test_a_lock_out_of_step_says_which_package_and_how_to_regenerate():
    text = LOCK.read_text()
    stale = re.sub(r"^gradio==\S+", "gradio==5.0.0", text, flags=re.MULTILINE)
    stale = re.sub(r"^openai==\S+\n", "", stale, flags=re.MULTILINE)
    assert mismatches(declared(RUNTIME, TESTING), locked(stale)) == [
        f"gradio: requirements ask for ==6.31.0, requirements.lock pins 5.0.0; "
        f"regenerate the lock with `{REGENERATE}`",
        f"openai: requirements ask for it, requirements.lock has no pin; "
        f"regenerate the lock with `{REGENERATE}`",
    ]


def test_what_is_installed_is_what_the_lock_pins():
    """The tests run on the locked set (reinstall with the README's test command otherwise)."""
    off = []
    for name, version in locked(LOCK.read_text()).items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            off.append(f"{name}: not installed, locked at {version}")
            continue
        if installed != version:
            off.append(f"{name}: {installed} installed, locked at {version}")
    assert off == [], "pip install -r requirements.txt -r tests/requirements.txt"


def _space_header() -> dict[str, str]:
    header = (ROOT / "README.md").read_text().split("---")[1]
    return dict(line.split(": ", 1) for line in header.strip().splitlines() if ": " in line)


def test_readme_spaces_header_matches_the_lock():
    fields = _space_header()
    lock = LOCK.read_text()
    assert fields["sdk"] == "gradio" and fields["sdk_version"] == locked(lock)["gradio"]
    python = re.search(r"autogenerated by pip-compile with Python (\d+\.\d+)", lock)
    assert python and fields["python_version"] == f'"{python[1]}"'
    assert fields["app_file"] == "app.py" and len(fields["short_description"]) <= 60
    header = (ROOT / "README.md").read_text().split("---")[1]
    for repo in ("LiquidAI/LFM2-VL-450M", "LiquidAI/LFM2-VL-1.6B", "LiquidAI/LFM2-8B-A1B"):
        assert f"  - {repo}" in header
