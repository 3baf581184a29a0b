#!/usr/bin/env python
"""Classify lymph nodes on ultrasound without an expert mask: segment the node, then crop it for the classifier.

    python predict.py --input images/ --classifier vit-lymphus --segmenter segformer-lymphus --output_dir predictions

--input is an image file or a folder of images (not recursive). --classifier is a model written by train_vit.py
and --segmenter one written by train_segformer.py (local folders or Hub ids). The classifier's config says how
it was trained (`roi_mode`, `roi_margin`, `youden_threshold`, `positive_label`, saved by train_vit.py): a
`crop` or `masked` classifier gets the node's bounding box from the PREDICTED mask, exactly as it got it from the
expert mask in training; a `full` classifier needs no segmenter. When the predicted mask is empty the whole image
is classified and a warning names the image.

Offline, with the two tiny models of the train_segformer.py and train_vit.py docstrings:

    python predict.py --input /tmp/images --classifier /tmp/vit-lymphus --segmenter /tmp/segformer-lymphus \
        --output_dir /tmp/predictions --device cpu --save_overlays

Every file in --input gets a row of predictions.csv (file, status, probability_<positive>, label_at_threshold,
threshold, mask_path, node_pixels, roi): status "ok"; "failed: <why>" for an image that cannot be predicted (not
readable, broken link, several frames as in an animated GIF or a TIFF stack, smaller than 32 pixels on a side, over
PIL's decompression-bomb limit), which makes the exit status 1 once the table is written; "skipped: <why>" for a
file that is no image (any file PIL identifies is read, whatever its extension). File names that are not UTF-8 are
written with the odd bytes escaped (\\xff). The table is renamed into place complete. Beside it:
masks/<name>.png (the predicted mask, pixel values 0 = background, 1 = node: multiply by 255 to view it; <name> is
the file's stem, made unique when stems clash) and, with --save_overlays, overlays/<name>.png (the predicted
contour in red).

--output_dir is predict.py's only when it is missing, empty, or holds exactly what an earlier predict.py run listed
in its .lymphus-predict.json (every file it wrote, with its size and SHA-256). Anything else there (a file of yours,
a listed file changed since, a link) is refused by name before anything is written or deleted and before the models
load. Reusing the folder deletes the earlier run's files first, so no mask of an image that is not in this run is
left behind. A run cut short leaves its marker saying "running" and no predictions.csv; the next run into the folder
replaces what it wrote (lymphus_ml/predict_folder.py says why).
"""

import csv
import logging
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from lymphus_ml.cli import parse_arguments, run
from lymphus_ml.conformal import set_of
from lymphus_ml.images import read_grayscale_image
from lymphus_ml.inference import (
    check_segmenter_given,
    classifier_settings,
    classify_images,
    label_at_threshold,
    load_classifier,
    load_segmenter,
)
from lymphus_ml.plots import PREDICTED_COLOR, overlay_contours
from lymphus_ml.predict_folder import check_output_folder, claim_output_folder, complete_output_folder


logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")


