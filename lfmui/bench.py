"""Benchmarks: ``python -m lfmui.bench CASE [options]`` prints one JSON line per measurement.

Cases so far:
- ``loads``: every quantization level of each model through the ModelManager (the app's own load
  path): resident weight GiB, CUDA allocated/peak GiB, load seconds, and a short generation
  through the engine to show the loaded model runs (eager decode ms/token).

Models default to the offline builds (tiny on CPU; ``--models`` picks full-shape synthetic ones).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from lfmui import engine, prompts, quant
from lfmui.catalog import Catalog
from lfmui.errors import LfmuiError
from lfmui.manager import GIB, ModelManager, memory_report


def _emit(record: dict[str, Any]) -> None:
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


def run_loads(models: list[str], levels: list[str], new_tokens: int) -> int:
    catalog = Catalog()
    catalog.show_all()
    manager = ModelManager(catalog)
    failures = 0
    for model_id in models:
        for level in levels:
            record: dict[str, Any] = {"case": "load", "model": model_id, "quantization": level}
            try:
                status = manager.load(model_id, level)
                memory = memory_report(manager.current())
                record.update(
                    ok=True,
                    device=status["device"],
                    resident_gib=round(status["resident_bytes"] / GIB, 3),
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


def _gib(value: int | None) -> float | None:
    return round(value / GIB, 3) if value is not None else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lfmui.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("case", choices=["loads"])
    parser.add_argument(
        "--models", default="lfm2-vl-tiny,lfm2-moe-tiny", help="comma-separated catalog ids"
    )
    parser.add_argument(
        "--levels",
        default="available",
        help=f"comma-separated levels ({', '.join(quant.QUANTIZATIONS)}) or 'available'",
    )
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    if args.levels == "available":
        levels = [row["name"] for row in quant.availability_table() if row["available"]]
    else:
        levels = args.levels.split(",")
    started = time.perf_counter()
    code = run_loads(args.models.split(","), levels, args.new_tokens)
    _emit({"case": "summary", "seconds": round(time.perf_counter() - started, 1), "exit": code})
    return code


if __name__ == "__main__":
    sys.exit(main())
