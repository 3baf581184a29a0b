"""Fine-tuning schemes for image classifiers: full fine-tuning, a linear probe, or LoRA adapters (peft).

    python train_vit.py --offline_demo --output_dir runs/lora-demo --finetuning lora --lora_r 8 --learning_rate 1e-3

`full` trains every weight (train_vit.py's behaviour before the option existed). `linear_probe` freezes the
backbone and trains the classification head. `lora` adds low-rank adapters (peft) to the attention projections
found in the architecture (or `--lora_target_modules`) and trains them with the head in full (`modules_to_save`).
A LoRA run saves the adapter, not a copy of the backbone: adapter_config.json names the base model, which must
stay loadable (a base built from a config is saved to <output_dir>/base_model, which is not pushed); the
classifier's config (labels, threshold, ROI mode) goes beside it as classifier_config.json, read by
`lymphus_ml.inference.load_classifier`. `--merge_adapter` saves the merged full model instead.
"""

import json
import logging
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import TrainerCallback


logger = logging.getLogger(__name__)

FINETUNING_SCHEMES = ("full", "linear_probe", "lora")
ATTENTION_WORDS = ("attention", "attn")
BASE_MODEL_FOLDER = "base_model"  # a LoRA run's base when it was built from a config (it has no other home)
CLASSIFIER_CONFIG_NAME = "classifier_config.json"  # not config.json: transformers would take the folder for a model
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass
class FinetuningArguments:
    """Which weights to train: all, the head only, or LoRA adapters with the head."""

    finetuning: str = field(
        default="full",
        metadata={
            "help": "full: every weight; linear_probe: the backbone frozen, the head trained; lora: LoRA adapters "
            "(peft) on the attention projections, the head trained in full; the run saves the adapter only.",
            "choices": list(FINETUNING_SCHEMES),
        },
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (--finetuning lora)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha; the update is scaled by alpha / r."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA branch's input."})
    lora_target_modules: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated module names (or name suffixes, e.g. attention.q_proj,attention.v_proj) that "
            "LoRA adapts; default: every linear layer inside the architecture's attention blocks."
        },
    )
    merge_adapter: bool = field(
        default=False, metadata={"help": "--finetuning lora: save (and push) the merged full model, not the adapter."}
    )

    def __post_init__(self):
        if self.finetuning != "lora" and self.merge_adapter:
            raise ValueError(f"--merge_adapter merges a LoRA adapter: it needs --finetuning lora (got {self.finetuning}).")
        if self.lora_r < 1:
            raise ValueError(f"--lora_r {self.lora_r} must be a positive rank.")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"--lora_dropout {self.lora_dropout} is outside [0, 1).")

    def target_modules(self) -> list[str] | None:
        if self.lora_target_modules is None:
            return None
        return [name.strip() for name in self.lora_target_modules.split(",") if name.strip()]


def head_module_names(model) -> list[str]:
    """The classifier's top-level modules outside the backbone (`base_model_prefix`), e.g. ["classifier"]."""
    backbone = getattr(model, "base_model_prefix", "")
    heads = [name for name, _ in model.named_children() if name != backbone]
    if not heads or not hasattr(model, backbone):
        raise ValueError(f"{type(model).__name__} has no backbone/head split (base_model_prefix {backbone!r}).")
    return heads


def freeze_backbone(model) -> None:
    """Linear probe: only the parameters of the head modules keep requires_grad."""
    heads = set(head_module_names(model))
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.split(".")[0] in heads


def attention_projections(model) -> list[str]:
    """LoRA targets found from the architecture: the linear layers inside attention blocks, as name suffixes from
    the attention block on (e.g. ["attention.k_proj", "attention.o_proj", "attention.q_proj", "attention.v_proj"]),
    which peft matches against the end of every module's name. The head is left out (trained in full)."""
    heads = set(head_module_names(model))
    targets = set()
    for name, module in model.named_modules():
        parts = name.split(".")
        if not isinstance(module, torch.nn.Linear) or parts[0] in heads:
            continue
        attention = [index for index, part in enumerate(parts[:-1]) if any(w in part.lower() for w in ATTENTION_WORDS)]
        if attention:
            targets.add(".".join(part for part in parts[attention[-1]:] if not part.isdigit()))
    return sorted(targets)


def linear_layer_examples(model, count: int = 4) -> list[str]:
    """A few linear layers' names outside the head, for the error message of a model LoRA cannot target."""
    heads = set(head_module_names(model))
    names = [name for name, module in model.named_modules()
             if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and name.split(".")[0] not in heads]
    return names[:count]


