"""Inference with trained LymphUs models: load a classifier or a segmenter, predict masks, crop, and score."""

import logging

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, AutoModelForSemanticSegmentation

from lymphus_ml.images import ROI_MODES, evaluation_transform, model_num_channels, roi_image
from lymphus_ml.segmentation import segment_images, transform_for


logger = logging.getLogger(__name__)


def device_for(device=None) -> torch.device:
    """`device`, else cuda when available, else cpu."""
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
    return model.to(device_for(device)).eval(), processor


def load_classifier(name_or_path, device=None, revision="main", cache_dir=None):
    """(model, image processor) of a classifier written by train_vit.py, in eval mode on `device`; a LoRA
    adapter (--finetuning lora) is loaded on its base and merged (lymphus_ml.finetuning.load_adapter_classifier)."""
    from lymphus_ml.finetuning import load_adapter_classifier

    model = load_adapter_classifier(name_or_path, revision=revision, cache_dir=cache_dir)
    if model is None:
        model = AutoModelForImageClassification.from_pretrained(name_or_path, revision=revision, cache_dir=cache_dir)
    processor = AutoImageProcessor.from_pretrained(name_or_path, revision=revision, cache_dir=cache_dir)
    return model.to(device_for(device)).eval(), processor


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
        "conformal": getattr(config, "conformal", None),  # train_vit.py --cv_folds: the referral sets' thresholds
    }


def check_segmenter_given(classifier, roi_mode, segmenter) -> None:
    """A classifier trained on the node's crop or masked crop needs a segmenter to find the node: refused without."""
    if roi_mode != "full" and segmenter is None:
        raise ValueError(
            f"Classifier {classifier} was trained on --roi {roi_mode} (the node, not the whole image): pass "
            "--segmenter (a model written by train_segformer.py) to find the node without an expert mask."
        )


def predict_masks(segmenter_model, segmenter_processor, images, batch_size: int = 8) -> list[np.ndarray]:
    """Predicted node masks: for each PIL image, a uint8 HxW array (0 background, 1 node) at that image's size.

    Batched on the model's device. Each image is preprocessed as in train_segformer.py's evaluation (grayscale,
    resized to the processor's size, its mean/std); the logits are upsampled bilinearly to the image's size, then
    argmax.
    """
    transform = transform_for(segmenter_processor, model_num_channels(segmenter_model.config))
    return segment_images(segmenter_model, transform, list(images), batch_size)


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
    transform = evaluation_transform(classifier_model, classifier_processor)
    probabilities = []
    for start in range(0, len(images), batch_size):
        pixel_values = torch.stack([transform(image) for image in images[start : start + batch_size]])
        logits = classifier_model(pixel_values=pixel_values.to(parameter.device, parameter.dtype)).logits
        probabilities.append(torch.softmax(logits.float(), dim=-1)[:, positive_index].cpu().numpy())
    return np.concatenate(probabilities) if probabilities else np.zeros(0)


@torch.inference_mode()
def predict_split_probabilities(classifier_model, classifier_processor, split_dataset, positive_label="malignant",
                                batch_size: int = 16, image_column="image", mask_column="mask") -> np.ndarray:
    """Probability of `positive_label` for every row of a dataset split, with train_vit.py's evaluation
    preprocessing and the expert mask: the ROI mode and margin come from the classifier's config (`roi_mode`,
    `roi_margin`, written by train_vit.py; default the whole image), so a crop model sees crops here too."""
    config = classifier_model.config
    label2id = {str(name): int(index) for name, index in (config.label2id or {}).items()}
    if positive_label not in label2id:
        raise ValueError(
            f"Checkpoint {config.name_or_path!r} has labels {list(label2id)}, not {positive_label!r}: is it a LymphUs "
            "classifier?"
        )
    roi, margin = getattr(config, "roi_mode", "full"), float(getattr(config, "roi_margin", 0.1))
    transform = evaluation_transform(classifier_model, classifier_processor, roi, margin)
    view = split_dataset.select_columns([image_column] + ([mask_column] if roi != "full" else []))
    parameter = next(classifier_model.parameters())
    probabilities = []
    for start in range(0, len(view), batch_size):
        batch = view[start : start + batch_size]
        masks = batch.get(mask_column) or [None] * len(batch[image_column])
        pixels = torch.stack([transform(image, mask) for image, mask in zip(batch[image_column], masks)])
        logits = classifier_model(pixel_values=pixels.to(parameter.device, parameter.dtype)).logits
        probabilities.append(torch.softmax(logits.float(), dim=-1)[:, label2id[positive_label]].cpu().numpy())
    return np.concatenate(probabilities) if probabilities else np.zeros(0)


def with_predicted_masks(dataset, segmenter, segmenter_processor, data_args):
    """`dataset` with its mask column replaced by the segmenter's masks (an empty one by the whole image)."""
    import datasets

    images = [image.convert("L") for image in dataset[data_args.image_column_name]]
    masks = predict_masks(segmenter, segmenter_processor, images)
    for index, (case_id, mask) in enumerate(zip(dataset[data_args.case_id_column_name], masks)):
        if not mask.any():
            logger.warning(f"{case_id}: the segmenter found no node; the whole image is used.")
            masks[index] = np.ones_like(mask)
    feature = datasets.Image()
    dataset = dataset.remove_columns(data_args.mask_column_name)
    return dataset.add_column(
        data_args.mask_column_name, [feature.encode_example(Image.fromarray(mask)) for mask in masks], feature=feature
    )


def classify_images(images, classifier, classifier_processor, settings, segmenter=None, segmenter_processor=None,
                    names=None, batch_size: int = 8) -> list[tuple]:
    """[(probability, predicted mask or None, roi used, the classifier's view)] per 8-bit image: segment (when a segmenter is given), crop
    with the predicted mask as in training (`roi_from_predicted_mask`), classify. predict.py and the app share it."""
    if not images:
        return []
    names = names or [f"image {index}" for index in range(len(images))]
    masks = predict_masks(segmenter, segmenter_processor, images, batch_size) if segmenter is not None else [None] * len(images)
    views, rois = [], []
    for image, mask, name in zip(images, masks, names):
        if mask is None:
            view, roi = image, "full"
        else:
            view, roi = roi_from_predicted_mask(image, mask, settings["roi_mode"], settings["roi_margin"], str(name))
        views.append(view)
        rois.append(roi)
    probabilities = predict_probabilities(classifier, classifier_processor, views, settings["positive_index"], batch_size)
    return list(zip(probabilities, masks, rois, views))


def label_at_threshold(probability, threshold, settings) -> str:
    """The positive label when `probability` >= `threshold`, else the other one (train_vit.py's convention)."""
    return settings["positive_label"] if probability >= threshold else settings["negative_label"]
