"""Node segmentation: 0/1 masks, the joint image+mask transform, the loss, logits to masks, and per-case scoring.

Labels: 0 = background, 1 = lymph_node, used as stored (never reduced, never ignored: see train_segformer.py).
"""

import csv
from pathlib import Path

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from lymphus_ml.evaluation import json_safe
from lymphus_ml.images import model_input_size, per_channel, processor_mean_std
from lymphus_ml.release import MASK_LABELS


# The segmenter's classes are the export's mask values (lymphus_ml.release.MASK_LABELS: 0 background, 1 lymph node).
ID2LABEL = MASK_LABELS
LABEL2ID = {name: index for index, name in ID2LABEL.items()}


NODE_CLASS = LABEL2ID["lymph_node"]


SEGMENTATION_METRICS = ("dice", "iou", "hd95")
METRIC_DISPLAY_NAMES = {"dice": "Dice", "iou": "IoU", "hd95": "HD95 (pixels)"}


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
        self.image_mean = per_channel(image_mean, num_channels)
        self.image_std = per_channel(image_std, num_channels)

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


def transform_for(image_processor, num_channels=3, train=False) -> SegmentationTransform:
    """The SegmentationTransform matching an image processor: its size, mean and std (resize only, no crop)."""
    mean, std = processor_mean_std(image_processor, num_channels)
    return SegmentationTransform(model_input_size(image_processor), mean, std, train=train, num_channels=num_channels)


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


def write_cases_csv(path, rows) -> Path:
    """rows: dicts with split, case_id, centre, dice, iou, hd95 (empty when undefined), expert/predicted pixels."""
    fieldnames = ["split", "case_id", "centre", "dice", "iou", "hd95", "expert_pixels", "predicted_pixels"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows({key: ("" if row.get(key) is None else row.get(key)) for key in fieldnames} for row in rows)
    return Path(path)
