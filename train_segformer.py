#!/usr/bin/env python
# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "torch>=2.4",
#     "torchvision>=0.19",
#     "transformers>=5,<6",
#     "accelerate>=1.0",
#     "datasets>=5,<6",
#     "huggingface_hub>=2,<3",
#     "evaluate>=0.4",
#     "scikit-learn>=1.3",
#     "scipy",
#     "matplotlib>=3.7",
#     "pillow",
#     "safetensors",
# ]
# ///
"""Fine-tune a semantic-segmentation transformer to draw the lymph node on LymphUs ultrasound (background vs node).

Offline, end to end on synthetic data (tiny SegFormer built from a config, no download):

    python train_segformer.py --offline_demo --output_dir runs/segformer-demo --num_train_epochs 6 --learning_rate 5e-3 --per_device_train_batch_size 4

or, step by step (any export works the same way):

    python lymphus.py synth --output_dir /tmp/lymphus_raw
    python lymphus.py export --data_dir /tmp/lymphus_raw --output_dir /tmp/lymphus --verification_mode basic_checks
    python train_segformer.py --dataset_name /tmp/lymphus --dataset_config center1 --external_config center2 \
        --model_config_json '{"model_type":"segformer","depths":[1,1,1,1],"hidden_sizes":[8,16,32,64],"num_attention_heads":[1,1,2,2],"decoder_hidden_size":32}' \
        --image_size 64 --num_train_epochs 1 --use_cpu --output_dir /tmp/segformer-lymphus

A real run, from a pretrained encoder and the dataset on the Hub:

    python train_segformer.py --dataset_name <user>/lymphus --dataset_config center1 --external_config center2 \
        --model_name_or_path nvidia/mit-b0 --image_size 512 --num_train_epochs 50 --learning_rate 6e-5 --bf16 \
        --output_dir segformer-lymphus-center1 --push_to_hub --hub_model_id <user>/segformer-lymphus-center1

The same run on Hub hardware (PEP 723 dependencies above; train_vit.py and the metric module travel with it):

    python train_segformer.py --launch_on_hub a10g-small --dataset_name <user>/lymphus ... --push_to_hub --hub_model_id <user>/...

Labels: 0 = background, 1 = lymph_node, used as stored. Unlike the ADE20k recipe of the transformers example
(`do_reduce_labels=True`: 0 becomes 255 and is ignored, every other class moves down by one), nothing is reduced
and nothing is ignored: with two classes, reducing would drop the background from the loss and turn the node into
class 0, and the model would learn to paint every pixel as node. The loss is the cross-entropy over every pixel.

Outputs in --output_dir: the model (safetensors) + image processor, metrics_<split>.json (mean Dice, IoU and HD95
in pixels with bootstrap CIs, per centre when a split mixes centres), segmentation_cases.csv (per case),
overlays_<split>.png (best, median and worst cases) and README.md (the model card). Use the model with predict.py.
"""

import csv
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

import datasets
import transformers
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForSemanticSegmentation,
    HfArgumentParser,
    SegformerImageProcessor,
)

from train_vit import (
    LOCAL_ONLY_OPTIONS,
    ClinicalTrainer,
    ClinicalTrainingArguments,
    HubJobArguments,
    format_metric,
    metric_script_path,
    agg_pyplot,
    dataset_is_synthetic,
    job_script_args,
    json_safe,
    check_hub_job_request,
    launch_hub_job,
    load_evaluation_sets,
    read_model_config_json,
    train_and_save,
    write_synthetic_export,
    model_input_size,
    push_folder_to_hub,
    resolve_hub_token,
)


logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent
DEFAULT_METRIC_PATH = REPO_ROOT / "metrics" / "binary_segmentation"
ID2LABEL = {0: "background", 1: "lymph_node"}
LABEL2ID = {name: index for index, name in ID2LABEL.items()}
NODE_CLASS = LABEL2ID["lymph_node"]
SEGMENTATION_METRICS = ("dice", "iou", "hd95")
METRIC_DISPLAY_NAMES = {"dice": "Dice", "iou": "IoU", "hd95": "HD95 (pixels)"}
# The offline demo's model: a SegFormer small enough to train on 2 CPU cores in seconds.
TINY_SEGFORMER_CONFIG = {
    "model_type": "segformer",
    "depths": [1, 1, 1, 1],
    "hidden_sizes": [8, 16, 32, 64],
    "num_attention_heads": [1, 1, 2, 2],
    "decoder_hidden_size": 32,
}
# Contour colours of the overlays (RGB).
EXPERT_COLOR = (0, 200, 0)
PREDICTED_COLOR = (255, 40, 40)


