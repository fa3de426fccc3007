"""Meters for the bench and the tests: what a block of code costs in memory and in operations.

- ``tensor_peak()``: the peak bytes of tensor memory a block allocated above what was allocated
  when it began. CUDA: the caching allocator's own counters. CPU: the allocation events of
  torch's profiler, whose CPU allocator reports a running total with every allocation and free
  made on the calling thread (the profiler records no allocations on other threads: transformers'
  loader uses a thread pool unless ``HF_DEACTIVATE_ASYNC_LOAD=1``, and always loads quantized
  levels on the calling thread).
  Memory-mapped checkpoint pages are not tensor allocations and are not counted: they are the
  kernel's reclaimable page cache, not memory a load can be killed for.
- ``rss_peak()``: the process's resident-set high-water mark (VmHWM) over the block, reset at its
  start through /proc/self/clear_refs; None where the kernel offers neither. It counts mapped
  checkpoint pages too, as the kernel's memory accounting does.
- ``count_ops()``: the aten operations a block dispatches (counted where they enter the
  dispatcher, so a custom op such as bitsandbytes' counts once) and how many of them make the
  host wait for the device: data-dependent results (nonzero, a tensor read as a Python number or
  list). Counted on CPU, these are the syncs the same code makes on a GPU, where each stalls the
  launch queue and none can be captured in a CUDA graph.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# aten ops whose result the host must read (or whose size depends on values) before going on
SYNC_OPS = frozenset(
    {
        "aten::nonzero",
        "aten::nonzero_static",
        "aten::_local_scalar_dense",  # .item(), int(t), bool(t), `if t:`
        "aten::is_nonzero",
        "aten::masked_select",
        "aten::_unique2",
        "aten::unique_consecutive",
        "aten::unique_dim",
        "aten::equal",
        "aten::argwhere",
    }
)


@dataclass
class Peak:
    bytes: int = 0
    device: str = "cpu"


@contextlib.contextmanager
def tensor_peak(device: str | None = None) -> Iterator[Peak]:
    """Measure the tensor-memory peak of the block (above its start) into the yielded Peak."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    peak = Peak(device=device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        yield peak
        torch.cuda.synchronize()
        peak.bytes = max(0, torch.cuda.max_memory_allocated() - start)
        return
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        yield peak
    events = sorted(_allocations(prof.profiler.kineto_results.experimental_event_tree()))
    if events:
        _, size, total = events[0]
        start = total - size
        peak.bytes = max(0, max(total for _, _, total in events) - start)


@contextlib.contextmanager
def rss_peak() -> Iterator[Peak]:
    """The process's peak resident set over the block, in the yielded Peak (0: not measurable)."""
    peak = Peak(device="cpu")
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # resets VmHWM to the current RSS
    except OSError:
        yield peak
        return
    yield peak
    peak.bytes = _status_kib("VmHWM") * 1024


def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


def _allocations(nodes: Any) -> Iterator[tuple[int, int, int]]:
    """(time, size, running total) of every CPU allocation and free in a profiler event tree."""
    stack = list(nodes)
    while stack:
        node = stack.pop()
        fields = node.extra_fields
        if type(fields).__name__ == "_ExtraFields_Allocation" and fields.device.type == "cpu":
            yield node.start_time_ns, fields.alloc_size, fields.total_allocated
        stack.extend(node.children)


@dataclass
class OpCount:
    ops: int = 0
    syncs: int = 0
    by_name: collections.Counter = field(default_factory=collections.Counter)


class _Counter(TorchDispatchMode):
    def __init__(self, count: OpCount) -> None:
        super().__init__()
        self.count = count

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        self.count.by_name[name] += 1
        self.count.ops += 1
        self.count.syncs += name in SYNC_OPS
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def count_ops() -> Iterator[OpCount]:
    """Count the aten operations and host syncs of the block into the yielded OpCount.

    ``Tensor.tolist()`` reads memory without entering the dispatcher, so it is counted by
    wrapping it for the block's duration."""
    count = OpCount()
    original = torch.Tensor.tolist

    def tolist(self):
        count.syncs += 1
        count.by_name["Tensor.tolist"] += 1
        return original(self)

    torch.Tensor.tolist = tolist
    try:
        with _Counter(count):
            yield count
    finally:
        torch.Tensor.tolist = original
