"""Post-hoc calibration of a binary classifier, fitted on out-of-fold predictions and folded into its head.

Platt scaling is a logistic regression of the label on the logit difference z = logit(malignant) - logit(benign);
temperature scaling is the same without an intercept (p = sigmoid(z / T)). Either is an affine map of z, so it is
folded into the final Linear layer (weight and bias scaled, the intercept added to the positive class): the saved
model's softmax is then the calibrated probability, and `pipeline()` and the Hub widget need no custom code.

    calibrator = fit_calibrator(oof_logits, oof_labels, positive_index=1, method="platt")
    fold_into_head(model, calibrator)
"""

from dataclasses import asdict, dataclass

import numpy as np


METHODS = ("platt", "temperature", "none")


@dataclass
class Calibrator:
    """p(positive) = sigmoid(slope * z + intercept), z = logit(positive) - logit(other); T = 1 / slope."""

    method: str
    slope: float = 1.0
    intercept: float = 0.0
    positive_index: int = 1

    def probabilities(self, logits) -> np.ndarray:
        from scipy.special import expit

        return expit(self.slope * logit_difference(logits, self.positive_index) + self.intercept)

    def as_dict(self) -> dict:
        return asdict(self)


def logit_difference(logits, positive_index: int) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] != 2:
        raise ValueError(f"calibration needs two-class logits, got shape {logits.shape}")
    return logits[:, positive_index] - logits[:, 1 - positive_index]


def fit_calibrator(logits, labels, positive_index: int = 1, method: str = "platt") -> Calibrator:
    """Fit Platt or temperature scaling by maximum likelihood (unpenalised logistic regression on z)."""
    from sklearn.linear_model import LogisticRegression

    if method not in METHODS:
        raise ValueError(f"calibration method {method!r}: choose one of {', '.join(METHODS)}")
    if method == "none":
        return Calibrator("none", positive_index=positive_index)
    z = logit_difference(logits, positive_index).reshape(-1, 1)
    y = (np.asarray(labels) == positive_index).astype(int)
    if len(set(y)) < 2:
        raise ValueError("calibration needs predictions of both classes")
    regression = LogisticRegression(C=np.inf, fit_intercept=method == "platt", tol=1e-10, max_iter=10_000).fit(z, y)
    return Calibrator(method, float(regression.coef_[0, 0]), float(regression.intercept_[0]) if method == "platt" else 0.0, positive_index)


def classifier_head(model):
    """The final Linear layer producing the class logits (e.g. ViT's, ConvNeXt's `classifier`)."""
    import torch

    head = getattr(model, "classifier", None)
    if isinstance(head, torch.nn.Linear) and head.out_features == model.config.num_labels:
        return head
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == model.config.num_labels]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no final Linear layer with {model.config.num_labels} outputs to fold the calibration into")
    return linears[-1]


def fold_into_head(model, calibrator: Calibrator):
    """Scale the head so that softmax(model(x)) equals calibrator.probabilities(original logits); records it in config."""
    import torch

    if calibrator.method != "none":
        head = classifier_head(model)
        with torch.no_grad():
            head.weight.mul_(calibrator.slope)
            if head.bias is None:
                head.bias = torch.nn.Parameter(torch.zeros(head.out_features, dtype=head.weight.dtype, device=head.weight.device))
            else:
                head.bias.mul_(calibrator.slope)
            head.bias[calibrator.positive_index] += calibrator.intercept
    model.config.calibration = calibrator.as_dict()
    return model


def expected_calibration_error(labels, probabilities, n_bins: int = 10) -> float:
    """ECE with equal-width bins: sum over bins of |fraction positive - mean predicted| x share of cases."""
    labels, probabilities = np.asarray(labels, dtype=float), np.asarray(probabilities, dtype=float)
    bins = np.minimum((probabilities * n_bins).astype(int), n_bins - 1)
    error = 0.0
    for b in np.unique(bins):
        members = bins == b
        error += members.mean() * abs(labels[members].mean() - probabilities[members].mean())
    return float(error)


def calibration_scores(labels, probabilities, n_bootstrap: int = 1000, confidence_level: float = 0.95, seed: int = 0, n_bins: int = 10) -> dict:
    """Brier score and ECE, each with a percentile bootstrap interval over cases (none when n_bootstrap is 0)."""
    from sklearn.metrics import brier_score_loss

    labels, probabilities = np.asarray(labels, dtype=int), np.asarray(probabilities, dtype=float)
    scores = {"brier_score": float(brier_score_loss(labels, probabilities, pos_label=1)),
              "ece": expected_calibration_error(labels, probabilities, n_bins), "n": int(len(labels))}
    if n_bootstrap:
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, len(labels), size=(n_bootstrap, len(labels)))
        brier = [np.mean((probabilities[d] - labels[d]) ** 2) for d in draws]
        ece = [expected_calibration_error(labels[d], probabilities[d], n_bins) for d in draws]
        tail = 100 * (1 - confidence_level) / 2
        for name, values in (("brier_score", brier), ("ece", ece)):
            scores[f"{name}_ci_low"], scores[f"{name}_ci_high"] = (float(v) for v in np.percentile(values, [tail, 100 - tail]))
    return scores


def plot_reliability(curves, path, n_bins: int = 10, title: str = "Reliability diagram"):
    """One reliability diagram (scikit-learn's CalibrationDisplay) of several {name: (labels, probabilities)}."""
    from sklearn.calibration import CalibrationDisplay

    from lymphus_ml.plots import agg_pyplot

    plt = agg_pyplot()
    figure, axes = plt.subplots(figsize=(5, 5))
    for name, (labels, probabilities) in curves.items():
        CalibrationDisplay.from_predictions(labels, probabilities, n_bins=n_bins, name=name, ax=axes)
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
