#!/usr/bin/env python
# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "torch>=2.4",
#     "torchvision>=0.19",
#     "transformers>=5,<6",
#     "accelerate>=1.1",
#     "datasets>=5,<6",
#     "huggingface_hub>=2,<3",
#     "evaluate>=0.4.6",
#     "numpy",
#     "scipy",
#     "scikit-learn",
#     "matplotlib",
#     "pillow",
#     "pyarrow",
#     "openpyxl",
#     "pyyaml",
#     "httpx",
#     "tqdm",
#     "safetensors",  # not imported: transformers saves the model with it
#     "jinja2",  # not imported: huggingface_hub's ModelCard.from_template renders the cards with it
# ]
# ///
"""Fine-tune a semantic-segmentation transformer to draw the lymph node on LymphUs ultrasound (background vs node).

Offline, end to end on synthetic data (tiny SegFormer built from a config, no download):

    python train_segformer.py --offline_demo --output_dir runs/segformer-demo --num_train_epochs 6 --learning_rate 5e-3 --per_device_train_batch_size 4

or, step by step (any export works the same way):

    python lymphus.py synth --output_dir /tmp/lymphus_raw
    python lymphus.py export --data_dir /tmp/lymphus_raw --output_dir /tmp/lymphus --verification_mode basic_checks
    python train_segformer.py --dataset_name /tmp/lymphus --dataset_config center1 --external_config center2 \
        --model_config_json '{"model_type":"segformer","depths":[1,1,1,1],"hidden_sizes":[8,16,32,64],"num_attention_heads":[1,1,2,2],"decoder_hidden_size":32}' \
        --image_size 64 --num_train_epochs 1 --use_cpu --output_dir /tmp/segformer-lymphus

A real run, from a pretrained encoder and the dataset on the Hub:

    python train_segformer.py --dataset_name <user>/lymphus --dataset_config center1 --external_config center2 \
        --model_name_or_path nvidia/mit-b0 --image_size 512 --num_train_epochs 50 --learning_rate 6e-5 --bf16 \
        --output_dir segformer-lymphus-center1 --push_to_hub --hub_model_id <user>/segformer-lymphus-center1

The same run on Hub hardware (PEP 723 dependencies above; the project modules it imports travel with it):

    python train_segformer.py --launch_on_hub a10g-small --dataset_name <user>/lymphus ... --push_to_hub --hub_model_id <user>/...

Labels: 0 = background, 1 = lymph_node, used as stored. Unlike the ADE20k recipe of the transformers example
(`do_reduce_labels=True`: 0 becomes 255 and is ignored, every other class moves down by one), nothing is reduced
and nothing is ignored: with two classes, reducing would drop the background from the loss and turn the node into
class 0, and the model would learn to paint every pixel as node. The loss is the cross-entropy over every pixel.

Outputs in --output_dir: the model (safetensors) + image processor, metrics_<split>.json (mean Dice, IoU and HD95
in pixels with bootstrap CIs, per centre when a split mixes centres), segmentation_cases.csv (per case),
overlays_<split>.png (best, median and worst cases) and README.md (the model card), listed in .lymphus-run.json
(the folder must be new, empty or an earlier run's; --push_to_hub uploads only what this run wrote). Use the model
with predict.py.
"""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoConfig, AutoImageProcessor, AutoModelForSemanticSegmentation, SegformerImageProcessor

from lymphus_ml.cards import base_model_license, benchmark_eval_results, card_license
from lymphus_ml.cli import run
from lymphus_ml.data import dataset_is_synthetic, dataset_revision, load_evaluation_sets
from lymphus_ml.demo_configs import TINY_SEGFORMER_CONFIG
from lymphus_ml.evaluation import SEGMENTATION_METRIC_PATH, format_metric, load_metric
from lymphus_ml.hub import HubJobArguments, hub_repo_id, push_run_to_hub, submit_script_job
from lymphus_ml.images import collate_fn, model_input_size, model_num_channels
from lymphus_ml.plots import plot_overlay_grid
from lymphus_ml.segmentation import (
    ID2LABEL,
    LABEL2ID,
    SegmentationBatchTransform,
    SegmentationComputeMetrics,
    SegmentationLoss,
    evaluate_split,
    mask_labels,
    preprocess_logits_for_metrics,
    select_cases,
    transform_for,
    write_cases_csv,
)
from lymphus_ml.segmenter_card import segmenter_card
from lymphus_ml.training import (
    CheckpointArguments,
    ClinicalTrainer,
    ClinicalTrainingArguments,
    LymphUsDataArguments,
    claim_output_dir,
    offline_demo_export,
    parse_training_arguments,
    prepare_run,
    read_model_config_json,
    train_and_save,
)


