"""Locating and loading one model: where its files are (``locate``: checked before the resident
model is touched), its weights at a level (``load_weights``), the level "auto" picks
(``auto_levels``, ``first_fitting``) and a sentence for a failed load (``load_failure``). The
ModelManager decides when; this module knows how.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from lfmui import calibrate, heap, hub, memory, offline, quant
from lfmui.catalog import ModelSpec, checkpoint_kind
from lfmui.errors import CheckpointError, LfmuiError

GIB = 1024**3
Progress = Callable[[float, str], None]


def pool_key(model_id: str, quantization: str) -> str:
    return f"{model_id}@{quantization}"


class ModelStatus(TypedDict):
    """``LoadedModel.status`` (what /load_model returns): typed for the API page."""

    model_id: str
    key: str  # how a pick names it: model id @ level
    label: str
    kind: str  # vl or text
    quantization: str
    device: str
    dtype: str
    resident_bytes: int
    resident_gib: float
    load_seconds: float
    random_weights: bool
    note: str
    decode: str


@dataclass(eq=False)
class LoadedModel:
    """The resident model and what requests need to use it."""

    spec: ModelSpec
    quantization: str
    model: Any
    processor: Any  # Lfm2VlProcessor for VL models, the tokenizer for text models
    device: str
    dtype: str
    load_seconds: float
    weight_bytes: int
    cancel: threading.Event = field(default_factory=threading.Event)  # set: switch wants it gone
    leases: int = 0
    decode_note: str = ""
    static_cache: Any = None  # compiled decode's one cache (compiled.static_cache)
    footprint: int = 0  # what it takes of the pool's budget: the pre-flight estimate's total
    last_used: float = field(default_factory=time.monotonic)  # for least-recently-used eviction

    @property
    def key(self) -> str:
        """How the pool names it: a model at one level (a second level is a second model)."""
        return pool_key(self.spec.id, self.quantization)

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    def status(self) -> ModelStatus:
        return ModelStatus(
            model_id=self.spec.id,
            key=self.key,
            label=self.spec.label,
            kind=self.spec.kind,
            quantization=self.quantization,
            device=self.device,
            dtype=self.dtype,
            resident_bytes=self.weight_bytes,
            resident_gib=round(self.weight_bytes / GIB, 3),
            load_seconds=round(self.load_seconds, 2),
            random_weights=self.spec.random_weights,
            note=self.spec.note,
            decode=self.decode_note,
        )


def locate(spec: ModelSpec, progress: Progress) -> hub.Location:
    """Where from_pretrained should read `spec` from, checked before the resident model is
    touched: local files and config.json, or for a hub model its config at the pinned
    revision (from the cache when the Hub cannot be reached)."""
    if spec.source == "hub":
        progress(0.1, f"checking {spec.location} on the Hugging Face Hub")
        return hub.check(spec)
    if spec.source == "offline":
        progress(0.1, f"preparing offline checkpoint {spec.id}")
        device = "cuda" if quant.cuda_available() else None
        path = offline.ensure_checkpoint(spec.location, device=device)
    else:
        path = Path(spec.location)
    checkpoint_kind(path)  # no config.json, invalid JSON, not LFM2: CheckpointError
    check_config(path, spec)
    return hub.Location(str(path))


def load_weights(spec: ModelSpec, level: quant.QuantLevel, location: hub.Location) -> LoadedModel:
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
    )

    started = time.perf_counter()
    cuda = quant.cuda_available()
    source = location.kwargs()
    dtype = getattr(torch, level.load_dtype or level.dtype)
    kwargs: dict[str, Any] = {"dtype": dtype, **level.kwargs(), **source}
    if cuda:
        kwargs["device_map"] = {"": 0}
    auto_model = AutoModelForImageTextToText if spec.kind == "vl" else AutoModelForCausalLM
    auto_processor = AutoProcessor if spec.kind == "vl" else AutoTokenizer
    model = auto_model.from_pretrained(location.path, **kwargs)
    if not cuda:
        from lfmui.quant import cpu_weights

        cpu_weights.use_conv_step()  # LFM2's short convolutions at a decode step, in a few ops
    if level.post_load is not None:
        level.post_load(model)  # int8-cpu: the fp32 weights it replaced are freed here
    heap.release_checkpoint_mapping(model)
    gc.collect()  # what conversions freed while loading goes back to the system
    heap.trim_heap()
    model.eval()
    processor = auto_processor.from_pretrained(location.path, **source)
    return LoadedModel(
        spec=spec,
        quantization=level.name,
        model=model,
        processor=processor,
        device="cuda" if cuda else "cpu",
        dtype=level.dtype,
        load_seconds=time.perf_counter() - started,
        weight_bytes=heap.weight_bytes(model),
    )


def auto_levels(config: Any, device: str, measure: bool = True) -> list[quant.QuantLevel]:
    """What "auto" may load here, fastest first: on a CPU as measured on it (lfmui.calibrate;
    without `measure`, only what is cached), else quant.AUTO_ORDER."""
    candidates = quant.auto_levels()
    if device == "cpu":
        timed = calibrate.decode_ms if measure else calibrate.cached_ms
        candidates = calibrate.fastest_first(candidates, timed(config))
    return candidates


def first_fitting(levels: list[quant.QuantLevel], config: Any, room: int) -> Any:
    """The first of `levels` whose estimate for `config` fits `room`; None if none does."""
    return next((lv for lv in levels if memory.estimate(config, lv).total <= room), None)


@contextlib.contextmanager
def weights_progress(progress: Progress, start: float, end: float) -> Iterator[None]:
    """transformers' own "Loading weights" loop, followed: the longest step of a load moves the
    progress bar tensor by tensor instead of sitting still (nothing changes where this
    transformers has no such loop)."""
    try:
        from transformers import core_model_loading as loading

        original = loading.tqdm
    except (ImportError, AttributeError):
        yield
        return

    def followed(items: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        total = len(items) if hasattr(items, "__len__") else 0
        every = max(total // 50, 1)
        for number, item in enumerate(original(items, *args, **kwargs)):
            if total and number % every == 0:
                share = start + (end - start) * number / total
                progress(round(share, 3), f"loading weights: {number} of {total} tensors")
            yield item

    loading.tqdm = followed
    try:
        yield
    finally:
        loading.tqdm = original


def no_progress(_fraction: float, _message: str) -> None:
    return None


def check_config(path: Path, spec: ModelSpec) -> None:
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(str(path))
    except Exception as exc:
        raise CheckpointError(
            f"The checkpoint of {spec.id} has a config.json transformers cannot read "
            f"({type(exc).__name__}). Re-export it with save_pretrained."
        ) from None


def load_failure(spec: ModelSpec, exc: BaseException) -> str:
    """A user-facing sentence for a failed load (no paths, no traceback)."""
    if isinstance(exc, LfmuiError):
        return str(exc)
    text = f"{type(exc).__name__}: {exc}".lower()
    if "out of memory" in text:
        return f"Not enough memory to load {spec.id}; pick a smaller model or a 4-bit level."
    if spec.source == "hub" and any(w in text for w in ("connect", "offline", "resolve", "hub")):
        return (
            f"Could not download {spec.id} from the Hugging Face Hub (unreachable or offline). "
            "Check the network, or load an offline model such as lfm2-vl-tiny."
        )
    return (
        f"Loading {spec.id} failed ({type(exc).__name__}); its checkpoint may be incomplete or "
        "corrupt. Rebuild or re-download it, or pick another model."
    )


def level_rows(spec: ModelSpec, device: str, freed: int) -> list[dict[str, Any]]:
    """Every quantization level for `spec`: runs here, memory estimate, fits now (`freed`
    bytes would be freed for it); on a CPU, the decode speed calibrated here (tokens_per_s,
    and slow below calibrate.SLOW_TOKENS_PER_S) where it has been measured."""
    rows = memory.levels_for(spec, device, freed)
    config = memory.config_of(spec)
    measured = calibrate.cached_ms(config) if config and not quant.cuda_available() else {}
    for row in rows:
        speed = calibrate.tokens_per_s(measured.get(row["name"]))
        row["tokens_per_s"] = speed
        row["slow"] = speed is not None and speed < calibrate.SLOW_TOKENS_PER_S
    return rows


def budget_refusal(spec: ModelSpec, quantization: str | None, budget: int) -> str | None:
    """Why `budget` bytes cannot hold `spec` at `quantization` (auto: at any level that runs
    here), naming the largest level that fits; None when they can (or when the model's shape is
    known only once it is located)."""
    config = memory.config_of(spec)
    if config is None:
        return None
    runs = [lv for lv in quant.QUANTIZATIONS.values() if lv.probe().ok]
    sizes = {lv.name: memory.estimate(config, lv).total for lv in runs}
    asked = [] if quantization in (None, "", "auto") else [quant.resolve(quantization).name]
    wanted = asked or list(sizes)
    if any(sizes.get(name, budget + 1) <= budget for name in wanted):
        return None
    fitting = [(size, name) for name, size in sizes.items() if size <= budget]
    said = memory.gib(budget)
    if not fitting:
        smallest = min(sizes.values()) if sizes else 0
        return (
            f"The pool budget ({said}) cannot hold {spec.id} at any level here (the "
            f"smallest needs about {memory.gib(smallest)}). Raise --pool-gib "
            "(LFMUI_POOL_GIB) or start with a smaller model."
        )
    size, name = max(fitting, key=lambda pair: pair[0])  # the table's first of a size
    return (
        f"The pool budget ({said}) cannot hold {spec.id} at {asked[0]} (about "
        f"{memory.gib(sizes.get(asked[0], 0))}); the largest level that fits is {name} "
        f"(about {memory.gib(size)}). Start with --quantization {name}, or raise --pool-gib."
    )


def start_refusal(
    models: list[tuple[ModelSpec, str]], budget: int, budget_name: str, device: str
) -> str | None:
    """Why `budget` bytes (`budget_name`: what they are, for the sentence) cannot hold `models`
    (spec, level) side by side at start, naming those that fit together in order; None when
    they fit."""
    sizes = []
    for spec, quantization in models:
        refusal = budget_refusal(spec, quantization, budget)
        if refusal:
            return refusal
        config = memory.config_of(spec)
        if config is None:
            continue  # a checkpoint of unknown shape: its own load checks it
        level = level_within(config, quantization, budget, device)
        sizes.append((f"{spec.id}@{level.name}", memory.estimate(config, level).total))
    if sum(size for _, size in sizes) <= budget:
        return None
    fit: list[str] = []
    left: list[str] = []
    used = 0
    for key, size in sizes:
        fits = used + size <= budget
        used += size if fits else 0
        (fit if fits else left).append(f"{key} ({memory.gib(size)})")
    return (
        f"The models to load at start need about {memory.gib(sum(s for _, s in sizes))} "
        f"together, more than {budget_name} ({memory.gib(budget)}). These fit: "
        f"{', '.join(fit) or 'none'}; these do not: {', '.join(left)}. Drop models from "
        "--preload (LFMUI_PRELOAD) or name smaller levels (MODEL@LEVEL)."
    )


def level_within(config: Any, quantization: str | None, room: int, device: str) -> quant.QuantLevel:
    """The level named, or for "auto" the fastest here whose estimate fits `room` (the fastest
    of all where none does)."""
    if quantization not in (None, "", "auto"):
        return quant.resolve(quantization)
    candidates = auto_levels(config, device, measure=False)  # (the start must not wait)
    return first_fitting(candidates, config, room) or candidates[0]


def fitting_level(
    spec: ModelSpec,
    config: Any,
    quantization: str | None,
    device: str,
    freed: int,
    budget: int | None,
) -> quant.QuantLevel:
    """The level to load: the one asked for, refused at once (InsufficientMemory) when it would
    not fit with `freed` bytes freed; for "auto", the fastest here that fits (``auto_levels``),
    within the pool's `budget` too."""
    if quantization not in (None, "", "auto"):
        level = quant.resolve(quantization)
        memory.check(spec.id, config, level, device, freed)
        return level
    room = memory.available(device, freed).bytes
    if budget is not None:  # a pool's model also fits its budget
        room = min(room, budget)
    candidates = auto_levels(config, device)
    fitting = first_fitting(candidates, config, room)
    if fitting is not None:
        return fitting
    smallest = min(candidates, key=lambda lv: memory.estimate(config, lv).total)
    memory.check(spec.id, config, smallest, device, freed)  # raises: nothing fits here
    return smallest
