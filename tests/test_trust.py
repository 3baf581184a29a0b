"""Results a clinician can trust and models that answer the same everywhere (issue 10), and the scripts' refusals
of hostile inputs (issue 9): cards, pushes, pipeline vs predict.py vs evaluation, Job arguments, bad checkpoints."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fixtures import TINY_VIT, full_vit_args  # noqa: E402

import predict  # noqa: E402
import train_vit  # noqa: E402
from lymphus_ml import cards, hub, images  # noqa: E402


@pytest.fixture(scope="session")
def export_dir(small_export):
    return small_export


def run_args(dataset, output_dir, roi="full", *extra):
    return full_vit_args(dataset, output_dir, roi, *extra)


@pytest.fixture(scope="session")
def full_model(full_classifier):
    """A full-image classifier trained with the default occlusion saliency (read by the saliency test below)."""
    return full_classifier


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# Cards


def test_card_reports_held_out_sets_first_and_labels_validation(full_model):
    """Trained on a local export: the card's tables report every set, but no model-index (it would need a Hub
    dataset id; test_sharing reads the model-index of a run on a Hub dataset)."""
    from huggingface_hub import ModelCard

    card = ModelCard.load(full_model / "README.md")
    assert "model-index" not in card.data.to_dict() and not card.data.eval_results
    text = card.text
    assert "not published as Hub evaluation results" in text and "local folder" in text
    assert text.index("### external") < text.index("### test") < text.index("### validation")
    # The same run's metrics, as if its data were a Hub dataset: held-out sets first, validation labelled.
    split_metrics = {split: json.loads((full_model / f"metrics_{split}.json").read_text())
                     for split in ("validation", "test", "external")}
    results = cards.classification_eval_results(split_metrics, "user/lymphus", "center1", "center2")
    splits = list(dict.fromkeys(result.dataset_split for result in results))
    assert splits == ["all", "test", "validation"]  # external (all of center2), test, validation last
    validation = [r for r in results if r.dataset_split == "validation"]
    assert validation and all("model-selection set, optimistic" in r.metric_name for r in validation)
    # metric_args holds arguments of the computation only; only the Hub's metric ids (no specificity, NPV).
    assert all(set(r.metric_args or {}) <= {"threshold"} for r in results)
    assert {r.metric_type for r in results} == {"roc_auc", "recall", "precision", "accuracy", "f1"}
    assert card.data.license == "other" and card.data.license_name == cards.LYMPHUS_DATA_LICENSE["license_name"]
    # The threshold's luck: the range of sensitivity and specificity it gives on each held-out set, in JSON and card.
    test = json.loads((full_model / "metrics_test.json").read_text())["at_youden"]
    assert test["sensitivity_threshold_range_low"] <= test["sensitivity_threshold_range_high"]
    assert test["threshold_range_n_bootstrap"] > 0 and "Re-choosing the Youden threshold" in text
    assert "the PPV and NPV below hold at this prevalence only" in text and "Newcombe" in text


def test_card_licence_is_the_users_else_the_base_models_else_the_data_terms():
    assert cards.card_license("apache-2.0", "mit") == {"license": "apache-2.0"}
    assert cards.card_license(None, "mit") == {"license": "mit"}
    assert cards.card_license(None, None)["license"] == "other"


def test_a_crop_model_turns_the_widget_off_and_points_to_predict(crop_classifier):
    from huggingface_hub import ModelCard

    card = ModelCard.load(crop_classifier / "README.md")
    assert card.data.inference is False
    first_lines = card.text.strip().splitlines()[:4]
    assert any("needs the node crop" in line and "predict.py" in line for line in first_lines)


def test_a_perfectly_separated_set_prints_no_interval():
    values = {"roc_auc": 1.0, "roc_auc_ci_low": None, "roc_auc_ci_high": None, "perfect_separation": True}
    assert "perfectly separated" in cards.auc_text(values, 95) and "1.000-1.000" not in cards.auc_text(values, 95)


def test_a_perfectly_separated_set_gets_newcombes_lower_bound_and_no_zero_width_interval_is_printed():
    from lymphus_ml.evaluation import format_estimate
    from lymphus_ml.leaderboard import CARD_INTERVAL

    separated = {"roc_auc": 1.0, "roc_auc_ci_low": 0.778, "roc_auc_ci_high": 1.0, "perfect_separation": True,
                 "roc_auc_ci_method": "newcombe", "threshold": 0.5}
    assert "lower bound 0.778 (Newcombe)" in cards.auc_text(separated, 95)
    # Zero width is no variation, not certainty: F1 of 0 in every resample, a constant Brier score.
    assert format_estimate(0.0, 0.0, 0.0) == "0.000 (no variation: interval undefined)"
    assert format_estimate(0.071, 0.071, 0.071, style="report") == "0.071 (no variation: interval undefined)"
    assert format_estimate(0.5, 0.4, 0.6, style="report") == "0.500 [0.400, 0.600]"
    split_metrics = {"test": {"at_0.5": {**separated, "f1": 0.0, "f1_ci_low": 0.0, "f1_ci_high": 0.0,
                                         "f1_ci_method": "stratified-bootstrap"},
                              "at_youden": {"threshold": 0.4, "sensitivity": 0.8, "sensitivity_ci_low": 0.5,
                                            "sensitivity_ci_high": 0.95, "sensitivity_ci_method": "clopper-pearson"}}}
    results = cards.classification_eval_results(split_metrics, "user/lymphus", "center1", "center2")
    names = {r.metric_type: r.metric_name for r in results}
    assert "0.000-0.000" not in names["f1"] and "no variation" in names["f1"]
    # The leaderboard reads two-sided intervals out of these names: none for the one-sided bound.
    assert "lower bound 0.778" in names["roc_auc"] and not CARD_INTERVAL.search(names["roc_auc"])
    assert CARD_INTERVAL.search(names["recall"]).groups() == ("95", "0.500", "0.950")


# Same answers everywhere


def test_pipeline_predict_and_evaluation_agree_on_a_full_image_model(full_model, export_dir, tmp_path):
    """The same test images: pipeline() (as the card says: the positive score at config.youden_threshold),
    predict.py (its CSV) and the evaluation's predictions.csv give the same probability and label."""
    import datasets
    from transformers import pipeline

    test = datasets.load_dataset(str(export_dir), "center1", split="test")
    folder = tmp_path / "images"
    folder.mkdir()
    for example in test:
        example["image"].save(folder / f"{example['case_id']}.png")
    predict.main(["--input", str(folder), "--classifier", str(full_model), "--output_dir", str(tmp_path / "pred"),
                  "--device", "cpu"])
    by_predict = {Path(r["file"]).stem: r for r in read_csv(tmp_path / "pred" / "predictions.csv")}
    evaluated = {r["case_id"]: r for r in read_csv(full_model / "predictions.csv") if r["split"] == "test"}
    classifier = pipeline("image-classification", model=str(full_model), device="cpu")
    threshold = classifier.model.config.youden_threshold
    assert threshold == json.loads((full_model / "threshold.json").read_text())["youden_threshold"]
    for example in test:
        case = example["case_id"]
        score = next(s["score"] for s in classifier(str(folder / f"{case}.png")) if s["label"] == "malignant")
        pipeline_label = "malignant" if score >= threshold else "benign"
        assert float(by_predict[case]["probability_malignant"]) == pytest.approx(float(evaluated[case]["probability"]), abs=1e-6)
        assert score == pytest.approx(float(evaluated[case]["probability"]), abs=2e-3)
        evaluated_label = "malignant" if int(evaluated[case]["prediction_at_youden"]) else "benign"
        assert by_predict[case]["label_at_threshold"] == evaluated_label
        if abs(score - threshold) > 2e-3:  # a score within the resampling noise of the threshold may flip
            assert pipeline_label == evaluated_label


