"""lfmui: a Gradio app for trying Liquid AI's LFM2 models (see README.md).

One process-wide setting happens here, before torch is imported: OpenMP teams of one thread
everywhere but on the generation thread, which ``worker.generation_worker`` gives every core.
libgomp shortens its spin-wait a hundredfold once a process holds more OpenMP threads than
cores, and every thread that runs a parallel torch op keeps a team of its own: with the request
threads' preprocessing and the loads running multi-threaded beside generation, CPU decode was
1.32-1.36x slower (LFM2-VL-450M on 2 cores, fp32 and int8-bf16). A value set by the user wins.
"""

import os

USER_THREADS = os.environ.get("OMP_NUM_THREADS")  # None: ours to choose
os.environ.setdefault("OMP_NUM_THREADS", "1")


def usable_cores() -> int:
    """The cores this process may run on (its affinity, where the OS says)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1
