"""A loopback fake of the few Hugging Face Hub endpoints that latentdiff's push and pull use.

The real ``huggingface_hub`` client talks to it over HTTP on 127.0.0.1 (``HF_ENDPOINT``), so the
tests exercise the client end to end without the internet. Only what ``HfApi.create_repo``,
``create_branch``, ``upload_folder`` (regular-file commits) and ``snapshot_download`` /
``hf_hub_download`` call is implemented, with the status codes, ``X-Error-Code`` headers and
response fields that huggingface_hub 2.x reads (checked against ``hf_api.py``, ``_commit_api.py``,
``file_download.py``, ``_snapshot_download.py`` and ``utils/_http.py::hf_raise_for_status``):

==========================================  ==============================================
``POST /api/repos/create``                  create a repo (409 if it exists)
``POST /api/validate-yaml``                 README metadata must be a YAML mapping
``POST /api/models/{id}/branch/{b}``        create a branch (409 if it exists)
``GET  /api/models/{id}[/revision/{r}]``    model info: ``sha`` and ``siblings``
``GET  /api/models/{id}/tree/{r}``          file listing (``type``, ``path``, ``size``, ``oid``)
``POST /api/models/{id}/preupload/{r}``     every file is a "regular" upload (no LFS/Xet)
``POST /api/models/{id}/commit/{r}``        NDJSON commit (``header``, ``file``, deletions)
``HEAD/GET /{id}/resolve/{r}/{path}``       file bytes with ``ETag`` and ``X-Repo-Commit``
==========================================  ==============================================

Auth follows the Hub: a bearer token the server does not know is a 401 with
"Invalid credentials in Authorization header"; a missing or private repo without access is
``X-Error-Code: RepoNotFound`` (401 when anonymous, 404 when authenticated); writes need a token
with the "write" role.

The server runs in a daemon thread, stops itself after ``max_seconds`` (a watchdog, so a
forgotten server can never outlive a test run) and records every request in ``requests``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports as ``oid``/``ETag`` for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    repo_id: str
    private: bool
    refs: dict[str, str] = field(default_factory=dict)  # branch or refs/pr/N -> commit id
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit id -> {path: bytes}
    num_prs: int = 0

    def commit(self, parent: str | None, files: dict[str, bytes], summary: str) -> str:
        digest = hashlib.sha1(f"{parent}|{summary}|{len(self.commits)}".encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + git_blob_sha1(files[path]).encode())
        oid = digest.hexdigest()
        self.commits[oid] = files
        return oid

    def resolve(self, revision: str) -> str | None:
        if revision in self.refs:
            return self.refs[revision]
        return revision if revision in self.commits else None


class FakeHub:
    """``with FakeHub(tokens={"hf_x": "write"}) as hub: ... hub.url ...``"""

    def __init__(self, *, tokens: dict[str, str] | None = None, max_seconds: float = 300.0):
        self.tokens = dict(tokens or {})  # token -> "read" | "write"
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.auth_headers: list[str] = []  # Authorization values received (to check a token was sent)
        self.commits: list[dict] = []  # {"repo_id", "revision", "paths"} per accepted commit
        self.max_seconds = max_seconds
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._watchdog: threading.Timer | None = None

    # ---------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the server first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # port 0: a free port
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-hub", daemon=True)
        self._thread.start()
        self._watchdog = threading.Timer(self.max_seconds, self.stop)
        self._watchdog.daemon = True
        self._watchdog.start()
        return self

    def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------- helpers for tests

    def add_repo(self, repo_id: str, files: dict[str, bytes], *, private: bool = False) -> str:
        """Create a repo with one commit holding ``files``; returns the commit id."""
        repo = FakeRepo(repo_id, private)
        repo.refs["main"] = repo.commit(None, {".gitattributes": GITATTRIBUTES, **files}, "initial commit")
        self.repos[repo_id] = repo
        return repo.refs["main"]

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return dict(repo.commits[repo.resolve(revision)])


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every response sets Content-Length
    timeout = 30  # a stuck client connection cannot hold a handler thread forever

    def log_message(self, format, *args):  # quiet: tests capture output
        pass

    # ---------------------------------------------------------------- plumbing

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body: bytes | dict | list = b"", headers: dict | None = None,
              head: bool = False) -> None:
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, status: int, message: str, code: str | None = None, head: bool = False, **headers) -> None:
        h = {"X-Error-Message": message, **headers}
        if code:
            h["X-Error-Code"] = code
        self._send(status, {"error": message}, h, head=head)

    def _token(self) -> tuple[str | None, bool]:
        """(role, ok): role of the bearer token; ok False when a token was sent but is unknown."""
        auth = self.headers.get("Authorization")
        if not auth:
            return None, True
        self.fake.auth_headers.append(auth)
        token = auth.removeprefix("Bearer ").strip()
        role = self.fake.tokens.get(token)
        return role, role is not None

    def _segments(self) -> tuple[list[str], dict]:
        parts = urlsplit(self.path)
        # Split before unquoting: revisions are quoted with safe="" ("refs%2Fpr%2F1" is one segment).
        return [unquote(s) for s in parts.path.strip("/").split("/")], parse_qs(parts.query)

    def _repo(self, repo_id: str, role: str | None, *, write: bool = False, head: bool = False) -> FakeRepo | None:
        repo = self.fake.repos.get(repo_id)
        if repo is None or (repo.private and role is None):
            status = 404 if role else 401
            self._error(status, "Repository not found", "RepoNotFound", head=head)
            return None
        if write and role != "write":
            self._error(403 if role else 401, "You don't have the rights to write to this repository", head=head)
            return None
        return repo

    # ---------------------------------------------------------------- dispatch

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        seg, query = self._segments()
        with self.fake._lock:
            self.fake.requests.append((method, urlsplit(self.path).path))
        body = self._body() if method == "POST" else b""
        role, ok = self._token()
        head = method == "HEAD"
        if not ok:
            return self._error(401, "Invalid credentials in Authorization header", head=head)
        with self.fake._lock:
            if seg[:1] == ["api"]:
                return self._api(method, seg[1:], query, body, role)
            if len(seg) >= 5 and seg[2] == "resolve" and method in ("GET", "HEAD"):
                return self._resolve(f"{seg[0]}/{seg[1]}", seg[3], "/".join(seg[4:]), role, head)
            return self._error(404, f"no such endpoint: {method} {self.path}", head=head)

    def _api(self, method: str, seg: list[str], query: dict, body: bytes, role: str | None) -> None:
        if method == "POST" and seg == ["repos", "create"]:
            return self._create_repo(json.loads(body or b"{}"), role)
        if method == "POST" and seg == ["validate-yaml"]:
            return self._validate_yaml(json.loads(body or b"{}"))
        if seg[:1] != ["models"] or len(seg) < 3:
            return self._error(404, f"no such endpoint: {method} /api/{'/'.join(seg)}")
        repo_id, rest = f"{seg[1]}/{seg[2]}", seg[3:]
        if method == "GET" and (rest == [] or (len(rest) == 2 and rest[0] == "revision")):
            return self._model_info(repo_id, rest[1] if rest else "main", role)
        if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
            return self._tree(repo_id, rest[1], "/".join(rest[2:]), role)
        if method == "POST" and len(rest) == 2 and rest[0] == "branch":
            return self._create_branch(repo_id, rest[1], json.loads(body or b"{}"), role)
        if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
            return self._preupload(repo_id, rest[1], json.loads(body or b"{}"), role)
        if method == "POST" and len(rest) == 2 and rest[0] == "commit":
            return self._commit(repo_id, rest[1], body, query, role)
        return self._error(404, f"no such endpoint: {method} /api/{'/'.join(seg)}")

    # ---------------------------------------------------------------- endpoints

    def _create_repo(self, payload: dict, role: str | None) -> None:
        if role != "write":
            return self._error(401 if role is None else 403, "You must be logged in with a write token")
        repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
        if repo_id in self.fake.repos:
            # The real Hub's 409 body carries the repo url; create_repo(exist_ok=True) reads it.
            return self._send(409, {"error": "You already created this model repo", "url": f"{self.fake.url}/{repo_id}"},
                              {"X-Error-Message": "You already created this model repo"})
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        self.fake.add_repo(repo_id, {}, private=private)
        self._send(200, {"url": f"{self.fake.url}/{repo_id}", "name": repo_id, "id": repo_id})

    def _validate_yaml(self, payload: dict) -> None:
        content = payload.get("content", "")
        match = re.match(r"^---\s*\n(.*?)\n---\s*$", content, flags=re.S | re.M)
        try:
            data = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as e:
            return self._send(400, {"errors": [{"message": f"invalid YAML: {e}"}]})
        if not isinstance(data, dict):
            return self._send(400, {"errors": [{"message": "metadata must be a YAML mapping"}]})
        warnings = [] if data else [{"message": "empty or missing yaml metadata in repo card"}]
        self._send(200, {"errors": [], "warnings": warnings})

    def _model_info(self, repo_id: str, revision: str, role: str | None) -> None:
        repo = self._repo(repo_id, role)
        if repo is None:
            return
        oid = repo.resolve(revision)
        if oid is None:
            return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        files = repo.commits[oid]
        self._send(200, {
            "id": repo_id, "modelId": repo_id, "sha": oid, "private": repo.private,
            "siblings": [{"rfilename": p} for p in sorted(files)], "tags": [],
        })

    def _tree(self, repo_id: str, revision: str, prefix: str, role: str | None) -> None:
        repo = self._repo(repo_id, role)
        if repo is None:
            return
        oid = repo.resolve(revision)
        if oid is None:
            return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        entries, folders = [], set()
        for path, data in sorted(repo.commits[oid].items()):
            if prefix and not path.startswith(prefix.rstrip("/") + "/"):
                continue
            parts = path.split("/")
            for i in range(1, len(parts)):
                folders.add("/".join(parts[:i]))
            entries.append({"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data)})
        entries += [{"type": "directory", "path": f, "oid": hashlib.sha1(f.encode()).hexdigest()}
                    for f in sorted(folders) if not prefix or f.startswith(prefix.rstrip("/") + "/")]
        self._send(200, entries)

    def _create_branch(self, repo_id: str, branch: str, payload: dict, role: str | None) -> None:
        repo = self._repo(repo_id, role, write=True)
        if repo is None:
            return
        if branch in repo.refs:
            return self._error(409, f"Reference already exists: refs/heads/{branch}")
        start = repo.resolve(payload.get("startingPoint") or "main")
        if start is None:
            return self._error(404, "Invalid starting point", "RevisionNotFound")
        repo.refs[branch] = start
        self._send(200, {})

    def _preupload(self, repo_id: str, revision: str, payload: dict, role: str | None) -> None:
        repo = self._repo(repo_id, role, write=True)
        if repo is None:
            return
        oid = repo.resolve(revision)
        remote = repo.commits[oid] if oid else {}
        # "regular" for every file: the client then sends the bytes inside the commit (no LFS/Xet).
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                  "oid": git_blob_sha1(remote[f["path"]]) if f["path"] in remote else None}
                 for f in payload.get("files", [])]
        self._send(200, {"files": files, "commitOid": oid})

    def _commit(self, repo_id: str, revision: str, body: bytes, query: dict, role: str | None) -> None:
        repo = self._repo(repo_id, role, write=True)
        if repo is None:
            return
        parent = repo.resolve(revision)
        if parent is None:
            return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        files = dict(repo.commits[parent])
        summary, paths = "", []
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value.get("summary", "")
            elif key == "file":
                assert value.get("encoding") == "base64", value
                files[value["path"]] = base64.b64decode(value["content"])
                paths.append(value["path"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                files = {p: d for p, d in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
            else:  # lfsFile: never requested by our preupload answer
                return self._error(400, f"unsupported commit operation {key!r} in this fake Hub")
        oid = repo.commit(parent, files, summary)
        pr_url = None
        if query.get("create_pr", ["0"])[0] in ("1", "true", "True"):
            repo.num_prs += 1
            ref = f"refs/pr/{repo.num_prs}"
            repo.refs[ref] = oid
            pr_url = f"{self.fake.url}/{repo_id}/discussions/{repo.num_prs}"
        else:
            repo.refs[revision] = oid
        self.fake.commits.append({"repo_id": repo_id, "revision": revision, "paths": paths, "summary": summary,
                                  "oid": oid, "pr": pr_url is not None})
        self._send(200, {"commitUrl": f"{self.fake.url}/{repo_id}/commit/{oid}", "commitOid": oid,
                         "pullRequestUrl": pr_url, "success": True})

    def _resolve(self, repo_id: str, revision: str, path: str, role: str | None, head: bool) -> None:
        repo = self._repo(repo_id, role, head=head)
        if repo is None:
            return
        oid = repo.resolve(revision)
        if oid is None:
            return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound", head=head)
        data = repo.commits[oid].get(path)
        if data is None:
            return self._error(404, "Entry not found", "EntryNotFound", head=head, **{"X-Repo-Commit": oid})
        self._send(200, data, {"ETag": f'"{git_blob_sha1(data)}"', "X-Repo-Commit": oid,
                               "Content-Type": "application/octet-stream"}, head=head)
