"""The generation settings (lfmui.settings): top_k, the one the LFM2.5 cards added."""

from __future__ import annotations

import pytest

from lfmui.errors import InputError
from lfmui.settings import Settings, slider


def test_top_k_reaches_generate_and_zero_turns_it_off():
    assert Settings.from_dict({"top_k": 80}).generate_kwargs()["top_k"] == 80
    assert Settings.from_dict({"top_k": 0}).generate_kwargs()["top_k"] == 0  # no cut
    assert Settings().generate_kwargs()["top_k"] == 50  # transformers' own default, as before
    assert Settings.from_dict({"temperature": 0, "top_k": 80}).generate_kwargs()["top_k"] is None


def test_a_models_card_sampling_sets_top_k_and_the_request_overrides_it():
    card = {"temperature": 0.2, "top_k": 80, "repetition_penalty": 1.05}
    assert Settings.from_dict({}, defaults=card).top_k == 80
    assert Settings.from_dict({"top_k": 20}, defaults=card).top_k == 20


@pytest.mark.parametrize("value", [-1, 1001, 2.5, "50"])
def test_a_top_k_out_of_range_says_the_range(value):
    with pytest.raises(InputError, match="top_k"):
        Settings.from_dict({"top_k": value})
    assert slider("top_k")["whole"] is True


@pytest.mark.parametrize("value", ["false", 0, None])
def test_the_thinking_switch_takes_true_or_false_only(value):
    assert Settings.from_dict({"think": False}).think is False
    assert Settings().think is True  # a thinking model thinks unless asked not to
    with pytest.raises(InputError, match="think takes true or false"):
        Settings.from_dict({"think": value})
    assert slider("think") == {
        "label": Settings.model_fields["think"].title,
        "value": True,
        "switch": True,
    }
    assert "think" not in Settings(think=False).generate_kwargs()  # a template matter
