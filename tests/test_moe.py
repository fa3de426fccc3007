"""MoE experts quantized while loading (lfmui.quant.moe), on LFM2-8B-A1B's layout at tiny
widths: the load's peak, decode and prefill against full precision, the CPU packings."""

from __future__ import annotations

import threading

import pytest
import torch

from lfmui import offline, quant
from lfmui.bench import meters
from lfmui.manager import ModelManager
from lfmui.quant import moe

BNB_LEVELS = ["int8", "nf4"]


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0)


@pytest.fixture(scope="module")
def replica(tiny_paths):
    """LFM2-8B-A1B's layout (24 layers, 32 experts, top-4) at tiny widths, in full precision."""
    from transformers import AutoModelForCausalLM

    path = offline.ensure_checkpoint("lfm2-moe-replica")
    return path, AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.mark.parametrize("level", BNB_LEVELS)
def test_moe_experts_are_quantized_while_loading(replica, level):
    """The load never holds the experts in full precision: its peak stays within 1.3x of what
    the quantized model keeps (quantizing after a bf16 load peaked at the bf16 size, 3.5x)."""
    manager = ModelManager()
    manager.catalog.show_all()
    with meters.tensor_peak("cpu") as peak:
        status = manager.load("lfm2-moe-replica", level)
    model = manager.current().model
    config = model.config
    experts = [m for m in model.modules() if isinstance(m, moe.QuantizedExperts)]
    assert len(experts) == config.num_hidden_layers - config.num_dense_layers
    assert moe.expert_modules(model) == []  # no full-precision 3-D expert weights left
    assert peak.bytes <= 1.3 * status["resident_bytes"]
    full = moe.expert_modules(replica[1])
    bf16_experts = 2 * sum(m.gate_up_proj.numel() + m.down_proj.numel() for _, _, m in full)
    assert peak.bytes < bf16_experts  # the bf16 experts alone would exceed it
    manager.unload()


@pytest.mark.parametrize("level", BNB_LEVELS)
def test_decode_and_prefill_paths_agree_with_full_precision(replica, level):
    """The sync-free gathered path (decode) and the per-expert loop (prefill) compute the same
    thing, and both stay close to the full-precision experts."""
    from transformers import AutoModelForCausalLM

    path, reference = replica
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, **quant.resolve(level).kwargs()
    )
    experts = model.model.layers[3].feed_forward.experts
    full = reference.model.layers[3].feed_forward.experts
    assert isinstance(experts, moe.QuantizedExperts)
    torch.manual_seed(0)
    x = torch.randn(6, model.config.hidden_size)
    top_k = torch.stack([torch.randperm(32)[:4] for _ in range(6)])
    weights = torch.rand(6, 4).softmax(-1)
    looped = experts._looped(x, top_k, weights)
    one_by_one = [experts(x[i, None], top_k[i, None], weights[i, None]) for i in range(6)]
    gathered = torch.cat(one_by_one)
    torch.testing.assert_close(gathered, looped, rtol=1e-4, atol=1e-5)
    assert _cosine(looped, full(x, top_k, weights)) >= (0.999 if level == "int8" else 0.97)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("packing", ["int8", "int4"])
def test_packed_experts_are_quantized_while_loading_and_agree_with_full_precision(
    replica, packing, dtype
):
    """The CPU levels' experts, computing in bf16 or fp32 (the quantizer that claims only the
    3-D expert weights): packed while loading, so the load peaks near what it keeps and below
    the bf16 experts alone; a decode step (one token, the kernel per chosen expert) and a prompt
    (experts by the tokens they got) compute the same thing, close to the full-precision
    experts."""
    from transformers import AutoModelForCausalLM

    from lfmui.quant.cpu_weights import QuantExperts

    path, reference = replica
    with meters.tensor_peak("cpu") as peak:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, quantization_config=moe.experts_config(packing)
        )
    config = model.config
    experts = [m for m in model.modules() if isinstance(m, QuantExperts)]
    assert len(experts) == config.num_hidden_layers - config.num_dense_layers
    assert {(m.packing.name, m.compute_dtype) for m in experts} == {(packing, dtype)}
    assert moe.expert_modules(model) == []
    assert all(type(m) is torch.nn.Linear for m in [model.lm_head])  # Linears load as they are
    kept = sum(b.numel() * b.element_size() for b in model.buffers())
    kept += sum(p.numel() * p.element_size() for p in model.parameters())
    assert peak.bytes <= 1.3 * kept
    full = moe.expert_modules(reference)
    bf16_experts = 2 * sum(m.gate_up_proj.numel() + m.down_proj.numel() for _, _, m in full)
    assert peak.bytes < bf16_experts

    layer = model.model.layers[3].feed_forward.experts
    torch.manual_seed(0)
    x = torch.randn(12, config.hidden_size)
    top_k = torch.stack([torch.randperm(32)[:4] for _ in range(12)])
    weights = torch.rand(12, 4).softmax(-1)
    prompt = layer(x, top_k, weights)
    steps = torch.cat([layer(x[i, None], top_k[i, None], weights[i, None]) for i in range(12)])
    torch.testing.assert_close(steps, prompt, rtol=0.03, atol=0.03)
    expected = reference.model.layers[3].feed_forward.experts(x, top_k, weights)
    floor = 0.999 if packing == "int8" else 0.98  # one 4-bit layer (nf4's: 0.97); the
    # model's next-token logits keep 0.99 (test_cpu_levels_keep_the_next_token_logits)
    assert _cosine(prompt, expected) >= floor
    assert _cosine(steps, expected) >= floor


