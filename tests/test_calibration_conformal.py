"""Calibration folded into the classifier head, and Mondrian conformal sets, against independent references."""

import json

import numpy as np
import pytest
import statsmodels.api as sm
from fixtures import TINY_VIT

from lymphus_ml import calibration, conformal


def simulated_logits(n=300, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    logits = rng.normal(size=(n, 2)) * 2
    logits[:, 1] += 1.5 * labels  # informative but overconfident-ish
    return logits, labels


@pytest.mark.parametrize("method", ["platt", "temperature"])
def test_calibrator_matches_statsmodels_logistic_regression(method):
    logits, labels = simulated_logits()
    fitted = calibration.fit_calibrator(logits, labels, positive_index=1, method=method)
    z = logits[:, 1] - logits[:, 0]
    design = sm.add_constant(z) if method == "platt" else z.reshape(-1, 1)
    reference = sm.Logit(labels, design).fit(disp=0)
    np.testing.assert_allclose(fitted.probabilities(logits), reference.predict(design), atol=1e-6)
    assert (fitted.intercept == 0.0) == (method == "temperature")


@pytest.mark.parametrize("method", ["platt", "temperature", "none"])
def test_folded_in_head_gives_the_calibrators_probabilities(method):
    import torch
    from transformers import AutoConfig, AutoModelForImageClassification

    config = AutoConfig.for_model(**json.loads(TINY_VIT), num_labels=2, num_channels=1)
    torch.manual_seed(0)
    model = AutoModelForImageClassification.from_config(config).eval()
    pixels = torch.randn(64, 1, 32, 32)
    with torch.no_grad():
        before = model(pixel_values=pixels).logits.double().numpy()
    labels = (before[:, 1] - before[:, 0] + np.random.default_rng(0).normal(size=64) > 0).astype(int)
    fitted = calibration.fit_calibrator(before, labels, positive_index=1, method=method)
    calibration.fold_into_head(model, fitted)
    with torch.no_grad():
        after = model(pixel_values=pixels).logits.softmax(-1)[:, 1].double().numpy()
    z = before[:, 1] - before[:, 0]
    if method == "none":
        reference = 1 / (1 + np.exp(-z))
    else:
        design = sm.add_constant(z) if method == "platt" else z.reshape(-1, 1)
        reference = sm.Logit(labels, design).fit(disp=0).predict(design)
    np.testing.assert_allclose(after, reference, atol=1e-5)
    assert model.config.calibration["method"] == method


def test_brier_and_ece_against_scikit_learn():
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import brier_score_loss

    rng = np.random.default_rng(1)
    probabilities = rng.uniform(size=500)
    labels = (rng.uniform(size=500) < probabilities ** 1.5).astype(int)
    scores = calibration.calibration_scores(labels, probabilities, n_bootstrap=200)
    assert scores["brier_score"] == pytest.approx(brier_score_loss(labels, probabilities))
    fraction, mean_predicted = calibration_curve(labels, probabilities, n_bins=10, strategy="uniform")
    counts = np.histogram(probabilities, bins=np.linspace(0, 1, 11))[0]
    reference = np.sum(counts[counts > 0] / len(labels) * np.abs(fraction - mean_predicted))
    assert scores["ece"] == pytest.approx(reference)
    assert scores["ece_ci_low"] < scores["ece"] < scores["ece_ci_high"]
    assert scores["brier_score_ci_low"] < scores["brier_score"] < scores["brier_score_ci_high"]


def test_mondrian_coverage_within_the_finite_sample_guarantee():
    """Averaged over calibration draws, each class's coverage is in [level, level + 1/(n_c + 1)]."""
    rng = np.random.default_rng(2)
    level, n_cal, n_test, repeats = 0.9, {0: 29, 1: 19}, 400, 1500
    covered = {0: [], 1: []}

    def draw(label, n):
        return 1 / (1 + np.exp(-(rng.normal(size=n) + (1.0 if label else -1.0))))  # overlapping classes

    for _ in range(repeats):
        labels = np.repeat([0, 1], [n_cal[0], n_cal[1]])
        fitted = conformal.fit_mondrian(labels, np.concatenate([draw(0, n_cal[0]), draw(1, n_cal[1])]), ["benign", "malignant"], level)
        for c in (0, 1):
            covered[c].append(conformal.prediction_sets(draw(c, n_test), fitted)[:, c].mean())
    for c in (0, 1):
        mean, error = np.mean(covered[c]), 4 * np.std(covered[c]) / np.sqrt(repeats)
        assert level - error <= mean <= level + 1 / (n_cal[c] + 1) + error, (c, mean)


def test_coverage_report_exact_intervals_and_referrals():
    fitted = {"level": 0.9, "class_names": ["benign", "malignant"], "min_probability": {"benign": 0.3, "malignant": 0.4}}
    probabilities = np.array([0.1, 0.5, 0.65, 0.9, 0.2, 0.8, 0.75])  # sets: B, both, both, M, B, M, M
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    report = conformal.coverage_report(labels, probabilities, fitted)
    assert report["coverage_benign"] == 3 / 4 and report["coverage_malignant"] == 2 / 3
    from statsmodels.stats.proportion import proportion_confint

    for name, covered, n in (("coverage_benign", 3, 4), ("coverage_malignant", 2, 3), ("referral_rate", 2, 7)):
        low, high = proportion_confint(covered, n, alpha=0.05, method="beta")
        assert (report[f"{name}_ci_low"], report[f"{name}_ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert conformal.clopper_pearson(0, 5) == (0.0, pytest.approx(proportion_confint(0, 5, method="beta")[1]))
    assert report["referral_rate"] == 2 / 7 and report["n_both"] == 2 and report["n_empty"] == 0
    sets = conformal.prediction_sets(probabilities, fitted)
    assert [conformal.set_label(s, fitted["class_names"]) for s in sets][:4] == ["benign", conformal.REFER, conformal.REFER, "malignant"]


def test_a_class_too_small_for_the_level_is_always_in_the_set():
    fitted = conformal.fit_mondrian([0] * 20 + [1] * 5, np.linspace(0, 1, 25), ["benign", "malignant"], level=0.9)
    assert fitted["min_probability"]["malignant"] == 0.0 and fitted["n"] == {"benign": 20, "malignant": 5}
