"""Benchmarks: ``python -m lfmui.bench CASE [options]`` prints one JSON line per measurement.

Cases so far:
- ``loads``: every quantization level of each model through the ModelManager (the app's own load
  path): resident weight GiB, CUDA allocated/peak GiB, load seconds, and a short generation
  through the engine to show the loaded model runs (eager decode ms/token).

- ``seed``: the seed benchmark (one 1024x1024 image, a short prompt, 100 new tokens, greedy) through
  the app's engine and through plain ``model.generate`` with the same settings in the same process,
  interleaved: TTFT and decode ms/token (medians) of each and their ratio, resident and peak GiB.
  For a text model (LFM2-8B-A1B) the same with a 512-token text prompt (``"case": "text"``).
- ``presets``: one image (``--image-size``) and question at the model's default tiling and each
  preset (fast, balanced, detailed) through the app's chat turn: image tokens, TTFT.
- ``ops``: aten operations and host syncs of one decode step (the model's forward for one new
  token after a 16-token prompt), per level, and each level's operations against bf16's from the
  same run. Defaults to ``lfm2-moe-replica``, the 8B's 24-layer, 32-expert layout at tiny widths.

- ``llamacpp``: the peer on CPU. lfmui's engine at ``--levels`` (default auto) and llama.cpp at
  each ``--gguf`` level (Q8_0, Q4_0, F16; converted with llama.cpp's own tools from the same
  checkpoints), the same text prompt length, new tokens and cores, one after the other in one
  process: TTFT, decode ms/token and lfmui's ms/token over llama.cpp's (``lfmui.llamacpp``).

Every case that loads reports ``load_peak_rss_gib`` (the process's RSS high-water mark during
the load: what the kernel sees, checkpoint pages included) and ``load_peak_gib``: the
tensor-memory peak of the load above what was allocated before it, from CUDA's allocator
counters, or on CPU from torch's allocation events (``lfmui.meters``), which only ``ops``
records there (the profiler's records would swell the RSS the other cases report). ``seed``
adds ``peak_rss_gib``: the high-water mark of the load and of the generation together. The
bench loads on one thread (``HF_DEACTIVATE_ASYNC_LOAD=1``) so that the CPU meter sees every
allocation; transformers loads the quantized levels that way in any case.

Models default to the offline builds (tiny on CPU; ``--models`` picks full-shape synthetic ones).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lfmui import calibrate, engine, memory, meters, prompts, quant
from lfmui.catalog import Catalog
from lfmui.errors import LfmuiError
from lfmui.manager import GIB, ModelManager, memory_report


def _emit(record: dict[str, Any]) -> None:
    """One JSON line; a CPU figure carries the CPU it came from (name, cores, instruction sets:
    speed differs between CPU classes)."""
    if not quant.cuda_available():
        record = {**record, "cpu": calibrate.cpu_model(), "cpu_flags": calibrate.cpu_flags()}
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
            _emit(record)
        manager.unload()
    return 1 if failures else 0


def _median(values: list[float]) -> float:
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
                **engine.prepared(extra),
            )
        out.cpu()
        if loaded.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    return engine.generation_worker().submit(run).result()


def _engine_generate(loaded, inputs, new_tokens: int) -> tuple[float, float]:
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


def _warm_manager(model_id: str, level: str) -> tuple[ModelManager, dict[str, Any]]:
    """A manager over the whole catalog (synthetic builds too) with `model_id` loaded, warm."""
    catalog = Catalog()
    catalog.show_all()
    manager = ModelManager(catalog, **engine.LIFECYCLE)
    return manager, _load(manager, model_id, level)


def _image_question(size: int) -> list[dict[str, Any]]:
    """The seed benchmark's message: one noise image of size x size and a short question."""
    from PIL import Image

    image = Image.effect_noise((size, size), 64).convert("RGB")
    content = [{"type": "image", "image": image}, {"type": "text", "text": "Describe this image."}]
    return [{"role": "user", "content": content}]


