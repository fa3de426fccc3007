"""LFM2's tokens and chat format, as the offline builds carry them (lfmui.offline): the special
tokens at LFM2's ids, the chat template (and LFM2.5's thinking one), and a byte-level BPE
tokenizer holding them all, filled to the vocabulary size with deterministic merges.
"""

from __future__ import annotations

from functools import cache

MODEL_MAX_LENGTH = 32768

# LFM2's special tokens at their ids (FACTS.md). Ids 0..500 are all special; unnamed ones are
# reserved placeholders so every named token sits at the right id.
NAMED_SPECIAL_TOKENS: dict[int, str] = {
    0: "<|pad|>",
    1: "<|startoftext|>",
    2: "<|endoftext|>",
    6: "<|im_start|>",
    7: "<|im_end|>",
    8: "<|tool_list_start|>",
    9: "<|tool_list_end|>",
    10: "<|tool_call_start|>",
    11: "<|tool_call_end|>",
    12: "<|tool_response_start|>",
    13: "<|tool_response_end|>",
    396: "<image>",
    497: "<|img_thumbnail|>",
    498: "<|image_start|>",
    499: "<|image_end|>",
    500: "<|image_split|>",
}
NAMED_SPECIAL_TOKENS.update(
    {
        397 + (r - 1) * 10 + (c - 1): f"<|img_row_{r}_col_{c}|>"
        for r in range(1, 11)
        for c in range(1, 11)
    }
)
N_SPECIAL = 501
BYTE_BASE = N_SPECIAL  # the 256 byte-level symbols follow the special tokens

# LFM2's chat format. Content is a string or a list of parts ({"type": "text"|"image"}); the
# tool list goes into the system turn; tool results are wrapped in the tool-response markers.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    '{%- set ns = namespace(system="") -%}'
    '{%- if messages and messages[0]["role"] == "system" -%}'
    '{%- if messages[0]["content"] is string -%}{%- set ns.system = messages[0]["content"] -%}'
    "{%- else -%}"  # text parts, as OpenAI-shaped servers (transformers serve) pass it
    '{%- for part in messages[0]["content"] -%}'
    '{%- if part["type"] == "text" -%}{%- set ns.system = ns.system + part["text"] -%}{%- endif -%}'
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- set messages = messages[1:] -%}"
    "{%- endif -%}"
    "{%- if tools -%}"
    '{%- set ns.system = ns.system + ("\\n" if ns.system else "") -%}'
    '{%- set ns.system = ns.system + "List of tools: <|tool_list_start|>[" -%}'
    "{%- for tool in tools -%}"
    "{%- if tool is not string -%}{%- set tool = tool | tojson -%}{%- endif -%}"
    "{%- set ns.system = ns.system + tool -%}"
    '{%- if not loop.last -%}{%- set ns.system = ns.system + ", " -%}{%- endif -%}'
    "{%- endfor -%}"
    '{%- set ns.system = ns.system + "]<|tool_list_end|>" -%}'
    "{%- endif -%}"
    '{%- if ns.system -%}{{- "<|im_start|>system\\n" + ns.system + "<|im_end|>\\n" -}}{%- endif -%}'
    "{%- for message in messages -%}"
    '{{- "<|im_start|>" + message["role"] + "\\n" -}}'
    '{%- if message["role"] == "tool" -%}{{- "<|tool_response_start|>" -}}{%- endif -%}'
    '{%- if message["content"] is string -%}{{- message["content"] -}}'
    "{%- else -%}"
    '{%- for part in message["content"] -%}'
    '{%- if part["type"] == "image" -%}{{- "<image>" -}}'
    '{%- elif part["type"] == "text" -%}{{- part["text"] -}}{%- endif -%}'
    "{%- endfor -%}"
    "{%- endif -%}"
    '{%- if message["role"] == "tool" -%}{{- "<|tool_response_end|>" -}}{%- endif -%}'
    '{{- "<|im_end|>\\n" -}}'
    "{%- endfor -%}"
    '{%- if add_generation_prompt -%}{{- "<|im_start|>assistant\\n" -}}{%- endif -%}'
)

