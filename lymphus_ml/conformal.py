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


def coverage_report(labels, probabilities, conformal: dict, confidence_level: float = 0.95) -> dict:
    """Per-class coverage with exact (Clopper-Pearson) intervals, the referral rate, and the set sizes."""
    from statsmodels.stats.proportion import proportion_confint

    labels = np.asarray(labels, dtype=int)
    sets = prediction_sets(probabilities, conformal)
    sizes = sets.sum(axis=1)
    report = {"level": conformal["level"], "n": int(len(labels))}
    for c, name in enumerate(conformal["class_names"]):
        members = labels == c
        covered, n = int(sets[members, c].sum()), int(members.sum())
        low, high = proportion_confint(covered, n, alpha=1 - confidence_level, method="beta") if n else (float("nan"),) * 2
        report[f"coverage_{name}"] = covered / n if n else float("nan")
        report[f"coverage_{name}_ci_low"], report[f"coverage_{name}_ci_high"] = float(low), float(high)
        report[f"n_{name}"] = n
    referred = int((sizes != 1).sum())
    low, high = proportion_confint(referred, len(labels), alpha=1 - confidence_level, method="beta") if len(labels) else (float("nan"),) * 2
    report.update(referral_rate=referred / len(labels) if len(labels) else float("nan"), referral_rate_ci_low=float(low),
                  referral_rate_ci_high=float(high), n_both=int((sizes == 2).sum()), n_empty=int((sizes == 0).sum()))
    return report