def _text_question(loaded, tokens: int) -> list[dict[str, Any]]:
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
    manager, status = _warm_manager(model_id, level)
    with manager.lease() as loaded:
        is_vl = loaded.spec.kind == "vl"
        conversation = _image_question(size) if is_vl else _text_question(loaded, prompt_tokens)
        prepared = time.perf_counter()
        inputs = prompts.build_inputs(loaded, conversation)
        preprocess_s = time.perf_counter() - prepared
        extra, note = engine.decode_plan(loaded)
        plain_ttft, plain_total, eng_ttft, eng_total = [], [], [], []
        with meters.rss_peak() as generating:
            _plain_generate(loaded, inputs, new_tokens, extra)  # warm the prefill shapes too
            for _ in range(repeats):
                plain_ttft.append(_plain_generate(loaded, inputs, 1, extra))
                plain_total.append(_plain_generate(loaded, inputs, new_tokens, extra))
                ttft, total = _engine_generate(loaded, inputs, new_tokens)
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
            "engine_ttft_ms": round(_median(eng_ttft) * 1000, 2),
            "plain_ttft_ms": round(_median(plain_ttft) * 1000, 2),
            "engine_ms_per_token": round(_median(eng_ms), 3),
            "engine_ms_per_token_p90": round(sorted(eng_ms)[int(0.9 * (len(eng_ms) - 1))], 3),
            "plain_ms_per_token": round(_median(plain_ms), 3),
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
    _emit(record)
    manager.unload()
    return 0


