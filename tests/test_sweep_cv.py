"""Sweeps of cross-validated runs (train_vit.py --cv_folds): sweep.py forwards the option, reads a run folder with
metrics_oof.json in place of metrics_validation.json (locally and from a Hub repo), and the leaderboard shows the
out-of-fold AUC and the per-fold AUC pooled across folds and seeds. Run folders are hand-made, with the keys a real
--cv_folds run writes, so nothing here trains (a few seconds on CPU)."""

import csv
import json
import statistics
import sys
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import sweep  # noqa: E402
from lymphus_ml import leaderboard, runs, sweep_jobs  # noqa: E402
from lymphus_ml.cli import run  # noqa: E402


def estimates(prefix_values: dict) -> dict:
    """{name: value, name_ci_low, name_ci_high} from {name: (value, low, high)}."""
    out = {}
    for name, (value, low, high) in prefix_values.items():
        out |= {name: value, f"{name}_ci_low": low, f"{name}_ci_high": high, f"{name}_ci_method": "test"}
    return out


def split_metrics(split, auc, sensitivity, specificity, threshold=0.38, level=0.95) -> dict:
    """metrics_<split>.json as train_vit.py writes it (the keys the leaderboard reads, and a few it does not)."""
    common = {"perfect_separation": False, "n": 40, "n_positive": 20, "n_negative": 20, "confidence_level": level,
              **estimates({"roc_auc": auc, "sensitivity": sensitivity, "specificity": specificity,
                           "accuracy": (0.7, 0.5, 0.8)})}
    return {"split": split, "roi": "full", "youden_threshold": threshold, "threshold_source": "out-of-fold",
            "at_0.5": {**common, "threshold": 0.5}, "at_youden": {**common, "threshold": threshold}}


def oof_metrics(auc, folds, threshold=0.38) -> dict:
    """metrics_oof.json: the pooled OOF results, per-fold AUCs with their mean and SD, and what else it holds."""
    metrics = split_metrics("oof", auc, (0.8, 0.6, 0.9), (0.7, 0.5, 0.85), threshold)
    del metrics["roi"]
    return {**metrics, "n_folds": len(folds), "per_fold_roc_auc": folds,
            "per_fold_roc_auc_mean": statistics.mean(folds), "per_fold_roc_auc_sd": statistics.stdev(folds),
            "epochs_chosen": 3.0, "oof_roc_auc_by_epoch": {"1": 0.7, "3": auc[0]},
            "calibration": {"method": "platt", "slope": 1.1, "intercept": -0.2, "positive_index": 1},
            "conformal": {"level": 0.9, "class_names": ["benign", "malignant"],
                          "min_probability": {"benign": 0.2, "malignant": 0.1}, "n": {"benign": 70, "malignant": 74}}}


FOLDS = {0: [0.95, 0.91, 0.88, 0.93, 0.86], 1: [0.81, 0.9, 0.84, 0.87, 0.79]}
OOF_AUC = {0: (0.905, 0.86, 0.95), 1: (0.842, 0.78, 0.9)}
EXTERNAL_AUC = {0: (0.81, 0.7, 0.9), 1: (0.77, 0.66, 0.88)}


def write_cv_run(folder, seed) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    files = {"oof": oof_metrics(OOF_AUC[seed], FOLDS[seed]),
             "test": split_metrics("test", (0.88, 0.8, 0.95), (0.9, 0.7, 0.97), (0.6, 0.4, 0.78)),
             "external": split_metrics("external", EXTERNAL_AUC[seed], (0.85, 0.7, 0.93), (0.5, 0.35, 0.65))}
    for split, content in files.items():
        (folder / f"metrics_{split}.json").write_text(json.dumps(content))
    (folder / "predictions.csv").write_text("case_id,split,label,probability,prediction_at_youden\nc1,oof,1,0.9,1\n")
    return folder


