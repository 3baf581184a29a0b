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

from lymphus_ml import hub, shipped_files  # noqa: E402


SCRIPTS = sorted(p.name for p in REPO.glob("*.py") if "__main__" in p.read_text())
BENCHMARKS = sorted(str(p.relative_to(REPO)) for p in (REPO / "benchmarks").glob("*.py"))
LIBRARY = sorted(str(p.relative_to(REPO)) for p in (REPO / "lymphus_ml").glob("*.py"))
JOB_SCRIPTS = ["train_vit.py", "train_segformer.py"]
PROJECT_MODULES = {p.stem for p in REPO.glob("*.py")} | {"lymphus_ml"}


def project_imports(path) -> set[str]:
    """Top-level project modules `path` imports, anywhere in the file."""
    names = shipped_files.imported_module_names((REPO / path).read_text())
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
        names = shipped_files.imported_module_names((REPO / path).read_text())
        graph[path] = {f for name in names for f in shipped_files.project_module_files(name, REPO) if f.endswith(".py")} - {path}

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


def requirement_names(requirements) -> set[str]:
    return {re.split(r"[<>=!~;\[ ]", r.strip(), maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def shipped_third_party_distributions(script) -> dict[str, set[str]]:
    """{distribution: the shipped files importing it}, derived independently of lymphus_ml.hub's checker: every import
    of every .py file a Job of `script` ships, less the standard library and the project's own modules, each module
    mapped to the distribution installing it here."""
    from importlib.metadata import packages_distributions

    distributions, found = packages_distributions(), {}
    for file in (f for f in shipped_files.job_files(REPO / script) if f.endswith(".py")):
        for node in ast.walk(ast.parse((REPO / file).read_text())):
            if isinstance(node, ast.Import):
                tops = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                if top in sys.stdlib_module_names or top == "__future__" or top in PROJECT_MODULES:
                    continue
                assert top in distributions, f"{file} imports {top}, which no installed distribution provides"
                for distribution in distributions[top]:
                    found.setdefault(distribution.lower().replace("_", "-"), set()).add(file)
    return found


# Declared though no shipped file imports them: used by what the scripts call (transformers saves with safetensors;
# huggingface_hub's ModelCard.from_template renders with jinja2).
RUNTIME_ONLY_DEPENDENCIES = {"safetensors", "jinja2"}


@pytest.mark.parametrize("script", JOB_SCRIPTS)
def test_a_job_declares_every_third_party_module_its_shipped_files_import(script):
    """The Job installs exactly its PEP 723 block: a module imported but not declared fails on paid hardware (captum at
    the saliency step); the test venv has everything, so only reading the imports can tell."""
    imported = shipped_third_party_distributions(script)
    declared = requirement_names(shipped_files.pep723_dependencies(REPO / script))
    missing = {name: sorted(files) for name, files in imported.items() if name not in declared}
    assert not missing, f"{script}'s PEP 723 block lacks {missing}"
    assert declared - set(imported) == RUNTIME_ONLY_DEPENDENCIES, "declared but never imported"
    assert shipped_files.undeclared_imports(REPO / script) == {}
    if script == "train_vit.py":
        assert {"captum", "numpy", "pyarrow"} <= declared


def test_pep723_blocks_are_installed_by_requirements():
    requirements = requirement_names(
        line for line in (REPO / "requirements.txt").read_text().splitlines() if line.strip() and not line.startswith("#")
    )
    for script in JOB_SCRIPTS:
        names = requirement_names(shipped_files.pep723_dependencies(REPO / script))
        assert names - requirements <= RUNTIME_ONLY_DEPENDENCIES, script


def test_a_job_with_an_undeclared_import_is_refused_before_anything_is_submitted(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "late.py").write_text("import json\n\ndef f():\n    import captum.attr\n    import numpy\n")
    (tmp_path / "job.py").write_text(
        '# /// script\n# dependencies = [\n#     "NumPy>=1",  # pinned\n# ]\n# ///\nfrom pkg import late\nimport pkg\n'
    )
    assert shipped_files.pep723_dependencies(tmp_path / "job.py") == ["NumPy>=1"]
    assert shipped_files.undeclared_imports(tmp_path / "job.py", tmp_path) == {"captum": ["pkg/late.py"]}
    with pytest.raises(ValueError, match=r"does not install captum \(imported by pkg/late.py\)"):
        shipped_files.check_job_dependencies(tmp_path / "job.py", tmp_path)


@pytest.mark.parametrize("extra, message", [
    (["--report_to", "wandb"], "--report_to wandb needs wandb, which a Hub Job of train_vit.py does not install"),
    (["--report_to=none,tensorboard"], "--report_to tensorboard needs tensorboard"),
    (["--metric_path", "someone/metric"], "--metric_path someone/metric: a Hub Job evaluates with the metric modules"),
])
def test_a_job_that_can_only_fail_is_refused_before_it_is_submitted(extra, message, local_hub, bucket_recorder):
    import train_vit

    submitted = len(local_hub.requests)
    with pytest.raises(ValueError, match=re.escape(message)):
        train_vit.main(["--launch_on_hub", "a10g-small", "--hub_token", local_hub.token, "--dataset_name",
                        "someone/lymphus", "--output_dir", "x", "--push_to_hub", *extra])
    assert len(local_hub.requests) == submitted and "add" not in bucket_recorder


def test_job_files_follow_imports_inside_functions(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "late.py").write_text('SHIPPED_FILES = ("data/table.csv",)\n')
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "table.csv").write_text("a\n")
    (tmp_path / "helper.py").write_text("import os\n")
    (tmp_path / "unused.py").write_text("")
    (tmp_path / "job.py").write_text("import helper\n\ndef later():\n    from pkg import late\n")
    assert shipped_files.job_files(tmp_path / "job.py", tmp_path) == [
        "job.py", "data/table.csv", "helper.py", "pkg/__init__.py", "pkg/late.py"
    ]


def test_job_files_refuse_a_declared_file_that_is_missing(tmp_path):
    (tmp_path / "job.py").write_text('SHIPPED_FILES = ("missing.md",)\n')
    with pytest.raises(FileNotFoundError, match="missing.md"):
        shipped_files.job_files(tmp_path / "job.py", tmp_path)


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
    shipped = {remote.split("/", 1)[1]: content for content, remote in bucket_recorder["add"]}
    assert bucket_recorder["bucket"] == f"{local_hub.user}/jobs-artifacts"
    assert sorted(shipped) == sorted(shipped_files.job_files(REPO / script))
    assert {script, "lymphus_ml/__init__.py", "lymphus_ml/cli.py", "lymphus_ml/hub.py"} <= set(shipped)
    assert all(local_hub.token.encode() not in content for content in shipped.values())
    assert shipped[script] == (REPO / script).read_bytes()
    volume = spec["volumes"][0]
    assert volume["mountPath"] == "/data" and volume["source"] == f"{local_hub.user}/jobs-artifacts"
    assert volume["path"] == bucket_recorder["add"][0][1].split("/", 1)[0] and volume["readOnly"] is False
    assert spec["dockerImage"] == hub.JOB_IMAGE
    assert job.url in capsys.readouterr().out


def test_a_public_jobs_bucket_is_warned_about_as_huggingface_hub_does(local_hub, bucket_recorder):
    bucket_recorder["public"] = True
    with pytest.warns(UserWarning, match="already exists and is public"):
        hub.launch_job(REPO / "train_segformer.py", ["--help"], "cpu-basic", local_hub.token)


def copy_job_folder(script, folder) -> Path:
    """The script and exactly what its Job ships, alone in `folder`."""
    for file in shipped_files.job_files(REPO / script):
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
