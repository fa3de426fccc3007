"""Memory pre-flight: what a model at a level will take, what this process can use, and a refusal
before anything is built, downloaded or loaded when it will not fit.

The estimate reads the model's config alone: the model is laid out on the meta device (no
memory), each parameter is classed by what the quantized levels do to it (``Layout``), and the
level's ``Footprint`` (in ``quant.QUANTIZATIONS``) prices each class. Runtime headroom covers the
context's cache and a long prefill's activations (an image at the detailed preset is within
it). What is available: on CPU the smaller of MemAvailable and the cgroup's limit
less its unreclaimable use (v2 or v1); on CUDA the free device memory. The resident model's own
weights count as available: a switch frees them before the new model loads.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lfmui.errors import InsufficientMemory

GIB = 1024**3
CONTEXT_TOKENS = 8192  # the engine's static cache length: what one reply may reach
PREFILL_TOKENS = 4096  # a long prompt (an image at the detailed preset, or a long chat)
VISION_MODULES = ("model.vision_tower.", "model.multi_modal_projector.")
MARGIN_BYTES = 512 * 2**20  # allocator slack, the tokenizer and processor, Python objects


@dataclass(frozen=True)
class Layout:
    """Parameter counts of a model by what a quantized level does with them."""

    linear: int  # weights of the Linear layers a quantized level converts
    linear_rows: int  # their output rows (one scale each at int8)
    experts: int  # 3-D mixture-of-experts weights
    expert_rows: int
    head: int  # an LM head tied to the embeddings (stored once; int8-cpu packs a copy)
    vision: int  # the vision tower and projector (VL models), which no level quantizes
    other: int  # everything else kept as it is: embeddings, norms, convs
    attention_layers: int
    kv_width: int  # key/value heads x head size, per attention layer
    hidden: int


@dataclass(frozen=True)
class Estimate:
    weights: int  # what the model keeps
    runtime: int  # the context's cache, a prefill's activations, slack
    loading: int = 0  # what a quantize-after-loading level holds on the way (0: no more)

    @property
    def total(self) -> int:
        return max(self.weights, self.loading) + self.runtime


@dataclass(frozen=True)
class Available:
    bytes: int
    source: str  # what bounded it, for the sentence the user reads


@functools.lru_cache(maxsize=32)
def layout(config_json: str) -> Layout:
    """The Layout of a model from its config (as JSON text, so that it can be cached)."""
    import json

    import torch
    from torch import nn
    from transformers import AutoConfig

    from lfmui.quant import should_quantize

    values = json.loads(config_json)
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    from lfmui.offline import model_class

    with torch.device("meta"):
        model = model_class(config)(config)
    counts = dict.fromkeys(("linear", "linear_rows", "experts", "expert_rows", "head"), 0)
    vision = 0
    counted: set[int] = set()
    for name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if id(param) in counted:
                continue
            counted.add(id(param))
            quantizable = isinstance(module, nn.Linear) and param_name == "weight"
            if quantizable and name != "lm_head" and should_quantize(name):
                counts["linear"] += param.numel()
                counts["linear_rows"] += param.shape[0]
            elif param.dim() == 3 and name.endswith("experts"):
                counts["experts"] += param.numel()
                counts["expert_rows"] += param.shape[0] * param.shape[1]
            elif name.startswith(VISION_MODULES):
                vision += param.numel()
    total = sum(p.numel() for p in model.parameters())  # tied parameters once
    head = getattr(model, "lm_head", None)
    if head is not None and head.weight is model.get_input_embeddings().weight:
        counts["head"] = head.weight.numel()
    text = config.get_text_config()
    attention = [t for t in getattr(text, "layer_types", []) if t == "full_attention"]
    head_dim = text.hidden_size // text.num_attention_heads
    return Layout(
        **counts,
        vision=vision,
        other=total - counts["linear"] - counts["experts"] - vision,
        attention_layers=len(attention),
        kv_width=text.num_key_value_heads * head_dim,
        hidden=text.hidden_size,
    )


def estimate(config: Any, level: Any) -> Estimate:
    """Bytes `config`'s model takes at `level` (a quant.QuantLevel): weights and runtime."""
    shape = layout(config.to_json_string(use_diff=False))
    price = level.footprint
    weights = (
        shape.linear * price.linear
        + shape.linear_rows * price.linear_row
        + shape.experts * price.experts
        + shape.expert_rows * price.expert_row
        + shape.head * price.head
        + shape.other * price.other
        + shape.vision * (price.other if price.vision is None else price.vision)
    )
    activation = price.activation
    cache = 2 * shape.attention_layers * shape.kv_width * CONTEXT_TOKENS * activation
    prefill = 8 * PREFILL_TOKENS * shape.hidden * activation  # a few live hidden states
    loading = (shape.linear + shape.other + shape.vision) * price.load
    # experts quantized while loading sit beside the full-precision rest at their own size
    loading += shape.experts * (price.load_experts or price.experts)
    loading += shape.expert_rows * price.expert_row * (not price.load_experts)
    return Estimate(int(weights), int(cache + prefill + MARGIN_BYTES), int(loading))


