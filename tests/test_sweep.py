"""sweep.py: train_vit.py over models x seeds, the leaderboard, resume, failed runs, Hub Jobs, collecting from the Hub.

One real sweep (two tiny models built from configs, two seeds, a few steps each, on a small synthetic export) feeds
most tests. References are independent: scikit-learn on each run's predictions.csv, `statistics` for mean and SD,
a brute-force DeLong interval. The Hub is the local server (tests/hub_server.py); the Jobs artifacts bucket,
which it lacks, is recorded.
"""

import csv
import json
import re
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import norm
from sklearn.metrics import recall_score, roc_auc_score


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fixtures import run_script_in_process  # noqa: E402

import sweep  # noqa: E402
from lymphus_ml import leaderboard, plots  # noqa: E402
from lymphus_ml.runs import read_run_predictions  # noqa: E402


TINY_MODELS = {
    "vit-micro": {"model_type": "vit", "image_size": 32, "patch_size": 8, "num_hidden_layers": 1, "hidden_size": 32,
                  "num_attention_heads": 2, "intermediate_size": 64},
    "convnext-micro": {"model_type": "convnext", "image_size": 32, "hidden_sizes": [8, 16, 32, 64],
                       "depths": [1, 1, 1, 1]},
}
FORWARDED = ["--roi", "crop", "--max_steps", "2", "--per_device_train_batch_size", "8", "--learning_rate", "1e-3",
             "--n_bootstrap", "50", "--saliency", "none", "--use_cpu", "--report_to", "none", "--disable_tqdm", "True"]


@pytest.fixture(scope="session")
def export_dir(small_export):
    return small_export


@pytest.fixture(scope="session")
def configs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep-configs")
    paths = {}
    for name, config in {**TINY_MODELS, "broken": {"model_type": "no_such_architecture"}}.items():
        paths[name] = folder / f"{name}.json"
        paths[name].write_text(json.dumps(config))
    return paths


def sweep_args(export_dir, output_dir, models, seeds="0,1", *extra):
    return ["--dataset_name", str(export_dir), "--dataset_config", "center1", "--external_config", "center2",
            "--models", ",".join(str(model) for model in models), "--seeds", seeds, "--output_dir", str(output_dir),
            *FORWARDED, *extra]


@pytest.fixture(scope="session")
def swept(export_dir, configs, tmp_path_factory):
    """A finished local sweep: 2 models x 2 seeds, its train_vit.py runs in this process (run_script_in_process:
    the tests read what they wrote; the sweep's processes are tested with real ones in test_sweep_hardening.py)."""
    output_dir = tmp_path_factory.mktemp("sweep") / "out"
    models = [configs["vit-micro"], configs["convnext-micro"]]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sweep, "run_script", run_script_in_process)
        sweep.main(sweep_args(export_dir, output_dir, models, "0,1", "--max_parallel_runs", "2"))
    return output_dir


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def run_predictions(run_dir, split):
    rows = [row for row in read_csv(run_dir / "predictions.csv") if row["split"] == split]
    return {row["case_id"]: (int(row["label"]), float(row["probability"])) for row in rows}


