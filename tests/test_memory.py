"""Memory pre-flight: estimates against what loads really keep, what is available (cgroups
included), and refusals that come at once and leave the previous model serving."""

from __future__ import annotations

import time

import pytest

from lfmui import memory, offline, quant
from lfmui.catalog import Catalog
from lfmui.errors import InsufficientMemory
from lfmui.manager import ModelManager
from lfmui.quant import cpu_computes_bf16

GIB = 2**30
HERE = [name for name, level in quant.QUANTIZATIONS.items() if level.probe().ok]


@pytest.fixture(scope="module")
def every_build():
    catalog = Catalog()
    catalog.show_all()
    manager = ModelManager(catalog)
    yield manager
    manager.unload()


@pytest.mark.parametrize(
    "model_id", ["lfm2-vl-tiny", "lfm2-moe-tiny", "lfm2-moe-replica", "lfm2-vl-450m-synthetic"]
)
@pytest.mark.parametrize("level", HERE)
def test_the_estimate_is_within_15_percent_of_what_loads_keep(every_build, model_id, level):
    config = offline.make_config(offline.shape_config(model_id))
    estimate = memory.estimate(config, quant.QUANTIZATIONS[level]).weights
    resident = every_build.load(model_id, level)["resident_bytes"]
    assert abs(estimate - resident) <= 0.15 * resident, (estimate, resident)


def test_the_8b_estimates_match_the_published_and_measured_sizes():
    """bf16 15.54 GiB (FACTS.md); nf4 4.525, int8 7.901, int8-bf16 8.027 and int4-bf16 5.107
    GiB resident, measured here with `python -m lfmui.bench loads --models
    lfm2-8b-a1b-synthetic --levels nf4,int8,int8-bf16` (int4-bf16: `seed`)."""
    config = offline.make_config(offline.shape_config("lfm2-8b-a1b-synthetic"))
    measured = {"bf16": 15.54, "nf4": 4.525, "int8": 7.901, "int8-bf16": 8.027, "int4-bf16": 5.107}
    for level, gib in measured.items():
        estimate = memory.estimate(config, quant.QUANTIZATIONS[level]).weights / GIB
        assert abs(estimate - gib) <= 0.15 * gib, (level, estimate)


def test_a_load_that_does_not_fit_is_refused_at_once_and_nothing_is_built(vl_manager, monkeypatch):
    """The 8B at fp32 on a 16 GB machine: refused within a second with the estimate, what is
    available and what to pick instead; no checkpoint is built; the previous model answers."""
    from lfmui import engine, prompts

    monkeypatch.setattr(memory, "meminfo_available", lambda: 14 * GIB)
    monkeypatch.setattr(memory, "cgroup_headroom", lambda: None)
    built = []
    monkeypatch.setattr(offline, "ensure_checkpoint", lambda *a, **k: built.append(a))
    vl_manager.catalog.show_all()
    started = time.perf_counter()
    with pytest.raises(InsufficientMemory) as refused:
        vl_manager.load("lfm2-8b-a1b-synthetic", "fp32")
    assert time.perf_counter() - started < 1.0
    message = str(refused.value)
    assert "needs about 32.0 GiB" in message and "available memory here is 14.0 GiB" in message
    assert "Pick nf4 (about" in message or "Pick int8 (about" in message
    assert built == []
    loaded = vl_manager.current()
    assert loaded.spec.id == "lfm2-vl-tiny"
    inputs = prompts.build_inputs(loaded, [{"role": "user", "content": "still there?"}])
    assert list(engine.stream(loaded, inputs, engine.Settings(max_new_tokens=2)))[-1].kind == "done"


def test_the_resident_model_counts_as_freed_by_a_switch(monkeypatch):
    monkeypatch.setattr(memory, "meminfo_available", lambda: 3 * GIB)
    monkeypatch.setattr(memory, "cgroup_headroom", lambda: None)
    assert memory.available("cpu", freed_by_switch=2 * GIB).bytes == 5 * GIB


def _cgroup_v2(root, limit: str, current: int, inactive: int) -> None:
    (root / "memory.max").write_text(limit + "\n")
    (root / "memory.current").write_text(f"{current}\n")
    (root / "memory.stat").write_text(f"anon {current - inactive}\ninactive_file {inactive}\n")


