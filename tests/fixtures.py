"""Session fixtures shared by the test files: the synthetic exports and the tiny trained models, each built once.

Imported by tests/conftest.py after its local-Hub block has set the environment, so nothing here
may import huggingface_hub / datasets / transformers at module level. Test files import the argument helpers:
`from fixtures import TINY_VIT, vit_args` (tests/ is on sys.path: pytest's rootdir-relative "prepend" import mode).

- `small_export`: synthetic archives in the official format, 10 cases per centre and label, images ~40-120 px, exported.
- `official_archives` / `official_export`: synthetic archives with the official counts, sizes and mask extents,
  and their export (338 cases).
- `crop_classifier`: a tiny ViT trained by train_vit.py on `small_export`, --roi crop, 2 epochs, balanced class
  weights, no saliency.
- `full_classifier`: a tiny ViT trained by train_vit.py on `small_export`, --roi full, 1 epoch, with the default
  occlusion saliency (the saliency tests read it).
- `segmenter`: a tiny SegFormer trained by train_segformer.py on `small_export`, 3 epochs.
- `run_cli` (per test): a script's command line run in this process through `lymphus_ml.cli.run`.
- `run_script_in_process`: a stand-in for `lymphus_ml.runs.run_script` where a test reads what a script's run wrote
  (the sweep's and the benchmark's train_vit.py runs), not how its process behaves.
- `bucket_recorder` (per test): the local hub has no buckets (xet); records what `HfApi.sync_job_volume` (launch_job)
  would upload to the Jobs artifacts bucket: "bucket", "add" [(bytes, remote path)]; "public" makes it a public one.
"""

import contextlib
import importlib
import json
import sys
import threading
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TINY_VIT = json.dumps({"model_type": "vit", "image_size": 32, "patch_size": 8, "num_hidden_layers": 1, "hidden_size": 32,
                       "num_attention_heads": 2, "intermediate_size": 64})
TINY_SEGFORMER = json.dumps({"model_type": "segformer", "depths": [1, 1, 1, 1], "hidden_sizes": [8, 16, 32, 64],
                             "num_attention_heads": [1, 1, 2, 2], "decoder_hidden_size": 32})
COMMON = ["--dataset_config", "center1", "--external_config", "center2", "--seed", "0", "--use_cpu", "--report_to",
          "none", "--disable_tqdm", "True"]
SMALL_EXPORT = {"cases_per_group": 10, "scale": 0.15}


def vit_args(dataset, output_dir, *extra):
    """train_vit.py arguments of `crop_classifier` (a tiny crop ViT, 2 epochs, no saliency); `extra` appended."""
    return ["--dataset_name", str(dataset), "--model_config_json", TINY_VIT, "--roi", "crop", "--output_dir",
            str(output_dir), "--num_train_epochs", "2", "--per_device_train_batch_size", "4",
            "--per_device_eval_batch_size", "8", "--learning_rate", "1e-3", "--n_bootstrap", "200",
            "--class_weighting", "balanced", "--saliency", "none", *COMMON, *extra]


def full_vit_args(dataset, output_dir, roi="full", *extra):
    """train_vit.py arguments of `full_classifier` (1 epoch, occlusion saliency on); `extra` appended."""
    return ["--dataset_name", str(dataset), "--model_config_json", TINY_VIT, "--roi", roi, "--output_dir",
            str(output_dir), "--num_train_epochs", "1", "--per_device_train_batch_size", "8", "--learning_rate",
            "1e-3", "--n_bootstrap", "50", *COMMON, *extra]


def segformer_args(dataset, output_dir, *extra, epochs=3):
    """train_segformer.py arguments of `segmenter` (a tiny SegFormer at 64 px); `extra` appended."""
    return ["--dataset_name", str(dataset), "--model_config_json", TINY_SEGFORMER, "--image_size", "64",
            "--output_dir", str(output_dir), "--num_train_epochs", str(epochs), "--per_device_train_batch_size", "2",
            "--per_device_eval_batch_size", "4", "--learning_rate", "5e-3", "--n_bootstrap", "200", *COMMON, *extra]


_ONE_SCRIPT_AT_A_TIME = threading.Lock()


