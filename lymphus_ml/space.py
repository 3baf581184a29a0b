"""Publishing app.py as a Gradio Space that loads the models by Hub id (`push_space`), and reading its
space_config.json back when the app starts in a Space."""

import hashlib
import json
import logging
import re
import shutil
import sys
import tempfile
from pathlib import Path

from lymphus_ml.inference import check_segmenter_given


logger = logging.getLogger(__name__)

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

    from lymphus_ml.shipped_files import job_files, third_party_imports

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

    from lymphus_ml.release import LYMPHUS_LICENSE

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
    from huggingface_hub.errors import EntryNotFoundError

    try:
        config = json.loads(Path(api.hf_hub_download(classifier, "config.json")).read_text())
    except EntryNotFoundError:  # a LoRA adapter (train_vit.py --finetuning lora): its classifier config
        config = json.loads(Path(api.hf_hub_download(classifier, "classifier_config.json")).read_text())
    check_segmenter_given(classifier, config.get("roi_mode", "full"), segmenter)


def push_space(space_id, classifier, segmenter=None, token=None, private=None, app_path=PROJECT_ROOT / "app.py") -> str:
    """Create or update the Gradio Space `space_id`: app.py with exactly the project files it imports
    (`lymphus_ml.shipped_files.job_files`), the card (README.md), requirements.txt and space_config.json (the Hub ids the
    app serves when started with no option, and each file this push shipped with its SHA-256 and git blob id), in
    one commit. Returns the commit URL.

    An existing Space is updated only where our record proves it ours (`check_space_is_ours`): every file an
    earlier push shipped is unchanged on the Hub (or gone), and nothing we would write is a file we did not ship.
    Files that push shipped and this one does not are deleted by their exact names; anything else in the Space is
    left as it is. `private=True` makes a new Space private, and an existing public one private (said in the log).
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    from lymphus_ml.shipped_files import job_files

    api = HfApi(token=token)
    check_space_models(api, classifier, segmenter)
    with tempfile.TemporaryDirectory() as staging:
        staging = Path(staging)
        names = job_files(app_path, PROJECT_ROOT)
        for path in names:
            (staging / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(PROJECT_ROOT / path, staging / path)
        space_card(space_id, classifier, segmenter).save(staging / "README.md")
        (staging / "requirements.txt").write_text(space_requirements())
        names += ["README.md", "requirements.txt"]
        shipped = {path: shipped_file_entry(staging / path) for path in sorted(names)}
        shipped_before = check_space_is_ours(api, space_id, shipped)
        config = {"classifier": classifier, "segmenter": segmenter, "files": shipped}
        (staging / SPACE_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        if shipped_before is None:
            api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=bool(private))
        elif private:
            make_private(api, space_id)
        operations = [CommitOperationAdd(path, str(staging / path)) for path in [*shipped, SPACE_CONFIG_FILE]]
        operations += [CommitOperationDelete(path) for path in sorted(set(shipped_before or {}) - set(shipped))]
        commit = api.create_commit(
            space_id, operations, repo_type="space",
            commit_message=f"LymphUs app serving {classifier}" + (f" with {segmenter}" if segmenter else ""),
        )
    return commit.commit_url


def shipped_file_entry(path) -> dict:
    """How space_config.json records a shipped file: its SHA-256 (what the Hub reports for an LFS file) and its git
    blob id (what it reports for any other)."""
    data = Path(path).read_bytes()
    return {"sha256": hashlib.sha256(data).hexdigest(),
            "git_oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()}


def check_space_is_ours(api, space_id, shipped) -> dict | None:
    """The files an earlier push shipped to `space_id` and that are still there, unchanged ({} for an empty Space,
    None where there is no Space); ValueError, before anything is changed, for a Space our record does not prove
    ours: files and no space_config.json, a space_config.json that is not ours, a file we shipped that was changed
    since, or a file we would now write that we did not ship."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RepositoryNotFoundError
    from huggingface_hub.hf_api import RepoFile

    try:
        tree = {item.path: item for item in api.list_repo_tree(space_id, repo_type="space", recursive=True)
                if isinstance(item, RepoFile)}
    except RepositoryNotFoundError:
        return None
    if SPACE_CONFIG_FILE not in tree:
        if set(tree) - {".gitattributes"}:
            raise ValueError(
                f"Space {space_id} exists and was not written by `app.py --push_to_space` (no {SPACE_CONFIG_FILE}): "
                "its files are not ours to replace. Choose another Space name."
            )
        return {}
    config_path = hf_hub_download(space_id, SPACE_CONFIG_FILE, repo_type="space", token=api.token)
    before = recorded_files(Path(config_path).read_bytes(), space_id)
    changed = [path for path, entry in before.items() if path in tree and not same_file(tree[path], entry)]
    foreign = [path for path in shipped if path in tree and path not in before]
    if changed or foreign:
        problems = [f"{path} (changed since `app.py --push_to_space` shipped it)" for path in changed]
        problems += [f"{path} (not shipped by `app.py --push_to_space`)" for path in foreign]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ValueError(
            f"Space {space_id} has {problems[0]}{more}: a push would overwrite or delete it, so nothing was changed. "
            "Keep your version under another name (or delete it), or choose another Space name."
        )
    return {path: entry for path, entry in before.items() if path in tree}


def recorded_files(text: bytes, space_id) -> dict:
    """{path: {"sha256", "git_oid"}} from the `files` of a Space's space_config.json; ValueError where it is not
    a record push_space writes (it then proves nothing)."""
    hexadecimal = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
    try:
        files = json.loads(text)["files"]
        valid = isinstance(files, dict) and all(
            isinstance(path, str) and isinstance(entry, dict) and hexadecimal.fullmatch(str(entry.get("sha256")))
            and hexadecimal.fullmatch(str(entry.get("git_oid"))) for path, entry in files.items()
        )
    except (ValueError, TypeError, KeyError):
        valid = False
    if not valid:
        raise ValueError(
            f"Space {space_id} has a {SPACE_CONFIG_FILE} that is not the record `app.py --push_to_space` writes "
            "(each shipped file with its sha256 and git_oid): nothing in the Space can be proved ours, so nothing "
            "was changed. Choose another Space name."
        )
    return files


def same_file(remote, entry) -> bool:
    """Whether the Hub's file `remote` (a RepoFile) holds the bytes recorded in `entry`."""
    if remote.lfs is not None:
        return remote.lfs.sha256 == entry["sha256"]
    return remote.blob_id == entry["git_oid"]


def make_private(api, space_id) -> None:
    """--private on an existing Space: a public one is made private (and checked), with a line in the log."""
    if api.space_info(space_id).private:
        return
    api.update_repo_settings(space_id, private=True, repo_type="space")
    if not api.space_info(space_id).private:
        raise ValueError(f"Space {space_id} is public and could not be made private: nothing was pushed.")
    logger.info(f"Space {space_id} was public: made private (--private).")


def read_space_config(app_path) -> dict | None:
    """The Hub ids in space_config.json beside `app_path` (a Space written by push_space), or None."""
    path = Path(app_path).with_name(SPACE_CONFIG_FILE)
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON ({error}): it cannot name the models this app serves.") from None
    if not isinstance(config, dict) or not isinstance(config.get("classifier"), str) or not config["classifier"]:
        raise ValueError(f"{path} names no classifier.")
    return config
