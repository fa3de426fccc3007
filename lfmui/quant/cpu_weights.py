"""Weight-only int8 and int4 layers for CPUs: ``PACKINGS`` (how [N, K] weights are packed, and
multiplied through torch's own CPU kernels for a decode step or unpacked for a prompt),
``QuantLinear`` for a Linear, ``QuantExperts`` and ``DynamicExperts`` for LFM2-MoE's experts.
Why these formats, and the kernels' figures:
docs/quantization.md#the-cpu-weight-packings-lfmuiquantcpu_weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
from torch import nn

GROUP = 32  # int4 group size along K (llama.cpp's Q4_0 uses blocks of 32 too)
_BLOCK_N = 64  # outputs per block in torch's packed int4 layout on AVX-512


@dataclass(frozen=True)
class Packing:
    name: str
    pack: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # [N, K] -> (q, scales)
    kernel: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # few rows
    unpack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # -> bf16 [N, K] (maybe a view)
    decode_rows: int  # up to this many rows the kernel beats unpack + bf16 GEMM (measured)
    fits: Callable[[int, int], bool]  # whether an [N, K] weight can take this packing


def _pack_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    absmax = weight.float().abs().amax(dim=1).clamp(min=1e-12)
    rows = torch.round(weight.float() * (127.0 / absmax)[:, None]).to(torch.int8)
    return rows, (absmax / 127.0).to(_scale_dtype(weight.dtype))


def _int8_kernel(rows: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten._weight_int8pack_mm(rows, q, scale)


def _unpack_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.to(scale.dtype) * scale[:, None]


def _pack_int4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n, k = weight.shape
    groups = weight.float().reshape(n, k // GROUP, GROUP)
    low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    scale = ((high - low) / 15).clamp(min=1e-8)
    q = torch.clamp(torch.round((groups - low) / scale), 0, 15).to(torch.int32).reshape(n, k)
    zero = low + 8 * scale  # the kernel computes (q - 8) * scale + zero
    scale_zero = torch.cat([scale, zero], -1).transpose(0, 1).contiguous()
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 2)
    return packed, scale_zero.to(_scale_dtype(weight.dtype))


def _int4_kernel(rows: torch.Tensor, q: torch.Tensor, scale_zero: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten._weight_int4pack_mm_for_cpu(rows, q, GROUP, scale_zero)


def _unpack_int4(q: torch.Tensor, scale_zero: torch.Tensor) -> torch.Tensor:
    """torch's packed int4 to the scales' dtype, written K-major and returned as an [N, K]
    view for F.linear (3584x2048 in bf16: 3.1 ms against int8's 1.4)."""
    n, k = q.shape[0], q.shape[1] * 2
    groups = scale_zero.shape[0]
    blocks = q.view(n // _BLOCK_N, k, _BLOCK_N // 2)  # low nibble: output d, high: d + 32
    nibbles = torch.cat([blocks & 15, blocks >> 4], dim=2).permute(1, 0, 2)
    nibbles = nibbles.reshape(groups, k // groups, n).to(scale_zero.dtype)
    scale = scale_zero[..., 0].contiguous()  # strided scales make addcmul 5x slower
    offset = scale_zero[..., 1] - 8 * scale
    weight = torch.addcmul(offset.unsqueeze(1), nibbles, scale.unsqueeze(1))
    return weight.view(k, n).t()


PACKINGS: dict[str, Packing] = {
    # decode_rows: up to where the kernel beats unpack + bf16 GEMM (3584x2048 on the 2-core
    # box, ms at 8/16/24/32/48 rows: int8 0.7/1.4/2.0/2.7/4.5 against 1.8/2.1/2.0/2.0/2.5;
    # int4 0.7/1.3/2.0/2.5/3.8 against 4.2/4.2/4.2/4.5/4.2); the rows an expert gets of a
    # prompt often fall below it
    "int8": Packing("int8", _pack_int8, _int8_kernel, _unpack_int8, 8, lambda n, k: True),
    "int4": Packing(
        "int4",
        _pack_int4,
        _int4_kernel,
        _unpack_int4,
        40,
        lambda n, k: n % _BLOCK_N == 0 and k % GROUP == 0,
    ),
}


def _scale_dtype(dtype: torch.dtype) -> torch.dtype:
    """Scales in the compute dtype: `dtype` where it is bf16 or fp32 (what a level loads),
    else bf16."""
    return dtype if dtype in (torch.float32, torch.bfloat16) else torch.bfloat16


@cache
def kernel_fails(name: str, dtype: torch.dtype = torch.bfloat16) -> str:
    """'' when this torch's CPU kernel for packing `name` runs with `dtype` activations and
    agrees with unpacking (for int4: the packed layout ``_unpack_int4`` reads), else why not
    (checked once, on a small weight)."""
    packing = PACKINGS[name]
    try:
        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(128, 64, generator=generator).to(dtype)
        q, scales = packing.pack(weight)
        unpacked = packing.unpack(q, scales).float()
        rows = torch.randn(2, 64, generator=generator).to(dtype)
        product = packing.kernel(rows, q, scales).float()
    except Exception as exc:  # a torch without this CPU kernel, or not for this dtype
        return f"{type(exc).__name__}: {str(exc)[:120]}"
    flat = weight.float().flatten()
    close = nn.functional.cosine_similarity(unpacked.flatten(), flat, dim=0) > 0.99
    if not close or not torch.allclose(product, rows.float() @ unpacked.t(), rtol=0.02, atol=0.1):
        return f"this torch packs {name} weights in a layout lfmui does not read"
    return ""


def int4_fails() -> str:
    """kernel_fails for int4 with bf16 activations (the int4-bf16 level)."""
    return kernel_fails("int4", torch.bfloat16)


def weight_mm(packing: Packing, rows: torch.Tensor, q: torch.Tensor, scales: torch.Tensor):
    """rows [M, K] (in the scales' dtype) times a packed [N, K] weight: [M, N]."""
    if rows.shape[0] <= packing.decode_rows:
        return packing.kernel(rows, q, scales)
    return nn.functional.linear(rows, packing.unpack(q, scales))


class QuantLinear(nn.Module):
    """A Linear whose weight is packed (``PACKINGS``), computed in the Linear's dtype (bf16 or
    fp32: the level's)."""

    def __init__(self, linear: nn.Linear, packing: Packing) -> None:
        super().__init__()
        self.packing = packing
        weight_q, scales = packing.pack(linear.weight.detach())
        self.register_buffer("weight_q", weight_q)
        self.register_buffer("scale", scales)
        self.compute_dtype = scales.dtype
        bias = linear.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(scales.dtype), False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(self.compute_dtype)
        out = weight_mm(self.packing, rows, self.weight_q, self.scale)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, {self.packing.name}, {self.compute_dtype}"


class RoutedExperts(nn.Module):
    """A drop-in for transformers' Lfm2MoeExperts: routing as it was, each chosen expert's
    two products (``_expert``) from weights packed while loading. A decode step takes the
    fewest ops; a prompt walks the experts its tokens hit. The expert ids go to the host
    (``tolist``): on a CPU that is a read, not a device sync."""

    compute_dtype: torch.dtype

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        x = hidden_states.to(self.compute_dtype)
        weights = top_k_weights.to(self.compute_dtype)
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
        raise NotImplementedError


class QuantExperts(RoutedExperts):
    """Experts packed like QuantLinear (``PACKINGS``), computed in `dtype` (the loaded
    model's): each chosen expert reads its own packed weights, nothing gathered or copied."""

    def __init__(
        self, packing: Packing, act_fn: object, weights: dict[str, tuple], dtype: torch.dtype
    ) -> None:
        super().__init__()
        self.packing = packing
        self.act_fn = act_fn
        self.compute_dtype = _scale_dtype(dtype)
        for name, (packed, scale, _shape) in weights.items():
            self.register_buffer(f"{name}_q", packed)
            self.register_buffer(f"{name}_scale", scale.to(self.compute_dtype))

    def _expert(self, rows: torch.Tensor, expert: int) -> torch.Tensor:
        gate_up = weight_mm(
            self.packing, rows, self.gate_up_proj_q[expert], self.gate_up_proj_scale[expert]
        )
        gate, up = gate_up.chunk(2, dim=-1)
        return weight_mm(
            self.packing,
            self.act_fn(gate) * up,
            self.down_proj_q[expert],
            self.down_proj_scale[expert],
        )


def dynamic_int8(weight: torch.Tensor) -> Any:
    """An [N, K] weight as torch's dynamic int8 Linear keeps it: int8 per output channel
    (symmetric, absmax / 127), prepacked for the quantized engine (fbgemm or oneDNN on x86,
    QNNPACK on ARM); each call quantizes its fp32 rows on the fly. The rows are rounded here,
    from one fp32 copy (torch.quantize_per_channel took 1.4x as long on an expert's weight)."""
    import warnings

    full = weight.float()
    absmax = full.abs().amax(dim=1).clamp(min=1e-8)
    rows = torch.round(full.mul_((127.0 / absmax)[:, None])).to(torch.int8)
    del full
    zeros = torch.zeros(weight.shape[0], dtype=torch.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensors are deprecated upstream, still
        # the fastest int8 GEMV on x86 in this torch (see quant.AUTO_ORDER's figures)
        q = torch._make_per_channel_quantized_tensor(rows, (absmax / 127).double(), zeros, 0)
        return torch.ops.quantized.linear_prepack(q, None)


def dynamic_bytes(rows: int, columns: int, bias: bool = False) -> int:
    """What one ``dynamic_int8`` weight holds, for heap.weight_bytes (which cannot see into a
    prepacked weight without unpacking it): int8 bytes, a scale and a zero point per row, and
    an fp32 bias where there is one."""
    return rows * (columns + 16) + (4 * rows if bias else 0)


class DynamicExperts(RoutedExperts):
    """Experts as dynamic int8 weights (``dynamic_int8``, one per expert and product),
    computed in fp32: int8-cpu's experts, the fast MoE path on CPUs without bf16."""

    compute_dtype = torch.float32

    def __init__(self, act_fn: object, weights: dict[str, list[Any]], shapes: dict) -> None:
        super().__init__()
        self.act_fn = act_fn
        self.packed = weights  # name -> one prepacked weight per expert
        self.held_bytes = sum(len(weights[name]) * dynamic_bytes(*shapes[name]) for name in shapes)

    def _expert(self, rows: torch.Tensor, expert: int) -> torch.Tensor:
        linear = torch.ops.quantized.linear_dynamic
        gate, up = linear(rows, self.packed["gate_up_proj"][expert]).chunk(2, dim=-1)
        return linear(self.act_fn(gate) * up, self.packed["down_proj"][expert])


def pack_experts_dynamic(weights: torch.Tensor) -> tuple[torch.Tensor, list[Any]]:
    """[E, N, K] weights -> (an empty stand-in for the parameter, one prepacked weight per
    expert), a few experts at a time (``each_expert``)."""
    return torch.empty(0, dtype=torch.int8), each_expert(dynamic_int8, weights)


def pack_experts(weights: torch.Tensor, packing: Packing) -> tuple[torch.Tensor, torch.Tensor]:
    """[E, N, K] weights -> stacked (packed, scales), a few experts at a time
    (``each_expert``): no full-precision copy of more than one expert per core exists."""
    packed, scales = zip(*each_expert(packing.pack, weights), strict=True)
    return torch.stack(packed), torch.stack(scales)


def each_expert(pack: Callable[[torch.Tensor], Any], weights: torch.Tensor) -> list[Any]:
    """`pack` of each expert's [N, K] weight, in order, on every core: a load's thread computes
    with a team of one (lfmui/__init__.py says why) and torch's kernels let go of the GIL, so
    one thread a core packs an expert each (LFM2-8B-A1B's 1,536 expert weights are most of
    its load)."""
    import lfmui

    workers = min(lfmui.usable_cores(), len(weights))
    if workers <= 1:
        return [pack(expert) for expert in weights]
    with packing_threads(workers) as pool:
        return list(pool.map(pack, weights))


def packing_threads(workers: int) -> Any:
    """The threads that pack weights while a model loads (``each_expert``, and int8-cpu's
    Linear layers in ``quant.moe``), named ``lfmui-pack``."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(workers, thread_name_prefix="lfmui-pack")


def quantize(model: nn.Module, packing: Packing, converts: Callable[[str], bool]) -> int:
    """Swap the Linear layers whose names `converts` accepts (``quant.should_quantize``) and
    the LM head for QuantLinear (int8 where `packing` cannot take a layer's shape); returns
    how many. Runs after a bf16 load: each bf16 weight goes as its packed copy comes."""
    swapped = 0
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if type(child) is nn.Linear and (full == "lm_head" or converts(full)):
                fits = packing.fits(child.out_features, child.in_features)
                setattr(parent, name, QuantLinear(child, packing if fits else PACKINGS["int8"]))
                swapped += 1
    return swapped


# ---- LFM2's short convolution at a decode step --------------------------------------------------
# transformers reads one new token through its short convolutions with F.conv1d over the cached
# window; on a CPU that is a oneDNN call per conv layer, 180 us under AVX2 (1.7 of 24 ms a token
# on VL-450M). Three taps times the window, summed, is the same product in a few small ops.
CONV_MODULES = (
    "transformers.models.lfm2.modeling_lfm2",
    "transformers.models.lfm2_moe.modeling_lfm2_moe",
)


def conv_step(
    hidden_states: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """One new token ([B, C, 1]) through a depthwise causal convolution whose earlier inputs are
    `conv_state` ([B, C, L], updated in place); `weight` is [C, taps]."""
    window = torch.cat([conv_state, hidden_states], dim=-1).to(weight.dtype)
    conv_state.copy_(window[:, :, -conv_state.shape[-1] :])
    out = (window[:, :, -weight.shape[-1] :] * weight).sum(-1, keepdim=True)
    if bias is not None:
        out = out + bias[:, None]
    return out.to(hidden_states.dtype)


def use_conv_step() -> None:
    """LFM2's decode steps on a CPU read their short convolutions through ``conv_step`` (once
    per process; a GPU tensor, several tokens or an activation keep transformers' own)."""
    import importlib

    for name in CONV_MODULES:
        module = importlib.import_module(name)
        original = module.causal_conv1d_update
        if hasattr(original, "lfmui_original"):
            continue

        def stepping(hidden_states, conv_state, weight, bias=None, activation=None, _own=original):
            if activation is not None or hidden_states.shape[-1] != 1 or hidden_states.is_cuda:
                return _own(hidden_states, conv_state, weight, bias, activation)
            return conv_step(hidden_states, conv_state, weight, bias)

        stepping.lfmui_original = original  # type: ignore[attr-defined]
        module.causal_conv1d_update = stepping
