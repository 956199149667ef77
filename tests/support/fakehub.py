"""A model hub in a thread: a real HTTP server that speaks the Hugging Face
Hub's API for the calls `qfarm publish` makes through huggingface_hub
(read from its source, version 1.33): whoami-v2, repos/create, the repo and
revision info, validate-yaml, preupload, the Git LFS batch API with the
`basic` transfer (a PUT per object), the NDJSON commit, and the commit list
upload_large_folder reads. It keeps repos, commits and blobs in memory, and
checks what the Hub checks for these calls: the token, the namespace, write
access, the card's metadata, each LFS object's sha256 and size.

Faults on demand: `cut` names a step ("lfs_put" or "commit") whose next
request (or `cut_times` of them) has its connection closed without an answer,
as a network that drops mid-upload does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlparse

import yaml

LICENSES = {"apache-2.0", "mit", "bsd-3-clause", "cc-by-4.0", "cc-by-nc-4.0", "llama2", "llama3", "llama3.1", "llama3.2",
            "gemma", "openrail", "other", "unknown"}
RELATIONS = {"adapter", "merge", "quantized", "finetune"}


@dataclass
class User:
    name: str
    orgs: list[str]
    write: bool = True
    # What whoami-v2 says of the token: read, write, or fineGrained (whose
    # rights show only when it is used).
    role: str = "write"


@dataclass
class Repo:
    owner: str
    private: bool
    # Commits, oldest first: (oid, message, {path: ("regular", bytes) | ("lfs", sha256 hex)}).
    commits: list[tuple[str, str, dict[str, tuple[str, Any]]]] = field(default_factory=list)

    @property
    def head(self) -> dict[str, tuple[str, Any]]:
        return self.commits[-1][2]


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    def __init__(self) -> None:
        self.users = {"tok-alice": User("alice", ["team"]), "tok-alice-read": User("alice", ["team"], False, "read"),
                      "tok-alice-fine": User("alice", ["team"], False, "fineGrained"), "tok-bob": User("bob", [])}
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.cut: str | None = None
        self.cut_times = 1
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeHub:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- what tests read -------------------------------------------------------
    def files(self, repo: str) -> dict[str, bytes]:
        """The repo's files at its head, LFS objects resolved to their bytes."""
        return {p: (v if kind == "regular" else self.lfs[v]) for p, (kind, v) in self.repos[repo].head.items()}

    def commit_count(self, repo: str) -> int:
        return len(self.repos[repo].commits)

    def add_repo(self, repo: str, files: dict[str, bytes], private: bool = False) -> None:
        """A repo made outside the test (a base model, someone else's repo)."""
        tree = {".gitattributes": ("regular", b"*.gguf filter=lfs\n")} | {p: ("regular", b) for p, b in files.items()}
        self.repos[repo] = Repo(repo.split("/")[0], private, [(hashlib.sha1(repo.encode()).hexdigest(), "initial", tree)])

    # -- the API ---------------------------------------------------------------
    def user(self, headers: Any) -> User | None:
        auth = headers.get("authorization") or ""
        return self.users.get(auth.removeprefix("Bearer ").strip()) if auth.startswith("Bearer ") else None

    def can_see(self, user: User | None, repo: Repo) -> bool:
        return not repo.private or (user is not None and repo.owner in (user.name, *user.orgs))

    def can_write(self, user: User | None, repo_id: str) -> bool:
        owner = repo_id.split("/")[0]
        return user is not None and user.write and owner in (user.name, *user.orgs)


