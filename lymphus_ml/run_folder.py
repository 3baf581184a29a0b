"""A training run's --output_dir is ours alone: what a run may reuse, and what it may publish.

The export's rule (lymphus.py, `.lymphus-export.json`) applied to training folders. A run claims its output folder
before writing anything: a missing or empty folder, or one whose RUN_MARKER lists every file in it unchanged (an
earlier run of ours: its checkpoints may be resumed, rotated and its files rewritten). Anything else is refused,
named, and left as it is. The marker is written at the start (status "running"), after each checkpoint, at an
exit after an error ("failed") and at the end ("complete"); each file is listed with its size, SHA-256 and the run that wrote it, so a push uploads
exactly the files this run wrote, never a user's `patients.csv` that was put beside them or a stale result of an
earlier run. A folder whose run is still going on (its process alive on this host) is refused too.
"""

import atexit
import fnmatch
import hashlib
import json
import logging
import os
import secrets
import socket
from datetime import datetime, timezone
from pathlib import Path


logger = logging.getLogger(__name__)

RUN_MARKER = ".lymphus-run.json"
RUN_FORMAT = "lymphus-run"
# Files that sweep.py (the project's driver of train_vit.py) keeps in a run folder beside the run's own: the run
# never writes, lists, uploads or deletes them, so their presence is no reason to refuse the folder.
DRIVER_FILES = ("train_vit.log", "sweep_run.json")
# What a training run writes: the Trainer's checkpoints (folders), model, processor, arguments and state; the
# scripts' reports, plots and card; the offline demo's export; TensorBoard logs. A file that appears during a run is
# listed as the run's only if it is one of these, so a file put beside them (a `patients.csv`) is never listed,
# pushed or touched, and the next run into the folder is refused, naming it.
RUN_OUTPUT_FOLDERS = ("checkpoint-*", "synthetic-lymphus", "runs", "base_model")
RUN_OUTPUT_FILES = (
    "README.md", "config.json", "preprocessor_config.json", "processor_config.json", "model*.safetensors",
    "model.safetensors.index.json", "training_args.bin", "trainer_state.json", "*_results.json", "metrics_*.json",
    "threshold.json", "predictions.csv", "segmentation_cases.csv", "roc_*.png", "confusion_matrix_*.png",
    "saliency_*.png", "overlays_*.png", "reliability_*.png",
    "adapter_config.json", "adapter_model.safetensors", "classifier_config.json", "finetuning.json",  # finetuning.py
)


class OutputFolderError(ValueError):
    """--output_dir holds what no run of ours wrote: nothing was written."""


