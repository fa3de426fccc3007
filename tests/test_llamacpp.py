"""The llama.cpp peer bench's own pieces that run without llama.cpp: the staging folder that
names the converter's architecture, and the sentence that says what to build."""

from __future__ import annotations

import json

from lfmui import offline
from lfmui.bench import cli, llamacpp


def test_staging_names_the_architecture_the_converter_reads(tmp_path):
    vl = offline.ensure_checkpoint("lfm2-vl-tiny")
    moe = offline.ensure_checkpoint("lfm2-moe-tiny")
    staged_vl = llamacpp._staging(vl, tmp_path)
    staged_moe = llamacpp._staging(moe, tmp_path)
    vl_config = json.loads((staged_vl / "config.json").read_text())
    assert vl_config["text_config"]["architectures"] == ["Lfm2ForCausalLM"]
    assert (
        vl_config["architectures"] == json.loads((vl / "config.json").read_text())["architectures"]
    )
    moe_config = json.loads((staged_moe / "config.json").read_text())
    assert moe_config["architectures"] == ["Lfm2MoeForCausalLM"]
    for staged, source in ((staged_vl, vl), (staged_moe, moe)):  # the weights are the build's
        weights = sorted(p.name for p in source.glob("*.safetensors"))
        assert weights and all((staged / name).resolve() == source / name for name in weights)
    assert not (vl / "config.json").read_text().count("Lfm2ForCausalLM")  # source untouched


def test_the_bench_case_says_how_to_build_llama_cpp(tmp_path, capsys):
    assert cli.main(["llamacpp", "--llama-cpp", str(tmp_path)]) == 1
    record = json.loads(capsys.readouterr().out.splitlines()[0])
    assert record["ok"] is False and "pip download llama-cpp-python" in record["error"]
    (tmp_path / "convert_hf_to_gguf.py").write_text("")
    assert "llama-bench" in llamacpp.missing(str(tmp_path))


def test_the_build_flags_come_from_the_trees_cmake_cache(tmp_path):
    """What llama.cpp was built for goes beside every ratio: the native switch, the AVX and AMX
    options turned on and extra compiler flags; the options left off are not listed."""
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "CMakeCache.txt").write_text(
        "GGML_NATIVE:BOOL=OFF\nGGML_AVX2:BOOL=ON\nGGML_FMA:BOOL=ON\nGGML_AVX512:BOOL=OFF\n"
        "GGML_AMX_TILE:BOOL=OFF\nCMAKE_C_FLAGS:STRING=-mno-amx-tile\nLLAMA_CURL:BOOL=OFF\n"
    )
    assert llamacpp.build_flags(str(tmp_path)) == {
        "GGML_NATIVE": "OFF",
        "GGML_AVX2": "ON",
        "GGML_FMA": "ON",
        "CMAKE_C_FLAGS": "-mno-amx-tile",
    }
    assert llamacpp.build_flags(str(tmp_path / "missing")) == {}
