"""A small Hugging Face Hub-compatible HTTP server for tests (standard library only).

The real `huggingface_hub` / `datasets` / `transformers` clients talk to it through
`HF_ENDPOINT=http://127.0.0.1:PORT` (see tests/conftest.py, fixture `local_hub`).
Routes, and the client calls that need them (shapes read from huggingface_hub 2.x sources):

  GET  /api/whoami-v2                                   HfApi.whoami (+ run_job, which asks the namespace)
  GET  /api/agent-harnesses                             build_hf_headers (user-agent agent detection)
  POST /api/repos/create, DELETE /api/repos/delete      create_repo (409 + "url" when it exists), delete_repo
  POST /api/validate-yaml                               upload_folder / create_commit when README.md is added
  GET  /api/{models|datasets}/{id}[/revision/{rev}]     repo_info / model_info (cardData from README.md) / dataset_info, HfFileSystem
  GET  /api/{t}s/{id}/tree/{rev}[/{path}]               list_repo_tree / list_repo_files, HfFileSystem.ls/glob
  POST /api/{t}s/{id}/paths-info/{rev}                  get_paths_info, HfFileSystem.info
  GET  /api/{t}s/{id}/commits/{rev}                     list_repo_commits
  POST /api/{t}s/{id}/preupload/{rev}                   create_commit / upload_* (regular vs LFS decision)
  POST /api/{t}s/{id}/commit/{rev}                      create_commit (NDJSON: header/file/lfsFile/deleted*)
  POST /[datasets/]{id}.git/info/lfs/objects/batch      LFS batch API ("basic" transfer only, never xet)
  PUT  /_lfs/{sha256}, POST .../objects/verify          LFS upload action and its verify action
  GET|HEAD /[datasets/]{id}/resolve/{rev}/{path}        hf_hub_download (HEAD metadata), HfFileSystem (Range)
  POST /api/jobs/{namespace}, GET /api/jobs/{namespace}[/{job_id}], POST .../{job_id}/cancel
                                                        run_job / run_uv_job, list_jobs, inspect_job, cancel_job

Storage under `root`: `objects/<sha256>` holds every file content ever committed (content-addressed),
`{models|datasets}/{namespace}/{name}/` is a plain checkout of `main` (handy for assertions).
Repos and their commit history (a list of commits, each with a sha and the full file manifest) live in
memory. Every request is appended to `LocalHub.requests` (method, path, query, headers, json, status).

Not implemented: xet (clients must run with HF_HUB_DISABLE_XET=1, as conftest sets, since huggingface_hub
uploads through xet whenever hf_xet is installed without asking the server), buckets (so
`run_uv_job` with a *local* script file, which uploads it to a bucket through xet, is not supported),
branches other than `main`, pull requests, spaces.
"""

import base64
import datetime
import fnmatch
import hashlib
import json
import re
import shutil
import sys
import threading
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit


LFS_PATTERNS = (
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack *.npy *.npz "
    "*.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors saved_model/**/* *.tar.* *.tar "
    "*.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents* *.jpg *.jpeg *.png *.webp *.mp3 *.wav *.flac"
).split()
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()
MAX_REGULAR_SIZE = 10 * 1024 * 1024  # the Hub refuses regular (non-LFS) files above 10 MB
NS, NAME = r"(?P<ns>[^/]+)", r"(?P<name>[^/]+)"
REPO = rf"/api/(?P<t>model|dataset)s/{NS}/{NAME}"


