"""ModelManager: switches free memory; bad requests give clear errors and keep the old model."""

from __future__ import annotations

import gc
import json
import shutil
import threading
import time
import weakref

import pytest

from lfmui import engine, prompts, quant
from lfmui.catalog import Catalog
from lfmui.errors import (
    CheckpointError,
    LoadInProgress,
    ModelLoadError,
    NoModelLoaded,
    QuantizationUnavailable,
    UnknownModelError,
)
from lfmui.heap import process_rss
from lfmui.hub import choose_startup_model
from lfmui.manager import ModelManager


def _reply(manager: ModelManager, tokens: int = 4) -> str:
    """Generate a few tokens with the resident model: proof that it is still usable."""
    with manager.lease() as loaded:
        inputs = prompts.build_inputs(loaded, [{"role": "user", "content": "hello"}])
        events = list(
            engine.stream(
                loaded,
                inputs,
                engine.Settings(max_new_tokens=tokens, temperature=0),
                extra_generate_kwargs={"min_new_tokens": tokens},
            )
        )
    assert events[-1].kind == "done", events
    return "".join(e.text for e in events if e.kind == "text")


@pytest.fixture
def manager(tiny_paths):
    manager = ModelManager()
    manager.load("lfm2-vl-tiny", "fp32")
    yield manager
    manager.unload()


def test_item33_twenty_switch_cycles_return_memory_to_baseline(manager):
    first = manager.current()
    baseline_bytes = first.weight_bytes
    model_ref = weakref.ref(first.model)
    del first
    manager.load("lfm2-moe-tiny", "fp32")
    assert manager.current().spec.kind == "text"
    moe_ref = weakref.ref(manager.current().model)
    gc.collect()
    assert model_ref() is None  # the VL model was freed, not kept beside the MoE
    manager.load("lfm2-vl-tiny", "fp32")
    manager.load("lfm2-moe-tiny", "fp32")  # warm-up: allocator pools and caches fill once
    rss_before = process_rss()
    for _ in range(20):
        manager.load("lfm2-vl-tiny", "fp32")
        manager.load("lfm2-moe-tiny", "fp32")
    manager.load("lfm2-vl-tiny", "fp32")
    gc.collect()
    assert moe_ref() is None
    assert manager.status()["resident_bytes"] == baseline_bytes
    assert manager.status()["memory"]["weights_bytes"] == baseline_bytes
    assert process_rss() - rss_before < 64 * 2**20  # 41 more switches: no growth beyond noise
    assert _reply(manager)


@pytest.mark.parametrize(
    ("model_id", "quantization", "error"),
    [
        ("no-such-model", "fp32", UnknownModelError),
        ("LiquidAI/LFM2-VL-450M", "fp32", UnknownModelError),  # a repo id, not a catalog id
        ("org/evil", "fp32", UnknownModelError),
        ("/etc", "fp32", UnknownModelError),
        ("../lfm2-vl-tiny", "fp32", UnknownModelError),
        # hidden_model_ids: the full-shape builds the picker hides (3.1 GB peak for the 450M,
        # an out-of-memory kill for the 8B) are refused before anything is built
        ("lfm2-vl-450m-synthetic", "fp32", UnknownModelError),
        ("lfm2-8b-a1b-synthetic", "fp32", UnknownModelError),
        ("lfm2-moe-tiny", "int3", QuantizationUnavailable),
    ],
)
def test_item06_bad_load_requests_keep_the_previous_model(manager, model_id, quantization, error):
    with pytest.raises(error) as info:
        manager.load(model_id, quantization)
    assert "Pick" in str(info.value) or "Use one of" in str(info.value)
    assert manager.current().spec.id == "lfm2-vl-tiny"
    assert _reply(manager)


@pytest.mark.parametrize("level", ["int8", "nf4"])
def test_item36_unavailable_quantization_says_why(manager, level, monkeypatch):
    """bitsandbytes installed but unable to run here: the level says why, nothing is loaded."""
    monkeypatch.setattr(quant, "_bitsandbytes_fails", lambda device: "RuntimeError: no kernel")
    with pytest.raises(QuantizationUnavailable, match="bitsandbytes cannot run here"):
        manager.load("lfm2-moe-tiny", level)
    assert manager.current().spec.id == "lfm2-vl-tiny"
    assert _reply(manager)


