"""Cancelled and abandoned requests stop their work (issue 18): through the API (`job.cancel()`, i.e.
POST /gradio_api/cancel) and by a client that drops its event stream, against the real app.

The work is seen from outside, as an operator would: the server's CPU use. A run that went on
(as it once did, to step 576 and the VQ decode) keeps both cores busy for seconds; a stopped one
leaves the server idle within a step.
"""

from __future__ import annotations

import json
import time
import urllib.request

import psutil
import pytest
from gradio_client import Client
from test_app import shared_cache, start_app, stop_app

FOUR = {"prompt": "a red fox in the snow", "negative_prompt": "", "seed": 1, "randomize_seed": False, "cfg_weight": 5.0,
        "temperature": 1.0, "num_images": 4, "size": 384}


@pytest.fixture(scope="module")
def app(tmp_path_factory, artifacts_dir):
    proc, url = start_app(shared_cache(tmp_path_factory), artifacts_dir / "test_cancel.server.log")
    yield psutil.Process(proc.pid), url
    stop_app(proc)


def cpu_percent(process: psutil.Process, seconds: float) -> float:
    """The server's CPU use over the next `seconds` (100 = one core busy)."""
    process.cpu_percent(None)
    time.sleep(seconds)
    return process.cpu_percent(None)


def wait_until_busy(process: psutil.Process, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while cpu_percent(process, 0.25) < 50:
        assert time.monotonic() < end, "the image run never started"


def wait_until_idle(process: psutil.Process, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while cpu_percent(process, 0.5) >= 25:
        assert time.monotonic() < end, "the server never became idle"


def test_an_api_cancel_stops_the_run_within_a_step(app):
    process, url = app
    client = Client(url, verbose=False)
    wait_until_idle(process)  # the app's background warm-up is over
    job = client.submit(**FOUR, api_name="/generate_images")
    wait_until_busy(process)
    job.cancel()
    time.sleep(0.5)  # one step of the tiny model is milliseconds; Gradio's own bookkeeping is the rest
    assert cpu_percent(process, 1.5) < 25
    assert isinstance(client.predict("Hello", [], [], 0.0, 1.0, 4, 0, api_name="/chat"), str)  # still serving


def test_a_dropped_event_stream_stops_the_run(app):
    process, url = app
    call = f"{url}gradio_api/call/generate_images"
    body = json.dumps({"data": list(FOUR.values())}).encode()
    request = urllib.request.Request(call, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        event_id = json.loads(response.read())["event_id"]
    stream = urllib.request.urlopen(f"{call}/{event_id}", timeout=60)
    stream.readline()  # the run has begun streaming to us ...
    wait_until_busy(process)
    stream.close()  # ... and we go away without a word
    time.sleep(1.0)
    assert cpu_percent(process, 1.5) < 25
    client = Client(url, verbose=False)
    assert isinstance(client.predict("Hello", [], [], 0.0, 1.0, 4, 0, api_name="/chat"), str)
