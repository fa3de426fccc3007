"""How fast each CPU level decodes a model here, measured on this CPU and cached.

CPU classes differ in which levels are fast (AVX2 laptops, AVX-512 BF16 and AMX servers, ARM's
NEON), so a fixed order cannot be right on all of them. A decode step on a CPU is its matmuls:
``decode_ms`` times one decode step's worth of them at each level that runs here, on the real
shapes of the model (its text model built on the meta device: every Linear, and the experts a
token uses), and estimates milliseconds per token. The largest shapes are timed (most of the
bytes a token reads), slices of very tall weights are timed and scaled, and the rest is
scaled by weight count; the whole takes at most ``BUDGET_S``, the levels measured by then
being what it returns. Results are cached per CPU (model name, instruction-set flags, cores)
and torch version in ``LFMUI_CACHE``/calibration.json; a cache written on another CPU or torch
is ignored and measured again.

``quant.auto_levels`` is the static order; the manager's "auto" on a CPU orders the levels
that fit by these figures, fastest first (``fastest_first``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lfmui
from lfmui import offline, quant

log = logging.getLogger(__name__)

BUDGET_S = 20.0  # the most one calibration may take
SLOW_TOKENS_PER_S = 2.0  # below this a level is marked slow for the model
MAX_ROWS = 4096  # a taller weight is timed on a slice of this many rows, then scaled
SHAPES_TIMED = 3  # the largest shape classes timed; the rest scaled by weight count


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """This machine's CPU as /proc/cpuinfo names it, with its usable cores (every CPU figure
    carries it: speed differs between CPU classes)."""
    cores = lfmui.usable_cores()
    name = quant.cpuinfo_field(cpuinfo, ("model name",)) or "unknown CPU"
    return f"{name} ({cores} cores)"


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """The instruction sets this process computes with (quant.cpu_flags: the CPU's, less any
    ISA cap)."""
    return list(quant.cpu_flags(cpuinfo))


@functools.cache
def signature() -> str:
    """What the figures hold for: this CPU, its flags and cores, this torch (read once: the
    Models tab asks on every redraw)."""
    import torch

    caps = "".join(f" {name}={value}" for name, value in quant.isa_caps().items())
    return f"{cpu_model()} [{' '.join(cpu_flags())}]{caps} torch {torch.__version__}"


def decode_shapes(config: Any) -> Counter[tuple[int, int]]:
    """The [N, K] weights one decoded token multiplies, with how many times: the text model's
    Linear layers (the LM head included) and, for a mixture of experts, the experts' two
    products times the experts each token uses. Empty where the model cannot be built from
    its config here (a checkpoint of another kind): auto then keeps its static order."""
    try:
        return Counter(dict(_shapes(config.to_json_string(use_diff=False))))
    except Exception as exc:  # an odd local checkpoint must not stop its load
        log.warning("calibration: no decode shapes for this model (%s)", type(exc).__name__)
        return Counter()


@functools.lru_cache(maxsize=32)
def _shapes(config_json: str) -> tuple[tuple[tuple[int, int], int], ...]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    raw = json.loads(config_json)
    config = AutoConfig.for_model(raw.pop("model_type"), **raw)
    text = config.get_text_config(decoder=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(text)
    shapes: Counter[tuple[int, int]] = Counter()
    top_k = int(getattr(text, "num_experts_per_tok", 0) or 0)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            shapes[(module.out_features, module.in_features)] += 1
        for name in ("gate_up_proj", "down_proj"):
            weight = getattr(module, name, None)
            if isinstance(weight, torch.Tensor) and weight.dim() == 3 and top_k:
                shapes[(weight.shape[1], weight.shape[2])] += top_k
    return tuple(shapes.items())


def _layer(level: quant.QuantLevel, n: int, k: int) -> Callable[[Any], Any]:
    """One [n, k] Linear at `level` (its dtype, then its conversion), as a callable."""
    import torch

    dtype = getattr(torch, level.dtype)
    linear = torch.nn.Linear(k, n, bias=False).to(dtype)
    if level.post_load is not None:
        holder = torch.nn.Module()
        holder.layer = linear
        level.post_load(holder)  # swaps holder.layer as a model's layer would be
        return holder.layer
    if level.kwargs():  # bitsandbytes: its Linear modules on this CPU
        import bitsandbytes as bnb

        if level.name == "nf4":
            layer = bnb.nn.Linear4bit(k, n, bias=False, quant_type="nf4", compute_dtype=dtype)
            layer.weight = bnb.nn.Params4bit(linear.weight.data, quant_type="nf4")._quantize("cpu")
            return layer
        layer = bnb.nn.Linear8bitLt(k, n, bias=False, has_fp16_weights=False)
        layer.weight = bnb.nn.Int8Params(linear.weight.data, requires_grad=False)
        return layer.to("cpu")
    return linear


def _seconds(level: quant.QuantLevel, n: int, k: int) -> float:
    """Median seconds of one decode row through an [n, k] weight at `level`."""
    import torch

    rows = min(n, MAX_ROWS)
    layer = _layer(level, rows, k)
    x = torch.randn(1, k).to(getattr(torch, level.dtype))
    times = []
    with torch.inference_mode():
        for attempt in range(7):
            started = time.perf_counter()
            layer(x)
            if attempt >= 2:  # the first calls set up (packing caches, thread pools)
                times.append(time.perf_counter() - started)
    times.sort()
    return times[len(times) // 2] * n / rows


def measure(
    shapes: Counter[tuple[int, int]], levels: list[quant.QuantLevel], budget_s: float = BUDGET_S
) -> dict[str, float]:
    """Estimated ms per decoded token at each of `levels`, in their order, until `budget_s`
    has passed (the levels measured by then; the first always)."""
    by_size = sorted(shapes.items(), key=lambda item: -item[1] * item[0][0] * item[0][1])
    timed = by_size[:SHAPES_TIMED]
    total = sum(count * n * k for (n, k), count in shapes.items())
    share = sum(count * n * k for (n, k), count in timed) / total
    started = time.perf_counter()
    figures: dict[str, float] = {}
    for number, level in enumerate(levels):
        try:
            seconds = sum(count * _seconds(level, n, k) for (n, k), count in timed)
            figures[level.name] = round(seconds / share * 1000, 3)
        except Exception as exc:  # a level that cannot run this shape here is not a candidate
            log.warning("calibration: %s failed (%s)", level.name, type(exc).__name__)
        if time.perf_counter() - started > budget_s and number + 1 < len(levels):
            log.info("calibration cut short at %.1f s: %s measured", budget_s, list(figures))
            break
    return figures


def cache_file() -> Path:
    return offline.cache_dir() / "calibration.json"


def _read() -> dict[str, Any]:
    try:
        cached = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(cached, dict) or cached.get("signature") != signature():
        return {}  # another CPU or torch (or a damaged file): measured again
    return cached


def _key(shapes: Counter[tuple[int, int]]) -> str:
    return hashlib.sha1(repr(sorted(shapes.items())).encode()).hexdigest()[:16]


def _cached(models: dict[str, Any], key: str) -> dict[str, float]:
    figures = models.get(key)
    if not isinstance(figures, dict):
        return {}
    return {k: float(v) for k, v in figures.items() if isinstance(v, int | float) and v > 0}


def cached_ms(config: Any) -> dict[str, float]:
    """What decode_ms has measured here for the model of `config`, without measuring."""
    models = _read().get("models", {})
    return _cached(models, _key(decode_shapes(config))) if isinstance(models, dict) else {}


def decode_ms(config: Any, budget_s: float = BUDGET_S) -> dict[str, float]:
    """ms per decoded token at each CPU level that runs here, for the model of `config`:
    cached, else measured now (at most `budget_s`) and cached."""
    shapes = decode_shapes(config)
    if not shapes:
        return {}
    key = _key(shapes)
    models = _read().get("models", {})
    models = models if isinstance(models, dict) else {}
    if _cached(models, key):
        return _cached(models, key)
    candidates = [level for level in quant.QUANTIZATIONS.values() if level.probe().ok]
    static = [level.name for level in quant.auto_levels()]  # the likeliest first
    candidates.sort(key=lambda lv: static.index(lv.name) if lv.name in static else len(static))
    figures = measure(shapes, candidates, budget_s)
    models[key] = figures
    try:
        cache_file().parent.mkdir(parents=True, exist_ok=True)
        cache_file().write_text(json.dumps({"signature": signature(), "models": models}))
    except OSError as exc:  # a read-only cache: measured again next time
        log.warning("calibration not cached: %s", exc)
    return figures


def forget() -> None:
    """Measure again on the next load (app.py --calibrate)."""
    cache_file().unlink(missing_ok=True)


def fastest_first(levels: list[quant.QuantLevel], figures: dict[str, float]) -> list:
    """`levels` (the static order) with the measured ones first, fastest first; the others
    after, in their order."""
    measured = sorted((lv for lv in levels if lv.name in figures), key=lambda lv: figures[lv.name])
    return measured + [lv for lv in levels if lv.name not in figures]


def tokens_per_s(ms_per_token: float | None) -> float | None:
    return None if not ms_per_token else round(1000 / ms_per_token, 1)
