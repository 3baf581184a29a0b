"""Model cards: `huggingface_hub.ModelCard.from_template` on the Jinja templates beside `dataset_card.md`.

Python builds the `model-index` results (`EvalResult`s) and the table rows; the templates hold the prose. This module
holds what both cards share: licences, `model-index` and Hub evaluation results, names and provenance
(`common_context`); each card is built in its own module: lymphus_ml.classifier_card (model_card.md) and
lymphus_ml.segmenter_card (segmentation_card.md).
"""

import logging
from pathlib import Path

from lymphus_ml.evaluation import (
    DEGENERATE_INTERVAL,
    METRIC_DISPLAY_NAMES,
    THRESHOLD_METRICS,
    degenerate_interval,
    format_metric,
)
from lymphus_ml.release import LYMPHUS_LICENSE
from lymphus_ml.segmentation import METRIC_DISPLAY_NAMES as SEGMENTATION_DISPLAY_NAMES
from lymphus_ml.segmentation import SEGMENTATION_METRICS


PROJECT_ROOT = Path(__file__).resolve().parent.parent
logger = logging.getLogger(__name__)
CARD_TAGS = ["medical-imaging", "ultrasound", "lymph-node", "lymphus"]
# The Hub's metric ids (the evaluate-metric modules) of the reported metrics that have one (sensitivity is recall, PPV
# is precision); model-index holds only these. Specificity, NPV, balanced accuracy, Dice, IoU (the Hub's `mean_iou`
# is another quantity), HD95 and the detection rate have none: the card's tables and metrics_*.json give them.
HUB_METRIC_TYPES = {"roc_auc": "roc_auc", "accuracy": "accuracy", "sensitivity": "recall", "ppv": "precision", "f1": "f1"}
# Held-out sets first; validation (which chose the epoch and the threshold) last.
REPORTING_ORDER = ("external", "external_predicted_roi", "test", "test_predicted_roi", "validation")
# The terms of the data the weights were trained on, when neither the base model's nor the user's licence is known:
# the dataset card's own fields and name for them (lymphus_ml.release.LYMPHUS_LICENSE), so both say the same thing.
LYMPHUS_DATA_LICENSE = dict(LYMPHUS_LICENSE)
LICENSE_FIELDS = ("license", "license_name", "license_link")


def card_license(license_id: str | None, base_model_license: dict | str | None) -> dict:
    """ModelCardData licence fields: the user's --license, else the base model's (`base_model_license`: its
    license / license_name / license_link), else `other` naming the LymphUs data terms the weights were trained
    under. A bare `other` (the user's, or a base card naming no terms) gets the LymphUs terms' name and link."""
    if license_id:
        fields = {"license": license_id}
    elif isinstance(base_model_license, str):
        fields = {"license": base_model_license}
    elif base_model_license and base_model_license.get("license"):
        fields = {key: base_model_license[key] for key in LICENSE_FIELDS if base_model_license.get(key)}
    else:
        return dict(LYMPHUS_DATA_LICENSE)
    if fields["license"] == "other" and license_id:
        fields.update({key: LYMPHUS_DATA_LICENSE[key] for key in ("license_name", "license_link")})
    return fields


def base_model_license(base_model: str | None, revision: str | None = None) -> dict | None:
    """{license, license_name, license_link} of a Hub base model's card at `revision` (`HfApi.model_info`'s
    card_data), the keys it has; None with no base model, no card or no licence, or where the Hub cannot be read
    (offline, gated, unknown: logged)."""
    if not base_model or Path(base_model).exists():
        return None
    import httpx
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        card_data = HfApi().model_info(base_model, revision=revision).card_data
    except (HfHubHTTPError, httpx.HTTPError, OSError, ValueError) as error:
        logger.warning(f"The licence of the base model {base_model} could not be read ({error}); the card names the "
                       "LymphUs data terms instead.")
        return None
    fields = {key: card_data.get(key) for key in LICENSE_FIELDS if card_data is not None and card_data.get(key)}
    return fields if fields.get("license") else None