class _Cut(Exception):
    """Close the connection without an answer."""


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        # -- plumbing ----------------------------------------------------------
        def _body(self) -> bytes:
            n = int(self.headers.get("content-length") or 0)
            return self.rfile.read(n) if n else b""

        def _send(self, status: int, payload: Any = None, headers: dict[str, str] | None = None) -> None:
            body = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, message: str, code: str | None = None) -> None:
            headers = {"x-error-message": message} | ({"x-error-code": code} if code else {})
            self._send(status, {"error": message}, headers)

        def _maybe_cut(self, step: str) -> None:
            with hub.lock:
                if hub.cut != step or hub.cut_times <= 0:
                    return
                hub.cut_times -= 1
            raise _Cut()

        def _dispatch(self, method: str) -> None:
            path = unquote(urlparse(self.path).path)
            hub.requests.append((method, path))
            try:
                self._route(method, path)
            except _Cut:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def do_PUT(self) -> None:
            self._dispatch("PUT")

        # -- routes ------------------------------------------------------------
        def _route(self, method: str, path: str) -> None:
            parts = path.strip("/").split("/")
            user = hub.user(self.headers)
            if method == "GET" and path == "/api/whoami-v2":
                if user is None:
                    return self._error(401, "Invalid credentials in Authorization header")
                return self._send(200, {"type": "user", "name": user.name, "orgs": [{"name": o} for o in user.orgs],
                                        "auth": {"accessToken": {"role": user.role}}})
            if method == "POST" and path == "/api/repos/create":
                return self._create(user, json.loads(self._body()))
            if method == "POST" and path == "/api/validate-yaml":
                return self._validate(json.loads(self._body()))
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                repo_id, rest = f"{parts[2]}/{parts[3]}", parts[4:]
                repo = hub.repos.get(repo_id)
                if repo is None or not hub.can_see(user, repo):
                    self._body()
                    return self._error(404, "Repository not found", "RepoNotFound")
                if method == "GET" and (not rest or rest[0] == "revision"):
                    return self._info(repo_id, repo)
                if method == "GET" and rest[:1] == ["commits"]:
                    return self._send(200, [{"id": oid, "title": msg, "message": msg, "authors": [],
                                             "date": "2026-11-29T00:00:00.000Z"} for oid, msg, _ in reversed(repo.commits)])
                if method == "POST" and rest[:1] in (["preupload"], ["commit"]):
                    body = self._body()
                    if user is None:
                        return self._error(401, "Invalid credentials in Authorization header")
                    if not hub.can_write(user, repo_id):
                        return self._error(403, f"You don't have the rights to write to {repo_id}")
                    return self._preupload(repo, json.loads(body)) if rest[0] == "preupload" else self._commit(repo_id, repo, body)
            if method == "POST" and len(parts) == 6 and parts[1].endswith(".git") and parts[2:] == ["info", "lfs", "objects", "batch"]:
                repo_id = f"{parts[0]}/{parts[1].removesuffix('.git')}"
                body = json.loads(self._body())
                if not hub.can_write(user, repo_id) or repo_id not in hub.repos:
                    return self._error(403, f"You don't have the rights to write to {repo_id}")
                return self._lfs_batch(body)
            if method == "PUT" and parts[:1] == ["lfs-upload"] and len(parts) == 2:
                return self._lfs_put(parts[1])
            self._body()
            self._error(404, f"no route {method} {path}")

        def _create(self, user: User | None, body: dict) -> None:
            if user is None:
                return self._error(401, "Invalid credentials in Authorization header")
            owner = body.get("organization") or user.name
            repo_id = f"{owner}/{body['name']}"
            if repo_id in hub.repos:
                # The Hub's 409 names the repo's URL, which huggingface_hub returns.
                return self._send(409, {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"},
                                  {"x-error-message": "You already created this model repo"})
            if not hub.can_write(user, repo_id):
                return self._error(403, f"You don't have the rights to create a model under the namespace \"{owner}\"")
            hub.add_repo(repo_id, {}, private=body.get("visibility") == "private")
            self._send(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id, "id": repo_id})

        def _info(self, repo_id: str, repo: Repo) -> None:
            card: dict = {}
            readme = repo.head.get("README.md")
            if readme and readme[0] == "regular":
                card = _front_matter(readme[1].decode()) or {}
            self._send(200, {"id": repo_id, "modelId": repo_id, "sha": repo.commits[-1][0], "private": repo.private,
                             "siblings": [{"rfilename": p} for p in sorted(repo.head)], "cardData": card, "tags": []})

        def _validate(self, body: dict) -> None:
            errors = _card_errors(body.get("content") or "")
            if errors:
                return self._send(400, {"errors": [{"message": e} for e in errors]})
            self._send(200, {"warnings": []})

        def _preupload(self, repo: Repo, body: dict) -> None:
            out = []
            for f in body["files"]:
                sample = base64.b64decode(f["sample"])
                lfs = f["path"].endswith((".gguf", ".safetensors", ".bin")) or f["size"] > 10 * 2**20 or b"\0" in sample
                current = repo.head.get(f["path"])
                oid = None
                if current is not None:
                    oid = current[1] if current[0] == "lfs" else git_blob_sha1(current[1])
                out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
            self._send(200, {"files": out})

        def _lfs_batch(self, body: dict) -> None:
            objects = []
            for o in body["objects"]:
                entry: dict[str, Any] = {"oid": o["oid"], "size": o["size"]}
                if o["oid"] not in hub.lfs:
                    entry["actions"] = {"upload": {"href": f"{hub.url}/lfs-upload/{o['oid']}"}}
                objects.append(entry)
            self._send(200, {"transfer": "basic", "objects": objects})

        def _lfs_put(self, oid: str) -> None:
            n = int(self.headers.get("content-length") or 0)
            if hub.cut == "lfs_put" and hub.cut_times > 0:
                self.rfile.read(min(n, 1024))  # part of the body, then the line drops
                self._maybe_cut("lfs_put")
            data = self.rfile.read(n)
            if hashlib.sha256(data).hexdigest() != oid:
                return self._error(400, "sha256 of the upload does not match its oid")
            hub.lfs[oid] = data
            self._send(200)

        def _commit(self, repo_id: str, repo: Repo, body: bytes) -> None:
            self._maybe_cut("commit")
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            header = next(line["value"] for line in lines if line["key"] == "header")
            tree = dict(repo.head)
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "file":
                    tree[value["path"]] = ("regular", base64.b64decode(value["content"]))
                elif key == "lfsFile":
                    data = hub.lfs.get(value["oid"])
                    if data is None or len(data) != value["size"]:
                        return self._error(422, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                    tree[value["path"]] = ("lfs", value["oid"])
                elif key == "deletedFile":
                    tree.pop(value["path"], None)
            oid = hashlib.sha1(json.dumps([repo.commits[-1][0], sorted((p, str(v)) for p, v in tree.items())]).encode()).hexdigest()
            with hub.lock:
                repo.commits.append((oid, header["summary"], tree))
            self._send(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{oid}", "commitOid": oid,
                             "pullRequestUrl": None})

    return Handler


