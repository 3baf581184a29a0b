# Copyright the lymphus contributors. Licensed under the Apache License, Version 2.0.
"""Clinical binary classification metrics (benign vs malignant) with confidence intervals.

This file is both a local `evaluate` module (load the folder with
`evaluate.load("/path/to/metrics/clinical_classification")`) and a plain Python module
whose functions can be imported by path (scripts, tests, the DeLong comparison of two
models). Everything lives in this one file on purpose: `evaluate` copies the script into
its module cache, so sibling helper files would need `evaluate`'s relative-import
machinery, which in turn breaks importing the file by path.

Note for editors: `evaluate` finds this script's dependencies with a line-based regex
(`evaluate.loading.get_imports`). Keep one module per top-level `import` line
(`import a, b` is read as a package called "a,") and do not start a line inside a
docstring with `import` or `from ... import`.
"""

import datasets
import evaluate
import numpy as np
from scipy.optimize import brentq
from scipy.special import ndtr, ndtri
from scipy.stats import beta as beta_distribution


_CITATION = """\
@article{delong1988comparing,
  title   = {Comparing the areas under two or more correlated receiver operating characteristic curves: a nonparametric approach},
  author  = {DeLong, Elizabeth R. and DeLong, David M. and Clarke-Pearson, Daniel L.},
  journal = {Biometrics},
  volume  = {44},
  number  = {3},
  pages   = {837--845},
  year    = {1988}
}
@article{sun2014fast,
  title   = {Fast implementation of {DeLong}'s algorithm for comparing the areas under correlated receiver operating characteristic curves},
  author  = {Sun, Xu and Xu, Weichao},
  journal = {IEEE Signal Processing Letters},
  volume  = {21},
  number  = {11},
  pages   = {1389--1393},
  year    = {2014}
}
@article{clopper1934use,
  title   = {The use of confidence or fiducial limits illustrated in the case of the binomial},
  author  = {Clopper, C. J. and Pearson, E. S.},
  journal = {Biometrika},
  volume  = {26},
  number  = {4},
  pages   = {404--413},
  year    = {1934}
}
@article{holm1979simple,
  title   = {A simple sequentially rejective multiple test procedure},
  author  = {Holm, Sture},
  journal = {Scandinavian Journal of Statistics},
  volume  = {6},
  number  = {2},
  pages   = {65--70},
  year    = {1979}
}
@article{youden1950index,
  title   = {Index for rating diagnostic tests},
  author  = {Youden, W. J.},
  journal = {Cancer},
  volume  = {3},
  number  = {1},
  pages   = {32--35},
  year    = {1950}
}
@article{newcombe2006confidence,
  title   = {Confidence intervals for an effect size measure based on the {Mann-Whitney} statistic. Part 2: asymptotic methods and evaluation},
  author  = {Newcombe, Robert G.},
  journal = {Statistics in Medicine},
  volume  = {25},
  number  = {4},
  pages   = {559--573},
  year    = {2006}
}
@article{hanley1982meaning,
  title   = {The meaning and use of the area under a receiver operating characteristic ({ROC}) curve},
  author  = {Hanley, James A. and McNeil, Barbara J.},
  journal = {Radiology},
  volume  = {143},
  number  = {1},
  pages   = {29--36},
  year    = {1982}
}
@book{efron1993introduction,
  title     = {An Introduction to the Bootstrap},
  author    = {Efron, Bradley and Tibshirani, Robert J.},
  publisher = {Chapman and Hall/CRC},
  year      = {1993}
}
"""

