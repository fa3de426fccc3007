"""LFM2-MoE's expert weights (two 3-D parameters a layer, which bitsandbytes would leave in bf16)
quantized while loading: ``bnb_config`` and ``experts_config`` are quantization configs whose
quantizers also claim the experts; ``QuantizedExperts`` computes with them (no host sync in a
decode step). How and why: docs/quantization.md#moe-experts-quantized-while-loading-lfmuiquantmoe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from lfmui import heap

Kind = Literal["int8", "nf4"]
BLOCKSIZE = 64
EXPERT_WEIGHTS = ("gate_up_proj", "down_proj")
_METHOD = {"int8": "lfmui_bnb_8bit", "nf4": "lfmui_bnb_4bit"}
# the CPU levels' experts: cpu_weights.PACKINGS, and dynamic int8 (cpu_weights.DynamicExperts)
_CPU_EXPERTS = {
    "int8": "lfmui_int8_experts",
    "int4": "lfmui_int4_experts",
    "dynamic-int8": "lfmui_dynamic_int8_experts",
}


class QuantizedExperts(nn.Module):
    """A drop-in for transformers' Lfm2MoeExperts holding quantized expert weights."""

    def __init__(
        self, kind: Kind, act_fn: Any, dtype: torch.dtype, weights: dict[str, tuple]
    ) -> None:
        super().__init__()
        self.kind = kind
        self.act_fn = act_fn
        self.compute_dtype = dtype
        self.shapes: dict[str, tuple[int, int]] = {}
        for name, (packed, scale, shape) in weights.items():
            self.register_buffer(f"{name}_q", packed)
            self.register_buffer(f"{name}_scale", scale)
            self.shapes[name] = shape
        self.num_experts = packed.shape[0]

    def weight(self, name: str, experts: torch.Tensor | int) -> torch.Tensor:
        """The dequantized weights of `experts` (an index or a 1-D index tensor): [.., N, K]."""
        packed = getattr(self, f"{name}_q")[experts]
        scale = getattr(self, f"{name}_scale")[experts]
        if self.kind == "int8":
            return packed.to(self.compute_dtype) * scale.unsqueeze(-1)
        return _dequantize_nf4(packed, scale, (*packed.shape[:-1], *self.shapes[name]), self)

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        tokens, top_k = top_k_index.shape
        if tokens * top_k <= self.num_experts:  # decided on shapes alone: no sync
            return self._gathered(hidden_states, top_k_index, top_k_weights)
        return self._looped(hidden_states, top_k_index, top_k_weights)

    def _matvec(self, name: str, experts: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Row s of the result is expert experts[s]'s weight times x[s]."""
        if self.kind == "int8":  # the row scale applies after the product: no scaled copy
            packed = getattr(self, f"{name}_q")[experts].to(x.dtype)
            product = torch.bmm(packed, x.unsqueeze(-1)).squeeze(-1)
            return product * getattr(self, f"{name}_scale")[experts]
        return torch.bmm(self.weight(name, experts), x.unsqueeze(-1)).squeeze(-1)

    def _gathered(self, hidden_states, top_k_index, top_k_weights) -> torch.Tensor:
        tokens, top_k = top_k_index.shape
        experts = top_k_index.reshape(-1)
        x = hidden_states.repeat_interleave(top_k, dim=0)
        gate, up = self._matvec("gate_up_proj", experts, x).chunk(2, dim=-1)
        out = self._matvec("down_proj", experts, self.act_fn(gate) * up)
        out = out * top_k_weights.reshape(-1, 1)
        return out.view(tokens, top_k, -1).sum(dim=1).to(hidden_states.dtype)

    def _looped(self, hidden_states, top_k_index, top_k_weights) -> torch.Tensor:
        final = torch.zeros_like(hidden_states)
        mask = nn.functional.one_hot(top_k_index, num_classes=self.num_experts).permute(2, 1, 0)
        for expert in mask.sum(dim=(1, 2)).nonzero().flatten().tolist():
            top_k_pos, token_idx = torch.where(mask[expert])
            state = hidden_states[token_idx].to(self.compute_dtype)
            gate, up = nn.functional.linear(state, self.weight("gate_up_proj", expert)).chunk(2, -1)
            out = nn.functional.linear(self.act_fn(gate) * up, self.weight("down_proj", expert))
            out = out * top_k_weights[token_idx, top_k_pos, None]
            final.index_add_(0, token_idx, out.to(final.dtype))
        return final


def _dequantize_nf4(packed, absmax, shape, module) -> torch.Tensor:
    from bitsandbytes.functional import QuantState, dequantize_4bit

    state = QuantState(
        absmax=absmax.reshape(-1),
        shape=torch.Size(shape),
        blocksize=BLOCKSIZE,
        quant_type="nf4",
        dtype=module.compute_dtype,
    )
    return dequantize_4bit(packed.reshape(-1, 1), state)


def quantize(weights: torch.Tensor, kind: Kind) -> tuple[torch.Tensor, torch.Tensor]:
    """[E, N, K] weights -> (packed, scales), one expert at a time so that no full-precision
    copy of more than one expert exists."""
    packed, scales = [], []
    for expert in weights:
        if kind == "int8":
            absmax = expert.float().abs().amax(dim=1).clamp(min=1e-12)
            rows = torch.round(expert.float() * (127.0 / absmax).unsqueeze(1)).to(torch.int8)
            packed.append(rows)
            scales.append((absmax / 127.0).to(weights.dtype))
        else:
            from bitsandbytes.functional import quantize_4bit

            blocks, state = quantize_4bit(expert, blocksize=BLOCKSIZE, quant_type="nf4")
            packed.append(blocks.view(-1))
            scales.append(state.absmax)
    return torch.stack(packed), torch.stack(scales)


def is_expert_weight(model: nn.Module, param_name: str) -> bool:
    """Whether `param_name` is one of the 3-D expert weights of a mixture-of-experts layer."""
    module_name, _, attribute = param_name.rpartition(".")
    if attribute not in EXPERT_WEIGHTS:
        return False
    try:
        module = model.get_submodule(module_name)
    except AttributeError:
        return False
    weights = getattr(module, attribute, None)
    return isinstance(weights, torch.Tensor) and weights.dim() == 3


def expert_modules(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, experts) for every experts module still holding 3-D weights."""
    found = []
    for parent in model.modules():
        child = getattr(parent, "experts", None)
        weights = getattr(child, "gate_up_proj", None) if isinstance(child, nn.Module) else None
        if isinstance(weights, torch.Tensor) and weights.dim() == 3:
            found.append((parent, "experts", child))
    return found


# ---- transformers' loader hook -----------------------------------------------------------------


def bnb_config(kind: Kind, skip_modules: list[str]) -> Any:
    """A BitsAndBytesConfig (int8: LLM.int8 without the outlier split; nf4) whose quantizer also
    quantizes 3-D expert weights while loading."""
    from transformers import BitsAndBytesConfig

    _register()
    if kind == "int8":
        # threshold 0: the outlier split checks every activation on the host (a sync per
        # layer: 66 per token on the 8B) and is meant for models past 6.7B dense parameters.
        config = BitsAndBytesConfig(
            load_in_8bit=True, llm_int8_threshold=0.0, llm_int8_skip_modules=skip_modules
        )
    else:
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=False,
            llm_int8_skip_modules=skip_modules,
        )
    config.quant_method = _METHOD[kind]
    return config


Packer = Any  # [E, N, K] weights -> (packed, scales)


def _quantize_op(pack: Packer, linear_op: Any) -> Any:
    from transformers.core_model_loading import ConversionOps

    class QuantizeExperts(ConversionOps):
        """The loader's quantize step: expert weights here, the rest to bitsandbytes' own."""

        def convert(self, input_dict: dict[str, Any], model=None, **kwargs) -> dict[str, Any]:
            return _convert(pack, linear_op, input_dict, model, kwargs)

    return QuantizeExperts()


def _convert(
    pack: Packer, linear_op: Any, input_dict: dict, model: nn.Module, kwargs: dict
) -> dict:
    result = {}
    for name, value in input_dict.items():
        value = value[0] if isinstance(value, list) else value
        if not is_expert_weight(model, name):
            result.update(linear_op.convert({name: value}, model=model, **kwargs))
            continue
        module_name, _, attribute = name.rpartition(".")
        module = model.get_submodule(module_name)
        with torch.no_grad():
            packed, scale = pack(value)
        # kept off the module's buffers: the loader re-initializes buffers it did not load
        module.lfmui_quantized = {
            **getattr(module, "lfmui_quantized", {}),
            attribute: (scale, tuple(value.shape[1:]), value.dtype),
        }
        result[name] = packed  # stands in for the bf16 weight until _swap_experts
        del value
        heap.drop_checkpoint_pages()  # this layer's bf16 pages have been read: let them go
        heap.trim_heap()  # and its full-precision copies, freed, go back to the system
    return result


def _swap_experts(model: nn.Module, kind: str, factory: Any = None) -> int:
    """After loading: each experts module holding packed weights becomes a QuantizedExperts
    (or what `factory(act_fn, dtype, weights)` makes)."""
    factory = factory or (
        lambda act_fn, dtype, weights: QuantizedExperts(kind, act_fn, dtype, weights)
    )
    count = 0
    for parent in list(model.modules()):
        experts = getattr(parent, "experts", None)
        quantized = getattr(experts, "lfmui_quantized", None)
        if not quantized:
            continue
        weights = {
            name: (getattr(experts, name).data, scale, shape)
            for name, (scale, shape, _) in quantized.items()
        }
        dtype = quantized["gate_up_proj"][2]
        parent.experts = factory(experts.act_fn, dtype, weights)
        count += 1
    return count


def _quantizer_class(base: type, kind: Kind) -> type:
    class ExpertsQuantizer(base):
        """transformers' bitsandbytes quantizer, claiming the 3-D expert weights too."""

        def preprocess_model(self, model, **kwargs):
            from transformers.utils.quantization_config import QuantizationMethod

            super().preprocess_model(model, **kwargs)
            # transformers' guards for bitsandbytes models (.to(), .cuda()) key on this name
            model.quantization_method = QuantizationMethod.BITS_AND_BYTES

        def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
            return is_expert_weight(model, param_name) or super().param_needs_quantization(
                model, param_name, **kwargs
            )

        def get_quantize_ops(self):
            return _quantize_op(lambda weights: quantize(weights, kind), super().get_quantize_ops())

        def _process_model_after_weight_loading(self, model, **kwargs):
            _swap_experts(model, kind)
            return super()._process_model_after_weight_loading(model, **kwargs)

    ExpertsQuantizer.__name__ = f"Experts{base.__name__}"
    return ExpertsQuantizer


def experts_config(packing: str, converts: Callable[[str], bool] | None = None) -> Any:
    """A quantization config that packs the 3-D expert weights while loading, for the CPU
    levels: ``cpu_weights.PACKINGS[packing]`` (int8-bf16, int4-bf16) or "dynamic-int8"
    (int8-cpu: ``cpu_weights.DynamicExperts``, and the Linear layers `converts` accepts)."""
    from transformers.utils.quantization_config import QuantizationConfigMixin

    _register()

    class ExpertsConfig(QuantizationConfigMixin):
        def __init__(self) -> None:
            self.quant_method = _CPU_EXPERTS[packing]
            # dynamic-int8: the Linear layers whose names this accepts (quant.should_quantize)
            # are packed while loading too
            self.converts = converts

    return ExpertsConfig()


def _experts_only_quantizer(packing_name: str) -> type:
    from transformers.quantizers.base import HfQuantizer

    from lfmui.quant import cpu_weights

    if packing_name in cpu_weights.PACKINGS:
        packing = cpu_weights.PACKINGS[packing_name]

        def pack(weights: torch.Tensor) -> tuple:
            return cpu_weights.pack_experts(weights, packing)

        def make(act_fn: Any, weights: dict, model: nn.Module) -> nn.Module:
            return cpu_weights.QuantExperts(packing, act_fn, weights, model.dtype)

        linear_op = None
    else:  # dynamic-int8: one prepacked weight per expert stands where the scales do
        pack = cpu_weights.pack_experts_dynamic
        linear_op = _DynamicLinearOp()  # the Linear layers are packed as they load too

        def make(act_fn: Any, weights: dict, model: nn.Module) -> nn.Module:
            packed = {name: each for name, (_, each, _) in weights.items()}
            shapes = {name: shape for name, (_, _, shape) in weights.items()}
            return cpu_weights.DynamicExperts(act_fn, packed, shapes)

    class ExpertsOnlyQuantizer(HfQuantizer):
        """Claims the 3-D expert weights (and, for dynamic int8, the Linear weights that
        quant.should_quantize takes); the rest loads as it is."""

        def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
            converts = getattr(self.quantization_config, "converts", None)
            return is_expert_weight(model, param_name) or (
                linear_op is not None
                and converts is not None
                and _packable_linear(model, param_name, converts)
            )

        def _process_model_before_weight_loading(self, model, **kwargs):
            return model

        def _process_model_after_weight_loading(self, model, **kwargs):
            _swap_experts(model, packing_name, lambda act_fn, _dtype, w: make(act_fn, w, model))
            _swap_dynamic_linears(model)
            if linear_op is not None:
                linear_op.close()
            return model

        def get_quantize_ops(self):
            return _quantize_op(pack, linear_op)

        def is_serializable(self, **kwargs) -> bool:
            return False

        @property
        def is_trainable(self) -> bool:
            return False

    ExpertsOnlyQuantizer.__name__ = f"{packing_name.title().replace('-', '')}ExpertsQuantizer"
    return ExpertsOnlyQuantizer


def _packable_linear(model: nn.Module, param_name: str, converts: Callable[[str], bool]) -> bool:
    """Whether `param_name` is the weight of a bias-free nn.Linear whose name `converts`
    accepts: dynamic int8 packs it while loading, so that no full-precision copy of the whole
    model's Linears is ever held (the LM head, tied to the embeddings and never read from the
    checkpoint, stays to the level's post-load step)."""
    module_name, _, attribute = param_name.rpartition(".")
    if attribute != "weight" or not converts(module_name):
        return False
    try:
        module = model.get_submodule(module_name)
    except AttributeError:
        return False
    return type(module) is nn.Linear and module.bias is None


class _DynamicLinearOp:
    """The loader's step for a Linear weight claimed by ``_packable_linear``: packed as
    torch's dynamic int8 keeps it (cpu_weights.dynamic_int8) on the other cores while the
    loader reads on, an empty stand-in loaded. At most one weight per core waits in full
    precision, so the whole model's Linears are never held unpacked; ``_swap_dynamic_linears``
    collects the packed weights."""

    def __init__(self) -> None:
        self._pool: Any = None
        self._room: Any = None

    def convert(self, input_dict: dict[str, Any], model=None, **kwargs) -> dict[str, Any]:
        result = {}
        for name, value in input_dict.items():
            module_name, _, _ = name.rpartition(".")
            model.get_submodule(module_name).lfmui_dynamic = self._submit(value)
            result[name] = torch.empty(0, dtype=torch.int8)
        return result

    def _submit(self, weight: torch.Tensor) -> Any:
        import threading

        import lfmui
        from lfmui.quant import cpu_weights

        if self._pool is None:
            cores = lfmui.usable_cores()
            self._pool = cpu_weights.packing_threads(cores)
            self._room = threading.BoundedSemaphore(cores)
        self._room.acquire()  # the loader waits while every core packs a weight
        packed = self._pool.submit(_pack_and_trim, weight)
        packed.add_done_callback(lambda _: self._room.release())
        return packed

    def close(self) -> None:
        """After a load: the packing threads go (each load starts its own)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _pack_and_trim(weight: torch.Tensor) -> Any:
    """cpu_weights.dynamic_int8 on a packing thread, whose glibc arena then hands its freed
    full-precision copy back to the system (heap.trim_heap)."""
    from lfmui.quant import cpu_weights

    packed = cpu_weights.dynamic_int8(weight)
    heap.trim_heap()
    return packed


def _swap_dynamic_linears(model: nn.Module) -> int:
    """After loading: each Linear packed by ``_DynamicLinearOp`` becomes torch's dynamic int8
    Linear holding that packed weight (what quantize_dynamic would have made of it)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    from lfmui.quant import cpu_weights

    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            packing = getattr(child, "lfmui_dynamic", None)
            if packing is None:
                continue
            # made 1x1 and then given its shape: torch's constructor prepacks a zero weight of
            # the full shape, which took 7 s of VL-1.6B's load
            swapped = DynamicLinear(1, 1, bias_=False)
            swapped.in_features, swapped.out_features = child.in_features, child.out_features
            swapped._packed_params._packed_params = packing.result()
            swapped.held_bytes = cpu_weights.dynamic_bytes(child.out_features, child.in_features)
            setattr(parent, name, swapped)
            count += 1
    return count


def _register() -> None:
    from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING, register_quantizer
    from transformers.quantizers.quantizer_bnb_4bit import Bnb4BitHfQuantizer
    from transformers.quantizers.quantizer_bnb_8bit import Bnb8BitHfQuantizer

    for kind, base in (("int8", Bnb8BitHfQuantizer), ("nf4", Bnb4BitHfQuantizer)):
        if _METHOD[kind] not in AUTO_QUANTIZER_MAPPING:
            register_quantizer(_METHOD[kind])(_quantizer_class(base, kind))
    for packing, method in _CPU_EXPERTS.items():
        if method not in AUTO_QUANTIZER_MAPPING:
            register_quantizer(method)(_experts_only_quantizer(packing))
