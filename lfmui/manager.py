"""ModelManager: the only door to the accelerator.

One resident model with its processor. ``load`` checks everything it cheaply can (catalog id,
quantization level, checkpoint files, config.json) before touching the resident model, so a bad
request leaves the previous model serving. A switch then drains the requests in flight (each holds
a lease: weights are never freed under a running generation; past a grace period they are asked
to stop), frees the old model completely (references dropped, gc, CUDA cache emptied; a
bitsandbytes model is never ``.to()``-moved) and loads the new one. If that load fails, the
previous model is loaded again. A second load while one runs is refused with a clear error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypedDict

from lfmui import heap, hub, images, loading, memory, quant
from lfmui.catalog import Catalog, ModelSpec
from lfmui.errors import (
    LfmuiError,
    LoadInProgress,
    ModelLoadError,
    NoModelLoaded,
    PoolFull,
)
from lfmui.loading import GIB, LoadedModel, ModelStatus, Progress, pool_key

log = logging.getLogger(__name__)
__all__ = ["GIB", "LoadedModel", "ModelManager", "ModelStatus", "pool_key"]
PICK_WAIT_S = 600.0  # a pick of a model that is loading for another pick waits this long for it


class Readiness(TypedDict):
    """``ModelManager.readiness``: typed, so the API page shows each key."""

    ready: bool
    state: str  # ready, loading, no_model
    loading: str | None
    model_id: str | None  # as /v1 names it
    label: str | None  # as the UI names it (an endpoint's model with its URL)
    reads_images: bool
    quantization: str | None
    endpoint: str | None
    random_weights: bool
    requests_in_flight: int
    tool_format: str | None  # catalog.TOOL_FORMATS' key (None: an endpoint's, not known here)
    thinks: bool  # a reasoning model (its thinking comes apart from its answer)


_managers: weakref.WeakSet[ModelManager] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for manager in list(_managers):
        manager._fresh_locks()


os.register_at_fork(after_in_child=_after_fork_in_child)


class PoolEntry(TypedDict):
    """One model of ``ModelManager.pool``: what a visitor's picker lists."""

    key: str  # what a pick names: model id @ level
    model_id: str
    quantization: str
    default: bool  # answers visitors who picked nothing
    answering: int  # requests using it now (it cannot be evicted while this is above 0)
    idle_s: float
    gib: float  # its share of the pool's budget


def memory_report(loaded: LoadedModel | None) -> dict[str, Any]:
    """`loaded`'s weight bytes, the process RSS and, on CUDA, allocated/reserved/peak."""
    return heap.memory_report(loaded.weight_bytes if loaded else 0, quant.cuda_available())


