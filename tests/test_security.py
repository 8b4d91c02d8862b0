"""The app against a hostile visitor: `python app.py --tiny-demo` in a subprocess, probed over raw HTTP.

- no route serves a file outside the app's own uploads and results (traversal, symlinks, the model
  cache, the source), and a crafted chat history cannot make the server copy one there;
- with --auth, every route Gradio has (enumerated from Gradio itself, so a new one is covered)
  refuses a request without a session, except the login page's own static files;
- another visitor cannot list or guess someone's files;
- no input makes the server fetch a URL.
(That chat text and answers never render as HTML is a browser test: test_browser.py.)
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from test_app import ASSETS, REPO, shared_cache, start_app, stop_app

SECRET = "janus-security-sentinel-7f3a9c"  # content no file the app writes can contain
PUBLIC = ("/", "/login", "/login/", "/logout", "/favicon.ico", "/theme.css", "/gradio_api/theme.css", "/robots.txt",
          "/manifest.json", "/gradio_api/startup-events", "/assets/", "/static/", "/svelte/", "/pwa_icon")


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """The server's temp dirs (Gradio's cache, TMPDIR) and a secret file beside them."""
    home = tmp_path_factory.mktemp("security")
    (home / "secret.txt").write_text(SECRET, encoding="utf-8")
    (home / "gradio").mkdir()
    (home / "tmp").mkdir()
    return home


def _env(home: Path) -> dict:
    return {"GRADIO_TEMP_DIR": str(home / "gradio"), "TMPDIR": str(home / "tmp")}


@pytest.fixture(scope="module")
def server(tmp_path_factory, artifacts_dir, home):
    proc, url = start_app(shared_cache(tmp_path_factory), artifacts_dir / "test_security.server.log", env=_env(home))
    yield url.rstrip("/")
    stop_app(proc)


@pytest.fixture(scope="module")
def locked(tmp_path_factory, artifacts_dir, home):
    proc, url = start_app(shared_cache(tmp_path_factory), artifacts_dir / "test_security.auth.server.log",
                          "--auth", "ann:s3cret", env=_env(home))
    yield url.rstrip("/")
    stop_app(proc)


def fn_index(url: str, api_name: str) -> int:
    config = httpx.get(f"{url}/config", timeout=30).json()
    return next(d["id"] for d in config["dependencies"] if d.get("api_name") == api_name)


def event(url: str, api_name: str, data: list, session: str = "visitor-a") -> dict:
    """Run one event the way the browser does (queue/join, then the session's event stream);
    returns the final message."""
    fn = fn_index(url, api_name)
    body = {"data": data, "fn_index": fn, "session_hash": session, "event_data": None, "trigger_id": None}
    if not next(d for d in httpx.get(f"{url}/config", timeout=30).json()["dependencies"] if d["id"] == fn)["queue"]:
        answer = httpx.post(f"{url}/gradio_api/run/predict", json=body, timeout=60)
        return {"success": answer.status_code == 200, "output": answer.json()}
    joined = httpx.post(f"{url}/gradio_api/queue/join", json=body, timeout=60)
    assert joined.status_code == 200, joined.text
    with httpx.stream("GET", f"{url}/gradio_api/queue/data", params={"session_hash": session}, timeout=120) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return message
    raise AssertionError("the event stream ended without a result")


def files_holding(root: Path, text: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def upload(url: str, path: Path, cookies=None) -> str:
    with open(path, "rb") as f:
        answer = httpx.post(f"{url}/gradio_api/upload", files={"files": (path.name, f)}, cookies=cookies, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()[0]


# ----------------------------------------------------------------------------- crafted histories


def component_message(path: Path) -> list[dict]:
    return [{"role": "user", "content": [{"type": "component", "component": "file", "value": {"path": str(path)},
                                          "constructor_args": {}, "props": {}}]}]


@pytest.mark.parametrize("api_name,extra", [("add_user_turn", None), ("undo", ()), ("retry", (0.0, 0)),
                                            ("bot_turn", (0.0, 1.0, 4, 0, 1, 5.0, 1.0, 0, True, ""))])
def test_a_crafted_history_copies_no_file_into_the_served_cache(server, home, api_name, extra):
    """A "component" message naming a file made Gradio's preprocessing copy that file (the app's
    source, anything in the temp dir) into the cache it serves. Every event taking the
    conversation must refuse it, and copy nothing."""
    for target in (home / "secret.txt", REPO / "app.py"):
        session = f"visitor-{api_name}-{target.name}"
        if api_name == "bot_turn":  # it answers only a question asked first: ask one, then craft its history
            assert event(server, "add_user_turn", [{"text": "hi", "files": []}, [], False], session)["success"]
        history = component_message(target)
        data = [{"text": "hi", "files": []}, history, False] if api_name == "add_user_turn" else [history, *extra]
        result = event(server, api_name, data, session)
        assert not result["success"], result
        assert "never writes" in json.dumps(result), result
    assert files_holding(home / "gradio", SECRET) == []
    assert not list((home / "gradio").rglob("app.py"))


def test_a_history_naming_a_file_that_was_not_uploaded_is_refused(server, home):
    history = [{"role": "user", "content": [{"type": "file", "file": {"path": str(home / "secret.txt"),
                                                                       "meta": {"_type": "gradio.FileData"}}}]}]
    result = event(server, "undo", [history])
    assert not result["success"] and "not uploaded" in json.dumps(result), result
    assert files_holding(home / "gradio", SECRET) == []


# ----------------------------------------------------------------------------- serving files


def test_only_uploads_and_results_are_served(server, home, tmp_path_factory):
    served = upload(server, ASSETS / "shapes.png")  # the control: an upload is served back
    assert httpx.get(f"{server}/gradio_api/file={served}", timeout=30).content == (ASSETS / "shapes.png").read_bytes()

    # A symlink planted in the served cache (by anything: another program, a bug) is not followed out.
    planted = home / "gradio" / ("0" * 64)
    planted.mkdir(exist_ok=True)
    (planted / "link.txt").symlink_to(home / "secret.txt")
    entry = next(p for p in shared_cache(tmp_path_factory).glob("tiny-demo-checkpoint-*") if (p / "manifest.json").exists())
    attempts = [str(home / "secret.txt"), "/etc/passwd", str(REPO / "app.py"), "app.py", "README.md",
                "../../../../etc/passwd", "%2e%2e/%2e%2e/%2e%2e/etc/passwd", f"{home}/gradio/../secret.txt",
                str(planted / "link.txt"), str(entry / "manifest.json"), str(home / "tmp"), str(home / "gradio")]
    for attempt in attempts:
        for route in ("/gradio_api/file=", "/file=", "/gradio_api/file/", "/static/", "/assets/", "/svelte/"):
            answer = httpx.get(f"{server}{route}{attempt}", timeout=30)
            assert answer.status_code in (400, 403, 404), (route, attempt, answer.status_code)
            assert SECRET not in answer.text and "import gradio" not in answer.text, (route, attempt)


def test_another_visitor_cannot_list_or_guess_files(server):
    result = event(server, "generate_images", ["a fox", "", 1, False, 5.0, 1.0, 1, 384], "visitor-a")
    url = result["output"]["data"][0][0]["image"]["url"]
    path = re.search(r"file=(.+)$", url).group(1)
    folder, name = path.rsplit("/", 2)[-2:]
    assert re.fullmatch(r"[0-9a-f]{64}", folder), "a result's folder is a keyed 256-bit hash, not guessable"
    assert httpx.get(f"{server}/gradio_api/file={path}", timeout=30).status_code == 200  # the holder of the URL
    cache = path.rsplit("/", 2)[0]
    for guess in (cache, f"{cache}/{folder}", f"{cache}/{name}", f"{cache}/{'0' * 64}/{name}",
                  f"{cache}/{folder[:-1]}{'1' if folder[-1] != '1' else '2'}/{name}"):
        answer = httpx.get(f"{server}/gradio_api/file={guess}", timeout=30)
        assert answer.status_code in (400, 403, 404), (guess, answer.status_code)


# ----------------------------------------------------------------------------- login


def gradio_routes() -> list[tuple[str, str]]:
    """(method, path) of every route Gradio's server has, from Gradio itself."""
    import gradio as gr
    from gradio.routes import App

    with gr.Blocks() as blocks:
        gr.Textbox()

    def walk(routes):
        for route in routes:
            if hasattr(route, "original_router"):  # an included router
                yield from walk(route.original_router.routes)
            elif getattr(route, "path", None):
                yield from ((m, route.path) for m in sorted(route.methods or ["GET"]) if m != "HEAD")

    return sorted(set(walk(App.create_app(blocks).routes)))


