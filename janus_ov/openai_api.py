"""OpenAI-compatible HTTP API over one JanusPipeline: understanding and drawing from one endpoint.

    GET  /v1/models               the loaded model
    POST /v1/chat/completions     text and image_url parts, multi-turn, stream (SSE) or not
    POST /v1/images/generations   prompt -> n images (b64_json or a url the server keeps a while)
    GET  /v1/files/{name}         such a kept image

Requests go through the pipeline's scheduler like the UI's, so API and UI requests batch together.
Errors have OpenAI's shape, {"error": {"message", "type", "param", "code"}}, and status: 400 bad
input (the pipeline's own messages), 401 no or wrong API key, 404 unknown model or route, 503 when
the scheduler's queue is full. The server never fetches an image URL unless it was started with
allow_image_urls (and then with a size and a time limit).

`create_api(pipe, ...)` returns the FastAPI app; app.py serves it on the Gradio port (janus_ov.web
hands /v1 to it), `python -m janus_ov serve` on its own.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import hmac
import io
import json
import re
import secrets
import shutil
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.authentication import AuthenticationBackend, AuthenticationError
from starlette.exceptions import HTTPException
from starlette.middleware.authentication import AuthenticationMiddleware

from .errors import JanusError, ServerBusyError
from .images import upscale

MAX_IMAGE_BYTES = 20 * 2**20  # a data: URL's or fetched image's size, as the UI's upload limit
FETCH_TIMEOUT_S = 10.0
IMAGE_SIZES = {"384x384": 384, "768x768": 768, "1024x1024": 1024}  # native, then LANCZOS upscales
KEEP_FILES_S = 3600  # how long a response_format="url" image stays fetchable
DEFAULT_MAX_TOKENS = 512


class APIError(Exception):
    """An error for the client, in OpenAI's shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        headers = {"Retry-After": "5"} if self.status == 503 else None
        return JSONResponse(body, status_code=self.status, headers=headers)


class _KeyCheck(AuthenticationBackend):
    def __init__(self, api_key: str):
        self.expected = f"Bearer {api_key}".encode()

    async def authenticate(self, conn):
        if not hmac.compare_digest(conn.headers.get("authorization", "").encode(), self.expected):
            raise AuthenticationError("Missing or wrong API key: send the header 'Authorization: Bearer <key>'.")
        return None


def _api_error(error: JanusError) -> APIError:
    if isinstance(error, ServerBusyError):
        return APIError(503, str(error), "server_error", code="server_busy")
    return APIError(400, str(error))


# ---------------------------------------------------------------------------------------- requests


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")  # the many optional OpenAI fields we do not use are accepted


class ChatRequest(_Body):
    model: str | None = None
    messages: list
    stream: bool = False
    stream_options: dict | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=1)


class ImageRequest(_Body):
    model: str | None = None
    prompt: str
    n: int = Field(1, ge=1)
    size: str = "384x384"
    response_format: str = "b64_json"
    negative_prompt: str | None = None  # extensions: the text-to-image knobs the UI has
    cfg_weight: float = 5.0
    temperature: float = 1.0
    seed: int | None = Field(None, ge=0)


# ---------------------------------------------------------------------------------------- the app


