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
        out = _int8_mm(rows, self.weight_q, self.scale)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def _int8_mm(rows: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """rows [M, K] (bf16) times int8 weights [N, K] with a bf16 scale per row: [M, N]."""
    if rows.shape[0] <= DECODE_ROWS:
        return torch.ops.aten._weight_int8pack_mm(rows, packed, scale)
    return nn.functional.linear(rows, packed.to(torch.bfloat16) * scale[:, None])


class Int8Experts(nn.Module):
    """A drop-in for transformers' Lfm2MoeExperts with int8 expert weights (quantized while
    loading, ``moe_quant.int8_experts_config``), computed like Int8Linear: each chosen expert
    reads its own int8 rows, nothing is gathered or copied. The expert ids go to the host
    (``tolist``): on a CPU that is a read, not a device sync."""

    def __init__(self, act_fn: object, dtype: torch.dtype, weights: dict[str, tuple]) -> None:
        super().__init__()
        self.act_fn = act_fn
        for name, (packed, scale, _shape) in weights.items():
            self.register_buffer(f"{name}_q", packed)
            self.register_buffer(f"{name}_scale", scale.to(torch.bfloat16))

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        x = hidden_states.to(torch.bfloat16)
        weights = top_k_weights.to(torch.bfloat16)
        if x.shape[0] == 1:  # a decode step: the fewest ops
            final = None
            for slot, expert in enumerate(top_k_index[0].tolist()):
                out = self._expert(x, expert) * weights[0, slot]
                final = out if final is None else final + out
            return final.to(hidden_states.dtype)
        final = torch.zeros_like(x)
        hits: dict[int, list[tuple[int, int]]] = {}  # expert -> (token, slot)
        for token, experts in enumerate(top_k_index.tolist()):
            for slot, expert in enumerate(experts):
                hits.setdefault(expert, []).append((token, slot))
        for expert, pairs in hits.items():
            tokens = torch.tensor([t for t, _ in pairs])
            slots = torch.tensor([s for _, s in pairs])
            out = self._expert(x[tokens], expert) * weights[tokens, slots, None]
            final.index_add_(0, tokens, out)
        return final.to(hidden_states.dtype)

    def _expert(self, rows: torch.Tensor, expert: int) -> torch.Tensor:
        gate_up = _int8_mm(rows, self.gate_up_proj_q[expert], self.gate_up_proj_scale[expert])
        gate, up = gate_up.chunk(2, dim=-1)
        return _int8_mm(
            self.act_fn(gate) * up, self.down_proj_q[expert], self.down_proj_scale[expert]
        )


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
