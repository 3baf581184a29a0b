"""What we share works in other people's hands: the Space installs only what it imports (torch as the CPU build),
the cards name one licence for the LymphUs terms and inherit a base model's, ..."""

import ast
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lymphus_ml import hub, space  # noqa: E402


def distribution_key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_distributions(script) -> set[str]:
    """Distributions of the third-party modules the files shipped with `script` import, read independently of
    lymphus_ml.hub.third_party_imports."""
    from importlib.metadata import packages_distributions

    distributions = packages_distributions()
    project = {p.stem for p in REPO.glob("*.py")} | {"lymphus_ml"}
    found = set()
    for file in (f for f in hub.job_files(REPO / script) if f.endswith(".py")):
        for node in ast.walk(ast.parse((REPO / file).read_text())):
            if isinstance(node, ast.Import):
                tops = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                tops = {node.module.split(".")[0]}
            else:
                continue
            for top in tops - project - set(sys.stdlib_module_names) - {"__future__"}:
                found |= {distribution_key(d) for d in distributions[top]}
    return found


def test_the_space_installs_only_what_it_imports_with_torch_as_the_cpu_build():
    lines = space.space_requirements().splitlines()
    assert lines[0] == "--extra-index-url https://download.pytorch.org/whl/cpu"
    requirements = {distribution_key(re.split(r"[<>=!~ ]", line)[0]): line for line in lines[1:]}
    assert set(requirements) == imported_distributions("app.py") - {"gradio"}  # the SDK installs gradio
    assert not set(requirements) & {"pandas", "statsmodels", "accelerate", "pytest", "playwright", "gradio-client"}
    project = dict(re.match(r"(torch|torchvision)==([0-9.]+)$", line.split("#")[0].strip()).groups()
                   for line in (REPO / "requirements.txt").read_text().splitlines()
                   if re.match(r"(torch|torchvision)==", line))
    for name in ("torch", "torchvision"):
        assert requirements[name] == f"{name}=={project[name]}+cpu"  # the CPU wheel index's local version label
    assert requirements["captum"] == "captum>=0.9" and requirements["huggingface-hub"] == "huggingface_hub>=2,<3"


def test_the_space_refuses_an_import_requirements_txt_does_not_list(tmp_path):
    requirements = [line for line in (REPO / "requirements.txt").read_text().splitlines() if not line.startswith("captum")]
    (tmp_path / "requirements.txt").write_text("\n".join(requirements) + "\n")
    with pytest.raises(ValueError, match=r"lymphus_ml/saliency.py import captum, which .*requirements.txt does not list"):
        space.space_requirements(tmp_path / "requirements.txt")
    (tmp_path / "requirements.txt").write_text((REPO / "requirements.txt").read_text().replace("torch==", "torch>="))
    with pytest.raises(ValueError, match=r"must pin torch exactly"):
        space.space_requirements(tmp_path / "requirements.txt")