def available(device: str, freed_by_switch: int = 0) -> Available:
    """What a load here may use, counting the bytes the resident model frees when it goes."""
    if device == "cuda":
        return Available(gpu_room() + freed_by_switch, "free GPU memory")
    candidates = [(meminfo_available(), "available memory")]
    limit = cgroup_headroom()
    if limit is not None:
        candidates.append((limit, "the container's memory limit"))
    amount, source = min(candidates)
    return Available(amount + freed_by_switch, source)


def gpu_room() -> int:
    """What this process may still allocate on the GPU: the device's free memory plus the
    blocks torch's allocator holds for us unused (reserved, not allocated: the device counts
    them as taken), within the cap set_per_process_memory_fraction puts on this process."""
    import torch

    free, total = torch.cuda.mem_get_info()
    if not torch.cuda.is_initialized():  # a ZeroGPU main process: spaces' figures, no CUDA
        return free
    allocated = torch.cuda.memory_allocated()
    room = free + torch.cuda.memory_reserved() - allocated
    fraction = torch.cuda.get_per_process_memory_fraction()
    return max(0, min(room, int(fraction * total) - allocated))


def meminfo_available(path: str = "/proc/meminfo") -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return psutil.virtual_memory().available


def cgroup_headroom(root: str = "/sys/fs/cgroup") -> int | None:
    """The cgroup's limit less what it holds that cannot be reclaimed (v2, else v1); None
    when there is no limit."""
    base = Path(root)
    v2 = base / "memory.max"
    if v2.is_file():
        return _headroom(v2, base / "memory.current", base / "memory.stat", "inactive_file")
    v1 = base / "memory" / "memory.limit_in_bytes"
    if v1.is_file():
        memory = base / "memory"
        return _headroom(
            v1, memory / "memory.usage_in_bytes", memory / "memory.stat", "total_inactive_file"
        )
    return None


def _headroom(limit_file: Path, usage_file: Path, stat_file: Path, reclaimable: str) -> int | None:
    try:
        text = limit_file.read_text().strip()
        if text == "max" or int(text) >= 2**60:  # v1 writes "no limit" as a huge number
            return None
        usage = int(usage_file.read_text())
        stats = dict(line.split() for line in stat_file.read_text().splitlines() if line.strip())
        return max(0, int(text) - usage + int(stats.get(reclaimable, 0)))
    except (OSError, ValueError):
        return None


def check(model_label: str, config: Any, level: Any, device: str, freed: int = 0) -> Estimate:
    """The estimate when `level` fits here; else InsufficientMemory saying what does."""
    from lfmui import quant

    need = estimate(config, level)
    room = available(device, freed)
    if need.total <= room.bytes:
        return need
    fitting: dict[int, str] = {}  # one name per size: fp16 adds nothing beside bf16
    for other in quant.QUANTIZATIONS.values():
        total = estimate(config, other).total
        if total <= room.bytes and other.probe().ok:
            fitting.setdefault(total, other.name)
    advice = (
        "Pick "
        + " or ".join(f"{name} (about {gib(total)})" for total, name in list(fitting.items())[:2])
        + " instead."
        if fitting
        else "No level of this model fits here; load a smaller model or free memory."
    )
    raise InsufficientMemory(
        f"{model_label} at {level.name} needs about {gib(need.total)} ({gib(need.weights)} of "
        f"weights), and {room.source} here is {gib(room.bytes)}. {advice}"
    )


@functools.cache
def _published_shapes() -> dict[str, Any]:
    import json

    from lfmui import offline

    return json.loads(offline.SHAPES_FILE.read_text())


def config_of(spec: Any, location: Any | None = None) -> Any | None:
    """A model's config without its weights: the published shape of a catalog model or an
    offline build, else the config.json of `location` (a manager Location, already checked)."""
    from lfmui import offline

    if spec.source == "offline":
        return offline.make_config(offline.shape_config(spec.location))
    if location is None and spec.id in _published_shapes():  # the hub models' shapes
        return offline.make_config(_published_shapes()[spec.id])
    if location is None:
        return None
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(location.path, **location.kwargs())


def levels_for(spec: Any, device: str, freed: int = 0) -> list[dict[str, Any]]:
    """quant.availability_table() for `spec`, each level with its memory estimate and whether
    it fits here now (None where the config is only known once the model is checked)."""
    from lfmui import quant

    config = config_of(spec)
    room = available(device, freed)
    rows = []
    for row in quant.availability_table():
        level = quant.QUANTIZATIONS[row["name"]]
        need = estimate(config, level).total if config is not None else None
        rows.append(
            {
                **row,
                "estimate_gib": None if need is None else round(need / GIB, 2),
                "available_gib": round(room.bytes / GIB, 2),
                "fits": None if need is None else need <= room.bytes,
            }
        )
    return rows


def gib(value: int) -> str:
    return f"{value / GIB:.1f} GiB"
