"""MoE expert quantization on CPU with the tiny offline MoE (bitsandbytes' functional API)."""

from __future__ import annotations

import copy

import pytest
import torch

from lfmui import moe_quant, offline, quant


@pytest.fixture(scope="module")
def moe_bf16(tiny_paths):
    from transformers import AutoModelForCausalLM

    path = offline.ensure_checkpoint("lfm2-moe-tiny")
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()


def _expert_bytes(model) -> int:
    total = 0
    for _, _, experts in moe_quant.expert_modules(model):
        total += sum(t.numel() * t.element_size() for t in experts.parameters())
    for module in model.modules():
        if isinstance(module, moe_quant.QuantizedExperts):
            total += sum(t.numel() * t.element_size() for t in module.buffers())
    return total


@pytest.mark.parametrize("kind,ceiling", [("int8", 0.6), ("nf4", 0.35)])
def test_quantized_experts_shrink_and_keep_the_output(moe_bf16, kind, ceiling):
    model = copy.deepcopy(moe_bf16)
    before = _expert_bytes(model)
    config = model.config
    assert moe_quant.quantize_experts(model, kind) == (
        config.num_hidden_layers - config.num_dense_layers
    )
    assert moe_quant.expert_modules(model) == []  # no bf16 expert weights left
    assert _expert_bytes(model) <= ceiling * before
    ids = torch.randint(20, 500, (1, 16))
    with torch.no_grad():
        expected, got = moe_bf16(ids).logits.float(), model(ids).logits.float()
    cosine = torch.nn.functional.cosine_similarity(expected.flatten(), got.flatten(), dim=0)
    assert cosine > 0.99
    out = model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert out.shape[1] == 22


def test_bitsandbytes_levels_quantize_the_experts_after_loading():
    assert quant.QUANTIZATIONS["int8"].post_load is not None
    assert quant.QUANTIZATIONS["nf4"].post_load is not None
    assert quant.QUANTIZATIONS["bf16"].post_load is None


def test_cpu_int8_level_shrinks_and_generates(tiny_paths):
    from lfmui import engine, prompts
    from lfmui.manager import ModelManager

    manager = ModelManager()
    if quant.cuda_available():  # on the GPU device: listed, and refused with the reason
        from lfmui.errors import QuantizationUnavailable

        with pytest.raises(QuantizationUnavailable, match="a CPU level"):
            manager.load("lfm2-vl-tiny", "int8-cpu")
        return
    fp32 = manager.load("lfm2-vl-tiny", "fp32")["resident_bytes"]
    status = manager.load("lfm2-vl-tiny", "int8-cpu")
    assert status["quantization"] == "int8-cpu" and status["resident_bytes"] < fp32
    loaded = manager.current()
    packed = [m for m in loaded.model.modules() if hasattr(m, "_packed_params")]
    assert packed and not any(
        "vision_tower" in n for n, m in loaded.model.named_modules() if hasattr(m, "_packed_params")
    )
    inputs = prompts.build_inputs(loaded, [{"role": "user", "content": "hello"}])
    events = list(engine.stream(loaded, inputs, engine.Settings(max_new_tokens=6)))
    assert events[-1].kind == "done"
    manager.unload()


def test_item36_cpu_int8_level_is_refused_on_cuda(monkeypatch):
    monkeypatch.setattr(quant, "cuda_available", lambda: True)
    assert not quant.QUANTIZATIONS["int8-cpu"].probe().ok


def test_item36_without_bitsandbytes_the_levels_say_why(monkeypatch):
    """A CUDA machine without the bitsandbytes package: int8 and nf4 are listed unavailable
    with the install command, and asking for them is a clear error."""
    import importlib.util

    from lfmui.errors import QuantizationUnavailable

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(quant, "cuda_available", lambda: True)
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "bitsandbytes" else real_find_spec(name, *args),
    )
    table = {row["name"]: row for row in quant.availability_table()}
    for name in ("int8", "nf4"):
        assert not table[name]["available"]
        assert table[name]["reason"] == "needs the bitsandbytes package: pip install bitsandbytes"
        with pytest.raises(QuantizationUnavailable, match="pip install bitsandbytes"):
            quant.resolve(name)
    assert table["bf16"]["available"] and table["fp16"]["available"]
