"""The peer on CPU: llama.cpp on the same checkpoints as lfmui, converted with its own converter
and quantizer and timed with ``llama-bench`` (``gguf``, ``bench``; ``missing`` says what a tree
lacks, ``BUILD`` how to get one). Nothing here is a dependency of the app. The two adaptations
and the build flags: docs/benchmarks.md#how-the-peer-is-built-and-run-lfmuibenchllamacpp.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

BUILD = (
    "pip download llama-cpp-python==0.3.36 --no-binary :all: --no-deps && "
    "tar xzf llama_cpp_python-0.3.36.tar.gz && cd llama_cpp_python-0.3.36/vendor/llama.cpp && "
    'cmake -B build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DCMAKE_C_FLAGS="'
    '-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" -DCMAKE_CXX_FLAGS="-mno-amx-tile -mno-amx-int8 '
    '-mno-amx-bf16" && cmake --build build --target llama-bench llama-quantize -j"$(nproc)"'
)
CONVERTED = ("f16", "q8_0")  # written by convert_hf_to_gguf.py itself
QUANTIZED = {"q4_0": "Q4_0"}  # written by llama-quantize from F16

_CONVERT = """
import sys
sys.path.insert(0, {tree!r})
sys.path.insert(0, {tree!r} + "/gguf-py")
sys.argv = ["convert_hf_to_gguf.py", *{args!r}]
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "lfm2"
import runpy
runpy.run_path({tree!r} + "/convert_hf_to_gguf.py", run_name="__main__")
"""


def binary(tree: str, name: str) -> Path | None:
    """TREE's built `name` (llama-bench, llama-quantize), if there is one."""
    for build in ("build", "build-noamx"):
        path = Path(tree) / build / "bin" / name
        if path.is_file():
            return path
    return None


def missing(tree: str | None) -> str:
    """'' when `tree` is a llama.cpp source tree with llama-bench and llama-quantize built."""
    if not tree or not (Path(tree) / "convert_hf_to_gguf.py").is_file():
        return f"--llama-cpp must name a llama.cpp source tree. Get one: {BUILD}"
    lacking = [name for name in ("llama-bench", "llama-quantize") if binary(tree, name) is None]
    if lacking:
        return f"{tree} has no {' or '.join(lacking)} built. Build them: {BUILD}"
    return ""


ARCHITECTURES = {"lfm2": "Lfm2ForCausalLM", "lfm2_moe": "Lfm2MoeForCausalLM"}


def _staging(checkpoint: Path, work: Path) -> Path:
    """`checkpoint` itself, or a folder of links to it whose config names the architecture
    the converter needs (the language model's, for a VL model), as the hub's configs do and
    the synthetic builds' do not."""
    config = json.loads((checkpoint / "config.json").read_text())
    named = config.get("text_config", config)
    if named.get("architectures"):
        return checkpoint
    named["architectures"] = [ARCHITECTURES[named["model_type"]]]
    stage = work / f"{checkpoint.name}-staged"
    stage.mkdir(parents=True, exist_ok=True)
    for item in checkpoint.iterdir():
        link = stage / item.name
        if item.name != "config.json" and not link.exists():
            link.symlink_to(item)
    (stage / "config.json").write_text(json.dumps(config, indent=2))
    return stage


def gguf(checkpoint: Path, level: str, tree: str, work: Path) -> Path:
    """The GGUF file of `checkpoint` at `level` (f16, q8_0, q4_0), converted once into `work`."""
    target = work / f"{checkpoint.name}-{level}.gguf"
    if target.is_file():
        return target
    work.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    if level in CONVERTED:
        args = [str(_staging(checkpoint, work)), "--outtype", level, "--outfile", str(partial)]
        script = _CONVERT.format(tree=str(Path(tree).resolve()), args=args)
        subprocess.run([sys.executable, "-c", script], check=True)
    else:
        source = gguf(checkpoint, "f16", tree, work)
        quantize = binary(tree, "llama-quantize")
        threads = str(os.cpu_count() or 1)
        command = [str(quantize), str(source), str(partial), QUANTIZED[level], threads]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    partial.rename(target)
    return target


def bench(path: Path, tree: str, prompt_tokens: int, new_tokens: int, repeats: int) -> dict:
    """llama-bench on `path`: prompt processing of `prompt_tokens` and generation of
    `new_tokens` after as many tokens of context, on all cores (as lfmui's generation thread)."""
    threads = os.cpu_count() or 1
    command = [
        str(binary(tree, "llama-bench")),
        *("-m", str(path), "-t", str(threads), "-r", str(repeats), "-o", "jsonl"),
        *("-p", str(prompt_tokens), "-n", "0"),
    ]
    prompt = _rows(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    command[-4:] = ["-p", "0", "-n", str(new_tokens), "-d", str(prompt_tokens)]
    decode = _rows(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    return {
        "threads": threads,
        "ttft_ms": round(1000 * prompt_tokens / prompt["avg_ts"], 2),
        "ms_per_token": round(1000 / decode["avg_ts"], 3),
        "file_gib": round(path.stat().st_size / 1024**3, 3),
        "build": decode.get("build_commit"),
        "build_flags": build_flags(tree),
    }


def build_flags(tree: str) -> dict[str, str]:
    """The instruction-set options the tree's llama.cpp was configured with (its CMakeCache:
    GGML_NATIVE, the AVX and AMX switches turned on, extra compiler flags): named beside
    every ratio."""
    flags: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in (Path(tree) / "build" / "CMakeCache.txt").read_text().splitlines():
            name, _, value = line.partition("=")
            key = name.split(":")[0]
            switch = re.fullmatch(r"GGML_(AVX\w*|FMA|F16C|BMI2|AMX\w*)", key) and value != "OFF"
            if switch or key == "GGML_NATIVE" or (key == "CMAKE_C_FLAGS" and value):
                flags[key] = value
    return flags


def _rows(output: str) -> dict[str, Any]:
    rows = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    if not rows:
        raise RuntimeError(f"llama-bench printed no result: {output[-300:]}")
    return rows[-1]