def test_int8_cpu_packs_the_linear_layers_while_loading(replica):
    """int8-cpu's quantizer packs each Linear it converts as the loader reads it, as it does
    the experts, so the whole model's Linears never sit in fp32 at once (the 8B's load peaked
    at 13.3 GiB of heap with them packed after the load, for 9.3 kept): every converted Linear
    comes out as torch's dynamic int8 Linear, the loader's own, and the level's outputs stay
    those of the full-precision model."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from transformers import AutoModelForCausalLM

    path, reference = replica
    packs = moe.experts_config("dynamic-int8", quant.should_quantize)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, quantization_config=packs
    )
    converted = [n for n, m in reference.named_modules() if type(m) is torch.nn.Linear]
    converted = [n for n in converted if quant.should_quantize(n) and n != "lm_head"]
    assert converted  # attention, conv and dense FFN projections
    for name in converted:
        packed, linear = model.get_submodule(name), reference.get_submodule(name)
        assert type(packed) is DynamicLinear, name
        shape = (linear.out_features, linear.in_features)
        assert (packed.out_features, packed.in_features) == shape
        assert packed.weight().shape == shape  # its own packed weight, not the 1x1 it was made
    # packed on the other cores while the loader read on; those threads end with the load
    assert not [t for t in threading.enumerate() if t.name.startswith("lfmui-pack")]
    assert type(model.lm_head) is torch.nn.Linear  # tied: the level's post-load step takes it
    assert not [m for m in model.modules() if hasattr(m, "lfmui_dynamic")]
    ids = torch.tensor([[1, 42, 17, 99, 3, 250, 8]])
    with torch.no_grad():
        got, expected = model(ids).logits[0, -1], reference(ids).logits[0, -1]
    assert _cosine(got, expected) >= 0.99


def test_int8_cpu_counts_its_prepacked_weights_without_unpacking_them(replica, monkeypatch):
    """The resident size of an int8-cpu model (heap.weight_bytes, shown in the Models tab)
    counts each prepacked Linear from the count set when it was packed, not by unpacking it
    (unpacking the 8B's took 9 s of its load), and the count is what the weight holds: int8
    bytes, a scale and a zero point a row, the bias."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from transformers import AutoModelForCausalLM

    from lfmui import heap

    path, _ = replica
    level = quant.QUANTIZATIONS["int8-cpu"]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, **level.kwargs())
    model = level.post_load(model)
    linears = [m for m in model.modules() if type(m) is DynamicLinear]
    assert len(linears) > 1 and type(model.lm_head) is DynamicLinear  # loader's and post-load's
    unpacked = 0
    for linear in linears:
        weight, bias = linear._weight_bias()
        rows = weight.shape[0]
        held = weight.numel() + 16 * rows + (4 * rows if bias is not None else 0)
        assert linear.held_bytes == held
        unpacked += held
    monkeypatch.setattr(DynamicLinear, "_weight_bias", lambda self: pytest.fail("unpacked"))
    others = {id(t): t for t in (*model.parameters(), *model.buffers())}.values()
    experts = sum(getattr(m, "held_bytes", 0) for m in model.modules() if m not in linears)
    assert experts > 0
    expected = unpacked + experts + sum(t.numel() * t.element_size() for t in others)
    assert heap.weight_bytes(model) == expected
