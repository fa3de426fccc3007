"""The catalog (lfmui.catalog): the LFM2.5 family beside the LFM2 originals."""

from __future__ import annotations

from lfmui.catalog import Catalog


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