@dataclass
class DataTrainingArguments:
    """What data to train and evaluate on."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A LymphUs export: a local folder written by `lymphus.py export`, or a Hub dataset id."},
    )
    dataset_config: str | None = field(
        default=None,
        metadata={"help": "Subset to train on: center1, center2, all, center1_to_center2, center2_to_center1."},
    )
    external_config: str | None = field(
        default=None,
        metadata={
            "help": "Subset used as external validation (all its splits together), e.g. center2. Never used for "
            "training or model selection."
        },
    )
    image_column_name: str = field(default="image", metadata={"help": "Column holding the (grayscale) image."})
    mask_column_name: str = field(default="mask", metadata={"help": "Column holding the 0/1 node mask."})
    case_id_column_name: str = field(default="case_id", metadata={"help": "Unique case identifier column."})
    centre_column_name: str = field(default="centre", metadata={"help": "Centre column, for per-centre metrics."})
    augmentation: str = field(
        default="standard",
        metadata={
            "help": "standard: random resized crop, horizontal flip, rotation (image and mask together), "
            "brightness/contrast (image only); none.",
            "choices": ["standard", "none"],
        },
    )
    n_bootstrap: int = field(default=1000, metadata={"help": "Bootstrap resamples (over images) for the CIs."})
    confidence_level: float = field(default=0.95, metadata={"help": "Confidence level of the intervals."})
    metric_path: str = field(
        default=str(DEFAULT_METRIC_PATH),
        metadata={"help": "The binary_segmentation evaluate module (its folder or its .py file)."},
    )

    offline_demo: bool = field(
        default=False,
        metadata={
            "help": "No download at all: write synthetic archives in the official format, export them to "
            "<output_dir>/synthetic-lymphus, and train a tiny SegFormer built from a config on center1 with center2 "
            "as external validation (each overridable with its own flag)."
        },
    )

    def __post_init__(self):
        if self.dataset_name is None and not self.offline_demo:
            raise ValueError(
                "--dataset_name is required: a folder written by `lymphus.py export` or a Hub dataset id (or pass --offline_demo)."
            )
        if self.external_config is not None and self.external_config == self.dataset_config:
            raise ValueError(
                f"--external_config {self.external_config} is the training subset itself; choose the other centre."
            )


@dataclass
class ModelArguments:
    """Which segmenter to fine-tune (or build from a config, offline)."""

    model_name_or_path: str = field(
        default="nvidia/mit-b0",
        metadata={"help": "Any AutoModelForSemanticSegmentation checkpoint (or a SegFormer encoder): Hub id or folder."},
    )
    model_config_json: str | None = field(
        default=None,
        metadata={
            "help": "Build a randomly initialised model from this config instead of downloading one: a JSON string "
            'or a .json file with "model_type", e.g. {"model_type":"segformer","depths":[1,1,1,1],'
            '"hidden_sizes":[8,16,32,64],"num_attention_heads":[1,1,2,2],"decoder_hidden_size":32}.'
        },
    )
    image_processor_name: str | None = field(
        default=None, metadata={"help": "Image processor name or path, if not the model's own."}
    )
    image_size: int | None = field(
        default=None,
        metadata={"help": "Square input size in pixels (default: the image processor's size; 512 for a config build)."},
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded models and datasets are stored."})
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the model."})
    ignore_mismatched_sizes: bool = field(
        default=True,
        metadata={"help": "Replace a checkpoint's decode head of another size (e.g. ADE20k's 150 classes)."},
    )


@dataclass
class SegmentationJobArguments(HubJobArguments):
    """Hub Job options of train_vit.py, plus the shared module the Job needs beside this script."""

    train_vit_path: str = field(
        default=str(REPO_ROOT / "train_vit.py"),
        metadata={
            "help": "train_vit.py, whose Hub, Job, plot and card helpers this script imports. --launch_on_hub "
            "ships it beside the script; nothing else reads it."
        },
    )


@dataclass
class SegmentationTrainingArguments(ClinicalTrainingArguments):
    """train_vit.py's defaults (evaluate and save every epoch, keep the best), selecting on validation Dice."""

    metric_for_best_model: str | None = field(default="dice", metadata={"help": "Model selection metric (mean Dice)."})


# Masks, transforms and augmentation: pure functions on pixels


def mask_labels(mask, where: str = "mask") -> np.ndarray:
    """The mask as a uint8 HxW array of class indices 0 (background) / 1 (node), used as stored.

    Any other value is refused rather than remapped: a 0/255 mask or a label map shifted by one would otherwise
    train the model on the wrong classes without a word.
    """
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"{where}: expected a 2-D (grayscale) mask, got shape {array.shape}.")
    values = np.unique(array)
    if not np.isin(values, (0, 1)).all():
        raise ValueError(
            f"{where}: the mask holds values {values[:10].tolist()}, expected only 0 (background) and 1 (node). "
            "A 0/255 mask must be divided by 255; labels are never reduced."
        )
    return array.astype(np.uint8)


