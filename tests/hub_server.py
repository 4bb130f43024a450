"""A small in-memory stand-in for the Hugging Face Hub's HTTP API, for tests. Binds 127.0.0.1 only.

It implements what `huggingface_hub` (with `HF_HUB_DISABLE_XET=1`) and `transformers` call to create a model repo,
push a folder and download it again:

    POST /api/repos/create                               create a repo (private flag; 409 when it exists)
    POST /api/validate-yaml                              README metadata check done before every commit
    GET  /api/whoami-v2                                  the token's user
    GET  /api/models/{repo}[/revision/{rev}]             repo info: sha, private, siblings, cardData
    GET  /api/models/{repo}/tree/{rev}[/{path}]          file listing (recursive or not)
    POST /api/models/{repo}/preupload/{rev}              upload mode per file ("lfs" for weights, else "regular")
    POST /api/models/{repo}/commit/{rev}                 NDJSON commit: file (base64), lfsFile, deletedFile/Folder
    GET  /api/models/{repo}/refs                         branches
    POST /api/models/{repo}/branch/{branch}              create a branch from the default branch's head
    POST /{repo}.git/info/lfs/objects/batch              LFS batch API, "basic" transfer
    PUT  /lfs/upload/{sha256}                            LFS object upload (checked against its sha256)
    POST /lfs/verify                                     LFS verify
    HEAD/GET /{repo}/resolve/{rev}/{path}                download with ETag, X-Repo-Commit, Content-Length,
                                                         X-Linked-Etag / X-Linked-Size (LFS), Range requests

Errors carry the `X-Error-Code` headers `huggingface_hub` maps to its exceptions (RepoNotFound, RevisionNotFound,
EntryNotFound). Writes need a token from `tokens`; private repos are readable with a token only. Request bodies
are bounded (`max_body_bytes`, 413 beyond), sockets time out, and routes it does not know are answered with 404 and
recorded in `unhandled`, so a test sees when the client starts calling something new.

    with HubStandIn() as hub:      # hub.url -> "http://127.0.0.1:PORT"; token "hf_test" belongs to user "tester"
        HfApi(endpoint=hub.url, token="hf_test").create_repo("tester/model")
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.onnx", "*.msgpack", "*.mp4")
LFS_SIZE = 10 * 2**20  # files at least this big go through LFS whatever their name
_REPO = r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)"


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Blob:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.data)}\n".encode()

    @property
    def git_oid(self) -> str:
        return _git_oid(self.pointer if self.lfs else self.data)


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    description: str
    files: dict[str, Blob]
    date: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    created: str
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        return self.commits.get(revision)


class HubError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        payload: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.payload = payload or {}


class HubStandIn:
    """The stand-in server; `start()` / `stop()` or use it as a context manager."""

    def __init__(self, tokens: dict[str, str] | None = None, max_body_bytes: int = 64 * 2**20, timeout: float = 30.0):
        self.tokens = tokens or {"hf_test": "tester"}
        self.max_body_bytes = max_body_bytes
        self.timeout = timeout
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self._lock = threading.RLock()
        self._counter = itertools.count()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("server not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubStandIn:
        hub = self

        class Handler(_Handler):
            server_hub = hub
            timeout = hub.timeout

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="hub-stand-in", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = None

    def __enter__(self) -> HubStandIn:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----------------------------------------------------------------------------------------------------------
    # Repository state
    # ----------------------------------------------------------------------------------------------------------

    def _now(self) -> str:
        return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")

    def _commit(
        self, repo: Repo, parent: Commit | None, files: dict[str, Blob], title: str, description: str
    ) -> Commit:
        listing = sorted((path, blob.git_oid) for path, blob in files.items())
        seed = json.dumps([parent.oid if parent else None, title, listing, next(self._counter)]).encode()
        commit = Commit(
            hashlib.sha1(seed).hexdigest(), parent.oid if parent else None, title, description, files, self._now()
        )
        repo.commits[commit.oid] = commit
        return commit

    def create_repo(self, repo_id: str, private: bool) -> Repo:
        repo = Repo(repo_id, private, self._now())
        initial = self._commit(repo, None, {".gitattributes": Blob(GITATTRIBUTES, False)}, "initial commit", "")
        repo.branches["main"] = initial.oid
        self.repos[repo_id] = repo
        return repo

    def file(self, repo_id: str, path: str, revision: str = "main") -> bytes:
        """Content of a file in the stand-in (for test assertions)."""
        return self.repos[repo_id].resolve(revision).files[path].data


class _Handler(BaseHTTPRequestHandler):
    server_hub: HubStandIn
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    # ----------------------------------------------------------------------------------------------------------
    # Plumbing
    # ----------------------------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        hub = self.server_hub
        url = urlsplit(self.path)
        path, self.query = url.path, {k: v[-1] for k, v in parse_qs(url.query).items()}
        hub.requests.append((method, path))
        try:
            for route_method, pattern, handler in _ROUTES:
                match = re.fullmatch(pattern, path)
                if match and route_method == ("GET" if method == "HEAD" else method):
                    with hub._lock:
                        handler(self, **{k: unquote(v) for k, v in match.groupdict().items() if v is not None})
                    return
            hub.unhandled.append((method, path))
            raise HubError(404, f"stand-in Hub: no route for {method} {path}")
        except HubError as error:
            headers = dict(error.headers)
            if method in ("POST", "PUT"):  # the request body may be unread: do not reuse the connection
                headers["Connection"] = "close"
                self.close_connection = True
            if error.code:
                headers["X-Error-Code"] = error.code
            headers["X-Error-Message"] = error.message
            self._json({"error": error.message, **error.payload}, status=error.status, headers=headers)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            self.close_connection = True
            self._json({"error": f"bad request: {error}"}, status=400, headers={"Connection": "close"})

    def _body(self) -> bytes:
        hub = self.server_hub
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                total += size
                if total > hub.max_body_bytes:
                    raise HubError(413, "request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > hub.max_body_bytes:
            raise HubError(413, "request body too large")
        return self.rfile.read(length) if length else b""

    def _json_body(self) -> Any:
        return json.loads(self._body() or b"null")

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None, content_type: str = "") -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers, "application/json")

    def _user(self, required: bool) -> str | None:
        header = self.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else None
        user = self.server_hub.tokens.get(token) if token else None
        if token and user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        if required and user is None:
            raise HubError(401, "You must be authenticated to do this")
        return user

    def _repo(self, repo_id: str, write: bool = False) -> Repo:
        user = self._user(required=write)
        repo = self.server_hub.repos.get(repo_id)
        if repo is None or (repo.private and user is None):
            raise HubError(401 if user is None else 404, "Repository not found", "RepoNotFound")
        return repo

    def _revision(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Revision Not Found for {revision}", "RevisionNotFound")
        return commit

    # ----------------------------------------------------------------------------------------------------------
    # API routes
    # ----------------------------------------------------------------------------------------------------------

    def whoami(self) -> None:
        user = self._user(required=True)
        self._json({"type": "user", "name": user, "orgs": [], "auth": {"accessToken": {"role": "write"}}})

    def create_repo(self) -> None:
        user = self._user(required=True)
        payload = self._json_body()
        if payload.get("type") not in (None, "model"):
            raise HubError(400, "the stand-in only hosts model repos")
        name = payload.get("name") or ""
        repo_id = f"{payload.get('organization') or user}/{name}"
        if not re.fullmatch(_REPO, repo_id):
            raise HubError(400, f"invalid repo name {repo_id!r}")
        url = f"{self._base()}/{repo_id}"
        if repo_id in self.server_hub.repos:
            raise HubError(409, "You already created this model repo", payload={"url": url})
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        self.server_hub.create_repo(repo_id, private)
        self._json({"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})

    def validate_yaml(self) -> None:
        payload = self._json_body()
        metadata, errors = _front_matter(payload.get("content") or "")
        if errors:
            self._json({"errors": [{"message": message} for message in errors]}, status=400)
            return
        warnings = [] if metadata else [{"message": "empty or missing yaml metadata in repo card"}]
        self._json({"errors": [], "warnings": warnings})

    def model_info(self, repo: str, revision: str = "main") -> None:
        repo_ = self._repo(repo)
        commit = self._revision(repo_, revision)
        card, _ = _front_matter(commit.files["README.md"].data.decode()) if "README.md" in commit.files else ({}, [])
        siblings = []
        for path, blob in sorted(commit.files.items()):
            sibling = {"rfilename": path, "size": len(blob.data), "blobId": blob.git_oid}
            if blob.lfs:
                sibling["lfs"] = {"size": len(blob.data), "sha256": blob.sha256, "pointerSize": len(blob.pointer)}
            siblings.append(sibling)
        info = {
            "_id": hashlib.sha1(repo.encode()).hexdigest()[:24],
            "id": repo,
            "modelId": repo,
            "author": repo.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo_.created,
            "private": repo_.private,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": list((card or {}).get("tags") or []),
            "pipeline_tag": (card or {}).get("pipeline_tag"),
            "library_name": (card or {}).get("library_name"),
            "siblings": siblings,
        }
        if card:
            info["cardData"] = card
        self._json(info)

    def tree(self, repo: str, revision: str, path: str = "") -> None:
        commit = self._revision(self._repo(repo), revision)
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        recursive = self.query.get("recursive", "false").lower() in ("1", "true")
        entries, folders = [], set()
        for name, blob in sorted(commit.files.items()):
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix) :]
            if "/" in rest and not recursive:
                folders.add(prefix + rest.split("/")[0])
                continue
            if recursive:
                parts = rest.split("/")[:-1]
                folders.update(prefix + "/".join(parts[: i + 1]) for i in range(len(parts)))
            entry = {"type": "file", "oid": blob.git_oid, "size": len(blob.data), "path": name}
            if blob.lfs:
                entry["lfs"] = {"oid": blob.sha256, "size": len(blob.data), "pointerSize": len(blob.pointer)}
            entries.append(entry)
        if prefix and not entries and not folders:
            raise HubError(404, f"{path} does not exist", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        directories = [
            {"type": "directory", "oid": hashlib.sha1(name.encode()).hexdigest(), "size": 0, "path": name}
            for name in sorted(folders)
        ]
        self._json(directories + entries)

    def preupload(self, repo: str, revision: str) -> None:
        repo_ = self._repo(repo, write=True)
        commit = self._revision(repo_, revision)
        files = []
        for item in self._json_body()["files"]:
            lfs = item["size"] >= LFS_SIZE or any(fnmatch(item["path"], pattern) for pattern in LFS_PATTERNS)
            existing = commit.files.get(item["path"])
            oid = None if existing is None else (existing.sha256 if existing.lfs else existing.git_oid)
            files.append(
                {"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        self._json({"files": files, "commitOid": commit.oid})

    def refs(self, repo: str) -> None:
        repo_ = self._repo(repo)
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid}
            for name, oid in sorted(repo_.branches.items())
        ]
        self._json({"branches": branches, "tags": [], "converts": []})

    def create_branch(self, repo: str, branch: str) -> None:
        repo_ = self._repo(repo, write=True)
        payload = self._json_body() or {}
        if branch in repo_.branches:
            raise HubError(409, f"Branch {branch} already exists")
        start = self._revision(repo_, payload.get("startingPoint") or "main")
        repo_.branches[branch] = start.oid
        self._json({})

    def commit(self, repo: str, revision: str) -> None:
        repo_ = self._repo(repo, write=True)
        if self.query.get("create_pr"):
            raise HubError(400, "the stand-in does not implement pull requests")
        if revision not in repo_.branches:
            raise HubError(404, f"Branch {revision} not found", "RevisionNotFound")
        parent = repo_.commits[repo_.branches[revision]]
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "a commit starts with a header line")
        header = lines[0]["value"]
        if header.get("parentCommit") and header["parentCommit"] != parent.oid:
            raise HubError(412, "A commit has happened since the parent commit. Please retry.")
        files = dict(parent.files)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            path = value["path"]
            if ".." in path.split("/") or path.startswith("/"):
                raise HubError(400, f"invalid path {path!r}")
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, "files are committed base64-encoded")
                files[path] = Blob(base64.b64decode(value["content"], validate=True), lfs=False)
            elif key == "lfsFile":
                data = self.server_hub.lfs_objects.get(value["oid"])
                if data is None or len(data) != value["size"]:
                    raise HubError(422, f"LFS object {value['oid']} for {path} was not uploaded")
                files[path] = Blob(data, lfs=True)
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
            elif key == "deletedFolder":
                files = {name: blob for name, blob in files.items() if not name.startswith(path.rstrip("/") + "/")}
            else:
                raise HubError(400, f"unknown commit operation {key!r}")
        commit = self.server_hub._commit(
            repo_, parent, files, header.get("summary") or "", header.get("description") or ""
        )
        repo_.branches[revision] = commit.oid
        self._json(
            {"success": True, "commitOid": commit.oid, "commitUrl": f"{self._base()}/{repo}/commit/{commit.oid}"}
        )

    def lfs_batch(self, repo: str) -> None:
        self._repo(repo, write=True)
        payload = self._json_body()
        if payload.get("operation") != "upload":
            raise HubError(400, "the stand-in's LFS endpoint only uploads")
        objects = []
        for item in payload["objects"]:
            entry = {"oid": item["oid"], "size": item["size"]}
            if item["oid"] not in self.server_hub.lfs_objects:
                entry["actions"] = {
                    "upload": {"href": f"{self._base()}/lfs/upload/{item['oid']}"},
                    "verify": {"href": f"{self._base()}/lfs/verify"},
                }
            objects.append(entry)
        body = json.dumps({"transfer": "basic", "objects": objects}).encode()
        self._send(200, body, content_type="application/vnd.git-lfs+json")

    def lfs_upload(self, oid: str) -> None:
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, "uploaded content does not match its sha256")
        self.server_hub.lfs_objects[oid] = data
        self._send(200, b"")

    def lfs_verify(self) -> None:
        payload = self._json_body()
        data = self.server_hub.lfs_objects.get(payload["oid"])
        if data is None or len(data) != payload["size"]:
            raise HubError(404, "LFS object not found")
        self._json({})

    def resolve(self, repo: str, revision: str, path: str) -> None:
        commit = self._revision(self._repo(repo), revision)
        blob = commit.files.get(path)
        if blob is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{blob.git_oid}"', "Accept-Ranges": "bytes"}
        if blob.lfs:
            headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(len(blob.data))})
        data, status = blob.data, 200
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{min(end, len(data) - 1)}/{len(data)}"
            data, status = data[start : end + 1], 206
        self._send(status, data, headers, "application/octet-stream")

    def _base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"


def _front_matter(content: str) -> tuple[dict[str, Any] | None, list[str]]:
    """(metadata, errors) of a README: YAML between leading `---` lines, with a light check of `model-index`."""
    match = re.match(r"^\s*---\r?\n([\s\S]*?)\r?\n---\s*(\r?\n|$)", content)
    if not match:
        return None, []
    try:
        metadata = yaml.safe_load(match.group(1))
    except yaml.YAMLError as error:
        return None, [f"invalid YAML: {error}"]
    if metadata is None:
        return None, []
    if not isinstance(metadata, dict):
        return None, ["metadata must be a YAML mapping"]
    errors = []
    for model in metadata.get("model-index") or []:
        if not isinstance(model, dict) or not model.get("name"):
            errors.append("model-index entries need a name")
            continue
        for result in model.get("results") or []:
            if not isinstance(result.get("task"), dict) or not result["task"].get("type"):
                errors.append("model-index results need task.type")
            dataset = result.get("dataset")
            if not isinstance(dataset, dict) or not dataset.get("name") or not dataset.get("type"):
                errors.append("model-index results need dataset.name and dataset.type")
            for metric in result.get("metrics") or []:
                if not metric.get("type") or "value" not in metric:
                    errors.append("model-index metrics need a type and a value")
    return metadata, errors


_ROUTES = [
    ("GET", r"/api/whoami-v2", _Handler.whoami),
    ("POST", r"/api/repos/create", _Handler.create_repo),
    ("POST", r"/api/validate-yaml", _Handler.validate_yaml),
    ("GET", rf"/api/models/{_REPO}", _Handler.model_info),
    ("GET", rf"/api/models/{_REPO}/revision/(?P<revision>[^/]+)", _Handler.model_info),
    ("GET", rf"/api/models/{_REPO}/tree/(?P<revision>[^/]+)(?:/(?P<path>.*))?", _Handler.tree),
    ("POST", rf"/api/models/{_REPO}/preupload/(?P<revision>[^/]+)", _Handler.preupload),
    ("POST", rf"/api/models/{_REPO}/commit/(?P<revision>[^/]+)", _Handler.commit),
    ("GET", rf"/api/models/{_REPO}/refs", _Handler.refs),
    ("POST", rf"/api/models/{_REPO}/branch/(?P<branch>[^/]+)", _Handler.create_branch),
    ("POST", rf"/{_REPO}\.git/info/lfs/objects/batch", _Handler.lfs_batch),
    ("PUT", r"/lfs/upload/(?P<oid>[0-9a-f]{64})", _Handler.lfs_upload),
    ("POST", r"/lfs/verify", _Handler.lfs_verify),
    ("GET", rf"/{_REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)", _Handler.resolve),
]


class EndpointServer:
    """The handler behind a local HTTP endpoint, as Inference Endpoints would serve it (JSON in, JSON out)."""

    def __init__(self, handler, token: str):
        endpoint_handler = handler

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                if self.headers.get("Authorization") != f"Bearer {token}":
                    self.send_response(401)
                    self.end_headers()
                    return
                data = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                body = json.dumps(endpoint_handler(data)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    def __enter__(self) -> str:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
