"""app.py hardening (issue #16): the offline demo deletes or replaces only what its .lymphus-demo.json proves it wrote
in --demo_dir, a failed demo training is one message, an incomplete synthetic export is never reused; --push_to_space
updates a Space only when space_config.json's record proves it ours, deletes exact file names only, makes an
existing Space private with --private, and answers a malformed space_config.json with one message.

The demo's training scripts are stand-ins (they write the files of a saved model, or fail): what is tested is the
demo folder's handling, not training. The Space tests push the tiny models of tests/test_app.py to the local hub."""

import functools
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_app import REPO, app, demo_dir, hub_models, hub_with_spaces, offline_demo, run  # noqa: F401 (fixtures)

from lymphus_ml import data
from lymphus_ml.runs import subprocess as runs_subprocess


assert str(REPO) in sys.path


STAND_IN = (
    "import pathlib, sys\nopen({calls!r}, 'a').write(' '.join(sys.argv) + '\\n')\n"
    "out = pathlib.Path(sys.argv[sys.argv.index('--output_dir') + 1])\n"
)


def stand_in_scripts(folder, fail=()) -> Path:
    """train_vit.py / train_segformer.py that record their command in <name>.calls and write a model's files into
    --output_dir, or, for the scripts in `fail`, print 'out of memory' and exit with status 3."""
    folder.mkdir(parents=True, exist_ok=True)
    for script in ("train_vit.py", "train_segformer.py"):
        body = STAND_IN.format(calls=str(folder / f"{script}.calls"))
        if script in fail:
            body += "print('out of memory')\nsys.exit(3)\n"
        else:
            body += f"for name in {offline_demo.MODEL_FILES!r}:\n    (out / name).write_text(name)\n"
        (folder / script).write_text(body)
    return folder


def calls(scripts, script) -> int:
    path = scripts / f"{script}.calls"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def snapshot(folder) -> dict:
    """{relative path: bytes} of every file under `folder`: to show nothing changed."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(Path(folder).rglob("*"))
            if path.is_file()}


def command(arguments, capsys):
    """app.py's command line in this process: (exit status, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        run(lambda: app.main(arguments), arguments)
    return exit_info.value.code, capsys.readouterr().err


def one_error(status, stderr) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert status == 1 and "Traceback" not in stderr and len(errors) == 1, stderr
    return stderr


@pytest.fixture(scope="module")
def prepared_demo(tmp_path_factory):
    """(folder, scripts): a demo folder as prepare_offline_demo leaves it (stand-in models, a 3-case export)."""
    scripts = stand_in_scripts(tmp_path_factory.mktemp("scripts"))
    folder = tmp_path_factory.mktemp("demo") / "demo"
    offline_demo.prepare_offline_demo(folder, cases_per_group=3, root=scripts)
    return folder, scripts


@pytest.fixture
def demo(prepared_demo, tmp_path):
    """A copy of the prepared demo folder, and fresh stand-in scripts."""
    folder = tmp_path / "demo"
    shutil.copytree(prepared_demo[0], folder)
    return folder, stand_in_scripts(tmp_path / "scripts")


def no_training(*args, **kwargs):
    raise AssertionError("a training script was started")


# 1. The demo folder is the user's too


def test_prepared_demo_records_what_it_wrote(prepared_demo):
    folder, _ = prepared_demo
    record = offline_demo.read_demo_record(folder)
    assert sorted(record) == ["classifier", "classifier.log", "segmenter", "segmenter.log", "synthetic-lymphus"]
    for name in ("classifier", "segmenter", "synthetic-lymphus"):  # sealed: every file with its SHA-256
        files = record[name]["files"]
        on_disk = sorted(p.relative_to(folder / name).as_posix() for p in (folder / name).rglob("*") if p.is_file())
        assert sorted(files) == on_disk
        for relative, entry in files.items():
            assert entry["sha256"] == hashlib.sha256((folder / name / relative).read_bytes()).hexdigest()
    assert not list(folder.glob(".*.partial-*"))


