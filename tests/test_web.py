"""The web surface of `python app.py` in its own process: the file route, the upload cap,
inline images through the API, and uploaded active content (CHECKLIST items 1-4)."""

from __future__ import annotations

import base64
import http.client
import io
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from helpers.load import _serve
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def served(tiny_paths):
    """The app, with its own gradio temp dir and its own TMPDIR (to see what uploads leave)."""
    folder = Path(tempfile.mkdtemp(prefix="lfmui-web-"))
    tmpdir = folder / "tmp"
    tmpdir.mkdir()
    server, url = _serve(folder / "gradio", folder / "server.log", TMPDIR=str(tmpdir))
    yield url, folder
    server.terminate()
    server.wait(timeout=30)
    shutil.rmtree(folder, ignore_errors=True)


def _get(url: str, path: str) -> tuple[int, dict[str, str], bytes]:
    """A GET with the path sent exactly as written (no client-side ../ folding)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request("GET", path)
    response = connection.getresponse()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def _files(folder: Path) -> set[str]:
    found = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    return found - {"server.log"}


def _still_serves(url: str) -> None:
    from gradio_client import Client

    assert Client(url, verbose=False).predict(api_name="/models")[0]["id"]


@pytest.mark.parametrize(
    "target",
    [
        "/etc/passwd",
        "../../../../etc/passwd",
        "%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/tmp/../etc/passwd",
        "/proc/self/environ",
        "app.py",
        str(ROOT / "app.py"),
        ".env",
        str(ROOT / ".env"),
        "requirements.txt",
        "MODEL_CONFIG",  # the offline model's config.json in the model cache
        "MODEL_DIR",
    ],
)
def test_item01_file_route_refuses_everything_but_uploads(served, tiny_paths, target):
    url, _ = served
    model_dir = tiny_paths["lfm2-vl-tiny"]
    target = target.replace("MODEL_CONFIG", f"{model_dir}/config.json")
    target = target.replace("MODEL_DIR", model_dir)
    status, _, body = _get(url, f"/gradio_api/file={target}")
    assert status == 403, (target, status, body[:200])
    assert body.startswith(b'{"detail":"File not allowed')  # no content, only the refusal
    assert b"root:" not in body and b"model_type" not in body


def test_item02_upload_over_the_cap_is_413_and_leaves_no_file(served):
    import httpx

    url, folder = served
    before = _files(folder)
    payload = os.urandom(21 * 2**20)  # the cap is 20 MB
    response = httpx.post(
        f"{url}/gradio_api/upload", files={"files": ("big.png", payload, "image/png")}, timeout=60
    )
    assert response.status_code == 413
    assert "maximum allowed size" in response.text
    assert _files(folder) == before  # nothing left in gradio's temp dir or in TMPDIR
    small = httpx.post(
        f"{url}/gradio_api/upload", files={"files": ("ok.png", b"x" * 1000, "image/png")}
    )
    assert small.status_code == 200  # the cap, not a broken route
    _still_serves(url)


def _png_data_url(size: int | None = None) -> str:
    if size is None:
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), "red").save(buffer, "PNG")
        data = buffer.getvalue()
    else:
        data = os.urandom(size)
    return "data:image/png;base64," + base64.b64encode(data).decode()


@pytest.mark.parametrize(
    ("size", "status", "says"),
    [
        (None, 400, "Images sent inline as data: URLs are refused"),
        (30 * 2**20, 413, "The request is over 4 MB"),
    ],
)
def test_item03_inline_base64_images_are_refused(served, size, status, says):
    import httpx

    url, folder = served
    before = _files(folder)
    for key in ("path", "url"):
        image = {key: _png_data_url(size), "meta": {"_type": "gradio.FileData"}}
        if key == "url":
            image["path"] = "inline.png"
        response = httpx.post(
            f"{url}/gradio_api/call/generate",
            json={"data": ["What is this?", [image], '{"max_new_tokens": 4}']},
            timeout=60,
        )
        assert response.status_code == status and says in response.json()["detail"]
        assert "upload" in response.json()["detail"]  # what to do instead
    assert _files(folder) == before  # nothing decoded or stored
    _still_serves(url)


def test_item17_a_50_mb_message_is_refused_before_it_is_read(served):
    import httpx

    url, _ = served
    response = httpx.post(
        f"{url}/gradio_api/call/generate",
        json={"data": ["x" * 50_000_000, [], ""]},
        timeout=60,
    )
    assert response.status_code == 413
    assert "at most 100,000 characters" in response.json()["detail"]
    _still_serves(url)


ACTIVE = {
    "page.html": (b"<script>document.title='ran'; alert('html ran')</script>", "text/html"),
    "drawing.svg": (
        b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(\'svg ran\')">'
        b"<script>alert('svg script ran')</script></svg>",
        "image/svg+xml",
    ),
    "code.js": (b"alert('js ran')", "text/javascript"),
}


def _upload(url: str, name: str) -> str:
    import httpx

    content, mime = ACTIVE[name]
    response = httpx.post(f"{url}/gradio_api/upload", files={"files": (name, content, mime)})
    assert response.status_code == 200
    return response.json()[0]


@pytest.mark.parametrize("name", sorted(ACTIVE))
def test_item04_uploaded_active_content_is_served_as_a_download(served, name):
    url, _ = served
    status, headers, body = _get(url, f"/gradio_api/file={_upload(url, name)}")
    assert status == 200 and body == ACTIVE[name][0]
    assert headers["content-disposition"].startswith("attachment")
    assert headers["content-type"] == "application/octet-stream"  # never html, svg or script
    assert headers["x-content-type-options"] == "nosniff"  # nor run as a <script> source


@pytest.mark.browser
def test_item04_opening_an_uploaded_page_runs_nothing(served):
    """Opened in a real browser: the upload's URL downloads; no script, no dialog."""
    from playwright.sync_api import Error, sync_playwright

    url, _ = served
    links = [f"{url}/gradio_api/file={_upload(url, name)}" for name in sorted(ACTIVE)]
    dialogs: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"]
        )
        page = browser.new_page(accept_downloads=True)
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        for link in links:
            page.goto("about:blank")
            try:
                with page.expect_download(timeout=10_000):
                    page.goto(link)
            except Error as exc:  # "Download is starting": the navigation became a download
                assert "Download" in str(exc), exc
            page.wait_for_timeout(300)  # a window for a script to run, were one to run
            assert page.title() != "ran" and page.url == "about:blank"
        # as an <img>, <iframe> and <script> of a page of the app's own origin
        page.goto(url)
        page.evaluate(
            """(links) => {
                for (const link of links) {
                    const img = document.createElement("img"); img.src = link;
                    const frame = document.createElement("iframe"); frame.src = link;
                    const script = document.createElement("script"); script.src = link;
                    document.body.append(img, frame, script);
                }
            }""",
            links,
        )
        page.wait_for_timeout(1500)  # a window for a script to run, were one to run
        browser.close()
    assert dialogs == []


