"""The app's offline demo: tiny models trained on a synthetic export by the training scripts themselves, and
example images.

`prepare_offline_demo` trains the tiny offline demo models by running `train_vit.py --offline_demo` and
`train_segformer.py --offline_demo` as processes (`lymphus_ml.runs`, on a synthetic export, no network) into a
cache folder, and reuses them when they are there and complete. `synthetic_examples` writes example images.

The demo folder is the user's too: the demo deletes or replaces only what it provably wrote there. DEMO_RECORD
(`.lymphus-demo.json` in the folder) lists each path the demo made: recorded before the demo creates it (a folder
by mkdir, a log by exclusive open, so nothing that was already there is ever taken for ours), and, once finished,
sealed with every file's size and SHA-256 (a model folder, the synthetic data). A sealed path is replaced only if
each file in it is one it was sealed with, unchanged (missing files are what makes it incomplete); an unsealed one
is a run that was cut short, deleted. Anything else in the way (a `classifier/` the user keeps, a changed file) is
refused, named, before anything is written. (A training run's own `.lymphus-run.json` is one of the sealed files.)
"""

import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import zipfile
from pathlib import Path

from PIL import Image

from lymphus_ml.data import export_problems, write_synthetic_export
from lymphus_ml.run_folder import sha256_of_file
from lymphus_ml.runs import PROJECT_ROOT, start_script


logger = logging.getLogger(__name__)

# The tiny offline demo models: the scripts' own --offline_demo, with the settings of their docstrings.
OFFLINE_DEMO_MODELS = {
    "classifier": ("train_vit.py", ["--roi", "crop", "--num_train_epochs", "5", "--learning_rate", "1e-3"]),
    "segmenter": (
        "train_segformer.py",
        ["--num_train_epochs", "6", "--learning_rate", "5e-3", "--per_device_train_batch_size", "4"],
    ),
}
MODEL_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
LOG_TAIL_LINES = 15
SYNTHETIC_FOLDER = "synthetic-lymphus"  # the synthetic archives and their export, in the demo folder
DEMO_RECORD = ".lymphus-demo.json"
DEMO_FORMAT = "lymphus-offline-demo"


class DemoFolderError(ValueError):
    """The demo folder holds something in the demo's way that the demo did not write: nothing was changed."""


class DemoTrainingError(ValueError):
    """A demo model's training script failed (named, with the end of its log)."""


def model_folder_complete(folder) -> bool:
    """Whether `folder` holds a saved model: its config, weights and image processor."""
    return all((Path(folder) / name).is_file() for name in MODEL_FILES)


# The demo's record of what it wrote in its folder


def read_demo_record(folder) -> dict:
    """{name: None (made by the demo, unfinished) or {"files": {relative: {"bytes", "sha256"}}}} from DEMO_RECORD;
    {} where there is none. A record that is not the demo's is refused: it proves nothing and is not overwritten."""
    path = Path(folder) / DEMO_RECORD
    if not path.exists() and not path.is_symlink():
        return {}
    try:
        record = json.loads(path.read_text())
        paths = record["paths"] if isinstance(record, dict) and record.get("format") == DEMO_FORMAT else None
    except (OSError, ValueError, KeyError):
        paths = None
    valid = isinstance(paths, dict) and all(
        entry is None or (isinstance(entry, dict) and isinstance(entry.get("files"), dict)) for entry in paths.values()
    )
    if path.is_symlink() or not valid:
        raise DemoFolderError(
            f"{path} is not the offline demo's record of what it wrote: nothing in {Path(folder)} can be proved the "
            "demo's, so nothing was changed. Move it away, or choose another --demo_dir."
        )
    return paths


def write_demo_record(folder, record) -> None:
    """Replace DEMO_RECORD in one step (written beside it, then renamed)."""
    path = Path(folder) / DEMO_RECORD
    partial = path.with_name(f"{DEMO_RECORD}.{secrets.token_hex(4)}.partial")
    partial.write_text(json.dumps({"format": DEMO_FORMAT, "paths": record}, indent=1, sort_keys=True) + "\n")
    os.replace(partial, path)


