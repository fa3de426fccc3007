"""lfmui.calibrate: CPU levels timed on this CPU, cached per CPU and torch, and followed by
auto."""

from __future__ import annotations

import json
import logging

import pytest

from lfmui import calibrate, memory, quant
from lfmui.catalog import Catalog
from lfmui.manager import ModelManager

pytestmark = pytest.mark.skipif(quant.cuda_available(), reason="the CPU levels' calibration")


def _config(model_id: str):
    catalog = Catalog()
    catalog.show_all()
    return memory.config_of(catalog.get(model_id))


def test_auto_follows_the_calibration(tiny_paths, monkeypatch):
    """A fake calibration where fp32, the slowest level, was measured fastest: auto picks it;
    with the order turned round, auto picks the other."""
    manager = ModelManager()
    for fastest in ("fp32", "int8-cpu"):
        figures = {lv.name: 50.0 for lv in quant.auto_levels()}
        figures[fastest] = 1.0
        monkeypatch.setattr(calibrate, "decode_ms", lambda config, *args, f=figures: f)
        assert manager.load("lfm2-vl-tiny", "auto")["quantization"] == fastest
    manager.unload()


def test_the_tiny_models_are_measured_once_and_then_read_from_the_cache(tiny_paths, monkeypatch):
    config = _config("lfm2-moe-tiny")
    calibrate.cache_file().unlink(missing_ok=True)
    figures = calibrate.decode_ms(config)
    runs_here = {lv.name for lv in quant.QUANTIZATIONS.values() if lv.probe().ok}
    assert set(figures) == runs_here and all(ms > 0 for ms in figures.values())
    saved = json.loads(calibrate.cache_file().read_text())
    assert saved["signature"] == calibrate.signature()
    monkeypatch.setattr(calibrate, "measure", lambda *a, **k: pytest.fail("measured again"))
    assert calibrate.decode_ms(config) == figures == calibrate.cached_ms(config)


def test_a_calibration_from_another_cpu_or_torch_is_ignored_and_redone(tiny_paths):
    """Bad input: the cache was written on another CPU (or torch). Its figures are not used;
    the levels are measured here and the cache rewritten for this CPU."""
    config = _config("lfm2-vl-tiny")
    key = calibrate._key(calibrate.decode_shapes(config))
    elsewhere = {"signature": "Other CPU (64 cores) [amx_bf16] torch 0.1", "models": {key: {}}}
    elsewhere["models"][key] = {"fp32": 0.001}
    calibrate.cache_file().parent.mkdir(parents=True, exist_ok=True)
    calibrate.cache_file().write_text(json.dumps(elsewhere))
    assert calibrate.cached_ms(config) == {}
    figures = calibrate.decode_ms(config)
    assert figures["fp32"] != 0.001 and len(figures) > 1
    assert json.loads(calibrate.cache_file().read_text())["signature"] == calibrate.signature()


def test_a_calibration_past_its_budget_is_cut_short_with_what_it_measured(caplog):
    """Bad input: a calibration that would take too long stops at its budget and returns the
    levels measured by then (here a budget of none: the first level only)."""
    shapes = calibrate.decode_shapes(_config("lfm2-vl-tiny"))
    levels = quant.auto_levels()
    with caplog.at_level(logging.INFO, logger="lfmui.calibrate"):
        figures = calibrate.measure(shapes, levels, budget_s=0.0)
    assert list(figures) == [levels[0].name]
    assert "calibration cut short" in caplog.text


def test_the_decode_shapes_are_the_models_own():
    """The shapes come from the model built on the meta device: every Linear of the text
    model once, and a mixture of experts' two products times the experts a token uses."""
    config = _config("lfm2-8b-a1b-synthetic")
    shapes = calibrate.decode_shapes(config)
    text = config.get_text_config()
    hidden, vocab = text.hidden_size, text.vocab_size
    assert shapes[(vocab, hidden)] == 1  # the LM head
    moe_layers = text.num_hidden_layers - text.num_dense_layers
    experts = (2 * text.moe_intermediate_size, hidden)
    assert shapes[experts] == moe_layers * text.num_experts_per_tok


def test_the_models_tab_shows_the_measured_speed_and_marks_a_slow_level(tiny_paths):
    from lfmui.ui.model_cards import quantization_table

    config = _config("lfm2-vl-tiny")
    key = calibrate._key(calibrate.decode_shapes(config))
    figures = {"fp32": 40.0, "int8-cpu": 800.0}  # 25 and 1.25 tokens/s
    saved = {"signature": calibrate.signature(), "models": {key: figures}}
    calibrate.cache_file().write_text(json.dumps(saved))
    manager = ModelManager()
    rows = {row["name"]: row for row in manager.levels("lfm2-vl-tiny")}
    assert rows["fp32"]["tokens_per_s"] == 25.0 and not rows["fp32"]["slow"]
    assert rows["int8-cpu"]["tokens_per_s"] == 1.2 and rows["int8-cpu"]["slow"]
    shown = quantization_table(manager, "lfm2-vl-tiny")
    assert "~25 tokens/s" in shown and "~1.2 tokens/s ⚠ slow" in shown
    calibrate.forget()
    assert manager.levels("lfm2-vl-tiny")[0]["tokens_per_s"] is None


