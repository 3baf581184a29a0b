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

import numpy as np
import torch
from PIL import Image

from transformers import AutoImageProcessor, AutoModelForImageClassification, AutoModelForSemanticSegmentation, HfArgumentParser

from train_segformer import PREDICTED_COLOR, overlay_contours, segment_images, transform_for
from train_vit import ROI_MODES, ClassificationTransform, model_input_size, roi_image


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
    """The image at `path` as grayscale (mode L); another mode is converted with a note. Unreadable: ValueError naming it."""
    try:
        with Image.open(path) as opened:
            image = opened.copy()
            image.load()
    except Exception as error:
        raise ValueError(f"Cannot read image {path}: {error}. Remove it from the input or convert it to PNG.") from None
    if image.mode != "L":
        logger.warning(f"Note: {path} is {image.mode}, not grayscale; converted to L (LymphUs models were trained on grayscale).")
        image = image.convert("L")
    return image


def output_names(paths) -> list[str]:
    """A unique file stem per input (the stem, or the whole name when two inputs share a stem)."""
    stems = [Path(p).stem for p in paths]
    return [Path(p).stem if stems.count(Path(p).stem) == 1 else Path(p).name.replace(".", "_") for p in paths]


# Models


def _device(device=None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def load_segmenter(name_or_path, device=None, revision="main", cache_dir=None):
    """(model, image processor) of a segmenter written by train_segformer.py, in eval mode on `device`."""
    model = AutoModelForSemanticSegmentation.from_pretrained(name_or_path, revision=revision, cache_dir=cache_dir)
    processor = AutoImageProcessor.from_pretrained(name_or_path, revision=revision, cache_dir=cache_dir)
    if model.config.num_labels != 2:
        raise ValueError(
            f"Segmenter {name_or_path} has {model.config.num_labels} classes ({model.config.id2label}); expected 2 "
            "(0 background, 1 lymph node), as train_segformer.py writes."
        )
    return model.to(_device(device)).eval(), processor


def load_classifier(name_or_path, device=None, revision="main", cache_dir=None):
    """(model, image processor) of a classifier written by train_vit.py, in eval mode on `device`."""
    model = AutoModelForImageClassification.from_pretrained(name_or_path, revision=revision, cache_dir=cache_dir)
    processor = AutoImageProcessor.from_pretrained(name_or_path, revision=revision, cache_dir=cache_dir)
    return model.to(_device(device)).eval(), processor


def classifier_settings(config) -> dict:
    """How the classifier was trained, from the config train_vit.py saves: roi_mode, roi_margin, threshold,
    positive_label, positive_index, negative_label (missing entries: full image, 0.5, "malignant", with a warning)."""
    names = {int(index): name for index, name in config.id2label.items()}
    roi_mode = getattr(config, "roi_mode", None)
    if roi_mode is None:
        logger.warning("The classifier's config has no roi_mode (not written by train_vit.py?): using the full image.")
        roi_mode = "full"
    if roi_mode not in ROI_MODES:
        raise ValueError(f"The classifier's roi_mode {roi_mode!r} is not one of {ROI_MODES}.")
    positive_label = getattr(config, "positive_label", None) or "malignant"
    if positive_label not in names.values():
        raise ValueError(f"The classifier's positive label {positive_label!r} is not one of its classes {list(names.values())}.")
    threshold = getattr(config, "youden_threshold", None)
    if threshold is None:
        logger.warning("The classifier's config has no youden_threshold: using 0.5 (pass --threshold to choose).")
        threshold = 0.5
    others = [name for name in names.values() if name != positive_label]
    return {
        "roi_mode": roi_mode,
        "roi_margin": float(getattr(config, "roi_margin", 0.1)),
        "threshold": float(threshold),
        "positive_label": positive_label,
        "positive_index": next(index for index, name in names.items() if name == positive_label),
        "negative_label": others[0] if len(others) == 1 else f"not {positive_label}",
    }


# Prediction


def predict_masks(segmenter_model, segmenter_processor, images, batch_size: int = 8) -> list[np.ndarray]:
    """Predicted node masks: for each PIL image, a uint8 HxW array (0 background, 1 node) at that image's size.

    Batched on the model's device. Each image is preprocessed as in train_segformer.py's evaluation (grayscale,
    resized to the processor's size, its mean/std); the logits are upsampled bilinearly to the image's size, then
    argmax.
    """
    num_channels = getattr(segmenter_model.config, "num_channels", 3)
    return segment_images(segmenter_model, transform_for(segmenter_processor, num_channels), list(images), batch_size)


def roi_from_predicted_mask(image, mask, roi_mode: str = "crop", margin: float = 0.1, name: str = "image"):
    """(view, roi used): the classifier's input made with a predicted 0/1 mask (HxW array or PIL), as in training.

    An empty predicted mask leaves the whole image (for crop and masked alike), with a warning naming the image.
    """
    if roi_mode == "full":
        return image, "full"
    mask = np.asarray(mask, dtype=np.uint8)
    if not mask.any():
        logger.warning(f"{name}: the predicted mask is empty; classifying the full image instead of the {roi_mode} ROI.")
        return image, "full (empty predicted mask)"
    return roi_image(image, Image.fromarray(mask), roi_mode, margin), roi_mode


@torch.inference_mode()
def predict_probabilities(
    classifier_model, classifier_processor, images, positive_index: int = 1, batch_size: int = 8
) -> np.ndarray:
    """Softmax probability of class `positive_index` per PIL image (the ROI already applied), preprocessed as
    train_vit.py evaluates."""
    parameter = next(classifier_model.parameters())
    num_channels = getattr(classifier_model.config, "num_channels", 3)
    mean = getattr(classifier_processor, "image_mean", None) or [0.5] * num_channels
    std = getattr(classifier_processor, "image_std", None) or [0.5] * num_channels
    size = model_input_size(classifier_processor)
    transform = ClassificationTransform(size, mean, std, roi="full", train=False, num_channels=num_channels)
    probabilities = []
    for start in range(0, len(images), batch_size):
        pixel_values = torch.stack([transform(image) for image in images[start : start + batch_size]])
        logits = classifier_model(pixel_values=pixel_values.to(parameter.device, parameter.dtype)).logits
        probabilities.append(torch.softmax(logits.float(), dim=-1)[:, positive_index].cpu().numpy())
    return np.concatenate(probabilities) if probabilities else np.zeros(0)


def write_predictions_csv(path, rows, positive_label="malignant") -> Path:
    fieldnames = ["file", f"probability_{positive_label}", "label_at_threshold", "threshold", "mask_path", "node_pixels", "roi"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def main(args=None):
    # Arguments
    parser = HfArgumentParser(PredictArguments)
    (predict_args,) = parser.parse_args_into_dataclasses(args=sys.argv[1:] if args is None else list(args))
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
    if roi_mode != "full" and predict_args.segmenter is None:
        raise ValueError(
            f"Classifier {predict_args.classifier} was trained on --roi {roi_mode}: it needs the node. Pass "
            "--segmenter (a model written by train_segformer.py) to find it without an expert mask."
        )
    segmenter, segmenter_processor = None, None
    if predict_args.segmenter is not None:
        segmenter, segmenter_processor = load_segmenter(predict_args.segmenter, **loading)
        (output_dir / "masks").mkdir(parents=True, exist_ok=True)
        if predict_args.save_overlays:
            (output_dir / "overlays").mkdir(parents=True, exist_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    logger.info(f"{len(paths)} image(s); classifier ROI {roi_mode} (margin {margin}), threshold {threshold:.4f}")

    # Segment, crop with the predicted mask, classify: a batch of files at a time
    rows, names, batch_size = [], output_names(paths), predict_args.batch_size
    for start in range(0, len(paths), batch_size):
        batch_paths, batch_names = paths[start : start + batch_size], names[start : start + batch_size]
        images = [read_image(path) for path in batch_paths]
        if segmenter is not None:
            masks = predict_masks(segmenter, segmenter_processor, images, batch_size)
        else:
            masks = [None] * len(images)
        views, rois = [], []
        for image, mask, path in zip(images, masks, batch_paths):
            view, roi = (image, "full") if mask is None else roi_from_predicted_mask(image, mask, roi_mode, margin, str(path))
            views.append(view)
            rois.append(roi)
        probabilities = predict_probabilities(classifier, classifier_processor, views, settings["positive_index"], batch_size)
        for path, name, image, mask, probability, roi in zip(batch_paths, batch_names, images, masks, probabilities, rois):
            mask_path = ""
            if mask is not None:
                mask_path = f"masks/{name}.png"
                Image.fromarray(mask).save(output_dir / mask_path)
                if predict_args.save_overlays:
                    overlay = overlay_contours(image, (mask, PREDICTED_COLOR))
                    Image.fromarray(overlay).save(output_dir / "overlays" / f"{name}.png")
            rows.append(
                {
                    "file": str(path),
                    f"probability_{positive}": float(probability),
                    "label_at_threshold": positive if probability >= threshold else settings["negative_label"],
                    "threshold": threshold,
                    "mask_path": mask_path,
                    "node_pixels": int(mask.sum()) if mask is not None else "",
                    "roi": roi,
                }
            )

    # Outputs
    write_predictions_csv(output_dir / "predictions.csv", rows, positive)
    logger.info(f"Predictions for {len(rows)} image(s) in {(output_dir / 'predictions.csv').resolve()}")
    return rows

if __name__ == "__main__":
    main()