def test_a_users_incomplete_model_folder_is_refused_not_deleted(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "demo"
    (folder / "classifier").mkdir(parents=True)
    (folder / "classifier" / "my-notes.txt").write_text("mine\n")
    before = snapshot(folder)
    monkeypatch.setattr(runs_subprocess, "Popen", no_training)
    stderr = one_error(*command(["--offline_demo", "--demo_dir", str(folder)], capsys))
    assert f"'{folder / 'classifier'}' (not written by the offline demo" in stderr and "nothing was changed" in stderr
    assert snapshot(folder) == before and not (folder / "synthetic-lymphus").exists()


def test_the_demos_own_incomplete_model_is_replaced_a_user_file_in_it_refused(demo):
    folder, scripts = demo
    (folder / "classifier" / "model.safetensors").unlink()  # the demo's, incomplete: trained again
    paths = offline_demo.prepare_offline_demo(folder, root=scripts)
    assert offline_demo.model_folder_complete(paths["classifier"])
    assert (calls(scripts, "train_vit.py"), calls(scripts, "train_segformer.py")) == (1, 0)
    assert offline_demo.not_ours(folder, "classifier", offline_demo.read_demo_record(folder)) == []

    (folder / "segmenter" / "config.json").unlink()
    (folder / "segmenter" / "patients.csv").write_text("mine\n")  # a user's file in the demo's folder: refused
    before = snapshot(folder)
    message = r"segmenter/patients.csv' \(not written by the offline demo\)"
    with pytest.raises(offline_demo.DemoFolderError, match=message):
        offline_demo.prepare_offline_demo(folder, root=scripts)
    assert snapshot(folder) == before and calls(scripts, "train_segformer.py") == 0


@pytest.mark.parametrize("case", ["user log", "malformed record"])
def test_nothing_is_replaced_without_the_demos_record(demo, case):
    folder, scripts = demo
    shutil.rmtree(folder / "classifier")
    if case == "user log":
        record = offline_demo.read_demo_record(folder)
        del record["classifier.log"]  # the log is now a file the demo did not write
        offline_demo.write_demo_record(folder, record)
        message = r"classifier.log' \(not written by the offline demo"
    else:
        (folder / offline_demo.DEMO_RECORD).write_text("{not json")
        message = r"\.lymphus-demo\.json is not the offline demo's record"
    before = snapshot(folder)
    with pytest.raises(offline_demo.DemoFolderError, match=message):
        offline_demo.prepare_offline_demo(folder, root=scripts)
    assert snapshot(folder) == before and calls(scripts, "train_vit.py") == 0


def test_a_run_cut_short_is_cleaned_up_by_the_next_start(demo):
    folder, scripts = demo
    record = offline_demo.read_demo_record(folder)
    staging = offline_demo.claim(folder, ".classifier.partial-0123abcd", record)  # as a killed start leaves them
    (staging / "config.json").write_text("{}")
    shutil.rmtree(folder / "classifier")
    offline_demo.prepare_offline_demo(folder, root=scripts)
    assert offline_demo.model_folder_complete(folder / "classifier") and not staging.exists()
    assert ".classifier.partial-0123abcd" not in offline_demo.read_demo_record(folder)


SLEEPING_TRAINER = (
    "import os, pathlib, sys, time\n"
    "pathlib.Path({pids!r}, pathlib.Path(sys.argv[0]).name).write_text(str(os.getpid()))\ntime.sleep(300)\n"
)


def alive(pid) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killing_the_app_during_demo_training_leaves_no_trainer(tmp_path, sig):
    """app.py --offline_demo killed while its training scripts run: they end too (runs.py's PR_SET_PDEATHSIG,
    from the `sweep` branch), and the next start recovers the folder."""
    scripts, pids = tmp_path / "scripts", tmp_path / "pids"
    scripts.mkdir(), pids.mkdir()
    for script in ("train_vit.py", "train_segformer.py"):
        (scripts / script).write_text(SLEEPING_TRAINER.format(pids=str(pids)))
    folder = tmp_path / "demo"
    driver = (
        "import functools, app\nfrom lymphus_ml import offline_demo\nfrom lymphus_ml.cli import run\n"
        f"app.prepare_offline_demo = functools.partial(offline_demo.prepare_offline_demo, cases_per_group=3, "
        f"root={str(scripts)!r})\nrun(app.main)\n"
    )
    with open(tmp_path / "app.log", "w") as log:
        process = subprocess.Popen([sys.executable, "-c", driver, "--offline_demo", "--demo_dir", str(folder)],
                                   cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    started = []
    try:
        deadline = time.monotonic() + 120
        while len(started) < 2 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
            started = [int(path.read_text()) for path in pids.iterdir() if path.read_text()]
        assert len(started) == 2, (tmp_path / "app.log").read_text()
        process.send_signal(sig)
        process.wait(timeout=30)
        deadline = time.monotonic() + 20
        while any(alive(pid) for pid in started) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(alive(pid) for pid in started), "a training script outlived the app"
    finally:
        if process.poll() is None:
            process.kill()
        for pid in started:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    stand_in_scripts(scripts)
    offline_demo.prepare_offline_demo(folder, root=scripts)
    assert all(offline_demo.model_folder_complete(folder / name) for name in ("classifier", "segmenter"))
    assert not list(folder.glob(".*.partial-*"))


# 2. A failed training, an incomplete export


def test_a_failed_demo_training_is_one_message(tmp_path, monkeypatch, capsys):
    scripts = stand_in_scripts(tmp_path / "scripts", fail=("train_segformer.py",))
    folder = tmp_path / "demo"
    monkeypatch.setattr(app, "prepare_offline_demo",
                        functools.partial(offline_demo.prepare_offline_demo, cases_per_group=3, root=scripts))
    stderr = one_error(*command(["--offline_demo", "--demo_dir", str(folder)], capsys))
    assert "train_segformer.py --offline_demo failed (exit status 3)" in stderr and "out of memory" in stderr
    assert str(folder / "segmenter.log") in stderr and "train_vit.py --offline_demo failed" not in stderr
    assert not (folder / "segmenter").exists() and not list(folder.glob(".*.partial-*"))
    assert data.export_problems(folder / "synthetic-lymphus" / "export") == []


def test_an_incomplete_export_is_rebuilt_if_ours_refused_if_not(demo):
    folder, scripts = demo
    export = folder / "synthetic-lymphus" / "export"
    marker = json.loads((export / ".lymphus-export.json").read_text())
    parquet = sorted(name for name in marker["files"] if name.endswith(".parquet"))[0]
    (export / parquet).unlink()
    shutil.rmtree(folder / "segmenter")
    assert data.export_problems(export) == [f"'{parquet}' (listed in .lymphus-export.json but missing)"]
    offline_demo.prepare_offline_demo(folder, cases_per_group=3, root=scripts)
    assert data.export_problems(export) == [] and (export / parquet).is_file()  # rebuilt, then trained on
    assert calls(scripts, "train_segformer.py") == 1

    # A changed file is not the demo's to replace; nor is an export the record does not list.
    shutil.rmtree(folder / "segmenter")
    (export / parquet).write_bytes(b"edited")
    with pytest.raises(offline_demo.DemoFolderError, match=re.escape(f"{parquet}' (changed since the offline demo")):
        offline_demo.prepare_offline_demo(folder, root=scripts)
    record = offline_demo.read_demo_record(folder)
    del record["synthetic-lymphus"]
    offline_demo.write_demo_record(folder, record)
    (export / ".lymphus-export.json").unlink()
    before = snapshot(folder)
    with pytest.raises(offline_demo.DemoFolderError, match=r"synthetic-lymphus' \(not written by the offline demo"):
        offline_demo.prepare_offline_demo(folder, root=scripts)
    assert snapshot(folder) == before and calls(scripts, "train_segformer.py") == 1


def test_a_synthetic_export_is_reused_only_when_complete(prepared_demo, tmp_path):
    export = tmp_path / "synthetic" / "export"
    shutil.copytree(prepared_demo[0] / "synthetic-lymphus" / "export", export)
    (export / ".lymphus-export.json").unlink()  # no marker: not reused; not ours to replace either
    import lymphus

    with pytest.raises(lymphus.OutputFolderError, match="nothing was replaced"):
        data.write_synthetic_export(export.parent, cases_per_group=3, reuse=True)
    assert not (export / ".lymphus-export.json").exists()


# 3. A Space is ours only if our record proves it


def space_arguments(space_id, hub, hub_models):
    return ["--push_to_space", space_id, "--classifier", hub_models["classifier"], "--segmenter",
            hub_models["segmenter"], "--hub_token", hub.token]


def upload(hub, space_id, path, content):
    from huggingface_hub import HfApi

    HfApi(token=hub.token).upload_file(path_or_fileobj=content, path_in_repo=path, repo_id=space_id, repo_type="space")


def test_a_space_with_a_changed_app_or_a_file_we_did_not_ship_is_refused(hub_with_spaces, hub_models, capsys):
    hub, space_id = hub_with_spaces, f"{hub_with_spaces.user}/hardening-edited"
    arguments = space_arguments(space_id, hub, hub_models)
    app.main(arguments)
    upload(hub, space_id, "app.py", b"print('my own app')\n")
    commits = len(hub.commits(space_id, "space"))
    stderr = one_error(*command(arguments, capsys))
    assert "has app.py (changed since `app.py --push_to_space` shipped it)" in stderr, stderr
    assert hub.read_file(space_id, "app.py", "space") == b"print('my own app')\n"
    assert len(hub.commits(space_id, "space")) == commits

    # Restored, but a file we would ship that our record does not list (the user's own requirements.txt).
    upload(hub, space_id, "app.py", (REPO / "app.py").read_bytes())
    config = json.loads(hub.read_file(space_id, "space_config.json", "space"))
    del config["files"]["requirements.txt"]
    upload(hub, space_id, "space_config.json", json.dumps(config).encode())
    commits = len(hub.commits(space_id, "space"))
    stderr = one_error(*command(arguments, capsys))
    assert "requirements.txt (not shipped by `app.py --push_to_space`)" in stderr
    assert len(hub.commits(space_id, "space")) == commits


def test_recorded_names_are_deleted_exactly_never_as_patterns(hub_with_spaces, hub_models):
    hub, space_id = hub_with_spaces, f"{hub_with_spaces.user}/hardening-patterns"
    arguments = space_arguments(space_id, hub, hub_models)
    app.main(arguments)
    config = json.loads(hub.read_file(space_id, "space_config.json", "space"))
    config["files"]["*.md"] = {"sha256": "0" * 64, "git_oid": "0" * 40}  # a pattern is only a name that is not there
    upload(hub, space_id, "space_config.json", json.dumps(config).encode())
    upload(hub, space_id, "notes.md", b"my notes\n")
    app.main(arguments)
    files = hub.commits(space_id, "space")[-1]["files"]
    assert hub.read_file(space_id, "notes.md", "space") == b"my notes\n" and "README.md" in files
    assert "*.md" not in json.loads(hub.read_file(space_id, "space_config.json", "space"))["files"]


def test_a_malformed_space_config_is_one_message(hub_with_spaces, hub_models, capsys):
    hub, space_id = hub_with_spaces, f"{hub_with_spaces.user}/hardening-malformed"
    arguments = space_arguments(space_id, hub, hub_models)
    app.main(arguments)
    for text in (b"{not json", json.dumps({"files": ["app.py", "*.md"]}).encode()):  # not JSON; the old list form
        upload(hub, space_id, "space_config.json", text)
        commits = len(hub.commits(space_id, "space"))
        stderr = one_error(*command(arguments, capsys))
        assert "has a space_config.json that is not the record `app.py --push_to_space` writes" in stderr
        assert len(hub.commits(space_id, "space")) == commits


def test_private_makes_an_existing_public_space_private(hub_with_spaces, hub_models, caplog):
    from huggingface_hub import HfApi

    hub, space_id = hub_with_spaces, f"{hub_with_spaces.user}/hardening-private"
    arguments = space_arguments(space_id, hub, hub_models)
    app.main(arguments)
    api = HfApi(token=hub.token)
    assert not api.space_info(space_id).private
    with caplog.at_level("INFO", logger="lymphus_ml.space"):
        app.main([*arguments, "--private"])
    assert api.space_info(space_id).private and hub.repos[("space", space_id)]["private"]
    assert f"Space {space_id} was public: made private" in caplog.text
