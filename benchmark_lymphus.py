#!/usr/bin/env python
"""Reproduce the LymphUs multicentre study design: radiologists' semantic features vs image models, cross-centre.

The design of Abbasian Ardakani et al. (J Ultrasound Med 2023, doi:10.1002/jum.16131), on a LymphUs export: for
each development centre A (center1, center2) every model is fitted on A's train split, its decision threshold is
chosen on A's validation split (Youden's J), and it is evaluated unchanged on A's internal test split and on the
whole other centre B (subset `A_to_B`, external validation): four test sets. Models:

- `semantic-features`: scikit-learn logistic regression on the spreadsheet's semantic features (the reference of
  every DeLong comparison);
- `short-long-axis-ratio`: a one-feature logistic regression on the short/long axis ratio (a classic sign);
- image models: `train_vit.py` runs made here (--train_vit_args), and/or existing checkpoints (--image_models).

Offline demo (synthetic archives -> export -> semantic model, baseline and one tiny ViT per direction -> report),
a few minutes on 2 CPU cores:

    python benchmark_lymphus.py --offline_demo --output_dir /tmp/lymphus-benchmark

On a real export (local folder or Hub id), with a ViT fine-tuned per direction by train_vit.py:

    python benchmark_lymphus.py --dataset_name <user>/lymphus --output_dir lymphus-benchmark \
        --train_vit_args '{"vit-base": ["--model_name_or_path", "google/vit-base-patch16-224-in21k",
                           "--roi", "crop", "--num_train_epochs", "20", "--learning_rate", "5e-5", "--bf16"]}'

With checkpoints you already have (say which development centre each was trained on; it is evaluated only on
that centre's validation/test splits and on the other centre):

    python benchmark_lymphus.py --dataset_name <user>/lymphus \
        --image_models "vit:center1=runs/vit-center1,vit:center2=runs/vit-center2" --output_dir lymphus-benchmark

Outputs in --output_dir: report.md (one results table, ROC and calibration figures; usable as a model or dataset
card section), results.json, predictions.csv (model, test_set, case_id, label, probability, ...), figures/*.png,
and image_models/<name>-<centre>/ for the train_vit.py runs.
"""

import json
import logging
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import lymphus
from lymphus_ml.cli import parse_arguments, run
from lymphus_ml.data import dataset_is_synthetic, load_lymphus, write_synthetic_export
from lymphus_ml.demo_configs import MICRO_VIT_CONFIG, config_json
from lymphus_ml.evaluation import (
    CLINICAL_METRIC_PATH,
    apply_threshold,
    clinical_metrics_at_thresholds,
    json_safe,
    load_metric,
    metric_functions,
)
from lymphus_ml.plots import plot_calibration, plot_roc_overlay
from lymphus_ml.runs import TRAIN_VIT_SCRIPT, read_run_predictions, run_script
from lymphus_ml.semantic_features import (
    build_axis_ratio_model,
    build_semantic_model,
    fit_tabular_model,
    logistic_coefficients,
    positive_probability,
    semantic_frame,
)
from lymphus_ml.study import (
    BASELINE_MODEL,
    REFERENCE_MODEL,
    CasePredictions,
    adjust_p_values,
    build_report,
    calibration,
    delong_versus_reference,
    paired_predictions,
    report_estimate,
    report_p_value,
    validation_threshold,
    write_study_predictions,
)


logger = logging.getLogger(__name__)

# Columns the short/long axis ratio is computed from (whichever the export has).
AXIS_COLUMNS = ("minimum_diameter", "maximum_diameter", "aspect_ratio")
# Options of train_vit.py that this script sets per direction: a user value would break the protocol.
MANAGED_TRAIN_VIT_OPTIONS = ("--dataset_name", "--dataset_config", "--external_config", "--output_dir", "--hub_model_id")
# A tiny ViT built from a config (no download): the offline demo's image model.
DEMO_VIT_ARGS = [
    "--model_config_json", config_json(MICRO_VIT_CONFIG),
    "--roi", "crop",
    "--num_train_epochs", "5",
    "--learning_rate", "1e-3",
    "--per_device_train_batch_size", "8",
    "--per_device_eval_batch_size", "16",
    "--n_bootstrap", "200",
    "--use_cpu",
    "--report_to", "none",
    "--disable_tqdm", "True",
]