logger = logging.getLogger(__name__)

DEFAULT_METRIC_PATH = SEGMENTATION_METRIC_PATH


@dataclass
class DataTrainingArguments(LymphUsDataArguments):
    """What data to train and evaluate on."""

    centre_column_name: str = field(default="centre", metadata={"help": "Centre column, for per-centre metrics."})
    augmentation: str = field(
        default="standard",
        metadata={
            "help": "standard: random resized crop, horizontal flip, rotation (image and mask together), "
            "brightness/contrast (image only); none.",
            "choices": ["standard", "none"],
        },
    )
    metric_path: str = field(
        default=str(DEFAULT_METRIC_PATH),
        metadata={"help": "The binary_segmentation evaluate module (its folder or its .py file)."},
    )


@dataclass
class ModelArguments(CheckpointArguments):
    """Which segmenter to fine-tune (or build from a config, offline)."""

    model_name_or_path: str = field(
        default="nvidia/mit-b0",
        metadata={"help": "Any AutoModelForSemanticSegmentation checkpoint (or a SegFormer encoder): Hub id or folder."},
    )
    image_size: int | None = field(
        default=None,
        metadata={"help": "Square input size in pixels (default: the image processor's size; 512 for a config build)."},
    )


@dataclass
class SegmentationTrainingArguments(ClinicalTrainingArguments):
    """train_vit.py's defaults (evaluate and save every epoch, keep the best), selecting on validation Dice."""

    metric_for_best_model: str | None = field(default="dice", metadata={"help": "Model selection metric (mean Dice)."})


def apply_offline_demo(data_args, model_args, training_args, output_dir):
    """Offline demo: synthetic archives in the official format -> export (built once) -> a tiny SegFormer from a config."""
    data_args.dataset_name = data_args.dataset_name or offline_demo_export(training_args, output_dir)
    data_args.dataset_config = data_args.dataset_config or "center1"
    data_args.external_config = data_args.external_config or "center2"
    model_args.model_config_json = model_args.model_config_json or json.dumps(TINY_SEGFORMER_CONFIG)
    model_args.image_size = model_args.image_size or 64


def load_model(model_args, do_train):
    """(model, image_processor, base_model, description): two classes, background included, labels never reduced."""
    if model_args.model_config_json:
        model_type, config_dict = read_model_config_json(model_args.model_config_json)
        config = AutoConfig.for_model(model_type, num_labels=len(ID2LABEL), id2label=ID2LABEL, label2id=LABEL2ID, **config_dict)
        model = AutoModelForSemanticSegmentation.from_config(config)
        size = model_args.image_size or 512
        num_channels = model_num_channels(config)
        image_processor = SegformerImageProcessor(
            size={"height": size, "width": size},
            image_mean=[0.5] * num_channels,
            image_std=[0.5] * num_channels,
            do_reduce_labels=False,
        )
        return model, image_processor, None, f"Architecture `{model_type}` built from a config: {json.dumps(config_dict)}."
    config = AutoConfig.from_pretrained(
        model_args.model_name_or_path,
        num_labels=len(ID2LABEL),
        id2label=ID2LABEL,
        label2id=LABEL2ID,
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
    )
    model = AutoModelForSemanticSegmentation.from_pretrained(
        model_args.model_name_or_path,
        config=config,
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
    )
    image_processor = AutoImageProcessor.from_pretrained(
        model_args.image_processor_name or model_args.model_name_or_path,
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
    )
    if model_args.image_size:
        image_processor.size = {"height": model_args.image_size, "width": model_args.image_size}
    if getattr(image_processor, "do_reduce_labels", False):
        logger.warning(f"{model_args.image_processor_name or model_args.model_name_or_path}: do_reduce_labels=True "
                       "(an ADE20k setting) is turned off: LymphUs class 0 is the background and is learned.")
    image_processor.do_reduce_labels = False
    base_model = model_args.model_name_or_path if not Path(model_args.model_name_or_path).exists() else None
    verb = "Fine-tuned from" if do_train else "Evaluation only (no training) of"
    return model, image_processor, base_model, f"{verb} `{model_args.model_name_or_path}` ({config.model_type})."