def lora_config(model, args: FinetuningArguments):
    """peft LoraConfig: the given or found attention projections, the head saved in full. A model without
    attention projections is refused, naming --lora_target_modules."""
    from peft import LoraConfig

    targets = args.target_modules() or attention_projections(model)
    if not targets:
        raise ValueError(
            f"--finetuning lora found no attention projections in {type(model).__name__} ({model.config.model_type}): "
            f"name the layers LoRA should adapt with --lora_target_modules (its layers include "
            f"{', '.join(linear_layer_examples(model)) or 'none'}), or use --finetuning full or linear_probe."
        )
    return LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=targets,
        modules_to_save=head_module_names(model),
    )


def base_model_reference(model, image_processor, base_dir) -> str:
    """What adapter_config.json names as the base: the checkpoint the model was loaded from (a local folder as
    an absolute path), or, for a model built from a config, `base_dir`, where the untrained base is saved now."""
    source = model.config._name_or_path
    if source and Path(source).exists():
        return str(Path(source).resolve())
    if source:
        return source
    if base_dir is None:
        raise ValueError("--finetuning lora of a model built from a config needs a folder to save its base model in.")
    model.save_pretrained(base_dir)
    if image_processor is not None:
        image_processor.save_pretrained(base_dir)
    return str(Path(base_dir).resolve())


def apply_finetuning(model, args: FinetuningArguments, image_processor=None, base_dir=None):
    """The model to train under `args.finetuning`: the same model (full), its head alone trainable
    (linear_probe), or a peft LoRA model whose adapter names its base (lora)."""
    if args.finetuning == "linear_probe":
        freeze_backbone(model)
    elif args.finetuning == "lora":
        from peft import get_peft_model

        base = base_model_reference(model, image_processor, base_dir)
        config = lora_config(model, args)
        try:
            model = get_peft_model(model, config)
        except ValueError as error:  # peft's NoMatchingPeftModuleError: the given names match no layer
            raise ValueError(
                f"--lora_target_modules {','.join(config.target_modules)} matches no layer LoRA can adapt in "
                f"{model.config.model_type} ({error}); its layers include {', '.join(linear_layer_examples(model))}."
            ) from None
        model.peft_config["default"].base_model_name_or_path = base
    counts = parameter_counts(model)
    logger.info(f"--finetuning {args.finetuning}: {counts['trainable']:,} of {counts['total']:,} parameters trained")
    return model


def parameter_counts(model) -> dict:
    """{"trainable": n, "total": n} parameters (for LoRA, total includes the adapters and the head's copy)."""
    parameters = list(model.parameters())
    return {
        "trainable": sum(p.numel() for p in parameters if p.requires_grad),
        "total": sum(p.numel() for p in parameters),
    }


