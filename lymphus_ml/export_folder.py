"""The export folder of `python lymphus.py export`: ours alone, one export at a time, replaced in one step.

An export is written in a staging folder beside its output folder (make_staging, marked at once as ours) and moved
into place only when complete (put_in_place), so the path always holds one whole export. Its last file is the marker
EXPORT_MARKER, listing every file with its size and SHA-256 (write_export_marker): `--overwrite` replaces only a folder
that marker proves is an unchanged export of ours (export_discrepancies), never the data folder or anything else, and
`push` uploads exactly what it lists. One export per output folder at a time (export_lock); what a killed export left
beside the folder, the next one finishes (clean_leftovers).
"""

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import sys
from pathlib import Path

from lymphus_ml.run_folder import sha256_of_file


# The builder's logger: every message of a build or an export is the `lymphus` logger's, whichever module writes it.
logger = logging.getLogger("lymphus")

# Written by `export` into every export it finishes, last: it lists every file with its size and SHA-256, so that
# `--overwrite` and `push` can tell an export of ours (unchanged, nothing added) from any other folder.
EXPORT_MARKER = ".lymphus-export.json"
# Written into a staging folder when it is made, removed when the export is complete: marks leftovers of a killed run.
STAGING_MARKER = ".lymphus-staging"


class OutputFolderError(FileExistsError):
    """The output folder cannot be written or replaced safely (not ours, the data folder, another export running)."""


class ExportMarkerError(ValueError):
    """An export marker that is not what `export` writes (edited, truncated): it vouches for nothing."""


def check_not_data_folder(output_dir, data_dir):
    if data_dir is None:
        return
    output, data = output_dir.resolve(), Path(data_dir).resolve()
    if output == data or output in data.parents:
        raise OutputFolderError(
            f"--output_dir '{output_dir}' {'is' if output == data else 'holds'} the data folder '{data_dir}': "
            f"the export never writes there; choose another --output_dir."
        )


@contextlib.contextmanager
def export_lock(output_dir):
    """One export per output folder at a time: an exclusive flock on `.<name>.lock` beside it.

    The kernel releases it when the holder dies, even by SIGKILL; a second export fails at once, naming the holder.
    The holder deletes the file when done; one that locked a file deleted meanwhile tries again on the new one.
    """
    import fcntl

    path = output_dir.parent / f".{output_dir.name}.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputFolderError(
                f"another export into '{output_dir}' is running (process {holder}; lock file '{path}'): wait for it "
                "to finish."
            ) from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.unlink(path)
        os.close(fd)


def check_replaceable(output_dir, overwrite):
    """Refuse, before any work, an output_dir the export may not write: anything but a missing or empty folder, or,
    with `overwrite`, an unchanged earlier export (what its marker lists, and nothing else)."""
    if output_dir.is_symlink() or (output_dir.exists() and not output_dir.is_dir()):
        raise OutputFolderError(
            f"{output_dir} is {'a link' if output_dir.is_symlink() else 'not a folder'}: the export does not replace "
            "it; choose another --output_dir."
        )
    if not output_dir.exists() or not any(output_dir.iterdir()):
        return
    if not overwrite:
        raise OutputFolderError(
            f"{output_dir} exists and is not empty; choose another --output_dir, or pass --overwrite to replace an "
            "earlier export."
        )
    refuse_unless_export(output_dir)


def refuse_unless_export(folder):
    problems = export_discrepancies(folder)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise OutputFolderError(
            f"--overwrite replaces only an unchanged folder written by `lymphus.py export`, and '{folder}' has "
            f"{problems[0]}{more}: nothing was replaced. Move your files out, or choose another --output_dir."
        )


def read_export_marker(folder):
    """The files an export's marker lists, {relative name: {"bytes": int, "sha256": hex}}; None if it has no marker.

    A marker that is not what `export` writes (not JSON, other types, a name outside the folder) vouches for nothing:
    ExportMarkerError names what is wrong with it.
    """
    path = Path(folder) / EXPORT_MARKER
    if not path.is_file() or path.is_symlink():
        return None
    try:
        marker = json.loads(path.read_bytes())
    except (UnicodeDecodeError, ValueError) as error:
        raise ExportMarkerError(f"a {EXPORT_MARKER} that is not valid JSON ({error})") from None
    if (
        not isinstance(marker, dict)
        or marker.get("format") != "lymphus-export"
        or not isinstance(marker.get("files"), dict)
    ):
        raise ExportMarkerError(
            f'a {EXPORT_MARKER} that is not an export marker (no "format": "lymphus-export" and "files" object)'
        )
    for name, entry in marker["files"].items():
        if not is_export_file_name(name):
            raise ExportMarkerError(
                f"a {EXPORT_MARKER} that lists {name!r}, which is not a file name inside the export"
            )
        if not (
            isinstance(entry, dict)
            and type(entry.get("bytes")) is int
            and entry["bytes"] >= 0
            and isinstance(entry.get("sha256"), str)
            and re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
        ):
            raise ExportMarkerError(
                f"a {EXPORT_MARKER} that gives {name!r} as {entry!r}, "
                'not {"bytes": <size>, "sha256": <64 hex digits>}'
            )
    return marker["files"]