def _front_matter(text: str) -> dict | None:
    if not text.startswith("---\n"):
        return None
    end = text.find("\n---", 4)
    return yaml.safe_load(text[4:end]) if end > 0 else None


def _card_errors(content: str) -> list[str]:
    """What the Hub's validate-yaml would say of a card's metadata."""
    try:
        meta = _front_matter(content)
    except yaml.YAMLError as exc:
        return [f"YAML: {exc}"]
    if meta is None:
        return []
    if not isinstance(meta, dict):
        return ["metadata must be a YAML mapping"]
    errors = []
    if "license" in meta and meta["license"] not in LICENSES:
        errors.append(f"\"license\" must be a known license id, not {meta['license']!r}")
    base = meta.get("base_model")
    if base is not None and not (isinstance(base, str) or (isinstance(base, list) and all(isinstance(b, str) for b in base))):
        errors.append("\"base_model\" must be a string or a list of strings")
    if "base_model_relation" in meta and meta["base_model_relation"] not in RELATIONS:
        errors.append(f"\"base_model_relation\" must be one of {sorted(RELATIONS)}")
    if "tags" in meta and not (isinstance(meta["tags"], list) and all(isinstance(t, str) for t in meta["tags"])):
        errors.append("\"tags\" must be a list of strings")
    for entry in meta.get("model-index") or []:
        for result in (entry or {}).get("results") or []:
            task, dataset = result.get("task") or {}, result.get("dataset") or {}
            if not isinstance(task.get("type"), str) or not isinstance(dataset.get("type"), str) \
                    or not isinstance(dataset.get("name"), str):
                errors.append("\"model-index\": each result needs task.type, dataset.type and dataset.name")
            for metric in result.get("metrics") or []:
                if not isinstance(metric.get("type"), str) or not isinstance(metric.get("value"), (int, float, str)):
                    errors.append("\"model-index\": each metric needs a type and a value")
    return errors