def test_the_cpu_is_named_with_its_instruction_sets(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("model name\t: Some CPU\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm\n")
    assert calibrate.cpu_model(str(x86)).startswith("Some CPU (")
    assert calibrate.cpu_flags(str(x86)) == ["avx2", "avx512f", "avx512_bf16"]
    assert calibrate.cpu_flags(str(arm)) == ["asimd"]
    assert calibrate.cpu_model(str(tmp_path / "none")).startswith("unknown CPU")


def test_the_bench_prints_calibration_and_kernel_figures_with_the_cpu(tiny_paths, capsys):
    """`python -m lfmui.bench calibrate` and `kernels`: JSON lines, each naming the CPU and its
    instruction sets."""
    from lfmui.bench import cli

    assert cli.main(["calibrate", "--models", "lfm2-moe-tiny"]) == 0
    assert cli.main(["kernels", "--repeats", "1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    cases = {line["case"]: line for line in lines}  # and each run's summary line
    calibrated, kernels = cases["calibrate"], cases["kernels"]
    assert calibrated["case"] == "calibrate" and calibrated["ms_per_token"]["fp32"] > 0
    assert all(speed > 0 for speed in calibrated["tokens_per_s"].values())
    assert set(kernels["ms"]) >= {"fp32 Linear", "dynamic int8 (int8-cpu)"}
    assert "int4 packed, float32 activations" in kernels["ms"]
    # torch's dynamic 4-bit matmul (KleidiAI's on ARM): timed where this torch has it (2.14 does)
    assert kernels["ms"]["dynamic int4 (_dyn_quant_matmul_4bit)"] > 0
    assert isinstance(kernels["kleidiai"], bool)
    for line in lines:
        assert line["cpu"] == calibrate.cpu_model() and line["cpu_flags"] == calibrate.cpu_flags()


def test_the_dynamic_int4_weight_the_bench_times_computes_the_product():
    """The bench's figure for torch's dynamic 4-bit matmul is of a right answer: the weight as
    the bench packs it gives the fp32 product (cosine at least 0.99)."""
    import torch

    from lfmui.bench import cases

    torch.manual_seed(0)
    weight, row = torch.randn(256, 128), torch.randn(1, 128)
    packed = cases._dyn_quant_4bit(weight, 32)
    got = torch.ops.aten._dyn_quant_matmul_4bit(row, packed, 32, 128, 256)
    expected = row @ weight.t()
    assert torch.nn.functional.cosine_similarity(got, expected).item() >= 0.99


def test_a_model_whose_shapes_cannot_be_read_keeps_auto_in_its_static_order():
    """Bad input: a checkpoint whose config transformers cannot build here. No shapes, no
    figures: auto keeps its static order, and the load is not stopped by calibration."""
    import types

    odd = types.SimpleNamespace(to_json_string=lambda **_: '{"model_type": "not-a-model"}')
    assert calibrate.decode_shapes(odd) == {}
    assert calibrate.decode_ms(odd) == {}
    levels = quant.auto_levels()
    assert calibrate.fastest_first(levels, {}) == levels


@pytest.mark.parametrize(
    ("caps", "flags"),
    [
        ({}, ["avx2", "avx512f", "avx512_bf16", "amx_bf16"]),
        ({"ATEN_CPU_CAPABILITY": "avx2"}, ["avx2"]),
        ({"ONEDNN_MAX_CPU_ISA": "AVX2", "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"}, ["avx2"]),
        ({"ATEN_CPU_CAPABILITY": "default"}, []),
    ],
)
def test_an_isa_cap_makes_the_cpu_count_as_the_narrower_one(caps, flags, tmp_path, monkeypatch):
    """Under ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA / FBGEMM_ENABLE_INSTRUCTIONS set to AVX2,
    an AVX-512 CPU is used as an AVX2 one: its wider flags do not count, so the bf16 levels are
    not offered and auto picks among the rest; the bench and the calibration key name the caps."""
    x86 = tmp_path / "x86"
    x86.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16\n")
    for name in quant.ISA_CAPS:
        monkeypatch.delenv(name, raising=False)
    for name, value in caps.items():
        monkeypatch.setenv(name, value)
    quant.cpu_flags.cache_clear()
    try:
        assert calibrate.cpu_flags(str(x86)) == flags
        assert quant.isa_caps() == caps
    finally:
        quant.cpu_flags.cache_clear()