def build_trainer(model, image_processor, dataset, data_args, training_args, metric):
    """ClinicalTrainer on (image, mask) pairs: cross-entropy over every pixel, model selection on validation Dice."""
    num_channels = model_num_channels(model.config)
    eval_transform = transform_for(image_processor, num_channels, train=False)
    train_transform = transform_for(image_processor, num_channels, train=data_args.augmentation != "none")
    columns = [data_args.image_column_name, data_args.mask_column_name, data_args.case_id_column_name]

    def view(split_dataset, transform):
        return split_dataset.select_columns(columns).with_transform(SegmentationBatchTransform(transform, *columns))

    return ClinicalTrainer(
        model=model,
        args=training_args,
        train_dataset=view(dataset["train"], train_transform) if training_args.do_train else None,
        eval_dataset=view(dataset["validation"], eval_transform),
        processing_class=image_processor,
        data_collator=collate_fn,
        compute_metrics=SegmentationComputeMetrics(metric),
        compute_loss_func=SegmentationLoss(),
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
    )


def overlay_rows(split_dataset, cases, predictions, per_image_dice, data_args) -> list[dict]:
    """The best, median and worst cases by Dice, as rows of `plot_overlay_grid`."""
    rows = []
    for rank, index in select_cases(per_image_dice).items():
        example, case = split_dataset[index], cases[index]
        hd95 = "n/a" if case["hd95"] is None else f"{case['hd95']:.1f} px"
        rows.append(
            {
                "image": example[data_args.image_column_name],
                "expert": mask_labels(example[data_args.mask_column_name], f"case {case['case_id']}"),
                "predicted": predictions[index],
                "label": f"{rank}: {case['case_id']}\nDice {case['dice']:.3f}, HD95 {hd95}",
            }
        )
    return rows


def evaluate_and_report(model, image_processor, evaluation_sets, metric, data_args, training_args, output_dir):
    """Every evaluated set at each image's original size, with bootstrap CIs; metrics_<split>.json, overlay grids
    of the best, median and worst cases, segmentation_cases.csv. Returns (split_metrics, grids)."""
    eval_transform = transform_for(image_processor, model_num_channels(model.config), train=False)
    local_dataset = Path(data_args.dataset_name).exists()
    split_metrics, grids, case_rows = {}, {}, []
    for split, split_dataset in evaluation_sets.items():
        results, cases, predictions = evaluate_split(
            model,
            eval_transform,
            split_dataset,
            metric,
            image_column=data_args.image_column_name,
            mask_column=data_args.mask_column_name,
            case_id_column=data_args.case_id_column_name,
            centre_column=data_args.centre_column_name,
            batch_size=training_args.per_device_eval_batch_size,
            n_bootstrap=data_args.n_bootstrap,
            confidence_level=data_args.confidence_level,
            seed=training_args.seed,
        )
        summary = {key: value for key, value in results.items() if not key.startswith("per_image")}
        record = {
            "split": split,
            "dataset": Path(data_args.dataset_name).name if local_dataset else data_args.dataset_name,
            "config": data_args.external_config if split == "external" else data_args.dataset_config,
            "resolution": "original",
            **summary,
            "cases": cases,
        }
        (output_dir / f"metrics_{split}.json").write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
        split_metrics[split] = summary
        case_rows += [{"split": split, **case} for case in cases]
        rows = overlay_rows(split_dataset, cases, predictions, results["per_image_dice"], data_args)
        grid = plot_overlay_grid(rows, output_dir / f"overlays_{split}.png", title=f"{split}: best, median, worst by Dice")
        grids[split] = grid.name
        logger.info(
            f"{split}: detected {summary.get('n_detected')}/{summary.get('n_with_node')} nodes "
            f"({format_metric(summary, 'detection_rate')}); detected nodes: Dice {format_metric(summary, 'dice_detected')}, "
            f"HD95 {format_metric(summary, 'hd95_detected')} px; worst-case means: Dice {format_metric(summary, 'dice')}, "
            f"IoU {format_metric(summary, 'iou')}, HD95 {format_metric(summary, 'hd95')} px (n={summary['n_images']})"
        )
    write_cases_csv(output_dir / "segmentation_cases.csv", case_rows)
    return split_metrics, grids


def hyperparameters_of(data_args, training_args, image_processor) -> dict:
    height, width = model_input_size(image_processor)
    return {
        "learning_rate": training_args.learning_rate,
        "epochs": training_args.num_train_epochs,
        "train_batch_size": training_args.per_device_train_batch_size,
        "seed": training_args.seed,
        "augmentation": data_args.augmentation,
        "loss": "cross-entropy over all pixels (no ignore_index)",
        "model_selection": f"best validation {training_args.metric_for_best_model}",
        "input_size": f"{height}x{width}",
    }


