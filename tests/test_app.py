"""The Gradio app end to end: `python app.py --tiny-demo` in a subprocess, driven with gradio_client.

One server per module (the first launch builds and converts the tiny model). Answers and images
are checked against janus_ov called directly with the same request, so the app is shown to pass
every parameter through, not just to return something.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from benchmarks import app_process  # noqa: E402
from benchmarks.app_process import free_port, stop_app  # noqa: E402 - the other app tests import them from here

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "assets"
MAX_IMAGES = 3


def start_app(cache_dir: Path, log_path: Path, *extra: str, env: dict | None = None):
    """benchmarks.app_process.start_app, as a test failure when the server does not come up."""
    try:
        return app_process.start_app(cache_dir, log_path, *extra, env=env)
    except app_process.AppDidNotStart as error:
        pytest.fail(str(error))


def shared_cache(tmp_path_factory) -> Path:
    """One cache per test session for every module that launches the app: only the first
    launch builds and converts the tiny model, later ones load it."""
    path = tmp_path_factory.getbasetemp() / "app-cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="module")
def app_cache(tmp_path_factory) -> Path:
    return shared_cache(tmp_path_factory)


@pytest.fixture(scope="module")
def server(app_cache, artifacts_dir):
    proc, url = start_app(app_cache, artifacts_dir / "test_app.server.log", "--max-images", str(MAX_IMAGES),
                          "--max-file-size", "2mb")
    yield url
    stop_app(proc)
    assert proc.returncode is not None


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server, verbose=False)


@pytest.fixture(scope="module")
def direct(app_cache, server):
    """The same converted tiny model the server uses, loaded in this process (no conversion: cached)."""
    from janus_ov.pipeline import JanusPipeline

    return JanusPipeline.from_pretrained(str(app_cache / "tiny-demo-checkpoint"), weights="int4",
                                         cache_dir=app_cache, progress=None)


def chat(client, message, images=(), history=(), **params):
    params = {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 24, "seed": 0, **params}
    return client.submit(message=message, images=[handle_file(str(p)) for p in images], history=list(history),
                         **params, api_name="/chat")


def generate(client, prompt="a red fox in the snow", **params):
    params = {"negative_prompt": "", "seed": 1, "randomize_seed": False, "cfg_weight": 5.0, "temperature": 1.0,
              "num_images": 1, "size": 384, **params}
    return client.predict(prompt=prompt, **params, api_name="/generate_images")


class ServerError(Exception):
    """The error event of a raw REST call: the message the server sent."""


def rest(client, api_name: str, body: str):
    """Call an endpoint over Gradio's REST API with a hand-written JSON body. gradio_client (httpx)
    refuses to send NaN / Infinity, but any other client can: the server must cope."""
    url = f"{client.src.rstrip('/')}/gradio_api/call/{api_name}"
    post = urllib.request.Request(url, data=body.encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(post, timeout=60) as response:
        event_id = json.loads(response.read())["event_id"]
    with urllib.request.urlopen(f"{url}/{event_id}", timeout=600) as response:
        stream = response.read().decode()
    events = [block.split("\n") for block in stream.strip().split("\n\n")]
    kind, data = events[-1][0].removeprefix("event: "), events[-1][1].removeprefix("data: ")
    if kind == "error":
        raise ServerError(json.loads(data)["error"] if data.startswith("{") else data)
    return json.loads(data)


# ------------------------------------------------------------------------------------------ chat


def test_chat_streams_partial_updates_then_the_final_text(client, direct):
    job = chat(client, "Describe the image in detail.", [ASSETS / "shapes.png"], temperature=0.8, top_p=0.9, seed=7,
               max_new_tokens=32)
    final = job.result(timeout=600)
    updates = job.outputs()
    assert len(updates) >= 2, f"expected a streamed answer, got {updates!r}"
    assert updates[-1] == final and final
    for shorter, longer in zip(updates, updates[1:]):
        assert longer.startswith(shorter) and len(longer) > len(shorter)  # each update grows the answer

    expected = direct.chat([{"role": "user", "content": "Describe the image in detail.",
                             "images": [str(ASSETS / "shapes.png")]}],
                           max_new_tokens=32, temperature=0.8, top_p=0.9, seed=7)
    assert final == expected


def test_chat_with_history_and_two_images(client, direct):
    history = [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi. How can I help?"}]
    images = [ASSETS / "landscape.png", ASSETS / "sign.jpg"]
    question = {"role": "user", "content": "Compare the two images.", "images": [str(p) for p in images]}
    sampling = {"temperature": 1.0, "top_p": 1.0, "seed": 3, "max_new_tokens": 24}  # sampling: sensitive to the prompt
    answer = chat(client, "Compare the two images.", images, history, **sampling).result(timeout=600)
    assert answer == direct.chat([{**m, "images": []} for m in history] + [question], **sampling)
    # The history really reaches the model: without it the prompt, and so the answer, differs.
    alone = chat(client, "Compare the two images.", images, **sampling).result(timeout=600)
    assert alone == direct.chat([question], **sampling)
    assert alone != answer


# ------------------------------------------------------------------------------------ text to image


def _path(item) -> str:
    path = item["image"] if isinstance(item, dict) else item
    return path["path"] if isinstance(path, dict) else path


def _open(item) -> Image.Image:
    return Image.open(_path(item))


def test_generate_returns_requested_images_at_native_size(client, direct):
    gallery, seed = generate(client, num_images=2, seed=11)
    assert seed == 11
    assert len(gallery) == 2
    images = [_open(item) for item in gallery]
    assert all(im.size == (384, 384) for im in images)
    expected = direct.generate_images("a red fox in the snow", num_images=2, cfg_weight=5.0, temperature=1.0, seed=11)
    for got, want in zip(images, expected):  # PNG is lossless: the very pixels janus_ov made
        assert np.array_equal(np.asarray(got.convert("RGB")), np.asarray(want.convert("RGB")))


@pytest.mark.parametrize("size", [768, 1024])
def test_generate_upscales(client, size):
    gallery, _ = generate(client, num_images=1, size=size)
    assert [_open(item).size for item in gallery] == [(size, size)]


def test_generated_pngs_are_named_from_prompt_and_seed_and_carry_their_settings(client):
    """A download says how to make it again: its name comes from prompt and seed, its PNG text
    chunks hold every setting and the model."""
    gallery, seed = generate(client, prompt="A Red fox, in the snow!", negative_prompt="blurry, dark", num_images=2,
                             seed=1234, cfg_weight=4.5, temperature=0.9, size=768)
    assert [Path(_path(item)).name for item in gallery] == ["a-red-fox-in-the-snow-seed1234-1.png",
                                                              "a-red-fox-in-the-snow-seed1234-2.png"]
    for item in gallery:
        text = _open(item).text
        assert text["prompt"] == "A Red fox, in the snow!" and text["negative_prompt"] == "blurry, dark"
        assert (text["seed"], float(text["cfg_weight"]), float(text["temperature"])) == ("1234", 4.5, 0.9)
        assert text["model"] == "tiny-demo-checkpoint" and "Janus Studio" in text["Software"]


def test_randomized_seed_is_reported(client):
    _, seed = generate(client, randomize_seed=True, seed=0)
    assert isinstance(seed, (int, float)) and 0 <= seed < 2**31 and seed == int(seed)


# ------------------------------------------------------------------------------------------ bad input


@pytest.fixture(scope="module")
def broken_image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"definitely not the rest of a PNG file" * 10)
    return path


@pytest.fixture(scope="module")
def huge_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1100, 1100, 3), np.uint8)).save(path)
    assert path.stat().st_size > 2 * 1024 * 1024  # over the --max-file-size the server runs with
    return path


# (request, words the error must contain; "" where Gradio's own input check answers first)
BAD_REQUESTS = {
    "empty chat message": (lambda c, f: chat(c, "   ").result(timeout=120), "empty"),
    # Named as the client knows it: no server path (it once said /tmp/gradio/<hash>/broken.png).
    "broken image": (lambda c, f: chat(c, "What is this?", [f["broken"]]).result(timeout=120),
                     "image file broken.png"),
    "prompt with a lone surrogate": (lambda c, f: rest(c, "generate_images",
                                                       '{"data": ["fox \\ud800", "", 1, false, 5, 1.0, 1, 384]}'),
                                     "not valid Unicode"),
    "chat with a lone surrogate": (lambda c, f: rest(c, "chat", '{"data": ["Hi \\ud800", [], [], 0, 1.0, 8, 0]}'),
                                   "not valid Unicode"),
    "upload over the size limit": (lambda c, f: chat(c, "What is this?", [f["huge"]]).result(timeout=120), ""),
    "chat history not a list of turns": (lambda c, f: chat(c, "Hi", history=[{"role": "x"}]).result(timeout=120),
                                         "history"),
    "temperature NaN": (lambda c, f: rest(c, "chat", '{"data": ["Hi", [], [], NaN, 1.0, 8, 0]}'), "temperature"),
    "top_p zero": (lambda c, f: chat(c, "Hi", top_p=0.0).result(timeout=120), ""),
    "top_p as text": (lambda c, f: chat(c, "Hi", top_p="lots").result(timeout=120), ""),
    "max_new_tokens zero": (lambda c, f: chat(c, "Hi", max_new_tokens=0).result(timeout=120), ""),
    "max_new_tokens not whole": (lambda c, f: chat(c, "Hi", max_new_tokens=2.5).result(timeout=120),
                                 "max_new_tokens"),
    "negative seed": (lambda c, f: chat(c, "Hi", seed=-5).result(timeout=120), ""),
    "empty prompt": (lambda c, f: generate(c, prompt="  "), "prompt"),
    "zero images": (lambda c, f: generate(c, num_images=0), ""),
    "too many images": (lambda c, f: generate(c, num_images=MAX_IMAGES + 1), ""),
    "cfg weight NaN": (lambda c, f: rest(c, "generate_images", '{"data": ["fox", "", 1, false, NaN, 1.0, 1, 384]}'),
                       "cfg_weight"),
    "temperature infinite": (lambda c, f: rest(c, "generate_images",
                                               '{"data": ["fox", "", 1, false, 5, Infinity, 1, 384]}'), ""),
    "unsupported upscale size": (lambda c, f: generate(c, size=500), ""),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_is_refused_and_the_server_keeps_working(client, case, broken_image, huge_file):
    request, words = BAD_REQUESTS[case]
    with pytest.raises(Exception) as caught:
        request(client, {"broken": broken_image, "huge": huge_file})
    message = str(caught.value)
    assert message.strip(), "the error must say what is wrong"
    if isinstance(caught.value, (AppError, ServerError)):  # the server's words (not gradio_client's own checks)
        assert "/tmp/" not in message and "gradio/" not in message, message  # no server paths
    if words:
        assert isinstance(caught.value, (AppError, ServerError)), f"expected a gr.Error, got {caught.value!r}"
        assert words.lower() in message.lower(), message
    # The next good request still succeeds.
    assert isinstance(chat(client, "Hello", max_new_tokens=4).result(timeout=300), str)


def test_server_refuses_uploads_over_the_limit(server, huge_file):
    # gradio_client checks the limit itself; a plain HTTP upload shows the server enforces it too.
    import httpx

    with open(huge_file, "rb") as f:
        big = httpx.post(f"{server}gradio_api/upload", files={"files": ("big.png", f, "image/png")}, timeout=60)
    assert big.status_code == 413 and "maximum" in big.text
    with open(ASSETS / "shapes.png", "rb") as f:
        small = httpx.post(f"{server}gradio_api/upload", files={"files": ("shapes.png", f, "image/png")}, timeout=60)
    assert small.status_code == 200


# ------------------------------------------------------------------------------------------ launch


def test_login_is_required_with_auth(tmp_path_factory, artifacts_dir):
    proc, url = start_app(shared_cache(tmp_path_factory), artifacts_dir / "test_app.auth.server.log",
                          "--auth", "ann:s3:cret")
    try:
        with pytest.raises(Exception):
            Client(url, verbose=False)  # no credentials: not even the API description is served
        with pytest.raises(Exception):
            Client(url, auth=("ann", "wrong"), verbose=False)
        client = Client(url, auth=("ann", "s3:cret"), verbose=False)
        assert isinstance(chat(client, "Hello", max_new_tokens=4).result(timeout=300), str)
        # Guessing is braked: after five wrong passwords in a minute the name is refused, even with the right one.
        import httpx

        def login(user, password):
            return httpx.post(f"{url}login", data={"username": user, "password": password}, timeout=30).status_code

        assert login("ann", "s3:cret") == 200
        assert [login("ann", f"guess{i}") for i in range(5)] == [400] * 5
        assert login("ann", "s3:cret") == 400
    finally:
        stop_app(proc)


def test_failed_load_ends_with_one_clear_message(tmp_path):
    missing = tmp_path / "no-such-model"
    run = subprocess.run([sys.executable, str(REPO / "app.py"), "--model", str(missing), "--cache-dir",
                          str(tmp_path / "cache"), "--port", str(free_port())],
                         cwd=REPO, capture_output=True, encoding="utf-8", errors="replace", timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 1
    assert "Traceback" not in run.stderr + run.stdout
    assert "error:" in run.stderr and "no-such-model" in run.stderr


@pytest.mark.parametrize("argv, env, words", [
    (["--weights", "int3"], {}, "--weights"),
    ([], {"JANUS_WEIGHTS": "int3"}, "--weights"),
    ([], {"JANUS_MAX_IMAGES": "zero"}, "--max-images"),
    (["--auth", "nopassword"], {}, "USER:PASSWORD"),
])
def test_bad_settings_are_reported_before_loading(argv, env, words):
    run = subprocess.run([sys.executable, str(REPO / "app.py"), *argv], cwd=REPO, capture_output=True, encoding="utf-8",
                         errors="replace", timeout=120, env={**os.environ, **env})
    assert run.returncode == 2
    assert words in run.stderr and "Traceback" not in run.stderr


def test_environment_variables_match_flags(monkeypatch):
    sys.path.insert(0, str(REPO))
    import app

    for name, value in {"JANUS_MODEL": "deepseek-ai/Janus-Pro-7B", "JANUS_WEIGHTS": "int8", "JANUS_DEVICE": "GPU",
                        "JANUS_OV_CACHE": "/tmp/x", "GRADIO_SERVER_NAME": "0.0.0.0", "PORT": "8080",
                        "JANUS_SHARE": "1", "JANUS_AUTH": "ann:s3:cret", "JANUS_MAX_IMAGES": "6",
                        "JANUS_TINY_DEMO": "true"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    args = app.parse_args([])
    assert (args.model, args.weights, args.device, args.cache_dir) == ("deepseek-ai/Janus-Pro-7B", "int8", "GPU",
                                                                      "/tmp/x")
    assert (args.server_name, args.port, args.share, args.auth) == ("0.0.0.0", 8080, True, ("ann", "s3:cret"))
    assert (args.max_images, args.tiny_demo) == (6, True)
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7000")  # Gradio's own variable wins over the generic PORT
    assert app.parse_args([]).port == 7000
    assert app.parse_args(["--port", "9000", "--weights", "fp16"]).port == 9000  # flags win over the environment
