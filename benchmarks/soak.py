"""Soak test: the full app on loopback under a mixed load from several clients for a long while,
then every sampled output checked against a sequential rerun of the same request.

    python -m benchmarks.soak [--minutes 30] [--clients 8] [--seed 0] [--verify 60] [--cache-dir DIR]
                              [--weights int4] [--out benchmarks/results/<date>-soak.json]

Launches `app.py --tiny-demo` (the first launch builds the tiny random model into --cache-dir, later
ones reuse it). Each client thread loops over a seeded random mix: a fresh chat (0-2 pictures), a
follow-up on its own last answer, an image run (fixed seed), a cancel (an image run or a long chat,
`job.cancel()` after a short random delay) and a disconnect (a request over raw HTTP, either
`/gradio_api/call/<api>` or `/gradio_api/queue/join`, whose event stream is closed after a few
events). Every request is recorded (kind, latency, outcome, the error's class and message); the
server's RSS is sampled every --rss-every seconds. After the load, up to --verify completed
requests are run again alone, one after the other, and their outputs compared exactly (the answer
text; the images' pixel arrays and the seed).

Writes the JSON results to --out, a markdown summary next to it, and the per-request records and
the server log to results/raw/soak/ (or next to --out when it is elsewhere).

Note: with int4 weights the CPU plugin's kernels are not batch-invariant (README, "batching"), so
a request served beside others can differ from its rerun alone; a mismatch is rerun a second time
alone to tell that apart from an output that is not even reproducible alone. `--weights fp32`
gives a run where any mismatch is a defect.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import wait as wait_futures
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from . import app_process
from .app_process import stop_app
from .report import machine

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
ASSETS = sorted(p for p in (REPO / "assets").iterdir() if p.suffix in (".png", ".jpg"))
REQUEST_TIMEOUT_S = 600  # an image run waits behind at most IMAGE_CONCURRENCY others; generous on 2 busy cores
MB = 2**20

# The mix each client draws from (weights need not sum to 1).
MIX = {"chat": 0.3, "followup": 0.2, "image": 0.2, "cancel": 0.15, "disconnect": 0.15}
QUESTIONS = ["Describe the image in detail.", "What colours do you see?", "Write a haiku about the sea.",
             "Explain what a CPU cache is.", "What is in the top left corner?", "Count the shapes.",
             "Summarise the picture in one sentence.", "Tell me a short story about a fox."]
FOLLOW_UPS = ["Tell me more.", "Why?", "Say that again in fewer words.", "And what comes next?",
              "Can you give an example?"]
PROMPTS = ["a red fox in the snow", "a lighthouse at dusk, oil painting", "a bowl of ramen, studio photo",
           "an isometric city block at night", "a watercolour of mountains"]


# ---------------------------------------------------------------- the server

def start_app(cache_dir: Path, log_path: Path, weights: str, gradio_tmp: Path) -> tuple[subprocess.Popen, str]:
    """app.py in tiny-demo mode (app_process.py), its uploads and results in a folder of its own: Gradio
    names an upload by its content (<temp>/<sha256>/shapes.png), the same path in every Gradio server
    sharing /tmp/gradio, and any of them that closes deletes "its" uploads, under another server's
    requests too."""
    try:
        return app_process.start_app(cache_dir, log_path, "--weights", weights, env={"GRADIO_TEMP_DIR": str(gradio_tmp)})
    except app_process.AppDidNotStart as error:
        sys.exit(str(error))


def tree_rss(pid: int) -> int:
    """Resident bytes of the server and any children it started."""
    try:
        root = psutil.Process(pid)
        total = root.memory_info().rss
        for child in root.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total
    except psutil.Error:
        return 0


class RssSampler(threading.Thread):
    """The server's RSS every `every` seconds, tagged with the phase (load / verify) it was taken in."""

    def __init__(self, proc: subprocess.Popen, t0: float, every: float):
        super().__init__(daemon=True)
        self.proc, self.t0, self.every = proc, t0, every
        self.samples: list[dict] = []
        self.phase = "load"
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            if self.proc.poll() is not None:
                return
            self.samples.append({"t_s": round(time.monotonic() - self.t0, 1), "rss_mb": round(tree_rss(self.proc.pid) / MB, 1),
                                 "phase": self.phase})
            self.done.wait(self.every)


