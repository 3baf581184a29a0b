"""Publishing app.py as a Gradio Space that loads the models by Hub id (`push_space`), and reading its
space_config.json back when the app starts in a Space."""

import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

from lymphus_ml.inference import check_segmenter_given


PROJECT_ROOT = Path(__file__).resolve().parent.parent
SPACE_CARD_TEMPLATE = PROJECT_ROOT / "space_card.md"
SHIPPED_FILES = ("space_card.md",)
SPACE_CONFIG_FILE = "space_config.json"  # beside app.py in a Space: the Hub ids it serves
# Not installed from requirements.txt in a Space: gradio, which the Space's SDK provides at `sdk_version`.
SPACE_EXCLUDED_REQUIREMENTS = ("gradio",)
# A CPU Space installs torch and torchvision as PyTorch's CPU builds (`2.14.1+cpu`, from PyTorch's CPU wheel index,
# as public CPU Spaces pin them): PyPI's torch is the CUDA build, 5 GB of GPU libraries a CPU Space never uses.
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CPU_BUILDS = ("torch", "torchvision")


def requirement_key(requirement: str) -> str:
    """A requirement's distribution name as PEP 503 compares them (`huggingface_hub` == `huggingface-hub`)."""
    return re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0]).lower()


def space_requirements(requirements_path=PROJECT_ROOT / "requirements.txt", app_path=PROJECT_ROOT / "app.py") -> str:
    """The Space's requirements.txt: exactly the distributions of the third-party modules that the files shipped with
    app.py import (less gradio: the SDK's), each as requirements.txt pins it, torch and torchvision as CPU builds
    from TORCH_CPU_INDEX. ValueError for an import requirements.txt does not list, or an unpinned torch."""
    from importlib.metadata import packages_distributions

    from lymphus_ml.hub import job_files, third_party_imports

    pinned = {}
    for line in Path(requirements_path).read_text().splitlines():
        requirement = line.split("#", 1)[0].strip()
        if requirement:
            pinned[requirement_key(requirement)] = requirement
    distributions, needed = packages_distributions(), set()
    for module, files in third_party_imports(job_files(app_path, PROJECT_ROOT), PROJECT_ROOT).items():
        names = {requirement_key(name) for name in distributions.get(module, [module])}
        if not names & set(pinned):
            raise ValueError(f"{', '.join(files)} import {module}, which {requirements_path} does not list.")
        needed |= names & set(pinned)
    lines = []
    for name in sorted(needed - set(SPACE_EXCLUDED_REQUIREMENTS)):
        requirement = pinned[name]
        if name in CPU_BUILDS:
            version = re.fullmatch(rf"{re.escape(name)}==([0-9.]+)", requirement.replace(" ", ""), flags=re.I)
            if version is None:
                raise ValueError(f"{requirements_path} must pin {name} exactly (==X.Y.Z) for the Space's CPU build.")
            requirement = f"{name}=={version.group(1)}+cpu"
        lines.append(requirement)
    return "\n".join([f"--extra-index-url {TORCH_CPU_INDEX}", *lines]) + "\n"


def space_card(space_id, classifier, segmenter=None, gradio_version=None):
    """The Space's README.md (`SpaceCard` from space_card.md): `sdk: gradio`, `app_file: app.py`, the models, and
    the LymphUs terms as its licence (what it serves was trained on LymphUs; the dataset card's name for them)."""
    from huggingface_hub import SpaceCard, SpaceCardData

    from lymphus import LYMPHUS_LICENSE

    if gradio_version is None:
        import gradio

        gradio_version = gradio.__version__
    card_data = SpaceCardData(
        title="LymphUs lymph node ultrasound",
        sdk="gradio",
        sdk_version=gradio_version,
        python_version=f"{sys.version_info.major}.{sys.version_info.minor}",
        app_file="app.py",
        models=[classifier] + ([segmenter] if segmenter else []),
        tags=["medical-imaging", "ultrasound", "lymph-node", "lymphus"],
        emoji="🩺",
        colorFrom="gray",
        colorTo="blue",
        pinned=False,
        short_description="Lymph node ultrasound malignancy, research only",  # the Hub allows 60 characters
        **LYMPHUS_LICENSE,
    )
    return SpaceCard.from_template(
        card_data, template_path=str(SPACE_CARD_TEMPLATE), space_id=space_id, classifier=classifier, segmenter=segmenter,
        license=LYMPHUS_LICENSE,
    )


