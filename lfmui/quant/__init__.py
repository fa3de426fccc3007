"""Quantization levels: name -> how to load, whether this machine can, and why not.

``QUANTIZATIONS`` is a dict, not an if/elif ladder: each level carries its from_pretrained
kwargs, an availability probe and a note. The probes never raise; they return a reason, which
the Models tab shows beside every level it cannot offer.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from lfmui.errors import QuantizationUnavailable

# Modules every quantized level leaves unquantized: the vision tower and projector are small and
# precision-sensitive (bitsandbytes' int8 fails on SigLIP2's patch embedding, nf4 on its pixels),
# and the LM head is tied to the embeddings. transformers matches these from the start of a
# module's full name at a dot boundary, or as a suffix (``should_convert_module``); a test checks
# them against the module names of all three models.
SKIP_MODULES = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]

# bitsandbytes warns on every int8 layer call with bf16 inputs (66 lines per token on the 8B)
# and on import about optional kernels: its errors still show.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class Footprint:
    """Bytes a level keeps per parameter of each class of ``memory.Layout``."""

    linear: float  # a converted Linear layer's weight
    other: float  # what the level leaves as it is (embeddings, norms, the vision tower)
    experts: float  # 3-D expert weights
    linear_row: float = 0  # per output row of a converted Linear (scales)
    expert_row: float = 0
    head: float = 0  # a tied LM head (0: shared with the embeddings)
    activation: float = 2  # bytes per activation (cache, hidden states)
    # a level that quantizes after a full-precision load holds every parameter at this many
    # bytes first (the loaded weights and the checkpoint's pages); 0: quantized while loading
    load: float = 0
    load_experts: float = 0  # the same for 3-D expert weights
    vision: float | None = None  # the vision tower and projector (None: as `other`)


def _plain(size: float) -> Footprint:
    return Footprint(linear=size, other=size, experts=size, activation=size)


NF4_BYTES = 0.5 + 4 / 64  # a nibble per weight and a float32 absmax per block of 64
INT4_BYTES = 0.5 + 4 / 32  # a nibble per weight, a bf16 scale and zero per group of 32


@dataclass(frozen=True)
class QuantLevel:
    name: str
    label: str
    dtype: str  # torch dtype name of the unquantized parts
    probe: Callable[[], Availability]
    kwargs: Callable[[], dict[str, Any]]
    footprint: Footprint
    note: str = ""
    post_load: Callable[[Any], Any] | None = None  # runs on the loaded model
    # the dtype the weights are read in where it is not `dtype`: int8-cpu reads bf16 (what the
    # checkpoints hold), so what it packs while loading is never widened to fp32 first, and
    # its post_load widens what stays unpacked
    load_dtype: str | None = None
    plain: str = ""  # the level in one line of plain words (the Models tab's table)


@cache
def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # a broken CUDA install must not stop the app from serving on CPU
        return False


ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "asimd")
# The instruction-set caps a process can run under (torch's ATEN kernels, oneDNN, fbgemm): set
# to AVX2, the CPU is used as an AVX2-only one, and its wider flags do not count here
ISA_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "FBGEMM_ENABLE_INSTRUCTIONS")
_CAPPED = {"default": ("avx2", "avx512", "amx"), "avx2": ("avx512", "amx")}


@cache
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, ...]:
    """The instruction sets of ISA_FLAGS this process computes with: the CPU's (x86 "flags",
    ARM "Features"), less what an ISA cap in ISA_CAPS turns off."""
    present = set(cpuinfo_field(cpuinfo, ("flags", "Features")).split())
    dropped = [p for cap in isa_caps().values() for p in _CAPPED.get(cap.lower(), ())]
    return tuple(f for f in ISA_FLAGS if f in present and not f.startswith(tuple(dropped)))


def cpuinfo_field(cpuinfo: str, names: tuple[str, ...]) -> str:
    """The first of `names` that /proc/cpuinfo (or a file like it) gives, or ""."""
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in names:
                return value.strip()
    except OSError:
        pass
    return ""


def isa_caps() -> dict[str, str]:
    """The ISA caps set for this process (every CPU figure names them)."""
    return {name: os.environ[name] for name in ISA_CAPS if os.environ.get(name)}


def cpu_computes_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX-512 BF16 or AMX), where bf16 beats
    fp32; without it bf16 is emulated and several times slower."""
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _always() -> Availability:
    return Availability(True)


