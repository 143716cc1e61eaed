"""A Hugging Face Hub stand-in on 127.0.0.1 that answers what huggingface_hub asks.

- `GET /api/models/{org}/{name}[/revision/{rev}]`: model info with `sha` and `siblings`
  (`rfilename`, `size`, `blobId`, `lfs` for `*.safetensors`), as with `?blobs=true`.
- `HEAD`/`GET /{org}/{name}/resolve/{rev}/{path}`: the file, with `X-Repo-Commit`, `ETag`,
  `Content-Length`, `Accept-Ranges`; `Range: bytes=N-` gets a 206 with `Content-Range`.
- Errors as the Hub sends them (status + `X-Error-Code`/`X-Error-Message`): an unknown repo is
  401 RepoNotFound, an unknown revision 404 RevisionNotFound, an unknown file 404
  EntryNotFound; a repo with a `token` answers 401 GatedRepo without one and 401 "Invalid
  credentials in Authorization header" with a wrong one.
- `cut_once(repo, path)`: the next GET of that file sends half its body, then closes.
- `honor_range = False`: Range headers are ignored (a 200 with the whole file).
- `requests`: every request, to assert on Range headers or on there being none.
"""
from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    commit: str = COMMIT
    revisions: tuple[str, ...] = ("main",)
    token: str | None = None  # when set, every request must carry "Bearer <token>"

    def resolves(self, revision: str) -> bool:
        return revision in self.revisions or revision == self.commit


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names


@dataclass
class FakeHub:
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    to_cut: set[tuple[str, str]] = field(default_factory=set)
    honor_range: bool = True  # False: answer Range requests with the whole file (200), as
                              # some CDNs do

    def __post_init__(self) -> None:
        hub = self

        class Handler(_HubHandler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,),
                                        daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add_repo(self, repo_id: str, files: dict[str, bytes], **kwargs) -> FakeRepo:
        self.repos[repo_id] = FakeRepo(files, **kwargs)
        return self.repos[repo_id]

    def cut_once(self, repo_id: str, path: str) -> None:
        self.to_cut.add((repo_id, path))

    def file_gets(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests
                if r.method == "GET" and "/resolve/" in r.path and r.path.endswith("/" + path)]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeHub

    def log_message(self, format, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._handle(send_body=False)

    def do_GET(self) -> None:
        self._handle(send_body=True)

    def _handle(self, send_body: bool) -> None:
        path = urlsplit(self.path).path
        self.fake.requests.append(RecordedRequest(
            self.command, path, {k.lower(): v for k, v in self.headers.items()}))
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] == ["api", "models"] and len(parts) in (4, 6):
            repo_id, revision = "/".join(parts[2:4]), parts[5] if len(parts) == 6 else "main"
            if (repo := self._repo_or_error(repo_id, revision)) is not None:
                self._send_json(_model_info(repo_id, repo))
        elif len(parts) >= 5 and parts[2] == "resolve":
            repo_id, revision, file_path = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            if (repo := self._repo_or_error(repo_id, revision)) is not None:
                self._send_file(repo_id, repo, file_path, send_body)
        else:
            self._send_error(404, {}, "no such route")

    def _repo_or_error(self, repo_id: str, revision: str) -> FakeRepo | None:
        repo = self.fake.repos.get(repo_id)
        if repo is None:
            self._send_error(401, {"X-Error-Code": "RepoNotFound"}, "Repository not found")
        elif repo.token is not None and self.headers.get("Authorization") != f"Bearer {repo.token}":
            if self.headers.get("Authorization") is None:
                self._send_error(401, {"X-Error-Code": "GatedRepo"},
                                 f"Access to model {repo_id} is restricted. You must have "
                                 "access to it and be authenticated to access it.")
            else:
                self._send_error(401, {"X-Error-Message":
                                       "Invalid credentials in Authorization header"},
                                 "Invalid credentials in Authorization header")
        elif not repo.resolves(revision):
            self._send_error(404, {"X-Error-Code": "RevisionNotFound"}, "Invalid rev id")
        else:
            return repo
        return None

    def _send_file(self, repo_id: str, repo: FakeRepo, path: str, send_body: bool) -> None:
        if path not in repo.files:
            self._send_error(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo.commit},
                             "Entry not found")
            return
        data = repo.files[path]
        start = _range_start(self.headers.get("Range")) if self.fake.honor_range else None
        if start is not None and start >= len(data):
            self._send_error(416, {}, "Range Not Satisfiable")
            return
        body = data[start or 0:]
        self.send_response(206 if start is not None else 200)
        if start is not None:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{_etag(path, data)}"')
        self.send_header("X-Repo-Commit", repo.commit)
        cut = send_body and (repo_id, path) in self.fake.to_cut
        if cut:
            self.fake.to_cut.discard((repo_id, path))
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if send_body:
            self.wfile.write(body[:len(body) // 2] if cut else body)
            self.wfile.flush()

    def _send_json(self, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_error(self, status: int, headers: dict[str, str], message: str) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def _model_info(repo_id: str, repo: FakeRepo) -> dict:
    siblings = []
    for path, data in sorted(repo.files.items()):
        sibling = {"rfilename": path, "size": len(data),
                   "blobId": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()}
        if path.endswith(".safetensors"):
            sibling["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                              "pointerSize": 134}
        siblings.append(sibling)
    return {"id": repo_id, "modelId": repo_id, "sha": repo.commit, "private": False,
            "siblings": siblings}


def _etag(path: str, data: bytes) -> str:
    if path.endswith(".safetensors"):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _range_start(header: str | None) -> int | None:
    """N of `bytes=N-` (the only form huggingface_hub sends); None without a Range header."""
    if header is None or not header.startswith("bytes=") or not header.endswith("-"):
        return None
    return int(header[len("bytes="):-1])