@dataclass
class DataArguments:
    """Which LymphUs export to benchmark on, and its columns."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A LymphUs export: a folder written by `lymphus.py export`, or a Hub dataset id."},
    )
    development_centres: str = field(
        default="center1,center2",
        metadata={"help": "Comma-separated development centres; each is also tested on the other centre."},
    )
    measurement_columns: str = field(
        default=",".join(lymphus.MEASUREMENT_FEATURES),
        metadata={"help": "Continuous semantic features: median-imputed (with a missing indicator), standardised."},
    )
    coded_columns: str = field(
        default=",".join(lymphus.CODED_FEATURES),
        metadata={"help": "Integer-coded semantic features: one-hot, with 'not recorded' as a category of its own."},
    )
    label_column_name: str = field(default="label", metadata={"help": "ClassLabel column to predict."})
    case_id_column_name: str = field(default="case_id", metadata={"help": "Unique case identifier column."})
    positive_label: str = field(default="malignant", metadata={"help": "Class whose probability is scored."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded datasets and models are stored."})
    offline_demo: bool = field(
        default=False,
        metadata={
            "help": "Offline demo: write synthetic archives, export them into <output_dir>/synthetic_data and "
            "benchmark on that (with a tiny ViT per direction unless image models are given). Not with --dataset_name."
        },
    )
    demo_cases_per_group: int = field(default=30, metadata={"help": "Synthetic cases per centre and label (demo)."})
    demo_scale: float = field(default=0.2, metadata={"help": "Synthetic image size as a fraction of the official (demo)."})

    def __post_init__(self):
        if self.offline_demo and self.dataset_name is not None:
            raise ValueError(f"--offline_demo builds its own data; drop --dataset_name {self.dataset_name} or the demo flag.")
        if not self.offline_demo and self.dataset_name is None:
            raise ValueError("--dataset_name is required (a `lymphus.py export` folder or a Hub id), or pass --offline_demo.")
        for centre in split_list(self.development_centres):
            if centre not in lymphus.CENTRES:
                raise ValueError(f"--development_centres has {centre!r}; choose from {lymphus.CENTRES}.")


@dataclass
class ModelArguments:
    """The semantic-feature model, the baseline, and the image models compared with them."""

    logistic_c: float = field(
        default=1.0,
        metadata={"help": "Inverse L2 strength of both logistic regressions (scikit-learn's C; 1.0 is its default)."},
    )
    train_vit_args: str | None = field(
        default=None,
        metadata={
            "help": "Image models trained here with train_vit.py, one run per development centre: JSON (or a .json "
            'file) mapping a model name to its train_vit.py arguments, e.g. {"vit": ["--roi", "crop", ...]} (a list '
            "or one shell-quoted string); a bare list names the model 'vit'. --dataset_name, --dataset_config, "
            "--external_config and --output_dir are set here."
        },
    )
    image_models: str | None = field(
        default=None,
        metadata={
            "help": "Existing checkpoints (Hub id or folder), each tied to the centre it was developed on: "
            "'NAME:CENTRE=PATH,...' e.g. 'vit:center1=runs/vit-c1,vit:center2=runs/vit-c2' (NAME: defaults to "
            "'checkpoint'). Evaluated on that centre's validation (threshold) and test splits and on the other centre."
        },
    )
    eval_batch_size: int = field(default=16, metadata={"help": "Batch size for --image_models inference."})
    use_cpu: bool = field(default=False, metadata={"help": "Run --image_models inference on the CPU even if a GPU exists."})
    seed: int = field(default=0, metadata={"help": "Seed of the logistic regressions, train_vit.py runs and bootstrap."})


@dataclass
class ReportArguments:
    """Where the report goes and how uncertainty and calibration are computed."""

    output_dir: str = field(default="lymphus-benchmark", metadata={"help": "Report folder."})
    n_bootstrap: int = field(default=1000, metadata={"help": "Stratified bootstrap resamples for the 95%% CIs."})
    confidence_level: float = field(default=0.95, metadata={"help": "Confidence level of the intervals."})
    calibration_bins: int = field(
        default=10, metadata={"help": "Most quantile bins of a reliability curve; fewer for small sets (about 10 cases a bin)."}
    )
    metric_path: str = field(
        default=str(CLINICAL_METRIC_PATH),
        metadata={"help": "The clinical_classification evaluate module (its folder)."},
    )


def split_list(value) -> list[str]:
    return [item.strip() for item in str(value or "").split(",") if item.strip()]


# Image models


def parse_train_vit_args(value) -> dict[str, list[str]]:
    """--train_vit_args (JSON or a .json file) -> {model name: train_vit.py arguments}."""
    if value is None:
        return {}
    text = Path(value).read_text() if str(value).strip().endswith(".json") and Path(value).is_file() else value
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--train_vit_args is not JSON ({error}): {value!r}. Example: '{{\"vit\": [\"--roi\", \"crop\"]}}'.") from None
    if isinstance(spec, (list, str)):
        spec = {"vit": spec}
    if not isinstance(spec, dict) or not spec:
        raise ValueError(f"--train_vit_args must map model names to argument lists, got {value!r}.")
    runs = {}
    for name, arguments in spec.items():
        arguments = shlex.split(arguments) if isinstance(arguments, str) else [str(a) for a in arguments]
        managed = [a for a in arguments if a.split("=", 1)[0] in MANAGED_TRAIN_VIT_OPTIONS]
        if managed:
            raise ValueError(
                f"--train_vit_args for {name!r} sets {managed}: this script sets {list(MANAGED_TRAIN_VIT_OPTIONS)} "
                "per development centre; remove them."
            )
        runs[check_model_name(name)] = arguments
    return runs


def parse_image_models(value) -> dict[str, dict[str, str]]:
    """'NAME:CENTRE=PATH,...' -> {name: {development centre: checkpoint}}."""
    models = {}
    for entry in split_list(value):
        head, equals, path = entry.partition("=")
        name, _, centre = head.rpartition(":")
        if not equals or not path.strip():
            raise ValueError(f"--image_models entry {entry!r} is not NAME:CENTRE=PATH (e.g. vit:center1=runs/vit-c1).")
        name, centre = check_model_name(name or "checkpoint"), centre.strip()
        if centre not in lymphus.CENTRES:
            raise ValueError(f"--image_models entry {entry!r}: development centre {centre!r} is not one of {lymphus.CENTRES}.")
        if centre in models.setdefault(name, {}):
            raise ValueError(f"--image_models gives {name!r} twice for {centre}: {models[name][centre]} and {path}.")
        models[name][centre] = path.strip()
    return models


def check_model_name(name) -> str:
    name = str(name).strip()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(f"Model name {name!r}: use letters, digits, '.', '_' or '-' (it names files and table rows).")
    if name in (REFERENCE_MODEL, BASELINE_MODEL):
        raise ValueError(f"Model name {name!r} is taken by a built-in model; choose another.")
    return name


def train_vit_run_args(arguments, dataset_name, development_centre, external_centre, output_dir, seed=0) -> list[str]:
    """train_vit.py arguments of one direction: internal splits of `development_centre`, external = the other centre."""
    run = list(arguments) + [
        "--dataset_name", str(dataset_name),
        "--dataset_config", development_centre,
        "--external_config", external_centre,
        "--output_dir", str(output_dir),
    ]
    if not any(a.split("=", 1)[0] == "--seed" for a in arguments):
        run += ["--seed", str(seed)]
    return run


def labelled_predictions(split_dataset, probabilities, positive_index, data_args) -> CasePredictions:
    """CasePredictions of a dataset split: its case ids, its labels as 0/1 (1 = positive class), `probabilities`."""
    labels = (np.asarray(list(split_dataset[data_args.label_column_name])) == positive_index).astype(int)
    return CasePredictions(list(split_dataset[data_args.case_id_column_name]), labels, probabilities)


def slug(text) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text))


def parse_args(args=None):
    """(data_args, model_args, report_args, train_vit_runs, checkpoints, centres), with conflicts refused."""
    data_args, model_args, report_args = parse_arguments((DataArguments, ModelArguments, ReportArguments), args)
    train_vit_runs = parse_train_vit_args(model_args.train_vit_args)
    checkpoints = parse_image_models(model_args.image_models)
    clashes = sorted(set(train_vit_runs) & set(checkpoints))
    if clashes:
        raise ValueError(f"Model name(s) {clashes} appear in both --train_vit_args and --image_models; rename one.")
    centres = split_list(data_args.development_centres)
    for name, paths in checkpoints.items():
        unknown = sorted(set(paths) - set(centres))
        if unknown:
            raise ValueError(f"--image_models {name} has checkpoints for {unknown}, not in --development_centres {centres}.")
    return data_args, model_args, report_args, train_vit_runs, checkpoints, centres


def load_designs(dataset_name, centres, data_args, measurement_columns, coded_columns):
    """(designs, test_sets, tabular_columns): per development centre, its splits and the whole other centre."""
    from datasets import ClassLabel

    tabular_columns = list(dict.fromkeys(measurement_columns + coded_columns))
    designs, test_sets = {}, {}
    for centre in centres:
        other = next(c for c in lymphus.CENTRES if c != centre)
        development = load_lymphus(dataset_name, centre, cache_dir=data_args.cache_dir)
        transfer = load_lymphus(dataset_name, f"{centre}_to_{other}", cache_dir=data_args.cache_dir)
        for split in ("train", "validation", "test"):
            if split not in development:
                raise ValueError(f"Subset {centre} of {dataset_name} has splits {list(development)}, not {split!r}.")
        columns = development["train"].column_names
        for column in [data_args.label_column_name, data_args.case_id_column_name] + measurement_columns + coded_columns:
            if column not in columns:
                raise ValueError(f"Column {column!r} not found in {dataset_name} subset {centre}; choose from {columns}.")
        label_feature = development["train"].features[data_args.label_column_name]
        if not isinstance(label_feature, ClassLabel) or data_args.positive_label not in label_feature.names:
            raise ValueError(f"Column {data_args.label_column_name!r} is {label_feature}: need a ClassLabel with {data_args.positive_label!r}.")
        positive_index = label_feature.names.index(data_args.positive_label)
        tabular_columns += [c for c in AXIS_COLUMNS if c in columns and c not in tabular_columns]
        seen = {case_id for split in development.values() for case_id in split[data_args.case_id_column_name]}
        shared = sorted(seen.intersection(transfer["test"][data_args.case_id_column_name]))
        if shared:
            raise ValueError(f"Subset {centre}_to_{other}'s test split shares {len(shared)} cases with {centre} (e.g. {shared[:3]}): not an external set.")
        splits = {"validation": development["validation"], "internal": development["test"], "external": transfer["test"]}
        designs[centre] = {"other": other, "train": development["train"], "splits": splits, "positive_index": positive_index}
        for role, test_set in (("internal", f"{centre}_test"), ("external", f"{centre}_to_{other}")):
            labels = (np.asarray(list(splits[role][data_args.label_column_name])) == positive_index).astype(int)
            test_sets[test_set] = {
                "display_name": f"{centre} test (internal)" if role == "internal" else f"{other} (external, developed on {centre})",
                "development_centre": centre,
                "kind": role,
                "subset": centre if role == "internal" else f"{centre}_to_{other}",
                "split": "test",
                "n": int(labels.size),
                "n_positive": int(labels.sum()),
                "n_negative": int(labels.size - labels.sum()),
            }
        designs[centre]["roles"] = {"internal": f"{centre}_test", "external": f"{centre}_to_{other}"}
    return designs, test_sets, tabular_columns


def fit_tabular_models(designs, data_args, model_args, measurement_columns, coded_columns, tabular_columns):
    """(models, predictions): the semantic-feature model and the axis-ratio baseline, fitted per development centre.

    predictions: {(model, centre): {"validation" | "internal" | "external": CasePredictions}}.
    """
    predictions = {}
    models = {
        REFERENCE_MODEL: {
            "kind": "semantic features",
            "description": f"logistic regression (L2, C={model_args.logistic_c}) on the radiologists' semantic features: "
            f"measurements {measurement_columns} median-imputed with missing indicators and standardised; coded "
            f"features {coded_columns} one-hot encoded with 'not recorded' as its own category, unseen codes ignored.",
            "coefficients": {},
        },
        BASELINE_MODEL: {
            "kind": "single feature",
            "description": f"logistic regression (C={model_args.logistic_c}) on the short/long axis ratio "
            "(minimum_diameter / maximum_diameter, else from aspect_ratio; median-imputed): a probability, so "
            "calibration is defined; same ranking (AUC) as the raw ratio when rounder nodes are more often malignant.",
            "coefficients": {},
        },
    }
    for centre, design in designs.items():
        positive_index = design["positive_index"]
        train_labels = (np.asarray(list(design["train"][data_args.label_column_name])) == positive_index).astype(int)
        train_frame = semantic_frame(design["train"], tabular_columns)
        for name, model in (
            (REFERENCE_MODEL, build_semantic_model(measurement_columns, coded_columns, model_args.logistic_c, model_args.seed)),
            (BASELINE_MODEL, build_axis_ratio_model(model_args.logistic_c, model_args.seed)),
        ):
            fit_tabular_model(model, train_frame, train_labels, name=f"{name} on {centre}")
            models[name]["coefficients"][centre] = logistic_coefficients(model)
            predictions[name, centre] = {
                role: labelled_predictions(split, positive_probability(model, semantic_frame(split, tabular_columns)), positive_index, data_args)
                for role, split in design["splits"].items()
            }
        logger.info(f"Fitted {REFERENCE_MODEL} and {BASELINE_MODEL} on {centre} train ({len(train_labels)} cases)")
    return models, predictions


def run_case_predictions(cases: dict) -> CasePredictions:
    """CasePredictions of one split of a run's predictions.csv ({case_id: (label, probability)}, in its order)."""
    labels, probabilities = zip(*cases.values()) if cases else ((), ())
    return CasePredictions(list(cases), list(labels), list(probabilities))


