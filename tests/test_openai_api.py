"""The OpenAI-compatible API, driven by the official `openai` client and by plain HTTP (httpx), against
`python app.py --tiny-demo --api-key ... --auth ...` (the API on the UI's port) and against
`python -m janus_ov serve` (the API alone). Answers and images are compared with janus_ov called
directly with the same request, so every parameter is shown to pass through.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import subprocess
import sys
import time
import urllib.request

import httpx
import numpy as np
import pytest
from PIL import Image
from test_app import ASSETS, REPO, free_port, shared_cache, start_app, stop_app

openai = pytest.importorskip("openai")

KEY = "sk-test-4f1e"
MODEL = "tiny-demo-checkpoint"  # what the tiny demo's pipeline calls its model (its checkpoint's folder)
SHAPES = "data:image/png;base64," + base64.b64encode((ASSETS / "shapes.png").read_bytes()).decode()
CHART = "data:image/png;base64," + base64.b64encode((ASSETS / "chart.png").read_bytes()).decode()


@pytest.fixture(scope="module")
def app_cache(tmp_path_factory):
    return shared_cache(tmp_path_factory)


@pytest.fixture(scope="module")
def server(app_cache, artifacts_dir):
    proc, url = start_app(app_cache, artifacts_dir / "test_openai_api.server.log", "--api-key", KEY,
                          "--auth", "ann:s3cret", "--max-images", "2")
    yield url.rstrip("/")
    stop_app(proc)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def direct(app_cache, server):
    from janus_ov.pipeline import JanusPipeline

    return JanusPipeline.from_pretrained(str(app_cache / "tiny-demo-checkpoint"), weights="int4",
                                         cache_dir=app_cache, progress=None)


def ask(client, messages, **params):
    return client.chat.completions.create(model=MODEL, messages=messages, **{"temperature": 0, "max_tokens": 12,
                                                                             **params})


# ------------------------------------------------------------------------------------------ models


def test_models_lists_the_loaded_model(client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


# ------------------------------------------------------------------------------------------ chat


def test_chat_with_an_image_is_the_pipelines_answer(client, direct):
    reply = ask(client, [{"role": "user", "content": [{"type": "text", "text": "What shapes are there?"},
                                                      {"type": "image_url", "image_url": {"url": SHAPES}}]}])
    expected = direct.chat([{"role": "user", "content": "What shapes are there?",
                             "images": [(ASSETS / "shapes.png").read_bytes()]}], max_new_tokens=12)
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == expected.text
    assert choice.finish_reason == "length"  # 12 tokens, all of max_tokens
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (expected.stats["prompt_tokens"], 12)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 12 and reply.model == MODEL


def test_streamed_chat_is_the_same_answer_in_pieces(client):
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": SHAPES}},
                                             {"type": "text", "text": "Describe it."}]}]
    whole = ask(client, messages, max_tokens=16)
    chunks = list(ask(client, messages, max_tokens=16, stream=True, stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 1, "the answer should arrive in several pieces"
    assert "".join(pieces) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 16 and chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_a_two_turn_conversation_keeps_the_first_turns_image(client, direct):
    first = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": CHART}},
                                          {"type": "text", "text": "What is this chart?"}]}]
    answer = ask(client, first).choices[0].message.content
    second = first + [{"role": "assistant", "content": answer}, {"role": "user", "content": "Which month is highest?"}]
    reply = ask(client, second).choices[0].message.content
    chart = (ASSETS / "chart.png").read_bytes()
    expected = direct.chat([{"role": "user", "content": "What is this chart?", "images": [chart]},
                            {"role": "assistant", "content": answer, "images": []},
                            {"role": "user", "content": "Which month is highest?", "images": []}], max_new_tokens=12)
    assert reply == expected.text


def test_a_system_message_replaces_the_default_system_prompt(client, direct):
    messages = [{"role": "system", "content": "You answer in one word."}, {"role": "user", "content": "Hello"}]
    reply = ask(client, messages)
    expected = direct.chat([{"role": "user", "content": "Hello"}], max_new_tokens=12,
                           system_prompt="You answer in one word.")
    assert reply.choices[0].message.content == expected.text
    assert reply.usage.prompt_tokens == expected.stats["prompt_tokens"]
    default = direct.chat([{"role": "user", "content": "Hello"}], max_new_tokens=12)
    assert default.stats["prompt_tokens"] != expected.stats["prompt_tokens"]  # it really replaced something


def test_sampling_parameters_and_the_seed_pass_through(client, direct):
    params = {"temperature": 0.9, "top_p": 0.8, "seed": 1234, "max_tokens": 10}
    reply = ask(client, [{"role": "user", "content": "Tell me a story."}], **params)
    expected = direct.chat([{"role": "user", "content": "Tell me a story."}], max_new_tokens=10, temperature=0.9,
                           top_p=0.8, seed=1234)
    assert reply.choices[0].message.content == expected.text
    assert ask(client, [{"role": "user", "content": "Tell me a story."}], max_completion_tokens=3).usage \
        .completion_tokens == 3


def test_stop_strings_end_the_answer_before_them(client):
    messages = [{"role": "user", "content": "Count to ten."}]
    full = ask(client, messages, max_tokens=24).choices[0].message.content
    stop = full[len(full) // 2:len(full) // 2 + 2]
    assert stop.strip(), full  # a stop string taken from the middle of the greedy answer
    cut = full[:full.find(stop)]
    reply = ask(client, messages, max_tokens=24, stop=[stop, "never-in-the-answer"])
    assert reply.choices[0].message.content == cut and reply.choices[0].finish_reason == "stop"
    streamed = ask(client, messages, max_tokens=24, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == cut


# ------------------------------------------------------------------------------------------ images


def _png(b64: str) -> Image.Image:
    data = base64.b64decode(b64)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return Image.open(io.BytesIO(data))


def test_images_generate_two_pngs_the_pipeline_makes(client, direct):
    result = client.images.generate(model=MODEL, prompt="a red fox in the snow", n=2, size="384x384",
                                    response_format="b64_json",
                                    extra_body={"seed": 7, "cfg_weight": 4.0, "temperature": 0.9,
                                                "negative_prompt": "blurry"})
    images = [_png(d.b64_json) for d in result.data]
    assert [im.size for im in images] == [(384, 384)] * 2
    expected = direct.generate_images("a red fox in the snow", "blurry", num_images=2, cfg_weight=4.0,
                                      temperature=0.9, seed=7)
    for got, want in zip(images, expected.images):
        assert np.array_equal(np.asarray(got.convert("RGB")), np.asarray(want))


def test_images_as_urls_and_upscaled(client, server):
    result = client.images.generate(model=MODEL, prompt="a lighthouse", n=1, size="768x768", response_format="url",
                                    extra_body={"seed": 3})
    url = result.data[0].url
    assert url.startswith(f"{server}/v1/files/")
    got = httpx.get(url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert got.status_code == 200 and Image.open(io.BytesIO(got.content)).size == (768, 768)
    assert httpx.get(url, timeout=60).status_code == 401  # a kept image needs the key too
    # A kept image can be sent back as an image_url: read from disk, never fetched.
    reply = ask(client, [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": "What is this?"}]}], max_tokens=4)
    assert reply.usage.completion_tokens == 4


# ------------------------------------------------------------------------------------------ errors

BAD_CHATS = {
    "no messages": ({"messages": []}, "conversation is empty"),
    "unknown role": ({"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
    "ends with the assistant": ({"messages": [{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": "yo"}]}, "end with a user"),
    "image from a URL": ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/cat.png"}}]}]}, "does not fetch"),
    "not base64": ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}]}, "base64"),
    "not an image": ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"text").decode()}}]}]},
        "image"),
    "image in an assistant turn": ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": [
        {"type": "image_url", "image_url": {"url": SHAPES}}]}, {"role": "user", "content": "b"}]}, "only user"),
    "unknown part": ({"messages": [{"role": "user", "content": [{"type": "audio", "audio": "x"}]}]}, "text or image_url"),
    "n above 1": ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
    "negative temperature": ({"messages": [{"role": "user", "content": "hi"}], "temperature": -1}, "temperature"),
    "top_p zero": ({"messages": [{"role": "user", "content": "hi"}], "top_p": 0}, "top_p"),
    "max_tokens zero": ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    "max_tokens over the window": ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6},
                                   "max_new_tokens"),
    "five stop strings": ({"messages": [{"role": "user", "content": "hi"}], "stop": list("abcde")}, "stop"),
    "lone surrogate": ({"messages": [{"role": "user", "content": "hi \ud800"}]}, "not valid unicode"),
}
BAD_IMAGES = {
    "empty prompt": ({"prompt": "  "}, "prompt is empty"),
    "size not offered": ({"prompt": "fox", "size": "512x512"}, "size"),
    "too many images": ({"prompt": "fox", "n": 3}, "at most 2"),
    "bad response format": ({"prompt": "fox", "response_format": "webp"}, "response_format"),
    "cfg weight too high": ({"prompt": "fox", "cfg_weight": 1000}, "cfg_weight"),
}


def _raw(server, path, body, key=KEY, method="POST"):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, f"{server}{path}", headers=headers, timeout=120,
                         content=body if isinstance(body, (bytes, str)) else json.dumps(body))


@pytest.mark.parametrize("case", list(BAD_CHATS))
def test_bad_chat_requests_get_a_400_in_openais_shape(server, client, case):
    body, words = BAD_CHATS[case]
    answer = _raw(server, "/v1/chat/completions", {"model": MODEL, **body})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert words.lower() in error["message"].lower(), error
    assert "/tmp/" not in error["message"]
    if case != "lone surrogate":  # (the client's own JSON encoder cannot send one; raw HTTP did above)
        with pytest.raises(openai.BadRequestError):  # the official client's exception for it
            client.chat.completions.create(**{"model": MODEL, **body})
    assert ask(client, [{"role": "user", "content": "Hello"}], max_tokens=2).usage.completion_tokens == 2


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_image_requests_get_a_400_in_openais_shape(server, client, case):
    body, words = BAD_IMAGES[case]
    answer = _raw(server, "/v1/images/generations", {"model": MODEL, **body})
    assert answer.status_code == 400, answer.text
    assert words.lower() in answer.json()["error"]["message"].lower(), answer.json()
    known = {k: v for k, v in body.items() if k in ("prompt", "n", "size", "response_format")}
    with pytest.raises(openai.BadRequestError):  # our extensions go in extra_body, as a client sends them
        client.images.generate(model=MODEL, **known, extra_body={k: v for k, v in body.items() if k not in known})


def test_malformed_bodies_unknown_models_and_routes(server):
    for body in (b"{not json", b"[1, 2]", {"model": MODEL}):
        answer = _raw(server, "/v1/chat/completions", body)
        assert answer.status_code == 400 and answer.json()["error"]["message"], answer.text
    answer = _raw(server, "/v1/chat/completions", {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "model_not_found"
    answer = _raw(server, "/v1/images/generations", {"model": "dall-e-3", "prompt": "fox"})
    assert answer.status_code == 404 and answer.json()["error"]["param"] == "model"
    answer = _raw(server, "/v1/embeddings", {"model": MODEL, "input": "hi"})
    assert answer.status_code == 404 and "error" in answer.json()


def test_the_api_key_is_enforced_on_every_route_and_the_ui_keeps_its_login(server):
    routes = [("GET", "/v1/models", None), ("GET", f"/v1/models/{MODEL}", None),
              ("POST", "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}),
              ("POST", "/v1/images/generations", {"model": MODEL, "prompt": "fox"}),
              ("GET", "/v1/files/" + "0" * 32 + ".png", None), ("POST", "/v1/nope", {})]
    for method, path, body in routes:
        for key in (None, "wrong", KEY[:-1]):
            answer = _raw(server, path, body or b"", key=key, method=method)
            assert answer.status_code == 401, (method, path, key, answer.status_code)
            assert answer.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).models.list()
    # The key opens the API only: the UI and Gradio's API still want the login (--auth).
    for path in ("/config", "/gradio_api/info"):
        assert httpx.get(server + path, headers={"Authorization": f"Bearer {KEY}"}, timeout=30).status_code == 401


# ------------------------------------------------------------------------------------------ plain HTTP


def test_an_open_webui_style_client_over_plain_http(server):
    """What Open WebUI sends: extra fields, a data: URL, stream with usage; read as raw SSE lines."""
    body = {"model": MODEL, "stream": True, "stream_options": {"include_usage": True}, "temperature": 0,
            "max_tokens": 8, "user": "someone", "metadata": {"chat_id": "x"}, "frequency_penalty": 0,
            "messages": [{"role": "system", "content": "Be helpful."},
                         {"role": "user", "content": [{"type": "text", "text": "What is in the image?"},
                                                      {"type": "image_url",
                                                       "image_url": {"url": SHAPES, "detail": "auto"}}]}]}
    lines = []
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {KEY}"}) as answer:
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in answer.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["usage"]["completion_tokens"] == 8 and chunks[-1]["choices"] == []
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    whole = _raw(server, "/v1/chat/completions", {**body, "stream": False}).json()
    assert whole["choices"][0]["message"]["content"] == text

    images = _raw(server, "/v1/images/generations", {"model": MODEL, "prompt": "a fox", "n": 1, "seed": 5})
    assert images.status_code == 200 and _png(images.json()["data"][0]["b64_json"]).size == (384, 384)


# ------------------------------------------------------------------------------------------ serving


def test_api_and_ui_requests_are_served_together(server, client, direct):
    """While an API answer streams, a Gradio-API chat is answered through the same scheduler (not
    after it), and is the answer it gets alone."""
    from gradio_client import Client

    ui = Client(server + "/", auth=("ann", "s3cret"), verbose=False)
    long_answer = ask(client, [{"role": "user", "content": "Tell me about lighthouses."}], max_tokens=1900,
                      stream=True)
    first = [next(iter(long_answer)) for _ in range(3)]  # under way
    ui_text = ui.submit(message="Hello there", images=[], history=[], temperature=0.0, top_p=1.0, max_new_tokens=8,
                        seed=0, api_name="/chat").result(timeout=300)
    rest = [next(iter(long_answer)) for _ in range(3)]
    assert all(c.choices and c.choices[0].finish_reason is None for c in first + rest), "still streaming"
    long_answer.close()  # a client that goes away: the server stops that answer
    assert ui_text == direct.chat([{"role": "user", "content": "Hello there"}], max_new_tokens=8, top_p=1.0,
                                  seed=0).text


def serve(app_cache, log_path, *extra: str):
    """`python -m janus_ov serve` on the tiny demo's checkpoint; (process, url) once it answers."""
    port = free_port()
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "janus_ov", "serve", "--model", str(app_cache / "tiny-demo-checkpoint"),
                             "--cache-dir", str(app_cache), "--port", str(port), *extra],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={"HF_HUB_OFFLINE": "1", **_env()})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        assert proc.poll() is None, log_path.read_text()
        try:
            urllib.request.urlopen(f"{url}/v1/models", timeout=5)
            return proc, url
        except OSError:
            time.sleep(1)
    stop_app(proc)
    pytest.fail(f"serve did not answer:\n{log_path.read_text()}")