def run_presets(model_id: str, level: str, repeats: int, size: int) -> int:
    """TTFT and image tokens of one image and question at each tiling preset (and the model's
    defaults), through the app's own turn (processor, engine)."""
    from lfmui import tiling, turns

    manager, _ = _warm_manager(model_id, level)
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
        _emit(
            {
                "case": "presets",
                "model": model_id,
                "quantization": level,
                "device": loaded.device,
                "image_size": f"{size}x{size}",
                "preset": name,
                "image_tokens": runs[0]["image_tokens"],
                "prompt_tokens": runs[0]["prompt_tokens"],
                "preprocess_ms": round(_median([r["preprocess_s"] for r in runs]) * 1000, 1),
                "ttft_ms": round(_median([r["ttft_s"] for r in runs]) * 1000, 1),
                "ttft_with_preprocess_ms": round(
                    _median([r["ttft_s"] + r["preprocess_s"] for r in runs]) * 1000, 1
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
            _emit(
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


def run_llamacpp(
    models: list[str],
    level: str,
    files: list[str],
    new_tokens: int,
    repeats: int,
    prompt_tokens: int,
    tree: str | None,
) -> int:
    """lfmui's engine at `level` and llama.cpp at each GGUF level in `files`, one after the
    other in this process: the same text prompt length, new tokens and cores (lfmui.llamacpp)."""
    from lfmui import llamacpp, offline

    why = llamacpp.missing(tree)
    if why:
        _emit({"case": "llamacpp", "ok": False, "error": why})
        return 1
    work = offline.cache_dir() / "gguf"
    for model_id in models:
        manager, status = _warm_manager(model_id, level)
        with manager.lease() as loaded:
            checkpoint = Path(loaded.model.name_or_path)  # the synthetic build's folder
            inputs = prompts.build_inputs(loaded, _text_question(loaded, prompt_tokens))
            runs = [_engine_generate(loaded, inputs, new_tokens) for _ in range(repeats + 1)][1:]
        manager.unload()
        ours = _median([(total - first) * 1000 / (new_tokens - 1) for first, total in runs])
        base = {"case": "llamacpp", "model": model_id, "new_tokens": new_tokens}
        base["prompt_tokens"] = int(inputs["input_ids"].shape[-1])
        _emit(
            {
                **base,
                "engine": "lfmui",
                "quantization": level,
                "resolved": status["quantization"],
                "ttft_ms": round(_median([first for first, _ in runs]) * 1000, 2),
                "ms_per_token": round(ours, 3),
                "resident_gib": round(status["resident_bytes"] / GIB, 3),
            }
        )
        for name in files:
            path = llamacpp.gguf(checkpoint, name, tree, work)
            measured = llamacpp.bench(path, tree, base["prompt_tokens"], new_tokens, repeats)
            _emit(
                {
                    **base,
                    "engine": "llama.cpp",
                    "quantization": name.upper(),
                    **measured,
                    "lfmui_over_llamacpp": round(ours / measured["ms_per_token"], 3),
                }
            )
    return 0


def _fair_reply(manager, new_tokens: int, results: dict, client: str, who: str) -> None:
    with manager.lease() as loaded:
        inputs = prompts.build_inputs(loaded, [{"role": "user", "content": "Hello"}])
        settings = engine.Settings(max_new_tokens=new_tokens, temperature=0.0)
        extra = {"min_new_tokens": new_tokens}
        for event in engine.stream(
            loaded, inputs, settings, extra_generate_kwargs=extra, client=client
        ):
            if event.kind == "metrics":
                results[who].append(event.data)


def run_fairness(model_id: str, level: str, queued: int, new_tokens: int) -> int:
    """B has a reply running and `queued` more waiting, then A sends one: A's queue wait, in
    B's replies, with clients taken in turn (A and B are two clients) and without (A joins B's
    line: first come, first served), measured in the same run."""
    manager, status = _warm_manager(model_id, level)
    worker = engine.generation_worker()
    for mode, a_client in (("round_robin", "A"), ("first_come", "B")):
        results: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
        reply = functools.partial(_fair_reply, manager, new_tokens, results)
        # B: one reply running and `queued` waiting; then A sends its one
        b_threads = [threading.Thread(target=reply, args=("B", "B")) for _ in range(queued + 1)]
        for thread in b_threads:
            thread.start()
        while worker.waiting().get("B", 0) < queued + 1:
            time.sleep(0.005)
        a_thread = threading.Thread(target=reply, args=(a_client, "A"))
        a_thread.start()
        for thread in [a_thread, *b_threads]:
            thread.join()
        b_reply = _median([m["total_s"] for m in results["B"]])
        a_wait = results["A"][0]["queue_wait_s"]
        _emit(
            {
                "case": "fairness",
                "mode": mode,
                "model": model_id,
                "level": status["quantization"],
                "device": status["device"],
                "b_queued": queued,
                "new_tokens": new_tokens,
                "a_queue_wait_s": round(a_wait, 3),
                "b_reply_s_median": round(b_reply, 3),
                "a_wait_in_b_replies": round(a_wait / b_reply, 2),
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
        _emit(
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

    from lfmui import cpu_weights

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
    figures = {}
    for name, kernel in kernels.items():
        kernel()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(10):
                kernel()
            times.append((time.perf_counter() - started) / 10)
        figures[name] = round(_median(times) * 1000, 3)
    _emit({"case": "kernels", "shape": [n, k], "ms": figures})
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lfmui.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "case",
        choices=["loads", "seed", "presets", "ops", "llamacpp", "fairness", "calibrate", "kernels"],
    )
    parser.add_argument("--queued", type=int, default=12, help="fairness: B's queued replies")
    parser.add_argument(
        "--models",
        default=None,
        help="comma-separated catalog ids (default: lfm2-vl-tiny,lfm2-moe-tiny; ops: "
        "lfm2-moe-replica)",
    )
    parser.add_argument(
        "--levels",
        default="available",
        help=f"comma-separated levels (auto, {', '.join(quant.QUANTIZATIONS)}) or 'available'",
    )
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--prompt-tokens", type=int, default=512, help="text models' prompt")
    parser.add_argument(
        "--llama-cpp", default=None, help="llamacpp: a llama.cpp source tree (its converter)"
    )
    parser.add_argument("--gguf", default="q8_0,q4_0,f16", help="llamacpp: the GGUF levels")
    args = parser.parse_args(argv)
    os.environ["HF_DEACTIVATE_ASYNC_LOAD"] = "1"  # every load allocation on the metered thread
    if args.levels == "available":
        levels = [row["name"] for row in quant.availability_table() if row["available"]]
    else:
        levels = args.levels.split(",")
    default_models = {
        "ops": "lfm2-moe-replica",
        "llamacpp": "lfm2-vl-450m-synthetic,lfm2-8b-a1b-synthetic",
    }.get(args.case, "lfm2-vl-tiny,lfm2-moe-tiny")
    models = (args.models or default_models).split(",")
    started = time.perf_counter()
    if args.case == "llamacpp":
        level = "auto" if args.levels == "available" else args.levels
        code = run_llamacpp(
            models,
            level,
            args.gguf.split(","),
            args.new_tokens,
            args.repeats,
            args.prompt_tokens,
            args.llama_cpp,
        )
    elif args.case == "fairness":
        code = run_fairness(models[0], levels[0], args.queued, args.new_tokens)
    elif args.case == "calibrate":
        code = run_calibrate(models)
    elif args.case == "kernels":
        code = run_kernels(args.repeats)
    elif args.case == "ops":
        code = run_ops(models, ["bf16", *[level for level in levels if level != "bf16"]])
    elif args.case == "presets":
        code = 0
        for model_id in models:
            for level in levels:
                code |= run_presets(model_id, level, args.repeats, args.image_size)
    elif args.case == "seed":
        code = 0
        for model_id in models:
            for level in levels:
                code |= run_seed(
                    model_id,
                    level,
                    args.new_tokens,
                    args.repeats,
                    args.image_size,
                    args.prompt_tokens,
                )
    else:
        code = run_loads(models, levels, args.new_tokens)
    _emit({"case": "summary", "seconds": round(time.perf_counter() - started, 1), "exit": code})
    return code


if __name__ == "__main__":
    sys.exit(main())
