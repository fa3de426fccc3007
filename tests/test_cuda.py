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


@pytest.fixture
def memory_cap():
    """Cap this process's CUDA memory (a small fraction of the card); lifted afterwards."""
    import torch

    total = torch.cuda.get_device_properties(0).total_memory

    def cap(limit_bytes: int) -> None:
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(min(1.0, limit_bytes / total))

    yield cap
    torch.cuda.set_per_process_memory_fraction(1.0)
    torch.cuda.empty_cache()


def test_item35_real_out_of_memory_while_loading(memory_cap):
    """A full-shape VL-1.6B (3 GiB in bf16) under a 1.5 GiB cap: a clear error, the partial
    weights freed, the previous model back, and another model loads right after."""
    import torch

    from lfmui.errors import ModelLoadError

    manager = ModelManager()
    manager.load("lfm2-vl-tiny", "bf16")
    baseline = torch.cuda.memory_allocated()
    memory_cap(baseline + int(1.5 * 2**30))
    with pytest.raises(ModelLoadError, match="Not enough memory to load lfm2-vl-1.6b-synthetic"):
        manager.load("lfm2-vl-1.6b-synthetic", "bf16")
    assert manager.current().spec.id == "lfm2-vl-tiny"
    assert torch.cuda.memory_allocated() == baseline  # partial weights gone
    assert manager.load("lfm2-vl-450m-synthetic", "bf16")["device"] == "cuda"  # fits the cap
    manager.unload()
    assert torch.cuda.memory_allocated() == 0


def test_item30_real_out_of_memory_during_generate(memory_cap):
    """A long image-heavy prompt under a cap just above the weights: the reply ends with the
    out-of-memory sentence, its memory is given back, and the next reply is answered."""
    import torch
    from PIL import Image

    from lfmui import engine, prompts

    manager = ModelManager()
    manager.load("lfm2-vl-450m-synthetic", "bf16")
    loaded = manager.current()
    weights = torch.cuda.memory_allocated()
    picture = Image.effect_noise((1024, 1024), 60).convert("RGB")
    content = [{"type": "image", "image": picture}] * 4 + [{"type": "text", "text": "all?"}]
    inputs = prompts.build_inputs(loaded, [{"role": "user", "content": content}])
    memory_cap(torch.cuda.memory_allocated() + 64 * 2**20)  # inputs fit; the forward does not
    events = list(engine.stream(loaded, inputs, engine.Settings(max_new_tokens=16)))
    assert events[-1].kind == "error" and events[-1].data["message"] == engine.OUT_OF_MEMORY
    del inputs
    assert torch.cuda.memory_allocated() <= weights + 2**20  # the failed reply's tensors freed
    small = prompts.build_inputs(loaded, [{"role": "user", "content": "hi"}])
    events = list(engine.stream(loaded, small, engine.Settings(max_new_tokens=8)))
    assert events[-1].kind == "done"
    manager.unload()