@pytest.fixture(scope="module")
def serve_only(app_cache, server, artifacts_dir):
    """The API alone with the smallest KV pool (4 images' worth), allowed to fetch image URLs."""
    proc, url = serve(app_cache, artifacts_dir / "test_openai_api.serve.log", "--kv-cache-tokens", "2304",
                      "--allow-image-urls")
    yield url
    stop_app(proc)


@pytest.fixture(scope="module")
def serve_eight(app_cache, server, artifacts_dir):
    """The API alone with the default pool, up to 8 images a request: (its process, url)."""
    import psutil

    proc, url = serve(app_cache, artifacts_dir / "test_openai_api.serve8.log", "--max-images", "8")
    yield psutil.Process(proc.pid), url
    stop_app(proc)


def _env():
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("JANUS_")}


def test_serve_runs_the_api_without_the_ui(serve_only):
    assert httpx.get(f"{serve_only}/", timeout=30).status_code == 404  # no UI here
    client = openai.OpenAI(base_url=f"{serve_only}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert ask(client, [{"role": "user", "content": "Hi"}], max_tokens=3).usage.completion_tokens == 3


def test_a_full_queue_answers_503_and_the_rest_are_served(serve_only):
    """Each of these requests reserves most of the 2304-token pool (prompt + max_tokens), so one runs at a
    time; the scheduler queues 32 more and refuses the rest as busy (503, Retry-After). A stop string
    from the greedy answer ends each after a few tokens, and every accepted one completes."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a long story."}], "temperature": 0}
    greedy = httpx.post(f"{serve_only}/v1/chat/completions", json={**body, "max_tokens": 6}, timeout=120)
    text = greedy.json()["choices"][0]["message"]["content"]
    body.update(max_tokens=1900, stop=text[3:5])
    assert text[3:5].strip(), text

    async def flood():
        async with httpx.AsyncClient(base_url=serve_only, timeout=600) as http:
            return await asyncio.gather(*(http.post("/v1/chat/completions", json=body) for _ in range(40)))

    answers = asyncio.run(flood())
    statuses = sorted(a.status_code for a in answers)
    busy = [a for a in answers if a.status_code == 503]
    assert busy and set(statuses) == {200, 503}, statuses
    assert busy[0].json()["error"]["code"] == "server_busy" and busy[0].headers["retry-after"]
    served = {a.json()["choices"][0]["message"]["content"] for a in answers if a.status_code == 200}
    assert served == {text[:text.find(text[3:5])]}  # greedy: each served request got the same, whole answer


@pytest.fixture
def image_host():
    """A loopback web server: /shapes.png, /huge.png (over the size limit), /slow.png (drips for 30 s)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            try:
                if self.path == "/shapes.png":
                    self.wfile.write((ASSETS / "shapes.png").read_bytes())
                elif self.path == "/huge.png":
                    for _ in range(22):
                        self.wfile.write(b"\0" * 2**20)
                else:
                    for _ in range(60):
                        self.wfile.write(b"\0")
                        self.wfile.flush()
                        time.sleep(0.5)
            except OSError:  # the server gave up on us: what the test wants
                pass

        def log_message(self, *args):
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{http.server_address[1]}"
    http.shutdown()


def test_with_allow_image_urls_a_url_is_fetched_within_limits(serve_only, image_host):
    client = openai.OpenAI(base_url=f"{serve_only}/v1", api_key="unused", max_retries=0, timeout=120)

    def about(url):
        return ask(client, [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                         {"type": "text", "text": "What is this?"}]}], max_tokens=6)

    assert about(f"{image_host}/shapes.png").choices[0].message.content == about(SHAPES).choices[0].message.content
    with pytest.raises(openai.BadRequestError, match="over 20 MB"):
        about(f"{image_host}/huge.png")
    started = time.monotonic()
    with pytest.raises(openai.BadRequestError, match="took over 10 s"):
        about(f"{image_host}/slow.png")
    assert time.monotonic() - started < 20


def test_a_client_that_goes_away_stops_its_work(serve_eight):
    """An abandoned image request frees the server within a step (its CPU goes idle), as the UI's Stop
    does. (A chat answer of the tiny model is over in a fraction of a second, too soon to watch.)"""
    from test_cancel import wait_until_busy, wait_until_idle

    server, url = serve_eight
    wait_until_idle(server)
    # Eight images take the tiny model seconds: ask, see the work start, hang up.
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"model": MODEL, "prompt": "fox", "n": 8}).encode()
    with socket.create_connection((host, int(port)), timeout=30) as raw:
        raw.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        wait_until_busy(server)
    wait_until_idle(server, timeout=4.0)  # noticed between two steps; the run alone takes longer
    assert httpx.get(f"{url}/v1/models", timeout=30).status_code == 200
