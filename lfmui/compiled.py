"""Compiled decode, where it pays (CUDA; on CPU only when LFMUI_CPU_COMPILE names a backend):
``decode_plan`` says whether a reply compiles and why not, every compiled reply decodes into
the model's one static cache (``static_cache``, emptied by ``prepared``), ``warm_up`` compiles
at load time and ``forget_compiled`` drops what a gone model compiled (``LIFECYCLE``: what the
ModelManager calls as a model arrives and leaves).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any

from lfmui import prompts
from lfmui.worker import generation_worker

log = logging.getLogger(__name__)
STATIC_CACHE_LEN = 8192  # one static cache size for all requests: the compiled decode is reused
COMPILED_LEVELS = ("bf16", "fp16", "fp32")  # plain torch layers; quantized ones do not compile
# Inputs generate() hands every decode step that only the prefill reads. transformers drops
# pixel_values and pixel_attention_mask after the prefill; LFM2-VL's spatial_shapes it forwards
# on every step, so a compiled decode recompiles on the first image reply.
PREFILL_ONLY = ("spatial_shapes",)


def decode_plan(loaded: Any, tokens: int = 0) -> tuple[dict[str, Any], str]:
    """Extra generate() kwargs for compiled decode where it pays, and a note saying which.

    Compiled decode reuses the model's one static cache (``static_cache``), reset for each
    request by ``prepared``; a request whose prompt and new tokens (`tokens`) would pass the
    cache's length decodes eagerly instead. On CPU it is off unless LFMUI_CPU_COMPILE names a
    torch.compile backend (e.g. eager, inductor): the CUDA path, rehearsed on CPU."""
    cpu_backend = os.environ.get("LFMUI_CPU_COMPILE", "").strip()
    if loaded.device != "cuda" and not cpu_backend:
        return {}, "eager decode: torch.compile does not pay on CPU"
    if os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true"):
        return {}, "eager decode: on ZeroGPU each new GPU worker would compile again"
    if loaded.quantization not in COMPILED_LEVELS:
        return {}, f"eager decode: {loaded.quantization} layers do not compile"
    if loaded.quantization == "fp16" and getattr(loaded.model.config, "num_experts", None):
        # transformers' grouped experts fall back to a loop that reads expert counts on the
        # host (.tolist()) for anything but bf16: CUDA graphs cannot capture it
        return {}, "eager decode: fp16 experts do not compile (bf16 does)"
    if tokens > STATIC_CACHE_LEN:
        return {}, f"eager decode: this reply may pass the static cache's {STATIC_CACHE_LEN} tokens"
    kwargs: dict[str, Any] = {"past_key_values": static_cache(loaded)}
    if loaded.device != "cuda":
        from transformers import CompileConfig

        config = CompileConfig(backend=cpu_backend, mode="default")
        config._compile_all_devices = True  # transformers compiles on accelerators only, else
        kwargs["compile_config"] = config
    return kwargs, "compiled decode: static cache + torch.compile"


def static_cache(loaded: Any) -> Any:
    """The model's one static cache, made on first use: every compiled request decodes into
    the same tensors, so the compiled step (and its CUDA graph) never sees a new address."""
    if loaded.static_cache is None:
        from transformers import StaticCache

        text = loaded.model.config.get_text_config(decoder=True)
        loaded.static_cache = StaticCache(config=text, max_cache_len=STATIC_CACHE_LEN)
    return loaded.static_cache


def prepared(plan: dict[str, Any]) -> dict[str, Any]:
    """`plan`, its static cache emptied for the next request: called on the thread that runs
    generate(), right before it (another request may still be decoding into it until then)."""
    cache = plan.get("past_key_values")
    if cache is not None:
        cache.reset()
    return plan


def trim_decode_inputs(model: Any) -> None:
    """Drop the prefill-only inputs (PREFILL_ONLY) from every decode step of `model`."""
    prepare = model.prepare_inputs_for_generation
    if getattr(prepare, "trims_decode_inputs", False):
        return

    @functools.wraps(prepare)  # generate() reads its signature to check the inputs it gets
    def prepare_inputs(*args: Any, **kwargs: Any) -> dict[str, Any]:
        inputs = prepare(*args, **kwargs)
        if inputs.get("pixel_values") is None:  # a decode step
            for name in PREFILL_ONLY:
                inputs.pop(name, None)
        return inputs

    prepare_inputs.trims_decode_inputs = True  # type: ignore[attr-defined]
    model.prepare_inputs_for_generation = prepare_inputs


def warm_up(loaded: Any) -> str:
    """Compile the decode step at load time so the first user does not pay for it: a text
    request, and for a vision model an image request too (its prefill differs)."""
    trim_decode_inputs(loaded.model)
    extra, note = decode_plan(loaded)
    if not extra:
        log.info("%s: %s", loaded.spec.id, note)
        return note
    import torch
    from PIL import Image

    requests = [[{"role": "user", "content": "Hello"}]]
    if loaded.spec.kind == "vl":
        picture = Image.new("RGB", (64, 64), "#2b6cb0")
        image = [{"type": "image", "image": picture}, {"type": "text", "text": "Hello"}]
        requests.append([{"role": "user", "content": image}])
    inputs = [prompts.build_inputs(loaded, request) for request in requests]

    def run() -> None:
        with torch.inference_mode():
            for each in (*inputs, inputs[0]):  # the last call checks the graph is reused
                loaded.model.generate(
                    **each, max_new_tokens=8, min_new_tokens=8, do_sample=False, **prepared(extra)
                )

    started = time.perf_counter()
    generation_worker().submit(run).result()  # compile on the thread that will generate
    log.info("%s: %s, warmed in %.1f s", loaded.spec.id, note, time.perf_counter() - started)
    return note


def forget_compiled(gone: Any, resident: list[Any]) -> None:
    """After `gone` left the pool: drop what dynamo compiled and the CUDA-graph trees, on the
    generation thread that recorded them, then compile the `resident` models' decode again.

    dynamo keys compiled code on code objects every model shares (transformers' forward
    wrapper), so a gone model's entries stay, count against the recompile limit, and past it
    every new model decodes eagerly without a word."""
    if gone.static_cache is None:  # it never compiled
        return
    gone.static_cache = None

    def reset() -> None:
        import torch

        torch._dynamo.reset()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            from torch._inductor import cudagraph_trees

            cudagraph_trees.reset_cudagraph_trees()

    generation_worker().submit(reset).result()
    for loaded in resident:
        if loaded.static_cache is not None:
            warm_up(loaded)


# what the manager calls as a model arrives and leaves: ModelManager(**compiled.LIFECYCLE)
LIFECYCLE = {"on_loaded": warm_up, "on_unloaded": forget_compiled}


def compiled_entries() -> int:
    """How many compiled entries dynamo holds, over every code object it has compiled."""
    from torch._dynamo import convert_frame
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    codes = [ref() for ref in convert_frame.input_codes.seen]
    return sum(len(_debug_get_cache_entry_list(code)) for code in codes if code is not None)
