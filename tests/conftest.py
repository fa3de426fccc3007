"""Shared fixtures: an offline cache per test session, no hub traffic, CUDA tests gated."""

from __future__ import annotations

import contextlib
import os
import socket

import pytest
from hypothesis.configuration import set_hypothesis_home_dir

# hypothesis keeps its example database under tests/, not at the checkout's top level
set_hypothesis_home_dir(os.path.join(os.path.dirname(__file__), ".hypothesis"))

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never contact the hub
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture(scope="session", autouse=True)
def offline_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One build of the tiny checkpoints per session (LFMUI_CACHE may point at a kept one)."""
    if not os.environ.get("LFMUI_CACHE"):
        os.environ["LFMUI_CACHE"] = str(tmp_path_factory.mktemp("lfmui-cache"))
    return os.environ["LFMUI_CACHE"]


def pytest_report_header(config: pytest.Config) -> str:
    """The versions that decide most failures, as this run resolved them."""
    from importlib import metadata

    names = ("torch", "transformers", "gradio", "openai", "httpx2", "httpx", "playwright")
    versions = []
    for name in names:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} missing")
    return "lfmui: " + ", ".join(versions)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    if os.environ.get("LFMUI_REQUIRE_CUDA"):  # the GPU check (.ci/gpu): no green run without it
        raise pytest.UsageError(
            f"LFMUI_REQUIRE_CUDA is set but torch {torch.__version__} sees no CUDA device: "
            "check the driver (nvidia-smi) and that this torch is a CUDA build."
        )
    skip = pytest.mark.skip(reason="needs CUDA (run on the GPU device)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_paths() -> dict[str, str]:
    from lfmui import offline

    return {
        name: str(offline.ensure_checkpoint(name)) for name in ("lfm2-vl-tiny", "lfm2-moe-tiny")
    }


@pytest.fixture(scope="module")
def vl_manager(tiny_paths):
    """A ModelManager with lfm2-vl-tiny loaded in fp32, for one test module."""
    from lfmui.manager import ModelManager

    manager = ModelManager()
    manager.load("lfm2-vl-tiny", "fp32")
    yield manager
    manager.unload()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A browser test that fails leaves a screenshot of its page: tests/artifacts/failed-*.png."""
    outcome = yield
    report = outcome.get_result()
    page = getattr(item, "funcargs", {}).get("page")
    if report.when == "call" and report.failed and page is not None:
        from pathlib import Path

        folder = Path(__file__).parent / "artifacts"
        folder.mkdir(exist_ok=True)
        try:
            page.screenshot(path=str(folder / f"failed-{item.name[:80]}.png"), full_page=True)
        except Exception as exc:  # noqa: BLE001 - a closed page: the failure is reported anyway
            report.sections.append(("screenshot", f"no screenshot: {exc}"))


@contextlib.contextmanager
def serving(manager):
    """The whole app (UI, API and /v1) for `manager` on a free loopback port: its base URL."""
    from lfmui.ui import build_app, launch_settings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = build_app(manager)
    demo.launch(prevent_thread_lock=True, quiet=True, **launch_settings(port=port, manager=manager))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        demo.close()
