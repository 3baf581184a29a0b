"""benchmark_lymphus.py: DeLong pairing, the semantic-feature pipeline, the report, and main() end to end.

The DeLong comparison is checked against an independent O(n^2) implementation of DeLong et al. (1988) written
here from the definition (structural components over every positive/negative pair), on predictions joined by
case id in a different order. End to end on a tiny synthetic export (lymphus.py) with one tiny ViT run per
direction (train_vit.py), then the saved checkpoints evaluated again through --image_models.
"""

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fixtures import TINY_VIT, run_script_in_process  # noqa: E402

import benchmark_lymphus as bench  # noqa: E402
import lymphus  # noqa: E402
from lymphus_ml import evaluation, semantic_features, study  # noqa: E402


TINY_TRAIN_VIT = [
    "--model_config_json", TINY_VIT,
    "--roi", "crop",
    "--num_train_epochs", "1",
    "--per_device_train_batch_size", "4",
    "--per_device_eval_batch_size", "8",
    "--learning_rate", "1e-3",
    "--n_bootstrap", "20",
    "--saliency", "none",
    "--use_cpu",
    "--report_to", "none",
    "--disable_tqdm", "True",
]


def delong_by_definition(labels, scores_a, scores_b):
    """DeLong, DeLong & Clarke-Pearson (1988), straight from the definition: O(m n) structural components.

    psi(x, y) = 1 if x > y, 1/2 if x == y, else 0; V10(x_i) = mean_j psi(x_i, y_j), V01(y_j) = mean_i psi(x_i, y_j);
    var(AUC_a - AUC_b) = (S10_aa + S10_bb - 2 S10_ab) / m + (S01_aa + S01_bb - 2 S01_ab) / n.
    """
    positives = [i for i, label in enumerate(labels) if label == 1]
    negatives = [j for j, label in enumerate(labels) if label == 0]
    m, n = len(positives), len(negatives)

    def psi(x, y):
        return 1.0 if x > y else 0.5 if x == y else 0.0

    def components(scores):
        v10 = [sum(psi(scores[i], scores[j]) for j in negatives) / n for i in positives]
        v01 = [sum(psi(scores[i], scores[j]) for i in positives) / m for j in negatives]
        return v10, v01

    def covariance(u, v):
        mean_u, mean_v = sum(u) / len(u), sum(v) / len(v)
        return sum((a - mean_u) * (b - mean_v) for a, b in zip(u, v)) / (len(u) - 1)

    a10, a01 = components(scores_a)
    b10, b01 = components(scores_b)
    auc_a, auc_b = sum(a10) / m, sum(b10) / m
    variance = (covariance(a10, a10) + covariance(b10, b10) - 2 * covariance(a10, b10)) / m + (
        covariance(a01, a01) + covariance(b01, b01) - 2 * covariance(a01, b01)
    ) / n
    z = (auc_a - auc_b) / math.sqrt(variance)
    return {"auc_a": auc_a, "auc_b": auc_b, "z": z, "p_value": math.erfc(abs(z) / math.sqrt(2))}


@pytest.fixture(scope="module")
def delong_test():
    return evaluation.metric_functions(evaluation.CLINICAL_METRIC_PATH).delong_test


# DeLong on predictions paired by case id