def is_adapter(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


class TrainingCostCallback(TrainerCallback):
    """Seconds per training epoch (evaluation excluded) and the peak memory of the training: CUDA, the peak
    allocated on the device (reset at the start); CPU, the process's peak resident set (ru_maxrss, which no
    one can reset: it covers everything the process did before, data preparation included)."""

    def __init__(self):
        self.epoch_seconds, self._start, self.device, self.counts = [], None, "cpu", None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.device = args.device.type
        self.counts = parameter_counts(model) if model is not None else None
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats(args.device)

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        if self._start is not None:
            self.epoch_seconds.append(time.perf_counter() - self._start)
            self._start = None

    def summary(self) -> dict:
        if self.device == "cuda":
            peak, kind = torch.cuda.max_memory_allocated(), "cuda max_memory_allocated"
        else:
            peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS (ru_maxrss)"
        seconds = sum(self.epoch_seconds) / len(self.epoch_seconds) if self.epoch_seconds else None
        return {"seconds_per_epoch": seconds, "peak_memory_bytes": int(peak), "peak_memory_kind": kind}


def merge_for_saving(trainer, args: FinetuningArguments, output_dir) -> None:
    """--merge_adapter: the trainer's model becomes the merged full model, and the adapter files that training
    saved in `output_dir` (this run's own) are removed, so that the folder holds one model."""
    if args.finetuning != "lora" or not args.merge_adapter:
        return
    trainer.model = trainer.model.merge_and_unload()
    for name in ADAPTER_FILES:
        (Path(output_dir) / name).unlink(missing_ok=True)


def save_classifier_config(model, output_dir) -> None:
    """An adapter's classifier config (labels, threshold, ROI mode...) beside it, for load_classifier; a local
    base written by this run (a model built from a config) gets it as its config.json too, so that
    AutoModelForImageClassification and pipeline() read the same labels and settings."""
    if not is_adapter(model):
        return
    config = model.get_base_model().config
    config.to_json_file(Path(output_dir) / CLASSIFIER_CONFIG_NAME)
    base = Path(model.peft_config["default"].base_model_name_or_path)
    if base.resolve() == (Path(output_dir) / BASE_MODEL_FOLDER).resolve():
        config.to_json_file(base / "config.json")


def weight_bytes(output_dir) -> int:
    """Bytes of the weights a run shares: the adapter, or the model's safetensors shards."""
    folder = Path(output_dir)
    names = ["adapter_model.safetensors"] if (folder / "adapter_config.json").exists() else None
    files = [folder / name for name in names] if names else sorted(folder.glob("model*.safetensors"))
    return sum(path.stat().st_size for path in files if path.exists())


def finetuning_record(model, args: FinetuningArguments, output_dir, cost: TrainingCostCallback | None) -> dict:
    """What the card and metrics state about the scheme: trainable/total parameters, what is shared and its
    bytes, peak memory and seconds per epoch (None without training); the LoRA settings."""
    adapter = (Path(output_dir) / "adapter_config.json").exists()
    record = {
        "scheme": args.finetuning,
        **(getattr(cost, "counts", None) or parameter_counts(model)),
        "shared": "adapter" if adapter else "model",
        "weight_bytes": weight_bytes(output_dir),
        **(cost.summary() if cost is not None and cost.epoch_seconds else
           {"seconds_per_epoch": None, "peak_memory_bytes": None, "peak_memory_kind": None}),
    }
    if args.finetuning == "lora":
        record["lora"] = {"r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout,
                          "merged": args.merge_adapter}
        if adapter:
            adapter_config = json.loads((Path(output_dir) / "adapter_config.json").read_text())
            record["lora"]["target_modules"] = sorted(adapter_config["target_modules"])
            record["base_model"] = adapter_config["base_model_name_or_path"]
    return record


# Measurements of the machine, not of the model: in finetuning.json and the card, kept out of metrics_<split>.json so
# that the same inputs and seed give byte-identical metrics.
MEASURED_COSTS = ("seconds_per_epoch", "peak_memory_bytes", "peak_memory_kind")


def write_finetuning_record(record: dict, output_dir, splits) -> None:
    """finetuning.json (the whole record), and under "finetuning" in this run's metrics_<split>.json the scheme, its
    parameter counts and bytes shared (the measured costs stay in finetuning.json: they vary run to run)."""
    output_dir = Path(output_dir)
    (output_dir / "finetuning.json").write_text(json.dumps(record, indent=2) + "\n")
    reproducible = {key: value for key, value in record.items() if key not in MEASURED_COSTS}
    reproducible["measured_costs"] = "finetuning.json"
    for split in splits:
        path = output_dir / f"metrics_{split}.json"
        if path.exists():
            metrics = json.loads(path.read_text())
            metrics["finetuning"] = reproducible
            path.write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")


def load_adapter_classifier(name_or_path, revision="main", cache_dir=None):
    """The classifier of a LoRA adapter written by train_vit.py (local folder or Hub id), merged into its base;
    None when `name_or_path` holds no adapter. The base is loaded with the adapter's classifier config (its
    labels and settings), its head replaced by the adapter's."""
    from transformers import AutoConfig, AutoModelForImageClassification
    from transformers.utils import cached_file

    def optional_file(name):
        return cached_file(name_or_path, name, revision=revision, cache_dir=cache_dir,
                           _raise_exceptions_for_missing_entries=False)

    adapter_config = optional_file("adapter_config.json")
    if adapter_config is None or Path(name_or_path, "config.json").exists():
        return None  # a full model (one with a config.json beside an adapter is loaded as transformers would)
    from peft import PeftModel

    base = json.loads(Path(adapter_config).read_text())["base_model_name_or_path"]
    classifier_config = optional_file(CLASSIFIER_CONFIG_NAME)
    config = AutoConfig.from_pretrained(classifier_config) if classifier_config else None
    model = AutoModelForImageClassification.from_pretrained(
        base, config=config, ignore_mismatched_sizes=config is not None, cache_dir=cache_dir
    )
    model = PeftModel.from_pretrained(model, name_or_path, revision=revision, cache_dir=cache_dir)
    return model.merge_and_unload()