class ModelManager:
    """Holds the resident models: one by default; with a pool budget, as many as it holds.

    Without a budget a load replaces the resident model (a laptop: picking a model loads it).
    With `pool_budget` bytes, models stay resident side by side while their estimates fit the
    budget; a load that does not fit evicts the least recently used idle ones, never one that
    is answering, and is refused with a sentence when evicting every idle one is not enough.
    The default model answers whoever picked none; a pick names a resident model by its key.
    """

    def __init__(
        self,
        catalog: Catalog | None = None,
        drain_seconds: float = 10.0,
        on_loaded: Callable[[LoadedModel], str] | None = None,
        stop_seconds: float = 30.0,
        pool_budget: int | None = None,
        load_on_demand: bool = False,
        on_unloaded: Callable[[LoadedModel, list[LoadedModel]], None] | None = None,
    ) -> None:
        self.catalog = catalog or Catalog()
        self.on_loaded = on_loaded  # e.g. compiled.warm_up: compile before the first request
        # e.g. compiled.forget_compiled: what was compiled for a model goes with it
        self.on_unloaded = on_unloaded
        self.drain_seconds = drain_seconds  # requests in flight finish within this
        self.stop_seconds = stop_seconds  # then, asked to stop, they let go within this
        self._load_lock = threading.Lock()
        self._state = threading.Condition()
        self._current: LoadedModel | None = None  # the default model
        self._pool: dict[str, LoadedModel] = {}  # every resident model, the default included
        self.pool_budget = pool_budget  # bytes; None: one resident model
        self.load_on_demand = load_on_demand  # a visitor's pick may load into the pool
        self._switching = False
        self.loading: str | None = None  # id being loaded, for the status card
        # an OpenAI-compatible server that answers instead of the resident model (which stays
        # loaded): lfmui.endpoint.Endpoint, set by use_endpoint
        self.endpoint: Any = None
        self.sealed: str | None = None  # set by seal(): why no model loads or unloads any more
        _managers.add(self)

    def seal(self, reason: str) -> None:
        """Keep the pool as it is from now on: a load or unload is refused with `reason`
        (ZeroGPU: its workers hold the models loaded before launch, and no others). A pick of
        a resident model, or making one the default, still works."""
        self.sealed = reason

    def _fresh_locks(self) -> None:
        """After a fork: a lock another thread held at the fork stays held in the child, where
        that thread does not exist."""
        self._load_lock = threading.Lock()
        self._state = threading.Condition()

    def use_endpoint(self, endpoint: Any) -> None:
        """Send chats to `endpoint` (None: back to the in-process model)."""
        self.endpoint = endpoint

    # ---- requests -------------------------------------------------------------------------
    def current(self) -> LoadedModel | None:
        return self._current

    def resolve(self, pick: str | None) -> LoadedModel | None:
        """The resident model a pick names: its key (id@level), or a model id (its most
        recently used level); None, "" or "default": the default model."""
        if pick in (None, "", "default"):
            return self._current
        with self._state:
            return self._pool.get(pick) or self._latest(pick, None)

    def _latest(self, model_id: str, level: str | None) -> LoadedModel | None:
        """Under the state lock: the most recently used resident `model_id` (at `level`)."""
        same = [
            m
            for m in self._pool.values()
            if m.spec.id == model_id and level in (None, m.quantization)
        ]
        return max(same, key=lambda m: m.last_used) if same else None

    @contextlib.contextmanager
    def lease(self, pick: str | None = None) -> Iterator[LoadedModel]:
        """Use a resident model for one request (the default one, or the one `pick` names);
        a switch or an eviction waits for (or stops) the lease."""
        with self._state:
            loaded = self.resolve(pick)
            default = loaded is self._current
            if default and (self._switching or (loaded is None and self.loading)):
                raise NoModelLoaded(
                    f"A model switch is in progress ({self.loading or 'finishing'}); "
                    "send again in a moment."
                )
            if loaded is None and pick not in (None, "", "default"):
                raise NoModelLoaded(
                    f"{str(pick)[:80]} is not loaded here any more (it made room for another "
                    "model). Pick a loaded model in the Models tab, or pick this one again."
                )
            if loaded is None:
                raise NoModelLoaded("No model is loaded. Load one in the Models tab first.")
            loaded.leases += 1
            loaded.last_used = time.monotonic()
        try:
            yield loaded
        finally:
            with self._state:
                loaded.leases -= 1
                loaded.last_used = time.monotonic()
                self._state.notify_all()

    def pool(self) -> list[PoolEntry]:
        """The resident models, most recently used first."""
        now = time.monotonic()
        with self._state:
            resident = sorted(self._pool.values(), key=lambda m: -m.last_used)
            return [
                PoolEntry(
                    key=m.key,
                    model_id=m.spec.id,
                    quantization=m.quantization,
                    default=m is self._current,
                    answering=m.leases,
                    idle_s=0.0 if m.leases else round(now - m.last_used, 1),
                    gib=round(m.footprint / GIB, 3),
                )
                for m in resident
            ]

    def pick(
        self,
        model_id: str,
        quantization: str | None = None,
        progress: Progress | None = None,
        may_load: bool | None = None,
    ) -> str:
        """A visitor's pick: the key of a resident `model_id` (at `quantization` when named),
        loaded into the pool first when loading on demand is allowed (`may_load`, else the
        owner's setting) and it fits; the default model is left as it is."""
        wanted = None if quantization in (None, "", "auto") else str(quantization)
        resident = self._resident(model_id, wanted)
        if resident is not None:
            return resident
        if not (self.load_on_demand if may_load is None else may_load):
            self.catalog.get(model_id)  # an unknown id: its own sentence
            resident = ", ".join(sorted(self._pool)) or "none"
            raise NoModelLoaded(
                f"{model_id} is not loaded here, and only the owner may load models. "
                f"Pick a loaded one ({resident})."
            )
        try:
            return self._load(model_id, quantization, progress, default=False)["key"]
        except LoadInProgress:
            if self.loading != model_id:
                raise
        # the same model is loading for someone else's pick: this pick waits for it
        if self._load_lock.acquire(timeout=PICK_WAIT_S):
            self._load_lock.release()
        resident = self._resident(model_id, wanted)
        if resident is None:
            raise LoadInProgress(f"{model_id} is still loading; pick it again in a moment.")
        return resident

    def _resident(self, model_id: str, level: str | None) -> str | None:
        """The key of `model_id` in the pool (at `level`, if named), most recently used; the
        pick counts as a use."""
        with self._state:
            loaded = self._latest(model_id, level)
            if loaded is None:
                return None
            loaded.last_used = time.monotonic()
            return loaded.key

    def readiness(self, pick: str | None = None) -> Readiness:
        """What answers now, the one place that says it: ready or not (and why), the endpoint
        in use or the resident model (the default one, or the one `pick` names), whether it
        reads images, whether its replies are random-weight noise, and the requests holding
        the model now."""
        endpoint = self.endpoint
        if endpoint is not None and pick not in (None, "", "default", endpoint.key):
            endpoint = None  # the visitor picked a resident model
        loaded = self.resolve(pick)
        if endpoint is not None:
            state = "ready"
        elif self._switching or (self.loading and (loaded is None or self.pool_budget is None)):
            state = "loading"  # (a load into a pool leaves the resident models answering)
        else:
            state = "ready" if loaded is not None else "no_model"
        return Readiness(
            ready=state == "ready",
            state=state,
            loading=self.loading,
            model_id=endpoint.model if endpoint else loaded.spec.id if loaded else None,
            label=endpoint.label if endpoint else loaded.spec.id if loaded else None,
            reads_images=(endpoint.kind if endpoint else loaded.spec.kind if loaded else "vl")
            == "vl",
            quantization=None if endpoint or loaded is None else loaded.quantization,
            endpoint=endpoint.where if endpoint else None,
            random_weights=bool(
                endpoint.random_weights if endpoint else loaded and loaded.spec.random_weights
            ),
            requests_in_flight=loaded.leases if loaded and not endpoint else 0,
            tool_format=None if endpoint or loaded is None else loaded.spec.tool_format,
            thinks=bool(not endpoint and loaded and loaded.spec.thinks),
        )

    def status(self) -> dict[str, Any]:
        loaded = self._current
        status: dict[str, Any] = loaded.status() if loaded else {"model_id": None}
        status["loading"] = self.loading
        status["endpoint"] = self.endpoint.status() if self.endpoint else None
        status["memory"] = memory_report(loaded)
        return status

    # ---- loading --------------------------------------------------------------------------
    def load(
        self, model_id: str, quantization: str | None = None, progress: Progress | None = None
    ) -> ModelStatus:
        """Make `model_id` at `quantization` the default model; return its status."""
        return self._load(model_id, quantization, progress, default=True)

    def _load(
        self, model_id: str, quantization: str | None, progress: Progress | None, default: bool
    ) -> ModelStatus:
        if not self._load_lock.acquire(blocking=False):
            raise LoadInProgress(
                f"{self.loading or 'Another model'} is loading; wait for it to finish, then retry."
            )
        try:
            with self._state:
                self.loading = str(model_id)[:80]
            return self._load_locked(
                model_id, quantization, progress or loading.no_progress, default
            )
        finally:
            with self._state:
                self.loading = None
            self._load_lock.release()

    def unload(self) -> None:
        """Unload every resident model (each after its requests drain)."""
        if self.sealed:
            raise ModelLoadError(self.sealed)
        with self._load_lock:
            for loaded in list(self._pool.values()):
                self._retire(loaded)

    def _load_locked(
        self, model_id: str, quantization: str | None, progress: Progress, default: bool
    ) -> ModelStatus:
        spec = self.catalog.get(model_id)
        current = self._current
        prepared = self._prepare(spec, quantization, progress, default)
        if isinstance(prepared, LoadedModel):  # resident already
            return prepared.status()
        level, location, footprint, evicted = prepared
        replaced = [current] if current and self.pool_budget is None else []
        previous = (current.spec.id, current.quantization) if replaced else None
        progress(0.3, "freeing the previous model" if replaced or evicted else "loading weights")
        for loaded in replaced:
            self._retire(loaded)
        for loaded in evicted:
            self._retire(loaded, idle_only=True)
        failure = None
        try:
            progress(0.4, f"loading {spec.id} ({level.name})")
            with loading.weights_progress(progress, 0.4, 0.85):
                loaded = self._load_weights(spec, level, location)
            if self.on_loaded:
                progress(0.9, "warming up (compiling the decode step)")
                loaded.decode_note = self.on_loaded(loaded)
        except Exception as exc:
            log.warning("load of %s failed: %s", spec.id, repr(exc))  # not exc: records live on
            failure = loading.load_failure(spec, exc)
            loaded = None
        if failure is not None:
            # Out of the except block: the exception and its traceback (whose frames hold the
            # partly loaded weights) are gone, so freeing them happens before the restore.
            heap.free_accelerator(quant.cuda_available())
            if previous:
                failure += self._restore(*previous)
            raise ModelLoadError(failure)
        loaded.footprint = footprint
        with self._state:
            self._pool[loaded.key] = loaded
            if default or self._current is None:
                self._current = loaded
        progress(1.0, f"{spec.id} loaded")
        return loaded.status()

    def _prepare(self, spec: ModelSpec, quantization: str | None, progress: Progress, default):
        """Everything checked before the resident model is touched: the level that fits, room
        in the pool (evicting nothing yet), the files. The resident model when it is the one
        asked for; else (level, location, footprint, the idle models to evict)."""
        try:
            # The memory check needs the config alone: an offline build is checked before it is
            # built, a hub model before its weights are fetched; a checkpoint of unknown shape
            # (a local directory) is located first to read its config.json.
            config, location = memory.config_of(spec), None
            if config is None:
                location = self._locate(spec, progress)
                config = memory.config_of(spec, location)
            level = loading.fitting_level(
                spec, config, quantization, *self._room(), self.pool_budget
            )
            resident = self._pool.get(pool_key(spec.id, level.name))
            if resident is not None:
                if default:
                    with self._state:
                        self._current = resident
                return resident
            if self.sealed:
                raise ModelLoadError(self.sealed)
            footprint = memory.estimate(config, level).total
            evicted = self._room_for(spec.id, level.name, footprint)  # refused: nothing changed
            progress(0.05, f"checking {spec.id}")
            location = location or self._locate(spec, progress)
            if spec.source == "hub":  # the weights come down while the old model still serves
                location = hub.fetch(spec, location, progress)
        except LfmuiError:
            raise
        except Exception as exc:  # building an offline checkpoint ran out of memory, say
            raise ModelLoadError(loading.load_failure(spec, exc)) from None
        return level, location, footprint, evicted

    def budget_refusal(self, model_id: str, quantization: str | None = None) -> str | None:
        """Why the pool cannot hold `model_id` at `quantization` (loading.budget_refusal)."""
        if self.pool_budget is None:
            return None
        return loading.budget_refusal(self.catalog.get(model_id), quantization, self.pool_budget)

    def start_refusal(self, models: list[tuple[str, str]], budget_name: str) -> str | None:
        """Why the pool's budget cannot hold `models` (id, level) side by side at start."""
        if self.pool_budget is None:
            return None
        specs = [(self.catalog.get(model_id), level) for model_id, level in models]
        return loading.start_refusal(specs, self.pool_budget, budget_name, self._room()[0])

    def _room_for(self, model_id: str, level: str, footprint: int) -> list[LoadedModel]:
        """The idle models to evict, least recently used first, so that `footprint` more
        bytes fit the pool's budget; PoolFull (nothing evicted) when evicting every idle one
        is not enough. Without a budget the resident model is replaced, as a switch."""
        if self.pool_budget is None:
            return []
        with self._state:
            resident = sorted(self._pool.values(), key=lambda m: m.last_used)
        used = sum(m.footprint for m in resident)
        evicted: list[LoadedModel] = []
        for loaded in resident:
            if used + footprint <= self.pool_budget:
                break
            if loaded.leases == 0:
                evicted.append(loaded)
                used -= loaded.footprint
        if used + footprint <= self.pool_budget:
            return evicted
        answering = [m.key for m in resident if m not in evicted]
        if footprint > self.pool_budget:
            reason = "more than the whole pool holds"
        else:
            reason = f"the pool is full and {', '.join(answering)} are answering now"
        raise PoolFull(
            f"{model_id} at {level} needs about {memory.gib(footprint)} of the pool's "
            f"{memory.gib(self.pool_budget)}: {reason}, so no model was unloaded for it. "
            "Pick a loaded model, or pick this one again when a reply has ended."
        )

    def levels(self, model_id: str) -> list[dict[str, Any]]:
        """Every quantization level for `model_id` here (loading.level_rows)."""
        return loading.level_rows(self.catalog.get(model_id), *self._room())

    def _room(self) -> tuple[str, int]:
        """The device a load goes to, and the bytes a load may free: the resident model's on a
        switch; with a pool, the idle models' (eviction)."""
        device = "cuda" if quant.cuda_available() else "cpu"
        if self.pool_budget is None:
            current = self._current
            return device, current.weight_bytes if current else 0
        with self._state:
            return device, sum(m.weight_bytes for m in self._pool.values() if not m.leases)

    def _restore(self, model_id: str, quantization: str) -> str:
        loaded = None
        try:
            spec = self.catalog.get(model_id)
            level = quant.resolve(quantization)
            loaded = self._load_weights(spec, level, self._locate(spec, loading.no_progress))
        except Exception as exc:  # restoring is best effort: say so, don't mask the first error
            log.warning("could not restore %s: %s", model_id, repr(exc))
        if loaded is None:
            heap.free_accelerator(
                quant.cuda_available()
            )  # outside the except block, as in _load_locked
            return f" The previous model ({model_id}) could not be reloaded; load one again."
        with self._state:
            self._pool[loaded.key] = loaded
            self._current = loaded
        return f" The previous model ({model_id}, {quantization}) is loaded again."

    def _locate(self, spec: ModelSpec, progress: Progress) -> hub.Location:
        return loading.locate(spec, progress)  # a method: tests stand in for it

    def _load_weights(self, spec: ModelSpec, level: quant.QuantLevel, location: hub.Location):
        return loading.load_weights(spec, level, location)

    def _retire(self, loaded: LoadedModel, idle_only: bool = False) -> None:
        """Drain `loaded`'s leases (grace period, then ask them to stop), then free it. A lease
        that outlasts both (a request stuck outside generation) ends the switch with
        ModelLoadError, the model still serving. An eviction (`idle_only`) takes an idle
        model only: one that began answering meanwhile stays, and the load is refused."""
        with self._state:
            if self._pool.get(loaded.key) is not loaded:
                return
            if idle_only and loaded.leases:
                raise PoolFull(
                    f"{loaded.key} began answering while room was made for another model, so "
                    "it stays; pick again when its reply has ended."
                )
            self._switching = loaded is self._current
            try:
                if not self._state.wait_for(lambda: not loaded.leases, self.drain_seconds):
                    loaded.cancel.set()  # generations stop at their next token
                    if not self._state.wait_for(lambda: not loaded.leases, self.stop_seconds):
                        loaded.cancel.clear()
                        raise ModelLoadError(
                            f"{loaded.leases} request(s) still use {loaded.spec.id} and did not "
                            f"stop within {self.drain_seconds + self.stop_seconds:g} s, so it "
                            "keeps serving. Stop or close the running replies, then load again."
                        )
                del self._pool[loaded.key]
                if self._current is loaded:  # the most recently used other one takes over
                    rest = sorted(self._pool.values(), key=lambda m: -m.last_used)
                    self._current = rest[0] if rest else None
            finally:
                self._switching = False
        loaded.model = None
        loaded.processor = None  # the LoadedModel may outlive this call; its weights don't
        images.forget()  # decoded pictures go with the model they were read for
        if self.on_unloaded:
            with self._state:
                resident = list(self._pool.values())
            self.on_unloaded(loaded, resident)
        heap.free_accelerator(quant.cuda_available())