def brute_force_delong(labels, scores, confidence_level=0.95):
    """AUC and DeLong CI from the placement values, pair by pair (DeLong et al. 1988)."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    positives, negatives = scores[labels == 1], scores[labels == 0]
    kernel = (positives[:, None] > negatives[None, :]) + 0.5 * (positives[:, None] == negatives[None, :])
    auc = kernel.mean()
    variance = kernel.mean(axis=1).var(ddof=1) / len(positives) + kernel.mean(axis=0).var(ddof=1) / len(negatives)
    half = norm.ppf(0.5 + confidence_level / 2) * np.sqrt(variance)
    return auc, max(0.0, auc - half), min(1.0, auc + half)


# The local sweep and its leaderboard


def test_every_run_is_in_the_leaderboard_with_its_own_numbers(swept):
    rows = read_csv(swept / "leaderboard.csv")
    assert [(row["model_slug"], row["seed"], row["status"]) for row in rows] == [
        ("vit-micro", "0", "finished"), ("vit-micro", "1", "finished"),
        ("convnext-micro", "0", "finished"), ("convnext-micro", "1", "finished"),
    ]
    for row in rows:
        run_dir = swept / row["run_dir"]
        assert run_dir == swept / "runs" / row["model_slug"] / f"seed{row['seed']}"
        assert json.loads((run_dir / "sweep_run.json").read_text())["status"] == "finished"
        assert row["roi"] == "crop"
        threshold = float(row["youden_threshold"])
        assert threshold == json.loads((run_dir / "threshold.json").read_text())["youden_threshold"]
        for split in ("validation", "test", "external"):
            cases = run_predictions(run_dir, split)
            labels = [label for label, _ in cases.values()]
            probabilities = [probability for _, probability in cases.values()]
            assert float(row[f"{split}_auc"]) == pytest.approx(roc_auc_score(labels, probabilities), abs=1e-9)
            if float(row[f"{split}_auc"]) in (0.0, 1.0):  # perfectly separated: no interval exists, none is made up
                assert row[f"{split}_auc_ci_low"] == row[f"{split}_auc_ci_high"] == ""
                continue
            low, high = float(row[f"{split}_auc_ci_low"]), float(row[f"{split}_auc_ci_high"])
            assert low <= float(row[f"{split}_auc"]) <= high
            if split == "validation":
                continue
            predicted = [int(p >= threshold) for p in probabilities]
            sensitivity = recall_score(labels, predicted, pos_label=1)
            specificity = recall_score(labels, predicted, pos_label=0)
            assert float(row[f"{split}_sensitivity"]) == pytest.approx(sensitivity, abs=1e-9)
            assert float(row[f"{split}_specificity"]) == pytest.approx(specificity, abs=1e-9)


def test_runs_differ_by_seed_only(swept):
    records = {
        (path.parent.parent.name, path.parent.name): json.loads(path.read_text())["train_vit_arguments"]
        for path in swept.glob("runs/*/*/sweep_run.json")
    }
    assert len(records) == 4
    first, second = records["vit-micro", "seed0"], records["vit-micro", "seed1"]
    differing = [index for index, (a, b) in enumerate(zip(first, second)) if a != b]
    assert [first[i - 1] for i in differing] == ["--seed", "--output_dir"]
    assert first[-len(FORWARDED):] == FORWARDED  # forwarded verbatim, in order
    assert first[first.index("--model_config_json") + 1].endswith("vit-micro.json")
    # Seeds change the model: the two seeds' external probabilities are not the same numbers.
    seed0, seed1 = (run_predictions(swept / "runs/vit-micro" / seed, "external") for seed in ("seed0", "seed1"))
    assert seed0.keys() == seed1.keys() and seed0 != seed1


def test_per_model_mean_and_sd_match_statistics(swept):
    rows = read_csv(swept / "leaderboard.csv")
    markdown = (swept / "leaderboard.md").read_text()
    assert "ddof=1" in markdown
    for slug in ("vit-micro", "convnext-micro"):
        cells = next(line for line in markdown.splitlines() if line.startswith(f"| `{slug}` | 2/2 |")).rstrip(" |").split(" | ")
        for position, metric in enumerate(leaderboard.SUMMARY_METRICS, start=2):
            values = [float(row[metric]) for row in rows if row["model_slug"] == slug]
            assert cells[position] == f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}", metric


def test_seed_averaged_auc_matches_sklearn_and_a_brute_force_delong_interval(swept):
    rows = [
        {"model_slug": row["model_slug"], "seed": int(row["seed"]), "confidence_level": float(row["confidence_level"])}
        for row in read_csv(swept / "leaderboard.csv")
    ]
    keys = [leaderboard.run_key(row) for row in rows]
    predictions = {key: read_run_predictions(swept / "runs" / key / "predictions.csv") for key in keys}
    averaged = leaderboard.seed_averaged_aucs(rows, predictions)
    markdown = (swept / "leaderboard.md").read_text()
    for slug in ("vit-micro", "convnext-micro"):
        for split in ("test", "external"):
            seeds = [run_predictions(swept / "runs" / slug / f"seed{seed}", split) for seed in (0, 1)]
            assert set(seeds[0]) == set(seeds[1])
            case_ids = sorted(seeds[0])
            labels = [seeds[0][case][0] for case in case_ids]
            mean = [(seeds[0][case][1] + seeds[1][case][1]) / 2 for case in case_ids]
            auc, low, high = brute_force_delong(labels, mean)
            result = averaged[slug][split]
            assert result["roc_auc"] == pytest.approx(roc_auc_score(labels, mean), abs=1e-12)
            assert result["roc_auc"] == pytest.approx(auc, abs=1e-12)
            if auc in (0.0, 1.0):  # perfectly separated: DeLong's interval degenerates, so none is reported
                assert result["roc_auc_ci_low"] is None and result["roc_auc_ci_high"] is None
            else:
                assert (result["roc_auc_ci_low"], result["roc_auc_ci_high"]) == pytest.approx((low, high), abs=1e-9)
            assert result["n"] == len(case_ids) and result["n_seeds"] == 2
        # The ensemble sits apart from the per-model means, labelled as a model nobody can download.
        ensemble = markdown.split("## For reference: the seeds' ensemble (not a saved model)")[1].split("## Runs")[0]
        assert "no one can download" in ensemble
        line = next(line for line in ensemble.splitlines() if line.startswith(f"| `{slug}` | 2 |"))
        external = averaged[slug]["external"]
        if external["roc_auc_ci_low"] is None:
            expected = f"{external['roc_auc']:.3f} (perfectly separated: no CI)"
        else:
            expected = f"{external['roc_auc']:.3f} ({external['roc_auc_ci_low']:.3f}–{external['roc_auc_ci_high']:.3f})"
        assert line.rstrip(" |").endswith(expected)


def test_the_forest_plots_diamond_is_the_mean_across_seeds_with_its_sd(swept):
    rows = [{key: (float(value) if key in leaderboard.SUMMARY_METRICS and value else value or None)
             for key, value in row.items()} for row in read_csv(swept / "leaderboard.csv")]
    entries = plots.forest_entries(rows, leaderboard.seed_summary(rows))
    for slug in ("vit-micro", "convnext-micro"):
        values = [row["external_auc"] for row in rows if row["model_slug"] == slug]
        (diamond,) = [entry for entry in entries if entry[0].startswith(slug) and entry[4]]
        mean, sd = statistics.mean(values), statistics.stdev(values)
        assert diamond[1:4] == pytest.approx((mean, max(0.0, mean - sd), min(1.0, mean + sd)), abs=1e-12)
        assert diamond[0] == f"{slug} · mean of 2 run(s)"


def test_forest_plot_and_settings_are_written(swept):
    with Image.open(swept / "forest_external_auc.png") as image:
        # One line per run and per model's mean across seeds: 6 lines, 0.35 inch each at 100 dpi, + 1.2 inch of margins.
        assert image.format == "PNG" and image.size == (700, round(100 * (1.2 + 0.35 * 6)))
    settings = json.loads((swept / "sweep.json").read_text())
    assert settings["train_vit_options"] == FORWARDED and settings["dataset_config"] == "center1"
    assert "![External AUC per run and model](forest_external_auc.png)" in (swept / "leaderboard.md").read_text()
    assert not list(swept.glob("**/.*partial*"))


def test_a_rerun_skips_finished_runs_and_reports_a_failed_one(swept, export_dir, configs, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "run_script", run_script_in_process)  # its processes: tests/test_sweep_hardening.py
    output_dir = tmp_path / "resumed"
    shutil.copytree(swept, output_dir)
    finished = output_dir / "runs" / "vit-micro" / "seed0"
    before = {name: (finished / name).read_bytes() for name in ("sweep_run.json", "train_vit.log", "predictions.csv")}
    with pytest.raises(ValueError, match=r"1 of 2 runs failed \(e.g. broken seed 0: .*no_such_architecture"):
        sweep.main(sweep_args(export_dir, output_dir, [configs["vit-micro"], configs["broken"]], "0"))
    assert {name: (finished / name).read_bytes() for name in before} == before  # not run again
    rows = {row["model_slug"]: row for row in read_csv(output_dir / "leaderboard.csv")}
    assert sorted(rows) == ["broken", "vit-micro"]
    assert rows["vit-micro"]["status"] == "finished"
    assert rows["broken"]["status"] == "failed" and rows["broken"]["returncode"] == "1"
    assert "no_such_architecture" in rows["broken"]["error"] and rows["broken"]["external_auc"] == ""
    marker = json.loads((output_dir / "runs/broken/seed0/sweep_run.json").read_text())
    log = (output_dir / "runs/broken/seed0/train_vit.log").read_text()
    assert marker["status"] == "failed" and marker["log_tail"].splitlines()[-1] in log
    markdown = (output_dir / "leaderboard.md").read_text()
    assert "## Runs not finished" in markdown and "`broken` seed 0: failed (exit status 1)" in markdown
    assert "| `broken` | 0/1 |" in markdown


def test_options_train_vit_refuses_stop_the_sweep_at_the_first_run(export_dir, configs, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "run_script", run_script_in_process)  # train_vit.py's own argparse refusal, exit 2
    output_dir = tmp_path / "typo"
    with pytest.raises(ValueError, match=r"--num_train_epoch is an option of neither .* \(did you mean --num_train_epochs\?\)"):
        sweep.main(sweep_args(export_dir, output_dir, [configs["vit-micro"]], "0,1", "--num_train_epoch", "1"))
    assert not output_dir.exists()  # a misspelt option: refused before anything is written
    with pytest.raises(ValueError, match=r"refused the options.*invalid choice: 'nonsense'"):  # a value it refuses
        sweep.main(sweep_args(export_dir, output_dir, [configs["vit-micro"]], "0,1", "--roi", "nonsense"))
    assert (output_dir / "runs/vit-micro/seed0/sweep_run.json").is_file()
    assert not (output_dir / "runs/vit-micro/seed1").exists()


def test_script_option_names_reads_a_scripts_help_in_a_child_process(tmp_path):
    """The real path of sweep's option check (tests read train_vit's own --help in process, tests/fixtures.py):
    `python SCRIPT --help` in a child, every --option of argparse's layout, one message when --help fails."""
    from lymphus_ml.runs import script_option_names

    script = tmp_path / "stub.py"
    script.write_text(
        "import argparse\nparser = argparse.ArgumentParser()\n"
        "parser.add_argument('--learning_rate', type=float, help='a rate ' * 30)\n"
        "parser.add_argument('-x', '--hub-model-id', '--hub_model_id')\n"
        "parser.add_argument('--no_cuda', action='store_true')\nparser.parse_args()\n"
    )
    assert script_option_names(script) == {"--help", "--learning_rate", "--hub_model_id", "--no_cuda"}
    broken = tmp_path / "broken.py"
    broken.write_text("raise SystemExit('no parser here')\n")
    with pytest.raises(ValueError, match=r"broken.py --help failed \(exit status 1\):\nno parser here"):
        script_option_names(broken)