# LFM2.5's format as its thinking models use it: tools declared and results returned as plain
# JSON (no tool-list or tool-response markers), past thinking dropped from earlier answers
# (``keep_past_thinking`` keeps it), and a generation prompt that opens the <think> block.
THINKING_TEMPLATE = (
    "{{- bos_token -}}"
    '{%- set ns = namespace(system="") -%}'
    '{%- if messages and messages[0]["role"] == "system" -%}'
    '{%- set ns.system = messages[0]["content"] -%}'
    "{%- set messages = messages[1:] -%}"
    "{%- endif -%}"
    "{%- if tools -%}"
    '{%- set ns.system = ns.system + ("\n" if ns.system else "") + "List of tools: [" -%}'
    "{%- for tool in tools -%}"
    "{%- if tool is not string -%}{%- set tool = tool | tojson -%}{%- endif -%}"
    "{%- set ns.system = ns.system + tool -%}"
    '{%- if not loop.last -%}{%- set ns.system = ns.system + ", " -%}{%- endif -%}'
    "{%- endfor -%}"
    '{%- set ns.system = ns.system + "]" -%}'
    "{%- endif -%}"
    '{%- if ns.system -%}{{- "<|im_start|>system\n" + ns.system + "<|im_end|>\n" -}}{%- endif -%}'
    "{%- for message in messages -%}"
    '{%- set content = message["content"] -%}'
    "{%- if content is not string -%}"  # text parts, as the app and OpenAI clients send them
    '{%- set content = content | selectattr("type", "equalto", "text") | map(attribute="text")'
    ' | join("") -%}'
    "{%- endif -%}"
    '{%- if message["role"] == "assistant" and not keep_past_thinking and "</think>" in content -%}'
    '{%- set content = content.split("</think>")[-1].lstrip("\n") -%}'
    "{%- endif -%}"
    '{{- "<|im_start|>" + message["role"] + "\n" + content + "<|im_end|>\n" -}}'
    "{%- endfor -%}"
    '{%- if add_generation_prompt -%}{{- "<|im_start|>assistant\n<think>\n" -}}{%- endif -%}'
)


@cache
def _byte_symbols() -> list[str]:
    """GPT-2's byte -> printable-character map, in byte order (what ByteLevel uses)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = 0
    symbols = []
    for b in range(256):
        if b in printable:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def _merge_pairs(count: int) -> list[tuple[str, str]]:
    """Deterministic byte-pair merges, common letters first, to fill the vocab to its size: every
    pair of bytes, then (a pair, a byte) for a vocabulary beyond 65,536 (LFM2.5's)."""
    symbols = _byte_symbols()
    common = " etaoinshrdlucmfwypvbgkjqxz,.ETAOINSHRDLUCMFWYPVBGKJQXZ0123456789"
    order = [symbols[ord(c)] for c in common]
    order += [s for s in symbols if s not in order]
    pairs = [(a, b) for a in order for b in order]
    if count > len(pairs):
        pairs += [(a + b, c) for a, b in pairs[: count - len(pairs)] for c in order[:1]]
    if count > len(pairs):
        raise ValueError(f"a byte-pair vocab holds at most {len(pairs)} merges, not {count}")
    return pairs[:count]


def build_tokenizer(vocab_size: int, chat_template: str = CHAT_TEMPLATE):
    """A byte-level BPE tokenizer with LFM2's special tokens at LFM2's ids."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [NAMED_SPECIAL_TOKENS.get(i, f"<|reserved_{i}|>") for i in range(N_SPECIAL)]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for i, sym in enumerate(_byte_symbols()):
        vocab[sym] = BYTE_BASE + i
    merges = _merge_pairs(vocab_size - len(vocab))
    for a, b in merges:
        vocab[a + b] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|startoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        model_max_length=MODEL_MAX_LENGTH,
        chat_template=chat_template,
    )
