"""Janus Studio: chat about images and generate images with DeepSeek Janus on OpenVINO.

    python app.py                                   # Janus-Pro-1B, int4 weights, CPU
    python app.py --model deepseek-ai/Janus-Pro-7B --weights int8 --port 7860
    python app.py --tiny-demo                       # tiny random model, fully offline

Every flag has an environment variable (see `python app.py --help`), so the same file runs
unchanged as a Hugging Face Space. This file is UI wiring only: loading, converting and
running the model all live in janus_ov/.
"""

from __future__ import annotations

import argparse
import atexit
import hmac
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
from gradio import utils as gr_utils
from starlette.middleware import Middleware

from janus_ov import (
    DEFAULT_MODEL,
    PROMPT_STYLES,
    SUPPORTED_MODELS,
    WEIGHT_FORMATS,
    ImageResult,
    JanusError,
    summary,
    tiny_demo_checkpoint,
    upscale,
)
from janus_ov.memory import limit_malloc_arenas
from janus_ov.web import Guard

ASSETS = Path(__file__).resolve().parent / "assets"
MAX_SEED = 2**31 - 1
# janus_ov's scheduler runs every admitted request's next step in one batched call, so several chats
# and image runs progress together; beyond these the Gradio queue holds requests (and the scheduler
# holds those its KV-cache pool cannot take yet, refusing with a "busy" message when its queue is full).
CHAT_CONCURRENCY = 8
IMAGE_CONCURRENCY = 4
UPSCALE_CHOICES = [("384 px (native)", 384), ("768 px", 768), ("1024 px", 1024)]

CHAT_EXAMPLES = [
    {"text": "Describe this picture in detail.", "files": [str(ASSETS / "landscape.png")]},
    {"text": "How many shapes are there, and what colour is each one?", "files": [str(ASSETS / "shapes.png")]},
    {"text": "In which month were the most apples sold?", "files": [str(ASSETS / "chart.png")]},
    {"text": "What does the sign say?", "files": [str(ASSETS / "sign.jpg")]},
    {"text": "What do these two images have in common?",
     "files": [str(ASSETS / "shapes.png"), str(ASSETS / "chart.png")]},
]
PROMPT_EXAMPLES = [
    "A cozy wooden cabin in a snowy forest at dusk, warm light in the windows, highly detailed",
    "A red fox sitting in a field of sunflowers, watercolor painting",
    "An astronaut riding a horse on the moon, digital art",
    "A bowl of ramen with a soft-boiled egg, studio photo, 4k",
    "Isometric pixel art of a tiny island with a lighthouse",
]
TINY_NOTICE = ("**Tiny demo.** This is a tiny model with *random weights*, built offline for testing: "
               "its answers and images are noise, not real model output. "
               "Run with `--model deepseek-ai/Janus-Pro-1B` for the real thing.")
DOWNLOADS_KEPT_S = 600  # a run's named PNGs wait this long for Gradio to copy them into its cache
# Text to image on a grid: prompt and Generate, then results, then settings on a phone (so that
# tapping Generate shows what happens); on a wide screen the results sit beside the other two.
CSS = """#footer {font-size: 0.85em; opacity: 0.8} #notice {border-left: 4px solid #f59e0b; padding-left: 8px}
#t2i-layout {display: grid !important; grid-template-columns: 2fr 3fr; align-items: start;
             grid-template-areas: "controls results" "settings results"}
#t2i-buttons {flex-wrap: nowrap !important}
#t2i-controls {grid-area: controls} #t2i-results {grid-area: results} #t2i-settings {grid-area: settings}
@media (max-width: 768px) {
  #t2i-layout {grid-template-columns: 1fr; grid-template-areas: "controls" "results" "settings"}
}"""
# Focus the chat box on a wide screen only: on a phone, focusing scrolls the title away and opens the keyboard.
# On a phone the results are below the fold: pressing Generate brings them into view.
SHOW_RESULTS_JS = """() => { if (window.innerWidth <= 768)
  document.querySelector('#t2i-results')?.scrollIntoView({behavior: 'smooth', block: 'start'}); return []; }"""
FOCUS_JS = """() => { if (window.innerWidth > 768)
  document.querySelector('#chat-input textarea')?.focus({preventScroll: true}); }"""
CHAT_TEMPERATURE_INFO = ("0 = greedy: the most likely word each time, the same answer every time (Retry too). "
                         "Above 0 the answer is sampled, more varied as it grows, and Retry draws a new seed.")
TOP_P_INFO = "When sampling, only the most likely words whose probabilities add up to this are drawn from."
CFG_INFO = ("How strongly the image follows the prompt (and avoids the negative prompt): "
            "higher is more literal, lower more varied. 5 is a good start.")
IMAGE_TEMPERATURE_INFO = "Randomness of each of the 576 image tokens: lower is plainer and smoother, higher wilder."