# Pushes: one commit, one rule


def test_push_is_one_commit_with_the_final_card_and_no_pickles(local_hub, export_dir, tmp_path):
    from huggingface_hub import HfApi

    repo_id = f"{local_hub.user}/trust-push"
    train_vit.main(run_args(export_dir, tmp_path / "push", "full", "--max_steps", "1", "--saliency", "none", "--push_to_hub",
                            "--hub_model_id", repo_id, "--hub_token", local_hub.token))
    titles = [commit["title"] for commit in local_hub.commits(repo_id)]
    assert titles == ["initial commit", "LymphUs classifier"]  # the repo's creation, then one push
    files = set(HfApi(token=local_hub.token).list_repo_files(repo_id))
    assert {"README.md", "model.safetensors", "config.json", "predictions.csv", "threshold.json"} <= files
    assert not [f for f in files if f.endswith(".bin") or f.startswith("checkpoint-") or "synthetic" in f]
    assert [f for f in files if f.startswith(".")] == [".gitattributes"]  # the Hub's own, from the repo's creation
    card = local_hub.read_file(repo_id, "README.md").decode()
    assert f'model="{repo_id}"' in card and "This model card has been generated automatically" not in card


# Hostile inputs to the scripts


def test_a_json_arguments_file_with_the_token_is_never_shipped_to_a_job(tmp_path):
    arguments = tmp_path / "args.json"
    arguments.write_text(json.dumps({"dataset_name": "u/lymphus", "hub_token": "hf_secret", "launch_on_hub": "t4-small",
                                     "push_to_hub": True, "num_train_epochs": 3}))
    forwarded = hub.job_script_args([str(arguments)])
    assert "hf_secret" not in " ".join(forwarded) and str(arguments) not in forwarded
    assert forwarded == ["--dataset_name", "u/lymphus", "--push_to_hub", "True", "--num_train_epochs", "3"]
    assert hub.job_script_args(["--hub-token", "hf_secret", "--seed", "1", "--debug"]) == ["--seed", "1"]


