"""`python -m lfmui.bench` (lfmui.bench: the cli's CASES table over cases and peers) on the tiny
offline builds: each case the table names runs and prints its JSON lines, one per
measurement, and the run's summary. Calibration and kernels: tests/test_calibrate.py; the
llama.cpp peer: tests/test_llamacpp.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lfmui.bench import cli

ROOT = Path(__file__).resolve().parents[1]


def _lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.parametrize(
    ("argv", "case"),
    [
        (["loads", "--models", "lfm2-vl-tiny", "--levels", "fp32", "--new-tokens", "2"], "load"),
        (
            ["seed", "--models", "lfm2-vl-tiny", "--levels", "fp32", "--new-tokens", "3"]
            + ["--repeats", "1", "--image-size", "64"],
            "seed",
        ),
        (
            ["presets", "--models", "lfm2-vl-tiny", "--levels", "fp32", "--repeats", "1"]
            + ["--image-size", "64"],
            "presets",
        ),
    ],
    ids=["loads", "seed", "presets"],
)
def test_each_case_of_the_table_runs_and_prints_json_lines(tiny_paths, capsys, argv, case):
    assert cli.main(argv) == 0
    lines = _lines(capsys)
    assert lines[-1]["case"] == "summary" and lines[-1]["exit"] == 0
    measured = [line for line in lines if line["case"].startswith(case)]
    assert measured and all(line["model"] == "lfm2-vl-tiny" for line in measured)
    assert all("cpu" in line for line in lines)  # every CPU figure names its CPU


def test_every_case_is_in_the_table_and_in_the_help():
    assert set(cli.CASES) == {
        "loads", "seed", "presets", "ops", "llamacpp", "fairness", "calibrate", "kernels",
    }  # fmt: skip
    shown = cli._parser().format_help()
    assert all(f"``{name}``" in shown for name in cli.CASES)


def test_python_m_lfmui_bench_runs_the_cli(tmp_path):
    """The entry point: `python -m lfmui.bench` is the cli; a bad case is argparse's error."""
    done = subprocess.run(
        [sys.executable, "-m", "lfmui.bench", "nosuchcase"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "invalid choice: 'nosuchcase'" in done.stderr
