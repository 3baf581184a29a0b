"""The trainers' output folder, push, distributed runs and Hub Jobs (issue #16): nothing of the user's published,
deleted or overwritten; one process writes and pushes; each process augments differently; no local path in a Job.

Runs on a tiny synthetic export (4 cases per centre and label) with --max_steps 2, --saliency none, --n_bootstrap 0.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import train_segformer  # noqa: E402
import train_vit  # noqa: E402
from lymphus_ml import cli, data, hub, images, run_folder, training  # noqa: E402


TINY_VIT = json.dumps({"model_type": "vit", "image_size": 32, "patch_size": 8, "num_hidden_layers": 1,
                       "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64})


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    return data.write_synthetic_export(tmp_path_factory.mktemp("hardening") / "synthetic", scale=0.1, cases_per_group=4)


def tiny_args(export, output_dir, *extra):
    return ["--dataset_name", str(export), "--dataset_config", "center1", "--external_config", "center2",
            "--model_config_json", TINY_VIT, "--output_dir", str(output_dir), "--max_steps", "2",
            "--save_strategy", "steps", "--save_steps", "1", "--eval_strategy", "steps", "--eval_steps", "1",
            "--per_device_train_batch_size", "2", "--saliency", "none", "--n_bootstrap", "0", "--use_cpu",
            "--report_to", "none", "--disable_tqdm", "True", "--seed", "0", *extra]


def snapshot(folder) -> dict:
    return {path.relative_to(folder).as_posix(): path.read_bytes() if path.is_file() else None
            for path in sorted(Path(folder).rglob("*"))}


# 1. --push_to_hub uploads exactly what the run wrote


def test_push_uploads_only_the_files_the_run_wrote(local_hub, tiny_export, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    output_dir, repo_id = tmp_path / "run", f"{local_hub.user}/hardening-push"
    saved = train_vit.save_inference_settings

    def user_copies_a_file_in(trainer, youden, data_args, output_dir):  # the user's file lands beside the results
        (output_dir / "patients.csv").write_text("name,birth_date\nJane Doe,1970-01-01\n")
        return saved(trainer, youden, data_args, output_dir)

    monkeypatch.setattr(train_vit, "save_inference_settings", user_copies_a_file_in)
    train_vit.main(tiny_args(tiny_export, output_dir, "--push_to_hub", "--hub_model_id", repo_id, "--hub_token", local_hub.token))

    marker = json.loads((output_dir / run_folder.RUN_MARKER).read_text())
    assert marker["status"] == "complete" and "patients.csv" not in marker["files"]
    uploaded = set(HfApi(token=local_hub.token).list_repo_files(repo_id)) - {".gitattributes"}
    assert "patients.csv" not in uploaded
    expected = {name for name, entry in marker["files"].items() if entry["run"] == marker["run"]
                and not name.startswith(("checkpoint-", "synthetic-lymphus/")) and not name.endswith(".bin")}
    assert uploaded == expected and {"README.md", "model.safetensors", "predictions.csv"} <= uploaded
    assert [commit["title"] for commit in local_hub.commits(repo_id)].count("LymphUs classifier") == 1  # one commit
    assert (output_dir / "patients.csv").read_text().startswith("name,birth_date")  # left as it was
    # and the folder is no longer ours alone: a new run into it is refused, naming the file
    with pytest.raises(run_folder.OutputFolderError, match=r"'patients.csv' \(not written by a run\)"):
        train_vit.main(tiny_args(tiny_export, output_dir))


def test_push_refuses_a_folder_no_finished_run_wrote(tmp_path):
    (tmp_path / "patients.csv").write_text("x\n")
    with pytest.raises(run_folder.OutputFolderError, match="no complete .lymphus-run.json"):
        hub.push_run_to_hub(tmp_path, "someone/repo", "hf_not_used")


def test_push_with_hub_private_repo_refuses_an_existing_public_repo(local_hub, tmp_path):
    from huggingface_hub import HfApi

    repo_id = f"{local_hub.user}/hardening-public"
    HfApi(token=local_hub.token).create_repo(repo_id, private=False)
    run = run_folder.RunFolder.claim(tmp_path, "train_vit.py")
    (tmp_path / "README.md").write_text("# card\n")
    run.complete()
    with pytest.raises(ValueError, match="already exists and is public.*nothing was uploaded"):
        hub.push_run_to_hub(tmp_path, repo_id, local_hub.token, private=True)
    assert HfApi(token=local_hub.token).list_repo_files(repo_id) in ([], [".gitattributes"])


# 2. --output_dir: refused unless new, empty or ours


def test_a_folder_with_the_users_files_is_refused_before_anything_is_written(tiny_export, tmp_path, capsys):
    output_dir = tmp_path / "theirs"
    (output_dir / "checkpoint-3").mkdir(parents=True)
    (output_dir / "checkpoint-3" / "notes.txt").write_text("my checkpoint\n")
    (output_dir / "README.md").write_text("# my notes\n")
    before = snapshot(output_dir)
    with pytest.raises(SystemExit) as exited:
        cli.run(lambda: train_vit.main(tiny_args(tiny_export, output_dir)), [])
    err = capsys.readouterr().err
    assert exited.value.code == 1 and err.startswith("error: --output_dir") and "Traceback" not in err
    assert "'README.md'" in err and "'checkpoint-3/'" in err and "nothing was trained, written or deleted" in err
    assert snapshot(output_dir) == before  # no marker, no checkpoint rotation, no README


def test_a_link_or_a_foreign_marker_is_refused(tmp_path):
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target", target_is_directory=True)
    with pytest.raises(run_folder.OutputFolderError, match="is a link"):
        run_folder.RunFolder.claim(tmp_path / "link", "train_vit.py")
    (tmp_path / "target" / run_folder.RUN_MARKER).write_text('{"format": "lymphus-run", "files": {"a": 1}}')
    with pytest.raises(run_folder.OutputFolderError, match="not a marker written by a training run"):
        run_folder.RunFolder.claim(tmp_path / "target", "train_vit.py")


def test_our_own_interrupted_run_is_resumed_in_place_and_a_changed_file_refused(tiny_export, tmp_path, monkeypatch):
    output_dir = tmp_path / "ours"
    record = training.RunFolderCallback.on_save

    def killed_after_the_first_checkpoint(self, args, state, control, **kwargs):
        record(self, args, state, control, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(training.RunFolderCallback, "on_save", killed_after_the_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train_vit.main(tiny_args(tiny_export, output_dir))
    monkeypatch.undo()
    marker = json.loads((output_dir / run_folder.RUN_MARKER).read_text())
    assert marker["status"] == "running" and "checkpoint-1/model.safetensors" in marker["files"]

    train_vit.main(tiny_args(tiny_export, output_dir, "--resume_from_checkpoint", "last"))
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and [entry["step"] for entry in state["log_history"] if "eval_roc_auc" in entry] == [1, 2]
    marker = json.loads((output_dir / run_folder.RUN_MARKER).read_text())
    assert marker["status"] == "complete" and run_folder.run_folder_discrepancies(output_dir) == []
    assert {"checkpoint-1/model.safetensors", "checkpoint-2/model.safetensors", "README.md"} <= set(marker["files"])

    (output_dir / "README.md").write_text("# edited by hand\n")
    with pytest.raises(run_folder.OutputFolderError, match=r"'README.md' \(changed since a run wrote it\)"):
        train_vit.main(tiny_args(tiny_export, output_dir))


def test_a_run_that_failed_after_writing_reports_leaves_a_folder_it_may_reuse(tiny_export, tmp_path, monkeypatch):
    output_dir, claimed = tmp_path / "failed", []
    claim = training.claim_output_dir
    monkeypatch.setattr(train_vit, "claim_output_dir", lambda *args: claimed.append(claim(*args)) or claimed[-1])

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train_vit, "save_inference_settings", disk_full)
    with pytest.raises(OSError, match="No space left"):
        train_vit.main(tiny_args(tiny_export, output_dir))
    claimed[0].record_if_unfinished()  # what the exit of the process does
    marker = json.loads((output_dir / run_folder.RUN_MARKER).read_text())
    assert marker["status"] == "failed" and "metrics_validation.json" in marker["files"]
    with pytest.raises(run_folder.OutputFolderError, match="no complete"):
        hub.push_run_to_hub(output_dir, "someone/repo", "hf_not_used")  # a failed run is never pushed
    run_folder.RunFolder.claim(output_dir, "train_vit.py")  # the next run may reuse it


def test_a_folder_another_live_run_is_writing_is_refused(tmp_path):
    run_folder.RunFolder.claim(tmp_path, "train_vit.py")
    marker = json.loads((tmp_path / run_folder.RUN_MARKER).read_text())
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "train_vit.py"])
    try:
        for _ in range(100):  # its command line shows once its exec is done
            if b"train_vit.py" in Path(f"/proc/{other.pid}/cmdline").read_bytes():
                break
            time.sleep(0.05)
        (tmp_path / run_folder.RUN_MARKER).write_text(json.dumps({**marker, "pid": other.pid}))
        with pytest.raises(run_folder.OutputFolderError, match=f"being written by another run \\(pid {other.pid} on"):
            run_folder.RunFolder.claim(tmp_path, "train_vit.py")
    finally:
        other.kill()
        other.wait()
    run_folder.RunFolder.claim(tmp_path, "train_vit.py")  # that run is gone: an interrupted run of ours, reusable


def test_a_rerun_deletes_only_the_earlier_runs_stale_results(tmp_path):
    first = run_folder.RunFolder.claim(tmp_path, "train_vit.py")
    (tmp_path / "checkpoint-9").mkdir()
    for name in ("metrics_test_predicted_roi.json", "metrics_test.json", "checkpoint-9/model.safetensors"):
        (tmp_path / name).write_text("first\n")
    assert first.complete() == []
    second = run_folder.RunFolder.claim(tmp_path, "train_vit.py")
    (tmp_path / "metrics_test.json").write_text("second\n")
    assert second.complete() == ["metrics_test_predicted_roi.json"]  # stale, ours: gone
    assert (tmp_path / "checkpoint-9" / "model.safetensors").is_file()  # a checkpoint of ours stays (resume, rotation)
    assert run_folder.files_written_by_last_run(tmp_path) == ["metrics_test.json"]
    assert run_folder.run_folder_discrepancies(tmp_path) == []


def test_sweeps_own_files_do_not_make_a_folder_foreign(tmp_path):
    (tmp_path / "train_vit.log").write_text("log\n")
    run = run_folder.RunFolder.claim(tmp_path, "train_vit.py")
    (tmp_path / "metrics_test.json").write_text("{}\n")
    run.complete()
    assert run.written() == ["metrics_test.json"] and run_folder.files_written_by_last_run(tmp_path) == ["metrics_test.json"]


# 3. torchrun / accelerate launch


def test_each_process_draws_its_own_augmentation():
    assert len({training.process_seed(0, rank) for rank in range(4)}) == 4
    augmentation, draws = images.BatchAugmentation((32, 32)), {}
    for rank in (0, 1, 0):
        args = SimpleNamespace(world_size=2, process_index=rank, seed=0)
        torch.manual_seed(0)  # what the Trainer does on every process alike
        training.ProcessSeedCallback().on_train_begin(args, None, None)
        draw = augmentation.random_parameters(4)["angle"]
        assert rank not in draws or (draws[rank] == draw).all()  # reproducible per process
        draws[rank] = draw
    assert not (draws[0] == draws[1]).any()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    training.ProcessSeedCallback().on_train_begin(SimpleNamespace(world_size=1, process_index=0, seed=5), None, None)
    assert torch.equal(torch.rand(3), expected)  # one process: left as the Trainer seeded it


def test_only_the_first_process_claims_the_folder(tmp_path):
    assert training.claim_output_dir(SimpleNamespace(process_index=1, output_dir=str(tmp_path / "o")), "train_vit.py") is None
    assert not (tmp_path / "o").exists()
    assert isinstance(training.claim_output_dir(SimpleNamespace(process_index=0, output_dir=str(tmp_path / "o")), "x"), run_folder.RunFolder)
    assert (tmp_path / "o" / run_folder.RUN_MARKER).is_file()


TORCHRUN_DRIVER = """
import json, os, sys
sys.path.insert(0, os.environ["REPO"])
import lymphus_ml.data as data
import lymphus_ml.images as images

