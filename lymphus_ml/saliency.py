"""Where the model looks, measured against the expert node mask.

Ultrasound frames carry calipers, text and scanner overlays; a classifier can score well by looking at them rather
than at the node. Every LymphUs case has an expert mask, so the share of the model's saliency that falls on the
node can be measured:

    maps = saliency_maps(model, pixel_values, target_index=predicted_or_true_labels)  # (N, H, W)
    summary = saliency_summary(maps, masks)  # masks: (N, H, W) 0/1 in the model's input geometry

`saliency_maps` works for any `AutoModelForImageClassification`: it only calls `model(pixel_values=...).logits`.
Occlusion is batched here (checked against captum's `Occlusion` in the tests); integrated gradients is captum's.
Maps are at the model's input size, so the masks must be in the same geometry: after the ROI transform (full
image or crop of the mask's box) and the resize to the model's input (`resize_mask`).

A score means little alone: `lymphus_ml.saliency_controls` scores the trained model beside randomised controls
(Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018).
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lymphus_ml.evaluation import metric_functions


SALIENCY_METHODS = ("occlusion", "integrated_gradients")


def resize_mask(mask, size) -> np.ndarray:
    """A 0/1 mask (PIL image or array) resized to `size` = (height, width) by nearest neighbour, as uint8 0/1."""
    if not isinstance(mask, Image.Image):
        mask = Image.fromarray((np.asarray(mask) > 0).astype(np.uint8))
    height, width = size
    return (np.asarray(mask.resize((width, height), Image.Resampling.NEAREST)) > 0).astype(np.uint8)


def occlusion_window(
    height: int, width: int, fraction: float = 1 / 8, stride_fraction: float | None = None
) -> tuple[tuple[int, int], tuple[int, int]]:
    """((window_h, window_w), (stride_h, stride_w)): a window `fraction` of the input, the stride `stride_fraction`
    of it (default: half the window).

    Relative to the input, so a 64x64 and a 224x224 model are probed on the same grid of positions: 15 x 15 at the
    default, 4 x 4 with fraction = stride_fraction = 1/4 (train_vit.py's default, non-overlapping windows).
    """
    for name, value in (("window", fraction), ("stride", stride_fraction)):
        if value is not None and not 0 < value <= 1:
            raise ValueError(f"The occlusion {name} fraction {value} is not in (0, 1].")
    window = (max(1, round(height * fraction)), max(1, round(width * fraction)))
    if stride_fraction is None:
        return window, (max(1, window[0] // 2), max(1, window[1] // 2))
    return window, (max(1, round(height * stride_fraction)), max(1, round(width * stride_fraction)))


def occlusion_masks(height: int, width: int, window, stride) -> torch.Tensor:
    """(P, H, W) float 0/1: one mask per window position, row-major.

    As captum's `Occlusion`: ceil((size - window) / stride) + 1 positions per axis, the last window cut at the
    border when the stride does not divide, so every pixel is covered.
    """
    tops = range(0, height - window[0] + stride[0], stride[0])
    lefts = range(0, width - window[1] + stride[1], stride[1])
    masks = torch.zeros(len(tops) * len(lefts), height, width)
    for position, (top, left) in enumerate((top, left) for top in tops for left in lefts):
        masks[position, top : top + window[0], left : left + window[1]] = 1
    return masks


def target_log_odds(logits: torch.Tensor) -> torch.Tensor:
    """(N, K) logits -> (N, K) log-odds of each class against the others: z_k - logsumexp(z_j, j != k).

    The score explained. Unlike a probability it does not saturate on a confident model, and unlike a raw logit it
    ignores shifts shared by all classes (for two classes it is the logit margin).
    """
    count, classes = logits.shape
    itself = torch.eye(classes, dtype=torch.bool, device=logits.device)
    others = logits.unsqueeze(1).expand(count, classes, classes).masked_fill(itself, -torch.inf)
    return logits - torch.logsumexp(others, dim=2)  # row k: logsumexp over j != k


def occlusion_saliency(score, pixel_values, targets, window, stride, batch_size: int = 256) -> torch.Tensor:
    """(N, H, W): mean drop of the target score over the windows covering each pixel, the window set to 0.

    What captum's `Occlusion` computes (tests check it against captum), in batches of `batch_size` perturbed
    images drawn from all (image, window) pairs: captum builds its perturbations through general per-window
    masks, which on a tiny model cost several times the model itself.
    """
    count, _, height, width = pixel_values.shape
    masks = occlusion_masks(height, width, window, stride).to(pixel_values.device, pixel_values.dtype)
    positions = len(masks)
    targets = torch.as_tensor(targets, device=pixel_values.device)
    with torch.no_grad():
        unoccluded = torch.cat([score(batch) for batch in pixel_values.split(batch_size)])
        unoccluded = unoccluded.gather(1, targets[:, None])[:, 0]
        pair_image = torch.arange(count, device=pixel_values.device).repeat_interleave(positions)
        pair_window = torch.arange(positions, device=pixel_values.device).repeat(count)
        drops = torch.empty(count * positions, device=pixel_values.device)
        for pairs in torch.arange(count * positions, device=pixel_values.device).split(batch_size):
            images, windows = pair_image[pairs], pair_window[pairs]
            occluded = pixel_values[images] * (1 - masks[windows]).unsqueeze(1)
            drops[pairs] = unoccluded[images] - score(occluded).gather(1, targets[images][:, None])[:, 0]
    coverage = masks.sum(dim=0)
    return torch.einsum("np,phw->nhw", drops.view(count, positions), masks.float()) / coverage.float()


def integrated_gradients(score, pixel_values, targets, steps: int, batch_size: int, tolerance: float | None,
                         max_steps: int):
    """(maps (N, H, W), completeness errors (N,), steps used (N,)): captum `IntegratedGradients` from the all-zero
    (mean) image, summed over channels.

    Completeness error: |sum of attributions - (F(x) - F(baseline))| / |F(x) - F(baseline)|, F the explained score
    (NaN where F(x) = F(baseline), nothing to attribute). Starting at `steps` Gauss-Legendre steps, the images whose
    error exceeds `tolerance` are attributed again with twice the steps, up to `max_steps` (tolerance None: no
    refinement).
    """
    from captum.attr import IntegratedGradients

    explainer = IntegratedGradients(score)
    count = len(pixel_values)
    with torch.no_grad():
        baseline = torch.zeros_like(pixel_values[:1])
        change = torch.cat([score(batch) for batch in pixel_values.split(batch_size)]).gather(1, targets[:, None])[:, 0]
        change = change - score(baseline)[0][targets]
    maps = torch.zeros(count, *pixel_values.shape[2:])
    errors = np.full(count, np.nan)
    used = np.zeros(count, dtype=int)
    pending = torch.arange(count)
    while len(pending):
        images_per_call = max(1, batch_size // steps)
        for chunk in pending.split(images_per_call):
            attributions = explainer.attribute(
                pixel_values[chunk], baselines=0.0, target=targets[chunk], n_steps=steps
            ).detach()
            maps[chunk] = attributions.sum(dim=1).float().cpu()
            total = attributions.flatten(1).sum(dim=1).float()
            errors[chunk.numpy()] = ((total - change[chunk]).abs() / change[chunk].abs()).cpu().numpy()
            used[chunk.numpy()] = steps
        if tolerance is None or steps * 2 > max_steps:
            break
        pending = pending[torch.as_tensor(errors[pending.numpy()] > tolerance)]  # NaN: nothing to refine
        steps *= 2
    return maps, errors, used


def saliency_maps(
    model,
    pixel_values,
    target_index,
    method: str = "occlusion",
    *,
    window_fraction: float = 1 / 8,
    stride_fraction: float | None = None,
    integrated_gradients_steps: int = 64,
    completeness_tolerance: float | None = 0.05,
    max_integrated_gradients_steps: int = 1024,
    batch_size: int = 256,
    details: bool = False,
):
    """One saliency map per image, (N, H, W) float32 at the input size. Positive = supports the target.

    pixel_values: (N, C, H, W) already preprocessed (normalised) as the model is fed. target_index: the class
    explained, an int for all images or one per image (e.g. the predicted class, or the positive class). The score
    explained is the target's log-odds against the other classes (`target_log_odds`).

    occlusion (default): a window `window_fraction` of the input, all channels, slides with a stride of
    `stride_fraction` of the input (default half the window) and is set to 0, the normalised mean; a pixel's value
    is the mean drop of the score over the windows covering it. Costs (2 / window_fraction - 1)^2 + 1 = 226 forward
    passes per image at the default (17 with window = stride = 1/4), batched `batch_size` images per model call.
    Evidence spread over a region larger than the window (a whole node read by its brightness) survives any one
    window and scores low: a larger `window_fraction` or integrated gradients then show it better.
    integrated_gradients: captum `IntegratedGradients` from the all-zero (mean) image, from
    `integrated_gradients_steps` Gauss-Legendre steps (a forward and a backward pass each), doubled per image
    until its completeness error is under `completeness_tolerance` or `max_integrated_gradients_steps` is
    reached (`integrated_gradients`), summed over channels.

    details: also return {"completeness_error": (N,) or None, "steps": (N,) or None} (integrated gradients only).
    """
    if method not in SALIENCY_METHODS:
        raise ValueError(f"Saliency method {method!r} is not one of {SALIENCY_METHODS}.")
    parameter = next(model.parameters())
    device = parameter.device
    pixel_values = torch.as_tensor(pixel_values).to(device=device, dtype=parameter.dtype)
    if pixel_values.ndim != 4:
        raise ValueError(f"pixel_values must be (N, C, H, W); got shape {tuple(pixel_values.shape)}.")
    count, _, height, width = pixel_values.shape
    targets = torch.as_tensor(target_index, dtype=torch.long).expand(count).to(device)
    info = {"completeness_error": None, "steps": None}
    if count == 0:
        maps = np.zeros((0, height, width), dtype=np.float32)
        return (maps, info) if details else maps

    def score(inputs):
        return target_log_odds(model(pixel_values=inputs).logits.float())

    was_training = model.training
    model.eval()  # dropout off: the same image gets the same map
    try:
        if method == "occlusion":
            window, stride = occlusion_window(height, width, window_fraction, stride_fraction)
            maps = occlusion_saliency(score, pixel_values, targets, window, stride, batch_size)
        else:
            maps, errors, steps = integrated_gradients(
                score, pixel_values, targets, integrated_gradients_steps, batch_size, completeness_tolerance,
                max_integrated_gradients_steps,
            )
            info = {"completeness_error": errors, "steps": steps}
    finally:
        model.train(was_training)
    maps = maps.float().cpu().numpy()
    return (maps, info) if details else maps


def energy_pointing_game(saliency, mask) -> float:
    """Share of the positive saliency that lies inside the node: sum(positive in mask) / sum(positive).

    Negative saliency (evidence against the target) is ignored. NaN when the map has no positive value. A model
    that spreads its saliency uniformly scores the node's area fraction: that is the chance level to compare with.
    (Energy-based pointing game, Wang et al., Score-CAM, 2020.)
    """
    positive = np.clip(np.asarray(saliency, dtype=np.float64), 0, None)
    total = positive.sum()
    if total <= 0:
        return float("nan")
    return float(positive[np.asarray(mask) > 0].sum() / total)


def pointing_game_hit(saliency, mask) -> bool:
    """Whether the saliency peak falls in the node.

    Ties: a hit when ANY pixel holding the maximum is in the node. Occlusion maps are blocky (pixels covered by the
    same windows share a value), so the peak is a stride-sized block; a block touching the node counts, a tolerance
    of one stride, in the spirit of the original pointing game's 15-pixel tolerance (Zhang et al., 2016). A flat
    map (no peak) is a miss.
    """
    saliency = np.asarray(saliency, dtype=np.float64)
    peak = saliency.max()
    if peak == saliency.min():
        return False
    return bool(np.any((saliency == peak) & (np.asarray(mask) > 0)))


def mean_t_interval(values, confidence_level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student t interval for the mean of `values`; NaN bounds with fewer than 2 values."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    from scipy import stats  # here, not at the top: ~1 CPU-s of every script's start-up

    half_width = stats.t.ppf((1 + confidence_level) / 2, len(values) - 1) * stats.sem(values)
    return mean, float(mean - half_width), float(mean + half_width)


def saliency_scores(maps, masks) -> dict:
    """Per image: energy in node (NaN without positive saliency), pointing-game hit, node area fraction."""
    maps, masks = np.asarray(maps), np.asarray(masks)
    if maps.shape != masks.shape:
        raise ValueError(f"Saliency maps {maps.shape} and masks {masks.shape} differ; resize the masks first.")
    return {
        "energy_in_node": np.array([energy_pointing_game(s, m) for s, m in zip(maps, masks)], dtype=np.float64),
        "pointing_game_hit": np.array([pointing_game_hit(s, m) for s, m in zip(maps, masks)], dtype=bool),
        "node_area_fraction": (masks > 0).reshape(len(masks), -1).mean(axis=1),
    }


def saliency_summary(saliency_maps, masks, confidence_level: float = 0.95) -> dict:
    """How much of the model's saliency falls on the expert node, over images, with confidence intervals.

    energy_in_node_*: mean share of positive saliency in the node, Student t interval over the images that have
    positive saliency (`n_images_with_saliency`). node_area_fraction_mean: the chance level for that share (a
    uniform map scores the node's area share). energy_minus_area_*: the per-image excess over chance, mean and t
    interval (paired, so node size differences between images cancel). pointing_game_*: peak-in-node hit rate with
    an exact Clopper-Pearson interval, over all images. Values are floats/ints; NaN where undefined (the caller
    turns NaN into null for JSON).
    """
    scores = saliency_scores(saliency_maps, masks)
    energy, hits, area = scores["energy_in_node"], scores["pointing_game_hit"], scores["node_area_fraction"]
    defined = ~np.isnan(energy)
    energy_mean, energy_low, energy_high = mean_t_interval(energy[defined], confidence_level)
    # A share lies in [0, 1]: a t interval near either end is cut there.
    energy_low, energy_high = max(0.0, energy_low), min(1.0, energy_high)
    excess_mean, excess_low, excess_high = mean_t_interval(energy[defined] - area[defined], confidence_level)
    # The exact interval of the metric module, the one every proportion of this project gets.
    hit_low, hit_high = metric_functions().clopper_pearson_interval(int(hits.sum()), len(hits), confidence_level)
    return {
        "n_images": int(len(energy)),
        "n_images_with_saliency": int(defined.sum()),
        "confidence_level": float(confidence_level),
        "energy_in_node_mean": energy_mean,
        "energy_in_node_ci_low": energy_low,
        "energy_in_node_ci_high": energy_high,
        "node_area_fraction_mean": float(area.mean()) if len(area) else float("nan"),
        "energy_minus_area_mean": excess_mean,
        "energy_minus_area_ci_low": excess_low,
        "energy_minus_area_ci_high": excess_high,
        "pointing_game_hits": int(hits.sum()),
        "pointing_game_hit_rate": float(hits.mean()) if len(hits) else float("nan"),
        "pointing_game_ci_low": hit_low,
        "pointing_game_ci_high": hit_high,
    }


def stratified_sample(labels, max_cases: int | None, seed: int) -> np.ndarray:
    """Sorted indices of at most `max_cases` cases, drawn without replacement within each label in proportion to
    its count (largest remainders, at least one case per label when max_cases allows), seeded. None or 0, or a set
    no larger: every case."""
    labels = np.asarray(labels)
    if not max_cases or max_cases >= len(labels):
        return np.arange(len(labels))
    values, counts = np.unique(labels, return_counts=True)
    quotas = counts * max_cases / len(labels)
    taken = np.floor(quotas).astype(int)
    if max_cases >= len(values):
        taken = np.maximum(taken, 1)
    for index in np.argsort(-(quotas - np.floor(quotas)), kind="stable"):
        if taken.sum() >= max_cases:
            break
        taken[index] += 1
    while taken.sum() > max_cases:  # the at-least-one rule overshot: take back from the largest
        taken[np.argmax(taken)] -= 1
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == value), size=min(k, n), replace=False)
              for value, k, n in zip(values, taken, counts)]
    return np.sort(np.concatenate(chosen))


# The randomised controls of lymphus_ml.saliency_controls, by name (the figure's column headings).
CONTROLS = {
    "head_reinitialised": "classifier head re-initialised",
    "all_reinitialised": "all weights re-initialised",
}


def completeness_summary(errors) -> dict:
    """Median and 90th percentile of integrated gradients' completeness errors (NaN ones left out), and how many."""
    errors = np.asarray(errors, dtype=np.float64)
    defined = errors[~np.isnan(errors)]
    if not len(defined):
        return {"completeness_error_median": float("nan"), "completeness_error_p90": float("nan"),
                "completeness_error_n": 0}
    return {"completeness_error_median": float(np.median(defined)),
            "completeness_error_p90": float(np.percentile(defined, 90)), "completeness_error_n": int(len(defined))}


def representative_cases(scores) -> list[tuple[str, int]]:
    """[("best", i), ("median", j), ("worst", k)]: indices of the highest, median and lowest score (NaN skipped)."""
    scores = np.asarray(scores, dtype=np.float64)
    defined = np.flatnonzero(~np.isnan(scores))
    if len(defined) == 0:
        return []
    ranked = defined[np.argsort(-scores[defined], kind="stable")]
    return [("best", int(ranked[0])), ("median", int(ranked[len(ranked) // 2])), ("worst", int(ranked[-1]))]


def plot_saliency_cases(images, masks, maps, scores, path, title: str = "", controls: dict | None = None,
                        control_scores: dict | None = None) -> Path:
    """PNG of the best, median and worst case by `scores` (energy in node): rows; columns image, image with the
    node outlined, positive saliency over the image (scaled to its peak), then one column per control map of the
    same case (`controls`: {name: (N, H, W)}, `control_scores`: {name: energy in node per image}). images: (N, H,
    W) uint8 grayscale at the model input size; masks and maps in the same geometry.
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, Agg canvas on savefig

    controls, control_scores = controls or {}, control_scores or {}
    cases = representative_cases(scores)
    columns = 3 + len(controls)
    figure = Figure(figsize=(2.5 * columns, 2.5 * max(1, len(cases))), dpi=100, layout="constrained")
    if not cases:
        figure.text(0.5, 0.5, "no image with positive saliency", ha="center", va="center")
    headings = ["image", "expert node", "saliency (positive)"] + [
        f"control: {CONTROLS.get(name, name)}".replace(" re-init", "\nre-init") for name in controls
    ]
    for row, (name, index) in enumerate(cases):
        image, mask = np.asarray(images[index]), np.asarray(masks[index]) > 0
        axes = [figure.add_subplot(len(cases), columns, columns * row + column + 1) for column in range(columns)]
        for ax in axes:
            ax.imshow(image, cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
        if mask.any():
            axes[1].contour(mask, levels=[0.5], colors="lime", linewidths=1)
        for column, (saliency, label) in enumerate(
            [(maps, None)] + [(controls[c], control_scores.get(c)) for c in controls], start=2
        ):
            positive = np.clip(np.asarray(saliency[index], dtype=np.float64), 0, None)
            peak = positive.max()
            relative = positive / peak if peak > 0 else positive
            # Below a tenth of the peak left clear, so the image shows through where the model does not look.
            overlay = axes[column].imshow(np.ma.masked_less(relative, 0.1), cmap="jet", alpha=0.6, vmin=0, vmax=1)
            if label is not None:
                axes[column].set_xlabel(f"energy in node {label[index]:.2f}", fontsize=8)
        axes[0].set_ylabel(f"{name} (#{index})\nenergy in node {scores[index]:.2f}", fontsize=8)
        if row == 0:
            for ax, heading in zip(axes, headings):
                ax.set_title(heading, fontsize=9)
    if cases:
        figure.colorbar(overlay, ax=figure.axes, shrink=0.6, label="saliency / image max")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.savefig(path)
    return Path(path)


def model_inputs_with_masks(split_dataset, transform, size, image_column="image", mask_column="mask"):
    """(pixel_values (N, C, H, W), masks (N, H, W) 0/1, images (N, H, W) uint8) of a split as the model sees it.

    `transform` is the evaluation `ClassificationTransform`: its ROI (full image, or the mask's box) is applied to
    the expert mask too, which is then resized to the model input by nearest neighbour, so mask and saliency map
    share one geometry. The images are the ROI view resized as the model gets it, for the figure.
    """
    from lymphus_ml.images import roi_bounding_box, roi_image

    pixel_values, masks, images = [], [], []
    for row in split_dataset.select_columns([image_column, mask_column]):
        image, mask = row[image_column].convert("L"), row[mask_column]
        pixel_values.append(transform(image, mask))
        box = roi_bounding_box(mask, transform.margin) if transform.roi != "full" else (0, 0, *mask.size)
        masks.append(resize_mask(mask.crop(box), size))
        view = roi_image(image, mask, transform.roi, transform.margin)
        images.append(np.asarray(view.resize((size[1], size[0]), Image.Resampling.BILINEAR)))
    return torch.stack(pixel_values), np.stack(masks), np.stack(images)
