"""The app's library side (app.py): load the models, one image -> prediction, the offline demo, examples, a Space.

`predict_image(image, models)` is the whole prediction, a plain function on a PIL image: the segmenter's node
(when there is one), the classifier's ROI from it exactly as predict.py makes it, the malignancy probability,
the label at the classifier's validation threshold, the node outline and an occlusion saliency heatmap over the
classifier's view. The Gradio page only wires it.

`prepare_offline_demo` trains the tiny offline demo models by running `train_vit.py --offline_demo` and
`train_segformer.py --offline_demo` as processes (on a synthetic export, no network) into a cache folder, and
reuses them when they are there and complete. `push_space` publishes app.py as a Gradio Space that loads the
models by Hub id.
"""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from lymphus_ml.images import ClassificationTransform, check_image_size, model_input_size, processor_mean_std, to_8bit_grayscale
from lymphus_ml.inference import classifier_settings, classify_images, label_at_threshold, load_classifier, load_segmenter
from lymphus_ml.plots import PREDICTED_COLOR, overlay_contours
from lymphus_ml.saliency import saliency_maps


logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SPACE_CARD_TEMPLATE = PROJECT_ROOT / "space_card.md"
SHIPPED_FILES = ("space_card.md",)
SPACE_CONFIG_FILE = "space_config.json"  # beside app.py in a Space: the Hub ids it serves
# Not installed in a Space: the test tools, and gradio itself, which the Space's SDK provides at `sdk_version`.
SPACE_EXCLUDED_REQUIREMENTS = ("pytest", "playwright", "gradio", "gradio-client")
HEATMAP_SIZE = 384  # longer side of the heatmap picture, in pixels
HEATMAP_FLOOR = 0.1  # saliency below this share of its peak is left clear, so the image shows through

# The tiny offline demo models: the scripts' own --offline_demo, with the settings of their docstrings.
OFFLINE_DEMO_MODELS = {
    "classifier": ("train_vit.py", ["--roi", "crop", "--num_train_epochs", "5", "--learning_rate", "1e-3"]),
    "segmenter": (
        "train_segformer.py",
        ["--num_train_epochs", "6", "--learning_rate", "5e-3", "--per_device_train_batch_size", "4"],
    ),
}
MODEL_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")


# Models


@dataclass
class DemoModels:
    """What the app serves: the classifier (with its training settings) and the optional segmenter."""

    classifier: Any
    classifier_processor: Any
    settings: dict
    classifier_name: str
    segmenter: Any = None
    segmenter_processor: Any = None
    segmenter_name: str | None = None
    id2label: dict = field(default_factory=dict)


def load_models(classifier, segmenter=None, device=None) -> DemoModels:
    """The classifier and segmenter (local folders or Hub ids). A classifier trained on the node's crop or masked
    crop needs the segmenter to find the node: without one it is refused here, before anything is served."""
    try:
        model, processor = load_classifier(classifier, device=device)
    except OSError as error:
        raise ValueError(f"Cannot load the classifier {classifier}: {error}") from None
    settings = classifier_settings(model.config)
    if settings["roi_mode"] != "full" and segmenter is None:
        raise ValueError(
            f"Classifier {classifier} was trained on --roi {settings['roi_mode']} (the node, not the whole image): "
            "pass --segmenter (a model written by train_segformer.py) so that the app can find the node."
        )
    models = DemoModels(model, processor, settings, str(classifier),
                        id2label={int(index): name for index, name in model.config.id2label.items()})
    if segmenter is not None:
        try:
            models.segmenter, models.segmenter_processor = load_segmenter(segmenter, device=device)
        except OSError as error:
            raise ValueError(f"Cannot load the segmenter {segmenter}: {error}") from None
        models.segmenter_name = str(segmenter)
    return models


# One image


def classifier_pixel_values(view, models) -> torch.Tensor:
    """(1, C, H, W): the classifier's input for a view (the ROI already applied), as predict_probabilities makes it."""
    num_channels = getattr(models.classifier.config, "num_channels", 3)
    mean, std = processor_mean_std(models.classifier_processor, num_channels)
    size = model_input_size(models.classifier_processor)
    transform = ClassificationTransform(size, mean, std, roi="full", train=False, num_channels=num_channels)
    return transform(view)[None]


