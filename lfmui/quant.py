"""Quantization levels: name -> how to load, whether this machine can, and why not.

``QUANTIZATIONS`` is a dict, not an if/elif ladder: each level carries its from_pretrained
kwargs, an availability probe and a note. The probes never raise; they return a reason, which
the Models tab shows beside every level it cannot offer.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from lfmui.errors import QuantizationUnavailable

# Modules kept in bf16 under bitsandbytes: the vision tower and projector are small and
# precision-sensitive, and bitsandbytes' int8 path fails on SigLIP2's patch embedding.
BNB_SKIP_MODULES = ["vision_tower", "multi_modal_projector", "lm_head"]


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class QuantLevel:
    name: str
    label: str
    dtype: str  # torch dtype name of the unquantized parts
    needs_cuda: bool
    probe: Callable[[], Availability]
    kwargs: Callable[[], dict[str, Any]]
    note: str = ""
    post_load: Callable[[Any], Any] | None = None  # runs on the loaded model (MoE experts)


@cache
def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # a broken CUDA install must not stop the app from serving on CPU
        return False


def _always() -> Availability:
    return Availability(True)


def _on_cpu_slow() -> Availability:
    if cuda_available():
        return Availability(True)
    return Availability(True, "runs on CPU but slowly; fp32 is the fast choice on CPU")


def _bitsandbytes() -> Availability:
    if not cuda_available():
        return Availability(False, "needs a CUDA GPU (bitsandbytes quantizes on the GPU)")
    if importlib.util.find_spec("bitsandbytes") is None:
        return Availability(False, "needs the bitsandbytes package: pip install bitsandbytes")
    return Availability(True)


def _bnb_8bit() -> dict[str, Any]:
    from transformers import BitsAndBytesConfig

    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_8bit=True, llm_int8_skip_modules=BNB_SKIP_MODULES
        )
    }


def _bnb_4bit() -> dict[str, Any]:
    import torch
    from transformers import BitsAndBytesConfig

    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=False,
            llm_int8_skip_modules=BNB_SKIP_MODULES,
        )
    }


def _none() -> dict[str, Any]:
    return {}


def _cpu_only() -> Availability:
    if cuda_available():
        return Availability(False, "a CPU level; on a GPU pick bf16, int8 or nf4")
    return Availability(True)


def _dynamic_int8(model: Any) -> Any:
    """torch's dynamic int8 for every nn.Linear (per-channel weights, fbgemm kernels): a
    quarter of fp32's bytes to read per decoded token, which is what bounds CPU decode."""
    import warnings

    import torch

    qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
    skip = tuple(m for m in BNB_SKIP_MODULES if m != "lm_head")  # the vision tower reads
    spec = {  # its patch embedding's weight.dtype, which a packed Linear does not have
        name: qconfig
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not any(part in name for part in skip)
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensors are deprecated upstream; still the
        # fastest int8 path on x86 CPUs in this torch (measured 6.7x on a 1024x4608 GEMV)
        return torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)


QUANTIZATIONS: dict[str, QuantLevel] = {
    "bf16": QuantLevel("bf16", "bf16", "bfloat16", False, _on_cpu_slow, _none),
    "fp16": QuantLevel("fp16", "fp16", "float16", False, _on_cpu_slow, _none),
    "fp32": QuantLevel("fp32", "fp32", "float32", False, _always, _none),
    "int8": QuantLevel(
        "int8",
        "8-bit (bitsandbytes LLM.int8)",
        "bfloat16",
        True,
        _bitsandbytes,
        _bnb_8bit,
        "MoE experts: int8 rows",
        lambda model: _experts(model, "int8"),
    ),
    "nf4": QuantLevel(
        "nf4",
        "4-bit (bitsandbytes nf4)",
        "bfloat16",
        True,
        _bitsandbytes,
        _bnb_4bit,
        "MoE experts: NF4 blocks of 64",
        lambda model: _experts(model, "nf4"),
    ),
    "int8-cpu": QuantLevel(
        "int8-cpu",
        "8-bit on CPU (torch dynamic int8)",
        "float32",
        False,
        _cpu_only,
        _none,
        "Linear layers int8 per channel, activations quantized on the fly",
        _dynamic_int8,
    ),
}


def _experts(model: Any, kind: str) -> int:
    """The 3-D MoE expert weights that bitsandbytes' Linear swap leaves in bf16, quantized."""
    from lfmui.moe_quant import quantize_experts

    return quantize_experts(model, kind)


def default_quantization() -> str:
    """CUDA: bf16. CPU: fp32 (bf16 prefill measured 6.5x slower on the 2-core CPU)."""
    return "bf16" if cuda_available() else "fp32"


def resolve(name: str | None) -> QuantLevel:
    """The level called `name` ("auto"/None: the default here), or a clear error."""
    if name in (None, "", "auto"):
        name = default_quantization()
    level = QUANTIZATIONS.get(name) if isinstance(name, str) else None
    if level is None:
        raise QuantizationUnavailable(
            f"'{str(name)[:40]}' is not a quantization level. "
            f"Use one of: {', '.join(QUANTIZATIONS)}."
        )
    available = level.probe()
    if not available.ok:
        raise QuantizationUnavailable(
            f"{level.label} is not available here: {available.reason}. "
            f"Pick {default_quantization()} instead."
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
            }
        )
    return rows
