#!/usr/bin/env python
# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "torch>=2.4",
#     "torchvision>=0.19",
#     "transformers>=5,<6",
#     "accelerate>=1.1",
#     "datasets>=5,<6",
#     "huggingface_hub>=2,<3",
#     "evaluate>=0.4.6",
#     "scipy",
#     "scikit-learn",
#     "matplotlib",
#     "pillow",
#     "safetensors",
# ]
# ///
"""Fine-tune an image-classification transformer on LymphUs (benign vs malignant lymph node ultrasound).

Offline, end to end on synthetic data (tiny ViT built from a config, no download; ~30 s on 2 CPU cores):

    python train_vit.py --offline_demo --output_dir runs/offline-demo --num_train_epochs 5 --learning_rate 1e-3 --roi crop

or, step by step (any export works the same way):

    python lymphus.py synth --output_dir /tmp/lymphus_raw
    python lymphus.py export --data_dir /tmp/lymphus_raw --output_dir /tmp/lymphus --verification_mode basic_checks
    python train_vit.py --dataset_name /tmp/lymphus --dataset_config center1 --external_config center2 \
        --model_config_json '{"model_type":"vit","image_size":64,"patch_size":16,"num_hidden_layers":2,"hidden_size":64,"num_attention_heads":2,"intermediate_size":128}' \
        --roi crop --num_train_epochs 3 --learning_rate 1e-3 --use_cpu --output_dir /tmp/vit-lymphus

A real run, from a pretrained checkpoint and the dataset on the Hub (on a GPU, give the data pipeline about
cores - 2 workers: benchmarks/bench_train_vit.py measures whether it keeps up):

    python train_vit.py --dataset_name <user>/lymphus --dataset_config center1 --external_config center2 \
        --model_name_or_path google/vit-base-patch16-224-in21k --roi crop --class_weighting balanced \
        --num_train_epochs 20 --learning_rate 5e-5 --bf16 --dataloader_num_workers 8 \
        --dataloader_persistent_workers True --output_dir vit-lymphus-center1 \
        --push_to_hub --hub_model_id <user>/vit-lymphus-center1

The same run on Hub hardware (the PEP 723 block above lists the dependencies; the token travels as a secret,
and the metric module is passed as a file so that it is shipped with the script):

    hf jobs uv run --flavor a10g-small --timeout 8h --secrets HF_TOKEN train_vit.py \
        --metric_path metrics/clinical_classification/clinical_classification.py --dataset_name <user>/lymphus ... \
        --dataloader_num_workers 3 --push_to_hub --hub_model_id <user>/vit-lymphus-center1
    python train_vit.py --launch_on_hub a10g-small --dataset_name <user>/lymphus ... --push_to_hub --hub_model_id <user>/...

Outputs in --output_dir: the model (safetensors) + image processor, metrics_<split>.json, predictions.csv,
roc_<split>.png, confusion_matrix_<split>.png, threshold.json and README.md (the model card).
"""

import csv
import importlib.util
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

import datasets
import transformers
from datasets import ClassLabel, concatenate_datasets, load_dataset
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    ViTImageProcessor,
)


logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent
DEFAULT_METRIC_PATH = REPO_ROOT / "metrics" / "clinical_classification"
ROI_MODES = ("full", "crop", "masked")
# The offline demo's model: a ViT small enough to train on 2 CPU cores in seconds.
TINY_VIT_CONFIG = {
    "model_type": "vit",
    "image_size": 64,
    "patch_size": 16,
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 2,
    "intermediate_size": 128,
}
PREDICTION_COLUMNS = ("case_id", "split", "label", "probability", "prediction_at_youden")
# Metrics reported per threshold, in the card's order.
THRESHOLD_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv", "f1")
METRIC_DISPLAY_NAMES = {
    "roc_auc": "ROC-AUC",
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "ppv": "PPV",
    "npv": "NPV",
    "f1": "F1",
}


@dataclass
class DataTrainingArguments:
    """What data to train and evaluate on, and how images reach the model."""

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
            "training, model selection or the threshold."
        },
    )
    image_column_name: str = field(default="image", metadata={"help": "Column holding the (grayscale) image."})
    mask_column_name: str = field(default="mask", metadata={"help": "Column holding the 0/1 node mask."})
    label_column_name: str = field(default="label", metadata={"help": "ClassLabel column to predict."})
    case_id_column_name: str = field(default="case_id", metadata={"help": "Unique case identifier column."})
    positive_label: str = field(default="malignant", metadata={"help": "Class whose probability the metrics use."})
    roi: str = field(
        default="full",
        metadata={
            "help": "full: whole image; crop: the mask's bounding box plus --roi_margin; masked: that crop with "
            "every pixel outside the node set to 0. A model trained on crops needs the same crop at inference.",
            "choices": list(ROI_MODES),
        },
    )
    roi_margin: float = field(
        default=0.1, metadata={"help": "Margin added on each side of the bounding box, as a fraction of its size."}
    )
    augmentation: str = field(
        default="standard",
        metadata={
            "help": "standard: random resized crop, flip, rotation, brightness/contrast; none.",
            "choices": ["standard", "none"],
        },
    )
    class_weighting: str = field(
        default="none",
        metadata={
            "help": "none, or balanced: cross-entropy weighted by n / (n_classes * n_class).",
            "choices": ["none", "balanced"],
        },
    )
    n_bootstrap: int = field(default=1000, metadata={"help": "Bootstrap resamples for the confidence intervals."})
    confidence_level: float = field(default=0.95, metadata={"help": "Confidence level of the intervals."})
    metric_path: str = field(
        default=str(DEFAULT_METRIC_PATH),
        metadata={"help": "The clinical_classification evaluate module (its folder or its .py file)."},
    )
    roi_source: str = field(
        default="expert",
        metadata={
            "help": "expert: crop/mask test sets with the expert masks only. predicted: also evaluate the test and "
            "external sets cropped with the masks of --segmenter_name_or_path (train_segformer.py), as at inference "
            "where no expert mask exists: <split>_predicted_roi in metrics, predictions and card, same threshold.",
            "choices": ["expert", "predicted"],
        },
    )
    segmenter_name_or_path: str | None = field(
        default=None, metadata={"help": "Segmenter (local folder or Hub id) for --roi_source predicted."}
    )
    offline_demo: bool = field(
        default=False,
        metadata={
            "help": "No download at all: write synthetic archives in the official format (lymphus.py synth), export "
            "them to <output_dir>/synthetic-lymphus, and train a tiny ViT built from a config on center1 with center2 "
            "as external validation (each overridable with its own flag)."
        },
    )

    def __post_init__(self):
        if self.dataset_name is None and not self.offline_demo:
            raise ValueError(
                "--dataset_name is required: a folder written by `lymphus.py export`, or a Hub id (or pass --offline_demo)."
            )
        if self.external_config is not None and self.external_config == self.dataset_config:
            raise ValueError(
                f"--external_config {self.external_config} is the training subset itself; choose the other centre."
            )
        if self.roi_source == "predicted" and (self.roi == "full" or self.segmenter_name_or_path is None):
            raise ValueError(
                f"--roi_source predicted needs --roi crop or masked (got {self.roi}) and --segmenter_name_or_path "
                f"(got {self.segmenter_name_or_path})."
            )
        if not 0.0 <= self.roi_margin <= 2.0:
            raise ValueError(f"--roi_margin {self.roi_margin} is outside [0, 2] (it is a fraction of the box size).")


