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
#     "captum>=0.9",  # lymphus_ml/saliency.py: --saliency integrated_gradients
#     "peft>=0.21",
#     "safetensors",  # not imported: transformers saves the model with it
#     "jinja2",  # not imported: huggingface_hub's ModelCard.from_template renders the cards with it
# ]
# ///
"""Fine-tune an image-classification transformer on LymphUs (benign vs malignant lymph node ultrasound).

Offline, end to end on synthetic data (tiny ViT built from a config, no download; ~30 s on 2 CPU cores):

    python train_vit.py --offline_demo --output_dir runs/offline-demo --num_train_epochs 5 --learning_rate 1e-3 --roi crop

or, step by step (any export works the same way):

    python lymphus.py synth --output_dir /tmp/lymphus_raw
    python lymphus.py export --data_dir /tmp/lymphus_raw --output_dir /tmp/lymphus --verification_mode basic_checks
    python train_vit.py --dataset_name /tmp/lymphus --dataset_config center1 --external_config center2 \
        --model_config_json '{"model_type":"vit","image_size":64,"patch_size":16,"num_hidden_layers":2,"hidden_size":64,"num_attention_heads":2,"intermediate_size":128}' \
        --roi crop --num_train_epochs 3 --learning_rate 1e-3 --use_cpu --output_dir /tmp/vit-lymphus

A real run, from a pretrained checkpoint and the dataset on the Hub (training cases are decoded and cropped once,
then augmented per batch in memory; on CPU keep --dataloader_num_workers 0, on a GPU try a few workers:
benchmarks/bench_train_vit.py measures whether the pipeline keeps up):

    python train_vit.py --dataset_name <user>/lymphus --dataset_config center1 --external_config center2 \
        --model_name_or_path google/vit-base-patch16-224-in21k --roi crop --class_weighting balanced \
        --num_train_epochs 20 --learning_rate 5e-5 --bf16 --dataloader_num_workers 8 \
        --dataloader_persistent_workers True --output_dir vit-lymphus-center1 \
        --push_to_hub --hub_model_id <user>/vit-lymphus-center1

The same run on Hub hardware: the script submits itself, with the project modules it imports shipped beside it
(lymphus_ml.hub.launch_job; the PEP 723 block above lists the dependencies; the token travels as a secret):

    python train_vit.py --launch_on_hub a10g-small --dataset_name <user>/lymphus ... --push_to_hub --hub_model_id <user>/...

Outputs in --output_dir: the model (safetensors) + image processor, metrics_<split>.json, predictions.csv,
roc_<split>.png, confusion_matrix_<split>.png, threshold.json and README.md (the model card); .lymphus-run.json
lists them. The folder must be new, empty or written by an earlier run (lymphus_ml.run_folder); --push_to_hub
uploads only what this run wrote.
"""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from datasets import ClassLabel

from lymphus_ml import crossval
from lymphus_ml.cards import benchmark_eval_results
from lymphus_ml.classifier_card import card_fields, classifier_card
from lymphus_ml.classifier_training import build_trainer, load_model, predict_splits
from lymphus_ml.cli import run
from lymphus_ml.data import empty_mask_cases, load_evaluation_sets, split_sizes
from lymphus_ml.demo_configs import TINY_VIT_CONFIG
from lymphus_ml.evaluation import (
    CLINICAL_METRIC_PATH,
    apply_threshold,
    clinical_metrics_at_thresholds,
    format_metric,
    load_metric,
    youden_threshold,
    youden_threshold_stability,
)
from lymphus_ml.finetuning import (
    BASE_MODEL_FOLDER,
    FinetuningArguments,
    TrainingCostCallback,
    apply_finetuning,
    finetuning_record,
    merge_for_saving,
    save_classifier_config,
    write_finetuning_record,
)
from lymphus_ml.hub import HubJobArguments, hub_repo_id, push_run_to_hub, submit_script_job
from lymphus_ml.images import ROI_MODES
from lymphus_ml.plots import plot_confusion_matrix, plot_roc
from lymphus_ml.runs import PREDICTION_COLUMNS, write_run_predictions
from lymphus_ml.saliency import SALIENCY_METHODS
from lymphus_ml.saliency_controls import where_the_model_looks
from lymphus_ml.training import (
    CheckpointArguments,
    ClinicalTrainingArguments,
    LymphUsDataArguments,
    claim_output_dir,
    offline_demo_export,
    parse_training_arguments,
    prepare_run,
    train_and_save,
)