def test_a_cgroup_v2_limit_below_the_machine_is_respected(tmp_path, monkeypatch):
    _cgroup_v2(tmp_path, str(8 * GIB), current=3 * GIB, inactive=1 * GIB)
    assert memory.cgroup_headroom(str(tmp_path)) == 6 * GIB  # page cache can be reclaimed
    monkeypatch.setattr(memory, "cgroup_headroom", lambda: 6 * GIB)
    monkeypatch.setattr(memory, "meminfo_available", lambda: 20 * GIB)
    room = memory.available("cpu")
    assert room.bytes == 6 * GIB and room.source == "the container's memory limit"


def test_an_unlimited_or_missing_cgroup_is_no_limit(tmp_path):
    _cgroup_v2(tmp_path, "max", current=GIB, inactive=0)
    assert memory.cgroup_headroom(str(tmp_path)) is None
    assert memory.cgroup_headroom(str(tmp_path / "nowhere")) is None


def test_a_cgroup_v1_limit_is_read_too(tmp_path):
    v1 = tmp_path / "memory"
    v1.mkdir()
    (v1 / "memory.limit_in_bytes").write_text(f"{4 * GIB}\n")
    (v1 / "memory.usage_in_bytes").write_text(f"{2 * GIB}\n")
    (v1 / "memory.stat").write_text(f"total_inactive_file {GIB // 2}\n")
    assert memory.cgroup_headroom(str(tmp_path)) == 2 * GIB + GIB // 2
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    assert memory.cgroup_headroom(str(tmp_path)) is None


def test_every_level_of_every_listed_model_says_whether_it_fits(vl_manager, monkeypatch):
    monkeypatch.setattr(memory, "meminfo_available", lambda: 14 * GIB)
    monkeypatch.setattr(memory, "cgroup_headroom", lambda: None)
    rows = {row["name"]: row for row in vl_manager.levels("LFM2-8B-A1B")}
    assert rows["fp32"]["fits"] is False and rows["nf4"]["fits"] is True
    assert rows["nf4"]["estimate_gib"] < rows["int8"]["estimate_gib"] < rows["bf16"]["estimate_gib"]
    assert all(row["available_gib"] >= 14.0 for row in rows.values())  # + the tiny model's


def _mapped_checkpoints() -> list[str]:
    with open("/proc/self/maps") as maps:
        return [line.split()[5] for line in maps if line.rstrip().endswith(".safetensors")]


def test_a_quantized_load_lets_go_of_the_checkpoint_mapping(every_build):
    """LFM2-VL-450M at int8: the vision tower's bf16 weights were views of the mapped
    checkpoint and kept the whole file (every page the loader read) resident; they are copied
    and the file is unmapped. At bf16 the mapping is the model itself and stays."""
    every_build.load("lfm2-vl-450m-synthetic", "int8")
    assert not [path for path in _mapped_checkpoints() if "lfm2-vl-450m-synthetic" in path]
    tower = every_build.current().model.model.vision_tower
    assert next(tower.parameters()).dtype.is_floating_point  # still there, in its own memory
    every_build.load("lfm2-vl-450m-synthetic", "bf16")
    assert [path for path in _mapped_checkpoints() if "lfm2-vl-450m-synthetic" in path]


@pytest.mark.parametrize(
    ("model_id", "free_gib", "picked"),
    [
        # int8-cpu packs the Linear layers and experts as they load from bf16: ~11.1 GiB
        ("lfm2-8b-a1b-synthetic", 12, "int8-cpu"),
        ("lfm2-8b-a1b-synthetic", 11, "int4-bf16" if cpu_computes_bf16() else "nf4"),
        ("lfm2-8b-a1b-synthetic", 8, "int4-bf16" if cpu_computes_bf16() else "nf4"),
        ("lfm2-8b-a1b-synthetic", 6, "nf4"),  # int4-bf16 needs ~6.9 (bf16 Linears first)
        ("lfm2-vl-450m-synthetic", 14, "int8-cpu"),  # the fastest reply here
        ("lfm2-vl-450m-synthetic", 2.5, "int4-bf16" if cpu_computes_bf16() else "nf4"),
        ("lfm2-vl-450m-synthetic", 1.3, "nf4"),  # int8-cpu's load peaks at ~2.5 GiB
    ],
)
def test_auto_loads_the_fastest_level_that_fits(monkeypatch, model_id, free_gib, picked):
    """What auto hands to the loader (recorded there: nothing is built or loaded), in the
    static order (no calibration: tests/test_calibrate.py has auto following one)."""
    from lfmui import calibrate
    from lfmui.errors import ModelLoadError

    if quant.cuda_available():
        pytest.skip("the CPU order; CUDA's starts with bf16")
    monkeypatch.setattr(calibrate, "decode_ms", lambda config, *args: {})
    monkeypatch.setattr(memory, "meminfo_available", lambda: int(free_gib * GIB))
    monkeypatch.setattr(memory, "cgroup_headroom", lambda: None)
    catalog = Catalog()
    catalog.show_all()
    manager = ModelManager(catalog)
    asked = []

    def record(spec, level, location):
        asked.append(level.name)
        raise RuntimeError("recorded, not loaded")

    monkeypatch.setattr(manager, "_load_weights", record)
    monkeypatch.setattr(manager, "_locate", lambda spec, progress: None)
    with pytest.raises(ModelLoadError):
        manager.load(model_id, "auto")
    assert asked == [picked]