# Arguments, plans and the output folder


def test_unknown_options_are_forwarded_and_managed_ones_refused():
    parsed, job_args, forwarded = sweep.parse_sweep_arguments(
        ["--models", "a/b", "--output_dir", "o", "--roi", "crop", "--learning_rate=1e-3", "--use_cpu",
         "--hub_token", "hf_x"]
    )
    assert forwarded == ["--roi", "crop", "--learning_rate=1e-3", "--use_cpu"]
    assert parsed.hub_token == "hf_x" and job_args.launch_on_hub is None
    refused = {
        ("--seed", "3"): "--seed is set by sweep.py.*--seeds",
        ("--model_config_json", "{}"): "--model_config_json is set by sweep.py",
        ("--model-name-or-path", "x"): "--model_name_or_path is set by sweep.py",
        ("--hub_model_id=u/x",): "--hub_model_id is set by sweep.py",
        ("--model", "x"): "abbreviation of --models",
        ("--hub_model_id_pre", "u/x"): "abbreviation of --hub_model_id_prefix",
    }
    for extra, message in refused.items():
        with pytest.raises(ValueError, match=message):
            sweep.parse_sweep_arguments(["--models", "a/b", "--output_dir", "o", *extra])
    with pytest.raises(ValueError, match="Unexpected value 'c/d'"):
        sweep.parse_sweep_arguments(["--models", "a/b", "c/d", "--output_dir", "o"])
    with pytest.raises(ValueError, match="--collect .* takes no train_vit.py option"):
        sweep.parse_sweep_arguments(["--collect", "--output_dir", "o", "--roi", "crop"])
    with pytest.raises(ValueError, match="--collect and --launch_on_hub cannot be combined"):
        sweep.parse_sweep_arguments(["--collect", "--launch_on_hub", "a10g-small", "--output_dir", "o"])