def test_a_cv_run_folder_is_read_with_its_oof_metrics_in_place_of_validation(tmp_path):
    folder = write_cv_run(tmp_path / "seed0", 0)
    assert runs.missing_run_files(folder) == []
    metrics = runs.read_run_metrics(folder)
    assert set(metrics) == {"oof", "test", "external"}
    row = leaderboard.row_from_metrics_files(metrics, source=f"{folder}/")
    assert (row["oof_auc"], row["oof_auc_ci_low"], row["oof_auc_ci_high"]) == OOF_AUC[0]
    assert row.get("validation_auc") is None and row["external_auc"] == EXTERNAL_AUC[0][0]
    assert row["oof_n_folds"] == 5 and row["oof_fold_aucs"] == FOLDS[0]
    assert row["oof_per_fold_auc_mean"] == pytest.approx(statistics.mean(FOLDS[0]))
    assert row["oof_per_fold_auc_sd"] == pytest.approx(statistics.stdev(FOLDS[0]))
    assert row["youden_threshold"] == 0.38 and row["external_sensitivity"] == 0.85
    # Neither development file: one message naming both
    (folder / "metrics_oof.json").unlink()
    assert runs.missing_run_files(folder) == ["metrics_validation.json (or metrics_oof.json of a --cv_folds run)"]
    with pytest.raises(FileNotFoundError, match=r"metrics_validation.json is missing \(nor metrics_oof.json"):
        runs.read_run_metrics(folder)
    # A validation run still reads its validation file (and has no OOF columns)
    (folder / "metrics_validation.json").write_text(json.dumps(split_metrics("validation", (0.7, 0.6, 0.8), (0.7, 0.5, 0.8), (0.6, 0.4, 0.7))))
    row = leaderboard.row_from_metrics_files(runs.read_run_metrics(folder))
    assert row["validation_auc"] == 0.7 and row.get("oof_auc") is None


def cv_rows(tmp_path, seeds=(0, 1)):
    rows = []
    for seed in seeds:
        folder = write_cv_run(tmp_path / f"runs/vit/seed{seed}", seed)
        rows.append({"model": "vit.json", "model_slug": "vit", "finetuning": "full", "seed": seed, "status": "finished",
                     "run_dir": f"runs/vit/seed{seed}", **leaderboard.row_from_metrics_files(runs.read_run_metrics(folder))})
    return rows


def table_cells(markdown, heading, first_cell):
    section = markdown.split(heading)[1]
    header = next(line for line in section.splitlines() if line.startswith("| model |")).strip("| ").split(" | ")
    line = next(line for line in section.splitlines() if line.startswith(first_cell))
    return dict(zip(header, line.strip("| ").split(" | ")))


def test_the_leaderboard_leads_with_oof_auc_and_the_per_fold_auc_across_folds_and_seeds(tmp_path):
    rows = cv_rows(tmp_path)
    settings = {"dataset_name": "d", "dataset_config": "center1", "external_config": "center2",
                "train_vit_options": ["--cv_folds", "5"]}
    leaderboard.write_leaderboard(tmp_path, rows, {}, settings)
    markdown = (tmp_path / "leaderboard.md").read_text()
    summary = table_cells(markdown, "## Per model, across seeds", "| `vit` |")
    assert "validation AUC" not in summary  # no run has a validation split
    oof = [OOF_AUC[seed][0] for seed in (0, 1)]
    assert summary["OOF AUC"] == f"{statistics.mean(oof):.3f} ± {statistics.stdev(oof):.3f}"
    folds = FOLDS[0] + FOLDS[1]
    assert summary["per-fold OOF AUC"] == f"{statistics.mean(folds):.3f} ± {statistics.stdev(folds):.3f} (10 folds of 2 runs)"
    external = [EXTERNAL_AUC[seed][0] for seed in (0, 1)]
    assert summary["external AUC"] == f"{statistics.mean(external):.3f} ± {statistics.stdev(external):.3f}"
    assert list(summary)[2:4] == ["OOF AUC", "per-fold OOF AUC"]  # right after the run counts
    assert "out-of-fold (OOF)" in markdown and "on the out-of-fold predictions for a cross-validated run" in markdown
    run = table_cells(markdown, "## Runs", "| `vit` | 1 |")
    auc, low, high = OOF_AUC[1]
    assert run["validation / OOF AUC (CI)"] == (
        f"OOF {auc:.3f} ({low:.3f}–{high:.3f}); 5 folds {statistics.mean(FOLDS[1]):.3f} ± {statistics.stdev(FOLDS[1]):.3f}")
    with open(tmp_path / "leaderboard.csv", newline="") as handle:
        saved = {int(row["seed"]): row for row in csv.DictReader(handle)}
    assert float(saved[1]["oof_auc"]) == auc and saved[1]["validation_auc"] == "" and saved[1]["oof_n_folds"] == "5"
    assert float(saved[0]["oof_per_fold_auc_sd"]) == pytest.approx(statistics.stdev(FOLDS[0]))