_DESCRIPTION = """\
Diagnostic-accuracy metrics for a binary classifier that outputs the probability of the
positive class (malignant lymph node), as reported in clinical studies: ROC AUC,
accuracy, balanced accuracy, sensitivity, specificity, positive and negative predictive
value and F1, each with a confidence interval, plus the confusion matrix at the chosen
threshold.

A case is predicted positive when its probability is >= `threshold` (the convention of
scikit-learn's `roc_curve`).

Which interval each metric gets (`<name>_ci_method` says it in the results):

- "clopper-pearson": accuracy, sensitivity, specificity, PPV and NPV are proportions
  k/n of counted cases, so they get the exact binomial (Clopper-Pearson) interval, the
  one clinicians expect in a diagnostic-accuracy table. It never has zero width: 6/6
  correct gives 0.541-1.000, not 1.000-1.000 as a bootstrap would. It does not depend on
  the bootstrap, so it is reported even with `n_bootstrap=0`; its denominator is the
  number of malignant cases (sensitivity), benign cases (specificity), predicted
  positives (PPV), predicted negatives (NPV) or all cases (accuracy), and the interval is
  NaN when that number is 0.
- "newcombe": the ROC AUC's interval is Newcombe's (2006) score-type interval: the values of
  theta with (theta - AUC)^2 = z^2 V(theta), V being Hanley & McNeil's variance with both class
  sizes replaced by N* = (m + n) / 2 (`newcombe_interval`). At this dataset's sizes (8 malignant
  / 10 benign, 16 / 20) DeLong's interval and the percentile bootstrap cover the true AUC only
  60-92 % of the time; Newcombe's holds about 95 % (benchmarks/bench_auc_coverage.py). It stays
  in [0, 1] and never has zero width.
- "stratified-bootstrap": balanced accuracy and F1, which are not simple
  proportions, get a stratified percentile bootstrap: malignant and benign cases are
  resampled separately, keeping their counts fixed. Test sets in this domain are small
  and often imbalanced, so an ordinary bootstrap produces replicates with no malignant
  (or no benign) case, in which AUC does not exist; dropping those replicates biases the
  interval, and keeping the class counts fixed also matches the design of a diagnostic
  study (pROC's default, Robin et al. 2011). The AUC's bootstrap interval is reported too
  (`roc_auc_bootstrap_ci_low`, `roc_auc_bootstrap_ci_high`), with the AUC in each replicate
  the Mann-Whitney statistic with ties counted one half. Replicates in which a metric is
  undefined are left out of that metric's percentiles; the interval is NaN if it is
  undefined in all. When every replicate gives the same value (e.g. F1 with no true
  positive in any replicate) the interval has zero width: that is no variation to
  estimate, not certainty, and reports must not print it as an interval.
- "delong": the AUC also gets DeLong's asymptotic interval (`roc_auc_delong_ci_low`,
  `roc_auc_delong_ci_high`), AUC -/+ z * SE clipped to [0, 1], as pROC's `ci.auc`
  reports by default. NaN with fewer than 2 cases in a class. Too narrow at small
  sizes for a headline, it is kept for paired comparisons (`delong_test`), whose size
  and coverage hold.

Perfect separation: when both classes are present and the AUC is exactly 1 (or 0),
every bootstrap replicate has the same AUC and DeLong's standard error is 0, so both
of those intervals would read [1, 1], a certainty that a finite sample cannot give. Then
`perfect_separation` is True, the bootstrap and DeLong intervals are NaN, and the
Newcombe interval is [lower bound, 1] (or [0, upper bound] for an AUC of 0): report the
lower bound, "AUC 1.000, 95 % CI lower bound 0.78 (Newcombe)".

`small_sample` is True when either class has fewer than 30 cases (`small_sample_flag`):
asymptotic (DeLong) intervals and bootstrap percentiles are unreliable there.

Undefined values are NaN, never an exception: AUC when only one class is present,
sensitivity without positives, specificity without negatives, PPV without predicted
positives, NPV without predicted negatives, F1 when there is neither a positive case
nor a predicted positive, balanced accuracy when a class is absent (scikit-learn instead
averages the recall of the classes present).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `float`): predicted probability of the positive class
        (malignant), each in [0, 1]. Not logits and not hard labels.
    references (`list` of `int`): ground truth, 0 (benign) or 1 (malignant).
    threshold (`float`, defaults to 0.5): a case is predicted positive when its probability
        is >= threshold. Choose it on validation data (e.g. with `youden_threshold`), not
        on the test set whose metrics you report.
    n_bootstrap (`int`, defaults to 1000): number of stratified bootstrap replicates;
        0 skips the bootstrap, and the intervals of the "stratified-bootstrap" metrics
        (balanced_accuracy, f1, the AUC's bootstrap interval) are NaN; the exact, Newcombe
        and DeLong intervals remain.
    confidence_level (`float`, defaults to 0.95): coverage of every interval.
    seed (`int` or `None`, defaults to 0): seed of the bootstrap's random generator; the
        same seed and inputs give the same intervals.

Returns:
    A flat dict (undefined values are float NaN):
    - for each of `roc_auc`, `accuracy`, `balanced_accuracy`, `sensitivity`,
      `specificity`, `ppv`, `npv`, `f1`: the estimate `<name>` (float), its interval
      `<name>_ci_low`, `<name>_ci_high` (floats) and `<name>_ci_method` (str), one of
      "clopper-pearson" (accuracy, sensitivity, specificity, ppv, npv),
      "newcombe" (roc_auc), "stratified-bootstrap" (balanced_accuracy, f1);
    - `roc_auc_bootstrap_ci_low`, `roc_auc_bootstrap_ci_high` (floats; stratified bootstrap);
    - `roc_auc_delong_ci_low`, `roc_auc_delong_ci_high` (floats; method "delong");
    - `perfect_separation` (bool): both classes present and AUC exactly 0 or 1; then
      the bootstrap and DeLong AUC bounds are NaN and Newcombe's is one-sided ([low, 1]);
    - `threshold` (float), `tn`, `fp`, `fn`, `tp`, `n`, `n_positive`, `n_negative` (ints);
    - `small_sample` (bool): fewer than 30 malignant or fewer than 30 benign cases;
    - `n_bootstrap` (int), `confidence_level` (float).

Examples:
    >>> metric = evaluate.load("metrics/clinical_classification")
    >>> results = metric.compute(predictions=[0.1, 0.4, 0.35, 0.8], references=[0, 0, 1, 1], n_bootstrap=200)
    >>> results["roc_auc"], results["sensitivity"], results["specificity"]
    (0.75, 0.5, 1.0)
    >>> results["sensitivity_ci_method"], round(results["sensitivity_ci_low"], 4)
    ('clopper-pearson', 0.0126)
"""

#: Threshold-dependent metrics, in the order they appear in the results.
THRESHOLD_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv", "f1")
#: Every metric with an interval, in output order.
METRIC_NAMES = ("roc_auc",) + THRESHOLD_METRICS
#: Names of the interval methods, as written in `<name>_ci_method`.
EXACT_METHOD = "clopper-pearson"
BOOTSTRAP_METHOD = "stratified-bootstrap"
DELONG_METHOD = "delong"
NEWCOMBE_METHOD = "newcombe"
#: Proportions k/n, which get the exact Clopper-Pearson interval; the AUC gets Newcombe's; the others the bootstrap.
PROPORTION_METRICS = ("accuracy", "sensitivity", "specificity", "ppv", "npv")
CI_METHODS = {
    name: EXACT_METHOD if name in PROPORTION_METRICS else NEWCOMBE_METHOD if name == "roc_auc" else BOOTSTRAP_METHOD
    for name in METRIC_NAMES
}
#: Fewer cases than this in either class makes a test set "small" (see `small_sample_flag`).
SMALL_SAMPLE_MINIMUM = 30

# Bootstrap replicates are processed in chunks so that the (replicates x distinct values)
# count matrices stay around 16 MB whatever the test-set size.
_MAX_CHUNK_CELLS = 2_000_000


# --------------------------------------------------------------------------- validation


def _as_labels(references, name="references"):
    """Return references as a 1-D int64 array of 0/1, or raise a ValueError naming the culprit."""
    try:
        labels = np.asarray(references)
    except Exception as error:  # ragged nested lists and the like
        raise ValueError(f"{name} must be a 1-D sequence of 0/1 labels: {error}") from None
    if labels.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per case), got shape {labels.shape}")
    if labels.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be 0/1 numbers, got dtype {labels.dtype} (first value {labels[:1].tolist()})")
    bad = np.flatnonzero(~np.isin(labels, (0, 1)))
    if bad.size:
        first = bad[0]
        raise ValueError(
            f"{name} must be 0 (benign) or 1 (malignant); {bad.size} value(s) are not, "
            f"first at index {first}: {labels[first].item()!r}"
        )
    return labels.astype(np.int64)


