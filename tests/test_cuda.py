"""CUDA-only checks (marked `cuda`; run them on the GPU device): every level loads, reads an
image and frees; the quantized MoE decodes without a host sync; real out-of-memory faults."""

from __future__ import annotations

import pytest

from lfmui import compiled, engine, prompts, quant
from lfmui.manager import ModelManager

pytestmark = pytest.mark.cuda
GPU_LEVELS = [name for name, level in quant.QUANTIZATIONS.items() if level.probe().ok]


def _allocated() -> int:
    """Bytes allocated once cuBLAS' per-handle workspaces are let go: they stay allocated after
    the first matmul, so a leak check compares with a baseline taken the same way (as
    PyTorch's own CUDA leak check does)."""
    import torch

    torch.cuda.synchronize()
    torch._C._cuda_clearCublasWorkspaces()
    return torch.cuda.memory_allocated()


def _every_build():
    """A catalog that lists the hidden builds too (what --synthetic does)."""
    from lfmui.catalog import Catalog

    catalog = Catalog()
    catalog.show_all()
    return catalog


@pytest.mark.parametrize("model_id", ["lfm2-vl-tiny", "lfm2-moe-tiny"])
@pytest.mark.parametrize("level", GPU_LEVELS)
def test_every_level_loads_on_cuda(tiny_paths, model_id, level, monkeypatch):
    """Every level loads, reads an image and answers (eager decode: the compiled path has its
    own test below; compiling each level cold overran a 10-minute call)."""
    from PIL import Image

    monkeypatch.setattr(engine, "decode_plan", lambda *a: ({}, "eager decode (this test)"))
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
            from lfmui.quant.moe import QuantizedExperts

            experts = [m for m in loaded.model.modules() if isinstance(m, QuantizedExperts)]
            assert experts and all(m.gate_up_proj_q.is_cuda for m in experts)
    content = "hi"
    if model_id == "lfm2-vl-tiny":  # the image path is what broke the quantized levels
        vision = loaded.model.model.vision_tower, loaded.model.model.multi_modal_projector
        linears = [m for part in vision for m in part.modules() if "Linear" in type(m).__name__]
        assert linears and all(type(m).__module__.startswith("torch.nn") for m in linears)
        picture = Image.effect_noise((300, 200), 60).convert("RGB")
        content = [{"type": "image", "image": picture}, {"type": "text", "text": "what?"}]
    inputs = prompts.build_inputs(loaded, [{"role": "user", "content": content}])
    events = list(engine.stream(loaded, inputs, engine.Settings(max_new_tokens=8)))
    assert events[-1].kind == "done", events[-1].data
    manager.unload()


def test_switch_returns_cuda_memory_to_baseline(tiny_paths):
    start = _allocated()
    manager = ModelManager()
    manager.load("lfm2-vl-tiny", "bf16")
    baseline = _allocated()
    manager.load("lfm2-moe-tiny", "nf4")
    manager.load("lfm2-vl-tiny", "bf16")
    assert _allocated() == baseline
    manager.unload()
    assert _allocated() == start