def is_export_file_name(name):
    """A relative POSIX path below the export folder, written the one way: no '..', '//', backslash or dotfile."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return False
    return all(part and not part.startswith(".") for part in name.split("/"))  # the export writes no dotfiles


def export_discrepancies(folder, complete=False):
    """What in `folder` its export marker does not vouch for; [] means the folder is exactly an export we wrote
    (each file listed, with the same size and SHA-256, and nothing else), so deleting it deletes nothing of a user's.
    complete: also report listed files that are missing (an upload must hold them all; a deletion does not care)."""
    folder = Path(folder)
    try:
        listed = read_export_marker(folder)
    except ExportMarkerError as error:
        return [str(error)]
    if listed is None:
        return [f"no {EXPORT_MARKER} (it was not written by `lymphus.py export`)"]
    listed_folders = {parent.as_posix() for name in listed for parent in Path(name).parents}
    problems, found = [], set()
    for directory, subfolders, files in os.walk(folder):
        for name in sorted(subfolders) + sorted(files):
            path = Path(directory) / name
            relative = path.relative_to(folder).as_posix()
            if path.is_symlink():
                problems.append(f"'{relative}' (a link)")
            elif name in subfolders:
                if relative not in listed_folders:
                    problems.append(f"'{relative}/' (not written by the export)")
            elif relative == EXPORT_MARKER:
                continue
            elif relative not in listed:
                problems.append(f"'{relative}' (not written by the export)")
            elif (
                path.stat().st_size != listed[relative]["bytes"] or sha256_of_file(path) != listed[relative]["sha256"]
            ):
                problems.append(f"'{relative}' (changed since the export)")
            else:
                found.add(relative)
    if complete:
        problems += [
            f"'{name}' (listed in {EXPORT_MARKER} but missing)"
            for name in sorted(set(listed) - found)
            if not (folder / name).is_file()
        ]
    return problems


def write_export_marker(staging, lymphus_version):
    """List every file of the finished export in its marker, then drop the staging marker: now it is an export."""
    files = {}
    for path in sorted(staging.rglob("*")):
        relative = path.relative_to(staging).as_posix()
        if path.is_file() and relative != STAGING_MARKER:
            files[relative] = {"bytes": path.stat().st_size, "sha256": sha256_of_file(path)}
    marker = {"format": "lymphus-export", "lymphus_version": lymphus_version, "files": files}
    (staging / EXPORT_MARKER).write_text(json.dumps(marker, indent=1) + "\n")
    (staging / STAGING_MARKER).unlink()


def make_staging(output_dir):
    """A new folder beside output_dir (one file system: the final rename is atomic), marked as ours at once.

    Made by mkdir, not mkdtemp (mode 0700): the export's permissions follow the umask.
    """
    while True:
        staging = output_dir.parent / f".{output_dir.name}.incomplete-{secrets.token_hex(4)}"
        try:
            staging.mkdir()
            break
        except FileExistsError:
            continue
    (staging / STAGING_MARKER).write_text(f"staging folder of `lymphus.py export` into {output_dir.name}\n")
    return staging


def put_in_place(staging, output_dir, overwrite):
    """Move the finished export to output_dir so that, at every instant, the path holds one complete export.

    No earlier export (or no `overwrite`): one rename, atomic, which fails rather than replace a folder that is no
    longer empty. An earlier export: on Linux, renameat2(RENAME_EXCHANGE) swaps the two folders in one atomic
    step; the path holds the old export up to that instant and the new one after it. Where the system cannot
    exchange, two renames (old aside to `.<name>.previous-*`, then new in place): for the instant between them the
    path is missing and the complete old export sits beside it, where the next export puts it back if this one
    is killed just then (clean_leftovers). The earlier export is deleted only after the swap, and only if it
    still holds nothing but its own files.
    """
    if not overwrite or not (output_dir.is_dir() and any(output_dir.iterdir())):
        try:
            os.rename(staging, output_dir)
        except OSError as error:
            remove_quietly(staging)
            raise OutputFolderError(
                f"{output_dir} was created or filled by something else during the export ({error.strerror}): "
                f"nothing in it was replaced."
            ) from None
        return
    try:
        refuse_unless_export(output_dir)  # again: something may have been added while the export ran
        if exchange_paths(staging, output_dir):
            previous = staging
        else:
            previous = output_dir.parent / f".{output_dir.name}.previous-{secrets.token_hex(4)}"
            os.rename(output_dir, previous)
            try:
                os.rename(staging, output_dir)
            except BaseException:
                os.rename(previous, output_dir)
                raise
    except BaseException:
        remove_quietly(staging)
        raise
    discard_previous_export(previous, output_dir)


def exchange_paths(first, second):
    """Swap two paths atomically (Linux renameat2 with RENAME_EXCHANGE); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except AttributeError:  # glibc before 2.28
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(error, os.strerror(error), str(first), None, str(second))


