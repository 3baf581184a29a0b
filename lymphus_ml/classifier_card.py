"""The model card of a LymphUs classifier (train_vit.py): `classifier_card` renders model_card.md with the results,
the "Where the model looks" section, the cross-validation and fine-tuning sections; `card_fields` gathers its
arguments from a run. What both model cards share (licence, model-index results, common context) is in
lymphus_ml.cards.
"""

from lymphus_ml.cards import (
    CARD_TAGS,
    LYMPHUS_DATA_LICENSE,
    PROJECT_ROOT,
    auc_text,
    base_model_license,
    card_license,
    classification_eval_results,
    common_context,
    dataset_reference,
    reporting_order,
    split_sources,
)
from lymphus_ml.data import dataset_is_synthetic, dataset_revision, split_sizes
from lymphus_ml.evaluation import METRIC_DISPLAY_NAMES, THRESHOLD_METRICS, format_metric
from lymphus_ml.images import model_input_size


CLASSIFIER_CARD_TEMPLATE = PROJECT_ROOT / "model_card.md"
SHIPPED_FILES = ("model_card.md",)


def classifier_card(
    *,
    model_name: str,
    base_model: str | None,
    model_description: str,
    dataset_name: str,
    dataset_config: str | None,
    external_config: str | None,
    roi_mode: str,
    roi_margin: float,
    split_sizes: dict,
    split_metrics: dict,
    youden: float,
    class_names=("benign", "malignant"),
    positive_label: str = "malignant",
    plots: dict | None = None,
    synthetic: bool = False,
    hyperparameters: dict | None = None,
    confidence_level: float = 0.95,
    repo_id: str | None = None,
    license_fields: dict | None = None,
    dataset_revision: str | None = None,
    saliency: dict | None = None,
    cross_validation: dict | None = None,
    finetuning: dict | None = None,
):
    """The `ModelCard` of a LymphUs classifier (model_card.md), with `model-index` results.

    A classifier of node crops (`roi_mode` crop or masked) gets `inference: false`: the widget would feed it whole
    images. license_fields: from `card_license`.

    split_sizes: {split: {"n": int, "<class name>": int, ...}}; split_metrics: {split: {"at_0.5": {...},
    "at_youden": {...}}} as in metrics_<split>.json; plots: {split: {"roc": "roc_test.png", "confusion_matrix": ...}}.
    finetuning: lymphus_ml.finetuning.finetuning_record (an adapter's card says `library_name: peft`).
    """
    from huggingface_hub import ModelCard

    sources = split_sources(dataset_config, external_config)
    license_fields = license_fields or dict(LYMPHUS_DATA_LICENSE)
    level = int(round(confidence_level * 100))
    card_data = classifier_card_data(
        model_name, base_model, dataset_name, dataset_config, external_config, roi_mode, split_metrics, synthetic,
        confidence_level, license_fields, dataset_revision, finetuning,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(CLASSIFIER_CARD_TEMPLATE),
        **common_context(model_name, synthetic, model_description, base_model, dataset_name, dataset_config,
                         external_config, license_fields, dataset_revision, hyperparameters, confidence_level, repo_id),
        roi_mode=roi_mode,
        roi_margin=roi_margin,
        roi_text=roi_description(roi_mode, roi_margin),
        positive_label=positive_label,
        negative_label=next((name for name in class_names if name != positive_label), f"not {positive_label}"),
        youden=youden,
        class_names=list(class_names),
        data_rows=data_rows(split_sizes, sources, class_names),
        results=classification_results(split_metrics, sources, plots or {}, level),
        **saliency_context(saliency or {}, level),
        cross_validation=cross_validation,  # lymphus_ml.crossval.card_context, with --cv_folds
        finetuning=finetuning,
    )


def classifier_card_data(model_name, base_model, dataset_name, dataset_config, external_config, roi_mode,
                         split_metrics, synthetic, confidence_level, license_fields, dataset_revision, finetuning):
    """The card's metadata (`ModelCardData`): provenance, tags, licence, `model-index` results; an adapter's card says
    `library_name: peft`, a classifier of node crops `inference: false`."""
    from huggingface_hub import ModelCardData

    adapter = bool(finetuning) and finetuning.get("shared") == "adapter"
    is_hub_dataset, _ = dataset_reference(dataset_name)
    eval_results = classification_eval_results(
        split_metrics, dataset_name, dataset_config, external_config, confidence_level, dataset_revision
    )
    return ModelCardData(
        model_name=model_name,
        base_model=base_model,
        datasets=[dataset_name] if is_hub_dataset else None,
        library_name="peft" if adapter else "transformers",
        pipeline_tag="image-classification",
        tags=["image-classification"] + CARD_TAGS + (["synthetic-data"] if synthetic else [])
        + (["lora"] if finetuning and finetuning.get("scheme") == "lora" else []),
        metrics=["roc_auc", "recall", "precision"],  # Hub metric ids only (cards.HUB_METRIC_TYPES)
        eval_results=eval_results or None,
        **license_fields,
        **({"inference": False} if roi_mode != "full" else {}),
    )


