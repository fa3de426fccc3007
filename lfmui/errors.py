"""The small error hierarchy of lfmui.

Every error a user can cause or meet carries a message that says what to do next. The UI turns
these into gr.Error at its edge; anything else is logged and shown as a generic failure.
"""

from __future__ import annotations


class LfmuiError(Exception):
    """Base class: the message is safe to show to a user (no paths of ours, no traceback)."""


class UnknownModelError(LfmuiError):
    """A model id that is not in the catalog."""


class CheckpointError(LfmuiError):
    """A local or cached checkpoint that is missing, corrupt or not an LFM2 model."""


class QuantizationUnavailable(LfmuiError):
    """A quantization level this machine cannot run (no CUDA, no bitsandbytes, unknown name)."""


class LoadInProgress(LfmuiError):
    """A second load request while a model is loading."""


class ModelLoadError(LfmuiError):
    """Loading failed (out of memory, hub unreachable, ...); the previous model is kept."""


class NoModelLoaded(LfmuiError):
    """A request that needs a model while none is loaded."""


class GenerationError(LfmuiError):
    """Generation failed inside the model."""


class InputError(LfmuiError):
    """A bad request: settings out of range, text too long, wrong modality."""


def broken_character(text: str) -> bool:
    """Whether `text` holds an unpaired UTF-16 surrogate: no character at all, which no
    tokenizer can read (JSON's escapes let one through)."""
    return any("\ud800" <= c <= "\udfff" for c in text)


def read_json(text: str | bytes, what: str) -> object:
    """JSON that came from a user or a client: InputError naming `what` when it is not JSON,
    or is nested deeper than the parser goes (a RecursionError escaped as "something went
    wrong")."""
    import json

    try:
        return json.loads(text)
    except RecursionError:
        raise InputError(f"{what}: the JSON is nested too deeply; send flat JSON.") from None
    except (ValueError, UnicodeDecodeError) as exc:
        where = f": {exc.msg} (line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise InputError(f"{what}: not valid JSON{where}.") from None


class InsufficientMemory(LfmuiError):
    """A load refused before it starts: the model at that level would not fit here."""


class PoolFull(InsufficientMemory):
    """A model would not fit the pool's budget, and the models that would have to go are
    answering: nothing was unloaded."""


class TooManyRequests(InputError):
    """A client has as many replies waiting or running as it may (/v1 answers 429)."""


class EndpointError(LfmuiError):
    """The endpoint could not be used; the message says why and what to do."""