def check_space_models(api, classifier, segmenter) -> None:
    """Refuse a Space that could not start: local folders, models the Hub does not have, or a crop/masked
    classifier without a segmenter (read from the classifier's config on the Hub)."""
    from huggingface_hub.errors import HfHubHTTPError

    for option, repo_id in (("--classifier", classifier), ("--segmenter", segmenter)):
        if repo_id is None:
            continue
        if Path(repo_id).exists():
            raise ValueError(
                f"{option} {repo_id} is a local folder; a Space loads its models by Hub id: push the model first "
                "(train_vit.py / train_segformer.py --push_to_hub) and pass its id."
            )
        try:
            api.model_info(repo_id)
        except HfHubHTTPError as error:
            raise ValueError(f"{option} {repo_id} is not a model this token can read on the Hub ({error}).") from None
    config = json.loads(Path(api.hf_hub_download(classifier, "config.json")).read_text())
    check_segmenter_given(classifier, config.get("roi_mode", "full"), segmenter)


def push_space(space_id, classifier, segmenter=None, token=None, private=None, app_path=PROJECT_ROOT / "app.py") -> str:
    """Create or update the Gradio Space `space_id`: app.py with exactly the project files it imports
    (`lymphus_ml.hub.job_files`), the card (README.md), requirements.txt and space_config.json (the Hub ids the
    app serves when started with no option, and the files this push shipped). Returns the commit URL.

    An existing Space is updated only if an earlier push_space wrote it (its space_config.json says so); files
    that push shipped and this one does not are removed, anything else in the Space is left as it is.
    """
    from huggingface_hub import HfApi

    from lymphus_ml.hub import job_files

    api = HfApi(token=token)
    check_space_models(api, classifier, segmenter)
    shipped_before = files_shipped_earlier(api, space_id)
    with tempfile.TemporaryDirectory() as staging:
        staging = Path(staging)
        shipped = job_files(app_path, PROJECT_ROOT)
        for path in shipped:
            (staging / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(PROJECT_ROOT / path, staging / path)
        space_card(space_id, classifier, segmenter).save(staging / "README.md")
        (staging / "requirements.txt").write_text(space_requirements())
        shipped += ["README.md", "requirements.txt", SPACE_CONFIG_FILE]
        config = {"classifier": classifier, "segmenter": segmenter, "files": sorted(shipped)}
        (staging / SPACE_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=space_id, repo_type="space", folder_path=str(staging),
            delete_patterns=sorted(set(shipped_before) - set(shipped)) or None,
            commit_message=f"LymphUs app serving {classifier}" + (f" with {segmenter}" if segmenter else ""),
        )
    return commit.commit_url


def files_shipped_earlier(api, space_id) -> list[str]:
    """Files an earlier push_space shipped to `space_id` ([] for a new or empty Space); a Space with other content
    and no space_config.json of ours is refused, so nothing a user put there is overwritten."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        existing = set(api.list_repo_files(space_id, repo_type="space"))
    except RepositoryNotFoundError:
        return []
    if SPACE_CONFIG_FILE not in existing:
        if existing - {".gitattributes"}:
            raise ValueError(
                f"Space {space_id} exists and was not written by `app.py --push_to_space` (no {SPACE_CONFIG_FILE}): "
                "its files are not ours to replace. Choose another Space name."
            )
        return []
    config_path = hf_hub_download(space_id, SPACE_CONFIG_FILE, repo_type="space", token=api.token)
    return list(json.loads(Path(config_path).read_text()).get("files", []))


def read_space_config(app_path) -> dict | None:
    """The Hub ids in space_config.json beside `app_path` (a Space written by push_space), or None."""
    path = Path(app_path).with_name(SPACE_CONFIG_FILE)
    if not path.is_file():
        return None
    config = json.loads(path.read_text())
    if not config.get("classifier"):
        raise ValueError(f"{path} names no classifier.")
    return config