def sha256_of_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text_atomic(path, text: str) -> Path:
    """Write beside `path`, then rename: a reader never sees half a file."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)
    return path


def read_run_marker(folder) -> dict | None:
    """The run marker of `folder` (a dict listing its files), or None where there is none or it is not ours."""
    try:
        marker = json.loads((Path(folder) / RUN_MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != RUN_FORMAT or not isinstance(marker.get("files"), dict):
        return None
    if not all(isinstance(entry, dict) and {"bytes", "sha256"} <= entry.keys() for entry in marker["files"].values()):
        return None
    return marker


def is_run_output(name: str) -> bool:
    """Whether the relative path `name` is one a training run writes (RUN_OUTPUT_FOLDERS, RUN_OUTPUT_FILES)."""
    top, _, rest = name.partition("/")
    if rest:
        return any(fnmatch.fnmatchcase(top, pattern) for pattern in RUN_OUTPUT_FOLDERS)
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in RUN_OUTPUT_FILES)


def folder_entries(folder, skip=(RUN_MARKER, *DRIVER_FILES)) -> tuple[list[str], list[str], list[str]]:
    """(files, folders, links) under `folder` as sorted POSIX relative paths; the files named in `skip` (by default
    the run marker and DRIVER_FILES) left out, unless they are links."""
    folder = Path(folder)
    files, folders, links = [], [], []
    for directory, subfolders, names in os.walk(folder):
        for name in subfolders + names:
            path = Path(directory) / name
            relative = path.relative_to(folder).as_posix()
            if path.is_symlink():
                links.append(relative)
            elif name in subfolders:
                folders.append(relative)
            elif relative not in skip:
                files.append(relative)
        subfolders[:] = [name for name in subfolders if not (Path(directory) / name).is_symlink()]
    return sorted(files), sorted(folders), sorted(links)


def run_folder_discrepancies(folder) -> list[str]:
    """What in `folder` no run of ours vouches for; [] means it is empty or exactly what our runs wrote (each file
    listed in RUN_MARKER with the same size and SHA-256), so a run may rewrite, rotate or delete any of it."""
    folder = Path(folder)
    files, folders, links = folder_entries(folder)
    marker = read_run_marker(folder)
    if marker is None:
        if (folder / RUN_MARKER).exists():
            return [f"'{RUN_MARKER}' (not a marker written by a training run)"]
        return [f"'{name}/'" if name in folders else f"'{name}'" for name in sorted(files + folders + links)
                if "/" not in name]
    listed = marker["files"]
    listed_folders = {parent.as_posix() for name in listed for parent in Path(name).parents} | set(marker.get("folders", []))
    problems = [f"'{name}' (a link)" for name in links]
    problems += [f"'{name}/' (not written by a run)" for name in folders if name not in listed_folders]
    for name in files:
        path = folder / name
        if name not in listed:
            problems.append(f"'{name}' (not written by a run)")
        elif path.stat().st_size != listed[name]["bytes"] or sha256_of_file(path) != listed[name]["sha256"]:
            problems.append(f"'{name}' (changed since a run wrote it)")
    return problems


class RunFolder:
    """The output folder of one run, claimed by `claim`; `record` rewrites its marker with what is in it now."""

    def __init__(self, folder, script: str, run_id: str, files: dict, folders: list[str]):
        self.folder, self.script, self.run_id = Path(folder), script, run_id
        self.files = files  # relative path -> {"bytes", "sha256", "run"}, as in the marker
        self.folders = folders
        self.started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._seen = {}  # relative path -> (size, mtime_ns) when its entry was made: unchanged files are not rehashed

    @classmethod
    def claim(cls, folder, script: str) -> "RunFolder":
        """Refuse (OutputFolderError) a folder holding anything no run of ours wrote, before anything is written;
        else create it if needed and mark it as this run's (status "running"). Its listed files stay as they are."""
        folder = Path(folder)
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise OutputFolderError(
                f"--output_dir {folder} is {'a link' if folder.is_symlink() else 'not a folder'}; choose another --output_dir."
            )
        problems = run_folder_discrepancies(folder) if folder.is_dir() else []
        if problems:
            more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
            raise OutputFolderError(
                f"--output_dir {folder} holds {', '.join(problems[:3])}{more}, which no training run wrote (a run "
                f"lists its files in {RUN_MARKER}): nothing was trained, written or deleted. A run writes only into a "
                "new or empty folder, or one its own earlier runs wrote (whose checkpoints it may resume and rotate). "
                "Move those files out, or choose another --output_dir."
            )
        marker = read_run_marker(folder) if folder.is_dir() else None
        running = running_process(marker)
        if running is not None:
            raise OutputFolderError(
                f"--output_dir {folder} is being written by another run ({running}, started {marker.get('started')}): "
                "nothing was written. Wait for it to end or stop it, or choose another --output_dir."
            )
        folder.mkdir(parents=True, exist_ok=True)
        marker = marker or {"files": {}, "folders": []}
        run_id = f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
        run = cls(folder, script, run_id, dict(marker["files"]), list(marker.get("folders", [])))
        for name in run.files:
            stat = (folder / name).stat()
            run._seen[name] = (stat.st_size, stat.st_mtime_ns)
        run.write_marker("running")
        atexit.register(run.record_if_unfinished)
        return run

    def record_if_unfinished(self) -> None:
        """At exit after an error or Ctrl-C (not SIGKILL): list what the run wrote so far (status "failed"), so that
        the next run may resume or rewrite it instead of refusing it. Never pushed: only a complete run is."""
        if self.status != "complete":
            try:
                self.record("failed")
            except OSError:
                pass  # the folder is gone

    def record(self, status: str = "running") -> None:
        """List the folder's files now: unchanged ones as they were, new or rewritten ones that a run writes
        (`is_run_output`) as this run's; anything else that appeared is not listed, so it is never ours."""
        files, folders, _ = folder_entries(self.folder)
        entries = {}
        for name in files:
            stat = (self.folder / name).stat()
            if name in self.files and self._seen.get(name) == (stat.st_size, stat.st_mtime_ns):
                entries[name] = self.files[name]
                continue
            if not is_run_output(name):
                continue
            entries[name] = {"bytes": stat.st_size, "sha256": sha256_of_file(self.folder / name), "run": self.run_id}
            self._seen[name] = (stat.st_size, stat.st_mtime_ns)
        listed = {parent.as_posix() for name in entries for parent in Path(name).parents}
        self.files = entries
        self.folders = [name for name in folders if name in listed or is_run_output(name + "/x")]
        self.write_marker(status)
        if status == "complete":
            atexit.unregister(self.record_if_unfinished)

    def complete(self) -> list[str]:
        """The run's end: delete the results an earlier run left at the top of the folder that this run did not
        rewrite (a metrics file of a split no longer evaluated, a figure no longer drawn: provably ours, and stale),
        then record the folder as complete. Checkpoints and the demo's export stay. Returns the deleted names."""
        self.record("running")
        stale = sorted(name for name, entry in self.files.items() if "/" not in name and entry.get("run") != self.run_id)
        for name in stale:
            (self.folder / name).unlink()
        if stale:
            logger.warning(f"Deleted what an earlier run in {self.folder} wrote and this one did not rewrite: {', '.join(stale)}")
        self.record("complete")
        return stale

    def written(self) -> list[str]:
        """The files this run wrote (as of the last `record`)."""
        return sorted(name for name, entry in self.files.items() if entry.get("run") == self.run_id)

    def write_marker(self, status: str) -> None:
        self.status = status
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        marker = {"format": RUN_FORMAT, "script": self.script, "run": self.run_id, "status": status,
                  "host": socket.gethostname(), "pid": os.getpid(), "started": self.started, "updated": now,
                  "folders": self.folders, "files": self.files}
        partial = self.folder / f"{RUN_MARKER}.partial-{secrets.token_hex(3)}"
        partial.write_text(json.dumps(marker, indent=1) + "\n")
        os.replace(partial, self.folder / RUN_MARKER)