def test_plan_names_each_run_and_checks_models_and_seeds(configs, tmp_path):
    model_folder = tmp_path / "My Model"
    model_folder.mkdir()
    runs = sweep.plan_runs(f"{configs['vit-micro']},google/vit-base-patch16-224,{model_folder}", "2,0", "me/sw")
    assert [(run.slug, run.seed, run.option) for run in runs] == [
        ("vit-micro", 2, "--model_config_json"), ("vit-micro", 0, "--model_config_json"),
        ("vit-base-patch16-224", 2, "--model_name_or_path"), ("vit-base-patch16-224", 0, "--model_name_or_path"),
        ("my-model", 2, "--model_name_or_path"), ("my-model", 0, "--model_name_or_path"),
    ]
    assert runs[3].repo_id("me/sw") == "me/sw-vit-base-patch16-224-seed0"
    assert runs[3].folder(tmp_path) == tmp_path / "runs" / "vit-base-patch16-224" / "seed0"
    failures = {
        ("missing.json", "0"): "config file missing.json not found",
        ("a/vit,b/vit", "0"): "both get the name 'vit'",
        ("a/b", "0,x"): "'x' is not a non-negative integer",
        ("a/b", "1,1"): "repeats a seed",
        ("a/b,,c/d", "0"): "empty entry",
        ("./no/such/folder", "0"): "neither a .json config file, a local folder, nor a Hub model id",
    }
    for (models, seeds), message in failures.items():
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            sweep.plan_runs(models, seeds)