logger = logging.getLogger(__name__)

DEFAULT_METRIC_PATH = CLINICAL_METRIC_PATH


@dataclass
class DataTrainingArguments(LymphUsDataArguments):
    """What data to train and evaluate on, and how images reach the model."""

    label_column_name: str = field(default="label", metadata={"help": "ClassLabel column to predict."})
    positive_label: str = field(default="malignant", metadata={"help": "Class whose probability the metrics use."})
    roi: str = field(
        default="full",
        metadata={
            "help": "full: whole image; crop: the mask's bounding box plus --roi_margin; masked: that crop with "
            "every pixel outside the node set to 0. A model trained on crops needs the same crop at inference.",
            "choices": list(ROI_MODES),
        },
    )
    roi_margin: float = field(
        default=0.1, metadata={"help": "Margin added on each side of the bounding box, as a fraction of its size."}
    )
    augmentation: str = field(
        default="standard",
        metadata={
            "help": "standard: random resized crop, flip, rotation, brightness/contrast; none.",
            "choices": ["standard", "none"],
        },
    )
    class_weighting: str = field(
        default="none",
        metadata={
            "help": "none, or balanced: cross-entropy weighted by n / (n_classes * n_class).",
            "choices": ["none", "balanced"],
        },
    )
    metric_path: str = field(
        default=str(DEFAULT_METRIC_PATH),
        metadata={"help": "The clinical_classification evaluate module (its folder or its .py file)."},
    )
    roi_source: str = field(
        default="expert",
        metadata={
            "help": "expert: crop/mask test sets with the expert masks only. predicted: also evaluate the test and "
            "external sets cropped with the masks of --segmenter_name_or_path (train_segformer.py), as at inference "
            "where no expert mask exists: <split>_predicted_roi in metrics, predictions and card, same threshold.",
            "choices": ["expert", "predicted"],
        },
    )
    segmenter_name_or_path: str | None = field(
        default=None, metadata={"help": "Segmenter (local folder or Hub id) for --roi_source predicted."}
    )
    saliency: str = field(
        default="occlusion",
        metadata={
            "help": "Where the model looks, scored against the expert masks on every evaluated set: occlusion "
            "(any model), integrated_gradients, or none. The share of saliency in the node and the pointing game, "
            "beside the same scores of two randomised controls (classifier head re-initialised; all weights "
            "re-initialised, seeded by --seed) and the model's paired excess over each, with CIs, go to "
            "metrics_<split>.json and the card.",
            "choices": ["none", *SALIENCY_METHODS],
        },
    )
    saliency_target: str = field(
        default="predicted",
        metadata={
            "help": "The class whose log-odds the saliency explains: predicted (the model's top class, per case) or "
            "positive (--positive_label on every case). The controls explain the same class per case.",
            "choices": ["predicted", "positive"],
        },
    )
    saliency_max_cases: int = field(
        default=24,
        metadata={
            "help": "Saliency on a sample of at most this many cases per evaluated set, stratified by label and "
            "seeded by --seed; 0: every case."
        },
    )
    saliency_window: float = field(
        default=0.25, metadata={"help": "Occlusion window, as a fraction of the model input's height and width."}
    )
    saliency_stride: float = field(
        default=0.25,
        metadata={"help": "Occlusion stride, as a fraction of the input (0.25 with --saliency_window 0.25: a 4 x 4 "
                          "grid of windows, 17 forward passes per map)."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.roi_source == "predicted" and (self.roi == "full" or self.segmenter_name_or_path is None):
            raise ValueError(
                f"--roi_source predicted needs --roi crop or masked (got {self.roi}) and --segmenter_name_or_path "
                f"(got {self.segmenter_name_or_path})."
            )
        if not 0.0 <= self.roi_margin <= 2.0:
            raise ValueError(f"--roi_margin {self.roi_margin} is outside [0, 2] (it is a fraction of the box size).")
        if self.saliency_max_cases < 0:
            raise ValueError(f"--saliency_max_cases {self.saliency_max_cases} is negative (0: every case).")
        for name in ("saliency_window", "saliency_stride"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"--{name} {getattr(self, name)} is outside (0, 1] (a fraction of the model input).")


@dataclass
class ModelArguments(CheckpointArguments):
    """Which model to fine-tune (or build from a config, offline)."""

    model_name_or_path: str = field(
        default="google/vit-base-patch16-224-in21k",
        metadata={"help": "Any AutoModelForImageClassification checkpoint: Hub id or local folder."},
    )


def apply_offline_demo(data_args, model_args, training_args, output_dir):
    """Offline demo: synthetic archives in the official format -> export (built once) -> a tiny ViT from a config."""
    data_args.dataset_name = data_args.dataset_name or offline_demo_export(training_args, output_dir)
    data_args.dataset_config = data_args.dataset_config or "center1"
    data_args.external_config = data_args.external_config or "center2"
    model_args.model_config_json = model_args.model_config_json or json.dumps(TINY_VIT_CONFIG)


def load_data(data_args, model_args, training_args):
    """(dataset, evaluation_sets, class_names, positive_index): the training subset and the sets to evaluate."""
    dataset, evaluation_sets = load_evaluation_sets(
        data_args.dataset_name,
        data_args.dataset_config,
        data_args.external_config,
        cache_dir=model_args.cache_dir,
        do_train=training_args.do_train,
        required_columns=(data_args.image_column_name, data_args.label_column_name, data_args.case_id_column_name)
        + ((data_args.mask_column_name,) if data_args.roi != "full" or data_args.saliency != "none" else ()),
        case_id_column=data_args.case_id_column_name,
    )
    reference_split = dataset["train" if "train" in dataset else "validation"]
    label_feature = reference_split.features[data_args.label_column_name]
    if not isinstance(label_feature, ClassLabel):
        raise ValueError(f"Column {data_args.label_column_name!r} is {label_feature}, not a ClassLabel.")
    class_names = list(label_feature.names)
    if data_args.positive_label not in class_names:
        raise ValueError(f"--positive_label {data_args.positive_label} is not a class; choose one of {class_names}.")
    if "external" in evaluation_sets:
        external_names = evaluation_sets["external"].features[data_args.label_column_name].names
        if external_names != class_names:
            raise ValueError(f"External subset classes {external_names} differ from the training classes {class_names}.")
    if data_args.roi != "full":
        check_masks_mark_a_node(dataset, evaluation_sets, data_args, training_args.do_train)
    return dataset, evaluation_sets, class_names, class_names.index(data_args.positive_label)


def check_masks_mark_a_node(dataset, evaluation_sets, data_args, do_train):
    """--roi crop/masked needs a node in every mask: an empty one would give the whole image (crop) or a black one
    (masked) under the case's label."""
    splits = ({"train": dataset["train"]} if do_train else {}) | evaluation_sets
    for split, split_dataset in splits.items():
        empty = empty_mask_cases(split_dataset, data_args.mask_column_name, data_args.case_id_column_name)
        if empty:
            raise ValueError(
                f"--roi {data_args.roi}: {len(empty)} case(s) of {split} have an empty {data_args.mask_column_name!r} "
                f"(e.g. {empty[:5]}), so their {data_args.roi} view would not show a node. Fix the masks or use --roi full."
            )


def add_predicted_roi_sets(evaluation_sets, data_args, device):
    """Mask-free evaluation: the test sets again, cropped with a segmenter's masks instead of the expert's."""
    from lymphus_ml.inference import load_segmenter, with_predicted_masks

    segmenter, segmenter_processor = load_segmenter(data_args.segmenter_name_or_path, device=device)
    for split in [split for split in ("test", "external") if split in evaluation_sets]:
        evaluation_sets[f"{split}_predicted_roi"] = with_predicted_masks(
            evaluation_sets[split], segmenter, segmenter_processor, data_args
        )


def report_splits(predictions, youden, metric, data_args, training_args, class_names, output_dir, saliency=None,
                  threshold_set=None):
    """Metrics (at 0.5 and at the validation Youden threshold) with CIs, plots and rows of predictions.csv.

    Writes metrics_<split>.json, roc_<split>.png and confusion_matrix_<split>.png; returns (split_metrics, plots,
    prediction rows). threshold_set: the (references, probabilities) the threshold was chosen on (validation's unless
    given: --cv_folds gives the out-of-fold predictions).
    """
    threshold_source = "out-of-fold" if threshold_set else "validation"
    threshold_set = threshold_set or predictions["validation"][:2]
    local_dataset = Path(data_args.dataset_name).exists()
    dataset_label = Path(data_args.dataset_name).name if local_dataset else data_args.dataset_name
    split_metrics, plots, prediction_rows = {}, {}, []
    for split, (references, probabilities, case_ids) in predictions.items():
        results = clinical_metrics_at_thresholds(
            metric,
            references,
            probabilities,
            {"at_0.5": 0.5, "at_youden": youden},
            n_bootstrap=data_args.n_bootstrap,
            confidence_level=data_args.confidence_level,
            seed=training_args.seed,
        )
        # How much of the operating point is the luck of choosing the threshold on a small validation split.
        results["at_youden"].update(youden_threshold_stability(
            threshold_set, references, probabilities, n_bootstrap=data_args.n_bootstrap,
            confidence_level=data_args.confidence_level, seed=training_args.seed, metric_path=data_args.metric_path,
        ))
        split_metrics[split] = results
        record = {
            "split": split,
            "dataset": dataset_label,
            "config": data_args.external_config if split.startswith("external") else data_args.dataset_config,
            "roi": data_args.roi,
            "roi_source": "predicted" if split.endswith("_predicted_roi") else "expert",
            "youden_threshold": youden,
            "threshold_source": threshold_source,
            **results,
            **({"saliency": saliency[split]} if saliency and split in saliency else {}),
        }
        (output_dir / f"metrics_{split}.json").write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
        auc = results["at_0.5"]
        plot_roc(
            references,
            probabilities,
            output_dir / f"roc_{split}.png",
            title=f"ROC, {split} (n={len(references)})",
            roc_auc=auc.get("roc_auc"),
            ci=(auc.get("roc_auc_ci_low"), auc.get("roc_auc_ci_high")),
            threshold=youden,
        )
        predicted = apply_threshold(probabilities, youden)
        plot_confusion_matrix(
            references,
            predicted,
            output_dir / f"confusion_matrix_{split}.png",
            class_names=[n for n in class_names if n != data_args.positive_label] + [data_args.positive_label],
            title=f"{split}, Youden threshold {youden:.3f} ({threshold_source})",
        )
        plots[split] = {"roc": f"roc_{split}.png", "confusion_matrix": f"confusion_matrix_{split}.png"}
        prediction_rows += [
            dict(zip(PREDICTION_COLUMNS, (case_id, split, int(label), float(probability), int(prediction))))
            for case_id, label, probability, prediction in zip(case_ids, references, probabilities, predicted)
        ]
        logger.info(
            f"{split}: AUC {format_metric(auc, 'roc_auc')}; at {youden:.3f}: sensitivity "
            f"{format_metric(results['at_youden'], 'sensitivity')}, "
            f"specificity {format_metric(results['at_youden'], 'specificity')}"
        )
    return split_metrics, plots, prediction_rows


def save_inference_settings(trainer, youden, data_args, output_dir):
    """The threshold and the input the model expects travel with the model (config.json) and beside it."""
    inference = {
        "youden_threshold": youden,
        "positive_label": data_args.positive_label,
        "roi_mode": data_args.roi,
        "roi_margin": data_args.roi_margin,
    }
    (output_dir / "threshold.json").write_text(json.dumps(inference, indent=2) + "\n")
    trainer.model.config.update(inference)
    trainer.save_model()


def job_paths(model_args, data_args, training_args) -> dict:
    """{option: value} of the options that name a file or folder, which a Hub Job cannot read when local."""
    return {
        "--model_name_or_path": model_args.model_name_or_path,
        "--model_config_json": model_args.model_config_json,
        "--image_processor_name": model_args.image_processor_name,
        "--segmenter_name_or_path": data_args.segmenter_name_or_path,
        "--resume_from_checkpoint": training_args.resume_from_checkpoint,
        "--metric_path": data_args.metric_path if data_args.metric_path != str(DEFAULT_METRIC_PATH) else None,
    }


def parse_arguments(args=None):
    """((model, data, training, job, cross-validation, fine-tuning arguments), push_to_hub, hub_token, argv)."""
    dataclass_types = (ModelArguments, DataTrainingArguments, ClinicalTrainingArguments, HubJobArguments,
                       crossval.CrossValidationArguments, FinetuningArguments)
    arguments, push_to_hub, hub_token, argv = parse_training_arguments(dataclass_types, args)
    *_, cv_args, finetuning_args = arguments
    crossval.check_finetuning_scheme(cv_args, finetuning_args.finetuning)
    return arguments, push_to_hub, hub_token, argv


def train(model, image_processor, dataset, evaluation_sets, class_names, positive_index, model_args, data_args,
          training_args, cv_args, run_folder):
    """(trainer, cv or None, training cost): the model fine-tuned (the best validation epoch kept) and saved; with
    --cv_folds, fold models choose the settings on out-of-fold predictions and a refit on all development cases
    carries them (`crossval.cross_validated_training`)."""
    trainer, cv = None, None
    if cv_args.cv_folds:
        trainer, cv = crossval.cross_validated_training(model_args, data_args, training_args, cv_args, dataset,
                                                        evaluation_sets, class_names, positive_index, image_processor,
                                                        run_folder)
    trainer = trainer or build_trainer(model, image_processor, dataset, data_args, training_args, class_names, positive_index)
    training_cost = TrainingCostCallback()
    trainer.add_callback(training_cost)
    if training_args.do_train and not cv:
        train_and_save(trainer, training_args.resume_from_checkpoint, run_folder)
    return trainer, cv, training_cost


def predict_and_choose_threshold(trainer, evaluation_sets, image_processor, positive_index, cv, data_args,
                                 training_args):
    """(predictions, Youden threshold): every evaluated set predicted (with --roi_source predicted, the test sets
    again with a segmenter's masks); validation picks the threshold (--cv_folds: the out-of-fold predictions)."""
    if data_args.roi_source == "predicted":
        add_predicted_roi_sets(evaluation_sets, data_args, training_args.device)
    predictions = predict_splits(trainer, evaluation_sets, data_args, image_processor, positive_index)
    youden = cv["threshold"] if cv else youden_threshold(*predictions["validation"][:2], data_args.metric_path)
    logger.info(f"Youden threshold on {'the out-of-fold predictions' if cv else 'validation'}: {youden:.4f}")
    return predictions, youden


def write_reports(trainer, predictions, youden, metric, cv, evaluation_sets, image_processor, class_names,
                  positive_index, data_args, training_args, output_dir):
    """(split_metrics, plots, saliency): where the model looks (--saliency), metrics_<split>.json with the plots and
    predictions.csv, the cross-validation's out-of-fold rows first."""
    saliency = {}
    if data_args.saliency != "none":
        saliency = where_the_model_looks(
            trainer.model, evaluation_sets, data_args, image_processor, class_names, positive_index,
            training_args.seed, output_dir,
        )
    split_metrics, plots, prediction_rows = report_splits(
        predictions, youden, metric, data_args, training_args, class_names, output_dir, saliency,
        (cv["references"], cv["oof_probabilities"]) if cv else None,
    )
    if cv:
        oof_rows = crossval.report_cross_validation(cv, predictions, metric, data_args, training_args.seed, output_dir)
        prediction_rows = oof_rows + prediction_rows
    write_run_predictions(output_dir / "predictions.csv", prediction_rows)
    return split_metrics, plots, saliency


def save_model(trainer, youden, training_cost, split_metrics, data_args, finetuning_args, output_dir) -> dict:
    """The model as it is shared (an adapter merged with --merge_adapter), its threshold and input settings, and the
    fine-tuning record (finetuning.json, metrics_<split>.json), which is returned."""
    merge_for_saving(trainer, finetuning_args, output_dir)
    save_inference_settings(trainer, youden, data_args, output_dir)
    save_classifier_config(trainer.model, output_dir)
    finetuning = finetuning_record(trainer.model, finetuning_args, output_dir, training_cost)
    write_finetuning_record(finetuning, output_dir, split_metrics)
    return finetuning


def push(output_dir, repo_id, hub_token, split_metrics, fields, data_args, training_args):
    """One commit of the files this run wrote, with the final card and its Hub evaluation results."""
    url = push_run_to_hub(
        output_dir, repo_id, hub_token, private=training_args.hub_private_repo, commit_message="LymphUs classifier",
        extra_files=benchmark_eval_results("classification", split_metrics, data_args, fields["dataset_revision"], repo_id),
    )
    logger.info(f"Pushed to {url}")


def main(args=None):
    # Arguments
    (model_args, data_args, training_args, job_args, cv_args, finetuning_args), push_to_hub, hub_token, argv = (
        parse_arguments(args)
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
    dataset, evaluation_sets, class_names, positive_index = load_data(data_args, model_args, training_args)

    # Model and image processor (grayscale files given to pipeline() are converted as in training)
    model, image_processor, base_model, model_description = load_model(
        model_args, data_args, class_names, training_args.do_train
    )
    image_processor.do_convert_rgb = True
    model = apply_finetuning(model, finetuning_args, image_processor, output_dir / BASE_MODEL_FOLDER)

    # Train
    metric = load_metric(data_args.metric_path)
    trainer, cv, training_cost = train(model, image_processor, dataset, evaluation_sets, class_names, positive_index,
                                       model_args, data_args, training_args, cv_args, run_folder)

    # Evaluate: validation picks the threshold, test and external use it unchanged
    predictions, youden = predict_and_choose_threshold(
        trainer, evaluation_sets, image_processor, positive_index, cv, data_args, training_args
    )
    if not trainer.is_world_process_zero():
        return None  # under torchrun every process holds all predictions; the first writes the reports and pushes
    split_metrics, plots, saliency = write_reports(
        trainer, predictions, youden, metric, cv, evaluation_sets, image_processor, class_names, positive_index,
        data_args, training_args, output_dir,
    )
    finetuning = save_model(trainer, youden, training_cost, split_metrics, data_args, finetuning_args, output_dir)

    # Model card
    fields = card_fields(
        data_args, model_args, training_args, dataset, evaluation_sets, class_names, image_processor, base_model,
        model_description, split_metrics, plots, youden, output_dir,
    )
    fields |= {"saliency": saliency, "finetuning": finetuning}
    if cv:
        crossval.update_card_fields(fields, cv, split_sizes(cv["development"], data_args.label_column_name, class_names))
    repo_id = hub_repo_id(training_args.hub_model_id, output_dir, hub_token) if push_to_hub else training_args.hub_model_id
    classifier_card(**fields, repo_id=repo_id).save(output_dir / "README.md")
    run_folder.complete()

    # Push: one commit of the files this run wrote, with the final card
    if push_to_hub:
        push(output_dir, repo_id, hub_token, split_metrics, fields, data_args, training_args)
    logger.info(
        f"Results in {output_dir.resolve()}: README.md (model card), metrics_<split>.json, predictions.csv, "
        "roc_<split>.png, confusion_matrix_<split>.png, threshold.json"
    )
    return split_metrics


if __name__ == "__main__":
    run(main)