# ---------------------------------------------------------------------------------------------
# Command line and environment


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def parse_args(argv=None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description="Janus Studio: multimodal chat and text-to-image on OpenVINO.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=env("JANUS_MODEL", DEFAULT_MODEL), metavar="ID|PATH",
                   help="Hub id (optionally id@revision) or local directory; supported: " + ", ".join(SUPPORTED_MODELS)
                   + " [env JANUS_MODEL]")
    p.add_argument("--weights", default=env("JANUS_WEIGHTS", "int4"),
                   help="weight format: " + "|".join(WEIGHT_FORMATS) + " [env JANUS_WEIGHTS]")
    p.add_argument("--device", default=env("JANUS_DEVICE", "CPU"), help="OpenVINO device [env JANUS_DEVICE]")
    p.add_argument("--prompt-style", default=env("JANUS_PROMPT_STYLE", "auto"),
                   help="chat template: auto (the checkpoint's files decide), pro (<|User|>) or legacy (User) "
                   "[env JANUS_PROMPT_STYLE]")
    p.add_argument("--cache-dir", default=env("JANUS_OV_CACHE"),
                   help="where converted models are kept (default: janus_ov's cache) [env JANUS_OV_CACHE]")
    # On a Hugging Face Space (SPACE_ID is set) the proxy must reach us: listen on all interfaces.
    p.add_argument("--server-name", default=env("GRADIO_SERVER_NAME", "0.0.0.0" if env("SPACE_ID") else "127.0.0.1"),
                   help="address to listen on; 0.0.0.0 for all interfaces [env GRADIO_SERVER_NAME]")
    p.add_argument("--port", default=env("GRADIO_SERVER_PORT") or env("PORT") or "7860",
                   help="port [env GRADIO_SERVER_PORT or PORT]")
    p.add_argument("--share", action="store_true", default=_env_flag("JANUS_SHARE"),
                   help="also serve through a public gradio.live link [env JANUS_SHARE=1]")
    p.add_argument("--auth", default=env("JANUS_AUTH"), metavar="USER:PASSWORD",
                   help="require this login [env JANUS_AUTH]")
    p.add_argument("--max-images", default=env("JANUS_MAX_IMAGES", "4"),
                   help="most images one text-to-image run may make [env JANUS_MAX_IMAGES]")
    p.add_argument("--max-file-size", default=env("JANUS_MAX_FILE_SIZE", "20mb"),
                   help="largest upload accepted [env JANUS_MAX_FILE_SIZE]")
    p.add_argument("--queue-size", default=env("JANUS_QUEUE_SIZE", "20"),
                   help="most requests waiting in the queue [env JANUS_QUEUE_SIZE]")
    p.add_argument("--api-key", default=env("JANUS_API_KEY"), metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on the OpenAI-compatible API under /v1 [env JANUS_API_KEY]")
    p.add_argument("--allow-image-urls", action="store_true", default=_env_flag("JANUS_ALLOW_IMAGE_URLS"),
                   help="let the API fetch http(s) image_url parts (size- and time-limited; off: data: URLs and "
                   "this server's own files only) [env JANUS_ALLOW_IMAGE_URLS=1]")
    p.add_argument("--tiny-demo", action="store_true", default=_env_flag("JANUS_TINY_DEMO"),
                   help="serve a tiny random-weight model built offline (outputs are noise) [env JANUS_TINY_DEMO=1]")
    args = p.parse_args(argv)

    # Defaults from the environment bypass argparse's own checks, so check every value here.
    if args.weights not in WEIGHT_FORMATS:
        p.error(f"--weights must be one of {', '.join(WEIGHT_FORMATS)}, not {args.weights!r}")
    if args.prompt_style not in ("auto", *PROMPT_STYLES):
        p.error(f"--prompt-style must be one of auto, {', '.join(PROMPT_STYLES)}, not {args.prompt_style!r}")
    for name, low in (("port", 1), ("max_images", 1), ("queue_size", 1)):
        try:
            setattr(args, name, int(getattr(args, name)))
            assert getattr(args, name) >= low
        except (ValueError, AssertionError):
            p.error(f"--{name.replace('_', '-')} must be a whole number >= {low}, not {getattr(args, name)!r}")
    if args.auth is not None:
        user, sep, password = args.auth.partition(":")
        if not (user and sep and password):
            p.error("--auth / JANUS_AUTH must look like USER:PASSWORD")
        args.auth = (user, password)
    return args


# ---------------------------------------------------------------------------------------------
# Model loading (before serving, so the first request never waits for a conversion)


def load_pipeline(args):
    from janus_ov.pipeline import JanusPipeline

    say = lambda message: print(message, flush=True)  # noqa: E731
    model = str(tiny_demo_checkpoint(args.cache_dir, say)) if args.tiny_demo else args.model
    print(f"Loading {model} (weights {args.weights}, device {args.device}) ...", flush=True)
    return JanusPipeline.from_pretrained(model, weights=args.weights, device=args.device, cache_dir=args.cache_dir,
                                         progress=say,
                                         prompt_style=None if args.prompt_style == "auto" else args.prompt_style)


class LoginGuard:
    """Gradio's password check with a brake: after MAX_FAILURES wrong passwords for a user name within
    WINDOW_S that name is refused for the rest of the window whatever the password, so a share link
    cannot be guessed at full speed (a legitimate user waits a minute at worst)."""

    MAX_FAILURES, WINDOW_S = 5, 60.0

    def __init__(self, user: str, password: str):
        self.user, self.password = user.encode(), password.encode()
        self.failures: dict[str, list[float]] = {}
        self.lock = threading.Lock()

    def __call__(self, username: str, password: str) -> bool:
        now = time.monotonic()
        with self.lock:
            recent = [t for t in self.failures.get(username, []) if now - t < self.WINDOW_S][-self.MAX_FAILURES:]
            self.failures[username] = recent
            if len(recent) >= self.MAX_FAILURES:
                return False
        ok = hmac.compare_digest(str(username).encode(), self.user) & hmac.compare_digest(str(password).encode(),
                                                                                        self.password)
        if not ok:
            with self.lock:
                self.failures.setdefault(username, []).append(now)
                while len(self.failures) > 10_000:  # names tried once and never again: forget the oldest
                    self.failures.pop(next(iter(self.failures)))
        return ok


# ---------------------------------------------------------------------------------------------
# Helpers between Gradio values and janus_ov


def _whole(value, name: str):
    """Gradio hands numbers over as floats; janus_ov wants ints for counts and seeds.
    Ranges are janus_ov's to check (one place, one message)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise user_error(f"{name} must be a whole number, got {value!r}.")


def user_error(message: str) -> gr.Error:
    """A message for the person at the UI or API; the server console needs no traceback of it."""
    return gr.Error(message, print_exception=False)


def _reason(error: Exception) -> str:
    """What a person reads about a failure: a gr.Error's own message, else the exception's."""
    return str(error.message if isinstance(error, gr.Error) else f"{type(error).__name__}: {error}")


# An absolute path in a message: what the person sees is the file's own name, never the server's folders.
_PATH = re.compile(r"(?<![\w.])/(?:[^/\s'\"]+/)+(?=[^/\s'\"])")


def hide_paths(message: str) -> str:
    return _PATH.sub("", message)


@contextmanager
def readable_errors():
    """janus_ov's errors are written for users: show them (without server paths), keep the server going."""
    try:
        yield
    except JanusError as e:
        raise user_error(hide_paths(str(e))) from None


def conversation(history) -> list[dict]:
    """The Chatbot's value, as our UI writes it: user and assistant messages of text and uploaded files.
    The chat events take it unpreprocessed (preprocess=False) and check it here, because the value comes
    from the client: Gradio's own preprocessing builds a component for a "component" message, which
    copies any file it names (the app's source, another visitor's download) into the servable cache."""
    if not isinstance(history, list) or not all(
            isinstance(m, dict) and m.get("role") in ("user", "assistant") and isinstance(m.get("content"), list)
            for m in history):
        raise user_error("The conversation is not a list of user and assistant messages; press Clear.")
    for part in (part for message in history for part in message["content"]):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            continue
        path = (part.get("file") or {}).get("path") if kind == "file" else None
        if not _uploaded(path):
            raise user_error(f"The conversation holds a {kind or 'malformed'} message this app never writes "
                             "(only text and uploaded images); press Clear and start again.")
    return history


# Code spans and fenced blocks (an unclosed fence runs to the end, as markdown renders it while streaming).
_CODE = re.compile(r"(```.*?(?:```|\Z)|`[^`\n]*`)", re.S)


def shown(text: str) -> str:
    """Chat text as the Chatbot gets it: markdown whose HTML shows as typed. Gradio's sanitizer stops
    scripts but renders the rest (tags, forms, remote images), so a question or an answer containing
    `<b>` or `<img src=...>` would become markup. Code is left alone: markdown shows it verbatim."""
    parts = _CODE.split(text)
    return "".join(p if i % 2 else p.replace("&", "&amp;").replace("<", "&lt;") for i, p in enumerate(parts))


def typed(text: str) -> str:
    """The exact inverse of `shown`: the text the person typed or the model wrote."""
    parts = _CODE.split(text)
    return "".join(p if i % 2 else p.replace("&lt;", "<").replace("&amp;", "&") for i, p in enumerate(parts))


def _uploaded(path) -> bool:
    """Whether `path` is a file in Gradio's cache of uploads and results (what a client may name)."""
    return isinstance(path, str) and gr_utils.is_in_or_equal(path, gr_utils.get_upload_folder())


def _text_and_images(message: dict) -> tuple[str, list[str]]:
    """(text as typed, image paths) of one checked conversation message (see `conversation`)."""
    texts, images = [], []
    for part in message["content"]:
        if part["type"] == "text":
            texts.append(typed(part["text"]))
        else:
            images.append(part["file"]["path"])
    return "\n".join(t for t in texts if t), images


FAILED_TITLE = "Could not answer"  # an assistant message that reports an error, not a model answer


def _failed(message: dict) -> bool:
    return message.get("role") == "assistant" and (message.get("metadata") or {}).get("title") == FAILED_TITLE


DRAW = re.compile(r"^\s*/(?:imagine|draw)\b\s*(.*)$", re.S)  # a chat message that asks for a drawing


def drawing_prompt(text: str) -> str | None:
    """The prompt of a "/imagine ..." or "/draw ..." message; None for a question."""
    match = DRAW.match(text)
    return match.group(1).strip() if match else None


def to_janus_messages(history: list[dict]) -> list[dict]:
    """Chatbot history -> janus_ov messages; consecutive messages of one role become one turn. A question
    that could not be answered (and the message saying so) is left out: the model never saw it.

    Drawings: Janus's chat format carries images in user turns only, so an image the chat drew joins
    the next question's turn, before that question's own uploads, exactly as if the person had
    uploaded it with the question; the drawing request and the drawing's caption are left out (they are
    not a question and an answer the model gave)."""
    messages, drawn, after_request = [], [], False
    for i, message in enumerate(history):
        if message["role"] not in ("user", "assistant") or _failed(message):
            continue
        if message["role"] == "user" and any(_failed(m) for m in history[i + 1:i + 2]):
            continue
        text, images = _text_and_images(message)
        if message["role"] == "user":
            after_request = drawing_prompt(text) is not None
            if after_request:
                continue
            images, drawn = drawn + images, []
        elif after_request:  # the drawing: its images wait for the next question
            drawn += images
            continue
        if messages and messages[-1]["role"] == message["role"]:
            messages[-1]["content"] = "\n".join(t for t in (messages[-1]["content"], text) if t)
            messages[-1]["images"] += images
        else:
            messages.append({"role": message["role"], "content": text, "images": images})
    return messages


def refuse(message: str, outputs: int):
    """A UI handler's refusal: a toast, and every output left as it is. Raised as gr.Error instead,
    Gradio would lay an "Error" badge over each output (the conversation, the input box); the
    handler chained after it finds no run armed and does nothing."""
    gr.Warning(message)
    return (gr.skip(),) * outputs if outputs > 1 else gr.skip()


def _answering_box(**update) -> gr.MultimodalTextbox:
    """The chat input while an answer is written: closed for typing, its stop button in place of send."""
    return gr.MultimodalTextbox(interactive=False, submit_btn=False, stop_btn=True, **update)


def _split_last_user_turn(history: list[dict]) -> tuple[list[dict], list[dict]]:
    """(history before the last user turn, that turn and any answer after it)."""
    i = len(history)
    while i > 0 and history[i - 1]["role"] == "assistant":
        i -= 1
    while i > 0 and history[i - 1]["role"] == "user":
        i -= 1
    return history[:i], history[i:]


# ---------------------------------------------------------------------------------------------
# Event handlers


SESSIONS_KEPT = 10_000  # per-session notes of API clients, which never close a page: the oldest go


def _forget_oldest(notes: dict, done=lambda value: True) -> None:
    """Keep `notes` (oldest first) at SESSIONS_KEPT entries, dropping the oldest that are `done`."""
    for key in [k for k in list(notes)[:max(len(notes) - SESSIONS_KEPT, 0)] if done(notes[k])]:
        notes.pop(key, None)


class _Run:
    """One asked-for run of a session: its stop flag, and whether a request has taken it / it is over."""

    def __init__(self):
        self.stop, self.started, self.over = threading.Event(), False, False


class StopFlags:
    """One run at a time per browser session for one kind of work. The run's stop flag is armed when
    the run is asked for (so a Stop pressed while it still waits in the queue counts too); asking
    again while it is queued or going keeps that run, so Stop always reaches the run the person
    sees, and the extra request finds the run taken and does nothing."""

    def __init__(self):
        self.runs: dict[str, _Run] = {}
        self.lock = threading.Lock()

    def arm(self, request: gr.Request) -> bool:
        """Ask for a run; False if the session's last one is still queued or going (it is kept)."""
        with self.lock:
            run = self.runs.get(request.session_hash)
            if run is None or run.over:
                self.runs.pop(request.session_hash, None)  # re-inserted last: the dict stays oldest-first
                self.runs[request.session_hash] = _Run()
                _forget_oldest(self.runs, lambda r: r.over)
                return True
            return False

    def stop(self, request: gr.Request):
        if run := self.runs.get(request.session_hash):
            run.stop.set()

    @contextmanager
    def run(self, request: gr.Request):
        """The stop flag of the session's run, or None if another request of the session has taken it."""
        with self.lock:
            run = self.runs.get(request.session_hash)
            mine = run is not None and not run.started and not run.over
            if mine:
                run.started = True
        try:
            yield run.stop if mine else None
        finally:
            if mine:
                run.over = True

    def forget(self, session: str):
        with self.lock:
            run = self.runs.pop(session, None)
        if run:
            run.stop.set()


class Studio:
    """The handlers behind the UI and the API; holds the pipeline and the stop flags."""

    def __init__(self, pipe, args):
        self.pipe, self.args = pipe, args
        self.chat_stops, self.image_stops = StopFlags(), StopFlags()
        self.speed: dict[str, dict] = {}  # per browser session: its own last run of each kind, for its footer
        self.downloads = Path(tempfile.mkdtemp(prefix="janus-studio-"))  # see _downloads
        atexit.register(shutil.rmtree, self.downloads, True)

    def forget(self, request: gr.Request):
        """The page was closed: stop whatever still runs for it."""
        self.chat_stops.forget(request.session_hash)
        self.image_stops.forget(request.session_hash)
        self.speed.pop(request.session_hash, None)

    def footer(self, request: gr.Request = None) -> str:
        a = self.args
        model = "tiny random demo model" if a.tiny_demo else a.model
        line = f"Model **{model}** · weights **{a.weights}** · device **{a.device}**"
        speed = self.speed.get(request.session_hash, {}) if request is not None else {}
        if speed.get("chat"):
            line += f" · your last chat: {speed['chat']}"
        if speed.get("image"):
            line += f" · your last images: {speed['image']}"
        return line

    def _record(self, request: gr.Request | None, stats: dict):
        if request is not None and request.session_hash and summary(stats):
            self.speed.setdefault(request.session_hash, {})[stats["task"]] = summary(stats)
            _forget_oldest(self.speed)

    # -- chat
    def _answer(self, messages, temperature, top_p, max_new_tokens, seed, stop, request=None):
        """Stream the growing answer text."""
        done = False
        with readable_errors():
            stream = self.pipe.chat_stream(messages, max_new_tokens=_whole(max_new_tokens, "max_new_tokens"),
                                           temperature=temperature, top_p=top_p, seed=_whole(seed, "seed"),
                                           stop_event=stop)  # checks every input before it starts
            try:
                for _ in stream:
                    yield stream.text
                done = True
            finally:
                if not done:  # the client went away or cancelled: stop the model too
                    stop.set()
                    stream.close()
        self._record(request, stream.stats)

    def add_user_turn(self, message: dict, history: list, draw: bool, request: gr.Request):
        history = conversation(history)
        text = (message or {}).get("text", "").strip()
        files = [f if isinstance(f, str) else f["path"] for f in (message or {}).get("files", [])]
        if not text and not files:
            return refuse("Type a question or attach an image.", 2)
        if draw and drawing_prompt(text) is None:  # Draw mode: the message is a prompt, said as one
            text = f"/imagine {text}"
        if drawing_prompt(text) is not None and (files or not drawing_prompt(text)):
            return refuse("A drawing takes a text prompt only: describe the image after /imagine, without "
                          "attachments (to ask about an image, turn Draw off).", 2)
        refused = self._refused_uploads(files)  # checked now, before they enter the history
        if refused:
            gr.Warning(" ".join(refused.values()))
            # The message stays to be sent again, without what was refused (its thumbnail would only
            # be refused again): the text and the good images are kept.
            kept = [f for f in message["files"] if (f if isinstance(f, str) else f["path"]) not in refused]
            return gr.skip(), gr.MultimodalTextbox(value={"text": message.get("text", ""), "files": kept})
        if not self.chat_stops.arm(request):
            return refuse("An answer is still being written: wait for it, or press Stop.", 2)
        turn = {"role": "user", "content": [{"path": f} for f in files] + [shown(text)]}
        return history + [turn], _answering_box(value=None)

    def _refused_uploads(self, files: list) -> dict:
        """{path: why} of the uploads that are not usable images. The others are decoded once here:
        the answer reuses their pixels."""
        refused = {}
        for path in files:
            try:
                self.pipe.prepare_images([path])
            except JanusError as e:  # named as the user knows it, not by its server path
                refused[path] = hide_paths(str(e))
        return refused

    def bot_turn(self, history: list, temperature, top_p, max_new_tokens, seed, num_images, cfg_weight,
                 image_temperature, image_seed, randomize_image_seed, negative_prompt, request: gr.Request):
        """Outputs: chatbot, footer, message box. The box is enabled again however the turn ends
        (done, stopped while queued, or an error: then the question stays for Retry / Undo).
        A "/imagine ..." turn draws instead of answering (the image settings), see _draw."""
        enable = gr.MultimodalTextbox(interactive=True, submit_btn=True, stop_btn=False)
        with self.chat_stops.run(request) as stop:
            if stop is None:  # refused, or an answer of this session is still being written (it re-enables the box)
                yield gr.skip(), gr.skip(), gr.skip()  # a generator that yields nothing would clear the outputs
                return
            if stop.is_set() or not history:  # stopped while still queued
                yield gr.skip(), gr.skip(), enable
                return
            history = conversation(history)
            prompt = drawing_prompt(_text_and_images(history[-1])[0])
            answering = history + [{"role": "assistant", "content": ""}]
            try:
                if prompt is not None:
                    image_seed = random.randint(0, MAX_SEED) if randomize_image_seed else _whole(image_seed, "seed")
                    turns = self._draw(prompt, negative_prompt, image_seed, cfg_weight, image_temperature,
                                       num_images, stop, request)
                else:
                    turns = ({"role": "assistant", "content": shown(answer)} for answer in self._answer(
                        to_janus_messages(history), temperature, top_p, max_new_tokens, seed, stop, request))
                for turn in turns:
                    answering[-1] = turn
                    yield answering, gr.skip(), gr.skip()
            except Exception as error:
                # Said in a toast and in the conversation, where Retry and Undo are. Not raised: Gradio
                # would lay an error badge over the chat and its buttons.
                reason = _reason(error)
                gr.Warning(reason)
                failed = {"role": "assistant", "content": shown(reason), "metadata": {"title": FAILED_TITLE}}
                yield (answering if answering[-1]["content"] and prompt is None else history) + [failed], \
                    gr.skip(), enable
                return
            yield answering, self.footer(request), enable

    def _draw(self, prompt, negative_prompt, seed, cfg_weight, temperature, num_images, stop, request):
        """A drawing as the assistant's turn: how far it is and the forming image while it runs, then
        the images with their seed (to reproduce them in the Text-to-image tab)."""
        state = {"text": "Starting…"}

        def progress(value, desc="", unit=""):
            step, total = value if isinstance(value, tuple) else (0, 0)
            state["text"] = f"{desc}: {step} of {total} {unit}" if total else desc

        folder = self.downloads / uuid.uuid4().hex
        folder.mkdir(parents=True)
        preview = None
        for i, out in enumerate(self._images(prompt, negative_prompt, seed, cfg_weight, temperature, num_images, 384,
                                             stop, progress, request)):
            if isinstance(out, list):
                if not out:
                    yield {"role": "assistant", "content": "Drawing stopped."}
                    return
                caption = f"{len(out)} image{'s' if len(out) > 1 else ''} of “{shown(prompt)}” · seed {seed}"
                yield {"role": "assistant", "content": [{"path": str(p)} for p in out] + [caption]}
                return
            if out is not None:  # a new preview: a new file, so the browser shows it
                preview = folder / f"preview-{i}.png"
                out.save(preview)
            content = [{"path": str(preview)}] if preview else []
            yield {"role": "assistant", "content": content + [f"Drawing… {state['text']}"]}

    def retry(self, history: list, temperature, seed, request: gr.Request):
        """Answer the last question again: with a new seed when sampling (a greedy answer is the
        same every time, as the temperature slider says)."""
        before, turn = _split_last_user_turn(conversation(history))  # checked before a run is armed
        if not self.chat_stops.arm(request):
            return refuse("An answer is still being written: wait for it, or press Stop.", 3)
        if temperature and temperature > 0:
            seed = random.randint(0, MAX_SEED)
        return before + [m for m in turn if m["role"] == "user"], _answering_box(), seed

    @staticmethod
    def attach(capture: str | None, message: dict | None):
        """A webcam photo or a pasted image joins the files of the message being written."""
        message = message or {}
        if not capture:
            return gr.skip(), gr.skip()
        return {"text": message.get("text", ""), "files": list(message.get("files", [])) + [capture]}, None

    @staticmethod
    def example(event: gr.SelectData):
        """A chat example was clicked: it fills the input, to be sent as it is or edited."""
        value = event.value or {}
        files = [f if isinstance(f, str) else f.get("path") for f in value.get("files", [])]
        return {"text": value.get("text", ""), "files": files}

    @staticmethod
    def draw_this(history: list):
        """The last answer (or, before any, the last question) as the prompt of a drawing, to send or edit."""
        messages = [m for m in to_janus_messages(conversation(history)) if m["content"].strip()]
        if not messages:
            return refuse("Nothing to draw yet: ask something first, or type a prompt with Draw on.", 2)
        return {"text": messages[-1]["content"].strip()[:1000], "files": []}, True

    def undo(self, history: list):
        before, turn = _split_last_user_turn(conversation(history))
        texts, files = [], []
        for message in turn:
            if message["role"] == "user":
                text, images = _text_and_images(message)
                texts.append(text)
                files += images
        return before, {"text": "\n".join(t for t in texts if t), "files": files}

    def chat_api(self, message: str, images: list | None = None, history: list | None = None,
                 temperature: float = 0.0, top_p: float = 0.95, max_new_tokens: int = 512, seed: int = 42,
                 request: gr.Request = None):
        """Answer `message` about `images` (optional) after earlier text turns in `history`
        ([{"role": "user"|"assistant", "content": str}, ...]); streams the growing answer."""
        history = history or []
        if not isinstance(history, list) or not all(
                isinstance(m, dict) and m.get("role") in ("user", "assistant") and isinstance(m.get("content"), str)
                for m in history):
            raise user_error('history must be a list of {"role": "user"|"assistant", "content": "..."}.')
        paths = list(images or [])  # gr.File hands over local file paths
        if not (message or "").strip() and not paths:
            raise user_error("message is empty: type a question or attach an image.")
        messages = [{"role": m["role"], "content": m["content"], "images": []} for m in history]
        messages.append({"role": "user", "content": (message or "").strip(), "images": paths})
        yield from self._answer(messages, temperature, top_p, max_new_tokens, seed, threading.Event(), request)

    # -- text to image
    def _images(self, prompt, negative_prompt, seed, cfg_weight, temperature, num_images, size, stop, progress,
                request=None):
        """Yield after every step (a preview of the forming image, or None), then the finished list of
        images. Yielding each step is what lets Gradio close this generator within one step when the
        request is cancelled or its client goes away (it can only close a generator between yields);
        closing it closes the pipeline's stream, which frees the run's rows at the scheduler's next step."""
        num_images = _whole(num_images, "num_images")
        if not 1 <= num_images <= self.args.max_images:  # this server's limit, stricter than janus_ov's
            raise user_error(f"num_images must be between 1 and {self.args.max_images}, got {num_images}.")
        sizes = [s for _, s in UPSCALE_CHOICES]
        if size not in sizes:
            raise user_error(f"size must be one of {sizes}, got {size!r}.")
        progress(0, desc="Starting")
        with readable_errors():
            events = self.pipe.generate_images_stream(
                prompt, negative_prompt=negative_prompt or None, num_images=num_images, cfg_weight=cfg_weight,
                temperature=temperature, seed=seed, stop_event=stop)  # checks every input before it starts
            try:  # a cancelled or abandoned request closes this generator, which closes the stream
                for event in events:
                    if isinstance(event, ImageResult):
                        self._record(request, event.stats)
                        yield self._downloads(event, size)
                    elif event.stage == "decoding":
                        progress((event.step, event.total), desc=f"Decoding image {event.step} of {event.total}",
                                 unit="images")
                        yield None
                    else:
                        progress((event.step, event.total), desc="Generating image tokens", unit="tokens")
                        yield event.preview
            finally:
                events.close()

    def _downloads(self, result: ImageResult, size: int) -> list[Path]:
        """The result's images at `size` as PNG files named from prompt and seed, carrying their
        settings (what a download then gets). Each run writes its own folder, so two visitors with
        the same prompt and seed never share files; folders older than DOWNLOADS_KEPT_S go, by then
        Gradio has long copied them into its own cache."""
        for old in self.downloads.iterdir():
            if time.time() - old.stat().st_mtime > DOWNLOADS_KEPT_S:
                shutil.rmtree(old, ignore_errors=True)
        return result.save(self.downloads / uuid.uuid4().hex, upscale(result.images, size))

    def arm_images(self, request: gr.Request):
        """Generate was pressed: arm the stop flag and disable Generate until the run is over; refused
        while this session's run is queued or going (Enter in the prompt box), so none piles up."""
        if not self.image_stops.arm(request):
            return refuse("An image run is already going: wait for it, or press Stop.", 1)
        return gr.Button(interactive=False)

    def generate_ui(self, prompt, negative_prompt, seed, randomize_seed, cfg_weight, temperature, num_images, size,
                    request: gr.Request, progress=gr.Progress()):
        """Outputs: preview, gallery, seed (the one used, so a result can be reproduced), footer, Generate.
        Earlier results stay until new ones replace them; Generate is enabled again however the run ends."""
        enable = gr.Button(interactive=True)
        with self.image_stops.run(request) as stop:
            if stop is None:  # refused by arm_images (a run is going), or a replayed request
                yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()  # yielding nothing would clear them
                return
            if stop.is_set():  # stopped while still queued
                yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), enable
                return
            images = []
            try:
                seed = random.randint(0, MAX_SEED) if randomize_seed else _whole(seed, "seed")
                for out in self._images(prompt, negative_prompt, seed, cfg_weight, temperature, num_images, size,
                                        stop, progress, request):
                    if isinstance(out, list):
                        images = out
                    elif out is not None:
                        yield out, gr.skip(), seed, gr.skip(), gr.skip()
                    else:  # a step: nothing new to show, but a point where a cancel can close this run
                        yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            except Exception as error:  # a toast; raised, Gradio would badge every output (the seed field too)
                gr.Warning(_reason(error))
                yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), enable
                return
            if not images:
                gr.Info("Generation stopped; the earlier results are kept.")
                yield gr.skip(), gr.skip(), seed, gr.skip(), enable
            else:
                yield images[0], images, seed, self.footer(request), enable

    def generate_api(self, prompt: str, negative_prompt: str | None = None, seed: int = 0, randomize_seed: bool = True,
                     cfg_weight: float = 5.0, temperature: float = 1.0, num_images: int = 2, size: int = 384,
                     request: gr.Request = None, progress=gr.Progress()):
        """Generate `num_images` images for `prompt`; returns (gallery, seed used). A generator only so
        that a cancel or a dropped client stops the run within one step (see _images)."""
        seed = random.randint(0, MAX_SEED) if randomize_seed else _whole(seed, "seed")
        for out in self._images(prompt, negative_prompt, seed, cfg_weight, temperature, num_images, size,
                                threading.Event(), progress, request):
            if isinstance(out, list):
                yield out, seed
                return
            yield gr.skip(), gr.skip()


