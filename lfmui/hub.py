"""The Hugging Face Hub: where a catalog model's weights come from, and which model to start with.

``offline_mode`` is the one reader of ``HF_HUB_OFFLINE``. ``check`` fetches (or finds in the
cache) a hub model's config at its pinned revision before anything else is touched, after one
quick reachability probe instead of the hub client's retries (over 20 s on a dead network).
``choose_startup_model`` picks the hub default, or the offline fallback with a banner saying why.
``pin`` (``python -m lfmui.hub pin``) records each hub model's current commit in
``lfmui/pins.json``, the revisions the catalog loads.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lfmui.catalog import Catalog, ModelSpec
from lfmui.errors import ModelLoadError


def offline_mode() -> bool:
    """Whether the Hub is off limits (``HF_HUB_OFFLINE=1``, set by ``--offline`` too)."""
    return os.environ.get("HF_HUB_OFFLINE") == "1"


@dataclass(frozen=True)
class Location:
    """What from_pretrained reads: a directory, or a hub repo at a revision (maybe cache-only)."""

    path: str
    revision: str | None = None
    local_only: bool = False

    def kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"revision": self.revision} if self.revision else {}
        if self.local_only or offline_mode():
            kwargs["local_files_only"] = True
        return kwargs


def check(spec: ModelSpec, probe_seconds: float = 3.0) -> Location:
    """The hub model's config at its revision, fetched (or read from the cache) now: an
    unreachable Hub or a bad revision fails here, in seconds, with the old model untouched."""
    from transformers import AutoConfig

    reachable = not offline_mode() and _hub_reachable(spec.location, probe_seconds)
    location = Location(spec.location, spec.revision, local_only=not reachable)
    try:
        AutoConfig.from_pretrained(location.path, **location.kwargs())
    except Exception as exc:
        newer = _needs_newer_transformers(spec, location)
        raise ModelLoadError(newer or _hub_failure(spec, exc, reachable)) from None
    return location


def _needs_newer_transformers(spec: ModelSpec, location: Location) -> str:
    """Where the config could be read but names an architecture this transformers does not
    know: a sentence with the version that wrote it (config.json's transformers_version)."""
    import transformers
    from huggingface_hub import hf_hub_download
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        path = hf_hub_download(location.path, "config.json", **location.kwargs())
        config = json.loads(Path(path).read_text())
        model_type = str(config["model_type"])
    except Exception:  # noqa: BLE001 - no config to read: the other sentences say why
        return ""
    if model_type in CONFIG_MAPPING:
        return ""
    said = f"{spec.id} is a '{model_type[:40]}' model, which transformers "
    said += f"{transformers.__version__} does not know"
    saved = str(config.get("transformers_version") or "")[:20]
    if not saved:
        return f"{said}. Upgrade transformers (pip install -U transformers) or pick another model."
    return (
        f"{said}; it was saved with transformers {saved}. Upgrade "
        f'(pip install -U "transformers>={saved}") or pick another model.'
    )


WEIGHT_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.py"]


def fetch(spec: ModelSpec, location: Location, progress: Any) -> Location:
    """The model's files in the local cache, downloaded now: the manager calls this before it
    frees the resident model, so a download that fails or takes long leaves a model to chat
    with. `progress(fraction, message)` follows the files, from 0.1 to 0.3 of the load."""
    if location.local_only:
        return location  # from the cache: nothing to download
    from huggingface_hub import snapshot_download
    from tqdm.auto import tqdm

    class Files(tqdm):  # huggingface_hub's own progress, one step per file
        files = 0  # counted here: a disabled bar (HF_HUB_DISABLE_PROGRESS_BARS) counts nothing

        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            self.files += n or 0
            if self.total:
                done = f"{int(self.files)} of {int(self.total)} files"
                share = min(self.files / self.total, 1.0)
                progress(round(0.1 + 0.2 * share, 3), f"downloading {spec.location}: {done}")
            return shown

    try:
        path = snapshot_download(
            spec.location,
            revision=spec.revision,
            allow_patterns=WEIGHT_FILES,
            tqdm_class=Files,
        )
    except Exception as exc:
        raise ModelLoadError(_hub_failure(spec, exc, reachable=True)) from None
    return Location(path)


def _hub_failure(spec: ModelSpec, exc: BaseException, reachable: bool) -> str:
    name = type(exc).__name__
    if reachable and ("Revision" in name or "revision" in str(exc).lower()):
        return (
            f"{spec.location} has no revision '{spec.revision}'. Use a branch, tag or commit "
            "that exists on the Hub."
        )
    if reachable:
        return (
            f"Could not read {spec.location} at revision '{spec.revision}' from the Hugging "
            f"Face Hub ({name}). Try again, or load an offline model such as lfm2-vl-tiny."
        )
    return (
        f"Could not download {spec.id} from the Hugging Face Hub (unreachable or offline), and "
        f"revision '{spec.revision}' is not in the local cache. Check the network, or load an "
        "offline model such as lfm2-vl-tiny."
    )


def choose_startup_model(
    catalog: Catalog, requested: str | None, offline: bool, probe_seconds: float = 3.0
) -> tuple[str, str]:
    """The model to load at start and a banner ("" when none): hub default or offline fallback."""
    from lfmui.catalog import DEFAULT_MODEL, OFFLINE_DEFAULT

    model_id = requested or DEFAULT_MODEL
    spec = catalog.get(model_id)
    if spec.source != "hub":
        return model_id, ""
    if offline or offline_mode():
        reason = "offline mode"
    elif _hub_cached(spec.location, spec.revision) or _hub_reachable(spec.location, probe_seconds):
        return model_id, ""
    else:
        reason = "the Hugging Face Hub cannot be reached"
    return OFFLINE_DEFAULT, (
        f"{reason}: loaded {OFFLINE_DEFAULT} instead of {model_id}. "
        f"It has {catalog.get(OFFLINE_DEFAULT).note}."
    )


def _hub_cached(repo: str, revision: str = "main") -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo, "config.json", revision=revision), str)
    except Exception:
        return False


