"""The catalog (lfmui.catalog): the LFM2.5 family beside the LFM2 originals."""

from __future__ import annotations

import hashlib
import json
import re
from types import SimpleNamespace

from lfmui import catalog, hub
from lfmui.catalog import PINS_FILE, Catalog


def test_the_current_models_are_listed_first_with_their_family_and_what_they_do():
    listed = Catalog().listed()
    ids = [s.id for s in listed]
    current = [
        "LFM2.5-VL-450M",
        "LFM2.5-VL-1.6B",
        "LFM2-VL-3B",
        "LFM2.5-1.2B-Instruct",
        "LFM2.5-1.2B-Thinking",
        "LFM2.5-8B-A1B",
    ]
    assert ids[: len(current)] == current
    assert {"LFM2-VL-450M", "LFM2-VL-1.6B", "LFM2-8B-A1B"} <= set(ids)  # the originals stay
    spec = {s.id: s for s in listed}
    assert [i for i in ids if spec[i].thinks and spec[i].source == "hub"] == [
        "LFM2.5-1.2B-Thinking",
        "LFM2.5-8B-A1B",
    ]
    assert spec["LFM2.5-8B-A1B"].tool_format == "lfm2.5"
    assert spec["LFM2-8B-A1B"].tool_format == "lfm2"
    assert spec["LFM2.5-VL-450M"].kind == "vl" and spec["LFM2.5-1.2B-Instruct"].kind == "text"


def test_the_cards_sampling_carries_top_k():
    spec = Catalog().get("LFM2.5-8B-A1B")
    assert dict(spec.sampling) == {
        "temperature": 0.2,
        "top_k": 80,
        "min_p": 0.0,
        "repetition_penalty": 1.05,
    }


def test_the_offline_thinking_build_says_it_is_noise_and_what_it_stands_in_for():
    spec = Catalog().get("lfm2.5-thinking-tiny")
    assert spec.random_weights and spec.thinks and spec.family == "LFM2.5"
    assert spec.hub_repo == "LiquidAI/LFM2.5-8B-A1B"
    assert "random weights" in spec.label and "LFM2.5-8B-A1B" in spec.label
    assert spec.to_json()["tool_format"] == "lfm2.5"


def test_each_vision_entry_carries_its_cards_image_defaults():
    catalog = Catalog()
    first, current = catalog.get("LFM2-VL-450M"), catalog.get("LFM2.5-VL-450M")
    assert first.image_defaults["use_thumbnail"] is False  # LFM2-VL-450M reads no thumbnail
    assert first.image_defaults["max_pixels_tolerance"] == 2.0
    assert current.image_defaults["min_image_tokens"] == 32  # LFM2.5-VL-450M's card
    assert catalog.get("LFM2-VL-1.6B").image_defaults["max_pixels_tolerance"] == 1.5
    # an offline build has the defaults of the hub model it stands in for
    assert catalog.get("lfm2-vl-tiny").image_defaults == first.image_defaults
    assert not catalog.get("LFM2.5-8B-A1B").image_defaults  # text only
    assert current.to_json()["image_defaults"]["min_image_tokens"] == 32


def test_hub_entries_load_their_pinned_revision():
    pins = json.loads(PINS_FILE.read_text())["revisions"]
    assert all(re.fullmatch(r"[0-9a-f]{40}", sha) for sha in pins.values())
    for spec in Catalog().all():
        if spec.source == "hub":
            assert spec.revision == pins.get(spec.location, "main"), spec.id
            assert spec.to_json()["revision"] == spec.revision
    # the commit LFM2.5-8B-A1B's card names for its tokenizer fix
    assert Catalog().get("LFM2.5-8B-A1B").revision.startswith("feb5e04")


class _Hub:
    """The Hub's model_info as pin() reads it: each repo's commit, an outage, or a non-commit."""

    def model_info(self, repo, revision=None):
        assert revision == "main"
        if repo.endswith("LFM2-VL-3B"):
            raise ConnectionError("down")
        if repo.endswith("LFM2-8B-A1B"):
            return SimpleNamespace(sha="main")
        return SimpleNamespace(sha=hashlib.sha1(repo.encode()).hexdigest())


def test_pin_records_each_hub_models_commit_and_keeps_the_old_pin_where_the_hub_fails(
    tmp_path, monkeypatch, capsys
):
    pins = tmp_path / "pins.json"
    pins.write_text(json.dumps({"about": "x", "revisions": {"LiquidAI/LFM2-VL-3B": "a" * 40}}))
    monkeypatch.setattr(catalog, "PINS_FILE", pins)
    written = hub.pin(Catalog(), api=_Hub())
    saved = json.loads(pins.read_text())
    assert saved["about"] == "x" and saved["revisions"] == written
    repo = "LiquidAI/LFM2.5-VL-450M"
    assert written[repo] == hashlib.sha1(repo.encode()).hexdigest()
    assert written["LiquidAI/LFM2-VL-3B"] == "a" * 40  # the Hub failed: the old pin stays
    assert "LiquidAI/LFM2-8B-A1B" not in written  # "main" is not a commit
    said = capsys.readouterr().out
    assert "LiquidAI/LFM2-VL-3B: not pinned (ConnectionError)" in said
    assert "LiquidAI/LFM2-8B-A1B: the Hub answered 'main', not a commit" in said