def train_geometry(size, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), degrees=10.0, flip=0.5):
    """Random geometry for (image, mask) pairs: transforms v2 moves a `tv_tensors.Mask` with the image and resamples
    it with nearest neighbour, so it stays 0/1 and aligned. No vertical flip: depth runs down an ultrasound image."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=scale, ratio=ratio, antialias=True),
            v2.RandomHorizontalFlip(p=flip),
            v2.RandomAffine(degrees=degrees, interpolation=v2.InterpolationMode.BILINEAR),
        ]
    )


class SegmentationTransform:
    """PIL grayscale image (+ 0/1 mask) -> (normalized float tensor (C, H, W), int64 labels (H, W) or None).

    Train: `train_geometry` applied jointly to image and mask, then brightness/contrast on the image only. Eval: both
    resized to `size` (the mask with nearest neighbour). Grayscale is repeated to `num_channels`; the stored data
    stays grayscale. The same transform feeds predict.py, so training and inference see identical inputs.
    """

    def __init__(self, size, image_mean, image_std, train=False, num_channels=3, geometry=None):
        self.size, self.train, self.num_channels = tuple(size), train, num_channels
        if train:
            self.geometry = geometry or train_geometry(self.size)
            self.intensity = v2.ColorJitter(brightness=0.2, contrast=0.2)
        else:
            self.geometry = geometry or v2.Resize(self.size, antialias=True)
            self.intensity = None
        self.image_mean = _per_channel(image_mean, num_channels)
        self.image_std = _per_channel(image_std, num_channels)

    def __call__(self, image, mask=None, where: str = "mask"):
        if image.mode != "L":
            image = image.convert("L")
        pixels = tv_tensors.Image(F.pil_to_tensor(image))
        labels = None
        if mask is not None:
            labels = tv_tensors.Mask(torch.from_numpy(mask_labels(mask, where))[None])
            if labels.shape[-2:] != pixels.shape[-2:]:
                raise ValueError(
                    f"{where}: mask size {tuple(labels.shape[-2:])} differs from image size {tuple(pixels.shape[-2:])}."
                )
            pixels, labels = self.geometry(pixels, labels)
            labels = labels.as_subclass(torch.Tensor)[0].long()
        else:
            pixels = self.geometry(pixels)
        if self.intensity is not None:
            pixels = self.intensity(pixels)
        pixels = pixels.as_subclass(torch.Tensor).expand(self.num_channels, -1, -1)
        pixels = F.to_dtype(pixels, torch.float32, scale=True)
        return F.normalize(pixels, self.image_mean, self.image_std), labels


def _per_channel(values, num_channels):
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    if len(values) == num_channels:
        return values
    return [float(np.mean(values))] * num_channels


def transform_for(image_processor, num_channels=3, train=False) -> SegmentationTransform:
    """The SegmentationTransform matching an image processor: its size, mean and std (resize only, no crop)."""
    size = model_input_size(image_processor)
    mean = getattr(image_processor, "image_mean", None) or [0.5] * num_channels
    std = getattr(image_processor, "image_std", None) or [0.5] * num_channels
    return SegmentationTransform(size, mean, std, train=train, num_channels=num_channels)


class SegmentationBatchTransform:
    """`Dataset.with_transform` callable: a batch of rows -> {"pixel_values", "labels"}."""

    def __init__(self, transform, image_column="image", mask_column="mask", case_id_column="case_id"):
        self.transform = transform
        self.image_column, self.mask_column, self.case_id_column = image_column, mask_column, case_id_column

    def __call__(self, batch):
        images, masks = batch[self.image_column], batch[self.mask_column]
        names = batch.get(self.case_id_column) or [f"row {index}" for index in range(len(images))]
        pairs = [self.transform(image, mask, where=f"case {name}") for image, mask, name in zip(images, masks, names)]
        return {"pixel_values": [pixels for pixels, _ in pairs], "labels": [labels for _, labels in pairs]}


def collate_fn(examples):
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.stack([example["labels"] for example in examples]),
    }


# Loss, logits -> masks, metrics


def upsample_logits(logits, size) -> torch.Tensor:
    """Bilinear upsampling of (N, C, h, w) logits to `size` (height, width), as the SegFormer processor does."""
    return torch.nn.functional.interpolate(logits.float(), size=tuple(size), mode="bilinear", align_corners=False)


class SegmentationLoss:
    """Trainer `compute_loss_func`: cross-entropy over every pixel, logits upsampled to the labels' size.

    No `ignore_index`: background pixels are half of the problem (a model that paints everything as node must pay
    for it). Returns sum / number of pixels, over the whole gradient-accumulated batch when the Trainer passes
    `num_items_in_batch` (then it does not divide by the accumulation steps itself).
    """

    def __call__(self, outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        logits = upsample_logits(logits, labels.shape[-2:])
        loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
        return loss / (num_items_in_batch if num_items_in_batch is not None else labels.numel())


def node_mask(logits) -> torch.Tensor:
    """uint8 argmax of (..., 2, H, W) two-class logits: 1 where the node logit is strictly larger (ties go to the
    background, as argmax does). Written as a comparison because argmax over 2 channels is ~30x slower on CPU."""
    if logits.shape[-3] != len(ID2LABEL):
        raise ValueError(f"Expected logits for {len(ID2LABEL)} classes {ID2LABEL}, got {logits.shape[-3]} channels.")
    return (logits.select(-3, NODE_CLASS) > logits.select(-3, 1 - NODE_CLASS)).to(torch.uint8)


def logits_to_masks(logits, sizes) -> list[np.ndarray]:
    """0/1 uint8 node masks, one per image at its own (height, width): logits upsampled bilinearly, then argmax."""
    return [node_mask(upsample_logits(image_logits[None], size)[0]).cpu().numpy() for image_logits, size in zip(logits, sizes)]


def preprocess_logits_for_metrics(logits, labels):
    """Trainer hook: keep the predicted class map at the labels' size (uint8) instead of every logit."""
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return node_mask(upsample_logits(logits, labels.shape[-2:]))


