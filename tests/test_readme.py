"""The README's first two commands stay true: the offline main job runs as written, and CI runs the test command."""

import json
import shlex
from pathlib import Path

import train_vit


ROOT = Path(__file__).resolve().parent.parent


def readme_commands():
    lines = [line.strip() for line in (ROOT / "README.md").read_text().splitlines()[:2]]  # markdown hard breaks
    install, main_job = lines[0].split(" && ")
    _, tests = lines[1].split(" && ")
    return install, shlex.split(main_job), tests


def test_readme_test_command_is_what_ci_runs():
    install, _, tests = readme_commands()
    ci = (ROOT / ".ci" / "run").read_text()
    assert install == "pip install -r requirements.txt" and "-r requirements.txt" in ci
    assert tests.replace("python ", "python3 ") in ci.replace(" -p no:cacheprovider", "")


def test_readme_main_job_runs_offline_end_to_end(tmp_path):
    _, main_job, _ = readme_commands()
    assert main_job[:2] == ["python", "train_vit.py"]
    arguments = main_job[2:]
    arguments[arguments.index("--output_dir") + 1] = str(tmp_path / "offline-demo")
    # As written, less the occlusion saliency maps (nearly half of the run's CPU time): nothing here reads them, and
    # tests/test_trust.py checks them in the metrics and the card of a train_vit.py run.
    train_vit.main(arguments + ["--saliency", "none"])
    output = tmp_path / "offline-demo"
    for name in ("README.md", "metrics_validation.json", "metrics_test.json", "metrics_external.json", "predictions.csv",
                 "roc_external.png", "confusion_matrix_external.png", "model.safetensors", "preprocessor_config.json"):
        assert (output / name).is_file(), name
    external = json.loads((output / "metrics_external.json").read_text())
    assert external["at_youden"]["n"] == 158  # the whole other centre, official counts
    card = (output / "README.md").read_text()
    assert "synthetic" in card.lower() and "not for clinical use" in card.lower()
