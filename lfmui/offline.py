"""Offline LFM2 checkpoints built from transformers' own classes with random weights:
``ensure_checkpoint(name)`` builds one once into the cache (``LFMUI_CACHE`` or ``~/.cache/lfmui``)
and returns its path, which loads through the same from_pretrained path as a downloaded model.
Random weights make noise: the UI says so. The builds and their shapes:
docs/testing.md#offline-checkpoints-lfmuioffline.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lfmui.lfm2_format import CHAT_TEMPLATE, MODEL_MAX_LENGTH, THINKING_TEMPLATE, build_tokenizer

BUILD_VERSION = 1  # bump when a builder below changes: cached builds are rebuilt
MARKER = "lfmui-build.json"
SHAPES_FILE = Path(__file__).with_name("lfm2_shapes.json")

TINY_VL = {
    "kind": "vl",
    "downsample_factor": 2,
    "projector_hidden_size": 64,
    "vision_config": {
        "model_type": "siglip2_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_patches": 256,
        "patch_size": 16,
    },
    "text_config": {
        "model_type": "lfm2",
        "vocab_size": 1024,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "full_attn_idxs": [1],
    },
}
TINY_MOE = {
    "kind": "moe",
    "vocab_size": 1024,
    "hidden_size": 64,
    "intermediate_size": 128,
    "moe_intermediate_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "num_dense_layers": 1,
    "layer_types": ["conv", "full_attention", "conv"],
}
# The 8B's layout (24 layers: 18 conv + 6 attention, 2 dense, 32 experts, top-4) at tiny widths:
# what depends on the layout (operations per token, expert routing, load peaks) measured in seconds.
REPLICA_WIDTHS = {
    "vocab_size": 1024,
    "hidden_size": 64,
    "intermediate_size": 128,
    "moe_intermediate_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
SHAPE_OF_BUILD = {
    "lfm2-vl-450m-synthetic": "LFM2-VL-450M",
    "lfm2-vl-1.6b-synthetic": "LFM2-VL-1.6B",
    "lfm2-8b-a1b-synthetic": "LFM2-8B-A1B",
    "lfm2-vl-3b-synthetic": "LFM2-VL-3B",
    "lfm2.5-8b-a1b-synthetic": "LFM2.5-8B-A1B",
}
# LFM2.5's thinking template (THINKING_TEMPLATE)
THINKING_BUILDS = {"lfm2.5-thinking-tiny", "lfm2.5-8b-a1b-synthetic"}

_build_lock = threading.Lock()


def cache_dir() -> Path:
    """Where offline checkpoints live: ``LFMUI_CACHE`` or ``~/.cache/lfmui``."""
    return Path(os.environ.get("LFMUI_CACHE") or Path.home() / ".cache" / "lfmui")


def shape_config(name: str) -> dict[str, Any]:
    """The raw shape dict of an offline build (tiny ones inline, full ones from the JSON file)."""
    if name == "lfm2-vl-tiny":
        return TINY_VL
    if name in ("lfm2-moe-tiny", "lfm2.5-thinking-tiny"):
        return TINY_MOE
    if name == "lfm2-moe-replica":
        return {**shape_config("lfm2-8b-a1b-synthetic"), **REPLICA_WIDTHS}
    if name in SHAPE_OF_BUILD:
        return json.loads(SHAPES_FILE.read_text())[SHAPE_OF_BUILD[name]]
    raise KeyError(name)


def make_config(shape: dict[str, Any]):
    """A transformers config (Lfm2VlConfig or Lfm2MoeConfig) for a shape dict."""
    from transformers import Lfm2MoeConfig, Lfm2VlConfig

    ids = {"bos_token_id": 1, "eos_token_id": 7, "pad_token_id": 0}
    fields = {k: v for k, v in shape.items() if k != "kind"}
    if shape["kind"] == "vl":
        text = {**fields.pop("text_config"), **ids, "max_position_embeddings": MODEL_MAX_LENGTH}
        return Lfm2VlConfig(
            vision_config=dict(fields.pop("vision_config")),
            text_config=text,
            image_token_id=396,
            **fields,
        )
    return Lfm2MoeConfig(**fields, **ids, max_position_embeddings=MODEL_MAX_LENGTH)


def model_class(config):
    from transformers import Lfm2MoeForCausalLM, Lfm2VlForConditionalGeneration

    return Lfm2VlForConditionalGeneration if config.model_type == "lfm2_vl" else Lfm2MoeForCausalLM


def language_model_parameters(name: str) -> int:
    """Parameters of the language model of a build, counted on the meta device (no memory)."""
    import torch

    config = make_config(shape_config(name))
    with torch.device("meta"):
        model = model_class(config)(config)
    lm = model.model.language_model if config.model_type == "lfm2_vl" else model
    # LFM2 ties the LM head to the embeddings, so counting lm's own parameters counts it once.
    return sum(p.numel() for p in lm.parameters())


def _generation_config(kind: str):
    """The generation_config.json a hub checkpoint ships: the catalog's recommended sampling."""
    from transformers import GenerationConfig

    from lfmui.catalog import MOE_SAMPLING, VL_SAMPLING

    return GenerationConfig(
        bos_token_id=1,
        eos_token_id=7,
        pad_token_id=0,
        do_sample=True,
        max_new_tokens=512,
        **(MOE_SAMPLING if kind == "moe" else VL_SAMPLING),
    )