@torch.inference_mode()
def segment_images(model, transform, images, batch_size: int = 8) -> list[np.ndarray]:
    """Predicted 0/1 node masks (uint8), each at its image's original size; images are PIL (any mode)."""
    parameter = next(model.parameters())
    model.eval()
    masks = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        pixel_values = torch.stack([transform(image)[0] for image in batch])
        logits = model(pixel_values=pixel_values.to(parameter.device, parameter.dtype)).logits
        masks += logits_to_masks(logits, [(image.height, image.width) for image in batch])
    return masks


def load_segmentation_metric(metric_path=DEFAULT_METRIC_PATH):
    """The repository's `binary_segmentation` evaluate module (offline)."""
    import evaluate

    script = metric_script_path(metric_path)
    if not script.is_file():
        raise FileNotFoundError(f"Segmentation metric module not found at {script}; pass --metric_path to its folder.")
    return evaluate.load(str(metric_path))


def segmentation_metrics(metric, predictions, references, n_bootstrap=1000, confidence_level=0.95, seed=0) -> dict:
    """Mean Dice, IoU and HD95 (pixels) over images with bootstrap CIs, JSON-safe (NaN -> None)."""
    results = metric.compute(
        predictions=list(predictions),
        references=list(references),
        n_bootstrap=n_bootstrap,
        confidence_level=confidence_level,
        seed=seed,
    )
    return json_safe(dict(results))


class SegmentationComputeMetrics:
    """Trainer `compute_metrics` on validation: mean Dice/IoU/HD95 at the model's input size, no bootstrap.

    Only model selection reads these; the reported metrics are computed again at each image's original size.
    """

    def __init__(self, metric):
        self.metric = metric

    def __call__(self, eval_prediction):
        predictions = np.asarray(eval_prediction.predictions)
        references = np.asarray(eval_prediction.label_ids)
        results = self.metric.compute(predictions=list(predictions), references=list(references), n_bootstrap=0)
        return {name: float(results[name]) for name in SEGMENTATION_METRICS if np.isfinite(results[name])}


def evaluate_split(
    model,
    transform,
    split_dataset,
    metric,
    *,
    image_column="image",
    mask_column="mask",
    case_id_column="case_id",
    centre_column="centre",
    batch_size=8,
    n_bootstrap=1000,
    confidence_level=0.95,
    seed=0,
):
    """Segment every image of `split_dataset` at its original size and score it against the expert mask.

    Returns (results, cases, predictions): results as `segmentation_metrics` plus `by_centre` when the split mixes
    centres; cases: one dict per image (case_id, centre, dice, iou, hd95, expert_pixels, predicted_pixels), in
    order; predictions: the predicted 0/1 masks, in order.
    """
    columns = [image_column, mask_column] + [c for c in (case_id_column, centre_column) if c in split_dataset.column_names]
    split_dataset = split_dataset.select_columns(columns)
    predictions, references, case_ids, centres = [], [], [], []
    for start in range(0, len(split_dataset), batch_size):
        rows = split_dataset[start : start + batch_size]
        names = rows.get(case_id_column) or [f"row {start + i}" for i in range(len(rows[image_column]))]
        predictions += segment_images(model, transform, rows[image_column], batch_size)
        references += [mask_labels(mask, f"case {name}") for mask, name in zip(rows[mask_column], names)]
        case_ids += names
        centres += rows.get(centre_column) or [None] * len(names)
    results = segmentation_metrics(metric, predictions, references, n_bootstrap, confidence_level, seed)
    if len(set(centres)) > 1:
        results["by_centre"] = {}
        for centre in sorted(set(centres)):
            index = [i for i, c in enumerate(centres) if c == centre]
            by_centre = segmentation_metrics(
                metric, [predictions[i] for i in index], [references[i] for i in index], n_bootstrap, confidence_level, seed
            )
            results["by_centre"][centre] = {k: v for k, v in by_centre.items() if not k.startswith("per_image")}
    cases = [
        {
            "case_id": case_ids[i],
            "centre": centres[i],
            "dice": results["per_image_dice"][i],
            "iou": results["per_image_iou"][i],
            "hd95": results["per_image_hd95"][i],
            "expert_pixels": int(references[i].sum()),
            "predicted_pixels": int(predictions[i].sum()),
        }
        for i in range(len(predictions))
    ]
    return results, cases, predictions


# Overlays


def contour(mask, thickness: int = 1) -> np.ndarray:
    """Boundary band of a 0/1 mask: its pixels within `thickness` pixels of the background (image edge included)."""
    inside = np.asarray(mask) > 0
    if not inside.any():
        return inside
    cross = ndimage.generate_binary_structure(2, 1)
    eroded = ndimage.binary_erosion(inside, structure=cross, iterations=thickness, border_value=0)
    return inside & ~eroded