def test_headers_only_the_app_itself_may_frame_it(served, monkeypatch):
    """issue 18, headers: no frame-ancestors policy let any site frame the UI."""
    from lfmui.serve import guard

    url, _ = served
    for path in ("/", "/gradio_api/info"):
        _, headers, _ = _get(url, path)
        assert headers["content-security-policy"] == "frame-ancestors 'self'"
    monkeypatch.setenv("SPACE_ID", "someone/lfmui")
    monkeypatch.setenv("LFMUI_FRAME_ANCESTORS", "https://proxy.example.org javascript:alert(1)")
    assert guard.frame_ancestors() == (
        "frame-ancestors 'self' https://huggingface.co https://*.huggingface.co "
        "https://proxy.example.org"
    )


@pytest.mark.browser
def test_headers_a_foreign_page_cannot_frame_the_app(served, tmp_path):
    """A page from another origin that frames the app gets an empty frame (chromium applies
    frame-ancestors), while a page without the policy shows in the same kind of frame (so the
    check can see a framed page at all)."""
    import http.server
    import threading

    from playwright.sync_api import sync_playwright

    url, _ = served
    (tmp_path / "frame.html").write_text(
        f'<iframe id="app" src="{url}/"></iframe><iframe id="plain" src="plain.html"></iframe>'
    )
    (tmp_path / "plain.html").write_text("<p>framed fine</p>")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"]
            )
            page = browser.new_page()
            page.goto(f"http://localhost:{server.server_address[1]}/frame.html")
            page.frame_locator("#plain").get_by_text("framed fine").wait_for(timeout=30_000)
            page.wait_for_load_state("load")  # every frame has loaded or been refused
            frame = page.frame_locator("#app")
            assert frame.get_by_text("lfmui · try LFM2 models").count() == 0
            browser.close()
    finally:
        server.shutdown()