def create_api(pipe, model_id: str, api_key: str | None = None, allow_image_urls: bool = False,
               max_images: int = 4, files_dir: Path | None = None, upload_folder: Path | None = None) -> FastAPI:
    """The API app. `model_id`: the name /v1/models lists and requests must use; `upload_folder`: where
    the web app's uploads live (image_url may name those files); `files_dir`: where url results are kept."""
    import tempfile

    api = FastAPI(title="Janus Studio OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None)
    if files_dir is None:  # a folder of our own, gone when the process ends
        files = Path(tempfile.mkdtemp(prefix="janus-api-files-"))
        atexit.register(shutil.rmtree, files, True)
    else:
        files = Path(files_dir)
        files.mkdir(parents=True, exist_ok=True)
    images = _ImageSources(allow_image_urls, upload_folder, files)

    if api_key is not None:
        # A plain ASGI middleware: @api.middleware("http") (BaseHTTPMiddleware) would hide a client's
        # hang-up from request.is_disconnected(), so abandoned image requests would run to the end.
        api.add_middleware(AuthenticationMiddleware, backend=_KeyCheck(api_key),
                           on_error=lambda conn, error: APIError(401, str(error), code="invalid_api_key").response())

    @api.exception_handler(APIError)
    async def api_error(request, error: APIError):
        return error.response()

    @api.exception_handler(RequestValidationError)
    async def bad_body(request, error: RequestValidationError):
        return _validation_error(error.errors()).response()

    @api.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):
        kind = "not_found" if error.status_code == 404 else None
        return APIError(error.status_code, f"{request.method} {request.url.path}: {error.detail}",
                        code=kind).response()

    def check_model(name: str | None):
        if name is not None and name != model_id:
            raise APIError(404, f"The model {name!r} does not exist here; this server serves {model_id!r}.",
                           param="model", code="model_not_found")

    @api.get("/v1/models")
    def models():
        return {"object": "list", "data": [_model_card(model_id)]}

    @api.get("/v1/models/{name:path}")
    def model(name: str):
        check_model(name)
        return _model_card(model_id)

    @api.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = _parse(ChatRequest, await _json(request))
        check_model(body.model)
        system, messages = await anyio.to_thread.run_sync(_conversation, body.messages, images)
        max_tokens = body.max_completion_tokens or body.max_tokens or DEFAULT_MAX_TOKENS
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stops) > 4 or not all(stops):
            raise APIError(400, "stop must be a string or a list of at most 4 non-empty strings.", param="stop")
        stop_event = threading.Event()
        try:  # in a worker thread: checking the input decodes its images
            stream = await anyio.to_thread.run_sync(lambda: pipe.chat_stream(
                messages, max_new_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, seed=body.seed,
                stop_event=stop_event, system_prompt=system))
        except JanusError as e:
            raise _api_error(e) from None
        completion = _Completion(model_id, stream, max_tokens, stops, stop_event)
        if body.stream:
            usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(completion.events(usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await completion.whole()

    @api.post("/v1/images/generations")
    async def image_generations(request: Request):
        body = _parse(ImageRequest, await _json(request))
        check_model(body.model)
        if body.size not in IMAGE_SIZES:
            raise APIError(400, f"size must be one of {', '.join(IMAGE_SIZES)}, got {body.size!r}.", param="size")
        if body.response_format not in ("b64_json", "url"):
            raise APIError(400, f"response_format must be 'b64_json' or 'url', got {body.response_format!r}.",
                           param="response_format")
        if body.n > max_images:
            raise APIError(400, f"n must be at most {max_images} on this server, got {body.n}.", param="n")
        try:
            events = await anyio.to_thread.run_sync(lambda: pipe.generate_images_stream(
                body.prompt, body.negative_prompt, body.n, body.cfg_weight, body.temperature, body.seed,
                preview_every=0))
        except JanusError as e:
            raise _api_error(e) from None
        result = await _last(events, request)
        if result is None:  # the client went away: nobody to answer
            return JSONResponse({}, status_code=499)
        pictures = upscale(result.images, IMAGE_SIZES[body.size])
        if body.response_format == "b64_json":
            data = [{"b64_json": _png_b64(p), "revised_prompt": body.prompt} for p in pictures]
        else:
            base = str(request.base_url).rstrip("/")
            data = [{"url": f"{base}/v1/files/{_keep(files, p)}", "revised_prompt": body.prompt} for p in pictures]
        return {"created": int(time.time()), "data": data}

    @api.get("/v1/files/{name}")
    def kept_file(name: str):
        path = files / name
        if not re.fullmatch(r"[0-9a-f]{32}\.png", name) or not path.is_file():
            raise APIError(404, f"No file {name!r}: kept images are deleted after {KEEP_FILES_S // 60} minutes.",
                           code="not_found")
        return FileResponse(path, media_type="image/png")

    return api


def _model_card(model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "deepseek-ai"}


async def _json(request: Request):
    try:
        return json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise APIError(400, "The request body is not valid JSON.") from None


def _parse(model: type[BaseModel], body):
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.")
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise _validation_error(e.errors()) from None


def _validation_error(errors) -> APIError:
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return APIError(400, f"{where or 'body'}: {first.get('msg', 'invalid')}", param=where or None)


# ---------------------------------------------------------------------------------------- chat


def _conversation(messages: list, images: _ImageSources) -> tuple[str | None, list[dict]]:
    """OpenAI messages -> (system prompt or None, janus_ov messages). System (and developer) messages
    make the system prompt; consecutive user messages become one turn, as the UI's do."""
    system, out = [], []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise APIError(400, f"{where} must be an object with 'role' and 'content'.", param=where)
        role = message.get("role")
        text, pictures = _content(message.get("content"), where, images, allow_images=role == "user")
        if role in ("system", "developer"):
            system.append(text)
        elif role in ("user", "assistant"):
            if out and out[-1]["role"] == role:
                out[-1]["content"] = "\n".join(t for t in (out[-1]["content"], text) if t)
                out[-1]["images"] += pictures
            else:
                out.append({"role": role, "content": text, "images": pictures})
        else:
            raise APIError(400, f"{where}.role must be 'system', 'user' or 'assistant', got {role!r}.",
                           param=f"{where}.role")
    return ("\n\n".join(system) if system else None), out


def _content(content, where: str, images: _ImageSources, allow_images: bool) -> tuple[str, list]:
    if content is None or isinstance(content, str):
        return content or "", []
    if not isinstance(content, list):
        raise APIError(400, f"{where}.content must be a string or a list of parts.", param=f"{where}.content")
    texts, pictures = [], []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url" and allow_images:
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str):
                raise APIError(400, f"{at}.image_url.url must be a string.", param=f"{at}.image_url")
            pictures.append(images.load(url, f"{at}.image_url"))
        elif kind == "image_url":
            raise APIError(400, f"{at}: only user messages may carry images.", param=at)
        else:
            raise APIError(400, f"{at} must be a text or image_url part, got {kind!r}.", param=at)
    return "\n".join(texts), pictures


class _ImageSources:
    """image_url -> image bytes or a local path: data: URLs; the web app's own uploads and this API's
    kept files (read from disk, nothing is fetched); other URLs only when allowed, size- and time-limited."""

    def __init__(self, allow_urls: bool, upload_folder: Path | None, files: Path):
        self.allow_urls, self.files = allow_urls, files.resolve()
        self.upload_folder = Path(upload_folder).resolve() if upload_folder else None

    def load(self, url: str, param: str):
        if url.startswith("data:"):
            return self._data_url(url, param)
        local = self._own_file(url)
        if local is not None:
            return str(local)
        if urlparse(url).scheme in ("http", "https") and self.allow_urls:
            return self._fetch(url, param)
        raise APIError(400, "image_url must be a data: URL (data:image/png;base64,...) or a file of this server; "
                       "this server does not fetch other URLs (start it with --allow-image-urls to allow that).",
                       param=param)

    def _data_url(self, url: str, param: str) -> bytes:
        head, _, payload = url.partition(",")
        if not head.endswith(";base64") or not head[5:].startswith("image/"):
            raise APIError(400, "a data: URL must be base64 image data: data:image/<type>;base64,...", param=param)
        if len(payload) > MAX_IMAGE_BYTES * 4 // 3 + 4:
            raise APIError(400, f"the image is over {MAX_IMAGE_BYTES // 2**20} MB.", param=param)
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise APIError(400, "the data: URL's base64 payload is not valid base64.", param=param) from None

    def _own_file(self, url: str) -> Path | None:
        path = unquote(urlparse(url).path)
        if (m := re.search(r"/gradio_api/file=(/.+)$", path)) and self.upload_folder is not None:
            local, root = Path(m.group(1)).resolve(), self.upload_folder
        elif m := re.search(r"/v1/files/([0-9a-f]{32}\.png)$", path):
            local, root = (self.files / m.group(1)).resolve(), self.files
        else:
            return None
        return local if local.is_relative_to(root) and local.is_file() else None

    def _fetch(self, url: str, param: str) -> bytes:
        import httpx

        data, deadline = bytearray(), time.monotonic() + FETCH_TIMEOUT_S  # in all: a slow drip is cut off too
        try:
            with httpx.stream("GET", url, timeout=FETCH_TIMEOUT_S, follow_redirects=True) as answer:
                answer.raise_for_status()
                for chunk in answer.iter_bytes():
                    data += chunk
                    if len(data) > MAX_IMAGE_BYTES:
                        raise APIError(400, f"the image at {url} is over {MAX_IMAGE_BYTES // 2**20} MB.", param=param)
                    if time.monotonic() > deadline:
                        raise APIError(400, f"fetching {url} took over {FETCH_TIMEOUT_S:.0f} s.", param=param)
        except httpx.HTTPError as e:
            raise APIError(400, f"could not fetch {url}: {e}", param=param) from None
        return bytes(data)


class _Completion:
    """One chat completion: the pipeline's stream with OpenAI's stop strings, finish reason and usage."""

    def __init__(self, model_id: str, stream, max_tokens: int, stops: list[str], stop_event: threading.Event):
        self.model_id, self.stream, self.max_tokens, self.stops, self.stop_event = (model_id, stream, max_tokens,
                                                                                    stops, stop_event)
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        self.text, self.sent, self.stopped, self.done = "", 0, False, False

    def _advance(self) -> bool:
        """Take the next piece (blocking); False at the end. Text that could begin a stop string is held back."""
        try:
            self.text += next(self.stream)
        except StopIteration:
            self.done = True
            return False
        for stop in self.stops:
            if (at := self.text.find(stop)) >= 0:
                self.text, self.stopped = self.text[:at], True
        if self.stopped:
            self.close()
            return False
        return True

    def _ready(self, final: bool) -> str:
        """The new text that is safe to send: all of it at the end, else what no stop string can still claim."""
        end = len(self.text)
        if not final:
            for stop in self.stops:
                for k in range(min(len(stop) - 1, end), 0, -1):
                    if self.text.endswith(stop[:k]):
                        end = min(end, len(self.text) - k)
                        break
        piece, self.sent = self.text[self.sent:max(end, self.sent)], max(end, self.sent)
        return piece

    def close(self):
        self.stop_event.set()
        self.stream.close()  # frees the request's rows at the scheduler's next step

    def _finish_reason(self) -> str:
        return "length" if not self.stopped and self.stream.stats.get("new_tokens", 0) >= self.max_tokens else "stop"

    def _usage(self) -> dict:
        stats = self.stream.stats
        prompt, completion = int(stats.get("prompt_tokens", 0)), int(stats.get("new_tokens", 0))
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def _steps(self):
        """Advance in a worker thread (the pipeline blocks); close the stream however the caller stops."""
        try:
            while await anyio.to_thread.run_sync(self._advance):
                yield
        except JanusError as e:
            raise _api_error(e) from None
        finally:
            if not (self.done or self.stopped):  # the client went away, or an error: stop the model too
                self.close()

    async def whole(self) -> dict:
        async for _ in self._steps():
            pass
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": self.text},
                             "logprobs": None, "finish_reason": self._finish_reason()}],
                "usage": self._usage()}

    def _chunk(self, delta: dict, finish_reason=None, usage=None) -> str:
        chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model_id,
                 "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
        if usage is not None:
            chunk["choices"], chunk["usage"] = [], usage
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    async def events(self, include_usage: bool):
        yield self._chunk({"role": "assistant", "content": ""})
        try:
            async for _ in self._steps():
                if piece := self._ready(final=False):
                    yield self._chunk({"content": piece})
        except APIError as e:  # after the first byte the status is sent: the error goes in the stream
            yield f"data: {json.dumps({'error': {'message': e.message, 'type': e.type, 'code': e.code}})}\n\n"
            return
        if piece := self._ready(final=True):
            yield self._chunk({"content": piece})
        yield self._chunk({}, finish_reason=self._finish_reason())
        if include_usage:
            yield self._chunk({}, usage=self._usage())
        yield "data: [DONE]\n\n"


# ---------------------------------------------------------------------------------------- images


async def _last(events, request: Request):
    """Run an image stream to its ImageResult in a worker thread, checking between steps whether the
    client is still there; if it went away the stream is closed (the run stops at its next step)."""
    sentinel = object()
    try:
        while True:
            event = await anyio.to_thread.run_sync(next, events, sentinel)
            if event is sentinel:
                return None
            if type(event).__name__ == "ImageResult":
                return event
            if await request.is_disconnected():
                return None
    except JanusError as e:
        raise _api_error(e) from None
    finally:
        events.close()


def _png_b64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _keep(files: Path, image) -> str:
    """Save a url result under an unguessable name; older kept files go."""
    now = time.time()
    for old in files.glob("*.png"):
        if now - old.stat().st_mtime > KEEP_FILES_S:
            old.unlink(missing_ok=True)
    name = f"{secrets.token_hex(16)}.png"
    image.save(files / name, format="PNG")
    return name
