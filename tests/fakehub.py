"""A loopback HTTP server that answers like the Hugging Face Hub, for the few endpoints
huggingface_hub's snapshot_download uses (repo info, tree listing, file resolve).

Tests point HF_ENDPOINT at it so huggingface_hub runs its real download and error paths
(GatedRepoError, RepositoryNotFoundError, ...) without ever contacting a real host.

Fault injection (off by default): `stall(name, n)` sends the first n bytes of a file's downloads
and then holds the connection open until `release()`, so a client can be killed in the middle of
a download at a known byte; `throttle(name, bytes_per_s)` sends a file slowly (a window for kills
at random times). `sent[name]` counts the body bytes sent of each file.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


class FakeHub:
    """repos: {"org/name": folder}; gated: repo ids whose files need a token (none is accepted)."""

    def __init__(self):
        self.repos: dict[str, Path] = {}
        self.gated: set[str] = set()
        self.tags: dict[str, set[str]] = {}  # extra revision names a repo knows besides "main" and its sha
        self.requests: list[str] = []
        self.stall_after: dict[str, int] = {}  # file name -> bytes sent before its downloads stall
        self.rate: dict[str, float] = {}  # file name -> bytes per second
        self.sent: dict[str, int] = {}  # file name -> body bytes sent so far (all requests)
        self.stalled = threading.Event()  # set once a download has stalled
        self._release = threading.Event()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub._answer(self, body=False)

            def do_GET(self):
                hub._answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.release()
        self.server.shutdown()
        self.server.server_close()

    def stall(self, name: str, after_bytes: int):
        """Downloads of `name` (a path in the repo) send `after_bytes` bytes, then hang until release()."""
        self._release.clear()
        self.stalled.clear()
        self.stall_after[name] = after_bytes

    def throttle(self, name: str, bytes_per_s: float):
        self.rate[name] = bytes_per_s

    def release(self):
        """End every stall: stalled downloads are cut off (the client sees a short body) and later
        downloads are served whole, at full speed."""
        self.stall_after.clear()
        self.rate.clear()
        self._release.set()

    @staticmethod
    def sha(folder: Path) -> str:
        """The fake commit sha of a repo: a hash of its files, so new content = new commit."""
        digest = hashlib.sha1()
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(f.relative_to(folder).as_posix().encode() + f.read_bytes())
        return digest.hexdigest()

    # ---------------------------------------------------------------- request handling

    def _answer(self, req: BaseHTTPRequestHandler, body: bool):
        path = unquote(urlparse(req.path).path)
        self.requests.append(f"{req.command} {path}")
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
            repo_id, kind = "/".join(parts[2:4]), parts[4]
            folder = self._repo(req, repo_id)
            if folder is None:
                return
            sha = self.sha(folder)
            if parts[5] not in {"main", sha} | self.tags.get(repo_id, set()):
                return self._send(req, 404, b"", body, {"X-Error-Code": "RevisionNotFound",
                                                        "X-Error-Message": "Invalid rev id"})
            files = sorted(p for p in folder.rglob("*") if p.is_file())
            if kind == "revision":
                info = {"id": repo_id, "modelId": repo_id, "sha": sha, "private": False,
                        "gated": "manual" if repo_id in self.gated else False,
                        "siblings": [{"rfilename": f.relative_to(folder).as_posix()} for f in files]}
                return self._send(req, 200, json.dumps(info).encode(), body, {"Content-Type": "application/json"})
            tree = [{"type": "file", "path": f.relative_to(folder).as_posix(), "size": f.stat().st_size,
                     "oid": hashlib.sha1(f.read_bytes()).hexdigest()} for f in files]
            return self._send(req, 200, json.dumps(tree).encode(), body, {"Content-Type": "application/json"})
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id, name = "/".join(parts[:2]), "/".join(parts[4:])
            folder = self._repo(req, repo_id)
            if folder is None:
                return
            if repo_id in self.gated:  # what the Hub answers to an anonymous download from a gated repo
                return self._send(req, 401, b"", body, {"X-Error-Code": "GatedRepo", "X-Error-Message":
                                  "Access to model is restricted. You must have access to it and be authenticated."})
            file = folder / name
            if not file.is_file():
                return self._send(req, 404, b"", body, {"X-Error-Code": "EntryNotFound"})
            data = file.read_bytes()
            etag = '"' + hashlib.sha1(data).hexdigest() + '"'
            return self._send(req, 200, data, body, {"X-Repo-Commit": self.sha(folder), "ETag": etag,
                                                     "Content-Type": "application/octet-stream"}, name)
        self._send(req, 404, b"", body, {})

    def _repo(self, req, repo_id: str) -> Path | None:
        if repo_id in self.repos:
            return self.repos[repo_id]
        # The Hub answers 401 RepoNotFound for missing (or private) repos without a valid token.
        self._send(req, 401, b"", True, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
        return None

    def _send(self, req, status: int, data: bytes, body: bool, headers: dict, name: str | None = None):
        req.send_response(status)
        for k, v in headers.items():
            req.send_header(k, v)
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        if not body or req.command == "HEAD":
            return
        if name is None or (name not in self.stall_after and name not in self.rate):
            req.wfile.write(data)
            return
        self._send_slowly(req, data, name)

    def _send_slowly(self, req, data: bytes, name: str, chunk: int = 16 << 10):
        stall_at, rate = self.stall_after.get(name), self.rate.get(name)
        done = 0
        try:
            while done < len(data):
                end = min(len(data), done + chunk, len(data) if stall_at is None or done >= stall_at else stall_at)
                req.wfile.write(data[done:end])
                req.wfile.flush()
                self.sent[name] = self.sent.get(name, 0) + end - done
                if rate:
                    time.sleep((end - done) / rate)
                done = end
                if stall_at is not None and done >= stall_at:
                    self.stalled.set()
                    self._release.wait(timeout=300)  # bounded: a forgotten stall must not hang the server
                    return  # the connection closes short of Content-Length, like a dropped download
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (killed): nothing more to send
