"""Plots every report shares: ROC curves, confusion matrices, mask contours and overlay grids (matplotlib, Agg)."""

from pathlib import Path

import numpy as np
from PIL import Image

from lymphus_ml.evaluation import apply_threshold


# Contour colours of the overlays (RGB).
EXPERT_COLOR = (0, 200, 0)
PREDICTED_COLOR = (255, 40, 40)


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


def contour(mask, thickness: int = 1) -> np.ndarray:
    """Boundary band of a 0/1 mask: its pixels within `thickness` pixels of the background (image edge included)."""
    inside = np.asarray(mask) > 0
    if not inside.any():
        return inside
    from scipy import ndimage  # here, not at the top: not every script that imports this module draws contours

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


def plot_roc_overlay(curves, path, title="ROC curves") -> Path:
    """One ROC curve per model (the study report's figures), a dot at each threshold; curves: list of dicts with name, references, probabilities, roc_auc, threshold."""
    from sklearn.metrics import roc_curve

    plt = agg_pyplot()
    figure, axes = plt.subplots(figsize=(5, 5), dpi=100)
    for index, curve in enumerate(curves):
        references = np.asarray(curve["references"], dtype=int)
        probabilities = np.asarray(curve["probabilities"], dtype=float)
        if len(np.unique(references)) < 2:
            continue
        fpr, tpr, _ = roc_curve(references, probabilities)
        auc = curve.get("roc_auc")
        line = axes.plot(fpr, tpr, lw=2, color=f"C{index}", label=f"{curve['name']} (AUC {auc:.3f})" if auc is not None else curve["name"])[0]
        if curve.get("threshold") is not None:
            predicted = apply_threshold(probabilities, curve["threshold"])
            sensitivity, specificity = predicted[references == 1].mean(), 1 - predicted[references == 0].mean()
            axes.plot([1 - specificity], [sensitivity], "o", color=line.get_color(), markeredgecolor="black")
    axes.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="1 - specificity", ylabel="Sensitivity")
    axes.set_title(title, fontsize=9)
    axes.legend(loc="lower right", fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return Path(path)


def plot_calibration(curves, path, title="Calibration") -> Path:
    """Reliability curves; curves: list of dicts with name, mean_predicted, fraction_positive, brier_score."""
    plt = agg_pyplot()
    figure, axes = plt.subplots(figsize=(5, 5), dpi=100)
    axes.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    for index, curve in enumerate(curves):
        axes.plot(
            curve["mean_predicted"],
            curve["fraction_positive"],
            "o-",
            color=f"C{index}",
            label=f"{curve['name']} (Brier {curve['brier_score']:.3f})",
        )
    axes.set(xlim=(0, 1), ylim=(-0.02, 1.02), xlabel="Mean predicted probability", ylabel="Observed fraction malignant")
    axes.set_title(title, fontsize=9)
    axes.legend(loc="upper left", fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return Path(path)


def forest_entries(rows, summary, split="external") -> list[tuple]:
    """(label, auc, low, high, is_model_mean, status) per line of the forest plot: each run with its CI, then the
    model's mean across its finished runs with a bar of ± 1 SD (the spread a new run of that model can expect)."""
    name = f"{split}_auc"
    entries = []
    for slug in dict.fromkeys(row["model_slug"] for row in rows):
        for row in [row for row in rows if row["model_slug"] == slug]:
            entries.append((f"{slug} · seed {row['seed']}", row.get(name), row.get(f"{name}_ci_low"),
                            row.get(f"{name}_ci_high"), False, row["status"]))
        spread = summary.get(slug, {}).get(name) or {}
        if spread.get("mean") is not None:
            sd = spread["sd"] or 0.0
            entries.append((f"{slug} · mean of {spread['n']} run(s)", spread["mean"], max(0.0, spread["mean"] - sd),
                            min(1.0, spread["mean"] + sd), True, "finished"))
    return entries


def plot_forest(entries, path, split="external") -> Path:
    """Forest plot of `split` AUC from `forest_entries`: per model, one line per run (point and CI), then the mean
    across runs (diamond)."""
    plt = agg_pyplot()
    figure, axes = plt.subplots(figsize=(7, 1.2 + 0.35 * len(entries)), dpi=100)
    lows = [value for entry in entries for value in entry[1:3] if value is not None]
    left = max(0.0, min(lows + [0.5]) - 0.05)
    for position, (label, auc, low, high, is_mean, status) in enumerate(entries):
        y = len(entries) - 1 - position
        if auc is None:
            axes.text(left + 0.01, y, status, va="center", fontsize=8, color="grey")
            continue
        color = "black" if is_mean else "tab:blue"
        if low is not None and high is not None:
            axes.plot([low, high], [y, y], color=color, lw=2 if is_mean else 1.2)
        axes.plot([auc], [y], "D" if is_mean else "o", color=color, markersize=7 if is_mean else 5)
    axes.axvline(0.5, ls="--", color="grey", lw=1)
    axes.set_yticks(range(len(entries)), [entry[0] for entry in reversed(entries)], fontsize=8)
    xlabel = f"{split} ROC-AUC (runs: their 95% CI as train_vit.py reports it; diamond: mean across runs ± 1 SD)"
    axes.set(xlim=(left, 1.0), ylim=(-0.7, len(entries) - 0.3), xlabel=xlabel,
             title=f"{split.capitalize()} ROC-AUC per run and model")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return Path(path)