# ---------------------------------------------------------------- requests

def error_kind(error: BaseException) -> str:
    """The error's class and its message with numbers and paths blanked, so like errors group together."""
    text = (str(error).strip().splitlines() or [""])[0]
    text = re.sub(r"(/[\w.\-]+)+", "<path>", text)
    text = re.sub(r"\d+(\.\d+)?", "N", text)
    return f"{type(error).__name__}: {text[:140]}".rstrip(": ")


def image_digest(item) -> str:
    """SHA-256 of a gallery item's pixel array (mode and shape included): equal digests, equal pixels."""
    path = item["image"] if isinstance(item, dict) else item
    path = path["path"] if isinstance(path, dict) else path
    with Image.open(path) as im:
        pixels = np.asarray(im)
        mode = im.mode
    os.unlink(path)  # one digest is all we keep; hundreds of PNGs would pile up in the download folder
    return hashlib.sha256(f"{mode}{pixels.shape}".encode() + pixels.tobytes()).hexdigest()


def submit(client, spec: dict):
    from gradio_client import handle_file

    params = dict(spec["params"])
    if spec["api"] == "/chat":
        params["images"] = [handle_file(p) for p in params["images"]]
    return client.submit(**params, api_name=spec["api"])


def wait_job(job, timeout: float) -> float | None:
    """Wait for a job; return when its first streamed update arrived (monotonic), if one did."""
    first, end = None, time.monotonic() + timeout
    while not job.done():
        if time.monotonic() > end:
            job.cancel()
            raise TimeoutError(f"no result within {timeout:.0f} s")
        if first is None and job.outputs():
            first = time.monotonic()
        wait_futures([job], timeout=0.02)  # Job is a Future; polling outputs() is what gives the first update
    if first is None and job.outputs():
        first = time.monotonic()
    return first


def output_of(spec: dict, result) -> dict:
    """What the determinism check compares."""
    if spec["api"] == "/chat":
        return {"text": result}
    gallery, seed = result
    return {"images": [image_digest(item) for item in gallery], "seed": seed}


def run_spec(client, spec: dict) -> tuple[dict, float | None]:
    """Run a request to the end; (output, seconds to the first update)."""
    t0 = time.monotonic()
    job = submit(client, spec)
    first = wait_job(job, REQUEST_TIMEOUT_S)
    return output_of(spec, job.result(timeout=0)), (first - t0 if first else None)


def cancel_spec(client, spec: dict, delay: float) -> dict:
    """Submit, cancel after `delay` s; the outcome says whether the cancel came in time and how long it took."""
    job = submit(client, spec)
    if not wait_futures([job], timeout=delay).done:
        asked = time.monotonic()
        job.cancel()
        try:
            wait_job(job, 60)  # gradio_client ends a cancelled job at once; the server's side is its own business
        except TimeoutError:
            return {"outcome": "error", "error": "TimeoutError: a cancelled job did not end within N s"}
        return {"outcome": "cancelled", "cancel_s": round(time.monotonic() - asked, 3)}
    return {"outcome": "ok", "note": "finished before the cancel", "output": output_of(spec, job.result(timeout=0))}


