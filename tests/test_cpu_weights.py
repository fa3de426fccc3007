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


@pytest.mark.parametrize("bias", [False, True])
def test_the_conv_step_is_transformers_convolution_in_a_few_ops(bias):
    """One new token through a depthwise causal convolution: the same output and the same
    updated state as transformers' F.conv1d over the cached window."""
    from transformers.models.lfm2 import modeling_lfm2

    from lfmui.quant.cpu_weights import conv_step

    torch.manual_seed(0)
    state, token = torch.randn(2, 64, 3), torch.randn(2, 64, 1)
    weight, shift = torch.randn(64, 3), torch.randn(64) if bias else None
    own_state, step_state = state.clone(), state.clone()
    update = modeling_lfm2.causal_conv1d_update  # transformers' own, even after a CPU load
    own = getattr(update, "lfmui_original", update)(token, own_state, weight, shift)
    stepped = conv_step(token, step_state, weight, shift)
    assert torch.allclose(stepped, own, atol=1e-6) and torch.equal(step_state, own_state)


@pytest.mark.parametrize("name", ["lfm2-vl-tiny", "lfm2-moe-tiny"])
def test_a_model_decodes_the_same_tokens_through_the_conv_step(name, tiny_paths, monkeypatch):
    """Greedy decoding of both tiny LFM2 kinds, fp32: with the conv step installed (as every
    CPU load does) the tokens and the logits are transformers' own."""
    import importlib

    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from lfmui.quant import cpu_weights

    auto = AutoModelForImageTextToText if name == "lfm2-vl-tiny" else AutoModelForCausalLM
    model = auto.from_pretrained(tiny_paths[name], dtype=torch.float32).eval()
    ids = torch.tensor([[1, 6, 300, 301, 302, 303, 7, 6]])

    def greedy():
        out = model.generate(
            ids,
            max_new_tokens=12,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
        return out.sequences, torch.stack(out.logits)

    modules = [importlib.import_module(m) for m in cpu_weights.CONV_MODULES]
    for module in modules:  # transformers' own first, whatever an earlier load installed
        own = module.causal_conv1d_update
        monkeypatch.setattr(module, "causal_conv1d_update", getattr(own, "lfmui_original", own))
    tokens, logits = greedy()
    cpu_weights.use_conv_step()
    assert all(hasattr(m.causal_conv1d_update, "lfmui_original") for m in modules)
    stepped_tokens, stepped_logits = greedy()
    assert torch.equal(stepped_tokens, tokens)
    assert torch.allclose(stepped_logits, logits, atol=1e-4)


def test_experts_are_packed_on_every_core_in_their_order(monkeypatch):
    """A load packs a layer's experts in one thread a core (torch's kernels let go of the GIL):
    the result is each expert's own packing, in the experts' order, as one thread makes it."""
    import threading

    import lfmui
    from lfmui.quant import cpu_weights

    torch.manual_seed(0)
    weights = torch.randn(6, 64, 96, dtype=torch.bfloat16)
    int8 = cpu_weights.PACKINGS["int8"]
    monkeypatch.setattr(lfmui, "usable_cores", lambda: 1)
    alone = cpu_weights.pack_experts(weights, int8)
    threads = set()

    def pack(expert):
        threads.add(threading.current_thread().name)
        return int8.pack(expert)

    monkeypatch.setattr(lfmui, "usable_cores", lambda: 3)
    spread = cpu_weights.each_expert(pack, weights)
    assert len(threads) > 1 and all(name.startswith("lfmui-pack") for name in threads)
    assert all(torch.equal(a, b) for a, b in zip(alone[0], [q for q, _ in spread], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(alone[1], [s for _, s in spread], strict=True))
    dynamic = cpu_weights.pack_experts_dynamic(weights)[1]
    assert len(dynamic) == 6
    for expert, packed in zip(weights, dynamic, strict=True):  # each its own, in order
        q, _ = torch.ops.quantized.linear_unpack(packed)
        own, _ = torch.ops.quantized.linear_unpack(cpu_weights.dynamic_int8(expert))
        assert torch.equal(q.int_repr(), own.int_repr())


def test_dynamic_int8_rounds_as_torch_quantizes_and_computes_close_to_fp32():
    """int8-cpu's weights, rounded by lfmui from one fp32 copy: within one step of
    torch.quantize_per_channel's, and the dynamic int8 product close to the fp32 one."""
    from lfmui.quant import cpu_weights

    torch.manual_seed(0)
    weight = torch.randn(384, 256, dtype=torch.bfloat16)
    packed = cpu_weights.dynamic_int8(weight)
    q, _ = torch.ops.quantized.linear_unpack(packed)
    absmax = weight.float().abs().amax(dim=1)
    zeros = torch.zeros(384, dtype=torch.int64)
    theirs = torch.quantize_per_channel(weight.float(), absmax / 127, zeros, 0, torch.qint8)
    steps = (q.int_repr().int() - theirs.int_repr().int()).abs()
    assert steps.max() <= 1 and (steps == 0).float().mean() > 0.99
    torch.testing.assert_close(q.q_per_channel_scales().float(), absmax / 127)
    x = torch.randn(3, 256)
    got = torch.ops.quantized.linear_dynamic(x, packed)
    assert _cosine(got, x @ weight.float().t()) >= 0.999