def test_with_a_login_every_route_refuses_a_visitor_without_a_session(locked):
    routes = gradio_routes()
    assert len(routes) > 60 and ("POST", "/gradio_api/cancel") in routes  # the enumeration found Gradio's routes
    body = {"data": [], "fn_index": 0, "session_hash": "x", "event_id": "x"}
    for method, path in routes:
        url = locked + re.sub(r"\{[^}]+\}", "x", path)
        with httpx.stream(method, url, json=body if method == "POST" else None, timeout=30) as answer:
            head = next(answer.iter_bytes(), b"")
        if path.startswith(PUBLIC) and (path in PUBLIC or path.endswith("}") or path.startswith("/pwa_icon")):
            # The login page's own files: nothing of the app (its examples, its model, its config).
            assert b"tiny random demo model" not in head and b"Describe this picture" not in head, (method, path)
        else:
            assert answer.status_code == 401, (method, path, answer.status_code, head[:200])

    # The OpenAI-compatible API too: without --api-key it answers to the login session only.
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/images/generations"),
                         ("GET", "/v1/files/x.png")):
        answer = httpx.request(method, locked + path, json={}, timeout=30)
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_api_key", (method, path)

    # With the session cookie of a login, the same server answers.
    with httpx.Client(base_url=locked, timeout=60) as client:
        login = client.post("/login", data={"username": "ann", "password": "s3cret"})
        assert login.status_code == 200
        assert client.get("/config").status_code == 200 and client.get("/gradio_api/info").status_code == 200
        assert client.get("/v1/models").json()["data"][0]["id"] == "tiny-demo-checkpoint"
        # Lax cookies: a local server or a share link is the page itself (only a Space's iframe needs None).
        cookies = login.headers.get_list("set-cookie")
        assert cookies and all("samesite=lax" in c.lower() for c in cookies), cookies
        served = upload(locked, ASSETS / "shapes.png", cookies=client.cookies)
        assert client.get(f"/gradio_api/file={served}").status_code == 200
        assert httpx.get(f"{locked}/gradio_api/file={served}", timeout=30).status_code == 401  # not without a session