def raw_disconnect(url: str, spec: dict, route: str, events: int, fn_ids: dict) -> dict:
    """Start `spec` over raw HTTP, read `events` events of its stream, then close the socket without a word."""
    data = list(spec["params"].values())
    if spec["api"] == "/chat":
        data[1] = []  # text only: raw callers would have to upload files first
    api = spec["api"].strip("/")
    if route == "call":
        call = f"{url}gradio_api/call/{api}"
        body = json.dumps({"data": data}).encode()
        request = urllib.request.Request(call, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            stream_url = f"{call}/{json.loads(response.read())['event_id']}"
    else:
        session = uuid.uuid4().hex[:11]
        fn_index, trigger = fn_ids[api]
        body = json.dumps({"data": data, "fn_index": fn_index, "trigger_id": trigger, "session_hash": session,
                           "event_data": None}).encode()
        request = urllib.request.Request(f"{url}gradio_api/queue/join", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            json.loads(response.read())
        stream_url = f"{url}gradio_api/queue/data?session_hash={session}"
    stream = urllib.request.urlopen(stream_url, timeout=REQUEST_TIMEOUT_S)
    try:
        seen = 0
        while seen < events:
            raw_line = stream.readline()
            if not raw_line:
                return {"outcome": "error", "error": "ConnectionError: the event stream ended before its result"}
            line = raw_line.decode("utf-8", "replace").strip()
            if route == "call" and line.startswith("event: ") and line != "event: heartbeat":
                if line in ("event: complete", "event: error"):
                    kind = "ok" if line == "event: complete" else "error"
                    detail = stream.readline().decode("utf-8", "replace").strip().removeprefix("data: ")
                    return {"outcome": kind, "note": "finished before the disconnect",
                            **({"error": f"ServerError: {detail[:140]}"} if kind == "error" else {})}
                seen += 1
            elif route == "join" and line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "heartbeat":
                    continue
                if message.get("msg") == "process_completed":
                    ok = message.get("success", False)
                    return {"outcome": "ok" if ok else "error", "note": "finished before the disconnect",
                            **({} if ok else {"error": f"ServerError: {str(message.get('output'))[:140]}"})}
                seen += 1
        return {"outcome": "disconnected", "events_read": seen}
    finally:
        stream.close()  # the disconnect itself


# ---------------------------------------------------------------- clients

def chat_spec(rng: random.Random, message: str, images: list[str], history: list[dict]) -> dict:
    greedy = rng.random() < 0.6  # seeded sampling must be as reproducible as greedy decoding
    return {"api": "/chat", "params": {
        "message": message, "images": images, "history": history,
        "temperature": 0.0 if greedy else 0.8, "top_p": 1.0 if greedy else 0.9,
        "max_new_tokens": rng.randint(8, 48), "seed": rng.randint(0, 2**31 - 1)}}


def image_spec(rng: random.Random) -> dict:
    return {"api": "/generate_images", "params": {
        "prompt": rng.choice(PROMPTS), "negative_prompt": rng.choice(["", "blurry, dark"]),
        "seed": rng.randint(0, 2**31 - 1), "randomize_seed": False, "cfg_weight": rng.choice([3.0, 5.0]),
        "temperature": 1.0, "num_images": rng.randint(1, 2), "size": 768 if rng.random() < 0.1 else 384}}


def fresh_chat(rng: random.Random) -> dict:
    images = [str(p) for p in rng.sample(ASSETS, rng.choice([0, 0, 1, 1, 2]))]
    return chat_spec(rng, f"{rng.choice(QUESTIONS)} ({rng.randint(1, 999)})", images, [])


class ClientThread(threading.Thread):
    """One user: draws a request from MIX, runs it, records it, until the deadline."""

    def __init__(self, index: int, url: str, deadline: float, seed: int, t0: float, fn_ids: dict,
                 downloads: Path, sink: list, lock: threading.Lock, abort: threading.Event):
        super().__init__(daemon=True, name=f"client-{index}")
        self.index, self.url, self.deadline, self.t0, self.fn_ids = index, url, deadline, t0, fn_ids
        self.rng = random.Random(seed * 1000 + index)
        self.downloads, self.sink, self.lock, self.abort = downloads, sink, lock, abort
        self.last_turn: tuple[dict, str] | None = None  # (spec, answer) of this client's last chat

    def run(self):
        from gradio_client import Client

        client = Client(self.url, verbose=False, analytics_enabled=False, download_files=str(self.downloads))
        while time.monotonic() < self.deadline and not self.abort.is_set():
            kind = self.rng.choices(list(MIX), weights=list(MIX.values()))[0]
            record = self.one(client, kind)
            with self.lock:
                self.sink.append(record)

    def followup(self) -> dict | None:
        if self.last_turn is None:
            return None
        spec, answer = self.last_turn
        p = spec["params"]
        # Text turns only (the API's history); the last two exchanges, so the context stays bounded.
        history = (p["history"] + [{"role": "user", "content": p["message"]}, {"role": "assistant", "content": answer}])[-4:]
        return chat_spec(self.rng, self.rng.choice(FOLLOW_UPS), [], history)

    def one(self, client, kind: str) -> dict:
        rng = self.rng
        if kind == "followup":
            spec = self.followup() or fresh_chat(rng)
            kind = "followup" if spec["params"]["history"] else "chat"
        elif kind == "image":
            spec = image_spec(rng)
        elif kind == "cancel":
            spec = image_spec(rng) if rng.random() < 0.6 else chat_spec(rng, rng.choice(QUESTIONS), [], [])
            if spec["api"] == "/chat":
                spec["params"]["max_new_tokens"] = 1024  # long enough to be cut short
        elif kind == "disconnect":
            spec = image_spec(rng) if rng.random() < 0.5 else chat_spec(rng, rng.choice(QUESTIONS), [], [])
            if spec["api"] == "/chat":
                spec["params"]["max_new_tokens"] = 1024
        else:
            spec = fresh_chat(rng)
        record = {"client": self.index, "kind": kind, "spec": spec}
        start = time.monotonic()
        try:
            if kind == "cancel":
                delay = rng.uniform(0.1, 1.5) if spec["api"] == "/generate_images" else rng.uniform(0.02, 0.3)
                record.update(cancel_spec(client, spec, delay), cancel_after_s=round(delay, 3))
            elif kind == "disconnect":
                route, events = rng.choice(["call", "join"]), rng.randint(1, 4)
                record.update(raw_disconnect(self.url, spec, route, events, self.fn_ids), route=route)
            else:
                output, ttft = run_spec(client, spec)
                record.update(outcome="ok", output=output)
                if spec["api"] == "/chat":
                    record["ttft_s"] = ttft and round(ttft, 3)
                    self.last_turn = (spec, output["text"])
        except Exception as error:  # the client's own errors (AppError, httpx, timeouts) are findings too
            record.update(outcome="error", error=error_kind(error))
        end = time.monotonic()
        record.update(start_s=round(start - self.t0, 3), end_s=round(end - self.t0, 3), latency_s=round(end - start, 3))
        return record


# ---------------------------------------------------------------- determinism

def verify(url: str, records: list[dict], limit: int, seed: int, downloads: Path) -> dict:
    """Rerun up to `limit` completed requests alone, one after the other, and compare outputs exactly.
    Sampled round-robin over kinds so the rarer kinds are checked too."""
    from gradio_client import Client

    rng = random.Random(seed)
    by_kind: dict[str, list] = {}
    for r in records:
        if r["outcome"] == "ok" and "output" in r:
            by_kind.setdefault(r["kind"], []).append(r)
    for group in by_kind.values():
        rng.shuffle(group)
    sample = []
    while len(sample) < limit and any(by_kind.values()):
        for group in by_kind.values():
            if group and len(sample) < limit:
                sample.append(group.pop())
    client = Client(url, verbose=False, analytics_enabled=False, download_files=str(downloads))
    checked, mismatches, errors = Counter(), [], []
    for r in sample:
        try:
            again, _ = run_spec(client, r["spec"])
            if again != r["output"]:
                # A second solo run tells "differs under load" (batching) from "not reproducible even alone".
                third, _ = run_spec(client, r["spec"])
                mismatches.append({"kind": r["kind"], "spec": r["spec"], "under_load": r["output"], "alone": again,
                                   "alone_again_equal": third == again, **compare(r["output"], again)})
            checked[r["kind"]] += 1
        except Exception as error:
            errors.append({"kind": r["kind"], "error": error_kind(error), "spec": r["spec"]})
    return {"checked": sum(checked.values()), "checked_by_kind": dict(checked), "mismatches": mismatches,
            "errors": errors, "eligible": sum(1 for r in records if r["outcome"] == "ok" and "output" in r)}


def compare(a: dict, b: dict) -> dict:
    """How far two outputs agree: the common prefix of two answers, the equal images of two galleries."""
    if "text" in a:
        n = next((i for i, (x, y) in enumerate(zip(a["text"], b["text"])) if x != y), min(len(a["text"]), len(b["text"])))
        return {"common_prefix_chars": n, "lengths": [len(a["text"]), len(b["text"])]}
    return {"equal_images": sum(x == y for x, y in zip(a["images"], b["images"])), "seeds": [a["seed"], b["seed"]]}


# ---------------------------------------------------------------- report

def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else None


def slope_per_10min(samples: list[dict]) -> float:
    """MB per 10 minutes of a least-squares line through the samples."""
    t, mb = np.array([s["t_s"] for s in samples]), np.array([s["rss_mb"] for s in samples])
    return round(float(np.polyfit(t, mb, 1)[0]) * 600, 1)


def rss_summary(samples: list[dict], load_s: float) -> dict:
    """Over the load phase: first vs last window medians (5 min each, a third of the load for short runs)
    and the slope. Growth: the last window above the first by 32 MB and 5 %. A server's caches fill at
    first and then level off, a leak does not: "still growing" is the slope of the second half above
    10 MB and 2 % per 10 minutes."""
    load = [s for s in samples if s["phase"] == "load"]
    after = [s["rss_mb"] for s in samples if s["phase"] == "verify"]  # one request at a time: does memory come back?
    if len(load) < 3:
        return {"samples": len(load)}
    window = min(300.0, load_s / 3)
    t_end = load[-1]["t_s"]
    first = statistics.median(s["rss_mb"] for s in load if s["t_s"] <= load[0]["t_s"] + window)
    last = statistics.median(s["rss_mb"] for s in load if s["t_s"] >= t_end - window)
    second_half = slope_per_10min([s for s in load if s["t_s"] >= t_end / 2])
    return {"samples": len(load), "window_s": round(window), "first_window_median_mb": first,
            "last_window_median_mb": last, "slope_mb_per_10min": slope_per_10min(load),
            "second_half_slope_mb_per_10min": second_half,
            "still_growing": bool(second_half > max(10.0, 0.02 * last)),
            "min_mb": min(s["rss_mb"] for s in load), "max_mb": max(s["rss_mb"] for s in load),
            "after_load_median_mb": statistics.median(after) if after else None,
            "growth": bool(last - first > max(32.0, 0.05 * first))}


def summarize(records: list[dict], load_s: float) -> dict:
    kinds = {}
    for kind in [*MIX, "all"]:
        rs = [r for r in records if kind in ("all", r["kind"])]
        ok = [r["latency_s"] for r in rs if r["outcome"] == "ok"]
        ttft = [r["ttft_s"] for r in rs if r.get("ttft_s") is not None]
        kinds[kind] = {"requests": len(rs), **Counter(r["outcome"] for r in rs),
                       "p50_s": pct(ok, 0.5), "p95_s": pct(ok, 0.95), "max_s": max(ok) if ok else None,
                       "first_update_p50_s": pct(ttft, 0.5), "first_update_p95_s": pct(ttft, 0.95)}
    cancels = [r["cancel_s"] for r in records if "cancel_s" in r]
    return {"by_kind": kinds, "served_ok": sum(r["outcome"] == "ok" for r in records),
            "requests_per_min": round(len(records) / (load_s / 60), 1),
            "errors_by_kind": dict(Counter(f"{r['kind']} · {r['error']}" for r in records if r["outcome"] == "error")
                                   .most_common()),
            "cancel_s_p50": pct(cancels, 0.5), "cancel_s_max": max(cancels) if cancels else None}


def server_log_problems(log_path: Path) -> dict:
    """Tracebacks the server printed, by their last line (the exception), and how many."""
    lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    exceptions = Counter()
    in_traceback = False
    for line in lines:
        if line.startswith("Traceback"):
            in_traceback = True
        elif in_traceback and line and not line.startswith((" ", "\t")) and not line.startswith("During handling"):
            exceptions[line[:200]] += 1
            in_traceback = False
    return {"tracebacks": sum(exceptions.values()), "exceptions": dict(exceptions.most_common(20))}


def git_commit() -> str:
    """The checkout the app ran from; "+changes" when app.py or janus_ov/ differ from it."""
    try:
        def git(*a):
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, encoding="utf-8", timeout=10).stdout.strip()

        return git("rev-parse", "--short", "HEAD") + ("+changes" if git("status", "--porcelain", "app.py", "janus_ov") else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def markdown(res: dict) -> str:
    s, rss, ver = res["summary"], res["rss"], res["verify"]

    def f(v, fmt="{:.2f}"):
        return "–" if v is None else fmt.format(v)

    lines = [f"# Soak test: {res['minutes']} min, {res['clients']} clients", "",
             f"{res['date']}; {res['machine']['cpu']} ({res['machine']['logical_cpus']} logical CPUs); app.py --tiny-demo "
             f"--weights {res['weights']} on loopback (commit {res.get('git_commit') or '?'}); seed {res['seed']}; "
             f"load {res['load_s']:.0f} s; "
             f"server {'alive at the end' if res['server_alive'] else 'DIED (exit ' + str(res['server_exit']) + ')'}.", "",
             f"Requests: {s['by_kind']['all']['requests']} ({s['requests_per_min']}/min), {s['served_ok']} served to the end.",
             "", "| kind | requests | ok | cancelled | disconnected | errors | p50 s | p95 s | max s "
             "| first update p50 / p95 s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for kind, k in s["by_kind"].items():
        lines.append(f"| {kind} | {k['requests']} | {k.get('ok', 0)} | {k.get('cancelled', 0)} | {k.get('disconnected', 0)} "
                     f"| {k.get('error', 0)} | {f(k['p50_s'])} | {f(k['p95_s'])} | {f(k['max_s'])} "
                     f"| {f(k['first_update_p50_s'])} / {f(k['first_update_p95_s'])} |")
    lines += ["", "Latency: submit to final output of requests served to the end (a cancel or disconnect that "
              "finished first counts there). First update: a chat's first streamed text.",
              f"Cancels: the job ended {f(s['cancel_s_p50'], '{:.3f}')} s (median; max {f(s['cancel_s_max'], '{:.3f}')} s) "
              "after `job.cancel()`.", "", "Errors by kind:"]
    lines += [f"- {n} × {kind}" for kind, n in s["errors_by_kind"].items()] or ["- none"]
    idle = res["idle_cpu_percent_after_load"]
    if idle is not None:
        lines += ["", f"Server CPU over 3 s once the last client was done: {idle:.0f} % "
                  + ("(idle: no cancelled or abandoned run kept going)" if idle < 25 else "(**still busy**)") + "."]
    if rss.get("first_window_median_mb") is not None:
        verdict = ("**grew**" if rss["growth"] else "no growth beyond the threshold") + (
            "; **still rising at the end**" if rss["still_growing"] else "; level at the end")
        lines += ["", f"Server RSS ({rss['samples']} samples over the load): {rss['first_window_median_mb']:.0f} MB "
                  f"(median of the first {rss['window_s']} s) -> {rss['last_window_median_mb']:.0f} MB (the last "
                  f"{rss['window_s']} s); slope {rss['slope_mb_per_10min']:+.1f} MB per 10 min, "
                  f"{rss['second_half_slope_mb_per_10min']:+.1f} over the second half; range {rss['min_mb']:.0f}-"
                  f"{rss['max_mb']:.0f} MB: {verdict}."
                  + (" (A short run: the windows are a third of the load each.)" if rss["window_s"] < 300 else "")
                  + (f" During the reruns alone: median {rss['after_load_median_mb']:.0f} MB."
                     if rss.get("after_load_median_mb") else "")]
    n = len(ver["mismatches"])
    load_only = sum(1 for m in ver["mismatches"] if m["alone_again_equal"])
    checked = ", ".join(f"{k} {c}" for k, c in ver["checked_by_kind"].items())
    lines += ["", f"Determinism: {ver['checked']} of {ver['eligible']} completed requests rerun alone ({checked}): "
              f"**{n} mismatch{'es' * (n != 1)}**"
              + (f" ({load_only} the same in two solo reruns: changed by running beside others)" if n else "")
              + (f"; {len(ver['errors'])} reruns failed" if ver["errors"] else "") + "."]
    for m in ver["mismatches"]:
        p = m["spec"]["params"]
        what = (f"{m['kind']}: {len(p['images'])} picture(s), {len(p['history'])} history turns, temperature "
                f"{p['temperature']}, {p['max_new_tokens']} tokens: same for {m['common_prefix_chars']} chars"
                if "text" in m["alone"] else
                f"{m['kind']}: {p['num_images']} image(s) at {p['size']} px: {m['equal_images']} equal")
        lines.append(f"- {what}")
    logs = res["server_log"]
    lines += ["", f"Server log: {logs['tracebacks']} tracebacks"
              + ("".join(f"\n- {n} × `{e}`" for e, n in logs["exceptions"].items()) if logs["tracebacks"] else ".")]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main

def warm_up(url: str, downloads: Path) -> None:
    """One request of each shape, alone, before the clock starts: the first ones wait for the app's
    background warm-up and fill its one-off buffers (two pictures, a 768 px upscale), which would
    otherwise read as growth at the start of the RSS series."""
    from gradio_client import Client

    client = Client(url, verbose=False, analytics_enabled=False, download_files=str(downloads))
    rng = random.Random(-1)
    run_spec(client, chat_spec(rng, "Hello", [str(p) for p in ASSETS[:2]], []))
    spec = image_spec(rng)
    spec["params"].update(num_images=2, size=768)
    run_spec(client, spec)


def cpu_percent(pid: int, seconds: float) -> float | None:
    """The server's CPU use over the next `seconds` (100 = one core busy)."""
    try:
        process = psutil.Process(pid)
        process.cpu_percent(None)
        time.sleep(seconds)
        return round(process.cpu_percent(None), 1)
    except psutil.Error:
        return None


def endpoint_ids(url: str) -> dict:
    """fn_index and trigger id of each public endpoint, for /queue/join (what the browser sends)."""
    with urllib.request.urlopen(f"{url}config", timeout=30) as response:
        config = json.loads(response.read())
    ids = {}
    for dep in config["dependencies"]:
        if dep.get("api_name") in ("chat", "generate_images"):
            targets = dep.get("targets") or [[None]]
            ids[dep["api_name"]] = (dep["id"], targets[0][0])
    return ids


def main(argv=None):
    p = argparse.ArgumentParser(prog="python benchmarks/soak.py", description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verify", type=int, default=60, help="most completed requests rerun alone")
    p.add_argument("--weights", default="int4", help="the app's --weights")
    p.add_argument("--rss-every", type=float, default=10.0, help="seconds between RSS samples")
    p.add_argument("--cache-dir", default=str(HERE / "models" / "soak-cache"))
    p.add_argument("--out", default=str(RESULTS / f"{time.strftime('%Y-%m-%d')}-soak.json"))
    args = p.parse_args(argv)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # the client side too: no calls home from an offline machine

    out = Path(args.out)
    raw = RESULTS / "raw" / "soak" if out.resolve().parent == RESULTS.resolve() else out.parent
    raw.mkdir(parents=True, exist_ok=True)
    Path(args.cache_dir).mkdir(parents=True, exist_ok=True)
    log_path = raw / f"{out.stem}.server.log"
    downloads = raw / f"{out.stem}.downloads"
    downloads.mkdir(exist_ok=True)

    print(f"[{time.strftime('%H:%M:%S')}] starting app.py (log: {log_path}) ...", flush=True)
    gradio_tmp = Path(tempfile.mkdtemp(prefix="soak-gradio-"))
    proc, url = start_app(Path(args.cache_dir), log_path, args.weights, gradio_tmp)
    try:
        warm_up(url, downloads)
        fn_ids = endpoint_ids(url)
        t0 = time.monotonic()
        sampler = RssSampler(proc, t0, args.rss_every)
        sampler.start()
        records, lock, abort = [], threading.Lock(), threading.Event()
        deadline = t0 + args.minutes * 60
        threads = [ClientThread(i, url, deadline, args.seed, t0, fn_ids, downloads, records, lock, abort)
                   for i in range(args.clients)]
        print(f"[{time.strftime('%H:%M:%S')}] {args.clients} clients for {args.minutes} min against {url}", flush=True)
        for t in threads:
            t.start()
        next_line = time.monotonic() + 60
        while any(t.is_alive() for t in threads):
            time.sleep(1)
            if proc.poll() is not None:
                abort.set()  # the server died: the clients would only collect connection errors
            if time.monotonic() > next_line:
                next_line += 60
                with lock:
                    done, errors = len(records), sum(r["outcome"] == "error" for r in records)
                print(f"  {time.monotonic() - t0:5.0f} s: {done} requests, {errors} errors", flush=True)
            if time.monotonic() > deadline + REQUEST_TIMEOUT_S + 120:
                break  # a client stuck beyond every timeout: report what there is
        load_s = time.monotonic() - t0
        # Cancelled and abandoned runs must have stopped: once the last client is done the server is idle.
        idle_cpu = cpu_percent(proc.pid, 3.0) if proc.poll() is None else None
        print(f"[{time.strftime('%H:%M:%S')}] load over (server CPU after it {idle_cpu}%); "
              f"rerunning up to {args.verify} requests alone ...", flush=True)
        sampler.phase = "verify"
        with lock:
            records = list(records)
        ver = (verify(url, records, args.verify, args.seed, downloads) if proc.poll() is None
               else {"checked": 0, "checked_by_kind": {}, "mismatches": [], "errors": [], "eligible": 0})
        sampler.done.set()
        sampler.join(timeout=5)
    finally:
        alive = proc.poll() is None
        stop_app(proc)
        shutil.rmtree(downloads, ignore_errors=True)
        shutil.rmtree(gradio_tmp, ignore_errors=True)  # every upload and image of the run
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
           "git_commit": git_commit(),
           "minutes": args.minutes, "clients": args.clients, "seed": args.seed, "weights": args.weights,
           "load_s": round(load_s, 1), "idle_cpu_percent_after_load": idle_cpu,
           "server_alive": alive, "server_exit": None if alive else proc.returncode,
           "summary": summarize(records, load_s), "rss": rss_summary(sampler.samples, load_s), "verify": ver,
           "server_log": server_log_problems(log_path), "rss_samples": sampler.samples,
           "errors": [{k: r[k] for k in ("client", "kind", "start_s", "latency_s", "error", "spec")}
                      for r in records if r["outcome"] == "error"][:100],
           "records_file": str(raw / f"{out.stem}.records.jsonl"), "server_log_file": str(log_path)}
    with open(res["records_file"], "w", encoding="utf-8") as fh:  # every request, without its output
        for r in records:
            fh.write(json.dumps({k: v for k, v in r.items() if k != "output"}) + "\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1), encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(res), encoding="utf-8")
    print(markdown(res))


if __name__ == "__main__":
    main()