def license_text(fields: dict) -> str:
    """The card's licence line: the id; for `other`, whose terms (name and link) and where they come from."""
    license_id, name, link = (fields.get(key) for key in LICENSE_FIELDS)
    if license_id != "other":
        return f"`{license_id}`"
    if name == LYMPHUS_DATA_LICENSE["license_name"]:
        return (
            f"`other` ({name}): the weights were trained on LymphUs, whose terms ({link}) apply to them; no other "
            "licence was given."
        )
    named = ", ".join(part for part in (name and f"`{name}`", link) if part)
    return (
        "`other`" + (f" ({named})" if named else "") + ": the base model's licence"
        + ("" if named else ", which its card does not name (read the base model's card)")
        + f"; the weights were also trained on LymphUs, whose terms ({LYMPHUS_DATA_LICENSE['license_link']}) apply."
    )


def reporting_order(splits) -> list[str]:
    """Splits in the order a reader should weigh them: external, test, ..., validation last."""
    return sorted(splits, key=lambda split: REPORTING_ORDER.index(split) if split in REPORTING_ORDER else len(REPORTING_ORDER))


def perfect_separation_bound(values, level: int) -> str:
    """The one-sided bound Newcombe's interval leaves a perfectly separated AUC (of 1: a lower bound; of 0: upper)."""
    if values.get("roc_auc_ci_low") is None:
        return "no interval"
    if values["roc_auc"] >= 1.0:
        return f"{level}% CI lower bound {values['roc_auc_ci_low']:.3f} (Newcombe)"
    return f"{level}% CI upper bound {values['roc_auc_ci_high']:.3f} (Newcombe)"


def auc_text(values, level: int) -> str:
    """ROC-AUC with its Newcombe interval (the headline) and DeLong's and the bootstrap's beside it, or, for perfectly
    separated classes, Newcombe's one-sided bound."""
    if values.get("roc_auc") is None:
        return "n/a (one class only)"
    if values.get("perfect_separation"):
        return (f"{values['roc_auc']:.3f}: the classes are perfectly separated in this set; "
                f"{perfect_separation_bound(values, level)}")
    low, high = values.get("roc_auc_ci_low"), values.get("roc_auc_ci_high")
    if low is None or high is None:
        text = format_metric(values, "roc_auc")
    else:
        text = f"{values['roc_auc']:.3f} ({level}% CI {low:.3f}-{high:.3f}, Newcombe)"
    others = [(method, values.get(f"roc_auc_{key}_ci_low"), values.get(f"roc_auc_{key}_ci_high"))
              for method, key in (("DeLong", "delong"), ("stratified bootstrap", "bootstrap"))]
    others = [f"{method} {low:.3f}-{high:.3f}" for method, low, high in others if low is not None and high is not None]
    if others:
        text += f"; for comparison {', '.join(others)}"
        if values.get("small_sample"):
            text += " (too narrow below 30 cases a class: see the README's coverage table)"
    return text


def dataset_reference(dataset_name) -> tuple[bool, str]:
    """(is a Hub id, how the card names it): a local export folder is named by its folder."""
    is_hub_dataset = not Path(dataset_name).exists()
    return is_hub_dataset, dataset_name if is_hub_dataset else f"{Path(dataset_name).name} (local export)"


def split_sources(dataset_config, external_config) -> dict:
    """Where each evaluated split comes from, in words."""
    config = dataset_config or "default"
    return {
        "train": f"{config} / train",
        "validation": f"{config} / validation",
        "test": f"{config} / test",
        "external": f"{external_config} / all splits",
        "test_predicted_roi": f"{config} / test, ROI from the segmenter's masks",
        "external_predicted_roi": f"{external_config} / all splits, ROI from the segmenter's masks",
    }


