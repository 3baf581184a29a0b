"""predict.py's --output_dir: written only where it is provably ours, and reused without a stale mask.

The training run's rule (run_folder.py) for predict.py's folder. It is predict.py's only when it is missing, empty,
or holds exactly what earlier predict.py runs listed in PREDICT_MARKER. Anything else (a file not listed, a listed
file changed since, a link, a marker that is not ours) is refused by name before anything is written or deleted;
predict.py checks before it loads the models (check_output_folder), and again when it claims the folder.

Claiming a folder of ours deletes every file the earlier run listed before this run writes one: a mask of an image
that is not in this run never sits beside a predictions.csv that does not list it.

The marker is written first with status "running" and every name the run may write, all known from the inputs
before anything is written (predictions.csv and its partial file, masks/<name>.png, overlays/<name>.png), and last
with status "complete" and each written file's size and SHA-256. A run cut short by Ctrl-C, a crash, a full disk or
SIGKILL leaves a "running" marker whose listed files count as ours whatever they hold: they have no hash yet and
only that run wrote them, so the next run deletes them and starts afresh instead of refusing the folder forever
(the price: a file a user puts there under one of those names before the next run is taken for that run's).
Such a folder never looks complete: its marker says "running", and predictions.csv, written last and renamed into
place whole, is missing. A "running" marker whose process is alive on this host is another predict.py writing
there now: refused. The marker names files inside the folder only (PREDICT_NAME), nothing of the inputs, and a
marker listing any other name is not ours: a forged one cannot make a run delete anything outside the folder.
"""

import json
import os
import re
import socket
from datetime import datetime, timezone
from pathlib import Path

from lymphus_ml.run_folder import (
    OutputFolderError,
    folder_entries,
    running_process,
    sha256_of_file,
    write_text_atomic,
)


PREDICT_MARKER = ".lymphus-predict.json"
PREDICT_FORMAT = "lymphus-predict"
# The one name the marker is written under before its rename (run_folder.write_text_atomic's): only predict.py
# writes it, the next write replaces it.
MARKER_PARTIAL = f".{PREDICT_MARKER}.partial"
SCRIPT = "predict.py"
# Every name predict.py writes: the table and its partial file (predict.write_predictions_csv), masks, overlays.
PREDICT_NAME = re.compile(r"predictions\.csv|\.predictions\.csv\.[0-9]+\.partial|(masks|overlays)/[^/\\\x00]+\.png")
OUTPUT_FOLDERS = ("masks", "overlays")


