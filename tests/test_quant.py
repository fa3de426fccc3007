"""Quantized levels on CPU, where bitsandbytes runs too: what stays unquantized, images through
int8 and nf4, the MoE experts quantized while loading, and a decode step without host syncs."""

from __future__ import annotations

import pytest
import torch

from lfmui import bench, meters, moe_quant, offline, quant
from lfmui.manager import ModelManager

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
    from lfmui.cpu_weights import QuantLinear
    from lfmui.errors import QuantizationUnavailable

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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("packing", ["int8", "int4"])
def test_packed_decode_and_prefill_paths_agree(packing, dtype):
    """Each packing's CPU kernel (a few rows) and unpack + GEMM (a prompt) give one answer,
    close to the full-precision layer, computing in bf16 or in fp32 (CPUs without bf16)."""
    from lfmui.cpu_weights import PACKINGS, QuantLinear

    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 512, bias=True)
    quantized = QuantLinear(linear.to(dtype), PACKINGS[packing])
    assert quantized.compute_dtype == dtype and quantized.scale.dtype == dtype
    linear = linear.float()
    rows = PACKINGS[packing].decode_rows
    x = torch.randn(rows + 4, 256)
    prompt = quantized(x)  # unpack + GEMM
    steps = torch.cat([quantized(x[i : i + 1]) for i in range(len(x))])  # the kernel
    torch.testing.assert_close(steps, prompt, rtol=0.02, atol=0.03)
    assert _cosine(prompt, linear(x)) >= (0.999 if packing == "int8" else 0.995)
    assert quantized.weight_q.dtype in (torch.int8, torch.uint8) and not hasattr(
        quantized, "weight"
    )
    kept = quantized.weight_q.numel() * quantized.weight_q.element_size()
    assert kept == 256 * 512 // (1 if packing == "int8" else 2)


def test_int4_layout_check_finds_a_layout_it_cannot_read(monkeypatch):
    """The int4 level unpacks torch's packed layout for prompts: a torch whose layout differs
    is found before loading, and the level says why instead of computing garbage."""
    from lfmui import cpu_weights

    assert cpu_weights.int4_fails() == ""
    assert cpu_weights.kernel_fails("int4", torch.float32) == ""
    monkeypatch.setattr(cpu_weights, "_BLOCK_N", 32)  # read the blocks the wrong way
    cpu_weights.kernel_fails.cache_clear()
    try:
        assert "layout" in cpu_weights.int4_fails()
        assert "layout" in cpu_weights.kernel_fails("int4", torch.float32)
    finally:
        cpu_weights.kernel_fails.cache_clear()


def test_a_level_whose_kernel_this_torch_lacks_says_so_and_auto_skips_it(monkeypatch):
    """Bad input: torch without the int8 CPU kernel for bf16 activations. The level is
    unavailable with the reason, and auto's candidates leave it out."""
    from lfmui import cpu_weights

    def missing(*args):
        raise RuntimeError("Could not run 'aten::_weight_int8pack_mm' with arguments")

    import dataclasses

    without = dataclasses.replace(cpu_weights.PACKINGS["int8"], kernel=missing)
    monkeypatch.setitem(cpu_weights.PACKINGS, "int8", without)
    monkeypatch.setattr(quant, "cpu_computes_bf16", lambda: True)  # whatever CPU runs this
    monkeypatch.setattr(quant, "cuda_available", lambda: False)
    cpu_weights.kernel_fails.cache_clear()
    probe = quant.QUANTIZATIONS["int8-bf16"].probe
    probe.cache_clear()
    try:
        said = probe()
        assert not said.ok and "torch's CPU int8 kernel cannot run here" in said.reason
        assert "int8-bf16" not in [level.name for level in quant.auto_levels()]
    finally:
        cpu_weights.kernel_fails.cache_clear()
        probe.cache_clear()


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
    experts = [m for m in model.modules() if isinstance(m, moe_quant.QuantizedExperts)]
    assert len(experts) == config.num_hidden_layers - config.num_dense_layers
    assert moe_quant.expert_modules(model) == []  # no full-precision 3-D expert weights left
    assert peak.bytes <= 1.3 * status["resident_bytes"]
    full = moe_quant.expert_modules(replica[1])
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
    assert isinstance(experts, moe_quant.QuantizedExperts)
    torch.manual_seed(0)
    x = torch.randn(6, model.config.hidden_size)
    top_k = torch.stack([torch.randperm(32)[:4] for _ in range(6)])
    weights = torch.rand(6, 4).softmax(-1)
    looped = experts._looped(x, top_k, weights)
    one_by_one = [experts(x[i, None], top_k[i, None], weights[i, None]) for i in range(6)]
    gathered = torch.cat(one_by_one)
    torch.testing.assert_close(gathered, looped, rtol=1e-4, atol=1e-5)
    assert _cosine(looped, full(x, top_k, weights)) >= (0.999 if level == "int8" else 0.97)


