"""int8 weights with bf16 compute, for CPUs that compute in bf16 natively (AVX-512 BF16, AMX).

Decode on a CPU reads every weight once per token, so it is bound by bytes: int8 weights read a
quarter of fp32's. Prefill is bound by arithmetic, where bf16 on these CPUs is several times
faster than fp32 (measured on the project's 2-core box, LFM2-VL-450M and a 512 px image: TTFT
1.50 s in fp32, 0.39 s in bf16). ``Int8Linear`` keeps each weight as int8 rows with a bf16
scale per row and multiplies

- a few rows (a decode step) with ``torch.ops.aten._weight_int8pack_mm``, torch's int8
  weight-only kernel, which reads the int8 weights directly;
- a prompt's worth of rows (prefill) by dequantizing to bf16 and using the bf16 GEMM.

The vision tower and projector are left in bf16 (``quant.SKIP_MODULES``); the LM head, tied to
the embeddings, gets an int8 copy of its own (the embeddings stay bf16 for the lookup).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn

DECODE_ROWS = 8  # up to this many rows per call the int8 kernel beats dequantize + bf16 GEMM


class Int8Linear(nn.Module):
    """A Linear whose weight is int8 per output row, computed in bf16."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach()
        absmax = weight.float().abs().amax(dim=1).clamp(min=1e-12)
        self.register_buffer(
            "weight_q", torch.round(weight.float() * (127.0 / absmax)[:, None]).to(torch.int8)
        )
        self.register_buffer("scale", (absmax / 127.0).to(torch.bfloat16))
        bias = linear.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(torch.bfloat16), False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if rows.shape[0] <= DECODE_ROWS:
            out = torch.ops.aten._weight_int8pack_mm(rows, self.weight_q, self.scale)
        else:
            weight = self.weight_q.to(torch.bfloat16) * self.scale[:, None]
            out = nn.functional.linear(rows, weight)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def quantize(model: nn.Module) -> int:
    """Swap the language model's Linear layers and the LM head for Int8Linear; returns how
    many. Runs after a bf16 load: each bf16 weight goes as its int8 copy comes."""
    from lfmui.quant import should_quantize

    swapped = 0
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if type(child) is nn.Linear and (full == "lm_head" or should_quantize(full)):
                setattr(parent, name, Int8Linear(child))
                swapped += 1
    return swapped


@functools.cache
def cpu_computes_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX-512 BF16 or AMX), where bf16 beats
    fp32; without it bf16 is emulated and several times slower."""
    try:
        flags = next(
            (line for line in Path(cpuinfo).read_text().splitlines() if line.startswith("flags")),
            "",
        ).split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
