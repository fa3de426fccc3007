"""A bounded load test through the real server: N gradio_client users for a fixed time.

Each user loops: stream a /generate with an image (70%), cancel one mid-stream (10%), drop its
client mid-stream (10%), or run a /tool_turn (10%); one more user switches the model's
quantization every few seconds. Printed at the end (JSON): p50/p95/p99 of queue wait, TTFT and
end-to-end time, errors by class, and thread count, RSS and temp-dir size at start, after
warm-up and at the end. Pass: no unhandled errors, no deadlock, threads and RSS flat.

CI runs it small (tests/test_load.py); by hand: ``python tests/helpers/load.py --clients 10
--seconds 120``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

# errors the app gives on purpose while a switch runs: clear, expected under switching load
EXPECTED = ("switch is in progress", "is loading")
UNHANDLED = ("Something went wrong on the server", "failed while generating")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _resources(pid: int, temp: Path) -> dict[str, float]:
    """The server process's threads and RSS, and the size of its upload temp dir."""
    import psutil

    process = psutil.Process(pid)
    return {
        "threads": process.num_threads(),
        "rss_mib": round(process.memory_info().rss / 2**20, 1),
        "temp_mib": round(_dir_bytes(temp) / 2**20, 2),
    }


def _serve(temp: Path, log: Path | None = None, **env_extra: str) -> tuple[subprocess.Popen, str]:
    """`python app.py` on the offline tiny model, in its own process (so its resources are its
    own), with its own gradio temp dir (and its output in `log`); returns once it answers."""
    from gradio_client import Client

    port = _free_port()
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "GRADIO_TEMP_DIR": str(temp), "HF_HUB_OFFLINE": "1", **env_extra}
    server = subprocess.Popen(
        [sys.executable, "app.py", "--offline", "--model", "lfm2-vl-tiny", "--port", str(port)],
        cwd=root,
        env=env,
        stdout=log.open("ab") if log else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            Client(url, verbose=False).predict("lfm2-vl-tiny", "fp32", api_name="/load_model")
            return server, url
        except Exception:
            if server.poll() is not None:
                raise RuntimeError("the app exited while starting") from None
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("the app did not start within 120 s")


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queue_wait: list[float] = []
        self.ttft: list[float] = []
        self.total: list[float] = []
        self.errors: Counter[str] = Counter()
        self.done: Counter[str] = Counter()

    def error(self, exc: BaseException) -> None:
        text = str(exc)
        expected = next((e for e in EXPECTED if e in text), None)
        if any(u in text for u in UNHANDLED):
            kind = "unhandled"
        elif expected:
            kind = f"expected: {expected}"
        else:
            kind = f"other: {type(exc).__name__}: {text[:80]}"
        with self.lock:
            self.errors[kind] += 1


def _user(url: str, image: str, deadline: float, stats: Stats, seed: int) -> None:
    from gradio_client import Client, handle_file

    rng = random.Random(seed)
    client = Client(url, verbose=False)
    while time.monotonic() < deadline:
        action = rng.choices(["stream", "cancel", "disconnect", "tool"], [7, 1, 1, 1])[0]
        settings = json.dumps({"max_new_tokens": rng.randint(4, 24), "temperature": 1.0})
        started = time.monotonic()
        try:
            if action == "tool":
                client.predict("What is 2 + 2?", "", settings, api_name="/tool_turn")
            else:
                job = client.submit(
                    "Describe it.", [handle_file(image)], settings, api_name="/generate"
                )
                first = None
                for _ in job:
                    first = first or time.monotonic()
                    if action == "cancel":
                        job.cancel()
                        break
                    if action == "disconnect":
                        client.close() if hasattr(client, "close") else None
                        client = Client(url, verbose=False)  # a new tab
                        break
                if action == "stream" and first is not None:
                    metrics = client.predict(api_name="/last_metrics")
                    with stats.lock:
                        stats.ttft.append(first - started)
                        stats.queue_wait.append(metrics.get("queue_wait_s", 0.0))
            with stats.lock:
                stats.total.append(time.monotonic() - started)
                stats.done[action] += 1
        except Exception as exc:  # counted by class; the run goes on
            stats.error(exc)


def _switcher(url: str, deadline: float, stats: Stats, every: float) -> None:
    from gradio_client import Client

    client = Client(url, verbose=False)
    levels = ["bf16", "fp32"]
    while time.monotonic() < deadline - every:
        time.sleep(every)
        try:
            client.predict("lfm2-vl-tiny", levels[stats.done["switch"] % 2], api_name="/load_model")
            with stats.lock:
                stats.done["switch"] += 1
        except Exception as exc:
            stats.error(exc)


def _sampler(pid: int, temp: Path, until: threading.Event, every: float, out: list) -> None:
    """Sample the server's resources every `every` seconds until `until` is set."""
    started = time.monotonic()
    while not until.wait(every):
        try:
            out.append({"t": round(time.monotonic() - started), **_resources(pid, temp)})
        except Exception:  # the server went away: the summary says so
            return


def _settle(pid: int, temp: Path, threads: int, seconds: float = 20.0) -> dict[str, float]:
    """Resources once idle worker threads have retired (anyio's pool lets an idle thread go
    after 10 s): a leaked thread stays, a pool that grew for the load does not."""
    deadline = time.monotonic() + seconds
    while True:
        now = _resources(pid, temp)
        if now["threads"] <= threads or time.monotonic() > deadline:
            return now
        time.sleep(1.0)


def _trend(samples: list[dict]) -> dict[str, float | None]:
    """RSS and threads over the measured run: first and last quarter medians (MiB, count)."""
    if len(samples) < 4:
        return {"rss_first_quarter_mib": None, "rss_last_quarter_mib": None}
    quarter = max(1, len(samples) // 4)
    first, last = samples[:quarter], samples[-quarter:]
    return {
        "rss_first_quarter_mib": statistics.median(s["rss_mib"] for s in first),
        "rss_last_quarter_mib": statistics.median(s["rss_mib"] for s in last),
        "rss_max_mib": max(s["rss_mib"] for s in samples),
        "rss_slope_mib_per_min": round(_slope(samples) * 60, 2),
        "threads_max": max(s["threads"] for s in samples),
        "temp_max_mib": max(s["temp_mib"] for s in samples),
    }


def _slope(samples: list[dict]) -> float:
    """Least-squares RSS growth over the run, MiB per second."""
    ts = [s["t"] for s in samples]
    rss = [s["rss_mib"] for s in samples]
    mean_t, mean_r = statistics.fmean(ts), statistics.fmean(rss)
    spread = sum((t - mean_t) ** 2 for t in ts)
    return sum((t - mean_t) * (r - mean_r) for t, r in zip(ts, rss, strict=True)) / spread


def run(clients: int, seconds: float, switch_every: float = 4.0, sample_every: float = 5.0) -> dict:
    """Serve the app in its own process, load it, report. Returns the summary."""
    from PIL import Image

    folder = Path(tempfile.mkdtemp(prefix="lfmui-load-"))
    temp = folder / "gradio"
    server, url = _serve(temp)
    try:
        image = folder / "load.png"
        Image.effect_noise((320, 240), 40).convert("RGB").save(image)
        start = _resources(server.pid, temp)
        warm_until = time.monotonic() + max(8.0, seconds / 4)  # the same mix, shorter
        warm = Stats()
        warmers = [
            threading.Thread(target=_user, args=(url, str(image), warm_until, warm, -i - 1))
            for i in range(clients)
        ]
        warmers.append(threading.Thread(target=_switcher, args=(url, warm_until, warm, 3.0)))
        for thread in warmers:
            thread.start()
        for thread in warmers:
            thread.join(timeout=seconds + 60)
        after_warmup = _resources(server.pid, temp)
        samples: list[dict] = []
        sampling = threading.Event()
        sampler = threading.Thread(
            target=_sampler, args=(server.pid, temp, sampling, sample_every, samples), daemon=True
        )
        sampler.start()
        stats = Stats()
        deadline = time.monotonic() + seconds
        threads = [
            threading.Thread(target=_user, args=(url, str(image), deadline, stats, i), daemon=True)
            for i in range(clients)
        ]
        threads.append(
            threading.Thread(
                target=_switcher, args=(url, deadline, stats, switch_every), daemon=True
            )
        )
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=seconds + 60)
        deadlocked = sum(thread.is_alive() for thread in threads)
        sampling.set()
        time.sleep(2.0)  # let the server finish its last replies
        end = _resources(server.pid, temp)
        settled = _settle(server.pid, temp, after_warmup["threads"])
        alive = server.poll() is None
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {
        "clients": clients,
        "seconds": seconds,
        "requests": dict(stats.done),
        "queue_wait_s": {q: _pct(stats.queue_wait, p) for q, p in _QS},
        "ttft_s": {q: _pct(stats.ttft, p) for q, p in _QS},
        "end_to_end_s": {q: _pct(stats.total, p) for q, p in _QS},
        "errors": dict(stats.errors),
        "unhandled_errors": stats.errors["unhandled"]
        + sum(n for k, n in stats.errors.items() if k.startswith("other")),
        "deadlocked_clients": deadlocked,
        "server_alive": alive,
        "server_resources": {
            "start": start,
            "after_warmup": after_warmup,
            "end": end,
            "settled": settled,
        },
        "trend": _trend(samples),
        "samples": samples,
        "median_e2e_s": round(statistics.median(stats.total), 4) if stats.total else None,
    }


_QS = [("p50", 0.50), ("p95", 0.95), ("p99", 0.99)]


def flood_v1(requests: int, tokens: int) -> dict:
    """`requests` streamed /v1 replies at once, then a page load and another client's
    one-token /generate: how long each takes, and how /v1 answered the flood (its door runs a
    few, lets some wait without a thread, and turns the rest away with 429)."""
    import httpx
    from gradio_client import Client

    temp = Path(tempfile.mkdtemp(prefix="lfmui-flood-"))
    server, url = _serve(temp)
    codes: list[str] = []
    body = {"model": "lfmui", "messages": [{"role": "user", "content": "Hi"}], "stream": True}

    def one() -> None:
        try:
            with httpx.stream(
                "POST",
                f"{url}/v1/chat/completions",
                json={**body, "max_tokens": tokens},
                timeout=600,
            ) as reply:
                codes.append(str(reply.status_code))
                for _ in reply.iter_lines():
                    pass
        except httpx.HTTPError as exc:
            codes.append(type(exc).__name__)

    try:
        flood = [threading.Thread(target=one) for _ in range(requests)]
        for thread in flood:
            thread.start()
        time.sleep(3)
        started = time.monotonic()
        page = httpx.get(f"{url}/", timeout=300)
        page_s = time.monotonic() - started
        started = time.monotonic()
        Client(url, verbose=False).predict("A", [], '{"max_new_tokens": 1}', api_name="/generate")
        other_s = time.monotonic() - started
        for thread in flood:
            thread.join()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {
        "case": "flood_v1",
        "requests": requests,
        "max_tokens": tokens,
        "page_status": page.status_code,
        "page_load_s": round(page_s, 3),
        "other_client_one_token_s": round(other_s, 3),
        "v1_answers": dict(Counter(codes)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--switch-every", type=float, default=5.0)
    parser.add_argument("--sample-every", type=float, default=5.0)
    parser.add_argument(
        "--flood-v1", type=int, default=0, metavar="N", help="N streamed /v1 replies at once"
    )
    args = parser.parse_args(argv)
    if args.flood_v1:
        print(json.dumps(flood_v1(args.flood_v1, 256)))
        return 0
    summary = run(args.clients, args.seconds, args.switch_every, args.sample_every)
    print(json.dumps(summary, indent=1))
    return 0 if summary["unhandled_errors"] == 0 and not summary["deadlocked_clients"] else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main())