def data_rows(split_sizes, sources, class_names) -> list[dict]:
    """The card's data table: per split, where it comes from, its size and its count of each class."""
    return [
        {"split": split, "source": sources.get(split, split), "n": sizes["n"], "counts": [sizes.get(c, 0) for c in class_names]}
        for split, sizes in split_sizes.items()
    ]


def saliency_context(saliency: dict, level: int) -> dict:
    """The template's "Where the model looks" section: the table rows and the method, explained class and case sample
    they share."""
    return dict(
        saliency_rows=saliency_rows(saliency, level),
        saliency_method=next((summary["method"] for summary in saliency.values()), None),
        saliency_explained=next((summary.get("explained_class") for summary in saliency.values()), None),
        saliency_sample=next(
            ({"max_cases": summary.get("max_cases"), "seed": summary.get("sample_seed")}
             for summary in saliency.values()), None,
        ),
    )


def roi_description(roi_mode, roi_margin) -> str:
    return {
        "full": "the whole image",
        "crop": f"the node's bounding box from the segmentation mask, plus a {roi_margin:.0%} margin on each side",
        "masked": f"the node's bounding box plus a {roi_margin:.0%} margin, every pixel outside the node mask set to 0",
    }[roi_mode]


def split_note(split, values) -> str:
    """What a reader must know before reading a split's numbers."""
    notes = []
    if split == "validation":
        notes.append("Model-selection set: it chose the epoch and the threshold, so these numbers are optimistic.")
    if values.get("small_sample"):
        notes.append(
            f"Fewer than 30 cases of a class ({values.get('n_positive')} positive, {values.get('n_negative')} negative): "
            "the intervals are wide and a difference between models here proves little."
        )
    return " ".join(notes)


def prevalence_text(values) -> str:
    """The evaluated set's prevalence of malignancy, at which its PPV and NPV hold."""
    if not values.get("n"):
        return "n/a"
    return f"{values.get('n_positive', 0) / values['n']:.0%} malignant ({values.get('n_positive')}/{values['n']})"


def threshold_stability_text(values, level: int) -> str:
    """How far the Youden threshold's choice on the validation split moves this set's sensitivity and specificity
    (`youden_threshold_stability`'s keys in the at-Youden metrics); empty when not computed."""
    keys = [f"{name}_range_{end}" for name in ("threshold", "sensitivity_threshold", "specificity_threshold")
            for end in ("low", "high")]
    if any(values.get(key) is None for key in keys):
        return ""
    if values["threshold_range_low"] == values["threshold_range_high"]:
        return (
            f"Re-choosing the Youden threshold on {values.get('threshold_range_n_bootstrap')} bootstrap resamples of "
            f"{values.get('threshold_range_source', 'the validation split')} gave {values['threshold_range_low']:.3f} in the central {level}% of them: the "
            "operating point on this set does not hinge on the luck of the threshold (small validation sets can "
            "still hide a larger spread)."
        )
    return (
        f"Re-choosing the Youden threshold on {values.get('threshold_range_n_bootstrap')} bootstrap resamples of "
        f"{values.get('threshold_range_source', 'the validation split')} moves it over {values['threshold_range_low']:.3f}-{values['threshold_range_high']:.3f} "
        f"(central {level}%), which gives sensitivity {values['sensitivity_threshold_range_low']:.3f}-"
        f"{values['sensitivity_threshold_range_high']:.3f} and specificity {values['specificity_threshold_range_low']:.3f}-"
        f"{values['specificity_threshold_range_high']:.3f} on this set: the part of the operating point that is the "
        "luck of the threshold."
    )


def classification_results(split_metrics, sources, plots, level=95) -> list[dict]:
    """One entry per evaluated split, held-out first, for the card's Results section."""
    results = []
    for split in reporting_order(split_metrics):
        at_youden, at_half = split_metrics[split]["at_youden"], split_metrics[split]["at_0.5"]
        results.append(
            {
                "split": split,
                "title": "validation (model-selection set, optimistic)" if split == "validation" else split,
                "note": split_note(split, at_half),
                "source": sources.get(split, split),
                "n": at_half.get("n"),
                "roc_auc": auc_text(at_half, level),
                "youden_threshold": at_youden["threshold"],
                "prevalence": prevalence_text(at_half),
                "threshold_stability": threshold_stability_text(at_youden, level),
                "rows": [
                    (METRIC_DISPLAY_NAMES[name], format_metric(at_youden, name), format_metric(at_half, name))
                    for name in THRESHOLD_METRICS
                ],
                "confusion": [", ".join(str(m.get(k)) for k in ("tn", "fp", "fn", "tp")) for m in (at_youden, at_half)],
                "plots": [
                    (f"{kind.replace('_', ' ')} {split}", plots[split][kind])
                    for kind in ("roc", "confusion_matrix")
                    if kind in plots.get(split, {})
                ],
            }
        )
    return results