def classification_eval_results(
    split_metrics, dataset_name, dataset_config, external_config, confidence_level=0.95, dataset_revision=None
):
    """`EvalResult`s for model-index, held-out sets first: ROC-AUC, then each threshold metric at the Youden threshold
    and at 0.5. Only metrics with a Hub metric id (HUB_METRIC_TYPES), and only for a Hub dataset ([] for a local
    folder: `dataset.type` must be a Hub id); the threshold in `metric_args` (an argument of the computation);
    the confidence interval in the metric's display name, where model-index keeps extra information."""
    from huggingface_hub import EvalResult

    is_hub_dataset, _ = dataset_reference(dataset_name)
    if not is_hub_dataset:
        return []  # model-index names a Hub dataset (`dataset.type`): a local folder has none
    level = int(round(confidence_level * 100))
    eval_results = []
    for split in reporting_order(split_metrics):
        metrics = split_metrics[split]
        base_split = split.removesuffix("_predicted_roi")
        config = external_config if base_split == "external" else dataset_config
        common = dict(
            task_type="image-classification",
            dataset_type=dataset_name,
            dataset_name=f"LymphUs {config or ''} {split}".replace("  ", " "),
            dataset_config=config,
            dataset_split="all" if base_split == "external" else base_split,
            dataset_revision=dataset_revision,
        )
        entries = [("roc_auc", metrics["at_0.5"], None)]
        entries += [(name, metrics["at_youden"], "youden") for name in THRESHOLD_METRICS]
        entries += [(name, metrics["at_0.5"], "threshold_0.5") for name in THRESHOLD_METRICS]
        for name, values, config_name in entries:
            if name not in HUB_METRIC_TYPES or values.get(name) is None:
                continue  # specificity, NPV, balanced accuracy: no Hub metric id; the card's tables give them
                continue
            label = METRIC_DISPLAY_NAMES[name]
            if split == "validation":
                label = f"{label} [model-selection set, optimistic]"
            if config_name is not None:
                label += f" @ {'Youden ' if config_name == 'youden' else ''}threshold {values['threshold']:.3f}"
            if name == "roc_auc" and values.get("perfect_separation"):
                # Not in the "(95% CI low-high" form: the leaderboard reads that as a two-sided interval.
                label += f" (perfectly separated; {perfect_separation_bound(values, level)})"
            elif degenerate_interval(values.get(f"{name}_ci_low"), values.get(f"{name}_ci_high")):
                label += f" ({DEGENERATE_INTERVAL})"
            elif values.get(f"{name}_ci_low") is not None:
                method = values.get(f"{name}_ci_method", "").replace("-", " ")
                label += f" ({level}% CI {values[f'{name}_ci_low']:.3f}-{values[f'{name}_ci_high']:.3f}{', ' + method if method else ''})"
            eval_results.append(
                EvalResult(
                    metric_type=HUB_METRIC_TYPES[name],
                    metric_value=float(values[name]),
                    metric_name=label,
                    metric_config=config_name,
                    metric_args={"threshold": values["threshold"]} if config_name is not None else None,
                    **common,
                )
            )
    return eval_results


EVAL_RESULTS_FILE = ".eval_results/lymphus.yaml"


def benchmark_eval_results(kind, split_metrics, data_args, dataset_revision=None, repo_id=None) -> dict:
    """{EVAL_RESULTS_FILE: YAML} for a pushed model: its results in the Hub's Evaluation Results format, one entry per
    LymphUs benchmark task it measured (the export's eval.yaml): the test split of `dataset_config` and, for a
    model trained on one centre, the external centre as the `<source>_to_<target>` subset's test split. `kind`:
    "classification" (ROC-AUC) or "segmentation" (mean Dice); `data_args`: the run's dataset_name, dataset_config and
    external_config. {} for a local export (no Hub dataset id to cite)."""
    import yaml
    from huggingface_hub import constants

    from lymphus_ml.release import CENTRES, benchmark_task_id

    dataset_name, external_config = data_args.dataset_name, data_args.external_config
    if not dataset_name or not dataset_reference(dataset_name)[0]:
        return {}
    config = data_args.dataset_config or "all"
    measured = {config: split_metrics.get("test")}
    if config in CENTRES and external_config in CENTRES and external_config != config:
        measured[f"{config}_to_{external_config}"] = split_metrics.get("external")
    entries = []
    for task_config, metrics in measured.items():
        value = (metrics or {}).get("at_0.5", {}).get("roc_auc") if kind == "classification" else (metrics or {}).get("dice")
        if value is None:
            continue
        dataset = {"id": dataset_name, "task_id": benchmark_task_id(kind, task_config)}
        if dataset_revision:
            dataset["revision"] = dataset_revision
        entry = {"dataset": dataset, "value": round(float(value), 6)}
        if repo_id:
            entry["source"] = {"url": f"{constants.ENDPOINT}/{repo_id}", "name": "Model card (the run's own evaluation)"}
        entries.append(entry)
    return {EVAL_RESULTS_FILE: yaml.safe_dump(entries, sort_keys=False)} if entries else {}