def test_a_quantized_decode_step_has_no_host_sync_and_few_more_ops(tiny_paths):
    """On the 8B's layout: at int8 and nf4, at most 2 host syncs per decoded token (there are
    none) and at most 1.2x bf16's operations."""
    manager = ModelManager()
    manager.catalog.show_all()
    counts = {}
    for level in ["bf16", *BNB_LEVELS]:
        manager.load("lfm2-moe-replica", level)
        with manager.lease() as loaded:
            counts[level] = bench.decode_step_ops(loaded)
    manager.unload()
    assert counts["bf16"].ops > 1000  # a real forward was counted
    for level in BNB_LEVELS:
        assert counts[level].syncs <= 2, counts[level].by_name
        assert counts[level].ops <= 1.2 * counts["bf16"].ops


def test_the_memory_meters_see_a_transient_allocation():
    """What a block allocates and frees again still counts as its peak."""
    from lfmui.heap import process_rss

    before = process_rss()
    with meters.rss_peak() as rss, meters.tensor_peak("cpu") as peak:
        kept = torch.ones(4 * 2**20, dtype=torch.uint8)
        transient = torch.ones(64 * 2**20, dtype=torch.uint8)
        del transient
    assert 68 * 2**20 <= peak.bytes < 70 * 2**20
    assert rss.bytes >= before + 60 * 2**20
    assert kept.sum() == kept.numel()


def test_the_op_counter_sees_host_syncs():
    """The meter itself: the loop transformers' eager experts use is counted as syncing."""
    mask = torch.tensor([[1, 0], [0, 1]])
    with meters.count_ops() as count:
        for expert in mask.sum(0).nonzero().flatten().tolist():
            torch.where(mask[:, expert])
    assert count.syncs == 1 + 1 + 2  # nonzero, tolist, and a nonzero inside each where


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

    monkeypatch.setattr(moe_quant, "_convert", broken)
    with pytest.raises(ModelLoadError, match="previous model .*lfm2-vl-tiny.* is loaded again"):
        vl_manager.load("lfm2-moe-tiny", "nf4")
    assert vl_manager.current().spec.id == "lfm2-vl-tiny"
    assert vl_manager.current().quantization == "fp32"


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

    from lfmui.cpu_weights import QuantExperts

    path, reference = replica
    with meters.tensor_peak("cpu") as peak:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, quantization_config=moe_quant.experts_config(packing)
        )
    config = model.config
    experts = [m for m in model.modules() if isinstance(m, QuantExperts)]
    assert len(experts) == config.num_hidden_layers - config.num_dense_layers
    assert {(m.packing.name, m.compute_dtype) for m in experts} == {(packing, dtype)}
    assert moe_quant.expert_modules(model) == []
    assert all(type(m) is torch.nn.Linear for m in [model.lm_head])  # Linears load as they are
    kept = sum(b.numel() * b.element_size() for b in model.buffers())
    kept += sum(p.numel() * p.element_size() for p in model.parameters())
    assert peak.bytes <= 1.3 * kept
    full = moe_quant.expert_modules(reference)
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
    packs = moe_quant.experts_config("dynamic-int8", quant.should_quantize)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, quantization_config=packs
    )
    converted = [n for n, m in reference.named_modules() if type(m) is torch.nn.Linear]
    converted = [n for n in converted if quant.should_quantize(n) and n != "lm_head"]
    assert converted  # attention, conv and dense FFN projections
    for name in converted:
        assert type(model.get_submodule(name)) is DynamicLinear, name
    assert type(model.lm_head) is torch.nn.Linear  # tied: the level's post-load step takes it
    assert not [m for m in model.modules() if hasattr(m, "lfmui_dynamic")]
    ids = torch.tensor([[1, 42, 17, 99, 3, 250, 8]])
    with torch.no_grad():
        got, expected = model(ids).logits[0, -1], reference(ids).logits[0, -1]
    assert _cosine(got, expected) >= 0.99


def test_every_level_says_what_it_is_in_plain_words_in_the_models_table(vl_manager):
    from lfmui.ui.models_tab import quantization_table

    shown = quantization_table(vl_manager, "lfm2-vl-tiny")
    for level in quant.QUANTIZATIONS.values():
        assert level.plain and "bitsandbytes" not in level.plain  # no jargon in the line
        assert f"**{level.label}**: {level.plain}" in shown
