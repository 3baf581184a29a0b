"""The app's prediction (app.py): load the models, one image -> what the page shows.

`predict_image(image, models)` is the whole prediction, a plain function on a PIL image: the segmenter's node
(when there is one), the classifier's ROI from it exactly as predict.py makes it, the malignancy probability,
the label at the classifier's validation threshold, the conformal prediction set (a model trained with
--cv_folds: {benign}, {malignant} or both = "uncertain: refer"), the node outline and an occlusion saliency heatmap over the
classifier's view. The Gradio page only wires it.
"""

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from lymphus_ml.conformal import prediction_sets, set_label
from lymphus_ml.images import check_image_size, evaluation_transform, to_8bit_grayscale
from lymphus_ml.inference import (
    check_segmenter_given,
    classifier_settings,
    classify_images,
    label_at_threshold,
    load_classifier,
    load_segmenter,
)
from lymphus_ml.plots import PREDICTED_COLOR, overlay_contours
from lymphus_ml.saliency import saliency_maps


HEATMAP_SIZE = 384  # longer side of the heatmap picture, in pixels
HEATMAP_FLOOR = 0.1  # saliency below this share of its peak is left clear, so the image shows through


@dataclass
class AppModels:
    """What the app serves: the classifier (with its training settings) and the optional segmenter."""

    classifier: Any
    classifier_processor: Any
    settings: dict
    classifier_name: str
    segmenter: Any = None
    segmenter_processor: Any = None
    segmenter_name: str | None = None
    id2label: dict = field(default_factory=dict)


def load_models(classifier, segmenter=None, device=None) -> AppModels:
    """The classifier and segmenter (local folders or Hub ids). A classifier trained on the node's crop or masked
    crop needs the segmenter to find the node: without one it is refused here, before anything is served."""
    try:
        model, processor = load_classifier(classifier, device=device)
    except OSError as error:
        raise ValueError(f"Cannot load the classifier {classifier}: {error}") from None
    settings = classifier_settings(model.config)
    check_segmenter_given(classifier, settings["roi_mode"], segmenter)
    models = AppModels(model, processor, settings, str(classifier),
                        id2label={int(index): name for index, name in model.config.id2label.items()})
    if segmenter is not None:
        try:
            models.segmenter, models.segmenter_processor = load_segmenter(segmenter, device=device)
        except OSError as error:
            raise ValueError(f"Cannot load the segmenter {segmenter}: {error}") from None
        models.segmenter_name = str(segmenter)
    return models


def classifier_pixel_values(view, models) -> torch.Tensor:
    """(1, C, H, W): the classifier's input for a view (the ROI already applied), as predict_probabilities makes it."""
    return evaluation_transform(models.classifier, models.classifier_processor)(view)[None]


def heatmap_size(size, longer_side: int = HEATMAP_SIZE) -> tuple[int, int]:
    """(width, height) with the longer side `longer_side` and the aspect ratio of `size`."""
    width, height = size
    scale = longer_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def saliency_overlay(view, saliency, size=None) -> Image.Image:
    """RGB picture: the grayscale view with its positive saliency (scaled to the peak) in the jet colour map on top.

    The map (at the model's input size) is stretched bilinearly over the view; below HEATMAP_FLOOR of the peak the
    view shows through. A map with no positive value leaves the plain view.
    """
    from matplotlib import colormaps

    size = size or heatmap_size(view.size)
    gray = np.asarray(view.convert("L").resize(size, Image.Resampling.BILINEAR), dtype=np.float64)
    positive = np.clip(np.asarray(saliency, dtype=np.float32), 0, None)
    peak = float(positive.max()) if positive.size else 0.0
    relative = positive / peak if peak > 0 else np.zeros_like(positive)
    relative = np.asarray(Image.fromarray(relative, mode="F").resize(size, Image.Resampling.BILINEAR))
    colours = colormaps["jet"](np.clip(relative, 0, 1))[..., :3] * 255
    alpha = np.where(relative >= HEATMAP_FLOOR, 0.55, 0.0)[..., None]
    blended = gray[..., None] * (1 - alpha) + colours * alpha
    return Image.fromarray(np.round(blended).astype(np.uint8), mode="RGB")


def view_description(roi: str, settings: dict) -> str:
    """The classifier's view of one image in words (`roi`: the ROI classify_images used)."""
    if roi == "full":
        return "the whole image"
    if roi.startswith("full"):
        return "the whole image: the segmenter found no node"
    what = "crop" if roi == "crop" else "masked crop (outside the node set to 0)"
    return f"the {what} of the predicted node, margin {settings['roi_margin']:g}"


def predict_image(image, models: AppModels) -> dict:
    """Everything the page shows for one PIL image (any mode or bit depth, see `to_8bit_grayscale`):

    probability (of the positive class, "malignant"), label (at the classifier's validation threshold), threshold,
    positive_label, roi (the classifier's view: full, crop, masked, or full when the predicted mask is empty),
    note (what was done to the image, in words), node_pixels (None without a segmenter), outline (RGB: the image
    with the predicted node's contour, or the plain image without a segmenter), heatmap (RGB: occlusion saliency
    of the given label over the classifier's view), and for a classifier whose config carries conformal thresholds
    (train_vit.py --cv_folds) its referral set: prediction_set (the class names in the set, in the model's order),
    prediction_set_label ("benign", "malignant" or "uncertain: refer") and conformal_level; all three None otherwise.
    """
    settings = models.settings
    check_image_size(image.size)  # as predict.py and the app's upload: no label for a 1x1 image
    gray, conversion = to_8bit_grayscale(image)
    notes = [conversion] if conversion else []
    ((probability, mask, roi, view),) = classify_images(
        [gray], models.classifier, models.classifier_processor, settings, models.segmenter,
        models.segmenter_processor, ["the upload"],
    )
    if models.segmenter is None:
        notes.append("no segmenter: no node outline")
    notes.insert(0, f"classified {view_description(roi, settings)}")
    probability = float(probability)
    label = label_at_threshold(probability, settings["threshold"], settings)
    label_index = {name: index for index, name in models.id2label.items()}.get(label, settings["positive_index"])
    (saliency,) = saliency_maps(models.classifier, classifier_pixel_values(view, models), label_index, "occlusion")
    outline = gray.convert("RGB") if mask is None else Image.fromarray(overlay_contours(gray, (mask, PREDICTED_COLOR)))
    return {
        "probability": probability,
        "label": label,
        **conformal_set(probability, settings.get("conformal")),
        "threshold": settings["threshold"],
        "positive_label": settings["positive_label"],
        "roi": roi,
        "note": "; ".join(notes),
        "node_pixels": None if mask is None else int(np.asarray(mask).sum()),
        "outline": outline,
        "heatmap": saliency_overlay(view, saliency),
    }


def conformal_set(probability: float, conformal: dict | None) -> dict:
    """{"prediction_set", "prediction_set_label", "conformal_level"} of one positive-class probability under a model
    config's `conformal` thresholds (lymphus_ml.conformal); all None for a model without them."""
    if not conformal:
        return {"prediction_set": None, "prediction_set_label": None, "conformal_level": None}
    members = prediction_sets([probability], conformal)[0]
    names = conformal["class_names"]
    return {
        "prediction_set": [name for name, member in zip(names, members) if member],
        "prediction_set_label": set_label(members, names),
        "conformal_level": float(conformal["level"]),
    }
