"""HTTP hardening for the web app, in front of every route the server has.

An ASGI middleware, so it sees every route (the UI, Gradio's API, files, the queue, and any route
added later) without knowing them; app.py hands it to Gradio's FastAPI app through
`launch(app_kwargs={"middleware": ...})`. It does four things:
- hands /v1/... to the OpenAI-compatible API (janus_ov.openai_api), on the same port as the UI;
- with a login, refuses every request without a valid session except what the login page itself
  needs (Gradio guards most routes, but not all: cancel, reset, heartbeat, user, app_id, runs);
  the API answers to its own key, or, without one, to the same login session;
- lets images in the page come only from the app itself;
- keeps the login cookie SameSite=Lax unless the app runs inside another site's iframe.
"""

from __future__ import annotations

import json
import os

# Images in the page may come only from the app itself: a markdown image in a model answer
# (`![](https://...)`, a known way to exfiltrate a conversation through a prompt injection)
# or in pasted text is never fetched from another host.
CSP = b"img-src 'self' data: blob:"

# What the login page needs before anyone has logged in: the page, the login form's target,
# the frontend's own files (scripts, styles, fonts, icons); and the startup probe Gradio's
# launch() sends itself (its answer is one boolean). None of them holds app data.
PUBLIC_PATHS = {"/", "/login", "/login/", "/logout", "/favicon.ico", "/theme.css", "/gradio_api/theme.css",
                "/robots.txt", "/manifest.json", "/gradio_api/startup-events"}
PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon")
# The body Gradio itself answers with, which its login page reads to show the form.
NOT_AUTHENTICATED = json.dumps({"detail": {"error": "Not authenticated", "auth_message": None}}).encode()
API_NOT_AUTHENTICATED = json.dumps({"error": {
    "message": "This server requires a login: start it with --api-key KEY and send 'Authorization: Bearer KEY'.",
    "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}).encode()


def cross_site_cookies() -> bool:
    """Whether login cookies must be SameSite=None: only on a Hugging Face Space, whose page shows the
    app in an iframe of another site (huggingface.co around *.hf.space), where a Lax cookie is never
    sent. A share link (gradio.live) and a local server are opened as the page itself: Lax suffices."""
    return bool(os.environ.get("SPACE_ID"))


class Guard:
    """`api`: the OpenAI-compatible app for /v1 (None: no API); `api_key`: whether it checks a key itself."""

    def __init__(self, app, api=None, api_key: bool = False, cross_site: bool | None = None):
        self.app, self.api, self.api_key = app, api, api_key
        self.cross_site = cross_site_cookies() if cross_site is None else cross_site

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        if self.api is not None and _path(scope).startswith("/v1/"):
            if not (self.api_key or _allowed(scope)):
                return await _refuse(scope, send, API_NOT_AUTHENTICATED)
            return await self.api(scope, receive, send)
        if not _allowed(scope):
            return await _refuse(scope, send)

        async def send_hardened(message):
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"content-security-policy", CSP)]
                if not self.cross_site:
                    headers = [(k, _lax(v) if k.lower() == b"set-cookie" else v) for k, v in headers]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_hardened)


def _allowed(scope) -> bool:
    """No login configured, a public path, or a session cookie Gradio issued at login."""
    gradio = scope.get("app")  # Gradio's FastAPI App: its login settings and issued tokens
    if getattr(gradio, "auth", None) is None:
        return True
    path = _path(scope)
    if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
        return True
    cookies = _cookies(scope)
    token = cookies.get(f"access-token-{gradio.cookie_id}") or cookies.get(f"access-token-unsecure-{gradio.cookie_id}")
    return token is not None and token in gradio.tokens


def _path(scope) -> str:
    root = scope.get("root_path", "")
    return scope["path"][len(root):] if root and scope["path"].startswith(root) else scope["path"]


def _cookies(scope) -> dict[str, str]:
    from http.cookies import SimpleCookie

    jar = SimpleCookie()
    for key, value in scope.get("headers", []):
        if key == b"cookie":
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # a malformed cookie header is no session
                return {}
    return {name: morsel.value for name, morsel in jar.items()}


async def _refuse(scope, send, body: bytes = NOT_AUTHENTICATED):
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    await send({"type": "http.response.start", "status": 401,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


def _lax(cookie: bytes) -> bytes:
    parts = [p.strip() for p in cookie.split(b";")]
    return b"; ".join(b"SameSite=lax" if p.lower() == b"samesite=none" else p for p in parts)
