"""The app's offline demo: tiny models trained on a synthetic export by the training scripts themselves, and
example images.

`prepare_offline_demo` trains the tiny offline demo models by running `train_vit.py --offline_demo` and
`train_segformer.py --offline_demo` as processes (`lymphus_ml.runs`, on a synthetic export, no network) into a
cache folder, and reuses them when they are there and complete. `synthetic_examples` writes example images.
"""

import logging
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

from PIL import Image

from lymphus_ml.data import write_synthetic_export
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


def model_folder_complete(folder) -> bool:
    """Whether `folder` holds a saved model: its config, weights and image processor."""
    return all((Path(folder) / name).is_file() for name in MODEL_FILES)


def train_demo_models(names, folder, export, extra_arguments=(), root=PROJECT_ROOT) -> None:
    """Run the training scripts of demo models `names` with --offline_demo, at the same time (one process each),
    each into `folder/<name>.partial`, moved to `folder/<name>` only on success; logs in `folder/<name>.log`."""
    runs = {}
    for name in names:
        script, arguments = OFFLINE_DEMO_MODELS[name]
        staging, log_path = folder / f"{name}.partial", folder / f"{name}.log"
        shutil.rmtree(staging, ignore_errors=True)
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
            continue
        shutil.rmtree(folder / name, ignore_errors=True)
        staging.rename(folder / name)
    if failures:
        raise RuntimeError("\n".join(failures))


def prepare_offline_demo(folder, cases_per_group=None, extra_arguments=(), root=PROJECT_ROOT) -> dict[str, Path]:
    """{"classifier": path, "segmenter": path}: the tiny offline demo models in `folder`, trained by their scripts
    when missing or incomplete, else reused. `cases_per_group` and `extra_arguments` (appended to both training
    commands, e.g. ["--max_steps", "2"]) make a quicker demo; delete the folder to train again."""
    folder = Path(folder)
    paths = {name: folder / name for name in OFFLINE_DEMO_MODELS}
    missing = [name for name, path in paths.items() if not model_folder_complete(path)]
    if not missing:
        logger.info(f"Reusing the offline demo models in {folder}")
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    # official counts by default, images at 1/4 size; reused when there
    export = write_synthetic_export(folder / "synthetic-lymphus", 0.25, cases_per_group, reuse=True)
    train_demo_models(missing, folder, export, extra_arguments, root)
    return paths


def synthetic_examples(folder, per_group: int = 2) -> list[Path]:
    """Example images: the first `per_group` benign-group and malignant-group cases of centre 2 of a synthetic
    release (`lymphus.py synth`, made-up pixels; centre 2 is the offline demo's external centre, unseen in its
    training), as PNG files in `folder`, written once."""
    import lymphus

    folder = Path(folder)
    names = [f"synthetic-center2-{group}-{index}.png" for group in ("benign", "malignant")
             for index in range(1, per_group + 1)]
    if all((folder / name).is_file() for name in names):
        return [folder / name for name in names]
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        archives = lymphus.write_synthetic_archives(scratch, cases_per_group=max(3, per_group), scale=0.5)
        with zipfile.ZipFile(archives[-1]) as archive:
            for member in archive.namelist():
                found = re.search(r"/(Benign|Malignant)/(\d+) \1 Image\.bmp$", member)
                name = found and f"synthetic-center2-{found.group(1).lower()}-{found.group(2)}.png"
                if name in names:
                    with archive.open(member) as handle:
                        Image.open(handle).convert("L").save(folder / name)
    return [folder / name for name in names]
