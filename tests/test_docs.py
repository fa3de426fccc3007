"""The documents: the README is a front page and every link in it and in docs/ resolves to a file
or to a heading that exists (GitHub's anchors); each docs/ page is linked from the README; the
pages module docstrings point to exist too."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|<img [^>]*src=\"([^\"]+)\"")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
DOC_MENTION = re.compile(r"docs/([\w-]+\.md)(?:#([\w-]+))?")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (hyphens and underscores
    kept), spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    kept = [c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN"]
    return "".join(kept).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        base = slug(heading)
        number = seen.get(base, 0)
        seen[base] = number + 1
        found.add(base if number == 0 else f"{base}-{number}")
    return found


def links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text())
    return [a or b for a, b in LINK.findall(text)]


def broken(page: Path, target: str) -> str | None:
    """Why `target`, linked from `page`, does not resolve; None when it does."""
    if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked offline
        return None
    path, _, anchor = target.partition("#")
    where = (page.parent / path).resolve() if path else page
    if not where.exists():
        return f"{page.name}: {target}: no such file"
    if anchor and where.suffix == ".md" and anchor not in anchors(where):
        return f"{page.name}: {target}: no heading #{anchor} in {where.name}"
    return None


def test_the_slugs_are_githubs():
    assert slug("The OpenAI-compatible API (`/v1`)") == "the-openai-compatible-api-v1"
    assert slug("The CPU weight packings (`lfmui.quant.cpu_weights`)") == (
        "the-cpu-weight-packings-lfmuiquantcpu_weights"
    )
    assert slug("Against llama.cpp on the same CPU") == "against-llamacpp-on-the-same-cpu"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_resolves(page):
    assert [why for target in links(page) if (why := broken(page, target))] == []


def test_the_checker_finds_a_broken_link_and_a_missing_anchor(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## A section\n")
    assert broken(page, "#a-section") is None and broken(page, "#title") is None
    assert "no heading #gone" in broken(page, "#gone")
    assert "no such file" in broken(page, "other.md")
    assert broken(page, "https://example.com/x") is None


def test_every_doc_links_back_to_the_readme():
    assert [p.name for p in PAGES[1:] if "../README.md" not in links(p)] == []


def test_the_readme_is_a_front_page_that_links_every_doc():
    readme = (ROOT / "README.md").read_text()
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in links(ROOT / "README.md")}
    assert [p.name for p in PAGES[1:] if p.resolve() not in linked] == []
    assert len(readme) <= 10_500, f"{len(readme):,} characters: move detail to docs/"
    for section in ("## Set up", "## Features", "## Scripts", "## Benchmarks", "## More"):
        assert section in readme
    # the two set-up commands, as CI runs the second
    assert "pip install -r requirements.txt && python app.py" in readme
    test_command = "pip install -r requirements.txt -r tests/requirements.txt && python -m pytest"
    assert test_command in readme
    assert (
        test_command.replace("pip install", "pip install -q") in (ROOT / ".ci" / "run").read_text()
    )


def test_docstrings_point_to_pages_and_headings_that_exist():
    mentions = []
    for path in [*(ROOT / "lfmui").rglob("*.py"), ROOT / "app.py"]:
        for name, anchor in DOC_MENTION.findall(path.read_text()):
            page = ROOT / "docs" / name
            if not page.exists() or (anchor and anchor not in anchors(page)):
                mentions.append(f"{path.relative_to(ROOT)}: docs/{name}#{anchor}")
    assert mentions == []


def test_every_checklist_item_has_a_test_named_after_it_and_no_test_names_a_missing_one():
    """docs/checklist.md is the fault list the tests are numbered after: test_itemNN_... covers
    item NN (`python -m pytest -k item17`)."""
    items = {
        int(n) for n in re.findall(r"^(\d+)\. ", (ROOT / "docs/checklist.md").read_text(), re.M)
    }
    named = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        named |= {int(n) for n in re.findall(r"def test_item(\d+)_", path.read_text())}
    assert items and sorted(items - named) == [] and sorted(named - items) == []