real_export, real_draw = data.write_synthetic_export, images.BatchAugmentation.random_parameters


def tiny_export(folder, **kwargs):  # the demo's export, tiny; each call noted with the process that made it
    with open(os.environ["EXPORT_CALLS"], "a") as handle:
        handle.write(os.environ["RANK"] + "\\n")
    return real_export(folder, scale=0.1, cases_per_group=4)


def noted_draw(self, n):  # each process's augmentation draws
    parameters = real_draw(self, n)
    with open(os.environ["DRAWS"] + "-" + os.environ["RANK"], "a") as handle:
        handle.write(json.dumps(parameters["angle"].tolist()) + "\\n")
    return parameters


data.write_synthetic_export, images.BatchAugmentation.random_parameters = tiny_export, noted_draw
import train_vit
from lymphus_ml.cli import run

run(lambda: train_vit.main(sys.argv[1:]))
"""


def test_torchrun_offline_demo_builds_once_augments_per_process_and_pushes_once(local_hub, tmp_path):
    """One real `torchrun --nproc_per_node 2` on CPU (gloo): ~25 CPU-s."""
    (tmp_path / "driver.py").write_text(TORCHRUN_DRIVER)
    output_dir, repo_id = tmp_path / "out", f"{local_hub.user}/hardening-torchrun"
    env = {**os.environ, "REPO": str(REPO), "EXPORT_CALLS": str(tmp_path / "calls"), "DRAWS": str(tmp_path / "draws"),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(tmp_path / "driver.py"),
               "--offline_demo", "--output_dir", str(output_dir), "--model_config_json", TINY_VIT, "--max_steps", "2",
               "--per_device_train_batch_size", "2", "--saliency", "none", "--n_bootstrap", "0", "--use_cpu",
               "--report_to", "none", "--disable_tqdm", "True", "--push_to_hub", "--hub_model_id", repo_id,
               "--hub_token", local_hub.token]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    log = completed.stdout + completed.stderr
    assert (tmp_path / "calls").read_text() == "0\n"  # the export, built by the first process only
    first_draws = [(tmp_path / f"draws-{rank}").read_text().splitlines()[0] for rank in (0, 1)]
    assert first_draws[0] != first_draws[1]  # each process its own augmentation
    assert log.count("Results in") == 1 and log.count("Pushed to") == 1
    assert [commit["title"] for commit in local_hub.commits(repo_id)].count("LymphUs classifier") == 1
    marker = json.loads((output_dir / run_folder.RUN_MARKER).read_text())
    assert marker["status"] == "complete" and run_folder.run_folder_discrepancies(output_dir) == []
    assert "checkpoint-2/rng_state_1.pth" in marker["files"]  # the other process's part of the checkpoint: ours
    rows = (output_dir / "predictions.csv").read_text().splitlines()[1:]
    assert len(rows) == len(set(rows)) == 2 + 2 + 8  # validation, test and external once each (4 cases per group)


# 4. --launch_on_hub with a local path


@pytest.mark.parametrize("script", [train_vit, train_segformer], ids=["train_vit", "train_segformer"])
def test_launch_on_hub_refuses_local_models_and_config_files(script, local_hub, tmp_path):
    (tmp_path / "my-model").mkdir()
    (tmp_path / "tiny.json").write_text(TINY_VIT)
    submitted = len(local_hub.requests)
    base = ["--launch_on_hub", "a10g-small", "--hub_token", local_hub.token, "--dataset_name", "someone/lymphus",
            "--output_dir", "x", "--push_to_hub"]
    with pytest.raises(ValueError, match=f"--model_name_or_path {tmp_path / 'my-model'} is a local path, which a Hub Job cannot read"):
        script.main(base + ["--model_name_or_path", str(tmp_path / "my-model")])
    with pytest.raises(ValueError, match=r"--model_config_json .*tiny.json is a file.*--model_config_json '\{\"model_type\":\"vit\""):
        script.main(base + ["--model_config_json", str(tmp_path / "tiny.json")])
    assert len(local_hub.requests) == submitted  # refused before anything reached the Hub
    hub.check_job_paths({"--model_config_json": TINY_VIT, "--model_name_or_path": "google/vit-base-patch16-224-in21k"})