def running_process(marker) -> str | None:
    """`pid N on host` if `marker` is a running run's whose process is still alive here (the same script in its
    command line: a reused pid is not mistaken for it), else None."""
    if not marker or marker.get("status") != "running" or marker.get("host") != socket.gethostname():
        return None
    pid = marker.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    try:
        if str(marker.get("script")).encode() not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return None
    except OSError:
        pass  # no /proc: alive is all we know
    return f"pid {pid} on {marker['host']}"


def files_written_by_last_run(folder) -> list[str]:
    """The files the last complete run recorded in `folder`'s marker wrote, each still unchanged; refuses
    (OutputFolderError) a folder without a complete run's marker or whose files changed since."""
    folder = Path(folder)
    marker = read_run_marker(folder)
    if marker is None or marker.get("status") != "complete":
        raise OutputFolderError(f"{folder} has no complete {RUN_MARKER}: only the files a finished training run wrote are pushed.")
    names = sorted(name for name, entry in marker["files"].items() if entry.get("run") == marker.get("run"))
    for name in names:
        path, entry = folder / name, marker["files"][name]
        if path.is_symlink() or not path.is_file() or path.stat().st_size != entry["bytes"] or sha256_of_file(path) != entry["sha256"]:
            raise OutputFolderError(f"{folder / name} changed since the run wrote it: nothing was pushed.")
    return names