def train_image_models(train_vit_runs, designs, dataset_name, output_dir, seed, models, predictions):
    """train_vit.py runs, one per model and direction; their predictions.csv join `predictions`."""
    for name, arguments in train_vit_runs.items():
        models[name] = {"kind": "image (train_vit.py)", "description": f"train_vit.py {shlex.join(arguments)}", "runs": {}}
        for centre, design in designs.items():
            run_dir = output_dir / "image_models" / f"{name}-{centre}"
            logger.info(f"train_vit.py for {name}, developed on {centre}: {run_dir}")
            run_arguments = train_vit_run_args(arguments, dataset_name, centre, design["other"], run_dir, seed)
            run_script(TRAIN_VIT_SCRIPT, run_arguments, what=f"train_vit.py for {run_dir}")
            run = {split: run_case_predictions(cases) for split, cases in read_run_predictions(run_dir / "predictions.csv").items()}
            missing = [split for split in ("validation", "test", "external") if split not in run]
            if missing:
                raise ValueError(f"{run_dir}/predictions.csv has no rows for split(s) {missing}; train_vit.py wrote {list(run)}.")
            predictions[name, centre] = {"validation": run["validation"], "internal": run["test"], "external": run["external"]}
            models[name]["runs"][centre] = str(run_dir.relative_to(output_dir))


