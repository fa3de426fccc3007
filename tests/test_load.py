"""The load test (tests/helpers/load.py) at CI size: 3 users for 15 s with cancels, disconnects,
tool turns and quantization switches mixed in."""

from __future__ import annotations

import json

from helpers.load import run


def test_item39_load_small(tiny_paths):
    summary = run(clients=3, seconds=15, switch_every=4)
    print(json.dumps(summary))  # the figures, in CI's log
    assert summary["unhandled_errors"] == 0, summary["errors"]
    assert summary["deadlocked_clients"] == 0
    assert summary["requests"].get("stream", 0) >= 5 and summary["requests"].get("switch", 0) >= 2
    assert summary["server_alive"]
    warm = summary["server_resources"]["after_warmup"]
    end = summary["server_resources"]["end"]
    settled = summary["server_resources"]["settled"]
    assert settled["threads"] <= warm["threads"] + 2  # no thread leak once idle workers retire
    assert end["temp_mib"] <= warm["temp_mib"] + 5  # uploads do not pile up
    assert end["rss_mib"] <= warm["rss_mib"] + 150  # flat after warm-up (switches included)