def test_output_dir_refuses_a_foreign_folder_and_other_settings(swept, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    settings = json.loads((swept / "sweep.json").read_text())
    with pytest.raises(FileExistsError, match="holds no sweep.json"):
        sweep.prepare_output_dir(foreign, settings)
    assert [path.name for path in foreign.iterdir()] == ["notes.txt"]
    copy = tmp_path / "copy"
    shutil.copytree(swept, copy, ignore=shutil.ignore_patterns("checkpoint-*", "*.safetensors"))
    with pytest.raises(ValueError, match="external_config = 'center2', not 'center1_to_center2'"):
        sweep.prepare_output_dir(copy, {**settings, "external_config": "center1_to_center2"})
    assert json.loads((copy / "sweep.json").read_text()) == settings


def test_offline_demo_defaults_give_way_to_the_command(export_dir, tmp_path):
    from transformers import AutoConfig, AutoModelForImageClassification

    parsed, _, forwarded = sweep.parse_sweep_arguments(
        ["--offline_demo", "--output_dir", str(tmp_path / "demo"), "--dataset_name", str(export_dir),
         "--num_train_epochs", "5"]
    )
    forwarded = sweep.apply_offline_demo(parsed, forwarded, tmp_path / "demo")
    assert forwarded[:2] == ["--num_train_epochs", "5"] and forwarded.count("--num_train_epochs") == 1
    assert forwarded[forwarded.index("--roi") + 1] == "crop" and "--use_cpu" in forwarded
    assert parsed.seeds == "0,1" and parsed.dataset_name == str(export_dir)
    sweep.write_offline_demo_inputs(parsed, tmp_path / "demo")
    assert not (tmp_path / "demo" / "synthetic-lymphus").exists()  # a given dataset is used as is
    runs = sweep.plan_runs(parsed.models, parsed.seeds)
    assert [(run.slug, run.seed) for run in runs] == [
        ("vit-tiny", 0), ("vit-tiny", 1), ("convnext-tiny", 0), ("convnext-tiny", 1)
    ]
    for run in runs[::2]:
        config = json.loads(Path(run.value).read_text())
        config = AutoConfig.for_model(config.pop("model_type"), num_labels=2, **config)
        model = AutoModelForImageClassification.from_config(config)
        assert model.config.num_labels == 2


# Hub Jobs and collecting from the Hub


def launch_args(local_hub, configs, output_dir, prefix, *extra):
    return ["--launch_on_hub", "a10g-small", "--job_timeout", "2h", "--hub_token", local_hub.token,
            "--hub_model_id_prefix", prefix, "--dataset_name", f"{local_hub.user}/lymphus",
            "--models", f"{configs['vit-micro']},{configs['convnext-micro']}", "--seeds", "0,1",
            "--output_dir", str(output_dir), "--roi", "crop", "--num_train_epochs", "20", *extra]


def test_launch_on_hub_submits_one_job_per_run_and_resubmits_only_failed_ones(
    local_hub, bucket_recorder, configs, tmp_path
):
    prefix, output_dir = f"{local_hub.user}/sweep-launch", tmp_path / "hub-sweep"
    before = len(local_hub.find_requests("POST", r"/api/jobs/"))
    jobs = sweep.main(launch_args(local_hub, configs, output_dir, prefix, "--push_to_hub"))
    requests = local_hub.find_requests("POST", r"/api/jobs/")[before:]
    assert len(requests) == 4
    assert sorted(jobs) == ["convnext-micro/seed0", "convnext-micro/seed1", "vit-micro/seed0", "vit-micro/seed1"]
    for request in requests:
        spec, command = request["json"], request["json"]["command"]
        assert spec["flavor"] == "a10g-small" and spec["timeoutSeconds"] == 2 * 3600
        assert spec["secrets"] == {"HF_TOKEN": local_hub.token}
        assert local_hub.token not in json.dumps(command) + json.dumps(spec.get("environment"))
        assert command[:3] == ["uv", "run", "/data/train_vit.py"] and command.count("--push_to_hub") == 1
        slug = "vit-micro" if "vit" in command[command.index("--model_config_json") + 1] else "convnext-micro"
        seed = command[command.index("--seed") + 1]
        assert command[command.index("--hub_model_id") + 1] == f"{prefix}-{slug}-seed{seed}"
        # The config travels inline: a Job cannot read a local file.
        assert json.loads(command[command.index("--model_config_json") + 1]) == TINY_MODELS[slug]
        assert command[command.index("--dataset_name") + 1] == f"{local_hub.user}/lymphus"
        assert command[-4:] == ["--roi", "crop", "--num_train_epochs", "20"]
    assert {remote.split("/", 1)[1] for _, remote in bucket_recorder["add"]} >= {"train_vit.py", "lymphus_ml/hub.py"}
    recorded = (output_dir / "jobs.json").read_text()
    assert local_hub.token not in recorded + (output_dir / "sweep.json").read_text()
    assert json.loads(recorded)["runs"]["vit-micro/seed1"]["repo_id"] == f"{prefix}-vit-micro-seed1"
    # Again: every job is running, nothing is resubmitted; one that ended in error is.
    failed_id = jobs["convnext-micro/seed1"]["job_id"]
    sweep.main(launch_args(local_hub, configs, output_dir, prefix))
    assert len(local_hub.find_requests("POST", r"/api/jobs/")) == before + 4
    local_hub.jobs[failed_id]["status"] = {"stage": "ERROR", "message": "CUDA out of memory"}
    jobs = sweep.main(launch_args(local_hub, configs, output_dir, prefix))
    (resubmitted,) = local_hub.find_requests("POST", r"/api/jobs/")[before + 4:]
    assert resubmitted["json"]["command"][resubmitted["json"]["command"].index("--seed") + 1] == "1"
    assert jobs["convnext-micro/seed1"]["job_id"] != failed_id


def test_launch_on_hub_refuses_what_a_job_cannot_read(local_hub, configs, export_dir, tmp_path):
    base = launch_args(local_hub, configs, tmp_path / "x", f"{local_hub.user}/sw")
    for option, local_folder in (("--dataset_name", export_dir), ("--models", tmp_path)):
        arguments = list(base)
        arguments[arguments.index(option) + 1] = str(local_folder)
        with pytest.raises(ValueError, match=f"{option} .* is a local folder, which a Hub Job cannot read"):
            sweep.main(arguments)
    no_prefix = base[:base.index("--hub_model_id_prefix")] + base[base.index("--hub_model_id_prefix") + 2:]
    with pytest.raises(ValueError, match="needs --hub_model_id_prefix"):
        sweep.main(no_prefix)
    assert not (tmp_path / "x").exists()


TOKEN_LIKE = "hf_" + "Ab3" * 10  # what a Hub token looks like (hf_ + 30 letters and digits); not a real one


@pytest.mark.parametrize("option", ["--hubtoken", "--hub_tokens", "--HUB_TOKEN", "--token", "--hub.token"])
def test_a_misspelt_token_option_is_refused_before_anything_is_written_or_submitted(
    option, local_hub, bucket_recorder, configs, export_dir, tmp_path
):
    jobs_before = len(local_hub.find_requests("POST", r"/api/jobs/"))
    secret = "not-token-shaped-but-secret"
    launch = launch_args(local_hub, configs, tmp_path / "hub", f"{local_hub.user}/sw", "--push_to_hub")
    local = sweep_args(export_dir, tmp_path / "local", [configs["vit-micro"]], "0")
    for arguments in (launch + [option, secret], local + [f"{option}={secret}"]):
        with pytest.raises(ValueError, match=rf"^{re.escape(option)} is an option of neither sweep.py nor train_vit.py") as refused:
            sweep.main(arguments)
        assert secret not in str(refused.value)
    for arguments in (launch + [option, TOKEN_LIKE], local + ["--run_name", TOKEN_LIKE]):
        with pytest.raises(ValueError, match="looks like a Hub token") as refused:
            sweep.main(arguments)
        assert TOKEN_LIKE not in str(refused.value) and "hf_" not in str(refused.value)
    assert len(local_hub.find_requests("POST", r"/api/jobs/")) == jobs_before and "add" not in bucket_recorder
    assert not (tmp_path / "hub").exists() and not (tmp_path / "local").exists()


def test_a_token_value_is_refused_in_the_sweep_s_own_options_too_and_never_quoted(capsys):
    with pytest.raises(ValueError, match=r"looks like a Hub token \(given to --max_parallel_runs\)") as refused:
        sweep.parse_sweep_arguments(["--models", "a/b", "--output_dir", "o", "--max_parallel_runs", TOKEN_LIKE])
    assert TOKEN_LIKE not in str(refused.value) + capsys.readouterr().err
    # The token itself, as --hub_token, is the one place it may be given.
    parsed, _, _ = sweep.parse_sweep_arguments(["--models", "a/b", "--output_dir", "o", "--hub_token", TOKEN_LIKE])
    assert parsed.hub_token == TOKEN_LIKE


def test_launch_on_hub_refuses_local_paths_and_broken_configs_before_the_first_job(
    local_hub, bucket_recorder, configs, tmp_path
):
    jobs_before = len(local_hub.find_requests("POST", r"/api/jobs/"))
    segmenter = tmp_path / "my-segmenter"
    segmenter.mkdir()
    base = launch_args(local_hub, configs, tmp_path / "x", f"{local_hub.user}/sw")
    for extra in (["--segmenter_name_or_path", str(segmenter)], [f"--image_processor_name={segmenter}"]):
        with pytest.raises(ValueError, match=rf"--\w+ {re.escape(str(segmenter))} is a local path, which a Hub Job cannot read"):
            sweep.main(base + extra)
    broken = tmp_path / "broken.json"
    broken.write_text('{"model_type": "vit",')  # listed after a valid config: no Job may go out for either
    arguments = list(base)
    arguments[arguments.index("--models") + 1] = f"{configs['vit-micro']},{broken}"
    with pytest.raises(ValueError, match=f"--models {re.escape(str(broken))} is not valid JSON"):
        sweep.main(arguments)
    assert len(local_hub.find_requests("POST", r"/api/jobs/")) == jobs_before
    assert not (tmp_path / "x").exists()


def test_collect_never_shows_an_earlier_sweep_s_results_as_this_sweep_s(
    local_hub, bucket_recorder, swept, configs, tmp_path
):
    """Every repo holds an earlier sweep's results when the new Jobs are submitted: only a Job that completed and
    pushed afterwards counts as finished, with its own numbers; the others say what their job is doing."""
    from huggingface_hub import HfApi

    api, prefix, output_dir = HfApi(token=local_hub.token), f"{local_hub.user}/sweep-stale", tmp_path / "stale"
    keys = ["vit-micro/seed0", "vit-micro/seed1", "convnext-micro/seed0", "convnext-micro/seed1"]

    def push(key, source):
        slug, seed = key.split("/")
        repo_id = f"{prefix}-{slug}-{seed}"
        api.create_repo(repo_id, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=swept / "runs" / source,
                                 ignore_patterns=["checkpoint-*", "*.bin", "*.safetensors", "*.png"]).oid

    other_seed = {"seed0": "seed1", "seed1": "seed0"}
    for key in keys:  # the earlier sweep: each repo holds the other seed's results
        slug, seed = key.split("/")
        push(key, f"{slug}/{other_seed[seed]}")
    jobs = sweep.main(launch_args(local_hub, configs, output_dir, prefix))
    new_commit = push("vit-micro/seed0", "vit-micro/seed0")  # this sweep's Job pushes, then completes
    stages = {"vit-micro/seed0": "COMPLETED", "vit-micro/seed1": "RUNNING", "convnext-micro/seed0": "ERROR",
              "convnext-micro/seed1": "COMPLETED"}  # the last completed without pushing anything
    for key, stage in stages.items():
        local_hub.jobs[jobs[key]["job_id"]]["status"] = {"stage": stage, "message": None}

    rows = {leaderboard.run_key(row): row for row in sweep.main(
        ["--collect", "--output_dir", str(output_dir), "--hub_token", local_hub.token])}
    assert {key: rows[key]["status"] for key in keys} == {
        "vit-micro/seed0": "finished", "vit-micro/seed1": "running", "convnext-micro/seed0": "failed",
        "convnext-micro/seed1": "failed",
    }
    local = {leaderboard.run_key(row): row for row in read_csv(swept / "leaderboard.csv")}
    assert rows["vit-micro/seed0"]["external_auc"] == pytest.approx(float(local["vit-micro/seed0"]["external_auc"]))
    assert rows["vit-micro/seed0"]["hub_commit"] == new_commit
    for key in keys[1:]:
        assert rows[key].get("external_auc") is None, key  # the earlier numbers are not shown
        assert "committed before this job was created" in rows[key]["error"] and "not shown" in rows[key]["error"]
    assert "RUNNING" in rows["vit-micro/seed1"]["error"] and "pushed no results" in rows["convnext-micro/seed1"]["error"]
    markdown = (output_dir / "leaderboard.md").read_text()
    assert "| `vit-micro` | 1/2 |" in markdown and "| `convnext-micro` | 0/2 |" in markdown
    assert "4 runs: 1 finished, 1 running, 2 failed." in markdown


def test_collect_builds_the_same_leaderboard_from_hub_repos_and_names_unfinished_runs(
    local_hub, bucket_recorder, swept, configs, tmp_path
):
    from huggingface_hub import HfApi, ModelCard, ModelCardData

    from lymphus_ml import cards

    prefix, output_dir = f"{local_hub.user}/sweep-collect", tmp_path / "collect"
    jobs = sweep.main(launch_args(local_hub, configs, output_dir, prefix))
    api = HfApi(token=local_hub.token)
    uploads = {  # a full run folder (metrics files), a card and predictions only (model-index), nothing
        "vit-micro/seed0": None, "convnext-micro/seed0": None, "vit-micro/seed1": ["README.md", "predictions.csv"],
    }
    for key, allow in uploads.items():
        slug, seed = key.split("/")
        repo_id = f"{prefix}-{slug}-{seed}"
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=swept / "runs" / key, allow_patterns=allow,
                          ignore_patterns=["checkpoint-*", "*.bin"])
        if allow is not None:
            # The swept runs trained on a local export, so their cards have no model-index: the card of the same run
            # on a Hub dataset (the model-index train_vit.py writes for one) stands in.
            assert "model-index" not in ModelCard.load(swept / "runs" / key / "README.md").data.to_dict()
            split_metrics = {split: json.loads((swept / "runs" / key / f"metrics_{split}.json").read_text())
                             for split in ("validation", "test", "external")}
            results = cards.classification_eval_results(split_metrics, f"{local_hub.user}/lymphus", "center1", "center2")
            card = ModelCard.from_template(ModelCardData(model_name=key, eval_results=results))
            api.upload_file(path_or_fileobj=str(card).encode(), path_in_repo="README.md", repo_id=repo_id)
    for key in uploads:  # a run is finished only when its job completed (and pushed after it was created)
        local_hub.jobs[jobs[key]["job_id"]]["status"] = {"stage": "COMPLETED", "message": None}
    failed = {"stage": "ERROR", "message": "CUDA out of memory"}
    local_hub.jobs[jobs["convnext-micro/seed1"]["job_id"]]["status"] = failed

    rows = {f"{row['model_slug']}/seed{row['seed']}": row for row in sweep.main(
        ["--collect", "--output_dir", str(output_dir), "--hub_token", local_hub.token])}
    local = {f"{row['model_slug']}/seed{row['seed']}": row for row in read_csv(swept / "leaderboard.csv")}
    assert [rows[key]["status"] for key in sorted(rows)] == ["finished", "failed", "finished", "finished"]
    assert "ERROR: CUDA out of memory" in rows["convnext-micro/seed1"]["error"]
    for key in uploads:
        for column in ("validation_auc", "test_auc", "external_auc", "external_auc_ci_low", "external_auc_ci_high",
                       "external_sensitivity", "external_specificity_ci_high"):
            card_only = uploads[key] is not None
            if card_only and "specificity" in column:  # no Hub metric id, so not in model-index: metrics files only
                assert rows[key].get(column) is None and local[key][column], (key, column)
                continue
            # From the card's model-index the interval bounds are read off its display name, at 3 decimals.
            tolerance = 5e-4 if card_only and column.endswith(("_ci_low", "_ci_high")) else 1e-12
            assert rows[key][column] == pytest.approx(float(local[key][column]), abs=tolerance), (key, column)
        assert rows[key]["hub_repo"] == f"{prefix}-{key.replace('/', '-')}"
    collected = read_csv(output_dir / "leaderboard.csv")
    assert len(collected) == 4 and {row["job_id"] for row in collected} == {job["job_id"] for job in jobs.values()}
    markdown = (output_dir / "leaderboard.md").read_text()
    assert "| `vit-micro` | 2/2 |" in markdown and "| `convnext-micro` | 1/2 |" in markdown
    assert "`convnext-micro` seed 1: failed" in markdown and (output_dir / "forest_external_auc.png").is_file()

    # Without jobs.json (another machine): the runs from --models, --seeds and the prefix; no job to ask.
    elsewhere = tmp_path / "elsewhere"
    models = f"{configs['vit-micro']},{configs['convnext-micro']}"
    rows = sweep.main(["--collect", "--output_dir", str(elsewhere), "--hub_token", local_hub.token,
                       "--hub_model_id_prefix", prefix, "--models", models, "--seeds", "0,1"])
    missing = [row for row in rows if row["status"] != "finished"]
    assert [(row["model_slug"], row["seed"], row["status"]) for row in missing] == [("convnext-micro", 1, "not found")]
    assert "still running or failed" in missing[0]["error"]