def _hub_reachable(repo: str, seconds: float) -> bool:
    """One quick metadata request with a short timeout, so a dead network costs seconds."""
    result: list[bool] = []

    def probe() -> None:
        try:
            from huggingface_hub import HfApi

            HfApi().model_info(repo, timeout=seconds)
            result.append(True)
        except Exception:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(seconds + 0.5)  # DNS stalls can outlast the HTTP timeout: don't wait for them
    return bool(result and result[0])


def pin(catalog: Catalog, api: Any = None) -> dict[str, str]:
    """Each hub model's current commit on the Hub (its main branch now), written to
    ``pins.json``: from then on the catalog loads exactly those files. A repo the Hub does not
    answer for keeps its old pin, and the run says so."""
    from lfmui.catalog import PINS_FILE

    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    saved = json.loads(PINS_FILE.read_text())
    revisions = dict(saved["revisions"])
    for spec in catalog.all():
        if spec.source != "hub":
            continue
        try:
            sha = str(api.model_info(spec.location, revision="main").sha)
        except Exception as exc:  # noqa: BLE001 - said per repo; the others still pin
            print(f"{spec.location}: not pinned ({type(exc).__name__}); kept {spec.revision}")
            continue
        if len(sha) != 40 or any(c not in "0123456789abcdef" for c in sha):
            print(f"{spec.location}: the Hub answered '{sha[:60]}', not a commit; kept")
            continue
        revisions[spec.location] = sha
        print(f"{spec.location}: {sha}")
    PINS_FILE.write_text(json.dumps({**saved, "revisions": revisions}, indent=2) + "\n")
    return revisions


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["pin"]:
        sys.exit("usage: python -m lfmui.hub pin   (record each hub model's current commit)")
    pin(Catalog())
