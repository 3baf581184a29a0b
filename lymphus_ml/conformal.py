"""Class-conditional (Mondrian) split-conformal prediction sets for a binary classifier.

Calibrated on out-of-fold probabilities: for each class c, the non-conformity of a case of class c is
1 - p(c), and its threshold is the ceil((n_c + 1) * level)-th smallest of the n_c scores. A new case's set holds
every class whose non-conformity is within that class's threshold, i.e. p(c) >= 1 - threshold_c. For a case of
class c exchangeable with the calibration cases of c, P(c in set) >= level (and <= level + 1/(n_c + 1) without
ties): a per-class guarantee, so malignant nodes are covered at the level however rare they are.
A set of both classes (or none) is "uncertain: refer".

We compute the thresholds ourselves rather than with crepes or MAPIE: what the model ships is two plain
probability thresholds in its config.json, which predict.py, the app and any `pipeline()` user apply with no
extra dependency; both libraries keep the calibration scores and compute p-values (crepes smooths them at random).

    conformal = fit_mondrian(oof_labels, oof_probabilities, class_names, level=0.9)
    sets = prediction_sets(probabilities, conformal)
"""

import math

import numpy as np


REFER = "uncertain: refer"


def fit_mondrian(labels, probabilities, class_names, level: float = 0.9) -> dict:
    """{"level", "class_names", "min_probability": {class: p}, "n": {class: n}} from positive-class probabilities.

    A class with too few calibration cases for the level (n_c < 1/(1 - level) - 1) gets min_probability 0: always in
    the set, which is what the guarantee requires.
    """
    if not 0 < level < 1:
        raise ValueError(f"conformal level {level}: must be between 0 and 1 (e.g. 0.9)")
    labels, probabilities = np.asarray(labels, dtype=int), np.asarray(probabilities, dtype=float)
    class_probabilities = np.stack([1 - probabilities, probabilities], axis=1)
    minimum, counts = {}, {}
    for c, name in enumerate(class_names):
        scores = np.sort(1 - class_probabilities[labels == c, c])
        rank = math.ceil((len(scores) + 1) * level)
        minimum[name] = 0.0 if rank > len(scores) else float(1 - scores[rank - 1])
        counts[name] = int(len(scores))
    return {"level": level, "class_names": list(class_names), "min_probability": minimum, "n": counts}


def prediction_sets(probabilities, conformal: dict) -> np.ndarray:
    """Boolean (n_cases, 2): class c is in a case's set when p(c) >= conformal's min_probability for c."""
    probabilities = np.asarray(probabilities, dtype=float)
    class_probabilities = np.stack([1 - probabilities, probabilities], axis=1)
    minimum = np.array([conformal["min_probability"][name] for name in conformal["class_names"]])
    # A small tolerance: the thresholds were computed from the same floats, and float32 model outputs round.
    return class_probabilities >= minimum - 1e-9


def set_label(members, class_names) -> str:
    """'benign', 'malignant' or 'uncertain: refer' (both classes, or neither)."""
    chosen = [name for name, member in zip(class_names, members) if member]
    return chosen[0] if len(chosen) == 1 else REFER


def clopper_pearson(k: int, n: int, confidence_level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval of k successes in n (NaN for n = 0)."""
    from scipy.stats import beta

    if n == 0:
        return float("nan"), float("nan")
    alpha = 1 - confidence_level
    low = beta.ppf(alpha / 2, k, n - k + 1) if k > 0 else 0.0
    high = beta.ppf(1 - alpha / 2, k + 1, n - k) if k < n else 1.0
    return float(low), float(high)


def set_of(probability: float, conformal: dict) -> str:
    """One case's set in words, from its positive-class probability and a model config's `conformal`."""
    return set_label(prediction_sets([probability], conformal)[0], conformal["class_names"])


def coverage_report(labels, probabilities, conformal: dict, confidence_level: float = 0.95) -> dict:
    """Per-class coverage with exact (Clopper-Pearson) intervals, the referral rate, and the set sizes."""
    labels = np.asarray(labels, dtype=int)
    sets = prediction_sets(probabilities, conformal)
    sizes = sets.sum(axis=1)
    report = {"level": conformal["level"], "n": int(len(labels))}
    for c, name in enumerate(conformal["class_names"]):
        members = labels == c
        covered, n = int(sets[members, c].sum()), int(members.sum())
        low, high = clopper_pearson(covered, n, confidence_level)
        report[f"coverage_{name}"] = covered / n if n else float("nan")
        report[f"coverage_{name}_ci_low"], report[f"coverage_{name}_ci_high"] = float(low), float(high)
        report[f"n_{name}"] = n
    referred = int((sizes != 1).sum())
    low, high = clopper_pearson(referred, len(labels), confidence_level)
    report.update(referral_rate=referred / len(labels) if len(labels) else float("nan"), referral_rate_ci_low=float(low),
                  referral_rate_ci_high=float(high), n_both=int((sizes == 2).sum()), n_empty=int((sizes == 0).sum()))
    return report
