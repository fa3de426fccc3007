"""A ZeroGPU Space rehearsed on CPU: the real `spaces` package, its device API stubbed on the
loopback, and only the worker steps that need a GPU stubbed in the app's process.

`DeviceAPI` answers what spaces/zero/client.py and api.py ask of ZeroGPU's device API: a
start-up report, a schedule (one GPU, always idle, so spaces reuses its worker as on a Space),
allowing a worker's pid, and releasing it. Like ZeroGPU, it stops a worker that outlives its
time: `kill_after` seconds after a schedule (the test's stand-in for the duration asked for),
unless the schedule was released first.

`SHIM` is a sitecustomize for `python app.py`. It imports the real spaces first (which patches
torch on the main thread, as on a Space) and replaces exactly the steps a worker cannot take
without a GPU:
- ``spaces.zero.torch.init``: makes CUDA visible and puts a first tensor on the GPU. Here it
  sets the engine's CUDA memory statistics to no-ops (there is no device to ask).
- ``spaces.zero.torch.move``: moves the weights (packed to disk at launch) to the GPU. Here it
  reads them back into CPU memory, so the worker's model runs on the CPU.
In the worker, generate() first sleeps the seconds written in the file LFMUI_TEST_SLOW_GENERATE
names, while it exists: a reply that outlives its GPU time, whatever this CPU's speed. It also
records any CUDA start-up in the main process (spaces already makes it raise) in the
file LFMUI_TEST_CUDA_INIT_MARK names: the main process of a ZeroGPU Space must never start CUDA.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import threading
import uuid
from urllib.parse import parse_qs, urlsplit

SHIM = r"""
import os

if os.environ.get("SPACES_ZERO_GPU") == "true":
    import spaces  # noqa: F401  (the real package: it patches torch on this thread)
    import torch
    from spaces.zero import torch as zero_torch
    from spaces.zero.torch import patching

    _raising = torch._C._cuda_init

    def _cuda_init_reached():
        with open(os.environ["LFMUI_TEST_CUDA_INIT_MARK"], "a") as mark:
            mark.write(f"{os.getpid()}\n")
        _raising()

    torch._C._cuda_init = _cuda_init_reached  # the worker's unpatch restores torch's own

    def _init(nvidia_uuid):  # stub: no GPU to make visible; no CUDA memory statistics here
        torch.cuda.reset_peak_memory_stats = lambda *args, **kwargs: None
        torch.cuda.max_memory_allocated = lambda *args, **kwargs: 0
        torch.cuda.empty_cache = lambda: None
        import time
        from transformers.generation.utils import GenerationMixin

        generate = GenerationMixin.generate

        def slow_generate(self, *args, **kwargs):  # a reply slower than its GPU time
            slow = os.environ["LFMUI_TEST_SLOW_GENERATE"]
            if os.path.exists(slow):
                time.sleep(float(open(slow).read()))
            return generate(self, *args, **kwargs)

        GenerationMixin.generate = slow_generate

    def _move(callback=None):  # stub: the packed weights go to CPU memory, not to a GPU
        for fake, original in patching.cuda_aliases.items():
            if original is not None:
                fake.data = original
        for pack in patching.tensor_packs:
            with open(pack.path(), "rb", buffering=0) as packed:
                for meta, size, aligned in [*(t for b in pack.batches for t in b),
                                            *pack.big_tensors]:
                    raw = bytearray(aligned)
                    view, read = memoryview(raw), 0
                    while read < aligned:
                        read += packed.readinto(view[read:]) or aligned
                    data = torch.frombuffer(raw, dtype=torch.uint8)[:size].clone() if size else (
                        torch.empty(0, dtype=torch.uint8))
                    cpu = torch.empty(0, dtype=meta.dtype).set_(
                        data.untyped_storage(), 0, meta.shape, meta.stride())
                    for fake in pack.fakes[meta]:
                        fake.data = cpu

    zero_torch.init = _init
    zero_torch.move = _move
"""


class DeviceAPI:
    """ZeroGPU's device API, as far as spaces uses it (see the module docstring)."""

    def __init__(self) -> None:
        self.schedules: list[dict[str, str]] = []  # each /schedule's query
        self.allowed: list[int] = []  # each worker pid allowed a GPU
        self.killed: list[int] = []
        self.kill_after: float | None = None
        self._released: set[str] = set()
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                body = b""
                if url.path == "/schedule":
                    body = json.dumps(api._schedule(query)).encode()
                elif url.path == "/allow":
                    api.allowed.append(int(query["pid"]))
                elif url.path == "/release":
                    api._released.add(query["allowToken"])
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _schedule(self, query: dict[str, str]) -> dict[str, object]:
        """One GPU, idle (spaces then reuses a live worker); past `kill_after` seconds the
        worker is stopped unless this schedule was released."""
        self.schedules.append(query)
        token = uuid.uuid4().hex
        if self.kill_after is not None:
            threading.Timer(self.kill_after, self._stop_worker, args=(token,)).start()
        return {"idle": True, "nvidiaIndex": 0, "nvidiaUUID": "GPU-rehearsal", "allowToken": token}

    def _stop_worker(self, token: str) -> None:
        if token in self._released or not self.allowed:
            return
        try:
            os.kill(self.allowed[-1], signal.SIGKILL)
            self.killed.append(self.allowed[-1])
        except ProcessLookupError:
            pass

    def close(self) -> None:
        self._server.shutdown()