def heatmap_size(size, longer_side: int = HEATMAP_SIZE) -> tuple[int, int]:
    """(width, height) with the longer side `longer_side` and the aspect ratio of `size`."""
    width, height = size
    scale = longer_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def saliency_overlay(view, saliency, size=None) -> Image.Image:
    """RGB picture: the grayscale view with its positive saliency (scaled to the peak) in the jet colour map on top.

    The map (at the model's input size) is stretched bilinearly over the view; below HEATMAP_FLOOR of the peak the
    view shows through. A map with no positive value leaves the plain view.
    """
    from matplotlib import colormaps

    size = size or heatmap_size(view.size)
    gray = np.asarray(view.convert("L").resize(size, Image.Resampling.BILINEAR), dtype=np.float64)
    positive = np.clip(np.asarray(saliency, dtype=np.float32), 0, None)
    peak = float(positive.max()) if positive.size else 0.0
    relative = positive / peak if peak > 0 else np.zeros_like(positive)
    relative = np.asarray(Image.fromarray(relative, mode="F").resize(size, Image.Resampling.BILINEAR))
    colours = colormaps["jet"](np.clip(relative, 0, 1))[..., :3] * 255
    alpha = np.where(relative >= HEATMAP_FLOOR, 0.55, 0.0)[..., None]
    blended = gray[..., None] * (1 - alpha) + colours * alpha
    return Image.fromarray(np.round(blended).astype(np.uint8), mode="RGB")


def roi_description(roi: str, settings: dict) -> str:
    """The classifier's view in words."""
    if roi == "full":
        return "the whole image"
    if roi.startswith("full"):
        return "the whole image: the segmenter found no node"
    what = "crop" if roi == "crop" else "masked crop (outside the node set to 0)"
    return f"the {what} of the predicted node, margin {settings['roi_margin']:g}"


def predict_image(image, models: DemoModels) -> dict:
    """Everything the page shows for one PIL image (any mode or bit depth, see `to_8bit_grayscale`):

    probability (of the positive class, "malignant"), label (at the classifier's validation threshold), threshold,
    positive_label, roi (the classifier's view: full, crop, masked, or full when the predicted mask is empty),
    note (what was done to the image, in words), node_pixels (None without a segmenter), outline (RGB: the image
    with the predicted node's contour, or the plain image without a segmenter), heatmap (RGB: occlusion saliency
    of the given label over the classifier's view).
    """
    settings = models.settings
    check_image_size(image.size)  # as predict.py and the app's upload: no label for a 1x1 image
    gray, conversion = to_8bit_grayscale(image)
    notes = [conversion] if conversion else []
    ((probability, mask, roi, view),) = classify_images(
        [gray], models.classifier, models.classifier_processor, settings, models.segmenter,
        models.segmenter_processor, ["the upload"],
    )
    if models.segmenter is None:
        notes.append("no segmenter: no node outline")
    notes.insert(0, f"classified {roi_description(roi, settings)}")
    probability = float(probability)
    label = label_at_threshold(probability, settings["threshold"], settings)
    label_index = {name: index for index, name in models.id2label.items()}.get(label, settings["positive_index"])
    (saliency,) = saliency_maps(models.classifier, classifier_pixel_values(view, models), label_index, "occlusion")
    outline = gray.convert("RGB") if mask is None else Image.fromarray(overlay_contours(gray, (mask, PREDICTED_COLOR)))
    return {
        "probability": probability,
        "label": label,
        "threshold": settings["threshold"],
        "positive_label": settings["positive_label"],
        "roi": roi,
        "note": "; ".join(notes),
        "node_pixels": None if mask is None else int(np.asarray(mask).sum()),
        "outline": outline,
        "heatmap": saliency_overlay(view, saliency),
    }


# The offline demo: tiny models trained on synthetic data by the training scripts themselves


def model_folder_complete(folder) -> bool:
    """Whether `folder` holds a saved model: its config, weights and image processor."""
    return all((Path(folder) / name).is_file() for name in MODEL_FILES)


def write_demo_export(folder, cases_per_group=None) -> Path:
    """A synthetic LymphUs export for the demo (official counts by default, images at 1/4 size); reused if there."""
    from lymphus_ml.data import write_synthetic_export

    folder, export = Path(folder), Path(folder) / "export"
    if not (export / "README.md").is_file():  # the export moves into place only when complete
        write_synthetic_export(folder, scale=0.25, cases_per_group=cases_per_group)
    return export