def _on_cpu_slow() -> Availability:
    if cuda_available():
        return Availability(True)
    if cpu_computes_bf16():  # measured on an AMX CPU: VL-450M TTFT 0.39 s against fp32's 1.50
        return Availability(True, "this CPU computes in bf16: faster than fp32 here")
    return Availability(True, "runs on CPU but slowly (no bf16 arithmetic); fp32 is faster here")


def _bitsandbytes() -> Availability:
    if importlib.util.find_spec("bitsandbytes") is None:
        return Availability(False, "needs the bitsandbytes package: pip install bitsandbytes")
    failure = _bitsandbytes_fails("cuda" if cuda_available() else "cpu")
    if failure:
        return Availability(False, f"bitsandbytes cannot run here ({failure})")
    if cuda_available():
        return Availability(True)
    return Availability(True, "runs on CPU through bitsandbytes' CPU kernels")


@cache
def _bitsandbytes_fails(device: str) -> str:
    """'' when bitsandbytes quantizes and multiplies on `device`, else why not (tried once)."""
    try:
        import bitsandbytes as bnb
        import torch
        from bitsandbytes.functional import quantize_4bit

        weight = torch.ones(64, 64, dtype=torch.bfloat16, device=device)
        packed, state = quantize_4bit(weight, blocksize=64, quant_type="nf4")
        bnb.matmul_4bit(torch.ones(1, 64, dtype=torch.bfloat16, device=device), packed.t(), state)
    except Exception as exc:  # any failure (missing native library, no kernel) is a reason
        return f"{type(exc).__name__}: {str(exc)[:120]}"
    return ""


def _bnb(kind: str) -> Callable[[], dict[str, Any]]:
    def kwargs() -> dict[str, Any]:
        from lfmui.quant.moe import bnb_config

        return {"quantization_config": bnb_config(kind, SKIP_MODULES)}

    return kwargs


def should_quantize(module_name: str) -> bool:
    """Whether a quantized level converts the module called `module_name` (SKIP_MODULES)."""
    from transformers.quantizers.quantizers_utils import should_convert_module

    return should_convert_module(module_name, SKIP_MODULES)


def _none() -> dict[str, Any]:
    return {}


def _cpu_only() -> Availability:
    if cuda_available():
        return Availability(False, "a CPU level; on a GPU pick bf16, int8 or nf4")
    return Availability(True)


def _cpu_with_bf16() -> Availability:
    if cuda_available():
        return Availability(False, "a CPU level; on a GPU pick bf16, int8 or nf4")
    if not cpu_computes_bf16():
        return Availability(False, "needs a CPU with bf16 arithmetic (AVX-512 BF16 or AMX)")
    return Availability(True)


def _cpu_kernel(packing: str, compute: str) -> Callable[[], Availability]:
    """A CPU level's probe: a CPU (with bf16 arithmetic for bf16 compute) and torch's kernel
    for `packing` taking `compute` activations."""

    @cache
    def probe() -> Availability:
        available = _cpu_with_bf16() if compute == "bfloat16" else _cpu_only()
        if not available.ok:
            return available
        import torch

        from lfmui.quant.cpu_weights import kernel_fails

        failure = kernel_fails(packing, getattr(torch, compute))
        if failure:
            return Availability(False, f"torch's CPU {packing} kernel cannot run here ({failure})")
        return available

    return probe


def _packed_experts(packing: str) -> Callable[[], dict[str, Any]]:
    def kwargs() -> dict[str, Any]:
        from lfmui.quant.moe import experts_config

        return {"quantization_config": experts_config(packing, should_quantize)}

    return kwargs


def _packed_linears(packing: str) -> Callable[[Any], int]:
    def post_load(model: Any) -> int:
        from lfmui.quant.cpu_weights import PACKINGS, quantize

        return quantize(model, PACKINGS[packing], should_quantize)

    return post_load