def _as_probabilities(probabilities, name="probabilities"):
    """Return probabilities as a 1-D float64 array in [0, 1], or raise a ValueError naming the culprit."""
    try:
        scores = np.asarray(probabilities, dtype=np.float64)
    except Exception as error:
        raise ValueError(f"{name} must be a 1-D sequence of probabilities in [0, 1]: {error}") from None
    if scores.ndim != 1:
        raise ValueError(
            f"{name} must be 1-D (the probability of the positive class per case), got shape {scores.shape}; "
            "for a softmax output pass probs[:, 1]"
        )
    nan = np.flatnonzero(np.isnan(scores))
    if nan.size:
        raise ValueError(f"{name} contain {nan.size} NaN value(s), first at index {nan[0]}")
    outside = np.flatnonzero((scores < 0.0) | (scores > 1.0))
    if outside.size:
        first = outside[0]
        raise ValueError(
            f"{name} must lie in [0, 1] (probabilities, not logits); {outside.size} value(s) do not, "
            f"first at index {first}: {scores[first].item()!r}"
        )
    return scores


def _validated(references, *probability_arrays, names=None):
    labels = _as_labels(references)
    names = names or ["probabilities"] * len(probability_arrays)
    arrays = [_as_probabilities(p, name) for p, name in zip(probability_arrays, names)]
    for array, name in zip(arrays, names):
        if array.shape[0] != labels.shape[0]:
            raise ValueError(f"{name} has {array.shape[0]} values but references has {labels.shape[0]}")
    if labels.shape[0] == 0:
        raise ValueError("references and probabilities are empty: need at least one case")
    return (labels, *arrays)


def _check_threshold(threshold):
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}") from None
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    return value


def _check_confidence_level(confidence_level):
    try:
        value = float(confidence_level)
    except (TypeError, ValueError):
        raise ValueError(f"confidence_level must be a number in (0, 1), got {confidence_level!r}") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"confidence_level must be in (0, 1), e.g. 0.95, got {confidence_level!r}")
    return value


def _check_n_bootstrap(n_bootstrap):
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be an integer >= 0, got {n_bootstrap!r}")
    return int(n_bootstrap)


# --------------------------------------------------------------------------- point estimates