def folder_files(folder) -> dict:
    """{relative path: {"bytes", "sha256"}} of every file under `folder`."""
    folder = Path(folder)
    return {
        path.relative_to(folder).as_posix(): {"bytes": path.stat().st_size, "sha256": sha256_of_file(path)}
        for path in sorted(folder.rglob("*")) if path.is_file() and not path.is_symlink()
    }


def not_ours(folder, name, record) -> list[str]:
    """What keeps `folder/name` from being the demo's to delete: [] when it is missing, unfinished work of the demo,
    or a sealed path holding only files it was sealed with, unchanged."""
    path = Path(folder) / name
    if not path.exists() and not path.is_symlink():
        return []
    if name not in record:
        return [f"'{path}' (not written by the offline demo: {DEMO_RECORD} does not list it)"]
    if path.is_symlink():
        return [f"'{path}' (a link)"]
    entry = record[name]
    if entry is None:
        return []
    if not path.is_dir():
        return [f"'{path}' (not the folder the offline demo wrote)"]
    sealed, problems = entry["files"], []
    sealed_folders = {parent.as_posix() for relative in sealed for parent in Path(relative).parents}
    for child in sorted(path.rglob("*")):
        relative = child.relative_to(path).as_posix()
        if child.is_symlink():
            problems.append(f"'{child}' (a link)")
        elif child.is_dir():
            if relative not in sealed_folders:
                problems.append(f"'{child}/' (not written by the offline demo)")
        elif relative not in sealed:
            problems.append(f"'{child}' (not written by the offline demo)")
        elif child.stat().st_size != sealed[relative]["bytes"] or sha256_of_file(child) != sealed[relative]["sha256"]:
            problems.append(f"'{child}' (changed since the offline demo wrote it)")
    return problems


def refuse_unless_ours(folder, names, record) -> None:
    """One message naming what, among `folder/names`, the demo may not replace; nothing is changed."""
    problems = [problem for name in names for problem in not_ours(folder, name, record)]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DemoFolderError(
            f"The offline demo replaces only what it wrote in {folder}, and it would have to replace {problems[0]}"
            f"{more}: nothing was changed. Move it out of {folder}, or choose another --demo_dir."
        )


def remove_ours(folder, name, record) -> None:
    """Delete `folder/name` if it is the demo's (else DemoFolderError), and forget it."""
    refuse_unless_ours(folder, [name], record)
    path = Path(folder) / name
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    if record.pop(name, "absent") != "absent":
        write_demo_record(folder, record)


def claim(folder, name, record, is_folder=True) -> Path:
    """Create `folder/name` (a folder, or an empty file), recorded as the demo's first; refused if it exists."""
    path = Path(folder) / name
    record[name] = None
    write_demo_record(folder, record)
    try:
        if is_folder:
            path.mkdir()
        else:
            path.open("x").close()
    except FileExistsError:
        del record[name]
        write_demo_record(folder, record)
        raise DemoFolderError(
            f"'{path}' appeared while the offline demo was preparing it: it is not replaced."
        ) from None
    return path


def seal(folder, name, record, source=None) -> None:
    """Record `folder/name` as finished: the files of `source` (default: the path itself) with their SHA-256."""
    record[name] = {"files": folder_files(source or Path(folder) / name)}
    write_demo_record(folder, record)


# Training


def train_demo_models(names, folder, export, record, extra_arguments=(), root=PROJECT_ROOT) -> None:
    """Run the training scripts of demo models `names` with --offline_demo, at the same time (one process each),
    each into a new staging folder `folder/.<name>.partial-<hex>`, moved to `folder/<name>` (sealed) only on
    success; logs in `folder/<name>.log`. A failure: DemoTrainingError naming the script and the end of its log."""
    folder, runs = Path(folder), {}
    for name in names:
        script, arguments = OFFLINE_DEMO_MODELS[name]
        staging = claim(folder, f".{name}.partial-{secrets.token_hex(4)}", record)
        remove_ours(folder, f"{name}.log", record)
        log_path = claim(folder, f"{name}.log", record, is_folder=False)
        arguments = ["--offline_demo", "--dataset_name", str(export), "--output_dir", str(staging), *arguments,
                     *extra_arguments]
        logger.info(f"Training the offline demo {name}: {script} --offline_demo ... (log: {log_path})")
        runs[name] = (script, staging, start_script(Path(root) / script, arguments, log_path, cwd=root,
                                                    env={**os.environ, "HF_HUB_OFFLINE": "1"}))
    failures = []
    for name, (script, staging, started) in runs.items():
        status = started.wait()
        if status != 0 or not model_folder_complete(staging):
            failures.append(started.failure(status, f"{script} --offline_demo", LOG_TAIL_LINES))
            remove_ours(folder, staging.name, record)
            continue
        remove_ours(folder, name, record)  # an incomplete model of the demo's (checked before training)
        seal(folder, name, record, source=staging)
        staging.rename(folder / name)
        del record[staging.name]
        write_demo_record(folder, record)
    if failures:
        raise DemoTrainingError(
            "The offline demo could not train its models (nothing of a failed training is kept; the next start "
            "trains it again):\n" + "\n".join(failures)
        )