def run_script_in_process(script, arguments, log_path=None, env=None, cwd=None, check=True, what=None) -> int:
    """`lymphus_ml.runs.run_script` without the process: the script's `main(arguments)` in this one, through
    `lymphus_ml.cli.run` as its `__main__` runs it, with its stdout and stderr in `log_path`. For tests that read what
    the runs of a sweep or a benchmark wrote: each real child pays ~8 CPU-s of imports (torch, transformers' Trainer)
    for ~2 s of training a tiny model. One run at a time (a run seeds the global random generators), whatever the
    caller's parallelism. The processes are tested with real children: tests/test_sweep_hardening.py (started, stopped
    and killed by sweep.py), and the one `__main__` test of each script."""
    from lymphus_ml import cli

    assert cwd is None, "a run in this process cannot change directory"
    module = importlib.import_module(Path(script).stem)
    with _ONE_SCRIPT_AT_A_TIME, open(log_path or "/dev/null", "w") as log:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            try:
                cli.run(lambda: module.main([str(argument) for argument in arguments]), arguments)
                status = 0
            except SystemExit as exit_info:
                status = exit_info.code if isinstance(exit_info.code, int) else (0 if exit_info.code is None else 1)
    if check and status != 0:
        raise ValueError(f"{what or Path(script).name} failed (exit status {status}); end of {log_path}")
    return status


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """run_cli(module, *argv) -> (exit status, stdout, stderr): a script's command line in this process, through the
    entry point its `__main__` uses, `lymphus_ml.cli.run(main)` with sys.argv set (no interpreter start-up: the
    errors tests read one `error:` line). Exceptions other than SystemExit propagate (as with --debug)."""
    from lymphus_ml import cli

    def run(module, *argv):
        monkeypatch.setattr(sys, "argv", [Path(module.__file__).name, *map(str, argv)])
        capsys.readouterr()
        try:
            cli.run(module.main)
            status = 0
        except SystemExit as exit_info:
            status = exit_info.code if isinstance(exit_info.code, int) else (0 if exit_info.code is None else 1)
        out, err = capsys.readouterr()
        return status, out, err

    return run


@pytest.fixture(scope="session")
def small_export(tmp_path_factory):
    from lymphus_ml.data import write_synthetic_export

    return Path(write_synthetic_export(tmp_path_factory.mktemp("small-data"), **SMALL_EXPORT))


@pytest.fixture(scope="session")
def official_archives(tmp_path_factory):
    """Synthetic archives with the official counts, sizes and mask extents."""
    import lymphus

    directory = tmp_path_factory.mktemp("official-archives")
    lymphus.write_synthetic_archives(directory)
    return directory


@pytest.fixture(scope="session")
def official_export(official_archives, tmp_path_factory):
    import lymphus

    return lymphus.export_dataset(official_archives, tmp_path_factory.mktemp("exports") / "lymphus", "basic_checks")


@pytest.fixture(scope="session")
def crop_classifier(small_export, tmp_path_factory):
    import train_vit

    output_dir = tmp_path_factory.mktemp("crop-classifier") / "out"
    train_vit.main(vit_args(small_export, output_dir))
    return output_dir


@pytest.fixture(scope="session")
def full_classifier(small_export, tmp_path_factory):
    import train_vit

    output_dir = tmp_path_factory.mktemp("full-classifier") / "out"
    train_vit.main(full_vit_args(small_export, output_dir))
    return output_dir


@pytest.fixture(scope="session")
def segmenter(small_export, tmp_path_factory):
    import train_segformer

    output_dir = tmp_path_factory.mktemp("segmenter") / "out"
    train_segformer.main(segformer_args(small_export, output_dir))
    return output_dir


@pytest.fixture
def bucket_recorder(monkeypatch):
    """What a Job launch uploads to the Jobs artifacts bucket, through the public calls HfApi.sync_job_volume makes."""
    from types import SimpleNamespace

    from huggingface_hub import HfApi

    uploads = {"public": False}

    def sync_bucket(self, source, destination, **kwargs):
        folder = destination.split("/", 5)[5]  # hf://buckets/<namespace>/<name>/<folder>
        files = sorted(p for p in Path(source).rglob("*") if p.is_file())
        uploads["add"] = [(p.read_bytes(), f"{folder}/{p.relative_to(source).as_posix()}") for p in files]

    monkeypatch.setattr(HfApi, "create_bucket", lambda self, bucket_id, **kwargs: uploads.setdefault("bucket", bucket_id))
    monkeypatch.setattr(HfApi, "bucket_info", lambda self, bucket_id, **kwargs: SimpleNamespace(private=not uploads["public"]))
    monkeypatch.setattr(HfApi, "sync_bucket", sync_bucket)
    return uploads


@pytest.fixture(scope="session", autouse=True)
def train_vit_options_in_process():
    """sweep.py checks the options it forwards against `train_vit.py --help` (lymphus_ml.runs.script_option_names),
    a child process that costs ~9 CPU-s of imports. In tests the same help text comes from train_vit's own entry point
    in this process (`lymphus_ml.cli.run(train_vit.main)` with `--help`, at the child's COLUMNS=1000) and is read by
    the same `runs.help_option_names`; any other script, and tests/test_sweep.py's test of the child, take the real
    path. train_vit's process start itself is tested in tests/test_layout_and_jobs.py."""
    import functools
    import io

    from lymphus_ml import cli, runs

    real, train_vit_path = runs._script_option_names, str(Path(runs.TRAIN_VIT_SCRIPT).resolve())

    @functools.cache
    def option_names(path, mtime_ns):
        if path != train_vit_path:
            return real(path, mtime_ns)
        train_vit, output = importlib.import_module("train_vit"), io.StringIO()
        with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(output):
            patch.setenv("COLUMNS", "1000")
            patch.setattr(sys, "argv", ["train_vit.py", "--help"])
            with pytest.raises(SystemExit) as exit_info:
                cli.run(train_vit.main)
        assert exit_info.value.code in (0, None), output.getvalue()[-2000:]
        return runs.help_option_names(output.getvalue(), "train_vit.py")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runs, "_script_option_names", option_names)
        yield