def train_demo_models(names, folder, export, extra_arguments=(), root=PROJECT_ROOT) -> None:
    """Run the training scripts of demo models `names` with --offline_demo, at the same time (one process each),
    each into `folder/<name>.partial`, moved to `folder/<name>` only on success; logs in `folder/<name>.log`."""
    runs = {}
    for name in names:
        script, arguments = OFFLINE_DEMO_MODELS[name]
        staging, log_path = folder / f"{name}.partial", folder / f"{name}.log"
        shutil.rmtree(staging, ignore_errors=True)
        command = [sys.executable, str(Path(root) / script), "--offline_demo", "--dataset_name", str(export),
                   "--output_dir", str(staging), *arguments, *extra_arguments]
        logger.info(f"Training the offline demo {name}: {script} --offline_demo ... (log: {log_path})")
        log = open(log_path, "w")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root,
                                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
        runs[name] = (script, process, log, staging, log_path)
    failures = []
    for name, (script, process, log, staging, log_path) in runs.items():
        status = process.wait()
        log.close()
        if status != 0 or not model_folder_complete(staging):
            tail = "".join(log_path.read_text().splitlines(keepends=True)[-15:])
            failures.append(f"{script} --offline_demo failed (exit status {status}); end of {log_path}:\n{tail}")
            continue
        shutil.rmtree(folder / name, ignore_errors=True)
        staging.rename(folder / name)
    if failures:
        raise RuntimeError("\n".join(failures))


def prepare_offline_demo(folder, cases_per_group=None, extra_arguments=(), root=PROJECT_ROOT) -> dict[str, Path]:
    """{"classifier": path, "segmenter": path}: the tiny offline demo models in `folder`, trained by their scripts
    when missing or incomplete, else reused. `cases_per_group` and `extra_arguments` (appended to both training
    commands, e.g. ["--max_steps", "2"]) make a quicker demo; delete the folder to train again."""
    folder = Path(folder)
    paths = {name: folder / name for name in OFFLINE_DEMO_MODELS}
    missing = [name for name, path in paths.items() if not model_folder_complete(path)]
    if not missing:
        logger.info(f"Reusing the offline demo models in {folder}")
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    export = write_demo_export(folder / "synthetic-lymphus", cases_per_group)
    train_demo_models(missing, folder, export, extra_arguments, root)
    return paths


def synthetic_examples(folder, per_group: int = 2) -> list[Path]:
    """Example images: the first `per_group` benign-group and malignant-group cases of centre 2 of a synthetic
    release (`lymphus.py synth`, made-up pixels; centre 2 is the offline demo's external centre, unseen in its
    training), as PNG files in `folder`, written once."""
    import lymphus

    folder = Path(folder)
    names = [f"synthetic-center2-{group}-{index}.png" for group in ("benign", "malignant")
             for index in range(1, per_group + 1)]
    if all((folder / name).is_file() for name in names):
        return [folder / name for name in names]
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        archives = lymphus.write_synthetic_archives(scratch, cases_per_group=max(3, per_group), scale=0.5)
        with zipfile.ZipFile(archives[-1]) as archive:
            for member in archive.namelist():
                found = re.search(r"/(Benign|Malignant)/(\d+) \1 Image\.bmp$", member)
                name = found and f"synthetic-center2-{found.group(1).lower()}-{found.group(2)}.png"
                if name in names:
                    with archive.open(member) as handle:
                        Image.open(handle).convert("L").save(folder / name)
    return [folder / name for name in names]


# A Gradio Space


def space_requirements(requirements_path=PROJECT_ROOT / "requirements.txt") -> str:
    """The Space's requirements.txt: the project's, less SPACE_EXCLUDED_REQUIREMENTS (comments dropped)."""
    kept = []
    for line in Path(requirements_path).read_text().splitlines():
        requirement = line.split("#", 1)[0].strip()
        name = re.split(r"[<>=!~\[ ;]", requirement)[0].lower().replace("_", "-")
        if requirement and name not in SPACE_EXCLUDED_REQUIREMENTS:
            kept.append(requirement)
    return "\n".join(kept) + "\n"


def space_card(space_id, classifier, segmenter=None, gradio_version=None):
    """The Space's README.md (`SpaceCard` from space_card.md): `sdk: gradio`, `app_file: app.py`, the models."""
    from huggingface_hub import SpaceCard, SpaceCardData

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
    )
    return SpaceCard.from_template(
        card_data, template_path=str(SPACE_CARD_TEMPLATE), space_id=space_id, classifier=classifier, segmenter=segmenter
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
    if config.get("roi_mode", "full") != "full" and segmenter is None:
        raise ValueError(
            f"Classifier {classifier} was trained on --roi {config['roi_mode']}: the Space needs --segmenter (its Hub id)."
        )


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
