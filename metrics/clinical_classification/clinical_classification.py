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
from scipy.special import ndtr
from scipy.special import ndtri


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
@article{youden1950index,
  title   = {Index for rating diagnostic tests},
  author  = {Youden, W. J.},
  journal = {Cancer},
  volume  = {3},
  number  = {1},
  pages   = {32--35},
  year    = {1950}
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
value and F1, each with a percentile bootstrap confidence interval, plus the confusion
matrix at the chosen threshold.

A case is predicted positive when its probability is >= `threshold` (the convention of
scikit-learn's `roc_curve`, so a threshold taken from `youden_threshold` reproduces the
chosen ROC point exactly).

Confidence intervals use a *stratified* percentile bootstrap: malignant and benign cases
are resampled separately, keeping their counts fixed. Test sets in this domain are
small and often imbalanced, so an ordinary bootstrap produces replicates with no
malignant (or no benign) case, in which AUC, sensitivity or specificity do not exist;
dropping those replicates biases the interval, and keeping the class counts fixed also
matches the design of a diagnostic study, where the numbers of malignant and benign
nodes are fixed by recruitment (pROC's default, Robin et al. 2011). AUC in each replicate
is the Mann-Whitney statistic with ties counted one half (identical to the midrank
formula), computed for all replicates at once from class-wise counts per distinct
probability.

Undefined values are NaN, never an exception: AUC when only one class is present,
sensitivity without positives, specificity without negatives, PPV without predicted
positives, NPV without predicted negatives, F1 when there is neither a positive case
nor a predicted positive, balanced accuracy when a class is absent (scikit-learn instead
averages the recall of the classes present). In the bootstrap, replicates in which a
metric is undefined (e.g. no predicted positive, for PPV) are left out of that metric's
percentiles; the interval is NaN if the metric is undefined in every replicate.
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
        0 skips the bootstrap and all `*_ci_low`/`*_ci_high` are NaN.
    confidence_level (`float`, defaults to 0.95): coverage of the percentile intervals.
    seed (`int` or `None`, defaults to 0): seed of the bootstrap's random generator; the
        same seed and inputs give the same intervals.

Returns:
    A flat dict of Python floats and ints (undefined values are float NaN):
    `roc_auc`, `accuracy`, `balanced_accuracy`, `sensitivity`, `specificity`, `ppv`,
    `npv`, `f1`, each followed by `<name>_ci_low` and `<name>_ci_high`; then `threshold`,
    `tn`, `fp`, `fn`, `tp`, `n`, `n_positive`, `n_negative`, `n_bootstrap`,
    `confidence_level`.

Examples:
    >>> metric = evaluate.load("metrics/clinical_classification")
    >>> results = metric.compute(predictions=[0.1, 0.4, 0.35, 0.8], references=[0, 0, 1, 1], n_bootstrap=200)
    >>> results["roc_auc"], results["sensitivity"], results["specificity"]
    (0.75, 0.5, 1.0)
"""

#: Threshold-dependent metrics, in the order they appear in the results.
THRESHOLD_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv", "f1")
#: Every metric that gets a bootstrap interval, in output order.
METRIC_NAMES = ("roc_auc",) + THRESHOLD_METRICS

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

    Candidates are the observed probabilities (rule: positive when probability >= threshold),
    so the returned value reproduces the chosen ROC point exactly; J is compared in exact
    integer arithmetic, so ties are real ties, not rounding noise. Among tied maxima the
    *lowest* threshold is returned, i.e. the operating point with the highest sensitivity:
    when J cannot tell two cut-offs apart, missing fewer malignant nodes is the safer
    choice. NaN when only one class is present (J is undefined).
    """
    labels, scores = _validated(references, probabilities)
    n_positive = int(labels.sum())
    n_negative = int(labels.size - n_positive)
    if n_positive == 0 or n_negative == 0:
        return float("nan")
    codes, levels = _level_codes(scores)
    positive_counts = np.bincount(codes[labels == 1], minlength=levels.size).astype(np.int64)
    negative_counts = np.bincount(codes[labels == 0], minlength=levels.size).astype(np.int64)
    # Cases at or above each level = predicted positive at that threshold.
    tp = np.cumsum(positive_counts[::-1])[::-1]
    fp = np.cumsum(negative_counts[::-1])[::-1]
    j_times_n = tp * n_negative - fp * n_positive  # = n_pos * n_neg * J, an exact integer
    best = np.flatnonzero(j_times_n == j_times_n.max())
    return float(levels[best[0]])  # levels ascend, so best[0] is the lowest tied threshold


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
    if n_bootstrap > 0:
        replicates = _bootstrap_replicates(labels, scores, threshold, n_bootstrap, seed)
    results = {}
    for name in METRIC_NAMES:
        results[name] = point[name]
        if n_bootstrap > 0:
            low, high = _percentile_interval(replicates[name], confidence_level)
        else:
            low, high = float("nan"), float("nan")
        results[f"{name}_ci_low"] = low
        results[f"{name}_ci_high"] = high
    for key in ("threshold", "tn", "fp", "fn", "tp", "n", "n_positive", "n_negative"):
        results[key] = point[key]
    results["n_bootstrap"] = n_bootstrap
    results["confidence_level"] = confidence_level
    return results


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


def _delong_covariance(labels, score_rows):
    """AUCs and their DeLong covariance matrix for k classifiers (rows of `score_rows`).

    Fast midrank algorithm of Sun & Xu (2014): the structural components
    V10 (one per positive) and V01 (one per negative) of DeLong et al. (1988) follow from
    ranks within each class and in the pooled sample, in O(n log n) instead of O(n^2).
    The covariance is NaN when a class has fewer than 2 cases.
    """
    positive = labels == 1
    m, n = int(positive.sum()), int((~positive).sum())
    k = score_rows.shape[0]
    if m == 0 or n == 0:
        return np.full(k, np.nan), np.full((k, k), np.nan)
    x, y = score_rows[:, positive], score_rows[:, ~positive]
    tx, ty = _midranks(x), _midranks(y)
    tz = _midranks(np.concatenate([x, y], axis=1))
    aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    if m < 2 or n < 2:
        return aucs, np.full((k, k), np.nan)
    v10 = (tz[:, :m] - tx) / n  # per positive: share of negatives it outranks (ties 1/2)
    v01 = 1.0 - (tz[:, m:] - ty) / m  # per negative: share of positives that outrank it
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return aucs, s10 / m + s01 / n


def delong_test(references, probabilities_a, probabilities_b):
    """Paired two-sided DeLong test of H0: AUC_a == AUC_b, both models scored on the same cases.

    Returns dict(auc_a, auc_b, auc_difference=auc_a - auc_b, z, p_value). `z` and `p_value`
    are NaN when the variance of the difference is zero or not estimable (identical
    rankings, perfect separation by both models, or fewer than 2 cases in a class); the
    AUCs are NaN when a class is absent.
    """
    labels, a, b = _validated(references, probabilities_a, probabilities_b, names=["probabilities_a", "probabilities_b"])
    aucs, covariance = _delong_covariance(labels, np.vstack([a, b]))
    difference = aucs[0] - aucs[1]
    variance = covariance[0, 0] + covariance[1, 1] - 2.0 * covariance[0, 1]
    if np.isfinite(variance) and variance > 0:
        z = difference / np.sqrt(variance)
        p_value = 2.0 * ndtr(-abs(z))
    else:
        z = p_value = np.nan
    return {
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "auc_difference": float(difference),
        "z": float(z),
        "p_value": float(p_value),
    }


def delong_ci(references, probabilities, confidence_level=0.95):
    """Asymptotic (DeLong) confidence interval of the AUC: AUC -/+ z * SE, clipped to [0, 1] as pROC does.

    Returns dict(roc_auc, roc_auc_ci_low, roc_auc_ci_high, standard_error); the interval
    and standard error are NaN when the variance is not estimable (fewer than 2 cases in a
    class). With AUC = 1 the standard error is 0 and the interval collapses to [1, 1],
    a known weakness of the asymptotic interval; prefer the bootstrap interval there.
    """
    labels, scores = _validated(references, probabilities)
    confidence_level = _check_confidence_level(confidence_level)
    aucs, covariance = _delong_covariance(labels, scores[None, :])
    auc, variance = aucs[0], covariance[0, 0]
    standard_error = np.sqrt(variance) if np.isfinite(variance) and variance >= 0 else np.nan
    half_width = ndtri(0.5 + confidence_level / 2.0) * standard_error
    return {
        "roc_auc": float(auc),
        "roc_auc_ci_low": float(max(0.0, auc - half_width)) if np.isfinite(half_width) else float("nan"),
        "roc_auc_ci_high": float(min(1.0, auc + half_width)) if np.isfinite(half_width) else float("nan"),
        "standard_error": float(standard_error),
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