@dataclass
class ModelArguments:
    """Which model to fine-tune (or build from a config, offline)."""

    model_name_or_path: str = field(
        default="google/vit-base-patch16-224-in21k",
        metadata={"help": "Any AutoModelForImageClassification checkpoint: Hub id or local folder."},
    )
    model_config_json: str | None = field(
        default=None,
        metadata={
            "help": "Build a randomly initialised model from this config instead of downloading one: a JSON string "
            'or a .json file with "model_type", e.g. {"model_type":"vit","image_size":64,"patch_size":16,'
            '"num_hidden_layers":2,"hidden_size":64,"num_attention_heads":2,"intermediate_size":128}.'
        },
    )
    image_processor_name: str | None = field(
        default=None, metadata={"help": "Image processor name or path, if not the model's own."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded models and datasets are stored."})
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the model."})
    ignore_mismatched_sizes: bool = field(
        default=True,
        metadata={"help": "Replace a checkpoint's classification head of another size (e.g. ImageNet's 1000)."},
    )


@dataclass
class HubJobArguments:
    """Submit this same run to Hugging Face Jobs instead of running it here."""

    launch_on_hub: str | None = field(
        default=None,
        metadata={"help": "Hardware flavor (a10g-small, t4-small, ...): submit this run as a Hub Job and exit."},
    )
    job_timeout: str = field(default="8h", metadata={"help": "Job timeout (e.g. 90m, 8h)."})
    job_namespace: str | None = field(default=None, metadata={"help": "User or organisation that runs the Job."})
    job_script: str | None = field(
        default=None, metadata={"help": "Script the Job runs: this file (default, uploaded) or a URL to it."}
    )


@dataclass
class ClinicalTrainingArguments(TrainingArguments):
    """TrainingArguments whose defaults evaluate every epoch and keep the checkpoint with the best validation AUC."""

    do_train: bool = field(default=True, metadata={"help": "Fine-tune (False: evaluate --model_name_or_path only)."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate on validation."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to save a checkpoint."})
    logging_strategy: str = field(default="epoch", metadata={"help": "When to log the training loss."})
    load_best_model_at_end: bool = field(default=True, metadata={"help": "Keep the best validation checkpoint."})
    metric_for_best_model: str | None = field(default="roc_auc", metadata={"help": "Model selection metric."})
    greater_is_better: bool | None = field(default=True, metadata={"help": "Higher selection metric is better."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept on disk."})
    # Images and masks are read by the transform, so the Trainer must not drop those columns.
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep False: the transform reads them."})


# ROI, grayscale and augmentation: pure functions on pixels


def roi_bounding_box(mask, margin: float = 0.1) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the mask's non-zero pixels, grown by `margin` x box size on each side, clipped.

    An empty mask gives the whole image.
    """
    if not isinstance(mask, Image.Image):
        mask = Image.fromarray(np.asarray(mask, dtype=np.uint8))
    width, height = mask.size
    box = mask.getbbox()  # C loop over the non-zero pixels: ~50x faster than np.nonzero on a full frame
    if box is None:
        return 0, 0, width, height
    left, top, right, bottom = box
    pad_x, pad_y = int(round(margin * (right - left))), int(round(margin * (bottom - top)))
    return max(0, left - pad_x), max(0, top - pad_y), min(width, right + pad_x), min(height, bottom + pad_y)


def roi_image(image, mask, mode: str = "full", margin: float = 0.1):
    """The model's view of a case. `image` and `mask` are PIL images of the same size (mask 0/1).

    full: the image; crop: the mask's bounding box plus `margin`; masked: that crop with pixels outside the node
    set to 0. An empty mask leaves the whole image (crop) or an all-zero image (masked).
    """
    if mode not in ROI_MODES:
        raise ValueError(f"roi mode {mode!r} is not one of {ROI_MODES}.")
    if mode == "full":
        return image
    if image.size != mask.size:
        raise ValueError(f"Image size {image.size} and mask size {mask.size} differ.")
    box = roi_bounding_box(mask, margin)
    cropped = image.crop(box)
    if mode == "crop":
        return cropped
    inside = np.asarray(mask.crop(box)) > 0
    pixels = np.asarray(cropped).copy()
    pixels[~inside] = 0
    return Image.fromarray(pixels)


def model_input_size(image_processor) -> tuple[int, int]:
    """(height, width) the model is fed: the processor's crop size if it center-crops, else its resize size."""
    size = image_processor.crop_size if getattr(image_processor, "do_center_crop", False) else image_processor.size
    get = size.get if hasattr(size, "get") else lambda key: getattr(size, key, None)
    if get("height") and get("width"):
        return int(get("height")), int(get("width"))
    if get("shortest_edge"):
        return int(get("shortest_edge")), int(get("shortest_edge"))
    raise ValueError(f"Cannot read an input size from the image processor's size {size}; pass --image_processor_name.")


class ClassificationTransform:
    """PIL grayscale image (+ mask) -> normalized float tensor (C, H, W) for the model.

    ROI first (`roi_image`). Training: geometry (random resized crop, horizontal flip, +-10 degree rotation) applied
    jointly to image and mask with transforms v2, brightness/contrast on the image only, then in masked mode the
    pixels outside the moved mask zeroed again. Evaluation: a plain resize, as the saved image processor does at
    inference. Last, grayscale -> `num_channels` by repetition and the processor's mean/std. The stored data
    stays grayscale. Training runs on PIL images (C kernels on uint8: ~4x faster than on tensors), so the data
    pipeline keeps up with the model; the mask, when needed, is a `tv_tensors.Mask` (nearest-neighbour).
    """

    def __init__(self, size, image_mean, image_std, roi="full", margin=0.1, train=False, num_channels=3):
        if roi not in ROI_MODES:
            raise ValueError(f"roi mode {roi!r} is not one of {ROI_MODES}.")
        self.size, self.roi, self.margin, self.train, self.num_channels = tuple(size), roi, margin, train, num_channels
        self.geometry = v2.Compose(
            [
                v2.RandomResizedCrop(self.size, scale=(0.7, 1.0), ratio=(0.8, 1.25), antialias=True),
                v2.RandomHorizontalFlip(),
                v2.RandomAffine(degrees=10),
            ]
        )
        self.intensity = v2.ColorJitter(brightness=0.2, contrast=0.2)
        # (x / 255 - mean) / std == x * scale + offset, per channel, broadcast from the single grayscale channel.
        mean = torch.tensor(_per_channel(image_mean, num_channels), dtype=torch.float32)[:, None, None]
        std = torch.tensor(_per_channel(image_std, num_channels), dtype=torch.float32)[:, None, None]
        self.scale, self.offset = 1.0 / (255.0 * std), -mean / std

    def __call__(self, image, mask=None) -> torch.Tensor:
        if image.mode != "L":
            image = image.convert("L")
        if self.roi != "full" and mask is None:
            raise ValueError(f"--roi {self.roi} needs the mask column; this example has none.")
        roi_mask = mask.crop(roi_bounding_box(mask, self.margin)) if self.roi == "masked" else None
        image = roi_image(image, mask, self.roi, self.margin)
        if not self.train:
            pixels = F.resize(F.pil_to_tensor(image), list(self.size), antialias=True)
        elif self.roi == "masked":
            moved, node = self.geometry(image, tv_tensors.Mask(F.pil_to_tensor(roi_mask)))
            # Bilinear resampling and jitter spill grey into the background: zero it again after the geometry.
            pixels = F.pil_to_tensor(self.intensity(moved)) * (node > 0)
        else:
            pixels = F.pil_to_tensor(self.intensity(self.geometry(image)))
        return pixels.as_subclass(torch.Tensor).float() * self.scale + self.offset


def _per_channel(values, num_channels):
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    if len(values) == num_channels:
        return values
    return [float(np.mean(values))] * num_channels


class BatchTransform:
    """`Dataset.set_transform` callable: a batch of rows -> {"pixel_values", "labels"}."""

    def __init__(self, transform, image_column="image", mask_column="mask", label_column="label"):
        self.transform, self.image_column, self.mask_column, self.label_column = (
            transform,
            image_column,
            mask_column,
            label_column,
        )

    def __call__(self, batch):
        masks = batch.get(self.mask_column) or [None] * len(batch[self.image_column])
        return {
            "pixel_values": [self.transform(image, mask) for image, mask in zip(batch[self.image_column], masks)],
            "labels": batch[self.label_column],
        }


def collate_fn(examples):
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.tensor([example["labels"] for example in examples], dtype=torch.long),
    }


# Loss and metrics


def balanced_class_weights(labels, num_classes: int) -> list[float]:
    """n / (num_classes * n_c), as scikit-learn's class_weight="balanced"; a class absent from `labels` gets 0."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=num_classes).astype(float)
    return [float(len(labels) / (num_classes * c)) if c > 0 else 0.0 for c in counts]


class WeightedCrossEntropyLoss:
    """Trainer `compute_loss_func`: class-weighted cross-entropy.

    Returns sum(w_y * loss) / number of labels, over the whole gradient-accumulated batch when the Trainer passes
    `num_items_in_batch` (it then does not divide by the accumulation steps itself).
    """

    def __init__(self, class_weights):
        self.class_weights = torch.tensor(class_weights, dtype=torch.float32)

    def __call__(self, outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        losses = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none")
        weighted = (losses * self.class_weights.to(logits.device)[labels]).sum()
        return weighted / (num_items_in_batch if num_items_in_batch is not None else labels.numel())


def metric_script_path(metric_path) -> Path:
    path = Path(metric_path)
    return path if path.suffix == ".py" else path / f"{path.name}.py"


def load_clinical_metric(metric_path=DEFAULT_METRIC_PATH):
    """The repository's `clinical_classification` evaluate module (offline)."""
    import evaluate

    script = metric_script_path(metric_path)
    if not script.is_file():
        raise FileNotFoundError(f"Clinical metric module not found at {script}; pass --metric_path to its folder.")
    return evaluate.load(str(metric_path))


def _clinical_functions(metric_path=DEFAULT_METRIC_PATH):
    """The plain functions (youden_threshold, delong_test, ...) of the metric module's file."""
    script = metric_script_path(metric_path)
    spec = importlib.util.spec_from_file_location("lymphus_clinical_classification", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def youden_threshold(references, probabilities, metric_path=DEFAULT_METRIC_PATH) -> float:
    """Threshold maximising sensitivity + specificity - 1 (the metric module's own implementation)."""
    return float(_clinical_functions(metric_path).youden_threshold(references, probabilities))


def apply_threshold(probabilities, threshold: float) -> np.ndarray:
    """0/1 predictions: positive where probability >= threshold."""
    return (np.asarray(probabilities, dtype=float) >= threshold).astype(int)


def clinical_metrics_at_thresholds(
    metric, references, probabilities, thresholds, n_bootstrap=1000, confidence_level=0.95, seed=0
):
    """{name: metric.compute(...) at that threshold} for each (name, threshold) in `thresholds` (a dict).

    The threshold is used unchanged: choose it on validation, then pass the same value for test and external sets.
    """
    references = [int(r) for r in references]
    probabilities = [float(p) for p in probabilities]
    return {
        name: json_safe(
            metric.compute(
                predictions=probabilities,
                references=references,
                threshold=float(threshold),
                n_bootstrap=n_bootstrap,
                confidence_level=confidence_level,
                seed=seed,
            )
        )
        for name, threshold in thresholds.items()
    }


def json_safe(value):
    """NaN/inf -> None and numpy scalars -> Python, so JSON is strict and comparable."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def positive_probabilities(logits, positive_index: int) -> np.ndarray:
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float32)
    return torch.softmax(logits, dim=-1)[:, positive_index].numpy()


class ClinicalComputeMetrics:
    """Trainer `compute_metrics`: softmax probability of the positive class -> clinical metrics at 0.5.

    `roc_auc` is what model selection (`metric_for_best_model`) reads on validation.
    """

    def __init__(self, metric, positive_index: int, n_bootstrap: int = 200, seed: int = 0):
        self.metric, self.positive_index, self.n_bootstrap, self.seed = metric, positive_index, n_bootstrap, seed

    def __call__(self, eval_prediction):
        probabilities = positive_probabilities(eval_prediction.predictions, self.positive_index)
        references = (np.asarray(eval_prediction.label_ids) == self.positive_index).astype(int)
        results = self.metric.compute(
            predictions=probabilities.tolist(),
            references=references.tolist(),
            threshold=0.5,
            n_bootstrap=self.n_bootstrap,
            seed=self.seed,
        )
        return {
            key: float(value)
            for key, value in results.items()
            if isinstance(value, (int, float, np.number))
            and key not in ("threshold", "n_bootstrap", "confidence_level")
            and (self.n_bootstrap > 0 or "_ci_" not in key)
        }


class ClinicalTrainer(Trainer):
    """Trainer that restores checkpoints through `from_pretrained`.

    transformers 5 saves checkpoints under the original parameter names (`save_original_format=True`) but
    `Trainer` reloads them as a raw state dict, so for remapped architectures such as ViT the encoder was silently
    left out when loading the best model or resuming (huggingface/transformers#43701). `from_pretrained` applies
    the conversion; strict loading then guarantees every weight came from the checkpoint.
    """

    def _restore_weights(self, checkpoint, model=None) -> bool:
        model = self.accelerator.unwrap_model(model if model is not None else self.model)
        weights = ("model.safetensors", "model.safetensors.index.json")
        has_weights = any(os.path.isfile(os.path.join(checkpoint, name)) for name in weights)
        sharded = self.is_deepspeed_enabled or self.is_fsdp_enabled
        if sharded or not has_weights or not hasattr(model, "from_pretrained"):
            return False
        restored = type(model).from_pretrained(checkpoint)
        model.load_state_dict(restored.state_dict(), strict=True)
        logger.info(f"Restored weights from {checkpoint}")
        return True

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if not self._restore_weights(resume_from_checkpoint, model):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self):
        best = self.state.best_model_checkpoint
        if best is None or not self._restore_weights(best):
            super()._load_best_model()


# Plots


def agg_pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(references, probabilities, path, *, title="ROC curve", roc_auc=None, ci=None, threshold=None) -> Path:
    """ROC curve PNG; the legend carries the AUC and its CI, a dot marks the operating point at `threshold`."""
    from sklearn.metrics import roc_curve

    plt = agg_pyplot()
    references = np.asarray(references, dtype=int)
    probabilities = np.asarray(probabilities, dtype=float)
    figure, axes = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    if len(np.unique(references)) == 2:
        fpr, tpr, _ = roc_curve(references, probabilities)
        label = "ROC"
        if roc_auc is not None:
            label = f"AUC {roc_auc:.3f}"
            if ci is not None and None not in ci:
                label += f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})"
        axes.plot(fpr, tpr, lw=2, label=label)
        if threshold is not None:
            predicted = apply_threshold(probabilities, threshold)
            sensitivity = predicted[references == 1].mean()
            specificity = 1 - predicted[references == 0].mean()
            label = f"operating point, threshold {threshold:.3f}"
            axes.plot([1 - specificity], [sensitivity], "o", color="black", label=label)
    else:
        axes.text(0.5, 0.5, "one class only: ROC undefined", ha="center", va="center")
    axes.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="1 - specificity", ylabel="Sensitivity", title=title)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return Path(path)


def plot_confusion_matrix(
    references, predictions, path, *, class_names=("benign", "malignant"), title="Confusion matrix"
) -> Path:
    """Confusion-matrix PNG (rows: true class, columns: predicted class) with counts in the cells."""
    plt = agg_pyplot()
    references = np.asarray(references, dtype=int)
    predictions = np.asarray(predictions, dtype=int)
    matrix = np.zeros((len(class_names), len(class_names)), dtype=int)
    np.add.at(matrix, (references, predictions), 1)
    figure, axes = plt.subplots(figsize=(4, 3.6), dpi=100)
    axes.imshow(matrix, cmap="Blues")
    for (row, column), count in np.ndenumerate(matrix):
        color = "white" if count > matrix.max() / 2 else "black"
        axes.text(column, row, str(count), ha="center", va="center", color=color, fontsize=12)
    axes.set(
        xticks=range(len(class_names)),
        yticks=range(len(class_names)),
        xticklabels=class_names,
        yticklabels=class_names,
        xlabel="Predicted",
        ylabel="True",
        title=title,
    )
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return Path(path)


# Model card


def format_metric(values, name):
    value = values.get(name)
    if value is None:
        return "n/a"
    low, high = values.get(f"{name}_ci_low"), values.get(f"{name}_ci_high")
    if low is None or high is None:
        return f"{value:.3f}"
    return f"{value:.3f} ({low:.3f}-{high:.3f})"


def build_model_card(
    *,
    model_name: str,
    base_model: str | None,
    model_description: str,
    dataset_name: str,
    dataset_config: str | None,
    external_config: str | None,
    roi_mode: str,
    roi_margin: float,
    split_sizes: dict,
    split_metrics: dict,
    youden: float,
    class_names=("benign", "malignant"),
    positive_label: str = "malignant",
    plots: dict | None = None,
    synthetic: bool = False,
    hyperparameters: dict | None = None,
    confidence_level: float = 0.95,
    repo_id: str | None = None,
):
    """A `huggingface_hub.ModelCard` for a LymphUs classifier, with `model-index` results.

    split_sizes: {split: {"n": int, "<class name>": int, ...}}; split_metrics: {split: {"at_0.5": {...},
    "at_youden": {...}}} as in metrics_<split>.json; plots: {split: {"roc": "roc_test.png", "confusion_matrix": ...}}.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    plots = plots or {}
    is_hub_dataset = not Path(dataset_name).exists()
    dataset_label = dataset_name if is_hub_dataset else f"{Path(dataset_name).name} (local export)"
    split_sources = {
        "validation": f"{dataset_config or 'default'} / validation",
        "test": f"{dataset_config or 'default'} / test",
        "external": f"{external_config} / all splits",
        "test_predicted_roi": f"{dataset_config or 'default'} / test, ROI from the segmenter's masks",
        "external_predicted_roi": f"{external_config} / all splits, ROI from the segmenter's masks",
    }
    level = int(round(confidence_level * 100))

    eval_results = []
    for split, metrics in split_metrics.items():
        base_split = split.removesuffix("_predicted_roi")
        config = external_config if base_split == "external" else dataset_config
        common = dict(
            task_type="image-classification",
            dataset_type=dataset_name if is_hub_dataset else "lymphus",
            dataset_name=f"LymphUs {config or ''} {split}".replace("  ", " "),
            dataset_config=config,
            dataset_split="all" if base_split == "external" else base_split,
        )
        entries = [("roc_auc", metrics["at_0.5"], None)]
        entries += [(name, metrics["at_youden"], "youden") for name in THRESHOLD_METRICS]
        entries += [(name, metrics["at_0.5"], "threshold_0.5") for name in THRESHOLD_METRICS]
        for name, values, config_name in entries:
            if values.get(name) is None:
                continue
            label = METRIC_DISPLAY_NAMES[name]
            if config_name is not None:
                label += f" @ {'Youden ' if config_name == 'youden' else ''}threshold {values['threshold']:.3f}"
            args = {"confidence_level": confidence_level}
            if values.get(f"{name}_ci_low") is not None:
                label += f" ({level}% CI {values[f'{name}_ci_low']:.3f}-{values[f'{name}_ci_high']:.3f})"
                args.update(ci_low=values[f"{name}_ci_low"], ci_high=values[f"{name}_ci_high"])
            if config_name is not None:
                args["threshold"] = values["threshold"]
            eval_results.append(
                EvalResult(
                    metric_type=name,
                    metric_value=float(values[name]),
                    metric_name=label,
                    metric_config=config_name,
                    metric_args=args,
                    **common,
                )
            )

    card_data = ModelCardData(
        model_name=model_name,
        base_model=base_model,
        datasets=[dataset_name] if is_hub_dataset else None,
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=["image-classification", "medical-imaging", "ultrasound", "lymph-node", "lymphus"]
        + (["synthetic-data"] if synthetic else []),
        metrics=["roc_auc", "sensitivity", "specificity"],
        eval_results=eval_results or None,
    )

    roi_text = {
        "full": "the whole image",
        "crop": f"the node's bounding box from the segmentation mask, plus a {roi_margin:.0%} margin on each side",
        "masked": f"the node's bounding box plus a {roi_margin:.0%} margin, every pixel outside the node mask set to 0",
    }[roi_mode]
    lines = [f"# {model_name}", ""]
    if synthetic:
        lines += [
            "> **Trained and evaluated on synthetic data** (made-up images, not patient ultrasound): the numbers "
            "below only show that the pipeline runs and mean nothing clinically.",
            "",
        ]
    base = f"[{base_model}](https://huggingface.co/{base_model})" if base_model else "none (random init. from a config)"
    lines += [
        "> **Not for clinical use.** Research model; it has not been validated for diagnosis or patient care.",
        "",
        f"Benign vs malignant classification of lymph nodes on ultrasound, fine-tuned on LymphUs. {model_description}",
        "",
        "## Model",
        "",
        f"- Base model: {base}",
        f"- Dataset: {dataset_label}, subset `{dataset_config or 'default'}`"
        + (f"; external validation on subset `{external_config}`" if external_config else ""),
        f"- Input (ROI mode `{roi_mode}`): {roi_text}. Grayscale is repeated to the model's channels in preprocessing.",
        f"- Positive class: `{positive_label}`; the reported probability is its softmax probability.",
        f"- Decision threshold: {youden:.4f}, chosen on validation by Youden's J (sensitivity + specificity - 1) "
        "and applied unchanged to the test and external sets. Also stored as `youden_threshold` in config.json "
        "and in threshold.json.",
        "",
        "## Data",
        "",
        "| split | source | cases | " + " | ".join(class_names) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in class_names) + " |",
    ]
    for split, sizes in split_sizes.items():
        source = "training" if split == "train" else split_sources.get(split, split)
        if split == "train":
            source = f"{dataset_config or 'default'} / train"
        counts = " | ".join(str(sizes.get(name, 0)) for name in class_names)
        lines.append(f"| {split} | {source} | {sizes['n']} | {counts} |")
    lines += [
        "",
        "Training used the train split only; model selection (best validation ROC-AUC) and the threshold used the "
        "validation split only. The external set played no part in either.",
        "",
        "## Results",
        "",
        f"Point estimate ({level}% bootstrap CI). Threshold-dependent metrics at the Youden threshold and at 0.5.",
        "",
    ]
    for split, metrics in split_metrics.items():
        at_youden, at_half = metrics["at_youden"], metrics["at_0.5"]
        lines += [
            f"### {split} ({split_sources.get(split, split)}, n={at_half.get('n')})",
            "",
            f"ROC-AUC: {format_metric(at_half, 'roc_auc')}",
            "",
            f"| metric | at Youden threshold {at_youden['threshold']:.3f} | at 0.5 |",
            "| --- | --- | --- |",
        ]
        lines += [
            f"| {METRIC_DISPLAY_NAMES[name]} | {format_metric(at_youden, name)} | {format_metric(at_half, name)} |"
            for name in THRESHOLD_METRICS
        ]
        lines += [
            "| Confusion (TN, FP, FN, TP) | "
            + " | ".join(", ".join(str(m.get(k)) for k in ("tn", "fp", "fn", "tp")) for m in (at_youden, at_half))
            + " |",
            "",
        ]
        for kind in ("roc", "confusion_matrix"):
            if kind in plots.get(split, {}):
                lines += [f"![{kind.replace('_', ' ')} {split}]({plots[split][kind]})", ""]
    if hyperparameters:
        lines += ["## Training", "", "| hyperparameter | value |", "| --- | --- |"]
        lines += [f"| {key} | {value} |" for key, value in hyperparameters.items()]
        lines.append("")
    model_ref = repo_id or "path/to/this/model"
    lines += [
        "## Intended use",
        "",
        "Research on lymph-node ultrasound classification: benchmarking, method development, teaching. "
        "**Not for clinical use**: not a medical device, not for diagnosis, triage or treatment decisions.",
        "",
        "## Limitations",
        "",
        "- Small, two-centre dataset; performance on other centres, machines, operators and populations is unknown "
        "(the external-centre results are the best guide, and their intervals are wide).",
        "- Confidence intervals are percentile bootstrap over cases; they ignore the variability of training.",
        "- The threshold was chosen on a small validation set and may not transfer; recalibrate on local data.",
        f"- The model expects the `{roi_mode}` input; others (e.g. full images for a crop model) are out of distribution.",
        "- Labels are per node; no patient-level aggregation.",
        "",
        "## How to run inference",
        "",
        "```python",
        "from transformers import pipeline",
    ]
    if roi_mode == "full":
        lines += [
            "",
            f'classifier = pipeline("image-classification", model="{model_ref}")',
            'scores = classifier("ultrasound.png")  # grayscale is converted to RGB by the image processor',
        ]
    else:
        lines += [
            "from PIL import Image",
            "",
            "from train_vit import roi_image  # train_vit.py of the lymphus repository: the same ROI as in training",
            "",
            f'classifier = pipeline("image-classification", model="{model_ref}")',
            'image, mask = Image.open("ultrasound.png").convert("L"), Image.open("mask.png").convert("L")  # mask 0/1',
            f'scores = classifier(roi_image(image, mask, mode="{roi_mode}", margin={roi_margin}))',
        ]
    lines += [
        f'p_{positive_label} = next(s["score"] for s in scores if s["label"] == "{positive_label}")',
        f"prediction = p_{positive_label} >= {youden:.4f}  # the validation Youden threshold",
        "```",
        "",
    ]
    content = f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines)
    return ModelCard(content)


# Hub


def resolve_hub_token(hub_token: str | None = None) -> str | None:
    """--hub_token, else $HF_TOKEN, else the locally saved login. Never logged or written anywhere."""
    if hub_token:
        return hub_token
    from huggingface_hub import get_token

    return os.environ.get("HF_TOKEN") or get_token()


def push_folder_to_hub(
    output_dir,
    repo_id: str,
    token: str | None = None,
    *,
    allow_patterns=None,
    private: bool | None = None,
    commit_message: str = "Upload LymphUs results",
) -> str:
    """Create `repo_id` if needed and upload `output_dir` (checkpoints excluded); returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(output_dir),
        allow_patterns=allow_patterns,
        ignore_patterns=["checkpoint-*", "_*", "runs/*", "*.bin"],
        commit_message=commit_message,
    )
    return commit.commit_url


LOCAL_ONLY_OPTIONS = ("--launch_on_hub", "--job_timeout", "--job_namespace", "--job_script", "--hub_token")


def job_script_args(argv: list[str], drop=LOCAL_ONLY_OPTIONS) -> list[str]:
    """argv with the options that only make sense locally removed (and the token, which travels as a secret)."""
    forwarded, skip = [], False
    for argument in argv:
        if skip:
            skip = False
            continue
        name = argument.split("=", 1)[0]
        if name in drop:
            skip = "=" not in argument
            continue
        forwarded.append(argument)
    return forwarded


def train_and_save(trainer, resume_from_checkpoint=None):
    """Train (resuming from a checkpoint path, or the last one for "true"/"last"), then save model, metrics, state."""
    if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint.lower() in ("true", "last"):
        resume_from_checkpoint = True
    train_result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    trainer.save_model()
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()
    return train_result


def read_model_config_json(source):
    """(model_type, config kwargs) from --model_config_json: a JSON string or a .json file with "model_type"."""
    config_dict = json.loads(Path(source).read_text() if source.strip().endswith(".json") else source)
    model_type = config_dict.pop("model_type", None)
    if model_type is None:
        raise ValueError(f"--model_config_json {source} has no \"model_type\" (e.g. \"vit\" or \"segformer\").")
    return model_type, config_dict


def check_hub_job_request(dataset_name, push_to_hub, hub_token):
    """A Hub Job runs on ephemeral hardware and cannot see local files: refuse what would be lost or unreadable."""
    if Path(dataset_name).exists():
        raise ValueError(
            f"--dataset_name {dataset_name} is a local folder, which a Hub Job cannot read; push it "
            "with `python lymphus.py push` and pass its Hub id."
        )
    if not push_to_hub:
        raise ValueError(
            "--launch_on_hub runs on ephemeral hardware: add --push_to_hub (and --hub_model_id) to keep the results."
        )
    if hub_token is None:
        raise ValueError("--launch_on_hub needs a token: pass --hub_token, set HF_TOKEN or run `hf auth login`.")


def launch_hub_job(
    script_args: list[str],
    flavor: str,
    token: str | None = None,
    *,
    timeout: str = "8h",
    namespace: str | None = None,
    script: str | None = None,
    metric_path=DEFAULT_METRIC_PATH,
):
    """Submit `script` (default: this file, PEP 723 dependencies) with `script_args` as a Hugging Face Job.

    The token goes as the `HF_TOKEN` secret, never in the command. The clinical metric module is forwarded as a
    file argument (--metric_path) so huggingface_hub ships it with the script. Returns the JobInfo.
    """
    from huggingface_hub import HfApi

    # huggingface_hub uploads the arguments that are local files: pass the metric module's .py file on its own.
    for index, argument in enumerate(script_args):
        if argument.split("=", 1)[0] == "--metric_path":
            metric_path = argument.split("=", 1)[1] if "=" in argument else script_args[index + 1]
    script_args = job_script_args(script_args, drop=("--metric_path",))
    script_args += ["--metric_path", str(metric_script_path(metric_path))]
    api = HfApi(token=token)
    job = api.run_uv_job(
        script=script or str(Path(__file__).resolve()),
        script_args=script_args,
        flavor=flavor,
        secrets={"HF_TOKEN": token} if token else None,
        timeout=timeout,
        namespace=namespace,
    )
    print(f"Submitted Hugging Face Job {job.id} on {flavor}: {job.url}")
    return job


# Outputs


def with_predicted_masks(dataset, segmenter, segmenter_processor, data_args):
    """`dataset` with its mask column replaced by the segmenter's masks (an empty one by the whole image)."""
    import predict

    images = [image.convert("L") for image in dataset[data_args.image_column_name]]
    masks = predict.predict_masks(segmenter, segmenter_processor, images)
    for index, (case_id, mask) in enumerate(zip(dataset[data_args.case_id_column_name], masks)):
        if not mask.any():
            logger.warning(f"{case_id}: the segmenter found no node; the whole image is used.")
            masks[index] = np.ones_like(mask)
    feature = datasets.Image()
    dataset = dataset.remove_columns(data_args.mask_column_name)
    return dataset.add_column(
        data_args.mask_column_name, [feature.encode_example(Image.fromarray(mask)) for mask in masks], feature=feature
    )


def load_evaluation_sets(
    dataset_name, dataset_config, external_config=None, cache_dir=None, do_train=True, required_columns=(), case_id_column="case_id"
):
    """(dataset, evaluation_sets): the training subset's DatasetDict, and {validation, test, external} to evaluate.

    The external subset (all its splits together) must share no case or patient with the training/validation data.
    """
    dataset = load_lymphus(dataset_name, dataset_config, cache_dir=cache_dir)
    for split in ("train", "validation") if do_train else ("validation",):
        if split not in dataset:
            raise ValueError(
                f"Subset {dataset_config} of {dataset_name} has splits {list(dataset)}, not {split!r}: "
                "model selection (and the threshold) need a validation split."
            )
    reference_split = dataset["train" if "train" in dataset else "validation"]
    for column in required_columns:
        if column not in reference_split.column_names:
            raise ValueError(f"Column {column!r} not found in {dataset_name}; choose one of {reference_split.column_names}.")
    evaluation_sets = {split: dataset[split] for split in ("validation", "test") if split in dataset}
    if external_config:
        external = load_lymphus(dataset_name, external_config, cache_dir=cache_dir)
        external = concatenate_datasets(list(external.values()))
        development = [dataset[split] for split in ("train", "validation") if split in dataset]
        for column in (case_id_column, "patient_id"):
            if column not in external.column_names:
                continue
            seen = set().union(*(set(split[column]) for split in development if column in split.column_names))
            shared = sorted(seen.intersection(external[column]))
            if shared:
                raise ValueError(
                    f"--external_config {external_config} shares {len(shared)} {column} values with the "
                    f"training/validation data of --dataset_config {dataset_config} (e.g. {shared[:3]}); "
                    "external validation needs the other centre: use --dataset_config center1 --external_config center2."
                )
        evaluation_sets["external"] = external
    return dataset, evaluation_sets


def load_lymphus(dataset_name, config, cache_dir=None):
    """`load_dataset`, rebuilt from the files when `dataset_name` is a local export folder.

    datasets' cache does not notice that a local folder's files were replaced (huggingface/datasets#2956): a
    re-export to the same folder would otherwise train on the previous export's data.
    """
    local = Path(dataset_name).is_dir()
    return load_dataset(dataset_name, config, cache_dir=cache_dir, download_mode="force_redownload" if local else None)


def write_synthetic_export(folder, scale=0.25) -> str:
    """Synthetic LymphUs archives (official counts, images at `scale` x the official sizes) exported as Parquet."""
    import lymphus

    folder = Path(folder)
    lymphus.write_synthetic_archives(folder / "archives", scale=scale)
    lymphus.export_dataset(folder / "archives", folder / "export", verification_mode="basic_checks", overwrite=True)
    return str(folder / "export")


def write_predictions_csv(path, rows) -> Path:
    """rows: dicts with case_id, split, label, probability, prediction_at_youden."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=PREDICTION_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def _split_sizes(dataset, label_column, class_names):
    counts = np.bincount(np.asarray(list(dataset[label_column]), dtype=int), minlength=len(class_names))
    return {"n": len(dataset), **{name: int(count) for name, count in zip(class_names, counts)}}


def dataset_is_synthetic(dataset_name) -> bool:
    """True when the dataset card says so: a `synthetic` tag, or the banner `lymphus.py export` writes for them."""
    from huggingface_hub import DatasetCard

    try:
        card_path = Path(dataset_name) / "README.md"
        card = DatasetCard.load(card_path if card_path.is_file() else dataset_name)
    except Exception:  # no card, offline, private: treat as not known to be synthetic
        return False
    tags = [str(tag).lower() for tag in (card.data.get("tags") or [])]
    return any("synthetic" in tag for tag in tags) or "**SYNTHETIC DATA.**" in card.text


def main(args=None):
    # Arguments
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, ClinicalTrainingArguments, HubJobArguments))
    argv = sys.argv[1:] if args is None else list(args)
    if len(argv) == 1 and argv[0].endswith(".json"):
        model_args, data_args, training_args, job_args = parser.parse_json_file(json_file=os.path.abspath(argv[0]))
    else:
        model_args, data_args, training_args, job_args = parser.parse_args_into_dataclasses(args=argv)
    # The token stays in this local variable only: TrainingArguments are pickled into training_args.bin.
    needs_token = training_args.push_to_hub or job_args.launch_on_hub
    hub_token = resolve_hub_token(training_args.hub_token) if needs_token else None
    push_to_hub, training_args.push_to_hub, training_args.hub_token = training_args.push_to_hub, False, None

    # Hub Job: submit this same command and stop
    if job_args.launch_on_hub:
        check_hub_job_request(data_args.dataset_name, push_to_hub, hub_token)
        return launch_hub_job(
            job_script_args(argv),
            job_args.launch_on_hub,
            hub_token,
            timeout=job_args.job_timeout,
            namespace=job_args.job_namespace,
            script=job_args.job_script,
            metric_path=data_args.metric_path,
        )

    # Logging
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    # This script's own progress (threshold, results, where they are) at INFO unless --log_level says otherwise.
    logger.setLevel(logging.INFO if training_args.log_level == "passive" else log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    logger.info(f"Device: {training_args.device}, bf16: {training_args.bf16}, fp16: {training_args.fp16}")
    transformers.set_seed(training_args.seed)
    output_dir = Path(training_args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    # Offline demo: synthetic archives in the official format -> export -> a tiny ViT from a config
    if data_args.offline_demo:
        data_args.dataset_name = data_args.dataset_name or write_synthetic_export(output_dir / "synthetic-lymphus")
        data_args.dataset_config = data_args.dataset_config or "center1"
        data_args.external_config = data_args.external_config or "center2"
        model_args.model_config_json = model_args.model_config_json or json.dumps(TINY_VIT_CONFIG)

    # Dataset
    dataset, evaluation_sets = load_evaluation_sets(
        data_args.dataset_name,
        data_args.dataset_config,
        data_args.external_config,
        cache_dir=model_args.cache_dir,
        do_train=training_args.do_train,
        required_columns=(data_args.image_column_name, data_args.label_column_name, data_args.case_id_column_name)
        + ((data_args.mask_column_name,) if data_args.roi != "full" else ()),
        case_id_column=data_args.case_id_column_name,
    )
    reference_split = dataset["train" if "train" in dataset else "validation"]
    label_feature = reference_split.features[data_args.label_column_name]
    if not isinstance(label_feature, ClassLabel):
        raise ValueError(f"Column {data_args.label_column_name!r} is {label_feature}, not a ClassLabel.")
    class_names = list(label_feature.names)
    if data_args.positive_label not in class_names:
        raise ValueError(f"--positive_label {data_args.positive_label} is not a class; choose one of {class_names}.")
    positive_index = class_names.index(data_args.positive_label)
    if "external" in evaluation_sets and evaluation_sets["external"].features[data_args.label_column_name].names != class_names:
        external_names = evaluation_sets["external"].features[data_args.label_column_name].names
        raise ValueError(f"External subset classes {external_names} differ from the training classes {class_names}.")

    # Model and image processor
    id2label = dict(enumerate(class_names))
    label2id = {name: index for index, name in id2label.items()}
    if model_args.model_config_json:
        model_type, config_dict = read_model_config_json(model_args.model_config_json)
        config = AutoConfig.for_model(
            model_type, num_labels=len(class_names), id2label=id2label, label2id=label2id, **config_dict
        )
        model = AutoModelForImageClassification.from_config(config)
        image_size = getattr(config, "image_size", 224)
        height, width = image_size if isinstance(image_size, (list, tuple)) else (image_size, image_size)
        num_channels = getattr(config, "num_channels", 3)
        image_processor = ViTImageProcessor(
            size={"height": height, "width": width}, image_mean=[0.5] * num_channels, image_std=[0.5] * num_channels
        )
        base_model = None
        model_description = f"Architecture `{model_type}` built from a config: {json.dumps(config_dict)}."
    else:
        config = AutoConfig.from_pretrained(
            model_args.model_name_or_path,
            num_labels=len(class_names),
            id2label=id2label,
            label2id=label2id,
            finetuning_task="image-classification",
            cache_dir=model_args.cache_dir,
            revision=model_args.model_revision,
        )
        model = AutoModelForImageClassification.from_pretrained(
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
        base_model = model_args.model_name_or_path if not Path(model_args.model_name_or_path).exists() else None
        verb = "Fine-tuned from" if training_args.do_train else "Evaluation only (no training) of"
        model_description = f"{verb} `{model_args.model_name_or_path}` ({config.model_type})."
        trained_roi = getattr(config, "roi_mode", None)
        if trained_roi is not None and trained_roi != data_args.roi:
            logger.warning(
                f"{model_args.model_name_or_path} was trained with --roi {trained_roi}, used here with --roi {data_args.roi}."
            )
    # Grayscale files given to pipeline("image-classification") are converted like in training.
    image_processor.do_convert_rgb = True
    num_channels = getattr(model.config, "num_channels", 3)

    # Transforms
    size = model_input_size(image_processor)
    mean = getattr(image_processor, "image_mean", None) or [0.5] * num_channels
    std = getattr(image_processor, "image_std", None) or [0.5] * num_channels
    columns = [data_args.image_column_name, data_args.label_column_name] + (
        [data_args.mask_column_name] if data_args.roi != "full" else []
    )

    def view(split_dataset, train):
        augment = train and data_args.augmentation != "none"
        transform = ClassificationTransform(size, mean, std, data_args.roi, data_args.roi_margin, augment, num_channels)
        batch_transform = BatchTransform(
            transform, data_args.image_column_name, data_args.mask_column_name, data_args.label_column_name
        )
        return split_dataset.select_columns(columns).with_transform(batch_transform)

    # Trainer
    metric = load_clinical_metric(data_args.metric_path)
    compute_loss_func = None
    if data_args.class_weighting == "balanced" and training_args.do_train:
        weights = balanced_class_weights(dataset["train"][data_args.label_column_name], len(class_names))
        logger.info(f"Balanced class weights: {dict(zip(class_names, weights))}")
        compute_loss_func = WeightedCrossEntropyLoss(weights)
    trainer = ClinicalTrainer(
        model=model,
        args=training_args,
        train_dataset=view(dataset["train"], train=True) if training_args.do_train else None,
        eval_dataset=view(dataset["validation"], train=False),
        processing_class=image_processor,
        data_collator=collate_fn,
        compute_metrics=ClinicalComputeMetrics(metric, positive_index, n_bootstrap=0, seed=training_args.seed),
        compute_loss_func=compute_loss_func,
    )

    # Training
    if training_args.do_train:
        train_and_save(trainer, training_args.resume_from_checkpoint)

    # Mask-free evaluation: the test sets again, cropped with a segmenter's masks instead of the expert's
    if data_args.roi_source == "predicted":
        import predict  # here, not at the top: predict imports train_segformer, which imports this module

        segmenter, segmenter_processor = predict.load_segmenter(data_args.segmenter_name_or_path, device=training_args.device)
        for split in [split for split in ("test", "external") if split in evaluation_sets]:
            evaluation_sets[f"{split}_predicted_roi"] = with_predicted_masks(
                evaluation_sets[split], segmenter, segmenter_processor, data_args
            )

    # Evaluation: validation picks the threshold, test and external use it unchanged
    probabilities, references, case_ids = {}, {}, {}
    for split, split_dataset in evaluation_sets.items():
        output = trainer.predict(view(split_dataset, train=False), metric_key_prefix=split)
        probabilities[split] = positive_probabilities(output.predictions, positive_index)
        references[split] = (np.asarray(split_dataset[data_args.label_column_name]) == positive_index).astype(int)
        case_ids[split] = list(split_dataset[data_args.case_id_column_name])
    youden = youden_threshold(references["validation"], probabilities["validation"], data_args.metric_path)
    logger.info(f"Youden threshold on validation: {youden:.4f}")

    local_dataset = Path(data_args.dataset_name).exists()
    dataset_label = Path(data_args.dataset_name).name if local_dataset else data_args.dataset_name
    split_metrics, plots, prediction_rows = {}, {}, []
    for split in evaluation_sets:
        results = clinical_metrics_at_thresholds(
            metric,
            references[split],
            probabilities[split],
            {"at_0.5": 0.5, "at_youden": youden},
            n_bootstrap=data_args.n_bootstrap,
            confidence_level=data_args.confidence_level,
            seed=training_args.seed,
        )
        split_metrics[split] = results
        record = {
            "split": split,
            "dataset": dataset_label,
            "config": data_args.external_config if split.startswith("external") else data_args.dataset_config,
            "roi": data_args.roi,
            "roi_source": "predicted" if split.endswith("_predicted_roi") else "expert",
            "youden_threshold": youden,
            "threshold_source": "validation",
            **results,
        }
        (output_dir / f"metrics_{split}.json").write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
        auc = results["at_0.5"]
        plot_roc(
            references[split],
            probabilities[split],
            output_dir / f"roc_{split}.png",
            title=f"ROC, {split} (n={len(references[split])})",
            roc_auc=auc.get("roc_auc"),
            ci=(auc.get("roc_auc_ci_low"), auc.get("roc_auc_ci_high")),
            threshold=youden,
        )
        predicted = apply_threshold(probabilities[split], youden)
        plot_confusion_matrix(
            references[split],
            predicted,
            output_dir / f"confusion_matrix_{split}.png",
            class_names=[n for n in class_names if n != data_args.positive_label] + [data_args.positive_label],
            title=f"{split}, Youden threshold {youden:.3f} (validation)",
        )
        plots[split] = {"roc": f"roc_{split}.png", "confusion_matrix": f"confusion_matrix_{split}.png"}
        prediction_rows += [
            dict(zip(PREDICTION_COLUMNS, (case_id, split, int(label), float(probability), int(prediction))))
            for case_id, label, probability, prediction in zip(
                case_ids[split], references[split], probabilities[split], predicted
            )
        ]
        logger.info(
            f"{split}: AUC {format_metric(auc, 'roc_auc')}; at {youden:.3f}: sensitivity "
            f"{format_metric(results['at_youden'], 'sensitivity')}, "
            f"specificity {format_metric(results['at_youden'], 'specificity')}"
        )
    write_predictions_csv(output_dir / "predictions.csv", prediction_rows)
    # The threshold and the input the model expects travel with the model (config.json) and beside it.
    inference = {
        "youden_threshold": youden,
        "positive_label": data_args.positive_label,
        "roi_mode": data_args.roi,
        "roi_margin": data_args.roi_margin,
    }
    (output_dir / "threshold.json").write_text(json.dumps(inference, indent=2) + "\n")
    trainer.model.config.update(inference)
    trainer.save_model()

    # Model card and push
    split_sizes = {}
    if training_args.do_train:
        split_sizes["train"] = _split_sizes(dataset["train"], data_args.label_column_name, class_names)
    for split, split_dataset in evaluation_sets.items():
        split_sizes[split] = _split_sizes(split_dataset, data_args.label_column_name, class_names)
    hyperparameters = None if not training_args.do_train else {
        "learning_rate": training_args.learning_rate,
        "epochs": training_args.num_train_epochs,
        "train_batch_size": training_args.per_device_train_batch_size,
        "seed": training_args.seed,
        "augmentation": data_args.augmentation,
        "class_weighting": data_args.class_weighting,
        "model_selection": f"best validation {training_args.metric_for_best_model}",
        "input_size": f"{size[0]}x{size[1]}",
    }
    card_fields = dict(
        model_name=(training_args.hub_model_id or output_dir.resolve().name).split("/")[-1],
        base_model=base_model,
        model_description=model_description,
        dataset_name=data_args.dataset_name,
        dataset_config=data_args.dataset_config,
        external_config=data_args.external_config,
        roi_mode=data_args.roi,
        roi_margin=data_args.roi_margin,
        split_sizes=split_sizes,
        split_metrics=split_metrics,
        youden=youden,
        class_names=class_names,
        positive_label=data_args.positive_label,
        plots=plots,
        synthetic=dataset_is_synthetic(data_args.dataset_name),
        hyperparameters=hyperparameters,
        confidence_level=data_args.confidence_level,
    )
    build_model_card(**card_fields, repo_id=training_args.hub_model_id).save(output_dir / "README.md")
    if push_to_hub:
        # Trainer's push uploads model, processor, metrics and plots but regenerates a generic README.md:
        # the clinical card (now naming the repo in its inference example) replaces it in a second commit.
        trainer.push_to_hub(token=hub_token, commit_message="End of training")
        build_model_card(**card_fields, repo_id=trainer.hub_model_id).save(output_dir / "README.md")
        url = push_folder_to_hub(
            output_dir, trainer.hub_model_id, hub_token, allow_patterns=["README.md"], commit_message="Clinical model card"
        )
        logger.info(f"Pushed to {url}")
    logger.info(
        f"Results in {output_dir.resolve()}: README.md (model card), metrics_<split>.json, predictions.csv, "
        "roc_<split>.png, confusion_matrix_<split>.png, threshold.json"
    )
    return split_metrics


if __name__ == "__main__":
    main()
