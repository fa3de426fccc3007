"""The benchmark cases that measure lfmui alone: each ``run_*`` prints JSON lines (``emit``)
and returns an exit code. What each case measures: docs/benchmarks.md."""

from __future__ import annotations

import contextlib
import functools
import json
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from lfmui import calibrate, compiled, engine, memory, prompts, quant, worker
from lfmui.bench import meters
from lfmui.catalog import Catalog
from lfmui.errors import LfmuiError
from lfmui.manager import GIB, ModelManager, memory_report


def emit(record: dict[str, Any]) -> None:
    """One JSON line; a CPU figure carries the CPU it came from (name, cores, instruction sets:
    speed differs between CPU classes)."""
    if not quant.cuda_available():
        record = {**record, "cpu": calibrate.cpu_model(), "cpu_flags": calibrate.cpu_flags()}
        if quant.isa_caps():  # the CPU used as a narrower one (quant.ISA_CAPS)
            record["isa_caps"] = quant.isa_caps()
    print(json.dumps(record), flush=True)


def _smoke_generate(manager: ModelManager, new_tokens: int) -> dict[str, Any]:
    with manager.lease() as loaded:
        conversation = [
            {"role": "user", "content": [{"type": "text", "text": "Hello, who are you?"}]}
        ]
        inputs = prompts.build_inputs(loaded, conversation)
        settings = engine.Settings(max_new_tokens=new_tokens, temperature=0.0)
        # Force exactly new_tokens tokens: random weights may emit <|im_end|> early.
        extra = {"min_new_tokens": new_tokens}
        metrics: dict[str, Any] = {}
        for event in engine.stream(loaded, inputs, settings, extra_generate_kwargs=extra):
            if event.kind == "metrics":
                metrics = event.data
            elif event.kind == "error":
                raise RuntimeError(event.data)
    rate = metrics.get("decode_tokens_per_s")
    return {
        "ttft_s": metrics.get("ttft_s"),
        "eager_ms_per_token": round(1000 / rate, 2) if rate else None,
        "generated_tokens": metrics.get("generated_tokens"),
    }


def _load(
    manager: ModelManager, model_id: str, level: str, tensors: bool | None = None
) -> dict[str, Any]:
    """Load through the manager (the app's path) and report its status with the load's peak
    (above what is allocated with no model resident: a switch's freeing is not counted).
    On CPU the tensor peak comes from the profiler, whose event records themselves take memory
    (a VL-450M int8-cpu load: RSS peak 6.2 GiB under it, 3.4 without), so it is metered only
    where asked (`tensors`; default: on CUDA, where the allocator's counters cost nothing)."""
    manager.unload()
    tensors = quant.cuda_available() if tensors is None else tensors
    with meters.rss_peak() as rss, meters.tensor_peak() if tensors else _nothing() as peak:
        status = manager.load(model_id, level)
    return {
        **status,
        "load_peak_bytes": peak.bytes if peak else None,
        "load_peak_gib": _gib(peak.bytes) if peak else None,
        "load_peak_rss_bytes": rss.bytes,
        "load_peak_rss_gib": _gib(rss.bytes) if rss.bytes else None,
    }


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield None


def run_loads(models: list[str], levels: list[str], new_tokens: int) -> int:
    catalog = Catalog()
    catalog.show_all()
    manager = ModelManager(catalog)
    failures = 0
    for model_id in models:
        for level in levels:
            record: dict[str, Any] = {"case": "load", "model": model_id, "quantization": level}
            try:
                status = _load(manager, model_id, level)
                memory = memory_report(manager.current())
                record.update(
                    ok=True,
                    resolved=status["quantization"],
                    device=status["device"],
                    resident_gib=round(status["resident_bytes"] / GIB, 3),
                    load_peak_gib=status["load_peak_gib"],
                    load_peak_rss_gib=status["load_peak_rss_gib"],
                    load_s=status["load_seconds"],
                    cuda_allocated_gib=_gib(memory.get("cuda_allocated_bytes")),
                    cuda_peak_gib=_gib(memory.get("cuda_peak_bytes")),
                    rss_gib=_gib(memory.get("rss_bytes")),
                )
                record.update(_smoke_generate(manager, new_tokens))
            except (LfmuiError, RuntimeError) as exc:
                failures += 1
                record.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:300])
            emit(record)
        manager.unload()
    return 1 if failures else 0