def _local_copy(tiny_paths, tmp_path, name="lfm2-moe-tiny"):
    target = tmp_path / "ckpt"
    shutil.copytree(tiny_paths[name], target)
    return target


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not a transformers checkpoint"):
        Catalog().add_local(tmp_path / "missing")


def test_local_checkpoint_loads(manager, tiny_paths, tmp_path):
    spec = manager.catalog.add_local(_local_copy(tiny_paths, tmp_path))
    assert spec.id == "local:ckpt" and spec.kind == "text"
    assert manager.load(spec.id, "fp32")["model_id"] == "local:ckpt"
    assert _reply(manager)


@pytest.mark.parametrize(
    "config_text",
    ["{not json", '{"model_type": "bert"}', "[]", '{"model_type": "lfm2_moe", "hidden_size": "x"}'],
)
def test_item37_corrupt_config_keeps_the_previous_model(manager, tiny_paths, tmp_path, config_text):
    target = _local_copy(tiny_paths, tmp_path)
    spec = manager.catalog.add_local(target)
    (target / "config.json").write_text(config_text)
    with pytest.raises(CheckpointError):
        manager.load(spec.id, "fp32")
    assert manager.current().spec.id == "lfm2-vl-tiny"
    assert _reply(manager)


def test_item37_corrupt_weights_reload_the_previous_model(manager, tiny_paths, tmp_path):
    target = _local_copy(tiny_paths, tmp_path)
    spec = manager.catalog.add_local(target)
    (target / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ModelLoadError) as info:
        manager.load(spec.id, "fp32")
    message = str(info.value)
    assert "corrupt" in message and "lfm2-vl-tiny, fp32) is loaded again" in message
    assert str(tmp_path) not in message  # no server paths in user-facing errors
    assert manager.current().spec.id == "lfm2-vl-tiny"
    assert _reply(manager)


def test_item34_second_load_while_loading_is_refused(manager, monkeypatch):
    entered, release = threading.Event(), threading.Event()
    real = manager._load_weights

    def slow_load(*args, **kwargs):
        entered.set()
        release.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(manager, "_load_weights", slow_load)
    worker = threading.Thread(target=manager.load, args=("lfm2-moe-tiny", "fp32"))
    worker.start()
    assert entered.wait(10)
    with pytest.raises(LoadInProgress, match="lfm2-moe-tiny is loading; wait"):
        manager.load("lfm2-vl-tiny", "fp32")
    release.set()
    worker.join(10)
    assert manager.current().spec.id == "lfm2-moe-tiny"
    assert _reply(manager)


def test_item33_switch_waits_for_a_request_in_flight(manager):
    manager.drain_seconds = 5.0
    leased, finish = threading.Event(), threading.Event()
    seen = {}

    def request():
        with manager.lease() as loaded:
            leased.set()
            finish.wait(10)
            seen["weights_alive"] = loaded.model is not None  # not freed under the request

    worker = threading.Thread(target=request)
    worker.start()
    assert leased.wait(5)
    switcher = threading.Thread(target=manager.load, args=("lfm2-moe-tiny", "fp32"))
    switcher.start()
    time.sleep(0.3)
    assert manager.current().spec.id == "lfm2-vl-tiny"  # still waiting for the lease
    finish.set()
    worker.join(5)
    switcher.join(10)
    assert seen["weights_alive"] and manager.current().spec.id == "lfm2-moe-tiny"


def test_item33_switch_stops_a_long_generation_after_the_grace_period(manager):
    manager.drain_seconds = 0.2
    events = []
    generating = threading.Event()

    def request():
        with manager.lease() as loaded:
            inputs = prompts.build_inputs(loaded, [{"role": "user", "content": "hi"}])
            settings = engine.Settings(max_new_tokens=4096, temperature=0)
            for event in engine.stream(
                loaded, inputs, settings, extra_generate_kwargs={"min_new_tokens": 4096}
            ):
                events.append(event)
                generating.set()

    worker = threading.Thread(target=request)
    worker.start()
    assert generating.wait(30)  # the switch comes while tokens are being generated
    manager.load("lfm2-moe-tiny", "fp32")
    worker.join(10)
    assert not worker.is_alive()
    assert events[-1].kind == "done" and events[-1].data["reason"] == "stopped"