def _write_checkpoint(name: str, target: Path, device: str | None) -> None:
    import torch

    shape = shape_config(name)
    config = make_config(shape)
    vocab = config.text_config.vocab_size if shape["kind"] == "vl" else config.vocab_size
    tokenizer = build_tokenizer(vocab, chat_template_of(name))
    torch.manual_seed(0)
    tiny = name.endswith("-tiny")
    dtype = torch.float32 if tiny else torch.bfloat16  # the hub checkpoints ship in bf16
    if shape["kind"] == "moe" and not tiny and name != "lfm2-moe-replica":
        _write_by_blocks(config, target, dtype)  # the 8B: 16.7 GB in bf16 never held at once
    else:
        with torch.device(device or "cpu"):
            model = model_class(config)._from_config(config, dtype=dtype)
        model.generation_config = _generation_config(shape["kind"])
        model.save_pretrained(target)
        del model
    if device and device.startswith("cuda"):
        torch.cuda.empty_cache()  # the build's weights must not count against the load after it
    if shape["kind"] == "vl":
        from transformers import Lfm2VlImageProcessor, Lfm2VlProcessor

        image_processor = Lfm2VlImageProcessor(**image_defaults_of(name))
        processor = Lfm2VlProcessor(image_processor, tokenizer, chat_template=CHAT_TEMPLATE)
        processor.save_pretrained(target)
    else:
        tokenizer.save_pretrained(target)


def _blocks(module: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(name, module) pieces that hold every parameter once: each entry of a ModuleList, and
    each other module with no ModuleList inside it."""
    from torch import nn

    pieces = []
    for name, child in module.named_children():
        full = f"{prefix}{name}"
        if isinstance(child, nn.ModuleList):
            pieces += [(f"{full}.{i}", entry) for i, entry in enumerate(child)]
        elif any(isinstance(m, nn.ModuleList) for m in child.modules()):
            pieces += _blocks(child, f"{full}.")
        else:
            pieces.append((full, child))
    return pieces


def _write_by_blocks(config: Any, target: Path, dtype: Any) -> None:
    """Random weights drawn one block (a decoder layer, the embeddings) at a time, each written
    as its own safetensors shard in the hub's layout (per-expert tensors): the build holds one
    layer, never the model (the 8B in bf16 is 16.7 GB; building it whole was killed here)."""
    import torch
    from safetensors.torch import save_file
    from transformers.core_model_loading import revert_weight_conversion

    with torch.device("meta"):
        model = model_class(config)(config)
    tied = (
        set(getattr(model, "_tied_weights_keys", None) or {})
        if config.tie_word_embeddings
        else set()
    )
    pieces = [(n, m) for n, m in _blocks(model) if any(True for _ in m.parameters())]
    weight_map: dict[str, str] = {}
    for number, (name, block) in enumerate(pieces, start=1):
        block.to_empty(device="cpu")
        with torch.no_grad():
            for module in block.modules():
                model._init_weights(module)
        state = {
            f"{name}.{key}": value.to(dtype)
            for key, value in block.state_dict().items()
            if f"{name}.{key}" not in tied
        }
        state = revert_weight_conversion(model, state)
        shard = f"model-{number:05d}-of-{len(pieces):05d}.safetensors"
        save_file(
            {k: v.contiguous().clone() for k, v in state.items()}, target / shard, {"format": "pt"}
        )
        weight_map.update(dict.fromkeys(state, shard))
        block.to("meta")  # the next block reuses the memory
        del state
    index = {"metadata": {}, "weight_map": weight_map}
    (target / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config.dtype = dtype
    config.save_pretrained(target)
    _generation_config("moe").save_pretrained(target)


def is_built(path: Path) -> bool:
    try:
        return json.loads((path / MARKER).read_text()).get("version") == BUILD_VERSION
    except (OSError, ValueError, AttributeError):
        return False


def image_defaults_of(name: str) -> dict[str, Any]:
    """The image processor settings of the hub model the build `name` stands in for (the
    catalog's IMAGE_DEFAULTS): a synthetic 1.6B cuts images as LFM2-VL-1.6B does."""
    from lfmui.catalog import OFFLINE_MODELS

    spec = next((s for s in OFFLINE_MODELS if s.location == name), None)
    return dict(spec.image_defaults) if spec else {}


def _current_processor(target: Path, name: str) -> None:
    """A cached VL build keeps its weights when only the image defaults changed: its
    processor_config.json is rewritten with the current ones."""
    config_file = target / "processor_config.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        config = json.loads(config_file.read_text())
        wanted = {**config["image_processor"], **image_defaults_of(name)}
        if wanted != config["image_processor"]:
            config_file.write_text(json.dumps({**config, "image_processor": wanted}, indent=2))


def chat_template_of(name: str) -> str:
    """The chat template of the build `name`: LFM2.5's thinking one, or LFM2's."""
    return THINKING_TEMPLATE if name in THINKING_BUILDS else CHAT_TEMPLATE


def _current_template(target: Path, name: str) -> None:
    """A cached build keeps its weights when only the chat template changed: it is rewritten
    (with its own: a thinking build keeps LFM2.5's)."""
    template = target / "chat_template.jinja"
    with contextlib.suppress(OSError):
        if template.read_text() != chat_template_of(name):
            template.write_text(chat_template_of(name))


def ensure_checkpoint(
    name: str, device: str | None = None, progress: Callable[[str], None] | None = None
) -> Path:
    """Build the offline checkpoint `name` unless a current build is cached; return its path.

    `device` chooses where random weights are drawn (a full-shape 8B build is quicker on CUDA).
    The build goes to a temporary directory renamed into place, so a crash never leaves a
    half-written checkpoint that looks complete.
    """
    shape_config(name)  # KeyError for unknown names, before any work
    target = cache_dir() / name
    with _build_lock:
        if is_built(target):
            _current_template(target, name)
            _current_processor(target, name)
            return target
        if progress:
            progress(f"building offline checkpoint {name} (random weights)")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        try:
            _write_checkpoint(name, tmp, device)
            (tmp / MARKER).write_text(json.dumps({"version": BUILD_VERSION, "name": name}))
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