def test_an_abbreviated_option_is_refused_without_echoing_its_value(run_cli):
    status, out, err = run_cli(train_vit, "--hub_tok", "hf_secret_value", "--dataset_name", "x")
    assert status != 0 and "Traceback" not in err
    assert "--hub_tok" in err and "hf_secret_value" not in out + err


def test_evaluate_only_refuses_a_checkpoint_whose_head_does_not_fit(export_dir, tmp_path):
    from transformers import AutoConfig, AutoModelForImageClassification, ViTImageProcessor

    config = AutoConfig.for_model("vit", **{k: v for k, v in json.loads(TINY_VIT).items() if k != "model_type"},
                                  num_labels=5)
    AutoModelForImageClassification.from_config(config).save_pretrained(tmp_path / "imagenet-like")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "imagenet-like")
    args = [a for a in run_args(export_dir, tmp_path / "eval", "full") if a != TINY_VIT and a != "--model_config_json"]
    with pytest.raises(ValueError, match="head does not fit"):
        train_vit.main(args + ["--model_name_or_path", str(tmp_path / "imagenet-like"), "--do_train", "False"])
    assert not (tmp_path / "eval" / "README.md").exists()


def test_masked_training_refuses_empty_masks(export_dir):
    import datasets

    dataset = datasets.load_dataset(str(export_dir), "center1")
    blank = Image.new("L", dataset["train"][0]["mask"].size, 0)
    first = dataset["train"][0]["case_id"]
    train = dataset["train"].map(lambda row: {"mask": blank if row["case_id"] == first else row["mask"]})
    with pytest.raises(ValueError, match=rf"empty 'mask'.*{first}"):
        train_vit.check_masks_mark_a_node({"train": train}, {}, train_vit.DataTrainingArguments(dataset_name="x", roi="masked"), True)


# Images of any bit depth


def test_sixteen_bit_images_are_mapped_by_their_value_range_not_clipped():
    ramp = (np.arange(40 * 60).reshape(40, 60) * 27).astype(np.uint16)  # 0 .. 64773
    image, note = images.to_8bit_grayscale(Image.fromarray(ramp))
    pixels = np.asarray(image)
    assert image.mode == "L" and pixels.min() == 0 and pixels.max() == 255 and "value range" in note
    expected = np.round((ramp - ramp.min()) * 255.0 / (ramp.max() - ramp.min())).astype(np.uint8)
    np.testing.assert_array_equal(pixels, expected)
    assert len(np.unique(pixels)) > 200  # not clipped to black and white, as PIL's convert("L") does
    assert (np.asarray(Image.fromarray(ramp).convert("L")) == 255).mean() > 0.9  # PIL clips nearly all to white