SALIENCY_CONTROL_NAMES = {"head_reinitialised": "control: head re-initialised",
                          "all_reinitialised": "control: all weights re-initialised"}


def saliency_rows(saliency: dict, level: int) -> list[dict]:
    """The card's "Where the model looks" table: per split, held-out first, the trained model then each randomised
    control: share of saliency in the node (with the chance level), pointing game, and the trained model's paired
    excess over the control; the number of cases it rests on, the explained class and the figure."""

    def interval(summary, name):
        value, low, high = summary.get(f"{name}_mean", summary.get(name)), summary.get(f"{name}_ci_low"), summary.get(f"{name}_ci_high")
        if value is None:
            return "n/a"
        return f"{value:.2f}" + (f" ({low:.2f}-{high:.2f})" if low is not None and high is not None else "")

    def excess(summary, name):
        value, low, high = (summary.get(f"excess_{name}_{part}") for part in ("mean", "ci_low", "ci_high"))
        if value is None:
            return "n/a"
        if low is None or high is None:
            return f"{value:+.2f} (the same in every case: no interval)"
        return f"{value:+.2f} ({low:+.2f} to {high:+.2f})"

    def scores(summary):
        return {
            "energy": interval(summary, "energy_in_node"),
            "pointing": interval(
                {"pointing_game": summary.get("pointing_game_hit_rate"),
                 "pointing_game_ci_low": summary.get("pointing_game_ci_low"),
                 "pointing_game_ci_high": summary.get("pointing_game_ci_high")},
                "pointing_game",
            ),
        }

    rows = []
    for split in reporting_order(saliency):
        summary = saliency[split]
        n, of = summary.get("n_images"), summary.get("n_cases_in_set", summary.get("n_images"))
        models = [{"model": "trained", **scores(summary), "excess_energy": "", "excess_pointing": ""}] + [
            {"model": SALIENCY_CONTROL_NAMES.get(name, name), **scores(control),
             "excess_energy": excess(control, "energy_in_node"), "excess_pointing": excess(control, "pointing_game")}
            for name, control in summary.get("controls", {}).items()
        ]
        completeness = None
        if summary.get("completeness_error_median") is not None:
            completeness = (f"{summary['completeness_error_median']:.1%} median, "
                            f"{summary['completeness_error_p90']:.1%} 90th percentile, at up to "
                            f"{summary.get('integrated_gradients_steps_max')} steps")
        rows.append(
            {
                "split": split,
                "n": n,
                "cases": f"{n} of {of}" if n != of else f"all {n}",
                "sampled": n != of,
                "chance": "n/a" if summary.get("node_area_fraction_mean") is None else f"{summary['node_area_fraction_mean']:.2f}",
                "models": models,
                "explained": summary.get("explained_class"),
                "completeness": completeness,
                "figure": summary.get("figure"),
            }
        )
    return rows


def card_fields(data_args, model_args, training_args, dataset, evaluation_sets, class_names, image_processor,
                base_model, model_description, split_metrics, plots, youden, output_dir) -> dict:
    """The keyword arguments of `classifier_card` for this run."""
    sizes = {}
    if training_args.do_train:
        sizes["train"] = split_sizes(dataset["train"], data_args.label_column_name, class_names)
    for split, split_dataset in evaluation_sets.items():
        sizes[split] = split_sizes(split_dataset, data_args.label_column_name, class_names)
    height, width = model_input_size(image_processor)
    hyperparameters = None if not training_args.do_train else {
        "learning_rate": training_args.learning_rate,
        "epochs": training_args.num_train_epochs,
        "train_batch_size": training_args.per_device_train_batch_size,
        "seed": training_args.seed,
        "augmentation": data_args.augmentation,
        "class_weighting": data_args.class_weighting,
        "model_selection": f"best validation {training_args.metric_for_best_model}",
        "input_size": f"{height}x{width}",
    }
    return dict(
        model_name=(training_args.hub_model_id or output_dir.resolve().name).split("/")[-1],
        base_model=base_model,
        model_description=model_description,
        dataset_name=data_args.dataset_name,
        dataset_config=data_args.dataset_config,
        external_config=data_args.external_config,
        roi_mode=data_args.roi,
        roi_margin=data_args.roi_margin,
        split_sizes=sizes,
        split_metrics=split_metrics,
        youden=youden,
        class_names=class_names,
        positive_label=data_args.positive_label,
        plots=plots,
        synthetic=dataset_is_synthetic(data_args.dataset_name),
        hyperparameters=hyperparameters,
        confidence_level=data_args.confidence_level,
        license_fields=card_license(model_args.license, base_model_license(base_model, model_args.model_revision)),
        dataset_revision=dataset_revision(data_args.dataset_name),
    )