def test_lease_without_a_model_is_a_clear_error():
    with pytest.raises(NoModelLoaded, match="Load one in the Models tab"), ModelManager().lease():
        pass


def test_startup_falls_back_to_tiny_offline():
    model_id, note = choose_startup_model(Catalog(), None, offline=True)
    assert model_id == "lfm2-vl-tiny"
    assert "random weights: replies are noise" in note


def test_startup_without_network_is_quick(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # nothing listens on the discard port
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr("lfmui.hub._hub_cached", lambda repo, revision="main": False)
    started = time.monotonic()
    model_id, note = choose_startup_model(Catalog(), "LFM2-VL-1.6B", offline=False)
    assert model_id == "lfm2-vl-tiny" and "cannot be reached" in note
    assert time.monotonic() - started < 5


def test_offline_models_listed_in_json(manager):
    entries = [s.to_json() for s in manager.catalog.listed()]
    assert {"LFM2-VL-450M", "LFM2-VL-1.6B", "LFM2-8B-A1B", "lfm2-vl-tiny"} <= {
        e["id"] for e in entries
    }
    json.dumps(entries)


def test_item35_out_of_memory_while_loading_frees_the_partial_weights(manager, monkeypatch):
    """An out-of-memory after the weights are built (as a GPU load fails part-way): a clear
    error, the partial model freed before the previous one is reloaded, another load right
    after. tests/test_cuda.py has the real CUDA case."""
    import torch

    from lfmui import heap as heap_module

    partial = []
    real_weight_bytes = heap_module.weight_bytes

    def out_of_memory(model):
        if not partial:
            partial.append(weakref.ref(model))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_weight_bytes(model)

    monkeypatch.setattr(heap_module, "weight_bytes", out_of_memory)
    freed_before_restore = []
    real_restore = manager._restore

    def restore(*args):
        gc.collect()
        freed_before_restore.append(partial[0]() is None)
        return real_restore(*args)

    monkeypatch.setattr(manager, "_restore", restore)
    with pytest.raises(ModelLoadError) as info:
        manager.load("lfm2-moe-tiny", "fp32")
    message = str(info.value)
    assert message.startswith("Not enough memory to load lfm2-moe-tiny; pick a smaller model")
    assert "(lfm2-vl-tiny, fp32) is loaded again" in message and "Traceback" not in message
    assert freed_before_restore == [True]
    assert manager.current().spec.id == "lfm2-vl-tiny" and _reply(manager)
    assert manager.load("lfm2-moe-tiny", "fp32")["model_id"] == "lfm2-moe-tiny"
    assert _reply(manager)


def _fake_hub_cache(tiny_paths, root, repo="LiquidAI/LFM2-VL-450M"):
    """A Hugging Face cache holding `repo` at main (the tiny checkpoint's files)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    shutil.copytree(tiny_paths["lfm2-vl-tiny"], folder / "snapshots" / commit)
    return root


@pytest.fixture
def dead_hub(monkeypatch, tmp_path):
    """No offline flag, an empty cache, and a Hub endpoint where nothing listens."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_item37_unreachable_hub_is_a_quick_clear_error(manager, dead_hub):
    before = manager.current()
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        manager.load("LFM2-VL-450M", "fp32")
    assert time.monotonic() - started < 10  # one short probe, not the client's retries
    assert str(info.value).startswith(
        "Could not download LFM2-VL-450M from the Hugging Face Hub (unreachable or offline)"
    )
    assert manager.current() is before  # never unloaded: the check came first
    assert _reply(manager)


def test_item37_unreachable_hub_loads_from_the_cache(manager, dead_hub, tiny_paths):
    _fake_hub_cache(tiny_paths, dead_hub)
    status = manager.load("LFM2-VL-450M", "fp32")
    assert status["model_id"] == "LFM2-VL-450M" and status["quantization"] == "fp32"
    assert _reply(manager)


def test_item37_bad_revision_keeps_the_previous_model(manager, dead_hub, tiny_paths):
    from dataclasses import replace

    _fake_hub_cache(tiny_paths, dead_hub)
    spec = manager.catalog.get("LFM2-VL-450M")
    manager.catalog._specs["pinned"] = replace(spec, id="pinned", revision="v9-missing")
    before = manager.current()
    with pytest.raises(ModelLoadError, match="revision 'v9-missing' is not in the local cache"):
        manager.load("pinned", "fp32")
    assert manager.current() is before and _reply(manager)


def test_a_lease_that_never_lets_go_ends_the_switch_with_a_clear_error(manager):
    """A request holding the model outside generation (a reply generator never closed) cannot
    be stopped: the switch waits its grace period and stop period, then fails with a sentence
    saying why, the resident model still serving; once the lease goes, the switch works."""
    from lfmui.errors import ModelLoadError

    manager.drain_seconds, manager.stop_seconds = 0.2, 0.3
    before = manager.current().spec.id
    held = manager.lease()
    held.__enter__()
    started = time.monotonic()
    try:
        with pytest.raises(ModelLoadError, match="did not stop within 0.5 s"):
            manager.load("lfm2-moe-tiny", "fp32")
        assert time.monotonic() - started < 5
        assert manager.current().spec.id == before and not manager.current().cancel.is_set()
        assert manager.status()["loading"] is None
        with manager.lease() as loaded:  # still serving
            assert loaded.spec.id == before
    finally:
        held.__exit__(None, None, None)
    manager.load("lfm2-moe-tiny", "fp32")
    assert manager.current().spec.id == "lfm2-moe-tiny"


def test_a_hub_switch_downloads_before_it_frees_the_resident_model(
    manager, tiny_paths, monkeypatch
):
    """The new weights come down while the old model still serves (a long or failed download
    leaves a model to chat with), with progress by file; then the switch happens."""
    from lfmui import hub

    old = manager.current()
    seen, steps = {}, []

    def download(repo, revision=None, allow_patterns=None, tqdm_class=None):
        seen["resident"] = manager.current()
        seen["answers"] = _reply(manager)  # the old model still answers mid-download
        bar = tqdm_class(total=2, disable=True)
        bar.update(1)
        bar.update(1)
        if seen.get("fail"):
            raise OSError("connection reset mid-download")
        return tiny_paths["lfm2-vl-tiny"]

    monkeypatch.setattr(hub, "check", lambda spec: hub.Location(spec.location, spec.revision))
    monkeypatch.setattr("huggingface_hub.snapshot_download", download)
    seen["fail"] = True
    with pytest.raises(ModelLoadError, match="Could not read LiquidAI/LFM2-VL-450M"):
        manager.load("LFM2-VL-450M", "fp32")
    assert manager.current() is old and seen["resident"] is old
    seen["fail"] = False
    status = manager.load("LFM2-VL-450M", "fp32", progress=lambda f, m: steps.append((f, m)))
    assert seen["resident"] is old and status["model_id"] == "LFM2-VL-450M"
    downloads = [(f, m) for f, m in steps if m.startswith("downloading")]
    assert [m for _, m in downloads][-1].endswith("2 of 2 files")
    assert all(0.1 < f <= 0.3 for f, _ in downloads)
    assert [f for f, _ in steps] == sorted(f for f, _ in steps)  # progress only moves on


def test_loading_weights_moves_the_progress_tensor_by_tensor(manager):
    """The longest step of a load reports as it goes (transformers' own loop, followed),
    and the progress only moves on."""
    steps = []
    manager.load("lfm2-moe-tiny", "fp32", progress=lambda f, m: steps.append((f, m)))
    weights = [(f, m) for f, m in steps if m.startswith("loading weights")]
    assert len(weights) >= 5 and all(0.4 <= f <= 0.85 for f, _ in weights)
    assert [f for f, _ in steps] == sorted(f for f, _ in steps)
    from transformers import core_model_loading

    assert core_model_loading.tqdm.__module__ != "lfmui.manager"  # put back after the load


def test_a_switch_drops_the_decoded_pictures(manager, tmp_path):
    from PIL import Image

    from lfmui import images

    picture = tmp_path / "p.png"
    Image.new("RGB", (64, 64), "red").save(picture)
    images.load_safe(picture)
    assert images._decoded
    manager.load("lfm2-moe-tiny", "fp32")
    assert not images._decoded


def _pool_manager(budget_models: int) -> tuple[ModelManager, dict[str, int]]:
    """A pool whose budget holds `budget_models` of the tiny fp32 models (their estimates)."""
    from lfmui import memory

    sizes = {
        name: memory.estimate(memory.config_of(Catalog().get(name)), quant.resolve("fp32")).total
        for name in ("lfm2-vl-tiny", "lfm2-moe-tiny")
    }
    budget = sum(sorted(sizes.values())[-budget_models:]) if budget_models else 1
    return ModelManager(pool_budget=budget), sizes


def _reply_from(manager: ModelManager, key: str) -> str:
    with manager.lease(key) as loaded:
        assert loaded.key == key
        inputs = prompts.build_inputs(loaded, [{"role": "user", "content": "hello"}])
        settings = engine.Settings(max_new_tokens=3, temperature=0)
        events = list(engine.stream(loaded, inputs, settings))
    assert events[-1].kind == "done", events
    return loaded.spec.id


def test_pool_a_third_pick_evicts_the_idle_least_recently_used_model(tiny_paths):
    manager, _ = _pool_manager(2)
    manager.load("lfm2-vl-tiny", "fp32")
    vl = weakref.ref(manager.current().model)
    moe = manager.pick("lfm2-moe-tiny", "fp32", may_load=True)
    assert [e["key"] for e in manager.pool()] == [moe, "lfm2-vl-tiny@fp32"]
    assert manager.current().spec.id == "lfm2-vl-tiny"  # a visitor's pick leaves the default
    assert _reply_from(manager, moe) == "lfm2-moe-tiny"  # the vl model is now the idle LRU
    third = manager.pick("lfm2-vl-tiny", "bf16", may_load=True)
    assert sorted(e["key"] for e in manager.pool()) == sorted([moe, third])
    gc.collect()
    assert vl() is None  # the evicted model's weights are freed
    assert _reply_from(manager, third) == "lfm2-vl-tiny"
    with (
        pytest.raises(NoModelLoaded, match="not loaded here any more"),
        manager.lease("lfm2-vl-tiny@fp32"),
    ):
        pass
    manager.unload()
    assert manager.pool() == []


def test_pool_a_pick_while_every_model_answers_is_refused_and_nothing_is_killed(tiny_paths):
    from lfmui.errors import PoolFull

    manager, _ = _pool_manager(2)
    manager.load("lfm2-vl-tiny", "fp32")
    moe = manager.pick("lfm2-moe-tiny", "fp32", may_load=True)
    with manager.lease("lfm2-vl-tiny@fp32") as a, manager.lease(moe) as b:
        with pytest.raises(PoolFull, match="are answering now") as refused:
            manager.pick("lfm2-vl-tiny", "bf16", may_load=True)
        assert "Pick a loaded model" in str(refused.value)
        assert not a.cancel.is_set() and not b.cancel.is_set() and a.model and b.model
    assert {e["key"] for e in manager.pool()} == {"lfm2-vl-tiny@fp32", moe}
    assert _reply_from(manager, moe) == "lfm2-moe-tiny"
    assert _reply_from(manager, "lfm2-vl-tiny@fp32") == "lfm2-vl-tiny"
    manager.unload()


def test_pool_a_visitor_cannot_load_unless_the_owner_allows_it(tiny_paths):
    manager, _ = _pool_manager(2)
    manager.load("lfm2-vl-tiny", "fp32")
    with pytest.raises(NoModelLoaded, match="only the owner may load models"):
        manager.pick("lfm2-moe-tiny")
    assert manager.pick("lfm2-vl-tiny") == "lfm2-vl-tiny@fp32"  # a resident one: yes
    with pytest.raises(UnknownModelError):
        manager.pick("../../etc")
    manager.unload()


def test_pool_a_model_larger_than_the_budget_is_refused_before_anything_goes(tiny_paths):
    from lfmui.errors import PoolFull

    manager, _ = _pool_manager(0)
    with pytest.raises(PoolFull, match="more than the whole pool holds"):
        manager.load("lfm2-vl-tiny", "fp32")
    assert manager.pool() == [] and manager.current() is None


def test_pool_two_picks_of_one_model_at_once_share_its_load(tiny_paths):
    """Two visitors (or a dropdown that reports one pick twice) pick the same model while it
    loads: the second waits for that load instead of being refused."""
    manager, _ = _pool_manager(2)
    manager.load("lfm2-vl-tiny", "fp32")
    loads = []
    original = manager._load_weights

    def counted(*args, **kwargs):
        loads.append(args[0].id)
        time.sleep(0.5)  # the second pick arrives while this one loads
        return original(*args, **kwargs)

    manager._load_weights = counted
    keys: list[str] = []
    picks = [
        threading.Thread(target=lambda: keys.append(manager.pick("lfm2-moe-tiny", may_load=True)))
        for _ in range(2)
    ]
    for pick in picks:
        pick.start()
    for pick in picks:
        pick.join(60)
    assert len(keys) == 2 and keys[0] == keys[1] and keys[0].startswith("lfm2-moe-tiny@")
    assert loads == ["lfm2-moe-tiny"]
    manager.unload()


def test_a_forked_child_does_not_inherit_a_lock_held_at_the_fork():
    """spaces forks its worker while other threads run: a lock one of them held at the fork
    would stay held in the child for ever. The child's manager has fresh locks."""
    from test_engine import _in_forked_child

    manager = ModelManager()
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with manager._state:
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    try:
        code = _in_forked_child(lambda: manager._state.acquire(timeout=5))
    finally:
        release.set()
        holder.join()
    assert code == 0


def test_a_sealed_pool_refuses_loads_but_switches_among_its_models(tiny_paths):
    """ZeroGPU seals the pool after the start-up loads: a model not resident is refused with
    the seal's sentence; a resident one can still become the default; unload is refused."""
    manager = ModelManager(pool_budget=2 * 2**30)
    manager.load("lfm2-vl-tiny", "fp32")
    manager.pick("lfm2-moe-tiny", "fp32", may_load=True)
    manager.seal("Loaded at start only.")
    assert manager.load("lfm2-moe-tiny", "fp32")["key"] == "lfm2-moe-tiny@fp32"
    assert manager.current().key == "lfm2-moe-tiny@fp32"
    with pytest.raises(ModelLoadError, match="Loaded at start only."):
        manager.load("lfm2-vl-tiny", "bf16")
    with pytest.raises(ModelLoadError, match="Loaded at start only."):
        manager.unload()
    assert sorted(e["key"] for e in manager.pool()) == ["lfm2-moe-tiny@fp32", "lfm2-vl-tiny@fp32"]


def test_a_hub_model_of_an_architecture_this_transformers_lacks_says_which_it_needs(
    manager, dead_hub, tiny_paths
):
    """A config that names a model type this transformers does not know (a newer model): the
    sentence names it and the transformers version that saved it, and the model in use stays."""
    import json

    root = _fake_hub_cache(tiny_paths, dead_hub)
    snapshot = next((root / "models--LiquidAI--LFM2-VL-450M" / "snapshots").iterdir())
    config = json.loads((snapshot / "config.json").read_text())
    (snapshot / "config.json").unlink()  # a copy of its own, not the tiny build's file
    config.update(model_type="lfm9_vl", transformers_version="9.1.0")
    (snapshot / "config.json").write_text(json.dumps(config))
    before = manager.current()
    with pytest.raises(ModelLoadError) as info:
        manager.load("LFM2-VL-450M", "fp32")
    said = str(info.value)
    assert "is a 'lfm9_vl' model, which transformers" in said
    assert 'pip install -U "transformers>=9.1.0"' in said
    assert manager.current() is before and _reply(manager)
