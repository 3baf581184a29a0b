"""The layout: scripts import library modules and lymphus.py, never each other; no import circle; short functions;
one Hub Job mechanism that ships what a script imports, so the script runs from a folder holding only that."""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lymphus_ml import hub  # noqa: E402


SCRIPTS = sorted(p.name for p in REPO.glob("*.py") if "__main__" in p.read_text())
BENCHMARKS = sorted(str(p.relative_to(REPO)) for p in (REPO / "benchmarks").glob("*.py"))
LIBRARY = sorted(str(p.relative_to(REPO)) for p in (REPO / "lymphus_ml").glob("*.py"))
JOB_SCRIPTS = ["train_vit.py", "train_segformer.py"]
PROJECT_MODULES = {p.stem for p in REPO.glob("*.py")} | {"lymphus_ml"}


def project_imports(path) -> set[str]:
    """Top-level project modules `path` imports, anywhere in the file."""
    names = hub.imported_module_names((REPO / path).read_text())
    return {name.split(".")[0] for name in names} & PROJECT_MODULES


def test_scripts_are_the_expected_tools():
    assert {"lymphus.py", "train_vit.py", "train_segformer.py", "predict.py", "benchmark_lymphus.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", [*SCRIPTS, *BENCHMARKS])
def test_a_script_imports_no_other_script_but_lymphus(script):
    other_scripts = project_imports(script) & {Path(s).stem for s in SCRIPTS} - {"lymphus", Path(script).stem}
    assert not other_scripts, f"{script} imports the script(s) {sorted(other_scripts)}"


@pytest.mark.parametrize("module", LIBRARY)
def test_library_modules_import_no_script(module):
    scripts = project_imports(module) & {Path(s).stem for s in SCRIPTS} - {"lymphus"}
    assert not scripts, f"{module} imports the script(s) {sorted(scripts)}"


def test_no_import_circle():
    graph = {}
    for path in [*SCRIPTS, *LIBRARY]:
        names = hub.imported_module_names((REPO / path).read_text())
        graph[path] = {f for name in names for f in hub.project_module_files(name, REPO) if f.endswith(".py")} - {path}

    def visit(node, stack):
        assert node not in stack, f"import circle: {' -> '.join(stack + [node])}"
        for child in graph.get(node, ()):
            visit(child, stack + [node])

    for node in graph:
        visit(node, [])


@pytest.mark.parametrize("path", [*SCRIPTS, *LIBRARY])
def test_no_function_over_80_lines(path):
    tree = ast.parse((REPO / path).read_text())
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80
    ]
    assert not long, f"{path}: {long}"


def pep723_dependencies(script) -> list[str]:
    block = re.search(r"^# /// script\n(.*?)^# ///$", (REPO / script).read_text(), flags=re.S | re.M).group(1)
    return re.findall(r'^#\s+"([^"]+)",$', block, flags=re.M)


