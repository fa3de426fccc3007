"""The CPU weight packings (lfmui.quant.cpu_weights): the decode kernel and the prompt's unpack
agree, the int4 layout check, a kernel this torch lacks."""

from __future__ import annotations

import pytest
import torch

from lfmui import quant


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("packing", ["int8", "int4"])
def test_packed_decode_and_prefill_paths_agree(packing, dtype):
    """Each packing's CPU kernel (a few rows) and unpack + GEMM (a prompt) give one answer,
    close to the full-precision layer, computing in bf16 or in fp32 (CPUs without bf16)."""
    from lfmui.quant.cpu_weights import PACKINGS, QuantLinear

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
    from lfmui.quant import cpu_weights

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
    from lfmui.quant import cpu_weights

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
