"""lfmui: try Liquid AI's LFM2 models in a browser.

`demo` at module level serves hot reload, Spaces and tests; `python app.py` parses flags, loads the
start-up model in the background and serves on 127.0.0.1:7860, or where GRADIO_SERVER_NAME and
GRADIO_SERVER_PORT say (a Space sets 0.0.0.0 and 7860).
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from pathlib import Path
from urllib.parse import urlsplit


def _port(text: str) -> int:
    """A TCP port number, for --port and GRADIO_SERVER_PORT."""
    try:
        port = int(text.strip())
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number from 1 to 65535")
    return port


def _listen_defaults() -> tuple[str, int]:
    """Where to listen when no flag says: gradio's own variables, which a Space sets (0.0.0.0,
    7860), else 127.0.0.1:7860. A port that is no number ends the start with a sentence."""
    host = os.environ.get("GRADIO_SERVER_NAME", "").strip() or "127.0.0.1"
    raw = os.environ.get("GRADIO_SERVER_PORT", "").strip()
    try:
        return host, _port(raw) if raw else 7860
    except argparse.ArgumentTypeError as exc:
        raise SystemExit(
            f"app.py: GRADIO_SERVER_PORT={exc}. Set it to the port to serve on, or unset it "
            "for 7860."
        ) from None


# Read before gradio is imported: gradio itself reads GRADIO_SERVER_PORT with int() at import.
LISTEN = _listen_defaults()

from lfmui import calibrate, compiled, endpoint, quant  # noqa: E402
from lfmui.access import Access  # noqa: E402
from lfmui.catalog import Catalog  # noqa: E402
from lfmui.errors import LfmuiError  # noqa: E402
from lfmui.hub import choose_startup_model  # noqa: E402
from lfmui.manager import ModelManager  # noqa: E402
from lfmui.serve.hosts import Allowed  # noqa: E402
from lfmui.ui import build_app, gpu, launch_settings  # noqa: E402

demo = build_app()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve the lfmui web app.")
    host, port = LISTEN
    parser.add_argument("--model", help="catalog id (e.g. LFM2-VL-1.6B) or a local checkpoint dir")
    parser.add_argument(
        "--quantization", default="auto", help=f"auto, {', '.join(quant.QUANTIZATIONS)}"
    )
    parser.add_argument(
        "--host",
        default=host,
        help="the address to listen on (default: GRADIO_SERVER_NAME, "
        "else 127.0.0.1; 0.0.0.0 for every interface)",
    )
    parser.add_argument(
        "--port", type=_port, default=port, help="default: GRADIO_SERVER_PORT, else 7860"
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        help="never contact the Hugging Face Hub; start with lfm2-vl-tiny",
    )
    parser.add_argument(
        "--endpoint",
        metavar="URL",
        help="answer with an OpenAI-compatible server (vLLM, SGLang, llama.cpp, transformers "
        "serve), e.g. http://localhost:8000/v1; the in-process model loads only with --model",
    )
    parser.add_argument("--endpoint-model", help="the model id to ask the endpoint for")
    parser.add_argument(
        "--endpoint-body",
        metavar="JSON",
        help="extra fields sent with every endpoint request, e.g. '{\"top_k\": 20}'",
    )
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name this server answers to besides its addresses and localhost (a "
        "proxy's or a domain's; *.example.com for its subdomains); repeatable",
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a page origin that may call this server besides its own, e.g. "
        "https://proxy.example.com; repeatable",
    )
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        help="the key /v1 asks for (Authorization: Bearer KEY); needed beyond this machine; "
        "LFMUI_API_KEY keeps it out of the process list",
    )
    parser.add_argument(
        "--allow-endpoint",
        action="append",
        default=[],
        metavar="HOST",
        help="a host an endpoint may point at although it is private, link-local or (on a "
        "Space) this machine; --endpoint's own host is allowed; repeatable",
    )
    parser.add_argument(
        "--pool-gib",
        type=float,
        default=_pool_gib(),
        metavar="GIB",
        help="keep several models resident within this many GiB, each visitor picking one "
        "(default: LFMUI_POOL_GIB, else one model, replaced by a load)",
    )
    parser.add_argument(
        "--load-on-demand",
        action="store_true",
        default=os.environ.get("LFMUI_LOAD_ON_DEMAND", "") not in ("", "0"),
        help="a visitor's pick of a model that is not resident loads it into the pool, the "
        "least recently used idle model making room (default: LFMUI_LOAD_ON_DEMAND; else only "
        "the owner loads)",
    )
    parser.add_argument(
        "--preload",
        action="append",
        default=[p.strip() for p in os.environ.get("LFMUI_PRELOAD", "").split(",") if p.strip()],
        metavar="MODEL[@LEVEL]",
        help="another model to load into the pool at start, e.g. LFM2-8B-A1B@nf4; repeatable "
        "(default: LFMUI_PRELOAD, comma-separated). Needs --pool-gib, except on ZeroGPU, "
        "where every model is loaded at start and the pool is the GPU's memory",
    )
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="time the CPU levels again on this CPU before auto picks one (else the timing "
        "cached in LFMUI_CACHE for this CPU and torch is used; the first start times them)",
    )
    parser.add_argument(
        "--synthetic",
        action="store_true",
        help="list the full-shape random-weight builds (for benchmarks)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    if args.calibrate:
        calibrate.forget()
    catalog = Catalog()
    if args.synthetic:
        catalog.show_all()
    requested = args.model
    if requested and requested not in {s.id for s in catalog.all()}:
        if not Path(requested).is_dir():
            raise SystemExit(
                f"--model {requested}: not a catalog id and not a checkpoint directory."
            )
        requested = catalog.add_local(requested).id
    model_id, note = choose_startup_model(catalog, requested, args.offline)
    if args.pool_gib is not None and not 0 < args.pool_gib < 1e6:
        raise SystemExit("app.py: --pool-gib must be a number of GiB above 0, e.g. 12.")
    budget = None if args.pool_gib is None else int(args.pool_gib * 2**30)
    zerogpu = gpu.zerogpu()
    if zerogpu:
        # transformers copies weights on loader threads, where spaces' CUDA emulation (set up
        # per thread, on this one) does not reach: load on this thread alone
        os.environ["HF_DEACTIVATE_ASYNC_LOAD"] = "1"
        free = gpu.free_memory()
        budget = min(budget or free, free)
    preload = [_model_at_level(text, catalog) for text in args.preload]
    if preload and budget is None:
        raise SystemExit(
            "app.py: --preload keeps several models resident: give the pool its memory with "
            "--pool-gib (LFMUI_POOL_GIB), e.g. --pool-gib 12."
        )
    manager = ModelManager(
        catalog, **compiled.LIFECYCLE, pool_budget=budget, load_on_demand=args.load_on_demand
    )
    named = [*args.allow_endpoint, urlsplit(args.endpoint or "").hostname or ""]
    access = Access.configured(args.host, [h for h in named if h], args.api_key or "")
    if args.endpoint:
        note = " ".join(filter(None, [note, _connect_at_start(manager, args, access)]))
    at_start = [(model_id, args.quantization)] if manager.endpoint is None or args.model else []
    at_start += preload
    try:
        where = "the GPU's free memory" if zerogpu else "the pool budget (--pool-gib)"
        refusal = manager.start_refusal(at_start, where)
    except LfmuiError as exc:  # an unknown level, say
        refusal = str(exc)
    if refusal:
        raise SystemExit(f"app.py: {refusal}")
    app = build_app(manager, startup_note=note, access=access)
    if zerogpu:  # before launch(), on this thread: spaces packs what is loaded by then
        _load_at_start(manager, at_start)
        manager.load_on_demand = False
        manager.seal(ZEROGPU_SEALED)
    elif at_start:
        threading.Thread(target=_load_at_start, args=(manager, at_start), daemon=True).start()
    allowed = Allowed.configured((args.host, *args.allow_host), tuple(args.allow_origin))
    global demo  # the app gradio launches is this module's demo (its Spaces reloader looks here)
    demo = app
    app.launch(**launch_settings(args.host, args.port, manager, allowed, access))


def _pool_gib() -> float | None:
    """LFMUI_POOL_GIB, read before the arguments: a positive number of GiB, or unset."""
    text = os.environ.get("LFMUI_POOL_GIB", "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e6:
        raise SystemExit(
            f"app.py: LFMUI_POOL_GIB={text[:40]!r} is not a number of GiB above 0. Set it to "
            "the memory the model pool may use (e.g. 12), or unset it for one model."
        )
    return value


def _connect_at_start(manager: ModelManager, args: argparse.Namespace, access: Access) -> str:
    """Use the endpoint of --endpoint; where it cannot be used, the note that says so (the
    in-process model then loads and answers)."""
    try:
        access.check_endpoint(args.endpoint)
        extra = endpoint.extra_fields(args.endpoint_body)
        key = os.environ.get("LFMUI_ENDPOINT_KEY")  # a key stays out of the process list
        manager.use_endpoint(
            endpoint.Endpoint.connect(
                args.endpoint,
                args.endpoint_model,
                key,
                extra,
                manager.catalog,
                show_url=access.local,
            )
        )
    except LfmuiError as exc:
        logging.getLogger("lfmui").error("endpoint: %s", exc)
        hidden = "the server log says why (visitors are not shown where it is)."
        why = exc if access.local else hidden
        return f"The endpoint could not be used: {why} The in-process model answers instead."
    return ""


ZEROGPU_SEALED = (
    "On ZeroGPU the models are loaded when the Space starts, and no model loads or unloads "
    "after that. Pick one of the loaded models; the owner lists them in LFMUI_PRELOAD "
    "(MODEL@LEVEL, comma-separated) and restarts the Space."
)


def _model_at_level(text: str, catalog: Catalog) -> tuple[str, str]:
    """--preload's MODEL[@LEVEL] as (catalog id, level); a sentence ends the start when the
    model is not in the catalog."""
    model_id, _, level = text.strip().partition("@")
    if model_id not in {s.id for s in catalog.all()}:
        raise SystemExit(
            f"app.py: --preload {text[:80]!r}: {model_id[:60]!r} is not a catalog id. Use one "
            f"of {', '.join(s.id for s in catalog.listed())}, optionally with @LEVEL."
        )
    return model_id, level or "auto"


def _load_at_start(manager: ModelManager, models: list[tuple[str, str]]) -> None:
    """The start-up model as the default, then the others into the pool; a failure is logged
    and the rest still load (the app serves and says what is loaded)."""
    for number, (model_id, quantization) in enumerate(models):
        try:
            if number == 0:
                manager.load(model_id, quantization)
            else:
                manager.pick(model_id, quantization, may_load=True)
        except LfmuiError as exc:
            logging.getLogger("lfmui").error("start-up load of %s failed: %s", model_id, exc)


if __name__ == "__main__":
    main()