def prepare_offline_demo(folder, cases_per_group=None, extra_arguments=(), root=PROJECT_ROOT) -> dict[str, Path]:
    """{"classifier": path, "segmenter": path}: the tiny offline demo models in `folder`, trained by their scripts
    when missing or incomplete, else reused. `cases_per_group` and `extra_arguments` (appended to both training
    commands, e.g. ["--max_steps", "2"]) make a quicker demo; delete the folder to train again.

    The synthetic export is reused only when complete (`lymphus_ml.data.export_problems`). Before anything is
    written, whatever this would replace (an incomplete model, its log, an incomplete export) must be the demo's
    (see the module's docstring), else DemoFolderError names it."""
    folder = Path(folder)
    paths = {name: folder / name for name in OFFLINE_DEMO_MODELS}
    missing = [name for name, path in paths.items() if not model_folder_complete(path)]
    if not missing:
        logger.info(f"Reusing the offline demo models in {folder}")
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    record = read_demo_record(folder)
    export = folder / SYNTHETIC_FOLDER / "export"
    reuse_export = export.is_dir() and not export.is_symlink() and not export_problems(export)
    replaced = [*missing, *[f"{name}.log" for name in missing], *([] if reuse_export else [SYNTHETIC_FOLDER])]
    refuse_unless_ours(folder, replaced, record)
    for name in [name for name in record if re.fullmatch(r"\.\w+\.partial-[0-9a-f]+", name)]:
        remove_ours(folder, name, record)  # a staging folder of a run that was cut short
    if not reuse_export:
        remove_ours(folder, SYNTHETIC_FOLDER, record)
        claim(folder, SYNTHETIC_FOLDER, record)
        # official counts by default, images at 1/4 size
        write_synthetic_export(folder / SYNTHETIC_FOLDER, 0.25, cases_per_group)
        seal(folder, SYNTHETIC_FOLDER, record)
    train_demo_models(missing, folder, export, record, extra_arguments, root)
    return paths


def synthetic_examples(folder, per_group: int = 2) -> list[Path]:
    """Example images: the first `per_group` benign-group and malignant-group cases of centre 2 of a synthetic
    release (`lymphus.py synth`, made-up pixels; centre 2 is the offline demo's external centre, unseen in its
    training), as PNG files in `folder`, written once: a file already there under one of their names is used as it
    is, never overwritten (the folder may hold what someone put there)."""
    from lymphus_ml.synthetic_archives import write_synthetic_archives

    folder = Path(folder)
    names = [f"synthetic-center2-{group}-{index}.png" for group in ("benign", "malignant")
             for index in range(1, per_group + 1)]
    if all((folder / name).is_file() for name in names):
        return [folder / name for name in names]
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        archives = write_synthetic_archives(scratch, cases_per_group=max(3, per_group), scale=0.5)
        with zipfile.ZipFile(archives[-1]) as archive:
            for member in archive.namelist():
                found = re.search(r"/(Benign|Malignant)/(\d+) \1 Image\.bmp$", member)
                name = found and f"synthetic-center2-{found.group(1).lower()}-{found.group(2)}.png"
                if name in names and not (folder / name).exists():
                    with archive.open(member) as handle:
                        Image.open(handle).convert("L").save(folder / name)
    return [folder / name for name in names]