def test_predict_reports_an_unreadable_file_and_still_writes_the_good_ones(full_model, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8)).save(folder / "a_good.png")
    Image.fromarray((rng.integers(0, 4096, (40, 50))).astype(np.uint16)).save(folder / "b_sixteen_bit.png")
    (folder / "c_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    completed = subprocess.run(
        [sys.executable, "predict.py", "--input", str(folder), "--classifier", str(full_model), "--output_dir",
         str(tmp_path / "out"), "--device", "cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode != 0 and "Traceback" not in completed.stderr
    assert "1 of 3 file(s) could not be predicted" in completed.stderr and "c_broken.png" in completed.stderr
    rows = {Path(row["file"]).name: row for row in read_csv(tmp_path / "out" / "predictions.csv")}
    assert set(rows) == {"a_good.png", "b_sixteen_bit.png", "c_broken.png"}
    assert rows["a_good.png"]["status"] == rows["b_sixteen_bit.png"]["status"] == "ok"
    assert 0 <= float(rows["b_sixteen_bit.png"]["probability_malignant"]) <= 1
    assert rows["c_broken.png"]["status"].startswith("failed: Cannot read image") and not rows["c_broken.png"]["probability_malignant"]


def test_where_the_model_looks_is_in_the_metrics_and_the_card(full_model):
    from huggingface_hub import ModelCard

    text = ModelCard.load(full_model / "README.md").text
    assert "## Where the model looks" in text
    for split in ("external", "test", "validation"):
        saliency = json.loads((full_model / f"metrics_{split}.json").read_text())["saliency"]
        n = json.loads((full_model / f"metrics_{split}.json").read_text())["at_0.5"]["n"]
        assert saliency["method"] == "occlusion" and saliency["n_cases_in_set"] == n
        assert saliency["n_images"] == min(24, n)  # the default stratified sample, stated in the card
        assert f"| {split} | {'all ' if n <= 24 else ''}{min(24, n)}{'' if n <= 24 else f' of {n}'} | control: head" in text
        assert set(saliency["controls"]) == {"head_reinitialised", "all_reinitialised"}
        assert 0 <= saliency["energy_in_node_ci_low"] <= saliency["energy_in_node_mean"] <= saliency["energy_in_node_ci_high"] <= 1
        assert (full_model / saliency["figure"]).stat().st_size > 10_000 and f"]({saliency['figure']})" in text


@pytest.mark.parametrize(
    "command",
    [
        ["train_vit.py", "--dataset_name", "{missing}", "--output_dir", "{out}"],
        ["train_segformer.py", "--dataset_name", "{missing}", "--output_dir", "{out}"],
        ["predict.py", "--input", "{missing}", "--classifier", "{missing}"],
        ["benchmark_lymphus.py", "--dataset_name", "{missing}", "--output_dir", "{out}"],
    ],
    ids=lambda command: command[0],
)
def test_every_cli_reports_a_missing_input_in_one_line(command, tmp_path, run_cli):
    import importlib

    missing = str(tmp_path / "no-such-export")
    argv = [part.format(missing=missing, out=tmp_path / "out") for part in command]
    status, out, err = run_cli(importlib.import_module(Path(argv[0]).stem), *argv[1:])
    assert status == 1, err[-2000:]
    assert "Traceback" not in err + out
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "no-such-export" in errors[0]


def test_sweep_main_is_wired_to_one_line_errors(tmp_path):
    """The one process start of sweep.py: `python sweep.py` reaches cli.run(main), refusing before writing anything."""
    output_dir = tmp_path / "out"
    # An error of sweep.py's own options: forwarded ones would start `train_vit.py --help` (~9 CPU-s) to check them.
    completed = subprocess.run([sys.executable, "sweep.py", "--models", "a.json", "--dataset_name", "d", "--output_dir",
                                str(output_dir), "--max_parallel_runs", "0"], cwd=REPO,
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 1 and "Traceback" not in completed.stderr
    errors = [line for line in completed.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: --max_parallel_runs 0: give 1 or more."]
    assert not output_dir.exists()


def test_benchmark_lymphus_main_is_wired_to_one_line_errors(tmp_path):
    """The one process start of benchmark_lymphus.py: `python benchmark_lymphus.py` reaches cli.run(main)."""
    completed = subprocess.run([sys.executable, "benchmark_lymphus.py", "--dataset_name", str(tmp_path / "no-such-export"),
                                "--output_dir", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True,
                               timeout=300, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert completed.returncode == 1 and "Traceback" not in completed.stderr
    errors = [line for line in completed.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "no-such-export" in errors[0]