@dataclass
class PredictArguments:
    input: str = field(metadata={"help": "An image file, or a folder of images (.png .jpg .bmp .tif ..., not recursive)."})
    classifier: str = field(metadata={"help": "Classifier written by train_vit.py: local folder or Hub id."})
    segmenter: str | None = field(
        default=None,
        metadata={
            "help": "Segmenter written by train_segformer.py (folder or Hub id). Required unless the classifier was "
            "trained with --roi full."
        },
    )
    output_dir: str = field(default="predictions", metadata={"help": "Where predictions.csv, masks/ and overlays/ go."})
    threshold: float | None = field(
        default=None, metadata={"help": "Decision threshold (default: the classifier's validation Youden threshold, else 0.5)."}
    )
    batch_size: int = field(default=8, metadata={"help": "Images per forward pass."})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1, ... (default: cuda if available)."})
    save_overlays: bool = field(default=False, metadata={"help": "Also write each image with the predicted contour."})
    revision: str = field(default="main", metadata={"help": "Branch, tag or commit of Hub models."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded models are stored."})

    def __post_init__(self):
        if self.threshold is not None and not (math.isfinite(self.threshold) and 0 <= self.threshold <= 1):
            raise ValueError(f"--threshold {self.threshold} is not a probability: pass a number from 0 to 1.")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"--batch_size {self.batch_size}: pass a whole number of images per forward pass, 1 or more.")


# Images


def display_name(path) -> str:
    """`path` as printable text: bytes that are not UTF-8 (a Linux file name may hold any) escaped as \\xff."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_image_file(path) -> bool:
    """Whether a file of no known image extension is one all the same: PIL identifies a format from its first bytes.
    A file PIL identifies but cannot open (too large, unreadable) counts as an image, so that reading it says why."""
    try:
        with Image.open(path):
            return True
    except UnidentifiedImageError:
        return False
    except Exception:
        return True


def list_inputs(path) -> list[tuple[Path, str]]:
    """[(file, why not read)] for `path` itself, or for every entry directly inside the folder `path`, sorted:
    why is "" for a file to predict (a known image extension, or any file PIL identifies as an image), else the
    status its row gets: "failed: broken link ..." or "skipped: ...". Subfolders are not listed (not recursive)."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise FileNotFoundError(f"--input {display_name(path)} is a broken link (to {display_name(os.readlink(path))}).")
    if not path.exists():
        raise FileNotFoundError(f"--input {display_name(path)} does not exist.")
    if not path.is_dir():
        return [(path, "")]
    entries = []
    for entry in sorted(path.iterdir()):
        if entry.is_symlink() and not entry.exists():
            entries.append((entry, f"failed: broken link (to {display_name(os.readlink(entry))})"))
        elif entry.is_dir():
            continue
        elif not entry.is_file():
            entries.append((entry, "skipped: not a regular file"))
        elif entry.suffix.lower() in IMAGE_EXTENSIONS or is_image_file(entry):
            entries.append((entry, ""))
        else:
            entries.append((entry, "skipped: not an image file (no image format PIL reads)"))
    if not any(why == "" for _, why in entries):
        found = "; ".join(f"{display_name(entry.name)} ({why})" for entry, why in entries[:5])
        raise ValueError(
            f"--input {display_name(path)} holds no image (looked for {', '.join(IMAGE_EXTENSIONS)} and any file PIL "
            f"identifies, not in subfolders)" + (f"; found {len(entries)} other file(s): {found}" if entries else ".")
        )
    return entries


def list_images(path) -> list[Path]:
    """The image files to predict: `path` itself, or the images directly inside the folder `path`, sorted."""
    return [entry for entry, why in list_inputs(path) if why == ""]


def read_image(path) -> Image.Image:
    """The image at `path` as 8-bit grayscale (mode L), any mode or bit depth mapped as `to_8bit_grayscale` says,
    with a note when it was changed. Not one readable still image of a sensible size (`open_image`): ValueError
    naming it."""
    image, note = read_grayscale_image(path, display_name(path))
    if note:
        logger.warning(f"Note: {display_name(path)}: {note} (LymphUs models were trained on 8-bit grayscale).")
    return image


def read_images(paths) -> tuple[list, list[str]]:
    """(images, errors) in the order of `paths`: an unreadable file gives None and its reason, the others go on."""
    images, errors = [], []
    for path in paths:
        try:
            images.append(read_image(path))
            errors.append("")
        except ValueError as error:
            images.append(None)
            errors.append(str(error))
    return images, errors


def safe_file_stem(text, max_bytes=200) -> str:
    """`text` usable as a file name on any system: path separators, characters Windows forbids and control
    characters (and the backslash of an escaped byte) as _, cut to `max_bytes` of UTF-8 (file names hold 255)."""
    text = re.sub(r'[\\/:*?"<>|\x00-\x1f]', "_", text).encode("utf-8")[:max_bytes].decode("utf-8", "ignore")
    return text or "_"


def output_names(paths) -> list[str]:
    """A unique file stem per input for masks/ and overlays/: its stem; when two inputs share a stem, the whole
    file name with dots as _; a name still taken (compared ignoring case, as some file systems do) gets -2, -3, ...
    e.g. a.png, a.jpg, a_png.bmp -> a_png-2, a_jpg, a_png. Bytes that are not UTF-8 are written escaped."""
    stems = [safe_file_stem(display_name(Path(p).stem)) for p in paths]
    counts = {}
    for stem in stems:
        counts[stem.lower()] = counts.get(stem.lower(), 0) + 1
    own_stem = [counts[stem.lower()] == 1 for stem in stems]
    wanted = [stem if own else safe_file_stem(display_name(Path(p).name).replace(".", "_"))
              for p, stem, own in zip(paths, stems, own_stem)]
    taken, names = {name.lower() for name, own in zip(wanted, own_stem) if own}, []
    for name, own in zip(wanted, own_stem):
        candidate, number = name, 1
        while not own and candidate.lower() in taken:
            number += 1
            candidate = f"{name}-{number}"
        taken.add(candidate.lower())
        names.append(candidate)
    return names


def partial_path(path) -> Path:
    """Where write_predictions_csv writes `path` before renaming it into place (listed as ours while a run writes)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


def planned_outputs(names, folders) -> list[str]:
    """Every file a run may write into --output_dir, relative to it, known before anything is written: the table, its
    partial file, and <folder>/<name>.png for each of `folders` (masks, overlays) and each of `names` (output_names)."""
    table = "predictions.csv"
    return [table, partial_path(table).as_posix()] + [f"{folder}/{name}.png" for folder in folders for name in names]


def write_predictions_csv(path, rows, positive_label="malignant") -> Path:
    """One row per input file: its prediction, or `status` "failed: <why>" / "skipped: <why>" with the prediction
    columns empty. UTF-8; written to a temporary file beside `path` (partial_path) and renamed into place, so `path`
    is either the complete table or not there (a table already there stays as it was until then)."""
    path = Path(path)
    fieldnames = ["file", "status", f"probability_{positive_label}", "label_at_threshold", "threshold", "mask_path",
                  "node_pixels", "roi"] + (["conformal_set"] if any("conformal_set" in row for row in rows) else [])
    partial = partial_path(path)
    try:
        with open(partial, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def prediction_row(path, name, image, probability, mask, roi, threshold, settings, output_dir, save_overlays) -> dict:
    """The CSV row of one predicted file; its mask (and overlay) written beside."""
    mask_path = ""
    if mask is not None:
        mask_path = f"masks/{name}.png"
        Image.fromarray(mask).save(output_dir / mask_path)
        if save_overlays:
            Image.fromarray(overlay_contours(image, (mask, PREDICTED_COLOR))).save(output_dir / "overlays" / f"{name}.png")
    positive = settings["positive_label"]
    return {
        "file": display_name(path),
        "status": "ok",
        f"probability_{positive}": float(probability),
        "label_at_threshold": label_at_threshold(probability, threshold, settings),
        "threshold": threshold,
        "mask_path": mask_path,
        "node_pixels": int(mask.sum()) if mask is not None else "",
        "roi": roi,
        # A model trained with --cv_folds: {benign}, {malignant} or "uncertain: refer" at its conformal level
        **({"conformal_set": set_of(probability, settings["conformal"])} if settings.get("conformal") else {}),
    }


def predict_images(paths, names, models, settings, threshold, batch_size, output_dir, save_overlays) -> dict:
    """{path: its CSV row}: segment, crop with the predicted mask, classify, a batch of files at a time; a file that
    cannot be read gets a "failed: <why>" row and the others go on. models: (classifier, its processor, segmenter,
    its processor), the segmenter's None for a full-image classifier."""
    classifier, classifier_processor, segmenter, segmenter_processor = models
    predicted = {}
    for start in range(0, len(paths), batch_size):
        batch_paths, batch_names = paths[start : start + batch_size], names[start : start + batch_size]
        images, errors = read_images(batch_paths)
        good = [index for index, image in enumerate(images) if image is not None]
        predictions = classify_images(
            [images[i] for i in good], classifier, classifier_processor, settings, segmenter, segmenter_processor,
            [display_name(batch_paths[i]) for i in good], batch_size,
        )
        by_index = dict(zip(good, predictions))
        for index, (path, name) in enumerate(zip(batch_paths, batch_names)):
            if index not in by_index:
                predicted[path] = {"file": display_name(path), "status": f"failed: {errors[index]}"}
                continue
            probability, mask, roi, _ = by_index[index]
            predicted[path] = prediction_row(path, name, images[index], probability, mask, roi, threshold, settings,
                                             output_dir, save_overlays)
    return predicted


def main(args=None):
    # Arguments; --output_dir is refused before the models load unless it is provably ours (lymphus_ml.predict_folder)
    (predict_args,) = parse_arguments([PredictArguments], args)
    logging.basicConfig(format="%(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler(sys.stdout)])
    logger.setLevel(logging.INFO)
    entries = list_inputs(predict_args.input)
    paths = [entry for entry, why in entries if why == ""]
    output_dir = Path(predict_args.output_dir)
    check_output_folder(output_dir)
    loading = dict(device=predict_args.device, revision=predict_args.revision, cache_dir=predict_args.cache_dir)

    # Models: the classifier says which ROI it needs
    classifier, classifier_processor = load_classifier(predict_args.classifier, **loading)
    settings = classifier_settings(classifier.config)
    roi_mode, margin, positive = settings["roi_mode"], settings["roi_margin"], settings["positive_label"]
    threshold = settings["threshold"] if predict_args.threshold is None else predict_args.threshold
    check_segmenter_given(predict_args.classifier, roi_mode, predict_args.segmenter)
    segmenter, segmenter_processor = None, None
    if predict_args.segmenter is not None:
        segmenter, segmenter_processor = load_segmenter(predict_args.segmenter, **loading)
    logger.info(f"{len(paths)} image(s); classifier ROI {roi_mode} (margin {margin}), threshold {threshold:.4f}")

    # The output folder: marked as this run's with every name it may write, the earlier run's files deleted
    names = output_names(paths)
    folders = (["masks"] + (["overlays"] if predict_args.save_overlays else [])) if segmenter is not None else []
    planned = planned_outputs(names, folders)
    claim_output_folder(output_dir, planned, folders)

    # Segment, crop with the predicted mask, classify; every file of --input has its row (predicted, failed or
    # skipped, in folder order)
    models = (classifier, classifier_processor, segmenter, segmenter_processor)
    predicted = predict_images(paths, names, models, settings, threshold, predict_args.batch_size, output_dir,
                               predict_args.save_overlays)
    rows = [predicted[entry] if why == "" else {"file": display_name(entry), "status": why} for entry, why in entries]
    for row in rows:
        if row["status"] != "ok":
            logger.warning(f"{row['file']}: not predicted: {row['status']}")

    # Outputs: the table, then the marker says the folder is complete; the exit status says whether any file failed
    csv_path = write_predictions_csv(output_dir / "predictions.csv", rows, positive)
    complete_output_folder(output_dir, planned, folders)
    failed = [row for row in rows if row["status"].startswith("failed")]
    skipped = [row for row in rows if row["status"].startswith("skipped")]
    logger.info(
        f"Predictions for {len(rows) - len(failed) - len(skipped)} of {len(rows)} file(s) in "
        f"{display_name(csv_path.resolve())}" + (f"; {len(skipped)} skipped (not images)" if skipped else "")
    )
    if failed:
        raise ValueError(
            f"{len(failed)} of {len(rows)} file(s) could not be predicted (status column of "
            f"{display_name(csv_path)}), e.g. {failed[0]['file']}: {failed[0]['status']}"
        )
    return rows


if __name__ == "__main__":
    run(main)