def _dynamic_int8(model: Any) -> Any:
    """torch's dynamic int8 for every nn.Linear (per-channel weights, fbgemm kernels): a
    quarter of fp32's bytes to read per decoded token, which is what bounds CPU decode."""
    import warnings

    import torch

    from lfmui.quant.cpu_weights import dynamic_bytes

    qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
    spec = {  # the vision tower reads its patch embedding's weight.dtype, which a packed
        name: qconfig  # Linear does not have; the tied LM head is quantized here (measured)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and (name == "lm_head" or should_quantize(name))
    }
    vision = _vision_parts(model) if cpu_computes_bf16() else []
    in_bf16 = {id(t) for part in vision for t in [*part.parameters(), *part.buffers()]}
    for tensor in [*model.parameters(), *model.buffers()]:  # read in bf16 (load_dtype): what
        if tensor.dtype == torch.bfloat16 and id(tensor) not in in_bf16:  # was not packed
            tensor.data = tensor.data.float()  # computes in fp32 (a tied head stays tied)
    linears = {name: model.get_submodule(name) for name in spec}
    shapes = {n: (m.out_features, m.in_features, m.bias is not None) for n, m in linears.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensors are deprecated upstream; still the
        # fastest int8 path on x86 CPUs in this torch (measured 6.7x on a 1024x4608 GEMV)
        model = torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)
    for name, shape in shapes.items():
        model.get_submodule(name).held_bytes = dynamic_bytes(*shape)
    for part in vision:
        part.to(torch.bfloat16)
    return model


def _vision_parts(model: Any) -> list[Any]:
    """The vision tower and projector, left out of int8: on a CPU with bf16 arithmetic they
    compute in bf16 (reading an image is a prefill, bound by arithmetic, where bf16 is several
    times faster than fp32; the projector's output goes back to fp32 as transformers merges
    it)."""
    inner = getattr(model, "model", model)
    names = ("vision_tower", "multi_modal_projector")
    return [part for part in (getattr(inner, name, None) for name in names) if part is not None]


QUANTIZATIONS: dict[str, QuantLevel] = {
    "bf16": QuantLevel(
        "bf16",
        "bf16",
        "bfloat16",
        _on_cpu_slow,
        _none,
        _plain(2),
        plain="16-bit, full quality: what a GPU runs best",
    ),
    "fp16": QuantLevel(
        "fp16",
        "fp16",
        "float16",
        _on_cpu_slow,
        _none,
        _plain(2),
        plain="16-bit, full quality, for GPUs without bf16",
    ),
    "fp32": QuantLevel(
        "fp32",
        "fp32",
        "float32",
        _always,
        _none,
        _plain(4),
        plain="32-bit, full quality, twice 16-bit's memory; runs everywhere",
    ),
    "int8": QuantLevel(
        "int8",
        "8-bit (bitsandbytes LLM.int8)",
        "bfloat16",
        _bitsandbytes,
        _bnb("int8"),
        Footprint(linear=1, linear_row=4, experts=1, expert_row=2, other=2),
        "about half of bf16's memory; on a GPU decode is slower than bf16's compiled decode; "
        "MoE experts int8 per row, quantized while loading",
        plain="8-bit: half of 16-bit's memory, for a GPU that is short of it",
    ),
    "nf4": QuantLevel(
        "nf4",
        "4-bit (bitsandbytes nf4)",
        "bfloat16",
        _bitsandbytes,
        _bnb("nf4"),
        Footprint(linear=NF4_BYTES, other=2, experts=NF4_BYTES),
        "about a third of bf16's memory, the level that fits small GPUs; on a GPU decode is "
        "slower than bf16's compiled decode; MoE experts NF4, quantized while loading",
        plain="4-bit: a third of 16-bit's memory, for small GPUs",
    ),
    "int8-bf16": QuantLevel(
        "int8-bf16",
        "8-bit weights, bf16 compute (CPU)",
        "bfloat16",
        _cpu_kernel("int8", "bfloat16"),
        _packed_experts("int8"),
        Footprint(linear=1, linear_row=2, head=1, experts=1, expert_row=2, other=2, load=2),
        "int8 weights per row read by torch's int8 kernel at decode, bf16 prefill; MoE experts "
        "int8, quantized while loading",
        _packed_linears("int8"),
        plain="8-bit for CPUs with bf16 arithmetic (AVX-512 BF16 or AMX)",
    ),
    "int4-bf16": QuantLevel(
        "int4-bf16",
        "4-bit weights, bf16 compute (CPU)",
        "bfloat16",
        _cpu_kernel("int4", "bfloat16"),
        _packed_experts("int4"),
        Footprint(linear=INT4_BYTES, head=INT4_BYTES, experts=INT4_BYTES, other=2, load=2),
        "int4 weights in groups of 32 read by torch's int4 kernel at decode, bf16 prefill; "
        "MoE experts int4, quantized while loading",
        _packed_linears("int4"),
        plain="4-bit for CPUs with bf16 arithmetic: the least memory on a CPU",
    ),
    "int8-cpu": QuantLevel(
        "int8-cpu",
        "8-bit on CPU (torch dynamic int8)",
        "float32",
        _cpu_only,
        _packed_experts("dynamic-int8"),
        Footprint(
            linear=1,
            linear_row=16,
            head=1,
            experts=1,
            expert_row=16,
            other=4,
            activation=4,
            # read in bf16, the Linear layers and experts packed as they load, the rest then
            # widened to fp32: measured RSS peaks (`bench seed --levels auto`, this level) of
            # 10.2 GiB for LFM2-8B-A1B (8.3 resident), 6.3 for VL-1.6B and 2.6 for VL-450M
            load=4,
            load_experts=1.1,
            vision=2 if cpu_computes_bf16() else 4,  # _vision_parts, in bf16 where it pays
        ),
        "Linear layers and MoE experts int8 per channel (experts quantized while loading), "
        "activations quantized on the fly; fbgemm's kernels, fast on AVX2 and up",
        _dynamic_int8,
        load_dtype="bfloat16",
        plain="8-bit for any recent CPU (AVX2 and up): the fastest on most",
    ),
}


