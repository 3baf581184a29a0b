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

Outputs in --output_dir: predictions.csv (file, probability_<positive>, label_at_threshold, threshold, mask_path,
node_pixels, roi), masks/<name>.png (the predicted mask, pixel values 0 = background, 1 = node: multiply by 255 to
view it) and, with --save_overlays, overlays/<name>.png (the predicted contour in red).
"""

import csv
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from lymphus_ml.cli import parse_arguments, run
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


logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


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


# Images


def list_images(path) -> list[Path]:
    """The image files to predict: `path` itself, or the images directly inside the folder `path`, sorted."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--input {path} does not exist.")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"--input {path} holds no image (looked for {', '.join(IMAGE_EXTENSIONS)}, not in subfolders).")
    return files


def read_image(path) -> Image.Image:
    """The image at `path` as 8-bit grayscale (mode L), any mode or bit depth mapped as `to_8bit_grayscale` says,
    with a note when it was changed. Unreadable: ValueError naming it."""
    image, note = read_grayscale_image(path)
    if note:
        logger.warning(f"Note: {path}: {note} (LymphUs models were trained on 8-bit grayscale).")
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


def output_names(paths) -> list[str]:
    """A unique file stem per input (the stem, or the whole name when two inputs share a stem)."""
    stems = [Path(p).stem for p in paths]
    return [Path(p).stem if stems.count(Path(p).stem) == 1 else Path(p).name.replace(".", "_") for p in paths]


def write_predictions_csv(path, rows, positive_label="malignant") -> Path:
    """One row per input file: its prediction, or `status` "failed: <why>" with the prediction columns empty."""
    fieldnames = ["file", "status", f"probability_{positive_label}", "label_at_threshold", "threshold", "mask_path",
                  "node_pixels", "roi"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


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
        "file": str(path),
        "status": "ok",
        f"probability_{positive}": float(probability),
        "label_at_threshold": label_at_threshold(probability, threshold, settings),
        "threshold": threshold,
        "mask_path": mask_path,
        "node_pixels": int(mask.sum()) if mask is not None else "",
        "roi": roi,
    }


def main(args=None):
    # Arguments
    (predict_args,) = parse_arguments([PredictArguments], args)
    logging.basicConfig(format="%(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler(sys.stdout)])
    logger.setLevel(logging.INFO)
    paths = list_images(predict_args.input)
    output_dir = Path(predict_args.output_dir)
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
        (output_dir / "masks").mkdir(parents=True, exist_ok=True)
        if predict_args.save_overlays:
            (output_dir / "overlays").mkdir(parents=True, exist_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    logger.info(f"{len(paths)} image(s); classifier ROI {roi_mode} (margin {margin}), threshold {threshold:.4f}")

    # Segment, crop with the predicted mask, classify: a batch of files at a time; a file that fails is reported
    rows, names, batch_size = [], output_names(paths), predict_args.batch_size
    for start in range(0, len(paths), batch_size):
        batch_paths, batch_names = paths[start : start + batch_size], names[start : start + batch_size]
        images, errors = read_images(batch_paths)
        good = [index for index, image in enumerate(images) if image is not None]
        predictions = classify_images(
            [images[i] for i in good], classifier, classifier_processor, settings, segmenter, segmenter_processor,
            [batch_paths[i] for i in good], batch_size,
        )
        by_index = dict(zip(good, predictions))
        for index, (path, name) in enumerate(zip(batch_paths, batch_names)):
            if index not in by_index:
                rows.append({"file": str(path), "status": f"failed: {errors[index]}"})
                logger.warning(f"{path}: not predicted: {errors[index]}")
                continue
            probability, mask, roi, _ = by_index[index]
            rows.append(
                prediction_row(path, name, images[index], probability, mask, roi, threshold, settings, output_dir,
                               predict_args.save_overlays)
            )

    # Outputs: every file has its row; the exit status says whether any failed
    write_predictions_csv(output_dir / "predictions.csv", rows, positive)
    failed = [row for row in rows if row["status"] != "ok"]
    logger.info(f"Predictions for {len(rows) - len(failed)} of {len(rows)} image(s) in {(output_dir / 'predictions.csv').resolve()}")
    if failed:
        raise ValueError(
            f"{len(failed)} of {len(rows)} image(s) could not be predicted (status column of "
            f"{output_dir / 'predictions.csv'}), e.g. {failed[0]['file']}: {failed[0]['status']}"
        )
    return rows

if __name__ == "__main__":
    run(main)