def evaluate_checkpoints(checkpoints, designs, data_args, model_args, models, predictions):
    """Existing checkpoints, each evaluated only on data its development centre did not train on."""
    from lymphus_ml.inference import load_classifier, predict_split_probabilities

    device = "cpu" if model_args.use_cpu else None
    for name, paths in checkpoints.items():
        models[name] = {"kind": "image (checkpoint)", "description": "existing checkpoints: " + ", ".join(f"{c}: `{p}`" for c, p in paths.items()), "runs": dict(paths)}
        for centre, path in paths.items():
            model, image_processor = load_classifier(path, device, cache_dir=data_args.cache_dir)
            design = designs[centre]
            predictions[name, centre] = {
                role: labelled_predictions(
                    split,
                    predict_split_probabilities(model, image_processor, split, data_args.positive_label, model_args.eval_batch_size),
                    design["positive_index"],
                    data_args,
                )
                for role, split in design["splits"].items()
            }
            logger.info(f"Evaluated checkpoint {path} ({name}, developed on {centre})")


def compare_models(designs, models, predictions, test_sets, report_args, seed):
    """(rows, prediction rows): thresholds on validation, metrics on the test sets, DeLong against the semantic model."""
    metric = load_metric(report_args.metric_path)
    functions = metric_functions(report_args.metric_path)
    rows, prediction_rows = [], []
    for centre, design in designs.items():
        for name in models:
            if (name, centre) not in predictions:
                continue
            model_predictions = predictions[name, centre]
            threshold = validation_threshold(model_predictions["validation"], report_args.metric_path, f"{name} developed on {centre}")
            for role in ("internal", "external"):
                test_set = design["roles"][role]
                reference = predictions[REFERENCE_MODEL, centre][role]
                # Every model on the same cases (labels included) as the reference, in the same order.
                labels, _, probabilities = paired_predictions(reference, model_predictions[role], REFERENCE_MODEL, name, test_set)
                cases = CasePredictions(reference.case_ids, labels, probabilities)
                results = clinical_metrics_at_thresholds(
                    metric,
                    cases.labels,
                    cases.probabilities,
                    {"at_validation_threshold": threshold},
                    n_bootstrap=report_args.n_bootstrap,
                    confidence_level=report_args.confidence_level,
                    seed=seed,
                )["at_validation_threshold"]
                delong = None if name == REFERENCE_MODEL else json_safe(
                    delong_versus_reference(
                        reference, cases, functions.delong_test, REFERENCE_MODEL, name, test_set,
                        functions.delong_difference_ci, report_args.confidence_level,
                    )
                )
                rows.append(
                    {
                        "model": name,
                        "test_set": test_set,
                        "development_centre": centre,
                        "threshold": threshold,
                        "metrics": results,
                        "calibration": calibration(
                            cases.labels, cases.probabilities, report_args.calibration_bins, functions.brier_score_ci,
                            report_args.n_bootstrap, report_args.confidence_level, seed,
                        ),
                        "delong": delong,
                    }
                )
                predicted = apply_threshold(cases.probabilities, threshold)
                prediction_rows += [
                    {"model": name, "test_set": test_set, "development_centre": centre, "case_id": c, "label": int(y), "probability": float(p), "prediction_at_threshold": int(d)}
                    for c, y, p, d in zip(cases.case_ids, cases.labels, cases.probabilities, predicted)
                ]
                logger.info(f"{test_set} {name}: AUC {report_estimate(results, 'roc_auc')}, DeLong p vs {REFERENCE_MODEL} {report_p_value((delong or {}).get('p_value'))}")
    rows.sort(key=lambda row: list(test_sets).index(row["test_set"]))
    return adjust_p_values(rows, functions.holm_adjust), prediction_rows


