"""A Hugging Face Hub stand-in on loopback: enough of the API for downloads, nothing more.

It answers what ``huggingface_hub`` (1.x/2.x) really calls when downloading:

- ``GET /api/models/{repo}[/revision/{rev}]``: repo info (``sha``, ``siblings``);
- ``GET /api/models/{repo}/tree/{rev}[?recursive=true]``: the file listing;
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: the file, with ``X-Repo-Commit``, ``ETag`` and a
  correct ``Content-Length``;
- errors as the Hub sends them: 404 + ``X-Error-Code: RepoNotFound`` / ``RevisionNotFound`` /
  ``EntryNotFound``, and 401 + ``RepoNotFound`` for a private repo asked for without its token.

Repos are folders of commits (full snapshots) under a temporary directory; branches are a dict.
Every request is recorded in ``requests`` so tests can assert that nothing was asked.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


class HubStandIn:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.refs: dict[str, dict[str, str]] = {}  # repo -> branch -> commit
        self.tokens: dict[str, str] = {}  # private repo -> token that opens it
        self.requests: list[tuple[str, str]] = []
        self._count = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- repo contents -------------------------------------------------------------------------

    def commit(self, repo_id: str, folder: Path, *, branch: str = "main", delete_patterns=()) -> str:
        """New commit on ``branch``: the branch's files minus ``delete_patterns``, plus ``folder``'s."""
        self._count += 1
        sha = hashlib.sha1(f"{repo_id}:{self._count}".encode()).hexdigest()
        target = self.root / repo_id / sha
        parent = self.refs.get(repo_id, {}).get(branch)
        if parent is not None:
            shutil.copytree(self.root / repo_id / parent, target)
            for path in list(target.rglob("*")):
                rel = str(path.relative_to(target))
                if path.is_file() and any(fnmatch.fnmatch(rel, p) for p in delete_patterns):
                    path.unlink()
        shutil.copytree(folder, target, dirs_exist_ok=True)
        self.refs.setdefault(repo_id, {})[branch] = sha
        return sha

    def make_private(self, repo_id: str, token: str) -> None:
        self.tokens[repo_id] = token

    def files(self, repo_id: str, sha: str) -> list[str]:
        base = self.root / repo_id / sha
        return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())

    def _resolve(self, repo_id: str, rev: str) -> str | None:
        """A branch name or a full commit hash of this repo -> commit hash; ``None`` if neither."""
        if rev in self.refs[repo_id]:
            return self.refs[repo_id][rev]
        if re.fullmatch(r"[0-9a-f]{40}", rev) and (self.root / repo_id / rev).is_dir():
            return rev
        return None


def _etag(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _handler(hub: HubStandIn):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _send(self, status: int, headers: dict[str, str], payload: bytes = b"", body: bool = True, length=None):
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload) if length is None else length))
            self.end_headers()
            if body and payload:
                self.wfile.write(payload)

        def _error(self, status: int, code: str | None, body: bool, extra: dict | None = None) -> None:
            headers = {"Content-Type": "application/json", **(extra or {})}
            if code:
                headers["X-Error-Code"] = code
            if status == 401:
                headers["X-Error-Message"] = "Invalid username or password."
            self._send(status, headers, json.dumps({"error": code or "error"}).encode(), body)

        def _serve(self, body: bool) -> None:
            parts = urlsplit(self.path)
            path = unquote(parts.path)
            hub.requests.append((self.command, self.path))
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/(revision|tree)/([^/]+)(/.*)?)?", path)
            if m:
                repo_id, kind, rev = m.group(1), m.group(2), m.group(3) or "main"
            else:
                m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if not m:
                    return self._error(404, None, body)
                repo_id, kind, rev, file = m.group(1), "resolve", m.group(2), m.group(3)
            if repo_id not in hub.refs:
                return self._error(404, "RepoNotFound", body)
            token = hub.tokens.get(repo_id)
            if token is not None and self.headers.get("Authorization") != f"Bearer {token}":
                return self._error(401, "RepoNotFound", body)
            sha = hub._resolve(repo_id, rev)
            if sha is None:
                return self._error(404, "RevisionNotFound", body)
            if kind == "resolve":
                return self._file(repo_id, sha, file, body)
            files = hub.files(repo_id, sha)
            base = hub.root / repo_id / sha
            if kind == "tree":
                listing = [
                    {"type": "file", "oid": _etag(base / f)[:40], "size": (base / f).stat().st_size, "path": f}
                    for f in files
                ]
                return self._send(200, {"Content-Type": "application/json"}, json.dumps(listing).encode(), body)
            info = {"id": repo_id, "modelId": repo_id, "sha": sha, "private": token is not None,
                    "siblings": [{"rfilename": f} for f in files]}
            self._send(200, {"Content-Type": "application/json"}, json.dumps(info).encode(), body)

        def _file(self, repo_id: str, sha: str, file: str, body: bool) -> None:
            target = hub.root / repo_id / sha / file
            if ".." in Path(file).parts or not target.is_file():
                return self._error(404, "EntryNotFound", body, {"X-Repo-Commit": sha})
            headers = {"X-Repo-Commit": sha, "ETag": f'"{_etag(target)}"', "Content-Type": "application/octet-stream"}
            size = target.stat().st_size
            if not body:
                return self._send(200, headers, body=False, length=size)
            self.send_response(200)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            with open(target, "rb") as f:
                shutil.copyfileobj(f, self.wfile, 1 << 20)

    return Handler
