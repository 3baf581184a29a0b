"""Training pieces both trainers share: TrainingArguments defaults, models built from configs, losses, the Trainer."""

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from lymphus_ml.run_folder import RunFolder


logger = logging.getLogger(__name__)


@dataclass
class LymphUsDataArguments:
    """The LymphUs subsets a trainer learns from and is evaluated on (each script adds its own columns and options)."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A LymphUs export: a local folder written by `lymphus.py export`, or a Hub dataset id."},
    )
    dataset_config: str | None = field(
        default=None,
        metadata={"help": "Subset to train on: center1, center2, all, center1_to_center2, center2_to_center1."},
    )
    external_config: str | None = field(
        default=None,
        metadata={
            "help": "Subset used as external validation (all its splits together), e.g. center2. Never used for "
            "training, model selection or a threshold."
        },
    )
    image_column_name: str = field(default="image", metadata={"help": "Column holding the (grayscale) image."})
    mask_column_name: str = field(default="mask", metadata={"help": "Column holding the 0/1 node mask."})
    case_id_column_name: str = field(default="case_id", metadata={"help": "Unique case identifier column."})
    n_bootstrap: int = field(default=1000, metadata={"help": "Bootstrap resamples for the confidence intervals."})
    confidence_level: float = field(default=0.95, metadata={"help": "Confidence level of the intervals."})
    offline_demo: bool = field(
        default=False,
        metadata={
            "help": "No download at all: write synthetic archives in the official format (lymphus.py synth), export "
            "them to <output_dir>/synthetic-lymphus, and train a tiny model built from a config on center1 with "
            "center2 as external validation (each overridable with its own flag)."
        },
    )

    def __post_init__(self):
        if self.dataset_name is None and not self.offline_demo:
            raise ValueError(
                "--dataset_name is required: a folder written by `lymphus.py export`, or a Hub id (or pass --offline_demo)."
            )
        if self.external_config is not None and self.external_config == self.dataset_config:
            raise ValueError(
                f"--external_config {self.external_config} is the training subset itself; choose the other centre."
            )


@dataclass
class CheckpointArguments:
    """Where a trainer's model comes from (each script adds `model_name_or_path` with its own default)."""

    model_config_json: str | None = field(
        default=None,
        metadata={
            "help": "Build a randomly initialised model from this config instead of downloading one: a JSON string "
            'or a .json file with "model_type", e.g. {"model_type":"vit","image_size":64,"patch_size":16,'
            '"num_hidden_layers":2,"hidden_size":64,"num_attention_heads":2,"intermediate_size":128} or '
            '{"model_type":"segformer","depths":[1,1,1,1],"hidden_sizes":[8,16,32,64],"num_attention_heads":[1,1,2,2],'
            '"decoder_hidden_size":32}.'
        },
    )
    image_processor_name: str | None = field(
        default=None, metadata={"help": "Image processor name or path, if not the model's own."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded models and datasets are stored."})
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the model."})
    ignore_mismatched_sizes: bool = field(
        default=True,
        metadata={"help": "Replace a checkpoint's head of another size (e.g. ImageNet's 1000 classes, ADE20k's 150)."},
    )
    license: str | None = field(
        default=None,
        metadata={
            "help": "Licence of the fine-tuned weights, for the model card (a Hub licence id, e.g. apache-2.0). "
            "Default: the base model's, read from its Hub card; where neither is known, `other` naming the LymphUs "
            "data terms the weights were trained under."
        },
    )


def parse_training_arguments(dataclass_types, args=None):
    """(parsed dataclasses, push_to_hub, hub_token, argv) of a trainer whose dataclasses include TrainingArguments.

    The token is resolved (flag, HF_TOKEN, saved login) only when the run pushes or launches a Job, and stays in the
    returned value: TrainingArguments are pickled into training_args.bin, so push_to_hub and hub_token are taken out
    of them (the final push is the script's own, with its card).
    """
    from lymphus_ml.cli import parse_arguments
    from lymphus_ml.hub import resolve_hub_token

    argv = sys.argv[1:] if args is None else list(args)
    parsed = parse_arguments(dataclass_types, argv)
    training_args = next(arguments for arguments in parsed if isinstance(arguments, TrainingArguments))
    job_args = next((arguments for arguments in parsed if hasattr(arguments, "launch_on_hub")), None)
    needs_token = training_args.push_to_hub or (job_args is not None and job_args.launch_on_hub)
    hub_token = resolve_hub_token(training_args.hub_token) if needs_token else None
    push_to_hub, training_args.push_to_hub, training_args.hub_token = training_args.push_to_hub, False, None
    return parsed, push_to_hub, hub_token, argv


def prepare_run(training_args, script_logger) -> Path:
    """Logging and the seed of a training run; returns the output folder (created by `claim_output_dir`)."""
    import transformers

    setup_logging(training_args, script_logger)
    transformers.set_seed(training_args.seed)
    return Path(training_args.output_dir)


def claim_output_dir(training_args, script: str) -> RunFolder | None:
    """The first process claims --output_dir before anything is written (lymphus_ml.run_folder: refused unless new,
    empty or written by our own earlier runs); under torchrun the other processes get None: they write only what
    the Trainer has every process write (checkpoint RNG states)."""
    if training_args.process_index != 0:
        return None
    return RunFolder.claim(training_args.output_dir, script)


def offline_demo_export(training_args, output_dir) -> str:
    """The offline demo's synthetic export in <output_dir>/synthetic-lymphus, built by the first process only while
    the others wait (torchrun / accelerate launch); returns its path."""
    from lymphus_ml import data

    folder = Path(output_dir) / "synthetic-lymphus"
    export = None
    with training_args.main_process_first(local=False, desc="the offline demo's synthetic export"):
        if training_args.process_index == 0:
            export = data.write_synthetic_export(folder)
    return export or str(folder / "export")


def process_seed(seed: int, process_index: int) -> int:
    """The seed of one process of a distributed run: each draws its own augmentation (transformers' seed_worker
    does the same for DataLoader workers)."""
    return seed + process_index


class ProcessSeedCallback(TrainerCallback):
    """The Trainer seeds every process alike (set_seed(args.seed)), so under torchrun every process drew the same
    augmentation for its shard (BatchAugmentation draws from torch's generator). At the start of training each
    process is reseeded with `process_seed`, after the data sampler took its seed (shards stay disjoint); a resumed
    run then restores each process's own saved state (rng_state_<rank>.pth). A single process is left as it is."""

    def on_train_begin(self, args, state, control, **kwargs):
        if args.world_size > 1:
            import transformers

            transformers.set_seed(process_seed(args.seed, args.process_index))


class RunFolderCallback(TrainerCallback):
    """After each checkpoint (every process's part written, old ones rotated), the first process records the output
    folder in its run marker: checkpoints of an interrupted run stay ours to resume and rotate."""

    def __init__(self, run_folder: RunFolder | None):
        self.run_folder = run_folder

    def on_save(self, args, state, control, **kwargs):
        if args.world_size > 1:
            from accelerate import PartialState

            PartialState().wait_for_everyone()
        if self.run_folder is not None:
            self.run_folder.record("running")


def setup_logging(training_args, script_logger):
    """transformers-examples logging; the script's own progress (results, where they are) at INFO by default."""
    import datasets
    import transformers

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    script_logger.setLevel(logging.INFO if training_args.log_level == "passive" else log_level)
    # The library modules' progress (fold models, saliency, fine-tuning) at the script's level, which the root logger's
    # WARNING would otherwise hide.
    logging.getLogger("lymphus_ml").setLevel(script_logger.level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    script_logger.info(f"Device: {training_args.device}, bf16: {training_args.bf16}, fp16: {training_args.fp16}")

@dataclass
class ClinicalTrainingArguments(TrainingArguments):
    """TrainingArguments whose defaults evaluate every epoch and keep the checkpoint with the best validation AUC."""

    do_train: bool = field(default=True, metadata={"help": "Fine-tune (False: evaluate --model_name_or_path only)."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate on validation."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to save a checkpoint."})
    logging_strategy: str = field(default="epoch", metadata={"help": "When to log the training loss."})
    load_best_model_at_end: bool = field(default=True, metadata={"help": "Keep the best validation checkpoint."})
    metric_for_best_model: str | None = field(default="roc_auc", metadata={"help": "Model selection metric."})
    greater_is_better: bool | None = field(default=True, metadata={"help": "Higher selection metric is better."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept on disk."})
    # Images and masks are read by the transform, so the Trainer must not drop those columns.
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep False: the transform reads them."})


def balanced_class_weights(labels, num_classes: int) -> list[float]:
    """n / (num_classes * n_c), as scikit-learn's class_weight="balanced"; a class absent from `labels` gets 0."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=num_classes).astype(float)
    return [float(len(labels) / (num_classes * c)) if c > 0 else 0.0 for c in counts]


class WeightedCrossEntropyLoss:
    """Trainer `compute_loss_func`: class-weighted cross-entropy.

    Returns sum(w_y * loss) / number of labels, over the whole gradient-accumulated batch when the Trainer passes
    `num_items_in_batch` (it then does not divide by the accumulation steps itself).
    """

    def __init__(self, class_weights):
        self.class_weights = torch.tensor(class_weights, dtype=torch.float32)

    def __call__(self, outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        losses = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none")
        weighted = (losses * self.class_weights.to(logits.device)[labels]).sum()
        return weighted / (num_items_in_batch if num_items_in_batch is not None else labels.numel())


class ClinicalTrainer(Trainer):
    """Trainer that restores checkpoints through `from_pretrained`.

    transformers 5 saves checkpoints under the original parameter names (`save_original_format=True`) but
    `Trainer` reloads them as a raw state dict, so for remapped architectures such as ViT the encoder was silently
    left out when loading the best model or resuming (huggingface/transformers#43701). `from_pretrained` applies
    the conversion; strict loading then guarantees every weight came from the checkpoint. Under torchrun each
    process draws its own augmentation (ProcessSeedCallback).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_callback(ProcessSeedCallback())

    def _restore_weights(self, checkpoint, model=None) -> bool:
        model = self.accelerator.unwrap_model(model if model is not None else self.model)
        weights = ("model.safetensors", "model.safetensors.index.json")
        has_weights = any(os.path.isfile(os.path.join(checkpoint, name)) for name in weights)
        sharded = self.is_deepspeed_enabled or self.is_fsdp_enabled
        if sharded or not has_weights or not hasattr(model, "from_pretrained"):
            return False
        restored = type(model).from_pretrained(checkpoint)
        model.load_state_dict(restored.state_dict(), strict=True)
        logger.info(f"Restored weights from {checkpoint}")
        return True

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if not self._restore_weights(resume_from_checkpoint, model):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self):
        best = self.state.best_model_checkpoint
        if best is None or not self._restore_weights(best):
            super()._load_best_model()


def train_and_save(trainer, resume_from_checkpoint=None, run_folder: RunFolder | None = None):
    """Train (resuming from a checkpoint path, or the last one for "true"/"last"), then save model, metrics, state;
    `run_folder` (the first process's) records the folder after each checkpoint and at the end."""
    trainer.add_callback(RunFolderCallback(run_folder))
    if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint.lower() in ("true", "last"):
        resume_from_checkpoint = True
    train_result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    trainer.save_model()
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()
    if run_folder is not None:
        run_folder.record("running")
    return train_result


def read_model_config_json(source):
    """(model_type, config kwargs) from --model_config_json: a JSON string or a .json file with "model_type"."""
    config_dict = json.loads(Path(source).read_text() if source.strip().endswith(".json") else source)
    model_type = config_dict.pop("model_type", None)
    if model_type is None:
        raise ValueError(f"--model_config_json {source} has no \"model_type\" (e.g. \"vit\" or \"segformer\").")
    return model_type, config_dict