# ---------------------------------------------------------------------------------------------
# Layout


def build_ui(studio: Studio) -> gr.Blocks:
    args = studio.args
    name = "tiny random demo model" if args.tiny_demo else args.model
    # Gradio's copies of uploads and results: swept every 30 minutes of anything older than an hour.
    with gr.Blocks(title="Janus Studio (OpenVINO)", fill_width=True, delete_cache=(1800, 3600)) as demo:
        gr.Markdown(f"# Janus Studio · OpenVINO\nChat about images and create images with **{name}**, "
                    "running on your CPU with OpenVINO.")
        if args.tiny_demo:
            gr.Markdown(TINY_NOTICE, elem_id="notice")
        with gr.Tabs() as tabs:
            with gr.Tab("Chat", id="chat"):
                chat = chat_tab(studio)
            with gr.Tab("Text to image", id="images"):
                images = images_tab(studio)
        footer = gr.Markdown(studio.footer(), elem_id="footer")
        wire_chat(studio, chat, footer)
        wire_images(studio, images, footer)
        wire_send_to_chat(images, chat, tabs)
        demo.load(studio.footer, None, footer, api_visibility="private", queue=False)
        demo.unload(studio.forget)
    return demo


def chat_tab(studio: Studio) -> dict:
    ui = {}
    # The examples sit in the empty conversation, where a newcomer looks first.
    ui["chatbot"] = gr.Chatbot(label="Conversation", height=480, elem_id="chatbot", buttons=["copy", "copy_all"],
                              placeholder="Attach one or more images (📎, or paste one) and ask about them, or just chat.",
                              examples=CHAT_EXAMPLES)
    ui["message"] = gr.MultimodalTextbox(placeholder="Ask about the attached images… or /imagine a picture",
                                        file_count="multiple", file_types=["image"], show_label=False,
                                        elem_id="chat-input", sources=["upload"])
    with gr.Row(elem_id="chat-draw-row"):
        ui["draw"] = gr.Checkbox(False, label="Draw: my message is an image prompt", elem_id="chat-draw",
                                 info="Or start a message with /imagine (or /draw). Ask about a drawing next: "
                                 "the model sees it.")
        ui["draw_this"] = gr.Button("Draw the last answer", size="sm", elem_id="chat-draw-this")
    with gr.Accordion("Camera or clipboard", open=False, elem_id="chat-capture-panel"):
        ui["capture"] = gr.Image(sources=["webcam", "clipboard"], type="filepath", elem_id="chat-capture",
                                 label="Take a photo or paste an image: it is attached to your message")
    with gr.Accordion("Parameters", open=False):
        with gr.Row():
            ui["temperature"] = gr.Slider(0.0, 2.0, value=0.0, step=0.05, elem_id="chat-temperature",
                                          label="Temperature", info=CHAT_TEMPERATURE_INFO)
            ui["top_p"] = gr.Slider(0.05, 1.0, value=0.95, step=0.05, label="Top-p", info=TOP_P_INFO)
            # The prompt needs room too: a top equal to the context window would always fail.
            longest = min(2048, studio.pipe.info.max_position_embeddings // 2)
            ui["max_new_tokens"] = gr.Slider(1, longest, value=min(512, longest), step=1, label="Max new tokens",
                                            elem_id="chat-max-new-tokens")
            ui["seed"] = gr.Number(value=42, precision=0, minimum=0, maximum=MAX_SEED, label="Seed",
                                   elem_id="chat-seed")
        gr.Markdown("**Drawing** (/imagine)")
        with gr.Row():
            max_images = studio.args.max_images
            ui["num_images"] = gr.Slider(1, max_images, value=1, step=1, label="Number of images",
                                        elem_id="chat-num-images")
            ui["cfg_weight"] = gr.Slider(1.0, 10.0, value=5.0, step=0.5, label="CFG weight", info=CFG_INFO)
            ui["image_temperature"] = gr.Slider(0.05, 2.0, value=1.0, step=0.05, label="Image temperature",
                                                info=IMAGE_TEMPERATURE_INFO)
            with gr.Column():
                ui["image_seed"] = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Image seed")
                ui["randomize_image_seed"] = gr.Checkbox(True, label="Randomize image seed")
        ui["negative_prompt"] = gr.Textbox(label="Negative prompt", lines=1, placeholder="What to avoid (optional)")
    # API-only inputs/outputs: plain types for gradio_client (see README).
    with gr.Group(visible=False):
        ui["api_message"] = gr.Textbox(label="message")
        ui["api_images"] = gr.File(label="images", file_count="multiple", file_types=["image"])
        ui["api_history"] = gr.JSON(label="history")
        ui["api_answer"] = gr.Textbox(label="answer")
        ui["api_trigger"] = gr.Button("chat")
    return ui


def wire_chat(studio: Studio, ui: dict, footer):
    params = [ui["temperature"], ui["top_p"], ui["max_new_tokens"], ui["seed"]]
    drawing = [ui["num_images"], ui["cfg_weight"], ui["image_temperature"], ui["image_seed"],
               ui["randomize_image_seed"], ui["negative_prompt"]]
    private = {"api_visibility": "private"}
    raw = {**private, "preprocess": False}  # for every event that takes the conversation: see `conversation`

    def answer(event):
        return event.success(studio.bot_turn, [ui["chatbot"]] + params + drawing, [ui["chatbot"], footer, ui["message"]],
                             concurrency_limit=CHAT_CONCURRENCY, concurrency_id="chat", **raw)

    # Queued, so that a refused upload's message reaches the page (an unqueued gr.Error is a bare
    # HTTP 500), and one at a time: decoding a large upload takes memory, several at once more.
    answer(ui["message"].submit(studio.add_user_turn, [ui["message"], ui["chatbot"], ui["draw"]],
                                [ui["chatbot"], ui["message"]],
                                concurrency_limit=1, concurrency_id="uploads", **raw))
    answer(ui["chatbot"].retry(studio.retry, [ui["chatbot"], ui["temperature"], ui["seed"]],
                               [ui["chatbot"], ui["message"], ui["seed"]], concurrency_limit=None,
                               concurrency_id="arm", **raw))
    ui["chatbot"].undo(studio.undo, ui["chatbot"], [ui["chatbot"], ui["message"]], queue=False, **raw)
    ui["chatbot"].clear(lambda: [], None, ui["chatbot"], queue=False, **private)
    ui["message"].stop(studio.chat_stops.stop, None, None, queue=False, **private)
    ui["capture"].input(studio.attach, [ui["capture"], ui["message"]], [ui["message"], ui["capture"]], queue=False,
                        **private)
    ui["chatbot"].example_select(studio.example, None, ui["message"], queue=False, **private)
    ui["draw_this"].click(studio.draw_this, ui["chatbot"], [ui["message"], ui["draw"]], concurrency_limit=None,
                          concurrency_id="arm", **raw)
    ui["api_trigger"].click(studio.chat_api, [ui["api_message"], ui["api_images"], ui["api_history"]] + params,
                           ui["api_answer"], api_name="chat", concurrency_limit=CHAT_CONCURRENCY,
                           concurrency_id="chat")


def images_tab(studio: Studio) -> dict:
    ui = {}
    max_images = studio.args.max_images
    with gr.Row(elem_id="t2i-layout"):  # a grid, see CSS
        with gr.Column(elem_id="t2i-controls"):
            ui["prompt"] = gr.Textbox(label="Prompt (Enter generates)", lines=1, max_lines=4, elem_id="t2i-prompt",
                                      placeholder="Describe the image you want…")
            ui["negative_prompt"] = gr.Textbox(label="Negative prompt", lines=1,
                                              placeholder="What to avoid (optional)")
            with gr.Row(elem_id="t2i-buttons"):
                ui["generate"] = gr.Button("Generate", variant="primary", elem_id="t2i-generate")
                ui["stop"] = gr.Button("Stop", variant="stop", elem_id="t2i-stop")
            gr.Markdown(run_time_note(studio), elem_id="t2i-run-time")
        with gr.Column(elem_id="t2i-results"):
            ui["preview"] = gr.Image(label="Preview (forming image)", type="pil", height=256, interactive=False,
                                    elem_id="t2i-preview", buttons=[])
            ui["gallery"] = gr.Gallery(label="Results", columns=2, format="png", elem_id="t2i-gallery",
                                      buttons=["download", "download_all", "fullscreen"], interactive=False)
            ui["send"] = gr.Button("Send to chat (click an image first)", size="sm", elem_id="t2i-send",
                                   interactive=False)
            ui["selected"] = gr.State(None)  # the gallery image last clicked
        with gr.Column(elem_id="t2i-settings"):
            gr.Examples([[p] for p in PROMPT_EXAMPLES], inputs=[ui["prompt"]], label="Prompt examples")
            with gr.Accordion("Parameters", open=True):
                with gr.Row():
                    ui["seed"] = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed")
                    ui["randomize_seed"] = gr.Checkbox(value=True, label="Randomize seed")
                ui["cfg_weight"] = gr.Slider(1.0, 10.0, value=5.0, step=0.5, label="CFG weight", info=CFG_INFO)
                ui["temperature"] = gr.Slider(0.05, 2.0, value=1.0, step=0.05, label="Temperature",
                                              info=IMAGE_TEMPERATURE_INFO)
                ui["num_images"] = gr.Slider(1, max_images, value=min(2, max_images), step=1,
                                            label="Number of images", elem_id="t2i-num-images")
                ui["size"] = gr.Radio(UPSCALE_CHOICES, value=384, label="Output size (LANCZOS upscale)")
    ui["api_trigger"] = gr.Button("generate_images", visible=False)
    return ui


def run_time_note(studio: Studio) -> str:
    """How long a person will wait, before they press Generate (figures: benchmarks/results/)."""
    if studio.args.tiny_demo:
        return "The tiny demo model makes an image in a few seconds."
    big = "7b" in studio.args.model.lower()
    return ("An image is 576 tokens, made one by one: on a 2-core CPU about "
            + ("2–2½ minutes" if big else "1 minute") + " for one image. Several are made together, "
            "so 4 images take far less than 4 times as long. The live preview shows the rows made so far.")


def wire_images(studio: Studio, ui: dict, footer):
    inputs = [ui["prompt"], ui["negative_prompt"], ui["seed"], ui["randomize_seed"], ui["cfg_weight"], ui["temperature"],
              ui["num_images"], ui["size"]]
    # Queued (its own group, never waiting behind a run) so that a refusal reaches the page as a message.
    start = gr.on([ui["generate"].click, ui["prompt"].submit], studio.arm_images, None, ui["generate"],
                  concurrency_limit=None, concurrency_id="arm", api_visibility="private", js=SHOW_RESULTS_JS)
    # One progress bar, on the gallery the results will fill: the preview panel stays visible as the image forms.
    start.success(studio.generate_ui, inputs, [ui["preview"], ui["gallery"], ui["seed"], footer, ui["generate"]],
                  concurrency_limit=IMAGE_CONCURRENCY, concurrency_id="images", api_visibility="private",
                  show_progress_on=ui["gallery"])
    ui["stop"].click(studio.image_stops.stop, None, None, queue=False, api_visibility="private")
    ui["api_trigger"].click(studio.generate_api, inputs, [ui["gallery"], ui["seed"]], api_name="generate_images",
                           concurrency_limit=IMAGE_CONCURRENCY, concurrency_id="images")


def wire_send_to_chat(images: dict, chat: dict, tabs):
    """A gallery image clicked, then "Send to chat": the Chat tab opens with it attached, to ask about."""
    def select(event: gr.SelectData):
        image = (event.value or {}).get("image") or {}
        return image.get("path"), gr.Button(interactive=bool(image.get("path")))

    def send(path):
        if not _uploaded(path):  # the clicked value comes from the client: only a gallery file passes
            return refuse("Click an image in the gallery first.", 3)
        return {"text": "", "files": [path]}, gr.Checkbox(False), gr.Tabs(selected="chat")

    images["gallery"].select(select, None, [images["selected"], images["send"]], queue=False,
                             api_visibility="private")
    images["send"].click(send, images["selected"], [chat["message"], chat["draw"], tabs], concurrency_limit=None,
                         concurrency_id="arm", api_visibility="private")


# ---------------------------------------------------------------------------------------------


def openai_api(studio: Studio):
    """The OpenAI-compatible API on the UI's port, over the same pipeline (so its requests batch with
    the UI's); image_url may name the UI's uploads."""
    from janus_ov.openai_api import create_api

    a = studio.args
    return create_api(studio.pipe, studio.pipe.source, api_key=a.api_key, allow_image_urls=a.allow_image_urls,
                      max_images=a.max_images, upload_folder=Path(gr_utils.get_upload_folder()))


def main(argv=None) -> int:
    limit_malloc_arenas()  # first: before the loading, serving and OpenVINO threads start
    args = parse_args(argv)
    try:
        pipe = load_pipeline(args)
    except JanusError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    # Gradio keeps uploads and results by content hash in one folder, and deletes a server's files when it
    # stops (delete_cache): two servers sharing /tmp/gradio would delete each other's. One folder per port.
    os.environ.setdefault("GRADIO_TEMP_DIR", str(Path(tempfile.gettempdir()) / "gradio" / f"janus-studio-{args.port}"))
    studio = Studio(pipe, args)
    demo = build_ui(studio)
    demo.queue(max_size=args.queue_size, default_concurrency_limit=1)
    started = time.strftime("%H:%M:%S")
    print(f"[{started}] Model ready; starting the web server.", flush=True)
    auth = LoginGuard(*args.auth) if args.auth else None
    # A stop request (docker, a Space, kill) ends the server like Ctrl+C: Gradio closes it and
    # the atexit clean-ups run (a bare SIGTERM skips them and leaves the downloads folder behind).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    demo.launch(server_name=args.server_name, server_port=args.port, share=args.share, auth=auth,
                max_file_size=args.max_file_size, show_error=True, css=CSS, js=FOCUS_JS, theme=gr.themes.Soft(),
                app_kwargs={"middleware": [Middleware(Guard, api=openai_api(studio), api_key=bool(args.api_key))]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