# No int8/int4 level computes in fp32 through torch's packed kernels: with fp32 activations
# _weight_int8pack_mm and _weight_int4pack_mm_for_cpu take a slow path. One 4096x2048 decode
# row (`python -m lfmui.bench kernels --repeats 5`, AMD EPYC 2 cores with AVX-512 BF16, torch
# 2.14.1), ms: int8 5.65 and int4 12.5 with fp32 activations, 0.20 and 0.23 with bf16 (0.36
# and 0.85 under ATEN_CPU_CAPABILITY=avx2), the fp32 Linear 1.32, torch's dynamic int8 0.095.
# So on CPUs without bf16, int8-cpu (fbgemm, AVX2 and up) is the fast level.
# What "auto" loads: the first of these that runs here and fits, the fastest reply first
# (`python -m lfmui.bench seed`, a 512 px image; lfmui/measured.py). CPU, VL-450M in one run:
# int8-cpu TTFT 509 ms and 27.0 ms/token, int4-bf16 717 ms and 24.3, fp32 1268 and 62.5: for
# a reply of 100 tokens the two quantized levels tie and int8-cpu keeps 8 bits. On
# LFM2-8B-A1B int8-cpu keeps fp32 experts (33 GB) and never fits; int4-bf16 packs them while
# loading (5.1 GiB, RSS peak 7.7, TTFT 7.5 s after 544 tokens, 90 ms/token) and replies to
# 100 tokens in 16.5 s against int8-bf16's 21 s (162 ms/token) and nf4's ~80 s.
# CUDA: bf16 has the compiled decode; nf4 decoded faster than int8 in FACTS.md's anchors.
AUTO_ORDER = {
    "cuda": ("bf16", "nf4", "int8"),
    "cpu": ("int8-cpu", "int4-bf16", "int8-bf16", "nf4", "int8", "fp32"),
}


def auto_levels() -> list[QuantLevel]:
    """The levels "auto" may pick here, in its order, that this machine can run."""
    order = AUTO_ORDER["cuda" if cuda_available() else "cpu"]
    return [QUANTIZATIONS[name] for name in order if QUANTIZATIONS[name].probe().ok]


def resolve(name: str) -> QuantLevel:
    """The level called `name`, or a clear error ("auto" is the manager's: it needs the model
    to know what fits)."""
    level = QUANTIZATIONS.get(name) if isinstance(name, str) else None
    if level is None:
        raise QuantizationUnavailable(
            f"'{str(name)[:40]}' is not a quantization level. "
            f"Use one of: auto, {', '.join(QUANTIZATIONS)}."
        )
    available = level.probe()
    if not available.ok:
        raise QuantizationUnavailable(
            f"{level.label} is not available here: {available.reason}. "
            "Pick auto (the fastest level that fits here) instead."
        )
    return level


def availability_table() -> list[dict[str, Any]]:
    """Every level with whether it can run here and why not (for /models and the Models tab)."""
    rows = []
    for level in QUANTIZATIONS.values():
        available = level.probe()
        rows.append(
            {
                "name": level.name,
                "label": level.label,
                "available": available.ok,
                "reason": available.reason,
                "note": level.note,
            }
        )
    return rows
