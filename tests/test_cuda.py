"""CUDA-only checks (marked `cuda`; run them on the GPU device): every level loads and frees."""

from __future__ import annotations

import pytest

from lfmui import quant
from lfmui.manager import ModelManager

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("model_id", ["lfm2-vl-tiny", "lfm2-moe-tiny"])
@pytest.mark.parametrize(
    "level",
    [n for n, q in quant.QUANTIZATIONS.items() if q.needs_cuda or n in ("bf16", "fp16", "fp32")],
)
def test_every_level_loads_on_cuda(tiny_paths, model_id, level):
    manager = ModelManager()
    status = manager.load(model_id, level)
    assert status["device"] == "cuda" and status["quantization"] == level
    loaded = manager.current()
    assert next(loaded.model.parameters()).is_cuda
    if level in ("int8", "nf4"):
        import bitsandbytes as bnb

        linear = bnb.nn.Linear8bitLt if level == "int8" else bnb.nn.Linear4bit
        assert any(isinstance(m, linear) for m in loaded.model.modules())
        if model_id == "lfm2-moe-tiny":
            from lfmui.moe_quant import QuantizedExperts

            experts = [m for m in loaded.model.modules() if isinstance(m, QuantizedExperts)]
            assert experts and all(m.gate_up_proj_q.is_cuda for m in experts)
    from lfmui import engine, prompts

    inputs = prompts.build_inputs(loaded, [{"role": "user", "content": "hi"}])
    events = list(engine.stream(loaded, inputs, engine.Settings(max_new_tokens=8)))
    assert events[-1].kind == "done"
    manager.unload()


def test_switch_returns_cuda_memory_to_baseline(tiny_paths):
    import torch

    manager = ModelManager()
    manager.load("lfm2-vl-tiny", "bf16")
    baseline = torch.cuda.memory_allocated()
    manager.load("lfm2-moe-tiny", "nf4")
    manager.load("lfm2-vl-tiny", "bf16")
    assert torch.cuda.memory_allocated() == baseline
    manager.unload()
    assert torch.cuda.memory_allocated() == 0