def median(values: list[float]) -> float:
    return statistics.median(values)


def _plain_generate(loaded, inputs, new_tokens: int, extra: dict[str, Any]) -> float:
    """Seconds for plain model.generate, run on the engine's generation thread: torch work on
    a second thread starts a second OpenMP team, and on 2 cores the two teams' spinning slowed
    both the engine and plain generate by about 40% when they took turns."""
    import torch

    def run() -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            out = loaded.model.generate(
                **inputs,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                **compiled.prepared(extra),
            )
        out.cpu()
        if loaded.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    return worker.generation_worker().submit(run).result()


def engine_generate(loaded, inputs, new_tokens: int) -> tuple[float, float]:
    """(TTFT, total seconds) of one engine call, as a streaming consumer sees them."""
    settings = engine.Settings(max_new_tokens=new_tokens, temperature=0.0)
    started = time.perf_counter()
    first = None
    for event in engine.stream(
        loaded, inputs, settings, extra_generate_kwargs={"min_new_tokens": new_tokens}
    ):
        if event.kind == "text" and first is None:
            first = time.perf_counter() - started
        elif event.kind == "metrics":
            # first token id reached the consumer, counted from the call (thread handoff too)
            first = event.data["queue_wait_s"] + event.data["ttft_s"]
        elif event.kind == "error":
            raise RuntimeError(event.data)
    return first, time.perf_counter() - started


def warm_manager(model_id: str, level: str) -> tuple[ModelManager, dict[str, Any]]:
    """A manager over the whole catalog (synthetic builds too) with `model_id` loaded, warm."""
    catalog = Catalog()
    catalog.show_all()
    manager = ModelManager(catalog, **compiled.LIFECYCLE)
    return manager, _load(manager, model_id, level)


def _image_question(size: int) -> list[dict[str, Any]]:
    """The seed benchmark's message: one noise image of size x size and a short question."""
    from PIL import Image

    image = Image.effect_noise((size, size), 64).convert("RGB")
    content = [{"type": "image", "image": image}, {"type": "text", "text": "Describe this image."}]
    return [{"role": "user", "content": content}]


def text_question(loaded, tokens: int) -> list[dict[str, Any]]:
    """A user message of about `tokens` prompt tokens (the text-model case)."""
    words = "The quick brown fox jumps over the lazy dog while the model reads on. "
    text = words
    while len(loaded.tokenizer(text, add_special_tokens=False).input_ids) < tokens - 20:
        text += words
    return [{"role": "user", "content": text + "Summarize this."}]