def common_context(model_name, synthetic, model_description, base_model, dataset_name, dataset_config,
                   external_config, license_fields, dataset_revision, hyperparameters, confidence_level, repo_id) -> dict:
    """What both model-card templates say alike: names, provenance, licence, training, how to refer to the model."""
    is_hub_dataset, dataset_label = dataset_reference(dataset_name)
    return dict(
        model_name=model_name,
        synthetic=synthetic,
        model_description=model_description,
        base_model=base_model,
        dataset_label=dataset_label,
        dataset_config=dataset_config,
        external_config=external_config,
        license_text=license_text(license_fields),
        dataset_revision=dataset_revision if is_hub_dataset else None,
        hub_dataset=is_hub_dataset,  # model-index and .eval_results cite a Hub dataset; a local folder gets neither
        hyperparameters=hyperparameters,
        level=int(round(confidence_level * 100)),
        model_ref=repo_id or "path/to/this/model",
    )


def segmentation_eval_results(
    split_metrics, dataset_name, dataset_config, external_config, confidence_level=0.95, dataset_revision=None
):
    """`EvalResult`s for model-index, per evaluated split, held-out first, of the reported figures (the detection rate,
    Dice and HD95 of the detected nodes, worst-case means of Dice, IoU and HD95) that have a Hub metric id
    (HUB_METRIC_TYPES): none do (the Hub has no `dice` or `hd95`; its `mean_iou` is a per-class mean over the whole
    set, not this per-image node IoU), so a segmenter's card has no model-index and its Hub results are in
    `.eval_results` (benchmark_eval_results). [] for a local folder too."""
    from huggingface_hub import EvalResult

    is_hub_dataset, _ = dataset_reference(dataset_name)
    if not is_hub_dataset:
        return []  # model-index names a Hub dataset (`dataset.type`): a local folder has none
    level = int(round(confidence_level * 100))
    eval_results = []
    for split in reporting_order(split_metrics):
        metrics = split_metrics[split]
        config = external_config if split == "external" else dataset_config
        for name in SEGMENTATION_REPORTED:
            if name not in HUB_METRIC_TYPES or metrics.get(name) is None:
                continue  # no Hub metric id: the card's table gives it
            label = SEGMENTATION_LABELS[name]
            if split == "validation":
                label += " [model-selection set, optimistic]"
            method = ", clopper pearson" if name == "detection_rate" else ", bootstrap"
            if degenerate_interval(metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")):
                label += f" ({DEGENERATE_INTERVAL})"
            elif metrics.get(f"{name}_ci_low") is not None:
                label += f" ({level}% CI {metrics[f'{name}_ci_low']:.3f}-{metrics[f'{name}_ci_high']:.3f}{method})"
            eval_results.append(
                EvalResult(
                    task_type="image-segmentation",
                    dataset_type=dataset_name,
                    dataset_name=f"LymphUs {config or ''} {split}".replace("  ", " "),
                    dataset_config=config,
                    dataset_split="all" if split == "external" else split,
                    dataset_revision=dataset_revision,
                    metric_type=HUB_METRIC_TYPES[name],
                    metric_value=float(metrics[name]),
                    metric_name=label,
                )
            )
    return eval_results


# The segmentation card's figures in its order: (1) detection, (2) the detected nodes, (3) worst-case means.
SEGMENTATION_REPORTED = ("detection_rate", "dice_detected", "hd95_detected") + SEGMENTATION_METRICS
SEGMENTATION_LABELS = {
    "detection_rate": "Detection rate (predicted mask overlaps the expert's node)",
    "dice_detected": "Dice of the detected nodes, mean",
    "hd95_detected": "HD95 (pixels) of the detected nodes, mean",
    **{name: f"{SEGMENTATION_DISPLAY_NAMES[name]}, worst-case mean over images (misses at the worst)"
       for name in SEGMENTATION_METRICS},
}
