"""The benchmark cases that measure lfmui beside another: llama.cpp on the same CPU
(``run_llamacpp``), and a client's wait behind another's queue (``run_fairness``)."""

from __future__ import annotations

import functools
import threading
import time
from pathlib import Path
from typing import Any

from lfmui import engine, prompts
from lfmui.bench.cases import emit, engine_generate, median, text_question, warm_manager
from lfmui.manager import GIB
from lfmui.worker import generation_worker


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
    other in this process: the same text prompt length, new tokens and cores (bench.llamacpp)."""
    from lfmui import offline
    from lfmui.bench import llamacpp

    why = llamacpp.missing(tree)
    if why:
        emit({"case": "llamacpp", "ok": False, "error": why})
        return 1
    work = offline.cache_dir() / "gguf"
    for model_id in models:
        manager, status = warm_manager(model_id, level)
        with manager.lease() as loaded:
            checkpoint = Path(loaded.model.name_or_path)  # the synthetic build's folder
            inputs = prompts.build_inputs(loaded, text_question(loaded, prompt_tokens))
            runs = [engine_generate(loaded, inputs, new_tokens) for _ in range(repeats + 1)][1:]
        manager.unload()
        ours = median([(total - first) * 1000 / (new_tokens - 1) for first, total in runs])
        base = {"case": "llamacpp", "model": model_id, "new_tokens": new_tokens}
        base["prompt_tokens"] = int(inputs["input_ids"].shape[-1])
        emit(
            {
                **base,
                "engine": "lfmui",
                "quantization": level,
                "resolved": status["quantization"],
                "ttft_ms": round(median([first for first, _ in runs]) * 1000, 2),
                "ms_per_token": round(ours, 3),
                "resident_gib": round(status["resident_bytes"] / GIB, 3),
            }
        )
        for name in files:
            path = llamacpp.gguf(checkpoint, name, tree, work)
            measured = llamacpp.bench(path, tree, base["prompt_tokens"], new_tokens, repeats)
            emit(
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
    manager, status = warm_manager(model_id, level)
    worker = generation_worker()
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
        b_reply = median([m["total_s"] for m in results["B"]])
        a_wait = results["A"][0]["queue_wait_s"]
        emit(
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