def run_seed(
    model_id: str, level: str, new_tokens: int, repeats: int, size: int, prompt_tokens: int = 512
) -> int:
    """The seed case for a VL model (one image), the text case for a text model (a prompt of
    `prompt_tokens`): engine and plain generate, interleaved, in the same process."""
    manager, status = warm_manager(model_id, level)
    with manager.lease() as loaded:
        is_vl = loaded.spec.kind == "vl"
        conversation = _image_question(size) if is_vl else text_question(loaded, prompt_tokens)
        prepared = time.perf_counter()
        inputs = prompts.build_inputs(loaded, conversation)
        preprocess_s = time.perf_counter() - prepared
        extra, note = compiled.decode_plan(loaded)
        plain_ttft, plain_total, eng_ttft, eng_total = [], [], [], []
        with meters.rss_peak() as generating:
            _plain_generate(loaded, inputs, new_tokens, extra)  # warm the prefill shapes too
            for _ in range(repeats):
                plain_ttft.append(_plain_generate(loaded, inputs, 1, extra))
                plain_total.append(_plain_generate(loaded, inputs, new_tokens, extra))
                ttft, total = engine_generate(loaded, inputs, new_tokens)
                eng_ttft.append(ttft)
                eng_total.append(total)
        plain_ms = [
            (t - f) * 1000 / (new_tokens - 1) for t, f in zip(plain_total, plain_ttft, strict=True)
        ]
        eng_ms = [
            (t - f) * 1000 / (new_tokens - 1) for t, f in zip(eng_total, eng_ttft, strict=True)
        ]
        record = {
            "case": "seed" if is_vl else "text",
            "model": model_id,
            "quantization": level,
            "resolved": status["quantization"],  # what "auto" picked here
            "device": loaded.device,
            "decode": note,
            "input_tokens": int(inputs["input_ids"].shape[-1]),
            "image_size": f"{size}x{size}" if is_vl else None,
            "new_tokens": new_tokens,
            "repeats": repeats,
            "preprocess_ms": round(preprocess_s * 1000, 1),
            "engine_ttft_ms": round(median(eng_ttft) * 1000, 2),
            "plain_ttft_ms": round(median(plain_ttft) * 1000, 2),
            "engine_ms_per_token": round(median(eng_ms), 3),
            "engine_ms_per_token_p90": round(sorted(eng_ms)[int(0.9 * (len(eng_ms) - 1))], 3),
            "plain_ms_per_token": round(median(plain_ms), 3),
            "resident_gib": round(status["resident_bytes"] / GIB, 3),
            "load_peak_gib": status["load_peak_gib"],
            "load_peak_rss_gib": status["load_peak_rss_gib"],
            "load_s": status["load_seconds"],
            # the RSS high-water mark of the load and of the generation: what a 16 GB Space
            # must hold (None where /proc cannot tell)
            "peak_rss_gib": _gib(max(status["load_peak_rss_bytes"], generating.bytes)) or None,
        }
        record["engine_over_plain_speed"] = round(
            record["plain_ms_per_token"] / record["engine_ms_per_token"], 3
        )
        record["ttft_delta_ms"] = round(record["engine_ttft_ms"] - record["plain_ttft_ms"], 2)
        memory = memory_report(loaded)
        record["peak_gib"] = _gib(memory.get("cuda_peak_bytes"))  # CUDA: peak allocated
        record["rss_gib"] = _gib(memory.get("rss_bytes"))  # the process, CPU or CUDA
    emit(record)
    manager.unload()
    return 0


def run_presets(model_id: str, level: str, repeats: int, size: int) -> int:
    """TTFT and image tokens of one image and question at each tiling preset (and the model's
    defaults), through the app's own turn (processor, engine)."""
    from lfmui import tiling, turns

    manager, _ = warm_manager(model_id, level)
    conversation = _image_question(size)
    loaded = manager.current()
    thumbnail = tiling.Tiling.from_processor(loaded.processor).use_thumbnail
    cases = {"model default": None}
    cases.update({n: asdict(tiling.preset(n, use_thumbnail=thumbnail)) for n in tiling.PRESETS})
    settings = {"max_new_tokens": 8, "temperature": 0.0}
    for name, cut in cases.items():
        runs = []
        for _ in range(repeats + 1):  # the first run warms this shape
            metrics = {}
            for event in turns.chat_turn(manager, conversation, settings=settings, tiling=cut):
                if event.kind == "metrics":
                    metrics = event.data
            runs.append(metrics)
        runs = runs[1:]
        emit(
            {
                "case": "presets",
                "model": model_id,
                "quantization": level,
                "device": loaded.device,
                "image_size": f"{size}x{size}",
                "preset": name,
                "image_tokens": runs[0]["image_tokens"],
                "prompt_tokens": runs[0]["prompt_tokens"],
                "preprocess_ms": round(median([r["preprocess_s"] for r in runs]) * 1000, 1),
                "ttft_ms": round(median([r["ttft_s"] for r in runs]) * 1000, 1),
                "ttft_with_preprocess_ms": round(
                    median([r["ttft_s"] + r["preprocess_s"] for r in runs]) * 1000, 1
                ),
                "repeats": repeats,
            }
        )
    manager.unload()
    return 0