def _divide(numerator, denominator):
    """Element-wise ratio that is NaN where the denominator is 0, without numpy warnings."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.full(np.broadcast(numerator, denominator).shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _rates(tn, fp, fn, tp):
    """Threshold metrics from confusion counts; works on scalars and on arrays of replicates."""
    sensitivity = _divide(tp, tp + fn)
    specificity = _divide(tn, tn + fp)
    return {
        "accuracy": _divide(tp + tn, tn + fp + fn + tp),
        # Mean of the two class recalls: NaN when a class is absent, because then it would
        # silently collapse to the recall of the other class.
        "balanced_accuracy": (sensitivity + specificity) / 2.0,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "ppv": _divide(tp, tp + fp),
        "npv": _divide(tn, tn + fn),
        "f1": _divide(2 * tp, 2 * tp + fp + fn),
    }


def _auc_from_levels(positive_counts, negative_counts):
    """Mann-Whitney AUC from counts of positives/negatives at each distinct score (last axis, ascending).

    Counting a tied positive/negative pair as one half is exactly the midrank formula,
    and working on counts lets one call handle a whole batch of bootstrap replicates.
    """
    negatives_below = np.cumsum(negative_counts, axis=-1) - negative_counts
    # Twice the U statistic stays an exact integer.
    twice_u = (positive_counts * (2 * negatives_below + negative_counts)).sum(axis=-1)
    n_positive = positive_counts.sum(axis=-1)
    n_negative = negative_counts.sum(axis=-1)
    return _divide(twice_u, 2.0 * n_positive * n_negative)


def _level_codes(scores):
    """Index of each score among the sorted distinct scores, and the number of distinct scores."""
    levels, codes = np.unique(scores, return_inverse=True)
    return codes.reshape(-1), levels


def roc_auc(references, probabilities):
    """Area under the ROC curve (Mann-Whitney, ties count one half); NaN if only one class is present."""
    labels, scores = _validated(references, probabilities)
    codes, levels = _level_codes(scores)
    positive_counts = np.bincount(codes[labels == 1], minlength=levels.size)
    negative_counts = np.bincount(codes[labels == 0], minlength=levels.size)
    return float(_auc_from_levels(positive_counts, negative_counts))


def binary_classification_metrics(references, probabilities, threshold=0.5):
    """Point estimates at `threshold` (predicted positive when probability >= threshold).

    Returns a dict with `roc_auc`, `accuracy`, `balanced_accuracy`, `sensitivity`,
    `specificity`, `ppv`, `npv`, `f1` (floats, NaN when undefined) and `threshold`, `tn`,
    `fp`, `fn`, `tp`, `n`, `n_positive`, `n_negative`.
    """
    labels, scores = _validated(references, probabilities)
    threshold = _check_threshold(threshold)
    predicted = scores >= threshold
    positive = labels == 1
    tp = int(np.count_nonzero(predicted & positive))
    fp = int(np.count_nonzero(predicted & ~positive))
    fn = int(np.count_nonzero(~predicted & positive))
    tn = int(np.count_nonzero(~predicted & ~positive))
    results = {"roc_auc": roc_auc(labels, scores)}
    results.update({name: float(value) for name, value in _rates(tn, fp, fn, tp).items()})
    results.update(
        threshold=threshold,
        tn=tn,
        fp=fp,
        fn=fn,
        tp=tp,
        n=int(labels.size),
        n_positive=tp + fn,
        n_negative=tn + fp,
    )
    return results


def youden_threshold(references, probabilities):
    """Threshold maximising Youden's J = sensitivity + specificity - 1 over the empirical ROC curve.

    The cut-offs of the empirical ROC curve lie between adjacent distinct probabilities.
    The best one is found in exact integer arithmetic (ties are real ties, not rounding
    noise); among tied maxima the one calling the *most* cases positive wins, i.e. the
    operating point with the highest sensitivity: when J cannot tell two cut-offs apart,
    missing fewer malignant nodes is the safer choice.

    The threshold returned sits midway between the lowest probability still called
    positive at that cut-off and the next lower distinct probability (pROC's convention):
    every threshold in that gap gives the same ROC point, and the middle, unlike the
    observed probability at its edge, leaves new cases a margin on both sides.
    (If those two probabilities are adjacent floating-point numbers, nothing lies
    between them and the higher one is returned, which gives the same decisions.)

    When the best cut-off calls every case positive, the threshold is 0.0: with the rule
    "positive when probability >= threshold" it calls every probability positive (pROC
    writes -Inf there, which JSON cannot hold and which is not a valid threshold here).
    NaN when only one class is present (J is undefined).
    """
    labels, scores = _validated(references, probabilities)
    n_positive = int(labels.sum())
    n_negative = int(labels.size - n_positive)
    if n_positive == 0 or n_negative == 0:
        return float("nan")
    codes, levels = _level_codes(scores)
    positive_counts = np.bincount(codes[labels == 1], minlength=levels.size).astype(np.int64)
    negative_counts = np.bincount(codes[labels == 0], minlength=levels.size).astype(np.int64)
    # Cases at or above each level = predicted positive when that level is the lowest positive score.
    tp = np.cumsum(positive_counts[::-1])[::-1]
    fp = np.cumsum(negative_counts[::-1])[::-1]
    j_times_n = tp * n_negative - fp * n_positive  # = n_pos * n_neg * J, an exact integer
    best = int(np.flatnonzero(j_times_n == j_times_n.max())[0])  # levels ascend: the most positives
    return _threshold_below(levels, best)


def youden_threshold_stability(
    validation_references, validation_probabilities, references, probabilities, n_bootstrap=1000,
    confidence_level=0.95, seed=0,
):
    """How much the Youden threshold, chosen on a small validation set, moves the operating point on another set.

    The threshold is re-chosen (`youden_threshold`) on each of `n_bootstrap` stratified bootstrap resamples of the
    validation set (malignant and benign cases resampled separately), and each re-chosen threshold is applied to
    the evaluated set (`references`, `probabilities`). Returns the central `confidence_level` percentile range of
    the thresholds and of the sensitivity and specificity they give there: dict(threshold_range_low,
    threshold_range_high, sensitivity_threshold_range_low, ..._high, specificity_threshold_range_low, ..._high,
    threshold_range_n_bootstrap). A range, not a confidence interval of the point estimate: it shows how much of
    the evaluated set's sensitivity and specificity is the luck of the threshold. NaN where undefined (a class
    absent from either set, or `n_bootstrap` 0).
    """
    validation_labels, validation_scores = _validated(validation_references, validation_probabilities)
    labels, scores = _validated(references, probabilities)
    n_bootstrap = _check_n_bootstrap(n_bootstrap)
    confidence_level = _check_confidence_level(confidence_level)
    keys = ("threshold", "sensitivity_threshold", "specificity_threshold")
    results = {f"{key}_range_{end}": float("nan") for key in keys for end in ("low", "high")}
    results["threshold_range_n_bootstrap"] = n_bootstrap
    positive = validation_labels == 1
    if n_bootstrap == 0 or positive.all() or not positive.any():
        return results
    rng = np.random.default_rng(seed)
    positive_scores, negative_scores = validation_scores[positive], validation_scores[~positive]
    positive_draws = _resample(rng, positive_scores.size, n_bootstrap)
    negative_draws = _resample(rng, negative_scores.size, n_bootstrap)
    resampled_labels = np.r_[np.ones(positive_scores.size, dtype=np.int64), np.zeros(negative_scores.size, dtype=np.int64)]
    thresholds = np.array([
        youden_threshold(resampled_labels, np.r_[positive_scores[p], negative_scores[n]])
        for p, n in zip(positive_draws, negative_draws)
    ])
    predicted = scores[None, :] >= thresholds[:, None]
    evaluated_positive = labels == 1
    sensitivity = _divide(predicted[:, evaluated_positive].sum(axis=1), np.full(n_bootstrap, evaluated_positive.sum()))
    specificity = _divide((~predicted[:, ~evaluated_positive]).sum(axis=1), np.full(n_bootstrap, (~evaluated_positive).sum()))
    for key, values in zip(keys, (thresholds, sensitivity, specificity)):
        results[f"{key}_range_low"], results[f"{key}_range_high"] = _percentile_interval(values, confidence_level)
    return results


def _threshold_below(levels, index):
    """Threshold calling levels[index:] positive: midway to the next lower level, 0.0 below the lowest."""
    if index == 0:
        return 0.0
    lower, lowest_positive = float(levels[index - 1]), float(levels[index])
    middle = (lower + lowest_positive) / 2.0
    return middle if middle > lower else lowest_positive


# --------------------------------------------------------------------------- exact intervals


def _check_count(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def clopper_pearson_interval(successes, trials, confidence_level=0.95):
    """Exact (Clopper-Pearson) interval of a binomial proportion successes/trials, as (low, high).

    The bounds are quantiles of Beta distributions (Clopper & Pearson 1934); the lower
    bound is 0 when there are no successes and the upper bound 1 when all trials are
    successes. (NaN, NaN) when there are no trials.
    """
    successes = _check_count(successes, "successes")
    trials = _check_count(trials, "trials")
    if successes > trials:
        raise ValueError(f"successes ({successes}) cannot exceed trials ({trials})")
    confidence_level = _check_confidence_level(confidence_level)
    if trials == 0:
        return float("nan"), float("nan")
    tail = (1.0 - confidence_level) / 2.0
    low = 0.0 if successes == 0 else beta_distribution.ppf(tail, successes, trials - successes + 1)
    high = 1.0 if successes == trials else beta_distribution.ppf(1.0 - tail, successes + 1, trials - successes)
    return float(low), float(high)


def _proportion_counts(tn, fp, fn, tp):
    """(successes, trials) of each proportion metric, from the confusion counts."""
    return {
        "accuracy": (tp + tn, tn + fp + fn + tp),
        "sensitivity": (tp, tp + fn),
        "specificity": (tn, tn + fp),
        "ppv": (tp, tp + fp),
        "npv": (tn, tn + fn),
    }


def small_sample_flag(n_positive, n_negative, minimum=SMALL_SAMPLE_MINIMUM):
    """True when either class has fewer than `minimum` cases (30 by default).

    Below that, AUC intervals (DeLong's asymptotics, bootstrap percentiles) and the
    estimates themselves move a lot with a case or two, so a report should say so.
    """
    n_positive = _check_count(n_positive, "n_positive")
    n_negative = _check_count(n_negative, "n_negative")
    minimum = _check_count(minimum, "minimum")
    return n_positive < minimum or n_negative < minimum


# --------------------------------------------------------------------------- bootstrap


def _percentile_interval(replicates, confidence_level):
    """Percentile interval over the replicates where the metric is defined (NaN if none is)."""
    defined = replicates[~np.isnan(replicates)]
    if defined.size == 0:
        return float("nan"), float("nan")
    tail = 100.0 * (1.0 - confidence_level) / 2.0
    low, high = np.percentile(defined, [tail, 100.0 - tail])
    return float(low), float(high)


def _resample(rng, size, n_bootstrap):
    if size == 0:
        return np.zeros((n_bootstrap, 0), dtype=np.int64)
    return rng.integers(0, size, size=(n_bootstrap, size))


def _bootstrap_replicates(labels, scores, threshold, n_bootstrap, seed):
    """Metric values in each stratified bootstrap replicate: dict name -> array (n_bootstrap,)."""
    rng = np.random.default_rng(seed)
    positive = labels == 1
    codes, levels = _level_codes(scores)
    predicted = scores >= threshold
    positive_codes, negative_codes = codes[positive], codes[~positive]
    positive_predicted, negative_predicted = predicted[positive], predicted[~positive]
    n_positive, n_negative = positive_codes.size, negative_codes.size

    positive_draws = _resample(rng, n_positive, n_bootstrap)
    negative_draws = _resample(rng, n_negative, n_bootstrap)

    tp = positive_predicted[positive_draws].sum(axis=1)
    fp = negative_predicted[negative_draws].sum(axis=1)
    replicates = _rates(n_negative - fp, fp, n_positive - tp, tp)

    if n_positive == 0 or n_negative == 0:
        replicates["roc_auc"] = np.full(n_bootstrap, np.nan)
        return replicates
    auc = np.empty(n_bootstrap)
    n_levels = levels.size
    chunk = max(1, _MAX_CHUNK_CELLS // n_levels)
    for start in range(0, n_bootstrap, chunk):
        stop = min(start + chunk, n_bootstrap)
        # Shift each replicate's codes into its own block so one bincount counts them all.
        offsets = (np.arange(stop - start) * n_levels)[:, None]
        shape = (stop - start, n_levels)
        positive_counts = np.bincount(
            (positive_codes[positive_draws[start:stop]] + offsets).ravel(), minlength=shape[0] * n_levels
        ).reshape(shape)
        negative_counts = np.bincount(
            (negative_codes[negative_draws[start:stop]] + offsets).ravel(), minlength=shape[0] * n_levels
        ).reshape(shape)
        auc[start:stop] = _auc_from_levels(positive_counts, negative_counts)
    replicates["roc_auc"] = auc
    return replicates


def clinical_classification_metrics(
    references, probabilities, threshold=0.5, n_bootstrap=1000, confidence_level=0.95, seed=0
):
    """Everything the evaluate module returns, without going through evaluate/Arrow.

    See `_DESCRIPTION`/`_KWARGS_DESCRIPTION` for the definitions and returned keys.
    """
    labels, scores = _validated(references, probabilities)
    threshold = _check_threshold(threshold)
    n_bootstrap = _check_n_bootstrap(n_bootstrap)
    confidence_level = _check_confidence_level(confidence_level)

    point = binary_classification_metrics(labels, scores, threshold)
    proportion_counts = _proportion_counts(point["tn"], point["fp"], point["fn"], point["tp"])
    if n_bootstrap > 0:
        replicates = _bootstrap_replicates(labels, scores, threshold, n_bootstrap, seed)
    # Both classes present and AUC exactly 1 or 0 (NaN, one class only, is neither).
    perfect_separation = point["roc_auc"] in (0.0, 1.0)
    nan_interval = (float("nan"), float("nan"))

    results = {}
    for name in METRIC_NAMES:
        if name in proportion_counts:
            low, high = clopper_pearson_interval(*proportion_counts[name], confidence_level)
        elif name == "roc_auc":
            low, high = newcombe_interval(point["roc_auc"], point["n_positive"], point["n_negative"], confidence_level)
        elif n_bootstrap == 0:
            low, high = nan_interval
        else:
            low, high = _percentile_interval(replicates[name], confidence_level)
        results[name] = point[name]
        results[f"{name}_ci_low"] = low
        results[f"{name}_ci_high"] = high
        results[f"{name}_ci_method"] = CI_METHODS[name]
        if name == "roc_auc":
            bootstrap = nan_interval
            if n_bootstrap > 0 and not perfect_separation:
                bootstrap = _percentile_interval(replicates["roc_auc"], confidence_level)
            results["roc_auc_bootstrap_ci_low"], results["roc_auc_bootstrap_ci_high"] = bootstrap
            delong = delong_ci(labels, scores, confidence_level)
            results["roc_auc_delong_ci_low"] = delong["roc_auc_ci_low"]
            results["roc_auc_delong_ci_high"] = delong["roc_auc_ci_high"]
            results["perfect_separation"] = perfect_separation
    for key in ("threshold", "tn", "fp", "fn", "tp", "n", "n_positive", "n_negative"):
        results[key] = point[key]
    results["small_sample"] = small_sample_flag(point["n_positive"], point["n_negative"])
    results["n_bootstrap"] = n_bootstrap
    results["confidence_level"] = confidence_level
    return results


def brier_score_ci(references, probabilities, n_bootstrap=1000, confidence_level=0.95, seed=0):
    """Brier score (mean squared difference between probability and 0/1 outcome) with a bootstrap interval.

    Lower is better; 0.25 is what a constant 0.5 scores. The interval is the stratified
    percentile bootstrap used for the AUC (malignant and benign cases resampled
    separately); NaN with `n_bootstrap=0`. Returns dict(brier, ci_low, ci_high).
    """
    labels, scores = _validated(references, probabilities)
    n_bootstrap = _check_n_bootstrap(n_bootstrap)
    confidence_level = _check_confidence_level(confidence_level)
    squared_errors = (scores - labels) ** 2
    brier = float(squared_errors.mean())
    if n_bootstrap == 0:
        return {"brier": brier, "ci_low": float("nan"), "ci_high": float("nan")}
    rng = np.random.default_rng(seed)
    positive_errors, negative_errors = squared_errors[labels == 1], squared_errors[labels == 0]
    # Same draws, in the same order, as _bootstrap_replicates: positives first, then negatives.
    positive_draws = _resample(rng, positive_errors.size, n_bootstrap)
    negative_draws = _resample(rng, negative_errors.size, n_bootstrap)
    replicate_totals = positive_errors[positive_draws].sum(axis=1) + negative_errors[negative_draws].sum(axis=1)
    low, high = _percentile_interval(replicate_totals / labels.size, confidence_level)
    return {"brier": brier, "ci_low": low, "ci_high": high}


def holm_adjust(p_values):
    """Holm (1979) step-down adjusted p-values, in input order, as a list of floats.

    Controls the family-wise error rate over several comparisons (e.g. each model against
    the reference by DeLong's test): the i-th smallest of m p-values is multiplied by
    m - i + 1, running maxima keep the order, and results are capped at 1. NaN p-values
    (comparisons that could not be made) pass through as NaN and do not count in m.
    """
    try:
        values = np.asarray(p_values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"p_values must be a 1-D sequence of numbers in [0, 1]: {error}") from None
    if values.ndim != 1:
        raise ValueError(f"p_values must be 1-D, got shape {values.shape}")
    outside = np.flatnonzero((values < 0.0) | (values > 1.0))
    if outside.size:
        raise ValueError(f"p_values must lie in [0, 1]; index {outside[0]} is {values[outside[0]].item()!r}")
    defined = np.flatnonzero(~np.isnan(values))
    order = defined[np.argsort(values[defined], kind="mergesort")]
    multipliers = defined.size - np.arange(defined.size)
    adjusted = values.copy()
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(multipliers * values[order]))
    return adjusted.tolist()


# --------------------------------------------------------------------------- Newcombe


def newcombe_variance(theta, n_positive, n_negative):
    """Newcombe's (2006) variance of the Mann-Whitney AUC at the true value `theta`.

    Hanley & McNeil's (1982) variance, [theta(1-theta) + (m-1)(Q1-theta^2) + (n-1)(Q2-theta^2)] / (mn) with
    Q1 = theta/(2-theta) and Q2 = 2theta^2/(1+theta), with both m-1 and n-1 replaced by N* - 1, N* = (m+n)/2:
    theta(1-theta)/(mn) * [1 + (N*-1)(1-theta)/(2-theta) + (N*-1)theta/(1+theta)].
    """
    theta = np.asarray(theta, dtype=np.float64)
    n_star_minus_1 = (n_positive + n_negative) / 2.0 - 1.0
    bracket = 1.0 + n_star_minus_1 * ((1.0 - theta) / (2.0 - theta) + theta / (1.0 + theta))
    return theta * (1.0 - theta) / (n_positive * n_negative) * bracket


def newcombe_interval(auc, n_positive, n_negative, confidence_level=0.95):
    """Newcombe's (2006) score-type interval of an AUC from m positives and n negatives, as (low, high).

    The bounds are the two values of theta with (theta - AUC)^2 = z^2 * V(theta), V being `newcombe_variance`
    evaluated at theta, not at the estimate (as Wilson's interval does for a proportion): the interval stays
    inside [0, 1] and keeps a non-zero width when the AUC is 0 or 1 (perfect separation gives [low, 1]).
    Its simulated coverage holds at 8/10 cases (benchmarks/bench_auc_coverage.py), where DeLong's does not.
    (NaN, NaN) when a class is absent or the AUC is NaN.
    """
    m, n = int(n_positive), int(n_negative)
    if m == 0 or n == 0 or auc is None or np.isnan(auc):
        return float("nan"), float("nan")
    z_squared = float(ndtri(0.5 + confidence_level / 2.0)) ** 2

    def excess(theta):  # (theta - auc)^2 - z^2 V(theta): negative inside the interval
        return (theta - auc) ** 2 - z_squared * float(newcombe_variance(theta, m, n))

    def bracket(theta):
        return 1.0 + ((m + n) / 2.0 - 1.0) * ((1.0 - theta) / (2.0 - theta) + theta / (1.0 + theta))

    if auc >= 1.0:  # (1 - theta)^2 = z^2 theta (1 - theta) b(theta) / (mn), divided by (1 - theta)
        low = brentq(lambda t: (1.0 - t) - z_squared * t * bracket(t) / (m * n), 0.0, 1.0, xtol=1e-14)
    elif auc <= 0.0:
        low = 0.0
    else:
        low = brentq(excess, 0.0, auc, xtol=1e-14)
    if auc <= 0.0:
        high = brentq(lambda t: t - z_squared * (1.0 - t) * bracket(t) / (m * n), 0.0, 1.0, xtol=1e-14)
    elif auc >= 1.0:
        high = 1.0
    else:
        high = brentq(excess, auc, 1.0, xtol=1e-14)
    return float(low), float(high)


def newcombe_ci(references, probabilities, confidence_level=0.95):
    """The AUC with Newcombe's interval (`newcombe_interval`): dict(roc_auc, roc_auc_ci_low, roc_auc_ci_high)."""
    labels, scores = _validated(references, probabilities)
    confidence_level = _check_confidence_level(confidence_level)
    auc = roc_auc(labels, scores)
    n_positive = int(labels.sum())
    low, high = newcombe_interval(auc, n_positive, labels.size - n_positive, confidence_level)
    return {"roc_auc": auc, "roc_auc_ci_low": low, "roc_auc_ci_high": high}


def hanley_mcneil_variance(theta, n_positive, n_negative):
    """Hanley & McNeil's (1982) variance of an AUC of `theta` from m positives and n negatives (exponential model):
    [theta(1-theta) + (m-1)(Q1-theta^2) + (n-1)(Q2-theta^2)] / (mn), Q1 = theta/(2-theta), Q2 = 2theta^2/(1+theta)."""
    theta = np.asarray(theta, dtype=np.float64)
    q1, q2 = theta / (2.0 - theta), 2.0 * theta**2 / (1.0 + theta)
    m, n = n_positive, n_negative
    return (theta * (1.0 - theta) + (m - 1) * (q1 - theta**2) + (n - 1) * (q2 - theta**2)) / (m * n)


def auc_difference_power(difference, auc, n_positive, n_negative, alpha=0.05, correlation=0.0):
    """Power of the two-sided paired z test (DeLong's, asymptotically) to detect AUC auc + difference against auc.

    The variance of the difference is V(auc) + V(auc + difference) - 2 r sqrt(V(auc) V(auc + difference)), with
    `hanley_mcneil_variance` at the set's sizes and r the correlation of the two AUCs (Obuchowski & McClish 1997's
    design: r = 0 for independent readings, larger when both models rank the same cases alike).
    """
    other = auc + difference
    v_a, v_b = hanley_mcneil_variance(auc, n_positive, n_negative), hanley_mcneil_variance(other, n_positive, n_negative)
    standard_error = float(np.sqrt(v_a + v_b - 2.0 * correlation * np.sqrt(v_a * v_b)))
    z = float(ndtri(1.0 - alpha / 2.0))
    if standard_error == 0:
        return 1.0 if difference != 0 else alpha
    shift = difference / standard_error
    return float(ndtr(shift - z) + ndtr(-shift - z))


def minimum_detectable_auc_difference(auc, n_positive, n_negative, power=0.8, alpha=0.05, correlation=0.0):
    """Smallest AUC gain over `auc` that a set of this size detects with `power` (two-sided `alpha`), by
    `auc_difference_power`; NaN when even an AUC of 1 would not be detected that often (or auc is NaN)."""
    if auc is None or not 0.0 < auc < 1.0 or n_positive < 1 or n_negative < 1:
        return float("nan")
    if auc_difference_power(1.0 - auc, auc, n_positive, n_negative, alpha, correlation) < power:
        return float("nan")
    return float(brentq(
        lambda d: auc_difference_power(d, auc, n_positive, n_negative, alpha, correlation) - power,
        1e-9, 1.0 - auc, xtol=1e-12,
    ))


# --------------------------------------------------------------------------- DeLong


def _midranks(values):
    """Midranks (1-based, ties get the average rank) along the last axis of a 2-D array."""
    order = np.argsort(values, axis=-1, kind="mergesort")
    sorted_values = np.take_along_axis(values, order, axis=-1)
    ranks = np.empty(values.shape, dtype=np.float64)
    n = values.shape[-1]
    for row in range(values.shape[0]):
        v = sorted_values[row]
        # Boundaries of runs of equal values; a run spanning positions i..j gets (i+j)/2 + 1.
        starts = np.flatnonzero(np.r_[True, v[1:] != v[:-1]])
        ends = np.r_[starts[1:], n] - 1
        run_ranks = (starts + ends) / 2.0 + 1.0
        ranks[row, order[row]] = np.repeat(run_ranks, ends - starts + 1)
    return ranks


def _delong_components(labels, score_rows):
    """AUCs and DeLong's structural components for k classifiers (rows of `score_rows`).

    Returns aucs (k,), v10 (k, m), one component per positive, and v01 (k, n), one per
    negative (DeLong et al. 1988), by the fast midrank algorithm of Sun & Xu (2014):
    O(n log n) from ranks within each class and in the pooled sample instead of O(n^2)
    pairs. The AUCs are NaN when a class is absent.
    """
    positive = labels == 1
    m, n = int(positive.sum()), int((~positive).sum())
    k = score_rows.shape[0]
    if m == 0 or n == 0:
        return np.full(k, np.nan), np.empty((k, m)), np.empty((k, n))
    x, y = score_rows[:, positive], score_rows[:, ~positive]
    tx, ty = _midranks(x), _midranks(y)
    tz = _midranks(np.concatenate([x, y], axis=1))
    aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    v10 = (tz[:, :m] - tx) / n  # per positive: share of negatives it outranks (ties 1/2)
    v01 = 1.0 - (tz[:, m:] - ty) / m  # per negative: share of positives that outrank it
    return aucs, v10, v01


def _delong_variance(v10, v01):
    """DeLong variance S10/m + S01/n from 1-D components; NaN when a class has fewer than 2 cases.

    Given the differences of two models' components it is the variance of the AUC
    difference, var_a + var_b - 2 cov_ab, computed so that identical rankings give
    exactly 0 rather than rounding noise.
    """
    m, n = v10.size, v01.size
    if m < 2 or n < 2:
        return float("nan")
    return float(np.var(v10, ddof=1) / m + np.var(v01, ddof=1) / n)


def _delong_difference(references, probabilities_a, probabilities_b):
    """(auc_a, auc_b, difference, standard_error) of a paired DeLong comparison."""
    labels, a, b = _validated(references, probabilities_a, probabilities_b, names=["probabilities_a", "probabilities_b"])
    aucs, v10, v01 = _delong_components(labels, np.vstack([a, b]))
    variance = _delong_variance(v10[0] - v10[1], v01[0] - v01[1])
    return float(aucs[0]), float(aucs[1]), float(aucs[0] - aucs[1]), float(np.sqrt(variance))


def _z_and_p(difference, standard_error):
    """Two-sided z test of a difference, with the degenerate cases spelt out.

    A zero standard error with a zero difference (identical rankings, or both models
    separating the classes perfectly) is no evidence of a difference: z = 0, p = 1. A zero
    standard error with a non-zero difference, or an unestimable one, gives NaN.
    """
    if standard_error > 0:
        z = difference / standard_error
        return float(z), float(2.0 * ndtr(-abs(z)))
    if standard_error == 0 and difference == 0:
        return 0.0, 1.0
    return float("nan"), float("nan")


def delong_test(references, probabilities_a, probabilities_b):
    """Paired two-sided DeLong test of H0: AUC_a == AUC_b, both models scored on the same cases.

    Returns dict(auc_a, auc_b, auc_difference=auc_a - auc_b, z, p_value). Identical
    rankings (or identical probabilities) give z = 0 and p = 1. `z` and `p_value` are NaN
    when the variance is not estimable (fewer than 2 cases in a class) or is zero while the
    AUCs differ; the AUCs are NaN when a class is absent.
    """
    auc_a, auc_b, difference, standard_error = _delong_difference(references, probabilities_a, probabilities_b)
    z, p_value = _z_and_p(difference, standard_error)
    return {"auc_a": auc_a, "auc_b": auc_b, "auc_difference": difference, "z": z, "p_value": p_value}


def delong_difference_ci(references, probabilities_a, probabilities_b, confidence_level=0.95):
    """Difference AUC_a - AUC_b with DeLong's paired confidence interval and test.

    Returns dict(difference, ci_low, ci_high, standard_error, p_value): the interval is
    difference -/+ z * SE, clipped to [-1, 1]; p_value is `delong_test`'s, so the interval
    excludes 0 exactly when p < 1 - confidence_level. Identical rankings give
    difference 0, interval [0, 0] and p = 1; the interval is NaN where `delong_test`'s
    z is.
    """
    confidence_level = _check_confidence_level(confidence_level)
    _, _, difference, standard_error = _delong_difference(references, probabilities_a, probabilities_b)
    z, p_value = _z_and_p(difference, standard_error)
    if np.isnan(z):
        low = high = float("nan")
    else:
        half_width = ndtri(0.5 + confidence_level / 2.0) * standard_error
        low, high = max(-1.0, difference - half_width), min(1.0, difference + half_width)
    return {
        "difference": difference,
        "ci_low": float(low),
        "ci_high": float(high),
        "standard_error": standard_error,
        "p_value": p_value,
    }


def delong_ci(references, probabilities, confidence_level=0.95):
    """Asymptotic (DeLong) confidence interval of the AUC: AUC -/+ z * SE, clipped to [0, 1] as pROC does.

    Returns dict(roc_auc, roc_auc_ci_low, roc_auc_ci_high, standard_error); the interval
    and standard error are NaN when the variance is not estimable (fewer than 2 cases in a
    class). With perfect separation (AUC exactly 1 or 0) the standard error is 0 and the
    formula would give [1, 1], a certainty no finite sample supports: the interval is NaN
    there (the standard error is still reported as 0).
    """
    labels, scores = _validated(references, probabilities)
    confidence_level = _check_confidence_level(confidence_level)
    aucs, v10, v01 = _delong_components(labels, scores[None, :])
    auc = float(aucs[0])
    standard_error = float(np.sqrt(_delong_variance(v10[0], v01[0])))
    if np.isnan(standard_error) or auc in (0.0, 1.0):
        low = high = float("nan")
    else:
        half_width = ndtri(0.5 + confidence_level / 2.0) * standard_error
        low, high = max(0.0, auc - half_width), min(1.0, auc + half_width)
    return {
        "roc_auc": auc,
        "roc_auc_ci_low": float(low),
        "roc_auc_ci_high": float(high),
        "standard_error": standard_error,
    }


#: Name used in CONTRACTS.md.
roc_auc_delong_ci = delong_ci


# --------------------------------------------------------------------------- evaluate module


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ClinicalClassification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("int64")}
            ),
            # Hand numpy arrays to _compute instead of Python lists.
            format="numpy",
            reference_urls=[
                "https://doi.org/10.2307/2531595",
                "https://doi.org/10.1109/LSP.2014.2337313",
                "https://doi.org/10.1186/1471-2105-12-77",
            ],
        )

    # evaluate writes inputs to an Arrow cache before calling _compute, and an exception
    # raised inside _compute leaves that cache locked (the next compute waits ~1 s for the
    # lock). So inputs and options are checked here, before anything is written.

    def compute(self, *, predictions=None, references=None, **kwargs):
        """Compute the metrics; options are checked before any input is cached."""
        if "threshold" in kwargs:
            _check_threshold(kwargs["threshold"])
        if "n_bootstrap" in kwargs:
            _check_n_bootstrap(kwargs["n_bootstrap"])
        if "confidence_level" in kwargs:
            _check_confidence_level(kwargs["confidence_level"])
        return super().compute(predictions=predictions, references=references, **kwargs)

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of cases, checking them first so a bad value is named before it is cached."""
        if predictions is not None and references is not None and (len(predictions) or len(references)):
            references, predictions = _validated(references, predictions, names=["predictions"])
        return super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one case, checking it first so a bad value is named before it is cached."""
        if prediction is not None and reference is not None:
            _validated([reference], [prediction], names=["prediction"])
        return super().add(prediction=prediction, reference=reference, **kwargs)

    def _compute(self, predictions, references, threshold=0.5, n_bootstrap=1000, confidence_level=0.95, seed=0):
        return clinical_classification_metrics(
            references,
            predictions,
            threshold=threshold,
            n_bootstrap=n_bootstrap,
            confidence_level=confidence_level,
            seed=seed,
        )