# ---- issue 18: foreign origins and hosts, upload caps, echoed headers -------------------------
def _raw(url: str, method: str, path: str, headers: dict[str, str], body: bytes = b""):
    """One request with exactly these headers (Host and Origin included), over real HTTP."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    headers = {"Host": f"{host}:{port}", **headers, "Content-Length": str(len(body))}
    for name, value in headers.items():
        connection.putheader(name, value)
    connection.endheaders(body)
    response = connection.getresponse()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def _multipart(files: int, size: int = 100) -> tuple[dict[str, str], bytes]:
    boundary = "lfmuitestboundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="f{n}.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + os.urandom(size)
        + b"\r\n"
        for n in range(files)
    ]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return {"Content-Type": f"multipart/form-data; boundary={boundary}"}, body


def test_foreign_origin_and_host_a_cross_origin_upload_and_a_rebound_host_are_refused(served):
    """issue 18, class 4: any web page could post to /gradio_api/upload (Origin:
    http://evil.example was served) and any Host was served (DNS rebinding)."""
    url, folder = served
    own = url.removeprefix("http://")
    before = _files(folder)
    headers, body = _multipart(1)
    for origin in ("http://evil.example", "null", f"http://{own}.evil.example"):
        status, _, answer = _raw(
            url, "POST", "/gradio_api/upload", {"Host": own, "Origin": origin, **headers}, body
        )
        assert status == 403 and b"--allow-origin" in answer, origin
    assert _files(folder) == before  # nothing was stored
    rebound = {"Host": f"rebound.example:{own.split(':')[1]}"}
    for path, method in (("/", "GET"), ("/gradio_api/upload", "POST"), ("/v1/models", "GET")):
        status, _, answer = _raw(url, method, path, rebound)
        assert status == 400 and b"--allow-host rebound.example" in answer, path
    # the app's own page, localhost and scripts (no Origin) are served
    status, _, _ = _raw(
        url, "POST", "/gradio_api/upload", {"Host": own, "Origin": url, **headers}, body
    )
    assert status == 200
    port = own.split(":")[1]
    assert _raw(url, "GET", "/gradio_api/info", {"Host": f"localhost:{port}"})[0] == 200
    assert _raw(url, "GET", "/gradio_api/info", {"Host": f"[::1]:{port}"})[0] == 200
    _still_serves(url)


@pytest.fixture
def guarded():
    """RequestGuard over a small app, served by uvicorn on a free port: (url, stored bodies)."""
    import threading

    import uvicorn

    from lfmui.serve.guard import RequestGuard
    from lfmui.serve.hosts import Allowed

    received: list[bytes] = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        received.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    allowed = Allowed.configured(("proxy.example", "*.corp.example"), ("https://proxy.example",))
    config = uvicorn.Config(RequestGuard(app, allowed=allowed), port=0, log_level="error")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", received
    server.should_exit = True
    thread.join(timeout=10)


def test_foreign_origin_and_host_the_allow_lists_let_a_proxy_in(guarded, monkeypatch):
    """--allow-host / --allow-origin (and LFMUI_ALLOWED_*, SPACE_HOST on a Space) add names."""
    from lfmui.serve.hosts import Allowed

    url, _ = guarded
    for host, origin in (
        ("proxy.example", "https://proxy.example"),
        ("a.corp.example:443", None),
    ):
        headers = {"Host": host, **({"Origin": origin} if origin else {})}
        assert _raw(url, "POST", "/x", headers, b"{}")[0] == 200, host
    assert _raw(url, "GET", "/x", {"Host": "corp.example.evil"})[0] == 400
    status, _, _ = _raw(url, "POST", "/x", {"Host": "proxy.example", "Origin": "https://evil.x"})
    assert status == 403
    monkeypatch.setenv("SPACE_HOST", "someone-lfmui.hf.space")
    monkeypatch.setenv("LFMUI_ALLOWED_ORIGINS", "https://a.example, https://b.example")
    on_space = Allowed.configured()
    assert on_space.host_ok("someone-lfmui.hf.space")
    assert on_space.origin_ok("https://someone-lfmui.hf.space", "proxied-name:8080")
    assert on_space.origin_ok("https://b.example", "x") and not on_space.host_ok("hf.space")


def test_upload_caps_files_and_bytes_per_request_and_per_client(served, guarded, monkeypatch):
    """issue 18, class 4: 300 files and 3 x 15 MB in one request were stored."""
    from lfmui.serve import guard

    url, folder = served
    before = _files(folder)
    headers, body = _multipart(300)
    status, _, answer = _raw(url, "POST", "/gradio_api/upload", headers, body)
    assert status == 413 and b"at most 16 files" in answer
    headers, body = _multipart(5, 15 * 2**20)  # 75 MB
    status, _, answer = _raw(url, "POST", "/gradio_api/upload", headers, body)
    assert status == 413 and b"Send fewer files at once" in answer
    assert _files(folder) == before
    headers, body = _multipart(16)
    assert _raw(url, "POST", "/gradio_api/upload", headers, body)[0] == 200
    # per client, in an hour (the guard alone, with a small allowance)
    monkeypatch.setattr(guard, "CLIENT_UPLOAD_FILES", 5)
    small, received = guarded
    headers, body = _multipart(3)
    assert _raw(small, "POST", "/gradio_api/upload", headers, body)[0] == 200
    status, _, answer = _raw(small, "POST", "/gradio_api/upload", headers, body)
    assert status == 429 and b"wait and try again" in answer
    assert received == [body]  # the refused upload never reached the app
    # the disk floor
    monkeypatch.setattr(guard, "MIN_FREE_DISK", 2**62)
    monkeypatch.setattr(guard, "CLIENT_UPLOAD_FILES", 10_000)
    status, _, answer = _raw(small, "POST", "/gradio_api/upload", headers, body)
    assert status == 507 and b"disk is almost full" in answer


def test_upload_caps_a_dropped_upload_leaves_no_file(served):
    """issue 18, class 4: an upload dropped mid-body left gradio's partial temp file."""
    import socket

    url, folder = served
    before = _files(folder)
    headers, body = _multipart(2, 4 * 2**20)
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as raw:
        head = (
            f"POST /gradio_api/upload HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: {headers['Content-Type']}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        raw.sendall(head.encode() + body[: len(body) // 2])
        time.sleep(1.0)
    time.sleep(1.0)
    assert _files(folder) == before
    _still_serves(url)


def test_headers_a_ranged_file_response_echoes_no_request_header(served):
    """issue 18, class 10: a Range request to file= echoed every request header, the Cookie
    included."""
    url, _ = served
    path = _upload(url, "code.js")
    host = url.removeprefix("http://")
    status, headers, body = _raw(
        url,
        "GET",
        f"/gradio_api/file={path}",
        {"Host": host, "Range": "bytes=0-3", "Cookie": "session=secret", "X-Probe": "echo"},
    )
    assert status == 206 and body == b"aler"
    assert headers["content-range"].startswith("bytes 0-3/")
    for name in ("cookie", "x-probe", "range", "host"):
        assert name not in headers, name


def test_no_traceback_in_the_server_log_after_every_hostile_request_above(served):
    """issue 18: every hostile input gets a sentence, and none logs at ERROR level (this runs
    last in the module, after the requests above)."""
    _, folder = served
    log = (folder / "server.log").read_text(errors="replace")
    assert "lfmui" in log or "Running on" in log  # the log is the server's
    bad = [line for line in log.splitlines() if line.startswith("ERROR") or "Traceback" in line]
    assert bad == []


def test_upload_caps_the_ledger_of_clients_stays_bounded(monkeypatch):
    """A client's address can be forged (X-Forwarded-For): the per-client ledger keeps at
    most MAX_CLIENTS, the least recent forgotten first."""
    from lfmui.serve import guard

    monkeypatch.setattr(guard, "MAX_CLIENTS", 3)
    ledger = guard._UploadLedger()
    for n in range(10):
        assert ledger.room(f"10.0.0.{n}", 1, 1)
    assert list(ledger._entries) == ["10.0.0.7", "10.0.0.8", "10.0.0.9"]


def test_item42_a_client_is_never_who_a_header_says_it_is(monkeypatch):
    """Per-client caps (uploads) and turns (/v1) key on the socket's peer; behind a Space's
    proxy, on the address the proxy appended, never on the values before it."""
    from starlette.requests import Request

    from lfmui.serve import guard
    from lfmui.serve.routes import caller

    forged = [(b"x-forwarded-for", b"1.2.3.4, 5.6.7.8")]
    scope = {"type": "http", "headers": forged, "client": ("10.0.0.9", 5000)}
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert guard._client(scope) == "10.0.0.9"
    assert caller(Request(scope)) == "v1:10.0.0.9"
    monkeypatch.setenv("SPACE_ID", "someone/lfmui")  # the Space's proxy appends the real one
    assert guard._client(scope) == "5.6.7.8"
    assert caller(Request(scope)) == "v1:5.6.7.8"
    assert guard._client({"type": "http", "headers": [], "client": None}) == "unknown"
