"""train_vit.py --cv_folds: fold models, out-of-fold choices, the refit model with the OOF calibration, bad input."""

import csv
import json

import numpy as np
import pytest
from fixtures import vit_args


CV = ("--cv_folds", "5", "--max_steps", "2", "--n_bootstrap", "20")


@pytest.fixture(scope="module")
def cv_run(small_export, tmp_path_factory):
    import train_vit

    output_dir = tmp_path_factory.mktemp("cv") / "run"
    train_vit.main(vit_args(small_export, output_dir, *CV))
    return output_dir


def read_rows(run):
    with open(run / "predictions.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_oof_predictions_cover_every_development_case_once(cv_run, small_export):
    import datasets
    from sklearn.metrics import roc_auc_score

    development = datasets.load_dataset(str(small_export), "center1", split="train+validation")
    rows = [row for row in read_rows(cv_run) if row["split"] == "oof"]
    assert sorted(row["case_id"] for row in rows) == sorted(development["case_id"])
    assert {row["split"] for row in read_rows(cv_run)} == {"oof", "test", "external"}  # validation is development now
    oof = json.loads((cv_run / "metrics_oof.json").read_text())
    labels, probabilities = [int(r["label"]) for r in rows], [float(r["probability"]) for r in rows]
    assert oof["at_0.5"]["roc_auc"] == pytest.approx(roc_auc_score(labels, probabilities))
    fold_of = dict(zip(development["case_id"], development["fold"]))
    per_fold = [roc_auc_score([l for r, l in zip(rows, labels) if fold_of[r["case_id"]] == k],
                              [p for r, p in zip(rows, probabilities) if fold_of[r["case_id"]] == k]) for k in range(5)]
    assert oof["per_fold_roc_auc_mean"] == pytest.approx(np.mean(per_fold))
    assert oof["per_fold_roc_auc_sd"] == pytest.approx(np.std(per_fold, ddof=1))
    assert oof["threshold_source"] == "out-of-fold" and oof["calibration"]["method"] == "platt"
    predictions = [int(r["prediction_at_youden"]) for r in rows]
    assert predictions == [int(p >= oof["youden_threshold"]) for p in probabilities]


def test_held_out_metrics_carry_calibration_conformal_and_the_fold_ensemble(cv_run):
    for split in ("test", "external"):
        metrics = json.loads((cv_run / f"metrics_{split}.json").read_text())
        assert metrics["threshold_source"] == "out-of-fold"
        assert metrics["youden_threshold"] == json.loads((cv_run / "metrics_oof.json").read_text())["youden_threshold"]
        for when in ("before", "after"):
            assert {"brier_score", "ece", "brier_score_ci_low", "ece_ci_high"} <= set(metrics["calibration"][when])
        assert (cv_run / metrics["calibration"]["figure"]).is_file()
        assert metrics["calibration"]["figure"] in (cv_run / ".lymphus-run.json").read_text()  # the run's: pushed
        assert 0 <= metrics["conformal"]["referral_rate"] <= 1 and metrics["conformal"]["level"] == 0.9
        assert "roc_auc" in metrics["cv_fold_ensemble"]["at_youden"]


def test_pipeline_returns_the_calibrated_probabilities_of_predictions_csv(cv_run, small_export):
    import datasets
    from transformers import AutoConfig, pipeline

    from lymphus_ml import images

    config = AutoConfig.from_pretrained(cv_run)
    assert config.calibration["method"] == "platt" and set(config.conformal["min_probability"]) == {"benign", "malignant"}
    classifier = pipeline("image-classification", model=str(cv_run), device="cpu")
    probabilities = {r["case_id"]: float(r["probability"]) for r in read_rows(cv_run) if r["split"] == "test"}
    for example in datasets.load_dataset(str(small_export), "center1", split="test"):
        scores = classifier(images.roi_image(example["image"], example["mask"], "crop"))
        malignant = next(s["score"] for s in scores if s["label"] == "malignant")
        assert malignant == pytest.approx(probabilities[example["case_id"]], abs=2e-3)


def export_copy(small_export, folder, change):
    """A copy of the export whose Parquet tables went through `change(table) -> table`."""
    import shutil

    import pyarrow.parquet as pq

    shutil.copytree(small_export, folder)
    for path in folder.glob("data/*/*.parquet"):
        pq.write_table(change(pq.read_table(path)), path)
    return folder


def without_folds(table):
    return table.drop_columns(["fold"])


def fold_zero_benign_only(table):
    import pyarrow as pa

    folds, labels = table.column("fold").to_pylist(), table.column("label").to_pylist()
    changed = [1 if fold == 0 and label == 1 else fold for fold, label in zip(folds, labels)]
    return table.set_column(table.schema.get_field_index("fold"), table.schema.field("fold"), pa.array(changed, type=pa.int8()))


@pytest.mark.parametrize("change, extra, message", [
    (None, ("--cv_folds", "3"), "has folds [0, 1, 2, 3, 4] (5 folds); pass --cv_folds 5"),
    (fold_zero_benign_only, ("--cv_folds", "5"), "holds only class [0]; every fold needs both classes"),
    (without_folds, ("--cv_folds", "5"), "has no 'fold' values (an export made before folds)"),
])
def test_bad_cv_input_is_one_message_and_writes_nothing(small_export, tmp_path, run_cli, change, extra, message):
    import train_vit

    dataset = export_copy(small_export, tmp_path / "export", change) if change else small_export
    output_dir = tmp_path / "run"
    status, _, err = run_cli(train_vit, *vit_args(dataset, output_dir, "--max_steps", "1", *extra))
    assert status != 0 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], err
    assert not [p for p in output_dir.rglob("*") if not p.name.startswith(".")] if output_dir.exists() else True


def test_card_leads_with_held_out_results_then_cross_validation(cv_run):
    from huggingface_hub import ModelCard

    text = ModelCard.load(cv_run / "README.md").text
    oof = json.loads((cv_run / "metrics_oof.json").read_text())
    assert text.index("### external") < text.index("### test") < text.index("## Cross-validated development")
    assert "out-of-fold predictions of 5-fold cross-validation" in text and "chose the settings" in text
    assert f"{oof['per_fold_roc_auc_mean']:.3f} ± {oof['per_fold_roc_auc_sd']:.3f}" in text
    assert "uncertain: refer" in text and "| external |" in text and "chosen on validation" not in text


def test_predict_shows_the_conformal_set_of_a_cv_model(cv_run, tmp_path):
    from transformers import AutoConfig

    import predict
    from lymphus_ml.inference import classifier_settings

    settings = classifier_settings(AutoConfig.from_pretrained(cv_run))
    minimum = settings["conformal"]["min_probability"]
    image = np.zeros((8, 8), dtype=np.uint8)
    rows = []
    for probability in (0.0, 0.02, 0.3, 0.5, 0.7, 0.98, 1.0):
        row = predict.prediction_row(tmp_path / "x.png", "x", image, probability, None, "full", 0.5, settings, tmp_path, False)
        members = [name for name, p in (("benign", 1 - probability), ("malignant", probability)) if p >= minimum[name]]
        assert row["conformal_set"] == (members[0] if len(members) == 1 else "uncertain: refer")
        rows.append(row)
    path = predict.write_predictions_csv(tmp_path / "predictions.csv", rows)
    assert open(path).readline().strip().endswith(",roi,conformal_set")