def discard_previous_export(previous, output_dir):
    problems = export_discrepancies(previous)
    if problems:
        logger.warning(
            f"The new export is in '{output_dir}'. The previous one, moved to '{previous}', now has {problems[0]}: "
            "it is kept; delete it yourself."
        )
        return
    try:
        remove_ours(previous)
    except OSError as error:
        logger.warning(
            f"The new export is in '{output_dir}', but the previous one, moved to '{previous}', could not be deleted "
            f"({error}); the next export into '{output_dir}' tries again, or delete it yourself."
        )


def clean_leftovers(output_dir):
    """Finish what a killed export left beside output_dir (called under the lock: no other export is running).

    `.<name>.previous-*`: an earlier export set aside during a swap, put back if output_dir is missing, else deleted.
    `.<name>.incomplete-*`: a staging folder (or, after a swap, the earlier export), deleted. Only folders holding
    one of our markers are touched; anything else is named and left alone.
    """
    prefix = f".{output_dir.name}."
    for leftover in sorted(output_dir.parent.iterdir()):
        kind = leftover.name[len(prefix) :].partition("-")[0] if leftover.name.startswith(prefix) else None
        if kind not in ("previous", "incomplete"):
            continue
        ours = (
            leftover.is_dir()
            and not leftover.is_symlink()
            and ((leftover / EXPORT_MARKER).is_file() or (leftover / STAGING_MARKER).is_file())
        )
        if not ours:
            logger.warning(
                f"'{leftover}' is named like a leftover of an interrupted export but holds no marker of ours: left "
                "alone; delete it if it is not yours."
            )
        elif kind == "previous" and not (output_dir.exists() or output_dir.is_symlink()):
            leftover.rename(output_dir)
            logger.warning(
                f"Put back the previous export from '{leftover}' to '{output_dir}': an export was interrupted while "
                "replacing it."
            )
        else:
            remove_ours(leftover)
            logger.warning(f"Deleted '{leftover}', left by an interrupted export.")


def remove_ours(path):
    """Delete a folder of ours: its markers last, so that a deletion cut short is still recognised and finished by the
    next export; read-only subfolders are made writable first (they are ours too)."""
    path = Path(path)
    folders = [path] + [
        Path(d) / s for d, subfolders, _ in os.walk(path) for s in subfolders if not (Path(d) / s).is_symlink()
    ]
    for folder in folders:
        with contextlib.suppress(OSError):
            os.chmod(folder, os.stat(folder).st_mode | 0o700)
    markers = {path / EXPORT_MARKER, path / STAGING_MARKER}
    for directory, subfolders, files in os.walk(path, topdown=False):
        for name in files + subfolders:
            entry = Path(directory) / name
            if entry in markers:
                continue
            if name in subfolders and not entry.is_symlink():
                entry.rmdir()
            else:
                entry.unlink()
    for marker in markers:
        marker.unlink(missing_ok=True)
    path.rmdir()


def remove_quietly(path):
    """remove_ours after a failure: a second error must not hide the first (the next export finishes the job)."""
    try:
        if path.exists():
            remove_ours(path)
    except OSError as error:
        logger.warning(f"Could not delete '{path}' ({error}); the next export into the same folder will.")


def disk_full_error(error, output_dir):
    """One sentence for a full disk (or quota), instead of the error of whichever write hit it."""
    where = f" writing '{error.filename}'" if error.filename else ""
    return OSError(
        error.errno,
        f"{error.strerror}{where}: nothing was exported to '{output_dir}' (the partial files are deleted). "
        f"Free some space on that disk, or choose an --output_dir on another one.",
    )
