"""``python -m lfmui.bench CASE [options]``: one JSON line per measurement.

Cases (what each measures, and how to read it: docs/benchmarks.md):
- ``loads``: every level of each model through the ModelManager: resident GiB, load peak and
  seconds, and a short generation.
- ``seed``: one 1024x1024 image (a 512-token prompt for a text model), greedy, through lfmui's
  engine and plain ``model.generate`` interleaved: TTFT, decode ms/token, their ratio, peaks.
- ``presets``: one image at the model's default tiling and each preset: image tokens, TTFT.
- ``ops``: aten operations and host syncs of one decode step per level.
- ``llamacpp``: lfmui and llama.cpp on the same checkpoint, prompt, tokens and cores.
- ``fairness``: one client's queue wait behind another's replies, taken in turn or not.
- ``calibrate``: what auto's calibration measures for each model here, afresh.
- ``kernels``: one decode row through each CPU kernel lfmui could use.

Models default to the offline builds (tiny on CPU; ``--models`` picks full-shape synthetic ones).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from lfmui import quant
from lfmui.bench import cases, peers


def _each(run: Callable[[str, str], int], models: list[str], levels: list[str]) -> int:
    """`run` for every model at every level; failed if any failed."""
    code = 0
    for model_id in models:
        for level in levels:
            code |= run(model_id, level)
    return code


CASES: dict[str, Callable[[argparse.Namespace, list[str], list[str]], int]] = {
    "loads": lambda a, models, levels: cases.run_loads(models, levels, a.new_tokens),
    "seed": lambda a, models, levels: _each(
        lambda m, lv: cases.run_seed(m, lv, a.new_tokens, a.repeats, a.image_size, a.prompt_tokens),
        models,
        levels,
    ),
    "presets": lambda a, models, levels: _each(
        lambda m, lv: cases.run_presets(m, lv, a.repeats, a.image_size), models, levels
    ),
    "ops": lambda a, models, levels: cases.run_ops(
        models, ["bf16", *[level for level in levels if level != "bf16"]]
    ),
    "llamacpp": lambda a, models, levels: peers.run_llamacpp(
        models,
        "auto" if a.levels == "available" else a.levels,
        a.gguf.split(","),
        a.new_tokens,
        a.repeats,
        a.prompt_tokens,
        a.llama_cpp,
    ),
    "fairness": lambda a, models, levels: peers.run_fairness(
        models[0], levels[0], a.queued, a.new_tokens
    ),
    "calibrate": lambda a, models, levels: cases.run_calibrate(models),
    "kernels": lambda a, models, levels: cases.run_kernels(a.repeats),
}
DEFAULT_MODELS = {
    "ops": "lfm2-moe-replica",
    "llamacpp": "lfm2-vl-450m-synthetic,lfm2-8b-a1b-synthetic",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lfmui.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "case",
        choices=list(CASES),
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ["HF_DEACTIVATE_ASYNC_LOAD"] = "1"  # every load allocation on the metered thread
    if args.levels == "available":
        levels = [row["name"] for row in quant.availability_table() if row["available"]]
    else:
        levels = args.levels.split(",")
    models = (args.models or DEFAULT_MODELS.get(args.case, "lfm2-vl-tiny,lfm2-moe-tiny")).split(",")
    started = time.perf_counter()
    code = CASES[args.case](args, models, levels)
    cases.emit(
        {"case": "summary", "seconds": round(time.perf_counter() - started, 1), "exit": code}
    )
    return code