def test_pep723_blocks_agree_and_are_installed_by_requirements():
    blocks = {script: pep723_dependencies(script) for script in JOB_SCRIPTS}
    assert len({tuple(block) for block in blocks.values()}) == 1, blocks
    requirements = {
        re.split(r"[<>=!\[ ]", line.strip())[0].lower().replace("_", "-")
        for line in (REPO / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    names = {re.split(r"[<>=!\[ ]", dependency)[0].lower().replace("_", "-") for dependency in blocks[JOB_SCRIPTS[0]]}
    assert names - requirements == {"safetensors"} or names <= requirements | {"safetensors"}


def test_job_files_follow_imports_inside_functions(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "late.py").write_text('SHIPPED_FILES = ("data/table.csv",)\n')
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "table.csv").write_text("a\n")
    (tmp_path / "helper.py").write_text("import os\n")
    (tmp_path / "unused.py").write_text("")
    (tmp_path / "job.py").write_text("import helper\n\ndef later():\n    from pkg import late\n")
    assert hub.job_files(tmp_path / "job.py", tmp_path) == [
        "job.py", "data/table.csv", "helper.py", "pkg/__init__.py", "pkg/late.py"
    ]


def test_job_files_refuse_a_declared_file_that_is_missing(tmp_path):
    (tmp_path / "job.py").write_text('SHIPPED_FILES = ("missing.md",)\n')
    with pytest.raises(FileNotFoundError, match="missing.md"):
        hub.job_files(tmp_path / "job.py", tmp_path)


@pytest.fixture
def bucket_recorder(monkeypatch):
    """The local hub has no buckets (xet): record what launch_job uploads to the Jobs artifacts bucket."""
    from huggingface_hub import HfApi

    uploads = {}
    monkeypatch.setattr(HfApi, "create_bucket", lambda self, bucket_id, **kwargs: uploads.setdefault("bucket", bucket_id))
    monkeypatch.setattr(
        HfApi, "batch_bucket_files", lambda self, bucket_id, add=None, **kwargs: uploads.setdefault("add", list(add))
    )
    return uploads


JOB_ARGUMENTS = {
    "train_vit.py": ["--roi", "crop", "--num_train_epochs", "20"],
    "train_segformer.py": ["--model_name_or_path", "nvidia/mit-b0", "--num_train_epochs", "50"],
}


@pytest.mark.parametrize("script", JOB_SCRIPTS)
def test_launch_on_hub_submits_the_same_run_and_ships_what_it_imports(script, local_hub, bucket_recorder, capsys):
    import importlib

    module = importlib.import_module(Path(script).stem)
    repo_id = f"{local_hub.user}/{Path(script).stem}-job"
    forwarded = ["--dataset_name", f"{local_hub.user}/lymphus", "--dataset_config", "center1", "--external_config",
                 "center2", *JOB_ARGUMENTS[script], "--output_dir", "out", "--push_to_hub", "--hub_model_id", repo_id]
    before = len(local_hub.find_requests("POST", r"/api/jobs/"))
    job = module.main(["--launch_on_hub", "a10g-small", "--job_timeout", "2h", "--hub_token", local_hub.token, *forwarded])
    (request,) = local_hub.find_requests("POST", r"/api/jobs/")[before:]
    spec = request["json"]
    assert spec["flavor"] == "a10g-small" and spec["timeoutSeconds"] == 2 * 3600
    assert spec["secrets"] == {"HF_TOKEN": local_hub.token}
    assert spec["command"] == ["uv", "run", f"/data/{script}", *forwarded]
    assert local_hub.token not in json.dumps(spec["command"]) + json.dumps(spec.get("environment"))
    shipped = {remote.split("/", 1)[1]: Path(local) for local, remote in bucket_recorder["add"]}
    assert bucket_recorder["bucket"] == f"{local_hub.user}/jobs-artifacts"
    assert sorted(shipped) == sorted(hub.job_files(REPO / script))
    assert {script, "lymphus_ml/__init__.py", "lymphus_ml/cli.py", "lymphus_ml/hub.py"} <= set(shipped)
    assert all(local_hub.token.encode() not in path.read_bytes() for path in shipped.values())
    volume = spec["volumes"][0]
    assert volume["mountPath"] == "/data" and volume["source"] == f"{local_hub.user}/jobs-artifacts"
    assert job.url in capsys.readouterr().out


def copy_job_folder(script, folder) -> Path:
    """The script and exactly what its Job ships, alone in `folder`."""
    for file in hub.job_files(REPO / script):
        (folder / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / file, folder / file)
    return folder


# One step of the offline demo's tiny model on the session's small export (the official-size synthetic export the
# demo writes without --dataset_name is the README test's); no saliency maps (tests/test_trust.py reads those).
OFFLINE_STEP = {
    "train_vit.py": ["--offline_demo", "--max_steps", "1", "--n_bootstrap", "0", "--roi", "crop", "--saliency", "none"],
    "train_segformer.py": ["--offline_demo", "--max_steps", "1", "--n_bootstrap", "0"],
}


@pytest.mark.parametrize("script", JOB_SCRIPTS)
def test_a_job_script_runs_from_a_folder_holding_only_what_its_job_ships(script, small_export, tmp_path, run_cli):
    """`python SCRIPT` started in a folder holding only what its Job ships: one offline training step. The script's
    process start (its `__main__`) is proven here; its --help is read in this process, through the same entry point."""
    import importlib

    status, out, err = run_cli(importlib.import_module(Path(script).stem), "--help")
    assert status == 0 and "--launch_on_hub" in out, err[-3000:]
    folder = copy_job_folder(script, tmp_path / "job")
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "PYTHONNOUSERSITE": "1",
                   "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    run = dict(cwd=folder, env=environment, capture_output=True, text=True, timeout=300)
    output = tmp_path / "out"
    step = subprocess.run(
        [sys.executable, script, *OFFLINE_STEP[script], "--dataset_name", str(small_export), "--output_dir", str(output), "--report_to", "none",
         "--use_cpu", "--disable_tqdm", "True"],
        **run,
    )
    assert step.returncode == 0, step.stdout[-2000:] + step.stderr[-3000:]
    assert (output / "README.md").is_file() and (output / "metrics_external.json").is_file()