def test_delong_versus_reference_pairs_by_case_id_and_matches_definition(delong_test):
    rng = np.random.default_rng(3)
    n = 40
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    case_ids = [f"case-{i}" for i in range(n)]
    # Rounded scores: ties within and across classes, as with real model outputs.
    semantic = np.round(np.clip(0.5 * labels + rng.normal(0.25, 0.25, n), 0, 1), 1)
    image = np.round(np.clip(0.3 * labels + rng.normal(0.35, 0.25, n), 0, 1), 2)
    order = rng.permutation(n)  # the image model wrote its cases in another order
    reference = study.CasePredictions(case_ids, labels, semantic)
    other = study.CasePredictions([case_ids[i] for i in order], labels[order], image[order])

    result = study.delong_versus_reference(reference, other, delong_test, other_name="vit", test_set="center1_test")
    expected = delong_by_definition(labels.tolist(), image.tolist(), semantic.tolist())

    assert result["n"] == n
    assert result["auc"] == pytest.approx(expected["auc_a"], abs=1e-12)
    assert result["auc_reference"] == pytest.approx(expected["auc_b"], abs=1e-12)
    assert result["auc_difference"] == pytest.approx(expected["auc_a"] - expected["auc_b"], abs=1e-12)
    assert result["z"] == pytest.approx(expected["z"], rel=1e-9)
    assert result["p_value"] == pytest.approx(expected["p_value"], rel=1e-9)


def test_pairing_refuses_other_cases_and_other_labels():
    reference = study.CasePredictions(["a", "b", "c", "d"], [0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8])
    missing = study.CasePredictions(["a", "b", "c", "x"], [0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8])
    with pytest.raises(ValueError, match=r"not scored on the same cases of center2_test.*\['d'\].*\['x'\]"):
        study.paired_predictions(reference, missing, "semantic-features", "vit", "center2_test")
    relabelled = study.CasePredictions(["d", "c", "b", "a"], [0, 0, 1, 0], [0.8, 0.2, 0.9, 0.1])
    with pytest.raises(ValueError, match=r"disagree on the label of 1 case.*\['d'\]"):
        study.paired_predictions(reference, relabelled, "semantic-features", "vit", "center2_test")
    with pytest.raises(ValueError, match=r"more than once: \['a'\]"):
        study.CasePredictions(["a", "a"], [0, 1], [0.1, 0.2])


# Semantic features