def plot_figures(rows, prediction_rows, test_sets, output_dir) -> dict:
    """ROC and calibration figures per test set, every model overlaid; returns {test_set: {kind: path}}."""
    figures = {}
    for test_set, info in test_sets.items():
        set_rows = [row for row in rows if row["test_set"] == test_set]
        set_predictions = [r for r in prediction_rows if r["test_set"] == test_set]
        curves = []
        for row in set_rows:
            model_rows = [r for r in set_predictions if r["model"] == row["model"]]
            curves.append(
                {
                    "name": row["model"],
                    "references": [r["label"] for r in model_rows],
                    "probabilities": [r["probability"] for r in model_rows],
                    "roc_auc": row["metrics"].get("roc_auc"),
                    "threshold": row["threshold"],
                    **row["calibration"],
                }
            )
        title = f"{info['display_name']}\nsubset {info['subset']} / {info['split']}, n={info['n']}"
        figures[test_set] = {"roc": f"figures/roc_{slug(test_set)}.png", "calibration": f"figures/calibration_{slug(test_set)}.png"}
        plot_roc_overlay(curves, output_dir / figures[test_set]["roc"], title=f"ROC, {title}")
        plot_calibration(curves, output_dir / figures[test_set]["calibration"], title=f"Calibration, {title}")
    return figures


