"""Evaluation glue: the local evaluate modules, thresholds, probabilities, JSON-safe results and prediction files."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch


PROJECT_ROOT = Path(__file__).resolve().parent.parent
CLINICAL_METRIC_PATH = PROJECT_ROOT / "metrics" / "clinical_classification"
SEGMENTATION_METRIC_PATH = PROJECT_ROOT / "metrics" / "binary_segmentation"
# What a Hub Job of a script importing this module needs beside it (lymphus_ml.hub ships them).
SHIPPED_FILES = (
    "metrics/clinical_classification/clinical_classification.py",
    "metrics/binary_segmentation/binary_segmentation.py",
)

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


def metric_script_path(metric_path) -> Path:
    """The .py file of an evaluate module given as its folder or its file."""
    path = Path(metric_path)
    return path if path.suffix == ".py" else path / f"{path.name}.py"


def load_metric(metric_path=CLINICAL_METRIC_PATH):
    """One of the repository's local evaluate modules (offline), by folder or .py file."""
    import evaluate

    script = metric_script_path(metric_path)
    if not script.is_file():
        raise FileNotFoundError(f"Metric module not found at {script}; pass --metric_path to its folder.")
    return evaluate.load(str(metric_path))


def metric_functions(metric_path=CLINICAL_METRIC_PATH):
    """The plain functions (youden_threshold, delong_test, ...) of a metric module's file, imported by path."""
    script = metric_script_path(metric_path)
    if not script.is_file():
        raise FileNotFoundError(f"Metric module not found at {script}; pass --metric_path to its folder.")
    spec = importlib.util.spec_from_file_location(f"lymphus_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def youden_threshold(references, probabilities, metric_path=CLINICAL_METRIC_PATH) -> float:
    """Threshold maximising sensitivity + specificity - 1 (the metric module's own implementation)."""
    return float(metric_functions(metric_path).youden_threshold(references, probabilities))


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


def youden_threshold_stability(validation, references, probabilities, n_bootstrap=1000, confidence_level=0.95, seed=0,
                               metric_path=CLINICAL_METRIC_PATH) -> dict:
    """The metric module's `youden_threshold_stability`: the range of sensitivity and specificity on an evaluated set
    when the Youden threshold is re-chosen on bootstrap resamples of `validation` = (references, probabilities)."""
    stability = metric_functions(metric_path).youden_threshold_stability
    return json_safe(stability(*validation, references, probabilities, n_bootstrap=n_bootstrap,
                               confidence_level=confidence_level, seed=seed))


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


class RocAucComputeMetrics:
    """Trainer `compute_metrics` for the per-epoch validation: ROC-AUC of the positive class's softmax probability,
    the one number model selection (`metric_for_best_model="roc_auc"`) reads.

    The metric module's own `roc_auc` (Mann-Whitney, ties one half; NaN with a single class), so it equals the
    final metrics' point estimate; no threshold, no interval: those are computed once, after training
    (`clinical_metrics_at_thresholds`).
    """

    def __init__(self, positive_index: int, metric_path=CLINICAL_METRIC_PATH):
        self.positive_index, self.roc_auc = positive_index, metric_functions(metric_path).roc_auc

    def __call__(self, eval_prediction):
        probabilities = positive_probabilities(eval_prediction.predictions, self.positive_index)
        references = (np.asarray(eval_prediction.label_ids) == self.positive_index).astype(int)
        return {"roc_auc": float(self.roc_auc(references, probabilities))}


# How an estimate and its interval are written: model cards and logs, the sweep leaderboard, the study report.
INTERVAL_STYLES = {"card": "{} ({}-{})", "leaderboard": "{} ({}–{})", "report": "{} [{}, {}]"}
# What a zero-width interval is written as: the resamples (or the variance) did not vary, which is no certainty.
DEGENERATE_INTERVAL = "no variation: interval undefined"


def degenerate_interval(low, high) -> bool:
    """Whether [low, high] has zero width: a bootstrap whose replicates all agree, a variance of 0. Such an
    interval measures nothing (a finite sample cannot give certainty) and is never printed as one."""
    return low is not None and high is not None and low == high


def format_estimate(value, low=None, high=None, style="card", missing="n/a", digits=3) -> str:
    """`value` to `digits` decimals with its interval [low, high] in one of INTERVAL_STYLES (the value alone when
    the interval is missing; `missing` when the value is; "(no variation: interval undefined)" after the value
    when the interval has zero width, see `degenerate_interval`)."""
    if value is None:
        return missing
    if low is None or high is None:
        return f"{value:.{digits}f}"
    if degenerate_interval(low, high):
        return f"{value:.{digits}f} ({DEGENERATE_INTERVAL})"
    return INTERVAL_STYLES[style].format(*(f"{number:.{digits}f}" for number in (value, low, high)))


def format_metric(values, name, style="card", missing="n/a", digits=3) -> str:
    """`values[name]` with its interval `values[name_ci_low]`-`values[name_ci_high]` (see `format_estimate`)."""
    return format_estimate(values.get(name), values.get(f"{name}_ci_low"), values.get(f"{name}_ci_high"), style,
                           missing, digits)
