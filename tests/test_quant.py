"""Quantized levels on CPU, where bitsandbytes runs too: what stays unquantized, images through
int8 and nf4, the MoE experts quantized while loading, and a decode step without host syncs."""

from __future__ import annotations

import pytest
import torch

from lfmui import offline, quant
from lfmui.bench import cases
from lfmui.manager import ModelManager
from lfmui.quant import moe

BNB_LEVELS = ["int8", "nf4"]


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0)


def _is_vision(name: str) -> bool:
    return name.startswith(("model.vision_tower.", "model.multi_modal_projector."))


@pytest.mark.parametrize("build", offline.SHAPE_OF_BUILD)
def test_skip_modules_match_the_module_names_of_all_three_models(build):
    """transformers anchors skip patterns at the start of the full name (or matches a suffix):
    every Linear of the vision tower and projector is skipped, every language Linear is not."""
    config = offline.make_config(offline.shape_config(build))
    with torch.device("meta"):
        model = offline.model_class(config)(config)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    language = [n for n in names if not _is_vision(n) and n != "lm_head"]
    assert language and all(quant.should_quantize(n) for n in language)
    vision = [n for n in names if _is_vision(n)]
    assert (len(vision) > 0) == (config.model_type == "lfm2_vl")
    assert not any(quant.should_quantize(n) for n in [*vision, "lm_head"])


@pytest.fixture(scope="module")
def bnb_manager(tiny_paths):
    manager = ModelManager()
    yield manager
    manager.unload()


@pytest.mark.parametrize("level", BNB_LEVELS)
def test_quantized_levels_read_an_image_on_cpu(bnb_manager, level, caplog):
    import bitsandbytes as bnb
    from PIL import Image

    from lfmui import engine, prompts

    status = bnb_manager.load("lfm2-vl-tiny", level)
    assert status["device"] == "cpu" and status["quantization"] == level
    model = bnb_manager.current().model
    quantized = (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)
    for part in (model.model.vision_tower, model.model.multi_modal_projector):
        linears = [m for m in part.modules() if isinstance(m, torch.nn.Linear)]
        assert linears and not any(isinstance(m, quantized) for m in linears)
    assert any(isinstance(m, quantized) for m in model.model.language_model.modules())
    picture = Image.effect_noise((300, 200), 60).convert("RGB")
    content = [{"type": "image", "image": picture}, {"type": "text", "text": "What is it?"}]
    with bnb_manager.lease() as loaded:
        inputs = prompts.build_inputs(loaded, [{"role": "user", "content": content}])
        assert (inputs["input_ids"] == 396).sum() > 0  # the image's tokens are in the prompt
        settings = engine.Settings(max_new_tokens=6)
        extra = {"min_new_tokens": 6}
        with caplog.at_level("WARNING"):
            events = list(engine.stream(loaded, inputs, settings, extra_generate_kwargs=extra))
    assert not [r for r in caplog.records if r.name.startswith("bitsandbytes")]  # quiet log
    assert events[-1].kind == "done", events[-1].data
    metrics = next(e.data for e in events if e.kind == "metrics")
    assert metrics["generated_tokens"] == 6


@pytest.mark.parametrize("build", ["lfm2-vl-tiny", "lfm2-moe-tiny"])
@pytest.mark.parametrize("level", BNB_LEVELS)
def test_quantized_levels_keep_the_next_token_logits(tiny_paths, build, level):
    """Quality guard: next-token logits against bf16, cosine at least 0.99."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    auto = AutoModelForImageTextToText if build == "lfm2-vl-tiny" else AutoModelForCausalLM
    path = offline.ensure_checkpoint(build)
    reference = auto.from_pretrained(path, dtype=torch.bfloat16).eval()
    model = auto.from_pretrained(path, dtype=torch.bfloat16, **quant.resolve(level).kwargs())
    ids = torch.randint(20, 500, (1, 16))
    with torch.no_grad():
        assert _cosine(reference(ids).logits[0, -1], model(ids).logits[0, -1]) >= 0.99


CPU_LEVELS = [
    name for name in ("int8-bf16", "int4-bf16", "int8-cpu") if quant.QUANTIZATIONS[name].probe().ok
]


@pytest.mark.parametrize("build", ["lfm2-vl-tiny", "lfm2-moe-tiny"])
@pytest.mark.parametrize("level", CPU_LEVELS)
def test_cpu_levels_keep_the_next_token_logits(tiny_paths, build, level):
    """Quality guard for the levels auto picks on CPU: logits against fp32, cosine >= 0.99."""
    manager = ModelManager()
    ids = torch.randint(20, 500, (1, 16))
    logits = {}
    for name in ("fp32", level):
        manager.load(build, name)
        with torch.no_grad():
            logits[name] = manager.current().model(ids).logits[0, -1].float()
    manager.unload()
    assert _cosine(logits["fp32"], logits[level]) >= 0.99


def test_int8_bf16_reads_an_image(bnb_manager):
    """Where the CPU computes in bf16: the image path works, the vision tower stays bf16.
    Elsewhere (a GPU, or a CPU without bf16 arithmetic) the level is refused with the reason."""
    from PIL import Image

    from lfmui import engine, prompts
    from lfmui.errors import QuantizationUnavailable
    from lfmui.quant.cpu_weights import QuantLinear

    if "int8-bf16" not in CPU_LEVELS:
        with pytest.raises(QuantizationUnavailable, match="bf16 arithmetic|a CPU level"):
            bnb_manager.load("lfm2-vl-tiny", "int8-bf16")
        return
    bnb_manager.load("lfm2-vl-tiny", "int8-bf16")
    model = bnb_manager.current().model
    tower = [m for m in model.model.vision_tower.modules() if isinstance(m, torch.nn.Linear)]
    assert tower and next(model.model.vision_tower.parameters()).dtype == torch.bfloat16
    assert isinstance(model.lm_head, QuantLinear)
    picture = Image.effect_noise((300, 200), 60).convert("RGB")
    content = [{"type": "image", "image": picture}, {"type": "text", "text": "What is it?"}]
    with bnb_manager.lease() as loaded:
        inputs = prompts.build_inputs(loaded, [{"role": "user", "content": content}])
        events = list(engine.stream(loaded, inputs, engine.Settings(max_new_tokens=6)))
    assert events[-1].kind == "done", events[-1].data


def test_a_quantized_decode_step_has_no_host_sync_and_few_more_ops(tiny_paths):
    """On the 8B's layout: at int8 and nf4, at most 2 host syncs per decoded token (there are
    none) and at most 1.2x bf16's operations."""
    manager = ModelManager()
    manager.catalog.show_all()
    counts = {}
    for level in ["bf16", *BNB_LEVELS]:
        manager.load("lfm2-moe-replica", level)
        with manager.lease() as loaded:
            counts[level] = cases.decode_step_ops(loaded)
    manager.unload()
    assert counts["bf16"].ops > 1000  # a real forward was counted
    for level in BNB_LEVELS:
        assert counts[level].syncs <= 2, counts[level].by_name
        assert counts[level].ops <= 1.2 * counts["bf16"].ops