def test_every_page_forbids_images_from_other_hosts(server):
    for path in ("/", "/config", "/gradio_api/info"):
        assert httpx.get(server + path, timeout=30).headers["content-security-policy"] == "img-src 'self' data: blob:"


# ----------------------------------------------------------------------------- no URL is fetched


@pytest.fixture
def listener():
    """A loopback web server that records every request it gets."""
    hits = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write((ASSETS / "shapes.png").read_bytes())

        def log_message(self, *args):
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{http.server_address[1]}", hits
    http.shutdown()


def test_no_input_makes_the_server_fetch_a_url(server, listener):
    base, hits = listener
    image = f"{base}/cat.png"
    as_file = {"path": image, "url": image, "meta": {"_type": "gradio.FileData"}}
    attempts = [
        ("chat", [f"What is at {image}? ![x]({image})", [as_file], [], 0.0, 1.0, 4, 0]),
        ("chat", ["Describe it", [{"url": image, "meta": {"_type": "gradio.FileData"}}], [], 0.0, 1.0, 4, 0]),
        ("chat", ["Hi", [], [{"role": "user", "content": image}], 0.0, 1.0, 4, 0]),
        ("generate_images", [f"a cat like {image}", image, 1, False, 5.0, 1.0, 1, 384]),
    ]
    for api_name, data in attempts:
        event(server, api_name, data, session=f"fetch-{len(hits)}")
    history = [{"role": "user", "content": [{"type": "file", "file": as_file}]}]
    event(server, "undo", [history])
    assert hits == [], f"the server fetched {hits}"


# ----------------------------------------------------------------------------- text shown as typed


@pytest.mark.parametrize("text", ['<b>bold</b> & <img src=x onerror="alert(1)">', "&lt; is how HTML writes <",
                                  "keep `<code>` and\n```html\n<div>&amp;</div>\n```\n<i>", "```\nunclosed <fence",
                                  "it`s <b>", ""])
def test_chat_text_is_shown_as_typed_and_reaches_the_model_unchanged(text):
    from app import shown, to_janus_messages, typed

    outside_code = re.sub(r"```.*?(```|$)|`[^`\n]*`", "", shown(text), flags=re.S)
    assert "<" not in outside_code  # no tag can open: markdown shows &lt; as "<"
    assert typed(shown(text)) == text
    history = [{"role": "user", "content": [{"type": "text", "text": shown(text)}]},
               {"role": "assistant", "content": [{"type": "text", "text": shown(text[::-1])}]}]
    assert [m["content"] for m in to_janus_messages(history)] == [text, text[::-1]]


def test_sessions_that_never_close_do_not_grow_the_servers_notes(monkeypatch):
    """API clients open a session per request and never close a page: the per-session stop flags
    are forgotten oldest first (a run still going is kept), so no client grows them without bound."""
    from gradio import Request

    import app

    monkeypatch.setattr(app, "SESSIONS_KEPT", 50)
    flags = app.StopFlags()
    going = Request(session_hash="still-going")
    assert flags.arm(going)
    for i in range(500):
        visitor = Request(session_hash=f"visitor-{i}")
        assert flags.arm(visitor)
        with flags.run(visitor):
            pass
    assert len(flags.runs) <= 51 and "still-going" in flags.runs and "visitor-499" in flags.runs