def job_paths(model_args, data_args, training_args) -> dict:
    """{option: value} of the options that name a file or folder, which a Hub Job cannot read when local."""
    return {
        "--model_name_or_path": model_args.model_name_or_path,
        "--model_config_json": model_args.model_config_json,
        "--image_processor_name": model_args.image_processor_name,
        "--resume_from_checkpoint": training_args.resume_from_checkpoint,
        "--metric_path": data_args.metric_path if data_args.metric_path != str(DEFAULT_METRIC_PATH) else None,
    }


def main(args=None):
    # Arguments
    dataclass_types = (ModelArguments, DataTrainingArguments, SegmentationTrainingArguments, HubJobArguments)
    (model_args, data_args, training_args, job_args), push_to_hub, hub_token, argv = parse_training_arguments(
        dataclass_types, args
    )

    # Hub Job: submit this same command, with the project modules it imports, and stop
    if job_args.launch_on_hub:
        paths = job_paths(model_args, data_args, training_args)
        return submit_script_job(Path(__file__), argv, job_args, data_args.dataset_name, push_to_hub, hub_token, paths)

    # Logging, seed, output folder (refused unless new, empty or our own; and the offline demo's synthetic export)
    output_dir = prepare_run(training_args, logger)
    run_folder = claim_output_dir(training_args, Path(__file__).name)
    if data_args.offline_demo:
        apply_offline_demo(data_args, model_args, training_args, output_dir)

    # Data
    dataset, evaluation_sets = load_evaluation_sets(
        data_args.dataset_name,
        data_args.dataset_config,
        data_args.external_config,
        cache_dir=model_args.cache_dir,
        do_train=training_args.do_train,
        required_columns=(data_args.image_column_name, data_args.mask_column_name, data_args.case_id_column_name),
    )

    # Model and image processor
    model, image_processor, base_model, model_description = load_model(model_args, training_args.do_train)

    # Train
    metric = load_metric(data_args.metric_path)
    trainer = build_trainer(model, image_processor, dataset, data_args, training_args, metric)
    if training_args.do_train:
        train_and_save(trainer, training_args.resume_from_checkpoint, run_folder)
    if not trainer.is_world_process_zero():
        return None  # under torchrun the first process evaluates, writes the reports and pushes

    # Evaluate
    split_metrics, grids = evaluate_and_report(
        trainer.model, image_processor, evaluation_sets, metric, data_args, training_args, output_dir
    )

    # Model card
    repo_id = hub_repo_id(training_args.hub_model_id, output_dir, hub_token) if push_to_hub else None
    repo_id = repo_id or training_args.hub_model_id or output_dir.resolve().name
    split_sizes = {"train": len(dataset["train"])} if training_args.do_train else {}
    split_sizes.update({split: len(split_dataset) for split, split_dataset in evaluation_sets.items()})
    card = segmenter_card(
        model_name=repo_id.split("/")[-1],
        base_model=base_model,
        model_description=model_description,
        dataset_name=data_args.dataset_name,
        dataset_config=data_args.dataset_config,
        external_config=data_args.external_config,
        split_sizes=split_sizes,
        split_metrics=split_metrics,
        grids=grids,
        synthetic=dataset_is_synthetic(data_args.dataset_name),
        hyperparameters=hyperparameters_of(data_args, training_args, image_processor),
        confidence_level=data_args.confidence_level,
        repo_id=repo_id if push_to_hub else training_args.hub_model_id,
        license_fields=card_license(model_args.license, base_model_license(base_model, model_args.model_revision)),
        dataset_revision=dataset_revision(data_args.dataset_name),
    )
    card.save(output_dir / "README.md")
    run_folder.complete()

    # Push: one commit of the files this run wrote
    if push_to_hub:
        url = push_run_to_hub(
            output_dir, repo_id, hub_token, private=training_args.hub_private_repo, commit_message="LymphUs node segmenter",
            extra_files=benchmark_eval_results(
                "segmentation", split_metrics, data_args, dataset_revision(data_args.dataset_name), repo_id),
        )
        logger.info(f"Pushed to {url}")
    logger.info(f"Results in {output_dir.resolve()}: README.md, metrics_*.json, segmentation_cases.csv, overlays_*.png")
    return split_metrics


if __name__ == "__main__":
    run(main)