def test_semantic_pipeline_handles_nulls_everywhere_and_unseen_codes():
    rng = np.random.default_rng(0)
    n = 40
    labels = np.array([0, 1] * (n // 2))
    table = {}
    for column in lymphus.MEASUREMENT_FEATURES:
        table[column] = list(rng.uniform(5, 30, n))
    for column in lymphus.CODED_FEATURES:
        table[column] = [int(v) for v in rng.integers(0, 3, n)]
    for index, column in enumerate(table):  # a null in every column, in different rows
        table[column][index % n] = None
        table[column][(index + 7) % n] = None
    table["prominent_echogenicity"] = [None] * n  # a feature never recorded in this centre
    frame = semantic_features.semantic_frame(table, lymphus.MEASUREMENT_FEATURES + lymphus.CODED_FEATURES)
    assert frame.isna().any().all()

    model = semantic_features.build_semantic_model(lymphus.MEASUREMENT_FEATURES, lymphus.CODED_FEATURES, c=1.0, seed=0)
    semantic_features.fit_tabular_model(model, frame, labels)
    names = list(model[:-1].get_feature_names_out())
    assert "measurement__missingindicator_maximum_diameter" in names
    assert "coded__hypoechoic_-1.0" in names  # "not recorded" is a category of its own

    unseen = pd.DataFrame(
        [
            {**{c: 12.0 for c in lymphus.MEASUREMENT_FEATURES}, **{c: 7 for c in lymphus.CODED_FEATURES}},  # unseen codes
            {c: None for c in lymphus.MEASUREMENT_FEATURES + lymphus.CODED_FEATURES},  # nothing recorded
            {**{c: 1e4 for c in lymphus.MEASUREMENT_FEATURES}, **{c: 99 for c in lymphus.CODED_FEATURES}},
        ]
    )
    probabilities = semantic_features.positive_probability(model, semantic_features.semantic_frame(unseen, list(unseen.columns)))
    assert probabilities.shape == (3,) and np.all(np.isfinite(probabilities))
    assert np.all((probabilities >= 0) & (probabilities <= 1))

    baseline = semantic_features.build_axis_ratio_model()
    semantic_features.fit_tabular_model(baseline, frame, labels)
    assert np.all(np.isfinite(semantic_features.positive_probability(baseline, semantic_features.semantic_frame(unseen, list(unseen.columns)))))


def test_semantic_frame_names_the_bad_column():
    with pytest.raises(ValueError, match=r"\['necrosis'\] not found"):
        semantic_features.semantic_frame({"margin1": [1]}, ["margin1", "necrosis"])
    with pytest.raises(ValueError, match="'margin1' is not numeric"):
        semantic_features.semantic_frame({"margin1": ["smooth"]}, ["margin1"])


def test_short_to_long_axis_ratio():
    frame = pd.DataFrame(
        {
            "minimum_diameter": [5.0, None, None, 12.0, None],
            "maximum_diameter": [10.0, 8.0, None, 6.0, None],
            "aspect_ratio": [2.0, 4.0, 0.25, None, None],  # long/short here, short/long in the third row
        }
    )
    ratio = semantic_features.short_to_long_axis_ratio(frame)[:, 0]
    np.testing.assert_allclose(ratio[:4], [0.5, 0.25, 0.25, 0.5])
    assert np.isnan(ratio[4])


# Arguments


def test_parse_image_models_and_train_vit_args():
    assert bench.parse_image_models("vit:center1=runs/a,center2=user/vit-c2, vit:center2=C:/runs/b") == {
        "vit": {"center1": "runs/a", "center2": "C:/runs/b"},
        "checkpoint": {"center2": "user/vit-c2"},
    }
    with pytest.raises(ValueError, match="'center3' is not one of"):
        bench.parse_image_models("vit:center3=runs/a")
    with pytest.raises(ValueError, match="twice for center1"):
        bench.parse_image_models("vit:center1=a,vit:center1=b")
    assert bench.parse_train_vit_args('["--roi", "crop"]') == {"vit": ["--roi", "crop"]}
    assert bench.parse_train_vit_args('{"a": "--roi crop --learning_rate 1e-3"}') == {"a": ["--roi", "crop", "--learning_rate", "1e-3"]}
    with pytest.raises(ValueError, match=r"sets \['--dataset_config'\]"):
        bench.parse_train_vit_args('{"a": ["--dataset_config", "all"]}')
    with pytest.raises(ValueError, match="taken by a built-in model"):
        bench.parse_train_vit_args('{"semantic-features": []}')


# Report


def fake_results(models, test_sets):
    rows = []
    for test_set in test_sets:
        for model in models:
            delong = None if model == study.REFERENCE_MODEL else {"auc_difference": 0.01, "p_value": 0.5}
            rows.append(
                {
                    "model": model,
                    "test_set": test_set,
                    "development_centre": test_set.split("_")[0],
                    "threshold": 0.4,
                    "metrics": {"roc_auc": 0.8, "roc_auc_ci_low": 0.7, "roc_auc_ci_high": 0.9, "sensitivity": 0.75, "specificity": None},
                    "calibration": {"brier_score": 0.2},
                    "delong": delong,
                }
            )
    return {
        "dataset": "user/lymphus",
        "synthetic": False,
        "confidence_level": 0.95,
        "n_bootstrap": 1000,
        "models": {m: {"kind": "image (checkpoint)", "description": f"about {m}"} for m in models},
        "test_sets": {
            t: {"display_name": f"Set {t}", "development_centre": "center1", "kind": "internal", "subset": t, "split": "test", "n": 4, "n_positive": 2, "n_negative": 2}
            for t in test_sets
        },
        "rows": rows,
        "figures": {t: {"roc": f"figures/roc_{t}.png", "calibration": f"figures/calibration_{t}.png"} for t in test_sets},
    }


def test_report_lists_every_model_and_test_set_it_was_given():
    models = [study.REFERENCE_MODEL, study.BASELINE_MODEL, "vit-a", "convnext-b"]
    test_sets = ["center1_test", "center1_to_center2", "center2_test", "center2_to_center1"]
    report = study.build_report(fake_results(models, test_sets))
    # Results rows: the second cell is a model name in backticks (the test-set table has a centre there).
    table = [line for line in report.splitlines() if line.startswith("| Set ") and line.split(" | ")[1].startswith("`")]
    assert len(table) == len(models) * len(test_sets)
    for test_set in test_sets:
        for model in models:
            assert sum(line.startswith(f"| Set {test_set} ⚠ | `{model}` |") for line in table) == 1  # 2 + 2 cases: flagged
        assert f"(figures/roc_{test_set}.png)" in report and f"(figures/calibration_{test_set}.png)" in report
    assert "Not for clinical use" in report and "SYNTHETIC" not in report
    assert "0.800 [0.700, 0.900]" in report and "| 0.750 | n/a |" in report and "| 0.200 | +0.010 | 0.500 | n/a |" in report


def test_report_states_the_detectable_difference_and_marks_a_perfectly_separated_comparison():
    from statsmodels.stats.power import NormalIndPower

    results = fake_results([study.REFERENCE_MODEL, "vit-a"], ["center1_test"])
    results["test_sets"]["center1_test"].update(n=160, n_positive=80, n_negative=80)
    results["rows"][1]["delong"] = {"auc": 1.0, "auc_reference": 0.8, "auc_difference": 0.2, "p_value": 0.01,
                                    "auc_difference_ci_low": 0.1, "auc_difference_ci_high": 0.3}
    report = study.build_report(results)
    assert "+0.200 [0.100, 0.300] †" in report
    line = next(line for line in report.splitlines() if line.startswith("- Set center1_test (80 malignant / 80 benign"))
    detectable = float(line.split(": ")[1].split(" at r = 0,")[0])
    # Independently: power of a z test of that difference with Hanley & McNeil's variances, independent AUCs.
    def variance(theta):
        q1, q2 = theta / (2 - theta), 2 * theta**2 / (1 + theta)
        return (theta * (1 - theta) + 79 * (q1 - theta**2) + 79 * (q2 - theta**2)) / 6400
    effect = detectable / np.sqrt(variance(0.8) + variance(0.8 + detectable))
    assert NormalIndPower().power(effect_size=effect, nobs1=1, alpha=0.05, ratio=0) == pytest.approx(0.8, abs=0.01)


# End to end


@pytest.fixture(scope="module")
def export_dir(small_export):
    return small_export


@pytest.fixture(scope="module")
def benchmark_run(export_dir, tmp_path_factory):
    """The study on the small export; its train_vit.py runs in this process (run_script_in_process: their outputs
    are what the tests read; tests/test_trust.py starts benchmark_lymphus.py itself)."""
    output_dir = tmp_path_factory.mktemp("benchmark") / "report"
    arguments = [
        "--dataset_name", str(export_dir),
        "--output_dir", str(output_dir),
        "--train_vit_args", json.dumps({"tiny-vit": TINY_TRAIN_VIT}),
        "--n_bootstrap", "100",
        # Synthetic features separate the classes almost perfectly; weak ones keep DeLong's variance above 0.
        "--measurement_columns", "maximum_diameter",
        "--coded_columns", "margin1,margin2,loss_of_fatty_hilum,internal_component",
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bench, "run_script", run_script_in_process)
        record = bench.main(arguments)
    return output_dir, record


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_main_end_to_end(benchmark_run, export_dir):
    output_dir, record = benchmark_run
    models = [study.REFERENCE_MODEL, study.BASELINE_MODEL, "tiny-vit"]
    test_sets = ["center1_test", "center1_to_center2", "center2_test", "center2_to_center1"]
    results = json.loads((output_dir / "results.json").read_text())
    assert results == record
    assert list(results["models"]) == models and list(results["test_sets"]) == test_sets
    assert results["synthetic"] is True
    assert sorted((row["model"], row["test_set"]) for row in results["rows"]) == sorted((m, t) for m in models for t in test_sets)
    # External sets are the whole other centre, internal ones the development centre's test split.
    assert results["test_sets"]["center1_to_center2"]["n"] == 20 and results["test_sets"]["center1_test"]["n"] == 4

    report = (output_dir / "report.md").read_text()
    assert "SYNTHETIC DATA" in report and "Not for clinical use" in report
    for test_set, info in results["test_sets"].items():
        for model in models:
            flag = " ⚠" if min(info["n_positive"], info["n_negative"]) < 30 else ""
            assert sum(line.startswith(f"| {info['display_name']}{flag} | `{model}` |") for line in report.splitlines()) == 1
        for figure in results["figures"][test_set].values():
            assert f"({figure})" in report and (output_dir / figure).stat().st_size > 1000

    # Thresholds come from validation: the ViT's equals train_vit.py's own Youden threshold.
    for centre in ("center1", "center2"):
        threshold = json.loads((output_dir / "image_models" / f"tiny-vit-{centre}" / "threshold.json").read_text())["youden_threshold"]
        rows = [r for r in results["rows"] if r["model"] == "tiny-vit" and r["development_centre"] == centre]
        assert all(r["threshold"] == pytest.approx(threshold) for r in rows)

    # predictions.csv carries train_vit.py's probabilities for the ViT, and every model on the same cases.
    predictions = read_csv(output_dir / "predictions.csv")
    assert len(predictions) == len(models) * sum(info["n"] for info in results["test_sets"].values())
    own = {(r["split"], r["case_id"]): float(r["probability"]) for r in read_csv(output_dir / "image_models" / "tiny-vit-center1" / "predictions.csv")}
    for row in predictions:
        if row["model"] == "tiny-vit" and row["development_centre"] == "center1":
            split = "test" if row["test_set"] == "center1_test" else "external"
            assert float(row["probability"]) == pytest.approx(own[split, row["case_id"]], abs=1e-7)


def test_main_delong_column_matches_independent_computation(benchmark_run):
    output_dir, results = benchmark_run
    predictions = read_csv(output_dir / "predictions.csv")
    checked = set()
    for row in results["rows"]:
        if row["model"] == study.REFERENCE_MODEL:
            assert row["delong"] is None
            continue
        semantic = {r["case_id"]: r for r in predictions if r["model"] == study.REFERENCE_MODEL and r["test_set"] == row["test_set"]}
        model = [r for r in predictions if r["model"] == row["model"] and r["test_set"] == row["test_set"]]
        model.sort(key=lambda r: r["case_id"], reverse=True)  # any order: joined by case id
        labels = [int(r["label"]) for r in model]
        assert labels == [int(semantic[r["case_id"]]["label"]) for r in model]
        try:
            expected = delong_by_definition(labels, [float(r["probability"]) for r in model], [float(semantic[r["case_id"]]["probability"]) for r in model])
        except ZeroDivisionError:  # zero variance: p = 1 for equal AUCs (identical rankings, both perfect), else n/a
            equal = row["delong"]["auc"] == pytest.approx(row["delong"]["auc_reference"])
            assert row["delong"]["p_value"] == (1.0 if equal else None)
            continue
        assert row["delong"]["auc_difference"] == pytest.approx(expected["auc_a"] - expected["auc_b"], abs=1e-9)
        assert row["delong"]["p_value"] == pytest.approx(expected["p_value"], rel=1e-6, abs=1e-12)
        checked.add((row["model"], row["test_set"]))
    # Every comparison on the external sets (20 cases); a 4-case internal set can leave DeLong's variance at 0.
    assert {(m, t) for m in ("tiny-vit", study.BASELINE_MODEL) for t in ("center1_to_center2", "center2_to_center1")} <= checked


def test_report_adjusts_p_values_and_gives_intervals_for_differences_and_brier(benchmark_run):
    from scipy import stats
    from sklearn.metrics import brier_score_loss
    from statsmodels.stats.multitest import multipletests

    output_dir, results = benchmark_run
    compared = [row for row in results["rows"] if row["delong"] is not None]
    raw = np.array([row["delong"]["p_value"] if row["delong"]["p_value"] is not None else np.nan for row in compared])
    defined = ~np.isnan(raw)
    expected = multipletests(raw[defined], method="holm")[1]
    np.testing.assert_allclose([row["delong"]["p_value_holm"] for row, ok in zip(compared, defined) if ok], expected, rtol=1e-12)
    predictions = read_csv(output_dir / "predictions.csv")
    for row in compared:
        delong = row["delong"]
        if delong["p_value"] is None:
            continue
        # The ΔAUC interval is difference ± z·SE with the SE of the same DeLong test: it excludes 0 exactly when p < 0.05.
        low, high = delong["auc_difference_ci_low"], delong["auc_difference_ci_high"]
        assert low <= delong["auc_difference"] <= high
        assert (low > 0 or high < 0) == (delong["p_value"] < 0.05)
        half_width = stats.norm.ppf(0.975) * abs(delong["auc_difference"] / delong["z"]) if delong["z"] else 0
        assert high - low == pytest.approx(min(2 * half_width, 2), abs=1e-9) or high == 1 or low == -1
    for row in results["rows"]:
        cases = [r for r in predictions if r["model"] == row["model"] and r["test_set"] == row["test_set"]]
        brier = brier_score_loss([int(r["label"]) for r in cases], [float(r["probability"]) for r in cases])
        calibration = row["calibration"]
        assert calibration["brier_score"] == pytest.approx(brier)
        assert calibration["brier_score_ci_low"] <= brier <= calibration["brier_score_ci_high"]
        for name in ("ppv", "npv", "accuracy"):
            assert row["metrics"][f"{name}_ci_method"] == "clopper-pearson"
    report = (output_dir / "report.md").read_text()
    assert "| PPV | NPV | accuracy |" in report and "Holm p |" in report
    small = [info["display_name"] for info in results["test_sets"].values() if min(info["n_positive"], info["n_negative"]) < 30]
    assert small and all(f"| {name} ⚠ |" in report for name in small)


def test_main_with_existing_checkpoints_reproduces_train_vit_probabilities(benchmark_run, export_dir, tmp_path):
    output_dir, _ = benchmark_run
    checkpoint = output_dir / "image_models" / "tiny-vit-center1"
    record = bench.main(
        [
            "--dataset_name", str(export_dir),
            "--development_centres", "center1",
            "--image_models", f"saved-vit:center1={checkpoint}",
            "--output_dir", str(tmp_path / "report"),
            "--n_bootstrap", "0",
            "--use_cpu",
        ]
    )
    assert list(record["test_sets"]) == ["center1_test", "center1_to_center2"]
    trained = {(r["test_set"], r["case_id"]): float(r["probability"]) for r in read_csv(output_dir / "predictions.csv") if r["model"] == "tiny-vit"}
    evaluated = [r for r in read_csv(tmp_path / "report" / "predictions.csv") if r["model"] == "saved-vit"]
    assert len(evaluated) == 24
    for row in evaluated:
        assert float(row["probability"]) == pytest.approx(trained[row["test_set"], row["case_id"]], abs=1e-5)
    # A checkpoint declared for a centre that is not benchmarked is refused.
    with pytest.raises(ValueError, match=r"checkpoints for \['center2'\]"):
        bench.main(["--dataset_name", str(export_dir), "--development_centres", "center1", "--image_models", f"v:center2={checkpoint}", "--output_dir", str(tmp_path / "x")])


def test_help_renders(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--help"])
    assert exit_info.value.code == 0 and "--train_vit_args" in capsys.readouterr().out
