"""A LymphUs classifier's model and Trainer: loading a checkpoint (or building one from a config offline), preparing
the cases as the model sees them, the ClinicalTrainer, and its predictions of the evaluated sets. Shared by
train_vit.py and its cross-validation fold models (lymphus_ml.crossval).
"""

import json
import logging
from pathlib import Path

import numpy as np
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, ViTImageProcessor

from lymphus_ml.evaluation import RocAucComputeMetrics, positive_probabilities
from lymphus_ml.images import PreparedCases, collate_fn, model_input_size, model_num_channels, processor_mean_std
from lymphus_ml.training import (
    ClinicalTrainer,
    WeightedCrossEntropyLoss,
    balanced_class_weights,
    read_model_config_json,
)


logger = logging.getLogger(__name__)


def load_model(model_args, data_args, class_names, do_train):
    """(model, image_processor, base_model, description): a checkpoint, or a model built from a config offline."""
    id2label = dict(enumerate(class_names))
    label2id = {name: index for index, name in id2label.items()}
    if model_args.model_config_json:
        model_type, config_dict = read_model_config_json(model_args.model_config_json)
        config = AutoConfig.for_model(
            model_type, num_labels=len(class_names), id2label=id2label, label2id=label2id, **config_dict
        )
        model = AutoModelForImageClassification.from_config(config)
        image_size = getattr(config, "image_size", 224)
        height, width = image_size if isinstance(image_size, (list, tuple)) else (image_size, image_size)
        num_channels = model_num_channels(config)
        image_processor = ViTImageProcessor(
            size={"height": height, "width": width}, image_mean=[0.5] * num_channels, image_std=[0.5] * num_channels
        )
        description = f"Architecture `{model_type}` built from a config: {json.dumps(config_dict)}."
        return model, image_processor, None, description
    config = AutoConfig.from_pretrained(
        model_args.model_name_or_path,
        num_labels=len(class_names),
        id2label=id2label,
        label2id=label2id,
        finetuning_task="image-classification",
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
    )
    model, loading_info = AutoModelForImageClassification.from_pretrained(
        model_args.model_name_or_path,
        config=config,
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        output_loading_info=True,
    )
    if not do_train:
        check_trained_head(model_args, loading_info, class_names)
    image_processor = AutoImageProcessor.from_pretrained(
        model_args.image_processor_name or model_args.model_name_or_path,
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
    )
    base_model = model_args.model_name_or_path if not Path(model_args.model_name_or_path).exists() else None
    verb = "Fine-tuned from" if do_train else "Evaluation only (no training) of"
    trained_roi = getattr(config, "roi_mode", None)
    if trained_roi is not None and trained_roi != data_args.roi:
        logger.warning(f"{model_args.model_name_or_path} was trained with --roi {trained_roi}, used here with --roi {data_args.roi}.")
    return model, image_processor, base_model, f"{verb} `{model_args.model_name_or_path}` ({config.model_type})."


def check_trained_head(model_args, loading_info, class_names):
    """Evaluation only (--do_train False) must evaluate trained weights: refuse a checkpoint whose head was replaced
    or left out (other classes, or weights missing), which would be a random classifier under this card."""
    original = AutoConfig.from_pretrained(
        model_args.model_name_or_path, cache_dir=model_args.cache_dir, revision=model_args.model_revision
    )
    labels = [original.id2label[index] for index in sorted(original.id2label)]
    replaced = list(loading_info.get("missing_keys", [])) + [str(key) for key in loading_info.get("mismatched_keys", [])]
    if labels != list(class_names) or replaced:
        raise ValueError(
            f"--do_train False evaluates {model_args.model_name_or_path} as it is, but its head does not fit LymphUs: "
            f"its classes are {labels} (expected {list(class_names)})"
            + (f" and {len(replaced)} weight(s) would be newly initialised (e.g. {replaced[:3]})" if replaced else "")
            + ". Fine-tune it (--do_train True) or pass a classifier written by train_vit.py."
        )


def model_view(split_dataset, data_args, image_processor, num_channels, train=False):
    """`split_dataset` as the model sees it, prepared once in memory: the ROI at the model's input size (training:
    at a working size, each batch augmented from there), `pixel_values` and `labels`."""
    mean, std = processor_mean_std(image_processor, num_channels)
    augment = train and data_args.augmentation != "none"
    return PreparedCases(
        split_dataset, model_input_size(image_processor), mean, std, data_args.roi, data_args.roi_margin, augment,
        num_channels, data_args.image_column_name, data_args.mask_column_name, data_args.label_column_name,
    )


def build_trainer(model, image_processor, dataset, data_args, training_args, class_names, positive_index):
    """ClinicalTrainer: selects the epoch on validation ROC-AUC, the only metric computed each epoch (the clinical
    metrics with their intervals are computed once, after training); class-weighted loss with --class_weighting
    balanced. Training and validation cases are prepared once, here."""
    num_channels = model_num_channels(model.config)
    compute_loss_func, train_view = None, None
    if data_args.class_weighting == "balanced" and training_args.do_train:
        weights = balanced_class_weights(dataset["train"][data_args.label_column_name], len(class_names))
        logger.info(f"Balanced class weights: {dict(zip(class_names, weights))}")
        compute_loss_func = WeightedCrossEntropyLoss(weights)
    if training_args.do_train:
        train_view = model_view(dataset["train"], data_args, image_processor, num_channels, train=True)
    return ClinicalTrainer(
        model=model,
        args=training_args,
        train_dataset=train_view,
        eval_dataset=model_view(dataset["validation"], data_args, image_processor, num_channels),
        processing_class=image_processor,
        data_collator=collate_fn,
        compute_metrics=RocAucComputeMetrics(positive_index, data_args.metric_path),
        compute_loss_func=compute_loss_func,
    )


def predict_splits(trainer, evaluation_sets, data_args, image_processor, positive_index):
    """{split: (references 0/1, positive-class probabilities, case ids)} for every evaluated set."""
    num_channels = model_num_channels(trainer.model.config)
    predictions = {}
    for split, split_dataset in evaluation_sets.items():
        view = model_view(split_dataset, data_args, image_processor, num_channels)
        output = trainer.predict(view, metric_key_prefix=split)
        references = (np.asarray(split_dataset[data_args.label_column_name]) == positive_index).astype(int)
        probabilities = positive_probabilities(output.predictions, positive_index)
        predictions[split] = (references, probabilities, list(split_dataset[data_args.case_id_column_name]))
    return predictions