def read_predict_marker(folder) -> dict | None:
    """The marker of `folder`, or None where there is none or it is not one predict.py writes."""
    try:
        marker = json.loads((Path(folder) / PREDICT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != PREDICT_FORMAT or not isinstance(marker.get("files"), dict):
        return None
    folders = marker.get("folders", [])
    if marker.get("status") not in ("running", "complete") or not isinstance(folders, list) or not all(
        isinstance(name, str) and name in OUTPUT_FOLDERS for name in folders
    ):
        return None
    for name, entry in marker["files"].items():
        hashed = isinstance(entry, dict) and type(entry.get("bytes")) is int and isinstance(entry.get("sha256"), str)
        if not PREDICT_NAME.fullmatch(name) or not (hashed or (entry is None and marker["status"] == "running")):
            return None
    return marker


def folder_discrepancies(folder) -> list[str]:
    """What in the folder `folder` no predict.py run vouches for, sorted by path; [] means it is missing, empty, or
    exactly what the marker lists: each file listed, unchanged where it has a hash (a "running" marker's have none)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    files, folders, links = folder_entries(folder, skip=(PREDICT_MARKER, MARKER_PARTIAL))
    marker = read_predict_marker(folder)
    if marker is None:
        if (folder / PREDICT_MARKER).exists() and not (folder / PREDICT_MARKER).is_symlink():
            return [f"'{PREDICT_MARKER}' (not a marker predict.py wrote)"]
        return [f"'{name}{'/' if name in folders else ''}' (not written by predict.py)"
                for name in sorted(files + folders + links) if "/" not in name]
    listed = marker["files"]
    listed_folders = {name.partition("/")[0] for name in listed if "/" in name} | set(marker.get("folders", []))
    problems = [(name, "a link") for name in links]
    problems += [(f"{name}/", "not written by predict.py") for name in folders if name not in listed_folders]
    for name in files:
        path, entry = folder / name, listed.get(name)
        if name not in listed:
            problems.append((name, "not written by predict.py"))
        elif entry is not None and (path.stat().st_size != entry["bytes"] or sha256_of_file(path) != entry["sha256"]):
            problems.append((name, "changed since predict.py wrote it"))
    return [f"'{name}' ({why})" for name, why in sorted(problems)]


def check_output_folder(folder) -> None:
    """Refuse (OutputFolderError, a ValueError) a folder predict.py may not write, naming the first offending path."""
    folder = Path(folder)
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        kind = "a link" if folder.is_symlink() else "not a folder"
        raise OutputFolderError(f"--output_dir {folder} is {kind}: nothing was written; choose another --output_dir.")
    problems = folder_discrepancies(folder)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise OutputFolderError(
            f"--output_dir {folder} holds {problems[0]}{more}: nothing was written or deleted. predict.py writes only "
            f"into a new or empty folder, or one an earlier predict.py run wrote (listed in its {PREDICT_MARKER}). "
            "Choose another --output_dir, or move that file out."
        )
    running = running_process(read_predict_marker(folder) if folder.is_dir() else None)
    if running is not None:
        raise OutputFolderError(
            f"--output_dir {folder} is being written by another predict.py run ({running}): nothing was written or "
            "deleted. Wait for it to end, or choose another --output_dir."
        )


def claim_output_folder(folder, planned: list[str], folders: list[str]) -> None:
    """Make `folder` this run's: checked again, marked "running" with the earlier run's files and `planned` (the names
    this run may write), the earlier run's files deleted, and `folders` (of OUTPUT_FOLDERS) made."""
    folder = Path(folder)
    check_output_folder(folder)
    earlier = (read_predict_marker(folder) if folder.is_dir() else None) or {"files": {}}
    folder.mkdir(parents=True, exist_ok=True)
    everything = dict.fromkeys(sorted({*earlier["files"], *planned}))
    write_marker(folder, "running", everything, sorted({*earlier.get("folders", []), *folders}))
    for name in earlier["files"]:
        (folder / name).unlink(missing_ok=True)
    for name in OUTPUT_FOLDERS:
        if name not in folders and (folder / name).is_dir() and not any((folder / name).iterdir()):
            (folder / name).rmdir()  # ours: listed, or the parent of a listed file
    for name in folders:
        (folder / name).mkdir(exist_ok=True)
    write_marker(folder, "running", dict.fromkeys(sorted(planned)), sorted(folders))


def complete_output_folder(folder, planned: list[str], folders: list[str]) -> dict:
    """Mark `folder` "complete": each file of `planned` that was written, with its size and SHA-256. Returns them."""
    folder = Path(folder)
    files = {}
    for name in sorted(planned):
        path = folder / name
        if path.is_file() and not path.is_symlink():
            files[name] = {"bytes": path.stat().st_size, "sha256": sha256_of_file(path)}
    write_marker(folder, "complete", files, sorted(folders))
    return files


def write_marker(folder, status: str, files: dict, folders: list[str]) -> None:
    """The marker, renamed into place whole: a reader sees the previous one or this one."""
    marker = {"format": PREDICT_FORMAT, "script": SCRIPT, "status": status, "host": socket.gethostname(),
              "pid": os.getpid(), "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "folders": folders, "files": files}
    write_text_atomic(Path(folder) / PREDICT_MARKER, json.dumps(marker, indent=1) + "\n")
