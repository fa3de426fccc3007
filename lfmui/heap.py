"""The process's memory: what it holds, and handing back what it no longer needs.

Measures (``process_rss``, ``weight_bytes``, ``memory_report``) and releases: glibc's freed
heap pages (``trim_heap``), the accelerator's cache (``free_accelerator``) and the pages of
memory-mapped checkpoints a load has read (``drop_checkpoint_pages``,
``release_checkpoint_mapping``). The lowest floor of the package: it imports nothing of lfmui.
"""

from __future__ import annotations

import functools
import gc
from typing import Any


def process_rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def memory_report(weights: int, cuda: bool) -> dict[str, Any]:
    """Resident weight bytes and, on CUDA, allocated/reserved/peak; the process RSS."""
    report: dict[str, Any] = {"weights_bytes": weights}
    if cuda:
        import torch

        report.update(
            cuda_allocated_bytes=torch.cuda.memory_allocated(),
            cuda_reserved_bytes=torch.cuda.memory_reserved(),
            cuda_peak_bytes=torch.cuda.max_memory_allocated(),
        )
    report["rss_bytes"] = process_rss()
    return report


def weight_bytes(model: Any) -> int:
    """Bytes held by parameters and buffers (packed sizes for quantized weights), with the
    quantization statistics bitsandbytes keeps beside them (``quantization_statistics``)."""
    seen: set[int] = set()
    total = 0
    held = (*model.parameters(), *model.buffers())
    for tensor in (*held, *(t for p in held for t in quantization_statistics(p))):
        if id(tensor) in seen:  # tied embeddings (and shared code tables) count once
            continue
        seen.add(id(tensor))
        total += tensor.numel() * tensor.element_size()
    for module in model.modules():  # weights packed out of sight: lfmui's count, where it set
        held = getattr(module, "held_bytes", None)  # one (unpacking took 9 s of an 8B load)
        if held is not None:
            total += held
        elif hasattr(module, "_packed_params") and callable(getattr(module, "weight", None)):
            weight, bias = module.weight(), module.bias()
            total += weight.numel() * weight.element_size()
            total += bias.numel() * bias.element_size() if bias is not None else 0
    return total


def quantization_statistics(weight: Any) -> list[Any]:
    """The tensors bitsandbytes keeps on a quantized weight, outside parameters and buffers:
    a 4-bit weight's quant_state (absmax, its code table and, nested, their own absmax and
    code: about 11% on top of nf4's packed bytes), an 8-bit weight's SCB (row scales)."""
    import torch

    found = [getattr(weight, "SCB", None)]
    state = getattr(weight, "quant_state", None)
    while state is not None:  # a 4-bit state, then the one that quantizes its absmax
        found += [getattr(state, "absmax", None), getattr(state, "code", None)]
        found += [getattr(state, "offset", None)]
        state = getattr(state, "state2", None)
    return [t for t in found if isinstance(t, torch.Tensor)]


def free_accelerator(cuda: bool) -> None:
    """Collect, trim the heap and, where this process has started CUDA, empty its cache and
    reset the peak. A ZeroGPU Space's main process never starts CUDA (its workers do): there
    CUDA calls raise, and there is nothing of ours to free."""
    gc.collect()
    trim_heap()
    if cuda:
        import torch

        if not torch.cuda.is_initialized():
            return
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them per thread arena otherwise): a
    switch frees hundreds of MB of CPU tensors, and without this the process's RSS creeps up
    over many switches (measured in tests/helpers/load.py)."""
    c = libc()
    if c is not None and hasattr(c, "malloc_trim"):  # glibc's; musl has none
        c.malloc_trim(0)


def _checkpoint_ranges(maps: str = "/proc/self/maps") -> list[tuple[int, int]]:
    """Address ranges where safetensors checkpoints are mapped into this process."""
    ranges = []
    try:
        with open(maps) as lines:
            for line in lines:
                fields = line.split()
                if len(fields) >= 6 and fields[5].endswith(".safetensors"):
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    ranges.append((start, end))
    except OSError:
        pass
    return ranges


@functools.cache
def libc() -> Any:
    """The C library, looked up once (find_library runs ldconfig); None where there is none."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:  # Windows: no libc to call
        return None


def drop_checkpoint_pages() -> None:
    """Take the mapped checkpoint pages read so far out of the resident set (madvise
    MADV_DONTNEED; the mapping is read-only, so a later read faults the same bytes back in from
    the file). Called after each quantized layer: a quantized load of the 8B otherwise holds
    every bf16 page it has read until the loader closes the files."""
    import ctypes

    c = libc()
    if c is None or not hasattr(c, "madvise"):
        return
    c.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for start, end in _checkpoint_ranges():
        c.madvise(start, end - start, 4)  # MADV_DONTNEED


def release_checkpoint_mapping(model: Any) -> int:
    """Copy the weights that are still views of the memory-mapped checkpoint into memory of
    their own when they use under half of the mapping; returns the bytes copied.

    A view keeps its whole file mapped, and every page the loader read stays in the resident
    set: after a quantized load of the 8B (4.5 GiB kept), 17 GB of bf16 checkpoint pages stayed
    mapped for the sake of 0.3 GiB of embeddings and norms. A bf16 model read as bf16 is views
    through and through: there the mapping is the model, and it is left as it is."""
    ranges = _checkpoint_ranges()
    tensors = [*model.parameters(), *model.buffers()]
    views = [t for t in tensors if any(a <= t.data_ptr() < b for a, b in ranges)]
    view_bytes = sum(t.numel() * t.element_size() for t in views)
    if not views or view_bytes >= 0.5 * sum(b - a for a, b in ranges):
        return 0
    for tensor in views:
        tensor.data = tensor.data.clone()
    return view_bytes