def decode_step_ops(loaded, prompt_tokens: int = 16) -> meters.OpCount:
    """Operations and host syncs of the model's forward for one new token (after a prompt)."""
    import torch

    model = loaded.model
    ids = torch.randint(20, 500, (1, prompt_tokens), device=model.device)
    with torch.inference_mode():
        for _ in range(2):  # the first step warms lazily built state (rotary caches, kernels)
            out = model(ids, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
            with meters.count_ops() as count:
                model(token, past_key_values=out.past_key_values, use_cache=True)
    return count


def run_ops(models: list[str], levels: list[str]) -> int:
    catalog = Catalog()
    catalog.show_all()
    manager = ModelManager(catalog)
    for model_id in models:
        bf16_ops = None
        for level in levels:
            status = _load(manager, model_id, level, tensors=True)
            with manager.lease() as loaded:
                count = decode_step_ops(loaded)
            bf16_ops = count.ops if level == "bf16" else bf16_ops
            emit(
                {
                    "case": "ops",
                    "model": model_id,
                    "quantization": level,
                    "device": status["device"],
                    "ops_per_token": count.ops,
                    "syncs_per_token": count.syncs,
                    "ops_over_bf16": round(count.ops / bf16_ops, 3) if bf16_ops else None,
                    "resident_gib": round(status["resident_bytes"] / GIB, 4),
                    "load_peak_gib": status["load_peak_gib"],
                    "load_peak_over_resident": round(
                        status["load_peak_bytes"] / status["resident_bytes"], 3
                    ),
                    "top_ops": dict(count.by_name.most_common(6)),
                }
            )
        manager.unload()
    return 0


def _gib(value: int | None) -> float | None:
    return round(value / GIB, 3) if value is not None else None


def run_calibrate(models: list[str]) -> int:
    """What auto's calibration measures for each model here, measured afresh (not cached):
    ms per decoded token of its matmuls at every level that runs here."""
    catalog = Catalog()
    catalog.show_all()
    for model_id in models:
        config = memory.config_of(catalog.get(model_id))
        levels = [level for level in quant.QUANTIZATIONS.values() if level.probe().ok]
        started = time.perf_counter()
        figures = calibrate.measure(calibrate.decode_shapes(config), levels)
        emit(
            {
                "case": "calibrate",
                "model": model_id,
                "ms_per_token": figures,
                "tokens_per_s": {k: calibrate.tokens_per_s(v) for k, v in figures.items()},
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
    return 0


def run_kernels(repeats: int, n: int = 4096, k: int = 2048) -> int:
    """One decode row through an [n, k] weight with each CPU kernel lfmui could use: torch's
    packed int8 and int4 kernels with bf16 and with fp32 activations, fbgemm's dynamic int8,
    and the plain Linear, in ms (the median of `repeats` x 10 calls)."""
    import torch

    from lfmui.quant import cpu_weights

    weight = torch.randn(n, k)
    row = torch.randn(1, k)
    kernels = {"fp32 Linear": lambda: torch.nn.functional.linear(row, weight)}
    for dtype in (torch.bfloat16, torch.float32):
        for name, packing in cpu_weights.PACKINGS.items():
            q, scales = packing.pack(weight.to(dtype))
            kernels[f"{name} packed, {str(dtype)[6:]} activations"] = functools.partial(
                packing.kernel, row.to(dtype), q, scales
            )
    dynamic = cpu_weights.dynamic_int8(weight)
    kernels["dynamic int8 (int8-cpu)"] = lambda: torch.ops.quantized.linear_dynamic(row, dynamic)
    if hasattr(torch.ops.aten, "_dyn_quant_matmul_4bit"):  # KleidiAI's on ARM, else a fallback
        packed = _dyn_quant_4bit(weight, cpu_weights.GROUP)
        kernels["dynamic int4 (_dyn_quant_matmul_4bit)"] = functools.partial(
            torch.ops.aten._dyn_quant_matmul_4bit, row, packed, cpu_weights.GROUP, k, n
        )
    figures = {}
    for name, kernel in kernels.items():
        kernel()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(10):
                kernel()
            times.append((time.perf_counter() - started) / 10)
        figures[name] = round(median(times) * 1000, 3)
    kleidiai = getattr(getattr(torch.backends, "kleidiai", None), "is_available", lambda: False)
    emit({"case": "kernels", "shape": [n, k], "ms": figures, "kleidiai": kleidiai()})
    return 0


def _dyn_quant_4bit(weight: Any, group: int) -> Any:
    """An [n, k] fp32 weight as torch's dynamic 4-bit matmul takes it: symmetric int4 in
    groups along K, two to a byte, packed by torch."""
    import torch

    n, k = weight.shape
    groups = weight.reshape(n, k // group, group)
    scales = (groups.abs().amax(-1) / 7).clamp(min=1e-8)
    q = (torch.round(groups / scales[..., None]).clamp(-8, 7) + 8).to(torch.uint8).reshape(n, k)
    two = (q[:, 1::2] << 4 | q[:, ::2]).contiguous()
    return torch.ops.aten._dyn_quant_pack_4bit_weight(two, scales, None, group, k, n)
