"""Spaces on the local hub: tests/hub_server.py serves models and datasets only; `add_space_support` adds the few
routes a Space push and a Space download use, reusing the server's own handlers and storage.

  POST /api/repos/create with "type": "space"       create_repo(repo_type="space", space_sdk=...): the SDK is kept
  GET  /api/spaces/{id}[/revision/{rev}]             space_info / repo_info(repo_type="space"), snapshot_download
  GET  /api/spaces/{id}/tree/{rev}[/{path}]          list_repo_files, upload_folder(delete_patterns=...)
  POST /api/spaces/{id}/paths-info/{rev}, GET .../commits/{rev}, POST .../preupload/{rev}, POST .../commit/{rev}
  GET|HEAD /spaces/{id}/resolve/{rev}/{path}         hf_hub_download / snapshot_download(repo_type="space")
  PUT  /api/spaces/{id}/settings                     update_repo_settings(private=...): the visibility only

Spaces live in `LocalHub.repos[("space", id)]` (with "sdk"), checked out under `root/spaces/`. No LFS for Spaces:
a Space of source and text files needs none (an LFS file is refused by the server's LFS route, loudly).
Installed once per process on the hub_server module; it only adds routes, so other tests see the same server.
"""

import json


def add_space_support(hub_server) -> None:
    """Teach hub_server's LocalHub (all instances, this process) about Spaces. Idempotent."""
    if getattr(hub_server, "SPACES_SUPPORTED", False):
        return
    handler, local_hub = hub_server._Handler, hub_server.LocalHub
    create_other_repo = handler.create_repo
    model_or_dataset_url = local_hub._repo_url

    def create_repo(self, hub):
        if (self.json or {}).get("type") != "space":
            return create_other_repo(self, hub)
        user = self._user(required=True)
        repo_id = f"{self.json.get('organization') or user}/{self.json['name']}"
        url = hub._repo_url("space", repo_id)
        if ("space", repo_id) in hub.repos:
            return self._send(409, {"error": "You already created this repo", "url": url})
        if not self.json.get("sdk"):
            raise hub_server.HubError(400, "A Space needs an SDK (sdk: gradio, docker, static)")
        private = self.json.get("visibility") == "private" or bool(self.json.get("private"))
        hub.repos[("space", repo_id)] = {"private": private, "created": hub_server._now(), "commits": [],
                                         "sdk": self.json["sdk"]}
        entry = hub._entry(hub._store(hub_server.GITATTRIBUTES), False)
        hub._add_commit("space", repo_id, {".gitattributes": entry}, "initial commit")
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def space_info(self, hub, t, repo_id, rev="main"):
        handler.repo_info(self, hub, t, repo_id, rev)
        status, body, _ = self.answer
        if status == 200:
            self._send(200, {**json.loads(body), "sdk": hub.repos[("space", repo_id)]["sdk"]})

    def resolve(self, hub, repo_id, rev, path):
        repo = hub._repo("space", repo_id, self._user())
        commit = hub._commit(repo, rev)
        entry = commit["files"].get(path)
        if entry is None:
            error = hub_server.HubError(404, "Entry not found", "EntryNotFound")
            error.commit = commit["id"]
            raise error
        headers = {"X-Repo-Commit": commit["id"], "ETag": f'"{entry["oid"]}"'}
        self._send(200, hub.read_object(entry), headers, "application/octet-stream")

    def settings(self, hub, t, repo_id):
        repo = hub._repo("space", repo_id, self._user(required=True))
        visibility = (self.json or {}).get("visibility")
        if visibility not in ("public", "private"):
            raise hub_server.HubError(400, f"Unsupported settings {self.json}")
        repo["private"] = visibility == "private"
        self._send(200, {})

    def repo_url(self, repo_type, repo_id):
        if repo_type == "space":
            return f"{self.endpoint}/spaces/{repo_id}"
        return model_or_dataset_url(self, repo_type, repo_id)

    space = rf"/api/(?P<t>space)s/{hub_server.NS}/{hub_server.NAME}"
    rev, path = r"(?P<rev>[^/]+)", r"(?P<path>.+)"
    routes = [
        ("POST", r"/api/repos/create", create_repo),
        ("GET", rf"{space}(?:/revision/{rev})?", space_info),
        ("GET", rf"{space}/tree/{rev}(?:/{path})?", handler.tree),
        ("POST", rf"{space}/paths-info/{rev}", handler.paths_info),
        ("GET", rf"{space}/commits/{rev}", handler.commits),
        ("POST", rf"{space}/preupload/{rev}", handler.preupload),
        ("POST", rf"{space}/commit/{rev}", handler.commit),
        ("PUT", rf"{space}/settings", settings),
        ("GET|HEAD", rf"/spaces/{hub_server.NS}/{hub_server.NAME}/resolve/{rev}/{path}", resolve),
    ]
    hub_server.ROUTES[:0] = routes  # first match wins: the space create route sees every create first
    local_hub._repo_url = repo_url
    hub_server.SPACES_SUPPORTED = True
