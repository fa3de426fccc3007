"""Figures measured with ``python -m lfmui.bench`` on the full-shape random-weight builds, shown in
the Models tab beside each level. Only figures that hold for the current code are listed; a level
missing here has not been measured since it last changed.
"""

from __future__ import annotations

from typing import Any

H100 = "H100"
CPU2 = "2-core CPU"

# shape (catalog id of the hub model) -> rows; TTFT for the seed case (1024x1024 image) on GPU,
# a 512x512 image on CPU; ms/token is the app's engine, median.
MEASURED: dict[str, list[dict[str, Any]]] = {
    "LFM2-VL-1.6B": [
        {"level": "bf16", "device": H100, "gib": 3.009, "ttft_ms": 37.7, "ms_per_token": 3.31},
        {"level": "fp16", "device": H100, "gib": 3.009},
        {"level": "fp32", "device": H100, "gib": 6.017},
        # seed --levels auto --image-size 512 --new-tokens 32 --repeats 2 (int8-cpu, bf16 vision)
        {"level": "int8-cpu", "device": CPU2, "gib": 2.419, "ttft_ms": 1593, "ms_per_token": 68.1},
        # seed --levels int8-bf16,int8-cpu --image-size 512 --new-tokens 32 --repeats 2
        {"level": "int8-bf16", "device": CPU2, "gib": 2.17, "ttft_ms": 1918, "ms_per_token": 88.1},
    ],
    "LFM2-VL-450M": [
        # one run: seed --levels int4-bf16,int8-cpu,fp32 --image-size 512 --new-tokens 64
        # --repeats 3 (int8-cpu is auto here, its vision tower in bf16)
        {"level": "fp32", "device": CPU2, "gib": 1.706, "ttft_ms": 1268, "ms_per_token": 62.5},
        {"level": "int8-cpu", "device": CPU2, "gib": 0.773, "ttft_ms": 509, "ms_per_token": 27.0},
        {"level": "int4-bf16", "device": CPU2, "gib": 0.524, "ttft_ms": 717, "ms_per_token": 24.3},
        # an earlier run (fp32 then: 1186 ms, 58.6 ms/token)
        {"level": "int8-bf16", "device": CPU2, "gib": 0.648, "ttft_ms": 431, "ms_per_token": 32.4},
        # an earlier run, before the OpenMP fix (fp32 then: 1281 ms, 73.3 ms/token)
        {"level": "int8", "device": CPU2, "gib": 0.585, "ttft_ms": 716, "ms_per_token": 69.2},
        {"level": "nf4", "device": CPU2, "gib": 0.452, "ttft_ms": 1323, "ms_per_token": 46.6},
    ],
    "LFM2-8B-A1B": [
        {"level": "bf16", "device": H100, "gib": 15.534},
        {"level": "fp16", "device": H100, "gib": 15.534},
        {"level": "fp32", "device": H100, "gib": 31.069},
        # loads --models lfm2-8b-a1b-synthetic --levels nf4,int8 (quantized while loading)
        {"level": "int8", "device": CPU2, "gib": 7.901},
        {"level": "nf4", "device": CPU2, "gib": 4.525},
        # seed --models lfm2-8b-a1b-synthetic --levels int8-bf16 --new-tokens 64 --repeats 2
        # (experts int8 while loading; auto on a 24 GB box; 544-token prompt)
        {"level": "int8-bf16", "device": CPU2, "gib": 8.027, "ttft_ms": 4764, "ms_per_token": 162},
        # seed --models lfm2-8b-a1b-synthetic --levels int4-bf16 --new-tokens 64 --repeats 2
        # (experts int4 while loading; auto on a 24 GB box)
        {"level": "int4-bf16", "device": CPU2, "gib": 5.107, "ttft_ms": 7536, "ms_per_token": 89.9},
    ],
}


def table(model_id: str) -> str:
    """A Markdown table of the measured rows for `model_id` (its shape), or a line saying none."""
    rows = MEASURED.get(model_id)
    if not rows:
        return "No measured figures for this model yet (`python -m lfmui.bench seed`)."
    lines = [
        f"Measured for the {model_id} shape (random weights, `python -m lfmui.bench seed`):",
        "",
        "| level | device | resident GiB | TTFT ms | decode ms/token |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        ttft = row.get("ttft_ms", "not measured")
        speed = row.get("ms_per_token", "not measured")
        lines.append(f"| {row['level']} | {row['device']} | {row['gib']} | {ttft} | {speed} |")
    return "\n".join(lines)


def headline(model_id: str) -> str:
    """One short figure for a picker: the CPU row auto loads (int8-cpu), else the first row."""
    rows = MEASURED.get(model_id) or []
    row = next((r for r in rows if r["device"] == CPU2 and r["level"] == "int8-cpu"), None)
    row = row or next(iter(rows), None)
    if row is None:
        return ""
    speed = f" · {row['ms_per_token']:g} ms/token" if row.get("ms_per_token") else ""
    return f"~{row['gib']:.1f} GiB{speed} ({row['device']})"
