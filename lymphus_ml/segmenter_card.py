"""The model card of a LymphUs node segmenter (train_segformer.py): `segmenter_card` renders segmentation_card.md with
the detection rate, Dice/IoU/HD95 and the overlays. What both model cards share is in lymphus_ml.cards (the
segmenter's `model-index` results too: `segmentation_eval_results`).
"""

from lymphus_ml.cards import (
    CARD_TAGS,
    LYMPHUS_DATA_LICENSE,
    PROJECT_ROOT,
    common_context,
    dataset_reference,
    reporting_order,
    segmentation_eval_results,
    split_sources,
)
from lymphus_ml.evaluation import format_metric
from lymphus_ml.segmentation import SEGMENTATION_METRICS


SEGMENTER_CARD_TEMPLATE = PROJECT_ROOT / "segmentation_card.md"
SHIPPED_FILES = ("segmentation_card.md",)


def segmenter_card(
    *,
    model_name: str,
    base_model: str | None,
    model_description: str,
    dataset_name: str,
    dataset_config: str | None,
    external_config: str | None,
    split_sizes: dict,
    split_metrics: dict,
    grids: dict | None = None,
    synthetic: bool = False,
    hyperparameters: dict | None = None,
    confidence_level: float = 0.95,
    repo_id: str | None = None,
    license_fields: dict | None = None,
    dataset_revision: str | None = None,
):
    """The `ModelCard` of a LymphUs node segmenter (segmentation_card.md), with Dice/IoU/HD95 in `model-index`.

    split_sizes: {split: n_images}; split_metrics: {split: metrics as in metrics_<split>.json};
    grids: {split: "overlays_<split>.png"}.
    """
    from huggingface_hub import ModelCard, ModelCardData

    is_hub_dataset, _ = dataset_reference(dataset_name)
    sources = split_sources(dataset_config, external_config)
    license_fields = license_fields or dict(LYMPHUS_DATA_LICENSE)
    card_data = ModelCardData(
        model_name=model_name,
        base_model=base_model,
        datasets=[dataset_name] if is_hub_dataset else None,
        library_name="transformers",
        pipeline_tag="image-segmentation",
        tags=["image-segmentation", "semantic-segmentation"] + CARD_TAGS + (["synthetic-data"] if synthetic else []),
        metrics=None,  # no Hub metric id for Dice, node IoU or HD95 (cards.HUB_METRIC_TYPES)
        eval_results=segmentation_eval_results(
            split_metrics, dataset_name, dataset_config, external_config, confidence_level, dataset_revision
        )
        or None,
        **license_fields,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(SEGMENTER_CARD_TEMPLATE),
        **common_context(model_name, synthetic, model_description, base_model, dataset_name, dataset_config,
                         external_config, license_fields, dataset_revision, hyperparameters, confidence_level, repo_id),
        data_rows=[(split, sources.get(split, split), n) for split, n in split_sizes.items()],
        result_rows=segmentation_result_rows(split_metrics, sources),
        grids=grids or {},
    )


def detection_text(metrics) -> str:
    """The detection rate as "k/n = rate (CI)" (n/a when no expert mask has a node)."""
    if metrics.get("detection_rate") is None:
        return "n/a"
    return f"{metrics.get('n_detected')}/{metrics.get('n_with_node')} = {format_metric(metrics, 'detection_rate')}"


def segmentation_row(title, metrics) -> list[str]:
    """One row of the card's results table: n, detection, detected Dice and HD95, worst-case Dice, IoU, HD95, misses."""
    worst = [format_metric(metrics, name) for name in SEGMENTATION_METRICS]
    worst[-1] += f" (n={metrics.get('n_hd95_defined')})"
    return ([title, str(metrics.get("n_images")), detection_text(metrics), format_metric(metrics, "dice_detected"),
             format_metric(metrics, "hd95_detected")] + worst + [missed_text(metrics)])


def segmentation_result_rows(split_metrics, sources) -> list[list[str]]:
    """Rows of the card's results table: per split, then per centre when the split mixes centres."""
    rows = []
    for split in reporting_order(split_metrics):
        metrics = split_metrics[split]
        title = "validation (model selection, optimistic)" if split == "validation" else split
        rows.append(segmentation_row(f"{title} ({sources.get(split, split)})", metrics))
        for centre, by_centre in (metrics.get("by_centre") or {}).items():
            rows.append(segmentation_row(f"{split}, {centre} only", by_centre))
    return rows


def missed_text(metrics) -> str:
    missed, spurious = metrics.get("n_missed"), metrics.get("n_spurious")
    if missed is None:
        return "n/a"
    return f"{missed}" + (f" (+{spurious} spurious)" if spurious else "")