def test_a_sweep_mixing_validation_and_cv_runs_shows_both(tmp_path):
    rows = cv_rows(tmp_path, seeds=(0,))
    rows.append({"model": "vit.json", "model_slug": "vit", "seed": 1, "status": "finished", "validation_auc": 0.75,
                 "external_auc": 0.7})
    summary = leaderboard.seed_summary(rows)
    header = leaderboard.summary_table(summary)[0].strip("| ").split(" | ")
    assert header[2:5] == ["validation AUC", "OOF AUC", "per-fold OOF AUC"]
    cells = leaderboard.summary_table(summary)[2].strip("| ").split(" | ")
    assert cells[2] == "0.750 (n=1 of 2)" and cells[3] == f"{OOF_AUC[0][0]:.3f} (n=1 of 2)"
    assert cells[4] == f"{statistics.mean(FOLDS[0]):.3f} ± {statistics.stdev(FOLDS[0]):.3f} (5 folds of 1 run)"
    # A sweep without cross-validated runs keeps its table as it was
    plain = leaderboard.summary_table(leaderboard.seed_summary(rows[1:]))[0].strip("| ").split(" | ")
    assert plain[2:] == [leaderboard.SUMMARY_LABELS[metric] for metric in leaderboard.SUMMARY_METRICS]


def test_a_hub_repo_of_a_cv_run_is_read_from_its_metrics_oof(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    folder = write_cv_run(tmp_path / "repo", 1)
    asked = []

    def download(repo_id, filename, revision=None, token=None):
        asked.append(filename)
        if not (folder / filename).is_file():
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(folder / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    results = sweep_jobs.hub_run_results("user/run", token=None)
    assert "metrics_validation.json" in asked and "metrics_oof.json" in asked
    assert results[0]["oof_auc"] == OOF_AUC[1][0] and results[0]["oof_fold_aucs"] == FOLDS[1]
    assert sweep_jobs.is_complete(results)
    assert not sweep_jobs.is_complete(({**results[0], "oof_auc": None}, results[1]))
    assert set(results[1]) == {"oof"}  # predictions.csv read back


def test_sweep_forwards_cv_folds_to_every_run(tmp_path):
    sweep_args, _, forwarded = sweep.parse_sweep_arguments(
        ["--models", "a.json", "--dataset_name", "d", "--output_dir", str(tmp_path / "out"),
         "--cv_folds", "5", "--conformal_level", "0.8"])
    sweep_run = sweep.SweepRun("a.json", "a", 0, option="--model_config_json", value="a.json")
    arguments = sweep.train_vit_arguments(sweep_run, sweep_args, forwarded, tmp_path / "r")
    assert arguments[-4:] == ["--cv_folds", "5", "--conformal_level", "0.8"]


def test_cv_folds_with_a_linear_probe_or_lora_axis_is_one_message_before_anything_is_written(tmp_path, capsys):
    output_dir = tmp_path / "out"
    arguments = ["--models", "a.json", "--dataset_name", "d", "--output_dir", str(output_dir),
                 "--finetuning", "full,lora", "--cv_folds", "5"]
    with pytest.raises(SystemExit) as exit_info:
        run(lambda: sweep.main(arguments), arguments)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert exit_info.value.code == 1 and len(errors) == 1
    assert "--cv_folds 5 with --finetuning full,lora" in errors[0] and "lora cannot be swept" in errors[0]
    assert not output_dir.exists()