def test_cpu_int8_level_shrinks_and_generates(tiny_paths):
    from lfmui import engine, prompts

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
    packed = [n for n, m in loaded.model.named_modules() if hasattr(m, "_packed_params")]
    assert packed and not any(_is_vision(n) for n in packed)
    inputs = prompts.build_inputs(loaded, [{"role": "user", "content": "hello"}])
    events = list(engine.stream(loaded, inputs, engine.Settings(max_new_tokens=6)))
    assert events[-1].kind == "done"
    manager.unload()


def test_item36_cpu_int8_level_is_refused_on_cuda(monkeypatch):
    monkeypatch.setattr(quant, "cuda_available", lambda: True)
    assert not quant.QUANTIZATIONS["int8-cpu"].probe().ok


def test_item36_without_bitsandbytes_the_levels_say_why(monkeypatch):
    """A machine without the bitsandbytes package: int8 and nf4 are listed unavailable with the
    install command, and asking for them is a clear error."""
    import importlib.util

    from lfmui.errors import QuantizationUnavailable

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "bitsandbytes" else real_find_spec(name, *args),
    )
    table = {row["name"]: row for row in quant.availability_table()}
    for name in BNB_LEVELS:
        assert not table[name]["available"]
        assert table[name]["reason"] == "needs the bitsandbytes package: pip install bitsandbytes"
        with pytest.raises(QuantizationUnavailable, match="pip install bitsandbytes"):
            quant.resolve(name)
    assert table["bf16"]["available"] and table["fp32"]["available"]


def test_bitsandbytes_that_cannot_run_is_found_before_loading(monkeypatch):
    """The probe runs bitsandbytes once on this device: a broken native library or a device
    without kernels is a reason, not a failed load."""
    import bitsandbytes.functional

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel for this device")

    quant._bitsandbytes_fails.cache_clear()
    monkeypatch.setattr(bitsandbytes.functional, "quantize_4bit", broken)
    try:
        reason = quant.QUANTIZATIONS["nf4"].probe().reason
        assert reason == "bitsandbytes cannot run here (RuntimeError: no kernel for this device)"
    finally:
        monkeypatch.undo()
        quant._bitsandbytes_fails.cache_clear()
    assert quant.QUANTIZATIONS["nf4"].probe().ok  # a working bitsandbytes is found again


def test_a_quantized_load_that_fails_keeps_the_previous_model(vl_manager, monkeypatch):
    """bitsandbytes failing inside the load (past the probe): a clear error, and the previous
    model is loaded again and answers."""
    from lfmui.errors import ModelLoadError

    def broken(kind, linear_op, input_dict, model, kwargs):
        raise RuntimeError("bitsandbytes kernel failed")

    monkeypatch.setattr(moe, "_convert", broken)
    with pytest.raises(ModelLoadError, match="previous model .*lfm2-vl-tiny.* is loaded again"):
        vl_manager.load("lfm2-moe-tiny", "nf4")
    assert vl_manager.current().spec.id == "lfm2-vl-tiny"
    assert vl_manager.current().quantization == "fp32"


def test_every_level_says_what_it_is_in_plain_words_in_the_models_table(vl_manager):
    from lfmui.ui.model_cards import quantization_table

    shown = quantization_table(vl_manager, "lfm2-vl-tiny")
    for level in quant.QUANTIZATIONS.values():
        assert level.plain and "bitsandbytes" not in level.plain  # no jargon in the line
        assert f"**{level.label}**: {level.plain}" in shown


def test_the_models_table_says_what_the_catalog_knows_before_a_load(vl_manager):
    """Picked in the Models tab, a model shows where it comes from (its pinned commit, or what
    an offline build stands in for), how it reads images and its card's sampling."""
    from lfmui.ui.model_cards import quantization_table

    pinned = quantization_table(vl_manager, "LFM2.5-8B-A1B")
    assert "`LiquidAI/LFM2.5-8B-A1B` at commit `feb5e04`" in pinned
    assert "thinks before answering" in pinned and "top_k 80" in pinned
    current = quantization_table(vl_manager, "LFM2.5-VL-450M")
    assert "`main` (not pinned)" in current and "images: 32-256 tokens each" in current
    tiny = quantization_table(vl_manager, "lfm2-vl-tiny")
    assert "random weights" in tiny and "stands in for `LiquidAI/LFM2-VL-450M`" in tiny
    assert "no thumbnail" in tiny
