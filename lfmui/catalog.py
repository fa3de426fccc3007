"""The model catalog: every model the app may load, and nothing else.

A ``ModelSpec`` names where the weights come from (a hub repo, a local directory given on the
command line, or an offline checkpoint that ``lfmui.offline`` builds), whether the model reads
images, its recommended sampling and the hub repo it is or stands in for. The browser can only
pick ids that are in the catalog: it never names a repo id or a path itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from lfmui.errors import CheckpointError, UnknownModelError

Kind = Literal["vl", "text"]
Source = Literal["hub", "local", "offline"]

VL_REPO, MOE_REPO = "LiquidAI/LFM2-VL-450M", "LiquidAI/LFM2-8B-A1B"
THINKING_MOE_REPO = "LiquidAI/LFM2.5-8B-A1B"  # a reasoning model: it thinks before answering
VL_3B_REPO = "LiquidAI/LFM2-VL-3B"
VL_SAMPLING = MappingProxyType({"temperature": 0.1, "min_p": 0.15, "repetition_penalty": 1.05})
MOE_SAMPLING = MappingProxyType({"temperature": 0.3, "min_p": 0.15, "repetition_penalty": 1.05})
# Tiny random models: greedy decoding repeats one token; plain sampling shows that text streams.
NOISE_SAMPLING = MappingProxyType({"temperature": 1.0, "min_p": 0.0, "repetition_penalty": 1.05})
VL_SYSTEM_PROMPT = "You are a helpful multimodal assistant by Liquid AI."
TEXT_SYSTEM_PROMPT = "You are a helpful assistant by Liquid AI."
RANDOM_WEIGHTS_NOTE = "random weights: replies are noise; for trying the app offline"
# what a model of each kind gets where its card says nothing more
SAMPLING_OF: dict[str, MappingProxyType] = {"vl": VL_SAMPLING, "text": MOE_SAMPLING}
SYSTEM_PROMPT_OF = {"vl": VL_SYSTEM_PROMPT, "text": TEXT_SYSTEM_PROMPT}


# Each vision model's image defaults, as its card and processor_config.json give them: the
# offline builds that stand in for it are saved with them, the model card shows them before a
# load, and a connected server's model falls back on them where its processor config cannot be
# read. A loaded hub model reads its own processor_config.json, which stays the authority.
_IMAGES = {"do_image_splitting": True, "min_tiles": 2, "max_tiles": 10, "max_image_tokens": 256}
IMAGE_DEFAULTS: dict[str, MappingProxyType] = {
    repo: MappingProxyType({**_IMAGES, **own})
    for repo, own in {
        VL_REPO: {"use_thumbnail": False, "min_image_tokens": 64, "max_pixels_tolerance": 2.0},
        "LiquidAI/LFM2-VL-1.6B": {
            "use_thumbnail": True,
            "min_image_tokens": 64,
            "max_pixels_tolerance": 1.5,
        },
        VL_3B_REPO: {"use_thumbnail": True, "min_image_tokens": 64, "max_pixels_tolerance": 1.5},
        # LFM2.5-VL-450M's card: min_image_tokens 32, and a thumbnail beside the tiles
        "LiquidAI/LFM2.5-VL-450M": {
            "use_thumbnail": True,
            "min_image_tokens": 32,
            "max_pixels_tolerance": 2.0,
        },
        # LFM2.5-VL-1.6B's card gives the vision line of LFM2-VL-1.6B's
        "LiquidAI/LFM2.5-VL-1.6B": {
            "use_thumbnail": True,
            "min_image_tokens": 64,
            "max_pixels_tolerance": 1.5,
        },
    }.items()
}

# Each hub model's pinned revision (a commit), from pins.json: `python -m lfmui.hub pin` writes
# it from the Hub; a repo missing there loads its main branch.
PINS_FILE = Path(__file__).with_name("pins.json")
PINS: dict[str, str] = json.loads(PINS_FILE.read_text())["revisions"]

# How each family's template writes a tool turn, in one line each (what the playground shows)
TOOL_FORMATS = {
    "lfm2": "LFM2's: the tool list between `<|tool_list_start|>` and `<|tool_list_end|>`, "
    "results between `<|tool_response_start|>` and `<|tool_response_end|>`",
    "lfm2.5": "LFM2.5's: the tool list and the results as plain JSON, no wrappers",
}


@dataclass(frozen=True)
class ModelSpec:
    """One loadable model: where it lives, what it reads and how to sample it."""

    id: str
    label: str
    source: Source
    location: str  # hub repo id, local directory, or offline build name
    kind: Kind
    sampling: MappingProxyType = field(default_factory=lambda: VL_SAMPLING)
    system_prompt: str = VL_SYSTEM_PROMPT
    # the hub repo this model is (or, for offline builds and local checkpoints, stands in
    # for): what "copy as code" loads
    hub_repo: str = VL_REPO
    note: str = ""
    listed: bool = True  # shown in the UI's picker (full-shape synthetic builds are not)
    revision: str = "main"  # hub models: the branch, tag or commit to load
    # a reasoning model: its template opens a <think> block before the answer (lfmui.reasoning)
    thinks: bool = False
    family: str = "LFM2"  # "LFM2" or "LFM2.5": the picker groups by it

    @property
    def tool_format(self) -> str:
        """How its template declares tools and returns results: LFM2's wrappers
        (<|tool_list_start|>, <|tool_response_start|>) or LFM2.5's plain JSON. Calls are
        Pythonic between <|tool_call_start|> and <|tool_call_end|> in both (toolcalls)."""
        return "lfm2.5" if self.family == "LFM2.5" else "lfm2"

    @property
    def random_weights(self) -> bool:
        return self.source == "offline"

    @property
    def image_defaults(self) -> MappingProxyType:
        """The image processor's defaults of the hub model this is or stands in for (empty
        for text models and for local checkpoints, whose own processor config says)."""
        if self.kind != "vl" or self.source == "local":
            return MappingProxyType({})
        return IMAGE_DEFAULTS.get(self.hub_repo, MappingProxyType({}))

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "label": self.label,
            "source": self.source,
            "kind": self.kind,
            "sampling": dict(self.sampling),
            "system_prompt": self.system_prompt,
            "hub_repo": self.hub_repo,
            "note": self.note,
            "random_weights": self.random_weights,
            "thinks": self.thinks,
            "family": self.family,
            "tool_format": self.tool_format,
            "image_defaults": dict(self.image_defaults),
            "revision": self.revision if self.source == "hub" else None,
        }


def _offline(name: str, label: str, hub_repo: str, listed: bool = True) -> ModelSpec:
    kind: Kind = "text" if hub_repo in (MOE_REPO, THINKING_MOE_REPO) else "vl"
    return ModelSpec(
        id=name,
        label=label,
        source="offline",
        location=name,
        kind=kind,
        sampling=NOISE_SAMPLING if name.endswith("-tiny") else SAMPLING_OF[kind],
        system_prompt=SYSTEM_PROMPT_OF[kind],
        hub_repo=hub_repo,
        note=RANDOM_WEIGHTS_NOTE,
        listed=listed,
    )


def _hub(
    repo: str, kind: Kind, label: str, sampling: MappingProxyType | None = None, **more
) -> ModelSpec:
    """A model on the Hub, by its repo id (the part after ``LiquidAI/`` is its id)."""
    return ModelSpec(
        id=repo.split("/")[-1],
        label=label,
        source="hub",
        location=repo,
        kind=kind,
        hub_repo=repo,
        sampling=sampling or SAMPLING_OF[kind],
        system_prompt=SYSTEM_PROMPT_OF[kind],
        revision=PINS.get(repo, "main"),
        **more,
    )


# The cards' recommended sampling (LFM2.5 adds top_k)
LFM25_8B_SAMPLING = MappingProxyType(
    {"temperature": 0.2, "top_k": 80, "min_p": 0.0, "repetition_penalty": 1.05}
)
LFM25_1B_SAMPLING = MappingProxyType(
    {"temperature": 0.1, "top_k": 50, "top_p": 0.1, "min_p": 0.0, "repetition_penalty": 1.05}
)

# The current family first, by size; the LFM2 originals stay after it
LFM25_MODELS = (
    _hub(
        "LiquidAI/LFM2.5-VL-450M",
        "vl",
        "LFM2.5-VL-450M (images; smallest and fastest)",
        family="LFM2.5",
    ),
    _hub(
        "LiquidAI/LFM2.5-VL-1.6B",
        "vl",
        "LFM2.5-VL-1.6B (images; best for images on a CPU)",
        family="LFM2.5",
    ),
    _hub(VL_3B_REPO, "vl", "LFM2-VL-3B (images; the largest vision model)"),
    _hub(
        "LiquidAI/LFM2.5-1.2B-Instruct",
        "text",
        "LFM2.5-1.2B-Instruct (text)",
        LFM25_1B_SAMPLING,
        family="LFM2.5",
    ),
    _hub(
        "LiquidAI/LFM2.5-1.2B-Thinking",
        "text",
        "LFM2.5-1.2B-Thinking (text; thinks first)",
        LFM25_1B_SAMPLING,  # the docs' one line for LFM2.5's text models
        thinks=True,
        family="LFM2.5",
    ),
    _hub(
        THINKING_MOE_REPO,
        "text",
        "LFM2.5-8B-A1B (text, mixture of experts; largest; thinks)",
        LFM25_8B_SAMPLING,
        thinks=True,
        family="LFM2.5",
    ),
)

LFM2_MODELS = (
    _hub(VL_REPO, "vl", "LFM2-VL-450M (vision-language)"),
    _hub("LiquidAI/LFM2-VL-1.6B", "vl", "LFM2-VL-1.6B (vision-language)"),
    _hub(MOE_REPO, "text", "LFM2-8B-A1B (mixture of experts, text only)"),
)

HUB_MODELS = LFM25_MODELS + LFM2_MODELS

OFFLINE_MODELS = (
    _offline(
        "lfm2-vl-tiny",
        "lfm2-vl-tiny (offline, random weights; stands in for LFM2-VL-450M)",
        VL_REPO,
    ),
    _offline(
        "lfm2-moe-tiny",
        "lfm2-moe-tiny (offline, random weights; stands in for LFM2-8B-A1B)",
        MOE_REPO,
    ),
    replace(
        _offline(
            "lfm2.5-thinking-tiny",
            "lfm2.5-thinking-tiny (offline, random weights; stands in for LFM2.5-8B-A1B: "
            "thinks, LFM2.5's template)",
            THINKING_MOE_REPO,
        ),
        thinks=True,
        family="LFM2.5",
    ),
    # Full-shape synthetic builds for benchmarks: hidden from the picker (an 8B fp32 build needs
    # more memory than a laptop has); `--synthetic` lists them.
    _offline(
        "lfm2-moe-replica", "LFM2-8B-A1B layout at tiny widths (random weights)", MOE_REPO, False
    ),
    _offline("lfm2-vl-450m-synthetic", "LFM2-VL-450M shape (random weights)", VL_REPO, False),
    _offline(
        "lfm2-vl-1.6b-synthetic",
        "LFM2-VL-1.6B shape (random weights)",
        "LiquidAI/LFM2-VL-1.6B",
        False,
    ),
    _offline("lfm2-8b-a1b-synthetic", "LFM2-8B-A1B shape (random weights)", MOE_REPO, False),
    _offline("lfm2-vl-3b-synthetic", "LFM2-VL-3B shape (random weights)", VL_3B_REPO, False),
    replace(
        _offline(
            "lfm2.5-8b-a1b-synthetic",
            "LFM2.5-8B-A1B shape (random weights; thinks)",
            THINKING_MOE_REPO,
            False,
        ),
        thinks=True,
        family="LFM2.5",
    ),
)

DEFAULT_MODEL = "LFM2-VL-450M"
OFFLINE_DEFAULT = "lfm2-vl-tiny"

_TEXT_MODEL_TYPES = {"lfm2", "lfm2_moe"}
_VL_MODEL_TYPES = {"lfm2_vl"}


class Catalog:
    """The set of loadable models: the built-in entries plus local paths from the command line."""

    def __init__(self, specs: tuple[ModelSpec, ...] = HUB_MODELS + OFFLINE_MODELS) -> None:
        self._specs: dict[str, ModelSpec] = {s.id: s for s in specs}

    def get(self, model_id: str) -> ModelSpec:
        """The entry for `model_id`, if the picker lists it: the full-shape benchmark builds
        are refused unless the app was started with --synthetic (one unauthenticated call must
        not make the server build an 8B checkpoint)."""
        spec = self._specs.get(model_id) if isinstance(model_id, str) else None
        if spec is not None and not spec.listed:
            raise UnknownModelError(
                f"'{spec.id}' is a full-shape benchmark build and is not offered here. "
                f"Pick one of: {', '.join(s.id for s in self.listed())} (or start the app "
                "with --synthetic)."
            )
        if spec is None:
            raise UnknownModelError(
                f"'{str(model_id)[:80]}' is not in the model catalog. "
                f"Pick one of: {', '.join(s.id for s in self.listed())}."
            )
        return spec

    def listed(self) -> list[ModelSpec]:
        return [s for s in self._specs.values() if s.listed]

    def all(self) -> list[ModelSpec]:
        return list(self._specs.values())

    def show_all(self) -> None:
        """List the full-shape synthetic builds in the picker too (`--synthetic`)."""
        self._specs = {k: replace(s, listed=True) for k, s in self._specs.items()}

    def add_local(self, path: str | Path) -> ModelSpec:
        """Register a local transformers checkpoint directory (from `--model /path`)."""
        directory = Path(path).expanduser().resolve()
        kind = checkpoint_kind(directory)
        spec = ModelSpec(
            id=f"local:{directory.name}",
            label=f"{directory.name} (local checkpoint)",
            source="local",
            location=str(directory),
            kind=kind,
            sampling=SAMPLING_OF[kind],
            system_prompt=SYSTEM_PROMPT_OF[kind],
            hub_repo=VL_REPO if kind == "vl" else MOE_REPO,
        )
        self._specs[spec.id] = spec
        return spec


def checkpoint_kind(directory: Path) -> Kind:
    """Read a checkpoint's config.json and say whether it is a VL or a text LFM2 model."""
    config_file = directory / "config.json"
    if not directory.is_dir() or not config_file.is_file():
        raise CheckpointError(
            f"'{directory.name}' is not a transformers checkpoint (no config.json). "
            "Pass a directory made by save_pretrained."
        )
    try:
        model_type = json.loads(config_file.read_text())["model_type"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"The config.json of '{directory.name}' is not valid ({type(exc).__name__}). "
            "Re-export the checkpoint with save_pretrained."
        ) from None
    if model_type in _VL_MODEL_TYPES:
        return "vl"
    if model_type in _TEXT_MODEL_TYPES:
        return "text"
    raise CheckpointError(
        f"'{directory.name}' holds a '{str(model_type)[:40]}' model; lfmui runs LFM2 models "
        "(lfm2, lfm2_moe, lfm2_vl)."
    )