def main(args=None):
    # Arguments
    data_args, model_args, report_args, train_vit_runs, checkpoints, centres = parse_args(args)
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
        level=logging.INFO,
    )
    logger.setLevel(logging.INFO)
    output_dir = Path(report_args.output_dir)
    (output_dir / "figures").mkdir(parents=True, exist_ok=True)

    # Data (the offline demo's synthetic export, with a tiny ViT when no image model is given)
    dataset_name = data_args.dataset_name
    if data_args.offline_demo:
        dataset_name = write_synthetic_export(
            output_dir / "synthetic_data", data_args.demo_scale, data_args.demo_cases_per_group, model_args.seed
        )
        logger.info(f"Synthetic export in {dataset_name}")
        if not train_vit_runs and not checkpoints:
            train_vit_runs = {"tiny-vit": list(DEMO_VIT_ARGS)}
    measurement_columns, coded_columns = split_list(data_args.measurement_columns), split_list(data_args.coded_columns)
    designs, test_sets, tabular_columns = load_designs(dataset_name, centres, data_args, measurement_columns, coded_columns)

    # Models: semantic features and the axis-ratio baseline, train_vit.py runs, existing checkpoints
    models, predictions = fit_tabular_models(designs, data_args, model_args, measurement_columns, coded_columns, tabular_columns)
    train_image_models(train_vit_runs, designs, dataset_name, output_dir, model_args.seed, models, predictions)
    if checkpoints:
        evaluate_checkpoints(checkpoints, designs, data_args, model_args, models, predictions)

    # Evaluate and compare
    rows, prediction_rows = compare_models(designs, models, predictions, test_sets, report_args, model_args.seed)
    figures = plot_figures(rows, prediction_rows, test_sets, output_dir)

    # Report
    record = {
        "dataset": Path(dataset_name).name + " (local export)" if Path(dataset_name).exists() else dataset_name,
        "synthetic": dataset_is_synthetic(dataset_name),
        "protocol": "fit on the development centre's train split; Youden threshold on its validation split; evaluate "
        "unchanged on its test split (internal) and on all of the other centre (external)",
        "reference_model": REFERENCE_MODEL,
        "positive_label": data_args.positive_label,
        "n_bootstrap": report_args.n_bootstrap,
        "confidence_level": report_args.confidence_level,
        "seed": model_args.seed,
        "models": models,
        "test_sets": test_sets,
        "rows": rows,
        "figures": figures,
    }
    record = json_safe(record)
    (output_dir / "results.json").write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
    write_study_predictions(output_dir / "predictions.csv", prediction_rows)
    (output_dir / "report.md").write_text(build_report(record))
    logger.info(f"Report in {(output_dir / 'report.md').resolve()} ({len(rows)} rows: {len(models)} models x {len(test_sets)} test sets)")
    return record


if __name__ == "__main__":
    run(main)