class HubError(Exception):
    """Answered as an error; `code` goes to X-Error-Code, which huggingface_hub maps to its exceptions."""

    def __init__(self, status, message, code=None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _truthy(value) -> bool:
    return str(value).lower() in ("1", "true", "yes")


class LocalHub:
    """The server state plus a background ThreadingHTTPServer. Use `start()`/`stop()` or the fixture."""

    def __init__(self, root, port=0, token="hf_local_test_token_0123456789", user="local-user"):
        self.root, self.token, self.user = Path(root), token, user
        (self.root / "objects").mkdir(parents=True, exist_ok=True)
        self.repos = {}  # (repo_type, repo_id) -> {"private": bool, "created": str, "commits": [commit, ...]}
        self.jobs = {}  # job_id -> job JSON as returned to the client
        self.requests = []  # one dict per request received
        self.lock = threading.RLock()
        self.server = _Server(("127.0.0.1", port), _Handler)
        self.server.hub = self
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = None

    def start(self):
        self._thread = threading.Thread(target=self.server.serve_forever, name="local-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    # ---- helpers for tests -------------------------------------------------------------------------------
    def find_requests(self, method=None, path_regex=None):
        """Recorded requests filtered by method and by a regex searched in the path."""
        return [r for r in list(self.requests) if (method is None or r["method"] == method)
                and (path_regex is None or re.search(path_regex, r["path"]))]

    def commits(self, repo_id, repo_type="model"):
        """Commit history of a repo, oldest first: dicts with id, title, message, date, files."""
        return list(self._repo(repo_type, repo_id, self.user)["commits"])

    def read_file(self, repo_id, path, repo_type="model", revision="main") -> bytes:
        entry = self._commit(self._repo(repo_type, repo_id, self.user), revision)["files"][path]
        return (self.root / "objects" / entry["sha256"]).read_bytes()

    # ---- state -------------------------------------------------------------------------------------------
    def _repo(self, repo_type, repo_id, user=None):
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo["private"] and user is None):
            raise HubError(401 if repo else 404, "Repository not found", "RepoNotFound")
        return repo

    def _commit(self, repo, revision):
        if revision == "main":
            return repo["commits"][-1]
        for commit in reversed(repo["commits"]):
            if commit["id"] == revision or (len(revision) >= 7 and commit["id"].startswith(revision)):
                return commit
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _store(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        target = self.root / "objects" / sha256
        if not target.exists():
            tmp = target.with_suffix(f".{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(data)
            tmp.replace(target)
        return sha256

    def _entry(self, sha256, lfs):
        size = (self.root / "objects" / sha256).stat().st_size
        data = _lfs_pointer(sha256, size) if lfs else (self.root / "objects" / sha256).read_bytes()
        return {"sha256": sha256, "size": size, "lfs": lfs, "oid": _git_sha1(data), "pointer_size": len(data)}

    def _add_commit(self, repo_type, repo_id, files, title, message=""):
        repo = self.repos[(repo_type, repo_id)]
        parent = repo["commits"][-1]["id"] if repo["commits"] else ""
        manifest = json.dumps({p: e["sha256"] for p, e in sorted(files.items())})
        sha = hashlib.sha1(f"{parent}\n{title}\n{uuid.uuid4()}\n{manifest}".encode()).hexdigest()
        commit = {"id": sha, "title": title, "message": message, "date": _now(), "files": files}
        repo["commits"].append(commit)
        # Refresh the plain checkout of main.
        checkout = self.root / f"{repo_type}s" / repo_id
        shutil.rmtree(checkout, ignore_errors=True)
        for path, entry in files.items():
            (checkout / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.root / "objects" / entry["sha256"], checkout / path)
        return commit

    def _is_lfs(self, commit, path, size, sample: bytes):
        gitattributes = self.read_object(commit["files"].get(".gitattributes"))
        patterns = [line.split()[0] for line in gitattributes.decode().splitlines() if "filter=lfs" in line]
        name = path.rsplit("/", 1)[-1]
        return (size > MAX_REGULAR_SIZE or b"\0" in sample
                or any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(path, p) for p in patterns))

    def read_object(self, entry) -> bytes:
        return (self.root / "objects" / entry["sha256"]).read_bytes() if entry else b""

    def _path_info(self, repo, commit, path, expand):
        """Tree/paths-info JSON for a file or a folder, or None when `path` does not exist."""
        entry = commit["files"].get(path)
        if entry is None and not any(p.startswith(path + "/") for p in commit["files"]):
            return None
        if entry is None:
            info = {"type": "directory", "oid": hashlib.sha1(f"{commit['id']}:{path}".encode()).hexdigest(),
                    "size": 0, "path": path}
        else:
            info = {"type": "file", "oid": entry["oid"], "size": entry["size"], "path": path}
            if entry["lfs"]:
                info["lfs"] = {"oid": entry["sha256"], "size": entry["size"], "pointerSize": entry["pointer_size"]}
        if expand:  # last commit that changed the file (or anything under the folder)
            def snapshot(c):
                return {p: e["sha256"] for p, e in c["files"].items() if p == path or p.startswith(path + "/")}
            history = repo["commits"][: repo["commits"].index(commit) + 1]
            last = next(c for i, c in reversed(list(enumerate(history)))
                        if i == 0 or snapshot(c) != snapshot(history[i - 1]))
            info["lastCommit"] = {"id": last["id"], "title": last["title"], "date": last["date"]}
        return info

    def _repo_url(self, repo_type, repo_id):
        return f"{self.endpoint}/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # clients closing keep-alive connections are not errors
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every answer carries a Content-Length

    def log_message(self, *args):  # keep pytest output quiet
        pass

    def do_GET(self):
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    # ---- plumbing ----------------------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk (and after the last, empty one)
                if size == 0:
                    return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status, body=b"", headers=None, content_type="application/json"):
        """Prepare the answer; `_dispatch` writes it once the state lock is released."""
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        self.record["status"] = status
        headers = {"Content-Type": content_type, "Content-Length": str(len(body)), **(headers or {})}
        self.answer = (status, body, headers)

    def _dispatch(self):
        hub: LocalHub = self.server.hub
        url = urlsplit(self.path)
        body = self._read_body()
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.body = body
        record = {"method": self.command, "path": unquote(url.path), "query": parse_qs(url.query),
                  "headers": {k.lower(): v for k, v in self.headers.items()}, "json": None, "body_size": len(body),
                  "status": None}
        content_type = self.headers.get("Content-Type", "")
        try:
            if "ndjson" in content_type:
                record["json"] = [json.loads(line) for line in body.splitlines() if line.strip()]
            elif "json" in content_type and body:
                record["json"] = json.loads(body)
            elif "form-urlencoded" in content_type:
                record["json"] = parse_qs(body.decode())
        except ValueError:
            pass
        self.json, self.record = record["json"], record
        hub.requests.append(record)
        try:
            for method, pattern, handler in ROUTES:
                match = re.fullmatch(pattern, url.path)
                if match and self.command in method.split("|"):
                    groups = {k: unquote(v) if v is not None else None for k, v in match.groupdict().items()}
                    if "ns" in groups:
                        groups["repo_id"] = f"{groups.pop('ns')}/{groups.pop('name')}"
                    with hub.lock:
                        handler(self, hub, **groups)
                    break
            else:
                raise HubError(404, f"No route for {self.command} {url.path}")
        except HubError as e:
            headers = {"X-Error-Message": e.message, **({"X-Error-Code": e.code} if e.code else {})}
            commit = getattr(e, "commit", None)
            self._send(e.status, {"error": e.message}, {**headers, **({"X-Repo-Commit": commit} if commit else {})})
        except Exception as e:  # a bug or a missing feature: 501 is not retried by the clients, so it fails fast
            traceback.print_exc()
            self._send(501, {"error": f"local hub failed on {self.command} {url.path}: {e!r}"})
        status, body, headers = self.answer
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _user(self, required=False):
        """The user name for a valid bearer token, None without a token; 401 for a wrong token."""
        auth = self.headers.get("Authorization", "")
        if auth:
            if auth != f"Bearer {self.server.hub.token}":
                raise HubError(401, "Invalid credentials in Authorization header")
            return self.server.hub.user
        if required:
            raise HubError(401, "You must be authenticated to access this resource")
        return None

    # ---- account and repos -------------------------------------------------------------------------------
    def whoami(self, hub):
        user = self._user(required=True)
        self._send(200, {"type": "user", "id": f"{user}-id", "name": user, "fullname": "Local User",
                         "email": f"{user}@example.com", "emailVerified": True, "isPro": False, "orgs": [],
                         "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}},
                         })

    def agent_harnesses(self, hub):
        self._send(200, {"standardEnvVars": [], "harnesses": {}})

    def create_repo(self, hub):
        user = self._user(required=True)
        repo_type = self.json.get("type") or "model"
        if repo_type not in ("model", "dataset"):
            raise HubError(400, f"Repo type {repo_type!r} is not supported by the local hub")
        repo_id = f"{self.json.get('organization') or user}/{self.json['name']}"
        url = hub._repo_url(repo_type, repo_id)
        if (repo_type, repo_id) in hub.repos:
            return self._send(409, {"error": "You already created this repo", "url": url})
        hub.repos[(repo_type, repo_id)] = {"private": self.json.get("visibility") == "private" or
                                           bool(self.json.get("private")), "created": _now(), "commits": []}
        hub._add_commit(repo_type, repo_id, {".gitattributes": hub._entry(hub._store(GITATTRIBUTES), False)},
                        "initial commit")
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def delete_repo(self, hub):
        user = self._user(required=True)
        key = (self.json.get("type") or "model", f"{self.json.get('organization') or user}/{self.json['name']}")
        hub._repo(*key, user=user)
        del hub.repos[key]
        shutil.rmtree(hub.root / f"{key[0]}s" / key[1], ignore_errors=True)
        self._send(200, {})

    def validate_yaml(self, hub):
        import yaml  # installed with datasets / huggingface_hub's users; only needed for this route

        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", self.json.get("content", ""), re.DOTALL)
        try:
            if match and not isinstance(yaml.safe_load(match.group(1)) or {}, dict):
                raise yaml.YAMLError("metadata must be a mapping")
        except yaml.YAMLError as e:
            return self._send(400, {"errors": [{"message": f"Invalid YAML in README.md: {e}"}], "warnings": []})
        self._send(200, {"errors": [], "warnings": []})

    def repo_info(self, hub, t, repo_id, rev="main"):
        repo = hub._repo(t, repo_id, self._user())
        commit = hub._commit(repo, rev or "main")
        siblings = [{"rfilename": p, "size": e["size"], "blobId": e["oid"],
                     **({"lfs": {"size": e["size"], "sha256": e["sha256"], "pointerSize": e["pointer_size"]}}
                        if e["lfs"] else {})} for p, e in sorted(commit["files"].items())]
        self._send(200, {"id": repo_id, "author": repo_id.split("/")[0], "sha": commit["id"],
                         "private": repo["private"], "gated": False, "disabled": False, "downloads": 0, "likes": 0,
                         "tags": [], "createdAt": repo["created"], "lastModified": commit["date"],
                         "siblings": siblings, "usedStorage": sum(e["size"] for e in commit["files"].values()),
                         **({"cardData": card_data} if (card_data := _card_data(hub, commit)) is not None else {})})

    def tree(self, hub, t, repo_id, rev, path=None):
        repo = hub._repo(t, repo_id, self._user())
        commit = hub._commit(repo, rev)
        path = (path or "").strip("/")
        if path and (path in commit["files"] or hub._path_info(repo, commit, path, False) is None):
            raise HubError(404, f"{path} does not exist on {rev}", "EntryNotFound")
        prefix = path + "/" if path else ""
        names = set()
        for file_path in commit["files"]:
            if file_path.startswith(prefix):
                parts = file_path[len(prefix):].split("/")
                depth = len(parts) if _truthy(self.query.get("recursive")) else 1
                names.update(prefix + "/".join(parts[:i]) for i in range(1, depth + 1))
        infos = [hub._path_info(repo, commit, name, _truthy(self.query.get("expand"))) for name in sorted(names)]
        self._send(200, sorted(infos, key=lambda i: (i["type"] != "directory", i["path"])))

    def paths_info(self, hub, t, repo_id, rev):
        repo = hub._repo(t, repo_id, self._user())
        commit = hub._commit(repo, rev)
        form = self.json or {}
        expand = _truthy((form.get("expand") or ["false"])[0])
        infos = [hub._path_info(repo, commit, p.strip("/"), expand) for p in form.get("paths", [])]
        self._send(200, [info for info in infos if info])

    def commits(self, hub, t, repo_id, rev):
        repo = hub._repo(t, repo_id, self._user())
        history = repo["commits"][: repo["commits"].index(hub._commit(repo, rev)) + 1]
        self._send(200, [{"id": c["id"], "title": c["title"], "message": c["message"], "date": c["date"],
                          "authors": [{"user": hub.user}]} for c in reversed(history)])

    # ---- uploads -----------------------------------------------------------------------------------------
    def preupload(self, hub, t, repo_id, rev):
        repo = hub._repo(t, repo_id, self._user(required=True))
        commit = hub._commit(repo, rev)
        files = []
        for f in self.json["files"]:
            lfs = hub._is_lfs(commit, f["path"], f["size"], base64.b64decode(f["sample"]))
            existing = commit["files"].get(f["path"])
            oid = existing and (existing["sha256"] if lfs else _git_sha1(hub.read_object(existing)))
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": oid})
        self._send(200, {"files": files, "commitOid": commit["id"]})

    def commit(self, hub, t, repo_id, rev):
        repo = hub._repo(t, repo_id, self._user(required=True))
        if rev != "main":
            raise HubError(400, "The local hub only supports commits to main")
        head = repo["commits"][-1]
        files, header = dict(head["files"]), {}
        for line in self.json or []:
            key, value = line["key"], line["value"]
            if key == "header":
                header = value
                if value.get("parentCommit") not in (None, head["id"]):
                    raise HubError(412, "A commit has happened since. Please refresh and try again.")
            elif key == "file":
                files[value["path"]] = hub._entry(hub._store(base64.b64decode(value["content"])), False)
            elif key == "lfsFile":
                if not (hub.root / "objects" / value["oid"]).exists():
                    raise HubError(422, f"LFS object {value['oid']} of {value['path']} was not uploaded")
                files[value["path"]] = hub._entry(value["oid"], True)
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, f"{value['path']} does not exist", "EntryNotFound")
            elif key == "deletedFolder":
                files = {p: e for p, e in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
        new = hub._add_commit(t, repo_id, files, header.get("summary") or "Update", header.get("description", ""))
        self._send(200, {"success": True, "commitOid": new["id"], "pullRequestUrl": None,
                         "commitUrl": f"{hub._repo_url(t, repo_id)}/commit/{new['id']}"})

    def lfs_batch(self, hub, datasets, repo_id):
        hub._repo("dataset" if datasets else "model", repo_id, self._user(required=True))
        git_url = f"{hub.endpoint}/{datasets or ''}{repo_id}.git/info/lfs/objects/verify"
        objects = []
        for obj in self.json["objects"]:
            answer = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not (hub.root / "objects" / obj["oid"]).exists():
                answer["actions"] = {"upload": {"href": f"{hub.endpoint}/_lfs/{obj['oid']}"},
                                     "verify": {"href": git_url}}
            objects.append(answer)
        self._send(200, {"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

    def lfs_upload(self, hub, oid):
        if hashlib.sha256(self.body).hexdigest() != oid:
            raise HubError(400, "Uploaded content does not match its sha256")
        hub._store(self.body)
        self._send(200, b"", {"ETag": f'"{oid}"'})

    def lfs_verify(self, hub, datasets, repo_id):
        path = hub.root / "objects" / self.json["oid"]
        if not path.exists() or path.stat().st_size != self.json["size"]:
            raise HubError(404, "LFS object not found")
        self._send(200, {"success": True})

    # ---- downloads ---------------------------------------------------------------------------------------
    def resolve(self, hub, datasets, repo_id, rev, path):
        repo = hub._repo("dataset" if datasets else "model", repo_id, self._user())
        commit = hub._commit(repo, rev)
        entry = commit["files"].get(path)
        if entry is None:
            error = HubError(404, "Entry not found", "EntryNotFound")
            error.commit = commit["id"]
            raise error
        data = hub.read_object(entry)
        headers = {"X-Repo-Commit": commit["id"], "ETag": f'"{entry["oid"]}"', "Accept-Ranges": "bytes"}
        if entry["lfs"]:
            headers.update({"X-Linked-Etag": f'"{entry["sha256"]}"', "X-Linked-Size": str(entry["size"])})
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if match and self.command == "GET":
            start, end = match.groups()
            if start:
                start, end = int(start), min(int(end or len(data) - 1), len(data) - 1)
            else:  # suffix range: the last `end` bytes
                start, end = max(len(data) - int(end or 0), 0), len(data) - 1
            if start >= len(data) or start > end:
                raise HubError(416, "Requested range not satisfiable")
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(206, data[start:end + 1], headers, "application/octet-stream")
        self._send(200, data, headers, "application/octet-stream")

    # ---- jobs --------------------------------------------------------------------------------------------
    def create_job(self, hub, namespace):
        self._user(required=True)
        spec, job_id = self.json, uuid.uuid4().hex[:24]
        hub.jobs[job_id] = {
            "id": job_id, "createdAt": _now(), "owner": {"id": f"{namespace}-id", "name": namespace, "type": "user"},
            **{key: spec.get(key) for key in ("dockerImage", "spaceId", "command", "arguments", "environment",
                                              "flavor", "labels", "timeoutSeconds")},
            "secrets": sorted(spec.get("secrets") or {}),  # names only: values are never echoed back
            "status": {"stage": "RUNNING", "message": None},
        }
        self._send(200, hub.jobs[job_id])

    def list_jobs(self, hub, namespace):
        self._user(required=True)
        self._send(200, [job for job in hub.jobs.values() if job["owner"]["name"] == namespace])

    def job(self, hub, namespace, job_id, action=None):
        self._user(required=True)
        if job_id not in hub.jobs:
            raise HubError(404, "Job not found")
        if action == "cancel":
            hub.jobs[job_id]["status"] = {"stage": "CANCELED", "message": None}
        self._send(200, hub.jobs[job_id])


_DS, _REV, _PATH = r"(?P<datasets>datasets/)?", r"(?P<rev>[^/]+)", r"(?P<path>.+)"
ROUTES = [
    ("GET", r"/api/whoami-v2", _Handler.whoami),
    ("GET", r"/api/agent-harnesses", _Handler.agent_harnesses),
    ("POST", r"/api/repos/create", _Handler.create_repo),
    ("DELETE", r"/api/repos/delete", _Handler.delete_repo),
    ("POST", r"/api/validate-yaml", _Handler.validate_yaml),
    ("GET", rf"{REPO}(?:/revision/{_REV})?", _Handler.repo_info),
    ("GET", rf"{REPO}/tree/{_REV}(?:/{_PATH})?", _Handler.tree),
    ("POST", rf"{REPO}/paths-info/{_REV}", _Handler.paths_info),
    ("GET", rf"{REPO}/commits/{_REV}", _Handler.commits),
    ("POST", rf"{REPO}/preupload/{_REV}", _Handler.preupload),
    ("POST", rf"{REPO}/commit/{_REV}", _Handler.commit),
    ("POST", rf"/{_DS}{NS}/(?P<name>[^/]+?)\.git/info/lfs/objects/batch", _Handler.lfs_batch),
    ("POST", rf"/{_DS}{NS}/(?P<name>[^/]+?)\.git/info/lfs/objects/verify", _Handler.lfs_verify),
    ("PUT", r"/_lfs/(?P<oid>[0-9a-f]{64})", _Handler.lfs_upload),
    ("GET|HEAD", rf"/{_DS}{NS}/{NAME}/resolve/{_REV}/{_PATH}", _Handler.resolve),
    ("POST", r"/api/jobs/(?P<namespace>[^/]+)", _Handler.create_job),
    ("GET", r"/api/jobs/(?P<namespace>[^/]+)", _Handler.list_jobs),
    ("GET|POST", r"/api/jobs/(?P<namespace>[^/]+)/(?P<job_id>[^/]+)(?:/(?P<action>cancel))?", _Handler.job),
]


def _card_data(hub, commit):
    """The YAML front matter of the commit's README.md, as the Hub's `cardData` (None without one)."""
    import yaml

    entry = commit["files"].get("README.md")
    if entry is None:
        return None
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", (hub.root / "objects" / entry["sha256"]).read_text(), re.DOTALL)
    data = yaml.safe_load(match.group(1)) if match else None
    return data if isinstance(data, dict) else None
