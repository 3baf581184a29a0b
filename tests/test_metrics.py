"""Tests of the local evaluate modules in metrics/ against scikit-learn, scipy and brute force."""

import importlib.util
import json
import math
import socket
import time
import warnings
from pathlib import Path

import evaluate
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist
from scipy.stats import binomtest, norm
from sklearn.metrics import (
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint


REPO = Path(__file__).resolve().parents[1]
CLASSIFICATION_DIR = REPO / "metrics" / "clinical_classification"
SEGMENTATION_DIR = REPO / "metrics" / "binary_segmentation"
INTERVAL_METRICS = ("roc_auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv", "f1")
PROPORTIONS = ("accuracy", "sensitivity", "specificity", "ppv", "npv")


def _import_by_path(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cc = _import_by_path(CLASSIFICATION_DIR / "clinical_classification.py")
bs = _import_by_path(SEGMENTATION_DIR / "binary_segmentation.py")


@pytest.fixture(scope="module")
def clinical():
    return evaluate.load(str(CLASSIFICATION_DIR))


@pytest.fixture(scope="module")
def segmentation():
    return evaluate.load(str(SEGMENTATION_DIR))


def _random_case(rng, n, prevalence=0.4, separation=1.0, decimals=None):
    """Labels and probabilities with some signal; rounding makes ties."""
    labels = (rng.random(n) < prevalence).astype(int)
    labels[:2] = [0, 1]  # both classes present
    probabilities = 1.0 / (1.0 + np.exp(-(rng.normal(size=n) + separation * (2 * labels - 1))))
    if decimals is not None:
        probabilities = np.round(probabilities, decimals)
    return labels, probabilities


def _same(a, b):
    """Equality of results dicts, NaN equal to NaN."""
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, float) and math.isnan(x):
            assert isinstance(y, float) and math.isnan(y), key
        elif isinstance(x, list):
            np.testing.assert_array_equal(np.array(x), np.array(y), err_msg=key)
        else:
            assert x == y, key


# ------------------------------------------------------------------ loading


def test_modules_load_and_run_without_network(monkeypatch):
    # A fresh interpreter with HF_*_OFFLINE=1 would prove the same, but `import evaluate`
    # pulls in transformers and torch (~10 s of CPU), so forbid sockets in-process instead.
    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    clinical = evaluate.load(str(CLASSIFICATION_DIR))
    segmentation = evaluate.load(str(SEGMENTATION_DIR))
    result = clinical.compute(predictions=[0.1, 0.4, 0.35, 0.8], references=[0, 0, 1, 1], n_bootstrap=10)
    assert (result["roc_auc"], result["sensitivity"], result["specificity"]) == (0.75, 0.5, 1.0)
    mask = np.ones((4, 5), dtype=np.uint8)
    assert segmentation.compute(predictions=[mask], references=[mask], n_bootstrap=10)["dice"] == 1.0


def test_results_are_json_serialisable(clinical, segmentation):
    labels, probabilities = _random_case(np.random.default_rng(0), 40)
    results = clinical.compute(predictions=probabilities, references=labels, n_bootstrap=50)
    json.dumps(results, allow_nan=True)
    assert all(type(v) in (int, float, str, bool) for v in results.values())
    assert {k for k, v in results.items() if type(v) is bool} == {"perfect_separation", "small_sample"}
    assert {k for k, v in results.items() if type(v) is str} == {f"{n}_ci_method" for n in INTERVAL_METRICS}
    mask = np.zeros((6, 7), dtype=np.uint8)
    mask[1:4, 2:5] = 1
    json.dumps(segmentation.compute(predictions=[mask], references=[mask], n_bootstrap=5), allow_nan=True)


# ------------------------------------------------------------------ classification: point estimates


@pytest.mark.parametrize("seed", range(12))
def test_point_estimates_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels, probabilities = _random_case(rng, int(rng.integers(10, 200)), decimals=int(rng.integers(1, 4)))
    threshold = float(rng.choice([0.5, rng.random(), probabilities[3]]))
    result = cc.binary_classification_metrics(labels, probabilities, threshold)
    predicted = (probabilities >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    assert (result["tn"], result["fp"], result["fn"], result["tp"]) == (tn, fp, fn, tp)
    assert (result["n"], result["n_positive"], result["n_negative"]) == (labels.size, labels.sum(), (labels == 0).sum())
    assert result["roc_auc"] == pytest.approx(roc_auc_score(labels, probabilities), abs=1e-12)
    assert cc.roc_auc(labels, probabilities) == result["roc_auc"]
    assert result["accuracy"] == pytest.approx((predicted == labels).mean())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's zero-division warnings when nothing is predicted positive
        expected = {
            "balanced_accuracy": balanced_accuracy_score(labels, predicted),
            "sensitivity": recall_score(labels, predicted, zero_division=np.nan),
            "specificity": recall_score(labels, predicted, pos_label=0, zero_division=np.nan),
            "ppv": precision_score(labels, predicted, zero_division=np.nan),
            "npv": precision_score(labels, predicted, pos_label=0, zero_division=np.nan),
            "f1": f1_score(labels, predicted, zero_division=np.nan),
        }
    for name, value in expected.items():
        np.testing.assert_allclose(result[name], value, rtol=1e-12, err_msg=name)


def test_evaluate_module_equals_plain_function(clinical):
    labels, probabilities = _random_case(np.random.default_rng(5), 150, decimals=2)
    via_evaluate = clinical.compute(predictions=probabilities.tolist(), references=labels.tolist(), threshold=0.4, seed=3)
    direct = cc.clinical_classification_metrics(labels, probabilities, threshold=0.4, seed=3)
    _same(via_evaluate, direct)
    expected_keys = {f"{n}{s}" for n in INTERVAL_METRICS for s in ("", "_ci_low", "_ci_high", "_ci_method")}
    expected_keys |= {"threshold", "tn", "fp", "fn", "tp", "n", "n_positive", "n_negative"}
    expected_keys |= {"roc_auc_delong_ci_low", "roc_auc_delong_ci_high", "perfect_separation", "small_sample"}
    expected_keys |= {"roc_auc_bootstrap_ci_low", "roc_auc_bootstrap_ci_high"}
    expected_keys |= {"n_bootstrap", "confidence_level"}
    assert expected_keys == set(via_evaluate)


def test_one_class_only_gives_nan_without_warnings(clinical):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = clinical.compute(predictions=[0.2, 0.7, 0.9, 0.6], references=[1, 1, 1, 1], n_bootstrap=200)
    for name in ("roc_auc", "roc_auc_ci_low", "roc_auc_ci_high", "specificity", "specificity_ci_low", "balanced_accuracy"):
        assert math.isnan(result[name]), name
    assert result["sensitivity"] == 0.75
    assert result["ppv"] == 1.0 and result["npv"] == 0.0  # the one predicted negative is malignant
    assert (result["n_positive"], result["n_negative"]) == (4, 0)
    assert math.isnan(cc.youden_threshold([0, 0, 0], [0.1, 0.2, 0.3]))
    assert math.isnan(cc.delong_test([0, 0, 0], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])["z"])
    # no positive case and nothing predicted positive: F1 and PPV do not exist
    negatives = cc.binary_classification_metrics([0, 0], [0.1, 0.2], 0.5)
    assert math.isnan(negatives["f1"]) and math.isnan(negatives["ppv"]) and negatives["specificity"] == 1.0


def test_all_ties():
    labels = np.array([0, 1, 0, 1, 1, 0])
    probabilities = np.full(6, 0.5)
    result = cc.clinical_classification_metrics(labels, probabilities, n_bootstrap=100)
    assert result["roc_auc"] == 0.5 == roc_auc_score(labels, probabilities)
    assert result["roc_auc_bootstrap_ci_low"] == result["roc_auc_bootstrap_ci_high"] == 0.5
    assert result["roc_auc_ci_low"] < 0.5 < result["roc_auc_ci_high"]  # Newcombe's never has zero width
    assert result["sensitivity"] == 1.0 and result["specificity"] == 0.0
    assert not result["perfect_separation"]
    # One distinct score: the only cut-off calls every case positive.
    assert cc.youden_threshold(labels, probabilities) == 0.0


def test_perfect_separation():
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    probabilities = np.array([0.05, 0.2, 0.3, 0.6, 0.61, 0.9, 1.0])
    result = cc.clinical_classification_metrics(labels, probabilities, threshold=0.5, n_bootstrap=300)
    assert result["roc_auc"] == 1.0 and result["perfect_separation"] is True
    # No [1, 1] interval from the bootstrap or DeLong; Newcombe's gives a lower bound below 1.
    for key in ("roc_auc_bootstrap_ci_low", "roc_auc_bootstrap_ci_high", "roc_auc_delong_ci_low", "roc_auc_delong_ci_high"):
        assert math.isnan(result[key]), key
    assert 0.0 < result["roc_auc_ci_low"] < 1.0 == result["roc_auc_ci_high"]
    for name in ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1"):
        assert result[name] == 1.0
    # Exact intervals of 4/4 and 3/3 correct: lower bound (alpha/2)^(1/n), upper bound 1.
    assert result["sensitivity_ci_low"] == pytest.approx(0.025 ** (1 / 4), abs=1e-12)
    assert result["specificity_ci_low"] == pytest.approx(0.025 ** (1 / 3), abs=1e-12)
    assert result["sensitivity_ci_high"] == result["specificity_ci_high"] == 1.0
    # The tied best J = 1 spans thresholds in (0.3, 0.6]: midway between 0.3 and 0.6.
    assert cc.youden_threshold(labels, probabilities) == pytest.approx(0.45, abs=1e-15)
    delong = cc.delong_ci(labels, probabilities)
    assert delong["roc_auc"] == 1.0 and delong["standard_error"] == 0.0
    assert math.isnan(delong["roc_auc_ci_low"]) and math.isnan(delong["roc_auc_ci_high"])
    inverted = cc.clinical_classification_metrics(labels, 1 - probabilities, n_bootstrap=50)
    assert inverted["roc_auc"] == 0.0 and inverted["perfect_separation"] is True
    assert math.isnan(inverted["roc_auc_bootstrap_ci_low"]) and math.isnan(inverted["roc_auc_delong_ci_high"])
    assert inverted["roc_auc_ci_low"] == 0.0 and inverted["roc_auc_ci_high"] == pytest.approx(1 - result["roc_auc_ci_low"])
    one_class = cc.clinical_classification_metrics([1, 1, 1], [0.2, 0.4, 0.9], n_bootstrap=10)
    assert one_class["perfect_separation"] is False and math.isnan(one_class["roc_auc"])


def test_all_predicted_negative():
    labels = np.array([0, 1, 1, 0, 1])
    probabilities = np.array([0.1, 0.3, 0.2, 0.4, 0.45])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = cc.clinical_classification_metrics(labels, probabilities, threshold=0.5, n_bootstrap=100)
    assert (result["tp"], result["fp"]) == (0, 0)
    assert math.isnan(result["ppv"]) and math.isnan(result["ppv_ci_low"]) and math.isnan(result["ppv_ci_high"])
    assert result["sensitivity"] == 0.0 and result["f1"] == 0.0 and result["specificity"] == 1.0
    assert result["npv"] == pytest.approx(2 / 5)
    assert result["balanced_accuracy"] == 0.5 == balanced_accuracy_score(labels, np.zeros(5, int))


# ------------------------------------------------------------------ classification: exact intervals


@pytest.mark.parametrize("seed", range(6))
def test_proportion_intervals_are_clopper_pearson(seed):
    rng = np.random.default_rng(300 + seed)
    labels, probabilities = _random_case(rng, int(rng.integers(5, 150)), decimals=2)
    threshold = float(rng.choice([0.5, rng.random()]))
    level = float(rng.choice([0.95, 0.9, 0.99]))
    result = cc.clinical_classification_metrics(labels, probabilities, threshold, n_bootstrap=0, confidence_level=level)
    tn, fp, fn, tp = confusion_matrix(labels, (probabilities >= threshold).astype(int), labels=[0, 1]).ravel()
    counts = {
        "accuracy": (tp + tn, tn + fp + fn + tp),
        "sensitivity": (tp, tp + fn),
        "specificity": (tn, tn + fp),
        "ppv": (tp, tp + fp),
        "npv": (tn, tn + fn),
    }
    for name, (successes, trials) in counts.items():
        assert result[f"{name}_ci_method"] == "clopper-pearson"
        if trials == 0:
            assert math.isnan(result[f"{name}_ci_low"]) and math.isnan(result[f"{name}_ci_high"]), name
            continue
        low, high = proportion_confint(successes, trials, alpha=1 - level, method="beta")
        assert result[f"{name}_ci_low"] == pytest.approx(low, abs=1e-10), name
        assert result[f"{name}_ci_high"] == pytest.approx(high, abs=1e-10), name
        scipy_interval = binomtest(int(successes), int(trials)).proportion_ci(level, method="exact")
        assert result[f"{name}_ci_low"] == pytest.approx(scipy_interval.low, abs=1e-8), name
        assert result[f"{name}_ci_high"] == pytest.approx(scipy_interval.high, abs=1e-8), name
    # Not proportions: these keep the bootstrap, skipped here, and say so.
    for name in ("balanced_accuracy", "f1"):
        assert result[f"{name}_ci_method"] == "stratified-bootstrap" and math.isnan(result[f"{name}_ci_low"])
    assert result["roc_auc_ci_method"] == "newcombe" and math.isnan(result["roc_auc_bootstrap_ci_low"])


def test_exact_interval_is_never_zero_width():
    # 6/6 and 16/16 correct: 95% CI 0.541-1.000 and 0.794-1.000, i.e. (alpha/2)^(1/n) to 1.
    for n, published_low in ((6, 0.541), (16, 0.794)):
        low, high = cc.clopper_pearson_interval(n, n)
        assert low == pytest.approx(0.025 ** (1 / n), abs=1e-12) and round(low, 3) == published_low and high == 1.0
        zero_low, zero_high = cc.clopper_pearson_interval(0, n)
        assert zero_low == 0.0 and zero_high == pytest.approx(1 - 0.025 ** (1 / n), abs=1e-12)
    labels = np.array([1] * 6 + [0] * 16)
    result = cc.clinical_classification_metrics(labels, labels * 0.8 + 0.1, n_bootstrap=50)
    assert round(result["sensitivity_ci_low"], 3) == 0.541 and round(result["specificity_ci_low"], 3) == 0.794
    assert result["sensitivity_ci_low"] < result["sensitivity_ci_high"] == 1.0
    assert all(math.isnan(x) for x in cc.clopper_pearson_interval(0, 0))
    with pytest.raises(ValueError, match=r"successes \(5\) cannot exceed trials \(4\)"):
        cc.clopper_pearson_interval(5, 4)
    with pytest.raises(ValueError, match="trials must be an integer >= 0, got 2.5"):
        cc.clopper_pearson_interval(1, 2.5)


def test_small_sample_flag():
    assert cc.small_sample_flag(29, 200) and cc.small_sample_flag(200, 29) and cc.small_sample_flag(0, 0)
    assert not cc.small_sample_flag(30, 30)
    assert cc.small_sample_flag(30, 30, minimum=31) and not cc.small_sample_flag(5, 5, minimum=5)
    with pytest.raises(ValueError, match="n_negative must be an integer >= 0, got -1"):
        cc.small_sample_flag(40, -1)
    labels = np.array([1] * 30 + [0] * 29)
    assert cc.clinical_classification_metrics(labels, labels * 0.5, n_bootstrap=0)["small_sample"] is True
    labels = np.array([1] * 30 + [0] * 30)
    assert cc.clinical_classification_metrics(labels, labels * 0.5, n_bootstrap=0)["small_sample"] is False


@pytest.mark.parametrize("seed", range(8))
def test_youden_threshold_matches_roc_curve(seed):
    rng = np.random.default_rng(100 + seed)
    labels, probabilities = _random_case(rng, int(rng.integers(8, 120)), separation=0.5, decimals=int(rng.integers(1, 3)))
    fpr, tpr, thresholds = roc_curve(labels, probabilities, drop_intermediate=False)
    j = tpr - fpr
    tied_best = thresholds[np.isfinite(thresholds) & np.isclose(j, j.max(), rtol=0, atol=1e-12)]
    lowest_positive = tied_best.min()  # the tied best cut-off that calls the most cases positive
    below = probabilities[probabilities < lowest_positive]
    chosen = cc.youden_threshold(labels, probabilities)
    if below.size:
        assert chosen == pytest.approx((lowest_positive + below.max()) / 2, abs=1e-15)  # pROC's midpoint
        assert below.max() < chosen < lowest_positive
    else:
        assert chosen == 0.0  # every case positive
    point = cc.binary_classification_metrics(labels, probabilities, chosen)
    assert point["sensitivity"] + point["specificity"] - 1 == pytest.approx(j.max(), abs=1e-12)
    predicted = probabilities >= chosen
    assert (predicted == (probabilities >= lowest_positive)).all()


def test_youden_threshold_edges():
    # The best cut-off calls every case positive (J = 0 there, negative elsewhere): 0.0.
    assert cc.youden_threshold([1, 0, 1], [0.2, 0.5, 0.4]) == 0.0
    assert cc.youden_threshold([1, 0], [0.0, 1.0]) == 0.0
    # Adjacent floating-point scores have nothing between them: the higher one is returned.
    low = 0.5
    high = float(np.nextafter(low, 1.0))
    assert cc.youden_threshold([0, 1], [low, high]) == high
    assert cc.binary_classification_metrics([0, 1], [low, high], high)["balanced_accuracy"] == 1.0


# ------------------------------------------------------------------ classification: bootstrap


def test_bootstrap_interval_contains_estimate_and_narrows_with_more_cases():
    labels, probabilities = _random_case(np.random.default_rng(7), 100)
    small = cc.clinical_classification_metrics(labels, probabilities, n_bootstrap=1000, seed=1)
    # The same case mix, ten times over: same estimates, intervals about sqrt(10) narrower.
    large = cc.clinical_classification_metrics(np.tile(labels, 10), np.tile(probabilities, 10), n_bootstrap=1000, seed=1)
    for result in (small, large):
        for name in INTERVAL_METRICS:
            assert result[f"{name}_ci_low"] <= result[name] <= result[f"{name}_ci_high"], name
    for name in INTERVAL_METRICS:
        assert large[name] == pytest.approx(small[name], abs=1e-12)
        small_width = small[f"{name}_ci_high"] - small[f"{name}_ci_low"]
        large_width = large[f"{name}_ci_high"] - large[f"{name}_ci_low"]
        assert 0.2 < large_width / small_width < 0.5, name  # 1 / sqrt(10) = 0.32


def test_bootstrap_is_reproducible_and_confidence_level_matters():
    labels, probabilities = _random_case(np.random.default_rng(8), 120)
    first = cc.clinical_classification_metrics(labels, probabilities, seed=11)
    assert first == cc.clinical_classification_metrics(labels, probabilities, seed=11)
    other = cc.clinical_classification_metrics(labels, probabilities, seed=12)
    assert first["roc_auc_bootstrap_ci_low"] != other["roc_auc_bootstrap_ci_low"]
    narrow = cc.clinical_classification_metrics(labels, probabilities, seed=11, confidence_level=0.5)
    for key in ("roc_auc_bootstrap_ci", "roc_auc_ci"):
        assert first[f"{key}_low"] < narrow[f"{key}_low"] <= narrow[f"{key}_high"] < first[f"{key}_high"]
    skipped = cc.clinical_classification_metrics(labels, probabilities, n_bootstrap=0)
    assert math.isnan(skipped["roc_auc_bootstrap_ci_low"]) and skipped["roc_auc"] == first["roc_auc"]
    assert skipped["roc_auc_ci_low"] == first["roc_auc_ci_low"]  # Newcombe's needs no bootstrap


def test_bootstrap_is_stratified_and_its_auc_matches_sklearn_per_replicate():
    # One malignant case among 15: an ordinary bootstrap would lose it in ~37% of replicates.
    labels = np.array([1] + [0] * 15)
    probabilities = np.round(np.random.default_rng(9).random(16), 1)
    n_bootstrap, seed = 60, 4
    replicates = cc._bootstrap_replicates(labels, probabilities, 0.5, n_bootstrap, seed)
    assert not np.isnan(replicates["roc_auc"]).any() and not np.isnan(replicates["sensitivity"]).any()
    # Redraw the same resamples (positives first, then negatives) and score them with sklearn.
    rng = np.random.default_rng(seed)
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    positive_draws = rng.integers(0, positives.size, size=(n_bootstrap, positives.size))
    negative_draws = rng.integers(0, negatives.size, size=(n_bootstrap, negatives.size))
    for b in range(n_bootstrap):
        cases = np.concatenate([positives[positive_draws[b]], negatives[negative_draws[b]]])
        assert replicates["roc_auc"][b] == pytest.approx(roc_auc_score(labels[cases], probabilities[cases]), abs=1e-12)
        predicted = probabilities[cases] >= 0.5
        assert replicates["specificity"][b] == pytest.approx(recall_score(labels[cases], predicted, pos_label=0))


def test_bootstrap_is_fast():
    labels, probabilities = _random_case(np.random.default_rng(10), 300)
    start = time.perf_counter()
    cc.clinical_classification_metrics(labels, probabilities, n_bootstrap=2000)
    assert time.perf_counter() - start < 1.0


# ------------------------------------------------------------------ classification: input checks


@pytest.mark.parametrize(
    "references, probabilities, message",
    [
        ([0, 1, 1], [0.1, 0.2], "has 2 values but references has 3"),
        ([0, 2, 1], [0.1, 0.2, 0.3], "index 1: 2"),
        ([0, 1, -1], [0.1, 0.2, 0.3], "index 2: -1"),
        ([0, 1, 0.5], [0.1, 0.2, 0.3], "index 2: 0.5"),
        (["benign", "malignant"], [0.1, 0.2], "dtype"),
        ([0, 1, 1], [0.1, 1.5, 0.3], "index 1: 1.5"),
        ([0, 1, 1], [0.1, -0.2, 0.3], "index 1: -0.2"),
        ([0, 1, 1], [0.1, 0.2, float("nan")], "NaN value(s), first at index 2"),
        ([0, 1], [[0.9, 0.1], [0.2, 0.8]], "must be 1-D"),
        ([], [], "empty"),
    ],
)
def test_bad_inputs_raise_clear_errors(references, probabilities, message):
    for function in (cc.binary_classification_metrics, cc.roc_auc, cc.youden_threshold, cc.delong_ci):
        with pytest.raises(ValueError) as error:
            function(references, probabilities)
        assert message in str(error.value)


def test_bad_inputs_through_evaluate(clinical):
    with pytest.raises(ValueError, match=r"predictions must lie in \[0, 1\].*index 1: 1.5"):
        clinical.compute(predictions=[0.1, 1.5], references=[0, 1])
    with pytest.raises(ValueError, match="index 0: 3"):
        clinical.compute(predictions=[0.1, 0.5], references=[3, 1])
    with pytest.raises(ValueError, match="NaN"):
        clinical.compute(predictions=[0.1, float("nan")], references=[0, 1])
    with pytest.raises(ValueError, match="predictions has 3 values but references has 2"):
        clinical.compute(predictions=[0.1, 0.2, 0.3], references=[0, 1])
    with pytest.raises(ValueError, match="prediction must lie in"):
        clinical.add(prediction=1.2, reference=1)
    for option, value in (("threshold", 1.5), ("confidence_level", 95), ("n_bootstrap", -1)):
        with pytest.raises(ValueError, match=option):
            clinical.compute(predictions=[0.1, 0.9], references=[0, 1], **{option: value})
    # Errors are raised before evaluate caches anything, so the module stays usable.
    assert clinical.compute(predictions=[0.1, 0.9], references=[0, 1], n_bootstrap=10)["n"] == 2


# ------------------------------------------------------------------ DeLong


def _psi(x, y):
    """DeLong et al. (1988) kernel: 1 if the positive scores higher, 1/2 on a tie, 0 otherwise."""
    return 1.0 if x > y else 0.5 if x == y else 0.0


def _delong_brute_force(labels, *score_sets):
    """DeLong et al. (1988), Section 2, with explicit O(m n) loops over all positive/negative pairs."""
    x_sets = [scores[labels == 1] for scores in score_sets]
    y_sets = [scores[labels == 0] for scores in score_sets]
    m, n = len(x_sets[0]), len(y_sets[0])
    thetas, v10s, v01s = [], [], []
    for xs, ys in zip(x_sets, y_sets):
        psi = [[_psi(x, y) for y in ys] for x in xs]
        thetas.append(sum(map(sum, psi)) / (m * n))
        v10s.append([sum(row) / n for row in psi])  # V10(X_i)
        v01s.append([sum(psi[i][j] for i in range(m)) / m for j in range(n)])  # V01(Y_j)
    k = len(score_sets)

    def s10(r, s):  # covariance of the V10 components of models r and s
        return sum((v10s[r][i] - thetas[r]) * (v10s[s][i] - thetas[s]) for i in range(m)) / (m - 1)

    def s01(r, s):  # covariance of the V01 components of models r and s
        return sum((v01s[r][j] - thetas[r]) * (v01s[s][j] - thetas[s]) for j in range(n)) / (n - 1)

    covariance = [[s10(r, s) / m + s01(r, s) / n for s in range(k)] for r in range(k)]
    return thetas, v10s, v01s, covariance


@pytest.mark.parametrize("seed", range(6))
def test_delong_matches_brute_force(seed):
    rng = np.random.default_rng(200 + seed)
    labels, a = _random_case(rng, int(rng.integers(20, 90)), decimals=2)
    b = np.clip(np.round(a + rng.normal(scale=0.15, size=a.size), 2), 0, 1)
    thetas, v10s, v01s, covariance = _delong_brute_force(labels, a, b)
    # The structural components average to the AUC, which is the Mann-Whitney AUC of sklearn.
    for theta, v10, v01, scores in zip(thetas, v10s, v01s, (a, b)):
        assert np.mean(v10) == pytest.approx(theta, abs=1e-12) and np.mean(v01) == pytest.approx(theta, abs=1e-12)
        assert theta == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    variance = covariance[0][0] + covariance[1][1] - 2 * covariance[0][1]
    z = (thetas[0] - thetas[1]) / math.sqrt(variance)
    p_value = 2 * norm.sf(abs(z))

    result = cc.delong_test(labels, a, b)
    assert result["auc_a"] == pytest.approx(thetas[0], abs=1e-12)
    assert result["auc_b"] == pytest.approx(thetas[1], abs=1e-12)
    assert result["auc_difference"] == pytest.approx(thetas[0] - thetas[1], abs=1e-12)
    assert abs(result["z"] - z) < 1e-10
    assert abs(result["p_value"] - p_value) < 1e-10
    # Swapping the models flips the sign of z and keeps p.
    swapped = cc.delong_test(labels, b, a)
    assert swapped["z"] == pytest.approx(-result["z"], abs=1e-12) and swapped["p_value"] == pytest.approx(p_value, abs=1e-12)

    interval = cc.delong_ci(labels, a, confidence_level=0.95)
    assert interval["standard_error"] == pytest.approx(math.sqrt(covariance[0][0]), abs=1e-12)
    half_width = norm.ppf(0.975) * interval["standard_error"]
    assert interval["roc_auc_ci_low"] == pytest.approx(max(0.0, thetas[0] - half_width), abs=1e-12)
    assert interval["roc_auc_ci_high"] == pytest.approx(min(1.0, thetas[0] + half_width), abs=1e-12)
    assert cc.roc_auc_delong_ci is cc.delong_ci


@pytest.mark.parametrize("seed", range(4))
def test_delong_interval_in_results_matches_formulas(seed):
    rng = np.random.default_rng(250 + seed)
    labels, probabilities = _random_case(rng, int(rng.integers(20, 80)), decimals=2)
    confidence_level = float(rng.choice([0.95, 0.9]))
    result = cc.clinical_classification_metrics(labels, probabilities, n_bootstrap=0, confidence_level=confidence_level)
    thetas, _, _, covariance = _delong_brute_force(labels, probabilities)
    half_width = norm.ppf(0.5 + confidence_level / 2) * math.sqrt(covariance[0][0])
    assert result["roc_auc_delong_ci_low"] == pytest.approx(max(0.0, thetas[0] - half_width), abs=1e-12)
    assert result["roc_auc_delong_ci_high"] == pytest.approx(min(1.0, thetas[0] + half_width), abs=1e-12)
    assert result["roc_auc_ci_method"] == "newcombe" and math.isnan(result["roc_auc_bootstrap_ci_low"])
    assert result["perfect_separation"] is False


@pytest.mark.parametrize("seed", range(4))
def test_delong_difference_ci_matches_formulas(seed):
    rng = np.random.default_rng(260 + seed)
    labels, a = _random_case(rng, int(rng.integers(30, 90)), decimals=2)
    b = np.clip(np.round(a + rng.normal(scale=0.25, size=a.size), 2), 0, 1)
    thetas, _, _, covariance = _delong_brute_force(labels, a, b)
    standard_error = math.sqrt(covariance[0][0] + covariance[1][1] - 2 * covariance[0][1])
    difference = thetas[0] - thetas[1]
    result = cc.delong_difference_ci(labels, a, b, confidence_level=0.9)
    assert result["difference"] == pytest.approx(difference, abs=1e-12)
    assert result["standard_error"] == pytest.approx(standard_error, abs=1e-12)
    assert result["ci_low"] == pytest.approx(difference - norm.ppf(0.95) * standard_error, abs=1e-12)
    assert result["ci_high"] == pytest.approx(difference + norm.ppf(0.95) * standard_error, abs=1e-12)
    assert result["p_value"] == pytest.approx(2 * norm.sf(abs(difference / standard_error)), abs=1e-12)
    # The interval and the test agree: 0 lies outside the 90% interval exactly when p < 0.10.
    assert (result["ci_low"] > 0 or result["ci_high"] < 0) == (result["p_value"] < 0.10)
    assert result["p_value"] == pytest.approx(cc.delong_test(labels, a, b)["p_value"], abs=1e-15)


def test_delong_degenerate_cases():
    labels, a = _random_case(np.random.default_rng(3), 30, decimals=2)
    for b in (a**2, a.copy()):  # the same ranking, or the same probabilities: no evidence of a difference
        identical = cc.delong_test(labels, a, b)
        assert identical["auc_difference"] == 0.0 and identical["z"] == 0.0 and identical["p_value"] == 1.0
        difference = cc.delong_difference_ci(labels, a, b)
        assert (difference["difference"], difference["ci_low"], difference["ci_high"]) == (0.0, 0.0, 0.0)
        assert difference["standard_error"] == 0.0 and difference["p_value"] == 1.0
    # Both models separate the classes perfectly: both AUCs are 1, p = 1.
    separated = np.array([0.1, 0.2, 0.8, 0.9])
    both_perfect = cc.delong_test([0, 0, 1, 1], separated, np.array([0.2, 0.1, 0.95, 0.7]))
    assert both_perfect["auc_a"] == both_perfect["auc_b"] == 1.0 and both_perfect["p_value"] == 1.0
    # Zero variance but different AUCs (perfect model against a constant one): not testable.
    degenerate = cc.delong_test([0, 0, 1, 1], separated, np.full(4, 0.5))
    assert degenerate["auc_difference"] == 0.5 and math.isnan(degenerate["z"]) and math.isnan(degenerate["p_value"])
    assert math.isnan(cc.delong_difference_ci([0, 0, 1, 1], separated, np.full(4, 0.5))["ci_low"])
    # Fewer than 2 cases in a class: the variance is not estimable.
    assert math.isnan(cc.delong_test([1, 0, 0], [0.9, 0.1, 0.2], [0.1, 0.9, 0.2])["p_value"])
    single_positive = cc.delong_ci([1, 0, 0], [0.9, 0.1, 0.2])
    assert single_positive["roc_auc"] == 1.0 and math.isnan(single_positive["standard_error"])
    with pytest.raises(ValueError, match="probabilities_b has 2 values"):
        cc.delong_test([0, 1, 1], [0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(ValueError, match="probabilities_a .*index 0: 7"):
        cc.delong_test([0, 1], [7, 0.2], [0.1, 0.2])


# ------------------------------------------------------------------ Brier score, Holm


@pytest.mark.parametrize("seed", range(3))
def test_brier_score_ci_matches_sklearn_per_replicate(seed):
    rng = np.random.default_rng(400 + seed)
    labels, probabilities = _random_case(rng, int(rng.integers(10, 60)), decimals=2)
    n_bootstrap = 200
    result = cc.brier_score_ci(labels, probabilities, n_bootstrap=n_bootstrap, confidence_level=0.9, seed=seed)
    assert result["brier"] == pytest.approx(brier_score_loss(labels, probabilities), abs=1e-12)
    # Redraw the stratified resamples (positives first, then negatives) and score each with sklearn.
    draws = np.random.default_rng(seed)
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    positive_draws = draws.integers(0, positives.size, size=(n_bootstrap, positives.size))
    negative_draws = draws.integers(0, negatives.size, size=(n_bootstrap, negatives.size))
    replicates = []
    for b in range(n_bootstrap):
        cases = np.concatenate([positives[positive_draws[b]], negatives[negative_draws[b]]])
        replicates.append(brier_score_loss(labels[cases], probabilities[cases]))
    assert result["ci_low"] == pytest.approx(np.percentile(replicates, 5), abs=1e-12)
    assert result["ci_high"] == pytest.approx(np.percentile(replicates, 95), abs=1e-12)
    assert result["ci_low"] < result["brier"] < result["ci_high"]


def test_brier_score_ci_options_and_errors():
    skipped = cc.brier_score_ci([0, 1], [0.5, 0.5], n_bootstrap=0)
    assert skipped["brier"] == 0.25 and math.isnan(skipped["ci_low"]) and math.isnan(skipped["ci_high"])
    perfect = cc.brier_score_ci([1, 1, 1], [1.0, 1.0, 1.0], n_bootstrap=20)
    assert perfect == {"brier": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    with pytest.raises(ValueError, match="index 1: 1.5"):
        cc.brier_score_ci([0, 1], [0.2, 1.5])
    with pytest.raises(ValueError, match="confidence_level"):
        cc.brier_score_ci([0, 1], [0.2, 0.5], confidence_level=95)


def test_holm_adjust_matches_statsmodels():
    rng = np.random.default_rng(500)
    for size in (1, 2, 5, 12):
        p_values = np.round(rng.random(size) ** 3, 3)  # rounding makes ties
        _, expected, _, _ = multipletests(p_values, method="holm")
        np.testing.assert_allclose(cc.holm_adjust(p_values.tolist()), expected, rtol=0, atol=1e-15)
    # NaN passes through and does not count among the comparisons.
    with_nan = [0.01, float("nan"), 0.04, 0.03, float("nan")]
    adjusted = cc.holm_adjust(with_nan)
    _, expected, _, _ = multipletests([0.01, 0.04, 0.03], method="holm")
    assert math.isnan(adjusted[1]) and math.isnan(adjusted[4])
    np.testing.assert_allclose([adjusted[0], adjusted[2], adjusted[3]], expected, rtol=0, atol=1e-15)
    assert cc.holm_adjust([]) == [] and math.isnan(cc.holm_adjust([float("nan")])[0])
    with pytest.raises(ValueError, match="index 1 is 1.2"):
        cc.holm_adjust([0.1, 1.2])


# ------------------------------------------------------------------ segmentation


def _square(shape, top, left, size):
    mask = np.zeros(shape, dtype=np.uint8)
    mask[top : top + size, left : left + size] = 1
    return mask


def _blob(rng, shape):
    """A random smooth blob (sometimes touching the image edge)."""
    noise = ndimage.gaussian_filter(rng.random(shape), sigma=min(shape) / 8)
    return (noise > np.quantile(noise, rng.uniform(0.5, 0.9))).astype(np.uint8)


def _brute_force_hd95(prediction, reference):
    def boundary_points(mask):
        padded = np.pad(mask.astype(bool), 1)  # outside the image is background
        core = padded[1:-1, 1:-1]
        has_background_neighbour = ~padded[:-2, 1:-1] | ~padded[2:, 1:-1] | ~padded[1:-1, :-2] | ~padded[1:-1, 2:]
        return np.argwhere(core & has_background_neighbour)

    distances = cdist(boundary_points(prediction), boundary_points(reference))
    return max(np.percentile(distances.min(axis=1), 95), np.percentile(distances.min(axis=0), 95))


def test_perfect_prediction(segmentation):
    masks = [_square((20, 30), 5, 5, 8), _square((12, 9), 0, 0, 9), np.ones((5, 7), dtype=np.int64)]
    result = segmentation.compute(predictions=masks, references=[m.copy() for m in masks], n_bootstrap=100)
    assert result["per_image_dice"] == [1.0] * 3 and result["per_image_iou"] == [1.0] * 3
    assert result["per_image_hd95"] == [0.0] * 3
    assert result["dice"] == result["dice_ci_low"] == result["dice_ci_high"] == 1.0
    assert result["hd95"] == 0.0 and result["iou"] == 1.0


def test_empty_masks(segmentation):
    empty, node = np.zeros((10, 10), dtype=np.uint8), _square((10, 10), 2, 2, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = segmentation.compute(predictions=[empty, empty, node], references=[node, empty, empty], n_bootstrap=50)
    assert result["per_image_dice"] == [0.0, 1.0, 0.0] and result["per_image_iou"] == [0.0, 1.0, 0.0]
    # Missed node, nothing to find, spurious node: worst case, undefined, worst case.
    diagonal = np.hypot(10, 10)
    assert result["per_image_hd95"][0] == result["per_image_hd95"][2] == pytest.approx(diagonal, abs=1e-12)
    assert math.isnan(result["per_image_hd95"][1]) and result["n_hd95_defined"] == 2
    assert result["hd95"] == pytest.approx(diagonal, abs=1e-12)
    assert (result["n_missed"], result["n_spurious"], result["per_image_missed"]) == (1, 1, [True, False, False])
    assert result["dice"] == pytest.approx(1 / 3)
    all_empty = segmentation.compute(predictions=[empty], references=[empty], n_bootstrap=10)
    assert math.isnan(all_empty["hd95"]) and math.isnan(all_empty["hd95_ci_low"]) and all_empty["n_hd95_defined"] == 0


def test_missed_nodes_count_at_the_worst_case(segmentation):
    # Two perfect and two missed nodes used to average HD95 = 0.0 px; now the misses count.
    shapes = [(40, 30), (25, 60), (33, 33), (50, 20)]
    references = [_square(shape, 5, 5, 10) for shape in shapes]
    predictions = [references[0], np.zeros(shapes[1], np.uint8), references[2], np.zeros(shapes[3], np.uint8)]
    result = segmentation.compute(predictions=predictions, references=references, n_bootstrap=200)
    diagonals = [math.sqrt(h * h + w * w) for h, w in shapes]
    np.testing.assert_allclose(result["per_image_hd95"], [0.0, diagonals[1], 0.0, diagonals[3]], rtol=0, atol=1e-12)
    assert result["hd95"] == pytest.approx((diagonals[1] + diagonals[3]) / 4, abs=1e-12)
    assert result["hd95_ci_low"] < result["hd95"] < result["hd95_ci_high"]
    assert result["dice"] == 0.5 and result["iou"] == 0.5 and result["per_image_dice"] == [1.0, 0.0, 1.0, 0.0]
    assert (result["n_missed"], result["n_spurious"], result["n_hd95_defined"]) == (2, 0, 4)
    assert result["per_image_missed"] == [False, True, False, True]
    assert bs.hausdorff_distance_95(predictions[1], references[1]) == pytest.approx(np.hypot(25, 60), abs=1e-12)
    # No two pixels of an image are farther apart than its diagonal: a real miss never beats the worst case.
    far = _square((25, 60), 24, 59, 1)
    assert bs.hausdorff_distance_95(far, _square((25, 60), 0, 0, 1)) < np.hypot(25, 60)


def test_segmentation_is_reported_in_two_parts(segmentation):
    # 5 images with a node: 3 found (one exactly, one shifted), 1 missed (empty), 1 predicted elsewhere
    # (no overlap: not detected either); 1 image without a node, correctly left empty.
    shape = (40, 40)
    references = [_square(shape, 5, 5, 10) for _ in range(5)] + [np.zeros(shape, np.uint8)]
    predictions = [references[0], _square(shape, 5, 8, 10), references[2], np.zeros(shape, np.uint8),
                   _square(shape, 25, 25, 10), np.zeros(shape, np.uint8)]
    result = segmentation.compute(predictions=predictions, references=references, n_bootstrap=200)
    assert (result["n_with_node"], result["n_detected"]) == (5, 3) and result["detection_rate"] == 0.6
    low, high = proportion_confint(3, 5, alpha=0.05, method="beta")
    assert result["detection_rate_ci_low"] == pytest.approx(low, abs=1e-10)
    assert result["detection_rate_ci_high"] == pytest.approx(high, abs=1e-10)
    assert result["per_image_detected"] == [True, True, True, False, False, None]
    detected = [0, 1, 2]
    for name in ("dice", "iou", "hd95"):
        per_image = np.array(result[f"per_image_{name}"])[detected]
        assert result[f"{name}_detected"] == pytest.approx(per_image.mean(), abs=1e-12), name
    assert result["hd95_detected"] == pytest.approx(bs.hausdorff_distance_95(predictions[1], references[1]) / 3)
    # The worst-case mean (misses at the image diagonal) stays, and is the larger figure.
    assert result["hd95"] > result["hd95_detected"] and result["dice"] < result["dice_detected"]
    none_found = segmentation.compute(predictions=[np.zeros(shape, np.uint8)], references=[references[0]], n_bootstrap=10)
    assert none_found["detection_rate"] == 0.0 and math.isnan(none_found["hd95_detected"])


@pytest.mark.parametrize("shift, dice, iou", [((0, 3), 0.7, 70 / 130), ((2, 3), 0.56, 56 / 144), ((0, 10), 0.0, 0.0)])
def test_shifted_square_has_analytic_overlap(segmentation, shift, dice, iou):
    reference = _square((40, 40), 10, 10, 10)
    prediction = _square((40, 40), 10 + shift[0], 10 + shift[1], 10)
    result = segmentation.compute(predictions=[prediction], references=[reference], n_bootstrap=0)
    assert result["dice"] == pytest.approx(dice, abs=1e-12) and result["iou"] == pytest.approx(iou, abs=1e-12)
    assert bs.dice_score(prediction, reference) == result["dice"] and bs.iou_score(prediction, reference) == result["iou"]
    assert result["hd95"] == pytest.approx(_brute_force_hd95(prediction, reference), abs=1e-12)


def test_hd95_matches_brute_force_on_random_blobs():
    rng = np.random.default_rng(0)
    for _ in range(12):
        shape = (int(rng.integers(20, 70)), int(rng.integers(20, 70)))
        prediction, reference = _blob(rng, shape), _blob(rng, shape)
        expected = _brute_force_hd95(prediction, reference)
        assert bs.hausdorff_distance_95(prediction, reference) == pytest.approx(expected, abs=1e-12)
        assert bs.hausdorff_distance_95(reference, prediction) == pytest.approx(expected, abs=1e-12)


def test_variable_sizes_and_all_input_paths_agree(segmentation):
    rng = np.random.default_rng(1)
    shapes = [(30, 41), (17, 25), (52, 33), (25, 25)]
    references = [_blob(rng, s) for s in shapes]
    predictions = [_blob(rng, s).astype(bool) for s in shapes]
    direct = segmentation.compute(predictions=predictions, references=references, seed=5)
    plain = bs.binary_segmentation_metrics(predictions, references, seed=5)
    _same(direct, plain)
    batched = evaluate.load(str(SEGMENTATION_DIR))
    batched.add_batch(predictions=predictions[:2], references=references[:2])
    batched.add(prediction=predictions[2], reference=references[2])
    batched.add_batch(predictions=[p.tolist() for p in predictions[3:]], references=references[3:])
    _same(batched.compute(seed=5), direct)
    for name in ("dice", "iou", "hd95"):
        assert direct[f"{name}_ci_low"] <= direct[name] <= direct[f"{name}_ci_high"]
        assert direct[name] == pytest.approx(np.mean(direct[f"per_image_{name}"]))
    assert direct == segmentation.compute(predictions=predictions, references=references, seed=5)


def test_segmentation_bad_masks_name_the_image(segmentation):
    good = _square((10, 10), 2, 2, 4)
    with pytest.raises(ValueError, match=r"predictions\[1\] must contain only 0 .* \[255\]"):
        segmentation.compute(predictions=[good, good * 255], references=[good, good])
    with pytest.raises(ValueError, match=r"references\[0\] must contain only 0 .* \[2\]"):
        segmentation.compute(predictions=[good], references=[good + 1])
    with pytest.raises(ValueError, match=r"predictions\[0\] has shape \(10, 10\) but references\[0\] has shape \(10, 11\)"):
        segmentation.compute(predictions=[good], references=[np.zeros((10, 11), dtype=np.uint8)])
    with pytest.raises(ValueError, match=r"must be a 2-D HxW mask, got shape \(10, 10, 1\)"):
        segmentation.compute(predictions=[good[..., None]], references=[good])
    with pytest.raises(ValueError, match="got 2 predictions but 1 references"):
        segmentation.compute(predictions=[good, good], references=[good])
    with pytest.raises(ValueError, match=r"predictions\[0\] must contain only 0"):
        segmentation.add_batch(predictions=[good - 1], references=[good])


# ------------------------------------------------------------------ classification: Newcombe's AUC interval


def _newcombe_reference(auc, m, n, level):
    """Newcombe's (2006) bounds as roots of the published equation (theta - A)^2 = z^2 V(theta), multiplied out
    into a quartic: (theta - A)^2 (2 - theta)(1 + theta) mn
    = z^2 theta (1 - theta) [(2 - theta)(1 + theta) + (N* - 1)((1 - theta)(1 + theta) + theta (2 - theta))].
    The bounds are the real roots in [0, 1] nearest A on each side; theta = A itself is a root only at A = 0 or 1,
    where that bound is A."""
    z2 = norm.ppf(0.5 + level / 2) ** 2
    k = (m + n) / 2 - 1
    theta = np.polynomial.Polynomial([0, 1])
    equation = (theta - auc) ** 2 * (2 - theta) * (1 + theta) * m * n - z2 * theta * (1 - theta) * (
        (2 - theta) * (1 + theta) + k * ((1 - theta) * (1 + theta) + theta * (2 - theta)))
    roots = [r.real for r in equation.roots() if abs(r.imag) < 1e-7 and -1e-9 <= r.real <= 1 + 1e-9]
    low = max([r for r in roots if r < auc - 1e-9], default=auc)
    high = min([r for r in roots if r > auc + 1e-9], default=auc)
    return low, high


@pytest.mark.parametrize("auc, m, n, level", [(0.8, 16, 20, 0.95), (0.65, 8, 10, 0.95), (0.93, 80, 80, 0.9),
                                              (1.0, 8, 10, 0.95), (0.0, 5, 13, 0.95), (0.5, 3, 3, 0.99)])
def test_newcombe_interval_solves_the_published_equation(auc, m, n, level):
    low, high = cc.newcombe_interval(auc, m, n, level)
    expected_low, expected_high = _newcombe_reference(auc, m, n, level)
    assert low == pytest.approx(expected_low, abs=1e-9) and high == pytest.approx(expected_high, abs=1e-9)
    assert 0.0 <= low <= auc <= high <= 1.0 and high - low > 0.05


def test_newcombe_variance_is_hanley_mcneil_at_equal_sizes():
    # With m = n = N*, Newcombe's variance is Hanley & McNeil's (1982) formula, written out here.
    for theta, size in ((0.7, 10), (0.9, 40)):
        q1, q2 = theta / (2 - theta), 2 * theta**2 / (1 + theta)
        hanley_mcneil = (theta * (1 - theta) + (size - 1) * (q1 - theta**2) + (size - 1) * (q2 - theta**2)) / size**2
        assert float(cc.newcombe_variance(theta, size, size)) == pytest.approx(hanley_mcneil, rel=1e-12)


def test_newcombe_interval_covers_at_the_validation_split_size():
    # 300 binormal sets of 8 malignant / 10 benign at AUC 0.9 (DeLong covers about 0.84 there).
    rng = np.random.default_rng(0)
    true_auc, shift = 0.9, math.sqrt(2) * norm.ppf(0.9)
    labels = np.r_[np.ones(8, int), np.zeros(10, int)]
    hits = 0
    for _ in range(300):
        scores = norm.cdf(np.r_[rng.normal(shift, 1, 8), rng.normal(0, 1, 10)])
        interval = cc.newcombe_ci(labels, scores)
        hits += interval["roc_auc_ci_low"] <= true_auc <= interval["roc_auc_ci_high"]
    assert hits / 300 >= 0.90


# ------------------------------------------------------------------ classification: power and the threshold's luck


@pytest.mark.parametrize("auc, m, n, correlation", [(0.75, 16, 20, 0.0), (0.8, 80, 80, 0.5), (0.7, 40, 60, 0.3)])
def test_minimum_detectable_auc_difference_has_the_stated_power(auc, m, n, correlation):
    from statsmodels.stats.power import NormalIndPower

    difference = cc.minimum_detectable_auc_difference(auc, m, n, power=0.8, alpha=0.05, correlation=correlation)
    assert 0.0 < difference < 1.0 - auc

    def hanley_mcneil(theta):  # written out from Hanley & McNeil (1982), Table/eq. 2
        q1, q2 = theta / (2 - theta), 2 * theta**2 / (1 + theta)
        return (theta * (1 - theta) + (m - 1) * (q1 - theta**2) + (n - 1) * (q2 - theta**2)) / (m * n)

    va, vb = hanley_mcneil(auc), hanley_mcneil(auc + difference)
    standard_error = math.sqrt(va + vb - 2 * correlation * math.sqrt(va * vb))
    # A one-sample two-sided z test of effect size difference / SE with one observation: statsmodels' power.
    power = NormalIndPower().power(effect_size=difference / standard_error, nobs1=1, alpha=0.05, ratio=0)
    assert power == pytest.approx(0.8, abs=1e-6)
    assert cc.hanley_mcneil_variance(auc, m, n) == pytest.approx(va, rel=1e-12)
    # A larger set detects a smaller difference; 8 / 10 cases detect no gain up to AUC 1 from 0.75.
    assert cc.minimum_detectable_auc_difference(auc, 2 * m, 2 * n, correlation=correlation) < difference
    assert math.isnan(cc.minimum_detectable_auc_difference(0.75, 8, 10))


def test_youden_threshold_stability_matches_an_explicit_bootstrap_loop():
    rng = np.random.default_rng(21)
    validation_labels = np.r_[np.ones(8, int), np.zeros(10, int)]
    validation_scores = np.round(np.clip(rng.normal(0.45 + 0.2 * validation_labels, 0.2), 0, 1), 2)
    labels = np.r_[np.ones(16, int), np.zeros(20, int)]
    scores = np.round(np.clip(rng.normal(0.45 + 0.2 * labels, 0.2), 0, 1), 2)
    result = cc.youden_threshold_stability(validation_labels, validation_scores, labels, scores, n_bootstrap=200, seed=4)
    # The same stratified draws (positives first, then negatives), Youden's J maximised with sklearn's roc_curve.
    draws = np.random.default_rng(4)
    positives, negatives = validation_scores[validation_labels == 1], validation_scores[validation_labels == 0]
    positive_draws, negative_draws = draws.integers(0, 8, (200, 8)), draws.integers(0, 10, (200, 10))
    sensitivities, specificities = [], []
    for p, q in zip(positive_draws, negative_draws):
        resampled = np.r_[positives[p], negatives[q]]
        fpr, tpr, _ = roc_curve(np.r_[np.ones(8), np.zeros(10)], resampled)
        best = np.flatnonzero(np.isclose(tpr - fpr, (tpr - fpr).max()))[-1]  # ties: the most positives
        called = (tpr[best], fpr[best])
        # The chosen cut-off calls positive every resampled score at or above the lowest one it needs.
        threshold = cc.youden_threshold(np.r_[np.ones(8, int), np.zeros(10, int)], resampled)
        assert (np.mean(positives[p] >= threshold), np.mean(negatives[q] >= threshold)) == pytest.approx(called)
        sensitivities.append(np.mean(scores[labels == 1] >= threshold))
        specificities.append(np.mean(scores[labels == 0] < threshold))
    assert result["sensitivity_threshold_range_low"] == pytest.approx(np.percentile(sensitivities, 2.5))
    assert result["sensitivity_threshold_range_high"] == pytest.approx(np.percentile(sensitivities, 97.5))
    assert result["specificity_threshold_range_low"] == pytest.approx(np.percentile(specificities, 2.5))
    assert result["specificity_threshold_range_high"] == pytest.approx(np.percentile(specificities, 97.5))
    assert result["threshold_range_low"] < result["threshold_range_high"]
    one_class = cc.youden_threshold_stability([1, 1], [0.2, 0.3], labels, scores, n_bootstrap=10)
    assert math.isnan(one_class["sensitivity_threshold_range_low"])