def test_auto_says_so_when_nothing_fits(vl_manager, monkeypatch):
    monkeypatch.setattr(memory, "meminfo_available", lambda: 1 * GIB)
    monkeypatch.setattr(memory, "cgroup_headroom", lambda: None)
    vl_manager.catalog.show_all()
    with pytest.raises(InsufficientMemory, match="No level of this model fits here"):
        vl_manager.load("lfm2-8b-a1b-synthetic", "auto")
    assert vl_manager.current().spec.id == "lfm2-vl-tiny"


def test_freeing_the_accelerator_where_this_process_never_started_cuda_does_not_touch_it(
    monkeypatch,
):
    """issue 27, finding 2: on a ZeroGPU Space the main process reports CUDA but never starts
    it, and its CUDA calls raise; a switch's freeing step must not call them there."""
    import torch

    from lfmui import heap

    called = []

    def refuse() -> None:
        called.append("reset")
        raise RuntimeError("CUDA must not be initialized in the main process on ZeroGPU")

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", refuse)
    monkeypatch.setattr(torch.cuda, "empty_cache", refuse)
    heap.free_accelerator(True)  # raised before
    assert called == []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: called.append("empty"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: called.append("reset"))
    heap.free_accelerator(True)  # where CUDA runs in this process: both, as before
    assert called == ["empty", "reset"]


def test_the_gpu_room_counts_reserved_free_blocks_and_the_fraction_cap(monkeypatch):
    """The pre-flight on CUDA (its figures stubbed here; the device run checks the real
    ones): the allocator's reserved-but-unused blocks count as room, and a per-process
    memory fraction caps it."""
    import torch

    gib = 2**30
    fraction = [1.0]
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (10 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: 20 * gib)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda *a: 26 * gib)
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda *a: fraction[0])
    assert memory.gpu_room() == 16 * gib  # 10 free + 6 reserved by us, unused
    fraction[0] = 0.3  # 24 GiB for this process, 20 allocated
    assert memory.gpu_room() == 4 * gib
    assert memory.available("cuda", 2 * gib).bytes == 6 * gib
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)  # ZeroGPU's main process
    assert memory.gpu_room() == 10 * gib


def test_the_resident_size_counts_what_bitsandbytes_keeps_beside_its_weights():
    """A 4-bit layer's absmax and code tables (nested too) and an 8-bit layer's SCB live
    outside parameters and buffers: the resident size counts them."""
    import bitsandbytes as bnb
    import torch

    from lfmui import heap

    four = bnb.nn.Linear4bit(256, 128, bias=False, quant_type="nf4", compress_statistics=True)
    four.weight = four.weight._quantize("cpu")
    eight = bnb.nn.Linear8bitLt(256, 128, bias=False, has_fp16_weights=False).to("cpu")
    model = torch.nn.Sequential(four, eight)
    packed = 256 * 128 // 2 + 256 * 128  # nf4: two weights a byte; int8: one
    state = four.weight.quant_state
    statistics = [state.absmax, state.code, state.offset, state.state2.absmax, state.state2.code]
    extra = sum(t.numel() * t.element_size() for t in (*statistics, eight.weight.SCB))
    assert heap.weight_bytes(model) == packed + extra
    assert state.absmax.numel() == 256 * 128 // 64  # one per block of 64