def contour_thickness(shape) -> int:
    """About 1 pixel per 200 of the larger side, so that contours stay visible on full-size images."""
    return max(1, int(round(max(shape[:2]) / 200)))


def overlay_contours(image, *contours) -> np.ndarray:
    """HxWx3 uint8: the grayscale image with each (mask, rgb color) pair's contour drawn on top, in order."""
    gray = np.asarray(image.convert("L") if isinstance(image, Image.Image) else image, dtype=np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    for mask, color in contours:
        mask = np.asarray(mask)
        if mask.shape != gray.shape:
            raise ValueError(f"Mask shape {mask.shape} differs from image shape {gray.shape}.")
        rgb[contour(mask, contour_thickness(gray.shape))] = color
    return rgb


def select_cases(per_image_dice) -> dict[str, int]:
    """Indices of the best, median and worst image by Dice (stable order; fewer entries if there are < 3 images)."""
    order = np.argsort(-np.asarray(per_image_dice, dtype=float), kind="stable")
    picks = {"best": int(order[0]), "median": int(order[len(order) // 2]), "worst": int(order[-1])}
    unique, seen = {}, set()
    for rank, index in picks.items():
        if index not in seen:
            unique[rank] = index
            seen.add(index)
    return unique


def plot_overlay_grid(rows, path, title: str = "") -> Path:
    """PNG grid, one row per case: image | expert contour (green) | predicted (red) over expert (green).

    rows: dicts with image (PIL), expert (HxW 0/1), predicted (HxW 0/1), label (row title).
    """
    plt = agg_pyplot()
    figure, axes = plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows)), dpi=100, squeeze=False)
    for axes_row, row in zip(axes, rows):
        panels = [
            (np.asarray(row["image"].convert("L")), "image"),
            (overlay_contours(row["image"], (row["expert"], EXPERT_COLOR)), "expert (green)"),
            (
                overlay_contours(row["image"], (row["expert"], EXPERT_COLOR), (row["predicted"], PREDICTED_COLOR)),
                "predicted (red) vs expert",
            ),
        ]
        for axis, (pixels, name) in zip(axes_row, panels):
            axis.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None, vmin=0, vmax=255)
            axis.set_title(name, fontsize=9)
            axis.set_xticks([])
            axis.set_yticks([])
        axes_row[0].set_ylabel(row["label"], fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return Path(path)


# Data


# Outputs


def write_cases_csv(path, rows) -> Path:
    """rows: dicts with split, case_id, centre, dice, iou, hd95 (empty when undefined), expert/predicted pixels."""
    fieldnames = ["split", "case_id", "centre", "dice", "iou", "hd95", "expert_pixels", "predicted_pixels"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows({key: ("" if row.get(key) is None else row.get(key)) for key in fieldnames} for row in rows)
    return Path(path)


def build_segmentation_card(
    *,
    model_name: str,
    base_model: str | None,
    model_description: str,
    dataset_name: str,
    dataset_config: str | None,
    external_config: str | None,
    split_sizes: dict,
    split_metrics: dict,
    grids: dict | None = None,
    synthetic: bool = False,
    hyperparameters: dict | None = None,
    confidence_level: float = 0.95,
    repo_id: str | None = None,
):
    """A `huggingface_hub.ModelCard` for a LymphUs node segmenter, with Dice/IoU/HD95 in `model-index`.

    split_sizes: {split: n_images}; split_metrics: {split: metrics as in metrics_<split>.json};
    grids: {split: "overlays_<split>.png"}.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    grids = grids or {}
    is_hub_dataset = not Path(dataset_name).exists()
    dataset_label = dataset_name if is_hub_dataset else f"{Path(dataset_name).name} (local export)"
    split_sources = {
        "train": f"{dataset_config or 'default'} / train",
        "validation": f"{dataset_config or 'default'} / validation",
        "test": f"{dataset_config or 'default'} / test",
        "external": f"{external_config} / all splits",
    }
    level = int(round(confidence_level * 100))

    eval_results = []
    for split, metrics in split_metrics.items():
        config = external_config if split == "external" else dataset_config
        for name in SEGMENTATION_METRICS:
            if metrics.get(name) is None:
                continue
            label = f"{METRIC_DISPLAY_NAMES[name]}, mean over images"
            args = {"confidence_level": confidence_level}
            if metrics.get(f"{name}_ci_low") is not None:
                label += f" ({level}% CI {metrics[f'{name}_ci_low']:.3f}-{metrics[f'{name}_ci_high']:.3f})"
                args.update(ci_low=metrics[f"{name}_ci_low"], ci_high=metrics[f"{name}_ci_high"])
            eval_results.append(
                EvalResult(
                    task_type="image-segmentation",
                    dataset_type=dataset_name if is_hub_dataset else "lymphus",
                    dataset_name=f"LymphUs {config or ''} {split}".replace("  ", " "),
                    dataset_config=config,
                    dataset_split="all" if split == "external" else split,
                    metric_type=name,
                    metric_value=float(metrics[name]),
                    metric_name=label,
                    metric_args=args,
                )
            )

    card_data = ModelCardData(
        model_name=model_name,
        base_model=base_model,
        datasets=[dataset_name] if is_hub_dataset else None,
        library_name="transformers",
        pipeline_tag="image-segmentation",
        tags=["image-segmentation", "semantic-segmentation", "medical-imaging", "ultrasound", "lymph-node", "lymphus"]
        + (["synthetic-data"] if synthetic else []),
        metrics=["dice", "iou", "hd95"],
        eval_results=eval_results or None,
    )

    lines = [f"# {model_name}", ""]
    if synthetic:
        lines += [
            "> **Trained and evaluated on synthetic data** (made-up images, not patient ultrasound): the numbers "
            "below only show that the pipeline runs and mean nothing clinically.",
            "",
        ]
    lines += [
        "> **Not for clinical use.** Research model; it has not been validated for diagnosis or patient care.",
        "",
        f"Segmentation of the lymph node on ultrasound, fine-tuned on the LymphUs expert masks. {model_description}",
        "",
        "## Model",
        "",
        "- Base model: "
        + (f"[{base_model}](https://huggingface.co/{base_model})" if base_model else "none (randomly initialised from a config)"),
        f"- Dataset: {dataset_label}, subset `{dataset_config or 'default'}`"
        + (f"; external validation on subset `{external_config}`" if external_config else ""),
        "- Classes: 0 = `background`, 1 = `lymph_node`, exactly as the masks store them. The image processor has "
        "`do_reduce_labels=False` and the loss is the cross-entropy over every pixel (no `ignore_index`): reducing "
        "labels as in the ADE20k recipe would drop the background and turn the node into class 0.",
        "- Input: the grayscale image resized to the processor's size (no crop) and repeated to 3 channels; the "
        "logits are upsampled bilinearly to the original image size before the argmax.",
        "",
        "## Data",
        "",
        "| split | source | images |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {split} | {split_sources.get(split, split)} | {n} |" for split, n in split_sizes.items()]
    lines += [
        "",
        "Training used the train split only; model selection (best validation Dice at the input size) used the "
        "validation split only. The external set played no part in either.",
        "",
        "## Results",
        "",
        f"Per image at the original resolution, then the mean over images ({level}% percentile bootstrap CI over "
        "images). Dice and IoU of the node class (1.0 when both masks are empty, 0.0 when only one is). HD95: "
        "symmetric 95th-percentile Hausdorff distance between the mask boundaries, in pixels, over the images where "
        "both masks are non-empty.",
        "",
        "| split | n | Dice | IoU | HD95 (px) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for split, metrics in split_metrics.items():
        row = f"| {split} ({split_sources.get(split, split)}) | {metrics.get('n_images')} | "
        row += " | ".join(format_metric(metrics, name) for name in SEGMENTATION_METRICS)
        lines.append(row + f" (n={metrics.get('n_hd95_defined')}) |")
        for centre, values in (metrics.get("by_centre") or {}).items():
            row = f"| {split}, {centre} only | {values.get('n_images')} | "
            lines.append(row + " | ".join(format_metric(values, name) for name in SEGMENTATION_METRICS) + " |")
    lines.append("")
    for split, grid in grids.items():
        lines += [
            f"Best, median and worst {split} cases by Dice (expert contour green, predicted red):",
            "",
            f"![overlays {split}]({grid})",
            "",
        ]
    if hyperparameters:
        lines += ["## Training", "", "| hyperparameter | value |", "| --- | --- |"]
        lines += [f"| {key} | {value} |" for key, value in hyperparameters.items()]
        lines.append("")
    model_ref = repo_id or "path/to/this/model"
    lines += [
        "## Intended use",
        "",
        "Research on lymph-node ultrasound: drawing the node for measurement studies, and cropping the node for a "
        "classifier when no expert mask exists (`predict.py` of the lymphus repository). **Not for clinical use**: "
        "not a medical device, not for diagnosis, triage or treatment decisions.",
        "",
        "## Limitations",
        "",
        "- Small, two-centre dataset; performance on other centres, machines, operators and populations is unknown "
        "(the external-centre results are the best guide).",
        "- One node per image is assumed; the model may miss a node or mark several regions.",
        "- Confidence intervals are percentile bootstrap over images; they ignore the variability of training.",
        "- HD95 is in pixels of each image, and pixel spacing differs between machines: it is not in millimetres.",
        "",
        "## How to run inference",
        "",
        "```python",
        "from PIL import Image",
        "",
        "from predict import load_segmenter, predict_masks  # predict.py of the lymphus repository",
        "",
        f'model, processor = load_segmenter("{model_ref}")',
        'masks = predict_masks(model, processor, [Image.open("ultrasound.png").convert("L")])  # HxW uint8, 1 = node',
        "```",
        "",
        "Or from the command line, with a classifier trained by train_vit.py (`--roi crop`), without an expert mask:",
        "",
        "```bash",
        f"python predict.py --input images/ --segmenter {model_ref} --classifier <user>/vit-lymphus --output_dir predictions",
        "```",
        "",
    ]
    content = f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines)
    return ModelCard(content)


def main(args=None):
    # Arguments
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, SegmentationTrainingArguments, SegmentationJobArguments))
    argv = sys.argv[1:] if args is None else list(args)
    if len(argv) == 1 and argv[0].endswith(".json"):
        model_args, data_args, training_args, job_args = parser.parse_json_file(json_file=os.path.abspath(argv[0]))
    else:
        model_args, data_args, training_args, job_args = parser.parse_args_into_dataclasses(args=argv)
    # The token stays in this local variable only: TrainingArguments are pickled into training_args.bin.
    hub_token = resolve_hub_token(training_args.hub_token) if (training_args.push_to_hub or job_args.launch_on_hub) else None
    push_to_hub, training_args.push_to_hub, training_args.hub_token = training_args.push_to_hub, False, None

    # Hub Job: submit this same command (with train_vit.py and the metric module) and stop
    if job_args.launch_on_hub:
        check_hub_job_request(data_args.dataset_name, push_to_hub, hub_token)
        script_args = job_script_args(argv, drop=LOCAL_ONLY_OPTIONS + ("--train_vit_path",))
        return launch_hub_job(
            script_args + ["--train_vit_path", str(Path(job_args.train_vit_path).resolve())],
            job_args.launch_on_hub,
            hub_token,
            timeout=job_args.job_timeout,
            namespace=job_args.job_namespace,
            script=job_args.job_script or str(Path(__file__).resolve()),
            metric_path=data_args.metric_path,
        )

    # Logging
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    logger.info(f"Device: {training_args.device}, bf16: {training_args.bf16}, fp16: {training_args.fp16}")
    transformers.set_seed(training_args.seed)
    output_dir = Path(training_args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    # Offline demo: synthetic archives in the official format -> export -> a tiny SegFormer from a config
    if data_args.offline_demo:
        data_args.dataset_name = data_args.dataset_name or write_synthetic_export(output_dir / "synthetic-lymphus")
        data_args.dataset_config = data_args.dataset_config or "center1"
        data_args.external_config = data_args.external_config or "center2"
        model_args.model_config_json = model_args.model_config_json or json.dumps(TINY_SEGFORMER_CONFIG)
        model_args.image_size = model_args.image_size or 64

    # Dataset
    dataset, evaluation_sets = load_evaluation_sets(
        data_args.dataset_name,
        data_args.dataset_config,
        data_args.external_config,
        cache_dir=model_args.cache_dir,
        do_train=training_args.do_train,
        required_columns=(data_args.image_column_name, data_args.mask_column_name, data_args.case_id_column_name),
    )

    # Model and image processor: two classes, background included, labels never reduced
    if model_args.model_config_json:
        model_type, config_dict = read_model_config_json(model_args.model_config_json)
        config = AutoConfig.for_model(model_type, num_labels=len(ID2LABEL), id2label=ID2LABEL, label2id=LABEL2ID, **config_dict)
        model = AutoModelForSemanticSegmentation.from_config(config)
        size = model_args.image_size or 512
        num_channels = getattr(config, "num_channels", 3)
        image_processor = SegformerImageProcessor(
            size={"height": size, "width": size},
            image_mean=[0.5] * num_channels,
            image_std=[0.5] * num_channels,
            do_reduce_labels=False,
        )
        base_model, model_description = None, f"Architecture `{model_type}` built from a config: {json.dumps(config_dict)}."
    else:
        config = AutoConfig.from_pretrained(
            model_args.model_name_or_path,
            num_labels=len(ID2LABEL),
            id2label=ID2LABEL,
            label2id=LABEL2ID,
            cache_dir=model_args.cache_dir,
            revision=model_args.model_revision,
        )
        model = AutoModelForSemanticSegmentation.from_pretrained(
            model_args.model_name_or_path,
            config=config,
            cache_dir=model_args.cache_dir,
            revision=model_args.model_revision,
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        )
        image_processor = AutoImageProcessor.from_pretrained(
            model_args.image_processor_name or model_args.model_name_or_path,
            cache_dir=model_args.cache_dir,
            revision=model_args.model_revision,
        )
        if model_args.image_size:
            image_processor.size = {"height": model_args.image_size, "width": model_args.image_size}
        base_model = model_args.model_name_or_path if not Path(model_args.model_name_or_path).exists() else None
        verb = "Fine-tuned from" if training_args.do_train else "Evaluation only (no training) of"
        model_description = f"{verb} `{model_args.model_name_or_path}` ({config.model_type})."
    if getattr(image_processor, "do_reduce_labels", False):
        logger.warning(f"{model_args.image_processor_name or model_args.model_name_or_path}: do_reduce_labels=True "
                       "(an ADE20k setting) is turned off: LymphUs class 0 is the background and is learned.")
    image_processor.do_reduce_labels = False
    num_channels = getattr(model.config, "num_channels", 3)

    # Transforms
    eval_transform = transform_for(image_processor, num_channels, train=False)
    train_transform = transform_for(image_processor, num_channels, train=data_args.augmentation != "none")
    columns = [data_args.image_column_name, data_args.mask_column_name, data_args.case_id_column_name]

    def view(split_dataset, transform):
        batch_transform = SegmentationBatchTransform(transform, *columns)
        return split_dataset.select_columns(columns).with_transform(batch_transform)

    # Trainer
    metric = load_segmentation_metric(data_args.metric_path)
    trainer = ClinicalTrainer(
        model=model,
        args=training_args,
        train_dataset=view(dataset["train"], train_transform) if training_args.do_train else None,
        eval_dataset=view(dataset["validation"], eval_transform),
        processing_class=image_processor,
        data_collator=collate_fn,
        compute_metrics=SegmentationComputeMetrics(metric),
        compute_loss_func=SegmentationLoss(),
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
    )

    # Training
    if training_args.do_train:
        train_and_save(trainer, training_args.resume_from_checkpoint)

    # Evaluation at each image's original size, with bootstrap CIs; overlays of the best, median and worst cases
    split_metrics, grids, case_rows, split_sizes = {}, {}, [], {}
    if training_args.do_train:
        split_sizes["train"] = len(dataset["train"])
    for split, split_dataset in evaluation_sets.items():
        results, cases, predictions = evaluate_split(
            trainer.model,
            eval_transform,
            split_dataset,
            metric,
            image_column=data_args.image_column_name,
            mask_column=data_args.mask_column_name,
            case_id_column=data_args.case_id_column_name,
            centre_column=data_args.centre_column_name,
            batch_size=training_args.per_device_eval_batch_size,
            n_bootstrap=data_args.n_bootstrap,
            confidence_level=data_args.confidence_level,
            seed=training_args.seed,
        )
        split_sizes[split] = len(split_dataset)
        summary = {key: value for key, value in results.items() if not key.startswith("per_image")}
        record = {
            "split": split,
            "dataset": data_args.dataset_name if not Path(data_args.dataset_name).exists() else Path(data_args.dataset_name).name,
            "config": data_args.external_config if split == "external" else data_args.dataset_config,
            "resolution": "original",
            **summary,
            "cases": cases,
        }
        (output_dir / f"metrics_{split}.json").write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
        split_metrics[split] = summary
        case_rows += [{"split": split, **case} for case in cases]

        rows = []
        for rank, index in select_cases(results["per_image_dice"]).items():
            example = split_dataset[index]
            case = cases[index]
            hd95 = "n/a" if case["hd95"] is None else f"{case['hd95']:.1f} px"
            rows.append(
                {
                    "image": example[data_args.image_column_name],
                    "expert": mask_labels(example[data_args.mask_column_name], f"case {case['case_id']}"),
                    "predicted": predictions[index],
                    "label": f"{rank}: {case['case_id']}\nDice {case['dice']:.3f}, HD95 {hd95}",
                }
            )
        grid = plot_overlay_grid(rows, output_dir / f"overlays_{split}.png", title=f"{split}: best, median, worst by Dice")
        grids[split] = grid.name
        logger.info(
            f"{split}: Dice {format_metric(summary, 'dice')}, IoU {format_metric(summary, 'iou')}, "
            f"HD95 {format_metric(summary, 'hd95')} px (n={summary['n_images']})"
        )
    write_cases_csv(output_dir / "segmentation_cases.csv", case_rows)

    # Model card and push
    size = model_input_size(image_processor)
    hyperparameters = {
        "learning_rate": training_args.learning_rate,
        "epochs": training_args.num_train_epochs,
        "train_batch_size": training_args.per_device_train_batch_size,
        "seed": training_args.seed,
        "augmentation": data_args.augmentation,
        "loss": "cross-entropy over all pixels (no ignore_index)",
        "model_selection": f"best validation {training_args.metric_for_best_model}",
        "input_size": f"{size[0]}x{size[1]}",
    }
    repo_id = training_args.hub_model_id or output_dir.resolve().name
    if push_to_hub and "/" not in repo_id:
        from huggingface_hub import HfApi

        repo_id = f"{HfApi(token=hub_token).whoami()['name']}/{repo_id}"
    card = build_segmentation_card(
        model_name=repo_id.split("/")[-1],
        base_model=base_model,
        model_description=model_description,
        dataset_name=data_args.dataset_name,
        dataset_config=data_args.dataset_config,
        external_config=data_args.external_config,
        split_sizes=split_sizes,
        split_metrics=split_metrics,
        grids=grids,
        synthetic=dataset_is_synthetic(data_args.dataset_name),
        hyperparameters=hyperparameters,
        confidence_level=data_args.confidence_level,
        repo_id=repo_id if push_to_hub else training_args.hub_model_id,
    )
    card.save(output_dir / "README.md")
    if push_to_hub:
        url = push_folder_to_hub(output_dir, repo_id, hub_token, commit_message="LymphUs node segmenter")
        logger.info(f"Pushed to {url}")
    logger.info(f"Results in {output_dir.resolve()}: README.md, metrics_*.json, segmentation_cases.csv, overlays_*.png")
    return split_metrics


if __name__ == "__main__":
    main()