@pytest.mark.parametrize("level", ["int8", "nf4"])
def test_quantized_moe_decode_never_syncs_on_cuda(level):
    """One decode step of the 8B's layout at a quantized level under CUDA's sync checker set to
    raise: the experts gather their weights by index on the device."""
    import torch

    manager = ModelManager(_every_build())
    manager.load("lfm2-moe-replica", level)
    model = manager.current().model
    ids = torch.randint(20, 500, (1, 16), device="cuda")
    with torch.inference_mode():
        out = model(ids, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            model(token, past_key_values=out.past_key_values, use_cache=True)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    manager.unload()


def test_nf4_moe_load_peak_stays_near_its_size():
    from lfmui import offline
    from lfmui.bench import meters

    offline.ensure_checkpoint("lfm2-moe-replica", device="cuda")  # built outside the window
    manager = ModelManager(_every_build())
    with meters.tensor_peak("cuda") as peak:
        status = manager.load("lfm2-moe-replica", "nf4")
    assert peak.bytes <= 1.3 * status["resident_bytes"]
    manager.unload()


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

    from lfmui import offline
    from lfmui.errors import ModelLoadError

    for name in ("lfm2-vl-1.6b-synthetic", "lfm2-vl-450m-synthetic"):  # built before the cap:
        offline.ensure_checkpoint(name, device="cuda")  # this test is about loading weights
    start = _allocated()
    manager = ModelManager(_every_build())
    manager.load("lfm2-vl-tiny", "bf16")
    baseline = _allocated()
    memory_cap(baseline + int(1.5 * 2**30))
    with pytest.raises(ModelLoadError, match="Not enough memory to load lfm2-vl-1.6b-synthetic"):
        manager.load("lfm2-vl-1.6b-synthetic", "bf16")
    assert manager.current().spec.id == "lfm2-vl-tiny"
    assert _allocated() == baseline  # partial weights gone
    assert manager.load("lfm2-vl-450m-synthetic", "bf16")["device"] == "cuda"  # fits the cap
    manager.unload()
    assert _allocated() == start


def test_item30_real_out_of_memory_during_generate(memory_cap):
    """A long image-heavy prompt under a cap just above the weights: the reply ends with the
    out-of-memory sentence, its memory is given back, and the next reply is answered."""
    import torch
    from PIL import Image

    manager = ModelManager(_every_build())
    manager.load("lfm2-vl-450m-synthetic", "bf16")
    loaded = manager.current()
    first = prompts.build_inputs(loaded, [{"role": "user", "content": "hi"}])
    list(engine.stream(loaded, first, engine.Settings(max_new_tokens=4)))  # the static cache
    weights = _allocated()  # weights and static cache, taken as the check below takes it
    picture = Image.effect_noise((1024, 1024), 60).convert("RGB")
    content = [{"type": "image", "image": picture}] * 4 + [{"type": "text", "text": "all?"}]
    inputs = prompts.build_inputs(loaded, [{"role": "user", "content": content}])
    memory_cap(torch.cuda.memory_allocated() + 64 * 2**20)  # inputs fit; the forward does not
    events = list(engine.stream(loaded, inputs, engine.Settings(max_new_tokens=16)))
    assert events[-1].kind == "error" and events[-1].data["message"] == engine.OUT_OF_MEMORY
    del inputs
    assert _allocated() <= weights + 2**20  # the failed reply's tensors freed
    memory_cap(torch.cuda.memory_allocated() + 512 * 2**20)
    small = prompts.build_inputs(loaded, [{"role": "user", "content": "hi"}])
    events = list(engine.stream(loaded, small, engine.Settings(max_new_tokens=8)))
    assert events[-1].kind == "done"
    manager.unload()


def test_compiled_decode_on_cuda_reuses_its_cache_and_a_switch_leaves_nothing_compiled():
    """The CUDA path the CPU tests rehearse (tests/test_engine.py): bf16 decodes compiled
    into one static cache across requests of different lengths; a switch resets dynamo."""
    manager = ModelManager(**compiled.LIFECYCLE)
    manager.load("lfm2-vl-tiny", "bf16")
    loaded = manager.current()
    assert loaded.decode_note == "compiled decode: static cache + torch.compile"
    cache = loaded.static_cache
    for text in ("hi", "a longer question about the sea, the sky and ships"):
        inputs = prompts.build_inputs(loaded, [{"role": "user", "content": text}])
        events = list(engine.stream(loaded, inputs, engine.Settings(max_new_tokens=8)))
        assert events[-1].kind == "done", events[-1].data
    assert loaded.static_cache is cache and compiled.compiled_entries() >= 1
    manager.load("lfm2-moe-tiny", "bf16")
    assert loaded.static_cache is None
    manager.unload()
    assert compiled.compiled_entries() == 0
