"""Quantized mixture-of-experts weights for the 8-bit and 4-bit levels.

bitsandbytes' from_pretrained path replaces nn.Linear layers only; LFM2-8B-A1B keeps its 32
experts per layer as two 3-D parameters (``gate_up_proj`` [E, 2I, H] and ``down_proj``
[E, H, I]) that it leaves in bf16: 14.94 of the model's 15.54 GiB stay unquantized (FACTS.md).
``quantize_experts`` swaps each experts module for ``QuantizedExperts``, which holds the same
weights quantized per expert with bitsandbytes' functional API:

- int8: rows of int8 with an absmax scale per row (``int8_vectorwise_quant``), dequantized per
  hit expert in the compute dtype;
- nf4: NF4 blocks of 64 (``quantize_4bit``), multiplied with ``matmul_4bit`` (a fused 4-bit
  GEMV for a single decode token on CUDA; dequantize-then-matmul for prefill and on CPU).

Routing is untouched: the forward is the transformers loop over the experts that tokens hit.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

Kind = Literal["int8", "nf4"]
BLOCKSIZE = 64
_NAMES = ("gate_up_proj", "down_proj")


class QuantizedExperts(nn.Module):
    """A drop-in for transformers' Lfm2MoeExperts with quantized expert weights."""

    def __init__(self, experts: nn.Module, kind: Kind) -> None:
        super().__init__()
        import bitsandbytes.functional as bnbf

        self.kind = kind
        self.num_experts = experts.num_experts
        self.act_fn = experts.act_fn
        self.compute_dtype = experts.gate_up_proj.dtype
        self._template: dict[str, Any] = {}
        for name in _NAMES:
            weights = getattr(experts, name).data
            packed, scales = [], []
            for expert in weights:  # one expert at a time: peak memory stays one expert's
                if kind == "int8":
                    rows, row_scales, _ = bnbf.int8_vectorwise_quant(expert.to(torch.float16))
                    packed.append(rows)
                    scales.append(row_scales)
                else:
                    blocks, state = bnbf.quantize_4bit(
                        expert, blocksize=BLOCKSIZE, quant_type="nf4"
                    )
                    packed.append(blocks)
                    scales.append(state.absmax)
                    self._template[name] = state
            self.register_buffer(f"{name}_q", torch.stack(packed))
            self.register_buffer(f"{name}_scale", torch.stack(scales))
            setattr(experts, name, None)  # the bf16 copy goes as soon as its layer is done

    def _linear(self, name: str, expert: int, x: torch.Tensor) -> torch.Tensor:
        packed = getattr(self, f"{name}_q")[expert]
        scale = getattr(self, f"{name}_scale")[expert]
        if self.kind == "int8":
            weight = packed.to(x.dtype) * (scale / 127.0).to(x.dtype)[:, None]
            return nn.functional.linear(x, weight)
        import bitsandbytes as bnb
        from bitsandbytes.functional import QuantState

        template = self._template[name]
        state = QuantState(
            absmax=scale,
            shape=template.shape,
            code=template.code.to(scale.device),
            blocksize=BLOCKSIZE,
            quant_type="nf4",
            dtype=x.dtype,
        )
        return bnb.matmul_4bit(x, packed.t(), quant_state=state)

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        final = torch.zeros_like(hidden_states)
        with torch.no_grad():
            mask = nn.functional.one_hot(top_k_index, num_classes=self.num_experts + 1)
            mask = mask.permute(2, 1, 0)
            hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
        for expert in hit.flatten().tolist():
            if expert == self.num_experts:
                continue
            top_k_pos, token_idx = torch.where(mask[expert])
            state = hidden_states[token_idx]
            gate, up = self._linear("gate_up_proj", expert, state).chunk(2, dim=-1)
            out = self._linear("down_proj", expert, self.act_fn(gate) * up)
            out = out * top_k_weights[token_idx, top_k_pos, None]
            final.index_add_(0, token_idx, out.to(final.dtype))
        return final


def expert_modules(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, experts) for every 3-D experts module in `model`."""
    found = []
    for parent in model.modules():
        child = getattr(parent, "experts", None)
        weights = getattr(child, "gate_up_proj", None) if isinstance(child, nn.Module) else None
        if weights is not None and weights.dim() == 3:
            found.append((parent, "experts", child))
    return found


def quantize_experts(model: nn.Module, kind: Kind) -> int:
    """Swap every experts module of `model` for a quantized one; returns how many."""
    modules = expert_modules(model)
    for parent, attribute, experts in modules:
        with torch.no_grad():
            setattr(parent, attribute, QuantizedExperts(experts, kind))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return len(modules)
