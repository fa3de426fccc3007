"""The bench's meters (lfmui.bench.meters): a transient allocation and host syncs are seen."""

from __future__ import annotations

import torch

from lfmui.bench import meters


def test_the_memory_meters_see_a_transient_allocation():
    """What a block allocates and frees again still counts as its peak."""
    from lfmui.heap import process_rss

    before = process_rss()
    with meters.rss_peak() as rss, meters.tensor_peak("cpu") as peak:
        kept = torch.ones(4 * 2**20, dtype=torch.uint8)
        transient = torch.ones(64 * 2**20, dtype=torch.uint8)
        del transient
    assert 68 * 2**20 <= peak.bytes < 70 * 2**20
    assert rss.bytes >= before + 60 * 2**20
    assert kept.sum() == kept.numel()


def test_the_op_counter_sees_host_syncs():
    """The meter itself: the loop transformers' eager experts use is counted as syncing."""
    mask = torch.tensor([[1, 0], [0, 1]])
    with meters.count_ops() as count:
        for expert in mask.sum(0).nonzero().flatten().tolist():
            torch.where(mask[:, expert])
    assert count.syncs == 1 + 1 + 2  # nonzero, tolist, and a nonzero inside each where
